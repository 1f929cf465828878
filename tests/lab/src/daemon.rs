//! A `redirector run` process under test, in the lab's node namespace (where it can reach the
//! proxy), stopped by its PID on drop.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{lab::Lab, netns::Netns, process::LoggedChild};

/// A running daemon.
pub struct Daemon {
    process: LoggedChild,
}

impl Daemon {
    /// Starts `exe run <lab's flags> <extra>` in the lab's node namespace.
    pub fn start(exe: &str, lab: &Lab, extra: &[&str]) -> Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.arg("run").args(lab.daemon_args()).args(extra);
        Ok(Self {
            process: LoggedChild::spawn(cmd, &lab.node_ns, None, "daemon")?,
        })
    }

    /// [`Daemon::start`] with the proxies named as the DaemonSet names them
    /// ([`Lab::daemon_args_as_deployed`]).
    pub fn start_as_deployed(exe: &str, lab: &Lab, extra: &[&str]) -> Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.arg("run")
            .args(lab.daemon_args_as_deployed())
            .args(extra);
        Ok(Self {
            process: LoggedChild::spawn(cmd, &lab.node_ns, None, "daemon")?,
        })
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits for the exit (at most 10 s).
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.process.terminate()
    }

    /// [`Daemon::stop`] keeping the handle (a world that starts the next daemon in its place,
    /// as a rollout does).
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        self.process.terminate()
    }

    /// Waits (at most `limit`) for the process to exit on its own, without signalling it.
    pub fn wait_exit(mut self, limit: Duration) -> Result<ExitStatus> {
        self.process.wait_exit(limit)
    }

    /// SIGKILL (an OOM kill, a crash): the daemon gets no chance to clean up.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.process.kill()
    }

    /// [`Daemon::wait_exit`] keeping the handle (a world that starts the next daemon in its
    /// place).
    pub fn wait_exited(&mut self, limit: Duration) -> Result<ExitStatus> {
        self.process.wait_exit(limit)
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        self.process.signal_term();
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
