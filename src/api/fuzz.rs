//! Entry points for the fuzz targets in `fuzz/`: every decoder a network peer reaches, with
//! the input as the peer sends it. Each returns nothing: a fuzz run looks for panics, hangs
//! and runaway memory, and an error is a fine answer to garbage.

use serde_json::{Value, json};

use super::http::{Query, check_query, decode_body};
use super::patch::{PatchType, apply};
use super::selector::{FieldSelector, LabelSelector};

/// A request body as JSON or YAML (the first byte picks which), as `decode_body` reads it.
pub fn body(data: &[u8]) {
    let (ct, rest) = match data.split_first() {
        Some((b, rest)) if b % 2 == 0 => ("application/yaml", rest),
        Some((_, rest)) => ("application/json", rest),
        None => return,
    };
    // Errors are the expected answer to most inputs.
    let _ = decode_body(ct, rest);
}

/// A protobuf request body (kubectl 1.32+ `create` generators send them).
pub fn protobuf(data: &[u8]) {
    // Errors are the expected answer to most inputs.
    let _ = super::protobuf::decode_body(data);
}

/// A patch of each type applied to a pod, the patch decoded as the API decodes it.
pub fn patch(data: &[u8]) {
    let Some((kind, rest)) = data.split_first() else { return };
    let kind = match kind % 4 {
        0 => PatchType::Json,
        1 => PatchType::Merge,
        2 => PatchType::Strategic,
        _ => PatchType::Apply,
    };
    let ct = if kind == PatchType::Apply { "application/apply-patch+yaml" } else { "application/json" };
    let Ok(patch) = decode_body(ct, rest) else { return };
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}],
                                 "env": [{"name": "A", "value": "1"}]}],
                 "volumes": [{"name": "v", "emptyDir": {}}]}});
    // Errors are the expected answer to most inputs.
    let _ = apply(kind, &pod, &patch, false);
}

/// Label and field selectors and the rest of a query string, matched against a pod.
pub fn query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let q = Query::parse(Some(text));
    // Errors are the expected answer to most inputs.
    let _ = check_query(&q);
    let pod: Value = json!({"metadata": {"name": "p", "namespace": "d", "labels": {"app": "web", "tier": "1"}},
        "spec": {"nodeName": "n"}, "status": {"phase": "Running"}});
    if let Ok(sel) = LabelSelector::parse(text) {
        sel.matches(&super::selector::labels_of(&pod));
    }
    if let Ok(sel) = FieldSelector::parse(text) {
        // Errors are the expected answer to most inputs.
        let _ = sel.check_supported("pods");
    }
}
