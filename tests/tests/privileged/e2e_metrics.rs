//! End to end for `redirector collect --metrics-addr`: the real Envoy carries known traffic
//! from the client pod to the selected Service, the collector follows its access log and
//! serves Istio's metrics, and a real Prometheus server (Debian's `prometheus`, installed by
//! `cargo xtask setup`) scrapes them every second. The PromQL answers that Istio's dashboards
//! and Kiali's graph rely on must be the counts the access log holds, and `promtool check
//! metrics` must accept a scrape. Run as root: `sudo cargo xtask test`.
//!
//! Prometheus runs as the test's own process, in the lab's node namespace (as the collector
//! does, with hostNetwork), with its own configuration, storage in a temporary directory and a
//! free loopback port; it is stopped by its PID when the test ends.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use l7r_lab::{
    client::connect_stream,
    daemon::{eventually, http_get},
    e2e::{self, CLUSTER_IP},
    lab::{BACKEND4, CLIENT4},
    netns::Netns,
    process::LoggedChild,
    sys::{TempFile, unique_id},
};
use serde_json::Value;

use crate::REDIRECTOR as EXE;

/// The selected Service `shop/web`, and Pods for the client and the backend owned by
/// ReplicaSets as a Deployment's would be, with the `app` and `version` labels Istio reads.
fn services_yaml() -> String {
    let pod = |name: &str, owner: &str, app: &str, ip: &str| {
        format!(
            "---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: shop
  labels: {{app: {app}, version: v1}}
  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: {owner}, uid: {owner}-uid, controller: true}}]
status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
"
        )
    };
    format!(
        "{}{}{}",
        e2e::web_service(Some("true")).yaml(),
        pod("client-6b8d5-x7k2p", "client-6b8d5", "client", CLIENT4),
        pod("web-5f7c9-q8w2e", "web-5f7c9", "web", BACKEND4)
    )
}

/// A loopback address with a port nobody in `ns` listens on.
fn free_loopback(ns: &Netns) -> Result<SocketAddr> {
    ns.run(|| -> Result<SocketAddr> { Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?) })?
}

/// A directory removed with what it holds when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("l7r-{what}-{}", unique_id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in the temporary directory harms no later test.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Prometheus server of the test's own, scraping `target` every second.
struct Prometheus {
    child: LoggedChild,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    fn start(ns: &Netns, target: SocketAddr) -> Result<Self> {
        let binary = "/usr/bin/prometheus";
        ensure!(
            std::path::Path::new(binary).exists(),
            "{binary} is missing: run `cargo xtask setup` (Debian's prometheus package)"
        );
        let dir = TempDir::new("prometheus")?;
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: collector
    static_configs: [{{targets: ['{target}']}}]
"
            ),
        )?;
        let addr = free_loopback(ns)?;
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"));
        let mut child = LoggedChild::spawn(cmd, ns, None, "prometheus")?;
        child.wait_for_log(
            "Server is ready to receive web requests",
            Duration::from_secs(30),
        )?;
        Ok(Self {
            child,
            addr,
            _dir: dir,
        })
    }

    /// The result vector of an instant query (`ns`: where it runs): each series' labels and
    /// value.
    fn query(&self, ns: &Netns, promql: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let (status, body) = http_get(
            ns,
            self.addr,
            &format!("/api/v1/query?query={}", percent_encode(promql)),
        )?;
        ensure!(status == 200, "{promql}: HTTP {status}: {body}");
        let answer: Value =
            serde_json::from_str(&body).with_context(|| format!("{promql}: {body}"))?;
        ensure!(answer["status"] == "success", "{promql}: {answer}");
        let Some(result) = answer["data"]["result"].as_array() else {
            bail!("{promql}: no result vector: {answer}");
        };
        result
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .with_context(|| format!("{promql}: no value in {series}"))?;
                Ok((labels, value))
            })
            .collect()
    }
}

/// `text` for a URL's query string.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Requests per response code in Envoy's access log, for HTTP requests to the ClusterIP.
fn access_log_codes(envoy_log: &[Value]) -> BTreeMap<String, u64> {
    let mut codes = BTreeMap::new();
    for line in envoy_log.iter().filter(|l| {
        l["type"] == "http"
            && l["downstream_local_address"].as_str() == Some(&format!("{CLUSTER_IP}:80"))
    }) {
        let code = match &line["response_code"] {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        *codes.entry(code).or_default() += 1;
    }
    codes
}

#[test]
fn prometheus_sees_what_envoy_logged() -> Result<()> {
    let world = e2e::World::new(EXE, &services_yaml(), true)?;
    let ns = &world.lab.node_ns;
    let metrics_addr = free_loopback(ns)?;
    let records = TempFile::new("metrics-records.jsonl");
    let access_log = world.envoy.access_log.to_string_lossy().into_owned();
    let metrics_arg = metrics_addr.to_string();
    let mut cmd = Command::new(EXE);
    cmd.args([
        "collect",
        "--access-log",
        &access_log,
        "--services-file",
        world.file.arg(),
        "--output",
        records.arg(),
        "--poll-interval",
        "100ms",
        "--metrics-addr",
        &metrics_arg,
    ]);
    let mut collector = LoggedChild::spawn(cmd, ns, None, "collector")?;
    collector.wait_for_log("following the access log", Duration::from_secs(10))?;
    let prometheus = Prometheus::start(ns, metrics_addr)?;

    // Two batches with scrapes in between, so that rates have two samples to work with.
    let batches: [&[(&str, usize)]; 2] = [
        &[("/a", 15), ("/status/500", 3), ("/status/503", 2)],
        &[("/b", 15), ("/status/500", 2), ("/status/503", 3)],
    ];
    let mut sent = 0;
    for batch in batches {
        for &(path, count) in batch {
            for _ in 0..count {
                let response = world.request("GET", path)?;
                ensure!(
                    response.via_envoy(),
                    "GET {path} did not go through Envoy: {response:?}"
                );
            }
            sent += count;
        }
        world.envoy.wait_for_log_lines(sent)?;
        let want = sent as f64;
        eventually(
            &format!("Prometheus to see {sent} requests"),
            Duration::from_secs(20),
            || {
                let total = prometheus.query(ns, "sum(istio_requests_total)")?;
                Ok((total.first().map(|t| t.1) == Some(want)).then_some(()))
            },
        )
        .with_context(|| {
            format!(
                "collector: {}\nprometheus: {}",
                collector.log(),
                prometheus.child.log()
            )
        })?;
        // At least two more scrapes of the same values.
        std::thread::sleep(Duration::from_millis(2500));
    }

    // One connection that is not HTTP: Envoy's tcp chain forwards it (the backend answers
    // its garbage with an HTTP response) and logs it when it closes.
    {
        let mut tcp = connect_stream(
            &world.lab.client_ns,
            &world.lab.client_cgroup,
            e2e::cluster(),
        )?;
        tcp.write_all(b"\x16\x03\x01 not http\r\n\r\n")?;
        let mut answer = [0u8; 512];
        let n = tcp.read(&mut answer)?;
        ensure!(n > 0, "no answer on the TCP connection");
    }
    world.envoy.wait_for_log_lines(sent + 1)?;
    eventually(
        "Prometheus to see the TCP connection",
        Duration::from_secs(20),
        || {
            let closed = prometheus.query(ns, "sum(istio_tcp_connections_closed_total)")?;
            Ok((closed.first().map(|c| c.1) == Some(1.0)).then_some(()))
        },
    )
    .with_context(|| collector.log())?;

    let envoy_log = world.envoy.access_log()?;
    let codes = access_log_codes(&envoy_log);
    let logged: u64 = codes.values().sum();
    assert_eq!(
        codes,
        BTreeMap::from([("200".into(), 30), ("500".into(), 5), ("503".into(), 5)]),
        "Envoy's access log"
    );

    // Requests by service pair, as Kiali's graph groups them.
    let pairs = prometheus.query(
        ns,
        "sum(istio_requests_total{reporter=\"source\"}) by (source_workload, source_workload_namespace, source_app, destination_workload, destination_service, destination_service_name, destination_service_namespace, request_protocol, connection_security_policy)",
    )?;
    eprintln!("by service pair: {pairs:?} (access log: {logged})");
    ensure!(pairs.len() == 1, "one service pair: {pairs:?}");
    let (labels, count) = &pairs[0];
    assert_eq!(*count, logged as f64, "requests by service pair");
    for (label, want) in [
        ("source_workload", "client"),
        ("source_workload_namespace", "shop"),
        ("source_app", "client"),
        ("destination_workload", "web"),
        ("destination_service", "web.shop.svc.cluster.local"),
        ("destination_service_name", "web"),
        ("destination_service_namespace", "shop"),
        ("request_protocol", "http"),
        ("connection_security_policy", "unknown"),
    ] {
        assert_eq!(labels.get(label).map(String::as_str), Some(want), "{label}");
    }

    // A rate by service pair is a positive number (two batches, scraped in between).
    let rates = prometheus.query(
        ns,
        "sum(rate(istio_requests_total[1m])) by (source_workload, destination_service_name)",
    )?;
    eprintln!("rate by service pair: {rates:?}");
    ensure!(
        rates.len() == 1 && rates[0].1 > 0.0 && rates[0].1.is_finite(),
        "{rates:?}"
    );

    // The error ratio by response code.
    let ratios = prometheus.query(
        ns,
        "sum(istio_requests_total) by (response_code) / scalar(sum(istio_requests_total))",
    )?;
    eprintln!("share by response code: {ratios:?} (access log: {codes:?})");
    let ratio: BTreeMap<String, f64> = ratios
        .into_iter()
        .map(|(l, v)| (l.get("response_code").cloned().unwrap_or_default(), v))
        .collect();
    let want: BTreeMap<String, f64> = codes
        .iter()
        .map(|(c, n)| (c.clone(), *n as f64 / logged as f64))
        .collect();
    ensure!(
        ratio.len() == want.len()
            && ratio
                .iter()
                .zip(&want)
                .all(|((c1, r1), (c2, r2))| c1 == c2 && (r1 - r2).abs() < 1e-9),
        "error ratio {ratio:?}, access log {want:?}"
    );
    let errors = prometheus.query(
        ns,
        "sum(istio_requests_total{response_code=~\"5..\"}) / sum(istio_requests_total)",
    )?;
    eprintln!("error ratio: {errors:?}");
    assert_eq!(errors.first().map(|e| e.1), Some(10.0 / 40.0));

    // p99 of the durations: a number, no more than the bucket bound above the slowest request.
    let p99 = prometheus.query(
        ns,
        "histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket[1m])) by (le))",
    )?;
    let slowest = envoy_log
        .iter()
        .filter_map(|l| match &l["duration"] {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        })
        .fold(0.0, f64::max);
    let bound = redirector::collector::exporter::DURATION_BUCKETS_MS
        .into_iter()
        .find(|&b| b >= slowest)
        .unwrap_or(f64::INFINITY);
    eprintln!("p99: {p99:?} ms (slowest in the access log: {slowest} ms)");
    let p99 = p99.first().map(|p| p.1).context("no p99")?;
    ensure!(
        p99.is_finite() && p99 >= 0.0 && p99 <= bound,
        "p99 {p99}, slowest request {slowest} ms"
    );

    // TCP: the bytes Envoy logged for the connection, and its names.
    let tcp_lines: Vec<&Value> = envoy_log.iter().filter(|l| l["type"] == "tcp").collect();
    ensure!(tcp_lines.len() == 1, "one TCP line: {tcp_lines:?}");
    let logged_bytes = |field: &str| match &tcp_lines[0][field] {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    for (metric, field) in [
        ("istio_tcp_received_bytes_total", "bytes_received"),
        ("istio_tcp_sent_bytes_total", "bytes_sent"),
    ] {
        let answer = prometheus.query(
            ns,
            &format!("sum({metric}{{request_protocol=\"tcp\"}}) by (source_workload, destination_service_name)"),
        )?;
        eprintln!(
            "{metric}: {answer:?} (access log {field}: {:?})",
            logged_bytes(field)
        );
        ensure!(answer.len() == 1, "{metric}: {answer:?}");
        assert_eq!(Some(answer[0].1), logged_bytes(field), "{metric}");
        assert_eq!(
            answer[0].0.get("source_workload").map(String::as_str),
            Some("client")
        );
        assert_eq!(
            answer[0]
                .0
                .get("destination_service_name")
                .map(String::as_str),
            Some("web")
        );
    }
    let opened = prometheus.query(ns, "sum(istio_tcp_connections_opened_total)")?;
    assert_eq!(opened.first().map(|o| o.1), Some(1.0), "connections opened");

    // Bytes: one histogram count per request.
    let bytes = prometheus.query(ns, "sum(istio_response_bytes_count)")?;
    assert_eq!(bytes.first().map(|b| b.1), Some(logged as f64));

    check_with_promtool(ns, metrics_addr)?;
    drop(prometheus);
    let status = collector.terminate()?;
    ensure!(status.success(), "the collector failed ({status})");
    Ok(())
}

/// `promtool check metrics` on a scrape of the collector: the exposition parses, and the only
/// lint it reports is the one every Istio install gets: Istio's duration histogram is in
/// milliseconds, where Prometheus' naming guide asks for seconds (the name is the contract
/// that dashboards rely on, so it stays).
fn check_with_promtool(ns: &Netns, metrics_addr: SocketAddr) -> Result<()> {
    let (status, scrape) = http_get(ns, metrics_addr, "/metrics")?;
    ensure!(status == 200, "/metrics: HTTP {status}");
    ensure!(scrape.contains("istio_requests_total{"), "{scrape}");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run promtool (Debian's prometheus package)")?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(scrape.as_bytes())?;
    let out = child.wait_with_output()?;
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let unexpected: Vec<&str> = complaints
        .lines()
        .filter(|l| {
            !l.trim().is_empty()
                && *l
                    != "istio_request_duration_milliseconds use base unit \"seconds\" instead of \"milliseconds\""
        })
        .collect();
    eprintln!(
        "promtool check metrics: {:?}: {complaints}",
        out.status.code()
    );
    // 0: clean; 3: lint findings only (1 would be a scrape that does not parse).
    ensure!(
        matches!(out.status.code(), Some(0 | 3)) && unexpected.is_empty(),
        "promtool check metrics failed ({}): {complaints}",
        out.status
    );
    Ok(())
}
