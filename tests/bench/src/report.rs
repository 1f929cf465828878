//! What a run measured: the raw samples (written as JSON under `target/bench/`), and the
//! Markdown tables of medians and ratios to each group's baseline that are printed.

use std::{fs, path::Path};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    client::Batch,
    machine::Machine,
    scenarios::{
        collector::{CollectorResult, GOAL_LINES_PER_CORE},
        ports::PortsResult,
    },
    stats::{
        Align, Latency, Spread, Table, fmt_count, fmt_ms, fmt_ratio_spread, fmt_us, fmt_us_spread,
        median, ratio,
    },
};

/// One alternative in one configuration: every sample it produced.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    /// The configuration, shared by the alternatives compared with each other (`N = 1000`,
    /// `node / rust`).
    pub group: String,
    /// What is measured (`none`, `redirector`, `iptables`, `nftables`).
    pub alternative: String,
    /// Whether this is the group's baseline, the denominator of the ratios.
    pub baseline: bool,
    /// Each connection's `connect()` in nanoseconds.
    pub connect_ns: Vec<u64>,
    /// Each connection from `connect()` to the complete answer, in nanoseconds.
    pub exchange_ns: Vec<u64>,
    /// Connections per second of each batch.
    pub batch_rates: Vec<f64>,
    /// Connections of each batch, in order: where `connect_ns` and `exchange_ns` split into
    /// rounds (one batch per alternative and round).
    pub batch_sizes: Vec<usize>,
    /// Bytes per long stream (0: no streams measured).
    pub stream_bytes: u64,
    /// Duration of each long stream, in nanoseconds.
    pub stream_ns: Vec<u64>,
    /// Facts about the set-up (how long loading the rules took, ...).
    pub notes: Vec<String>,
}

impl Series {
    /// A series for `alternative` in `group`.
    pub fn new(group: &str, alternative: &str, baseline: bool) -> Self {
        Self {
            group: group.to_string(),
            alternative: alternative.to_string(),
            baseline,
            ..Self::default()
        }
    }

    /// Adds a batch's samples.
    pub fn add(&mut self, batch: &Batch) {
        self.connect_ns.extend_from_slice(&batch.connect_ns);
        self.exchange_ns.extend_from_slice(&batch.exchange_ns);
        self.batch_rates.push(batch.rate());
        self.batch_sizes.push(batch.connect_ns.len());
    }

    /// `samples` (`connect_ns` or `exchange_ns`) split into this series' batches.
    fn rounds<'a>(&self, samples: &'a [u64]) -> Vec<&'a [u64]> {
        let mut out = Vec::with_capacity(self.batch_sizes.len());
        let mut at = 0;
        for &n in &self.batch_sizes {
            let end = (at + n).min(samples.len());
            out.push(&samples[at..end]);
            at = end;
        }
        out
    }

    /// This series over `base`, round by round (batch `r` of each ran in round `r`): p50 and
    /// p99 of `samples` (`Series::connect_ns` or `Series::exchange_ns`), connections per
    /// second, and stream throughput (stream `r` of each, run one after the other).
    pub fn round_ratios(&self, base: &Series, samples: fn(&Series) -> &[u64]) -> RoundRatios {
        let (mine, theirs) = (self.rounds(samples(self)), base.rounds(samples(base)));
        let mut out = RoundRatios::default();
        for (m, b) in mine.iter().zip(&theirs) {
            let (m, b) = (Latency::of(m), Latency::of(b));
            out.p50.push(ratio(p50(m), p50(b)));
            out.p99.push(ratio(p99(m), p99(b)));
            out.added_p50_ns.push(match (p50(m), p50(b)) {
                (Some(m), Some(b)) => Some(m - b),
                _ => None,
            });
        }
        out.rate = self
            .batch_rates
            .iter()
            .zip(&base.batch_rates)
            .map(|(&m, &b)| ratio(Some(m), Some(b)))
            .collect();
        out.stream = self
            .stream_ns
            .iter()
            .zip(&base.stream_ns)
            .map(|(&m, &b)| ratio(Some(b as f64), Some(m as f64)))
            .collect();
        out
    }

    /// p50/p99 of `connect()`.
    pub fn connect(&self) -> Option<Latency> {
        Latency::of(&self.connect_ns)
    }

    /// p50/p99 of connect-to-answer.
    pub fn exchange(&self) -> Option<Latency> {
        Latency::of(&self.exchange_ns)
    }

    /// Median connections per second over the batches.
    pub fn rate(&self) -> Option<f64> {
        median(&self.batch_rates)
    }

    /// Median throughput of the long streams, in MiB/s.
    pub fn stream_mib_s(&self) -> Option<f64> {
        let rates: Vec<f64> = self
            .stream_ns
            .iter()
            .map(|&ns| self.stream_bytes as f64 / (1 << 20) as f64 / (ns as f64 / 1e9))
            .collect();
        median(&rates)
    }
}

/// One daemon run's memory.
#[derive(Clone, Debug, Serialize)]
pub struct RssSample {
    /// Services in the file (all selected).
    pub services: usize,
    /// Destinations they select (entries in the map).
    pub destinations: usize,
    /// Peak resident set size (`VmHWM`), KiB.
    pub vm_hwm_kib: u64,
    /// Resident set size once synced (`VmRSS`), KiB.
    pub vm_rss_kib: u64,
    /// From the daemon's start to all entries in the map, nanoseconds.
    pub sync_ns: u64,
}

/// Scenario 3: the daemon's control plane in `--services-file` mode.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ControlResult {
    /// Services selected while changes are measured.
    pub services: usize,
    /// Destinations those select.
    pub destinations: usize,
    /// Start-up syncs of `services`: from the daemon's start to all entries present, ns.
    pub sync_ns: Vec<u64>,
    /// From a Service being added to the file to its entry in the map, ns.
    pub add_ns: Vec<u64>,
    /// From a Service being removed from the file to its entry gone from the map, ns.
    pub remove_ns: Vec<u64>,
    /// Memory at each size asked.
    pub rss: Vec<RssSample>,
}

/// Scenario 6: the daemon in kube mode against one cluster size.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KubeResult {
    /// Services in the API server.
    pub services: usize,
    /// Endpoints over all their EndpointSlices.
    pub endpoints: usize,
    /// Services selected at the start.
    pub selected: usize,
    /// Map entries those select.
    pub destinations: usize,
    /// Building the objects and loading them into the API server (not a measurement of the
    /// daemon), ns.
    pub load_ns: u64,
    /// Start-up syncs: from the daemon's start to every entry in the map, ns.
    pub sync_ns: Vec<u64>,
    /// The daemon's CPU time (user + system) by the end of each sync, ns.
    pub sync_cpu_ns: Vec<u64>,
    /// `VmHWM` and `VmRSS` once synced (the last sync), KiB.
    pub synced_hwm_kib: u64,
    /// See `synced_hwm_kib`.
    pub synced_rss_kib: u64,
    /// From an annotation added to an unselected Service to its entries in the map, ns.
    pub annotate_ns: Vec<u64>,
    /// From an endpoint added to a selected Service's slice to its entry in the map, ns.
    pub endpoint_ns: Vec<u64>,
    /// From a selected Service deleted to its ClusterIP's entry gone, ns.
    pub delete_ns: Vec<u64>,
    /// Background endpoint changes per second asked for.
    pub churn_target: u32,
    /// Background endpoint changes made during the measured changes.
    pub churn_changes: usize,
    /// Their rate, per second.
    pub churn_rate: f64,
    /// How long the measured changes took, ns.
    pub changes_wall_ns: u64,
    /// The daemon's CPU time over them, ns.
    pub changes_cpu_ns: u64,
    /// Peak RSS (`VmHWM`) over the whole run of the daemon, KiB.
    pub vm_hwm_kib: u64,
    /// `VmRSS` at the end of the changes, KiB.
    pub end_rss_kib: u64,
    /// What that RSS is: `RssAnon` (heap, stacks) and `RssFile` (the binary's pages read),
    /// KiB.
    pub end_rss_anon_kib: u64,
    /// See `end_rss_anon_kib`.
    pub end_rss_file_kib: u64,
}

impl KubeResult {
    /// Every measured change, all kinds together.
    pub fn all_changes_ns(&self) -> Vec<u64> {
        [&self.annotate_ns, &self.endpoint_ns, &self.delete_ns]
            .into_iter()
            .flatten()
            .copied()
            .collect()
    }

    /// The median start-up sync, ns.
    pub fn sync_median_ns(&self) -> Option<u64> {
        median(&self.sync_ns.iter().map(|&x| x as f64).collect::<Vec<_>>()).map(|m| m as u64)
    }
}

/// Scenario 6's goals (issue 17).
pub const KUBE_CHANGE_P99_GOAL_NS: u64 = 50_000_000;
/// Start-up sync of 10 000 Services.
pub const KUBE_SYNC_GOAL_NS: u64 = 1_000_000_000;
/// RSS at 10 000 Services / 100 000 endpoints.
pub const KUBE_RSS_GOAL_KIB: u64 = 64 * 1024;

/// Scenario 5: one path's (direct or steered) rounds in one mode, kept round by round so
/// that ratios can be taken per round.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CostRounds {
    /// Each round's request latencies in nanoseconds (keep-alive: from writing the request to
    /// the complete answer; new connection: from `connect()` to the complete answer).
    pub latency_ns: Vec<Vec<u64>>,
    /// Each round's `connect()` times in nanoseconds (empty rounds with keep-alive, where the
    /// one connection is not timed).
    pub connect_ns: Vec<Vec<u64>>,
    /// Each round's requests per second (new connection mode: connections per second).
    pub rates: Vec<f64>,
}

impl CostRounds {
    /// Adds a round.
    pub fn add(&mut self, latency_ns: Vec<u64>, connect_ns: Vec<u64>, rate: f64) {
        self.latency_ns.push(latency_ns);
        self.connect_ns.push(connect_ns);
        self.rates.push(rate);
    }

    /// p50/p99 over every round's samples.
    pub fn latency(&self) -> Option<Latency> {
        Latency::of(&self.latency_ns.concat())
    }

    /// Median rate over the rounds.
    pub fn rate(&self) -> Option<f64> {
        median(&self.rates)
    }

    /// p50/p99 of round `r` alone.
    fn round(&self, r: usize) -> Option<Latency> {
        self.latency_ns.get(r).and_then(|s| Latency::of(s))
    }
}

/// Scenario 5: one mode (keep-alive, or a new connection per request), direct and steered
/// through Envoy, interleaved round by round.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CostResult {
    /// The mode.
    pub mode: String,
    /// The Service not selected: the physical limit, the denominator of the ratios.
    pub direct: CostRounds,
    /// The Service selected: steered through Envoy, which logs each request.
    pub steered: CostRounds,
    /// Facts about the run (redirector counters, access log lines).
    pub notes: Vec<String>,
}

/// Steered over direct in each round: p50, p99 and rate ratios, and the p50 difference (ns).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoundRatios {
    /// p50 steered / p50 direct, per round.
    pub p50: Vec<Option<f64>>,
    /// p99 steered / p99 direct, per round.
    pub p99: Vec<Option<f64>>,
    /// Rate steered / rate direct, per round.
    pub rate: Vec<Option<f64>>,
    /// p50 steered − p50 direct in nanoseconds, per round: what a request pays.
    pub added_p50_ns: Vec<Option<f64>>,
    /// Stream throughput over the baseline's, per stream (scenario 2).
    pub stream: Vec<Option<f64>>,
}

impl CostResult {
    /// The per-round ratios of steered to direct (rounds are paired by index: both ran in the
    /// same round, one right after the other).
    pub fn round_ratios(&self) -> RoundRatios {
        let rounds = self.direct.rates.len().min(self.steered.rates.len());
        let mut out = RoundRatios::default();
        for r in 0..rounds {
            let (d, s) = (self.direct.round(r), self.steered.round(r));
            out.p50.push(ratio(p50(s), p50(d)));
            out.p99.push(ratio(p99(s), p99(d)));
            out.rate.push(ratio(
                self.steered.rates.get(r).copied(),
                self.direct.rates.get(r).copied(),
            ));
            out.added_p50_ns.push(match (p50(s), p50(d)) {
                (Some(s), Some(d)) => Some(s - d),
                _ => None,
            });
        }
        out
    }
}

/// Scenario 5's table: per mode, direct (the limit) and steered through Envoy, pooled p50/p99
/// and median rate, and the median of the per-round ratios with their min–max.
pub fn cost_table(results: &[CostResult]) -> Table {
    let mut t = Table::new(&[
        ("mode", Align::Left),
        ("path", Align::Left),
        ("request p50 µs", Align::Right),
        ("request p99 µs", Align::Right),
        ("req/s", Align::Right),
        ("added p50 µs", Align::Right),
        ("p50 × (min–max)", Align::Right),
        ("p99 × (min–max)", Align::Right),
        ("req/s × (min–max)", Align::Right),
        ("rounds", Align::Right),
    ]);
    for c in results {
        let r = c.round_ratios();
        let (d, s) = (c.direct.latency(), c.steered.latency());
        t.row(vec![
            c.mode.clone(),
            "direct (not selected)".into(),
            fmt_us(d.map(|l| l.p50)),
            fmt_us(d.map(|l| l.p99)),
            fmt_count(c.direct.rate()),
            "–".into(),
            "1.00".into(),
            "1.00".into(),
            "1.00".into(),
            c.direct.rates.len().to_string(),
        ]);
        t.row(vec![
            c.mode.clone(),
            "steered through Envoy".into(),
            fmt_us(s.map(|l| l.p50)),
            fmt_us(s.map(|l| l.p99)),
            fmt_count(c.steered.rate()),
            fmt_us_spread(Spread::of(&r.added_p50_ns)),
            fmt_ratio_spread(Spread::of(&r.p50)),
            fmt_ratio_spread(Spread::of(&r.p99)),
            fmt_ratio_spread(Spread::of(&r.rate)),
            c.steered.rates.len().to_string(),
        ]);
    }
    t
}

/// Everything a run produced.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Format version of this file.
    pub version: u32,
    /// Where it ran.
    pub machine: Machine,
    /// The `l7r-bench` command line.
    pub args: Vec<String>,
    /// Start, seconds since the epoch.
    pub started_unix: u64,
    /// How long the run took, seconds.
    pub elapsed_s: f64,
    /// Load averages (1, 5, 15 min) when the run started.
    pub loadavg_start: String,
    /// Load averages when it ended.
    pub loadavg_end: String,
    /// Scenario 1.
    pub unselected: Vec<Series>,
    /// Scenario 2.
    pub selected: Vec<Series>,
    /// Scenario 3.
    pub control: Option<ControlResult>,
    /// Scenario 4.
    pub ports: Vec<PortsResult>,
    /// Scenario 5, one entry per mode.
    pub cost: Vec<CostResult>,
    /// The collector's throughput ("7." of the report).
    pub collector: Option<CollectorResult>,
    /// Scenario 6, one entry per cluster size.
    pub kube: Vec<KubeResult>,
    /// Alternatives or scenarios that were skipped, and why.
    pub skipped: Vec<String>,
    /// Scenarios that failed, with the error; the others still ran.
    pub failures: Vec<String>,
}

/// The baseline of `series`' group.
fn baseline<'a>(all: &'a [Series], series: &Series) -> Option<&'a Series> {
    all.iter().find(|s| s.group == series.group && s.baseline)
}

fn p50(l: Option<Latency>) -> Option<f64> {
    l.map(|l| l.p50 as f64)
}

fn p99(l: Option<Latency>) -> Option<f64> {
    l.map(|l| l.p99 as f64)
}

fn connect_samples(s: &Series) -> &[u64] {
    &s.connect_ns
}

fn exchange_samples(s: &Series) -> &[u64] {
    &s.exchange_ns
}

/// The ratios of `s` to its group's baseline, per round, as `[p50, p99, rate, stream]`
/// spreads (median of the rounds, min–max); the baseline itself is `1.00`.
fn ratio_cells(all: &[Series], s: &Series, samples: fn(&Series) -> &[u64]) -> [String; 4] {
    if s.baseline {
        return ["1.00".into(), "1.00".into(), "1.00".into(), "1.00".into()];
    }
    let Some(base) = baseline(all, s) else {
        return ["–".into(), "–".into(), "–".into(), "–".into()];
    };
    let r = s.round_ratios(base, samples);
    [
        fmt_ratio_spread(Spread::of(&r.p50)),
        fmt_ratio_spread(Spread::of(&r.p99)),
        fmt_ratio_spread(Spread::of(&r.rate)),
        fmt_ratio_spread(Spread::of(&r.stream)),
    ]
}

/// Scenario 1's table: connect latency and rate per N, with ratios to no programs (the
/// physical limit: the same path with nothing attached), each the median of the per-round
/// ratios with their min–max.
pub fn unselected_table(series: &[Series]) -> Table {
    let mut t = Table::new(&[
        ("selected N", Align::Right),
        ("alternative", Align::Left),
        ("connect p50 µs", Align::Right),
        ("connect p99 µs", Align::Right),
        ("conn/s", Align::Right),
        ("p50 × (min–max)", Align::Right),
        ("p99 × (min–max)", Align::Right),
        ("conn/s × (min–max)", Align::Right),
        ("rounds", Align::Right),
    ]);
    for s in series {
        let c = s.connect();
        let [r50, r99, rate, _] = ratio_cells(series, s, connect_samples);
        t.row(vec![
            s.group.clone(),
            s.alternative.clone(),
            fmt_us(c.map(|l| l.p50)),
            fmt_us(c.map(|l| l.p99)),
            fmt_count(s.rate()),
            r50,
            r99,
            rate,
            s.batch_rates.len().to_string(),
        ]);
    }
    t
}

/// Scenario 2's table: per placement and proxy, connect and request latency, rate and stream
/// throughput, with ratios to the iptables baseline (each the median of the per-round ratios
/// with their min–max); the `direct` row, no proxy at all, is the physical limit.
pub fn selected_table(series: &[Series]) -> Table {
    let mut t = Table::new(&[
        ("placement / proxy", Align::Left),
        ("steering", Align::Left),
        ("connect p50 µs", Align::Right),
        ("connect p99 µs", Align::Right),
        ("request p50 µs", Align::Right),
        ("request p99 µs", Align::Right),
        ("conn/s", Align::Right),
        ("stream MiB/s", Align::Right),
        ("request p50 × (min–max)", Align::Right),
        ("request p99 × (min–max)", Align::Right),
        ("conn/s × (min–max)", Align::Right),
        ("stream × (min–max)", Align::Right),
    ]);
    for s in series {
        let (c, e) = (s.connect(), s.exchange());
        let [r50, r99, rate, stream] = ratio_cells(series, s, exchange_samples);
        t.row(vec![
            s.group.clone(),
            s.alternative.clone(),
            fmt_us(c.map(|l| l.p50)),
            fmt_us(c.map(|l| l.p99)),
            fmt_us(e.map(|l| l.p50)),
            fmt_us(e.map(|l| l.p99)),
            fmt_count(s.rate()),
            fmt_count(s.stream_mib_s()),
            r50,
            r99,
            rate,
            stream,
        ]);
    }
    t
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Scenario 3's table: each measurement next to its target.
pub fn control_table(c: &ControlResult) -> Table {
    let mut t = Table::new(&[
        ("measurement", Align::Left),
        ("result", Align::Left),
        ("target", Align::Left),
    ]);
    let lat = |samples: &[u64]| match Latency::of(samples) {
        Some(l) => format!(
            "p50 {} ms, p99 {} ms (n = {})",
            fmt_ms(Some(l.p50)),
            fmt_ms(Some(l.p99)),
            l.count
        ),
        None => "–".into(),
    };
    let scale = format!(
        "{} Services selected ({} destinations)",
        fmt_count(Some(c.services as f64)),
        fmt_count(Some(c.destinations as f64))
    );
    t.row(vec![
        format!("Service added to the file → entry in the map, {scale}"),
        lat(&c.add_ns),
        "p99 ≤ 100 ms".into(),
    ]);
    t.row(vec![
        format!("Service removed from the file → entry gone, {scale}"),
        lat(&c.remove_ns),
        "(none)".into(),
    ]);
    let sync = match Latency::of(&c.sync_ns) {
        Some(_) => {
            let mut v = c.sync_ns.clone();
            v.sort_unstable();
            format!(
                "median {} ms (min {}, max {}; n = {})",
                fmt_ms(median(&v.iter().map(|&x| x as f64).collect::<Vec<_>>()).map(|m| m as u64)),
                fmt_ms(v.first().copied()),
                fmt_ms(v.last().copied()),
                v.len()
            )
        }
        None => "–".into(),
    };
    t.row(vec![
        format!("start-up sync, {scale}"),
        sync,
        "≤ 2 s".into(),
    ]);
    for r in &c.rss {
        t.row(vec![
            format!(
                "daemon peak RSS (VmHWM), {} destinations ({} Services)",
                fmt_count(Some(r.destinations as f64)),
                fmt_count(Some(r.services as f64))
            ),
            format!(
                "{} (RSS once synced {}; synced in {} ms)",
                mib(r.vm_hwm_kib),
                mib(r.vm_rss_kib),
                fmt_ms(Some(r.sync_ns))
            ),
            if r.destinations <= 10_000 {
                "≤ 64 MiB at 10 000".into()
            } else {
                "(none)".into()
            },
        ]);
    }
    t
}

/// Scenario 4's table: per alternative, the connections made, the rate, and the failures
/// (medians over the rounds), with the rate's ratio to direct taken round by round (median of
/// the rounds, min–max). Direct, which meets the rate asked, is the physical limit.
pub fn ports_table(results: &[PortsResult]) -> Table {
    let mut t = Table::new(&[
        ("steering", Align::Left),
        ("proxy ports of the 4 destinations", Align::Left),
        ("connected", Align::Right),
        ("conn/s", Align::Right),
        ("EADDRNOTAVAIL", Align::Right),
        ("other failures", Align::Right),
        ("first EADDRNOTAVAIL", Align::Right),
        ("conn/s × (min–max)", Align::Right),
        ("rounds", Align::Right),
    ]);
    let mut names: Vec<&str> = Vec::new();
    for r in results {
        if !names.contains(&r.alternative.as_str()) {
            names.push(&r.alternative);
        }
    }
    let direct_in = |round: usize| {
        results
            .iter()
            .find(|r| r.proxy_ports.is_empty() && r.round == round)
    };
    let med = |v: Vec<f64>| median(&v);
    for name in names {
        let runs: Vec<&PortsResult> = results.iter().filter(|r| r.alternative == name).collect();
        let Some(first) = runs.first() else { continue };
        let ports = if first.proxy_ports.is_empty() {
            "– (direct)".to_string()
        } else {
            first
                .proxy_ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let ratios: Vec<Option<f64>> = runs
            .iter()
            .map(|r| ratio(Some(r.rate()), direct_in(r.round).map(PortsResult::rate)))
            .collect();
        let firsts: Vec<f64> = runs.iter().filter_map(|r| r.first_failure_s).collect();
        t.row(vec![
            name.to_string(),
            ports,
            fmt_count(med(runs.iter().map(|r| r.connected as f64).collect())),
            fmt_count(med(runs.iter().map(|r| r.rate()).collect())),
            fmt_count(med(runs.iter().map(|r| r.addr_not_avail as f64).collect())),
            fmt_count(med(runs.iter().map(|r| r.other_failures as f64).collect())),
            med(firsts).map_or_else(|| "–".to_string(), |s| format!("after {s:.1} s")),
            if first.proxy_ports.is_empty() {
                "1.00".into()
            } else {
                fmt_ratio_spread(Spread::of(&ratios))
            },
            runs.len().to_string(),
        ]);
    }
    t
}

/// The collector's table: lines per core against the goal, and its cost at a steady rate.
pub fn collector_table(c: &CollectorResult) -> Table {
    let mut t = Table::new(&[
        ("measurement", Align::Left),
        ("result", Align::Left),
        ("goal", Align::Left),
    ]);
    let per_core = c.lines_per_core();
    let met = match per_core {
        Some(v) if v >= GOAL_LINES_PER_CORE => "met",
        Some(_) => "not met",
        None => "–",
    };
    t.row(vec![
        format!(
            "lines aggregated per CPU second ({} lines, {:.0} MiB; {} clients, {} Services, {} \
             paths)",
            fmt_count(Some(c.lines as f64)),
            c.bytes as f64 / f64::from(1 << 20),
            fmt_count(Some(c.distinct_sources as f64)),
            fmt_count(Some(c.distinct_services as f64)),
            fmt_count(Some(c.distinct_paths as f64)),
        ),
        format!(
            "{} lines/s per core ({} ms of CPU; {} ms wall; peak RSS {})",
            fmt_count(per_core),
            fmt_ms(Some(c.cpu_ns)),
            fmt_ms(Some(c.wall_ns)),
            mib(c.burst_vm_hwm_kib)
        ),
        format!("≥ 100 000 lines/s per core: {met}"),
    ]);
    t.row(vec![
        format!(
            "collector CPU at a steady {} lines/s ({} lines appended over {:.1} s)",
            fmt_count(c.steady_achieved_rate()),
            fmt_count(Some(c.steady_lines as f64)),
            c.steady_wall_ns as f64 / 1e9
        ),
        c.steady_cpu_percent()
            .map_or_else(|| "–".into(), |p| format!("{p:.1} % of one core")),
        "(none)".into(),
    ]);
    t.row(vec![
        "collector memory at that rate".into(),
        format!(
            "RSS {} (peak {})",
            mib(c.steady_vm_rss_kib),
            mib(c.steady_vm_hwm_kib)
        ),
        "(none)".into(),
    ]);
    t
}

/// "met" or "not met" for a goal that applies, "(none)" when none does.
fn goal_cell(goal: Option<&str>, met: Option<bool>) -> String {
    match (goal, met) {
        (Some(g), Some(true)) => format!("{g}: met"),
        (Some(g), Some(false)) => format!("{g}: NOT met"),
        (Some(g), None) => format!("{g}: –"),
        (None, _) => "(none)".into(),
    }
}

/// Scenario 6's table: per cluster size, each measurement next to its goal, marked met or not.
pub fn kube_table(results: &[KubeResult]) -> Table {
    let mut t = Table::new(&[
        ("cluster", Align::Left),
        ("measurement", Align::Left),
        ("result", Align::Left),
        ("goal", Align::Left),
    ]);
    let lat = |samples: &[u64]| match Latency::of(samples) {
        Some(l) => format!(
            "p50 {} ms, p99 {} ms (n = {})",
            fmt_ms(Some(l.p50)),
            fmt_ms(Some(l.p99)),
            l.count
        ),
        None => "–".into(),
    };
    let p99_met = |samples: &[u64]| Latency::of(samples).map(|l| l.p99 <= KUBE_CHANGE_P99_GOAL_NS);
    for r in results {
        let cluster = format!(
            "{} Services / {} endpoints ({} selected, {} entries)",
            fmt_count(Some(r.services as f64)),
            fmt_count(Some(r.endpoints as f64)),
            fmt_count(Some(r.selected as f64)),
            fmt_count(Some(r.destinations as f64))
        );
        // The sync and memory goals are stated for 10 000 Services / 100 000 endpoints only.
        let at_goal_size = r.services == 10_000 && r.endpoints == 100_000;
        let mut sorted = r.sync_ns.clone();
        sorted.sort_unstable();
        let sync_cpu = median(&r.sync_cpu_ns.iter().map(|&x| x as f64).collect::<Vec<_>>());
        t.row(vec![
            cluster.clone(),
            "start-up sync → complete map".into(),
            format!(
                "median {} ms (min {}, max {}; n = {}); daemon CPU {} ms",
                fmt_ms(r.sync_median_ns()),
                fmt_ms(sorted.first().copied()),
                fmt_ms(sorted.last().copied()),
                sorted.len(),
                fmt_ms(sync_cpu.map(|c| c as u64))
            ),
            goal_cell(
                at_goal_size.then_some("≤ 1 s at 10 000 Services"),
                r.sync_median_ns().map(|m| m <= KUBE_SYNC_GOAL_NS),
            ),
        ]);
        for (what, samples) in [
            ("annotation added → entries appear", &r.annotate_ns),
            ("endpoint added → entry appears", &r.endpoint_ns),
            ("selected Service deleted → entry gone", &r.delete_ns),
        ] {
            t.row(vec![
                cluster.clone(),
                what.into(),
                lat(samples),
                goal_cell(Some("p99 ≤ 50 ms"), p99_met(samples)),
            ]);
        }
        let all = r.all_changes_ns();
        t.row(vec![
            cluster.clone(),
            format!(
                "all changes, under {} background endpoint changes/s",
                fmt_count(Some(r.churn_rate))
            ),
            lat(&all),
            goal_cell(Some("p99 ≤ 50 ms"), p99_met(&all)),
        ]);
        t.row(vec![
            cluster.clone(),
            "daemon memory: peak (VmHWM) / RSS synced / RSS at the end".into(),
            format!(
                "{} / {} / {} (anonymous {}, file {})",
                mib(r.vm_hwm_kib),
                mib(r.synced_rss_kib),
                mib(r.end_rss_kib),
                mib(r.end_rss_anon_kib),
                mib(r.end_rss_file_kib)
            ),
            goal_cell(
                at_goal_size.then_some("peak ≤ 64 MiB at 10 000 / 100 000"),
                (r.vm_hwm_kib > 0).then_some(r.vm_hwm_kib <= KUBE_RSS_GOAL_KIB),
            ),
        ]);
        let wall = r.changes_wall_ns as f64 / 1e9;
        t.row(vec![
            cluster,
            "daemon CPU over the changes".into(),
            format!(
                "{} ms in {:.1} s ({:.1} % of one core)",
                fmt_ms(Some(r.changes_cpu_ns)),
                wall,
                if wall > 0.0 {
                    r.changes_cpu_ns as f64 / 1e9 / wall * 100.0
                } else {
                    0.0
                }
            ),
            "(none)".into(),
        ]);
    }
    t
}

impl Report {
    /// The whole Markdown report: machine, then one table per scenario that ran.
    pub fn markdown(&self) -> String {
        let mut out = format!("{}\n", self.machine.markdown());
        if !self.unselected.is_empty() {
            out.push_str(
                "\n### 1. Unselected traffic: connect + request + close, to a destination that is \
                 not selected (baseline: no programs)\n\n",
            );
            out.push_str(
                "`connect`: the `connect()` call (the handshake, through the node, to the \
                 backend). `conn/s`: median over the batches of whole connections (connect, one \
                 line each way, close). `×`: ratio to `none` (no programs: the physical \
                 limit) at the same N, taken round by round: the median of the per-round ratios \
                 (min–max).\n\n",
            );
            out.push_str(&unselected_table(&self.unselected).to_markdown());
        }
        if !self.selected.is_empty() {
            out.push_str(
                "\n### 2. Selected traffic through the proxy (baseline: iptables REDIRECT)\n\n",
            );
            out.push_str(
                "`connect`: the `connect()` call (answered by the proxy's kernel). `request`: \
                 connect plus one HTTP request and its answer through the proxy. `conn/s`: \
                 median over the batches of whole connections. `stream`: one long stream \
                 through the proxy, median. `×`: ratio to iptables REDIRECT with the same \
                 placement and proxy, taken round by round: the median of the per-round ratios \
                 (min–max). `direct`: no proxy at all, the physical limit.\n\n",
            );
            out.push_str(&selected_table(&self.selected).to_markdown());
        }
        if let Some(c) = &self.control {
            out.push_str("\n### 3. Control plane (`redirector run --services-file`)\n\n");
            out.push_str(&control_table(c).to_markdown());
        }
        if !self.ports.is_empty() {
            out.push_str(
                "\n### 4. One client, four selected Services: the 4-tuple space (baseline: \
                 direct)\n\n",
            );
            out.push_str(
                "One client opens new connections at a steady rate, round-robin to four \
                 destinations, and closes each first, with the kernel's default `tcp_tw_reuse` \
                 and port range: each closed connection holds its 4-tuple in TIME_WAIT for 60 s. \
                 `EADDRNOTAVAIL`: connects refused for want of a free 4-tuple. Counts and rates: \
                 medians over the rounds. `×`: connections per second, as a ratio to direct \
                 (the physical limit) in the same round: median of the rounds (min–max).\n\n",
            );
            out.push_str(&ports_table(&self.ports).to_markdown());
        }
        if !self.cost.is_empty() {
            out.push_str(
                "\n### 5. The cost of logging: direct vs steered through Envoy (baseline: \
                 direct)\n\n",
            );
            out.push_str(
                "The same HTTP/1.1 request loop from the client pod to a Service's ClusterIP, \
                 the Service not selected (direct: the physical limit) or selected (steered \
                 through Envoy, which logs each request), interleaved round by round. p50, p99: \
                 over all rounds. `req/s`: median over the rounds (new connection per request: \
                 connections per second). `added p50`: steered minus direct p50, and `×`: \
                 steered over direct, each taken per round and given as the median over the \
                 rounds with their min–max.\n\n",
            );
            out.push_str(&cost_table(&self.cost).to_markdown());
            for c in &self.cost {
                for n in &c.notes {
                    out.push_str(&format!("\n{}: {n}\n", c.mode));
                }
            }
        }
        if !self.kube.is_empty() {
            out.push_str(
                "\n### 6. Kube mode at scale (`redirector run --kubeconfig`, the API test \
                 server)\n\n",
            );
            out.push_str(
                "Every tenth Service selected; one EndpointSlice per Service. Changes: from \
                 the write in the API server to the map following, polled every millisecond, \
                 while other Services' endpoints change in the background. Memory and CPU: the \
                 daemon's own (`/proc/PID/status`, `/proc/PID/stat`).\n\n",
            );
            out.push_str(&kube_table(&self.kube).to_markdown());
        }
        if let Some(c) = &self.collector {
            out.push_str("\n### 7. Collector throughput (`redirector collect`)\n\n");
            out.push_str(&collector_table(c).to_markdown());
        }
        for s in &self.skipped {
            out.push_str(&format!("\nSkipped: {s}\n"));
        }
        for f in &self.failures {
            out.push_str(&format!("\nFAILED: {f}\n"));
        }
        out.push_str(&format!(
            "\nRun took {:.0} s: `l7r-bench {}`; load average {} at the start, {} at the end.\n",
            self.elapsed_s,
            self.args.join(" "),
            self.loadavg_start,
            self.loadavg_end
        ));
        out
    }

    /// Writes `bench-<start>.json` and `latest.json` (raw samples) and `latest.md` (the
    /// tables) into `dir`; returns the JSON file's path.
    pub fn write(&self, dir: &Path) -> Result<std::path::PathBuf> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let json = serde_json::to_string(self)?;
        let path = dir.join(format!("bench-{}.json", self.started_unix));
        fs::write(&path, &json).with_context(|| format!("cannot write {}", path.display()))?;
        fs::write(dir.join("latest.json"), &json)?;
        fs::write(dir.join("latest.md"), self.markdown())?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(group: &str, alt: &str, base: bool, connect: &[u64], rate: f64) -> Series {
        Series {
            connect_ns: connect.to_vec(),
            exchange_ns: connect.iter().map(|c| c * 2).collect(),
            batch_rates: vec![rate],
            batch_sizes: vec![connect.len()],
            ..Series::new(group, alt, base)
        }
    }

    #[test]
    fn ratios_are_to_the_groups_baseline() {
        let all = vec![
            series("0", "none", true, &[10_000, 10_000], 1000.0),
            series("0", "redirector", false, &[11_000, 11_000], 900.0),
            series("1000", "none", true, &[20_000], 500.0),
            series("1000", "redirector", false, &[20_000], 500.0),
        ];
        let md = unselected_table(&all).to_markdown();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(
            lines[3],
            "| 0 | redirector | 11.0 | 11.0 | 900 | 1.10 (1.10–1.10) | 1.10 (1.10–1.10) \
             | 0.90 (0.90–0.90) | 1 |"
        );
        assert_eq!(
            lines[5],
            "| 1000 | redirector | 20.0 | 20.0 | 500 | 1.00 (1.00–1.00) | 1.00 (1.00–1.00) \
             | 1.00 (1.00–1.00) | 1 |"
        );
    }

    #[test]
    fn series_ratios_are_taken_round_by_round() {
        // Three rounds; in the second the machine was slow for both alike.
        let base = Series {
            connect_ns: vec![10_000, 10_000, 30_000, 30_000, 10_000],
            exchange_ns: vec![20_000; 5],
            batch_rates: vec![1000.0, 300.0, 1000.0],
            batch_sizes: vec![2, 2, 1],
            stream_ns: vec![100, 200],
            ..Series::new("g", "none", true)
        };
        let other = Series {
            connect_ns: vec![11_000, 11_000, 36_000, 36_000, 10_500],
            exchange_ns: vec![20_000; 5],
            batch_rates: vec![900.0, 270.0, 950.0],
            batch_sizes: vec![2, 2, 1],
            stream_ns: vec![50, 200],
            ..Series::new("g", "redirector", false)
        };
        let r = other.round_ratios(&base, connect_samples);
        assert_eq!(r.p50, [Some(1.1), Some(1.2), Some(1.05)]);
        assert_eq!(r.added_p50_ns, [Some(1000.0), Some(6000.0), Some(500.0)]);
        assert_eq!(r.rate, [Some(0.9), Some(0.9), Some(0.95)]);
        assert_eq!(r.stream, [Some(2.0), Some(1.0)]);
        let md = unselected_table(&[base, other]).to_markdown();
        assert!(
            md.contains("| 1.10 (1.05–1.20) | 1.10 (1.05–1.20) | 0.90 (0.90–0.95) | 3 |"),
            "{md}"
        );
    }

    #[test]
    fn stream_throughput_is_a_median_in_mib_per_second() {
        let mut s = Series::new("g", "a", true);
        s.stream_bytes = 256 << 20;
        s.stream_ns = vec![1_000_000_000, 2_000_000_000, 500_000_000];
        assert_eq!(s.stream_mib_s(), Some(256.0));
        let md = selected_table(&[s]).to_markdown();
        assert!(md.contains("| 256 | 1.00 | 1.00 | 1.00 | 1.00 |"), "{md}");
    }

    #[test]
    fn cost_ratios_are_taken_per_round() {
        let mut c = CostResult {
            mode: "keep-alive".into(),
            ..CostResult::default()
        };
        // Round 1 is noisy for both paths alike: its ratio stays in line.
        c.direct.add(vec![100_000, 100_000], vec![], 1000.0);
        c.steered.add(vec![200_000, 200_000], vec![], 500.0);
        c.direct.add(vec![300_000, 300_000], vec![], 300.0);
        c.steered.add(vec![660_000, 660_000], vec![], 150.0);
        c.direct.add(vec![100_000, 100_000], vec![], 1000.0);
        c.steered.add(vec![190_000, 190_000], vec![], 520.0);
        let r = c.round_ratios();
        assert_eq!(r.p50, [Some(2.0), Some(2.2), Some(1.9)]);
        assert_eq!(r.rate, [Some(0.5), Some(0.5), Some(0.52)]);
        assert_eq!(r.added_p50_ns[0], Some(100_000.0));
        let md = cost_table(&[c]).to_markdown();
        assert!(
            md.contains(
                "| keep-alive | steered through Envoy | 200.0 | 660.0 | 500 | +100.0 (+90.0–+360.0) \
                 | 2.00 (1.90–2.20) | 2.00 (1.90–2.20) | 0.50 (0.50–0.52) | 3 |"
            ),
            "{md}"
        );
        assert!(md.contains("| keep-alive | direct (not selected) | 100.0 | 300.0 | 1 000 |"));
    }

    #[test]
    fn the_collector_row_is_marked_met_or_not() {
        let mut c = CollectorResult {
            lines: 200_000,
            requests: 200_000,
            bytes: 100 << 20,
            cpu_ns: 1_600_000_000,
            steady_rate: 10_000,
            steady_lines: 100_000,
            steady_wall_ns: 10_000_000_000,
            steady_cpu_ns: 1_500_000_000,
            steady_vm_rss_kib: 20 * 1024,
            steady_vm_hwm_kib: 30 * 1024,
            ..CollectorResult::default()
        };
        let md = collector_table(&c).to_markdown();
        assert!(
            md.contains("| 125 000 lines/s per core (1600.0 ms of CPU;"),
            "{md}"
        );
        assert!(md.contains("≥ 100 000 lines/s per core: met |"), "{md}");
        assert!(md.contains("| 15.0 % of one core |"), "{md}");
        assert!(md.contains("| RSS 20.0 MiB (peak 30.0 MiB) |"), "{md}");
        c.cpu_ns = 4_000_000_000;
        let md = collector_table(&c).to_markdown();
        assert!(md.contains("| 50 000 lines/s per core"), "{md}");
        assert!(md.contains("per core: not met |"), "{md}");
    }

    #[test]
    fn ports_ratios_are_to_direct_in_the_same_round() {
        let run = |alternative: &str, ports: &[u16], round: usize, connected: u64| PortsResult {
            alternative: alternative.into(),
            round,
            proxy_ports: ports.to_vec(),
            connected,
            accepted: connected,
            elapsed_s: 10.0,
            ..PortsResult::default()
        };
        let md = ports_table(&[
            run("direct", &[], 0, 10_000),
            run("steered", &[15001; 4], 0, 5_000),
            run("steered", &[15001; 4], 1, 3_000),
            run("direct", &[], 1, 6_000),
        ])
        .to_markdown();
        assert!(
            md.contains("| direct | – (direct) | 8 000 | 800 | 0 | 0 | – | 1.00 | 2 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| steered | 15001, 15001, 15001, 15001 | 4 000 | 400 | 0 | 0 | – \
                         | 0.50 (0.50–0.50) | 2 |"
            ),
            "{md}"
        );
    }

    #[test]
    fn control_rows_name_their_targets() {
        let c = ControlResult {
            services: 10_000,
            destinations: 20_000,
            sync_ns: vec![1_500_000_000],
            add_ns: vec![120_000_000, 250_000_000],
            remove_ns: vec![],
            rss: vec![RssSample {
                services: 5_000,
                destinations: 10_000,
                vm_hwm_kib: 40 * 1024,
                vm_rss_kib: 30 * 1024,
                sync_ns: 900_000_000,
            }],
        };
        let md = control_table(&c).to_markdown();
        assert!(
            md.contains("p50 120.0 ms, p99 250.0 ms (n = 2) | p99 ≤ 100 ms"),
            "{md}"
        );
        assert!(md.contains("median 1500.0 ms"), "{md}");
        assert!(md.contains("40.0 MiB (RSS once synced 30.0 MiB"), "{md}");
        assert!(md.contains("≤ 64 MiB at 10 000"), "{md}");
    }

    #[test]
    fn kube_goals_are_marked_met_or_not_with_their_figures() {
        let at_goal = KubeResult {
            services: 10_000,
            endpoints: 100_000,
            sync_ns: vec![800_000_000, 1_200_000_000, 900_000_000],
            annotate_ns: vec![10_000_000; 3],
            endpoint_ns: vec![20_000_000, 60_000_000],
            delete_ns: vec![5_000_000],
            vm_hwm_kib: 70 * 1024,
            ..KubeResult::default()
        };
        let larger = KubeResult {
            services: 50_000,
            endpoints: 250_000,
            sync_ns: vec![3_000_000_000],
            vm_hwm_kib: 100 * 1024,
            ..KubeResult::default()
        };
        let md = kube_table(&[at_goal.clone(), larger]).to_markdown();
        assert!(
            md.contains("median 900.0 ms (min 800.0, max 1200.0; n = 3)"),
            "{md}"
        );
        assert!(md.contains("≤ 1 s at 10 000 Services: met"), "{md}");
        assert!(
            md.contains("p50 10.0 ms, p99 10.0 ms (n = 3) | p99 ≤ 50 ms: met"),
            "{md}"
        );
        assert!(
            md.contains("p99 60.0 ms (n = 2) | p99 ≤ 50 ms: NOT met"),
            "{md}"
        );
        assert!(md.contains("(n = 6) | p99 ≤ 50 ms: NOT met"), "{md}");
        assert!(
            md.contains("peak ≤ 64 MiB at 10 000 / 100 000: NOT met"),
            "{md}"
        );
        // The sync and memory goals are not stated for 50 000 Services.
        assert_eq!(md.matches("≤ 1 s at 10 000 Services").count(), 1, "{md}");
        assert_eq!(md.matches("peak ≤ 64 MiB").count(), 1, "{md}");
        assert_eq!(at_goal.all_changes_ns().len(), 6);
    }
}
