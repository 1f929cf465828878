//! Scenario 5: what a user pays per request for L7 logs. The same HTTP/1.1 request loop from
//! the client pod to a Service's ClusterIP, either with the Service not selected (direct: the
//! physical limit, the same lab with the same programs attached) or selected (steered by the
//! redirector to the real Envoy with `deploy/envoy.yaml`, which logs each request), in two
//! modes: requests back to back on one kept-alive connection, and a new connection per
//! request.
//!
//! One lab, one Envoy: the two paths differ only by the Service's entry in the `services` map,
//! which is added or removed between rounds (steering is decided at `connect()`, and every
//! round opens its own connections). Rounds alternate (direct, steered, then steered, direct,
//! ...) so that machine noise hits both alike, and each round's ratio is taken on its own: the
//! report gives their median with the min–max, so one noisy round shows as a wide range
//! instead of as a cost.
//!
//! Like `tests/lab/src/e2e.rs`'s world, the ClusterIP is emulated by an nftables DNAT on the
//! node, as kube-proxy would, for both paths: direct connections are translated on their way
//! through the node, Envoy's upstream ones as they leave it. The dataplane is loaded in this
//! process (as in scenario 2) instead of by the daemon, which only keeps the map up to date.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::Arc,
    thread,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use l7r_lab::{
    envoy::Envoy,
    http::HttpConn,
    lab::{BACKEND4, CLIENT4, Lab, LabOptions, NODE4_UPSTREAM, sa},
    netns::Netns,
};

use crate::{
    client::{self, Exchange, IO_TIMEOUT, Workload},
    proxy::UPSTREAM_MARK,
    report::CostResult,
    scenarios::{batch, interleave, per_round, progress, tune_for_churn},
};

/// The Service's ClusterIP (port 80), selected or not.
pub const CLUSTER_IP: &str = "10.96.0.10";
/// The backend pod's HTTP port, the Service's target port.
pub const HTTP_PORT: u16 = 8000;

/// What scenario 5 is asked to do.
#[derive(Clone, Debug)]
pub struct Params {
    /// Keep-alive mode: measured requests per path, over all rounds.
    pub requests: usize,
    /// New-connection mode: measured requests (connections) per path, over all rounds.
    pub connections: usize,
    /// Rounds per path and mode.
    pub rounds: usize,
    /// Unmeasured requests per path and mode first.
    pub warmup: usize,
}

/// How the client makes its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// One connection per round, requests back to back on it.
    KeepAlive,
    /// A new connection for each request, closed by the client after the answer.
    NewConnection,
}

impl Mode {
    const ALL: [Self; 2] = [Self::KeepAlive, Self::NewConnection];

    fn name(self) -> &'static str {
        match self {
            Self::KeepAlive => "HTTP/1.1 keep-alive",
            Self::NewConnection => "new connection per request",
        }
    }
}

/// The two paths, in the order of [`interleave`]'s alternatives.
const PATHS: [bool; 2] = [false, true];

fn path_name(steered: bool) -> &'static str {
    if steered { "steered" } else { "direct" }
}

/// `CLUSTER_IP:80`.
fn service() -> SocketAddr {
    sa(CLUSTER_IP, 80)
}

/// What each answer must show to prove its path: who answered (Envoy overwrites the
/// backend's `Server` header) and whom the backend saw (the client itself, or Envoy's upstream
/// address on the node).
#[derive(Clone, Debug)]
struct Proof {
    server: &'static str,
    peer: &'static str,
}

impl Proof {
    fn of(steered: bool) -> Self {
        if steered {
            Self {
                server: "envoy",
                peer: NODE4_UPSTREAM,
            }
        } else {
            Self {
                server: "backend",
                peer: CLIENT4,
            }
        }
    }

    /// The same proof as text the new-connection loop looks for in each raw answer.
    fn needles(&self) -> Vec<String> {
        vec![
            format!("server: {}", self.server),
            format!("you are {}\n", self.peer),
        ]
    }
}

/// Threads of [`Backend`]: each serves one connection at a time, and Envoy keeps a few
/// upstream connections open in its pool (one or two per worker for one sequential client).
const BACKEND_THREADS: usize = 16;

/// The Service's backend pod: HTTP/1.1 keep-alive, `Server: backend`, a body naming the peer it
/// saw, as the lab's `HttpBackend` answers. Unlike that one, which starts a thread for each
/// connection, a fixed pool of threads accepts and serves them: a thread's creation and first
/// scheduling (up to a scheduler tick, 4 ms, on a busy machine) would otherwise land on every
/// direct new connection but hardly ever on steered ones, whose upstream connections Envoy
/// pools, and be counted as a gain of steering.
struct Backend {
    listener: Arc<TcpListener>,
}

impl Backend {
    fn start(ns: &Netns, addr: SocketAddr) -> Result<Self> {
        let listener = Arc::new(
            ns.run(move || TcpListener::bind(addr))?
                .with_context(|| format!("the backend cannot listen on {addr}"))?,
        );
        for _ in 0..BACKEND_THREADS {
            let accept = Arc::clone(&listener);
            thread::spawn(move || {
                while let Ok((stream, peer)) = accept.accept() {
                    serve(stream, peer);
                }
            });
        }
        Ok(Self { listener })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: a valid fd owned by the listener; wakes the threads blocked in accept(2).
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// Answers each request head on `stream` (the client sends only GETs, without a body) until
/// the peer closes.
fn serve(mut stream: TcpStream, peer: SocketAddr) {
    let body = format!("hello from the backend; you are {}\n", peer.ip());
    let response = format!(
        "HTTP/1.1 200 OK\r\nServer: backend\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut buf = [0u8; 4096];
    let mut have = 0;
    loop {
        if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            if stream.write_all(response.as_bytes()).is_err() {
                return;
            }
            buf.copy_within(end + 4..have, 0);
            have -= end + 4;
            continue;
        }
        match stream.read(&mut buf[have..]) {
            // A head larger than the buffer is not one of the client's.
            Ok(n) if n > 0 && have + n < buf.len() => have += n,
            _ => return,
        }
    }
}

/// The world both paths share. Fields drop in order: Envoy first, the lab (namespaces,
/// cgroups, programs) last.
struct World {
    envoy: Envoy,
    _backend: Backend,
    lab: Lab,
    /// Whether the Service is in the map now.
    selected: bool,
}

impl World {
    fn new() -> Result<Self> {
        // Envoy runs in the lab's proxy cgroup (exempt by default) and marks its upstream
        // sockets, which are exempt too, as the DaemonSet runs it.
        let lab = Lab::with(LabOptions {
            exclude_mark: Some((UPSTREAM_MARK, UPSTREAM_MARK)),
            ..LabOptions::default()
        })?;
        let backend = Backend::start(&lab.backend_ns, sa(BACKEND4, HTTP_PORT))?;
        lab.emulate_cluster_ip(service(), sa(BACKEND4, HTTP_PORT))?;
        tune_for_churn(&lab.client_ns)?;
        tune_for_churn(&lab.node_ns)?;
        let envoy = Envoy::start(&lab.node_ns, &lab.proxy_cgroup).context("starting Envoy")?;
        Ok(Self {
            envoy,
            _backend: backend,
            lab,
            selected: false,
        })
    }

    /// Puts the Service in the map or takes it out, for the connections opened from now on.
    fn steer(&mut self, steered: bool) -> Result<()> {
        if steered != self.selected {
            if steered {
                self.lab.select(service())?;
            } else {
                self.lab.deselect(service())?;
            }
            self.selected = steered;
        }
        Ok(())
    }

    /// One round of `count` requests on `steered`'s path; returns the latencies, the
    /// `connect()` times (new connections only) and the rate.
    fn round(
        &mut self,
        mode: Mode,
        steered: bool,
        count: usize,
    ) -> Result<(Vec<u64>, Vec<u64>, f64)> {
        self.steer(steered)?;
        let proof = Proof::of(steered);
        match mode {
            Mode::KeepAlive => {
                let (latency, rate) =
                    client::in_client(&self.lab, move || keep_alive(service(), &proof, count))?;
                Ok((latency, Vec::new(), rate))
            }
            Mode::NewConnection => {
                let workload = Workload {
                    dst: service(),
                    exchange: Exchange::Http,
                    must_contain: proof.needles(),
                };
                let b = batch(&self.lab, &workload, count)?;
                let rate = b.rate();
                Ok((b.exchange_ns, b.connect_ns, rate))
            }
        }
    }
}

/// `count` requests back to back on one new connection to `dst`, each timed from its write to
/// its complete answer (the connection's set-up is not timed: it is what keep-alive spares).
/// Runs on the calling thread, which must be the client's (see [`client::in_client`]).
fn keep_alive(dst: SocketAddr, proof: &Proof, count: usize) -> Result<(Vec<u64>, f64)> {
    let stream = TcpStream::connect_timeout(&dst, IO_TIMEOUT)
        .with_context(|| format!("keep-alive connection to {dst}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    // As HTTP clients do (curl, Go's net/http): a request must not wait for the previous
    // answer's ACK.
    stream.set_nodelay(true)?;
    let mut conn = HttpConn::new(stream, "web.shop")?;
    let peer = format!("you are {}\n", proof.peer);
    let mut latency = Vec::with_capacity(count);
    let started = Instant::now();
    for i in 0..count {
        let t0 = Instant::now();
        let answer = conn
            .request("GET", "/")
            .with_context(|| format!("request {i} on the keep-alive connection to {dst}"))?;
        let took = t0.elapsed();
        if answer.header("server") != Some(proof.server) || !answer.body.ends_with(&peer) {
            bail!(
                "request {i} to {dst}: the answer (server {:?}, body {:?}) does not show the \
                 path under test (server {}, {peer:?})",
                answer.header("server"),
                answer.body,
                proof.server
            );
        }
        latency.push(took.as_nanos() as u64);
    }
    let rate = count as f64 / started.elapsed().as_secs_f64().max(1e-9);
    Ok((latency, rate))
}

/// Runs scenario 5: one [`CostResult`] per mode.
pub fn run(p: &Params) -> Result<Vec<CostResult>> {
    progress("cost of logging: setting up (lab, ClusterIP, Envoy)");
    let mut world = World::new().context("setting up the cost-of-logging lab")?;
    let mut results = Vec::new();
    // Requests that went through Envoy so far, to check against its access log.
    let mut steered_requests = 0usize;
    for mode in Mode::ALL {
        let (total, one_connection) = match mode {
            Mode::KeepAlive => (p.requests, true),
            Mode::NewConnection => (p.connections, false),
        };
        let count = per_round(total, p.rounds);
        let mut result = CostResult {
            mode: mode.name().to_string(),
            ..CostResult::default()
        };
        let started = Instant::now();
        let redirected_before = world.lab.dp().counters()?.redirected;
        // Steered connections this mode makes, to check against the redirector's counter.
        let mut steered_connections = 0u64;
        if p.warmup > 0 {
            for steered in PATHS {
                world
                    .round(mode, steered, p.warmup)
                    .with_context(|| format!("warm-up, {}, {}", mode.name(), path_name(steered)))?;
            }
            steered_connections += if one_connection { 1 } else { p.warmup as u64 };
            steered_requests += p.warmup;
        }
        interleave(PATHS.len(), p.rounds, |round, i| {
            let steered = PATHS[i];
            let (latency, connect, rate) =
                world.round(mode, steered, count).with_context(|| {
                    format!("{}, {}, round {round}", mode.name(), path_name(steered))
                })?;
            let rounds = if steered {
                &mut result.steered
            } else {
                &mut result.direct
            };
            rounds.add(latency, connect, rate);
            Ok(())
        })?;
        steered_connections += if one_connection {
            p.rounds as u64
        } else {
            (count * p.rounds) as u64
        };
        steered_requests += count * p.rounds;
        progress(&format!(
            "cost of logging, {}: {} requests per path in {} rounds, {:.1} s",
            mode.name(),
            count * p.rounds,
            p.rounds,
            started.elapsed().as_secs_f64()
        ));

        // Every steered connection went through the redirector and every steered request was
        // logged: otherwise the steered rows would not measure the cost of logging.
        let redirected = world
            .lab
            .dp()
            .counters()?
            .redirected
            .saturating_sub(redirected_before);
        if redirected != steered_connections {
            bail!(
                "{}: the redirector steered {redirected} connections, {steered_connections} \
                 steered ones were made",
                mode.name()
            );
        }
        let logged = world
            .envoy
            .wait_for_log_lines(steered_requests)
            .context("Envoy's access log")?
            .len();
        result.notes.push(format!(
            "warm-up included, the redirector steered {redirected} connections, and Envoy's \
             access log holds {logged} lines for the {steered_requests} steered requests so far"
        ));
        results.push(result);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_answers_every_request_of_a_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            for _ in 0..2 {
                let (stream, peer) = listener.accept().unwrap();
                serve(stream, peer);
            }
        });
        let mut conn = HttpConn::new(TcpStream::connect(addr).unwrap(), "web.shop").unwrap();
        for _ in 0..3 {
            let answer = conn.request("GET", "/").unwrap();
            assert_eq!(answer.header("server"), Some("backend"));
            assert_eq!(answer.body, "hello from the backend; you are 127.0.0.1\n");
        }
        drop(conn);
        // Two heads in one segment get two answers, and the server ends with the connection.
        let mut raw = TcpStream::connect(addr).unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        raw.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answers = String::new();
        raw.read_to_string(&mut answers).unwrap();
        assert_eq!(
            answers.matches("HTTP/1.1 200 OK\r\n").count(),
            2,
            "{answers}"
        );
        server.join().unwrap();
    }

    #[test]
    fn proofs_tell_the_paths_apart() {
        let direct = Proof::of(false).needles();
        let steered = Proof::of(true).needles();
        assert_eq!(direct, ["server: backend", "you are 10.77.1.2\n"]);
        assert_eq!(steered, ["server: envoy", "you are 10.77.2.1\n"]);
    }
}
