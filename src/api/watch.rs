//! Watch streams: newline-delimited `{"type","object"}` events pushed from the store's
//! apply path, replayed from a resourceVersion, filtered by selectors (objects that stop
//! matching arrive as DELETED, as upstream), with bookmarks, `timeoutSeconds`, Table
//! objects for `kubectl get -w`, and a 410 `Expired` ERROR event for compacted history.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Api;
use super::http::{Body, Query};
use super::objects::{Target, object_at};
use super::raw_object;
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::table;

const BOOKMARK_EVERY: Duration = Duration::from_secs(30);

struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, o: &Value) -> bool {
        self.labels.matches_object(o) && self.fields.matches(o)
    }
}

struct Encoder {
    plural: &'static str,
    as_table: bool,
    include: table::IncludeObject,
    sent_columns: bool,
}

impl Encoder {
    fn event(&mut self, kind: &str, obj: Value) -> Bytes {
        let object = if self.as_table && kind != "ERROR" && kind != "BOOKMARK" {
            let mut t = table::table(
                self.plural,
                std::slice::from_ref(&obj),
                self.include,
                json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null)}),
            );
            if self.sent_columns {
                t["columnDefinitions"] = json!([]);
            }
            self.sent_columns = true;
            t
        } else {
            obj
        };
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    /// The event for a stored object sent as it is stored (see [`raw_object`]); `None` when
    /// it must be parsed: for a Table, or bytes the splice does not take.
    fn stored_event(&self, kind: &str, raw: &[u8], rev: u64) -> Option<Bytes> {
        if self.as_table {
            return None;
        }
        let mut line = Vec::with_capacity(raw.len() + 64);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        if !raw_object::write_with_revision(&mut line, raw, rev) {
            return None;
        }
        line.extend_from_slice(b"}\n");
        Some(Bytes::from(line))
    }
}

/// Starts a watch for `t` and returns the streaming response.
pub fn watch(
    api: Arc<Api>,
    t: &Target,
    q: &Query,
    as_table: bool,
    slot: super::WatchSlot,
) -> Result<Response<Body>, ApiError> {
    let filter = Filter {
        labels: LabelSelector::parse(q.get("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(q.get("fieldSelector").unwrap_or(""))?,
    };
    filter.fields.check_supported(t.res.plural)?;
    let rv = q.get("resourceVersion").unwrap_or("");
    let send_initial = q.flag("sendInitialEvents") && q.get("sendInitialEvents").is_some();
    let from: Option<u64> = match rv {
        "" | "0" => None,
        r => Some(
            r.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version \"{r}\": must be a number")))?,
        ),
    };
    // Checked by `http::check_query`: a number of seconds, capped at the server's maximum.
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(super::http::MAX_WATCH_SECONDS)))
        .unwrap_or(Duration::from_secs(super::http::MAX_WATCH_SECONDS));
    let bookmarks = q.flag("allowWatchBookmarks") && q.get("allowWatchBookmarks").is_some();
    let mut enc = Encoder {
        plural: t.res.plural,
        as_table,
        include: table::IncludeObject::parse(q.get("includeObject")),
        sent_columns: false,
    };
    let kind = t.res.kind;
    let api_version = t.res.api_version();

    // Initial state: the objects as ADDED events, when no resume point was given (or
    // sendInitialEvents asked for them), then changes after the list's revision.
    let mut initial = Vec::new();
    let start = match from {
        Some(r) if !send_initial => r,
        _ => {
            let list = api.list(&Target { sub: None, name: None, ..t.clone() }, &strip_paging(q), false)?;
            for item in list["items"].as_array().into_iter().flatten() {
                initial.push(enc.event("ADDED", item.clone()));
            }
            let rev = list
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            if send_initial {
                let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rev.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                initial.push(enc.event("BOOKMARK", bm));
            }
            rev
        }
    };
    let prefix = t.res.list_prefix(t.namespace.as_deref());
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        // Counted against its identity for as long as it runs.
        let _slot = slot;
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut changed = api.store.hub().subscribe();
        let mut cursor = start;
        loop {
            changed.borrow_and_update();
            let now = api.store.revision();
            match api.store.hub().since(cursor, &prefix) {
                Err(e) => {
                    let status =
                        ApiError::gone(format!("too old resource version: {} ({})", e.asked, e.oldest)).to_status();
                    let _ = tx.send(enc.event("ERROR", status)).await;
                    return;
                }
                Ok(events) => {
                    for ev in events {
                        cursor = cursor.max(ev.revision);
                        if filter.labels.is_empty() && filter.fields.is_empty() {
                            // No selector: the type follows from the event, the bytes need no parse.
                            let (kind, stored) = match (&ev.value, &ev.prev) {
                                (Some(v), None) => ("ADDED", v),
                                (Some(v), Some(_)) => ("MODIFIED", v),
                                (None, Some(p)) => ("DELETED", p),
                                (None, None) => continue,
                            };
                            let line = api.store.open_value(&ev.key, stored).ok().and_then(|raw| {
                                enc.stored_event(kind, &raw, ev.revision)
                                    .or_else(|| object_at(&raw, ev.revision).ok().map(|o| enc.event(kind, o)))
                            });
                            if let Some(line) = line
                                && tx.send(line).await.is_err()
                            {
                                return;
                            }
                            continue;
                        }
                        let decode = |b: &Option<Arc<[u8]>>, rev: u64| -> Option<Value> {
                            let raw = api.store.open_value(&ev.key, b.as_deref()?).ok()?;
                            object_at(&raw, rev).ok()
                        };
                        let new = decode(&ev.value, ev.revision);
                        let old = if ev.value.is_none() {
                            decode(&ev.prev, ev.revision)
                        } else if filter.labels.is_empty() && filter.fields.is_empty() {
                            None
                        } else {
                            decode(&ev.prev, ev.revision)
                        };
                        let old_match = match (&ev.prev, &old) {
                            (None, _) => false,
                            (Some(_), Some(o)) => filter.matches(o),
                            (Some(_), None) => true,
                        };
                        let line = match (new, old) {
                            (Some(n), _) if ev.prev.is_none() => filter.matches(&n).then(|| enc.event("ADDED", n)),
                            (Some(n), _) => match (old_match, filter.matches(&n)) {
                                (true, true) => Some(enc.event("MODIFIED", n)),
                                (false, true) => Some(enc.event("ADDED", n)),
                                (true, false) => Some(enc.event("DELETED", n)),
                                (false, false) => None,
                            },
                            (None, Some(o)) => old_match.then(|| enc.event("DELETED", o)),
                            (None, None) => None,
                        };
                        if let Some(line) = line
                            && tx.send(line).await.is_err()
                        {
                            return;
                        }
                    }
                    cursor = cursor.max(now);
                }
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(BOOKMARK_EVERY), if bookmarks => {
                    let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": cursor.to_string()}});
                    if tx.send(enc.event("BOOKMARK", bm)).await.is_err() { return }
                }
                _ = &mut deadline => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let body = StreamBody::new(stream).boxed();
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn strip_paging(q: &Query) -> Query {
    let mut m = q.0.clone();
    m.remove("limit");
    m.remove("continue");
    Query(m)
}
