//! cgroup v2: finding the mount, checking a directory is on it, and naming a cgroup the way the
//! kernel programs compare it (id and depth).

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use redirector_common::CgroupRef;

use crate::fs_type;

/// What can go wrong finding or naming a cgroup v2 directory.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 file system is mounted.
    #[error(
        "no cgroup v2 file system is mounted (looked in /proc/self/mountinfo); mount one with \
         `mount -t cgroup2 none /sys/fs/cgroup/unified` or boot with cgroup v2, then pass it with --cgroup"
    )]
    NoCgroup2Mount,
    /// The path is not a directory of a cgroup2 file system.
    #[error("{path} is not a cgroup v2 directory (the redirector attaches only to cgroup v2)")]
    NotCgroup2 {
        /// The offending path.
        path: PathBuf,
    },
    /// The path is on cgroup2 but not below the mount we found.
    #[error("{path} is not below the cgroup v2 mount {mount}")]
    OutsideMount {
        /// The offending path.
        path: PathBuf,
        /// The cgroup2 mount point.
        mount: PathBuf,
    },
    /// The cgroup2 mount shows a subtree, not the whole hierarchy: depths measured from it
    /// would not be the kernel's.
    #[error(
        "the cgroup v2 mount {mount} is not the root of the hierarchy (it has cgroup.type, which \
         the root lacks): this process sees its own cgroup namespace, or a bind mount of a \
         subtree, so cgroup depths measured from it would not be the kernel's. Mount the host's \
         cgroup2 root (in a pod: a hostPath volume of /sys/fs/cgroup) and pass it with --cgroup"
    )]
    NotHierarchyRoot {
        /// The cgroup2 mount point.
        mount: PathBuf,
    },
    /// Reading the file system failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// What was being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The first cgroup2 mount point listed in `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    cgroup2_mounts()?
        .into_iter()
        .next()
        .ok_or(CgroupError::NoCgroup2Mount)
}

/// The cgroup2 mount that `path` lives on: the deepest mount point above it. (A pod can see
/// two: its runtime's, of its own cgroup namespace, and the host's, from a hostPath volume.)
pub fn cgroup2_mount_containing(path: &Path) -> Result<PathBuf, CgroupError> {
    let canonical = fs::canonicalize(path).map_err(|source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    cgroup2_mounts()?
        .into_iter()
        .filter(|mount| canonical.starts_with(mount))
        .max_by_key(|mount| mount.components().count())
        .ok_or_else(|| CgroupError::NotCgroup2 {
            path: path.to_path_buf(),
        })
}

fn cgroup2_mounts() -> Result<Vec<PathBuf>, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|source| CgroupError::Io {
        path: path.into(),
        source,
    })?;
    Ok(find_cgroup2_mounts(&text))
}

/// Pure part of [`cgroup2_mount`]: the mount points of the `cgroup2` lines, in order.
fn find_cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> ..."
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let code = rest.get(pos + 1..pos + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[pos + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Fails unless `path` is a directory on a cgroup2 file system.
pub fn check_cgroup2(path: &Path) -> Result<(), CgroupError> {
    let magic = fs_type::magic(path).map_err(|source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if magic != fs_type::CGROUP2_SUPER_MAGIC {
        return Err(CgroupError::NotCgroup2 {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// The id and depth of the cgroup at `path`, as `bpf_get_current_ancestor_cgroup_id` sees them.
pub fn cgroup_ref(path: &Path, mount: &Path) -> Result<CgroupRef, CgroupError> {
    check_cgroup2(path)?;
    let canonical = fs::canonicalize(path).map_err(|source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mount = fs::canonicalize(mount).map_err(|source| CgroupError::Io {
        path: mount.to_path_buf(),
        source,
    })?;
    let relative = canonical
        .strip_prefix(&mount)
        .map_err(|_| CgroupError::OutsideMount {
            path: path.to_path_buf(),
            mount: mount.clone(),
        })?;
    // The kernel's levels count from the hierarchy's root. A mount of a subtree (the process's
    // own cgroup namespace, a bind mount) would make every level here too small, and the
    // programs would compare the wrong ancestors. The root is the one cgroup without
    // `cgroup.type`.
    if mount.join("cgroup.type").exists() {
        return Err(CgroupError::NotHierarchyRoot { mount });
    }
    let meta = fs::metadata(&canonical).map_err(|source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(CgroupRef {
        // On cgroup2 a directory's inode number is the cgroup id.
        id: meta.ino(),
        level: relative.components().count() as u32,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_line_among_v1_mounts() {
        let text = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime shared:9 - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime shared:10 - cgroup cgroup rw,cpu
35 30 0:31 / /sys/fs/cgroup/unified rw,relatime shared:14 - cgroup2 cgroup2 rw
";
        assert_eq!(
            find_cgroup2_mounts(text),
            [PathBuf::from("/sys/fs/cgroup/unified")]
        );
        assert!(find_cgroup2_mounts("31 30 0:27 / /x rw - cgroup cgroup rw\n").is_empty());
    }

    #[test]
    fn optional_fields_and_escapes() {
        let text = "35 30 0:31 / /mnt/my\\040cg rw shared:1 master:2 - cgroup2 none rw\n";
        assert_eq!(find_cgroup2_mounts(text), [PathBuf::from("/mnt/my cg")]);
    }
}
