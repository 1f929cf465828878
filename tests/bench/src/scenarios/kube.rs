//! Scenario 6: the daemon's control plane in kube mode at cluster scale. `redirector run
//! --kubeconfig` watches the Kubernetes API test server (`kube_fake`, which kube-rs talks to as
//! to an API server), in a lab of its own like scenario 3, and for each cluster size:
//!
//! - the cluster: `S` Services in 100 namespaces, each with one EndpointSlice, `E` endpoints in
//!   all, every tenth Service selected (annotation `projectcalico.org/l7-logging: "true"`). The
//!   objects are shaped like a real cluster's (Helm labels and annotations, managed fields,
//!   endpoints with node, zone and Pod references), since what the daemon must not keep is
//!   exactly that. They are loaded into the server's store directly: loading is not measured.
//! - start-up sync: from starting the daemon (nothing pinned) to every selected destination
//!   (each selected Service's ClusterIP:80 and its ready endpoints:8080) in the pinned map;
//! - change latency, under a background churn of endpoint changes (an endpoint's readiness
//!   flipped) on other Services: an annotation added to an unselected Service, an endpoint
//!   added to a selected Service's slice, a selected Service deleted, interleaved; from the
//!   write in the API server to the map following, polled every millisecond;
//! - the daemon's peak (`VmHWM`) and resident (`VmRSS`) memory once synced and at the end, and
//!   its CPU time (`utime + stime` of `/proc/PID/stat`) for the sync and over the changes.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    ops::Range,
    path::{Path, PathBuf},
    str::FromStr,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use kube_fake::{KubeApiServer, Options, Resource};
use redirector::dataplane::detach;
use redirector_common::{DEFAULT_SERVICES_CAPACITY, ServiceKey};
use serde_json::{Value, json};

use l7r_lab::lab::{Lab, LabOptions};

use crate::{
    destinations::{Rng, nth_address},
    machine::{kib, proc_field},
    report::KubeResult,
    scenarios::{
        check_interrupted,
        control::{DaemonProcess, LIMIT, PinnedServices, wait_for},
        progress,
    },
};

/// What scenario 6 is asked to do.
#[derive(Clone, Debug)]
pub struct Params {
    /// The cluster sizes, one run each.
    pub sizes: Vec<Size>,
    /// Changes measured per kind (annotation added, endpoint added, Service deleted).
    pub changes: usize,
    /// Background endpoint changes per second on other Services.
    pub churn: u32,
    /// Start-up syncs measured per size.
    pub syncs: usize,
    /// The daemon binary (`redirector`).
    pub daemon: PathBuf,
    /// Seed of the churn and of the pauses between changes.
    pub seed: u64,
}

/// A cluster size: Services and endpoints in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Services.
    pub services: usize,
    /// Endpoints over all their EndpointSlices.
    pub endpoints: usize,
}

impl FromStr for Size {
    type Err = String;

    /// `SERVICES:ENDPOINTS`, e.g. `10000:100000`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (services, endpoints) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not SERVICES:ENDPOINTS"))?;
        let number = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|e| format!("{t:?} in {s:?}: {e}"))
        };
        let size = Size {
            services: number(services)?,
            endpoints: number(endpoints)?,
        };
        if size.services < 20 {
            return Err(format!("{s:?}: at least 20 Services"));
        }
        // One slice per Service, and the API allows at most 1 000 endpoints in a slice.
        if size.endpoints < size.services || size.endpoints > 1000 * size.services {
            return Err(format!("{s:?}: between 1 and 1 000 endpoints per Service"));
        }
        Ok(size)
    }
}

/// Namespaces the Services are spread over.
const NAMESPACES: usize = 100;
/// One Service in this many is selected.
const SELECTED_EVERY: usize = 10;
/// The Services' port and their endpoints' port.
const SERVICE_PORT: u16 = 80;
const ENDPOINT_PORT: u16 = 8080;
/// The ClusterIPs, the endpoints' addresses, and the endpoints the changes add.
const CLUSTER_IPS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 0);
const ENDPOINT_IPS: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 0);
const ADDED_IPS: Ipv4Addr = Ipv4Addr::new(10, 160, 0, 0);
/// When every generated object was last written, as its managed fields say.
const WRITTEN: &str = "2026-01-01T00:00:00Z";
/// How many changes the API server keeps for watches to replay (the real server keeps about
/// five minutes' worth).
const HISTORY: usize = 20_000;

/// The generated cluster of one size. Pure: the objects and the map keys they select.
#[derive(Clone, Copy, Debug)]
pub struct Cluster {
    size: Size,
}

impl Cluster {
    /// The cluster of `size`.
    pub fn new(size: Size) -> Self {
        Self { size }
    }

    fn namespace(i: usize) -> String {
        format!("team-{}", i % NAMESPACES)
    }

    fn name(i: usize) -> String {
        format!("svc-{i}")
    }

    /// Whether Service `i` is selected from the start.
    pub fn selected(i: usize) -> bool {
        i.is_multiple_of(SELECTED_EVERY)
    }

    /// Service `i`'s endpoints, as indices into all endpoints: spread evenly, the first
    /// Services taking one more when they do not divide.
    pub fn endpoints_of(&self, i: usize) -> Range<usize> {
        let (per, extra) = (
            self.size.endpoints / self.size.services,
            self.size.endpoints % self.size.services,
        );
        let start = i * per + i.min(extra);
        start..start + per + usize::from(i < extra)
    }

    /// The map key of Service `i`'s ClusterIP.
    pub fn cluster_key(i: usize) -> ServiceKey {
        key(nth_address(CLUSTER_IPS, i))
    }

    /// The map key of endpoint `e`.
    pub fn endpoint_key(e: usize) -> ServiceKey {
        key_port(nth_address(ENDPOINT_IPS, e), ENDPOINT_PORT)
    }

    /// The map key of the `n`-th endpoint a change adds.
    pub fn added_key(n: usize) -> ServiceKey {
        key_port(nth_address(ADDED_IPS, n), ENDPOINT_PORT)
    }

    /// The entries the selected Services put in the map: a ClusterIP and every endpoint each.
    pub fn destinations(&self) -> usize {
        (0..self.size.services)
            .filter(|&i| Self::selected(i))
            .map(|i| 1 + self.endpoints_of(i).len())
            .sum()
    }

    /// Service `i`, annotated to be selected when `selected`.
    pub fn service(&self, i: usize, selected: bool) -> Value {
        let (ns, name) = (Self::namespace(i), Self::name(i));
        let ip = nth_address(CLUSTER_IPS, i).to_string();
        let mut annotations = json!({
            "meta.helm.sh/release-name": "bench",
            "meta.helm.sh/release-namespace": ns,
        });
        if selected {
            annotations["projectcalico.org/l7-logging"] = json!("true");
        }
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": name, "namespace": ns,
                "labels": helm_labels(&name),
                "annotations": annotations,
                "managedFields": [{
                    "manager": "helm", "operation": "Update", "apiVersion": "v1",
                    "time": WRITTEN, "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:metadata": {
                            "f:annotations": {".": {}, "f:meta.helm.sh/release-name": {},
                                              "f:meta.helm.sh/release-namespace": {}},
                            "f:labels": {".": {}, "f:app.kubernetes.io/instance": {},
                                         "f:app.kubernetes.io/managed-by": {},
                                         "f:app.kubernetes.io/name": {}, "f:helm.sh/chart": {}}
                        },
                        "f:spec": {
                            "f:internalTrafficPolicy": {},
                            "f:ports": {".": {}, "k:{\"port\":80,\"protocol\":\"TCP\"}": {
                                ".": {}, "f:name": {}, "f:port": {}, "f:protocol": {},
                                "f:targetPort": {}}},
                            "f:selector": {}, "f:sessionAffinity": {}, "f:type": {}
                        }
                    }
                }]
            },
            "spec": {
                "clusterIP": ip, "clusterIPs": [ip],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "internalTrafficPolicy": "Cluster",
                "ports": [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP",
                           "targetPort": ENDPOINT_PORT}],
                "selector": {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": "bench"},
                "sessionAffinity": "None", "type": "ClusterIP"
            },
            "status": {"loadBalancer": {}}
        })
    }

    /// Service `i`'s EndpointSlice, as the EndpointSlice controller writes it: its endpoints,
    /// then the `added` ones; the first not ready when `first_unready`.
    pub fn slice(&self, i: usize, added: Range<usize>, first_unready: bool) -> Value {
        let (ns, name) = (Self::namespace(i), Self::name(i));
        let addresses = self
            .endpoints_of(i)
            .map(|e| (e, nth_address(ENDPOINT_IPS, e)))
            .chain(added.map(|n| (n, nth_address(ADDED_IPS, n))));
        let endpoints: Vec<Value> = addresses
            .enumerate()
            .map(|(k, (e, ip))| {
                json!({
                    "addresses": [ip.to_string()],
                    "conditions": {"ready": !(k == 0 && first_unready), "serving": true,
                                   "terminating": false},
                    "nodeName": format!("node-{}", e % 100),
                    "targetRef": {"kind": "Pod", "namespace": ns,
                                  "name": format!("{name}-7d9c8b6f5-{e:05x}"),
                                  "uid": uid(2, e)},
                    "zone": format!("zone-{}", e % 3)
                })
            })
            .collect();
        let mut labels = helm_labels(&name);
        labels["kubernetes.io/service-name"] = json!(name);
        labels["endpointslice.kubernetes.io/managed-by"] = json!("endpointslice-controller.k8s.io");
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-x7k2p"), "namespace": ns,
                "generateName": format!("{name}-"),
                "labels": labels,
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": WRITTEN},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                                     "uid": uid(1, i), "controller": true,
                                     "blockOwnerDeletion": true}],
                "managedFields": [{
                    "manager": "kube-controller-manager", "operation": "Update",
                    "apiVersion": "discovery.k8s.io/v1", "time": WRITTEN,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:addressType": {}, "f:endpoints": {}, "f:ports": {},
                        "f:metadata": {
                            "f:annotations": {".": {},
                                "f:endpoints.kubernetes.io/last-change-trigger-time": {}},
                            "f:generateName": {},
                            "f:labels": {".": {}, "f:app.kubernetes.io/instance": {},
                                         "f:app.kubernetes.io/managed-by": {},
                                         "f:app.kubernetes.io/name": {},
                                         "f:endpointslice.kubernetes.io/managed-by": {},
                                         "f:helm.sh/chart": {},
                                         "f:kubernetes.io/service-name": {}},
                            "f:ownerReferences": {".": {},
                                format!("k:{{\"uid\":\"{}\"}}", uid(1, i)): {}}
                        }
                    }
                }]
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": ENDPOINT_PORT, "protocol": "TCP"}]
        })
    }

    /// Every Service and EndpointSlice.
    pub fn objects(&self) -> Vec<Value> {
        (0..self.size.services)
            .flat_map(|i| {
                [
                    self.service(i, Self::selected(i)),
                    self.slice(i, 0..0, false),
                ]
            })
            .collect()
    }

    /// The Services the measured changes use (the first half; the churn has the second):
    /// unselected ones to annotate, selected ones to add an endpoint to, and other selected
    /// ones to delete, `per_kind` each.
    pub fn targets(&self, per_kind: usize) -> Result<Targets> {
        let half = self.size.services / 2;
        let unselected: Vec<usize> = (0..half).filter(|&i| !Self::selected(i)).collect();
        let selected: Vec<usize> = (0..half).filter(|&i| Self::selected(i)).collect();
        if unselected.len() < per_kind || selected.len() < 2 * per_kind {
            bail!(
                "{} Services are too few for {per_kind} changes of each kind (the first half \
                 holds {} selected ones, and {} are needed)",
                self.size.services,
                selected.len(),
                2 * per_kind
            );
        }
        Ok(Targets {
            annotate: unselected[..per_kind].to_vec(),
            add_endpoint: selected[..per_kind].to_vec(),
            delete: selected[selected.len() - per_kind..].to_vec(),
        })
    }

    /// The Services the churn changes: the second half.
    pub fn churned(&self) -> Range<usize> {
        self.size.services / 2..self.size.services
    }
}

/// The Services each kind of measured change uses, disjoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    /// Unselected Services that get the annotation.
    pub annotate: Vec<usize>,
    /// Selected Services whose slice gets an endpoint.
    pub add_endpoint: Vec<usize>,
    /// Selected Services that are deleted.
    pub delete: Vec<usize>,
}

fn helm_labels(name: &str) -> Value {
    json!({
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": "bench",
        "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": "app-1.4.2",
    })
}

/// A made-up uid, unique per `kind` and `n`.
fn uid(kind: u32, n: usize) -> String {
    format!("{kind:08x}-5c1e-4a4b-9d3f-{n:012x}")
}

fn key(ip: Ipv4Addr) -> ServiceKey {
    key_port(ip, SERVICE_PORT)
}

fn key_port(ip: Ipv4Addr, port: u16) -> ServiceKey {
    ServiceKey::tcp_addr(SocketAddr::V4(SocketAddrV4::new(ip, port)))
}

/// `utime + stime` of a `/proc/PID/stat` line, in clock ticks. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its closing parenthesis.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, utime field 14, stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The CPU time process `pid` has used.
fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("no CPU times in {path}"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// `(RssAnon, RssFile)` of process `pid`, KiB.
fn rss_parts(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |key: &str| {
        proc_field(&status, key)
            .and_then(|v| kib(&v))
            .with_context(|| format!("no {key} in {path}"))
    };
    Ok((field("RssAnon")?, field("RssFile")?))
}

/// Starts a daemon against `kubeconfig` with nothing pinned and waits until every one of
/// `expected` destinations is in the map; returns it, how long that took, and its CPU time
/// by then. `probes` are keys that are in the complete map: the map is counted (a lookup per
/// entry) only once they are, so that polling costs the daemon little CPU meanwhile.
fn start_and_sync(
    exe: &Path,
    lab: &Lab,
    kubeconfig: &Path,
    capacity: usize,
    expected: usize,
    probes: &[ServiceKey],
) -> Result<(DaemonProcess, Duration, Duration)> {
    // A clean start: what an earlier daemon pinned would otherwise be adopted, not synced.
    detach(&lab.pin_dir)?;
    let kubeconfig = kubeconfig.to_string_lossy();
    let started = Instant::now();
    let mut daemon = DaemonProcess::start(
        exe,
        lab,
        &[
            "--kubeconfig",
            &kubeconfig,
            "--services-capacity",
            &capacity.to_string(),
        ],
    )?;
    let mut map = None;
    loop {
        check_interrupted()?;
        daemon.check_running()?;
        if map.is_none() {
            map = PinnedServices::open(&lab.pin_dir);
        }
        if let Some(m) = &map
            && all_present(m, probes)?
            && m.count() >= expected
        {
            let took = started.elapsed();
            let cpu = cpu_time(daemon.pid())?;
            return Ok((daemon, took, cpu));
        }
        if started.elapsed() > LIMIT {
            bail!("the daemon did not sync {expected} destinations within {LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Whether every one of `keys` is in `map`.
fn all_present(map: &PinnedServices, keys: &[ServiceKey]) -> Result<bool> {
    for key in keys {
        if !map.contains(key)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Flips the readiness of an endpoint of a random churned Service `rate` times a second
/// until `stop`; returns how many changes it made and over how long.
fn churn(
    server: &KubeApiServer,
    cluster: &Cluster,
    rate: u32,
    seed: u64,
    stop: &AtomicBool,
) -> Result<(usize, Duration)> {
    let started = Instant::now();
    let services = cluster.churned();
    let mut unready = vec![false; services.len()];
    let mut rng = Rng::new(seed);
    let period = Duration::from_secs(1) / rate.max(1);
    let mut next = started;
    let mut made = 0;
    while !stop.load(Ordering::SeqCst) {
        if rate > 0 {
            let k = rng.below(unready.len() as u64) as usize;
            unready[k] = !unready[k];
            server.apply(&cluster.slice(services.start + k, 0..0, unready[k]))?;
            made += 1;
            next += period;
        } else {
            next += Duration::from_millis(10);
        }
        // Behind schedule (a slow write) the next changes follow at once, so the rate holds.
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
    Ok((made, started.elapsed()))
}

/// The measured changes, one kind after the other in turn, with a short random pause before
/// each so that none lands in the same batch as the previous one.
fn changes(
    server: &KubeApiServer,
    cluster: &Cluster,
    targets: &Targets,
    lab: &Lab,
    daemon: &mut DaemonProcess,
    seed: u64,
    result: &mut KubeResult,
) -> Result<()> {
    let map = PinnedServices::open(&lab.pin_dir).context("the services map is not pinned")?;
    let mut rng = Rng::new(seed ^ 0x6b75_6265);
    for n in 0..targets.annotate.len() {
        // An annotation added: the ClusterIP and the endpoints of its (until now unselected)
        // slice appear.
        let i = targets.annotate[n];
        thread::sleep(Duration::from_millis(5 + rng.below(20)));
        let since = Instant::now();
        server.apply(&cluster.service(i, true))?;
        wait_for(&map, daemon, &Cluster::cluster_key(i), true, since)?;
        let last = cluster.endpoints_of(i).end - 1;
        let took = wait_for(&map, daemon, &Cluster::endpoint_key(last), true, since)?;
        result.annotate_ns.push(took.as_nanos() as u64);

        // An endpoint added to a selected Service's slice.
        let i = targets.add_endpoint[n];
        thread::sleep(Duration::from_millis(5 + rng.below(20)));
        let since = Instant::now();
        server.apply(&cluster.slice(i, n..n + 1, false))?;
        let took = wait_for(&map, daemon, &Cluster::added_key(n), true, since)?;
        result.endpoint_ns.push(took.as_nanos() as u64);

        // A selected Service deleted.
        let i = targets.delete[n];
        thread::sleep(Duration::from_millis(5 + rng.below(20)));
        let since = Instant::now();
        server
            .delete(Resource::Service, &Cluster::namespace(i), &Cluster::name(i))
            .with_context(|| format!("Service {i} was not there to delete"))?;
        let took = wait_for(&map, daemon, &Cluster::cluster_key(i), false, since)?;
        result.delete_ns.push(took.as_nanos() as u64);
        check_interrupted()?;
    }
    Ok(())
}

/// Runs one size.
fn run_size(p: &Params, size: Size) -> Result<KubeResult> {
    let cluster = Cluster::new(size);
    let targets = cluster.targets(p.changes)?;
    let lab = Lab::with(LabOptions::for_daemon())?;
    let mut result = KubeResult {
        services: size.services,
        endpoints: size.endpoints,
        selected: (0..size.services).filter(|&i| Cluster::selected(i)).count(),
        destinations: cluster.destinations(),
        churn_target: p.churn,
        ..KubeResult::default()
    };
    progress(&format!(
        "kube mode: loading {} Services with {} endpoints into the API server",
        size.services, size.endpoints
    ));
    let loading = Instant::now();
    let objects = cluster.objects();
    let options = Options {
        history_limit: HISTORY,
        ..Options::default()
    };
    // Started inside the node namespace, so it listens there, next to the daemon.
    let server = lab
        .node_ns
        .run(move || KubeApiServer::start_with(options, objects))??;
    result.load_ns = loading.elapsed().as_nanos() as u64;

    // Room for the changes' additions, so the map never fills.
    let capacity = (DEFAULT_SERVICES_CAPACITY as usize)
        .max(result.destinations * 5 / 4 + p.changes * (size.endpoints / size.services + 2));
    let last_selected = (0..size.services)
        .rev()
        .find(|&i| Cluster::selected(i))
        .unwrap_or(0);
    let probes = [
        Cluster::cluster_key(0),
        Cluster::cluster_key(last_selected),
        Cluster::endpoint_key(cluster.endpoints_of(last_selected).end - 1),
    ];
    progress(&format!(
        "kube mode: {} start-up syncs of {} Services ({} selected destinations)",
        p.syncs.max(1),
        size.services,
        result.destinations
    ));
    let mut daemon = None;
    for _ in 0..p.syncs.max(1) {
        // The previous daemon stops before the next one starts.
        drop(daemon.take());
        let (d, took, cpu) = start_and_sync(
            &p.daemon,
            &lab,
            &server.kubeconfig(),
            capacity,
            result.destinations,
            &probes,
        )?;
        result.sync_ns.push(took.as_nanos() as u64);
        result.sync_cpu_ns.push(cpu.as_nanos() as u64);
        daemon = Some(d);
    }
    let Some(mut daemon) = daemon else {
        bail!("no daemon was started");
    };
    let (hwm, rss) = daemon.memory()?;
    result.synced_hwm_kib = hwm;
    result.synced_rss_kib = rss;

    progress(&format!(
        "kube mode: {} changes under {} endpoint changes/s with {} Services",
        3 * p.changes,
        p.churn,
        size.services
    ));
    let cpu_before = cpu_time(daemon.pid())?;
    let phase = Instant::now();
    let stop = AtomicBool::new(false);
    let (measured, churned) = thread::scope(|s| {
        let churner = s.spawn(|| churn(&server, &cluster, p.churn, p.seed, &stop));
        let measured = changes(
            &server,
            &cluster,
            &targets,
            &lab,
            &mut daemon,
            p.seed,
            &mut result,
        );
        stop.store(true, Ordering::SeqCst);
        let churned = churner
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the churn thread panicked")));
        (measured, churned)
    });
    measured?;
    let (made, over) = churned?;
    result.changes_wall_ns = phase.elapsed().as_nanos() as u64;
    result.changes_cpu_ns = cpu_time(daemon.pid())?
        .saturating_sub(cpu_before)
        .as_nanos() as u64;
    result.churn_changes = made;
    result.churn_rate = made as f64 / over.as_secs_f64().max(1e-9);
    let (hwm, rss) = daemon.memory()?;
    result.vm_hwm_kib = hwm;
    result.end_rss_kib = rss;
    (result.end_rss_anon_kib, result.end_rss_file_kib) = rss_parts(daemon.pid())?;
    drop(daemon);
    detach(&lab.pin_dir)?;
    Ok(result)
}

/// Runs scenario 6: every size in turn.
pub fn run(p: &Params) -> Result<Vec<KubeResult>> {
    let mut out = Vec::new();
    for &size in &p.sizes {
        check_interrupted()?;
        out.push(run_size(p, size)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
    use redirector::{
        k8s::service::DEFAULT_ANNOTATION,
        selection::{self, Rules},
    };

    use super::*;

    fn size(services: usize, endpoints: usize) -> Size {
        Size {
            services,
            endpoints,
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!("10000:100000".parse(), Ok(size(10_000, 100_000)));
        assert!("10000".parse::<Size>().is_err());
        assert!(
            "100:50".parse::<Size>().is_err(),
            "fewer endpoints than Services"
        );
        assert!("10:100".parse::<Size>().is_err(), "too few Services");
        assert!("100:x".parse::<Size>().is_err());
    }

    #[test]
    fn endpoints_are_spread_over_the_services() {
        let c = Cluster::new(size(4, 10));
        let ranges: Vec<_> = (0..4).map(|i| c.endpoints_of(i)).collect();
        assert_eq!(ranges, [0..3, 3..6, 6..8, 8..10]);
    }

    /// The generated objects decode as their types, and the daemon's selection over them
    /// selects exactly the destinations the scenario waits for.
    #[test]
    fn the_cluster_selects_what_the_scenario_expects() {
        let c = Cluster::new(size(30, 95));
        let objects = c.objects();
        let services: Vec<Service> = objects
            .iter()
            .filter(|o| o["kind"] == "Service")
            .map(|o| serde_json::from_value(o.clone()).unwrap())
            .collect();
        let slices: Vec<EndpointSlice> = objects
            .iter()
            .filter(|o| o["kind"] == "EndpointSlice")
            .map(|o| serde_json::from_value(o.clone()).unwrap())
            .collect();
        assert_eq!((services.len(), slices.len()), (30, 30));
        let (desired, findings) =
            selection::desired(&services, &slices, &Rules::new(DEFAULT_ANNOTATION));
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(desired.destinations.len(), c.destinations());
        // Services 0, 10 and 20: 4, 3 and 3 endpoints (95 = 30 × 3 + 5).
        assert_eq!(c.destinations(), 3 + 4 + 3 + 3);
        for i in [0, 10, 20] {
            assert!(desired.destinations.contains_key(&Cluster::cluster_key(i)));
            for e in c.endpoints_of(i) {
                assert!(desired.destinations.contains_key(&Cluster::endpoint_key(e)));
            }
        }
        assert!(!desired.destinations.contains_key(&Cluster::cluster_key(1)));

        // A slice with an added endpoint, its first endpoint unready.
        let slice: EndpointSlice = serde_json::from_value(c.slice(10, 7..8, true)).unwrap();
        let (desired, _) = selection::desired(
            &services,
            std::iter::once(&slice),
            &Rules::new(DEFAULT_ANNOTATION),
        );
        assert!(desired.destinations.contains_key(&Cluster::added_key(7)));
        let first = c.endpoints_of(10).start;
        assert!(
            !desired
                .destinations
                .contains_key(&Cluster::endpoint_key(first))
        );
    }

    #[test]
    fn targets_are_disjoint_and_leave_the_churn_alone() {
        let c = Cluster::new(size(1000, 5000));
        let t = c.targets(20).unwrap();
        let churned = c.churned();
        for (list, selected) in [
            (&t.annotate, false),
            (&t.add_endpoint, true),
            (&t.delete, true),
        ] {
            assert_eq!(list.len(), 20);
            assert!(list.iter().all(|&i| Cluster::selected(i) == selected));
            assert!(list.iter().all(|i| !churned.contains(i)));
        }
        assert!(t.add_endpoint.iter().all(|i| !t.delete.contains(i)));
        assert!(
            c.targets(26).is_err(),
            "50 selected Services in the first half"
        );
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (redir ector) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 37 0 0 20 0 9 0";
        assert_eq!(cpu_ticks(stat), Some(187));
        assert_eq!(cpu_ticks("4242 (x) S 1"), None);
    }
}
