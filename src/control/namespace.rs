//! The namespace controller: a deleted namespace is Terminating until this loop has
//! deleted everything in it (every namespaced resource the API serves, as upstream's
//! namespace controller does through discovery) and, once nothing is left, removed its
//! `kubernetes` finalizer through the `finalize` subresource, which lets the API drop it.
//! A server restart mid-way resumes from the cache: the namespace is still Terminating.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::queue::WorkQueue;
use super::{Ctx, deleting, s};
use crate::api::resources::RESOURCES;

const COMPONENT: &str = "namespace-controller";
const FINALIZER: &str = "kubernetes";

/// Registers the handlers and starts the worker.
pub fn start(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.namespaces.on_change(Box::new(move |_, new| {
        if let Some(ns) = new.filter(|n| deleting(n)) {
            q.add(s(ns, "/metadata/name"));
        }
    }));
    let ctx = ctx.clone();
    super::workers(COMPONENT, queue, 1, move |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await }
    })
}

/// The collection paths of every namespaced resource in `ns`.
fn collections(ns: &str) -> Vec<String> {
    RESOURCES
        .iter()
        .filter(|r| r.namespaced)
        .map(|r| {
            let base =
                if r.group.is_empty() { "/api/v1".to_string() } else { format!("/apis/{}/{}", r.group, r.version) };
            format!("{base}/namespaces/{ns}/{}", r.plural)
        })
        .collect()
}

async fn reconcile(ctx: &Ctx, name: &str) -> anyhow::Result<Option<Duration>> {
    let Some(ns) = ctx.namespaces.get(name) else { return Ok(None) };
    let finalizers: Vec<Value> = ns.pointer("/spec/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
    if !deleting(&ns) || !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(None);
    }
    // Delete everything, then count what is left: objects deleted at once are gone by
    // then, so most namespaces finish in one pass.
    let mut remaining = 0usize;
    for pass in 0..2 {
        remaining = 0;
        for path in collections(name) {
            let list = match ctx.conn.get(&path).await {
                Ok(l) => l,
                // Not listable (a create-only resource): nothing of it to delete.
                Err(_) => continue,
            };
            for item in list["items"].as_array().into_iter().flatten() {
                remaining += 1;
                if pass == 0 && !deleting(item) {
                    let item_path = format!("{path}/{}", s(item, "/metadata/name"));
                    ctx.conn.delete(&item_path, &json!({"propagationPolicy": "Background"})).await?;
                }
            }
        }
        if remaining == 0 {
            break;
        }
    }
    if remaining > 0 {
        // Pods stop gracefully and finalizers take their time: look again shortly.
        return Ok(Some(Duration::from_secs(1)));
    }
    let keep: Vec<Value> = finalizers.into_iter().filter(|f| f != FINALIZER).collect();
    let body =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "spec": {"finalizers": keep}});
    ctx.conn.replace(&format!("/api/v1/namespaces/{name}/finalize"), &body).await?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_namespaced_resource_is_swept() {
        let paths = collections("team");
        assert!(paths.contains(&"/api/v1/namespaces/team/pods".to_string()));
        assert!(paths.contains(&"/apis/apps/v1/namespaces/team/deployments".to_string()));
        assert!(!paths.iter().any(|p| p.ends_with("/nodes")), "cluster-scoped kinds are not");
    }
}
