//! Real servers and clients of the protocols beyond plain HTTP/1.1 that the node's Envoy must
//! carry: gRPC and WebSocket (Python's `grpcio` and `websockets`, Debian's packages, through
//! `protocols.py`), a CONNECT forward proxy (the same script), and TLS (`openssl s_server`,
//! with a certificate made for the test). Servers run in a lab namespace as a backend pod's
//! process would and are stopped by their PID on drop; clients run in the client pod's
//! namespace and cgroup, so their connections are steered like any pod's.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    lab::Lab,
    netns::Netns,
    process::{LoggedChild, spawn_in},
    sys::{TempFile, unique_id},
};

/// The helper script (see its docstring).
pub const SCRIPT: &str = include_str!("protocols.py");

/// Debian's Python, which has the `python3-grpcio` and `python3-websockets` packages
/// (`cargo xtask setup` installs them); another `python3` on `PATH` may not.
pub const PYTHON: &str = "/usr/bin/python3";

/// How long a server may take to start listening.
const START: Duration = Duration::from_secs(10);

/// The helper script written to a temporary file (removed on drop).
pub struct Script(TempFile);

impl Script {
    /// Writes the script.
    pub fn new() -> Result<Self> {
        check_python(Path::new(PYTHON))?;
        let file = TempFile::new("protocols.py");
        std::fs::write(&file.0, SCRIPT)
            .with_context(|| format!("cannot write {}", file.0.display()))?;
        Ok(Self(file))
    }

    /// Starts `command` of the script (a server) in `ns` and waits until it listens.
    pub fn server(&self, ns: &Netns, args: &[&str], what: &'static str) -> Result<LoggedChild> {
        let mut cmd = Command::new(PYTHON);
        cmd.arg(self.0.arg()).args(args);
        let mut child = LoggedChild::spawn(cmd, ns, None, what)?;
        child.wait_for_log("ready", START)?;
        Ok(child)
    }

    /// Runs `command` of the script (a client) from the lab's client pod; its stdout as JSON.
    pub fn client(&self, lab: &Lab, args: &[&str]) -> Result<serde_json::Value> {
        let mut cmd = Command::new(PYTHON);
        cmd.arg(self.0.arg()).args(args);
        let out = run_in_client(lab, cmd)?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "the client's output is not JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// Runs `cmd` in the lab's client pod (its namespace and cgroup) and waits for it; an exit
/// other than success is an error that shows its stderr.
pub fn run_in_client(lab: &Lab, mut cmd: Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let program = format!("{:?}", cmd.get_program());
    let out = spawn_in(cmd, &lab.client_ns, Some(&lab.client_cgroup))?.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{program} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// A TLS server (`openssl s_server -www`: it answers an HTTP GET with a status page) with a
/// self-signed certificate whose subject names this server alone.
pub struct TlsServer {
    /// The certificate's common name, unique to this server.
    pub common_name: String,
    server: LoggedChild,
    _cert: TempFile,
    _key: TempFile,
}

impl TlsServer {
    /// Makes the certificate and starts the server on `port` in `ns`.
    pub fn start(ns: &Netns, port: u16) -> Result<Self> {
        let common_name = format!("l7r-tls-{}", unique_id());
        let (cert, key) = (TempFile::new("tls-cert.pem"), TempFile::new("tls-key.pem"));
        crate::sys::run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                &format!("/CN={common_name}"),
                "-keyout",
                key.arg(),
                "-out",
                cert.arg(),
            ],
        )?;
        // s_server says ACCEPT on stdout once it listens; sent to stderr, which is collected.
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "exec openssl s_server -www -accept \"$0\" -cert \"$1\" -key \"$2\" 1>&2",
            &port.to_string(),
            cert.arg(),
            key.arg(),
        ]);
        let mut server = LoggedChild::spawn(cmd, ns, None, "TLS server")?;
        server.wait_for_log("ACCEPT", START)?;
        Ok(Self {
            common_name,
            server,
            _cert: cert,
            _key: key,
        })
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// `openssl s_client` from the client pod to `addr` asking for `server_name` (SNI): the
/// handshake's report (the peer certificate's subject among it).
pub fn tls_handshake(lab: &Lab, addr: &str, server_name: &str) -> Result<String> {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        addr,
        "-servername",
        server_name,
        "-brief",
    ]);
    let out = run_in_client(lab, cmd)?;
    // -brief reports on stderr.
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// `curl` from the client pod with `args`; its stdout.
pub fn curl(lab: &Lab, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--max-time", "5"])
        .args(args);
    let out = run_in_client(lab, cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `path` is Debian's Python with the modules the script needs; the error says what
/// to install.
pub fn check_python(path: &Path) -> Result<()> {
    let out = Command::new(path)
        .args(["-c", "import grpc, websockets"])
        .output()
        .with_context(|| format!("cannot run {}", path.display()))?;
    ensure!(
        out.status.success(),
        "{} lacks grpc or websockets (run `cargo xtask setup`: python3-grpcio, \
         python3-websockets): {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
