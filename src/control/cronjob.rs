//! The CronJob controller: creates a Job (named `<cronjob>-<minutes since the epoch>`) at
//! each scheduled time of the standard cron schedule, read in `timeZone` when set; honours
//! `suspend`, `startingDeadlineSeconds` (a run missed by more is skipped) and
//! `concurrencyPolicy` (Allow, Forbid: skip while one runs, Replace: delete the running
//! one); reports `active`, `lastScheduleTime` and `lastSuccessfulTime`; and keeps
//! `successfulJobsHistoryLimit`/`failedJobsHistoryLimit` finished Jobs.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::conn::{is_conflict, revision};
use super::queue::WorkQueue;
use super::{Ctx, Writes, controller_of, deleting, epoch_secs, now_secs, owner_ref, s};
use crate::cron::Schedule;

const COMPONENT: &str = "cronjob-controller";

/// Whether a Job has finished, and how (`Complete` or `Failed`).
pub fn job_finished(job: &Value) -> Option<&'static str> {
    let conds = job.pointer("/status/conditions")?.as_array()?;
    conds.iter().find_map(|c| match (c["type"].as_str(), c["status"].as_str()) {
        (Some("Complete"), Some("True")) => Some("Complete"),
        (Some("Failed"), Some("True")) => Some("Failed"),
        _ => None,
    })
}

/// The schedule's times in `(after, now]`: the newest one (the run due now, if any), how
/// many there were (a long outage misses many), and the next time after `now`.
pub fn due(
    schedule: &Schedule,
    tz: Option<&str>,
    after: i64,
    now: i64,
) -> Result<(Option<i64>, usize, Option<i64>), String> {
    let next = |t: i64| -> Result<Option<i64>, String> {
        let ts = jiff::Timestamp::from_second(t).map_err(|e| e.to_string())?;
        let n = match tz {
            Some(tz) => schedule.next_after_in(ts, tz)?,
            None => schedule.next_after(ts),
        };
        Ok(n.map(|n| n.as_second()))
    };
    let mut newest = None;
    let mut missed = 0;
    let mut t = after;
    loop {
        match next(t)? {
            Some(n) if n <= now => {
                newest = Some(n);
                missed += 1;
                t = n;
                if missed > 100 {
                    // Upstream stops counting here too; jump to the run just before now.
                    let mut probe = now - 60;
                    while let Some(n2) = next(probe)? {
                        if n2 > now {
                            break;
                        }
                        newest = Some(n2);
                        probe = n2;
                    }
                    return Ok((newest, missed, next(now)?));
                }
            }
            other => return Ok((newest, missed, other)),
        }
    }
}

/// Registers the handlers and starts the workers.
pub fn start(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    super::follow(&queue, &ctx.cronjobs, &ctx.jobs, "CronJob");
    super::owner_workers(
        COMPONENT,
        queue,
        1,
        ctx,
        |ctx, writes, key| async move { reconcile(&ctx, &writes, &key).await },
    )
}

fn rfc3339(t: i64) -> String {
    jiff::Timestamp::from_second(t).map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

fn job_ref(job: &Value) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "namespace": job["metadata"]["namespace"],
           "name": job["metadata"]["name"], "uid": job["metadata"]["uid"], "resourceVersion": job["metadata"]["resourceVersion"]})
}

/// Deletes one of the CronJob's Jobs, its pods with it.
async fn delete_job(ctx: &Ctx, cj: &Value, job: &Value) -> anyhow::Result<()> {
    let name = s(job, "/metadata/name");
    let path = format!("/apis/batch/v1/namespaces/{}/jobs/{name}", s(job, "/metadata/namespace"));
    ctx.conn.delete(&path, &json!({"propagationPolicy": "Background"})).await?;
    ctx.events.emit(COMPONENT, cj, "Normal", "SuccessfulDelete", &format!("Deleted job {name}"));
    Ok(())
}

async fn reconcile(ctx: &Ctx, writes: &Writes, key: &str) -> anyhow::Result<Option<Duration>> {
    writes.settle(key, &ctx.jobs).await;
    let Some(cj) = ctx.cronjobs.get(key) else { return Ok(None) };
    if deleting(&cj) {
        return Ok(None);
    }
    let ns = s(&cj, "/metadata/namespace");
    let name = s(&cj, "/metadata/name");
    let uid = s(&cj, "/metadata/uid");
    let now = now_secs();
    let mut jobs: Vec<Arc<Value>> =
        ctx.jobs.list_in(ns).into_iter().filter(|j| controller_of(j).is_some_and(|o| o["uid"] == uid)).collect();
    jobs.sort_by_key(|j| s(j, "/metadata/creationTimestamp").to_string());
    let mut status = cj["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    let before = status.clone();

    // Finished jobs: record the last success, then keep only the newest few of each kind.
    let mut last_success = epoch_secs(s(&status, "/lastSuccessfulTime"));
    for j in &jobs {
        if job_finished(j) == Some("Complete")
            && let Some(t) = epoch_secs(s(j, "/status/completionTime"))
            && last_success.is_none_or(|l| t > l)
        {
            last_success = Some(t);
            ctx.events.emit(
                COMPONENT,
                &cj,
                "Normal",
                "SawCompletedJob",
                &format!("Saw completed job: {}, condition: Complete", s(j, "/metadata/name")),
            );
        }
    }
    if let Some(t) = last_success {
        status["lastSuccessfulTime"] = json!(rfc3339(t));
    }
    for (kind, field, default) in
        [("Complete", "successfulJobsHistoryLimit", 3), ("Failed", "failedJobsHistoryLimit", 1)]
    {
        let limit = cj["spec"][field].as_i64().unwrap_or(default).max(0) as usize;
        let done: Vec<&Arc<Value>> = jobs.iter().filter(|j| job_finished(j) == Some(kind) && !deleting(j)).collect();
        if done.len() > limit {
            for j in &done[..done.len() - limit] {
                delete_job(ctx, &cj, j).await?;
            }
        }
    }
    let mut active: Vec<Arc<Value>> =
        jobs.iter().filter(|j| job_finished(j).is_none() && !deleting(j)).cloned().collect();

    let schedule = Schedule::parse(s(&cj, "/spec/schedule")).map_err(|e| anyhow::anyhow!("schedule: {e}"))?;
    let tz = cj.pointer("/spec/timeZone").and_then(Value::as_str);
    let since = epoch_secs(s(&status, "/lastScheduleTime"))
        .or_else(|| epoch_secs(s(&cj, "/metadata/creationTimestamp")))
        .unwrap_or(now);
    let (newest, missed, next) = due(&schedule, tz, since, now).map_err(|e| anyhow::anyhow!(e))?;
    if missed > 100 {
        ctx.events.emit(
            COMPONENT,
            &cj,
            "Warning",
            "TooManyMissedTimes",
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
        );
    }
    let suspended = cj["spec"]["suspend"] == true;
    let deadline = cj.pointer("/spec/startingDeadlineSeconds").and_then(Value::as_i64);
    if let Some(at) = newest.filter(|_| !suspended) {
        let too_late = deadline.is_some_and(|d| at + d < now);
        let policy = s(&cj, "/spec/concurrencyPolicy");
        if too_late {
            ctx.events.emit(
                COMPONENT,
                &cj,
                "Warning",
                "MissSchedule",
                &format!("Missed scheduled time to start a job: {}", rfc3339(at)),
            );
            status["lastScheduleTime"] = json!(rfc3339(at));
        } else if policy == "Forbid" && !active.is_empty() {
            // Wait for the running one; the missed run starts when it ends, deadline allowing.
            tracing::debug!(cronjob = key, "a run is due but the previous one is still running");
        } else {
            if policy == "Replace" {
                for j in active.drain(..) {
                    delete_job(ctx, &cj, &j).await?;
                }
            }
            let template = &cj["spec"]["jobTemplate"];
            let mut meta = json!({"name": format!("{name}-{}", at / 60), "namespace": ns,
                "ownerReferences": [owner_ref(&cj, "batch/v1", "CronJob")]});
            for field in ["labels", "annotations"] {
                if let Some(v) = template.pointer(&format!("/metadata/{field}")) {
                    meta[field] = v.clone();
                }
            }
            meta["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] = json!(rfc3339(at));
            let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": template["spec"]});
            match ctx.conn.create(&format!("/apis/batch/v1/namespaces/{ns}/jobs"), &job).await {
                Ok(created) => {
                    writes.note(key, revision(&created));
                    ctx.events.emit(
                        COMPONENT,
                        &cj,
                        "Normal",
                        "SuccessfulCreate",
                        &format!("Created job {}", s(&created, "/metadata/name")),
                    );
                    active.push(Arc::new(created));
                }
                // Already made for this time (a reconcile that lost its status write).
                Err(e) if is_conflict(&e) => {}
                Err(e) => return Err(e),
            }
            status["lastScheduleTime"] = json!(rfc3339(at));
        }
    }
    let refs: Vec<Value> = active.iter().map(|j| job_ref(j)).collect();
    if refs.is_empty() {
        if let Some(m) = status.as_object_mut() {
            m.remove("active");
        }
    } else {
        status["active"] = json!(refs);
    }
    if status != before {
        let path = format!("/apis/batch/v1/namespaces/{ns}/cronjobs/{name}/status");
        let mut patch = json!({"metadata": {"resourceVersion": cj["metadata"]["resourceVersion"]}, "status": status});
        if before.get("active").is_some() && status.get("active").is_none() {
            patch["status"]["active"] = Value::Null;
        }
        ctx.conn.merge_patch(&path, &patch).await?;
    }
    Ok(next.map(|n| Duration::from_secs((n - now).max(0) as u64 + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &str) -> i64 {
        epoch_secs(t).unwrap_or(0)
    }

    #[test]
    fn due_runs_and_the_next_one() {
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        let (newest, missed, next) =
            due(&every5, None, at("2026-01-01T00:00:00Z"), at("2026-01-01T00:12:00Z")).unwrap();
        assert_eq!((newest, missed, next), (Some(at("2026-01-01T00:10:00Z")), 2, Some(at("2026-01-01T00:15:00Z"))));
        let (newest, missed, _) = due(&every5, None, at("2026-01-01T00:10:00Z"), at("2026-01-01T00:12:00Z")).unwrap();
        assert_eq!((newest, missed), (None, 0), "the 00:10 run already happened");
        let minutely = Schedule::parse("* * * * *").unwrap();
        let (newest, missed, _) = due(&minutely, None, at("2026-01-01T00:00:00Z"), at("2026-01-02T00:00:30Z")).unwrap();
        assert_eq!(newest, Some(at("2026-01-02T00:00:00Z")), "after a long outage, the latest run");
        assert!(missed > 100);
        let nine = Schedule::parse("0 9 * * *").unwrap();
        let (_, _, next) =
            due(&nine, Some("Asia/Tokyo"), at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(next, Some(at("2026-01-02T00:00:00Z")), "09:00 in Tokyo is 00:00 UTC");
    }

    #[test]
    fn finished_jobs_are_told_apart() {
        let done = json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        let failed = json!({"status": {"conditions": [{"type": "Failed", "status": "True"}]}});
        assert_eq!(job_finished(&done), Some("Complete"));
        assert_eq!(job_finished(&failed), Some("Failed"));
        assert_eq!(job_finished(&json!({})), None);
    }
}
