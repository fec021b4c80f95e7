//! The Deployment controller: one ReplicaSet per pod template (named and labelled by the
//! template's hash, `pod-template-hash`), rolled over by the RollingUpdate arithmetic
//! (maxSurge rounded up, maxUnavailable rounded down) or by Recreate; revisions in
//! `deployment.kubernetes.io/revision` (what `kubectl rollout history|undo` read), old
//! ReplicaSets pruned to `revisionHistoryLimit`, and the status and conditions
//! (`Available`, `Progressing` with its deadline) that `kubectl rollout status` follows.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::conn::{is_already_exists, is_conflict, revision};
use super::queue::WorkQueue;
use super::{Ctx, Writes, controller_of, deleting, epoch_secs, int, int_or_percent, now_secs, owner_ref, rfc3339, s};
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

/// A ReplicaSet to resize, by name, and from what (for the event).
#[derive(Clone, Debug, PartialEq)]
pub struct Scale {
    pub replica_set: String,
    pub from: i64,
    pub to: i64,
}

/// A rollback: the template of an old ReplicaSet is current again, so that ReplicaSet
/// takes the newest revision (what `kubectl rollout undo` expects to see).
#[derive(Clone, Debug, PartialEq)]
pub struct Rollback {
    pub replica_set: String,
    /// Its revision until now, for the event.
    pub from_revision: i64,
    /// The annotations to merge into it: the new revision, and the Deployment's change cause.
    pub annotations: Value,
}

/// One step of a rollout, carried out in field order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rollout {
    /// The ReplicaSet of a changed template, created first. A name taken by another
    /// template counts a collision and ends the reconcile instead.
    pub create: Option<Value>,
    /// ReplicaSets to resize, in order.
    pub scale: Vec<Scale>,
    /// The Deployment's status, when it differs from the recorded one.
    pub status: Option<Value>,
    /// The revision annotation the Deployment should carry, when it does not yet.
    pub revision: Option<String>,
    /// Old, empty ReplicaSets beyond `revisionHistoryLimit`, deleted once a rollout completes.
    pub prune: Vec<String>,
    /// Come back after this long to check the progress deadline.
    pub requeue: Option<Duration>,
}

/// What one reconcile of a Deployment should do.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Renumber an old ReplicaSet and stop; the next reconcile rolls to it.
    Rollback(Rollback),
    Rollout(Rollout),
}

/// Decides a Deployment's next step from its spec, its recorded status and the
/// ReplicaSets it owns, so the rollout arithmetic is testable without an API.
pub fn plan(d: &Value, rss: &[Arc<Value>], now: i64) -> Plan {
    let ns = s(d, "/metadata/namespace");
    let name = s(d, "/metadata/name");
    let replicas = d.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0);
    let template = &d["spec"]["template"];
    let collisions = d.pointer("/status/collisionCount").and_then(Value::as_i64);
    let hash = template_hash(template, collisions);
    let mut olds: Vec<&Value> = rss.iter().map(|rs| rs.as_ref()).collect();
    let new_pos = olds.iter().position(|rs| {
        rs.pointer("/metadata/labels").and_then(|l| l.get(HASH_LABEL)).and_then(Value::as_str) == Some(hash.as_str())
            || without_hash(&rs["spec"]["template"]) == *template
    });
    let found = new_pos.map(|i| olds.remove(i));
    olds.sort_by_key(|rs| (rs_revision(rs), s(rs, "/metadata/creationTimestamp").to_string()));
    let max_old_revision = olds.iter().map(|rs| rs_revision(rs)).max().unwrap_or(0);

    if let Some(rs) = found
        && rs_revision(rs) <= max_old_revision
    {
        let mut annotations = json!({REVISION: (max_old_revision + 1).to_string()});
        if let Some(cause) = d.pointer("/metadata/annotations/kubernetes.io~1change-cause") {
            annotations["kubernetes.io/change-cause"] = cause.clone();
        }
        return Plan::Rollback(Rollback {
            replica_set: s(rs, "/metadata/name").to_string(),
            from_revision: rs_revision(rs),
            annotations,
        });
    }

    let paused = d.pointer("/spec/paused").and_then(Value::as_bool).unwrap_or(false);
    let recreate = s(d, "/spec/strategy/type") == "Recreate";
    let (surge, unavailable) = if recreate { (0, replicas) } else { surge_and_unavailable(d, replicas) };
    let old_total: i64 = olds.iter().map(|rs| counts(rs).replicas).sum();
    let mut conds: Vec<Value> = d.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let now_str = rfc3339(now);
    let mut out = Rollout::default();

    // The new ReplicaSet: created on a template change, given the newest revision.
    let created = match found {
        Some(_) => None,
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
            let rs_name = format!("{name}-{hash}");
            let msg = format!("Created new replica set \"{rs_name}\"");
            set_condition(&mut conds, "Progressing", "True", "NewReplicaSetCreated", &msg, &now_str);
            Some(json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs_name, "namespace": ns, "labels": rs_template["metadata"]["labels"],
                             "annotations": annotations, "ownerReferences": [owner_ref(d, "apps/v1", "Deployment")]},
                "spec": {"replicas": size, "minReadySeconds": d["spec"]["minReadySeconds"], "selector": sel, "template": rs_template},
            }))
        }
    };
    let new_rs: Option<&Value> = found.or(created.as_ref());

    // Scale: move one step towards the desired state, then let the ReplicaSets' changes
    // bring the next.
    let mut resize = |rs: &Value, to: i64| {
        out.scale.push(Scale { replica_set: s(rs, "/metadata/name").to_string(), from: counts(rs).replicas, to })
    };
    if let Some(rs) = new_rs {
        let new = counts(rs);
        if paused {
            if old_total == 0 && new.replicas != replicas {
                resize(rs, replicas);
            }
        } else if recreate {
            let old_active: i64 = olds.iter().map(|o| int(o, "/status/replicas")).sum();
            if old_total > 0 {
                for o in olds.iter().filter(|o| counts(o).replicas > 0) {
                    resize(o, 0);
                }
            } else if old_active == 0 && new.replicas != replicas {
                resize(rs, replicas);
            }
        } else {
            let target = new_target(replicas, surge, new.replicas, new.replicas + old_total);
            if target != new.replicas {
                resize(rs, target);
            } else {
                let old_counts: Vec<Counts> = olds.iter().map(|o| counts(o)).collect();
                let targets = old_targets(replicas, unavailable, new, &old_counts);
                for (o, t) in olds.iter().zip(targets) {
                    if t != counts(o).replicas {
                        resize(o, t);
                    }
                }
            }
        }
    }

    // Status, from the ReplicaSets as the cache shows them.
    let all: Vec<&Value> = new_rs.into_iter().chain(olds.iter().copied()).collect();
    let sum = |p: &str| all.iter().map(|rs| int(rs, p)).sum::<i64>();
    let (total, ready, available) =
        (sum("/status/replicas"), sum("/status/readyReplicas"), sum("/status/availableReplicas"));
    let updated = new_rs.map_or(0, |rs| int(rs, "/status/replicas"));
    let prev = &d["status"];
    if available >= replicas - unavailable {
        set_or_keep(
            &mut conds,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            &now_str,
        );
    } else {
        set_or_keep(
            &mut conds,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            &now_str,
        );
    }
    let rs_name = new_rs.map(|rs| s(rs, "/metadata/name").to_string()).unwrap_or_default();
    let deadline = d.pointer("/spec/progressDeadlineSeconds").and_then(Value::as_i64).unwrap_or(600);
    let complete = updated == replicas && available == replicas && total == replicas && new_rs.is_some();
    let progressed = updated > int(prev, "/updatedReplicas")
        || available > int(prev, "/availableReplicas")
        || ready > int(prev, "/readyReplicas");
    let progressing = conds.iter().find(|c| c["type"] == "Progressing").cloned();
    if paused {
        set_or_keep(&mut conds, "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused", &now_str);
    } else if progressing.as_ref().is_some_and(|c| c["reason"] == "DeploymentPaused") {
        set_condition(&mut conds, "Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed", &now_str);
    } else if complete {
        set_or_keep(
            &mut conds,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            &now_str,
        );
    } else if progressed || progressing.as_ref().is_none_or(|c| c["reason"] == "NewReplicaSetAvailable") {
        set_condition(
            &mut conds,
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            &format!("ReplicaSet \"{rs_name}\" is progressing."),
            &now_str,
        );
        out.requeue = Some(Duration::from_secs(deadline.max(0) as u64 + 1));
    } else if let Some(c) = &progressing
        && c["reason"] != "ProgressDeadlineExceeded"
    {
        let since = epoch_secs(s(c, "/lastUpdateTime")).unwrap_or(0);
        let left = since + deadline - now;
        if left < 0 {
            set_condition(
                &mut conds,
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                &format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                &now_str,
            );
        } else {
            out.requeue = Some(Duration::from_secs(left as u64 + 1));
        }
    }
    let status = json!({
        "observedGeneration": d["metadata"]["generation"], "replicas": total, "updatedReplicas": updated,
        "readyReplicas": ready, "availableReplicas": available, "unavailableReplicas": (replicas - available).max(0),
        "conditions": conds, "collisionCount": prev.get("collisionCount"),
    });
    if !same_status(prev, &status) {
        out.status = Some(strip_nulls(status));
    }
    if let Some(rs) = new_rs {
        let want = rs_revision(rs).to_string();
        if d.pointer("/metadata/annotations").and_then(|a| a.get(REVISION)).and_then(Value::as_str)
            != Some(want.as_str())
        {
            out.revision = Some(want);
        }
    }
    if complete {
        out.prune = beyond_history(d, &olds);
    }
    out.create = created;
    Plan::Rollout(out)
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

/// The ReplicaSets `d` controls, after adopting the orphans its selector matches.
async fn owned_replica_sets(ctx: &Ctx, d: &Value, selector: &LabelSelector) -> anyhow::Result<Vec<Arc<Value>>> {
    let ns = s(d, "/metadata/namespace");
    let uid = s(d, "/metadata/uid");
    let mut rss: Vec<Arc<Value>> = Vec::new();
    for rs in ctx.replicasets.list_in(ns) {
        match controller_of(&rs) {
            Some(o) if o["uid"] == uid => rss.push(rs),
            None if selector.matches_object(&rs) && !deleting(&rs) => {
                let path = format!("/apis/apps/v1/namespaces/{ns}/replicasets/{}", s(&rs, "/metadata/name"));
                let patch = json!({"metadata": {"resourceVersion": rs["metadata"]["resourceVersion"],
                    "ownerReferences": [owner_ref(d, "apps/v1", "Deployment")]}});
                rss.push(Arc::new(ctx.conn.merge_patch(&path, &patch).await?));
            }
            _ => {}
        }
    }
    Ok(rss)
}

async fn reconcile(ctx: &Ctx, writes: &Writes, key: &str) -> anyhow::Result<Option<Duration>> {
    writes.settle(key, &ctx.replicasets).await;
    let Some(d) = ctx.deployments.get(key) else { return Ok(None) };
    if deleting(&d) {
        return Ok(None);
    }
    let ns = s(&d, "/metadata/namespace");
    let name = s(&d, "/metadata/name");
    let selector = LabelSelector::from_object(&d["spec"]["selector"]);
    if selector.is_empty() {
        return Ok(None);
    }
    let rss = owned_replica_sets(ctx, &d, &selector).await?;
    let p = match plan(&d, &rss, now_secs()) {
        Plan::Rollback(r) => {
            let path = format!("/apis/apps/v1/namespaces/{ns}/replicasets/{}", r.replica_set);
            let updated = ctx.conn.merge_patch(&path, &json!({"metadata": {"annotations": r.annotations}})).await?;
            writes.note(key, revision(&updated));
            let msg = format!("Rolled back deployment \"{name}\" to revision {}", r.from_revision);
            ctx.events.emit(COMPONENT, &d, "Normal", "DeploymentRollback", &msg);
            return Ok(None);
        }
        Plan::Rollout(p) => p,
    };

    let mut created = None;
    if let Some(rs) = &p.create {
        let path = format!("/apis/apps/v1/namespaces/{ns}/replicasets");
        match ctx.conn.create(&path, rs).await {
            Ok(c) => {
                writes.note(key, revision(&c));
                let msg =
                    format!("Scaled up replica set {} from 0 to {}", s(&c, "/metadata/name"), counts(rs).replicas);
                ctx.events.emit(COMPONENT, &d, "Normal", "ScalingReplicaSet", &msg);
                created = Some(c);
            }
            Err(e) if is_conflict(&e) || is_already_exists(&e) => {
                // A ReplicaSet of that name that is not this template's: count a collision.
                let c = d.pointer("/status/collisionCount").and_then(Value::as_i64).unwrap_or(0) + 1;
                let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}/status");
                ctx.conn.merge_patch(&path, &json!({"status": {"collisionCount": c}})).await?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
    // The plan names ReplicaSets it was given, or the one just created.
    for step in &p.scale {
        let by_name = |rs: &&Value| s(rs, "/metadata/name") == step.replica_set;
        if let Some(rs) = created.iter().chain(rss.iter().map(|rs| rs.as_ref())).find(by_name) {
            scale(ctx, writes, key, &d, rs, step.to).await?;
        }
    }
    if let Some(status) = p.status {
        let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}/status");
        let body = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": d["metadata"]["resourceVersion"]},
            "spec": d["spec"], "status": status});
        ctx.conn.replace(&path, &body).await?;
    }
    if let Some(want) = p.revision {
        let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}");
        ctx.conn.merge_patch(&path, &json!({"metadata": {"annotations": {REVISION: want}}})).await?;
    }
    for rs in &p.prune {
        let path = format!("/apis/apps/v1/namespaces/{ns}/replicasets/{rs}");
        ctx.conn.delete(&path, &json!({"propagationPolicy": "Background"})).await?;
    }
    // Pods becoming available after minReadySeconds show up as ReplicaSet status changes.
    Ok(p.requeue)
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

/// The oldest empty ReplicaSets beyond `revisionHistoryLimit` (default 10), by name.
fn beyond_history(d: &Value, olds: &[&Value]) -> Vec<String> {
    let limit = d.pointer("/spec/revisionHistoryLimit").and_then(Value::as_i64).unwrap_or(10).max(0) as usize;
    let empty: Vec<&Value> = olds
        .iter()
        .copied()
        .filter(|rs| counts(rs).replicas == 0 && int(rs, "/status/replicas") == 0 && !deleting(rs))
        .collect();
    if empty.len() <= limit {
        return Vec::new();
    }
    empty[..empty.len() - limit].iter().map(|rs| s(rs, "/metadata/name").to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(replicas: i64, available: i64) -> Counts {
        Counts { replicas, available }
    }

    const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    fn pod_template(image: &str) -> Value {
        json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}})
    }

    /// Deployment `web` of image x:2 with `replicas`, and `extra` merged into its spec.
    fn deployment(replicas: i64, extra: Value) -> Value {
        let mut d = json!({"metadata": {"name": "web", "namespace": "default", "uid": "d1", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": pod_template("x:2")}});
        for (k, v) in extra.as_object().expect("extra is an object") {
            d["spec"][k] = v.clone();
        }
        d
    }

    /// ReplicaSet `name` of `image`'s template at `rev`: `replicas` wanted, `have` pods, `available` of them available.
    fn replica_set(name: &str, image: &str, rev: i64, replicas: i64, have: i64, available: i64) -> Arc<Value> {
        let mut t = pod_template(image);
        t["metadata"]["labels"][HASH_LABEL] = json!(name);
        Arc::new(json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "7",
                         "creationTimestamp": "2026-01-01T00:00:00Z", "annotations": {REVISION: rev.to_string()}},
            "spec": {"replicas": replicas, "template": t},
            "status": {"replicas": have, "readyReplicas": available, "availableReplicas": available},
        }))
    }

    fn new(replicas: i64, have: i64, available: i64) -> Arc<Value> {
        replica_set("new", "x:2", 2, replicas, have, available)
    }

    fn old(replicas: i64, have: i64, available: i64) -> Arc<Value> {
        replica_set("old", "x:1", 1, replicas, have, available)
    }

    fn rollout(p: Plan) -> Rollout {
        match p {
            Plan::Rollout(r) => r,
            Plan::Rollback(r) => panic!("expected a rollout, got a rollback of {}", r.replica_set),
        }
    }

    fn condition<'a>(status: &'a Value, kind: &str) -> (&'a str, &'a str) {
        let conds = status["conditions"].as_array().expect("conditions");
        let c = conds.iter().find(|c| c["type"] == kind).expect("the condition is set");
        (s(c, "/status"), s(c, "/reason"))
    }

    /// (case, Deployment, its ReplicaSets, the size of a ReplicaSet to create, the resizes)
    type ScaleCase = (&'static str, Value, Vec<Arc<Value>>, Option<i64>, Vec<(&'static str, i64, i64)>);

    #[test]
    fn plan_creates_and_scales_replica_sets() {
        let rolling = |surge: Value, unavailable: Value| {
            json!({"strategy": {"type": "RollingUpdate",
                                "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}})
        };
        let quarter = rolling(json!("25%"), json!("25%"));
        let no_surge = rolling(json!(0), json!(1));
        let recreate = json!({"strategy": {"type": "Recreate"}});
        let paused = json!({"paused": true});
        let plain = json!({});
        let d = |replicas: i64, spec: &Value| deployment(replicas, spec.clone());
        let cases: Vec<ScaleCase> = vec![
            ("first rollout: new set at full size", d(3, &plain), vec![], Some(3), vec![]),
            ("new template: surge, shrink old", d(10, &quarter), vec![old(10, 10, 10)], Some(3), vec![("old", 10, 8)]),
            ("scale up", d(5, &plain), vec![new(3, 3, 3)], None, vec![("new", 3, 5)]),
            ("scale down", d(2, &plain), vec![new(5, 5, 5)], None, vec![("new", 5, 2)]),
            ("surge used up", d(10, &quarter), vec![new(3, 3, 0), old(10, 10, 10)], None, vec![("old", 10, 8)]),
            ("old shrank: new grows", d(10, &quarter), vec![new(3, 3, 3), old(8, 8, 8)], None, vec![("new", 3, 5)]),
            ("unavailable new hold old", d(10, &quarter), vec![new(5, 5, 0), old(8, 8, 8)], None, vec![]),
            ("no surge: old goes first", d(3, &no_surge), vec![new(0, 0, 0), old(3, 3, 3)], None, vec![("old", 3, 2)]),
            ("no surge: new takes room", d(3, &no_surge), vec![new(0, 0, 0), old(2, 2, 2)], None, vec![("new", 0, 1)]),
            ("rolled out", d(3, &plain), vec![new(3, 3, 3), old(0, 0, 0)], None, vec![]),
            ("Recreate: new template", d(3, &recreate), vec![old(3, 3, 3)], Some(0), vec![("old", 3, 0)]),
            ("Recreate: old to zero", d(3, &recreate), vec![new(0, 0, 0), old(3, 3, 3)], None, vec![("old", 3, 0)]),
            ("Recreate: old pods going", d(3, &recreate), vec![new(0, 0, 0), old(0, 2, 0)], None, vec![]),
            ("Recreate: old gone", d(3, &recreate), vec![new(0, 0, 0), old(0, 0, 0)], None, vec![("new", 0, 3)]),
            ("paused: new template waits", d(3, &paused), vec![old(3, 3, 3)], None, vec![]),
            ("paused: rollout stands", d(3, &paused), vec![new(1, 1, 1), old(2, 2, 2)], None, vec![]),
            ("paused: scaling applies", d(3, &paused), vec![new(2, 2, 2)], None, vec![("new", 2, 3)]),
        ];
        for (case, d, rss, size, want) in cases {
            let r = rollout(plan(&d, &rss, T0));
            assert_eq!(r.create.as_ref().map(|rs| int(rs, "/spec/replicas")), size, "{case}: created size");
            let got: Vec<(&str, i64, i64)> =
                r.scale.iter().map(|sc| (sc.replica_set.as_str(), sc.from, sc.to)).collect();
            assert_eq!(got, want, "{case}: resizes");
        }
    }

    #[test]
    fn plan_names_labels_and_numbers_a_new_replica_set() {
        let mut d = deployment(3, json!({}));
        d["status"] = json!({"replicas": 3, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3});
        let hash = template_hash(&d["spec"]["template"], None);
        let r = rollout(plan(&d, &[old(3, 3, 3)], T0));
        let rs = r.create.expect("a ReplicaSet for the new template");
        assert_eq!(s(&rs, "/metadata/name"), format!("web-{hash}"));
        assert_eq!(rs["metadata"]["labels"][HASH_LABEL], json!(hash));
        assert_eq!(rs["spec"]["selector"]["matchLabels"], json!({"app": "web", HASH_LABEL: hash}));
        assert_eq!(rs["metadata"]["annotations"][REVISION], "2", "one above the old set's revision");
        assert_eq!(rs["metadata"]["ownerReferences"][0]["uid"], "d1");
        let status = r.status.expect("a status to write");
        assert_eq!(condition(&status, "Progressing"), ("True", "NewReplicaSetCreated"));
        assert_eq!(r.requeue, Some(Duration::from_secs(601)), "the default progress deadline");
        assert_eq!(r.revision.as_deref(), Some("2"));
    }

    #[test]
    fn plan_rolls_back_by_renumbering_the_old_replica_set() {
        let mut d = deployment(3, json!({}));
        d["metadata"]["annotations"] = json!({"kubernetes.io/change-cause": "undo"});
        let back = replica_set("web-back", "x:2", 1, 0, 0, 0);
        let p = plan(&d, &[back, replica_set("web-old", "x:1", 2, 3, 3, 3)], T0);
        assert_eq!(
            p,
            Plan::Rollback(Rollback {
                replica_set: "web-back".into(),
                from_revision: 1,
                annotations: json!({REVISION: "3", "kubernetes.io/change-cause": "undo"}),
            })
        );
    }

    #[test]
    fn plan_reports_a_complete_rollout_then_writes_nothing() {
        let d = deployment(3, json!({"revisionHistoryLimit": 1}));
        let rss = [
            new(3, 3, 3),
            replica_set("web-a", "x:0", 0, 0, 0, 0),
            replica_set("web-b", "x:1", 1, 0, 0, 0),
            replica_set("web-c", "x:1", 1, 0, 2, 0),
        ];
        let r = rollout(plan(&d, &rss, T0));
        assert_eq!(r.scale, vec![]);
        let status = r.status.expect("a first status");
        assert_eq!(
            (&status["replicas"], &status["updatedReplicas"], &status["availableReplicas"]),
            (&json!(5), &json!(3), &json!(3))
        );
        assert_eq!(condition(&status, "Available"), ("True", "MinimumReplicasAvailable"));
        assert_eq!(condition(&status, "Progressing"), ("True", "ReplicaSetUpdated"), "web-c still has pods");
        let rss = [rss[0].clone(), rss[1].clone(), rss[2].clone()];
        let r = rollout(plan(&d, &rss, T0));
        let status = r.status.expect("complete now");
        assert_eq!(condition(&status, "Progressing"), ("True", "NewReplicaSetAvailable"));
        assert_eq!(r.prune, vec!["web-a".to_string()], "the oldest empty set beyond the limit of 1");
        assert_eq!(r.revision.as_deref(), Some("2"));
        let mut steady = d.clone();
        steady["status"] = status;
        steady["metadata"]["annotations"] = json!({REVISION: "2"});
        let r = rollout(plan(&steady, &rss, T0 + 5));
        assert_eq!((r.status, r.revision, r.requeue), (None, None, None), "a steady state writes nothing");
    }

    #[test]
    fn plan_times_out_a_stalled_rollout() {
        let mut d = deployment(3, json!({"progressDeadlineSeconds": 60}));
        d["status"] = json!({"updatedReplicas": 3, "availableReplicas": 1, "readyReplicas": 1, "conditions": [
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
             "lastUpdateTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        let rss = [new(3, 3, 1)];
        let r = rollout(plan(&d, &rss, T0 + 30));
        assert_eq!(r.requeue, Some(Duration::from_secs(31)), "30 s left");
        let r = rollout(plan(&d, &rss, T0 + 61));
        let status = r.status.expect("the deadline passed");
        assert_eq!(condition(&status, "Progressing"), ("False", "ProgressDeadlineExceeded"));
        assert_eq!(r.requeue, None);
        let paused = rollout(plan(&deployment(3, json!({"paused": true})), &rss, T0));
        assert_eq!(condition(&paused.status.expect("paused"), "Progressing"), ("Unknown", "DeploymentPaused"));
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
