//! The pin directory: where state lives between runs. Creating it (on bpffs only), checking
//! that what an earlier run pinned has this build's layout, swapping a pinned link without a
//! gap, and removing everything (`redirector detach`).

use std::{
    fs,
    io::ErrorKind,
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
};

use aya::programs::links::PinnedLink;
use redirector_common::{
    Config, Counters, Endpoint, ProxyLease, ServiceKey, ServiceName, ServiceValue, map_names,
};
use tracing::{debug, info};

use super::{
    error::{DataplaneError, Result, map_err, pin_err},
    link,
};
use crate::fs_type;

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
/// reuse them blindly and the programs would read garbage. The counters are the exception:
/// they hold nothing that must survive, so a `counters` map of another layout (a version that
/// counts other things) is unpinned, and created anew by the load; the old programs keep
/// their own reference to the old map until their links are replaced.
pub(super) fn check_pinned_layouts(pin_dir: &Path) -> Result<()> {
    use std::mem::size_of;
    let expected: [(&'static str, u32, u32); 7] = [
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
