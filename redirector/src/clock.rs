//! The clock the readiness lease is written in: `CLOCK_MONOTONIC`, which is what the kernel
//! programs read with `bpf_ktime_get_ns`.

use std::{fmt, time::Duration};

/// Nanoseconds of `CLOCK_MONOTONIC` now, the value `bpf_ktime_get_ns` returns at this instant.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux, so the call cannot
    // fail (the return value is checked all the same).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// `d` in nanoseconds, saturating.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A process in a time namespace with a monotonic offset would write leases in another clock
/// than the kernel programs read (they see the host's), and every lease would be wrong by the
/// offset. Kubernetes does not use time namespaces; refuse to run in one that shifts the clock.
#[derive(Debug, PartialEq, Eq)]
pub struct ShiftedClock {
    /// The offset, as `/proc/self/timens_offsets` gives it.
    pub offset: String,
}

impl fmt::Display for ShiftedClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this process runs in a time namespace whose monotonic clock is shifted by {}: the \
             readiness lease would be written in another clock than the kernel programs read; \
             run the daemon in the host's time namespace",
            self.offset
        )
    }
}

impl std::error::Error for ShiftedClock {}

/// Checks `/proc/self/timens_offsets` (absent on kernels without time namespaces: fine).
pub fn check_monotonic_not_shifted() -> Result<(), ShiftedClock> {
    match std::fs::read_to_string("/proc/self/timens_offsets") {
        Ok(text) => monotonic_offset(&text),
        Err(_) => Ok(()),
    }
}

/// The check on the file's text: lines `monotonic <secs> <nanos>` and `boottime ...`.
fn monotonic_offset(text: &str) -> Result<(), ShiftedClock> {
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if fields.next() != Some("monotonic") {
            continue;
        }
        let rest: Vec<&str> = fields.collect();
        if rest.iter().any(|f| *f != "0") {
            return Err(ShiftedClock {
                offset: rest.join(" "),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_clock_passes_and_a_shifted_one_is_named() {
        assert_eq!(monotonic_offset("monotonic 0 0\nboottime 0 0\n"), Ok(()));
        assert_eq!(monotonic_offset("boottime 100 0\nmonotonic 0 0\n"), Ok(()));
        let err = monotonic_offset("monotonic 3600 0\nboottime 0 0\n").unwrap_err();
        assert_eq!(err.offset, "3600 0");
        assert!(err.to_string().contains("host's time namespace"));
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = monotonic_ns();
        std::thread::sleep(Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(a > 0 && b > a, "{a} then {b}");
    }
}
