//! `redirector observe`: the requests of this node's Envoy, one line each, named and filtered
//! the way `hubble observe` does it: the last N (`--last`), then, with `--follow`, new ones as
//! Envoy logs them. It reads the access log the collector reads (on the node, or in the proxy
//! pod: `kubectl exec ds/l7-proxy -c collector -- redirector observe ...`), and names both
//! ends from the same Services, EndpointSlices and Pods.
//!
//! Modules:
//! - [`flow`]: an entry with both ends named (pure).
//! - [`filter`]: Hubble's filter grammar (pure).
//! - [`render`]: `compact`, `table` and `json` lines (pure).

pub mod filter;
pub mod flow;
pub mod render;

use std::{
    collections::VecDeque,
    fs::File,
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::warn;

use self::{filter::FilterSet, flow::Flow, render::Output};
use crate::{
    collector::{follow::Follower, host, names::NameIndex, parse},
    k8s::{
        sources::{self, Kinds, Source, SourceStats},
        store::{Change, ObjectStore},
    },
};

/// What `observe` is asked to do.
#[derive(Debug, Clone)]
pub struct ObserveOptions {
    /// Envoy's JSON access log.
    pub access_log: PathBuf,
    /// Where names come from; `None`: addresses only.
    pub source: Option<Source>,
    /// How long to wait for the names before printing.
    pub sync_timeout: Duration,
    /// The filters.
    pub filters: FilterSet,
    /// How to print.
    pub output: Output,
    /// How many of the requests already logged to print first.
    pub last: usize,
    /// Go on printing new requests until interrupted.
    pub follow: bool,
}

/// How much of the end of the log `--last` reads at most.
const TAIL_BYTES: u64 = 16 << 20;
/// How often `--follow` looks for new lines.
const POLL: Duration = Duration::from_millis(200);

/// Runs `observe` until done (without `--follow`) or interrupted.
pub async fn run(opts: ObserveOptions) -> Result<()> {
    let mut names = Names::start(opts.source.as_ref(), opts.sync_timeout).await?;
    // Opened before the tail is read, so nothing logged in between is missed.
    let mut follower = Follower::open_at_end(&opts.access_log, 1 << 20)
        .with_context(|| format!("cannot open the access log {}", opts.access_log.display()))?;
    let Some(end) = follower.offset() else {
        if !opts.follow {
            anyhow::bail!(
                "there is no access log at {}: is Envoy running on this node? (--access-log \
                 names it; add --follow to wait for it)",
                opts.access_log.display()
            );
        }
        return follow(&opts, &mut names, &mut follower, Printer::new(opts.output)).await;
    };
    let mut printer = Printer::new(opts.output);
    if opts.last > 0 {
        let tail = read_tail(&opts.access_log, end)
            .with_context(|| format!("cannot read {}", opts.access_log.display()))?;
        let index = names.index();
        let mut kept = VecDeque::with_capacity(opts.last);
        for line in &tail {
            if let Some(flow) = to_flow(line, &index)
                && opts.filters.matches(&flow)
            {
                if kept.len() == opts.last {
                    kept.pop_front();
                }
                kept.push_back(flow);
            }
        }
        for flow in &kept {
            if !printer.print(flow)? {
                return Ok(());
            }
        }
    }
    if opts.follow {
        return follow(&opts, &mut names, &mut follower, printer).await;
    }
    Ok(())
}

async fn follow(
    opts: &ObserveOptions,
    names: &mut Names,
    follower: &mut Follower,
    mut printer: Printer,
) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut poll = tokio::time::interval(POLL);
    let mut lines = Vec::new();
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = poll.tick() => {}
        }
        names.drain();
        lines.clear();
        follower
            .poll(&mut lines)
            .with_context(|| format!("cannot read {}", opts.access_log.display()))?;
        if lines.is_empty() {
            continue;
        }
        let index = names.index();
        for line in &lines {
            if let Some(flow) = to_flow(line, &index)
                && opts.filters.matches(&flow)
                && !printer.print(&flow)?
            {
                return Ok(());
            }
        }
    }
}

/// One access log line as a named flow; `None` for a line that is not an entry.
pub(crate) fn to_flow(line: &str, names: &NameIndex) -> Option<Flow> {
    // Lines that are not entries (a partial line, another format) are the collector's to
    // count; here they are just not requests.
    parse::parse_line(line).ok().map(|e| Flow::new(e, names))
}

/// The complete lines of at most the last [`TAIL_BYTES`] before `end`.
fn read_tail(path: &Path, end: u64) -> io::Result<Vec<String>> {
    let mut file = File::open(path)?;
    let start = end.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(end - start).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // Started mid-file: the first line is a piece of one.
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    Ok(lines)
}

/// Prints flows to stdout; says `false` once stdout is closed (piped into `head`).
struct Printer {
    output: Output,
    header_done: bool,
}

impl Printer {
    fn new(output: Output) -> Self {
        Self {
            output,
            header_done: false,
        }
    }

    fn print(&mut self, flow: &Flow) -> Result<bool> {
        let mut out = io::stdout().lock();
        let mut text = String::new();
        if !self.header_done {
            self.header_done = true;
            if let Some(h) = render::header(self.output) {
                text.push_str(&h);
                text.push('\n');
            }
        }
        text.push_str(&render::line(self.output, flow));
        text.push('\n');
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e).context("cannot write to stdout"),
        }
    }
}

/// The names both ends get, kept up to date from the source (also `top`'s).
pub(crate) struct Names {
    store: ObjectStore,
    rx: Option<mpsc::UnboundedReceiver<Change>>,
    host: Vec<IpAddr>,
    index: Arc<NameIndex>,
    stale: bool,
}

impl Names {
    /// Starts `source` and waits (at most `timeout`) for its first complete lists.
    pub(crate) async fn start(source: Option<&Source>, timeout: Duration) -> Result<Self> {
        let host = host::own_addresses().unwrap_or_else(|e| {
            warn!(error = %e, "cannot list this host's addresses");
            Vec::new()
        });
        let mut names = Self {
            store: ObjectStore::default(),
            rx: None,
            host,
            index: Arc::new(NameIndex::default()),
            stale: true,
        };
        let Some(source) = source else {
            return Ok(names);
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        // The tasks stop by themselves once the receiver is dropped.
        let _started = sources::start(
            source,
            Kinds::COLLECTOR,
            tx,
            Arc::new(SourceStats::default()),
        )
        .await
        .context(
            "cannot read Services and Pods to name the requests with (--services-file, \
                 --kubeconfig, or --no-names to print addresses only)",
        )?;
        let synced = tokio::time::timeout(timeout, async {
            while !(names.store.synced() && names.store.pods_synced()) {
                match rx.recv().await {
                    Some(change) => names.store.apply(change),
                    None => break,
                }
            }
        })
        .await;
        if synced.is_err() {
            warn!(
                ?timeout,
                "the Services and Pods are not all listed yet: some ends may be printed as \
                 addresses"
            );
        }
        names.rx = Some(rx);
        Ok(names)
    }

    /// Applies what the source sent since the last call.
    fn drain(&mut self) {
        if let Some(rx) = &mut self.rx {
            while let Ok(change) = rx.try_recv() {
                self.store.apply(change);
                self.stale = true;
            }
        }
    }

    /// The index for the store as it is now.
    pub(crate) fn index(&mut self) -> Arc<NameIndex> {
        self.drain();
        if self.stale {
            self.index = Arc::new(NameIndex::build(&self.store, &self.host));
            self.stale = false;
        }
        Arc::clone(&self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_drops_a_cut_first_line() {
        let dir = std::env::temp_dir().join(format!("l7r-observe-tail-{}", std::process::id()));
        std::fs::write(&dir, "one\ntwo\nthree\n").unwrap();
        assert_eq!(read_tail(&dir, 14).unwrap(), ["one", "two", "three"]);
        // Reading only up to the end of "two": "three" is not there yet.
        assert_eq!(read_tail(&dir, 8).unwrap(), ["one", "two"]);
        std::fs::remove_file(&dir).unwrap();
    }
}
