//! Scenario 3: the daemon's control plane, `redirector run --services-file`, in a lab of its
//! own (it attaches to the lab's cgroup and pins under the lab's pin directory):
//!
//! - start-up sync: from starting the daemon with `S` selected Services in the file (and
//!   nothing pinned) to every destination being in the pinned `services` map;
//! - change latency: with those `S` Services selected, a Service is added to the file (then
//!   removed again); the time from the file change to its entry appearing in (disappearing
//!   from) the map, polled every millisecond with single-key lookups;
//! - memory: the daemon's peak RSS (`VmHWM` of `/proc/PID/status`) once it has synced `D`
//!   destinations.
//!
//! Every generated Service has a ClusterIP and one ready endpoint, so it selects two
//! destinations (`ClusterIP:80` and `endpoint:8080`). The file is replaced atomically (written
//! beside it, then renamed), as tools that update such files do, so the daemon never reads a
//! half-written file.

use std::{
    fs::{self, File},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, Map, MapData, MapError};
use redirector::dataplane::detach;
use redirector_common::{DEFAULT_SERVICES_CAPACITY, ServiceKey, ServiceValue, map_names};

use l7r_lab::{
    lab::{Lab, LabOptions},
    manifests::{ServiceSpec, ServicesFile},
    process::spawn_in,
    sys::unique_id,
};

use crate::{
    destinations::{Rng, nth_address},
    machine::{kib, proc_field},
    report::{ControlResult, RssSample},
    scenarios::{check_interrupted, progress},
};

/// What scenario 3 is asked to do.
#[derive(Clone, Debug)]
pub struct Params {
    /// Services selected while changes are measured (and synced at start).
    pub services: usize,
    /// Changes measured (each an addition and a removal).
    pub changes: usize,
    /// Start-up syncs measured.
    pub syncs: usize,
    /// Destination counts at which to measure the daemon's memory.
    pub rss_destinations: Vec<usize>,
    /// The daemon binary (`redirector`).
    pub daemon: PathBuf,
    /// Seed of the pauses between changes.
    pub seed: u64,
}

/// The spread of the random pauses between changes: once the daemon's poll period (it now
/// follows its file with inotify, `sources/file.rs`), kept so that runs stay comparable.
const FILE_POLL_MS: u64 = 250;
/// How long a sync or a change may take before the benchmark gives up.
pub(crate) const LIMIT: Duration = Duration::from_secs(120);

/// The `i`-th generated Service: `bench/svc-<i>`, ClusterIP `10.96.x.y:80`, one ready
/// endpoint `10.128.x.y:8080`, annotated to be selected.
pub fn service_spec(i: usize) -> ServiceSpec {
    ServiceSpec {
        namespace: "bench".into(),
        name: format!("svc-{i}"),
        cluster_ip: nth_address(Ipv4Addr::new(10, 96, 0, 0), i).to_string(),
        port: 80,
        endpoint_ip: nth_address(Ipv4Addr::new(10, 128, 0, 0), i).to_string(),
        endpoint_port: 8080,
        annotation: Some("true".into()),
    }
}

/// The services file for Services `range`: a multi-document YAML stream, as
/// `kubectl get -o yaml` of Services and EndpointSlices would be.
pub fn services_yaml(range: std::ops::Range<usize>) -> String {
    range
        .map(|i| service_spec(i).yaml())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The map key of a generated Service's ClusterIP.
fn cluster_key(i: usize) -> Result<ServiceKey> {
    let spec = service_spec(i);
    let addr: SocketAddr = format!("{}:{}", spec.cluster_ip, spec.port).parse()?;
    Ok(ServiceKey::tcp_addr(addr))
}

/// The pinned `services` map, opened read-only from its pin like `bpftool` would.
pub(crate) struct PinnedServices(HashMap<MapData, ServiceKey, ServiceValue>);

impl PinnedServices {
    /// `None` while the daemon has not pinned it yet.
    pub(crate) fn open(pin_dir: &Path) -> Option<Self> {
        let data = MapData::from_pin(pin_dir.join(map_names::SERVICES)).ok()?;
        HashMap::try_from(Map::HashMap(data)).ok().map(Self)
    }

    pub(crate) fn contains(&self, key: &ServiceKey) -> Result<bool> {
        match self.0.get(key, 0) {
            Ok(_) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.0.keys().filter(Result::is_ok).count()
    }
}

/// `redirector run` in the lab's node namespace, with its log in a temporary file; stopped by
/// its PID (SIGTERM, then SIGKILL after 10 s) on drop. The fixtures' `Daemon` does not expose
/// the PID, which the memory measurement needs.
pub(crate) struct DaemonProcess {
    child: Child,
    log: PathBuf,
}

impl DaemonProcess {
    pub(crate) fn start(exe: &Path, lab: &Lab, extra: &[&str]) -> Result<Self> {
        let log = std::env::temp_dir().join(format!("l7r-bench-daemon-{}.log", unique_id()));
        let file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("run")
            .args(lab.daemon_args())
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let child = spawn_in(cmd, &lab.node_ns, None).context("cannot start the daemon")?;
        Ok(Self { child, log })
    }

    /// Fails, with the end of its log, if the daemon has exited.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "the daemon exited ({status}); its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// The daemon's PID.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `(VmHWM, VmRSS)` in KiB.
    pub(crate) fn memory(&self) -> Result<(u64, u64)> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let field = |key: &str| {
            proc_field(&status, key)
                .and_then(|v| kib(&v))
                .with_context(|| format!("no {key} in {path}"))
        };
        Ok((field("VmHWM")?, field("VmRSS")?))
    }

    fn stop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: signalling the child we started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_file(&self.log);
    }
}

/// Replaces the file's contents atomically: write beside it, then rename over it.
fn replace(file: &ServicesFile, text: &str) -> Result<()> {
    let path = Path::new(file.arg());
    let tmp = path.with_extension("next");
    fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// Starts a daemon on `file` with nothing pinned and waits until the map holds `expected`
/// entries; returns it and how long that took.
fn start_and_sync(
    p: &Params,
    lab: &Lab,
    file: &ServicesFile,
    expected: usize,
) -> Result<(DaemonProcess, Duration)> {
    // A clean start: what an earlier daemon pinned would otherwise be adopted, not synced.
    detach(&lab.pin_dir)?;
    let capacity = DEFAULT_SERVICES_CAPACITY.max((expected + expected / 4) as u32);
    let started = Instant::now();
    let mut daemon = DaemonProcess::start(
        &p.daemon,
        lab,
        &[
            "--services-file",
            file.arg(),
            "--services-capacity",
            &capacity.to_string(),
        ],
    )?;
    let deadline = started + LIMIT;
    let mut map = None;
    loop {
        check_interrupted()?;
        daemon.check_running()?;
        if map.is_none() {
            map = PinnedServices::open(&lab.pin_dir);
        }
        if map.as_ref().is_some_and(|m| m.count() >= expected) {
            return Ok((daemon, started.elapsed()));
        }
        if Instant::now() > deadline {
            bail!("the daemon did not sync {expected} destinations within {LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `map` every millisecond until `key`'s presence is `present`; the time since `since`.
pub(crate) fn wait_for(
    map: &PinnedServices,
    daemon: &mut DaemonProcess,
    key: &ServiceKey,
    present: bool,
    since: Instant,
) -> Result<Duration> {
    loop {
        check_interrupted()?;
        if map.contains(key)? == present {
            return Ok(since.elapsed());
        }
        if since.elapsed() > LIMIT {
            daemon.check_running()?;
            bail!("the map did not follow the change within {LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Runs scenario 3.
pub fn run(p: &Params) -> Result<ControlResult> {
    let lab = Lab::with(LabOptions::for_daemon())?;
    let mut result = ControlResult {
        services: p.services,
        destinations: 2 * p.services,
        ..ControlResult::default()
    };

    progress(&format!(
        "control plane: {} start-up syncs of {} Services",
        p.syncs, p.services
    ));
    let base = services_yaml(0..p.services);
    let file = ServicesFile::new(&base)?;
    let mut daemon = None;
    for _ in 0..p.syncs.max(1) {
        // The previous daemon stops before the next one starts.
        drop(daemon.take());
        let (d, took) = start_and_sync(p, &lab, &file, result.destinations)?;
        result.sync_ns.push(took.as_nanos() as u64);
        daemon = Some(d);
    }
    let Some(mut daemon) = daemon else {
        bail!("no daemon was started");
    };
    let (hwm, rss) = daemon.memory()?;
    result.rss.push(RssSample {
        services: p.services,
        destinations: result.destinations,
        vm_hwm_kib: hwm,
        vm_rss_kib: rss,
        sync_ns: result.sync_ns.last().copied().unwrap_or(0),
    });

    progress(&format!(
        "control plane: {} Service changes with {} Services selected",
        p.changes, p.services
    ));
    let map = PinnedServices::open(&lab.pin_dir).context("the services map is not pinned")?;
    let mut rng = Rng::new(p.seed);
    for c in 0..p.changes {
        // A Service never seen before, so each change is a real addition.
        let extra = p.services + c;
        let key = cluster_key(extra)?;
        let with_extra = format!("{base}---\n{}", service_spec(extra).yaml());
        for (text, present) in [(&with_extra, true), (&base, false)] {
            thread::sleep(Duration::from_millis(20 + rng.below(FILE_POLL_MS)));
            replace(&file, text)?;
            let since = Instant::now();
            let took = wait_for(&map, &mut daemon, &key, present, since)?;
            let samples = if present {
                &mut result.add_ns
            } else {
                &mut result.remove_ns
            };
            samples.push(took.as_nanos() as u64);
        }
    }
    drop(map);
    drop(daemon);

    for &d in &p.rss_destinations {
        progress(&format!("control plane: memory at {d} destinations"));
        let services = d.div_ceil(2);
        let file = ServicesFile::new(&services_yaml(0..services))?;
        let (daemon, took) = start_and_sync(p, &lab, &file, 2 * services)?;
        let (hwm, rss) = daemon.memory()?;
        result.rss.push(RssSample {
            services,
            destinations: 2 * services,
            vm_hwm_kib: hwm,
            vm_rss_kib: rss,
            sync_ns: took.as_nanos() as u64,
        });
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use redirector::{
        k8s::{
            service::DEFAULT_ANNOTATION,
            sources::{Kinds, manifests},
        },
        selection::{self, Rules},
    };

    use super::*;

    #[test]
    fn generated_services_each_select_two_destinations() {
        let text = services_yaml(0..3);
        let m = manifests::parse(&text, Kinds::DAEMON).unwrap();
        assert_eq!((m.services.len(), m.slices.len()), (3, 3));
        let (desired, findings) =
            selection::desired(&m.services, &m.slices, &Rules::new(DEFAULT_ANNOTATION));
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(desired.destinations.len(), 6);
        assert!(desired.destinations.contains_key(&cluster_key(2).unwrap()));
        assert!(!desired.destinations.contains_key(&cluster_key(3).unwrap()));
    }
}
