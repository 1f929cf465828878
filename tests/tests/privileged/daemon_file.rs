//! Privileged tests of `redirector run` in `--services-file` mode: the real daemon process,
//! the real kernel programs, a lab of network namespaces. Run as root: `sudo cargo xtask test`.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use l7r_lab::{
    daemon::{Daemon, eventually, http_get},
    lab::{BACKEND4, CLIENT4, Lab, LabOptions, NODE4_UPSTREAM, SERVICE_PORT, sa},
    manifests::{ServiceSpec, ServicesFile},
    proxy::Upstream,
};

use crate::REDIRECTOR as EXE;

const METRICS: &str = "127.0.0.1:9400";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("constant address")
}

/// A Service `shop/web` (ClusterIP 10.96.0.10:80) with one ready endpoint, the lab's backend.
fn manifests(annotation: Option<&str>) -> String {
    ServiceSpec {
        namespace: "shop".into(),
        name: "web".into(),
        cluster_ip: "10.96.0.10".into(),
        port: 80,
        endpoint_ip: BACKEND4.into(),
        endpoint_port: SERVICE_PORT,
        annotation: annotation.map(str::to_string),
    }
    .yaml()
}

fn web_destinations() -> BTreeSet<SocketAddr> {
    [sa("10.96.0.10", 80), sa(BACKEND4, SERVICE_PORT)].into()
}

fn start(lab: &Lab, file: &ServicesFile, extra: &[&str]) -> Result<Daemon> {
    let mut args = vec!["--services-file", file.arg(), "--metrics-addr", METRICS];
    args.extend_from_slice(extra);
    Daemon::start(EXE, lab, &args)
}

fn wait_ready(lab: &Lab, daemon: &Daemon) -> Result<()> {
    let addr: SocketAddr = METRICS.parse()?;
    eventually("/readyz", Duration::from_secs(10), || {
        Ok(matches!(http_get(&lab.node_ns, addr, "/readyz"), Ok((200, _))).then_some(()))
    })
    .with_context(|| format!("daemon log:\n{}", daemon.log()))
}

/// Waits until the pinned readiness flags are `want`.
fn wait_readiness(lab: &Lab, want: (bool, bool)) -> Result<()> {
    eventually(
        &format!("readiness {want:?}"),
        Duration::from_secs(5),
        || Ok((lab.pinned_readiness()? == want).then_some(())),
    )
}

/// Starts the daemon on a file that selects `shop/web` and waits until it steers: synced, the
/// destinations in the map, the proxy marked ready.
fn start_steering(lab: &Lab, file: &ServicesFile) -> Result<Daemon> {
    let daemon = start(lab, file, &[])?;
    wait_ready(lab, &daemon)?;
    wait_destinations(lab, &web_destinations(), Duration::from_secs(2))?;
    wait_readiness(lab, (true, true))?;
    Ok(daemon)
}

fn wait_destinations(lab: &Lab, want: &BTreeSet<SocketAddr>, limit: Duration) -> Result<()> {
    eventually(&format!("the services map to hold {want:?}"), limit, || {
        Ok((lab.pinned_destinations()? == *want).then_some(()))
    })
}

#[test]
fn the_map_follows_the_file_and_a_broken_file_keeps_the_last_good_state() -> Result<()> {
    let lab = Lab::with(LabOptions::for_daemon())?;
    let _proxy = lab.start_proxy(Upstream::Plain)?;
    let file = ServicesFile::new(&manifests(None))?;
    let daemon = start(&lab, &file, &[])?;
    wait_ready(&lab, &daemon)?;
    assert!(
        lab.pinned_destinations()?.is_empty(),
        "nothing annotated yet"
    );

    file.write(&manifests(Some("true")))?;
    wait_destinations(&lab, &web_destinations(), Duration::from_secs(2))?;
    wait_readiness(&lab, (true, true))?;
    let mut client = lab.connect(sa(BACKEND4, SERVICE_PORT))?;
    assert_eq!(
        client.ask("annotated")?,
        ip(NODE4_UPSTREAM),
        "steered by the daemon"
    );

    file.write("apiVersion: v1\nkind: Service\nmetadata: {name: [broken\n")?;
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        lab.pinned_destinations()?,
        web_destinations(),
        "last good state kept"
    );
    assert!(
        daemon.log().contains("line 3"),
        "the error names its position:\n{}",
        daemon.log()
    );

    file.write(&manifests(Some("false")))?;
    wait_destinations(&lab, &BTreeSet::new(), Duration::from_secs(2))?;
    let mut client = lab.connect(sa(BACKEND4, SERVICE_PORT))?;
    assert_eq!(client.ask("deselected")?, ip(CLIENT4));
    Ok(())
}

#[test]
fn a_bad_annotation_value_is_reported_and_selects_nothing() -> Result<()> {
    let lab = Lab::with(LabOptions::for_daemon())?;
    let file = ServicesFile::new(&manifests(Some("yes")))?;
    let daemon = start(&lab, &file, &[])?;
    wait_ready(&lab, &daemon)?;
    assert!(lab.pinned_destinations()?.is_empty());
    eventually("the warning", Duration::from_secs(5), || {
        Ok(daemon.log().contains("\"yes\" is neither").then_some(()))
    })
    .with_context(|| daemon.log())?;
    Ok(())
}

#[test]
fn proxy_down_flips_readiness_and_traffic_goes_direct_until_it_returns() -> Result<()> {
    let lab = Lab::with(LabOptions::for_daemon())?;
    let proxy = lab.start_proxy(Upstream::Plain)?;
    let file = ServicesFile::new(&manifests(Some("true")))?;
    let daemon = start(&lab, &file, &[])?;
    wait_ready(&lab, &daemon)?;
    wait_readiness(&lab, (true, true))?;
    assert_eq!(
        lab.connect(sa(BACKEND4, SERVICE_PORT))?.ask("up")?,
        ip(NODE4_UPSTREAM)
    );

    drop(proxy);
    wait_readiness(&lab, (false, false))?;
    assert_eq!(
        lab.connect(sa(BACKEND4, SERVICE_PORT))?.ask("down")?,
        ip(CLIENT4),
        "fail-open"
    );

    let _proxy = lab.start_proxy(Upstream::Plain)?;
    wait_readiness(&lab, (true, true))?;
    assert_eq!(
        lab.connect(sa(BACKEND4, SERVICE_PORT))?.ask("back")?,
        ip(NODE4_UPSTREAM)
    );
    Ok(())
}

#[test]
fn an_excluded_cgroup_that_is_re_created_stays_excluded() -> Result<()> {
    let lab = Lab::with(LabOptions::for_daemon())?;
    let file = ServicesFile::new(&manifests(Some("true")))?;
    let proxy = lab.start_proxy(Upstream::Plain)?;
    let daemon = start_steering(&lab, &file)?;
    assert_eq!(
        lab.connect(sa(BACKEND4, SERVICE_PORT))?.ask("before")?,
        ip(NODE4_UPSTREAM)
    );
    // The daemon's own checks connect to the proxy too; count the steered connections.
    let steered = |proxy: &l7r_lab::proxy::TestProxy| {
        proxy
            .accepted()
            .into_iter()
            .filter(|a| a.orig_dst == Some(sa(BACKEND4, SERVICE_PORT)))
            .collect::<Vec<_>>()
    };
    assert_eq!(steered(&proxy).len(), 1);
    drop(proxy);

    // The proxy's container restarts: its cgroup comes back under the same path, new id.
    lab.recreate_proxy_cgroup()?;
    eventually(
        "the daemon to follow the re-created cgroup",
        Duration::from_secs(5),
        || {
            Ok(daemon
                .log()
                .contains("an excluded cgroup was re-created")
                .then_some(()))
        },
    )
    .with_context(|| daemon.log())?;
    let proxy = lab.start_proxy(Upstream::Plain)?;
    wait_readiness(&lab, (true, true))?;
    assert_eq!(
        lab.connect(sa(BACKEND4, SERVICE_PORT))?.ask("after")?,
        ip(NODE4_UPSTREAM)
    );
    let accepted = steered(&proxy);
    assert_eq!(
        accepted.len(),
        1,
        "the proxy's upstream looped back to it: {accepted:?}"
    );
    Ok(())
}

#[test]
fn metrics_health_and_readiness_endpoints() -> Result<()> {
    let lab = Lab::with(LabOptions::for_daemon())?;
    let _proxy = lab.start_proxy(Upstream::Plain)?;
    let file = ServicesFile::new(&manifests(Some("true")))?;
    let _daemon = start_steering(&lab, &file)?;
    lab.connect(sa(BACKEND4, SERVICE_PORT))?.ask("count me")?;

    let addr: SocketAddr = METRICS.parse()?;
    assert_eq!(http_get(&lab.node_ns, addr, "/healthz")?.0, 200);
    let (code, body) = http_get(&lab.node_ns, addr, "/metrics")?;
    assert_eq!(code, 200);
    for line in [
        "l7r_selected_services 1",
        "l7r_map_entries 2",
        "l7r_map_capacity 65536",
        "l7r_proxy_ready 1",
        "l7r_synced 1",
        "l7r_connections_redirected_total 1",
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line:?}:\n{body}");
    }
    assert!(body.contains("l7r_reconcile_duration_seconds_count"));
    Ok(())
}

#[test]
fn a_full_map_is_reported_and_what_fits_is_steered() -> Result<()> {
    let lab = Lab::with(LabOptions::for_daemon())?;
    let file = ServicesFile::new(&manifests(Some("true")))?;
    let daemon = start(&lab, &file, &["--services-capacity", "1"])?;
    let addr: SocketAddr = METRICS.parse()?;
    eventually("the overflow report", Duration::from_secs(10), || {
        Ok(daemon
            .log()
            .contains("the services map is full")
            .then_some(()))
    })
    .with_context(|| daemon.log())?;
    assert_eq!(
        lab.pinned_destinations()?.len(),
        1,
        "the entry that fits is there"
    );
    let (code, _) = http_get(&lab.node_ns, addr, "/readyz")?;
    assert_eq!(code, 503, "a full map is not ready");
    let (_, body) = http_get(&lab.node_ns, addr, "/metrics")?;
    assert!(body.lines().any(|l| l == "l7r_map_overflow 1"), "{body}");
    Ok(())
}

fn attached_programs(lab: &Lab) -> Result<u32> {
    Ok(redirector::dataplane::attached_programs(lab.cgroup_root())?)
}

#[test]
fn sigterm_leaves_the_datapath_a_restart_adopts_it_and_detach_removes_it() -> Result<()> {
    let lab = Lab::with(LabOptions::for_daemon())?;
    let _proxy = lab.start_proxy(Upstream::Plain)?;
    let file = ServicesFile::new(&manifests(Some("true")))?;
    let daemon = start_steering(&lab, &file)?;
    let mut proxied = lab.connect(sa(BACKEND4, SERVICE_PORT))?;
    assert_eq!(proxied.ask("first run")?, ip(NODE4_UPSTREAM));

    let status = daemon.stop()?;
    assert!(status.success(), "SIGTERM is a clean exit: {status}");
    assert_eq!(
        lab.pinned_destinations()?,
        web_destinations(),
        "selection stays"
    );
    assert_eq!(attached_programs(&lab)?, 6, "programs stay");
    assert_eq!(proxied.ask("daemon down")?, ip(NODE4_UPSTREAM));
    assert_eq!(
        lab.connect(sa(BACKEND4, SERVICE_PORT))?
            .ask("new, daemon down")?,
        ip(NODE4_UPSTREAM),
        "steering goes on without the daemon"
    );

    let out = Command::new(EXE)
        .args(["status", "--pin-dir", &lab.pin_dir.to_string_lossy()])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("shop/web") && text.contains("10.77.2.2:8080"),
        "{text}"
    );
    eprintln!("redirector status:\n{text}");

    let daemon = start(&lab, &file, &[])?;
    wait_ready(&lab, &daemon)?;
    assert_eq!(lab.pinned_destinations()?, web_destinations());
    assert!(
        !daemon.log().contains("selection updated"),
        "a restart rewrites nothing that is already right:\n{}",
        daemon.log()
    );
    assert_eq!(
        attached_programs(&lab)?,
        6,
        "the restart replaced the links"
    );
    assert_eq!(proxied.ask("second run")?, ip(NODE4_UPSTREAM));
    daemon.stop()?;

    let out = Command::new(EXE)
        .args(["detach", "--pin-dir", &lab.pin_dir.to_string_lossy()])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!lab.pin_dir.exists(), "no pins left");
    assert_eq!(attached_programs(&lab)?, 0, "no programs left");
    assert_eq!(
        lab.connect(sa(BACKEND4, SERVICE_PORT))?.ask("detached")?,
        ip(CLIENT4)
    );
    assert_eq!(
        proxied.ask("still proxied")?,
        ip(NODE4_UPSTREAM),
        "existing connections live on"
    );
    Ok(())
}

/// The container args of `deploy/cleanup/daemonset.yaml`.
fn cleanup_args() -> Result<Vec<String>> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cleanup/daemonset.yaml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let ds: serde_json::Value = serde_saphyr::from_str(&text)?;
    let args = ds
        .pointer("/spec/template/spec/containers/0/args")
        .and_then(serde_json::Value::as_array)
        .context("the cleanup DaemonSet's container has no args")?;
    args.iter()
        .map(|a| a.as_str().map(str::to_string).context("a non-string arg"))
        .collect()
}

/// A child process killed (by its PID) on drop.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn the_cleanup_daemonsets_command_removes_the_datapath_without_any_capability() -> Result<()> {
    let lab = Lab::with(LabOptions::for_daemon())?;
    let _proxy = lab.start_proxy(Upstream::Plain)?;
    let file = ServicesFile::new(&manifests(Some("true")))?;
    // `kubectl delete -k deploy/`: the daemon stops and leaves the datapath in place.
    start_steering(&lab, &file)?.stop()?;
    assert_eq!(attached_programs(&lab)?, 6);

    // `kubectl apply -k deploy/cleanup/`: its container's args, on this lab's pin dir, as root
    // with every capability dropped (the manifest drops them all).
    let args: Vec<String> = cleanup_args()?
        .into_iter()
        .map(|a| match a.strip_prefix("--pin-dir=") {
            Some(_) => format!("--pin-dir={}", lab.pin_dir.display()),
            None => a,
        })
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("detach"), "{args:?}");
    let mut child = Reaped(
        Command::new("setpriv")
            .args(["--bounding-set=-all", "--inh-caps=-all", EXE])
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let stdout = child.0.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !printed
        .iter()
        .any(|l: &String| l.contains("this node is clean"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => printed.push(line),
            Err(_) => anyhow::bail!("the cleanup did not finish within 10 s: {printed:?}"),
        }
    }
    assert!(
        printed.iter().any(|l| l.starts_with("detached: removed")),
        "{printed:?}"
    );
    assert!(!lab.pin_dir.exists(), "no pins left");
    assert_eq!(attached_programs(&lab)?, 0, "no programs left");
    assert_eq!(
        lab.connect(sa(BACKEND4, SERVICE_PORT))?
            .ask("after the cleanup")?,
        ip(CLIENT4)
    );
    // The pod keeps running until the DaemonSet is deleted, and then stops cleanly.
    assert!(child.0.try_wait()?.is_none(), "it must wait, not exit");
    // SAFETY: signalling the child we started, by its PID.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = child.0.wait()?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[test]
fn a_proxy_that_stops_together_with_the_daemon_fails_open() -> Result<()> {
    let lab = Lab::with(LabOptions::for_daemon())?;
    let proxy = lab.start_proxy(Upstream::Plain)?;
    let file = ServicesFile::new(&manifests(Some("true")))?;
    let daemon = start(&lab, &file, &[])?;
    wait_ready(&lab, &daemon)?;
    wait_readiness(&lab, (true, true))?;

    // A pod being deleted: both get SIGTERM at about the same time. (A second SIGTERM would
    // cut the grace short, so wait for the daemon to exit on its own.)
    daemon.signal_term();
    drop(proxy);
    let status = daemon.wait_exit(Duration::from_secs(10))?;
    assert!(status.success());
    assert_eq!(
        lab.pinned_readiness()?,
        (false, false),
        "marked not ready before exiting"
    );
    assert_eq!(
        lab.connect(sa(BACKEND4, SERVICE_PORT))?.ask("after")?,
        ip(CLIENT4),
        "fail-open"
    );
    Ok(())
}

/// Runs `redirector run` with `args` and returns its stderr; it must fail, within 20 s.
///
/// `args` must name the lab's `--cgroup` and `--pin-dir`: an input the daemon unexpectedly
/// accepts must attach to the lab's cgroup, never to the machine's root (the default), and a
/// daemon that does not exit is killed.
fn run_expecting_failure(args: &[&str]) -> Result<String> {
    anyhow::ensure!(
        args.contains(&"--cgroup") && args.contains(&"--pin-dir"),
        "test bug: a refused start must still name the lab's --cgroup and --pin-dir, or an \
         accepted one would attach to the root cgroup: {args:?}"
    );
    let mut child = Command::new(EXE)
        .arg("run")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "`run {}` should have failed, but kept running",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
    }
    anyhow::ensure!(
        !status.success(),
        "`run {}` should have failed",
        args.join(" ")
    );
    Ok(stderr)
}

#[test]
fn bad_input_is_refused_with_errors_that_name_the_problem_and_touches_nothing() -> Result<()> {
    let lab = Lab::with(LabOptions::for_daemon())?;
    let file = ServicesFile::new(&manifests(Some("true")))?;
    let base = ["--proxy", "10.77.1.1:15001", "--services-file", file.arg()];
    let pin = lab.pin_dir.to_string_lossy().to_string();
    let root = lab.cgroup_root().to_string_lossy().to_string();
    let tmp = std::env::temp_dir().to_string_lossy().to_string();

    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }
    let e = run_expecting_failure(&with(&base, &["--pin-dir", &pin, "--cgroup", &tmp]))?;
    assert!(e.contains("is not a cgroup v2 directory"), "{e}");
    let e = run_expecting_failure(&with(
        &base,
        &[
            "--pin-dir",
            &format!("{tmp}/l7r-not-bpffs"),
            "--cgroup",
            &root,
        ],
    ))?;
    assert!(e.contains("is not on a bpf file system"), "{e}");
    let e = run_expecting_failure(&with(
        &base,
        &[
            "--pin-dir",
            &pin,
            "--cgroup",
            &root,
            "--exclude-mark",
            "0x1/0x10",
        ],
    ))?;
    assert!(e.contains("can never match"), "{e}");
    let e = run_expecting_failure(&[
        "--proxy",
        "[fd00::1]:15001",
        "--proxy6",
        "[fd00::2]:15001",
        "--services-file",
        file.arg(),
        "--pin-dir",
        &pin,
        "--cgroup",
        &root,
    ])?;
    assert!(e.contains("give the IPv6 proxy once"), "{e}");
    // A pod's loopback is not the node's, and 0.0.0.0 is where one listens, not connects.
    for proxy in ["127.0.0.1:15001", "0.0.0.0:15001"] {
        let e = run_expecting_failure(&[
            "--proxy",
            proxy,
            "--services-file",
            file.arg(),
            "--pin-dir",
            &pin,
            "--cgroup",
            &root,
        ])?;
        assert!(e.contains(proxy) && e.contains("pods"), "{e}");
    }
    let broken = ServicesFile::new("kind: Service\nmetadata: [\n")?;
    let e = run_expecting_failure(&[
        "--proxy",
        "10.77.1.1:15001",
        "--services-file",
        broken.arg(),
        "--pin-dir",
        &pin,
        "--cgroup",
        &root,
    ])?;
    assert!(e.contains("does not parse") && e.contains("line"), "{e}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0")?;
    let busy_addr = busy.local_addr()?.to_string();
    let e = run_expecting_failure(&with(
        &base,
        &[
            "--pin-dir",
            &pin,
            "--cgroup",
            &root,
            "--metrics-addr",
            &busy_addr,
        ],
    ))?;
    assert!(e.contains("cannot serve metrics"), "{e}");

    let e = run_expecting_failure(&with(
        &base,
        &[
            "--pin-dir",
            &pin,
            "--cgroup",
            &root,
            "--ready-lease",
            "1s",
            "--proxy-check-interval",
            "1s",
        ],
    ))?;
    assert!(
        e.contains("--ready-lease (1s) must be longer than --proxy-check-interval"),
        "{e}"
    );

    // A cgroup2 mount of a subtree, as a pod's own cgroup namespace shows it: depths measured
    // from it would be wrong, so it is refused.
    let subtree = BindMount::new(lab.cgroup_root())?;
    let e = run_expecting_failure(&with(
        &base,
        &[
            "--pin-dir",
            &pin,
            "--cgroup",
            &subtree.path.to_string_lossy(),
        ],
    ))?;
    assert!(e.contains("is not the root of the hierarchy"), "{e}");
    drop(subtree);

    assert_eq!(
        attached_programs(&lab)?,
        0,
        "nothing attached by a refused start"
    );
    assert!(lab.pinned_destinations()?.is_empty());
    assert!(
        !std::path::Path::new(&format!("{tmp}/l7r-not-bpffs")).exists(),
        "a refused --pin-dir is not created"
    );
    Ok(())
}

/// `source` bind-mounted on a new temporary directory; unmounted and removed on drop.
struct BindMount {
    path: std::path::PathBuf,
}

impl BindMount {
    fn new(source: &std::path::Path) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("l7r-bind-{}", l7r_lab::sys::unique_id()));
        std::fs::create_dir(&path)?;
        let mount = Self { path };
        l7r_lab::sys::run(
            "mount",
            &[
                "--bind",
                &source.to_string_lossy(),
                &mount.path.to_string_lossy(),
            ],
        )?;
        Ok(mount)
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = l7r_lab::sys::run("umount", &[&self.path.to_string_lossy()]);
        let _ = std::fs::remove_dir(&self.path);
    }
}
