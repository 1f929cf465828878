//! Which destinations to steer, from the Services and EndpointSlices we know. Pure: it knows
//! nothing of aya or kube's client, so every rule is unit-tested.
//!
//! A Service is selected when its annotation (default `projectcalico.org/l7-logging`) is exactly
//! `true`. It then contributes, for each TCP port: every `spec.clusterIPs` address, every
//! `spec.externalIPs` address, every `status.loadBalancer.ingress[].ip`, and every ready
//! endpoint address of its EndpointSlices with the endpoint port (which covers headless
//! Services and datapaths that translate the ClusterIP before the socket layer sees it).
//!
//! Some destinations are never steered, whatever a Service says, and each is reported: the
//! node proxy's own address and port (the proxy would be steered to itself), and addresses
//! that do not mean the same thing in every network namespace or are not one host: loopback
//! (a pod's loopback is not the node's, where the proxy dials from), unspecified, link-local,
//! multicast and broadcast.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use redirector_common::ServiceKey;

use crate::k8s::service::{self, ServiceRef, Verdict};

/// Something about a Service the operator should hear about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Finding {
    /// The annotation has a value other than `true` or `false`: nothing is selected.
    BadAnnotationValue {
        /// The Service.
        service: ServiceRef,
        /// The value found.
        value: String,
    },
    /// An ExternalName Service has no addresses to steer.
    ExternalName {
        /// The Service.
        service: ServiceRef,
    },
    /// A non-TCP port of a selected Service is not steered.
    NonTcpPort {
        /// The Service.
        service: ServiceRef,
        /// The port number.
        port: i32,
        /// Its protocol.
        protocol: String,
    },
    /// A destination of a selected Service that is never steered.
    NeverSteered {
        /// The Service.
        service: ServiceRef,
        /// The destination.
        destination: SocketAddr,
        /// Why, in words.
        reason: &'static str,
    },
    /// The same destination is claimed by two selected Services; the first (by namespace/name)
    /// keeps it.
    SharedDestination {
        /// The destination.
        destination: SocketAddr,
        /// The Service that keeps it.
        kept: ServiceRef,
        /// The Service that also claims it.
        also: ServiceRef,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::BadAnnotationValue { service, value } => write!(
                f,
                "Service {service}: annotation value {value:?} is neither \"true\" nor \"false\"; \
                 it selects nothing"
            ),
            Finding::ExternalName { service } => write!(
                f,
                "Service {service} is of type ExternalName: there is no address to steer"
            ),
            Finding::NonTcpPort {
                service,
                port,
                protocol,
            } => write!(
                f,
                "Service {service}: port {port}/{protocol} is not TCP and is not steered"
            ),
            Finding::NeverSteered {
                service,
                destination,
                reason,
            } => write!(
                f,
                "Service {service}: {destination} is {reason}; it is never steered"
            ),
            Finding::SharedDestination {
                destination,
                kept,
                also,
            } => write!(
                f,
                "{destination} belongs to both {kept} and {also}; it is logged as {kept}"
            ),
        }
    }
}

/// The destinations to steer, each with the Service it belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Destination → Service; one copy of a Service's names for all its destinations (the
    /// daemon keeps this map between changes).
    pub destinations: BTreeMap<ServiceKey, Arc<ServiceRef>>,
}

impl Desired {
    /// The selected Services.
    pub fn services(&self) -> BTreeSet<&ServiceRef> {
        self.destinations.values().map(|s| &**s).collect()
    }
}

/// What selection needs to know besides the Services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// The annotation that selects a Service when it is `true`.
    pub annotation: String,
    /// The node proxy's listening addresses, never steered.
    pub proxies: BTreeSet<SocketAddr>,
}

impl Rules {
    /// Rules for `annotation`, with no proxy address known.
    pub fn new(annotation: &str) -> Self {
        Self {
            annotation: annotation.to_string(),
            proxies: BTreeSet::new(),
        }
    }

    /// The same rules, never steering `proxies` either.
    pub fn with_proxies(mut self, proxies: &[SocketAddr]) -> Self {
        self.proxies.extend(
            proxies
                .iter()
                .map(|p| SocketAddr::new(p.ip().to_canonical(), p.port())),
        );
        self
    }

    /// Why `destination` must never be steered, if it must not.
    pub fn never_steered(&self, destination: SocketAddr) -> Option<&'static str> {
        let ip = destination.ip().to_canonical();
        if self
            .proxies
            .contains(&SocketAddr::new(ip, destination.port()))
        {
            return Some("the node proxy's own address");
        }
        let reason = match ip {
            ip if ip.is_unspecified() => "an unspecified address",
            ip if ip.is_loopback() => "a loopback address, which is not the node's in a pod",
            ip if ip.is_multicast() => "a multicast address",
            IpAddr::V4(v4) if v4.is_link_local() => "a link-local address",
            IpAddr::V4(v4) if v4.is_broadcast() => "the broadcast address",
            IpAddr::V6(v6) if v6.is_unicast_link_local() => "a link-local address",
            _ => return None,
        };
        Some(reason)
    }
}

/// What one Service asks for on its own: the destinations it claims (sorted, never-steered
/// ones left out) and what to report about it. Whether it keeps a destination another Service
/// also claims is decided across Services (see [`desired`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// The destinations claimed, sorted.
    pub destinations: Vec<SocketAddr>,
    /// Findings about this Service alone (not [`Finding::SharedDestination`]).
    pub findings: Vec<Finding>,
}

/// What `svc` claims, given its own EndpointSlices. Pure; shared by [`desired`] and
/// [`Incremental`] so both apply the same rules.
pub fn claims<'a>(
    svc: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    rules: &Rules,
) -> Claims {
    let service = ServiceRef::of(svc);
    let mut out = Claims::default();
    match service::verdict(svc, &rules.annotation) {
        Verdict::NotSelected => return out,
        Verdict::Invalid(value) => {
            out.findings
                .push(Finding::BadAnnotationValue { service, value });
            return out;
        }
        Verdict::Selected => {}
    }
    if service::is_external_name(svc) {
        out.findings.push(Finding::ExternalName { service });
        return out;
    }
    let mut mine: BTreeSet<SocketAddr> = BTreeSet::new();
    let frontends = service::frontend_ips(svc);
    for port in service::ports(svc) {
        if port.protocol != "TCP" {
            out.findings.push(Finding::NonTcpPort {
                service: service.clone(),
                port: port.number,
                protocol: port.protocol.to_string(),
            });
            continue;
        }
        let Some(number) = port.tcp() else { continue };
        mine.extend(frontends.iter().map(|ip| SocketAddr::new(*ip, number)));
    }
    for slice in slices {
        mine.extend(
            service::slice_endpoints(slice)
                .into_iter()
                .filter(|e| e.ready)
                .map(|e| SocketAddr::new(e.ip, e.port)),
        );
    }
    for destination in mine {
        match rules.never_steered(destination) {
            Some(reason) => out.findings.push(Finding::NeverSteered {
                service: service.clone(),
                destination,
                reason,
            }),
            None => out.destinations.push(destination),
        }
    }
    // Kept for as long as the Service is unchanged: no spare capacity.
    out.destinations.shrink_to_fit();
    out
}

/// Computes what to steer from all known Services and EndpointSlices.
pub fn desired<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    rules: &Rules,
) -> (Desired, Vec<Finding>) {
    let mut findings = Vec::new();
    let mut slices_of: BTreeMap<ServiceRef, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if let Some(owner) = ServiceRef::owner_of(slice) {
            slices_of.entry(owner).or_default().push(slice);
        }
    }

    // Sorted, so "first claim wins" is deterministic.
    let mut services: Vec<&Service> = services.into_iter().collect();
    services.sort_by_cached_key(|s| ServiceRef::of(s));

    let mut out = Desired::default();
    for svc in services {
        let service = Arc::new(ServiceRef::of(svc));
        let mine = claims(
            svc,
            slices_of.get(&*service).into_iter().flatten().copied(),
            rules,
        );
        findings.extend(mine.findings);
        for destination in mine.destinations {
            let key = ServiceKey::tcp_addr(destination);
            match out.destinations.get(&key) {
                Some(kept) => findings.push(Finding::SharedDestination {
                    destination,
                    kept: (**kept).clone(),
                    also: (*service).clone(),
                }),
                None => {
                    out.destinations.insert(key, Arc::clone(&service));
                }
            }
        }
    }
    (out, findings)
}

/// Which Services a change may have touched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Touched {
    /// None that selection can see.
    #[default]
    Nothing,
    /// These.
    Services(BTreeSet<ServiceRef>),
    /// Any: recompute everything.
    All,
}

impl Touched {
    /// Adds what another change touched.
    pub fn add(&mut self, other: Touched) {
        match (&mut *self, other) {
            (Touched::All, _) | (_, Touched::Nothing) => {}
            (_, Touched::All) => *self = Touched::All,
            (Touched::Nothing, other) => *self = other,
            (Touched::Services(mine), Touched::Services(more)) => mine.extend(more),
        }
    }
}

/// What changed in the desired state since the last [`Incremental::refresh`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delta {
    /// Everything may have: diff the whole of it.
    All,
    /// Only these destinations may have a different owner (or none now), and only these
    /// Services may have become selected or unselected.
    Some {
        /// The destinations.
        keys: BTreeSet<ServiceKey>,
        /// The Services.
        services: BTreeSet<ServiceRef>,
    },
}

/// What the objects of a [`Incremental::refresh`] come from: the daemon's
/// [`ObjectStore`](crate::k8s::store::ObjectStore).
pub trait Objects {
    /// Every Service.
    fn all_services(&self) -> impl Iterator<Item = &Service>;
    /// Every EndpointSlice.
    fn all_slices(&self) -> impl Iterator<Item = &EndpointSlice>;
    /// The Service `service`, if known.
    fn service_of(&self, service: &ServiceRef) -> Option<&Service>;
    /// The EndpointSlices of `service`.
    fn slices_of(&self, service: &ServiceRef) -> impl Iterator<Item = &EndpointSlice>;
}

/// One claim on a destination: the Service (the copy the whole state shares) and the
/// destination as the Service gave it.
type Claim = (Arc<ServiceRef>, SocketAddr);

/// Every claim on one destination key, sorted; the first one keeps it. Nearly every key has
/// a single claim, held inline: a `Vec` would cost an allocation per destination.
#[derive(Clone, Debug)]
enum Claimants {
    One(Claim),
    /// Two or more.
    Many(Vec<Claim>),
}

impl Claimants {
    fn as_slice(&self) -> &[Claim] {
        match self {
            Claimants::One(claim) => std::slice::from_ref(claim),
            Claimants::Many(claims) => claims,
        }
    }

    /// Adds `claim` unless it is there already.
    fn insert(&mut self, claim: Claim) {
        match self {
            Claimants::One(first) => {
                if *first != claim {
                    let mut claims = vec![first.clone(), claim];
                    claims.sort();
                    *self = Claimants::Many(claims);
                }
            }
            Claimants::Many(claims) => {
                if let Err(at) = claims.binary_search(&claim) {
                    claims.insert(at, claim);
                }
            }
        }
    }

    /// Removes `service`'s claim of `destination` if there; whether no claim is left.
    fn remove(&mut self, service: &ServiceRef, destination: SocketAddr) -> bool {
        match self {
            Claimants::One((s, d)) => **s == *service && *d == destination,
            Claimants::Many(claims) => {
                if let Ok(at) =
                    claims.binary_search_by(|(s, d)| (&**s, *d).cmp(&(service, destination)))
                {
                    claims.remove(at);
                }
                if let [only] = claims.as_slice() {
                    *self = Claimants::One(only.clone());
                }
                false
            }
        }
    }
}

/// [`desired`] kept up to date Service by Service: each Service's [`Claims`] are recomputed
/// only when it or one of its slices changed, and a destination claimed by several Services
/// goes, as in [`desired`], to the first claim in (Service, destination) order.
#[derive(Clone, Debug)]
pub struct Incremental {
    rules: Rules,
    /// Each Service's claims; only Services that claim or report something. The key is the
    /// one copy of the Service's names that `claimants`, `kept` and `desired` share.
    claims: BTreeMap<Arc<ServiceRef>, Claims>,
    /// Per destination key, every claim on it.
    claimants: BTreeMap<ServiceKey, Claimants>,
    /// The keys of `claimants` with more than one claim.
    shared: BTreeSet<ServiceKey>,
    /// How many destinations each Service keeps.
    kept: BTreeMap<Arc<ServiceRef>, usize>,
    desired: Desired,
    /// Whether nothing has been computed yet.
    fresh: bool,
}

impl Incremental {
    /// Nothing computed yet: the first [`refresh`](Self::refresh) computes everything.
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            claims: BTreeMap::new(),
            claimants: BTreeMap::new(),
            shared: BTreeSet::new(),
            kept: BTreeMap::new(),
            desired: Desired::default(),
            fresh: true,
        }
    }

    /// The destinations to steer.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Whether `service` keeps at least one destination.
    pub fn is_selected(&self, service: &ServiceRef) -> bool {
        self.kept.contains_key(service)
    }

    /// How many Services keep at least one destination.
    pub fn selected_services(&self) -> usize {
        self.kept.len()
    }

    /// Every finding, as [`desired`] gives them (as a set).
    pub fn findings(&self) -> BTreeSet<Finding> {
        let mut out: BTreeSet<Finding> = self
            .claims
            .values()
            .flat_map(|c| c.findings.iter().cloned())
            .collect();
        for key in &self.shared {
            let mut claims = self
                .claimants
                .get(key)
                .map(Claimants::as_slice)
                .unwrap_or_default()
                .iter();
            if let Some((kept, _)) = claims.next() {
                out.extend(
                    claims.map(|(also, destination)| Finding::SharedDestination {
                        destination: *destination,
                        kept: (**kept).clone(),
                        also: (**also).clone(),
                    }),
                );
            }
        }
        out
    }

    /// Brings the state up to date with `objects`, recomputing the `touched` Services (all
    /// of them on the first call), and says what changed.
    pub fn refresh(&mut self, objects: &impl Objects, touched: Touched) -> Delta {
        let touched = if self.fresh { Touched::All } else { touched };
        match touched {
            Touched::Nothing => Delta::Some {
                keys: BTreeSet::new(),
                services: BTreeSet::new(),
            },
            Touched::All => {
                self.recompute_all(objects);
                Delta::All
            }
            Touched::Services(services) => {
                let mut keys = BTreeSet::new();
                let mut changed = services.clone();
                for service in services {
                    let new = objects
                        .service_of(&service)
                        .map(|svc| claims(svc, objects.slices_of(&service), &self.rules))
                        .unwrap_or_default();
                    self.set_claims(service, new, &mut keys, &mut changed);
                }
                Delta::Some {
                    keys,
                    services: changed,
                }
            }
        }
    }

    fn recompute_all(&mut self, objects: &impl Objects) {
        let mut slices_of: BTreeMap<ServiceRef, Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in objects.all_slices() {
            if let Some(owner) = ServiceRef::owner_of(slice) {
                slices_of.entry(owner).or_default().push(slice);
            }
        }
        self.claims.clear();
        self.claimants.clear();
        self.shared.clear();
        self.kept.clear();
        self.desired = Desired::default();
        self.fresh = false;
        // The delta is `All`: what each Service changed is not kept, so it never piles up.
        let (mut keys, mut changed) = (BTreeSet::new(), BTreeSet::new());
        for svc in objects.all_services() {
            let service = ServiceRef::of(svc);
            let new = claims(
                svc,
                slices_of.get(&service).into_iter().flatten().copied(),
                &self.rules,
            );
            self.set_claims(service, new, &mut keys, &mut changed);
            keys.clear();
            changed.clear();
        }
    }

    /// Replaces what `service` claims, noting the keys whose owner may have changed and the
    /// Services that may have gained or lost their last destination.
    fn set_claims(
        &mut self,
        service: ServiceRef,
        new: Claims,
        keys: &mut BTreeSet<ServiceKey>,
        changed: &mut BTreeSet<ServiceRef>,
    ) {
        // A Service without claims has no copy anywhere in the state: make the one.
        let (service, old) = self
            .claims
            .remove_entry(&service)
            .unwrap_or_else(|| (Arc::new(service), Claims::default()));
        if old.destinations != new.destinations {
            for destination in &old.destinations {
                let key = ServiceKey::tcp_addr(*destination);
                if let Some(set) = self.claimants.get_mut(&key)
                    && set.remove(&service, *destination)
                {
                    self.claimants.remove(&key);
                }
                keys.insert(key);
            }
            for destination in &new.destinations {
                let key = ServiceKey::tcp_addr(*destination);
                let claim = (Arc::clone(&service), *destination);
                match self.claimants.entry(key) {
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(Claimants::One(claim));
                    }
                    std::collections::btree_map::Entry::Occupied(mut e) => {
                        e.get_mut().insert(claim)
                    }
                }
                keys.insert(key);
            }
            for destination in old.destinations.iter().chain(&new.destinations) {
                self.settle(ServiceKey::tcp_addr(*destination), changed);
            }
        }
        if !new.destinations.is_empty() || !new.findings.is_empty() {
            self.claims.insert(service, new);
        }
    }

    /// Makes `key`'s owner in the desired state its first claimant.
    fn settle(&mut self, key: ServiceKey, changed: &mut BTreeSet<ServiceRef>) {
        let claims = self.claimants.get(&key);
        if matches!(claims, Some(Claimants::Many(_))) {
            self.shared.insert(key);
        } else {
            self.shared.remove(&key);
        }
        let winner = claims
            .and_then(|c| c.as_slice().first())
            .map(|(s, _)| Arc::clone(s));
        let before = self.desired.destinations.get(&key);
        if before == winner.as_ref() {
            return;
        }
        if let Some(loser) = before.cloned() {
            if let Some(n) = self.kept.get_mut(&loser) {
                *n -= 1;
                if *n == 0 {
                    self.kept.remove(&loser);
                }
            }
            changed.insert((*loser).clone());
        }
        match winner {
            Some(w) => {
                *self.kept.entry(Arc::clone(&w)).or_default() += 1;
                if !changed.contains(&*w) {
                    changed.insert((*w).clone());
                }
                self.desired.destinations.insert(key, w);
            }
            None => {
                self.desired.destinations.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        k8s::{
            service::{DEFAULT_ANNOTATION, SERVICE_NAME_LABEL},
            store::{Change, Kind, Object, ObjectStore},
        },
        reconcile::{MemoryMaps, Plan, Reconciler, plan},
    };
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("valid Service")
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).expect("valid EndpointSlice")
    }

    fn annotated(value: Option<&str>, spec: serde_json::Value) -> Service {
        let mut meta = json!({"name": "web", "namespace": "shop"});
        if let Some(v) = value {
            meta["annotations"] = json!({ DEFAULT_ANNOTATION: v });
        }
        svc(json!({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}))
    }

    fn dests(services: &[Service], slices: &[EndpointSlice]) -> (Vec<String>, Vec<Finding>) {
        let (d, f) = desired(services, slices, &Rules::new(DEFAULT_ANNOTATION));
        let mut v: Vec<String> = d
            .destinations
            .keys()
            .map(|k| k.socket_addr().to_string())
            .collect();
        v.sort();
        (v, f)
    }

    fn cluster_ip_spec() -> serde_json::Value {
        json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
               "ports": [{"port": 80, "targetPort": 8080}]})
    }

    #[test]
    fn annotation_values() {
        let cases: [(Option<&str>, usize, usize); 6] = [
            (None, 0, 0),
            (Some("false"), 0, 0),
            (Some("true"), 1, 0),
            (Some("True"), 0, 1),
            (Some("yes"), 0, 1),
            (Some(""), 0, 1),
        ];
        for (value, selected, reported) in cases {
            let (d, f) = dests(&[annotated(value, cluster_ip_spec())], &[]);
            assert_eq!(d.len(), selected, "value {value:?}");
            assert_eq!(f.len(), reported, "value {value:?}: {f:?}");
            if reported == 1 {
                assert!(matches!(&f[0], Finding::BadAnnotationValue { value: v, .. }
                    if Some(v.as_str()) == value));
            }
        }
    }

    #[test]
    fn annotation_key_is_configurable() {
        let s = svc(json!({"metadata": {"name": "a", "namespace": "n",
            "annotations": {"example.com/log": "true"}}, "spec": cluster_ip_spec()}));
        let rules = Rules::new("example.com/log");
        assert_eq!(desired([&s], [], &rules).0.destinations.len(), 1);
        assert!(
            desired([&s], [], &Rules::new(DEFAULT_ANNOTATION))
                .0
                .destinations
                .is_empty()
        );
    }

    #[test]
    fn every_frontend_address_for_every_tcp_port() {
        let s = svc(json!({
            "metadata": {"name": "web", "namespace": "shop",
                         "annotations": {DEFAULT_ANNOTATION: "true"}},
            "spec": {"type": "LoadBalancer",
                     "clusterIP": "10.96.0.10",
                     "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                     "externalIPs": ["192.0.2.7"],
                     "ports": [{"port": 80}, {"port": 443, "protocol": "TCP"},
                               {"port": 53, "protocol": "UDP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"},
                                                    {"hostname": "lb.example.com"}]}}
        }));
        let (d, f) = dests(&[s], &[]);
        assert_eq!(
            d,
            [
                "10.96.0.10:443",
                "10.96.0.10:80",
                "192.0.2.7:443",
                "192.0.2.7:80",
                "198.51.100.1:443",
                "198.51.100.1:80",
                "[fd00:96::10]:443",
                "[fd00:96::10]:80",
            ]
        );
        assert_eq!(
            f,
            [Finding::NonTcpPort {
                service: ServiceRef {
                    namespace: "shop".into(),
                    name: "web".into()
                },
                port: 53,
                protocol: "UDP".into()
            }]
        );
    }

    fn web_slice(endpoints: serde_json::Value) -> EndpointSlice {
        slice(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"port": 8080, "protocol": "TCP"}, {"port": 9090, "protocol": "SCTP"}]
        }))
    }

    #[test]
    fn ready_endpoints_with_their_ports() {
        let sl = web_slice(json!([
            {"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
            {"addresses": ["10.244.2.6"]},
            {"addresses": ["10.244.3.7"], "conditions": {"ready": false}}
        ]));
        let (d, _) = dests(&[annotated(Some("true"), cluster_ip_spec())], &[sl]);
        assert_eq!(d, ["10.244.1.5:8080", "10.244.2.6:8080", "10.96.0.10:80"]);
    }

    #[test]
    fn headless_service_is_covered_by_its_endpoints() {
        let spec = json!({"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]});
        let sl = web_slice(json!([{"addresses": ["10.244.1.5"]}]));
        let (d, f) = dests(&[annotated(Some("true"), spec)], &[sl]);
        assert_eq!(d, ["10.244.1.5:8080"]);
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn slices_of_other_services_or_namespaces_do_not_count() {
        let mut other = web_slice(json!([{"addresses": ["10.244.9.9"]}]));
        other.metadata.namespace = Some("elsewhere".into());
        let (d, _) = dests(&[annotated(Some("true"), cluster_ip_spec())], &[other]);
        assert_eq!(d, ["10.96.0.10:80"]);
        let sl = web_slice(json!([{"addresses": ["10.244.1.5"]}]));
        let (d, _) = dests(&[annotated(None, cluster_ip_spec())], &[sl]);
        assert!(
            d.is_empty(),
            "an unselected Service's endpoints are not steered"
        );
    }

    #[test]
    fn external_name_is_reported_not_selected() {
        let spec = json!({"type": "ExternalName", "externalName": "db.example.com"});
        let (d, f) = dests(&[annotated(Some("true"), spec)], &[]);
        assert!(d.is_empty());
        assert!(matches!(f.as_slice(), [Finding::ExternalName { .. }]));
    }

    #[test]
    fn destinations_that_must_never_be_steered_are_skipped_and_reported() {
        let s = svc(json!({
            "metadata": {"name": "odd", "namespace": "shop",
                         "annotations": {DEFAULT_ANNOTATION: "true"}},
            "spec": {"clusterIPs": ["10.96.0.10"],
                     "externalIPs": ["127.0.0.1", "0.0.0.0", "169.254.1.1", "224.0.0.1",
                                     "::1", "fe80::1", "ff02::1", "10.0.0.1", "::"],
                     "ports": [{"port": 80}, {"port": 15001}]}
        }));
        let proxies = ["10.0.0.1:15001".parse().unwrap()];
        let (d, f) = desired(
            [&s],
            [],
            &Rules::new(DEFAULT_ANNOTATION).with_proxies(&proxies),
        );
        let mut kept: Vec<String> = d
            .destinations
            .keys()
            .map(|k| k.socket_addr().to_string())
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            ["10.0.0.1:80", "10.96.0.10:15001", "10.96.0.10:80"],
            "the proxy's address on another port is an ordinary destination"
        );
        let skipped: Vec<String> = f
            .iter()
            .filter_map(|f| match f {
                Finding::NeverSteered { destination, .. } => Some(destination.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(skipped.len(), 17, "{f:?}");
        assert!(skipped.contains(&"10.0.0.1:15001".to_string()));
        assert!(skipped.contains(&"[fe80::1]:80".to_string()));
        let text = f
            .iter()
            .find(|f| {
                matches!(f, Finding::NeverSteered { destination, .. }
                if destination.to_string() == "127.0.0.1:80")
            })
            .unwrap()
            .to_string();
        assert!(
            text.contains("shop/odd") && text.contains("loopback"),
            "{text}"
        );
    }

    #[test]
    fn a_shared_destination_goes_to_the_first_service() {
        let a = svc(json!({"metadata": {"name": "a", "namespace": "n",
            "annotations": {DEFAULT_ANNOTATION: "true"}},
            "spec": {"clusterIPs": ["10.96.0.1"], "externalIPs": ["192.0.2.1"],
                     "ports": [{"port": 80}]}}));
        let b = svc(json!({"metadata": {"name": "b", "namespace": "n",
            "annotations": {DEFAULT_ANNOTATION: "true"}},
            "spec": {"clusterIPs": ["10.96.0.2"], "externalIPs": ["192.0.2.1"],
                     "ports": [{"port": 80}]}}));
        let (d, f) = desired([&b, &a], [], &Rules::new(DEFAULT_ANNOTATION));
        let owner = &d.destinations[&ServiceKey::tcp_addr("192.0.2.1:80".parse().unwrap())];
        assert_eq!(owner.name, "a");
        assert_eq!(d.destinations.len(), 3);
        assert!(matches!(f.as_slice(), [Finding::SharedDestination { .. }]));
    }

    /// A small seeded generator (xorshift64*), so a failure is reproducible from its seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
        fn some<'a>(&mut self, items: &[&'a str], max: usize) -> Vec<&'a str> {
            (0..self.below(max + 1)).map(|_| self.pick(items)).collect()
        }
    }

    const NAMESPACES: [&str; 2] = ["a", "b"];
    const SERVICES: [&str; 4] = ["s0", "s1", "s2", "s3"];
    const SLICES: [&str; 5] = ["x0", "x1", "x2", "x3", "x4"];
    // Few addresses, so that Services share destinations; some are never steered (the proxy,
    // loopback), one is the IPv4-mapped form of another.
    const FRONTENDS: [&str; 5] = ["10.96.0.1", "10.96.0.2", "127.0.0.1", "10.0.0.1", "fd00::1"];
    const ENDPOINTS: [&str; 5] = [
        "10.244.0.1",
        "10.244.0.2",
        "::ffff:10.244.0.1",
        "10.96.0.1",
        "not-an-ip",
    ];

    fn random_service(rng: &mut Rng, ns: &str, name: &str) -> Service {
        let mut meta = json!({"name": name, "namespace": ns, "uid": format!("{}", rng.next())});
        let annotation = [None, Some("true"), Some("true"), Some("false"), Some("yes")];
        if let Some(v) = annotation[rng.below(annotation.len())] {
            meta["annotations"] = json!({ DEFAULT_ANNOTATION: v, "other": "x" });
        }
        let ports: Vec<serde_json::Value> = rng
            .some(&["80/TCP", "80/TCP", "443/TCP", "53/UDP", "9/SCTP"], 3)
            .into_iter()
            .map(|p| {
                let (port, protocol) = p.split_once('/').expect("port/protocol");
                json!({"port": port.parse::<i32>().expect("a port"), "protocol": protocol})
            })
            .collect();
        let type_ = rng.pick(&["ClusterIP", "ClusterIP", "LoadBalancer", "ExternalName"]);
        svc(json!({
            "metadata": meta,
            "spec": {"type": type_, "clusterIPs": rng.some(&FRONTENDS, 2),
                     "externalIPs": rng.some(&FRONTENDS, 1), "ports": ports},
            "status": {"loadBalancer": {"ingress":
                rng.some(&FRONTENDS, 1).into_iter().map(|ip| json!({"ip": ip}))
                    .collect::<Vec<_>>()}}
        }))
    }

    fn random_slice(rng: &mut Rng, ns: &str, name: &str) -> EndpointSlice {
        let mut meta = json!({"name": name, "namespace": ns});
        // Mostly a Service's slice; sometimes of none. It may move from one to another.
        if rng.below(6) > 0 {
            meta["labels"] = json!({SERVICE_NAME_LABEL: rng.pick(&SERVICES)});
        }
        let endpoints: Vec<serde_json::Value> = (0..rng.below(3))
            .map(|_| {
                let ready = [json!({}), json!({"ready": true}), json!({"ready": false})];
                json!({"addresses": rng.some(&ENDPOINTS, 2),
                       "conditions": ready[rng.below(3)].clone()})
            })
            .collect();
        let ports: Vec<serde_json::Value> = rng
            .some(&["8080/TCP", "9090/UDP", "8080/TCP"], 2)
            .into_iter()
            .map(|p| {
                let (port, protocol) = p.split_once('/').expect("port/protocol");
                json!({"port": port.parse::<i32>().expect("a port"), "protocol": protocol})
            })
            .collect();
        slice(json!({
            "metadata": meta, "addressType": "IPv4", "endpoints": endpoints, "ports": ports
        }))
    }

    /// A random change to `services` and `slices` (which it updates), as a source sends it.
    fn random_changes(
        rng: &mut Rng,
        services: &mut BTreeMap<(String, String), Service>,
        slices: &mut BTreeMap<(String, String), EndpointSlice>,
    ) -> Vec<Change> {
        let ns = rng.pick(&NAMESPACES);
        match rng.below(20) {
            0..=6 => {
                let name = rng.pick(&SERVICES);
                let s = random_service(rng, ns, name);
                services.insert((ns.to_string(), name.to_string()), s.clone());
                vec![Change::ServiceApplied(s)]
            }
            7..=8 => {
                let key = (ns.to_string(), rng.pick(&SERVICES).to_string());
                match services.remove(&key) {
                    Some(s) => vec![Change::ServiceDeleted(s)],
                    None => vec![],
                }
            }
            9..=15 => {
                let name = rng.pick(&SLICES);
                let sl = random_slice(rng, ns, name);
                slices.insert((ns.to_string(), name.to_string()), sl.clone());
                vec![Change::SliceApplied(sl)]
            }
            16..=17 => {
                let key = (ns.to_string(), rng.pick(&SLICES).to_string());
                match slices.remove(&key) {
                    Some(sl) => vec![Change::SliceDeleted(sl)],
                    None => vec![],
                }
            }
            18 => {
                // A streamed relist of the Services, with some changed on the way.
                for ((ns, name), s) in services.iter_mut() {
                    if rng.below(3) == 0 {
                        *s = random_service(rng, ns, name);
                    }
                }
                let mut out = vec![Change::ListStarted(Kind::Services)];
                out.extend(
                    services
                        .values()
                        .cloned()
                        .map(|s| Change::Listed(Object::Service(s))),
                );
                out.push(Change::ListDone(Kind::Services));
                out
            }
            _ => {
                let mut all: Vec<EndpointSlice> = slices.values().cloned().collect();
                if let Some(sl) = all.first_mut() {
                    sl.endpoints.clear();
                    let key = (
                        sl.metadata.namespace.clone().unwrap_or_default(),
                        sl.metadata.name.clone().unwrap_or_default(),
                    );
                    slices.insert(key, sl.clone());
                }
                vec![Change::SlicesReset(all)]
            }
        }
    }

    #[test]
    fn incremental_selection_and_reconcile_equal_the_full_computation() {
        let rules =
            Rules::new(DEFAULT_ANNOTATION).with_proxies(&["10.0.0.1:80".parse().expect("addr")]);
        let mut shared_seen = 0;
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let (mut services, mut slices) = (BTreeMap::new(), BTreeMap::new());
            // The daemon's store and a store that keeps everything: the reference.
            let mut store = ObjectStore::selecting(DEFAULT_ANNOTATION);
            let mut whole = ObjectStore::default();
            store.apply(Change::ServicesReset(vec![]));
            store.apply(Change::SlicesReset(vec![]));
            whole.apply(Change::ServicesReset(vec![]));
            whole.apply(Change::SlicesReset(vec![]));
            let mut inc = Incremental::new(rules.clone());
            let mut maps = Reconciler::new(MemoryMaps::with_capacity(1000)).expect("memory");
            for step in 0..150 {
                // Several changes may be taken together before one refresh, as the daemon does.
                let mut touched = Touched::Nothing;
                for _ in 0..=rng.below(3) {
                    for change in random_changes(&mut rng, &mut services, &mut slices) {
                        touched.add(store.touched(&change));
                        store.apply(change.clone());
                        whole.apply(change);
                    }
                }
                let delta = inc.refresh(&store, touched);
                let (want, findings) = desired(whole.services(), whole.slices(), &rules);
                let ctx = format!("seed {seed} step {step}");
                assert_eq!(inc.desired(), &want, "{ctx}");
                let findings: BTreeSet<Finding> = findings.into_iter().collect();
                assert_eq!(inc.findings(), findings, "{ctx}");
                assert_eq!(inc.selected_services(), want.services().len(), "{ctx}");
                shared_seen += findings
                    .iter()
                    .filter(|f| matches!(f, Finding::SharedDestination { .. }))
                    .count();
                let outcome = match delta {
                    Delta::All => maps.reconcile(inc.desired()),
                    Delta::Some { keys, services } => maps.reconcile_delta(
                        inc.desired(),
                        &keys,
                        &services,
                        |s| inc.is_selected(s),
                        inc.selected_services(),
                    ),
                }
                .expect("memory");
                assert_eq!(
                    plan(maps.current(), &want),
                    Plan::default(),
                    "{ctx}: the maps hold the desired state"
                );
                assert_eq!(
                    (outcome.entries, outcome.services),
                    (want.destinations.len(), want.services().len()),
                    "{ctx}"
                );
                let current = maps.current().clone();
                assert_eq!(maps.maps_mut().pinned, current, "{ctx}");
            }
        }
        assert!(
            shared_seen > 100,
            "shared destinations were exercised: {shared_seen}"
        );
    }
}
