//! Metrics: the registry the daemon updates and renders ([`registry`]), and the HTTP server
//! that publishes it with `/healthz` and `/readyz` ([`server`]).

mod registry;
mod server;

pub use self::{
    registry::Metrics,
    server::{KernelCounters, serve},
};
