//! `/openapi/v2` and `/openapi/v3`: documents built from the served resources, so that
//! `kubectl apply`/`edit` find the operations and know that the server validates fields
//! itself (`fieldValidation` among each write's parameters).
//!
//! Definitions carry `x-kubernetes-group-version-kind` and the patch merge keys; full
//! property schemas are not generated yet (kubectl falls back to its compiled-in types for
//! strategic-merge metadata, and validation is done server-side).

use serde_json::{Map, Value, json};

use super::resources::{RESOURCES, Resource};

fn def_name(r: &Resource) -> String {
    let pkg = match r.group {
        "" => "core",
        "coordination.k8s.io" => "coordination",
        "storage.k8s.io" => "storage",
        "networking.k8s.io" => "networking",
        g => g,
    };
    format!("io.k8s.api.{pkg}.{}.{}", r.version, r.kind)
}

fn gvk(r: &Resource) -> Value {
    json!([{"group": r.group, "version": r.version, "kind": r.kind}])
}

fn params(names: &[&str]) -> Vec<Value> {
    names.iter().map(|n| json!({"name": n, "in": "query", "type": "string", "uniqueItems": true})).collect()
}

fn paths_for(r: &Resource, v3: bool) -> Map<String, Value> {
    let base = if r.group.is_empty() { format!("/api/{}", r.version) } else { format!("/apis/{}/{}", r.group, r.version) };
    let coll = if r.namespaced { format!("{base}/namespaces/{{namespace}}/{}", r.plural) } else { format!("{base}/{}", r.plural) };
    let item = format!("{coll}/{{name}}");
    let write = ["dryRun", "fieldManager", "fieldValidation", "pretty"];
    let reference = if v3 { format!("#/components/schemas/{}", def_name(r)) } else { format!("#/definitions/{}", def_name(r)) };
    let op = |action: &str, id: &str, p: &[&str]| {
        let mut o = json!({
            "operationId": format!("{id}{}", r.kind),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk(r)[0],
            "responses": {"200": {"description": "OK", "schema": {"$ref": reference}}},
        });
        let mut ps = params(p);
        if v3 {
            for pv in &mut ps {
                pv["schema"] = json!({"type": "string"});
                if let Some(m) = pv.as_object_mut() {
                    m.remove("type");
                }
            }
        }
        o["parameters"] = json!(ps);
        o
    };
    let mut m = Map::new();
    m.insert(coll, json!({
        "get": op("list", "list", &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch", "timeoutSeconds"]),
        "post": op("post", "create", &write),
        "delete": op("deletecollection", "deleteCollection", &["labelSelector", "fieldSelector", "dryRun"]),
    }));
    m.insert(item.clone(), json!({
        "get": op("get", "read", &["pretty"]),
        "put": op("put", "replace", &write),
        "patch": op("patch", "patch", &["dryRun", "fieldManager", "fieldValidation", "force", "pretty"]),
        "delete": op("delete", "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"]),
    }));
    if r.status {
        m.insert(format!("{item}/status"), json!({"get": op("get", "readStatus", &[]), "put": op("put", "replaceStatus", &write), "patch": op("patch", "patchStatus", &write)}));
    }
    m
}

fn definitions() -> Map<String, Value> {
    let mut d = Map::new();
    for r in RESOURCES {
        d.insert(def_name(r), json!({
            "description": format!("{} is a {} {} object.", r.kind, r.group, r.version),
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "metadata": {"type": "object"}, "spec": {"type": "object"}, "status": {"type": "object"},
            },
            "x-kubernetes-group-version-kind": gvk(r),
        }));
    }
    d
}

/// The document at `/openapi/<rest...>`, if there is one.
pub fn serve(rest: &[&str]) -> Option<Value> {
    match rest {
        ["v2"] => {
            let mut paths = Map::new();
            for r in RESOURCES {
                paths.extend(paths_for(r, false));
            }
            Some(json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0+bramble"}, "paths": paths, "definitions": definitions()}))
        }
        ["v3"] => {
            let mut paths = Map::new();
            for (g, v) in super::resources::group_versions() {
                let key = if g.is_empty() { format!("api/{v}") } else { format!("apis/{g}/{v}") };
                paths.insert(key.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash=bramble{}", env!("CARGO_PKG_VERSION"))}));
            }
            Some(json!({"paths": paths}))
        }
        ["v3", tail @ ..] => {
            let (g, v) = match tail {
                ["api", v] => ("", *v),
                ["apis", g, v] => (*g, *v),
                _ => return None,
            };
            let mut paths = Map::new();
            let mut schemas = Map::new();
            let defs = definitions();
            for r in RESOURCES.iter().filter(|r| r.group == g && r.version == v) {
                paths.extend(paths_for(r, true));
                if let Some(d) = defs.get(&def_name(r)) {
                    schemas.insert(def_name(r), d.clone());
                }
            }
            if paths.is_empty() {
                return None;
            }
            Some(json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0+bramble"}, "paths": paths, "components": {"schemas": schemas}}))
        }
        _ => None,
    }
}
