//! The garbage collector: follows ownerReferences. A dependent whose owners are all gone
//! is deleted (Background propagation, and dangling references are dropped); an owner
//! deleted with `propagationPolicy: Foreground` keeps its `foregroundDeletion` finalizer
//! until the dependents that block it (`blockOwnerDeletion`) are gone; one deleted with
//! `Orphan` keeps its `orphan` finalizer until its dependents no longer reference it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::conn::is_not_found;
use super::informer::Informer;
use super::queue::WorkQueue;
use super::{Ctx, deleting, s};
use crate::api::resources::RESOURCES;

const COMPONENT: &str = "garbage-collector-controller";
const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

/// An object as the collector names it: enough to find its cache entry and its API path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ObjRef {
    fn of(obj: &Value) -> ObjRef {
        ObjRef {
            api_version: s(obj, "/apiVersion").to_string(),
            kind: s(obj, "/kind").to_string(),
            namespace: s(obj, "/metadata/namespace").to_string(),
            name: s(obj, "/metadata/name").to_string(),
            uid: s(obj, "/metadata/uid").to_string(),
        }
    }

    /// The owner an ownerReference names; owners live in their dependent's namespace or are
    /// cluster-scoped.
    fn owner(r: &Value, dependent_ns: &str) -> ObjRef {
        let kind = s(r, "/kind");
        let api_version = s(r, "/apiVersion");
        let namespaced = RESOURCES.iter().any(|x| x.kind == kind && x.api_version() == api_version && x.namespaced);
        ObjRef {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            namespace: if namespaced { dependent_ns.to_string() } else { String::new() },
            name: s(r, "/name").to_string(),
            uid: s(r, "/uid").to_string(),
        }
    }

    /// The object's API path.
    pub fn path(&self) -> Option<String> {
        let res = RESOURCES.iter().find(|r| r.kind == self.kind && r.api_version() == self.api_version)?;
        let base =
            if res.group.is_empty() { "/api/v1".to_string() } else { format!("/apis/{}/{}", res.group, res.version) };
        Some(if res.namespaced {
            format!("{base}/namespaces/{}/{}/{}", self.namespace, res.plural, self.name)
        } else {
            format!("{base}/{}/{}", res.plural, self.name)
        })
    }

    fn cache_key(&self) -> String {
        if self.namespace.is_empty() { self.name.clone() } else { format!("{}/{}", self.namespace, self.name) }
    }

    fn encode(&self, task: &str) -> String {
        format!("{task}|{}|{}|{}|{}|{}", self.api_version, self.kind, self.namespace, self.name, self.uid)
    }

    fn decode(key: &str) -> Option<(String, ObjRef)> {
        let mut p = key.split('|');
        let task = p.next()?.to_string();
        let r = ObjRef {
            api_version: p.next()?.to_string(),
            kind: p.next()?.to_string(),
            namespace: p.next()?.to_string(),
            name: p.next()?.to_string(),
            uid: p.next()?.to_string(),
        };
        Some((task, r))
    }
}

/// The ownership graph as the caches show it.
#[derive(Default)]
struct Graph {
    /// Every cached object by uid.
    objects: HashMap<String, ObjRef>,
    /// Owner uid -> the dependents that reference it.
    dependents: HashMap<String, HashSet<ObjRef>>,
}

fn owner_refs(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default()
}

fn has_finalizer(obj: &Value, f: &str) -> bool {
    obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|l| l.iter().any(|x| x == f))
}

/// What to do with a dependent, given which of its owners still exist.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Every owner is gone: delete it.
    Delete,
    /// Some owners are gone: drop the references to them (by uid).
    DropRefs(Vec<String>),
    Keep,
}

/// Decides a dependent's fate from its ownerReferences and the set of owner uids that exist.
pub fn verdict(refs: &[Value], exists: &dyn Fn(&Value) -> bool) -> Verdict {
    if refs.is_empty() {
        return Verdict::Keep;
    }
    let gone: Vec<String> = refs.iter().filter(|r| !exists(r)).map(|r| s(r, "/uid").to_string()).collect();
    if gone.len() == refs.len() {
        Verdict::Delete
    } else if gone.is_empty() {
        Verdict::Keep
    } else {
        Verdict::DropRefs(gone)
    }
}

struct Collector {
    ctx: Arc<Ctx>,
    graph: Mutex<Graph>,
    caches: HashMap<&'static str, Arc<Informer>>,
}

/// Registers the handlers and starts the workers.
pub fn start(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    let kinds = ctx.owned_kinds();
    let gc = Arc::new(Collector {
        ctx: ctx.clone(),
        graph: Mutex::new(Graph::default()),
        caches: kinds.iter().map(|(k, i)| (*k, i.clone())).collect(),
    });
    for (_, informer) in &kinds {
        let q = queue.clone();
        let me = gc.clone();
        informer.on_change(Box::new(move |old, new| me.observe(&q, old, new)));
    }
    super::workers(COMPONENT, queue, 2, move |key| {
        let gc = gc.clone();
        async move { gc.reconcile(&key).await }
    })
}

impl Collector {
    /// Keeps the graph current and queues what a change may require.
    fn observe(&self, q: &WorkQueue, old: Option<&Value>, new: Option<&Value>) {
        let Ok(mut g) = self.graph.lock() else { return };
        if let Some(old) = old {
            let r = ObjRef::of(old);
            for o in owner_refs(old) {
                if let Some(set) = g.dependents.get_mut(s(&o, "/uid")) {
                    set.remove(&r);
                }
            }
        }
        match new {
            Some(obj) => {
                let r = ObjRef::of(obj);
                g.objects.insert(r.uid.clone(), r.clone());
                let refs = owner_refs(obj);
                for o in &refs {
                    g.dependents.entry(s(o, "/uid").to_string()).or_default().insert(r.clone());
                }
                let refs_changed = old.is_none_or(|o| owner_refs(o) != refs);
                if !refs.is_empty() && refs_changed {
                    q.add(&r.encode("dep"));
                }
                if deleting(obj) && (has_finalizer(obj, FOREGROUND) || has_finalizer(obj, ORPHAN)) {
                    q.add(&r.encode("owner"));
                }
            }
            None => {
                let Some(obj) = old else { return };
                let r = ObjRef::of(obj);
                g.objects.remove(&r.uid);
                // Its dependents may now be orphans; its owners may be waiting for it.
                for d in g.dependents.remove(&r.uid).into_iter().flatten() {
                    q.add(&d.encode("dep"));
                }
                for o in owner_refs(obj) {
                    if let Some(owner) = g.objects.get(s(&o, "/uid")) {
                        q.add(&owner.encode("owner"));
                    }
                }
            }
        }
    }

    fn cached(&self, r: &ObjRef) -> Option<Arc<Value>> {
        self.caches.get(r.kind.as_str())?.get(&r.cache_key()).filter(|o| s(o, "/metadata/uid") == r.uid)
    }

    /// The current object `r` names, from the cache when its kind is cached, else the API.
    async fn lookup(&self, r: &ObjRef) -> anyhow::Result<Option<Arc<Value>>> {
        if self.caches.contains_key(r.kind.as_str()) {
            return Ok(self.cached(r));
        }
        let Some(path) = r.path() else { return Ok(None) };
        match self.ctx.conn.get(&path).await {
            Ok(o) if s(&o, "/metadata/uid") == r.uid => Ok(Some(Arc::new(o))),
            Ok(_) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn reconcile(&self, key: &str) -> anyhow::Result<Option<Duration>> {
        let Some((task, r)) = ObjRef::decode(key) else { return Ok(None) };
        for i in self.caches.values() {
            i.synced().await;
        }
        match task.as_str() {
            "dep" => self.check_dependent(&r).await,
            _ => self.finish_owner(&r).await,
        }
    }

    async fn check_dependent(&self, r: &ObjRef) -> anyhow::Result<Option<Duration>> {
        let Some(obj) = self.lookup(r).await? else { return Ok(None) };
        let refs = owner_refs(&obj);
        let mut present = HashSet::new();
        for o in &refs {
            let owner = ObjRef::owner(o, &r.namespace);
            if self.lookup(&owner).await?.is_some() {
                present.insert(owner.uid);
            }
        }
        let Some(path) = r.path() else { return Ok(None) };
        match verdict(&refs, &|o| present.contains(s(o, "/uid"))) {
            Verdict::Keep => {}
            Verdict::Delete if !deleting(&obj) => {
                let opts = json!({"propagationPolicy": "Background", "preconditions": {"uid": r.uid}});
                self.ctx.conn.delete(&path, &opts).await?;
            }
            Verdict::Delete => {}
            Verdict::DropRefs(gone) => {
                let keep: Vec<&Value> = refs.iter().filter(|o| !gone.iter().any(|g| o["uid"] == *g)).collect();
                let patch = json!({"metadata": {"ownerReferences": keep, "resourceVersion": obj["metadata"]["resourceVersion"]}});
                self.ctx.conn.merge_patch(&path, &patch).await?;
            }
        }
        Ok(None)
    }

    async fn finish_owner(&self, r: &ObjRef) -> anyhow::Result<Option<Duration>> {
        let Some(owner) = self.lookup(r).await? else { return Ok(None) };
        if !deleting(&owner) {
            return Ok(None);
        }
        let Some(path) = r.path() else { return Ok(None) };
        let dependents: Vec<ObjRef> = self
            .graph
            .lock()
            .map(|g| g.dependents.get(&r.uid).cloned().unwrap_or_default())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut finalizers: Vec<Value> =
            owner.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
        if has_finalizer(&owner, ORPHAN) {
            for d in &dependents {
                let Some(obj) = self.lookup(d).await? else { continue };
                let Some(dpath) = d.path() else { continue };
                let keep: Vec<Value> = owner_refs(&obj).into_iter().filter(|o| o["uid"] != r.uid).collect();
                let patch = json!({"metadata": {"ownerReferences": keep, "resourceVersion": obj["metadata"]["resourceVersion"]}});
                match self.ctx.conn.merge_patch(&dpath, &patch).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            finalizers.retain(|f| f != ORPHAN);
        } else if has_finalizer(&owner, FOREGROUND) {
            let mut blocking = 0;
            for d in &dependents {
                let Some(obj) = self.lookup(d).await? else { continue };
                let blocks = owner_refs(&obj).iter().any(|o| o["uid"] == r.uid && o["blockOwnerDeletion"] == true);
                if blocks {
                    blocking += 1;
                }
                if !deleting(&obj) {
                    let Some(dpath) = d.path() else { continue };
                    let policy = if blocks { "Foreground" } else { "Background" };
                    let opts = json!({"propagationPolicy": policy, "preconditions": {"uid": d.uid}});
                    self.ctx.conn.delete(&dpath, &opts).await?;
                }
            }
            if blocking > 0 {
                // Their deletions requeue this owner.
                return Ok(None);
            }
            finalizers.retain(|f| f != FOREGROUND);
        } else {
            return Ok(None);
        }
        let patch =
            json!({"metadata": {"finalizers": finalizers, "resourceVersion": owner["metadata"]["resourceVersion"]}});
        match self.ctx.conn.merge_patch(&path, &patch).await {
            Ok(_) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dependent_goes_with_its_last_owner() {
        let refs = vec![json!({"uid": "a"}), json!({"uid": "b"})];
        assert_eq!(verdict(&refs, &|_| true), Verdict::Keep);
        assert_eq!(verdict(&refs, &|o| o["uid"] == "b"), Verdict::DropRefs(vec!["a".into()]));
        assert_eq!(verdict(&refs, &|_| false), Verdict::Delete);
        assert_eq!(verdict(&[], &|_| false), Verdict::Keep, "no owners: not the collector's");
    }

    #[test]
    fn paths_follow_the_served_resources() {
        let rs = ObjRef {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            namespace: "ns".into(),
            name: "web-1".into(),
            uid: "u".into(),
        };
        assert_eq!(rs.path().as_deref(), Some("/apis/apps/v1/namespaces/ns/replicasets/web-1"));
        assert_eq!(ObjRef::decode(&rs.encode("dep")), Some(("dep".to_string(), rs)));
        let owner = ObjRef::owner(&json!({"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "x"}), "ns");
        assert_eq!(owner.path().as_deref(), Some("/api/v1/nodes/n1"));
    }
}
