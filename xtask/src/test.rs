//! `cargo xtask test`: the one command CI runs, and what a developer runs before pushing.
//!
//! The root-free tests run first (they need nothing but cargo), then the container image is
//! built (`cargo xtask image`) so that the privileged tests, which run next, one at a time,
//! check the very archive a cluster would get (`image::`); they need root, the kernel object
//! and what `cargo xtask setup` installs. Last, the kernel matrix runs the datapath tests again
//! in VMs with Debian's 5.10, 6.1 and 6.12 kernels (`cargo xtask vm-test`): defects that only
//! older kernels have stay visible.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::{build_ebpf, image, setup, util, vm};

/// `cargo` arguments that build (and run) the privileged test binary. The kernel matrix builds
/// it with the same ones, so it tests the very binary of the host step, compiled once.
pub const PRIVILEGED_TESTS: [&str; 6] = [
    "test",
    "--workspace",
    "--features",
    "redirector-tests/privileged",
    "--test",
    "privileged",
];

/// A cargo command for a test step, with the Envoy the end-to-end tests should run.
fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(util::cargo());
    cmd.args(args)
        .env("REDIRECTOR_ENVOY", setup::envoy_bin())
        .current_dir(util::workspace_root());
    cmd
}

fn require_root() -> Result<()> {
    if !util::is_root() {
        bail!(
            "the privileged tests load eBPF programs, create network namespaces and mount \
             bpffs, so they need root: run `sudo cargo xtask test` (the root-free tests alone: \
             `cargo test`)"
        );
    }
    Ok(())
}

fn setup_if_needed() -> Result<()> {
    let missing = setup::missing();
    if missing.is_empty() {
        println!("everything setup installs is present");
        return Ok(());
    }
    println!("missing: {}", missing.join(", "));
    setup::run()
}

/// `cargo xtask test`: runs the steps in order, stops at the first failure and names it.
pub fn run() -> Result<()> {
    type Step = (&'static str, fn() -> Result<()>);
    let steps: [Step; 8] = [
        ("setup", setup_if_needed),
        // Debug, because the daemon's build script embeds the object of its own profile and
        // the steps below build the daemon in debug.
        ("build eBPF object", || {
            build_ebpf::build_ebpf(false).map(|_| ())
        }),
        ("cargo fmt", || {
            util::run(&mut cargo(&["fmt", "--all", "--", "--check"]))?;
            // The kernel crate is not a workspace member, so `--all` does not reach it.
            util::run(&mut cargo(&[
                "fmt",
                "--manifest-path",
                "redirector-ebpf/Cargo.toml",
                "--",
                "--check",
            ]))
        }),
        ("cargo clippy", || {
            util::run(&mut cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ]))
        }),
        // Everything `cargo test` runs on any machine: unit tests and root-free integration
        // tests, in parallel.
        ("root-free tests", || {
            util::run(&mut cargo(&["test", "--workspace"]))
        }),
        // The release kernel object and binary, and the OCI archive built from them; the
        // privileged `image::` tests below unpack it and run its binaries. About two minutes,
        // most of it the release build.
        ("container image", || {
            require_root()?;
            image::run()
        }),
        // One at a time: these tests share the host's bpffs, cgroup tree and ports. Built with
        // the whole workspace selected, so dependencies keep the features of the step above
        // and nothing is compiled twice.
        ("privileged tests", || {
            require_root()?;
            util::run(&mut cargo(
                &[&PRIVILEGED_TESTS[..], &["--", "--test-threads=1"]].concat(),
            ))
        }),
        // The host kernel's column is the step above.
        ("kernel matrix", || {
            require_root()?;
            vm::run(&vm::Options {
                kernel: "all".into(),
                jobs: 1,
                filter: Vec::new(),
                host: false,
            })
        }),
    ];

    let total = Instant::now();
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let mut failure = None;
    for (index, (name, step)) in steps.iter().enumerate() {
        println!();
        println!("==== [{}/{}] {name} ====", index + 1, steps.len());
        let started = Instant::now();
        let result = step();
        let elapsed = started.elapsed();
        println!("==== {name}: {:.1}s ====", elapsed.as_secs_f64());
        timings.push((name, elapsed));
        // Later steps depend on earlier ones (the build needs setup, clippy needs the eBPF
        // object), so stop at the first failure.
        if let Err(err) = result {
            failure = Some(err.context(format!("step `{name}` failed")));
            break;
        }
    }

    // The summary is printed on failure too: the timings show where a slow CI run went.
    println!();
    for (name, elapsed) in &timings {
        println!("{:>8.1}s  {name}", elapsed.as_secs_f64());
    }
    let total = total.elapsed().as_secs_f64();
    if let Some(err) = failure {
        println!("{total:>8.1}s  total (failed)");
        return Err(err);
    }
    println!("{total:>8.1}s  total: all steps passed");
    Ok(())
}
