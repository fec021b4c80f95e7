//! `/openapi/v2` and `/openapi/v3`: real schemas generated from the same `k8s-openapi`
//! types we serve (through their `schemars` implementations, at development time: see
//! [`schemas`]), plus the operations of every served path. `kubectl apply`, `edit` and
//! `explain` read them; each write operation lists `fieldValidation`, which tells kubectl
//! the server validates fields itself.
//!
//! Documents are built per request and not cached: kubectl caches them on disk, and a board
//! should not hold megabytes of schema in memory for a request made once.

use serde_json::{Map, Value, json};

use super::patch;
use super::resources::{RESOURCES, Resource, group_versions};
use super::schemas;

/// The definition name upstream gives a kind (`io.k8s.api.apps.v1.Deployment`).
pub(super) fn def_name(r: &Resource) -> String {
    let pkg = match r.group {
        "" => "core",
        "coordination.k8s.io" => "coordination",
        "storage.k8s.io" => "storage",
        "networking.k8s.io" => "networking",
        "discovery.k8s.io" => "discovery",
        "rbac.authorization.k8s.io" => "rbac",
        g => g,
    };
    format!("io.k8s.api.{pkg}.{}.{}", r.version, r.kind)
}

fn gvk(r: &Resource) -> Value {
    json!({"group": r.group, "version": r.version, "kind": r.kind})
}

/// The definitions of `resources` (and all they reference), annotated with
/// group-version-kinds and patch merge keys.
fn definitions(resources: &[&Resource], v3: bool) -> Result<Map<String, Value>, String> {
    let all = schemas::load(v3)?;
    let roots: Vec<String> = resources.iter().map(|r| def_name(r)).collect();
    let mut defs = schemas::closure(&all, &roots);
    for r in resources {
        if let Some(d) = defs.get_mut(&def_name(r)).and_then(Value::as_object_mut) {
            d.insert("x-kubernetes-group-version-kind".into(), json!([gvk(r)]));
        }
    }
    for (name, def) in defs.iter_mut() {
        annotate_lists(def, patch::atomic_lists(name));
    }
    Ok(defs)
}

/// Marks list properties that merge by key, as upstream's `patchMergeKey`/`listMapKeys`,
/// and those of `atomic` as replaced whole (`x-kubernetes-list-type: atomic`).
fn annotate_lists(def: &mut Value, atomic: &[&str]) {
    let Some(props) = def.get_mut("properties").and_then(Value::as_object_mut) else { return };
    for (name, prop) in props.iter_mut() {
        let Some(p) = prop.as_object_mut() else { continue };
        if p.get("type").and_then(Value::as_str) != Some("array") {
            continue;
        }
        if atomic.contains(&name.as_str()) {
            p.insert("x-kubernetes-list-type".into(), json!("atomic"));
        } else if let Some(key) = patch::merge_key(name) {
            p.insert("x-kubernetes-patch-merge-key".into(), json!(key));
            p.insert("x-kubernetes-patch-strategy".into(), json!("merge"));
            p.insert("x-kubernetes-list-type".into(), json!("map"));
            p.insert("x-kubernetes-list-map-keys".into(), json!([key]));
        }
    }
}

fn strip_key(v: &mut Value, key: &str) {
    match v {
        Value::Object(m) => {
            m.remove(key);
            m.values_mut().for_each(|x| strip_key(x, key));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| strip_key(x, key)),
        _ => {}
    }
}

fn param(name: &str, v3: bool) -> Value {
    if v3 {
        json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
    } else {
        json!({"name": name, "in": "query", "type": "string", "uniqueItems": true})
    }
}

fn paths_for(r: &Resource, v3: bool) -> Map<String, Value> {
    let base =
        if r.group.is_empty() { format!("/api/{}", r.version) } else { format!("/apis/{}/{}", r.group, r.version) };
    let coll = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let item = format!("{coll}/{{name}}");
    let reference =
        if v3 { format!("#/components/schemas/{}", def_name(r)) } else { format!("#/definitions/{}", def_name(r)) };
    let response = if v3 {
        json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": reference}}}}})
    } else {
        json!({"200": {"description": "OK", "schema": {"$ref": reference}}})
    };
    let op = |action: &str, id: &str, names: &[&str]| {
        json!({
            "operationId": format!("{id}{}", r.kind),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk(r),
            "parameters": names.iter().map(|n| param(n, v3)).collect::<Vec<_>>(),
            "responses": response,
        })
    };
    let write = ["dryRun", "fieldManager", "fieldValidation", "pretty"];
    let mut m = Map::new();
    m.insert(coll, json!({
        "get": op("list", "list", &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch", "timeoutSeconds"]),
        "post": op("post", "create", &write),
        "delete": op("deletecollection", "deleteCollection", &["labelSelector", "fieldSelector", "dryRun"]),
    }));
    m.insert(
        item.clone(),
        json!({
            "get": op("get", "read", &["pretty"]),
            "put": op("put", "replace", &write),
            "patch": op("patch", "patch", &["dryRun", "fieldManager", "fieldValidation", "force", "pretty"]),
            "delete": op("delete", "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"]),
        }),
    );
    if r.status {
        m.insert(format!("{item}/status"), json!({"get": op("get", "readStatus", &[]), "put": op("put", "replaceStatus", &write), "patch": op("patch", "patchStatus", &write)}));
    }
    m
}

fn document(resources: &[&Resource], v3: bool) -> Result<Value, String> {
    let mut paths = Map::new();
    for r in resources {
        paths.extend(paths_for(r, v3));
    }
    let info = json!({"title": "Kubernetes", "version": format!("v1.33.0+bramble.{}", env!("CARGO_PKG_VERSION"))});
    let defs = definitions(resources, v3)?;
    Ok(if v3 {
        json!({"openapi": "3.0.0", "info": info, "paths": paths, "components": {"schemas": defs}})
    } else {
        // Swagger 2.0 has no `nullable`.
        let mut doc = json!({"swagger": "2.0", "info": info, "paths": paths, "definitions": defs});
        strip_key(&mut doc, "nullable");
        doc
    })
}

/// The document at `/openapi/<rest...>`, if there is one (an error when the stored
/// schemas cannot be read, which a test rules out).
pub fn serve(rest: &[&str]) -> Result<Option<Value>, String> {
    match rest {
        ["v2"] => document(&RESOURCES.iter().collect::<Vec<_>>(), false).map(Some),
        ["v3"] => {
            let mut paths = Map::new();
            for (g, v) in group_versions() {
                let key = if g.is_empty() { format!("api/{v}") } else { format!("apis/{g}/{v}") };
                paths.insert(key.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash=bramble{}", env!("CARGO_PKG_VERSION"))}));
            }
            Ok(Some(json!({"paths": paths})))
        }
        ["v3", tail @ ..] => {
            let (g, v) = match tail {
                ["api", v] => ("", *v),
                ["apis", g, v] => (*g, *v),
                _ => return Ok(None),
            };
            let resources: Vec<&Resource> = RESOURCES.iter().filter(|r| r.group == g && r.version == v).collect();
            if resources.is_empty() { Ok(None) } else { document(&resources, true).map(Some) }
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_documents_have_real_schemas_and_merge_keys() {
        let doc = serve(&["v3", "apis", "apps", "v1"]).unwrap().unwrap();
        let dep = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(dep["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
        assert_eq!(
            dep["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        let pod_spec = &doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"];
        assert_eq!(pod_spec["properties"]["containers"]["x-kubernetes-patch-merge-key"], "name");
        let patch_params =
            doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]["parameters"].to_string();
        assert!(patch_params.contains("fieldValidation"));
        let doc = serve(&["v3", "apis", "discovery.k8s.io", "v1"]).unwrap().unwrap();
        let slice = &doc["components"]["schemas"]["io.k8s.api.discovery.v1.EndpointSlice"];
        assert_eq!(slice["x-kubernetes-group-version-kind"][0]["kind"], "EndpointSlice");
        assert_eq!(slice["properties"]["ports"]["x-kubernetes-list-type"], "atomic");
        assert!(slice["properties"]["ports"].get("x-kubernetes-patch-merge-key").is_none());
    }

    #[test]
    fn v2_uses_definitions() {
        let doc = serve(&["v2"]).unwrap().unwrap();
        let pod = &doc["definitions"]["io.k8s.api.core.v1.Pod"];
        let spec = pod["properties"]["spec"].to_string();
        assert!(spec.contains("#/definitions/io.k8s.api.core.v1.PodSpec"), "{spec}");
    }
}
