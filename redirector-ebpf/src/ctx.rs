//! What every program shares about its context: the one verdict, and copies of 16-byte
//! addresses in the form the verifier accepts.

use core::ptr::{read_volatile, write_volatile};

/// The return value of a cgroup sock_addr or sockopt program that lets the call proceed. The
/// redirector never refuses a connection or an option, so it is the only one used.
pub const ALLOW: i32 = 1;

/// Reads a 16-byte address (`user_ip6`, `local_ip6`, `dst_ip6`, ...) from a context.
///
/// Context fields may only be read in 4-byte words; the reads are volatile so that the
/// compiler cannot merge them into a wider load that the verifier refuses.
///
/// # Safety
/// `words` must point at the four words of a readable context field.
#[inline(always)]
pub unsafe fn read_ip6(words: *const u32) -> [u8; 16] {
    let mut addr = [0u8; 16];
    // SAFETY: the caller's promise; each read is one aligned word of the field.
    unsafe {
        addr[0..4].copy_from_slice(&read_volatile(words).to_ne_bytes());
        addr[4..8].copy_from_slice(&read_volatile(words.add(1)).to_ne_bytes());
        addr[8..12].copy_from_slice(&read_volatile(words.add(2)).to_ne_bytes());
        addr[12..16].copy_from_slice(&read_volatile(words.add(3)).to_ne_bytes());
    }
    addr
}

/// Writes a 16-byte address into a context field, one 4-byte word at a time (see
/// [`read_ip6`]).
///
/// # Safety
/// `words` must point at the four words of a writable context field.
#[inline(always)]
pub unsafe fn write_ip6(words: *mut u32, a: &[u8; 16]) {
    // SAFETY: the caller's promise; each write is one aligned word of the field.
    unsafe {
        write_volatile(words, u32::from_ne_bytes([a[0], a[1], a[2], a[3]]));
        write_volatile(words.add(1), u32::from_ne_bytes([a[4], a[5], a[6], a[7]]));
        write_volatile(words.add(2), u32::from_ne_bytes([a[8], a[9], a[10], a[11]]));
        write_volatile(
            words.add(3),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        );
    }
}
