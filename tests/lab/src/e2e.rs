//! The end-to-end world: Service `shop/web` behind a ClusterIP emulated by an nftables DNAT,
//! an HTTP backend pod, the real Envoy as the node proxy (`deploy/envoy.yaml`), and the real
//! daemon in `--services-file` mode, excluding Envoy's upstream connections by the SO_MARK its
//! bootstrap sets, as the DaemonSet does.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    client::connect_stream,
    daemon::{Daemon, eventually},
    envoy::{ADMIN, Envoy, UPSTREAM_MARK},
    http::{HttpBackend, HttpConn, Response},
    lab::{BACKEND4, Lab, LabOptions, sa},
    manifests::{ServiceSpec, ServicesFile},
    process::spawn_in,
};

/// The Service's ClusterIP.
pub const CLUSTER_IP: &str = "10.96.0.10";
/// The backend pod's HTTP port (the Service's target port).
pub const HTTP_PORT: u16 = 8000;

/// `CLUSTER_IP:80`.
pub fn cluster() -> SocketAddr {
    sa(CLUSTER_IP, 80)
}

/// `shop/web` with the given `projectcalico.org/l7-logging` value (`None`: not annotated).
pub fn web_service(annotation: Option<&str>) -> ServiceSpec {
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

/// Everything an end-to-end test needs; fields drop in order, the lab last.
pub struct World {
    /// The daemon.
    pub daemon: Daemon,
    /// The services file it follows.
    pub file: ServicesFile,
    /// The node proxy.
    pub envoy: Envoy,
    /// The backend pod.
    pub backend: HttpBackend,
    /// Namespaces, cgroups, pins.
    pub lab: Lab,
}

impl World {
    /// Builds the world with `services_yaml` in the services file (`redirector` is the binary
    /// to run as the daemon), and waits until the proxy is ready and the selection is in the
    /// map (`selected`: whether `shop/web` is expected to be).
    pub fn new(redirector: &str, services_yaml: &str, selected: bool) -> Result<Self> {
        let lab = Lab::with(LabOptions {
            exclude_proxy_cgroup: false,
            ..LabOptions::for_daemon()
        })?;
        let backend = HttpBackend::start(&lab.backend_ns, &[sa(BACKEND4, HTTP_PORT)])?;
        lab.emulate_cluster_ip(cluster(), sa(BACKEND4, HTTP_PORT))?;
        let envoy = Envoy::start(&lab.node_ns, &lab.proxy_cgroup)?;
        let file = ServicesFile::new(services_yaml)?;
        let daemon = start_daemon(redirector, &lab, &file)?;
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
        world.wait_selected(selected)?;
        Ok(world)
    }

    /// Starts a new daemon in place of the one that ran (which must have exited), as a
    /// restart or a rollout would.
    pub fn restart_daemon(&mut self, redirector: &str) -> Result<()> {
        self.daemon = start_daemon(redirector, &self.lab, &self.file)?;
        Ok(())
    }

    /// Starts a new Envoy in place of the one that ran (which must have exited).
    pub fn restart_envoy(&mut self) -> Result<()> {
        self.envoy = Envoy::start(&self.lab.node_ns, &self.lab.proxy_cgroup)?;
        Ok(())
    }

    /// Waits until `shop/web`'s ClusterIP is (or is not) in the pinned map.
    pub fn wait_selected(&self, selected: bool) -> Result<()> {
        eventually(
            &format!("selected = {selected}"),
            Duration::from_secs(5),
            || Ok((self.lab.pinned_destinations()?.contains(&cluster()) == selected).then_some(())),
        )
        .with_context(|| self.daemon.log())
    }

    /// A new keep-alive connection from the client pod to the ClusterIP.
    pub fn connect(&self) -> Result<HttpConn> {
        let stream = connect_stream(&self.lab.client_ns, &self.lab.client_cgroup, cluster())?;
        HttpConn::new(stream, "web.shop")
    }

    /// `method path` on a new connection; any status.
    pub fn request(&self, method: &str, path: &str) -> Result<Response> {
        self.connect()?.request(method, path)
    }

    /// `curl --head http://<ClusterIP>/` from the client pod, as the user guide says; its
    /// output, lower-cased.
    pub fn curl_head(&self) -> Result<String> {
        Ok(curl_head(&self.lab)?.to_ascii_lowercase())
    }
}

/// The daemon as the end-to-end world runs it: following `file`, excluding Envoy's upstream by
/// its SO_MARK and asking Envoy's admin whether it serves, as the DaemonSet does.
fn start_daemon(redirector: &str, lab: &Lab, file: &ServicesFile) -> Result<Daemon> {
    Daemon::start(
        redirector,
        lab,
        &[
            "--services-file",
            file.arg(),
            "--exclude-mark",
            UPSTREAM_MARK,
            "--proxy-admin",
            ADMIN,
        ],
    )
}

/// `curl --head http://<ClusterIP>/` from the lab's client pod (its namespace and cgroup): the
/// response head, without carriage returns.
pub fn curl_head(lab: &Lab) -> Result<String> {
    let mut cmd = Command::new("curl");
    cmd.args(["--head", "--silent", "--show-error", "--max-time", "5"])
        .arg(format!("http://{CLUSTER_IP}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = spawn_in(cmd, &lab.client_ns, Some(&lab.client_cgroup))?.wait_with_output()?;
    if !out.status.success() {
        bail!("curl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).replace('\r', ""))
}
