//! `cargo xtask build-ebpf`: builds the kernel programs in `redirector-ebpf/` for
//! `bpfel-unknown-none`, with whichever compiler route the machine offers.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

/// The BPF target the kernel programs are built for (little-endian, as on x86-64 and arm64).
pub const TARGET: &str = "bpfel-unknown-none";

/// BTF in the object is what lets aya load BTF maps and `bpftool` print them field by field.
const RUSTFLAGS: &str = "-C debuginfo=2 -C link-arg=--btf";

/// Debian's `rustc-web` compiler, which ships a prebuilt `core` for the BPF targets.
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// Where `libstd-rust-web-dev-bpf` puts that prebuilt `core`.
const DEBIAN_BPF_RUSTLIB: &str = "/usr/lib/rustlib/bpfel-unknown-none";

/// Variables the outer cargo or rustup may have set that would change which compiler, flags or
/// output directory the child build uses; they are removed and what we need is set afresh.
const INHERITED_VARS: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTC",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTUP_TOOLCHAIN",
    "RUSTC_BOOTSTRAP",
];

/// How the eBPF crate gets a compiler with a `core` for the BPF target.
enum Route {
    /// Debian's `rustc-web` plus its prebuilt BPF `core`, driven by the running cargo.
    Debian,
    /// rustup's nightly building `core` from its `rust-src`.
    RustupNightly,
}

/// The nightly sysroot's library sources, if rustup has a nightly with `rust-src`.
fn nightly_rust_src() -> Result<PathBuf> {
    let sysroot =
        util::probe(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
            .context("no rustup nightly toolchain")?;
    let src = Path::new(sysroot.trim())
        .join("lib")
        .join("rustlib")
        .join("src")
        .join("rust")
        .join("library");
    if !src.is_dir() {
        bail!(
            "rustup nightly has no rust-src ({} is missing)",
            src.display()
        );
    }
    Ok(src)
}

/// Picks the route, preferring Debian's because it needs no network and no nightly.
fn choose_route() -> Result<Route> {
    let debian_missing: Vec<&str> = [DEBIAN_RUSTC, DEBIAN_BPF_RUSTLIB]
        .into_iter()
        .filter(|path| !Path::new(path).exists())
        .collect();
    if debian_missing.is_empty() {
        println!(
            "build-ebpf: route: Debian rustc-web ({DEBIAN_RUSTC} with {DEBIAN_BPF_RUSTLIB}, \
             RUSTC_BOOTSTRAP=1)"
        );
        return Ok(Route::Debian);
    }
    match nightly_rust_src() {
        Ok(src) => {
            println!(
                "build-ebpf: route: rustup nightly with -Z build-std=core ({})",
                src.display()
            );
            Ok(Route::RustupNightly)
        }
        Err(err) => bail!(
            "no compiler route for {TARGET}: Debian route needs {} (missing); rustup route: \
             {err:#}. Run `sudo cargo xtask setup` to install Debian's rustc-web and \
             libstd-rust-web-dev-bpf",
            debian_missing.join(" and ")
        ),
    }
}

/// Builds `redirector-ebpf` for [`TARGET`] and returns the path of the object.
///
/// `release` picks the cargo profile; the object lands in
/// `target/ebpf/bpfel-unknown-none/{debug|release}/redirector-ebpf`.
pub fn build_ebpf(release: bool) -> Result<PathBuf> {
    let root = util::workspace_root();
    let manifest = root.join("redirector-ebpf").join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "the eBPF crate's manifest {} is missing",
            manifest.display()
        );
    }
    // bpf-linker is the linker rustc uses for the BPF target; without it the build fails late
    // with a confusing linker error, so say it plainly up front.
    if util::which("bpf-linker").is_none() {
        bail!(
            "bpf-linker is not on PATH; run `sudo cargo xtask setup` to install it \
             (cargo installs it into $HOME/.cargo/bin, which must be on PATH)"
        );
    }

    let route = choose_route()?;
    let target_dir = root.join("target").join("ebpf");
    let mut cmd = match route {
        Route::Debian => {
            let mut cmd = Command::new(util::cargo());
            cmd.arg("build");
            cmd
        }
        Route::RustupNightly => {
            let mut cmd = Command::new("rustup");
            cmd.args(["run", "nightly", "cargo", "build", "-Z", "build-std=core"]);
            cmd
        }
    };
    for var in INHERITED_VARS {
        cmd.env_remove(var);
    }
    if let Route::Debian = route {
        // The stable Debian compiler must accept aya-ebpf's `#![feature]`s on the BPF target.
        cmd.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
    }
    cmd.env("RUSTFLAGS", RUSTFLAGS)
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        // Run from the workspace root so only the workspace's cargo config applies, not some
        // config or toolchain file that might sit next to the eBPF crate.
        .current_dir(&root);
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd).context("building the eBPF object")?;

    let profile = if release { "release" } else { "debug" };
    let object = target_dir
        .join(TARGET)
        .join(profile)
        .join("redirector-ebpf");
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} does not exist",
            object.display()
        );
    }
    println!("build-ebpf: object: {}", object.display());
    Ok(object)
}
