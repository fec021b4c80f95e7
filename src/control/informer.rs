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
use crate::kubectl::client::Lines;

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
                while let Ok(Some(mut ev)) = lines.next().await {
                    let kind = ev.get_mut("type").map(Value::take).unwrap_or_default();
                    let kind = kind.as_str().unwrap_or("");
                    match kind {
                        "ADDED" | "MODIFIED" | "DELETED" => {
                            rev = rev.max(revision(&ev["object"]));
                            self.apply(kind, ev.get_mut("object").map(Value::take).unwrap_or_default());
                        }
                        "BOOKMARK" => {
                            rev = rev.max(revision(&ev["object"]));
                            self.seen.send_if_modified(|s| {
                                let newer = rev > *s;
                                *s = (*s).max(rev);
                                newer
                            });
                        }
                        _ => {
                            expired = ev["object"]["code"] == 410;
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
    if item.get("kind").is_none()
        && let Some(kind) = list["kind"].as_str().and_then(|k| k.strip_suffix("List"))
    {
        item["kind"] = Value::from(kind);
        item["apiVersion"] = list["apiVersion"].clone();
    }
    item
}
