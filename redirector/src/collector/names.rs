//! Naming the two ends of a request from the Services, EndpointSlices and Pods the collector
//! knows, the way the reference product's L7 logs name them. Pure: [`NameIndex::build`] takes
//! the store and this host's addresses, and lookups are map reads.
//!
//! An address names an **endpoint**:
//!
//! | the address is                                   | `*_name_aggr`         | `*_namespace` | `*_type` |
//! | ------------------------------------------------ | --------------------- | ------------- | -------- |
//! | a Pod's (not host-networked, not finished)       | owner's name + `-*`   | the Pod's     | `wep`    |
//! | one of this host's (or `--host-addresses`)       | `pvt` or `pub`        | `-`           | `net`    |
//! | anything else                                    | `-`                   | `-`           | `-`      |
//!
//! - The aggregated Pod name is its controlling owner's name with `-*` (ReplicaSet
//!   `frontend-7d9f8` gives `frontend-7d9f8-*`; the owner is the reference marked
//!   `controller: true`, else the first); a Pod without owner keeps its own name.
//! - `wep` (workload endpoint) and `net` (a network: an address of no known endpoint kind) are
//!   the reference product's types. A host address is `net` with the reference product's
//!   network name: `pvt` for private addresses (RFC 1918, shared 100.64/10, loopback and
//!   link-local; IPv6 unique-local, link-local and loopback), `pub` otherwise. Addresses the
//!   collector cannot place at all are `-` rather than guessed.
//! - Host-networked Pods share their node's address, so they are never named by address.
//!
//! The **destination** is the original destination (Envoy's `downstream_local_address`), the
//! address and port the client connected to:
//!
//! - a Service's ClusterIP, external IP or load-balancer IP with one of its TCP ports: the
//!   Service gives `dest_service_name`/`_namespace`/`_port`; the endpoint is the Service's
//!   backends when they all name the same endpoint (one Deployment's Pods: `web-5f7c9-*`,
//!   `wep`, their namespace), else the Service itself (its name and namespace, with type `wep`
//!   when every backend is a Pod and `-` otherwise);
//! - an endpoint address and port of a Service's EndpointSlice (headless Services, or a
//!   datapath that translated the ClusterIP first): that Service, with `dest_service_port` the
//!   Service port whose name matches the slice port; the endpoint is the address's own
//!   (above), or the Service when the address names nothing;
//! - anything else: the address's endpoint, and no Service (`-`, port 0).
//!
//! `dest_port_num` is always the port the client connected to.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};

use crate::k8s::{
    service::{self, ServiceRef},
    sources::kube::POD_LABELS_KEPT,
    store::ObjectStore,
};

/// A value that is not known or does not apply.
const NONE: &str = "-";

/// The kind of an endpoint, as the reference product's `src_type` / `dest_type` spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointType {
    /// A workload endpoint: a Pod.
    Wep,
    /// A network: an address outside every known endpoint (here: this host's).
    Net,
    /// Not known.
    Unknown,
}

impl EndpointType {
    /// `wep`, `net` or `-`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wep => "wep",
            Self::Net => "net",
            Self::Unknown => NONE,
        }
    }
}

/// One end of a request, named.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointName {
    /// `*_name_aggr`.
    pub name_aggr: String,
    /// `*_namespace`.
    pub namespace: String,
    /// `*_type`.
    pub kind: EndpointType,
}

impl EndpointName {
    /// Nothing known: `-` everywhere.
    pub fn unknown() -> Self {
        Self {
            name_aggr: NONE.into(),
            namespace: NONE.into(),
            kind: EndpointType::Unknown,
        }
    }

    fn network(ip: IpAddr) -> Self {
        Self {
            name_aggr: if is_private(ip) { "pvt" } else { "pub" }.into(),
            namespace: NONE.into(),
            kind: EndpointType::Net,
        }
    }
}

/// The Service a destination belongs to, and which of its ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The Service.
    pub service: ServiceRef,
    /// The Service port (not the endpoint's target port).
    pub port: u16,
}

/// The destination of a request, named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The endpoint.
    pub endpoint: EndpointName,
    /// The Service, if the original destination is one of a Service's addresses.
    pub service: Option<ServicePort>,
}

/// The workload a Pod belongs to, as Istio's metrics name it (`*_workload`, `*_app`,
/// `*_version`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The controlling owner's name with the pod-template hash removed ([`workload_name`]).
    pub name: String,
    /// The Pod's namespace.
    pub namespace: String,
    /// The `app` label (else `app.kubernetes.io/name`), when the store kept labels.
    pub app: Option<String>,
    /// The `version` label (else `app.kubernetes.io/version`), when the store kept labels.
    pub version: Option<String>,
}

/// Lookups from addresses to names, built from one state of the store.
#[derive(Debug, Default)]
pub struct NameIndex {
    pods: HashMap<IpAddr, EndpointName>,
    /// Pod endpoints (aggregated name, namespace) → their workload. Pods with one aggregated
    /// name have one owner, hence one workload.
    workloads: HashMap<(String, String), Workload>,
    host: HashSet<IpAddr>,
    /// Service front ends (ClusterIP and the like, with the Service port) → the Service and
    /// the endpoint standing for its backends.
    frontends: HashMap<(IpAddr, u16), (ServicePort, EndpointName)>,
    /// Endpoint addresses and ports of EndpointSlices → their Service.
    endpoints: HashMap<(IpAddr, u16), ServicePort>,
    /// Endpoint addresses → every Service they back (a request's source is an endpoint on an
    /// ephemeral port, so only its address tells).
    services_at: HashMap<IpAddr, Vec<ServiceRef>>,
}

impl NameIndex {
    /// Indexes what `store` holds now; `host_addresses` are this host's own addresses.
    pub fn build(store: &ObjectStore, host_addresses: &[IpAddr]) -> Self {
        let pods = index_pods(store.pods());
        let mut index = Self {
            host: host_addresses.iter().map(|ip| ip.to_canonical()).collect(),
            workloads: index_workloads(store.pods()),
            ..Self::default()
        };
        let mut backends: HashMap<ServiceRef, Vec<EndpointName>> = HashMap::new();
        for slice in store.slices() {
            let Some(owner) = ServiceRef::owner_of(slice) else {
                continue;
            };
            let service = store.service(&owner.namespace, &owner.name);
            for endpoint in service::slice_endpoints(slice) {
                let port = service
                    .and_then(|s| service::tcp_port_named(s, endpoint.port_name))
                    .unwrap_or(endpoint.port);
                let at = index
                    .services_at
                    .entry(endpoint.ip.to_canonical())
                    .or_default();
                if !at.contains(&owner) {
                    at.push(owner.clone());
                }
                index.endpoints.insert(
                    (endpoint.ip, endpoint.port),
                    ServicePort {
                        service: owner.clone(),
                        port,
                    },
                );
                // Only endpoints known not to be ready are left out of the backends.
                if endpoint.ready {
                    let named = pods
                        .get(&endpoint.ip)
                        .cloned()
                        .or_else(|| target_pod(store, endpoint.target))
                        .unwrap_or_else(|| index.endpoint_of(endpoint.ip, &pods));
                    backends.entry(owner.clone()).or_default().push(named);
                }
            }
        }
        for svc in store.services() {
            if service::is_external_name(svc) {
                continue;
            }
            let owner = ServiceRef::of(svc);
            let endpoint = backend_endpoint(&owner, backends.get(&owner).map(Vec::as_slice));
            let ports: Vec<u16> = service::ports(svc).filter_map(|p| p.tcp()).collect();
            for ip in service::frontend_ips(svc) {
                for &port in &ports {
                    index.frontends.insert(
                        (ip, port),
                        (
                            ServicePort {
                                service: owner.clone(),
                                port,
                            },
                            endpoint.clone(),
                        ),
                    );
                }
            }
        }
        index.pods = pods;
        index
    }

    /// The endpoint an address names.
    fn endpoint_of(&self, ip: IpAddr, pods: &HashMap<IpAddr, EndpointName>) -> EndpointName {
        let ip = ip.to_canonical();
        if let Some(pod) = pods.get(&ip) {
            pod.clone()
        } else if self.host.contains(&ip) {
            EndpointName::network(ip)
        } else {
            EndpointName::unknown()
        }
    }

    /// The workload of a Pod endpoint (from [`Self::source`] or [`Self::destination`]);
    /// `None` for anything that is not one workload's Pods.
    pub fn workload(&self, endpoint: &EndpointName) -> Option<&Workload> {
        if endpoint.kind != EndpointType::Wep {
            return None;
        }
        // A lookup by a borrowed pair would need a second map type; this runs once per entry.
        self.workloads
            .get(&(endpoint.name_aggr.clone(), endpoint.namespace.clone()))
    }

    /// The Services whose EndpointSlices hold `ip` (a request's source, say).
    pub fn services_at(&self, ip: IpAddr) -> &[ServiceRef] {
        self.services_at
            .get(&ip.to_canonical())
            .map_or(&[], Vec::as_slice)
    }

    /// The source of a request (Envoy's `downstream_remote_address`).
    pub fn source(&self, ip: Option<IpAddr>) -> EndpointName {
        match ip {
            Some(ip) => self.endpoint_of(ip, &self.pods),
            None => EndpointName::unknown(),
        }
    }

    /// The destination of a request (Envoy's `downstream_local_address`: the original
    /// destination).
    pub fn destination(&self, original: Option<SocketAddr>) -> Destination {
        let Some(original) = original else {
            return Destination {
                endpoint: EndpointName::unknown(),
                service: None,
            };
        };
        let at = (original.ip().to_canonical(), original.port());
        if let Some((service, endpoint)) = self.frontends.get(&at) {
            return Destination {
                endpoint: endpoint.clone(),
                service: Some(service.clone()),
            };
        }
        let service = self.endpoints.get(&at).cloned();
        let mut endpoint = self.endpoint_of(at.0, &self.pods);
        if let (EndpointType::Unknown, Some(s)) = (endpoint.kind, &service) {
            endpoint.name_aggr = s.service.name.clone();
            endpoint.namespace = s.service.namespace.clone();
        }
        Destination { endpoint, service }
    }
}

/// A Pod's aggregated name: its controlling owner's name with `-*`, or its own name.
pub fn aggregated_pod_name(pod: &Pod) -> String {
    let owners = pod.metadata.owner_references.as_deref().unwrap_or_default();
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first());
    match owner {
        Some(o) => format!("{}-*", o.name),
        None => pod.metadata.name.clone().unwrap_or_else(|| NONE.into()),
    }
}

/// A Pod's workload name, as Istio derives it: the controlling owner (else the first) with
/// what its controller appended removed: a ReplicaSet's pod-template hash (`web-7d9f8c6b5`
/// of Deployment `web` gives `web`) and a CronJob's Job suffix (`backup-29040480` gives
/// `backup`). Other owners (StatefulSet, DaemonSet, a bare ReplicaSet whose last part is not a
/// hash) are the workload; a Pod without owner is its own workload.
pub fn workload_name(pod: &Pod) -> Option<String> {
    let owners = pod.metadata.owner_references.as_deref().unwrap_or_default();
    let Some(owner) = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())
    else {
        return pod.metadata.name.clone();
    };
    let name = owner.name.as_str();
    let stripped = match (owner.kind.as_str(), name.rsplit_once('-')) {
        ("ReplicaSet", Some((base, hash))) if !base.is_empty() && is_template_hash(hash) => base,
        ("Job", Some((base, stamp)))
            if !base.is_empty()
                && !stamp.is_empty()
                && stamp.bytes().all(|b| b.is_ascii_digit()) =>
        {
            base
        }
        _ => name,
    };
    Some(stripped.to_string())
}

/// Whether `s` can be a pod-template hash: up to 10 characters of the alphabet Kubernetes
/// encodes it with (`rand.SafeEncodeString`: no vowels, no 0, 1 or 3), so that a ReplicaSet
/// named `web-api` keeps its name.
fn is_template_hash(s: &str) -> bool {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (1..=10).contains(&s.len()) && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// The first of `keys` among a Pod's labels.
fn label(pod: &Pod, keys: &[&str]) -> Option<String> {
    let labels = pod.metadata.labels.as_ref()?;
    keys.iter().find_map(|k| labels.get(*k)).cloned()
}

/// Workloads by the aggregated name and namespace of their Pods.
fn index_workloads<'a>(pods: impl Iterator<Item = &'a Pod>) -> HashMap<(String, String), Workload> {
    let mut out = HashMap::new();
    for pod in pods {
        let (Some(name), Some(namespace)) = (workload_name(pod), pod.metadata.namespace.clone())
        else {
            continue;
        };
        out.entry((aggregated_pod_name(pod), namespace.clone()))
            .or_insert_with(|| Workload {
                name,
                namespace,
                app: label(pod, &POD_LABELS_KEPT[..2]),
                version: label(pod, &POD_LABELS_KEPT[2..]),
            });
    }
    out
}

/// Whether an address is not on the public internet (the reference product's `pvt`).
pub fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let shared = Ipv4Addr::new(100, 64, 0, 0);
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || (u32::from(v4) & 0xffc0_0000) == u32::from(shared)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6 == Ipv6Addr::LOCALHOST || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Pods by address: running workloads only (host-networked Pods share the node's address, and
/// finished Pods' addresses may already be someone else's).
fn index_pods<'a>(pods: impl Iterator<Item = &'a Pod>) -> HashMap<IpAddr, EndpointName> {
    let mut by_ip: HashMap<IpAddr, (EndpointName, bool)> = HashMap::new();
    for pod in pods {
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            continue;
        }
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let running = phase == Some("Running");
        let endpoint = EndpointName {
            name_aggr: aggregated_pod_name(pod),
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| NONE.into()),
            kind: EndpointType::Wep,
        };
        let ips = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().map(|p| p.ip.clone()).collect::<Vec<_>>())
            .filter(|ips| !ips.is_empty())
            .or_else(|| status.and_then(|s| s.pod_ip.clone()).map(|ip| vec![ip]))
            .unwrap_or_default();
        for ip in ips.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()) {
            let ip = ip.to_canonical();
            // Two Pods with one address: a stale one not yet deleted; the running one wins.
            match by_ip.get(&ip) {
                Some((_, true)) if !running => {}
                _ => {
                    by_ip.insert(ip, (endpoint.clone(), running));
                }
            }
        }
    }
    by_ip.into_iter().map(|(ip, (e, _))| (ip, e)).collect()
}

/// The Pod an EndpointSlice endpoint refers to, named.
fn target_pod(store: &ObjectStore, target: Option<&ObjectReference>) -> Option<EndpointName> {
    let target = target?;
    if target.kind.as_deref() != Some("Pod") {
        return None;
    }
    let pod = store.pod(target.namespace.as_deref()?, target.name.as_deref()?)?;
    Some(EndpointName {
        name_aggr: aggregated_pod_name(pod),
        namespace: pod.metadata.namespace.clone()?,
        kind: EndpointType::Wep,
    })
}

/// The endpoint that stands for a Service's backends.
fn backend_endpoint(service: &ServiceRef, backends: Option<&[EndpointName]>) -> EndpointName {
    let backends = backends.unwrap_or_default();
    let distinct: HashSet<&EndpointName> = backends.iter().collect();
    if let [only] = distinct.into_iter().collect::<Vec<_>>()[..]
        && only.kind != EndpointType::Unknown
    {
        return only.clone();
    }
    let all_pods = !backends.is_empty() && backends.iter().all(|e| e.kind == EndpointType::Wep);
    EndpointName {
        name_aggr: service.name.clone(),
        namespace: service.namespace.clone(),
        kind: if all_pods {
            EndpointType::Wep
        } else {
            EndpointType::Unknown
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::{
        sources::{Kinds, manifests},
        store::Change,
    };

    const WORLD: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  externalIPs: [203.0.113.7]
  ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]
status: {loadBalancer: {ingress: [{ip: 198.51.100.1}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
  - {addresses: [10.244.1.5], conditions: {ready: true}}
  - addresses: [10.244.2.9]
    targetRef: {kind: Pod, namespace: shop, name: web-5f7c9-q8w2e}
  - {addresses: [10.244.3.3], conditions: {ready: false}}
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-5f7c9-x2x7q
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5f7c9, uid: u1, controller: true}]
status: {phase: Running, podIP: 10.244.1.5, podIPs: [{ip: 10.244.1.5}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-5f7c9-q8w2e
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5f7c9, uid: u1, controller: true}]
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata:
  name: frontend-7d9f8-abcde
  namespace: shop
  ownerReferences:
    - {apiVersion: v1, kind: Other, name: not-the-controller, uid: u0}
    - {apiVersion: apps/v1, kind: ReplicaSet, name: frontend-7d9f8, uid: u2, controller: true}
status: {phase: Running, podIP: 10.244.1.7}
---
apiVersion: v1
kind: Pod
metadata: {name: debug, namespace: tools}
status: {phase: Running, podIPs: [{ip: 10.244.1.8}, {ip: 'fd00::8'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: node-exporter-x, namespace: mon}
spec: {hostNetwork: true, containers: []}
status: {phase: Running, podIP: 192.168.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: old-job, namespace: batch}
status: {phase: Succeeded, podIP: 10.244.1.9}
";

    const HOST: [IpAddr; 2] = [
        IpAddr::V4(Ipv4Addr::new(192, 168, 0, 10)),
        IpAddr::V4(Ipv4Addr::new(34, 1, 2, 3)),
    ];

    fn store(text: &str) -> ObjectStore {
        let m = manifests::parse(text, Kinds::COLLECTOR).unwrap();
        let mut store = ObjectStore::default();
        store.apply(Change::ServicesReset(m.services));
        store.apply(Change::SlicesReset(m.slices));
        store.apply(Change::PodsReset(m.pods));
        store
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn sa(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn endpoint(name: &str, namespace: &str, kind: EndpointType) -> EndpointName {
        EndpointName {
            name_aggr: name.into(),
            namespace: namespace.into(),
            kind,
        }
    }

    fn web(port: u16) -> Option<ServicePort> {
        Some(ServicePort {
            service: ServiceRef {
                namespace: "shop".into(),
                name: "web".into(),
            },
            port,
        })
    }

    #[test]
    fn sources() {
        let index = NameIndex::build(&store(WORLD), &HOST);
        use EndpointType::*;
        assert_eq!(
            index.source(ip("10.244.1.7")),
            endpoint("frontend-7d9f8-*", "shop", Wep),
            "the controlling owner, not the first"
        );
        assert_eq!(
            index.source(ip("10.244.1.8")),
            endpoint("debug", "tools", Wep),
            "no owner"
        );
        assert_eq!(
            index.source(ip("fd00::8")),
            endpoint("debug", "tools", Wep),
            "dual stack"
        );
        assert_eq!(
            index.source(ip("::ffff:10.244.1.7")),
            endpoint("frontend-7d9f8-*", "shop", Wep),
            "IPv4-mapped"
        );
        assert_eq!(
            index.source(ip("192.168.0.10")),
            endpoint("pvt", "-", Net),
            "the host (a host-networked Pod is the host)"
        );
        assert_eq!(index.source(ip("34.1.2.3")), endpoint("pub", "-", Net));
        assert_eq!(
            index.source(ip("10.244.1.9")),
            EndpointName::unknown(),
            "a finished Pod"
        );
        assert_eq!(index.source(ip("10.1.1.1")), EndpointName::unknown());
        assert_eq!(index.source(None), EndpointName::unknown());
    }

    #[test]
    fn a_cluster_ip_names_the_service_and_its_backends() {
        let index = NameIndex::build(&store(WORLD), &HOST);
        let backends = endpoint("web-5f7c9-*", "shop", EndpointType::Wep);
        for front in ["10.96.0.10:80", "203.0.113.7:80", "198.51.100.1:80"] {
            let d = index.destination(sa(front));
            assert_eq!(d.service, web(80), "{front}");
            assert_eq!(
                d.endpoint, backends,
                "{front}: one owner behind the Service"
            );
        }
        let other_port = index.destination(sa("10.96.0.10:53"));
        assert_eq!(
            (other_port.service, other_port.endpoint),
            (None, EndpointName::unknown()),
            "UDP port"
        );
    }

    #[test]
    fn an_endpoint_address_names_its_pod_and_the_service_port() {
        let index = NameIndex::build(&store(WORLD), &HOST);
        let d = index.destination(sa("10.244.1.5:8080"));
        assert_eq!(d.service, web(80), "the Service port, not the target port");
        assert_eq!(
            d.endpoint,
            endpoint("web-5f7c9-*", "shop", EndpointType::Wep)
        );
        // Not ready, and no Pod known: still the Service's, named after it.
        let d = index.destination(sa("10.244.3.3:8080"));
        assert_eq!(d.service, web(80));
        assert_eq!(d.endpoint, endpoint("web", "shop", EndpointType::Unknown));
        // A Pod on a port that is not the Service's.
        let d = index.destination(sa("10.244.1.5:9999"));
        assert_eq!(d.service, None);
        assert_eq!(d.endpoint.name_aggr, "web-5f7c9-*");
        // The same address as a request's source, on any port: one of the Service's endpoints.
        let at = index.services_at("10.244.1.5".parse().unwrap());
        assert_eq!(at.len(), 1);
        assert_eq!(
            (at[0].namespace.as_str(), at[0].name.as_str()),
            ("shop", "web")
        );
        assert!(index.services_at("10.9.9.9".parse().unwrap()).is_empty());
    }

    #[test]
    fn mixed_or_unknown_backends_are_named_after_the_service() {
        let text = WORLD.replace(
            "  - {addresses: [10.244.3.3], conditions: {ready: false}}",
            "  - {addresses: [10.244.1.7]}",
        );
        let index = NameIndex::build(&store(&text), &HOST);
        let d = index.destination(sa("10.96.0.10:80"));
        assert_eq!(
            d.endpoint,
            endpoint("web", "shop", EndpointType::Wep),
            "two owners"
        );

        let text = WORLD.replace("{addresses: [10.244.1.5]", "{addresses: [10.9.9.9]");
        let index = NameIndex::build(&store(&text), &HOST);
        let d = index.destination(sa("10.96.0.10:80"));
        assert_eq!(
            d.endpoint,
            endpoint("web", "shop", EndpointType::Unknown),
            "one unknown"
        );
    }

    #[test]
    fn unknown_destinations() {
        let index = NameIndex::build(&store(WORLD), &HOST);
        let d = index.destination(sa("10.1.2.3:443"));
        assert_eq!((d.service, d.endpoint), (None, EndpointName::unknown()));
        let d = index.destination(sa("192.168.0.10:9100"));
        assert_eq!(d.endpoint, endpoint("pvt", "-", EndpointType::Net));
        assert_eq!(index.destination(None).endpoint, EndpointName::unknown());
    }

    #[test]
    fn private_addresses() {
        for private in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
            "::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2001:db8::1",
            "2600::1",
        ] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn workload_names_drop_what_controllers_append() {
        let pod = |owners: &str| -> Pod {
            let m = manifests::parse(
                &format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: p-x1, namespace: shop, ownerReferences: [{owners}]}}\n"
                ),
                Kinds::COLLECTOR,
            )
            .unwrap();
            m.pods.into_iter().next().unwrap()
        };
        let owner = |kind: &str, name: &str| {
            format!("{{apiVersion: v1, kind: {kind}, name: {name}, uid: u, controller: true}}")
        };
        for (kind, name, want) in [
            ("ReplicaSet", "web-7d9f8c6b5", "web"),
            ("ReplicaSet", "my-web-5f7c9", "my-web"),
            ("ReplicaSet", "web-api", "web-api"),
            ("ReplicaSet", "web", "web"),
            ("Job", "backup-29040480", "backup"),
            ("Job", "migrate-v2", "migrate-v2"),
            ("StatefulSet", "db-7d9f8", "db-7d9f8"),
            ("DaemonSet", "agent", "agent"),
        ] {
            assert_eq!(
                workload_name(&pod(&owner(kind, name))).as_deref(),
                Some(want),
                "{kind} {name}"
            );
        }
        assert_eq!(workload_name(&pod("")).as_deref(), Some("p-x1"), "no owner");
    }

    #[test]
    fn pod_endpoints_have_workloads() {
        let labelled = "---
apiVersion: v1
kind: Pod
metadata:
  name: api-6b8d5-x7k2p
  namespace: shop
  labels: {app: api, version: v2}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: api-6b8d5, uid: u9, controller: true}]
status: {phase: Running, podIP: 10.244.1.20}
";
        let index = NameIndex::build(&store(&format!("{WORLD}{labelled}")), &HOST);
        let workload = |name: &str, app: Option<&str>, version: Option<&str>| Workload {
            name: name.into(),
            namespace: "shop".into(),
            app: app.map(Into::into),
            version: version.map(Into::into),
        };
        assert_eq!(
            index.workload(&index.source(ip("10.244.1.20"))),
            Some(&workload("api", Some("api"), Some("v2")))
        );
        assert_eq!(
            index.workload(&index.source(ip("10.244.1.7"))),
            Some(&workload("frontend", None, None))
        );
        let through_service = index.destination(sa("10.96.0.10:80")).endpoint;
        assert_eq!(
            index.workload(&through_service),
            Some(&workload("web", None, None)),
            "the Service's backends are one Deployment's Pods"
        );
        assert_eq!(
            index.workload(&index.source(ip("192.168.0.10"))),
            None,
            "the host"
        );
        assert_eq!(index.workload(&EndpointName::unknown()), None);
    }
}
