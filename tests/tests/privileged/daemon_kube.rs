//! Privileged tests of `redirector run` against a Kubernetes API: the daemon's real kube-rs
//! watcher talks to the API test server (`kube_fake`, a fixture, since no
//! kube-apiserver installs here), and the real `kubectl annotate` drives the selection. The
//! server, the daemon and kubectl all live in the lab's node namespace.

use std::{
    collections::BTreeSet, net::SocketAddr, process::Stdio, sync::Arc, thread, time::Duration,
};

use anyhow::{Context as _, Result, bail};
use kube_fake::KubeApiServer;
use l7r_lab::{
    daemon::{Daemon, eventually, http_get},
    lab::{BACKEND4, Lab, LabOptions, SERVICE_PORT, sa},
    process::spawn_in,
};
use serde_json::{Value, json};

use crate::REDIRECTOR as EXE;

const METRICS: &str = "127.0.0.1:9400";

fn service(annotation: Option<&str>) -> Value {
    let mut s = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"port": 80, "targetPort": SERVICE_PORT, "protocol": "TCP"}]}
    });
    if let Some(v) = annotation {
        s["metadata"]["annotations"] = json!({"projectcalico.org/l7-logging": v});
    }
    s
}

fn slice() -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-x1", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [BACKEND4], "conditions": {"ready": true}}],
        "ports": [{"port": SERVICE_PORT, "protocol": "TCP", "name": ""}]
    })
}

fn web_destinations() -> BTreeSet<SocketAddr> {
    [sa("10.96.0.10", 80), sa(BACKEND4, SERVICE_PORT)].into()
}

struct World {
    daemon: Daemon,
    server: Arc<KubeApiServer>,
    lab: Lab,
}

impl World {
    fn new(annotation: Option<&str>) -> Result<Self> {
        let lab = Lab::with(LabOptions::for_daemon())?;
        let objects = vec![service(annotation), slice()];
        // Started from inside the node namespace, so it listens there, next to the daemon.
        let server = Arc::new(lab.node_ns.run(move || KubeApiServer::start(objects))??);
        let kubeconfig = server.kubeconfig();
        let daemon = Daemon::start(
            EXE,
            &lab,
            &[
                "--kubeconfig",
                &kubeconfig.to_string_lossy(),
                "--metrics-addr",
                METRICS,
            ],
        )?;
        let w = Self {
            daemon,
            server,
            lab,
        };
        let addr: SocketAddr = METRICS.parse()?;
        eventually("/readyz", Duration::from_secs(15), || {
            Ok(matches!(http_get(&w.lab.node_ns, addr, "/readyz"), Ok((200, _))).then_some(()))
        })
        .with_context(|| w.daemon.log())?;
        Ok(w)
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.server.kubectl();
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = spawn_in(cmd, &self.lab.node_ns, None)?.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn wait_map(&self, want: &BTreeSet<SocketAddr>, limit: Duration) -> Result<()> {
        eventually(&format!("the services map to hold {want:?}"), limit, || {
            Ok((self.lab.pinned_destinations()? == *want).then_some(()))
        })
        .with_context(|| self.daemon.log())
    }
}

#[test]
fn kubectl_annotate_selects_and_deselects_a_service() -> Result<()> {
    let w = World::new(None)?;
    assert!(w.lab.pinned_destinations()?.is_empty());

    w.kubectl(&[
        "annotate",
        "svc",
        "web",
        "-n",
        "shop",
        "projectcalico.org/l7-logging=true",
    ])?;
    w.wait_map(&web_destinations(), Duration::from_secs(5))?;

    w.kubectl(&[
        "annotate",
        "svc",
        "web",
        "-n",
        "shop",
        "projectcalico.org/l7-logging-",
    ])?;
    w.wait_map(&BTreeSet::new(), Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn a_bad_annotation_value_selects_nothing_and_raises_an_event() -> Result<()> {
    let w = World::new(None)?;
    w.kubectl(&[
        "annotate",
        "svc",
        "web",
        "-n",
        "shop",
        "projectcalico.org/l7-logging=yes",
    ])?;
    let event = eventually(
        "a Warning Event on shop/web",
        Duration::from_secs(10),
        || {
            Ok(w.server
                .events()
                .into_iter()
                .find(|e| e["regarding"]["name"] == "web" && e["type"] == "Warning"))
        },
    )
    .with_context(|| w.daemon.log())?;
    assert_eq!(event["reason"], "InvalidAnnotation");
    assert!(
        event["note"].as_str().unwrap_or("").contains("\"yes\""),
        "the Event names the value: {event}"
    );
    assert!(w.lab.pinned_destinations()?.is_empty());
    Ok(())
}

#[test]
fn an_api_outage_keeps_the_selection_and_the_daemon_resyncs_after() -> Result<()> {
    let w = World::new(Some("true"))?;
    w.wait_map(&web_destinations(), Duration::from_secs(5))?;

    w.server.stop()?;
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        w.lab.pinned_destinations()?,
        web_destinations(),
        "nothing flushed while down"
    );
    // Changed while the API is away: deselected.
    w.server.apply(&service(None))?;

    let server = Arc::clone(&w.server);
    w.lab.node_ns.run(move || server.start_again())??;
    w.wait_map(&BTreeSet::new(), Duration::from_secs(30))?;
    assert!(
        w.daemon.log().contains("watch failed"),
        "{}",
        w.daemon.log()
    );
    Ok(())
}
