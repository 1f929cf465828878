//! Proxy readiness: the daemon checks that the proxy is serving and grants the kernel a
//! readiness lease per proxy (`proxy_lease`): "steer until T". Each good check renews it; a
//! failed check revokes it at once. Not ready means new connections go direct (fail-open):
//! logging must never break an application.
//!
//! Because it is a lease and not a flag, nothing needs to be written for traffic to fail open:
//! if the daemon dies, hangs or is uninstalled, the lease runs out (`--ready-lease`, 3 s by
//! default) and the programs stop steering. And the kernel does not wait for this checker when
//! it sees a steered connect fail: `sockops` records the failure (`proxy_failed`), which voids
//! any lease granted by a check that started earlier, so only the connects in flight at the
//! moment the proxy died are lost.

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use redirector_common::{PROXY4, PROXY6, ProxyLease};
use tokio::{net::TcpStream, task::JoinHandle, time::timeout};
use tracing::{info, warn};

use crate::{
    clock::{self, nanos},
    dataplane::{Dataplane, DataplaneError},
    envoy_admin,
    metrics::Metrics,
};

/// What the checker is asked to do.
#[derive(Clone, Debug)]
pub struct HealthOptions {
    /// The IPv4 proxy's listener.
    pub proxy4: Option<SocketAddr>,
    /// The IPv6 proxy's listener.
    pub proxy6: Option<SocketAddr>,
    /// Envoy's admin address: `GET /ready` must answer 200 too.
    pub admin: Option<SocketAddr>,
    /// How often to check.
    pub interval: Duration,
    /// How long a good check lets the kernel steer.
    pub lease: Duration,
    /// What else steering needs besides a serving proxy (the return path of
    /// `--upstream-source client`), checked every round on a blocking thread.
    pub gate: Option<Gate>,
}

/// A condition besides the proxy itself that steering needs, checked (and repaired, if it
/// can) once per round: while it fails, the proxies' leases are revoked and traffic goes
/// direct. `Err` says what is wrong.
#[derive(Clone)]
pub struct Gate(pub Arc<dyn Fn() -> Result<(), String> + Send + Sync>);

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Gate")
    }
}

impl Gate {
    async fn check(&self) -> Result<(), String> {
        let gate = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || gate())
            .await
            .unwrap_or_else(|e| Err(format!("its check did not finish: {e}")))
    }
}

/// Why a proxy check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckFailure {
    /// The listener refused the connection (or another connect error).
    Connect(String),
    /// The admin API did not answer `/ready` with 200.
    NotReady(String),
    /// The check took longer than its limit: a stopped or overloaded proxy.
    TimedOut(Duration),
    /// The proxy serves, but something steering needs (the [`Gate`]) is missing.
    Gate(String),
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "its listener does not accept connections ({e})"),
            Self::NotReady(e) => write!(f, "Envoy's admin /ready says it is not serving ({e})"),
            Self::TimedOut(limit) => write!(f, "it did not answer within {limit:?}"),
            Self::Gate(why) => write!(f, "{why}"),
        }
    }
}

/// One check: a connect to the listener, and `GET /ready` on the admin address when there is
/// one, together within `limit`.
pub async fn check(
    listener: SocketAddr,
    admin: Option<SocketAddr>,
    limit: Duration,
) -> Result<(), CheckFailure> {
    let both = async {
        TcpStream::connect(listener)
            .await
            .map_err(|e| CheckFailure::Connect(e.to_string()))?;
        if let Some(admin) = admin {
            admin_ready(admin).await.map_err(CheckFailure::NotReady)?;
        }
        Ok(())
    };
    timeout(limit, both)
        .await
        .unwrap_or(Err(CheckFailure::TimedOut(limit)))
}

/// Envoy's `/ready`: 200 `LIVE` only while the server is initialised and not draining
/// (`/healthcheck/fail`, which `redirector drain-proxy` calls first, turns it to 503).
async fn admin_ready(admin: SocketAddr) -> Result<(), String> {
    let answer = envoy_admin::request(admin, "GET", "/ready").await?;
    match answer.status {
        200 => Ok(()),
        other => Err(format!(
            "admin {admin} answered {other} {}",
            answer.body.trim()
        )),
    }
}

/// The lease to write after a check that started at `started_ns`.
pub fn lease_after(ok: bool, started_ns: u64, lease: Duration) -> ProxyLease {
    if ok {
        ProxyLease {
            ready_until_ns: started_ns.saturating_add(nanos(lease)),
            checked_at_ns: started_ns,
        }
    } else {
        ProxyLease::NOT_READY
    }
}

/// What the checker last wrote for one proxy: `Some(true)` a lease, `Some(false)` a
/// revocation, `None` nothing yet (or the last write failed).
#[derive(Debug, Default)]
struct Grant {
    written: Option<bool>,
    /// The last check's outcome, to log changes only.
    last: Option<Result<(), CheckFailure>>,
}

impl Grant {
    /// Whether a check with this outcome must be written: every good check renews the lease;
    /// a failure revokes it once.
    fn needs_write(&self, ok: bool) -> bool {
        ok || self.written != Some(false)
    }
}

/// Checks both proxies every interval and renews or revokes their leases. Every round also
/// looks at the kernel's counters, to say (once per rise) when records could not be allocated.
pub fn start(opts: HealthOptions, mut pins: Dataplane, metrics: Arc<Metrics>) -> JoinHandle<()> {
    // A check may take at most the interval, and never more than a second.
    let limit = opts.interval.min(Duration::from_secs(1));
    tokio::spawn(async move {
        let mut grants = [Grant::default(), Grant::default()];
        let mut failures_seen = pins.proxy_failures().unwrap_or_default();
        let mut allocation_failures = pins.counters().map_or(0, |c| c.allocation_failures());
        let mut ticker = tokio::time::interval(opts.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let started = clock::monotonic_ns();
            let (v4, v6, gate) = tokio::join!(
                check_opt(opts.proxy4, opts.admin, limit),
                check_opt(opts.proxy6, opts.admin, limit),
                async {
                    match &opts.gate {
                        Some(gate) => gate.check().await,
                        None => Ok(()),
                    }
                }
            );
            let (v4, v6) = (gated(&gate, v4), gated(&gate, v6));
            // What the kernel saw since the last round: steered connects that failed.
            if let Ok(failures) = pins.proxy_failures() {
                for (i, addr) in [opts.proxy4, opts.proxy6].iter().enumerate() {
                    if let Some(addr) = addr
                        && failures[i] != failures_seen[i]
                    {
                        warn!(
                            proxy = %addr,
                            "a steered connect to the proxy failed (refused or timed out): the \
                             kernel sends new connections direct until a check after it succeeds"
                        );
                    }
                }
                failures_seen = failures;
            }
            for ((which, addr), outcome) in [(PROXY4, opts.proxy4), (PROXY6, opts.proxy6)]
                .into_iter()
                .zip([v4, v6])
            {
                let (Some(addr), Some(outcome)) = (addr, outcome) else {
                    continue;
                };
                let grant = &mut grants[which as usize];
                let ok = outcome.is_ok();
                if grant.last.as_ref() != Some(&outcome) {
                    match &outcome {
                        Ok(()) => {
                            info!(proxy = %addr, lease = ?opts.lease, "proxy serving: steering")
                        }
                        Err(why) => {
                            warn!(proxy = %addr, "proxy not serving, {why}: traffic goes direct")
                        }
                    }
                }
                grant.last = Some(outcome);
                if grant.needs_write(ok) {
                    match pins.set_proxy_lease(which, &lease_after(ok, started, opts.lease)) {
                        Ok(()) => grant.written = Some(ok),
                        Err(e) => {
                            grant.written = None;
                            warn!(proxy = %addr, error = %e, "cannot write the proxy's readiness lease");
                        }
                    }
                }
            }
            publish(&pins, &metrics);
            // Near the memory limit the kernel fails to record connections: said once per rise.
            if let Ok(c) = pins.counters()
                && c.allocation_failures() > allocation_failures
            {
                warn!(
                    unlogged = c.skipped_record_failed,
                    orig_dst_failed = c.publish_failed,
                    "the kernel could not allocate memory to record selected connections \
                     (l7r_kernel_allocation_failures_total): raise the daemon container's memory \
                     limit (on Linux 5.11+ the maps are charged to its memory cgroup)"
                );
                allocation_failures = c.allocation_failures();
            }
        }
    })
}

/// A check's outcome with the gate's: a missing gate fails a check the proxy itself passed
/// (a failing proxy keeps its own reason).
fn gated(
    gate: &Result<(), String>,
    outcome: Option<Result<(), CheckFailure>>,
) -> Option<Result<(), CheckFailure>> {
    match (gate, outcome) {
        (Err(why), Some(Ok(()))) => Some(Err(CheckFailure::Gate(why.clone()))),
        (_, outcome) => outcome,
    }
}

async fn check_opt(
    listener: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    limit: Duration,
) -> Option<Result<(), CheckFailure>> {
    match listener {
        Some(listener) => Some(check(listener, admin, limit).await),
        None => None,
    }
}

/// Publishes what the kernel programs decide now (not what the check saw: after a failed write,
/// or a failure the kernel saw, they differ).
pub fn publish(pins: &Dataplane, metrics: &Metrics) {
    match pins.proxy_readiness() {
        Ok((v4, v6)) => metrics.set_proxy_ready(v4, v6),
        Err(e) => {
            let e: DataplaneError = e;
            warn!(error = %e, "cannot read the proxies' readiness leases");
            metrics.set_proxy_ready(false, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_check_grants_a_lease_from_when_it_started() {
        let lease = lease_after(true, 1_000, Duration::from_secs(3));
        assert_eq!(lease.ready_until_ns, 3_000_001_000);
        assert_eq!(lease.checked_at_ns, 1_000);
        assert!(lease.steers(2_000, 0));
        assert!(!lease.steers(3_000_001_000, 0), "expired");
        assert!(
            !lease.steers(2_000, 1_500),
            "a failure after the check voids it"
        );
        assert!(
            lease.steers(2_000, 900),
            "a failure before the check is known"
        );
        assert_eq!(
            lease_after(false, 1_000, Duration::from_secs(3)),
            ProxyLease::NOT_READY
        );
        assert!(!ProxyLease::NOT_READY.steers(1, 0));
    }

    #[test]
    fn every_good_check_renews_and_a_failure_revokes_once() {
        let mut grant = Grant::default();
        assert!(grant.needs_write(false), "nothing written yet: revoke");
        grant.written = Some(false);
        assert!(!grant.needs_write(false), "already revoked");
        assert!(grant.needs_write(true));
        grant.written = Some(true);
        assert!(grant.needs_write(true), "renewed on every good check");
        assert!(grant.needs_write(false));
        grant.written = None;
        assert!(grant.needs_write(false), "a failed write is retried");
    }

    #[test]
    fn a_failing_gate_fails_a_good_check_only() {
        let missing: Result<(), String> = Err("the return path is missing".into());
        assert_eq!(
            gated(&missing, Some(Ok(()))),
            Some(Err(CheckFailure::Gate("the return path is missing".into())))
        );
        let refused = Some(Err(CheckFailure::Connect("refused".into())));
        assert_eq!(
            gated(&missing, refused.clone()),
            refused,
            "its own reason first"
        );
        assert_eq!(gated(&missing, None), None, "no such proxy");
        assert_eq!(gated(&Ok(()), Some(Ok(()))), Some(Ok(())));
        assert_eq!(
            CheckFailure::Gate("the return path is missing (x)".into()).to_string(),
            "the return path is missing (x)"
        );
    }

    #[tokio::test]
    async fn a_closed_port_fails_the_check() {
        // Bind, learn the port, close: nothing listens there now.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let got = check(addr, None, Duration::from_secs(1)).await;
        assert!(matches!(got, Err(CheckFailure::Connect(_))), "{got:?}");
    }

    #[tokio::test]
    async fn the_admin_must_answer_200() {
        use tokio::{
            io::{AsyncReadExt as _, AsyncWriteExt as _},
            net::TcpListener,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener_addr = listener.local_addr().unwrap();
        let serve = |status: &'static str| async move {
            let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = admin.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut s, _) = admin.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            });
            addr
        };
        let live = serve("200 OK").await;
        assert_eq!(
            check(listener_addr, Some(live), Duration::from_secs(1)).await,
            Ok(())
        );
        let draining = serve("503 Service Unavailable").await;
        let got = check(listener_addr, Some(draining), Duration::from_secs(1)).await;
        assert!(
            matches!(got, Err(CheckFailure::NotReady(ref e)) if e.contains("503")),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn an_admin_that_never_answers_times_out() {
        use tokio::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // Accepted by the kernel's queue, never read: a stopped Envoy.
        let hung = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let got = check(
            listener.local_addr().unwrap(),
            Some(hung.local_addr().unwrap()),
            Duration::from_millis(200),
        )
        .await;
        assert_eq!(got, Err(CheckFailure::TimedOut(Duration::from_millis(200))));
    }
}
