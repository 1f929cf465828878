//! The redirector's kernel programs.
//!
//! The steering decision is made once per connection, at `connect()`: a socket that is already
//! connected never runs connect again, which is why connections opened before a selection stay
//! direct and connections proxied before a deselection stay proxied. Every program returns
//! "allow": the redirector never refuses a connection or an option.
#![no_std]
#![no_main]

mod connect;
mod counters;
mod ctx;
mod getpeername;
mod getsockopt;
mod maps;
mod sockops;

/// The kernel only lends GPL-only helpers to GPL-compatible programs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could get here.
    loop {}
}
