//! The Kubernetes source: kube-rs watchers on Services and `discovery.k8s.io/v1`
//! EndpointSlices in all namespaces, with backoff. A watch that restarts (an API outage, an
//! expired resourceVersion) relists; the relist is streamed to the store object by object
//! ([`Change::ListStarted`], [`Change::Listed`], [`Change::ListDone`]), which keeps it apart
//! until it is complete, so the maps are never flushed in between and the last known
//! selection stays in force meanwhile. Streaming it (instead of holding the whole list here
//! first) lets the daemon's store keep only what selection reads of each object as it comes:
//! the list of a large cluster is never held whole.
//!
//! The watchers fetch whole objects: selection reads Services' specs and slices' endpoints, so
//! a metadata-only watch would not do, and the API cannot filter by annotation.
//!
//! [`start`] runs a watcher on Services and one on EndpointSlices, and one on Pods when
//! [`Kinds::pods`] asks for them (the collector's); the daemon never watches Pods.

use std::{fmt::Debug, path::Path, sync::Arc};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Pod, PodSpec, PodStatus, Service},
    discovery::v1::EndpointSlice,
};
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

use super::{Kinds, SourceStats};
use crate::k8s::store::{Change, Kind, Object};

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

/// Starts the watchers `kinds` asks for.
pub fn start(
    client: Client,
    kinds: Kinds,
    tx: mpsc::UnboundedSender<Change>,
    stats: Arc<SourceStats>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(watch(
            Api::<Service>::all(client.clone()),
            tx.clone(),
            Arc::clone(&stats),
            ToChange {
                kind: Kind::Services,
                listed: Object::Service,
                applied: Change::ServiceApplied,
                deleted: Change::ServiceDeleted,
            },
        )),
        tokio::spawn(watch(
            Api::<EndpointSlice>::all(client.clone()),
            tx.clone(),
            Arc::clone(&stats),
            ToChange {
                kind: Kind::Slices,
                listed: Object::Slice,
                applied: Change::SliceApplied,
                deleted: Change::SliceDeleted,
            },
        )),
    ];
    if kinds.pods {
        // Each Pod is slimmed to what naming uses before it is stored, since a node's
        // collector holds every Pod of the cluster.
        tasks.push(tokio::spawn(watch(
            Api::<Pod>::all(client),
            tx,
            stats,
            ToChange {
                kind: Kind::Pods,
                listed: |pod| Object::Pod(slim_pod(pod)),
                applied: |pod| Change::PodApplied(slim_pod(pod)),
                deleted: |pod| Change::PodDeleted(slim_pod(pod)),
            },
        )));
    }
    tasks
}

/// The Pod labels that naming reads (Istio's `*_app` and `*_version` metric labels); every
/// other label is dropped from the store.
pub const POD_LABELS_KEPT: [&str; 4] = [
    "app",
    "app.kubernetes.io/name",
    "version",
    "app.kubernetes.io/version",
];

/// The parts of a Pod that naming reads: namespace, name, owners, host networking, phase and
/// addresses, and the labels in [`POD_LABELS_KEPT`]. Everything else (containers, volumes,
/// conditions, managed fields, other labels) is dropped.
pub fn slim_pod(pod: Pod) -> Pod {
    let Pod {
        metadata,
        spec,
        status,
        ..
    } = pod;
    let mut slim = Pod::default();
    slim.metadata.name = metadata.name;
    slim.metadata.namespace = metadata.namespace;
    slim.metadata.owner_references = metadata.owner_references;
    slim.metadata.labels = metadata
        .labels
        .map(|labels| {
            labels
                .into_iter()
                .filter(|(k, _)| POD_LABELS_KEPT.contains(&k.as_str()))
                .collect::<std::collections::BTreeMap<_, _>>()
        })
        .filter(|kept| !kept.is_empty());
    slim.spec = spec.map(|s| PodSpec {
        host_network: s.host_network,
        node_name: s.node_name,
        ..PodSpec::default()
    });
    slim.status = status.map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        ..PodStatus::default()
    });
    slim
}

/// How watcher events of one kind become [`Change`]s.
struct ToChange<K> {
    kind: Kind,
    listed: fn(K) -> Object,
    applied: fn(K) -> Change,
    deleted: fn(K) -> Change,
}

async fn watch<K>(
    api: Api<K>,
    tx: mpsc::UnboundedSender<Change>,
    stats: Arc<SourceStats>,
    to_change: ToChange<K>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listed = 0usize;
    while let Some(event) = stream.next().await {
        let change = match event {
            Ok(Event::Init) => {
                listed = 0;
                Some(Change::ListStarted(to_change.kind))
            }
            Ok(Event::InitApply(obj)) => {
                listed += 1;
                Some(Change::Listed((to_change.listed)(obj)))
            }
            Ok(Event::InitDone) => {
                debug!(%kind, objects = listed, "listed");
                Some(Change::ListDone(to_change.kind))
            }
            Ok(Event::Apply(obj)) => Some((to_change.applied)(obj)),
            Ok(Event::Delete(obj)) => Some((to_change.deleted)(obj)),
            Err(e) => {
                // The backoff retries; meanwhile the last known selection stays in force.
                warn!(%kind, error = %e, "watch failed; retrying with backoff");
                stats.error();
                None
            }
        };
        if let Some(change) = change {
            // A whole list counts as one event, as a reset does.
            if !matches!(change, Change::ListStarted(_) | Change::Listed(_)) {
                stats.event();
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slim_pods_keep_what_naming_reads() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-5f7c9-x2x7q", "namespace": "shop",
                "labels": {"app": "web", "pod-template-hash": "5f7c9", "team": "shop"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                     "name": "web-5f7c9", "uid": "u1", "controller": true}],
                "managedFields": [{"manager": "kubelet"}]
            },
            "spec": {"hostNetwork": false, "nodeName": "n1",
                     "containers": [{"name": "web", "image": "nginx"}]},
            "status": {"phase": "Running", "podIP": "10.244.1.5",
                       "podIPs": [{"ip": "10.244.1.5"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let slim = slim_pod(pod);
        assert_eq!(slim.metadata.name.as_deref(), Some("web-5f7c9-x2x7q"));
        assert_eq!(slim.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            slim.metadata.owner_references.as_ref().map(Vec::len),
            Some(1)
        );
        assert_eq!(
            slim.metadata.labels,
            Some([("app".to_string(), "web".to_string())].into()),
            "only the labels naming reads"
        );
        assert!(slim.metadata.managed_fields.is_none());
        let spec = slim.spec.unwrap();
        assert_eq!(spec.host_network, Some(false));
        assert!(spec.containers.is_empty());
        let status = slim.status.unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.5"));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(status.conditions.is_none());
    }
}
