//! `cargo xtask chaos`: builds the daemon, the load generator and `l7r-chaos`, and runs the
//! reliability report: a steady load through the lab with the real Envoy while one fault at a
//! time is injected (`docs/reliability.md` holds a run and says how to read it).

use std::process::Command;

use anyhow::{Result, bail};

use crate::{build_ebpf, setup, util};

/// `cargo xtask chaos [-- l7r-chaos flags]`.
pub fn run(args: &[String]) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the reliability report creates network namespaces and cgroups and loads eBPF \
             programs, so it needs root: run `sudo cargo xtask chaos`"
        );
    }
    // Debug, like the privileged tests: the report measures failed requests, not speed.
    build_ebpf::build_ebpf(false)?;
    let root = util::workspace_root();
    util::run(
        Command::new(util::cargo())
            .args([
                "build",
                "-p",
                "redirector",
                "--bin",
                "redirector",
                "-p",
                "redirector-tests",
                "--bin",
                "l7r-load",
                "-p",
                "l7r-bench",
                "--bin",
                "l7r-chaos",
            ])
            .current_dir(&root),
    )?;
    let debug = util::target_dir().join("debug");
    let mut chaos = Command::new(debug.join("l7r-chaos"));
    chaos
        .arg("--redirector")
        .arg(debug.join("redirector"))
        .arg("--load")
        .arg(debug.join("l7r-load"))
        .args(args)
        .current_dir(&root);
    // The Envoy `cargo xtask setup` installs, unless the caller chose another.
    if std::env::var_os("REDIRECTOR_ENVOY").is_none() {
        chaos.env("REDIRECTOR_ENVOY", setup::envoy_bin());
    }
    util::run(&mut chaos)
}
