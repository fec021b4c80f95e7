//! How agents join, k3s-style. The join token is `K10<sha256 of the CA>::server:<secret>`:
//! an agent fetches `/cacerts` without trusting anyone, checks the CA against the hash in
//! its token, and from then on talks only to a server holding that CA. With the secret it
//! then asks `/v1-bramble/node-credentials` for a client certificate of its own
//! (`system:node:<name>` in `system:nodes`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use hyper::Request;
use serde_json::{Value, json};

use super::http::{Query, RequestBody};
use super::objects::Target;
use super::status::ApiError;
use super::{Api, resources};
use crate::pki::Pki;

/// What the server needs to admit agents.
pub struct Join {
    /// The secret part of the token.
    pub secret: String,
    /// The cluster CA, which signs node certificates.
    pub pki: Arc<Pki>,
    /// Recent failed joins per source address.
    pub failures: FailedJoins,
    /// How long node certificates last.
    pub node_cert_lifetime: Duration,
}

impl Join {
    pub fn new(secret: String, pki: Arc<Pki>) -> Join {
        Join { secret, pki, failures: FailedJoins::default(), node_cert_lifetime: crate::pki::LEAF_LIFETIME }
    }
}

/// The address a connection came from, put in each request's extensions by the listener.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub IpAddr);

/// Failed joins per source address in the current window: a guesser gets
/// [`MAX_FAILED_JOINS`] tries a minute, then 429 until the window ends.
#[derive(Default)]
pub struct FailedJoins(Mutex<HashMap<IpAddr, (Instant, u32)>>);

/// Failed joins one address may make per [`FAILED_JOIN_WINDOW`].
pub const MAX_FAILED_JOINS: u32 = 10;
/// How long failed joins are remembered.
pub const FAILED_JOIN_WINDOW: Duration = Duration::from_secs(60);

impl FailedJoins {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        // A panic while holding this lock leaves only counters behind: keep using them.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Refuses `ip` with 429 while it is over its failures in the current window.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), ApiError> {
        let mut t = self.table();
        t.retain(|_, (start, _)| now.duration_since(*start) < FAILED_JOIN_WINDOW);
        match t.get(&source(ip)) {
            Some((start, n)) if *n >= MAX_FAILED_JOINS => {
                let wait = FAILED_JOIN_WINDOW.saturating_sub(now.duration_since(*start)).as_secs().max(1);
                Err(ApiError::too_many_requests(
                    format!("too many failed joins from {ip}: check the token and try again in {wait} s"),
                    wait,
                ))
            }
            _ => Ok(()),
        }
    }

    /// Counts one failed join from `ip`. The table holds at most [`MAX_TRACKED_SOURCES`]
    /// sources (the oldest go first), so a flood of addresses cannot grow it.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut t = self.table();
        if t.len() >= MAX_TRACKED_SOURCES && !t.contains_key(&source(ip)) {
            let oldest = t.iter().min_by_key(|(_, (start, _))| *start).map(|(k, _)| *k);
            if let Some(k) = oldest {
                t.remove(&k);
            }
        }
        let entry = t.entry(source(ip)).or_insert((now, 0));
        entry.1 += 1;
    }
}

/// Most sources [`FailedJoins`] remembers at once.
pub const MAX_TRACKED_SOURCES: usize = 4096;

/// What one guesser is: an IPv4 address, or an IPv6 /64 (one host usually has a whole /64).
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
    }
}

/// Largest join request body: a node name and a password.
const MAX_JOIN_BODY: usize = 4096;

/// Where a node's password hash is kept: a Secret in `kube-system`, as k3s keeps
/// `<node>.node-password.k3s`.
pub fn password_secret_name(node: &str) -> String {
    format!("{node}.node-password.bramble")
}

/// A salted SHA-256 of a node password (the password is 32 random bytes the agent made, so
/// a slow hash buys nothing).
fn password_hash(salt: &str, password: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(salt.as_bytes());
    ctx.update(b":");
    ctx.update(password.as_bytes());
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
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
    /// Whether `authorization` carries the token (or its secret), and, when the token
    /// names a CA, this server's CA.
    fn token_ok(&self, authorization: Option<&str>) -> bool {
        let Some(presented) = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) else {
            return false;
        };
        let (hash, secret) = parse_token(presented);
        let hash_ok = hash.is_none_or(|h| same(h.as_bytes(), ca_hash(&self.pki.ca.cert_pem).as_bytes()));
        hash_ok && !secret.is_empty() && same(secret.as_bytes(), self.secret.as_bytes())
    }
}

impl Api {
    /// `POST /v1-bramble/node-credentials`: the token is checked before a byte of the body is
    /// read, failures are rate-limited per address, and a node name already joined with
    /// another password is refused (k3s's node password), so the token alone never hands
    /// out an existing node's identity.
    pub(super) async fn join_node(&self, join: &Join, req: Request<RequestBody>) -> Result<Value, ApiError> {
        let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
        if let Some(ip) = peer {
            join.failures.check(ip, Instant::now())?;
        }
        let authorization = req.headers().get("authorization").and_then(|v| v.to_str().ok());
        if !join.token_ok(authorization) {
            if let Some(ip) = peer {
                join.failures.failed(ip, Instant::now());
            }
            return Err(ApiError::unauthorized());
        }
        let (_, body) = super::http::read_body_limited(req, MAX_JOIN_BODY).await?;
        let body: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the join request is not JSON: {e}")))?;
        let name = body["nodeName"].as_str().unwrap_or("");
        if !valid_node_name(name) {
            return Err(ApiError::bad_request(format!(
                "nodeName {name:?} must be a lowercase DNS-1123 subdomain, as node names are"
            )));
        }
        let password = body["nodePassword"].as_str().unwrap_or("");
        if !(16..=256).contains(&password.len()) {
            return Err(ApiError::bad_request(
                "nodePassword must be 16 to 256 characters: agents keep theirs in <data-dir>/agent/node-password",
            ));
        }
        self.check_node_password(name, password).await?;
        let pair = join
            .pki
            .issue_node(name, join.node_cert_lifetime)
            .map_err(|e| ApiError::internal(format!("issuing the node certificate: {e}")))?;
        Ok(json!({"certificate": pair.cert_pem, "key": pair.key_pem, "ca": join.pki.ca.cert_pem}))
    }

    /// `POST /v1-bramble/node-certificate`: a node renews its own client certificate with
    /// the one it still has. Only a client certificate of `system:node:<name>` in
    /// `system:nodes` is accepted (no token, no impersonation), only for a node that is still
    /// a member (its node password is kept: `kubectl delete node` revokes renewal), and the
    /// request contributes its public key alone.
    pub(super) async fn renew_node_certificate(
        &self,
        join: &Join,
        cert_user: Option<&super::auth::User>,
        req: Request<RequestBody>,
    ) -> Result<Value, ApiError> {
        let node = cert_user
            .filter(|u| u.groups.iter().any(|g| g == "system:nodes"))
            .and_then(|u| u.name.strip_prefix("system:node:"))
            .filter(|n| valid_node_name(n))
            .ok_or_else(|| {
                ApiError::forbidden(
                    "only a node may renew its certificate, with its current client certificate (system:node:NAME)",
                )
            })?
            .to_string();
        let secrets =
            resources::find("", "v1", "secrets").ok_or_else(|| ApiError::internal("secrets are not served"))?;
        let target = Target {
            res: secrets,
            namespace: Some("kube-system".into()),
            name: Some(password_secret_name(&node)),
            sub: None,
        };
        if self.get_object(&target).is_err() {
            return Err(ApiError::forbidden(format!(
                "node {node:?} is no longer a member of the cluster (it was deleted): join it again with the token"
            )));
        }
        let (_, body) = super::http::read_body_limited(req, MAX_JOIN_BODY).await?;
        let body: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the renewal request is not JSON: {e}")))?;
        let request = body["certificateRequest"].as_str().ok_or_else(|| {
            ApiError::bad_request("certificateRequest must hold a PEM certificate request (CSR) for the new key")
        })?;
        let cert = join.pki.sign_node_request(&node, request, join.node_cert_lifetime).map_err(|e| {
            ApiError::bad_request(format!("certificateRequest is not a valid, self-signed certificate request: {e}"))
        })?;
        tracing::info!(node = %node, "renewed a node certificate");
        Ok(json!({"certificate": cert, "ca": join.pki.ca.cert_pem}))
    }

    /// Keeps the first password a node name joins with, and refuses any other after it.
    async fn check_node_password(&self, node: &str, password: &str) -> Result<(), ApiError> {
        let secrets =
            resources::find("", "v1", "secrets").ok_or_else(|| ApiError::internal("secrets are not served"))?;
        let target = Target {
            res: secrets,
            namespace: Some("kube-system".into()),
            name: Some(password_secret_name(node)),
            sub: None,
        };
        loop {
            match self.get_object(&target) {
                Ok(stored) => {
                    let field = |k: &str| stored.pointer(&format!("/data/{k}")).and_then(Value::as_str).unwrap_or("");
                    let decode = |k: &str| {
                        base64::engine::general_purpose::STANDARD
                            .decode(field(k))
                            .ok()
                            .and_then(|b| String::from_utf8(b).ok())
                            .unwrap_or_default()
                    };
                    let (salt, hash) = (decode("salt"), decode("hash"));
                    if same(password_hash(&salt, password).as_bytes(), hash.as_bytes()) {
                        return Ok(());
                    }
                    return Err(ApiError::forbidden(format!(
                        "node {node:?} already joined with another node password: this board is not that node. If it \
                         replaces it, remove the old one first (`kubectl delete node {node}`, which also forgets its \
                         password), or join this board under another name (--node-name)"
                    )));
                }
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
            // A Node without a password record joined some other way (the server's own
            // node, or before node passwords): its name is not free for the token to take.
            let nodes = resources::find("", "v1", "nodes").ok_or_else(|| ApiError::internal("nodes are not served"))?;
            let node_target = Target { res: nodes, namespace: None, name: Some(node.to_string()), sub: None };
            match self.get_object(&node_target) {
                Ok(_) => {
                    return Err(ApiError::forbidden(format!(
                        "node {node:?} already exists and has no node password on record: if this board replaces \
                         it, remove the old one first (`kubectl delete node {node}`), or join this board under \
                         another name (--node-name)"
                    )));
                }
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
            let mut salt = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
                .map_err(|_| ApiError::internal("no system randomness for a node password salt"))?;
            let salt: String = salt.iter().map(|b| format!("{b:02x}")).collect();
            let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
            let secret = json!({"metadata": {"name": password_secret_name(node), "namespace": "kube-system",
                                   "labels": {"bramble.io/node-password": node}},
                "type": "bramble.io/node-password",
                "data": {"salt": b64(&salt), "hash": b64(&password_hash(&salt, password))}});
            let create = Target { name: None, ..target.clone() };
            match self.create(&create, &Query::default(), secret).await {
                Ok(_) => return Ok(()),
                // Another join of the same name won the race: compare with its password.
                Err(e) if e.code == 409 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Forgets a deleted node's password, so a new board may join under its name.
    pub(super) async fn forget_node_password(&self, node: &str) {
        let Some(secrets) = resources::find("", "v1", "secrets") else { return };
        let target = Target {
            res: secrets,
            namespace: Some("kube-system".into()),
            name: Some(password_secret_name(node)),
            sub: None,
        };
        match self.delete(&target, &Query::default(), json!({})).await {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => tracing::warn!(node, error = %e.message, "forgetting the deleted node's password"),
        }
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

    #[test]
    fn failed_joins_are_limited_per_address_and_forgotten_after_the_window() {
        let f = FailedJoins::default();
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let t0 = Instant::now();
        for _ in 0..MAX_FAILED_JOINS {
            assert!(f.check(a, t0).is_ok());
            f.failed(a, t0);
        }
        let e = f.check(a, t0).unwrap_err();
        assert_eq!(e.code, 429);
        assert!(f.check(b, t0).is_ok(), "another address is not held back");
        assert!(f.check(a, t0 + FAILED_JOIN_WINDOW).is_ok());
        // One IPv6 host is its /64; the table stays bounded whatever the flood.
        let v6 = |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, last));
        for i in 0..MAX_FAILED_JOINS as u16 {
            f.failed(v6(i), t0);
        }
        assert_eq!(f.check(v6(999), t0).unwrap_err().code, 429);
        for i in 0..(MAX_TRACKED_SOURCES as u32 + 10) {
            f.failed(IpAddr::V4(i.into()), t0);
        }
        assert!(f.table().len() <= MAX_TRACKED_SOURCES);
    }

    #[test]
    fn tokens_need_the_secret_and_the_right_ca() {
        let dir = std::env::temp_dir().join(format!("bramble-join-test-{}", std::process::id()));
        let pki = Pki::load_or_create(&dir, &["127.0.0.1".into()], crate::pki::LEAF_LIFETIME);
        std::fs::remove_dir_all(&dir).ok();
        let pki = Arc::new(pki.unwrap());
        let j = Join::new("s3cret".into(), pki.clone());
        assert!(j.token_ok(Some("Bearer s3cret")));
        assert!(j.token_ok(Some(&format!("Bearer {}", token(&pki.ca.cert_pem, "s3cret")))));
        assert!(!j.token_ok(Some(&format!("Bearer {}", token("another CA", "s3cret")))));
        assert!(!j.token_ok(Some("Bearer wrong")) && !j.token_ok(Some("Bearer ")) && !j.token_ok(None));
        assert!(!j.token_ok(Some("s3cret")), "not a bearer token");
        assert_ne!(password_hash("a", "pw"), password_hash("b", "pw"));
    }
}
