//! The disruption controller: keeps each PodDisruptionBudget's status (expected, healthy
//! and desired pods, disruptions allowed, the `DisruptionAllowed` condition) current as its
//! pods come, go and change readiness, so `kubectl get pdb` shows what an eviction would be
//! told. The eviction subresource decides with the same arithmetic
//! ([`crate::api::disruption`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::queue::WorkQueue;
use super::{Ctx, now_rfc3339, s};
use crate::api::disruption::{budget, covers};

const COMPONENT: &str = "controllermanager";

/// Registers the handlers and starts the worker.
pub fn start(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.pdbs.on_change(Box::new(move |_, new| {
        if let Some(pdb) = new {
            q.add(&super::informer::key_of(pdb));
        }
    }));
    let q = queue.clone();
    let pdbs = ctx.pdbs.clone();
    ctx.pods.on_change(Box::new(move |old, new| {
        for pod in [old, new].into_iter().flatten() {
            for pdb in pdbs.list_in(s(pod, "/metadata/namespace")) {
                if covers(&pdb, pod) {
                    q.add(&super::informer::key_of(&pdb));
                }
            }
        }
    }));
    let ctx = ctx.clone();
    super::workers(COMPONENT, queue, 1, move |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await }
    })
}

async fn reconcile(ctx: &Ctx, key: &str) -> anyhow::Result<Option<Duration>> {
    let Some(pdb) = ctx.pdbs.get(key) else { return Ok(None) };
    let ns = s(&pdb, "/metadata/namespace");
    let pods: Vec<Value> = ctx.pods.list_in(ns).iter().map(|p| (**p).clone()).collect();
    let scale_of = |owner: &Value| -> Option<i64> {
        let cache = match owner["kind"].as_str()? {
            "ReplicaSet" => &ctx.replicasets,
            "StatefulSet" => &ctx.statefulsets,
            "Deployment" => &ctx.deployments,
            _ => return None,
        };
        let obj = cache.get(&format!("{ns}/{}", owner["name"].as_str()?))?;
        (obj["metadata"]["uid"] == owner["uid"]).then(|| obj["spec"]["replicas"].as_i64().unwrap_or(1))
    };
    let b = budget(&pdb, &pods, &scale_of);
    let allowed = b.allowed > 0;
    let (status, reason) = if allowed { ("True", "SufficientPods") } else { ("False", "InsufficientPods") };
    let old = &pdb["status"];
    let same_condition = old["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "DisruptionAllowed"))
        .is_some_and(|c| c["status"] == status && c["reason"] == reason);
    let figures = [
        ("currentHealthy", b.healthy),
        ("desiredHealthy", b.desired),
        ("disruptionsAllowed", b.allowed),
        ("expectedPods", b.expected),
    ];
    let unchanged = same_condition
        && old["observedGeneration"] == pdb["metadata"]["generation"]
        && figures.iter().all(|(k, v)| old[*k].as_i64().unwrap_or(0) == *v);
    if unchanged {
        return Ok(None);
    }
    let mut next = json!({
        "observedGeneration": pdb["metadata"]["generation"],
        "conditions": [{"type": "DisruptionAllowed", "status": status, "reason": reason, "message": "",
                        "observedGeneration": pdb["metadata"]["generation"], "lastTransitionTime": now_rfc3339()}],
    });
    for (k, v) in figures {
        next[k] = json!(v);
    }
    let path = format!("/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{}/status", s(&pdb, "/metadata/name"));
    ctx.conn.merge_patch(&path, &json!({"status": next})).await?;
    Ok(None)
}
