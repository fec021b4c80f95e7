//! A container's environment as the kubelet builds it: the image's `Env`, then `envFrom`
//! (ConfigMaps and Secrets, with their prefix), then `env` (values with `$(VAR)` expanded
//! from what came before, and `valueFrom` ConfigMap/Secret keys, the downward API's
//! `fieldRef` and `resourceFieldRef`). A missing ConfigMap, Secret or key that is not
//! `optional` is a `CreateContainerConfigError` with the upstream message.

use base64::Engine;
use serde_json::Value;

use crate::client::Client;
use crate::runtime::spec::{expand_vars, quantity};

/// Why a container cannot be configured (the `CreateContainerConfigError` message).
pub struct ConfigError(pub String);

async fn fetch(client: &Client, kind: &str, ns: &str, name: &str) -> Option<Value> {
    client.get(&format!("/api/v1/namespaces/{ns}/{kind}/{name}")).await.ok()
}

/// The string data of a ConfigMap or Secret (secrets decoded).
fn data_of(obj: &Value, secret: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(m) = obj["data"].as_object() {
        for (k, v) in m {
            let s = v.as_str().unwrap_or("");
            let text = if secret {
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            } else {
                s.to_string()
            };
            out.push((k.clone(), text));
        }
    }
    if secret && let Some(m) = obj["stringData"].as_object() {
        for (k, v) in m {
            out.push((k.clone(), v.as_str().unwrap_or("").to_string()));
        }
    }
    out
}

/// The value a downward-API `fieldRef` names.
pub fn field_ref(pod: &Value, path: &str) -> Option<String> {
    let meta = &pod["metadata"];
    let s = |v: &Value| v.as_str().map(str::to_string);
    if let Some(key) = path.strip_prefix("metadata.labels['").and_then(|r| r.strip_suffix("']")) {
        return s(&meta["labels"][key]);
    }
    if let Some(key) = path.strip_prefix("metadata.annotations['").and_then(|r| r.strip_suffix("']")) {
        return s(&meta["annotations"][key]);
    }
    match path {
        "metadata.name" => s(&meta["name"]),
        "metadata.namespace" => s(&meta["namespace"]),
        "metadata.uid" => s(&meta["uid"]),
        "metadata.labels" | "metadata.annotations" => {
            let m = meta[path.trim_start_matches("metadata.")].as_object().cloned().unwrap_or_default();
            Some(m.iter().map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join("\n"))
        }
        "spec.nodeName" => s(&pod["spec"]["nodeName"]),
        "spec.serviceAccountName" => s(&pod["spec"]["serviceAccountName"]),
        "status.hostIP" => s(&pod["status"]["hostIP"]),
        "status.podIP" => s(&pod["status"]["podIP"]),
        "status.hostIPs" => s(&pod["status"]["hostIP"]),
        "status.podIPs" => s(&pod["status"]["podIP"]),
        _ => None,
    }
}

/// The value a `resourceFieldRef` names, in units of its divisor (rounded up, as upstream).
pub fn resource_ref(container: &Value, resource: &str, divisor: &Value, node_allocatable: &Value) -> Option<String> {
    let (section, name) = resource.split_once('.')?;
    let cpu = name == "cpu";
    let value = quantity(&container["resources"][section][name], cpu)
        .or_else(|| if section == "limits" { quantity(&node_allocatable[name], cpu) } else { Some(0) })?;
    let div = if divisor.is_null() { if cpu { 1000 } else { 1 } } else { quantity(divisor, cpu)?.max(1) };
    Some(((value + div - 1) / div).to_string())
}

/// Builds the environment of `container` in `pod`.
pub async fn resolve(
    client: &Client,
    pod: &Value,
    container: &Value,
    image_env: &[String],
    service_env: &[(String, String)],
    node_allocatable: &Value,
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let mut env: Vec<(String, String)> =
        image_env.iter().filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()));
    }
    env.push(("HOSTNAME".into(), pod["metadata"]["name"].as_str().unwrap_or("").to_string()));
    // The Services' variables come before the container's own, which may use and override them.
    env.extend(service_env.iter().cloned());
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or("");
        let (kind, r, secret) = if from["configMapRef"].is_object() {
            ("configmaps", &from["configMapRef"], false)
        } else {
            ("secrets", &from["secretRef"], true)
        };
        let name = r["name"].as_str().unwrap_or("");
        match fetch(client, kind, ns, name).await {
            Some(obj) => env.extend(data_of(&obj, secret).into_iter().map(|(k, v)| (format!("{prefix}{k}"), v))),
            None if r["optional"].as_bool() == Some(true) => {}
            None => {
                let what = if secret { "secret" } else { "configmap" };
                return Err(ConfigError(format!("{what} \"{name}\" not found")));
            }
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or("").to_string();
        if let Some(v) = e["value"].as_str() {
            let expanded = expand_vars(v, &env);
            env.push((name, expanded));
            continue;
        }
        let from = &e["valueFrom"];
        let value = if let Some(f) = from["fieldRef"]["fieldPath"].as_str() {
            field_ref(pod, f)
        } else if let Some(res) = from["resourceFieldRef"]["resource"].as_str() {
            let target = match from["resourceFieldRef"]["containerName"].as_str().filter(|s| !s.is_empty()) {
                Some(other) => pod["spec"]["containers"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["name"] == other))
                    .unwrap_or(container),
                None => container,
            };
            resource_ref(target, res, &from["resourceFieldRef"]["divisor"], node_allocatable)
        } else {
            let (kind, r, secret) = if from["configMapKeyRef"].is_object() {
                ("configmaps", &from["configMapKeyRef"], false)
            } else if from["secretKeyRef"].is_object() {
                ("secrets", &from["secretKeyRef"], true)
            } else {
                continue;
            };
            let obj_name = r["name"].as_str().unwrap_or("");
            let key = r["key"].as_str().unwrap_or("");
            let optional = r["optional"].as_bool() == Some(true);
            let what = if secret { "secret" } else { "configmap" };
            match fetch(client, kind, ns, obj_name).await {
                Some(obj) => match data_of(&obj, secret).into_iter().find(|(k, _)| k == key) {
                    Some((_, v)) => Some(v),
                    None if optional => None,
                    None => return Err(ConfigError(format!("couldn't find key {key} in {what} {ns}/{obj_name}"))),
                },
                None if optional => None,
                None => return Err(ConfigError(format!("{what} \"{obj_name}\" not found"))),
            }
        };
        if let Some(v) = value {
            env.push((name, v));
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn downward_api_fields_and_resources() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}},
                         "spec": {"nodeName": "n1"}, "status": {"podIP": "10.42.0.5"}});
        assert_eq!(field_ref(&pod, "metadata.labels['app']").as_deref(), Some("web"));
        assert_eq!(field_ref(&pod, "spec.nodeName").as_deref(), Some("n1"));
        assert_eq!(field_ref(&pod, "status.podIP").as_deref(), Some("10.42.0.5"));
        let c = json!({"resources": {"limits": {"memory": "64Mi", "cpu": "250m"}}});
        assert_eq!(resource_ref(&c, "limits.memory", &json!("1Mi"), &json!({})).as_deref(), Some("64"));
        assert_eq!(resource_ref(&c, "limits.cpu", &Value::Null, &json!({})).as_deref(), Some("1"));
        assert_eq!(resource_ref(&c, "limits.cpu", &json!("1m"), &json!({})).as_deref(), Some("250"));
        let none = json!({});
        assert_eq!(
            resource_ref(&none, "limits.memory", &Value::Null, &json!({"memory": "1Gi"})).as_deref(),
            Some("1073741824")
        );
    }
}
