//! The Raft log on disk: one append-only file of checksummed records plus a small metadata
//! file for the vote, the committed id and the purge point.
//!
//! Why not sled for the log: sled 0.34's `flush()` does not fsync (sled issue 1452), and the
//! log is the one thing that must be durable before a write is acknowledged. Here every
//! `append` is written and `fdatasync`ed at once: openraft 0.9 waits for each append's flush
//! before it does anything else, so a separate flusher thread would only add two thread
//! hand-offs per write. Group commit happens one level up, where concurrent writes are
//! gathered into one entry (`batch.rs`).
//!
//! Record layout: `len: u32 LE | crc32(payload): u32 LE | payload (zstd of the bincode
//! Entry)`. An entry usually carries a batch of similar objects (group commit), which zstd
//! shrinks several times over: flash writes are what a board's storage wears out on. A torn
//! tail (short or bad-checksum record with nothing valid after it) found at open is cut
//! off: it was never acknowledged. A bad record with valid ones after it is corruption: the
//! log refuses to open, names the file, offset and index, and is left untouched.
//!
//! Each append is padded to the end of its last page (a `len = 0` header whose second word
//! says how many padding bytes follow). Without that, every fsync rewrote the page the last
//! append ended in, so a small append cost one or two page writes; now it costs one. The
//! padding is the price: about one page of file per append until the log is purged.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use super::raft::{NodeId, TypeConfig};

const HEADER_LEN: u64 = 8;

/// Appends end on a boundary of this many bytes (the page size of the page cache).
const PAGE: u64 = 4096;

/// The padding header that takes `at` (a file offset) to the next page boundary, and the
/// bytes of padding after it; `None` when `at` is on a boundary already.
fn padding_at(at: u64) -> Option<Vec<u8>> {
    let mut gap = (PAGE - at % PAGE) % PAGE;
    if gap == 0 {
        return None;
    }
    if gap < HEADER_LEN {
        gap += PAGE;
    }
    Some(padding(gap))
}

/// `gap` bytes (at least a header's) that readers skip: a `len = 0` header saying how many
/// padding bytes follow it.
fn padding(gap: u64) -> Vec<u8> {
    let mut pad = vec![0u8; gap as usize];
    pad[4..8].copy_from_slice(&((gap - HEADER_LEN) as u32).to_le_bytes());
    pad
}

/// What survives restarts beside the entries themselves.
#[derive(Default, Serialize, Deserialize, Clone)]
struct LogMeta {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

struct LogInner {
    file: File,
    /// Reused zstd contexts: a fresh one per record would cost more than the compression.
    zc: zstd::block::Compressor,
    zd: zstd::block::Decompressor,
    path: PathBuf,
    /// index -> (offset, payload length) of every entry present in the file.
    positions: BTreeMap<u64, (u64, u32)>,
    /// Entries appended and not yet read, with their encoded sizes: the state machine
    /// reads each entry right after it is made durable, and taking it from here spares
    /// reading back, decompressing and decoding what was just written.
    unread: BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    unread_bytes: usize,
    end: u64,
    last_log_id: Option<LogId<NodeId>>,
    meta: LogMeta,
    meta_path: PathBuf,
}

/// The Raft log storage handed to openraft.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

/// Rewrite the file without its purged head once that head is this big and at least half
/// of the file.
const COMPACT_MIN_BYTES: u64 = 4 * 1024 * 1024;

/// Whether `bytes` hold a record at `at` whose length fits and whose checksum matches.
fn record_at(bytes: &[u8], at: usize) -> bool {
    let Some(header) = bytes.get(at..at + HEADER_LEN as usize) else { return false };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let start = at + HEADER_LEN as usize;
    len > 0 && bytes.get(start..start + len).is_some_and(|payload| crc32fast::hash(payload) == crc)
}

/// Where a valid record follows the bad one at `bad`, if anywhere: right after it (only its
/// payload was damaged) or at a later page boundary (every append starts on one). A torn
/// write is always the file's end, so anything valid after it means corruption instead.
fn valid_record_after(bytes: &[u8], bad: u64) -> Option<u64> {
    let at = bad as usize;
    if let Some(header) = bytes.get(at..at + HEADER_LEN as usize) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let next = at + HEADER_LEN as usize + len;
        if len > 0 && record_at(bytes, next) {
            return Some(next as u64);
        }
    }
    let mut page = (bad / PAGE + 1) * PAGE;
    while page < bytes.len() as u64 {
        if record_at(bytes, page as usize) {
            return Some(page);
        }
        page += PAGE;
    }
    None
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// At most this many bytes of encoded entries wait in memory to be read.
const UNREAD_MAX_BYTES: usize = 4 * 1024 * 1024;

/// zstd level for log records: fast, and most of the gain is in the repetition anyway.
const ZSTD_LEVEL: i32 = 3;

/// No record decompresses to more than this (entries are batches of at most a few MiB).
const MAX_ENTRY_BYTES: usize = 64 * 1024 * 1024;

/// The record payload of `entry`, and the size of its encoding before compression.
fn encode_entry(zc: &mut zstd::block::Compressor, entry: &Entry<TypeConfig>) -> io::Result<(Vec<u8>, usize)> {
    let plain = bincode::serialize(entry).map_err(io_err)?;
    Ok((zc.compress(&plain, ZSTD_LEVEL)?, plain.len()))
}

fn decode_entry(zd: &mut zstd::block::Decompressor, payload: &[u8]) -> io::Result<Entry<TypeConfig>> {
    let plain = zd.decompress(payload, MAX_ENTRY_BYTES)?;
    bincode::deserialize(&plain).map_err(io_err)
}

/// What a read of `raft.log` found: every intact record, and where the intact part ends.
struct Scan {
    /// index -> (offset, payload length).
    positions: BTreeMap<u64, (u64, u32)>,
    last_log_id: Option<LogId<NodeId>>,
    /// The end of the last intact record (or padding): a torn tail starts here.
    end: u64,
}

/// Reads the records of `bytes` (the file at `path`), stopping at the first that is short,
/// fails its checksum or cannot be decoded. That is a torn tail when nothing valid follows
/// it; with valid records after it, it is corruption, and the error names the file, the
/// offset and the index before it.
fn scan(path: &Path, bytes: &[u8]) -> io::Result<Scan> {
    let mut positions = BTreeMap::new();
    let mut last_log_id = None;
    let mut zd = zstd::block::Decompressor::new();
    let mut offset = 0u64;
    while (offset + HEADER_LEN) as usize <= bytes.len() {
        let at = offset as usize;
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        if len == 0 {
            // Padding to a page boundary; all zeros is the unwritten end of the file.
            let skip = u64::from(crc);
            let next = offset + HEADER_LEN + skip;
            if skip == 0 || skip >= 2 * PAGE || next > bytes.len() as u64 {
                break;
            }
            offset = next;
            continue;
        }
        let start = at + HEADER_LEN as usize;
        let Some(payload) = bytes.get(start..start + len as usize) else { break };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let entry = match decode_entry(&mut zd, payload) {
            Ok(e) => e,
            Err(_) => break,
        };
        if last_log_id.is_some_and(|l: LogId<NodeId>| entry.log_id.index != l.index + 1) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is corrupt: the record at byte offset {offset} holds index {} where {} should follow. \
                     Refusing to start: restore the data directory from a backup, or rebuild this server from its \
                     peers",
                    path.display(),
                    entry.log_id.index,
                    last_log_id.map_or(0, |l| l.index + 1)
                ),
            ));
        }
        positions.insert(entry.log_id.index, (offset, len));
        last_log_id = Some(entry.log_id);
        offset += HEADER_LEN + len as u64;
    }
    if offset < bytes.len() as u64
        && let Some(valid_at) = valid_record_after(bytes, offset)
    {
        // Valid records after a bad one: not a torn write but damage in the middle of
        // acknowledged data. Refuse, and leave the file as it is.
        let after = last_log_id.map_or("the start".to_string(), |l| format!("index {}", l.index));
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is corrupt: the record at byte offset {offset} (the one after {after}) fails its checksum or \
                 cannot be decoded, and valid records follow it (at offset {valid_at}). Refusing to start rather \
                 than drop acknowledged writes: restore the data directory from a backup, or rebuild this server \
                 from its peers",
                path.display()
            ),
        ));
    }
    Ok(Scan { positions, last_log_id, end: offset })
}

/// Reads `raft.meta` (the vote, the commit point and the purge point); a missing file is a
/// new log.
fn read_meta(meta_path: &Path) -> io::Result<LogMeta> {
    match std::fs::read(meta_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is unreadable ({e}): it holds the Raft vote and commit point; restore it from a backup of \
                     this data directory",
                    meta_path.display()
                ),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(LogMeta::default()),
        Err(e) => Err(io::Error::new(e.kind(), format!("reading {}: {e}", meta_path.display()))),
    }
}

/// What `bramble server --check-store` and the start-up check learn of a log, read without
/// changing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSummary {
    /// The first and last index the file holds (after the purge point), if any.
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// The index everything up to which was purged (covered by a snapshot).
    pub purged: Option<u64>,
    /// Bytes of torn tail the next start cuts off (never acknowledged).
    pub torn_bytes: u64,
}

/// Reads the log in `dir` without writing anything: every record's checksum and order, and
/// the metadata file. Errors name the file and what is wrong.
pub fn inspect(dir: &Path) -> io::Result<LogSummary> {
    let path = dir.join("raft.log");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))),
    };
    let scan = scan(&path, &bytes)?;
    let meta = read_meta(&dir.join("raft.meta"))?;
    let purged = meta.last_purged.map(|p| p.index);
    let kept = |i: &&u64| purged.is_none_or(|p| **i > p);
    Ok(LogSummary {
        first: scan.positions.keys().find(kept).copied(),
        last: scan.positions.keys().rev().find(kept).copied().or(purged),
        purged,
        torn_bytes: bytes.len() as u64 - scan.end,
    })
}

impl LogStore {
    /// Opens (or creates) `dir/raft.log` and `dir/raft.meta`, repairing a torn tail.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("raft.log");
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let Scan { mut positions, mut last_log_id, end: offset } = scan(&path, &bytes)?;
        if offset < bytes.len() as u64 {
            tracing::warn!(path = %path.display(), kept = offset, found = bytes.len(), "cutting torn tail off the raft log");
            file.set_len(offset)?;
            file.sync_all()?;
        }
        let zd = zstd::block::Decompressor::new();
        let meta_path = dir.join("raft.meta");
        let meta = read_meta(&meta_path)?;
        if let Some(p) = meta.last_purged {
            positions.retain(|i, _| *i > p.index);
            if last_log_id.is_none_or(|l| l.index <= p.index) {
                last_log_id = Some(p);
            }
        }
        Ok(LogStore {
            inner: Arc::new(Mutex::new(LogInner {
                file,
                zc: zstd::block::Compressor::new(),
                zd,
                path,
                positions,
                unread: BTreeMap::new(),
                unread_bytes: 0,
                end: offset,
                last_log_id,
                meta,
                meta_path,
            })),
        })
    }

    /// What the log holds, as [`inspect`] reports it (the torn tail is cut already).
    pub fn summary(&self) -> LogSummary {
        let inner = self.lock();
        let purged = inner.meta.last_purged.map(|p| p.index);
        LogSummary {
            first: inner.positions.keys().next().copied(),
            last: inner.last_log_id.map(|l| l.index),
            purged,
            torn_bytes: 0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        // A poisoned lock means a panic mid-write; the file is still consistent (the torn tail
        // is cut at next open), so carry on with the data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Test hook, in debug builds only: when the file named by `BRAMBLE_TEST_FAIL_LOG_APPEND`
/// exists, the next append removes it and fails with ENOSPC after writing a torn first record,
/// as a card that filled between the space check and the write would. It is how the tests
/// reach the Raft supervisor (`supervise.rs`) without filling a disk to the byte.
#[cfg(debug_assertions)]
fn injected_failure() -> Option<io::Error> {
    let trigger = std::env::var_os("BRAMBLE_TEST_FAIL_LOG_APPEND")?;
    std::fs::remove_file(trigger).ok()?;
    Some(io::Error::from_raw_os_error(libc::ENOSPC))
}

#[cfg(not(debug_assertions))]
fn injected_failure() -> Option<io::Error> {
    None
}

/// Runs a blocking disk call from async code: on the multi-threaded runtime other tasks move
/// to another worker meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl LogInner {
    fn save_meta(&self) -> io::Result<()> {
        let tmp = self.meta_path.with_extension("meta.tmp");
        let bytes = serde_json::to_vec(&self.meta).map_err(io_err)?;
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.meta_path)?;
        if let Some(dir) = self.meta_path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Drops the purged head of the file: copy the live tail to a new file, fsync, rename.
    fn compact(&mut self) -> io::Result<()> {
        self.compact_from(COMPACT_MIN_BYTES)
    }

    fn compact_from(&mut self, min_bytes: u64) -> io::Result<()> {
        let first = self.positions.values().next().map_or(self.end, |(o, _)| *o);
        if first < min_bytes.max(2 * PAGE) || first * 2 < self.end {
            return Ok(());
        }
        // Cut on a page boundary, so that later appends stay page-aligned, with a padding
        // header over what is left of purged records before the first kept one.
        let mut head = first - first % PAGE;
        let mut gap = first - head;
        if gap > 0 && gap < HEADER_LEN {
            head -= PAGE;
            gap += PAGE;
        }
        let lead = (gap > 0).then(|| padding(gap));
        let tmp = self.path.with_extension("log.compact");
        let mut out = File::create(&tmp)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = head;
        if let Some(pad) = &lead {
            out.write_all(pad)?;
            at += pad.len() as u64;
        }
        while at < self.end {
            let n = ((self.end - at) as usize).min(buf.len());
            self.file.read_exact_at(&mut buf[..n], at)?;
            out.write_all(&buf[..n])?;
            at += n as u64;
        }
        out.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        for pos in self.positions.values_mut() {
            pos.0 -= head;
        }
        self.end -= head;
        tracing::info!(dropped_bytes = head, kept_bytes = self.end, "compacted the raft log");
        Ok(())
    }

    /// Keeps just-appended entries for their first read, dropping the oldest beyond
    /// [`UNREAD_MAX_BYTES`] (those are read from the file instead).
    fn keep_unread(&mut self, entries: Vec<(Entry<TypeConfig>, usize)>) {
        for (entry, size) in entries {
            self.unread_bytes += size;
            self.unread.insert(entry.log_id.index, (entry, size));
        }
        while self.unread_bytes > UNREAD_MAX_BYTES {
            let Some((_, (_, size))) = self.unread.pop_first() else { break };
            self.unread_bytes -= size;
        }
    }

    fn forget_unread(&mut self, gone: impl Fn(u64) -> bool) {
        let mut freed = 0;
        self.unread.retain(|i, (_, size)| {
            let keep = !gone(*i);
            if !keep {
                freed += *size;
            }
            keep
        });
        self.unread_bytes -= freed;
    }

    fn read_entry(&mut self, index: u64) -> io::Result<Option<Entry<TypeConfig>>> {
        let Some(&(offset, len)) = self.positions.get(&index) else { return Ok(None) };
        if let Some((entry, size)) = self.unread.remove(&index) {
            self.unread_bytes -= size;
            return Ok(Some(entry));
        }
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, offset + HEADER_LEN)?;
        decode_entry(&mut self.zd, &buf).map(Some)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        let indexes: Vec<u64> = inner.positions.range(range).map(|(i, _)| *i).collect();
        for i in indexes {
            match inner.read_entry(i) {
                Ok(Some(e)) => out.push(e),
                Ok(None) => break,
                Err(e) => return Err(StorageIOError::read_log_at_index(i, &e).into()),
            }
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(LogState { last_purged_log_id: inner.meta.last_purged, last_log_id: inner.last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.meta.vote = Some(*vote);
        inner.save_meta().map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().meta.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Kept in memory only: writing it would cost a second fsync per write. On restart
        // openraft re-derives it; entries after the state machine's last_applied are re-applied.
        self.lock().meta.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().meta.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut buf = Vec::new();
        let mut placed = Vec::new();
        let mut unread = Vec::new();
        let mut last = None;
        for entry in entries {
            let (payload, size) = encode_entry(&mut inner.zc, &entry).map_err(|e| StorageIOError::write_logs(&e))?;
            let offset = inner.end + buf.len() as u64;
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            buf.extend_from_slice(&payload);
            placed.push((entry.log_id.index, (offset, payload.len() as u32)));
            last = Some(entry.log_id);
            unread.push((entry, size));
        }
        let end = inner.end;
        if let Some(pad) = padding_at(end + buf.len() as u64) {
            buf.extend_from_slice(&pad);
        }
        if let Some(e) = injected_failure() {
            // The first record's header and a few bytes on disk, as a write cut short by a
            // full card would leave it.
            let torn = buf.len().min(HEADER_LEN as usize + 4);
            inner.file.write_all_at(&buf[..torn], end).map_err(|e| StorageIOError::write_logs(&e))?;
            return Err(StorageIOError::write_logs(&e).into());
        }
        inner.file.write_all_at(&buf, end).map_err(|e| StorageIOError::write_logs(&e))?;
        inner.end += buf.len() as u64;
        inner.positions.extend(placed);
        if last.is_some() {
            inner.last_log_id = last;
        }
        inner.keep_unread(unread);
        let synced = blocking(|| inner.file.sync_data());
        drop(inner);
        callback.log_io_completed(synced);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        let Some(&(offset, _)) = inner.positions.get(&log_id.index) else { return Ok(()) };
        inner.file.set_len(offset).map_err(|e| StorageIOError::write_logs(&e))?;
        inner.file.sync_all().map_err(|e| StorageIOError::write_logs(&e))?;
        inner.end = offset;
        inner.positions.retain(|i, _| *i < log_id.index);
        inner.forget_unread(|i| i >= log_id.index);
        let prev = inner.positions.keys().next_back().copied();
        inner.last_log_id = match prev {
            Some(i) => inner.read_entry(i).map_err(|e| StorageIOError::read_logs(&e))?.map(|e| e.log_id),
            None => inner.meta.last_purged,
        };
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.meta.last_purged = Some(log_id);
        inner.positions.retain(|i, _| *i > log_id.index);
        inner.forget_unread(|i| i <= log_id.index);
        if inner.last_log_id.is_none_or(|l| l.index < log_id.index) {
            inner.last_log_id = Some(log_id);
        }
        inner.save_meta().map_err(|e| StorageIOError::write_logs(&e))?;
        inner.compact().map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn blank(index: u64) -> Entry<TypeConfig> {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }
    }

    /// Writes entries the way `append` does: records, then padding to the page's end.
    fn append_raw(file: &mut Vec<u8>, entries: &[u64]) {
        let mut zc = zstd::block::Compressor::new();
        for i in entries {
            let (payload, _) = encode_entry(&mut zc, &blank(*i)).unwrap();
            file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            file.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            file.extend_from_slice(&payload);
        }
        if let Some(pad) = padding_at(file.len() as u64) {
            file.extend_from_slice(&pad);
        }
    }

    fn indexes(store: &LogStore) -> Vec<u64> {
        store.lock().positions.keys().copied().collect()
    }

    #[test]
    fn padded_appends_read_back_and_a_torn_tail_is_cut() {
        let dir = std::env::temp_dir().join(format!("bramble-log-pad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut bytes = Vec::new();
        append_raw(&mut bytes, &[1]);
        assert_eq!(bytes.len() as u64, PAGE, "one small append takes one page");
        append_raw(&mut bytes, &[2, 3]);
        // A record torn mid-write after the last acknowledged append.
        let kept = bytes.len();
        bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3, 4, 5]);
        std::fs::write(dir.join("raft.log"), &bytes).unwrap();
        let store = LogStore::open(&dir).unwrap();
        assert_eq!(indexes(&store), vec![1, 2, 3]);
        assert_eq!(store.lock().end, kept as u64);
        assert_eq!(std::fs::metadata(dir.join("raft.log")).unwrap().len(), kept as u64);
        // A file of zeros past the end (preallocated) is its unwritten end.
        let mut zeros = bytes[..kept].to_vec();
        zeros.extend_from_slice(&[0u8; 64]);
        std::fs::write(dir.join("raft.log"), &zeros).unwrap();
        assert_eq!(indexes(&LogStore::open(&dir).unwrap()), vec![1, 2, 3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_record_followed_by_valid_ones_is_refused_and_left_alone() {
        let dir = std::env::temp_dir().join(format!("bramble-log-corrupt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut bytes = Vec::new();
        append_raw(&mut bytes, &[1]);
        append_raw(&mut bytes, &[2]);
        append_raw(&mut bytes, &[3, 4]);
        // A flipped byte in the payload of record 2 (the second append).
        let mut flipped = bytes.clone();
        flipped[PAGE as usize + HEADER_LEN as usize + 2] ^= 0x40;
        std::fs::write(dir.join("raft.log"), &flipped).unwrap();
        let e = LogStore::open(&dir).err().expect("refused");
        let msg = e.to_string();
        assert!(
            msg.contains("raft.log is corrupt") && msg.contains("offset 4096") && msg.contains("after index 1"),
            "{msg}"
        );
        assert_eq!(std::fs::read(dir.join("raft.log")).unwrap(), flipped, "the file is left as it was");
        // A flip in record 3, with record 4 right after it in the same append.
        let mut flipped = bytes.clone();
        flipped[2 * PAGE as usize + HEADER_LEN as usize + 1] ^= 0x01;
        std::fs::write(dir.join("raft.log"), &flipped).unwrap();
        assert!(LogStore::open(&dir).is_err(), "a valid record right after the bad one");
        // A damaged length: the later page boundaries still give it away.
        let mut flipped = bytes.clone();
        flipped[PAGE as usize] ^= 0x10;
        std::fs::write(dir.join("raft.log"), &flipped).unwrap();
        assert!(LogStore::open(&dir).is_err());
        // The same damage in the last record, nothing valid after it: a torn tail, cut.
        let mut torn = bytes.clone();
        let last = torn.len() - PAGE as usize;
        torn.truncate(last + 20);
        std::fs::write(dir.join("raft.log"), &torn).unwrap();
        let store = LogStore::open(&dir).unwrap();
        assert_eq!(indexes(&store), vec![1, 2]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_metadata_is_refused_with_the_file_named() {
        let dir = std::env::temp_dir().join(format!("bramble-log-meta-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("raft.meta"), b"\x00\x01not json").unwrap();
        let msg = LogStore::open(&dir).err().expect("refused").to_string();
        assert!(msg.contains("raft.meta is unreadable"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compaction_keeps_the_file_readable_and_page_aligned() {
        for entries_before in [1usize, 2, 3] {
            let dir = std::env::temp_dir().join(format!("bramble-log-compact-{}-{entries_before}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut bytes = Vec::new();
            let mut next = 1u64;
            for _ in 0..4 {
                append_raw(&mut bytes, &[next]);
                next += 1;
            }
            // An append of several entries, the first of which will be purged.
            let many: Vec<u64> = (next..next + entries_before as u64 + 1).collect();
            append_raw(&mut bytes, &many);
            next += many.len() as u64;
            std::fs::write(dir.join("raft.log"), &bytes).unwrap();
            let store = LogStore::open(&dir).unwrap();
            let keep_from = next - 1;
            {
                let mut inner = store.lock();
                inner.positions.retain(|i, _| *i >= keep_from);
                inner.compact_from(0).unwrap();
                assert_eq!(inner.end % PAGE, 0, "appends after compaction stay aligned");
            }
            drop(store);
            let reopened = LogStore::open(&dir).unwrap();
            assert_eq!(indexes(&reopened), vec![keep_from]);
            let entry = reopened.lock().read_entry(keep_from).unwrap().unwrap();
            assert_eq!(entry.log_id.index, keep_from);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
