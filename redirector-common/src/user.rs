//! User-space conveniences: `aya::Pod` impls and conversions to and from `std::net`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    string::String,
};

use crate::{
    Config, Counters, Endpoint, MAX_NAME_LEN, ProxyLease, ServiceKey, ServiceName, ServiceValue,
    v4_mapped,
};

// SAFETY: all of these are `#[repr(C)]`, contain only integers and byte arrays, and have no
// implicit padding (explicit pad fields, sizes asserted in lib.rs), so every bit pattern is valid.
unsafe impl aya::Pod for Endpoint {}
unsafe impl aya::Pod for ServiceKey {}
unsafe impl aya::Pod for ServiceValue {}
unsafe impl aya::Pod for Config {}
unsafe impl aya::Pod for Counters {}
unsafe impl aya::Pod for ServiceName {}
unsafe impl aya::Pod for ProxyLease {}

/// The 16-byte form of an address as the maps store it (IPv4 becomes IPv4-mapped).
pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a 16-byte map address stands for (IPv4-mapped becomes IPv4).
pub fn ip_from_bytes(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(sa: SocketAddr) -> Self {
        Endpoint::new(addr_bytes(canonical(sa.ip())), sa.port())
    }
}

impl From<Endpoint> for SocketAddr {
    fn from(ep: Endpoint) -> Self {
        SocketAddr::new(ip_from_bytes(ep.addr), ep.port)
    }
}

impl ServiceKey {
    /// The key for a TCP destination `ip:port`.
    pub fn tcp_addr(sa: SocketAddr) -> Self {
        ServiceKey::tcp(addr_bytes(canonical(sa.ip())), sa.port())
    }

    /// The destination this key stands for.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(ip_from_bytes(self.addr), self.port)
    }
}

impl Config {
    /// The IPv4 proxy address, if one is configured.
    pub fn proxy4(&self) -> Option<SocketAddr> {
        (self.proxy4_port != 0).then(|| {
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(self.proxy4_addr)),
                self.proxy4_port,
            )
        })
    }

    /// The IPv6 proxy address, if one is configured.
    pub fn proxy6(&self) -> Option<SocketAddr> {
        (self.proxy6_port != 0).then(|| {
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(self.proxy6_addr)),
                self.proxy6_port,
            )
        })
    }
}

impl ServiceName {
    /// Encodes `namespace/name`; longer strings than Kubernetes allows are truncated.
    pub fn new(namespace: &str, name: &str) -> Self {
        fn field(s: &str) -> [u8; MAX_NAME_LEN + 1] {
            let mut out = [0u8; MAX_NAME_LEN + 1];
            let bytes = s.as_bytes();
            let n = bytes.len().min(MAX_NAME_LEN);
            out[..n].copy_from_slice(&bytes[..n]);
            out
        }
        Self {
            namespace: field(namespace),
            name: field(name),
        }
    }

    /// `(namespace, name)` as strings.
    pub fn parts(&self) -> (String, String) {
        fn text(field: &[u8]) -> String {
            let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
            String::from_utf8_lossy(&field[..end]).into_owned()
        }
        (text(&self.namespace), text(&self.name))
    }
}

/// IPv4-mapped IPv6 addresses are the same destination as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::is_v4_mapped;

    #[test]
    fn v4_and_v4_mapped_are_the_same_key() {
        let a = ServiceKey::tcp_addr("10.96.0.10:80".parse().unwrap());
        let b = ServiceKey::tcp_addr("[::ffff:10.96.0.10]:80".parse().unwrap());
        assert_eq!(a, b);
        assert!(is_v4_mapped(&a.addr));
        assert_eq!(
            a.socket_addr(),
            "10.96.0.10:80".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn v6_round_trips() {
        let sa: SocketAddr = "[fd00::1]:8080".parse().unwrap();
        let ep = Endpoint::from(sa);
        assert!(!ep.is_v4());
        assert_eq!(ep.v4(), None);
        assert_eq!(SocketAddr::from(ep), sa);
    }

    #[test]
    fn service_names_round_trip_and_truncate() {
        let n = ServiceName::new("shop", "web");
        assert_eq!(n.parts(), ("shop".into(), "web".into()));
        let long = "x".repeat(100);
        assert_eq!(ServiceName::new(&long, "a").parts().0.len(), MAX_NAME_LEN);
    }

    #[test]
    fn exclusion_rules() {
        let mut c = Config::default();
        assert!(!c.mark_excluded(0), "no mask: the mark rule is off");
        c.exclude_mark = 0x100;
        c.exclude_mark_mask = 0xf00;
        assert!(c.mark_excluded(0x1ab));
        assert!(!c.mark_excluded(0x2ab));
        assert!(!c.uid_excluded(0), "no UIDs: nothing excluded, not even 0");
        c.exclude_uids[0] = 1337;
        c.exclude_uids[1] = 0;
        c.exclude_uid_count = 1;
        assert!(c.uid_excluded(1337));
        assert!(!c.uid_excluded(0), "entries past the count are ignored");
    }
}

#[cfg(test)]
mod proxy_port_tests {
    use std::collections::BTreeSet;

    use crate::{Config, Endpoint, proxy_port_for, v4_mapped};

    #[test]
    fn destinations_spread_over_the_proxy_ports_and_stay_there() {
        let ports: BTreeSet<u16> = (0..64u16)
            .map(|i| {
                let dst = Endpoint::new(v4_mapped([10, 96, 0, (i % 8) as u8]), 80 + i / 8);
                let port = proxy_port_for(&dst, 15001, 16);
                assert!((15001..15017).contains(&port));
                assert_eq!(port, proxy_port_for(&dst, 15001, 16), "stable");
                port
            })
            .collect();
        assert!(ports.len() >= 12, "64 destinations use only {ports:?}");
        let one = Endpoint::new(v4_mapped([10, 96, 0, 1]), 80);
        assert_eq!(proxy_port_for(&one, 15001, 1), 15001);
        assert_eq!(proxy_port_for(&one, 15001, 0), 15001);
    }

    #[test]
    fn proxy_endpoints_are_the_proxy_address_on_any_of_its_ports() {
        let config = Config {
            proxy4_addr: [10, 0, 0, 1],
            proxy4_port: 15001,
            proxy6_addr: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            proxy6_port: 15001,
            proxy_ports: 16,
            ..Config::default()
        };
        let v4 = |port| Endpoint::new(v4_mapped([10, 0, 0, 1]), port);
        assert!(config.is_proxy_endpoint(&v4(15001)));
        assert!(config.is_proxy_endpoint(&v4(15016)));
        assert!(!config.is_proxy_endpoint(&v4(15017)));
        assert!(!config.is_proxy_endpoint(&v4(15000)));
        assert!(!config.is_proxy_endpoint(&Endpoint::new(v4_mapped([10, 0, 0, 2]), 15001)));
        assert!(config.is_proxy_endpoint(&Endpoint::new(config.proxy6_addr, 15003)));
        let none = Config::default();
        assert!(!none.is_proxy_endpoint(&v4(0)), "no proxy: nothing is one");
    }
}
