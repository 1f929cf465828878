//! Tests of the Kubernetes API fixture server ([`KubeApiServer`]) against the real clients
//! the redirector meets: `kubectl` (get, annotate) and kube-rs 5 (watchers on Services and
//! EndpointSlices, the Event recorder), including an API outage and a watch that fell behind
//! the history kept. No root needed; every wait has a deadline.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    pin::pin,
    process::{Command, Output, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use futures::StreamExt as _;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, Config, Resource as _, ResourceExt as _,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        events::{Event as RecordedEvent, EventType, Recorder, Reporter},
        watcher::{self, Event, watcher},
    },
};
use kube_fake::{KubeApiServer, Options, Resource};
use serde_json::{Value, json};
use tokio::runtime::Runtime;

const L7: &str = "projectcalico.org/l7-logging";

fn service(namespace: &str, name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"selector": {"app": name}, "ports": [{"port": port, "protocol": "TCP"}]}
    })
}

fn endpoint_slice(namespace: &str, service: &str, addresses: &[&str]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-abcde"),
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service}
        },
        "addressType": "IPv4",
        "endpoints": addresses.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>(),
        "ports": [{"port": 8080, "protocol": "TCP"}]
    })
}

/// A server with `default/web` (with an endpoint slice) and `kube-system/dns`.
fn cluster(options: Options) -> Result<KubeApiServer> {
    KubeApiServer::start_with(
        options,
        [
            service("default", "web", 80),
            service("kube-system", "dns", 53),
            endpoint_slice("default", "web", &["10.0.0.5"]),
        ],
    )
}

/// Runs kubectl against the server with these space-separated arguments; fails with its
/// output unless it succeeds.
fn kubectl(server: &KubeApiServer, args: &str) -> Result<String> {
    let out = server
        .kubectl()
        .args(args.split_whitespace())
        .output()
        .context("cannot run kubectl")?;
    ensure!(
        out.status.success(),
        "kubectl {args} failed: {}",
        output(&out)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn output(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn annotation(server: &KubeApiServer, namespace: &str, name: &str) -> Option<String> {
    server
        .get_service(namespace, name)?
        .annotations()
        .get(L7)
        .cloned()
}

#[test]
fn kubectl_lists_gets_and_annotates_services() -> Result<()> {
    let server = cluster(Options::default())?;

    let version = kubectl(&server, "version")?;
    ensure!(version.contains("Server Version: v1.33.0"), "{version}");

    // The server prints Tables, so the columns are the real server's.
    let all = kubectl(&server, "get svc -A")?;
    for want in [
        "NAMESPACE",
        "CLUSTER-IP",
        "default",
        "web",
        "kube-system",
        "dns",
        "80/TCP",
    ] {
        ensure!(all.contains(want), "no {want:?} in:\n{all}");
    }
    let wide = kubectl(&server, "get svc web -n default -o wide")?;
    ensure!(wide.contains("app=web"), "no selector in:\n{wide}");
    let slices = kubectl(&server, "get endpointslices -n default")?;
    ensure!(
        slices.contains("web-abcde") && slices.contains("10.0.0.5"),
        "{slices}"
    );

    let yaml = kubectl(&server, "get svc web -n default -o yaml")?;
    let got: Service = serde_saphyr::from_str(&yaml).context("kubectl printed no Service")?;
    ensure!(got.name_any() == "web" && got.namespace().as_deref() == Some("default"));
    ensure!(
        got.spec.and_then(|s| s.cluster_ip).is_some(),
        "no cluster IP defaulted"
    );

    let missing = server.kubectl().args(["get", "svc", "nope"]).output()?;
    ensure!(!missing.status.success(), "got a missing service");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    ensure!(
        stderr.contains("Error from server (NotFound): services \"nope\" not found"),
        "{stderr}"
    );

    let before = server.resource_version();
    kubectl(&server, &format!("annotate svc web -n default {L7}=true"))?;
    ensure!(annotation(&server, "default", "web").as_deref() == Some("true"));
    ensure!(
        server.resource_version() > before,
        "the annotation was no write"
    );
    kubectl(&server, &format!("annotate svc web -n default {L7}-"))?;
    ensure!(annotation(&server, "default", "web").is_none());
    let web = server
        .get_service("default", "web")
        .context("web is gone")?;
    ensure!(
        web.metadata.annotations.is_none(),
        "an empty annotation map was kept"
    );

    // KUBECONFIG works as well as --kubeconfig.
    let cache = server.kubeconfig().with_file_name("cache-env");
    let out = Command::new("kubectl")
        .env("KUBECONFIG", server.kubeconfig())
        .arg("--cache-dir")
        .arg(&cache)
        .args([
            "--request-timeout=10s",
            "get",
            "svc",
            "dns",
            "-n",
            "kube-system",
            "-o",
            "name",
        ])
        .output()?;
    ensure!(out.status.success(), "{}", output(&out));
    ensure!(String::from_utf8_lossy(&out.stdout).trim() == "service/dns");
    Ok(())
}

#[test]
fn kubectl_watches_services() -> Result<()> {
    let server = cluster(Options::default())?;
    let mut child = server
        .kubectl()
        // A list, so kubectl watches from the list's resourceVersion and cannot miss the
        // change below (for one object it watches from "0", racing with the change).
        .args(["get", "svc", "-n", "default", "--watch", "-o", "wide"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rows) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let result = (|| -> Result<()> {
        let row = |within| rows.recv_timeout(within).context("kubectl printed no row");
        ensure!(row(Duration::from_secs(10))?.starts_with("NAME"));
        ensure!(row(Duration::from_secs(10))?.starts_with("web "));
        server.apply(&service("default", "web", 8080))?;
        let changed = row(PROMPTLY)?;
        ensure!(
            changed.starts_with("web ") && changed.contains("8080/TCP"),
            "{changed}"
        );
        Ok(())
    })();
    // The watch would run until kubectl's request timeout.
    child.kill()?;
    child.wait()?;
    result
}

/// What a watcher saw, as forwarded from its task.
#[derive(Clone, Debug)]
enum Seen {
    Applied {
        name: String,
        annotations: BTreeMap<String, String>,
        json: Value,
    },
    Deleted(String),
    Error(String),
}

impl Seen {
    fn is_applied(
        &self,
        want: &str,
        pred: impl Fn(&BTreeMap<String, String>, &Value) -> bool,
    ) -> bool {
        matches!(self, Seen::Applied { name, annotations, json } if name == want && pred(annotations, json))
    }
}

/// A runtime for kube-rs (the server has its own).
fn runtime() -> Result<Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A kube client configured from the server's kubeconfig file, as the daemon reads one.
fn client(runtime: &Runtime, kubeconfig: &Path) -> Result<Client> {
    runtime.block_on(async {
        let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    })
}

/// Runs a default kube-rs watcher (list, then watch; with the usual backoff) on `api` and
/// forwards what it sees. It runs until the runtime is dropped.
fn watch<K>(runtime: &Runtime, api: Api<K>) -> Receiver<Seen>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
    K: Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    runtime.spawn(async move {
        let mut events = pin!(watcher(api, watcher::Config::default()).default_backoff());
        while let Some(event) = events.next().await {
            let seen = match event {
                Ok(Event::Apply(object) | Event::InitApply(object)) => Seen::Applied {
                    name: object.name_any(),
                    annotations: object.annotations().clone(),
                    json: serde_json::to_value(&object).unwrap_or_default(),
                },
                Ok(Event::Delete(object)) => Seen::Deleted(object.name_any()),
                Ok(Event::Init | Event::InitDone) => continue,
                Err(e) => Seen::Error(format!("{e} {e:?}")),
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits until the watcher sees something `wanted`; fails after `within` with all it saw.
fn wait_for(
    seen: &Receiver<Seen>,
    within: Duration,
    what: &str,
    wanted: impl Fn(&Seen) -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    let mut saw = Vec::new();
    loop {
        let left = within.saturating_sub(start.elapsed());
        match seen.recv_timeout(left) {
            Ok(event) if wanted(&event) => return Ok(start.elapsed()),
            Ok(event) => saw.push(event),
            Err(RecvTimeoutError::Timeout) => {
                bail!("the watcher did not see {what} within {within:?}; it saw {saw:#?}")
            }
            Err(RecvTimeoutError::Disconnected) => bail!("the watcher ended; it saw {saw:#?}"),
        }
    }
}

const PROMPTLY: Duration = Duration::from_secs(2);

#[test]
fn kube_watcher_sees_services_and_kubectl_annotations() -> Result<()> {
    let server = cluster(Options::default())?;
    let runtime = runtime()?;
    let client = client(&runtime, &server.kubeconfig())?;
    let seen = watch(&runtime, Api::<Service>::all(client));

    for name in ["web", "dns"] {
        wait_for(&seen, Duration::from_secs(10), name, |s| {
            s.is_applied(name, |_, _| true)
        })?;
    }

    let annotating = Instant::now();
    kubectl(&server, &format!("annotate svc web -n default {L7}=true"))?;
    wait_for(&seen, PROMPTLY, "the annotation", |s| {
        s.is_applied("web", |a, _| a.get(L7).map(String::as_str) == Some("true"))
    })?;
    eprintln!("kubectl annotate to watcher: {:?}", annotating.elapsed());

    kubectl(&server, &format!("annotate svc web -n default {L7}-"))?;
    wait_for(&seen, PROMPTLY, "the annotation removed", |s| {
        s.is_applied("web", |a, _| !a.contains_key(L7))
    })?;

    server
        .delete(Resource::Service, "kube-system", "dns")
        .context("no dns")?;
    wait_for(
        &seen,
        PROMPTLY,
        "dns deleted",
        |s| matches!(s, Seen::Deleted(n) if n == "dns"),
    )?;
    Ok(())
}

/// kube-rs lists in pages (its watcher asks for 500 objects at a time); a paged list follows
/// the continue tokens to every object, in order, each page at the first one's
/// resourceVersion.
#[test]
fn lists_come_in_pages_when_asked() -> Result<()> {
    let server = cluster(Options::default())?;
    server.apply(&service("default", "api", 8080))?;
    let rt = runtime()?;
    let api: Api<Service> = Api::all(client(&rt, &server.kubeconfig())?);
    let (names, versions, pages) = rt.block_on(async {
        let (mut names, mut versions, mut pages) = (Vec::new(), Vec::new(), 0);
        let mut params = kube::api::ListParams::default().limit(2);
        loop {
            let page = api.list(&params).await?;
            pages += 1;
            names.extend(page.items.iter().map(|s| s.name_any()));
            versions.push(page.metadata.resource_version.clone());
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
            // A write between pages does not move the list's resourceVersion.
            server.apply(&service("zz", "late", 80))?;
        }
        anyhow::Ok((names, versions, pages))
    })?;
    assert_eq!(pages, 2);
    assert_eq!(names, ["api", "web", "dns", "late"]);
    assert!(versions.windows(2).all(|w| w[0] == w[1]), "{versions:?}");
    let all = rt.block_on(api.list(&kube::api::ListParams::default()))?;
    assert_eq!(all.items.len(), 4, "no limit: one page");
    assert!(all.metadata.continue_.is_none_or(|c| c.is_empty()));
    Ok(())
}

#[test]
fn kube_watcher_sees_endpoint_slices() -> Result<()> {
    let server = cluster(Options::default())?;
    let runtime = runtime()?;
    // Configured directly rather than from the kubeconfig file.
    let config = server.client_config()?;
    let client = runtime.block_on(async { Client::try_from(config) })?;
    let seen = watch(&runtime, Api::<EndpointSlice>::all(client));
    let addresses = |json: &Value| json.pointer("/endpoints/0/addresses/0").cloned();

    wait_for(&seen, Duration::from_secs(10), "the initial slice", |s| {
        s.is_applied("web-abcde", |_, j| addresses(j) == Some(json!("10.0.0.5")))
    })?;

    server.apply(&endpoint_slice("default", "web", &["10.0.0.6", "10.0.0.7"]))?;
    wait_for(&seen, PROMPTLY, "the new endpoints", |s| {
        s.is_applied("web-abcde", |_, j| addresses(j) == Some(json!("10.0.0.6")))
    })?;

    kubectl(&server, "annotate endpointslice web-abcde -n default a=b")?;
    wait_for(&seen, PROMPTLY, "the slice annotated", |s| {
        s.is_applied("web-abcde", |a, _| {
            a.get("a").map(String::as_str) == Some("b")
        })
    })?;

    server
        .delete(Resource::EndpointSlice, "default", "web-abcde")
        .context("no slice")?;
    wait_for(
        &seen,
        PROMPTLY,
        "the slice deleted",
        |s| matches!(s, Seen::Deleted(n) if n == "web-abcde"),
    )?;
    ensure!(server.get_endpoint_slice("default", "web-abcde").is_none());
    Ok(())
}

#[test]
fn watchers_recover_from_an_outage() -> Result<()> {
    let server = cluster(Options::default())?;
    let runtime = runtime()?;
    let client = client(&runtime, &server.kubeconfig())?;
    let seen = watch(&runtime, Api::<Service>::all(client));
    wait_for(&seen, Duration::from_secs(10), "web", |s| {
        s.is_applied("web", |_, _| true)
    })?;

    server.stop()?;
    ensure!(!server.is_running());
    ensure!(
        TcpStream::connect(server.addr()).is_err(),
        "still listening"
    );
    wait_for(&seen, Duration::from_secs(10), "an error", |s| {
        matches!(s, Seen::Error(_))
    })?;

    // Changed while the API is down; the watcher must catch up once it is back.
    let mut web = service("default", "web", 80);
    web["metadata"]["annotations"] = json!({L7: "true"});
    server.apply(&web)?;
    server.start_again()?;
    ensure!(server.is_running());
    let took = wait_for(
        &seen,
        Duration::from_secs(30),
        "the change made while down",
        |s| s.is_applied("web", |a, _| a.get(L7).map(String::as_str) == Some("true")),
    )?;
    eprintln!("the watcher caught up {took:?} after the API came back");

    // And the watch is live again.
    kubectl(
        &server,
        &format!("annotate svc dns -n kube-system {L7}=true"),
    )?;
    wait_for(&seen, PROMPTLY, "dns annotated", |s| {
        s.is_applied("dns", |a, _| a.contains_key(L7))
    })?;
    Ok(())
}

#[test]
fn a_watcher_behind_the_history_lists_again() -> Result<()> {
    let options = Options {
        history_limit: 2,
        ..Options::default()
    };
    let server = cluster(options)?;
    let runtime = runtime()?;
    let client = client(&runtime, &server.kubeconfig())?;
    let seen = watch(&runtime, Api::<Service>::all(client));
    wait_for(&seen, Duration::from_secs(10), "dns", |s| {
        s.is_applied("dns", |_, _| true)
    })?;

    server.stop()?;
    for i in 0..5 {
        let mut dns = service("kube-system", "dns", 53);
        dns["metadata"]["annotations"] = json!({"step": i.to_string()});
        server.apply(&dns)?;
    }
    server.start_again()?;
    wait_for(
        &seen,
        Duration::from_secs(30),
        "410 Expired",
        |s| matches!(s, Seen::Error(e) if e.contains("Expired")),
    )?;
    wait_for(&seen, Duration::from_secs(10), "the relisted state", |s| {
        s.is_applied("dns", |a, _| a.get("step").map(String::as_str) == Some("4"))
    })?;
    Ok(())
}

#[test]
fn kube_recorder_events_are_stored() -> Result<()> {
    let server = cluster(Options::default())?;
    let runtime = runtime()?;
    let client = client(&runtime, &server.kubeconfig())?;
    let web = server.get_service("default", "web").context("no web")?;
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "redirector".into(),
            instance: Some("node-1".into()),
        },
    );
    let event = RecordedEvent {
        type_: EventType::Normal,
        reason: "L7LoggingEnabled".into(),
        note: Some("redirecting web".into()),
        action: "Redirect".into(),
        secondary: None,
    };
    // The second time the recorder patches the first event's series.
    runtime.block_on(async {
        recorder.publish(&event, &web.object_ref(&())).await?;
        recorder.publish(&event, &web.object_ref(&())).await
    })?;

    let events = server.events();
    ensure!(events.len() == 1, "{events:#?}");
    let stored = &events[0];
    ensure!(stored["apiVersion"] == "events.k8s.io/v1", "{stored:#}");
    ensure!(stored["reason"] == "L7LoggingEnabled" && stored["regarding"]["name"] == "web");
    ensure!(stored["series"]["count"] == 2, "{stored:#}");
    ensure!(stored["metadata"]["uid"].is_string() && stored["metadata"]["namespace"] == "default");
    Ok(())
}

/// One HTTP/1.0 GET (no chunking: the body runs to the end of the connection), with its
/// status line and body lines.
fn get_raw(addr: SocketAddr, path: &str) -> Result<(String, Vec<String>)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nAccept: application/json\r\n\r\n"
    )?;
    let mut lines = BufReader::new(stream).lines();
    let status = lines.next().context("no status line")??;
    for line in lines.by_ref() {
        if line?.is_empty() {
            break;
        }
    }
    let body = lines.collect::<std::io::Result<Vec<_>>>()?;
    Ok((status, body))
}

fn parse_lines(lines: &[String]) -> Result<Vec<Value>> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

#[test]
fn watch_protocol_replays_bookmarks_times_out_and_expires() -> Result<()> {
    let options = Options {
        history_limit: 3,
        bookmark_interval: Duration::from_millis(300),
    };
    let server = cluster(options)?; // resourceVersions 1 to 3
    server.apply(&service("default", "extra", 8080))?; // 4
    server.apply(&service("default", "extra", 8081))?; // 5: the history keeps 3 to 5

    let watch = "/api/v1/services?watch=1&allowWatchBookmarks=true&timeoutSeconds=1";
    let started = Instant::now();
    let (status, body) = get_raw(server.addr(), &format!("{watch}&resourceVersion=2"))?;
    ensure!(status.contains("200"), "{status}");
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "timeoutSeconds was not honoured"
    );
    let events = parse_lines(&body)?;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    // 3 is an EndpointSlice, so 4 and 5 are the Service changes after 2.
    ensure!(kinds[..2] == ["ADDED", "MODIFIED"], "{events:#?}");
    ensure!(events[1]["object"]["metadata"]["name"] == "extra");
    ensure!(events[1]["object"]["spec"]["ports"][0]["port"] == 8081);
    ensure!(kinds.contains(&"BOOKMARK"), "no bookmark in {events:#?}");
    let bookmark = events
        .iter()
        .find(|e| e["type"] == "BOOKMARK")
        .context("no bookmark")?;
    ensure!(bookmark["object"]["kind"] == "Service" && bookmark["object"]["apiVersion"] == "v1");
    ensure!(bookmark["object"]["metadata"]["resourceVersion"] == "5");

    let (_, body) = get_raw(server.addr(), &format!("{watch}&resourceVersion=0"))?;
    let events = parse_lines(&body)?;
    let added: Vec<&Value> = events.iter().filter(|e| e["type"] == "ADDED").collect();
    ensure!(added.len() == 3, "not every service as ADDED: {events:#?}");

    let (status, body) = get_raw(
        server.addr(),
        &format!("{watch}&resourceVersion=0&labelSelector=app%3Ddns"),
    )?;
    ensure!(status.contains("200"));
    let events = parse_lines(&body)?;
    ensure!(
        events.iter().filter(|e| e["type"] == "ADDED").count() == 1,
        "{events:#?}"
    );

    let (_, body) = get_raw(
        server.addr(),
        &format!("{watch}&resourceVersion=0&sendInitialEvents=true"),
    )?;
    let events = parse_lines(&body)?;
    let end = &events.get(3).context("too few events")?["object"]["metadata"];
    ensure!(
        end["annotations"]["k8s.io/initial-events-end"] == "true",
        "{events:#?}"
    );

    // Changes after 1 start at 2, which is no longer kept.
    let (_, body) = get_raw(server.addr(), &format!("{watch}&resourceVersion=1"))?;
    let events = parse_lines(&body)?;
    ensure!(
        events.len() == 1 && events[0]["type"] == "ERROR",
        "{events:#?}"
    );
    ensure!(events[0]["object"]["code"] == 410 && events[0]["object"]["reason"] == "Expired");

    let (status, body) = get_raw(server.addr(), "/api/v1/configmaps")?;
    ensure!(status.contains("404"), "{status}");
    let status_object: Value = serde_json::from_str(&body.concat())?;
    ensure!(status_object["kind"] == "Status" && status_object["reason"] == "NotFound");

    let (status, body) = get_raw(server.addr(), "/api/v1/namespaces/default/services/nope")?;
    ensure!(status.contains("404"), "{status}");
    let status_object: Value = serde_json::from_str(&body.concat())?;
    ensure!(status_object["details"]["name"] == "nope" && status_object["code"] == 404);
    Ok(())
}
