//! Who is asking, and may they: client certificates (CN = user, O = groups, as upstream)
//! and static bearer tokens; `system:masters` may do everything.
//!
//! Finer rules (a node only touching its own Node, Lease and pods) arrive with the agent.

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

/// Allows `user` to perform `verb` on `resource`, or says why not.
/// What an agent's identity (`system:node:<name>` in `system:nodes`) may do: run its own
/// Node and Lease, report pods and events, and read what pods need. A subset of upstream's
/// node authorizer and NodeRestriction: a node may change only the Node and Lease named
/// after it (creation is not checked against the body's name yet), and may get a Secret,
/// ConfigMap or claim one at a time, only one a pod bound to it uses (checked against the
/// pods by `node_graph.rs`, see [`node_reads_through_pods`]).
fn node_may(user: &User, verb: &str, group: &str, resource: &str, name: Option<&str>) -> bool {
    let Some(me) = user.name.strip_prefix("system:node:") else { return false };
    if !user.groups.iter().any(|g| g == "system:nodes") {
        return false;
    }
    let read = matches!(verb, "get" | "list" | "watch");
    let own = name.is_none_or(|n| n == me);
    match (group, resource) {
        ("", "nodes") | ("coordination.k8s.io", "leases") => read || verb == "create" || own,
        ("", "pods") => true,
        ("", "events") => read || matches!(verb, "create" | "update" | "patch"),
        ("", "configmaps" | "secrets" | "persistentvolumeclaims") => verb == "get" && name.is_some(),
        ("", "services" | "endpoints" | "namespaces") => read,
        // Releasing a local volume's finalizer once its directory is gone (not upstream's
        // rule: upstream cleans local volumes with a helper pod).
        ("", "persistentvolumes") => read || verb == "patch",
        _ => false,
    }
}

/// The node whose request for `resource` is allowed only when one of its pods uses the
/// object: `None` for everyone else.
pub fn node_reads_through_pods<'a>(user: &'a User, group: &str, resource: &str) -> Option<&'a str> {
    if user.is_admin() || !group.is_empty() || !matches!(resource, "configmaps" | "secrets" | "persistentvolumeclaims")
    {
        return None;
    }
    if !user.groups.iter().any(|g| g == "system:nodes") {
        return None;
    }
    user.name.strip_prefix("system:node:")
}

pub fn authorize(
    user: &User,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<(), ApiError> {
    if user.is_admin() || node_may(user, verb, group, resource, name) {
        return Ok(());
    }
    let scope = match namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".into(),
    };
    Err(ApiError::forbidden(format!(
        "{resource} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{group}\"{scope}",
        user.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_change_only_their_own_node_and_lease() {
        let node = User { name: "system:node:board-2".into(), groups: vec!["system:nodes".into()] };
        assert!(authorize(&node, "patch", "", "nodes", None, Some("board-2")).is_ok());
        assert!(authorize(&node, "patch", "", "nodes", None, Some("board-1")).is_err());
        assert!(authorize(&node, "get", "", "nodes", None, Some("board-1")).is_ok());
        assert!(
            authorize(&node, "patch", "coordination.k8s.io", "leases", Some("kube-node-lease"), Some("board-2"))
                .is_ok()
        );
        assert!(
            authorize(&node, "delete", "coordination.k8s.io", "leases", Some("kube-node-lease"), Some("x")).is_err()
        );
        assert!(authorize(&node, "list", "apps", "deployments", Some("default"), None).is_err());
        assert!(authorize(&node, "get", "", "secrets", Some("default"), Some("s")).is_ok());
        assert!(authorize(&node, "delete", "", "secrets", Some("default"), Some("s")).is_err());
        assert!(authorize(&node, "list", "", "secrets", Some("default"), None).is_err());
        assert!(authorize(&node, "watch", "", "configmaps", None, None).is_err());
        assert_eq!(node_reads_through_pods(&node, "", "secrets"), Some("board-2"));
        assert_eq!(node_reads_through_pods(&node, "", "services"), None);
        let admin = User { name: "admin".into(), groups: vec!["system:masters".into()] };
        assert_eq!(node_reads_through_pods(&admin, "", "secrets"), None);
        let impostor = User { name: "system:node:board-2".into(), groups: vec![] };
        assert!(authorize(&impostor, "get", "", "nodes", None, Some("board-2")).is_err());
    }
}
