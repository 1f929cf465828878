//! The command line: `redirector run | status | detach | collect | observe | top |
//! drain-proxy`, every flag of every
//! subcommand in one place. The flags are a contract (see docs/design.md): users, scripts and
//! tests rely on them exactly. Each subcommand's flags turn into the options of the module that
//! does the work (`daemon`, `collector`, `status`, `dataplane`), which know nothing of clap.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use redirector_common::DEFAULT_SERVICES_CAPACITY;

use crate::{
    collector::{
        self, CollectOptions, DEFAULT_ACCESS_LOG,
        config::{
            self, Aggregation, CollectLogs, Inclusion, LogCollection, RequestLimit, Settings,
            TrimUrl,
        },
    },
    daemon::{self, RunOptions},
    dataplane::{self, DEFAULT_PIN_DIR, Dataplane},
    k8s::{service::DEFAULT_ANNOTATION, sources::Source},
    observe::{self, ObserveOptions, filter::FilterSet, render::Output},
    proxy_config::{
        DEFAULT_PROXY_PORT, DEFAULT_PROXY_PORTS, ProxyConfigError, parse_mark, resolve_proxies,
    },
    proxy_drain::{self, DrainOptions},
    return_path::{self, UpstreamSource},
    status,
    telemetry::{self, LogFormat},
    top::{self, TopOptions, stats::SortBy},
};

/// Parses the process's arguments and does what they say: the whole `redirector` binary.
pub fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            telemetry::init(args.log_format);
            runtime()?.block_on(daemon::run(args.options()?))
        }
        Command::Collect(args) => {
            telemetry::init(args.log_format);
            let options = args.options()?;
            runtime()?.block_on(collector::run(options))
        }
        Command::Top(args) => {
            // No log output: lines written under the view would tear it. An error ends it and
            // is printed once the terminal is restored.
            runtime()?.block_on(top::run(TopOptions {
                access_log: args.log.access_log.clone(),
                source: args.log.names_source(),
                sync_timeout: args.log.sync_timeout,
                sort: args.sort,
            }))
        }
        Command::Observe(args) => {
            telemetry::init(LogFormat::Text);
            let argv: Vec<String> = std::env::args()
                .skip_while(|a| a != "observe")
                .skip(1)
                .collect();
            let options = args.options(&argv)?;
            runtime()?.block_on(observe::run(options))
        }
        Command::DrainProxy(args) => {
            telemetry::init(args.log_format);
            let report = runtime()?.block_on(proxy_drain::drain(&args.options()))?;
            println!(
                "drained in {:.1} s; connections left: {}",
                report.drained_in.as_secs_f64(),
                report.connections_left
            );
            Ok(())
        }
        Command::Status { pin_dir, json } => {
            telemetry::init(LogFormat::Text);
            let dp = Dataplane::open_pinned(&pin_dir)?;
            let report = status::gather(&dp)
                .with_context(|| format!("cannot read the maps under {}", pin_dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", status::render_text(&report));
            }
            Ok(())
        }
        Command::Detach { pin_dir, wait } => {
            telemetry::init(LogFormat::Text);
            let removed = dataplane::detach(&pin_dir)?;
            if removed.is_empty() {
                println!("nothing to detach: {} does not exist", pin_dir.display());
            } else {
                for path in &removed {
                    println!("removed {}", path.display());
                }
                println!(
                    "detached: removed the programs and pins under {} ({} pins)",
                    pin_dir.display(),
                    removed.len()
                );
            }
            // The return path of `--upstream-source client`, whatever settings made it. The
            // datapath is gone either way; without CAP_NET_ADMIN (the cleanup DaemonSet drops
            // every capability) it can only be reported.
            match return_path::apply::remove() {
                Ok(pieces) => pieces.iter().for_each(|p| println!("removed {p}")),
                Err(e) => eprintln!("warning: the return path was not removed: {e:#}"),
            }
            if wait {
                println!("this node is clean; waiting for SIGTERM");
                std::io::Write::flush(&mut std::io::stdout())?;
                runtime()?.block_on(until_terminated())?;
            }
            Ok(())
        }
    }
}

/// Returns at SIGTERM or SIGINT.
async fn until_terminated() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// The daemon's and the collector's runtime: two workers are plenty for a node agent.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// eBPF traffic selector and redirector for L7 logs.
#[derive(Debug, Parser)]
#[command(
    name = "redirector",
    version,
    long_version = crate::build_info::long_version(),
    long_about = "Steers every new TCP connection to Kubernetes Services annotated \
                  projectcalico.org/l7-logging=true to the node-local Envoy, which forwards it \
                  and logs each request. Existing connections are never disturbed; if the proxy \
                  is down, traffic goes direct."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: attach the datapath and keep it in step with the Services.
    Run(Box<RunArgs>),
    /// Show what is selected, the proxy and the kernel counters, read from the pinned maps
    /// (works while the daemon is down).
    Status {
        /// Where the maps are pinned.
        #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
        pin_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove the programs, the pins and the return path: a clean uninstall. New connections
    /// go direct. Connections already proxied keep working with `--upstream-source node`; with
    /// `client` their replies no longer reach Envoy, so they end.
    Detach {
        /// Where the maps and links are pinned.
        #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
        pin_dir: PathBuf,
        /// After detaching, wait for SIGTERM instead of exiting: for the cleanup DaemonSet
        /// (deploy/cleanup/), whose pods must keep running once their node is clean.
        #[arg(long)]
        wait: bool,
    },
    /// Follow Envoy's access log and write aggregated L7 records (JSON lines), configured
    /// like the reference product's log collection (logIntervalSeconds,
    /// logRequestsPerInterval).
    Collect(Box<CollectArgs>),
    /// Take the node's Envoy out of service without failing a request: fail its readiness
    /// (`/healthcheck/fail`, so the daemon stops steering new connections to it), wait until
    /// nothing is steered to it any more, drain its listeners gracefully (keep-alive
    /// connections close after their current response, HTTP/2 ones get GOAWAY), and wait for
    /// its connections to finish. The proxy DaemonSet runs it as a pre-stop hook.
    DrainProxy(DrainProxyArgs),
    /// Show the requests this node's Envoy logged, named and filtered the way `hubble observe`
    /// does: the last ones (`--last`), then new ones as they come (`--follow`). A filter flag
    /// given twice matches either value; different filter flags must all match; `--not`
    /// before a filter flag excludes what it matches instead. Example: `redirector observe
    /// --to-service shop/web --http-status 5+ --not --http-path '^/health' --follow`.
    Observe(Box<ObserveArgs>),
    /// A terminal view of this node's requests, updated every second: per source,
    /// destination, method and path, Linkerd top's columns (count, best, worst, last, success
    /// rate) and p50/p95/p99, counted from when it starts. Keys: s changes the sort order, q
    /// quits.
    Top(Box<TopArgs>),
}

/// Where `observe` and `top` read requests from, and how they name both ends.
#[derive(Debug, Args)]
pub struct AccessLogArgs {
    /// Envoy's JSON access log (the collector's `--access-log`).
    #[arg(long, default_value = DEFAULT_ACCESS_LOG, value_name = "PATH")]
    pub access_log: PathBuf,
    /// Where the Services, EndpointSlices and Pods that name both ends come from.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Addresses only: no API, no services file.
    #[arg(long, conflicts_with_all = ["services_file", "kubeconfig"])]
    pub no_names: bool,
    /// How long to wait for the names before starting.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    pub sync_timeout: Duration,
}

impl AccessLogArgs {
    /// Where names come from; `None` with `--no-names`.
    pub fn names_source(&self) -> Option<Source> {
        (!self.no_names).then(|| self.source.source())
    }
}

/// `redirector top` flags.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// The access log and the names.
    #[command(flatten)]
    pub log: AccessLogArgs,
    /// The first sort order (the s key changes it).
    #[arg(long, value_enum, default_value_t = SortBy::Count)]
    pub sort: SortBy,
}

/// `redirector observe` flags. The filter flags are read in their order on the command line
/// (`--not` applies to the next one), by [`FilterSet::parse`].
#[derive(Debug, Args)]
pub struct ObserveArgs {
    /// The access log and the names.
    #[command(flatten)]
    pub log: AccessLogArgs,
    /// Only HTTP requests with this status, or status prefix: `404`, `5+` (every 5xx).
    #[arg(long, value_name = "CODE", help_heading = "Filters")]
    pub http_status: Vec<String>,
    /// Only HTTP requests with this method.
    #[arg(long, value_name = "METHOD", help_heading = "Filters")]
    pub http_method: Vec<String>,
    /// Only HTTP requests whose path (query string included) this regular expression matches.
    #[arg(long, value_name = "REGEX", help_heading = "Filters")]
    pub http_path: Vec<String>,
    /// Only requests from Pods whose name starts with NAME (as L7 records aggregate it: the
    /// owner's name), in NAMESPACE if given.
    #[arg(long, value_name = "[NAMESPACE/]NAME", help_heading = "Filters")]
    pub from_pod: Vec<String>,
    /// Only requests to Pods whose name starts with NAME, in NAMESPACE if given.
    #[arg(long, value_name = "[NAMESPACE/]NAME", help_heading = "Filters")]
    pub to_pod: Vec<String>,
    /// Only requests from endpoints of this Service (its EndpointSlices hold the client's
    /// address).
    #[arg(long, value_name = "[NAMESPACE/]NAME", help_heading = "Filters")]
    pub from_service: Vec<String>,
    /// Only requests to this Service (its ClusterIP or another of its addresses).
    #[arg(long, value_name = "[NAMESPACE/]NAME", help_heading = "Filters")]
    pub to_service: Vec<String>,
    /// Only requests with either end in this namespace.
    #[arg(long, value_name = "NAMESPACE", help_heading = "Filters")]
    pub namespace: Vec<String>,
    /// Exclude what the next filter flag matches.
    #[arg(long, action = clap::ArgAction::Count, help_heading = "Filters")]
    pub not: u8,
    /// How to print each request.
    #[arg(long, short, value_enum, default_value_t = Output::Compact)]
    pub output: Output,
    /// How many of the requests already logged to print first [default: 20, or 0 with
    /// --follow].
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Go on printing new requests until interrupted.
    #[arg(long, short)]
    pub follow: bool,
}

impl ObserveArgs {
    /// The options, with the filters read from `argv` (this process's arguments after
    /// `observe`, in order).
    pub fn options(&self, argv: &[String]) -> Result<ObserveOptions> {
        Ok(ObserveOptions {
            access_log: self.log.access_log.clone(),
            source: self.log.names_source(),
            sync_timeout: self.log.sync_timeout,
            filters: FilterSet::parse(argv)?,
            output: self.output,
            last: self.last.unwrap_or(if self.follow { 0 } else { 20 }),
            follow: self.follow,
        })
    }
}

/// `redirector drain-proxy` flags.
#[derive(Debug, Args)]
pub struct DrainProxyArgs {
    /// Envoy's admin address (envoy.yaml's `admin:`, on the node's loopback).
    #[arg(long, default_value = "127.0.0.1:9901", value_name = "ADDR")]
    pub admin: SocketAddr,
    /// How long new connections may still be steered to Envoy after its readiness fails: the
    /// daemon's `--proxy-check-interval` while it runs, its `--ready-lease` if it does not;
    /// so the lease.
    #[arg(long, default_value = "3s", value_name = "DURATION", value_parser = parse_duration_or_zero)]
    pub steering_grace: Duration,
    /// At most this long for Envoy's connections to close; what is still open then ends with
    /// Envoy. Keep the pod's terminationGracePeriodSeconds above the sum of the waits.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// After the last connection closed, wait this long for Envoy to write the last access log
    /// lines out (its `--file-flush-interval-msec`, and a little), so the collector reads them.
    #[arg(long, default_value = "1500ms", value_name = "DURATION", value_parser = parse_duration_or_zero)]
    pub log_flush_wait: Duration,
    /// Write this (empty) file when done: Envoy's own pre-stop hook waits for it.
    #[arg(long, value_name = "PATH")]
    pub done_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl DrainProxyArgs {
    /// The drain's options.
    pub fn options(&self) -> DrainOptions {
        DrainOptions {
            admin: self.admin,
            steering_grace: self.steering_grace,
            drain_timeout: self.drain_timeout,
            log_flush_wait: self.log_flush_wait,
            done_file: self.done_file.clone(),
        }
    }
}

/// Where Services (and EndpointSlices, and Pods for `collect`) come from: shared by `run` and
/// `collect`.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Read Services and EndpointSlices (and Pods, for `collect`, `observe` and `top`) from
    /// this YAML or JSON file instead of the Kubernetes API, and follow it; the way to run
    /// without a cluster.
    #[arg(long, value_name = "PATH", conflicts_with = "kubeconfig")]
    pub services_file: Option<PathBuf>,
    /// Kubeconfig to reach the API with (default: in-cluster config, or $KUBECONFIG).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

impl SourceArgs {
    /// The source these flags name.
    pub fn source(&self) -> Source {
        match &self.services_file {
            Some(path) => Source::File(path.clone()),
            None => Source::Kube(self.kubeconfig.clone()),
        }
    }
}

/// `redirector run` flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The node proxy's IPv4 address and port (Envoy's listener with the original_dst filter).
    /// An IPv6 `[IP]:PORT` here is the IPv6 proxy, as on an IPv6-only node.
    #[arg(
        long,
        value_name = "IP:PORT",
        required_unless_present_any = ["proxy6", "node_ips"]
    )]
    pub proxy: Option<SocketAddr>,
    /// The node proxy's IPv6 address and port.
    #[arg(long, value_name = "[IP]:PORT")]
    pub proxy6: Option<SocketAddr>,
    /// The node's addresses, comma-separated, as the DaemonSet gets them from the downward API
    /// (`status.hostIPs`): the proxy listens on the first IPv4 one and on the first IPv6 one,
    /// at --proxy-port. Instead of --proxy and --proxy6; works the same on IPv4-only,
    /// IPv6-only and dual-stack nodes.
    #[arg(
        long,
        value_name = "IP[,IP]",
        value_delimiter = ',',
        conflicts_with_all = ["proxy", "proxy6"]
    )]
    pub node_ips: Vec<IpAddr>,
    /// The proxy's first port, with --node-ips.
    #[arg(long, default_value_t = DEFAULT_PROXY_PORT, value_name = "PORT")]
    pub proxy_port: u16,
    /// How many consecutive ports the proxy listens on, from the --proxy (and --proxy6) port.
    /// Each selected destination is steered to one of them (by a hash of the destination), so
    /// a client's connections to different Services do not share one 4-tuple space: a fixed
    /// source port still reaches two Services, and ephemeral ports last as long as direct.
    #[arg(long, default_value_t = DEFAULT_PROXY_PORTS, value_name = "N")]
    pub proxy_ports: u16,
    /// Where Services come from.
    #[command(flatten)]
    pub source: SourceArgs,
    /// The cgroup v2 directory to attach to (default: the cgroup2 root, so every process on
    /// the node is covered).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Where to pin maps and links; state there survives restarts.
    #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,
    /// The annotation that selects a Service when it is "true".
    #[arg(long, default_value = DEFAULT_ANNOTATION, value_name = "KEY")]
    pub annotation: String,
    /// Never steer processes in this cgroup v2 directory or below it (e.g. the proxy's). The
    /// path is resolved again every --proxy-check-interval, so a re-created directory (a
    /// restarted container) stays excluded; for a proxy that restarts, --exclude-mark has no
    /// window at all.
    #[arg(long, value_name = "PATH")]
    pub exclude_cgroup: Vec<PathBuf>,
    /// Never steer processes running as this UID (e.g. the proxy's).
    #[arg(long, value_name = "UID")]
    pub exclude_uid: Vec<u32>,
    /// Never steer sockets whose SO_MARK matches (e.g. set by the proxy's upstream bind
    /// config); MASK defaults to all bits.
    #[arg(long, value_name = "MARK[/MASK]", value_parser = parse_mark)]
    pub exclude_mark: Option<(u32, u32)>,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// How often to check that the proxy is serving (e.g. 1s, 500ms): a connect to its
    /// listener and, with --proxy-admin, Envoy's `/ready`. A check that fails, or takes longer
    /// than the interval (at most 1 s), marks the proxy not ready at once: new connections go
    /// direct.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_duration)]
    pub proxy_check_interval: Duration,
    /// How long one good proxy check lets the kernel steer to the proxy. Each good check renews
    /// it; when nothing renews it (the daemon crashed, hangs, or was uninstalled) new
    /// connections go direct once it runs out. Must be longer than --proxy-check-interval.
    #[arg(long, default_value = "3s", value_name = "DURATION", value_parser = parse_duration)]
    pub ready_lease: Duration,
    /// Envoy's admin address (on the node's loopback, e.g. 127.0.0.1:9901): the proxy check
    /// then also asks `GET /ready`, which only a serving Envoy answers with 200 (a stopped or
    /// hung Envoy still completes TCP handshakes through the kernel's accept queue).
    #[arg(long, value_name = "IP:PORT")]
    pub proxy_admin: Option<SocketAddr>,
    /// On SIGTERM, keep checking the proxy this long before exiting, so that a proxy going
    /// down together with the daemon (a pod deleted or rolled) is marked not ready and traffic
    /// fails open instead of being steered to nothing.
    #[arg(long, default_value = "3s", value_name = "DURATION", value_parser = parse_duration_or_zero)]
    pub shutdown_grace: Duration,
    /// Capacity of the services map when it is created.
    #[arg(long, default_value_t = DEFAULT_SERVICES_CAPACITY, value_name = "N")]
    pub services_capacity: u32,
    /// The source address of the proxy's upstream connections: `node` (the node's address),
    /// or `client` (the client pod's, with Envoy's original_src filter): the daemon then
    /// installs, repairs and reports the return path (an nft table `inet l7_redirector`, an
    /// `ip rule` per family and a `local default dev lo` route), and reports the proxy not
    /// ready while it is missing, so traffic goes direct rather than hang.
    #[arg(long, value_enum, default_value_t = UpstreamSource::Node)]
    pub upstream_source: UpstreamSource,
    /// With `--upstream-source client`: the SO_MARK bits the proxy sets on its upstream
    /// sockets (deploy/envoy.yaml's `upstream_bind_config`), which tag their connections.
    #[arg(long, default_value = "0x1000", value_name = "MARK", value_parser = return_path::rules::parse_u32)]
    pub upstream_mark: u32,
    /// With `--upstream-source client`: the packet mark bit of replies to the proxy's
    /// upstream connections, which the `ip rule` routes to the proxy. The default avoids the
    /// bits kube-proxy, Calico, Cilium and Istio use.
    #[arg(long, default_value = "0x4", value_name = "BIT", value_parser = return_path::rules::parse_u32)]
    pub return_mark: u32,
    /// With `--upstream-source client`: the conntrack mark bit of the proxy's upstream
    /// connections.
    #[arg(long, default_value = "0x4", value_name = "BIT", value_parser = return_path::rules::parse_u32)]
    pub return_ct_mark: u32,
    /// With `--upstream-source client`: the routing table of the return path's local route.
    #[arg(long, default_value_t = return_path::rules::DEFAULT_RETURN_TABLE, value_name = "TABLE")]
    pub return_table: u32,
    /// With `--upstream-source client`: the priority of the return path's `ip rule`, before
    /// the main table's (32766).
    #[arg(long, default_value_t = return_path::rules::DEFAULT_RETURN_RULE_PRIORITY, value_name = "PRIORITY")]
    pub return_rule_priority: u32,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl RunArgs {
    /// The daemon's options; fails when the proxy flags do not name one proxy per family.
    pub fn options(&self) -> Result<RunOptions, ProxyConfigError> {
        let (proxy, proxy6) =
            resolve_proxies(self.proxy, self.proxy6, &self.node_ips, self.proxy_port)?;
        Ok(RunOptions {
            proxy,
            proxy6,
            proxy_ports: self.proxy_ports,
            source: self.source.source(),
            cgroup: self.cgroup.clone(),
            pin_dir: self.pin_dir.clone(),
            annotation: self.annotation.clone(),
            exclude_cgroups: self.exclude_cgroup.clone(),
            exclude_uids: self.exclude_uid.clone(),
            exclude_mark: self.exclude_mark,
            metrics_addr: self.metrics_addr,
            proxy_check_interval: self.proxy_check_interval,
            ready_lease: self.ready_lease,
            proxy_admin: self.proxy_admin,
            shutdown_grace: self.shutdown_grace,
            services_capacity: self.services_capacity,
            return_path: (self.upstream_source == UpstreamSource::Client).then_some(
                return_path::Settings {
                    upstream_mark: self.upstream_mark,
                    ct_mark: self.return_ct_mark,
                    fwmark: self.return_mark,
                    table: self.return_table,
                    priority: self.return_rule_priority,
                },
            ),
        })
    }
}

/// `redirector collect` flags.
#[derive(Debug, Args)]
pub struct CollectArgs {
    /// Envoy's JSON access log, followed from its end (through rotation and truncation).
    #[arg(long, default_value = DEFAULT_ACCESS_LOG, value_name = "PATH")]
    pub access_log: PathBuf,
    /// Where Services, EndpointSlices and Pods come from.
    #[command(flatten)]
    pub source: SourceArgs,
    /// A YAML file holding an `operator.tigera.io/v1` `ApplicationLayer` whose
    /// `spec.logCollection` configures collection; the flags below override it.
    #[arg(long, value_name = "FILE")]
    pub application_layer: Option<PathBuf>,
    /// `collectLogs`: Enabled, or Disabled to emit nothing [default: Enabled].
    #[arg(long, value_name = "Enabled|Disabled", value_parser = config::parse_collect_logs)]
    pub collect_logs: Option<CollectLogs>,
    /// `logIntervalSeconds`: how often to emit the aggregated records, at least 1
    /// [default: 5].
    #[arg(long, value_name = "SECONDS", value_parser = config::parse_interval)]
    pub log_interval_seconds: Option<NonZeroU32>,
    /// `logRequestsPerInterval`: at most this many distinct records per interval, the rest
    /// summed into one `unlogged` record; -1 for no cap [default: -1].
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = config::parse_request_limit
    )]
    pub log_requests_per_interval: Option<RequestLimit>,
    /// Felix's `L7LogsFileAggregationHTTPHeaderInfo`: IncludeL7HTTPHeaderInfo keeps
    /// `user_agent` and `type` in the records' key; ExcludeL7HTTPHeaderInfo writes them as `-`.
    #[arg(
        long,
        value_name = "IncludeL7HTTPHeaderInfo|ExcludeL7HTTPHeaderInfo",
        default_value = "ExcludeL7HTTPHeaderInfo",
        value_parser = config::parse_http_header_info
    )]
    pub l7_logs_file_aggregation_http_header_info: Inclusion,
    /// Felix's `L7LogsFileAggregationHTTPMethod`: `method` in the key, or `-`.
    #[arg(
        long,
        value_name = "IncludeL7HTTPMethod|ExcludeL7HTTPMethod",
        default_value = "IncludeL7HTTPMethod",
        value_parser = config::parse_http_method
    )]
    pub l7_logs_file_aggregation_http_method: Inclusion,
    /// Felix's `L7LogsFileAggregationServiceInfo`: `dest_service_name`, `_namespace` and
    /// `_port` in the key, or `-` and 0.
    #[arg(
        long,
        value_name = "IncludeL7ServiceInfo|ExcludeL7ServiceInfo",
        default_value = "IncludeL7ServiceInfo",
        value_parser = config::parse_service_info
    )]
    pub l7_logs_file_aggregation_service_info: Inclusion,
    /// Felix's `L7LogsFileAggregationDestinationInfo`: `dest_name_aggr`, `dest_namespace`,
    /// `dest_type` and `dest_port_num` in the key, or `-` and 0.
    #[arg(
        long,
        value_name = "IncludeL7DestinationInfo|ExcludeL7DestinationInfo",
        default_value = "IncludeL7DestinationInfo",
        value_parser = config::parse_destination_info
    )]
    pub l7_logs_file_aggregation_destination_info: Inclusion,
    /// Felix's `L7LogsFileAggregationSourceInfo`: `src_name_aggr`, `src_namespace` and
    /// `src_type` in the key, or `-` (records carry no source port, so IncludeL7SourceInfo and
    /// IncludeL7SourceInfoNoPort are the same).
    #[arg(
        long,
        value_name = "IncludeL7SourceInfoNoPort|IncludeL7SourceInfo|ExcludeL7SourceInfo",
        default_value = "IncludeL7SourceInfoNoPort",
        value_parser = config::parse_source_info
    )]
    pub l7_logs_file_aggregation_source_info: Inclusion,
    /// Felix's `L7LogsFileAggregationResponseCode`: `response_code` and `grpc_status` in the
    /// key, or `-`.
    #[arg(
        long,
        value_name = "IncludeL7ResponseCode|ExcludeL7ResponseCode",
        default_value = "IncludeL7ResponseCode",
        value_parser = config::parse_response_code
    )]
    pub l7_logs_file_aggregation_response_code: Inclusion,
    /// Felix's `L7LogsFileAggregationTrimURL`: IncludeL7FullURL (authority and path, cut to
    /// --l7-logs-file-aggregation-num-url-path segments, without query string unless that is
    /// negative), TrimURLQuery (authority and the whole path), TrimURLQueryAndPath (the
    /// authority) or ExcludeL7URL (`-`).
    #[arg(
        long,
        value_name = "IncludeL7FullURL|TrimURLQuery|TrimURLQueryAndPath|ExcludeL7URL",
        default_value = "IncludeL7FullURL",
        value_parser = config::parse_trim_url
    )]
    pub l7_logs_file_aggregation_trim_url: TrimUrl,
    /// Felix's `L7LogsFileAggregationNumURLPath`: with IncludeL7FullURL, at most this many
    /// path segments; negative keeps the path as sent, query string included.
    #[arg(
        long,
        value_name = "N",
        default_value = "5",
        allow_negative_numbers = true,
        value_parser = config::parse_num_url_path
    )]
    pub l7_logs_file_aggregation_num_url_path: i32,
    /// Felix's `L7LogsFileAggregationURLCharLimit`: at most this many bytes of `url` (the
    /// path is cut first, then the authority).
    #[arg(
        long,
        value_name = "N",
        default_value = "250",
        value_parser = config::parse_url_char_limit
    )]
    pub l7_logs_file_aggregation_url_char_limit: u32,
    /// Append the records to this file instead of writing them to stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// When more than this much of the log is waiting to be read, skip to its newest lines
    /// (and count what was skipped). Bytes, or with a KiB, MiB or GiB suffix.
    #[arg(long, default_value = "1MiB", value_name = "SIZE", value_parser = parse_size)]
    pub max_lag: u64,
    /// The records' `host` [default: $NODE_NAME, else the host name].
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// More addresses that belong to this host (its own interfaces' are always included).
    #[arg(long, value_name = "IP,...", value_delimiter = ',')]
    pub host_addresses: Vec<IpAddr>,
    /// How often to look for new lines in the access log.
    #[arg(long, default_value = "200ms", value_name = "DURATION", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How often to log a summary of what was read, skipped and emitted.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub summary_interval: Duration,
    /// Serve Prometheus metrics on this address (`/metrics`, and `/healthz`), such as
    /// `0.0.0.0:15020`; off by default. They are Istio's standard metrics with Istio's names,
    /// buckets and labels, updated per access log entry, so Istio's dashboards, alerts and
    /// Kiali's queries work unchanged: `istio_requests_total`,
    /// `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`
    /// for HTTP requests, and `istio_tcp_sent_bytes_total`, `istio_tcp_received_bytes_total`,
    /// `istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total` for other
    /// connections. Labels are `reporter="source"`, the source and destination workloads
    /// (owner name without the pod-template hash), namespaces, `app`/`version` labels and the
    /// destination Service (`destination_service` is `NAME.NAMESPACE.svc.cluster.local`),
    /// `request_protocol`, `response_code`, `response_flags` and the rest of Istio's set;
    /// what is not known is `unknown`. There is no path label unless
    /// --metrics-route-label. With --collect-logs Disabled nothing is read or served.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Add a `route` label to the HTTP metrics: the request path without query string, with
    /// numbers, UUIDs and long hexadecimal segments replaced by `{id}` (`/users/123` gives
    /// `/users/{id}`). Each route is a set of series of its own: mind --metrics-max-routes.
    #[arg(long, requires = "metrics_addr")]
    pub metrics_route_label: bool,
    /// With --metrics-route-label, at most this many distinct routes; the requests of later
    /// ones are counted with `route="other"` (and a warning says so, once).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub metrics_max_routes: usize,
    /// Serve a service graph page on this address (`/`, with its data on `/api/graph` and
    /// `/healthz`), such as `127.0.0.1:15021`; off by default. Nodes are workloads, Services
    /// and this host; each edge shows requests per second, error % (5xx or no response) and
    /// p95 duration over the last 60 s, and, when selected, an HTTP table (method, path,
    /// response code, count, mean and max duration) and its top URLs. The page refreshes every
    /// 2 s and loads nothing from elsewhere. Memory is bounded: at most 200 edges and 50 table
    /// rows per edge (the rest is counted as dropped, or in an `other` row).
    #[arg(long, value_name = "ADDR")]
    pub ui_addr: Option<SocketAddr>,
    /// Log format (the collector's own logs, on stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl CollectArgs {
    /// The settings the flags give (unset ones are left to the file and the defaults).
    pub fn flag_settings(&self) -> Settings {
        Settings {
            collect_logs: self.collect_logs,
            interval_seconds: self.log_interval_seconds,
            requests_per_interval: self.log_requests_per_interval,
        }
    }

    /// The settings in force: flags, then `--application-layer`, then defaults.
    pub fn log_collection(&self) -> Result<LogCollection> {
        let file = match &self.application_layer {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Some(config::parse_application_layer(&text).with_context(|| {
                    format!("{} is not a usable ApplicationLayer", path.display())
                })?)
            }
            None => None,
        };
        Ok(LogCollection {
            aggregation: self.aggregation(),
            ..config::resolve(self.flag_settings(), file)
        })
    }

    /// The `L7LogsFileAggregation*` settings.
    pub fn aggregation(&self) -> Aggregation {
        Aggregation {
            http_header_info: self.l7_logs_file_aggregation_http_header_info,
            http_method: self.l7_logs_file_aggregation_http_method,
            service_info: self.l7_logs_file_aggregation_service_info,
            destination_info: self.l7_logs_file_aggregation_destination_info,
            source_info: self.l7_logs_file_aggregation_source_info,
            response_code: self.l7_logs_file_aggregation_response_code,
            trim_url: self.l7_logs_file_aggregation_trim_url,
            num_url_path: self.l7_logs_file_aggregation_num_url_path,
            url_char_limit: self.l7_logs_file_aggregation_url_char_limit,
        }
    }

    /// The collector's options (reads `--application-layer`).
    pub fn options(&self) -> Result<CollectOptions> {
        Ok(CollectOptions {
            access_log: self.access_log.clone(),
            source: self.source.source(),
            log_collection: self.log_collection()?,
            output: self.output.clone(),
            max_lag: self.max_lag,
            node_name: self.node_name.clone(),
            host_addresses: self.host_addresses.clone(),
            poll_interval: self.poll_interval,
            summary_interval: self.summary_interval,
            metrics: self.metrics_addr.map(|addr| collector::MetricsOptions {
                addr,
                max_routes: self.metrics_route_label.then_some(self.metrics_max_routes),
            }),
            ui_addr: self.ui_addr,
        })
    }
}

/// `500ms`, `2s`, `1m`, or a bare number of seconds; at least 10ms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 2s or 1m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    let d = Duration::from_secs_f64(secs);
    if d < Duration::from_millis(10) {
        return Err(format!("{text:?} is too short (at least 10ms)"));
    }
    Ok(d)
}

/// Like [`parse_duration`], but `0` (or `0s`) is allowed: "not at all".
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    match text.trim().trim_end_matches(['s', 'm']) {
        "0" => Ok(Duration::ZERO),
        _ => parse_duration(text),
    }
}

/// `1048576`, `512KiB`, `1MiB`, `2GiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 65536, 512KiB or 1MiB"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use KiB, MiB or GiB)"
            ));
        }
    };
    match n.checked_mul(factor) {
        Some(0) => Err(format!("{text:?}: must be more than 0")),
        Some(size) => Ok(size),
        None => Err(format!("{text:?} is too large")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_duration_or_zero("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
        assert_eq!(
            parse_duration_or_zero("300ms"),
            Ok(Duration::from_millis(300))
        );
    }

    #[test]
    fn run_flags_follow_the_contract() {
        let cli = Cli::try_parse_from([
            "redirector",
            "run",
            "--proxy",
            "10.0.0.1:15001",
            "--services-file",
            "/s.yaml",
            "--exclude-uid",
            "1337",
            "--exclude-uid",
            "0",
            "--exclude-mark",
            "0x100/0xf00",
            "--exclude-cgroup",
            "/sys/fs/cgroup/envoy",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run expected");
        };
        let o = args.options().unwrap();
        assert_eq!(o.source, Source::File("/s.yaml".into()));
        assert_eq!(o.exclude_uids, [1337, 0]);
        assert_eq!(o.exclude_mark, Some((0x100, 0xf00)));
        assert_eq!(o.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        assert_eq!(o.annotation, DEFAULT_ANNOTATION);
        assert_eq!(o.proxy_check_interval, Duration::from_secs(1));
    }

    fn collect(args: &[&str]) -> Result<Box<CollectArgs>, clap::Error> {
        let mut argv = vec!["redirector", "collect"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Collect(args) => Ok(args),
            other => panic!("collect expected, got {other:?}"),
        }
    }

    #[test]
    fn collect_defaults() {
        let a = collect(&[]).unwrap();
        assert_eq!(a.access_log, PathBuf::from(DEFAULT_ACCESS_LOG));
        assert_eq!(a.max_lag, collector::follow::DEFAULT_MAX_LAG);
        assert_eq!(a.poll_interval, Duration::from_millis(200));
        let o = a.options().unwrap();
        assert_eq!(o.source, Source::Kube(None));
        assert_eq!(o.log_collection, LogCollection::default());
    }

    #[test]
    fn collect_aggregation_flags_have_felix_names_and_defaults() {
        assert_eq!(collect(&[]).unwrap().aggregation(), Aggregation::default());
        let a = collect(&[
            "--l7-logs-file-aggregation-http-header-info",
            "IncludeL7HTTPHeaderInfo",
            "--l7-logs-file-aggregation-http-method",
            "ExcludeL7HTTPMethod",
            "--l7-logs-file-aggregation-service-info",
            "ExcludeL7ServiceInfo",
            "--l7-logs-file-aggregation-destination-info",
            "ExcludeL7DestinationInfo",
            "--l7-logs-file-aggregation-source-info",
            "ExcludeL7SourceInfo",
            "--l7-logs-file-aggregation-response-code",
            "ExcludeL7ResponseCode",
            "--l7-logs-file-aggregation-trim-url",
            "TrimURLQueryAndPath",
            "--l7-logs-file-aggregation-num-url-path",
            "-1",
            "--l7-logs-file-aggregation-url-char-limit",
            "80",
        ])
        .unwrap();
        let exclude = Inclusion::Exclude;
        assert_eq!(
            a.options().unwrap().log_collection.aggregation,
            Aggregation {
                http_header_info: Inclusion::Include,
                http_method: exclude,
                service_info: exclude,
                destination_info: exclude,
                source_info: exclude,
                response_code: exclude,
                trim_url: TrimUrl::TrimQueryAndPath,
                num_url_path: -1,
                url_char_limit: 80,
            }
        );
        for bad in [
            &["--l7-logs-file-aggregation-trim-url", "TrimURL"][..],
            &["--l7-logs-file-aggregation-http-header-info", "Exclude"],
            &["--l7-logs-file-aggregation-url-char-limit", "-1"],
        ] {
            assert!(collect(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn collect_flags() {
        let a = collect(&[
            "--access-log",
            "/tmp/a.log",
            "--services-file",
            "/s.yaml",
            "--collect-logs",
            "Enabled",
            "--log-interval-seconds",
            "1",
            "--log-requests-per-interval",
            "-1",
            "--max-lag",
            "64KiB",
            "--host-addresses",
            "10.0.0.1,fd00::1",
            "--output",
            "/tmp/out.jsonl",
        ])
        .unwrap();
        let o = a.options().unwrap();
        assert_eq!(o.source, Source::File("/s.yaml".into()));
        assert_eq!(o.max_lag, 64 * 1024);
        assert_eq!(o.host_addresses.len(), 2);
        assert_eq!(o.log_collection.interval(), Duration::from_secs(1));
        assert_eq!(
            o.log_collection.requests_per_interval,
            RequestLimit::Unlimited
        );
        let a = collect(&["--log-requests-per-interval=1"]).unwrap();
        assert_eq!(
            a.log_collection()
                .unwrap()
                .requests_per_interval
                .max_records(),
            Some(1)
        );
    }

    #[test]
    fn invalid_collect_flags_are_rejected_clearly() {
        for bad in [
            &["--log-interval-seconds", "0"][..],
            &["--log-requests-per-interval", "0"],
            &["--log-requests-per-interval", "-2"],
            &["--collect-logs", "maybe"],
            &["--max-lag", "1TB"],
            &["--services-file", "a", "--kubeconfig", "b"],
        ] {
            let e = collect(bad).unwrap_err().to_string();
            assert!(e.contains("error"), "{bad:?}: {e}");
        }
        let e = collect(&["--log-interval-seconds", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 1"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1MB").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn a_proxy_is_required_and_sources_are_exclusive() {
        assert!(Cli::try_parse_from(["redirector", "run"]).is_err());
        assert!(
            Cli::try_parse_from([
                "redirector",
                "run",
                "--proxy",
                "10.0.0.1:1",
                "--services-file",
                "a",
                "--kubeconfig",
                "b"
            ])
            .is_err()
        );
    }

    fn run_options(args: &[&str]) -> Result<RunOptions, String> {
        let cli = Cli::try_parse_from(["redirector", "run"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        let Command::Run(run) = cli.command else {
            panic!("run expected");
        };
        run.options().map_err(|e| e.to_string())
    }

    #[test]
    fn node_ips_name_both_proxies_as_the_daemonset_passes_them() {
        let o = run_options(&["--node-ips", "10.0.0.5,fd00::5"]).unwrap();
        assert_eq!(o.proxy, Some("10.0.0.5:15001".parse().unwrap()));
        assert_eq!(o.proxy6, Some("[fd00::5]:15001".parse().unwrap()));
        let o = run_options(&["--node-ips=fd00::5", "--proxy-port=15100"]).unwrap();
        assert_eq!(
            (o.proxy, o.proxy6),
            (None, Some("[fd00::5]:15100".parse().unwrap()))
        );
        let e = run_options(&["--node-ips", "10.0.0.5", "--proxy", "10.0.0.5:15001"]).unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
        let e = run_options(&["--node-ips", "10.0.0.5:15001"]).unwrap_err();
        assert!(e.contains("--node-ips"), "{e}");
    }

    #[test]
    fn an_ipv6_only_node_needs_only_proxy() {
        let o = run_options(&["--proxy", "[fd00::5]:15001"]).unwrap();
        assert_eq!(
            (o.proxy, o.proxy6),
            (None, Some("[fd00::5]:15001".parse().unwrap()))
        );
    }
}
