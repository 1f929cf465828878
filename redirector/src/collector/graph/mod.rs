//! The service graph of `redirector collect --ui-addr`: who called whom over the last minute,
//! as Kiali draws it and the reference product's Service Graph shows it, with an HTTP table per
//! edge like its HTTP tab. Pure: time is a number of milliseconds the caller passes in.
//!
//! - **Nodes** are workloads (a Pod's controlling owner without the pod-template hash, as
//!   Istio's `*_workload` labels name it; an owner-less Pod by its own name), Services, this
//!   host's networks (`pvt`/`pub`), and an `unknown client` and an `unknown destination` node
//!   for the addresses nothing names.
//! - **Edges**: a request to a Service adds to two edges, client → Service and Service →
//!   the workload behind it (when it is known); any other request to client → destination.
//!   Each edge carries, over the window: requests, requests per second, error % (response
//!   code 5xx, or 0: no response, as Linkerd and Istio count failures), mean, max and p95
//!   duration (Envoy's `duration`), and TCP (non-HTTP) connections.
//! - **HTTP table** per edge: one row per method, URL path (no query string) and response
//!   code with count, mean and max duration; and the top URLs by count.
//!
//! **The window** ([`Limits::window`], 60 s by default) is [`SLOTS`] slots; a slot older than
//! the window is forgotten as a whole, so the window slides in steps of `window / SLOTS`.
//! Rates divide by the time the window covers (less while the collector is younger than it).
//!
//! **Bounded memory**, whatever the traffic:
//! - at most [`Limits::max_edges`] edges (so at most twice as many nodes); requests of edges
//!   beyond it are counted as dropped, and shown as such;
//! - at most [`Limits::max_rows`] rows per edge; later (method, path, code) combinations are
//!   summed into one `other` row; paths are cut at [`MAX_PATH_CHARS`] characters and methods
//!   at [`MAX_METHOD_CHARS`];
//! - at most [`Limits::samples_per_slot`] durations per edge and slot for the p95, a uniform
//!   sample of the slot's requests (so p95 is exact up to that many requests per slot).
//!
//! Edges and rows with nothing left in the window are removed.

pub mod server;

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use serde::Serialize;

use super::{
    names::{EndpointName, EndpointType, NameIndex},
    parse::{Entry, Kind},
    request::url_path,
};

/// Slots per window.
pub const SLOTS: usize = 12;
/// Paths longer than this many characters are cut (and end with `…`).
pub const MAX_PATH_CHARS: usize = 200;
/// Methods longer than this many characters are cut.
pub const MAX_METHOD_CHARS: usize = 16;
/// The node of the clients nothing names.
pub const UNKNOWN_SOURCE: &str = "unknown client";
/// The node of the destinations nothing names.
pub const UNKNOWN_DESTINATION: &str = "unknown destination";
/// Top URLs listed per edge.
pub const TOP_URLS: usize = 10;

/// The window and the caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How far back the graph looks.
    pub window: Duration,
    /// Edges kept at most.
    pub max_edges: usize,
    /// HTTP table rows per edge at most (the `other` row comes on top).
    pub max_rows: usize,
    /// Durations kept per edge and slot for the p95.
    pub samples_per_slot: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            max_edges: 200,
            max_rows: 50,
            samples_per_slot: 128,
        }
    }
}

/// What a node stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// Pods of one workload (or one Pod).
    Workload,
    /// A Service.
    Service,
    /// This host: its private (`pvt`) or public (`pub`) addresses.
    Network,
    /// Addresses nothing names.
    Unknown,
}

impl NodeKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Workload => "workload",
            Self::Service => "service",
            Self::Network => "network",
            Self::Unknown => "unknown",
        }
    }
}

/// A node of the graph.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    /// What it stands for.
    pub kind: NodeKind,
    /// Its namespace (`-` for networks and the unknown).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Node {
    /// `kind:namespace/name`, unique in a graph.
    pub fn id(&self) -> String {
        format!("{}:{}/{}", self.kind.as_str(), self.namespace, self.name)
    }

    /// The node of `endpoint`; `unknown` names the unknown node (one for clients and one for
    /// destinations: a single one would tie every unknown caller to every unknown callee).
    fn of(endpoint: &EndpointName, names: &NameIndex, unknown: &str) -> Self {
        if let Some(w) = names.workload(endpoint) {
            return Self {
                kind: NodeKind::Workload,
                namespace: w.namespace.clone(),
                name: w.name.clone(),
            };
        }
        let kind = match endpoint.kind {
            EndpointType::Wep => NodeKind::Workload,
            EndpointType::Net => NodeKind::Network,
            EndpointType::Unknown => NodeKind::Unknown,
        };
        Self {
            kind,
            namespace: endpoint.namespace.clone(),
            name: if kind == NodeKind::Unknown {
                unknown.into()
            } else {
                endpoint.name_aggr.clone()
            },
        }
    }
}

/// What one HTTP request adds to its edges' tables.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    /// The method (cut at [`MAX_METHOD_CHARS`]).
    pub method: String,
    /// The URL path without query string (cut at [`MAX_PATH_CHARS`]).
    pub path: String,
    /// The response code; 0: no response.
    pub code: u16,
}

/// One access log entry as the graph sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The client.
    pub source: Node,
    /// The Service it connected to, if any.
    pub service: Option<Node>,
    /// The workload (or address) behind.
    pub destination: Node,
    /// `None` for a TCP connection.
    pub http: Option<RowKey>,
    /// Envoy's `duration`, in milliseconds.
    pub duration_ms: u64,
}

/// An entry, named from `names`.
pub fn observe(entry: &Entry, names: &NameIndex) -> Observation {
    let source = Node::of(
        &names.source(entry.source.map(|a| a.ip())),
        names,
        UNKNOWN_SOURCE,
    );
    let destination = names.destination(entry.original_destination);
    let service = destination.service.map(|s| Node {
        kind: NodeKind::Service,
        namespace: s.service.namespace,
        name: s.service.name,
    });
    let http = (entry.kind == Kind::Http).then(|| RowKey {
        method: cut(entry.method.as_deref().unwrap_or("-"), MAX_METHOD_CHARS),
        path: cut(
            url_path(entry.path.as_deref().unwrap_or("-")),
            MAX_PATH_CHARS,
        ),
        code: entry.response_code,
    });
    Observation {
        source,
        service,
        destination: Node::of(&destination.endpoint, names, UNKNOWN_DESTINATION),
        http,
        duration_ms: entry.duration_ms,
    }
}

/// `text` cut at `max` characters, with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Whether a response code counts as an error: 5xx, or no response at all.
pub fn is_error(code: u16) -> bool {
    code == 0 || code >= 500
}

/// The counts of one slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cell {
    slot: u64,
    requests: u64,
    errors: u64,
    sum_ms: u64,
    max_ms: u64,
    tcp: u64,
}

impl Cell {
    fn live(&self, now: u64) -> bool {
        self.slot <= now && self.slot + SLOTS as u64 > now
    }
}

/// [`SLOTS`] cells, one per slot, reused round-robin.
#[derive(Clone, Debug, Default)]
struct Ring([Cell; SLOTS]);

impl Ring {
    /// The cell of `slot`, emptied first if it held an older slot; and whether it was.
    fn at(&mut self, slot: u64) -> (&mut Cell, bool) {
        let cell = &mut self.0[slot as usize % SLOTS];
        let reset = cell.slot != slot;
        if reset {
            *cell = Cell {
                slot,
                ..Cell::default()
            };
        }
        (cell, reset)
    }

    fn add_http(&mut self, slot: u64, code: u16, duration_ms: u64) -> &mut Cell {
        let (cell, _) = self.at(slot);
        cell.requests += 1;
        cell.errors += u64::from(is_error(code));
        cell.sum_ms += duration_ms;
        cell.max_ms = cell.max_ms.max(duration_ms);
        cell
    }

    /// The live cells summed (`slot`: the max over them, unused).
    fn total(&self, now: u64) -> Cell {
        self.0
            .iter()
            .filter(|c| c.live(now))
            .fold(Cell::default(), |t, c| Cell {
                slot: 0,
                requests: t.requests + c.requests,
                errors: t.errors + c.errors,
                sum_ms: t.sum_ms + c.sum_ms,
                max_ms: t.max_ms.max(c.max_ms),
                tcp: t.tcp + c.tcp,
            })
    }

    fn empty(&self, now: u64) -> bool {
        let t = self.total(now);
        t.requests == 0 && t.tcp == 0
    }
}

/// One edge's state.
#[derive(Debug, Default)]
struct Edge {
    totals: Ring,
    /// Durations sampled per slot (index: slot % SLOTS, valid with `totals`' cell).
    samples: [Vec<u32>; SLOTS],
    rows: HashMap<RowKey, Ring>,
    /// Requests beyond the row cap.
    other: Ring,
}

/// The graph over the window.
#[derive(Debug)]
pub struct Graph {
    limits: Limits,
    slot_ms: u64,
    started_ms: u64,
    edges: HashMap<(Node, Node), Edge>,
    /// Requests (and TCP connections) of edges beyond the cap.
    dropped: Ring,
    /// xorshift state, for the uniform samples.
    random: u64,
}

impl Graph {
    /// An empty graph, started at `now_ms`.
    pub fn new(limits: Limits, now_ms: u64) -> Self {
        let slot_ms = (limits.window.as_millis() as u64 / SLOTS as u64).max(1);
        Self {
            limits,
            slot_ms,
            started_ms: now_ms,
            edges: HashMap::new(),
            dropped: Ring::default(),
            random: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Adds one observation at `now_ms`.
    pub fn record(&mut self, o: &Observation, now_ms: u64) {
        let slot = now_ms / self.slot_ms;
        match &o.service {
            Some(service) => {
                self.add(&o.source, service, o, slot);
                if o.destination.kind != NodeKind::Unknown && o.destination != *service {
                    self.add(service, &o.destination, o, slot);
                }
            }
            None => self.add(&o.source, &o.destination, o, slot),
        }
    }

    fn add(&mut self, from: &Node, to: &Node, o: &Observation, slot: u64) {
        let key = (from.clone(), to.clone());
        if !self.edges.contains_key(&key) && self.edges.len() >= self.limits.max_edges {
            self.edges.retain(|_, e| !e.totals.empty(slot));
            if self.edges.len() >= self.limits.max_edges {
                let (cell, _) = self.dropped.at(slot);
                match o.http {
                    Some(_) => cell.requests += 1,
                    None => cell.tcp += 1,
                }
                return;
            }
        }
        let random = next_random(&mut self.random);
        let max_rows = self.limits.max_rows;
        let samples_per_slot = self.limits.samples_per_slot;
        let edge = self.edges.entry(key).or_default();
        let (cell, reset) = edge.totals.at(slot);
        let samples = &mut edge.samples[slot as usize % SLOTS];
        if reset {
            samples.clear();
        }
        let Some(row) = &o.http else {
            cell.tcp += 1;
            return;
        };
        let seen = edge.totals.add_http(slot, row.code, o.duration_ms).requests;
        // Reservoir sampling: every request of the slot is kept with the same chance.
        let duration = u32::try_from(o.duration_ms).unwrap_or(u32::MAX);
        if samples.len() < samples_per_slot {
            samples.push(duration);
        } else if let Some(i) = usize::try_from(random % seen)
            .ok()
            .filter(|&i| i < samples_per_slot)
        {
            samples[i] = duration;
        }
        if !edge.rows.contains_key(row) && edge.rows.len() >= max_rows {
            edge.rows.retain(|_, r| !r.empty(slot));
        }
        let ring = if edge.rows.contains_key(row) || edge.rows.len() < max_rows {
            edge.rows.entry(row.clone()).or_default()
        } else {
            &mut edge.other
        };
        ring.add_http(slot, row.code, o.duration_ms);
    }

    /// The graph as the page shows it, at `now_ms`; forgets what left the window.
    pub fn snapshot(&mut self, now_ms: u64) -> Snapshot {
        let now = now_ms / self.slot_ms;
        self.edges.retain(|_, e| {
            e.rows.retain(|_, r| !r.empty(now));
            !e.totals.empty(now)
        });
        // From the start of the oldest live slot (or the start) to now.
        let oldest = (now + 1).saturating_sub(SLOTS as u64) * self.slot_ms;
        let span_ms = now_ms.saturating_sub(oldest.max(self.started_ms)).max(1000);
        let span = span_ms as f64 / 1000.0;
        let mut nodes = BTreeMap::new();
        let mut edges: Vec<EdgeView> = self
            .edges
            .iter()
            .map(|((from, to), e)| {
                for n in [from, to] {
                    nodes.entry(n.id()).or_insert_with(|| NodeView {
                        id: n.id(),
                        kind: n.kind,
                        namespace: n.namespace.clone(),
                        name: n.name.clone(),
                    });
                }
                edge_view(from, to, e, now, span)
            })
            .collect();
        edges.sort_by(|a, b| (&a.source, &a.target).cmp(&(&b.source, &b.target)));
        let dropped = self.dropped.total(now);
        Snapshot {
            window_seconds: self.limits.window.as_secs(),
            span_seconds: span,
            nodes: nodes.into_values().collect(),
            edges,
            dropped_requests: dropped.requests + dropped.tcp,
            max_edges: self.limits.max_edges,
            max_rows: self.limits.max_rows,
        }
    }
}

fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// The `q` quantile (nearest rank) of `values`, sorted in place.
pub fn quantile(values: &mut [u32], q: f64) -> Option<u32> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = (q * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

fn mean(c: &Cell) -> Option<f64> {
    (c.requests > 0).then(|| c.sum_ms as f64 / c.requests as f64)
}

fn edge_view(from: &Node, to: &Node, e: &Edge, now: u64, span: f64) -> EdgeView {
    let t = e.totals.total(now);
    let mut samples: Vec<u32> = e
        .totals
        .0
        .iter()
        .zip(&e.samples)
        .filter(|(c, _)| c.live(now))
        .flat_map(|(_, s)| s.iter().copied())
        .collect();
    let mut http: Vec<RowView> = e
        .rows
        .iter()
        .map(|(k, r)| (k, r.total(now)))
        .filter(|(_, c)| c.requests > 0)
        .map(|(k, c)| RowView {
            method: k.method.clone(),
            path: k.path.clone(),
            response_code: k.code,
            count: c.requests,
            mean_ms: mean(&c).unwrap_or(0.0),
            max_ms: c.max_ms,
            other: false,
        })
        .collect();
    // Most requests first, then by path, method and code for a stable order.
    http.sort_by(|a, b| {
        b.count.cmp(&a.count).then_with(|| {
            (&a.path, &a.method, a.response_code).cmp(&(&b.path, &b.method, b.response_code))
        })
    });
    let mut urls: BTreeMap<&str, u64> = BTreeMap::new();
    for row in &http {
        *urls.entry(&row.path).or_default() += row.count;
    }
    let mut top_urls: Vec<UrlView> = urls
        .into_iter()
        .map(|(path, count)| UrlView {
            path: path.to_string(),
            count,
        })
        .collect();
    top_urls.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.path.cmp(&b.path)));
    top_urls.truncate(TOP_URLS);
    let other = e.other.total(now);
    if other.requests > 0 {
        http.push(RowView {
            method: "*".into(),
            path: "(other)".into(),
            response_code: 0,
            count: other.requests,
            mean_ms: mean(&other).unwrap_or(0.0),
            max_ms: other.max_ms,
            other: true,
        });
    }
    EdgeView {
        id: format!("{}->{}", from.id(), to.id()),
        source: from.id(),
        target: to.id(),
        requests: t.requests,
        errors: t.errors,
        rps: t.requests as f64 / span,
        error_percent: (t.requests > 0).then(|| 100.0 * t.errors as f64 / t.requests as f64),
        p95_ms: quantile(&mut samples, 0.95),
        mean_ms: mean(&t),
        max_ms: (t.requests > 0).then_some(t.max_ms),
        tcp_connections: t.tcp,
        http,
        top_urls,
    }
}

/// What `/api/graph` answers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    /// The window's length.
    pub window_seconds: u64,
    /// The time the numbers cover (the window, or less since the start).
    pub span_seconds: f64,
    /// Every node of an edge, by id.
    pub nodes: Vec<NodeView>,
    /// Every edge with traffic in the window, by source and target.
    pub edges: Vec<EdgeView>,
    /// Requests and connections in the window not shown: their edge was beyond the cap.
    pub dropped_requests: u64,
    /// The edge cap.
    pub max_edges: usize,
    /// The row cap per edge.
    pub max_rows: usize,
}

/// A node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeView {
    /// [`Node::id`].
    pub id: String,
    /// What it is.
    pub kind: NodeKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// An edge and its numbers over the window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EdgeView {
    /// `source->target`.
    pub id: String,
    /// The calling node's id.
    pub source: String,
    /// The called node's id.
    pub target: String,
    /// HTTP requests.
    pub requests: u64,
    /// Of which errors ([`is_error`]).
    pub errors: u64,
    /// Requests per second.
    pub rps: f64,
    /// Errors in percent of requests; `None` without requests.
    pub error_percent: Option<f64>,
    /// 95th percentile of the durations, in ms.
    pub p95_ms: Option<u32>,
    /// Mean duration, in ms.
    pub mean_ms: Option<f64>,
    /// Longest duration, in ms.
    pub max_ms: Option<u64>,
    /// TCP (non-HTTP) connections.
    pub tcp_connections: u64,
    /// The HTTP table: most requests first, the `other` row last.
    pub http: Vec<RowView>,
    /// The most requested paths.
    pub top_urls: Vec<UrlView>,
}

/// One row of an edge's HTTP table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RowView {
    /// The method.
    pub method: String,
    /// The URL path.
    pub path: String,
    /// The response code (0: no response).
    pub response_code: u16,
    /// Requests.
    pub count: u64,
    /// Mean duration, in ms.
    pub mean_ms: f64,
    /// Longest duration, in ms.
    pub max_ms: u64,
    /// Whether this row sums the requests beyond the row cap.
    pub other: bool,
}

/// A path and its requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UrlView {
    /// The URL path.
    pub path: String,
    /// Requests, over every method and code.
    pub count: u64,
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

    const OBJECTS: &str = "\
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
        let m = manifests::parse(OBJECTS, Kinds::COLLECTOR).unwrap();
        let mut store = ObjectStore::default();
        store.apply(Change::ServicesReset(m.services));
        store.apply(Change::SlicesReset(m.slices));
        store.apply(Change::PodsReset(m.pods));
        NameIndex::build(&store, &["10.77.1.1".parse().unwrap()])
    }

    fn node(kind: NodeKind, namespace: &str, name: &str) -> Node {
        Node {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// An HTTP request from `src` to `dst`.
    fn http(src: &str, dst: &str, method: &str, path: &str, code: u16, ms: u64) -> Entry {
        parse_line(&format!(
            r#"{{"type":"http","duration":{ms},"method":"{method}","path":"{path}","response_code":{code},"downstream_remote_address":"{src}:40000","downstream_local_address":"{dst}"}}"#
        ))
        .unwrap()
    }

    fn obs(kind_code: u16, path: &str, ms: u64) -> Observation {
        Observation {
            source: node(NodeKind::Workload, "a", "client"),
            service: None,
            destination: node(NodeKind::Workload, "a", "server"),
            http: Some(RowKey {
                method: "GET".into(),
                path: path.into(),
                code: kind_code,
            }),
            duration_ms: ms,
        }
    }

    #[test]
    fn requests_are_named_after_workloads_and_services() {
        let names = names();
        let o = observe(
            &http("10.77.1.2", "10.96.0.10:80", "GET", "/a?token=x", 200, 5),
            &names,
        );
        assert_eq!(o.source, node(NodeKind::Workload, "shop", "client"));
        assert_eq!(o.service, Some(node(NodeKind::Service, "shop", "web")));
        assert_eq!(o.destination, node(NodeKind::Workload, "shop", "web"));
        assert_eq!(
            o.http,
            Some(RowKey {
                method: "GET".into(),
                path: "/a".into(),
                code: 200
            })
        );
        let host = observe(
            &http("10.77.1.1", "10.9.9.9:443", "GET", "/", 200, 1),
            &names,
        );
        assert_eq!(host.source, node(NodeKind::Network, "-", "pvt"));
        assert_eq!(host.service, None);
        assert_eq!(
            host.destination,
            node(NodeKind::Unknown, "-", UNKNOWN_DESTINATION)
        );
        let nowhere = observe(
            &http("10.1.1.1", "10.9.9.9:443", "GET", "/", 200, 1),
            &names,
        );
        assert_eq!(nowhere.source, node(NodeKind::Unknown, "-", UNKNOWN_SOURCE));
        let tcp = observe(
            &parse_line(r#"{"type":"tcp","duration":3,"downstream_remote_address":"10.77.1.2:1"}"#)
                .unwrap(),
            &names,
        );
        assert_eq!(tcp.http, None);
        let long = observe(
            &http(
                "10.77.1.2",
                "10.96.0.10:80",
                "GET",
                &format!("/{}", "x".repeat(500)),
                200,
                1,
            ),
            &names,
        );
        let path = long.http.unwrap().path;
        assert_eq!(path.chars().count(), MAX_PATH_CHARS + 1, "cut, with …");
        assert!(path.ends_with('…'));
    }

    #[test]
    fn a_request_through_a_service_adds_to_both_hops() {
        let names = names();
        let mut g = Graph::new(Limits::default(), 0);
        for (path, code, ms) in [
            ("/a", 200, 10),
            ("/a", 200, 30),
            ("/b", 503, 20),
            ("/a", 500, 40),
        ] {
            g.record(
                &observe(
                    &http("10.77.1.2", "10.96.0.10:80", "GET", path, code, ms),
                    &names,
                ),
                1_000,
            );
        }
        let s = g.snapshot(10_000);
        let ids: Vec<&str> = s.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "service:shop/web",
                "workload:shop/client",
                "workload:shop/web"
            ]
        );
        let pairs: Vec<(&str, &str)> = s
            .edges
            .iter()
            .map(|e| (e.source.as_str(), e.target.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("service:shop/web", "workload:shop/web"),
                ("workload:shop/client", "service:shop/web")
            ]
        );
        let e = &s.edges[1];
        assert_eq!((e.requests, e.errors), (4, 2));
        assert_eq!(e.error_percent, Some(50.0));
        assert_eq!(e.mean_ms, Some(25.0));
        assert_eq!(e.max_ms, Some(40));
        assert_eq!(e.p95_ms, Some(40));
        // Ten seconds since the start: 0.4 requests per second.
        assert!((e.rps - 0.4).abs() < 1e-9, "{}", e.rps);
        let rows: Vec<(&str, &str, u16, u64, f64, u64)> = e
            .http
            .iter()
            .map(|r| {
                (
                    r.method.as_str(),
                    r.path.as_str(),
                    r.response_code,
                    r.count,
                    r.mean_ms,
                    r.max_ms,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("GET", "/a", 200, 2, 20.0, 30),
                ("GET", "/a", 500, 1, 40.0, 40),
                ("GET", "/b", 503, 1, 20.0, 20)
            ]
        );
        assert_eq!(
            e.top_urls,
            [
                UrlView {
                    path: "/a".into(),
                    count: 3
                },
                UrlView {
                    path: "/b".into(),
                    count: 1
                }
            ]
        );
        assert_eq!(
            s.edges[0].requests, 4,
            "the Service's hop carries the same requests"
        );
    }

    #[test]
    fn the_window_slides_and_forgets() {
        let mut g = Graph::new(Limits::default(), 0);
        // 5 s slots over 60 s.
        g.record(&obs(200, "/old", 1), 1_000);
        g.record(&obs(500, "/new", 1), 50_000);
        let s = g.snapshot(59_000);
        assert_eq!(s.edges[0].requests, 2);
        assert_eq!(s.span_seconds, 59.0);
        // Until 60 s the first slot (0–5 s) is inside; from then on it is not.
        assert_eq!(g.snapshot(59_999).edges[0].requests, 2);
        let s = g.snapshot(60_000);
        assert_eq!(s.edges[0].requests, 1);
        assert_eq!(s.edges[0].error_percent, Some(100.0));
        let paths: Vec<&str> = s.edges[0].http.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/new"], "rows leave with their slots");
        assert_eq!(s.span_seconds, 55.0, "slots 1 to 12: from 5 s to now");
        assert!(g.snapshot(200_000).edges.is_empty(), "edges leave too");
        assert!(g.snapshot(200_000).nodes.is_empty());
    }

    #[test]
    fn edges_and_rows_are_capped() {
        let limits = Limits {
            max_edges: 2,
            max_rows: 2,
            ..Limits::default()
        };
        let mut g = Graph::new(limits, 0);
        for name in ["s1", "s2", "s3", "s3"] {
            let mut o = obs(200, "/", 1);
            o.destination.name = name.into();
            g.record(&o, 0);
        }
        let s = g.snapshot(1_000);
        assert_eq!(s.edges.len(), 2);
        assert_eq!(s.dropped_requests, 2, "both requests to s3");
        let e = s.edges.iter().find(|e| e.target == "workload:a/server");
        assert!(e.is_none(), "a third edge is not made");
        // Once the old edges leave the window, a new one has room.
        g.record(&obs(200, "/1", 7), 100_000);
        g.record(&obs(200, "/2", 7), 100_000);
        g.record(&obs(200, "/3", 7), 100_000);
        g.record(&obs(404, "/3", 9), 100_000);
        let s = g.snapshot(101_000);
        assert_eq!(s.dropped_requests, 0);
        let e = &s.edges[0];
        assert_eq!(e.target, "workload:a/server");
        assert_eq!(e.requests, 4);
        let rows: Vec<(&str, u64, bool)> = e
            .http
            .iter()
            .map(|r| (r.path.as_str(), r.count, r.other))
            .collect();
        assert_eq!(
            rows,
            [("/1", 1, false), ("/2", 1, false), ("(other)", 2, true)]
        );
        assert_eq!(e.http[2].max_ms, 9);
    }

    #[test]
    fn p95_is_exact_below_the_sample_cap_and_close_above() {
        let mut g = Graph::new(Limits::default(), 0);
        for ms in 1..=100 {
            g.record(&obs(200, "/", ms), 0);
        }
        assert_eq!(g.snapshot(0).edges[0].p95_ms, Some(95));
        let mut g = Graph::new(Limits::default(), 0);
        for i in 0..10_000 {
            g.record(&obs(200, "/", i % 100 + 1), 0);
        }
        let s = g.snapshot(0);
        let p95 = s.edges[0].p95_ms.unwrap();
        assert!((85..=100).contains(&p95), "a uniform sample's p95: {p95}");
        assert_eq!(s.edges[0].requests, 10_000, "counts are exact");
        assert_eq!(s.edges[0].max_ms, Some(100));
    }

    #[test]
    fn tcp_connections_count_apart_from_requests() {
        let mut g = Graph::new(Limits::default(), 0);
        let mut o = obs(0, "/", 3);
        o.http = None;
        g.record(&o, 0);
        let s = g.snapshot(0);
        let e = &s.edges[0];
        assert_eq!((e.requests, e.tcp_connections), (0, 1));
        assert_eq!((e.error_percent, e.p95_ms), (None, None));
        assert!(e.http.is_empty());
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&mut [], 0.95), None);
        assert_eq!(quantile(&mut [7], 0.95), Some(7));
        assert_eq!(quantile(&mut [5, 1, 4, 2, 3], 0.5), Some(3));
        assert_eq!(quantile(&mut [5, 1, 4, 2, 3], 0.95), Some(5));
        assert!(is_error(0) && is_error(503) && !is_error(404) && !is_error(200));
    }
}
