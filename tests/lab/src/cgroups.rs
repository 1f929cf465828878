//! A child cgroup v2 tree made by the test, and a way to create sockets from inside one of its
//! cgroups. Programs are attached only to this tree, never to the machine's root cgroup.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use redirector::cgroup::cgroup2_mount;

use crate::sys::unique_id;

/// `<cgroup2 mount>/l7r-test-<unique>` and children, removed on drop.
#[derive(Debug)]
pub struct CgroupTree {
    root: PathBuf,
    children: Vec<PathBuf>,
}

impl CgroupTree {
    /// Creates the tree's root.
    pub fn new() -> Result<Self> {
        let mount = cgroup2_mount()?;
        let root = mount.join(format!("l7r-test-{}", unique_id()));
        fs::create_dir(&root).with_context(|| format!("cannot create {}", root.display()))?;
        Ok(Self {
            root,
            children: Vec::new(),
        })
    }

    /// The tree's root: where the programs are attached.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates a child cgroup `name` below the root.
    pub fn child(&mut self, name: &str) -> Result<PathBuf> {
        let path = self.root.join(name);
        fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        self.children.push(path.clone());
        Ok(path)
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for dir in self
            .children
            .iter()
            .rev()
            .chain(std::iter::once(&self.root))
        {
            // A cgroup whose last process just left can stay busy for a moment.
            let mut result = fs::remove_dir(dir);
            for _ in 0..50 {
                if result.is_ok() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
                result = fs::remove_dir(dir);
            }
            if let Err(e) = result {
                eprintln!("warning: could not remove cgroup {}: {e}", dir.display());
            }
        }
    }
}

/// Serialises moves of this process between cgroups.
static MOVE_LOCK: Mutex<()> = Mutex::new(());

/// The cgroup v2 directory this process is in now.
fn current_cgroup() -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").context("cannot read /proc/self/cgroup")?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup v2 line in /proc/self/cgroup")?;
    Ok(cgroup2_mount()?.join(rel.trim_start_matches('/')))
}

fn move_self(cgroup: &Path) -> Result<()> {
    let procs = cgroup.join("cgroup.procs");
    fs::write(&procs, std::process::id().to_string())
        .with_context(|| format!("cannot move this process into {}", cgroup.display()))
}

/// Moves the process back where it was, also when the closure panics.
struct MoveBack(PathBuf);

impl Drop for MoveBack {
    fn drop(&mut self) {
        if let Err(e) = move_self(&self.0) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Runs `f` with this whole process in `cgroup`, then moves it back. cgroup v2 moves processes,
/// not threads, so the move is serialised. Sockets created inside belong to `cgroup` for good
/// (that is what the cgroup programs look at), and connects made inside are made by a task of
/// `cgroup` (what cgroup exclusion looks at).
pub fn in_cgroup<T>(cgroup: &Path, f: impl FnOnce() -> T) -> Result<T> {
    let _lock = MOVE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let back = MoveBack(current_cgroup()?);
    move_self(cgroup)?;
    let out = f();
    drop(back);
    Ok(out)
}

/// Runs `f` on a new thread (so it may change the thread's credentials or namespace without
/// touching the caller) and returns its result.
pub fn on_new_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match thread::spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
