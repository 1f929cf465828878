//! bpf_link creation and pinning by raw `bpf(2)` calls. aya 0.14 cannot turn every cgroup
//! attachment into a pinnable link (`cgroup/getsockopt` links have no `FdLink` conversion), and
//! one code path for all six programs is simpler than three.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

/// `enum bpf_cmd` values used here (uapi, stable).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_DETACH: libc::c_long = 34;

// `enum bpf_attach_type` values of our programs (uapi, stable).
pub(super) const BPF_CGROUP_SOCK_OPS: u32 = 3;
pub(super) const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub(super) const BPF_CGROUP_INET6_CONNECT: u32 = 11;
pub(super) const BPF_CGROUP_GETSOCKOPT: u32 = 21;
pub(super) const BPF_CGROUP_INET4_GETPEERNAME: u32 = 29;
pub(super) const BPF_CGROUP_INET6_GETPEERNAME: u32 = 30;

/// `union bpf_attr` is at most this big for the commands used; unused bytes must be zero.
type BpfAttr = [u64; 16];

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-initialised buffer as large as the kernel reads for `cmd`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of::<BpfAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Attaches `prog` to the cgroup `cgroup` as a bpf_link (multi-attach: other programs on the
/// cgroup, including a previous run's, keep running).
pub(super) fn link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr: BpfAttr = [0; 16];
    // struct { __u32 prog_fd; __u32 target_fd; __u32 attach_type; __u32 flags; ... }
    attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(cgroup.as_raw_fd() as u32) << 32);
    attr[1] = u64::from(attach_type);
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the object `fd` (a link here) at `path` on bpffs.
pub(super) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr: BpfAttr = [0; 16];
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    attr[0] = c_path.as_ptr() as u64;
    attr[1] = u64::from(fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Detaches the pinned link at `path` and removes the pin, so that the program no longer runs
/// when this returns. Removing the pin alone drops the last reference from a kernel work
/// queue (6.x), and the program stays attached for a moment after `detach` has returned.
pub(super) fn unpin_link(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr: BpfAttr = [0; 16];
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    attr[0] = c_path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut attr: BpfAttr = [0; 16];
    // struct { __u32 link_fd; }: cgroup links can be detached since 5.9.
    attr[0] = u64::from(link.as_raw_fd() as u32);
    match bpf(BPF_LINK_DETACH, &mut attr) {
        // Not a link that can be detached (a pin that is not a cgroup link): unpinning and
        // closing our descriptor, the last reference, still releases it synchronously.
        Err(e)
            if e.raw_os_error() == Some(libc::EOPNOTSUPP)
                || e.raw_os_error() == Some(libc::EINVAL) => {}
        other => {
            other?;
        }
    }
    std::fs::remove_file(path)
}

/// How many programs are attached to the cgroup `cgroup` itself for `attach_type` (inherited
/// ones not counted). `BPF_PROG_QUERY` in the form every supported kernel answers (5.10 cannot
/// answer the newer form bpftool uses).
pub(super) fn attached_count(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<u32> {
    let mut attr: BpfAttr = [0; 16];
    // struct { __u32 target_fd; __u32 attach_type; __u32 query_flags; __u32 attach_flags;
    //          __aligned_u64 prog_ids; __u32 prog_cnt; ... }: no id buffer, so only the count.
    attr[0] = u64::from(cgroup.as_raw_fd() as u32) | (u64::from(attach_type) << 32);
    bpf(BPF_PROG_QUERY, &mut attr)?;
    Ok((attr[3] & 0xffff_ffff) as u32)
}
