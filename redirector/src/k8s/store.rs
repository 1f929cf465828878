//! The Services and EndpointSlices the daemon currently knows, fed by a source. A kind counts
//! as synced once a complete list of it has arrived; nothing is reconciled before both are, so
//! a starting daemon never flushes what an earlier run pinned.
//!
//! A complete list comes either at once (a `*Reset`: the file source) or streamed (the
//! Kubernetes source: [`Change::ListStarted`], one [`Change::Listed`] per object,
//! [`Change::ListDone`]), so that the store can keep only what it needs of each object as it
//! arrives instead of the whole list being held first. Until a streamed list is done, the
//! previous one stays in force.
//!
//! The daemon's store ([`ObjectStore::selecting`]) keeps only what selection reads: the
//! Services the annotation does not leave unselected, stripped to their addresses, ports and
//! that annotation; their EndpointSlices stripped to addresses, readiness and ports; and of
//! every other slice a compact copy ([`ParkedSlice`]: its addresses and their readiness), so
//! that annotating its Service selects its endpoints at once. Everything else (managed fields,
//! labels, other annotations, Pod references, nodes, zones, unselected Services) is dropped.
//! The default store (the collector's, `observe`'s) keeps every object whole.
//!
//! Pods are known only to the collector (`redirector collect`), which names the sources and
//! destinations of requests after them; the daemon's sources never send Pod changes, so for
//! the daemon the Pod part stays empty and [`ObjectStore::synced`] ignores it.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::{
        core::v1::{
            LoadBalancerIngress, LoadBalancerStatus, Pod, Service, ServicePort, ServiceSpec,
            ServiceStatus,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::{
    k8s::service::{self, SERVICE_NAME_LABEL, ServiceRef, Verdict},
    selection::{Objects, Touched},
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
    /// A complete list of a kind begins; its objects follow as [`Change::Listed`]. A list
    /// begun again (the source restarted it) starts over.
    ListStarted(Kind),
    /// One object of the list under way.
    Listed(Object),
    /// The list of a kind is complete: it replaces what was known, as a reset would.
    ListDone(Kind),
}

/// A kind of object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Services.
    Services,
    /// EndpointSlices.
    Slices,
    /// Pods (collector only).
    Pods,
}

/// One object of any kind.
// Moved once, from the watcher to the store, like the objects in `Change`: a box each would
// only add an allocation per object.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Object {
    /// A Service.
    Service(Service),
    /// An EndpointSlice.
    Slice(EndpointSlice),
    /// A Pod.
    Pod(Pod),
}

type Key = (String, String);

fn key(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// What selection reads of an EndpointSlice whose Service is not selected: enough to give
/// back an equivalent slice ([`ParkedSlice::unpark`]) when the Service becomes selected.
/// Addresses that do not parse are dropped: selection ignores them.
#[derive(Clone, Debug, PartialEq)]
pub struct ParkedSlice {
    /// The name of the Service it belongs to (in its namespace).
    service: String,
    address_type: String,
    ports: Option<Vec<EndpointPort>>,
    /// Every address, with the `ready` condition of its endpoint.
    addresses: Vec<(IpAddr, Option<bool>)>,
}

impl ParkedSlice {
    /// Parks a slice of Service `service`.
    fn park(slice: EndpointSlice, service: String) -> Self {
        let addresses = slice
            .endpoints
            .iter()
            .flat_map(|e| {
                let ready = e.conditions.as_ref().and_then(|c| c.ready);
                e.addresses
                    .iter()
                    .filter_map(move |a| a.parse::<IpAddr>().ok().map(|ip| (ip, ready)))
            })
            .collect();
        Self {
            service,
            address_type: slice.address_type,
            ports: slim_slice_ports(slice.ports),
            addresses,
        }
    }

    /// The slice selection sees, back (one address per endpoint).
    fn unpark(self, (namespace, name): &Key) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(namespace.clone()),
                name: Some(name.clone()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), self.service)].into()),
                ..ObjectMeta::default()
            },
            address_type: self.address_type,
            ports: self.ports,
            endpoints: self
                .addresses
                .into_iter()
                .map(|(ip, ready)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: ready.map(|r| EndpointConditions {
                        ready: Some(r),
                        ..EndpointConditions::default()
                    }),
                    ..Endpoint::default()
                })
                .collect(),
        }
    }
}

fn slim_slice_ports(ports: Option<Vec<EndpointPort>>) -> Option<Vec<EndpointPort>> {
    ports.map(|ports| {
        ports
            .into_iter()
            .map(|p| EndpointPort {
                name: p.name,
                port: p.port,
                protocol: p.protocol,
                app_protocol: None,
            })
            .collect()
    })
}

/// What selection reads of a slice of a selected Service: its owner label, address type,
/// ports, and each endpoint's addresses and readiness.
pub fn slim_slice(slice: EndpointSlice) -> EndpointSlice {
    let owner = slice
        .metadata
        .labels
        .and_then(|mut l| l.remove(SERVICE_NAME_LABEL));
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: slice.metadata.namespace,
            name: slice.metadata.name,
            labels: owner.map(|o| [(SERVICE_NAME_LABEL.to_string(), o)].into()),
            ..ObjectMeta::default()
        },
        address_type: slice.address_type,
        ports: slim_slice_ports(slice.ports),
        endpoints: slice
            .endpoints
            .into_iter()
            .map(|e| Endpoint {
                addresses: e.addresses,
                conditions: e.conditions.map(|c| EndpointConditions {
                    ready: c.ready,
                    ..EndpointConditions::default()
                }),
                ..Endpoint::default()
            })
            .collect(),
    }
}

/// What selection reads of a Service (and what an Event about it names): namespace, name, uid
/// and resourceVersion, the `annotation`, type, ClusterIPs, external IPs, ports, and load
/// balancer ingress IPs.
pub fn slim_service(svc: Service, annotation: &str) -> Service {
    let Service {
        metadata,
        spec,
        status,
    } = svc;
    Service {
        metadata: ObjectMeta {
            namespace: metadata.namespace,
            name: metadata.name,
            uid: metadata.uid,
            resource_version: metadata.resource_version,
            annotations: metadata
                .annotations
                .and_then(|mut a| a.remove(annotation))
                .map(|v| [(annotation.to_string(), v)].into()),
            ..ObjectMeta::default()
        },
        spec: spec.map(|s| ServiceSpec {
            type_: s.type_,
            cluster_ip: s.cluster_ip,
            cluster_ips: s.cluster_ips,
            external_ips: s.external_ips,
            ports: s.ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|p| ServicePort {
                        name: p.name,
                        port: p.port,
                        protocol: p.protocol,
                        ..ServicePort::default()
                    })
                    .collect()
            }),
            ..ServiceSpec::default()
        }),
        status: status.map(|s| ServiceStatus {
            load_balancer: s.load_balancer.map(|lb| LoadBalancerStatus {
                ingress: lb.ingress.map(|ingress| {
                    ingress
                        .into_iter()
                        .map(|i| LoadBalancerIngress {
                            ip: i.ip,
                            ..LoadBalancerIngress::default()
                        })
                        .collect()
                }),
            }),
            ..ServiceStatus::default()
        }),
    }
}

/// The objects of the kinds that selection reads.
#[derive(Debug, Default)]
struct Held {
    services: BTreeMap<Key, Service>,
    slices: BTreeMap<Key, EndpointSlice>,
    /// Selecting store only: the slices of Services not held.
    parked: BTreeMap<Key, ParkedSlice>,
}

impl Held {
    fn file(&mut self, filed: Option<(Key, Filed)>) {
        match filed {
            Some((key, Filed::Whole(slice))) => {
                self.slices.insert(key, slice);
            }
            Some((key, Filed::Parked(parked))) => {
                self.parked.insert(key, parked);
            }
            None => {}
        }
    }
}

/// How a slice is kept (only on its way into a map, so its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Filed {
    Whole(EndpointSlice),
    Parked(ParkedSlice),
}

/// The known objects.
#[derive(Debug, Default)]
pub struct ObjectStore {
    held: Held,
    pods: BTreeMap<Key, Pod>,
    /// The selecting annotation, for the daemon's store; `None` keeps every object whole.
    selecting: Option<String>,
    /// Streamed lists under way.
    listing_services: Option<BTreeMap<Key, Service>>,
    listing_slices: Option<Held>,
    listing_pods: Option<BTreeMap<Key, Pod>>,
    services_synced: bool,
    slices_synced: bool,
    pods_synced: bool,
}

impl ObjectStore {
    /// The daemon's store: only what selection by `annotation` reads (see the module
    /// documentation).
    pub fn selecting(annotation: &str) -> Self {
        Self {
            selecting: Some(annotation.to_string()),
            ..Self::default()
        }
    }

    /// Applies a change.
    pub fn apply(&mut self, change: Change) {
        self.update(change);
    }

    /// Applies a change and tells whether what [`services`](Self::services) and
    /// [`slices`](Self::slices) give may have changed: a selecting store says no to what
    /// selection cannot see (an unselected Service, a parked slice, an object of a list under
    /// way), so the daemon recomputes nothing for it.
    pub fn update(&mut self, change: Change) -> bool {
        let selecting = self.selecting.is_some();
        match change {
            Change::ServicesReset(all) => {
                self.listing_services = None;
                let services = all
                    .into_iter()
                    .filter_map(|s| self.keep_service(s))
                    .collect();
                self.services_listed(services);
                true
            }
            Change::SlicesReset(all) => {
                self.listing_slices = None;
                let mut slices = Held::default();
                for s in all {
                    slices.file(self.filed(s));
                }
                self.slices_listed(slices);
                true
            }
            Change::ServiceApplied(s) => {
                let key = key(&s.metadata);
                match self.keep_service(s) {
                    Some((_, s)) => match self.held.services.insert(key.clone(), s.clone()) {
                        None => {
                            self.unpark(&key);
                            true
                        }
                        Some(old) => !selecting || old != s,
                    },
                    None => {
                        let held = self.held.services.remove(&key).is_some();
                        if held {
                            self.park(&key);
                        }
                        held
                    }
                }
            }
            Change::ServiceDeleted(s) => {
                let key = key(&s.metadata);
                let held = self.held.services.remove(&key).is_some();
                if held {
                    self.park(&key);
                }
                held || !selecting
            }
            Change::SliceApplied(s) => {
                let key = key(&s.metadata);
                let old = self.held.slices.remove(&key);
                self.held.parked.remove(&key);
                let filed = self.filed(s);
                let visible = match (&filed, &old) {
                    (Some((_, Filed::Whole(new))), Some(old)) => old != new,
                    (Some((_, Filed::Whole(_))), None) => true,
                    _ => old.is_some(),
                };
                self.held.file(filed);
                visible || !selecting
            }
            Change::SliceDeleted(s) => {
                let key = key(&s.metadata);
                self.held.parked.remove(&key);
                self.held.slices.remove(&key).is_some() || !selecting
            }
            Change::PodsReset(all) => {
                self.listing_pods = None;
                self.pods = all.into_iter().map(|p| (key(&p.metadata), p)).collect();
                self.pods_synced = true;
                true
            }
            Change::PodApplied(p) => {
                self.pods.insert(key(&p.metadata), p);
                true
            }
            Change::PodDeleted(p) => {
                self.pods.remove(&key(&p.metadata));
                true
            }
            Change::ListStarted(kind) => {
                match kind {
                    Kind::Services => self.listing_services = Some(BTreeMap::new()),
                    Kind::Slices => self.listing_slices = Some(Held::default()),
                    Kind::Pods => self.listing_pods = Some(BTreeMap::new()),
                }
                !selecting
            }
            Change::Listed(object) => self.listed(object) || !selecting,
            Change::ListDone(kind) => {
                match kind {
                    Kind::Services => {
                        let services = self.listing_services.take().unwrap_or_default();
                        self.services_listed(services);
                    }
                    Kind::Slices => {
                        let slices = self.listing_slices.take().unwrap_or_default();
                        self.slices_listed(slices);
                    }
                    Kind::Pods => {
                        self.pods = self.listing_pods.take().unwrap_or_default();
                        self.pods_synced = true;
                    }
                }
                true
            }
        }
    }

    /// One object of a streamed list; without a list under way (the start was missed), it
    /// is taken as applied.
    fn listed(&mut self, object: Object) -> bool {
        match object {
            Object::Service(s) => {
                if self.listing_services.is_none() {
                    return self.update(Change::ServiceApplied(s));
                }
                let kept = self.keep_service(s);
                if let (Some(listing), Some((k, s))) = (&mut self.listing_services, kept) {
                    listing.insert(k, s);
                }
            }
            Object::Slice(s) => {
                if self.listing_slices.is_none() {
                    return self.update(Change::SliceApplied(s));
                }
                let filed = self.filed(s);
                if let Some(listing) = &mut self.listing_slices {
                    listing.file(filed);
                }
            }
            Object::Pod(p) => match &mut self.listing_pods {
                Some(listing) => {
                    listing.insert(key(&p.metadata), p);
                }
                None => return self.update(Change::PodApplied(p)),
            },
        }
        false
    }

    /// The Service as kept, with its key; `None` when it is not kept at all (a selecting
    /// store keeps no unselected Service).
    fn keep_service(&self, svc: Service) -> Option<(Key, Service)> {
        let key = key(&svc.metadata);
        match &self.selecting {
            None => Some((key, svc)),
            Some(annotation) => match service::verdict(&svc, annotation) {
                Verdict::NotSelected => None,
                Verdict::Selected | Verdict::Invalid(_) => {
                    Some((key, slim_service(svc, annotation)))
                }
            },
        }
    }

    /// How a slice is kept: whole (default store), or slimmed when its Service is held and
    /// parked otherwise (selecting store). A slice of no Service is of no use to selection,
    /// so a selecting store keeps nothing of it.
    fn filed(&self, slice: EndpointSlice) -> Option<(Key, Filed)> {
        let key = key(&slice.metadata);
        if self.selecting.is_none() {
            return Some((key, Filed::Whole(slice)));
        }
        let owner = service::ServiceRef::owner_of(&slice)?;
        let filed = if self
            .held
            .services
            .contains_key(&(owner.namespace, owner.name.clone()))
        {
            Filed::Whole(slim_slice(slice))
        } else {
            Filed::Parked(ParkedSlice::park(slice, owner.name))
        };
        Some((key, filed))
    }

    fn services_listed(&mut self, services: BTreeMap<Key, Service>) {
        self.held.services = services;
        self.services_synced = true;
        self.repartition();
    }

    fn slices_listed(&mut self, slices: Held) {
        self.held.slices = slices.slices;
        self.held.parked = slices.parked;
        self.slices_synced = true;
        self.repartition();
    }

    /// After a list: parks the slices of Services no longer held, unparks those of Services
    /// now held.
    fn repartition(&mut self) {
        if self.selecting.is_none() {
            return;
        }
        let held = &mut self.held;
        let orphaned: Vec<Key> = held
            .slices
            .iter()
            .filter(|(_, s)| {
                service::ServiceRef::owner_of(s)
                    .is_none_or(|o| !held.services.contains_key(&(o.namespace, o.name)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in orphaned {
            if let Some(slice) = held.slices.remove(&k)
                && let Some(owner) = service::ServiceRef::owner_of(&slice)
            {
                held.parked.insert(k, ParkedSlice::park(slice, owner.name));
            }
        }
        let adopted: Vec<Key> = held
            .parked
            .iter()
            .filter(|((ns, _), p)| held.services.contains_key(&(ns.clone(), p.service.clone())))
            .map(|(k, _)| k.clone())
            .collect();
        for k in adopted {
            if let Some(parked) = held.parked.remove(&k) {
                let slice = parked.unpark(&k);
                held.slices.insert(k, slice);
            }
        }
    }

    /// The slices of Service `service` (now held) come out of the parking.
    fn unpark(&mut self, (namespace, name): &Key) {
        if self.selecting.is_none() {
            return;
        }
        let held = &mut self.held;
        let keys: Vec<Key> = held
            .parked
            .range((namespace.clone(), String::new())..)
            .take_while(|((ns, _), _)| ns == namespace)
            .filter(|(_, p)| p.service == *name)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(parked) = held.parked.remove(&k) {
                let slice = parked.unpark(&k);
                held.slices.insert(k, slice);
            }
        }
    }

    /// The slices of Service `service` (no longer held) are parked.
    fn park(&mut self, (namespace, name): &Key) {
        if self.selecting.is_none() {
            return;
        }
        let held = &mut self.held;
        let keys: Vec<Key> = held
            .slices
            .range((namespace.clone(), String::new())..)
            .take_while(|((ns, _), _)| ns == namespace)
            .filter(|(_, s)| service::ServiceRef::owner_of(s).is_some_and(|o| o.name == *name))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(slice) = held.slices.remove(&k) {
                held.parked
                    .insert(k, ParkedSlice::park(slice, name.clone()));
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

    /// The Services (a selecting store's: the selected ones and those with a bad annotation
    /// value).
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.held.services.values()
    }

    /// The EndpointSlices (a selecting store's: those of the Services it holds).
    pub fn slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.held.slices.values()
    }

    /// How many slices a selecting store keeps parked (see [`ParkedSlice`]).
    pub fn parked_slices(&self) -> usize {
        self.held.parked.len()
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
        self.held
            .services
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Which Services `change` may touch, as selection sees them; to be asked before
    /// [`update`](Self::update) applies it, since a slice that moves to another Service
    /// touches the one it leaves too. Lists and resets touch everything.
    pub fn touched(&self, change: &Change) -> Touched {
        let services = |refs: Vec<ServiceRef>| Touched::Services(refs.into_iter().collect());
        match change {
            Change::ServicesReset(_) | Change::SlicesReset(_) => Touched::All,
            Change::ListDone(Kind::Services | Kind::Slices) => Touched::All,
            Change::ListDone(Kind::Pods) | Change::ListStarted(_) => Touched::Nothing,
            Change::PodsReset(_) | Change::PodApplied(_) | Change::PodDeleted(_) => {
                Touched::Nothing
            }
            Change::Listed(Object::Pod(_)) => Touched::Nothing,
            Change::ServiceApplied(s) | Change::ServiceDeleted(s) => {
                services(vec![ServiceRef::of(s)])
            }
            Change::Listed(Object::Service(s)) => match self.listing_services {
                Some(_) => Touched::Nothing,
                None => services(vec![ServiceRef::of(s)]),
            },
            Change::SliceApplied(s) | Change::SliceDeleted(s) => self.slice_touches(s),
            Change::Listed(Object::Slice(s)) => match self.listing_slices {
                Some(_) => Touched::Nothing,
                None => self.slice_touches(s),
            },
        }
    }

    /// The Services a slice belongs to, and belonged to as it is held now.
    fn slice_touches(&self, slice: &EndpointSlice) -> Touched {
        let key = key(&slice.metadata);
        let mut refs: std::collections::BTreeSet<ServiceRef> =
            ServiceRef::owner_of(slice).into_iter().collect();
        refs.extend(self.held.slices.get(&key).and_then(ServiceRef::owner_of));
        if let Some(parked) = self.held.parked.get(&key) {
            refs.insert(ServiceRef {
                namespace: key.0.clone(),
                name: parked.service.clone(),
            });
        }
        Touched::Services(refs)
    }
}

impl Objects for ObjectStore {
    fn all_services(&self) -> impl Iterator<Item = &Service> {
        self.services()
    }

    fn all_slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.slices()
    }

    fn service_of(&self, service: &ServiceRef) -> Option<&Service> {
        self.service(&service.namespace, &service.name)
    }

    fn slices_of(&self, service: &ServiceRef) -> impl Iterator<Item = &EndpointSlice> {
        // Slices are keyed by namespace first: only that namespace's are looked at.
        self.held
            .slices
            .range((service.namespace.clone(), String::new())..)
            .take_while(move |((ns, _), _)| *ns == service.namespace)
            .map(|(_, slice)| slice)
            .filter(move |slice| {
                slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .is_some_and(|owner| *owner == service.name)
            })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        k8s::service::DEFAULT_ANNOTATION,
        selection::{self, Rules},
    };

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

    #[test]
    fn a_streamed_list_replaces_what_was_known_only_once_done() {
        let mut store = ObjectStore::default();
        store.apply(Change::ServicesReset(vec![svc("a", "old")]));
        store.apply(Change::ListStarted(Kind::Services));
        store.apply(Change::Listed(Object::Service(svc("a", "new"))));
        assert!(
            store.service("a", "old").is_some(),
            "the last list stays in force"
        );
        assert!(store.service("a", "new").is_none());
        // Begun again (a restarted watch): what was listed so far is dropped.
        store.apply(Change::ListStarted(Kind::Services));
        store.apply(Change::Listed(Object::Service(svc("a", "newer"))));
        store.apply(Change::ListDone(Kind::Services));
        let names: Vec<_> = store.services().map(|s| s.metadata.name.clone()).collect();
        assert_eq!(names, [Some("newer".to_string())]);
        assert!(!store.synced());
        store.apply(Change::ListStarted(Kind::Slices));
        store.apply(Change::ListDone(Kind::Slices));
        assert!(store.synced());
        store.apply(Change::ListStarted(Kind::Pods));
        store.apply(Change::ListDone(Kind::Pods));
        assert!(store.pods_synced());
    }

    /// A realistic Service: Helm labels and annotations, managed fields, a selector.
    fn service(name: &str, annotation: Option<&str>, ip: &str) -> Service {
        let mut annotations = json!({"meta.helm.sh/release-name": "shop"});
        if let Some(v) = annotation {
            annotations[DEFAULT_ANNOTATION] = json!(v);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                         "resourceVersion": "7", "labels": {"app": name},
                         "annotations": annotations,
                         "managedFields": [{"manager": "helm", "operation": "Update"}]},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                               {"name": "dns", "port": 53, "protocol": "UDP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9", "hostname": "lb"}]}}
        }))
        .unwrap()
    }

    fn slice(name: &str, service: &str, addresses: &[(&[&str], Option<bool>)]) -> EndpointSlice {
        let endpoints: Vec<_> = addresses
            .iter()
            .map(|(a, ready)| {
                let mut e = json!({"addresses": a, "nodeName": "n1",
                                   "targetRef": {"kind": "Pod", "name": "p", "namespace": "shop"},
                                   "zone": "z1"});
                if let Some(r) = ready {
                    e["conditions"] = json!({"ready": r, "serving": true});
                }
                e
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop",
                         "labels": {SERVICE_NAME_LABEL: service, "app": service},
                         "managedFields": [{"manager": "kube-controller-manager"}]},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}]
        }))
        .unwrap()
    }

    fn desired(store: &ObjectStore) -> (Vec<String>, Vec<String>) {
        let (d, findings) = selection::desired(
            store.services(),
            store.slices(),
            &Rules::new(DEFAULT_ANNOTATION),
        );
        let mut v: Vec<String> = d
            .destinations
            .iter()
            .map(|(k, s)| format!("{} {s}", k.socket_addr()))
            .collect();
        v.sort();
        (v, findings.iter().map(ToString::to_string).collect())
    }

    /// The same changes into the default store and the selecting one: selection sees the
    /// same, at every step, from far less.
    #[test]
    fn a_selecting_store_selects_the_same_from_less() {
        let steps = vec![
            // A slice before its Service; a second slice of it; a slice of no Service.
            Change::SliceApplied(slice("web-a", "web", &[(&["10.1.0.1"], Some(true))])),
            Change::ServicesReset(vec![
                service("web", Some("true"), "10.96.0.1"),
                service("api", None, "10.96.0.2"),
                service("odd", Some("yes"), "10.96.0.3"),
            ]),
            Change::SlicesReset(vec![
                slice("web-a", "web", &[(&["10.1.0.1"], Some(true))]),
                slice(
                    "api-a",
                    "api",
                    &[
                        (&["10.2.0.1", "10.2.0.9"], Some(true)),
                        (&["10.2.0.2"], Some(false)),
                        (&["10.2.0.3"], None),
                        (&["not-an-ip"], Some(true)),
                    ],
                ),
                slice("api-b", "api", &[(&["10.2.1.1"], Some(true))]),
            ]),
            // The unselected Service is annotated: its parked slices count at once.
            Change::ServiceApplied(service("api", Some("true"), "10.96.0.2")),
            Change::SliceApplied(slice("api-b", "api", &[(&["10.2.1.2"], Some(true))])),
            // ...and loses the annotation again, then gets it back.
            Change::ServiceApplied(service("api", Some("false"), "10.96.0.2")),
            Change::SliceApplied(slice("api-b", "api", &[(&["10.2.1.3"], None)])),
            Change::ServiceApplied(service("api", Some("true"), "10.96.0.2")),
            Change::SliceDeleted(slice("api-a", "api", &[])),
            Change::ServiceDeleted(service("web", Some("true"), "10.96.0.1")),
            Change::ServiceApplied(service("web", Some("true"), "10.96.0.1")),
            // A streamed relist in which the Service is no longer selected.
            Change::ListStarted(Kind::Services),
            Change::Listed(Object::Service(service("web", None, "10.96.0.1"))),
            Change::Listed(Object::Service(service("api", Some("true"), "10.96.0.2"))),
            Change::Listed(Object::Service(service("odd", Some("yes"), "10.96.0.3"))),
            Change::ListDone(Kind::Services),
        ];
        let mut whole = ObjectStore::default();
        let mut selecting = ObjectStore::selecting(DEFAULT_ANNOTATION);
        for (n, change) in steps.into_iter().enumerate() {
            whole.apply(change.clone());
            selecting.apply(change);
            assert_eq!(whole.synced(), selecting.synced(), "step {n}");
            assert_eq!(desired(&whole), desired(&selecting), "step {n}");
        }
        let (destinations, findings) = desired(&selecting);
        assert_eq!(
            destinations,
            [
                "10.2.1.3:8080 shop/api",
                "10.96.0.2:80 shop/api",
                "203.0.113.9:80 shop/api"
            ]
        );
        assert_eq!(findings.len(), 2, "{findings:?}");
        assert_eq!(selecting.parked_slices(), 1, "web's slice");
        assert_eq!(whole.services().count(), 3);
        assert_eq!(
            selecting.services().count(),
            2,
            "api, and odd (bad value): reported, with what an Event names"
        );
        let odd = selecting.service("shop", "odd").unwrap();
        assert_eq!(odd.metadata.uid.as_deref(), Some("uid-odd"));
        assert_eq!(odd.metadata.resource_version.as_deref(), Some("7"));
    }

    /// What selection cannot see does not ask for a recompute.
    #[test]
    fn only_visible_changes_ask_for_a_recompute() {
        let mut store = ObjectStore::selecting(DEFAULT_ANNOTATION);
        assert!(store.update(Change::ServicesReset(vec![
            service("web", Some("true"), "10.96.0.1"),
            service("api", None, "10.96.0.2"),
        ])));
        assert!(store.update(Change::SlicesReset(vec![])));
        let api = |a: &str| slice("api-a", "api", &[(&[a], Some(true))]);
        let web = |a: &str| slice("web-a", "web", &[(&[a], Some(true))]);
        assert!(
            !store.update(Change::SliceApplied(api("10.2.0.1"))),
            "parked"
        );
        assert!(
            !store.update(Change::SliceApplied(api("10.2.0.2"))),
            "parked"
        );
        assert!(
            !store.update(Change::SliceDeleted(api("10.2.0.2"))),
            "parked"
        );
        assert!(store.update(Change::SliceApplied(web("10.1.0.1"))));
        assert!(
            !store.update(Change::SliceApplied(web("10.1.0.1"))),
            "the same"
        );
        assert!(store.update(Change::SliceApplied(web("10.1.0.2"))));
        assert!(!store.update(Change::ServiceApplied(service(
            "api",
            Some("false"),
            "10.96.0.2"
        ))));
        assert!(!store.update(Change::ServiceDeleted(service("api", None, "10.96.0.2"))));
        assert!(
            !store.update(Change::ServiceApplied(service(
                "web",
                Some("true"),
                "10.96.0.1"
            ))),
            "the same"
        );
        assert!(store.update(Change::ServiceApplied(service("web", None, "10.96.0.1"))));
        assert!(!store.update(Change::ListStarted(Kind::Slices)));
        assert!(!store.update(Change::Listed(Object::Slice(web("10.1.0.3")))));
        assert!(store.update(Change::ListDone(Kind::Slices)));
        // The default store cannot tell: everything counts.
        let mut whole = ObjectStore::default();
        assert!(whole.update(Change::SliceDeleted(api("10.2.0.2"))));
        assert!(whole.update(Change::ListStarted(Kind::Slices)));
    }

    #[test]
    fn slim_objects_keep_only_what_selection_reads() {
        let s = slim_service(
            service("web", Some("true"), "10.96.0.1"),
            DEFAULT_ANNOTATION,
        );
        assert!(s.metadata.managed_fields.is_none());
        assert!(s.metadata.labels.is_none());
        assert_eq!(
            s.metadata.annotations,
            Some([(DEFAULT_ANNOTATION.to_string(), "true".to_string())].into())
        );
        let spec = s.spec.unwrap();
        assert!(spec.selector.is_none());
        assert_eq!(spec.ports.map(|p| p.len()), Some(2));
        let ingress = s.status.unwrap().load_balancer.unwrap().ingress.unwrap();
        assert_eq!(ingress[0].ip.as_deref(), Some("203.0.113.9"));
        assert!(ingress[0].hostname.is_none());

        let sl = slim_slice(slice("web-a", "web", &[(&["10.1.0.1"], Some(true))]));
        assert_eq!(
            sl.metadata.labels,
            Some([(SERVICE_NAME_LABEL.to_string(), "web".to_string())].into())
        );
        assert!(sl.metadata.managed_fields.is_none());
        let e = &sl.endpoints[0];
        assert!(e.target_ref.is_none() && e.node_name.is_none() && e.zone.is_none());
        assert_eq!(e.conditions.as_ref().and_then(|c| c.serving), None);
        assert_eq!(sl.ports.unwrap()[0].app_protocol, None);
    }
}
