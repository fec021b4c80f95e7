//! The bounded, in-memory history of changes that watches replay and follow.
//!
//! Filled by the state machine's apply path (never by polling). Nothing here is written to
//! disk: after a restart history starts at the current revision and older resume points get
//! 410 Gone, which every Kubernetes client answers by listing again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// One committed change of one key.
#[derive(Debug)]
pub struct Event {
    /// The store revision the change was applied at (the object's new resourceVersion).
    pub revision: u64,
    pub key: String,
    /// The stored bytes after the change; `None` when the key was deleted.
    pub value: Option<Arc<[u8]>>,
    /// The stored bytes before the change; `None` when the key was created.
    pub prev: Option<Arc<[u8]>>,
    /// The revision `prev` was written at (0 when there is no `prev`): what a list at an
    /// earlier revision reports as that version's `resourceVersion`.
    pub prev_rev: u64,
}

impl Event {
    fn size(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, |v| v.len()) + self.prev.as_ref().map_or(0, |v| v.len()) + 64
    }
}

/// Asked for changes older than the retained history.
#[derive(Debug, thiserror::Error)]
#[error("too old resource version: {asked} ({oldest})")]
pub struct Expired {
    pub asked: u64,
    pub oldest: u64,
}

struct History {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    /// Every event with a revision above this one is retained.
    complete_after: u64,
}

/// Event history plus a signal that wakes watchers when the revision moves.
pub struct WatchHub {
    history: Mutex<History>,
    max_events: usize,
    max_bytes: usize,
    revision: watch::Sender<u64>,
}

impl WatchHub {
    /// A hub whose history starts at `revision` and keeps at most `max_events` events and
    /// about `max_bytes` bytes of them.
    pub fn new(revision: u64, max_events: usize, max_bytes: usize) -> WatchHub {
        WatchHub {
            history: Mutex::new(History { events: VecDeque::new(), bytes: 0, complete_after: revision }),
            max_events,
            max_bytes,
            revision: watch::channel(revision).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the events of one applied entry and moves the revision to `revision`.
    pub fn publish(&self, revision: u64, events: Vec<Event>) {
        {
            let mut h = self.lock();
            for e in events {
                h.bytes += e.size();
                h.events.push_back(Arc::new(e));
            }
            while h.events.len() > self.max_events || (h.bytes > self.max_bytes && h.events.len() > 1) {
                if let Some(old) = h.events.pop_front() {
                    h.bytes -= old.size();
                    h.complete_after = old.revision;
                }
            }
        }
        self.revision.send_replace(revision);
    }

    /// Events with a revision above `after` whose key starts with `prefix`.
    pub fn since(&self, after: u64, prefix: &str) -> Result<Vec<Arc<Event>>, Expired> {
        let h = self.lock();
        if after < h.complete_after {
            return Err(Expired { asked: after, oldest: h.complete_after });
        }
        let start = h.events.partition_point(|e| e.revision <= after);
        Ok(h.events.range(start..).filter(|e| e.key.starts_with(prefix)).cloned().collect())
    }

    /// A receiver that changes whenever a new revision is applied.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// The last applied revision.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(rev: u64, key: &str) -> Event {
        Event { revision: rev, key: key.into(), value: Some(Arc::from(&b"x"[..])), prev: None, prev_rev: 0 }
    }

    #[test]
    fn replays_after_revision_and_filters_prefix() {
        let hub = WatchHub::new(10, 100, 1 << 20);
        hub.publish(11, vec![ev(11, "r/pods/a")]);
        hub.publish(12, vec![ev(12, "r/services/a")]);
        hub.publish(13, vec![ev(13, "r/pods/b")]);
        let got: Vec<u64> = hub.since(10, "r/pods/").unwrap().iter().map(|e| e.revision).collect();
        assert_eq!(got, vec![11, 13]);
        let got: Vec<u64> = hub.since(11, "r/").unwrap().iter().map(|e| e.revision).collect();
        assert_eq!(got, vec![12, 13]);
        assert_eq!(hub.revision(), 13);
    }

    #[test]
    fn compacted_history_is_expired() {
        let hub = WatchHub::new(0, 2, 1 << 20);
        for r in 1..=5 {
            hub.publish(r, vec![ev(r, "k")]);
        }
        assert!(hub.since(2, "").is_err());
        assert_eq!(hub.since(3, "").unwrap().len(), 2);
    }
}
