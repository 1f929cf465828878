//! Kubernetes as the daemon and the collector both read it, with no dependency on the kernel
//! side: the Service model ([`service`]), the objects known right now ([`store`]), and where
//! they come from, the API or a file ([`sources`]); and how their YAML is read ([`yaml`]).

pub mod service;
pub mod sources;
pub mod store;
pub mod yaml;
