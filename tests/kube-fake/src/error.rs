//! API errors, as the `Status` objects clients expect.

use serde_json::{Value, json};

use super::resource::Resource;

/// An API error, rendered as a `Status` object with this code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `Status.reason`, such as `NotFound`.
    pub reason: &'static str,
    /// Human-readable message, as kubectl prints it.
    pub message: String,
    /// `Status.details` (`name`, `kind`), where the error is about one object.
    pub details: Option<(String, String)>,
}

impl ApiError {
    fn about(
        code: u16,
        reason: &'static str,
        resource: Resource,
        name: &str,
        message: String,
    ) -> Self {
        Self {
            code,
            reason,
            message,
            details: Some((name.to_owned(), resource.plural().to_owned())),
        }
    }

    /// 404 for a missing object.
    pub fn not_found(resource: Resource, name: &str) -> Self {
        let message = format!("{} \"{name}\" not found", qualified(resource));
        Self::about(404, "NotFound", resource, name, message)
    }

    /// 404 for a path this server does not serve.
    pub fn no_route() -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".to_owned(),
            details: None,
        }
    }

    /// 409 for creating an object that exists.
    pub fn already_exists(resource: Resource, name: &str) -> Self {
        let message = format!("{} \"{name}\" already exists", qualified(resource));
        Self::about(409, "AlreadyExists", resource, name, message)
    }

    /// 409 for a write whose resourceVersion precondition is stale.
    pub fn conflict(resource: Resource, name: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            qualified(resource)
        );
        Self::about(409, "Conflict", resource, name, message)
    }

    /// 400 for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }

    /// 405 for a verb the resource does not support here.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self {
            code: 405,
            reason: "MethodNotAllowed",
            message: message.into(),
            details: None,
        }
    }

    /// 415 for a patch or body type this server does not speak.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self {
            code: 415,
            reason: "UnsupportedMediaType",
            message: message.into(),
            details: None,
        }
    }

    /// 410 for a watch from a resourceVersion older than the history kept: the client must
    /// list again.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self {
            code: 410,
            reason: "Expired",
            message: format!("too old resource version: {requested} ({oldest})"),
            details: None,
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((name, kind)) = &self.details {
            status["details"] = json!({"name": name, "kind": kind});
        }
        status
    }
}

/// `services` or `endpointslices.discovery.k8s.io`, as the server names resources in messages.
fn qualified(resource: Resource) -> String {
    match resource.group() {
        "" => resource.plural().to_owned(),
        group => format!("{}.{group}", resource.plural()),
    }
}
