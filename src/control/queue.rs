//! The work queue of one control loop (client-go's rate-limited work queue): a key is
//! queued at most once; a key that changes while it is being reconciled is queued again
//! when that reconcile ends, never dropped; failures come back after an exponential
//! back-off.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    dirty: HashSet<String>,
    processing: HashSet<String>,
    failures: HashMap<String, u32>,
}

/// Keys waiting for a reconcile.
#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    ready: Notify,
}

/// The back-off after `failures` failures in a row: 5 ms doubling up to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_millis(5u64.saturating_mul(1 << failures.min(16))).min(Duration::from_secs(300))
}

impl WorkQueue {
    pub fn new() -> Arc<WorkQueue> {
        Arc::new(WorkQueue::default())
    }

    /// Marks `key` as needing a reconcile.
    pub fn add(&self, key: &str) {
        let Ok(mut st) = self.state.lock() else { return };
        if !st.dirty.insert(key.to_string()) {
            return;
        }
        if !st.processing.contains(key) {
            st.queue.push_back(key.to_string());
            drop(st);
            self.ready.notify_one();
        }
    }

    /// Queues `key` after `delay` (a deadline the controller is waiting for).
    pub fn add_after(self: &Arc<Self>, key: &str, delay: Duration) {
        let me = Arc::clone(self);
        let key = key.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            me.add(&key);
        });
    }

    /// Queues `key` again after its back-off, which doubles with each failure in a row, and
    /// never sooner than `min` (what the server asked for: a 429's Retry-After, or a full
    /// disk that will not clear in milliseconds).
    pub fn retry_at_least(self: &Arc<Self>, key: &str, min: Duration) {
        let failures = match self.state.lock() {
            Ok(mut st) => {
                let n = st.failures.entry(key.to_string()).or_default();
                *n += 1;
                *n
            }
            Err(_) => return,
        };
        self.add_after(key, backoff(failures).max(min));
    }

    /// Clears the failure count of a key that reconciled.
    pub fn forget(&self, key: &str) {
        if let Ok(mut st) = self.state.lock() {
            st.failures.remove(key);
        }
    }

    /// The next key to reconcile; the caller must call [`WorkQueue::done`] with it.
    pub async fn next(&self) -> String {
        loop {
            let notified = self.ready.notified();
            if let Ok(mut st) = self.state.lock()
                && let Some(key) = st.queue.pop_front()
            {
                st.dirty.remove(&key);
                st.processing.insert(key.clone());
                if !st.queue.is_empty() {
                    self.ready.notify_one();
                }
                return key;
            }
            notified.await;
        }
    }

    /// Ends a reconcile of `key`; if it changed meanwhile it is queued again.
    pub fn done(&self, key: &str) {
        let Ok(mut st) = self.state.lock() else { return };
        st.processing.remove(key);
        if st.dirty.contains(key) {
            st.queue.push_back(key.to_string());
            drop(st);
            self.ready.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_changed_mid_reconcile_comes_back_once() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        let first = q.next().await;
        assert_eq!(first, "a");
        q.add("a");
        q.add("a");
        assert_eq!(q.next().await, "b", "a is being reconciled, so it waits");
        q.done("b");
        q.done("a");
        assert_eq!(q.next().await, "a");
        q.done("a");
        assert!(tokio::time::timeout(Duration::from_millis(20), q.next()).await.is_err(), "nothing left");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(10));
        assert_eq!(backoff(4), Duration::from_millis(80));
        assert_eq!(backoff(40), Duration::from_secs(300));
    }
}
