//! Which file system a path is on, by `statfs(2)`'s magic number: how the dataplane checks
//! that pins go to bpffs and programs attach to a cgroup v2 directory.

use std::{ffi::CString, io, path::Path};

/// `BPF_FS_MAGIC` from `linux/magic.h`.
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The `f_type` of the file system `path` is on.
pub fn magic(path: &Path) -> io::Result<i64> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs fills the zeroed struct; the path is a valid C string.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut buf) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between libcs"
    )]
    Ok(buf.f_type as i64)
}
