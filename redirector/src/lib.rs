//! The redirector: selects Kubernetes Services for L7 logging and programs the kernel to steer
//! new connections to them through the node proxy.
//!
//! - [`cli`]: the command line contract.
//! - [`daemon`]: `redirector run`, wiring the pieces below together.
//! - [`sources`]: where Services come from (Kubernetes API or a file), as [`store::Change`]s.
//! - [`store`]: the Services and EndpointSlices currently known.
//! - [`cgroup`]: finding and naming cgroup v2 directories.
//! - [`fs_type`]: which file system a path is on (bpffs, cgroup2).
//! - [`dataplane`]: the only module that touches aya: load, pin, attach, maps.
//! - [`proxy_config`]: the pure translation of command-line choices into the kernel's `Config`.
//! - [`selection`]: which destinations to steer, from Services and EndpointSlices (pure).
//! - [`reconcile`]: the diff between desired and pinned, written to the maps.
//! - [`health`]: proxy readiness checks (fail-open when the proxy is down).
//! - [`metrics`]: Prometheus metrics, `/healthz`, `/readyz`.
//! - [`status`]: the `redirector status` report.
//! - [`collector`]: `redirector collect`, Envoy's access log aggregated into L7 records.

pub mod cgroup;
pub mod cli;
pub mod collector;
pub mod daemon;
pub mod dataplane;
pub mod fs_type;
pub mod health;
pub mod metrics;
pub mod proxy_config;
pub mod reconcile;
pub mod selection;
pub mod sources;
pub mod status;
pub mod store;
