//! The node lifecycle controller: a node whose agent stops renewing its Lease (and posting
//! status) for the grace period gets its conditions set to Unknown, its pods marked not
//! Ready, and the `node.kubernetes.io/unreachable` taints; a node reporting NotReady gets
//! the `not-ready` ones, a cordoned node `unschedulable`. The taint manager then evicts the
//! pods of a NoExecute-tainted node once their toleration runs out (300 s by default,
//! added by the API), and their controllers replace them elsewhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::queue::WorkQueue;
use super::scheduler::tolerates;
use super::{Ctx, deleting, epoch_secs, now_rfc3339, now_secs, s};

const COMPONENT: &str = "node-controller";
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";
const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// The taints the controller owns that a node should carry, given its Ready status and
/// whether it is cordoned.
pub fn wanted_taints(ready: &str, unschedulable: bool) -> Vec<(&'static str, &'static str)> {
    let mut t = Vec::new();
    match ready {
        "Unknown" => t.extend([(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")]),
        "False" => t.extend([(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")]),
        _ => {}
    }
    if unschedulable {
        t.push((UNSCHEDULABLE, "NoSchedule"));
    }
    t
}

/// When a pod on a node with these NoExecute taints must go: `Some(0)` now, `Some(t)` at
/// epoch second `t`, `None` never (it tolerates them all without a time limit).
pub fn eviction_time(pod: &Value, taints: &[Value]) -> Option<i64> {
    let tolerations = pod["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    let mut at: Option<i64> = None;
    for taint in taints.iter().filter(|t| t["effect"] == "NoExecute") {
        let matching: Vec<&Value> = tolerations.iter().filter(|t| tolerates(std::slice::from_ref(*t), taint)).collect();
        if matching.is_empty() {
            return Some(0);
        }
        // The shortest tolerationSeconds among the matching tolerations; none means forever.
        if let Some(secs) = matching.iter().filter_map(|t| t["tolerationSeconds"].as_i64()).min() {
            let added = epoch_secs(s(taint, "/timeAdded")).unwrap_or(0);
            let when = added + secs.max(0);
            at = Some(at.map_or(when, |a| a.min(when)));
        }
    }
    at
}

/// Registers the handlers and starts the workers and the heartbeat check.
pub fn start(ctx: &Arc<Ctx>, grace: Duration) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.nodes.on_change(Box::new(move |old, new| {
        if let Some(n) = new.or(old) {
            q.add(s(n, "/metadata/name"));
        }
    }));
    let q = queue.clone();
    ctx.pods.on_change(Box::new(move |old, new| {
        if old.is_none_or(|o| s(o, "/spec/nodeName").is_empty())
            && let Some(node) = new.map(|p| s(p, "/spec/nodeName")).filter(|n| !n.is_empty())
        {
            q.add(node);
        }
    }));
    // Heartbeats are about time passing: look at every node every few seconds.
    let q = queue.clone();
    let nodes = ctx.nodes.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            for n in nodes.list() {
                q.add(s(&n, "/metadata/name"));
            }
        }
    });
    let ctx = ctx.clone();
    let mut tasks = vec![ticker];
    let gone = Arc::new(Mutex::new(HashMap::new()));
    tasks.extend(super::workers(COMPONENT, queue, 1, move |key| {
        let ctx = ctx.clone();
        let gone = gone.clone();
        async move {
            ctx.nodes.synced().await;
            if ctx.nodes.get(&key).is_none() {
                return collect_orphans(&ctx, &key, &gone).await;
            }
            if let Ok(mut m) = gone.lock() {
                m.remove(&key);
            }
            reconcile(&ctx, &key, grace).await
        }
    }));
    tasks
}

/// When this process started watching nodes: silence is counted from then at the earliest,
/// since the Lease renewals kept in memory before a restart are gone (see the API's
/// `heartbeats`), and the stored ones may be minutes old.
static WATCHING_SINCE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();

fn last_heartbeat(ctx: &Ctx, node: &Value) -> Option<i64> {
    let name = s(node, "/metadata/name");
    let stored = ctx.leases.get(&format!("kube-node-lease/{name}")).and_then(|l| epoch_secs(s(&l, "/spec/renewTime")));
    let in_memory = ctx.conn.lease_renewal(name).and_then(|t| epoch_secs(&t));
    let since = *WATCHING_SINCE.get_or_init(now_secs);
    heartbeat(node, stored.max(in_memory)).map(|t| t.max(since))
}

/// When the node last showed it was alive: its Lease renewal (`renewed`) or its Ready
/// condition's heartbeat, whichever is later; a node that never did either counts from its
/// creation, so one that never reported goes Unknown after the grace period too.
fn heartbeat(node: &Value, renewed: Option<i64>) -> Option<i64> {
    let posted = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|ready| epoch_secs(s(ready, "/lastHeartbeatTime")));
    renewed.max(posted).or_else(|| epoch_secs(s(node, "/metadata/creationTimestamp")))
}

/// The conditions of a node gone silent: each one Unknown (`NodeStatusUnknown`), or, for a
/// node that never posted any, upstream's four set Unknown with `NodeStatusNeverUpdated`.
fn silent_conditions(conditions: &[Value], stamp: &str) -> Vec<Value> {
    if conditions.iter().any(|c| c["type"] == "Ready") {
        return conditions
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
                c["message"] = json!("Kubelet stopped posting node status.");
                c["lastTransitionTime"] = json!(stamp);
                c
            })
            .collect();
    }
    ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"]
        .iter()
        .map(|t| {
            json!({"type": t, "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                   "message": "Kubelet never posted node status.", "lastHeartbeatTime": stamp,
                   "lastTransitionTime": stamp})
        })
        .collect()
}

/// How long pods of a deleted Node wait before they are force-deleted (upstream pod GC's
/// quarantine: the Node may be coming back).
const ORPHAN_QUARANTINE: Duration = Duration::from_secs(40);

/// Pods bound to a Node that was deleted: force-deleted once the Node has stayed gone for
/// the quarantine, as upstream's pod garbage collector does, so their controllers' view
/// and `kubectl get pods` do not keep them for ever.
async fn collect_orphans(
    ctx: &Ctx,
    node: &str,
    gone: &Mutex<HashMap<String, Instant>>,
) -> anyhow::Result<Option<Duration>> {
    let since = match gone.lock() {
        Ok(mut m) => *m.entry(node.to_string()).or_insert_with(Instant::now),
        Err(_) => return Ok(None),
    };
    if since.elapsed() < ORPHAN_QUARANTINE {
        return Ok(Some(ORPHAN_QUARANTINE - since.elapsed()));
    }
    if let Ok(mut m) = gone.lock() {
        m.remove(node);
    }
    for pod in ctx.pods.list_by(super::BY_NODE, node).iter() {
        let (ns, name) = (s(pod, "/metadata/namespace"), s(pod, "/metadata/name"));
        let opts = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": pod["metadata"]["uid"]}});
        ctx.conn.delete(&format!("/api/v1/namespaces/{ns}/pods/{name}"), &opts).await?;
        ctx.events.emit(
            COMPONENT,
            pod,
            "Normal",
            "PodGC",
            &format!("Deleted pod {ns}/{name}: its node {node} is gone"),
        );
    }
    Ok(None)
}

async fn reconcile(ctx: &Ctx, name: &str, grace: Duration) -> anyhow::Result<Option<Duration>> {
    let Some(node) = ctx.nodes.get(name) else { return Ok(None) };
    if deleting(&node) {
        return Ok(None);
    }
    let now = now_secs();
    let path = format!("/api/v1/nodes/{name}");
    let mut node = (*node).clone();
    let conditions = node.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut ready =
        conditions.iter().find(|c| c["type"] == "Ready").map(|c| s(c, "/status").to_string()).unwrap_or_default();
    let silent = last_heartbeat(ctx, &node).is_some_and(|t| now - t > grace.as_secs() as i64);
    if silent && ready != "Unknown" {
        let stamp = now_rfc3339();
        let unknown = silent_conditions(&conditions, &stamp);
        node = ctx.conn.merge_patch(&format!("{path}/status"), &json!({"status": {"conditions": unknown}})).await?;
        ready = "Unknown".into();
        ctx.events.emit(
            COMPONENT,
            &node,
            "Normal",
            "NodeNotReady",
            &format!("Node {name} status is now: NodeNotReady"),
        );
        for pod in ctx.pods.list_by(super::BY_NODE, name).iter().filter(|p| !deleting(p)) {
            let ppath = format!(
                "/api/v1/namespaces/{}/pods/{}/status",
                s(pod, "/metadata/namespace"),
                s(pod, "/metadata/name")
            );
            let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "NodeNotReady",
                "lastTransitionTime": stamp, "lastProbeTime": null}]}});
            let _ = ctx.conn.strategic_patch(&ppath, &patch).await;
        }
    }

    // The controller's taints, the rest kept as they are.
    let unschedulable = node["spec"]["unschedulable"] == true;
    let wanted = wanted_taints(&ready, unschedulable);
    let ours = [UNREACHABLE, NOT_READY, UNSCHEDULABLE];
    let current: Vec<Value> = node["spec"]["taints"].as_array().cloned().unwrap_or_default();
    let mut next: Vec<Value> = current.iter().filter(|t| !ours.contains(&s(t, "/key"))).cloned().collect();
    for (key, effect) in &wanted {
        match current.iter().find(|t| s(t, "/key") == *key && s(t, "/effect") == *effect) {
            Some(t) => next.push(t.clone()),
            None if *effect == "NoExecute" => {
                next.push(json!({"key": key, "effect": effect, "timeAdded": now_rfc3339()}))
            }
            None => next.push(json!({"key": key, "effect": effect})),
        }
    }
    if next != current {
        let patch =
            json!({"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]}, "spec": {"taints": next}});
        node = ctx.conn.merge_patch(&path, &patch).await?;
    }

    // The taint manager: NoExecute taints evict pods that do not tolerate them (long enough).
    let taints: Vec<Value> = node["spec"]["taints"].as_array().cloned().unwrap_or_default();
    if !taints.iter().any(|t| t["effect"] == "NoExecute") {
        return Ok(None);
    }
    let mut soonest: Option<i64> = None;
    for pod in ctx.pods.list_by(super::BY_NODE, name).iter().filter(|p| !deleting(p)) {
        let Some(at) = eviction_time(pod, &taints) else { continue };
        if at <= now {
            let (ns, pname) = (s(pod, "/metadata/namespace"), s(pod, "/metadata/name"));
            ctx.events.emit(
                COMPONENT,
                pod,
                "Normal",
                "TaintManagerEviction",
                &format!("Marking for deletion Pod {ns}/{pname}"),
            );
            let opts = json!({"preconditions": {"uid": pod["metadata"]["uid"]}});
            ctx.conn.delete(&format!("/api/v1/namespaces/{ns}/pods/{pname}"), &opts).await?;
        } else {
            soonest = Some(soonest.map_or(at, |x| x.min(at)));
        }
    }
    Ok(soonest.map(|t| Duration::from_secs((t - now) as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_never_reported_counts_from_its_creation_and_gets_never_updated() {
        let created = json!({"metadata": {"name": "n", "creationTimestamp": "2026-01-01T00:00:00Z"}});
        let t0 = epoch_secs("2026-01-01T00:00:00Z");
        assert!(t0.is_some());
        assert_eq!(heartbeat(&created, None), t0, "no status at all: the creation time");
        assert_eq!(heartbeat(&created, Some(t0.unwrap() + 60)), Some(t0.unwrap() + 60), "a lease renewal is later");
        let never = silent_conditions(&[], "2026-01-01T00:01:00Z");
        assert_eq!(never.len(), 4);
        assert!(never.iter().all(|c| c["status"] == "Unknown" && c["reason"] == "NodeStatusNeverUpdated"));
        assert!(never.iter().any(|c| c["type"] == "Ready"));
        let reported = [json!({"type": "Ready", "status": "True", "reason": "KubeletReady"})];
        let stopped = silent_conditions(&reported, "2026-01-01T00:01:00Z");
        assert_eq!(stopped[0]["reason"], "NodeStatusUnknown");
        assert_eq!(wanted_taints("Unknown", false), wanted_taints(s(&stopped[0], "/status"), false));
    }

    #[test]
    fn taints_follow_readiness_and_cordoning() {
        assert_eq!(wanted_taints("True", false), vec![]);
        assert_eq!(wanted_taints("Unknown", false), vec![(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")]);
        assert_eq!(wanted_taints("False", true).len(), 3);
    }

    #[test]
    fn pods_go_when_their_toleration_runs_out() {
        let taint = json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"});
        let t0 = epoch_secs("2026-01-01T00:00:00Z").unwrap_or(0);
        let default = json!({"spec": {"tolerations": [
            {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]}});
        assert_eq!(eviction_time(&default, std::slice::from_ref(&taint)), Some(t0 + 300));
        assert_eq!(eviction_time(&json!({"spec": {}}), std::slice::from_ref(&taint)), Some(0), "no toleration: now");
        let forever = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        assert_eq!(eviction_time(&forever, &[taint]), None, "tolerates everything, for ever");
    }
}
