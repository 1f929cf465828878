//! Parsing a file of manifests: YAML or JSON, one object, a `List`, or a multi-document
//! stream, as `kubectl get svc -A -o yaml` prints. Pure.
//!
//! [`parse`] reads Services and EndpointSlices, and Pods only when [`Kinds::pods`] asks for them
//! (the collector's, for naming the sources and destinations of requests); every other kind is
//! ignored. So a Pod the daemon could not use can never make its file fail.

use std::{
    collections::{HashMap, hash_map::DefaultHasher},
    fmt,
    hash::{Hash as _, Hasher as _},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde_json::Value;

use super::Kinds;
use crate::k8s::yaml;

/// The objects a file holds.
#[derive(Debug, Default)]
pub struct Manifests {
    /// The Services.
    pub services: Vec<Service>,
    /// The EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// The Pods, when asked for (otherwise they are listed in `ignored`).
    pub pods: Vec<Pod>,
    /// Objects of other kinds, as `kind namespace/name`, ignored.
    pub ignored: Vec<String>,
}

/// Why a file could not be used; the last good state stays in force.
#[derive(Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// 1-based number of the (non-empty) document in a multi-document stream; 0 when the
    /// parser could not tell.
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
            None if self.document > 0 => write!(f, "document {}: {}", self.document, self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ManifestError {}

/// Parses `text`: Services, EndpointSlices, and Pods if `kinds` asks for them.
pub fn parse(text: &str, kinds: Kinds) -> Result<Manifests, ManifestError> {
    let documents = yaml::documents(text).map_err(|e| {
        let (message, position) = yaml::describe(&e);
        ManifestError {
            document: 0,
            position,
            message,
        }
    })?;
    let mut out = Manifests::default();
    // Empty documents (such as after a trailing `---`) are not in the list.
    for (index, value) in documents.into_iter().enumerate() {
        collect(value, index + 1, kinds, &mut out)?;
    }
    Ok(out)
}

impl Manifests {
    fn extend(&mut self, other: Manifests) {
        self.services.extend(other.services);
        self.slices.extend(other.slices);
        self.pods.extend(other.pods);
        self.ignored.extend(other.ignored);
    }
}

/// What changed between two versions of a file: the objects of the documents that went away
/// and of those that appeared (an edited document is both).
#[derive(Debug, Default)]
pub struct Delta {
    /// Objects of documents no longer in the file. Only their kind, namespace and name are
    /// filled in: all a deletion needs.
    pub removed: Manifests,
    /// Objects of documents new in the file.
    pub added: Manifests,
}

/// Which objects a document held, by kind and `(namespace, name)`: what must be deleted when
/// the document goes. Kept instead of the objects themselves, which the store already holds.
#[derive(Clone, Debug, Default)]
struct DocumentKeys {
    services: Vec<(Option<String>, Option<String>)>,
    slices: Vec<(Option<String>, Option<String>)>,
    pods: Vec<(Option<String>, Option<String>)>,
}

impl DocumentKeys {
    fn of(m: &Manifests) -> Self {
        fn keys<'a>(
            metas: impl Iterator<Item = &'a ObjectMeta>,
        ) -> Vec<(Option<String>, Option<String>)> {
            metas
                .map(|m| (m.namespace.clone(), m.name.clone()))
                .collect()
        }
        Self {
            services: keys(m.services.iter().map(|s| &s.metadata)),
            slices: keys(m.slices.iter().map(|s| &s.metadata)),
            pods: keys(m.pods.iter().map(|p| &p.metadata)),
        }
    }

    /// Objects standing for these keys, for deletion.
    fn tombstones(&self, out: &mut Manifests) {
        let meta = |(namespace, name): &(Option<String>, Option<String>)| ObjectMeta {
            namespace: namespace.clone(),
            name: name.clone(),
            ..ObjectMeta::default()
        };
        out.services.extend(self.services.iter().map(|k| Service {
            metadata: meta(k),
            ..Service::default()
        }));
        out.slices.extend(self.slices.iter().map(|k| EndpointSlice {
            metadata: meta(k),
            ..EndpointSlice::default()
        }));
        out.pods.extend(self.pods.iter().map(|k| Pod {
            metadata: meta(k),
            ..Pod::default()
        }));
    }
}

/// Parses one file over and over, re-parsing only the documents that changed: an edit to one
/// Service of a 10 000-Service stream parses one document, not 20 000. The result is always
/// what [`parse`] would say: when the split parse fails, the whole text is parsed again, so a
/// file that needs whole-stream parsing (directives) is merely slower, never read differently.
#[derive(Debug, Default)]
pub struct Reparser {
    kinds: Kinds,
    /// The documents of the last successful parse, by a hash of their text.
    documents: HashMap<u64, Arc<DocumentKeys>>,
}

impl Reparser {
    /// A reparser reading Services and EndpointSlices, and Pods if `kinds` asks for them.
    pub fn new(kinds: Kinds) -> Self {
        Self {
            kinds,
            documents: HashMap::new(),
        }
    }

    /// Parses `text` whole, and remembers its documents.
    pub fn parse(&mut self, text: &str) -> Result<Manifests, ManifestError> {
        let delta = self.reparse_from(text, HashMap::new())?;
        Ok(delta.added)
    }

    /// Parses `text` and says what changed since the last successful parse. On an error the
    /// last good state is kept.
    pub fn reparse(&mut self, text: &str) -> Result<Delta, ManifestError> {
        let previous = std::mem::take(&mut self.documents);
        match self.reparse_from(text, previous.clone()) {
            Ok(delta) => Ok(delta),
            Err(e) => {
                self.documents = previous;
                Err(e)
            }
        }
    }

    fn reparse_from(
        &mut self,
        text: &str,
        previous: HashMap<u64, Arc<DocumentKeys>>,
    ) -> Result<Delta, ManifestError> {
        let mut unseen = previous.clone();
        let mut delta = Delta::default();
        let mut current: HashMap<u64, Arc<DocumentKeys>> = HashMap::new();
        for document in split_documents(text) {
            let hash = hash_text(document);
            if current.contains_key(&hash) {
                continue; // the same text twice holds the same objects
            }
            let keys = match unseen.remove(&hash) {
                Some(known) => known,
                None => match parse(document, self.kinds) {
                    Ok(parsed) => {
                        let keys = Arc::new(DocumentKeys::of(&parsed));
                        delta.added.extend(parsed);
                        keys
                    }
                    // Maybe the split was wrong for this file: let the whole stream decide.
                    Err(_) => return self.whole(text, &previous),
                },
            };
            current.insert(hash, keys);
        }
        for gone in unseen.values() {
            gone.tombstones(&mut delta.removed);
        }
        self.documents = current;
        Ok(delta)
    }

    /// Parses the whole stream (its errors then carry the stream's own positions) and treats
    /// every object as changed.
    fn whole(
        &mut self,
        text: &str,
        previous: &HashMap<u64, Arc<DocumentKeys>>,
    ) -> Result<Delta, ManifestError> {
        let added = parse(text, self.kinds)?;
        let mut removed = Manifests::default();
        for document in previous.values() {
            document.tombstones(&mut removed);
        }
        // One entry standing for the whole text: the next edit parses it whole again.
        self.documents = HashMap::from([(hash_text(text), Arc::new(DocumentKeys::of(&added)))]);
        Ok(Delta { removed, added })
    }
}

fn hash_text(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Splits a stream before each document marker (`---` at the start of a line, alone or
/// followed by a space). A marker cannot occur inside a quoted scalar and ends any block
/// scalar, so this is where YAML itself splits. Each document keeps its marker line.
fn split_documents(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let is_marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r']));
        if is_marker && offset > start {
            out.push(&text[start..offset]);
            start = offset;
        }
        offset += line.len();
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

fn collect(
    value: Value,
    document: usize,
    kinds: Kinds,
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
                collect(item, document, kinds, out)?;
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
        "Pod" if kinds.pods => {
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

    fn parse_daemon(text: &str) -> Result<Manifests, ManifestError> {
        parse(text, Kinds::DAEMON)
    }

    fn parse_collector(text: &str) -> Result<Manifests, ManifestError> {
        parse(text, Kinds::COLLECTOR)
    }

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
        let m = parse_daemon(TWO_DOCS).unwrap();
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
        assert_eq!(parse_daemon(text).unwrap().services.len(), 2);
    }

    #[test]
    fn syntax_errors_carry_their_position() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n";
        let e = parse_daemon(text).unwrap_err();
        assert!(e.position.is_some(), "{e:?}");
        assert!(e.to_string().starts_with("line "), "{e}");
    }

    #[test]
    fn wrong_shapes_are_errors_that_name_the_object() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
                    spec: {ports: 80}\n";
        let e = parse_daemon(text).unwrap_err();
        assert!(e.message.contains("Service shop/web"), "{e}");
        assert!(parse_daemon("metadata: {name: x}\n").is_err(), "no kind");
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
        let daemon = parse_daemon(WITH_A_POD).unwrap();
        assert_eq!(daemon.services.len(), 1);
        assert!(daemon.pods.is_empty());
        assert_eq!(daemon.ignored, ["Pod shop/web-5f7c9-x2x7q"]);

        let collector = parse_collector(WITH_A_POD).unwrap();
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
        assert!(parse_daemon(text).is_ok());
        let e = parse_collector(text).unwrap_err();
        assert!(e.message.contains("Pod n/p"), "{e}");
    }

    fn names(m: &Manifests) -> Vec<String> {
        let mut v: Vec<String> = m
            .services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap_or_default())
            .chain(
                m.slices
                    .iter()
                    .map(|s| s.metadata.name.clone().unwrap_or_default()),
            )
            .collect();
        v.sort();
        v
    }

    #[test]
    fn documents_split_at_markers_only() {
        let text = "a: 1\n---\nb: |\n  --- not a marker\n--- # comment\nc: '---'\n----\nd: 1\n";
        let docs = split_documents(text);
        assert_eq!(
            docs,
            [
                "a: 1\n",
                "---\nb: |\n  --- not a marker\n",
                "--- # comment\nc: '---'\n----\nd: 1\n"
            ]
        );
        assert_eq!(docs.concat(), text);
    }

    #[test]
    fn a_reparse_reports_only_the_documents_that_changed() {
        let mut r = Reparser::new(Kinds::DAEMON);
        let first = r.parse(TWO_DOCS).unwrap();
        assert_eq!(names(&first), ["web", "web-1"]);
        let unchanged = r.reparse(TWO_DOCS).unwrap();
        assert!(names(&unchanged.added).is_empty() && names(&unchanged.removed).is_empty());

        let edited = TWO_DOCS.replace("clusterIP: 10.96.0.10", "clusterIP: 10.96.0.11");
        let d = r.reparse(&edited).unwrap();
        assert_eq!(
            (names(&d.removed), names(&d.added)),
            (vec!["web".into()], vec!["web".into()])
        );
        let added = &d.added.services[0];
        assert_eq!(
            added.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.0.11")
        );

        let without_slice = edited.replace("kind: EndpointSlice", "kind: ConfigMap");
        let d = r.reparse(&without_slice).unwrap();
        assert_eq!(names(&d.removed), ["web-1"]);
        assert!(d.added.slices.is_empty());
    }

    #[test]
    fn a_broken_reparse_keeps_the_last_good_documents_and_says_where() {
        let mut r = Reparser::new(Kinds::DAEMON);
        r.parse(TWO_DOCS).unwrap();
        let broken = format!("{TWO_DOCS}---\nkind: Service\nmetadata: {{name: [oops\n");
        let e = r.reparse(&broken).unwrap_err();
        assert!(
            e.position.is_some_and(|(line, _)| line >= 17),
            "positions are the file's: {e}"
        );
        let again = r.reparse(TWO_DOCS).unwrap();
        assert!(
            names(&again.added).is_empty(),
            "nothing changed since the last good parse"
        );
    }

    #[test]
    fn a_list_is_one_document() {
        let list = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: a, namespace: n}}\n";
        let mut r = Reparser::new(Kinds::DAEMON);
        assert_eq!(names(&r.parse(list).unwrap()), ["a"]);
        let d = r.reparse(&list.replace("name: a", "name: b")).unwrap();
        assert_eq!(
            (names(&d.removed), names(&d.added)),
            (vec!["a".into()], vec!["b".into()])
        );
    }

    #[test]
    fn empty_file_is_empty() {
        let m = parse_daemon("").unwrap();
        assert!(m.services.is_empty() && m.slices.is_empty());
    }
}
