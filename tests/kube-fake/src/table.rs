//! Server-side printing: the `meta.k8s.io/v1` `Table` that `kubectl get` asks for (Accept
//! `application/json;as=Table;...`), with the columns the real server prints for Services,
//! Pods and EndpointSlices, so `kubectl get svc` looks as an operator expects.

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::resource::Resource;

/// Whether an `Accept` header asks for a Table.
pub fn wanted(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    })
}

/// What rows carry of their object (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    /// Nothing.
    None,
    /// `metadata` only, as `PartialObjectMetadata` (the default, which kubectl uses for the
    /// NAMESPACE column).
    Metadata,
    /// The whole object.
    Object,
}

impl Include {
    /// From the `includeObject` query parameter.
    pub fn from_query(value: Option<&str>) -> Self {
        match value {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

fn column(name: &str, kind: &str, format: &str, priority: u8) -> Value {
    json!({"name": name, "type": kind, "format": format, "description": name, "priority": priority})
}

/// A Table of `objects` (of `resource`) at `resource_version`.
pub fn table(
    resource: Resource,
    objects: &[&Value],
    resource_version: u64,
    include: Include,
) -> Value {
    let name = column("Name", "string", "name", 0);
    let age = column("Age", "string", "", 0);
    let columns = match resource {
        Resource::Service => vec![
            name,
            column("Type", "string", "", 0),
            column("Cluster-IP", "string", "", 0),
            column("External-IP", "string", "", 0),
            column("Port(s)", "string", "", 0),
            age,
            column("Selector", "string", "", 1),
        ],
        Resource::Pod => vec![
            name,
            column("Ready", "string", "", 0),
            column("Status", "string", "", 0),
            column("Restarts", "string", "", 0),
            age,
            column("IP", "string", "", 1),
            column("Node", "string", "", 1),
            column("Nominated Node", "string", "", 1),
            column("Readiness Gates", "string", "", 1),
        ],
        Resource::EndpointSlice => vec![
            name,
            column("AddressType", "string", "", 0),
            column("Ports", "string", "", 0),
            column("Endpoints", "string", "", 0),
            age,
        ],
        Resource::CoreEvent | Resource::Event => vec![name, age],
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut row = json!({"cells": cells(resource, object)});
            match include {
                Include::None => {}
                Include::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": object["metadata"],
                    });
                }
                Include::Object => row["object"] = (*object).clone(),
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn list_at<'a>(object: &'a Value, pointer: &str) -> &'a [Value] {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn or_none(text: String, none: &str) -> String {
    if text.is_empty() {
        none.to_owned()
    } else {
        text
    }
}

fn cells(resource: Resource, object: &Value) -> Vec<Value> {
    let name = Value::from(str_at(object, "/metadata/name"));
    let age = Value::from(age(str_at(object, "/metadata/creationTimestamp")));
    match resource {
        Resource::Service => vec![
            name,
            str_at(object, "/spec/type").into(),
            or_none(str_at(object, "/spec/clusterIP").to_owned(), "<none>").into(),
            external_ip(object).into(),
            service_ports(object).into(),
            age,
            selector(object).into(),
        ],
        Resource::Pod => vec![
            name,
            pod_ready(object).into(),
            pod_status(object).into(),
            pod_restarts(object).to_string().into(),
            age,
            or_none(str_at(object, "/status/podIP").to_owned(), "<none>").into(),
            or_none(str_at(object, "/spec/nodeName").to_owned(), "<none>").into(),
            or_none(
                str_at(object, "/status/nominatedNodeName").to_owned(),
                "<none>",
            )
            .into(),
            readiness_gates(object).into(),
        ],
        Resource::EndpointSlice => vec![
            name,
            str_at(object, "/addressType").into(),
            slice_ports(object).into(),
            slice_endpoints(object).into(),
            age,
        ],
        Resource::CoreEvent | Resource::Event => vec![name, age],
    }
}

/// As kubectl's printer: external IPs, plus load-balancer ingress for a LoadBalancer.
fn external_ip(service: &Value) -> String {
    let mut ips: Vec<&str> = list_at(service, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match str_at(service, "/spec/type") {
        "ExternalName" => return str_at(service, "/spec/externalName").to_owned(),
        "LoadBalancer" => {
            let ingress = list_at(service, "/status/loadBalancer/ingress")
                .iter()
                .filter_map(|i| i.get("ip").or_else(|| i.get("hostname"))?.as_str());
            let mut all: Vec<&str> = ingress.collect();
            all.append(&mut ips);
            return or_none(all.join(","), "<pending>");
        }
        _ => {}
    }
    or_none(ips.join(","), "<none>")
}

/// `80/TCP,443:30443/TCP`.
fn service_ports(service: &Value) -> String {
    let ports: Vec<String> = list_at(service, "/spec/ports")
        .iter()
        .map(|p| {
            let port = &p["port"];
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            match p.get("nodePort") {
                Some(node_port) => format!("{port}:{node_port}/{protocol}"),
                None => format!("{port}/{protocol}"),
            }
        })
        .collect();
    or_none(ports.join(","), "<none>")
}

/// `app=web,tier=front`.
fn selector(service: &Value) -> String {
    let pairs: Vec<String> = service
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    or_none(pairs.join(","), "<none>")
}

/// `READY`: ready and running containers over the containers in the spec.
fn pod_ready(pod: &Value) -> String {
    let ready = list_at(pod, "/status/containerStatuses")
        .iter()
        .filter(|c| c["ready"] == true && c.pointer("/state/running").is_some())
        .count();
    format!("{ready}/{}", list_at(pod, "/spec/containers").len())
}

/// `STATUS`, as kubectl's printer derives it for the common cases: the phase, or the Pod's
/// reason, or a container's waiting or terminated reason (the first container's wins), or
/// `Terminating` once deletion started. Init containers are not looked at.
fn pod_status(pod: &Value) -> String {
    let mut status = match str_at(pod, "/status/reason") {
        "" => str_at(pod, "/status/phase"),
        reason => reason,
    };
    // Backwards, as kubectl does, so the first container's reason is the one left.
    for container in list_at(pod, "/status/containerStatuses").iter().rev() {
        for state in ["/state/waiting/reason", "/state/terminated/reason"] {
            let reason = str_at(container, state);
            if !reason.is_empty() {
                status = reason;
                break;
            }
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        status = "Terminating";
    }
    // A Pod without a phase prints an empty status, as with kubectl.
    status.to_owned()
}

/// `RESTARTS`: the containers' restarts, summed.
fn pod_restarts(pod: &Value) -> u64 {
    list_at(pod, "/status/containerStatuses")
        .iter()
        .filter_map(|c| c["restartCount"].as_u64())
        .sum()
}

/// `READINESS GATES`: how many of the gates' conditions are true, over the gates.
fn readiness_gates(pod: &Value) -> String {
    let gates = list_at(pod, "/spec/readinessGates");
    if gates.is_empty() {
        return "<none>".to_owned();
    }
    let conditions = list_at(pod, "/status/conditions");
    let met = gates
        .iter()
        .filter(|gate| {
            conditions
                .iter()
                .any(|c| c["type"] == gate["conditionType"] && c["status"] == "True")
        })
        .count();
    format!("{met}/{}", gates.len())
}

fn slice_ports(slice: &Value) -> String {
    let ports: Vec<String> = list_at(slice, "/ports")
        .iter()
        .map(|p| p.get("port").map_or("<unset>".to_owned(), Value::to_string))
        .collect();
    or_none(ports.join(","), "<unset>")
}

/// Up to three addresses, then how many more, as kubectl prints them.
fn slice_endpoints(slice: &Value) -> String {
    let addresses: Vec<&str> = list_at(slice, "/endpoints")
        .iter()
        .flat_map(|e| list_at(e, "/addresses"))
        .filter_map(Value::as_str)
        .collect();
    let shown = addresses[..addresses.len().min(3)].join(",");
    match addresses.len() {
        0 => "<unset>".to_owned(),
        n if n > 3 => format!("{shown} + {} more...", n - 3),
        _ => shown,
    }
}

/// The age of a timestamp, as Kubernetes prints durations.
fn age(created: &str) -> String {
    created.parse::<Timestamp>().map_or_else(
        |_| "<unknown>".to_owned(),
        |t| human_duration(Timestamp::now().as_second() - t.as_second()),
    )
}

/// Kubernetes' `duration.HumanDuration`.
fn human_duration(seconds: i64) -> String {
    let join = |big: i64, big_unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    let (minutes, hours) = (seconds / 60, seconds / 3600);
    match seconds {
        ..-1 => "<invalid>".to_owned(),
        -1 => "0s".to_owned(),
        0..120 => format!("{seconds}s"),
        _ if minutes < 10 => join(minutes, "m", seconds % 60, "s"),
        _ if minutes < 3 * 60 => format!("{minutes}m"),
        _ if hours < 8 => join(hours, "h", minutes % 60, "m"),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 24 * 8 => join(hours / 24, "d", hours % 24, "h"),
        _ if hours < 24 * 365 * 2 => format!("{}d", hours / 24),
        _ if hours < 24 * 365 * 8 => join(hours / 24 / 365, "y", hours / 24 % 365, "d"),
        _ => format!("{}y", hours / 24 / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;\
                       v=v1beta1;g=meta.k8s.io,application/json";
        assert!(wanted(kubectl));
        assert!(!wanted("application/json"));
        assert!(!wanted(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        ));
    }

    #[test]
    fn human_durations() {
        let cases = [
            (-5, "<invalid>"),
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (10 * 3600, "10h"),
            (3 * 86400 + 3600, "3d1h"),
            (100 * 86400, "100d"),
            (3 * 365 * 86400, "3y"),
            (9 * 365 * 86400, "9y"),
        ];
        for (seconds, want) in cases {
            assert_eq!(human_duration(seconds), want, "{seconds}s");
        }
    }

    #[test]
    fn pod_rows() {
        let pod = json!({
            "metadata": {"name": "web-5f7c9-q8w2e", "namespace": "shop"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "a"}, {"name": "b"}],
                     "readinessGates": [{"conditionType": "example.com/ready"}]},
            "status": {"phase": "Running", "podIP": "10.244.2.5",
                       "conditions": [{"type": "example.com/ready", "status": "True"}],
                       "containerStatuses": [
                           {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                           {"name": "b", "ready": false, "restartCount": 1,
                            "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
        });
        let pods = table(Resource::Pod, &[&pod], 7, Include::Metadata);
        assert_eq!(pods["columnDefinitions"].as_array().unwrap().len(), 9);
        let cells = &pods["rows"][0]["cells"];
        assert_eq!(cells[0], "web-5f7c9-q8w2e");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[4], "<unknown>");
        assert_eq!(cells[5], "10.244.2.5");
        assert_eq!(cells[6], "node-1");
        assert_eq!(cells[7], "<none>");
        assert_eq!(cells[8], "1/1");

        // A Pod as bare as tests write them: no spec, a phase and an IP.
        let bare = json!({
            "metadata": {"name": "client", "deletionTimestamp": "2020-01-01T00:00:00Z"},
            "status": {"phase": "Running", "podIP": "10.244.1.4"}
        });
        let pods = table(Resource::Pod, &[&bare], 7, Include::None);
        let cells = &pods["rows"][0]["cells"];
        assert_eq!(cells[1], "0/0");
        assert_eq!(cells[2], "Terminating");
        assert_eq!(cells[3], "0");
        assert_eq!((&cells[6], &cells[8]), (&json!("<none>"), &json!("<none>")));
        let pending = json!({"metadata": {"name": "new"}});
        let pods = table(Resource::Pod, &[&pending], 7, Include::None);
        assert_eq!(pods["rows"][0]["cells"][2], "");
    }

    #[test]
    fn service_and_slice_rows() {
        let service = json!({
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.2", "selector": {"app": "web"},
                     "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "nodePort": 30053, "protocol": "UDP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
        });
        let services = table(Resource::Service, &[&service], 7, Include::Metadata);
        assert_eq!(services["kind"], "Table");
        assert_eq!(services["columnDefinitions"].as_array().unwrap().len(), 7);
        let cells = &services["rows"][0]["cells"];
        assert_eq!(cells[1], "LoadBalancer");
        assert_eq!(cells[3], "192.0.2.1");
        assert_eq!(cells[4], "80/TCP,53:30053/UDP");
        assert_eq!(cells[6], "app=web");
        assert_eq!(services["rows"][0]["object"]["metadata"]["name"], "web");

        let slice = json!({
            "metadata": {"name": "web-1"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2", "10.0.0.3", "10.0.0.4"]}],
            "ports": [{"port": 8080}]
        });
        let slices = table(Resource::EndpointSlice, &[&slice], 7, Include::None);
        let cells = &slices["rows"][0]["cells"];
        assert_eq!(cells[2], "8080");
        assert_eq!(cells[3], "10.0.0.1,10.0.0.2,10.0.0.3 + 1 more...");
        assert_eq!(cells[4], "<unknown>");
        assert!(slices["rows"][0].get("object").is_none());
    }
}
