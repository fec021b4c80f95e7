//! Which Secrets, ConfigMaps and PersistentVolumeClaims a node may read: those that a pod
//! bound to it uses (upstream's graph-based node authorizer). A board that is stolen or
//! broken into then gives away only the secrets of the pods it runs, not the cluster's.
//!
//! Upstream keeps a graph from informers; here the pods of the object's namespace are read
//! from the store when a node asks, which is cheap at a fleet's size and never stale.

use serde_json::Value;

use super::Api;
use super::objects::to_object;
use super::resources;
use super::status::ApiError;

/// Names a pod uses, by kind: `("secrets" | "configmaps" | "persistentvolumeclaims", name)`.
pub fn references(pod: &Value) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut add = |kind: &'static str, name: Option<&Value>| {
        if let Some(n) = name.and_then(Value::as_str).filter(|n| !n.is_empty()) {
            out.push((kind, n.to_string()));
        }
    };
    let spec = &pod["spec"];
    for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        add("secrets", s.get("name"));
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        add("secrets", v.pointer("/secret/secretName"));
        add("configmaps", v.pointer("/configMap/name"));
        add("persistentvolumeclaims", v.pointer("/persistentVolumeClaim/claimName"));
        for source in v.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten() {
            add("secrets", source.pointer("/secret/name"));
            add("configmaps", source.pointer("/configMap/name"));
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for from in c["envFrom"].as_array().into_iter().flatten() {
                add("secrets", from.pointer("/secretRef/name"));
                add("configmaps", from.pointer("/configMapRef/name"));
            }
            for env in c["env"].as_array().into_iter().flatten() {
                add("secrets", env.pointer("/valueFrom/secretKeyRef/name"));
                add("configmaps", env.pointer("/valueFrom/configMapKeyRef/name"));
            }
        }
    }
    out
}

/// The node an object is bound to, for the objects a node may change only when bound to
/// it: a pod's `spec.nodeName`, a local volume's `kubernetes.io/hostname` node affinity.
pub fn bound_node(obj: &Value) -> Option<&str> {
    if let Some(node) = obj.pointer("/spec/nodeName").and_then(Value::as_str) {
        return Some(node);
    }
    let terms = obj.pointer("/spec/nodeAffinity/required/nodeSelectorTerms")?.as_array()?;
    let [term] = terms.as_slice() else { return None };
    term["matchExpressions"].as_array()?.iter().find_map(|e| match (e["key"].as_str(), e["values"].as_array()) {
        (Some("kubernetes.io/hostname"), Some(values)) if e["operator"] == "In" && values.len() == 1 => {
            values[0].as_str()
        }
        _ => None,
    })
}

/// Why a node may not create `obj` (upstream's NodeRestriction): only its own Node and Lease,
/// and only mirror pods bound to itself that use no Secret, ConfigMap, claim or
/// ServiceAccount. `None` when it may.
pub fn node_creation_refusal(me: &str, resource: &str, obj: &Value) -> Option<String> {
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    match resource {
        "nodes" | "leases" if name != me => Some(format!("a node may create only its own {resource} object, {me:?}")),
        "nodes" if !restricted_labels(obj).is_empty() => {
            Some(format!("a node may not set labels under {}", NODE_RESTRICTED_LABEL_PREFIXES.join(" or ")))
        }
        "nodes" | "leases" => None,
        "pods" => {
            if obj.pointer("/metadata/annotations/kubernetes.io~1config.mirror").is_none() {
                return Some("a node may create only mirror pods (annotation kubernetes.io/config.mirror)".into());
            }
            if bound_node(obj) != Some(me) {
                return Some(format!("a node may create mirror pods only bound to itself ({me:?})"));
            }
            if !references(obj).is_empty() {
                return Some("a mirror pod may not use Secrets, ConfigMaps or PersistentVolumeClaims".into());
            }
            let service_account = obj.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("");
            let projected_token = obj["spec"]["volumes"].as_array().into_iter().flatten().any(|v| {
                v.pointer("/projected/sources")
                    .and_then(Value::as_array)
                    .is_some_and(|s| s.iter().any(|s| s.get("serviceAccountToken").is_some()))
            });
            if !service_account.is_empty() || projected_token {
                return Some("a mirror pod may not use a ServiceAccount".into());
            }
            None
        }
        _ => Some(format!("a node may not create {resource}")),
    }
}

/// Label prefixes a node may not set on its own Node (upstream's NodeRestriction): they are
/// how workloads are steered to trusted nodes, so a node setting them could attract them.
const NODE_RESTRICTED_LABEL_PREFIXES: &[&str] = &["node-restriction.kubernetes.io/", "node-role.kubernetes.io/"];

fn restricted_labels(obj: &Value) -> Vec<(&String, &Value)> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| NODE_RESTRICTED_LABEL_PREFIXES.iter().any(|p| k.starts_with(p)))
        .collect()
}

/// Why node `me` may not write `new` over `old` (an update, patch or apply, decided on
/// the objects as they are written, so nothing that changed between the request's check
/// and its write slips through): a pod or local volume must be bound to `me` before and
/// after; a local volume may only lose finalizers; its own Node keeps its restricted
/// labels, pod ranges and provider ID. `None` when it may.
pub fn node_write_refusal(me: &str, kind: &str, old: &Value, new: &Value) -> Option<String> {
    match kind {
        "Pod" if bound_node(old) != Some(me) || bound_node(new) != Some(me) => {
            Some("the pod is not bound to this node".into())
        }
        "PersistentVolume" => {
            if bound_node(old) != Some(me) || bound_node(new) != Some(me) {
                return Some("the volume is not on this node".into());
            }
            let same = |p: &str| old.pointer(p) == new.pointer(p);
            if !same("/spec") || !same("/metadata/labels") || !same("/metadata/annotations") {
                return Some("a node may only release a local volume's finalizers".into());
            }
            None
        }
        "Node" => {
            if restricted_labels(old) != restricted_labels(new) {
                return Some(format!(
                    "a node may not set labels under {}",
                    NODE_RESTRICTED_LABEL_PREFIXES.join(" or ")
                ));
            }
            for field in ["/spec/podCIDR", "/spec/podCIDRs", "/spec/providerID"] {
                if old.pointer(field) != new.pointer(field) {
                    return Some(format!("a node may not change its own {}", &field[1..].replace('/', ".")));
                }
            }
            None
        }
        _ => None,
    }
}

impl Api {
    /// Applies what a node's request still needs checked against the stored object
    /// (see [`super::auth::NodeCheck`]); creations are checked on the body later.
    pub(super) fn check_node_object(
        &self,
        user: &super::auth::User,
        attrs: &super::auth::Attributes,
        target: &super::objects::Target,
        check: super::auth::NodeCheck,
    ) -> Result<(), ApiError> {
        use super::auth::NodeCheck;
        let Some(me) = super::auth::node_name(user) else { return Ok(()) };
        // `attrs.name` rather than the path's: a list or watch by `metadata.name` names one.
        match (check, target.namespace.as_deref(), attrs.name) {
            (NodeCheck::Nothing | NodeCheck::CreatedForNode, ..) => Ok(()),
            (NodeCheck::UsedByNodePods, Some(ns), Some(name)) => {
                self.check_node_reference(me, target.res.plural, ns, name)
            }
            (NodeCheck::BoundToNode, ..) => {
                let whole = super::objects::Target { sub: None, ..target.clone() };
                let obj = self.get_object(&whole)?;
                if super::auth::node_owns(me, bound_node(&obj)) {
                    return Ok(());
                }
                Err(super::auth::forbidden(user, attrs, ": the object is not bound to this node"))
            }
            (NodeCheck::UsedByNodePods, ..) => Err(super::auth::forbidden(user, attrs, ": name the object")),
        }
    }

    /// Refuses a node's creation of anything but its own Node, Lease or mirror pods.
    pub(super) fn check_node_creation(
        &self,
        user: &super::auth::User,
        attrs: &super::auth::Attributes,
        body: &Value,
    ) -> Result<(), ApiError> {
        let Some(me) = super::auth::node_name(user) else { return Ok(()) };
        match node_creation_refusal(me, attrs.resource, body) {
            Some(why) => Err(super::auth::forbidden(user, attrs, &format!(": {why}"))),
            None => Ok(()),
        }
    }

    /// Refuses `node` the object `kind/name` in `namespace` unless a pod bound to it uses it.
    pub(super) fn check_node_reference(
        &self,
        node: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        // Ingress certificates first (every node follows them, and a namespace's Ingresses
        // are fewer than its pods); the Secret's type, one read, before the Ingresses.
        if kind == "secrets" && self.is_tls_secret(namespace, name)? && self.ingress_uses_tls_secret(namespace, name)? {
            return Ok(());
        }
        let pods = resources::find("", "v1", "pods").ok_or_else(|| ApiError::internal("pods are not served"))?;
        let prefix = pods.list_prefix(Some(namespace));
        let mut after: Option<String> = None;
        loop {
            let (records, _) = self.store.list(&prefix, after.as_deref(), 500)?;
            for rec in &records {
                let pod = to_object(rec)?;
                if pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
                    && references(&pod).iter().any(|(k, n)| *k == kind && n == name)
                {
                    return Ok(());
                }
            }
            match records.last() {
                Some(last) if records.len() == 500 => after = Some(last.key.clone()),
                _ => break,
            }
        }
        Err(ApiError::forbidden(format!(
            "{kind} \"{name}\" is forbidden: User \"system:node:{node}\" cannot get resource \"{kind}\" in API group \"\" \
             in the namespace \"{namespace}\": no relationship found between node '{node}' and this object"
        )))
    }
}

impl Api {
    /// Whether the Secret is a certificate (`kubernetes.io/tls`): an Ingress author cannot
    /// hand nodes another kind of Secret (a token, a password) by naming it in `spec.tls`.
    fn is_tls_secret(&self, namespace: &str, name: &str) -> Result<bool, ApiError> {
        let Some(res) = resources::find("", "v1", "secrets") else { return Ok(false) };
        match self.store.get(&res.key(namespace, name))? {
            Some(rec) => Ok(to_object(&rec)?.pointer("/type").and_then(Value::as_str) == Some("kubernetes.io/tls")),
            None => Ok(false),
        }
    }

    /// Whether an Ingress of ours in `namespace` names the Secret as a TLS certificate:
    /// every node serves every such Ingress, so each may read the certificates (and only
    /// those, one at a time), as k3s's ingress controller can.
    fn ingress_uses_tls_secret(&self, namespace: &str, name: &str) -> Result<bool, ApiError> {
        let Some(ingresses) = resources::find("networking.k8s.io", "v1", "ingresses") else { return Ok(false) };
        let classes = match resources::find("networking.k8s.io", "v1", "ingressclasses") {
            Some(res) => {
                let (records, _) = self.store.list(&res.list_prefix(None), None, 1000)?;
                records.iter().map(|r| to_object(r).map(std::sync::Arc::new)).collect::<Result<Vec<_>, _>>()?
            }
            None => Vec::new(),
        };
        let ours = crate::control::ingress::our_classes(&classes);
        let prefix = ingresses.list_prefix(Some(namespace));
        let mut after: Option<String> = None;
        loop {
            let (records, _) = self.store.list(&prefix, after.as_deref(), 500)?;
            for rec in &records {
                let ing = to_object(rec)?;
                let ours = crate::control::ingress::is_ours(&ing, &ours);
                let names = ing.pointer("/spec/tls").and_then(Value::as_array).into_iter().flatten();
                if ours && names.filter_map(|t| t.get("secretName").and_then(Value::as_str)).any(|n| n == name) {
                    return Ok(true);
                }
            }
            match records.last() {
                Some(last) if records.len() == 500 => after = Some(last.key.clone()),
                _ => return Ok(false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_every_place_a_pod_names_a_secret_configmap_or_claim() {
        let pod = json!({"spec": {
            "imagePullSecrets": [{"name": "regcred"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "tls"}},
                {"name": "b", "configMap": {"name": "conf"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "d", "projected": {"sources": [{"secret": {"name": "p-s"}}, {"configMap": {"name": "p-c"}}]}},
            ],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
            "containers": [{"name": "c", "envFrom": [{"configMapRef": {"name": "env-all"}}],
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "one", "key": "k"}}},
                        {"name": "Y", "valueFrom": {"configMapKeyRef": {"name": "two", "key": "k"}}},
                        {"name": "Z", "value": "plain"}]}],
        }});
        let mut got = references(&pod);
        got.sort();
        let want: Vec<(&str, String)> = vec![
            ("configmaps", "conf".into()),
            ("configmaps", "env-all".into()),
            ("configmaps", "p-c".into()),
            ("configmaps", "two".into()),
            ("persistentvolumeclaims", "data".into()),
            ("secrets", "init-env".into()),
            ("secrets", "one".into()),
            ("secrets", "p-s".into()),
            ("secrets", "regcred".into()),
            ("secrets", "tls".into()),
        ];
        assert_eq!(got, want);
        assert!(references(&json!({})).is_empty());
    }

    #[test]
    fn nodes_create_only_their_own_node_lease_and_plain_mirror_pods() {
        let node = json!({"metadata": {"name": "board-2"}});
        assert_eq!(node_creation_refusal("board-2", "nodes", &node), None);
        assert!(node_creation_refusal("board-1", "nodes", &node).is_some());
        assert!(node_creation_refusal("board-1", "leases", &node).is_some());
        let mirror = json!({"metadata": {"name": "m", "annotations": {"kubernetes.io/config.mirror": "x"}},
            "spec": {"nodeName": "board-2", "containers": [{"name": "c", "image": "i"}]}});
        assert_eq!(node_creation_refusal("board-2", "pods", &mirror), None);
        assert!(node_creation_refusal("board-1", "pods", &mirror).is_some(), "bound to another node");
        let mut plain = mirror.clone();
        plain["metadata"]["annotations"] = json!({});
        assert!(node_creation_refusal("board-2", "pods", &plain).is_some(), "not a mirror pod");
        let mut with_secret = mirror.clone();
        with_secret["spec"]["volumes"] = json!([{"name": "s", "secret": {"secretName": "ca"}}]);
        assert!(node_creation_refusal("board-2", "pods", &with_secret).is_some());
        let mut with_sa = mirror.clone();
        with_sa["spec"]["serviceAccountName"] = json!("admin");
        assert!(node_creation_refusal("board-2", "pods", &with_sa).is_some());
        assert!(node_creation_refusal("board-2", "secrets", &node).is_some());
    }

    #[test]
    fn a_node_writes_only_what_stays_its_own() {
        let pod = |node: &str| json!({"spec": {"nodeName": node, "containers": []}, "status": {}});
        assert_eq!(node_write_refusal("a", "Pod", &pod("a"), &pod("a")), None);
        assert!(node_write_refusal("a", "Pod", &pod("b"), &pod("b")).is_some(), "another node's pod");
        assert!(node_write_refusal("a", "Pod", &pod("a"), &pod("b")).is_some(), "moved to another node");
        let pv = |node: &str, path: &str, fin: bool| {
            json!({"metadata": {"finalizers": if fin { json!(["x"]) } else { json!([]) }},
            "spec": {"hostPath": {"path": path}, "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}})
        };
        assert_eq!(node_write_refusal("a", "PersistentVolume", &pv("a", "/d", true), &pv("a", "/d", false)), None);
        assert!(node_write_refusal("a", "PersistentVolume", &pv("a", "/d", true), &pv("a", "/etc", true)).is_some());
        assert!(node_write_refusal("a", "PersistentVolume", &pv("a", "/d", true), &pv("b", "/d", true)).is_some());
        let node = |labels: Value, cidr: &str| json!({"metadata": {"labels": labels}, "spec": {"podCIDR": cidr}});
        let plain = node(json!({"disktype": "ssd"}), "10.42.1.0/24");
        assert_eq!(node_write_refusal("a", "Node", &plain, &node(json!({"disktype": "hdd"}), "10.42.1.0/24")), None);
        let role = node(json!({"node-role.kubernetes.io/control-plane": "true"}), "10.42.1.0/24");
        assert!(node_write_refusal("a", "Node", &plain, &role).is_some());
        assert!(node_write_refusal("a", "Node", &plain, &node(json!({"disktype": "ssd"}), "10.42.9.0/24")).is_some());
        let create = json!({"metadata": {"name": "a", "labels": {"node-restriction.kubernetes.io/x": "y"}}});
        assert!(node_creation_refusal("a", "nodes", &create).is_some());
    }

    #[test]
    fn pods_and_local_volumes_are_bound_to_their_node() {
        assert_eq!(bound_node(&json!({"spec": {"nodeName": "a"}})), Some("a"));
        let pv = json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["b"]}]}]}}}});
        assert_eq!(bound_node(&pv), Some("b"));
        assert_eq!(bound_node(&json!({"spec": {}})), None);
    }
}
