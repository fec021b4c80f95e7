//! Encryption at rest for Secrets: ChaCha20-Poly1305 (ring) with a random nonce per value,
//! under 256-bit keys kept beside the data with mode 0600.
//!
//! Values are sealed before they are proposed to Raft, so neither the Raft log nor sled nor a
//! snapshot ever holds a secret in plain or base64 form.
//!
//! Keys rotate as k3s's `secrets-encrypt rotate-keys` does: a new key seals every new write,
//! the old ones stay (in `encryption.key.old`) to open what they sealed, and re-encryption
//! rewrites each sealed value under the current key. Each sealed value names its key by an
//! id (the first 8 bytes of the key's SHA-256), so opening never has to guess.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::StoreError;

/// Values sealed before keys had ids: opened with each known key in turn.
const MAGIC_V1: &[u8] = b"brenc1:";
/// `MAGIC_V2 | key id (8) | nonce (12) | ciphertext+tag`.
const MAGIC_V2: &[u8] = b"brenc2:";
const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;

/// Whether `stored` is a sealed value (of any version).
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(MAGIC_V1) || stored.starts_with(MAGIC_V2)
}

/// One key and its id.
struct Key {
    id: [u8; KEY_ID_LEN],
    key: LessSafeKey,
}

impl Key {
    fn new(bytes: &[u8], origin: &Path) -> Result<Key, StoreError> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map_err(|_| StoreError::Crypto(format!("{} does not hold 32-byte keys", origin.display())))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
        Ok(Key { id, key: LessSafeKey::new(unbound) })
    }
}

/// The current key and the older ones, newest first.
struct KeyRing {
    current: Key,
    old: Vec<Key>,
}

/// What [`SecretCipher::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// Hex id of the key new writes are sealed with.
    pub current: String,
    /// Hex ids of the keys kept for reading, newest first.
    pub old: Vec<String>,
}

/// Seals and opens stored values.
pub struct SecretCipher {
    ring: RwLock<KeyRing>,
    /// One rotation at a time: two would both read the same old keys and one key's
    /// record could be lost.
    rotating: std::sync::Mutex<()>,
    path: PathBuf,
    rng: SystemRandom,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` (0600) through a synced temporary file and a rename.
fn write_key_file(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::Io(format!("removing {}", tmp.display()), e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| StoreError::Io(format!("creating {}", tmp.display()), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| StoreError::Io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| StoreError::Io(format!("replacing {}", path.display()), e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::Io(format!("syncing {}", dir.display()), e))?;
    }
    Ok(())
}

fn old_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".old");
    PathBuf::from(name)
}

impl SecretCipher {
    /// Loads the keys from `path` (and `<path>.old`). A missing key is made (0600) only
    /// when `may_create`: a store that already holds sealed values must never get a new key
    /// silently, or every old Secret would be unreadable.
    pub fn load(path: &Path, may_create: bool) -> Result<SecretCipher, StoreError> {
        let rng = SystemRandom::new();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => {
                let mut k = [0u8; KEY_LEN];
                rng.fill(&mut k).map_err(|_| StoreError::Crypto("no system randomness".into()))?;
                write_key_file(path, &k)?;
                k.to_vec()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Crypto(format!(
                    "{} is missing but the store holds encrypted Secrets: restore that file from a backup of this \
                     server (without it those Secrets cannot be read); the server will not make a new key over them",
                    path.display()
                )));
            }
            Err(e) => return Err(StoreError::Io(format!("reading {}", path.display()), e)),
        };
        let current = Key::new(&bytes, path)?;
        let old_file = old_path(path);
        let old_bytes = match std::fs::read(&old_file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StoreError::Io(format!("reading {}", old_file.display()), e)),
        };
        if old_bytes.len() % KEY_LEN != 0 {
            return Err(StoreError::Crypto(format!("{} is not a list of 32-byte keys", old_file.display())));
        }
        let old = old_bytes.chunks(KEY_LEN).map(|k| Key::new(k, &old_file)).collect::<Result<_, _>>()?;
        Ok(SecretCipher {
            ring: RwLock::new(KeyRing { current, old }),
            rotating: std::sync::Mutex::new(()),
            path: path.to_path_buf(),
            rng,
        })
    }

    fn keys(&self) -> std::sync::RwLockReadGuard<'_, KeyRing> {
        // A panic while rotating leaves either ring whole (the swap is one assignment).
        self.ring.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key ids in use.
    pub fn status(&self) -> KeyStatus {
        let ring = self.keys();
        KeyStatus { current: hex(&ring.current.id), old: ring.old.iter().map(|k| hex(&k.id)).collect() }
    }

    /// Whether `stored` was sealed with a key other than the current one.
    pub fn sealed_with_old_key(&self, stored: &[u8]) -> bool {
        match stored.strip_prefix(MAGIC_V2) {
            Some(rest) => rest.get(..KEY_ID_LEN).is_none_or(|id| id != self.keys().current.id),
            None => stored.starts_with(MAGIC_V1),
        }
    }

    /// Makes a new current key; the previous one is kept for reading. The old-key file is
    /// written before the key file is replaced, so a crash in between loses no key.
    pub fn rotate(&self) -> Result<KeyStatus, StoreError> {
        let _one_at_a_time = self.rotating.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut fresh = [0u8; KEY_LEN];
        self.rng.fill(&mut fresh).map_err(|_| StoreError::Crypto("no system randomness".into()))?;
        let current_bytes =
            std::fs::read(&self.path).map_err(|e| StoreError::Io(format!("reading {}", self.path.display()), e))?;
        let old_file = old_path(&self.path);
        let mut old_bytes = current_bytes.clone();
        match std::fs::read(&old_file) {
            Ok(b) => old_bytes.extend_from_slice(&b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io(format!("reading {}", old_file.display()), e)),
        }
        write_key_file(&old_file, &old_bytes)?;
        write_key_file(&self.path, &fresh)?;
        let new_current = Key::new(&fresh, &self.path)?;
        let mut ring = self.ring.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = std::mem::replace(&mut ring.current, new_current);
        ring.old.insert(0, previous);
        drop(ring);
        Ok(self.status())
    }

    /// `MAGIC_V2 | key id | nonce | ciphertext+tag`, bound to `key_name` so a value cannot be
    /// moved to another key.
    pub fn seal(&self, key_name: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| StoreError::Crypto("no system randomness".into()))?;
        let mut buf = plain.to_vec();
        let ring = self.keys();
        ring.current
            .key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key_name.as_bytes()), &mut buf)
            .map_err(|_| StoreError::Crypto("sealing failed".into()))?;
        let mut out = Vec::with_capacity(MAGIC_V2.len() + KEY_ID_LEN + NONCE_LEN + buf.len());
        out.extend_from_slice(MAGIC_V2);
        out.extend_from_slice(&ring.current.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens a value written by [`seal`](Self::seal) with whichever key sealed it; values
    /// without a marker are returned as they are.
    pub fn open(&self, key_name: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        let ring = self.keys();
        let (candidates, rest): (Vec<&Key>, &[u8]) = if let Some(rest) = stored.strip_prefix(MAGIC_V2) {
            if rest.len() < KEY_ID_LEN {
                return Err(StoreError::Crypto(format!("{key_name}: truncated sealed value")));
            }
            let (id, rest) = rest.split_at(KEY_ID_LEN);
            let key = std::iter::once(&ring.current).chain(&ring.old).find(|k| k.id == id).ok_or_else(|| {
                StoreError::Crypto(format!(
                    "{key_name}: sealed with key {} which is in neither {} nor its .old file",
                    hex(id),
                    self.path.display()
                ))
            })?;
            (vec![key], rest)
        } else if let Some(rest) = stored.strip_prefix(MAGIC_V1) {
            (std::iter::once(&ring.current).chain(&ring.old).collect(), rest)
        } else {
            return Ok(stored.to_vec());
        };
        if rest.len() < NONCE_LEN {
            return Err(StoreError::Crypto(format!("{key_name}: truncated sealed value")));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        for key in candidates {
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| StoreError::Crypto("bad nonce".into()))?;
            let mut buf = sealed.to_vec();
            if let Ok(plain) = key.key.open_in_place(nonce, Aad::from(key_name.as_bytes()), &mut buf) {
                return Ok(plain.to_vec());
            }
        }
        Err(StoreError::Crypto(format!(
            "{key_name}: cannot decrypt with the keys in {} (wrong or replaced encryption key?)",
            self.path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            // A leftover temp dir is harmless; the test's own assertions matter.
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("bramble-crypt-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    #[test]
    fn seal_open_round_trip_and_key_binding() {
        let dir = temp("round");
        let c = SecretCipher::load(&dir.0.join("k"), true).unwrap();
        let sealed = c.seal("r/secrets/a/b", b"hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert!(is_sealed(&sealed) && !c.sealed_with_old_key(&sealed));
        assert_eq!(c.open("r/secrets/a/b", &sealed).unwrap(), b"hunter2");
        assert!(c.open("r/secrets/a/c", &sealed).is_err());
        let again = SecretCipher::load(&dir.0.join("k"), false).unwrap();
        assert_eq!(again.open("r/secrets/a/b", &sealed).unwrap(), b"hunter2");
        let meta = std::fs::metadata(dir.0.join("k")).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
    }

    #[test]
    fn a_missing_key_is_made_only_when_allowed() {
        let dir = temp("missing");
        let e = SecretCipher::load(&dir.0.join("encryption.key"), false).err().unwrap();
        assert!(e.to_string().contains("encryption.key is missing"), "{e}");
        assert!(!dir.0.join("encryption.key").exists());
    }

    #[test]
    fn rotation_keeps_old_values_readable_and_seals_new_ones_with_the_new_key() {
        let dir = temp("rotate");
        let path = dir.0.join("k");
        let c = SecretCipher::load(&path, true).unwrap();
        let before = c.seal("s/a", b"one").unwrap();
        let first = c.status().current;
        let status = c.rotate().unwrap();
        assert_ne!(status.current, first);
        assert_eq!(status.old, vec![first.clone()]);
        assert!(c.sealed_with_old_key(&before));
        assert_eq!(c.open("s/a", &before).unwrap(), b"one");
        let after = c.seal("s/a", b"two").unwrap();
        assert!(!c.sealed_with_old_key(&after));
        // A restart reads both files.
        let reloaded = SecretCipher::load(&path, false).unwrap();
        assert_eq!(reloaded.status(), c.status());
        assert_eq!(reloaded.open("s/a", &before).unwrap(), b"one");
        assert_eq!(reloaded.open("s/a", &after).unwrap(), b"two");
        // Values sealed before key ids existed still open.
        let ring = reloaded.keys();
        let mut v1 = b"plain".to_vec();
        let nonce = [7u8; NONCE_LEN];
        ring.old[0]
            .key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&b"s/b"[..]), &mut v1)
            .unwrap();
        drop(ring);
        let stored = [MAGIC_V1, &nonce[..], &v1].concat();
        assert_eq!(reloaded.open("s/b", &stored).unwrap(), b"plain");
        assert!(reloaded.sealed_with_old_key(&stored));
        // Without the old keys, old values fail loudly with the key's id.
        std::fs::remove_file(old_path(&path)).unwrap();
        let lost = SecretCipher::load(&path, false).unwrap();
        let e = lost.open("s/a", &before).unwrap_err().to_string();
        assert!(e.contains(&first), "{e}");
    }
}
