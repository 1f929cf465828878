//! From one access log entry and the names of its two ends to the labels of Istio's standard
//! metrics, and the opt-in route label. Pure.
//!
//! The label set is Istio's, so that its dashboards, alerts and Kiali's graph queries work
//! unchanged; Kiali drops a series that lacks a label it groups by, so every label is always
//! present and a value that is not known is `unknown`, as Istio writes it:
//!
//! - `reporter` is `source`: the node's Envoy sits on the client's side of the connection.
//! - `*_workload`, `*_workload_namespace`, `*_app`, `*_version`: the Pod's workload
//!   ([`Workload`]); anything that is not one workload's Pods (the host, an outside address, a
//!   Service whose backends are several workloads) is `unknown`.
//! - `*_principal` and `*_cluster` are `unknown` (no mesh identities, no cluster name), and
//!   `connection_security_policy` is `unknown`, as Istio's source reporter always says.
//! - `destination_service` is the Service's name in DNS (`web.shop.svc.cluster.local`), only
//!   when the client connected to a Service.
//! - `request_protocol` is `grpc` for gRPC calls (content type `application/grpc`), `http`
//!   for the HTTP chain's other entries and `tcp` for the others; `response_code` is Envoy's
//!   (`0` for TCP and for requests without response, as in Istio), `response_flags` Envoy's
//!   (`-` for none) and `grpc_response_status` the call's gRPC status (a failed call answers
//!   HTTP 200), `unknown` for anything that is not a gRPC call.
//!
//! The route label (off by default: paths are what makes a series count explode) is the
//! request path without query, with identifier-like segments replaced by `{id}`
//! ([`route_template`]), and at most `--metrics-max-routes` distinct values ([`RouteCap`]).

use std::{collections::HashSet, fmt};

use prometheus_client::encoding::{EncodeLabel as _, EncodeLabelSet, LabelSetEncoder};

use super::{
    names::{NameIndex, Workload},
    parse::{Entry, Kind},
    request::url_path,
};

/// A value that is not known, as Istio spells it.
pub const UNKNOWN: &str = "unknown";

/// The DNS suffix of Services (`destination_service`): Kubernetes' default cluster domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The route of the requests beyond the [`RouteCap`].
pub const OTHER_ROUTE: &str = "other";

/// The labels of one series: Istio's standard set, plus `route` when asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IstioLabels {
    /// `source_workload`.
    pub source_workload: String,
    /// `source_workload_namespace`.
    pub source_workload_namespace: String,
    /// `source_app`.
    pub source_app: String,
    /// `source_version`.
    pub source_version: String,
    /// `destination_workload`.
    pub destination_workload: String,
    /// `destination_workload_namespace`.
    pub destination_workload_namespace: String,
    /// `destination_app`.
    pub destination_app: String,
    /// `destination_version`.
    pub destination_version: String,
    /// `destination_service`: the Service's DNS name.
    pub destination_service: String,
    /// `destination_service_name`.
    pub destination_service_name: String,
    /// `destination_service_namespace`.
    pub destination_service_namespace: String,
    /// `request_protocol`: `grpc`, `http` or `tcp`.
    pub request_protocol: String,
    /// `grpc_response_status`: the gRPC status number, `unknown` when not a gRPC call.
    pub grpc_response_status: String,
    /// `response_code`.
    pub response_code: String,
    /// `response_flags`.
    pub response_flags: String,
    /// `route`, with `--metrics-route-label` only (and on HTTP entries only).
    pub route: Option<String>,
}

impl IstioLabels {
    /// Every label, in Istio's order, the constant ones included.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        let mut pairs = vec![
            ("reporter", "source"),
            ("source_workload", self.source_workload.as_str()),
            (
                "source_workload_namespace",
                self.source_workload_namespace.as_str(),
            ),
            ("source_principal", UNKNOWN),
            ("source_app", self.source_app.as_str()),
            ("source_version", self.source_version.as_str()),
            ("source_cluster", UNKNOWN),
            ("destination_workload", self.destination_workload.as_str()),
            (
                "destination_workload_namespace",
                self.destination_workload_namespace.as_str(),
            ),
            ("destination_principal", UNKNOWN),
            ("destination_app", self.destination_app.as_str()),
            ("destination_version", self.destination_version.as_str()),
            ("destination_service", self.destination_service.as_str()),
            (
                "destination_service_name",
                self.destination_service_name.as_str(),
            ),
            (
                "destination_service_namespace",
                self.destination_service_namespace.as_str(),
            ),
            ("destination_cluster", UNKNOWN),
            ("request_protocol", self.request_protocol.as_str()),
            ("response_code", self.response_code.as_str()),
            ("grpc_response_status", self.grpc_response_status.as_str()),
            ("response_flags", self.response_flags.as_str()),
            ("connection_security_policy", UNKNOWN),
        ];
        if let Some(route) = &self.route {
            pairs.push(("route", route.as_str()));
        }
        pairs
    }
}

impl EncodeLabelSet for IstioLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        for pair in self.pairs() {
            pair.encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// The labels of one entry, without route.
pub fn labels(entry: &Entry, names: &NameIndex) -> IstioLabels {
    let source = names.source(entry.source.map(|a| a.ip()));
    let destination = names.destination(entry.original_destination);
    let (source_workload, source_workload_namespace, source_app, source_version) =
        workload_labels(names.workload(&source));
    let (
        destination_workload,
        destination_workload_namespace,
        destination_app,
        destination_version,
    ) = workload_labels(names.workload(&destination.endpoint));
    let (destination_service, destination_service_name, destination_service_namespace) =
        match destination.service {
            Some(s) => (
                format!(
                    "{}.{}.svc.{CLUSTER_DOMAIN}",
                    s.service.name, s.service.namespace
                ),
                s.service.name,
                s.service.namespace,
            ),
            None => (UNKNOWN.into(), UNKNOWN.into(), UNKNOWN.into()),
        };
    IstioLabels {
        source_workload,
        source_workload_namespace,
        source_app,
        source_version,
        destination_workload,
        destination_workload_namespace,
        destination_app,
        destination_version,
        destination_service,
        destination_service_name,
        destination_service_namespace,
        request_protocol: match entry.kind {
            Kind::Http if entry.is_grpc() => "grpc",
            Kind::Http => "http",
            Kind::Tcp => "tcp",
        }
        .into(),
        grpc_response_status: match entry.grpc_call_status() {
            Some(status) => status.to_string(),
            None => UNKNOWN.into(),
        },
        response_code: match entry.kind {
            Kind::Http => entry.response_code.to_string(),
            Kind::Tcp => "0".into(),
        },
        response_flags: entry.response_flags.clone().unwrap_or_else(|| "-".into()),
        route: None,
    }
}

/// Workload name, namespace, app and version, `unknown` where not known.
fn workload_labels(workload: Option<&Workload>) -> (String, String, String, String) {
    let text = |v: Option<&String>| v.cloned().unwrap_or_else(|| UNKNOWN.into());
    match workload {
        Some(w) => (
            w.name.clone(),
            w.namespace.clone(),
            text(w.app.as_ref()),
            text(w.version.as_ref()),
        ),
        None => (
            UNKNOWN.into(),
            UNKNOWN.into(),
            UNKNOWN.into(),
            UNKNOWN.into(),
        ),
    }
}

/// A request path as a route: no query string or fragment, and each segment that looks like
/// an identifier replaced by `{id}`: a number (`/users/123`), a UUID, or a long hexadecimal
/// string (16 digits or more: hashes, object ids). `/users/123/orders?x=1` gives
/// `/users/{id}/orders`.
pub fn route_template(target: &str) -> String {
    url_path(target)
        .split('/')
        .map(|segment| {
            if is_identifier(segment) {
                "{id}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn is_identifier(segment: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let numeric = !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit());
    let uuid = segment.len() == 36
        && segment.split('-').map(str::len).eq([8, 4, 4, 4, 12])
        && hex(&segment.replace('-', ""));
    let long_hex = segment.len() >= 16 && hex(segment);
    numeric || uuid || long_hex
}

/// At most `max` distinct routes; the requests of any later one are [`OTHER_ROUTE`].
#[derive(Debug)]
pub struct RouteCap {
    max: usize,
    seen: HashSet<String>,
    capped: bool,
}

/// A route, and whether the cap was reached by it for the first time (for a one-time
/// warning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    /// The label's value.
    pub route: String,
    /// This is the first route turned into [`OTHER_ROUTE`].
    pub first_capped: bool,
}

impl RouteCap {
    /// A cap of `max` distinct routes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            seen: HashSet::new(),
            capped: false,
        }
    }

    /// The route label of a request to `target`.
    pub fn route(&mut self, target: &str) -> Routed {
        let route = route_template(target);
        if self.seen.contains(&route) {
            return Routed {
                route,
                first_capped: false,
            };
        }
        if self.seen.len() < self.max {
            self.seen.insert(route.clone());
            return Routed {
                route,
                first_capped: false,
            };
        }
        let first_capped = !self.capped;
        self.capped = true;
        Routed {
            route: OTHER_ROUTE.into(),
            first_capped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        collector::parse::parse_line,
        k8s::{
            sources::{Kinds, manifests},
            store::{Change, ObjectStore},
        },
    };

    const WORLD: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8000}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.77.2.2]}]
ports: [{port: 8000}]
---
apiVersion: v1
kind: Pod
metadata:
  name: client-6b8d5-x7k2p
  namespace: shop
  labels: {app: client, version: v1}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: client-6b8d5, uid: u1, controller: true}]
status: {podIP: 10.77.1.2}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-5f7c9-abcde
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5f7c9, uid: u2, controller: true}]
status: {podIP: 10.77.2.2}
";

    fn names() -> NameIndex {
        let m = manifests::parse(WORLD, Kinds::COLLECTOR).unwrap();
        let mut store = ObjectStore::default();
        store.apply(Change::ServicesReset(m.services));
        store.apply(Change::SlicesReset(m.slices));
        store.apply(Change::PodsReset(m.pods));
        NameIndex::build(&store, &["10.77.1.1".parse().unwrap()])
    }

    fn label<'a>(labels: &'a IstioLabels, name: &str) -> &'a str {
        labels
            .pairs()
            .into_iter()
            .find(|(k, _)| *k == name)
            .map_or("(absent)", |(_, v)| v)
    }

    #[test]
    fn an_http_request_from_a_pod_to_a_service() {
        let line = r#"{"type":"http","duration":9,"method":"GET","path":"/a?x=1","protocol":"HTTP/1.1","response_code":503,"response_flags":"UF","bytes_received":0,"bytes_sent":34,"downstream_remote_address":"10.77.1.2:40000","downstream_local_address":"10.96.0.10:80"}"#;
        let labels = labels(&parse_line(line).unwrap(), &names());
        let want = [
            ("reporter", "source"),
            ("source_workload", "client"),
            ("source_workload_namespace", "shop"),
            ("source_principal", "unknown"),
            ("source_app", "client"),
            ("source_version", "v1"),
            ("source_cluster", "unknown"),
            ("destination_workload", "web"),
            ("destination_workload_namespace", "shop"),
            ("destination_principal", "unknown"),
            ("destination_app", "unknown"),
            ("destination_version", "unknown"),
            ("destination_service", "web.shop.svc.cluster.local"),
            ("destination_service_name", "web"),
            ("destination_service_namespace", "shop"),
            ("destination_cluster", "unknown"),
            ("request_protocol", "http"),
            ("response_code", "503"),
            ("grpc_response_status", "unknown"),
            ("response_flags", "UF"),
            ("connection_security_policy", "unknown"),
        ];
        assert_eq!(labels.pairs(), want.to_vec());
    }

    #[test]
    fn a_tcp_connection_from_the_host_to_an_unknown_address() {
        let line = r#"{"type":"tcp","duration":100,"response_code":0,"response_flags":"-","bytes_received":5,"bytes_sent":6,"downstream_remote_address":"10.77.1.1:5000","downstream_local_address":"10.1.2.3:443"}"#;
        let labels = labels(&parse_line(line).unwrap(), &names());
        for name in [
            "source_workload",
            "source_workload_namespace",
            "source_app",
            "destination_workload",
            "destination_workload_namespace",
            "destination_service",
            "destination_service_name",
            "destination_service_namespace",
        ] {
            assert_eq!(label(&labels, name), "unknown", "{name}");
        }
        assert_eq!(label(&labels, "request_protocol"), "tcp");
        assert_eq!(label(&labels, "response_code"), "0");
        assert_eq!(label(&labels, "response_flags"), "-");
        assert_eq!(label(&labels, "route"), "(absent)");
    }

    /// A failed gRPC call answers HTTP 200: its status is in `grpc_response_status`.
    #[test]
    fn a_grpc_call_is_labelled_grpc_with_its_status() {
        let line = r#"{"type":"http","duration":3,"method":"POST","path":"/shop.Cart/Get","protocol":"HTTP/2","response_code":200,"content_type":"application/grpc","grpc_status":"5","downstream_remote_address":"10.77.1.2:40000","downstream_local_address":"10.96.0.10:80"}"#;
        let call = labels(&parse_line(line).unwrap(), &names());
        assert_eq!(label(&call, "request_protocol"), "grpc");
        assert_eq!(label(&call, "response_code"), "200");
        assert_eq!(label(&call, "grpc_response_status"), "5");
        // Envoy derives a gRPC status for plain HTTP too; it is not a gRPC call's.
        let line = r#"{"type":"http","duration":3,"method":"GET","path":"/","response_code":404,"grpc_status":"12","downstream_remote_address":"10.77.1.2:40000","downstream_local_address":"10.96.0.10:80"}"#;
        let plain = labels(&parse_line(line).unwrap(), &names());
        assert_eq!(label(&plain, "request_protocol"), "http");
        assert_eq!(label(&plain, "grpc_response_status"), "unknown");
    }

    #[test]
    fn labels_encode_in_the_text_format() {
        let line = r#"{"type":"http","duration":1,"response_code":200,"downstream_remote_address":"10.77.1.2:1","downstream_local_address":"10.96.0.10:80"}"#;
        let mut labels = labels(&parse_line(line).unwrap(), &names());
        labels.route = Some("/users/{id}".into());
        let family = prometheus_client::metrics::family::Family::<
            IstioLabels,
            prometheus_client::metrics::counter::Counter,
        >::default();
        family.get_or_create(&labels).inc();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("t", "t", family);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"t_total{reporter="source",source_workload="client","#),
            "{text}"
        );
        assert!(
            text.contains(r#",connection_security_policy="unknown",route="/users/{id}"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn routes_are_templated() {
        for (target, want) in [
            ("/", "/"),
            ("/users/123", "/users/{id}"),
            ("/users/123/orders/45?page=2", "/users/{id}/orders/{id}"),
            ("/o/3f2504e0-4f89-11d3-9a0c-0305e82c3301/x", "/o/{id}/x"),
            ("/blob/0123456789abcdef0123", "/blob/{id}"),
            ("/v2/abc", "/v2/abc"),
            ("/cafe", "/cafe"),
            ("/a//b/", "/a//b/"),
        ] {
            assert_eq!(route_template(target), want, "{target}");
        }
    }

    #[test]
    fn routes_beyond_the_cap_are_other_and_said_once() {
        let mut cap = RouteCap::new(2);
        assert_eq!(cap.route("/a/1").route, "/a/{id}");
        assert_eq!(cap.route("/b").route, "/b");
        assert_eq!(cap.route("/a/2").route, "/a/{id}", "a known route stays");
        let over = cap.route("/c");
        assert_eq!((over.route.as_str(), over.first_capped), ("other", true));
        let again = cap.route("/d");
        assert_eq!((again.route.as_str(), again.first_capped), ("other", false));
        assert_eq!(cap.route("/b").route, "/b");
    }
}
