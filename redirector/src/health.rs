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
            if written != Some((v4, v6)) {
                match pins.set_proxy_ready(v4, v6) {
                    Ok(()) => {
                        for (addr, ready) in [(proxy4, v4), (proxy6, v6)] {
                            if let Some(addr) = addr {
                                if ready {
                                    info!(proxy = %addr, "proxy accepts connections: steering");
                                } else {
                                    warn!(proxy = %addr, "proxy does not accept connections: traffic goes direct");
                                }
                            }
                        }
                        written = Some((v4, v6));
                    }
                    Err(e) => warn!(error = %e, "cannot write proxy readiness"),
                }
            }
            metrics.set_proxy_ready(v4, v6);
        }
    })
}
