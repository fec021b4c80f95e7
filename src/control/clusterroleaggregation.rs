//! The ClusterRole aggregation controller, as upstream's: a ClusterRole with an
//! `aggregationRule` gets as its `rules` the rules of every ClusterRole its selectors match
//! (`admin`, `edit` and `view` are built this way from the `aggregate-to-*` roles, and a
//! CRD's chart extends them with a labelled ClusterRole). Authorization already resolves
//! aggregation itself (`api::rbac`); this loop writes the result back so that clients
//! reading the role (`kubectl describe clusterrole view`) see what it grants.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::queue::WorkQueue;
use super::{Ctx, s};
use crate::api::rbac::RbacSnapshot;

const COMPONENT: &str = "clusterrole-aggregation-controller";
const PATH: &str = "/apis/rbac.authorization.k8s.io/v1/clusterroles";

/// Registers the handler and starts the worker.
pub fn start(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    let (q, roles) = (queue.clone(), ctx.clusterroles.clone());
    // Any ClusterRole change may change what an aggregated one should hold: look at every
    // aggregated role again (there are a handful).
    ctx.clusterroles.on_change(Box::new(move |_, _| {
        for role in roles.list().iter().filter(|r| r.get("aggregationRule").is_some_and(Value::is_object)) {
            q.add(s(role, "/metadata/name"));
        }
    }));
    let ctx = ctx.clone();
    super::workers(COMPONENT, queue, 1, move |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await }
    })
}

/// The `rules` the aggregated ClusterRole `name` should have, given every ClusterRole;
/// None when it is not aggregated (or gone).
pub fn wanted_rules(cluster_roles: &[Arc<Value>], name: &str) -> Option<Vec<Value>> {
    let none: [&Value; 0] = [];
    let snapshot = RbacSnapshot::build(none, cluster_roles.iter().map(|r| &**r), none, none);
    snapshot.aggregated_rules(name)
}

async fn reconcile(ctx: &Ctx, name: &str) -> anyhow::Result<Option<Duration>> {
    let Some(current) = ctx.clusterroles.get(name) else { return Ok(None) };
    let Some(rules) = wanted_rules(&ctx.clusterroles.list(), name) else { return Ok(None) };
    let have = current.get("rules").and_then(Value::as_array).cloned().unwrap_or_default();
    if have == rules {
        return Ok(None);
    }
    let mut next = (*current).clone();
    next["rules"] = Value::Array(rules);
    ctx.conn.replace(&format!("{PATH}/{name}"), &next).await?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_aggregated_role_collects_the_matching_roles_rules() {
        let roles = vec![
            Arc::new(json!({"kind": "ClusterRole", "metadata": {"name": "view"},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg/view": "true"}}]}})),
            Arc::new(json!({"kind": "ClusterRole", "metadata": {"name": "pods", "labels": {"agg/view": "true"}},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})),
            Arc::new(json!({"kind": "ClusterRole", "metadata": {"name": "other"},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]})),
        ];
        let rules = wanted_rules(&roles, "view").unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0]["resources"], json!(["pods"]));
        assert!(wanted_rules(&roles, "other").is_none(), "not aggregated");
        assert!(wanted_rules(&roles, "gone").is_none());
    }
}
