//! `sockops`: publishes a steered connection as the proxy will see it, and removes it when the
//! proxy is done with it.
//!
//! - At `TCP_CONNECT_CB` (client side) the source port is chosen and the SYN is not yet sent,
//!   so the entry exists before the proxy can accept the connection.
//! - The entry is removed when the proxy's side of the connection closes, not the client's: a
//!   client that writes and closes at once can be gone (its FIN acknowledged by the proxy's
//!   kernel) long before a busy proxy accepts the connection and asks `SO_ORIGINAL_DST`. The
//!   client side removes it only when its connect failed, since then no proxy socket exists.
//!   The LRU is the backstop.
//! - A steered connect that fails at the proxy (refused: the SYN met a reset; or its SYN timed
//!   out) voids the proxy's readiness lease at once (`proxy_failed`), so the connects after it
//!   go direct instead of failing too; the daemon grants a new lease after its next good check.
//! - The state (and retransmission-timeout) callbacks are switched on only for steered client
//!   sockets and for sockets accepted on the proxy's addresses, so other connections never pay
//!   for them.

use core::ptr::{addr_of, from_ref, null_mut, read_volatile};

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTO_CB,
        BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE, BPF_TCP_SYN_SENT, bpf_sock_ops,
    },
    helpers::generated::{bpf_ktime_get_ns, bpf_sk_storage_get},
    macros::sock_ops,
    programs::SockOpsContext,
};
use redirector_common::{AF_INET, Endpoint, PROXY4, PROXY6, v4_mapped};

use crate::{
    counters::bump,
    ctx::read_ip6,
    maps::{CONFIG, ORIG_DST, PROXY_FAILED, SOCK_ORIG_DST},
};

#[sock_ops]
pub fn track_connection(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_accepted(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => on_close(&ctx),
        BPF_SOCK_OPS_RTO_CB => on_timeout(&ctx),
        _ => {}
    }
    // sockops programs answer 1 for "ok"; the value is not a verdict.
    1
}

/// The original destination recorded on this socket by `connect4`/`connect6`, if it was steered.
#[inline(always)]
fn recorded(ctx: &SockOpsContext) -> Option<Endpoint> {
    // SAFETY: `sk` is a nullable socket pointer of the context; checked before use.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: map pointer and a checked socket; no creation, so a null answer means "not ours".
    let orig = unsafe {
        bpf_sk_storage_get(
            from_ref(&SOCK_ORIG_DST).cast_mut().cast(),
            sk.cast(),
            null_mut(),
            0,
        )
    }
    .cast::<Endpoint>();
    if orig.is_null() {
        return None;
    }
    // SAFETY: non-null storage of this socket.
    Some(unsafe { *orig })
}

#[inline(always)]
fn on_connect(ctx: &SockOpsContext) {
    let Some(orig) = recorded(ctx) else {
        return;
    };
    // A full LRU evicts its oldest entry, so the insert only fails without memory; then the
    // proxy finds no original destination, and the failure is counted.
    if ORIG_DST
        .insert(local_endpoint(ctx.ops), orig, u64::from(BPF_ANY))
        .is_err()
    {
        bump!(publish_failed);
    }
    // The timeout callback tells a proxy that does not answer SYNs (stopped, its accept queue
    // full) from one that is just slow.
    let _ = ctx.set_cb_flags(
        (ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG) as i32,
    );
}

/// A connection accepted on one of the proxy's addresses: its close ends the record.
#[inline(always)]
fn on_accepted(ctx: &SockOpsContext) {
    let Some(cfg) = CONFIG.get(0) else {
        return;
    };
    if cfg.is_proxy_endpoint(&local_endpoint(ctx.ops)) {
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
}

#[inline(always)]
fn on_close(ctx: &SockOpsContext) {
    if let Some(orig) = recorded(ctx) {
        // The client side: only a connect that failed (no proxy socket was ever made) removes
        // the entry here. A steered socket closed before its handshake completed was refused
        // by the proxy (or timed out there): on a node-local proxy nothing else leaves a
        // socket in SYN_SENT long enough for an application to give up on it.
        if ctx.arg(0) == BPF_TCP_SYN_SENT {
            let _ = ORIG_DST.remove(local_endpoint(ctx.ops));
            proxy_failed(&orig);
        }
    } else {
        // The proxy side: its peer is the client, the entry's key.
        let _ = ORIG_DST.remove(remote_endpoint(ctx.ops));
    }
}

/// A retransmission timeout: on a steered socket still in SYN_SENT, the proxy did not answer
/// its SYN within the initial RTO (1 s).
#[inline(always)]
fn on_timeout(ctx: &SockOpsContext) {
    // SAFETY: a context field, read as the 4-byte word it is.
    let state = unsafe { read_volatile(addr_of!((*ctx.ops).state)) };
    if state != BPF_TCP_SYN_SENT {
        return;
    }
    if let Some(orig) = recorded(ctx) {
        proxy_failed(&orig);
    }
}

/// Voids the lease of the proxy `orig` was steered to: the connects after this one go direct
/// until the daemon's next good check.
#[inline(always)]
fn proxy_failed(orig: &Endpoint) {
    // IPv4 destinations (IPv4-mapped ones on dual-stack sockets too) go to the IPv4 proxy.
    let which = if orig.is_v4() { PROXY4 } else { PROXY6 };
    if let Some(failed_at) = PROXY_FAILED.get_ptr_mut(which) {
        // SAFETY: plain helper call; the pointer is an element of an array map, valid and
        // aligned. An aligned 8-byte store is not torn, and concurrent writers all store
        // "now", so any of them winning is right.
        unsafe { *failed_at = bpf_ktime_get_ns() };
    }
    bump!(proxy_connect_failed);
}

/// The socket's own address and port. On a client socket that is how the proxy's accepted socket
/// sees its peer.
///
/// Both the IPv4 and the IPv6 fields are read, and the values chosen after: reading one or the
/// other lets the compiler pick the field's address by family, and the verifier refuses a load
/// through a context pointer moved by a computed offset.
#[inline(always)]
fn local_endpoint(ops: *mut bpf_sock_ops) -> Endpoint {
    // SAFETY: context fields, read one 4-byte word at a time as the verifier requires.
    unsafe {
        let port = read_volatile(addr_of!((*ops).local_port)) as u16; // host order
        let family = read_volatile(addr_of!((*ops).family));
        let ip4 = read_volatile(addr_of!((*ops).local_ip4)).to_ne_bytes();
        let ip6 = read_ip6(addr_of!((*ops).local_ip6).cast::<u32>());
        let addr = if family == u32::from(AF_INET) {
            v4_mapped(ip4)
        } else {
            ip6
        };
        Endpoint::new(addr, port)
    }
}

/// The socket's peer address and port (read as in [`local_endpoint`]).
#[inline(always)]
fn remote_endpoint(ops: *mut bpf_sock_ops) -> Endpoint {
    // SAFETY: as in `local_endpoint`.
    unsafe {
        // Network order in the upper half of the word (a 16-bit load shifted left by 16).
        let port = u32::from_be(read_volatile(addr_of!((*ops).remote_port))) as u16;
        let family = read_volatile(addr_of!((*ops).family));
        let ip4 = read_volatile(addr_of!((*ops).remote_ip4)).to_ne_bytes();
        let ip6 = read_ip6(addr_of!((*ops).remote_ip6).cast::<u32>());
        let addr = if family == u32::from(AF_INET) {
            v4_mapped(ip4)
        } else {
            ip6
        };
        Endpoint::new(addr, port)
    }
}
