//! Embeds the kernel object that `cargo xtask build-ebpf` built. The eBPF crate needs its own
//! compiler and target (see TOOLCHAIN.md), so it is built by xtask, not from here; a missing
//! object is a clear error that says how to build it.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=REDIRECTOR_EBPF_OBJECT");
    let object = match env::var_os("REDIRECTOR_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest_dir =
                PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
            // Same profile as this build: `cargo build` embeds the debug object, `--release` the
            // release one (both are optimised; see redirector-ebpf/Cargo.toml).
            let profile = if env::var("PROFILE").as_deref() == Ok("release") {
                "release"
            } else {
                "debug"
            };
            manifest_dir
                .join("../target/ebpf/bpfel-unknown-none")
                .join(profile)
                .join("redirector-ebpf")
        }
    };
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.is_file() {
        let flag = if env::var("PROFILE").as_deref() == Ok("release") {
            " --release"
        } else {
            ""
        };
        panic!(
            "\n\nThe kernel object {} has not been built.\n\
             Build it first with:  cargo xtask build-ebpf{flag}\n\
             (first time on this machine: sudo cargo xtask setup)\n\n",
            object.display()
        );
    }
    println!(
        "cargo:rustc-env=REDIRECTOR_EBPF_OBJECT={}",
        object.display()
    );
}
