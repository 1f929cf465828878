//! `cargo xtask bench`: builds everything in release mode and runs `l7r-bench`, which sets up
//! its labs, measures the redirector against iptables and nftables, prints a Markdown report
//! and writes the raw samples as JSON under `target/bench/` (see `docs/benchmarks.md`).

use std::{process::Command, time::Instant};

use anyhow::{Result, bail};

use crate::{build_ebpf, setup, util};

/// Whether `args` already choose the output directory.
fn has_out(args: &[String]) -> bool {
    args.iter().any(|a| a == "--out" || a.starts_with("--out="))
}

/// `cargo xtask bench [-- l7r-bench flags]`.
pub fn run(args: &[String]) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the benchmarks create network namespaces and cgroups and load eBPF programs, so \
             they need root: run `sudo cargo xtask bench`"
        );
    }
    let started = Instant::now();
    // Release: the daemon's build script embeds the eBPF object of its own profile, and a
    // benchmark of debug builds would measure the wrong thing.
    build_ebpf::build_ebpf(true)?;
    let root = util::workspace_root();
    // Only the two binaries the run uses; `l7r-bench` finds the daemon beside itself.
    util::run(
        Command::new(util::cargo())
            .args([
                "build",
                "--release",
                "-p",
                "l7r-bench",
                "--bin",
                "l7r-bench",
                "-p",
                "redirector",
                "--bin",
                "redirector",
            ])
            .current_dir(&root),
    )?;
    let built = started.elapsed();

    let target = util::target_dir();
    let mut bench = Command::new(target.join("release").join("l7r-bench"));
    bench.args(args).current_dir(&root);
    if !has_out(args) {
        bench.arg("--out").arg(target.join("bench"));
    }
    // The Envoy `cargo xtask setup` installs, unless the caller chose another.
    if std::env::var_os("REDIRECTOR_ENVOY").is_none() {
        bench.env("REDIRECTOR_ENVOY", setup::envoy_bin());
    }
    util::run(&mut bench)?;
    println!(
        "bench: built in {:.0} s, measured in {:.0} s",
        built.as_secs_f64(),
        (started.elapsed() - built).as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_out_is_kept() {
        assert!(has_out(&[
            "--quick".into(),
            "--out".into(),
            "/tmp/x".into()
        ]));
        assert!(has_out(&["--out=/tmp/x".into()]));
        assert!(!has_out(&["--quick".into(), "--outdated".into()]));
    }
}
