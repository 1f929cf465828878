//! `l7r-chaos`: the reliability report of `cargo xtask chaos` (`docs/reliability.md`).
//!
//! A steady load of new connections from the client pod (`l7r-load`, one HTTP request each)
//! through the lab with the real Envoy (`deploy/envoy.yaml`) and the real daemon, as deployed
//! (SO_MARK exclusion, `--proxy-admin`), while one fault is injected at a time. For each: the
//! requests sent, failed and reset, when new connections went direct, and when they were
//! steered through Envoy again after the fault ended. Prints a Markdown table on stdout.
//!
//! The API outage runs the daemon in kube mode instead, against the API test server
//! (`kube_fake`) in the lab's node namespace, and also says whether the selection survived the
//! outage and when the daemon resynchronised after it (a note after the table).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    process::Command,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use clap::{Parser, ValueEnum};
use kube_fake::KubeApiServer;
use l7r_lab::{
    daemon::{Daemon, eventually},
    e2e::{HTTP_PORT, World, cluster, web_service},
    envoy::{ADMIN, Envoy, UPSTREAM_MARK},
    http::HttpBackend,
    lab::{BACKEND4, Lab, LabOptions, sa},
    load::{Load, Report},
    sys::require_root,
    termination::ProxyPod,
};
use redirector::k8s::yaml;

#[derive(Parser)]
#[command(about = "Faults injected one at a time under a steady load: what each costs")]
struct Args {
    /// The `redirector` binary to run as the daemon.
    #[arg(long)]
    redirector: String,
    /// The `l7r-load` binary.
    #[arg(long)]
    load: String,
    /// New connections per second.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Concurrent connections of the load.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Only these faults (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    faults: Vec<Fault>,
}

/// The faults, in the order the report lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Fault {
    /// Envoy SIGKILLed (a crash), restarted 1 s later.
    EnvoyKill,
    /// Envoy SIGSTOPped for 5 s (hung), then SIGCONT.
    EnvoyStop,
    /// Envoy replaced as the manifests do it: the proxy pod drained by its pre-stop hooks,
    /// SIGTERM, a new one started.
    EnvoyRollout,
    /// The daemon SIGKILLed (OOM, crash), restarted 1 s later.
    DaemonKill,
    /// The daemon SIGTERMed (a rollout), a new one started when it has exited.
    DaemonRollout,
    /// The daemon SIGKILLed, then Envoy: nobody left but the kernel and the lease.
    BothGone,
    /// Uninstall: the daemon stops, `redirector detach`, Envoy stops.
    Uninstall,
    /// The daemon in kube mode; its Kubernetes API unreachable for 30 s, then back.
    ApiOutage,
}

impl Fault {
    const ALL: [Fault; 8] = [
        Fault::EnvoyKill,
        Fault::EnvoyStop,
        Fault::EnvoyRollout,
        Fault::DaemonKill,
        Fault::DaemonRollout,
        Fault::BothGone,
        Fault::Uninstall,
        Fault::ApiOutage,
    ];

    fn describe(self) -> &'static str {
        match self {
            Fault::EnvoyKill => "Envoy SIGKILL, restarted after 1 s",
            Fault::EnvoyStop => "Envoy SIGSTOP for 5 s",
            Fault::EnvoyRollout => {
                "Envoy rollout as deploy/ does it (drained by the pre-stop hooks), new Envoy"
            }
            Fault::DaemonKill => "daemon SIGKILL, restarted after 1 s",
            Fault::DaemonRollout => "daemon SIGTERM, new daemon",
            Fault::BothGone => "daemon SIGKILL, then Envoy SIGKILL (lease expiry)",
            Fault::Uninstall => "uninstall: daemon SIGTERM, `redirector detach`, Envoy SIGTERM",
            Fault::ApiOutage => "API outage of 30 s (kube mode, API test server)",
        }
    }
}

/// One row of the report.
struct Row {
    fault: Fault,
    report: Report,
    /// When the fault began (ms into the load).
    fault_at: u64,
    /// When it ended (the restart, the SIGCONT), if it does.
    ended_at: Option<u64>,
    /// What else the fault showed, printed after the table.
    note: Option<String>,
}

impl Row {
    fn markdown(&self) -> String {
        let r = &self.report;
        let secs = |ms: u64| format!("{:.2}", ms as f64 / 1000.0);
        let direct = r
            .first_direct_from(self.fault_at)
            .map_or("never".into(), |at| secs(at.saturating_sub(self.fault_at)));
        let back = match self.ended_at {
            None => "n/a".to_string(),
            Some(end) => r
                .first_via_envoy_from(end)
                .map_or("not within the run".into(), |at| {
                    secs(at.saturating_sub(end))
                }),
        };
        format!(
            "| {} | {} | {} | {} | {} | {} |",
            self.fault.describe(),
            r.sent(),
            r.failed().len(),
            r.reset(),
            direct,
            back
        )
    }
}

const BEFORE: Duration = Duration::from_secs(2);
const AFTER: Duration = Duration::from_secs(6);

fn main() -> Result<()> {
    let args = Args::parse();
    require_root();
    let faults = if args.faults.is_empty() {
        Fault::ALL.to_vec()
    } else {
        args.faults.clone()
    };
    let mut rows = Vec::new();
    for fault in faults {
        eprintln!("l7r-chaos: {}", fault.describe());
        let row = run(&args, fault).with_context(|| format!("fault {fault:?}"))?;
        eprintln!("l7r-chaos:   {}", row.report.summary());
        rows.push(row);
    }
    println!(
        "| fault | requests | failed | reset | direct after (s) | through Envoy again after the fault ended (s) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for row in &rows {
        println!("{}", row.markdown());
    }
    println!();
    println!(
        "{} new connections/s over {} workers, {} s before the fault and {} s after it began (the \
         API outage: after it ended); the lab's daemon checks every 200 ms with a 3 s lease.",
        args.rate,
        args.workers,
        BEFORE.as_secs(),
        AFTER.as_secs()
    );
    for row in &rows {
        if let Some(note) = &row.note {
            println!();
            println!("{}: {note}", row.fault.describe());
        }
    }
    Ok(())
}

/// One fault in a fresh world.
fn run(args: &Args, fault: Fault) -> Result<Row> {
    if fault == Fault::ApiOutage {
        return api_outage(args);
    }
    let mut w = World::new(&args.redirector, &web_service(Some("true")).yaml(), true)?;
    let pod = ProxyPod::from_manifest()?;
    if fault == Fault::EnvoyRollout {
        // The Envoy to roll out runs as the proxy DaemonSet runs it (its drain flags).
        w.envoy.stop()?;
        w.envoy = Envoy::start_with(&w.lab.node_ns, &w.lab.proxy_cgroup, &pod.envoy_args)?;
        eventually("steering to Envoy", Duration::from_secs(10), || {
            Ok(w.lab.pinned_readiness()?.0.then_some(()))
        })?;
    }
    let load = Load::start(&args.load, &w.lab, cluster(), args.rate, args.workers)?;
    thread::sleep(BEFORE);
    let fault_at = load.elapsed_ms();
    let started = Instant::now();
    let ended_at = match fault {
        Fault::EnvoyKill => {
            w.envoy.kill()?;
            thread::sleep(Duration::from_secs(1));
            w.restart_envoy()?;
            Some(load.elapsed_ms())
        }
        Fault::EnvoyStop => {
            w.envoy.pause();
            thread::sleep(Duration::from_secs(5));
            w.envoy.resume();
            Some(load.elapsed_ms())
        }
        Fault::EnvoyRollout => {
            // The pod's termination as deploy/proxy-daemonset.yaml says (the drain hook,
            // Envoy's hook, SIGTERM), then the new pod (maxUnavailable 1).
            pod.terminate(&mut w.envoy, &w.lab, &args.redirector)?;
            w.restart_envoy()?;
            Some(load.elapsed_ms())
        }
        Fault::DaemonKill => {
            w.daemon.kill()?;
            thread::sleep(Duration::from_secs(1));
            w.restart_daemon(&args.redirector)?;
            Some(load.elapsed_ms())
        }
        Fault::DaemonRollout => {
            w.daemon.signal_term();
            w.daemon.wait_exited(Duration::from_secs(10))?;
            w.restart_daemon(&args.redirector)?;
            Some(load.elapsed_ms())
        }
        Fault::BothGone => {
            w.daemon.kill()?;
            w.envoy.kill()?;
            None
        }
        Fault::Uninstall => {
            w.daemon.signal_term();
            w.daemon.wait_exited(Duration::from_secs(10))?;
            let out = Command::new(&args.redirector)
                .args(["detach", "--pin-dir", &w.lab.pin_dir.to_string_lossy()])
                .output()?;
            ensure!(
                out.status.success(),
                "detach failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            w.envoy.stop()?;
            None
        }
        Fault::ApiOutage => unreachable!("run by api_outage"),
    };
    thread::sleep(AFTER.saturating_sub(started.elapsed()));
    let report = load.finish()?;
    Ok(Row {
        fault,
        report,
        fault_at,
        ended_at,
        note: None,
    })
}

/// How long the API is unreachable.
const OUTAGE: Duration = Duration::from_secs(30);

/// How long to wait, after the API is back, for the daemon to resynchronise. Its watchers
/// retry with kube-rs's default backoff (0.8 s doubling to 30 s, each delay plus up to as much
/// again in jitter), so after a 30 s outage the next retry may come some 45 s later.
const RESYNC_LIMIT: Duration = Duration::from_secs(75);

/// An endpoint added to `shop/web`'s EndpointSlice while the API is down (no pod answers at it:
/// only the pinned map is checked for it, and the ClusterIP's DNAT still picks the backend).
const ADDED_ENDPOINT: &str = "10.77.2.3";

/// The lab of [`World`], with the daemon in kube mode instead of following a services file:
/// the API test server in the node namespace, holding `shop/web` (annotated) and its
/// EndpointSlice, the very objects `World`'s services file holds. Fields drop in order: the
/// daemon first, the lab last.
struct KubeWorld {
    daemon: Daemon,
    server: Arc<KubeApiServer>,
    _envoy: Envoy,
    _backend: HttpBackend,
    lab: Lab,
}

impl KubeWorld {
    /// Builds it and waits until the proxy is ready and `shop/web` is selected.
    fn new(redirector: &str) -> Result<Self> {
        // As `World::new` builds it: Envoy's upstream is excluded by its SO_MARK.
        let lab = Lab::with(LabOptions {
            exclude_proxy_cgroup: false,
            ..LabOptions::for_daemon()
        })?;
        let backend = HttpBackend::start(&lab.backend_ns, &[sa(BACKEND4, HTTP_PORT)])?;
        lab.emulate_cluster_ip(cluster(), sa(BACKEND4, HTTP_PORT))?;
        let envoy = Envoy::start(&lab.node_ns, &lab.proxy_cgroup)?;
        let objects = yaml::documents(&web_service(Some("true")).yaml())?;
        // Started from inside the node namespace, so it listens there, next to the daemon.
        let server = Arc::new(lab.node_ns.run(move || KubeApiServer::start(objects))??);
        let kubeconfig = server.kubeconfig();
        // The flags `World`'s daemon gets, `--kubeconfig` in place of `--services-file`.
        let daemon = Daemon::start(
            redirector,
            &lab,
            &[
                "--kubeconfig",
                &kubeconfig.to_string_lossy(),
                "--exclude-mark",
                UPSTREAM_MARK,
                "--proxy-admin",
                ADMIN,
            ],
        )?;
        let w = Self {
            daemon,
            server,
            _envoy: envoy,
            _backend: backend,
            lab,
        };
        eventually("the proxy marked ready", Duration::from_secs(15), || {
            Ok(w.lab
                .pinned_readiness()
                .map(|r| r.0)
                .unwrap_or(false)
                .then_some(()))
        })
        .with_context(|| w.daemon.log())?;
        eventually(
            "shop/web selected from the API",
            Duration::from_secs(15),
            || Ok((w.lab.pinned_destinations()? == web_destinations(&[])).then_some(())),
        )
        .with_context(|| w.daemon.log())?;
        Ok(w)
    }

    /// Ends the outage: serves again on the same address, from the node namespace.
    fn api_back(&self) -> Result<()> {
        let server = Arc::clone(&self.server);
        self.lab.node_ns.run(move || server.start_again())?
    }
}

/// What `shop/web` pins with `more` endpoints besides the backend pod: the ClusterIP's port and
/// every endpoint's.
fn web_destinations(more: &[&str]) -> BTreeSet<SocketAddr> {
    [cluster(), sa(BACKEND4, HTTP_PORT)]
        .into_iter()
        .chain(more.iter().map(|ip| sa(ip, HTTP_PORT)))
        .collect()
}

/// The API outage: the load runs through it, the pinned map is sampled during it, and a change
/// made while the API is down must reach the map after it.
///
/// The outage is the fixture's own ([`KubeApiServer::stop`] and
/// [`KubeApiServer::start_again`]): the listener and every connection, watches included, are
/// closed, and connects are refused until it serves again on the same address with its state
/// carried on, as when an API server (or the path to it) goes down and comes back. A blackhole
/// (an nft drop) would leave the daemon's watches hanging instead of failing; the daemon
/// holds its selection either way, since it only ever changes it on what the API sends.
fn api_outage(args: &Args) -> Result<Row> {
    let mut w = KubeWorld::new(&args.redirector)?;
    let before = w.lab.pinned_destinations()?;
    let load = Load::start(&args.load, &w.lab, cluster(), args.rate, args.workers)?;
    thread::sleep(BEFORE);

    let fault_at = load.elapsed_ms();
    let down = Instant::now();
    w.server.stop()?;
    // Changed while the API is away: an endpoint added, as a scale-up would.
    let changed =
        yaml::documents(&web_service(Some("true")).yaml_with_endpoints(&[ADDED_ENDPOINT]))?;
    for object in changed.iter().filter(|o| o["kind"] == "EndpointSlice") {
        w.server.apply(object)?;
    }
    let after = web_destinations(&[ADDED_ENDPOINT]);

    // The selection must hold, unchanged, the whole time the API is away.
    let mut samples = 0;
    let mut changes = Vec::new();
    let mut not_ready = 0;
    while down.elapsed() < OUTAGE {
        samples += 1;
        match w.lab.pinned_destinations() {
            Ok(now) if now == before => {}
            Ok(now) => changes.push(format!("{:.1} s: {now:?}", down.elapsed().as_secs_f64())),
            Err(e) => changes.push(format!(
                "{:.1} s: unreadable: {e:#}",
                down.elapsed().as_secs_f64()
            )),
        }
        if !w.lab.pinned_readiness().map(|r| r.0).unwrap_or(false) {
            not_ready += 1;
        }
        thread::sleep(Duration::from_millis(200).min(OUTAGE.saturating_sub(down.elapsed())));
    }

    w.api_back()?;
    let back = Instant::now();
    let ended_at = load.elapsed_ms();
    // The load runs on for AFTER, the map watched meanwhile; then the map alone if need be.
    let mut resynced = None;
    let mut watch_map = |until: Duration| -> Result<()> {
        while resynced.is_none() && back.elapsed() < until {
            if w.lab.pinned_destinations()? == after {
                resynced = Some(back.elapsed());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    };
    watch_map(AFTER)?;
    thread::sleep(AFTER.saturating_sub(back.elapsed()));
    let report = load.finish()?;
    watch_map(RESYNC_LIMIT)?;
    let retries = w.daemon.log().matches("watch failed").count();
    let running = w.daemon.is_running();

    let survived = if changes.is_empty() {
        format!(
            "the selection survived: {samples} samples of the pinned map during the outage, all \
             equal to the {} destinations it held before",
            before.len()
        )
    } else {
        format!(
            "the selection did NOT survive: {} of {samples} samples of the pinned map differed \
             from the {} destinations before ({})",
            changes.len(),
            before.len(),
            changes
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    let readiness = if not_ready == 0 {
        "the proxy stayed ready throughout".to_string()
    } else {
        format!("the proxy read not ready in {not_ready} of {samples} samples")
    };
    let resync = match resynced {
        Some(t) => format!(
            "resynchronised {:.2} s after the API returned (the endpoint added to the \
             EndpointSlice while it was down reached the pinned map)",
            t.as_secs_f64()
        ),
        None => format!(
            "did NOT resynchronise within {} s of the API's return (the pinned map holds {:?})",
            RESYNC_LIMIT.as_secs(),
            w.lab.pinned_destinations()?
        ),
    };
    let note = format!(
        "{survived}; {readiness}. The daemon {resync}: its watchers retry with kube-rs's \
         default backoff (0.8 s doubling to 30 s, plus jitter), so it resyncs at the first retry \
         after the API is back; they logged {retries} failed watches{}.",
        if running {
            ""
        } else {
            " and is no longer running"
        }
    );
    Ok(Row {
        fault: Fault::ApiOutage,
        report,
        fault_at,
        ended_at: Some(ended_at),
        note: Some(note),
    })
}
