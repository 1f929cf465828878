//! A steady load of new connections from the client pod (`l7r-load`, run in its namespace
//! and cgroup): what the reliability tests count failed requests in.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{lab::Lab, process::spawn_in};

/// One request's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Milliseconds after the load started.
    pub at_ms: u64,
    /// `Ok(true)`: answered through Envoy; `Ok(false)`: answered directly; `Err`: why it failed.
    pub result: Result<bool, String>,
}

/// The running load; stopped (by closing its stdin) in [`Load::finish`] or on drop.
pub struct Load {
    child: Child,
    started: Instant,
    reader: Option<thread::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    /// Starts `exe` (the `l7r-load` binary) against `target` at `rate` new connections per
    /// second over `workers` workers.
    pub fn start(
        exe: &str,
        lab: &Lab,
        target: SocketAddr,
        rate: u32,
        workers: u32,
    ) -> Result<Self> {
        Self::spawn(exe, lab, target, &["--rate", &rate.to_string()], workers)
    }

    /// Starts `exe` with `workers` keep-alive connections, each making requests back to back
    /// and reconnecting only when the server closes the connection after a response.
    pub fn start_keep_alive(
        exe: &str,
        lab: &Lab,
        target: SocketAddr,
        workers: u32,
    ) -> Result<Self> {
        Self::spawn(exe, lab, target, &["--keep-alive", "--rate", "0"], workers)
    }

    fn spawn(
        exe: &str,
        lab: &Lab,
        target: SocketAddr,
        mode: &[&str],
        workers: u32,
    ) -> Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.args(["--target", &target.to_string()])
            .args(mode)
            .args(["--workers", &workers.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = spawn_in(cmd, &lab.client_ns, Some(&lab.client_cgroup))?;
        let started = Instant::now();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let reader = thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| parse(&l))
                .collect()
        });
        Ok(Self {
            child,
            started,
            reader: Some(reader),
        })
    }

    /// Milliseconds since the load started: the clock of [`Outcome::at_ms`] (to within the
    /// few milliseconds the load's process takes to start).
    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Stops the load and returns every outcome, in the order they were reported.
    pub fn finish(mut self) -> Result<Report> {
        drop(self.child.stdin.take());
        let reader = self.reader.take().context("already finished")?;
        let outcomes = reader
            .join()
            .map_err(|_| anyhow::anyhow!("the load reader panicked"))?;
        self.child.wait()?;
        Ok(Report { outcomes })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if matches!(self.child.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(100));
            if matches!(self.child.try_wait(), Ok(None)) {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
    }
}

fn parse(line: &str) -> Option<Outcome> {
    let mut parts = line.splitn(3, ' ');
    let at_ms = parts.next()?.parse().ok()?;
    let result = match (parts.next()?, parts.next().unwrap_or("")) {
        ("ok", "envoy") => Ok(true),
        ("ok", _) => Ok(false),
        (_, why) => Err(why.to_string()),
    };
    Some(Outcome { at_ms, result })
}

/// What a load saw.
#[derive(Debug)]
pub struct Report {
    /// Every request, in order.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Requests sent.
    pub fn sent(&self) -> usize {
        self.outcomes.len()
    }

    /// The failed ones.
    pub fn failed(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| o.result.is_err()).collect()
    }

    /// How many Envoy answered.
    pub fn via_envoy(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.result == Ok(true))
            .count()
    }

    /// How many the backend answered directly.
    pub fn direct(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.result == Ok(false))
            .count()
    }

    /// The failed ones the peer reset (rather than refused, or left to time out).
    pub fn reset(&self) -> usize {
        self.failed()
            .iter()
            .filter(|o| o.result.as_ref().is_err_and(|e| e.contains("reset")))
            .count()
    }

    /// When (ms) the first request at or after `from_ms` was answered through Envoy.
    pub fn first_via_envoy_from(&self, from_ms: u64) -> Option<u64> {
        self.outcomes
            .iter()
            .filter(|o| o.at_ms >= from_ms && o.result == Ok(true))
            .map(|o| o.at_ms)
            .min()
    }

    /// When (ms) the first request at or after `from_ms` was answered directly.
    pub fn first_direct_from(&self, from_ms: u64) -> Option<u64> {
        self.outcomes
            .iter()
            .filter(|o| o.at_ms >= from_ms && o.result == Ok(false))
            .map(|o| o.at_ms)
            .min()
    }

    /// One line: sent, through Envoy, direct, failed (with the first few reasons).
    pub fn summary(&self) -> String {
        let failed = self.failed();
        let reasons: Vec<String> = failed
            .iter()
            .take(5)
            .map(|o| {
                format!(
                    "{} ms: {}",
                    o.at_ms,
                    o.result.as_ref().err().map_or("", |e| e)
                )
            })
            .collect();
        format!(
            "sent {}, through Envoy {}, direct {}, failed {} [{}]",
            self.sent(),
            self.via_envoy(),
            self.direct(),
            failed.len(),
            reasons.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse() {
        assert_eq!(
            parse("12 ok envoy"),
            Some(Outcome {
                at_ms: 12,
                result: Ok(true)
            })
        );
        assert_eq!(parse("13 ok direct").map(|o| o.result), Some(Ok(false)));
        assert_eq!(
            parse("14 fail Connection refused (os error 111)").map(|o| o.result),
            Some(Err("Connection refused (os error 111)".into()))
        );
        assert_eq!(parse("garbage"), None);
    }
}
