//! Small system helpers.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context as _, Result, bail};

/// Fails the test, loudly, unless it runs as root: privileged tests never pass silently.
pub fn require_root() {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test loads eBPF programs and creates network namespaces and cgroups, so it needs \
         root; run it with `sudo cargo xtask test` (euid is {euid})"
    );
}

/// Whether the tests run in a `cargo xtask vm-test` guest (its `guest.sh` sets `L7R_IN_VM`):
/// the CPU is emulated there, so a test that sizes its work does less, and says so.
pub fn in_vm() -> bool {
    std::env::var_os("L7R_IN_VM").is_some()
}

/// A short name unique to this process and call, for namespaces, cgroups, pins and files.
/// The separator matters: without it process 31's call 0 and process 3's call 10 would both
/// be "310", and two test processes would share (and tear down) each other's pins.
pub fn unique_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, failing with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program} {}", args.join(" ")))?;
    checked(program, args, out)
}

/// Runs a command with `input` on its stdin, failing with its output when it fails. The input
/// is written from another thread so that a command which answers before it has read
/// everything (an early error) cannot deadlock us on a full pipe.
pub fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program} {}", args.join(" ")))?;
    let mut stdin = child.stdin.take().context("no stdin pipe")?;
    let input = input.to_string();
    let writer = thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output()?;
    // A write error (EPIPE) only matters if the command failed, which is reported below.
    let _ = writer.join();
    checked(program, args, out)
}

/// The command's stdout, or an error with all it printed when it failed.
fn checked(program: &str, args: &[&str], out: std::process::Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip` with arguments.
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// A path in the temporary directory, unique to this call, removed on drop (if it was made).
#[derive(Debug)]
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    /// `<tmp>/l7r-<what>-<unique>`; nothing is created yet.
    pub fn new(what: &str) -> Self {
        Self(std::env::temp_dir().join(format!("l7r-{what}-{}", unique_id())))
    }

    /// The path as a command-line argument (temporary paths here are UTF-8).
    pub fn arg(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Best effort: a file the test never created is not an error.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The JSON lines in `path`, such as the collector's records (none if it does not exist yet).
pub fn json_lines(path: &std::path::Path) -> Result<Vec<serde_json::Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not a JSON line: {l:?}")))
        .collect()
}
