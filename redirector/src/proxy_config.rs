//! Builds the kernel's [`Config`] entry from what the operator asked for: proxy addresses and
//! exclusions. Pure: no I/O, so every rule is unit-tested.

use std::net::{IpAddr, SocketAddr};

use redirector_common::{CgroupRef, Config, MAX_EXCLUDED_CGROUPS, MAX_EXCLUDED_UIDS};

/// What the operator asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// The IPv4 proxy (`--proxy`).
    pub proxy4: Option<SocketAddr>,
    /// The IPv6 proxy (`--proxy6`).
    pub proxy6: Option<SocketAddr>,
    /// Cgroups whose processes are never steered (`--exclude-cgroup`), already resolved.
    pub exclude_cgroups: Vec<CgroupRef>,
    /// UIDs never steered (`--exclude-uid`).
    pub exclude_uids: Vec<u32>,
    /// `(mark, mask)` never steered (`--exclude-mark MARK[/MASK]`).
    pub exclude_mark: Option<(u32, u32)>,
    /// How many consecutive ports the proxy listens on, from the `--proxy` / `--proxy6` port
    /// (`--proxy-ports`); 0 counts as 1.
    pub proxy_ports: u16,
    /// Tasks in cgroups less deep than this are never steered: one below the attach point,
    /// whose own tasks (on a node: the kernel's threads) keep their connects. 0: no such check.
    pub steer_min_level: u32,
}

/// The default of `--proxy-port`: Envoy's listener in `deploy/envoy.yaml`.
pub const DEFAULT_PROXY_PORT: u16 = 15001;

/// The default of `--proxy-ports`: enough that steered connections to different destinations
/// rarely share one 4-tuple space (which a client's fixed source port would find). The port is
/// a hash of the destination, so two of a client's busy destinations share one with odds of
/// 1 in 64; with 16 ports, four destinations share one a third of the time, and `cargo xtask
/// bench` (scenario 4) shows such a pair's `connect()`s slowing down within 30 s at 400/s each.
pub const DEFAULT_PROXY_PORTS: u16 = 64;

/// The most ports `--proxy-ports` accepts.
pub const MAX_PROXY_PORTS: u16 = 256;

/// Why settings cannot be expressed in the kernel's config.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyConfigError {
    /// `--proxy` must be IPv4.
    #[error("--proxy {0} is not an IPv4 address:port (use --proxy6 for IPv6)")]
    Proxy4NotV4(SocketAddr),
    /// `--proxy6` must be IPv6.
    #[error("--proxy6 {0} is not an [IPv6]:port address")]
    Proxy6NotV6(SocketAddr),
    /// Port 0 cannot be connected to.
    #[error("proxy {0} has port 0")]
    PortZero(SocketAddr),
    /// The address does not name the node to every network namespace on it.
    #[error(
        "proxy {addr} is {what}: connections from pods would go to that address in their own \
         network namespace, not to the node's proxy; use an address of the node that pods can \
         reach (in the DaemonSet, the node's IP)"
    )]
    NotANodeAddress {
        /// The address given.
        addr: SocketAddr,
        /// What kind of address it is.
        what: &'static str,
    },
    /// `--proxy-ports` out of range, or the range runs past port 65535.
    #[error(
        "--proxy-ports {count} with proxy port {first}: the proxy needs 1 to {MAX_PROXY_PORTS} \
         consecutive ports, all below 65536"
    )]
    BadPortCount {
        /// The first port.
        first: u16,
        /// How many.
        count: u16,
    },
    /// Neither proxy given.
    #[error("no proxy address: pass --proxy IP:PORT (and/or --proxy6 [IP]:PORT)")]
    NoProxy,
    /// `--proxy` was given an IPv6 address while `--proxy6` names another.
    #[error(
        "--proxy {proxy} is an IPv6 address and --proxy6 {proxy6} names another IPv6 proxy: give \
         the IPv6 proxy once"
    )]
    TwoIpv6Proxies {
        /// `--proxy`.
        proxy: SocketAddr,
        /// `--proxy6`.
        proxy6: SocketAddr,
    },
    /// Too many `--exclude-uid`.
    #[error("at most {MAX_EXCLUDED_UIDS} --exclude-uid values are supported, got {0}")]
    TooManyUids(usize),
    /// Too many `--exclude-cgroup`.
    #[error("at most {MAX_EXCLUDED_CGROUPS} --exclude-cgroup values are supported, got {0}")]
    TooManyCgroups(usize),
    /// A mark whose bits lie outside its mask can never match.
    #[error(
        "--exclude-mark {mark:#x}/{mask:#x} can never match: the mark has bits outside the mask"
    )]
    MarkOutsideMask {
        /// The mark.
        mark: u32,
        /// The mask.
        mask: u32,
    },
}

/// The IPv4 and IPv6 proxies the command line names, either directly (`--proxy`, `--proxy6`;
/// an IPv6 `--proxy` is the IPv6 proxy, so an IPv6-only node needs no second flag) or from the
/// node's addresses (`--node-ips`, as the DaemonSet passes the downward API's `status.hostIPs`:
/// the first IPv4 and the first IPv6 address, each on `port`).
pub fn resolve_proxies(
    proxy: Option<SocketAddr>,
    proxy6: Option<SocketAddr>,
    node_ips: &[IpAddr],
    port: u16,
) -> Result<(Option<SocketAddr>, Option<SocketAddr>), ProxyConfigError> {
    if !node_ips.is_empty() {
        let first = |v4: bool| {
            node_ips
                .iter()
                .map(|ip| ip.to_canonical())
                .find(|ip| ip.is_ipv4() == v4)
                .map(|ip| SocketAddr::new(ip, port))
        };
        return Ok((first(true), first(false)));
    }
    match (proxy, proxy6) {
        (Some(p), None) if p.is_ipv6() => Ok((None, Some(p))),
        (Some(p), Some(p6)) if p.is_ipv6() => Err(ProxyConfigError::TwoIpv6Proxies {
            proxy: p,
            proxy6: p6,
        }),
        (None, None) => Err(ProxyConfigError::NoProxy),
        pair => Ok(pair),
    }
}

/// Parses `MARK` or `MARK/MASK` (decimal or `0x` hex); a bare mark means mask `0xffffffff`.
pub fn parse_mark(text: &str) -> Result<(u32, u32), String> {
    fn number(s: &str) -> Result<u32, String> {
        let s = s.trim();
        let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => s.parse(),
        };
        parsed.map_err(|_| format!("{s:?} is not a 32-bit number (decimal or 0x hex)"))
    }
    match text.split_once('/') {
        Some((mark, mask)) => Ok((number(mark)?, number(mask)?)),
        None => Ok((number(text)?, u32::MAX)),
    }
}

/// Why `ip` cannot be the proxy's address, if it cannot: it must be an address of the node
/// that means the node from every network namespace on it.
fn not_a_node_address(ip: IpAddr) -> Option<&'static str> {
    let ip = ip.to_canonical();
    Some(match ip {
        ip if ip.is_unspecified() => {
            "the unspecified address (a listening address, not one to connect to)"
        }
        ip if ip.is_loopback() => "a loopback address",
        ip if ip.is_multicast() => "a multicast address",
        IpAddr::V4(v4) if v4.is_link_local() => "a link-local address",
        IpAddr::V4(v4) if v4.is_broadcast() => "the broadcast address",
        IpAddr::V6(v6) if v6.is_unicast_link_local() => "a link-local address",
        _ => return None,
    })
}

/// Checks one proxy address: ports, and an address of the node.
fn check_proxy(p: SocketAddr, count: u16) -> Result<(), ProxyConfigError> {
    if p.port() == 0 {
        return Err(ProxyConfigError::PortZero(p));
    }
    let count = count.max(1);
    if count > MAX_PROXY_PORTS || u32::from(p.port()) + u32::from(count) - 1 > 65535 {
        return Err(ProxyConfigError::BadPortCount {
            first: p.port(),
            count,
        });
    }
    if let Some(what) = not_a_node_address(p.ip()) {
        return Err(ProxyConfigError::NotANodeAddress { addr: p, what });
    }
    Ok(())
}

impl ProxySettings {
    /// Every address the proxy listens on: each proxy address with each of its ports.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        let count = self.proxy_ports.max(1);
        self.proxy4
            .iter()
            .chain(&self.proxy6)
            .flat_map(|p| {
                (0..count).map(move |i| SocketAddr::new(p.ip(), p.port().wrapping_add(i)))
            })
            .collect()
    }

    /// The config entry. Readiness is not in it: it is the lease the health checker grants
    /// (`proxy_lease`) once it has seen the proxy serve.
    pub fn to_config(&self) -> Result<Config, ProxyConfigError> {
        let mut config = Config::default();
        if self.proxy4.is_none() && self.proxy6.is_none() {
            return Err(ProxyConfigError::NoProxy);
        }
        if let Some(p) = self.proxy4 {
            let IpAddr::V4(ip) = p.ip() else {
                return Err(ProxyConfigError::Proxy4NotV4(p));
            };
            check_proxy(p, self.proxy_ports)?;
            config.proxy4_addr = ip.octets();
            config.proxy4_port = p.port();
        }
        if let Some(p) = self.proxy6 {
            let IpAddr::V6(ip) = p.ip() else {
                return Err(ProxyConfigError::Proxy6NotV6(p));
            };
            check_proxy(p, self.proxy_ports)?;
            config.proxy6_addr = ip.octets();
            config.proxy6_port = p.port();
        }
        config.proxy_ports = self.proxy_ports.max(1);
        config.steer_min_level = self.steer_min_level;
        if self.exclude_uids.len() > MAX_EXCLUDED_UIDS {
            return Err(ProxyConfigError::TooManyUids(self.exclude_uids.len()));
        }
        for (slot, uid) in config.exclude_uids.iter_mut().zip(&self.exclude_uids) {
            *slot = *uid;
        }
        config.exclude_uid_count = self.exclude_uids.len() as u32;
        if self.exclude_cgroups.len() > MAX_EXCLUDED_CGROUPS {
            return Err(ProxyConfigError::TooManyCgroups(self.exclude_cgroups.len()));
        }
        for (slot, cg) in config.exclude_cgroups.iter_mut().zip(&self.exclude_cgroups) {
            *slot = *cg;
        }
        config.exclude_cgroup_count = self.exclude_cgroups.len() as u32;
        if let Some((mark, mask)) = self.exclude_mark {
            if mark & !mask != 0 || mask == 0 {
                return Err(ProxyConfigError::MarkOutsideMask { mark, mask });
            }
            config.exclude_mark = mark;
            config.exclude_mark_mask = mask;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> ProxySettings {
        ProxySettings {
            proxy4: Some("10.0.0.1:15001".parse().unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn proxy_addresses_and_readiness() {
        let mut s = v4();
        s.proxy6 = Some("[fd00::1]:15001".parse().unwrap());
        let c = s.to_config().unwrap();
        assert_eq!(c.proxy4(), s.proxy4);
        assert_eq!(c.proxy6(), s.proxy6);
        assert_eq!(c._reserved, [0, 0]);
    }

    #[test]
    fn wrong_families_and_missing_proxy_are_refused() {
        let mut s = ProxySettings::default();
        assert_eq!(s.to_config(), Err(ProxyConfigError::NoProxy));
        s.proxy4 = Some("[fd00::1]:1".parse().unwrap());
        assert!(matches!(
            s.to_config(),
            Err(ProxyConfigError::Proxy4NotV4(_))
        ));
        s.proxy4 = None;
        s.proxy6 = Some("10.0.0.1:1".parse().unwrap());
        assert!(matches!(
            s.to_config(),
            Err(ProxyConfigError::Proxy6NotV6(_))
        ));
        s.proxy6 = Some("[fd00::1]:0".parse().unwrap());
        assert!(matches!(s.to_config(), Err(ProxyConfigError::PortZero(_))));
    }

    #[test]
    fn proxies_must_be_addresses_of_the_node() {
        for bad in [
            "0.0.0.0:15001",
            "127.0.0.1:15001",
            "169.254.0.1:15001",
            "224.0.0.1:15001",
            "255.255.255.255:15001",
        ] {
            let s = ProxySettings {
                proxy4: Some(bad.parse().unwrap()),
                ..Default::default()
            };
            let e = s.to_config().unwrap_err();
            assert!(
                matches!(e, ProxyConfigError::NotANodeAddress { .. }),
                "{bad}: {e}"
            );
            assert!(e.to_string().contains(bad), "{e}");
        }
        for bad in [
            "[::]:15001",
            "[::1]:15001",
            "[fe80::1]:15001",
            "[ff02::1]:15001",
        ] {
            let s = ProxySettings {
                proxy6: Some(bad.parse().unwrap()),
                ..Default::default()
            };
            assert!(
                matches!(s.to_config(), Err(ProxyConfigError::NotANodeAddress { .. })),
                "{bad}"
            );
        }
        assert!(v4().to_config().is_ok());
    }

    #[test]
    fn proxy_ports_are_a_range_below_65536() {
        let mut s = v4();
        s.proxy_ports = 16;
        let c = s.to_config().unwrap();
        assert_eq!(c.proxy_port_count(), 16);
        assert_eq!(s.endpoints().len(), 16);
        assert_eq!(s.endpoints()[15].port(), 15016);
        s.proxy_ports = 0;
        assert_eq!(
            s.to_config().unwrap().proxy_port_count(),
            1,
            "0 counts as 1"
        );
        s.proxy_ports = MAX_PROXY_PORTS + 1;
        assert!(matches!(
            s.to_config(),
            Err(ProxyConfigError::BadPortCount { .. })
        ));
        s.proxy4 = Some("10.0.0.1:65530".parse().unwrap());
        s.proxy_ports = 16;
        assert!(matches!(
            s.to_config(),
            Err(ProxyConfigError::BadPortCount { .. })
        ));
    }

    #[test]
    fn exclusions_fill_the_arrays_and_counts() {
        let mut s = v4();
        s.exclude_uids = vec![1337, 0];
        s.exclude_cgroups = vec![CgroupRef {
            id: 42,
            level: 3,
            _pad: 0,
        }];
        s.exclude_mark = Some((0x100, 0xf00));
        let c = s.to_config().unwrap();
        assert_eq!(c.exclude_uid_count, 2);
        assert!(c.uid_excluded(0) && c.uid_excluded(1337) && !c.uid_excluded(1));
        assert_eq!(c.exclude_cgroup_count, 1);
        assert_eq!(c.exclude_cgroups[0].id, 42);
        assert!(c.mark_excluded(0x1ff) && !c.mark_excluded(0x200));
    }

    #[test]
    fn limits_and_impossible_marks() {
        let mut s = v4();
        s.exclude_uids = (0..=MAX_EXCLUDED_UIDS as u32).collect();
        assert_eq!(
            s.to_config(),
            Err(ProxyConfigError::TooManyUids(MAX_EXCLUDED_UIDS + 1))
        );
        let mut s = v4();
        s.exclude_mark = Some((0x1, 0x10));
        assert!(matches!(
            s.to_config(),
            Err(ProxyConfigError::MarkOutsideMask { .. })
        ));
    }

    #[test]
    fn mark_syntax() {
        assert_eq!(parse_mark("0x100"), Ok((0x100, u32::MAX)));
        assert_eq!(parse_mark("256/0xff00"), Ok((256, 0xff00)));
        assert!(parse_mark("abc").is_err());
        assert!(parse_mark("1/2/3").is_err());
    }

    #[test]
    fn node_ips_give_one_proxy_per_family() {
        let ips = |list: &[&str]| {
            list.iter()
                .map(|s| s.parse().unwrap())
                .collect::<Vec<IpAddr>>()
        };
        let sa = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        assert_eq!(
            resolve_proxies(None, None, &ips(&["10.0.0.5", "fd00::5"]), 15001),
            Ok((sa("10.0.0.5:15001"), sa("[fd00::5]:15001")))
        );
        assert_eq!(
            resolve_proxies(None, None, &ips(&["fd00::5", "10.0.0.5"]), 15001),
            Ok((sa("10.0.0.5:15001"), sa("[fd00::5]:15001"))),
            "the order of families does not matter"
        );
        assert_eq!(
            resolve_proxies(None, None, &ips(&["fd00::5"]), 15001),
            Ok((None, sa("[fd00::5]:15001"))),
            "IPv6-only node"
        );
        assert_eq!(
            resolve_proxies(None, None, &ips(&["10.0.0.5"]), 15001),
            Ok((sa("10.0.0.5:15001"), None))
        );
    }

    #[test]
    fn an_ipv6_proxy_flag_is_the_ipv6_proxy() {
        let sa = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        assert_eq!(
            resolve_proxies(sa("[fd00::5]:15001"), None, &[], 0),
            Ok((None, sa("[fd00::5]:15001")))
        );
        assert_eq!(
            resolve_proxies(sa("10.0.0.5:15001"), sa("[fd00::5]:15001"), &[], 0),
            Ok((sa("10.0.0.5:15001"), sa("[fd00::5]:15001")))
        );
        assert!(matches!(
            resolve_proxies(sa("[fd00::5]:15001"), sa("[fd00::6]:15001"), &[], 0),
            Err(ProxyConfigError::TwoIpv6Proxies { .. })
        ));
        assert_eq!(
            resolve_proxies(None, None, &[], 0),
            Err(ProxyConfigError::NoProxy)
        );
    }
}
