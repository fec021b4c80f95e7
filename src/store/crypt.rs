//! Encryption at rest for Secrets: ChaCha20-Poly1305 (ring) with a random nonce per value,
//! under a 256-bit key generated on first start and kept beside the data with mode 0600.
//!
//! Values are sealed before they are proposed to Raft, so neither the Raft log nor sled nor a
//! snapshot ever holds a secret in plain or base64 form.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::StoreError;

const MAGIC: &[u8] = b"brenc1:";
const NONCE_LEN: usize = 12;

/// Seals and opens stored values.
pub struct SecretCipher {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl SecretCipher {
    /// Loads the key from `path`, creating it (0600) when absent.
    pub fn load_or_create(path: &Path) -> Result<SecretCipher, StoreError> {
        let rng = SystemRandom::new();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = [0u8; 32];
                rng.fill(&mut k).map_err(|_| StoreError::Crypto("no system randomness".into()))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| StoreError::Io(format!("creating {}", path.display()), e))?;
                f.write_all(&k)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| StoreError::Io(format!("writing {}", path.display()), e))?;
                k.to_vec()
            }
            Err(e) => return Err(StoreError::Io(format!("reading {}", path.display()), e)),
        };
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| StoreError::Crypto(format!("{} is not a 32-byte key", path.display())))?;
        Ok(SecretCipher { key: LessSafeKey::new(unbound), rng })
    }

    /// `MAGIC | nonce | ciphertext+tag`, bound to `key_name` so a value cannot be moved to
    /// another key.
    pub fn seal(&self, key_name: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| StoreError::Crypto("no system randomness".into()))?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key_name.as_bytes()), &mut buf)
            .map_err(|_| StoreError::Crypto("sealing failed".into()))?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + buf.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens a value written by [`seal`](Self::seal); values without the marker are returned
    /// as they are.
    pub fn open(&self, key_name: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        let Some(rest) = stored.strip_prefix(MAGIC) else { return Ok(stored.to_vec()) };
        if rest.len() < NONCE_LEN {
            return Err(StoreError::Crypto(format!("{key_name}: truncated sealed value")));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| StoreError::Crypto("bad nonce".into()))?;
        let mut buf = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(key_name.as_bytes()), &mut buf)
            .map_err(|_| StoreError::Crypto(format!("{key_name}: cannot decrypt (wrong encryption key?)")))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_key_binding() {
        let dir = std::env::temp_dir().join(format!("bramble-crypt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = SecretCipher::load_or_create(&dir.join("k")).unwrap();
        let sealed = c.seal("r/secrets/a/b", b"hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(c.open("r/secrets/a/b", &sealed).unwrap(), b"hunter2");
        assert!(c.open("r/secrets/a/c", &sealed).is_err());
        let again = SecretCipher::load_or_create(&dir.join("k")).unwrap();
        assert_eq!(again.open("r/secrets/a/b", &sealed).unwrap(), b"hunter2");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
