//! Test helper: one run of the "daemon side" as its own process. It loads the programs, adopts
//! the pinned maps and links under `--pin-dir`, attaches to `--cgroup` (replacing the previous
//! run's links), writes the proxy config as ready, selects any `--select` destinations, and
//! exits, leaving the datapath in place.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Result;
use clap::Parser;
use redirector::{
    cgroup::{cgroup_ref, cgroup2_mount},
    dataplane::{Dataplane, LoadOptions},
    proxy_config::{ProxySettings, parse_mark},
};
use redirector_common::{ServiceKey, ServiceValue};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    pin_dir: PathBuf,
    #[arg(long)]
    cgroup: PathBuf,
    #[arg(long)]
    proxy: Option<SocketAddr>,
    #[arg(long)]
    proxy6: Option<SocketAddr>,
    #[arg(long, default_value_t = 1)]
    proxy_ports: u16,
    #[arg(long)]
    exclude_cgroup: Vec<PathBuf>,
    #[arg(long)]
    exclude_uid: Vec<u32>,
    #[arg(long, value_parser = parse_mark)]
    exclude_mark: Option<(u32, u32)>,
    /// Also select these destinations (service id 1).
    #[arg(long)]
    select: Vec<SocketAddr>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut dp = Dataplane::load(&LoadOptions {
        pin_dir: args.pin_dir,
        ..Default::default()
    })?;
    dp.attach(&args.cgroup)?;
    let mount = cgroup2_mount()?;
    let settings = ProxySettings {
        proxy4: args.proxy,
        proxy6: args.proxy6,
        proxy_ports: args.proxy_ports,
        steer_min_level: cgroup_ref(&args.cgroup, &mount)?.level + 1,
        exclude_cgroups: args
            .exclude_cgroup
            .iter()
            .map(|p| cgroup_ref(p, &mount))
            .collect::<Result<_, _>>()?,
        exclude_uids: args.exclude_uid,
        exclude_mark: args.exclude_mark,
    };
    dp.set_config(&settings.to_config()?)?;
    dp.set_proxy_ready(true, true)?;
    let selected: Vec<_> = args
        .select
        .iter()
        .map(|&dst| {
            (
                ServiceKey::tcp_addr(dst),
                ServiceValue {
                    service_id: 1,
                    flags: 0,
                },
            )
        })
        .collect();
    dp.insert_services(&selected)?;
    Ok(())
}
