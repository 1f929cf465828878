//! `redirector status`: what is selected and the counters, read from the pins (so it works
//! while the daemon is down). Gathering is I/O; rendering is pure and unit-tested.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr};

use redirector_common::{Config, Counters, ServiceKey, ServiceName, ServiceValue};
use serde::{Serialize, Serializer, ser::SerializeMap as _};

use crate::{
    dataplane::{Dataplane, DataplaneError},
    reconcile::SelectionMaps as _,
};

/// Everything `status` shows.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// The pin directory read.
    pub pin_dir: String,
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
}

/// A proxy address and its readiness.
#[derive(Debug, Serialize)]
pub struct ProxyStatus {
    /// `ip:port`: the first port.
    pub address: SocketAddr,
    /// How many consecutive ports from `address`'s the proxy listens on.
    pub ports: u16,
    /// Whether new connections are steered to it.
    pub ready: bool,
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

/// Reads the report from a pinned dataplane.
pub fn gather(dp: &Dataplane) -> Result<StatusReport, DataplaneError> {
    let pinned = dp.read()?;
    Ok(build(
        dp.pin_dir().display().to_string(),
        &dp.config()?,
        pinned.services.into_iter().collect(),
        &pinned.names,
        dp.services_capacity(),
        dp.orig_dst_entries()?.len(),
        dp.counters()?,
    ))
}

/// Pure assembly of the report.
pub fn build(
    pin_dir: String,
    config: &Config,
    services: Vec<(ServiceKey, ServiceValue)>,
    names: &BTreeMap<u32, ServiceName>,
    capacity: u32,
    tracked_connections: usize,
    counters: Counters,
) -> StatusReport {
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
        proxy4: config.proxy4().map(|address| ProxyStatus {
            address,
            ports: config.proxy_port_count(),
            ready: config.proxy4_ready != 0,
        }),
        proxy6: config.proxy6().map(|address| ProxyStatus {
            address,
            ports: config.proxy_port_count(),
            ready: config.proxy6_ready != 0,
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
        counters: CounterReport(counters),
    }
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
            if p.ready {
                "ready"
            } else {
                "NOT READY: traffic goes direct"
            }
        ),
        None => "none".to_string(),
    };
    let _ = writeln!(out, "pin dir:      {}", r.pin_dir);
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
            proxy4_ready: 1,
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
            ..Counters::default()
        };
        let names = BTreeMap::from([(1, ServiceName::new("shop", "web"))]);
        let r = build(
            "/pins".into(),
            &config,
            services,
            &names,
            65536,
            2,
            counters,
        );
        assert_eq!(r.destinations[0].address.to_string(), "10.96.0.20:443");
        assert_eq!(r.destinations[0].service, "(unnamed #2)");
        assert_eq!(r.destinations[1].service, "shop/web");
        assert!(r.proxy6.is_none());
        let text = render_text(&r);
        assert!(
            text.contains("proxy (IPv4): 10.0.0.1:15001-15016 (ready)"),
            "{text}"
        );
        assert!(text.contains("uids [1337]"), "{text}");
        assert!(text.contains("selected destinations: 2 of 65536"), "{text}");
        assert!(text.contains("10.96.0.20:443"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().take(2).eq(["redirected", "3"])),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["counters"]["seen"], 7);
        assert_eq!(json["destinations"][1]["service"], "shop/web");
    }
}
