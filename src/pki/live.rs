//! Certificates that change under a running process without dropping anything: rustls
//! asks a resolver for the key pair at each handshake, so a renewed certificate is used
//! from the next connection on while open connections carry on with the one they began with.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A serving key pair from a PEM certificate chain and a PEM private key.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the PEM text".into());
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("the private key is not PEM: {e}"))?
        .ok_or("no private key in the PEM text")?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("the key is not usable: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// The API server's certificate, swapped whole when it is renewed.
#[derive(Debug)]
pub struct LiveServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl LiveServerCert {
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<LiveServerCert, String> {
        Ok(LiveServerCert { current: RwLock::new(certified_key(cert_pem.as_bytes(), key_pem.as_bytes())?) })
    }

    /// Serves `cert_pem` from the next handshake on.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<(), String> {
        let key = certified_key(cert_pem.as_bytes(), key_pem.as_bytes())?;
        // A writer that panicked left a whole Arc behind: replace it all the same.
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = key;
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl ResolvesServerCert for LiveServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// How a client's key pair is read again (from its kubeconfig).
pub type Loader = Box<dyn Fn() -> Result<Arc<CertifiedKey>, String> + Send + Sync>;

/// A client certificate read from files and read again when one of them changes (checked
/// at each handshake: one `stat` per file), so that an agent or the embedded agent picks up
/// the certificate its renewal wrote without restarting or rebuilding its clients.
pub struct ReloadingClientCert {
    files: Vec<PathBuf>,
    load: Loader,
    state: Mutex<(Vec<Option<SystemTime>>, Arc<CertifiedKey>)>,
}

impl std::fmt::Debug for ReloadingClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingClientCert").field("files", &self.files).finish()
    }
}

fn stamps(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files.iter().map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok()).collect()
}

impl ReloadingClientCert {
    /// Loads the key pair now (an error is the caller's) and watches `files` for changes.
    pub fn new(files: Vec<PathBuf>, load: Loader) -> Result<ReloadingClientCert, String> {
        let seen = stamps(&files);
        let key = load()?;
        Ok(ReloadingClientCert { files, load, state: Mutex::new((seen, key)) })
    }

    /// The current key pair, read again first when a file changed since the last read.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let now = stamps(&self.files);
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.0 != now {
            // Stamped either way: a half-written or broken file is reported once, and the
            // key pair that worked is kept until a good one comes.
            state.0 = now;
            match (self.load)() {
                Ok(key) => {
                    tracing::info!(files = ?self.files, "the client certificate changed on disk: using the new one");
                    state.1 = key;
                }
                Err(e) => tracing::warn!(files = ?self.files, error = %e, "re-reading the client certificate"),
            }
        }
        state.1.clone()
    }
}

impl ResolvesClientCert for ReloadingClientCert {
    fn resolve(&self, _root_hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn a_renewed_server_certificate_is_served_from_then_on() {
        let (c1, k1) = self_signed("one");
        let (c2, k2) = self_signed("two");
        let live = LiveServerCert::new(&c1, &k1).unwrap();
        let first = live.get();
        live.set(&c2, &k2).unwrap();
        assert_ne!(live.get().cert, first.cert);
        assert!(live.set("garbage", &k2).is_err(), "a bad pair is refused");
        assert_ne!(live.get().cert, first.cert, "and the good one is kept");
    }

    #[test]
    fn a_client_certificate_is_read_again_when_its_file_changes() {
        let dir = std::env::temp_dir().join(format!("bramble-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pair.pem");
        let (c1, k1) = self_signed("one");
        std::fs::write(&file, format!("{c1}{k1}")).unwrap();
        let path = file.clone();
        let load: Loader = Box::new(move || {
            let text = std::fs::read(&path).map_err(|e| e.to_string())?;
            certified_key(&text, &text)
        });
        let live = ReloadingClientCert::new(vec![file.clone()], load).unwrap();
        let first = live.current();
        assert_eq!(live.current().cert, first.cert, "unchanged: the same pair");
        // A file that is not a pair keeps the old one.
        std::fs::write(&file, "half written").unwrap();
        let t = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(t).unwrap();
        assert_eq!(live.current().cert, first.cert);
        let (c2, k2) = self_signed("two");
        std::fs::write(&file, format!("{c2}{k2}")).unwrap();
        let t = SystemTime::now() + std::time::Duration::from_secs(10);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(t).unwrap();
        assert_ne!(live.current().cert, first.cert);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
