//! The privileged tests: real eBPF programs in the real kernel, real Envoy, real `kubectl`,
//! in labs of network namespaces and child cgroups that each test builds and removes (see
//! `l7r_lab`). They need root, the kernel object (`cargo xtask build-ebpf`) and what
//! `cargo xtask setup` installs, so they are behind the `privileged` feature and run one at a
//! time: `sudo cargo xtask test`, or by hand
//! `cargo test -p redirector-tests --features privileged --test privileged -- --test-threads=1`.
//! A test that cannot run (not root, no kernel object, no Envoy) fails and says why.
//!
//! One module per area; filter by its name (`-- datapath::`):
//! - [`datapath`]: the kernel programs alone, driven in-process (these run on every kernel of
//!   the matrix, see `cargo xtask vm-test`);
//! - [`daemon_file`], [`daemon_kube`]: `redirector run` as a process, with a services file or
//!   against the Kubernetes API test server;
//! - [`e2e_envoy`], [`e2e_collector`]: the user guide's workflow with the real Envoy, and the
//!   L7 records of `redirector collect`;
//! - [`e2e_reliability`]: a steady load while Envoy or the daemon fails: what it costs;
//! - [`image`]: the container image `cargo xtask image` built, unpacked and run in a chroot;
//! - [`bench_smoke`]: `cargo xtask bench` in miniature, so it cannot rot.

mod bench_smoke;
mod daemon_file;
mod daemon_kube;
mod datapath;
mod e2e_collector;
mod e2e_envoy;
mod e2e_graph;
mod e2e_metrics;
mod e2e_observe;
mod e2e_protocols;
mod e2e_reliability;
mod image;
mod return_path;

/// The `redirector` binary built from this tree (see `src/bin/redirector-under-test.rs`).
const REDIRECTOR: &str = env!("CARGO_BIN_EXE_redirector-under-test");
/// The load generator of the reliability tests (see `src/bin/l7r-load.rs`).
const LOAD: &str = env!("CARGO_BIN_EXE_l7r-load");
/// The helper that loads and attaches the datapath in a process of its own.
const DATAPLANE_CTL: &str = env!("CARGO_BIN_EXE_dataplane-ctl");
