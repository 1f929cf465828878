//! Parsing a file of manifests: YAML or JSON, one object, a `List`, or a multi-document
//! stream, as `kubectl get svc -A -o yaml` prints. Pure.
//!
//! [`parse`] (the daemon's) reads Services and EndpointSlices and ignores every other kind;
//! [`parse_with_pods`] (the collector's) reads Pods too, for naming the sources and
//! destinations of requests. The daemon keeps ignoring Pods, so a Pod it could not use can
//! never make its file fail.

use std::fmt;

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use serde::Deserialize as _;
use serde_json::Value;

/// The objects a file holds.
#[derive(Debug, Default)]
pub struct Manifests {
    /// The Services.
    pub services: Vec<Service>,
    /// The EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// The Pods (only from [`parse_with_pods`]; [`parse`] lists them in `ignored`).
    pub pods: Vec<Pod>,
    /// Objects of other kinds, as `kind namespace/name`, ignored.
    pub ignored: Vec<String>,
}

/// Why a file could not be used; the last good state stays in force.
#[derive(Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// 1-based document number in a multi-document stream.
    pub document: usize,
    /// 1-based line and column, when the parser knows them.
    pub position: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "line {line}, column {column}: {}", self.message),
            None => write!(f, "document {}: {}", self.document, self.message),
        }
    }
}

impl std::error::Error for ManifestError {}

/// Parses `text`: Services and EndpointSlices; Pods and other kinds are ignored.
pub fn parse(text: &str) -> Result<Manifests, ManifestError> {
    parse_kinds(text, false)
}

/// Parses `text`: Services, EndpointSlices and Pods.
pub fn parse_with_pods(text: &str) -> Result<Manifests, ManifestError> {
    parse_kinds(text, true)
}

fn parse_kinds(text: &str, with_pods: bool) -> Result<Manifests, ManifestError> {
    let mut out = Manifests::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = Value::deserialize(document).map_err(|e| ManifestError {
            document: number,
            position: e.location().map(|l| (l.line(), l.column())),
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue; // an empty document, such as after a trailing `---`
        }
        collect(value, number, with_pods, &mut out)?;
    }
    Ok(out)
}

fn collect(
    value: Value,
    document: usize,
    with_pods: bool,
    out: &mut Manifests,
) -> Result<(), ManifestError> {
    let err = |message: String| ManifestError {
        document,
        position: None,
        message,
    };
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| err("an object without `kind`".into()))?
        .to_string();
    let name = |v: &Value| {
        let meta = v.get("metadata");
        let field = |f: &str| {
            meta.and_then(|m| m.get(f))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        format!("{}/{}", field("namespace"), field("name"))
    };
    match kind.as_str() {
        // `List`, `ServiceList`, `EndpointSliceList`...
        k if k.ends_with("List") => {
            let Some(Value::Array(items)) = value.get("items").cloned() else {
                return Err(err(format!("a {kind} without `items`")));
            };
            for item in items {
                collect(item, document, with_pods, out)?;
            }
        }
        "Service" => {
            let what = name(&value);
            let svc: Service =
                serde_json::from_value(value).map_err(|e| err(format!("Service {what}: {e}")))?;
            out.services.push(svc);
        }
        "EndpointSlice" => {
            let what = name(&value);
            let slice: EndpointSlice = serde_json::from_value(value)
                .map_err(|e| err(format!("EndpointSlice {what}: {e}")))?;
            out.slices.push(slice);
        }
        "Pod" if with_pods => {
            let what = name(&value);
            let pod: Pod =
                serde_json::from_value(value).map_err(|e| err(format!("Pod {what}: {e}")))?;
            out.pods.push(pod);
        }
        other => out.ignored.push(format!("{other} {}", name(&value))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_DOCS: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.5]}]
ports: [{port: 8080}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other, namespace: shop}
---
";

    #[test]
    fn multi_document_yaml() {
        let m = parse(TWO_DOCS).unwrap();
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.slices.len(), 1);
        assert_eq!(m.ignored, ["ConfigMap shop/other"]);
    }

    #[test]
    fn a_list_in_json() {
        let text = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "n"}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b", "namespace": "n"}}
        ]}"#;
        assert_eq!(parse(text).unwrap().services.len(), 2);
    }

    #[test]
    fn syntax_errors_carry_their_position() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n";
        let e = parse(text).unwrap_err();
        assert!(e.position.is_some(), "{e:?}");
        assert!(e.to_string().starts_with("line "), "{e}");
    }

    #[test]
    fn wrong_shapes_are_errors_that_name_the_object() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
                    spec: {ports: 80}\n";
        let e = parse(text).unwrap_err();
        assert!(e.message.contains("Service shop/web"), "{e}");
        assert!(parse("metadata: {name: x}\n").is_err(), "no kind");
    }

    const WITH_A_POD: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-5f7c9-x2x7q
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5f7c9, uid: u1, controller: true}]
status: {podIP: 10.244.1.5, podIPs: [{ip: 10.244.1.5}]}
";

    #[test]
    fn pods_are_read_only_when_asked_for() {
        let daemon = parse(WITH_A_POD).unwrap();
        assert_eq!(daemon.services.len(), 1);
        assert!(daemon.pods.is_empty());
        assert_eq!(daemon.ignored, ["Pod shop/web-5f7c9-x2x7q"]);

        let collector = parse_with_pods(WITH_A_POD).unwrap();
        assert_eq!(collector.services.len(), 1);
        assert_eq!(collector.pods.len(), 1);
        assert!(collector.ignored.is_empty());
        let owner = &collector.pods[0]
            .metadata
            .owner_references
            .as_ref()
            .unwrap()[0];
        assert_eq!(owner.name, "web-5f7c9");
    }

    #[test]
    fn a_malformed_pod_never_fails_the_daemon() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: n}\nspec: 5\n";
        assert!(parse(text).is_ok());
        let e = parse_with_pods(text).unwrap_err();
        assert!(e.message.contains("Pod n/p"), "{e}");
    }

    #[test]
    fn empty_file_is_empty() {
        let m = parse("").unwrap();
        assert!(m.services.is_empty() && m.slices.is_empty());
    }
}
