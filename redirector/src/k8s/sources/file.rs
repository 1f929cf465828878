//! `--services-file`: Service and EndpointSlice manifests in a file, followed for changes. An
//! edit takes effect within a second (in practice within tens of milliseconds: the file is
//! looked at every 20 ms and only its changed documents are parsed again); a file that fails
//! to parse is reported with the position of the error and the last good state stays in
//! force.
//!
//! Pods in the file are sent only when [`Kinds::pods`] asks for them (the collector's).

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    Kinds, SourceStats,
    manifests::{self, Delta, Manifests, Reparser},
};
use crate::k8s::store::Change;

/// How often the file is looked at: a `stat(2)`, so cheap enough to do often. (Polling rather
/// than inotify also follows the symlink swaps of a mounted ConfigMap.)
const POLL: Duration = Duration::from_millis(20);

/// Why the file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It cannot be read.
    #[error("cannot read the services file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It does not parse.
    #[error("the services file {path} does not parse: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why.
        #[source]
        source: manifests::ManifestError,
    },
}

/// What identifies a version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    inode: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    let m = std::fs::metadata(path)?;
    Ok(Fingerprint {
        inode: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    })
}

/// Reads the file.
fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_error(path: &Path) -> impl FnOnce(manifests::ManifestError) -> FileError {
    let path = path.to_path_buf();
    move |source| FileError::Parse { path, source }
}

fn log_ignored(m: &Manifests) {
    for ignored in &m.ignored {
        info!(object = %ignored, "ignoring an object that is neither a Service nor an EndpointSlice");
    }
}

/// The whole file, as resets: the first load.
fn send_all(m: Manifests, kinds: Kinds, tx: &mpsc::UnboundedSender<Change>) {
    log_ignored(&m);
    let _ = tx.send(Change::ServicesReset(m.services));
    let _ = tx.send(Change::SlicesReset(m.slices));
    if kinds.pods {
        let _ = tx.send(Change::PodsReset(m.pods));
    }
}

/// What an edit changed: removals first, so an object that moved within the file ends applied.
fn send_delta(delta: Delta, kinds: Kinds, tx: &mpsc::UnboundedSender<Change>) {
    log_ignored(&delta.added);
    let Delta { removed, added } = delta;
    let removals = removed
        .services
        .into_iter()
        .map(Change::ServiceDeleted)
        .chain(removed.slices.into_iter().map(Change::SliceDeleted));
    let additions = added
        .services
        .into_iter()
        .map(Change::ServiceApplied)
        .chain(added.slices.into_iter().map(Change::SliceApplied));
    for change in removals.chain(additions) {
        let _ = tx.send(change);
    }
    if kinds.pods {
        let pods = removed
            .pods
            .into_iter()
            .map(Change::PodDeleted)
            .chain(added.pods.into_iter().map(Change::PodApplied));
        for change in pods {
            let _ = tx.send(change);
        }
    }
}

/// Loads the file (an error here stops the daemon: there is no last good state yet), sends its
/// contents, then follows it until the receiver goes away.
pub fn start(
    path: PathBuf,
    kinds: Kinds,
    tx: mpsc::UnboundedSender<Change>,
    stats: Arc<SourceStats>,
) -> Result<tokio::task::JoinHandle<()>, FileError> {
    let first = fingerprint(&path).map_err(|source| FileError::Read {
        path: path.clone(),
        source,
    })?;
    let mut reparser = Reparser::new(kinds);
    let manifests = reparser.parse(&read(&path)?).map_err(parse_error(&path))?;
    stats.event();
    send_all(manifests, kinds, &tx);
    Ok(tokio::spawn(follow(
        path, kinds, reparser, first, tx, stats,
    )))
}

async fn follow(
    path: PathBuf,
    kinds: Kinds,
    mut reparser: Reparser,
    mut last: Fingerprint,
    tx: mpsc::UnboundedSender<Change>,
    stats: Arc<SourceStats>,
) {
    let mut missing_reported = false;
    loop {
        tokio::time::sleep(POLL).await;
        if tx.is_closed() {
            return;
        }
        let now = match fingerprint(&path) {
            Ok(f) => {
                missing_reported = false;
                f
            }
            Err(e) => {
                if !missing_reported {
                    warn!(file = %path.display(), error = %e, "services file unreadable; keeping the last good state");
                    stats.error();
                    missing_reported = true;
                }
                continue;
            }
        };
        if now == last {
            continue;
        }
        last = now;
        match read(&path).and_then(|text| reparser.reparse(&text).map_err(parse_error(&path))) {
            Ok(delta) => {
                info!(
                    file = %path.display(),
                    services_removed = delta.removed.services.len(),
                    services_added = delta.added.services.len(),
                    slices_removed = delta.removed.slices.len(),
                    slices_added = delta.added.slices.len(),
                    "services file changed"
                );
                stats.event();
                send_delta(delta, kinds, &tx);
            }
            Err(e) => {
                warn!(error = %e, "keeping the last good state");
                stats.error();
            }
        }
    }
}
