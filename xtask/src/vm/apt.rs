//! Fetching and unpacking the matrix's kernels with a private apt: its own sources list,
//! lists, cache, state and log under `target/vm/apt/`, selected with `APT_CONFIG`, so the host's
//! apt setup is never read or changed. Packages are checked by apt against the suites' signed
//! indexes (Debian's archive keyring); nothing is installed: the package is unpacked with
//! `dpkg-deb -x` under `target/vm/kernels/`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use super::kernels::Kernel;
use crate::util;

/// Debian's archive keyring, which signs every suite of the matrix.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// How old the downloaded indexes may be before `apt-get update` runs again.
const INDEX_MAX_AGE: Duration = Duration::from_secs(3600);

/// A private apt under one directory.
pub struct PrivateApt {
    dir: PathBuf,
}

/// A kernel unpacked and ready to boot.
#[derive(Clone, Debug)]
pub struct Unpacked {
    /// `uname -r` of the kernel.
    pub release: String,
    /// The image to boot (`<root>/boot/vmlinuz-<release>`); virtme-ng finds the modules beside
    /// it, in `<root>/lib/modules/<release>`.
    pub image: PathBuf,
    /// The package and version it came from.
    pub package: String,
}

impl PrivateApt {
    /// A private apt in `dir`, configured for the suites of `kernels`, with fresh indexes.
    /// (Indexes younger than an hour are kept, unless the suites changed.)
    pub fn prepare(dir: &Path, kernels: &[Kernel]) -> Result<Self> {
        if !Path::new(KEYRING).is_file() {
            bail!(
                "{KEYRING} is missing: install Debian's archive keyring \
                 (`apt-get install debian-archive-keyring`)"
            );
        }
        let apt = Self {
            dir: dir.to_path_buf(),
        };
        for sub in [
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/trusted.gpg.d",
            "etc/sources.list.d",
            "lists/partial",
            "cache/archives/partial",
            "state",
            "log",
            "debs",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let status = dir.join("state/status");
        if !status.exists() {
            fs::write(&status, "")?;
        }
        let mut suites: Vec<&str> = kernels
            .iter()
            .flat_map(|k| k.suites.iter().copied())
            .collect();
        suites.sort_unstable();
        suites.dedup();
        let sources = sources_list(&suites);
        let same_suites = fs::read_to_string(dir.join("sources.list")).is_ok_and(|s| s == sources);
        fs::write(dir.join("sources.list"), sources)?;
        fs::write(dir.join("apt.conf"), apt_conf(dir))?;
        if !same_suites || apt.indexes_are_stale() {
            util::run(apt.command("apt-get").args(["-q", "update"]))
                .context("cannot update the private apt indexes (is deb.debian.org reachable?)")?;
        }
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", self.dir.join("apt.conf"));
        cmd
    }

    fn indexes_are_stale(&self) -> bool {
        let newest = fs::read_dir(self.dir.join("lists"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("InRelease"))
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .max();
        newest.is_none_or(|t| {
            SystemTime::now()
                .duration_since(t)
                .is_ok_and(|age| age > INDEX_MAX_AGE)
        })
    }

    /// The versions of `package` the suites offer, as `apt-cache madison` lists them.
    fn versions(&self, package: &str) -> Result<Vec<String>> {
        let out = util::probe(self.command("apt-cache").args(["madison", package]))?;
        Ok(parse_madison(&out))
    }

    /// The newest `linux-image-*-amd64-unsigned` package of `kernel`'s series, with its
    /// version.
    pub fn newest_of_series(&self, kernel: &Kernel) -> Result<(String, String)> {
        let names = util::probe(
            self.command("apt-cache")
                .args(["pkgnames", kernel.series_prefix]),
        )?;
        let mut best: Option<(String, String)> = None;
        for name in names.lines().map(str::trim) {
            if !name.ends_with("-amd64-unsigned")
                || name.contains("-rt-")
                || name.contains("-cloud-")
            {
                continue;
            }
            for version in self.versions(name)? {
                let newer = match &best {
                    None => true,
                    Some((_, v)) => version_gt(&version, v)?,
                };
                if newer {
                    best = Some((name.to_string(), version));
                }
            }
        }
        best.with_context(|| {
            format!(
                "no {}*-amd64-unsigned package in {}",
                kernel.series_prefix,
                kernel.suites.join(", ")
            )
        })
    }

    /// Downloads (once) and unpacks (once) `kernel`'s pinned package, or the newest of its
    /// series when the mirror no longer has the pin.
    pub fn kernel(&self, kernel: &Kernel, kernels_dir: &Path) -> Result<Unpacked> {
        let (package, version) = if self
            .versions(kernel.package)?
            .iter()
            .any(|v| v == kernel.version)
        {
            (kernel.package.to_string(), kernel.version.to_string())
        } else {
            let (package, version) = self.newest_of_series(kernel)?;
            println!(
                "vm-test: warning: the mirrors no longer offer the pinned {}={} (Debian keeps \
                 only the newest build in its security suites); testing {package}={version} \
                 instead. Bump the pin in xtask/src/vm/kernels.rs.",
                kernel.package, kernel.version
            );
            (package, version)
        };
        let deb = self.download(&package, &version)?;
        let unpacked = unpack(&deb, kernels_dir)?;
        Ok(Unpacked {
            package: format!("{package}={version}"),
            ..unpacked
        })
    }

    fn download(&self, package: &str, version: &str) -> Result<PathBuf> {
        let debs = self.dir.join("debs");
        // apt names the file with the epoch's colon escaped.
        let file = format!("{package}_{}_amd64.deb", version.replace(':', "%3a"));
        let deb = debs.join(&file);
        if !deb.is_file() {
            util::run(
                self.command("apt-get")
                    .current_dir(&debs)
                    // Root would hand the download to the `_apt` user, which cannot write here.
                    .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
                    .arg(format!("{package}={version}")),
            )
            .with_context(|| format!("cannot download {package}={version}"))?;
        }
        if !deb.is_file() {
            bail!("apt-get download did not write {}", deb.display());
        }
        Ok(deb)
    }
}

/// Unpacks a kernel image package under `kernels_dir/<release>/` (once), with its modules'
/// dependency files made by `depmod` inside that tree, never in the host's `/lib/modules`.
fn unpack(deb: &Path, kernels_dir: &Path) -> Result<Unpacked> {
    let listing = util::probe(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    let release = listing
        .lines()
        .find_map(|l| l.split("./boot/vmlinuz-").nth(1))
        .map(|r| r.trim().to_string())
        .with_context(|| format!("{} holds no boot/vmlinuz-*", deb.display()))?;
    let root = kernels_dir.join(&release);
    let image = root.join("boot").join(format!("vmlinuz-{release}"));
    let done = root.join(".unpacked");
    if !done.exists() {
        let tmp = kernels_dir.join(format!("{release}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&tmp)?;
        util::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
        // Newer packages ship /usr/lib/modules only; virtme-ng and depmod look in lib/.
        if !tmp.join("lib").exists() {
            std::os::unix::fs::symlink("usr/lib", tmp.join("lib"))?;
        }
        util::run(
            Command::new("depmod")
                .args(["-a", "-b"])
                .arg(&tmp)
                .arg(&release),
        )
        .context("depmod (from the kmod package) is needed to index the kernel's modules")?;
        fs::rename(&tmp, &root)?;
        fs::write(
            &done,
            deb.file_name().unwrap_or_default().as_encoded_bytes(),
        )?;
    }
    Ok(Unpacked {
        release,
        image,
        package: String::new(),
    })
}

/// The sources list: every suite signed by Debian's archive keyring, main only.
fn sources_list(suites: &[&str]) -> String {
    let mut out = String::new();
    for suite in suites {
        let archive = if suite.ends_with("-security") {
            "http://deb.debian.org/debian-security"
        } else {
            "http://deb.debian.org/debian"
        };
        out.push_str(&format!(
            "deb [arch=amd64 signed-by={KEYRING}] {archive} {suite} main\n"
        ));
    }
    out
}

/// An apt configuration that reads and writes only under `dir`.
fn apt_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "// Private apt configuration of `cargo xtask vm-test`: nothing of the host's apt is used.\n\
         Dir::Etc::Main \"/dev/null\";\n\
         Dir::Etc::Parts \"{d}/etc/apt.conf.d\";\n\
         Dir::Etc::SourceList \"{d}/sources.list\";\n\
         Dir::Etc::SourceParts \"{d}/etc/sources.list.d\";\n\
         Dir::Etc::Preferences \"{d}/etc/preferences\";\n\
         Dir::Etc::PreferencesParts \"{d}/etc/preferences.d\";\n\
         Dir::Etc::Trusted \"{d}/etc/trusted.gpg\";\n\
         Dir::Etc::TrustedParts \"{d}/etc/trusted.gpg.d\";\n\
         Dir::State \"{d}/state\";\n\
         Dir::State::Lists \"{d}/lists\";\n\
         Dir::State::status \"{d}/state/status\";\n\
         Dir::Cache \"{d}/cache\";\n\
         Dir::Cache::archives \"{d}/cache/archives\";\n\
         Dir::Cache::pkgcache \"\";\n\
         Dir::Cache::srcpkgcache \"\";\n\
         Dir::Log \"{d}/log\";\n\
         APT::Architecture \"amd64\";\n\
         APT::Architectures {{ \"amd64\"; }};\n\
         Acquire::Languages \"none\";\n"
    )
}

/// The versions in `apt-cache madison` output (`pkg | version | source`).
fn parse_madison(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split('|').nth(1))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Whether Debian version `a` is newer than `b` (by `dpkg --compare-versions`).
fn version_gt(a: &str, b: &str) -> Result<bool> {
    Ok(Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .context("cannot run dpkg --compare-versions")?
        .success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn madison_lines_give_their_versions() {
        let text = " linux-image-5.10.0-46-amd64-unsigned | 5.10.262-1 | \
                    http://deb.debian.org/debian-security bullseye-security/main amd64 Packages\n";
        assert_eq!(parse_madison(text), ["5.10.262-1"]);
        assert!(parse_madison("").is_empty());
    }

    #[test]
    fn security_suites_come_from_the_security_archive() {
        let list = sources_list(&["bookworm", "bookworm-security"]);
        assert!(list.contains("debian bookworm main"), "{list}");
        assert!(
            list.contains("debian-security bookworm-security main"),
            "{list}"
        );
        assert!(list.lines().all(|l| l.contains(KEYRING)), "{list}");
    }

    #[test]
    fn the_configuration_stays_inside_its_directory() {
        let conf = apt_conf(Path::new("/x/apt"));
        for line in conf.lines().filter(|l| l.starts_with("Dir::")) {
            assert!(
                line.contains("\"/x/apt") || line.contains("\"\"") || line.contains("/dev/null"),
                "{line}"
            );
        }
    }
}
