//! The `l7r-bench` command line: the redirector against iptables and nftables, side by side, in
//! one run. Run it with `sudo cargo xtask bench` (a release build); `docs/benchmarks.md` explains
//! the scenarios and shows a full run. It prints a Markdown report on stdout, progress on
//! stderr, and writes the raw samples as JSON into `--out` (default `target/bench/`).
//!
//! [`main`] is the whole program, so the tests can build it as a binary of their own package
//! (`l7r-bench-under-test`) and run it with the current code.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::Ordering,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    baselines::Iptables,
    machine::{Machine, loadavg},
    proxy,
    report::Report,
    scenarios::{
        self, INTERRUPTED, collector, control, cost, kube, ports,
        selected::{self, Placement, ProxyKind},
        unselected,
    },
};
use anyhow::{Result, bail};
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};

/// Benchmarks of the redirector against iptables and nftables (needs root). The defaults are
/// the full run of `cargo xtask bench`; `--quick` is a smoke run of a few seconds.
#[derive(Debug, Parser)]
#[command(name = "l7r-bench", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    helper: Option<Helper>,
    #[command(flatten)]
    args: BenchArgs,
}

/// Helpers the benchmark starts itself.
#[derive(Debug, Subcommand)]
enum Helper {
    /// The Rust forwarding proxy (started inside a lab by the selected-traffic scenario).
    #[command(hide = true)]
    Proxy {
        /// Where to listen.
        #[arg(long)]
        listen: SocketAddr,
        /// SO_MARK of the upstream sockets.
        #[arg(long)]
        mark: u32,
    },
}

/// The scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 1: connections to an unselected destination while N others are selected.
    Unselected,
    /// 2: connections to a selected destination, through the proxy.
    Selected,
    /// 3: the daemon's control plane: sync, change latency, memory.
    Control,
    /// 4: one client's new connections to four selected Services: the 4-tuple space.
    Ports,
    /// 5: the cost of logging: requests direct vs steered through Envoy.
    Cost,
    /// 6: the control plane in kube mode at cluster scale: sync, change latency, memory, CPU.
    Kube,
    /// 7: `redirector collect`: access log lines per CPU second, and its cost at a steady rate.
    Collector,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Which scenarios to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "unselected,selected,control,ports,cost,kube,collector"
    )]
    scenarios: Vec<Scenario>,
    /// Scenario 1: the numbers of selected destinations N.
    #[arg(long, value_delimiter = ',', default_value = "0,1000,10000,60000")]
    sizes: Vec<usize>,
    /// Scenario 1: measured connections per alternative and N.
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// Scenarios 1 and 2: batches per alternative (alternatives alternate batch by batch).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Scenarios 1, 2 and 5: unmeasured connections (scenario 5: requests) per alternative
    /// first.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Scenario 2: measured connections per alternative, placement and proxy.
    #[arg(long, default_value_t = 5_000)]
    selected_connections: usize,
    /// Scenario 2: MiB per long stream (0: no streams).
    #[arg(long, default_value_t = 256)]
    stream_mib: u64,
    /// Scenario 2: long streams per alternative.
    #[arg(long, default_value_t = 3)]
    streams: usize,
    /// Scenario 2: the proxies (Envoy is skipped, and said so, when not installed).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "rust,envoy")]
    proxies: Vec<ProxyKind>,
    /// Scenario 2: where client and proxy run (node: pod client, proxy on the node; host:
    /// same namespace).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "node,host")]
    placements: Vec<Placement>,
    /// Scenario 3: selected Services during the change and sync measurements.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Scenario 3: Service changes measured (each an addition and a removal).
    #[arg(long, default_value_t = 40)]
    changes: usize,
    /// Scenario 3: start-up syncs measured.
    #[arg(long, default_value_t = 3)]
    syncs: usize,
    /// Scenario 3: destination counts at which the daemon's peak RSS is measured.
    #[arg(long, value_delimiter = ',', default_value = "10000,60000")]
    rss_destinations: Vec<usize>,
    /// Scenario 4: seconds each alternative runs (TIME_WAIT lasts 60 s; 30 s at the default
    /// rate is past what one shared 4-tuple space holds).
    #[arg(long, default_value_t = 30)]
    ports_seconds: u64,
    /// Scenario 4: new connections per second over the four destinations (the default, 400
    /// per destination, is below the 470/s one 4-tuple space sustains).
    #[arg(long, default_value_t = 1600)]
    ports_rate: u64,
    /// Scenario 4: rounds, each running every alternative once in a fresh lab (order rotated
    /// each round), for the spread of the ratios to direct.
    #[arg(long, default_value_t = 1)]
    ports_rounds: usize,
    /// Scenario 5: keep-alive requests per path (direct, steered), over all rounds.
    #[arg(long, default_value_t = 50_000)]
    cost_requests: usize,
    /// Scenario 5: requests on new connections per path, over all rounds.
    #[arg(long, default_value_t = 20_000)]
    cost_connections: usize,
    /// Scenario 5: rounds per path and mode (direct and steered alternate round by round).
    #[arg(long, default_value_t = 5)]
    cost_rounds: usize,
    /// Collector: access log lines written beforehand for the throughput measurement.
    #[arg(long, default_value_t = 500_000)]
    collector_lines: usize,
    /// Collector: lines per second appended for the steady-rate measurement.
    #[arg(long, default_value_t = 10_000)]
    collector_rate: u64,
    /// Collector: seconds the steady rate is kept.
    #[arg(long, default_value_t = 20)]
    collector_seconds: u64,
    /// Scenario 6: cluster sizes, SERVICES:ENDPOINTS (every tenth Service selected).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000:100000,50000:250000"
    )]
    kube_sizes: Vec<kube::Size>,
    /// Scenario 6: changes measured per kind (annotation added, endpoint added, Service
    /// deleted).
    #[arg(long, default_value_t = 200)]
    kube_changes: usize,
    /// Scenario 6: background endpoint changes per second on other Services.
    #[arg(long, default_value_t = 50)]
    kube_churn: u32,
    /// Scenario 6: start-up syncs measured per size.
    #[arg(long, default_value_t = 3)]
    kube_syncs: usize,
    /// Which iptables loads the linear and REDIRECT rules.
    #[arg(long, value_enum, default_value = "system")]
    iptables: Iptables,
    /// Where to write the JSON samples (default: target/bench of the workspace).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The daemon binary (default: `redirector` beside this binary, as `cargo build` places
    /// it).
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
    /// Seed of the random selected destinations.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Tiny sizes for a smoke run (flags given explicitly still apply).
    #[arg(long)]
    quick: bool,
}

/// `--quick`: every size flag the user did not give gets a tiny value.
fn apply_quick(a: &mut BenchArgs, m: &clap::ArgMatches) {
    let default = |id: &str| m.value_source(id) != Some(clap::parser::ValueSource::CommandLine);
    if default("sizes") {
        a.sizes = vec![0, 100];
    }
    if default("connections") {
        a.connections = 200;
    }
    if default("rounds") {
        a.rounds = 2;
    }
    if default("warmup") {
        a.warmup = 10;
    }
    if default("selected_connections") {
        a.selected_connections = 100;
    }
    if default("stream_mib") {
        a.stream_mib = 4;
    }
    if default("streams") {
        a.streams = 1;
    }
    if default("proxies") {
        a.proxies = vec![ProxyKind::Rust];
    }
    if default("services") {
        a.services = 200;
    }
    if default("changes") {
        a.changes = 2;
    }
    if default("syncs") {
        a.syncs = 1;
    }
    if default("rss_destinations") {
        a.rss_destinations = vec![400];
    }
    if default("ports_seconds") {
        a.ports_seconds = 2;
    }
    if default("cost_requests") {
        a.cost_requests = 200;
    }
    if default("cost_connections") {
        a.cost_connections = 100;
    }
    if default("cost_rounds") {
        a.cost_rounds = 2;
    }
    if default("kube_sizes") {
        a.kube_sizes = vec![kube::Size {
            services: 1_000,
            endpoints: 5_000,
        }];
    }
    if default("kube_changes") {
        a.kube_changes = 7;
    }
    if default("kube_churn") {
        a.kube_churn = 10;
    }
    if default("kube_syncs") {
        a.kube_syncs = 1;
    }
    if default("collector_lines") {
        a.collector_lines = 20_000;
    }
    if default("collector_seconds") {
        a.collector_seconds = 2;
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM stop the run at the next batch instead of killing it, so the labs'
/// guards remove everything. No SA_RESTART: a blocked connect or read returns EINTR at once.
fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a handler that only stores to an atomic, which is
        // async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Runs `l7r-bench` with the process's arguments.
pub fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("l7r-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    if let Some(Helper::Proxy { listen, mark }) = cli.helper {
        return proxy::serve(listen, mark);
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the benchmarks create network namespaces and cgroups and load eBPF programs, so \
             they need root: run `sudo cargo xtask bench`"
        );
    }
    install_signal_handlers();
    let mut a = cli.args;
    if a.quick {
        apply_quick(&mut a, &matches);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map_or_else(PathBuf::new, Path::to_path_buf);
    let out = a.out.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target")
            .join("bench")
    });
    let daemon = a.daemon.clone().unwrap_or_else(|| dir.join("redirector"));
    let needs_redirector = [Scenario::Control, Scenario::Kube, Scenario::Collector];
    if a.scenarios.iter().any(|s| needs_redirector.contains(s)) && !daemon.is_file() {
        bail!(
            "the daemon binary {} does not exist: build it with `cargo build --release -p \
             redirector`, or name one with --daemon",
            daemon.display()
        );
    }

    let started = Instant::now();
    let mut report = Report {
        version: 1,
        machine: Machine::detect(a.iptables.program()),
        args: std::env::args().skip(1).collect(),
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        elapsed_s: 0.0,
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        unselected: Vec::new(),
        selected: Vec::new(),
        control: None,
        ports: Vec::new(),
        cost: Vec::new(),
        kube: Vec::new(),
        collector: None,
        skipped: Vec::new(),
        failures: Vec::new(),
    };

    let mut proxies = a.proxies.clone();
    if proxies.contains(&ProxyKind::Envoy)
        && let Err(e) = l7r_lab::envoy::binary()
    {
        proxies.retain(|p| *p != ProxyKind::Envoy);
        report.skipped.push(format!("Envoy: {e:#}"));
    }

    for scenario in &a.scenarios {
        if INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
        // A failed scenario is reported, and the others still run: one broken alternative
        // must not throw away an hour's measurements of the rest.
        let outcome = match scenario {
            Scenario::Unselected => unselected::run(&unselected::Params {
                sizes: a.sizes.clone(),
                connections: a.connections,
                rounds: a.rounds,
                warmup: a.warmup,
                iptables: a.iptables,
                seed: a.seed,
            })
            .map(|s| report.unselected = s),
            Scenario::Selected => selected::run(&selected::Params {
                connections: a.selected_connections,
                rounds: a.rounds,
                warmup: a.warmup,
                stream_bytes: a.stream_mib << 20,
                streams: a.streams,
                proxies: proxies.clone(),
                placements: a.placements.clone(),
                iptables: a.iptables,
                exe: exe.clone(),
            })
            .map(|s| report.selected = s),
            Scenario::Control => control::run(&control::Params {
                services: a.services,
                changes: a.changes,
                syncs: a.syncs,
                rss_destinations: a.rss_destinations.clone(),
                daemon: daemon.clone(),
                seed: a.seed,
            })
            .map(|c| report.control = Some(c)),
            Scenario::Ports => ports::run(&ports::Params {
                seconds: a.ports_seconds,
                rate: a.ports_rate,
                rounds: a.ports_rounds,
            })
            .map(|p| report.ports = p),
            // It measures Envoy itself: without Envoy there is nothing to measure.
            Scenario::Cost => match l7r_lab::envoy::binary() {
                Err(e) => {
                    report.skipped.push(format!("the cost of logging: {e:#}"));
                    Ok(())
                }
                Ok(_) => cost::run(&cost::Params {
                    requests: a.cost_requests,
                    connections: a.cost_connections,
                    rounds: a.cost_rounds,
                    warmup: a.warmup,
                })
                .map(|c| report.cost = c),
            },
            Scenario::Kube => kube::run(&kube::Params {
                sizes: a.kube_sizes.clone(),
                changes: a.kube_changes,
                churn: a.kube_churn,
                syncs: a.kube_syncs,
                daemon: daemon.clone(),
                seed: a.seed,
            })
            .map(|k| report.kube = k),
            Scenario::Collector => collector::run(&collector::Params {
                lines: a.collector_lines,
                rate: a.collector_rate,
                seconds: a.collector_seconds,
                redirector: daemon.clone(),
                seed: a.seed,
            })
            .map(|c| report.collector = Some(c)),
        };
        if let Err(e) = outcome {
            scenarios::progress(&format!("{scenario:?} failed: {e:#}"));
            report.failures.push(format!("{scenario:?}: {e:#}"));
        }
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    report.loadavg_end = loadavg();
    println!("{}", report.markdown());
    let path = report.write(&out)?;
    scenarios::progress(&format!("raw samples written to {}", path.display()));
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    if !report.failures.is_empty() {
        bail!("{} scenario(s) failed", report.failures.len());
    }
    Ok(())
}
