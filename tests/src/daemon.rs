//! A `redirector run` process under test, in the lab's node namespace (where it can reach the
//! proxy), stopped by its PID on drop.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{lab::Lab, netns::Netns, process::spawn_in};

/// A running daemon.
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `exe run <lab's flags> <extra>` in the lab's node namespace.
    pub fn start(exe: &str, lab: &Lab, extra: &[&str]) -> Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.arg("run").args(lab.daemon_args()).args(extra);
        Self::spawn_in(&lab.node_ns, cmd)
    }

    fn spawn_in(ns: &Netns, mut cmd: Command) -> Result<Self> {
        cmd.env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn_in(cmd, ns, None).context("cannot start the daemon")?;
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = Arc::clone(&log);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Ok(Self { child, log })
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits for the exit (at most 10 s).
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.terminate()
    }

    /// Waits (at most `limit`) for the process to exit on its own, without signalling it.
    pub fn wait_exit(mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "the daemon did not exit within {limit:?}. Log:\n{}",
            self.log()
        )
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        // SAFETY: signalling the child we started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // SAFETY: signalling the child we started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        bail!(
            "the daemon ignored SIGTERM for 10 s; killed. Log:\n{}",
            self.log()
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `limit` naming `what`.
pub fn eventually<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` over plain HTTP/1.1 (one request, then close) to `addr` from inside `ns`: `(status, body)`.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let path = path.to_string();
    ns.run(move || -> Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        // HTTP/1.1: Envoy (its admin included) refuses HTTP/1.0 by default.
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status")?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        Ok((status, body))
    })?
}
