//! Events the control loops record about the objects they act on (`kubectl describe` shows
//! them). Recording never blocks or fails a reconcile: an event that cannot be written is
//! only logged.

use std::sync::Arc;

use serde_json::{Value, json};

use super::conn::ApiConn;
use super::{now_rfc3339, s};

/// Writes Events in the background.
#[derive(Clone)]
pub struct Recorder {
    conn: Arc<ApiConn>,
}

impl Recorder {
    pub fn new(conn: Arc<ApiConn>) -> Recorder {
        Recorder { conn }
    }

    /// Records a `Normal` or `Warning` event about `obj` from `component`.
    pub fn emit(&self, component: &str, obj: &Value, kind: &str, reason: &str, message: &str) {
        let ev = event(component, obj, kind, reason, message);
        let ns = s(obj, "/metadata/namespace");
        let path = format!("/api/v1/namespaces/{}/events", if ns.is_empty() { "default" } else { ns });
        let conn = self.conn.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.create(&path, &ev).await {
                tracing::debug!(error = %format!("{e:#}"), "recording an event");
            }
        });
    }
}

/// The Event object (core/v1, as `kubectl describe` reads it).
pub fn event(component: &str, obj: &Value, kind: &str, reason: &str, message: &str) -> Value {
    let now = now_rfc3339();
    let name = s(obj, "/metadata/name");
    let ns = s(obj, "/metadata/namespace");
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{}", &suffix[..16]), "namespace": if ns.is_empty() { "default" } else { ns }},
        "involvedObject": {
            "apiVersion": obj["apiVersion"], "kind": obj["kind"], "namespace": ns, "name": name,
            "uid": obj["metadata"]["uid"], "resourceVersion": obj["metadata"]["resourceVersion"],
        },
        "reason": reason, "message": message, "type": kind,
        "source": {"component": component}, "reportingComponent": component,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    })
}
