//! End to end with the real Envoy (from the pinned venv) as the node proxy, configured by
//! `deploy/envoy.yaml`, the real daemon in `--services-file` mode, and a ClusterIP emulated by
//! an nftables DNAT as kube-proxy would: the user guide's workflow. Run as root:
//! `sudo cargo xtask test`.

use std::{net::IpAddr, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use l7r_lab::{
    client::connect_stream,
    daemon::{Daemon, eventually},
    e2e::{HTTP_PORT, World, web_service},
    envoy::{self, Envoy},
    http::{HttpBackend, HttpConn, Response},
    lab::{
        BACKEND4, BACKEND6, CLIENT4, Lab, LabOptions, NODE4, NODE4_UPSTREAM, NODE6_UPSTREAM,
        PROXY_PORT, sa,
    },
    manifests::{ServiceSpec, ServicesFile},
    sys::{TempFile, unique_id},
};
use redirector::dataplane::Dataplane;

use crate::REDIRECTOR as EXE;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("constant address")
}

/// The world with `shop/web` annotated (or not).
fn world(annotated: bool) -> Result<World> {
    let value = annotated.then_some("true");
    World::new(EXE, &web_service(value).yaml(), annotated)
}

/// Changes the annotation and waits for the map to follow.
fn annotate(w: &World, value: Option<&str>) -> Result<()> {
    w.file.write(&web_service(value).yaml())?;
    w.wait_selected(value == Some("true"))
}

/// `GET path` on a new connection; anything but 200 is an error.
fn get(w: &World, path: &str) -> Result<Response> {
    ok(w.request("GET", path)?)
}

/// The response, if it is a 200 (an Envoy 503 also says `server: envoy`).
fn ok(r: Response) -> Result<Response> {
    if r.status != 200 {
        bail!("HTTP {}: {}", r.status, r.body);
    }
    Ok(r)
}

#[test]
fn annotated_service_answers_through_envoy_and_is_logged() -> Result<()> {
    let w = world(true)?;
    let head = w.curl_head()?;
    assert!(head.contains("server: envoy"), "curl --head:\n{head}");
    assert!(head.starts_with("http/1.1 200"), "curl --head:\n{head}");

    let r = get(&w, "/hello")?;
    assert_eq!(r.status, 200);
    assert!(r.via_envoy(), "{r:?}");
    assert_eq!(
        r.body,
        format!("hello from the backend; you are {NODE4_UPSTREAM}\n")
    );
    let served = w.backend.served();
    let hello = served
        .iter()
        .find(|s| s.path == "/hello")
        .context("the backend saw no /hello")?;
    assert_eq!(
        (hello.method.as_str(), hello.peer.ip()),
        ("GET", ip(NODE4_UPSTREAM))
    );

    let lines = w.envoy.wait_for_log_lines(2)?;
    let entry = lines
        .iter()
        .find(|l| l["path"] == "/hello")
        .with_context(|| format!("no access log line for /hello: {lines:#?}"))?;
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["response_code"], 200);
    assert_eq!(
        entry["downstream_local_address"], "10.96.0.10:80",
        "the original destination"
    );
    assert_eq!(entry["user_agent"], "l7r-test/1");
    let head_entry = lines
        .iter()
        .find(|l| l["method"] == "HEAD")
        .context("no HEAD line")?;
    assert_eq!(head_entry["path"], "/");
    Ok(())
}

#[test]
fn unannotated_service_is_not_proxied() -> Result<()> {
    let w = world(false)?;
    let head = w.curl_head()?;
    assert!(!head.contains("server: envoy"), "curl --head:\n{head}");
    assert!(head.contains("server: backend"), "curl --head:\n{head}");
    let r = get(&w, "/direct")?;
    assert!(!r.via_envoy());
    assert_eq!(
        r.body,
        format!("hello from the backend; you are {CLIENT4}\n")
    );
    assert!(w.envoy.access_log()?.is_empty());
    Ok(())
}

#[test]
fn keep_alive_connection_opened_before_annotation_stays_direct() -> Result<()> {
    let w = world(false)?;
    let mut early = w.connect()?;
    assert!(!ok(early.request("GET", "/before")?)?.via_envoy());
    annotate(&w, Some("true"))?;
    for i in 0..3 {
        let r = ok(early.request("GET", &format!("/after/{i}"))?)?;
        assert!(
            !r.via_envoy(),
            "an existing connection is never moved to the proxy"
        );
    }
    assert!(get(&w, "/new")?.via_envoy(), "a new connection is proxied");
    Ok(())
}

#[test]
fn keep_alive_connection_opened_while_selected_stays_proxied_after_deselection() -> Result<()> {
    let w = world(true)?;
    let mut proxied = w.connect()?;
    assert!(ok(proxied.request("GET", "/selected")?)?.via_envoy());
    annotate(&w, None)?;
    for i in 0..3 {
        let r = ok(proxied.request("GET", &format!("/deselected/{i}"))?)?;
        assert!(
            r.via_envoy(),
            "a proxied connection stays proxied until it closes"
        );
    }
    assert!(
        !get(&w, "/new")?.via_envoy(),
        "a new connection goes direct"
    );
    Ok(())
}

#[test]
fn envoy_killed_means_requests_go_direct_within_the_readiness_interval() -> Result<()> {
    let mut w = world(true)?;
    assert!(get(&w, "/up")?.via_envoy());
    w.envoy.kill()?;
    // The daemon checks every 200ms here; a connect in between may be refused.
    let r = eventually("a direct answer", Duration::from_secs(2), || {
        Ok(get(&w, "/down").ok())
    })?;
    assert_eq!(r.status, 200);
    assert!(!r.via_envoy(), "fail-open: straight to the backend");
    Ok(())
}

#[test]
fn envoy_accepts_the_bootstrap() -> Result<()> {
    // Validation opens the access log file, so the path is swapped as in the lab; everything
    // else is validated as shipped.
    let log = TempFile::new("envoy-validate-access");
    // Envoy tells YAML from JSON by the file's extension.
    let config =
        TempFile(std::env::temp_dir().join(format!("l7r-envoy-validate-{}.yaml", unique_id())));
    std::fs::write(&config.0, envoy::bootstrap(&log.0)?)?;
    let binary = envoy::binary()?;
    let output = Command::new(&binary)
        .args([
            "--mode",
            "validate",
            "--log-level",
            "warn",
            "-c",
            config.arg(),
        ])
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success() && stdout.contains("OK"),
        "`envoy --mode validate` rejects deploy/envoy.yaml ({}):\n{stdout}{stderr}",
        output.status
    );
    Ok(())
}

/// A selected Service whose port is one of the proxy's own (15001 here) is proxied like any
/// other: the loop guard tells a connection made to Envoy itself from one steered to a Service
/// on that port.
#[test]
fn a_selected_service_on_the_proxy_port_is_proxied() -> Result<()> {
    let on_proxy_port = ServiceSpec {
        name: "on-proxy-port".into(),
        cluster_ip: "10.96.0.11".into(),
        port: PROXY_PORT,
        ..web_service(Some("true"))
    };
    let yaml = format!(
        "{}---\n{}",
        web_service(Some("true")).yaml(),
        on_proxy_port.yaml()
    );
    let w = World::new(EXE, &yaml, true)?;
    let service = sa("10.96.0.11", PROXY_PORT);
    w.lab.emulate_cluster_ip(service, sa(BACKEND4, HTTP_PORT))?;
    eventually(
        "the Service on the proxy port selected",
        Duration::from_secs(5),
        || {
            Ok(w.lab
                .pinned_destinations()?
                .contains(&service)
                .then_some(()))
        },
    )?;
    let stream = connect_stream(&w.lab.client_ns, &w.lab.client_cgroup, service)?;
    let r = ok(HttpConn::new(stream, "on-proxy-port.shop")?.request("GET", "/port")?)?;
    assert!(r.via_envoy(), "{r:?}");
    assert_eq!(
        r.body,
        format!("hello from the backend; you are {NODE4_UPSTREAM}\n")
    );
    let lines = w.envoy.wait_for_log_lines(1)?;
    assert!(
        lines
            .iter()
            .any(|l| l["path"] == "/port" && l["downstream_local_address"] == service.to_string()),
        "{lines:#?}"
    );
    Ok(())
}

/// A connection made straight to Envoy's port (not steered) is forwarded once, to Envoy
/// itself, and that second connection (from the node to the node) is closed by the loop guard:
/// no loop, one access log line.
#[test]
fn a_connection_made_straight_to_envoy_does_not_loop() -> Result<()> {
    let w = world(true)?;
    let direct = sa(NODE4, PROXY_PORT);
    let stream = connect_stream(&w.lab.client_ns, &w.lab.client_cgroup, direct)?;
    let r = HttpConn::new(stream, "envoy")?.request("GET", "/direct-to-envoy")?;
    assert_eq!(r.status, 503, "Envoy cannot forward to itself: {r:?}");
    // Give a loop time to show (each turn would add a line), then count.
    std::thread::sleep(Duration::from_secs(2));
    let lines: Vec<_> = w
        .envoy
        .access_log()?
        .into_iter()
        .filter(|l| l["path"] == "/direct-to-envoy")
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    Ok(())
}

/// `shop/web6` (IPv6 only) and `shop/dual` (dual-stack), both annotated, as the API shows them.
const IPV6_AND_DUAL_STACK: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web6
  namespace: shop
  annotations: {projectcalico.org/l7-logging: \"true\"}
spec:
  clusterIP: fd96::10
  clusterIPs: [fd96::10]
  ipFamilies: [IPv6]
  ports: [{port: 80, targetPort: 8000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web6-x1
  namespace: shop
  labels: {kubernetes.io/service-name: web6}
addressType: IPv6
endpoints: [{addresses: [fd77:2::2], conditions: {ready: true}}]
ports: [{port: 8000, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata:
  name: dual
  namespace: shop
  annotations: {projectcalico.org/l7-logging: \"true\"}
spec:
  clusterIP: 10.96.0.11
  clusterIPs: [10.96.0.11, fd96::11]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports: [{port: 80, targetPort: 8000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dual-v4
  namespace: shop
  labels: {kubernetes.io/service-name: dual}
addressType: IPv4
endpoints: [{addresses: [10.77.2.2], conditions: {ready: true}}]
ports: [{port: 8000, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dual-v6
  namespace: shop
  labels: {kubernetes.io/service-name: dual}
addressType: IPv6
endpoints: [{addresses: [fd77:2::2], conditions: {ready: true}}]
ports: [{port: 8000, protocol: TCP}]
";

/// An IPv6 Service and both families of a dual-stack Service go through the real Envoy and are
/// logged, with the daemon given the proxies as the DaemonSet gives them (`--node-ips` from
/// the node's `status.hostIPs`) and Envoy on its one dual-stack listener (`::`, IPv4-mapped).
#[test]
fn ipv6_and_dual_stack_services_are_steered_and_logged() -> Result<()> {
    let lab = Lab::with(LabOptions {
        exclude_proxy_cgroup: false,
        ..LabOptions::for_daemon()
    })?;
    let backend = HttpBackend::start(
        &lab.backend_ns,
        &[sa(BACKEND4, HTTP_PORT), sa(BACKEND6, HTTP_PORT)],
    )?;
    let web6 = sa("fd96::10", 80);
    let dual4 = sa("10.96.0.11", 80);
    let dual6 = sa("fd96::11", 80);
    lab.emulate_cluster_ip(web6, sa(BACKEND6, HTTP_PORT))?;
    lab.emulate_cluster_ip(dual4, sa(BACKEND4, HTTP_PORT))?;
    lab.emulate_cluster_ip(dual6, sa(BACKEND6, HTTP_PORT))?;
    let envoy = Envoy::start(&lab.node_ns, &lab.proxy_cgroup)?;
    let file = ServicesFile::new(IPV6_AND_DUAL_STACK)?;
    let daemon = Daemon::start_as_deployed(
        EXE,
        &lab,
        &[
            "--services-file",
            file.arg(),
            "--exclude-mark",
            envoy::UPSTREAM_MARK,
        ],
    )?;
    eventually("both proxies ready", Duration::from_secs(10), || {
        Ok((lab.pinned_readiness().unwrap_or_default() == (true, true)).then_some(()))
    })
    .with_context(|| daemon.log())?;
    eventually(
        "all three ClusterIPs selected",
        Duration::from_secs(5),
        || {
            let pinned = lab.pinned_destinations()?;
            Ok([web6, dual4, dual6]
                .iter()
                .all(|d| pinned.contains(d))
                .then_some(()))
        },
    )
    .with_context(|| daemon.log())?;

    for (dst, host, upstream) in [
        (web6, "web6.shop", NODE6_UPSTREAM),
        (dual4, "dual.shop", NODE4_UPSTREAM),
        (dual6, "dual.shop", NODE6_UPSTREAM),
    ] {
        let stream = connect_stream(&lab.client_ns, &lab.client_cgroup, dst)?;
        let r = HttpConn::new(stream, host)?
            .request("GET", &format!("/to/{dst}"))
            .with_context(|| format!("GET through {dst}"))?;
        let r = ok(r)?;
        assert!(
            r.via_envoy(),
            "{dst}: {r:?}\n{}\ndaemon log:\n{}",
            lab.pinned_state(),
            daemon.log()
        );
        assert_eq!(
            r.body,
            format!("hello from the backend; you are {upstream}\n"),
            "{dst}: forwarded by Envoy from the node's address of that family"
        );
    }
    let lines = envoy.wait_for_log_lines(3)?;
    for (dst, logged) in [
        (web6, "[fd96::10]:80"),
        (dual4, "10.96.0.11:80"),
        (dual6, "[fd96::11]:80"),
    ] {
        let entry = lines
            .iter()
            .find(|l| l["path"] == format!("/to/{dst}"))
            .with_context(|| format!("no access log line for {dst}: {lines:#?}"))?;
        assert_eq!(
            entry["downstream_local_address"], logged,
            "original destination"
        );
        assert_eq!(entry["response_code"], 200);
    }
    assert_eq!(backend.served().len(), 3);
    let c = Dataplane::open_pinned(&lab.pin_dir)?.counters()?;
    assert_eq!(c.redirected, 3, "{c:?}");
    Ok(())
}
