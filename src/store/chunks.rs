//! Object values kept apart from the key index, in compressed chunks (key-value separation,
//! as WiscKey and TiKV's Titan do).
//!
//! Why: sled 0.34 writes every inserted value into its log as its own zstd fragment, and
//! rewrites the whole leaf (up to 17 values) again when it splits or consolidates: about
//! 1 KB of flash per stored pod, more than the Raft log itself. Here a checkpoint packs all
//! the values it moves into sled into a few chunks of up to [`CHUNK_BYTES`], compressed as a
//! whole (similar objects side by side shrink 10x and more), and sled's index entry of each
//! key holds only a reference into its chunk. sled then rewrites small index entries, and
//! each value is written once, compressed with its neighbours.
//!
//! A chunk whose values are mostly replaced or deleted is compacted: its live values are
//! moved into the next checkpoint's chunks (see `Shared::compact_chunks`), and a chunk with
//! no live value left is removed in the same batch that drops its last reference.
//!
//! sled keys owned here: `c/<id u64 BE>` the chunk (`kind u8 | raw_len u32 LE | crc32 of the
//! raw bytes u32 LE | zstd block`; chunks of kind 1, written before checksums, have no crc),
//! `n/<id u64 BE>`
//! its size before compression, `m/next-chunk` the next id. A chunk's entries are
//! `key_len u16 LE | key | value_len u32 LE | value`; an index entry refers to a value by
//! `(chunk, offset, len)`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// Raw bytes of values per chunk. Bigger compresses better; smaller costs less to read one
/// object from a chunk that is not cached.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// No chunk is bigger: a chunk holds one value past [`CHUNK_BYTES`] at most, and no object
/// is bigger than a request body. A header claiming more is corrupt.
const MAX_CHUNK_BYTES: usize = CHUNK_BYTES + 16 * 1024 * 1024;

/// Decompressed chunks kept for reads.
const CACHED_CHUNKS: usize = 16;

/// Compact a chunk once fewer than this fraction of its bytes are live.
const LIVE_FRACTION_MIN: f64 = 0.5;

pub const CHUNK_PREFIX: &[u8] = b"c/";
pub const SIZE_PREFIX: &[u8] = b"n/";
pub const NEXT_CHUNK: &[u8] = b"m/next-chunk";

/// A zstd block with its content size, no checksum (stores written before kind 2).
const KIND_ZSTD: u8 = 1;
/// A zstd block with its content size and the crc32 of the content: a flipped bit on the
/// card is refused as corruption instead of served as a wrong object.
const KIND_ZSTD_CRC: u8 = 2;
const ZSTD_LEVEL: i32 = 3;

/// Where a value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueRef {
    pub chunk: u64,
    pub offset: u32,
    pub len: u32,
}

pub fn chunk_key(id: u64) -> Vec<u8> {
    [CHUNK_PREFIX, &id.to_be_bytes()].concat()
}

pub fn size_key(id: u64) -> Vec<u8> {
    [SIZE_PREFIX, &id.to_be_bytes()].concat()
}

/// Builds one chunk from `(key, value)` entries, returning where each value landed.
#[derive(Default)]
pub struct ChunkBuilder {
    raw: Vec<u8>,
}

impl ChunkBuilder {
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Appends an entry; the returned `(offset, len)` locate its value in the chunk.
    pub fn push(&mut self, key: &str, value: &[u8]) -> (u32, u32) {
        let key = &key.as_bytes()[..key.len().min(u16::MAX as usize)];
        self.raw.extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.raw.extend_from_slice(key);
        self.raw.extend_from_slice(&(value.len() as u32).to_le_bytes());
        let offset = self.raw.len() as u32;
        self.raw.extend_from_slice(value);
        (offset, value.len() as u32)
    }

    /// The stored form of the chunk, and its raw bytes.
    pub fn finish(self) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
        let compressed = zstd::block::compress(&self.raw, ZSTD_LEVEL)?;
        let mut out = Vec::with_capacity(compressed.len() + 9);
        out.push(KIND_ZSTD_CRC);
        out.extend_from_slice(&(self.raw.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&self.raw).to_le_bytes());
        out.extend_from_slice(&compressed);
        Ok((out, self.raw))
    }
}

/// The raw entries of a stored chunk.
pub fn open_chunk(stored: &[u8]) -> std::io::Result<Vec<u8>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("stored chunk: {what}"));
    match stored.split_first() {
        Some((&KIND_ZSTD, rest)) if rest.len() >= 4 => {
            let raw_len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let raw = zstd::block::decompress(&rest[4..], raw_len)?;
            if raw.len() != raw_len {
                return Err(bad("size does not match its header"));
            }
            Ok(raw)
        }
        Some((&KIND_ZSTD_CRC, rest)) if rest.len() >= 8 => {
            let raw_len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
            if raw_len > MAX_CHUNK_BYTES {
                return Err(bad("size in its header is out of range"));
            }
            let raw = zstd::block::decompress(&rest[8..], raw_len).map_err(|e| bad(&e.to_string()))?;
            if raw.len() != raw_len {
                return Err(bad("size does not match its header"));
            }
            if crc32fast::hash(&raw) != crc {
                return Err(bad("checksum mismatch"));
            }
            Ok(raw)
        }
        Some((kind, _)) => Err(bad(&format!("unknown encoding {kind}"))),
        None => Err(bad("empty")),
    }
}

/// The `(key, offset, len)` of every entry of a raw chunk, for compaction.
pub fn entries(raw: &[u8]) -> Vec<(String, ValueRef)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 2 <= raw.len() {
        let klen = u16::from_le_bytes([raw[at], raw[at + 1]]) as usize;
        let Some(key) = raw.get(at + 2..at + 2 + klen) else { break };
        let vat = at + 2 + klen;
        let Some(vlen) = raw.get(vat..vat + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize) else {
            break;
        };
        let offset = vat + 4;
        if offset + vlen > raw.len() {
            break;
        }
        out.push((
            String::from_utf8_lossy(key).into_owned(),
            ValueRef { chunk: 0, offset: offset as u32, len: vlen as u32 },
        ));
        at = offset + vlen;
    }
    out
}

/// Whether the entry of `key` in a raw chunk has its value at `r` (the key and length
/// written just before the value match).
pub fn entry_matches(raw: &[u8], key: &str, r: ValueRef) -> bool {
    let key = &key.as_bytes()[..key.len().min(u16::MAX as usize)];
    let offset = r.offset as usize;
    let (Some(len_at), Some(key_at)) = (offset.checked_sub(4), offset.checked_sub(4 + key.len() + 2)) else {
        return false;
    };
    raw.get(offset..offset + r.len as usize).is_some()
        && raw.get(len_at..offset) == Some(&r.len.to_le_bytes()[..])
        && raw.get(key_at..key_at + 2) == Some(&(key.len() as u16).to_le_bytes()[..])
        && raw.get(key_at + 2..len_at) == Some(key)
}

/// Live and total raw bytes of one chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkUse {
    pub live: u64,
    pub total: u64,
}

/// What is known of the chunks in memory: how much of each is still referenced, and a few
/// decompressed ones for reads.
#[derive(Default)]
pub struct Chunks {
    usage: Mutex<HashMap<u64, ChunkUse>>,
    cache: Mutex<VecDeque<(u64, Arc<[u8]>)>>,
}

impl Chunks {
    fn usage(&self) -> MutexGuard<'_, HashMap<u64, ChunkUse>> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cache(&self) -> MutexGuard<'_, VecDeque<(u64, Arc<[u8]>)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything (a snapshot replaced the tree).
    pub fn reset(&self) {
        self.usage().clear();
        self.cache().clear();
    }

    pub fn set_usage(&self, id: u64, u: ChunkUse) {
        self.usage().insert(id, u);
    }

    pub fn usage_of(&self, id: u64) -> Option<ChunkUse> {
        self.usage().get(&id).copied()
    }

    /// Adds `delta` live bytes to chunk `id`; returns its new use.
    pub fn add_live(&self, id: u64, delta: i64) -> ChunkUse {
        let mut usage = self.usage();
        let u = usage.entry(id).or_default();
        u.live = u.live.saturating_add_signed(delta);
        *u
    }

    pub fn forget(&self, id: u64) {
        self.usage().remove(&id);
        self.cache().retain(|(c, _)| *c != id);
    }

    /// Chunks worth compacting, emptiest first.
    pub fn sparse(&self) -> Vec<u64> {
        let usage = self.usage();
        let mut ids: Vec<(u64, f64)> = usage
            .iter()
            .filter(|(_, u)| u.total > 0 && (u.live as f64) < u.total as f64 * LIVE_FRACTION_MIN)
            .map(|(id, u)| (*id, u.live as f64 / u.total as f64))
            .collect();
        ids.sort_by(|a, b| a.1.total_cmp(&b.1));
        ids.into_iter().map(|(id, _)| id).collect()
    }

    /// Caches the raw bytes of a chunk just written.
    pub fn remember(&self, id: u64, raw: Vec<u8>) {
        let mut cache = self.cache();
        cache.push_front((id, Arc::from(raw)));
        cache.truncate(CACHED_CHUNKS);
    }

    /// The raw bytes of chunk `id`, from the cache or through `load`.
    pub fn raw(
        &self,
        id: u64,
        load: impl FnOnce() -> sled::Result<Option<sled::IVec>>,
    ) -> sled::Result<Option<Arc<[u8]>>> {
        if let Some(hit) = self.cache().iter().find(|(c, _)| *c == id).map(|(_, r)| r.clone()) {
            return Ok(Some(hit));
        }
        let Some(stored) = load()? else { return Ok(None) };
        let raw: Arc<[u8]> = Arc::from(open_chunk(&stored).map_err(sled::Error::Io)?);
        let mut cache = self.cache();
        cache.push_front((id, raw.clone()));
        cache.truncate(CACHED_CHUNKS);
        Ok(Some(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_round_trip_and_entries() {
        let mut b = ChunkBuilder::default();
        let first = b.push("pods/default/a", b"{\"a\":1}");
        let second = b.push("pods/default/b", b"");
        let (stored, built) = b.finish().unwrap();
        let raw = open_chunk(&stored).unwrap();
        assert_eq!(raw, built);
        assert_eq!(&raw[first.0 as usize..(first.0 + first.1) as usize], b"{\"a\":1}");
        let listed = entries(&raw);
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].0, "pods/default/a");
        assert_eq!((listed[0].1.offset, listed[0].1.len), first);
        assert_eq!((listed[1].1.offset, listed[1].1.len), second);
        let at = |(offset, len): (u32, u32)| ValueRef { chunk: 1, offset, len };
        assert!(entry_matches(&raw, "pods/default/a", at(first)));
        assert!(entry_matches(&raw, "pods/default/b", at(second)));
        assert!(!entry_matches(&raw, "pods/default/b", at(first)), "another key's value");
        assert!(!entry_matches(&raw, "pods/default/a", at((first.0, first.1 + 1))), "a wrong length");
        assert!(!entry_matches(&raw, "pods/default/a", at((1, 2))), "an offset inside a header");
        assert!(open_chunk(&[9, 0]).is_err());
        assert!(open_chunk(&stored[..stored.len() - 1]).is_err());
        // A flipped bit anywhere is refused, never served as other bytes (a bit zstd ignores,
        // such as an unused header flag, changes nothing that is read).
        for at in 1..stored.len() {
            for bit in [0x01, 0x10, 0x80] {
                let mut flipped = stored.clone();
                flipped[at] ^= bit;
                if let Ok(read) = open_chunk(&flipped) {
                    assert_eq!(read, built, "flip of {bit:#x} at {at} read as other bytes");
                }
            }
        }
    }

    #[test]
    fn sparse_chunks_are_the_mostly_dead_ones() {
        let c = Chunks::default();
        c.set_usage(1, ChunkUse { live: 100, total: 100 });
        c.set_usage(2, ChunkUse { live: 10, total: 100 });
        c.set_usage(3, ChunkUse { live: 40, total: 100 });
        assert_eq!(c.sparse(), vec![2, 3]);
        assert_eq!(c.add_live(1, -70).live, 30);
        assert_eq!(c.sparse(), vec![2, 1, 3]);
    }
}
