//! How agents join, k3s-style. The join token is `K10<sha256 of the CA>::server:<secret>`:
//! an agent fetches `/cacerts` without trusting anyone, checks the CA against the hash in
//! its token, and from then on talks only to a server holding that CA. With the secret it
//! then asks `/v1-bramble/node-credentials` for a client certificate of its own
//! (`system:node:<name>` in `system:nodes`).

use std::sync::Arc;

use serde_json::{Value, json};

use super::status::ApiError;
use crate::pki::Pki;

/// What the server needs to admit agents.
pub struct Join {
    /// The secret part of the token.
    pub secret: String,
    /// The cluster CA, which signs node certificates.
    pub pki: Arc<Pki>,
}

/// The hex SHA-256 of a CA certificate in PEM, as the token carries it.
pub fn ca_hash(ca_pem: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, ca_pem.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The full token for a secret.
pub fn token(ca_pem: &str, secret: &str) -> String {
    format!("K10{}::server:{secret}", ca_hash(ca_pem))
}

/// Splits a token into (CA hash, secret); a bare secret has no hash.
pub fn parse_token(token: &str) -> (Option<&str>, &str) {
    match token.strip_prefix("K10").and_then(|t| t.split_once("::")) {
        Some((hash, rest)) => (Some(hash), rest.split_once(':').map_or(rest, |(_, s)| s)),
        None => (None, token),
    }
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl Join {
    /// Answers a credentials request: `authorization` must carry the token (or its secret),
    /// `body` names the node.
    pub fn credentials(&self, authorization: Option<&str>, body: &Value) -> Result<Value, ApiError> {
        let presented = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).unwrap_or("");
        let (hash, secret) = parse_token(presented);
        let hash_ok = hash.is_none_or(|h| same(h.as_bytes(), ca_hash(&self.pki.ca.cert_pem).as_bytes()));
        if !hash_ok || !same(secret.as_bytes(), self.secret.as_bytes()) {
            return Err(ApiError::unauthorized());
        }
        let name = body["nodeName"].as_str().unwrap_or("");
        if !valid_node_name(name) {
            return Err(ApiError::bad_request(format!(
                "nodeName {name:?} must be a lowercase DNS-1123 subdomain, as node names are"
            )));
        }
        let pair = self
            .pki
            .issue(&format!("system:node:{name}"), &["system:nodes"], &[], false)
            .map_err(|e| ApiError::internal(format!("issuing the node certificate: {e}")))?;
        Ok(json!({"certificate": pair.cert_pem, "key": pair.key_pem, "ca": self.pki.ca.cert_pem}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_like_k3s() {
        assert_eq!(parse_token("K10abc::server:s3cret"), (Some("abc"), "s3cret"));
        assert_eq!(parse_token("s3cret"), (None, "s3cret"));
        assert!(token("CA", "x").starts_with("K10") && token("CA", "x").ends_with("::server:x"));
        assert!(valid_node_name("board-1") && !valid_node_name("Board_1") && !valid_node_name(""));
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
    }
}
