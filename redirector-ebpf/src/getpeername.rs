//! `cgroup/getpeername4` and `cgroup/getpeername6`: a redirected client still sees the address
//! it dialled as its peer, not the proxy's.

use core::ptr::{addr_of_mut, write_volatile};

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{
    ctx::{ALLOW, write_ip6},
    maps::SOCK_ORIG_DST,
};

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: lookup without creation on the context's socket; a null answer means "not ours".
    let orig = unsafe { SOCK_ORIG_DST.get_ptr_mut(&ctx) };
    if !orig.is_null() {
        // SAFETY: non-null storage of this socket; 4-byte context writes.
        unsafe {
            let orig = *orig;
            if let Some(ip) = orig.v4() {
                let sa = ctx.sock_addr;
                write_volatile(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(ip));
                write_volatile(addr_of_mut!((*sa).user_port), u32::from(orig.port.to_be()));
            }
        }
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in `getpeername4`.
    let orig = unsafe { SOCK_ORIG_DST.get_ptr_mut(&ctx) };
    if !orig.is_null() {
        // SAFETY: non-null storage of this socket; 4-byte context writes.
        unsafe {
            let orig = *orig;
            let sa = ctx.sock_addr;
            write_ip6(addr_of_mut!((*sa).user_ip6).cast::<u32>(), &orig.addr);
            write_volatile(addr_of_mut!((*sa).user_port), u32::from(orig.port.to_be()));
        }
    }
    ALLOW
}
