//! The StatefulSet controller: pods `<name>-0 .. <name>-(N-1)` with stable identities
//! (hostname, `subdomain: serviceName`, the `statefulset.kubernetes.io/pod-name` label)
//! and one PersistentVolumeClaim per pod and volumeClaimTemplate (`<claim>-<pod>`), kept on
//! scale-down unless the retention policy says Delete. OrderedReady creates a pod only
//! once every lower ordinal is Running and Ready and removes the highest first; Parallel
//! does both at once. RollingUpdate replaces pods from the highest ordinal down to
//! `partition`, one at a time; OnDelete waits for the user. Revisions are
//! ControllerRevisions, named in `currentRevision`/`updateRevision`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::conn::{is_conflict, revision};
use super::history::{self, HASH_LABEL};
use super::queue::WorkQueue;
use super::replicaset::pod_from_template;
use super::{Ctx, Writes, controller_of, deleting, int, now_secs, owner_ref, pod_available, pod_ready_since, s};

const COMPONENT: &str = "statefulset-controller";

/// One pod slot as the decision sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub ordinal: i64,
    pub revision: String,
    /// Running and Ready (for minReadySeconds).
    pub healthy: bool,
    pub failed: bool,
    /// Being deleted.
    pub terminating: bool,
}

/// One step of a StatefulSet's convergence.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Create the pod of this ordinal.
    Create(i64),
    /// Delete the pod of this ordinal (condemned, failed, or to update).
    Delete(i64),
    /// Nothing to do until a pod changes.
    Wait,
}

/// What to do next; for OrderedReady at most one step, for Parallel possibly several.
pub fn steps(
    replicas: i64,
    slots: &[Slot],
    parallel: bool,
    update_revision: &str,
    partition: Option<i64>,
) -> Vec<Step> {
    let by_ordinal: BTreeMap<i64, &Slot> = slots.iter().map(|sl| (sl.ordinal, sl)).collect();
    let mut out = Vec::new();
    // Failed pods are replaced first.
    for sl in slots.iter().filter(|sl| sl.failed && !sl.terminating) {
        out.push(Step::Delete(sl.ordinal));
        if !parallel {
            return out;
        }
    }
    for ordinal in 0..replicas {
        match by_ordinal.get(&ordinal) {
            None => {
                out.push(Step::Create(ordinal));
                if !parallel {
                    return out;
                }
            }
            Some(sl) if !parallel && (!sl.healthy || sl.terminating) => return vec![Step::Wait],
            Some(_) => {}
        }
    }
    // Condemned: the highest ordinal first.
    let condemned: Vec<&Slot> = by_ordinal.range(replicas..).rev().map(|(_, sl)| *sl).collect();
    for sl in condemned {
        if sl.terminating {
            if !parallel {
                return vec![Step::Wait];
            }
            continue;
        }
        if !parallel && slots.iter().any(|o| o.ordinal < sl.ordinal && (!o.healthy || o.terminating)) {
            return vec![Step::Wait];
        }
        out.push(Step::Delete(sl.ordinal));
        if !parallel {
            return out;
        }
    }
    if !out.is_empty() {
        return out;
    }
    // Rolling update: one pod at a time, from the top down to the partition, and only
    // while every pod is healthy.
    if let Some(partition) = partition {
        if slots.iter().any(|sl| !sl.healthy || sl.terminating) {
            return vec![Step::Wait];
        }
        if let Some(sl) =
            (partition..replicas).rev().filter_map(|o| by_ordinal.get(&o)).find(|sl| sl.revision != update_revision)
        {
            return vec![Step::Delete(sl.ordinal)];
        }
    }
    out
}

/// The ordinal in a pod name `<set>-<n>`.
fn ordinal_of(set: &str, pod: &str) -> Option<i64> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

/// Registers the handlers and starts the workers.
pub fn start(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    super::follow(&queue, &ctx.statefulsets, &ctx.pods, "StatefulSet");
    super::owner_workers(
        COMPONENT,
        queue,
        2,
        ctx,
        |ctx, writes, key| async move { reconcile(&ctx, &writes, &key).await },
    )
}

/// The pod of `ordinal` for a revision's template, with its claims' volumes.
fn pod_for(set: &Value, template: &Value, ordinal: i64, revision_name: &str) -> Value {
    let ns = s(set, "/metadata/namespace");
    let name = format!("{}-{ordinal}", s(set, "/metadata/name"));
    let mut t = template.clone();
    if let Some(m) = t.as_object_mut() {
        m.remove("$patch");
    }
    t["metadata"]["labels"][HASH_LABEL] = json!(revision_name);
    t["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] = json!(name);
    t["metadata"]["labels"]["apps.kubernetes.io/pod-index"] = json!(ordinal.to_string());
    let mut pod = pod_from_template(&t, ns, owner_ref(set, "apps/v1", "StatefulSet"));
    pod["metadata"]["name"] = json!(name);
    pod["spec"]["hostname"] = json!(name);
    if let Some(svc) = set.pointer("/spec/serviceName").and_then(Value::as_str).filter(|x| !x.is_empty()) {
        pod["spec"]["subdomain"] = json!(svc);
    }
    let mut volumes = pod["spec"]["volumes"].as_array().cloned().unwrap_or_default();
    for claim in set["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten() {
        let cname = s(claim, "/metadata/name");
        volumes.retain(|v| v["name"] != cname);
        volumes.push(json!({"name": cname, "persistentVolumeClaim": {"claimName": format!("{cname}-{name}")}}));
    }
    if !volumes.is_empty() {
        pod["spec"]["volumes"] = json!(volumes);
    }
    pod
}

async fn reconcile(ctx: &Ctx, writes: &Writes, key: &str) -> anyhow::Result<Option<Duration>> {
    writes.settle(key, &ctx.pods).await;
    let Some(set) = ctx.statefulsets.get(key) else { return Ok(None) };
    if deleting(&set) {
        return Ok(None);
    }
    let ns = s(&set, "/metadata/namespace");
    let name = s(&set, "/metadata/name");
    let uid = s(&set, "/metadata/uid");
    let now = now_secs();
    let min_ready = int(&set, "/spec/minReadySeconds");
    let replicas = set.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0);
    let mut pods: BTreeMap<i64, Arc<Value>> = BTreeMap::new();
    let mut in_use = HashSet::new();
    for pod in ctx.pods.list_in(ns) {
        if !controller_of(&pod).is_some_and(|o| o["uid"] == uid) {
            continue;
        }
        if let Some(o) = ordinal_of(name, s(&pod, "/metadata/name")) {
            if let Some(h) = pod.pointer("/metadata/labels").and_then(|l| l.get(HASH_LABEL)).and_then(Value::as_str) {
                in_use.insert(h.trim_start_matches(&format!("{name}-")).to_string());
            }
            pods.insert(o, pod);
        }
    }
    let update = history::sync(ctx, &set, "apps/v1", "StatefulSet", &in_use).await?;
    let update_rev = update.name.clone();
    let current_rev =
        Some(s(&set, "/status/currentRevision")).filter(|r| !r.is_empty()).unwrap_or(&update_rev).to_string();
    let slots: Vec<Slot> = pods
        .iter()
        .map(|(o, p)| Slot {
            ordinal: *o,
            revision: p
                .pointer("/metadata/labels")
                .and_then(|l| l.get(HASH_LABEL))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            healthy: s(p, "/status/phase") == "Running" && pod_available(p, min_ready, now),
            failed: s(p, "/status/phase") == "Failed",
            terminating: deleting(p),
        })
        .collect();
    let parallel = s(&set, "/spec/podManagementPolicy") == "Parallel";
    let rolling = s(&set, "/spec/updateStrategy/type") != "OnDelete";
    let partition = rolling.then(|| int(&set, "/spec/updateStrategy/rollingUpdate/partition").max(0));
    // Pods below the partition are made from the current revision's template.
    let current_template = ctx
        .controllerrevisions
        .get(&format!("{ns}/{current_rev}"))
        .map(|cr| cr["data"]["spec"]["template"].clone())
        .unwrap_or_else(|| set["spec"]["template"].clone());

    for step in steps(replicas, &slots, parallel, &update_rev, partition) {
        match step {
            Step::Wait => {}
            Step::Create(o) => {
                let below = partition.is_some_and(|p| o < p) && current_rev != update_rev;
                let (template, rev) = if below {
                    (&current_template, current_rev.as_str())
                } else {
                    (&set["spec"]["template"], update_rev.as_str())
                };
                let pod = pod_for(&set, template, o, rev);
                ensure_claims(ctx, &set, s(&pod, "/metadata/name")).await?;
                match ctx.conn.create(&format!("/api/v1/namespaces/{ns}/pods"), &pod).await {
                    Ok(created) => {
                        writes.note(key, revision(&created));
                        let msg =
                            format!("create Pod {} in StatefulSet {name} successful", s(&created, "/metadata/name"));
                        ctx.events.emit(COMPONENT, &set, "Normal", "SuccessfulCreate", &msg);
                    }
                    Err(e) if is_conflict(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Step::Delete(o) => {
                let Some(pod) = pods.get(&o) else { continue };
                let pname = s(pod, "/metadata/name");
                let opts = json!({"preconditions": {"uid": pod["metadata"]["uid"]}});
                ctx.conn.delete(&format!("/api/v1/namespaces/{ns}/pods/{pname}"), &opts).await?;
                let msg = format!("delete Pod {pname} in StatefulSet {name} successful");
                ctx.events.emit(COMPONENT, &set, "Normal", "SuccessfulDelete", &msg);
                if o >= replicas {
                    release_claims(ctx, &set, pname).await?;
                }
            }
        }
    }

    let live: Vec<&Arc<Value>> = pods.values().filter(|p| !deleting(p)).collect();
    let at = |rev: &str| {
        live.iter()
            .filter(|p| {
                p.pointer("/metadata/labels").and_then(|l| l.get(HASH_LABEL)).and_then(Value::as_str) == Some(rev)
            })
            .count() as i64
    };
    let updated = at(&update_rev);
    let ready = live.iter().filter(|p| pod_ready_since(p).is_some()).count();
    let current_rev =
        if updated == replicas && live.len() as i64 == replicas { update_rev.clone() } else { current_rev };
    let status = json!({
        "observedGeneration": set["metadata"]["generation"],
        "replicas": live.len(),
        "readyReplicas": ready,
        "availableReplicas": live.iter().filter(|p| pod_available(p, min_ready, now)).count(),
        "currentReplicas": at(&current_rev),
        "updatedReplicas": updated,
        "currentRevision": current_rev,
        "updateRevision": update_rev,
        "collisionCount": set.pointer("/status/collisionCount").cloned().unwrap_or(json!(0)),
    });
    let differs =
        status.as_object().is_some_and(|m| m.iter().any(|(k, v)| set["status"].get(k).unwrap_or(&json!(0)) != v));
    if differs {
        let path = format!("/apis/apps/v1/namespaces/{ns}/statefulsets/{name}/status");
        ctx.conn.merge_patch(&path, &json!({"status": status})).await?;
    }
    let soonest =
        live.iter().filter_map(|p| pod_ready_since(p)).map(|since| since + min_ready - now).filter(|w| *w > 0).min();
    Ok(soonest.map(|w| Duration::from_secs(w as u64 + 1)))
}

/// Creates the pod's claims that do not exist yet. With `whenDeleted: Delete` a claim is
/// owned by the set (and goes with it); otherwise it outlives both.
async fn ensure_claims(ctx: &Ctx, set: &Value, pod: &str) -> anyhow::Result<()> {
    let ns = s(set, "/metadata/namespace");
    for claim in set["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten() {
        let cname = format!("{}-{pod}", s(claim, "/metadata/name"));
        if ctx.pvcs.get(&format!("{ns}/{cname}")).is_some() {
            continue;
        }
        let mut pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": cname, "namespace": ns}, "spec": claim["spec"]});
        let labels = set.pointer("/spec/selector/matchLabels").cloned().unwrap_or(json!({}));
        pvc["metadata"]["labels"] = labels;
        if s(set, "/spec/persistentVolumeClaimRetentionPolicy/whenDeleted") == "Delete" {
            let mut r = owner_ref(set, "apps/v1", "StatefulSet");
            r["controller"] = json!(false);
            pvc["metadata"]["ownerReferences"] = json!([r]);
        }
        match ctx.conn.create(&format!("/api/v1/namespaces/{ns}/persistentvolumeclaims"), &pvc).await {
            Ok(_) => ctx.events.emit(
                COMPONENT,
                set,
                "Normal",
                "SuccessfulCreate",
                &format!("create Claim {cname} Pod {pod} in StatefulSet {} success", s(set, "/metadata/name")),
            ),
            Err(e) if is_conflict(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// On scale-down, `whenScaled: Delete` removes a condemned pod's claims.
async fn release_claims(ctx: &Ctx, set: &Value, pod: &str) -> anyhow::Result<()> {
    if s(set, "/spec/persistentVolumeClaimRetentionPolicy/whenScaled") != "Delete" {
        return Ok(());
    }
    let ns = s(set, "/metadata/namespace");
    for claim in set["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten() {
        let cname = format!("{}-{pod}", s(claim, "/metadata/name"));
        ctx.conn.delete(&format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{cname}"), &json!({})).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(ordinal: i64, rev: &str, healthy: bool) -> Slot {
        Slot { ordinal, revision: rev.into(), healthy, failed: false, terminating: false }
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_after_the_previous_is_ready() {
        assert_eq!(steps(3, &[], false, "r1", Some(0)), vec![Step::Create(0)]);
        assert_eq!(steps(3, &[slot(0, "r1", false)], false, "r1", Some(0)), vec![Step::Wait]);
        assert_eq!(steps(3, &[slot(0, "r1", true)], false, "r1", Some(0)), vec![Step::Create(1)]);
        assert_eq!(
            steps(3, &[], true, "r1", Some(0)),
            vec![Step::Create(0), Step::Create(1), Step::Create(2)],
            "Parallel"
        );
    }

    #[test]
    fn scale_down_removes_the_highest_ordinal_first() {
        let three = [slot(0, "r1", true), slot(1, "r1", true), slot(2, "r1", true)];
        assert_eq!(steps(1, &three, false, "r1", Some(0)), vec![Step::Delete(2)]);
        let mut going = three.to_vec();
        going[2].terminating = true;
        assert_eq!(steps(1, &going, false, "r1", Some(0)), vec![Step::Wait], "wait for -2 to go before -1");
    }

    #[test]
    fn rolling_update_goes_from_the_top_down_to_the_partition() {
        let three = [slot(0, "r1", true), slot(1, "r1", true), slot(2, "r1", true)];
        assert_eq!(steps(3, &three, false, "r2", Some(0)), vec![Step::Delete(2)]);
        let top_done = [slot(0, "r1", true), slot(1, "r1", true), slot(2, "r2", true)];
        assert_eq!(steps(3, &top_done, false, "r2", Some(0)), vec![Step::Delete(1)]);
        assert_eq!(steps(3, &top_done, false, "r2", Some(2)), Vec::<Step>::new(), "the partition holds 0 and 1");
        assert_eq!(steps(3, &three, false, "r2", None), Vec::<Step>::new(), "OnDelete");
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "webx-1"), None);
    }
}
