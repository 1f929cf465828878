//! The kernel side, as user space drives it: load, pin, attach (adopting what a previous run
//! left), write selected destinations and the config, read counters, detach. This is the only
//! module that touches aya.
//!
//! Pin layout under the pin directory (default `/sys/fs/bpf/l7-redirector`):
//! ```text
//! services  config  orig_dst  sock_orig_dst  counters  service_names
//! proxy_lease  proxy_failed  layout                           the maps
//! links/connect4  links/connect6  links/track_connection  ...   one bpf_link per program
//! ```
//! State lives in the pins, not in the process: a daemon that exits leaves steering running,
//! and the next one adopts the maps and swaps its programs in without a gap.

use std::{
    fs,
    io::ErrorKind,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray},
    programs::{CgroupSockAddr, CgroupSockopt, ProgramError, SockOps},
    sys::SyscallError,
    util::KernelVersion,
};
use redirector_common::{
    Config, Counters, Endpoint, LAYOUT_VERSION, PROXY4, PROXY6, ProxyLease, ServiceKey,
    ServiceName, ServiceValue, map_names, program_names,
};
use tracing::{debug, info, warn};

use crate::{
    cgroup::{self, CgroupError},
    clock,
    reconcile::{Pinned, SelectionMaps},
};

mod error;
mod link;
mod object;
mod pins;

pub use self::{
    error::DataplaneError,
    object::EBPF_OBJECT,
    pins::{detach, pinned_layout},
};
use self::{
    error::{Result, map_err, pin_err, prog_err},
    pins::{prepare_layout, prepare_pin_dir, release_unknown_links, replace_pinned_link},
};

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/l7-redirector";

/// The oldest kernel the redirector runs on: the oldest of the kernel matrix
/// (`cargo xtask vm-test`). What the programs use needs 5.8 (cgroup bpf_link attachments 5.7,
/// `bpf_get_current_ancestor_cgroup_id` in sock_addr programs 5.7, the getpeername hooks 5.8;
/// socket storage from sock_addr and sockops programs and the sockopt hook are older), but
/// nothing older than 5.10 is tested.
pub(crate) const MIN_KERNEL: (u8, u8) = (5, 10);

/// How to load the dataplane.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where the maps and links are pinned.
    pub pin_dir: PathBuf,
    /// Capacity of the `services` map when it is created (an existing pin keeps its own).
    pub services_capacity: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            services_capacity: redirector_common::DEFAULT_SERVICES_CAPACITY,
        }
    }
}

/// The pinned maps, and (when loaded rather than opened) the programs.
pub struct Dataplane {
    pin_dir: PathBuf,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    services_capacity: u32,
    config: Array<MapData, Config>,
    orig_dst: HashMap<MapData, Endpoint, Endpoint>,
    counters: PerCpuArray<MapData, Counters>,
    service_names: HashMap<MapData, u32, ServiceName>,
    proxy_lease: Array<MapData, ProxyLease>,
    proxy_failed: Array<MapData, u64>,
    /// Loaded programs; `None` for a dataplane opened from pins only (status, tests).
    programs: Option<Ebpf>,
}

impl Dataplane {
    /// Loads the programs into the kernel (they are verified here, before anything is attached)
    /// and opens the pinned maps, creating and pinning any that are missing. Existing maps are
    /// reused as they are, so selections and per-connection state survive a restart.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let object = EBPF_OBJECT.ok_or(DataplaneError::NoObject)?;
        check_kernel()?;
        let pin_dir = &opts.pin_dir;
        prepare_pin_dir(pin_dir)?;
        prepare_layout(pin_dir)?;

        let paths: Vec<(&'static str, PathBuf)> = map_names::ALL
            .iter()
            .map(|&name| (name, pin_dir.join(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(map_names::SERVICES, opts.services_capacity);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(object)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;

        for &name in &program_names::ALL {
            let program = ebpf
                .program_mut(name)
                .ok_or_else(|| prog_err(name)(ProgramError::UnexpectedProgramType))?;
            match name {
                program_names::SOCKOPS => {
                    let p: &mut SockOps = program.try_into().map_err(prog_err(name))?;
                    p.load().map_err(prog_err(name))?;
                }
                program_names::GETSOCKOPT => {
                    let p: &mut CgroupSockopt = program.try_into().map_err(prog_err(name))?;
                    p.load().map_err(prog_err(name))?;
                }
                _ => {
                    let p: &mut CgroupSockAddr = program.try_into().map_err(prog_err(name))?;
                    p.load().map_err(prog_err(name))?;
                }
            }
        }
        debug!(pin_dir = %pin_dir.display(), "programs loaded");

        let mut layout: Array<MapData, u32> = ebpf
            .take_map(map_names::LAYOUT)
            .ok_or(MapError::InvalidName {
                name: map_names::LAYOUT.into(),
            })
            .and_then(Array::try_from)
            .map_err(map_err(map_names::LAYOUT))?;
        layout
            .set(0, LAYOUT_VERSION, 0)
            .map_err(map_err(map_names::LAYOUT))?;
        let mut dp = Self::from_maps(pin_dir, |name| {
            ebpf.take_map(name)
                .ok_or(MapError::InvalidName { name: name.into() })
        })?;
        dp.programs = Some(ebpf);
        Ok(dp)
    }

    /// Opens the pinned maps of a running (or stopped) dataplane without loading anything.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self> {
        if !pin_dir.join(map_names::SERVICES).exists() {
            return Err(DataplaneError::NotPinned {
                dir: pin_dir.to_path_buf(),
            });
        }
        Self::from_maps(pin_dir, |name| {
            MapData::from_pin(pin_dir.join(name)).and_then(Map::from_map_data)
        })
    }

    fn from_maps(
        pin_dir: &Path,
        mut take: impl FnMut(&'static str) -> Result<Map, MapError>,
    ) -> Result<Self> {
        use map_names::{
            CONFIG, COUNTERS, ORIG_DST, PROXY_FAILED, PROXY_LEASE, SERVICE_NAMES, SERVICES,
        };
        let services: HashMap<MapData, ServiceKey, ServiceValue> = take(SERVICES)
            .and_then(HashMap::try_from)
            .map_err(map_err(SERVICES))?;
        let services_capacity = services
            .map()
            .info()
            .map_err(map_err(SERVICES))?
            .max_entries();
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            services,
            services_capacity,
            config: take(CONFIG)
                .and_then(Array::try_from)
                .map_err(map_err(CONFIG))?,
            orig_dst: take(ORIG_DST)
                .and_then(HashMap::try_from)
                .map_err(map_err(ORIG_DST))?,
            counters: take(COUNTERS)
                .and_then(PerCpuArray::try_from)
                .map_err(map_err(COUNTERS))?,
            service_names: take(SERVICE_NAMES)
                .and_then(HashMap::try_from)
                .map_err(map_err(SERVICE_NAMES))?,
            proxy_lease: take(PROXY_LEASE)
                .and_then(Array::try_from)
                .map_err(map_err(PROXY_LEASE))?,
            proxy_failed: take(PROXY_FAILED)
                .and_then(Array::try_from)
                .map_err(map_err(PROXY_FAILED))?,
            programs: None,
        })
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches every program to the cgroup v2 directory `cgroup` and pins the links. Links a
    /// previous run pinned are replaced: the new program is attached first, then the old link
    /// is released, so there is no moment in which a new connection goes unsteered (for that
    /// instant both run: the second sees the proxy address the first wrote, which is never
    /// selected, keeps the first one's record and counts nothing twice).
    pub fn attach(&mut self, cgroup: &Path) -> Result<()> {
        cgroup::check_cgroup2(cgroup)?;
        let cgroup_dir = fs::File::open(cgroup).map_err(|source| CgroupError::Io {
            path: cgroup.to_path_buf(),
            source,
        })?;
        let ebpf = self
            .programs
            .as_mut()
            .ok_or_else(|| prog_err("(all)")(ProgramError::NotLoaded))?;
        let links_dir = self.pin_dir.join("links");
        fs::create_dir_all(&links_dir).map_err(pin_err("cannot create", &links_dir))?;

        for &name in &program_names::ALL {
            let program = ebpf
                .program(name)
                .ok_or_else(|| prog_err(name)(ProgramError::NotLoaded))?;
            let prog_fd = program.fd().map_err(prog_err(name))?;
            let attach = attach_type(name)
                .ok_or_else(|| prog_err(name)(ProgramError::UnexpectedProgramType))?;
            let link = link::link_create(prog_fd.as_fd(), cgroup_dir.as_fd(), attach)
                .map_err(|e| prog_err(name)(ProgramError::IOError(e)))?;
            replace_pinned_link(&links_dir, name, &link)?;
        }
        release_unknown_links(&links_dir)?;
        info!(cgroup = %cgroup.display(), pin_dir = %self.pin_dir.display(), "programs attached");
        Ok(())
    }

    /// Every selected destination in the map.
    pub fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        self.services
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(map_names::SERVICES))
    }

    /// Capacity of the `services` map.
    pub fn services_capacity(&self) -> u32 {
        self.services_capacity
    }

    /// Writes a batch of selected destinations. On a full map the entries that fit are written,
    /// and the number that did not is returned.
    pub fn insert_services(&mut self, entries: &[(ServiceKey, ServiceValue)]) -> Result<usize> {
        let mut rejected = 0;
        for (key, value) in entries {
            match self.services.insert(key, value, 0) {
                Ok(()) => {}
                Err(MapError::SyscallError(SyscallError { io_error, .. }))
                    if io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    rejected += 1;
                }
                Err(e) => return Err(map_err(map_names::SERVICES)(e)),
            }
        }
        Ok(rejected)
    }

    /// Removes a batch of destinations; ones already absent are fine.
    pub fn remove_services(&mut self, keys: &[ServiceKey]) -> Result<()> {
        for key in keys {
            match self.services.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(SyscallError { io_error, .. }))
                    if io_error.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(map_err(map_names::SERVICES)(e)),
            }
        }
        Ok(())
    }

    /// The current config entry (all zero, so steering nothing, on a fresh map).
    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(map_err(map_names::CONFIG))
    }

    /// Replaces the config entry. The kernel reads it whole per connect.
    pub fn set_config(&mut self, config: &Config) -> Result<()> {
        self.config
            .set(0, config, 0)
            .map_err(map_err(map_names::CONFIG))
    }

    /// Grants proxy `which` ([`PROXY4`] or [`PROXY6`]) a lease (or, with
    /// [`ProxyLease::NOT_READY`], revokes it: new connections go direct).
    pub fn set_proxy_lease(&mut self, which: u32, lease: &ProxyLease) -> Result<()> {
        self.proxy_lease
            .set(which, lease, 0)
            .map_err(map_err(map_names::PROXY_LEASE))
    }

    /// The leases of both proxies, `[IPv4, IPv6]`.
    pub fn proxy_leases(&self) -> Result<[ProxyLease; 2]> {
        let get = |which| {
            self.proxy_lease
                .get(&which, 0)
                .map_err(map_err(map_names::PROXY_LEASE))
        };
        Ok([get(PROXY4)?, get(PROXY6)?])
    }

    /// When a steered connect to each proxy last failed (`CLOCK_MONOTONIC` ns, 0: never),
    /// `[IPv4, IPv6]`.
    pub fn proxy_failures(&self) -> Result<[u64; 2]> {
        let get = |which| {
            self.proxy_failed
                .get(&which, 0)
                .map_err(map_err(map_names::PROXY_FAILED))
        };
        Ok([get(PROXY4)?, get(PROXY6)?])
    }

    /// Whether the programs steer to each proxy now, `(v4, v6)`: what the kernel decides from
    /// the lease and the last failure.
    pub fn proxy_readiness(&self) -> Result<(bool, bool)> {
        let leases = self.proxy_leases()?;
        let failed = self.proxy_failures()?;
        let now = clock::monotonic_ns();
        Ok((
            leases[0].steers(now, failed[0]),
            leases[1].steers(now, failed[1]),
        ))
    }

    /// Marks the proxies ready without end, or not ready: for tools and tests that have no
    /// daemon renewing a lease. A failed steered connect still voids the open-ended lease.
    pub fn set_proxy_ready(&mut self, v4: bool, v6: bool) -> Result<()> {
        let now = clock::monotonic_ns();
        for (which, ready) in [(PROXY4, v4), (PROXY6, v6)] {
            let lease = if ready {
                ProxyLease {
                    ready_until_ns: u64::MAX,
                    checked_at_ns: now,
                }
            } else {
                ProxyLease::NOT_READY
            };
            self.set_proxy_lease(which, &lease)?;
        }
        Ok(())
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let per_cpu = self
            .counters
            .get(&0, 0)
            .map_err(map_err(map_names::COUNTERS))?;
        Ok(per_cpu.iter().fold(Counters::default(), |mut sum, c| {
            sum += c;
            sum
        }))
    }

    /// Redirected connections currently tracked (client → original destination).
    pub fn orig_dst_entries(&self) -> Result<Vec<(Endpoint, Endpoint)>> {
        self.orig_dst
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(map_names::ORIG_DST))
    }
}

impl SelectionMaps for Dataplane {
    type Error = DataplaneError;

    fn read(&self) -> Result<Pinned> {
        let names = self
            .service_names
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::SERVICE_NAMES))?;
        Ok(Pinned {
            services: self.services()?.into_iter().collect(),
            names,
        })
    }

    fn insert_services(&mut self, entries: &[(ServiceKey, ServiceValue)]) -> Result<usize> {
        Dataplane::insert_services(self, entries)
    }

    fn remove_services(&mut self, keys: &[ServiceKey]) -> Result<()> {
        Dataplane::remove_services(self, keys)
    }

    fn set_service_names(&mut self, names: &[(u32, ServiceName)]) -> Result<()> {
        for (id, name) in names {
            self.service_names
                .insert(id, name, 0)
                .map_err(map_err(map_names::SERVICE_NAMES))?;
        }
        Ok(())
    }

    fn remove_service_names(&mut self, ids: &[u32]) -> Result<()> {
        for id in ids {
            match self.service_names.remove(id) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(SyscallError { io_error, .. }))
                    if io_error.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(map_err(map_names::SERVICE_NAMES)(e)),
            }
        }
        Ok(())
    }
}

fn check_kernel() -> Result<()> {
    // Unreadable version: let the load itself say what is missing.
    let Ok(version) = KernelVersion::current() else {
        return Ok(());
    };
    if version < KernelVersion::new(MIN_KERNEL.0, MIN_KERNEL.1, 0) {
        return Err(DataplaneError::KernelTooOld {
            found: format!("{version:?}"),
        });
    }
    Ok(())
}

/// How many of the redirector's kinds of program (any version's) are attached to `cgroup`
/// itself, summed over the attach points: 6 for one attached dataplane.
pub fn attached_programs(cgroup: &Path) -> Result<u32> {
    let dir = fs::File::open(cgroup).map_err(|source| CgroupError::Io {
        path: cgroup.to_path_buf(),
        source,
    })?;
    let mut total = 0;
    for &name in &program_names::ALL {
        let attach =
            attach_type(name).ok_or_else(|| prog_err(name)(ProgramError::UnexpectedProgramType))?;
        total += link::attached_count(dir.as_fd(), attach)
            .map_err(|e| prog_err(name)(ProgramError::IOError(e)))?;
    }
    Ok(total)
}

/// The kernel attach point of each program.
fn attach_type(program: &str) -> Option<u32> {
    Some(match program {
        program_names::CONNECT4 => link::BPF_CGROUP_INET4_CONNECT,
        program_names::CONNECT6 => link::BPF_CGROUP_INET6_CONNECT,
        program_names::SOCKOPS => link::BPF_CGROUP_SOCK_OPS,
        program_names::GETSOCKOPT => link::BPF_CGROUP_GETSOCKOPT,
        program_names::GETPEERNAME4 => link::BPF_CGROUP_INET4_GETPEERNAME,
        program_names::GETPEERNAME6 => link::BPF_CGROUP_INET6_GETPEERNAME,
        _ => return None,
    })
}

/// Warns when the pinned `services` map is smaller than asked for: an existing pin keeps its
/// capacity until `redirector detach`.
pub fn warn_capacity_mismatch(dataplane: &Dataplane, asked: u32) {
    if dataplane.services_capacity() != asked {
        warn!(
            pinned = dataplane.services_capacity(),
            asked,
            "the pinned services map keeps its capacity; run `redirector detach` to resize it"
        );
    }
}
