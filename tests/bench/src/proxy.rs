//! The small Rust forwarding proxy the selected-traffic benchmark steers connections to: it
//! accepts, asks `SO_ORIGINAL_DST` (with [`l7r_lab::proxy::original_dst`], exactly as the
//! fixtures' `TestProxy` and Envoy's `original_dst` filter do), connects to that destination
//! with `SO_MARK` [`UPSTREAM_MARK`] and forwards both ways.
//!
//! It runs as its own process (`l7r-bench proxy`, started in the lab's proxy cgroup and a lab
//! namespace), as Envoy does, rather than as the fixtures' in-process `TestProxy`: `TestProxy`
//! shares the test process, so for each upstream connect it moves the whole process into the
//! proxy cgroup and back. Two cgroup moves per connection (tens of microseconds each, and
//! serialised) would dominate what is measured, and would deadlock with a client loop that
//! holds the process in the client cgroup for a whole batch.

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Socket, Type};

use l7r_lab::{netns::Netns, process::spawn_in};

use crate::client::IO_TIMEOUT;

/// The `SO_MARK` on the proxy's upstream sockets (the same bit `deploy/envoy.yaml` sets), so
/// rules and programs in the proxy's namespace can leave its own connections alone.
pub const UPSTREAM_MARK: u32 = 0x1000;

/// `l7r-bench proxy`: listens on `listen`, prints `ready`, and forwards until its stdin
/// closes; then prints `accepted <count>` and exits. Closing stdin is how the parent stops
/// it, so it also stops when the parent dies.
pub fn serve(listen: SocketAddr, mark: u32) -> Result<()> {
    // Envoy's backlog: an overflowing accept queue drops SYNs, which the kernel programs take
    // for a proxy that stopped answering (and then send connections direct).
    let listener = l7r_lab::proxy::listen(listen)
        .with_context(|| format!("proxy cannot listen on {listen}"))?;
    let accepted = Arc::new(AtomicU64::new(0));
    {
        let accepted = Arc::clone(&accepted);
        thread::spawn(move || {
            let _ = io::copy(&mut io::stdin(), &mut io::sink());
            println!("accepted {}", accepted.load(Ordering::SeqCst));
            let _ = io::stdout().flush();
            std::process::exit(0);
        });
    }
    println!("ready");
    io::stdout().flush()?;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                accepted.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || handle(stream, listen.port(), mark));
            }
            // Out of file descriptors or similar: say so and keep serving.
            Err(e) => eprintln!("l7r-bench proxy: accept: {e}"),
        }
    }
}

fn handle(client: TcpStream, own_port: u16, mark: u32) {
    let Ok(dst) = l7r_lab::proxy::original_dst(&client) else {
        return;
    };
    // Not redirected (conntrack answers the local address itself): forwarding would connect
    // the proxy to itself.
    if dst.port() == own_port {
        return;
    }
    let Ok(server) = connect_upstream(dst, mark) else {
        return;
    };
    // Like Envoy: small requests and answers are not held back by Nagle.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    pump(client, server);
}

fn connect_upstream(dst: SocketAddr, mark: u32) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
    socket.set_mark(mark)?;
    // A blocking connect honours SO_SNDTIMEO on Linux.
    socket.set_write_timeout(Some(IO_TIMEOUT))?;
    socket.connect(&dst.into())?;
    socket.set_write_timeout(None)?;
    Ok(socket.into())
}

/// Copies both ways until both sides are done; each direction's end is passed on as a
/// half-close, so request/response protocols and streams both finish cleanly.
fn pump(client: TcpStream, server: TcpStream) {
    let (Ok(c_read), Ok(s_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || copy(c_read, s_write));
    copy(server, client);
    let _ = up.join();
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    // 64 KiB: large enough that the proxy's syscalls do not cap a long stream.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A running `l7r-bench proxy`; killed by its PID on drop unless [`ProxyProcess::finish`]ed.
pub struct ProxyProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl ProxyProcess {
    /// Starts `exe proxy` (the `l7r-bench` binary) in `ns` and `cgroup`, listening on
    /// `listen`, and waits until it listens.
    pub fn start(exe: &Path, ns: &Netns, cgroup: &Path, listen: SocketAddr) -> Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.args([
            "proxy",
            "--listen",
            &listen.to_string(),
            "--mark",
            &UPSTREAM_MARK.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = spawn_in(cmd, ns, Some(cgroup))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let mut proxy = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout.context("no stdout pipe")?),
        };
        let line = proxy.line()?;
        if line != "ready" {
            bail!("the proxy did not start: {line:?}");
        }
        Ok(proxy)
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(line.trim().to_string())
    }

    /// Stops the proxy and returns how many connections it accepted.
    pub fn finish(mut self) -> Result<u64> {
        drop(self.stdin.take());
        let line = self.line()?;
        let count = line
            .strip_prefix("accepted ")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected last words from the proxy: {line:?}"))?;
        self.child.wait()?;
        Ok(count)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Child::kill signals exactly the child we started, by its PID.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
