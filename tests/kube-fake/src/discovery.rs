//! The static documents of version and discovery: `/version`, `/api`, `/apis`, `/api/v1` and
//! the group versions. Only the legacy (unaggregated) form is served: kubectl asks for the
//! aggregated form first and falls back when the answer is plain `application/json`.

use serde_json::{Value, json};

/// `/version`: a `version.Info` for Kubernetes 1.33, the API version k8s-openapi is built for.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "gitVersion": "v1.33.0",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// `/api`: the core group's versions.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

/// The named groups served, each with only `v1`.
const GROUPS: [&str; 2] = ["discovery.k8s.io", "events.k8s.io"];

/// `/apis`: the named groups.
pub fn groups() -> Value {
    let groups: Vec<Value> = GROUPS
        .iter()
        .map(|group| {
            let version = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
            json!({"name": group, "versions": [version], "preferredVersion": version})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/GROUP`: one named group.
pub fn group(name: &str) -> Option<Value> {
    let index = GROUPS.iter().position(|g| *g == name)?;
    let mut group = groups()["groups"][index].clone();
    group["kind"] = json!("APIGroup");
    group["apiVersion"] = json!("v1");
    Some(group)
}

/// An `APIResource` entry.
fn resource(
    name: &str,
    singular: &str,
    namespaced: bool,
    kind: &str,
    verbs: &[&str],
    short_names: &[&str],
) -> Value {
    let mut entry = json!({
        "name": name,
        "singularName": singular,
        "namespaced": namespaced,
        "kind": kind,
        "verbs": verbs,
    });
    if !short_names.is_empty() {
        entry["shortNames"] = json!(short_names);
    }
    entry
}

/// All verbs the store supports on its resources.
const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// `entry` in the `all` category, which `kubectl get all` lists.
fn in_all(mut entry: Value) -> Value {
    entry["categories"] = json!(["all"]);
    entry
}

/// `/api/v1` or `/apis/GROUP/v1`: the resources of a group version, or `None` if not served.
pub fn resources(group_version: &str) -> Option<Value> {
    let resources = match group_version {
        "v1" => vec![
            in_all(resource(
                "services",
                "service",
                true,
                "Service",
                &VERBS,
                &["svc"],
            )),
            resource(
                "services/status",
                "",
                true,
                "Service",
                &["get", "patch", "update"],
                &[],
            ),
            in_all(resource("pods", "pod", true, "Pod", &VERBS, &["po"])),
            resource(
                "pods/status",
                "",
                true,
                "Pod",
                &["get", "patch", "update"],
                &[],
            ),
            resource(
                "namespaces",
                "namespace",
                false,
                "Namespace",
                &["get", "list"],
                &["ns"],
            ),
            resource("events", "event", true, "Event", &VERBS, &["ev"]),
        ],
        "discovery.k8s.io/v1" => vec![resource(
            "endpointslices",
            "endpointslice",
            true,
            "EndpointSlice",
            &VERBS,
            &[],
        )],
        "events.k8s.io/v1" => vec![resource("events", "event", true, "Event", &VERBS, &["ev"])],
        _ => return None,
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::{
        apis::meta::v1::{APIGroup, APIGroupList, APIResourceList, APIVersions},
        version::Info,
    };

    use super::*;

    /// Every document decodes as its typed form, so clients that decode them strictly work.
    #[test]
    fn documents_decode_as_their_types() {
        serde_json::from_value::<Info>(version()).unwrap();
        serde_json::from_value::<APIVersions>(core_versions("127.0.0.1:1")).unwrap();
        let list: APIGroupList = serde_json::from_value(groups()).unwrap();
        assert_eq!(list.groups.len(), 2);
        let events: APIGroup = serde_json::from_value(group("events.k8s.io").unwrap()).unwrap();
        assert_eq!(events.name, "events.k8s.io");
        assert!(group("apps").is_none());
        for gv in ["v1", "discovery.k8s.io/v1", "events.k8s.io/v1"] {
            let list: APIResourceList = serde_json::from_value(resources(gv).unwrap()).unwrap();
            assert_eq!(list.group_version, gv);
        }
        let core: APIResourceList = serde_json::from_value(resources("v1").unwrap()).unwrap();
        let pods = core
            .resources
            .iter()
            .find(|r| r.name == "pods")
            .expect("pods are served");
        assert_eq!((pods.kind.as_str(), pods.namespaced), ("Pod", true));
        assert!(pods.verbs.iter().any(|v| v == "watch"));
        assert!(core.resources.iter().any(|r| r.name == "pods/status"));
        assert!(resources("apps/v1").is_none());
    }
}
