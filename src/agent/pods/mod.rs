//! The pods bound to this node: a watch on them (`spec.nodeName=<node>`) and one worker
//! task per pod that drives it (see [`worker`]). At start, pods whose directories a
//! previous agent left behind get their workers first, so running containers are adopted,
//! never started twice; pods the API no longer has are stopped and removed.

pub mod env;
pub mod exec;
pub mod images;
pub mod killall;
pub mod probes;
pub mod run;
pub mod sa_tokens;
pub mod volumes;
pub mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

pub use crate::client::is_not_found;
use crate::client::{Client, Lines};
use crate::runtime::Layout;
use worker::{Msg, Worker};

/// What every pod worker shares.
pub struct Ctx {
    pub client: Client,
    pub node: String,
    pub layout: Layout,
    pub images_root: PathBuf,
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub pids_limit: Option<i64>,
    /// Whether memory limits also forbid swap (see [`crate::runtime::cgroup::swap_limitable`]).
    pub no_swap: bool,
    /// The node's allocatable resources (limits default to them in the downward API).
    pub allocatable: Value,
    pub host_ip: String,
    /// The pod network, when the node has a pod range.
    pub network: Option<Network>,
    /// The node's Services and cluster DNS, when the node network runs.
    pub net: Option<Arc<crate::agent::net::NodeNet>>,
    /// The pods' service account tokens (projected volumes).
    pub tokens: sa_tokens::TokenCache,
}

/// The node's pod range and its address allocator.
pub struct Network {
    pub cidr: crate::agent::net::bridge::PodCidr,
    pub ipam: crate::agent::net::bridge::Ipam,
}

/// Records an Event about `pod` (in the background: events never hold a pod up).
pub fn post_event(ctx: &Arc<Ctx>, pod: &Value, kind: &str, reason: &str, message: String, field: Option<String>) {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut involved = json!({"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name,
                              "uid": pod["metadata"]["uid"], "resourceVersion": pod["metadata"]["resourceVersion"]});
    if let Some(f) = field {
        involved["fieldPath"] = json!(f);
    }
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{}", &uuid::Uuid::new_v4().simple().to_string()[..16]), "namespace": ns},
        "involvedObject": involved,
        "reason": reason, "message": message, "type": kind,
        "source": {"component": "kubelet", "host": ctx.node},
        "reportingComponent": "kubelet", "reportingInstance": ctx.node,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let path = format!("/api/v1/namespaces/{ns}/events");
        if let Err(e) = ctx.client.call("POST", &path, Some("application/json"), "application/json", Some(&event)).await
        {
            tracing::debug!(error = %format!("{e:#}"), "recording an event");
        }
    });
}

/// The workers, by pod UID.
struct Workers {
    ctx: Arc<Ctx>,
    by_uid: HashMap<String, mpsc::UnboundedSender<Msg>>,
}

impl Workers {
    fn send(&mut self, pod: Value) {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
        if uid.is_empty() {
            return;
        }
        if let Some(tx) = self.by_uid.get(&uid)
            && tx.send(Msg::Pod(pod.clone())).is_ok()
        {
            return;
        }
        // Finished pods that the API still lists have nothing left to run here.
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker::new(self.ctx.clone(), pod, tx.clone());
        tokio::spawn(worker.run(rx));
        self.by_uid.insert(uid, tx);
    }

    fn gone(&mut self, uid: &str) {
        if let Some(tx) = self.by_uid.remove(uid) {
            let _ = tx.send(Msg::Gone);
        }
    }

    fn prune(&mut self) {
        self.by_uid.retain(|_, tx| !tx.is_closed());
        let live = self.by_uid.keys().cloned().collect();
        self.ctx.tokens.retain_pods(&live);
    }
}

/// Pods a previous agent left on this node, as it last saw them.
fn leftovers(ctx: &Ctx) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(&ctx.layout.pods_dir) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("pod.json")).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

/// Watches this node's pods and keeps a worker per pod until `stop`.
pub async fn run(ctx: Arc<Ctx>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut workers = Workers { ctx: ctx.clone(), by_uid: HashMap::new() };
    for pod in leftovers(&ctx) {
        workers.send(pod);
    }
    let selector = format!("fieldSelector=spec.nodeName%3D{}", ctx.node);
    loop {
        let listed = ctx.client.get(&format!("/api/v1/pods?{selector}")).await;
        let rv = match listed {
            Ok(list) => {
                let items = list["items"].as_array().cloned().unwrap_or_default();
                let live: std::collections::HashSet<String> =
                    items.iter().filter_map(|p| p["metadata"]["uid"].as_str().map(str::to_string)).collect();
                let stale: Vec<String> = workers.by_uid.keys().filter(|u| !live.contains(*u)).cloned().collect();
                for uid in stale {
                    workers.gone(&uid);
                }
                for pod in items {
                    workers.send(pod);
                }
                list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string()
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "listing this node's pods");
                let wait = crate::client::retry_hint(&e).unwrap_or_default().max(Duration::from_secs(2));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let path = format!("/api/v1/pods?{selector}&watch=true&resourceVersion={rv}&allowWatchBookmarks=true");
        let body = match ctx.client.stream(&path, "application/json").await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "watching this node's pods");
                // A 429 (too many watches) says how long to wait.
                let wait = crate::client::retry_hint(&e).unwrap_or_default().max(Duration::from_secs(1));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let mut lines = Lines::new(body);
        loop {
            tokio::select! {
                ev = lines.next() => match ev {
                    Ok(Some(ev)) => {
                        let obj = ev["object"].clone();
                        match ev["type"].as_str() {
                            Some("ADDED" | "MODIFIED") => workers.send(obj),
                            Some("DELETED") => workers.gone(obj["metadata"]["uid"].as_str().unwrap_or("")),
                            Some("ERROR") => break,
                            _ => {}
                        }
                        workers.prune();
                    }
                    _ => break,
                },
                _ = stop.changed() => return,
            }
        }
    }
}
