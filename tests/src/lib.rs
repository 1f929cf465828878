//! Fixtures for the privileged tests: every test builds its own world and removes it on every
//! path (RAII guards), so tests are safe on a shared machine.
//!
//! - [`sys`]: root check, unique names, running commands.
//! - [`netns`]: network namespaces and running code inside one.
//! - [`cgroups`]: a child cgroup v2 tree, and creating sockets from inside one of its cgroups.
//! - [`backend`]: a line-echo server that says which peer address it saw.
//! - [`proxy`]: a minimal node proxy: accepts, reads `SO_ORIGINAL_DST`, forwards.
//! - [`client`]: a connected client socket with helpers.
//! - [`lab`]: the world: client, node and backend namespaces, cgroups, and the dataplane.

pub mod backend;
pub mod cgroups;
pub mod client;
pub mod lab;
pub mod netns;
pub mod proxy;
pub mod sys;
