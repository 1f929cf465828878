//! Scenario 2: what selected traffic pays to be steered to the proxy. The same client loop
//! (connect, one HTTP request and its answer, close) to a selected destination, and one long
//! stream, through the same proxy, steered by the redirector or by a netfilter `REDIRECT`.
//!
//! Where the proxy runs decides what a fair comparison is. `REDIRECT` rewrites the destination
//! to an address of the namespace whose hook matched, and only that namespace's conntrack can
//! answer the proxy's `SO_ORIGINAL_DST`, so the proxy must sit in the namespace of the rule.
//! Two placements work for both methods, and both are measured:
//!
//! - `node`: the client is a pod (its own namespace), the proxy runs on the node (the node
//!   namespace), as in the product. The redirector rewrites `connect()` in the pod to the
//!   node's proxy address; netfilter redirects in the node's nat PREROUTING chain, for
//!   connections arriving from the pod's veth (the reference product's TPROXY rules sit there
//!   too). Same path, same proxy, same place.
//! - `host`: client and proxy share one namespace (a host-networked client and the node's
//!   proxy). The redirector rewrites to `127.0.0.1:15001`; netfilter redirects in the nat
//!   OUTPUT chain (to `127.0.0.1` as well). Both exempt the proxy's own upstream connections
//!   by its `SO_MARK`, as Envoy's bootstrap sets it.
//!
//! Alternatives per placement and proxy: `iptables` (the baseline), `nftables` and
//! `redirector`, each in its own lab with its own proxy instance, interleaved batch by batch;
//! and `direct`, the same loop to the backend with nothing steering and no proxy: the
//! physical limit, what no proxy hop can beat.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use l7r_lab::{
    envoy::Envoy,
    http::HttpBackend,
    lab::{BACKEND4, CLIENT4, Lab, LabOptions, NODE4_UPSTREAM, PROXY_PORT, sa},
    netns::Netns,
};

use crate::{
    baselines::{self, Hook, Iptables, Redirect},
    client::{self, Exchange, Workload},
    proxy::{ProxyProcess, UPSTREAM_MARK},
    report::Series,
    scenarios::{batch, interleave, per_round, progress, round_order, tune_for_churn},
    sink::Sink,
};

/// The HTTP backend's port (selected).
pub const HTTP_PORT: u16 = 8000;
/// The stream sink's port (selected).
pub const SINK_PORT: u16 = 9000;

/// Which proxy the connections go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyKind {
    /// The small Rust forwarding proxy ([`crate::proxy`]).
    Rust,
    /// The real Envoy with `deploy/envoy.yaml`.
    Envoy,
}

/// Where client and proxy run (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// Client in a pod namespace, proxy on the node.
    Node,
    /// Client and proxy in the same namespace.
    Host,
}

/// What scenario 2 is asked to do.
#[derive(Clone, Debug)]
pub struct Params {
    /// Measured connections per alternative, placement and proxy.
    pub connections: usize,
    /// Batches they are split into.
    pub rounds: usize,
    /// Connections per alternative before measuring.
    pub warmup: usize,
    /// Bytes per long stream (0: no streams).
    pub stream_bytes: u64,
    /// Long streams per alternative.
    pub streams: usize,
    /// The proxies to measure through.
    pub proxies: Vec<ProxyKind>,
    /// The placements to measure.
    pub placements: Vec<Placement>,
    /// Which iptables loads the rule.
    pub iptables: Iptables,
    /// The `l7r-bench` binary, to start the Rust proxy (`l7r-bench proxy`).
    pub exe: PathBuf,
}

/// The steering methods, baseline first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Steering {
    Iptables,
    Nftables,
    Redirector,
    /// Not steered: no proxy on the path (the physical limit).
    Direct,
}

impl Steering {
    const ALL: [Self; 4] = [
        Self::Iptables,
        Self::Nftables,
        Self::Redirector,
        Self::Direct,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Iptables => "iptables REDIRECT",
            Self::Nftables => "nftables redirect",
            Self::Redirector => "redirector",
            Self::Direct => "direct, no proxy (the limit)",
        }
    }
}

/// A proxy instance; stopped on drop.
enum Proxy {
    Rust(ProxyProcess),
    Envoy(Envoy),
}

/// One alternative's world. Fields drop in order: the proxy first, the lab (namespaces,
/// cgroups, programs) last.
struct Setup {
    /// `None` for [`Steering::Direct`].
    proxy: Option<Proxy>,
    _http: HttpBackend,
    _sink: Sink,
    lab: Lab,
}

/// The selected destinations: the HTTP backend and the sink.
fn selected() -> [SocketAddrV4; 2] {
    let ip: Ipv4Addr = BACKEND4.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
    [
        SocketAddrV4::new(ip, HTTP_PORT),
        SocketAddrV4::new(ip, SINK_PORT),
    ]
}

fn setup(
    steering: Steering,
    placement: Placement,
    kind: ProxyKind,
    exe: &Path,
    iptables: Iptables,
) -> Result<Setup> {
    let mut lab = match steering {
        // The proxy's cgroup (the lab's default) and its SO_MARK are both exempt, as the
        // DaemonSet runs it.
        Steering::Redirector => Lab::with(LabOptions {
            exclude_mark: Some((UPSTREAM_MARK, UPSTREAM_MARK)),
            ..LabOptions::default()
        })?,
        Steering::Iptables | Steering::Nftables | Steering::Direct => {
            Lab::with(LabOptions::for_daemon())?
        }
    };
    let http = HttpBackend::start(&lab.backend_ns, &[sa(BACKEND4, HTTP_PORT)])?;
    let sink = Sink::start(&lab.backend_ns, sa(BACKEND4, SINK_PORT))?;
    tune_for_churn(&lab.client_ns)?;
    tune_for_churn(&lab.node_ns)?;

    let redirect = match placement {
        Placement::Node => Redirect {
            hook: Hook::Prerouting {
                iface: "vclient".into(),
            },
            to_port: PROXY_PORT,
            skip_mark: None,
        },
        Placement::Host => Redirect {
            hook: Hook::Output,
            to_port: PROXY_PORT,
            skip_mark: Some((UPSTREAM_MARK, UPSTREAM_MARK)),
        },
    };
    let rules_ns = match placement {
        Placement::Node => &lab.node_ns,
        Placement::Host => &lab.client_ns,
    };
    match steering {
        Steering::Iptables => baselines::apply_iptables(
            rules_ns,
            iptables,
            &baselines::iptables_rules(&redirect, &selected()),
        )?,
        Steering::Nftables => {
            baselines::apply_nft(rules_ns, &baselines::nft_ruleset(&redirect, &selected()))?;
        }
        Steering::Redirector => {
            // One proxy port, as REDIRECT has: the Rust proxy listens on that one.
            lab.settings.proxy_ports = 1;
            let mut config = lab.settings.to_config()?;
            if placement == Placement::Host {
                // The proxy listens in the client's own namespace: rewrite to loopback, where
                // REDIRECT sends its connections too. `redirector run` refuses a loopback
                // proxy (a pod's loopback is not the node's); this one-namespace setup is the
                // benchmark's own, so the config is written directly.
                config.proxy4_addr = Ipv4Addr::LOCALHOST.octets();
            }
            lab.dp().set_config(&config)?;
            lab.dp().set_proxy_ready(true, true)?;
            for d in selected() {
                lab.select(SocketAddr::V4(d))?;
            }
        }
        // Nothing to load, and no proxy.
        Steering::Direct => {
            return Ok(Setup {
                proxy: None,
                _http: http,
                _sink: sink,
                lab,
            });
        }
    }

    let proxy_ns: &Netns = match placement {
        Placement::Node => &lab.node_ns,
        Placement::Host => &lab.client_ns,
    };
    let proxy = match kind {
        ProxyKind::Rust => Proxy::Rust(ProxyProcess::start(
            exe,
            proxy_ns,
            &lab.proxy_cgroup,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PROXY_PORT),
        )?),
        ProxyKind::Envoy => Proxy::Envoy(Envoy::start(proxy_ns, &lab.proxy_cgroup)?),
    };
    Ok(Setup {
        proxy: Some(proxy),
        _http: http,
        _sink: sink,
        lab,
    })
}

/// What every answer must contain to prove it came through the proxy.
fn proof(placement: Placement, kind: ProxyKind) -> Vec<String> {
    let mut must = Vec::new();
    if kind == ProxyKind::Envoy {
        must.push("server: envoy".to_string());
    }
    // On the node, the backend sees the proxy's upstream address instead of the client's.
    // In the host placement both are the client's address: the Rust proxy's connection count
    // is checked at the end instead.
    if placement == Placement::Node {
        must.push(format!("you are {NODE4_UPSTREAM}"));
    }
    must
}

fn group_name(placement: Placement, kind: ProxyKind) -> String {
    let p = match placement {
        Placement::Node => "node",
        Placement::Host => "host",
    };
    let k = match kind {
        ProxyKind::Rust => "rust proxy",
        ProxyKind::Envoy => "envoy",
    };
    format!("{p} / {k}")
}

/// Runs scenario 2; one [`Series`] per placement, proxy and steering method.
pub fn run(p: &Params) -> Result<Vec<Series>> {
    let mut all = Vec::new();
    for &placement in &p.placements {
        for &kind in &p.proxies {
            all.extend(run_one(p, placement, kind)?);
        }
    }
    Ok(all)
}

fn run_one(p: &Params, placement: Placement, kind: ProxyKind) -> Result<Vec<Series>> {
    let group = group_name(placement, kind);
    progress(&format!("selected traffic, {group}: setting up"));
    let proxied = Workload {
        dst: sa(BACKEND4, HTTP_PORT),
        exchange: Exchange::Http,
        must_contain: proof(placement, kind),
    };
    // Direct: the backend answers itself, and sees the client's own address.
    let direct = Workload {
        must_contain: vec![format!("you are {CLIENT4}")],
        ..proxied.clone()
    };
    let workload_of = |s: Steering| {
        if s == Steering::Direct {
            &direct
        } else {
            &proxied
        }
    };
    let mut setups = Vec::new();
    let mut series = Vec::new();
    for s in Steering::ALL {
        setups.push(
            setup(s, placement, kind, &p.exe, p.iptables)
                .with_context(|| format!("setting up {} ({group})", s.name()))?,
        );
        series.push(Series::new(&group, s.name(), s == Steering::Iptables));
    }
    for (setup, s) in setups.iter().zip(Steering::ALL) {
        if p.warmup > 0 {
            batch(&setup.lab, workload_of(s), p.warmup)
                .with_context(|| format!("warm-up of {} ({group})", s.name()))?;
        }
    }
    let count = per_round(p.connections, p.rounds);
    let started = Instant::now();
    interleave(setups.len(), p.rounds, |round, i| {
        let b = batch(&setups[i].lab, workload_of(Steering::ALL[i]), count)
            .with_context(|| format!("{} ({group}), round {round}", Steering::ALL[i].name()))?;
        series[i].add(&b);
        Ok(())
    })?;
    if p.stream_bytes > 0 {
        let dst = sa(BACKEND4, SINK_PORT);
        let bytes = p.stream_bytes;
        for rep in 0..p.streams {
            for i in round_order(setups.len(), rep) {
                let d = client::in_client(&setups[i].lab, move || client::stream(dst, bytes))
                    .with_context(|| {
                        format!("stream through {} ({group})", Steering::ALL[i].name())
                    })?;
                series[i].stream_bytes = bytes;
                series[i].stream_ns.push(d.as_nanos() as u64);
            }
        }
    }
    progress(&format!(
        "selected traffic, {group}: {} connections and {} streams per alternative in {:.1} s",
        count * p.rounds,
        p.streams,
        started.elapsed().as_secs_f64()
    ));

    // Every connection must have reached the proxy (in the host placement nothing else
    // proves the Rust proxy saw them).
    let expected =
        (p.warmup + count * p.rounds + if p.stream_bytes > 0 { p.streams } else { 0 }) as u64;
    for (i, setup) in setups.into_iter().enumerate() {
        let Setup {
            proxy,
            _http,
            _sink,
            lab,
        } = setup;
        if let Some(dp) = lab.dataplane.as_ref() {
            let c = dp.counters()?;
            series[i].notes.push(format!(
                "redirector counters: redirected {}, orig-dst found {}, excluded {}",
                c.redirected, c.orig_dst_found, c.skipped_excluded
            ));
        }
        // The proxy stops before its lab goes away (its cgroup cannot be removed before).
        let accepted = match proxy {
            Some(Proxy::Rust(proxy)) => Some(proxy.finish()?),
            Some(Proxy::Envoy(envoy)) => {
                drop(envoy);
                None
            }
            None => None,
        };
        drop(lab);
        if let Some(accepted) = accepted
            && accepted != expected
        {
            bail!(
                "{} ({group}): the proxy accepted {accepted} connections, {expected} were made",
                Steering::ALL[i].name()
            );
        }
    }
    Ok(series)
}
