//! `cargo xtask demo`: the user guide's workflow on this machine, step by step, with the real
//! Envoy and the real daemon. It builds a small lab (network namespaces for a client pod, a
//! node and two backend pods; a ClusterIP emulated with an nftables DNAT, as kube-proxy would),
//! shows what annotating a Service changes, Envoy's access log and the aggregated L7 records of
//! `redirector collect`, and removes everything on exit or Ctrl-C.

use std::{
    io::IsTerminal as _,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use l7r_lab::{
    client::connect_stream,
    daemon::{Daemon, eventually},
    e2e::{self, CLUSTER_IP, HTTP_PORT, cluster, web_service},
    envoy::{Envoy, UPSTREAM_MARK},
    http::{HttpBackend, HttpConn, Response},
    lab::{BACKEND4, CLIENT4, Lab, LabOptions, NODE4, PROXY_PORT, sa},
    manifests::ServicesFile,
    process::LoggedChild,
    sys::{TempFile, json_lines},
};

#[derive(Parser)]
#[command(about = "The redirector demo (run it with `sudo cargo xtask demo`)")]
struct Args {
    /// The `redirector` binary to run as the daemon.
    #[arg(long)]
    redirector: PathBuf,
    /// The Envoy binary (sets REDIRECTOR_ENVOY for the fixture).
    #[arg(long)]
    envoy: Option<PathBuf>,
}

/// The backend pods' port (the Service's target port).
const POD_PORT: u16 = HTTP_PORT;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM set a flag; the demo stops at the next step and its guards clean up.
fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// `text` in bold on a terminal, plain otherwise (a log file or CI output gets no escapes).
fn bold(text: &str) -> String {
    if std::io::stdout().is_terminal() {
        format!("\x1b[1m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

fn step(n: usize, title: &str) -> Result<()> {
    check_interrupted()?;
    println!("\n{}", bold(&format!("[{n}/9] {title}")));
    Ok(())
}

fn say(text: &str) {
    for line in text.lines() {
        println!("      {line}");
    }
}

fn show(label: &str, text: &str) {
    println!("      {label}");
    for line in text.lines() {
        println!("        | {line}");
    }
}

fn main() {
    install_signal_handlers();
    let args = Args::parse();
    if let Some(envoy) = &args.envoy {
        // SAFETY: single-threaded at this point; the fixture reads it later.
        unsafe { std::env::set_var("REDIRECTOR_ENVOY", envoy) };
    }
    let started = Instant::now();
    let result = run(&args);
    // Everything the demo made is gone by now: the guards dropped at the end of `run`.
    match result {
        Ok(()) => {
            println!(
                "\n{} Everything the demo made has been removed.",
                bold(&format!("Done in {:.0?}.", started.elapsed()))
            );
            read_next();
        }
        Err(e) => {
            eprintln!("\ndemo stopped: {e:#}\nEverything the demo made has been removed.");
            std::process::exit(1);
        }
    }
}

fn read_next() {
    println!(
        "\nWhat to read next:
  - README.md: what the redirector is, and `redirector status` / `redirector detach`;
  - deploy/README.md and `kubectl apply -k deploy/`: running it on a cluster;
  - the design and its promises: docs/design.md;
  - inside a running node: `bpftool map dump pinned /sys/fs/bpf/l7-redirector/services`."
    );
}

/// `redirector collect` turning Envoy's access log into aggregated L7 records; stopped by
/// its PID on drop.
struct Collector {
    // Declared first, so it stops before its output file is removed.
    _process: LoggedChild,
    output: TempFile,
}

impl Collector {
    fn start(redirector: &PathBuf, world: &World) -> Result<Self> {
        let output = TempFile::new("demo-records.jsonl");
        let mut cmd = Command::new(redirector);
        cmd.arg("collect")
            .arg("--access-log")
            .arg(&world.envoy.access_log)
            .args(["--services-file", world.file.arg()])
            .args(["--output", output.arg()])
            .args(["--log-interval-seconds", "1", "--node-name", "demo-node"]);
        let process = LoggedChild::spawn(cmd, &world.lab.node_ns, None, "collector")?;
        Ok(Self {
            _process: process,
            output,
        })
    }

    /// The records written so far (none while a line is half written: the next look sees it).
    fn records(&self) -> Vec<serde_json::Value> {
        json_lines(&self.output.0).unwrap_or_default()
    }
}

/// Pods for the collector to name request sources and destinations after.
fn pods(second_pod: &str) -> String {
    let pod = |name: &str, owner: &str, ip: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  \
             ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: {owner}, \
             uid: {owner}-uid, controller: true}}]\n\
             status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
        )
    };
    [
        pod("frontend-7d9f8-x7k2p", "frontend-7d9f8", CLIENT4),
        pod("web-5f7c9-q8w2e", "web-5f7c9", BACKEND4),
        pod("web-5f7c9-z4m1n", "web-5f7c9", second_pod),
    ]
    .concat()
}

/// The demo's world; fields drop in order: daemon, Envoy, files, backends, lab.
struct World {
    daemon: Daemon,
    envoy: Envoy,
    file: ServicesFile,
    _backends: HttpBackend,
    _backend2: HttpBackend,
    lab: Lab,
}

impl World {
    fn curl_head(&self) -> Result<String> {
        check_interrupted()?;
        e2e::curl_head(&self.lab)
    }

    fn connect(&self) -> Result<HttpConn> {
        let stream = connect_stream(&self.lab.client_ns, &self.lab.client_cgroup, cluster())?;
        HttpConn::new(stream, "web.shop")
    }

    fn wait_selected(&self, selected: bool) -> Result<Duration> {
        let t = Instant::now();
        eventually(
            "the daemon to update the map",
            Duration::from_secs(10),
            || {
                check_interrupted()?;
                Ok(
                    (self.lab.pinned_destinations()?.contains(&cluster()) == selected)
                        .then_some(()),
                )
            },
        )
        .with_context(|| self.daemon.log())?;
        Ok(t.elapsed())
    }

    fn status(&self, redirector: &PathBuf) -> Result<String> {
        let out = Command::new(redirector)
            .args(["status", "--pin-dir", &self.lab.pin_dir.to_string_lossy()])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn verdict(r: &Response) -> String {
    match r.header("server") {
        Some("envoy") => "server: envoy -> it went through the node's Envoy".into(),
        Some(other) => format!("server: {other} -> it went straight to the pod"),
        None => "no server header".into(),
    }
}

fn server_line(head: &str) -> &str {
    head.lines()
        .find(|l| l.to_ascii_lowercase().starts_with("server:"))
        .unwrap_or("(no server header)")
}

fn run(args: &Args) -> Result<()> {
    println!(
        "{}: annotate a Service with projectcalico.org/l7-logging=true and its new \
         connections go through the node's\nEnvoy, which logs every request; existing \
         connections are left alone.",
        bold("L7 redirector demo")
    );

    step(1, "Building a lab on this machine")?;
    // Envoy's upstream connections are kept out of steering by the SO_MARK its bootstrap sets,
    // exactly as in deploy/.
    let mut lab = Lab::with(LabOptions {
        exclude_proxy_cgroup: false,
        ..LabOptions::for_daemon()
    })?;
    let (backend2_ns, backend2_ip) = lab.add_backend_pod()?;
    let backend2 = HttpBackend::start(backend2_ns, &[SocketAddr::new(backend2_ip, POD_PORT)])?;
    let backends = HttpBackend::start(&lab.backend_ns, &[sa(BACKEND4, POD_PORT)])?;
    let pod_ips: [IpAddr; 2] = [BACKEND4.parse()?, backend2_ip];
    lab.emulate_balanced_cluster_ip(cluster(), &pod_ips, POD_PORT)?;
    say(&format!(
        "network namespaces: a client pod ({CLIENT4}), the node ({NODE4}), two backend pods \
         ({BACKEND4}, {backend2_ip})\n\
         Service shop/web: ClusterIP {CLUSTER_IP}:80 -> pods :{POD_PORT}, by an nftables DNAT on \
         the node, as kube-proxy does\n\
         the eBPF programs attach to the lab's own cgroup, {}",
        lab.cgroup_root().display()
    ));

    step(2, "Starting Envoy and the redirector daemon on the node")?;
    let envoy = Envoy::start(&lab.node_ns, &lab.proxy_cgroup)?;
    let second_pod = backend2_ip.to_string();
    let manifests = |annotation| {
        web_service(annotation).yaml_with_endpoints(&[&second_pod]) + &pods(&second_pod)
    };
    let file = ServicesFile::new(&manifests(None))?;
    let daemon_args = [
        "--services-file",
        file.arg(),
        "--exclude-mark",
        UPSTREAM_MARK,
    ];
    let daemon = Daemon::start(&args.redirector.to_string_lossy(), &lab, &daemon_args)?;
    let world = World {
        daemon,
        envoy,
        file,
        _backends: backends,
        _backend2: backend2,
        lab,
    };
    eventually(
        "the proxy to be marked ready",
        Duration::from_secs(15),
        || {
            check_interrupted()?;
            Ok(world
                .lab
                .pinned_readiness()
                .map(|r| r.0)
                .unwrap_or(false)
                .then_some(()))
        },
    )
    .with_context(|| world.daemon.log())?;
    say(&format!(
        "Envoy listens on {NODE4}:{PROXY_PORT} (deploy/envoy.yaml), access log {}\n\
         redirector run --services-file {} --proxy {NODE4}:{PROXY_PORT} --exclude-mark {UPSTREAM_MARK} ...\n\
         (in a cluster the daemon watches the API instead of a file)",
        world.envoy.access_log.display(),
        world.file.arg()
    ));

    let collector = Collector::start(&args.redirector, &world)?;

    step(
        3,
        "Before annotation: curl --head http://10.96.0.10/ from the client pod",
    )?;
    let head = world.curl_head()?;
    show("curl says:", &head);
    say(&format!(
        "{} -- no Envoy: the Service is not selected.",
        server_line(&head)
    ));
    let mut early = world.connect()?;
    let r = early.request("GET", "/early")?;
    say(&format!(
        "Opened a keep-alive connection now, before annotating: {}",
        verdict(&r)
    ));

    step(
        4,
        "kubectl annotate svc web -n shop projectcalico.org/l7-logging=true",
    )?;
    world.file.write(&manifests(Some("true")))?;
    let took = world.wait_selected(true)?;
    say(&format!(
        "(here: the annotation written into the services file the daemon follows)\n\
         The daemon put the Service's addresses in the kernel map within {took:.0?}:"
    ));
    show("redirector status:", &world.status(&args.redirector)?);

    step(5, "After annotation: curl --head http://10.96.0.10/ again")?;
    let head = world.curl_head()?;
    show("curl says:", &head);
    say(&format!(
        "{} -- the new connection went through Envoy, as the user guide promises.",
        server_line(&head)
    ));
    for path in ["/cart", "/cart", "/checkout"] {
        let r = world.connect()?.request("GET", path)?;
        say(&format!("GET {path}: {} ({})", r.status, verdict(&r)));
    }

    step(6, "The connection opened before annotation is left alone")?;
    let r = early.request("GET", "/early-again")?;
    say(&format!("GET /early-again on it: {}", verdict(&r)));
    say("It was connected before the Service was selected, so it is neither proxied nor cut.");

    step(7, "Envoy's access log: one JSON line per request")?;
    let lines = eventually("Envoy's access log", Duration::from_secs(10), || {
        check_interrupted()?;
        let lines = world.envoy.access_log()?;
        Ok((lines.len() >= 4).then_some(lines))
    })?;
    for l in &lines {
        say(&format!(
            "{} {} -> {} from {} to {} (original destination), {} ms",
            l["method"].as_str().unwrap_or("-"),
            l["path"].as_str().unwrap_or("-"),
            l["response_code"],
            l["downstream_remote_address"].as_str().unwrap_or("-"),
            l["downstream_local_address"].as_str().unwrap_or("-"),
            l["duration"]
        ));
    }
    if let Some(first) = lines.first() {
        show("a full line:", &serde_json::to_string_pretty(first)?);
    }

    step(
        8,
        "L7 records: `redirector collect` aggregates the access log every interval",
    )?;
    let records = eventually("the collector's records", Duration::from_secs(10), || {
        check_interrupted()?;
        let records = collector.records();
        let requests: u64 = records.iter().filter_map(|r| r["count"].as_u64()).sum();
        Ok((requests >= 4).then_some(records))
    })?;
    say(
        "One record per (source, destination, method, path, code, user agent, protocol, host) and\n\
         interval, with the field names of the reference product (index tigera_secure_ee_l7*):",
    );
    for r in &records {
        say(&format!(
            "{} x {} {} -> {}  from {}/{} to Service {}/{}:{}  mean {} ns",
            r["count"],
            r["method"].as_str().unwrap_or("-"),
            r["url"].as_str().unwrap_or("-"),
            r["response_code"].as_str().unwrap_or("-"),
            r["src_namespace"].as_str().unwrap_or("-"),
            r["src_name_aggr"].as_str().unwrap_or("-"),
            r["dest_service_namespace"].as_str().unwrap_or("-"),
            r["dest_service_name"].as_str().unwrap_or("-"),
            r["dest_service_port"],
            r["duration_mean"],
        ));
    }
    if let Some(first) = records.first() {
        show("a full record:", &serde_json::to_string(first)?);
    }

    step(
        9,
        "kubectl annotate svc web -n shop projectcalico.org/l7-logging-  (deselect)",
    )?;
    let mut selected_conn = world.connect()?;
    let r = selected_conn.request("GET", "/while-selected")?;
    say(&format!(
        "Opened a keep-alive connection while selected: {}",
        verdict(&r)
    ));
    world.file.write(&manifests(None))?;
    let took = world.wait_selected(false)?;
    say(&format!(
        "The daemon removed the Service from the map within {took:.0?}."
    ));
    let head = world.curl_head()?;
    say(&format!(
        "curl --head: {} -- new connections go direct again.",
        server_line(&head)
    ));
    let r = selected_conn.request("GET", "/after-deselect")?;
    say(&format!(
        "The connection opened while selected: {} -- it stays proxied until it closes.",
        verdict(&r)
    ));

    check_interrupted()?;
    println!(
        "\nCleaning up: stopping the daemon and Envoy, detaching the programs, removing the lab."
    );
    drop(collector);
    drop(world);
    Ok(())
}
