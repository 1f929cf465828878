//! Where Services, EndpointSlices (and, for the collector, Pods) come from: a Kubernetes API
//! server ([`kube`]) or a file of manifests ([`file`], parsed by [`manifests`]). Every source
//! sends the same [`Change`]s down a channel and counts what it did in [`SourceStats`], so the
//! daemon and the collector start them the same way, with [`start`].

pub mod file;
pub mod kube;
pub mod manifests;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use tokio::{sync::mpsc, task::JoinHandle};

use crate::k8s::store::Change;

/// Where objects come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A file of manifests, followed.
    File(PathBuf),
    /// The Kubernetes API: this kubeconfig, or in-cluster / `$KUBECONFIG` when `None`.
    Kube(Option<PathBuf>),
}

/// Which kinds a source delivers. Services and EndpointSlices always; Pods only when asked:
/// the collector names the two ends of a request after them, while the daemon has no use for
/// them (and its RBAC need not let it read them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kinds {
    /// Deliver Pods too.
    pub pods: bool,
}

impl Kinds {
    /// What the daemon reads: Services and EndpointSlices.
    pub const DAEMON: Kinds = Kinds { pods: false };
    /// What the collector reads: Services, EndpointSlices and Pods.
    pub const COLLECTOR: Kinds = Kinds { pods: true };
}

/// What the sources did, for metrics and logs.
#[derive(Debug, Default)]
pub struct SourceStats {
    events: AtomicU64,
    errors: AtomicU64,
}

impl SourceStats {
    /// A source delivered a change.
    pub fn event(&self) {
        self.events.fetch_add(1, Relaxed);
    }

    /// A source failed (watch error, unreadable or broken file).
    pub fn error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    /// Changes delivered so far.
    pub fn events(&self) -> u64 {
        self.events.load(Relaxed)
    }

    /// Failures so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The services file cannot be used.
    #[error(transparent)]
    File(#[from] file::FileError),
    /// No Kubernetes client could be configured.
    #[error(
        "cannot configure the Kubernetes client (use --kubeconfig, $KUBECONFIG, or run in a \
         cluster; or --services-file to run without one): {0}"
    )]
    Kube(#[source] ::kube::Error),
}

/// Running sources.
pub struct Started {
    /// Their tasks; dropping them does not stop them (they stop when the receiver goes away).
    pub tasks: Vec<JoinHandle<()>>,
    /// The API client, in kube mode (to publish Events with).
    pub client: Option<::kube::Client>,
}

/// Starts `source` for `kinds`. A file that cannot be read or parsed is an error here, before
/// anything else happens: there is no last good state yet to keep.
pub async fn start(
    source: &Source,
    kinds: Kinds,
    tx: mpsc::UnboundedSender<Change>,
    stats: Arc<SourceStats>,
) -> Result<Started, SourceError> {
    Ok(match source {
        Source::File(path) => Started {
            tasks: vec![file::start(path.clone(), kinds, tx, stats)?],
            client: None,
        },
        Source::Kube(kubeconfig) => {
            let client = kube::client(kubeconfig.as_deref())
                .await
                .map_err(SourceError::Kube)?;
            Started {
                tasks: kube::start(client.clone(), kinds, tx, stats),
                client: Some(client),
            }
        }
    })
}
