//! `redirector drain-proxy`: takes the node's Envoy out of service without failing a request,
//! before its pod stops (the proxy DaemonSet runs it as a pre-stop hook).
//!
//! 1. `POST /healthcheck/fail`: Envoy's `/ready` answers 503 from now on, so the daemon's next
//!    check revokes the readiness lease and new connections go direct. Envoy still accepts
//!    and serves whatever is steered to it meanwhile.
//! 2. Wait `steering_grace`: by then the kernel steers nothing more to it (one check interval
//!    with the daemon alive; at most the lease without it).
//! 3. `POST /drain_listeners?graceful`: HTTP/1.1 keep-alive connections get
//!    `Connection: close` on their next response and are closed after it, HTTP/2 ones a
//!    GOAWAY; the listeners close after Envoy's `--drain-time-s`.
//! 4. Wait until no downstream connection is left (or `drain_timeout`), then one access-log
//!    flush interval (`log_flush_wait`) so that the last requests' lines reach the file
//!    before the collector's final read.
//! 5. Write `done_file`, which Envoy's own pre-stop hook waits for before the kubelet sends
//!    it SIGTERM (Envoy exits at once on SIGTERM, closing what is still open).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use thiserror::Error;
use tokio::time::{Instant, sleep};
use tracing::{info, warn};

use crate::envoy_admin;

/// What `drain-proxy` is asked to do.
#[derive(Clone, Debug)]
pub struct DrainOptions {
    /// Envoy's admin address.
    pub admin: SocketAddr,
    /// How long after failing the readiness check new connections may still be steered to
    /// Envoy.
    pub steering_grace: Duration,
    /// At most this long for Envoy's connections to close.
    pub drain_timeout: Duration,
    /// After the last connection closed: Envoy's access-log flush interval, and a little.
    pub log_flush_wait: Duration,
    /// Written (empty) when the drain is over.
    pub done_file: Option<PathBuf>,
}

/// How the drain went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// Downstream connections still open when the drain ended (0 unless `drain_timeout` ran
    /// out).
    pub connections_left: u64,
    /// From the start to the last connection closed (or the timeout).
    pub drained_in: Duration,
}

/// Why a drain could not be done.
#[derive(Debug, Error)]
pub enum DrainError {
    /// The admin API did not answer or refused a call.
    #[error(
        "cannot {what} through Envoy's admin API: {why} (is --admin the address of envoy.yaml's \
         `admin:` section, on the node's loopback?)"
    )]
    Admin {
        /// The step.
        what: &'static str,
        /// The admin's answer or the connection error.
        why: String,
    },
    /// The done file could not be written.
    #[error("cannot write {path}: {source} (Envoy's pre-stop hook waits for it)")]
    DoneFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// How often to look at Envoy's connection count while it drains.
const POLL: Duration = Duration::from_millis(200);

/// At most this long for one admin call: a hung Envoy must not hold the hook (and the pod's
/// termination) until the grace period runs out.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// One admin call within [`ADMIN_TIMEOUT`].
async fn admin_call(
    admin: SocketAddr,
    method: &str,
    path: &str,
) -> Result<envoy_admin::AdminResponse, String> {
    tokio::time::timeout(ADMIN_TIMEOUT, envoy_admin::request(admin, method, path))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "admin {admin} did not answer within {ADMIN_TIMEOUT:?}"
            ))
        })
}

/// Runs the drain (see the module's documentation).
pub async fn drain(opts: &DrainOptions) -> Result<DrainReport, DrainError> {
    let started = Instant::now();
    post(opts.admin, "/healthcheck/fail", "fail Envoy's readiness").await?;
    info!(
        admin = %opts.admin,
        grace = ?opts.steering_grace,
        "Envoy reports not ready: new connections go direct once the daemon sees it"
    );
    sleep(opts.steering_grace).await;
    post(
        opts.admin,
        "/drain_listeners?graceful",
        "drain Envoy's listeners",
    )
    .await?;
    let deadline = Instant::now() + opts.drain_timeout;
    let connections_left = loop {
        let open = match admin_call(opts.admin, "GET", "/stats?filter=downstream_cx_active").await {
            Ok(answer) if answer.status == 200 => active_connections(&answer.body),
            // Envoy gone (killed, or exited on its own) or hung: nothing more will drain.
            Err(e) => {
                warn!(error = %e, "Envoy's admin stopped answering during the drain");
                0
            }
            Ok(answer) => {
                return Err(DrainError::Admin {
                    what: "read Envoy's connection count",
                    why: format!("status {}", answer.status),
                });
            }
        };
        if open == 0 || Instant::now() >= deadline {
            break open;
        }
        sleep(POLL).await;
    };
    let drained_in = started.elapsed();
    if connections_left == 0 {
        info!(after = ?drained_in, "Envoy drained: no connection left");
    } else {
        warn!(
            connections_left,
            timeout = ?opts.drain_timeout,
            "Envoy still holds connections after the drain timeout: they end with Envoy"
        );
    }
    sleep(opts.log_flush_wait).await;
    if let Some(path) = &opts.done_file {
        std::fs::write(path, b"").map_err(|source| DrainError::DoneFile {
            path: path.clone(),
            source,
        })?;
    }
    Ok(DrainReport {
        connections_left,
        drained_in,
    })
}

async fn post(admin: SocketAddr, path: &str, what: &'static str) -> Result<(), DrainError> {
    match admin_call(admin, "POST", path).await {
        Ok(answer) if answer.status == 200 => Ok(()),
        Ok(answer) => Err(DrainError::Admin {
            what,
            why: format!("status {}: {}", answer.status, answer.body.trim()),
        }),
        Err(why) => Err(DrainError::Admin { what, why }),
    }
}

/// Envoy's open downstream connections, from `/stats?filter=downstream_cx_active`: the sum of
/// the per-listener gauges (`listener.<address>.downstream_cx_active`), leaving out the admin's
/// own listener (this very request) and the per-worker copies of the same counts.
pub fn active_connections(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(name, _)| {
            name.starts_with("listener.")
                && name.ends_with(".downstream_cx_active")
                && !name.starts_with("listener.admin.")
                && !name.contains(".worker_")
        })
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_connections_counts_each_listener_once_and_not_the_admin() {
        // As Envoy 1.40 answers, with two listeners (one on a dotted IPv4 address).
        let stats = "\
http.admin.downstream_cx_active: 1
http.l7_redirect_http.downstream_cx_active: 3
listener.[__]_15001.downstream_cx_active: 3
listener.[__]_15001.worker_0.downstream_cx_active: 1
listener.[__]_15001.worker_1.downstream_cx_active: 2
listener.10.0.0.1_15100.downstream_cx_active: 2
listener.10.0.0.1_15100.worker_0.downstream_cx_active: 2
listener.admin.downstream_cx_active: 1
listener.admin.main_thread.downstream_cx_active: 1
";
        assert_eq!(active_connections(stats), 5);
        assert_eq!(active_connections(""), 0);
        assert_eq!(
            active_connections("listener.[__]_15001.downstream_cx_active: 0\n"),
            0
        );
    }

    /// A fake admin that records the calls, answers `stats` with `open` connections, and
    /// serves at most `calls` requests.
    async fn fake_admin(open: u64) -> (SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::{
            io::{AsyncReadExt as _, AsyncWriteExt as _},
            net::TcpListener,
        };
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = admin.local_addr().unwrap();
        let handle = tokio::spawn(async move {
            let mut calls = Vec::new();
            while let Ok(Ok((mut s, _))) =
                tokio::time::timeout(Duration::from_millis(500), admin.accept()).await
            {
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap();
                let line = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let body = if line.contains("/stats") {
                    format!("listener.[__]_15001.downstream_cx_active: {open}\n")
                } else {
                    "OK\n".to_string()
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                calls.push(line);
            }
            calls
        });
        (addr, handle)
    }

    fn options(admin: SocketAddr, done_file: Option<PathBuf>) -> DrainOptions {
        DrainOptions {
            admin,
            steering_grace: Duration::from_millis(50),
            drain_timeout: Duration::from_millis(300),
            log_flush_wait: Duration::from_millis(10),
            done_file,
        }
    }

    #[tokio::test]
    async fn fails_readiness_then_drains_then_says_done() {
        let (admin, calls) = fake_admin(0).await;
        let dir = std::env::temp_dir().join(format!("l7r-drain-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let done = dir.join("done");
        let _ = std::fs::remove_file(&done);
        let report = drain(&options(admin, Some(done.clone()))).await.unwrap();
        assert_eq!(report.connections_left, 0);
        assert!(done.exists(), "the done file is written");
        let calls = calls.await.unwrap();
        assert_eq!(
            calls,
            [
                "POST /healthcheck/fail HTTP/1.1",
                "POST /drain_listeners?graceful HTTP/1.1",
                "GET /stats?filter=downstream_cx_active HTTP/1.1",
            ],
            "in this order"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn connections_that_stay_open_end_the_drain_at_its_timeout() {
        let (admin, _calls) = fake_admin(2).await;
        let report = drain(&options(admin, None)).await.unwrap();
        assert_eq!(report.connections_left, 2);
        assert!(
            report.drained_in >= Duration::from_millis(300),
            "{report:?}"
        );
    }

    #[tokio::test]
    async fn a_hung_admin_ends_the_hook_within_the_call_timeout() {
        // Accepted by the kernel's queue, never read: a stopped Envoy.
        let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let started = std::time::Instant::now();
        let err = drain(&options(hung.local_addr().unwrap(), None))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("did not answer"), "{err}");
        assert!(
            started.elapsed() < ADMIN_TIMEOUT * 2,
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn an_unreachable_admin_is_an_error_that_names_the_flag() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = drain(&options(closed, None)).await.unwrap_err();
        assert!(matches!(err, DrainError::Admin { .. }), "{err:?}");
        assert!(err.to_string().contains("--admin"), "{err}");
    }
}
