//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the selector,
//! adopting matching orphans and releasing pods whose labels no longer match (through
//! ownerReferences), and reports replicas, ready and available counts. On scale-down it
//! deletes the pods upstream would: unscheduled before scheduled, pending before running,
//! not ready before ready, the most recently ready, the most restarted, the newest.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::conn::revision;
use super::queue::WorkQueue;
use super::{Ctx, Writes, controller_of, deleting, now_secs, owner_ref, pod_active, pod_available, pod_ready_since, s};
use crate::api::selector::LabelSelector;

const COMPONENT: &str = "replicaset-controller";

/// A pod built from a workload's template: its labels and annotations, its spec, and an
/// owner reference to the workload.
pub fn pod_from_template(template: &Value, namespace: &str, owner: Value) -> Value {
    let mut meta = json!({"namespace": namespace, "ownerReferences": [owner]});
    for field in ["labels", "annotations"] {
        if let Some(v) = template.pointer(&format!("/metadata/{field}")) {
            meta[field] = v.clone();
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"].clone()})
}

/// Which of `pods` to delete to go down by `count`: upstream's ranking, most deletable
/// first.
pub fn pods_to_delete(pods: &[Arc<Value>], count: usize, now: i64) -> Vec<Arc<Value>> {
    let mut ranked: Vec<Arc<Value>> = pods.to_vec();
    ranked.sort_by_key(|p| {
        let scheduled = !s(p, "/spec/nodeName").is_empty();
        let phase = match s(p, "/status/phase") {
            "Pending" => 0,
            "Unknown" => 1,
            _ => 2,
        };
        let ready_since = pod_ready_since(p);
        let restarts: i64 = p
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .map(|cs| cs.iter().filter_map(|c| c["restartCount"].as_i64()).sum())
            .unwrap_or(0);
        (
            scheduled,
            phase,
            ready_since.is_some(),
            // Ready for less time goes first.
            Reverse(ready_since.unwrap_or(now)),
            Reverse(restarts),
            Reverse(s(p, "/metadata/creationTimestamp").to_string()),
        )
    });
    ranked.truncate(count);
    ranked
}

/// The status a ReplicaSet should report for its active pods.
pub fn status_of(rs: &Value, pods: &[Arc<Value>], now: i64) -> Value {
    let min_ready = rs.pointer("/spec/minReadySeconds").and_then(Value::as_i64).unwrap_or(0);
    let template_labels = rs.pointer("/spec/template/metadata/labels").and_then(Value::as_object);
    let fully_labeled = pods
        .iter()
        .filter(|p| template_labels.is_none_or(|tl| tl.iter().all(|(k, v)| p["metadata"]["labels"][k] == *v)))
        .count();
    json!({
        "replicas": pods.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": pods.iter().filter(|p| pod_ready_since(p).is_some()).count(),
        "availableReplicas": pods.iter().filter(|p| pod_available(p, min_ready, now)).count(),
        "observedGeneration": rs["metadata"]["generation"],
    })
}

/// Registers the handlers and starts the workers.
pub fn start(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.replicasets.on_change(Box::new(move |_, new| {
        if let Some(rs) = new {
            q.add(&super::informer::key_of(rs));
        }
    }));
    let q = queue.clone();
    let rss = ctx.replicasets.clone();
    ctx.pods.on_change(Box::new(move |old, new| {
        for pod in [old, new].into_iter().flatten() {
            let ns = s(pod, "/metadata/namespace");
            match controller_of(pod) {
                Some(owner) if owner["kind"] == "ReplicaSet" => q.add(&format!("{ns}/{}", s(owner, "/name"))),
                Some(_) => {}
                // An orphan: any ReplicaSet that selects it may adopt it.
                None => {
                    for rs in rss.list_in(ns) {
                        if LabelSelector::from_object(&rs["spec"]["selector"]).matches_object(pod) {
                            q.add(&super::informer::key_of(&rs));
                        }
                    }
                }
            }
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
    let Some(rs) = ctx.replicasets.get(key) else { return Ok(None) };
    if deleting(&rs) {
        return Ok(None);
    }
    let ns = s(&rs, "/metadata/namespace");
    let name = s(&rs, "/metadata/name");
    let uid = s(&rs, "/metadata/uid");
    let selector = LabelSelector::from_object(&rs["spec"]["selector"]);
    let mut owned = Vec::new();
    // Its own pods and the namespace's orphans it may adopt: no other pod can change what
    // this loop does.
    let candidates =
        ctx.pods.list_by(super::BY_CONTROLLER, uid).into_iter().chain(ctx.pods.list_by(super::ORPHANS_IN, ns));
    for pod in candidates {
        let mine = controller_of(&pod).is_some_and(|o| o["uid"] == uid);
        let matches = !selector.is_empty() && selector.matches_object(&pod);
        if mine && !matches {
            release(ctx, &pod, uid).await?;
        } else if mine {
            owned.push(pod);
        } else if matches && controller_of(&pod).is_none() && !deleting(&pod) {
            let adopted = adopt(ctx, &rs, &pod).await?;
            owned.push(Arc::new(adopted));
        }
    }
    let active: Vec<Arc<Value>> = owned.iter().filter(|p| pod_active(p)).cloned().collect();
    let want = rs.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0) as usize;
    let now = now_secs();
    if active.len() < want {
        let owner = owner_ref(&rs, "apps/v1", "ReplicaSet");
        let mut pod = pod_from_template(&rs["spec"]["template"], ns, owner);
        pod["metadata"]["generateName"] = json!(format!("{name}-"));
        let path = format!("/api/v1/namespaces/{ns}/pods");
        // Upstream's slow start: 1, 2, 4, ... creations, stopping at the first failure.
        let mut left = want - active.len();
        let mut batch = 1;
        while left > 0 {
            let n = batch.min(left);
            let results = futures_util::future::join_all((0..n).map(|_| ctx.conn.create(&path, &pod))).await;
            for r in &results {
                match r {
                    Ok(created) => writes.note(key, revision(created)),
                    Err(e) => {
                        ctx.events.emit(COMPONENT, &rs, "Warning", "FailedCreate", &format!("Error creating: {e:#}"));
                    }
                }
            }
            let created = results.iter().filter(|r| r.is_ok()).count();
            if created > 0 {
                ctx.events.emit(COMPONENT, &rs, "Normal", "SuccessfulCreate", &format!("Created {created} pod(s)"));
            }
            if created < n {
                anyhow::bail!("{} of {n} pod creations failed", n - created);
            }
            left -= n;
            batch *= 2;
        }
    } else if active.len() > want {
        for pod in pods_to_delete(&active, active.len() - want, now) {
            let path = format!("/api/v1/namespaces/{ns}/pods/{}", s(&pod, "/metadata/name"));
            let opts = json!({"preconditions": {"uid": pod["metadata"]["uid"]}});
            ctx.conn.delete(&path, &opts).await?;
            ctx.events.emit(
                COMPONENT,
                &rs,
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted pod: {}", s(&pod, "/metadata/name")),
            );
        }
        // The deletions show in the cache as they happen; the pod handler requeues.
    }
    let status = status_of(&rs, &active, now);
    let mut current = rs["status"].clone();
    if let Some(c) = current.as_object_mut() {
        c.remove("conditions");
        c.remove("terminatingReplicas");
    }
    if current != status {
        let path = format!("/apis/apps/v1/namespaces/{ns}/replicasets/{name}/status");
        ctx.conn.merge_patch(&path, &json!({"status": status})).await?;
    }
    // A pod ready but not yet available for minReadySeconds: look again when it is.
    let min_ready = rs.pointer("/spec/minReadySeconds").and_then(Value::as_i64).unwrap_or(0);
    let soonest = active
        .iter()
        .filter_map(|p| pod_ready_since(p))
        .map(|since| since + min_ready - now)
        .filter(|wait| *wait > 0)
        .min();
    Ok(soonest.map(|w| Duration::from_secs(w as u64 + 1)))
}

/// Takes an orphan pod that matches: adds this ReplicaSet as its controller, guarded by
/// the pod's resourceVersion so a concurrent adoption by another owner wins cleanly.
async fn adopt(ctx: &Ctx, rs: &Value, pod: &Value) -> anyhow::Result<Value> {
    let ns = s(pod, "/metadata/namespace");
    let path = format!("/api/v1/namespaces/{ns}/pods/{}", s(pod, "/metadata/name"));
    let mut refs = pod.pointer("/metadata/ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default();
    refs.push(owner_ref(rs, "apps/v1", "ReplicaSet"));
    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": pod["metadata"]["resourceVersion"]}});
    ctx.conn.merge_patch(&path, &patch).await
}

/// Gives up a pod whose labels no longer match.
async fn release(ctx: &Ctx, pod: &Value, uid: &str) -> anyhow::Result<()> {
    let ns = s(pod, "/metadata/namespace");
    let path = format!("/api/v1/namespaces/{ns}/pods/{}", s(pod, "/metadata/name"));
    let refs: Vec<Value> = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| r["uid"] != uid)
        .cloned()
        .collect();
    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": pod["metadata"]["resourceVersion"]}});
    ctx.conn.merge_patch(&path, &patch).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, phase: &str, ready_at: Option<&str>, created: &str) -> Arc<Value> {
        let conds = match ready_at {
            Some(t) => json!([{"type": "Ready", "status": "True", "lastTransitionTime": t}]),
            None => json!([]),
        };
        Arc::new(json!({"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"nodeName": node}, "status": {"phase": phase, "conditions": conds}}))
    }

    fn names(v: &[Arc<Value>]) -> Vec<&str> {
        v.iter().map(|p| s(p, "/metadata/name")).collect()
    }

    #[test]
    fn scale_down_prefers_unscheduled_pending_unready_then_newest() {
        let pods = vec![
            pod("running-old", "n1", "Running", Some("2026-01-01T00:00:00Z"), "2026-01-01T00:00:00Z"),
            pod("running-new", "n1", "Running", Some("2026-01-02T00:00:00Z"), "2026-01-02T00:00:00Z"),
            pod("unscheduled", "", "Pending", None, "2025-01-01T00:00:00Z"),
            pod("pending", "n1", "Pending", None, "2025-01-01T00:00:00Z"),
            pod("not-ready", "n1", "Running", None, "2025-01-01T00:00:00Z"),
        ];
        let now = epoch("2026-02-01T00:00:00Z");
        assert_eq!(
            names(&pods_to_delete(&pods, 5, now)),
            ["unscheduled", "pending", "not-ready", "running-new", "running-old"]
        );
        assert_eq!(names(&pods_to_delete(&pods, 1, now)), ["unscheduled"]);
    }

    fn epoch(t: &str) -> i64 {
        super::super::epoch_secs(t).unwrap_or(0)
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let rs = json!({"metadata": {"generation": 3}, "spec": {"minReadySeconds": 30,
            "template": {"metadata": {"labels": {"app": "a"}}}}});
        let mut p = pod("a", "n", "Running", Some("2026-01-01T00:00:00Z"), "2026-01-01T00:00:00Z");
        Arc::make_mut(&mut p)["metadata"]["labels"] = json!({"app": "a"});
        let early = status_of(&rs, &[p.clone()], epoch("2026-01-01T00:00:10Z"));
        assert_eq!((early["readyReplicas"].as_i64(), early["availableReplicas"].as_i64()), (Some(1), Some(0)));
        let later = status_of(&rs, &[p], epoch("2026-01-01T00:00:31Z"));
        assert_eq!(later["availableReplicas"], 1);
        assert_eq!(later["fullyLabeledReplicas"], 1);
        assert_eq!(later["observedGeneration"], 3);
    }
}
