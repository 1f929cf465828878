//! The scenarios (three of issue 7, the 4-tuple space of issue 12, the cost of logging of issue
//! 17), the collector's throughput (issue 16), and what they share: alternatives measured side
//! by side, interleaved round by round (A B C, B C A, C A B, ...) in one process, so that
//! machine noise (another job, frequency changes, a noisy neighbour) hits every alternative
//! alike.

pub mod collector;
pub mod control;
pub mod cost;
pub mod kube;
pub mod ports;
pub mod selected;
pub mod unselected;

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

use l7r_lab::{lab::Lab, netns::Netns};

use crate::client::{self, Batch, Workload};

/// The order in which `n` alternatives run in round `round`: rotated by one each round, so
/// none always runs first (right after a pause or a set-up) or last.
pub fn round_order(n: usize, round: usize) -> Vec<usize> {
    (0..n).map(|i| (i + round) % n.max(1)).collect()
}

/// How many connections each of `rounds` batches makes so that together they make at least
/// `total` (never zero, so every round measures something).
pub fn per_round(total: usize, rounds: usize) -> usize {
    total.div_ceil(rounds.max(1)).max(1)
}

/// Set (by the binary's SIGINT/SIGTERM handler) to stop at the next batch; the error then
/// unwinds through the labs' guards, which remove namespaces, cgroups, rules and programs.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Fails once [`INTERRUPTED`] is set.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs `rounds` rounds over `n` alternatives in [`round_order`], calling `f(round, alt)`.
pub fn interleave(
    n: usize,
    rounds: usize,
    mut f: impl FnMut(usize, usize) -> Result<()>,
) -> Result<()> {
    for round in 0..rounds {
        for alt in round_order(n, round) {
            check_interrupted()?;
            f(round, alt)?;
        }
    }
    Ok(())
}

/// Lets a namespace reuse a client port whose previous connection is in TIME_WAIT, and widens
/// the ephemeral port range: a benchmark makes tens of thousands of connections from one
/// address to one destination within the 60 s a closed connection stays in TIME_WAIT. Both are
/// per-namespace settings; every alternative gets the same ones.
pub fn tune_for_churn(ns: &Netns) -> Result<()> {
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")
}

/// Runs one batch of `count` connections from `lab`'s client pod.
pub fn batch(lab: &Lab, workload: &Workload, count: usize) -> Result<Batch> {
    let w = workload.clone();
    client::in_client(lab, move || client::run_batch(&w, count))
}

/// Prints a progress line on stderr (stdout carries the report).
pub fn progress(text: &str) {
    eprintln!("l7r-bench: {text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_rotate() {
        assert_eq!(round_order(3, 0), [0, 1, 2]);
        assert_eq!(round_order(3, 1), [1, 2, 0]);
        assert_eq!(round_order(3, 2), [2, 0, 1]);
        assert_eq!(round_order(3, 3), [0, 1, 2]);
        assert!(round_order(0, 5).is_empty());
    }

    #[test]
    fn rounds_split_the_total() {
        assert_eq!(per_round(1000, 4), 250);
        assert_eq!(per_round(1001, 4), 251);
        assert_eq!(per_round(0, 4), 1);
        assert_eq!(per_round(10, 0), 10);
    }

    #[test]
    fn interleave_visits_every_pair_once() {
        let mut seen = Vec::new();
        interleave(2, 3, |r, a| {
            seen.push((r, a));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [(0, 0), (0, 1), (1, 1), (1, 0), (2, 0), (2, 1)]);
    }
}
