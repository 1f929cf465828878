//! Checks of `deploy/`: every manifest parses into its Kubernetes type with no field the type
//! does not know (a misspelt field would otherwise be dropped silently by the API server), and
//! the pieces are wired to each other and to the daemon: the redirector's arguments parse with
//! the daemon's real command line and agree with the Envoy bootstrap (proxy port, SO_MARK),
//! RBAC grants exactly the calls the daemon makes, the ConfigMap generated from `envoy.yaml`
//! is where Envoy reads it, and the collector's arguments parse with the real command line and
//! read the access log Envoy writes, from the volume they share. The redirector's image is named
//! in one place (kustomization.yaml's `images:`, for both of its containers) and Envoy's is the
//! release the tests run. The same checks run again on what `kubectl kustomize deploy/` renders
//! (what `kubectl apply -k` sends), and on an overlay that points the image at another
//! registry. No root; `kubectl` from `PATH` (that the real Envoy accepts the bootstrap is
//! checked with the privileged tests, which have Envoy installed:
//! `e2e_envoy::envoy_accepts_the_bootstrap`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser as _;
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount, VolumeMount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use redirector::{
    cli::{Cli, CollectArgs, Command as CliCommand, RunArgs},
    collector::config::CollectLogs,
    k8s::sources::Source,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// The access log path written in `deploy/envoy.yaml`; tests and the demo replace this exact
/// string with a path of their own.
const DEFAULT_ACCESS_LOG: &str = "/var/log/envoy/access.log";
/// What `$(NODE_IPS)` stands for when the redirector's arguments are parsed here: a
/// dual-stack node's `status.hostIPs`.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// See [`NODE_IP`].
const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
/// `SOL_SOCKET` and `SO_MARK` on Linux, as Envoy's socket options spell them.
const SOL_SOCKET: i64 = 1;
const SO_MARK: i64 = 36;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A file of `deploy/` as JSON, the way the API server would read it.
fn read_yaml(name: &str) -> Result<Value> {
    let path = deploy_dir().join(name);
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut documents = redirector::k8s::yaml::documents(&text)
        .with_context(|| format!("deploy/{name} is not valid YAML"))?;
    ensure!(
        documents.len() == 1,
        "deploy/{name} holds {} documents, expected one",
        documents.len()
    );
    Ok(documents.remove(0))
}

/// Parses `value` as `T` and checks that nothing was lost on the way: serialising the typed
/// value back must give the same document, else some field is unknown to `T` (a typo, or a
/// field at the wrong level) and would be ignored by the cluster.
fn typed<T: DeserializeOwned + Serialize>(value: &Value, what: &str) -> Result<T> {
    let parsed: T = serde_json::from_value(value.clone())
        .with_context(|| format!("{what} does not parse as {}", std::any::type_name::<T>()))?;
    let back = serde_json::to_value(&parsed)?;
    let mut lost = Vec::new();
    diff(value, &back, String::new(), &mut lost);
    ensure!(
        lost.is_empty(),
        "{what}: fields unknown to {} (misspelt or misplaced?): {}",
        std::any::type_name::<T>(),
        lost.join(", ")
    );
    Ok(parsed)
}

/// The paths in `original` that `round_trip` lacks or holds differently.
fn diff(original: &Value, round_trip: &Value, path: String, out: &mut Vec<String>) {
    match (original, round_trip) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let child = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => diff(value, other, child, out),
                    None => out.push(child),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(x, y, format!("{path}[{i}]"), out);
            }
        }
        _ if original == round_trip => {}
        _ => out.push(format!("{path} ({original} became {round_trip})")),
    }
}

/// Every manifest of the deployment, parsed: the files of `deploy/` as written, or what
/// `kubectl kustomize` renders from them.
struct Manifests {
    /// `deploy/kustomization.yaml` (also for a rendering, which is made from it).
    kustomization: Value,
    namespace: Namespace,
    service_account: ServiceAccount,
    cluster_role: ClusterRole,
    binding: ClusterRoleBinding,
    /// `l7-redirector`, the daemon's.
    daemon_set: DaemonSet,
    /// `l7-proxy`, Envoy's and the collector's.
    proxy_set: DaemonSet,
    /// The ConfigMaps a rendering generates (none in the files themselves).
    config_maps: Vec<ConfigMap>,
}

impl Manifests {
    /// Reads every resource `kustomization.yaml` lists, by its kind; each kind must appear
    /// exactly once.
    fn load() -> Result<Self> {
        let kustomization = read_yaml("kustomization.yaml")?;
        let resources = string_list(&kustomization, "/resources")
            .context("kustomization.yaml has no `resources` list")?;
        let mut documents = Vec::new();
        for file in &resources {
            let value = read_yaml(file)
                .with_context(|| format!("kustomization.yaml lists {file}, which must exist"))?;
            documents.push((format!("deploy/{file}"), value));
        }
        Self::from_documents(kustomization, documents)
    }

    /// What `kubectl kustomize dir` renders (`dir` being `deploy/`, a copy of it, or an
    /// overlay of it): what `kubectl apply -k` would send to the API server.
    fn render(dir: &Path) -> Result<Self> {
        let documents = kubectl_kustomize(dir)?
            .into_iter()
            .enumerate()
            .map(|(i, value)| (format!("document {i} of `kubectl kustomize`"), value))
            .collect();
        Self::from_documents(read_yaml("kustomization.yaml")?, documents)
    }

    /// Sorts `documents` (each with where it came from) by kind: each of the deployment's
    /// kinds must appear exactly once, ConfigMaps any number of times, nothing else.
    fn from_documents(kustomization: Value, documents: Vec<(String, Value)>) -> Result<Self> {
        let mut by_kind: BTreeMap<String, Value> = BTreeMap::new();
        let mut config_maps = Vec::new();
        let mut daemon_sets: BTreeMap<String, DaemonSet> = BTreeMap::new();
        for (origin, value) in documents {
            let kind = value["kind"]
                .as_str()
                .with_context(|| format!("{origin} has no `kind`"))?
                .to_owned();
            if kind == "ConfigMap" {
                config_maps.push(typed(&value, &format!("the ConfigMap of {origin}"))?);
                continue;
            }
            if kind == "DaemonSet" {
                let ds: DaemonSet = typed(&value, &format!("the DaemonSet of {origin}"))?;
                let name = ds.metadata.name.clone().unwrap_or_default();
                ensure!(
                    daemon_sets.insert(name.clone(), ds).is_none(),
                    "two DaemonSets named {name:?}"
                );
                continue;
            }
            ensure!(
                by_kind.insert(kind.clone(), value).is_none(),
                "two resources of kind {kind} are listed"
            );
        }
        let mut take = |kind: &str| {
            by_kind
                .remove(kind)
                .with_context(|| format!("kustomization.yaml lists no {kind}"))
        };
        let manifests = Self {
            namespace: typed(&take("Namespace")?, "the Namespace")?,
            service_account: typed(&take("ServiceAccount")?, "the ServiceAccount")?,
            cluster_role: typed(&take("ClusterRole")?, "the ClusterRole")?,
            binding: typed(&take("ClusterRoleBinding")?, "the ClusterRoleBinding")?,
            daemon_set: daemon_sets
                .remove("l7-redirector")
                .context("no DaemonSet l7-redirector (the daemon's)")?,
            proxy_set: daemon_sets
                .remove("l7-proxy")
                .context("no DaemonSet l7-proxy (Envoy's and the collector's)")?,
            kustomization,
            config_maps,
        };
        ensure!(
            by_kind.is_empty() && daemon_sets.is_empty(),
            "kustomization.yaml lists resources this test does not check: {:?} {:?}",
            by_kind.keys().collect::<Vec<_>>(),
            daemon_sets.keys().collect::<Vec<_>>()
        );
        Ok(manifests)
    }

    fn namespace_name(&self) -> Result<&str> {
        self.namespace
            .metadata
            .name
            .as_deref()
            .context("the Namespace has no name")
    }

    /// Both DaemonSets.
    fn daemon_sets(&self) -> [&DaemonSet; 2] {
        [&self.daemon_set, &self.proxy_set]
    }

    /// Both DaemonSets' pod specs.
    fn pod_specs(&self) -> Result<Vec<&PodSpec>> {
        self.daemon_sets()
            .into_iter()
            .map(|ds| {
                ds.spec
                    .as_ref()
                    .and_then(|s| s.template.spec.as_ref())
                    .with_context(|| {
                        format!("DaemonSet {:?} has no pod template spec", ds.metadata.name)
                    })
            })
            .collect()
    }

    /// The pod spec that holds the container `name`.
    fn pod_spec_of(&self, name: &str) -> Result<&PodSpec> {
        self.pod_specs()?
            .into_iter()
            .find(|p| p.containers.iter().any(|c| c.name == name))
            .with_context(|| format!("no DaemonSet has a container {name:?}"))
    }

    fn container(&self, name: &str) -> Result<&Container> {
        self.pod_spec_of(name)?
            .containers
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("no DaemonSet has a container {name:?}"))
    }
}

/// A list of strings at `pointer`.
fn string_list(value: &Value, pointer: &str) -> Option<Vec<String>> {
    value
        .pointer(pointer)?
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// `deploy/envoy.yaml`, and what the other manifests need to agree with.
struct EnvoyBootstrap {
    config: Value,
}

impl EnvoyBootstrap {
    fn load() -> Result<Self> {
        Ok(Self {
            config: read_yaml("envoy.yaml")?,
        })
    }

    fn listener(&self) -> Result<&Value> {
        self.config
            .pointer("/static_resources/listeners")
            .and_then(Value::as_array)
            .and_then(|ls| ls.iter().find(|l| l["name"] == "l7_redirect"))
            .context("envoy.yaml has no listener `l7_redirect`")
    }

    fn listener_port(&self) -> Result<u16> {
        let port = self.listener()?["address"]["socket_address"]["port_value"]
            .as_u64()
            .context("the l7_redirect listener has no socket_address.port_value")?;
        Ok(u16::try_from(port)?)
    }

    /// Whether every address the listener binds is `::` with IPv4-mapped connections accepted.
    fn listener_is_dual_stack(&self) -> Result<bool> {
        let listener = self.listener()?;
        let addresses = std::iter::once(&listener["address"]).chain(
            listener["additional_addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|extra| &extra["address"]),
        );
        Ok(addresses
            .map(|a| &a["socket_address"])
            .all(|s| s["address"] == "::" && s["ipv4_compat"] == true))
    }

    /// Every port the listener binds: its address's and its additional addresses'.
    fn listener_ports(&self) -> Result<BTreeSet<u16>> {
        let listener = self.listener()?;
        let mut ports = BTreeSet::from([self.listener_port()?]);
        for extra in listener["additional_addresses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let port = extra["address"]["socket_address"]["port_value"]
                .as_u64()
                .context("an additional address has no port_value")?;
            ports.insert(u16::try_from(port)?);
        }
        Ok(ports)
    }

    /// The ports whose connections from the node to itself the loop guard closes: the keys of
    /// the listener matcher's destination-port map whose branch names the `loop_guard` chain.
    fn loop_guard_ports(&self) -> Result<BTreeSet<u16>> {
        let map = self
            .listener()?
            .pointer("/filter_chain_matcher/matcher_tree/exact_match_map/map")
            .and_then(Value::as_object)
            .context("the l7_redirect listener has no destination-port map in its matcher")?;
        let mut ports = BTreeSet::new();
        for (port, branch) in map {
            let mut names = BTreeSet::new();
            collect_strings(branch, "name", &mut names);
            if names.contains("loop_guard") {
                ports.insert(
                    port.parse::<u16>()
                        .with_context(|| format!("port key {port:?}"))?,
                );
            }
        }
        Ok(ports)
    }

    /// The SO_MARK every upstream connection carries: each cluster the listener can send to
    /// must set the same one, before connecting.
    /// The admin API's address (`admin.address.socket_address`).
    fn admin(&self) -> Result<SocketAddr> {
        let socket = self
            .config
            .pointer("/admin/address/socket_address")
            .context("envoy.yaml has no admin socket_address")?;
        let ip = socket["address"]
            .as_str()
            .context("admin address")?
            .parse()
            .context("admin address is not an IP")?;
        let port = socket["port_value"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .context("admin port_value")?;
        Ok(SocketAddr::new(ip, port))
    }

    fn upstream_mark(&self) -> Result<u32> {
        let mut used = BTreeSet::new();
        collect_strings(self.listener()?, "cluster", &mut used);
        ensure!(
            !used.is_empty(),
            "the l7_redirect listener names no cluster"
        );
        let clusters = self
            .config
            .pointer("/static_resources/clusters")
            .and_then(Value::as_array)
            .context("envoy.yaml has no static clusters")?;
        let mut marks = BTreeSet::new();
        for name in &used {
            let cluster = clusters
                .iter()
                .find(|c| c["name"] == name.as_str())
                .with_context(|| {
                    format!("the listener uses cluster {name}, which is not defined")
                })?;
            ensure!(
                cluster["type"] == "ORIGINAL_DST" && cluster["lb_policy"] == "CLUSTER_PROVIDED",
                "cluster {name} must be ORIGINAL_DST with lb_policy CLUSTER_PROVIDED"
            );
            let options = cluster
                .pointer("/upstream_bind_config/socket_options")
                .and_then(Value::as_array)
                .with_context(|| {
                    format!("cluster {name} sets no upstream_bind_config.socket_options (SO_MARK)")
                })?;
            let so_mark: Vec<&Value> = options
                .iter()
                .filter(|o| o["level"] == SOL_SOCKET && o["name"] == SO_MARK)
                .collect();
            let [option] = so_mark[..] else {
                bail!("cluster {name} must set SO_MARK exactly once, found {so_mark:?}");
            };
            ensure!(
                option["state"] == "STATE_PREBIND",
                "cluster {name}: SO_MARK must be set before connect (STATE_PREBIND)"
            );
            let mark = option["int_value"]
                .as_u64()
                .with_context(|| format!("cluster {name}: SO_MARK has no int_value"))?;
            marks.insert(u32::try_from(mark)?);
        }
        let [mark] = marks.iter().copied().collect::<Vec<_>>()[..] else {
            bail!("the clusters set different SO_MARKs: {marks:?}");
        };
        Ok(mark)
    }

    /// The file access loggers: (path, json_format).
    fn access_logs(&self) -> Vec<(String, Value)> {
        let mut typed_configs = Vec::new();
        collect_objects(&self.config, &mut typed_configs);
        typed_configs
            .into_iter()
            .filter(|o| {
                o["@type"]
                    == "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
            })
            .map(|o| {
                (
                    o["path"].as_str().unwrap_or_default().to_owned(),
                    o.pointer("/log_format/json_format")
                        .cloned()
                        .unwrap_or(Value::Null),
                )
            })
            .collect()
    }
}

/// Every string value under a key named `key`, anywhere below `value`.
fn collect_strings(value: &Value, key: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == key
                    && let Some(s) = v.as_str()
                {
                    out.insert(s.to_owned());
                }
                collect_strings(v, key, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, key, out)),
        _ => {}
    }
}

/// Every object anywhere in `value`.
fn collect_objects<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            out.push(value);
            map.values().for_each(|v| collect_objects(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_objects(v, out)),
        _ => {}
    }
}

/// A container's arguments as the kubelet would pass them, after the program name,
/// `$(VAR)` expanded from the container's env (every reference must be defined there).
fn kubelet_argv(container: &Container) -> Result<Vec<String>> {
    let env: BTreeSet<&str> = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    let mut argv = vec!["redirector".to_owned()];
    for arg in container.args.iter().flatten() {
        let mut rest = arg.as_str();
        while let Some(start) = rest.find("$(") {
            let end = rest[start..]
                .find(')')
                .with_context(|| format!("unterminated $( in argument {arg:?}"))?;
            let var = &rest[start + 2..start + end];
            ensure!(
                env.contains(var),
                "argument {arg:?} uses $({var}), which the container's env does not define \
                 (Kubernetes would pass it literally)"
            );
            rest = &rest[start + end..];
        }
        argv.push(arg.replace("$(NODE_IPS)", &format!("{NODE_IP},{NODE_IP6}")));
    }
    Ok(argv)
}

/// The redirector container's arguments as the kubelet would pass them, parsed by the
/// daemon's own command line.
fn redirector_args(manifests: &Manifests) -> Result<RunArgs> {
    let argv = kubelet_argv(manifests.container("redirector")?)?;
    let cli = Cli::try_parse_from(&argv).map_err(|e| {
        anyhow::anyhow!(
            "the redirector container's args do not parse with `redirector`'s command line: \
             {argv:?}\n{e}"
        )
    })?;
    let CliCommand::Run(args) = cli.command else {
        bail!("the redirector container must run `redirector run`, got {argv:?}");
    };
    Ok(*args)
}

/// The collector container's arguments, parsed by the same command line.
fn collector_args(manifests: &Manifests) -> Result<CollectArgs> {
    let argv = kubelet_argv(manifests.container("collector")?)?;
    let cli = Cli::try_parse_from(&argv).map_err(|e| {
        anyhow::anyhow!(
            "the collector container's args do not parse with `redirector`'s command line: \
             {argv:?}\n{e}"
        )
    })?;
    let CliCommand::Collect(args) = cli.command else {
        bail!("the collector container must run `redirector collect`, got {argv:?}");
    };
    Ok(*args)
}

/// The mount of `container` that holds `path` (the deepest one).
fn mount_holding<'a>(container: &'a Container, path: &Path) -> Option<&'a VolumeMount> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| path.starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
}

#[test]
fn kustomization_lists_every_manifest_and_each_parses() -> Result<()> {
    let manifests = Manifests::load()?;
    let listed = string_list(&manifests.kustomization, "/resources").unwrap_or_default();
    // Every manifest in deploy/ is installed: nothing written and then forgotten. envoy.yaml
    // enters through the ConfigMap generator instead.
    for entry in fs::read_dir(deploy_dir())? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml")
            && name != "kustomization.yaml"
            && name != "envoy.yaml"
            && !listed.contains(&name)
        {
            bail!("deploy/{name} is not listed in kustomization.yaml's resources");
        }
    }
    let namespace = manifests.namespace_name()?;
    ensure!(
        manifests.kustomization["namespace"] == namespace,
        "kustomization.yaml must put everything (the generated ConfigMap too) in {namespace}"
    );
    Ok(())
}

#[test]
fn envoy_reads_the_config_map_generated_from_envoy_yaml() -> Result<()> {
    check_envoy_reads_the_config_map(&Manifests::load()?)
}

fn check_envoy_reads_the_config_map(manifests: &Manifests) -> Result<()> {
    let k = &manifests.kustomization;
    let generators = k["configMapGenerator"]
        .as_array()
        .context("kustomization.yaml has no configMapGenerator")?;
    let generator = generators
        .iter()
        .find(|g| g["name"] == "envoy-config")
        .context("kustomization.yaml generates no ConfigMap `envoy-config`")?;
    let files = string_list(generator, "/files").context("envoy-config has no `files`")?;
    // `key=path` or just `path` (the key is then the file name).
    let keys: Vec<(&str, &str)> = files
        .iter()
        .map(|f| f.split_once('=').unwrap_or((f.as_str(), f.as_str())))
        .collect();
    ensure!(
        keys == [("envoy.yaml", "envoy.yaml")],
        "envoy-config must hold exactly deploy/envoy.yaml under the key envoy.yaml, got {files:?}"
    );
    ensure!(
        k.pointer("/generatorOptions/disableNameSuffixHash") == Some(&Value::Bool(true)),
        "the DaemonSet names the ConfigMap `envoy-config`, so kustomize must not add a hash \
         suffix (generatorOptions.disableNameSuffixHash: true)"
    );

    let volume = manifests
        .pod_spec_of("envoy")?
        .volumes
        .iter()
        .flatten()
        .find(|v| {
            v.config_map
                .as_ref()
                .is_some_and(|c| c.name == "envoy-config")
        })
        .context("no DaemonSet volume mounts the ConfigMap envoy-config")?;
    let envoy = manifests.container("envoy")?;
    let mount = envoy
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .with_context(|| format!("the envoy container does not mount volume {}", volume.name))?;
    let config_path = Path::new(&mount.mount_path).join("envoy.yaml");
    let args = envoy.args.clone().unwrap_or_default();
    let c = args
        .iter()
        .position(|a| a == "-c")
        .and_then(|i| args.get(i + 1))
        .with_context(|| format!("the envoy container has no `-c PATH` argument: {args:?}"))?;
    ensure!(
        Path::new(c) == config_path && c == "/etc/envoy/envoy.yaml",
        "Envoy reads {c}, but the ConfigMap's key envoy.yaml is mounted at {}",
        config_path.display()
    );

    // The access log goes where the access-logs volume is mounted.
    let bootstrap = EnvoyBootstrap::load()?;
    let logs = bootstrap.access_logs();
    ensure!(
        logs.len() == 3,
        "envoy.yaml must have three file access logs (HTTP, TLS and TCP), found {}",
        logs.len()
    );
    let log_dir = Path::new(DEFAULT_ACCESS_LOG)
        .parent()
        .context("log path has a directory")?;
    ensure!(
        envoy
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| Path::new(&m.mount_path) == log_dir),
        "the envoy container mounts nothing at {}, where its access log goes",
        log_dir.display()
    );
    Ok(())
}

#[test]
fn envoy_access_logs_are_json_at_the_documented_path() -> Result<()> {
    let bootstrap = EnvoyBootstrap::load()?;
    let mut types = BTreeSet::new();
    for (path, format) in bootstrap.access_logs() {
        ensure!(
            path == DEFAULT_ACCESS_LOG,
            "access log path {path:?}: tests and the demo replace exactly {DEFAULT_ACCESS_LOG:?}"
        );
        let fields = format
            .as_object()
            .context("an access log has no json_format")?;
        for key in [
            "start_time",
            "duration",
            "upstream_service_time",
            "method",
            "path",
            "protocol",
            "response_code",
            "response_flags",
            "bytes_received",
            "bytes_sent",
            "user_agent",
            "authority",
            "request_id",
            "downstream_remote_address",
            "downstream_local_address",
            "upstream_host",
            "type",
            "content_type",
            "grpc_status",
            "upgrade",
            "requested_server_name",
        ] {
            ensure!(
                fields.contains_key(key),
                "an access log lacks the field {key}"
            );
        }
        types.insert(fields["type"].as_str().unwrap_or_default().to_owned());
    }
    ensure!(
        types == BTreeSet::from(["http".to_owned(), "tcp".to_owned(), "tls".to_owned()]),
        "one access log must be of type http, one of type tls and one of type tcp, got {types:?}"
    );
    Ok(())
}

#[test]
fn redirector_args_parse_with_the_real_cli_and_agree_with_envoy() -> Result<()> {
    check_redirector_args(&Manifests::load()?)
}

fn check_redirector_args(manifests: &Manifests) -> Result<()> {
    let bootstrap = EnvoyBootstrap::load()?;
    let args = redirector_args(manifests)?;

    let options = args.options()?;
    let listener_port = bootstrap.listener_port()?;
    ensure!(
        options.proxy == Some(SocketAddr::new(NODE_IP.into(), listener_port))
            && options.proxy6 == Some(SocketAddr::new(NODE_IP6.into(), listener_port)),
        "on a dual-stack node the proxies must be the node's two addresses on Envoy's listener \
         port {listener_port} (hostNetwork), got {:?} and {:?}",
        options.proxy,
        options.proxy6
    );
    let proxy = options.proxy.context("no IPv4 proxy")?;
    // One listener for both families: `::` taking IPv4-mapped connections too.
    ensure!(
        bootstrap.listener_is_dual_stack()?,
        "every address of the l7_redirect listener must be \"::\" with ipv4_compat: true, or \
         one of the node's two proxies has no listener"
    );
    // The redirector steers to --proxy-ports consecutive ports: Envoy must listen on each, and
    // guard each against connecting to itself.
    let steered: BTreeSet<u16> = (0..args.proxy_ports).map(|i| proxy.port() + i).collect();
    ensure!(
        bootstrap.listener_ports()? == steered,
        "Envoy listens on {:?}, the redirector steers to {steered:?} (--proxy-ports {})",
        bootstrap.listener_ports()?,
        args.proxy_ports
    );
    ensure!(
        bootstrap.loop_guard_ports()? == steered,
        "the loop guard covers {:?}, the proxy ports are {steered:?}",
        bootstrap.loop_guard_ports()?
    );

    // Envoy's upstream connections must be exempt from steering, or they loop back to it.
    let mark = bootstrap.upstream_mark()?;
    let (excluded, mask) = args
        .exclude_mark
        .context("the redirector is given no --exclude-mark: Envoy's own connections would loop")?;
    ensure!(
        excluded == mark && mark & mask == excluded,
        "--exclude-mark {excluded:#x}/{mask:#x} does not match the SO_MARK {mark:#x} Envoy sets"
    );

    // The proxy check asks Envoy's admin whether it serves (a stopped Envoy still accepts TCP
    // connections): on the node's loopback, where envoy.yaml puts the admin.
    let admin = bootstrap.admin()?;
    ensure!(
        args.proxy_admin == Some(admin),
        "--proxy-admin is {:?}, Envoy's admin listens on {admin}",
        args.proxy_admin
    );
    ensure!(
        args.ready_lease > args.proxy_check_interval,
        "the readiness lease ({:?}) must outlast the check interval ({:?})",
        args.ready_lease,
        args.proxy_check_interval
    );

    let envoy = manifests.container("envoy")?;
    let readiness_port = envoy
        .readiness_probe
        .as_ref()
        .and_then(|p| p.tcp_socket.as_ref())
        .context("the envoy container needs a tcpSocket readiness probe")?
        .port
        .clone();
    ensure!(
        readiness_port == IntOrString::Int(listener_port.into()),
        "Envoy's readiness probe checks {readiness_port:?}, not the listener port {listener_port}"
    );

    let container = manifests.container("redirector")?;
    let node_ips = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_IPS")
        .context("the redirector container has no NODE_IPS env")?;
    let field = node_ips
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    ensure!(
        field == Some("status.hostIPs"),
        "NODE_IPS must come from the downward API status.hostIPs, got {field:?}"
    );

    // In-cluster: the ServiceAccount's credentials, not a file or a kubeconfig.
    ensure!(
        matches!(options.source, Source::Kube(None)),
        "the DaemonSet must use the in-cluster API (no --services-file or --kubeconfig)"
    );

    // The probes hit the daemon's metrics server.
    let metrics = args
        .metrics_addr
        .context("the redirector is given no --metrics-addr, so its probes find nothing")?;
    for (kind, probe) in [
        ("liveness", &container.liveness_probe),
        ("readiness", &container.readiness_probe),
    ] {
        let http = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .with_context(|| format!("the redirector has no httpGet {kind} probe"))?;
        let port = match &http.port {
            IntOrString::Int(p) => *p,
            IntOrString::String(name) => {
                container
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .with_context(|| format!("{kind} probe port {name:?} is not a declared port"))?
                    .container_port
            }
        };
        ensure!(
            i64::from(port) == i64::from(metrics.port()),
            "the {kind} probe checks port {port}, but --metrics-addr is {metrics}"
        );
    }

    // The cgroup and the pin directory are on the host's file systems, mounted from it.
    let mounts = |path: &Path| -> Result<String> {
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| path.starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())
            .with_context(|| format!("{} is on no volume of the container", path.display()))?;
        let volume = manifests
            .pod_spec_of("redirector")?
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .with_context(|| format!("volume {} is not defined", mount.name))?;
        let host = volume
            .host_path
            .as_ref()
            .with_context(|| format!("volume {} must be a hostPath", mount.name))?;
        Ok(host.path.clone())
    };
    let cgroup = args.cgroup.clone().context(
        "--cgroup must name the host's cgroup2 root: by default the daemon would find the \
         container's own cgroup namespace",
    )?;
    ensure!(
        mounts(&cgroup)? == "/sys/fs/cgroup",
        "--cgroup {} is not the host's /sys/fs/cgroup",
        cgroup.display()
    );
    ensure!(
        mounts(&args.pin_dir)? == "/sys/fs/bpf",
        "--pin-dir {} is not on the host's bpffs",
        args.pin_dir.display()
    );
    Ok(())
}

#[test]
fn collector_args_parse_with_the_real_cli_and_read_envoys_access_log() -> Result<()> {
    check_collector_args(&Manifests::load()?)
}

fn check_collector_args(manifests: &Manifests) -> Result<()> {
    let args = collector_args(manifests)?;

    // It reads exactly the file both of Envoy's access loggers write.
    let bootstrap = EnvoyBootstrap::load()?;
    for (path, _) in bootstrap.access_logs() {
        ensure!(
            Path::new(&path) == args.access_log,
            "the collector reads {}, but Envoy logs to {path}",
            args.access_log.display()
        );
    }

    // ...through a volume the envoy container writes and the collector only reads.
    let collector = manifests.container("collector")?;
    let envoy = manifests.container("envoy")?;
    let read = mount_holding(collector, &args.access_log).with_context(|| {
        format!(
            "{} is on no volume of the collector container",
            args.access_log.display()
        )
    })?;
    let written = mount_holding(envoy, &args.access_log).with_context(|| {
        format!(
            "{} is on no volume of the envoy container",
            args.access_log.display()
        )
    })?;
    ensure!(
        read.name == written.name,
        "the collector reads the access log from volume {}, Envoy writes it to volume {}",
        read.name,
        written.name
    );
    ensure!(
        read.mount_path == written.mount_path && read.sub_path == written.sub_path,
        "the shared volume must be mounted at the same place in both containers ({} vs {})",
        read.mount_path,
        written.mount_path
    );
    ensure!(
        read.read_only == Some(true),
        "the collector must mount {} read-only: it never writes the log",
        read.name
    );
    ensure!(
        written.read_only != Some(true),
        "Envoy must be able to write to {}",
        written.name
    );
    ensure!(
        std::ptr::eq(
            manifests.pod_spec_of("collector")?,
            manifests.pod_spec_of("envoy")?
        ),
        "the collector must run in Envoy's pod, to read its access log from their volume"
    );
    let volume = manifests
        .pod_spec_of("collector")?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == read.name)
        .with_context(|| format!("volume {} is not defined", read.name))?;
    ensure!(
        volume.empty_dir.is_some(),
        "volume {} must be an emptyDir: the pod's own, shared by its containers",
        read.name
    );

    // The settings are valid, collection is on, records go to the container's stdout, and
    // names come from the in-cluster API.
    let settings = args
        .log_collection()
        .map_err(|e| anyhow::anyhow!("the collector's settings are invalid: {e:#}"))?;
    ensure!(
        settings.collect_logs == CollectLogs::Enabled,
        "the collector is deployed with collectLogs: Disabled"
    );
    ensure!(
        args.output.is_none(),
        "the collector must write its records to stdout (the container log), not a file"
    );
    ensure!(
        matches!(args.source.source(), Source::Kube(None)),
        "the collector must use the in-cluster API (no --services-file or --kubeconfig)"
    );
    // Its metrics port is declared, so a PodMonitor or a scrape config can name it.
    if let Some(metrics) = args.metrics_addr {
        let declared = collector
            .ports
            .iter()
            .flatten()
            .any(|p| i64::from(p.container_port) == i64::from(metrics.port()));
        ensure!(
            declared,
            "the collector serves metrics on {metrics} but declares no containerPort {}",
            metrics.port()
        );
    }
    let node_name = collector
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    ensure!(
        node_name == Some("spec.nodeName"),
        "the collector needs NODE_NAME from spec.nodeName (the records' host), got {node_name:?}"
    );
    Ok(())
}

#[test]
fn rbac_grants_exactly_what_the_daemon_calls() -> Result<()> {
    check_rbac(&Manifests::load()?)
}

fn check_rbac(manifests: &Manifests) -> Result<()> {
    let role = &manifests.cluster_role;
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        ensure!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "unexpected resourceNames/nonResourceURLs in {rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                let mut verbs = rule.verbs.clone();
                verbs.sort();
                granted.insert((group.clone(), resource.clone(), verbs));
            }
        }
    }
    let want = |g: &str, r: &str, v: &[&str]| {
        (
            g.to_owned(),
            r.to_owned(),
            v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        )
    };
    let expected = BTreeSet::from([
        // Watchers on Services and EndpointSlices in all namespaces (daemon and collector).
        want("", "services", &["get", "list", "watch"]),
        // The collector's Pod watcher, for naming request sources.
        want("", "pods", &["get", "list", "watch"]),
        want(
            "discovery.k8s.io",
            "endpointslices",
            &["get", "list", "watch"],
        ),
        // kube-rs's Recorder: creates events.k8s.io Events, patches them on repeats.
        want("events.k8s.io", "events", &["create", "patch"]),
    ]);
    ensure!(
        granted == expected,
        "the ClusterRole grants {granted:?}, expected exactly {expected:?}"
    );

    let namespace = manifests.namespace_name()?;
    let sa = &manifests.service_account.metadata;
    let sa_name = sa
        .name
        .as_deref()
        .context("the ServiceAccount has no name")?;
    ensure!(
        sa.namespace.as_deref() == Some(namespace),
        "the ServiceAccount ({:?}) must be in namespace {namespace}",
        sa.namespace
    );
    for ds in manifests.daemon_sets() {
        ensure!(
            ds.metadata.namespace.as_deref() == Some(namespace),
            "DaemonSet {:?} is in namespace {:?}, not {namespace}",
            ds.metadata.name,
            ds.metadata.namespace
        );
    }
    let binding = &manifests.binding;
    ensure!(
        binding.role_ref.kind == "ClusterRole"
            && binding.role_ref.api_group == "rbac.authorization.k8s.io"
            && Some(&binding.role_ref.name) == role.metadata.name.as_ref(),
        "the ClusterRoleBinding refers to {:?}, not the ClusterRole {:?}",
        binding.role_ref,
        role.metadata.name
    );
    let subjects: Vec<_> = binding
        .subjects
        .iter()
        .flatten()
        .map(|s| (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()))
        .collect();
    ensure!(
        subjects == [("ServiceAccount", sa_name, Some(namespace))],
        "the ClusterRoleBinding must bind exactly ServiceAccount {namespace}/{sa_name}, got \
         {subjects:?}"
    );
    // The daemon and the collector both watch the API (the collector also Pods): one account.
    for pod in manifests.pod_specs()? {
        let used = pod.service_account_name.as_deref();
        ensure!(
            used == Some(sa_name),
            "a DaemonSet runs as ServiceAccount {used:?}, not {sa_name}"
        );
    }
    Ok(())
}

#[test]
fn daemonset_runs_on_the_host_network_without_privileged_containers() -> Result<()> {
    check_pod_security(&Manifests::load()?)
}

fn check_pod_security(manifests: &Manifests) -> Result<()> {
    for pod in manifests.pod_specs()? {
        check_pod_security_of(pod)?;
    }
    Ok(())
}

fn check_pod_security_of(pod: &PodSpec) -> Result<()> {
    ensure!(
        pod.host_network == Some(true),
        "hostNetwork must be true: the proxy address is the node's"
    );
    ensure!(
        pod.dns_policy.as_deref() == Some("ClusterFirstWithHostNet"),
        "with hostNetwork, dnsPolicy must be ClusterFirstWithHostNet to keep cluster DNS"
    );
    ensure!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "the DaemonSet must tolerate every taint (operator Exists, no key)"
    );
    for container in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        let name = &container.name;
        let sc = container
            .security_context
            .as_ref()
            .with_context(|| format!("container {name} has no securityContext"))?;
        ensure!(
            sc.privileged != Some(true),
            "container {name} must not be privileged"
        );
        let caps = sc
            .capabilities
            .as_ref()
            .with_context(|| format!("container {name} does not drop capabilities"))?;
        ensure!(
            caps.drop.as_deref() == Some(&["ALL".to_owned()][..]),
            "container {name} must drop ALL capabilities, then add what it needs"
        );
        let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
        let expected: BTreeSet<&str> = match name.as_str() {
            "redirector" => BTreeSet::from(["BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"]),
            // SO_MARK on upstream sockets.
            "envoy" => BTreeSet::from(["NET_ADMIN"]),
            // Reads a file and talks to the API: nothing.
            "collector" => BTreeSet::new(),
            other => bail!("unexpected container {other}: decide its capabilities here"),
        };
        ensure!(
            added == expected,
            "container {name} adds capabilities {added:?}, expected {expected:?}"
        );
        ensure!(
            sc.read_only_root_filesystem == Some(true),
            "container {name} must have a read-only root file system"
        );
        for mount in container.volume_mounts.iter().flatten() {
            // The API server rejects Bidirectional propagation in unprivileged containers.
            ensure!(
                mount.mount_propagation.as_deref() != Some("Bidirectional"),
                "container {name}: mount {} uses Bidirectional propagation, which needs a \
                 privileged container",
                mount.name
            );
        }
    }
    Ok(())
}

#[test]
fn the_proxy_pod_drains_envoy_before_it_stops() -> Result<()> {
    check_proxy_drain(&Manifests::load()?)
}

/// A container's pre-stop hook command.
fn pre_stop(container: &Container) -> Result<Vec<String>> {
    container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .with_context(|| format!("container {} has no pre-stop exec hook", container.name))
}

/// The value of `--name VALUE` or `--name=VALUE` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let eq = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(&eq)
        }
    })
}

/// The proxy pod's termination, which must fail no request: the daemon lives in another
/// DaemonSet (updating it leaves Envoy alone); the collector's pre-stop hook drains Envoy
/// (`redirector drain-proxy`, parsed by the real command line) through the admin address
/// envoy.yaml sets, giving the daemon at least its lease to stop steering; Envoy's own hook
/// waits for the drain's done file, on a volume both containers mount; Envoy tells every
/// connection at once and writes its log out before the drain's last wait ends; and the
/// grace period covers the whole drain.
fn check_proxy_drain(manifests: &Manifests) -> Result<()> {
    ensure!(
        !std::ptr::eq(
            manifests.pod_spec_of("redirector")?,
            manifests.pod_spec_of("envoy")?
        ),
        "Envoy must not share the daemon's pod: updating one would restart the other"
    );
    let collector = manifests.container("collector")?;
    let argv = pre_stop(collector)?;
    ensure!(
        argv.first().is_some_and(|a| a == "/usr/bin/redirector"),
        "the collector's pre-stop hook must run the image's /usr/bin/redirector, got {argv:?}"
    );
    let cli = Cli::try_parse_from(&argv)
        .map_err(|e| anyhow::anyhow!("the drain hook {argv:?} does not parse: {e}"))?;
    let CliCommand::DrainProxy(drain) = cli.command else {
        bail!("the collector's pre-stop hook must run `redirector drain-proxy`, got {argv:?}");
    };
    let admin = EnvoyBootstrap::load()?.admin()?;
    ensure!(
        drain.admin == admin,
        "the drain talks to {}, Envoy's admin is at {admin} (envoy.yaml)",
        drain.admin
    );
    let daemon = redirector_args(manifests)?;
    ensure!(
        drain.steering_grace >= daemon.ready_lease,
        "the drain waits {:?} for steering to stop, but a lease lasts {:?} (--ready-lease): a \
         daemon that is down would let the kernel steer to a draining Envoy",
        drain.steering_grace,
        daemon.ready_lease
    );

    let done = drain
        .done_file
        .clone()
        .context("the drain must write --done-file, which Envoy's hook waits for")?;
    let envoy = manifests.container("envoy")?;
    let hook = pre_stop(envoy)?.join(" ");
    ensure!(
        hook.contains(&*done.to_string_lossy()),
        "Envoy's pre-stop hook ({hook}) does not wait for the drain's {}",
        done.display()
    );
    let written = mount_holding(collector, &done)
        .with_context(|| format!("the collector mounts nothing at {}", done.display()))?;
    let seen = mount_holding(envoy, &done)
        .with_context(|| format!("Envoy mounts nothing at {}", done.display()))?;
    ensure!(
        written.name == seen.name && written.read_only != Some(true),
        "the done file must be on one volume, writable by the collector and seen by Envoy"
    );

    let envoy_args = envoy.args.clone().unwrap_or_default();
    ensure!(
        flag(&envoy_args, "--drain-strategy") == Some("immediate"),
        "Envoy must tell every connection at once when the drain starts (--drain-strategy \
         immediate): the default spreads it over --drain-time-s"
    );
    let drain_time: u64 = flag(&envoy_args, "--drain-time-s")
        .context("Envoy has no --drain-time-s")?
        .parse()?;
    ensure!(
        Duration::from_secs(drain_time) <= drain.drain_timeout,
        "Envoy's listeners drain for {drain_time} s, longer than the hook waits ({:?})",
        drain.drain_timeout
    );
    let flush_ms: u64 = flag(&envoy_args, "--file-flush-interval-msec")
        .context("Envoy has no --file-flush-interval-msec")?
        .parse()?;
    ensure!(
        drain.log_flush_wait > Duration::from_millis(flush_ms),
        "the drain ends {:?} after the last connection, but Envoy writes its log out every \
         {flush_ms} ms: the collector would miss the last lines",
        drain.log_flush_wait
    );
    let grace = manifests
        .pod_spec_of("envoy")?
        .termination_grace_period_seconds
        .context("the proxy pod must set terminationGracePeriodSeconds (the default is 30 s)")?;
    let needed = drain.steering_grace + drain.drain_timeout + drain.log_flush_wait;
    ensure!(
        Duration::from_secs(u64::try_from(grace)?) > needed,
        "terminationGracePeriodSeconds {grace} does not cover the drain ({needed:?})"
    );
    Ok(())
}

/// A check of the deployment, on the files or on a rendering.
type Check = fn(&Manifests) -> Result<()>;

/// The checks that hold for the deployment however it is put together: run on the files as
/// written (one test each, above) and on what `kubectl kustomize` renders from them (below).
const CHECKS: &[(&str, Check)] = &[
    (
        "Envoy reads the ConfigMap generated from envoy.yaml",
        check_envoy_reads_the_config_map,
    ),
    (
        "the redirector's arguments parse and agree with Envoy",
        check_redirector_args,
    ),
    (
        "the collector's arguments parse and read Envoy's access log",
        check_collector_args,
    ),
    ("RBAC grants exactly what the daemon calls", check_rbac),
    (
        "host network, no privileged container, least capabilities",
        check_pod_security,
    ),
    (
        "the proxy pod drains Envoy before it stops",
        check_proxy_drain,
    ),
];

/// The image of the DaemonSet's two redirector containers, `redirector` (the daemon) and
/// `collector`, which must be the same.
fn redirector_image(manifests: &Manifests) -> Result<String> {
    let daemon = manifests
        .container("redirector")?
        .image
        .clone()
        .context("the redirector container names no image")?;
    let collector = manifests.container("collector")?.image.clone();
    ensure!(
        collector.as_ref() == Some(&daemon),
        "the daemon runs {daemon} but the collector {}: both are `redirector`, from one image",
        collector.as_deref().unwrap_or("no image")
    );
    Ok(daemon)
}

/// The Envoy release the tests run: `ENVOY_VERSION` in xtask/src/setup.rs, which
/// `cargo xtask setup` installs.
fn tested_envoy_version() -> Result<String> {
    let path = deploy_dir().join("../xtask/src/setup.rs");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("pub const ENVOY_VERSION: &str = \"")?
                .strip_suffix("\";")
        })
        .map(str::to_owned)
        .with_context(|| format!("{} defines no ENVOY_VERSION", path.display()))
}

/// The Envoy image the DaemonSet must run: the release the tests run.
fn expected_envoy_image() -> Result<String> {
    Ok(format!("envoyproxy/envoy:v{}", tested_envoy_version()?))
}

fn check_envoy_image(manifests: &Manifests) -> Result<()> {
    let envoy = manifests
        .container("envoy")?
        .image
        .clone()
        .unwrap_or_default();
    let expected = expected_envoy_image()?;
    ensure!(
        envoy == expected,
        "the DaemonSet runs {envoy}, the tests run Envoy {} (ENVOY_VERSION in \
         xtask/src/setup.rs): change both together, see deploy/README.md",
        tested_envoy_version()?
    );
    Ok(())
}

/// `kubectl kustomize dir`, as parsed documents.
fn kubectl_kustomize(dir: &Path) -> Result<Vec<Value>> {
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .context("cannot run kubectl, which the root-free tests take from PATH")?;
    ensure!(
        out.status.success(),
        "`kubectl kustomize {}` failed ({}): {}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).context("kubectl printed no UTF-8")?;
    redirector::k8s::yaml::documents(&text).with_context(|| {
        format!(
            "`kubectl kustomize {}` printed no valid YAML",
            dir.display()
        )
    })
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "l7r-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A copy of `deploy/` (its files; it has no subdirectories) at `to`.
fn copy_deploy(to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(deploy_dir())? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// kustomization.yaml's one `images:` entry: the redirector's.
fn images_entry(kustomization: &Value) -> Result<&Value> {
    let images = kustomization["images"]
        .as_array()
        .context("kustomization.yaml has no `images:` list (the redirector's image)")?;
    let [entry] = &images[..] else {
        bail!(
            "kustomization.yaml's `images:` must have exactly one entry, the redirector's; \
             Envoy's is pinned in daemonset.yaml: {images:?}"
        );
    };
    Ok(entry)
}

#[test]
fn the_redirector_image_is_set_in_one_place_and_envoy_is_the_tested_release() -> Result<()> {
    let manifests = Manifests::load()?;
    let image = redirector_image(&manifests)?;
    let entry = images_entry(&manifests.kustomization)?;
    // The DaemonSet names the image without a tag, so kustomization.yaml alone says which.
    ensure!(
        entry["name"] == image.as_str(),
        "kustomization.yaml's `images:` entry is for {}, the DaemonSet runs {image}",
        entry["name"]
    );
    let last = image.rsplit('/').next().unwrap_or_default();
    ensure!(
        !last.contains(':') && !image.contains('@'),
        "daemonset.yaml must name {image} without a tag or digest: kustomization.yaml's \
         `images:` sets it"
    );
    // The tag `cargo xtask image` builds (redirector-<version>.oci.tar, tagged <version>).
    ensure!(
        entry["newTag"] == env!("CARGO_PKG_VERSION"),
        "kustomization.yaml deploys the tag {}, but `cargo xtask image` builds {}: bump both",
        entry["newTag"],
        env!("CARGO_PKG_VERSION")
    );
    check_envoy_image(&manifests)
}

#[test]
fn kubectl_kustomize_renders_the_checked_deployment_with_the_image_set() -> Result<()> {
    let rendered = Manifests::render(&deploy_dir())?;
    for (what, check) in CHECKS {
        check(&rendered).with_context(|| format!("rendered by kubectl kustomize: {what}"))?;
    }
    let entry = images_entry(&rendered.kustomization)?;
    let name = entry["name"]
        .as_str()
        .context("the images entry has no name")?;
    let expected = format!("{name}:{}", env!("CARGO_PKG_VERSION"));
    let image = redirector_image(&rendered)?;
    ensure!(
        image == expected,
        "kubectl kustomize renders the image {image}, expected {expected}"
    );
    check_envoy_image(&rendered)?;

    // The generated ConfigMap is exactly envoy.yaml, in the namespace, under its fixed name.
    let namespace = rendered.namespace_name()?;
    let [config_map] = &rendered.config_maps[..] else {
        bail!(
            "expected one generated ConfigMap, got {}",
            rendered.config_maps.len()
        );
    };
    ensure!(
        config_map.metadata.name.as_deref() == Some("envoy-config")
            && config_map.metadata.namespace.as_deref() == Some(namespace),
        "the generated ConfigMap is {:?} in {:?}, expected envoy-config in {namespace}",
        config_map.metadata.name,
        config_map.metadata.namespace
    );
    let bootstrap = fs::read_to_string(deploy_dir().join("envoy.yaml"))?;
    ensure!(
        config_map
            .data
            .as_ref()
            .and_then(|d| d.get("envoy.yaml"))
            .is_some_and(|text| *text == bootstrap),
        "the ConfigMap's key envoy.yaml is not deploy/envoy.yaml as it is"
    );
    // Everything namespaced lands in the namespace.
    ensure!(
        rendered.service_account.metadata.namespace.as_deref() == Some(namespace)
            && rendered
                .daemon_sets()
                .iter()
                .all(|ds| ds.metadata.namespace.as_deref() == Some(namespace)),
        "the ServiceAccount and the DaemonSets must be rendered into {namespace}"
    );
    Ok(())
}

#[test]
fn an_image_override_changes_both_redirector_containers_and_nothing_else() -> Result<()> {
    let manifests = Manifests::load()?;
    let name = redirector_image(&manifests)?;
    let tmp = TempDir::new("kustomize")?;
    let base = tmp.0.join("base");
    copy_deploy(&base)?;

    // An overlay, as a cluster's own repository would keep one: another registry and tag.
    let overlay = tmp.0.join("overlay");
    fs::create_dir_all(&overlay)?;
    fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - \
             ../base\nimages:\n  - name: {name}\n    newName: registry.example:5000/team/redirector\n    \
             newTag: 9.9.9-test\n"
        ),
    )?;
    let rendered = Manifests::render(&overlay)?;
    ensure!(
        redirector_image(&rendered)? == "registry.example:5000/team/redirector:9.9.9-test",
        "the overlay's `images:` did not reach both redirector containers: {}",
        redirector_image(&rendered)?
    );
    check_envoy_image(&rendered)?;
    for (what, check) in CHECKS {
        check(&rendered).with_context(|| format!("rendered from an overlay: {what}"))?;
    }

    // `kustomize edit set image NAME=REGISTRY/redirector@sha256:...` in deploy/ itself rewrites
    // the entry in place: here by hand, on the copy.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let mut kustomization = read_yaml("kustomization.yaml")?;
    let entry = kustomization
        .pointer_mut("/images/0")
        .and_then(Value::as_object_mut)
        .context("kustomization.yaml has no images entry")?;
    entry.remove("newTag");
    entry.insert("newName".into(), "registry.example/redirector".into());
    entry.insert("digest".into(), digest.clone().into());
    // JSON is YAML: kustomize reads it as it is.
    fs::write(
        base.join("kustomization.yaml"),
        serde_json::to_string_pretty(&kustomization)?,
    )?;
    let rendered = Manifests::render(&base)?;
    ensure!(
        redirector_image(&rendered)? == format!("registry.example/redirector@{digest}"),
        "the edited `images:` entry did not reach both redirector containers: {}",
        redirector_image(&rendered)?
    );
    check_envoy_image(&rendered)
}

/// `deploy/cleanup/`: what removes the programs from every node after `kubectl delete -k
/// deploy/`. It must run `redirector detach` on the pin directory the daemon uses, see the
/// host's bpffs there, run the same image, and keep running once done.
#[test]
fn the_cleanup_daemonset_detaches_what_the_redirector_pinned() -> Result<()> {
    let daemon_args = redirector_args(&Manifests::load()?)?;
    let documents = kubectl_kustomize(&deploy_dir().join("cleanup"))?;
    let ds: DaemonSet = typed(
        documents
            .iter()
            .find(|d| d["kind"] == "DaemonSet")
            .context("deploy/cleanup/ renders no DaemonSet")?,
        "the cleanup DaemonSet",
    )?;
    let spec = ds
        .spec
        .and_then(|s| s.template.spec)
        .context("the cleanup DaemonSet has no pod spec")?;
    let [container] = &spec.containers[..] else {
        bail!("the cleanup DaemonSet must have one container");
    };
    let argv: Vec<String> = std::iter::once("redirector".to_owned())
        .chain(container.args.iter().flatten().cloned())
        .collect();
    let cli = Cli::try_parse_from(&argv)
        .map_err(|e| anyhow::anyhow!("{argv:?} does not parse with `redirector`: {e}"))?;
    let CliCommand::Detach { pin_dir, wait } = cli.command else {
        bail!("the cleanup container must run `redirector detach`, got {argv:?}");
    };
    ensure!(
        pin_dir == daemon_args.pin_dir,
        "the cleanup detaches {}, the daemon pins under {}",
        pin_dir.display(),
        daemon_args.pin_dir.display()
    );
    ensure!(
        wait,
        "without --wait the pods would exit and be restarted for good"
    );
    let bpffs = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| pin_dir.starts_with(&m.mount_path))
        .context("nothing is mounted where the pins are")?;
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == bpffs.name)
        .context("the bpffs mount names no volume")?;
    ensure!(
        volume.host_path.as_ref().map(|h| h.path.as_str()) == Some("/sys/fs/bpf")
            && bpffs.read_only != Some(true),
        "the cleanup must see the host's bpffs, writable"
    );
    ensure!(
        spec.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "the cleanup must run on every node, whatever its taints"
    );
    let rendered_image = |docs: &[Value], name: &str| -> Option<String> {
        docs.iter()
            .filter(|d| d["kind"] == "DaemonSet")
            .filter_map(|d| d.pointer("/spec/template/spec/containers"))
            .filter_map(Value::as_array)
            .find_map(|cs| cs.iter().find(|c| c["name"] == name))
            .and_then(|c| c["image"].as_str().map(str::to_owned))
    };
    let cleanup_image = rendered_image(&documents, "detach");
    let daemon_image = rendered_image(&kubectl_kustomize(&deploy_dir())?, "redirector");
    ensure!(
        cleanup_image.is_some() && cleanup_image == daemon_image,
        "the cleanup runs {cleanup_image:?}, the daemon {daemon_image:?}: change both \
         kustomization.yaml `images:` together"
    );
    Ok(())
}
