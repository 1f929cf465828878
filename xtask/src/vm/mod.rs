//! `cargo xtask vm-test`: the privileged tests on the kernels users run, each in a VM booted
//! with Debian's own kernel package, plus the host kernel, as one table kernel × test.
//!
//! - The kernels are pinned in [`kernels`] and fetched by [`apt`] (a private apt configuration
//!   under `target/vm/apt`, unpacked under `target/vm/kernels`; nothing is installed).
//! - A VM is qemu driven by virtme-ng (`vng`, from the venv `cargo xtask setup` makes): the
//!   guest shares the host's root file system read-only over virtio-fs (the virtiofsd setup
//!   builds; 9p, virtme-ng's fallback, makes every `exec` cost a second), so it runs the very
//!   test binary the host built, with the host's `ip`, `nft`, `iptables` and Envoy. `guest.sh` prepares the
//!   kernel (bpffs, modules) and runs each selected test in a process of its own; results come
//!   back through one shared writable directory, `target/vm/runs/<kernel>/`.
//! - KVM is used when `L7R_VM_KVM=1` says it works; otherwise (the default) qemu emulates the
//!   CPU (TCG), which works everywhere but is several times slower. The table says which.
//! - The host column runs the same tests, the same way, without a VM.

mod apt;
mod kernels;
mod report;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use self::{
    apt::{PrivateApt, Unpacked},
    kernels::Kernel,
    report::Column,
};
use crate::{setup, test, util};

/// The tests a matrix run selects when no filter is given: the kernel programs themselves.
pub const DEFAULT_FILTER: &str = "datapath::";

/// Seconds one test may take in a VM before it counts as hung.
const TEST_TIMEOUT_S: u64 = 300;

/// What the guest runs (see the file's own comment).
const GUEST_SCRIPT: &str = include_str!("guest.sh");

/// What `cargo xtask vm-test` was asked.
#[derive(Clone, Debug)]
pub struct Options {
    /// `5.10`, `6.1`, `6.12` or `all`.
    pub kernel: String,
    /// How many VMs to run at once.
    pub jobs: usize,
    /// libtest filter arguments (default: [`DEFAULT_FILTER`]).
    pub filter: Vec<String>,
    /// Also run the tests on the host kernel (a column of its own).
    pub host: bool,
}

/// Runs the matrix and prints the table; fails unless every selected test passed on every
/// kernel.
pub fn run(options: &Options) -> Result<()> {
    let started = Instant::now();
    let kernels = kernels::choose(&options.kernel).map_err(anyhow::Error::msg)?;
    let filter = if options.filter.is_empty() {
        vec![DEFAULT_FILTER.to_string()]
    } else {
        options.filter.clone()
    };
    check_tools()?;
    let target = util::workspace_root().join("target");
    let vm_dir = target.join("vm");
    fs::create_dir_all(&vm_dir)?;

    let binary = build_test_binary()?;
    let guest = vm_dir.join("guest.sh");
    fs::write(&guest, GUEST_SCRIPT)?;
    make_executable(&guest)?;

    // Every kernel's suites, whichever are run now: one index for all runs.
    let apt = PrivateApt::prepare(&vm_dir.join("apt"), &kernels::KERNELS)?;
    let mut unpacked = Vec::new();
    for kernel in &kernels {
        let u = apt
            .kernel(kernel, &vm_dir.join("kernels"))
            .with_context(|| format!("cannot prepare kernel {}", kernel.name))?;
        println!(
            "vm-test: kernel {} is {} ({})",
            kernel.name, u.release, u.package
        );
        unpacked.push((*kernel, u));
    }
    let kvm = std::env::var("L7R_VM_KVM").as_deref() == Ok("1");
    println!(
        "vm-test: {} in {} VM(s) at a time, accelerated by {}; tests: {}",
        binary.display(),
        options.jobs,
        if kvm {
            "KVM"
        } else {
            "TCG (CPU emulation, no KVM)"
        },
        filter.join(" ")
    );

    let mut columns: Vec<Column> = Vec::new();
    for chunk in unpacked.chunks(options.jobs.max(1)) {
        let runs: Vec<_> = chunk
            .iter()
            .map(|(kernel, u)| {
                let run = VmRun {
                    kernel: *kernel,
                    unpacked: u.clone(),
                    binary: binary.clone(),
                    guest: guest.clone(),
                    out: vm_dir.join("runs").join(kernel.name),
                    filter: filter.clone(),
                    kvm,
                };
                thread::spawn(move || run.run())
            })
            .collect();
        for handle in runs {
            let column = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a VM runner thread panicked"))??;
            columns.push(column);
        }
    }
    if options.host {
        columns.push(run_on_host(
            &binary,
            &guest,
            &vm_dir.join("runs/host"),
            &filter,
        )?);
    }

    println!();
    print!("{}", report::render(&columns));
    println!(
        "vm-test: {:.0} s in all; logs under {}",
        started.elapsed().as_secs_f64(),
        vm_dir.join("runs").display()
    );
    let failed: Vec<&str> = columns
        .iter()
        .filter(|c| !c.all_passed())
        .map(|c| c.heading.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("not every test passed on: {}", failed.join(", "));
    }
    Ok(())
}

/// `cargo xtask vm-test --list-kernels`: each pin next to the newest package of its series.
pub fn list_kernels() -> Result<()> {
    let vm_dir = util::workspace_root().join("target").join("vm");
    fs::create_dir_all(&vm_dir)?;
    let apt = PrivateApt::prepare(&vm_dir.join("apt"), &kernels::KERNELS)?;
    for kernel in &kernels::KERNELS {
        let (package, version) = apt.newest_of_series(kernel)?;
        let state = if package == kernel.package && version == kernel.version {
            "up to date"
        } else {
            "newer available"
        };
        println!(
            "{}: pinned {}={}; newest {package}={version} ({state})",
            kernel.name, kernel.package, kernel.version
        );
    }
    Ok(())
}

/// Fails, naming `cargo xtask setup`, when a tool the matrix needs is missing.
fn check_tools() -> Result<()> {
    let mut missing = Vec::new();
    if util::which("qemu-system-x86_64").is_none() {
        missing.push("qemu-system-x86_64 (package qemu-system-x86)");
    }
    if util::which("depmod").is_none() && !Path::new("/sbin/depmod").exists() {
        missing.push("depmod and modprobe (package kmod)");
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (package busybox-static)");
    }
    if !setup::vng_bin().exists() {
        missing.push("virtme-ng (the venv `cargo xtask setup` makes)");
    }
    if !setup::virtiofsd_bin().exists() {
        missing.push("virtiofsd (`cargo xtask setup` builds it under target/vm-tools)");
    }
    if !missing.is_empty() {
        bail!(
            "the kernel matrix needs {}: run `sudo cargo xtask setup`",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Builds the privileged test binary and returns its path.
fn build_test_binary() -> Result<PathBuf> {
    let output = Command::new(util::cargo())
        .args(test::PRIVILEGED_TESTS)
        .args(["--no-run", "--message-format=json-render-diagnostics"])
        .current_dir(util::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo to build the privileged tests")?;
    if !output.status.success() {
        bail!("building the privileged tests failed ({})", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    for line in text.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["target"]["name"] == "privileged"
            && let Some(path) = message["executable"].as_str()
        {
            return Ok(PathBuf::from(path));
        }
    }
    bail!("cargo built no `privileged` test binary")
}

fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

/// One kernel's run in a VM.
struct VmRun {
    kernel: Kernel,
    unpacked: Unpacked,
    binary: PathBuf,
    guest: PathBuf,
    out: PathBuf,
    filter: Vec<String>,
    kvm: bool,
}

impl VmRun {
    fn run(self) -> Result<Column> {
        let started = Instant::now();
        let _ = fs::remove_dir_all(&self.out);
        fs::create_dir_all(&self.out)?;
        let tests = count_tests(&self.binary, &self.filter)?;
        // Generous: the boot, and every test at its limit.
        let limit = Duration::from_secs(180 + tests as u64 * (TEST_TIMEOUT_S + 15));
        let mut exec = vec![
            self.guest.to_string_lossy().into_owned(),
            self.out.to_string_lossy().into_owned(),
            self.binary.to_string_lossy().into_owned(),
            TEST_TIMEOUT_S.to_string(),
        ];
        exec.extend(self.filter.iter().cloned());
        let exec: Vec<String> = exec.iter().map(|w| util::shell_quote(w)).collect();

        let mut cmd = Command::new("timeout");
        // vng runs virtme-run, its sibling in the venv, and virtiofsd from PATH.
        let venv_bin = setup::vng_bin()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(
            [venv_bin, setup::vm_tools().join("bin")]
                .into_iter()
                .chain(std::env::split_paths(&path)),
        )?;
        cmd.env("PATH", path)
            .args(["-k", "10", &limit.as_secs().to_string()])
            .arg(setup::vng_bin())
            .args(["--verbose", "--memory", "2G", "--cpus", "2"])
            .args(["--busybox", "/bin/busybox"]);
        if !self.kvm {
            cmd.arg("--disable-kvm");
        }
        cmd.arg("--run")
            .arg(&self.unpacked.image)
            .arg("--rwdir")
            .arg(&self.out)
            .arg("--exec")
            .arg(exec.join(" "))
            .stdin(Stdio::null())
            // qemu reopens its stdout and stderr: they must be two files.
            .stdout(fs::File::create(self.out.join("vng-stdout.log"))?)
            .stderr(fs::File::create(self.out.join("console.log"))?);
        println!(
            "vm-test: booting {} ({} test(s), at most {} s)",
            self.unpacked.release,
            tests,
            limit.as_secs()
        );
        let status = cmd
            .status()
            .with_context(|| format!("cannot run {}", setup::vng_bin().display()))?;
        let seconds = started.elapsed().as_secs_f64();
        let console = fs::read_to_string(self.out.join("console.log")).unwrap_or_default();
        if console.contains("fallback to 9p") {
            println!(
                "vm-test: warning: {} ran on 9p, not virtio-fs (virtiofsd did not start; see \
                 {}): expect it to be several times slower",
                self.kernel.name,
                self.out.join("console.log").display()
            );
        }
        let heading = format!(
            "{} ({}, {})",
            self.kernel.name,
            self.unpacked.release,
            if self.kvm { "KVM" } else { "TCG" }
        );
        Ok(read_column(
            heading,
            &self.out,
            seconds,
            &status.to_string(),
        ))
    }
}

/// How many tests `filter` selects in `binary`.
fn count_tests(binary: &Path, filter: &[String]) -> Result<usize> {
    let list = util::probe(
        Command::new(binary)
            .args(["--list", "--format", "terse"])
            .args(filter),
    )?;
    let n = list.lines().filter(|l| l.ends_with(": test")).count();
    if n == 0 {
        bail!("the filter {} selects no test", filter.join(" "));
    }
    Ok(n)
}

/// A column from a runner's output directory.
fn read_column(heading: String, out: &Path, seconds: f64, how_it_ended: &str) -> Column {
    let mut problem = None;
    let outcomes = match fs::read_to_string(out.join("results.tsv")) {
        Ok(text) => report::parse_results(&text).unwrap_or_else(|e| {
            problem = Some(format!("unreadable results.tsv: {e}"));
            Default::default()
        }),
        Err(_) => {
            problem = Some(format!(
                "no results ({how_it_ended}); see {}",
                out.join("console.log").display()
            ));
            Default::default()
        }
    };
    if problem.is_none() && !out.join("done").exists() {
        problem = Some(format!(
            "the run stopped before its end ({how_it_ended}); see {}",
            out.join("guest.log").display()
        ));
    }
    Column {
        heading,
        outcomes,
        problem,
        seconds,
    }
}

/// The host column: the same script, without a VM and without preparing the kernel (the
/// host's own setup is the one `cargo xtask setup` made).
fn run_on_host(binary: &Path, guest: &Path, out: &Path, filter: &[String]) -> Result<Column> {
    let started = Instant::now();
    let _ = fs::remove_dir_all(out);
    fs::create_dir_all(out)?;
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_default();
    println!("vm-test: running on the host kernel {release}");
    let status = Command::new(guest)
        .arg(out)
        .arg(binary)
        .arg(TEST_TIMEOUT_S.to_string())
        .args(filter)
        .env("L7R_GUEST_IS_HOST", "1")
        .status()
        .with_context(|| format!("cannot run {}", guest.display()))?;
    Ok(read_column(
        format!("host ({release})"),
        out,
        started.elapsed().as_secs_f64(),
        &status.to_string(),
    ))
}
