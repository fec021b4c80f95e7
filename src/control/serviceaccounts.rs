//! Two small per-namespace controllers of upstream's kube-controller-manager, which give
//! every namespace what pods in it expect to find:
//!
//! - the serviceaccount controller: a ServiceAccount `default` (what a pod without
//!   `serviceAccountName` runs as), made again when deleted. Nothing else is written to it:
//!   upstream stopped making token Secrets for it in 1.24.
//! - the root-ca-cert-publisher: a ConfigMap `kube-root-ca.crt` holding the cluster CA
//!   (what in-cluster clients verify the API server with, mounted by projected service
//!   account volumes), made again when deleted, its data put back when edited.
//!
//! Both follow the namespaces cache and their own object's cache, and leave a namespace
//! being deleted alone: the API refuses new content there, and retrying would only loop.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::conn::is_already_exists;
use super::queue::WorkQueue;
use super::{Ctx, deleting, s};
use crate::client::ClientError;

const SA_COMPONENT: &str = "serviceaccount-controller";
const ROOT_CA_COMPONENT: &str = "root-ca-cert-publisher";

/// The ServiceAccount every namespace has.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// The ConfigMap every namespace has, holding the cluster CA.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// The key of the CA bundle in [`ROOT_CA_CONFIGMAP`]'s data.
const CA_KEY: &str = "ca.crt";
const DESCRIPTION_KEY: &str = "kubernetes.io/description";
/// Upstream's description of [`ROOT_CA_CONFIGMAP`], word for word.
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal \
                           endpoints such as the internal service IP or kubernetes.default.svc. No other usage is \
                           guaranteed across distributions of Kubernetes clusters.";

/// Registers the handlers and starts both controllers' workers; the publisher only when
/// there is a CA to publish (`ca_pem`).
pub fn start(accounts: &Arc<Ctx>, publisher: &Arc<Ctx>, ca_pem: &str) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = start_service_accounts(accounts);
    if ca_pem.is_empty() {
        tracing::warn!("no cluster CA given: {ROOT_CA_CONFIGMAP} is not published into namespaces");
    } else {
        tasks.extend(start_root_ca_publisher(publisher, Arc::from(ca_pem)));
    }
    tasks
}

/// Queues each namespace that is added or changes and is not being deleted.
fn queue_live_namespaces(ctx: &Ctx, queue: &Arc<WorkQueue>) {
    let q = queue.clone();
    ctx.namespaces.on_change(Box::new(move |_, new| {
        if let Some(ns) = new.filter(|n| !terminating(n)) {
            q.add(s(ns, "/metadata/name"));
        }
    }));
}

/// The namespace to look at again when `name` in it changed as (old, new): one whose
/// object went away or, when `on_update`, changed.
fn namespace_to_check(old: Option<&Value>, new: Option<&Value>, name: &str, on_update: bool) -> Option<String> {
    let old = old?;
    if s(old, "/metadata/name") != name || (new.is_some() && !on_update) {
        return None;
    }
    Some(s(old, "/metadata/namespace").to_string()).filter(|ns| !ns.is_empty())
}

fn start_service_accounts(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    queue_live_namespaces(ctx, &queue);
    let q = queue.clone();
    ctx.serviceaccounts.on_change(Box::new(move |old, new| {
        if let Some(ns) = namespace_to_check(old, new, DEFAULT_SERVICE_ACCOUNT, false) {
            q.add(&ns);
        }
    }));
    let ctx = ctx.clone();
    super::workers(SA_COMPONENT, queue, 1, move |ns| {
        let ctx = ctx.clone();
        async move { sync_service_account(&ctx, &ns).await }
    })
}

fn start_root_ca_publisher(ctx: &Arc<Ctx>, ca_pem: Arc<str>) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    queue_live_namespaces(ctx, &queue);
    let q = queue.clone();
    ctx.root_ca_configmaps.on_change(Box::new(move |old, new| {
        if let Some(ns) = namespace_to_check(old, new, ROOT_CA_CONFIGMAP, true) {
            q.add(&ns);
        }
    }));
    let ctx = ctx.clone();
    super::workers(ROOT_CA_COMPONENT, queue, 1, move |ns| {
        let ctx = ctx.clone();
        let ca_pem = ca_pem.clone();
        async move { sync_root_ca(&ctx, &ns, &ca_pem).await }
    })
}

/// Whether a namespace is being deleted (upstream checks the phase, the API sets both).
fn terminating(ns: &Value) -> bool {
    deleting(ns) || s(ns, "/status/phase") == "Terminating"
}

/// The ServiceAccount `default` of namespace `ns`, as it is created.
pub fn wanted_service_account(ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": DEFAULT_SERVICE_ACCOUNT, "namespace": ns}})
}

/// The ConfigMap `kube-root-ca.crt` of namespace `ns`, as it is created.
pub fn root_ca_configmap(ns: &str, ca_pem: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": ns, "annotations": {DESCRIPTION_KEY: DESCRIPTION}},
        "data": {CA_KEY: ca_pem}})
}

/// The object to replace `current` (a `kube-root-ca.crt`) with, when its data is not
/// exactly the CA or its description is missing; `None` when it is as it should be.
/// Everything else (labels, other annotations, `binaryData`, the `resourceVersion` the
/// replace compares against) is kept, as upstream keeps it.
pub fn needs_update(current: &Value, ca_pem: &str) -> Option<Value> {
    let data = json!({CA_KEY: ca_pem});
    let described = current["metadata"]["annotations"][DESCRIPTION_KEY].as_str().is_some_and(|d| !d.is_empty());
    if current["data"] == data && described {
        return None;
    }
    let mut next = current.clone();
    let obj = next.as_object_mut()?;
    obj.insert("data".to_string(), data);
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let annotations = meta.as_object_mut()?.entry("annotations").or_insert_with(|| json!({}));
    if !annotations.is_object() {
        *annotations = json!({});
    }
    annotations.as_object_mut()?.insert(DESCRIPTION_KEY.to_string(), json!(DESCRIPTION));
    Some(next)
}

async fn sync_service_account(ctx: &Ctx, ns: &str) -> anyhow::Result<Option<Duration>> {
    let Some(namespace) = ctx.namespaces.get(ns) else { return Ok(None) };
    if terminating(&namespace) {
        return Ok(None);
    }
    // Before the first list every account looks missing: wait for it instead of creating
    // them all again.
    ctx.serviceaccounts.synced().await;
    if ctx.serviceaccounts.get(&format!("{ns}/{DEFAULT_SERVICE_ACCOUNT}")).is_some() {
        return Ok(None);
    }
    create_in(ctx, ns, "serviceaccounts", &wanted_service_account(ns)).await?;
    Ok(None)
}

async fn sync_root_ca(ctx: &Ctx, ns: &str, ca_pem: &str) -> anyhow::Result<Option<Duration>> {
    let Some(namespace) = ctx.namespaces.get(ns) else { return Ok(None) };
    if terminating(&namespace) {
        return Ok(None);
    }
    ctx.root_ca_configmaps.synced().await;
    match ctx.root_ca_configmaps.get(&format!("{ns}/{ROOT_CA_CONFIGMAP}")) {
        None => create_in(ctx, ns, "configmaps", &root_ca_configmap(ns, ca_pem)).await?,
        Some(current) => {
            if let Some(next) = needs_update(&current, ca_pem) {
                // A stale cache loses the compare-and-swap (409) and comes back with back-off.
                let path = format!("/api/v1/namespaces/{ns}/configmaps/{ROOT_CA_CONFIGMAP}");
                ctx.conn.replace(&path, &next).await?;
            }
        }
    }
    Ok(None)
}

/// Creates `obj` among `plural` of `ns`. Done as well when it exists already, or when the
/// API refused because the namespace is gone or being deleted (told by the namespace
/// itself, not by the refusal's wording): there is nothing to retry then.
async fn create_in(ctx: &Ctx, ns: &str, plural: &str, obj: &Value) -> anyhow::Result<()> {
    let err = match ctx.conn.create(&format!("/api/v1/namespaces/{ns}/{plural}"), obj).await {
        Ok(_) => return Ok(()),
        Err(e) if is_already_exists(&e) => return Ok(()),
        Err(e) => e,
    };
    if !refused_for_namespace(&err) {
        return Err(err);
    }
    match ctx.conn.get(&format!("/api/v1/namespaces/{ns}")).await {
        Ok(namespace) if terminating(&namespace) => Ok(()),
        Err(e) if super::conn::is_not_found(&e) => Ok(()),
        _ => Err(err),
    }
}

/// Whether a create's refusal may be its namespace's doing: 403 (being deleted) or 404
/// (gone).
fn refused_for_namespace(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ClientError>().and_then(ClientError::status).is_some_and(|st| matches!(st.code, 403 | 404))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn the_default_service_account_is_bare() {
        assert_eq!(
            wanted_service_account("team"),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "team"}}),
            "no secrets, no token: upstream stopped making them in 1.24"
        );
    }

    #[test]
    fn the_root_ca_configmap_holds_the_ca_and_upstreams_description() {
        let cm = root_ca_configmap("team", PEM);
        assert_eq!(cm["metadata"]["name"], "kube-root-ca.crt");
        assert_eq!(cm["metadata"]["namespace"], "team");
        assert_eq!(cm["data"], json!({"ca.crt": PEM}));
        let description = cm["metadata"]["annotations"]["kubernetes.io/description"].as_str().unwrap();
        assert!(description.starts_with("Contains a CA bundle that can be used to verify the kube-apiserver"));
        assert!(description.ends_with("No other usage is guaranteed across distributions of Kubernetes clusters."));
        assert!(!description.contains("  "), "one space between words: {description}");
    }

    #[test]
    fn a_configmap_as_created_needs_nothing() {
        let mut current = root_ca_configmap("team", PEM);
        current["metadata"]["resourceVersion"] = json!("12");
        assert_eq!(needs_update(&current, PEM), None);
        // Other annotations and labels are the user's.
        current["metadata"]["labels"] = json!({"a": "b"});
        current["metadata"]["annotations"]["note"] = json!("mine");
        assert_eq!(needs_update(&current, PEM), None);
    }

    #[test]
    fn edited_data_is_put_back_and_everything_else_kept() {
        let mut current = root_ca_configmap("team", PEM);
        current["metadata"]["resourceVersion"] = json!("12");
        current["metadata"]["labels"] = json!({"a": "b"});
        current["binaryData"] = json!({"blob": "AAEC"});
        current["data"] = json!({"ca.crt": "forged", "extra": "x"});
        let next = needs_update(&current, PEM).expect("the data differs");
        assert_eq!(next["data"], json!({"ca.crt": PEM}), "exactly the CA, as upstream sets it");
        assert_eq!(next["metadata"]["resourceVersion"], "12", "the replace compares against what was read");
        assert_eq!(next["metadata"]["labels"], json!({"a": "b"}));
        assert_eq!(next["binaryData"], json!({"blob": "AAEC"}));
        // Data removed altogether, or a new CA: written again.
        current.as_object_mut().unwrap().remove("data");
        assert_eq!(needs_update(&current, PEM).unwrap()["data"], json!({"ca.crt": PEM}));
        let rotated = root_ca_configmap("team", "another CA");
        assert_eq!(needs_update(&rotated, PEM).unwrap()["data"], json!({"ca.crt": PEM}));
    }

    #[test]
    fn a_missing_description_is_added_beside_other_annotations() {
        let mut current = root_ca_configmap("team", PEM);
        current["metadata"]["annotations"] = json!({"note": "mine"});
        let next = needs_update(&current, PEM).expect("the description is missing");
        assert_eq!(next["metadata"]["annotations"]["note"], "mine");
        assert_eq!(next["metadata"]["annotations"]["kubernetes.io/description"], DESCRIPTION);
        current["metadata"].as_object_mut().unwrap().remove("annotations");
        let next = needs_update(&current, PEM).expect("no annotations at all");
        assert_eq!(next["metadata"]["annotations"], json!({"kubernetes.io/description": DESCRIPTION}));
        // Any description counts, as upstream only checks there is one.
        current["metadata"]["annotations"] = json!({"kubernetes.io/description": "ours"});
        assert_eq!(needs_update(&current, PEM), None);
    }

    #[test]
    fn namespaces_being_deleted_are_left_alone() {
        assert!(!terminating(&json!({"metadata": {"name": "a"}, "status": {"phase": "Active"}})));
        assert!(terminating(&json!({"metadata": {"name": "a", "deletionTimestamp": "2026-01-01T00:00:00Z"}})));
        assert!(terminating(&json!({"metadata": {"name": "a"}, "status": {"phase": "Terminating"}})));
    }

    #[test]
    fn only_the_managed_objects_going_away_or_changing_requeue_their_namespace() {
        let sa = |name: &str| json!({"metadata": {"name": name, "namespace": "team"}});
        let default = sa("default");
        let other = sa("builder");
        // The account: deletion only.
        assert_eq!(namespace_to_check(Some(&default), None, "default", false), Some("team".to_string()));
        assert_eq!(namespace_to_check(Some(&default), Some(&default), "default", false), None);
        assert_eq!(namespace_to_check(None, Some(&default), "default", false), None);
        assert_eq!(namespace_to_check(Some(&other), None, "default", false), None);
        // The ConfigMap: deletion and edits.
        let cm = root_ca_configmap("team", PEM);
        assert_eq!(namespace_to_check(Some(&cm), Some(&cm), ROOT_CA_CONFIGMAP, true), Some("team".to_string()));
        assert_eq!(namespace_to_check(Some(&cm), None, ROOT_CA_CONFIGMAP, true), Some("team".to_string()));
        assert_eq!(namespace_to_check(None, Some(&cm), ROOT_CA_CONFIGMAP, true), None);
    }

    #[test]
    fn refusals_that_may_be_the_namespaces_are_told_apart() {
        let refusal = |code: u16, reason: &str| -> anyhow::Error {
            let body = json!({"kind": "Status", "code": code, "reason": reason, "message": "m"}).to_string();
            anyhow::Error::from(ClientError::from_answer(code, None, body.as_bytes())).context("POST /api/v1/...")
        };
        assert!(refused_for_namespace(&refusal(403, "Forbidden")));
        assert!(refused_for_namespace(&refusal(404, "NotFound")));
        assert!(!refused_for_namespace(&refusal(409, "Conflict")));
        assert!(!refused_for_namespace(&refusal(500, "InternalError")));
        assert!(!refused_for_namespace(&anyhow::anyhow!("no answer")));
    }
}
