//! Who the control loops are to RBAC: upstream's per-controller ServiceAccounts in
//! `kube-system` (kube-controller-manager's `--use-service-account-credentials`), each
//! bound to its `system:controller:<name>` ClusterRole, least privilege; the scheduler as
//! `system:kube-scheduler`; the shared watch caches as `system:kube-controller-manager`,
//! which only reads. Made and reconciled at start with the other defaults.

use serde_json::{Value, json};

use super::auth::User;

const READ: &[&str] = &["get", "list", "watch"];
const ALL_WRITES: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];

/// One rule: verbs on resources of API groups.
fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

/// Every controller records events.
fn events() -> Value {
    rule(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"])
}

/// The controllers (their ServiceAccounts' names, upstream's) and what each may do.
fn controllers() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        (
            "replicaset-controller",
            vec![
                rule(&["apps"], &["replicasets"], &["get", "list", "watch", "update", "patch"]),
                rule(&["apps"], &["replicasets/status", "replicasets/finalizers"], &["update", "patch"]),
                rule(&[""], &["pods"], &["create", "delete", "get", "list", "patch", "watch"]),
            ],
        ),
        (
            "deployment-controller",
            vec![
                rule(&["apps"], &["deployments"], &["get", "list", "watch", "update", "patch"]),
                rule(&["apps"], &["deployments/status", "deployments/finalizers"], &["update", "patch"]),
                rule(&["apps"], &["replicasets"], ALL_WRITES),
                rule(&[""], &["pods"], &["get", "list", "watch", "update"]),
            ],
        ),
        (
            "statefulset-controller",
            vec![
                rule(&[""], &["pods", "persistentvolumeclaims"], ALL_WRITES),
                rule(&["apps"], &["statefulsets"], READ),
                rule(&["apps"], &["statefulsets/status", "statefulsets/finalizers"], &["update", "patch"]),
                rule(&["apps"], &["controllerrevisions"], ALL_WRITES),
            ],
        ),
        (
            "daemon-set-controller",
            vec![
                rule(&["apps"], &["daemonsets"], READ),
                rule(&["apps"], &["daemonsets/status", "daemonsets/finalizers"], &["update", "patch"]),
                rule(&[""], &["nodes"], READ),
                rule(&[""], &["pods"], &["create", "delete", "get", "list", "patch", "watch"]),
                rule(&[""], &["pods/binding"], &["create"]),
                rule(&["apps"], &["controllerrevisions"], ALL_WRITES),
            ],
        ),
        (
            "job-controller",
            vec![
                rule(&["batch"], &["jobs"], &["get", "list", "watch", "update", "patch", "delete"]),
                rule(&["batch"], &["jobs/status", "jobs/finalizers"], &["update", "patch"]),
                rule(&[""], &["pods"], &["create", "delete", "get", "list", "patch", "watch"]),
            ],
        ),
        (
            "cronjob-controller",
            vec![
                rule(&["batch"], &["cronjobs"], &["get", "list", "watch", "update", "patch"]),
                rule(&["batch"], &["cronjobs/status", "cronjobs/finalizers"], &["update", "patch"]),
                rule(&["batch"], &["jobs"], ALL_WRITES),
                rule(&[""], &["pods"], &["get", "list", "delete"]),
            ],
        ),
        (
            "namespace-controller",
            vec![
                rule(&[""], &["namespaces"], &["get", "list", "watch", "delete"]),
                rule(&[""], &["namespaces/finalize", "namespaces/status"], &["update"]),
                rule(&["*"], &["*"], &["get", "list", "delete", "deletecollection"]),
            ],
        ),
        (
            "endpoint-controller",
            vec![
                rule(&[""], &["services", "pods"], READ),
                rule(&[""], &["endpoints"], &["create", "delete", "get", "list", "update", "watch"]),
                rule(&[""], &["endpoints/restricted"], &["create"]),
            ],
        ),
        (
            "endpointslice-controller",
            vec![
                rule(&[""], &["services", "pods", "nodes"], READ),
                rule(
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                    &["create", "delete", "get", "list", "update", "watch"],
                ),
            ],
        ),
        (
            "generic-garbage-collector",
            vec![rule(&["*"], &["*"], &["delete", "get", "list", "patch", "update", "watch"])],
        ),
        (
            "node-controller",
            vec![
                rule(&[""], &["nodes"], &["delete", "get", "list", "patch", "update", "watch"]),
                rule(&[""], &["nodes/status", "pods/status"], &["patch", "update"]),
                rule(&[""], &["pods"], &["delete", "get", "list", "watch"]),
            ],
        ),
        (
            "persistent-volume-binder",
            vec![
                rule(&[""], &["persistentvolumes"], ALL_WRITES),
                rule(&[""], &["persistentvolumes/status", "persistentvolumeclaims/status"], &["update", "patch"]),
                rule(&[""], &["persistentvolumeclaims"], &["get", "list", "watch", "update", "patch"]),
                rule(&[""], &["pods"], READ),
                rule(&["storage.k8s.io"], &["storageclasses"], &["create", "get", "list", "patch", "update", "watch"]),
            ],
        ),
        (
            "disruption-controller",
            vec![
                rule(&["policy"], &["poddisruptionbudgets"], READ),
                rule(&["policy"], &["poddisruptionbudgets/status"], &["update", "patch"]),
                rule(&[""], &["pods"], READ),
                rule(&["apps"], &["replicasets", "deployments", "statefulsets"], READ),
                rule(&["*"], &["*/scale"], &["get"]),
            ],
        ),
        // Both look at the namespace when a create is refused (is it being deleted?).
        (
            "service-account-controller",
            vec![rule(&[""], &["serviceaccounts"], &["create", "get"]), rule(&[""], &["namespaces"], &["get"])],
        ),
        (
            "root-ca-cert-publisher",
            vec![rule(&[""], &["configmaps"], &["create", "get", "update"]), rule(&[""], &["namespaces"], &["get"])],
        ),
        (
            "service-lb-controller",
            vec![
                rule(&[""], &["services"], READ),
                rule(&[""], &["services/status"], &["patch", "update"]),
                rule(&[""], &["nodes"], READ),
            ],
        ),
        (
            "ingress-controller",
            vec![
                rule(&["networking.k8s.io"], &["ingresses", "ingressclasses"], READ),
                rule(&["networking.k8s.io"], &["ingresses/status"], &["patch", "update"]),
                rule(&["networking.k8s.io"], &["ingressclasses"], &["create", "delete"]),
                rule(&[""], &["services", "nodes"], READ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(&[""], &["secrets"], &["get"]),
            ],
        ),
        (
            "clusterrole-aggregation-controller",
            vec![rule(
                &["rbac.authorization.k8s.io"],
                &["clusterroles"],
                &["escalate", "get", "list", "patch", "update", "watch"],
            )],
        ),
    ]
}

/// The user a controller acts as: its ServiceAccount in `kube-system`, with the groups a
/// ServiceAccount has.
pub fn controller_user(name: &str) -> User {
    User {
        name: format!("system:serviceaccount:kube-system:{name}"),
        groups: vec![
            "system:serviceaccounts".into(),
            "system:serviceaccounts:kube-system".into(),
            "system:authenticated".into(),
        ],
    }
}

/// The user the scheduler acts as (upstream's).
pub fn scheduler_user() -> User {
    User { name: "system:kube-scheduler".into(), groups: vec!["system:authenticated".into()] }
}

/// The user the shared watch caches read as (upstream's controller manager).
pub fn manager_user() -> User {
    User { name: "system:kube-controller-manager".into(), groups: vec!["system:authenticated".into()] }
}

fn metadata(name: &str) -> Value {
    json!({"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
           "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
}

fn cluster_role(name: &str, mut rules: Vec<Value>) -> Value {
    rules.push(events());
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": metadata(name), "rules": rules})
}

fn binding(name: &str, subject: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": metadata(name),
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
           "subjects": [subject]})
}

/// The controllers' ServiceAccounts (in `kube-system`), so `kubectl get sa -n kube-system`
/// shows who they are.
pub fn controller_accounts() -> Vec<&'static str> {
    controllers().into_iter().map(|(name, _)| name).collect()
}

/// The ClusterRoles and ClusterRoleBindings of the controllers, the scheduler and the
/// controller manager's caches, as `rbac::bootstrap_objects` gives the others.
pub fn objects() -> Vec<Value> {
    let mut out = Vec::new();
    for (name, rules) in controllers() {
        let role = format!("system:controller:{name}");
        out.push(cluster_role(&role, rules));
        out.push(binding(&role, json!({"kind": "ServiceAccount", "name": name, "namespace": "kube-system"})));
    }
    let user = |name: &str| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name});
    out.push(cluster_role(
        "system:kube-scheduler",
        vec![
            rule(&[""], &["pods"], &["delete", "get", "list", "patch", "update", "watch"]),
            rule(&[""], &["bindings", "pods/binding"], &["create"]),
            rule(&[""], &["pods/status"], &["patch", "update"]),
            rule(&[""], &["nodes", "namespaces", "services", "persistentvolumes"], READ),
            rule(&[""], &["persistentvolumeclaims"], &["get", "list", "patch", "update", "watch"]),
            rule(&["storage.k8s.io"], &["storageclasses"], READ),
            rule(&["policy"], &["poddisruptionbudgets"], READ),
            rule(&["apps"], &["replicasets", "statefulsets"], READ),
        ],
    ));
    out.push(binding("system:kube-scheduler", user("system:kube-scheduler")));
    out.push(cluster_role("system:kube-controller-manager", vec![rule(&["*"], &["*"], READ)]));
    out.push(binding("system:kube-controller-manager", user("system:kube-controller-manager")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::Attributes;
    use crate::api::rbac::{RbacSnapshot, Request};

    fn snapshot() -> RbacSnapshot {
        let objs = objects();
        let roles: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "ClusterRole").collect();
        let bindings: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "ClusterRoleBinding").collect();
        let none: [&Value; 0] = [];
        RbacSnapshot::build(none, roles, none, bindings)
    }

    fn may(s: &RbacSnapshot, user: &User, verb: &str, group: &str, resource: &str, sub: Option<&str>) -> bool {
        let a = Attributes { verb, group, resource, sub, namespace: Some("default"), name: Some("x") };
        s.authorize(user, &Request::Resource(a)).allowed
    }

    #[test]
    fn each_controller_gets_what_it_does_and_no_more() {
        let s = snapshot();
        let rs = controller_user("replicaset-controller");
        assert!(may(&s, &rs, "create", "", "pods", None));
        assert!(may(&s, &rs, "patch", "apps", "replicasets", Some("status")));
        assert!(may(&s, &rs, "create", "", "events", None));
        assert!(!may(&s, &rs, "get", "", "secrets", None), "least privilege");
        assert!(!may(&s, &rs, "delete", "apps", "deployments", None));
        let gc = controller_user("generic-garbage-collector");
        assert!(may(&s, &gc, "delete", "batch", "jobs", None));
        assert!(!may(&s, &gc, "create", "", "pods", None));
        let manager = manager_user();
        assert!(may(&s, &manager, "watch", "", "secrets", None), "the caches read everything");
        assert!(!may(&s, &manager, "create", "", "pods", None), "and write nothing");
        let sched = scheduler_user();
        assert!(may(&s, &sched, "create", "", "pods", Some("binding")));
        assert!(!may(&s, &sched, "delete", "", "nodes", None));
        let agg = controller_user("clusterrole-aggregation-controller");
        assert!(may(&s, &agg, "escalate", "rbac.authorization.k8s.io", "clusterroles", None));
        assert_eq!(controller_accounts().len(), objects().len() / 2 - 2);
    }
}
