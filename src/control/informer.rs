//! A watched cache of one resource, shared by every control loop that reads it (client-go's
//! shared informer, kube-rs's reflector). It lists, then watches from the list's revision;
//! when the watch ends or the revision is compacted (410) it lists again and reports what
//! changed meanwhile. Handlers run on the watch task, so they only mark work (enqueue keys).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use super::conn::{ApiConn, ResponseBody, revision};
use crate::client::{Client, Lines};

/// Where an informer lists and watches: the API in this process (the controllers), or a
/// server over HTTPS (a node's agent).
pub trait Source: Send + Sync + 'static {
    /// GET `path` as JSON.
    fn list(&self, path: &str) -> impl std::future::Future<Output = anyhow::Result<Value>> + Send;
    /// Opens the watch at `path`.
    fn watch(&self, path: &str) -> impl std::future::Future<Output = anyhow::Result<ResponseBody>> + Send;
}

impl Source for ApiConn {
    async fn list(&self, path: &str) -> anyhow::Result<Value> {
        self.get(path).await
    }
    async fn watch(&self, path: &str) -> anyhow::Result<ResponseBody> {
        self.stream(path).await
    }
}

impl Source for Client {
    async fn list(&self, path: &str) -> anyhow::Result<Value> {
        self.get(path).await
    }
    async fn watch(&self, path: &str) -> anyhow::Result<ResponseBody> {
        use http_body_util::BodyExt;
        Ok(self.stream(path, "application/json").await?.boxed())
    }
}

/// Called with (old, new) for every change: `None` old for an addition, `None` new for a
/// deletion.
pub type Handler = Box<dyn Fn(Option<&Value>, Option<&Value>) + Send + Sync>;

/// The cache key of an object: `namespace/name`, or `name` when cluster-scoped.
pub fn key_of(obj: &Value) -> String {
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// A secondary index of a cache (client-go's indexers): the value an object is filed
/// under, if any. Lets a control loop read the pods of one node or one owner without
/// reading every pod.
pub type IndexFn = fn(&Value) -> Option<String>;

/// One resource's cache.
pub struct Informer {
    path: String,
    /// Keep objects as compact JSON, parsed when read, instead of parsed trees. A parsed
    /// pod costs about 9.5 KB (serde_json's maps are B-tree leaves of 11 slots, each
    /// allocated whole) where its JSON is 1.1 KB: for the most numerous kind, the cache's
    /// memory is what matters on a 1 GiB board, and reads go through the indexes.
    packed: bool,
    indexers: Vec<(&'static str, IndexFn)>,
    cache: RwLock<Cache>,
    handlers: Mutex<Vec<Handler>>,
    /// The newest revision the cache reflects; 0 until the first list.
    seen: watch::Sender<u64>,
}

/// The objects by key, and each index: indexed value -> keys.
#[derive(Default)]
struct Cache {
    items: HashMap<String, Item>,
    indexes: Vec<HashMap<String, HashSet<String>>>,
}

/// One cached object, with the index values it is filed under (to unfile it without
/// reading it again).
struct Item {
    data: Data,
    revision: u64,
    filed: Vec<Option<String>>,
}

enum Data {
    Parsed(Arc<Value>),
    Packed(Box<[u8]>),
}

impl Data {
    fn value(&self) -> Option<Arc<Value>> {
        match self {
            Data::Parsed(v) => Some(v.clone()),
            Data::Packed(bytes) => match serde_json::from_slice(bytes) {
                Ok(v) => Some(Arc::new(v)),
                Err(e) => {
                    // Written by this cache from a parsed value: cannot happen short of a bug.
                    tracing::error!(error = %e, "a cached object does not parse");
                    None
                }
            },
        }
    }
}

impl Cache {
    fn insert(&mut self, key: String, item: Item) -> Option<Item> {
        for (i, v) in item.filed.iter().enumerate() {
            if let (Some(v), Some(index)) = (v, self.indexes.get_mut(i)) {
                index.entry(v.clone()).or_default().insert(key.clone());
            }
        }
        let old = self.items.insert(key.clone(), item);
        if let Some(old) = &old {
            self.unfile(&key, old, self.items.get(&key).map(|n| n.filed.clone()).unwrap_or_default());
        }
        old
    }

    fn remove(&mut self, key: &str) -> Option<Item> {
        let old = self.items.remove(key)?;
        self.unfile(key, &old, Vec::new());
        Some(old)
    }

    /// Takes `key` out of the index entries `old` was filed under, except those it is
    /// still filed under (`keep`).
    fn unfile(&mut self, key: &str, old: &Item, keep: Vec<Option<String>>) {
        for (i, v) in old.filed.iter().enumerate() {
            let Some(v) = v else { continue };
            if keep.get(i).is_some_and(|k| k.as_ref() == Some(v)) {
                continue;
            }
            if let Some(index) = self.indexes.get_mut(i)
                && let Some(keys) = index.get_mut(v)
            {
                keys.remove(key);
                if keys.is_empty() {
                    index.remove(v);
                }
            }
        }
    }
}

impl Informer {
    /// A cache of the collection at `path` (`/api/v1/pods`); filled once [`Informer::run`]
    /// runs.
    pub fn new(path: &str) -> Arc<Informer> {
        Informer::build(path, false, Vec::new())
    }

    /// A cache that keeps its objects as compact JSON (see `packed`), with `indexers` to
    /// find them by.
    pub fn packed(path: &str, indexers: Vec<(&'static str, IndexFn)>) -> Arc<Informer> {
        Informer::build(path, true, indexers)
    }

    fn build(path: &str, packed: bool, indexers: Vec<(&'static str, IndexFn)>) -> Arc<Informer> {
        let cache = Cache { items: HashMap::new(), indexes: indexers.iter().map(|_| HashMap::new()).collect() };
        Arc::new(Informer {
            path: path.to_string(),
            packed,
            indexers,
            cache: RwLock::new(cache),
            handlers: Mutex::new(Vec::new()),
            seen: watch::channel(0).0,
        })
    }

    /// Registers a handler; register before `run` so no change is missed.
    pub fn on_change(&self, h: Handler) {
        if let Ok(mut hs) = self.handlers.lock() {
            hs.push(h);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.read().items.get(key)?.data.value()
    }

    /// Everything cached, in no order.
    pub fn list(&self) -> Vec<Arc<Value>> {
        self.read().items.values().filter_map(|i| i.data.value()).collect()
    }

    /// The cached objects of one namespace.
    pub fn list_in(&self, namespace: &str) -> Vec<Arc<Value>> {
        let prefix = format!("{namespace}/");
        self.read().items.iter().filter(|(k, _)| k.starts_with(&prefix)).filter_map(|(_, i)| i.data.value()).collect()
    }

    /// The cached objects filed under `value` in the index `index` (one named when the
    /// informer was made; an unknown name finds nothing).
    pub fn list_by(&self, index: &str, value: &str) -> Vec<Arc<Value>> {
        let Some(i) = self.indexers.iter().position(|(name, _)| *name == index) else {
            tracing::error!(path = %self.path, index, "no such index");
            return Vec::new();
        };
        let cache = self.read();
        let Some(keys) = cache.indexes.get(i).and_then(|ix| ix.get(value)) else { return Vec::new() };
        keys.iter().filter_map(|k| cache.items.get(k)).filter_map(|item| item.data.value()).collect()
    }

    /// How `obj` is cached: packed or parsed, and filed under its index values.
    fn item(&self, obj: Arc<Value>) -> Item {
        let filed = self.indexers.iter().map(|(_, f)| f(&obj)).collect();
        let revision = revision(&obj);
        let data = match self.packed.then(|| serde_json::to_vec(&*obj)) {
            Some(Ok(bytes)) => Data::Packed(bytes.into_boxed_slice()),
            // Serializing a parsed value cannot fail; keep it parsed if it ever does.
            _ => Data::Parsed(obj),
        };
        Item { data, revision, filed }
    }

    /// Waits until the cache reflects revision `rev` (a write of this resource the caller
    /// made), so a reconcile never acts on a cache older than its own last write. Gives up
    /// after a few seconds: the next event requeues anyway.
    pub async fn caught_up(&self, rev: u64) {
        let mut rx = self.seen.subscribe();
        // A timeout is the documented give-up; the channel cannot close while `self` holds
        // its sender.
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|seen| *seen >= rev)).await;
    }

    /// Waits for the first complete list.
    pub async fn synced(&self) {
        self.caught_up(1).await;
    }

    fn notify(&self, old: Option<&Value>, new: Option<&Value>) {
        if let Ok(hs) = self.handlers.lock() {
            for h in hs.iter() {
                h(old, new);
            }
        }
    }

    fn apply(&self, kind: &str, obj: Value) {
        let key = key_of(&obj);
        let rev = revision(&obj);
        let obj = Arc::new(obj);
        let old = {
            let mut cache = self.write();
            if kind == "DELETED" { cache.remove(&key) } else { cache.insert(key, self.item(obj.clone())) }
        };
        let old = old.and_then(|o| o.data.value());
        if kind == "DELETED" {
            self.notify(old.as_deref(), None);
        } else {
            self.notify(old.as_deref(), Some(&obj));
        }
        self.seen.send_if_modified(|s| {
            let newer = rev > *s;
            if newer {
                *s = rev;
            }
            newer
        });
    }

    /// Replaces the cache with a fresh list and reports the differences.
    fn replace(&self, items: Vec<Value>, rev: u64) {
        let fresh: Vec<(String, Arc<Value>)> = items.into_iter().map(|o| (key_of(&o), Arc::new(o))).collect();
        let mut cache =
            Cache { items: HashMap::new(), indexes: self.indexers.iter().map(|_| HashMap::new()).collect() };
        for (k, o) in &fresh {
            cache.insert(k.clone(), self.item(o.clone()));
        }
        let old = std::mem::replace(&mut *self.write(), cache);
        let fresh_keys: HashSet<&String> = fresh.iter().map(|(k, _)| k).collect();
        for (k, o) in &old.items {
            if !fresh_keys.contains(k)
                && let Some(o) = o.data.value()
            {
                self.notify(Some(&o), None);
            }
        }
        for (k, n) in &fresh {
            match old.items.get(k) {
                Some(o) if o.revision == revision(n) => {}
                o => self.notify(o.and_then(|o| o.data.value()).as_deref(), Some(n)),
            }
        }
        self.seen.send_modify(|s| *s = (*s).max(rev).max(1));
    }

    /// Keeps the cache current until the task is dropped.
    pub async fn run<S: Source>(self: Arc<Self>, conn: Arc<S>) {
        let mut failures = 0u32;
        loop {
            if failures > 0 {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(25)))).await;
            }
            let list = match conn.list(&self.path).await {
                Ok(l) => l,
                Err(e) => {
                    failures += 1;
                    tracing::debug!(path = %self.path, error = %format!("{e:#}"), "informer list");
                    continue;
                }
            };
            let mut rev = revision(&list);
            let items = match list["items"].as_array() {
                Some(items) => items.iter().map(|i| with_kind(i, &list)).collect(),
                None => Vec::new(),
            };
            self.replace(items, rev);
            loop {
                let sep = if self.path.contains('?') { '&' } else { '?' };
                let path = format!("{}{sep}watch=true&allowWatchBookmarks=true&resourceVersion={rev}", self.path);
                let body = match conn.watch(&path).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::debug!(path = %self.path, error = %format!("{e:#}"), "informer watch");
                        failures += 1;
                        break;
                    }
                };
                failures = 0;
                let mut lines = Lines::new(body);
                let mut expired = false;
                while let Ok(Some(ev)) = lines.next_as::<Event>().await {
                    let Cached(object) = ev.object;
                    match ev.kind.as_str() {
                        kind @ ("ADDED" | "MODIFIED" | "DELETED") => {
                            rev = rev.max(revision(&object));
                            self.apply(kind, object);
                        }
                        "BOOKMARK" => {
                            rev = rev.max(revision(&object));
                            self.seen.send_if_modified(|s| {
                                let newer = rev > *s;
                                *s = (*s).max(rev);
                                newer
                            });
                        }
                        _ => {
                            expired = object["code"] == 410;
                            break;
                        }
                    }
                }
                if expired {
                    break;
                }
            }
        }
    }
}

/// List items carry no kind; give them the list's so handlers can build references.
fn with_kind(item: &Value, list: &Value) -> Value {
    let mut item = item.clone();
    if let Some(meta) = item.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    if item.get("kind").is_none()
        && let Some(kind) = list["kind"].as_str().and_then(|k| k.strip_suffix("List"))
    {
        item["kind"] = Value::from(kind);
        item["apiVersion"] = list["apiVersion"].clone();
    }
    item
}

/// One line of a watch, as the cache reads it.
#[derive(serde::Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    object: Cached,
}

/// An object as the cache keeps it: everything but `metadata.managedFields`, which is
/// skipped while parsing. No control loop reads field ownership (the API server keeps it
/// on updates whatever the client sends), and it is often a third of an object: parsing it
/// into the cache cost CPU on every write and memory for every object. client-go's
/// informers strip it the same way (`TransformStripManagedFields`).
struct Cached(Value);

impl<'de> serde::Deserialize<'de> for Cached {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ObjectVisitor { metadata: false }).map(Cached)
    }
}

/// Reads an object into a [`Value`], skipping `managedFields` when it is the metadata.
struct ObjectVisitor {
    metadata: bool,
}

impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if self.metadata && key == "managedFields" {
                map.next_value::<serde::de::IgnoredAny>()?;
            } else if !self.metadata && key == "metadata" {
                let meta = map.next_value_seed(MetadataSeed)?;
                out.insert(key, meta);
            } else {
                out.insert(key, map.next_value()?);
            }
        }
        Ok(Value::Object(out))
    }
}

struct MetadataSeed;

impl<'de> serde::de::DeserializeSeed<'de> for MetadataSeed {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ObjectVisitor { metadata: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_objects_leave_out_managed_fields_and_keep_the_rest() {
        let line = br#"{"type":"ADDED","object":{"kind":"Pod","metadata":{"name":"a","resourceVersion":"7",
            "managedFields":[{"manager":"kubectl","fieldsV1":{"f:spec":{}}}],"labels":{"app":"x"}},
            "spec":{"containers":[{"name":"c","image":"i"}]}}}"#;
        let ev: Event = serde_json::from_slice(line).unwrap();
        assert_eq!(ev.kind, "ADDED");
        let want = serde_json::json!({"kind":"Pod","metadata":{"name":"a","resourceVersion":"7","labels":{"app":"x"}},
            "spec":{"containers":[{"name":"c","image":"i"}]}});
        assert_eq!(ev.object.0, want);
        // A Status (an expired watch) and a bookmark read as they are.
        let ev: Event = serde_json::from_slice(br#"{"type":"ERROR","object":{"kind":"Status","code":410}}"#).unwrap();
        assert_eq!(ev.object.0["code"], 410);
        let ev: Event =
            serde_json::from_slice(br#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}"#).unwrap();
        assert_eq!(revision(&ev.object.0), 9);
    }

    fn pod(name: &str, node: &str, owner: Option<&str>, rev: u64) -> Value {
        let mut p = serde_json::json!({"kind": "Pod", "metadata": {"name": name, "namespace": "ns", "resourceVersion": rev.to_string()},
            "spec": {"nodeName": node}});
        if let Some(o) = owner {
            p["metadata"]["ownerReferences"] = serde_json::json!([{"uid": o, "controller": true}]);
        }
        p
    }

    fn names(v: Vec<Arc<Value>>) -> Vec<String> {
        let mut n: Vec<String> = v.iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect();
        n.sort();
        n
    }

    #[test]
    fn packed_caches_read_back_whole_and_keep_their_indexes_current() {
        fn node(p: &Value) -> Option<String> {
            p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).map(str::to_string)
        }
        fn owner(p: &Value) -> Option<String> {
            p["metadata"]["ownerReferences"][0]["uid"].as_str().map(str::to_string)
        }
        let inf = Informer::packed("/api/v1/pods", vec![("node", node), ("owner", owner)]);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        inf.on_change(Box::new(move |old, new| {
            let name = |v: Option<&Value>| v.map(|v| v["spec"]["nodeName"].as_str().unwrap_or("").to_string());
            log.lock().unwrap().push((name(old), name(new)));
        }));
        inf.replace(vec![pod("a", "n1", Some("rs1"), 1), pod("b", "n1", None, 2), pod("c", "", Some("rs1"), 3)], 3);
        assert_eq!(names(inf.list_by("node", "n1")), ["a", "b"]);
        assert_eq!(names(inf.list_by("owner", "rs1")), ["a", "c"]);
        assert_eq!(*inf.get("ns/a").unwrap(), pod("a", "n1", Some("rs1"), 1), "read back whole");
        // Bound elsewhere: moves in the index, and the handler sees the old object too.
        inf.apply("MODIFIED", pod("c", "n2", Some("rs1"), 4));
        assert_eq!(names(inf.list_by("node", "n2")), ["c"]);
        assert_eq!(seen.lock().unwrap().last().unwrap(), &(Some(String::new()), Some("n2".to_string())));
        // Unchanged index values stay filed; a value no longer held goes.
        inf.apply("MODIFIED", pod("a", "n1", None, 5));
        assert_eq!(names(inf.list_by("node", "n1")), ["a", "b"]);
        assert_eq!(names(inf.list_by("owner", "rs1")), ["c"]);
        inf.apply("DELETED", pod("b", "n1", None, 6));
        assert_eq!(names(inf.list_by("node", "n1")), ["a"]);
        assert!(inf.list_by("no-such-index", "n1").is_empty());
        // A fresh list replaces everything, indexes included.
        inf.replace(vec![pod("d", "n3", None, 7)], 7);
        assert!(inf.list_by("node", "n1").is_empty() && inf.list_by("owner", "rs1").is_empty());
        assert_eq!(names(inf.list()), ["d"]);
        assert_eq!(names(inf.list_in("ns")), ["d"]);
    }
}
