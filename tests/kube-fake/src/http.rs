//! The routes: version and discovery, and list, watch, get, create, update, patch and delete
//! on the stored resources, all in JSON. Errors are `Status` objects, as clients expect.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, Query, Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use serde_json::{Value, json};

use super::{
    Shared, discovery,
    error::ApiError,
    patch::PatchType,
    resource::Resource,
    selector::Selector,
    store::{Part, rv_of},
    table::{self, Include},
    watch::{self, Start, WatchRequest},
};

/// The router of the whole API.
pub fn router(shared: Arc<Shared>) -> Router {
    let objects = any(objects);
    Router::new()
        .route("/version", get(|| async { ok(&discovery::version()) }))
        .route("/api", get(core_versions))
        .route("/apis", get(|| async { ok(&discovery::groups()) }))
        .route("/api/v1", get(|| async { group_version("v1") }))
        .route("/apis/{group}", get(named_group))
        .route(
            "/apis/{group}/{version}",
            get(
                |Path((group, version)): Path<(String, String)>| async move {
                    group_version(&format!("{group}/{version}"))
                },
            ),
        )
        .route("/api/v1/namespaces", get(namespaces))
        .route("/api/v1/namespaces/{ns}", get(namespace))
        .route("/api/v1/{plural}", objects.clone())
        .route("/api/v1/namespaces/{ns}/{plural}", objects.clone())
        .route("/api/v1/namespaces/{ns}/{plural}/{name}", objects.clone())
        .route(
            "/api/v1/namespaces/{ns}/{plural}/{name}/{sub}",
            objects.clone(),
        )
        .route("/apis/{group}/{version}/{plural}", objects.clone())
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{plural}",
            objects.clone(),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}",
            objects.clone(),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}/{sub}",
            objects,
        )
        .fallback(|| async { error(&ApiError::no_route()) })
        .layer(middleware::from_fn_with_state(shared.clone(), log))
        .with_state(shared)
}

/// Logs each request and its status to stderr when `KUBE_API_DEBUG` is set.
async fn log(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    if !shared.debug {
        return next.run(request).await;
    }
    let line = format!(
        "kube-api: {} {} accept={:?} content-type={:?}",
        request.method(),
        request.uri(),
        request.headers().get(header::ACCEPT),
        request.headers().get(header::CONTENT_TYPE),
    );
    let response = next.run(request).await;
    eprintln!("{line} -> {}", response.status());
    response
}

fn respond(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: &Value) -> Response {
    respond(StatusCode::OK, body)
}

fn error(error: &ApiError) -> Response {
    let code = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    respond(code, &error.status())
}

async fn core_versions(State(shared): State<Arc<Shared>>) -> Response {
    ok(&discovery::core_versions(&shared.addr.to_string()))
}

async fn named_group(Path(group): Path<String>) -> Response {
    discovery::group(&group).map_or_else(|| error(&ApiError::no_route()), |g| ok(&g))
}

fn group_version(group_version: &str) -> Response {
    discovery::resources(group_version).map_or_else(|| error(&ApiError::no_route()), |r| ok(&r))
}

/// Namespaces are not stored: those holding objects, and the ones every cluster has, exist.
fn namespace_names(shared: &Shared) -> Vec<String> {
    let mut names = shared.read(|store| store.namespaces());
    names.extend(["default", "kube-public", "kube-system"].map(String::from));
    names.into_iter().collect()
}

fn namespace_object(shared: &Shared, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "creationTimestamp": shared.started_at},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    })
}

async fn namespaces(State(shared): State<Arc<Shared>>) -> Response {
    let items: Vec<Value> = namespace_names(&shared)
        .iter()
        .map(|n| namespace_object(&shared, n))
        .collect();
    let resource_version = shared.read(|store| store.resource_version());
    ok(&json!({
        "apiVersion": "v1",
        "kind": "NamespaceList",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "items": items,
    }))
}

async fn namespace(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    if namespace_names(&shared).contains(&name) {
        ok(&namespace_object(&shared, &name))
    } else {
        error(&ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("namespaces \"{name}\" not found"),
            details: Some((name, "namespaces".to_owned())),
        })
    }
}

/// What a request on a stored resource is about.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    part: Part,
}

impl Target {
    fn from_path(params: &HashMap<String, String>) -> Result<Self, ApiError> {
        let param = |key: &str| params.get(key).cloned();
        let group = param("group").unwrap_or_default();
        let version = param("version").unwrap_or_else(|| "v1".to_owned());
        let plural = param("plural").unwrap_or_default();
        let resource =
            Resource::from_path(&group, &version, &plural).ok_or_else(ApiError::no_route)?;
        let part = match param("sub").as_deref() {
            None => Part::Main,
            Some("status") if resource.has_status() => Part::Status,
            Some(_) => return Err(ApiError::no_route()),
        };
        Ok(Self {
            resource,
            namespace: param("ns"),
            name: param("name"),
            part,
        })
    }

    /// The namespace, which requests on one object and creations need.
    fn namespace(&self) -> Result<&str, ApiError> {
        self.namespace
            .as_deref()
            .ok_or_else(|| ApiError::method_not_allowed("this needs a namespaced path"))
    }
}

async fn objects(
    State(shared): State<Arc<Shared>>,
    Path(params): Path<HashMap<String, String>>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = Target::from_path(&params).and_then(|target| {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let table = table::wanted(accept)
            .then(|| Include::from_query(query.get("includeObject").map(String::as_str)));
        let handle = Handler {
            shared,
            target,
            query,
            table,
        };
        match (method, handle.target.name.clone()) {
            (Method::GET, None) if is_true(handle.query.get("watch")) => handle.watch(),
            (Method::GET, None) => handle.list(),
            (Method::POST, None) => handle.create(&body),
            (Method::GET, Some(name)) => handle.get(&name),
            (Method::PUT, Some(name)) => handle.update(&name, &body),
            (Method::PATCH, Some(name)) => handle.patch(&name, &headers, &body),
            (Method::DELETE, Some(name)) if handle.target.part == Part::Main => {
                handle.delete(&name)
            }
            (method, _) => Err(ApiError::method_not_allowed(format!(
                "{method} is not supported here"
            ))),
        }
    });
    result.unwrap_or_else(|e| error(&e))
}

/// Kubernetes reads booleans in queries like Go's `strconv.ParseBool`.
fn is_true(value: Option<&String>) -> bool {
    matches!(
        value.map(String::as_str),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True")
    )
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

struct Handler {
    shared: Arc<Shared>,
    target: Target,
    query: HashMap<String, String>,
    /// Whether to answer reads with a Table (as `kubectl get` asks), and with what of the
    /// objects.
    table: Option<Include>,
}

impl Handler {
    fn selectors(&self) -> Result<(Selector, Selector), ApiError> {
        let text = |key: &str| self.query.get(key).map_or("", String::as_str);
        let labels = Selector::labels(text("labelSelector")).map_err(ApiError::bad_request)?;
        let fields = Selector::fields(text("fieldSelector")).map_err(ApiError::bad_request)?;
        Ok((labels, fields))
    }

    /// A list, in pages of `limit` objects when a client asks (kube-rs's watcher asks for 500
    /// at a time, so a large list is never one response), each page but the last with a
    /// [`Continue`] token. Tables (kubectl) come in one page.
    fn list(&self) -> Result<Response, ApiError> {
        let token = match self.query.get("continue").filter(|c| !c.is_empty()) {
            Some(text) => Some(Continue::parse(text).ok_or_else(|| {
                ApiError::bad_request(format!("invalid continue token {text:?}"))
            })?),
            None => None,
        };
        let limit = match self.table {
            Some(_) => None,
            None => self
                .query
                .get("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .filter(|&l| l > 0),
        };
        let (labels, fields) = self.selectors()?;
        let resource = self.target.resource;
        let (items, resource_version, more) = self.shared.read(|store| {
            let after = token
                .as_ref()
                .map(|t| (t.namespace.as_str(), t.name.as_str()));
            let mut matching = store
                .list_after(resource, self.target.namespace.as_deref(), after)
                .filter(|o| labels.matches(o) && fields.matches(o));
            let items: Vec<Value> = matching
                .by_ref()
                .take(limit.unwrap_or(usize::MAX))
                .cloned()
                .collect();
            let more = matching.next().is_some();
            let rv = token
                .as_ref()
                .map_or(store.resource_version(), |t| t.resource_version);
            (items, rv, more)
        });
        let next = more
            .then(|| {
                items
                    .last()
                    .map(|last| Continue::after(resource_version, last))
            })
            .flatten();
        if let Some(include) = self.table {
            let rows: Vec<&Value> = items.iter().collect();
            return Ok(ok(&table::table(
                resource,
                &rows,
                resource_version,
                include,
            )));
        }
        let mut metadata = json!({"resourceVersion": resource_version.to_string()});
        if let Some(next) = next {
            metadata["continue"] = json!(next.to_string());
        }
        Ok(ok(&json!({
            "apiVersion": resource.api_version(),
            "kind": format!("{}List", resource.kind()),
            "metadata": metadata,
            "items": items,
        })))
    }

    fn watch(&self) -> Result<Response, ApiError> {
        let (labels, fields) = self.selectors()?;
        let start =
            match self.query.get("resourceVersion").map(String::as_str) {
                _ if is_true(self.query.get("sendInitialEvents")) => {
                    Start::Initial { end_bookmark: true }
                }
                None | Some("" | "0") => Start::Initial {
                    end_bookmark: false,
                },
                Some(rv) => Start::After(rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?),
            };
        let timeout = match self.query.get("timeoutSeconds") {
            None => None,
            Some(seconds) => Some(Duration::from_secs(seconds.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid timeoutSeconds {seconds:?}"))
            })?)),
        };
        let request = WatchRequest {
            resource: self.target.resource,
            namespace: self.target.namespace.clone(),
            labels,
            fields,
            start,
            timeout,
            bookmarks: is_true(self.query.get("allowWatchBookmarks")),
            table: self.table,
        };
        let body: Body = watch::body(self.shared.clone(), request);
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response())
    }

    fn get(&self, name: &str) -> Result<Response, ApiError> {
        let namespace = self.target.namespace()?;
        let resource = self.target.resource;
        let object = self
            .shared
            .read(|store| store.get(resource, namespace, name).cloned())
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        Ok(match self.table {
            Some(include) => {
                // The Table of one object carries that object's resourceVersion.
                let resource_version = rv_of(&object).parse().unwrap_or(0);
                ok(&table::table(
                    resource,
                    &[&object],
                    resource_version,
                    include,
                ))
            }
            None => ok(&object),
        })
    }

    fn create(&self, body: &[u8]) -> Result<Response, ApiError> {
        let object = parse_body(body)?;
        let namespace = self.target.namespace()?;
        let created = self
            .shared
            .write(|store| store.create(self.target.resource, namespace, object))?;
        Ok(respond(StatusCode::CREATED, &created))
    }

    fn update(&self, name: &str, body: &[u8]) -> Result<Response, ApiError> {
        let object = parse_body(body)?;
        let namespace = self.target.namespace()?;
        let updated = self.shared.write(|store| {
            store.update(
                self.target.resource,
                namespace,
                name,
                self.target.part,
                object,
            )
        })?;
        Ok(ok(&updated))
    }

    fn patch(&self, name: &str, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        let (patch_type, patch) = match media_type {
            "application/merge-patch+json" => (PatchType::Merge, parse_body(body)?),
            "application/strategic-merge-patch+json" => {
                (PatchType::StrategicMerge, parse_body(body)?)
            }
            // YAML is a superset of JSON, so this reads either. Booleans are YAML 1.2's, as
            // the API server's (`n` and `yes` are strings).
            "application/apply-patch+yaml" => (
                PatchType::Apply,
                serde_saphyr::from_slice_with_options(body, {
                    let mut options = serde_saphyr::Options::default();
                    options.strict_booleans = true;
                    options
                })
                .map_err(|e| ApiError::bad_request(format!("invalid YAML body: {e}")))?,
            ),
            other => {
                return Err(ApiError::unsupported_media_type(format!(
                    "the patch type {other:?} is not supported by this test server"
                )));
            }
        };
        let namespace = self.target.namespace()?;
        let patched = self.shared.write(|store| {
            store.patch(
                self.target.resource,
                namespace,
                name,
                self.target.part,
                patch_type,
                &patch,
            )
        })?;
        Ok(ok(&patched))
    }

    fn delete(&self, name: &str) -> Result<Response, ApiError> {
        let namespace = self.target.namespace()?;
        let deleted = self
            .shared
            .write(|store| store.delete(self.target.resource, namespace, name))?;
        Ok(ok(&deleted))
    }
}

/// Where a paged list goes on: `RV/NAMESPACE/NAME`, the first page's resourceVersion and the
/// last object sent (neither a namespace nor a name can hold a `/`). Unlike the real server's,
/// later pages show the objects as they are now, not as they were at that resourceVersion; a
/// watch from it replays every change in between, so a client ends up in the same state.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Continue {
    resource_version: u64,
    namespace: String,
    name: String,
}

impl Continue {
    fn after(resource_version: u64, last: &Value) -> Self {
        let text = |key: &str| last["metadata"][key].as_str().unwrap_or("").to_owned();
        Self {
            resource_version,
            namespace: text("namespace"),
            name: text("name"),
        }
    }

    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, '/');
        Some(Self {
            resource_version: parts.next()?.parse().ok()?,
            namespace: parts.next()?.to_owned(),
            name: parts.next()?.to_owned(),
        })
    }
}

impl std::fmt::Display for Continue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.resource_version, self.namespace, self.name
        )
    }
}
