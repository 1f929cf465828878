//! The kernel object built by `cargo xtask build-ebpf`, embedded at build time when it existed
//! (see `build.rs`). Without it, the daemon cannot load anything and says how to fix that.

/// The object's bytes, or `None` when it was not built before this binary.
#[cfg(embedded_ebpf)]
pub static EBPF_OBJECT: Option<&[u8]> =
    Some(aya::include_bytes_aligned!(env!("REDIRECTOR_EBPF_OBJECT")));

/// The object's bytes, or `None` when it was not built before this binary.
#[cfg(not(embedded_ebpf))]
pub static EBPF_OBJECT: Option<&[u8]> = None;
