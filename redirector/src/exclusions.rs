//! `--exclude-cgroup` by path, not by the id it had at start. The kernel programs compare cgroup
//! ids, and a directory re-created under the same path (a restarted container, a proxy's
//! systemd unit) gets a new id: excluded by the old one, the proxy's own upstream connections
//! would be steered back to it. So the daemon resolves the paths again every interval and
//! rewrites the `config` entry when an id changed.
//!
//! Between the re-creation and the next round (one `--proxy-check-interval`), the new cgroup's
//! connections are not excluded: for a proxy that restarts, the SO_MARK exclusion
//! (`--exclude-mark`, what the DaemonSet uses) has no such window.

use std::{path::PathBuf, time::Duration};

use redirector_common::{CgroupRef, Config};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::{cgroup::cgroup_ref, dataplane::Dataplane};

/// The config with each excluded path's cgroup as `resolved` now (entry `i` is path `i`), or
/// `None` when nothing changed. A path that does not exist at the moment (its cgroup is being
/// re-created) keeps the id it had.
pub fn with_exclusions(config: &Config, resolved: &[Option<CgroupRef>]) -> Option<Config> {
    let mut next = *config;
    let count = (config.exclude_cgroup_count as usize).min(config.exclude_cgroups.len());
    for (slot, now) in next.exclude_cgroups[..count].iter_mut().zip(resolved) {
        if let Some(now) = now {
            *slot = *now;
        }
    }
    (next != *config).then_some(next)
}

/// Resolves `paths` (below the cgroup2 `mount`) every `interval` and keeps the pinned config's
/// exclusions in step with them.
pub fn follow(
    paths: Vec<PathBuf>,
    mount: PathBuf,
    interval: Duration,
    mut pins: Dataplane,
) -> Option<JoinHandle<()>> {
    if paths.is_empty() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let resolved: Vec<Option<CgroupRef>> =
                paths.iter().map(|p| cgroup_ref(p, &mount).ok()).collect();
            let config = match pins.config() {
                Ok(config) => config,
                Err(e) => {
                    warn!(error = %e, "cannot read the config to check the excluded cgroups");
                    continue;
                }
            };
            let Some(next) = with_exclusions(&config, &resolved) else {
                continue;
            };
            match pins.set_config(&next) {
                Ok(()) => info!(
                    cgroups = ?paths,
                    "an excluded cgroup was re-created: excluding it by its new id"
                ),
                Err(e) => warn!(error = %e, "cannot update the excluded cgroups"),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cg(id: u64, level: u32) -> CgroupRef {
        CgroupRef { id, level, _pad: 0 }
    }

    fn config(refs: &[CgroupRef]) -> Config {
        let mut c = Config {
            exclude_cgroup_count: refs.len() as u32,
            ..Config::default()
        };
        c.exclude_cgroups[..refs.len()].copy_from_slice(refs);
        c
    }

    #[test]
    fn a_recreated_cgroup_is_excluded_by_its_new_id() {
        let c = config(&[cg(10, 2), cg(20, 3)]);
        assert_eq!(
            with_exclusions(&c, &[Some(cg(10, 2)), Some(cg(20, 3))]),
            None
        );
        let next = with_exclusions(&c, &[Some(cg(10, 2)), Some(cg(21, 3))]).unwrap();
        assert_eq!(next.exclude_cgroups[..2], [cg(10, 2), cg(21, 3)]);
        assert_eq!(next.exclude_cgroup_count, 2);
    }

    #[test]
    fn a_path_that_is_gone_for_now_keeps_its_old_id() {
        let c = config(&[cg(10, 2)]);
        assert_eq!(with_exclusions(&c, &[None]), None);
    }
}
