//! Counts of what each key (an identity, an address) holds open, with a limit: in-flight
//! requests and watches per identity, connections per address. A [`Slot`] is one unit,
//! given back when dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Open units per key.
pub struct Slots<K: Hash + Eq + Clone>(Arc<Mutex<HashMap<K, usize>>>);

impl<K: Hash + Eq + Clone> Default for Slots<K> {
    fn default() -> Self {
        Slots(Arc::new(Mutex::new(HashMap::new())))
    }
}

fn table<K>(m: &Mutex<HashMap<K, usize>>) -> MutexGuard<'_, HashMap<K, usize>> {
    // Only counters live under this lock: after a panic they are still right.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// One more unit for `key`, or `None` when it holds `limit` already.
    pub fn take(&self, key: &K, limit: usize) -> Option<Slot<K>> {
        let mut t = table(&self.0);
        let n = t.entry(key.clone()).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Slot { table: self.0.clone(), key: key.clone() })
    }
}

/// One unit held by a key until dropped.
pub struct Slot<K: Hash + Eq + Clone> {
    table: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut t = table(&self.table);
        if let Some(n) = t.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_up_to_its_limit_and_gets_units_back_when_dropped() {
        let slots = Slots::default();
        let a = slots.take(&"a", 2).unwrap();
        let _a2 = slots.take(&"a", 2).unwrap();
        assert!(slots.take(&"a", 2).is_none());
        assert!(slots.take(&"b", 2).is_some(), "keys count apart");
        drop(a);
        assert!(slots.take(&"a", 2).is_some());
        assert!(table(&slots.0).get("b").is_none(), "a key with nothing open leaves the table");
    }
}
