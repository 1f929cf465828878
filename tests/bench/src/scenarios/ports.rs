//! Scenario 4: the 4-tuple space of one busy client. One client opens new connections at a
//! steady rate, round-robin to four selected destinations, and closes each at once, first, so
//! every closed connection keeps its client port in TIME_WAIT for 60 s. The client's namespace
//! keeps the kernel's defaults (`tcp_tw_reuse` = 2, loopback only; ports 32768–60999): about
//! 28 000 ports per (client address, destination) pair, 470 new connections/s sustained.
//!
//! - `direct`: nothing steered; each destination has its own space.
//! - `steered, 1 proxy port`: every steered connection is (client, port, proxy, one port): the
//!   four destinations share one space, which runs out after 28 000 connections.
//! - `steered, 16 proxy ports` and `64 proxy ports` (the default): each destination goes to the
//!   port its hash picks, so destinations keep their own space, unless two of them draw the
//!   same port (for four destinations: one chance in three with 16 ports, one in eleven with
//!   64); the table shows each destination's port.
//!
//! Why a shared space costs speed long before it runs out: `connect()` looks for a free port
//! from where its last search for that destination ended, so once a destination's ports have
//! been used round (about 14 000 connections: even ports first), each search walks over the
//! ports still in TIME_WAIT.
//!
//! The servers (the backend's, and the proxy's on every proxy port) read each connection to
//! its end and close after the client; the proxy first asks `SO_ORIGINAL_DST`, as Envoy does.
//! Each alternative has a lab of its own, so no TIME_WAIT is shared between them.

use std::{
    io::Read as _,
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::Serialize;
use socket2::{Domain, SockAddr, Socket, Type};

use l7r_lab::{
    lab::{BACKEND4, Lab, LabOptions, NODE4, PROXY_PORT, sa},
    netns::Netns,
    proxy::original_dst,
};
use redirector_common::{Endpoint, proxy_port_for};

use crate::{
    client,
    scenarios::{check_interrupted, progress, round_order},
};

/// The four selected destinations' ports on the backend.
const PORTS: [u16; 4] = [9101, 9102, 9103, 9104];

/// What scenario 4 is asked to do.
#[derive(Clone, Debug)]
pub struct Params {
    /// How long each alternative runs.
    pub seconds: u64,
    /// New connections per second the client aims at, over all four destinations.
    pub rate: u64,
    /// Rounds: each runs every alternative once (in a fresh lab: no TIME_WAIT is shared), in
    /// an order rotated by one each round, so ratios to direct can be taken round by round.
    pub rounds: usize,
}

/// One alternative's result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PortsResult {
    /// Which alternative.
    pub alternative: String,
    /// The round it ran in (0-based).
    pub round: usize,
    /// The proxy port each destination is steered to (empty when direct).
    pub proxy_ports: Vec<u16>,
    /// Connections made.
    pub connected: u64,
    /// Connects that failed with EADDRNOTAVAIL (no free 4-tuple).
    pub addr_not_avail: u64,
    /// Connects that failed otherwise.
    pub other_failures: u64,
    /// Connections the servers accepted.
    pub accepted: u64,
    /// How long the client ran.
    pub elapsed_s: f64,
    /// When the first EADDRNOTAVAIL came, seconds from the start.
    pub first_failure_s: Option<f64>,
}

impl PortsResult {
    /// Connections made per second.
    pub fn rate(&self) -> f64 {
        self.connected as f64 / self.elapsed_s.max(f64::EPSILON)
    }
}

/// Listeners that read each connection to its end and close after the peer; stopped on drop.
struct Servers {
    listeners: Vec<Arc<TcpListener>>,
    accepted: Arc<AtomicU64>,
}

impl Servers {
    /// Listens on `addrs` in `ns`; `ask_original_dst`: query `SO_ORIGINAL_DST` on each
    /// connection first, as the proxy does.
    fn start(ns: &Netns, addrs: &[SocketAddr], ask_original_dst: bool) -> Result<Self> {
        let accepted = Arc::new(AtomicU64::new(0));
        let mut listeners = Vec::new();
        for &addr in addrs {
            let listener = Arc::new(
                ns.run(move || l7r_lab::proxy::listen(addr))?
                    .with_context(|| format!("cannot listen on {addr}"))?,
            );
            let (l, count) = (Arc::clone(&listener), Arc::clone(&accepted));
            thread::spawn(move || {
                // Ends when the listener is shut down (accept then fails).
                while let Ok((mut stream, _)) = l.accept() {
                    if ask_original_dst {
                        let _ = original_dst(&stream);
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    // The client closes at once: wait for its FIN, so it is the one in
                    // TIME_WAIT, as a client that closes first is.
                    let mut buf = [0u8; 64];
                    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                }
            });
            listeners.push(listener);
        }
        Ok(Self {
            listeners,
            accepted,
        })
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for l in &self.listeners {
            // SAFETY: valid fd owned by the listener; shutdown(2) wakes the blocked accept(2).
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

/// The four destinations.
fn destinations() -> Vec<SocketAddr> {
    PORTS.iter().map(|&p| sa(BACKEND4, p)).collect()
}

/// The alternatives: a name and the proxy ports (`None`: direct).
fn alternatives() -> [(&'static str, Option<u16>); 4] {
    [
        ("direct", None),
        ("steered, 1 proxy port", Some(1)),
        ("steered, 16 proxy ports", Some(16)),
        ("steered, 64 proxy ports (default)", Some(64)),
    ]
}

/// Runs scenario 4: one result per alternative and round.
pub fn run(p: &Params) -> Result<Vec<PortsResult>> {
    let mut results = Vec::new();
    let all = alternatives();
    for (round, i) in (0..p.rounds.max(1)).flat_map(|round| {
        round_order(all.len(), round)
            .into_iter()
            .map(move |i| (round, i))
    }) {
        let (name, ports) = all[i];
        check_interrupted()?;
        progress(&format!(
            "4-tuple space, {name}: {} s at {} new connections/s",
            p.seconds, p.rate
        ));
        let mut r = run_one(p, name, ports).with_context(|| format!("4-tuple space, {name}"))?;
        r.round = round;
        progress(&format!(
            "4-tuple space, {name}: {} connected, {} EADDRNOTAVAIL",
            r.connected, r.addr_not_avail
        ));
        results.push(r);
    }
    Ok(results)
}

fn run_one(p: &Params, name: &str, proxy_ports: Option<u16>) -> Result<PortsResult> {
    let mut lab = Lab::with(LabOptions::default())?;
    let backend = Servers::start(&lab.backend_ns, &destinations(), false)?;
    let mut result = PortsResult {
        alternative: name.into(),
        ..PortsResult::default()
    };
    let proxy = match proxy_ports {
        None => None,
        Some(count) => {
            lab.settings.proxy_ports = count;
            let config = lab.settings.to_config()?;
            lab.dp().set_config(&config)?;
            let listen: Vec<SocketAddr> = (0..count).map(|i| sa(NODE4, PROXY_PORT + i)).collect();
            let servers = Servers::start(&lab.node_ns, &listen, true)?;
            lab.dp().set_proxy_ready(true, true)?;
            for d in destinations() {
                lab.select(d)?;
                let SocketAddr::V4(v4) = d else { continue };
                result.proxy_ports.push(proxy_port_for(
                    &Endpoint::new(redirector_common::v4_mapped(v4.ip().octets()), v4.port()),
                    PROXY_PORT,
                    count,
                ));
            }
            Some(servers)
        }
    };

    let (seconds, rate) = (p.seconds, p.rate.max(1));
    let outcome = client::in_client(&lab, move || Ok(paced_connects(seconds, rate)))?;
    result.connected = outcome.connected;
    result.addr_not_avail = outcome.addr_not_avail;
    result.other_failures = outcome.other_failures;
    result.elapsed_s = outcome.elapsed_s;
    result.first_failure_s = outcome.first_failure_s;
    // The servers count asynchronously; give the last accepts a moment.
    thread::sleep(Duration::from_millis(500));
    result.accepted = backend.accepted() + proxy.as_ref().map_or(0, Servers::accepted);
    Ok(result)
}

/// What the client loop saw.
struct Outcome {
    connected: u64,
    addr_not_avail: u64,
    other_failures: u64,
    elapsed_s: f64,
    first_failure_s: Option<f64>,
}

/// Connects at `rate` per second for `seconds`, round-robin over the destinations, closing
/// each connection at once. Runs in the client pod.
fn paced_connects(seconds: u64, rate: u64) -> Outcome {
    let dsts: Vec<SockAddr> = destinations().into_iter().map(SockAddr::from).collect();
    let total = seconds * rate;
    let started = Instant::now();
    let mut o = Outcome {
        connected: 0,
        addr_not_avail: 0,
        other_failures: 0,
        elapsed_s: 0.0,
        first_failure_s: None,
    };
    for i in 0..total {
        if check_interrupted().is_err() {
            break;
        }
        // Connection i is due at i / rate seconds; a client that falls behind does not sleep.
        let due = Duration::from_nanos(i * 1_000_000_000 / rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            thread::sleep(wait);
        }
        let dst = &dsts[(i % dsts.len() as u64) as usize];
        let connected = Socket::new(Domain::IPV4, Type::STREAM, None)
            .and_then(|s| s.connect_timeout(dst, client::IO_TIMEOUT));
        match connected {
            Ok(()) => o.connected += 1,
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                o.addr_not_avail += 1;
                o.first_failure_s
                    .get_or_insert(started.elapsed().as_secs_f64());
            }
            Err(_) => o.other_failures += 1,
        }
        // The socket is dropped here: the client closes first.
    }
    o.elapsed_s = started.elapsed().as_secs_f64();
    o
}
