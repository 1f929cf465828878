//! `l7r-chaos`: the reliability report of `cargo xtask chaos` (`docs/reliability.md`).
//!
//! A steady load of new connections from the client pod (`l7r-load`, one HTTP request each)
//! through the lab with the real Envoy (`deploy/envoy.yaml`) and the real daemon, as deployed
//! (SO_MARK exclusion, `--proxy-admin`), while one fault is injected at a time. For each: the
//! requests sent, failed and reset, when new connections went direct, and when they were
//! steered through Envoy again after the fault ended. Prints a Markdown table on stdout.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use clap::{Parser, ValueEnum};
use l7r_lab::{
    e2e::{World, cluster, web_service},
    load::{Load, Report},
    sys::require_root,
};

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
    /// Envoy replaced as the manifests do it today: SIGTERM, a new one started.
    EnvoyRollout,
    /// The daemon SIGKILLed (OOM, crash), restarted 1 s later.
    DaemonKill,
    /// The daemon SIGTERMed (a rollout), a new one started when it has exited.
    DaemonRollout,
    /// The daemon SIGKILLed, then Envoy: nobody left but the kernel and the lease.
    BothGone,
    /// Uninstall: the daemon stops, `redirector detach`, Envoy stops.
    Uninstall,
}

impl Fault {
    const ALL: [Fault; 7] = [
        Fault::EnvoyKill,
        Fault::EnvoyStop,
        Fault::EnvoyRollout,
        Fault::DaemonKill,
        Fault::DaemonRollout,
        Fault::BothGone,
        Fault::Uninstall,
    ];

    fn describe(self) -> &'static str {
        match self {
            Fault::EnvoyKill => "Envoy SIGKILL, restarted after 1 s",
            Fault::EnvoyStop => "Envoy SIGSTOP for 5 s",
            Fault::EnvoyRollout => "Envoy replaced (SIGTERM, new Envoy; no drain yet)",
            Fault::DaemonKill => "daemon SIGKILL, restarted after 1 s",
            Fault::DaemonRollout => "daemon SIGTERM, new daemon",
            Fault::BothGone => "daemon SIGKILL, then Envoy SIGKILL (lease expiry)",
            Fault::Uninstall => "uninstall: daemon SIGTERM, `redirector detach`, Envoy SIGTERM",
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
        "{} new connections/s over {} workers, {} s before the fault and {} s after; the lab's daemon \
         checks every 200 ms with a 3 s lease.",
        args.rate,
        args.workers,
        BEFORE.as_secs(),
        AFTER.as_secs()
    );
    Ok(())
}

/// One fault in a fresh world.
fn run(args: &Args, fault: Fault) -> Result<Row> {
    let mut w = World::new(&args.redirector, &web_service(Some("true")).yaml(), true)?;
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
            w.envoy.stop()?;
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
    };
    thread::sleep(AFTER.saturating_sub(started.elapsed()));
    let report = load.finish()?;
    Ok(Row {
        fault,
        report,
        fault_at,
        ended_at,
    })
}
