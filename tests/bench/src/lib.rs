//! The benchmarks behind `cargo xtask bench` (the `l7r-bench` binary; see
//! `docs/benchmarks.md`): the redirector against iptables and nftables, side by side, in the
//! same labs the privileged tests use.
//!
//! - [`stats`]: percentiles, medians, ratios and Markdown tables (pure).
//! - [`destinations`]: reproducible random selected destinations (pure).
//! - [`baselines`]: the iptables and nftables alternatives: rule text (pure) and loading it
//!   into a lab namespace.
//! - [`client`]: the measuring client loop and the long stream.
//! - [`sink`]: the backend that swallows the long stream.
//! - [`proxy`]: the Rust forwarding proxy, run as its own process.
//! - [`scenarios`]: unselected traffic, selected traffic, control plane, the 4-tuple space,
//!   and the cost of logging (direct vs steered through Envoy).
//! - [`machine`]: what the run ran on.
//! - [`report`]: raw samples as JSON, and the tables.
//! - [`cli`]: the `l7r-bench` command line, which runs the scenarios and writes the report.
//!
//! The benchmarks report; they never assert targets. They only fail when a measurement could
//! not be made or would be meaningless (a connection that did not take the path under test).

pub mod baselines;
pub mod cli;
pub mod client;
pub mod destinations;
pub mod machine;
pub mod proxy;
pub mod report;
pub mod scenarios;
pub mod sink;
pub mod stats;
