//! The lab the privileged tests, the benchmarks and the demo run in: every user builds its own
//! world and removes it on every path (RAII guards), so they are safe on a shared machine.
//! Nothing here is attached outside the cgroups and network namespaces it creates.
//!
//! - [`sys`]: root check, unique names, running commands.
//! - [`netns`]: network namespaces and running code inside one.
//! - [`process`]: starting a program inside a lab namespace and cgroup.
//! - [`cgroups`]: a child cgroup v2 tree, and creating sockets from inside one of its cgroups.
//! - [`backend`]: a line-echo server that says which peer address it saw.
//! - [`proxy`]: a minimal node proxy: accepts, reads `SO_ORIGINAL_DST`, forwards.
//! - [`client`]: a connected client socket with helpers.
//! - [`daemon`]: a `redirector run` process under test.
//! - [`http`]: an HTTP/1.1 backend that records what it served, and a keep-alive client.
//! - [`envoy`]: the real Envoy as the node proxy, with `deploy/envoy.yaml`.
//! - [`manifests`]: Service manifests and the daemon's services file.
//! - [`load`]: a steady load from the client pod (new connections, or keep-alive ones), and
//!   what failed in it.
//! - [`protocols`]: real gRPC, WebSocket, TLS and CONNECT servers and clients.
//! - [`termination`]: the proxy pod's termination as `deploy/proxy-daemonset.yaml` and the
//!   kubelet do it (pre-stop hooks, SIGTERM, grace period).
//! - [`e2e`]: the end-to-end world: a Service behind a ClusterIP, Envoy and the daemon.
//! - [`lab`]: the world: client, node and backend namespaces, cgroups, and the dataplane.
//!
//! The demo (`src/bin/l7r-demo.rs`, run by `cargo xtask demo`) is built on the same pieces.

pub mod backend;
pub mod cgroups;
pub mod client;
pub mod daemon;
pub mod e2e;
pub mod envoy;
pub mod http;
pub mod lab;
pub mod load;
pub mod manifests;
pub mod netns;
pub mod process;
pub mod protocols;
pub mod proxy;
pub mod sys;
pub mod termination;
