//! RBAC (`rbac.authorization.k8s.io/v1`), decided as upstream decides it
//! (k8s.io/kubernetes `plugin/pkg/auth/authorizer/rbac` and
//! `pkg/registry/rbac/validation`): policy rules, subjects, bindings, ClusterRole
//! aggregation, escalation prevention, and the default roles every cluster starts with.
//!
//! Pure: no I/O, no async. The API server builds an [`RbacSnapshot`] from the stored Roles,
//! ClusterRoles, RoleBindings and ClusterRoleBindings whenever one of them changes and asks
//! it per request ([`RbacSnapshot::authorize`]), for SelfSubjectRulesReview
//! ([`RbacSnapshot::rules_for`]), and on RBAC writes for the rules the writer holds, which
//! [`covers`] compares with the rules being granted. Server start writes
//! [`bootstrap_objects`] through [`reconcile_bootstrap`]. Calls only `selector` (label
//! selectors) and `auth` (the request and user types).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde_json::{Map, Value, json};

use super::auth::{Attributes, User};
use super::selector::{LabelSelector, labels_of};

/// The annotation that keeps the server from updating a default role or binding at start
/// when set to `"false"`: an operator's edits to a default then survive upgrades.
pub const AUTOUPDATE_ANNOTATION: &str = "rbac.authorization.kubernetes.io/autoupdate";

/// The label upstream puts on every default role and binding, so tools can find them.
pub const BOOTSTRAP_LABEL: &str = "kubernetes.io/bootstrapping";

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const RBAC_API_VERSION: &str = "rbac.authorization.k8s.io/v1";

/// Why a policy rule in an RBAC object could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RbacError {
    /// A rule is not a JSON object.
    #[error("a policy rule must be an object with verbs and either apiGroups and resources, or nonResourceURLs")]
    RuleNotObject,
    /// A rule's field is neither absent nor a list of strings.
    #[error("policy rule field {field} must be a list of strings, as in {field}: [\"...\"]")]
    NotStringList {
        /// The JSON name of the field (`verbs`, `apiGroups`, ...).
        field: &'static str,
    },
    /// An object's `rules` is neither absent nor a list.
    #[error("rules must be a list of policy rules")]
    RulesNotList,
}

/// One `PolicyRule`: what may be done (verbs) to what (API groups and resources, optionally
/// only the named objects, or non-resource URLs). Kept as written, so coverage checks and the
/// escalation message see exactly what the user wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PolicyRule {
    /// `verbs`: `get`, `list`, ..., or `*` for all.
    pub verbs: Vec<String>,
    /// `apiGroups`: `""` for the core group, or `*` for all.
    pub api_groups: Vec<String>,
    /// `resources`: `pods`, `pods/log`, `*/scale`, or `*` for all (subresources included).
    pub resources: Vec<String>,
    /// `resourceNames`: when not empty, only these objects (a list or watch only by
    /// `metadata.name`; never a create).
    pub resource_names: Vec<String>,
    /// `nonResourceURLs`: exact paths, or prefixes ending in `*`.
    pub non_resource_urls: Vec<String>,
}

/// A request as RBAC sees it: on a resource (the attributes the API already computes) or on a
/// plain path such as `/healthz` (just a verb, `get` for GET, and the path).
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// `/api/...` and `/apis/...` requests on a resource.
    Resource(Attributes<'a>),
    /// Every other path; the verb is the lower-case HTTP method (`get`, `post`, ...).
    NonResource {
        /// Lower-case HTTP method.
        verb: &'a str,
        /// The URL path, without the query.
        path: &'a str,
    },
}

/// What RBAC says of one request. Denied carries an empty reason: the caller writes the 403,
/// as upstream's API server does for an authorizer's "no opinion".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether some binding of the user allows the request.
    pub allowed: bool,
    /// Upstream's audit reason when allowed, e.g. `RBAC: allowed by ClusterRoleBinding
    /// "cluster-admin" of ClusterRole "cluster-admin" to Group "system:masters"`.
    pub reason: String,
}

impl Request<'_> {
    fn verb(&self) -> &str {
        match self {
            Request::Resource(a) => a.verb,
            Request::NonResource { verb, .. } => verb,
        }
    }

    /// The namespace the request is in; non-resource and cluster-scoped requests have none.
    fn namespace(&self) -> Option<&str> {
        match self {
            Request::Resource(a) => a.namespace.filter(|n| !n.is_empty()),
            Request::NonResource { .. } => None,
        }
    }
}

fn string_list(obj: &Map<String, Value>, field: &'static str) -> Result<Vec<String>, RbacError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => {
            items.iter().map(|i| i.as_str().map(String::from).ok_or(RbacError::NotStringList { field })).collect()
        }
        Some(_) => Err(RbacError::NotStringList { field }),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl PolicyRule {
    /// A resource rule, as the default roles and tests write them.
    pub fn resource(verbs: &[&str], api_groups: &[&str], resources: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: strings(verbs),
            api_groups: strings(api_groups),
            resources: strings(resources),
            ..PolicyRule::default()
        }
    }

    /// A non-resource URL rule.
    pub fn urls(verbs: &[&str], urls: &[&str]) -> PolicyRule {
        PolicyRule { verbs: strings(verbs), non_resource_urls: strings(urls), ..PolicyRule::default() }
    }

    /// Reads one rule as Kubernetes stores it; an absent or null field is empty, as in Go.
    pub fn from_value(v: &Value) -> Result<PolicyRule, RbacError> {
        let obj = v.as_object().ok_or(RbacError::RuleNotObject)?;
        Ok(PolicyRule {
            verbs: string_list(obj, "verbs")?,
            api_groups: string_list(obj, "apiGroups")?,
            resources: string_list(obj, "resources")?,
            resource_names: string_list(obj, "resourceNames")?,
            non_resource_urls: string_list(obj, "nonResourceURLs")?,
        })
    }

    /// The rule as Kubernetes stores it: `verbs` always, the other fields only when set.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("verbs".into(), json!(self.verbs));
        for (key, list) in [
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !list.is_empty() {
                m.insert(key.into(), json!(list));
            }
        }
        Value::Object(m)
    }

    /// Whether the rule allows the request, exactly as upstream's `RuleAllows`: `*` matches
    /// any verb, group or resource (subresources too); `*/scale` matches the `scale`
    /// subresource of anything; `pods` does not match `pods/log`; `resourceNames` restricts
    /// only when set, and then never matches a request without a name (list, create);
    /// `nonResourceURLs` match exactly or by a prefix ending in `*`. A rule for resources
    /// never allows a non-resource request, nor the other way round.
    pub fn allows(&self, req: &Request) -> bool {
        if !self.verbs.iter().any(|v| v == "*" || v == req.verb()) {
            return false;
        }
        match req {
            Request::Resource(a) => {
                let sub = a.sub.filter(|s| !s.is_empty());
                self.api_groups.iter().any(|g| g == "*" || g == a.group)
                    && self.resource_matches(a.resource, sub)
                    && (self.resource_names.is_empty()
                        || self.resource_names.iter().any(|n| n == a.name.unwrap_or_default()))
            }
            Request::NonResource { path, .. } => self.non_resource_urls.iter().any(|u| url_covers(u, path)),
        }
    }

    /// Upstream's `ResourceMatches`: the rule's entry equals `resource[/sub]`, is `*`, or is
    /// `*/sub`. Nothing else is a wildcard: `pods/*` matches only a subresource named `*`.
    fn resource_matches(&self, resource: &str, sub: Option<&str>) -> bool {
        self.resources.iter().any(|r| {
            if r == "*" {
                return true;
            }
            match (sub, r.split_once('/')) {
                (None, _) => r == resource,
                (Some(sub), Some((res, s))) => s == sub && (res == resource || res == "*"),
                (Some(_), None) => false,
            }
        })
    }
}

/// Upstream's compact form, used in escalation messages:
/// `{APIGroups:["apps"], Resources:["deployments"], Verbs:["create"]}`.
impl fmt::Display for PolicyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [
            ("APIGroups", &self.api_groups),
            ("Resources", &self.resources),
            ("NonResourceURLs", &self.non_resource_urls),
            ("ResourceNames", &self.resource_names),
            ("Verbs", &self.verbs),
        ]
        .into_iter()
        .filter(|(_, list)| !list.is_empty())
        .map(|(label, list)| format!("{label}:{}", quote_list(list)))
        .collect();
        write!(f, "{{{}}}", parts.join(", "))
    }
}

/// Whether a `nonResourceURLs` entry covers a path: equal, or a prefix ending in `*`.
fn url_covers(rule_url: &str, path: &str) -> bool {
    rule_url == path || (rule_url.ends_with('*') && path.starts_with(rule_url.trim_end_matches('*')))
}

/// Go's `%q` of a string, as upstream's messages quote names.
fn quote(s: &str) -> String {
    super::pod_security::go_quote(s)
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn quote_list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|s| quote(s)).collect::<Vec<_>>().join(" "))
}

/// The rules of a Role or ClusterRole object (`rules`; absent or null is none), for the
/// escalation check on a write: the rules the writer wants to grant.
pub fn rules_of(obj: &Value) -> Result<Vec<PolicyRule>, RbacError> {
    match obj.get("rules") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(PolicyRule::from_value).collect(),
        Some(_) => Err(RbacError::RulesNotList),
    }
}

/// The rules of a stored object, for the snapshot: a rule that cannot be read grants nothing
/// (the API validated it on write, so this only guards against a damaged store).
fn readable_rules(obj: &Value) -> Vec<PolicyRule> {
    obj.get("rules")
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(|r| PolicyRule::from_value(r).ok()).collect())
        .unwrap_or_default()
}

fn str_at<'v>(obj: &'v Value, pointer: &str) -> &'v str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// One subject of a binding.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    User(String),
    Group(String),
    /// `namespace` may be empty: in a RoleBinding it then means the binding's namespace.
    ServiceAccount {
        namespace: String,
        name: String,
    },
}

impl Subject {
    fn from_value(v: &Value) -> Option<Subject> {
        let name = v.get("name").and_then(Value::as_str)?.to_string();
        match v.get("kind").and_then(Value::as_str)? {
            "User" => Some(Subject::User(name)),
            "Group" => Some(Subject::Group(name)),
            "ServiceAccount" => Some(Subject::ServiceAccount {
                namespace: v.get("namespace").and_then(Value::as_str).unwrap_or_default().to_string(),
                name,
            }),
            _ => None,
        }
    }

    /// The user name this subject stands for when it is a user or a service account (in a
    /// binding of `binding_ns`, empty for a ClusterRoleBinding); None when it can match none.
    fn user_name(&self, binding_ns: &str) -> Option<String> {
        match self {
            Subject::User(name) => Some(name.clone()),
            Subject::Group(_) => None,
            Subject::ServiceAccount { namespace, name } => {
                let ns = if namespace.is_empty() { binding_ns } else { namespace.as_str() };
                (!ns.is_empty()).then(|| format!("system:serviceaccount:{ns}:{name}"))
            }
        }
    }

    /// Upstream's `describeSubject`: `Group "g"`, `User "u"`, `ServiceAccount "name/ns"`.
    fn describe(&self, binding_ns: &str) -> String {
        match self {
            Subject::User(name) => format!("User {}", quote(name)),
            Subject::Group(name) => format!("Group {}", quote(name)),
            Subject::ServiceAccount { namespace, name } => {
                let ns = if namespace.is_empty() { binding_ns } else { namespace.as_str() };
                format!("ServiceAccount {}", quote(&format!("{name}/{ns}")))
            }
        }
    }
}

/// One RoleBinding or ClusterRoleBinding, with its role resolved.
#[derive(Debug)]
struct Binding {
    name: String,
    /// None: a ClusterRoleBinding, which applies everywhere.
    namespace: Option<String>,
    role_kind: String,
    role_name: String,
    /// Index into `RbacSnapshot::rule_sets`; None when the role does not exist.
    rules: Option<usize>,
    subjects: Vec<Subject>,
}

impl Binding {
    /// Upstream's reason text for the binding, granted through `subject`.
    fn describe(&self, subject: &Subject) -> String {
        match &self.namespace {
            None => format!(
                "ClusterRoleBinding {} of {} {} to {}",
                quote(&self.name),
                self.role_kind,
                quote(&self.role_name),
                subject.describe("")
            ),
            Some(ns) => format!(
                "RoleBinding {} of {} {} to {}",
                quote(&format!("{}/{ns}", self.name)),
                self.role_kind,
                quote(&self.role_name),
                subject.describe(ns)
            ),
        }
    }
}

/// A ClusterRole as aggregation needs it.
struct ClusterRoleSource {
    name: String,
    labels: BTreeMap<String, String>,
    rules: Vec<PolicyRule>,
    /// Some (possibly empty) when the role has an `aggregationRule`.
    selectors: Option<Vec<LabelSelector>>,
}

impl ClusterRoleSource {
    fn from_value(obj: &Value) -> Option<ClusterRoleSource> {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str)?.to_string();
        let selectors = obj.get("aggregationRule").filter(|a| !a.is_null()).map(|a| {
            a.get("clusterRoleSelectors")
                .and_then(Value::as_array)
                .map(|sels| sels.iter().map(LabelSelector::from_object).collect())
                .unwrap_or_default()
        });
        Some(ClusterRoleSource { name, labels: labels_of(obj), rules: readable_rules(obj), selectors })
    }
}

/// For each aggregated ClusterRole, the rules upstream's aggregation controller settles on:
/// the rules of every ClusterRole its selectors match (itself excluded), in name order,
/// without duplicates. A matched role that is itself aggregated contributes what it settles
/// on (its stored `rules` are overwritten by the controller), so `admin` gets `view`'s rules
/// through `edit` without waiting for the controller to write `edit` first.
fn aggregate(sources: &[ClusterRoleSource]) -> Vec<Option<Vec<PolicyRule>>> {
    let mut by_name: Vec<usize> = (0..sources.len()).collect();
    by_name.sort_by(|&a, &b| sources[a].name.cmp(&sources[b].name));
    let matched: Vec<Vec<usize>> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| match &s.selectors {
            None => Vec::new(),
            Some(sels) => by_name
                .iter()
                .copied()
                .filter(|&j| j != i && sels.iter().any(|sel| sel.matches(&sources[j].labels)))
                .collect(),
        })
        .collect();
    sources
        .iter()
        .enumerate()
        .map(|(root, s)| {
            s.selectors.as_ref()?;
            let mut visited = vec![false; sources.len()];
            visited[root] = true;
            let mut seen: HashSet<&PolicyRule> = HashSet::new();
            let mut out = Vec::new();
            // Depth first, each node's matches in name order: (role, next match to visit).
            let mut stack = vec![(root, 0usize)];
            while let Some(top) = stack.last_mut() {
                let (node, pos) = *top;
                top.1 += 1;
                let Some(&next) = matched[node].get(pos) else {
                    stack.pop();
                    continue;
                };
                if visited[next] {
                    continue;
                }
                visited[next] = true;
                if sources[next].selectors.is_some() {
                    stack.push((next, 0));
                } else {
                    for r in &sources[next].rules {
                        if seen.insert(r) {
                            out.push(r.clone());
                        }
                    }
                }
            }
            Some(out)
        })
        .collect()
}

/// Everything RBAC decides on, indexed for per-request use: effective role rules (with
/// aggregation resolved) and bindings by the users and groups they name. Immutable; rebuilt
/// whenever an RBAC object changes (share it as `Arc<RbacSnapshot>`). The default (empty)
/// snapshot allows nothing.
#[derive(Debug, Default)]
pub struct RbacSnapshot {
    /// Effective rules of each role, shared by every binding to it.
    rule_sets: Vec<Vec<PolicyRule>>,
    cluster_roles: HashMap<String, usize>,
    /// namespace -> role name -> rules.
    roles: HashMap<String, HashMap<String, usize>>,
    /// What each aggregated ClusterRole's `rules` should be.
    aggregated: HashMap<String, Vec<PolicyRule>>,
    /// ClusterRoleBindings first, then RoleBindings: upstream's order of evaluation.
    bindings: Vec<Binding>,
    /// User name (service accounts as `system:serviceaccount:ns:name`) -> (binding, subject).
    by_user: HashMap<String, Vec<(usize, usize)>>,
    /// Group -> (binding, subject).
    by_group: HashMap<String, Vec<(usize, usize)>>,
}

impl RbacSnapshot {
    /// Indexes the stored RBAC objects (each as Kubernetes stores it). Objects without a
    /// name, or a RoleBinding or Role without a namespace, are skipped: they grant nothing.
    pub fn build<'v>(
        roles: impl IntoIterator<Item = &'v Value>,
        cluster_roles: impl IntoIterator<Item = &'v Value>,
        role_bindings: impl IntoIterator<Item = &'v Value>,
        cluster_role_bindings: impl IntoIterator<Item = &'v Value>,
    ) -> RbacSnapshot {
        let mut snap = RbacSnapshot::default();
        let sources: Vec<ClusterRoleSource> =
            cluster_roles.into_iter().filter_map(ClusterRoleSource::from_value).collect();
        let aggregated = aggregate(&sources);
        for (source, aggregated) in sources.into_iter().zip(aggregated) {
            let mut rules = source.rules;
            if let Some(extra) = &aggregated {
                let have: HashSet<PolicyRule> = rules.iter().cloned().collect();
                rules.extend(extra.iter().filter(|r| !have.contains(r)).cloned());
            }
            if let Some(extra) = aggregated {
                snap.aggregated.insert(source.name.clone(), extra);
            }
            snap.cluster_roles.insert(source.name, snap.rule_sets.len());
            snap.rule_sets.push(rules);
        }
        for role in roles {
            let (ns, name) = (str_at(role, "/metadata/namespace"), str_at(role, "/metadata/name"));
            if ns.is_empty() || name.is_empty() {
                continue;
            }
            snap.roles.entry(ns.to_string()).or_default().insert(name.to_string(), snap.rule_sets.len());
            snap.rule_sets.push(readable_rules(role));
        }
        for crb in cluster_role_bindings {
            snap.add_binding(crb, None);
        }
        for rb in role_bindings {
            let ns = str_at(rb, "/metadata/namespace");
            if !ns.is_empty() {
                snap.add_binding(rb, Some(ns));
            }
        }
        snap
    }

    fn add_binding(&mut self, obj: &Value, namespace: Option<&str>) {
        let name = str_at(obj, "/metadata/name");
        let (role_kind, role_name) = (str_at(obj, "/roleRef/kind"), str_at(obj, "/roleRef/name"));
        if name.is_empty() {
            return;
        }
        let rules = match (role_kind, namespace) {
            ("ClusterRole", _) => self.cluster_roles.get(role_name).copied(),
            ("Role", Some(ns)) => self.roles.get(ns).and_then(|m| m.get(role_name)).copied(),
            _ => None,
        };
        // A binding to a missing role grants nothing: it is not indexed (the next snapshot,
        // built when the role appears, picks it up).
        if rules.is_none() {
            return;
        }
        let subjects: Vec<Subject> = obj
            .get("subjects")
            .and_then(Value::as_array)
            .map(|s| s.iter().filter_map(Subject::from_value).collect())
            .unwrap_or_default();
        let index = self.bindings.len();
        for (i, subject) in subjects.iter().enumerate() {
            match subject {
                Subject::Group(g) => self.by_group.entry(g.clone()).or_default().push((index, i)),
                other => {
                    if let Some(user) = other.user_name(namespace.unwrap_or_default()) {
                        self.by_user.entry(user).or_default().push((index, i));
                    }
                }
            }
        }
        self.bindings.push(Binding {
            name: name.to_string(),
            namespace: namespace.map(String::from),
            role_kind: role_kind.to_string(),
            role_name: role_name.to_string(),
            rules,
            subjects,
        });
    }

    /// The bindings that name `user` (by name, service account or group) and apply in
    /// `namespace` (ClusterRoleBindings always; RoleBindings only in their own namespace),
    /// in evaluation order, each with the first of its subjects that matched.
    fn bindings_for<'s>(&'s self, user: &User, namespace: Option<&str>) -> Vec<(&'s Binding, &'s Subject)> {
        let mut hits: Vec<(usize, usize)> = Vec::new();
        if let Some(h) = self.by_user.get(&user.name) {
            hits.extend(h);
        }
        for g in &user.groups {
            if let Some(h) = self.by_group.get(g) {
                hits.extend(h);
            }
        }
        hits.sort_unstable();
        hits.dedup_by_key(|(binding, _)| *binding);
        hits.into_iter()
            .map(|(b, s)| (&self.bindings[b], &self.bindings[b].subjects[s]))
            .filter(|(b, _)| b.namespace.is_none() || b.namespace.as_deref() == namespace)
            .collect()
    }

    fn rules_of(&self, binding: &Binding) -> &[PolicyRule] {
        binding.rules.and_then(|i| self.rule_sets.get(i)).map(Vec::as_slice).unwrap_or_default()
    }

    /// Decides one request as upstream's RBAC authorizer: ClusterRoleBindings first, then the
    /// RoleBindings of the request's namespace; the first rule that allows it wins and names
    /// the binding in the reason.
    pub fn authorize(&self, user: &User, req: &Request) -> Decision {
        for (binding, subject) in self.bindings_for(user, req.namespace()) {
            if self.rules_of(binding).iter().any(|r| r.allows(req)) {
                return Decision { allowed: true, reason: format!("RBAC: allowed by {}", binding.describe(subject)) };
            }
        }
        Decision { allowed: false, reason: String::new() }
    }

    /// Every rule that applies to `user` in `namespace` (None: cluster scope, only
    /// ClusterRoleBindings), without duplicates: what SelfSubjectRulesReview answers and what
    /// the escalation check compares a write with.
    pub fn rules_for(&self, user: &User, namespace: Option<&str>) -> Vec<PolicyRule> {
        let namespace = namespace.filter(|n| !n.is_empty());
        let mut seen: HashSet<&PolicyRule> = HashSet::new();
        let mut out = Vec::new();
        for (binding, _) in self.bindings_for(user, namespace) {
            for r in self.rules_of(binding) {
                if seen.insert(r) {
                    out.push(r.clone());
                }
            }
        }
        out
    }

    /// The effective rules of the role a `roleRef` names (`kind` `Role` in `namespace`, or
    /// `ClusterRole`, for which `namespace` is ignored), for the escalation check on a binding
    /// write: binding a role needs holding its rules. None when the role does not exist.
    pub fn role_rules(&self, kind: &str, name: &str, namespace: Option<&str>) -> Option<&[PolicyRule]> {
        let index = match kind {
            "ClusterRole" => self.cluster_roles.get(name),
            "Role" => self.roles.get(namespace?).and_then(|m| m.get(name)),
            _ => None,
        }?;
        self.rule_sets.get(*index).map(Vec::as_slice)
    }

    /// What the `rules` of an aggregated ClusterRole should be (the rules of the ClusterRoles
    /// its selectors match, as upstream's aggregation controller writes them), so a
    /// controller can write them back for clients that read the role. None when the role is
    /// missing or not aggregated.
    pub fn aggregated_rules(&self, cluster_role: &str) -> Option<Vec<Value>> {
        self.aggregated.get(cluster_role).map(|rules| rules.iter().map(PolicyRule::to_value).collect())
    }
}

/// Splits a rule into single verb/group/resource(/name) rules, and single verb/URL rules, as
/// upstream's `BreakdownRule`: coverage is decided one atomic permission at a time.
pub fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let one = |s: &String| vec![s.clone()];
    let mut out = Vec::new();
    for group in &rule.api_groups {
        for resource in &rule.resources {
            for verb in &rule.verbs {
                let base = PolicyRule {
                    verbs: one(verb),
                    api_groups: one(group),
                    resources: one(resource),
                    ..PolicyRule::default()
                };
                if rule.resource_names.is_empty() {
                    out.push(base);
                } else {
                    for name in &rule.resource_names {
                        out.push(PolicyRule { resource_names: one(name), ..base.clone() });
                    }
                }
            }
        }
    }
    for url in &rule.non_resource_urls {
        for verb in &rule.verbs {
            out.push(PolicyRule { verbs: one(verb), non_resource_urls: one(url), ..PolicyRule::default() });
        }
    }
    out
}

fn has_all(set: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|w| set.contains(w))
}

/// Upstream's `ruleCovers`: whether `owner` grants everything `sub` does.
fn rule_covers(owner: &PolicyRule, sub: &PolicyRule) -> bool {
    let star = |list: &[String]| list.iter().any(|x| x == "*");
    let verbs = star(&owner.verbs) || has_all(&owner.verbs, &sub.verbs);
    let groups = star(&owner.api_groups) || has_all(&owner.api_groups, &sub.api_groups);
    let resources = star(&owner.resources)
        || sub.resources.iter().all(|r| {
            owner.resources.contains(r)
                || r.split_once('/')
                    .is_some_and(|(_, s)| owner.resources.iter().any(|o| o.strip_prefix("*/") == Some(s)))
        });
    let urls = sub.non_resource_urls.iter().all(|p| owner.non_resource_urls.iter().any(|o| url_covers(o, p)));
    let names = owner.resource_names.is_empty()
        || (!sub.resource_names.is_empty() && has_all(&owner.resource_names, &sub.resource_names));
    verbs && groups && resources && urls && names
}

/// Escalation prevention, as upstream's `validation.Covers`: Ok when the `owner` rules (what
/// the writer holds) grant every atomic permission in `requested` (what the write would
/// grant), else the atomic permissions they do not.
pub fn covers(owner: &[PolicyRule], requested: &[PolicyRule]) -> Result<(), Vec<PolicyRule>> {
    let missing: Vec<PolicyRule> =
        requested.iter().flat_map(breakdown).filter(|sub| !owner.iter().any(|o| rule_covers(o, sub))).collect();
    if missing.is_empty() { Ok(()) } else { Err(missing) }
}

/// Upstream's `CompactRules`: atomic rules on the same group, resource and name that differ
/// only in their verb become one rule with all the verbs, so the message stays short.
fn compact(rules: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut out: Vec<PolicyRule> = Vec::new();
    let mut simple: HashMap<(String, String, Option<String>), usize> = HashMap::new();
    for r in rules {
        let is_simple = r.api_groups.len() == 1
            && r.resources.len() == 1
            && r.resource_names.len() <= 1
            && r.non_resource_urls.is_empty();
        if !is_simple {
            out.push(r.clone());
            continue;
        }
        let key = (r.api_groups[0].clone(), r.resources[0].clone(), r.resource_names.first().cloned());
        match simple.get(&key) {
            Some(&i) => out[i].verbs.extend(r.verbs.iter().cloned()),
            None => {
                simple.insert(key, out.len());
                out.push(r.clone());
            }
        }
    }
    out
}

/// The missing rules of a refused RBAC write as upstream lists them: atomic rules that
/// differ only in verb merged, one per line
/// (`{APIGroups:["apps"], Resources:["deployments"], Verbs:["create"]}`), sorted.
pub fn describe_rules(missing: &[PolicyRule]) -> String {
    let mut lines: Vec<String> = compact(missing).iter().map(PolicyRule::to_string).collect();
    lines.sort();
    lines.dedup();
    lines.join("\n")
}

/// Upstream's whole message for a refused RBAC write: `user "alice" (groups=["dev"]) is
/// attempting to grant RBAC permissions not currently held:` and [`describe_rules`] on the
/// next lines. The caller wraps it in the 403 for the object written.
pub fn escalation_message(user: &User, missing: &[PolicyRule]) -> String {
    format!(
        "user {} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        quote(&user.name),
        quote_list(&user.groups),
        describe_rules(missing)
    )
}

/// A SelfSubjectRulesReview's `status.resourceRules` and `status.nonResourceRules` for the
/// rules from [`RbacSnapshot::rules_for`], split as upstream's RBAC authorizer splits them (a
/// rule with both kinds appears in both lists).
pub fn rules_review_status(rules: &[PolicyRule]) -> (Vec<Value>, Vec<Value>) {
    let mut resource = Vec::new();
    let mut non_resource = Vec::new();
    for r in rules {
        if !r.resources.is_empty() {
            let mut v = json!({"verbs": r.verbs});
            for (key, list) in
                [("apiGroups", &r.api_groups), ("resources", &r.resources), ("resourceNames", &r.resource_names)]
            {
                if !list.is_empty() {
                    v[key] = json!(list);
                }
            }
            resource.push(v);
        }
        if !r.non_resource_urls.is_empty() {
            non_resource.push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
    }
    (resource, non_resource)
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn default_metadata(name: &str, extra_labels: &[(&str, &str)]) -> Value {
    let mut labels = Map::new();
    labels.insert(BOOTSTRAP_LABEL.into(), json!("rbac-defaults"));
    for (k, v) in extra_labels {
        labels.insert(k.to_string(), json!(v));
    }
    json!({"name": name, "labels": labels, "annotations": {AUTOUPDATE_ANNOTATION: "true"}})
}

fn default_cluster_role(name: &str, extra_labels: &[(&str, &str)], rules: &[PolicyRule]) -> Value {
    json!({"apiVersion": RBAC_API_VERSION, "kind": "ClusterRole", "metadata": default_metadata(name, extra_labels),
        "rules": rules.iter().map(PolicyRule::to_value).collect::<Vec<_>>()})
}

/// An aggregated default role: no rules of its own, those of the roles labelled `from`.
fn default_aggregated_role(name: &str, extra_labels: &[(&str, &str)], from: &str) -> Value {
    json!({"apiVersion": RBAC_API_VERSION, "kind": "ClusterRole", "metadata": default_metadata(name, extra_labels),
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {from: "true"}}]}})
}

fn default_binding(name: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> =
        groups.iter().map(|g| json!({"apiGroup": RBAC_GROUP, "kind": "Group", "name": g})).collect();
    json!({"apiVersion": RBAC_API_VERSION, "kind": "ClusterRoleBinding", "metadata": default_metadata(name, &[]),
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name}, "subjects": subjects})
}

const TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// Upstream's `system:aggregate-to-edit` rules (bootstrappolicy/policy.go, without the
/// `resource.k8s.io` rules, which upstream adds only with DynamicResourceAllocation).
fn aggregate_to_edit_rules() -> Vec<PolicyRule> {
    let r = PolicyRule::resource;
    vec![
        r(READ, &[""], &["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy"]),
        r(&["impersonate"], &[""], &["serviceaccounts"]),
        r(WRITE, &[""], &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"]),
        r(&["create"], &[""], &["pods/eviction"]),
        r(
            WRITE,
            &[""],
            &[
                "configmaps",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
        ),
        r(&["create"], &[""], &["serviceaccounts/token"]),
        r(WRITE, &["", "events.k8s.io"], &["events"]),
        r(
            WRITE,
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
        ),
        r(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        r(WRITE, &["batch"], &["cronjobs", "jobs"]),
        r(
            WRITE,
            &["extensions"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "ingresses",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
            ],
        ),
        r(WRITE, &["policy"], &["poddisruptionbudgets"]),
        r(WRITE, &["networking.k8s.io"], &["ingresses", "networkpolicies"]),
        r(READ_WRITE, &["coordination.k8s.io"], &["leases"]),
    ]
}

/// Upstream's `system:aggregate-to-view` rules (as for edit, without `resource.k8s.io`).
fn aggregate_to_view_rules() -> Vec<PolicyRule> {
    let r = PolicyRule::resource;
    vec![
        r(
            READ,
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
            ],
        ),
        r(
            READ,
            &[""],
            &[
                "bindings",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
            ],
        ),
        r(READ, &[""], &["namespaces"]),
        r(READ, &["", "events.k8s.io"], &["events"]),
        r(READ, &["discovery.k8s.io"], &["endpointslices"]),
        r(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
        ),
        r(READ, &["autoscaling"], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"]),
        r(READ, &["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"]),
        r(
            READ,
            &["extensions"],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
            ],
        ),
        r(READ, &["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"]),
        r(READ, &["networking.k8s.io"], &["ingresses", "ingresses/status", "networkpolicies"]),
    ]
}

/// Upstream's default ClusterRoles and ClusterRoleBindings that a cluster's users rely on
/// (`cluster-admin`, `admin`/`edit`/`view` and their aggregate-to roles, basic-user,
/// discovery, public-info-viewer, service-account-issuer-discovery), and metrics-server's
/// `system:aggregated-metrics-reader` for the built-in metrics API, each labelled
/// `kubernetes.io/bootstrapping: rbac-defaults` and annotated autoupdate `"true"`: roles
/// first, then bindings. The server writes each through [`reconcile_bootstrap`] at start.
pub fn bootstrap_objects() -> Vec<Value> {
    let r = PolicyRule::resource;
    let get = &["get"];
    vec![
        default_cluster_role("cluster-admin", &[], &[r(&["*"], &["*"], &["*"]), PolicyRule::urls(&["*"], &["*"])]),
        default_aggregated_role("admin", &[], TO_ADMIN),
        default_aggregated_role("edit", &[(TO_ADMIN, "true")], TO_EDIT),
        default_aggregated_role("view", &[(TO_EDIT, "true")], TO_VIEW),
        default_cluster_role(
            "system:aggregate-to-admin",
            &[(TO_ADMIN, "true")],
            &[
                r(&["create"], &["authorization.k8s.io"], &["localsubjectaccessreviews"]),
                r(READ_WRITE, &[RBAC_GROUP], &["rolebindings", "roles"]),
            ],
        ),
        default_cluster_role("system:aggregate-to-edit", &[(TO_EDIT, "true")], &aggregate_to_edit_rules()),
        default_cluster_role("system:aggregate-to-view", &[(TO_VIEW, "true")], &aggregate_to_view_rules()),
        // As metrics-server ships it: whoever may view may run `kubectl top`.
        default_cluster_role(
            "system:aggregated-metrics-reader",
            &[(TO_VIEW, "true"), (TO_EDIT, "true"), (TO_ADMIN, "true")],
            &[r(READ, &["metrics.k8s.io"], &["nodes", "pods"])],
        ),
        default_cluster_role(
            "system:basic-user",
            &[],
            &[
                r(&["create"], &["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
                r(&["create"], &["authentication.k8s.io"], &["selfsubjectreviews"]),
            ],
        ),
        default_cluster_role(
            "system:discovery",
            &[],
            &[PolicyRule::urls(
                get,
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        default_cluster_role(
            "system:public-info-viewer",
            &[],
            &[PolicyRule::urls(get, &["/healthz", "/livez", "/readyz", "/version", "/version/"])],
        ),
        default_cluster_role(
            "system:service-account-issuer-discovery",
            &[],
            &[PolicyRule::urls(
                get,
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        default_binding("cluster-admin", &["system:masters"]),
        default_binding("system:basic-user", &["system:authenticated"]),
        default_binding("system:discovery", &["system:authenticated"]),
        default_binding("system:public-info-viewer", &["system:authenticated", "system:unauthenticated"]),
        default_binding("system:service-account-issuer-discovery", &["system:serviceaccounts"]),
    ]
}

/// Adds `wanted`'s `metadata.<field>` keys that `out` lacks; `out`'s own values win.
fn add_missing_keys(out: &mut Value, wanted: &Value, field: &str) {
    let Some(want) = wanted.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_object) else {
        return;
    };
    let Some(meta) = out.as_object_mut().map(|o| o.entry("metadata").or_insert_with(|| json!({}))) else {
        return;
    };
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    let map = meta.entry(field).or_insert_with(|| json!({}));
    if !map.is_object() {
        *map = json!({});
    }
    if let Some(map) = map.as_object_mut() {
        for (k, v) in want {
            map.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// The list at `out[field]`, made a list when absent or not one.
fn list_mut<'v>(out: &'v mut Value, field: &str) -> Option<&'v mut Vec<Value>> {
    let slot = out.as_object_mut()?.entry(field).or_insert_with(|| json!([]));
    if !slot.is_array() {
        *slot = json!([]);
    }
    slot.as_array_mut()
}

/// Appends each wanted rule that the existing rules do not already cover, whole.
fn add_missing_rules(out: &mut Value, wanted: &Value) {
    let mut have = readable_rules(out);
    let mut missing = Vec::new();
    for rule in readable_rules(wanted) {
        if covers(&have, std::slice::from_ref(&rule)).is_err() {
            missing.push(rule.to_value());
            have.push(rule);
        }
    }
    if !missing.is_empty()
        && let Some(list) = list_mut(out, "rules")
    {
        list.extend(missing);
    }
}

/// Keeps the existing aggregation selectors and adds the wanted ones it lacks; removes the
/// aggregation of a role that is not meant to aggregate (as upstream).
fn reconcile_aggregation(out: &mut Value, wanted: &Value) {
    let wanted_selectors: Vec<Value> = match wanted.get("aggregationRule").filter(|a| !a.is_null()) {
        None => {
            if out.get("aggregationRule").is_some_and(|a| !a.is_null())
                && let Some(obj) = out.as_object_mut()
            {
                obj.remove("aggregationRule");
            }
            return;
        }
        Some(a) => a.get("clusterRoleSelectors").and_then(Value::as_array).cloned().unwrap_or_default(),
    };
    let existing: Vec<Value> =
        out.pointer("/aggregationRule/clusterRoleSelectors").and_then(Value::as_array).cloned().unwrap_or_default();
    let missing: Vec<Value> = wanted_selectors.into_iter().filter(|s| !existing.contains(s)).collect();
    if missing.is_empty() {
        return;
    }
    let Some(obj) = out.as_object_mut() else {
        return;
    };
    let rule = obj.entry("aggregationRule").or_insert_with(|| json!({}));
    if !rule.is_object() {
        *rule = json!({});
    }
    if let Some(list) = list_mut(rule, "clusterRoleSelectors") {
        list.extend(missing);
    }
}

/// Appends the wanted subjects the binding lacks (same kind, name and namespace).
fn add_missing_subjects(out: &mut Value, wanted: &Value) {
    let key = |s: &Value| {
        ["kind", "name", "namespace"].map(|k| s.get(k).and_then(Value::as_str).unwrap_or_default().to_string())
    };
    let existing: Vec<[String; 3]> =
        out.get("subjects").and_then(Value::as_array).map(|l| l.iter().map(key).collect()).unwrap_or_default();
    let missing: Vec<Value> = wanted
        .get("subjects")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter(|s| !existing.contains(&key(s))).cloned().collect())
        .unwrap_or_default();
    if !missing.is_empty()
        && let Some(list) = list_mut(out, "subjects")
    {
        list.extend(missing);
    }
}

/// What to write at server start for one default object (`wanted`, from
/// [`bootstrap_objects`]) given what is stored (`existing`), as upstream's reconciler in union
/// mode: the object itself when missing; None when the stored one is annotated autoupdate
/// `"false"` (left as the operator edited it) or already holds everything; otherwise the
/// stored object with the missing labels, annotations, rules (each uncovered wanted rule,
/// whole), aggregation selectors or subjects added. Nothing is removed, except an
/// `aggregationRule` on a role that is not meant to aggregate. A binding whose `roleRef`
/// differs comes back as `wanted` itself: `roleRef` is immutable, so the caller deletes the
/// stored binding and creates this one (upstream's "recreate").
pub fn reconcile_bootstrap(existing: Option<&Value>, wanted: &Value) -> Option<Value> {
    let Some(existing) = existing else {
        return Some(wanted.clone());
    };
    let autoupdate = existing
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(AUTOUPDATE_ANNOTATION))
        .and_then(Value::as_str);
    if autoupdate == Some("false") {
        return None;
    }
    let is_binding = wanted.get("roleRef").is_some();
    if is_binding {
        let role_ref = |v: &Value| (str_at(v, "/roleRef/kind").to_string(), str_at(v, "/roleRef/name").to_string());
        if role_ref(existing) != role_ref(wanted) {
            return Some(wanted.clone());
        }
    }
    let mut out = existing.clone();
    add_missing_keys(&mut out, wanted, "labels");
    add_missing_keys(&mut out, wanted, "annotations");
    if is_binding {
        add_missing_subjects(&mut out, wanted);
    } else {
        add_missing_rules(&mut out, wanted);
        reconcile_aggregation(&mut out, wanted);
    }
    (out != *existing).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res<'a>(
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        sub: Option<&'a str>,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Request<'a> {
        Request::Resource(Attributes { verb, group, resource, sub, namespace, name })
    }

    fn url(verb: &'static str, path: &'static str) -> Request<'static> {
        Request::NonResource { verb, path }
    }

    fn user(name: &str, groups: &[&str]) -> User {
        User { name: name.into(), groups: strings(groups) }
    }

    fn cluster_role(name: &str, rules: Value) -> Value {
        json!({"kind": "ClusterRole", "metadata": {"name": name}, "rules": rules})
    }

    fn role(ns: &str, name: &str, rules: Value) -> Value {
        json!({"kind": "Role", "metadata": {"name": name, "namespace": ns}, "rules": rules})
    }

    fn rb(ns: &str, name: &str, kind: &str, role: &str, subjects: Value) -> Value {
        json!({"kind": "RoleBinding", "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": kind, "name": role}, "subjects": subjects})
    }

    fn crb(name: &str, role: &str, subjects: Value) -> Value {
        json!({"kind": "ClusterRoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role}, "subjects": subjects})
    }

    fn user_subject(name: &str) -> Value {
        json!([{"kind": "User", "apiGroup": RBAC_GROUP, "name": name}])
    }

    fn rule(v: Value) -> PolicyRule {
        PolicyRule::from_value(&v).unwrap()
    }

    /// Every matching rule of upstream's `RuleAllows`, one row per case.
    #[test]
    fn rules_match_requests_as_upstream() {
        let d = Some("default");
        let rows: Vec<(Value, Request, bool, &str)> = vec![
            (
                json!({"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]}),
                res("delete", "", "pods", None, d, Some("p")),
                true,
                "verb *",
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}),
                res("list", "", "pods", None, d, None),
                false,
                "other verb",
            ),
            (
                json!({"verbs": ["GET"], "apiGroups": [""], "resources": ["pods"]}),
                res("get", "", "pods", None, d, Some("p")),
                false,
                "verbs are case-sensitive",
            ),
            (
                json!({"verbs": ["get"], "apiGroups": ["*"], "resources": ["deployments"]}),
                res("get", "apps", "deployments", None, d, Some("x")),
                true,
                "group *",
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["deployments"]}),
                res("get", "apps", "deployments", None, d, Some("x")),
                false,
                "core is not apps",
            ),
            (
                json!({"verbs": ["get"], "apiGroups": ["apps"], "resources": ["pods"]}),
                res("get", "", "pods", None, d, Some("x")),
                false,
                "apps is not core",
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["*"]}),
                res("get", "", "pods", Some("log"), d, Some("p")),
                true,
                "resource * covers subresources",
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}),
                res("get", "", "pods", Some("log"), d, Some("p")),
                true,
                "exact subresource",
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}),
                res("get", "", "pods", None, d, Some("p")),
                false,
                "subresource rule is not the resource",
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}),
                res("get", "", "pods", Some("log"), d, Some("p")),
                false,
                "resource rule is not its subresources",
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}),
                res("get", "", "pods", Some("exec"), d, Some("p")),
                false,
                "other subresource",
            ),
            (
                json!({"verbs": ["update"], "apiGroups": ["apps"], "resources": ["*/scale"]}),
                res("update", "apps", "deployments", Some("scale"), d, Some("w")),
                true,
                "*/scale",
            ),
            (
                json!({"verbs": ["update"], "apiGroups": ["apps"], "resources": ["*/scale"]}),
                res("update", "apps", "deployments", None, d, Some("w")),
                false,
                "*/scale is not the resource",
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["*/scale"]}),
                res("get", "", "pods", Some("log"), d, Some("p")),
                false,
                "*/scale is not log",
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/*"]}),
                res("get", "", "pods", Some("log"), d, Some("p")),
                false,
                "pods/* is no wildcard upstream",
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["web"]}),
                res("get", "", "configmaps", None, d, Some("web")),
                true,
                "named get",
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["web"]}),
                res("get", "", "configmaps", None, d, Some("db")),
                false,
                "other name",
            ),
            (
                json!({"verbs": ["list"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["web"]}),
                res("list", "", "configmaps", None, d, None),
                false,
                "list has no name",
            ),
            (
                json!({"verbs": ["watch"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["web"]}),
                res("watch", "", "configmaps", None, d, None),
                false,
                "watch of all has no name",
            ),
            (
                json!({"verbs": ["create"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["web"]}),
                res("create", "", "configmaps", None, d, None),
                false,
                "create has no name",
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": []}),
                res("get", "", "configmaps", None, d, Some("any")),
                true,
                "empty names restrict nothing",
            ),
            (json!({"verbs": ["get"], "nonResourceURLs": ["/healthz"]}), url("get", "/healthz"), true, "exact URL"),
            (
                json!({"verbs": ["get"], "nonResourceURLs": ["/healthz"]}),
                url("get", "/healthz/etcd"),
                false,
                "exact URL is no prefix",
            ),
            (
                json!({"verbs": ["get"], "nonResourceURLs": ["/healthz"]}),
                url("post", "/healthz"),
                false,
                "URL with other verb",
            ),
            (
                json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*"]}),
                url("get", "/apis/apps/v1"),
                true,
                "URL prefix",
            ),
            (
                json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*"]}),
                url("get", "/apis"),
                false,
                "prefix needs the slash",
            ),
            (
                json!({"verbs": ["get"], "nonResourceURLs": ["/logs*"]}),
                url("get", "/logsfoo"),
                true,
                "prefix without slash",
            ),
            (json!({"verbs": ["*"], "nonResourceURLs": ["*"]}), url("delete", "/anything"), true, "URL *"),
            (
                json!({"verbs": ["*"], "nonResourceURLs": ["*"]}),
                res("get", "", "pods", None, d, Some("p")),
                false,
                "URL rule never allows a resource",
            ),
            (
                json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
                url("get", "/healthz"),
                false,
                "resource rule never allows a URL",
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["nodes"]}),
                res("get", "", "nodes", None, None, Some("n1")),
                true,
                "cluster-scoped",
            ),
        ];
        for (r, req, want, why) in rows {
            assert_eq!(rule(r).allows(&req), want, "{why}");
        }
    }

    #[test]
    fn rules_read_and_write_as_stored() {
        let v = json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": null});
        let r = PolicyRule::from_value(&v).unwrap();
        assert_eq!(r, PolicyRule::resource(&["get"], &[""], &["pods"]));
        assert_eq!(r.to_value(), json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}));
        assert_eq!(PolicyRule::from_value(&r.to_value()).unwrap(), r);
        assert_eq!(PolicyRule::from_value(&json!({"verbs": "get"})), Err(RbacError::NotStringList { field: "verbs" }));
        assert_eq!(
            PolicyRule::from_value(&json!({"verbs": ["get", 1]})),
            Err(RbacError::NotStringList { field: "verbs" })
        );
        assert_eq!(PolicyRule::from_value(&json!("get")), Err(RbacError::RuleNotObject));
        assert_eq!(rules_of(&json!({"rules": {}})), Err(RbacError::RulesNotList));
        assert_eq!(rules_of(&json!({"rules": null})), Ok(vec![]));
        assert_eq!(rules_of(&json!({"rules": [v]})).unwrap().len(), 1);
        // The snapshot's reader skips what it cannot read; the write check refuses it.
        let mixed =
            json!({"rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}, {"verbs": "get"}, 3]});
        assert_eq!(readable_rules(&mixed), vec![PolicyRule::resource(&["get"], &[""], &["pods"])]);
        assert_eq!(readable_rules(&json!({"rules": {}})), vec![]);
        assert!(rules_of(&mixed).is_err());
        let e = RbacError::NotStringList { field: "apiGroups" }.to_string();
        assert!(e.contains("apiGroups: [\"...\"]"), "{e}");
    }

    fn pods_reader() -> Value {
        json!([{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}])
    }

    #[test]
    fn subjects_users_groups_and_service_accounts() {
        let snap = RbacSnapshot::build(
            &[],
            &[cluster_role("reader", pods_reader())],
            &[
                rb("web", "by-user", "ClusterRole", "reader", user_subject("alice")),
                rb("web", "by-group", "ClusterRole", "reader", json!([{"kind": "Group", "name": "devs"}])),
                rb("web", "sa-local", "ClusterRole", "reader", json!([{"kind": "ServiceAccount", "name": "api"}])),
                rb(
                    "web",
                    "sa-other",
                    "ClusterRole",
                    "reader",
                    json!([{"kind": "ServiceAccount", "name": "ci", "namespace": "tools"}]),
                ),
                rb("web", "unknown-kind", "ClusterRole", "reader", json!([{"kind": "Robot", "name": "bob"}])),
            ],
            &[crb("sa-no-ns", "reader", json!([{"kind": "ServiceAccount", "name": "api"}]))],
        );
        let list_web = res("list", "", "pods", None, Some("web"), None);
        let list_db = res("list", "", "pods", None, Some("db"), None);
        let cases = [
            (user("alice", &[]), true),
            (user("bob", &[]), false),
            (user("carol", &["devs"]), true),
            (user("carol", &["ops"]), false),
            (user("system:serviceaccount:web:api", &["system:serviceaccounts"]), true),
            (user("system:serviceaccount:db:api", &["system:serviceaccounts"]), false),
            (user("system:serviceaccount:tools:ci", &[]), true),
            (user("system:serviceaccount:web:ci", &[]), false),
        ];
        for (u, want) in cases {
            assert_eq!(snap.authorize(&u, &list_web).allowed, want, "{u:?}");
            // A ServiceAccount subject without namespace in a ClusterRoleBinding matches no one.
            assert!(!snap.authorize(&u, &list_db).allowed, "{u:?} in db");
        }
        let d = snap.authorize(&user("system:serviceaccount:web:api", &[]), &list_web);
        assert_eq!(
            d.reason,
            "RBAC: allowed by RoleBinding \"sa-local/web\" of ClusterRole \"reader\" to ServiceAccount \"api/web\""
        );
        let d = snap.authorize(&user("system:serviceaccount:tools:ci", &[]), &list_web);
        assert_eq!(
            d.reason,
            "RBAC: allowed by RoleBinding \"sa-other/web\" of ClusterRole \"reader\" to ServiceAccount \"ci/tools\""
        );
    }

    #[test]
    fn roles_and_cluster_roles_in_role_bindings() {
        let snap = RbacSnapshot::build(
            &[
                role(
                    "web",
                    "cm-writer",
                    json!([{"verbs": ["create"], "apiGroups": [""], "resources": ["configmaps"]}]),
                ),
                role("db", "db-only", json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]}])),
            ],
            &[cluster_role("reader", pods_reader())],
            &[
                rb("web", "local", "Role", "cm-writer", user_subject("alice")),
                rb("web", "cluster", "ClusterRole", "reader", user_subject("alice")),
                // A Role is looked up in the binding's own namespace: this one is not there.
                rb("web", "elsewhere", "Role", "db-only", user_subject("alice")),
                rb("web", "missing-role", "Role", "nope", user_subject("bob")),
                rb("web", "missing-cluster-role", "ClusterRole", "nope", user_subject("bob")),
            ],
            &[json!({"metadata": {"name": "bad-kind"}, "roleRef": {"kind": "Role", "name": "cm-writer"},
                "subjects": user_subject("bob")})],
        );
        let alice = user("alice", &[]);
        let ok = |u: &User, r: Request| snap.authorize(u, &r).allowed;
        assert!(ok(&alice, res("create", "", "configmaps", None, Some("web"), None)));
        assert!(!ok(&alice, res("create", "", "configmaps", None, Some("db"), None)));
        assert!(ok(&alice, res("get", "", "pods", None, Some("web"), Some("p"))));
        // A ClusterRole bound by a RoleBinding applies only in the binding's namespace.
        assert!(!ok(&alice, res("get", "", "pods", None, Some("db"), Some("p"))));
        assert!(!ok(&alice, res("list", "", "pods", None, None, None)));
        assert!(!ok(&alice, res("get", "", "secrets", None, Some("web"), Some("s"))));
        assert!(!ok(&alice, res("get", "", "secrets", None, Some("db"), Some("s"))));
        let bob = user("bob", &[]);
        for ns in [Some("web"), None] {
            assert!(!ok(&bob, res("create", "", "configmaps", None, ns, None)));
            assert!(!ok(&bob, res("list", "", "pods", None, ns, None)));
        }
        let d = snap.authorize(&alice, &res("create", "", "configmaps", None, Some("web"), None));
        assert_eq!(
            d,
            Decision {
                allowed: true,
                reason: "RBAC: allowed by RoleBinding \"local/web\" of Role \"cm-writer\" to User \"alice\"".into()
            }
        );
        assert_eq!(snap.authorize(&bob, &url("get", "/healthz")), Decision { allowed: false, reason: String::new() });
        assert_eq!(snap.role_rules("Role", "cm-writer", Some("web")).map(<[_]>::len), Some(1));
        assert!(snap.role_rules("Role", "cm-writer", Some("db")).is_none());
        assert!(snap.role_rules("Role", "cm-writer", None).is_none());
        assert!(snap.role_rules("Role", "nope", Some("web")).is_none());
        assert_eq!(snap.role_rules("ClusterRole", "reader", None).map(<[_]>::len), Some(1));
        assert_eq!(snap.role_rules("ClusterRole", "reader", Some("web")).map(<[_]>::len), Some(1));
        assert!(snap.role_rules("Group", "reader", Some("web")).is_none());
    }

    #[test]
    fn cluster_role_bindings_apply_everywhere_and_role_bindings_not_to_urls() {
        let all = json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}, {"verbs": ["*"], "nonResourceURLs": ["*"]}]);
        let snap = RbacSnapshot::build(
            &[],
            &[cluster_role("everything", all)],
            &[rb("web", "ns-admin", "ClusterRole", "everything", user_subject("alice"))],
            &[crb("root", "everything", json!([{"kind": "Group", "name": "system:masters"}]))],
        );
        let root = user("admin", &["system:masters", "system:authenticated"]);
        for r in [
            res("delete", "", "nodes", None, None, Some("n1")),
            res("list", "apps", "deployments", None, Some("db"), None),
            res("create", "", "pods", Some("exec"), Some("web"), Some("p")),
            url("get", "/metrics"),
        ] {
            let d = snap.authorize(&root, &r);
            assert!(d.allowed);
            assert_eq!(
                d.reason,
                "RBAC: allowed by ClusterRoleBinding \"root\" of ClusterRole \"everything\" to Group \"system:masters\""
            );
        }
        let alice = user("alice", &[]);
        assert!(snap.authorize(&alice, &res("delete", "", "secrets", None, Some("web"), Some("s"))).allowed);
        assert!(!snap.authorize(&alice, &url("get", "/metrics")).allowed);
        assert!(!snap.authorize(&alice, &res("get", "", "nodes", None, None, Some("n1"))).allowed);
        // An empty namespace is the cluster scope.
        assert!(!snap.authorize(&alice, &res("list", "", "pods", None, Some(""), None)).allowed);
    }

    #[test]
    fn first_matching_subject_names_the_grant() {
        let snap = RbacSnapshot::build(
            &[],
            &[cluster_role("reader", pods_reader())],
            &[],
            &[crb("readers", "reader", json!([{"kind": "Group", "name": "devs"}, {"kind": "User", "name": "alice"}]))],
        );
        let d = snap.authorize(&user("alice", &["devs"]), &res("get", "", "pods", None, Some("x"), Some("p")));
        assert!(d.reason.ends_with("to Group \"devs\""), "{}", d.reason);
        let d = snap.authorize(&user("alice", &[]), &res("get", "", "pods", None, Some("x"), Some("p")));
        assert!(d.reason.ends_with("to User \"alice\""), "{}", d.reason);
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }

    fn labelled(name: &str, labels: Value, rules: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "rules": rules})
    }

    #[test]
    fn aggregation_is_resolved_at_build() {
        let top = json!({"metadata": {"name": "top", "labels": {}},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-top": "true"}}]},
            "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["own"]}]});
        let middle = json!({"metadata": {"name": "middle", "labels": {"to-top": "true"}},
            "aggregationRule": {"clusterRoleSelectors": [
                {"matchExpressions": [{"key": "to-middle", "operator": "Exists"}]}]}});
        let roles = [
            top,
            middle,
            labelled(
                "b-leaf",
                json!({"to-top": "true"}),
                json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["b"]}]),
            ),
            labelled(
                "a-leaf",
                json!({"to-top": "true"}),
                json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["a"]},
                {"verbs": ["get"], "apiGroups": [""], "resources": ["b"]}]),
            ),
            labelled(
                "deep",
                json!({"to-middle": "x"}),
                json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["deep"]}]),
            ),
            labelled(
                "other",
                json!({"to-top": "false"}),
                json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["other"]}]),
            ),
        ];
        let snap = RbacSnapshot::build(
            &[],
            &roles,
            &[],
            &[crb("t", "top", user_subject("alice")), crb("m", "middle", user_subject("bob"))],
        );
        let get = |r: &'static str| res("get", "", r, None, Some("ns"), Some("x"));
        let alice = user("alice", &[]);
        for r in ["own", "a", "b", "deep"] {
            assert!(snap.authorize(&alice, &get(r)).allowed, "{r}");
        }
        assert!(!snap.authorize(&alice, &get("other")).allowed);
        let bob = user("bob", &[]);
        assert!(snap.authorize(&bob, &get("deep")).allowed);
        assert!(!snap.authorize(&bob, &get("a")).allowed);
        // What the controller writes back: matched roles in name order, no duplicates, not
        // the role's own rules.
        let rules = snap.aggregated_rules("top").unwrap();
        let resources: Vec<&str> = rules.iter().map(|r| r["resources"][0].as_str().unwrap()).collect();
        assert_eq!(resources, ["a", "b", "deep"]);
        assert!(snap.aggregated_rules("a-leaf").is_none());
        assert!(snap.aggregated_rules("missing").is_none());
        // Once written back, nothing changes.
        let mut written = roles.to_vec();
        written[0]["rules"] = json!(rules);
        let again = RbacSnapshot::build(&[], &written, &[], &[]);
        assert_eq!(again.aggregated_rules("top").unwrap(), rules);
    }

    #[test]
    fn aggregation_excludes_itself_and_survives_cycles() {
        let sel = |l: &str| json!({"clusterRoleSelectors": [{"matchLabels": {l: "true"}}]});
        let roles = [
            json!({"metadata": {"name": "x", "labels": {"y": "true"}}, "aggregationRule": sel("x")}),
            json!({"metadata": {"name": "y", "labels": {"x": "true"}}, "aggregationRule": sel("y"),
                "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["stale"]}]}),
            labelled(
                "leaf",
                json!({"x": "true"}),
                json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["leaf"]}]),
            ),
            json!({"metadata": {"name": "self", "labels": {"self": "true"}}, "aggregationRule": sel("self"),
                "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["mine"]}]}),
        ];
        let snap = RbacSnapshot::build(&[], &roles, &[], &[]);
        let names =
            |v: Vec<Value>| v.iter().map(|r| r["resources"][0].as_str().unwrap().to_string()).collect::<Vec<_>>();
        assert_eq!(names(snap.aggregated_rules("x").unwrap()), ["leaf"]);
        // y reaches leaf through x; x does not get y's own (stale) rule: the controller
        // overwrites the rules of an aggregated role.
        assert_eq!(names(snap.aggregated_rules("y").unwrap()), ["leaf"]);
        assert_eq!(snap.aggregated_rules("self").unwrap(), Vec::<Value>::new());
    }

    #[test]
    fn rules_for_a_user_in_a_namespace() {
        let snap = RbacSnapshot::build(
            &[role("web", "cm", json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"]}]))],
            &[cluster_role("reader", pods_reader())],
            &[
                rb("web", "cm", "Role", "cm", user_subject("alice")),
                rb("web", "r", "ClusterRole", "reader", user_subject("alice")),
            ],
            &[crb("everyone", "reader", json!([{"kind": "Group", "name": "system:authenticated"}]))],
        );
        let alice = user("alice", &["system:authenticated"]);
        let pods = PolicyRule::resource(&["get", "list"], &[""], &["pods"]);
        let cms = PolicyRule::resource(&["get"], &[""], &["configmaps"]);
        assert_eq!(snap.rules_for(&alice, Some("web")), vec![pods.clone(), cms]);
        assert_eq!(snap.rules_for(&alice, Some("db")), vec![pods.clone()]);
        assert_eq!(snap.rules_for(&alice, None), vec![pods]);
        assert!(snap.rules_for(&user("bob", &[]), Some("web")).is_empty());
    }

    #[test]
    fn escalation_covers_atomic_permissions() {
        let owner = vec![
            PolicyRule::resource(&["get", "list"], &[""], &["pods", "pods/log"]),
            PolicyRule::resource(&["update"], &["apps"], &["*/scale"]),
            PolicyRule { resource_names: strings(&["web"]), ..PolicyRule::resource(&["get"], &[""], &["configmaps"]) },
            PolicyRule::urls(&["get"], &["/healthz", "/apis/*"]),
        ];
        assert_eq!(covers(&owner, &[PolicyRule::resource(&["get"], &[""], &["pods"])]), Ok(()));
        assert_eq!(covers(&owner, &[PolicyRule::resource(&["list", "get"], &[""], &["pods/log", "pods"])]), Ok(()));
        assert_eq!(covers(&owner, &[PolicyRule::resource(&["update"], &["apps"], &["deployments/scale"])]), Ok(()));
        assert_eq!(covers(&owner, &[PolicyRule::urls(&["get"], &["/apis/apps/v1", "/healthz"])]), Ok(()));
        let named =
            PolicyRule { resource_names: strings(&["web"]), ..PolicyRule::resource(&["get"], &[""], &["configmaps"]) };
        assert_eq!(covers(&owner, std::slice::from_ref(&named)), Ok(()));
        // Uncovered: the atomic permissions come back.
        let missing =
            covers(&owner, &[PolicyRule::resource(&["get", "delete"], &["", "apps"], &["pods"])]).unwrap_err();
        assert_eq!(
            missing,
            vec![
                PolicyRule::resource(&["delete"], &[""], &["pods"]),
                PolicyRule::resource(&["get"], &["apps"], &["pods"]),
                PolicyRule::resource(&["delete"], &["apps"], &["pods"]),
            ]
        );
        // A named owner rule does not cover all names.
        let all_cms = PolicyRule::resource(&["get"], &[""], &["configmaps"]);
        assert_eq!(covers(&owner, std::slice::from_ref(&all_cms)), Err(vec![all_cms]));
        assert!(covers(&owner, &[PolicyRule::resource(&["update"], &["apps"], &["deployments"])]).is_err());
        assert!(covers(&owner, &[PolicyRule::urls(&["get"], &["/metrics"])]).is_err());
        assert!(covers(&owner, &[PolicyRule::urls(&["post"], &["/healthz"])]).is_err());
        // Resource rules never cover URLs.
        let only_resources = [PolicyRule::resource(&["*"], &["*"], &["*"])];
        assert!(covers(&only_resources, &[PolicyRule::urls(&["get"], &["/healthz"])]).is_err());
        // A wildcard owner covers everything, including wildcards and names.
        let root = [PolicyRule::resource(&["*"], &["*"], &["*"]), PolicyRule::urls(&["*"], &["*"])];
        let everything: Vec<PolicyRule> = bootstrap_objects().iter().flat_map(|o| rules_of(o).unwrap()).collect();
        assert_eq!(covers(&root, &everything), Ok(()));
        assert_eq!(covers(&root, &[named, PolicyRule::urls(&["*"], &["*"])]), Ok(()));
        assert_eq!(covers(&owner, &[]), Ok(()));
        assert!(covers(&[], &[PolicyRule::resource(&["get"], &[""], &["pods"])]).is_err());
    }

    #[test]
    fn escalation_message_as_upstream() {
        let missing = covers(
            &[],
            &[
                PolicyRule::resource(&["create", "delete"], &["apps"], &["deployments"]),
                PolicyRule::urls(&["get"], &["/metrics"]),
                PolicyRule { resource_names: strings(&["x"]), ..PolicyRule::resource(&["get"], &[""], &["secrets"]) },
            ],
        )
        .unwrap_err();
        let msg = escalation_message(&user("alice", &["dev", "system:authenticated"]), &missing);
        assert_eq!(
            msg,
            "user \"alice\" (groups=[\"dev\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n\
             {APIGroups:[\"\"], Resources:[\"secrets\"], ResourceNames:[\"x\"], Verbs:[\"get\"]}\n\
             {APIGroups:[\"apps\"], Resources:[\"deployments\"], Verbs:[\"create\" \"delete\"]}\n\
             {NonResourceURLs:[\"/metrics\"], Verbs:[\"get\"]}"
        );
        assert_eq!(
            PolicyRule::resource(&["create"], &["apps"], &["deployments"]).to_string(),
            "{APIGroups:[\"apps\"], Resources:[\"deployments\"], Verbs:[\"create\"]}"
        );
    }

    #[test]
    fn rules_review_splits_resource_and_url_rules() {
        let named =
            PolicyRule { resource_names: strings(&["web"]), ..PolicyRule::resource(&["get"], &[""], &["configmaps"]) };
        let both = PolicyRule { non_resource_urls: strings(&["/x"]), ..PolicyRule::resource(&["get"], &["*"], &["*"]) };
        let (resource, non_resource) =
            rules_review_status(&[named, PolicyRule::urls(&["get"], &["/healthz", "/version"]), both]);
        assert_eq!(
            resource,
            vec![
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["web"]}),
                json!({"verbs": ["get"], "apiGroups": ["*"], "resources": ["*"]}),
            ]
        );
        assert_eq!(
            non_resource,
            vec![
                json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/version"]}),
                json!({"verbs": ["get"], "nonResourceURLs": ["/x"]}),
            ]
        );
    }

    fn bootstrap_snapshot(extra_bindings: &[Value]) -> RbacSnapshot {
        let objects = bootstrap_objects();
        let (roles, bindings): (Vec<Value>, Vec<Value>) = objects.into_iter().partition(|o| o["kind"] == "ClusterRole");
        RbacSnapshot::build(&[], &roles, extra_bindings, &bindings)
    }

    #[test]
    fn bootstrap_objects_are_labelled_and_named_as_upstream() {
        let objects = bootstrap_objects();
        for o in &objects {
            assert_eq!(o["apiVersion"], RBAC_API_VERSION);
            assert_eq!(o["metadata"]["labels"][BOOTSTRAP_LABEL], "rbac-defaults", "{o}");
            assert_eq!(o["metadata"]["annotations"][AUTOUPDATE_ANNOTATION], "true", "{o}");
            assert!(rules_of(o).is_ok());
        }
        let names: Vec<String> = objects
            .iter()
            .map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()))
            .collect();
        for want in [
            "ClusterRole/cluster-admin",
            "ClusterRole/admin",
            "ClusterRole/edit",
            "ClusterRole/view",
            "ClusterRole/system:aggregate-to-admin",
            "ClusterRole/system:aggregate-to-edit",
            "ClusterRole/system:aggregate-to-view",
            "ClusterRole/system:aggregated-metrics-reader",
            "ClusterRole/system:basic-user",
            "ClusterRole/system:discovery",
            "ClusterRole/system:public-info-viewer",
            "ClusterRole/system:service-account-issuer-discovery",
            "ClusterRoleBinding/cluster-admin",
            "ClusterRoleBinding/system:basic-user",
            "ClusterRoleBinding/system:discovery",
            "ClusterRoleBinding/system:public-info-viewer",
            "ClusterRoleBinding/system:service-account-issuer-discovery",
        ] {
            assert!(names.contains(&want.to_string()), "{want}");
        }
        assert_eq!(names.len(), 17);
        let snap = bootstrap_snapshot(&[]);
        for (name, n) in [("admin", 28), ("edit", 26), ("view", 12)] {
            assert_eq!(snap.aggregated_rules(name).map(|r| r.len()), Some(n), "{name}");
        }
    }

    #[test]
    fn bootstrap_view_edit_admin_in_a_namespace() {
        let bind = |name: &str, role: &str, who: &str| rb("team", name, "ClusterRole", role, user_subject(who));
        let snap = bootstrap_snapshot(&[
            bind("v", "view", "viewer"),
            bind("e", "edit", "editor"),
            bind("a", "admin", "owner"),
        ]);
        let t = Some("team");
        let ok = |who: &str, r: Request| snap.authorize(&user(who, &["system:authenticated"]), &r).allowed;
        // view: reads, but not secrets, and writes nothing.
        assert!(ok("viewer", res("list", "", "pods", None, t, None)));
        assert!(ok("viewer", res("get", "", "pods", Some("log"), t, Some("p"))));
        assert!(ok("viewer", res("watch", "apps", "deployments", None, t, None)));
        assert!(ok("viewer", res("list", "discovery.k8s.io", "endpointslices", None, t, None)));
        assert!(ok("viewer", res("get", "", "namespaces", None, t, Some("team"))));
        assert!(!ok("viewer", res("get", "", "secrets", None, t, Some("s"))));
        assert!(!ok("viewer", res("list", "", "secrets", None, t, None)));
        assert!(!ok("viewer", res("create", "", "pods", None, t, None)));
        assert!(!ok("viewer", res("create", "", "pods", Some("exec"), t, Some("p"))));
        // `kubectl top pods`, through system:aggregated-metrics-reader.
        assert!(ok("viewer", res("list", "metrics.k8s.io", "pods", None, t, None)));
        assert!(ok("viewer", res("get", "metrics.k8s.io", "pods", None, t, Some("p"))));
        assert!(!ok("viewer", res("list", "metrics.k8s.io", "pods", None, Some("other"), None)));
        assert!(
            !ok("viewer", res("list", "metrics.k8s.io", "nodes", None, None, None)),
            "nodes need a cluster binding"
        );
        assert!(ok("owner", res("list", "metrics.k8s.io", "pods", None, t, None)));
        // edit: view plus writes and secrets, but not roles or bindings.
        assert!(ok("editor", res("create", "apps", "deployments", None, t, None)));
        assert!(ok("editor", res("patch", "apps", "deployments", Some("scale"), t, Some("web"))));
        assert!(ok("editor", res("list", "", "pods", None, t, None)));
        assert!(ok("editor", res("get", "", "secrets", None, t, Some("s"))));
        assert!(ok("editor", res("create", "", "pods", Some("exec"), t, Some("p"))));
        assert!(ok("editor", res("create", "batch", "jobs", None, t, None)));
        assert!(ok("editor", res("update", "coordination.k8s.io", "leases", None, t, Some("l"))));
        assert!(ok("editor", res("create", "policy", "poddisruptionbudgets", None, t, None)));
        assert!(ok("editor", res("create", "networking.k8s.io", "networkpolicies", None, t, None)));
        assert!(!ok("editor", res("create", RBAC_GROUP, "roles", None, t, None)));
        assert!(!ok("editor", res("create", RBAC_GROUP, "rolebindings", None, t, None)));
        assert!(!ok("editor", res("update", "", "pods", Some("status"), t, Some("p"))));
        assert!(!ok("editor", res("create", "", "resourcequotas", None, t, None)));
        // admin: edit plus roles and bindings, in its namespace only.
        assert!(ok("owner", res("create", RBAC_GROUP, "roles", None, t, None)));
        assert!(ok("owner", res("create", RBAC_GROUP, "rolebindings", None, t, None)));
        assert!(ok("owner", res("create", "apps", "deployments", None, t, None)));
        assert!(ok("owner", res("list", "", "pods", None, t, None)));
        assert!(ok("owner", res("create", "authorization.k8s.io", "localsubjectaccessreviews", None, t, None)));
        assert!(!ok("owner", res("create", RBAC_GROUP, "roles", None, Some("other"), None)));
        assert!(!ok("owner", res("create", RBAC_GROUP, "clusterroles", None, None, None)));
        assert!(!ok("owner", res("list", "", "nodes", None, None, None)));
        // Escalation with the real roles: admin holds edit, edit holds view, not the reverse.
        let rules = |r: &str| snap.role_rules("ClusterRole", r, None).unwrap().to_vec();
        assert_eq!(covers(&rules("admin"), &rules("edit")), Ok(()));
        assert_eq!(covers(&rules("edit"), &rules("view")), Ok(()));
        assert!(covers(&rules("view"), &rules("edit")).is_err());
        let missing = covers(&rules("edit"), &rules("admin")).unwrap_err();
        assert!(missing.iter().all(|r| r.api_groups[0] == RBAC_GROUP || r.api_groups[0] == "authorization.k8s.io"));
    }

    #[test]
    fn bootstrap_authenticated_unauthenticated_and_masters() {
        let snap = bootstrap_snapshot(&[]);
        let alice = user("alice", &["system:authenticated"]);
        let anonymous = user("system:anonymous", &["system:unauthenticated"]);
        let sa = user(
            "system:serviceaccount:web:api",
            &["system:serviceaccounts", "system:serviceaccounts:web", "system:authenticated"],
        );
        let ok = |u: &User, r: Request| snap.authorize(u, &r).allowed;
        for path in [
            "/version",
            "/version/",
            "/healthz",
            "/livez",
            "/readyz",
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps/v1",
            "/openapi/v2",
        ] {
            assert!(ok(&alice, url("get", path)), "{path}");
        }
        assert!(!ok(&alice, url("post", "/version")));
        assert!(!ok(&alice, url("get", "/metrics")));
        assert!(!ok(&alice, url("get", "/openid/v1/jwks")));
        for (group, resource) in [
            ("authorization.k8s.io", "selfsubjectaccessreviews"),
            ("authorization.k8s.io", "selfsubjectrulesreviews"),
            ("authentication.k8s.io", "selfsubjectreviews"),
        ] {
            assert!(ok(&alice, res("create", group, resource, None, None, None)), "{resource}");
            assert!(!ok(&anonymous, res("create", group, resource, None, None, None)), "{resource}");
        }
        assert!(!ok(&alice, res("create", "authorization.k8s.io", "subjectaccessreviews", None, None, None)));
        assert!(!ok(&alice, res("list", "", "pods", None, Some("default"), None)));
        let d = snap.authorize(&alice, &url("get", "/version"));
        assert_eq!(
            d.reason,
            "RBAC: allowed by ClusterRoleBinding \"system:discovery\" of ClusterRole \"system:discovery\" to Group \"system:authenticated\""
        );
        for path in ["/healthz", "/livez", "/readyz", "/version", "/version/"] {
            assert!(ok(&anonymous, url("get", path)), "{path}");
        }
        for path in ["/api", "/apis", "/apis/apps/v1", "/openapi/v2", "/healthz/etcd", "/metrics", "/openid/v1/jwks"] {
            assert!(!ok(&anonymous, url("get", path)), "{path}");
        }
        assert!(!ok(&anonymous, res("list", "", "namespaces", None, None, None)));
        assert!(ok(&sa, url("get", "/openid/v1/jwks")));
        assert!(ok(&sa, url("get", "/.well-known/openid-configuration")));
        assert!(!ok(&sa, res("list", "", "secrets", None, Some("web"), None)));
        let admin = user("admin", &["system:masters", "system:authenticated"]);
        assert!(ok(&admin, res("delete", "", "nodes", None, None, Some("n"))));
        assert!(ok(&admin, url("get", "/metrics")));
        let d = snap.authorize(&admin, &res("escalate", RBAC_GROUP, "clusterroles", None, None, Some("x")));
        assert_eq!(
            d.reason,
            "RBAC: allowed by ClusterRoleBinding \"cluster-admin\" of ClusterRole \"cluster-admin\" to Group \"system:masters\""
        );
    }

    fn find(name: &str) -> Value {
        bootstrap_objects().into_iter().find(|o| o["metadata"]["name"] == name && o["kind"] == "ClusterRole").unwrap()
    }

    fn find_binding(name: &str) -> Value {
        bootstrap_objects()
            .into_iter()
            .find(|o| o["metadata"]["name"] == name && o["kind"] == "ClusterRoleBinding")
            .unwrap()
    }

    #[test]
    fn reconcile_creates_keeps_and_adds() {
        let wanted = find("system:basic-user");
        assert_eq!(reconcile_bootstrap(None, &wanted), Some(wanted.clone()));
        let mut stored = wanted.clone();
        stored["metadata"]["resourceVersion"] = json!("7");
        assert_eq!(reconcile_bootstrap(Some(&stored), &wanted), None);
        // An older server's role: one rule short, plus a rule the operator added.
        let mut old = stored.clone();
        old["rules"] = json!([
            {"verbs": ["create"], "apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]},
            {"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"]},
        ]);
        old["metadata"]["labels"] = json!({"team": "platform"});
        let new = reconcile_bootstrap(Some(&old), &wanted).unwrap();
        assert_eq!(new["metadata"]["resourceVersion"], "7");
        assert_eq!(new["metadata"]["labels"], json!({"team": "platform", BOOTSTRAP_LABEL: "rbac-defaults"}));
        let rules = rules_of(&new).unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[1], PolicyRule::resource(&["get"], &[""], &["configmaps"]));
        assert_eq!(rules[2], PolicyRule::resource(&["create"], &["authentication.k8s.io"], &["selfsubjectreviews"]));
        assert_eq!(reconcile_bootstrap(Some(&new), &wanted), None);
        // A wider existing rule already covers the wanted ones.
        let mut wide = stored.clone();
        wide["rules"] = json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]);
        assert_eq!(reconcile_bootstrap(Some(&wide), &wanted), None);
        // An operator's value for a default annotation or label is kept.
        let mut relabelled = stored.clone();
        relabelled["metadata"]["labels"][BOOTSTRAP_LABEL] = json!("mine");
        assert_eq!(reconcile_bootstrap(Some(&relabelled), &wanted), None);
    }

    #[test]
    fn reconcile_leaves_protected_objects_alone() {
        let wanted = find("system:discovery");
        let mut edited = wanted.clone();
        edited["rules"] = json!([{"verbs": ["get"], "nonResourceURLs": ["/version"]}]);
        edited["metadata"]["annotations"][AUTOUPDATE_ANNOTATION] = json!("false");
        assert_eq!(reconcile_bootstrap(Some(&edited), &wanted), None);
        let wanted = find_binding("system:discovery");
        let mut edited = wanted.clone();
        edited["subjects"] = json!([]);
        edited["roleRef"]["name"] = json!("view");
        edited["metadata"]["annotations"][AUTOUPDATE_ANNOTATION] = json!("false");
        assert_eq!(reconcile_bootstrap(Some(&edited), &wanted), None);
    }

    #[test]
    fn reconcile_aggregated_roles_keep_aggregation_and_rules() {
        let wanted = find("edit");
        let mut stored = wanted.clone();
        stored["rules"] = json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]);
        assert_eq!(reconcile_bootstrap(Some(&stored), &wanted), None);
        // An operator's extra selector is kept; a missing default one is added.
        let mut narrowed = stored.clone();
        narrowed["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {"example.com/edit": "true"}}]});
        let new = reconcile_bootstrap(Some(&narrowed), &wanted).unwrap();
        assert_eq!(
            new["aggregationRule"]["clusterRoleSelectors"],
            json!([{"matchLabels": {"example.com/edit": "true"}}, {"matchLabels": {TO_EDIT: "true"}}])
        );
        assert_eq!(new["rules"], stored["rules"]);
        let mut lost = stored.clone();
        lost.as_object_mut().unwrap().remove("aggregationRule");
        let new = reconcile_bootstrap(Some(&lost), &wanted).unwrap();
        assert_eq!(new["aggregationRule"], wanted["aggregationRule"]);
        // A default that does not aggregate loses an aggregation someone added.
        let wanted = find("cluster-admin");
        let mut aggregated = wanted.clone();
        aggregated["aggregationRule"] = json!({"clusterRoleSelectors": [{}]});
        assert_eq!(reconcile_bootstrap(Some(&aggregated), &wanted), Some(wanted.clone()));
    }

    #[test]
    fn reconcile_bindings_add_subjects_and_recreate_on_role_change() {
        let wanted = find_binding("system:public-info-viewer");
        assert_eq!(reconcile_bootstrap(Some(&wanted), &wanted), None);
        let mut stored = wanted.clone();
        stored["subjects"] = json!([
            {"kind": "Group", "name": "system:authenticated"},
            {"kind": "User", "name": "monitor", "apiGroup": RBAC_GROUP},
        ]);
        let new = reconcile_bootstrap(Some(&stored), &wanted).unwrap();
        let subjects: Vec<&str> =
            new["subjects"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(subjects, ["system:authenticated", "monitor", "system:unauthenticated"]);
        assert_eq!(reconcile_bootstrap(Some(&new), &wanted), None);
        let mut moved = wanted.clone();
        moved["roleRef"]["name"] = json!("view");
        assert_eq!(reconcile_bootstrap(Some(&moved), &wanted), Some(wanted.clone()));
    }

    #[test]
    fn a_thousand_bindings_build_and_answer() {
        let roles: Vec<Value> = (0..100)
            .map(|i| {
                role(
                    &format!("ns-{i}"),
                    "cm",
                    json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"]}]),
                )
            })
            .collect();
        let role_bindings: Vec<Value> = (0..1000)
            .map(|i| {
                let ns = format!("ns-{}", i % 100);
                if i % 2 == 0 {
                    rb(&ns, &format!("rb-{i}"), "Role", "cm", user_subject(&format!("user-{i}")))
                } else {
                    rb(&ns, &format!("rb-{i}"), "ClusterRole", "view",
                        json!([{"kind": "ServiceAccount", "name": format!("sa-{i}")}, {"kind": "Group", "name": format!("g-{i}")}]))
                }
            })
            .collect();
        let mut cluster_role_bindings: Vec<Value> =
            (0..500).map(|i| crb(&format!("crb-{i}"), "system:basic-user", user_subject(&format!("cu-{i}")))).collect();
        let (defaults, default_bindings): (Vec<Value>, Vec<Value>) =
            bootstrap_objects().into_iter().partition(|o| o["kind"] == "ClusterRole");
        cluster_role_bindings.extend(default_bindings);
        let snap = RbacSnapshot::build(&roles, &defaults, &role_bindings, &cluster_role_bindings);
        assert_eq!(snap.bindings.len(), 1000 + 500 + 5);
        let get_cm = |ns: &'static str| res("get", "", "configmaps", None, Some(ns), Some("c"));
        assert!(snap.authorize(&user("user-42", &[]), &get_cm("ns-42")).allowed);
        assert!(!snap.authorize(&user("user-42", &[]), &get_cm("ns-43")).allowed);
        let sa = user("system:serviceaccount:ns-43:sa-143", &[]);
        assert!(snap.authorize(&sa, &res("list", "", "pods", None, Some("ns-43"), None)).allowed);
        assert!(!snap.authorize(&sa, &res("list", "", "pods", None, Some("ns-44"), None)).allowed);
        let g = user("x", &["g-999"]);
        assert!(snap.authorize(&g, &res("list", "", "pods", None, Some("ns-99"), None)).allowed);
        let cu = user("cu-499", &[]);
        assert!(
            snap.authorize(&cu, &res("create", "authorization.k8s.io", "selfsubjectaccessreviews", None, None, None))
                .allowed
        );
        assert!(!snap.authorize(&user("nobody", &[]), &get_cm("ns-1")).allowed);
    }
}
