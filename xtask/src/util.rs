//! Small helpers shared by the tasks: locating the workspace and running commands visibly.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root: the parent of this crate's directory.
///
/// Taken from `CARGO_MANIFEST_DIR` at compile time so the binary finds the workspace no matter
/// which directory `cargo xtask` is started from.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // `parent` is only `None` for `/`, which cargo never reports as a manifest directory; the
    // fallback keeps this infallible without an unwrap.
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.join(".."), Path::to_path_buf)
}

/// The target directory cargo builds into: `$CARGO_TARGET_DIR` (relative to the workspace,
/// where the builds run) or the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// The `cargo` that is running xtask (cargo sets `CARGO` for `cargo run`), so child builds
/// use the same toolchain; plain `cargo` when xtask was started some other way.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() == 0 }
}

/// Quotes `word` for a POSIX shell when it contains anything a shell would interpret, so
/// printed commands can be pasted as they are.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn quote_os(word: &OsStr) -> String {
    shell_quote(&word.to_string_lossy())
}

/// Renders `cmd` as a shell line: the variables it sets explicitly, the program, the arguments.
pub fn display(cmd: &Command) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(dir) = cmd.get_current_dir() {
        parts.push(format!("(cd {} &&", quote_os(dir.as_os_str())));
    }
    for (key, value) in cmd.get_envs() {
        // Removed variables are not shown: the line stays pasteable and removals only matter
        // inside xtask, where the outer cargo has set them.
        if let Some(value) = value {
            parts.push(format!("{}={}", key.to_string_lossy(), quote_os(value)));
        }
    }
    parts.push(quote_os(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote_os));
    let mut line = parts.join(" ");
    if cmd.get_current_dir().is_some() {
        line.push(')');
    }
    line
}

/// Prints `cmd`, runs it with inherited stdio, and fails, naming the command, unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly to probe the machine and returns its stdout and stderr together.
///
/// Probes are not printed: they are questions, not actions, and would drown the output. Fails,
/// naming the command, if it cannot start or exits non-zero.
pub fn probe(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let output = cmd
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!("`{line}` failed ({}): {}", output.status, text.trim());
    }
    Ok(text)
}

/// Finds `program` in the directories of `PATH`, like a shell would.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
