//! `l7r-bench`: see [`l7r_bench::cli`] and `docs/benchmarks.md`.

fn main() -> std::process::ExitCode {
    l7r_bench::cli::main()
}
