//! The command line: `redirector run | status | detach | collect`. The flags are a contract (see
//! DESIGN.md): users, scripts and tests rely on them exactly.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use redirector_common::DEFAULT_SERVICES_CAPACITY;
use tracing_subscriber::EnvFilter;

use crate::{
    collector::{self, CollectArgs},
    daemon::{self, RunOptions, Source},
    dataplane::{self, DEFAULT_PIN_DIR, Dataplane},
    proxy_config::parse_mark,
    selection::DEFAULT_ANNOTATION,
    status,
};

/// Parses the process's arguments and does what they say: the whole `redirector` binary.
pub fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            init_logging(args.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(daemon::run(args.options()))
        }
        Command::Collect(args) => {
            init_logging(args.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(collector::run(*args))
        }
        Command::Status { pin_dir, json } => {
            init_logging(LogFormat::Text);
            let dp = Dataplane::open_pinned(&pin_dir)?;
            let report = status::gather(&dp)
                .with_context(|| format!("cannot read the maps under {}", pin_dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", status::render_text(&report));
            }
            Ok(())
        }
        Command::Detach { pin_dir } => {
            init_logging(LogFormat::Text);
            if dataplane::detach(&pin_dir)? {
                println!(
                    "detached: removed the programs and pins under {}",
                    pin_dir.display()
                );
            } else {
                println!("nothing to detach: {} does not exist", pin_dir.display());
            }
            Ok(())
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// eBPF traffic selector and redirector for L7 logs.
#[derive(Debug, Parser)]
#[command(
    name = "redirector",
    version,
    long_about = "Steers every new TCP connection to Kubernetes Services annotated \
                  projectcalico.org/l7-logging=true to the node-local Envoy, which forwards it \
                  and logs each request. Existing connections are never disturbed; if the proxy \
                  is down, traffic goes direct."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: attach the datapath and keep it in step with the Services.
    Run(Box<RunArgs>),
    /// Show what is selected, the proxy and the kernel counters, read from the pinned maps
    /// (works while the daemon is down).
    Status {
        /// Where the maps are pinned.
        #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
        pin_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove the programs and the pins: a clean uninstall. Connections already proxied keep
    /// working; new ones go direct.
    Detach {
        /// Where the maps and links are pinned.
        #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
        pin_dir: PathBuf,
    },
    /// Follow Envoy's access log and write aggregated L7 records (JSON lines), configured
    /// like the reference product's log collection (logIntervalSeconds,
    /// logRequestsPerInterval).
    Collect(Box<CollectArgs>),
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `redirector run` flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The node proxy's IPv4 address and port (Envoy's listener with the original_dst filter).
    #[arg(long, value_name = "IP:PORT", required_unless_present = "proxy6")]
    pub proxy: Option<SocketAddr>,
    /// The node proxy's IPv6 address and port.
    #[arg(long, value_name = "[IP]:PORT")]
    pub proxy6: Option<SocketAddr>,
    /// Read Services (and EndpointSlices) from this YAML or JSON file instead of the
    /// Kubernetes API, and follow it; the way to run without a cluster.
    #[arg(long, value_name = "PATH", conflicts_with = "kubeconfig")]
    pub services_file: Option<PathBuf>,
    /// Kubeconfig to reach the API with (default: in-cluster config, or $KUBECONFIG).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The cgroup v2 directory to attach to (default: the cgroup2 root, so every process on
    /// the node is covered).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Where to pin maps and links; state there survives restarts.
    #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,
    /// The annotation that selects a Service when it is "true".
    #[arg(long, default_value = DEFAULT_ANNOTATION, value_name = "KEY")]
    pub annotation: String,
    /// Never steer processes in this cgroup v2 directory or below it (e.g. the proxy's).
    #[arg(long, value_name = "PATH")]
    pub exclude_cgroup: Vec<PathBuf>,
    /// Never steer processes running as this UID (e.g. the proxy's).
    #[arg(long, value_name = "UID")]
    pub exclude_uid: Vec<u32>,
    /// Never steer sockets whose SO_MARK matches (e.g. set by the proxy's upstream bind
    /// config); MASK defaults to all bits.
    #[arg(long, value_name = "MARK[/MASK]", value_parser = parse_mark)]
    pub exclude_mark: Option<(u32, u32)>,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// How often to check that the proxy accepts connections (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_duration)]
    pub proxy_check_interval: Duration,
    /// On SIGTERM, keep checking the proxy this long before exiting, so that a proxy going
    /// down together with the daemon (a pod deleted or rolled) is marked not ready and traffic
    /// fails open instead of being steered to nothing.
    #[arg(long, default_value = "3s", value_name = "DURATION", value_parser = parse_duration_or_zero)]
    pub shutdown_grace: Duration,
    /// Capacity of the services map when it is created.
    #[arg(long, default_value_t = DEFAULT_SERVICES_CAPACITY, value_name = "N")]
    pub services_capacity: u32,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl RunArgs {
    /// The daemon's options.
    pub fn options(&self) -> RunOptions {
        RunOptions {
            proxy: self.proxy,
            proxy6: self.proxy6,
            source: match &self.services_file {
                Some(path) => Source::File(path.clone()),
                None => Source::Kube(self.kubeconfig.clone()),
            },
            cgroup: self.cgroup.clone(),
            pin_dir: self.pin_dir.clone(),
            annotation: self.annotation.clone(),
            exclude_cgroups: self.exclude_cgroup.clone(),
            exclude_uids: self.exclude_uid.clone(),
            exclude_mark: self.exclude_mark,
            metrics_addr: self.metrics_addr,
            proxy_check_interval: self.proxy_check_interval,
            shutdown_grace: self.shutdown_grace,
            services_capacity: self.services_capacity,
        }
    }
}

/// `500ms`, `2s`, `1m`, or a bare number of seconds; at least 10ms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 2s or 1m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    let d = Duration::from_secs_f64(secs);
    if d < Duration::from_millis(10) {
        return Err(format!("{text:?} is too short (at least 10ms)"));
    }
    Ok(d)
}

/// Like [`parse_duration`], but `0` (or `0s`) is allowed: "not at all".
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    match text.trim().trim_end_matches(['s', 'm']) {
        "0" => Ok(Duration::ZERO),
        _ => parse_duration(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_duration_or_zero("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
        assert_eq!(
            parse_duration_or_zero("300ms"),
            Ok(Duration::from_millis(300))
        );
    }

    #[test]
    fn run_flags_follow_the_contract() {
        let cli = Cli::try_parse_from([
            "redirector",
            "run",
            "--proxy",
            "10.0.0.1:15001",
            "--services-file",
            "/s.yaml",
            "--exclude-uid",
            "1337",
            "--exclude-uid",
            "0",
            "--exclude-mark",
            "0x100/0xf00",
            "--exclude-cgroup",
            "/sys/fs/cgroup/envoy",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run expected");
        };
        let o = args.options();
        assert!(matches!(o.source, Source::File(_)));
        assert_eq!(o.exclude_uids, [1337, 0]);
        assert_eq!(o.exclude_mark, Some((0x100, 0xf00)));
        assert_eq!(o.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        assert_eq!(o.annotation, DEFAULT_ANNOTATION);
        assert_eq!(o.proxy_check_interval, Duration::from_secs(1));
    }

    #[test]
    fn a_proxy_is_required_and_sources_are_exclusive() {
        assert!(Cli::try_parse_from(["redirector", "run"]).is_err());
        assert!(
            Cli::try_parse_from([
                "redirector",
                "run",
                "--proxy",
                "10.0.0.1:1",
                "--services-file",
                "a",
                "--kubeconfig",
                "b"
            ])
            .is_err()
        );
    }
}
