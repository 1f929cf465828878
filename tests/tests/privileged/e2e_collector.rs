//! End to end for `redirector collect`: the real Envoy (configured by `deploy/envoy.yaml`) as
//! the node proxy, the real daemon steering a selected Service to it, and the collector
//! following Envoy's access log as it does beside Envoy in the DaemonSet. Requests from the
//! client pod to the Service's ClusterIP must come out as the aggregated L7 records the user
//! guide's users query. Run as root: `sudo cargo xtask test`.
//!
//! Most tests use a long interval and end it with SIGTERM (the collector reads what is left
//! and writes the unfinished interval before it exits), so that every request is known to fall
//! in one interval however Envoy batches its writes; one test checks the periodic flush.

use std::{
    collections::BTreeSet, os::unix::fs::PermissionsExt as _, process::Command, time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use l7r_lab::{
    daemon::eventually,
    e2e,
    http::Response,
    lab::{BACKEND4, CLIENT4, Lab},
    process::LoggedChild,
    sys::{TempFile, json_lines},
};
use serde_json::Value;

use crate::REDIRECTOR as EXE;

/// The records' `host`.
const NODE_NAME: &str = "l7r-test-node";
/// Long enough that a test never sees the interval end on its own.
const LONG_INTERVAL: &str = "300";

/// The field names of a record, as users of the reference product query them.
const FIELDS: [&str; 27] = [
    "start_time",
    "end_time",
    "duration_mean",
    "duration_max",
    "latency",
    "bytes_in",
    "bytes_out",
    "count",
    "src_name_aggr",
    "src_namespace",
    "src_type",
    "dest_name_aggr",
    "dest_namespace",
    "dest_type",
    "dest_service_name",
    "dest_service_namespace",
    "dest_service_port",
    "dest_port_num",
    "method",
    "user_agent",
    "url",
    "response_code",
    "type",
    "protocol",
    "grpc_status",
    "tls_sni",
    "host",
];

/// The selected Service `shop/web`, its EndpointSlice, and Pods for the client and the
/// backend, owned by ReplicaSets as a Deployment's would be.
fn services_yaml() -> String {
    let service = e2e::web_service(Some("true"));
    let pod = |name: &str, owner: &str, ip: &str| {
        format!(
            "---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: shop
  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: {owner}, uid: {owner}-uid, controller: true}}]
status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
"
        )
    };
    format!(
        "{}{}{}",
        service.yaml(),
        pod("client-6b8d5-x7k2p", "client-6b8d5", CLIENT4),
        pod("web-5f7c9-q8w2e", "web-5f7c9", BACKEND4)
    )
}

/// Starts `redirector collect` in the lab's node namespace (as with hostNetwork).
fn start_collector(lab: &Lab, args: &[&str]) -> Result<LoggedChild> {
    let mut cmd = Command::new(EXE);
    cmd.arg("collect").args(args);
    LoggedChild::spawn(cmd, &lab.node_ns, None, "collector")
}

/// Everything one test needs; dropped in reverse order of creation.
struct World {
    collector: LoggedChild,
    output: TempFile,
    e2e: e2e::World,
}

impl World {
    /// The lab with the Service selected and proxied through Envoy, and a collector started
    /// with `args` (plus the access log, the services file, the output and the node name).
    fn new(args: &[&str]) -> Result<Self> {
        // The daemon reads the same file: it must ignore the Pods in it.
        let e2e = e2e::World::new(EXE, &services_yaml(), true)?;
        let output = TempFile::new("collector-out.jsonl");
        let access_log = e2e.envoy.access_log.to_string_lossy().into_owned();
        let mut all = vec![
            "--access-log",
            access_log.as_str(),
            "--services-file",
            e2e.file.arg(),
            "--output",
            output.arg(),
            "--node-name",
            NODE_NAME,
            "--poll-interval",
            "100ms",
        ];
        all.extend_from_slice(args);
        let mut collector = start_collector(&e2e.lab, &all)?;
        let ready = if args.contains(&"Disabled") {
            "log collection is disabled"
        } else {
            "following the access log"
        };
        collector.wait_for_log(ready, Duration::from_secs(10))?;
        Ok(Self {
            collector,
            output,
            e2e,
        })
    }

    /// `GET path` from the client pod to the ClusterIP, on a new connection.
    fn get(&self, path: &str) -> Result<Response> {
        let response = self.e2e.request("GET", path)?;
        ensure!(
            response.via_envoy(),
            "GET {path} did not go through Envoy: {response:?}\nEnvoy's access log: {:#?}",
            self.e2e.envoy.access_log()
        );
        Ok(response)
    }

    /// `count` requests to each path, one after the other, then waits until Envoy logged all
    /// of them.
    fn send(&self, requests: &[(&str, usize)]) -> Result<()> {
        let mut total = 0;
        for &(path, count) in requests {
            for _ in 0..count {
                self.get(path)?;
            }
            total += count;
        }
        self.e2e.envoy.wait_for_log_lines(total)?;
        Ok(())
    }

    /// Stops the collector (it writes the unfinished interval first) and returns its records.
    fn stop_and_read(&mut self) -> Result<Vec<Value>> {
        let status = self.collector.terminate()?;
        ensure!(
            status.success(),
            "the collector failed ({status}). Log:\n{}",
            self.collector.log()
        );
        json_lines(&self.output.0)
    }
}

/// The record for `url`, a path of `web.shop` (records' `url` is authority + path).
fn find<'a>(records: &'a [Value], url: &str) -> Result<&'a Value> {
    records
        .iter()
        .find(|r| r["url"] == format!("web.shop{url}"))
        .with_context(|| format!("no record for {url}: {records:#?}"))
}

/// Checks the fields every record of a request from the client pod to `shop/web` carries.
fn check_names(r: &Value) -> Result<()> {
    let names: BTreeSet<&str> = r
        .as_object()
        .context("a record is an object")?
        .keys()
        .map(String::as_str)
        .collect();
    ensure!(
        names == BTreeSet::from(FIELDS),
        "the record's fields differ from the reference product's: {names:?}"
    );
    for (field, want) in [
        ("src_name_aggr", Value::from("client-6b8d5-*")),
        ("src_namespace", "shop".into()),
        ("src_type", "wep".into()),
        ("dest_name_aggr", "web-5f7c9-*".into()),
        ("dest_namespace", "shop".into()),
        ("dest_type", "wep".into()),
        ("dest_service_name", "web".into()),
        ("dest_service_namespace", "shop".into()),
        ("dest_service_port", 80.into()),
        ("dest_port_num", 80.into()),
        ("method", "GET".into()),
        // Felix's default aggregation leaves the HTTP header info (user agent, type) out.
        ("user_agent", "-".into()),
        ("type", "-".into()),
        ("protocol", "http".into()),
        ("host", NODE_NAME.into()),
    ] {
        ensure!(
            r[field] == want,
            "{field} is {}, expected {want}: {r:#}",
            r[field]
        );
    }
    let number = |f: &str| {
        r[f].as_u64()
            .with_context(|| format!("{f} is not a number: {r:#}"))
    };
    ensure!(number("start_time")? <= number("end_time")?, "{r:#}");
    ensure!(number("duration_max")? >= number("duration_mean")?, "{r:#}");
    ensure!(number("bytes_out")? > 0, "the responses have bodies: {r:#}");
    number("latency")?;
    number("bytes_in")?;
    Ok(())
}

#[test]
fn two_kinds_of_requests_in_one_interval_make_two_records() -> Result<()> {
    let mut w = World::new(&["--log-interval-seconds", LONG_INTERVAL])?;
    // A collector that runs as nobody (as in the DaemonSet) must be able to read the log.
    let mode = std::fs::metadata(&w.e2e.envoy.access_log)?
        .permissions()
        .mode();
    ensure!(
        mode & 0o004 != 0,
        "Envoy's access log is not world-readable ({mode:o})"
    );
    w.send(&[("/a", 5), ("/status/404", 3)])?;
    let records = w.stop_and_read()?;
    ensure!(
        records.len() == 2,
        "expected exactly two records: {records:#?}"
    );
    let a = find(&records, "/a")?;
    let not_found = find(&records, "/status/404")?;
    check_names(a)?;
    check_names(not_found)?;
    assert_eq!(a["count"], 5);
    assert_eq!(a["response_code"], "200");
    assert_eq!(not_found["count"], 3);
    assert_eq!(not_found["response_code"], "404");
    assert_eq!(
        (&a["start_time"], &a["end_time"]),
        (&not_found["start_time"], &not_found["end_time"]),
        "one interval"
    );
    Ok(())
}

#[test]
fn a_cap_of_one_keeps_one_record_and_counts_the_rest_as_unlogged() -> Result<()> {
    // Configured as the user guide does, through the ApplicationLayer resource.
    let application_layer = TempFile::new("application-layer.yaml");
    std::fs::write(
        &application_layer.0,
        format!(
            "apiVersion: operator.tigera.io/v1
kind: ApplicationLayer
metadata:
  name: tigera-secure
spec:
  sidecarInjection: true
  logCollection:
    collectLogs: Enabled
    logIntervalSeconds: {LONG_INTERVAL}
    logRequestsPerInterval: 1
"
        ),
    )?;
    let mut w = World::new(&["--application-layer", application_layer.arg()])?;
    w.send(&[("/a", 4), ("/status/404", 3), ("/b", 2)])?;
    let records = w.stop_and_read()?;
    ensure!(
        records.len() == 2,
        "expected one record and one unlogged record: {records:#?}"
    );
    let a = find(&records, "/a")?;
    check_names(a)?;
    assert_eq!(a["count"], 4);
    let unlogged = records
        .iter()
        .find(|r| r["type"] == "unlogged")
        .with_context(|| format!("no unlogged record: {records:#?}"))?;
    assert_eq!(unlogged["count"], 5, "the 404s and the /b requests");
    assert_eq!(unlogged["host"], NODE_NAME);
    assert!(unlogged["bytes_out"].as_u64().unwrap_or(0) > 0);
    Ok(())
}

#[test]
fn records_are_written_every_interval() -> Result<()> {
    let w = World::new(&["--log-interval-seconds", "1"])?;
    w.send(&[("/a", 3), ("/status/404", 2)])?;
    // Without stopping the collector: the periodic flush writes them.
    let records = eventually("the records of 5 requests", Duration::from_secs(10), || {
        let records = json_lines(&w.output.0)?;
        let total: u64 = records.iter().filter_map(|r| r["count"].as_u64()).sum();
        Ok((total >= 5).then_some(records))
    })
    .with_context(|| w.collector.log())?;
    let count = |url: &str| -> u64 {
        records
            .iter()
            .filter(|r| r["url"] == format!("web.shop{url}"))
            .filter_map(|r| r["count"].as_u64())
            .sum()
    };
    assert_eq!((count("/a"), count("/status/404")), (3, 2), "{records:#?}");
    for r in &records {
        check_names(r)?;
        let (start, end) = (
            r["start_time"].as_u64().unwrap_or(0),
            r["end_time"].as_u64().unwrap_or(0),
        );
        ensure!(
            end >= start && end - start <= 3,
            "a 1 s interval from {start} to {end}: {r:#}"
        );
    }
    Ok(())
}

#[test]
fn disabled_collection_emits_nothing() -> Result<()> {
    let mut w = World::new(&["--collect-logs", "Disabled"])?;
    w.send(&[("/a", 2)])?;
    let records = w.stop_and_read()?;
    ensure!(
        records.is_empty(),
        "collectLogs: Disabled, yet {records:#?}"
    );
    Ok(())
}
