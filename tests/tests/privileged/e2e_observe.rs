//! End to end for `redirector observe`: the real Envoy carries requests from the client pod to
//! the selected Service, and `observe` reads its access log as it would on the node (or in
//! the proxy pod), naming the Service from the same services file the daemon follows. The
//! filters must keep exactly the requests they describe, `--last` the newest ones, and
//! `--follow` must print a request Envoy logs after it started. Run as root.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use l7r_lab::{
    daemon::eventually,
    e2e::{World, web_service},
};
use serde_json::Value;

use crate::REDIRECTOR as EXE;

/// `redirector observe` on the world's access log and services file, with `args`; its stdout
/// lines.
fn observe(w: &World, args: &[&str]) -> Result<Vec<String>> {
    let out = Command::new(EXE)
        .arg("observe")
        .arg("--access-log")
        .arg(&w.envoy.access_log)
        .args(["--services-file", w.file.arg()])
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "observe {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

fn json(lines: &[String]) -> Result<Vec<Value>> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

#[test]
fn observe_filters_names_and_follows_envoys_requests() -> Result<()> {
    let w = World::new(EXE, &web_service(Some("true")).yaml(), true)?;
    // 6 OK, 3 answered 503 by the backend, 2 answered 404, in this order.
    let mut sent = Vec::new();
    for (path, n, status) in [
        ("/ok", 6, 200),
        ("/status/503", 3, 503),
        ("/status/404", 2, 404),
    ] {
        for i in 0..n {
            // The backend reads the status from the whole rest of the path: no query there.
            let path = if status == 200 {
                format!("{path}?i={i}")
            } else {
                path.to_string()
            };
            let r = w.request("GET", &path)?;
            ensure!(r.via_envoy() && r.status == status, "{path}: {r:?}");
            sent.push(r.status);
        }
    }
    w.envoy.wait_for_log_lines(sent.len())?;

    // Everything, newest last, the Service named.
    let all = json(&observe(&w, &["--output", "json", "--last", "100"])?)?;
    ensure!(
        all.len() == sent.len(),
        "{} of {} requests: {all:#?}",
        all.len(),
        sent.len()
    );
    for (flow, status) in all.iter().zip(&sent) {
        ensure!(flow["status"] == *status, "in order: {flow}");
        ensure!(
            flow["destination"]["service"]["name"] == "web"
                && flow["destination"]["service"]["namespace"] == "shop",
            "the Service is named: {flow}"
        );
    }

    // A status prefix, and the same excluded.
    let errors = json(&observe(&w, &["-o", "json", "--http-status", "5+"])?)?;
    ensure!(
        errors.len() == 3 && errors.iter().all(|f| f["status"] == 503),
        "--http-status 5+: {errors:#?}"
    );
    let rest = json(&observe(
        &w,
        &["-o", "json", "--not", "--http-status", "5+"],
    )?)?;
    ensure!(
        rest.len() == 8 && rest.iter().all(|f| f["status"] != 503),
        "--not --http-status 5+: {rest:#?}"
    );
    // One flag twice: either; two flags: both.
    let either = observe(&w, &["--http-status", "503", "--http-status", "404"])?;
    ensure!(either.len() == 5, "two statuses: {either:#?}");
    let both = observe(&w, &["--http-status", "2+", "--http-path", "i=[0-2]$"])?;
    ensure!(both.len() == 3, "status and path: {both:#?}");
    // Names: the Service matches, another does not.
    ensure!(observe(&w, &["--to-service", "shop/web"])?.len() == 11);
    ensure!(observe(&w, &["--to-service", "shop/other"])?.is_empty());
    // --last keeps the newest.
    let last = json(&observe(&w, &["-o", "json", "--last", "2"])?)?;
    ensure!(
        last.len() == 2 && last.iter().all(|f| f["status"] == 404),
        "--last 2: {last:#?}"
    );
    // The compact line a user reads.
    let line = observe(&w, &["--last", "1"])?;
    ensure!(
        line.len() == 1 && line[0].contains("-> shop/web:80 http GET /status/404 => 404"),
        "{line:?}"
    );

    // --follow prints what Envoy logs after it started, and only that.
    let mut child = Command::new(EXE)
        .arg("observe")
        .arg("--access-log")
        .arg(&w.envoy.access_log)
        .args([
            "--services-file",
            w.file.arg(),
            "--follow",
            "--http-status",
            "2+",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Give it time to open the log at its end, then make one failing and one good request.
    thread::sleep(Duration::from_millis(500));
    w.request("GET", "/status/500")?;
    w.request("GET", "/followed")?;
    let got = eventually("the followed request", Duration::from_secs(10), || {
        Ok(rx.try_recv().ok())
    });
    // SAFETY: signalling the child we started, by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait()?;
    let got = got?;
    ensure!(got.contains("GET /followed => 200"), "{got}");
    ensure!(
        status.success(),
        "observe --follow ends cleanly on SIGTERM: {status}"
    );
    ensure!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "nothing else was printed (the 500 is filtered out, the old requests are not repeated)"
    );
    Ok(())
}

/// A private tmux server (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Self {
        Self {
            socket: format!("l7r-test-{}", l7r_lab::sys::unique_id()),
        }
    }

    fn run(&self, args: &[&str]) -> Result<std::process::Output> {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .context("cannot run tmux (apt-get install tmux; `cargo xtask setup` does)")
    }

    fn screen(&self) -> Result<String> {
        let out = self.run(&["capture-pane", "-p", "-t", "top"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
        // The server leaves its socket behind: /tmp/tmux-UID/NAME (root runs the tests).
        let dir = std::env::var_os("TMUX_TMPDIR").unwrap_or_else(|| "/tmp".into());
        // SAFETY: getuid has no failure mode.
        let uid = unsafe { libc::getuid() };
        let _ = std::fs::remove_file(
            std::path::Path::new(&dir)
                .join(format!("tmux-{uid}"))
                .join(&self.socket),
        );
    }
}

/// `redirector top` in a real terminal (tmux): the requests the real Envoy logs appear as a
/// row with their count, `s` changes the sort order, `q` quits and gives the terminal back.
#[test]
fn top_shows_envoys_requests_in_a_terminal() -> Result<()> {
    let w = World::new(EXE, &web_service(Some("true")).yaml(), true)?;
    let tmux = Tmux::new();
    let command = format!(
        "{EXE} top --access-log {} --services-file {}",
        w.envoy.access_log.display(),
        w.file.arg()
    );
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "20",
        &command,
    ])?;
    ensure!(
        out.status.success(),
        "tmux: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("top's first frame", Duration::from_secs(10), || {
        Ok(tmux.screen()?.contains("redirector top:").then_some(()))
    })?;
    for _ in 0..5 {
        ensure!(w.request("GET", "/top-check?x=1")?.via_envoy());
    }
    let screen = eventually("the row of the 5 requests", Duration::from_secs(10), || {
        let screen = tmux.screen()?;
        Ok(screen
            .lines()
            .any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.get(1) == Some(&"shop/web:80")
                    && cols.get(3) == Some(&"/top-check")
                    && cols.get(4) == Some(&"5")
            })
            .then_some(screen))
    })?;
    ensure!(screen.contains("5 requests, sorted by count"), "{screen}");
    // Kept for the README, which shows a real frame rather than a drawing of one.
    let frame = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("top-frame.txt");
    std::fs::write(&frame, &screen).with_context(|| format!("cannot write {}", frame.display()))?;
    tmux.run(&["send-keys", "-t", "top", "s"])?;
    eventually("sorted by worst", Duration::from_secs(5), || {
        Ok(tmux.screen()?.contains("sorted by worst").then_some(()))
    })?;
    tmux.run(&["send-keys", "-t", "top", "q"])?;
    eventually("top quits on q", Duration::from_secs(5), || {
        Ok((!tmux.run(&["has-session", "-t", "top"])?.status.success()).then_some(()))
    })?;
    Ok(())
}
