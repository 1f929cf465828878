//! The Services and EndpointSlices the daemon currently knows, fed by a source. A kind counts
//! as synced once a complete list of it has arrived; nothing is reconciled before both are, so
//! a starting daemon never flushes what an earlier run pinned.
//!
//! Pods are known only to the collector (`redirector collect`), which names the sources and
//! destinations of requests after them; the daemon's sources never send Pod changes, so for
//! the daemon the Pod part stays empty and [`ObjectStore::synced`] ignores it.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};

/// A change reported by a source; the file and Kubernetes sources produce the same stream.
#[derive(Clone, Debug)]
pub enum Change {
    /// The complete current set of Services (initial list, relist, file reload).
    ServicesReset(Vec<Service>),
    /// The complete current set of EndpointSlices.
    SlicesReset(Vec<EndpointSlice>),
    /// A Service was added or modified.
    ServiceApplied(Service),
    /// A Service was deleted.
    ServiceDeleted(Service),
    /// An EndpointSlice was added or modified.
    SliceApplied(EndpointSlice),
    /// An EndpointSlice was deleted.
    SliceDeleted(EndpointSlice),
    /// The complete current set of Pods (collector only).
    PodsReset(Vec<Pod>),
    /// A Pod was added or modified (collector only).
    PodApplied(Pod),
    /// A Pod was deleted (collector only).
    PodDeleted(Pod),
}

type Key = (String, String);

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The known objects.
#[derive(Debug, Default)]
pub struct ObjectStore {
    services: BTreeMap<Key, Service>,
    slices: BTreeMap<Key, EndpointSlice>,
    pods: BTreeMap<Key, Pod>,
    services_synced: bool,
    slices_synced: bool,
    pods_synced: bool,
}

impl ObjectStore {
    /// Applies a change.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::ServicesReset(all) => {
                self.services = all.into_iter().map(|s| (key(&s.metadata), s)).collect();
                self.services_synced = true;
            }
            Change::SlicesReset(all) => {
                self.slices = all.into_iter().map(|s| (key(&s.metadata), s)).collect();
                self.slices_synced = true;
            }
            Change::ServiceApplied(s) => {
                self.services.insert(key(&s.metadata), s);
            }
            Change::ServiceDeleted(s) => {
                self.services.remove(&key(&s.metadata));
            }
            Change::SliceApplied(s) => {
                self.slices.insert(key(&s.metadata), s);
            }
            Change::SliceDeleted(s) => {
                self.slices.remove(&key(&s.metadata));
            }
            Change::PodsReset(all) => {
                self.pods = all.into_iter().map(|p| (key(&p.metadata), p)).collect();
                self.pods_synced = true;
            }
            Change::PodApplied(p) => {
                self.pods.insert(key(&p.metadata), p);
            }
            Change::PodDeleted(p) => {
                self.pods.remove(&key(&p.metadata));
            }
        }
    }

    /// Whether a complete list of both kinds has arrived (Services and EndpointSlices: Pods
    /// are not the daemon's concern, see [`ObjectStore::pods_synced`]).
    pub fn synced(&self) -> bool {
        self.services_synced && self.slices_synced
    }

    /// Whether a complete list of Pods has arrived (only the collector's sources send them).
    pub fn pods_synced(&self) -> bool {
        self.pods_synced
    }

    /// The Services.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// The EndpointSlices.
    pub fn slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.slices.values()
    }

    /// The Pods (empty unless the source was started with Pods).
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// A Pod by namespace and name.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&(namespace.to_string(), name.to_string()))
    }

    /// A Service by namespace and name.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str) -> Service {
        let mut s = Service::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s
    }

    #[test]
    fn synced_only_after_both_lists() {
        let mut store = ObjectStore::default();
        store.apply(Change::ServiceApplied(svc("a", "x")));
        assert!(!store.synced());
        store.apply(Change::ServicesReset(vec![svc("a", "y")]));
        assert!(!store.synced());
        store.apply(Change::SlicesReset(vec![]));
        assert!(store.synced());
        assert!(
            store.service("a", "x").is_none(),
            "a reset replaces what was there"
        );
        assert!(store.service("a", "y").is_some());
    }

    #[test]
    fn pods_are_kept_apart_and_do_not_affect_sync() {
        let mut store = ObjectStore::default();
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("a".into());
        pod.metadata.name = Some("p".into());
        store.apply(Change::PodApplied(pod.clone()));
        store.apply(Change::ServicesReset(vec![]));
        store.apply(Change::SlicesReset(vec![]));
        assert!(store.synced(), "Pods never hold the daemon back");
        assert!(!store.pods_synced());
        assert!(store.pod("a", "p").is_some());
        store.apply(Change::PodsReset(vec![]));
        assert!(store.pods_synced());
        assert_eq!(store.pods().count(), 0, "a reset replaces what was there");
        store.apply(Change::PodApplied(pod.clone()));
        store.apply(Change::PodDeleted(pod));
        assert_eq!(store.pods().count(), 0);
    }

    #[test]
    fn apply_and_delete() {
        let mut store = ObjectStore::default();
        store.apply(Change::ServiceApplied(svc("a", "x")));
        store.apply(Change::ServiceApplied(svc("a", "x")));
        assert_eq!(store.services().count(), 1);
        store.apply(Change::ServiceDeleted(svc("a", "x")));
        assert_eq!(store.services().count(), 0);
    }
}
