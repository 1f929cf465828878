//! Proxy readiness: the daemon checks that the proxy accepts connections and marks it ready or
//! not in the `config` map. Not ready means new connections go direct (fail-open): logging must
//! never break an application.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpStream, task::JoinHandle, time::timeout};
use tracing::{info, warn};

use crate::{dataplane::Dataplane, metrics::Metrics};

/// Whether something accepts TCP connections at `addr` within `limit`.
async fn accepts(addr: SocketAddr, limit: Duration) -> bool {
    matches!(timeout(limit, TcpStream::connect(addr)).await, Ok(Ok(_)))
}

/// Checks both proxies every `interval` and writes a change of readiness to the map (and only
/// a change, so a steady state costs no map writes).
pub fn start(
    proxy4: Option<SocketAddr>,
    proxy6: Option<SocketAddr>,
    interval: Duration,
    mut pins: Dataplane,
    metrics: Arc<Metrics>,
) -> JoinHandle<()> {
    // A check may take at most the interval, and never more than a second.
    let limit = interval.min(Duration::from_secs(1));
    tokio::spawn(async move {
        let mut written: Option<(bool, bool)> = pins
            .config()
            .ok()
            .map(|c| (c.proxy4_ready != 0, c.proxy6_ready != 0));
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let v4 = match proxy4 {
                Some(a) => accepts(a, limit).await,
                None => false,
            };
            let v6 = match proxy6 {
                Some(a) => accepts(a, limit).await,
                None => false,
            };
            let shown = record(&mut written, (v4, v6), |(v4, v6)| {
                pins.set_proxy_ready(v4, v6)?;
                for (addr, ready) in [(proxy4, v4), (proxy6, v6)] {
                    if let Some(addr) = addr {
                        if ready {
                            info!(proxy = %addr, "proxy accepts connections: steering");
                        } else {
                            warn!(proxy = %addr, "proxy does not accept connections: traffic goes direct");
                        }
                    }
                }
                Ok::<(), crate::dataplane::DataplaneError>(())
            });
            // What the kernel programs act on, not what the check saw: after a failed write
            // they still steer by the old value.
            let (v4, v6) = shown.unwrap_or((false, false));
            metrics.set_proxy_ready(v4, v6);
        }
    })
}

/// Writes `seen` through `write` when it differs from what was `written` last, and returns
/// what the map holds afterwards (`None`: unknown, nothing was ever read or written). A failed
/// write is logged and leaves `written` as it was, so the next check tries again.
fn record<E: std::fmt::Display>(
    written: &mut Option<(bool, bool)>,
    seen: (bool, bool),
    write: impl FnOnce((bool, bool)) -> Result<(), E>,
) -> Option<(bool, bool)> {
    if *written != Some(seen) {
        match write(seen) {
            Ok(()) => *written = Some(seen),
            Err(e) => warn!(error = %e, "cannot write proxy readiness"),
        }
    }
    *written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_written_once() {
        let mut written = Some((false, false));
        let mut writes = 0;
        for _ in 0..3 {
            let shown = record(&mut written, (true, false), |_| {
                writes += 1;
                Ok::<_, String>(())
            });
            assert_eq!(shown, Some((true, false)));
        }
        assert_eq!(writes, 1);
    }

    #[test]
    fn a_failed_write_shows_what_the_map_still_holds_and_is_retried() {
        let mut written = Some((true, true));
        let shown = record(&mut written, (false, true), |_| Err("map gone"));
        assert_eq!(shown, Some((true, true)), "the programs still steer");
        let shown = record(&mut written, (false, true), |_| Ok::<_, String>(()));
        assert_eq!(shown, Some((false, true)));
    }

    #[test]
    fn unknown_until_the_first_write_succeeds() {
        let mut written = None;
        assert_eq!(record(&mut written, (true, true), |_| Err("no map")), None);
    }
}
