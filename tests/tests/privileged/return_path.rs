//! The return path of `--upstream-source client` (`redirector::return_path`): installed,
//! checked, repaired and removed for real, each test inside network namespaces it creates
//! (`ip rule`s, routes and nft tables are per namespace, so the host's are never touched), and
//! the packet walk it exists for: a reply to a connection the proxy dialled from a client's
//! address reaches the proxy's transparent socket.

use std::{
    collections::BTreeSet,
    io::Read as _,
    net::{IpAddr, SocketAddr, TcpListener},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use l7r_lab::{
    daemon::eventually,
    lab::{BACKEND4, Lab, LabOptions, SERVICE_PORT},
    manifests::{ServiceSpec, ServicesFile},
    netns::Netns,
    process::{LoggedChild, spawn_in},
    proxy::Upstream,
    sys::{require_root, unique_id},
};
use redirector::return_path::{
    Ensured, Missing, ReturnPath, Settings, apply,
    rules::{Family, RT_PROTO},
};
use serde_json::Value;

use crate::REDIRECTOR as EXE;

/// Runs a command inside `ns` (a thread that entered it spawns it), failing with its stderr.
fn run_in(ns: &Netns, program: &'static str, args: &[&str]) -> Result<String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    ns.run(move || -> Result<String> {
        let out = Command::new(program)
            .args(&args)
            .output()
            .with_context(|| format!("cannot run {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })?
}

fn json(ns: &Netns, program: &'static str, args: &[&str]) -> Result<Value> {
    let text = run_in(ns, program, args)?;
    if text.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&text).with_context(|| format!("{program} {args:?} printed {text}"))
}

/// The comments of the rules of `table` (`family name`), in order, or `None` without it.
fn nft_comments(ns: &Netns, family: &str, table: &str) -> Result<Option<Vec<String>>> {
    let tables = run_in(ns, "nft", &["list", "tables"])?;
    if !tables
        .lines()
        .any(|l| l == format!("table {family} {table}"))
    {
        return Ok(None);
    }
    let v = json(ns, "nft", &["-j", "list", "table", family, table])?;
    Ok(Some(
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i.get("rule"))
            .map(|r| r["comment"].as_str().unwrap_or("").to_string())
            .collect(),
    ))
}

/// `ip -j -N <family> rule show`, as `(priority, fwmark, table, protocol)`.
fn ip_rules(ns: &Netns, family: &str) -> Result<Vec<(u64, String, String, String)>> {
    let v = json(ns, "ip", &["-j", "-N", family, "rule", "show"])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
            (
                r["priority"].as_u64().unwrap_or(0),
                s("fwmark"),
                s("table"),
                s("protocol"),
            )
        })
        .collect())
}

/// `ip -j -N <family> route show table <table>` as `type dst dev` strings.
fn ip_routes(ns: &Netns, family: &str, table: &str) -> Result<Vec<String>> {
    let v = json(ns, "ip", &["-j", family, "route", "show", "table", table])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} {} {}",
                r["type"].as_str().unwrap_or("unicast"),
                r["dst"].as_str().unwrap_or(""),
                r["dev"].as_str().unwrap_or("")
            )
        })
        .collect())
}

fn ours(rules: &[(u64, String, String, String)]) -> usize {
    rules.iter().filter(|r| r.3 == RT_PROTO.to_string()).count()
}

fn addrs(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|a| a.parse().expect("address")).collect()
}

/// A foreign table, rule and route in `ns`, like a CNI's, which ours must never touch.
fn add_foreign(ns: &Netns) -> Result<()> {
    run_in(
        ns,
        "nft",
        &[
            "add table inet foreign; add chain inet foreign c { type filter hook output priority 0; }; add rule inet foreign c meta mark 0x4 counter",
        ],
    )?;
    // The same priority as ours, another mark, no protocol; and a route in our table.
    ns.ip(&[
        "rule", "add", "priority", "90", "fwmark", "0x8/0x8", "lookup", "100",
    ])?;
    ns.ip(&[
        "route",
        "add",
        "unreachable",
        "10.9.0.0/16",
        "table",
        "15001",
    ])?;
    Ok(())
}

fn assert_foreign_intact(ns: &Netns) -> Result<()> {
    assert_eq!(
        nft_comments(ns, "inet", "foreign")?.map(|c| c.len()),
        Some(1),
        "the foreign table and its rule are still there"
    );
    assert!(
        ip_rules(ns, "-4")?
            .iter()
            .any(|r| r.0 == 90 && r.1 == "0x8" && r.2 == "100"),
        "the foreign ip rule is still there"
    );
    assert!(
        ip_routes(ns, "-4", "15001")?.contains(&"unreachable 10.9.0.0/16 ".to_string()),
        "the foreign route in table 15001 is still there"
    );
    Ok(())
}

#[test]
fn install_repair_and_remove_touch_only_ours() -> Result<()> {
    require_root();
    let ns = Netns::new("rp")?;
    add_foreign(&ns)?;
    let settings = Settings::default();

    // Install, with the hairpin sets given.
    let hairpin = addrs(&["10.1.0.5", "fd00::5"]);
    let h = hairpin.clone();
    ns.run(move || apply::install(&settings, &h))??;
    assert_eq!(ns.run(move || apply::check(&settings))??, vec![]);
    let comments = nft_comments(&ns, "inet", "l7_redirector")?.context("our table")?;
    assert_eq!(comments.len(), 5, "{comments:?}");
    assert!(
        comments.iter().all(|c| c.starts_with("l7r ")),
        "{comments:?}"
    );
    for family in ["-4", "-6"] {
        let rules = ip_rules(&ns, family)?;
        assert!(
            rules
                .iter()
                .any(|r| *r == (90, "0x4".into(), "15001".into(), RT_PROTO.to_string())),
            "{family}: {rules:?}"
        );
        assert!(
            ip_routes(&ns, family, "15001")?.contains(&"local default lo".to_string()),
            "{family}"
        );
    }
    let table = ns.run(apply::read_table)??.context("our table")?;
    assert_eq!(table.hairpin, hairpin);

    // Installing again changes nothing: one rule per family, the same table.
    let h = hairpin.clone();
    ns.run(move || apply::install(&settings, &h))??;
    assert_eq!(ours(&ip_rules(&ns, "-4")?), 1);
    assert_eq!(ours(&ip_rules(&ns, "-6")?), 1);
    assert_eq!(
        nft_comments(&ns, "inet", "l7_redirector")?,
        Some(comments.clone())
    );

    // A flushed table is seen, rule by rule, and the daemon's repair restores it.
    run_in(&ns, "nft", &["flush", "table", "inet", "l7_redirector"])?;
    let missing = ns.run(move || apply::check(&settings))??;
    assert_eq!(missing.len(), 5, "{missing:?}");
    assert!(missing.iter().all(|m| matches!(m, Missing::Rule { .. })));
    let rp = ns.run(move || ReturnPath::install(settings))??;
    let rp = std::sync::Arc::new(rp);
    let (r, h) = (rp.clone(), hairpin.clone());
    ns.run(move || r.set_hairpin(h))??;
    run_in(&ns, "nft", &["flush", "table", "inet", "l7_redirector"])?;
    let r = rp.clone();
    assert!(matches!(ns.run(move || r.ensure())??, Ensured::Repaired(m) if m.len() == 5));
    assert_eq!(ns.run(move || apply::check(&settings))??, vec![]);

    // A deleted ip rule, and a deleted table: each named, each re-created (the hairpin sets
    // with what the daemon last asked for).
    ns.ip(&[
        "-6", "rule", "del", "priority", "90", "fwmark", "0x4/0x4", "lookup", "15001",
    ])?;
    assert_eq!(
        ns.run(move || apply::check(&settings))??,
        vec![Missing::IpRule(Family::V6)]
    );
    let r = rp.clone();
    assert_eq!(
        ns.run(move || r.ensure())??,
        Ensured::Repaired(vec![Missing::IpRule(Family::V6)])
    );
    run_in(&ns, "nft", &["delete", "table", "inet", "l7_redirector"])?;
    let r = rp.clone();
    assert_eq!(
        ns.run(move || r.ensure())??,
        Ensured::Repaired(vec![Missing::Table])
    );
    assert_eq!(
        ns.run(apply::read_table)??.context("table")?.hairpin,
        hairpin
    );
    let r = rp.clone();
    assert_eq!(ns.run(move || r.ensure())??, Ensured::Present);

    // The hairpin sets follow the daemon element by element.
    let r = rp.clone();
    ns.run(move || r.set_hairpin(addrs(&["10.1.0.6"])))??;
    assert_eq!(
        ns.run(apply::read_table)??.context("table")?.hairpin,
        addrs(&["10.1.0.6"])
    );

    let r = rp.clone();
    ns.run(move || r.set_hairpin(addrs(&["10.1.0.6", "fd00::6"])))??;
    // Removing by element skips what is not there.
    ns.run(|| apply::remove_hairpin(&addrs(&["10.1.0.6", "10.1.0.99"])))??;
    assert_eq!(
        ns.run(apply::read_table)??.context("table")?.hairpin,
        addrs(&["fd00::6"])
    );

    // Other settings: the old rule and route of ours go, the foreign ones stay.
    let moved = Settings {
        table: 15002,
        priority: 91,
        ..settings
    };
    ns.run(move || apply::install(&moved, &BTreeSet::new()))??;
    assert_eq!(ns.run(move || apply::check(&moved))??, vec![]);
    let rules4 = ip_rules(&ns, "-4")?;
    assert_eq!(ours(&rules4), 1, "{rules4:?}");
    assert!(rules4.iter().any(|r| r.0 == 91 && r.2 == "15002"));
    assert!(!ip_routes(&ns, "-4", "15001")?.contains(&"local default lo".to_string()));
    assert_foreign_intact(&ns)?;

    // Remove: nothing of ours is left, the foreign pieces are untouched.
    let removed = ns.run(apply::remove)??;
    assert_eq!(removed.len(), 5, "table, 2 rules, 2 routes: {removed:?}");
    assert_eq!(nft_comments(&ns, "inet", "l7_redirector")?, None);
    assert_eq!(ours(&ip_rules(&ns, "-4")?), 0);
    assert_eq!(ours(&ip_rules(&ns, "-6")?), 0);
    for family in ["-4", "-6"] {
        let left = json(
            &ns,
            "ip",
            &[
                "-j",
                family,
                "route",
                "show",
                "table",
                "all",
                "proto",
                &RT_PROTO.to_string(),
            ],
        )?;
        assert_eq!(left.as_array().map(Vec::len).unwrap_or(0), 0, "{left}");
    }
    assert_foreign_intact(&ns)?;
    assert_eq!(ns.run(apply::remove)??, Vec::<String>::new(), "idempotent");
    let missing = ns.run(move || apply::check(&settings))??;
    assert!(missing.contains(&Missing::Table), "{missing:?}");
    Ok(())
}

/// A backend that answers each connection with the peer address it saw, for `n` connections
/// or 20 s, whichever ends first (so its thread ends even when the test fails early).
fn serve_peer(listener: TcpListener, n: usize) -> Result<thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    Ok(thread::spawn(move || {
        use std::io::Write as _;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut served = 0;
        while served < n && std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((mut conn, peer)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.write_all(peer.ip().to_string().as_bytes());
                    served += 1;
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    }))
}

/// What the proxy does with `--upstream-source client`: a transparent socket with the upstream
/// SO_MARK, bound to the client's (non-local) address, dialling `to`; what the backend said.
fn dial_as_client(ns: &Netns, client: IpAddr, to: SocketAddr, mark: u32) -> Result<String> {
    ns.run(move || -> Result<String> {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
        if to.is_ipv4() {
            socket.set_ip_transparent_v4(true)?;
        } else {
            socket.set_ip_transparent_v6(true)?;
        }
        socket.set_mark(mark)?;
        socket.bind(&SocketAddr::new(client, 0).into())?;
        socket
            .connect_timeout(&to.into(), Duration::from_millis(1500))
            .with_context(|| format!("connect {client} -> {to}"))?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut stream: std::net::TcpStream = socket.into();
        let mut said = String::new();
        stream.read_to_string(&mut said)?;
        Ok(said)
    })?
}

/// Static neighbour entries both ways on a veth pair: the first SYN must not wait on a
/// solicitation (a veth just brought up can lose the first one).
fn pin_neighbours(a: (&Netns, &str, &[&str]), b: (&Netns, &str, &[&str])) -> Result<()> {
    let mac = |ns: &Netns, dev: &str| -> Result<String> {
        let v: Value = serde_json::from_str(&ns.ip(&["-j", "link", "show", dev])?)?;
        Ok(v[0]["address"].as_str().context("no MAC")?.to_string())
    };
    let (mac_a, mac_b) = (mac(a.0, a.1)?, mac(b.0, b.1)?);
    for ((ns, dev, peers), lladdr) in [(a, &mac_b), (b, &mac_a)] {
        for peer in peers {
            ns.ip(&[
                "neigh",
                "replace",
                peer,
                "lladdr",
                lladdr,
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
    }
    Ok(())
}

/// The packet walk, without Envoy: the node dials from a client pod's address, the way the
/// proxy does, to a backend behind another "node", a host-networked backend on the node, a
/// pod on the node, and (hairpin) the client pod itself. The replies reach the dialling
/// socket through the return path; without the ip rule, or without the upstream mark, or
/// (for the hairpin) without the set element, they do not.
#[test]
fn replies_to_the_client_address_reach_the_proxy_socket() -> Result<()> {
    require_root();
    let node = Netns::new("rpnode")?;
    let backend = Netns::new("rpback")?;
    let pod = Netns::new("rppod")?;
    let id = std::process::id();
    let (n, b) = (format!("rpn{id}"), format!("rpb{id}"));
    node.ip(&["link", "add", &n, "type", "veth", "peer", "name", &b])?;
    node.ip(&["link", "set", &b, "netns", backend.name()])?;
    node.ip(&["addr", "add", "10.66.0.1/24", "dev", &n])?;
    node.ip(&["-6", "addr", "add", "fd66::1/64", "dev", &n, "nodad"])?;
    node.ip(&["link", "set", &n, "up"])?;
    backend.ip(&["addr", "add", "10.66.0.2/24", "dev", &b])?;
    backend.ip(&["-6", "addr", "add", "fd66::2/64", "dev", &b, "nodad"])?;
    backend.ip(&["link", "set", &b, "up"])?;
    // The pod CIDR is routed to the node, as a cluster routes a node's pod CIDR.
    backend.ip(&["route", "add", "10.88.0.0/24", "via", "10.66.0.1"])?;
    backend.ip(&["-6", "route", "add", "fd88::/64", "via", "fd66::1"])?;
    // On the node the pod CIDR goes into the pod's veth, Calico style (/32 in the pod, the
    // node as its gateway). Replies for a client address other than the pod's own are lost
    // there: the pod does not forward.
    let (p, q) = (format!("rpp{id}"), format!("rpq{id}"));
    node.ip(&["link", "add", &p, "type", "veth", "peer", "name", &q])?;
    node.ip(&["link", "set", &q, "netns", pod.name()])?;
    node.ip(&["addr", "add", "10.88.0.1/32", "dev", &p])?;
    node.ip(&["link", "set", &p, "up"])?;
    node.ip(&["route", "add", "10.88.0.0/24", "dev", &p])?;
    node.ip(&["-6", "route", "add", "fd88::/64", "dev", &p])?;
    pod.ip(&["addr", "add", "10.88.0.2/32", "dev", &q])?;
    pod.ip(&["link", "set", &q, "up"])?;
    pod.ip(&["route", "add", "10.88.0.1", "dev", &q])?;
    pod.ip(&["route", "add", "default", "via", "10.88.0.1", "dev", &q])?;
    pin_neighbours(
        (&node, &n, &["10.66.0.2", "fd66::2"]),
        (&backend, &b, &["10.66.0.1", "fd66::1"]),
    )?;
    pin_neighbours(
        (&node, &p, &["10.88.0.2", "10.88.0.3"]),
        (&pod, &q, &["10.88.0.1"]),
    )?;

    let remote4 = backend.run(|| TcpListener::bind("10.66.0.2:8080"))??;
    let remote6 = backend.run(|| TcpListener::bind("[fd66::2]:8080"))??;
    let host = node.run(|| TcpListener::bind("10.66.0.1:8081"))??;
    let in_pod = pod.run(|| TcpListener::bind("10.88.0.2:8082"))??;
    let (remote4_addr, remote6_addr, host_addr, pod_addr) = (
        remote4.local_addr()?,
        remote6.local_addr()?,
        host.local_addr()?,
        in_pod.local_addr()?,
    );
    // Each serves exactly the connections that complete below.
    let servers = [
        serve_peer(remote4, 2)?,
        serve_peer(remote6, 1)?,
        serve_peer(host, 1)?,
        serve_peer(in_pod, 2)?,
    ];
    // A client pod with no namespace of its own here (its replies would be lost in the other
    // pod's veth), and the pod itself.
    let client4: IpAddr = "10.88.0.3".parse()?;
    let client6: IpAddr = "fd88::3".parse()?;
    let itself: IpAddr = "10.88.0.2".parse()?;
    let settings = Settings::default();
    let mark = settings.upstream_mark;

    node.run(move || apply::install(&settings, &BTreeSet::new()))??;
    assert_eq!(
        dial_as_client(&node, client4, remote4_addr, mark)?,
        "10.88.0.3"
    );
    assert_eq!(
        dial_as_client(&node, client6, remote6_addr, mark)?,
        "fd88::3"
    );
    // A host-networked backend on the node: its replies leave through OUTPUT.
    assert_eq!(
        dial_as_client(&node, client4, host_addr, mark)?,
        "10.88.0.3"
    );
    // A pod on the node: its replies come in from its veth.
    assert_eq!(dial_as_client(&node, client4, pod_addr, mark)?, "10.88.0.3");
    // The pod sent to itself: a SYN from its own address is a martian, until the daemon puts
    // it in the hairpin set; then it sees the node's address, as with kube-proxy's hairpin.
    assert!(dial_as_client(&node, itself, pod_addr, mark).is_err());
    node.run(move || apply::add_hairpin(&[itself].into()))??;
    assert_eq!(dial_as_client(&node, itself, pod_addr, mark)?, "10.88.0.1");

    // Without the ip rule the replies go where the main table sends them (into the pod's
    // veth), and the connect fails: this is what the daemon's check prevents.
    node.ip(&[
        "-4", "rule", "del", "priority", "90", "fwmark", "0x4/0x4", "lookup", "15001",
    ])?;
    assert!(dial_as_client(&node, client4, remote4_addr, mark).is_err());
    assert!(dial_as_client(&node, client4, host_addr, mark).is_err());
    assert_eq!(
        node.run(move || apply::check(&settings))??,
        vec![Missing::IpRule(Family::V4)]
    );
    node.run(move || apply::install(&settings, &BTreeSet::new()))??;
    assert_eq!(
        dial_as_client(&node, client4, remote4_addr, mark)?,
        "10.88.0.3"
    );
    // A socket without the upstream mark gets no return path: only the proxy's connections
    // are ever rerouted.
    assert!(dial_as_client(&node, client4, remote4_addr, 0).is_err());
    node.run(apply::remove)??;
    for server in servers {
        server.join().expect("backend thread");
    }
    Ok(())
}

/// A directory of its own under /tmp, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(what: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("l7r-{}-{what}", unique_id()));
        std::fs::create_dir(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `redirector <args>` in `ns`, to completion; its stdout.
fn redirector_in(ns: &Netns, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(EXE);
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = spawn_in(cmd, ns, None)?.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "redirector {args:?}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// `redirector run --upstream-source client`: the daemon installs the return path (and the
/// hairpin set from the selected Service's endpoints), `status` shows it, a flushed table is
/// re-created, one that cannot be re-created makes the proxy not ready (traffic goes direct)
/// until it can, and `detach` removes it all.
#[test]
fn the_daemon_keeps_the_return_path_and_fails_open_without_it() -> Result<()> {
    require_root();
    let lab = Lab::with(LabOptions::for_daemon())?;
    let _proxy = lab.start_proxy(Upstream::Plain)?;
    let web = |annotation: &str| {
        ServiceSpec {
            namespace: "shop".into(),
            name: "web".into(),
            cluster_ip: "10.96.0.10".into(),
            port: 80,
            endpoint_ip: BACKEND4.into(),
            endpoint_port: SERVICE_PORT,
            annotation: Some(annotation.into()),
        }
        .yaml()
    };
    let file = ServicesFile::new(&web("true"))?;
    // The real nft, behind a switch that makes it fail: a repair that cannot succeed.
    let bin = TempDir::new("nftshim")?;
    let broken = bin.0.join("broken");
    let real_nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .context("nft is not installed")?;
    let shim = bin.0.join("nft");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\n[ -e {} ] && {{ echo injected failure >&2; exit 1; }}\nexec {real_nft} \"$@\"\n",
            broken.display()
        ),
    )?;
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let path = format!(
        "{}:{}",
        bin.0.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut cmd = Command::new(EXE);
    cmd.arg("run")
        .args(lab.daemon_args())
        .args(["--services-file", file.arg(), "--upstream-source", "client"])
        .env("PATH", &path);
    let daemon = LoggedChild::spawn(cmd, &lab.node_ns, None, "daemon")?;
    let settings = Settings::default();
    let ready = |want: (bool, bool)| {
        eventually(
            &format!("readiness {want:?}"),
            Duration::from_secs(5),
            // Nothing is pinned until the daemon has loaded the datapath.
            || Ok((lab.pinned_readiness().ok() == Some(want)).then_some(())),
        )
        .with_context(|| daemon.log())
    };
    ready((true, true))?;
    assert_eq!(lab.node_ns.run(move || apply::check(&settings))??, vec![]);
    eventually("the hairpin set", Duration::from_secs(5), || {
        let table = lab.node_ns.run(apply::read_table)??;
        Ok((table.map(|t| t.hairpin) == Some(addrs(&[BACKEND4]))).then_some(()))
    })
    .with_context(|| daemon.log())?;

    let hairpin_is = |want: BTreeSet<IpAddr>| {
        eventually("the hairpin set", Duration::from_secs(5), || {
            let table = lab.node_ns.run(apply::read_table)??;
            Ok((table.map(|t| t.hairpin) == Some(want.clone())).then_some(()))
        })
        .with_context(|| daemon.log())
    };
    // Deselected: its endpoints leave the set.
    file.write(&web("false"))?;
    hairpin_is(BTreeSet::new())?;
    file.write(&web("true"))?;
    hairpin_is(addrs(&[BACKEND4]))?;

    let pin_dir = lab.pin_dir.display().to_string();
    let status = redirector_in(&lab.node_ns, &["status", "--pin-dir", &pin_dir])?;
    assert!(
        status.contains("upstream src: client (return path present)"),
        "{status}"
    );
    assert!(
        status.contains(
            "upstream mark 0x1000, ct mark 0x4, return mark 0x4, table 15001, rule priority 90"
        ),
        "{status}"
    );

    // Flushed by someone: back within a check or two.
    run_in(
        &lab.node_ns,
        "nft",
        &["delete", "table", "inet", "l7_redirector"],
    )?;
    eventually("the table re-created", Duration::from_secs(5), || {
        Ok(lab
            .node_ns
            .run(move || apply::check(&settings))??
            .is_empty()
            .then_some(()))
    })
    .with_context(|| daemon.log())?;
    assert!(daemon.log().contains("re-creating it"), "{}", daemon.log());

    // Gone and not re-creatable: the proxy is reported not ready, so traffic goes direct.
    std::fs::write(&broken, "")?;
    lab.node_ns.ip(&[
        "-4", "rule", "del", "priority", "90", "fwmark", "0x4/0x4", "lookup", "15001",
    ])?;
    ready((false, false))?;
    assert!(
        daemon.log().contains("the return path is missing"),
        "{}",
        daemon.log()
    );
    let status = redirector_in(&lab.node_ns, &["status", "--pin-dir", &pin_dir])?;
    assert!(
        status.contains("return path INCOMPLETE, missing IPv4 fwmark ip rule"),
        "{status}"
    );
    std::fs::remove_file(&broken)?;
    ready((true, true))?;
    assert_eq!(lab.node_ns.run(move || apply::check(&settings))??, vec![]);

    // Detach removes it with the pins; nothing of ours is left in the node's namespace.
    let mut daemon = daemon;
    daemon.terminate()?;
    let out = redirector_in(&lab.node_ns, &["detach", "--pin-dir", &pin_dir])?;
    assert!(
        out.contains("removed nft table inet l7_redirector"),
        "{out}"
    );
    assert_eq!(ours(&ip_rules(&lab.node_ns, "-4")?), 0);
    assert_eq!(ours(&ip_rules(&lab.node_ns, "-6")?), 0);
    assert_eq!(nft_comments(&lab.node_ns, "inet", "l7_redirector")?, None);
    Ok(())
}
