//! The daemon's HTTP endpoints: `/metrics`, `/healthz` and `/readyz`. It serves what it is
//! given (the registry, and a function that reads the kernel counters) and knows nothing of
//! where either comes from.

use std::sync::Arc;

use axum::{Router, extract::State, http::StatusCode, routing::get};
use redirector_common::Counters;
use tracing::{info, warn};

use super::Metrics;

/// Reads the kernel counters for a scrape; `None` when they cannot be read (the scrape then
/// has the daemon's own metrics only).
pub type KernelCounters = Arc<dyn Fn() -> Option<Counters> + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    kernel: KernelCounters,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` (bound by the caller before it
/// touches the kernel, so a busy address is an error that changes nothing) until the task is
/// dropped.
pub fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    kernel: KernelCounters,
) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, kernel });
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics server stopped");
        }
    })
}

async fn metrics_handler(State(s): State<AppState>) -> String {
    let kernel = (s.kernel)();
    s.metrics.render(kernel.as_ref())
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.metrics.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the first full sync, or the services map is full\n",
        )
    }
}
