//! `cordon`, `uncordon` and `drain`: a node's `spec.unschedulable`, and moving its pods
//! away through the eviction subresource (which honours PodDisruptionBudgets with a 429,
//! retried as kubectl retries it), leaving DaemonSet and mirror pods, as kubectl does.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::future::join_all;
use serde_json::{Value, json};

use super::follow::{self, timeout_or_forever};
use super::get::urlencode;
use super::{Ctx, Reported};
use crate::client::{ClientError, is_not_found};

/// How long kubectl waits before evicting again after a PodDisruptionBudget said no.
const EVICTION_RETRY: Duration = Duration::from_secs(5);
/// The annotation a static pod's API copy carries.
const MIRROR: &str = "kubernetes.io/config.mirror";

/// `cordon` and `uncordon` flags.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// The node.
    node: String,
}

/// `drain` flags.
#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    /// The node.
    node: String,
    /// Leave DaemonSet pods (their controller would put them straight back).
    #[arg(long)]
    ignore_daemonsets: bool,
    /// Evict pods with emptyDir volumes too (their data is lost).
    #[arg(long)]
    delete_emptydir_data: bool,
    /// Evict pods no controller will recreate too.
    #[arg(long)]
    force: bool,
    /// Give up after this long (0: never).
    #[arg(long, default_value = "0s")]
    timeout: String,
    /// Seconds each pod gets to stop (-1: the pod's own setting).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    grace_period: i64,
    /// Delete pods instead of evicting them (ignores PodDisruptionBudgets).
    #[arg(long)]
    disable_eviction: bool,
    /// Only pods matching this label selector.
    #[arg(long)]
    pod_selector: Option<String>,
}

/// What drain does with one pod, by kubectl's rules.
#[derive(Debug, PartialEq)]
enum Plan {
    /// Evict it (with a warning to print, if any).
    Evict(Option<&'static str>),
    /// Leave it (with a warning to print, if any).
    Skip(Option<&'static str>),
    /// Refuse to drain because of it, unless a flag allows it.
    Refuse(&'static str),
}

const DAEMONSET_REFUSAL: &str = "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)";
const DAEMONSET_WARNING: &str = "ignoring DaemonSet-managed Pods";
const LOCAL_STORAGE_REFUSAL: &str = "cannot delete Pods with local storage (use --delete-emptydir-data to override)";
const LOCAL_STORAGE_WARNING: &str = "deleting Pods with local storage";
const UNMANAGED_REFUSAL: &str = "cannot delete Pods that declare no controller (use --force to override)";
const UNMANAGED_WARNING: &str = "deleting Pods that declare no controller";

fn plan(pod: &Value, a: &DrainArgs) -> Plan {
    let meta = &pod["metadata"];
    if meta["annotations"].get(MIRROR).is_some() {
        return Plan::Skip(None);
    }
    let controller = meta["ownerReferences"].as_array().into_iter().flatten().find(|o| o["controller"] == true);
    if controller.is_some_and(|c| c["kind"] == "DaemonSet") {
        return if a.ignore_daemonsets { Plan::Skip(Some(DAEMONSET_WARNING)) } else { Plan::Refuse(DAEMONSET_REFUSAL) };
    }
    let finished = matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
    let mut warning = None;
    if !finished && controller.is_none() {
        if !a.force {
            return Plan::Refuse(UNMANAGED_REFUSAL);
        }
        warning = Some(UNMANAGED_WARNING);
    }
    let local_storage = pod["spec"]["volumes"].as_array().into_iter().flatten().any(|v| v.get("emptyDir").is_some());
    if !finished && local_storage {
        if !a.delete_emptydir_data {
            return Plan::Refuse(LOCAL_STORAGE_REFUSAL);
        }
        warning = warning.or(Some(LOCAL_STORAGE_WARNING));
    }
    Plan::Evict(warning)
}

fn key(pod: &Value) -> String {
    format!(
        "{}/{}",
        pod["metadata"]["namespace"].as_str().unwrap_or(""),
        pod["metadata"]["name"].as_str().unwrap_or("")
    )
}

/// Groups pods under each message, as kubectl lists them: `msg: ns/a, ns/b; msg2: ns/c`.
fn grouped(items: &[(&'static str, String)]) -> String {
    let mut order: Vec<&str> = Vec::new();
    for (m, _) in items {
        if !order.contains(m) {
            order.push(m);
        }
    }
    order
        .iter()
        .map(|m| {
            let pods: Vec<&str> = items.iter().filter(|(x, _)| x == m).map(|(_, p)| p.as_str()).collect();
            format!("{m}: {}", pods.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Sets `spec.unschedulable`, printing kubectl's `node/NAME cordoned` (or `already ...`).
async fn set_unschedulable(ctx: &Ctx, node: &str, cordon: bool) -> anyhow::Result<()> {
    let path = format!("/api/v1/nodes/{node}");
    let current = ctx.client.get(&path).await?;
    let word = if cordon { "cordoned" } else { "uncordoned" };
    if (current["spec"]["unschedulable"] == true) == cordon {
        println!("node/{node} already {word}");
        return Ok(());
    }
    let body = json!({"spec": {"unschedulable": if cordon { Value::Bool(true) } else { Value::Null }}});
    ctx.client
        .call("PATCH", &path, Some("application/strategic-merge-patch+json"), "application/json", Some(&body))
        .await?;
    println!("node/{node} {word}");
    Ok(())
}

/// Runs `cordon` (`cordon` = true) or `uncordon`.
pub async fn cordon(ctx: &Ctx, a: NodeArgs, cordon: bool) -> anyhow::Result<()> {
    set_unschedulable(ctx, &a.node, cordon).await
}

/// Evicts (or deletes) one pod, retrying while a PodDisruptionBudget refuses, then waits
/// until it is gone.
async fn evict(
    ctx: &Ctx,
    a: &DrainArgs,
    pod: &Value,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
) -> anyhow::Result<()> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let uid = pod["metadata"]["uid"].clone();
    let item = format!("/api/v1/namespaces/{ns}/pods/{name}");
    let mut options = json!({"apiVersion": "v1", "kind": "DeleteOptions"});
    if a.grace_period >= 0 {
        options["gracePeriodSeconds"] = json!(a.grace_period);
    }
    loop {
        let sent = if a.disable_eviction {
            eprintln!("deleting pod {ns}/{name}");
            ctx.client.call("DELETE", &item, Some("application/json"), "application/json", Some(&options)).await
        } else {
            eprintln!("evicting pod {ns}/{name}");
            let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": name, "namespace": ns}, "deleteOptions": options});
            ctx.client
                .call(
                    "POST",
                    &format!("{item}/eviction"),
                    Some("application/json"),
                    "application/json",
                    Some(&eviction),
                )
                .await
        };
        match sent {
            Ok(_) => break,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) if matches!(e.downcast_ref::<ClientError>(), Some(ClientError::TooManyRequests { .. })) => {
                let message = e.downcast_ref::<ClientError>().and_then(ClientError::status).map(|s| s.message.clone());
                eprintln!(
                    "error when evicting pods/{name:?} -n {ns:?} (will retry after {}s): {}",
                    EVICTION_RETRY.as_secs(),
                    message.unwrap_or_default()
                );
                let pause = match deadline {
                    Some(d) => EVICTION_RETRY.min(d.saturating_duration_since(Instant::now())),
                    None => EVICTION_RETRY,
                };
                tokio::time::sleep(pause).await;
                if let (Some(d), Some(t)) = (deadline, timeout)
                    && Instant::now() >= d
                {
                    bail!("error when evicting pods/{name:?} -n {ns:?}: global timeout reached: {t:?}");
                }
            }
            Err(e) => return Err(e.context(format!("error when evicting pods/{name:?} -n {ns:?}"))),
        }
    }
    let pods = ctx.discovery.find("pods")?;
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
    // Gone, or replaced by a new pod of the same name (a StatefulSet's).
    follow::until(ctx, pods, Some(ns), name, left, |current| {
        Ok(current.is_none_or(|p| p["metadata"]["uid"] != uid).then_some(()))
    })
    .await
    .map_err(|e| if follow::is_timeout(&e) { e.context(format!("waiting for pod {ns}/{name} to go")) } else { e })?;
    println!("pod/{name} {}", if a.disable_eviction { "deleted" } else { "evicted" });
    Ok(())
}

/// Says why `node` was not drained, in kubectl's words, and the error that ends the command.
fn not_drained(node: &str, why: String) -> anyhow::Error {
    eprintln!("error: unable to drain node {node:?} due to error: {why}, continuing command...");
    eprintln!("There are pending nodes to be drained:\n {node}");
    eprintln!("{why}");
    Reported(why).into()
}

/// Runs `drain`: cordon, then evict every pod on the node that may go.
pub async fn drain(ctx: &Ctx, a: DrainArgs) -> anyhow::Result<()> {
    let node = a.node.clone();
    set_unschedulable(ctx, &node, true).await?;
    let timeout = timeout_or_forever(&a.timeout)?;
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut path = format!("/api/v1/pods?fieldSelector={}", urlencode(&format!("spec.nodeName={node}")));
    if let Some(sel) = &a.pod_selector {
        path = format!("{path}&labelSelector={}", urlencode(sel));
    }
    let list = ctx.client.get(&path).await.context("listing the node's pods")?;
    let mut to_evict = Vec::new();
    let mut warnings = Vec::new();
    let mut refusals = Vec::new();
    for pod in list["items"].as_array().into_iter().flatten() {
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        match plan(pod, &a) {
            Plan::Evict(w) => {
                warnings.extend(w.map(|w| (w, key(pod))));
                to_evict.push(pod.clone());
            }
            Plan::Skip(w) => warnings.extend(w.map(|w| (w, key(pod)))),
            Plan::Refuse(r) => refusals.push((r, key(pod))),
        }
    }
    if !refusals.is_empty() {
        return Err(not_drained(&node, grouped(&refusals)));
    }
    if !warnings.is_empty() {
        eprintln!("Warning: {}", grouped(&warnings));
    }
    let results = join_all(to_evict.iter().map(|pod| evict(ctx, &a, pod, timeout, deadline))).await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).map(|e| format!("{e:#}")).collect();
    if !failures.is_empty() {
        let why = format!("[{}]", failures.join(", "));
        eprintln!("There are pending pods in node {node:?} when an error occurred: {why}");
        return Err(not_drained(&node, why));
    }
    println!("node/{node} drained");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> DrainArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            drain: DrainArgs,
        }
        let mut argv = vec!["drain", "n1"];
        argv.extend(flags);
        Cli::parse_from(argv).drain
    }

    fn pod(owner: Option<&str>, phase: &str, volumes: Value) -> Value {
        let owners = owner.map_or(json!([]), |k| json!([{"kind": k, "name": "x", "controller": true}]));
        json!({"metadata": {"name": "p", "namespace": "ns", "ownerReferences": owners},
               "spec": {"volumes": volumes}, "status": {"phase": phase}})
    }

    #[test]
    fn drain_plans_follow_kubectl() {
        let plain = args(&[]);
        let ds = pod(Some("DaemonSet"), "Running", json!([]));
        assert_eq!(plan(&ds, &plain), Plan::Refuse(DAEMONSET_REFUSAL));
        assert_eq!(plan(&ds, &args(&["--ignore-daemonsets"])), Plan::Skip(Some(DAEMONSET_WARNING)));
        let rs = pod(Some("ReplicaSet"), "Running", json!([]));
        assert_eq!(plan(&rs, &plain), Plan::Evict(None));
        let bare = pod(None, "Running", json!([]));
        assert_eq!(plan(&bare, &plain), Plan::Refuse(UNMANAGED_REFUSAL));
        assert_eq!(plan(&bare, &args(&["--force"])), Plan::Evict(Some(UNMANAGED_WARNING)));
        assert_eq!(plan(&pod(None, "Succeeded", json!([])), &plain), Plan::Evict(None), "finished pods just go");
        let scratch = pod(Some("ReplicaSet"), "Running", json!([{"name": "tmp", "emptyDir": {}}]));
        assert_eq!(plan(&scratch, &plain), Plan::Refuse(LOCAL_STORAGE_REFUSAL));
        assert_eq!(plan(&scratch, &args(&["--delete-emptydir-data"])), Plan::Evict(Some(LOCAL_STORAGE_WARNING)));
        let mut mirror = pod(None, "Running", json!([]));
        mirror["metadata"]["annotations"] = json!({MIRROR: "abc"});
        assert_eq!(plan(&mirror, &plain), Plan::Skip(None));
    }

    #[test]
    fn messages_group_pods() {
        let items = vec![
            (DAEMONSET_WARNING, "kube-system/a".to_string()),
            (UNMANAGED_WARNING, "default/b".to_string()),
            (DAEMONSET_WARNING, "kube-system/c".to_string()),
        ];
        assert_eq!(
            grouped(&items),
            "ignoring DaemonSet-managed Pods: kube-system/a, kube-system/c; deleting Pods that declare no controller: default/b"
        );
    }
}
