//! `redirector status`: what is selected and the counters, read from the pins (so it works
//! while the daemon is down), and the return path of `--upstream-source client`, read from the
//! namespace's nft table and ip rules. Gathering is I/O; rendering is pure and unit-tested.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr};

use redirector_common::{Config, Counters, ProxyLease, ServiceKey, ServiceName, ServiceValue};
use serde::{Serialize, Serializer, ser::SerializeMap as _};

use crate::{
    clock,
    dataplane::{Dataplane, DataplaneError, pinned_layout},
    reconcile::SelectionMaps as _,
    return_path,
};

/// Everything `status` shows.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// The pin directory read.
    pub pin_dir: String,
    /// The layout version stamped in the pins (1: made before the stamp).
    pub layout: Option<u32>,
    /// The IPv4 proxy and whether it is marked ready.
    pub proxy4: Option<ProxyStatus>,
    /// The IPv6 proxy and whether it is marked ready.
    pub proxy6: Option<ProxyStatus>,
    /// Excluded cgroups as `id@level`, UIDs, and the mark rule.
    pub exclusions: Exclusions,
    /// Capacity of the `services` map.
    pub capacity: u32,
    /// Selected destinations, sorted.
    pub destinations: Vec<Destination>,
    /// Redirected connections currently tracked.
    pub tracked_connections: usize,
    /// Kernel counters, summed over CPUs.
    pub counters: CounterReport,
    /// What needs the operator's attention, each with its fix.
    pub warnings: Vec<String>,
    /// The return path of `--upstream-source client` found on the node (`None`: not read).
    pub return_path: Option<ReturnPathStatus>,
}

/// The return path as `status` found it, or why it could not look.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ReturnPathStatus {
    /// What is on the node.
    Read(return_path::check::Report),
    /// `nft` or `ip` failed.
    Unreadable {
        /// Why.
        error: String,
    },
}

/// A proxy address and its readiness.
#[derive(Debug, Serialize)]
pub struct ProxyStatus {
    /// `ip:port`: the first port.
    pub address: SocketAddr,
    /// How many consecutive ports from `address`'s the proxy listens on.
    pub ports: u16,
    /// Whether new connections are steered to it now.
    pub ready: bool,
    /// Its readiness lease.
    pub lease: LeaseStatus,
}

/// A proxy's readiness lease, relative to now (milliseconds).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct LeaseStatus {
    /// How long the lease still runs (`None`: it has no end, set by a tool rather than the
    /// daemon; 0: it ran out or there is none).
    pub remaining_ms: Option<u64>,
    /// How long ago the check that granted it started (`None`: no lease was granted, or it was
    /// revoked by a failed check).
    pub age_ms: Option<u64>,
    /// How long ago a steered connect to the proxy last failed (`None`: never).
    pub connect_failed_ms_ago: Option<u64>,
}

/// The leases and the kernel's failure times, read at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct Readiness {
    /// `proxy_lease`, `[IPv4, IPv6]`.
    pub leases: [ProxyLease; 2],
    /// `proxy_failed`, `[IPv4, IPv6]`.
    pub failed_at_ns: [u64; 2],
    /// `CLOCK_MONOTONIC` when they were read.
    pub now_ns: u64,
}

impl Readiness {
    fn proxy(&self, i: usize) -> (bool, LeaseStatus) {
        let lease = self.leases[i];
        let failed = self.failed_at_ns[i];
        let ms = |ns: u64| ns / 1_000_000;
        let granted = lease.ready_until_ns != 0;
        let status = LeaseStatus {
            remaining_ms: (lease.ready_until_ns != u64::MAX)
                .then(|| ms(lease.ready_until_ns.saturating_sub(self.now_ns))),
            age_ms: granted.then(|| ms(self.now_ns.saturating_sub(lease.checked_at_ns))),
            connect_failed_ms_ago: (failed != 0).then(|| ms(self.now_ns.saturating_sub(failed))),
        };
        (lease.steers(self.now_ns, failed), status)
    }
}

/// Exclusions as configured.
#[derive(Debug, Serialize)]
pub struct Exclusions {
    /// `(cgroup id, level)`.
    pub cgroups: Vec<(u64, u32)>,
    /// UIDs.
    pub uids: Vec<u32>,
    /// `(mark, mask)`.
    pub mark: Option<(u32, u32)>,
}

/// One selected destination.
#[derive(Debug, Serialize)]
pub struct Destination {
    /// `ip:port`.
    pub address: SocketAddr,
    /// Always `tcp`.
    pub protocol: &'static str,
    /// The Service it belongs to, `namespace/name`.
    pub service: String,
    /// The daemon's number for that Service.
    pub service_id: u32,
}

/// The kernel counters, shown and serialised field by field in the order of
/// [`Counters::FIELDS`] (JSON: `{"seen": 7, "redirected": 3, ...}`).
#[derive(Debug)]
pub struct CounterReport(pub Counters);

impl Serialize for CounterReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(Counters::FIELDS.len()))?;
        for field in Counters::FIELDS {
            map.serialize_entry(field.name, &(field.get)(&self.0))?;
        }
        map.end()
    }
}

/// What the pins hold, read at one instant: the input of [`build`].
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The pin directory read.
    pub pin_dir: String,
    /// The pins' layout version.
    pub layout: Option<u32>,
    /// The `config` entry.
    pub config: Config,
    /// The proxies' leases and last failures.
    pub readiness: Readiness,
    /// The `services` map.
    pub services: Vec<(ServiceKey, ServiceValue)>,
    /// The `service_names` map.
    pub names: BTreeMap<u32, ServiceName>,
    /// Capacity of the `services` map.
    pub capacity: u32,
    /// Entries in `orig_dst`.
    pub tracked_connections: usize,
    /// The counters, summed over CPUs.
    pub counters: Counters,
}

/// Reads the report from a pinned dataplane.
pub fn gather(dp: &Dataplane) -> Result<StatusReport, DataplaneError> {
    let pinned = dp.read()?;
    let mut report = build(Snapshot {
        pin_dir: dp.pin_dir().display().to_string(),
        layout: pinned_layout(dp.pin_dir())?,
        config: dp.config()?,
        readiness: Readiness {
            leases: dp.proxy_leases()?,
            failed_at_ns: dp.proxy_failures()?,
            now_ns: clock::monotonic_ns(),
        },
        services: pinned.services.into_iter().collect(),
        names: pinned.names,
        capacity: dp.services_capacity(),
        tracked_connections: dp.orig_dst_entries()?.len(),
        counters: dp.counters()?,
    });
    report.return_path = Some(match return_path::apply::observe_if_installed() {
        Ok(observed) => {
            ReturnPathStatus::Read(return_path::check::report(&observed.unwrap_or_default()))
        }
        Err(e) => ReturnPathStatus::Unreadable {
            error: format!("{e:#}"),
        },
    });
    Ok(report)
}

/// Pure assembly of the report.
pub fn build(snapshot: Snapshot) -> StatusReport {
    let Snapshot {
        pin_dir,
        layout,
        config,
        readiness,
        services,
        names,
        capacity,
        tracked_connections,
        counters,
    } = snapshot;
    let mut destinations: Vec<Destination> = services
        .into_iter()
        .map(|(k, v)| Destination {
            address: k.socket_addr(),
            protocol: "tcp",
            service: names.get(&v.service_id).map_or_else(
                || format!("(unnamed #{})", v.service_id),
                |n| {
                    let (namespace, name) = n.parts();
                    format!("{namespace}/{name}")
                },
            ),
            service_id: v.service_id,
        })
        .collect();
    destinations.sort_by(|a, b| (&a.service, a.address).cmp(&(&b.service, b.address)));
    let n_cgroups = (config.exclude_cgroup_count as usize).min(config.exclude_cgroups.len());
    let n_uids = (config.exclude_uid_count as usize).min(config.exclude_uids.len());
    StatusReport {
        pin_dir,
        layout,
        proxy4: config.proxy4().map(|address| {
            let (ready, lease) = readiness.proxy(0);
            ProxyStatus {
                address,
                ports: config.proxy_port_count(),
                ready,
                lease,
            }
        }),
        proxy6: config.proxy6().map(|address| {
            let (ready, lease) = readiness.proxy(1);
            ProxyStatus {
                address,
                ports: config.proxy_port_count(),
                ready,
                lease,
            }
        }),
        exclusions: Exclusions {
            cgroups: config.exclude_cgroups[..n_cgroups]
                .iter()
                .map(|c| (c.id, c.level))
                .collect(),
            uids: config.exclude_uids[..n_uids].to_vec(),
            mark: (config.exclude_mark_mask != 0)
                .then_some((config.exclude_mark, config.exclude_mark_mask)),
        },
        capacity,
        destinations,
        tracked_connections,
        warnings: warnings(&counters),
        counters: CounterReport(counters),
        return_path: None,
    }
}

/// What the counters say needs attention.
fn warnings(c: &Counters) -> Vec<String> {
    let mut out = Vec::new();
    if c.skipped_record_failed > 0 {
        out.push(format!(
            "{} selected connections went direct, unlogged: the kernel could not allocate their \
             socket storage. On Linux 5.11+ it is charged to the daemon's memory cgroup: raise \
             the daemon container's memory limit",
            c.skipped_record_failed
        ));
    }
    if c.publish_failed > 0 {
        out.push(format!(
            "{} steered connections could not be published in orig_dst (no memory): the proxy \
             found no original destination for them and closed them. Raise the daemon \
             container's memory limit",
            c.publish_failed
        ));
    }
    out
}

/// `ready, lease 2.4s left (granted 0.6s ago)`, or why it is not.
fn readiness_text(p: &ProxyStatus) -> String {
    let secs = |ms: u64| format!("{:.1}s", ms as f64 / 1000.0);
    let l = &p.lease;
    if p.ready {
        let left = l
            .remaining_ms
            .map_or("without end (set by a tool, not the daemon)".into(), |ms| {
                format!("{} left", secs(ms))
            });
        let age = l
            .age_ms
            .map_or(String::new(), |ms| format!(" (granted {} ago)", secs(ms)));
        return format!("ready, lease {left}{age}");
    }
    let why = match (l.age_ms, l.connect_failed_ms_ago) {
        (Some(age), Some(failed)) if failed < age => format!(
            "a steered connect failed {} ago, after the last good check",
            secs(failed)
        ),
        (Some(age), _) => format!(
            "the lease ran out (granted {} ago): no daemon renews it",
            secs(age)
        ),
        (None, _) => {
            "no lease: the proxy failed its last check, or no daemon has checked it".into()
        }
    };
    format!("NOT READY, {why}; traffic goes direct")
}

/// The `upstream src:` lines.
fn return_path_text(rp: &ReturnPathStatus) -> String {
    let r = match rp {
        ReturnPathStatus::Read(r) => r,
        ReturnPathStatus::Unreadable { error } => {
            return format!("upstream src: unknown (cannot read the return path: {error})\n");
        }
    };
    let mut out = String::new();
    match r.upstream_source {
        return_path::UpstreamSource::Node => {
            let _ = writeln!(out, "upstream src: node (no return path on this node)");
        }
        return_path::UpstreamSource::Client => {
            let state = if r.complete {
                "present".to_string()
            } else {
                format!(
                    "INCOMPLETE, missing {}; a daemon in client mode re-creates it and keeps \
                     the proxy not ready meanwhile",
                    r.missing.join(", ")
                )
            };
            let _ = writeln!(out, "upstream src: client (return path {state})");
            if let Some(s) = &r.settings {
                let _ = writeln!(
                    out,
                    "return path:  upstream mark {:#x}, ct mark {:#x}, return mark {:#x}, table {}, \
                     rule priority {}",
                    s.upstream_mark, s.ct_mark, s.fwmark, s.table, s.priority
                );
            }
            for rule in &r.ip_rules {
                let _ = writeln!(out, "              ip rule {rule}");
            }
        }
    }
    out
}

/// The human-readable table.
pub fn render_text(r: &StatusReport) -> String {
    let mut out = String::new();
    let proxy = |p: &Option<ProxyStatus>| match p {
        Some(p) => format!(
            "{}{} ({})",
            p.address,
            if p.ports > 1 {
                format!("-{}", p.address.port().saturating_add(p.ports - 1))
            } else {
                String::new()
            },
            readiness_text(p)
        ),
        None => "none".to_string(),
    };
    let _ = writeln!(
        out,
        "pin dir:      {} (layout {})",
        r.pin_dir,
        r.layout.map_or("unknown".into(), |v| format!("v{v}"))
    );
    let _ = writeln!(out, "proxy (IPv4): {}", proxy(&r.proxy4));
    let _ = writeln!(out, "proxy (IPv6): {}", proxy(&r.proxy6));
    let e = &r.exclusions;
    let cgroups: Vec<String> = e
        .cgroups
        .iter()
        .map(|(id, l)| format!("{id}@{l}"))
        .collect();
    let uids: Vec<String> = e.uids.iter().map(u32::to_string).collect();
    let _ = writeln!(
        out,
        "excluded:     cgroups [{}]  uids [{}]  mark {}",
        cgroups.join(", "),
        uids.join(", "),
        e.mark
            .map_or("none".into(), |(m, k)| format!("{m:#x}/{k:#x}"))
    );
    if let Some(rp) = &r.return_path {
        out.push_str(&return_path_text(rp));
    }
    let _ = writeln!(
        out,
        "\nselected destinations: {} of {}",
        r.destinations.len(),
        r.capacity
    );
    if !r.destinations.is_empty() {
        let _ = writeln!(out, "  {:<46} {:<6} SERVICE", "DESTINATION", "PROTO");
        for d in &r.destinations {
            let _ = writeln!(
                out,
                "  {:<46} {:<6} {}",
                d.address.to_string(),
                d.protocol,
                d.service
            );
        }
    }
    let _ = writeln!(
        out,
        "\ntracked proxied connections: {}",
        r.tracked_connections
    );
    for warning in &r.warnings {
        let _ = writeln!(out, "\nWARNING: {warning}");
    }
    let _ = writeln!(out, "\ncounters (all CPUs, since the maps were created):");
    for field in Counters::FIELDS {
        let _ = writeln!(
            out,
            "  {:<24} {:>12}  {}",
            field.name,
            (field.get)(&r.counters.0),
            field.help.trim()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_shows_destinations_proxy_and_counters() {
        let mut config = Config {
            proxy4_addr: [10, 0, 0, 1],
            proxy4_port: 15001,
            proxy_ports: 16,
            exclude_uid_count: 1,
            ..Config::default()
        };
        config.exclude_uids[0] = 1337;
        let services = vec![
            (
                ServiceKey::tcp_addr("10.96.0.20:443".parse().unwrap()),
                ServiceValue {
                    service_id: 2,
                    flags: 0,
                },
            ),
            (
                ServiceKey::tcp_addr("10.96.0.10:80".parse().unwrap()),
                ServiceValue {
                    service_id: 1,
                    flags: 0,
                },
            ),
        ];
        let counters = Counters {
            seen: 7,
            redirected: 3,
            skipped_record_failed: 4,
            ..Counters::default()
        };
        let names = BTreeMap::from([(1, ServiceName::new("shop", "web"))]);
        let r = build(Snapshot {
            pin_dir: "/pins".into(),
            layout: Some(2),
            config,
            readiness: Readiness {
                leases: [
                    ProxyLease {
                        ready_until_ns: 12_400_000_000,
                        checked_at_ns: 9_400_000_000,
                    },
                    ProxyLease::NOT_READY,
                ],
                failed_at_ns: [0, 0],
                now_ns: 10_000_000_000,
            },
            services,
            names,
            capacity: 65536,
            tracked_connections: 2,
            counters,
        });
        assert_eq!(r.destinations[0].address.to_string(), "10.96.0.20:443");
        assert_eq!(r.destinations[0].service, "(unnamed #2)");
        assert_eq!(r.destinations[1].service, "shop/web");
        assert!(r.proxy6.is_none());
        let text = render_text(&r);
        assert!(
            text.contains(
                "proxy (IPv4): 10.0.0.1:15001-15016 (ready, lease 2.4s left (granted 0.6s ago))"
            ),
            "{text}"
        );
        assert!(text.contains("uids [1337]"), "{text}");
        assert!(text.contains("pin dir:      /pins (layout v2)"), "{text}");
        assert!(text.contains("selected destinations: 2 of 65536"), "{text}");
        assert!(text.contains("10.96.0.20:443"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().take(2).eq(["redirected", "3"])),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["counters"]["seen"], 7);
        assert!(
            text.contains("WARNING: 4 selected connections went direct, unlogged"),
            "{text}"
        );
        assert_eq!(r.warnings.len(), 1, "only what happened is warned about");
        assert_eq!(json["proxy4"]["lease"]["remaining_ms"], 2400);
        assert_eq!(json["destinations"][1]["service"], "shop/web");
    }

    #[test]
    fn a_proxy_that_is_not_ready_says_why() {
        let at = |ready_until_ns, checked_at_ns, failed, now| {
            let r = Readiness {
                leases: [
                    ProxyLease {
                        ready_until_ns,
                        checked_at_ns,
                    },
                    ProxyLease::NOT_READY,
                ],
                failed_at_ns: [failed, 0],
                now_ns: now,
            };
            let (ready, lease) = r.proxy(0);
            readiness_text(&ProxyStatus {
                address: "10.0.0.1:15001".parse().unwrap(),
                ports: 1,
                ready,
                lease,
            })
        };
        let s = 1_000_000_000;
        assert_eq!(
            at(13 * s, 10 * s, 11 * s, 12 * s),
            "NOT READY, a steered connect failed 1.0s ago, after the last good check; traffic goes direct"
        );
        assert_eq!(
            at(13 * s, 10 * s, 0, 20 * s),
            "NOT READY, the lease ran out (granted 10.0s ago): no daemon renews it; traffic goes direct"
        );
        assert!(at(0, 0, 0, 20 * s).contains("no lease"));
        assert_eq!(
            at(u64::MAX, 10 * s, 9 * s, 12 * s),
            "ready, lease without end (set by a tool, not the daemon) (granted 2.0s ago)"
        );
    }

    #[test]
    fn the_return_path_lines_show_mode_settings_and_what_is_missing() {
        use return_path::{Settings, UpstreamSource, check::Report};
        let node = ReturnPathStatus::Read(Report {
            upstream_source: UpstreamSource::Node,
            settings: None,
            complete: false,
            missing: vec![],
            ip_rules: vec![],
        });
        assert_eq!(
            return_path_text(&node),
            "upstream src: node (no return path on this node)\n"
        );
        let client = |missing: Vec<String>| {
            ReturnPathStatus::Read(Report {
                upstream_source: UpstreamSource::Client,
                settings: Some(Settings::default()),
                complete: missing.is_empty(),
                missing,
                ip_rules: vec!["IPv4 priority 90 fwmark 0x4/0x4 lookup 15001".into()],
            })
        };
        let text = return_path_text(&client(vec![]));
        assert!(
            text.starts_with("upstream src: client (return path present)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "upstream mark 0x1000, ct mark 0x4, return mark 0x4, table 15001, rule priority 90"
            ),
            "{text}"
        );
        assert!(text.contains("ip rule IPv4 priority 90 fwmark 0x4/0x4 lookup 15001"));
        let text = return_path_text(&client(vec!["IPv6 fwmark ip rule".into()]));
        assert!(
            text.contains("return path INCOMPLETE, missing IPv6 fwmark ip rule;"),
            "{text}"
        );
        let json = serde_json::to_value(client(vec![])).unwrap();
        assert_eq!(json["upstream_source"], "client");
        assert_eq!(json["settings"]["table"], 15001);
    }
}
