//! End to end for `redirector collect --ui-addr`: the real Envoy carries known traffic from
//! the client pod to two selected Services, `shop/web` (some answered 500) and `shop/api`, the
//! collector follows its access log and serves the service graph page, and Debian's Chromium,
//! driven headless by playwright-core (`tests/ui/service-graph.mjs`, installed by `cargo xtask
//! setup`), reads what the page draws: the nodes, the edges with their rps, error % and p95,
//! and each edge's HTTP tab. The numbers must be those of Envoy's access log. The `api`
//! traffic is sent only once the page shows `web`'s, so the page must pick it up by itself.
//! The screenshot goes to `target/ui/service-graph.png`. Run as root: `sudo cargo xtask test`.
//!
//! The collector and the browser run in the lab's node namespace (the collector as it does
//! with hostNetwork), on loopback; the browser has a fresh profile and no network beyond it.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use l7r_lab::{
    client::connect_stream,
    daemon::eventually,
    e2e::{self, HTTP_PORT},
    http::{HttpBackend, HttpConn},
    lab::{BACKEND4, CLIENT4, sa},
    manifests::ServiceSpec,
    netns::Netns,
    process::{LoggedChild, spawn_in},
    sys::TempFile,
};
use serde_json::Value;

use crate::REDIRECTOR as EXE;

/// `shop/api`'s ClusterIP.
const API_IP: &str = "10.96.0.11";
/// The address of the lab's first extra backend pod (`Lab::add_backend_pod`), `api`'s.
const API_POD: &str = "10.77.3.2";

const CLIENT: &str = "workload:shop/client";
const WEB_SVC: &str = "service:shop/web";
const WEB: &str = "workload:shop/web";
const API_SVC: &str = "service:shop/api";
const API: &str = "workload:shop/api";

fn edge(from: &str, to: &str) -> String {
    format!("{from}->{to}")
}

/// Both Services, selected, and Pods for the client and both backends, owned by ReplicaSets
/// as a Deployment's are.
fn services_yaml() -> String {
    let pod = |name: &str, owner: &str, ip: &str| {
        format!(
            "---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: shop
  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: {owner}, uid: {owner}-uid, controller: true}}]
status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
"
        )
    };
    let api = ServiceSpec {
        namespace: "shop".into(),
        name: "api".into(),
        cluster_ip: API_IP.into(),
        port: 80,
        endpoint_ip: API_POD.into(),
        endpoint_port: HTTP_PORT,
        annotation: Some("true".into()),
    };
    format!(
        "{}---\n{}{}{}{}",
        e2e::web_service(Some("true")).yaml(),
        api.yaml(),
        pod("client-6b8d5-x7k2p", "client-6b8d5", CLIENT4),
        pod("web-5f7c9-q8w2e", "web-5f7c9", BACKEND4),
        pod("api-7c4d9-m3n8b", "api-7c4d9", API_POD),
    )
}

/// A loopback address with a port nobody in `ns` listens on.
fn free_loopback(ns: &Netns) -> Result<SocketAddr> {
    ns.run(|| -> Result<SocketAddr> { Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?) })?
}

/// The workspace's root (this package is `tests/`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// The browser script, started by the test and killed by its PID if still running on drop.
struct Browser {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: thread::JoinHandle<String>,
}

impl Browser {
    fn start(ns: &Netns, args: &[String]) -> Result<Self> {
        let dir = workspace().join("tests").join("ui");
        ensure!(
            dir.join("node_modules/playwright-core/package.json")
                .exists()
                && Path::new("/usr/bin/chromium").exists(),
            "playwright-core or Chromium is missing: run `cargo xtask setup` (npm ci in {}, \
             Debian's chromium)",
            dir.display()
        );
        let mut cmd = Command::new("node");
        cmd.arg("service-graph.mjs")
            .args(args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_in(cmd, ns, None).context("cannot start node")?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().context("no stdout")?;
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err = child.stderr.take().context("no stderr")?;
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        Ok(Self {
            child,
            lines,
            stderr,
        })
    }

    /// The next line it prints, within `limit`.
    fn line(&mut self, limit: Duration) -> Result<String> {
        match self.lines.recv_timeout(limit) {
            Ok(line) => Ok(line),
            Err(e) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = std::mem::replace(&mut self.stderr, thread::spawn(String::new));
                bail!(
                    "the browser script printed nothing more ({e}): {}",
                    stderr.join().unwrap_or_default()
                )
            }
        }
    }

    /// Waits for it to exit; fails unless it succeeded.
    fn finish(mut self) -> Result<()> {
        let status = self.child.wait()?;
        let stderr = std::mem::replace(&mut self.stderr, thread::spawn(String::new));
        let stderr = stderr.join().unwrap_or_default();
        ensure!(
            status.success(),
            "the browser script failed ({status}): {stderr}"
        );
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One request from the client pod to `service` (a ClusterIP), through Envoy; its status.
fn request(
    world: &e2e::World,
    service: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
) -> Result<u16> {
    let stream = connect_stream(&world.lab.client_ns, &world.lab.client_cgroup, service)?;
    let response = HttpConn::new(stream, host)?.request(method, path)?;
    ensure!(
        response.via_envoy(),
        "{method} {path} to {host} did not go through Envoy: {response:?}"
    );
    Ok(response.status)
}

/// A request kind in Envoy's log: ClusterIP and port, method, path without query, code.
type Kind = (String, String, String, String);

/// Envoy's durations, by request kind.
fn logged(envoy_log: &[Value]) -> BTreeMap<Kind, Vec<u64>> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out: BTreeMap<_, Vec<u64>> = BTreeMap::new();
    for l in envoy_log.iter().filter(|l| l["type"] == "http") {
        let ip = text(&l["downstream_local_address"]);
        let path = text(&l["path"]);
        let path = path.split('?').next().unwrap_or_default().to_string();
        let duration = text(&l["duration"]).parse().unwrap_or(0);
        out.entry((ip, text(&l["method"]), path, text(&l["response_code"])))
            .or_default()
            .push(duration);
    }
    out
}

/// A duration as the page writes it.
fn page_ms(ms: u64) -> String {
    if ms >= 1000 {
        format!("{:.2} s", ms as f64 / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

/// Nearest-rank p95.
fn p95(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    let rank = (0.95 * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

#[test]
fn the_page_draws_the_traffic_envoy_logged() -> Result<()> {
    let mut world = e2e::World::new(EXE, &services_yaml(), true)?;
    let (api_ns, api_ip) = world.lab.add_backend_pod()?;
    ensure!(api_ip.to_string() == API_POD, "the extra pod is {api_ip}");
    let _api_backend = HttpBackend::start(api_ns, &[sa(API_POD, HTTP_PORT)])?;
    let api = sa(API_IP, 80);
    world.lab.emulate_cluster_ip(api, sa(API_POD, HTTP_PORT))?;
    eventually("shop/api selected", Duration::from_secs(5), || {
        Ok(world
            .lab
            .pinned_destinations()?
            .contains(&api)
            .then_some(()))
    })
    .with_context(|| world.daemon.log())?;

    let ns = &world.lab.node_ns;
    let ui_addr = free_loopback(ns)?;
    let records = TempFile::new("graph-records.jsonl");
    let access_log = world.envoy.access_log.to_string_lossy().into_owned();
    let ui_arg = ui_addr.to_string();
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
        "--ui-addr",
        &ui_arg,
    ]);
    let mut collector = LoggedChild::spawn(cmd, ns, None, "collector")?;
    collector.wait_for_log("following the access log", Duration::from_secs(10))?;

    // `web`: 12 OK (with query strings, which the table drops) and 4 answered 500.
    let web = e2e::cluster();
    let mut sent = 0;
    for i in 0..12 {
        ensure!(request(&world, web, "web.shop", "GET", &format!("/a?i={i}"))? == 200);
    }
    for _ in 0..4 {
        ensure!(request(&world, web, "web.shop", "GET", "/status/500")? == 500);
    }
    sent += 16;
    world.envoy.wait_for_log_lines(sent)?;

    let screenshot = workspace().join("target/ui/service-graph.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut browser = Browser::start(
        ns,
        &[
            "--url".into(),
            format!("http://{ui_addr}/"),
            "--screenshot".into(),
            screenshot.to_string_lossy().into_owned(),
            "--first".into(),
            [edge(CLIENT, WEB_SVC), edge(WEB_SVC, WEB)].join(","),
            "--then".into(),
            [edge(CLIENT, API_SVC), edge(API_SVC, API)].join(","),
            "--select".into(),
            edge(CLIENT, WEB_SVC),
        ],
    )?;
    let ready = browser.line(Duration::from_secs(45))?;
    ensure!(ready == "ready", "the browser script said {ready:?}");

    // `api`, once the page is up: 6 OK POSTs and 2 answered 404 (not an error).
    for _ in 0..6 {
        ensure!(request(&world, api, "api.shop", "POST", "/orders")? == 200);
    }
    for _ in 0..2 {
        ensure!(request(&world, api, "api.shop", "GET", "/status/404")? == 404);
    }
    sent += 8;
    let envoy_log = world.envoy.wait_for_log_lines(sent)?;
    let shown: Value = serde_json::from_str(&browser.line(Duration::from_secs(45))?)
        .context("the browser script's JSON")?;
    browser.finish()?;
    eprintln!("page: {shown:#}");

    ensure!(
        shown["errors"] == Value::Array(vec![]),
        "page errors: {}",
        shown["errors"]
    );
    ensure!(
        shown["external"] == Value::Array(vec![]),
        "requests elsewhere: {}",
        shown["external"]
    );
    ensure!(
        shown["updates_at_then"].as_u64() > shown["updates_at_ready"].as_u64(),
        "the page refreshed by itself"
    );
    ensure!(
        shown["still_selected"] == true,
        "the selection survives a refresh"
    );

    let nodes: BTreeMap<String, (String, Vec<String>)> = shown["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .map(|n| {
            let text = n["text"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (
                n["id"].as_str().unwrap_or_default().to_string(),
                (n["kind"].as_str().unwrap_or_default().to_string(), text),
            )
        })
        .collect();
    let want_nodes: BTreeMap<String, (String, Vec<String>)> = [
        (CLIENT, "workload", "client"),
        (WEB_SVC, "service", "web"),
        (WEB, "workload", "web"),
        (API_SVC, "service", "api"),
        (API, "workload", "api"),
    ]
    .into_iter()
    .map(|(id, kind, name)| {
        (
            id.to_string(),
            (
                kind.to_string(),
                vec![kind.to_string(), name.to_string(), "shop".into()],
            ),
        )
    })
    .collect();
    assert_eq!(nodes, want_nodes, "the nodes drawn");

    let edges: BTreeMap<String, (String, String)> = shown["edges"]
        .as_array()
        .context("edges")?
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("id"), (s("health"), s("label")))
        })
        .collect();
    let ids: BTreeSet<&str> = edges.keys().map(String::as_str).collect();
    let want_ids = [
        edge(CLIENT, WEB_SVC),
        edge(WEB_SVC, WEB),
        edge(CLIENT, API_SVC),
        edge(API_SVC, API),
    ];
    assert_eq!(
        ids,
        want_ids.iter().map(String::as_str).collect(),
        "the edges drawn"
    );

    // Each edge, from its label and HTTP tab, against Envoy's access log.
    let log = logged(&envoy_log);
    let web_ip = format!("{}:80", e2e::CLUSTER_IP);
    let api_ip = format!("{API_IP}:80");
    for (id, ip, error_percent, health) in [
        (edge(CLIENT, WEB_SVC), &web_ip, "25.0%", "bad"),
        (edge(WEB_SVC, WEB), &web_ip, "25.0%", "bad"),
        (edge(CLIENT, API_SVC), &api_ip, "0.0%", "ok"),
        (edge(API_SVC, API), &api_ip, "0.0%", "ok"),
    ] {
        let rows: Vec<(&Kind, &Vec<u64>)> = log.iter().filter(|(k, _)| &k.0 == ip).collect();
        let durations: Vec<u64> = rows.iter().flat_map(|(_, d)| d.iter().copied()).collect();
        let (shown_health, label) = &edges[&id];
        assert_eq!(shown_health, health, "{id}: colour");
        let want_p95 = page_ms(p95(durations.clone()));
        ensure!(
            label.contains(&format!("{error_percent} err"))
                && label.contains(&format!("p95 {want_p95}")),
            "{id}: label {label:?}, want {error_percent} err and p95 {want_p95}"
        );
        let d = &shown["details"][&id];
        let stat = |k: &str| d["stats"][k].as_str().unwrap_or_default().to_string();
        assert_eq!(
            stat("requests"),
            durations.len().to_string(),
            "{id}: requests"
        );
        assert_eq!(stat("errors"), error_percent, "{id}: errors");
        assert_eq!(stat("p95"), want_p95, "{id}: p95");
        assert_eq!(
            stat("max"),
            page_ms(durations.iter().copied().max().unwrap_or(0)),
            "{id}: max"
        );
        let rps: f64 = stat("rps")
            .parse()
            .with_context(|| format!("{id}: rps {d}"))?;
        ensure!(
            rps > 0.0 && rps <= durations.len() as f64,
            "{id}: rps {rps}"
        );

        // The table: method, path, code and count exactly; max exactly; mean to its digit.
        let mut table: Vec<Vec<String>> = d["rows"]
            .as_array()
            .context("rows")?
            .iter()
            .map(|r| {
                r.as_array()
                    .map(|c| {
                        c.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        table.sort();
        let mut want: Vec<Vec<String>> = rows
            .iter()
            .map(|((_, method, path, code), d)| {
                vec![
                    method.clone(),
                    path.clone(),
                    code.clone(),
                    d.len().to_string(),
                ]
            })
            .collect();
        want.sort();
        assert_eq!(
            table
                .iter()
                .map(|r| r[..4.min(r.len())].to_vec())
                .collect::<Vec<_>>(),
            want,
            "{id}: HTTP table"
        );
        for ((_, method, path, code), d) in &rows {
            let row = table
                .iter()
                .find(|r| r.len() == 6 && (&r[0], &r[1], &r[2]) == (method, path, code))
                .context("row")?;
            let mean = d.iter().sum::<u64>() as f64 / d.len() as f64;
            let shown_mean: f64 = row[4]
                .trim_end_matches(" ms")
                .parse()
                .with_context(|| format!("{id}: mean {:?}", row[4]))?;
            ensure!(
                (shown_mean - mean).abs() < 0.051,
                "{id}: mean {shown_mean}, logged {mean}"
            );
            assert_eq!(
                row[5],
                page_ms(d.iter().copied().max().unwrap_or(0)),
                "{id}: max of {path}"
            );
        }
        // Top URLs: requests per path.
        let mut urls: BTreeMap<String, usize> = BTreeMap::new();
        for ((_, _, path, _), d) in &rows {
            *urls.entry(path.clone()).or_default() += d.len();
        }
        let shown_urls: BTreeMap<String, usize> = d["top_urls"]
            .as_array()
            .context("top_urls")?
            .iter()
            .filter_map(|u| Some((u[0].as_str()?.to_string(), u[1].as_str()?.parse().ok()?)))
            .collect();
        assert_eq!(shown_urls, urls, "{id}: top URLs");
    }
    assert_eq!(
        shown["selected"]["title"], "shop/client → shop/web",
        "the selected edge's tab"
    );
    ensure!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );

    let status = collector.terminate()?;
    ensure!(
        status.success(),
        "the collector failed ({status}): {}",
        collector.log()
    );
    Ok(())
}
