//! Stored values are compressed. Objects are JSON with long repeated keys (managedFields
//! above all), and every value is written twice (the Raft log, then sled): LZ4 roughly
//! halves both the flash writes and the memory the watch history holds, for a few
//! microseconds per object. A one-byte tag says how the rest is stored.

use super::StoreError;

const RAW: u8 = 0;
const LZ4: u8 = 1;

/// Values shorter than this are not worth compressing.
const MIN_COMPRESS: usize = 96;

/// Tags and, when it pays, compresses a value.
pub fn pack(value: &[u8]) -> Vec<u8> {
    if value.len() >= MIN_COMPRESS {
        let compressed = lz4_flex::compress_prepend_size(value);
        if compressed.len() < value.len() {
            let mut out = Vec::with_capacity(compressed.len() + 1);
            out.push(LZ4);
            out.extend_from_slice(&compressed);
            return out;
        }
    }
    let mut out = Vec::with_capacity(value.len() + 1);
    out.push(RAW);
    out.extend_from_slice(value);
    out
}

/// The original bytes of a packed value.
pub fn unpack(stored: &[u8]) -> Result<Vec<u8>, StoreError> {
    match stored.split_first() {
        Some((&RAW, rest)) => Ok(rest.to_vec()),
        Some((&LZ4, rest)) => lz4_flex::decompress_size_prepended(rest)
            .map_err(|e| StoreError::Corrupt(format!("a stored value does not decompress: {e}"))),
        Some((tag, _)) => Err(StoreError::Corrupt(format!("a stored value has unknown encoding {tag}"))),
        None => Err(StoreError::Corrupt("a stored value is empty".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_shrinks_json() {
        let obj = br#"{"metadata":{"managedFields":[{"fieldsV1":{"f:spec":{"f:containers":{}}}},{"fieldsV1":{"f:spec":{"f:containers":{}}}}]}}"#.repeat(4);
        let packed = pack(&obj);
        assert!(packed.len() < obj.len() / 2, "{} vs {}", packed.len(), obj.len());
        assert_eq!(unpack(&packed).unwrap(), obj);
        assert_eq!(unpack(&pack(b"{}")).unwrap(), b"{}");
        assert!(unpack(&[LZ4, 9, 9]).is_err());
        assert!(unpack(&[7]).is_err());
    }
}
