//! ServiceAccount admission for pods, as upstream's plugin: a pod runs as a ServiceAccount
//! (`default` unless it names one), and unless either the pod or its ServiceAccount turns
//! `automountServiceAccountToken` off, it gets upstream's projected volume
//! `kube-api-access-<5 chars>`: a bound token that expires after 3607 s (the agent renews
//! it), the cluster CA from the `kube-root-ca.crt` ConfigMap and the namespace, mounted at
//! `/var/run/secrets/kubernetes.io/serviceaccount` in every container. This is what makes
//! `rest.InClusterConfig()` and `config.load_incluster_config()` work unchanged.
//!
//! Pure: the caller looks the ServiceAccount up and applies the result.

use serde_json::{Value, json};

/// Where in-cluster clients look for the token, the CA and the namespace.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The token's lifetime in the projected volume: upstream's 3607 s (an hour and a few
/// seconds, which marks it as a kubelet-managed token).
pub const TOKEN_SECONDS: i64 = 3607;
/// The volume name prefix upstream gives the projected volume.
const VOLUME_PREFIX: &str = "kube-api-access-";

/// The ServiceAccount `pod` runs as: its `spec.serviceAccountName`, else `default`.
pub fn service_account_name(pod: &Value) -> &str {
    match pod.pointer("/spec/serviceAccountName").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n,
        _ => pod.pointer("/spec/serviceAccount").and_then(Value::as_str).filter(|n| !n.is_empty()).unwrap_or("default"),
    }
}

/// Whether `pod` is a mirror pod (a node's static pod), which runs as no ServiceAccount.
pub fn is_mirror(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations/kubernetes.io~1config.mirror").is_some()
}

/// Admits a pod being created: names its ServiceAccount and, when a token is to be
/// mounted, adds the projected volume and its mounts. `sa` is the ServiceAccount found,
/// `None` when it does not exist (allowed only for `default`, which the controller is about
/// to make: the agent keeps asking for the token until it can have one). `suffix` names the
/// volume (five random characters). `Err` says why the pod is refused.
pub fn admit_pod(pod: &mut Value, sa: Option<&Value>, suffix: &str) -> Result<(), String> {
    if is_mirror(pod) {
        return Ok(());
    }
    let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
    let name = service_account_name(pod).to_string();
    if sa.is_none() && name != "default" {
        return Err(format!("error looking up service account {ns}/{name}: serviceaccount \"{name}\" not found"));
    }
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Err("the pod has no spec".into());
    };
    spec.insert("serviceAccountName".into(), json!(name));
    spec.insert("serviceAccount".into(), json!(name));
    let automount = match spec.get("automountServiceAccountToken").and_then(Value::as_bool) {
        Some(pod_says) => pod_says,
        None => sa.and_then(|sa| sa.get("automountServiceAccountToken")).and_then(Value::as_bool).unwrap_or(true),
    };
    if !automount {
        return Ok(());
    }
    let containers = ["initContainers", "containers", "ephemeralContainers"];
    let mounts_it = |c: &Value| {
        c["volumeMounts"].as_array().into_iter().flatten().any(|m| m["mountPath"].as_str() == Some(MOUNT_PATH))
    };
    // A pod that mounts something of its own there keeps it (upstream's rule).
    if containers.iter().any(|k| spec.get(*k).and_then(Value::as_array).into_iter().flatten().any(mounts_it)) {
        return Ok(());
    }
    let volume = format!("{VOLUME_PREFIX}{suffix}");
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    let Some(volumes) = volumes.as_array_mut() else { return Err("spec.volumes must be a list".into()) };
    volumes.push(json!({"name": volume, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": TOKEN_SECONDS, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}}));
    // Ephemeral containers are added later through their own subresource; upstream mounts
    // the token into init and app containers.
    for key in ["initContainers", "containers"] {
        for c in spec.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(c) = c.as_object_mut() else { continue };
            let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
            if let Some(mounts) = mounts.as_array_mut() {
                mounts.push(json!({"name": volume, "mountPath": MOUNT_PATH, "readOnly": true}));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({"metadata": {"name": "p", "namespace": "apps"},
               "spec": {"initContainers": [{"name": "i"}], "containers": [{"name": "a"}, {"name": "b", "volumeMounts": [{"name": "x", "mountPath": "/x"}]}]}})
    }

    #[test]
    fn a_pod_gets_the_default_account_and_the_token_volume() {
        let mut p = pod();
        admit_pod(&mut p, Some(&json!({})), "abcde").unwrap();
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(p["spec"]["serviceAccount"], "default");
        let vol = &p["spec"]["volumes"][0];
        assert_eq!(vol["name"], "kube-api-access-abcde");
        assert_eq!(vol["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(vol["projected"]["sources"][1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(
            vol["projected"]["sources"][2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        for c in [&p["spec"]["initContainers"][0], &p["spec"]["containers"][0], &p["spec"]["containers"][1]] {
            let last = c["volumeMounts"].as_array().unwrap().last().unwrap();
            assert_eq!(last, &json!({"name": "kube-api-access-abcde", "mountPath": MOUNT_PATH, "readOnly": true}));
        }
        assert_eq!(p["spec"]["containers"][1]["volumeMounts"][0]["name"], "x", "the pod's own mounts stay");
    }

    #[test]
    fn automount_is_honoured_pod_first_then_account() {
        let mut p = pod();
        admit_pod(&mut p, Some(&json!({"automountServiceAccountToken": false})), "abcde").unwrap();
        assert!(p["spec"].get("volumes").is_none(), "the account turned it off");
        let mut p = pod();
        p["spec"]["automountServiceAccountToken"] = json!(true);
        admit_pod(&mut p, Some(&json!({"automountServiceAccountToken": false})), "abcde").unwrap();
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1, "the pod overrides its account");
        let mut p = pod();
        p["spec"]["automountServiceAccountToken"] = json!(false);
        admit_pod(&mut p, Some(&json!({})), "abcde").unwrap();
        assert!(p["spec"].get("volumes").is_none());
    }

    #[test]
    fn named_accounts_must_exist_and_mirror_pods_are_left_alone() {
        let mut p = pod();
        p["spec"]["serviceAccountName"] = json!("builder");
        let err = admit_pod(&mut p, None, "abcde").unwrap_err();
        assert_eq!(err, "error looking up service account apps/builder: serviceaccount \"builder\" not found");
        let mut p = pod();
        admit_pod(&mut p, None, "abcde").unwrap();
        assert_eq!(p["spec"]["serviceAccountName"], "default", "default may be about to be made");
        let mut mirror = pod();
        mirror["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "x"});
        admit_pod(&mut mirror, None, "abcde").unwrap();
        assert!(mirror["spec"].get("serviceAccountName").is_none());
        // The deprecated field names the account when the new one is absent.
        let mut old = pod();
        old["spec"]["serviceAccount"] = json!("legacy");
        admit_pod(&mut old, Some(&json!({})), "abcde").unwrap();
        assert_eq!(old["spec"]["serviceAccountName"], "legacy");
    }

    #[test]
    fn a_pod_mounting_its_own_token_keeps_it() {
        let mut p = pod();
        p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "mine", "mountPath": MOUNT_PATH}]);
        admit_pod(&mut p, Some(&json!({})), "abcde").unwrap();
        assert!(p["spec"].get("volumes").is_none());
        assert_eq!(p["spec"]["serviceAccountName"], "default");
    }
}
