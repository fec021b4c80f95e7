//! The Raft state machine: versioned objects in sled, behind an in-memory overlay.
//!
//! Applying an entry writes its changes into the overlay (and the watch history) only. A
//! checkpoint, every few seconds, writes a copy of the overlay into sled as ONE atomic batch
//! (no lock held while sled is written; only what is unchanged since the copy then leaves
//! the overlay), together with the `last_applied` it reflects, so sled never holds changes
//! without the matching `last_applied` and vice versa. Why: sled 0.34 rewrites a whole
//! B-tree leaf per update (measured ~18 KB written per 1.3 KB object), and flash wears; a
//! batch rewrites each leaf once, and a key updated many times between checkpoints (leases,
//! statuses) is written once. Nothing is lost by waiting: the Raft log is the durable
//! record, and entries after sled's `last_applied` are applied again at start.
//!
//! Reads look in the overlay first. A one-key read leaves the overlay's lock before it reads
//! sled, and recent sled reads are kept (`SledReads`): sled's batches lock out its readers
//! while they apply, and a reader holding the overlay meanwhile would stall every apply.
//! Lists still read sled under the overlay's read lock, which keeps a list and its
//! revision one consistent snapshot.
//!
//! Snapshots (which let openraft purge the log) first make sled durable (flush + fsync of
//! its files), then save a copy of the tree in `snapshot.bin`.
//!
//! Keys in sled: `o/<key>` the index (value = `mod_rev u64 BE | create_rev u64 BE | where`,
//! `where` being a reference into a value chunk, see `chunks.rs`, or, in stores written
//! before chunks, the value itself), the chunks, `m/applied`, `m/membership`.

// openraft's StorageError is large by design; it is what its traits return.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::chunks::{self, ChunkBuilder, ChunkUse, Chunks, ValueRef};
use super::raft::{NodeId, TypeConfig};
use super::watch::{Event, WatchHub};

/// What Raft asks the state machine on start: the last applied log id and the membership.
type AppliedState = (Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>);

const OBJ: &[u8] = b"o/";
const APPLIED: &[u8] = b"m/applied";
const MEMBERSHIP: &[u8] = b"m/membership";
/// The store revision (`resourceVersion`) of the last applied change.
const REVISION: &[u8] = b"m/revision";
/// How many objects the index holds, kept by checkpoints: a page that reverted to an older
/// version on a damaged card shows as a count that does not match.
const COUNT: &[u8] = b"m/count";

/// How often the overlay moves into sled. Longer coalesces more rewrites of the same key
/// (leases, statuses) into one sled write; the overlay's memory is capped below anyway.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Wake the checkpointer early when the overlay holds more than this.
const OVERLAY_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Checkpoint inside the apply, making writers wait, only when the overlay outgrows this
/// (writes arriving faster than the checkpointer drains them).
const OVERLAY_HARD_MAX_BYTES: usize = 4 * OVERLAY_MAX_BYTES;

/// One change: all its operations apply, or none. A successful one takes the next store
/// revision.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Txn {
    pub ops: Vec<Op>,
}

/// What one Raft entry carries: the changes that were waiting together (group commit; see
/// `batch.rs`). They apply in order, each seeing the ones before it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct TxnBatch {
    pub txns: Vec<Txn>,
}

/// Write or delete one key, if its current version is what the writer saw.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Op {
    pub key: String,
    pub expect: Expect,
    /// New bytes; `None` deletes the key. Encoded as one byte string: as a sequence, serde
    /// would write each byte by itself, which cost the Raft log's encoding more than its
    /// compression. (bincode writes both forms alike, so entries already logged still read.)
    #[serde(with = "serde_bytes")]
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

/// Marks an index entry whose value lives in a chunk: `REF | chunk u64 LE | offset u32 LE |
/// len u32 LE`. Inline values start with a codec tag (0, 1) or a sealed prefix (`b`), never
/// with this byte.
const REF: u8 = 0xC1;

fn encode_ref(mod_rev: u64, create_rev: u64, r: ValueRef) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + 17);
    v.extend_from_slice(&mod_rev.to_be_bytes());
    v.extend_from_slice(&create_rev.to_be_bytes());
    v.push(REF);
    v.extend_from_slice(&r.chunk.to_le_bytes());
    v.extend_from_slice(&r.offset.to_le_bytes());
    v.extend_from_slice(&r.len.to_le_bytes());
    v
}

/// The chunk reference of an index entry, when it has one.
fn decode_ref(raw: &[u8]) -> Option<ValueRef> {
    let rest = raw.get(16..)?;
    if rest.len() != 17 || rest[0] != REF {
        return None;
    }
    Some(ValueRef {
        chunk: u64::from_le_bytes(rest[1..9].try_into().ok()?),
        offset: u32::from_le_bytes(rest[9..13].try_into().ok()?),
        len: u32::from_le_bytes(rest[13..17].try_into().ok()?),
    })
}

/// What one chunk entry costs its chunk, in the unit chunk use is counted in.
fn entry_bytes(key: &str, len: u32) -> u64 {
    6 + key.len() as u64 + u64::from(len)
}

fn record(key: String, raw: &[u8]) -> Option<Record> {
    decode_record(raw).map(|(m, _, v)| Record { key, mod_rev: m, value: v.to_vec() })
}

/// At most this many chunks are compacted per checkpoint round.
const COMPACT_CHUNKS_PER_ROUND: usize = 8;

/// Packs a checkpoint's values into chunks, each added to the batch once full.
#[derive(Default)]
struct Packer {
    /// The id the chunk being filled will take.
    next: u64,
    open: ChunkBuilder,
    /// Chunks written to the batch, with their raw bytes.
    sealed: Vec<(u64, Vec<u8>)>,
}

impl Packer {
    fn push(&mut self, batch: &mut sled::Batch, key: &str, value: &[u8]) -> sled::Result<ValueRef> {
        if !self.open.is_empty() && self.open.len() + value.len() > chunks::CHUNK_BYTES {
            self.seal(batch)?;
        }
        let (offset, len) = self.open.push(key, value);
        Ok(ValueRef { chunk: self.next, offset, len })
    }

    fn seal(&mut self, batch: &mut sled::Batch) -> sled::Result<()> {
        if self.open.is_empty() {
            return Ok(());
        }
        let (stored, raw) = std::mem::take(&mut self.open).finish().map_err(sled::Error::Io)?;
        batch.insert(chunks::chunk_key(self.next), stored);
        batch.insert(chunks::size_key(self.next), &(raw.len() as u64).to_le_bytes());
        self.sealed.push((self.next, raw));
        self.next += 1;
        Ok(())
    }
}

/// Applied changes not yet checkpointed into sled.
#[derive(Default)]
struct Overlay {
    /// key -> encoded record, or `None` for a deletion.
    pending: BTreeMap<String, Option<Arc<[u8]>>>,
    bytes: usize,
    /// The last applied log id and membership, when newer than sled's.
    applied: Option<LogId<NodeId>>,
    membership: Option<StoredMembership<NodeId, BasicNode>>,
    /// The store revision, when newer than sled's.
    revision: Option<u64>,
}

/// What one checkpoint writes into sled: a copy of the overlay taken under its lock, so
/// the writing itself holds no lock readers or applies wait for.
struct OverlayCopy {
    pending: Vec<(String, Option<Arc<[u8]>>)>,
    applied: Option<LogId<NodeId>>,
    membership: Option<StoredMembership<NodeId, BasicNode>>,
    revision: Option<u64>,
}

impl Overlay {
    fn copy(&self) -> OverlayCopy {
        OverlayCopy {
            pending: self.pending.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            applied: self.applied,
            membership: self.membership.clone(),
            revision: self.revision,
        }
    }

    /// Drops what `written` put into sled, keeping whatever was applied since the copy.
    fn forget_written(&mut self, written: &OverlayCopy) {
        for (k, v) in &written.pending {
            let same = match (self.pending.get(k), v) {
                (Some(Some(now)), Some(then)) => Arc::ptr_eq(now, then),
                (Some(None), None) => true,
                _ => false,
            };
            if same {
                self.pending.remove(k);
            }
        }
        self.bytes = self.pending.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len())).sum();
        if self.applied == written.applied {
            self.applied = None;
        }
        if self.membership == written.membership {
            self.membership = None;
        }
        if self.revision == written.revision {
            self.revision = None;
        }
    }
}

/// At most this many bytes of values are kept in [`SledReads`].
const SLED_READS_MAX_BYTES: usize = 1024 * 1024;
/// Values bigger than this are not kept there.
const SLED_READ_MAX_VALUE: usize = 64 * 1024;

/// Values lately read from sled (a namespace every create checks, a node its agent
/// updates). A sled read costs a tree walk and a chunk lookup, and waits while a checkpoint
/// applies its batch: sled's batches lock out readers for their whole length, which under
/// load stalled every request that read a key from sled.
///
/// The overlay always answers first; a key's entry here goes when a checkpoint writes the
/// key to sled, and an entry is only added if no checkpoint finished since the read began
/// (the generation), so an entry never holds a value older than sled's.
#[derive(Default)]
struct SledReads {
    inner: std::sync::Mutex<SledReadsInner>,
}

#[derive(Default)]
struct SledReadsInner {
    generation: u64,
    values: HashMap<String, Arc<[u8]>>,
    bytes: usize,
}

impl SledReads {
    fn lock(&self) -> std::sync::MutexGuard<'_, SledReadsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value kept for `key`, or the generation to offer a fresh read with.
    fn lookup(&self, key: &str) -> Result<Arc<[u8]>, u64> {
        let inner = self.lock();
        inner.values.get(key).cloned().ok_or(inner.generation)
    }

    /// Keeps a value read from sled, unless a checkpoint finished since `generation`.
    fn offer(&self, key: &str, generation: u64, value: &Arc<[u8]>) {
        if value.len() > SLED_READ_MAX_VALUE {
            return;
        }
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.bytes + value.len() > SLED_READS_MAX_BYTES {
            inner.values.clear();
            inner.bytes = 0;
        }
        inner.bytes += value.len();
        if let Some(old) = inner.values.insert(key.to_string(), Arc::clone(value)) {
            inner.bytes -= old.len();
        }
    }

    /// Drops the values of keys whose sled value changed.
    fn forget<'a>(&self, keys: impl Iterator<Item = &'a String>) {
        let mut inner = self.lock();
        inner.generation += 1;
        for k in keys {
            if let Some(old) = inner.values.remove(k) {
                inner.bytes -= old.len();
            }
        }
    }

    fn forget_all(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.values.clear();
        inner.bytes = 0;
    }
}

/// State shared between the state machine (the writer), the checkpointer and readers.
pub struct Shared {
    tree: sled::Tree,
    db: sled::Db,
    dir: PathBuf,
    overlay: RwLock<Overlay>,
    sled_reads: SledReads,
    /// Held by whatever writes objects into sled (checkpoints, chunk compaction, installing
    /// a snapshot), so sled changes under one writer at a time; taken before the overlay's
    /// lock, never after.
    sled_writer: std::sync::Mutex<()>,
    /// Wakes the checkpointer before its time; its receiver is the checkpointer's.
    wake_checkpointer: std::sync::mpsc::SyncSender<()>,
    woken: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    pub hub: Arc<WatchHub>,
    chunks: Chunks,
    next_chunk: std::sync::atomic::AtomicU64,
    /// Objects in sled's index, as the next checkpoint writes to `m/count`.
    objects: std::sync::atomic::AtomicU64,
    /// The store's free-space guard: checkpoints wait while it has no room for them.
    space: std::sync::OnceLock<Arc<super::space::SpaceGuard>>,
}

fn sm_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

/// Fsyncs every file under `dir`, and `dir` itself.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            std::fs::File::open(&p)?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

fn stored_revision(tree: &sled::Tree) -> sled::Result<u64> {
    Ok(tree.get(REVISION)?.and_then(|raw| bincode::deserialize::<u64>(&raw).ok()).unwrap_or(0))
}

/// How sled is opened, always the same (sled refuses a different compression setting).
fn sled_config(db: &Path, cache_bytes: u64) -> sled::Config {
    sled::Config::new()
        .path(db)
        .cache_capacity(cache_bytes)
        // Values arrive already compressed, in chunks; what this compresses is the index:
        // its keys share long prefixes, and sled rewrites whole leaves of them (measured:
        // a new key costs sled a quarter of the flash with it on).
        .use_compression(true)
        // sled compresses every fragment with a fresh zstd context; at level 1 making that
        // context is cheapest, and index entries compress about as well.
        .compression_factor(1)
        // Durability comes from the Raft log; sled is made durable explicitly before the
        // log is purged. No timer-driven flushes.
        .flush_every_ms(None)
}

impl Shared {
    /// Opens the state machine database under `dir` (`db/` for sled, `snapshot.bin`).
    pub fn open(dir: &Path, cache_bytes: u64, watch_events: usize, watch_bytes: usize) -> sled::Result<Shared> {
        let db = sled_config(&dir.join("db"), cache_bytes).open()?;
        let tree = db.open_tree("state")?;
        let revision = stored_revision(&tree)?;
        let hub = Arc::new(WatchHub::new(revision, watch_events, watch_bytes));
        let (wake_checkpointer, woken) = std::sync::mpsc::sync_channel(1);
        let shared = Shared {
            tree,
            db,
            dir: dir.to_path_buf(),
            overlay: RwLock::default(),
            sled_reads: SledReads::default(),
            sled_writer: std::sync::Mutex::default(),
            wake_checkpointer,
            woken: std::sync::Mutex::new(Some(woken)),
            hub,
            chunks: Chunks::default(),
            next_chunk: std::sync::atomic::AtomicU64::new(0),
            objects: std::sync::atomic::AtomicU64::new(0),
            space: std::sync::OnceLock::new(),
        };
        shared.load_chunk_use()?;
        Ok(shared)
    }

    /// Rebuilds what is known of the chunks from the tree: their sizes, how much of each
    /// the index still refers to, and the next chunk id.
    fn load_chunk_use(&self) -> sled::Result<()> {
        self.chunks.reset();
        for kv in self.tree.scan_prefix(chunks::SIZE_PREFIX) {
            let (k, v) = kv?;
            let (Some(id), Some(total)) = (
                k.get(chunks::SIZE_PREFIX.len()..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes),
                v.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes),
            ) else {
                continue;
            };
            self.chunks.set_usage(id, ChunkUse { live: 0, total });
        }
        let mut objects = 0;
        for kv in self.tree.scan_prefix(OBJ) {
            let (k, v) = kv?;
            objects += 1;
            if let Some(r) = decode_ref(&v) {
                let key = String::from_utf8_lossy(&k[OBJ.len()..]);
                self.chunks.add_live(r.chunk, entry_bytes(&key, r.len) as i64);
            }
        }
        self.objects.store(objects, Relaxed);
        let next = self.tree.get(chunks::NEXT_CHUNK)?.and_then(|v| v.get(..8)?.try_into().ok()).map(u64::from_le_bytes);
        self.next_chunk.store(next.unwrap_or(1), Relaxed);
        Ok(())
    }

    /// An index entry as a full record (`mod_rev | create_rev | value`), its value fetched
    /// from its chunk when it has one.
    fn resolve(&self, key: &str, raw: &[u8]) -> sled::Result<Option<Arc<[u8]>>> {
        let Some(r) = decode_ref(raw) else { return Ok(Some(Arc::from(raw))) };
        let Some((m, c, _)) = decode_record(raw) else { return Ok(None) };
        let chunk = self.chunks.raw(r.chunk, || self.tree.get(chunks::chunk_key(r.chunk)))?;
        let value = chunk.as_deref().and_then(|raw| raw.get(r.offset as usize..(r.offset + r.len) as usize));
        match value {
            Some(v) => Ok(Some(Arc::from(encode_record(m, c, v)))),
            None => Err(sled::Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the value of {key} is missing from chunk {}", r.chunk),
            ))),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Overlay> {
        self.overlay.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Overlay> {
        self.overlay.write().unwrap_or_else(|p| p.into_inner())
    }

    fn raw_get(&self, overlay: &Overlay, key: &str) -> sled::Result<Option<Arc<[u8]>>> {
        if let Some(v) = overlay.pending.get(key) {
            return Ok(v.clone());
        }
        self.sled_get(key)
    }

    /// A key's stored bytes as sled holds them (its index entry resolved into its chunk).
    fn sled_get(&self, key: &str) -> sled::Result<Option<Arc<[u8]>>> {
        match self.tree.get([OBJ, key.as_bytes()].concat())? {
            Some(raw) => self.resolve(key, &raw),
            None => Ok(None),
        }
    }

    /// One key. sled is read after the overlay's lock is released: a sled read waits while a
    /// checkpoint applies its batch (sled's batches lock out readers), and with the overlay
    /// held meanwhile every apply queued behind this read, stalling all writes for the
    /// length of the checkpoint. Without the lock the read is still a state the store was
    /// in: a key missing from the overlay is in sled as of the last checkpoint, or newer.
    /// Keys read from sled lately are answered from [`SledReads`] without reading sled.
    pub fn get(&self, key: &str) -> sled::Result<Option<Record>> {
        let generation = {
            let overlay = self.read();
            if let Some(v) = overlay.pending.get(key) {
                return Ok(v.as_deref().and_then(|raw| record(key.to_string(), raw)));
            }
            match self.sled_reads.lookup(key) {
                Ok(raw) => return Ok(record(key.to_string(), &raw)),
                Err(generation) => generation,
            }
        };
        Ok(self.sled_get(key)?.and_then(|raw| {
            self.sled_reads.offer(key, generation, &raw);
            record(key.to_string(), &raw)
        }))
    }

    /// Up to `limit` records under `prefix` (after `start_after`, when given), and the
    /// revision they were read at: a consistent snapshot, since applies wait meanwhile.
    pub fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> sled::Result<(Vec<Record>, u64)> {
        let overlay = self.read();
        let revision = self.hub.revision();
        Ok((self.list_locked(&overlay, prefix, start_after, limit)?, revision))
    }

    /// Up to `limit` records under `prefix` after `start_after` as they were at revision
    /// `at`: what the later pages of a paginated list must show, so that a list read in
    /// pages is one consistent snapshot (etcd's MVCC gives upstream the same). The current
    /// state is rolled back with the watch history's previous versions; `None` when the
    /// history no longer reaches back to `at`.
    pub fn list_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at: u64,
    ) -> sled::Result<Option<Vec<Record>>> {
        let overlay = self.read();
        // Applies publish while holding the overlay's write lock: history and state agree here.
        let Ok(events) = self.hub.since(at, prefix) else { return Ok(None) };
        // Each key changed since `at`, as it was at `at` (`None`: it did not exist then).
        let mut then: BTreeMap<&str, Option<Record>> = BTreeMap::new();
        for e in &events {
            if start_after.is_some_and(|a| e.key.as_str() <= a) {
                continue;
            }
            then.entry(e.key.as_str()).or_insert_with(|| {
                e.prev.as_ref().map(|p| Record { key: e.key.clone(), mod_rev: e.prev_rev, value: p.to_vec() })
            });
        }
        let mut out = Vec::new();
        let mut cursor = start_after.map(str::to_string);
        loop {
            let now = self.list_locked(&overlay, prefix, cursor.as_deref(), limit)?;
            let exhausted = now.len() < limit;
            // Restored versions belong to this round up to the last key read (to the end
            // when the scan is done).
            let upper = if exhausted { None } else { now.last().map(|r| r.key.clone()) };
            let mut round: Vec<Record> = now.into_iter().filter(|r| !then.contains_key(r.key.as_str())).collect();
            let from = cursor.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let to = upper.as_deref().map_or(Bound::Unbounded, Bound::Included);
            round.extend(then.range::<str, _>((from, to)).filter_map(|(_, r)| r.clone()));
            round.sort_by(|a, b| a.key.cmp(&b.key));
            out.extend(round);
            if exhausted || out.len() >= limit {
                break;
            }
            cursor = upper;
        }
        out.truncate(limit);
        Ok(Some(out))
    }

    fn list_locked(
        &self,
        overlay: &Overlay,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> sled::Result<Vec<Record>> {
        let from = match start_after {
            Some(a) => Bound::Excluded(a.to_string()),
            None => Bound::Included(prefix.to_string()),
        };
        let mut pending =
            overlay.pending.range((from, Bound::Unbounded)).take_while(|(k, _)| k.starts_with(prefix)).peekable();
        let sled_start = match start_after {
            Some(a) => {
                let mut s = [OBJ, a.as_bytes()].concat();
                s.push(0);
                s
            }
            None => [OBJ, prefix.as_bytes()].concat(),
        };
        let full_prefix = [OBJ, prefix.as_bytes()].concat();
        let mut stored = self
            .tree
            .range(sled_start..)
            .take_while(|kv| kv.as_ref().map_or(true, |(k, _)| k.starts_with(&full_prefix)))
            .peekable();
        let mut out = Vec::new();
        while out.len() < limit {
            let stored_key = match stored.peek() {
                Some(Ok((k, _))) => Some(String::from_utf8_lossy(&k[OBJ.len()..]).into_owned()),
                Some(Err(_)) => return Err(stored.next().and_then(Result::err).expect("peeked an error")),
                None => None,
            };
            let take_pending = match (pending.peek(), &stored_key) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((pk, _)), Some(sk)) => pk.as_str() <= sk.as_str(),
            };
            if take_pending {
                let (k, v) = pending.next().expect("peeked");
                if stored_key.as_deref() == Some(k.as_str()) {
                    stored.next();
                }
                if let Some(r) = v.as_ref().and_then(|raw| record(k.clone(), raw)) {
                    out.push(r);
                }
            } else if let Some(Ok((k, raw))) = stored.next() {
                let key = String::from_utf8_lossy(&k[OBJ.len()..]).into_owned();
                if let Some(r) = self.resolve(&key, &raw)?.and_then(|full| record(key, &full)) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    fn stored_meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        match self.tree.get(key).map_err(|e| StorageIOError::read_state_machine(&e))? {
            Some(raw) => {
                bincode::deserialize(&raw).map(Some).map_err(|e| StorageIOError::read_state_machine(&e).into())
            }
            None => Ok(None),
        }
    }

    fn applied_state(&self) -> Result<AppliedState, StorageError<NodeId>> {
        let overlay = self.read();
        let applied = match overlay.applied {
            Some(a) => Some(a),
            None => self.stored_meta(APPLIED)?,
        };
        let membership = match &overlay.membership {
            Some(m) => m.clone(),
            None => self.stored_meta(MEMBERSHIP)?.unwrap_or_default(),
        };
        Ok((applied, membership))
    }

    /// Moves the overlay into sled as one atomic batch with the `last_applied` it reflects.
    /// Writes the overlay into sled. Readers and applies go on meanwhile: the overlay is
    /// locked only to copy it and, once sled holds the copy, to drop what was written.
    pub fn checkpoint(&self) -> sled::Result<()> {
        let _writer = self.lock_sled_writer();
        self.checkpoint_held()
    }

    fn lock_sled_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.sled_writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`Shared::checkpoint`], for a caller holding the sled writer's lock.
    fn checkpoint_held(&self) -> sled::Result<()> {
        let copy = self.read().copy();
        if self.write_to_sled(&copy)? {
            let mut overlay = self.write();
            self.forget_written(&mut overlay, &copy);
            self.report_pending(&overlay);
        }
        Ok(())
    }

    /// Checkpoints wait for room on the disk guarded by `space` from now on.
    pub fn guard_space(&self, space: Arc<super::space::SpaceGuard>) {
        // Set once, at open; a second call would change nothing.
        let _ = self.space.set(space);
    }

    /// Tells the space guard what the next checkpoint will write.
    fn report_pending(&self, overlay: &Overlay) {
        if let Some(space) = self.space.get() {
            space.set_pending_checkpoint(overlay.bytes as u64);
        }
    }

    /// Drops from the overlay what a checkpoint wrote (see [`Overlay::forget_written`]);
    /// those keys' sled values changed, so their cached reads go too. Called with the
    /// overlay's write lock held, so no reader sees the overlay without them and the stale
    /// cache at once.
    fn forget_written(&self, overlay: &mut Overlay, copy: &OverlayCopy) {
        overlay.forget_written(copy);
        self.sled_reads.forget(copy.pending.iter().map(|(k, _)| k));
    }

    /// A checkpoint by a caller holding both the sled writer's and the overlay's lock.
    fn checkpoint_locked(&self, overlay: &mut Overlay) -> sled::Result<()> {
        let copy = overlay.copy();
        if self.write_to_sled(&copy)? {
            self.forget_written(overlay, &copy);
            self.report_pending(overlay);
        }
        Ok(())
    }

    /// Writes `copy` into sled as one atomic batch, with the `last_applied` it reflects.
    /// `false` when it waits for room on the disk instead (nothing written; the overlay
    /// keeps it, readable, and the log holds it).
    fn write_to_sled(&self, copy: &OverlayCopy) -> sled::Result<bool> {
        if copy.pending.is_empty() && copy.applied.is_none() && copy.membership.is_none() && copy.revision.is_none() {
            return Ok(true);
        }
        let bytes: u64 = copy.pending.iter().map(|(k, v)| (k.len() + v.as_ref().map_or(0, |v| v.len())) as u64).sum();
        if let Some(space) = self.space.get()
            && !space.room_for_checkpoint(bytes)
        {
            tracing::warn!(bytes, "checkpoint waits for free space on the store's disk");
            return Ok(false);
        }
        let mut batch = sled::Batch::default();
        let mut packer = Packer { next: self.next_chunk.load(Relaxed), ..Packer::default() };
        // Bytes each older chunk loses to the entries replaced or deleted here.
        let mut released: HashMap<u64, u64> = HashMap::new();
        let mut objects = self.objects.load(Relaxed);
        for (k, v) in &copy.pending {
            let key = [OBJ, k.as_bytes()].concat();
            let old = self.tree.get(&key)?;
            if let Some(r) = old.as_deref().and_then(decode_ref) {
                *released.entry(r.chunk).or_default() += entry_bytes(k, r.len);
            }
            match (old.is_some(), v.is_some()) {
                (false, true) => objects += 1,
                (true, false) => objects = objects.saturating_sub(1),
                _ => {}
            }
            match v.as_deref().map(|raw| (raw, decode_record(raw))) {
                Some((_, Some((m, c, value)))) => {
                    let r = packer.push(&mut batch, k, &super::codec::for_sled(value))?;
                    batch.insert(key, encode_ref(m, c, r));
                }
                Some((raw, None)) => batch.insert(key, raw),
                None => batch.remove(key),
            }
        }
        packer.seal(&mut batch)?;
        if packer.next != self.next_chunk.load(Relaxed) {
            batch.insert(chunks::NEXT_CHUNK, &packer.next.to_le_bytes());
        }
        let mut emptied = Vec::new();
        for (&id, &bytes) in &released {
            if self.chunks.usage_of(id).is_some_and(|u| u.live <= bytes) {
                batch.remove(chunks::chunk_key(id));
                batch.remove(chunks::size_key(id));
                emptied.push(id);
            }
        }
        let encode_err = |e: bincode::Error| sled::Error::Unsupported(format!("encoding metadata: {e}"));
        if let Some(a) = &copy.applied {
            batch.insert(APPLIED, bincode::serialize(a).map_err(encode_err)?);
        }
        if let Some(m) = &copy.membership {
            batch.insert(MEMBERSHIP, bincode::serialize(m).map_err(encode_err)?);
        }
        if let Some(r) = copy.revision {
            batch.insert(REVISION, bincode::serialize(&r).map_err(encode_err)?);
        }
        batch.insert(COUNT, &objects.to_le_bytes());
        self.tree.apply_batch(batch)?;
        self.objects.store(objects, Relaxed);
        self.next_chunk.store(packer.next, Relaxed);
        for (id, bytes) in released {
            self.chunks.add_live(id, -(bytes as i64));
        }
        for id in emptied {
            self.chunks.forget(id);
        }
        for (id, raw) in packer.sealed {
            let total = raw.len() as u64;
            self.chunks.set_usage(id, ChunkUse { live: total, total });
            // Just-written objects are the likeliest to be read next (their next update).
            self.chunks.remember(id, raw);
        }
        Ok(true)
    }

    /// Moves the live values of mostly dead chunks into new chunks, and drops chunks
    /// nothing refers to. Bounds the space dead values take to about as much as live ones.
    pub fn compact_chunks(&self) -> sled::Result<()> {
        let sparse = self.chunks.sparse();
        if sparse.is_empty() {
            return Ok(());
        }
        let _writer = self.lock_sled_writer();
        let mut unreferenced = Vec::new();
        let mut moved = Vec::new();
        for id in sparse.into_iter().take(COMPACT_CHUNKS_PER_ROUND) {
            let Some(raw) = self.chunks.raw(id, || self.tree.get(chunks::chunk_key(id)))? else {
                unreferenced.push(id);
                continue;
            };
            let mut referenced = false;
            for (key, at) in chunks::entries(&raw) {
                let Some(index) = self.tree.get([OBJ, key.as_bytes()].concat())? else { continue };
                if decode_ref(&index) != Some(ValueRef { chunk: id, ..at }) {
                    continue;
                }
                referenced = true;
                let (Some((m, c, _)), Some(value)) =
                    (decode_record(&index), raw.get(at.offset as usize..(at.offset + at.len) as usize))
                else {
                    continue;
                };
                moved.push((key, Arc::<[u8]>::from(encode_record(m, c, value))));
            }
            if !referenced {
                unreferenced.push(id);
            }
        }
        {
            let mut overlay = self.write();
            for (key, rec) in moved {
                // A newer version waiting in the overlay replaces this one anyway.
                if !overlay.pending.contains_key(&key) {
                    overlay.bytes += rec.len() + key.len();
                    overlay.pending.insert(key, Some(rec));
                }
            }
        }
        if !unreferenced.is_empty() {
            let mut batch = sled::Batch::default();
            for id in &unreferenced {
                batch.remove(chunks::chunk_key(*id));
                batch.remove(chunks::size_key(*id));
            }
            self.tree.apply_batch(batch)?;
            for id in unreferenced {
                self.chunks.forget(id);
            }
        }
        self.checkpoint_held()
    }

    /// Checkpoints and makes sled durable on disk: after this, the Raft log up to the
    /// applied index is no longer needed to rebuild the state.
    pub fn make_durable(&self) -> std::io::Result<()> {
        let _writer = self.lock_sled_writer();
        self.checkpoint_held().map_err(std::io::Error::other)?;
        self.db.flush().map_err(std::io::Error::other)?;
        sync_tree(&self.dir.join("db"))
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot.bin")
    }

    /// Reads every entry of the tree and checks it: metadata decodes, every index entry
    /// decodes and its value is where it says (its chunk present, intact by checksum, and
    /// the entry at that offset naming the same key and length), every chunk opens, and no
    /// object is newer than the stored revision. What the start-up check and
    /// `--check-store` run; memory is one chunk plus the index's references.
    pub fn verify(&self) -> Result<SledSummary, String> {
        let fail = |what: String| format!("{}: {what}", self.dir.join("db").display());
        let meta = |key: &[u8]| -> Result<Option<sled::IVec>, String> {
            self.tree.get(key).map_err(|e| fail(format!("reading {}: {e}", String::from_utf8_lossy(key))))
        };
        let applied = match meta(APPLIED)? {
            Some(raw) => Some(
                bincode::deserialize::<LogId<NodeId>>(&raw)
                    .map_err(|e| fail(format!("m/applied does not decode: {e}")))?,
            ),
            None => None,
        };
        if let Some(raw) = meta(MEMBERSHIP)? {
            bincode::deserialize::<StoredMembership<NodeId, BasicNode>>(&raw)
                .map_err(|e| fail(format!("m/membership does not decode: {e}")))?;
        }
        let revision = match meta(REVISION)? {
            Some(raw) => {
                bincode::deserialize::<u64>(&raw).map_err(|e| fail(format!("m/revision does not decode: {e}")))?
            }
            None => 0,
        };
        let count = match meta(COUNT)? {
            Some(raw) => Some(
                raw.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
                    .ok_or_else(|| fail("m/count does not decode".into()))?,
            ),
            None => None,
        };
        let mut refs: BTreeMap<u64, Vec<(String, ValueRef)>> = BTreeMap::new();
        let mut objects = 0u64;
        for kv in self.tree.scan_prefix(OBJ) {
            let (k, v) = kv.map_err(|e| fail(format!("reading the index: {e}")))?;
            let key = String::from_utf8(k[OBJ.len()..].to_vec())
                .map_err(|_| fail(format!("an index key is not UTF-8: {:?}", String::from_utf8_lossy(&k))))?;
            let Some((mod_rev, create_rev, _)) = decode_record(&v) else {
                return Err(fail(format!("the index entry of {key} does not decode")));
            };
            if mod_rev > revision || create_rev > mod_rev {
                return Err(fail(format!(
                    "{key} claims revision {mod_rev} (created at {create_rev}) but the store is at {revision}"
                )));
            }
            match decode_ref(&v) {
                Some(r) => refs.entry(r.chunk).or_default().push((key, r)),
                None if v.get(16) == Some(&REF) => {
                    return Err(fail(format!("the chunk reference of {key} is cut short")));
                }
                None => {}
            }
            objects += 1;
        }
        if let Some(count) = count
            && count != objects
        {
            return Err(fail(format!("the index holds {objects} objects where {count} were written")));
        }
        let mut chunks_seen = 0u64;
        for kv in self.tree.scan_prefix(chunks::CHUNK_PREFIX) {
            let (k, stored) = kv.map_err(|e| fail(format!("reading the value chunks: {e}")))?;
            let id = k
                .get(chunks::CHUNK_PREFIX.len()..)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| fail("a chunk key does not decode".into()))?;
            let raw = chunks::open_chunk(&stored).map_err(|e| fail(format!("chunk {id}: {e}")))?;
            chunks_seen += 1;
            for (key, r) in refs.remove(&id).unwrap_or_default() {
                if !chunks::entry_matches(&raw, &key, r) {
                    return Err(fail(format!("the value of {key} is not where its index entry says in chunk {id}")));
                }
            }
        }
        if let Some((id, missing)) = refs.into_iter().next() {
            let key = missing.first().map_or("", |(k, _)| k.as_str()).to_string();
            return Err(fail(format!(
                "the value of {key} (and {} more) is in chunk {id}, which is missing",
                missing.len() - 1
            )));
        }
        Ok(SledSummary { objects, chunks: chunks_seen, applied: applied.map(|a| a.index), revision })
    }
}

/// What [`Shared::verify`] found in an intact tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledSummary {
    pub objects: u64,
    pub chunks: u64,
    /// The last log index the tree reflects.
    pub applied: Option<u64>,
    pub revision: u64,
}

/// Runs checkpoints every [`CHECKPOINT_EVERY`] until the store is dropped.
pub fn spawn_checkpointer(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let Some(woken) = shared.woken.lock().ok().and_then(|mut w| w.take()) else { return };
    let spawned = std::thread::Builder::new().name("store-checkpoint".into()).spawn(move || {
        lower_priority();
        loop {
            if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) = woken.recv_timeout(CHECKPOINT_EVERY) {
                return;
            }
            let Some(shared) = weak.upgrade() else { return };
            // A panic (sled on a damaged file) is a failed round like an error: logged, and
            // tried again next round, instead of ending checkpoints for good.
            let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                shared.checkpoint().map_err(|e| ("store checkpoint failed; will retry", e))?;
                shared.compact_chunks().map_err(|e| ("compacting value chunks failed; will retry", e))
            }));
            match round {
                Ok(Ok(())) => {}
                Ok(Err((what, e))) => tracing::error!(error = %e, "{what}"),
                Err(panic) => {
                    tracing::error!(panic = crate::panics::message(&*panic), "store checkpoint panicked; will retry")
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the store checkpointer; changes reach sled only at snapshots");
    }
}

/// Checkpoints are background work (the Raft log already holds every change): at a lower
/// priority they take the CPU requests leave idle, as RocksDB lowers its compaction
/// threads, instead of slowing the requests of the moment.
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread, with no pointers.
    let failed = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10) != 0
    };
    if failed {
        tracing::debug!(error = %std::io::Error::last_os_error(), "lowering the checkpointer's priority");
    }
}

/// The openraft state machine over [`Shared`].
pub struct StateMachine {
    pub shared: Arc<Shared>,
}

impl StateMachine {
    /// Applies one transaction to the overlay at `revision` (the next store revision).
    fn apply_txn(
        &self,
        overlay: &mut Overlay,
        txn: &Txn,
        revision: u64,
    ) -> Result<(TxnResult, Vec<Event>), StorageError<NodeId>> {
        let mut planned = Vec::new();
        for op in &txn.ops {
            let cur = self.shared.raw_get(overlay, &op.key).map_err(sm_err)?;
            let cur_rec = cur.as_deref().and_then(decode_record);
            let ok = match op.expect {
                Expect::Any => true,
                Expect::Absent => cur_rec.is_none(),
                Expect::ModRev(r) => cur_rec.is_some_and(|(m, _, _)| m == r),
            };
            if !ok {
                let failed = TxnResult::Failed { key: op.key.clone(), current: cur_rec.map(|(m, _, _)| m) };
                return Ok((failed, Vec::new()));
            }
            planned.push((op, cur_rec.map(|(m, c, v)| (m, c, Arc::<[u8]>::from(v)))));
        }
        let mut events = Vec::new();
        for (op, cur) in planned {
            let prev = cur.as_ref().map(|(_, _, v)| v.clone());
            let prev_rev = cur.as_ref().map_or(0, |(m, _, _)| *m);
            match &op.value {
                Some(v) => {
                    let v = super::codec::for_memory(v);
                    let create = cur.as_ref().map_or(revision, |(_, c, _)| *c);
                    let raw: Arc<[u8]> = Arc::from(encode_record(revision, create, &v));
                    overlay.bytes += raw.len() + op.key.len();
                    overlay.pending.insert(op.key.clone(), Some(raw));
                    events.push(Event {
                        revision,
                        key: op.key.clone(),
                        value: Some(Arc::from(&v[..])),
                        prev,
                        prev_rev,
                    });
                }
                None if cur.is_some() => {
                    overlay.bytes += op.key.len();
                    overlay.pending.insert(op.key.clone(), None);
                    events.push(Event { revision, key: op.key.clone(), value: None, prev, prev_rev });
                }
                None => {}
            }
        }
        Ok((TxnResult::Applied { revision }, events))
    }

    /// Applies one entry: each transaction of a batch in order, successful ones taking
    /// consecutive revisions, their events published as they apply.
    fn apply_entry(
        &self,
        overlay: &mut Overlay,
        entry: &Entry<TypeConfig>,
    ) -> Result<Vec<TxnResult>, StorageError<NodeId>> {
        let mut results = Vec::new();
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Membership(m) => {
                overlay.membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
            }
            EntryPayload::Normal(batch) => {
                let mut revision = match overlay.revision {
                    Some(r) => r,
                    None => stored_revision(&self.shared.tree).map_err(sm_err)?,
                };
                for txn in &batch.txns {
                    let (result, events) = self.apply_txn(overlay, txn, revision + 1)?;
                    if let TxnResult::Applied { revision: r } = result {
                        revision = r;
                        overlay.revision = Some(r);
                        self.shared.hub.publish(r, events);
                    }
                    results.push(result);
                }
            }
        }
        overlay.applied = Some(entry.log_id);
        Ok(results)
    }
}

/// A full copy of the state machine, for a follower that is too far behind, and to rebuild
/// a damaged state machine from (with the log after it).
#[derive(Serialize, Deserialize)]
pub struct SnapshotFile {
    pub meta: SnapshotMeta<NodeId, BasicNode>,
    pairs: Vec<(ByteBuf, ByteBuf)>,
}

/// `snapshot.bin` starts with this, then the crc32 of the rest (LE), then the bincode of a
/// [`SnapshotFile`]. Files written before it have the bincode alone.
const SNAPSHOT_MAGIC: &[u8; 8] = b"BRSNAP\x00\x01";

impl SnapshotFile {
    fn encode(&self) -> Result<Vec<u8>, bincode::Error> {
        let body = bincode::serialize(self)?;
        let mut out = Vec::with_capacity(body.len() + 12);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<SnapshotFile, String> {
        let body = match bytes.strip_prefix(SNAPSHOT_MAGIC) {
            Some(rest) => {
                let (crc, body) = rest.split_at_checked(4).ok_or("cut short")?;
                if crc32fast::hash(body).to_le_bytes() != crc {
                    return Err("checksum mismatch".into());
                }
                body
            }
            None => bytes,
        };
        bincode::deserialize(body).map_err(|e| format!("does not decode: {e}"))
    }

    /// Reads `dir/snapshot.bin`: `None` when there is none, an error naming the file when
    /// it is damaged.
    pub fn read(dir: &Path) -> Result<Option<SnapshotFile>, String> {
        let path = dir.join("snapshot.bin");
        match std::fs::read(&path) {
            Ok(bytes) => SnapshotFile::decode(&bytes).map(Some).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }

    /// The last log index the snapshot covers.
    pub fn last_index(&self) -> Option<u64> {
        self.meta.last_log_id.map(|l| l.index)
    }

    /// Writes the snapshot's tree into a new sled database at `db` (which must not exist),
    /// durably: the state machine rebuilt as of the snapshot, for the log to replay after.
    pub fn restore_into(&self, db: &Path) -> Result<(), String> {
        let fail = |e: &dyn std::fmt::Display| format!("rebuilding {} from the snapshot: {e}", db.display());
        let sled = sled_config(db, 8 * 1024 * 1024).open().map_err(|e| fail(&e))?;
        let tree = sled.open_tree("state").map_err(|e| fail(&e))?;
        let mut batch = sled::Batch::default();
        for (k, v) in &self.pairs {
            batch.insert(&k[..], &v[..]);
        }
        tree.apply_batch(batch).map_err(|e| fail(&e))?;
        sled.flush().map_err(|e| fail(&e))?;
        drop(tree);
        drop(sled);
        sync_tree(db).map_err(|e| fail(&e))
    }
}

/// A key or value in a snapshot: one byte string, not a sequence of bytes (see [`Op`]).
type ByteBuf = serde_bytes::ByteBuf;

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Builds snapshots from a consistent, durable view of the tree.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let shared = self.shared.clone();
        let file = tokio::task::spawn_blocking(move || -> Result<SnapshotFile, StorageError<NodeId>> {
            let (meta, pairs) = {
                // sled holds still while it is copied: no other writer runs meanwhile.
                let _writer = shared.lock_sled_writer();
                shared.checkpoint_held().map_err(sm_err)?;
                let mut pairs = Vec::new();
                for kv in shared.tree.iter() {
                    let (k, v) = kv.map_err(|e| StorageIOError::read_state_machine(&e))?;
                    pairs.push((ByteBuf::from(k.to_vec()), ByteBuf::from(v.to_vec())));
                }
                let last: Option<LogId<NodeId>> = shared.stored_meta(APPLIED)?;
                let membership: StoredMembership<NodeId, BasicNode> =
                    shared.stored_meta(MEMBERSHIP)?.unwrap_or_default();
                let snapshot_id = format!("{}", last.map_or(0, |l| l.index));
                (SnapshotMeta { last_log_id: last, last_membership: membership, snapshot_id }, pairs)
            };
            // The log may be purged up to this snapshot only once sled holds it durably.
            shared.make_durable().map_err(|e| StorageIOError::write_state_machine(&e))?;
            let file = SnapshotFile { meta, pairs };
            let bytes = file.encode().map_err(sm_err)?;
            write_atomic(&shared.snapshot_path(), &bytes).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
            Ok(file)
        })
        .await
        .map_err(sm_err)??;
        let data = bincode::serialize(&file.pairs).map_err(sm_err)?;
        Ok(Snapshot { meta: file.meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>> {
        self.shared.applied_state()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<TxnResult>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut overlay = self.shared.write();
        for entry in entries {
            out.push(self.apply_entry(&mut overlay, &entry)?);
        }
        // Over the bound, the checkpointer runs now; far over it, this apply checkpoints,
        // unless a checkpoint is under way (it drains the overlay; waiting for it while
        // holding the overlay would deadlock).
        self.shared.report_pending(&overlay);
        if overlay.bytes > OVERLAY_HARD_MAX_BYTES
            && let Ok(_writer) = self.shared.sled_writer.try_lock()
        {
            self.shared.checkpoint_locked(&mut overlay).map_err(sm_err)?;
        } else if overlay.bytes > OVERLAY_MAX_BYTES {
            let _ = self.shared.wake_checkpointer.try_send(());
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
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let pairs: Vec<(ByteBuf, ByteBuf)> = bincode::deserialize(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        {
            let _writer = self.shared.lock_sled_writer();
            let mut overlay = self.shared.write();
            *overlay = Overlay::default();
            self.shared.sled_reads.forget_all();
            let mut batch = sled::Batch::default();
            for kv in self.shared.tree.iter() {
                let (k, _) = kv.map_err(|e| StorageIOError::write_state_machine(&e))?;
                batch.remove(k);
            }
            for (k, v) in &pairs {
                batch.insert(&k[..], &v[..]);
            }
            self.shared.tree.apply_batch(batch).map_err(|e| StorageIOError::write_state_machine(&e))?;
            self.shared.load_chunk_use().map_err(|e| StorageIOError::write_state_machine(&e))?;
        }
        self.shared.make_durable().map_err(|e| StorageIOError::write_state_machine(&e))?;
        let file = SnapshotFile { meta: meta.clone(), pairs };
        let bytes = file.encode().map_err(sm_err)?;
        write_atomic(&self.shared.snapshot_path(), &bytes).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let revision = stored_revision(&self.shared.tree).map_err(sm_err)?;
        self.shared.hub.publish(revision, Vec::new());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let file = match SnapshotFile::read(&self.shared.dir) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(e) => return Err(StorageIOError::read_snapshot(None, &std::io::Error::other(e)).into()),
        };
        let data = bincode::serialize(&file.pairs).map_err(sm_err)?;
        Ok(Some(Snapshot { meta: file.meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test's store, removed when the test ends, failed or not.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("bramble-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl std::ops::Deref for TempDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn record_round_trip() {
        let raw = encode_record(7, 3, b"{}");
        assert_eq!(decode_record(&raw), Some((7, 3, &b"{}"[..])));
        assert_eq!(decode_record(b"short"), None);
    }

    /// Ops logged before values were encoded as byte strings still decode, and the two
    /// forms are the same bytes.
    #[test]
    fn ops_logged_with_values_as_byte_sequences_still_decode() {
        #[derive(Serialize)]
        struct OpAsSequence {
            key: String,
            expect: Expect,
            value: Option<Vec<u8>>,
        }
        for value in [Some(b"{\"kind\":\"Pod\"}".to_vec()), Some(Vec::new()), None] {
            let old = OpAsSequence { key: "/pods/a".into(), expect: Expect::ModRev(4), value: value.clone() };
            let old_bytes = bincode::serialize(&old).unwrap();
            let op: Op = bincode::deserialize(&old_bytes).unwrap();
            assert_eq!((op.key.as_str(), op.expect, &op.value), ("/pods/a", Expect::ModRev(4), &value));
            assert_eq!(bincode::serialize(&op).unwrap(), old_bytes);
        }
    }

    fn put(overlay: &mut Overlay, key: &str, rev: u64) {
        overlay.pending.insert(key.into(), Some(Arc::from(encode_record(rev, rev, key.as_bytes()))));
    }

    #[test]
    fn lists_merge_overlay_and_sled_in_key_order() {
        let dir = TempDir::new("sm");
        let shared = Shared::open(&dir, 1 << 20, 100, 1 << 20).unwrap();
        {
            let mut o = shared.write();
            put(&mut o, "pods/a/1", 1);
            put(&mut o, "pods/a/3", 2);
            put(&mut o, "pods/b/1", 3);
            put(&mut o, "services/a/1", 4);
        }
        shared.checkpoint().unwrap();
        {
            let mut o = shared.write();
            put(&mut o, "pods/a/2", 5);
            put(&mut o, "pods/a/3", 6);
            o.pending.insert("pods/b/1".into(), None);
        }
        let keys = |prefix: &str, after: Option<&str>, limit: usize| -> Vec<(String, u64)> {
            shared.list(prefix, after, limit).unwrap().0.into_iter().map(|r| (r.key, r.mod_rev)).collect()
        };
        assert_eq!(
            keys("pods/", None, 100),
            vec![("pods/a/1".into(), 1), ("pods/a/2".into(), 5), ("pods/a/3".into(), 6)]
        );
        assert_eq!(keys("pods/a/", Some("pods/a/1"), 1), vec![("pods/a/2".into(), 5)]);
        assert_eq!(shared.get("pods/b/1").unwrap().map(|r| r.key), None);
        assert_eq!(shared.get("services/a/1").unwrap().map(|r| r.mod_rev), Some(4));
        shared.checkpoint().unwrap();
        assert_eq!(keys("pods/", None, 100).len(), 3);
        drop(shared);
    }

    #[test]
    fn a_key_read_from_sled_is_never_answered_older_than_sled() {
        let dir = TempDir::new("sm-reads");
        let shared = Shared::open(&dir, 1 << 20, 100, 1 << 20).unwrap();
        let mod_rev = |shared: &Shared| shared.get("namespaces/default").unwrap().map(|r| r.mod_rev);
        put(&mut shared.write(), "namespaces/default", 1);
        shared.checkpoint().unwrap();
        assert_eq!(mod_rev(&shared), Some(1), "read from sled, and kept");
        assert_eq!(mod_rev(&shared), Some(1), "answered from what was kept");
        put(&mut shared.write(), "namespaces/default", 2);
        assert_eq!(mod_rev(&shared), Some(2), "the overlay answers first");
        shared.checkpoint().unwrap();
        assert_eq!(mod_rev(&shared), Some(2), "the checkpoint dropped the kept value");
        // A read that began before a checkpoint finished keeps nothing.
        let generation = shared.sled_reads.lookup("namespaces/other").unwrap_err();
        shared.write().pending.insert("namespaces/default".into(), None);
        shared.checkpoint().unwrap();
        shared.sled_reads.offer("namespaces/other", generation, &Arc::from(encode_record(9, 9, b"{}")));
        assert!(shared.sled_reads.lookup("namespaces/other").is_err());
        assert_eq!(mod_rev(&shared), None, "deleted");
        drop(shared);
    }

    #[test]
    fn changes_applied_while_a_checkpoint_writes_stay_in_the_overlay() {
        let dir = TempDir::new("sm-during");
        let shared = Shared::open(&dir, 1 << 20, 100, 1 << 20).unwrap();
        {
            let mut o = shared.write();
            put(&mut o, "pods/a/1", 1);
            put(&mut o, "pods/a/2", 2);
            put(&mut o, "pods/a/3", 3);
            o.revision = Some(3);
        }
        // The checkpoint's copy, then applies that land before it is written.
        let copy = shared.read().copy();
        {
            let mut o = shared.write();
            put(&mut o, "pods/a/2", 4);
            o.pending.insert("pods/a/3".into(), None);
            put(&mut o, "pods/a/4", 5);
            o.revision = Some(5);
        }
        shared.write_to_sled(&copy).unwrap();
        shared.write().forget_written(&copy);
        {
            let o = shared.read();
            let left: Vec<&str> = o.pending.keys().map(String::as_str).collect();
            assert_eq!(left, vec!["pods/a/2", "pods/a/3", "pods/a/4"], "only what the copy held as it is now goes");
            assert_eq!(o.revision, Some(5), "the newer revision is not in sled yet");
        }
        let mods = || -> Vec<(String, u64)> {
            shared.list("pods/", None, 100).unwrap().0.into_iter().map(|r| (r.key, r.mod_rev)).collect()
        };
        let want = vec![("pods/a/1".to_string(), 1), ("pods/a/2".to_string(), 4), ("pods/a/4".to_string(), 5)];
        assert_eq!(mods(), want, "the overlay still shadows sled's older versions");
        shared.checkpoint().unwrap();
        assert!(shared.read().pending.is_empty());
        assert_eq!(mods(), want);
        assert_eq!(stored_revision(&shared.tree).unwrap(), 5);
        drop(shared);
    }

    /// Applies one write (`None` deletes) the way Raft entries are applied, history included.
    fn apply(sm: &StateMachine, key: &str, value: Option<&str>) -> u64 {
        let mut overlay = sm.shared.write();
        let revision = sm.shared.hub.revision() + 1;
        let txn =
            Txn { ops: vec![Op { key: key.into(), expect: Expect::Any, value: value.map(|v| v.as_bytes().to_vec()) }] };
        let (result, events) = sm.apply_txn(&mut overlay, &txn, revision).unwrap();
        assert_eq!(result, TxnResult::Applied { revision });
        overlay.revision = Some(revision);
        sm.shared.hub.publish(revision, events);
        revision
    }

    #[test]
    fn lists_at_an_earlier_revision_roll_back_later_changes() {
        let dir = TempDir::new("sm-at");
        let sm = StateMachine { shared: Arc::new(Shared::open(&dir, 1 << 20, 100, 1 << 20).unwrap()) };
        for i in 0..6 {
            apply(&sm, &format!("pods/a/{i}"), Some("v1"));
        }
        let at = sm.shared.hub.revision();
        sm.shared.checkpoint().unwrap();
        // After the snapshot: one changed, one deleted, one created, one outside the prefix.
        apply(&sm, "pods/a/1", Some("v2"));
        apply(&sm, "pods/a/2", None);
        apply(&sm, "pods/a/25", Some("v1"));
        apply(&sm, "services/a/1", Some("v1"));
        let page = |after: Option<&str>, limit: usize| -> Vec<(String, u64, String)> {
            sm.shared
                .list_at("pods/", after, limit, at)
                .unwrap()
                .unwrap()
                .into_iter()
                .map(|r| (r.key, r.mod_rev, String::from_utf8_lossy(&r.value).into_owned()))
                .collect()
        };
        let all = page(None, 100);
        let keys: Vec<&str> = all.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(keys, ["pods/a/0", "pods/a/1", "pods/a/2", "pods/a/3", "pods/a/4", "pods/a/5"]);
        assert!(all.iter().all(|r| r.2 == "v1"), "{all:?}");
        assert_eq!(all[1].1, 2, "the old version keeps its own revision");
        // Pages of two, each at the same revision, cover the same snapshot.
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let p = page(after.as_deref(), 2);
            after = p.last().map(|r| r.0.clone());
            let done = p.len() < 2;
            paged.extend(p);
            if done {
                break;
            }
        }
        assert_eq!(paged, all);
        // The current state is untouched.
        let now: Vec<String> = sm.shared.list("pods/", None, 100).unwrap().0.into_iter().map(|r| r.key).collect();
        assert!(now.contains(&"pods/a/25".to_string()) && !now.contains(&"pods/a/2".to_string()));
        drop(sm);
    }

    fn chunk_ids(shared: &Shared) -> Vec<u64> {
        shared
            .tree
            .scan_prefix(chunks::CHUNK_PREFIX)
            .keys()
            .map(|k| u64::from_be_bytes(k.unwrap()[2..10].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn values_live_in_chunks_that_are_compacted_and_survive_reopening() {
        let dir = TempDir::new("sm-chunks");
        let value =
            |i: usize, v: u32| format!("\u{0}{{\"name\":\"pod-{i}\",\"v\":{v},\"pad\":\"{}\"}}", "x".repeat(900));
        {
            let sm = StateMachine { shared: Arc::new(Shared::open(&dir, 1 << 20, 100, 1 << 20).unwrap()) };
            for i in 0..200 {
                apply(&sm, &format!("pods/a/{i:03}"), Some(&value(i, 1)));
            }
            // A store written before chunks keeps its inline values readable.
            sm.shared.tree.insert(b"o/pods/a/legacy", encode_record(3, 3, b"\0{}")).unwrap();
            sm.shared.checkpoint().unwrap();
            let first = chunk_ids(&sm.shared);
            assert!(first.len() >= 3, "200 values of ~1 KB make several 64 KB chunks: {first:?}");
            // Replace most values and delete some: the first chunks become mostly dead.
            for i in 0..170 {
                if i % 10 == 0 {
                    apply(&sm, &format!("pods/a/{i:03}"), None);
                } else {
                    apply(&sm, &format!("pods/a/{i:03}"), Some(&value(i, 2)));
                }
            }
            sm.shared.checkpoint().unwrap();
            assert!(!sm.shared.chunks.sparse().is_empty());
            sm.shared.compact_chunks().unwrap();
            sm.shared.compact_chunks().unwrap();
            assert!(sm.shared.chunks.sparse().is_empty(), "{:?}", sm.shared.chunks.sparse());
            let left = chunk_ids(&sm.shared);
            assert!(left.iter().all(|id| !first.contains(id) || sm.shared.chunks.usage_of(*id).is_some()));
            sm.shared.make_durable().unwrap();
        }
        let shared = Shared::open(&dir, 1 << 20, 100, 1 << 20).unwrap();
        let (records, _) = shared.list("pods/a/", None, 1000).unwrap();
        assert_eq!(records.len(), 200 - 17 + 1);
        for r in &records {
            if r.key == "pods/a/legacy" {
                assert_eq!(r.value, b"\0{}");
                continue;
            }
            let i: usize = r.key["pods/a/".len()..].parse().unwrap();
            assert_eq!(r.value, value(i, if i < 170 { 2 } else { 1 }).as_bytes(), "{}", r.key);
        }
        assert!(shared.get("pods/a/010").unwrap().is_none());
        // Every chunk left is referenced and its use is known again after reopening.
        for id in chunk_ids(&shared) {
            let u = shared.chunks.usage_of(id).unwrap();
            assert!(u.live > 0 && u.live <= u.total, "chunk {id}: {u:?}");
        }
        drop(shared);
    }

    #[test]
    fn lists_at_a_revision_older_than_the_history_are_refused() {
        let dir = TempDir::new("sm-old");
        let sm = StateMachine { shared: Arc::new(Shared::open(&dir, 1 << 20, 3, 1 << 20).unwrap()) };
        for i in 0..10 {
            apply(&sm, &format!("pods/a/{i}"), Some("v"));
        }
        assert!(sm.shared.list_at("pods/", None, 100, 2).unwrap().is_none());
        assert_eq!(sm.shared.list_at("pods/", None, 100, 8).unwrap().map(|r| r.len()), Some(8));
        drop(sm);
    }
}
