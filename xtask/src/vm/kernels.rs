//! The kernels of the matrix, pinned in one place.
//!
//! Each is Debian's own unsigned image package of a supported release, fetched with a private apt
//! configuration (see [`super::apt`]) and unpacked under `target/vm/`: nothing is installed on
//! the host.
//!
//! To bump a kernel: `cargo xtask vm-test --list-kernels` prints the newest package of each
//! series that the mirrors offer next to the pin; put its name and version here. Debian's
//! security suites keep only the newest build of a series, so a pin that the mirror no longer
//! has is replaced by the newest package of the same series for that run, with a warning that
//! names it (the run never silently tests something else).

/// A kernel of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// What users call it, and what `--kernel` takes.
    pub name: &'static str,
    /// Who runs it (why it is in the matrix).
    pub why: &'static str,
    /// The Debian suites that carry it.
    pub suites: &'static [&'static str],
    /// The pinned package.
    pub package: &'static str,
    /// Its pinned version.
    pub version: &'static str,
    /// The package name pattern of its series (for the fallback when the pin is gone): the
    /// `linux-image-<abi>-amd64-unsigned` packages of one upstream stable series.
    pub series_prefix: &'static str,
}

/// The matrix, oldest first.
pub const KERNELS: [Kernel; 3] = [
    Kernel {
        name: "5.10",
        why: "the oldest supported: Debian 11, older EKS/AL2 nodes",
        suites: &["bullseye", "bullseye-security"],
        package: "linux-image-5.10.0-46-amd64-unsigned",
        version: "5.10.262-1",
        series_prefix: "linux-image-5.10.0-",
    },
    Kernel {
        name: "6.1",
        why: "Debian 12, Amazon Linux 2023, many GKE/COS images",
        suites: &["bookworm", "bookworm-security"],
        package: "linux-image-6.1.0-57-amd64-unsigned",
        version: "6.1.192-3",
        series_prefix: "linux-image-6.1.0-",
    },
    Kernel {
        name: "6.12",
        why: "Debian 13, recent cloud images",
        suites: &["trixie", "trixie-security"],
        package: "linux-image-6.12.118+deb13-amd64-unsigned",
        version: "6.12.118-1",
        series_prefix: "linux-image-6.12.",
    },
];

/// The kernels `--kernel` names: one of [`KERNELS`] by name, or `all`.
pub fn choose(name: &str) -> Result<Vec<Kernel>, String> {
    if name == "all" {
        return Ok(KERNELS.to_vec());
    }
    KERNELS
        .iter()
        .find(|k| k.name == name)
        .map(|k| vec![*k])
        .ok_or_else(|| {
            let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
            format!(
                "unknown kernel {name:?}: choose {} or all",
                names.join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_are_chosen_by_name_or_all() {
        assert_eq!(choose("6.1").unwrap()[0].version, "6.1.192-3");
        assert_eq!(choose("all").unwrap().len(), KERNELS.len());
        let e = choose("4.19").unwrap_err();
        assert!(e.contains("5.10, 6.1, 6.12"), "{e}");
    }

    #[test]
    fn every_pin_belongs_to_its_series() {
        for k in KERNELS {
            assert!(k.package.starts_with(k.series_prefix), "{k:?}");
            assert!(k.package.ends_with("-amd64-unsigned"), "{k:?}");
            assert!(k.version.starts_with(k.name), "{k:?}");
        }
    }
}
