//! The control loops that run inside `bramble server` (the controller manager and the
//! scheduler). Each talks to the API as any client does, through the in-process
//! [`conn::ApiConn`], reads shared watched caches ([`informer::Informer`]),
//! and has one file with the same shape: handlers that turn changes into keys on its
//! [`queue::WorkQueue`], a reconcile of one key that computes the desired state with a
//! pure function (unit-tested without a server), and writes the difference. A failed
//! reconcile comes back with back-off; one that waits for a deadline asks to be requeued
//! after it.

pub mod clusterroleaggregation;
pub mod conn;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslices;
pub mod events;
pub mod gc;
pub mod history;
pub mod informer;
pub mod ingress;
pub mod job;
pub mod namespace;
pub mod nodelifecycle;
pub mod queue;
pub mod replicaset;
pub mod scheduler;
pub mod serviceaccounts;
pub mod servicelb;
pub mod statefulset;
pub mod storage;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use conn::ApiConn;
use informer::Informer;
use queue::WorkQueue;

/// What every control loop shares: the connection, the caches, the event recorder.
#[derive(Clone)]
pub struct Ctx {
    pub conn: Arc<ApiConn>,
    pub pods: Arc<Informer>,
    pub nodes: Arc<Informer>,
    pub services: Arc<Informer>,
    pub endpointslices: Arc<Informer>,
    pub replicasets: Arc<Informer>,
    pub deployments: Arc<Informer>,
    pub statefulsets: Arc<Informer>,
    pub daemonsets: Arc<Informer>,
    pub jobs: Arc<Informer>,
    pub cronjobs: Arc<Informer>,
    pub controllerrevisions: Arc<Informer>,
    pub pvcs: Arc<Informer>,
    pub pvs: Arc<Informer>,
    pub namespaces: Arc<Informer>,
    pub pdbs: Arc<Informer>,
    pub storageclasses: Arc<Informer>,
    /// The nodes' heartbeat Leases (`kube-node-lease`).
    pub leases: Arc<Informer>,
    /// Every namespace's ServiceAccounts (the serviceaccount controller keeps `default`).
    pub serviceaccounts: Arc<Informer>,
    /// Every ClusterRole (aggregation).
    pub clusterroles: Arc<Informer>,
    /// Every namespace's `kube-root-ca.crt` ConfigMap and no other ConfigMap: only those
    /// are kept by a control loop, and a cache of all would hold users' data for nothing.
    pub root_ca_configmaps: Arc<Informer>,
    /// Every Ingress and IngressClass (the Ingress controller's status and Events).
    pub ingresses: Arc<Informer>,
    pub ingressclasses: Arc<Informer>,
    pub events: events::Recorder,
}

impl Ctx {
    fn new(conn: Arc<ApiConn>) -> Arc<Ctx> {
        Arc::new(Ctx {
            events: events::Recorder::new(conn.clone()),
            conn,
            pods: Informer::packed(
                "/api/v1/pods",
                vec![(BY_NODE, pod_node_index), (BY_CONTROLLER, controller_index), (ORPHANS_IN, orphan_index)],
            ),
            nodes: Informer::new("/api/v1/nodes"),
            services: Informer::new("/api/v1/services"),
            endpointslices: Informer::new("/apis/discovery.k8s.io/v1/endpointslices"),
            replicasets: Informer::new("/apis/apps/v1/replicasets"),
            deployments: Informer::new("/apis/apps/v1/deployments"),
            statefulsets: Informer::new("/apis/apps/v1/statefulsets"),
            daemonsets: Informer::new("/apis/apps/v1/daemonsets"),
            jobs: Informer::new("/apis/batch/v1/jobs"),
            cronjobs: Informer::new("/apis/batch/v1/cronjobs"),
            controllerrevisions: Informer::new("/apis/apps/v1/controllerrevisions"),
            pvcs: Informer::new("/api/v1/persistentvolumeclaims"),
            pvs: Informer::new("/api/v1/persistentvolumes"),
            namespaces: Informer::new("/api/v1/namespaces"),
            pdbs: Informer::new("/apis/policy/v1/poddisruptionbudgets"),
            storageclasses: Informer::new("/apis/storage.k8s.io/v1/storageclasses"),
            leases: Informer::new("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"),
            serviceaccounts: Informer::new("/api/v1/serviceaccounts"),
            clusterroles: Informer::new("/apis/rbac.authorization.k8s.io/v1/clusterroles"),
            root_ca_configmaps: Informer::new(&format!(
                "/api/v1/configmaps?fieldSelector=metadata.name%3D{}",
                serviceaccounts::ROOT_CA_CONFIGMAP
            )),
            ingresses: Informer::new("/apis/networking.k8s.io/v1/ingresses"),
            ingressclasses: Informer::new("/apis/networking.k8s.io/v1/ingressclasses"),
        })
    }

    /// The caches of kinds that own or are owned (what the garbage collector follows), with
    /// their kinds.
    fn owned_kinds(&self) -> Vec<(&'static str, Arc<Informer>)> {
        vec![
            ("Pod", self.pods.clone()),
            ("ReplicaSet", self.replicasets.clone()),
            ("Deployment", self.deployments.clone()),
            ("StatefulSet", self.statefulsets.clone()),
            ("DaemonSet", self.daemonsets.clone()),
            ("Job", self.jobs.clone()),
            ("CronJob", self.cronjobs.clone()),
            ("ControllerRevision", self.controllerrevisions.clone()),
            ("PersistentVolumeClaim", self.pvcs.clone()),
            // Services own their EndpointSlices.
            ("Service", self.services.clone()),
            ("EndpointSlice", self.endpointslices.clone()),
        ]
    }

    fn informers(&self) -> Vec<Arc<Informer>> {
        let mut all: Vec<Arc<Informer>> = self.owned_kinds().into_iter().map(|(_, i)| i).collect();
        all.push(self.nodes.clone());
        all.push(self.leases.clone());
        all.push(self.pvs.clone());
        all.push(self.namespaces.clone());
        all.push(self.pdbs.clone());
        all.push(self.storageclasses.clone());
        all.push(self.serviceaccounts.clone());
        all.push(self.clusterroles.clone());
        all.push(self.root_ca_configmaps.clone());
        all.push(self.ingresses.clone());
        all.push(self.ingressclasses.clone());
        all
    }
}

/// Settings of the control loops (kube-controller-manager's flags where they exist).
#[derive(Clone, Debug)]
pub struct ControlOptions {
    /// How long a node may stay silent before it is marked unreachable
    /// (`--node-monitor-grace-period`).
    pub node_monitor_grace: Duration,
    /// Where local volumes' directories go on their nodes (`--default-local-storage-path`).
    pub local_storage_path: String,
    /// The disk kind (`ssd`/`hdd`) whose StorageClass is the default.
    pub default_disk: String,
    /// The cluster CA certificate (PEM) published into every namespace as
    /// `kube-root-ca.crt`, for pods to verify the API server with (`--root-ca-file`).
    pub root_ca_pem: String,
    /// Whether LoadBalancer Services are served on the nodes' addresses (ServiceLB; off
    /// with `--disable servicelb`, for MetalLB or kube-vip).
    pub servicelb: bool,
    /// Whether the built-in Ingress controller runs (off with `--disable ingress`, which
    /// also removes its IngressClass so no node's proxy takes 80 and 443).
    pub ingress: bool,
}

impl Ctx {
    /// The same caches, with a connection and event recorder acting as `user`: each loop
    /// writes as its own identity, with only what its role grants (upstream's
    /// `--use-service-account-credentials`).
    fn acting_as(&self, user: crate::api::auth::User) -> Arc<Ctx> {
        let conn = Arc::new(self.conn.as_user(user));
        Arc::new(Ctx { events: events::Recorder::new(conn.clone()), conn, ..self.clone() })
    }

    /// The caches with the connection of the controller whose ServiceAccount is `name`.
    fn controller(&self, name: &str) -> Arc<Ctx> {
        self.acting_as(crate::api::rbac_controllers::controller_user(name))
    }
}

/// The store's leadership signal closed: the Raft core stopped, and nothing will say who
/// leads any more.
#[derive(Debug, thiserror::Error)]
#[error("the store's leadership signal closed (its Raft core stopped): the control loops cannot follow it")]
pub struct LeadershipLost;

/// Runs the control loops while this server leads the store's Raft group (`leading`),
/// so that with several servers exactly one runs them; returns when `stop` turns true, or
/// with [`LeadershipLost`] when the signal closes (the caller exits for its supervisor to
/// restart it, rather than running loops no one may run).
pub async fn run(
    api: Arc<crate::api::Api>,
    opts: ControlOptions,
    leading: tokio::sync::watch::Receiver<bool>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), LeadershipLost> {
    // The shared caches only read; each loop writes as itself (see `Ctx::controller`).
    let conn = Arc::new(ApiConn::new(api, crate::api::rbac_controllers::manager_user()));
    follow_leadership(leading, stop, || start_all(conn.clone(), &opts)).await
}

/// Starts `start`'s tasks whenever `leading` turns true and aborts them when it turns
/// false. A closed signal ends it with an error at once: `wait_for` on a closed channel
/// answers from the last value, so waiting again would start and abort the loops in a busy
/// cycle for ever.
async fn follow_leadership(
    mut leading: tokio::sync::watch::Receiver<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    start: impl Fn() -> Vec<tokio::task::JoinHandle<()>>,
) -> Result<(), LeadershipLost> {
    loop {
        let closed = tokio::select! {
            r = leading.wait_for(|l| *l) => r.is_err(),
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        if closed || leading.has_changed().is_err() {
            return Err(LeadershipLost);
        }
        tracing::info!("leading: the control loops run here");
        let tasks = start();
        let outcome = tokio::select! {
            r = leading.wait_for(|l| !*l) => if r.is_err() { Some(Err(LeadershipLost)) } else { None },
            _ = stop.wait_for(|s| *s) => Some(Ok(())),
        };
        for t in tasks {
            t.abort();
        }
        if let Some(done) = outcome {
            return done;
        }
        tracing::warn!("no longer leading: the control loops stop here");
    }
}

/// Starts every control loop over fresh caches.
fn start_all(conn: Arc<ApiConn>, opts: &ControlOptions) -> Vec<tokio::task::JoinHandle<()>> {
    let ctx = Ctx::new(conn);
    let mut tasks = Vec::new();
    // Handlers first, so the first list reaches every loop.
    tasks.extend(scheduler::start(&ctx.acting_as(crate::api::rbac_controllers::scheduler_user())));
    tasks.extend(replicaset::start(&ctx.controller("replicaset-controller")));
    tasks.extend(deployment::start(&ctx.controller("deployment-controller")));
    tasks.extend(gc::start(&ctx.controller("generic-garbage-collector")));
    tasks.extend(job::start(&ctx.controller("job-controller")));
    tasks.extend(cronjob::start(&ctx.controller("cronjob-controller")));
    tasks.extend(daemonset::start(&ctx.controller("daemon-set-controller")));
    tasks.extend(statefulset::start(&ctx.controller("statefulset-controller")));
    tasks.extend(namespace::start(&ctx.controller("namespace-controller")));
    tasks.extend(disruption::start(&ctx.controller("disruption-controller")));
    tasks.extend(endpoints::start(&ctx.controller("endpoint-controller")));
    tasks.extend(endpointslices::start(&ctx.controller("endpointslice-controller")));
    tasks.extend(nodelifecycle::start(&ctx.controller("node-controller"), opts.node_monitor_grace));
    tasks.extend(storage::start(
        &ctx.controller("persistent-volume-binder"),
        opts.local_storage_path.clone(),
        opts.default_disk.clone(),
    ));
    tasks.extend(serviceaccounts::start(
        &ctx.controller("service-account-controller"),
        &ctx.controller("root-ca-cert-publisher"),
        &opts.root_ca_pem,
    ));
    tasks.extend(clusterroleaggregation::start(&ctx.controller("clusterrole-aggregation-controller")));
    if opts.servicelb {
        tasks.extend(servicelb::start(&ctx.controller("service-lb-controller")));
    }
    if opts.ingress {
        tasks.extend(ingress::start(&ctx.controller("ingress-controller")));
    } else {
        let c = ctx.controller("ingress-controller");
        tasks.push(tokio::spawn(async move {
            if let Err(e) = ingress::remove_class(&c).await {
                tracing::warn!(error = %format!("{e:#}"), "removing the IngressClass of the disabled Ingress controller");
            }
        }));
    }
    for inf in ctx.informers() {
        tasks.push(tokio::spawn(inf.run(ctx.conn.clone())));
    }
    tasks
}

/// Runs `workers` reconcilers over `queue`: a key that fails comes back after its back-off,
/// one that asks for a later look comes back after that delay.
pub fn workers<F, Fut>(
    name: &'static str,
    queue: Arc<WorkQueue>,
    workers: usize,
    reconcile: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<Option<Duration>>> + Send,
{
    (0..workers)
        .map(|_| {
            let queue = queue.clone();
            let reconcile = reconcile.clone();
            tokio::spawn(async move {
                loop {
                    let key = queue.next().await;
                    // A reconcile that panics fails like one that errs (logged, retried
                    // with back-off) instead of taking this worker down for good.
                    let run = std::panic::AssertUnwindSafe(reconcile(key.clone()));
                    let outcome = match futures_util::FutureExt::catch_unwind(run).await {
                        Ok(r) => r,
                        Err(panic) => {
                            let what = crate::panics::message(&*panic);
                            tracing::error!(
                                controller = name,
                                key,
                                panic = what,
                                "reconcile panicked; retrying with back-off"
                            );
                            Err(anyhow::anyhow!("reconcile panicked: {what}"))
                        }
                    };
                    match outcome {
                        Ok(again) => {
                            queue.forget(&key);
                            if let Some(after) = again {
                                queue.add_after(&key, after);
                            }
                        }
                        Err(e) => {
                            if crate::client::is_forbidden(&e) {
                                // Each loop acts with only its role's rights: a refusal is
                                // a role missing a permission, or a namespace going away.
                                tracing::warn!(controller = name, key, error = %format!("{e:#}"), "reconcile refused");
                            } else {
                                tracing::debug!(controller = name, key, error = %format!("{e:#}"), "reconcile failed");
                            }
                            // The error's kind sets the least wait: a 429's Retry-After, a
                            // full disk's few seconds; otherwise the doubling back-off.
                            queue.retry_at_least(&key, crate::client::retry_hint(&e).unwrap_or_default());
                        }
                    }
                    queue.done(&key);
                }
            })
        })
        .collect()
}

/// The wiring every workload controller has: the key of each changed object of `own`, and
/// the owner's key of each changed object of `owned` whose controller is a `kind`, go on
/// `queue`.
pub fn follow(queue: &Arc<WorkQueue>, own: &Informer, owned: &Informer, kind: &'static str) {
    let q = queue.clone();
    own.on_change(Box::new(move |_, new| {
        if let Some(obj) = new {
            q.add(&informer::key_of(obj));
        }
    }));
    let q = queue.clone();
    owned.on_change(Box::new(move |old, new| {
        for obj in [old, new].into_iter().flatten() {
            if let Some(owner) = controller_of(obj).filter(|o| o["kind"] == kind) {
                q.add(&format!("{}/{}", s(obj, "/metadata/namespace"), s(owner, "/name")));
            }
        }
    }));
}

/// [`workers`] for a reconcile that needs the shared context and its own [`Writes`].
pub fn owner_workers<F, Fut>(
    name: &'static str,
    queue: Arc<WorkQueue>,
    n: usize,
    ctx: &Arc<Ctx>,
    reconcile: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn(Arc<Ctx>, Arc<Writes>, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<Option<Duration>>> + Send,
{
    let writes = Arc::new(Writes::default());
    let ctx = ctx.clone();
    workers(name, queue, n, move |key| reconcile(ctx.clone(), writes.clone(), key))
}

/// The newest revision each key's own writes produced, so its next reconcile waits for the
/// cache to show them (client-go's "expectations", by revision instead of by count).
#[derive(Default)]
pub struct Writes(Mutex<HashMap<String, u64>>);

impl Writes {
    pub fn note(&self, key: &str, rev: u64) {
        if let Ok(mut m) = self.0.lock() {
            let e = m.entry(key.to_string()).or_default();
            *e = (*e).max(rev);
        }
    }

    /// Waits until `informer` shows every write made for `key`.
    pub async fn settle(&self, key: &str, informer: &Informer) {
        let rev = self.0.lock().ok().and_then(|mut m| m.remove(key));
        if let Some(rev) = rev {
            informer.caught_up(rev).await;
        }
    }
}

/// `s(obj, "/metadata/name")`: a string field, or "" when absent.
pub fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// An integer field, or 0 when absent (Go's zero value, as status counts read).
pub fn int(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// The owner reference marked `controller: true`, if any.
pub fn controller_of(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/ownerReferences")?.as_array()?.iter().find(|r| r["controller"] == true)
}

/// The pods cache's index of pods by the node they are bound to.
pub const BY_NODE: &str = "node";
/// The pods cache's index of pods by the uid of their controller.
pub const BY_CONTROLLER: &str = "controller";
/// The pods cache's index of pods without a controller, by namespace (for adoption).
pub const ORPHANS_IN: &str = "orphans";

fn pod_node_index(pod: &Value) -> Option<String> {
    Some(s(pod, "/spec/nodeName")).filter(|n| !n.is_empty()).map(str::to_string)
}

fn controller_index(obj: &Value) -> Option<String> {
    controller_of(obj).and_then(|o| o["uid"].as_str()).map(str::to_string)
}

fn orphan_index(obj: &Value) -> Option<String> {
    controller_of(obj).is_none().then(|| s(obj, "/metadata/namespace").to_string())
}

/// An owner reference to `owner` that marks it as the controller and blocks its
/// foreground deletion until the dependent is gone.
pub fn owner_ref(owner: &Value, api_version: &str, kind: &str) -> Value {
    serde_json::json!({
        "apiVersion": api_version, "kind": kind,
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true,
    })
}

/// Whether the object is being deleted.
pub fn deleting(obj: &Value) -> bool {
    !s(obj, "/metadata/deletionTimestamp").is_empty()
}

/// Seconds since the Unix epoch of an RFC 3339 time, if it parses.
pub fn epoch_secs(t: &str) -> Option<i64> {
    t.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

pub fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

pub fn now_rfc3339() -> String {
    rfc3339(now_secs())
}

/// A time in whole seconds since the epoch as an RFC 3339 UTC timestamp, as the API writes
/// them (`2026-01-02T03:04:05Z`); empty when out of range.
pub fn rfc3339(t: i64) -> String {
    jiff::Timestamp::from_second(t).map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

/// Whether a pod counts as running its workload: not finished and not being deleted.
pub fn pod_active(pod: &Value) -> bool {
    !matches!(s(pod, "/status/phase"), "Succeeded" | "Failed") && !deleting(pod)
}

/// Whether a pod's Ready condition is True, and since when (epoch seconds).
pub fn pod_ready_since(pod: &Value) -> Option<i64> {
    let conds = pod.pointer("/status/conditions")?.as_array()?;
    let ready = conds.iter().find(|c| c["type"] == "Ready" && c["status"] == "True")?;
    Some(epoch_secs(s(ready, "/lastTransitionTime")).unwrap_or(0))
}

/// Whether a pod has been Ready for `min_ready_secs` at `now`.
pub fn pod_available(pod: &Value, min_ready_secs: i64, now: i64) -> bool {
    pod_ready_since(pod).is_some_and(|since| min_ready_secs == 0 || since + min_ready_secs <= now)
}

/// Resolves an IntOrString (`3` or `"25%"`) against `total`, rounding percentages up or
/// down as the field's upstream semantics say.
pub fn int_or_percent(v: &Value, total: i64, round_up: bool, default: i64) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(default),
        Value::String(p) => match p.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(pct) if round_up => (pct * total + 99) / 100,
            Some(pct) => pct * total / 100,
            None => p.parse().unwrap_or(default),
        },
        _ => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_closed_leadership_signal_ends_the_loops_instead_of_spinning() {
        let (lead_tx, lead_rx) = tokio::sync::watch::channel(true);
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        let follower = tokio::spawn(follow_leadership(lead_rx, stop_rx, move || {
            counted.fetch_add(1, Ordering::SeqCst);
            vec![tokio::spawn(std::future::pending())]
        }));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        drop(lead_tx);
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), follower).await;
        assert!(matches!(r, Ok(Ok(Err(LeadershipLost)))), "{r:?}");
        assert_eq!(starts.load(Ordering::SeqCst), 1, "no restart cycle after the signal closed");
    }

    #[tokio::test]
    async fn loops_stop_and_start_again_with_leadership_and_end_on_stop() {
        let (lead_tx, lead_rx) = tokio::sync::watch::channel(false);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        let follower = tokio::spawn(follow_leadership(lead_rx, stop_rx, move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Vec::new()
        }));
        let settle = || tokio::time::sleep(std::time::Duration::from_millis(30));
        settle().await;
        assert_eq!(starts.load(Ordering::SeqCst), 0, "not leading yet");
        lead_tx.send(true).unwrap();
        settle().await;
        lead_tx.send(false).unwrap();
        settle().await;
        lead_tx.send(true).unwrap();
        settle().await;
        assert_eq!(starts.load(Ordering::SeqCst), 2);
        stop_tx.send(true).unwrap();
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), follower).await;
        assert!(matches!(r, Ok(Ok(Ok(())))), "{r:?}");
    }
}
