//! `cargo xtask demo`: builds everything, then runs the demo program
//! (`tests/lab/src/bin/l7r-demo.rs`), which builds a small lab on this machine and walks through the
//! user guide's workflow with the real Envoy and the real daemon, then removes the lab.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{build_ebpf, setup, util};

/// Runs the demo.
pub fn run() -> Result<()> {
    if !util::is_root() {
        bail!(
            "the demo loads eBPF programs and creates network namespaces, so it needs root: \
             run `sudo cargo xtask demo`"
        );
    }
    if !setup::missing().is_empty() {
        setup::run()?;
    }
    build_ebpf::build_ebpf(false)?;
    let root = util::workspace_root();
    util::run(
        Command::new(util::cargo())
            .args([
                "build",
                "--quiet",
                "-p",
                "redirector",
                "-p",
                "l7r-lab",
                "--bins",
            ])
            .current_dir(&root),
    )?;
    let demo = root.join("target/debug/l7r-demo");
    let redirector = root.join("target/debug/redirector");
    // Ctrl-C goes to the whole foreground group: the demo cleans up on it, and this process
    // must outlive the demo rather than die first. SIG_IGN is inherited across exec, so the
    // demo installs its own handler.
    // SAFETY: setting a signal disposition to "ignore" has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = Command::new(&demo)
        .arg("--redirector")
        .arg(&redirector)
        .arg("--envoy")
        .arg(setup::envoy_bin())
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}
