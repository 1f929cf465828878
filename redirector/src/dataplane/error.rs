//! What can go wrong on the kernel side, each error saying what failed and, where there is
//! one, the fix.

use std::path::{Path, PathBuf};

use aya::{maps::MapError, programs::ProgramError};

use crate::cgroup::CgroupError;

use super::MIN_KERNEL;

pub(super) type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// Typed dataplane errors: each says what failed and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The running kernel is older than the programs need.
    #[error(
        "kernel {found} is too old: the redirector needs Linux {}.{} or newer (its programs attach \
         as cgroup bpf_links, 5.7+, and hook getpeername, 5.8+; {}.{} is the oldest kernel it is \
         tested on)",
        MIN_KERNEL.0, MIN_KERNEL.1, MIN_KERNEL.0, MIN_KERNEL.1
    )]
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
    /// The pins were made by a version whose layout this build does not know.
    #[error(
        "the pins under {dir} have layout version {found}, and this build knows versions 1 to \
         {supported}: they were made by a newer redirector (a downgrade?). Run that version, or \
         remove them with `redirector detach --pin-dir {dir}` (new connections go direct until \
         this daemon attaches) and start again"
    )]
    UnknownLayout {
        /// The pin directory.
        dir: PathBuf,
        /// The version stamped there.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// `detach` was pointed at a directory that holds none of the redirector's pins.
    #[error(
        "{dir} holds none of the redirector's pins (no services, config or links): refusing to \
         remove what is there; is --pin-dir right?"
    )]
    NotOurPinDir {
        /// The directory asked for.
        dir: PathBuf,
    },
    /// This binary was built before the kernel object, so it has nothing to load.
    #[error(
        "this redirector binary was built without its kernel object: build the object with \
         `cargo xtask build-ebpf` (first time on this machine: `sudo cargo xtask setup`), then \
         rebuild the redirector"
    )]
    NoObject,
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

pub(super) fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map {
        map,
        source: Box::new(source),
    }
}

pub(super) fn prog_err(program: &'static str) -> impl FnOnce(ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program {
        program,
        source: Box::new(source),
    }
}

pub(super) fn pin_err(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> DataplaneError {
    let path = path.to_path_buf();
    move |source| DataplaneError::Pin { what, path, source }
}
