//! The Job controller: runs pods until `completions` succeed (or, without completions,
//! until one succeeds and the rest finish), `parallelism` at a time; replaces failed pods
//! after an exponential back-off (10 s doubling, at most 6 min) until `backoffLimit`
//! failures (container restarts count for `restartPolicy: OnFailure`); stops everything at
//! `activeDeadlineSeconds`; honours `suspend`; reports `active/ready/succeeded/failed` and
//! the `Complete`/`Failed` conditions; and deletes a finished Job after
//! `ttlSecondsAfterFinished`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::conn::revision;
use super::queue::WorkQueue;
use super::replicaset::pod_from_template;
use super::{Ctx, Writes, deleting, epoch_secs, now_rfc3339, now_secs, owner_ref, pod_ready_since, s};

const COMPONENT: &str = "job-controller";

/// How a Job ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Finish {
    pub kind: &'static str,
    pub reason: &'static str,
    pub message: &'static str,
}

/// What one reconcile of a Job should do.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Pods to create now.
    pub create: usize,
    /// Active pods to delete (names), surplus or stopped by a finish or suspension.
    pub delete: Vec<String>,
    pub finish: Option<Finish>,
    /// Come back after this many seconds (a back-off or a deadline).
    pub wait_secs: Option<i64>,
    pub succeeded: i64,
    pub failed: i64,
    pub active: i64,
    pub ready: i64,
}

fn int(v: &Value, p: &str) -> Option<i64> {
    v.pointer(p).and_then(Value::as_i64)
}

fn finished_at(pod: &Value) -> i64 {
    pod.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| epoch_secs(s(c, "/state/terminated/finishedAt")))
        .max()
        .unwrap_or(0)
}

/// The back-off before replacing a pod after `failures` failures.
pub fn failure_backoff_secs(failures: i64) -> i64 {
    if failures <= 0 { 0 } else { (10i64 << (failures - 1).min(6)).min(360) }
}

/// Decides a Job's next step from its spec, its recorded status and its pods.
pub fn plan(job: &Value, pods: &[Arc<Value>], now: i64) -> Plan {
    let spec = &job["spec"];
    let parallelism = int(spec, "/parallelism").unwrap_or(1).max(0);
    let completions = int(spec, "/completions");
    let backoff_limit = int(spec, "/backoffLimit").unwrap_or(6);
    let on_failure = s(spec, "/template/spec/restartPolicy") == "OnFailure";
    let mut active: Vec<&Arc<Value>> =
        pods.iter().filter(|p| !matches!(s(p, "/status/phase"), "Succeeded" | "Failed") && !deleting(p)).collect();
    let count = |phase: &str| pods.iter().filter(|p| s(p, "/status/phase") == phase).count() as i64;
    let succeeded = count("Succeeded").max(int(job, "/status/succeeded").unwrap_or(0));
    let failed = count("Failed").max(int(job, "/status/failed").unwrap_or(0));
    let restarts: i64 = if on_failure {
        active
            .iter()
            .flat_map(|p| p.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default())
            .filter_map(|c| c["restartCount"].as_i64())
            .sum()
    } else {
        0
    };
    let mut out = Plan {
        succeeded,
        failed,
        active: active.len() as i64,
        ready: active.iter().filter(|p| pod_ready_since(p).is_some()).count() as i64,
        ..Plan::default()
    };
    let all_active: Vec<String> = active.iter().map(|p| s(p, "/metadata/name").to_string()).collect();
    let start = epoch_secs(s(job, "/status/startTime")).unwrap_or(now);
    if failed + restarts > backoff_limit {
        out.finish = Some(Finish {
            kind: "Failed",
            reason: "BackoffLimitExceeded",
            message: "Job has reached the specified backoff limit",
        });
        out.delete = all_active;
        return out;
    }
    if let Some(deadline) = int(spec, "/activeDeadlineSeconds") {
        if now - start >= deadline {
            out.finish = Some(Finish {
                kind: "Failed",
                reason: "DeadlineExceeded",
                message: "Job was active longer than specified deadline",
            });
            out.delete = all_active;
            return out;
        }
        out.wait_secs = Some(start + deadline - now);
    }
    let complete = match completions {
        Some(c) => succeeded >= c,
        None => succeeded >= 1 && active.is_empty(),
    };
    if complete {
        out.finish = Some(Finish {
            kind: "Complete",
            reason: "CompletionsReached",
            message: "Reached expected number of succeeded pods",
        });
        out.delete = all_active;
        return out;
    }
    if spec["suspend"] == true {
        out.delete = all_active;
        out.wait_secs = None;
        return out;
    }
    let want = match completions {
        Some(c) => parallelism.min(c - succeeded).max(0),
        None if succeeded > 0 => active.len() as i64,
        None => parallelism,
    };
    let have = active.len() as i64;
    if have > want {
        // The newest go first.
        active.sort_by_key(|p| std::cmp::Reverse(s(p, "/metadata/creationTimestamp").to_string()));
        out.delete = active.iter().take((have - want) as usize).map(|p| s(p, "/metadata/name").to_string()).collect();
    } else if have < want {
        let last_failure = pods.iter().filter(|p| s(p, "/status/phase") == "Failed").map(|p| finished_at(p)).max();
        let ready_at = last_failure.map_or(now, |t| t + failure_backoff_secs(failed));
        if ready_at > now {
            out.wait_secs = Some(out.wait_secs.map_or(ready_at - now, |w| w.min(ready_at - now)));
        } else {
            out.create = (want - have) as usize;
        }
    }
    out
}

/// Registers the handlers and starts the workers.
pub fn start(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    super::follow(&queue, &ctx.jobs, &ctx.pods, "Job");
    super::owner_workers(
        COMPONENT,
        queue,
        2,
        ctx,
        |ctx, writes, key| async move { reconcile(&ctx, &writes, &key).await },
    )
}

fn condition(kind: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": kind, "status": "True", "reason": reason, "message": message,
           "lastProbeTime": now, "lastTransitionTime": now})
}

/// When a finished Job finished, if it has.
fn finish_time(job: &Value) -> Option<i64> {
    let conds = job.pointer("/status/conditions")?.as_array()?;
    let c = conds.iter().find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")?;
    epoch_secs(s(c, "/lastTransitionTime"))
}

async fn reconcile(ctx: &Ctx, writes: &Writes, key: &str) -> anyhow::Result<Option<Duration>> {
    writes.settle(key, &ctx.pods).await;
    let Some(job) = ctx.jobs.get(key) else { return Ok(None) };
    if deleting(&job) {
        return Ok(None);
    }
    let ns = s(&job, "/metadata/namespace");
    let name = s(&job, "/metadata/name");
    let path = format!("/apis/batch/v1/namespaces/{ns}/jobs/{name}");
    let now = now_secs();
    if let Some(done) = finish_time(&job) {
        let Some(ttl) = int(&job, "/spec/ttlSecondsAfterFinished") else { return Ok(None) };
        if now >= done + ttl {
            ctx.conn.delete(&path, &json!({"propagationPolicy": "Foreground"})).await?;
            return Ok(None);
        }
        return Ok(Some(Duration::from_secs((done + ttl - now) as u64)));
    }
    let uid = s(&job, "/metadata/uid");
    let pods: Vec<Arc<Value>> =
        ctx.pods.list_by(super::BY_CONTROLLER, uid).into_iter().filter(|p| s(p, "/metadata/namespace") == ns).collect();
    let p = plan(&job, &pods, now);

    for victim in &p.delete {
        ctx.conn.delete(&format!("/api/v1/namespaces/{ns}/pods/{victim}"), &json!({})).await?;
        ctx.events.emit(COMPONENT, &job, "Normal", "SuccessfulDelete", &format!("Deleted pod: {victim}"));
    }
    if p.create > 0 {
        let mut pod = pod_from_template(&job["spec"]["template"], ns, owner_ref(&job, "batch/v1", "Job"));
        pod["metadata"]["generateName"] = json!(format!("{name}-"));
        let pods_path = format!("/api/v1/namespaces/{ns}/pods");
        let results = futures_util::future::join_all((0..p.create).map(|_| ctx.conn.create(&pods_path, &pod))).await;
        for r in results {
            let created = r?;
            writes.note(key, revision(&created));
            ctx.events.emit(
                COMPONENT,
                &job,
                "Normal",
                "SuccessfulCreate",
                &format!("Created pod: {}", s(&created, "/metadata/name")),
            );
        }
    }

    let now_str = now_rfc3339();
    let mut status = job["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    let before = status.clone();
    let mut conds: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    let suspended = job["spec"]["suspend"] == true;
    if status.get("startTime").is_none_or(Value::is_null) && !suspended {
        status["startTime"] = json!(now_str);
    }
    let has = |conds: &[Value], t: &str| conds.iter().any(|c| c["type"] == t && c["status"] == "True");
    if suspended && !has(&conds, "Suspended") {
        conds.retain(|c| c["type"] != "Suspended");
        conds.push(condition("Suspended", "JobSuspended", "Job suspended", &now_str));
        ctx.events.emit(COMPONENT, &job, "Normal", "Suspended", "Job suspended");
    } else if !suspended && has(&conds, "Suspended") {
        conds.retain(|c| c["type"] != "Suspended");
        conds.push(json!({"type": "Suspended", "status": "False", "reason": "JobResumed", "message": "Job resumed",
                          "lastProbeTime": now_str, "lastTransitionTime": now_str}));
        status["startTime"] = json!(now_str);
    }
    if let Some(f) = &p.finish {
        let first = if f.kind == "Complete" { "SuccessCriteriaMet" } else { "FailureTarget" };
        if !has(&conds, first) {
            conds.push(condition(first, f.reason, f.message, &now_str));
        }
        conds.push(condition(f.kind, f.reason, f.message, &now_str));
        if f.kind == "Complete" {
            status["completionTime"] = json!(now_str);
            ctx.events.emit(COMPONENT, &job, "Normal", "Completed", "Job completed");
        } else {
            ctx.events.emit(COMPONENT, &job, "Warning", f.reason, f.message);
        }
    }
    status["conditions"] = json!(conds);
    status["active"] = json!(if p.finish.is_some() { 0 } else { p.active + p.create as i64 - p.delete.len() as i64 });
    status["ready"] = json!(p.ready);
    status["succeeded"] = json!(p.succeeded);
    status["failed"] = json!(p.failed);
    if let Some(m) = status.as_object_mut() {
        m.retain(|k, v| !(v.is_null() || (k == "conditions" && v.as_array().is_some_and(Vec::is_empty))));
    }
    if status != before {
        let body = json!({"metadata": {"resourceVersion": job["metadata"]["resourceVersion"]}, "status": status});
        ctx.conn.merge_patch(&format!("{path}/status"), &body).await?;
    }
    Ok(p.wait_secs.filter(|w| *w >= 0).map(|w| Duration::from_secs(w as u64 + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: Value) -> Value {
        json!({"metadata": {"name": "j"}, "spec": spec, "status": {"startTime": "2026-01-01T00:00:00Z"}})
    }

    fn pod(name: &str, phase: &str, finished: &str) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": phase, "containerStatuses": [{"restartCount": 0,
                "state": {"terminated": {"finishedAt": finished}}}]}}))
    }

    const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    #[test]
    fn runs_parallelism_pods_until_completions_succeed() {
        let j = job(json!({"completions": 5, "parallelism": 2}));
        assert_eq!(plan(&j, &[], T0).create, 2);
        let done = [
            pod("a", "Succeeded", ""),
            pod("b", "Succeeded", ""),
            pod("c", "Succeeded", ""),
            pod("d", "Succeeded", ""),
        ];
        let p = plan(&j, &done, T0);
        assert_eq!((p.create, p.succeeded), (1, 4), "only one completion is left");
        let all = [done.to_vec(), vec![pod("e", "Succeeded", "")]].concat();
        assert_eq!(plan(&j, &all, T0).finish.map(|f| f.kind), Some("Complete"));
    }

    #[test]
    fn failures_back_off_then_exceed_the_limit() {
        let j = job(json!({"completions": 1, "backoffLimit": 2}));
        let one = [pod("a", "Failed", "2026-01-01T00:00:05Z")];
        let p = plan(&j, &one, T0 + 6);
        assert_eq!((p.create, p.wait_secs), (0, Some(9)), "10 s after the first failure");
        assert_eq!(plan(&j, &one, T0 + 15).create, 1);
        let two = [pod("a", "Failed", "2026-01-01T00:00:05Z"), pod("b", "Failed", "2026-01-01T00:00:20Z")];
        assert_eq!(plan(&j, &two, T0 + 25).wait_secs, Some(15), "20 s after the second");
        let three = [two.to_vec(), vec![pod("c", "Failed", "2026-01-01T00:01:00Z")]].concat();
        let p = plan(&j, &three, T0 + 61);
        assert_eq!(p.finish.map(|f| f.reason), Some("BackoffLimitExceeded"));
        assert_eq!(failure_backoff_secs(10), 360);
    }

    #[test]
    fn the_deadline_stops_running_pods() {
        let j = job(json!({"activeDeadlineSeconds": 30}));
        let running = [Arc::new(json!({"metadata": {"name": "r"}, "status": {"phase": "Running"}}))];
        let p = plan(&j, &running, T0 + 10);
        assert_eq!((p.create, p.wait_secs), (0, Some(20)));
        let p = plan(&j, &running, T0 + 30);
        assert_eq!(p.finish.map(|f| f.reason), Some("DeadlineExceeded"));
        assert_eq!(p.delete, vec!["r".to_string()]);
    }

    #[test]
    fn without_completions_one_success_ends_it_once_the_rest_finish() {
        let j = job(json!({"parallelism": 2}));
        let running = Arc::new(json!({"metadata": {"name": "r"}, "status": {"phase": "Running"}}));
        let p = plan(&j, &[pod("a", "Succeeded", ""), running], T0);
        assert_eq!((p.create, p.finish), (0, None));
        assert_eq!(plan(&j, &[pod("a", "Succeeded", "")], T0).finish.map(|f| f.kind), Some("Complete"));
    }
}
