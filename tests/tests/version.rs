//! `redirector --version` names the build exactly: the crate's version, the commit the tree was
//! at, and the SHA-256 of the kernel object it embeds (what `sha256sum` prints for the file
//! `cargo xtask build-ebpf` wrote), so `kubectl logs` and `/metrics` tell which datapath a node
//! runs. Root-free: it only runs the binary.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, ensure};

const REDIRECTOR: &str = env!("CARGO_BIN_EXE_redirector-under-test");

/// The workspace's root.
fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn field<'a>(text: &'a str, name: &str) -> Result<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .with_context(|| format!("no `{name}` line in:\n{text}"))
}

#[test]
fn version_names_the_release_the_commit_and_the_kernel_object() -> Result<()> {
    let out = Command::new(REDIRECTOR).arg("--version").output()?;
    ensure!(out.status.success(), "--version failed: {out:?}");
    let text = String::from_utf8(out.stdout)?;
    assert!(
        text.starts_with(&format!("redirector {}\n", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );

    let revision = field(&text, "source revision: ")?;
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(head) => assert_eq!(revision, head, "the commit the binary was built at"),
        None => assert_eq!(revision, "unknown", "no git here: said so"),
    }

    // The debug object, which a test build embeds when it exists.
    let object = root().join("target/ebpf/bpfel-unknown-none/debug/redirector-ebpf");
    let said = field(&text, "eBPF object: ")?;
    if object.is_file() {
        let sum = Command::new("sha256sum").arg(&object).output()?;
        let sum = String::from_utf8(sum.stdout)?;
        let hash = sum
            .split_whitespace()
            .next()
            .context("sha256sum printed nothing")?;
        assert_eq!(
            said,
            format!("sha256 {hash}"),
            "the hash of {}",
            object.display()
        );
    } else {
        assert!(said.starts_with("none embedded"), "{said}");
    }

    // `-V` stays one line, for scripts.
    let short = Command::new(REDIRECTOR).arg("-V").output()?;
    assert_eq!(
        String::from_utf8(short.stdout)?,
        format!("redirector {}\n", env!("CARGO_PKG_VERSION"))
    );
    Ok(())
}
