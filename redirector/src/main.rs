//! `redirector`: steers new TCP connections to selected Services through the node proxy.
//! See `redirector --help`.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use redirector::{
    dataplane::{self, DEFAULT_PIN_DIR, Dataplane},
    status,
};

#[derive(Parser)]
#[command(
    name = "redirector",
    version,
    about = "eBPF traffic selector and redirector for L7 logs",
    long_about = "Steers every new TCP connection to Kubernetes Services annotated \
                  projectcalico.org/l7-logging=true to the node-local Envoy, which forwards \
                  it and logs each request. Existing connections are never disturbed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the selected destinations, the proxy, exclusions and the kernel counters, read
    /// from the pinned maps (works while the daemon is down).
    Status {
        /// Where the maps are pinned.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove the programs and pins: a clean uninstall. Connections already proxied keep
    /// working; new ones go direct.
    Detach {
        /// Where the maps and links are pinned.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Status { pin_dir, json } => {
            let dp = Dataplane::open_pinned(&pin_dir)?;
            let report = status::gather(&dp)
                .with_context(|| format!("cannot read the maps under {}", pin_dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", status::render_text(&report));
            }
        }
        Command::Detach { pin_dir } => {
            if dataplane::detach(&pin_dir)? {
                println!(
                    "detached: removed the programs and pins under {}",
                    pin_dir.display()
                );
            } else {
                println!("nothing to detach: {} does not exist", pin_dir.display());
            }
        }
    }
    Ok(())
}
