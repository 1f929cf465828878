//! Reliability: logging must never cost an application a request. The real Envoy and the real
//! daemon (`--proxy-admin`, as deployed), and a steady load of new connections from the client
//! pod (`l7r-load`, one HTTP request each) while a part fails. Each test prints what the load
//! saw, so a run shows the figures as well as the verdict.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use l7r_lab::{
    daemon::eventually,
    e2e::{World, cluster, web_service},
    envoy::Envoy,
    load::{Load, Report},
    termination::ProxyPod,
};

use crate::{LOAD, REDIRECTOR as EXE};

/// New connections per second: the load.
const RATE: u32 = 500;
/// Concurrent connections of the load (each worker has at most one open).
const WORKERS: u32 = 2;
/// Most requests a failure may cost: the connections in flight at that instant, one per
/// worker, and the connects refused before the kernel saw the first refusal.
const MAX_LOST: usize = 5;

fn world() -> Result<World> {
    World::new(EXE, &web_service(Some("true")).yaml(), true)
}

fn steered_now(w: &World) -> Result<bool> {
    Ok(w.lab.pinned_readiness()?.0)
}

/// Runs the load for `before`, calls `fault`, runs it for `after`, and returns what it saw.
fn under_load(
    w: &mut World,
    before: Duration,
    fault: impl FnOnce(&mut World) -> Result<()>,
    after: Duration,
) -> Result<Report> {
    let load = Load::start(LOAD, &w.lab, cluster(), RATE, WORKERS)?;
    thread::sleep(before);
    fault(w)?;
    thread::sleep(after);
    load.finish()
}

fn check_lost(what: &str, report: &Report) -> Result<()> {
    eprintln!("{what}, {RATE} new connections/s: {}", report.summary());
    ensure!(
        report.via_envoy() > 0 && report.direct() > 0,
        "the load should have gone through Envoy first and direct after: {}",
        report.summary()
    );
    ensure!(
        report.failed().len() <= MAX_LOST,
        "{what} cost more than the connections in flight: {}",
        report.summary()
    );
    Ok(())
}

#[test]
fn envoy_killed_under_load_costs_only_the_connections_in_flight() -> Result<()> {
    let mut w = world()?;
    let report = under_load(
        &mut w,
        Duration::from_secs(2),
        |w| w.envoy.kill(),
        Duration::from_secs(3),
    )?;
    check_lost("Envoy SIGKILLed", &report)
}

#[test]
fn daemon_and_envoy_killed_under_load_cost_only_the_connections_in_flight() -> Result<()> {
    let mut w = world()?;
    let report = under_load(
        &mut w,
        Duration::from_secs(2),
        |w| {
            // The daemon first, so nobody is left to notice Envoy's death but the kernel.
            w.daemon.kill()?;
            w.envoy.kill()
        },
        Duration::from_secs(3),
    )?;
    check_lost("daemon then Envoy SIGKILLed", &report)
}

#[test]
fn without_a_daemon_the_lease_runs_out_and_traffic_goes_direct() -> Result<()> {
    let mut w = world()?;
    w.daemon.kill()?;
    let killed = Instant::now();
    assert!(
        w.request("GET", "/still-leased")?.via_envoy(),
        "within the lease the last daemon granted, Envoy still serves"
    );
    // Nobody renews the lease (3 s, from the daemon's last check before the kill).
    eventually("the lease to run out", Duration::from_secs(5), || {
        Ok((!steered_now(&w)?).then_some(()))
    })?;
    let ran_out = killed.elapsed();
    ensure!(
        ran_out <= Duration::from_secs(3) + Duration::from_millis(500),
        "the lease outlived its 3 s: {ran_out:?}"
    );
    let r = w.request("GET", "/after-the-lease")?;
    assert_eq!(r.status, 200);
    assert!(
        !r.via_envoy(),
        "no daemon vouches for Envoy any more: straight to the backend"
    );
    let status = Command::new(EXE)
        .args(["status", "--pin-dir", &w.lab.pin_dir.to_string_lossy()])
        .output()?;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("NOT READY, the lease ran out"),
        "status must say why:\n{text}"
    );
    eprintln!("lease ran out {ran_out:?} after the daemon was killed");
    Ok(())
}

#[test]
fn a_stopped_envoy_is_given_up_within_a_check_and_taken_back_when_it_resumes() -> Result<()> {
    let w = world()?;
    assert!(w.request("GET", "/before")?.via_envoy());
    w.envoy.pause();
    let stopped = Instant::now();
    // A connect alone would still succeed (the kernel fills the accept queue); the admin's
    // /ready does not answer. The lab's daemon checks every 200 ms.
    eventually(
        "the stopped Envoy to be given up",
        Duration::from_secs(2),
        || Ok((!steered_now(&w)?).then_some(())),
    )
    .with_context(|| w.daemon.log())?;
    let detected = stopped.elapsed();
    let r = w.request("GET", "/while-stopped")?;
    assert!(!r.via_envoy(), "a new connection goes direct");
    w.envoy.resume();
    eventually("Envoy to be taken back", Duration::from_secs(3), || {
        Ok(steered_now(&w)?.then_some(()))
    })?;
    assert!(w.request("GET", "/after")?.via_envoy());
    eprintln!("a SIGSTOPped Envoy was given up after {detected:?}");
    Ok(())
}

/// Keep-alive connections of the rollout tests: each makes requests back to back.
const KEEP_ALIVE_WORKERS: u32 = 4;

/// Replaces the world's Envoy with one run as the proxy DaemonSet runs it (its drain flags),
/// and waits until the daemon steers to it.
fn envoy_as_deployed(w: &mut World, pod: &ProxyPod) -> Result<()> {
    w.envoy.stop()?;
    w.envoy = Envoy::start_with(&w.lab.node_ns, &w.lab.proxy_cgroup, &pod.envoy_args)?;
    eventually("steering to the new Envoy", Duration::from_secs(10), || {
        Ok((steered_now(w)? && w.request("GET", "/")?.via_envoy()).then_some(()))
    })
}

/// Envoy's rollout as the manifests do it: the proxy pod is terminated the way
/// `deploy/proxy-daemonset.yaml` says (the collector's pre-stop hook drains Envoy, Envoy's
/// waits for it, then SIGTERM), and a new Envoy starts once it is gone (maxUnavailable 1).
/// Keep-alive connections making requests back to back through it lose nothing: each is
/// closed by Envoy after a response, and its client's next connection goes direct. Nor do
/// clients that open a connection per request and read each answer to the stream's end
/// (`l7r-load`, 2 s timeout): with Envoy's default `drain_timeout` (5 s) those hung until their
/// timeout, which is why envoy.yaml sets it.
#[test]
fn a_proxy_rollout_as_the_manifests_do_it_fails_no_request() -> Result<()> {
    let pod = ProxyPod::from_manifest()?;
    let mut w = world()?;
    envoy_as_deployed(&mut w, &pod)?;
    let load = Load::start_keep_alive(LOAD, &w.lab, cluster(), KEEP_ALIVE_WORKERS)?;
    // And clients that open a connection per request and read the answer to its end.
    let fresh = Load::start(LOAD, &w.lab, cluster(), 200, WORKERS)?;
    thread::sleep(Duration::from_secs(1));
    let termination = pod.terminate(&mut w.envoy, &w.lab, EXE)?;
    w.restart_envoy()?;
    eventually("steering to the new Envoy", Duration::from_secs(10), || {
        Ok(steered_now(&w)?.then_some(()))
    })
    .with_context(|| w.daemon.log())?;
    thread::sleep(Duration::from_secs(1));
    let (report, fresh) = (load.finish()?, fresh.finish()?);
    eprintln!(
        "proxy rollout (terminated in {:.1} s), {KEEP_ALIVE_WORKERS} keep-alive connections: {}\n\
         new connections: {}\ndrain hook: {}",
        termination.took.as_secs_f64(),
        report.summary(),
        fresh.summary(),
        termination.drain_output.trim()
    );
    ensure!(
        fresh.failed().is_empty(),
        "a drained rollout failed requests on new connections: {}",
        fresh.summary()
    );
    ensure!(
        report.failed().is_empty(),
        "a drained rollout failed requests: {}\ndrain hook: {}\ndaemon: {}",
        report.summary(),
        termination.drain_output,
        w.daemon.log()
    );
    ensure!(
        report.via_envoy() > 0 && report.direct() > 0,
        "the load should have gone through Envoy, then direct once Envoy closed the \
         connections: {}",
        report.summary()
    );
    ensure!(
        termination.drain_output.contains("connections left: 0"),
        "Envoy closed every connection before it stopped: {}",
        termination.drain_output
    );
    ensure!(
        w.request("GET", "/")?.via_envoy(),
        "a new connection goes through the new Envoy"
    );
    Ok(())
}

/// The daemon's rollout as the manifests do it (its DaemonSet has no pre-stop hook: SIGTERM,
/// then the new pod): Envoy is in another pod and stays, so keep-alive connections through it
/// are never reset (every request answered, through Envoy), and new connections made during
/// the update are steered as before (the lease outlives the restart) or go direct; none fails.
#[test]
fn a_daemon_update_fails_no_request_and_resets_no_proxied_connection() -> Result<()> {
    let mut w = world()?;
    let kept = Load::start_keep_alive(LOAD, &w.lab, cluster(), KEEP_ALIVE_WORKERS)?;
    let fresh = Load::start(LOAD, &w.lab, cluster(), 200, WORKERS)?;
    thread::sleep(Duration::from_secs(1));
    w.daemon.terminate()?;
    w.restart_daemon(EXE)?;
    eventually("the new daemon's lease", Duration::from_secs(10), || {
        Ok(steered_now(&w)?.then_some(()))
    })
    .with_context(|| w.daemon.log())?;
    thread::sleep(Duration::from_secs(1));
    let (kept, fresh) = (kept.finish()?, fresh.finish()?);
    eprintln!(
        "daemon update: keep-alive {}; new connections {}",
        kept.summary(),
        fresh.summary()
    );
    ensure!(
        kept.failed().is_empty() && kept.via_envoy() == kept.sent() && kept.sent() > 0,
        "a proxied keep-alive connection was disturbed by the daemon's update: {}",
        kept.summary()
    );
    ensure!(
        fresh.failed().is_empty(),
        "a new connection failed during the daemon's update: {}",
        fresh.summary()
    );
    ensure!(
        fresh.via_envoy() > 0,
        "new connections were steered: {}",
        fresh.summary()
    );
    Ok(())
}
