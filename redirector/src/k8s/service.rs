//! The Service model, once for everyone: which Service an EndpointSlice belongs to, the
//! addresses a Service is reached at before translation (its front ends), its ports, the
//! endpoints of its slices, and what the selecting annotation says. The daemon's selection and
//! the collector's naming both read Services through here, so they cannot disagree about what
//! a Service is. Pure.

use std::{collections::BTreeSet, fmt, net::IpAddr};

use k8s_openapi::api::{
    core::v1::{ObjectReference, Service},
    discovery::v1::EndpointSlice,
};

/// The default annotation key, as the reference product's users know it.
pub const DEFAULT_ANNOTATION: &str = "projectcalico.org/l7-logging";

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service's namespace and name.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceRef {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl ServiceRef {
    /// The reference of a Service object.
    pub fn of(svc: &Service) -> Self {
        Self {
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            name: svc.metadata.name.clone().unwrap_or_default(),
        }
    }

    /// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label, in the
    /// slice's namespace); `None` for a slice of no Service.
    pub fn owner_of(slice: &EndpointSlice) -> Option<Self> {
        let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        Some(Self {
            namespace: slice.metadata.namespace.clone().unwrap_or_default(),
            name: name.clone(),
        })
    }
}

/// What the selecting annotation says about a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `true`.
    Selected,
    /// Absent or `false`.
    NotSelected,
    /// Any other value, which selects nothing and is reported.
    Invalid(String),
}

/// Reads the annotation `annotation` of `svc`.
pub fn verdict(svc: &Service, annotation: &str) -> Verdict {
    match svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotation))
        .map(String::as_str)
    {
        None | Some("false") => Verdict::NotSelected,
        Some("true") => Verdict::Selected,
        Some(other) => Verdict::Invalid(other.to_string()),
    }
}

/// Whether the Service is of type ExternalName: a DNS alias, with no address of its own.
pub fn is_external_name(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName")
}

/// Every address a client reaches the Service at before any translation: its ClusterIPs, its
/// external IPs and its load balancers' ingress IPs. IPv4-mapped addresses are given as IPv4;
/// `None` (headless), `""` (not allocated) and host names are not addresses and are left out.
pub fn frontend_ips(svc: &Service) -> BTreeSet<IpAddr> {
    let mut texts: Vec<&str> = Vec::new();
    if let Some(spec) = &svc.spec {
        texts.extend(spec.cluster_ips.iter().flatten().map(String::as_str));
        texts.extend(spec.cluster_ip.as_deref());
        texts.extend(spec.external_ips.iter().flatten().map(String::as_str));
    }
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    texts.extend(
        ingress
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()),
    );
    texts
        .into_iter()
        .filter_map(|t| t.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect()
}

/// One port of a Service's spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port<'a> {
    /// Its name; `""` when unnamed.
    pub name: &'a str,
    /// The port number as written (the API allows nothing outside 1–65535, a file might).
    pub number: i32,
    /// `TCP` (the default), `UDP` or `SCTP`.
    pub protocol: &'a str,
}

impl Port<'_> {
    /// The port number, if this is a TCP port with a usable number.
    pub fn tcp(&self) -> Option<u16> {
        if self.protocol != "TCP" {
            return None;
        }
        u16::try_from(self.number).ok().filter(|&n| n != 0)
    }
}

/// The ports of a Service's spec, in order.
pub fn ports(svc: &Service) -> impl Iterator<Item = Port<'_>> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| Port {
            name: p.name.as_deref().unwrap_or(""),
            number: p.port,
            protocol: p.protocol.as_deref().unwrap_or("TCP"),
        })
}

/// The number of the Service's TCP port called `name` (an unnamed slice port matches the
/// unnamed Service port): how a slice's target port maps back to the Service port.
pub fn tcp_port_named(svc: &Service, name: Option<&str>) -> Option<u16> {
    let wanted = name.unwrap_or("");
    ports(svc).find(|p| p.name == wanted).and_then(|p| p.tcp())
}

/// One address and TCP port of an EndpointSlice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SliceEndpoint<'a> {
    /// The address (IPv4-mapped addresses given as IPv4).
    pub ip: IpAddr,
    /// The endpoint port.
    pub port: u16,
    /// The name of the slice port, which names the Service port it serves.
    pub port_name: Option<&'a str>,
    /// Whether the endpoint may receive new traffic. An unknown readiness counts as ready, as
    /// the EndpointSlice API asks consumers to.
    pub ready: bool,
    /// The object behind the endpoint (usually its Pod).
    pub target: Option<&'a ObjectReference>,
}

/// Every address × TCP port of a slice, ready or not. FQDN slices and addresses that do not
/// parse give nothing.
pub fn slice_endpoints(slice: &EndpointSlice) -> Vec<SliceEndpoint<'_>> {
    if slice.address_type == "FQDN" {
        return Vec::new();
    }
    let ports: Vec<(u16, Option<&str>)> = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let number = p.port.and_then(|n| u16::try_from(n).ok())?;
            Some((number, p.name.as_deref()))
        })
        .collect();
    let mut out = Vec::new();
    for endpoint in &slice.endpoints {
        let ready = endpoint
            .conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(true);
        for ip in endpoint
            .addresses
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok())
        {
            out.extend(ports.iter().map(|&(port, port_name)| SliceEndpoint {
                ip: ip.to_canonical(),
                port,
                port_name,
                ready,
                target: endpoint.target_ref.as_ref(),
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("valid Service")
    }

    #[test]
    fn annotation_verdicts() {
        let with = |value: Option<&str>| {
            let mut meta = json!({"name": "web", "namespace": "shop"});
            if let Some(v) = value {
                meta["annotations"] = json!({ DEFAULT_ANNOTATION: v });
            }
            verdict(&svc(json!({"metadata": meta})), DEFAULT_ANNOTATION)
        };
        assert_eq!(with(None), Verdict::NotSelected);
        assert_eq!(with(Some("false")), Verdict::NotSelected);
        assert_eq!(with(Some("true")), Verdict::Selected);
        assert_eq!(with(Some("True")), Verdict::Invalid("True".into()));
        assert_eq!(with(Some("")), Verdict::Invalid(String::new()));
    }

    #[test]
    fn front_ends_are_every_address_before_translation() {
        let s = svc(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                     "externalIPs": ["192.0.2.7", "::ffff:192.0.2.8"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"},
                                                    {"hostname": "lb.example.com"}]}}
        }));
        let ips: Vec<String> = frontend_ips(&s).iter().map(IpAddr::to_string).collect();
        assert_eq!(
            ips,
            [
                "10.96.0.10",
                "192.0.2.7",
                "192.0.2.8",
                "198.51.100.1",
                "fd00:96::10"
            ]
        );
        let headless = svc(json!({"spec": {"clusterIP": "None", "clusterIPs": ["None"]}}));
        assert!(frontend_ips(&headless).is_empty());
    }

    #[test]
    fn ports_and_their_names() {
        let s = svc(json!({"spec": {"ports": [
            {"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "bad", "port": 70000}
        ]}}));
        let tcp: Vec<Option<u16>> = ports(&s).map(|p| p.tcp()).collect();
        assert_eq!(tcp, [Some(80), None, None]);
        assert_eq!(tcp_port_named(&s, Some("http")), Some(80));
        assert_eq!(tcp_port_named(&s, Some("dns")), None, "not TCP");
        assert_eq!(tcp_port_named(&s, None), None, "no unnamed port");
    }

    #[test]
    fn slice_endpoints_are_addresses_times_tcp_ports() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "shop",
                         "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                {"addresses": ["10.244.2.6"], "targetRef": {"kind": "Pod", "name": "p"}},
                {"addresses": ["10.244.3.7"], "conditions": {"ready": false}},
                {"addresses": ["not-an-ip"]}
            ],
            "ports": [{"name": "http", "port": 8080}, {"port": 9090, "protocol": "SCTP"}]
        }))
        .unwrap();
        let owner = ServiceRef::owner_of(&slice).unwrap();
        assert_eq!(owner.to_string(), "shop/web");
        let eps = slice_endpoints(&slice);
        let seen: Vec<(String, u16, bool)> = eps
            .iter()
            .map(|e| (e.ip.to_string(), e.port, e.ready))
            .collect();
        assert_eq!(
            seen,
            [
                ("10.244.1.5".into(), 8080, true),
                ("10.244.2.6".into(), 8080, true),
                ("10.244.3.7".into(), 8080, false),
            ]
        );
        assert_eq!(eps[0].port_name, Some("http"));
        assert_eq!(eps[1].target.and_then(|t| t.name.as_deref()), Some("p"));
    }
}
