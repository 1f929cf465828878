//! `cgroup/connect4` and `cgroup/connect6`: the steering decision.
//!
//! A TCP connect to a selected destination, from a socket that is not excluded, while the proxy
//! holds a valid readiness lease, is rewritten to one of the proxy's ports, and the original
//! destination is stored on the socket. Everything else passes untouched; unselected traffic
//! costs one hash lookup and, to forget what an earlier connect on the same socket may have
//! recorded, one socket-storage delete (a pointer test on a socket that has none).

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    helpers::{
        bpf_get_current_uid_gid,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_ktime_get_ns},
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use redirector_common::{
    Config, Endpoint, IPPROTO_TCP, MAX_EXCLUDED_CGROUPS, PROXY4, PROXY6, ServiceKey,
    proxy_port_for, v4_mapped,
};

use crate::{
    counters::bump,
    ctx::{ALLOW, read_ip6, write_ip6},
    maps::{CONFIG, PROXY_FAILED, PROXY_LEASE, SERVICES, SOCK_ORIG_DST},
};

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    try_connect4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    try_connect6(&ctx);
    ALLOW
}

#[inline(always)]
fn try_connect4(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: the context is valid for the program's run; reads are the sizes the verifier allows.
    unsafe {
        if read_volatile(addr_of!((*sa).protocol)) != u32::from(IPPROTO_TCP) {
            return;
        }
        bump!(seen);
        let ip = read_volatile(addr_of!((*sa).user_ip4)).to_ne_bytes();
        let port = u16::from_be(read_volatile(addr_of!((*sa).user_port)) as u16);
        let dst = Endpoint::new(v4_mapped(ip), port);
        let Some(proxy) = steer(ctx, dst) else {
            forget(ctx, &dst);
            return;
        };
        // `steer` only answers an IPv4 proxy for an IPv4 destination.
        let Some(proxy_ip) = proxy.v4() else {
            return;
        };
        write_volatile(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(proxy_ip));
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(proxy.port.to_be()));
    }
}

#[inline(always)]
fn try_connect6(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: as in `try_connect4`; `user_ip6` is the four words `read_ip6`/`write_ip6` need.
    unsafe {
        if read_volatile(addr_of!((*sa).protocol)) != u32::from(IPPROTO_TCP) {
            return;
        }
        bump!(seen);
        let addr = read_ip6(addr_of!((*sa).user_ip6).cast::<u32>());
        let port = u16::from_be(read_volatile(addr_of!((*sa).user_port)) as u16);
        // IPv4-mapped destinations on dual-stack sockets get the IPv4-mapped IPv4 proxy.
        let dst = Endpoint::new(addr, port);
        let Some(proxy) = steer(ctx, dst) else {
            forget(ctx, &dst);
            return;
        };
        write_ip6(addr_of_mut!((*sa).user_ip6).cast::<u32>(), &proxy.addr);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(proxy.port.to_be()));
    }
}

/// The proxy to send this connection to, or `None` to leave it alone. On `Some`, the original
/// destination has been stored on the socket.
#[inline(always)]
fn steer(ctx: &SockAddrContext, dst: Endpoint) -> Option<Endpoint> {
    SERVICES.get_ptr(ServiceKey::tcp(dst.addr, dst.port))?;
    // SAFETY: index 0 of a one-element array map always exists; user space writes it whole.
    let cfg = unsafe { &*CONFIG.get_ptr(0)? };
    let (which, proxy_addr, first_port) = if dst.is_v4() {
        (PROXY4, v4_mapped(cfg.proxy4_addr), cfg.proxy4_port)
    } else {
        (PROXY6, cfg.proxy6_addr, cfg.proxy6_port)
    };
    if first_port == 0 {
        bump!(skipped_no_proxy);
        return None;
    }
    if !proxy_ready(which) {
        bump!(skipped_proxy_not_ready);
        return None;
    }
    if kernel_or_root_task(cfg) {
        bump!(skipped_root_cgroup);
        return None;
    }
    if excluded(ctx, cfg) {
        bump!(skipped_excluded);
        return None;
    }
    let mut initial = dst;
    // SAFETY: the helper takes the context's socket, which the kernel guarantees is valid.
    let slot = unsafe { SOCK_ORIG_DST.get_or_insert_ptr_mut(ctx, Some(&mut initial)) };
    if slot.is_null() {
        // Without a record the proxy could not find the destination: better to go direct.
        bump!(skipped_record_failed);
        return None;
    }
    // SAFETY: non-null storage of this socket. A socket that connects again records anew.
    unsafe { *slot = dst };
    bump!(redirected);
    let port = proxy_port_for(&dst, first_port, cfg.proxy_port_count());
    Some(Endpoint::new(proxy_addr, port))
}

/// Whether proxy `which` holds a lease now that no failed connect has voided.
#[inline(always)]
fn proxy_ready(which: u32) -> bool {
    let Some(lease) = PROXY_LEASE.get(which) else {
        return false;
    };
    let failed_at = PROXY_FAILED.get(which).copied().unwrap_or(0);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    lease.steers(now, failed_at)
}

/// Drops the record an earlier, steered connect on this socket left (a connect that failed, then
/// a new one on the same socket that is not steered): `getpeername` and `sockops` would
/// otherwise act on it.
///
/// A connect to one of the proxy's own endpoints keeps its record: while the daemon replaces
/// its links, the previous run's program runs first on the same connect, has just steered it
/// and recorded the destination, and this one must not undo that. (A socket that connects to
/// the proxy directly after a failed steered connect keeps that connect's destination, which
/// is where it had asked to go.)
#[inline(always)]
fn forget(ctx: &SockAddrContext, dst: &Endpoint) {
    if CONFIG.get(0).is_some_and(|cfg| cfg.is_proxy_endpoint(dst)) {
        return;
    }
    // SAFETY: `sk` of a sock_addr context is a valid full socket.
    let _ = unsafe { SOCK_ORIG_DST.delete((*ctx.sock_addr).__bindgen_anon_1.sk) };
}

/// Whether the connecting task sits in a cgroup shallower than `steer_min_level`: the attach
/// point's own cgroup, which on a node is the root, home of the kernel's threads. A kernel
/// socket's connect (NFS, CIFS, ceph clients) is never steered: on kernels before "net: Avoid
/// address overwrite in kernel_connect" the rewrite would change the caller's stored server
/// address, and its next reconnect would go to the proxy with no original destination.
/// (CIFS makes its first connect in the `mount(2)` caller's context, so that one connect is
/// treated like the caller's own: a pod mounting a share whose server is a selected Service.)
#[inline(always)]
fn kernel_or_root_task(cfg: &Config) -> bool {
    let level = cfg.steer_min_level;
    // SAFETY: plain helper call; it answers 0 when the task's cgroup is shallower than `level`.
    level != 0 && unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) } == 0
}

/// Loop prevention: the proxy's own upstream connections (and anything else the operator
/// names) are never steered.
#[inline(always)]
fn excluded(ctx: &SockAddrContext, cfg: &Config) -> bool {
    // SAFETY: `sk` of a sock_addr context is a valid socket; `mark` is a 4-byte field.
    let mark = unsafe {
        let sk = (*ctx.sock_addr).__bindgen_anon_1.sk;
        read_volatile(addr_of!((*sk).mark))
    };
    if cfg.mark_excluded(mark) {
        return true;
    }
    // The real UID of the connecting task (the low half).
    let uid = bpf_get_current_uid_gid() as u32;
    if cfg.uid_excluded(uid) {
        return true;
    }
    let mut i = 0;
    while i < MAX_EXCLUDED_CGROUPS {
        if i as u32 >= cfg.exclude_cgroup_count {
            break;
        }
        let c = cfg.exclude_cgroups[i];
        // SAFETY: plain helper call; a level deeper than the task's cgroup answers 0.
        if unsafe { bpf_get_current_ancestor_cgroup_id(c.level as i32) } == c.id {
            return true;
        }
        i += 1;
    }
    false
}
