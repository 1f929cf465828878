//! `cargo xtask image`: the container image a cluster runs (`deploy/daemonset.yaml`, and the
//! collector of `deploy/proxy-daemonset.yaml`), built offline as an OCI archive,
//! `target/image/redirector-<version>.oci.tar`.
//!
//! No base image can be pulled here, and none is needed: the image is built FROM SCRATCH with
//! Debian's `buildah` and holds only
//! - `/usr/bin/redirector`, the release build with the release kernel object embedded;
//! - `/usr/sbin/bpftool` (Debian's), so `kubectl exec ... -- bpftool map dump pinned ...` works
//!   in the daemon's container as README.md's "Looking inside with bpftool" shows;
//! - exactly the shared libraries those two load and the dynamic loader, at the paths (and
//!   through the symlinks) the host's loader finds them;
//! - `/etc/passwd` and `/etc/group` naming root and the image's default user.
//!
//! The binary is linked dynamically against glibc rather than statically: this machine has no
//! musl target (rustup cannot fetch one), and a static glibc binary still loads NSS modules at
//! run time. The libraries cost a few MiB.
//!
//! No CA certificates: kube's `rustls-tls` trusts, in-cluster, exactly the ServiceAccount's
//! `ca.crt` that the kubelet mounts, and the system roots only when a kubeconfig names no CA,
//! which the DaemonSet never uses (it passes no `--kubeconfig`). Adding a bundle would only
//! widen what the daemon trusts.
//!
//! The default user is the unprivileged 65532 ("nonroot"): the collector needs nothing more.
//! The daemon needs root for its capabilities (Kubernetes grants no ambient capabilities), and
//! the DaemonSet sets `runAsUser: 0` for that container alone.
//!
//! buildah runs with the `vfs` driver, a private storage root and its own storage.conf,
//! containers.conf and signature policy, all under `target/image/build/`, and in a private
//! mount namespace for what those cannot redirect, so nothing of the host's container state
//! (`/var/lib/containers`, `/run/containers`, `/etc/containers`, `/etc/cni`) is written.
//! Nothing is run inside the image (containers cannot run on every build machine). The working
//! container is removed and `target/image/build/` deleted on every path.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::{build_ebpf, util};

/// Where the binary lives in the image; the image's entrypoint.
pub const BINARY_IN_IMAGE: &str = "/usr/bin/redirector";

/// The image's default user and group: unprivileged, as the collector runs. The number is the
/// usual "nonroot" of minimal images, free of any meaning on the node.
const NONROOT: u32 = 65532;

/// `PATH` in the image, so `kubectl exec` finds `bpftool` and `redirector` by name.
const PATH_IN_IMAGE: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The OCI `source` label: the repository the image is published from, beside
/// `ghcr.io/l7-redirector/redirector` (deploy/kustomization.yaml).
const SOURCE_URL: &str = "https://github.com/l7-redirector/redirector";

/// The OCI `description` label: the `redirector` crate's description.
const DESCRIPTION: &str = "Steers new TCP connections to selected Kubernetes Services to the \
    node-local Envoy, for L7 logs";

/// What `cargo xtask image` does, for `cargo xtask --help`.
pub const ABOUT: &str = "Build the container image (root): the release `redirector` and \
    `bpftool` in an OCI image FROM SCRATCH, written to target/image/redirector-<version>.oci.tar";

/// The long `--help` of `cargo xtask image`, wrapped by hand (clap's `wrap_help` is off).
pub const LONG_ABOUT: &str = "\
Build the container image for a cluster (root).

Builds the kernel object and the `redirector` binary in release mode (the binary embeds
that object), then an OCI image FROM SCRATCH with buildah, on a private vfs storage under
target/image/ (the host's container storage is not touched and nothing is pulled). The
image holds only:
  /usr/bin/redirector    the entrypoint (debug info stripped, symbols kept)
  /usr/sbin/bpftool      for `kubectl exec ... -- bpftool map dump pinned ...`
  the shared libraries both load and the dynamic loader, as the host resolves them
  /etc/passwd, /etc/group  root and nonroot (65532)
Default user 65532, what the collector needs; deploy/daemonset.yaml runs the daemon's
container as root. OCI labels: title, description, version, revision (the commit
`redirector --version` names), licenses, source.

Writes target/image/redirector-<version>.oci.tar and prints its manifest digest and size.
Publish it with
  skopeo copy oci-archive:target/image/redirector-<version>.oci.tar \\
      docker://REGISTRY/redirector:<version>
then point deploy/ at it (README.md, \"Install on a cluster\").

Needs root and buildah (`sudo cargo xtask setup` installs it). `cargo xtask test` runs it
before the privileged tests, whose `image::` tests unpack the archive and run its binaries.";

/// `target/image/`, where the archive and the build's scratch directories live.
pub fn image_dir() -> PathBuf {
    util::workspace_root().join("target").join("image")
}

/// The archive `cargo xtask image` writes for `version`.
pub fn archive_path(version: &str) -> PathBuf {
    image_dir().join(format!("redirector-{version}.oci.tar"))
}

/// What `redirector --version` says about the binary: the image's labels come from it, so they
/// name exactly what the binary does (same revision logic, same version).
struct BuildInfo {
    version: String,
    revision: String,
    ebpf_sha256: String,
}

impl BuildInfo {
    /// Runs `binary --version` and reads its three lines.
    fn of(binary: &Path) -> Result<Self> {
        let text = util::probe(Command::new(binary).arg("--version"))?;
        let mut lines = text.lines();
        let version = lines
            .next()
            .and_then(|l| l.strip_prefix("redirector "))
            .with_context(|| format!("`{} --version` printed {text:?}", binary.display()))?
            .trim()
            .to_owned();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .with_context(|| format!("no `{name}` line in `--version`'s {text:?}"))
        };
        let revision = field("source revision: ")?;
        let object = field("eBPF object: ")?;
        let ebpf_sha256 = object
            .strip_prefix("sha256 ")
            .with_context(|| {
                format!(
                    "{} embeds no kernel object ({object}); the image would be useless",
                    binary.display()
                )
            })?
            .to_owned();
        Ok(Self {
            version,
            revision,
            ebpf_sha256,
        })
    }
}

/// `sha256sum`'s hex digest of `path`.
fn sha256_file(path: &Path) -> Result<String> {
    let out = util::probe(Command::new("sha256sum").arg(path))?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("sha256sum printed nothing for {}", path.display()))
}

/// The paths of the shared libraries `elf` loads, the dynamic loader included, as the host's
/// loader resolves them (`ldd`). `ldd` runs the loader on the file, which is safe for the two
/// binaries here: our own build and Debian's `bpftool`.
fn loaded_libraries(elf: &Path) -> Result<Vec<PathBuf>> {
    let text = util::probe(Command::new("ldd").arg(elf))?;
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") {
            continue;
        }
        ensure!(
            !line.contains("not found"),
            "{} needs a library the host lacks: {line}",
            elf.display()
        );
        // `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)`, or the loader itself as
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`, or the kernel's vDSO, which has no file.
        let path = line
            .split_once("=>")
            .map_or(line, |(_, resolved)| resolved)
            .split_whitespace()
            .next()
            .unwrap_or_default();
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    ensure!(
        !libraries.is_empty(),
        "`ldd {}` listed no libraries and no loader: {text:?}",
        elf.display()
    );
    Ok(libraries)
}

/// `path` inside the staging root `rootfs` (`path` is absolute and has no `..`).
fn in_root(rootfs: &Path, path: &Path) -> PathBuf {
    rootfs.join(path.strip_prefix("/").unwrap_or(path))
}

/// Copies the host's `path` into `rootfs` at the same place, through the same symlinks: every
/// symlink met on the way (`/lib -> usr/lib`, `libz.so.1 -> libz.so.1.2.13`, ...) is recreated
/// as it is, so the image resolves the path exactly like the host. Directories are created with
/// mode 0755; the final file keeps its mode. Returns the real file's path.
fn install_host_path(rootfs: &Path, path: &Path) -> Result<PathBuf> {
    ensure!(path.is_absolute(), "{} is not absolute", path.display());
    let mut current = PathBuf::from("/");
    // Components still to walk, owned and in reverse, so the next one is popped off the end
    // and a symlink's target can be pushed in its place.
    let mut rest: Vec<OsString> = components_reversed(path);
    let mut hops = 0;
    while let Some(name) = rest.pop() {
        if name == "/" {
            current = PathBuf::from("/");
        } else if name == ".." {
            current.pop();
        } else if name != "." {
            let next = current.join(&name);
            let meta = fs::symlink_metadata(&next)
                .with_context(|| format!("resolving {}", path.display()))?;
            let staged = in_root(rootfs, &next);
            if meta.file_type().is_symlink() {
                hops += 1;
                ensure!(hops <= 40, "{}: too many symlinks", path.display());
                let target = fs::read_link(&next)
                    .with_context(|| format!("reading the link {}", next.display()))?;
                if fs::symlink_metadata(&staged).is_err() {
                    symlink(&target, &staged)
                        .with_context(|| format!("creating the link {}", staged.display()))?;
                }
                // Go on from the link's target: relative to the link's directory (`current`),
                // or from the root when absolute (its first component is "/").
                rest.extend(components_reversed(&target));
            } else if meta.is_dir() {
                if !staged.is_dir() {
                    fs::create_dir(&staged)
                        .with_context(|| format!("creating {}", staged.display()))?;
                    fs::set_permissions(&staged, fs::Permissions::from_mode(0o755))?;
                }
                current = next;
            } else {
                ensure!(
                    rest.is_empty(),
                    "{} is not a directory, in {}",
                    next.display(),
                    path.display()
                );
                if !staged.exists() {
                    fs::copy(&next, &staged)
                        .with_context(|| format!("copying {} into the image", next.display()))?;
                }
                return Ok(next);
            }
        }
    }
    bail!("{} names a directory, not a file", path.display())
}

/// `path`'s components as owned strings ("/" for the root), last first.
fn components_reversed(path: &Path) -> Vec<OsString> {
    path.components()
        .rev()
        .map(|c| c.as_os_str().to_owned())
        .collect()
}

/// Creates the directories of `path` inside `rootfs` with mode 0755, as on the host.
fn create_parents(rootfs: &Path, path: &Path) -> Result<()> {
    let mut dir = rootfs.to_path_buf();
    for component in path.parent().into_iter().flat_map(Path::components) {
        if let Component::Normal(name) = component {
            dir.push(name);
            if !dir.is_dir() {
                fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
            }
        }
    }
    Ok(())
}

/// Writes `text` at `path` in `rootfs` with `mode`.
fn write_file(rootfs: &Path, path: &str, text: &str, mode: u32) -> Result<()> {
    let path = Path::new(path);
    create_parents(rootfs, path)?;
    let staged = in_root(rootfs, path);
    fs::write(&staged, text).with_context(|| format!("writing {}", staged.display()))?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Fills `rootfs` with the image's files; returns, for the log, each path in the image with the
/// host file it holds.
fn stage(rootfs: &Path, binary: &Path, bpftool: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut staged = Vec::new();

    // The release profile keeps line tables (`debug = 1`, for profiling); the image drops
    // them, which makes the binary about four times smaller. The symbol table stays, so a
    // panic's backtrace still names functions. The embedded kernel object is data, untouched.
    let in_image = Path::new(BINARY_IN_IMAGE);
    create_parents(rootfs, in_image)?;
    util::run(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(in_root(rootfs, in_image))
            .arg(binary),
    )
    .context("stripping the debug info from the binary for the image")?;
    fs::set_permissions(in_root(rootfs, in_image), fs::Permissions::from_mode(0o755))?;
    staged.push((in_image.to_path_buf(), binary.to_path_buf()));

    // bpftool at its real path (/usr/sbin on Debian), not through /sbin or another symlink.
    let bpftool =
        fs::canonicalize(bpftool).with_context(|| format!("resolving {}", bpftool.display()))?;
    staged.push((bpftool.clone(), install_host_path(rootfs, &bpftool)?));

    // Each library at the path the host's loader found it, through the same symlinks
    // (`/lib64/ld-linux-x86-64.so.2`, the interpreter every binary names, is one of them).
    let mut libraries = BTreeSet::new();
    for elf in [binary, bpftool.as_path()] {
        libraries.extend(loaded_libraries(elf)?);
    }
    for library in libraries {
        let file = install_host_path(rootfs, &library)?;
        staged.push((library, file));
    }

    // Names for the two users, so `id`, `ps` and libc's lookups find them; no shells, no
    // home directories, no passwords. (glibc 2.34+ resolves hosts without NSS modules, and the
    // in-cluster API address comes from the environment anyway.)
    write_file(
        rootfs,
        "/etc/passwd",
        &format!(
            "root:x:0:0:root:/:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/:/sbin/nologin\n"
        ),
        0o644,
    )?;
    write_file(
        rootfs,
        "/etc/group",
        &format!("root:x:0:\nnonroot:x:{NONROOT}:\n"),
        0o644,
    )?;
    for file in ["/etc/passwd", "/etc/group"] {
        staged.push((
            PathBuf::from(file),
            PathBuf::from("(written by cargo xtask image)"),
        ));
    }
    Ok(staged)
}

/// Whether a mount point lies at or below `dir` (from `/proc/self/mountinfo`).
fn has_mounts_under(dir: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines()
            .filter_map(|line| line.split_whitespace().nth(4))
            .any(|mount_point| Path::new(mount_point).starts_with(dir))
    })
}

/// Removes `dir` and everything in it, unless something is mounted there: a mount would make
/// the removal reach into another file system.
fn remove_scratch(dir: &Path) -> Result<()> {
    if has_mounts_under(dir) {
        bail!(
            "something is mounted under {}; unmount it (see /proc/self/mountinfo) and run again",
            dir.display()
        );
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// The build's scratch directory, `target/image/build/`: the staged root file system, and
/// everything buildah keeps (storage, locks, caches), so that the host's container state is
/// neither read for configuration nor written. Removed when dropped (after the working
/// container, which is declared later and so dropped first), on success and failure alike.
struct Scratch {
    dir: PathBuf,
    rootfs: PathBuf,
    storage: PathBuf,
    runroot: PathBuf,
    tmp: PathBuf,
    /// What buildah sees as `/run` and `/var/lib` (see [`Scratch::buildah`]).
    run_dir: PathBuf,
    var_lib_dir: PathBuf,
    storage_conf: PathBuf,
    containers_conf: PathBuf,
    policy: PathBuf,
}

impl Scratch {
    fn create() -> Result<Self> {
        let dir = image_dir().join("build");
        let scratch = Self {
            rootfs: dir.join("rootfs"),
            storage: dir.join("storage"),
            runroot: dir.join("runroot"),
            tmp: dir.join("tmp"),
            run_dir: dir.join("run"),
            var_lib_dir: dir.join("var-lib"),
            storage_conf: dir.join("storage.conf"),
            containers_conf: dir.join("containers.conf"),
            policy: dir.join("policy.json"),
            dir,
        };
        // Leftovers of an interrupted build.
        remove_scratch(&scratch.dir)?;
        for dir in [
            &scratch.rootfs,
            &scratch.storage,
            &scratch.runroot,
            &scratch.tmp,
            &scratch.run_dir,
            &scratch.var_lib_dir,
        ] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::set_permissions(&scratch.rootfs, fs::Permissions::from_mode(0o755))?;
        // buildah reads storage.conf before its flags: a private one keeps the host's settings
        // (another driver, its mount program) out. The flags say the same, for the log.
        let storage_conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {:?}\nrunroot = {:?}\n",
            scratch.storage, scratch.runroot
        );
        // Every buildah command takes the network backend's locks, by default in
        // /etc/containers/networks and /etc/cni/net.d (creating them); no network is ever used.
        let containers_conf = format!(
            "[network]\nnetwork_config_dir = {:?}\n",
            scratch.dir.join("networks")
        );
        // Nothing is pulled or verified (FROM SCRATCH); committing still asks for a signature
        // policy, and the host's may be missing or stricter.
        let policy = "{\"default\": [{\"type\": \"insecureAcceptAnything\"}]}\n";
        for (path, text) in [
            (&scratch.storage_conf, storage_conf.as_str()),
            (&scratch.containers_conf, containers_conf.as_str()),
            (&scratch.policy, policy),
        ] {
            fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(scratch)
    }

    /// A `buildah` command on the private storage and configuration.
    ///
    /// buildah 1.28, run as root, also writes where no flag or configuration file reaches: the
    /// netavark run directory `/run/containers/networks` (created by every command) and
    /// containers/image's blob-info cache `/var/lib/containers/cache` (by `commit`). So each
    /// command runs in a mount namespace of its own, with private propagation, where
    /// `target/image/build/run` and `.../var-lib` are bind-mounted over `/run` and `/var/lib`:
    /// those writes land here, and the namespace, its mounts with it, ends with the command.
    /// buildah needs nothing of the host's `/run` or `/var/lib` (storage and runroot are given).
    fn buildah(&self) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$1" /run && mount --bind "$2" /var/lib && shift 2 && exec buildah "$@""#)
            .arg("sh")
            .arg(&self.run_dir)
            .arg(&self.var_lib_dir)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .env("CONTAINERS_CONF", &self.containers_conf)
            // Where containers/image writes the archive's blobs before packing them (by default
            // /var/tmp).
            .env("TMPDIR", &self.tmp)
            .arg("--root")
            .arg(&self.storage)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "vfs"]);
        cmd
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(err) = remove_scratch(&self.dir) {
            eprintln!("warning: could not remove the image build's scratch files: {err:#}");
        }
    }
}

/// buildah's working container, removed when dropped, on every path.
struct WorkingContainer<'a> {
    scratch: &'a Scratch,
    name: String,
}

impl<'a> WorkingContainer<'a> {
    /// `buildah from scratch`: an empty container.
    fn from_scratch(scratch: &'a Scratch) -> Result<Self> {
        let name = format!("l7r-image-{}", std::process::id());
        util::run(scratch.buildah().args(["from", "--name", &name, "scratch"]))
            .context("creating buildah's working container")?;
        Ok(Self { scratch, name })
    }

    /// `buildah <subcommand> <args...> <container> <trailing...>`.
    fn run(&self, subcommand: &str, args: &[String], trailing: &[String]) -> Result<()> {
        util::run(
            self.scratch
                .buildah()
                .arg(subcommand)
                .args(args)
                .arg(&self.name)
                .args(trailing),
        )
    }
}

impl Drop for WorkingContainer<'_> {
    fn drop(&mut self) {
        if let Err(err) = util::probe(self.scratch.buildah().args(["rm", &self.name])) {
            eprintln!(
                "warning: could not remove buildah's working container {}: {err:#}",
                self.name
            );
        }
    }
}

/// The commit time of `HEAD` in seconds (or `SOURCE_DATE_EPOCH` when set), as the image's
/// creation time and every file's: the same tree gives the same layer, and the same digest
/// when the binary is the same.
fn source_date_epoch() -> Option<String> {
    let digits = |epoch: &String| !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit());
    if let Some(epoch) = std::env::var("SOURCE_DATE_EPOCH").ok().filter(digits) {
        return Some(epoch);
    }
    util::probe(
        Command::new("git")
            .args(["log", "-1", "--format=%ct", "HEAD"])
            .current_dir(util::workspace_root()),
    )
    .ok()
    .map(|out| out.trim().to_owned())
    .filter(digits)
}

/// The manifest digest the archive's `index.json` names (its only image).
fn manifest_digest(archive: &Path) -> Result<String> {
    let index = util::probe(
        Command::new("tar")
            .arg("-xOf")
            .arg(archive)
            .arg("index.json"),
    )
    .context("reading index.json from the archive")?;
    let index: serde_json::Value =
        serde_json::from_str(&index).context("the archive's index.json is not JSON")?;
    let manifests = index["manifests"]
        .as_array()
        .context("the archive's index.json has no manifests")?;
    let [manifest] = &manifests[..] else {
        bail!(
            "the archive's index.json names {} manifests, expected one",
            manifests.len()
        );
    };
    manifest["digest"]
        .as_str()
        .map(str::to_owned)
        .context("the manifest in index.json has no digest")
}

/// Fails early, naming the fix, when something the build needs is missing.
fn check_prerequisites() -> Result<()> {
    if !util::is_root() {
        bail!(
            "building the image needs root (buildah's storage, files owned by root in the \
             image): run `sudo cargo xtask image`"
        );
    }
    let missing: Vec<&str> = [
        "buildah",
        "bpftool",
        "ldd",
        "strip",
        "sha256sum",
        "tar",
        "unshare",
    ]
    .into_iter()
    .filter(|tool| util::which(tool).is_none())
    .collect();
    if !missing.is_empty() {
        bail!(
            "{} not on PATH; `sudo cargo xtask setup` installs buildah and bpftool (ldd, strip, \
             sha256sum, tar and unshare come with libc-bin, binutils, coreutils, tar and \
             util-linux)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// `cargo xtask image`.
pub fn run() -> Result<()> {
    check_prerequisites()?;
    let root = util::workspace_root();

    let object = build_ebpf::build_ebpf(true)?;
    // The daemon's build script embeds the object of its own profile: the release one just
    // built. A REDIRECTOR_EBPF_OBJECT from the environment would embed another; the check
    // below would catch it, but it is simpler not to inherit it.
    util::run(
        Command::new(util::cargo())
            .args([
                "build",
                "--release",
                "--package",
                "redirector",
                "--bin",
                "redirector",
            ])
            .env_remove("REDIRECTOR_EBPF_OBJECT")
            .current_dir(&root),
    )
    .context("building the release redirector")?;
    let binary = root.join("target").join("release").join("redirector");
    let info = BuildInfo::of(&binary)?;
    let object_sha256 = sha256_file(&object)?;
    ensure!(
        info.ebpf_sha256 == object_sha256,
        "{} embeds the kernel object {}, but {} is {object_sha256}; was REDIRECTOR_EBPF_OBJECT \
         set for an earlier build? Run `cargo clean -p redirector --release` and build again",
        binary.display(),
        info.ebpf_sha256,
        object.display()
    );

    let archive = archive_path(&info.version);
    let archive_text = archive.to_string_lossy().into_owned();
    // The transport reference is `oci-archive:PATH:TAG`; a colon in PATH would be misread.
    ensure!(
        !archive_text.contains(':'),
        "the archive path {archive_text} contains ':', which buildah's oci-archive: reference \
         cannot express; move the workspace"
    );
    let bpftool = util::which("bpftool").context("bpftool is not on PATH")?;

    let scratch = Scratch::create()?;
    let staged = stage(&scratch.rootfs, &binary, &bpftool)?;
    println!("image: staged in {}:", scratch.rootfs.display());
    for (in_image, from) in &staged {
        println!("  {:<45} <- {}", in_image.display(), from.display());
    }

    let container = WorkingContainer::from_scratch(&scratch)?;
    // Ownership root:root whoever staged the files; the trailing slash copies the directory's
    // contents to the image's root, symlinks as symlinks.
    container.run(
        "copy",
        &["--chown".into(), "0:0".into()],
        &[format!("{}/", scratch.rootfs.display()), "/".into()],
    )?;
    let label = |key: &str, value: &str| -> [String; 2] {
        [
            "--label".into(),
            format!("org.opencontainers.image.{key}={value}"),
        ]
    };
    let mut config: Vec<String> = vec![
        "--entrypoint".into(),
        format!("[\"{BINARY_IN_IMAGE}\"]"),
        // Without arguments (`docker run IMAGE`) it explains itself; Kubernetes' `args`
        // replace this.
        "--cmd".into(),
        "[\"--help\"]".into(),
        "--user".into(),
        format!("{NONROOT}:{NONROOT}"),
        "--env".into(),
        format!("PATH={PATH_IN_IMAGE}"),
        "--workingdir".into(),
        "/".into(),
        "--created-by".into(),
        "cargo xtask image".into(),
    ];
    for (key, value) in [
        ("title", "redirector"),
        ("description", DESCRIPTION),
        ("version", &info.version),
        ("revision", &info.revision),
        // The workspace's license field, which every crate inherits.
        ("licenses", env!("CARGO_PKG_LICENSE")),
        ("source", SOURCE_URL),
    ] {
        config.extend(label(key, value));
    }
    container.run("config", &config, &[])?;

    let partial = archive.with_extension("tar.partial");
    match fs::remove_file(&partial) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", partial.display()));
        }
        _ => {}
    }
    let mut commit: Vec<String> = vec![
        "--format".into(),
        "oci".into(),
        // No `io.buildah.version` label: it would change the digest with the build machine.
        "--identity-label=false".into(),
        // gzip layers: what registries and runtimes expect, and a third of the size.
        "--disable-compression=false".into(),
        "--signature-policy".into(),
        scratch.policy.to_string_lossy().into_owned(),
    ];
    if let Some(epoch) = source_date_epoch() {
        commit.extend(["--timestamp".into(), epoch]);
    }
    // Written beside the archive and renamed once complete: an interrupted build never leaves
    // a truncated archive for the tests or a push to pick up.
    container.run(
        "commit",
        &commit,
        &[format!(
            "oci-archive:{}:{}",
            partial.display(),
            info.version
        )],
    )?;
    drop(container);
    fs::rename(&partial, &archive)
        .with_context(|| format!("renaming {} to {}", partial.display(), archive.display()))?;
    drop(scratch);

    let digest = manifest_digest(&archive)?;
    let size = fs::metadata(&archive)
        .with_context(|| format!("reading {}", archive.display()))?
        .len();
    println!();
    println!("image: {}", archive.display());
    println!("  digest:   {digest}");
    #[allow(clippy::cast_precision_loss)] // a file size shown in MiB
    let mib = size as f64 / (1024.0 * 1024.0);
    println!("  size:     {size} bytes ({mib:.1} MiB)");
    println!("  version:  {}", info.version);
    println!("  revision: {}", info.revision);
    println!("  eBPF object: sha256 {}", info.ebpf_sha256);
    println!(
        "push it:  skopeo copy oci-archive:{} docker://REGISTRY/redirector:{}",
        archive.display(),
        info.version
    );
    Ok(())
}
