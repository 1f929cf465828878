//! The Kubernetes source: kube-rs watchers on Services and `discovery.k8s.io/v1`
//! EndpointSlices in all namespaces, with backoff. A watch that restarts (an API outage, an
//! expired resourceVersion) relists; the relist is buffered and sent as one reset, so the maps
//! are never flushed in between and the last known selection stays in force meanwhile.

use std::{fmt::Debug, path::Path, sync::Arc};

use futures::StreamExt as _;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, Config, Resource, ResourceExt as _,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        events::{Event as K8sEvent, EventType, Recorder, Reporter},
        watcher::{self, Event},
    },
};
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, warn};

use crate::{metrics::Metrics, store::Change};

/// The controller name on Events we publish.
const CONTROLLER: &str = "l7-redirector";

/// Builds a client: `--kubeconfig` if given, else in-cluster config or `$KUBECONFIG`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, kube::Error> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(kube::Error::InferKubeconfig)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(kube::Error::InferKubeconfig)?
        }
        None => Config::infer().await.map_err(kube::Error::InferConfig)?,
    };
    Client::try_from(config)
}

/// Starts both watchers.
pub fn start(
    client: Client,
    tx: mpsc::UnboundedSender<Change>,
    metrics: Arc<Metrics>,
) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(watch(
            Api::<Service>::all(client.clone()),
            tx.clone(),
            Arc::clone(&metrics),
            Kinds {
                reset: Change::ServicesReset,
                applied: Change::ServiceApplied,
                deleted: Change::ServiceDeleted,
            },
        )),
        tokio::spawn(watch(
            Api::<EndpointSlice>::all(client),
            tx,
            metrics,
            Kinds {
                reset: Change::SlicesReset,
                applied: Change::SliceApplied,
                deleted: Change::SliceDeleted,
            },
        )),
    ]
}

/// How watcher events of one kind become [`Change`]s.
struct Kinds<K> {
    reset: fn(Vec<K>) -> Change,
    applied: fn(K) -> Change,
    deleted: fn(K) -> Change,
}

async fn watch<K>(
    api: Api<K>,
    tx: mpsc::UnboundedSender<Change>,
    metrics: Arc<Metrics>,
    kinds: Kinds<K>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing: Vec<K> = Vec::new();
    while let Some(event) = stream.next().await {
        let change = match event {
            Ok(Event::Init) => {
                listing.clear();
                None
            }
            Ok(Event::InitApply(obj)) => {
                listing.push(obj);
                None
            }
            Ok(Event::InitDone) => {
                debug!(%kind, objects = listing.len(), "listed");
                Some((kinds.reset)(std::mem::take(&mut listing)))
            }
            Ok(Event::Apply(obj)) => Some((kinds.applied)(obj)),
            Ok(Event::Delete(obj)) => Some((kinds.deleted)(obj)),
            Err(e) => {
                // The backoff retries; meanwhile the last known selection stays in force.
                warn!(%kind, error = %e, "watch failed; retrying with backoff");
                metrics.source_error();
                None
            }
        };
        if let Some(change) = change {
            metrics.source_event();
            if tx.send(change).is_err() {
                return;
            }
        }
    }
}

/// Publishes Warning Events on Services (a bad annotation value).
pub struct EventPublisher {
    recorder: Recorder,
}

impl EventPublisher {
    /// A publisher reporting as this node's redirector.
    pub fn new(client: Client) -> Self {
        let instance = std::env::var("NODE_NAME")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok());
        Self {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: CONTROLLER.into(),
                    instance,
                },
            ),
        }
    }

    /// A Warning on `service` with `note`; failures are logged, never fatal.
    pub async fn warn(&self, service: &Service, reason: &str, note: String) {
        let event = K8sEvent {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: "Select".into(),
            secondary: None,
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &service.object_ref(&()))
            .await
        {
            warn!(service = %service.name_any(), error = %e, "cannot publish an Event");
        }
    }
}
