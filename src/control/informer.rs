//! A watched cache of one resource, shared by every control loop that reads it (client-go's
//! shared informer, kube-rs's reflector). It lists, then watches from the list's revision;
//! when the watch ends or the revision is compacted (410) it lists again and reports what
//! changed meanwhile. Handlers run on the watch task, so they only mark work (enqueue keys).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use super::conn::{ApiConn, revision};
use crate::client::Lines;

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

/// One resource's cache.
pub struct Informer {
    path: String,
    objects: RwLock<HashMap<String, Arc<Value>>>,
    handlers: Mutex<Vec<Handler>>,
    /// The newest revision the cache reflects; 0 until the first list.
    seen: watch::Sender<u64>,
}

impl Informer {
    /// A cache of the collection at `path` (`/api/v1/pods`); filled once [`Informer::run`]
    /// runs.
    pub fn new(path: &str) -> Arc<Informer> {
        Arc::new(Informer {
            path: path.to_string(),
            objects: RwLock::new(HashMap::new()),
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

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.objects.read().ok()?.get(key).cloned()
    }

    /// Everything cached, in no order.
    pub fn list(&self) -> Vec<Arc<Value>> {
        self.objects.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// The cached objects of one namespace.
    pub fn list_in(&self, namespace: &str) -> Vec<Arc<Value>> {
        let prefix = format!("{namespace}/");
        self.objects
            .read()
            .map(|m| m.iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(_, v)| v.clone()).collect())
            .unwrap_or_default()
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
        let old = match self.objects.write() {
            Ok(mut m) => {
                if kind == "DELETED" {
                    m.remove(&key)
                } else {
                    m.insert(key, obj.clone())
                }
            }
            Err(_) => return,
        };
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
        let fresh: HashMap<String, Arc<Value>> = items.into_iter().map(|o| (key_of(&o), Arc::new(o))).collect();
        let old = match self.objects.write() {
            Ok(mut m) => std::mem::replace(&mut *m, fresh.clone()),
            Err(_) => return,
        };
        for (k, o) in &old {
            if !fresh.contains_key(k) {
                self.notify(Some(o), None);
            }
        }
        for (k, n) in &fresh {
            match old.get(k) {
                Some(o) if revision(o) == revision(n) => {}
                o => self.notify(o.map(|o| &**o), Some(n)),
            }
        }
        self.seen.send_modify(|s| *s = (*s).max(rev).max(1));
    }

    /// Keeps the cache current until the task is dropped.
    pub async fn run(self: Arc<Self>, conn: Arc<ApiConn>) {
        let mut failures = 0u32;
        loop {
            if failures > 0 {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(25)))).await;
            }
            let list = match conn.get(&self.path).await {
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
                let path = format!("{}?watch=true&allowWatchBookmarks=true&resourceVersion={rev}", self.path);
                let body = match conn.stream(&path).await {
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
}
