//! `sockops`: publishes a redirected connection as the proxy will see it, and removes it at close.
//!
//! At `TCP_CONNECT_CB` the source port is chosen and the SYN is not yet sent, so the entry exists
//! before the proxy can accept the connection. The state callback is switched on only for
//! redirected sockets, so other connections never pay for it.

use core::ptr::{addr_of, from_ref, null_mut, read_volatile};

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE, bpf_sock_ops,
    },
    helpers::generated::bpf_sk_storage_get,
    macros::sock_ops,
    programs::SockOpsContext,
};
use redirector_common::{AF_INET, Endpoint, v4_mapped};

use crate::{
    ctx::read_ip6,
    maps::{ORIG_DST, SOCK_ORIG_DST},
};

#[sock_ops]
pub fn track_connection(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => on_close(&ctx),
        _ => {}
    }
    // sockops programs answer 1 for "ok"; the value is not a verdict.
    1
}

#[inline(always)]
fn on_connect(ctx: &SockOpsContext) {
    // SAFETY: `sk` is a nullable socket pointer of the context; checked before use.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
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
        return;
    }
    // SAFETY: non-null storage of this socket.
    let orig = unsafe { *orig };
    // A full LRU evicts the oldest entry, so the insert only fails without memory; then the
    // proxy answers "not found" and the connection fails closed at the proxy, which is counted.
    let _ = ORIG_DST.insert(local_endpoint(ctx.ops), orig, u64::from(BPF_ANY));
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

#[inline(always)]
fn on_close(ctx: &SockOpsContext) {
    let _ = ORIG_DST.remove(local_endpoint(ctx.ops));
}

/// The socket's own address and port: the client side of the connection, as the proxy's
/// accepted socket sees its peer.
#[inline(always)]
fn local_endpoint(ops: *mut bpf_sock_ops) -> Endpoint {
    // SAFETY: context fields, read one 4-byte word at a time as the verifier requires.
    unsafe {
        let port = read_volatile(addr_of!((*ops).local_port)) as u16; // host order
        if read_volatile(addr_of!((*ops).family)) == u32::from(AF_INET) {
            let ip = read_volatile(addr_of!((*ops).local_ip4)).to_ne_bytes();
            return Endpoint::new(v4_mapped(ip), port);
        }
        Endpoint::new(read_ip6(addr_of!((*ops).local_ip6).cast::<u32>()), port)
    }
}
