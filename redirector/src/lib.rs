//! The redirector: selects Kubernetes Services for L7 logging and programs the kernel to steer
//! new connections to them through the node proxy.
//!
//! - [`cgroup`]: finding and naming cgroup v2 directories.
//! - [`dataplane`]: the only module that touches aya: load, pin, attach, maps.
//! - [`proxy_config`]: the pure translation of command-line choices into the kernel's `Config`.
//! - [`status`]: the `redirector status` report.

pub mod cgroup;
pub mod dataplane;
pub mod proxy_config;
pub mod status;
