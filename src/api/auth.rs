//! Who is asking, and may they: client certificates (CN = user, O = groups, as upstream)
//! and static bearer tokens; `system:masters` may do everything.
//!
//! A node (`system:node:<name>` in `system:nodes`) gets exactly what upstream's Node
//! authorizer and NodeRestriction admission give it, decided per object: [`node_rule`] is
//! the whole table, and the API checks what it asks of the stored object or the body.

use std::collections::HashMap;
use std::path::Path;

use super::status::ApiError;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// The identity a verified client certificate carries.
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(String::from)).collect();
    Some(User { name, groups })
}

/// Bearer tokens, from a file in the upstream `--token-auth-file` format:
/// `token,user,uid,"group1,group2"` per line.
#[derive(Default)]
pub struct Tokens(HashMap<String, User>);

impl Tokens {
    pub fn load(path: &Path) -> std::io::Result<Tokens> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tokens::default()),
            Err(e) => return Err(e),
        };
        let mut m = HashMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let mut parts = line.splitn(4, ',');
            let (Some(token), Some(user)) = (parts.next(), parts.next()) else { continue };
            let _uid = parts.next();
            let groups = parts
                .next()
                .unwrap_or("")
                .trim_matches('"')
                .split(',')
                .filter(|g| !g.is_empty())
                .map(String::from)
                .collect();
            m.insert(token.to_string(), User { name: user.to_string(), groups });
        }
        Ok(Tokens(m))
    }

    pub fn user(&self, header: Option<&str>) -> Option<User> {
        let token = header?.strip_prefix("Bearer ")?.trim();
        self.0.get(token).cloned()
    }
}

/// What a request asks, in the terms authorization decides on (upstream's
/// `authorizer.Attributes`): the verb, the resource and subresource, and where.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub sub: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// What a node's allowed request still has to show about the object it touches: nodes are
/// authorized per object, so these are decided against the stored object or the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeCheck {
    /// Nothing more: the request is allowed as it is.
    Nothing,
    /// The existing object must be bound to the node (a pod's `spec.nodeName`, a local
    /// volume's node affinity).
    BoundToNode,
    /// The object in the body must be the node's own: its Node or Lease by name, or a
    /// mirror pod bound to it that references nothing (upstream's NodeRestriction).
    CreatedForNode,
    /// A pod bound to the node must use the object (upstream's graph authorizer).
    UsedByNodePods,
}

/// The node a caller is, when it is one: `system:node:<name>` in `system:nodes`.
pub fn node_name(user: &User) -> Option<&str> {
    let name = user.name.strip_prefix("system:node:")?;
    user.groups.iter().any(|g| g == "system:nodes").then_some(name)
}

/// What node `me` may do (upstream's Node authorizer and NodeRestriction, as one table): `Err`
/// with the reason when never, else what remains to check against the object. Collection
/// verbs touch objects a node may not see, so `deletecollection` is refused outright.
pub fn node_rule(me: &str, a: &Attributes) -> Result<NodeCheck, &'static str> {
    use NodeCheck::*;
    let read = matches!(a.verb, "get" | "list" | "watch");
    let own = a.name == Some(me);
    let lease_ns = a.namespace == Some("kube-node-lease");
    match (a.group, a.resource, a.sub, a.verb) {
        ("", "nodes", None, _) if read => Ok(Nothing),
        ("", "nodes", None, "create") if a.name.is_none() => Ok(CreatedForNode),
        ("", "nodes", None | Some("status"), "get" | "update" | "patch") if own => Ok(Nothing),
        ("", "nodes", ..) => Err("a node may change only its own Node object"),
        ("coordination.k8s.io", "leases", None, "get" | "update" | "patch") if own && lease_ns => Ok(Nothing),
        ("coordination.k8s.io", "leases", None, "create") if lease_ns && a.name.is_none() => Ok(CreatedForNode),
        ("coordination.k8s.io", "leases", ..) => Err("a node may use only its own Lease in kube-node-lease"),
        ("", "pods", None, _) if read => Ok(Nothing),
        ("", "pods", None, "create") if a.name.is_none() => Ok(CreatedForNode),
        ("", "pods", None, "delete") | ("", "pods", Some("status"), "get" | "update" | "patch") if a.name.is_some() => {
            Ok(BoundToNode)
        }
        ("", "pods", Some("eviction"), "create") if a.name.is_some() => Ok(BoundToNode),
        ("", "pods", ..) => Err("a node may only report on and remove pods bound to it"),
        ("", "events", None, "create" | "update" | "patch") => Ok(Nothing),
        ("events.k8s.io", "events", None, "create" | "update" | "patch") => Ok(Nothing),
        // One at a time: `get`, or `list`/`watch` by `metadata.name` (how kubelets follow
        // the Secrets their pods use, and how nodes follow Ingress certificates).
        ("", "configmaps" | "secrets" | "persistentvolumeclaims", None, "get" | "list" | "watch")
            if a.name.is_some() =>
        {
            Ok(UsedByNodePods)
        }
        ("", "configmaps" | "secrets" | "persistentvolumeclaims", ..) => {
            Err("a node may get only the objects its own pods use, one at a time")
        }
        // Local volumes: the agent finds the released ones to clean up (a PersistentVolume
        // holds a path and a node, no secret) and may release only its own.
        ("", "persistentvolumes", None, _) if read => Ok(Nothing),
        ("", "persistentvolumes", None, "patch") if a.name.is_some() => Ok(BoundToNode),
        ("", "services" | "endpoints", None, _) if read => Ok(Nothing),
        // Tokens for the projected volumes of its pods: the TokenRequest handler checks
        // that the token is bound to a pod on this node that runs as that account.
        ("", "serviceaccounts", Some("token"), "create") if a.name.is_some() => Ok(Nothing),
        ("discovery.k8s.io", "endpointslices", None, _) if read => Ok(Nothing),
        // Every node enforces NetworkPolicies (which select by namespace labels) and serves
        // the Ingresses.
        ("networking.k8s.io", "networkpolicies" | "ingresses" | "ingressclasses", None, _) if read => Ok(Nothing),
        ("", "namespaces", None, _) if read => Ok(Nothing),
        _ => Err("nodes may not use this resource"),
    }
}

/// Whether a node's request that needs the object bound to it may proceed: `bound_to` is
/// the node the object is bound to (none when unbound).
pub fn node_owns(me: &str, bound_to: Option<&str>) -> bool {
    bound_to == Some(me)
}

/// Allows `user` the request `a`, or says why not; for a node, also says what to check
/// against the object (see [`NodeCheck`]).
pub fn authorize(user: &User, a: &Attributes) -> Result<NodeCheck, ApiError> {
    if user.is_admin() {
        return Ok(NodeCheck::Nothing);
    }
    let why = match node_name(user) {
        Some(me) => match node_rule(me, a) {
            Ok(check) => return Ok(check),
            Err(why) => format!(": {why}"),
        },
        None => String::new(),
    };
    Err(forbidden(user, a, &why))
}

/// The upstream 403 message: `<resource> is forbidden: User "<u>" cannot <verb> resource...`.
pub fn forbidden(user: &User, a: &Attributes, why: &str) -> ApiError {
    let resource = match a.sub {
        Some(sub) => format!("{}/{sub}", a.resource),
        None => a.resource.to_string(),
    };
    let object = match a.name {
        Some(n) => format!("{} \"{n}\"", a.resource),
        None => a.resource.to_string(),
    };
    let scope = match a.namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".into(),
    };
    ApiError::forbidden(format!(
        "{object} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\"{scope}{why}",
        user.name, a.verb, a.group
    ))
}

/// The user a request acts as: the caller, or whom it impersonates with the
/// `Impersonate-User`, `-Group`, `-Uid` and `-Extra-*` headers. Only `system:masters` may
/// impersonate; the request is then authorized exactly as the impersonated user's own.
pub fn impersonated(caller: User, headers: &http::HeaderMap) -> Result<User, ApiError> {
    let text = |v: &http::HeaderValue| {
        v.to_str().map(str::to_string).map_err(|_| ApiError::bad_request("impersonation headers must be text"))
    };
    let user = headers.get("impersonate-user").map(text).transpose()?;
    let groups: Vec<String> = headers.get_all("impersonate-group").iter().map(text).collect::<Result<_, _>>()?;
    let others =
        headers.keys().any(|k| k.as_str() == "impersonate-uid" || k.as_str().starts_with("impersonate-extra-"));
    let Some(name) = user else {
        if !groups.is_empty() || others {
            return Err(ApiError::bad_request(
                "impersonating groups, a uid or extra fields needs Impersonate-User too",
            ));
        }
        return Ok(caller);
    };
    if !caller.is_admin() {
        return Err(ApiError::forbidden(format!(
            "users \"{name}\" is forbidden: User \"{}\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope",
            caller.name
        )));
    }
    let mut groups = groups;
    if let Some(rest) = name.strip_prefix("system:serviceaccount:")
        && let Some((ns, _)) = rest.split_once(':')
        && groups.is_empty()
    {
        groups.push("system:serviceaccounts".into());
        groups.push(format!("system:serviceaccounts:{ns}"));
    }
    if name != "system:anonymous" && !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    Ok(User { name, groups })
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodeCheck::*;

    fn attrs<'a>(
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        sub: Option<&'a str>,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes { verb, group, resource, sub, namespace, name }
    }

    /// Every row of upstream's Node authorizer and NodeRestriction this server applies,
    /// for node `board-2`: allowed (with what remains to check) or refused.
    #[test]
    fn the_node_table() {
        let lease = "coordination.k8s.io";
        let nl = Some("kube-node-lease");
        let d = Some("default");
        let rows: &[(Attributes, Option<NodeCheck>)] = &[
            // Nodes: read any, change only its own, create only its own (checked on the body).
            (attrs("get", "", "nodes", None, None, Some("board-1")), Some(Nothing)),
            (attrs("list", "", "nodes", None, None, None), Some(Nothing)),
            (attrs("watch", "", "nodes", None, None, None), Some(Nothing)),
            (attrs("create", "", "nodes", None, None, None), Some(CreatedForNode)),
            (attrs("patch", "", "nodes", None, None, Some("board-2")), Some(Nothing)),
            (attrs("update", "", "nodes", Some("status"), None, Some("board-2")), Some(Nothing)),
            (attrs("patch", "", "nodes", None, None, Some("board-1")), None),
            (attrs("update", "", "nodes", Some("status"), None, Some("board-1")), None),
            (attrs("delete", "", "nodes", None, None, Some("board-1")), None),
            (attrs("delete", "", "nodes", None, None, Some("board-2")), None),
            (attrs("deletecollection", "", "nodes", None, None, None), None),
            // Leases: only its own, only in kube-node-lease.
            (attrs("get", lease, "leases", None, nl, Some("board-2")), Some(Nothing)),
            (attrs("patch", lease, "leases", None, nl, Some("board-2")), Some(Nothing)),
            (attrs("create", lease, "leases", None, nl, None), Some(CreatedForNode)),
            (attrs("patch", lease, "leases", None, nl, Some("board-1")), None),
            (attrs("create", lease, "leases", None, Some("kube-system"), None), None),
            (attrs("delete", lease, "leases", None, nl, Some("board-2")), None),
            (attrs("list", lease, "leases", None, nl, None), None),
            (attrs("deletecollection", lease, "leases", None, nl, None), None),
            // Pods: read any; status, delete and eviction only of pods bound to it; mirror
            // pods only for itself; no logs, exec, attach or port-forward.
            (attrs("list", "", "pods", None, None, None), Some(Nothing)),
            (attrs("get", "", "pods", None, d, Some("p")), Some(Nothing)),
            (attrs("create", "", "pods", None, d, None), Some(CreatedForNode)),
            (attrs("patch", "", "pods", Some("status"), d, Some("p")), Some(BoundToNode)),
            (attrs("update", "", "pods", Some("status"), d, Some("p")), Some(BoundToNode)),
            (attrs("delete", "", "pods", None, d, Some("p")), Some(BoundToNode)),
            (attrs("create", "", "pods", Some("eviction"), d, Some("p")), Some(BoundToNode)),
            (attrs("update", "", "pods", None, d, Some("p")), None),
            (attrs("patch", "", "pods", None, d, Some("p")), None),
            (attrs("deletecollection", "", "pods", None, d, None), None),
            (attrs("get", "", "pods", Some("log"), d, Some("p")), None),
            (attrs("create", "", "pods", Some("exec"), d, Some("p")), None),
            (attrs("create", "", "pods", Some("attach"), d, Some("p")), None),
            (attrs("create", "", "pods", Some("portforward"), d, Some("p")), None),
            (attrs("create", "", "pods", Some("binding"), d, Some("p")), None),
            // Secrets, ConfigMaps, claims: one at a time, only what its pods use.
            (attrs("get", "", "secrets", None, d, Some("s")), Some(UsedByNodePods)),
            (attrs("get", "", "configmaps", None, d, Some("c")), Some(UsedByNodePods)),
            (attrs("get", "", "persistentvolumeclaims", None, d, Some("c")), Some(UsedByNodePods)),
            (attrs("list", "", "secrets", None, d, None), None),
            (attrs("watch", "", "secrets", None, d, Some("s")), Some(UsedByNodePods)),
            (attrs("watch", "", "configmaps", None, None, None), None),
            (attrs("delete", "", "secrets", None, d, Some("s")), None),
            (attrs("create", "", "secrets", None, d, None), None),
            // Local volumes: read; release only its own.
            (attrs("list", "", "persistentvolumes", None, None, None), Some(Nothing)),
            (attrs("patch", "", "persistentvolumes", None, None, Some("v")), Some(BoundToNode)),
            (attrs("delete", "", "persistentvolumes", None, None, Some("v")), None),
            // Events: write; services and endpoints: read.
            (attrs("create", "", "events", None, d, None), Some(Nothing)),
            (attrs("patch", "events.k8s.io", "events", None, d, Some("e")), Some(Nothing)),
            (attrs("delete", "", "events", None, d, Some("e")), None),
            (attrs("watch", "", "services", None, None, None), Some(Nothing)),
            (attrs("list", "", "endpoints", None, None, None), Some(Nothing)),
            (attrs("list", "discovery.k8s.io", "endpointslices", None, None, None), Some(Nothing)),
            (attrs("create", "", "services", None, d, None), None),
            // What every node enforces or serves: NetworkPolicies (with namespaces' labels)
            // and Ingresses; read only.
            (attrs("watch", "networking.k8s.io", "networkpolicies", None, None, None), Some(Nothing)),
            (attrs("list", "networking.k8s.io", "ingresses", None, None, None), Some(Nothing)),
            (attrs("watch", "networking.k8s.io", "ingressclasses", None, None, None), Some(Nothing)),
            (attrs("get", "", "namespaces", None, None, Some("default")), Some(Nothing)),
            (attrs("create", "networking.k8s.io", "networkpolicies", None, d, None), None),
            (attrs("patch", "networking.k8s.io", "ingresses", Some("status"), d, Some("i")), None),
            (attrs("delete", "", "namespaces", None, None, Some("default")), None),
            // Everything else.
            (attrs("list", "apps", "deployments", None, d, None), None),
            (attrs("create", "", "serviceaccounts", None, d, None), None),
        ];
        for (a, want) in rows {
            assert_eq!(node_rule("board-2", a).ok(), *want, "{a:?}");
        }
        assert!(node_owns("board-2", Some("board-2")));
        assert!(!node_owns("board-2", Some("board-1")) && !node_owns("board-2", None));
    }

    #[test]
    fn only_nodes_in_the_nodes_group_are_nodes_and_others_get_nothing() {
        let node = User { name: "system:node:board-2".into(), groups: vec!["system:nodes".into()] };
        let get_node = attrs("get", "", "nodes", None, None, Some("board-2"));
        assert_eq!(authorize(&node, &get_node).ok(), Some(Nothing));
        let impostor = User { name: "system:node:board-2".into(), groups: vec![] };
        assert!(authorize(&impostor, &get_node).is_err());
        let someone = User { name: "alice".into(), groups: vec!["system:authenticated".into()] };
        let e = authorize(&someone, &attrs("list", "", "secrets", None, Some("default"), None)).unwrap_err();
        assert_eq!(e.code, 403);
        assert!(e.message.contains("User \"alice\" cannot list resource \"secrets\""), "{}", e.message);
        let admin = User { name: "admin".into(), groups: vec!["system:masters".into()] };
        assert_eq!(authorize(&admin, &attrs("delete", "", "nodes", None, None, Some("x"))).ok(), Some(Nothing));
    }

    #[test]
    fn only_masters_impersonate_and_then_as_the_impersonated_user() {
        let mut h = http::HeaderMap::new();
        h.insert("impersonate-user", "system:node:x".parse().unwrap());
        h.append("impersonate-group", "system:nodes".parse().unwrap());
        let admin = User { name: "admin".into(), groups: vec!["system:masters".into()] };
        let as_node = impersonated(admin.clone(), &h).unwrap();
        assert_eq!(as_node.name, "system:node:x");
        assert_eq!(as_node.groups, vec!["system:nodes".to_string(), "system:authenticated".to_string()]);
        assert!(!as_node.is_admin());
        assert!(authorize(&as_node, &attrs("list", "", "secrets", None, Some("default"), None)).is_err());
        let node = User { name: "system:node:y".into(), groups: vec!["system:nodes".into()] };
        assert_eq!(impersonated(node.clone(), &h).unwrap_err().code, 403);
        assert_eq!(impersonated(node.clone(), &http::HeaderMap::new()).unwrap(), node);
        let mut groups_only = http::HeaderMap::new();
        groups_only.insert("impersonate-group", "system:masters".parse().unwrap());
        assert_eq!(impersonated(admin.clone(), &groups_only).unwrap_err().code, 400);
        let mut sa = http::HeaderMap::new();
        sa.insert("impersonate-user", "system:serviceaccount:web:api".parse().unwrap());
        let u = impersonated(admin, &sa).unwrap();
        assert!(u.groups.contains(&"system:serviceaccounts:web".to_string()));
    }
}
