//! `cgroup/getsockopt`: answers `SO_ORIGINAL_DST` (and `IP6T_SO_ORIGINAL_DST`) on the proxy's
//! accepted sockets, so an unmodified proxy (Envoy's `original_dst` listener filter) finds where
//! the client was going. Every other call keeps exactly the kernel's own answer.
//!
//! - Only sockets whose own address is one the proxy listens on get our answer: a sidecar's
//!   socket whose peer happens to have a steered connection's address and port gets the kernel's.
//! - On a proxy socket, a connection that was not steered (made to the proxy directly, or NATed
//!   to it) is answered with the socket's own address: "no original destination", said the
//!   same way on every kernel (5.10 lets a program set no error but 0), and never conntrack's
//!   answer, which would send the proxy to a NATed address that leads back to itself.
//! - Whatever the program does not answer, it hands back with `optlen = 0`: nothing is copied
//!   from the program's buffer, so the kernel's own result stands. The program only sees the
//!   first page of the buffer; leaving `optlen` as it was made every getsockopt with a larger
//!   buffer fail with EFAULT on kernels without "bpf: Don't EFAULT for {g,s}setsockopt with wrong
//!   optlen" (5.10.y, 6.1 before 6.1.39), `iptables-save` of a big table among them.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use redirector_common::{
    AF_INET, AF_INET6, Endpoint, IP6T_SO_ORIGINAL_DST, SO_ORIGINAL_DST, SOL_IP, SOL_IPV6, v4_mapped,
};

use crate::{
    counters::bump,
    ctx::{ALLOW, read_ip6},
    maps::{CONFIG, ORIG_DST},
};

/// `sizeof(struct sockaddr_in)`.
const SOCKADDR_IN_LEN: usize = 16;
/// `sizeof(struct sockaddr_in6)`.
const SOCKADDR_IN6_LEN: usize = 28;

#[cgroup_sockopt(getsockopt)]
pub fn getsockopt(ctx: SockoptContext) -> i32 {
    if !try_answer(&ctx) {
        // SAFETY: `optlen` is a writable 4-byte field of the context.
        unsafe { write_volatile(addr_of_mut!((*ctx.sockopt).optlen), 0) };
    }
    ALLOW
}

/// Answers the call if it is `SO_ORIGINAL_DST` on a proxy socket; `false` leaves it to the
/// kernel.
#[inline(always)]
fn try_answer(ctx: &SockoptContext) -> bool {
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
            return false;
        };
        // Both families' fields are read and the values chosen after, as in sockops.rs: the
        // verifier refuses loads through a socket pointer moved by a computed offset.
        let sk = (*so).__bindgen_anon_1.sk;
        let v4 = read_volatile(addr_of!((*sk).family)) == u32::from(AF_INET);
        let local_port = read_volatile(addr_of!((*sk).src_port)) as u16; // host order
        let src4 = read_volatile(addr_of!((*sk).src_ip4)).to_ne_bytes();
        let src6 = read_ip6(addr_of!((*sk).src_ip6).cast::<u32>());
        let local = Endpoint::new(if v4 { v4_mapped(src4) } else { src6 }, local_port);
        let Some(cfg) = CONFIG.get(0) else {
            return false;
        };
        if !cfg.is_proxy_endpoint(&local) {
            return false;
        }
        let port = u16::from_be(read_volatile(addr_of!((*sk).dst_port)));
        let dst4 = read_volatile(addr_of!((*sk).dst_ip4)).to_ne_bytes();
        let dst6 = read_ip6(addr_of!((*sk).dst_ip6).cast::<u32>());
        let peer = Endpoint::new(if v4 { v4_mapped(dst4) } else { dst6 }, port);
        let (answer, found) = match ORIG_DST.get_ptr(peer) {
            Some(orig) => (*orig, true),
            None => (local, false),
        };

        let optval = (*so).__bindgen_anon_2.optval.cast::<u8>();
        let end = (*so).__bindgen_anon_3.optval_end.cast::<u8>();
        let written = if want_v6 {
            if optval.add(SOCKADDR_IN6_LEN) > end {
                return false;
            }
            // struct sockaddr_in6 { family, port (be), flowinfo, addr[16], scope_id }
            let mut buf = [0u8; SOCKADDR_IN6_LEN];
            buf[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
            buf[2..4].copy_from_slice(&answer.port.to_be_bytes());
            buf[8..24].copy_from_slice(&answer.addr);
            write_volatile(optval.cast::<[u8; SOCKADDR_IN6_LEN]>(), buf);
            SOCKADDR_IN6_LEN
        } else {
            // An IPv6 destination cannot be told in a sockaddr_in: keep the kernel's answer.
            let Some(ip) = answer.v4() else {
                return false;
            };
            if optval.add(SOCKADDR_IN_LEN) > end {
                return false;
            }
            // struct sockaddr_in { family, port (be), addr[4], zero[8] }
            let mut buf = [0u8; SOCKADDR_IN_LEN];
            buf[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
            buf[2..4].copy_from_slice(&answer.port.to_be_bytes());
            buf[4..8].copy_from_slice(&ip);
            write_volatile(optval.cast::<[u8; SOCKADDR_IN_LEN]>(), buf);
            SOCKADDR_IN_LEN
        };
        // The kernel fails SO_ORIGINAL_DST for a steered connection (conntrack saw no NAT), so a
        // call that arrives here already answered was answered by an earlier program of the
        // chain: the previous run's, while the daemon replaces its links. Count each call once.
        let answered_before = read_volatile(addr_of!((*so).retval)) == 0;
        write_volatile(addr_of_mut!((*so).optlen), written as i32);
        write_volatile(addr_of_mut!((*so).retval), 0);
        if answered_before {
            // Nothing to count.
        } else if found {
            bump!(orig_dst_found);
        } else {
            bump!(orig_dst_not_found);
        }
        true
    }
}
