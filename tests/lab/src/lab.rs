//! The world a datapath test runs in:
//!
//! ```text
//!  client ns                 node ns (router, proxy)              backend ns
//!  10.77.1.2  ── veth ──  10.77.1.1 | 10.77.2.1  ── veth ──  10.77.2.2 :8080 :8081
//!  fd77:1::2             fd77:1::1 | fd77:2::1              fd77:2::2
//! ```
//! A child cgroup tree `l7r-test-*` with `client` and `proxy` children; the programs are
//! attached to its root and the maps pinned under `/sys/fs/bpf/l7r-test-*`. The backend answers
//! with the peer it saw: the client's address when direct, the node's when proxied.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use redirector::{
    cgroup::{cgroup_ref, cgroup2_mount},
    dataplane::{Dataplane, LoadOptions, detach},
    proxy_config::ProxySettings,
};
use redirector_common::{ServiceKey, ServiceValue};

use crate::{
    backend::Backend,
    cgroups::CgroupTree,
    client::Client,
    netns::Netns,
    proxy::{TestProxy, Upstream},
    sys::unique_id,
};

/// The client pod's IPv4 address.
pub const CLIENT4: &str = "10.77.1.2";
/// The node's address on the client side, where the proxy listens.
pub const NODE4: &str = "10.77.1.1";
/// The node's address on the backend side: the source of proxied connections.
pub const NODE4_UPSTREAM: &str = "10.77.2.1";
/// The backend pod's IPv4 address.
pub const BACKEND4: &str = "10.77.2.2";
/// IPv6 counterparts.
pub const CLIENT6: &str = "fd77:1::2";
/// See [`CLIENT6`].
pub const NODE6: &str = "fd77:1::1";
/// See [`CLIENT6`].
pub const NODE6_UPSTREAM: &str = "fd77:2::1";
/// See [`CLIENT6`].
pub const BACKEND6: &str = "fd77:2::2";
/// The backend port the tests select.
pub const SERVICE_PORT: u16 = 8080;
/// A backend port the tests never select.
pub const OTHER_PORT: u16 = 8081;
/// The proxy's first port.
pub const PROXY_PORT: u16 = 15001;
/// How many consecutive ports the lab's proxy listens on (and the lab's daemons steer to): enough
/// to exercise the spread, fewer than the daemon's default so each test proxy starts quickly
/// (it listens on every port of both families). Envoy listens on the deployed 64.
pub const PROXY_PORTS: u16 = 16;

/// `ip:port` from constants.
pub fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("constant address"), port)
}

/// How the proxy's own upstream connections are kept from being steered back to it.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Exclude the proxy's cgroup (the default).
    pub exclude_proxy_cgroup: bool,
    /// Exclude these UIDs.
    pub exclude_uids: Vec<u32>,
    /// Exclude this `(mark, mask)`.
    pub exclude_mark: Option<(u32, u32)>,
    /// Load and attach the dataplane in this process (the datapath tests); `false` leaves it
    /// to a `redirector run` the test starts (the daemon tests).
    pub attach: bool,
    /// Configure the IPv6 proxy too.
    pub proxy6: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            exclude_proxy_cgroup: true,
            exclude_uids: Vec::new(),
            exclude_mark: None,
            attach: true,
            proxy6: true,
        }
    }
}

impl LabOptions {
    /// For the daemon tests: the daemon, not the test, owns the dataplane.
    pub fn for_daemon() -> Self {
        Self {
            attach: false,
            ..Self::default()
        }
    }

    /// Options that exclude nothing: the proxy's upstream loops back to it (the negative
    /// control).
    pub fn nothing_excluded() -> Self {
        Self {
            exclude_proxy_cgroup: false,
            ..Default::default()
        }
    }
}

/// The test world; everything is removed on drop, the datapath first.
pub struct Lab {
    /// The client pod's namespace.
    pub client_ns: Netns,
    /// The node's namespace (router; the proxy runs here).
    pub node_ns: Netns,
    /// The backend pod's namespace.
    pub backend_ns: Netns,
    /// Where the client's sockets live.
    pub client_cgroup: PathBuf,
    /// Where the proxy's sockets live.
    pub proxy_cgroup: PathBuf,
    /// The pin directory of this lab's dataplane.
    pub pin_dir: PathBuf,
    /// The proxy settings written to `config`.
    pub settings: ProxySettings,
    /// What the lab was made with.
    pub options: LabOptions,
    /// The dataplane handle (the "daemon" of this test).
    pub dataplane: Option<Dataplane>,
    /// Backend pods added with [`Lab::add_backend_pod`].
    pub extra_backends: Vec<Netns>,
    cgroups: CgroupTree,
    backend: Backend,
}

impl Lab {
    /// A lab with the default options: both proxies, the proxy's cgroup excluded.
    pub fn new() -> Result<Self> {
        Self::with(LabOptions::default())
    }

    /// A lab with the given loop-prevention options.
    pub fn with(options: LabOptions) -> Result<Self> {
        crate::sys::require_root();
        let client_ns = Netns::new("client")?;
        let node_ns = Netns::new("node")?;
        let backend_ns = Netns::new("backend")?;
        wire(&client_ns, &node_ns, &backend_ns)?;
        let backend = Backend::start(
            &backend_ns,
            &[
                sa(BACKEND4, SERVICE_PORT),
                sa(BACKEND4, OTHER_PORT),
                sa(BACKEND6, SERVICE_PORT),
                sa(BACKEND6, OTHER_PORT),
            ],
        )?;

        let mut cgroups = CgroupTree::new()?;
        let client_cgroup = cgroups.child("client")?;
        let proxy_cgroup = cgroups.child("proxy")?;
        let mut exclude_cgroups = Vec::new();
        if options.exclude_proxy_cgroup {
            exclude_cgroups.push(cgroup_ref(&proxy_cgroup, &cgroup2_mount()?)?);
        }
        let steer_min_level = cgroup_ref(cgroups.root(), &cgroup2_mount()?)?.level + 1;
        let settings = ProxySettings {
            proxy4: Some(sa(NODE4, PROXY_PORT)),
            proxy6: options.proxy6.then(|| sa(NODE6, PROXY_PORT)),
            proxy_ports: PROXY_PORTS,
            steer_min_level,
            exclude_cgroups,
            exclude_uids: options.exclude_uids.clone(),
            exclude_mark: options.exclude_mark,
        };

        let mut lab = Self {
            client_ns,
            node_ns,
            backend_ns,
            client_cgroup,
            proxy_cgroup,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/l7r-test-{}", unique_id())),
            settings,
            options,
            dataplane: None,
            extra_backends: Vec::new(),
            cgroups,
            backend,
        };
        if !lab.options.attach {
            return Ok(lab);
        }
        let mut dp = Dataplane::load(&LoadOptions {
            pin_dir: lab.pin_dir.clone(),
            ..Default::default()
        })?;
        // From here on, Drop detaches whatever got attached.
        dp.attach(lab.cgroups.root())?;
        dp.set_config(&lab.settings.to_config()?)?;
        dp.set_proxy_ready(true, true)?;
        lab.dataplane = Some(dp);
        Ok(lab)
    }

    /// Every line the backend pod received so far.
    pub fn backend_received(&self) -> Vec<String> {
        self.backend.received()
    }

    /// The root of the lab's cgroup tree, where the programs are attached.
    pub fn cgroup_root(&self) -> &std::path::Path {
        self.cgroups.root()
    }

    /// The destinations in the pinned `services` map now (empty while nothing is pinned).
    pub fn pinned_destinations(&self) -> Result<std::collections::BTreeSet<SocketAddr>> {
        match Dataplane::open_pinned(&self.pin_dir) {
            Ok(dp) => Ok(dp
                .services()?
                .iter()
                .map(|(k, _)| k.socket_addr())
                .collect()),
            Err(redirector::dataplane::DataplaneError::NotPinned { .. }) => Ok(Default::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the programs steer to each proxy now `(v4, v6)`, from the pinned leases.
    pub fn pinned_readiness(&self) -> Result<(bool, bool)> {
        Ok(Dataplane::open_pinned(&self.pin_dir)?.proxy_readiness()?)
    }

    /// What the kernel programs counted and the proxies' leases as they are now, for a failure
    /// message that must say why a connection was or was not steered.
    pub fn pinned_state(&self) -> String {
        let now = redirector::clock::monotonic_ns();
        match Dataplane::open_pinned(&self.pin_dir) {
            Ok(d) => format!(
                "now: {now} ns\nleases: {:?}\nfailures: {:?}\ncounters: {:#?}",
                d.proxy_leases(),
                d.proxy_failures(),
                d.counters()
            ),
            Err(e) => format!("cannot open the pins: {e}"),
        }
    }

    /// `redirector run` flags matching this lab: its cgroup, pins, proxies and exclusions.
    pub fn daemon_args(&self) -> Vec<String> {
        let mut args = vec![
            "--cgroup".to_string(),
            self.cgroups.root().display().to_string(),
            "--pin-dir".into(),
            self.pin_dir.display().to_string(),
            "--proxy-check-interval".into(),
            "200ms".into(),
            // Tests stop daemons often; one check interval and a bit is enough to see a proxy
            // that stops together with the daemon.
            "--shutdown-grace".into(),
            "500ms".into(),
        ];
        if let Some(p) = self.settings.proxy4 {
            args.extend(["--proxy".into(), p.to_string()]);
        }
        if let Some(p) = self.settings.proxy6 {
            args.extend(["--proxy6".into(), p.to_string()]);
        }
        args.extend(["--proxy-ports".into(), PROXY_PORTS.to_string()]);
        if self.options.exclude_proxy_cgroup {
            args.extend([
                "--exclude-cgroup".into(),
                self.proxy_cgroup.display().to_string(),
            ]);
        }
        args
    }

    /// [`Lab::daemon_args`] with the proxies given as the DaemonSet gives them: the node's
    /// addresses (`--node-ips`, from the downward API's `status.hostIPs`) and the first port.
    pub fn daemon_args_as_deployed(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut given = self.daemon_args().into_iter();
        while let Some(arg) = given.next() {
            if arg == "--proxy" || arg == "--proxy6" {
                given.next();
            } else {
                args.push(arg);
            }
        }
        let node_ips: Vec<String> = [self.settings.proxy4, self.settings.proxy6]
            .into_iter()
            .flatten()
            .map(|p| p.ip().to_string())
            .collect();
        args.extend([
            "--node-ips".into(),
            node_ips.join(","),
            "--proxy-port".into(),
            PROXY_PORT.to_string(),
        ]);
        args
    }

    /// Emulates a ClusterIP (IPv4 or IPv6) as kube-proxy would: a DNAT in the node namespace, both for
    /// traffic routed through the node (prerouting) and for the node's own connections, such as
    /// the proxy's upstream ones (output). The rules go away with the namespace.
    pub fn emulate_cluster_ip(&self, cluster_ip: SocketAddr, endpoint: SocketAddr) -> Result<()> {
        self.emulate_balanced_cluster_ip(cluster_ip, &[endpoint.ip()], endpoint.port())
    }

    /// [`Lab::emulate_cluster_ip`] with several endpoints on the same port, taken in turn.
    pub fn emulate_balanced_cluster_ip(
        &self,
        cluster_ip: SocketAddr,
        endpoints: &[IpAddr],
        port: u16,
    ) -> Result<()> {
        let nft = |args: &[&str]| {
            let mut all = vec!["netns", "exec", self.node_ns.name(), "nft"];
            all.extend_from_slice(args);
            crate::sys::run("ip", &all)
        };
        // The node needs a route to the ClusterIP for its own connects to get as far as the
        // DNAT (a real node has a default route); the DNAT then picks the real path.
        let (family, prefix) = if cluster_ip.is_ipv4() {
            ("ip", 32)
        } else {
            ("ip6", 128)
        };
        self.node_ns.ip(&[
            "route",
            "replace",
            &format!("{}/{prefix}", cluster_ip.ip()),
            "dev",
            "vbackend",
        ])?;
        nft(&["add", "table", family, "l7r"])?;
        nft(&[&format!(
            "add chain {family} l7r pre {{ type nat hook prerouting priority -100 ; }}"
        )])?;
        nft(&[&format!(
            "add chain {family} l7r out {{ type nat hook output priority -100 ; }}"
        )])?;
        let target = match endpoints {
            [IpAddr::V4(one)] => format!("{one}:{port}"),
            [IpAddr::V6(one)] => format!("[{one}]:{port}"),
            many => {
                let map: Vec<String> = many
                    .iter()
                    .enumerate()
                    .map(|(i, ip)| format!("{i} : {ip}"))
                    .collect();
                format!(
                    "numgen inc mod {} map {{ {} }}:{port}",
                    many.len(),
                    map.join(", ")
                )
            }
        };
        for chain in ["pre", "out"] {
            nft(&[&format!(
                "add rule {family} l7r {chain} {family} daddr {} tcp dport {} dnat to {target}",
                cluster_ip.ip(),
                cluster_ip.port()
            )])?;
        }
        Ok(())
    }

    /// Removes the proxy's cgroup and creates it again under the same path, as a restarted
    /// container's is: same path, new id. The proxy must be stopped first.
    pub fn recreate_proxy_cgroup(&self) -> Result<()> {
        let mut removed = std::fs::remove_dir(&self.proxy_cgroup);
        // A cgroup whose last task just left can stay busy for a moment.
        for _ in 0..50 {
            if removed.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            removed = std::fs::remove_dir(&self.proxy_cgroup);
        }
        removed.with_context(|| format!("cannot remove {}", self.proxy_cgroup.display()))?;
        std::fs::create_dir(&self.proxy_cgroup)
            .with_context(|| format!("cannot create {}", self.proxy_cgroup.display()))
    }

    /// Makes the proxy a black hole for new connections, as a stopped proxy with a full accept
    /// queue is: the node drops every SYN to the proxy's ports. The rule goes away with the
    /// namespace.
    pub fn drop_syns_to_proxy(&self) -> Result<()> {
        let last = PROXY_PORT + PROXY_PORTS - 1;
        let rules = format!(
            "table inet l7r_blackhole {{\n\
               chain input {{\n\
                 type filter hook input priority -10; policy accept;\n\
                 tcp dport {PROXY_PORT}-{last} tcp flags & (syn | ack) == syn drop\n\
               }}\n\
             }}\n"
        );
        crate::sys::run_with_input(
            "ip",
            &["netns", "exec", self.node_ns.name(), "nft", "-f", "-"],
            &rules,
        )
        .map(|_| ())
    }

    /// Adds another backend pod: a namespace wired to the node like the first backend, with
    /// the addresses `10.77.<3 + n>.2` (node side `.1`), where `n` counts earlier extra pods.
    /// Returns the pod's namespace and address.
    pub fn add_backend_pod(&mut self) -> Result<(&Netns, IpAddr)> {
        let n = self.extra_backends.len();
        let subnet = 3 + n;
        let ns = Netns::new(&format!("backend{}", n + 2))?;
        let node_dev = format!("vbackend{}", n + 2);
        crate::sys::ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            &node_dev,
            "netns",
            self.node_ns.name(),
        ])?;
        let (pod, node) = (format!("10.77.{subnet}.2"), format!("10.77.{subnet}.1"));
        ns.ip(&["addr", "add", &format!("{pod}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &node])?;
        self.node_ns
            .ip(&["addr", "add", &format!("{node}/24"), "dev", &node_dev])?;
        self.node_ns.ip(&["link", "set", &node_dev, "up"])?;
        self.extra_backends.push(ns);
        let ns = self.extra_backends.last().context("just pushed")?;
        Ok((ns, pod.parse()?))
    }

    /// The dataplane handle.
    pub fn dp(&mut self) -> &mut Dataplane {
        self.dataplane
            .as_mut()
            .expect("the lab always holds a dataplane")
    }

    /// Starts the test proxy on the node, listening on every proxy address and port.
    pub fn start_proxy(&self, upstream: Upstream) -> Result<TestProxy> {
        self.start_proxy_with(upstream, Duration::ZERO)
    }

    /// [`Lab::start_proxy`] with a proxy that waits `delay` after accepting a connection before
    /// it asks for the original destination, as a busy proxy does.
    pub fn start_proxy_with(&self, upstream: Upstream, delay: Duration) -> Result<TestProxy> {
        TestProxy::start(
            &self.node_ns,
            &self.proxy_cgroup,
            &self.settings.endpoints(),
            upstream,
            delay,
        )
    }

    /// Selects `dst` for steering.
    pub fn select(&mut self, dst: SocketAddr) -> Result<()> {
        let entry = (
            ServiceKey::tcp_addr(dst),
            ServiceValue {
                service_id: 1,
                flags: 0,
            },
        );
        let rejected = self.dp().insert_services(&[entry])?;
        ensure!(
            rejected == 0,
            "the services map is full: {dst} was not selected"
        );
        Ok(())
    }

    /// Deselects `dst`.
    pub fn deselect(&mut self, dst: SocketAddr) -> Result<()> {
        Ok(self.dp().remove_services(&[ServiceKey::tcp_addr(dst)])?)
    }

    /// A new client connection to `dst` from the client pod.
    pub fn connect(&self, dst: SocketAddr) -> Result<Client> {
        Client::connect(&self.client_ns, &self.client_cgroup, dst)
    }

    /// Simulates a daemon restart: this process lets go of the dataplane (as an exiting daemon
    /// does), then a new process (`dataplane-ctl`) loads the programs, adopts the pins, attaches
    /// in place of the old links and exits; finally the maps are reopened from the pins.
    /// `exe` is `env!("CARGO_BIN_EXE_dataplane-ctl")`, which only tests can name.
    pub fn restart_dataplane_in_new_process(&mut self, exe: &str) -> Result<()> {
        self.dataplane = None;
        let mut cmd = Command::new(exe);
        cmd.arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--cgroup")
            .arg(self.cgroups.root());
        if let Some(p) = self.settings.proxy4 {
            cmd.arg("--proxy").arg(p.to_string());
        }
        if let Some(p) = self.settings.proxy6 {
            cmd.arg("--proxy6").arg(p.to_string());
        }
        cmd.arg("--proxy-ports").arg(PROXY_PORTS.to_string());
        if self.options.exclude_proxy_cgroup {
            cmd.arg("--exclude-cgroup").arg(&self.proxy_cgroup);
        }
        for uid in &self.options.exclude_uids {
            cmd.arg("--exclude-uid").arg(uid.to_string());
        }
        if let Some((mark, mask)) = self.options.exclude_mark {
            cmd.arg("--exclude-mark")
                .arg(format!("{mark:#x}/{mask:#x}"));
        }
        let out = cmd.output().context("cannot run dataplane-ctl")?;
        if !out.status.success() {
            bail!(
                "dataplane-ctl failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.dataplane = Some(Dataplane::open_pinned(&self.pin_dir)?);
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.dataplane = None;
        if let Err(e) = detach(&self.pin_dir) {
            eprintln!("warning: could not detach {}: {e}", self.pin_dir.display());
        }
    }
}

fn wire(client: &Netns, node: &Netns, backend: &Netns) -> Result<()> {
    crate::sys::ip(&[
        "link",
        "add",
        "eth0",
        "netns",
        client.name(),
        "type",
        "veth",
        "peer",
        "name",
        "vclient",
        "netns",
        node.name(),
    ])?;
    crate::sys::ip(&[
        "link",
        "add",
        "eth0",
        "netns",
        backend.name(),
        "type",
        "veth",
        "peer",
        "name",
        "vbackend",
        "netns",
        node.name(),
    ])?;
    let addrs: [(&Netns, &str, &str, &str); 4] = [
        (client, "eth0", CLIENT4, CLIENT6),
        (node, "vclient", NODE4, NODE6),
        (node, "vbackend", NODE4_UPSTREAM, NODE6_UPSTREAM),
        (backend, "eth0", BACKEND4, BACKEND6),
    ];
    for (ns, dev, v4, v6) in addrs {
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev])?;
        ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])?;
        ns.ip(&["link", "set", dev, "up"])?;
    }
    client.ip(&["route", "add", "default", "via", NODE4])?;
    client.ip(&["-6", "route", "add", "default", "via", NODE6])?;
    backend.ip(&["route", "add", "default", "via", NODE4_UPSTREAM])?;
    backend.ip(&["-6", "route", "add", "default", "via", NODE6_UPSTREAM])?;
    node.sysctl("net.ipv4.ip_forward", "1")?;
    node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    resolve_neighbours(client, &[NODE4, NODE6])?;
    resolve_neighbours(backend, &[NODE4_UPSTREAM, NODE6_UPSTREAM])?;
    Ok(())
}

/// Waits until `ns` reaches each of `peers` (a closed port answers with a reset), which also
/// resolves their link-layer addresses. A fresh veth's queue starts only when the kernel's
/// link watcher gets to it (up to a second later); until then the first ARP or neighbour
/// solicitation is lost and the first SYN waits a second for the next one. A steered SYN
/// that waits that long counts as a proxy that does not answer, and voids its lease.
fn resolve_neighbours(ns: &Netns, peers: &[&str]) -> Result<()> {
    let peers: Vec<SocketAddr> = peers.iter().map(|ip| sa(ip, 9)).collect();
    ns.run(move || -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for peer in peers {
            loop {
                match std::net::TcpStream::connect_timeout(&peer, Duration::from_millis(200)) {
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                    Err(e) if std::time::Instant::now() > deadline => {
                        bail!("{peer} is not reachable over the lab's veth: {e}")
                    }
                    Err(_) => {}
                }
            }
        }
        Ok(())
    })?
}
