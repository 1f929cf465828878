//! Starting a program inside a lab network namespace and (optionally) a lab cgroup, the way a
//! pod's process would live there.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::Netns;

/// Spawns `cmd` in `ns`, and in `cgroup` when given. Both are entered between fork and exec
/// with async-signal-safe calls only: `setns(2)` on a namespace fd opened beforehand, and
/// writing "0" (meaning "this process") to a `cgroup.procs` opened beforehand.
pub fn spawn_in(mut cmd: Command, ns: &Netns, cgroup: Option<&Path>) -> Result<Child> {
    let netns = File::open(format!("/run/netns/{}", ns.name()))
        .with_context(|| format!("cannot open namespace {}", ns.name()))?;
    let procs = cgroup
        .map(|c| {
            OpenOptions::new()
                .write(true)
                .open(c.join("cgroup.procs"))
                .with_context(|| format!("cannot open {}/cgroup.procs", c.display()))
        })
        .transpose()?;
    let ns_fd = netns.as_raw_fd();
    let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: only setns(2) and write(2) run in the child, both async-signal-safe, on fds that
    // stay open until after the spawn below.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = procs_fd
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    drop((netns, procs));
    Ok(child)
}

/// A program under test, started in a lab namespace with its stderr collected, and stopped by
/// its PID (SIGTERM, then SIGKILL after 10 s) on drop.
pub struct LoggedChild {
    child: Child,
    log: Arc<Mutex<String>>,
    what: &'static str,
}

impl LoggedChild {
    /// Starts `cmd` in `ns` (and `cgroup`), collecting its stderr; `what` names it in errors.
    pub fn spawn(
        cmd: Command,
        ns: &Netns,
        cgroup: Option<&Path>,
        what: &'static str,
    ) -> Result<Self> {
        Self::start(cmd, what, |cmd| spawn_in(cmd, ns, cgroup))
    }

    /// Starts `cmd` here, in this process's namespaces (programs that need no lab).
    pub fn spawn_here(cmd: Command, what: &'static str) -> Result<Self> {
        Self::start(cmd, what, |mut cmd| Ok(cmd.spawn()?))
    }

    fn start(
        mut cmd: Command,
        what: &'static str,
        spawn: impl FnOnce(Command) -> Result<Child>,
    ) -> Result<Self> {
        // The caller may ask for more detail; `info` otherwise.
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        cmd.env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn(cmd).with_context(|| format!("cannot start the {what}"))?;
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
        Ok(Self { child, log, what })
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        // SAFETY: signalling the child we started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// SIGKILL, as the OOM killer or a crash would, and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    /// Waits (at most `limit`) for it to exit on its own.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "the {} did not exit within {limit:?}. Log:\n{}",
            self.what,
            self.log()
        )
    }

    /// Waits until it logged `needle`; fails at once if it exited.
    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the {} exited ({status}). Log:\n{}", self.what, self.log());
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {limit:?} waiting for the {} to log {needle:?}. Log:\n{}",
                    self.what,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status (SIGKILL and an error after 10 s).
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.signal_term();
        match self.wait_exit(Duration::from_secs(10)) {
            Ok(status) => Ok(status),
            Err(_) => {
                self.child.kill()?;
                let _ = self.child.wait();
                bail!(
                    "the {} ignored SIGTERM for 10 s; killed. Log:\n{}",
                    self.what,
                    self.log()
                )
            }
        }
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("warning: {e:#}");
        }
    }
}
