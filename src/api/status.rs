//! The one place errors become Kubernetes `Status` responses.
//!
//! Every handler returns `Result<_, ApiError>`; clients (kubectl, the Python client, Helm)
//! read `reason` and `code` to decide what to do, and show `message` to the user, so the
//! messages follow the upstream wording.

use serde_json::{Value, json};

/// An error answered as a `v1 Status`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// The Status's own list metadata: an expired `continue` answer carries the token that
    /// reads on without the snapshot there, as upstream's does.
    pub list_meta: Option<Value>,
}

/// One field-level cause of an `Invalid` error.
#[derive(Debug, Clone)]
pub struct Cause {
    pub field: String,
    pub reason: &'static str,
    pub message: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Cause {
        Cause { field: field.into(), reason: "FieldValueRequired", message: "Required value".into() }
    }
    pub fn invalid(field: impl Into<String>, value: impl std::fmt::Display, why: impl Into<String>) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {}: {}", quote(&value.to_string()), why.into()),
        }
    }
    pub fn unsupported(field: impl Into<String>, value: &str, allowed: &[&str]) -> Cause {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        Cause {
            field: field.into(),
            reason: "FieldValueNotSupported",
            message: format!("Unsupported value: \"{value}\": supported values: {}", allowed.join(", ")),
        }
    }
    pub fn immutable(field: impl Into<String>) -> Cause {
        Cause { field: field.into(), reason: "FieldValueInvalid", message: "field is immutable".into() }
    }
    pub fn duplicate(field: impl Into<String>, value: &str) -> Cause {
        Cause { field: field.into(), reason: "FieldValueDuplicate", message: format!("Duplicate value: \"{value}\"") }
    }
    /// `Too long: must have at most N bytes`.
    pub fn too_long(field: impl Into<String>, max: usize) -> Cause {
        Cause {
            field: field.into(),
            reason: "FieldValueTooLong",
            message: format!("Too long: must have at most {max} bytes"),
        }
    }
    pub fn forbidden(field: impl Into<String>, why: impl Into<String>) -> Cause {
        Cause { field: field.into(), reason: "FieldValueForbidden", message: format!("Forbidden: {}", why.into()) }
    }
}

fn quote(v: &str) -> String {
    if v.parse::<f64>().is_ok() || v == "true" || v == "false" { v.to_string() } else { format!("\"{v}\"") }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None, list_meta: None }
    }
    fn with_details(mut self, group: &str, kind: &str, name: &str) -> ApiError {
        self.details = Some(json!({"name": name, "group": group, "kind": kind}));
        self
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "Forbidden", message)
    }
    pub fn not_found_path(path: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
    }
    /// `<plural>[.group] "<name>" not found`
    pub fn not_found(plural: &str, group: &str, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{} \"{name}\" not found", qualified(plural, group)))
            .with_details(group, plural, name)
    }
    pub fn already_exists(plural: &str, group: &str, name: &str) -> ApiError {
        ApiError::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", qualified(plural, group)))
            .with_details(group, plural, name)
    }
    pub fn conflict(plural: &str, group: &str, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(plural, group)
            ),
        )
        .with_details(group, plural, name)
    }
    pub fn conflict_msg(message: impl Into<String>) -> ApiError {
        ApiError::new(409, "Conflict", message)
    }
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message)
    }
    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type})"
            ),
        )
    }
    pub fn not_acceptable(accept: &str) -> ApiError {
        ApiError::new(
            406,
            "NotAcceptable",
            format!("only the following media types are accepted: application/json (got {accept})"),
        )
    }
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body is too large: the limit is {limit} bytes"),
        )
    }
    /// 429: an eviction a PodDisruptionBudget does not allow now (clients retry).
    pub fn disruption_budget(pdb: &str, desired: i64, healthy: i64) -> ApiError {
        let mut e =
            ApiError::new(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget.");
        e.details = Some(json!({"causes": [{"reason": "DisruptionBudget",
            "message": format!("The disruption budget {pdb} needs {desired} healthy pods and has {healthy} currently")}]}));
        e
    }
    /// A `continue` token whose snapshot is older than the retained history. `inconsistent`
    /// is the token that lists on from the same key at the latest revision.
    pub fn continue_expired(inconsistent: String) -> ApiError {
        let mut e = ApiError::new(
            410,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. You can start a new \
             list without the continue parameter, or use the continue token in this response to retrieve the \
             remainder of the results. Continuing with the provided token results in an inconsistent list - objects \
             that were created, modified, or deleted between the time the first chunk was returned and now may show \
             up in the list.",
        );
        e.list_meta = Some(json!({"continue": inconsistent}));
        e
    }

    /// A list at an exact revision the store has not reached.
    pub fn too_large_resource_version(asked: u64, current: u64) -> ApiError {
        let message = format!("Too large resource version: {asked}, current: {current}");
        let mut e = ApiError::new(504, "Timeout", message.clone());
        e.details = Some(
            json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": message}], "retryAfterSeconds": 1}),
        );
        e
    }

    /// 413 with a message that says what to send instead.
    pub fn too_large_message(message: impl Into<String>) -> ApiError {
        ApiError::new(413, "RequestEntityTooLarge", message)
    }

    /// 429 with the seconds to wait, which the response also sends as `Retry-After`.
    pub fn too_many_requests(message: impl Into<String>, retry_after_seconds: u64) -> ApiError {
        let mut e = ApiError::new(429, "TooManyRequests", message);
        e.details = Some(json!({"retryAfterSeconds": retry_after_seconds}));
        e
    }

    /// The seconds a client should wait before retrying, when the error says.
    pub fn retry_after(&self) -> Option<u64> {
        self.details.as_ref()?.get("retryAfterSeconds")?.as_u64()
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }
    /// 422 for a well-formed request that cannot be carried out (a JSON patch whose `test`
    /// fails or whose path does not exist), as upstream answers it.
    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(422, "Invalid", message)
    }
    /// 507: the store's disk is full; reads go on, writes resume when space comes back.
    pub fn insufficient_storage(message: impl Into<String>) -> ApiError {
        ApiError::new(507, "InsufficientStorage", message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", format!("Internal error occurred: {}", message.into()))
    }
    /// `<Kind> "<name>" is invalid: <causes>` with the causes listed in `details`.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let summary: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let message = match summary.len() {
            1 => format!("{kind} \"{name}\" is invalid: {}", summary[0]),
            _ => format!("{kind} \"{name}\" is invalid: [{}]", summary.join(", ")),
        };
        let causes: Vec<Value> =
            causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect();
        ApiError {
            code: 422,
            reason: "Invalid",
            message,
            details: Some(json!({"name": name, "group": group, "kind": kind, "causes": causes})),
            list_meta: None,
        }
    }

    /// The `v1 Status` body.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        if let Some(m) = &self.list_meta {
            s["metadata"] = m.clone();
        }
        s
    }
}

fn qualified(plural: &str, group: &str) -> String {
    if group.is_empty() { plural.to_string() } else { format!("{plural}.{group}") }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        match e {
            // Expected while the disk is full, and said once per write: no error log flood.
            crate::store::StoreError::NoSpace { .. } => {
                tracing::debug!(error = %e, "write refused: the store's disk is full");
                ApiError::insufficient_storage(e.to_string())
            }
            // The disk filled (or the quota ran out) between the space check and the write.
            e if e.disk_full() => {
                tracing::warn!(error = %e, "write failed: the store's disk is full");
                ApiError::insufficient_storage(format!(
                    "{e}: free space on the store's file system; writes resume by themselves"
                ))
            }
            e => {
                tracing::error!(error = %e, "store error");
                ApiError::internal(e.to_string())
            }
        }
    }
}

/// A `Status` reporting success, as upstream answers some deletes.
pub fn success_status(details: Value) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_causes_like_upstream() {
        let e = ApiError::invalid("Pod", "", "p", vec![Cause::required("spec.containers")]);
        assert_eq!(e.code, 422);
        assert_eq!(e.message, "Pod \"p\" is invalid: spec.containers: Required value");
        let s = e.to_status();
        assert_eq!(s["details"]["causes"][0]["field"], "spec.containers");
        assert_eq!(s["reason"], "Invalid");
    }

    #[test]
    fn not_found_names_group() {
        assert_eq!(ApiError::not_found("deployments", "apps", "web").message, "deployments.apps \"web\" not found");
        assert_eq!(ApiError::not_found("pods", "", "x").message, "pods \"x\" not found");
    }
}
