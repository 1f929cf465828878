//! `cgroup/getsockopt`: answers `SO_ORIGINAL_DST` (and `IP6T_SO_ORIGINAL_DST`) for redirected
//! connections, so an unmodified proxy (Envoy's `original_dst` listener filter) finds where the
//! client was going. Every other option, and every connection we did not redirect, keeps the
//! kernel's own answer.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use redirector_common::{
    AF_INET, AF_INET6, Endpoint, IP6T_SO_ORIGINAL_DST, SO_ORIGINAL_DST, SOL_IP, SOL_IPV6, v4_mapped,
};

use crate::{
    counters::bump,
    ctx::{ALLOW, read_ip6},
    maps::ORIG_DST,
};

/// `sizeof(struct sockaddr_in)`.
const SOCKADDR_IN_LEN: usize = 16;
/// `sizeof(struct sockaddr_in6)`.
const SOCKADDR_IN6_LEN: usize = 28;

#[cgroup_sockopt(getsockopt)]
pub fn getsockopt(ctx: SockoptContext) -> i32 {
    try_getsockopt(&ctx);
    ALLOW
}

#[inline(always)]
fn try_getsockopt(ctx: &SockoptContext) {
    let so = ctx.sockopt;
    // SAFETY: context fields of the right sizes; `sk` is a valid socket for the program's run.
    unsafe {
        let level = read_volatile(addr_of!((*so).level));
        let optname = read_volatile(addr_of!((*so).optname));
        let want_v6 = if level == SOL_IP && optname == SO_ORIGINAL_DST {
            false
        } else if level == SOL_IPV6 && optname == IP6T_SO_ORIGINAL_DST {
            true
        } else {
            return;
        };
        let sk = (*so).__bindgen_anon_1.sk;
        let port = u16::from_be(read_volatile(addr_of!((*sk).dst_port)));
        let peer = if read_volatile(addr_of!((*sk).family)) == u32::from(AF_INET) {
            let ip = read_volatile(addr_of!((*sk).dst_ip4)).to_ne_bytes();
            Endpoint::new(v4_mapped(ip), port)
        } else {
            Endpoint::new(read_ip6(addr_of!((*sk).dst_ip6).cast::<u32>()), port)
        };
        let Some(orig) = ORIG_DST.get_ptr(peer) else {
            bump!(orig_dst_not_found);
            return;
        };
        let orig = *orig;

        let optval = (*so).__bindgen_anon_2.optval.cast::<u8>();
        let end = (*so).__bindgen_anon_3.optval_end.cast::<u8>();
        let written = if want_v6 {
            if optval.add(SOCKADDR_IN6_LEN) > end {
                return;
            }
            // struct sockaddr_in6 { family, port (be), flowinfo, addr[16], scope_id }
            let mut buf = [0u8; SOCKADDR_IN6_LEN];
            buf[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
            buf[2..4].copy_from_slice(&orig.port.to_be_bytes());
            buf[8..24].copy_from_slice(&orig.addr);
            write_volatile(optval.cast::<[u8; SOCKADDR_IN6_LEN]>(), buf);
            SOCKADDR_IN6_LEN
        } else {
            // An IPv6 destination cannot be told in a sockaddr_in: keep the kernel's answer.
            let Some(ip) = orig.v4() else {
                return;
            };
            if optval.add(SOCKADDR_IN_LEN) > end {
                return;
            }
            // struct sockaddr_in { family, port (be), addr[4], zero[8] }
            let mut buf = [0u8; SOCKADDR_IN_LEN];
            buf[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
            buf[2..4].copy_from_slice(&orig.port.to_be_bytes());
            buf[4..8].copy_from_slice(&ip);
            write_volatile(optval.cast::<[u8; SOCKADDR_IN_LEN]>(), buf);
            SOCKADDR_IN_LEN
        };
        write_volatile(addr_of_mut!((*so).optlen), written as i32);
        write_volatile(addr_of_mut!((*so).retval), 0);
        bump!(orig_dst_found);
    }
}
