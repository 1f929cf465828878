//! Embeds the kernel object that `cargo xtask build-ebpf` built. The eBPF crate needs its own
//! compiler and target (see docs/toolchain.md), so it is built by xtask, not from here.
//!
//! A missing object does not fail the build: the library, its unit tests and every command but
//! `redirector run` work without it, and `redirector run` says how to build it. Cargo looks at
//! the object's path again on every build, so the object is embedded as soon as it exists.

use std::{env, path::PathBuf, process::Command};

fn main() {
    embed_source_revision();
    println!("cargo::rustc-check-cfg=cfg(embedded_ebpf)");
    println!("cargo:rerun-if-env-changed=REDIRECTOR_EBPF_OBJECT");
    let release = env::var("PROFILE").as_deref() == Ok("release");
    let object = match env::var_os("REDIRECTOR_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let Some(manifest_dir) = env::var_os("CARGO_MANIFEST_DIR") else {
                return;
            };
            // Same profile as this build: `cargo build` embeds the debug object, `--release`
            // the release one (both are optimised; see redirector-ebpf/Cargo.toml).
            PathBuf::from(manifest_dir)
                .join("../target/ebpf/bpfel-unknown-none")
                .join(if release { "release" } else { "debug" })
                .join("redirector-ebpf")
        }
    };
    println!("cargo:rerun-if-changed={}", object.display());
    if object.is_file() {
        println!("cargo:rustc-cfg=embedded_ebpf");
        println!(
            "cargo:rustc-env=REDIRECTOR_EBPF_OBJECT={}",
            object.display()
        );
    } else {
        let flag = if release { " --release" } else { "" };
        println!(
            "cargo:warning=no kernel object at {}: `redirector run` will refuse to start until \
             it is built with `cargo xtask build-ebpf{flag}` (everything else works)",
            object.display()
        );
    }
}

/// `REDIRECTOR_SOURCE_REVISION` for `redirector --version`: the variable of that name when set
/// (a build from a source archive, say), else the commit `git` says the tree is at, else
/// "unknown".
fn embed_source_revision() {
    println!("cargo:rerun-if-env-changed=REDIRECTOR_SOURCE_REVISION");
    let revision = env::var("REDIRECTOR_SOURCE_REVISION").ok().or_else(|| {
        let dir = env::var_os("CARGO_MANIFEST_DIR")?;
        let git = |args: &[&str]| {
            Command::new("git")
                .args(args)
                .current_dir(&dir)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        // A new commit or checkout changes HEAD or the branch it points to (`--git-path` finds
        // both in worktrees too).
        let mut watched = vec!["HEAD".to_string()];
        watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
        for name in watched {
            if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
                println!(
                    "cargo:rerun-if-changed={}",
                    PathBuf::from(&dir).join(path).display()
                );
            }
        }
        git(&["rev-parse", "HEAD"])
    });
    println!(
        "cargo:rustc-env=REDIRECTOR_SOURCE_REVISION={}",
        revision.unwrap_or_else(|| "unknown".into())
    );
}
