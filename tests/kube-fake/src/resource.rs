//! The resources the test API server stores, and how paths and objects name them.

use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery, events::v1 as events};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;

/// The resources the server stores. All are namespaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `v1` `Service` (`/api/v1/.../services`).
    Service,
    /// `v1` `Pod` (`/api/v1/.../pods`), which the collector watches to name request sources.
    Pod,
    /// `discovery.k8s.io/v1` `EndpointSlice`.
    EndpointSlice,
    /// The legacy `v1` `Event` (`/api/v1/.../events`).
    CoreEvent,
    /// `events.k8s.io/v1` `Event`, which kube-rs's `Recorder` writes.
    Event,
}

impl Resource {
    /// Every resource.
    pub const ALL: [Self; 5] = [
        Self::Service,
        Self::Pod,
        Self::EndpointSlice,
        Self::CoreEvent,
        Self::Event,
    ];

    /// The API group (empty for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Self::Service | Self::Pod | Self::CoreEvent => "",
            Self::EndpointSlice => "discovery.k8s.io",
            Self::Event => "events.k8s.io",
        }
    }

    /// `apiVersion` of its objects.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::Service | Self::Pod | Self::CoreEvent => "v1",
            Self::EndpointSlice => "discovery.k8s.io/v1",
            Self::Event => "events.k8s.io/v1",
        }
    }

    /// `kind` of its objects.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::Pod => "Pod",
            Self::EndpointSlice => "EndpointSlice",
            Self::CoreEvent | Self::Event => "Event",
        }
    }

    /// The plural name in URL paths.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Service => "services",
            Self::Pod => "pods",
            Self::EndpointSlice => "endpointslices",
            Self::CoreEvent | Self::Event => "events",
        }
    }

    /// Whether it has a `status` subresource: writes to the object itself keep its `status`,
    /// and only writes to `.../NAME/status` change it, as with the real server.
    pub fn has_status(self) -> bool {
        matches!(self, Self::Service | Self::Pod)
    }

    /// The resource served at `/api/v1/PLURAL` (group "") or `/apis/GROUP/VERSION/PLURAL`.
    pub fn from_path(group: &str, version: &str, plural: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.group() == group && version == "v1" && r.plural() == plural)
    }

    /// The resource of an object, from its `apiVersion` and `kind`.
    pub fn of(object: &Value) -> Option<Self> {
        let api_version = object.get("apiVersion")?.as_str()?;
        let kind = object.get("kind")?.as_str()?;
        Self::ALL
            .into_iter()
            .find(|r| r.api_version() == api_version && r.kind() == kind)
    }

    /// Rejects objects that do not decode as the typed resource, as the real server would, so
    /// readers of the store may rely on typed decoding.
    pub(super) fn validate(self, object: &Value) -> Result<(), ApiError> {
        fn decodes<T: DeserializeOwned>(object: &Value) -> Result<(), String> {
            serde_json::from_value::<T>(object.clone())
                .map(drop)
                .map_err(|e| e.to_string())
        }
        match self {
            Self::Service => decodes::<core::Service>(object),
            Self::Pod => decodes::<core::Pod>(object),
            Self::EndpointSlice => decodes::<discovery::EndpointSlice>(object),
            Self::CoreEvent => decodes::<core::Event>(object),
            Self::Event => decodes::<events::Event>(object),
        }
        .map_err(|e| ApiError::bad_request(format!("invalid {}: {e}", self.kind())))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn resources_from_paths_and_objects() {
        assert_eq!(
            Resource::from_path("", "v1", "services"),
            Some(Resource::Service)
        );
        assert_eq!(
            Resource::from_path("discovery.k8s.io", "v1", "endpointslices"),
            Some(Resource::EndpointSlice)
        );
        assert_eq!(
            Resource::from_path("events.k8s.io", "v1", "events"),
            Some(Resource::Event)
        );
        assert_eq!(Resource::from_path("", "v1", "pods"), Some(Resource::Pod));
        assert_eq!(Resource::from_path("", "v1", "nodes"), None);
        assert_eq!(Resource::from_path("apps", "v1", "pods"), None);
        assert_eq!(
            Resource::of(&json!({"apiVersion": "v1", "kind": "Service"})),
            Some(Resource::Service)
        );
        assert_eq!(
            Resource::of(&json!({"apiVersion": "v1", "kind": "Pod"})),
            Some(Resource::Pod)
        );
        assert_eq!(
            Resource::of(&json!({"apiVersion": "apps/v1", "kind": "ReplicaSet"})),
            None
        );
    }
}
