//! Discovery: `/version`, `/api`, `/apis` and the per group-version resource lists that
//! kubectl and client libraries read before anything else.

use serde_json::{Value, json};

use super::resources::{RESOURCES, VERBS, group_versions};

/// The Kubernetes version we serve the API of; kubectl's dispatcher picks its binary from it.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "33";

pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0+bramble.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("linux/{}", std::env::consts::ARCH),
    })
}

pub fn core_versions(addr: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]})
}

/// Every group-version served: the stored resources' and `metrics.k8s.io`, which is
/// answered from the nodes ([`super::metrics`]).
fn all_group_versions() -> Vec<(&'static str, &'static str)> {
    let mut all = group_versions();
    all.push((super::metrics::GROUP, super::metrics::VERSION));
    all
}

fn group_entry(group: &str) -> Value {
    let versions: Vec<Value> = all_group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(Value::Null)})
}

pub fn group_list() -> Value {
    let mut groups: Vec<&str> = all_group_versions().into_iter().map(|(g, _)| g).filter(|g| !g.is_empty()).collect();
    groups.dedup();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups.iter().map(|g| group_entry(g)).collect::<Vec<_>>()})
}

pub fn group(group: &str) -> Option<Value> {
    if !all_group_versions().iter().any(|(g, _)| *g == group && !g.is_empty()) {
        return None;
    }
    let mut v = group_entry(group);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

/// The `APIResourceList` of one group-version, subresources included.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if (group, version) == (super::metrics::GROUP, super::metrics::VERSION) {
        return Some(super::metrics::resource_list());
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    let mut list = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        let mut entry = json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
            "verbs": VERBS, "storageVersionHash": "",
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        list.push(entry);
        if r.status {
            list.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
        if r.scale {
            list.push(json!({"name": format!("{}/scale", r.plural), "singularName": "", "namespaced": r.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
        if r.kind == "ServiceAccount" {
            list.push(json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true,
                "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}));
        }
        if r.kind == "Pod" {
            for (sub, kind, verbs, g, v) in [
                ("binding", "Binding", vec!["create"], "", "v1"),
                ("eviction", "Eviction", vec!["create"], "policy", "v1"),
                ("log", "Pod", vec!["get"], "", "v1"),
                ("exec", "PodExecOptions", vec!["create", "get"], "", "v1"),
                ("attach", "PodAttachOptions", vec!["create", "get"], "", "v1"),
                ("portforward", "PodPortForwardOptions", vec!["create", "get"], "", "v1"),
            ] {
                let mut e = json!({"name": format!("pods/{sub}"), "singularName": "", "namespaced": true, "kind": kind, "verbs": verbs});
                if !g.is_empty() {
                    e["group"] = json!(g);
                    e["version"] = json!(v);
                }
                list.push(e);
            }
        }
    }
    for r in super::resources::REVIEWS.iter().filter(|r| r.group == group && r.version == version) {
        list.push(json!({"name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
                         "kind": r.kind, "verbs": ["create"]}));
    }
    if list.is_empty() {
        return None;
    }
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}))
}
