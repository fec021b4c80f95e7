//! How values are encoded on their way through the store. A one-byte tag says how the rest
//! is stored: plain, or LZ4. Each place gets the form that costs it least: the Raft log
//! takes plain values and zstd-compresses whole entries (a batch of similar objects shrinks
//! far more than each object alone); the state machine keeps LZ4-packed values in memory
//! (the overlay and the watch history, about half the size); sled gets plain values again
//! and zstd-compresses its pages. Sealed secrets pass everywhere untouched.

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

/// A value tagged as plain, for the Raft log (which compresses whole entries).
pub fn plain(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 1);
    out.push(RAW);
    out.extend_from_slice(value);
    out
}

/// What the state machine keeps in memory (overlay, watch history): plain values packed;
/// packed and sealed ones as they are.
pub fn for_memory(stored: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match stored.split_first() {
        Some((&RAW, rest)) if rest.len() >= MIN_COMPRESS => std::borrow::Cow::Owned(pack(rest)),
        _ => std::borrow::Cow::Borrowed(stored),
    }
}

/// A packed value as sled should hold it: plain. sled compresses whole pages with zstd, and
/// a page of similar plain objects compresses far better than the same objects each
/// LZ4-compressed on its own. Values that are not LZ4-packed (plain ones, sealed secrets)
/// pass through untouched.
pub fn for_sled(stored: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match stored.split_first() {
        Some((&LZ4, rest)) => match lz4_flex::decompress_size_prepended(rest) {
            Ok(plain) => {
                let mut out = Vec::with_capacity(plain.len() + 1);
                out.push(RAW);
                out.extend_from_slice(&plain);
                std::borrow::Cow::Owned(out)
            }
            Err(_) => std::borrow::Cow::Borrowed(stored),
        },
        _ => std::borrow::Cow::Borrowed(stored),
    }
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
        let in_sled = for_sled(&packed);
        assert_eq!(in_sled[0], RAW);
        assert_eq!(unpack(&in_sled).unwrap(), obj);
        assert_eq!(&*for_sled(b"brenc1:sealed"), b"brenc1:sealed");
        assert_eq!(&*for_memory(&plain(&obj)), &packed[..]);
        assert_eq!(&*for_memory(b"brenc1:sealed"), b"brenc1:sealed");
    }
}
