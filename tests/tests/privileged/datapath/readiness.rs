//! Readiness: the lease the daemon grants each proxy, and the kernel's own verdict when a
//! steered connect fails. Either way, not ready means new connections go direct.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};
use l7r_lab::{
    lab::{BACKEND4, BACKEND6, CLIENT4, CLIENT6, Lab, NODE4_UPSTREAM, SERVICE_PORT, sa},
    proxy::Upstream,
};
use redirector::clock::monotonic_ns;
use redirector_common::{PROXY4, ProxyLease};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("constant address")
}

fn service() -> SocketAddr {
    sa(BACKEND4, SERVICE_PORT)
}

#[test]
fn a_lease_that_runs_out_fails_open() -> Result<()> {
    const LEASE: Duration = Duration::from_secs(2);
    let mut lab = Lab::new()?;
    let proxy = lab.start_proxy(Upstream::Plain)?;
    lab.select(service())?;
    let granted = Instant::now();
    let now = monotonic_ns();
    lab.dp().set_proxy_lease(
        PROXY4,
        &ProxyLease {
            ready_until_ns: now + LEASE.as_nanos() as u64,
            checked_at_ns: now,
        },
    )?;

    let during = lab.connect(service())?.ask("leased")?;
    ensure!(
        granted.elapsed() < LEASE,
        "test too slow: the first connection took longer than the lease"
    );
    assert_eq!(during, ip(NODE4_UPSTREAM), "within the lease: proxied");

    // Nobody renews it (as when the daemon is gone).
    thread::sleep(LEASE.saturating_sub(granted.elapsed()) + Duration::from_millis(100));
    assert_eq!(
        lab.connect(service())?.ask("expired")?,
        ip(CLIENT4),
        "a lease that ran out: direct"
    );
    assert_eq!(lab.dp().counters()?.skipped_proxy_not_ready, 1);
    assert_eq!(proxy.accepted_count(), 1);
    assert!(
        !lab.pinned_readiness()?.0,
        "the pinned lease says not ready"
    );
    Ok(())
}

#[test]
fn a_refused_connect_voids_the_lease_at_once() -> Result<()> {
    let mut lab = Lab::new()?;
    lab.select(service())?;
    lab.select(sa(BACKEND6, SERVICE_PORT))?;
    assert_eq!(lab.pinned_readiness()?, (true, true));

    // No proxy listens: the proxy died, and nobody has told the kernel yet.
    match lab.connect(service()) {
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == ErrorKind::ConnectionRefused)
            }) => {}
        Err(e) => bail!("expected the proxy's refusal, got {e:#}"),
        Ok(_) => bail!("the connect succeeded: nothing should listen on the proxy's port"),
    }
    assert_eq!(lab.dp().counters()?.proxy_connect_failed, 1);

    // The next one goes direct at once, without anyone writing to the maps.
    assert_eq!(
        lab.connect(service())?.ask("after the refusal")?,
        ip(CLIENT4),
        "direct at once"
    );
    assert_eq!(lab.dp().counters()?.skipped_proxy_not_ready, 1);
    assert_eq!(
        lab.pinned_readiness()?,
        (false, true),
        "only the proxy that refused is voided"
    );

    // The IPv6 proxy is down too: the same, per family.
    assert!(lab.connect(sa(BACKEND6, SERVICE_PORT)).is_err());
    assert_eq!(
        lab.connect(sa(BACKEND6, SERVICE_PORT))?.ask("v6")?,
        ip(CLIENT6)
    );

    // A check after the failure re-arms it.
    let _proxy = lab.start_proxy(Upstream::Plain)?;
    lab.dp().set_proxy_ready(true, true)?;
    assert_eq!(
        lab.connect(service())?.ask("re-armed")?,
        ip(NODE4_UPSTREAM),
        "a check after the failure steers again"
    );
    Ok(())
}

#[test]
fn a_lease_granted_by_a_check_older_than_the_failure_stays_void() -> Result<()> {
    let mut lab = Lab::new()?;
    lab.select(service())?;
    // A check started, and meanwhile the proxy died and a connect was refused.
    let check_started = monotonic_ns();
    assert!(lab.connect(service()).is_err(), "refused by the dead proxy");
    // The check's result arrives after the failure: it must not re-arm.
    lab.dp().set_proxy_lease(
        PROXY4,
        &ProxyLease {
            ready_until_ns: u64::MAX,
            checked_at_ns: check_started,
        },
    )?;
    assert_eq!(lab.connect(service())?.ask("still void")?, ip(CLIENT4));
    Ok(())
}

#[test]
fn a_proxy_that_does_not_answer_syns_is_given_up_after_one_timeout() -> Result<()> {
    let mut lab = Lab::new()?;
    let _proxy = lab.start_proxy(Upstream::Plain)?;
    lab.select(service())?;
    lab.drop_syns_to_proxy()?;

    let lab = &lab;
    thread::scope(|scope| -> Result<()> {
        // Its SYNs go unanswered; it gives up only after the client's 5 s connect timeout.
        let stuck = scope.spawn(|| lab.connect(service()).map(|_| ()));
        // The first SYN retransmission timeout comes after 1 s.
        thread::sleep(Duration::from_millis(2500));
        ensure!(
            !stuck.is_finished(),
            "the stuck connect ended early, so its close, not the timeout, voided the lease"
        );
        assert_eq!(
            lab.connect(service())?
                .ask("while the proxy is a black hole")?,
            ip(CLIENT4),
            "after one SYN timeout at the proxy, new connections go direct"
        );
        assert!(
            stuck
                .join()
                .map_err(|_| anyhow::anyhow!("panicked"))?
                .is_err(),
            "the first connect cannot have reached the proxy"
        );
        Ok(())
    })?;
    Ok(())
}
