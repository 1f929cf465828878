//! One access log entry with both ends named: what `observe` filters and prints. Pure.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::{
    collector::{
        names::{Destination, EndpointName, EndpointType, NameIndex},
        parse::{Entry, Kind},
    },
    k8s::service::ServiceRef,
};

/// A request (or a TCP connection), named.
#[derive(Debug, Clone)]
pub struct Flow {
    /// When it started, as Envoy wrote it.
    pub time: Option<String>,
    /// HTTP or TCP.
    pub kind: Kind,
    /// The client.
    pub source: EndpointName,
    /// The client's address.
    pub source_addr: Option<SocketAddr>,
    /// The Services whose endpoints include the client's address.
    pub source_services: Vec<ServiceRef>,
    /// Where the client was going.
    pub destination: Destination,
    /// The address it dialled (a Service's ClusterIP and port, say).
    pub original: Option<SocketAddr>,
    /// The method.
    pub method: Option<String>,
    /// The path, query string included.
    pub path: Option<String>,
    /// The status (0: no response).
    pub status: u16,
    /// Envoy's response flags, if any.
    pub flags: Option<String>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// Request body bytes (HTTP) or bytes from the client (TCP).
    pub bytes_in: u64,
    /// Response body bytes (HTTP) or bytes to the client (TCP).
    pub bytes_out: u64,
}

impl Flow {
    /// `entry` named by `names`.
    pub fn new(entry: Entry, names: &NameIndex) -> Self {
        Self {
            source: names.source(entry.source.map(|a| a.ip())),
            source_services: entry
                .source
                .map(|a| names.services_at(a.ip()).to_vec())
                .unwrap_or_default(),
            destination: names.destination(entry.original_destination),
            time: entry.start_time,
            kind: entry.kind,
            source_addr: entry.source,
            original: entry.original_destination,
            method: entry.method,
            path: entry.path,
            status: entry.response_code,
            flags: entry.response_flags,
            duration_ms: entry.duration_ms,
            bytes_in: entry.bytes_received,
            bytes_out: entry.bytes_sent,
        }
    }

    /// Whether it is an HTTP request.
    pub fn is_http(&self) -> bool {
        self.kind == Kind::Http
    }

    /// The client Pod's (namespace, aggregated name), if the client is a Pod.
    pub fn source_pod(&self) -> Option<(&str, &str)> {
        pod(&self.source)
    }

    /// The destination Pod's (namespace, aggregated name), if it is one.
    pub fn destination_pod(&self) -> Option<(&str, &str)> {
        pod(&self.destination.endpoint)
    }

    /// The destination Service's (namespace, name), if the client dialled one.
    pub fn service(&self) -> Option<(&str, &str)> {
        self.destination
            .service
            .as_ref()
            .map(|s| (s.service.namespace.as_str(), s.service.name.as_str()))
    }

    /// Every namespace either end is in.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut all = Vec::new();
        for e in [&self.source, &self.destination.endpoint] {
            if e.kind == EndpointType::Wep {
                all.push(e.namespace.as_str());
            }
        }
        if let Some((ns, _)) = self.service() {
            all.push(ns);
        }
        all
    }

    /// The client as printed: `namespace/name` when known, with its address.
    pub fn source_label(&self) -> String {
        label(pod(&self.source), self.source_addr)
    }

    /// The client without its port (which changes with every connection): `namespace/name`
    /// or the address.
    pub fn source_label_short(&self) -> String {
        match (pod(&self.source), self.source_addr) {
            (Some((ns, name)), _) => format!("{ns}/{name}"),
            (None, Some(a)) => a.ip().to_string(),
            (None, None) => "-".into(),
        }
    }

    /// The destination as printed: the Service (`namespace/name:port`) when the client
    /// dialled one, else the Pod, with the address dialled.
    pub fn destination_label(&self) -> String {
        match (&self.destination.service, self.original) {
            (Some(s), _) => format!("{}/{}:{}", s.service.namespace, s.service.name, s.port),
            (None, addr) => label(pod(&self.destination.endpoint), addr),
        }
    }

    /// The flow as one JSON object (`--output json`).
    pub fn to_json(&self) -> Value {
        let end = |e: &EndpointName, addr: Option<SocketAddr>| {
            json!({
                "namespace": (e.kind == EndpointType::Wep).then_some(&e.namespace),
                "name": (e.kind != EndpointType::Unknown).then_some(&e.name_aggr),
                "type": e.kind.as_str(),
                "address": addr.map(|a| a.to_string()),
            })
        };
        let mut destination = end(&self.destination.endpoint, self.original);
        if let Some(s) = &self.destination.service {
            destination["service"] = json!({
                "namespace": s.service.namespace,
                "name": s.service.name,
                "port": s.port,
            });
        }
        json!({
            "time": self.time,
            "type": self.kind.to_string(),
            "source": end(&self.source, self.source_addr),
            "destination": destination,
            "method": self.method,
            "path": self.path,
            "status": self.is_http().then_some(self.status),
            "response_flags": self.flags,
            "duration_ms": self.duration_ms,
            "bytes_received": self.bytes_in,
            "bytes_sent": self.bytes_out,
        })
    }
}

fn pod(e: &EndpointName) -> Option<(&str, &str)> {
    (e.kind == EndpointType::Wep).then_some((e.namespace.as_str(), e.name_aggr.as_str()))
}

fn label(pod: Option<(&str, &str)>, addr: Option<SocketAddr>) -> String {
    match (pod, addr) {
        (Some((ns, name)), Some(a)) => format!("{ns}/{name} ({a})"),
        (Some((ns, name)), None) => format!("{ns}/{name}"),
        (None, Some(a)) => a.to_string(),
        (None, None) => "-".into(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::collector::names::ServicePort;

    fn wep(namespace: &str, name: &str) -> EndpointName {
        EndpointName {
            name_aggr: name.into(),
            namespace: namespace.into(),
            kind: EndpointType::Wep,
        }
    }

    /// shop/client-7d9f-* calling the Service shop/web (ClusterIP 10.96.0.10:80), answered by
    /// a web Pod.
    pub(crate) fn flow(method: &str, path: &str, status: u16) -> Flow {
        Flow {
            time: Some("2026-12-01T10:00:00.123Z".into()),
            kind: Kind::Http,
            source: wep("shop", "client-7d9f-*"),
            source_addr: Some("10.77.1.2:43210".parse().unwrap()),
            source_services: vec![ServiceRef {
                namespace: "shop".into(),
                name: "client".into(),
            }],
            destination: Destination {
                endpoint: wep("shop", "web-5f7c9-*"),
                service: Some(ServicePort {
                    service: ServiceRef {
                        namespace: "shop".into(),
                        name: "web".into(),
                    },
                    port: 80,
                }),
            },
            original: Some("10.96.0.10:80".parse().unwrap()),
            method: Some(method.into()),
            path: Some(path.into()),
            status,
            flags: None,
            duration_ms: 3,
            bytes_in: 0,
            bytes_out: 42,
        }
    }

    /// A plain TCP connection from the host to an unknown address.
    pub(crate) fn tcp_flow() -> Flow {
        Flow {
            time: Some("2026-12-01T10:00:01.000Z".into()),
            kind: Kind::Tcp,
            source: EndpointName::unknown(),
            source_addr: Some("10.77.1.1:50000".parse().unwrap()),
            source_services: Vec::new(),
            destination: Destination {
                endpoint: EndpointName::unknown(),
                service: None,
            },
            original: Some("10.0.0.9:5432".parse().unwrap()),
            method: None,
            path: None,
            status: 0,
            flags: None,
            duration_ms: 1200,
            bytes_in: 16,
            bytes_out: 124,
        }
    }

    #[test]
    fn labels_name_what_is_known() {
        let f = flow("GET", "/", 200);
        assert_eq!(f.source_label(), "shop/client-7d9f-* (10.77.1.2:43210)");
        assert_eq!(f.destination_label(), "shop/web:80");
        assert_eq!(f.namespaces(), ["shop", "shop", "shop"]);
        let t = tcp_flow();
        assert_eq!(t.source_label(), "10.77.1.1:50000");
        assert_eq!(t.destination_label(), "10.0.0.9:5432");
        assert!(t.namespaces().is_empty());
    }
}
