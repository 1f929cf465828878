//! `redirector collect`: turns Envoy's JSON access log into the L7 records users of the
//! reference product query (index `tigera_secure_ee_l7*`), configured the way its user guide
//! configures log collection (`logCollection` of the `ApplicationLayer` resource). It runs as
//! its own container beside Envoy, reading the access log from their shared volume.
//!
//! Every `--poll-interval` it reads the lines Envoy appended ([`follow`]), parses them
//! ([`parse`]; unparsable lines are counted and skipped), names both ends of each request from
//! the Services, EndpointSlices and Pods it watches ([`names`], [`request`]) and adds them to
//! the current interval ([`aggregate`]). Every `logIntervalSeconds` it writes the interval's
//! records as JSON lines to stdout or `--output`, and flushes. On SIGTERM it reads what is
//! left, writes the unfinished interval, and exits.
//!
//! Modules:
//! - [`config`]: the settings, from flags or an `ApplicationLayer` manifest (pure).
//! - [`follow`]: following the log file through rotation, truncation and lag.
//! - [`parse`]: one access log line as a typed entry (pure).
//! - [`names`]: naming addresses after Pods, Services and the host (pure).
//! - [`request`]: an entry as an aggregation key and measure (pure).
//! - [`aggregate`]: per-interval records, the `logRequestsPerInterval` cap (pure).
//! - [`host`]: this node's name and addresses.

pub mod aggregate;
pub mod config;
pub mod follow;
pub mod host;
pub mod names;
pub mod parse;
pub mod request;

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    net::IpAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use clap::Args;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, MissedTickBehavior},
};
use tracing::{debug, info, warn};

use self::{
    aggregate::{Aggregator, Interval, Record},
    config::{CollectLogs, LogCollection, RequestLimit, Settings},
    follow::{FollowStats, Follower},
    names::NameIndex,
};
use crate::{
    cli::{LogFormat, parse_duration},
    daemon::Source,
    metrics::Metrics,
    sources,
    store::{Change, ObjectStore},
};

/// Where Envoy writes its access log in the deployment (`deploy/envoy.yaml`).
pub const DEFAULT_ACCESS_LOG: &str = "/var/log/envoy/access.log";

/// `redirector collect` flags.
#[derive(Debug, Args)]
pub struct CollectArgs {
    /// Envoy's JSON access log, followed from its end (through rotation and truncation).
    #[arg(long, default_value = DEFAULT_ACCESS_LOG, value_name = "PATH")]
    pub access_log: PathBuf,
    /// Read Services, EndpointSlices and Pods from this YAML or JSON file instead of the
    /// Kubernetes API, and follow it.
    #[arg(long, value_name = "PATH", conflicts_with = "kubeconfig")]
    pub services_file: Option<PathBuf>,
    /// Kubeconfig to reach the API with (default: in-cluster config, or $KUBECONFIG).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// A YAML file holding an `operator.tigera.io/v1` `ApplicationLayer` whose
    /// `spec.logCollection` configures collection; the flags below override it.
    #[arg(long, value_name = "FILE")]
    pub application_layer: Option<PathBuf>,
    /// `collectLogs`: Enabled, or Disabled to emit nothing [default: Enabled].
    #[arg(long, value_name = "Enabled|Disabled", value_parser = config::parse_collect_logs)]
    pub collect_logs: Option<CollectLogs>,
    /// `logIntervalSeconds`: how often to emit the aggregated records, at least 1
    /// [default: 5].
    #[arg(long, value_name = "SECONDS", value_parser = config::parse_interval)]
    pub log_interval_seconds: Option<NonZeroU32>,
    /// `logRequestsPerInterval`: at most this many distinct records per interval, the rest
    /// summed into one `unlogged` record; -1 for no cap [default: -1].
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = config::parse_request_limit
    )]
    pub log_requests_per_interval: Option<RequestLimit>,
    /// Append the records to this file instead of writing them to stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// When more than this much of the log is waiting to be read, skip to its newest lines
    /// (and count what was skipped). Bytes, or with a KiB, MiB or GiB suffix.
    #[arg(long, default_value = "1MiB", value_name = "SIZE", value_parser = parse_size)]
    pub max_lag: u64,
    /// The records' `host` [default: $NODE_NAME, else the host name].
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// More addresses that belong to this host (its own interfaces' are always included).
    #[arg(long, value_name = "IP,...", value_delimiter = ',')]
    pub host_addresses: Vec<IpAddr>,
    /// How often to look for new lines in the access log.
    #[arg(long, default_value = "200ms", value_name = "DURATION", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How often to log a summary of what was read, skipped and emitted.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub summary_interval: Duration,
    /// Log format (the collector's own logs, on stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl CollectArgs {
    /// Where Services, EndpointSlices and Pods come from.
    pub fn source(&self) -> Source {
        match &self.services_file {
            Some(path) => Source::File(path.clone()),
            None => Source::Kube(self.kubeconfig.clone()),
        }
    }

    /// The settings the flags give (unset ones are left to the file and the defaults).
    pub fn flag_settings(&self) -> Settings {
        Settings {
            collect_logs: self.collect_logs,
            interval_seconds: self.log_interval_seconds,
            requests_per_interval: self.log_requests_per_interval,
        }
    }

    /// The settings in force: flags, then `--application-layer`, then defaults.
    pub fn log_collection(&self) -> Result<LogCollection> {
        let file = match &self.application_layer {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Some(config::parse_application_layer(&text).with_context(|| {
                    format!("{} is not a usable ApplicationLayer", path.display())
                })?)
            }
            None => None,
        };
        Ok(config::resolve(self.flag_settings(), file))
    }
}

/// `1048576`, `512KiB`, `1MiB`, `2GiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 65536, 512KiB or 1MiB"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use KiB, MiB or GiB)"
            ));
        }
    };
    match n.checked_mul(factor) {
        Some(0) => Err(format!("{text:?}: must be more than 0")),
        Some(size) => Ok(size),
        None => Err(format!("{text:?} is too large")),
    }
}

/// Runs the collector until SIGTERM or SIGINT.
pub async fn run(args: CollectArgs) -> Result<()> {
    let config = args.log_collection()?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    if config.collect_logs == CollectLogs::Disabled {
        // Stay up (a container that exits would be restarted again and again), doing nothing.
        info!("log collection is disabled (collectLogs: Disabled): nothing is read or emitted");
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        return Ok(());
    }

    let host = args.node_name.clone().unwrap_or_else(host::node_name);
    let mut host_addresses = host::own_addresses().unwrap_or_else(|e| {
        warn!(error = %e, "cannot list this host's addresses; only --host-addresses count as the host's");
        Vec::new()
    });
    host_addresses.extend(&args.host_addresses);
    let mut output = Output::open(args.output.as_deref())?;

    let (tx, mut rx) = mpsc::unbounded_channel::<Change>();
    // The sources count their events here; the collector serves no metrics (yet).
    let metrics = Arc::new(Metrics::default());
    let _sources = start_sources(&args.source(), tx, &metrics).await?;

    let mut follower = Follower::open_at_end(&args.access_log, args.max_lag)
        .with_context(|| format!("cannot open the access log {}", args.access_log.display()))?;
    info!(
        access_log = %args.access_log.display(),
        offset = ?follower.offset(),
        interval_seconds = config.interval_seconds.get(),
        requests_per_interval = %config.requests_per_interval,
        host = %host,
        "following the access log from its end"
    );

    let mut collector = Collector::new(&config, host, host_addresses);
    let mut poll = tokio::time::interval(args.poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut flush = tokio::time::interval_at(Instant::now() + config.interval(), config.interval());
    flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut summary = tokio::time::interval_at(
        Instant::now() + args.summary_interval,
        args.summary_interval,
    );
    summary.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sources_open = true;
    loop {
        tokio::select! {
            // Names first: lines read in this turn are named with the newest objects.
            biased;
            change = rx.recv(), if sources_open => match change {
                Some(change) => {
                    collector.store.apply(change);
                    while let Ok(more) = rx.try_recv() {
                        collector.store.apply(more);
                    }
                    collector.names_stale = true;
                }
                None => {
                    warn!("every source stopped; naming with the last objects known");
                    sources_open = false;
                }
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = flush.tick() => {
                // Everything written up to now belongs to this interval.
                collector.read(&mut follower);
                collector.flush(&mut output, unix_now())?;
            }
            _ = poll.tick() => collector.read(&mut follower),
            _ = summary.tick() => collector.summary(&follower),
        }
    }
    collector.read(&mut follower);
    collector.flush(&mut output, unix_now())?;
    collector.summary(&follower);
    info!("stopping; the last, partial interval was written");
    Ok(())
}

/// Starts the configured source with Pods.
async fn start_sources(
    source: &Source,
    tx: mpsc::UnboundedSender<Change>,
    metrics: &Arc<Metrics>,
) -> Result<Vec<JoinHandle<()>>> {
    Ok(match source {
        Source::File(path) => vec![sources::file::start_with_pods(
            path.clone(),
            tx,
            Arc::clone(metrics),
        )?],
        Source::Kube(kubeconfig) => {
            let client = sources::kube::client(kubeconfig.as_deref())
                .await
                .context("cannot configure the Kubernetes client (use --kubeconfig, $KUBECONFIG, or run in a cluster; or --services-file to run without one)")?;
            let mut tasks = sources::kube::start(client.clone(), tx.clone(), Arc::clone(metrics));
            tasks.push(sources::kube::start_pods(client, tx, Arc::clone(metrics)));
            tasks
        }
    })
}

/// Counts for the periodic summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    follow: FollowStats,
    unparsable: u64,
    requests: u64,
    records: u64,
}

/// The collector's state between ticks.
struct Collector {
    store: ObjectStore,
    names: NameIndex,
    names_stale: bool,
    host: String,
    host_addresses: Vec<IpAddr>,
    aggregator: Aggregator,
    interval_start: u64,
    counters: Counters,
    reported: Counters,
    last_read_error: Option<String>,
    lines: Vec<String>,
}

impl Collector {
    fn new(config: &LogCollection, host: String, host_addresses: Vec<IpAddr>) -> Self {
        Self {
            store: ObjectStore::default(),
            names: NameIndex::default(),
            names_stale: true,
            host,
            host_addresses,
            aggregator: Aggregator::new(config.requests_per_interval.max_records()),
            interval_start: unix_now(),
            counters: Counters::default(),
            reported: Counters::default(),
            last_read_error: None,
            lines: Vec::new(),
        }
    }

    /// Reads the new lines and adds them to the current interval.
    fn read(&mut self, follower: &mut Follower) {
        let before = follower.stats();
        self.lines.clear();
        // Lines read before an error are still handed out; the error is reported once until
        // it changes, and reading is tried again at the next poll.
        match follower.poll(&mut self.lines) {
            Ok(()) => self.last_read_error = None,
            Err(e) => {
                let text = e.to_string();
                if self.last_read_error.as_deref() != Some(&text) {
                    warn!(access_log = %follower.path().display(), error = %text, "cannot read the access log; retrying");
                    self.last_read_error = Some(text);
                }
            }
        }
        let after = follower.stats();
        if after.skipped_bytes > before.skipped_bytes {
            warn!(
                skipped_bytes = after.skipped_bytes - before.skipped_bytes,
                skipped_lines = after.skipped_lines - before.skipped_lines,
                "fell too far behind the access log (--max-lag); skipped to its newest lines"
            );
        }
        if after.rotations > before.rotations {
            info!("the access log was rotated; reading the new file");
        }
        if after.truncations > before.truncations {
            info!("the access log was truncated; reading it from the start");
        }
        self.counters.follow = after;
        if self.lines.is_empty() {
            return;
        }
        if self.names_stale {
            self.names = NameIndex::build(&self.store, &self.host_addresses);
            self.names_stale = false;
        }
        for line in &self.lines {
            if line.trim().is_empty() {
                continue;
            }
            match parse::parse_line(line) {
                Ok(entry) => {
                    let (key, measure) = request::request(&entry, &self.names);
                    self.aggregator.add(key, measure);
                    self.counters.requests += 1;
                }
                Err(e) => {
                    self.counters.unparsable += 1;
                    let start: String = line.chars().take(200).collect();
                    debug!(error = %e, line = %start, "skipping an access log line that does not parse");
                }
            }
        }
    }

    /// Ends the current interval at `now`: writes its records and flushes.
    fn flush(&mut self, output: &mut Output, now: u64) -> Result<()> {
        let interval = Interval {
            start: self.interval_start,
            end: now.max(self.interval_start),
        };
        self.interval_start = interval.end;
        let records = self.aggregator.take(interval, &self.host);
        if records.is_empty() {
            return Ok(());
        }
        self.counters.records += records.len() as u64;
        output.write(&records)
    }

    /// Logs what happened since the last summary, if anything did.
    fn summary(&mut self, follower: &Follower) {
        self.counters.follow = follower.stats();
        let (now, then) = (self.counters, self.reported);
        if now == then {
            return;
        }
        info!(
            lines = now.follow.lines - then.follow.lines,
            requests = now.requests - then.requests,
            records = now.records - then.records,
            unparsable = now.unparsable - then.unparsable,
            skipped_lines = now.follow.skipped_lines - then.follow.skipped_lines,
            skipped_bytes = now.follow.skipped_bytes - then.follow.skipped_bytes,
            rotations = now.follow.rotations - then.follow.rotations,
            truncations = now.follow.truncations - then.follow.truncations,
            total_unparsable = now.unparsable,
            total_skipped_lines = now.follow.skipped_lines,
            "access log summary since the last one"
        );
        self.reported = now;
    }
}

/// Where records go.
enum Output {
    Stdout,
    File { path: PathBuf, file: File },
}

impl Output {
    fn open(path: Option<&Path>) -> Result<Self> {
        Ok(match path {
            None => Self::Stdout,
            Some(path) => Self::File {
                path: path.to_path_buf(),
                file: OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open the output {}", path.display()))?,
            },
        })
    }

    /// Writes the records as JSON lines, in one write, and flushes.
    fn write(&mut self, records: &[Record]) -> Result<()> {
        let mut text = Vec::new();
        for record in records {
            serde_json::to_writer(&mut text, record)?;
            text.push(b'\n');
        }
        let written: io::Result<()> = match self {
            Self::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&text).and_then(|()| out.flush())
            }
            Self::File { file, .. } => file.write_all(&text).and_then(|()| file.flush()),
        };
        written.with_context(|| match self {
            Self::Stdout => "cannot write the records to stdout".to_string(),
            Self::File { path, .. } => format!("cannot write the records to {}", path.display()),
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    fn collect(args: &[&str]) -> Result<Box<CollectArgs>, clap::Error> {
        let mut argv = vec!["redirector", "collect"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Collect(args) => Ok(args),
            other => panic!("collect expected, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let a = collect(&[]).unwrap();
        assert_eq!(a.access_log, PathBuf::from(DEFAULT_ACCESS_LOG));
        assert_eq!(a.max_lag, follow::DEFAULT_MAX_LAG);
        assert_eq!(a.poll_interval, Duration::from_millis(200));
        assert!(matches!(a.source(), Source::Kube(None)));
        assert_eq!(a.log_collection().unwrap(), LogCollection::default());
    }

    #[test]
    fn flags() {
        let a = collect(&[
            "--access-log",
            "/tmp/a.log",
            "--services-file",
            "/s.yaml",
            "--collect-logs",
            "Enabled",
            "--log-interval-seconds",
            "1",
            "--log-requests-per-interval",
            "-1",
            "--max-lag",
            "64KiB",
            "--host-addresses",
            "10.0.0.1,fd00::1",
            "--output",
            "/tmp/out.jsonl",
        ])
        .unwrap();
        assert!(matches!(a.source(), Source::File(_)));
        assert_eq!(a.max_lag, 64 * 1024);
        assert_eq!(a.host_addresses.len(), 2);
        let c = a.log_collection().unwrap();
        assert_eq!(c.interval(), Duration::from_secs(1));
        assert_eq!(c.requests_per_interval, RequestLimit::Unlimited);
        let a = collect(&["--log-requests-per-interval=1"]).unwrap();
        assert_eq!(
            a.log_collection()
                .unwrap()
                .requests_per_interval
                .max_records(),
            Some(1)
        );
    }

    #[test]
    fn invalid_flags_are_rejected_clearly() {
        for bad in [
            &["--log-interval-seconds", "0"][..],
            &["--log-requests-per-interval", "0"],
            &["--log-requests-per-interval", "-2"],
            &["--collect-logs", "maybe"],
            &["--max-lag", "1TB"],
            &["--services-file", "a", "--kubeconfig", "b"],
        ] {
            let e = collect(bad).unwrap_err().to_string();
            assert!(e.contains("error"), "{bad:?}: {e}");
        }
        let e = collect(&["--log-interval-seconds", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 1"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1MB").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn the_interval_ends_where_the_next_begins() {
        let mut c = Collector::new(&LogCollection::default(), "n".into(), Vec::new());
        c.interval_start = 100;
        let mut out = Output::File {
            path: PathBuf::from("/dev/null"),
            file: File::options().write(true).open("/dev/null").unwrap(),
        };
        c.aggregator
            .add(aggregate::Key::default(), aggregate::Measure::default());
        c.flush(&mut out, 105).unwrap();
        assert_eq!(c.interval_start, 105);
        assert_eq!(c.counters.records, 1);
        c.flush(&mut out, 110).unwrap();
        assert_eq!(c.counters.records, 1, "an empty interval writes nothing");
        assert_eq!(c.interval_start, 110);
    }
}
