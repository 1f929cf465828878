//! Scenario 1: what unselected traffic pays. A client makes sequential connections (connect,
//! one line and its answer, close) to a destination that is not selected, while `N` other
//! destinations are selected, by each alternative in its own lab:
//!
//! - `none`: nothing attached, no netfilter table: the baseline;
//! - `redirector`: the programs attached to the lab's cgroup, `N` entries in `services`;
//! - `iptables`: `N` linear `-j REDIRECT` rules in the nat OUTPUT chain of the client's
//!   namespace (kube-proxy style): a connection that matches none walks all of them;
//! - `nftables`: a set of `N` elements and one `redirect` rule, in the client's namespace.
//!
//! Each alternative has its own lab (namespaces, cgroups, backend) so all four stay set up
//! for the whole measurement and can be interleaved batch by batch without reloading 60 000
//! rules between batches. The labs are identical but for the alternative.

use std::{
    net::{SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use redirector_common::{DEFAULT_SERVICES_CAPACITY, ServiceKey, ServiceValue};

use l7r_lab::lab::{BACKEND4, CLIENT4, Lab, LabOptions, OTHER_PORT, PROXY_PORT, sa};

use crate::{
    baselines::{self, Hook, Iptables, Redirect},
    client::{Exchange, Workload},
    destinations::random_destinations,
    report::Series,
    scenarios::{batch, interleave, per_round, progress, tune_for_churn},
};

/// What scenario 1 is asked to do.
#[derive(Clone, Debug)]
pub struct Params {
    /// The numbers of selected destinations to measure at.
    pub sizes: Vec<usize>,
    /// Measured connections per alternative and size.
    pub connections: usize,
    /// Batches they are split into (the interleaving unit).
    pub rounds: usize,
    /// Connections per alternative before measuring (caches, conntrack, page faults).
    pub warmup: usize,
    /// Which iptables loads the linear rules.
    pub iptables: Iptables,
    /// Seed of the random destinations.
    pub seed: u64,
}

/// The alternatives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alternative {
    /// Nothing attached, no netfilter table: the baseline.
    None,
    Redirector,
    Iptables,
    Nftables,
}

impl Alternative {
    /// All of them, baseline first.
    const ALL: [Self; 4] = [Self::None, Self::Redirector, Self::Iptables, Self::Nftables];

    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Redirector => "redirector",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
        }
    }
}

/// Builds the lab for `alternative` with `destinations` selected; returns it and what its
/// set-up cost.
fn setup(
    alternative: Alternative,
    destinations: &[SocketAddrV4],
    p: &Params,
) -> Result<(Lab, String)> {
    let started = Instant::now();
    let redirect = Redirect {
        hook: Hook::Output,
        to_port: PROXY_PORT,
        skip_mark: None,
    };
    let lab = match alternative {
        Alternative::Redirector => {
            let mut lab = Lab::new()?;
            let entries: Vec<(ServiceKey, ServiceValue)> = destinations
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    (
                        ServiceKey::tcp_addr(SocketAddr::V4(*d)),
                        ServiceValue {
                            service_id: i as u32 + 1,
                            flags: 0,
                        },
                    )
                })
                .collect();
            lab.dp().insert_services(&entries)?;
            lab
        }
        Alternative::Iptables => {
            let lab = Lab::with(LabOptions::for_daemon())?;
            baselines::apply_iptables(
                &lab.client_ns,
                p.iptables,
                &baselines::iptables_rules(&redirect, destinations),
            )?;
            lab
        }
        Alternative::Nftables => {
            let lab = Lab::with(LabOptions::for_daemon())?;
            baselines::apply_nft(
                &lab.client_ns,
                &baselines::nft_ruleset(&redirect, destinations),
            )?;
            lab
        }
        Alternative::None => Lab::with(LabOptions::for_daemon())?,
    };
    tune_for_churn(&lab.client_ns)?;
    let note = format!(
        "set-up with {} destinations took {:.2} s",
        destinations.len(),
        started.elapsed().as_secs_f64()
    );
    Ok((lab, note))
}

/// Runs scenario 1; one [`Series`] per size and alternative.
pub fn run(p: &Params) -> Result<Vec<Series>> {
    let workload = Workload {
        dst: sa(BACKEND4, OTHER_PORT),
        exchange: Exchange::Line,
        // The line backend answers `<peer> <line>`: the client itself, so the connection went
        // direct.
        must_contain: vec![format!("{CLIENT4} ping")],
    };
    let count = per_round(p.connections, p.rounds);
    // The lab's in-process dataplane has the default `services` capacity.
    if let Some(&n) = p
        .sizes
        .iter()
        .find(|&&n| n > DEFAULT_SERVICES_CAPACITY as usize)
    {
        bail!("N = {n} does not fit the services map ({DEFAULT_SERVICES_CAPACITY} entries)");
    }
    let mut all = Vec::new();
    for &n in &p.sizes {
        progress(&format!("unselected traffic, N = {n}: setting up"));
        let destinations = random_destinations(n, p.seed, &[]);
        let mut labs = Vec::new();
        let mut series = Vec::new();
        for alt in Alternative::ALL {
            let (lab, note) = setup(alt, &destinations, p)
                .with_context(|| format!("setting up {}, N = {n}", alt.name()))?;
            let mut s = Series::new(&n.to_string(), alt.name(), alt == Alternative::None);
            s.notes.push(note);
            labs.push(lab);
            series.push(s);
        }
        for (lab, alt) in labs.iter().zip(Alternative::ALL) {
            if p.warmup > 0 {
                batch(lab, &workload, p.warmup)
                    .with_context(|| format!("warm-up of {}, N = {n}", alt.name()))?;
            }
        }
        let started = Instant::now();
        interleave(labs.len(), p.rounds, |round, i| {
            let b = batch(&labs[i], &workload, count).with_context(|| {
                format!("{}, N = {n}, round {round}", Alternative::ALL[i].name())
            })?;
            series[i].add(&b);
            Ok(())
        })?;
        progress(&format!(
            "unselected traffic, N = {n}: {} connections per alternative in {:.1} s",
            count * p.rounds,
            started.elapsed().as_secs_f64()
        ));
        if let Some(lab) = labs.get_mut(1)
            && let Some(dp) = lab.dataplane.as_ref()
        {
            let c = dp.counters()?;
            series[1].notes.push(format!(
                "redirector counters: seen {}, redirected {}",
                c.seen, c.redirected
            ));
        }
        drop(labs);
        // Let the namespaces' teardown (and its RCU work) finish before the next size.
        std::thread::sleep(Duration::from_millis(200));
        all.extend(series);
    }
    Ok(all)
}
