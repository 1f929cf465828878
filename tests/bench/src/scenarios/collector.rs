//! The collector's throughput (section 7 of the report and of `docs/benchmarks.md`; issue 16):
//! how many access log lines `redirector collect` turns into records per CPU second, and what
//! it costs at a steady rate.
//!
//! - **Throughput**: `L` lines, as Envoy writes them with `deploy/envoy.yaml`'s `json_format`
//!   (many distinct clients, Services, paths and request ids), are written beforehand into a
//!   file beside the access log; the collector starts with no access log, and once it is up the
//!   file is renamed into place, so the collector reads all of it from its start (a file that
//!   appears is all new to it). The collector's CPU time (user + system of the whole process,
//!   from `/proc/PID/stat`) from just before the rename to the moment its summary log has
//!   counted every line gives lines per CPU second: lines/s per core. `--max-lag` is larger
//!   than the file, so nothing is skipped; every line must be counted as a request.
//! - **Steady rate**: a fresh collector, and lines appended at `R` lines/s (in batches every
//!   10 ms) for `T` s: its CPU % over that window and its RSS at the end (`VmRSS`, `VmHWM`).
//!
//! The collector names both ends of each request from a services file of Services,
//! EndpointSlices and Pods, as in a cluster, and writes its records to a file.

use std::{
    fmt::Write as _,
    fs::{self, File, OpenOptions},
    io::{BufWriter, Write as _},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use l7r_lab::{manifests::ServiceSpec, sys::unique_id};

use crate::{
    destinations::{Rng, nth_address},
    machine::{kib, proc_field},
    scenarios::{check_interrupted, progress},
};

/// The goal of issue 16: lines aggregated per second per core.
pub const GOAL_LINES_PER_CORE: f64 = 100_000.0;

/// What the scenario is asked to do.
#[derive(Clone, Debug)]
pub struct Params {
    /// Lines written beforehand for the throughput measurement.
    pub lines: usize,
    /// Lines per second appended in the steady-rate measurement.
    pub rate: u64,
    /// How long the steady rate is kept, seconds.
    pub seconds: u64,
    /// The `redirector` binary.
    pub redirector: PathBuf,
    /// Seed of the generated lines.
    pub seed: u64,
}

/// What it measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CollectorResult {
    /// Lines in the pre-written file.
    pub lines: u64,
    /// Their bytes (newlines included).
    pub bytes: u64,
    /// Distinct client addresses, Services and paths among them.
    pub distinct_sources: usize,
    /// Distinct Services (ClusterIPs) among them.
    pub distinct_services: usize,
    /// Distinct paths among them.
    pub distinct_paths: usize,
    /// Lines the collector counted as requests (must equal `lines`).
    pub requests: u64,
    /// CPU time the collector spent on them, ns (user + system).
    pub cpu_ns: u64,
    /// Wall time from the rename to the last line counted, ns (includes up to one poll
    /// interval of waiting and one summary interval of reporting).
    pub wall_ns: u64,
    /// Peak RSS of the throughput run (it holds a whole poll's lines at once), KiB.
    pub burst_vm_hwm_kib: u64,
    /// Steady rate asked, lines/s.
    pub steady_rate: u64,
    /// Lines appended in the steady window.
    pub steady_lines: u64,
    /// The steady window, ns.
    pub steady_wall_ns: u64,
    /// CPU time of the collector in that window, ns.
    pub steady_cpu_ns: u64,
    /// RSS at the end of the window, KiB.
    pub steady_vm_rss_kib: u64,
    /// Peak RSS of the steady run, KiB.
    pub steady_vm_hwm_kib: u64,
}

impl CollectorResult {
    /// Lines aggregated per CPU second: per core.
    pub fn lines_per_core(&self) -> Option<f64> {
        (self.cpu_ns > 0).then(|| self.requests as f64 / (self.cpu_ns as f64 / 1e9))
    }

    /// The collector's CPU in the steady window, in % of one core.
    pub fn steady_cpu_percent(&self) -> Option<f64> {
        (self.steady_wall_ns > 0)
            .then(|| 100.0 * self.steady_cpu_ns as f64 / self.steady_wall_ns as f64)
    }

    /// The lines per second actually appended in the steady window.
    pub fn steady_achieved_rate(&self) -> Option<f64> {
        (self.steady_wall_ns > 0)
            .then(|| self.steady_lines as f64 / (self.steady_wall_ns as f64 / 1e9))
    }
}

/// Generated Services: `bench/svc-<i>`, as in scenario 3.
const SERVICES: usize = 200;
/// Client pods, named `client-<owner>-<i>` in namespace `clients`.
const CLIENTS: usize = 2000;
/// Client workloads (ReplicaSets) the client pods belong to.
const CLIENT_OWNERS: usize = 50;

fn service(i: usize) -> ServiceSpec {
    ServiceSpec {
        namespace: "bench".into(),
        name: format!("svc-{i}"),
        cluster_ip: nth_address(Ipv4Addr::new(10, 96, 0, 0), i).to_string(),
        port: 80,
        endpoint_ip: nth_address(Ipv4Addr::new(10, 128, 0, 0), i).to_string(),
        endpoint_port: 8080,
        annotation: Some("true".into()),
    }
}

fn client_ip(i: usize) -> Ipv4Addr {
    nth_address(Ipv4Addr::new(10, 64, 0, 0), i)
}

fn pod(name: &str, namespace: &str, owner: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  \
         labels: {{app: {owner}}}\n  \
         ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: {owner}-5f7c9, \
         uid: {owner}-uid, controller: true}}]\n\
         status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
    )
}

/// The collector's services file: the Services with their EndpointSlices, their endpoints'
/// Pods, and the client Pods.
pub fn services_file() -> String {
    let mut docs: Vec<String> = (0..SERVICES).map(|i| service(i).yaml()).collect();
    for i in 0..SERVICES {
        let s = service(i);
        docs.push(pod(
            &format!("{}-5f7c9-{i:05}", s.name),
            "bench",
            &s.name,
            &s.endpoint_ip,
        ));
    }
    for i in 0..CLIENTS {
        let owner = format!("client-{}", i % CLIENT_OWNERS);
        docs.push(pod(
            &format!("{owner}-5f7c9-{i:05}"),
            "clients",
            &owner,
            &client_ip(i).to_string(),
        ));
    }
    docs.join("---\n")
}

const METHODS: [&str; 5] = ["GET", "GET", "GET", "POST", "PUT"];
const RESOURCES: [&str; 8] = [
    "users", "orders", "carts", "items", "sessions", "reviews", "images", "search",
];
const AGENTS: [&str; 4] = [
    "curl/8.5.0",
    "Go-http-client/1.1",
    "python-requests/2.31.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0",
];

/// The `i`-th line, as Envoy writes it with `deploy/envoy.yaml` (numbers that Envoy types as
/// numbers are JSON numbers; the upstream service time is a header, so a string).
pub fn access_line(rng: &mut Rng, i: u64) -> String {
    let svc = service(rng.below(SERVICES as u64) as usize);
    let client = client_ip(rng.below(CLIENTS as u64) as usize);
    let method = METHODS[rng.below(METHODS.len() as u64) as usize];
    let resource = RESOURCES[rng.below(RESOURCES.len() as u64) as usize];
    let id = rng.below(5000);
    let path = match rng.below(4) {
        0 => format!("/api/v1/{resource}"),
        1 => format!("/api/v1/{resource}/{id}"),
        2 => format!("/api/v1/{resource}/{id}/details?page={}", rng.below(20)),
        _ => format!("/{resource}/{id}?q=term{}&limit=50", rng.below(100)),
    };
    let code = match rng.below(100) {
        0..=89 => 200,
        90..=93 => 201,
        94..=97 => 404,
        _ => 503,
    };
    let flags = if code == 503 { "UF" } else { "-" };
    let ms = i % 1000;
    let mut line = String::with_capacity(600);
    let _ = write!(
        line,
        r#"{{"type":"http","start_time":"2026-12-07T22:{:02}:{:02}.{ms:03}Z","duration":{},"upstream_service_time":"{}","method":"{method}","path":"{path}","protocol":"HTTP/1.1","response_code":{code},"response_flags":"{flags}","bytes_received":{},"bytes_sent":{},"user_agent":"{}","authority":"{}.{}.svc.cluster.local","request_id":"{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}","downstream_remote_address":"{client}:{}","downstream_local_address":"{}:{}","upstream_host":"{}:{}"}}"#,
        (i / 60_000) % 60,
        (i / 1000) % 60,
        1 + rng.below(40),
        rng.below(30),
        if method == "GET" { 0 } else { rng.below(4096) },
        rng.below(20_000),
        AGENTS[rng.below(AGENTS.len() as u64) as usize],
        svc.name,
        svc.namespace,
        rng.next_u64() as u32,
        rng.below(1 << 16),
        rng.below(1 << 12),
        rng.below(1 << 12),
        rng.next_u64() & 0xffff_ffff_ffff,
        32768 + rng.below(28_000),
        svc.cluster_ip,
        svc.port,
        svc.endpoint_ip,
        svc.endpoint_port,
    );
    line.push('\n');
    line
}

/// Writes `n` lines to `path`; returns their bytes and the distinct sources, Services and
/// paths among them.
fn write_lines(path: &Path, n: usize, seed: u64) -> Result<(u64, usize, usize, usize)> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let mut rng = Rng::new(seed);
    let (mut bytes, mut sources, mut services, mut paths) = (
        0u64,
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
    );
    for i in 0..n {
        let line = access_line(&mut rng, i as u64);
        bytes += line.len() as u64;
        if let Some(d) = distinct_fields(&line) {
            sources.insert(d.0);
            services.insert(d.1);
            paths.insert(d.2);
        }
        out.write_all(line.as_bytes())?;
    }
    out.flush()?;
    Ok((bytes, sources.len(), services.len(), paths.len()))
}

/// The client address (without port), the original destination and the path of a generated
/// line.
fn distinct_fields(line: &str) -> Option<(String, String, String)> {
    let field = |name: &str| {
        let key = format!("\"{name}\":\"");
        let start = line.find(&key)? + key.len();
        let len = line[start..].find('"')?;
        Some(line[start..start + len].to_string())
    };
    let source = field("downstream_remote_address")?;
    let source = source
        .rsplit_once(':')
        .map_or(source.clone(), |(ip, _)| ip.to_string());
    Some((source, field("downstream_local_address")?, field("path")?))
}

/// User + system CPU time of a process (all its threads), in ns, from the text of
/// `/proc/PID/stat` and the clock ticks per second.
pub fn cpu_ns_of_stat(stat: &str, ticks_per_s: u64) -> Option<u64> {
    // The command name is in parentheses and may hold spaces: count fields after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) of proc(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000_000 / ticks_per_s.max(1))
}

/// Sums of the collector's summary log lines: `(lines, requests, unparsable, skipped_lines)`.
pub fn summary_totals(log: &str) -> (u64, u64, u64, u64) {
    let mut totals = (0, 0, 0, 0);
    for line in log
        .lines()
        .filter(|l| l.contains("access log summary since the last one"))
    {
        let num = |key: &str| -> u64 {
            let key = format!(" {key}=");
            line.find(&key)
                .map(|at| {
                    line[at + key.len()..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                })
                .and_then(|d| d.parse().ok())
                .unwrap_or(0)
        };
        totals.0 += num("lines");
        totals.1 += num("requests");
        totals.2 += num("unparsable");
        totals.3 += num("skipped_lines");
    }
    totals
}

/// `redirector collect` with its log in a file; stopped by its PID on drop.
struct Collector {
    child: Child,
    log: PathBuf,
}

impl Collector {
    fn start(exe: &Path, dir: &Path, services: &Path) -> Result<Self> {
        let log = dir.join("collector.log");
        let file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(exe)
            .arg("collect")
            .arg("--access-log")
            .arg(dir.join("access.log"))
            .arg("--services-file")
            .arg(services)
            .arg("--output")
            .arg(dir.join("records.jsonl"))
            .args([
                "--max-lag",
                "4GiB",
                "--summary-interval",
                "100ms",
                "--node-name",
                "bench-node",
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let mut c = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.log_text().contains("following the access log") {
            check_interrupted()?;
            c.check_running()?;
            if Instant::now() > deadline {
                bail!("the collector did not start within 30 s");
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(c)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the collector exited ({status}); its log:\n{}",
                self.log_text()
            );
        }
        Ok(())
    }

    fn cpu_ns(&self) -> Result<u64> {
        let path = format!("/proc/{}/stat", self.child.id());
        let stat = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        cpu_ns_of_stat(&stat, u64::try_from(ticks).unwrap_or(100))
            .with_context(|| format!("cannot read the CPU times in {path}"))
    }

    /// `(VmRSS, VmHWM)` in KiB.
    fn memory(&self) -> Result<(u64, u64)> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let field = |key: &str| {
            proc_field(&status, key)
                .and_then(|v| kib(&v))
                .with_context(|| format!("no {key} in {path}"))
        };
        Ok((field("VmRSS")?, field("VmHWM")?))
    }

    /// Waits until the summaries have counted `lines` lines; returns the totals.
    fn wait_for_lines(&mut self, lines: u64, limit: Duration) -> Result<(u64, u64, u64, u64)> {
        let deadline = Instant::now() + limit;
        loop {
            check_interrupted()?;
            let totals = summary_totals(&self.log_text());
            if totals.0 + totals.3 >= lines {
                return Ok(totals);
            }
            self.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "the collector counted {} of {lines} lines within {limit:?}",
                    totals.0
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: signalling the child we started, by its PID.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs the scenario.
pub fn run(p: &Params) -> Result<CollectorResult> {
    let dir = TempDir(std::env::temp_dir().join(format!("l7r-bench-collector-{}", unique_id())));
    fs::create_dir_all(&dir.0).with_context(|| format!("cannot create {}", dir.0.display()))?;
    let services = dir.0.join("services.yaml");
    fs::write(&services, services_file())?;
    let mut r = CollectorResult {
        lines: p.lines as u64,
        steady_rate: p.rate,
        ..CollectorResult::default()
    };

    progress(&format!("collector: writing {} access log lines", p.lines));
    let pending = dir.0.join("access.log.pending");
    let (bytes, sources, services_seen, paths) = write_lines(&pending, p.lines, p.seed)?;
    r.bytes = bytes;
    r.distinct_sources = sources;
    r.distinct_services = services_seen;
    r.distinct_paths = paths;

    progress("collector: throughput over the pre-written lines");
    {
        let mut c = Collector::start(&p.redirector, &dir.0, &services)?;
        let cpu0 = c.cpu_ns()?;
        let t0 = Instant::now();
        fs::rename(&pending, dir.0.join("access.log"))?;
        let totals = c.wait_for_lines(r.lines, Duration::from_secs(600))?;
        r.wall_ns = t0.elapsed().as_nanos() as u64;
        r.cpu_ns = c.cpu_ns()? - cpu0;
        r.requests = totals.1;
        if totals.1 != r.lines || totals.2 != 0 || totals.3 != 0 {
            bail!(
                "the collector counted {} requests, {} unparsable and {} skipped lines of {}",
                totals.1,
                totals.2,
                totals.3,
                r.lines
            );
        }
        r.burst_vm_hwm_kib = c.memory()?.1;
    }
    fs::remove_file(dir.0.join("access.log"))?;
    let _ = fs::remove_file(dir.0.join("records.jsonl"));

    progress(&format!(
        "collector: {} lines/s appended for {} s",
        p.rate, p.seconds
    ));
    let mut c = Collector::start(&p.redirector, &dir.0, &services)?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.0.join("access.log"))?;
    let mut rng = Rng::new(p.seed ^ 0x5eed);
    let tick = Duration::from_millis(10);
    let cpu0 = c.cpu_ns()?;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(p.seconds);
    let mut written = 0u64;
    let mut next = t0;
    while Instant::now() < end {
        check_interrupted()?;
        // Catch up to the rate asked: lines due by now, written in one append.
        let due = (t0.elapsed().as_secs_f64() * p.rate as f64) as u64;
        let mut batch = String::new();
        while written < due {
            batch.push_str(&access_line(&mut rng, written));
            written += 1;
        }
        log.write_all(batch.as_bytes())?;
        next += tick;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
    r.steady_wall_ns = t0.elapsed().as_nanos() as u64;
    r.steady_cpu_ns = c.cpu_ns()? - cpu0;
    r.steady_lines = written;
    let (rss, hwm) = c.memory()?;
    r.steady_vm_rss_kib = rss;
    r.steady_vm_hwm_kib = hwm;
    let totals = c.wait_for_lines(written, Duration::from_secs(60))?;
    if totals.1 != written {
        bail!(
            "the collector counted {} requests of {written} lines appended",
            totals.1
        );
    }
    c.check_running()?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use redirector::{
        collector::parse::{Kind, parse_line},
        k8s::sources::{Kinds, manifests},
    };

    use super::*;

    #[test]
    fn generated_lines_parse_as_envoy_lines_and_vary() {
        let mut rng = Rng::new(1);
        let mut paths = std::collections::HashSet::new();
        let mut sources = std::collections::HashSet::new();
        for i in 0..2000 {
            let line = access_line(&mut rng, i);
            assert!(line.ends_with('\n'));
            let e = parse_line(line.trim_end()).unwrap();
            assert_eq!(e.kind, Kind::Http);
            assert!(
                e.source.is_some() && e.original_destination.is_some(),
                "{line}"
            );
            assert!(e.path.is_some() && e.method.is_some(), "{line}");
            let (s, _, p) = distinct_fields(&line).unwrap();
            sources.insert(s);
            paths.insert(p);
        }
        assert!(paths.len() > 1000, "{}", paths.len());
        assert!(sources.len() > 500, "{}", sources.len());
    }

    #[test]
    fn the_services_file_names_both_ends() {
        let m = manifests::parse(&services_file(), Kinds::COLLECTOR).unwrap();
        assert_eq!(m.services.len(), SERVICES);
        assert_eq!(m.slices.len(), SERVICES);
        assert_eq!(m.pods.len(), SERVICES + CLIENTS);
    }

    #[test]
    fn cpu_times_come_from_fields_14_and_15() {
        let stat = "4242 (redirector (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    3 0 100 1000 200";
        assert_eq!(cpu_ns_of_stat(stat, 100), Some(3_000_000_000));
        assert_eq!(cpu_ns_of_stat("garbage", 100), None);
    }

    #[test]
    fn summaries_are_summed() {
        let log = "2026-12-07T22:00:00Z  INFO redirector::collector: following the access log\n\
                   2026-12-07T22:00:01Z  INFO redirector::collector: access log summary since \
                   the last one lines=10 requests=9 records=0 unparsable=1 skipped_lines=0 \
                   skipped_bytes=0 rotations=0 truncations=0 total_unparsable=1 \
                   total_skipped_lines=0\n\
                   2026-12-07T22:00:02Z  INFO redirector::collector: access log summary since \
                   the last one lines=5 requests=5 records=3 unparsable=0 skipped_lines=2 \
                   skipped_bytes=9 rotations=0 truncations=0 total_unparsable=1 \
                   total_skipped_lines=2\n";
        assert_eq!(summary_totals(log), (15, 14, 1, 2));
    }
}
