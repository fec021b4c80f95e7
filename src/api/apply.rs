//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! Field sets are kept in upstream's `FieldsV1` form, a tree whose keys are `f:<field>`,
//! `k:<json of list-map key>` (items of lists merged by key), `v:<json>` (set items) and `.`
//! (the item itself); an empty object is a leaf. Every write records which manager set which
//! fields (`operation: Update`); an apply (`operation: Apply`) is a manager's whole intent:
//! fields it set before and leaves out now are removed unless someone else owns them, and
//! changing a field another manager owns is a 409 conflict unless `force=true`.

use serde_json::{Map, Value, json};

use super::objects::now_rfc3339;
use super::patch::{self, PatchType};
use super::status::ApiError;

type Tree = Map<String, Value>;

/// Metadata fields the server owns; they are never tracked.
const UNTRACKED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

/// The field set of `v` (an object as written by a manager).
pub fn field_set(v: &Value) -> Tree {
    let mut t = Tree::new();
    if let Value::Object(m) = v {
        for (k, val) in m {
            if k == "apiVersion" || k == "kind" || k == "status" {
                continue;
            }
            if k == "metadata" {
                let mut mt = Tree::new();
                if let Value::Object(mm) = val {
                    for (mk, mv) in mm {
                        if !UNTRACKED_META.contains(&mk.as_str()) {
                            mt.insert(format!("f:{mk}"), Value::Object(fields_of(mk, mv)));
                        }
                    }
                }
                if !mt.is_empty() {
                    t.insert("f:metadata".into(), Value::Object(mt));
                }
                continue;
            }
            t.insert(format!("f:{k}"), Value::Object(fields_of(k, val)));
        }
    }
    t
}

fn fields_of(name: &str, v: &Value) -> Tree {
    let mut t = Tree::new();
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                t.insert(format!("f:{k}"), Value::Object(fields_of(k, val)));
            }
        }
        Value::Array(items) => {
            if let Some(key) = patch::merge_key(name) {
                for item in items {
                    let Some(kv) = item.get(key) else { continue };
                    let mut sub = fields_of("", item);
                    sub.insert(".".into(), json!({}));
                    t.insert(format!("k:{}", json!({key: kv})), Value::Object(sub));
                }
            } else if name == "finalizers" {
                for item in items {
                    t.insert(format!("v:{item}"), json!({}));
                }
            }
        }
        _ => {}
    }
    t
}

/// Every leaf path of a tree.
fn leaves(t: &Tree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for (k, v) in t {
        prefix.push(k.clone());
        match v.as_object() {
            Some(sub) if !sub.is_empty() => leaves(sub, prefix, out),
            _ => out.push(prefix.clone()),
        }
        prefix.pop();
    }
}

fn contains(t: &Tree, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else { return false };
    match t.get(first).and_then(Value::as_object) {
        Some(sub) => rest.is_empty() || contains(sub, rest),
        None => false,
    }
}

fn remove(t: &mut Tree, path: &[String]) {
    let Some((first, rest)) = path.split_first() else { return };
    if rest.is_empty() {
        t.remove(first);
        return;
    }
    if let Some(sub) = t.get_mut(first).and_then(Value::as_object_mut) {
        remove(sub, rest);
        if sub.is_empty() {
            t.remove(first);
        }
    }
}

fn union(a: &mut Tree, b: &Tree) {
    for (k, v) in b {
        match (a.get_mut(k).and_then(Value::as_object_mut), v.as_object()) {
            (Some(av), Some(bv)) => union(av, bv),
            _ => {
                a.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The value at a field-set path inside an object.
fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for p in path {
        if p == "." {
            continue;
        }
        if let Some(f) = p.strip_prefix("f:") {
            cur = cur.get(f)?;
        } else if let Some(k) = p.strip_prefix("k:") {
            let key: Value = serde_json::from_str(k).ok()?;
            let km = key.as_object()?;
            cur = cur.as_array()?.iter().find(|item| km.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))?;
        } else if let Some(v) = p.strip_prefix("v:") {
            let want: Value = serde_json::from_str(v).ok()?;
            return cur.as_array()?.iter().find(|x| **x == want);
        }
    }
    Some(cur)
}

/// Removes the field at `path` from an object.
fn remove_value(obj: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else { return };
    let (last, parent) = if last == "." {
        match parent.split_last() {
            Some((l, p)) => (l, p),
            None => return,
        }
    } else {
        (last, parent)
    };
    let mut cur = obj;
    for p in parent {
        let next = if let Some(f) = p.strip_prefix("f:") {
            cur.get_mut(f)
        } else if let Some(k) = p.strip_prefix("k:") {
            let Ok(key) = serde_json::from_str::<Value>(k) else { return };
            let Some(km) = key.as_object().cloned() else { return };
            cur.as_array_mut()
                .and_then(|a| a.iter_mut().find(|item| km.iter().all(|(kk, kv)| item.get(kk) == Some(kv))))
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        if let (Ok(key), Some(a)) = (serde_json::from_str::<Value>(k), cur.as_array_mut())
            && let Some(km) = key.as_object()
        {
            a.retain(|item| !km.iter().all(|(kk, kv)| item.get(kk) == Some(kv)));
        }
    } else if let Some(v) = last.strip_prefix("v:")
        && let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(v), cur.as_array_mut())
    {
        a.retain(|x| *x != want);
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: String,
    fields: Tree,
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e.get("manager").and_then(Value::as_str).unwrap_or("").into(),
            operation: e.get("operation").and_then(Value::as_str).unwrap_or("Update").into(),
            api_version: e.get("apiVersion").and_then(Value::as_str).unwrap_or("").into(),
            subresource: e.get("subresource").and_then(Value::as_str).unwrap_or("").into(),
            fields: e.get("fieldsV1").and_then(Value::as_object).cloned().unwrap_or_default(),
        })
        .collect()
}

fn store_entries(obj: &mut Value, list: Vec<Entry>) {
    let now = now_rfc3339();
    let encoded: Vec<Value> = list
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({"manager": e.manager, "operation": e.operation, "apiVersion": e.api_version, "time": now, "fieldsType": "FieldsV1", "fieldsV1": e.fields});
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if encoded.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(encoded));
        }
    }
}

/// Records that `manager` (an Update) set the fields that differ between `old` and `new`;
/// they leave the other managers' sets.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, api_version: &str, subresource: &str) {
    let mut list = old.map(entries).unwrap_or_default();
    let new_set = field_set(new);
    let changed = match old {
        // A create: the manager set every field there is.
        None => new_set,
        Some(o) => {
            let mut changed = Tree::new();
            let mut paths = Vec::new();
            leaves(&new_set, &mut Vec::new(), &mut paths);
            for p in paths.iter().filter(|p| value_at(o, p) != value_at(new, p)) {
                insert_path(&mut changed, p);
            }
            changed
        }
    };
    // Fields that disappeared are no longer anyone's.
    for e in list.iter_mut() {
        let mut owned = Vec::new();
        leaves(&e.fields, &mut Vec::new(), &mut owned);
        for p in owned {
            if value_at(new, &p).is_none() || (contains(&changed, &p) && e.manager != manager) {
                remove(&mut e.fields, &p);
            }
        }
    }
    if !changed.is_empty() {
        match list.iter_mut().find(|e| e.manager == manager && e.operation == "Update" && e.subresource == subresource)
        {
            Some(e) => union(&mut e.fields, &changed),
            None => list.push(Entry {
                manager: manager.into(),
                operation: "Update".into(),
                api_version: api_version.into(),
                subresource: subresource.into(),
                fields: changed,
            }),
        }
    }
    store_entries(new, list);
}

fn insert_path(t: &mut Tree, path: &[String]) {
    let Some((first, rest)) = path.split_first() else { return };
    let slot = t.entry(first.clone()).or_insert_with(|| json!({}));
    if let Some(sub) = slot.as_object_mut() {
        insert_path(sub, rest);
    }
}

fn display_path(p: &[String]) -> String {
    let mut s = String::new();
    for t in p {
        if let Some(f) = t.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = t.strip_prefix("k:") {
            s.push('[');
            s.push_str(k);
            s.push(']');
        } else if let Some(v) = t.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

/// Applies `config` (a manager's full intent) to `current`, returning the merged object
/// with updated managedFields, or a 409 listing the conflicting fields.
pub fn apply(
    current: &Value,
    config: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
) -> Result<Value, ApiError> {
    let mut list = entries(current);
    let new_set = field_set(config);
    let mut applied_paths = Vec::new();
    leaves(&new_set, &mut Vec::new(), &mut applied_paths);
    let mut conflicts = Vec::new();
    for e in list.iter().filter(|e| e.manager != manager) {
        for p in &applied_paths {
            if p.last().is_some_and(|l| l == ".") {
                continue;
            }
            if contains(&e.fields, p) && value_at(current, p) != value_at(config, p) {
                conflicts.push((e.manager.clone(), e.api_version.clone(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let lines: Vec<String> =
            conflicts.iter().map(|(m, v, p)| format!("conflict with \"{m}\" using {v}: {}", display_path(p))).collect();
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, v, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\" using {v}"), "field": display_path(p)}))
            .collect();
        let message = if lines.len() == 1 {
            format!("Apply failed with 1 conflict: {}", lines[0])
        } else {
            format!("Apply failed with {} conflicts: {}", lines.len(), lines.join("\n"))
        };
        return Err(ApiError {
            code: 409,
            reason: "Conflict",
            message,
            details: Some(json!({"causes": causes})),
            list_meta: None,
        });
    }
    for (m, _, p) in &conflicts {
        if let Some(e) = list.iter_mut().find(|e| &e.manager == m) {
            remove(&mut e.fields, p);
        }
    }
    let mut merged = patch::apply(PatchType::Apply, current, config, current.get("kind") == Some(&json!("Service")))?;
    // Fields this manager applied before and leaves out now go, unless someone else owns them.
    if let Some(prev) = list.iter().find(|e| e.manager == manager && e.operation == "Apply") {
        let mut before = Vec::new();
        leaves(&prev.fields, &mut Vec::new(), &mut before);
        for p in before {
            let kept = contains(&new_set, &p);
            let others =
                list.iter().any(|e| !(e.manager == manager && e.operation == "Apply") && contains(&e.fields, &p));
            if !kept && !others {
                let target = if p.last().is_some_and(|l| l == ".") { &p[..p.len() - 1] } else { &p[..] };
                remove_value(&mut merged, target);
            }
        }
    }
    list.retain(|e| !(e.manager == manager && e.operation == "Apply"));
    list.push(Entry {
        manager: manager.into(),
        operation: "Apply".into(),
        api_version: api_version.into(),
        subresource: String::new(),
        fields: new_set,
    });
    store_entries(&mut merged, list);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "web", "image": image}]}}}})
    }

    #[test]
    fn field_sets_use_list_map_keys() {
        let s = field_set(&deploy(1, "a"));
        let containers = &s["f:spec"]["f:template"]["f:spec"]["f:containers"];
        assert!(containers.get("k:{\"name\":\"web\"}").is_some(), "{containers}");
        assert!(s["f:metadata"].get("f:name").is_none());
    }

    #[test]
    fn apply_conflicts_with_another_manager_unless_forced() {
        let mut cur = deploy(1, "a");
        record_update(None, &mut cur, "kubectl-create", "apps/v1", "");
        let mut scaled = cur.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(Some(&cur), &mut scaled, "kubectl-scale", "apps/v1", "");
        let err = apply(&scaled, &deploy(2, "a"), "helm", false, "apps/v1").unwrap_err();
        assert_eq!(err.code, 409);
        assert!(err.message.contains("kubectl-scale"), "{}", err.message);
        assert!(err.message.contains(".spec.replicas"), "{}", err.message);
        let forced = apply(&scaled, &deploy(2, "a"), "helm", true, "apps/v1").unwrap();
        assert_eq!(forced["spec"]["replicas"], 2);
    }

    #[test]
    fn apply_removes_fields_the_manager_dropped() {
        let mut cfg = deploy(1, "a");
        cfg["metadata"]["labels"]["tier"] = json!("front");
        let first = apply(
            &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}),
            &cfg,
            "me",
            false,
            "apps/v1",
        )
        .unwrap();
        assert_eq!(first["metadata"]["labels"]["tier"], "front");
        let second = apply(&first, &deploy(1, "b"), "me", false, "apps/v1").unwrap();
        assert!(second["metadata"]["labels"].get("tier").is_none());
        assert_eq!(second["spec"]["template"]["spec"]["containers"][0]["image"], "b");
        assert_eq!(second["metadata"]["managedFields"][0]["operation"], "Apply");
    }
}
