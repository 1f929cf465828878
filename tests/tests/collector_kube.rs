//! `redirector collect` in kube mode (`--kubeconfig`): the collector's real kube-rs watchers on
//! Services, EndpointSlices and Pods talk to the API test server (`kube_fake`,
//! a fixture), and synthetic lines in the format of `deploy/envoy.yaml`'s `json_format` are
//! appended to the access log it follows, as Envoy would append them. The records must name
//! request sources after the Pods the API serves, whether listed at start or seen later by the
//! watch. No root and no namespaces needed: the collector only reads a file and talks HTTP to
//! 127.0.0.1. Every wait has a deadline; the collector is stopped by its PID.

use std::{
    fs::OpenOptions,
    io::Write as _,
    path::Path,
    process::{Command, ExitStatus},
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use kube_fake::KubeApiServer;
use l7r_lab::{
    process::LoggedChild,
    sys::{TempFile, json_lines},
};
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_redirector-under-test");
/// The records' `host`.
const NODE_NAME: &str = "test-node";
/// Long enough that a test never sees the interval end on its own: SIGTERM ends it.
const LONG_INTERVAL: &str = "300";

/// The Service `shop/web`: its ClusterIP is the original destination of every request.
const CLUSTER_IP: &str = "10.96.0.10";
/// The client Pod's address, and the aggregated name the collector must give it.
const CLIENT_IP: &str = "10.244.1.4";
const CLIENT_NAME: &str = "frontend-7d9f8-*";
/// The backend Pod's address (the Service's only endpoint).
const BACKEND_IP: &str = "10.244.2.5";
const BACKEND_PORT: u16 = 8000;
/// How long the collector gets to start, list and follow the log.
const STARTUP: Duration = Duration::from_secs(20);

fn owned_pod(name: &str, owner: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "shop", "labels": {"app": owner},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner,
                                 "uid": format!("{owner}-uid"), "controller": true,
                                 "blockOwnerDeletion": true}]
        },
        "spec": {"nodeName": NODE_NAME, "containers": [{"name": "app", "image": "example/app:1"}]},
        // Nothing in the fixture runs Pods: the status is what the kubelet would report.
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "containerStatuses": [{"name": "app", "image": "example/app:1", "imageID": "",
                                   "ready": true, "restartCount": 0,
                                   "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}]
        }
    })
}

/// `shop/web` (80 → 8000), its EndpointSlice, the client Pod and the backend Pod, each Pod
/// owned by a ReplicaSet as a Deployment's would be.
fn cluster() -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop",
                         "annotations": {"projectcalico.org/l7-logging": "true"}},
            "spec": {"clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP], "selector": {"app": "web"},
                     "ports": [{"port": 80, "targetPort": BACKEND_PORT, "protocol": "TCP"}]}
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-x1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [BACKEND_IP], "conditions": {"ready": true},
                           "targetRef": {"kind": "Pod", "namespace": "shop",
                                         "name": "web-5f7c9-q8w2e"}}],
            "ports": [{"port": BACKEND_PORT, "protocol": "TCP", "name": ""}]
        }),
        owned_pod("frontend-7d9f8-x7k2p", "frontend-7d9f8", CLIENT_IP),
        owned_pod("web-5f7c9-q8w2e", "web-5f7c9", BACKEND_IP),
    ]
}

/// One access log line for a request from `source` to `shop/web`'s ClusterIP, as Envoy writes
/// it with `deploy/envoy.yaml`'s `json_format` (numeric operators as JSON numbers).
fn access_line(source_ip: &str, method: &str, path: &str, code: u16) -> String {
    // Envoy gives every request its own id; so do the tests, to keep lines realistic.
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    json!({
        "type": "http",
        "start_time": "2025-01-01T00:00:00.000Z",
        "duration": 3,
        "upstream_service_time": "1",
        "method": method,
        "path": path,
        "protocol": "HTTP/1.1",
        "response_code": code,
        "response_flags": "-",
        "bytes_received": 0,
        "bytes_sent": 12,
        "user_agent": "l7r-test/1",
        "authority": "web.shop",
        "request_id": format!("00000000-0000-4000-8000-{id:012x}"),
        "downstream_remote_address": format!("{source_ip}:40000"),
        "downstream_local_address": format!("{CLUSTER_IP}:80"),
        "upstream_host": format!("{BACKEND_IP}:{BACKEND_PORT}"),
    })
    .to_string()
}

/// `redirector collect` with JSON logs, in this process's namespaces (it needs no lab and no
/// root), stopped by its PID on drop.
struct Collector(LoggedChild);

impl Collector {
    fn spawn(args: &[&str]) -> Result<Self> {
        let mut cmd = Command::new(EXE);
        cmd.arg("collect")
            .args(args)
            // JSON, so waits match fields rather than text; debug for the sources, whose
            // "listed" lines say when each watcher has its first list.
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info,redirector::k8s::sources::kube=debug")
            .env_remove("KUBECONFIG");
        Ok(Self(LoggedChild::spawn_here(cmd, "collector")?))
    }

    /// Everything it logged so far, for error messages.
    fn log(&self) -> String {
        self.0.log()
    }

    /// Whether it logged a line whose `fields` satisfy `wanted`.
    fn logged(&self, wanted: impl Fn(&Value) -> bool) -> bool {
        self.log().lines().any(|line| {
            serde_json::from_str::<Value>(line).is_ok_and(|record| wanted(&record["fields"]))
        })
    }

    /// Waits until it logged `what` (`fields.message`, and `kind` when given); fails at once
    /// if it exited.
    fn wait_for_log(&mut self, message: &str, kind: Option<&str>, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self.logged(|f| f["message"] == message && kind.is_none_or(|k| f["kind"] == k)) {
                return Ok(());
            }
            if let Some(status) = self.0.try_wait()? {
                bail!("the collector exited ({status}). Log:\n{}", self.log());
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {limit:?} waiting for the collector to log {message:?} \
                     ({kind:?}). Log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until it follows the access log and each watcher listed once. Only then do
    /// appended lines find the listed objects: the collector may follow the log before its
    /// watchers have listed anything. (A watcher logs "listed" just before it hands the list
    /// over; the collector takes hand-overs before reading the log, at its next poll.)
    fn wait_until_ready(&mut self) -> Result<()> {
        self.wait_for_log("following the access log from its end", None, STARTUP)?;
        for kind in ["Service", "EndpointSlice", "Pod"] {
            self.wait_for_log("listed", Some(kind), STARTUP)?;
        }
        Ok(())
    }

    /// SIGTERM (it then writes the unfinished interval), and its exit status.
    fn terminate(&mut self) -> Result<ExitStatus> {
        self.0.terminate()
    }
}

/// Everything one test needs. Fields drop in order: the collector stops before the files go
/// and before the API server does (so it does not log a failing watch on its way out).
struct World {
    collector: Collector,
    access_log: TempFile,
    output: TempFile,
    server: KubeApiServer,
}

impl World {
    /// The API server with [`cluster`], and a collector in kube mode that is ready.
    fn start(interval_seconds: &str) -> Result<Self> {
        let server = KubeApiServer::start(cluster())?;
        let access_log = TempFile::new("collector-kube-access.log");
        let output = TempFile::new("collector-kube-out.jsonl");
        // The collector follows the log from its end, so the file must be there first, as
        // Envoy's is when the collector container starts.
        std::fs::write(&access_log.0, "").context("cannot create the access log")?;
        let kubeconfig = server.kubeconfig();
        let mut collector = Collector::spawn(&[
            "--kubeconfig",
            path_arg(&kubeconfig)?,
            "--access-log",
            access_log.arg(),
            "--output",
            output.arg(),
            "--log-interval-seconds",
            interval_seconds,
            "--node-name",
            NODE_NAME,
            "--poll-interval",
            "100ms",
        ])?;
        collector.wait_until_ready()?;
        Ok(Self {
            collector,
            access_log,
            output,
            server,
        })
    }

    /// Appends `lines` to the access log in one write, as Envoy flushes a batch.
    fn append(&self, lines: &[String]) -> Result<()> {
        let mut text = lines.join("\n");
        text.push('\n');
        OpenOptions::new()
            .append(true)
            .open(&self.access_log.0)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .context("cannot append to the access log")
    }

    /// The records written so far.
    fn records(&self) -> Result<Vec<Value>> {
        json_lines(&self.output.0)
    }

    /// Stops the collector (it writes the unfinished interval first) and returns its records.
    fn stop_and_read(&mut self) -> Result<Vec<Value>> {
        let status = self.collector.terminate()?;
        ensure!(
            status.success(),
            "the collector failed ({status}). Log:\n{}",
            self.collector.log()
        );
        self.records()
    }
}

fn path_arg(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// The records for `url`, a path of the Service's host (records' `url` is authority + path).
fn for_url<'a>(records: &'a [Value], url: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["url"] == format!("web.shop{url}"))
        .collect()
}

/// Checks that `r` names its source `source_name` (a Pod of `shop`) and its destination
/// `shop/web` and its backends.
fn check_names(r: &Value, source_name: &str) -> Result<()> {
    for (field, want) in [
        ("src_name_aggr", Value::from(source_name)),
        ("src_namespace", "shop".into()),
        ("src_type", "wep".into()),
        ("dest_name_aggr", "web-5f7c9-*".into()),
        ("dest_namespace", "shop".into()),
        ("dest_type", "wep".into()),
        ("dest_service_name", "web".into()),
        ("dest_service_namespace", "shop".into()),
        ("dest_service_port", 80.into()),
        ("dest_port_num", 80.into()),
        ("host", NODE_NAME.into()),
    ] {
        ensure!(
            r[field] == want,
            "{field} is {}, expected {want}: {r:#}",
            r[field]
        );
    }
    Ok(())
}

#[test]
fn listed_pods_name_request_sources() -> Result<()> {
    let mut w = World::start(LONG_INTERVAL)?;
    let mut lines = Vec::new();
    lines.extend((0..3).map(|_| access_line(CLIENT_IP, "GET", "/a", 200)));
    lines.extend((0..2).map(|_| access_line(CLIENT_IP, "GET", "/b", 404)));
    w.append(&lines)?;
    let records = w.stop_and_read()?;
    ensure!(
        records.len() == 2,
        "expected exactly two records: {records:#?}\nLog:\n{}",
        w.collector.log()
    );
    for (url, count, code) in [("/a", 3, "200"), ("/b", 2, "404")] {
        let found = for_url(&records, url);
        let [r] = found.as_slice() else {
            bail!("expected one record for {url}: {records:#?}");
        };
        check_names(r, CLIENT_NAME)?;
        ensure!(r["count"] == count, "count of {url}: {r:#}");
        ensure!(r["response_code"] == code, "response code of {url}: {r:#}");
        ensure!(r["method"] == "GET", "{r:#}");
    }
    Ok(())
}

#[test]
fn a_pod_seen_by_the_watch_names_later_requests() -> Result<()> {
    // One-second intervals, so the test can see what became of a request without stopping
    // the collector.
    let mut w = World::start("1")?;
    let (ip, name) = ("10.244.1.7", "checkout-6c4d2-*");
    let deadline = Duration::from_secs(15);

    // Before the Pod exists, its address names nothing: what names it later is the watch.
    w.append(&[access_line(ip, "GET", "/before", 200)])?;
    let before = wait_for_record(&w, "/before", None, deadline, |_| true)?;
    ensure!(
        before["src_type"] != "wep" && before["src_name_aggr"] != name,
        "named before the Pod existed: {before:#}"
    );

    let created = w
        .server
        .apply(&owned_pod("checkout-6c4d2-m9z8t", "checkout-6c4d2", ip))?;
    ensure!(created["status"]["podIP"] == ip, "{created:#}");
    // No log line says the watch event arrived, so send a request at a time until one is
    // named after the new Pod.
    let probe = wait_for_record(&w, "/probe", Some(ip), deadline, |r| {
        r["src_name_aggr"] == name
    })?;
    check_names(&probe, name)?;

    // From then on, every request from the address is the Pod's.
    w.append(&[
        access_line(ip, "GET", "/after", 200),
        access_line(ip, "GET", "/after", 200),
        access_line(CLIENT_IP, "GET", "/after", 200),
    ])?;
    let records = w.stop_and_read()?;
    let after = for_url(&records, "/after");
    let count = |source: &str| -> u64 {
        after
            .iter()
            .filter(|r| r["src_name_aggr"] == source)
            .filter_map(|r| r["count"].as_u64())
            .sum()
    };
    ensure!(
        count(name) == 2 && count(CLIENT_NAME) == 1,
        "expected 2 requests from {name} and 1 from {CLIENT_NAME}: {after:#?}"
    );
    for r in after.iter().filter(|r| r["src_name_aggr"] == name) {
        check_names(r, name)?;
    }
    Ok(())
}

/// Waits for a record of `url` that is `wanted`; fails after `limit` with the records and the
/// log. With `probe_from`, a request for `url` from that address is appended at each try, for
/// a change the test cannot otherwise tell the collector has seen.
fn wait_for_record(
    w: &World,
    url: &str,
    probe_from: Option<&str>,
    limit: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(r) = w
            .records()?
            .into_iter()
            .find(|r| r["url"] == format!("web.shop{url}") && wanted(r))
        {
            return Ok(r);
        }
        if Instant::now() >= deadline {
            bail!(
                "no wanted record for {url} within {limit:?}: {:#?}\nLog:\n{}",
                w.records()?,
                w.collector.log()
            );
        }
        if let Some(source_ip) = probe_from {
            w.append(&[access_line(source_ip, "GET", url, 200)])?;
        }
        thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn kubectl_lists_the_pods_the_collector_names_after() -> Result<()> {
    let server = KubeApiServer::start(cluster())?;
    let out = server
        .kubectl()
        .args(["get", "pods", "-A", "-o", "wide"])
        .output()
        .context("cannot run kubectl")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "kubectl get pods failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "NAMESPACE",
        "READY",
        "STATUS",
        "IP",
        "NODE",
        "frontend-7d9f8-x7k2p",
        "web-5f7c9-q8w2e",
        "1/1",
        "Running",
        CLIENT_IP,
        BACKEND_IP,
        NODE_NAME,
    ] {
        ensure!(stdout.contains(want), "no {want:?} in:\n{stdout}");
    }
    let pod = server
        .get_pod("shop", "frontend-7d9f8-x7k2p")
        .context("the client Pod is gone")?;
    ensure!(pod.status.and_then(|s| s.pod_ip).as_deref() == Some(CLIENT_IP));
    Ok(())
}
