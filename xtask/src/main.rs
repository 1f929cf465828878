//! `cargo xtask`: the project's build and CI tasks, written in Rust so they run the same on
//! every machine that has cargo (see `.cargo/config.toml` for the alias).

mod bench;
mod build_ebpf;
mod chaos;
mod demo;
mod image;
mod setup;
mod test;
mod util;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command line of `cargo xtask`.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Build and CI tasks for the redirector workspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The tasks `cargo xtask` knows.
#[derive(Debug, Subcommand)]
enum Command {
    /// Install (as root, on Debian) the packages, tools and mounts the build and tests need.
    Setup,
    /// Build the eBPF object from `redirector-ebpf/` for `bpfel-unknown-none`.
    BuildEbpf {
        /// Build with the release profile instead of debug.
        #[arg(long)]
        release: bool,
    },
    /// Run everything CI runs: setup if needed, eBPF build, fmt, clippy, unit tests, the
    /// container image, the privileged tests, and the privileged datapath tests again on Linux
    /// 5.10, 6.1 and 6.12 (VMs).
    Test,
    #[command(about = image::ABOUT, long_about = image::LONG_ABOUT)]
    Image,
    /// Show the main job on this machine: a small lab where annotating a Service sends its new
    /// connections through the real Envoy, step by step (root; cleans up on exit or Ctrl-C).
    Demo,
    /// Run privileged tests in VMs booted with Debian's 5.10, 6.1 and 6.12 kernels (and on the
    /// host kernel), and print a table kernel × test. Flags after `--` filter the tests
    /// (default: `datapath::`, the kernel programs).
    VmTest {
        /// Which kernel: 5.10, 6.1, 6.12, or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// How many VMs to run at once.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Leave out the host kernel's column.
        #[arg(long)]
        no_host: bool,
        /// Print each kernel's pin next to the newest package of its series that the mirrors
        /// offer (to bump the pins in xtask/src/vm/kernels.rs), and run nothing.
        #[arg(long)]
        list_kernels: bool,
        /// libtest filter arguments (e.g. `datapath::udp` or `--skip churn`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        filter: Vec<String>,
    },
    /// The reliability report (root): a steady load through a lab with the real Envoy and
    /// daemon while one fault at a time is injected (Envoy killed, stopped, replaced; the daemon
    /// killed, rolled; both gone; uninstall); prints what each cost as Markdown
    /// (docs/reliability.md). Flags after `--` go to `l7r-chaos` (e.g. `-- --faults envoy-kill`).
    Chaos {
        /// Flags for `l7r-chaos` (see `l7r-chaos --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build in release mode and run the benchmarks (root): the redirector against iptables
    /// and nftables, printed as Markdown, raw samples in target/bench/. Flags after `--` go to
    /// `l7r-bench` (e.g. `cargo xtask bench -- --quick`).
    Bench {
        /// Flags for `l7r-bench` (see `l7r-bench --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::BuildEbpf { release } => build_ebpf::build_ebpf(release).map(|_| ()),
        Command::Test => test::run(),
        Command::Image => image::run(),
        Command::Demo => demo::run(),
        Command::Bench { args } => bench::run(&args),
        Command::Chaos { args } => chaos::run(&args),
        Command::VmTest {
            kernel,
            jobs,
            no_host,
            list_kernels,
            filter,
        } => {
            if list_kernels {
                vm::list_kernels()
            } else {
                vm::run(&vm::Options {
                    kernel,
                    jobs,
                    filter,
                    host: !no_host,
                })
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line, which names the failing command.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
