//! `--services-file`: Service and EndpointSlice manifests in a file, followed for changes. An
//! edit takes effect within a second; a file that fails to parse is reported with the position
//! of the error and the last good state stays in force.
//!
//! [`start`] is the daemon's (Services and EndpointSlices); [`start_with_pods`] is the
//! collector's, which also sends the file's Pods.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::manifests::{self, Manifests};
use crate::{metrics::Metrics, store::Change};

/// How often the file is looked at.
const POLL: Duration = Duration::from_millis(250);

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

/// Reads and parses the file once.
pub fn load(path: &Path) -> Result<Manifests, FileError> {
    load_kinds(path, false)
}

/// Reads and parses the file once, Pods included.
pub fn load_with_pods(path: &Path) -> Result<Manifests, FileError> {
    load_kinds(path, true)
}

fn load_kinds(path: &Path, with_pods: bool) -> Result<Manifests, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parsed = if with_pods {
        manifests::parse_with_pods(&text)
    } else {
        manifests::parse(&text)
    };
    parsed.map_err(|source| FileError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

fn send_all(m: Manifests, with_pods: bool, tx: &mpsc::UnboundedSender<Change>) {
    for ignored in &m.ignored {
        info!(object = %ignored, "ignoring an object that is neither a Service nor an EndpointSlice");
    }
    let _ = tx.send(Change::ServicesReset(m.services));
    let _ = tx.send(Change::SlicesReset(m.slices));
    if with_pods {
        let _ = tx.send(Change::PodsReset(m.pods));
    }
}

/// Loads the file (an error here stops the daemon: there is no last good state yet), sends its
/// contents, then follows it until the receiver goes away.
pub fn start(
    path: PathBuf,
    tx: mpsc::UnboundedSender<Change>,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<()>, FileError> {
    start_kinds(path, false, tx, metrics)
}

/// [`start`], sending the file's Pods as well (for the collector).
pub fn start_with_pods(
    path: PathBuf,
    tx: mpsc::UnboundedSender<Change>,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<()>, FileError> {
    start_kinds(path, true, tx, metrics)
}

fn start_kinds(
    path: PathBuf,
    with_pods: bool,
    tx: mpsc::UnboundedSender<Change>,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<()>, FileError> {
    let first = fingerprint(&path).map_err(|source| FileError::Read {
        path: path.clone(),
        source,
    })?;
    let manifests = load_kinds(&path, with_pods)?;
    metrics.source_event();
    send_all(manifests, with_pods, &tx);
    Ok(tokio::spawn(follow(path, with_pods, first, tx, metrics)))
}

async fn follow(
    path: PathBuf,
    with_pods: bool,
    mut last: Fingerprint,
    tx: mpsc::UnboundedSender<Change>,
    metrics: Arc<Metrics>,
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
                    metrics.source_error();
                    missing_reported = true;
                }
                continue;
            }
        };
        if now == last {
            continue;
        }
        last = now;
        match load_kinds(&path, with_pods) {
            Ok(m) => {
                info!(file = %path.display(), services = m.services.len(), slices = m.slices.len(), "services file reloaded");
                metrics.source_event();
                send_all(m, with_pods, &tx);
            }
            Err(e) => {
                warn!(error = %e, "keeping the last good state");
                metrics.source_error();
            }
        }
    }
}
