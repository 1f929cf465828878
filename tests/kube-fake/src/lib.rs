//! A test fixture: a small Kubernetes API server, in memory, over plain HTTP on 127.0.0.1.
//! It is not a Kubernetes API server: it speaks the real wire protocol for exactly what the
//! redirector's daemon (kube-rs watchers on Services and EndpointSlices, and its Event
//! recorder), its collector (the same watchers, and one on Pods) and `kubectl get`/`annotate`
//! use, so tests can drive them like an operator would, on a machine where no real API server
//! can run.
//!
//! - Stores Services and Pods (`v1`), EndpointSlices (`discovery.k8s.io/v1`) and Events (`v1`
//!   and `events.k8s.io/v1`), with one global resourceVersion, uids and creation timestamps.
//! - Serves version and legacy discovery, list (selectors honoured; in
//!   pages when a `limit` is asked, tables in one), watch (replay
//!   from a resourceVersion, 410 Expired past the history kept, bookmarks, timeouts), get,
//!   create, update, merge / strategic merge / apply patch, and delete.
//! - Answers `kubectl get` with server-side Tables (the real columns for Services, Pods and
//!   EndpointSlices), also when watching.
//! - Can go down and come back on the same port ([`KubeApiServer::stop`],
//!   [`KubeApiServer::start_again`]) with its state kept, to test outages.
//!
//! Not served: other resources (404), JSON patch (415), aggregated discovery (clients fall
//! back to the legacy documents), OpenAPI, authentication, Pod subresources other than
//! `status` (logs, exec). Namespaces are made up from the objects stored; Pods are stored as
//! given (nothing schedules them or assigns a phase or an IP: a test sets `status` itself);
//! `v1` and `events.k8s.io/v1` Events are stored apart, not converted into each other;
//! strategic merge patches replace lists instead of merging them by key.
//!
//! ```no_run
//! # use kube_fake::KubeApiServer;
//! # fn main() -> anyhow::Result<()> {
//! let server = KubeApiServer::start(vec![serde_json::json!({
//!     "apiVersion": "v1", "kind": "Service",
//!     "metadata": {"name": "web", "namespace": "default"},
//!     "spec": {"ports": [{"port": 80}]}
//! })])?;
//! let out = server.kubectl().args(["get", "svc", "-A"]).output()?;
//! # Ok(()) }
//! ```

mod discovery;
mod error;
mod http;
mod patch;
mod resource;
mod selector;
mod serve;
mod store;
mod table;
mod watch;

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::{runtime::Runtime, sync::watch as notify};

pub use self::resource::Resource;
use self::{serve::Serving, store::Store};

/// Tuning of a [`KubeApiServer`].
#[derive(Clone, Debug)]
pub struct Options {
    /// How many changes are kept for watches to replay; a watch from before them gets 410
    /// Expired and its client lists again.
    pub history_limit: usize,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            history_limit: 1000,
            bookmark_interval: Duration::from_secs(2),
        }
    }
}

/// What the handle and the request handlers share.
struct Shared {
    store: Mutex<Store>,
    /// The resourceVersion after each write, so watches wake up.
    changed: notify::Sender<u64>,
    bookmark_interval: Duration,
    /// Whether to log requests (`KUBE_API_DEBUG` set and not "0").
    debug: bool,
    /// The address served, for discovery.
    addr: SocketAddr,
    /// When the server started: the creation time of the namespaces it makes up.
    started_at: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panicking handler leaves the store consistent (every write is one insert), so a
        // poisoned lock is still good.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&self.lock())
    }

    /// Runs a write and wakes the watches if it wrote.
    fn write<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let mut store = self.lock();
        let before = store.resource_version();
        let result = f(&mut store);
        let after = store.resource_version();
        drop(store);
        if after != before {
            self.changed.send_replace(after);
        }
        result
    }
}

/// The running fixture server. Dropping it stops it and removes its kubeconfig.
pub struct KubeApiServer {
    shared: Arc<Shared>,
    /// Its own runtime, so callers need none; `None` only while dropping.
    runtime: Option<Runtime>,
    serving: Mutex<Option<Serving>>,
    addr: SocketAddr,
    dir: PathBuf,
}

impl KubeApiServer {
    /// Starts a server holding `initial` objects (Services, Pods, EndpointSlices or Events,
    /// typed or as JSON; the namespace defaults to `default`) on a random port.
    pub fn start<T: Serialize>(initial: impl IntoIterator<Item = T>) -> Result<Self> {
        Self::start_with(Options::default(), initial)
    }

    /// [`start`](Self::start) with options.
    pub fn start_with<T: Serialize>(
        options: Options,
        initial: impl IntoIterator<Item = T>,
    ) -> Result<Self> {
        let mut store = Store::new(options.history_limit);
        for object in initial {
            let object = serde_json::to_value(object).context("cannot serialize an object")?;
            store
                .apply(object)
                .map_err(|e| anyhow!("cannot store an initial object: {}", e.message))?;
        }
        let listener = serve::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = listener.local_addr().context("no local address")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kube-api")
            .enable_all()
            .build()
            .context("cannot start the API server's runtime")?;
        let shared = Arc::new(Shared {
            changed: notify::Sender::new(store.resource_version()),
            store: Mutex::new(store),
            bookmark_interval: options.bookmark_interval,
            debug: std::env::var("KUBE_API_DEBUG").is_ok_and(|v| !v.is_empty() && v != "0"),
            addr,
            started_at: store::now(),
        });
        let dir = unique_dir()?;
        let server = Self {
            serving: Mutex::new(Some(Serving::start(
                runtime.handle(),
                listener,
                http::router(shared.clone()),
            ))),
            shared,
            runtime: Some(runtime),
            addr,
            dir,
        };
        fs::write(server.kubeconfig(), server.kubeconfig_yaml())
            .context("cannot write the kubeconfig")?;
        Ok(server)
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file for this server (current context, no credentials), for
    /// `kubectl --kubeconfig`, `KUBECONFIG` or `kube::Config::from_custom_kubeconfig`.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: kube-api-fixture
  cluster:
    server: {url}
contexts:
- name: kube-api-fixture
  context:
    cluster: kube-api-fixture
    user: kube-api-fixture
    namespace: default
current-context: kube-api-fixture
users:
- name: kube-api-fixture
  user: {{}}
preferences: {{}}
",
            url = self.url()
        )
    }

    /// A kube-rs client configuration for this server.
    pub fn client_config(&self) -> Result<kube::Config> {
        Ok(kube::Config::new(self.url().parse().context("bad URL")?))
    }

    /// `kubectl` set up for this server: its kubeconfig, a discovery cache of its own (not in
    /// `$HOME`), and a request timeout so a test cannot hang on it. Add arguments and run.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .arg("--request-timeout=10s");
        command
    }

    /// Whether it is serving (not [`stop`](Self::stop)ped).
    pub fn is_running(&self) -> bool {
        self.serving_slot().is_some()
    }

    /// Simulates an outage: stops listening and closes every connection, and so every watch
    /// stream. The state is kept; tests may still change it with [`apply`](Self::apply).
    /// Stopping a stopped server does nothing.
    pub fn stop(&self) -> Result<()> {
        match self.serving_slot().take() {
            Some(serving) => serving.stop(),
            None => Ok(()),
        }
    }

    /// Ends an outage: serves again on the same port, with the state (and resourceVersions)
    /// carried on. Starting a running server does nothing.
    pub fn start_again(&self) -> Result<()> {
        let mut slot = self.serving_slot();
        if slot.is_some() {
            return Ok(());
        }
        let runtime = self
            .runtime
            .as_ref()
            .context("the API server is shutting down")?;
        let listener = serve::bind(self.addr)?;
        *slot = Some(Serving::start(
            runtime.handle(),
            listener,
            http::router(self.shared.clone()),
        ));
        Ok(())
    }

    fn serving_slot(&self) -> MutexGuard<'_, Option<Serving>> {
        self.serving.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The resourceVersion of the latest write.
    pub fn resource_version(&self) -> u64 {
        self.shared.read(Store::resource_version)
    }

    /// Creates or replaces an object, whatever its resourceVersion, and tells the watches.
    /// Returns it as stored.
    pub fn apply<T: Serialize>(&self, object: &T) -> Result<Value> {
        let object = serde_json::to_value(object).context("cannot serialize the object")?;
        self.shared
            .write(|store| store.apply(object))
            .map_err(|e| anyhow!("cannot apply: {}", e.message))
    }

    /// Deletes an object and tells the watches; returns its last state, or `None` if there
    /// was no such object.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .write(|store| store.delete(resource, namespace, name))
            .ok()
    }

    /// One object, as JSON.
    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .read(|store| store.get(resource, namespace, name).cloned())
    }

    /// The objects of a resource in every namespace, as JSON.
    pub fn list(&self, resource: Resource) -> Vec<Value> {
        self.shared
            .read(|store| store.list(resource, None).into_iter().cloned().collect())
    }

    /// One Service.
    pub fn get_service(&self, namespace: &str, name: &str) -> Option<Service> {
        self.get_typed(Resource::Service, namespace, name)
    }

    /// One Pod.
    pub fn get_pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.get_typed(Resource::Pod, namespace, name)
    }

    /// One EndpointSlice.
    pub fn get_endpoint_slice(&self, namespace: &str, name: &str) -> Option<EndpointSlice> {
        self.get_typed(Resource::EndpointSlice, namespace, name)
    }

    fn get_typed<T: DeserializeOwned>(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
    ) -> Option<T> {
        let object = self.get(resource, namespace, name)?;
        // The store rejects every write that does not decode as its type.
        Some(serde_json::from_value(object).expect("stored objects decode as their type"))
    }

    /// Every Event clients created (`v1` and `events.k8s.io/v1`), in creation order.
    pub fn events(&self) -> Vec<Value> {
        let mut events = self.list(Resource::Event);
        events.extend(self.list(Resource::CoreEvent));
        // Uids encode the creating resourceVersion, zero-padded (see `Store`).
        events.sort_by(|a, b| {
            a["metadata"]["uid"]
                .as_str()
                .cmp(&b["metadata"]["uid"].as_str())
        });
        events
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("kube-api: {e:#}");
        }
        if let Some(runtime) = self.runtime.take() {
            // Not a blocking shutdown: dropping may happen inside a caller's runtime.
            runtime.shutdown_background();
        }
        // Best effort: a leftover temporary directory harms nothing.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A new, empty directory for the kubeconfig and kubectl's cache.
fn unique_dir() -> Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "kube-api-fixture-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
