//! The daemon's metrics: values in atomics that the daemon and its sources update, rendered
//! in Prometheus text format together with the kernel counters a scrape read. Pure: no I/O, so
//! rendering is unit-tested.

use std::{
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use redirector_common::{CounterInfo, Counters};

use crate::{build_info, k8s::sources::SourceStats};

/// Upper bounds of the reconcile duration histogram, in seconds.
const BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The daemon's own metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    selected_services: AtomicU64,
    map_entries: AtomicU64,
    map_capacity: AtomicU64,
    map_overflow: AtomicU64,
    proxy4_ready: AtomicU64,
    proxy6_ready: AtomicU64,
    sources: Arc<SourceStats>,
    reconcile_errors: AtomicU64,
    synced: AtomicBool,
    reconcile: Mutex<Histogram>,
}

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    /// Metrics that also publish what `sources` count.
    pub fn new(sources: Arc<SourceStats>) -> Self {
        Self {
            sources,
            ..Self::default()
        }
    }

    /// A reconcile failed.
    pub fn reconcile_error(&self) {
        self.reconcile_errors.fetch_add(1, Relaxed);
    }

    /// A reconcile finished.
    pub fn reconciled(&self, took: Duration, services: usize, entries: usize, overflow: usize) {
        self.selected_services.store(services as u64, Relaxed);
        self.map_entries.store(entries as u64, Relaxed);
        self.map_overflow.store(overflow as u64, Relaxed);
        self.synced.store(true, Relaxed);
        let secs = took.as_secs_f64();
        let mut h = self.reconcile.lock().unwrap_or_else(|e| e.into_inner());
        h.count += 1;
        h.sum += secs;
        for (bound, count) in BUCKETS.iter().zip(h.counts.iter_mut()) {
            if secs <= *bound {
                *count += 1;
            }
        }
    }

    /// The capacity of the `services` map.
    pub fn set_capacity(&self, capacity: u32) {
        self.map_capacity.store(u64::from(capacity), Relaxed);
    }

    /// Proxy readiness as the kernel programs decide it (the lease, and the last failure).
    pub fn set_proxy_ready(&self, v4: bool, v6: bool) {
        self.proxy4_ready.store(u64::from(v4), Relaxed);
        self.proxy6_ready.store(u64::from(v6), Relaxed);
    }

    /// Whether the first full sync is in the map (`/readyz`).
    pub fn ready(&self) -> bool {
        self.synced.load(Relaxed) && self.map_overflow.load(Relaxed) == 0
    }

    /// Prometheus text exposition, with the kernel counters if they could be read.
    pub fn render(&self, kernel: Option<&Counters>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP l7r_build_info The daemon's version, source revision and embedded kernel \
             object (always 1).\n# TYPE l7r_build_info gauge\n\
             l7r_build_info{{version=\"{}\",revision=\"{}\",ebpf_sha256=\"{}\"}} 1",
            build_info::VERSION,
            build_info::SOURCE_REVISION,
            build_info::ebpf_object_sha256().unwrap_or("none")
        );
        let mut gauge = |name: &str, help: &str, kind: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let g = |a: &AtomicU64| a.load(Relaxed).to_string();
        gauge(
            "l7r_selected_services",
            "Services selected for L7 logging.",
            "gauge",
            g(&self.selected_services),
        );
        gauge(
            "l7r_map_entries",
            "Destinations in the services map.",
            "gauge",
            g(&self.map_entries),
        );
        gauge(
            "l7r_map_capacity",
            "Capacity of the services map.",
            "gauge",
            g(&self.map_capacity),
        );
        gauge(
            "l7r_map_overflow",
            "Selected destinations that did not fit in the services map.",
            "gauge",
            g(&self.map_overflow),
        );
        gauge(
            "l7r_proxy_ready",
            "1 while the kernel steers to the IPv4 proxy: its readiness lease runs and no steered connect failed since (0: traffic goes direct).",
            "gauge",
            g(&self.proxy4_ready),
        );
        gauge(
            "l7r_proxy6_ready",
            "1 while the kernel steers to the IPv6 proxy.",
            "gauge",
            g(&self.proxy6_ready),
        );
        gauge(
            "l7r_watch_events_total",
            "Changes delivered by the source (API watch or file).",
            "counter",
            self.sources.events().to_string(),
        );
        gauge(
            "l7r_watch_errors_total",
            "Source failures (watch errors, unreadable or broken file).",
            "counter",
            self.sources.errors().to_string(),
        );
        gauge(
            "l7r_reconcile_errors_total",
            "Failed reconciles.",
            "counter",
            g(&self.reconcile_errors),
        );
        gauge(
            "l7r_synced",
            "1 once the first full sync is in the map.",
            "gauge",
            u64::from(self.synced.load(Relaxed)).to_string(),
        );
        if let Some(c) = kernel {
            render_kernel_counters(&mut out, c);
            // The sum an alert should watch: each one is a connection that went unlogged or,
            // for orig_dst, failed at the proxy.
            let _ = writeln!(
                out,
                "# HELP l7r_kernel_allocation_failures_total Connections the kernel programs \
                 could not record for lack of memory (socket storage: sent direct, unlogged; \
                 orig_dst: the proxy could not find the destination). On Linux 5.11+ this memory \
                 is charged to the daemon's memory cgroup: when this rises, raise its container's \
                 memory limit.\n# TYPE l7r_kernel_allocation_failures_total counter\n\
                 l7r_kernel_allocation_failures_total {}",
                c.allocation_failures()
            );
        }
        let h = self.reconcile.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            out,
            "# HELP l7r_reconcile_duration_seconds Time to compute and write one reconcile.\n\
             # TYPE l7r_reconcile_duration_seconds histogram"
        );
        for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
            let _ = writeln!(
                out,
                "l7r_reconcile_duration_seconds_bucket{{le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "l7r_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {}\n\
             l7r_reconcile_duration_seconds_sum {}\n\
             l7r_reconcile_duration_seconds_count {}",
            h.count, h.sum, h.count
        );
        out
    }
}

/// The kernel counters, from [`Counters::FIELDS`]: one sample per counter, grouped into their
/// metric families (a family with labels gets one HELP line naming its members).
fn render_kernel_counters(out: &mut String, counters: &Counters) {
    let mut fields = Counters::FIELDS.iter().peekable();
    while let Some(first) = fields.next() {
        let mut family: Vec<&CounterInfo> = vec![first];
        while let Some(next) = fields.next_if(|f| f.metric == first.metric) {
            family.push(next);
        }
        let help = match first.label {
            None => first.help.trim().to_string(),
            Some((key, _)) => {
                let members: Vec<String> = family
                    .iter()
                    .filter_map(|f| {
                        let (_, value) = f.label?;
                        Some(format!("{value}: {}", f.help.trim().trim_end_matches('.')))
                    })
                    .collect();
                format!("By {key}. {}.", members.join("; "))
            }
        };
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter",
            name = first.metric
        );
        for field in family {
            let value = (field.get)(counters);
            match field.label {
                None => {
                    let _ = writeln!(out, "{} {value}", field.metric);
                }
                Some((key, label)) => {
                    let _ = writeln!(out, "{}{{{key}=\"{label}\"}} {value}", field.metric);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_gauges_counters_and_the_histogram() {
        let sources = Arc::new(SourceStats::default());
        let m = Metrics::new(Arc::clone(&sources));
        m.set_capacity(65536);
        m.reconciled(Duration::from_millis(3), 2, 5, 0);
        sources.event();
        let kernel = Counters {
            seen: 10,
            redirected: 4,
            skipped_proxy_not_ready: 1,
            skipped_record_failed: 2,
            publish_failed: 1,
            ..Counters::default()
        };
        let text = m.render(Some(&kernel));
        let build = format!(
            "l7r_build_info{{version=\"{}\",revision=\"{}\",ebpf_sha256=\"{}\"}} 1",
            build_info::VERSION,
            build_info::SOURCE_REVISION,
            build_info::ebpf_object_sha256().unwrap_or("none")
        );
        for line in [
            build.as_str(),
            "l7r_selected_services 2",
            "l7r_map_entries 5",
            "l7r_map_capacity 65536",
            "l7r_watch_events_total 1",
            "l7r_connections_redirected_total 4",
            "l7r_connections_skipped_total{reason=\"proxy_not_ready\"} 1",
            "l7r_original_dst_lookups_total{result=\"not_found\"} 0",
            "# TYPE l7r_connections_skipped_total counter",
            "l7r_reconcile_duration_seconds_bucket{le=\"0.0025\"} 0",
            "l7r_reconcile_duration_seconds_bucket{le=\"0.005\"} 1",
            "l7r_reconcile_duration_seconds_count 1",
            "l7r_kernel_allocation_failures_total 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(
            text.matches("# TYPE l7r_connections_skipped_total ")
                .count(),
            1,
            "one HELP/TYPE per family:\n{text}"
        );
        assert!(m.ready());
    }

    #[test]
    fn not_ready_before_sync_or_on_overflow() {
        let m = Metrics::default();
        assert!(!m.ready());
        m.reconciled(Duration::ZERO, 1, 10, 3);
        assert!(!m.ready(), "a full map is not ready");
        assert!(!m.render(None).contains("l7r_connections_seen_total"));
    }
}
