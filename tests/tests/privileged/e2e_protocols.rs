//! End to end for the protocols beyond plain HTTP/1.1 through the real Envoy
//! (`deploy/envoy.yaml`), the real daemon and `redirector collect`: real gRPC, TLS, WebSocket
//! and CONNECT servers and clients (`l7r_lab::protocols`), each behind an annotated Service.
//! Each must work through Envoy as it does directly, and come out in the access log and the
//! records with what the reference product's users look for: a failed gRPC call's status
//! (it answers HTTP 200), the server name a TLS client asked for (the bytes passed through
//! untouched, the certificate the backend's), the WebSocket upgrade, the CONNECT tunnel.
//! Run as root: `sudo cargo xtask test`.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{Context as _, Result, ensure};
use l7r_lab::{
    daemon::eventually,
    e2e::{self, HTTP_PORT},
    lab::{BACKEND4, CLIENT4, NODE4_UPSTREAM, sa},
    manifests::ServiceSpec,
    process::LoggedChild,
    protocols::{Script, TlsServer, curl, tls_handshake},
    sys::{TempFile, json_lines},
};
use serde_json::Value;

use crate::REDIRECTOR as EXE;

/// An annotated Service of `shop` with one endpoint on the backend pod.
fn service(name: &str, cluster_ip: &str, port: u16, endpoint_port: u16) -> ServiceSpec {
    ServiceSpec {
        namespace: "shop".into(),
        name: name.into(),
        cluster_ip: cluster_ip.into(),
        port,
        endpoint_ip: BACKEND4.into(),
        endpoint_port,
        annotation: Some("true".into()),
    }
}

/// The world of one test: `shop/web` (the lab's own), `spec`, and Pods for the client and
/// the backend (so records name them), Envoy, the daemon, and a collector; dropped in reverse
/// order of creation.
struct World {
    collector: LoggedChild,
    records: TempFile,
    e2e: e2e::World,
}

impl World {
    fn new(spec: &ServiceSpec) -> Result<Self> {
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
        let yaml = format!(
            "{}\n---\n{}\n{}{}",
            e2e::web_service(Some("true")).yaml(),
            spec.yaml(),
            pod("client-6b8d5-x7k2p", "client-6b8d5", CLIENT4),
            pod("backend-5f7c9-q8w2e", "backend-5f7c9", BACKEND4),
        );
        let e2e = e2e::World::new(EXE, &yaml, true)?;
        let cluster: SocketAddr = sa(&spec.cluster_ip, spec.port);
        e2e.lab
            .emulate_cluster_ip(cluster, sa(BACKEND4, spec.endpoint_port))?;
        eventually(
            &format!("{cluster} selected"),
            Duration::from_secs(5),
            || {
                Ok(e2e
                    .lab
                    .pinned_destinations()?
                    .contains(&cluster)
                    .then_some(()))
            },
        )
        .with_context(|| e2e.daemon.log())?;
        let records = TempFile::new("protocols-records.jsonl");
        let access_log = e2e.envoy.access_log.to_string_lossy().into_owned();
        let mut cmd = Command::new(EXE);
        cmd.args([
            "collect",
            "--access-log",
            &access_log,
            "--services-file",
            e2e.file.arg(),
            "--output",
            records.arg(),
            "--node-name",
            "l7r-test-node",
            "--poll-interval",
            "100ms",
            "--log-interval-seconds",
            "3600",
        ]);
        let mut collector = LoggedChild::spawn(cmd, &e2e.lab.node_ns, None, "collector")?;
        collector.wait_for_log("following the access log", Duration::from_secs(10))?;
        Ok(Self {
            collector,
            records,
            e2e,
        })
    }

    /// Waits until Envoy logged `n` lines that `wanted` accepts; those lines.
    fn lines(&self, n: usize, wanted: impl Fn(&Value) -> bool) -> Result<Vec<Value>> {
        eventually(
            &format!("{n} access log lines"),
            Duration::from_secs(10),
            || {
                let lines: Vec<Value> = self
                    .e2e
                    .envoy
                    .access_log()?
                    .into_iter()
                    .filter(&wanted)
                    .collect();
                Ok((lines.len() >= n).then_some(lines))
            },
        )
        .with_context(|| format!("Envoy's access log: {:#?}", self.e2e.envoy.access_log()))
    }

    /// Stops the collector (it writes the unfinished interval) and returns its records.
    fn records(&mut self) -> Result<Vec<Value>> {
        let status = self.collector.terminate()?;
        ensure!(
            status.success(),
            "the collector failed ({status}):\n{}",
            self.collector.log()
        );
        json_lines(&self.records.0)
    }
}

/// The one record whose `url` is `url`.
fn record<'a>(records: &'a [Value], url: &str) -> Result<&'a Value> {
    let found: Vec<&Value> = records.iter().filter(|r| r["url"] == url).collect();
    match found[..] {
        [one] => Ok(one),
        _ => anyhow::bail!("expected one record for {url}, got {found:#?}\nall: {records:#?}"),
    }
}

/// Checks `fields` of `value` (a log line or a record).
fn check(value: &Value, fields: &[(&str, Value)]) -> Result<()> {
    for (field, want) in fields {
        ensure!(
            &value[field] == want,
            "{field} is {}, expected {want}: {value:#}",
            value[field]
        );
    }
    Ok(())
}

#[test]
fn grpc_calls_are_logged_with_their_grpc_status() -> Result<()> {
    let spec = service("grpc", "10.96.0.11", 50051, 50051);
    let mut w = World::new(&spec)?;
    let script = Script::new()?;
    let _server = script.server(
        &w.e2e.lab.backend_ns,
        &["grpc-server", BACKEND4, "50051"],
        "gRPC server",
    )?;
    let out = script.client(&w.e2e.lab, &["grpc-client", "10.96.0.11:50051"])?;
    let echo = out["echo"].as_str().context("no echo")?;
    ensure!(
        echo.starts_with(&format!("ping from ipv4:{NODE4_UPSTREAM}:")),
        "the call must reach the server through Envoy: {out}"
    );
    assert_eq!(out["fail_code"], 5, "NOT_FOUND reaches the client: {out}");

    let lines = w.lines(2, |l| l["content_type"] == "application/grpc")?;
    let line = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"] == path)
            .with_context(|| format!("no line for {path}: {lines:#?}"))
    };
    // Both answer HTTP 200; the gRPC status tells them apart.
    for (path, status) in [("/l7r.Echo/Echo", 0), ("/l7r.Echo/Fail", 5)] {
        check(
            line(path)?,
            &[
                ("method", "POST".into()),
                ("protocol", "HTTP/2".into()),
                ("response_code", 200.into()),
                ("grpc_status", status.into()),
            ],
        )?;
    }

    let records = w.records()?;
    for (method, status) in [("Echo", "0"), ("Fail", "5")] {
        let r = record(&records, &format!("10.96.0.11:50051/l7r.Echo/{method}"))?;
        check(
            r,
            &[
                ("protocol", "grpc".into()),
                ("response_code", "200".into()),
                ("grpc_status", status.into()),
                ("method", "POST".into()),
                ("count", 1.into()),
                ("src_name_aggr", "client-6b8d5-*".into()),
                ("dest_service_name", "grpc".into()),
                ("dest_name_aggr", "backend-5f7c9-*".into()),
            ],
        )?;
    }
    Ok(())
}

#[test]
fn tls_passes_through_untouched_with_its_server_name_logged() -> Result<()> {
    let spec = service("secure", "10.96.0.12", 443, 8443);
    let mut w = World::new(&spec)?;
    let server = TlsServer::start(&w.e2e.lab.backend_ns, 8443)?;

    // The handshake ends at the backend: its certificate, not one of Envoy's.
    let handshake = tls_handshake(&w.e2e.lab, "10.96.0.12:443", "secure.shop")?;
    ensure!(
        handshake.contains("CONNECTION ESTABLISHED")
            && handshake.contains(&format!("CN = {}", server.common_name)),
        "the handshake must reach the backend's certificate:\n{handshake}\nserver: {}",
        server.log()
    );
    // HTTPS through it works (curl offers h2 and http/1.1 by ALPN, which must not send the
    // connection to Envoy's cleartext HTTP chain).
    let page = curl(
        &w.e2e.lab,
        &[
            "--insecure",
            "--resolve",
            "secure.shop:443:10.96.0.12",
            "https://secure.shop/",
        ],
    )?;
    ensure!(page.contains("s_server"), "the backend's page: {page}");

    let lines = w.lines(2, |l| l["type"] == "tls")?;
    for l in &lines {
        check(
            l,
            &[
                ("requested_server_name", "secure.shop".into()),
                ("downstream_local_address", "10.96.0.12:443".into()),
                ("upstream_host", "10.96.0.12:443".into()),
            ],
        )?;
        let bytes = |f: &str| l[f].as_u64().unwrap_or(0);
        ensure!(
            bytes("bytes_received") > 0 && bytes("bytes_sent") > 0,
            "both ways carried bytes: {l:#}"
        );
    }

    let records = w.records()?;
    let tls: Vec<&Value> = records.iter().filter(|r| r["protocol"] == "tls").collect();
    let [r] = tls[..] else {
        anyhow::bail!("expected one TLS record: {records:#?}");
    };
    check(
        r,
        &[
            ("tls_sni", "secure.shop".into()),
            ("count", 2.into()),
            ("url", "-".into()),
            ("dest_service_name", "secure".into()),
            ("dest_service_port", 443.into()),
            ("src_name_aggr", "client-6b8d5-*".into()),
        ],
    )?;
    Ok(())
}

#[test]
fn websocket_upgrades_pass_through_and_are_logged() -> Result<()> {
    let spec = service("chat", "10.96.0.14", 80, 8765);
    let mut w = World::new(&spec)?;
    let script = Script::new()?;
    let _server = script.server(
        &w.e2e.lab.backend_ns,
        &["ws-server", BACKEND4, "8765"],
        "WebSocket server",
    )?;
    let out = script.client(&w.e2e.lab, &["ws-client", "ws://10.96.0.14/chat"])?;
    // Frames both ways, after the upgrade, through Envoy (the server saw the node's address).
    assert_eq!(
        out["echo"],
        serde_json::json!([
            format!("hello from {NODE4_UPSTREAM}"),
            format!("again from {NODE4_UPSTREAM}")
        ]),
        "{out}"
    );

    let lines = w.lines(1, |l| l["path"] == "/chat")?;
    check(
        &lines[0],
        &[
            ("method", "GET".into()),
            ("response_code", 101.into()),
            ("upgrade", "websocket".into()),
        ],
    )?;

    let records = w.records()?;
    check(
        record(&records, "10.96.0.14/chat")?,
        &[
            ("protocol", "websocket".into()),
            ("response_code", "101".into()),
            ("method", "GET".into()),
            ("grpc_status", "-".into()),
            ("dest_service_name", "chat".into()),
        ],
    )?;
    Ok(())
}

/// A CONNECT aimed at a Service goes to that Service (here a forward proxy), which decides
/// where the tunnel leads, as without Envoy; Envoy logs the CONNECT and carries the tunnel.
#[test]
fn connect_to_a_service_is_passed_to_it_and_logged() -> Result<()> {
    let spec = service("egress", "10.96.0.13", 3128, 3128);
    let mut w = World::new(&spec)?;
    let script = Script::new()?;
    let _proxy = script.server(
        &w.e2e.lab.backend_ns,
        &["connect-proxy", BACKEND4, "3128"],
        "CONNECT proxy",
    )?;
    let target = format!("{BACKEND4}:{HTTP_PORT}");
    let body = curl(
        &w.e2e.lab,
        &[
            "--proxytunnel",
            "--proxy",
            "http://10.96.0.13:3128",
            &format!("http://{target}/tunnelled"),
        ],
    )?;
    // The tunnel's far end is the web backend, reached by the forward proxy on its pod.
    assert_eq!(
        body,
        format!("hello from the backend; you are {BACKEND4}\n")
    );
    ensure!(
        w.e2e
            .backend
            .served()
            .iter()
            .any(|s| s.path == "/tunnelled"),
        "the web backend saw no /tunnelled"
    );

    let lines = w.lines(1, |l| l["method"] == "CONNECT")?;
    check(
        &lines[0],
        &[
            ("authority", target.as_str().into()),
            ("response_code", 200.into()),
            ("downstream_local_address", "10.96.0.13:3128".into()),
            ("upstream_host", "10.96.0.13:3128".into()),
        ],
    )?;

    let records = w.records()?;
    check(
        record(&records, &target)?,
        &[
            ("protocol", "connect".into()),
            ("method", "CONNECT".into()),
            ("response_code", "200".into()),
            ("dest_service_name", "egress".into()),
        ],
    )?;
    Ok(())
}
