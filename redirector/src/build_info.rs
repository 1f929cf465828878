//! What this binary is: its version, the commit it was built from, and the kernel object it
//! embeds, so `redirector --version`, `status` and the daemon's log say which datapath a node
//! runs.

use std::sync::OnceLock;

use crate::dataplane::EBPF_OBJECT;

/// The crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the binary was built from (`build.rs`), or "unknown". Uncommitted changes are not
/// marked: the object's hash is what tells two datapaths apart exactly.
pub const SOURCE_REVISION: &str = env!("REDIRECTOR_SOURCE_REVISION");

/// The SHA-256 of the embedded kernel object, in hex; `None` without one.
pub fn ebpf_object_sha256() -> Option<&'static str> {
    static HASH: OnceLock<Option<String>> = OnceLock::new();
    HASH.get_or_init(|| EBPF_OBJECT.map(sha256_hex)).as_deref()
}

/// `bytes`' SHA-256 in lower-case hex, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What `redirector --version` prints after the program's name.
pub fn long_version() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let object = ebpf_object_sha256().map_or_else(
            || "none embedded (build it with `cargo xtask build-ebpf`)".to_string(),
            |hash| format!("sha256 {hash}"),
        );
        format!("{VERSION}\nsource revision: {SOURCE_REVISION}\neBPF object: {object}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_the_standard_one() {
        // FIPS 180-2's "abc" example.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_long_version_names_all_three() {
        let text = long_version();
        assert!(text.starts_with(VERSION), "{text}");
        assert!(text.contains("source revision: "), "{text}");
        assert!(text.contains("eBPF object: "), "{text}");
    }
}
