//! The `redirector` binary, built inside this package so the tests always run the current code
//! (`CARGO_BIN_EXE_redirector-under-test`); cargo cannot name another package's binary.

fn main() -> anyhow::Result<()> {
    redirector::cli::run()
}
