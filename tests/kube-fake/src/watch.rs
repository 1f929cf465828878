//! Watches: a chunked response of newline-delimited JSON watch events, fed from the store's
//! history, so a watch from an older resourceVersion replays what it missed and one from
//! before the history kept gets an `ERROR` event with 410 Expired (clients then list again).

use std::{sync::Arc, time::Duration};

use axum::body::{Body, Bytes};
use serde_json::{Value, json};
use tokio::{sync::mpsc, time::Instant};

use super::{
    Shared,
    error::ApiError,
    resource::Resource,
    selector::Selector,
    store::{Change, ChangeType, namespace_of},
    table::{self, Include},
};

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// With an `ADDED` event for every current object, as for `resourceVersion` "" or "0" or
    /// `sendInitialEvents=true`; `end_bookmark` adds the BOOKMARK annotated
    /// `k8s.io/initial-events-end` that streaming-list clients wait for.
    Initial {
        /// Whether to mark the end of the initial events.
        end_bookmark: bool,
    },
    /// With the changes after this resourceVersion.
    After(u64),
}

/// What a watch request asked for.
#[derive(Clone, Debug)]
pub struct WatchRequest {
    /// The watched resource.
    pub resource: Resource,
    /// One namespace, or all.
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: Selector,
    /// `fieldSelector`.
    pub fields: Selector,
    /// Where to start.
    pub start: Start,
    /// `timeoutSeconds`: the stream ends after it.
    pub timeout: Option<Duration>,
    /// `allowWatchBookmarks`: BOOKMARK events every bookmark interval.
    pub bookmarks: bool,
    /// Objects as one-row Tables (`kubectl get --watch`), with what of the object.
    pub table: Option<Include>,
}

impl WatchRequest {
    fn wants(&self, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| ns == namespace_of(object))
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// The event a change is to this watch, if any: an object that starts or stops matching
    /// the selectors is ADDED or DELETED, as the real server sends it.
    fn event_for(&self, change: &Change) -> Option<Value> {
        if change.resource != self.resource {
            return None;
        }
        let now = self.wants(&change.object);
        let before = change.previous.as_ref().is_some_and(|p| self.wants(p));
        let kind = match (change.change, before, now) {
            (ChangeType::Added, _, true) => ChangeType::Added,
            (ChangeType::Deleted, _, true) => ChangeType::Deleted,
            (ChangeType::Modified, true, true) => ChangeType::Modified,
            (ChangeType::Modified, false, true) => ChangeType::Added,
            (ChangeType::Modified, true, false) => ChangeType::Deleted,
            _ => return None,
        };
        Some(self.event(kind.as_str(), &change.object, change.resource_version))
    }

    /// A watch event with `object`, or its Table row if the client asked for Tables.
    fn event(&self, kind: &str, object: &Value, resource_version: u64) -> Value {
        match self.table {
            Some(include) => {
                let table = table::table(self.resource, &[object], resource_version, include);
                event(kind, &table)
            }
            None => event(kind, object),
        }
    }

    fn bookmark(&self, resource_version: u64, initial_events_end: bool) -> Value {
        let mut metadata = json!({"resourceVersion": resource_version.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({
            "apiVersion": self.resource.api_version(),
            "kind": self.resource.kind(),
            "metadata": metadata,
        });
        event("BOOKMARK", &object)
    }
}

fn event(kind: &str, object: &Value) -> Value {
    json!({"type": kind, "object": object})
}

/// The response body of a watch. A task produces the events; it ends when the watch times
/// out, when the client goes away (the body is dropped), or when the server stops.
pub fn body(shared: Arc<Shared>, request: WatchRequest) -> Body {
    // A small buffer: a client that stops reading holds the producer back instead of
    // growing memory.
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(produce(shared, request, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    Body::from_stream(stream)
}

/// Sends one event as a line; false once the client is gone.
async fn send(tx: &mpsc::Sender<Bytes>, event: &Value) -> bool {
    tx.send(Bytes::from(format!("{event}\n"))).await.is_ok()
}

async fn produce(shared: Arc<Shared>, request: WatchRequest, tx: mpsc::Sender<Bytes>) {
    // Subscribe before the first read of the store, so no write falls between the two.
    let mut changed = shared.changed.subscribe();
    let deadline = request.timeout.map(|t| Instant::now() + t);
    let mut seen = match request.start {
        Start::After(resource_version) => resource_version,
        Start::Initial { end_bookmark } => {
            let (objects, resource_version) = shared.read(|store| {
                let objects: Vec<Value> = store
                    .list(request.resource, request.namespace.as_deref())
                    .into_iter()
                    .filter(|o| request.wants(o))
                    .cloned()
                    .collect();
                (objects, store.resource_version())
            });
            for object in &objects {
                if !send(&tx, &request.event("ADDED", object, resource_version)).await {
                    return;
                }
            }
            if end_bookmark && !send(&tx, &request.bookmark(resource_version, true)).await {
                return;
            }
            resource_version
        }
    };
    let mut bookmarks = tokio::time::interval_at(
        Instant::now() + shared.bookmark_interval,
        shared.bookmark_interval,
    );
    loop {
        changed.borrow_and_update();
        let batch: Result<_, ApiError> = shared.read(|store| {
            let events: Vec<Value> = store
                .changes_since(seen)?
                .filter_map(|change| request.event_for(change))
                .collect();
            Ok((events, store.resource_version()))
        });
        match batch {
            Ok((events, resource_version)) => {
                for event in &events {
                    if !send(&tx, event).await {
                        return;
                    }
                }
                // A watch from a resourceVersion ahead of the store waits for it.
                seen = seen.max(resource_version);
            }
            Err(expired) => {
                send(&tx, &event("ERROR", &expired.status())).await;
                return;
            }
        }
        tokio::select! {
            closed = changed.changed() => {
                if closed.is_err() {
                    return;
                }
            }
            _ = bookmarks.tick(), if request.bookmarks => {
                if !send(&tx, &request.bookmark(seen, false)).await {
                    return;
                }
            }
            () = sleep_until(deadline) => return,
            () = tx.closed() => return,
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
