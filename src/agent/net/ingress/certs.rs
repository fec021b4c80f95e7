//! The Ingress proxy's certificates: `kubernetes.io/tls` Secrets named by Ingresses,
//! chosen per connection by SNI (a rustls [`ResolvesServerCert`]), and a self-signed
//! default certificate for names no Secret covers (as ingress-nginx's "Fake Certificate").

use std::collections::{BTreeSet, HashMap};
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
    let chain: Vec<_> = rustls_pemfile::certs(&mut &crt_pem[..])
        .collect::<Result<_, _>>()
        .context("tls.crt is not a PEM certificate chain")?;
    anyhow::ensure!(!chain.is_empty(), "tls.crt holds no certificate");
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .context("tls.key is not a PEM private key")?
        .context("tls.key holds no private key")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("tls.key is not a usable key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
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

/// Reads the Secrets `wanted` names that are new or changed since `have`; what cannot be
/// read or parsed is left out (the default certificate is served; the controller posts
/// an Event on the Ingress) and logged once per version.
pub async fn refresh(
    client: &crate::client::Client,
    wanted: &BTreeSet<(String, String)>,
    have: &HashMap<(String, String), Loaded>,
) -> HashMap<(String, String), Loaded> {
    let mut out = HashMap::new();
    for (ns, name) in wanted {
        let path = format!("/api/v1/namespaces/{ns}/secrets/{name}");
        let secret = match client.get(&path).await {
            Ok(s) => s,
            Err(e) if crate::client::is_not_found(&e) || crate::client::is_forbidden(&e) => {
                // Deleted (or no longer ours to read): never served again.
                tracing::debug!(secret = %format!("{ns}/{name}"), error = %format!("{e:#}"), "a TLS Secret is gone");
                continue;
            }
            Err(e) => {
                // Kept while it cannot be read again (an API outage must not swap a
                // working certificate for the default one).
                if let Some(old) = have.get(&(ns.clone(), name.clone())) {
                    out.insert((ns.clone(), name.clone()), old.clone());
                } else {
                    tracing::debug!(secret = %format!("{ns}/{name}"), error = %format!("{e:#}"), "reading a TLS Secret");
                }
                continue;
            }
        };
        let version = secret.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("").to_string();
        let key = (ns.clone(), name.clone());
        if let Some(old) = have.get(&key).filter(|o| o.version == version) {
            out.insert(key, old.clone());
            continue;
        }
        match parse_secret(&secret) {
            Ok(cert) => {
                out.insert(key, Loaded { version, key: cert });
            }
            Err(e) => {
                tracing::warn!(secret = %format!("{ns}/{name}"), error = %format!("{e:#}"), "an Ingress TLS Secret is unusable")
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
