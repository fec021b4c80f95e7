//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and Kubernetes
//! strategic merge patch.
//!
//! Strategic merge differs from merge patch on lists: a list whose field has a patch merge
//! key (containers by `name`, ports by `containerPort`, ...) is merged element by element;
//! other lists are replaced. Directives: `$patch: delete|replace|merge` on maps and list
//! elements, `$deleteFromPrimitiveList/<field>`, `$setElementOrder/<field>`, `$retainKeys`.
//! The merge keys are the upstream `patchMergeKey` tags of the served types.

use serde_json::{Map, Value};

use super::status::ApiError;

/// Which PATCH dialect a request uses, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// The merge key of a list field, by field name. Field names are unambiguous enough across
/// the served types that the name alone decides (as in the upstream tags).
pub fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "volumeClaimTemplates"
        | "resourceClaims"
        | "readinessGates" => match field {
            "readinessGates" => "conditionType",
            _ => "name",
        },
        "ports" => "containerPort",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "taints" => "key",
        "addresses" => "type",
        _ => return None,
    })
}

/// Lists of the definition `definition` (an OpenAPI name) that a strategic merge replaces
/// whole although a list of that name elsewhere merges by key: an EndpointSlice's `ports`
/// (upstream's `listType=atomic`), which are not a container's.
pub fn atomic_lists(definition: &str) -> &'static [&'static str] {
    match definition {
        "io.k8s.api.discovery.v1.EndpointSlice" => &["ports"],
        _ => &[],
    }
}

/// Lists that merge as sets of primitives (strategic `merge` strategy without a key).
fn is_primitive_set(field: &str) -> bool {
    field == "finalizers"
}

/// Applies a patch of `kind` to `target`. `service_ports` tells whether a `ports` list is a
/// Service's (merged by `port`) rather than a container's.
pub fn apply(kind: PatchType, target: &Value, patch: &Value, service_ports: bool) -> Result<Value, ApiError> {
    match kind {
        PatchType::Json => apply_json_patch(target, patch),
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            let mut doc = target.clone();
            json_patch::merge(&mut doc, patch);
            Ok(doc)
        }
        PatchType::Strategic | PatchType::Apply => {
            let Value::Object(p) = patch else {
                return Err(ApiError::bad_request("a strategic merge patch must be a JSON object"));
            };
            let mut doc = target.clone();
            if target.get("kind").and_then(Value::as_str) == Some("EndpointSlice")
                && let Some(ports) = p.get("ports").and_then(Value::as_array)
            {
                // Replaced whole (see `atomic_lists`), not merged by a container port's key.
                let ports: Vec<Value> = ports.iter().filter(|x| !is_directive(x)).cloned().collect();
                let mut rest = p.clone();
                rest.remove("ports");
                rest.remove("$setElementOrder/ports");
                strategic_map(&mut doc, &rest, service_ports)?;
                if let Some(d) = doc.as_object_mut() {
                    d.insert("ports".into(), Value::Array(ports));
                }
                return Ok(doc);
            }
            strategic_map(&mut doc, p, service_ports)?;
            Ok(doc)
        }
    }
}

/// Most operations one JSON patch may have (upstream's `maxJSONPatchOperations`).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Applies a JSON patch (RFC 6902) one operation at a time, so that `copy` cannot grow the
/// document past the request size limit (upstream bounds the accumulated copy size the same
/// way): eighteen copies of a copy would otherwise double the object eighteen times.
fn apply_json_patch(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let ops = patch.as_array().ok_or_else(|| ApiError::bad_request("a JSON patch must be a list of operations"))?;
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(ApiError::too_large_message(format!(
            "the JSON patch has {} operations: the most allowed is {MAX_JSON_PATCH_OPERATIONS}",
            ops.len()
        )));
    }
    let mut doc = target.clone();
    let mut copied = 0usize;
    for op in ops {
        // The document only deepens where an operation puts a value: at most the path's
        // length plus the value's depth. Bounded per operation, copies into their own
        // descendants cannot double the depth until a walk of it overflows the stack.
        let path_len = op["path"].as_str().map_or(0, |p| p.matches('/').count());
        let placed = match op["op"].as_str() {
            Some("copy" | "move") => op["from"].as_str().and_then(|f| doc.pointer(f)),
            _ => op.get("value"),
        };
        if path_len + placed.map_or(0, depth) > super::http::MAX_BODY_DEPTH {
            return Err(ApiError::unprocessable(format!(
                "the JSON patch would nest the object deeper than {} levels",
                super::http::MAX_BODY_DEPTH
            )));
        }
        if op["op"] == "copy"
            && let Some(from) = op["from"].as_str().and_then(|f| doc.pointer(f))
        {
            copied += serde_json::to_vec(from).map(|v| v.len()).unwrap_or(0);
            if copied > super::http::MAX_BODY_BYTES {
                return Err(ApiError::too_large_message(format!(
                    "the JSON patch copies more than {} bytes: send the values themselves",
                    super::http::MAX_BODY_BYTES
                )));
            }
        }
        let one: json_patch::Patch = serde_json::from_value(Value::Array(vec![op.clone()]))
            .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
        json_patch::patch(&mut doc, &one)
            .map_err(|e| ApiError::unprocessable(format!("the JSON patch could not be applied: {e}")))?;
    }
    Ok(doc)
}

/// How deeply `v` nests (a scalar is 1), walked without recursion.
fn depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, d + 1))),
            Value::Object(m) => stack.extend(m.values().map(|i| (i, d + 1))),
            _ => {}
        }
    }
    deepest
}

fn strategic_map(target: &mut Value, patch: &Map<String, Value>, service_ports: bool) -> Result<(), ApiError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut p = patch.clone();
            p.remove("$patch");
            *target = Value::Object(p);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in patch {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (t.get_mut(field), v) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(pm) => {
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                strategic_map(slot, pm, service_ports)?;
                if slot.is_null() {
                    t.remove(k);
                }
            }
            Value::Array(pl) => {
                let key = if k == "ports" && service_ports { Some("port") } else { merge_key(k) };
                let slot = t.entry(k.clone()).or_insert(Value::Array(Vec::new()));
                match key {
                    Some(key) => merge_list(slot, pl, key, service_ports)?,
                    None if is_primitive_set(k) => {
                        let list = slot.as_array_mut().map(std::mem::take).unwrap_or_default();
                        let mut merged = list;
                        for x in pl {
                            if !merged.contains(x) {
                                merged.push(x.clone());
                            }
                        }
                        *slot = Value::Array(merged);
                    }
                    None => *slot = Value::Array(pl.iter().filter(|x| !is_directive(x)).cloned().collect()),
                }
                if let Some(Value::Array(order)) = patch.get(&format!("$setElementOrder/{k}")) {
                    order_list(slot, order, key);
                }
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    Ok(())
}

fn is_directive(v: &Value) -> bool {
    v.get("$patch").is_some()
}

fn merge_list(slot: &mut Value, patch: &[Value], key: &str, service_ports: bool) -> Result<(), ApiError> {
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    if patch.iter().any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace")) {
        *slot = Value::Array(patch.iter().filter(|p| !is_directive(p)).cloned().collect());
        return Ok(());
    }
    let list = slot.as_array_mut().expect("made an array above");
    for p in patch {
        let Some(pm) = p.as_object() else {
            list.push(p.clone());
            continue;
        };
        let Some(kv) = pm.get(key) else {
            return Err(ApiError::bad_request(format!(
                "map in a list with merge key `{key}` has no `{key}` field: {p}"
            )));
        };
        let pos = list.iter().position(|x| x.get(key) == Some(kv));
        match (pm.get("$patch").and_then(Value::as_str), pos) {
            (Some("delete"), Some(i)) => {
                list.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => strategic_map(&mut list[i], pm, service_ports)?,
            (_, None) => {
                let mut fresh = Value::Null;
                strategic_map(&mut fresh, pm, service_ports)?;
                list.push(fresh);
            }
        }
    }
    Ok(())
}

fn order_list(slot: &mut Value, order: &[Value], key: Option<&str>) {
    let Some(list) = slot.as_array_mut() else { return };
    let rank = |x: &Value| {
        let id = match key {
            Some(k) => x.get(k),
            None => Some(x),
        };
        order
            .iter()
            .position(|o| match key {
                Some(k) => o.get(k) == id,
                None => Some(o) == id,
            })
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(rank);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "busybox"}
        ]}}}})
    }

    #[test]
    fn strategic_merges_containers_by_name() {
        let p = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:2", "env": [{"name": "B", "value": "2"}]}]}}}});
        let out = apply(PatchType::Strategic, &deployment(), &p, false).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().unwrap().len(), 2);
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(cs[0]["ports"][0]["containerPort"], 80);
        assert_eq!(cs[0]["env"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn strategic_delete_and_replace_directives() {
        let p = json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}});
        let out = apply(PatchType::Strategic, &deployment(), &p, false).unwrap();
        assert_eq!(out["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 1);
        let p = json!({"spec": {"template": {"spec": {"containers": [{"name": "only", "image": "x"}, {"$patch": "replace"}]}}}});
        let out = apply(PatchType::Strategic, &deployment(), &p, false).unwrap();
        assert_eq!(out["spec"]["template"]["spec"]["containers"], json!([{"name": "only", "image": "x"}]));
        let p = json!({"spec": {"replicas": null}});
        let out = apply(PatchType::Strategic, &deployment(), &p, false).unwrap();
        assert!(out["spec"].get("replicas").is_none());
    }

    #[test]
    fn merge_patch_replaces_lists() {
        let p = json!({"spec": {"template": {"spec": {"containers": [{"name": "x", "image": "y"}]}}}});
        let out = apply(PatchType::Merge, &deployment(), &p, false).unwrap();
        assert_eq!(out["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn json_patch_copies_are_bounded() {
        let big = json!({"a": "x".repeat(300_000)});
        let copy = |n: usize| json!({"op": "copy", "from": "/a", "path": format!("/b{n}")});
        let ten: Vec<Value> = (0..12).map(copy).collect();
        assert_eq!(apply(PatchType::Json, &big, &json!(ten), false).unwrap_err().code, 413);
        let two: Vec<Value> = (0..2).map(copy).collect();
        assert!(apply(PatchType::Json, &big, &json!(two), false).is_ok());
        let many: Vec<Value> =
            (0..=MAX_JSON_PATCH_OPERATIONS).map(|_| json!({"op": "test", "path": "/a", "value": 1})).collect();
        assert_eq!(apply(PatchType::Json, &big, &json!(many), false).unwrap_err().code, 413);
    }

    #[test]
    fn json_patch_cannot_nest_the_object_without_bound() {
        let mut deep = json!(1);
        for _ in 0..90 {
            deep = json!([deep]);
        }
        let mut ops = vec![json!({"op": "add", "path": "/x", "value": deep})];
        let mut path = "/x".to_string();
        for _ in 0..20 {
            ops.push(json!({"op": "copy", "from": "/x", "path": format!("{path}/0")}));
            path.push_str(&"/0".repeat(90));
        }
        let e = apply(PatchType::Json, &json!({}), &json!(ops), false).unwrap_err();
        assert_eq!(e.code, 422, "{}", e.message);
        assert_eq!(depth(&json!({"a": [1, {"b": 2}]})), 4);
    }

    #[test]
    fn json_patch_ops_and_errors() {
        let p = json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]);
        assert_eq!(apply(PatchType::Json, &deployment(), &p, false).unwrap()["spec"]["replicas"], 3);
        let bad = json!([{"op": "test", "path": "/spec/replicas", "value": 9}]);
        assert_eq!(apply(PatchType::Json, &deployment(), &bad, false).unwrap_err().code, 422);
    }

    #[test]
    fn endpoint_slice_ports_are_replaced_whole() {
        let slice = json!({"kind": "EndpointSlice", "addressType": "IPv4", "ports": [{"name": "", "port": 80, "protocol": "TCP"}]});
        let p = json!({"ports": [{"port": 443}], "metadata": {"labels": {"a": "b"}}});
        let out = apply(PatchType::Strategic, &slice, &p, false).unwrap();
        assert_eq!(out["ports"], json!([{"port": 443}]));
        assert_eq!(out["metadata"]["labels"]["a"], "b");
        let out = apply(PatchType::Apply, &slice, &json!({"ports": null}), false).unwrap();
        assert!(out.get("ports").is_none());
    }

    #[test]
    fn service_ports_merge_by_port() {
        let svc = json!({"spec": {"ports": [{"port": 80, "name": "http"}]}});
        let p = json!({"spec": {"ports": [{"port": 443, "name": "https"}]}});
        let out = apply(PatchType::Strategic, &svc, &p, true).unwrap();
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
    }
}
