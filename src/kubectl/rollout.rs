//! `rollout status|history|undo|restart|pause|resume`. Status judges a Deployment,
//! DaemonSet or StatefulSet with kubectl's own rules and words while watching it; history
//! and undo read a Deployment's ReplicaSets by their `deployment.kubernetes.io/revision`;
//! restart stamps `kubectl.kubernetes.io/restartedAt` into the pod template.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

use super::discovery::Resource;
use super::follow::{self, timeout_or_forever};
use super::get::urlencode;
use super::modify::one;
use super::{Ctx, pods};

const REVISION: &str = "deployment.kubernetes.io/revision";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Deployment annotations an undo keeps from the Deployment rather than the ReplicaSet.
const KEPT_ON_UNDO: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

/// `rollout` and its verb.
#[derive(clap::Args, Debug)]
pub struct RolloutArgs {
    #[command(subcommand)]
    verb: RolloutVerb,
}

#[derive(clap::Subcommand, Debug)]
enum RolloutVerb {
    /// Watch a rollout until it finishes (deployments, daemon sets, stateful sets).
    Status(StatusArgs),
    /// List a deployment's revisions, or show one with --revision.
    History(HistoryArgs),
    /// Roll a deployment back to the previous revision, or to --to-revision.
    Undo(UndoArgs),
    /// Restart every pod of a deployment, daemon set or stateful set by a new rollout.
    Restart(ObjectArgs),
    /// Stop a deployment's rollouts until resumed.
    Pause(ObjectArgs),
    /// Let a paused deployment roll out again.
    Resume(ObjectArgs),
}

/// `rollout status` flags.
#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// TYPE NAME or TYPE/NAME.
    #[arg(required = true)]
    args: Vec<String>,
    /// Keep watching until the rollout finishes (false: report once).
    #[arg(short = 'w', long, default_value_t = true, action = clap::ArgAction::Set)]
    watch: bool,
    /// Give up after this long (0: never).
    #[arg(long, default_value = "0s")]
    timeout: String,
}

/// `rollout history` flags.
#[derive(clap::Args, Debug)]
struct HistoryArgs {
    /// TYPE NAME or TYPE/NAME.
    #[arg(required = true)]
    args: Vec<String>,
    /// Show this revision's pod template.
    #[arg(long, default_value_t = 0)]
    revision: i64,
}

/// `rollout undo` flags.
#[derive(clap::Args, Debug)]
struct UndoArgs {
    /// TYPE NAME or TYPE/NAME.
    #[arg(required = true)]
    args: Vec<String>,
    /// The revision to go back to (0: the one before the current).
    #[arg(long, default_value_t = 0)]
    to_revision: i64,
}

/// The object of `restart`, `pause` and `resume`.
#[derive(clap::Args, Debug)]
struct ObjectArgs {
    /// TYPE NAME or TYPE/NAME.
    #[arg(required = true)]
    args: Vec<String>,
}

/// Ways a rollout command fails that are not the server's refusal.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The Deployment's Progressing condition says its deadline passed.
    #[error("deployment {0:?} exceeded its progress deadline")]
    DeadlineExceeded(String),
    /// `rollout status` of a set updated OnDelete.
    #[error("rollout status is only available for RollingUpdate strategy type")]
    NotRollingUpdate,
    /// The verb does not apply to this kind.
    #[error("no {verb} has been implemented for {kind}")]
    Unsupported { verb: &'static str, kind: String },
}

fn int(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// kubectl's words for where a rollout stands, and whether it is done.
fn status(kind: &str, obj: &Value) -> Result<(String, bool), RolloutError> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let generation = int(obj, "/metadata/generation");
    let observed = int(obj, "/status/observedGeneration");
    let rolling =
        obj.pointer("/spec/updateStrategy/type").and_then(Value::as_str).unwrap_or("RollingUpdate") == "RollingUpdate";
    match kind {
        "Deployment" => {
            if generation > observed {
                return Ok(("Waiting for deployment spec update to be observed...".into(), false));
            }
            let conditions = obj["status"]["conditions"].as_array().cloned().unwrap_or_default();
            if conditions.iter().any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded") {
                return Err(RolloutError::DeadlineExceeded(name.to_string()));
            }
            let replicas = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
            let updated = int(obj, "/status/updatedReplicas");
            let total = int(obj, "/status/replicas");
            let available = int(obj, "/status/availableReplicas");
            Ok(if updated < replicas {
                (
                    format!(
                        "Waiting for deployment {name:?} rollout to finish: {updated} out of {replicas} new replicas have been updated..."
                    ),
                    false,
                )
            } else if total > updated {
                (
                    format!(
                        "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
                        total - updated
                    ),
                    false,
                )
            } else if available < updated {
                (
                    format!(
                        "Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."
                    ),
                    false,
                )
            } else {
                (format!("deployment {name:?} successfully rolled out"), true)
            })
        }
        "DaemonSet" => {
            if !rolling {
                return Err(RolloutError::NotRollingUpdate);
            }
            if generation > observed {
                return Ok(("Waiting for daemon set spec update to be observed...".into(), false));
            }
            let desired = int(obj, "/status/desiredNumberScheduled");
            let updated = int(obj, "/status/updatedNumberScheduled");
            let available = int(obj, "/status/numberAvailable");
            Ok(if updated < desired {
                (
                    format!(
                        "Waiting for daemon set {name:?} rollout to finish: {updated} out of {desired} new pods have been updated..."
                    ),
                    false,
                )
            } else if available < desired {
                (
                    format!(
                        "Waiting for daemon set {name:?} rollout to finish: {available} of {desired} updated pods are available..."
                    ),
                    false,
                )
            } else {
                (format!("daemon set {name:?} successfully rolled out"), true)
            })
        }
        "StatefulSet" => {
            if !rolling {
                return Err(RolloutError::NotRollingUpdate);
            }
            if observed == 0 || generation > observed {
                return Ok(("Waiting for statefulset spec update to be observed...".into(), false));
            }
            let replicas = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
            let ready = int(obj, "/status/readyReplicas");
            if ready < replicas {
                return Ok((format!("Waiting for {} pods to be ready...", replicas - ready), false));
            }
            let updated = int(obj, "/status/updatedReplicas");
            if let Some(partition) = obj.pointer("/spec/updateStrategy/rollingUpdate/partition").and_then(Value::as_i64)
            {
                return Ok(if updated < replicas - partition {
                    (
                        format!(
                            "Waiting for partitioned roll out to finish: {updated} out of {} new pods have been updated...",
                            replicas - partition
                        ),
                        false,
                    )
                } else {
                    (format!("partitioned roll out complete: {updated} new pods have been updated..."), true)
                });
            }
            let update_rev = obj["status"]["updateRevision"].as_str().unwrap_or("");
            let current_rev = obj["status"]["currentRevision"].as_str().unwrap_or("");
            Ok(if update_rev != current_rev {
                (
                    format!(
                        "waiting for statefulset rolling update to complete {updated} pods at revision {update_rev}..."
                    ),
                    false,
                )
            } else {
                (
                    format!(
                        "statefulset rolling update complete {} pods at revision {current_rev}...",
                        int(obj, "/status/currentReplicas")
                    ),
                    true,
                )
            })
        }
        other => Err(RolloutError::Unsupported { verb: "status viewer", kind: other.to_string() }),
    }
}

/// `deployments.apps "web"`, as kubectl names an object in errors.
fn quoted(r: &Resource, name: &str) -> String {
    if r.group.is_empty() { format!("{} {name:?}", r.plural) } else { format!("{}.{} {name:?}", r.plural, r.group) }
}

async fn run_status(ctx: &Ctx, a: StatusArgs) -> anyhow::Result<()> {
    let (r, name) = one(ctx, &a.args)?;
    let timeout = timeout_or_forever(&a.timeout)?;
    let obj = ctx.client.get(&r.item(Some(&ctx.namespace), &name)).await?;
    let (message, done) = status(&r.kind, &obj)?;
    println!("{message}");
    if done || !a.watch {
        return Ok(());
    }
    let mut last = message;
    let watched = follow::until(ctx, r, Some(&ctx.namespace), &name, timeout, |current| {
        let Some(obj) = current else { bail!("object has been deleted") };
        let (message, done) = status(&r.kind, obj)?;
        // kubectl prints on every change; the same line twice says nothing new.
        if message != last {
            println!("{message}");
            last = message;
        }
        Ok(done.then_some(()))
    })
    .await;
    match watched {
        Err(e) if follow::is_timeout(&e) => bail!("timed out waiting for the condition"),
        other => other,
    }
}

/// The ReplicaSets `deployment` controls.
async fn replica_sets(ctx: &Ctx, deployment: &Value) -> anyhow::Result<Vec<Value>> {
    let uid = deployment["metadata"]["uid"].as_str().unwrap_or("");
    let mut path = format!("/apis/apps/v1/namespaces/{}/replicasets", ctx.namespace);
    if let Some(sel) = pods::selector_of(deployment) {
        path = format!("{path}?labelSelector={}", urlencode(&sel));
    }
    let list = ctx.client.get(&path).await?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|rs| {
            rs["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["uid"] == uid && o["controller"] == true)
        })
        .cloned()
        .collect())
}

fn revision(rs: &Value) -> Option<i64> {
    rs["metadata"]["annotations"][REVISION].as_str()?.parse().ok()
}

/// Revision → change cause (`<none>` without one), kubectl's `rollout history` table.
fn history_table(rss: &[Value]) -> String {
    let rows: BTreeMap<i64, String> = rss
        .iter()
        .filter_map(|rs| {
            let cause = rs["metadata"]["annotations"][CHANGE_CAUSE].as_str().filter(|c| !c.is_empty());
            Some((revision(rs)?, cause.unwrap_or("<none>").to_string()))
        })
        .collect();
    if rows.is_empty() {
        return "No rollout history found.\n".into();
    }
    // A tab writer with padding 2, as kubectl's history printer.
    let width = rows.keys().map(|r| r.to_string().len()).max().unwrap_or(0).max("REVISION".len()) + 2;
    let mut out = format!("{:<width$}CHANGE-CAUSE\n", "REVISION");
    for (rev, cause) in rows {
        out.push_str(&format!("{:<width$}{cause}\n", rev.to_string()));
    }
    out
}

/// A pod template as kubectl's `rollout history --revision` prints it (a short form of
/// `describe`'s).
fn describe_template(template: &Value) -> String {
    let pairs = |v: &Value| -> String {
        let items: Vec<String> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        if items.is_empty() { "<none>".into() } else { items.join("\n\t") }
    };
    let mut out = String::from("Pod Template:\n");
    out.push_str(&format!("  Labels:\t{}\n", pairs(&template["metadata"]["labels"])));
    let annotations = &template["metadata"]["annotations"];
    if annotations.as_object().is_some_and(|m| !m.is_empty()) {
        out.push_str(&format!("  Annotations:\t{}\n", pairs(annotations)));
    }
    out.push_str("  Containers:\n");
    for c in template["spec"]["containers"].as_array().into_iter().flatten() {
        out.push_str(&format!("   {}:\n", c["name"].as_str().unwrap_or("")));
        out.push_str(&format!("    Image:\t{}\n", c["image"].as_str().unwrap_or("")));
        let ports: Vec<String> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("{}/{}", p["containerPort"], p["protocol"].as_str().unwrap_or("TCP")))
            .collect();
        out.push_str(&format!("    Port:\t{}\n", if ports.is_empty() { "<none>".into() } else { ports.join(", ") }));
        for (key, label) in [("command", "Command"), ("args", "Args")] {
            if let Some(items) = c[key].as_array().filter(|a| !a.is_empty()) {
                out.push_str(&format!("    {label}:\n"));
                for i in items {
                    out.push_str(&format!("      {}\n", i.as_str().unwrap_or_default()));
                }
            }
        }
        let env: Vec<String> = c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| format!("{}:\t{}", e["name"].as_str().unwrap_or(""), e["value"].as_str().unwrap_or("")))
            .collect();
        out.push_str(&format!(
            "    Environment:{}\n",
            if env.is_empty() { "\t<none>".into() } else { format!("\n      {}", env.join("\n      ")) }
        ));
    }
    out
}

fn deployment_only<'a>(ctx: &'a Ctx, args: &[String], verb: &'static str) -> anyhow::Result<(&'a Resource, String)> {
    let (r, name) = one(ctx, args)?;
    if r.kind != "Deployment" {
        return Err(RolloutError::Unsupported { verb, kind: r.kind.clone() }.into());
    }
    Ok((r, name))
}

async fn run_history(ctx: &Ctx, a: HistoryArgs) -> anyhow::Result<()> {
    let (r, name) = deployment_only(ctx, &a.args, "history viewer")?;
    let deployment = ctx.client.get(&r.item(Some(&ctx.namespace), &name)).await?;
    let rss = replica_sets(ctx, &deployment).await?;
    if a.revision > 0 {
        let rs = rss
            .iter()
            .find(|rs| revision(rs) == Some(a.revision))
            .with_context(|| format!("unable to find the specified revision {}", a.revision))?;
        let mut template = rs["spec"]["template"].clone();
        if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
            labels.remove(POD_TEMPLATE_HASH);
        }
        println!("{}/{name} with revision #{}", r.display(), a.revision);
        println!("{}", describe_template(&template));
        return Ok(());
    }
    println!("{}/{name}", r.display());
    println!("{}", history_table(&rss));
    Ok(())
}

/// The ReplicaSet an undo goes back to: revision `to`, or with 0 the newest but one.
fn pick_revision<'a>(rss: &'a [Value], to: i64, name: &str) -> anyhow::Result<(&'a Value, i64)> {
    let mut by_revision: Vec<(i64, &Value)> = rss.iter().filter_map(|rs| Some((revision(rs)?, rs))).collect();
    by_revision.sort_by_key(|(rev, _)| std::cmp::Reverse(*rev));
    if to > 0 {
        return by_revision
            .into_iter()
            .find(|(rev, _)| *rev == to)
            .map(|(rev, rs)| (rs, rev))
            .with_context(|| format!("unable to find specified revision {to} in history"));
    }
    by_revision
        .get(1)
        .map(|(rev, rs)| (*rs, *rev))
        .with_context(|| format!("no rollout history found for deployment {name:?}"))
}

/// The JSON patch that puts `rs`'s template back into `deployment`, with the
/// ReplicaSet's annotations; `None` when the template is already the same.
fn undo_patch(deployment: &Value, rs: &Value) -> Option<Value> {
    let mut template = rs["spec"]["template"].clone();
    if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
        labels.remove(POD_TEMPLATE_HASH);
    }
    if template == deployment["spec"]["template"] {
        return None;
    }
    let mut annotations = Map::new();
    let current = &deployment["metadata"]["annotations"];
    for key in KEPT_ON_UNDO {
        if let Some(v) = current.get(*key) {
            annotations.insert((*key).to_string(), v.clone());
        }
    }
    for (k, v) in rs["metadata"]["annotations"].as_object().into_iter().flatten() {
        if !KEPT_ON_UNDO.contains(&k.as_str()) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    Some(json!([
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": annotations},
    ]))
}

async fn run_undo(ctx: &Ctx, a: UndoArgs) -> anyhow::Result<()> {
    let (r, name) = deployment_only(ctx, &a.args, "rollbacker")?;
    let path = r.item(Some(&ctx.namespace), &name);
    let deployment = ctx.client.get(&path).await?;
    if deployment["spec"]["paused"] == true {
        bail!("you cannot rollback a paused deployment; resume it first with 'kubectl rollout resume' and try again");
    }
    let rss = replica_sets(ctx, &deployment).await?;
    let (rs, rev) = pick_revision(&rss, a.to_revision, &name)?;
    let Some(patch) = undo_patch(&deployment, rs) else {
        println!("{}/{name} skipped rollback (current template already matches revision {rev})", r.display());
        return Ok(());
    };
    ctx.client
        .call("PATCH", &path, Some("application/json-patch+json"), "application/json", Some(&patch))
        .await
        .with_context(|| format!("failed restoring revision {rev}"))?;
    println!("{}/{name} rolled back", r.display());
    Ok(())
}

/// The strategic merge patch `rollout restart` sends.
fn restart_patch(now: &str) -> Value {
    json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}})
}

async fn run_restart(ctx: &Ctx, a: ObjectArgs) -> anyhow::Result<()> {
    let (r, name) = one(ctx, &a.args)?;
    if !matches!(r.kind.as_str(), "Deployment" | "DaemonSet" | "StatefulSet") {
        return Err(RolloutError::Unsupported { verb: "restarter", kind: r.kind.clone() }.into());
    }
    let path = r.item(Some(&ctx.namespace), &name);
    let obj = ctx.client.get(&path).await?;
    if obj["spec"]["paused"] == true {
        bail!("{} can't restart paused deployment (run rollout resume first)", quoted(r, &name));
    }
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let body = restart_patch(&now);
    ctx.client
        .call("PATCH", &path, Some("application/strategic-merge-patch+json"), "application/json", Some(&body))
        .await?;
    println!("{}/{name} restarted", r.display());
    Ok(())
}

async fn run_pause(ctx: &Ctx, a: ObjectArgs, pause: bool) -> anyhow::Result<()> {
    let (r, name) = deployment_only(ctx, &a.args, if pause { "pauser" } else { "resumer" })?;
    let path = r.item(Some(&ctx.namespace), &name);
    let obj = ctx.client.get(&path).await?;
    let (word, state) = if pause { ("paused", "already paused") } else { ("resumed", "not paused") };
    if (obj["spec"]["paused"] == true) == pause {
        bail!("{} is {state}", quoted(r, &name));
    }
    let body = json!({"spec": {"paused": if pause { Value::Bool(true) } else { Value::Null }}});
    ctx.client.call("PATCH", &path, Some("application/merge-patch+json"), "application/json", Some(&body)).await?;
    println!("{}/{name} {word}", r.display());
    Ok(())
}

/// Runs `rollout`.
pub async fn run(ctx: &Ctx, a: RolloutArgs) -> anyhow::Result<()> {
    match a.verb {
        RolloutVerb::Status(s) => run_status(ctx, s).await,
        RolloutVerb::History(h) => run_history(ctx, h).await,
        RolloutVerb::Undo(u) => run_undo(ctx, u).await,
        RolloutVerb::Restart(o) => run_restart(ctx, o).await,
        RolloutVerb::Pause(o) => run_pause(ctx, o, true).await,
        RolloutVerb::Resume(o) => run_pause(ctx, o, false).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(generation: i64, status: Value) -> Value {
        json!({"metadata": {"name": "web", "generation": generation}, "spec": {"replicas": 3}, "status": status})
    }

    #[test]
    fn deployment_status_in_kubectl_words() {
        let cases = [
            (2, json!({"observedGeneration": 1}), "Waiting for deployment spec update to be observed...", false),
            (
                1,
                json!({"observedGeneration": 1, "updatedReplicas": 1, "replicas": 3}),
                "Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated...",
                false,
            ),
            (
                1,
                json!({"observedGeneration": 1, "updatedReplicas": 3, "replicas": 4}),
                "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination...",
                false,
            ),
            (
                1,
                json!({"observedGeneration": 1, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 1}),
                "Waiting for deployment \"web\" rollout to finish: 1 of 3 updated replicas are available...",
                false,
            ),
            (
                1,
                json!({"observedGeneration": 1, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 3}),
                "deployment \"web\" successfully rolled out",
                true,
            ),
        ];
        for (generation, st, want, done) in cases {
            assert_eq!(status("Deployment", &deployment(generation, st)).unwrap(), (want.to_string(), done));
        }
        let stuck = deployment(
            1,
            json!({"observedGeneration": 1, "conditions": [{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]}),
        );
        assert_eq!(
            status("Deployment", &stuck).unwrap_err().to_string(),
            "deployment \"web\" exceeded its progress deadline"
        );
    }

    #[test]
    fn daemon_set_and_stateful_set_status() {
        let ds = json!({"metadata": {"name": "agent", "generation": 1}, "status": {"observedGeneration": 1,
            "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 1}});
        assert_eq!(
            status("DaemonSet", &ds).unwrap().0,
            "Waiting for daemon set \"agent\" rollout to finish: 1 of 2 updated pods are available..."
        );
        let on_delete = json!({"metadata": {"name": "agent"}, "spec": {"updateStrategy": {"type": "OnDelete"}}});
        assert!(matches!(status("DaemonSet", &on_delete), Err(RolloutError::NotRollingUpdate)));
        let sts = json!({"metadata": {"name": "db", "generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 2, "currentReplicas": 2,
                       "currentRevision": "db-1", "updateRevision": "db-1"}});
        assert_eq!(
            status("StatefulSet", &sts).unwrap(),
            ("statefulset rolling update complete 2 pods at revision db-1...".to_string(), true)
        );
        let mut waiting = sts.clone();
        waiting["status"]["readyReplicas"] = json!(1);
        assert_eq!(status("StatefulSet", &waiting).unwrap().0, "Waiting for 1 pods to be ready...");
        assert!(status("Job", &sts).is_err());
    }

    fn rs(rev: &str, cause: Option<&str>, image: &str) -> Value {
        let mut annotations = json!({REVISION: rev});
        if let Some(c) = cause {
            annotations[CHANGE_CAUSE] = json!(c);
        }
        json!({"metadata": {"name": format!("web-{rev}"), "annotations": annotations},
               "spec": {"template": {"metadata": {"labels": {"app": "web", POD_TEMPLATE_HASH: format!("h{rev}")}},
                                     "spec": {"containers": [{"name": "web", "image": image}]}}}})
    }

    #[test]
    fn history_lists_revisions_in_order() {
        let rss = vec![rs("2", None, "b"), rs("10", Some("kubectl set image"), "c"), rs("1", None, "a")];
        assert_eq!(
            history_table(&rss),
            "REVISION  CHANGE-CAUSE\n1         <none>\n2         <none>\n10        kubectl set image\n"
        );
        assert_eq!(history_table(&[]), "No rollout history found.\n");
        let text = describe_template(&rss[0]["spec"]["template"]);
        assert!(text.contains("    Image:\tb\n") && text.starts_with("Pod Template:\n  Labels:\tapp=web"), "{text}");
    }

    #[test]
    fn undo_goes_to_the_previous_or_the_named_revision() {
        let rss = vec![rs("1", None, "a"), rs("3", None, "c"), rs("2", Some("second"), "b")];
        assert_eq!(pick_revision(&rss, 0, "web").unwrap().1, 2);
        assert_eq!(pick_revision(&rss, 1, "web").unwrap().1, 1);
        assert_eq!(
            pick_revision(&rss, 7, "web").unwrap_err().to_string(),
            "unable to find specified revision 7 in history"
        );
        assert!(pick_revision(&rss[..1], 0, "web").unwrap_err().to_string().contains("no rollout history"));

        let deployment = json!({"metadata": {"annotations": {REVISION: "3", "team": "x"}},
            "spec": {"template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "c"}]}}}});
        let patch = undo_patch(&deployment, &rss[2]).unwrap();
        assert_eq!(patch[0]["path"], "/spec/template");
        assert_eq!(patch[0]["value"]["spec"]["containers"][0]["image"], "b");
        assert_eq!(patch[0]["value"]["metadata"]["labels"], json!({"app": "web"}), "the hash label is dropped");
        assert_eq!(patch[1]["value"], json!({REVISION: "3", CHANGE_CAUSE: "second"}));
        assert!(undo_patch(&deployment, &rss[1]).is_none(), "the same template is skipped");
    }

    #[test]
    fn restart_stamps_the_template() {
        assert_eq!(
            restart_patch("2024-05-01T10:00:00Z"),
            json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: "2024-05-01T10:00:00Z"}}}}})
        );
    }
}
