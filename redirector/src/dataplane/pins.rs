//! The pin directory: where state lives between runs. Creating it (on bpffs only), checking
//! the layout version an earlier run stamped there (migrating older pins, refusing newer
//! ones), swapping a pinned link without a gap, releasing links of programs this version does
//! not have, and removing everything (`redirector detach`).

use std::{
    fs,
    io::ErrorKind,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData};
use redirector_common::{
    Config, Counters, Endpoint, LAYOUT_VERSION, ProxyLease, ServiceKey, ServiceName, ServiceValue,
    map_names, program_names,
};
use tracing::{debug, info};

use super::{
    error::{DataplaneError, Result, map_err, pin_err},
    link,
};
use crate::fs_type;

/// Removes every program and pin under `pin_dir`: a clean uninstall. Links are unpinned first
/// (dropping the last reference detaches the program), then the maps, then the directories;
/// pins this version does not know (an older version's maps, a renamed program's link) go too.
/// Connections already proxied keep working (their sockets are connected to the proxy); new
/// ones go direct. Returns what was removed (empty: there was nothing).
///
/// Refuses a directory that holds none of the redirector's pins, so a mistyped `--pin-dir`
/// (`/sys/fs/bpf` itself, another tool's directory) cannot remove someone else's programs.
pub fn detach(pin_dir: &Path) -> Result<Vec<PathBuf>> {
    if !pin_dir.exists() {
        return Ok(Vec::new());
    }
    let ours = pin_dir.join("links").is_dir()
        || map_names::ALL
            .iter()
            .any(|name| pin_dir.join(name).exists());
    if !ours {
        return Err(DataplaneError::NotOurPinDir {
            dir: pin_dir.to_path_buf(),
        });
    }
    let mut removed = Vec::new();
    let links_dir = pin_dir.join("links");
    if links_dir.is_dir() {
        for path in list(&links_dir)? {
            if path.is_dir() {
                continue;
            }
            link::unpin_link(&path).map_err(pin_err("cannot detach and unpin", &path))?;
            debug!(link = %path.display(), "detached");
            removed.push(path);
        }
    }
    remove_tree(pin_dir, &mut removed)?;
    info!(pin_dir = %pin_dir.display(), removed = removed.len(), "detached and unpinned");
    Ok(removed)
}

/// The entries of a directory, sorted (so what `detach` reports reads the same every time).
fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = fs::read_dir(dir)
        .map_err(pin_err("cannot list", dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(pin_err("cannot list", dir))?;
    paths.sort();
    Ok(paths)
}

/// Removes every pin below `dir`, then `dir` itself.
fn remove_tree(dir: &Path, removed: &mut Vec<PathBuf>) -> Result<()> {
    for path in list(dir)? {
        if path.is_dir() {
            remove_tree(&path, removed)?;
        } else {
            fs::remove_file(&path).map_err(pin_err("cannot unpin", &path))?;
            removed.push(path);
        }
    }
    fs::remove_dir(dir).map_err(pin_err("cannot remove", dir))
}

/// The layout version of the pins under `pin_dir`: `None` when nothing is pinned, 1 for pins
/// made before the version stamp.
pub fn pinned_layout(pin_dir: &Path) -> Result<Option<u32>> {
    let stamp = pin_dir.join(map_names::LAYOUT);
    if stamp.exists() {
        let map = MapData::from_pin(&stamp).map_err(map_err(map_names::LAYOUT))?;
        let array: Array<MapData, u32> =
            Array::try_from(Map::Array(map)).map_err(map_err(map_names::LAYOUT))?;
        return Ok(Some(array.get(&0, 0).map_err(map_err(map_names::LAYOUT))?));
    }
    Ok(pin_dir.join(map_names::SERVICES).exists().then_some(1))
}

/// Makes the pins under `pin_dir` ready for this build to adopt: pins of this layout are
/// checked, pins of an older one are migrated, pins of a newer one are refused (a downgrade
/// cannot know what they mean). Nothing is refused while the programs keep running: until this
/// daemon replaces the links, the programs of the version that made the pins go on steering.
pub(super) fn prepare_layout(pin_dir: &Path) -> Result<()> {
    match pinned_layout(pin_dir)? {
        None => {}
        Some(LAYOUT_VERSION) => {}
        // 1 → 2 adds `proxy_lease`, `proxy_failed` and `layout`, which the load creates, and
        // leaves `config` the same size (its ready flags became reserved bytes this version
        // writes as zero). Until this daemon's first proxy check grants a lease, its programs
        // send new connections direct: unlogged for at most one check interval, never refused.
        Some(1) => info!(
            pin_dir = %pin_dir.display(),
            from = 1,
            to = LAYOUT_VERSION,
            "migrating the pins: the proxy's readiness becomes a lease (new maps)"
        ),
        Some(found) => {
            return Err(DataplaneError::UnknownLayout {
                dir: pin_dir.to_path_buf(),
                found,
                supported: LAYOUT_VERSION,
            });
        }
    }
    check_pinned_layouts(pin_dir)
}

/// Releases links pinned under `links_dir` for programs this version does not have (a
/// program renamed or removed since the version that pinned them): otherwise they would stay
/// attached, running beside this version's programs, until `detach`.
pub(super) fn release_unknown_links(links_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut released = Vec::new();
    for path in list(links_dir)? {
        let known = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| program_names::ALL.contains(&n));
        if known || path.is_dir() {
            continue;
        }
        link::unpin_link(&path).map_err(pin_err("cannot detach and unpin", &path))?;
        info!(link = %path.display(), "released the link of a program this version does not have");
        released.push(path);
    }
    Ok(released)
}

/// Creates the pin directory, which must live on a bpf file system.
pub(super) fn prepare_pin_dir(pin_dir: &Path) -> Result<()> {
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
/// reuse them blindly and the programs would read garbage. (A safety net under the layout
/// version: a build whose stamp was not raised for a change it made still cannot misread.)
/// The counters are the exception: they hold nothing that must survive, so a `counters` map of
/// another layout (a version that counts other things) is unpinned, and created anew by the
/// load; the old programs keep their own reference to the old map until their links are
/// replaced.
pub(super) fn check_pinned_layouts(pin_dir: &Path) -> Result<()> {
    use std::mem::size_of;
    let expected: [(&'static str, u32, u32); 8] = [
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
        (map_names::PROXY_LEASE, 4, size_of::<ProxyLease>() as u32),
        (map_names::PROXY_FAILED, 4, size_of::<u64>() as u32),
        (map_names::LAYOUT, 4, size_of::<u32>() as u32),
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
            if found != want && name == map_names::COUNTERS {
                info!(
                    pin = %path.display(),
                    "the pinned counters have another layout (an earlier version); starting them anew"
                );
                fs::remove_file(&path).map_err(pin_err("cannot unpin", &path))?;
                break;
            }
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
pub(super) fn replace_pinned_link(links_dir: &Path, name: &str, link: &OwnedFd) -> Result<()> {
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
