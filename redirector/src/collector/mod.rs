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
//! - [`istio`]: an entry as the labels of Istio's metrics, and the route label (pure).
//! - [`exporter`]: Istio's metrics, per entry, served on `--metrics-addr`.
//! - [`graph`]: the service graph of the last minute (pure), and its page on `--ui-addr`.
//! - [`host`]: this node's name and addresses.

pub mod aggregate;
pub mod config;
pub mod exporter;
pub mod follow;
pub mod graph;
pub mod host;
pub mod istio;
pub mod names;
pub mod parse;
pub mod request;

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};
use tracing::{debug, info, warn};

use self::{
    aggregate::{Aggregator, Interval, Record},
    config::{CollectLogs, LogCollection},
    exporter::{IstioMetrics, Recorder},
    follow::{FollowStats, Follower},
    graph::server::LiveGraph,
    names::NameIndex,
};
use crate::k8s::{
    sources::{self, Kinds, Source, SourceStats},
    store::{Change, ObjectStore},
};

/// Where Envoy writes its access log in the deployment (`deploy/envoy.yaml`).
pub const DEFAULT_ACCESS_LOG: &str = "/var/log/envoy/access.log";

/// What `redirector collect` was asked (the command line is in [`crate::cli`]).
#[derive(Clone, Debug)]
pub struct CollectOptions {
    /// Envoy's JSON access log, followed from its end.
    pub access_log: PathBuf,
    /// Where Services, EndpointSlices and Pods come from.
    pub source: Source,
    /// The settings in force (flags over `--application-layer` over defaults).
    pub log_collection: LogCollection,
    /// Append the records here instead of writing them to stdout.
    pub output: Option<PathBuf>,
    /// Skip ahead when more than this many bytes are waiting to be read.
    pub max_lag: u64,
    /// The records' `host`; `None`: `$NODE_NAME`, else the host name.
    pub node_name: Option<String>,
    /// More addresses that belong to this host.
    pub host_addresses: Vec<IpAddr>,
    /// How often to look for new lines.
    pub poll_interval: Duration,
    /// How often to log a summary.
    pub summary_interval: Duration,
    /// Serve Istio's metrics, if asked for.
    pub metrics: Option<MetricsOptions>,
    /// Serve the service graph page here, if asked for.
    pub ui_addr: Option<SocketAddr>,
}

/// `--metrics-addr` and its companions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsOptions {
    /// Where `/metrics` is served.
    pub addr: SocketAddr,
    /// Add a `route` label with at most this many distinct values.
    pub max_routes: Option<usize>,
}

/// Runs the collector until SIGTERM or SIGINT.
pub async fn run(opts: CollectOptions) -> Result<()> {
    let config = opts.log_collection;
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

    let host = opts.node_name.clone().unwrap_or_else(host::node_name);
    let mut host_addresses = host::own_addresses().unwrap_or_else(|e| {
        warn!(error = %e, "cannot list this host's addresses; only --host-addresses count as the host's");
        Vec::new()
    });
    host_addresses.extend(&opts.host_addresses);
    let mut output = Output::open(opts.output.as_deref())?;
    // Bound before anything else starts, so that a busy address fails the start.
    let (recorder, _server) = match &opts.metrics {
        Some(m) => {
            let listener = tokio::net::TcpListener::bind(m.addr)
                .await
                .with_context(|| format!("cannot listen on --metrics-addr {}", m.addr))?;
            let metrics = Arc::new(IstioMetrics::new());
            let server = AbortOnDrop(exporter::serve(listener, metrics.clone()));
            (Some(Recorder::new(metrics, m.max_routes)), Some(server))
        }
        None => (None, None),
    };
    let (graph, _ui_server) = match opts.ui_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --ui-addr {addr}"))?;
            let graph = Arc::new(LiveGraph::new(graph::Limits::default()));
            let server = AbortOnDrop(graph::server::serve(listener, graph.clone()));
            (Some(graph), Some(server))
        }
        None => (None, None),
    };

    let (tx, mut rx) = mpsc::unbounded_channel::<Change>();
    let _sources = sources::start(
        &opts.source,
        Kinds::COLLECTOR,
        tx,
        Arc::new(SourceStats::default()),
    )
    .await?;

    let mut follower = Follower::open_at_end(&opts.access_log, opts.max_lag)
        .with_context(|| format!("cannot open the access log {}", opts.access_log.display()))?;
    info!(
        access_log = %opts.access_log.display(),
        offset = ?follower.offset(),
        interval_seconds = config.interval_seconds.get(),
        requests_per_interval = %config.requests_per_interval,
        host = %host,
        "following the access log from its end"
    );

    let mut collector = Collector::new(&config, host, host_addresses);
    collector.metrics = recorder;
    collector.graph = graph;
    let mut poll = tokio::time::interval(opts.poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut flush = tokio::time::interval_at(Instant::now() + config.interval(), config.interval());
    flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut summary = tokio::time::interval_at(
        Instant::now() + opts.summary_interval,
        opts.summary_interval,
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

/// Counts for the periodic summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
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
    counters: Tally,
    reported: Tally,
    last_read_error: Option<String>,
    lines: Vec<String>,
    /// Istio's metrics, with `--metrics-addr`.
    metrics: Option<Recorder>,
    /// The service graph, with `--ui-addr`.
    graph: Option<Arc<LiveGraph>>,
    /// This read's observations for the graph (kept to reuse the allocation).
    observations: Vec<graph::Observation>,
}

impl Collector {
    fn new(config: &LogCollection, host: String, host_addresses: Vec<IpAddr>) -> Self {
        Self {
            store: ObjectStore::default(),
            names: NameIndex::default(),
            names_stale: true,
            host,
            host_addresses,
            aggregator: Aggregator::with_aggregation(
                config.requests_per_interval.max_records(),
                config.aggregation,
            ),
            interval_start: unix_now(),
            counters: Tally::default(),
            reported: Tally::default(),
            last_read_error: None,
            lines: Vec::new(),
            metrics: None,
            graph: None,
            observations: Vec::new(),
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
                    if let Some(metrics) = &mut self.metrics {
                        metrics.record(&entry, &self.names);
                    }
                    if self.graph.is_some() {
                        self.observations.push(graph::observe(&entry, &self.names));
                    }
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
        if let Some(graph) = &self.graph {
            graph.record_all(&self.observations);
            self.observations.clear();
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

/// Stops the metrics server when the collector stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
