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
use super::{Ctx, Writes, controller_of, deleting, epoch_secs, now_secs, owner_ref, rfc3339, s};
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

/// What one reconcile of a CronJob should do, carried out in field order.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Jobs whose completion is newer than `lastSuccessfulTime` (a `SawCompletedJob` event each).
    pub saw_completed: Vec<String>,
    /// Finished Jobs beyond the history limits, oldest first: successful ones, then failed ones.
    pub prune: Vec<String>,
    /// The schedule or time zone cannot be followed: the reconcile fails with this after
    /// pruning, and nothing below is planned.
    pub error: Option<String>,
    /// More than 100 start times passed unseen (a warning event, as upstream gives).
    pub too_many_missed: bool,
    /// The run due at this time was missed by more than `startingDeadlineSeconds`: skipped.
    pub missed: Option<i64>,
    /// A run is due but the previous one still runs (`concurrencyPolicy: Forbid`).
    pub held: bool,
    /// Running Jobs to delete before the next starts (`concurrencyPolicy: Replace`).
    pub replace: Vec<String>,
    /// The Job to create for the run due now.
    pub start: Option<Value>,
    /// The status once the plan is carried out, but for the started Job's reference in
    /// `active` (it needs the uid the server gives).
    pub status: Value,
    /// The next scheduled time after now.
    pub next: Option<i64>,
}

/// Decides a CronJob's next step from its spec, its recorded status, the Jobs it owns and
/// the time, so the schedule and concurrency rules are testable without an API or a clock.
pub fn plan(cj: &Value, jobs: &[Arc<Value>], now: i64) -> Plan {
    let name = s(cj, "/metadata/name");
    let mut jobs: Vec<&Arc<Value>> = jobs.iter().collect();
    jobs.sort_by_key(|j| s(j, "/metadata/creationTimestamp").to_string());
    let mut status = cj["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    let mut out = Plan::default();

    // Finished jobs: record the last success, then keep only the newest few of each kind.
    let mut last_success = epoch_secs(s(&status, "/lastSuccessfulTime"));
    for j in &jobs {
        if job_finished(j) == Some("Complete")
            && let Some(t) = epoch_secs(s(j, "/status/completionTime"))
            && last_success.is_none_or(|l| t > l)
        {
            last_success = Some(t);
            out.saw_completed.push(s(j, "/metadata/name").to_string());
        }
    }
    if let Some(t) = last_success {
        status["lastSuccessfulTime"] = json!(rfc3339(t));
    }
    for (kind, field, default) in
        [("Complete", "successfulJobsHistoryLimit", 3), ("Failed", "failedJobsHistoryLimit", 1)]
    {
        let limit = cj["spec"][field].as_i64().unwrap_or(default).max(0) as usize;
        let done: Vec<&&Arc<Value>> = jobs.iter().filter(|j| job_finished(j) == Some(kind) && !deleting(j)).collect();
        if done.len() > limit {
            out.prune.extend(done[..done.len() - limit].iter().map(|j| s(j, "/metadata/name").to_string()));
        }
    }
    let mut active: Vec<&Arc<Value>> = jobs.into_iter().filter(|j| job_finished(j).is_none() && !deleting(j)).collect();

    let schedule = match Schedule::parse(s(cj, "/spec/schedule")) {
        Ok(schedule) => schedule,
        Err(e) => {
            out.error = Some(format!("schedule: {e}"));
            return out;
        }
    };
    let tz = cj.pointer("/spec/timeZone").and_then(Value::as_str);
    let since = epoch_secs(s(&status, "/lastScheduleTime"))
        .or_else(|| epoch_secs(s(cj, "/metadata/creationTimestamp")))
        .unwrap_or(now);
    let (newest, missed, next) = match due(&schedule, tz, since, now) {
        Ok(due) => due,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    out.too_many_missed = missed > 100;
    out.next = next;
    let suspended = cj["spec"]["suspend"] == true;
    let deadline = cj.pointer("/spec/startingDeadlineSeconds").and_then(Value::as_i64);
    if let Some(at) = newest.filter(|_| !suspended) {
        let too_late = deadline.is_some_and(|d| at + d < now);
        let policy = s(cj, "/spec/concurrencyPolicy");
        if too_late {
            out.missed = Some(at);
            status["lastScheduleTime"] = json!(rfc3339(at));
        } else if policy == "Forbid" && !active.is_empty() {
            // Wait for the running one; the missed run starts when it ends, deadline allowing.
            out.held = true;
        } else {
            if policy == "Replace" {
                out.replace = active.drain(..).map(|j| s(j, "/metadata/name").to_string()).collect();
            }
            let template = &cj["spec"]["jobTemplate"];
            let mut meta = json!({"name": format!("{name}-{}", at / 60), "namespace": s(cj, "/metadata/namespace"),
                "ownerReferences": [owner_ref(cj, "batch/v1", "CronJob")]});
            for field in ["labels", "annotations"] {
                if let Some(v) = template.pointer(&format!("/metadata/{field}")) {
                    meta[field] = v.clone();
                }
            }
            meta["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] = json!(rfc3339(at));
            out.start =
                Some(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": template["spec"]}));
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
    out.status = status;
    out
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

fn job_ref(job: &Value) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "namespace": job["metadata"]["namespace"],
           "name": job["metadata"]["name"], "uid": job["metadata"]["uid"], "resourceVersion": job["metadata"]["resourceVersion"]})
}

/// Deletes one of the CronJob's Jobs, its pods with it.
async fn delete_job(ctx: &Ctx, cj: &Value, name: &str) -> anyhow::Result<()> {
    let path = format!("/apis/batch/v1/namespaces/{}/jobs/{name}", s(cj, "/metadata/namespace"));
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
    let jobs: Vec<Arc<Value>> =
        ctx.jobs.list_in(ns).into_iter().filter(|j| controller_of(j).is_some_and(|o| o["uid"] == uid)).collect();
    let p = plan(&cj, &jobs, now);

    for j in &p.saw_completed {
        let msg = format!("Saw completed job: {j}, condition: Complete");
        ctx.events.emit(COMPONENT, &cj, "Normal", "SawCompletedJob", &msg);
    }
    for j in &p.prune {
        delete_job(ctx, &cj, j).await?;
    }
    if let Some(e) = p.error {
        return Err(anyhow::anyhow!(e));
    }
    if p.too_many_missed {
        ctx.events.emit(
            COMPONENT,
            &cj,
            "Warning",
            "TooManyMissedTimes",
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
        );
    }
    if let Some(at) = p.missed {
        let msg = format!("Missed scheduled time to start a job: {}", rfc3339(at));
        ctx.events.emit(COMPONENT, &cj, "Warning", "MissSchedule", &msg);
    }
    if p.held {
        tracing::debug!(cronjob = key, "a run is due but the previous one is still running");
    }
    for j in &p.replace {
        delete_job(ctx, &cj, j).await?;
    }
    let mut status = p.status;
    if let Some(job) = &p.start {
        match ctx.conn.create(&format!("/apis/batch/v1/namespaces/{ns}/jobs"), job).await {
            Ok(created) => {
                writes.note(key, revision(&created));
                let msg = format!("Created job {}", s(&created, "/metadata/name"));
                ctx.events.emit(COMPONENT, &cj, "Normal", "SuccessfulCreate", &msg);
                match status.get_mut("active").and_then(Value::as_array_mut) {
                    Some(refs) => refs.push(job_ref(&created)),
                    None => status["active"] = json!([job_ref(&created)]),
                }
            }
            // Already made for this time (a reconcile that lost its status write).
            Err(e) if is_conflict(&e) => {}
            Err(e) => return Err(e),
        }
    }
    let before = if cj["status"].is_object() { cj["status"].clone() } else { json!({}) };
    if status != before {
        let path = format!("/apis/batch/v1/namespaces/{ns}/cronjobs/{name}/status");
        let mut patch = json!({"metadata": {"resourceVersion": cj["metadata"]["resourceVersion"]}, "status": status});
        if before.get("active").is_some() && status.get("active").is_none() {
            patch["status"]["active"] = Value::Null;
        }
        ctx.conn.merge_patch(&path, &patch).await?;
    }
    Ok(p.next.map(|n| Duration::from_secs((n - now).max(0) as u64 + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &str) -> i64 {
        epoch_secs(t).unwrap_or(0)
    }

    const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z, when the CronJob was made

    /// CronJob `backup` on `schedule`, with `extra` merged into its spec and `status`.
    fn cronjob(schedule: &str, extra: Value, status: Value) -> Value {
        let mut cj = json!({
            "metadata": {"name": "backup", "namespace": "default", "uid": "c1",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"schedule": schedule, "jobTemplate": {"metadata": {"labels": {"app": "backup"}},
                     "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}}},
            "status": status,
        });
        for (k, v) in extra.as_object().expect("extra is an object") {
            cj["spec"][k] = v.clone();
        }
        cj
    }

    /// Job `name` made `minute` minutes after T0, in `state`: running, Complete (30 s later) or Failed.
    fn job(name: &str, minute: i64, state: &str) -> Arc<Value> {
        let mut j = json!({"metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"),
                                        "creationTimestamp": rfc3339(T0 + minute * 60)}});
        if state != "running" {
            j["status"] = json!({"conditions": [{"type": state, "status": "True"}],
                                 "completionTime": rfc3339(T0 + minute * 60 + 30)});
        }
        Arc::new(j)
    }

    fn active_names(p: &Plan) -> Vec<&str> {
        p.status["active"].as_array().into_iter().flatten().map(|r| s(r, "/name")).collect()
    }

    /// The plan's decisions in one line: `hold`, `miss HH:MM`, `replace <job>`, `start HH:MM`
    /// (the run the new Job is for), `next HH:MM`.
    fn outcome(p: &Plan) -> String {
        let hm = |t: &str| t[11..16].to_string();
        let mut words = Vec::new();
        if p.held {
            words.push("hold".to_string());
        }
        if let Some(t) = p.missed {
            words.push(format!("miss {}", hm(&rfc3339(t))));
        }
        words.extend(p.replace.iter().map(|j| format!("replace {j}")));
        if let Some(j) = &p.start {
            words.push(format!(
                "start {}",
                hm(s(j, "/metadata/annotations/batch.kubernetes.io~1cronjob-scheduled-timestamp"))
            ));
        }
        if let Some(t) = p.next {
            words.push(format!("next {}", hm(&rfc3339(t))));
        }
        words.join(", ")
    }

    /// (case, CronJob made at 00:00, its Jobs, now, what the plan does)
    type RunCase<'a> = (&'static str, &'a Value, &'a [Arc<Value>], i64, &'static str);

    #[test]
    fn plan_starts_skips_and_replaces_runs() {
        let every5 = |extra: Value, status: Value| cronjob("*/5 * * * *", extra, status);
        let plain = every5(json!({}), json!({}));
        let ran5 = every5(json!({}), json!({"lastScheduleTime": "2026-01-01T00:05:00Z"}));
        let suspended = every5(json!({"suspend": true}), json!({}));
        let forbid = every5(json!({"concurrencyPolicy": "Forbid"}), json!({}));
        let replace = every5(json!({"concurrencyPolicy": "Replace"}), json!({}));
        let deadline = every5(json!({"startingDeadlineSeconds": 60}), json!({}));
        let (none, running, finished) = (vec![], vec![job("prev", 0, "running")], vec![job("prev", 0, "Complete")]);
        let cases: &[RunCase] = &[
            ("not yet due", &plain, &none, T0 + 120, "next 00:05"),
            ("due: start a Job", &plain, &none, T0 + 310, "start 00:05, next 00:10"),
            ("already ran at 00:05", &ran5, &none, T0 + 420, "next 00:10"),
            ("two runs missed: start the latest", &plain, &none, T0 + 730, "start 00:10, next 00:15"),
            ("suspended", &suspended, &none, T0 + 310, "next 00:10"),
            ("Allow runs beside the previous", &plain, &running, T0 + 310, "start 00:05, next 00:10"),
            ("Forbid holds while the previous runs", &forbid, &running, T0 + 310, "hold, next 00:10"),
            ("Forbid starts once the previous ended", &forbid, &finished, T0 + 310, "start 00:05, next 00:10"),
            ("Replace deletes the previous", &replace, &running, T0 + 310, "replace prev, start 00:05, next 00:10"),
            ("within startingDeadlineSeconds", &deadline, &none, T0 + 360, "start 00:05, next 00:10"),
            ("past startingDeadlineSeconds", &deadline, &none, T0 + 361, "miss 00:05, next 00:10"),
        ];
        for (case, cj, jobs, now, want) in cases {
            let p = plan(cj, jobs, *now);
            assert_eq!(outcome(&p), *want, "{case}");
            assert_eq!(p.error, None, "{case}");
        }
    }

    #[test]
    fn plan_records_runs_in_status() {
        let cj = cronjob("*/5 * * * *", json!({"concurrencyPolicy": "Replace"}), json!({}));
        let p = plan(&cj, &[job("prev", 0, "running")], T0 + 310);
        assert_eq!(p.status["lastScheduleTime"], "2026-01-01T00:05:00Z");
        assert_eq!(active_names(&p), Vec::<&str>::new(), "the replaced Job is no longer active");
        let started = p.start.expect("a run is due");
        assert_eq!(s(&started, "/metadata/name"), format!("backup-{}", (T0 + 300) / 60), "minutes since the epoch");
        let scheduled = &started["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"];
        assert_eq!(scheduled, "2026-01-01T00:05:00Z");
        assert_eq!(started["metadata"]["labels"], json!({"app": "backup"}));
        assert_eq!(started["metadata"]["ownerReferences"][0]["uid"], "c1");
        assert_eq!(started["spec"], cj["spec"]["jobTemplate"]["spec"]);
        let allow = cronjob("*/5 * * * *", json!({}), json!({}));
        let p = plan(&allow, &[job("prev", 0, "running")], T0 + 310);
        assert_eq!(active_names(&p), vec!["prev"], "the started Job joins after its create");
        let missed = cronjob("*/5 * * * *", json!({"startingDeadlineSeconds": 5}), json!({}));
        assert_eq!(plan(&missed, &[], T0 + 310).status["lastScheduleTime"], "2026-01-01T00:05:00Z", "skipped for good");
        let suspended = cronjob("*/5 * * * *", json!({"suspend": true}), json!({}));
        assert_eq!(plan(&suspended, &[], T0 + 310).status, json!({}));
    }

    #[test]
    fn plan_keeps_the_newest_finished_jobs_and_the_last_success() {
        let jobs = [
            job("c1", 1, "Complete"),
            job("f1", 2, "Failed"),
            job("c2", 3, "Complete"),
            job("c3", 4, "Complete"),
            job("f2", 5, "Failed"),
            job("c4", 6, "Complete"),
            job("c5", 7, "Complete"),
            job("f3", 8, "Failed"),
        ];
        let cj = cronjob("0 0 1 1 *", json!({}), json!({"lastSuccessfulTime": rfc3339(T0 + 4 * 60 + 30)}));
        let p = plan(&cj, &jobs, T0 + 600);
        assert_eq!(p.saw_completed, vec!["c4", "c5"], "completions after the recorded last success");
        assert_eq!(p.status["lastSuccessfulTime"], rfc3339(T0 + 7 * 60 + 30));
        assert_eq!(p.prune, vec!["c1", "c2", "f1", "f2"], "3 successful and 1 failed kept by default");
        let none =
            cronjob("0 0 1 1 *", json!({"successfulJobsHistoryLimit": 0, "failedJobsHistoryLimit": 2}), json!({}));
        assert_eq!(plan(&none, &jobs, T0 + 600).prune, vec!["c1", "c2", "c3", "c4", "c5", "f1"]);
    }

    #[test]
    fn plan_fails_on_a_bad_schedule_after_pruning() {
        let jobs = [job("f1", 1, "Failed"), job("f2", 2, "Failed")];
        let p = plan(&cronjob("every day", json!({}), json!({})), &jobs, T0);
        assert!(p.error.as_deref().is_some_and(|e| e.starts_with("schedule: ")), "{:?}", p.error);
        assert_eq!(p.prune, vec!["f1"]);
        assert_eq!(p.start, None);
        let p = plan(&cronjob("* * * * *", json!({"timeZone": "Mars/Olympus"}), json!({})), &[], T0 + 120);
        assert!(p.error.as_deref().is_some_and(|e| e.contains("unknown time zone")), "{:?}", p.error);
        let p = plan(&cronjob("* * * * *", json!({}), json!({})), &[], T0 + 86_400 + 30);
        assert!(p.too_many_missed);
        assert_eq!(
            p.start.map(|j| s(&j, "/metadata/name").to_string()),
            Some(format!("backup-{}", (T0 + 86_400) / 60))
        );
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
