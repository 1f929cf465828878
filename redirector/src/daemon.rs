//! `redirector run`: the daemon. It loads and attaches the datapath (adopting what an earlier
//! run pinned), then keeps the `services` map equal to what the Services select, checks the
//! proxy, and serves metrics. On SIGTERM or SIGINT it exits and leaves the datapath in place:
//! steering goes on unchanged until the next run adopts it.
//!
//! The proxy's readiness is a lease (`health`): once the daemon stops renewing it, the programs
//! stop steering within `--ready-lease`, and a steered connect that fails voids it at once. Before
//! it exits the daemon keeps checking the proxy for `--shutdown-grace`, so that a proxy that stops
//! together with it (a pod deleted or rolled) has its lease revoked rather than left to run out.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info, warn};

use crate::{
    build_info,
    cgroup::{cgroup_ref, cgroup2_mount, cgroup2_mount_containing},
    clock,
    dataplane::{Dataplane, LoadOptions, warn_capacity_mismatch},
    exclusions,
    health::{self, Gate, HealthOptions},
    k8s::{
        sources::{self, Kinds, Source, SourceStats, kube::EventPublisher},
        store::{Change, ObjectStore},
    },
    metrics::{self, KernelCounters, Metrics},
    proxy_config::ProxySettings,
    reconcile::Reconciler,
    return_path::{self, ReturnPath},
    selection::{Delta, Finding, Incremental, Rules, Touched},
};

/// Everything `redirector run` was asked.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The IPv4 proxy.
    pub proxy: Option<SocketAddr>,
    /// The IPv6 proxy.
    pub proxy6: Option<SocketAddr>,
    /// How many consecutive ports the proxy listens on.
    pub proxy_ports: u16,
    /// Where Services come from.
    pub source: Source,
    /// The cgroup v2 directory to attach to; `None`: the cgroup2 root.
    pub cgroup: Option<PathBuf>,
    /// The pin directory.
    pub pin_dir: PathBuf,
    /// The selecting annotation.
    pub annotation: String,
    /// Cgroups never steered.
    pub exclude_cgroups: Vec<PathBuf>,
    /// UIDs never steered.
    pub exclude_uids: Vec<u32>,
    /// `(mark, mask)` never steered.
    pub exclude_mark: Option<(u32, u32)>,
    /// Where to serve metrics.
    pub metrics_addr: Option<SocketAddr>,
    /// How often to check the proxy.
    pub proxy_check_interval: Duration,
    /// How long a good check lets the kernel steer to the proxy.
    pub ready_lease: Duration,
    /// Envoy's admin address, whose `/ready` the check asks too.
    pub proxy_admin: Option<SocketAddr>,
    /// How long to keep checking the proxy after SIGTERM before exiting.
    pub shutdown_grace: Duration,
    /// Capacity of a newly created `services` map.
    pub services_capacity: u32,
    /// `--upstream-source client`: the return path to install and keep (`None`: `node`).
    pub return_path: Option<return_path::Settings>,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: RunOptions) -> Result<()> {
    // glibc gives threads that allocate at once arenas of their own, and each keeps what was
    // freed in it: 20 of the daemon's 66 MiB at 10 000 Services (docs/benchmarks.md, section
    // 6). The daemon allocates little per second; one arena is plenty.
    // SAFETY: mallopt only sets an allocator parameter.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1)
    };
    info!(
        version = build_info::VERSION,
        revision = build_info::SOURCE_REVISION,
        ebpf_sha256 = build_info::ebpf_object_sha256().unwrap_or("none"),
        "redirector starting"
    );
    // Everything that can be checked without touching the kernel is checked first.
    if opts.ready_lease <= opts.proxy_check_interval {
        anyhow::bail!(
            "--ready-lease ({:?}) must be longer than --proxy-check-interval ({:?}), or the \
             lease would run out between two good checks and traffic would go direct; e.g. \
             --ready-lease=3s with --proxy-check-interval=1s",
            opts.ready_lease,
            opts.proxy_check_interval
        );
    }
    clock::check_monotonic_not_shifted()?;
    let cgroup = match &opts.cgroup {
        Some(cgroup) => cgroup.clone(),
        None => cgroup2_mount()?,
    };
    let mount = cgroup2_mount_containing(&cgroup)?;
    // The attach point's own tasks (on a node: the kernel's threads in the root cgroup) are
    // never steered; every cgroup below it is.
    let attach_level = cgroup_ref(&cgroup, &mount)?.level;
    let settings = ProxySettings {
        proxy4: opts.proxy,
        proxy6: opts.proxy6,
        proxy_ports: opts.proxy_ports,
        steer_min_level: attach_level + 1,
        exclude_cgroups: opts
            .exclude_cgroups
            .iter()
            .map(|p| cgroup_ref(p, &mount))
            .collect::<Result<_, _>>()
            .context("--exclude-cgroup")?,
        exclude_uids: opts.exclude_uids.clone(),
        exclude_mark: opts.exclude_mark,
    };
    let config = settings.to_config()?;
    if let Some(return_path) = &opts.return_path {
        return_path.validate()?;
    }
    let metrics_listener = match opts.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?,
        ),
        None => None,
    };

    let (tx, mut rx) = mpsc::unbounded_channel::<Change>();
    let source_stats = Arc::new(SourceStats::default());
    let metrics = Arc::new(Metrics::new(Arc::clone(&source_stats)));
    // Sources next: a services file that does not parse must stop us before we attach.
    let started = sources::start(&opts.source, Kinds::DAEMON, tx, source_stats).await?;
    let events = started.client.map(EventPublisher::new);
    let _source_tasks = started.tasks;

    // The return path goes in before anything is steered: without it every connection the
    // proxy dials from a client's address would hang. The health checker keeps it (below).
    let return_path = match opts.return_path {
        Some(settings) => Some(Arc::new(
            ReturnPath::install(settings)
                .context("cannot install the return path of --upstream-source client")?,
        )),
        None => None,
    };

    let load = LoadOptions {
        pin_dir: opts.pin_dir.clone(),
        services_capacity: opts.services_capacity,
    };
    let mut dataplane = Dataplane::load(&load)?;
    warn_capacity_mismatch(&dataplane, opts.services_capacity);
    dataplane.attach(&cgroup)?;
    // A lease the previous run granted stays in force while the proxies are the same, so a
    // restart causes no fail-open blip; for other proxies it must not carry over.
    let pinned = dataplane.config()?;
    if pinned.proxy4() != config.proxy4() || pinned.proxy6() != config.proxy6() {
        dataplane.set_proxy_ready(false, false)?;
    }
    dataplane.set_config(&config)?;
    metrics.set_capacity(dataplane.services_capacity());
    health::publish(&dataplane, &metrics);
    let mut reconciler = Reconciler::new(dataplane)?;
    info!(
        pinned_destinations = reconciler.current().services.len(),
        cgroup = %cgroup.display(),
        "datapath ready; waiting for the first full sync"
    );

    let _health = health::start(
        HealthOptions {
            proxy4: settings.proxy4,
            proxy6: settings.proxy6,
            admin: opts.proxy_admin,
            interval: opts.proxy_check_interval,
            lease: opts.ready_lease,
            gate: return_path.clone().map(|rp| {
                Gate(Arc::new(move || match rp.ensure() {
                    Ok(_) => Ok(()),
                    Err(e) => Err(format!("the return path is missing ({e:#})")),
                }))
            }),
        },
        Dataplane::open_pinned(&opts.pin_dir)?,
        Arc::clone(&metrics),
    );
    let _exclusions = exclusions::follow(
        opts.exclude_cgroups.clone(),
        mount.clone(),
        opts.proxy_check_interval,
        Dataplane::open_pinned(&opts.pin_dir)?,
    );
    let _metrics_server = match metrics_listener {
        Some(listener) => {
            let pins = Mutex::new(Dataplane::open_pinned(&opts.pin_dir)?);
            let kernel: KernelCounters = Arc::new(move || {
                pins.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .counters()
                    .map_err(|e| warn!(error = %e, "cannot read the kernel counters"))
                    .ok()
            });
            Some(metrics::serve(listener, Arc::clone(&metrics), kernel))
        }
        None => None,
    };

    let proxies: Vec<SocketAddr> = settings
        .proxy4
        .iter()
        .chain(&settings.proxy6)
        .copied()
        .collect();
    let rules = Rules::new(&opts.annotation).with_proxies(&proxies);
    let mut store = ObjectStore::selecting(&opts.annotation);
    let mut selection = Incremental::new(rules);
    // The Services changed since selection last looked.
    let mut touched = Touched::Nothing;
    let mut reported: BTreeSet<Finding> = BTreeSet::new();
    let mut retry = false;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            change = rx.recv() => {
                let Some(change) = change else {
                    error!("every source stopped; exiting and leaving the datapath in place");
                    return Ok(());
                };
                touched.add(store.touched(&change));
                let mut changed = store.update(change);
                // Take everything already queued, then reconcile once, unless none of it is
                // anything selection sees (an unselected Service's slice, say) and the last
                // reconcile succeeded: a failed one is retried on the next change of any kind.
                while let Ok(more) = rx.try_recv() {
                    touched.add(store.touched(&more));
                    changed |= store.update(more);
                }
                if (changed || retry) && store.synced() {
                    let touched = std::mem::take(&mut touched);
                    retry = !reconcile_once(&store, &mut selection, touched, retry, &mut reconciler, &metrics, &mut reported, events.as_ref()).await;
                    if let Some(rp) = &return_path {
                        sync_hairpin(rp, &store, &opts.annotation).await;
                    }
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    if !opts.shutdown_grace.is_zero() {
        info!(
            grace = ?opts.shutdown_grace,
            "stopping; still checking the proxy meanwhile, so a proxy that stops with us fails open"
        );
        // The readiness checker runs on during the sleep; a second signal cuts it short.
        tokio::select! {
            _ = tokio::time::sleep(opts.shutdown_grace) => {}
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    }
    info!("exiting; the datapath stays in place and the next run adopts it");
    Ok(())
}

/// Keeps the hairpin sets equal to the selected Services' ready endpoints. A failure is
/// logged; the next change retries, and a repair re-creates the sets from what was asked.
async fn sync_hairpin(rp: &Arc<ReturnPath>, store: &ObjectStore, annotation: &str) {
    let want = return_path::hairpin_endpoints(store.services(), store.slices(), annotation);
    let rp = Arc::clone(rp);
    let done = tokio::task::spawn_blocking(move || rp.set_hairpin(want)).await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(error = %format!("{e:#}"), "cannot update the return path's hairpin sets")
        }
        Err(e) => warn!(error = %e, "the hairpin update did not finish"),
    }
}

/// Reconciles the maps with the selection once and reports new findings; whether the maps
/// now hold it (false: retry on the next change). Only the `touched` Services are
/// recomputed and only the destinations that changed are diffed, unless everything may have
/// changed or the last reconcile failed (`resync`): then the whole selection is diffed
/// against the maps, so a failure never leaves them diverged.
#[allow(clippy::too_many_arguments)]
async fn reconcile_once(
    store: &ObjectStore,
    selection: &mut Incremental,
    touched: Touched,
    resync: bool,
    reconciler: &mut Reconciler<Dataplane>,
    metrics: &Metrics,
    reported: &mut BTreeSet<Finding>,
    events: Option<&EventPublisher>,
) -> bool {
    let started = Instant::now();
    let delta = selection.refresh(store, touched);
    let desired = selection.desired();
    let result = match delta {
        Delta::Some { keys, services } if !resync => reconciler.reconcile_delta(
            desired,
            &keys,
            &services,
            |s| selection.is_selected(s),
            selection.selected_services(),
        ),
        _ => reconciler.reconcile(desired),
    };
    let ok = match result {
        Ok(outcome) => {
            metrics.reconciled(
                started.elapsed(),
                outcome.services,
                outcome.entries,
                outcome.overflow,
            );
            if outcome.inserted + outcome.removed > 0 {
                info!(
                    services = outcome.services,
                    destinations = outcome.entries,
                    added = outcome.inserted,
                    removed = outcome.removed,
                    "selection updated"
                );
            }
            if outcome.overflow > 0 {
                error!(
                    not_steered = outcome.overflow,
                    capacity = reconciler.maps_mut().services_capacity(),
                    "the services map is full: these destinations are not steered; raise --services-capacity (and `redirector detach` so the map is recreated)"
                );
            }
            true
        }
        Err(e) => {
            metrics.reconcile_error();
            error!(error = %e, "reconcile failed; will retry on the next change");
            false
        }
    };
    // Report each finding once, for as long as it stands.
    let now: BTreeSet<Finding> = selection.findings();
    for finding in now.difference(reported) {
        warn!("{finding}");
        if let (Some(events), Finding::BadAnnotationValue { service, .. }) = (events, finding)
            && let Some(svc) = store.service(&service.namespace, &service.name)
        {
            events
                .warn(svc, "InvalidAnnotation", finding.to_string())
                .await;
        }
    }
    *reported = now;
    ok
}
