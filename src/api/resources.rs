//! The served resources: what discovery lists, how paths map to store keys, and which
//! subresources each one has. Adding a kind starts here (and in `kinds.rs` for its type).

/// One resource type served at `/api/v1/...` or `/apis/<group>/<version>/...`.
#[derive(Debug)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has a `/status` subresource: the main endpoint ignores status, `/status` only writes it.
    pub status: bool,
    /// Has a `/scale` subresource (`autoscaling/v1 Scale`).
    pub scale: bool,
}

const ALL: &[&str] = &["all"];

macro_rules! res {
    ($g:literal, $v:literal, $p:literal, $s:literal, $k:literal, ns=$ns:literal, short=[$($sh:literal),*], cat=$cat:expr, status=$st:literal, scale=$sc:literal) => {
        Resource { group: $g, version: $v, plural: $p, singular: $s, kind: $k, namespaced: $ns, short_names: &[$($sh),*], categories: $cat, status: $st, scale: $sc }
    };
}

/// Every served resource, grouped by group-version in discovery order.
pub static RESOURCES: &[Resource] = &[
    res!(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        ns = false,
        short = ["ns"],
        cat = &[],
        status = true,
        scale = false
    ),
    res!("", "v1", "pods", "pod", "Pod", ns = true, short = ["po"], cat = ALL, status = true, scale = false),
    res!("", "v1", "nodes", "node", "Node", ns = false, short = ["no"], cat = &[], status = true, scale = false),
    res!(
        "",
        "v1",
        "services",
        "service",
        "Service",
        ns = true,
        short = ["svc"],
        cat = ALL,
        status = true,
        scale = false
    ),
    res!(
        "",
        "v1",
        "endpoints",
        "endpoints",
        "Endpoints",
        ns = true,
        short = ["ep"],
        cat = &[],
        status = false,
        scale = false
    ),
    res!(
        "",
        "v1",
        "configmaps",
        "configmap",
        "ConfigMap",
        ns = true,
        short = ["cm"],
        cat = &[],
        status = false,
        scale = false
    ),
    res!("", "v1", "secrets", "secret", "Secret", ns = true, short = [], cat = &[], status = false, scale = false),
    res!("", "v1", "events", "event", "Event", ns = true, short = ["ev"], cat = &[], status = false, scale = false),
    res!(
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        ns = true,
        short = ["sa"],
        cat = &[],
        status = false,
        scale = false
    ),
    res!(
        "",
        "v1",
        "persistentvolumes",
        "persistentvolume",
        "PersistentVolume",
        ns = false,
        short = ["pv"],
        cat = &[],
        status = true,
        scale = false
    ),
    res!(
        "",
        "v1",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        ns = true,
        short = ["pvc"],
        cat = &[],
        status = true,
        scale = false
    ),
    res!(
        "apps",
        "v1",
        "deployments",
        "deployment",
        "Deployment",
        ns = true,
        short = ["deploy"],
        cat = ALL,
        status = true,
        scale = true
    ),
    res!(
        "apps",
        "v1",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        ns = true,
        short = ["rs"],
        cat = ALL,
        status = true,
        scale = true
    ),
    res!(
        "apps",
        "v1",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        ns = true,
        short = ["sts"],
        cat = ALL,
        status = true,
        scale = true
    ),
    res!(
        "apps",
        "v1",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        ns = true,
        short = ["ds"],
        cat = ALL,
        status = true,
        scale = false
    ),
    res!(
        "apps",
        "v1",
        "controllerrevisions",
        "controllerrevision",
        "ControllerRevision",
        ns = true,
        short = [],
        cat = &[],
        status = false,
        scale = false
    ),
    res!("batch", "v1", "jobs", "job", "Job", ns = true, short = [], cat = ALL, status = true, scale = false),
    res!(
        "batch",
        "v1",
        "cronjobs",
        "cronjob",
        "CronJob",
        ns = true,
        short = ["cj"],
        cat = ALL,
        status = true,
        scale = false
    ),
    res!(
        "coordination.k8s.io",
        "v1",
        "leases",
        "lease",
        "Lease",
        ns = true,
        short = [],
        cat = &[],
        status = false,
        scale = false
    ),
    res!(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        ns = true,
        short = [],
        cat = &[],
        status = false,
        scale = false
    ),
    res!(
        "storage.k8s.io",
        "v1",
        "storageclasses",
        "storageclass",
        "StorageClass",
        ns = false,
        short = ["sc"],
        cat = &[],
        status = false,
        scale = false
    ),
    res!(
        "networking.k8s.io",
        "v1",
        "ingresses",
        "ingress",
        "Ingress",
        ns = true,
        short = ["ing"],
        cat = &[],
        status = true,
        scale = false
    ),
    res!(
        "networking.k8s.io",
        "v1",
        "ingressclasses",
        "ingressclass",
        "IngressClass",
        ns = false,
        short = [],
        cat = &[],
        status = false,
        scale = false
    ),
    res!(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "networkpolicy",
        "NetworkPolicy",
        ns = true,
        short = ["netpol"],
        cat = &[],
        status = false,
        scale = false
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        ns = false,
        short = [],
        cat = &[],
        status = false,
        scale = false
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        ns = false,
        short = [],
        cat = &[],
        status = false,
        scale = false
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        ns = true,
        short = [],
        cat = &[],
        status = false,
        scale = false
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "role",
        "Role",
        ns = true,
        short = [],
        cat = &[],
        status = false,
        scale = false
    ),
    res!(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        ns = true,
        short = ["pdb"],
        cat = &[],
        status = true,
        scale = false
    ),
];

/// A resource that is only ever created and answered, never stored (upstream's reviews:
/// `kubectl auth can-i` and `kubectl auth whoami` post them).
#[derive(Debug)]
pub struct Review {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

/// Every review served, by group-version.
pub static REVIEWS: &[Review] = &[
    Review {
        group: "authentication.k8s.io",
        version: "v1",
        plural: "selfsubjectreviews",
        kind: "SelfSubjectReview",
        namespaced: false,
    },
    Review {
        group: "authentication.k8s.io",
        version: "v1",
        plural: "tokenreviews",
        kind: "TokenReview",
        namespaced: false,
    },
    // kubectl 1.27's `auth whoami` asks the beta.
    Review {
        group: "authentication.k8s.io",
        version: "v1beta1",
        plural: "selfsubjectreviews",
        kind: "SelfSubjectReview",
        namespaced: false,
    },
    Review {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "localsubjectaccessreviews",
        kind: "LocalSubjectAccessReview",
        namespaced: true,
    },
    Review {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "selfsubjectaccessreviews",
        kind: "SelfSubjectAccessReview",
        namespaced: false,
    },
    Review {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "selfsubjectrulesreviews",
        kind: "SelfSubjectRulesReview",
        namespaced: false,
    },
    Review {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "subjectaccessreviews",
        kind: "SubjectAccessReview",
        namespaced: false,
    },
];

/// Finds the review served as `plural` in `group`/`version`.
pub fn find_review(group: &str, version: &str, plural: &str) -> Option<&'static Review> {
    REVIEWS.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The standard verbs of a top-level resource.
pub const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

impl Resource {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The store key prefix of this resource: `pods/`, `deployments.apps/`.
    pub fn key_prefix(&self) -> String {
        if self.group.is_empty() { format!("{}/", self.plural) } else { format!("{}.{}/", self.plural, self.group) }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: &str, name: &str) -> String {
        if self.namespaced {
            format!("{}{namespace}/{name}", self.key_prefix())
        } else {
            format!("{}{name}", self.key_prefix())
        }
    }

    /// The prefix covering a namespace (or everything, for `None`).
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }
}

/// Finds the resource served as `plural` in `group`/`version`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The group-versions served, in discovery order.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for gv in RESOURCES.iter().map(|r| (r.group, r.version)).chain(REVIEWS.iter().map(|r| (r.group, r.version))) {
        if !out.contains(&gv) {
            out.push(gv);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nest_namespaces_under_resources() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(pods.key("default", "a"), "pods/default/a");
        assert_eq!(pods.list_prefix(Some("default")), "pods/default/");
        let nodes = find("", "v1", "nodes").unwrap();
        assert_eq!(nodes.key("", "n1"), "nodes/n1");
        let deploy = find("apps", "v1", "deployments").unwrap();
        assert_eq!(deploy.key("x", "web"), "deployments.apps/x/web");
    }
}
