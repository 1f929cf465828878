//! The container image `cargo xtask image` builds (README.md, "Install on a cluster"), checked
//! from its OCI archive the way a runtime would take it: `index.json` → manifest → config and
//! layers, every blob against its digest, the layers unpacked into a root file system. Inside
//! it, with chroot (no container runtime, which cannot run on every CI machine),
//! `redirector --version` and `redirector run --help` run as the image's default user and
//! `bpftool version` as root, as `kubectl exec` would in the daemon's container. The config
//! must name the entrypoint, the user and the labels; the files must be exactly the two
//! binaries, what the image's own dynamic loader loads for them, and `/etc/passwd` and
//! `/etc/group`, all owned by root and writable by nobody else.
//!
//! Needs root (chroot, and unpacking files owned by root) and the archive, which
//! `sudo cargo xtask image` writes; `sudo cargo xtask test` builds it just before these tests.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};
use l7r_lab::sys::{require_root, unique_id};
use redirector::build_info::sha256_hex;
use serde_json::Value;

/// The workspace's version: the archive's name, its tag and its version label.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The entrypoint.
const BINARY: &str = "/usr/bin/redirector";
/// Debian's bpftool, at its Debian path.
const BPFTOOL: &str = "/usr/sbin/bpftool";
/// The image's default user and group ("nonroot").
const NONROOT: u32 = 65532;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn archive() -> PathBuf {
    workspace()
        .join("target/image")
        .join(format!("redirector-{VERSION}.oci.tar"))
}

/// A temporary directory, removed on drop. Nothing is ever mounted in it (chroot alone).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The archive, unpacked: the OCI layout and the root file system its layers make.
struct Image {
    dir: TempDir,
    /// The one manifest's descriptor in `index.json`.
    descriptor: Value,
    config: Value,
}

impl Image {
    fn unpack() -> Result<Self> {
        require_root();
        let archive = archive();
        ensure!(
            archive.is_file(),
            "no image archive at {}: build it with `sudo cargo xtask image` (`sudo cargo xtask \
             test` builds it before the privileged tests)",
            archive.display()
        );
        let dir = TempDir(std::env::temp_dir().join(format!("l7r-image-{}", unique_id())));
        let layout = dir.0.join("oci");
        let rootfs = dir.0.join("rootfs");
        fs::create_dir_all(&layout)?;
        fs::create_dir_all(&rootfs)?;
        run(Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout))?;

        let index = json(&fs::read(layout.join("index.json")).context("no index.json")?)?;
        let manifests = index["manifests"]
            .as_array()
            .context("index.json has no manifests")?;
        let [descriptor] = &manifests[..] else {
            bail!(
                "index.json names {} manifests, expected one",
                manifests.len()
            );
        };
        ensure!(
            descriptor["mediaType"] == "application/vnd.oci.image.manifest.v1+json",
            "the index names a {} , not an OCI image manifest",
            descriptor["mediaType"]
        );
        let manifest = json(&blob(&layout, descriptor)?)?;
        let config = json(&blob(&layout, &manifest["config"])?)?;
        let layers = manifest["layers"]
            .as_array()
            .context("the manifest has no layers")?;
        let diff_ids = config
            .pointer("/rootfs/diff_ids")
            .and_then(Value::as_array)
            .context("the config has no rootfs.diff_ids")?;
        ensure!(
            layers.len() == diff_ids.len(),
            "{} layers but {} diff_ids",
            layers.len(),
            diff_ids.len()
        );
        for (layer, diff_id) in layers.iter().zip(diff_ids) {
            let bytes = blob(&layout, layer)?;
            // What the runtime checks after decompressing: the uncompressed layer's digest.
            let tar = match layer["mediaType"].as_str() {
                Some("application/vnd.oci.image.layer.v1.tar+gzip") => {
                    let path = blob_path(&layout, layer)?;
                    let out = Command::new("gzip").arg("-dc").arg(&path).output()?;
                    ensure!(out.status.success(), "{} is not gzip", path.display());
                    out.stdout
                }
                Some("application/vnd.oci.image.layer.v1.tar") => bytes,
                other => bail!("unexpected layer media type {other:?}"),
            };
            ensure!(
                Some(format!("sha256:{}", sha256_hex(&tar)).as_str()) == diff_id.as_str(),
                "a layer's uncompressed digest is not its diff_id {diff_id}"
            );
            // As root, tar keeps the layer's owners and modes, as the runtime does.
            run(Command::new("tar")
                .args(["--numeric-owner", "-xpf"])
                .arg(blob_path(&layout, layer)?)
                .arg("-C")
                .arg(&rootfs))?;
        }
        Ok(Self {
            dir,
            descriptor: descriptor.clone(),
            config,
        })
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.0.join("rootfs")
    }

    /// `config.<key>` of the image config (the part a runtime obeys).
    fn run_config(&self, key: &str) -> &Value {
        &self.config["config"][key]
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.run_config("Labels")[format!("org.opencontainers.image.{key}")].as_str()
    }

    /// Runs `argv` inside the image's root file system as `uid` (and the same gid), with the
    /// image's environment and nothing of ours; its stdout, or an error with all it printed.
    fn run_inside(&self, uid: u32, argv: &[&str]) -> Result<String> {
        let mut cmd = Command::new("chroot");
        cmd.arg(format!("--userspec={uid}:{uid}"))
            .arg(self.rootfs())
            .args(argv)
            .env_clear();
        for pair in self.run_config("Env").as_array().into_iter().flatten() {
            let (key, value) = pair
                .as_str()
                .and_then(|p| p.split_once('='))
                .with_context(|| format!("Env entry {pair} is not KEY=VALUE"))?;
            cmd.env(key, value);
        }
        let out = cmd.output().context("cannot run chroot")?;
        ensure!(
            out.status.success(),
            "`{}` in the image as uid {uid} failed ({}):\n{}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Runs `cmd`, failing with its output unless it succeeds.
fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn json(bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).context("not JSON")
}

/// Where the layout keeps the blob `descriptor` names.
fn blob_path(layout: &Path, descriptor: &Value) -> Result<PathBuf> {
    let digest = descriptor["digest"]
        .as_str()
        .with_context(|| format!("descriptor without a digest: {descriptor}"))?;
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("digest {digest} is not sha256"))?;
    Ok(layout.join("blobs/sha256").join(hex))
}

/// The blob `descriptor` names, checked against its digest and size.
fn blob(layout: &Path, descriptor: &Value) -> Result<Vec<u8>> {
    let path = blob_path(layout, descriptor)?;
    let bytes = fs::read(&path).with_context(|| format!("the archive lacks {}", path.display()))?;
    let digest = descriptor["digest"].as_str().unwrap_or_default();
    ensure!(
        digest == format!("sha256:{}", sha256_hex(&bytes)),
        "blob {digest} does not match its digest"
    );
    ensure!(
        descriptor["size"].as_u64() == u64::try_from(bytes.len()).ok(),
        "blob {digest} is not of the size its descriptor says"
    );
    Ok(bytes)
}

/// `path`'s components, owned, last first ("/" for the root).
fn components_reversed(path: &Path) -> Vec<OsString> {
    path.components()
        .rev()
        .map(|c| c.as_os_str().to_owned())
        .collect()
}

/// Resolves `path` inside `root` as the kernel does after chroot: returns the path (in the
/// image) of what it names, and adds every symlink passed on the way to `links`.
fn resolve(root: &Path, path: &str, links: &mut BTreeSet<PathBuf>) -> Result<PathBuf> {
    let mut current = PathBuf::from("/");
    let mut rest = components_reversed(Path::new(path));
    let mut hops = 0;
    while let Some(name) = rest.pop() {
        if name == "/" {
            current = PathBuf::from("/");
        } else if name == ".." {
            current.pop();
        } else if name != "." {
            let next = current.join(&name);
            let on_host = root.join(next.strip_prefix("/")?);
            let meta = fs::symlink_metadata(&on_host)
                .with_context(|| format!("{path}: {} is not in the image", next.display()))?;
            if meta.file_type().is_symlink() {
                hops += 1;
                ensure!(hops <= 40, "{path}: too many symlinks");
                rest.extend(components_reversed(&fs::read_link(&on_host)?));
                links.insert(next);
            } else {
                current = next;
            }
        }
    }
    Ok(current)
}

/// The shared objects the image's own loader maps for `elf` (run inside the image), the loader
/// included; fails if one is missing there.
fn loaded_inside(image: &Image, interpreter: &str, elf: &str) -> Result<Vec<String>> {
    let listing = image.run_inside(0, &[interpreter, "--list", elf])?;
    let mut paths = vec![interpreter.to_owned()];
    for line in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        ensure!(
            !line.contains("not found"),
            "{elf} needs a library the image lacks: {line}"
        );
        let path = line
            .split_once("=>")
            .map_or(line, |(_, resolved)| resolved)
            .split_whitespace()
            .next()
            .unwrap_or_default();
        // The vDSO has no file.
        if path.starts_with('/') {
            paths.push(path.to_owned());
        }
    }
    Ok(paths)
}

/// The program interpreter `elf` names (PT_INTERP), read with the host's readelf.
fn interpreter(elf: &Path) -> Result<String> {
    let out = Command::new("readelf")
        .args(["--program-headers", "--wide"])
        .arg(elf)
        .output()
        .context("cannot run readelf (binutils)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("[Requesting program interpreter: "))
        .and_then(|rest| rest.strip_suffix(']'))
        .map(str::to_owned)
        .with_context(|| format!("{} names no interpreter:\n{text}", elf.display()))
}

/// Every entry below `dir` (the image's root), as paths in the image.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = fs::symlink_metadata(entry.path())?;
        let in_image = Path::new("/").join(entry.path().strip_prefix(root)?);
        if meta.is_dir() {
            walk(root, &entry.path(), out)?;
        }
        out.push((in_image, meta));
    }
    Ok(())
}

/// The `--version` lines: the revision and the kernel object must be named.
fn version_field<'a>(text: &'a str, name: &str) -> Result<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .with_context(|| format!("no `{name}` line in:\n{text}"))
}

#[test]
fn its_binaries_run_inside_it_as_the_daemonset_runs_them() -> Result<()> {
    let image = Image::unpack()?;

    // As the collector runs: the image's default user.
    let version = image.run_inside(NONROOT, &[BINARY, "--version"])?;
    ensure!(
        version.starts_with(&format!("redirector {VERSION}\n")),
        "{version}"
    );
    let object = version_field(&version, "eBPF object: ")?;
    let hash = object.strip_prefix("sha256 ").with_context(|| {
        format!("the image's redirector embeds no kernel object ({object}): `redirector run` would refuse to start")
    })?;
    ensure!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{object}"
    );
    let help = image.run_inside(NONROOT, &[BINARY, "run", "--help"])?;
    ensure!(help.contains("--proxy"), "`run --help` said:\n{help}");
    let help = image.run_inside(NONROOT, &[BINARY, "collect", "--help"])?;
    ensure!(
        help.contains("--access-log"),
        "`collect --help` said:\n{help}"
    );

    // As `kubectl exec ... -c redirector -- bpftool ...` runs: root, by name through PATH.
    let bpftool = image.run_inside(0, &["bpftool", "version"])?;
    ensure!(bpftool.starts_with("bpftool v"), "{bpftool}");
    Ok(())
}

#[test]
fn its_config_names_the_entrypoint_the_user_and_the_build() -> Result<()> {
    let image = Image::unpack()?;
    ensure!(
        image.descriptor["annotations"]["org.opencontainers.image.ref.name"] == VERSION,
        "the archive's image is not tagged {VERSION}: {}",
        image.descriptor
    );
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ensure!(
        image.config["os"] == "linux" && image.config["architecture"] == arch,
        "the image is for {}/{}, the binaries for linux/{arch}",
        image.config["os"],
        image.config["architecture"]
    );
    ensure!(
        *image.run_config("Entrypoint") == serde_json::json!([BINARY]),
        "entrypoint {}",
        image.run_config("Entrypoint")
    );
    ensure!(
        *image.run_config("User") == format!("{NONROOT}:{NONROOT}"),
        "the default user must be the unprivileged {NONROOT}:{NONROOT}, is {}",
        image.run_config("User")
    );
    let path = image
        .run_config("Env")
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|e| e.as_str()?.strip_prefix("PATH="))
        .context("the image sets no PATH: `kubectl exec ... -- bpftool` would not find it")?;
    for dir in ["/usr/bin", "/usr/sbin"] {
        ensure!(path.split(':').any(|d| d == dir), "PATH {path} lacks {dir}");
    }

    // The labels name the build: its version, the commit its binary says it was built from
    // (and which the tree is at: a stale archive is rebuilt, not tested), the license.
    let version = image.run_inside(NONROOT, &[BINARY, "--version"])?;
    let revision = version_field(&version, "source revision: ")?;
    for (key, expected) in [
        ("title", "redirector"),
        ("version", VERSION),
        ("revision", revision),
        ("licenses", env!("CARGO_PKG_LICENSE")),
    ] {
        ensure!(
            image.label(key) == Some(expected),
            "label org.opencontainers.image.{key} is {:?}, expected {expected:?}",
            image.label(key)
        );
    }
    ensure!(
        image
            .label("source")
            .is_some_and(|s| s.starts_with("https://")),
        "label org.opencontainers.image.source is {:?}",
        image.label("source")
    );
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let Some(head) = head {
        ensure!(
            revision == head,
            "the image was built at {revision}, the tree is at {head}: rebuild it with \
             `sudo cargo xtask image`"
        );
    }

    // The users the config and the DaemonSet name exist.
    let passwd = fs::read_to_string(image.rootfs().join("etc/passwd"))?;
    let group = fs::read_to_string(image.rootfs().join("etc/group"))?;
    for (file, text, entries) in [
        (
            "passwd",
            &passwd,
            [
                "root:x:0:0:".to_owned(),
                format!("nonroot:x:{NONROOT}:{NONROOT}:"),
            ],
        ),
        (
            "group",
            &group,
            ["root:x:0:".to_owned(), format!("nonroot:x:{NONROOT}:")],
        ),
    ] {
        for entry in entries {
            ensure!(
                text.lines().any(|l| l.starts_with(&entry)),
                "/etc/{file} has no {entry} entry:\n{text}"
            );
        }
    }
    Ok(())
}

#[test]
fn it_holds_the_two_binaries_what_they_load_and_nothing_else() -> Result<()> {
    let image = Image::unpack()?;
    let root = image.rootfs();

    // What must be there: the binaries, the users, and every object the image's own loader
    // maps for the binaries (it finds each inside the image, or the listing fails).
    let mut links = BTreeSet::new();
    let mut files = BTreeSet::new();
    for path in [BINARY, BPFTOOL, "/etc/passwd", "/etc/group"] {
        files.insert(resolve(&root, path, &mut links)?);
    }
    for elf in [BINARY, BPFTOOL] {
        let interpreter = interpreter(&root.join(&elf[1..]))?;
        for object in loaded_inside(&image, &interpreter, elf)? {
            files.insert(resolve(&root, &object, &mut links)?);
        }
    }
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .chain(&links)
        .flat_map(|p| p.ancestors().skip(1).map(Path::to_path_buf))
        .collect();

    // What is there.
    let mut entries = Vec::new();
    walk(&root, &root, &mut entries)?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut listing = String::new();
    let mut unexpected = Vec::new();
    for (path, meta) in &entries {
        let kind = meta.file_type();
        let expected = if kind.is_symlink() {
            links.contains(path)
        } else if kind.is_dir() {
            dirs.contains(path)
        } else {
            kind.is_file() && files.contains(path)
        };
        if !expected {
            unexpected.push(path.display().to_string());
        }
        ensure!(
            meta.uid() == 0 && meta.gid() == 0,
            "{} is owned by {}:{}, not root",
            path.display(),
            meta.uid(),
            meta.gid()
        );
        if !kind.is_symlink() {
            // Nobody but root may change what the daemon runs; no set-id bits.
            ensure!(
                meta.mode() & 0o6022 == 0,
                "{} has mode {:o}",
                path.display(),
                meta.mode() & 0o7777
            );
        }
        let what = if kind.is_symlink() {
            format!(
                "-> {}",
                fs::read_link(root.join(path.strip_prefix("/")?))?.display()
            )
        } else if kind.is_dir() {
            "dir".to_owned()
        } else {
            format!("{} bytes", meta.len())
        };
        listing.push_str(&format!(
            "  {:o} {}  {what}\n",
            meta.mode() & 0o7777,
            path.display()
        ));
    }
    println!("the image's files:\n{listing}");
    ensure!(
        unexpected.is_empty(),
        "the image holds what nothing needs: {unexpected:?}\n{listing}"
    );
    for file in &files {
        ensure!(
            entries.iter().any(|(p, m)| p == file && m.is_file()),
            "{} is not a regular file in the image",
            file.display()
        );
    }
    for binary in [BINARY, BPFTOOL] {
        let mode = fs::metadata(root.join(&binary[1..]))?.mode();
        ensure!(
            mode & 0o111 == 0o111,
            "{binary} must be executable by every user (mode {:o})",
            mode & 0o7777
        );
    }
    Ok(())
}

#[test]
fn the_daemonset_runs_the_daemon_as_root_and_the_collector_as_the_images_user() -> Result<()> {
    let image = Image::unpack()?;
    let user = image
        .run_config("User")
        .as_str()
        .context("the image names no user")?;
    // The daemon's DaemonSet, and the proxy's, whose collector runs the same image.
    let mut containers = Vec::new();
    for file in ["deploy/daemonset.yaml", "deploy/proxy-daemonset.yaml"] {
        let text = fs::read_to_string(workspace().join(file))?;
        let daemon_set = redirector::k8s::yaml::documents(&text)?
            .into_iter()
            .next()
            .with_context(|| format!("{file} is empty"))?;
        containers.extend(
            daemon_set
                .pointer("/spec/template/spec/containers")
                .and_then(Value::as_array)
                .with_context(|| format!("{file} has no containers"))?
                .iter()
                .cloned(),
        );
    }
    let security = |name: &str| -> Result<&Value> {
        let container = containers
            .iter()
            .find(|c| c["name"] == name)
            .with_context(|| format!("no DaemonSet has a container {name}"))?;
        Ok(&container["securityContext"])
    };
    // The daemon: root for its capabilities, which the image's default user would not have.
    let daemon = security("redirector")?;
    ensure!(
        daemon["runAsUser"] == 0,
        "the redirector container must set runAsUser: 0 (the image's default user is {user})"
    );
    // The collector: the image's own unprivileged user, named in its /etc/passwd.
    let collector = security("collector")?;
    ensure!(
        format!("{}:{}", collector["runAsUser"], collector["runAsGroup"]) == user
            && collector["runAsNonRoot"] == true,
        "the collector must run as the image's user {user} with runAsNonRoot, got {collector}"
    );
    // Its pre-stop hook (the drain) runs the image's binary, as that user.
    let hook = containers
        .iter()
        .find(|c| c["name"] == "collector")
        .and_then(|c| c.pointer("/lifecycle/preStop/exec/command/0"))
        .and_then(Value::as_str)
        .context("the collector has no pre-stop hook")?;
    ensure!(
        image.rootfs().join(hook.trim_start_matches('/')).is_file(),
        "the collector's pre-stop hook runs {hook}, which the image does not have"
    );
    Ok(())
}
