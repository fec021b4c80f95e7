//! Who a caller is beyond client certificates and static tokens, and what anyone but the
//! admin and the nodes may do: ServiceAccount tokens (issued by TokenRequest, verified on
//! every request, their bound objects checked, the keys published for OIDC discovery) and
//! RBAC (the four kinds read into a snapshot that is rebuilt when any of them changes),
//! plus the reviews that ask either question (`kubectl auth can-i`, `kubectl auth whoami`).
//!
//! The decisions are `rbac` and `sa_token`'s (pure); this file reads the store for them
//! and speaks the API's objects.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::Api;
use super::auth::{self, Attributes, NodeCheck, User};
use super::http::Query;
use super::objects::{Target, now_rfc3339, to_object};
use super::rbac::{self, RbacSnapshot};
use super::resources::{self, Resource, Review};
use super::sa_token::{self, BoundKind, BoundObject, BoundTokenRequest, ObjectRef, SigningKey, Verified};
use super::status::{ApiError, Cause};

/// The issuer of ServiceAccount tokens unless `--service-account-issuer` says otherwise
/// (k3s's default).
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The shortest token TokenRequest issues (upstream's ten minutes).
const MIN_TOKEN_SECONDS: i64 = 600;
/// The lifetime of a token whose request names none (upstream's hour).
const DEFAULT_TOKEN_SECONDS: i64 = 3600;
/// A token bound to a pod or secret being deleted stays good this long after the deletion
/// began (upstream's grace, so a pod's last requests during shutdown still work).
const DELETION_GRACE_SECONDS: i64 = 60;
/// The query keys through which the router hands the caller's identity to the writes that
/// decide on it (RBAC escalation). Clients cannot send them: keys starting with `_` are
/// dropped.
pub const USER_QUERY_KEY: &str = "_user";
pub const GROUPS_QUERY_KEY: &str = "_groups";

/// The server's ServiceAccount token settings and its RBAC snapshot.
pub struct Access {
    key: SigningKey,
    issuer: String,
    audiences: Vec<String>,
    /// The snapshot and the store revision it was checked against.
    rbac: Mutex<Option<(u64, Arc<RbacSnapshot>)>>,
}

impl Access {
    /// Tokens signed by `key` for `issuer`, accepted for `audiences` (the issuer when empty).
    pub fn new(key: SigningKey, issuer: String, mut audiences: Vec<String>) -> Access {
        if audiences.is_empty() {
            audiences.push(issuer.clone());
        }
        Access { key, issuer, audiences, rbac: Mutex::new(None) }
    }
}

/// The four RBAC resources, in the order `RbacSnapshot::build` takes them.
fn rbac_resources() -> [&'static Resource; 4] {
    let find = |plural| resources::find("rbac.authorization.k8s.io", "v1", plural).expect("the RBAC kinds are served");
    [find("roles"), find("clusterroles"), find("rolebindings"), find("clusterrolebindings")]
}

fn now_unix() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

/// The identity a request's query carries (set by the router), if any.
pub fn user_from_query(q: &Query) -> Option<User> {
    let name = q.get(USER_QUERY_KEY)?.to_string();
    let groups =
        q.get(GROUPS_QUERY_KEY).unwrap_or("").split('\n').filter(|g| !g.is_empty()).map(String::from).collect();
    Some(User { name, groups })
}

/// Puts `user` into `q` for the handlers below the router.
pub fn user_into_query(user: &User, q: &mut Query) {
    q.0.insert(USER_QUERY_KEY.into(), user.name.clone());
    q.0.insert(GROUPS_QUERY_KEY.into(), user.groups.join("\n"));
}

/// The groups upstream gives every authenticated user (also one acted as through
/// impersonation): `system:authenticated`, and for a ServiceAccount's user name
/// `system:serviceaccounts` and `system:serviceaccounts:<namespace>`.
pub fn implied_groups(mut user: User) -> User {
    let mut add = |g: String| {
        if !user.groups.contains(&g) {
            user.groups.push(g);
        }
    };
    if let Some((ns, _)) = user.name.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) {
        let ns = ns.to_string();
        add("system:serviceaccounts".into());
        add(format!("system:serviceaccounts:{ns}"));
    }
    add("system:authenticated".into());
    user
}

impl Api {
    fn access(&self) -> &Access {
        &self.access
    }

    /// A stored object, or None when absent.
    fn stored(&self, res: &Resource, ns: &str, name: &str) -> Result<Option<Value>, ApiError> {
        match self.store.get(&res.key(ns, name))? {
            Some(rec) => Ok(Some(to_object(&rec)?)),
            None => Ok(None),
        }
    }

    /// The RBAC snapshot as of now: rebuilt when an RBAC object changed since the last look
    /// (the watch history says which keys changed; a look too old for it rebuilds).
    pub(super) fn rbac_snapshot(&self) -> Result<Arc<RbacSnapshot>, ApiError> {
        let kinds = rbac_resources();
        let hub = self.store.hub();
        let now = hub.revision();
        let mut held = self.access().rbac.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, snapshot)) = held.as_ref() {
            let seen = *seen;
            let changed = seen != now
                && kinds.iter().any(|r| hub.since(seen, &r.key_prefix()).map_or(true, |events| !events.is_empty()));
            if !changed {
                let snapshot = snapshot.clone();
                *held = Some((now, snapshot.clone()));
                return Ok(snapshot);
            }
        }
        let mut lists: Vec<Vec<Value>> = Vec::with_capacity(4);
        for r in kinds {
            let (records, _) = self.store.list(&r.key_prefix(), None, usize::MAX)?;
            lists.push(records.iter().map(to_object).collect::<Result<_, _>>()?);
        }
        let snapshot = Arc::new(RbacSnapshot::build(&lists[0], &lists[1], &lists[2], &lists[3]));
        *held = Some((now, snapshot.clone()));
        Ok(snapshot)
    }

    /// Who is asking: the client certificate's identity, a static token's, or a
    /// ServiceAccount token's; every one of them is in `system:authenticated`.
    pub(super) fn authenticate(&self, cert_user: Option<User>, headers: &::http::HeaderMap) -> Result<User, ApiError> {
        let header = headers.get("authorization").and_then(|v| v.to_str().ok());
        let mut user = match cert_user.or_else(|| self.tokens.user(header)) {
            Some(user) => user,
            None => {
                let token =
                    header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).ok_or_else(ApiError::unauthorized)?;
                match self.service_account_user(token, &self.access().audiences) {
                    Ok((user, _)) => user,
                    Err(why) => {
                        tracing::debug!(%why, "refused a bearer token");
                        return Err(ApiError::unauthorized());
                    }
                }
            }
        };
        if !user.groups.iter().any(|g| g == "system:authenticated") {
            user.groups.push("system:authenticated".into());
        }
        Ok(user)
    }

    /// The user a ServiceAccount token stands for, after checking its signature, issuer,
    /// audience and times, and that its ServiceAccount and bound object (or legacy Secret)
    /// still exist as they were when it was issued.
    fn service_account_user(&self, token: &str, audiences: &[String]) -> Result<(User, Verified), String> {
        let access = self.access();
        let v = access.key.verify(token, &access.issuer, audiences, now_unix()).map_err(|e| e.to_string())?;
        self.check_token_objects(&v, token)?;
        let mut groups = v.groups.clone();
        groups.push("system:authenticated".into());
        Ok((User { name: v.username.clone(), groups }, v))
    }

    /// Says why a verified token no longer stands for anyone, if it does not.
    fn check_token_objects(&self, v: &Verified, token: &str) -> Result<(), String> {
        let core =
            |plural| resources::find("", "v1", plural).ok_or_else(|| "the core kinds are not served".to_string());
        let stored = |res, ns: &str, name: &str| self.stored(res, ns, name).map_err(|e| e.message);
        let gone = |what: String| what;
        let uid_of = |o: &Value| o.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string();
        let deleted_long_ago = |o: &Value| {
            o.pointer("/metadata/deletionTimestamp")
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| t.as_second() + DELETION_GRACE_SECONDS < now_unix())
        };
        let sa = stored(core("serviceaccounts")?, &v.namespace, &v.service_account.name)?.ok_or_else(|| {
            gone(format!("service account {}/{} has been deleted", v.namespace, v.service_account.name))
        })?;
        if !v.service_account.uid.is_empty() && uid_of(&sa) != v.service_account.uid {
            return Err(gone(format!("service account {}/{} was recreated", v.namespace, v.service_account.name)));
        }
        if let Some(b) = &v.bound {
            let (res, ns) = match b.kind {
                BoundKind::Pod => (core("pods")?, v.namespace.as_str()),
                BoundKind::Secret => (core("secrets")?, v.namespace.as_str()),
                BoundKind::Node => (core("nodes")?, ""),
            };
            let obj = stored(res, ns, &b.name)?
                .ok_or_else(|| gone(format!("the {} {} the token is bound to is gone", b.kind.as_str(), b.name)))?;
            if uid_of(&obj) != b.uid || deleted_long_ago(&obj) {
                return Err(gone(format!("the {} {} the token is bound to is gone", b.kind.as_str(), b.name)));
            }
        }
        if let Some(secret) = &v.legacy_secret {
            let obj = stored(core("secrets")?, &v.namespace, secret)?
                .ok_or_else(|| gone(format!("the secret {secret} holding the token is gone")))?;
            let held = obj.pointer("/data/token").and_then(Value::as_str).unwrap_or("");
            let held = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, held).unwrap_or_default();
            if held != token.as_bytes() || deleted_long_ago(&obj) {
                return Err(gone(format!("the secret {secret} no longer holds this token")));
            }
        }
        Ok(())
    }

    /// Whether `user` may do `a`: the admin always; a node by the Node authorizer's table
    /// (what it refuses still goes to RBAC, as upstream's `Node,RBAC` chain); everyone by
    /// RBAC. For a node, also what is left to check against the object.
    pub(super) fn authorize(&self, user: &User, a: &Attributes) -> Result<NodeCheck, ApiError> {
        if user.is_admin() {
            return Ok(NodeCheck::Nothing);
        }
        let node_why = match auth::node_name(user) {
            Some(me) => match auth::node_rule(me, a) {
                Ok(check) => return Ok(check),
                Err(why) => format!(": {why}"),
            },
            None => String::new(),
        };
        if self.rbac_snapshot()?.authorize(user, &rbac::Request::Resource(*a)).allowed {
            return Ok(NodeCheck::Nothing);
        }
        Err(auth::forbidden(user, a, &node_why))
    }

    /// Whether `user` may `verb` the non-resource `path` (discovery, OpenAPI, OIDC).
    pub(super) fn authorize_path(&self, user: &User, verb: &str, path: &str) -> Result<(), ApiError> {
        if user.is_admin() || self.rbac_snapshot()?.authorize(user, &rbac::Request::NonResource { verb, path }).allowed
        {
            return Ok(());
        }
        Err(ApiError::forbidden(format!("forbidden: User {:?} cannot {verb} path {path:?}", user.name)))
    }

    /// Allowed or not, with RBAC's reason, for a review (never an error: a review answers).
    fn decide(&self, user: &User, req: &rbac::Request) -> Result<(bool, String), ApiError> {
        if user.is_admin() {
            return Ok((true, String::new()));
        }
        if let (Some(me), rbac::Request::Resource(a)) = (auth::node_name(user), req)
            && auth::node_rule(me, a).is_ok()
        {
            return Ok((true, String::new()));
        }
        let d = self.rbac_snapshot()?.authorize(user, req);
        Ok((d.allowed, d.reason))
    }

    /// Creates the default ClusterRoles and ClusterRoleBindings (the controllers' too, and
    /// their ServiceAccounts), or adds what upstream's added to ones that exist and were
    /// not marked `autoupdate: "false"`.
    pub(super) async fn bootstrap_rbac(&self) -> Result<(), ApiError> {
        let sa =
            resources::find("", "v1", "serviceaccounts").ok_or_else(|| ApiError::internal("no serviceaccounts"))?;
        for name in super::rbac_controllers::controller_accounts() {
            // Looked up first: a create that finds the name taken still goes through the
            // Raft log, a flash write at every start for nothing.
            if self.stored(sa, "kube-system", name)?.is_some() {
                continue;
            }
            let target = Target { res: sa, namespace: Some("kube-system".into()), name: None, sub: None };
            match self.create(&target, &Query::default(), json!({"metadata": {"name": name}})).await {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        for wanted in rbac::bootstrap_objects().into_iter().chain(super::rbac_controllers::objects()) {
            let kind = wanted["kind"].as_str().unwrap_or("");
            let plural = if kind == "ClusterRole" { "clusterroles" } else { "clusterrolebindings" };
            let res = resources::find("rbac.authorization.k8s.io", "v1", plural)
                .ok_or_else(|| ApiError::internal("the RBAC kinds are not served"))?;
            let name = wanted.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
            let existing = self.stored(res, "", &name)?;
            let Some(next) = rbac::reconcile_bootstrap(existing.as_ref(), &wanted) else { continue };
            let target = Target { res, namespace: None, name: None, sub: None };
            match existing {
                None => match self.create(&target, &Query::default(), next).await {
                    Ok(_) => {}
                    Err(e) if e.code == 409 => {}
                    Err(e) => return Err(e),
                },
                Some(_) => {
                    let target = Target { name: Some(name), ..target };
                    self.update(&target, &Query::default(), next).await?;
                }
            }
        }
        Ok(())
    }

    /// Refuses an RBAC write that grants what its author does not hold, unless the author
    /// may `escalate` (roles) or `bind` (bindings) the role, as upstream.
    pub(super) fn check_escalation(&self, q: &Query, kind: &str, obj: &Value) -> Result<(), ApiError> {
        let plural = match kind {
            "Role" => "roles",
            "ClusterRole" => "clusterroles",
            "RoleBinding" => "rolebindings",
            "ClusterRoleBinding" => "clusterrolebindings",
            _ => return Ok(()),
        };
        // Writes from inside the server (bootstrap) carry no identity and are the server's.
        let Some(user) = user_from_query(q) else { return Ok(()) };
        if user.is_admin() {
            return Ok(());
        }
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).filter(|n| !n.is_empty());
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        let snapshot = self.rbac_snapshot()?;
        let may = |verb: &'static str, resource: &'static str, target_name: &str| {
            let a = Attributes {
                verb,
                group: "rbac.authorization.k8s.io",
                resource,
                sub: None,
                namespace: ns,
                name: Some(target_name),
            };
            snapshot.authorize(&user, &rbac::Request::Resource(a)).allowed
        };
        let requested = match kind {
            "Role" | "ClusterRole" => {
                if may("escalate", plural, name) {
                    return Ok(());
                }
                rbac::rules_of(obj).map_err(|e| ApiError::bad_request(e.to_string()))?
            }
            _ => {
                let role_kind = obj.pointer("/roleRef/kind").and_then(Value::as_str).unwrap_or("");
                let role_name = obj.pointer("/roleRef/name").and_then(Value::as_str).unwrap_or("");
                let role_plural = if role_kind == "Role" { "roles" } else { "clusterroles" };
                if may("bind", role_plural, role_name) {
                    return Ok(());
                }
                snapshot.role_rules(role_kind, role_name, ns).map(|r| r.to_vec()).unwrap_or_default()
            }
        };
        let held = snapshot.rules_for(&user, ns);
        match rbac::covers(&held, &requested) {
            Ok(()) => Ok(()),
            Err(missing) => Err(ApiError::forbidden(format!(
                "{plural}.rbac.authorization.k8s.io {name:?} is forbidden: {}",
                rbac::escalation_message(&user, &missing)
            ))),
        }
    }

    /// Names the ServiceAccount of a pod being created and mounts its token (upstream's
    /// ServiceAccount admission; see `sa_admission`).
    pub(super) fn admit_service_account(&self, t: &Target, pod: &mut Value) -> Result<(), ApiError> {
        if super::sa_admission::is_mirror(pod) {
            return Ok(());
        }
        let ns = t.namespace.as_deref().unwrap_or("default");
        let name = super::sa_admission::service_account_name(pod).to_string();
        let res =
            resources::find("", "v1", "serviceaccounts").ok_or_else(|| ApiError::internal("no serviceaccounts"))?;
        let sa = self.stored(res, ns, &name)?;
        let suffix = super::objects::random_suffix(5);
        super::sa_admission::admit_pod(pod, sa.as_ref(), &suffix).map_err(|why| {
            let pod_name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
            ApiError::forbidden(format!("pods {pod_name:?} is forbidden: {why}"))
        })
    }

    /// `POST serviceaccounts/<name>/token`: a bound token for the ServiceAccount.
    pub(super) fn token_request(&self, user: &User, t: &Target, body: Value) -> Result<Value, ApiError> {
        let ns = t.namespace.as_deref().unwrap_or("default");
        let sa_name = t.name.as_deref().unwrap_or("");
        let core = |plural| resources::find("", "v1", plural).ok_or_else(|| ApiError::internal("core kinds missing"));
        let sa = self
            .stored(core("serviceaccounts")?, ns, sa_name)?
            .ok_or_else(|| ApiError::not_found("serviceaccounts", "", sa_name))?;
        let spec = &body["spec"];
        let invalid = |field: &str, value: String, why: &str| {
            ApiError::invalid("TokenRequest", "authentication.k8s.io", sa_name, vec![Cause::invalid(field, value, why)])
        };
        let seconds = match spec.get("expirationSeconds") {
            None | Some(Value::Null) => DEFAULT_TOKEN_SECONDS,
            Some(v) => {
                v.as_i64().ok_or_else(|| invalid("spec.expirationSeconds", v.to_string(), "must be an integer"))?
            }
        };
        if seconds < MIN_TOKEN_SECONDS {
            return Err(invalid(
                "spec.expirationSeconds",
                seconds.to_string(),
                "may not specify a duration less than 10 minutes",
            ));
        }
        if seconds > 1 << 32 {
            return Err(invalid(
                "spec.expirationSeconds",
                seconds.to_string(),
                "may not specify a duration larger than 2^32 seconds",
            ));
        }
        let mut audiences: Vec<String> =
            spec["audiences"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from)).collect();
        if audiences.is_empty() {
            audiences = self.access().audiences.clone();
        }
        let reference = &spec["boundObjectRef"];
        let bound = match reference.get("kind").and_then(Value::as_str) {
            None => None,
            Some(kind) => {
                let (kind, res, obj_ns) = match kind {
                    "Pod" => (BoundKind::Pod, core("pods")?, ns),
                    "Secret" => (BoundKind::Secret, core("secrets")?, ns),
                    "Node" => (BoundKind::Node, core("nodes")?, ""),
                    other => {
                        return Err(ApiError::invalid(
                            "TokenRequest",
                            "authentication.k8s.io",
                            sa_name,
                            vec![Cause::unsupported("spec.boundObjectRef.kind", other, &["Pod", "Secret", "Node"])],
                        ));
                    }
                };
                let name = reference["name"].as_str().unwrap_or("");
                let obj = self.stored(res, obj_ns, name)?.ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "cannot bind the token to {} {name:?}: it does not exist",
                        kind.as_str()
                    ))
                })?;
                let uid = obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string();
                if let Some(asked) = reference["uid"].as_str().filter(|u| !u.is_empty())
                    && asked != uid
                {
                    return Err(ApiError::conflict_msg(format!(
                        "the UID in the bound object reference ({asked}) does not match the UID in record ({uid}); the object may have been deleted and recreated"
                    )));
                }
                // A node asks only for its own pods' accounts (upstream's NodeRestriction).
                if let Some(me) = auth::node_name(user)
                    && !user.is_admin()
                {
                    let pod_sa = super::sa_admission::service_account_name(&obj);
                    if kind != BoundKind::Pod
                        || obj.pointer("/spec/nodeName").and_then(Value::as_str) != Some(me)
                        || pod_sa != sa_name
                    {
                        return Err(ApiError::forbidden(format!(
                            "serviceaccounts/token {sa_name:?} is forbidden: node {me:?} may only ask tokens for the service accounts of pods bound to it"
                        )));
                    }
                }
                Some(BoundObject { kind, name: name.to_string(), uid })
            }
        };
        if bound.is_none()
            && let Some(me) = auth::node_name(user)
            && !user.is_admin()
        {
            return Err(ApiError::forbidden(format!(
                "serviceaccounts/token {sa_name:?} is forbidden: node {me:?} must bind the token to one of its pods"
            )));
        }
        let now = now_unix();
        let request = BoundTokenRequest {
            namespace: ns.to_string(),
            service_account: ObjectRef {
                name: sa_name.to_string(),
                uid: sa.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string(),
            },
            audiences: audiences.clone(),
            expiration_secs: seconds,
            bound: bound.clone(),
            warn_after_secs: None,
        };
        let access = self.access();
        let token = access.key.issue(&access.issuer, &request, now).map_err(|e| ApiError::internal(e.to_string()))?;
        let mut spec_out = json!({"audiences": audiences, "expirationSeconds": seconds});
        if let Some(b) = &bound {
            spec_out["boundObjectRef"] =
                json!({"kind": b.kind.as_str(), "apiVersion": "v1", "name": b.name, "uid": b.uid});
        }
        Ok(json!({
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": sa_name, "namespace": ns, "creationTimestamp": now_rfc3339()},
            "spec": spec_out,
            "status": {"token": token, "expirationTimestamp": rfc3339(now + seconds)},
        }))
    }

    /// A legacy `kubernetes.io/service-account-token` Secret's token (the controller fills
    /// the Secrets charts still create).
    fn legacy_token(&self, namespace: &str, sa_name: &str, sa_uid: &str, secret: &str) -> Result<String, ApiError> {
        let req = sa_token::LegacyTokenRequest {
            namespace: namespace.to_string(),
            service_account: ObjectRef { name: sa_name.to_string(), uid: sa_uid.to_string() },
            secret_name: secret.to_string(),
        };
        self.access().key.issue_legacy(&req).map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Fills a legacy `kubernetes.io/service-account-token` Secret being created, as
    /// upstream's token controller does (charts still make them for long-lived tokens):
    /// `token`, `ca.crt` and `namespace` in its data and the account's UID in its
    /// annotations. A Secret naming an account that does not exist is stored unfilled.
    pub(super) fn fill_legacy_token(&self, t: &Target, secret: &mut Value) -> Result<(), ApiError> {
        if secret["type"].as_str() != Some("kubernetes.io/service-account-token") {
            return Ok(());
        }
        let ns = t.namespace.as_deref().unwrap_or("default").to_string();
        let annotations = &secret["metadata"]["annotations"];
        let sa_name = annotations["kubernetes.io/service-account.name"].as_str().unwrap_or("").to_string();
        if sa_name.is_empty() {
            return Err(ApiError::invalid(
                "Secret",
                "",
                secret.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(""),
                vec![Cause::required("metadata.annotations[kubernetes.io/service-account.name]")],
            ));
        }
        let res =
            resources::find("", "v1", "serviceaccounts").ok_or_else(|| ApiError::internal("no serviceaccounts"))?;
        let Some(sa) = self.stored(res, &ns, &sa_name)? else { return Ok(()) };
        let sa_uid = sa.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string();
        let secret_name = secret.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        let token = self.legacy_token(&ns, &sa_name, &sa_uid, &secret_name)?;
        let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
        let ca = self.opts.join.as_ref().map(|j| j.pki.ca.cert_pem.clone()).unwrap_or_default();
        if !secret["data"].is_object() {
            secret["data"] = json!({});
        }
        secret["data"]["token"] = json!(b64(&token));
        secret["data"]["ca.crt"] = json!(b64(&ca));
        secret["data"]["namespace"] = json!(b64(&ns));
        secret["metadata"]["annotations"]["kubernetes.io/service-account.uid"] = json!(sa_uid);
        Ok(())
    }

    /// `/.well-known/openid-configuration` and `/openid/v1/jwks`.
    pub(super) fn oidc_document(&self, path: &str) -> Option<Value> {
        let access = self.access();
        match path {
            "/.well-known/openid-configuration" => Some(access.key.openid_configuration(&access.issuer)),
            "/openid/v1/jwks" => Some(access.key.jwks()),
            _ => None,
        }
    }

    /// Answers one review (`POST` of a review kind): who the caller is, or whether someone
    /// may do something.
    pub(super) fn review(
        &self,
        user: &User,
        review: &Review,
        ns: Option<&str>,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let mut out = body.clone();
        if !out.is_object() {
            return Err(ApiError::bad_request(format!("the body must be a {} object", review.kind)));
        }
        out["apiVersion"] = json!(format!("{}/{}", review.group, review.version));
        out["kind"] = json!(review.kind);
        if out.get("metadata").is_none_or(|m| !m.is_object()) {
            out["metadata"] = json!({});
        }
        out["metadata"]["creationTimestamp"] = Value::Null;
        let spec = body.get("spec").cloned().unwrap_or(json!({}));
        match review.kind {
            "SelfSubjectReview" => {
                out["status"] = json!({"userInfo": {"username": user.name, "groups": user.groups}});
            }
            "TokenReview" => {
                let token = spec["token"].as_str().unwrap_or("");
                let audiences: Vec<String> = spec["audiences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(String::from))
                    .collect();
                let accepted = if audiences.is_empty() { self.access().audiences.clone() } else { audiences };
                let static_user = self.tokens.user(Some(&format!("Bearer {token}")));
                out["status"] = match (static_user, self.service_account_user(token, &accepted)) {
                    (Some(u), _) => json!({"authenticated": true, "user": {"username": u.name, "groups": u.groups}}),
                    (None, Ok((u, v))) => {
                        let extra: serde_json::Map<String, Value> =
                            v.extra().into_iter().map(|(k, val)| (k.to_string(), json!([val]))).collect();
                        json!({"authenticated": true, "audiences": accepted,
                               "user": {"username": u.name, "uid": v.service_account.uid, "groups": u.groups, "extra": extra}})
                    }
                    (None, Err(why)) => json!({"authenticated": false, "error": why}),
                };
            }
            "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview" => {
                let subject = if review.kind == "SelfSubjectAccessReview" {
                    user.clone()
                } else {
                    User {
                        name: spec["user"].as_str().unwrap_or("").to_string(),
                        groups: spec["groups"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|g| g.as_str().map(String::from))
                            .collect(),
                    }
                };
                let (allowed, reason) = if let Some(r) = spec.get("resourceAttributes").filter(|r| r.is_object()) {
                    let s = |k: &str| r[k].as_str().unwrap_or("");
                    let attr_ns = s("namespace");
                    if review.kind == "LocalSubjectAccessReview" && ns.is_some_and(|n| n != attr_ns) {
                        return Err(ApiError::invalid(
                            review.kind,
                            review.group,
                            "",
                            vec![Cause::invalid(
                                "spec.resourceAttributes.namespace",
                                attr_ns,
                                "must match metadata.namespace",
                            )],
                        ));
                    }
                    let sub = s("subresource");
                    let name = s("name");
                    let a = Attributes {
                        verb: s("verb"),
                        group: s("group"),
                        resource: s("resource"),
                        sub: (!sub.is_empty()).then_some(sub),
                        namespace: (!attr_ns.is_empty()).then_some(attr_ns),
                        name: (!name.is_empty()).then_some(name),
                    };
                    self.decide(&subject, &rbac::Request::Resource(a))?
                } else if let Some(r) = spec.get("nonResourceAttributes").filter(|r| r.is_object()) {
                    let req = rbac::Request::NonResource {
                        verb: r["verb"].as_str().unwrap_or(""),
                        path: r["path"].as_str().unwrap_or(""),
                    };
                    self.decide(&subject, &req)?
                } else {
                    return Err(ApiError::invalid(
                        review.kind,
                        review.group,
                        "",
                        vec![Cause::required("spec.resourceAttributes")],
                    ));
                };
                let mut status = json!({"allowed": allowed});
                if !reason.is_empty() {
                    status["reason"] = json!(reason);
                }
                out["status"] = status;
            }
            "SelfSubjectRulesReview" => {
                let rules_ns = spec["namespace"].as_str().unwrap_or("");
                let rules = self.rbac_snapshot()?.rules_for(user, (!rules_ns.is_empty()).then_some(rules_ns));
                let (resource, non_resource) = rbac::rules_review_status(&rules);
                out["status"] =
                    json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false});
            }
            other => return Err(ApiError::internal(format!("no handler for the review {other}"))),
        }
        Ok(out)
    }
}
