//! The object handlers: create, get, list, update, patch, delete and the `status`,
//! `scale`, `binding` and `eviction` subresources, with upstream semantics for
//! resourceVersion, generation, finalizers, graceful deletion and dry runs.
//!
//! Every write is one compare-and-swap transaction in the store; on a lost race an update
//! without an explicit resourceVersion (patches, subresources) is retried against the
//! fresh object, and one with a resourceVersion is answered 409 Conflict.

use serde_json::{Map, Value, json};

use super::Api;
use super::alloc;
use super::apply;
use super::disruption;
use super::http::Query;
use super::kinds;
use super::patch::{self, PatchType};
use super::raw_object;
use super::resources::{self, Resource};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, Cause};
use super::table;
use crate::store::{Expect, Op, Record, TxnResult};

/// The query key under which the API passes a node caller's name down to the writes, so
/// they check the objects as written (see `node_graph::node_write_refusal`). Clients cannot
/// send it: the router drops every query key that starts with `_`.
pub const NODE_QUERY_KEY: &str = "_node";

/// What the API reads of a namespace when creating in it.
#[derive(serde::Deserialize, Default)]
pub(super) struct NamespaceMeta {
    #[serde(default, rename = "deletionTimestamp")]
    deletion_timestamp: Option<String>,
    #[serde(default)]
    pub labels: serde_json::Map<String, Value>,
}

/// The object a request addresses.
#[derive(Debug, Clone)]
pub struct Target {
    pub res: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

impl Target {
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
    fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }
    fn key(&self) -> String {
        self.res.key(self.ns(), self.name())
    }
    fn not_found(&self) -> ApiError {
        ApiError::not_found(self.res.plural, self.res.group, self.name())
    }
}

/// RFC 3339 now, second precision, as upstream metadata timestamps.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn rfc3339_in(secs: i64) -> String {
    let t = jiff::Timestamp::now().as_second() + secs;
    jiff::Timestamp::from_second(t)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| now_rfc3339())
}

/// Whether `t` names node Leases, whose renewals may live in memory (`heartbeats`).
fn is_node_lease(t: &Target) -> bool {
    t.res.plural == "leases" && t.namespace.as_deref() == Some(super::heartbeats::NODE_LEASE_NAMESPACE)
}

/// A stored record as the object clients see (resourceVersion filled in).
pub fn to_object(rec: &Record) -> Result<Value, ApiError> {
    object_at(&rec.value, rec.mod_rev)
}

/// Parses stored bytes and stamps them with `rev`.
pub fn object_at(bytes: &[u8], rev: u64) -> Result<Value, ApiError> {
    let mut v: Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::internal(format!("stored object is unreadable: {e}")))?;
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), json!(rev.to_string()));
    }
    Ok(v)
}

/// An object as stored: without `metadata.resourceVersion` and `selfLink`, which are the
/// store's to answer. Serialized through views, so the object is not copied first.
fn encode(v: &Value) -> Result<Vec<u8>, ApiError> {
    use serde::ser::{Serialize, SerializeMap, Serializer};

    struct Without<'a>(&'a Map<String, Value>, &'a [&'a str]);
    impl Serialize for Without<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(None)?;
            for (k, v) in self.0.iter().filter(|(k, _)| !self.1.contains(&k.as_str())) {
                m.serialize_entry(k, v)?;
            }
            m.end()
        }
    }

    struct Stored<'a>(&'a Map<String, Value>);
    impl Serialize for Stored<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for (k, v) in self.0 {
                match v.as_object().filter(|_| k == "metadata") {
                    Some(meta) => m.serialize_entry(k, &Without(meta, &["resourceVersion", "selfLink"]))?,
                    None => m.serialize_entry(k, v)?,
                }
            }
            m.end()
        }
    }

    let out = match v.as_object() {
        Some(obj) => serde_json::to_vec(&Stored(obj)),
        None => serde_json::to_vec(v),
    };
    out.map_err(|e| ApiError::internal(e.to_string()))
}

/// What a create made: the object, and when it was stored, its JSON as the response
/// sends it (the stored bytes with the resourceVersion put in, so the object is not
/// serialized a second time).
pub struct Created {
    pub obj: Value,
    pub json: Option<Vec<u8>>,
    pub warnings: Vec<String>,
}

pub(super) fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes.iter().take(n).map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

fn meta_str<'a>(o: &'a Value, field: &str) -> &'a str {
    o.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or("")
}

fn has_finalizers(o: &Value) -> bool {
    o.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty())
}

/// Whether two versions of an object differ in nothing but their resourceVersion and the
/// times recorded in managedFields.
fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
            for entry in meta.get_mut("managedFields").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(e) = entry.as_object_mut() {
                    e.remove("time");
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}

/// A Job without `manualSelector: true` gets its selector from the server, as upstream's
/// job strategy does: the new uid as `batch.kubernetes.io/controller-uid`, also put with the
/// job name on the pod template (and under the legacy label keys), and on the Job itself
/// when it has no labels.
fn generate_job_selector(job: &mut Value, name: &str) {
    if job["spec"]["manualSelector"] == json!(true) {
        return;
    }
    let uid = job["metadata"]["uid"].clone();
    job["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    let labels = &mut job["spec"]["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", uid.clone()),
        ("batch.kubernetes.io/job-name", json!(name)),
        ("controller-uid", uid),
        ("job-name", json!(name)),
    ] {
        labels[k] = v;
    }
    // Upstream defaulting: a Job without labels of its own carries its pods' labels.
    let own = &job["metadata"]["labels"];
    if own.as_object().is_none_or(|m| m.is_empty()) {
        job["metadata"]["labels"] = job["spec"]["template"]["metadata"]["labels"].clone();
    }
}

/// Kinds whose upstream strategy keeps `metadata.generation` (controllers compare it with
/// `status.observedGeneration`); the rest, such as ConfigMaps and Pods, carry none.
fn tracks_generation(kind: &str) -> bool {
    matches!(kind, "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "CronJob" | "Ingress")
}

fn spec_part(o: &Value) -> Value {
    let mut v = o.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

impl Api {
    /// Decodes and checks an incoming object for `t`: apiVersion/kind, typed decoding,
    /// unknown fields per `fieldValidation`. Returns the object and warnings.
    fn admit_body(
        &self,
        t: &Target,
        mut body: Value,
        q: &Query,
        kind: &str,
        api_version: &str,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let Some(m) = body.as_object_mut() else {
            return Err(ApiError::bad_request(format!("the body must be a JSON object describing a {kind}")));
        };
        match m.get("kind").and_then(Value::as_str) {
            None | Some("") => {
                m.insert("kind".into(), json!(kind));
            }
            Some(k) if k == kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the body is a {k}, but this endpoint takes a {kind} ({api_version})"
                )));
            }
        }
        match m.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => {
                m.insert("apiVersion".into(), json!(api_version));
            }
            Some(v) if v == api_version => {}
            Some(v) if kind == "Eviction" && v == "policy/v1beta1" => {
                m.insert("apiVersion".into(), json!(api_version));
            }
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
        }
        let (obj, unknown) = kinds::decode(kind, body).map_err(|e| {
            ApiError::bad_request(format!("{kind} in version \"{}\" cannot be handled as a {kind}: {e}", t.res.version))
        })?;
        let mut warnings = Vec::new();
        if !unknown.is_empty() {
            match q.get("fieldValidation").unwrap_or("Warn") {
                "Strict" => {
                    let fields: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
                    return Err(ApiError::bad_request(format!(
                        "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
                        t.res.version,
                        fields.join(", ")
                    )));
                }
                "Ignore" => {}
                _ => warnings.extend(unknown.iter().map(|f| format!("unknown field \"{f}\""))),
            }
        }
        Ok((obj, warnings))
    }

    /// The two fields asked of a namespace (being deleted? its labels), read without
    /// building the whole object; `None` when it does not exist.
    pub(super) fn namespace_meta(&self, ns: &str) -> Result<Option<NamespaceMeta>, ApiError> {
        let ns_res = resources::find("", "v1", "namespaces").expect("namespaces are always served");
        #[derive(serde::Deserialize)]
        struct Namespace {
            #[serde(default)]
            metadata: NamespaceMeta,
        }
        let Some(rec) = self.store.get(&ns_res.key("", ns))? else { return Ok(None) };
        let ns: Namespace = serde_json::from_slice(&rec.value)
            .map_err(|e| ApiError::internal(format!("stored namespace is unreadable: {e}")))?;
        Ok(Some(ns.metadata))
    }

    /// Refuses creating in a namespace that is missing or being deleted; returns its labels
    /// (PodSecurity reads them).
    fn check_namespace_exists(&self, t: &Target) -> Result<serde_json::Map<String, Value>, ApiError> {
        if !t.res.namespaced {
            return Ok(Default::default());
        }
        let meta = self.namespace_meta(t.ns())?.ok_or_else(|| ApiError::not_found("namespaces", "", t.ns()))?;
        if meta.deletion_timestamp.is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {} because it is being terminated",
                t.ns()
            )));
        }
        Ok(meta.labels)
    }

    fn validate_full(&self, t: &Target, kind: &str, obj: &Value) -> Result<(), ApiError> {
        let mut causes = Vec::new();
        let name = meta_str(obj, "name");
        kinds::validate_name(kind, name, &mut causes);
        causes.extend(kinds::validate(kind, obj));
        if causes.is_empty() { Ok(()) } else { Err(ApiError::invalid(kind, t.res.group, name, causes)) }
    }

    /// POST to a collection.
    pub async fn create(&self, t: &Target, q: &Query, body: Value) -> Result<Created, ApiError> {
        self.create_with(t, q, body, None).await
    }

    /// Creates an object; `applied` carries the managedFields of a server-side apply that
    /// creates, otherwise the request's field manager owns every field it set.
    async fn create_with(
        &self,
        t: &Target,
        q: &Query,
        body: Value,
        applied: Option<Value>,
    ) -> Result<Created, ApiError> {
        let res = t.res;
        let (mut obj, mut warnings) = self.admit_body(t, body, q, res.kind, &res.api_version())?;
        let meta = obj.as_object_mut().and_then(|m| {
            m.entry("metadata").or_insert(json!({}));
            m.get_mut("metadata")
        });
        let Some(meta) = meta.and_then(Value::as_object_mut) else {
            return Err(ApiError::bad_request("metadata must be an object"));
        };
        let mut name = meta.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        if name.is_empty() {
            let gen_name = meta.get("generateName").and_then(Value::as_str).unwrap_or("");
            if gen_name.is_empty() {
                return Err(ApiError::invalid(res.kind, res.group, "", vec![Cause::required("metadata.name")]));
            }
            name = format!("{}{}", super::fields::generated_prefix(gen_name), random_suffix(5));
            meta.insert("name".into(), json!(name));
        }
        if res.namespaced {
            let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
            if !body_ns.is_empty() && body_ns != t.ns() {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({})",
                    t.ns()
                )));
            }
            meta.insert("namespace".into(), json!(t.ns()));
        } else {
            meta.remove("namespace");
        }
        for k in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "managedFields"] {
            meta.remove(k);
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if tracks_generation(res.kind) {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        let t = Target { name: Some(name.clone()), ..t.clone() };
        // A client cannot set the status on create; `apply_defaults` gives it the zero
        // value upstream's create strategies do.
        if res.status
            && !matches!(res.kind, "Node" | "Namespace" | "PersistentVolume")
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        if res.kind == "Secret" {
            kinds::fold_string_data(&mut obj);
        }
        kinds::apply_defaults(res.kind, &mut obj);
        if res.kind == "Job" {
            generate_job_selector(&mut obj, &name);
        }
        if res.kind == "Pod" {
            self.admit_service_account(&t, &mut obj)?;
        }
        if res.kind == "Secret" {
            self.fill_legacy_token(&t, &mut obj)?;
        }
        if res.kind == "Ingress" {
            self.admit_default_ingress_class(&mut obj)?;
        }
        match applied {
            Some(managed) => obj["metadata"]["managedFields"] = managed,
            None => apply::record_update(None, &mut obj, manager(q), &res.api_version(), ""),
        }
        self.validate_full(&t, res.kind, &obj)?;
        self.check_escalation(q, res.kind, &obj)?;
        let labels = self.check_namespace_exists(&t)?;
        warnings.extend(self.admit_pod_security(&t, res.kind, &obj, Some(labels))?);
        let mut ops = vec![];
        // The commit below refuses an existing key by itself; look first only where the
        // answer matters before it: a dry run, and kinds that allocate addresses or ports.
        let allocates = matches!(res.kind, "Service" | "Node");
        if (q.dry_run() || allocates) && self.store.get(&t.key())?.is_some() {
            return Err(ApiError::already_exists(res.plural, res.group, &name));
        }
        if res.kind == "Service" {
            ops.extend(alloc::allocate_service(&self.store, &self.opts, &mut obj, None)?);
        }
        if res.kind == "Node" {
            ops.extend(alloc::allocate_node(&self.store, &self.opts, &mut obj)?);
        }
        if q.dry_run() {
            return Ok(Created { obj, json: None, warnings });
        }
        let key = t.key();
        let stored = encode(&obj)?;
        ops.insert(0, Op { key: key.clone(), expect: Expect::Absent, value: Some(stored.clone()) });
        match self.store.commit(ops).await? {
            TxnResult::Applied { revision } => {
                obj["metadata"]["resourceVersion"] = json!(revision.to_string());
                let mut json = Vec::with_capacity(stored.len() + 32);
                let json = raw_object::write_with_revision(&mut json, &stored, revision).then_some(json);
                Ok(Created { obj, json, warnings })
            }
            TxnResult::Failed { key: failed, .. } if failed == key => {
                Err(ApiError::already_exists(res.plural, res.group, &name))
            }
            TxnResult::Failed { .. } => Err(ApiError::invalid(
                res.kind,
                res.group,
                &name,
                vec![Cause::invalid("spec", "", "an address or port was allocated concurrently; try again")],
            )),
        }
    }

    /// GET one object.
    /// Upstream's DefaultIngressClass admission: a new Ingress that names no class (nor
    /// the legacy annotation) gets the default IngressClass; with several defaults, the
    /// newest.
    fn admit_default_ingress_class(&self, ing: &mut Value) -> Result<(), ApiError> {
        let named = ing.pointer("/spec/ingressClassName").and_then(Value::as_str).is_some_and(|c| !c.is_empty())
            || ing.pointer("/metadata/annotations/kubernetes.io~1ingress.class").is_some();
        if named {
            return Ok(());
        }
        let res = resources::find("networking.k8s.io", "v1", "ingressclasses")
            .ok_or_else(|| ApiError::internal("ingressclasses are not served"))?;
        let (records, _) = self.store.list(&res.list_prefix(None), None, 1000)?;
        let mut default: Option<(String, String)> = None;
        for rec in &records {
            let class = to_object(rec)?;
            let annotation = crate::control::ingress::DEFAULT_CLASS_ANNOTATION.replace('/', "~1");
            if class.pointer(&format!("/metadata/annotations/{annotation}")).and_then(Value::as_str) != Some("true") {
                continue;
            }
            let created = class.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or_default();
            let name = class.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            if default.as_ref().is_none_or(|(c, _)| created > c.as_str()) {
                default = Some((created.to_string(), name.to_string()));
            }
        }
        if let (Some((_, class)), Some(obj)) = (default, ing.as_object_mut()) {
            let spec = obj.entry("spec").or_insert_with(|| json!({}));
            if let Some(spec) = spec.as_object_mut() {
                spec.insert("ingressClassName".into(), json!(class));
            }
        }
        Ok(())
    }

    pub fn get_object(&self, t: &Target) -> Result<Value, ApiError> {
        let rec = self.store.get(&t.key())?.ok_or_else(|| t.not_found())?;
        let mut obj = to_object(&rec)?;
        if is_node_lease(t) {
            self.heartbeats.overlay(&mut obj);
        }
        Ok(obj)
    }

    /// GET a collection, as a list or a Table.
    pub fn list(&self, t: &Target, q: &Query, as_table: bool) -> Result<Value, ApiError> {
        let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))?;
        let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""))?;
        fields.check_supported(t.res.plural)?;
        let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
        let prefix = t.res.list_prefix(t.namespace.as_deref());
        // Later pages read the first page's snapshot; a token whose revision is not positive
        // (upstream's "inconsistent continue") reads the latest state.
        let (mut start, mut at) = match q.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => {
                let (key, rv) = decode_continue(&self.continue_key, token, &prefix)?;
                (Some(key), u64::try_from(rv).ok().filter(|r| *r > 0))
            }
            None => (None, None),
        };
        if at.is_none() && q.get("resourceVersionMatch") == Some("Exact") {
            let asked =
                q.get("resourceVersion").and_then(|v| v.parse::<u64>().ok()).filter(|v| *v > 0).ok_or_else(|| {
                    ApiError::bad_request("resourceVersionMatch=Exact needs a resourceVersion above 0")
                })?;
            let current = self.store.revision();
            if asked > current {
                return Err(ApiError::too_large_resource_version(asked, current));
            }
            at = Some(asked);
        }
        // A field selector on metadata.name reads one key instead of scanning.
        if let (Some(name), true) = (fields.equals("metadata.name"), t.namespace.is_some() || !t.res.namespaced) {
            let rev = self.store.revision();
            let items = match self.store.get(&t.res.key(t.ns(), name))? {
                Some(rec) => {
                    let o = to_object(&rec)?;
                    if labels.matches_object(&o) && fields.matches(&o) { vec![o] } else { vec![] }
                }
                None => vec![],
            };
            return Ok(self.list_body(t, items, rev, None, q, as_table));
        }
        let mut items = Vec::new();
        let mut next = None;
        let chunk = limit.map_or(1000, |l| (l + 1).max(100));
        'scan: loop {
            // Every chunk after the first reads the first one's revision.
            let records = match at {
                Some(rev) => self.store.list_at(&prefix, start.as_deref(), chunk, rev)?.ok_or_else(|| {
                    match start.as_deref() {
                        Some(key) => ApiError::continue_expired(encode_continue(&self.continue_key, key, -1)),
                        None => ApiError::gone(format!("too old resource version: {rev}")),
                    }
                })?,
                None => {
                    let (records, now) = self.store.list(&prefix, start.as_deref(), chunk)?;
                    at = Some(now);
                    records
                }
            };
            let exhausted = records.len() < chunk;
            for rec in &records {
                if let Some(l) = limit
                    && items.len() >= l
                {
                    next = start.clone();
                    break 'scan;
                }
                start = Some(rec.key.clone());
                let o = to_object(rec)?;
                if labels.matches_object(&o) && fields.matches(&o) {
                    items.push(o);
                }
            }
            if exhausted {
                break;
            }
        }
        if is_node_lease(t) {
            items.iter_mut().for_each(|lease| self.heartbeats.overlay(lease));
        }
        Ok(self.list_body(t, items, at.unwrap_or(0), next, q, as_table))
    }

    fn list_body(
        &self,
        t: &Target,
        items: Vec<Value>,
        rev: u64,
        next: Option<String>,
        q: &Query,
        as_table: bool,
    ) -> Value {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if let Some(k) = next {
            meta["continue"] = json!(encode_continue(&self.continue_key, &k, i64::try_from(rev).unwrap_or(-1)));
            meta["remainingItemCount"] = Value::Null;
            if let Some(m) = meta.as_object_mut() {
                m.remove("remainingItemCount");
            }
        }
        if as_table {
            return table::table(t.res.plural, &items, table::IncludeObject::parse(q.get("includeObject")), meta);
        }
        json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(), "metadata": meta, "items": items})
    }

    /// Writes `new` over `current` (compare-and-swap on its revision). Handles status
    /// preservation, generation, immutable fields, and deletion once the last finalizer of a
    /// deleting object is removed.
    async fn write_update(
        &self,
        t: &Target,
        current: &Record,
        mut new: Value,
        q: &Query,
        status_only: bool,
        applied: bool,
    ) -> Result<Value, ApiError> {
        let res = t.res;
        let old = to_object(current)?;
        if status_only {
            let status = new.get("status").cloned().unwrap_or(Value::Null);
            new = old.clone();
            new["status"] = status;
        } else if res.status && !matches!(res.kind, "Namespace") {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        // Server-owned metadata.
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "name",
            "namespace",
            "managedFields",
        ] {
            if field == "managedFields" && applied {
                continue;
            }
            match old.pointer(&format!("/metadata/{field}")) {
                Some(v) => new["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove(field);
                    }
                }
            }
        }
        if res.kind == "Secret" {
            kinds::fold_string_data(&mut new);
        }
        kinds::apply_defaults(res.kind, &mut new);
        if tracks_generation(res.kind) {
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
            let generation = if spec_part(&old) != spec_part(&new) { generation + 1 } else { generation };
            new["metadata"]["generation"] = json!(generation);
        } else if let Some(m) = new["metadata"].as_object_mut() {
            m.remove("generation");
        }
        if !applied {
            let sub = t.sub.as_deref().unwrap_or("");
            apply::record_update(Some(&old), &mut new, manager(q), &res.api_version(), sub);
        }
        self.validate_full(t, res.kind, &new)?;
        if old.get("rules") != new.get("rules")
            || old.get("roleRef") != new.get("roleRef")
            || old.get("subjects") != new.get("subjects")
        {
            self.check_escalation(q, res.kind, &new)?;
        }
        if let Some(me) = q.get(NODE_QUERY_KEY)
            && let Some(why) = super::node_graph::node_write_refusal(me, res.kind, &old, &new)
        {
            return Err(ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: User \"system:node:{me}\" may not write it: {why}",
                res.plural,
                t.name()
            )));
        }
        if res.kind == "Pod" && old.get("spec") != new.get("spec") {
            self.admit_pod_security(t, res.kind, &new, None)?;
        }
        let causes = kinds::validate_update(res.kind, &old, &new);
        if !causes.is_empty() {
            return Err(ApiError::invalid(res.kind, res.group, t.name(), causes));
        }
        let mut extra = Vec::new();
        if res.kind == "Service" {
            extra = alloc::allocate_service(&self.store, &self.opts, &mut new, Some(&old))?;
        }
        if extra.is_empty() && same_content(&old, &new) {
            // Nothing changed but managedFields timestamps: store nothing, as upstream does
            // (no new resourceVersion, no watch event, no flash write).
            return Ok(old);
        }
        if q.dry_run() {
            return Ok(new);
        }
        // The last finalizer gone ends a deletion, except for a pod still stopping on its
        // node: its agent ends that one (a delete with grace 0) once the containers exit.
        let stopping_pod = res.kind == "Pod"
            && new.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0) > 0
            && !matches!(new.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
        // A namespace also waits for its own `spec.finalizers` (the namespace controller's).
        let namespace_held = res.kind == "Namespace"
            && new.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        let deleting = !meta_str(&new, "deletionTimestamp").is_empty()
            && !has_finalizers(&new)
            && !stopping_pod
            && !namespace_held;
        let key = t.key();
        if deleting {
            let mut ops = vec![Op { key: key.clone(), expect: Expect::ModRev(current.mod_rev), value: None }];
            ops.extend(alloc::release(res.kind, &new));
            return match self.store.commit(ops).await? {
                TxnResult::Applied { revision } => {
                    new["metadata"]["resourceVersion"] = json!(revision.to_string());
                    Ok(new)
                }
                TxnResult::Failed { .. } => Err(ApiError::conflict(res.plural, res.group, t.name())),
            };
        }
        if new == old {
            return Ok(old);
        }
        let mut ops = vec![Op { key, expect: Expect::ModRev(current.mod_rev), value: Some(encode(&new)?) }];
        ops.extend(extra);
        match self.store.commit(ops).await? {
            TxnResult::Applied { revision } => {
                new["metadata"]["resourceVersion"] = json!(revision.to_string());
                Ok(new)
            }
            TxnResult::Failed { .. } => Err(ApiError::conflict(res.plural, res.group, t.name())),
        }
    }

    /// PUT an object (or its status).
    pub async fn update(&self, t: &Target, q: &Query, body: Value) -> Result<(Value, Vec<String>), ApiError> {
        let res = t.res;
        let (new, warnings) = self.admit_body(t, body, q, res.kind, &res.api_version())?;
        let body_name = meta_str(&new, "name");
        if !body_name.is_empty() && body_name != t.name() {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({})",
                t.name()
            )));
        }
        let want_rev = meta_str(&new, "resourceVersion").to_string();
        let status_only = t.sub.as_deref() == Some("status");
        loop {
            let current = self.store.get(&t.key())?.ok_or_else(|| t.not_found())?;
            if !want_rev.is_empty() && want_rev != current.mod_rev.to_string() {
                return Err(ApiError::conflict(res.plural, res.group, t.name()));
            }
            match self.write_update(t, &current, new.clone(), q, status_only, false).await {
                Err(e) if e.reason == "Conflict" && want_rev.is_empty() => continue,
                r => return r.map(|v| (v, warnings)),
            }
        }
    }

    /// PATCH an object (or its status), retrying on concurrent writes unless the patch
    /// pins a resourceVersion.
    pub async fn patch(
        &self,
        t: &Target,
        q: &Query,
        ptype: PatchType,
        patch_body: Value,
    ) -> Result<(u16, Value), ApiError> {
        let res = t.res;
        let status_only = t.sub.as_deref() == Some("status");
        let pinned = patch_body.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(String::from);
        let is_apply = ptype == PatchType::Apply;
        if is_apply && q.get("_defaultManager").is_some() {
            return Err(ApiError::bad_request(
                "fieldManager is required for apply requests: pass ?fieldManager=<your tool's name>",
            ));
        }
        let force = q.flag("force") && q.get("force").is_some();
        for _ in 0..16 {
            let current = match self.store.get(&t.key())? {
                Some(c) => c,
                // Apply creates only the object itself, named by the URL, never through a
                // subresource (upstream answers 404 there too).
                None if is_apply && t.sub.is_none() => {
                    let base =
                        json!({"apiVersion": res.api_version(), "kind": res.kind, "metadata": {"name": t.name()}});
                    let merged = apply::apply(&base, &patch_body, manager(q), force, &res.api_version())?;
                    let body_name = merged.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
                    if body_name != t.name() {
                        return Err(ApiError::bad_request(format!(
                            "the name of the object ({body_name}) does not match the name on the URL ({})",
                            t.name()
                        )));
                    }
                    let managed = merged.pointer("/metadata/managedFields").cloned();
                    let created =
                        self.create_with(&Target { name: None, sub: None, ..t.clone() }, q, merged, managed).await?;
                    return Ok((201, created.obj));
                }
                None => return Err(t.not_found()),
            };
            if let Some(p) = &pinned
                && *p != current.mod_rev.to_string()
            {
                return Err(ApiError::conflict(res.plural, res.group, t.name()));
            }
            let old = to_object(&current)?;
            let patched = if is_apply {
                apply::apply(&old, &patch_body, manager(q), force, &res.api_version())?
            } else {
                patch::apply(ptype, &old, &patch_body, res.kind == "Service")?
            };
            let (new, _) = self.admit_body(t, patched, &Query::default(), res.kind, &res.api_version())?;
            // A heartbeat: answered as written, kept in memory (see `heartbeats`).
            if is_node_lease(t)
                && !is_apply
                && pinned.is_none()
                && !q.dry_run()
                && !status_only
                && self.heartbeats.absorb(t.name(), &old, &new)
            {
                let mut answer = old;
                answer["spec"]["renewTime"] = new["spec"]["renewTime"].clone();
                return Ok((200, answer));
            }
            match self.write_update(t, &current, new, q, status_only, is_apply).await {
                Err(e) if e.reason == "Conflict" && pinned.is_none() => continue,
                r => return r.map(|v| (200, v)),
            }
        }
        Err(ApiError::conflict(res.plural, res.group, t.name()))
    }

    /// DELETE one object: immediately, or by marking it (finalizers, graceful pod stop).
    pub async fn delete(&self, t: &Target, q: &Query, options: Value) -> Result<(u16, Value), ApiError> {
        let res = t.res;
        let grace_opt = options
            .get("gracePeriodSeconds")
            .and_then(Value::as_i64)
            .or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
        let dry = q.dry_run()
            || options.get("dryRun").and_then(Value::as_array).is_some_and(|d| d.iter().any(|x| x == "All"));
        let policy = propagation_policy(res, q, &options);
        if !matches!(policy, "Foreground" | "Background" | "Orphan") {
            return Err(ApiError::invalid(
                "DeleteOptions",
                "meta.k8s.io",
                t.name(),
                vec![Cause::unsupported("propagationPolicy", policy, &["Foreground", "Background", "Orphan"])],
            ));
        }
        loop {
            let current = self.store.get(&t.key())?.ok_or_else(|| t.not_found())?;
            let mut obj = to_object(&current)?;
            if let Some(me) = q.get(NODE_QUERY_KEY)
                && res.kind == "Pod"
                && super::node_graph::bound_node(&obj) != Some(me)
            {
                return Err(ApiError::forbidden(format!(
                    "pods \"{}\" is forbidden: User \"system:node:{me}\" may not delete it: the pod is not bound to this node",
                    t.name()
                )));
            }
            if let Some(uid) = options.pointer("/preconditions/uid").and_then(Value::as_str)
                && uid != meta_str(&obj, "uid")
            {
                return Err(ApiError::conflict_msg(format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&obj, "uid")
                )));
            }
            if let Some(rv) = options.pointer("/preconditions/resourceVersion").and_then(Value::as_str)
                && rv != current.mod_rev.to_string()
            {
                return Err(ApiError::conflict(res.plural, res.group, t.name()));
            }
            let already_deleting = !meta_str(&obj, "deletionTimestamp").is_empty();
            let graceful_pod = res.kind == "Pod"
                && !obj.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("").is_empty()
                && !matches!(obj.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
            let grace = grace_opt.unwrap_or_else(|| {
                obj.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30)
            });
            // Foreground and Orphan deletion hand the object to the garbage collector by
            // a finalizer it removes once the dependents are gone or released.
            let policy_finalizer = match policy {
                "Foreground" => Some("foregroundDeletion"),
                "Orphan" => Some("orphan"),
                _ => None,
            };
            if let Some(f) = policy_finalizer
                && !already_deleting
            {
                let list = obj["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
                if !list.iter().any(|x| x == f) {
                    obj["metadata"]["finalizers"] = json!(list.into_iter().chain([json!(f)]).collect::<Vec<_>>());
                }
            }
            let mark = has_finalizers(&obj) || res.kind == "Namespace" || (graceful_pod && grace > 0);
            if dry {
                return Ok((200, obj));
            }
            if mark {
                if already_deleting && !(graceful_pod && grace == 0) {
                    return Ok((200, obj));
                }
                if already_deleting && graceful_pod && grace == 0 && !has_finalizers(&obj) {
                    // Force deletion of a pod already stopping.
                } else {
                    obj["metadata"]["deletionTimestamp"] =
                        json!(if graceful_pod { rfc3339_in(grace) } else { now_rfc3339() });
                    obj["metadata"]["deletionGracePeriodSeconds"] = json!(if graceful_pod { grace } else { 0 });
                    if res.kind == "Namespace" {
                        obj["status"]["phase"] = json!("Terminating");
                    }
                    let op = Op { key: t.key(), expect: Expect::ModRev(current.mod_rev), value: Some(encode(&obj)?) };
                    match self.store.commit(vec![op]).await? {
                        TxnResult::Applied { revision } => {
                            obj["metadata"]["resourceVersion"] = json!(revision.to_string());
                            return Ok((200, obj));
                        }
                        TxnResult::Failed { .. } => continue,
                    }
                }
            }
            let mut ops = vec![Op { key: t.key(), expect: Expect::ModRev(current.mod_rev), value: None }];
            ops.extend(alloc::release(res.kind, &obj));
            match self.store.commit(ops).await? {
                TxnResult::Applied { revision } => {
                    // The revision of the deletion, as the watch's DELETED event carries it.
                    obj["metadata"]["resourceVersion"] = json!(revision.to_string());
                    return Ok((200, obj));
                }
                TxnResult::Failed { .. } => continue,
            }
        }
    }

    /// DELETE on a collection: every selected object, one by one.
    pub async fn delete_collection(&self, t: &Target, q: &Query, options: Value) -> Result<Value, ApiError> {
        let list = self.list(t, q, false)?;
        let mut deleted = Vec::new();
        for item in list["items"].as_array().into_iter().flatten() {
            let one = Target {
                name: Some(meta_str(item, "name").to_string()),
                namespace: Some(meta_str(item, "namespace").to_string()).filter(|n| !n.is_empty()),
                ..t.clone()
            };
            match self.delete(&one, q, options.clone()).await {
                Ok((_, o)) => deleted.push(o),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(
            json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(), "metadata": {}, "items": deleted}),
        )
    }

    /// PUT `namespaces/<name>/finalize`: sets `spec.finalizers` (and nothing else); a
    /// Terminating namespace whose finalizers are all gone is removed.
    pub async fn finalize(&self, t: &Target, q: &Query, body: Value) -> Result<Value, ApiError> {
        let finalizers = body.pointer("/spec/finalizers").cloned().unwrap_or(json!([]));
        for _ in 0..16 {
            let current = self.store.get(&t.key())?.ok_or_else(|| t.not_found())?;
            let mut new = to_object(&current)?;
            new["spec"]["finalizers"] = finalizers.clone();
            match self.write_update(t, &current, new, q, false, false).await {
                Err(e) if e.reason == "Conflict" => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(t.res.plural, t.res.group, t.name()))
    }

    /// GET/PUT/PATCH `.../scale`.
    pub async fn scale(
        &self,
        t: &Target,
        q: &Query,
        method: &str,
        body: Option<(Option<PatchType>, Value)>,
    ) -> Result<Value, ApiError> {
        let res = t.res;
        for _ in 0..16 {
            let current = self.store.get(&t.key())?.ok_or_else(|| t.not_found())?;
            let obj = to_object(&current)?;
            let scale = scale_of(&obj, current.mod_rev);
            let Some((ptype, body)) = body.clone() else { return Ok(scale) };
            let wanted = match ptype {
                Some(p) => patch::apply(p, &scale, &body, false)?,
                None => body,
            };
            if method == "PUT"
                && let Some(rv) = wanted.pointer("/metadata/resourceVersion").and_then(Value::as_str)
                && !rv.is_empty()
                && rv != current.mod_rev.to_string()
            {
                return Err(ApiError::conflict(res.plural, res.group, t.name()));
            }
            let replicas = wanted.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
            if replicas < 0 {
                return Err(ApiError::invalid(
                    "Scale",
                    "autoscaling",
                    t.name(),
                    vec![Cause::invalid("spec.replicas", replicas, "must be greater than or equal to 0")],
                ));
            }
            let mut new = obj.clone();
            new["spec"]["replicas"] = json!(replicas);
            match self.write_update(t, &current, new, q, false, false).await {
                Ok(v) => {
                    let rev = v
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(current.mod_rev);
                    return Ok(scale_of(&v, rev));
                }
                Err(e) if e.reason == "Conflict" => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict(res.plural, res.group, t.name()))
    }

    /// POST `pods/<name>/binding`: set the node of a pod that has none.
    pub async fn bind(&self, t: &Target, body: Value) -> Result<Value, ApiError> {
        let node = body.pointer("/target/name").and_then(Value::as_str).unwrap_or("").to_string();
        if node.is_empty() {
            return Err(ApiError::invalid("Binding", "", t.name(), vec![Cause::required("target.name")]));
        }
        loop {
            let current = self.store.get(&t.key())?.ok_or_else(|| t.not_found())?;
            let mut pod = to_object(&current)?;
            if !pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("").is_empty() {
                return Err(ApiError::conflict_msg(format!(
                    "Operation cannot be fulfilled on pods/binding \"{}\": pod {} is already assigned to node \"{}\"",
                    t.name(),
                    t.name(),
                    pod["spec"]["nodeName"].as_str().unwrap_or("")
                )));
            }
            if let Some(uid) = body.pointer("/metadata/uid").and_then(Value::as_str)
                && !uid.is_empty()
                && uid != meta_str(&pod, "uid")
            {
                return Err(ApiError::conflict_msg(format!(
                    "Operation cannot be fulfilled on pods/binding \"{}\": the pod's UID is {}, not {uid}",
                    t.name(),
                    meta_str(&pod, "uid")
                )));
            }
            pod["spec"]["nodeName"] = json!(node);
            let conds = pod["status"].get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
            let mut conds: Vec<Value> =
                conds.into_iter().filter(|c| c.get("type") != Some(&json!("PodScheduled"))).collect();
            conds.push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339(), "lastProbeTime": null}));
            pod["status"]["conditions"] = json!(conds);
            let op = Op { key: t.key(), expect: Expect::ModRev(current.mod_rev), value: Some(encode(&pod)?) };
            if let TxnResult::Applied { .. } = self.store.commit(vec![op]).await? {
                return Ok(crate::api::status::success_status(json!({"name": t.name(), "kind": "pods"})));
            }
        }
    }

    /// POST `pods/<name>/eviction`: a delete with the eviction's options, refused (429)
    /// while it would take a PodDisruptionBudget covering a healthy pod below what it
    /// requires. Evictions are taken one at a time, so two cannot both spend the last
    /// allowed disruption.
    pub async fn evict(&self, t: &Target, q: &Query, body: Value) -> Result<Value, ApiError> {
        let pod_t = Target { sub: None, ..t.clone() };
        let options = body.get("deleteOptions").cloned().unwrap_or(json!({}));
        let _one_at_a_time = self.evictions.lock().await;
        let pod = self.get_object(&pod_t)?;
        if disruption::healthy(&pod) {
            let ns = t.namespace.as_deref().unwrap_or("default");
            let objects = |plural: &str, group: &str| -> Result<Vec<Value>, ApiError> {
                let res = resources::RESOURCES
                    .iter()
                    .find(|r| r.plural == plural && r.group == group)
                    .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
                let (records, _) = self.store.list(&res.list_prefix(Some(ns)), None, usize::MAX)?;
                records.iter().map(to_object).collect()
            };
            let budgets: Vec<Value> = objects("poddisruptionbudgets", "policy")?
                .into_iter()
                .filter(|b| disruption::covers(b, &pod))
                .collect();
            if budgets.len() > 1 {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ));
            }
            if let Some(pdb) = budgets.first() {
                let scale_of = |owner: &Value| -> Option<i64> {
                    let kind = owner["kind"].as_str()?;
                    let res = resources::RESOURCES.iter().find(|r| r.kind == kind && r.scale)?;
                    let rec = self.store.get(&res.key(ns, owner["name"].as_str()?)).ok()??;
                    let obj = to_object(&rec).ok()?;
                    (obj["metadata"]["uid"] == owner["uid"]).then(|| obj["spec"]["replicas"].as_i64().unwrap_or(1))
                };
                let b = disruption::budget(pdb, &objects("pods", "")?, &scale_of);
                if b.allowed < 1 {
                    return Err(ApiError::disruption_budget(meta_str(pdb, "name"), b.desired, b.healthy));
                }
            }
        }
        self.delete(&pod_t, q, options).await?;
        Ok(crate::api::status::success_status(json!({"name": t.name(), "kind": "pods"})))
    }
}

/// The deletion propagation a request asks for: `propagationPolicy` (body or query), the
/// legacy `orphanDependents`, else the resource's default (upstream keeps orphaning for
/// batch/v1 Jobs and v1 ReplicationControllers; everything else cascades in the background).
fn propagation_policy<'a>(res: &Resource, q: &'a Query, options: &'a Value) -> &'a str {
    if let Some(p) = options.get("propagationPolicy").and_then(Value::as_str).or_else(|| q.get("propagationPolicy")) {
        return p;
    }
    match options.get("orphanDependents").and_then(Value::as_bool) {
        Some(true) => "Orphan",
        Some(false) => "Background",
        None if matches!(res.kind, "Job" | "ReplicationController") => "Orphan",
        None => "Background",
    }
}

/// The field manager of a request (`?fieldManager=`, else derived from the User-Agent).
fn manager(q: &Query) -> &str {
    q.get("fieldManager").filter(|m| !m.is_empty()).unwrap_or("unknown")
}

fn scale_of(obj: &Value, rev: u64) -> Value {
    let sel = obj.pointer("/spec/selector").map(LabelSelector::from_object).map(|_| {
        let labels = obj.pointer("/spec/selector/matchLabels").and_then(Value::as_object);
        labels
            .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    });
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta_str(obj, "name"), "namespace": meta_str(obj, "namespace"), "uid": meta_str(obj, "uid"),
            "resourceVersion": rev.to_string(), "creationTimestamp": meta_str(obj, "creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {"replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0), "selector": sel.unwrap_or_default()},
    })
}

/// A `continue` token: the last key returned and the revision the list was read at (-1:
/// read the latest state), as upstream's etcd tokens carry them, signed with the server's
/// key so a client cannot forge one that reads from another key.
fn encode_continue(mac_key: &ring::hmac::Key, key: &str, rev: i64) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let body = b64.encode(json!({"v": 1, "start": key, "rv": rev}).to_string());
    let tag = ring::hmac::sign(mac_key, body.as_bytes());
    format!("{body}.{}", b64.encode(tag.as_ref()))
}

/// The key and revision of a token [`encode_continue`] made for a list under `prefix`.
fn decode_continue(mac_key: &ring::hmac::Key, token: &str, prefix: &str) -> Result<(String, i64), ApiError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bad = || ApiError::bad_request("continue key is not valid: list again without `continue`");
    let (body, tag) = token.split_once('.').ok_or_else(bad)?;
    let tag = b64.decode(tag).map_err(|_| bad())?;
    ring::hmac::verify(mac_key, body.as_bytes(), &tag).map_err(|_| bad())?;
    let raw = b64.decode(body).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let key = v.get("start").and_then(Value::as_str).map(String::from).ok_or_else(bad)?;
    if !key.starts_with(prefix) {
        return Err(bad());
    }
    Ok((key, v.get("rv").and_then(Value::as_i64).unwrap_or(-1)))
}
