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
    load::{Load, Report},
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
