//! `--services-file`: Service and EndpointSlice manifests in a file, followed for changes. An
//! edit takes effect within a second, in practice within milliseconds: inotify wakes the
//! follower when the file, or anything in its directory, is written, created, renamed or
//! removed, and only the file's changed documents are parsed again. Watching the directory
//! is what follows a mounted ConfigMap, whose file is a symlink through `..data`, a symlink
//! that the kubelet replaces atomically on an update (no event names the file then). The
//! file itself is watched too, for a path that is a symlink into another directory. A
//! `stat(2)` every second is the safety net for what inotify cannot see (a network file
//! system, a watch limit); without inotify at all the file is looked at every 20 ms. A file
//! that fails to parse is reported with the position of the error and the last good state
//! stays in force.
//!
//! Pods in the file are sent only when [`Kinds::pods`] asks for them (the collector's).

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::{FutureExt as _, StreamExt as _};
use inotify::{EventStream, Inotify, WatchMask};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{
    Kinds, SourceStats,
    manifests::{self, Delta, Manifests, Reparser},
};
use crate::k8s::store::Change;

/// How often the file is looked at when inotify cannot be used: a `stat(2)`, so cheap enough
/// to do often.
const POLL: Duration = Duration::from_millis(20);

/// How often the file is looked at although inotify watches it: the safety net for changes no
/// event reports.
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// The events that can mean the file changed. Not `MODIFY`: a writer is still writing then,
/// and `CLOSE_WRITE` follows.
fn watch_mask() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::CREATE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::DELETE
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

/// The directory holding `path` (the current one for a bare file name).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// What wakes the follower: inotify events on the file and its directory, or a timer alone.
enum Wake {
    /// Events, and a look every `safety` regardless.
    Inotify {
        stream: EventStream<Vec<u8>>,
        safety: Duration,
    },
    Poll,
}

impl Wake {
    /// Watches `path` and its directory; falls back to polling, with a warning, when inotify
    /// cannot be used.
    fn watch(path: &Path, safety: Duration) -> Self {
        let watched = Inotify::init().and_then(|inotify| {
            let stream = inotify.into_event_stream(vec![0u8; 4096])?;
            stream.watches().add(directory_of(path), watch_mask())?;
            Ok(stream)
        });
        match watched {
            Ok(stream) => {
                let wake = Self::Inotify { stream, safety };
                wake.watch_file(path);
                wake
            }
            Err(e) => {
                warn!(file = %path.display(), error = %e, poll = ?POLL, "cannot watch the services file with inotify; polling it");
                Self::Poll
            }
        }
    }

    /// (Re-)watches the file itself, through symlinks: after a replacement the path names
    /// another inode, which needs a watch of its own. A missing file is not an error: the
    /// directory's watch sees it come back.
    fn watch_file(&self, path: &Path) {
        if let Self::Inotify { stream, .. } = self
            && let Err(e) = stream.watches().add(path, watch_mask())
        {
            debug!(file = %path.display(), error = %e, "cannot watch the services file itself");
        }
    }

    /// Waits for the next event, or the poll period. Events already queued are taken too:
    /// one look at the file serves them all.
    async fn next(&mut self) {
        match self {
            Self::Poll => tokio::time::sleep(POLL).await,
            Self::Inotify { stream, safety } => {
                tokio::select! {
                    event = stream.next() => match event {
                        Some(Ok(_)) => {
                            while let Some(Some(Ok(_))) = stream.next().now_or_never() {}
                        }
                        // Never expected; polling still follows the file.
                        Some(Err(_)) | None => {
                            let error = event.and_then(Result::err).map(|e| e.to_string());
                            warn!(?error, poll = ?POLL, "inotify stopped; polling the services file");
                            *self = Self::Poll;
                        }
                    },
                    _ = tokio::time::sleep(*safety) => {}
                }
            }
        }
    }
}

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
    start_with(path, kinds, tx, stats, SAFETY_POLL)
}

/// [`start`], looking at the file every `safety` besides the inotify events.
fn start_with(
    path: PathBuf,
    kinds: Kinds,
    tx: mpsc::UnboundedSender<Change>,
    stats: Arc<SourceStats>,
    safety: Duration,
) -> Result<tokio::task::JoinHandle<()>, FileError> {
    let first = fingerprint(&path).map_err(|source| FileError::Read {
        path: path.clone(),
        source,
    })?;
    let mut reparser = Reparser::new(kinds);
    let manifests = reparser.parse(&read(&path)?).map_err(parse_error(&path))?;
    stats.event();
    send_all(manifests, kinds, &tx);
    let wake = Wake::watch(&path, safety);
    Ok(tokio::spawn(follow(
        path, kinds, reparser, first, wake, tx, stats,
    )))
}

async fn follow(
    path: PathBuf,
    kinds: Kinds,
    mut reparser: Reparser,
    mut last: Fingerprint,
    mut wake: Wake,
    tx: mpsc::UnboundedSender<Change>,
    stats: Arc<SourceStats>,
) {
    let mut missing_reported = false;
    loop {
        wake.next().await;
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
        if now.inode != last.inode {
            wake.watch_file(&path);
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

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::symlink,
        sync::atomic::{AtomicU32, Ordering},
    };

    use super::*;

    /// A temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "l7r-services-file-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A file of these Services, each its own document behind a marker (so a document's
    /// text, its identity, does not depend on its place in the file).
    fn services(names: &[&str]) -> String {
        names
            .iter()
            .map(|name| {
                format!(
                    "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  \
                     namespace: shop\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{{port: 80}}]\n"
                )
            })
            .collect()
    }

    /// No safety poll within a test's life: a change that arrives came through inotify.
    const NEVER: Duration = Duration::from_secs(3600);

    /// Starts following `path`; returns the receiver with the first load taken off it.
    fn follow_file(path: &Path) -> (mpsc::UnboundedReceiver<Change>, tokio::task::JoinHandle<()>) {
        assert!(
            matches!(Wake::watch(path, NEVER), Wake::Inotify { .. }),
            "inotify is not available: these tests would prove nothing"
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = start_with(
            path.to_path_buf(),
            Kinds::DAEMON,
            tx,
            Arc::new(SourceStats::default()),
            NEVER,
        )
        .unwrap();
        for _ in 0..2 {
            // ServicesReset, SlicesReset.
            rx.try_recv().unwrap();
        }
        (rx, task)
    }

    /// The next change, within 10 s (inotify delivers in milliseconds; the margin is for a
    /// loaded machine).
    async fn next_change(rx: &mut mpsc::UnboundedReceiver<Change>) -> Change {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no change within 10 s")
            .expect("the follower stopped")
    }

    fn applied_name(change: &Change) -> Option<String> {
        match change {
            Change::ServiceApplied(s) => s.metadata.name.clone(),
            _ => None,
        }
    }

    #[tokio::test]
    async fn an_edit_in_place_and_an_atomic_replacement_are_seen_without_polling() {
        let dir = TempDir::new();
        let path = dir.0.join("services.yaml");
        std::fs::write(&path, services(&["a"])).unwrap();
        let (mut rx, task) = follow_file(&path);

        // Truncate and write, as an editor does.
        std::fs::write(&path, services(&["a", "b"])).unwrap();
        assert_eq!(
            applied_name(&next_change(&mut rx).await).as_deref(),
            Some("b")
        );

        // Written beside it, renamed over it.
        let next = dir.0.join("services.yaml.next");
        std::fs::write(&next, services(&["b", "c"])).unwrap();
        std::fs::rename(&next, &path).unwrap();
        let mut names = Vec::new();
        for _ in 0..2 {
            match next_change(&mut rx).await {
                Change::ServiceDeleted(s) => names.push(format!("-{}", s.metadata.name.unwrap())),
                Change::ServiceApplied(s) => names.push(format!("+{}", s.metadata.name.unwrap())),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(names, ["-a", "+c"]);
        task.abort();
    }

    /// A mounted ConfigMap: `services.yaml -> ..data/services.yaml`, `..data -> ..v1`; an
    /// update writes `..v2`, points `..data_tmp` at it and renames that over `..data`.
    #[tokio::test]
    async fn a_configmap_symlink_swap_is_followed() {
        let dir = TempDir::new();
        let v1 = dir.0.join("..v1");
        std::fs::create_dir(&v1).unwrap();
        std::fs::write(v1.join("services.yaml"), services(&["a"])).unwrap();
        symlink("..v1", dir.0.join("..data")).unwrap();
        let path = dir.0.join("services.yaml");
        symlink("..data/services.yaml", &path).unwrap();
        let (mut rx, task) = follow_file(&path);

        for (version, name) in [("..v2", "b"), ("..v3", "c")] {
            let v = dir.0.join(version);
            std::fs::create_dir(&v).unwrap();
            std::fs::write(v.join("services.yaml"), services(&[name])).unwrap();
            symlink(version, dir.0.join("..data_tmp")).unwrap();
            std::fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).unwrap();
            let mut applied = None;
            for _ in 0..2 {
                let change = next_change(&mut rx).await;
                applied = applied.or(applied_name(&change));
            }
            assert_eq!(applied.as_deref(), Some(name), "after {version}");
        }
        task.abort();
    }

    #[tokio::test]
    async fn a_file_removed_and_created_again_is_read_again() {
        let dir = TempDir::new();
        let path = dir.0.join("services.yaml");
        std::fs::write(&path, services(&["a"])).unwrap();
        let (mut rx, task) = follow_file(&path);
        std::fs::remove_file(&path).unwrap();
        // Give the follower the removal first, as a separate event.
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(&path, services(&["a", "d"])).unwrap();
        assert_eq!(
            applied_name(&next_change(&mut rx).await).as_deref(),
            Some("d")
        );
        task.abort();
    }
}
