//! Which pod and container a streaming verb (`logs`, `exec`, `port-forward`) talks to:
//! `NAME` or `pod/NAME` is that pod; `deploy/NAME`, `svc/NAME` and the other workloads are
//! the most active pod their selector matches, chosen as kubectl chooses it; without `-c`
//! the container is the pod's `kubectl.kubernetes.io/default-container`, else its first.

use std::cmp::Reverse;

use anyhow::{Context, bail};
use serde_json::Value;

use super::Ctx;
use super::get::urlencode;

/// The annotation naming the container kubectl picks when `-c` is not given.
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// The pod a verb acts on, and the workload it was found through.
pub struct Chosen {
    /// The Pod object.
    pub pod: Value,
    /// How many pods the selector matched (1 when a pod was named).
    pub matched: usize,
    /// The Service named, when the user gave `svc/NAME` (port-forward maps its ports).
    pub service: Option<Value>,
}

impl Chosen {
    /// The pod's name.
    pub fn name(&self) -> &str {
        self.pod["metadata"]["name"].as_str().unwrap_or("")
    }

    /// The pod's namespace.
    pub fn namespace(&self) -> &str {
        self.pod["metadata"]["namespace"].as_str().unwrap_or("default")
    }
}

/// A label selector in the query syntax, from a workload's `spec.selector` (a
/// `LabelSelector`) or a Service's (a plain map); `None` when it selects nothing.
pub fn selector_of(obj: &Value) -> Option<String> {
    let sel = &obj["spec"]["selector"];
    let is_label_selector = sel.get("matchLabels").is_some() || sel.get("matchExpressions").is_some();
    let labels = if is_label_selector { &sel["matchLabels"] } else { sel };
    let mut parts: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => continue,
        });
    }
    (!parts.is_empty()).then(|| parts.join(","))
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// How kubectl ranks the pods of a workload for `logs` and `exec`: assigned before
/// unassigned, Running before Unknown before Pending, ready before not, more restarts
/// first, then the oldest. The best pod sorts first.
fn rank(pod: &Value) -> (Reverse<bool>, Reverse<i32>, Reverse<bool>, Reverse<i64>, String) {
    let assigned = pod["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
    let phase = match pod["status"]["phase"].as_str().unwrap_or("") {
        "Running" => 2,
        "Unknown" => 1,
        "Pending" => 0,
        _ => -1,
    };
    let restarts: i64 = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
        .sum();
    let created = pod["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string();
    (Reverse(assigned), Reverse(phase), Reverse(ready(pod)), Reverse(restarts), created)
}

/// The best of `pods` (see [`rank`]).
pub fn best(mut pods: Vec<Value>) -> Option<Value> {
    pods.retain(|p| p["metadata"]["deletionTimestamp"].is_null());
    pods.sort_by_key(rank);
    pods.into_iter().next()
}

/// Resolves `NAME`, `pod/NAME` or `TYPE/NAME` of a workload or Service to one pod.
pub async fn resolve(ctx: &Ctx, arg: &str) -> anyhow::Result<Chosen> {
    let Some((ty, name)) = arg.split_once('/') else {
        let pod = ctx.client.get(&format!("/api/v1/namespaces/{}/pods/{arg}", ctx.namespace)).await?;
        return Ok(Chosen { pod, matched: 1, service: None });
    };
    let r = ctx.discovery.find(ty)?;
    let obj = ctx.client.get(&r.item(Some(&ctx.namespace), name)).await?;
    if r.kind == "Pod" {
        return Ok(Chosen { pod: obj, matched: 1, service: None });
    }
    let Some(selector) = selector_of(&obj) else {
        bail!("cannot attach to {}/{name}: selector for {} not implemented or empty", r.display(), r.kind);
    };
    let list = ctx
        .client
        .get(&format!("/api/v1/namespaces/{}/pods?labelSelector={}", ctx.namespace, urlencode(&selector)))
        .await?;
    let pods = list["items"].as_array().cloned().unwrap_or_default();
    let matched = pods.len();
    let pod = best(pods).with_context(|| format!("no pods found for {}/{name} (selector {selector})", r.display()))?;
    let service = (r.kind == "Service").then_some(obj);
    Ok(Chosen { pod, matched, service })
}

fn names(pod: &Value, key: &str) -> Vec<String> {
    pod["spec"][key].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str().map(String::from)).collect()
}

/// The container to use: the one asked for, else the pod's default; with it, the notice
/// kubectl prints when it chose among several (`Defaulted container "web" out of: web,
/// side, init (init)`).
pub fn container(pod: &Value, asked: Option<&str>) -> anyhow::Result<(String, Option<String>)> {
    let containers = names(pod, "containers");
    let inits = names(pod, "initContainers");
    if let Some(c) = asked {
        return Ok((c.to_string(), None));
    }
    let annotated =
        pod["metadata"]["annotations"][DEFAULT_CONTAINER].as_str().filter(|c| containers.iter().any(|n| n == c));
    let Some(chosen) = annotated.map(String::from).or_else(|| containers.first().cloned()) else {
        bail!("pod {} has no containers", pod["metadata"]["name"].as_str().unwrap_or(""));
    };
    let notice = (containers.len() + inits.len() > 1 && annotated.is_none()).then(|| {
        let all: Vec<String> = containers.iter().cloned().chain(inits.iter().map(|i| format!("{i} (init)"))).collect();
        format!("Defaulted container \"{chosen}\" out of: {}", all.join(", "))
    });
    Ok((chosen, notice))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_from_workloads_and_services() {
        let deploy = json!({"spec": {"selector": {"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                 {"key": "canary", "operator": "DoesNotExist"}]}}});
        assert_eq!(selector_of(&deploy).unwrap(), "app=web,tier in (a,b),!canary");
        let svc = json!({"spec": {"selector": {"app": "web"}}});
        assert_eq!(selector_of(&svc).unwrap(), "app=web");
        assert_eq!(selector_of(&json!({"spec": {}})), None);
    }

    #[test]
    fn the_most_active_pod_wins() {
        let pod = |name: &str, phase: &str, ready: bool, node: &str| {
            json!({"metadata": {"name": name, "creationTimestamp": "2024-01-01T00:00:00Z"},
                   "spec": {"nodeName": node},
                   "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
        };
        let pods = vec![
            pod("pending", "Pending", false, ""),
            pod("running-unready", "Running", false, "n1"),
            pod("running-ready", "Running", true, "n1"),
        ];
        assert_eq!(best(pods).unwrap()["metadata"]["name"], "running-ready");
        let mut gone = pod("gone", "Running", true, "n1");
        gone["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:01Z");
        assert_eq!(best(vec![gone, pod("p", "Pending", false, "")]).unwrap()["metadata"]["name"], "p");
    }

    #[test]
    fn default_containers() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "web"}, {"name": "side"}],
            "initContainers": [{"name": "setup"}]}});
        let (c, notice) = container(&pod, None).unwrap();
        assert_eq!(c, "web");
        assert_eq!(notice.unwrap(), "Defaulted container \"web\" out of: web, side, setup (init)");
        assert_eq!(container(&pod, Some("side")).unwrap(), ("side".to_string(), None));
        let mut annotated = pod.clone();
        annotated["metadata"]["annotations"] = json!({DEFAULT_CONTAINER: "side"});
        assert_eq!(container(&annotated, None).unwrap(), ("side".to_string(), None));
        let single = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "main"}]}});
        assert_eq!(container(&single, None).unwrap(), ("main".to_string(), None));
    }
}
