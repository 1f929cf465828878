//! The kernel side, as user space drives it: load, pin, attach (adopting what a previous run
//! left), write selected destinations and the config, read counters, detach. This is the only
//! module that touches aya.
//!
//! Pin layout under the pin directory (default `/sys/fs/bpf/l7-redirector`):
//! ```text
//! services  config  orig_dst  sock_orig_dst  counters     the maps
//! links/connect4  links/connect6  links/track_connection  ...   one bpf_link per program
//! ```
//! State lives in the pins, not in the process: a daemon that exits leaves steering running,
//! and the next one adopts the maps and swaps its programs in without a gap.

use std::{
    fs,
    io::ErrorKind,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray},
    programs::{CgroupSockAddr, CgroupSockopt, ProgramError, SockOps, links::PinnedLink},
    sys::SyscallError,
    util::KernelVersion,
};
use redirector_common::{
    Config, Counters, Endpoint, ServiceKey, ServiceName, ServiceValue, map_names, program_names,
};
use tracing::{debug, info, warn};

use crate::{
    cgroup::{self, CgroupError},
    fs_type,
    reconcile::{Pinned, SelectionMaps},
};

mod link;

/// The kernel object built by `cargo xtask build-ebpf`, embedded at build time.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("REDIRECTOR_EBPF_OBJECT"));

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/l7-redirector";

/// Oldest kernel the programs are written for (bpf_link for cgroups, sk_storage in sock_addr
/// programs, narrow `bpf_sock` loads).
const MIN_KERNEL: (u8, u8) = (5, 10);

/// Typed dataplane errors: each says what failed and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The running kernel is older than the programs need.
    #[error("kernel {found} is too old: the redirector needs Linux {}.{} or newer", MIN_KERNEL.0, MIN_KERNEL.1)]
    KernelTooOld {
        /// The running kernel's version.
        found: String,
    },
    /// The pin directory is not on a bpf file system.
    #[error(
        "{dir} is not on a bpf file system; mount one with `mount -t bpf bpf /sys/fs/bpf` \
         or choose another --pin-dir"
    )]
    NoBpffs {
        /// The pin directory asked for.
        dir: PathBuf,
    },
    /// Nothing is pinned where a pinned dataplane was expected.
    #[error("nothing is pinned under {dir}: is the redirector running with this --pin-dir?")]
    NotPinned {
        /// The pin directory asked for.
        dir: PathBuf,
    },
    /// The cgroup to attach to is not usable.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A pinned map was made by an incompatible version.
    #[error(
        "the pinned map {path} has {what} {found}, this version needs {expected}; \
         remove the old dataplane with `redirector detach` and start again"
    )]
    IncompatiblePin {
        /// The pinned map.
        path: PathBuf,
        /// Which property differs.
        what: &'static str,
        /// What the pin has.
        found: u32,
        /// What this build needs.
        expected: u32,
    },
    /// Loading the object (creating or opening maps, BTF) failed.
    #[error("cannot load the kernel object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program failed to load (the verifier's log is in the source) or to attach.
    #[error("program {program}: {source}")]
    Program {
        /// The program's name.
        program: &'static str,
        /// aya's error.
        #[source]
        source: Box<ProgramError>,
    },
    /// A map is full: the entries that fit were written, the rest were not.
    #[error("map {map} is full ({capacity} entries); {rejected} entries did not fit")]
    MapFull {
        /// The map's name.
        map: &'static str,
        /// Its capacity.
        capacity: u32,
        /// How many entries of the batch were not written.
        rejected: usize,
    },
    /// Any other map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: Box<MapError>,
    },
    /// Pinning, adopting or removing pins failed.
    #[error("{what} {path}: {source}")]
    Pin {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map {
        map,
        source: Box::new(source),
    }
}

fn prog_err(program: &'static str) -> impl FnOnce(ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program {
        program,
        source: Box::new(source),
    }
}

fn pin_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DataplaneError {
    let path = path.to_path_buf();
    move |source| DataplaneError::Pin { what, path, source }
}

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
    /// Loaded programs; `None` for a dataplane opened from pins only (status, tests).
    programs: Option<Ebpf>,
}

impl Dataplane {
    /// Loads the programs into the kernel (they are verified here, before anything is attached)
    /// and opens the pinned maps, creating and pinning any that are missing. Existing maps are
    /// reused as they are, so selections and per-connection state survive a restart.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        check_kernel()?;
        let pin_dir = &opts.pin_dir;
        prepare_pin_dir(pin_dir)?;
        check_pinned_layouts(pin_dir)?;

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
            .load(EBPF_OBJECT)
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
        use map_names::{CONFIG, COUNTERS, ORIG_DST, SERVICE_NAMES, SERVICES};
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
    /// instant both run; the second sees the proxy address, which is never selected).
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

    /// Writes a batch of selected destinations. On a full map the entries that fit are written
    /// and [`DataplaneError::MapFull`] says how many did not.
    pub fn insert_services(&mut self, entries: &[(ServiceKey, ServiceValue)]) -> Result<()> {
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
        if rejected > 0 {
            return Err(DataplaneError::MapFull {
                map: map_names::SERVICES,
                capacity: self.services_capacity,
                rejected,
            });
        }
        Ok(())
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

    /// Marks the proxies ready or not; not ready means new connections go direct (fail-open).
    pub fn set_proxy_ready(&mut self, v4: bool, v6: bool) -> Result<()> {
        let mut config = self.config()?;
        config.proxy4_ready = u8::from(v4);
        config.proxy6_ready = u8::from(v6);
        self.set_config(&config)
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let per_cpu = self
            .counters
            .get(&0, 0)
            .map_err(map_err(map_names::COUNTERS))?;
        Ok(per_cpu
            .iter()
            .fold(Counters::default(), |sum, c| sum.add(*c)))
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

    fn insert_services(&mut self, entries: &[(ServiceKey, ServiceValue)]) -> Result<()> {
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

/// Removes every program and pin under `pin_dir`: a clean uninstall. Connections already
/// proxied keep working (their sockets are connected to the proxy); new ones go direct.
/// Returns whether there was anything to remove.
pub fn detach(pin_dir: &Path) -> Result<bool> {
    if !pin_dir.exists() {
        return Ok(false);
    }
    let links_dir = pin_dir.join("links");
    if links_dir.exists() {
        let entries = fs::read_dir(&links_dir).map_err(pin_err("cannot list", &links_dir))?;
        for entry in entries {
            let path = entry.map_err(pin_err("cannot list", &links_dir))?.path();
            // Unpinning drops the last reference, which detaches the program.
            let link = PinnedLink::from_pin(&path)
                .map_err(|e| pin_err("cannot open pinned link", &path)(std::io::Error::other(e)))?;
            link.unpin().map_err(pin_err("cannot unpin", &path))?;
            debug!(link = %path.display(), "detached");
        }
        fs::remove_dir(&links_dir).map_err(pin_err("cannot remove", &links_dir))?;
    }
    for name in map_names::ALL {
        let path = pin_dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(pin_err("cannot unpin", &path)(e)),
        }
    }
    fs::remove_dir(pin_dir).map_err(pin_err("cannot remove", pin_dir))?;
    info!(pin_dir = %pin_dir.display(), "detached and unpinned");
    Ok(true)
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

/// Creates the pin directory, which must live on a bpf file system.
fn prepare_pin_dir(pin_dir: &Path) -> Result<()> {
    // Check where the directory would be created before creating anything.
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let magic = fs_type::magic(existing).map_err(pin_err("cannot stat", existing))?;
    if magic != fs_type::BPF_FS_MAGIC {
        return Err(DataplaneError::NoBpffs {
            dir: pin_dir.to_path_buf(),
        });
    }
    fs::create_dir_all(pin_dir).map_err(pin_err("cannot create", pin_dir))
}

/// Refuses to adopt pinned maps whose key or value layout differs from this build's: aya would
/// reuse them blindly and the programs would read garbage.
fn check_pinned_layouts(pin_dir: &Path) -> Result<()> {
    use std::mem::size_of;
    let expected: [(&'static str, u32, u32); 5] = [
        (
            map_names::SERVICES,
            size_of::<ServiceKey>() as u32,
            size_of::<ServiceValue>() as u32,
        ),
        (map_names::CONFIG, 4, size_of::<Config>() as u32),
        (
            map_names::ORIG_DST,
            size_of::<Endpoint>() as u32,
            size_of::<Endpoint>() as u32,
        ),
        (map_names::COUNTERS, 4, size_of::<Counters>() as u32),
        (map_names::SERVICE_NAMES, 4, size_of::<ServiceName>() as u32),
    ];
    for (name, key_size, value_size) in expected {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(map_err(name))?;
        for (what, found, want) in [
            ("key size", info.key_size(), key_size),
            ("value size", info.value_size(), value_size),
        ] {
            if found != want {
                return Err(DataplaneError::IncompatiblePin {
                    path,
                    what,
                    found,
                    expected: want,
                });
            }
        }
    }
    Ok(())
}

/// Pins `link` at `links_dir/name`, replacing (and so releasing) a link pinned there before.
fn replace_pinned_link(links_dir: &Path, name: &str, link: &OwnedFd) -> Result<()> {
    let path = links_dir.join(name);
    // bpffs refuses names with dots.
    let staging = links_dir.join(format!("{name}_next"));
    // A staging pin left by a crash between pin and rename would block the pin below.
    match fs::remove_file(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(pin_err("cannot remove", &staging)(e)),
    }
    link::obj_pin(link.as_fd(), &staging).map_err(pin_err("cannot pin link", &staging))?;
    let replaced = path.exists();
    // rename(2) on bpffs swaps the pin atomically; the old link loses its last reference and
    // is detached only now, after the new program is already attached.
    fs::rename(&staging, &path).map_err(pin_err("cannot rename pin to", &path))?;
    if replaced {
        debug!(link = %path.display(), "replaced the previous run's link");
    } else {
        debug!(link = %path.display(), "pinned");
    }
    Ok(())
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
