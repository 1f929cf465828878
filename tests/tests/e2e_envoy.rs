//! End to end with the real Envoy (from the pinned venv) as the node proxy, configured by
//! `deploy/envoy.yaml`, the real daemon in `--services-file` mode, and a ClusterIP emulated by
//! an nftables DNAT as kube-proxy would: the user guide's workflow. Run as root:
//! `sudo cargo xtask test`.

use std::{
    net::{IpAddr, SocketAddr},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use redirector_tests::{
    client::connect_stream,
    daemon::{Daemon, eventually},
    envoy::{Envoy, UPSTREAM_MARK},
    http::{HttpBackend, HttpConn, Response},
    lab::{BACKEND4, CLIENT4, Lab, LabOptions, NODE4_UPSTREAM, sa},
    manifests::{ServiceSpec, ServicesFile},
    process::spawn_in,
};

const EXE: &str = env!("CARGO_BIN_EXE_redirector-under-test");
const CLUSTER_IP: &str = "10.96.0.10";
const HTTP_PORT: u16 = 8000;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("constant address")
}

fn cluster() -> SocketAddr {
    sa(CLUSTER_IP, 80)
}

fn spec(annotation: Option<&str>) -> ServiceSpec {
    ServiceSpec {
        namespace: "shop".into(),
        name: "web".into(),
        cluster_ip: CLUSTER_IP.into(),
        port: 80,
        endpoint_ip: BACKEND4.into(),
        endpoint_port: HTTP_PORT,
        annotation: annotation.map(str::to_string),
    }
}

/// Everything one test needs; dropped in reverse order of creation.
struct World {
    daemon: Daemon,
    file: ServicesFile,
    envoy: Envoy,
    backend: HttpBackend,
    lab: Lab,
}

impl World {
    fn new(annotated: bool) -> Result<Self> {
        // Envoy's upstream connections are excluded by the SO_MARK its bootstrap sets, the
        // way the DaemonSet runs it; its cgroup is not excluded.
        let lab = Lab::with(LabOptions {
            exclude_proxy_cgroup: false,
            ..LabOptions::for_daemon()
        })?;
        let backend = HttpBackend::start(&lab.backend_ns, &[sa(BACKEND4, HTTP_PORT)])?;
        lab.emulate_cluster_ip(cluster(), sa(BACKEND4, HTTP_PORT))?;
        let envoy = Envoy::start(&lab.node_ns, &lab.proxy_cgroup)?;
        let file = ServicesFile::new(&spec(annotated.then_some("true")).yaml())?;
        let daemon = Daemon::start(
            EXE,
            &lab,
            &[
                "--services-file",
                file.arg(),
                "--exclude-mark",
                UPSTREAM_MARK,
            ],
        )?;
        let world = Self {
            daemon,
            file,
            envoy,
            backend,
            lab,
        };
        eventually("the proxy marked ready", Duration::from_secs(10), || {
            Ok(world
                .lab
                .pinned_readiness()
                .map(|r| r.0)
                .unwrap_or(false)
                .then_some(()))
        })
        .with_context(|| world.daemon.log())?;
        world.wait_selected(annotated)?;
        Ok(world)
    }

    fn wait_selected(&self, selected: bool) -> Result<()> {
        eventually(
            &format!("selected = {selected}"),
            Duration::from_secs(5),
            || Ok((self.lab.pinned_destinations()?.contains(&cluster()) == selected).then_some(())),
        )
        .with_context(|| self.daemon.log())
    }

    fn annotate(&self, value: Option<&str>) -> Result<()> {
        self.file.write(&spec(value).yaml())?;
        self.wait_selected(value == Some("true"))
    }

    /// A new keep-alive connection from the client pod to the ClusterIP.
    fn connect(&self) -> Result<HttpConn> {
        let stream = connect_stream(&self.lab.client_ns, &self.lab.client_cgroup, cluster())?;
        HttpConn::new(stream, "web.shop")
    }

    /// One request on a new connection; anything but 200 is an error.
    fn get(&self, path: &str) -> Result<Response> {
        ok(self.connect()?.request("GET", path)?)
    }

    /// `curl --head http://<ClusterIP>/` from the client pod, as the user guide says.
    fn curl_head(&self) -> Result<String> {
        let mut cmd = Command::new("curl");
        cmd.args(["--head", "--silent", "--show-error", "--max-time", "5"])
            .arg(format!("http://{CLUSTER_IP}/"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = spawn_in(cmd, &self.lab.client_ns, Some(&self.lab.client_cgroup))?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("curl failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_ascii_lowercase())
    }
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
    let w = World::new(true)?;
    let head = w.curl_head()?;
    assert!(head.contains("server: envoy"), "curl --head:\n{head}");
    assert!(head.starts_with("http/1.1 200"), "curl --head:\n{head}");

    let r = w.get("/hello")?;
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
    let w = World::new(false)?;
    let head = w.curl_head()?;
    assert!(!head.contains("server: envoy"), "curl --head:\n{head}");
    assert!(head.contains("server: backend"), "curl --head:\n{head}");
    let r = w.get("/direct")?;
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
    let w = World::new(false)?;
    let mut early = w.connect()?;
    assert!(!ok(early.request("GET", "/before")?)?.via_envoy());
    w.annotate(Some("true"))?;
    for i in 0..3 {
        let r = ok(early.request("GET", &format!("/after/{i}"))?)?;
        assert!(
            !r.via_envoy(),
            "an existing connection is never moved to the proxy"
        );
    }
    assert!(w.get("/new")?.via_envoy(), "a new connection is proxied");
    Ok(())
}

#[test]
fn keep_alive_connection_opened_while_selected_stays_proxied_after_deselection() -> Result<()> {
    let w = World::new(true)?;
    let mut proxied = w.connect()?;
    assert!(ok(proxied.request("GET", "/selected")?)?.via_envoy());
    w.annotate(None)?;
    for i in 0..3 {
        let r = ok(proxied.request("GET", &format!("/deselected/{i}"))?)?;
        assert!(
            r.via_envoy(),
            "a proxied connection stays proxied until it closes"
        );
    }
    assert!(!w.get("/new")?.via_envoy(), "a new connection goes direct");
    Ok(())
}

#[test]
fn envoy_killed_means_requests_go_direct_within_the_readiness_interval() -> Result<()> {
    let mut w = World::new(true)?;
    assert!(w.get("/up")?.via_envoy());
    w.envoy.kill()?;
    // The daemon checks every 200ms here; a connect in between may be refused.
    let r = eventually("a direct answer", Duration::from_secs(2), || {
        Ok(w.get("/down").ok())
    })?;
    assert_eq!(r.status, 200);
    assert!(!r.via_envoy(), "fail-open: straight to the backend");
    Ok(())
}
