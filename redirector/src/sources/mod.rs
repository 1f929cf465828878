//! Where Services and EndpointSlices come from: a Kubernetes API server, or a file of
//! manifests. Both send the same [`Change`](crate::store::Change)s down a channel.

pub mod file;
pub mod kube;
pub mod manifests;
