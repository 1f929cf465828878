//! A smoke run of the benchmarks, so that `cargo xtask bench` cannot rot unnoticed: the
//! `l7r-bench` binary (the debug build is fine) runs every scenario end to end with tiny sizes
//! (`--quick`, about a minute with the debug build) and must write its JSON. It checks that each scenario
//! measured something, never what it measured: numbers from a debug build on a busy CI
//! machine mean nothing. Run as root: `sudo cargo xtask test`.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};
use l7r_lab::sys::{require_root, unique_id};
use serde_json::Value;

use crate::REDIRECTOR as DAEMON;

const BENCH: &str = env!("CARGO_BIN_EXE_l7r-bench-under-test");

/// A temporary output directory, removed on drop.
struct OutDir(PathBuf);

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The number of samples in `series[field]`.
fn samples(series: &Value, field: &str) -> usize {
    series[field].as_array().map_or(0, Vec::len)
}

#[test]
fn a_quick_bench_run_completes_and_writes_its_samples() -> Result<()> {
    require_root();
    let out = OutDir(std::env::temp_dir().join(format!("l7r-bench-smoke-{}", unique_id())));
    let run = Command::new(BENCH)
        .args([
            "--quick",
            "--proxies",
            "rust,envoy",
            "--daemon",
            DAEMON,
            "--out",
        ])
        .arg(&out.0)
        .output()
        .context("cannot run l7r-bench")?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "l7r-bench failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    for heading in ["### 1.", "### 2.", "### 3.", "### 4."] {
        assert!(stdout.contains(heading), "no {heading} table:\n{stdout}");
    }

    let text = fs::read_to_string(out.0.join("latest.json")).context("no latest.json")?;
    let report: Value = serde_json::from_str(&text)?;
    assert_eq!(report["failures"], Value::Array(vec![]), "{stdout}");

    let unselected = report["unselected"].as_array().context("no unselected")?;
    assert_eq!(unselected.len(), 8, "two sizes × four alternatives");
    for s in unselected {
        assert!(samples(s, "connect_ns") >= 200, "{}", s["alternative"]);
    }

    let selected = report["selected"].as_array().context("no selected")?;
    // Two placements × three steering methods and direct × the Rust proxy, and × Envoy when
    // installed.
    assert!(
        selected.len() == 8 || selected.len() == 16,
        "{}",
        selected.len()
    );
    for s in selected {
        assert!(samples(s, "exchange_ns") >= 100, "{}", s["group"]);
        assert_eq!(samples(s, "stream_ns"), 1, "{}", s["group"]);
    }

    let control = &report["control"];
    assert_eq!(samples(control, "sync_ns"), 1);
    assert_eq!(samples(control, "add_ns"), 2);
    assert_eq!(samples(control, "remove_ns"), 2);
    assert!(
        control["rss"]
            .as_array()
            .is_some_and(|r| r.iter().all(|s| s["vm_hwm_kib"].as_u64() > Some(0))),
        "{control}"
    );

    // Scenario 4: each alternative made its connections (2 s at 1 600/s), and the servers
    // (backend or proxy) accepted each one.
    let ports = report["ports"].as_array().context("no ports")?;
    assert_eq!(ports.len(), 4, "direct and three proxy port counts");
    for p in ports {
        let made = p["connected"].as_u64().unwrap_or(0);
        assert!(made > 0, "{p}");
        assert_eq!(p["accepted"].as_u64(), Some(made), "{p}");
    }

    // Scenario 5 measures Envoy itself, so without Envoy it is skipped, and must say so.
    let cost = report["cost"].as_array().context("no cost")?;
    if cost.is_empty() {
        assert!(
            report["skipped"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s.to_string().contains("cost of logging"))),
            "no cost-of-logging results, and no reason:\n{stdout}"
        );
    } else {
        assert!(stdout.contains("### 5."), "no ### 5. table:\n{stdout}");
        assert_eq!(cost.len(), 2, "keep-alive and new connection per request");
        for c in cost {
            for path in ["direct", "steered"] {
                // Two rounds (--quick), each of which measured requests.
                let rounds = c[path]["latency_ns"].as_array().context("no rounds")?;
                assert_eq!(rounds.len(), 2, "{} {path}", c["mode"]);
                assert!(
                    rounds
                        .iter()
                        .all(|r| r.as_array().is_some_and(|r| !r.is_empty())),
                    "{} {path}",
                    c["mode"]
                );
            }
        }
    }

    // Scenario 6, kube mode (`--quick`: 1 000 Services, 5 000 endpoints, 7 changes of each
    // kind under churn): each measurement was made (every change waited for the map to
    // follow), and the table printed.
    assert!(
        stdout.contains("### 6. Kube mode"),
        "no ### 6. table:\n{stdout}"
    );
    let kube = report["kube"].as_array().context("no kube")?;
    assert_eq!(kube.len(), 1, "one cluster size");
    let k = &kube[0];
    assert_eq!(k["services"].as_u64(), Some(1000), "{k}");
    // 100 selected Services, each a ClusterIP and 5 endpoints.
    assert_eq!(k["destinations"].as_u64(), Some(600), "{k}");
    assert_eq!(samples(k, "sync_ns"), 1, "{k}");
    for kind in ["annotate_ns", "endpoint_ns", "delete_ns"] {
        assert_eq!(samples(k, kind), 7, "{kind}: {k}");
    }
    for field in [
        "vm_hwm_kib",
        "end_rss_kib",
        "changes_cpu_ns",
        "churn_changes",
    ] {
        assert!(k[field].as_u64() > Some(0), "{field}: {k}");
    }
    // Scenario 7, the collector's throughput (`--quick`: 20 000 lines, then 2 s at 10 000
    // lines/s): the collector must have turned every line written into a request, and the
    // measurements must be there.
    assert!(
        stdout.contains("### 7. Collector"),
        "no collector table:\n{stdout}"
    );
    let c = &report["collector"];
    assert_eq!(c["lines"].as_u64(), Some(20_000), "{c}");
    assert_eq!(c["requests"], c["lines"], "every line is one request: {c}");
    assert!(c["cpu_ns"].as_u64() > Some(0), "{c}");
    assert!(c["distinct_paths"].as_u64() > Some(1000), "{c}");
    // 2 s at 10 000 lines/s, every one of them counted by the collector (the scenario
    // checks that) and its memory read.
    assert!(c["steady_lines"].as_u64() > Some(10_000), "{c}");
    assert!(c["steady_vm_rss_kib"].as_u64() > Some(0), "{c}");
    Ok(())
}
