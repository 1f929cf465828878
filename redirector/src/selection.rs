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
    /// Destination → Service.
    pub destinations: BTreeMap<ServiceKey, ServiceRef>,
}

impl Desired {
    /// The selected Services.
    pub fn services(&self) -> BTreeSet<&ServiceRef> {
        self.destinations.values().collect()
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

/// Computes what to steer from all known Services and EndpointSlices.
pub fn desired<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    rules: &Rules,
) -> (Desired, Vec<Finding>) {
    let annotation = rules.annotation.as_str();
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
        let service = ServiceRef::of(svc);
        match service::verdict(svc, annotation) {
            Verdict::NotSelected => continue,
            Verdict::Invalid(value) => {
                findings.push(Finding::BadAnnotationValue { service, value });
                continue;
            }
            Verdict::Selected => {}
        }
        if service::is_external_name(svc) {
            findings.push(Finding::ExternalName { service });
            continue;
        }
        let mut mine: BTreeSet<SocketAddr> = BTreeSet::new();
        let frontends = service::frontend_ips(svc);
        for port in service::ports(svc) {
            if port.protocol != "TCP" {
                findings.push(Finding::NonTcpPort {
                    service: service.clone(),
                    port: port.number,
                    protocol: port.protocol.to_string(),
                });
                continue;
            }
            let Some(number) = port.tcp() else { continue };
            mine.extend(frontends.iter().map(|ip| SocketAddr::new(*ip, number)));
        }
        for slice in slices_of.get(&service).into_iter().flatten() {
            mine.extend(
                service::slice_endpoints(slice)
                    .into_iter()
                    .filter(|e| e.ready)
                    .map(|e| SocketAddr::new(e.ip, e.port)),
            );
        }
        for destination in mine {
            if let Some(reason) = rules.never_steered(destination) {
                findings.push(Finding::NeverSteered {
                    service: service.clone(),
                    destination,
                    reason,
                });
                continue;
            }
            let key = ServiceKey::tcp_addr(destination);
            match out.destinations.get(&key) {
                Some(kept) => findings.push(Finding::SharedDestination {
                    destination,
                    kept: kept.clone(),
                    also: service.clone(),
                }),
                None => {
                    out.destinations.insert(key, service.clone());
                }
            }
        }
    }
    (out, findings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::service::DEFAULT_ANNOTATION;
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
}
