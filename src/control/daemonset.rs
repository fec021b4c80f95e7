//! The DaemonSet controller: one pod on every node that the template's nodeSelector,
//! required node affinity and tolerations admit (with upstream's automatic tolerations),
//! following nodes as they join, leave or change labels and taints. Pods are pinned with a
//! `metadata.name` node-affinity term and placed by the scheduler, as upstream does.
//! RollingUpdate replaces old pods at most `maxUnavailable` at a time; OnDelete waits for
//! the user. Template history is kept in ControllerRevisions.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::conn::revision;
use super::history::{self, HASH_LABEL};
use super::queue::WorkQueue;
use super::replicaset::pod_from_template;
use super::scheduler::{selector_matches, tolerates};
use super::{
    Ctx, Writes, controller_of, deleting, int, int_or_percent, now_secs, owner_ref, pod_available, pod_ready_since, s,
};

const COMPONENT: &str = "daemonset-controller";

/// The tolerations upstream adds to every daemon pod, so node trouble does not evict it.
pub fn automatic_tolerations(host_network: bool) -> Vec<Value> {
    let mut t = vec![
        json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}),
    ];
    if host_network {
        t.push(json!({"key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"}));
    }
    t
}

/// The pod template as daemon pods get it: the automatic tolerations added.
fn daemon_template(ds: &Value) -> Value {
    let mut t = ds["spec"]["template"].clone();
    let host_network = t["spec"]["hostNetwork"] == true;
    let mut tolerations = t["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    for auto in automatic_tolerations(host_network) {
        if !tolerations.iter().any(|x| x["key"] == auto["key"] && x["effect"] == auto["effect"]) {
            tolerations.push(auto);
        }
    }
    t["spec"]["tolerations"] = json!(tolerations);
    t
}

/// Whether a daemon pod belongs on `node`.
pub fn should_run(template: &Value, node: &Value) -> bool {
    let pod = json!({"spec": template["spec"]});
    let tolerations = template["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    let taints_ok = node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|taint| !matches!(s(taint, "/effect"), "NoSchedule" | "NoExecute") || tolerates(&tolerations, taint));
    taints_ok && selector_matches(&pod, node)
}

/// The node a daemon pod is for: its `nodeName`, or the node its affinity pins it to.
fn pod_node(pod: &Value) -> String {
    let bound = s(pod, "/spec/nodeName");
    if !bound.is_empty() {
        return bound.to_string();
    }
    pod.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields/0/values/0")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// What one reconcile decides: nodes that need a pod, pods to delete.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create_on: Vec<String>,
    pub delete: Vec<String>,
}

/// Decides which nodes get a pod and which pods go: pods on nodes that should not run one,
/// failed pods, duplicates, and (RollingUpdate) old-template pods within maxUnavailable.
pub fn plan(
    wanted_nodes: &[String],
    pods_by_node: &BTreeMap<String, Vec<Arc<Value>>>,
    current_hash: &str,
    rolling: Option<i64>,
    min_ready: i64,
    now: i64,
) -> Plan {
    let mut out = Plan::default();
    let wanted: HashSet<&String> = wanted_nodes.iter().collect();
    for (node, pods) in pods_by_node {
        if !wanted.contains(node) {
            out.delete.extend(pods.iter().map(|p| s(p, "/metadata/name").to_string()));
        }
    }
    let mut unavailable = 0;
    let mut old_pods = Vec::new();
    for node in wanted_nodes {
        let pods: Vec<&Arc<Value>> = pods_by_node.get(node).map(|v| v.iter().collect()).unwrap_or_default();
        let (failed, mut live): (Vec<&Arc<Value>>, Vec<&Arc<Value>>) =
            pods.into_iter().partition(|p| s(p, "/status/phase") == "Failed");
        out.delete.extend(failed.iter().map(|p| s(p, "/metadata/name").to_string()));
        if live.is_empty() {
            out.create_on.push(node.clone());
            unavailable += 1;
            continue;
        }
        // Keep the oldest; delete duplicates.
        live.sort_by_key(|p| s(p, "/metadata/creationTimestamp").to_string());
        out.delete.extend(live[1..].iter().map(|p| s(p, "/metadata/name").to_string()));
        let pod = live[0];
        let available = pod_available(pod, min_ready, now);
        if !available {
            unavailable += 1;
        }
        let hash = pod.pointer("/metadata/labels").and_then(|l| l.get(HASH_LABEL)).and_then(Value::as_str);
        if hash != Some(current_hash) {
            old_pods.push((available, s(pod, "/metadata/name").to_string()));
        }
    }
    if let Some(max_unavailable) = rolling {
        // Unavailable old pods cost nothing to replace; available ones only within budget.
        old_pods.sort();
        let mut budget = max_unavailable - unavailable;
        for (available, name) in old_pods {
            if !available {
                out.delete.push(name);
            } else if budget > 0 {
                out.delete.push(name);
                budget -= 1;
            }
        }
    }
    out
}

/// Registers the handlers and starts the workers.
pub fn start(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    super::follow(&queue, &ctx.daemonsets, &ctx.pods, "DaemonSet");
    let q = queue.clone();
    let dss = ctx.daemonsets.clone();
    ctx.nodes.on_change(Box::new(move |old, new| {
        let relevant = |n: Option<&Value>| n.map(|n| (n["metadata"]["labels"].clone(), n["spec"].clone()));
        if old.is_some() && new.is_some() && relevant(old) == relevant(new) {
            return;
        }
        for ds in dss.list() {
            q.add(&super::informer::key_of(&ds));
        }
    }));
    super::owner_workers(
        COMPONENT,
        queue,
        2,
        ctx,
        |ctx, writes, key| async move { reconcile(&ctx, &writes, &key).await },
    )
}

async fn reconcile(ctx: &Ctx, writes: &Writes, key: &str) -> anyhow::Result<Option<Duration>> {
    writes.settle(key, &ctx.pods).await;
    let Some(ds) = ctx.daemonsets.get(key) else { return Ok(None) };
    if deleting(&ds) {
        return Ok(None);
    }
    let ns = s(&ds, "/metadata/namespace");
    let name = s(&ds, "/metadata/name");
    let uid = s(&ds, "/metadata/uid");
    let now = now_secs();
    let template = daemon_template(&ds);
    let mut wanted: Vec<String> = ctx
        .nodes
        .list()
        .iter()
        .filter(|n| !deleting(n) && should_run(&template, n))
        .map(|n| s(n, "/metadata/name").to_string())
        .collect();
    wanted.sort();
    let mut by_node: BTreeMap<String, Vec<Arc<Value>>> = BTreeMap::new();
    let mut in_use = HashSet::new();
    for pod in ctx.pods.list_by(super::BY_CONTROLLER, uid) {
        if !controller_of(&pod).is_some_and(|o| o["uid"] == uid)
            || deleting(&pod)
            || s(&pod, "/status/phase") == "Succeeded"
        {
            continue;
        }
        if let Some(h) = pod.pointer("/metadata/labels").and_then(|l| l.get(HASH_LABEL)).and_then(Value::as_str) {
            in_use.insert(h.to_string());
        }
        by_node.entry(pod_node(&pod)).or_default().push(pod);
    }
    let current = history::sync(ctx, &ds, "apps/v1", "DaemonSet", &in_use).await?;
    let desired = wanted.len() as i64;
    let rolling = (s(&ds, "/spec/updateStrategy/type") != "OnDelete").then(|| {
        int_or_percent(&ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], desired, false, 1).max(1)
    });
    let min_ready = int(&ds, "/spec/minReadySeconds");
    let p = plan(&wanted, &by_node, &current.hash, rolling, min_ready, now);

    for victim in &p.delete {
        let path = format!("/api/v1/namespaces/{ns}/pods/{victim}");
        ctx.conn.delete(&path, &json!({})).await?;
        ctx.events.emit(COMPONENT, &ds, "Normal", "SuccessfulDelete", &format!("Deleted pod: {victim}"));
    }
    let generation = ds["metadata"]["generation"].as_i64().unwrap_or(1);
    for node in &p.create_on {
        let mut t = template.clone();
        t["metadata"]["labels"][HASH_LABEL] = json!(current.hash);
        t["metadata"]["labels"]["pod-template-generation"] = json!(generation.to_string());
        let mut pod = pod_from_template(&t, ns, owner_ref(&ds, "apps/v1", "DaemonSet"));
        pod["metadata"]["generateName"] = json!(format!("{name}-"));
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]});
        let created = ctx.conn.create(&format!("/api/v1/namespaces/{ns}/pods"), &pod).await?;
        writes.note(key, revision(&created));
        ctx.events.emit(
            COMPONENT,
            &ds,
            "Normal",
            "SuccessfulCreate",
            &format!("Created pod: {}", s(&created, "/metadata/name")),
        );
    }

    let wanted_set: HashSet<&String> = wanted.iter().collect();
    let first = |node: &String| by_node.get(node).and_then(|v| v.first()).cloned();
    let scheduled: Vec<Arc<Value>> = wanted.iter().filter_map(first).collect();
    let updated = scheduled
        .iter()
        .filter(|p| {
            p.pointer("/metadata/labels").and_then(|l| l.get(HASH_LABEL)).and_then(Value::as_str)
                == Some(current.hash.as_str())
        })
        .count();
    let available = scheduled.iter().filter(|p| pod_available(p, min_ready, now)).count() as i64;
    let status = json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": scheduled.len(),
        "numberMisscheduled": by_node.keys().filter(|n| !wanted_set.contains(n)).count(),
        "numberReady": scheduled.iter().filter(|p| pod_ready_since(p).is_some()).count(),
        "updatedNumberScheduled": updated,
        "numberAvailable": available,
        "numberUnavailable": (desired - available).max(0),
        "observedGeneration": generation,
    });
    let differs =
        status.as_object().is_some_and(|m| m.iter().any(|(k, v)| ds["status"].get(k).unwrap_or(&json!(0)) != v));
    if differs {
        let path = format!("/apis/apps/v1/namespaces/{ns}/daemonsets/{name}/status");
        ctx.conn.merge_patch(&path, &json!({"status": status})).await?;
    }
    let soonest = scheduled
        .iter()
        .filter_map(|p| pod_ready_since(p))
        .map(|since| since + min_ready - now)
        .filter(|w| *w > 0)
        .min();
    Ok(soonest.map(|w| Duration::from_secs(w as u64 + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}})
    }

    fn pod(name: &str, hash: &str, ready: bool) -> Arc<Value> {
        let conds = if ready {
            json!([{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}])
        } else {
            json!([])
        };
        Arc::new(
            json!({"metadata": {"name": name, "labels": {HASH_LABEL: hash}, "creationTimestamp": "2026-01-01T00:00:00Z"},
                        "status": {"phase": "Running", "conditions": conds}}),
        )
    }

    #[test]
    fn nodes_are_chosen_by_selector_and_taints_with_automatic_tolerations() {
        let ds = json!({"spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}}});
        let t = daemon_template(&ds);
        assert!(should_run(&t, &node("a", json!({"disk": "ssd"}), json!([]))));
        assert!(!should_run(&t, &node("b", json!({"disk": "hdd"}), json!([]))));
        let cordoned = json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]);
        assert!(should_run(&t, &node("c", json!({"disk": "ssd"}), cordoned)), "daemons run on cordoned nodes");
        let gpu = json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]);
        assert!(!should_run(&t, &node("d", json!({"disk": "ssd"}), gpu)));
    }

    #[test]
    fn rolling_update_replaces_within_max_unavailable() {
        let wanted: Vec<String> = ["a", "b", "c"].iter().map(|n| n.to_string()).collect();
        let mut by_node = BTreeMap::new();
        by_node.insert("a".to_string(), vec![pod("pa", "old", true)]);
        by_node.insert("b".to_string(), vec![pod("pb", "old", true)]);
        by_node.insert("x".to_string(), vec![pod("px", "new", true)]);
        let p = plan(&wanted, &by_node, "new", Some(1), 0, 0);
        assert_eq!(p.create_on, vec!["c".to_string()]);
        // Node c has no pod (1 unavailable), so no available old pod may go yet; px is on a
        // node that no longer wants one.
        assert_eq!(p.delete, vec!["px".to_string()]);
        by_node.insert("c".to_string(), vec![pod("pc", "new", true)]);
        by_node.remove("x");
        let p = plan(&wanted, &by_node, "new", Some(1), 0, 0);
        assert_eq!((p.create_on.len(), p.delete.len()), (0, 1));
        assert_eq!(plan(&wanted, &by_node, "new", None, 0, 0).delete.len(), 0, "OnDelete waits");
    }
}
