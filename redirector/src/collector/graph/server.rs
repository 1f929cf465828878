//! The service graph page on `--ui-addr`: one HTML page, its script and style sheet (built
//! into the binary: the page loads nothing from elsewhere), and `/api/graph`, the graph of the
//! last window as JSON, which the page fetches every 2 seconds. Also `/healthz`.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tracing::{info, warn};

use super::{Graph, Limits, Observation, Snapshot};

const INDEX_HTML: &str = include_str!("page/index.html");
const GRAPH_JS: &str = include_str!("page/graph.js");
const GRAPH_CSS: &str = include_str!("page/graph.css");

/// The graph, shared by the collector (writer) and the server (reader), on one clock.
pub struct LiveGraph {
    started: Instant,
    graph: Mutex<Graph>,
}

impl LiveGraph {
    /// An empty graph with `limits`, starting now.
    pub fn new(limits: Limits) -> Self {
        Self {
            started: Instant::now(),
            graph: Mutex::new(Graph::new(limits, 0)),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Graph> {
        // A panic while holding the lock leaves counts, never a broken structure: go on.
        self.graph.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds observations made now (one lock for the batch).
    pub fn record_all(&self, observations: &[Observation]) {
        if observations.is_empty() {
            return;
        }
        let now = self.now_ms();
        let mut graph = self.lock();
        for o in observations {
            graph.record(o, now);
        }
    }

    /// The graph now.
    pub fn snapshot(&self) -> Snapshot {
        let now = self.now_ms();
        self.lock().snapshot(now)
    }
}

/// Serves the page and `/api/graph` on `listener` (bound by the caller, so that a busy
/// address fails the start) until the task is dropped.
pub fn serve(
    listener: tokio::net::TcpListener,
    graph: Arc<LiveGraph>,
) -> tokio::task::JoinHandle<()> {
    let app = router(graph);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving the service graph page on /");
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "service graph server stopped");
        }
    })
}

fn router(graph: Arc<LiveGraph>) -> Router {
    let asset = |content_type: &'static str, body: &'static str| {
        move || async move {
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
        }
    };
    Router::new()
        .route("/", get(asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/graph.js",
            get(asset("text/javascript; charset=utf-8", GRAPH_JS)),
        )
        .route(
            "/graph.css",
            get(asset("text/css; charset=utf-8", GRAPH_CSS)),
        )
        .route("/api/graph", get(graph_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(graph)
}

async fn graph_handler(State(graph): State<Arc<LiveGraph>>) -> axum::response::Response {
    match serde_json::to_string(&graph.snapshot()) {
        Ok(json) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            json,
        )
            .into_response(),
        Err(e) => {
            warn!(error = %e, "cannot encode the graph");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the graph\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::graph::{Node, NodeKind, RowKey};

    /// GET `path` from a server on a loopback port: status, content type and body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default()
            .to_string();
        (status, content_type, body.to_string())
    }

    #[tokio::test]
    async fn serves_the_page_its_assets_and_the_graph() {
        let graph = Arc::new(LiveGraph::new(Limits::default()));
        let node = |kind, name: &str| Node {
            kind,
            namespace: "shop".into(),
            name: name.into(),
        };
        graph.record_all(&[Observation {
            source: node(NodeKind::Workload, "client"),
            service: Some(node(NodeKind::Service, "web")),
            destination: node(NodeKind::Workload, "web"),
            http: Some(RowKey {
                method: "GET".into(),
                path: "/a".into(),
                code: 503,
            }),
            duration_ms: 4,
        }]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve(listener, graph);

        let (status, kind, page) = get(addr, "/").await;
        assert_eq!((status, kind.as_str()), (200, "text/html; charset=utf-8"));
        assert!(
            page.contains("graph.js") && page.contains("graph.css"),
            "{page}"
        );
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "nothing from elsewhere"
        );
        let (status, kind, script) = get(addr, "/graph.js").await;
        assert_eq!(
            (status, kind.as_str()),
            (200, "text/javascript; charset=utf-8")
        );
        assert!(script.contains("/api/graph"));
        assert_eq!(get(addr, "/graph.css").await.0, 200);
        let (status, kind, json) = get(addr, "/api/graph").await;
        assert_eq!((status, kind.as_str()), (200, "application/json"));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["nodes"].as_array().map(Vec::len), Some(3), "{v}");
        let edge = &v["edges"][1];
        assert_eq!(edge["source"], "workload:shop/client");
        assert_eq!(edge["target"], "service:shop/web");
        assert_eq!(edge["requests"], 1);
        assert_eq!(edge["error_percent"], 100.0);
        assert_eq!(edge["http"][0]["response_code"], 503);
        assert_eq!(get(addr, "/nothing").await.0, 404);
        server.abort();
    }
}
