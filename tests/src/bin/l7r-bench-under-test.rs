//! The `l7r-bench` binary, built inside this package so the bench smoke test runs the current
//! code (`CARGO_BIN_EXE_l7r-bench-under-test`); cargo cannot name another package's binary.

fn main() -> std::process::ExitCode {
    l7r_bench::cli::main()
}
