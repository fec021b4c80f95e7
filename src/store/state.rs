//! The Raft state machine: versioned objects in one sled tree.
//!
//! Each applied entry becomes one atomic sled batch holding its object changes *and* the new
//! `last_applied`, so a crash can never leave one without the other. sled is not fsynced
//! here: the Raft log is the durable record, and entries after the persisted `last_applied`
//! are applied again at start (idempotently, since preconditions are checked against the
//! state they produced).
//!
//! Keys: `o/<key>` objects (value = `mod_rev u64 BE | create_rev u64 BE | bytes`),
//! `m/applied`, `m/membership`.

// openraft's StorageError is large by design; it is what its traits return.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::raft::{NodeId, TypeConfig};
use super::watch::{Event, WatchHub};

const OBJ: &[u8] = b"o/";
const APPLIED: &[u8] = b"m/applied";
const MEMBERSHIP: &[u8] = b"m/membership";

/// One change proposed through Raft: all its operations apply, or none.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Txn {
    pub ops: Vec<Op>,
}

/// Write or delete one key, if its current version is what the writer saw.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Op {
    pub key: String,
    pub expect: Expect,
    /// New bytes; `None` deletes the key.
    pub value: Option<Vec<u8>>,
}

/// The compare half of compare-and-swap.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Any,
    Absent,
    /// The key exists and was last modified at this revision.
    ModRev(u64),
}

/// What applying a [`Txn`] did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum TxnResult {
    Applied {
        revision: u64,
    },
    /// A precondition failed; nothing was written. `current` is the key's mod revision.
    Failed {
        key: String,
        current: Option<u64>,
    },
}

/// A stored object version as read back.
#[derive(Clone, Debug)]
pub struct Record {
    pub key: String,
    pub mod_rev: u64,
    pub value: Vec<u8>,
}

pub(crate) fn encode_record(mod_rev: u64, create_rev: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + value.len());
    v.extend_from_slice(&mod_rev.to_be_bytes());
    v.extend_from_slice(&create_rev.to_be_bytes());
    v.extend_from_slice(value);
    v
}

/// Splits stored bytes into `(mod_rev, create_rev, value)`.
pub(crate) fn decode_record(raw: &[u8]) -> Option<(u64, u64, &[u8])> {
    let m = u64::from_be_bytes(raw.get(0..8)?.try_into().ok()?);
    let c = u64::from_be_bytes(raw.get(8..16)?.try_into().ok()?);
    Some((m, c, &raw[16..]))
}

/// State shared between the state machine (writer) and the store's readers.
pub struct Shared {
    pub tree: sled::Tree,
    pub db: sled::Db,
    /// Held for writing while an entry is applied, for reading while a list is taken, so a
    /// list is a consistent snapshot at its revision.
    pub apply_lock: RwLock<()>,
    pub hub: Arc<WatchHub>,
}

impl Shared {
    pub fn get(&self, key: &str) -> sled::Result<Option<Record>> {
        let k = [OBJ, key.as_bytes()].concat();
        Ok(self.tree.get(k)?.and_then(|raw| {
            decode_record(&raw).map(|(m, _, v)| Record { key: key.to_string(), mod_rev: m, value: v.to_vec() })
        }))
    }

    /// All records under `prefix` (after `start_after`, when given), at most `limit`, and the
    /// revision they were read at.
    pub fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> sled::Result<(Vec<Record>, u64)> {
        let _guard = self.apply_lock.read().unwrap_or_else(|p| p.into_inner());
        let revision = self.hub.revision();
        let full_prefix = [OBJ, prefix.as_bytes()].concat();
        let mut out = Vec::new();
        let iter = match start_after {
            Some(after) => {
                let mut start = [OBJ, after.as_bytes()].concat();
                start.push(0);
                self.tree.range(start..)
            }
            None => self.tree.range(full_prefix.clone()..),
        };
        for kv in iter {
            let (k, raw) = kv?;
            if !k.starts_with(&full_prefix) || out.len() >= limit {
                break;
            }
            let key = String::from_utf8_lossy(&k[OBJ.len()..]).into_owned();
            if let Some((m, _, v)) = decode_record(&raw) {
                out.push(Record { key, mod_rev: m, value: v.to_vec() });
            }
        }
        Ok((out, revision))
    }

    fn read_meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        match self.tree.get(key).map_err(|e| StorageIOError::read_state_machine(&e))? {
            Some(raw) => {
                bincode::deserialize(&raw).map(Some).map_err(|e| StorageIOError::read_state_machine(&e).into())
            }
            None => Ok(None),
        }
    }
}

/// The revision recorded as applied in `tree` (0 for a new store).
pub fn applied_revision(tree: &sled::Tree) -> u64 {
    tree.get(APPLIED)
        .ok()
        .flatten()
        .and_then(|raw| bincode::deserialize::<LogId<NodeId>>(&raw).ok())
        .map_or(0, |l| l.index)
}

/// The openraft state machine over [`Shared`].
pub struct StateMachine {
    pub shared: Arc<Shared>,
}

impl StateMachine {
    /// Applies one entry as one sled batch and returns its events.
    fn apply_entry(&self, entry: &Entry<TypeConfig>) -> Result<(TxnResult, Vec<Event>), StorageError<NodeId>> {
        let revision = entry.log_id.index;
        let mut batch = sled::Batch::default();
        let mut events = Vec::new();
        let err = |e: &dyn std::fmt::Display| {
            StorageError::from(StorageIOError::apply(entry.log_id, &std::io::Error::other(e.to_string())))
        };
        let mut result = TxnResult::Applied { revision };
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Membership(m) => {
                let sm = StoredMembership::new(Some(entry.log_id), m.clone());
                batch.insert(MEMBERSHIP, bincode::serialize(&sm).map_err(|e| err(&e))?);
            }
            EntryPayload::Normal(txn) => {
                let mut planned = Vec::new();
                for op in &txn.ops {
                    let k = [OBJ, op.key.as_bytes()].concat();
                    let cur = self.shared.tree.get(&k).map_err(|e| err(&e))?;
                    let cur_rec = cur.as_ref().and_then(|raw| decode_record(raw));
                    let ok = match op.expect {
                        Expect::Any => true,
                        Expect::Absent => cur_rec.is_none(),
                        Expect::ModRev(r) => cur_rec.is_some_and(|(m, _, _)| m == r),
                    };
                    if !ok {
                        result = TxnResult::Failed { key: op.key.clone(), current: cur_rec.map(|(m, _, _)| m) };
                        planned.clear();
                        break;
                    }
                    planned.push((k, op, cur_rec.map(|(_, c, v)| (c, Arc::<[u8]>::from(v)))));
                }
                for (k, op, cur) in planned {
                    let prev = cur.as_ref().map(|(_, v)| v.clone());
                    match &op.value {
                        Some(v) => {
                            let create = cur.as_ref().map_or(revision, |(c, _)| *c);
                            batch.insert(k, encode_record(revision, create, v));
                            events.push(Event { revision, key: op.key.clone(), value: Some(Arc::from(&v[..])), prev });
                        }
                        None => {
                            if cur.is_some() {
                                batch.remove(k);
                                events.push(Event { revision, key: op.key.clone(), value: None, prev });
                            }
                        }
                    }
                }
            }
        }
        batch.insert(APPLIED, bincode::serialize(&entry.log_id).map_err(|e| err(&e))?);
        self.shared.tree.apply_batch(batch).map_err(|e| err(&e))?;
        Ok((result, events))
    }
}

/// A full copy of the state machine, for a follower that is too far behind.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Builds snapshots from a consistent view of the tree.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (pairs, last, membership) = {
            let _g = self.shared.apply_lock.write().unwrap_or_else(|p| p.into_inner());
            let mut pairs = Vec::new();
            for kv in self.shared.tree.iter() {
                let (k, v) = kv.map_err(|e| StorageIOError::read_state_machine(&e))?;
                pairs.push((k.to_vec(), v.to_vec()));
            }
            let last: Option<LogId<NodeId>> = self.shared.read_meta(APPLIED)?;
            let membership: StoredMembership<NodeId, openraft::BasicNode> =
                self.shared.read_meta(MEMBERSHIP)?.unwrap_or_default();
            (pairs, last, membership)
        };
        let data = bincode::serialize(&SnapshotData { pairs }).map_err(|e| StorageIOError::read_state_machine(&e))?;
        let snapshot_id = format!("{}", last.map_or(0, |l| l.index));
        Ok(Snapshot {
            meta: SnapshotMeta { last_log_id: last, last_membership: membership, snapshot_id },
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, openraft::BasicNode>), StorageError<NodeId>> {
        let applied = self.shared.read_meta(APPLIED)?;
        let membership = self.shared.read_meta(MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<TxnResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            let result = {
                let _g = self.shared.apply_lock.write().unwrap_or_else(|p| p.into_inner());
                let (result, events) = self.apply_entry(&entry)?;
                self.shared.hub.publish(entry.log_id.index, events);
                result
            };
            out.push(result);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { shared: self.shared.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data: SnapshotData = bincode::deserialize(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let _g = self.shared.apply_lock.write().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        for kv in self.shared.tree.iter() {
            let (k, _) = kv.map_err(|e| StorageIOError::write_state_machine(&e))?;
            batch.remove(k);
        }
        for (k, v) in data.pairs {
            batch.insert(k, v);
        }
        self.shared.tree.apply_batch(batch).map_err(|e| StorageIOError::write_state_machine(&e))?;
        let rev = meta.last_log_id.map_or(0, |l| l.index);
        self.shared.hub.publish(rev, Vec::new());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let mut b = self.get_snapshot_builder().await;
        b.build_snapshot().await.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let raw = encode_record(7, 3, b"{}");
        assert_eq!(decode_record(&raw), Some((7, 3, &b"{}"[..])));
        assert_eq!(decode_record(b"short"), None);
    }
}
