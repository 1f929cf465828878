//! What the benchmark ran on: numbers mean little without the machine beside them.

use std::{fs, process::Command};

use serde::Serialize;

/// The machine and the tool versions the alternatives depend on.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// The CPU model (`model name` of `/proc/cpuinfo`).
    pub cpu_model: String,
    /// `MemTotal` of `/proc/meminfo`, KiB.
    pub memory_kib: u64,
    /// The running kernel (`uname -r`).
    pub kernel: String,
    /// `iptables --version` of the variant used.
    pub iptables: String,
    /// `nft --version`.
    pub nft: String,
    /// The Envoy release used, or why there is none.
    pub envoy: String,
}

/// The value of the first `key: value` line of a `/proc` file whose key is `key`.
pub fn proc_field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
}

/// A KiB count from a `/proc` value such as `"23456 kB"`.
pub fn kib(value: &str) -> Option<u64> {
    value.split_whitespace().next()?.parse().ok()
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| format!("({program} not found)"))
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`): other work on the machine is the
/// main source of noise, so the report says how much there was.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `1.40.0` from `envoy --version` (`.../1.40.0/Clean/RELEASE/BoringSSL`).
pub fn parse_envoy_version(text: &str) -> Option<String> {
    let build = text.split("version:").nth(1)?.split_whitespace().next()?;
    build.split('/').nth(1).map(str::to_string)
}

fn envoy_version() -> String {
    let Ok(bin) = l7r_lab::envoy::binary() else {
        return "Envoy not installed".into();
    };
    let text = Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    parse_envoy_version(&text).map_or_else(
        || "Envoy (unknown version)".into(),
        |v| format!("Envoy {v}"),
    )
}

impl Machine {
    /// Looks at this machine; `iptables` is the program whose version to report.
    pub fn detect(iptables: &str) -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: proc_field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
            memory_kib: proc_field(&meminfo, "MemTotal")
                .and_then(|v| kib(&v))
                .unwrap_or(0),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            iptables: first_line(iptables, &["--version"]),
            nft: first_line("nft", &["--version"]),
            envoy: envoy_version(),
        }
    }

    /// One Markdown line describing the machine.
    pub fn markdown(&self) -> String {
        format!(
            "Machine: {} CPUs ({}), {:.1} GiB RAM, Linux {}; {}; {}; {}.",
            self.cpus,
            self.cpu_model,
            self.memory_kib as f64 / (1024.0 * 1024.0),
            self.kernel,
            self.iptables,
            self.nft,
            self.envoy
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields() {
        let status = "Name:\tredirector\nVmHWM:\t   23456 kB\nVmRSS:\t   20000 kB\n";
        assert_eq!(proc_field(status, "VmHWM").as_deref(), Some("23456 kB"));
        assert_eq!(
            proc_field(status, "VmHWM").and_then(|v| kib(&v)),
            Some(23_456)
        );
        assert_eq!(proc_field(status, "VmSwap"), None);
        let cpu = "processor\t: 0\nmodel name\t: AMD EPYC\n";
        assert_eq!(proc_field(cpu, "model name").as_deref(), Some("AMD EPYC"));
    }

    #[test]
    fn envoy_versions() {
        let out = "\n/x/envoy  version: 9e55809/1.40.0/Clean/RELEASE/BoringSSL\n";
        assert_eq!(parse_envoy_version(out).as_deref(), Some("1.40.0"));
        assert_eq!(parse_envoy_version("nothing"), None);
    }
}
