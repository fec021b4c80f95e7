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
use super::{Ctx, Writes, deleting, int, now_secs, owner_ref, pod_available, pod_ready_since, s};

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

fn pod_revision(pod: &Value) -> Option<&str> {
    pod.pointer("/metadata/labels").and_then(|l| l.get(HASH_LABEL)).and_then(Value::as_str)
}

/// The revision hashes the set's pods still run, so history keeps their ControllerRevisions.
pub fn revisions_in_use(set: &Value, pods: &[Arc<Value>]) -> HashSet<String> {
    let name = s(set, "/metadata/name");
    pods.iter()
        .filter(|p| ordinal_of(name, s(p, "/metadata/name")).is_some())
        .filter_map(|p| pod_revision(p))
        .map(|h| h.trim_start_matches(&format!("{name}-")).to_string())
        .collect()
}

/// The set's revisions, as `history::sync` and the recorded status name them.
#[derive(Clone, Copy, Debug)]
pub struct Revisions<'a> {
    /// The revision of the set's template now (`updateRevision`).
    pub update: &'a str,
    /// The revision pods below the partition keep (`currentRevision`).
    pub current: &'a str,
    /// The current revision's pod template, when its ControllerRevision is in the cache.
    pub current_template: Option<&'a Value>,
}

/// The `currentRevision` the set records, or `update` before it records one.
pub fn current_revision<'a>(set: &'a Value, update: &'a str) -> &'a str {
    Some(s(set, "/status/currentRevision")).filter(|r| !r.is_empty()).unwrap_or(update)
}

/// One pod change, carried out in order.
#[derive(Clone, Debug, PartialEq)]
pub enum PodChange {
    /// Create this pod, after its claims.
    Create { ordinal: i64, pod: Value },
    /// Delete the pod of this ordinal (failed, condemned or out of date), with its uid as a
    /// precondition; `release_claims` when a scale-down condemned it and the retention
    /// policy says its claims go too.
    Delete { ordinal: i64, name: String, uid: Value, release_claims: bool },
}

/// What one reconcile of a StatefulSet should do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub changes: Vec<PodChange>,
    /// The status to merge, when it differs from the recorded one.
    pub status: Option<Value>,
    /// Come back after this long, when a Ready pod becomes available (minReadySeconds).
    pub requeue: Option<Duration>,
}

/// Decides a StatefulSet's next pod changes and status from its spec, the pods it owns and
/// its revisions, so the ordering rules are testable without an API.
pub fn plan(set: &Value, pods: &[Arc<Value>], revs: &Revisions, now: i64) -> Plan {
    let name = s(set, "/metadata/name");
    let min_ready = int(set, "/spec/minReadySeconds");
    let replicas = set.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0);
    let pods: BTreeMap<i64, &Arc<Value>> =
        pods.iter().filter_map(|p| Some((ordinal_of(name, s(p, "/metadata/name"))?, p))).collect();
    let slots: Vec<Slot> = pods
        .iter()
        .map(|(o, p)| Slot {
            ordinal: *o,
            revision: pod_revision(p).unwrap_or("").to_string(),
            healthy: s(p, "/status/phase") == "Running" && pod_available(p, min_ready, now),
            failed: s(p, "/status/phase") == "Failed",
            terminating: deleting(p),
        })
        .collect();
    let parallel = s(set, "/spec/podManagementPolicy") == "Parallel";
    let rolling = s(set, "/spec/updateStrategy/type") != "OnDelete";
    let partition = rolling.then(|| int(set, "/spec/updateStrategy/rollingUpdate/partition").max(0));
    let release_on_scale = s(set, "/spec/persistentVolumeClaimRetentionPolicy/whenScaled") == "Delete";
    let mut out = Plan::default();

    for step in steps(replicas, &slots, parallel, revs.update, partition) {
        match step {
            Step::Wait => {}
            Step::Create(o) => {
                // Pods below the partition are made from the current revision's template.
                let below = partition.is_some_and(|p| o < p) && revs.current != revs.update;
                let (template, rev) = if below {
                    (revs.current_template.unwrap_or(&set["spec"]["template"]), revs.current)
                } else {
                    (&set["spec"]["template"], revs.update)
                };
                out.changes.push(PodChange::Create { ordinal: o, pod: pod_for(set, template, o, rev) });
            }
            Step::Delete(o) => {
                let Some(pod) = pods.get(&o) else { continue };
                out.changes.push(PodChange::Delete {
                    ordinal: o,
                    name: s(pod, "/metadata/name").to_string(),
                    uid: pod["metadata"]["uid"].clone(),
                    release_claims: o >= replicas && release_on_scale,
                });
            }
        }
    }

    let live: Vec<&Arc<Value>> = pods.values().copied().filter(|p| !deleting(p)).collect();
    let at = |rev: &str| live.iter().filter(|p| pod_revision(p) == Some(rev)).count() as i64;
    let updated = at(revs.update);
    let ready = live.iter().filter(|p| pod_ready_since(p).is_some()).count();
    let current_rev = if updated == replicas && live.len() as i64 == replicas { revs.update } else { revs.current };
    let status = json!({
        "observedGeneration": set["metadata"]["generation"],
        "replicas": live.len(),
        "readyReplicas": ready,
        "availableReplicas": live.iter().filter(|p| pod_available(p, min_ready, now)).count(),
        "currentReplicas": at(current_rev),
        "updatedReplicas": updated,
        "currentRevision": current_rev,
        "updateRevision": revs.update,
        "collisionCount": set.pointer("/status/collisionCount").cloned().unwrap_or(json!(0)),
    });
    let differs =
        status.as_object().is_some_and(|m| m.iter().any(|(k, v)| set["status"].get(k).unwrap_or(&json!(0)) != v));
    if differs {
        out.status = Some(status);
    }
    let soonest =
        live.iter().filter_map(|p| pod_ready_since(p)).map(|since| since + min_ready - now).filter(|w| *w > 0).min();
    out.requeue = soonest.map(|w| Duration::from_secs(w as u64 + 1));
    out
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
    let pods: Vec<Arc<Value>> =
        ctx.pods.list_by(super::BY_CONTROLLER, uid).into_iter().filter(|p| s(p, "/metadata/namespace") == ns).collect();
    let update = history::sync(ctx, &set, "apps/v1", "StatefulSet", &revisions_in_use(&set, &pods)).await?;
    let current = current_revision(&set, &update.name);
    let current_template =
        ctx.controllerrevisions.get(&format!("{ns}/{current}")).map(|cr| cr["data"]["spec"]["template"].clone());
    let revs = Revisions { update: &update.name, current, current_template: current_template.as_ref() };
    let p = plan(&set, &pods, &revs, now);

    for change in &p.changes {
        match change {
            PodChange::Create { pod, .. } => {
                ensure_claims(ctx, &set, s(pod, "/metadata/name")).await?;
                match ctx.conn.create(&format!("/api/v1/namespaces/{ns}/pods"), pod).await {
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
            PodChange::Delete { name: pname, uid, release_claims, .. } => {
                let opts = json!({"preconditions": {"uid": uid}});
                ctx.conn.delete(&format!("/api/v1/namespaces/{ns}/pods/{pname}"), &opts).await?;
                let msg = format!("delete Pod {pname} in StatefulSet {name} successful");
                ctx.events.emit(COMPONENT, &set, "Normal", "SuccessfulDelete", &msg);
                if *release_claims {
                    delete_claims(ctx, &set, pname).await?;
                }
            }
        }
    }
    if let Some(status) = p.status {
        let path = format!("/apis/apps/v1/namespaces/{ns}/statefulsets/{name}/status");
        ctx.conn.merge_patch(&path, &json!({"status": status})).await?;
    }
    Ok(p.requeue)
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

/// Deletes a condemned pod's claims (on scale-down, with `whenScaled: Delete`).
async fn delete_claims(ctx: &Ctx, set: &Value, pod: &str) -> anyhow::Result<()> {
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

    const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    const R2: Revisions = Revisions { update: "r2", current: "r2", current_template: None };

    fn pod_template(image: &str) -> Value {
        json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}})
    }

    /// StatefulSet `web` of image x:2 with `replicas`, and `extra` merged into its spec.
    fn set(replicas: i64, extra: &Value) -> Value {
        let mut set = json!({"metadata": {"name": "web", "namespace": "default", "uid": "s1", "generation": 1},
            "spec": {"replicas": replicas, "serviceName": "web-svc", "selector": {"matchLabels": {"app": "web"}},
                     "template": pod_template("x:2")}});
        for (k, v) in extra.as_object().expect("extra is an object") {
            set["spec"][k] = v.clone();
        }
        set
    }

    /// Pods `web-0`, `web-1`, ... from words such as `r1 r2? _ r2! r2~`: each the pod's
    /// revision, then nothing for Running and Ready (since T0), `?` for Pending, `!` for
    /// Failed, `~` for being deleted; `_` for no pod of that ordinal.
    fn pods(words: &str) -> Vec<Arc<Value>> {
        let mut out = Vec::new();
        for (ordinal, word) in words.split_whitespace().enumerate() {
            if word == "_" {
                continue;
            }
            let rev = word.trim_end_matches(['?', '!', '~']);
            let mut p = json!({"metadata": {"name": format!("web-{ordinal}"), "uid": format!("u{ordinal}"),
                                            "labels": {HASH_LABEL: rev}},
                               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True",
                                          "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
            match word.chars().last() {
                Some('?') => p["status"] = json!({"phase": "Pending"}),
                Some('!') => p["status"] = json!({"phase": "Failed"}),
                Some('~') => p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z"),
                _ => {}
            }
            out.push(Arc::new(p));
        }
        out
    }

    fn summary(p: &Plan) -> Vec<(&'static str, i64)> {
        p.changes
            .iter()
            .map(|c| match c {
                PodChange::Create { ordinal, .. } => ("create", *ordinal),
                PodChange::Delete { ordinal, .. } => ("delete", *ordinal),
            })
            .collect()
    }

    /// (case, StatefulSet, its pods as `pods` spells them, the changes)
    type OrderCase = (&'static str, Value, &'static str, Vec<(&'static str, i64)>);

    #[test]
    fn plan_orders_pod_changes() {
        let plain = json!({});
        let par = json!({"podManagementPolicy": "Parallel"});
        let partition =
            |p: i64| json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": p}}});
        let (at0, at2) = (partition(0), partition(2));
        let on_delete = json!({"updateStrategy": {"type": "OnDelete"}});
        let cases: Vec<OrderCase> = vec![
            ("OrderedReady starts with ordinal 0", set(3, &plain), "", vec![("create", 0)]),
            ("OrderedReady waits for 0 to be ready", set(3, &plain), "r2?", vec![]),
            ("OrderedReady: 0 is ready, create 1", set(3, &plain), "r2", vec![("create", 1)]),
            ("OrderedReady fills a gap first", set(3, &plain), "r2 _ r2", vec![("create", 1)]),
            ("Parallel creates all at once", set(3, &par), "", vec![("create", 0), ("create", 1), ("create", 2)]),
            ("Parallel does not wait for readiness", set(3, &par), "r2?", vec![("create", 1), ("create", 2)]),
            ("a failed pod is replaced first", set(3, &plain), "r2 r2!", vec![("delete", 1)]),
            ("scale down removes the highest ordinal", set(1, &plain), "r2 r2 r2", vec![("delete", 2)]),
            ("scale down waits for the highest to go", set(1, &plain), "r2 r2 r2~", vec![]),
            ("scale down waits for lower ones to be ready", set(1, &plain), "r2 r2? r2", vec![]),
            ("Parallel scale down removes all at once", set(1, &par), "r2 r2 r2", vec![("delete", 2), ("delete", 1)]),
            ("rolling update starts at the top", set(3, &at0), "r1 r1 r1", vec![("delete", 2)]),
            ("rolling update goes one at a time", set(3, &at0), "r1 r1 r2?", vec![]),
            ("rolling update continues down", set(3, &at0), "r1 r1 r2", vec![("delete", 1)]),
            ("the partition holds lower ordinals", set(3, &at2), "r1 r1 r2", vec![]),
            ("OnDelete waits for the user", set(3, &on_delete), "r1 r1 r1", vec![]),
            ("nothing to do", set(3, &plain), "r2 r2 r2", vec![]),
        ];
        for (case, set, words, want) in cases {
            assert_eq!(summary(&plan(&set, &pods(words), &R2, T0)), want, "{case}");
        }
    }

    #[test]
    fn plan_builds_pods_with_their_identity_and_revision() {
        let claims = json!({"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}],
                            "updateStrategy": {"rollingUpdate": {"partition": 2}},
                            "podManagementPolicy": "Parallel"});
        let old = pod_template("x:1");
        let revs = Revisions { update: "r2", current: "r1", current_template: Some(&old) };
        let p = plan(&set(3, &claims), &pods("_ r1"), &revs, T0);
        let made: Vec<&Value> = p
            .changes
            .iter()
            .filter_map(|c| match c {
                PodChange::Create { pod, .. } => Some(pod),
                PodChange::Delete { .. } => None,
            })
            .collect();
        assert_eq!(made.len(), 2, "ordinals 0 and 2");
        let (zero, two) = (made[0], made[1]);
        assert_eq!((s(zero, "/metadata/name"), s(zero, "/spec/hostname")), ("web-0", "web-0"));
        assert_eq!(s(zero, "/spec/subdomain"), "web-svc");
        assert_eq!(zero["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"], "web-0");
        assert_eq!(zero["metadata"]["labels"]["apps.kubernetes.io/pod-index"], "0");
        assert_eq!(zero["metadata"]["ownerReferences"][0]["uid"], "s1");
        let claim = json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data-web-0"}}]);
        assert_eq!(zero["spec"]["volumes"], claim);
        assert_eq!(
            (s(zero, &format!("/metadata/labels/{HASH_LABEL}")), s(zero, "/spec/containers/0/image")),
            ("r1", "x:1"),
            "below the partition: the current revision"
        );
        assert_eq!(
            (s(two, &format!("/metadata/labels/{HASH_LABEL}")), s(two, "/spec/containers/0/image")),
            ("r2", "x:2"),
            "at the partition: the update revision"
        );
    }

    #[test]
    fn plan_releases_claims_only_of_condemned_pods_when_asked() {
        let delete = json!({"persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"}});
        let want = |release_claims| {
            vec![PodChange::Delete { ordinal: 1, name: "web-1".into(), uid: json!("u1"), release_claims }]
        };
        assert_eq!(plan(&set(1, &delete), &pods("r2 r2"), &R2, T0).changes, want(true));
        assert_eq!(plan(&set(1, &json!({})), &pods("r2 r2"), &R2, T0).changes, want(false), "Retain keeps them");
        assert_eq!(plan(&set(2, &delete), &pods("r2 r1"), &R2, T0).changes, want(false), "an update keeps them");
    }

    #[test]
    fn plan_reports_status_and_waits_for_min_ready() {
        let revs = Revisions { update: "r2", current: "r1", current_template: None };
        let status = plan(&set(2, &json!({})), &pods("r1? r2 r2~"), &revs, T0).status.expect("a first status");
        assert_eq!(
            status,
            json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": 1, "availableReplicas": 1,
                   "currentReplicas": 1, "updatedReplicas": 1, "currentRevision": "r1",
                   "updateRevision": "r2", "collisionCount": 0})
        );
        let mut done = set(2, &json!({}));
        let status = plan(&done, &pods("r2 r2"), &revs, T0).status.expect("the update is complete");
        assert_eq!((&status["currentRevision"], &status["currentReplicas"]), (&json!("r2"), &json!(2)));
        done["status"] = status;
        assert_eq!(plan(&done, &pods("r2 r2"), &R2, T0).status, None, "a steady state writes nothing");
        let slow = set(2, &json!({"minReadySeconds": 10}));
        let p = plan(&slow, &pods("r2 r2"), &R2, T0 + 4);
        assert_eq!(p.requeue, Some(Duration::from_secs(7)), "available 6 s from now");
        assert_eq!(summary(&p), vec![], "unavailable pods hold the next step");
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
