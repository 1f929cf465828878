//! `redirector`: see `redirector --help` and the `cli` module.

fn main() -> anyhow::Result<()> {
    redirector::cli::run()
}
