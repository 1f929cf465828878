//! The redirector: selects Kubernetes Services for L7 logging and programs the kernel to steer
//! new connections to them through the node proxy; and, beside the proxy, turns its access log
//! into L7 records. `docs/design.md` describes the whole; this is where each part lives.
//!
//! The command line and the two long-running commands:
//! - [`cli`]: every subcommand's flags, turned into the options of the modules below.
//! - [`daemon`]: `redirector run`, wiring the daemon's pieces together.
//! - [`collector`]: `redirector collect`, Envoy's access log aggregated into L7 records. It
//!   depends on [`k8s`] only.
//! - [`observe`]: `redirector observe`, the same log as a live, filtered tail of requests;
//!   [`top`]: `redirector top`, the same as a terminal table updated every second.
//!
//! Kubernetes, with no kernel in sight:
//! - [`k8s`]: the Service model (front ends, endpoints, the annotation), the object store, and
//!   the sources (the API, or a file of manifests).
//!
//! The daemon's pure core, unit-tested without root:
//! - [`selection`]: which destinations to steer.
//! - [`reconcile`]: the diff between desired and pinned, written through a port.
//! - [`proxy_config`]: the command line's proxy and exclusions as the kernel's `Config`.
//!
//! Around it:
//! - [`dataplane`]: the only module that touches aya: load, pin, attach, read and write maps.
//! - [`health`]: proxy readiness checks, granting the kernel a readiness lease (fail-open when
//!   the proxy is down or nobody renews the lease); [`clock`]: the lease's clock.
//! - [`envoy_admin`]: the few calls to Envoy's admin API; [`proxy_drain`]: `redirector
//!   drain-proxy`, taking Envoy out of service before its pod stops (the proxy DaemonSet's
//!   pre-stop hook).
//! - [`metrics`]: the metrics registry, and the server of `/metrics`, `/healthz`, `/readyz`.
//! - [`status`]: the `redirector status` report.
//! - [`cgroup`], [`fs_type`]: finding cgroup v2 directories; which file system a path is on.
//! - [`exclusions`]: `--exclude-cgroup` followed by path, when a cgroup is re-created.
//! - [`telemetry`]: the process's own logs; [`build_info`]: version, source revision and the
//!   embedded kernel object's hash.

pub mod build_info;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod collector;
pub mod daemon;
pub mod dataplane;
pub mod envoy_admin;
pub mod exclusions;
pub mod fs_type;
pub mod health;
pub mod k8s;
pub mod metrics;
pub mod observe;
pub mod proxy_config;
pub mod proxy_drain;
pub mod reconcile;
pub mod return_path;
pub mod selection;
pub mod status;
pub mod telemetry;
pub mod top;
