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

impl Api {
    /// Refuses `node` the object `kind/name` in `namespace` unless a pod bound to it uses it.
    pub(super) fn check_node_reference(
        &self,
        node: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(), ApiError> {
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
}
