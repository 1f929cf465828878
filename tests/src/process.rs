//! Starting a program inside a lab network namespace and (optionally) a lab cgroup, the way a
//! pod's process would live there.

use std::{
    fs::{File, OpenOptions},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Child, Command},
};

use anyhow::{Context as _, Result};

use crate::netns::Netns;

/// Spawns `cmd` in `ns`, and in `cgroup` when given. Both are entered between fork and exec
/// with async-signal-safe calls only: `setns(2)` on a namespace fd opened beforehand, and
/// writing "0" (meaning "this process") to a `cgroup.procs` opened beforehand.
pub fn spawn_in(mut cmd: Command, ns: &Netns, cgroup: Option<&Path>) -> Result<Child> {
    let netns = File::open(format!("/run/netns/{}", ns.name()))
        .with_context(|| format!("cannot open namespace {}", ns.name()))?;
    let procs = cgroup
        .map(|c| {
            OpenOptions::new()
                .write(true)
                .open(c.join("cgroup.procs"))
                .with_context(|| format!("cannot open {}/cgroup.procs", c.display()))
        })
        .transpose()?;
    let ns_fd = netns.as_raw_fd();
    let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: only setns(2) and write(2) run in the child, both async-signal-safe, on fds that
    // stay open until after the spawn below.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = procs_fd
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    drop((netns, procs));
    Ok(child)
}
