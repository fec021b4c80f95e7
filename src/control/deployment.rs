//! The Deployment controller: one ReplicaSet per pod template (named and labelled by the
//! template's hash, `pod-template-hash`), rolled over by the RollingUpdate arithmetic
//! (maxSurge rounded up, maxUnavailable rounded down) or by Recreate; revisions in
//! `deployment.kubernetes.io/revision` (what `kubectl rollout history|undo` read), old
//! ReplicaSets pruned to `revisionHistoryLimit`, and the status and conditions
//! (`Available`, `Progressing` with its deadline) that `kubectl rollout status` follows.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::conn::{is_conflict, revision};
use super::queue::WorkQueue;
use super::{
    Ctx, Writes, controller_of, deleting, epoch_secs, int, int_or_percent, now_rfc3339, now_secs, owner_ref, s,
};
use crate::api::selector::LabelSelector;

const COMPONENT: &str = "deployment-controller";
const HASH_LABEL: &str = "pod-template-hash";
const REVISION: &str = "deployment.kubernetes.io/revision";

/// The replica counts of one ReplicaSet that the rollout arithmetic reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Counts {
    /// `spec.replicas`.
    pub replicas: i64,
    /// `status.availableReplicas`.
    pub available: i64,
}

/// RollingUpdate, step one: the new ReplicaSet's size, growing into the room maxSurge
/// leaves above `replicas`.
pub fn new_target(replicas: i64, max_surge: i64, new: i64, total: i64) -> i64 {
    if new >= replicas {
        return replicas;
    }
    let room = replicas + max_surge - total;
    if room <= 0 { new } else { new + room.min(replicas - new) }
}

/// RollingUpdate, step two: the old ReplicaSets' sizes (oldest first), shrunk as far as
/// maxUnavailable allows: first their unavailable pods, then available ones.
pub fn old_targets(replicas: i64, max_unavailable: i64, new: Counts, olds: &[Counts]) -> Vec<i64> {
    let mut targets: Vec<i64> = olds.iter().map(|o| o.replicas).collect();
    let total: i64 = new.replicas + targets.iter().sum::<i64>();
    let min_available = replicas - max_unavailable;
    let new_unavailable = new.replicas - new.available;
    let mut room = total - min_available - new_unavailable;
    if room <= 0 {
        return targets;
    }
    for (t, o) in targets.iter_mut().zip(olds) {
        let unhealthy = (*t - o.available).max(0);
        let down = unhealthy.min(room);
        *t -= down;
        room -= down;
    }
    let available: i64 = new.available + olds.iter().map(|o| o.available).sum::<i64>();
    let mut down_total = available - min_available;
    for t in targets.iter_mut() {
        if down_total <= 0 {
            break;
        }
        let down = (*t).min(down_total);
        *t -= down;
        down_total -= down;
    }
    targets
}

/// maxSurge and maxUnavailable resolved against `replicas`; never both zero.
pub fn surge_and_unavailable(d: &Value, replicas: i64) -> (i64, i64) {
    let ru = &d["spec"]["strategy"]["rollingUpdate"];
    let surge = int_or_percent(&ru["maxSurge"], replicas, true, 1).max(0);
    let unavailable = int_or_percent(&ru["maxUnavailable"], replicas, false, 1).max(0);
    if surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable) }
}

/// The hash that names a template's ReplicaSet: FNV-1a over the template's canonical JSON
/// (and the collision count, once there was a collision: 0 hashes as none), spelled in upstream's alphabet.
pub fn template_hash(template: &Value, collisions: Option<i64>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(template.to_string().as_bytes());
    if let Some(c) = collisions.filter(|c| *c > 0) {
        feed(c.to_string().as_bytes());
    }
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string().bytes().map(|b| SAFE[usize::from(b) % SAFE.len()] as char).collect()
}

fn without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove(HASH_LABEL);
        if labels.is_empty()
            && let Some(meta) = t.pointer_mut("/metadata").and_then(Value::as_object_mut)
        {
            meta.remove("labels");
        }
    }
    t
}

fn rs_revision(rs: &Value) -> i64 {
    rs.pointer("/metadata/annotations")
        .and_then(|a| a.get(REVISION))
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn counts(rs: &Value) -> Counts {
    Counts {
        replicas: rs.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0),
        available: rs.pointer("/status/availableReplicas").and_then(Value::as_i64).unwrap_or(0),
    }
}

/// Sets a condition, keeping its transition time when its status does not change.
pub fn set_condition(conds: &mut Vec<Value>, kind: &str, status: &str, reason: &str, message: &str, now: &str) {
    let old = conds.iter().position(|c| c["type"] == kind);
    let transition = match old.map(|i| &conds[i]) {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let cond = json!({"type": kind, "status": status, "reason": reason, "message": message,
                      "lastUpdateTime": now, "lastTransitionTime": transition});
    match old {
        Some(i) => conds[i] = cond,
        None => conds.push(cond),
    }
}

/// Registers the handlers and starts the workers.
pub fn start(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    super::follow(&queue, &ctx.deployments, &ctx.replicasets, "Deployment");
    super::owner_workers(
        COMPONENT,
        queue,
        2,
        ctx,
        |ctx, writes, key| async move { reconcile(&ctx, &writes, &key).await },
    )
}

async fn scale(ctx: &Ctx, writes: &Writes, key: &str, d: &Value, rs: &Value, to: i64) -> anyhow::Result<()> {
    let from = counts(rs).replicas;
    let path =
        format!("/apis/apps/v1/namespaces/{}/replicasets/{}", s(rs, "/metadata/namespace"), s(rs, "/metadata/name"));
    let patch = json!({"metadata": {"resourceVersion": rs["metadata"]["resourceVersion"]}, "spec": {"replicas": to}});
    let updated = ctx.conn.merge_patch(&path, &patch).await?;
    writes.note(key, revision(&updated));
    let verb = if to > from { "up" } else { "down" };
    let msg = format!("Scaled {verb} replica set {} from {from} to {to}", s(rs, "/metadata/name"));
    ctx.events.emit(COMPONENT, d, "Normal", "ScalingReplicaSet", &msg);
    Ok(())
}

async fn reconcile(ctx: &Ctx, writes: &Writes, key: &str) -> anyhow::Result<Option<Duration>> {
    writes.settle(key, &ctx.replicasets).await;
    let Some(d) = ctx.deployments.get(key) else { return Ok(None) };
    if deleting(&d) {
        return Ok(None);
    }
    let ns = s(&d, "/metadata/namespace");
    let name = s(&d, "/metadata/name");
    let uid = s(&d, "/metadata/uid");
    let replicas = d.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0);
    let selector = LabelSelector::from_object(&d["spec"]["selector"]);
    if selector.is_empty() {
        return Ok(None);
    }
    let mut rss: Vec<Arc<Value>> = Vec::new();
    for rs in ctx.replicasets.list_in(ns) {
        match controller_of(&rs) {
            Some(o) if o["uid"] == uid => rss.push(rs),
            None if selector.matches_object(&rs) && !deleting(&rs) => {
                let path = format!("/apis/apps/v1/namespaces/{ns}/replicasets/{}", s(&rs, "/metadata/name"));
                let patch = json!({"metadata": {"resourceVersion": rs["metadata"]["resourceVersion"],
                    "ownerReferences": [owner_ref(&d, "apps/v1", "Deployment")]}});
                rss.push(Arc::new(ctx.conn.merge_patch(&path, &patch).await?));
            }
            _ => {}
        }
    }
    let template = &d["spec"]["template"];
    let collisions = d.pointer("/status/collisionCount").and_then(Value::as_i64);
    let hash = template_hash(template, collisions);
    let new_pos = rss.iter().position(|rs| {
        rs.pointer("/metadata/labels").and_then(|l| l.get(HASH_LABEL)).and_then(Value::as_str) == Some(hash.as_str())
            || without_hash(&rs["spec"]["template"]) == *template
    });
    let new_rs = new_pos.map(|i| rss.remove(i));
    let mut olds = rss;
    olds.sort_by_key(|rs| (rs_revision(rs), s(rs, "/metadata/creationTimestamp").to_string()));
    let max_old_revision = olds.iter().map(|rs| rs_revision(rs)).max().unwrap_or(0);
    let paused = d.pointer("/spec/paused").and_then(Value::as_bool).unwrap_or(false);
    let recreate = s(&d, "/spec/strategy/type") == "Recreate";
    let (surge, unavailable) = if recreate { (0, replicas) } else { surge_and_unavailable(&d, replicas) };
    let old_total: i64 = olds.iter().map(|rs| counts(rs).replicas).sum();
    let mut conds: Vec<Value> = d.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let now = now_rfc3339();

    // The new ReplicaSet: created on a template change, given the newest revision.
    let new_rs = match new_rs {
        Some(rs) => Some(rs),
        None if paused => None,
        None => {
            let mut rs_template = template.clone();
            rs_template["metadata"]["labels"][HASH_LABEL] = json!(hash);
            let mut sel = d["spec"]["selector"].clone();
            sel["matchLabels"][HASH_LABEL] = json!(hash);
            let size = if recreate {
                if old_total > 0 { 0 } else { replicas }
            } else {
                new_target(replicas, surge, 0, old_total)
            };
            let mut annotations = d.pointer("/metadata/annotations").cloned().unwrap_or(json!({}));
            if let Some(a) = annotations.as_object_mut() {
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
            }
            annotations[REVISION] = json!((max_old_revision + 1).to_string());
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": format!("{name}-{hash}"), "namespace": ns, "labels": rs_template["metadata"]["labels"],
                             "annotations": annotations, "ownerReferences": [owner_ref(&d, "apps/v1", "Deployment")]},
                "spec": {"replicas": size, "minReadySeconds": d["spec"]["minReadySeconds"], "selector": sel, "template": rs_template},
            });
            let path = format!("/apis/apps/v1/namespaces/{ns}/replicasets");
            match ctx.conn.create(&path, &rs).await {
                Ok(created) => {
                    writes.note(key, revision(&created));
                    let rs_name = s(&created, "/metadata/name").to_string();
                    ctx.events.emit(
                        COMPONENT,
                        &d,
                        "Normal",
                        "ScalingReplicaSet",
                        &format!("Scaled up replica set {rs_name} from 0 to {size}"),
                    );
                    let msg = format!("Created new replica set \"{rs_name}\"");
                    set_condition(&mut conds, "Progressing", "True", "NewReplicaSetCreated", &msg, &now);
                    Some(Arc::new(created))
                }
                Err(e) if is_conflict(&e) || e.to_string().contains("AlreadyExists") => {
                    // A ReplicaSet of that name that is not this template's: count a collision.
                    let c = collisions.unwrap_or(0) + 1;
                    let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}/status");
                    ctx.conn.merge_patch(&path, &json!({"status": {"collisionCount": c}})).await?;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    };

    if let Some(rs) = &new_rs
        && rs_revision(rs) <= max_old_revision
    {
        // A rollback: the template of an old ReplicaSet is current again.
        let path = format!("/apis/apps/v1/namespaces/{ns}/replicasets/{}", s(rs, "/metadata/name"));
        let mut annotations = json!({REVISION: (max_old_revision + 1).to_string()});
        if let Some(cause) = d.pointer("/metadata/annotations/kubernetes.io~1change-cause") {
            annotations["kubernetes.io/change-cause"] = cause.clone();
        }
        let updated = ctx.conn.merge_patch(&path, &json!({"metadata": {"annotations": annotations}})).await?;
        writes.note(key, revision(&updated));
        ctx.events.emit(
            COMPONENT,
            &d,
            "Normal",
            "DeploymentRollback",
            &format!("Rolled back deployment \"{name}\" to revision {}", rs_revision(rs)),
        );
        return Ok(None);
    }

    // Scale: move one step towards the desired state, then let the ReplicaSets' changes
    // bring the next.
    if let Some(rs) = &new_rs {
        let new = counts(rs);
        if paused {
            if old_total == 0 && new.replicas != replicas {
                scale(ctx, writes, key, &d, rs, replicas).await?;
            }
        } else if recreate {
            let old_active: i64 = olds.iter().map(|o| int(o, "/status/replicas")).sum();
            if old_total > 0 {
                for o in olds.iter().filter(|o| counts(o).replicas > 0) {
                    scale(ctx, writes, key, &d, o, 0).await?;
                }
            } else if old_active == 0 && new.replicas != replicas {
                scale(ctx, writes, key, &d, rs, replicas).await?;
            }
        } else {
            let target = new_target(replicas, surge, new.replicas, new.replicas + old_total);
            if target != new.replicas {
                scale(ctx, writes, key, &d, rs, target).await?;
            } else {
                let old_counts: Vec<Counts> = olds.iter().map(|o| counts(o)).collect();
                let targets = old_targets(replicas, unavailable, new, &old_counts);
                for (o, t) in olds.iter().zip(targets) {
                    if t != counts(o).replicas {
                        scale(ctx, writes, key, &d, o, t).await?;
                    }
                }
            }
        }
    }

    // Status, from the ReplicaSets as the cache shows them.
    let all: Vec<&Arc<Value>> = new_rs.iter().chain(olds.iter()).collect();
    let sum = |p: &str| all.iter().map(|rs| int(rs, p)).sum::<i64>();
    let (total, ready, available) =
        (sum("/status/replicas"), sum("/status/readyReplicas"), sum("/status/availableReplicas"));
    let updated = new_rs.as_ref().map_or(0, |rs| int(rs, "/status/replicas"));
    let prev = &d["status"];
    if available >= replicas - unavailable {
        set_or_keep(
            &mut conds,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            &now,
        );
    } else {
        set_or_keep(
            &mut conds,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            &now,
        );
    }
    let rs_name = new_rs.as_ref().map(|rs| s(rs, "/metadata/name").to_string()).unwrap_or_default();
    let deadline = d.pointer("/spec/progressDeadlineSeconds").and_then(Value::as_i64).unwrap_or(600);
    let complete = updated == replicas && available == replicas && total == replicas && new_rs.is_some();
    let progressed = updated > int(prev, "/updatedReplicas")
        || available > int(prev, "/availableReplicas")
        || ready > int(prev, "/readyReplicas");
    let mut requeue = None;
    let progressing = conds.iter().find(|c| c["type"] == "Progressing").cloned();
    if paused {
        set_or_keep(&mut conds, "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused", &now);
    } else if progressing.as_ref().is_some_and(|c| c["reason"] == "DeploymentPaused") {
        set_condition(&mut conds, "Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed", &now);
    } else if complete {
        set_or_keep(
            &mut conds,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            &now,
        );
    } else if progressed || progressing.as_ref().is_none_or(|c| c["reason"] == "NewReplicaSetAvailable") {
        set_condition(
            &mut conds,
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            &format!("ReplicaSet \"{rs_name}\" is progressing."),
            &now,
        );
        requeue = Some(Duration::from_secs(deadline.max(0) as u64 + 1));
    } else if let Some(c) = &progressing
        && c["reason"] != "ProgressDeadlineExceeded"
    {
        let since = epoch_secs(s(c, "/lastUpdateTime")).unwrap_or(0);
        let left = since + deadline - now_secs();
        if left < 0 {
            set_condition(
                &mut conds,
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                &format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                &now,
            );
        } else {
            requeue = Some(Duration::from_secs(left as u64 + 1));
        }
    }
    let status = json!({
        "observedGeneration": d["metadata"]["generation"], "replicas": total, "updatedReplicas": updated,
        "readyReplicas": ready, "availableReplicas": available, "unavailableReplicas": (replicas - available).max(0),
        "conditions": conds, "collisionCount": prev.get("collisionCount"),
    });
    if !same_status(prev, &status) {
        let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}/status");
        ctx.conn
            .replace(
                &path,
                &json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": d["metadata"]["resourceVersion"]},
            "spec": d["spec"], "status": strip_nulls(status)}),
            )
            .await?;
    }
    if let Some(rs) = &new_rs {
        let want = rs_revision(rs).to_string();
        if d.pointer("/metadata/annotations").and_then(|a| a.get(REVISION)).and_then(Value::as_str)
            != Some(want.as_str())
        {
            let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}");
            ctx.conn.merge_patch(&path, &json!({"metadata": {"annotations": {REVISION: want}}})).await?;
        }
    }
    if complete {
        prune_history(ctx, &d, &olds).await?;
    }
    // Pods becoming available after minReadySeconds show up as ReplicaSet status changes.
    Ok(requeue)
}

/// Sets a condition only if its status or reason changes, so a steady state writes nothing.
fn set_or_keep(conds: &mut Vec<Value>, kind: &str, status: &str, reason: &str, message: &str, now: &str) {
    if conds.iter().any(|c| c["type"] == kind && c["status"] == status && c["reason"] == reason) {
        return;
    }
    set_condition(conds, kind, status, reason, message, now);
}

fn strip_nulls(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.retain(|_, x| !x.is_null());
    }
    v
}

fn same_status(prev: &Value, next: &Value) -> bool {
    [
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
        "conditions",
    ]
    .iter()
    .all(|f| {
        let (a, b) = (prev.get(*f).cloned().unwrap_or(Value::Null), next.get(*f).cloned().unwrap_or(Value::Null));
        a == b || (a.is_null() && b == 0) || (b.is_null() && a == 0)
    })
}

/// Deletes the oldest empty ReplicaSets beyond `revisionHistoryLimit` (default 10).
async fn prune_history(ctx: &Ctx, d: &Value, olds: &[Arc<Value>]) -> anyhow::Result<()> {
    let limit = d.pointer("/spec/revisionHistoryLimit").and_then(Value::as_i64).unwrap_or(10).max(0) as usize;
    let empty: Vec<&Arc<Value>> = olds
        .iter()
        .filter(|rs| counts(rs).replicas == 0 && int(rs, "/status/replicas") == 0 && !deleting(rs))
        .collect();
    if empty.len() <= limit {
        return Ok(());
    }
    for rs in &empty[..empty.len() - limit] {
        let path = format!(
            "/apis/apps/v1/namespaces/{}/replicasets/{}",
            s(rs, "/metadata/namespace"),
            s(rs, "/metadata/name")
        );
        ctx.conn.delete(&path, &json!({"propagationPolicy": "Background"})).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(replicas: i64, available: i64) -> Counts {
        Counts { replicas, available }
    }

    #[test]
    fn the_new_replica_set_grows_into_the_surge() {
        // (replicas, maxSurge, new, total) -> new target
        let cases = [
            (10, 3, 0, 10, 3),   // start: surge 3 above 10
            (10, 3, 3, 13, 3),   // full: wait for the olds to shrink
            (10, 3, 3, 11, 5),   // olds shrank by 2
            (10, 0, 0, 10, 0),   // no surge: the olds must shrink first
            (10, 3, 12, 12, 10), // scaled down below the new set
            (3, 1, 3, 4, 3),     // done
        ];
        for (replicas, surge, new, total, want) in cases {
            assert_eq!(new_target(replicas, surge, new, total), want, "{replicas} {surge} {new} {total}");
        }
    }

    #[test]
    fn the_old_replica_sets_shrink_within_max_unavailable() {
        // 10 replicas, maxUnavailable 2, new set of 3 with none available yet: the old set
        // (10 available) may lose 2.
        assert_eq!(old_targets(10, 2, c(3, 0), &[c(10, 10)]), vec![8]);
        // Unavailable old pods go first, within the room left (13 - 8 - 3 = 2); the 7
        // available are already below the 8 required, so no available pod goes.
        assert_eq!(old_targets(10, 2, c(3, 0), &[c(4, 1), c(6, 6)]), vec![2, 6]);
        // A surged new pod became available: the olds can shrink by one.
        assert_eq!(old_targets(10, 0, c(6, 6), &[c(5, 5)]), vec![4]);
        // No surge above the total yet: nothing may go.
        assert_eq!(old_targets(10, 0, c(5, 5), &[c(5, 5)]), vec![5]);
        // Nothing may go unavailable and nothing new is up: wait.
        assert_eq!(old_targets(10, 0, c(1, 0), &[c(10, 10)]), vec![10]);
    }

    #[test]
    fn percentages_round_surge_up_and_unavailable_down() {
        let d = json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}});
        assert_eq!(surge_and_unavailable(&d, 10), (3, 2));
        let zero = json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "10%"}}}});
        assert_eq!(surge_and_unavailable(&zero, 5), (0, 1), "never both zero");
    }

    #[test]
    fn template_hashes_are_stable_and_change_with_the_template() {
        let t = json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}});
        let mut t2 = t.clone();
        t2["spec"]["containers"][0]["image"] = json!("x:2");
        assert_eq!(template_hash(&t, None), template_hash(&t.clone(), None));
        assert_ne!(template_hash(&t, None), template_hash(&t2, None));
        assert_ne!(template_hash(&t, None), template_hash(&t, Some(1)));
        assert_eq!(template_hash(&t, None), template_hash(&t, Some(0)));
        assert!(template_hash(&t, None).chars().all(|ch| "bcdfghjklmnpqrstvwxz2456789".contains(ch)));
    }
}
