//! Node heartbeats kept off the flash. Every agent renews its Lease in `kube-node-lease`
//! every 10 s, as the kubelet does; written through the store, each renewal is an fsynced
//! Raft entry and a state-machine write, several pages of an SD card every 10 s per node
//! (about 10 MB an hour for an idle one-node cluster, measured with `scripts/bench-board`).
//!
//! A renewal that changes nothing but `spec.renewTime` is kept here, in memory, and
//! answered as written; the store gets the Lease again once its stored renewal is
//! [`PERSIST_EVERY`] old, or at once when anything else in it changes. Reads of Leases (get
//! and list) and the node lifecycle controller see the renewal in memory. What is given up:
//! a renewal kept here changes neither the Lease's `resourceVersion` nor makes a watch
//! event (a watcher of node Leases sees one every [`PERSIST_EVERY`]), and after a restart
//! the stored renewals are up to that old, which the node lifecycle controller allows for
//! (it counts silence from its own start at the earliest). Node Leases are heartbeats with
//! one writer each, the node itself; nothing else lives in `kube-node-lease`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

/// The namespace of node heartbeats.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// How old a Lease's stored renewal may get before a renewal is written to the store again.
pub const PERSIST_EVERY: Duration = Duration::from_secs(300);

/// The latest renewal of each node Lease that was not written to the store.
#[derive(Default)]
pub struct Heartbeats {
    renewed: Mutex<HashMap<String, String>>,
}

fn epoch_micros(rfc3339: &str) -> Option<i64> {
    let t: jiff::Timestamp = rfc3339.parse().ok()?;
    Some(t.as_microsecond())
}

fn renew_time(lease: &Value) -> Option<&str> {
    lease.pointer("/spec/renewTime").and_then(Value::as_str)
}

/// Whether `old` and `new` differ in nothing but `spec.renewTime`.
fn only_renewed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("renewTime");
        }
        v
    };
    strip(old) == strip(new)
}

impl Heartbeats {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // Only renewal times live here: a panic while holding the lock leaves them usable.
        self.renewed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps the renewal `old` -> `new` of the Lease `name` in memory when it changes only
    /// the renewal time and the stored one is recent; false when it must be written.
    pub fn absorb(&self, name: &str, old: &Value, new: &Value) -> bool {
        let (Some(stored), Some(now)) = (renew_time(old).and_then(epoch_micros), renew_time(new)) else {
            return false;
        };
        let Some(now_micros) = epoch_micros(now) else { return false };
        let recent = now_micros >= stored && now_micros - stored < PERSIST_EVERY.as_micros() as i64;
        if !recent || !only_renewed(old, new) {
            self.table().remove(name);
            return false;
        }
        self.table().insert(name.to_string(), now.to_string());
        true
    }

    /// The latest renewal of the Lease `name` kept in memory.
    pub fn renewed(&self, name: &str) -> Option<String> {
        self.table().get(name).cloned()
    }

    /// Puts the renewal kept in memory into `lease` (a node Lease read from the store),
    /// when it is later than the stored one.
    pub fn overlay(&self, lease: &mut Value) {
        let Some(name) = lease.pointer("/metadata/name").and_then(Value::as_str) else { return };
        let Some(kept) = self.renewed(name) else { return };
        let stored = renew_time(lease).and_then(epoch_micros);
        if epoch_micros(&kept) > stored
            && let Some(spec) = lease.get_mut("spec").and_then(Value::as_object_mut)
        {
            spec.insert("renewTime".into(), Value::String(kept));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lease(renew: &str) -> Value {
        json!({"metadata": {"name": "n1", "namespace": NODE_LEASE_NAMESPACE, "resourceVersion": "7"},
               "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40, "renewTime": renew}})
    }

    #[test]
    fn renewals_stay_in_memory_until_the_stored_one_is_old() {
        let h = Heartbeats::default();
        let stored = lease("2026-12-07T10:00:00.000000Z");
        assert!(h.absorb("n1", &stored, &lease("2026-12-07T10:00:10.000000Z")));
        assert!(h.absorb("n1", &stored, &lease("2026-12-07T10:04:59.000000Z")));
        let mut read = stored.clone();
        h.overlay(&mut read);
        assert_eq!(read["spec"]["renewTime"], "2026-12-07T10:04:59.000000Z");
        assert_eq!(read["metadata"]["resourceVersion"], "7", "the stored version stays");
        assert!(!h.absorb("n1", &stored, &lease("2026-12-07T10:05:00.000000Z")), "five minutes on: written");
        assert_eq!(h.renewed("n1"), None);
    }

    #[test]
    fn any_other_change_is_written_at_once() {
        let h = Heartbeats::default();
        let stored = lease("2026-12-07T10:00:00.000000Z");
        let mut other = lease("2026-12-07T10:00:10.000000Z");
        other["spec"]["holderIdentity"] = json!("n2");
        assert!(!h.absorb("n1", &stored, &other));
        let mut labelled = lease("2026-12-07T10:00:10.000000Z");
        labelled["metadata"]["labels"] = json!({"a": "b"});
        assert!(!h.absorb("n1", &stored, &labelled));
        assert!(!h.absorb("n1", &stored, &lease("not a time")));
        assert!(!h.absorb("n1", &stored, &lease("2026-12-07T09:59:00.000000Z")), "going back in time");
    }

    #[test]
    fn a_newer_stored_renewal_wins_over_memory() {
        let h = Heartbeats::default();
        assert!(h.absorb("n1", &lease("2026-12-07T10:00:00.000000Z"), &lease("2026-12-07T10:00:10.000000Z")));
        let mut newer = lease("2026-12-07T10:06:00.000000Z");
        h.overlay(&mut newer);
        assert_eq!(newer["spec"]["renewTime"], "2026-12-07T10:06:00.000000Z");
    }
}
