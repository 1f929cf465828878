//! The in-memory object store of the test API server: objects by resource, namespace and name;
//! one global, monotonically increasing resourceVersion stamped on every write; a bounded
//! history of changes from which watches replay what they missed; and the write semantics
//! (create, update, patch, delete, defaults, preconditions, no-op writes).
//!
//! Pure data: no I/O, no locking, no notification (the server wraps it for that), so all of it
//! is unit tested here.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    ops::Bound,
};

use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::{
    error::ApiError,
    patch::{PatchType, merge_patch, strategic_merge_patch},
    resource::Resource,
};

/// What happened to an object, as a watch event `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl ChangeType {
    /// The watch event `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One write, as kept in the history.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The resourceVersion this write produced.
    pub resource_version: u64,
    /// The object's resource.
    pub resource: Resource,
    /// What happened.
    pub change: ChangeType,
    /// The object after the write (for a deletion: its last state, with the deletion's
    /// resourceVersion, as the real server sends it).
    pub object: Value,
    /// The object before a modification, so a filtered watch can tell an object that starts
    /// or stops matching its selector (sent as ADDED or DELETED).
    pub previous: Option<Value>,
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The object itself (PUT or PATCH on its path). Services and Pods have a status
    /// subresource, so their `status` is kept from before, as the real server does.
    Main,
    /// The `status` subresource: only `status` changes.
    Status,
    /// Everything, `status` included (for tests that set up state directly).
    All,
}

type Key = (Resource, String, String);

/// The store. See the module documentation.
#[derive(Debug)]
pub struct Store {
    resource_version: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Change>,
    history_limit: usize,
    /// Every change up to this resourceVersion has been dropped from the history.
    compacted: u64,
    next_cluster_ip: u32,
}

impl Store {
    /// An empty store that keeps at most `history_limit` changes for watches to replay.
    pub fn new(history_limit: usize) -> Self {
        Self {
            resource_version: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            next_cluster_ip: 1,
        }
    }

    /// The resourceVersion of the latest write.
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// One object.
    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(resource, namespace.to_owned(), name.to_owned()))
    }

    /// The objects of a resource, in one namespace or all, ordered by namespace and name.
    pub fn list(&self, resource: Resource, namespace: Option<&str>) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|((r, ns, _), _)| *r == resource && namespace.is_none_or(|want| want == ns))
            .map(|(_, object)| object)
            .collect()
    }

    /// The objects of a resource after `after` (namespace, name), in the order of
    /// [`list`](Self::list), found without walking the ones before it: a paged list of a large
    /// store costs each page its own size.
    pub fn list_after<'a>(
        &'a self,
        resource: Resource,
        namespace: Option<&'a str>,
        after: Option<(&str, &str)>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        let start = match after {
            Some((ns, name)) => Bound::Excluded((resource, ns.to_owned(), name.to_owned())),
            None => Bound::Included((resource, String::new(), String::new())),
        };
        self.objects
            .range((start, Bound::Unbounded))
            .take_while(move |((r, _, _), _)| *r == resource)
            .filter(move |((_, ns, _), _)| namespace.is_none_or(|want| want == ns))
            .map(|(_, object)| object)
    }

    /// Every namespace that holds an object.
    pub fn namespaces(&self) -> BTreeSet<String> {
        self.objects.keys().map(|(_, ns, _)| ns.clone()).collect()
    }

    /// Changes after `resource_version`, oldest first; 410 Expired when some of them are no
    /// longer kept.
    pub fn changes_since(
        &self,
        resource_version: u64,
    ) -> Result<impl Iterator<Item = &Change>, ApiError> {
        if resource_version < self.compacted {
            return Err(ApiError::expired(resource_version, self.compacted + 1));
        }
        let first = self
            .history
            .partition_point(|c| c.resource_version <= resource_version);
        Ok(self.history.range(first..))
    }

    /// Creates an object (POST): `namespace` is from the path; the object's own namespace, if
    /// set, must agree. `metadata.generateName` is honoured.
    pub fn create(
        &mut self,
        resource: Resource,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        set_identity(&mut object, resource, namespace)?;
        let meta = metadata(&mut object);
        if meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            let prefix = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
                .ok_or_else(|| {
                    ApiError::bad_request("metadata.name or generateName is required")
                })?;
            // Unique because resourceVersions never repeat.
            let name = format!("{prefix}{:05x}", self.resource_version + 1);
            meta.insert("name".to_owned(), Value::String(name));
        }
        let name = name_of(&object).to_owned();
        if self.get(resource, namespace, &name).is_some() {
            return Err(ApiError::already_exists(resource, &name));
        }
        let meta = metadata(&mut object);
        // The server owns these; a client's values are ignored, as a real server does.
        meta.remove("resourceVersion");
        meta.insert("uid".to_owned(), Value::String(self.new_uid()));
        meta.insert("creationTimestamp".to_owned(), Value::String(now()));
        set_defaults(resource, &mut object);
        if resource == Resource::Service {
            self.allocate_cluster_ip(&mut object);
        }
        resource.validate(&object)?;
        Ok(self.write(resource, ChangeType::Added, object, None))
    }

    /// Replaces an existing object (PUT). A non-empty `metadata.resourceVersion` in the body
    /// is a precondition (409 Conflict when stale).
    pub fn update(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
        part: Part,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        set_identity(&mut object, resource, namespace)?;
        if name_of(&object) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&object)
            )));
        }
        let existing = self
            .get(resource, namespace, name)
            .ok_or_else(|| ApiError::not_found(resource, name))?
            .clone();
        let precondition = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !precondition.is_empty() && precondition != rv_of(&existing) {
            return Err(ApiError::conflict(resource, name));
        }
        self.replace(resource, part, existing, object)
    }

    /// Patches an existing object (PATCH), or creates it for a server-side apply.
    pub fn patch(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
        part: Part,
        patch_type: PatchType,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        if !patch.is_object() {
            return Err(ApiError::bad_request("a patch must be a JSON object"));
        }
        let Some(existing) = self.get(resource, namespace, name).cloned() else {
            if patch_type == PatchType::Apply && part != Part::Status {
                let mut object = patch.clone();
                metadata(&mut object).insert("name".to_owned(), Value::String(name.to_owned()));
                return self.create(resource, namespace, object);
            }
            return Err(ApiError::not_found(resource, name));
        };
        let mut patched = existing.clone();
        match patch_type {
            PatchType::Merge | PatchType::Apply => merge_patch(&mut patched, patch),
            PatchType::StrategicMerge => strategic_merge_patch(&mut patched, patch),
        }
        // A resourceVersion in the patch is a precondition, as `kubectl annotate
        // --resource-version` uses it.
        if rv_of(&patched) != rv_of(&existing) {
            return Err(ApiError::conflict(resource, name));
        }
        if name_of(&patched) != name || namespace_of(&patched) != namespace {
            return Err(ApiError::bad_request(
                "metadata.name and namespace are immutable",
            ));
        }
        self.replace(resource, part, existing, patched)
    }

    /// Creates or replaces an object whatever its resourceVersion (for tests, like a
    /// controller that owns the object). The namespace defaults to `default`.
    pub fn apply(&mut self, object: Value) -> Result<Value, ApiError> {
        let resource = Resource::of(&object).ok_or_else(|| {
            ApiError::bad_request("apiVersion and kind must name a resource this server stores")
        })?;
        let mut object = object;
        let namespace = match namespace_of(&object) {
            "" => "default".to_owned(),
            ns => ns.to_owned(),
        };
        metadata(&mut object).insert("namespace".to_owned(), Value::String(namespace.clone()));
        match self.get(resource, &namespace, name_of(&object)).cloned() {
            None => self.create(resource, &namespace, object),
            Some(existing) => {
                set_identity(&mut object, resource, &namespace)?;
                self.replace(resource, Part::All, existing, object)
            }
        }
    }

    /// Deletes an object and returns its last state.
    pub fn delete(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let object = self
            .objects
            .remove(&(resource, namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        Ok(self.write(resource, ChangeType::Deleted, object, None))
    }

    /// Writes `new` over `existing`, keeping what the server owns; a write that changes
    /// nothing is not a write (no new resourceVersion, no watch event), as in Kubernetes.
    fn replace(
        &mut self,
        resource: Resource,
        part: Part,
        existing: Value,
        new: Value,
    ) -> Result<Value, ApiError> {
        let mut object = match part {
            Part::All => new,
            Part::Main if !resource.has_status() => new,
            // Its status subresource keeps `status` out of writes to the main resource.
            Part::Main => with_status_of(new, &existing),
            Part::Status => with_status_of(existing.clone(), &new),
        };
        set_defaults(resource, &mut object);
        if resource == Resource::Service {
            keep_cluster_ip(&existing, &mut object);
        }
        let meta = metadata(&mut object);
        for owned in ["uid", "creationTimestamp", "resourceVersion"] {
            match existing.pointer(&format!("/metadata/{owned}")) {
                Some(value) => meta.insert(owned.to_owned(), value.clone()),
                None => meta.remove(owned),
            };
        }
        // The real server drops empty maps (Go's omitempty), as when the last annotation is
        // removed.
        for map in ["annotations", "labels"] {
            if meta
                .get(map)
                .and_then(Value::as_object)
                .is_some_and(Map::is_empty)
            {
                meta.remove(map);
            }
        }
        if object == existing {
            return Ok(existing);
        }
        resource.validate(&object)?;
        Ok(self.write(resource, ChangeType::Modified, object, Some(existing)))
    }

    /// Stamps a new resourceVersion on `object`, stores it (unless deleted) and records the
    /// change.
    fn write(
        &mut self,
        resource: Resource,
        change: ChangeType,
        mut object: Value,
        previous: Option<Value>,
    ) -> Value {
        self.resource_version += 1;
        let rv = self.resource_version;
        metadata(&mut object).insert("resourceVersion".to_owned(), Value::String(rv.to_string()));
        if change != ChangeType::Deleted {
            let key = (
                resource,
                namespace_of(&object).to_owned(),
                name_of(&object).to_owned(),
            );
            self.objects.insert(key, object.clone());
        }
        self.history.push_back(Change {
            resource_version: rv,
            resource,
            change,
            object: object.clone(),
            previous,
        });
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.resource_version;
            }
        }
        object
    }

    /// A UUID-shaped uid; it encodes the creating resourceVersion, zero-padded, so uids sort
    /// in creation order.
    fn new_uid(&self) -> String {
        let n = self.resource_version + 1;
        format!("00000000-0000-4000-8000-{n:012x}")
    }

    /// Allocates a new Service's cluster IP (from 10.96.0.0/12; only ever a string here)
    /// unless it has one, is headless (`None`) or is an ExternalName.
    fn allocate_cluster_ip(&mut self, object: &mut Value) {
        let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        if spec.get("type").and_then(Value::as_str) == Some("ExternalName") {
            return;
        }
        let ip = match spec.get("clusterIP").and_then(Value::as_str) {
            Some(ip) if !ip.is_empty() => ip.to_owned(),
            _ => {
                let n = self.next_cluster_ip;
                self.next_cluster_ip += 1;
                format!("10.96.{}.{}", n / 254, n % 254 + 1)
            }
        };
        spec.insert("clusterIP".to_owned(), Value::String(ip.clone()));
        spec.entry("clusterIPs").or_insert_with(|| json!([ip]));
    }
}

/// The real server's defaults that clients rely on (kubectl's `describe` dereferences an
/// EndpointSlice port's name, for one): applied on every write, like the server's.
fn set_defaults(resource: Resource, object: &mut Value) {
    let default = |map: &mut Value, key: &str, value: Value| {
        if let Some(map) = map.as_object_mut() {
            map.entry(key).or_insert(value);
        }
    };
    match resource {
        Resource::Service => {
            let Some(spec) = object.get_mut("spec").filter(|s| s.is_object()) else {
                return;
            };
            default(spec, "type", json!("ClusterIP"));
            default(spec, "sessionAffinity", json!("None"));
            for port in spec
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                default(port, "protocol", json!("TCP"));
                let number = port.get("port").cloned().unwrap_or(Value::Null);
                default(port, "targetPort", number);
            }
        }
        Resource::EndpointSlice => {
            let ports = object.get_mut("ports").and_then(Value::as_array_mut);
            for port in ports.into_iter().flatten() {
                default(port, "name", json!(""));
                default(port, "protocol", json!("TCP"));
            }
        }
        // Tests give Pods the status their scenario needs (a phase, an IP); the server's own
        // defaults (restartPolicy, dnsPolicy, ...) are read by no client under test.
        Resource::Pod | Resource::CoreEvent | Resource::Event => {}
    }
}

/// A Service keeps its allocated cluster IP when an update leaves it out, as with the real
/// server (where it is immutable).
fn keep_cluster_ip(existing: &Value, object: &mut Value) {
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let unset = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    if unset {
        for field in ["clusterIP", "clusterIPs"] {
            if let Some(value) = existing.pointer(&format!("/spec/{field}")) {
                spec.insert(field.to_owned(), value.clone());
            }
        }
    }
}

/// `object` with the `status` of `from` (or none, if `from` has none).
fn with_status_of(mut object: Value, from: &Value) -> Value {
    if let Some(fields) = object.as_object_mut() {
        match from.get("status") {
            Some(status) => fields.insert("status".to_owned(), status.clone()),
            None => fields.remove("status"),
        };
    }
    object
}

/// Sets `apiVersion`, `kind` and `metadata.namespace`, rejecting a body that names another
/// resource or namespace than the request.
fn set_identity(object: &mut Value, resource: Resource, namespace: &str) -> Result<(), ApiError> {
    if !object.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    for (field, want) in [
        ("apiVersion", resource.api_version()),
        ("kind", resource.kind()),
    ] {
        match object.get(field).and_then(Value::as_str) {
            None | Some("") => object[field] = Value::String(want.to_owned()),
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "{field} {got:?} does not match the request's {want:?}"
                )));
            }
        }
    }
    let meta = metadata(object);
    match meta.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            meta.insert("namespace".to_owned(), Value::String(namespace.to_owned()));
        }
        Some(got) if got == namespace => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the \
                 request",
            ));
        }
    }
    Ok(())
}

/// `metadata` of an object (which callers have checked is an object), created if missing.
fn metadata(object: &mut Value) -> &mut Map<String, Value> {
    let meta = &mut object["metadata"];
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut()
        .expect("metadata was just made an object")
}

fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.name`, or "".
pub fn name_of(object: &Value) -> &str {
    meta_str(object, "name")
}

/// `metadata.namespace`, or "".
pub fn namespace_of(object: &Value) -> &str {
    meta_str(object, "namespace")
}

/// `metadata.resourceVersion`, or "".
pub fn rv_of(object: &Value) -> &str {
    meta_str(object, "resourceVersion")
}

/// Now, as Kubernetes writes timestamps.
pub fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ns: &str, name: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"port": 80}]}
        })
    }

    fn annotations(object: &Value) -> Value {
        object
            .pointer("/metadata/annotations")
            .cloned()
            .unwrap_or(Value::Null)
    }

    #[test]
    fn create_stamps_metadata_and_defaults_services() {
        let mut store = Store::new(10);
        let created = store
            .create(Resource::Service, "prod", service("", "web"))
            .unwrap();
        assert_eq!(rv_of(&created), "1");
        assert_eq!(namespace_of(&created), "prod");
        assert_eq!(
            created["metadata"]["uid"],
            "00000000-0000-4000-8000-000000000001"
        );
        assert!(
            created["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        assert_eq!(created["spec"]["type"], "ClusterIP");
        assert_eq!(created["spec"]["clusterIP"], "10.96.0.2");
        assert_eq!(created["spec"]["clusterIPs"], json!(["10.96.0.2"]));
        assert_eq!(
            created["spec"]["ports"],
            json!([{"port": 80, "protocol": "TCP", "targetPort": 80}])
        );
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "prod"},
            "addressType": "IPv4", "endpoints": [], "ports": [{"port": 8080}]
        });
        let slice = store.apply(slice).unwrap();
        assert_eq!(
            slice["ports"],
            json!([{"port": 8080, "name": "", "protocol": "TCP"}])
        );
        assert_eq!(store.get(Resource::Service, "prod", "web"), Some(&created));

        let err = store
            .create(Resource::Service, "prod", service("prod", "web"))
            .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "AlreadyExists"));
        let err = store
            .create(Resource::Service, "prod", service("other", "x"))
            .unwrap_err();
        assert_eq!(err.code, 400);
    }

    #[test]
    fn generate_name_and_validation() {
        let mut store = Store::new(10);
        let event = json!({"metadata": {"generateName": "web."}, "reason": "Tested"});
        let created = store.create(Resource::CoreEvent, "default", event).unwrap();
        assert_eq!(name_of(&created), "web.00001");
        assert_eq!(created["kind"], "Event");

        let bad = json!({"metadata": {"name": "x"}, "spec": {"ports": "not a list"}});
        let err = store.create(Resource::Service, "default", bad).unwrap_err();
        assert_eq!(err.code, 400, "{}", err.message);
        assert_eq!(store.resource_version(), 1, "a rejected write is no write");
    }

    #[test]
    fn patches_bump_the_version_unless_they_change_nothing() {
        let mut store = Store::new(10);
        store.apply(service("default", "web")).unwrap();
        let patch = json!({"metadata": {"annotations": {"projectcalico.org/l7-logging": "true"}}});
        let patched = store
            .patch(
                Resource::Service,
                "default",
                "web",
                Part::Main,
                PatchType::StrategicMerge,
                &patch,
            )
            .unwrap();
        assert_eq!(rv_of(&patched), "2");
        assert_eq!(
            annotations(&patched),
            json!({"projectcalico.org/l7-logging": "true"})
        );

        let same = store
            .patch(
                Resource::Service,
                "default",
                "web",
                Part::Main,
                PatchType::Merge,
                &patch,
            )
            .unwrap();
        assert_eq!(rv_of(&same), "2", "a no-op patch is not a write");

        let remove = json!({"metadata": {"annotations": {"projectcalico.org/l7-logging": null}}});
        let removed = store
            .patch(
                Resource::Service,
                "default",
                "web",
                Part::Main,
                PatchType::Merge,
                &remove,
            )
            .unwrap();
        assert_eq!(rv_of(&removed), "3");
        assert_eq!(annotations(&removed), Value::Null, "empty maps are dropped");

        let stale = json!({"metadata": {"resourceVersion": "2", "labels": {"a": "b"}}});
        let err = store
            .patch(
                Resource::Service,
                "default",
                "web",
                Part::Main,
                PatchType::Merge,
                &stale,
            )
            .unwrap_err();
        assert_eq!(err.reason, "Conflict");

        let err = store
            .patch(
                Resource::Service,
                "default",
                "gone",
                Part::Main,
                PatchType::Merge,
                &patch,
            )
            .unwrap_err();
        assert_eq!(err.status()["reason"], "NotFound");
        assert_eq!(err.status()["message"], "services \"gone\" not found");
    }

    #[test]
    fn apply_patch_creates_and_status_patches_touch_only_status() {
        let mut store = Store::new(10);
        let created = store
            .patch(
                Resource::Service,
                "default",
                "web",
                Part::Main,
                PatchType::Apply,
                &service("default", "web"),
            )
            .unwrap();
        assert_eq!(rv_of(&created), "1");
        let status = json!({"spec": {"type": "NodePort"}, "status": {"loadBalancer": {}}});
        let patched = store
            .patch(
                Resource::Service,
                "default",
                "web",
                Part::Status,
                PatchType::Merge,
                &status,
            )
            .unwrap();
        assert_eq!(patched["spec"]["type"], "ClusterIP");
        assert_eq!(patched["status"], json!({"loadBalancer": {}}));
        let main = json!({"spec": {"type": "NodePort"}, "status": null});
        let patched = store
            .patch(
                Resource::Service,
                "default",
                "web",
                Part::Main,
                PatchType::Merge,
                &main,
            )
            .unwrap();
        assert_eq!(patched["spec"]["type"], "NodePort");
        assert_eq!(
            patched["status"],
            json!({"loadBalancer": {}}),
            "status is a subresource"
        );
    }

    #[test]
    fn pods_are_stored_as_given_and_keep_status_on_main_writes() {
        let mut store = Store::new(10);
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-5f7c9-q8w2e", "namespace": "shop",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "web-5f7c9", "uid": "rs-uid",
                                              "controller": true}]},
            "status": {"phase": "Running", "podIP": "10.244.2.5"}
        });
        let created = store.apply(pod).unwrap();
        assert_eq!(rv_of(&created), "1");
        assert_eq!(created["status"]["podIP"], "10.244.2.5");
        assert!(created.get("spec").is_none(), "no defaults are made up");
        assert_eq!(store.list(Resource::Pod, Some("shop")), [&created]);
        assert!(store.list(Resource::Service, None).is_empty());
        assert!(store.namespaces().contains("shop"));

        // A write to the Pod itself cannot move it: status is a subresource.
        let labels =
            json!({"metadata": {"labels": {"app": "web"}}, "status": {"podIP": "1.2.3.4"}});
        let labelled = store
            .patch(
                Resource::Pod,
                "shop",
                "web-5f7c9-q8w2e",
                Part::Main,
                PatchType::Merge,
                &labels,
            )
            .unwrap();
        assert_eq!(labelled["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(labelled["status"]["podIP"], "10.244.2.5");
        let moved = json!({"metadata": {"labels": null}, "status": {"podIP": "10.244.2.6"}});
        let moved = store
            .patch(
                Resource::Pod,
                "shop",
                "web-5f7c9-q8w2e",
                Part::Status,
                PatchType::Merge,
                &moved,
            )
            .unwrap();
        assert_eq!(moved["status"]["podIP"], "10.244.2.6");
        assert_eq!(moved["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(rv_of(&moved), "3");

        let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                         "status": {"podIP": 7}});
        let err = store.apply(bad).unwrap_err();
        assert_eq!(err.code, 400, "{}", err.message);
        let deleted = store
            .delete(Resource::Pod, "shop", "web-5f7c9-q8w2e")
            .unwrap();
        assert_eq!(rv_of(&deleted), "4");
        let err = store
            .delete(Resource::Pod, "shop", "web-5f7c9-q8w2e")
            .unwrap_err();
        assert_eq!(err.message, "pods \"web-5f7c9-q8w2e\" not found");
    }

    #[test]
    fn update_checks_the_resource_version() {
        let mut store = Store::new(10);
        let mut web = store.apply(service("default", "web")).unwrap();
        web["metadata"]["labels"] = json!({"a": "b"});
        let updated = store
            .update(Resource::Service, "default", "web", Part::Main, web.clone())
            .unwrap();
        assert_eq!(rv_of(&updated), "2");
        let reapplied = store.apply(service("default", "web")).unwrap();
        assert_eq!(
            reapplied["spec"]["clusterIP"], web["spec"]["clusterIP"],
            "the IP is kept"
        );
        assert_eq!(updated["metadata"]["uid"], web["metadata"]["uid"]);
        let err = store
            .update(Resource::Service, "default", "web", Part::Main, web)
            .unwrap_err();
        assert_eq!(err.code, 409, "stale after the re-apply");
    }

    #[test]
    fn history_replays_and_expires() {
        let mut store = Store::new(3);
        store.apply(service("default", "a")).unwrap(); // 1
        store.apply(service("default", "b")).unwrap(); // 2
        let mut b = service("default", "b");
        b["metadata"]["labels"] = json!({"x": "y"});
        store.apply(b).unwrap(); // 3
        let deleted = store.delete(Resource::Service, "default", "a").unwrap(); // 4
        assert_eq!(rv_of(&deleted), "4");
        assert_eq!(store.list(Resource::Service, None).len(), 1);

        let changes: Vec<_> = store
            .changes_since(2)
            .unwrap()
            .map(|c| (c.resource_version, c.change, name_of(&c.object).to_owned()))
            .collect();
        assert_eq!(
            changes,
            [
                (3, ChangeType::Modified, "b".to_owned()),
                (4, ChangeType::Deleted, "a".to_owned())
            ]
        );
        let modified = store.changes_since(2).unwrap().next().unwrap();
        assert_eq!(rv_of(modified.previous.as_ref().unwrap()), "2");
        assert_eq!(
            store.changes_since(1).unwrap().count(),
            3,
            "1 is the oldest kept base"
        );
        let err = store.changes_since(0).err().unwrap();
        assert_eq!((err.code, err.reason), (410, "Expired"));
        assert_eq!(store.changes_since(4).unwrap().count(), 0);
    }
}
