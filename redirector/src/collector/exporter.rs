//! Istio's standard metrics, updated per access log entry, and the small HTTP server that
//! serves them on `--metrics-addr` (`/metrics` in Prometheus' text format, and `/healthz`).
//!
//! Names, buckets and labels are Istio's ([`istio`] makes the labels), so existing dashboards
//! and queries work: `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes` and `istio_response_bytes` for HTTP entries, and the
//! `istio_tcp_*_total` counters for the TCP chain's, which Envoy logs once per connection when
//! it closes (so a connection counts as opened and closed at once). Byte sizes are Envoy's
//! body bytes (`bytes_received`, `bytes_sent`); Istio's include headers.

use std::sync::Arc;

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::prometheus_text,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tracing::{info, warn};

use super::{
    istio::{self, IstioLabels, RouteCap},
    names::NameIndex,
    parse::{Entry, Kind},
};

/// Istio's buckets of `istio_request_duration_milliseconds`.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

type Histograms = Family<IstioLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS_MS)
}

/// Istio's byte buckets: 1, 10, 100, … 10⁹.
fn bytes_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 10.0, 10))
}

/// The metrics, shared by the collector (writer) and the server (reader).
pub struct IstioMetrics {
    registry: Registry,
    requests: Family<IstioLabels, Counter>,
    duration: Histograms,
    request_bytes: Histograms,
    response_bytes: Histograms,
    tcp_sent: Family<IstioLabels, Counter>,
    tcp_received: Family<IstioLabels, Counter>,
    tcp_opened: Family<IstioLabels, Counter>,
    tcp_closed: Family<IstioLabels, Counter>,
}

impl Default for IstioMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl IstioMetrics {
    /// Every family registered, none with a series yet.
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::new_with_constructor(bytes_histogram),
            response_bytes: Family::new_with_constructor(bytes_histogram),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
        };
        // Counters get their `_total` from the encoder, and help texts a final full stop.
        let r = &mut m.registry;
        r.register(
            "istio_requests",
            "Requests, by source and destination (Istio's standard metric)",
            m.requests.clone(),
        );
        r.register(
            "istio_request_duration_milliseconds",
            "Request durations in milliseconds, as Envoy measured them",
            m.duration.clone(),
        );
        r.register(
            "istio_request_bytes",
            "Request body sizes in bytes",
            m.request_bytes.clone(),
        );
        r.register(
            "istio_response_bytes",
            "Response body sizes in bytes",
            m.response_bytes.clone(),
        );
        r.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the client on TCP (non-HTTP) connections",
            m.tcp_sent.clone(),
        );
        r.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client on TCP (non-HTTP) connections",
            m.tcp_received.clone(),
        );
        r.register(
            "istio_tcp_connections_opened",
            "TCP (non-HTTP) connections opened",
            m.tcp_opened.clone(),
        );
        r.register(
            "istio_tcp_connections_closed",
            "TCP (non-HTTP) connections closed",
            m.tcp_closed.clone(),
        );
        m
    }

    /// Adds one entry with its labels.
    pub fn observe(&self, entry: &Entry, labels: &IstioLabels) {
        match entry.kind {
            Kind::Http => {
                self.requests.get_or_create(labels).inc();
                self.duration
                    .get_or_create(labels)
                    .observe(entry.duration_ms as f64);
                self.request_bytes
                    .get_or_create(labels)
                    .observe(entry.bytes_received as f64);
                self.response_bytes
                    .get_or_create(labels)
                    .observe(entry.bytes_sent as f64);
            }
            Kind::Tcp => {
                self.tcp_sent.get_or_create(labels).inc_by(entry.bytes_sent);
                self.tcp_received
                    .get_or_create(labels)
                    .inc_by(entry.bytes_received);
                self.tcp_opened.get_or_create(labels).inc();
                self.tcp_closed.get_or_create(labels).inc();
            }
        }
    }

    /// Everything, in Prometheus' text format (version 0.0.4).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// What the collector feeds each entry to: the metrics, and the route label's state.
pub struct Recorder {
    metrics: Arc<IstioMetrics>,
    routes: Option<RouteCap>,
}

impl Recorder {
    /// Records into `metrics`, with a route label capped at `max_routes` values when
    /// `max_routes` is given.
    pub fn new(metrics: Arc<IstioMetrics>, max_routes: Option<usize>) -> Self {
        Self {
            metrics,
            routes: max_routes.map(RouteCap::new),
        }
    }

    /// Adds one entry, named from `names`.
    pub fn record(&mut self, entry: &Entry, names: &NameIndex) {
        let mut labels = istio::labels(entry, names);
        if let (Some(cap), Kind::Http) = (&mut self.routes, entry.kind) {
            let routed = cap.route(entry.path.as_deref().unwrap_or("/"));
            if routed.first_capped {
                warn!(
                    "more distinct routes than --metrics-max-routes: the requests of new routes \
                     are counted with route=\"{}\" from now on",
                    istio::OTHER_ROUTE
                );
            }
            labels.route = Some(routed.route);
        }
        self.metrics.observe(entry, &labels);
    }
}

/// Serves `/metrics` and `/healthz` on `listener` (bound by the caller, so that a busy address
/// fails the start) until the task is dropped.
pub fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<IstioMetrics>,
) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(metrics);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving Istio's metrics on /metrics");
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics server stopped");
        }
    })
}

async fn metrics_handler(State(metrics): State<Arc<IstioMetrics>>) -> axum::response::Response {
    match metrics.render() {
        Ok(text) => (
            [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(e) => {
            warn!(error = %e, "cannot render the metrics");
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the metrics\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::parse::parse_line;

    fn entry(line: &str) -> Entry {
        parse_line(line).unwrap()
    }

    /// The value of the sample line starting with `prefix` (name and, if given, labels).
    fn sample(text: &str, name: &str, contains: &[&str]) -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .find(|l| contains.iter().all(|c| l.contains(c)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn entries_become_istio_series() {
        let names = NameIndex::default();
        let metrics = Arc::new(IstioMetrics::new());
        let mut recorder = Recorder::new(metrics.clone(), None);
        let ok = entry(
            r#"{"type":"http","duration":7,"path":"/users/1","response_code":200,"bytes_received":3,"bytes_sent":1500}"#,
        );
        let failed = entry(r#"{"type":"http","duration":70,"response_code":503}"#);
        let tcp = entry(r#"{"type":"tcp","duration":1,"bytes_received":5,"bytes_sent":600}"#);
        for e in [&ok, &ok, &failed, &tcp, &tcp] {
            recorder.record(e, &names);
        }
        let text = metrics.render().unwrap();
        let code = |c: &str| format!("response_code=\"{c}\"");
        assert_eq!(
            sample(&text, "istio_requests_total", &[&code("200")]),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "istio_requests_total", &[&code("503")]),
            Some(1.0)
        );
        assert!(!text.contains("route="), "no route label by default");
        let d = "istio_request_duration_milliseconds_bucket";
        assert_eq!(
            sample(&text, d, &[&code("200"), "le=\"5\""]),
            Some(0.0),
            "{text}"
        );
        assert_eq!(sample(&text, d, &[&code("200"), "le=\"10\""]), Some(2.0));
        assert_eq!(sample(&text, d, &[&code("503"), "le=\"100\""]), Some(1.0));
        assert_eq!(
            sample(
                &text,
                "istio_request_duration_milliseconds_sum",
                &[&code("200")]
            ),
            Some(14.0)
        );
        assert_eq!(
            sample(
                &text,
                "istio_response_bytes_bucket",
                &[&code("200"), "le=\"1000\""]
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "istio_response_bytes_bucket",
                &[&code("200"), "le=\"10000\""]
            ),
            Some(2.0)
        );
        assert!(
            text.contains("le=\"1e+09\""),
            "Istio's byte buckets: {text}"
        );
        assert!(text.contains("le=\"3.6e+06\""), "Istio's duration buckets");
        let tcp = ["request_protocol=\"tcp\""];
        assert_eq!(
            sample(&text, "istio_tcp_sent_bytes_total", &tcp),
            Some(1200.0)
        );
        assert_eq!(
            sample(&text, "istio_tcp_received_bytes_total", &tcp),
            Some(10.0)
        );
        assert_eq!(
            sample(&text, "istio_tcp_connections_opened_total", &tcp),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "istio_tcp_connections_closed_total", &tcp),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "istio_requests_total", &tcp),
            None,
            "TCP connections are not requests"
        );
    }

    #[test]
    fn the_route_label_is_opt_in_and_capped() {
        let names = NameIndex::default();
        let metrics = Arc::new(IstioMetrics::new());
        let mut recorder = Recorder::new(metrics.clone(), Some(1));
        for path in ["/users/1", "/users/2?x", "/orders/3"] {
            recorder.record(
                &entry(&format!(
                    r#"{{"type":"http","duration":1,"path":"{path}","response_code":200}}"#
                )),
                &names,
            );
        }
        recorder.record(&entry(r#"{"type":"tcp","duration":1}"#), &names);
        let text = metrics.render().unwrap();
        assert_eq!(
            sample(&text, "istio_requests_total", &["route=\"/users/{id}\""]),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "istio_requests_total", &["route=\"other\""]),
            Some(1.0)
        );
        let opened = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .unwrap_or_default();
        assert!(!opened.contains("route="), "TCP has no route: {opened}");
    }
}
