//! The Ingress proxy's certificates: `kubernetes.io/tls` Secrets named by Ingresses,
//! chosen per connection by SNI (a rustls [`ResolvesServerCert`]), and a self-signed
//! default certificate for names no Secret covers (as ingress-nginx's "Fake Certificate").

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::Value;
use tokio::sync::watch;

use super::Config;

/// A Secret's key pair, with the version it was read at (refetched when it changes).
#[derive(Clone)]
pub struct Loaded {
    pub version: String,
    pub key: Arc<CertifiedKey>,
}

/// Parses a TLS Secret's `tls.crt` (chain) and `tls.key` into a serving key.
pub fn parse_secret(secret: &Value) -> anyhow::Result<Arc<CertifiedKey>> {
    let field = |name: &str| -> anyhow::Result<Vec<u8>> {
        let b64 = secret
            .pointer(&format!("/data/{}", name.replace('/', "~1")))
            .and_then(Value::as_str)
            .with_context(|| format!("the Secret has no {name}"))?;
        base64::engine::general_purpose::STANDARD.decode(b64.trim()).with_context(|| format!("{name} is not base64"))
    };
    let crt = field("tls.crt")?;
    let key = field("tls.key")?;
    certified_key(&crt, &key)
}

/// A serving key from PEM certificate chain and private key.
pub fn certified_key(crt_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    crate::pki::live::certified_key(crt_pem, key_pem).map_err(|e| anyhow::anyhow!("tls.crt and tls.key: {e}"))
}

/// The default certificate: self-signed, made at start, for names no Secret covers.
pub fn default_key(node: &str) -> anyhow::Result<Arc<CertifiedKey>> {
    let made = rcgen::generate_simple_self_signed(vec!["ingress.local".to_string(), node.to_string()])
        .context("making the Ingress default certificate")?;
    certified_key(made.cert.pem().as_bytes(), made.signing_key.serialize_pem().as_bytes())
}

/// Picks the certificate for a connection's SNI name from the current configuration.
pub struct SniResolver {
    pub config: watch::Receiver<Arc<Config>>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let config = self.config.borrow().clone();
        let chosen = hello
            .server_name()
            .and_then(|sni| config.table.tls_secret_for(sni))
            .and_then(|secret| config.certs.get(&secret));
        Some(chosen.map_or_else(|| config.default_cert.clone(), |l| l.key.clone()))
    }
}

/// The certificates of the Secrets `found` (the followed Secrets that exist), parsing
/// only those new or changed since `have`. A Secret that cannot be parsed is left out (the
/// default certificate is served; the controller posts an Event on the Ingress) and
/// logged once per version, which `unusable` remembers.
pub fn load(
    found: impl Iterator<Item = ((String, String), Arc<Value>)>,
    have: &HashMap<(String, String), Loaded>,
    unusable: &mut HashMap<(String, String), String>,
) -> HashMap<(String, String), Loaded> {
    let mut out = HashMap::new();
    for (key, secret) in found {
        let version = secret.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("").to_string();
        if let Some(old) = have.get(&key).filter(|o| o.version == version) {
            out.insert(key, old.clone());
            continue;
        }
        match parse_secret(&secret) {
            Ok(cert) => {
                unusable.remove(&key);
                out.insert(key, Loaded { version, key: cert });
            }
            Err(e) => {
                if unusable.get(&key) != Some(&version) {
                    let name = format!("{}/{}", key.0, key.1);
                    tracing::warn!(secret = %name, error = %format!("{e:#}"), "an Ingress TLS Secret is unusable");
                    unusable.insert(key, version);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_new_versions_are_parsed_and_bad_ones_left_out() {
        let made = rcgen::generate_simple_self_signed(vec!["a.example".to_string()]).unwrap();
        let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
        let secret = |rv: &str, crt: String| {
            Arc::new(json!({"metadata": {"resourceVersion": rv},
                "data": {"tls.crt": b64(crt), "tls.key": b64(made.signing_key.serialize_pem())}}))
        };
        let key = ("ns".to_string(), "tls".to_string());
        let mut unusable = HashMap::new();
        let first = load([(key.clone(), secret("1", made.cert.pem()))].into_iter(), &HashMap::new(), &mut unusable);
        assert_eq!(first[&key].version, "1");
        // The same version is kept as it was, even when the object would not parse now.
        let kept = load([(key.clone(), secret("1", "junk".into()))].into_iter(), &first, &mut unusable);
        assert!(Arc::ptr_eq(&kept[&key].key, &first[&key].key));
        // A new, broken version is left out and remembered; a gone Secret is dropped.
        let broken = load([(key.clone(), secret("2", "junk".into()))].into_iter(), &kept, &mut unusable);
        assert!(broken.is_empty() && unusable[&key] == "2");
        assert!(load(std::iter::empty(), &first, &mut unusable).is_empty());
    }

    #[test]
    fn secrets_parse_and_garbage_is_refused() {
        let made = rcgen::generate_simple_self_signed(vec!["a.example".to_string()]).unwrap();
        let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
        let good = json!({"data": {"tls.crt": b64(made.cert.pem()), "tls.key": b64(made.signing_key.serialize_pem())}});
        assert!(parse_secret(&good).is_ok());
        let missing = json!({"data": {"tls.crt": b64(made.cert.pem())}});
        assert!(format!("{:#}", parse_secret(&missing).err().unwrap()).contains("tls.key"));
        let swapped =
            json!({"data": {"tls.crt": b64(made.signing_key.serialize_pem()), "tls.key": b64(made.cert.pem())}});
        assert!(parse_secret(&swapped).is_err());
        let junk = json!({"data": {"tls.crt": "!!!", "tls.key": "???"}});
        assert!(parse_secret(&junk).is_err());
    }
}
