//! ServiceAccount tokens: the JWTs the API server issues (TokenRequest, `kubectl create
//! token`, the projected `kube-api-access-*` volume, legacy `kubernetes.io/service-account-token`
//! Secrets), verifies on every bearer-authenticated request, and publishes for OIDC discovery
//! (`/.well-known/openid-configuration`, `/openid/v1/jwks`).
//!
//! Pure: no store, no clock, no network. The caller passes `now` (unix seconds) and looks the
//! bound objects up itself: a [`Verified`] token still names a ServiceAccount, Pod, Secret or
//! Node whose existence and UID the API must check, as upstream's validator does.
//!
//! The token format is upstream's (`pkg/serviceaccount/{claims,jwt,legacy}.go`): ES256 over
//! P-256, `kid` = base64url(SHA-256(SubjectPublicKeyInfo DER)), the `kubernetes.io` private
//! claim for bound tokens and the flat `kubernetes.io/serviceaccount/*` claims for legacy
//! ones, so tokens and JWKS look to clients exactly as a Kubernetes cluster's do.
//!
//! Called by the API (token issue and authentication) and by the server at start (the key).
//! Calls only `ring`, `base64`, `serde_json` and the file system (in [`SigningKey::load_or_create`]).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

/// The issuer of legacy Secret-based tokens, fixed by upstream: those tokens predate
/// `--service-account-issuer` and clients never check it.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// Tokens longer than this are refused before any decoding: a bearer token is at most a few
/// hundred bytes, and an attacker should not make the server base64-decode and hash megabytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Clock skew tolerated on `nbf`, `iat` and `exp`, in seconds: upstream's go-jose
/// `DefaultLeeway` (one minute), which it applies to all three claims.
pub const LEEWAY_SECS: i64 = 60;

/// The only JWS algorithm issued or accepted.
const ALG: &str = "ES256";

/// DER of the SubjectPublicKeyInfo header for an uncompressed P-256 point: SEQUENCE {
/// SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) }. The 65-byte point
/// follows. Hashing the whole (91 bytes) gives the same kid as Go's `x509.MarshalPKIXPublicKey`.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// Why the signing key could not be loaded, made or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file exists but could not be read.
    #[error("reading the service account signing key {path}: {source} (check the file's permissions)")]
    Read { path: PathBuf, source: std::io::Error },
    /// The key file holds something other than a P-256 PKCS#8 key.
    #[error(
        "the service account signing key {path} is unusable: {reason}; restore it from a backup, \
         or move it away to have a new key made (tokens signed with the old key then stop working)"
    )]
    Corrupt { path: PathBuf, reason: String },
    /// A new key could not be stored.
    #[error("writing the service account signing key {path}: {source} (check the directory exists and is writable)")]
    Write { path: PathBuf, source: std::io::Error },
    /// The kernel gave no randomness for a key, a signature or a token ID.
    #[error("no randomness from the operating system for the service account key: check /dev/urandom and getrandom(2)")]
    Random,
}

/// Why a bearer token was refused. The client only ever sees 401 Unauthorized; the variants
/// exist so the API can log why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_BYTES`]; not decoded at all.
    #[error("token is {len} bytes, over the {MAX_TOKEN_BYTES}-byte limit")]
    TooLarge { len: usize },
    /// Not a compact JWS, or its header or claims are not what a ServiceAccount token holds.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names an algorithm other than ES256 (`none`, HS256, RS256, ...).
    #[error("token algorithm {0:?} is not accepted (only ES256)")]
    UnsupportedAlgorithm(String),
    /// The header names a key ID that is not this server's key.
    #[error("token was signed by key {0:?}, not this server's")]
    UnknownKey(String),
    /// The signature does not verify with this server's key.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` passed (beyond [`LEEWAY_SECS`]).
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: i64, now: i64 },
    /// `nbf` or `iat` lies in the future (beyond [`LEEWAY_SECS`]).
    #[error("token is not valid before {at} ({claim}; now {now})")]
    NotYetValid { claim: &'static str, at: i64, now: i64 },
    /// `iss` is neither this server's issuer nor the legacy one.
    #[error("token issuer {0:?} is not this server's")]
    WrongIssuer(String),
    /// `aud` shares no audience with the ones this server accepts.
    #[error("token audiences {aud:?} are not among the accepted {accepted:?}")]
    WrongAudience { aud: Vec<String>, accepted: Vec<String> },
}

/// A name and UID, as upstream's `ref` in the `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectRef {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`: a later object of the same name is a different object.
    pub uid: String,
}

/// The kinds of object a bound token may be tied to: the token dies with the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundKind {
    /// The token dies with the pod (the projected `kube-api-access-*` volume's tokens).
    Pod,
    /// The token dies with the Secret.
    Secret,
    /// The token dies with the Node.
    Node,
}

impl BoundKind {
    /// The Kubernetes kind, as TokenRequest's `spec.boundObjectRef.kind` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            BoundKind::Pod => "Pod",
            BoundKind::Secret => "Secret",
            BoundKind::Node => "Node",
        }
    }

    /// The key of this kind's reference in the `kubernetes.io` claim.
    fn claim_key(self) -> &'static str {
        match self {
            BoundKind::Pod => "pod",
            BoundKind::Secret => "secret",
            BoundKind::Node => "node",
        }
    }
}

/// The object a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundObject {
    /// What kind of object it is.
    pub kind: BoundKind,
    /// The object's name (in the ServiceAccount's namespace, except for a Node).
    pub name: String,
    /// The object's UID, so a new object of the same name does not revive the token.
    pub uid: String,
}

/// What a bound token is issued for: a TokenRequest after the API has validated and
/// defaulted it (audiences non-empty, expiration within bounds) and looked up the objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundTokenRequest {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The ServiceAccount's name and UID.
    pub service_account: ObjectRef,
    /// `spec.audiences`: who may accept the token.
    pub audiences: Vec<String>,
    /// `spec.expirationSeconds`: `exp` is `now` plus this.
    pub expiration_secs: i64,
    /// `spec.boundObjectRef`, resolved to the object's UID.
    pub bound: Option<BoundObject>,
    /// Upstream's `warnafter`, seconds after `now`: set on the kubelet's extended projected
    /// tokens so use past this point can be reported as a stale token.
    pub warn_after_secs: Option<i64>,
}

/// What a legacy `kubernetes.io/service-account-token` Secret's token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyTokenRequest {
    /// The ServiceAccount's (and the Secret's) namespace.
    pub namespace: String,
    /// The ServiceAccount's name and UID.
    pub service_account: ObjectRef,
    /// The Secret the token is stored in.
    pub secret_name: String,
}

/// A token whose signature, issuer, audience and times checked out. The API must still
/// check that the ServiceAccount (and the bound object, or the legacy Secret) exists with
/// the UID named here before trusting it, as upstream's validators do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `system:serviceaccount:<namespace>:<name>`.
    pub username: String,
    /// `system:serviceaccounts` and `system:serviceaccounts:<namespace>`; the caller adds
    /// `system:authenticated`.
    pub groups: Vec<String>,
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The ServiceAccount's name and UID.
    pub service_account: ObjectRef,
    /// The object a bound token is tied to: the pod if the token names one, else the
    /// secret, else the node (upstream puts a pod's node next to the pod; that one is not
    /// a binding of its own).
    pub bound: Option<BoundObject>,
    /// For a legacy token: the Secret it came from, whose data must still hold this token.
    pub legacy_secret: Option<String>,
    /// `exp`; None for legacy tokens, which do not expire.
    pub exp: Option<i64>,
    /// `jti`, the token's unique ID (upstream's credential ID).
    pub jti: Option<String>,
    /// `kubernetes.io.warnafter`: past this, the token is stale (still valid).
    pub warn_after: Option<i64>,
}

impl Verified {
    /// The `extra` of the user this token authenticates, as upstream's
    /// `ServiceAccountInfo.UserInfo` fills it (TokenReview and SelfSubjectReview show it).
    pub fn extra(&self) -> Vec<(&'static str, String)> {
        let mut extra = Vec::new();
        let keys = |kind| match kind {
            BoundKind::Pod => Some(("authentication.kubernetes.io/pod-name", "authentication.kubernetes.io/pod-uid")),
            BoundKind::Node => {
                Some(("authentication.kubernetes.io/node-name", "authentication.kubernetes.io/node-uid"))
            }
            BoundKind::Secret => None,
        };
        if let Some(b) = &self.bound
            && let Some((name_key, uid_key)) = keys(b.kind)
        {
            extra.push((name_key, b.name.clone()));
            extra.push((uid_key, b.uid.clone()));
        }
        if let Some(jti) = &self.jti {
            extra.push(("authentication.kubernetes.io/credential-id", format!("JTI={jti}")));
        }
        extra
    }
}

/// `system:serviceaccount:<namespace>:<name>`, the user name a ServiceAccount acts as.
pub fn username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The server's ES256 (P-256) key that signs every ServiceAccount token.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    /// The uncompressed point `04 || X || Y`.
    public: [u8; 65],
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads the key from `path`, or makes one and stores it there if the file does not
    /// exist, so tokens survive a restart.
    ///
    /// The file is a PEM `PRIVATE KEY` block (unencrypted PKCS#8, as `openssl genpkey
    /// -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes it); raw PKCS#8 DER is read
    /// too. A new file is written with mode 0600 through a temporary file in the same
    /// directory, fsynced and renamed, so a crash never leaves half a key. An existing
    /// file's permissions are left as they are. Blocking: call it at start or from
    /// `spawn_blocking`.
    pub fn load_or_create(path: &Path) -> Result<SigningKey, KeyError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let corrupt = |reason: String| KeyError::Corrupt { path: path.to_path_buf(), reason };
                let der = pkcs8_der(&bytes).map_err(corrupt)?;
                SigningKey::from_pkcs8(&der).map_err(corrupt)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = SystemRandom::new();
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| KeyError::Random)?;
                write_private_atomic(path, pem_encode(doc.as_ref()).as_bytes())?;
                // ring parses what it generated; only its randomness can fail here.
                SigningKey::from_pkcs8(doc.as_ref()).map_err(|_| KeyError::Random)
            }
            Err(source) => Err(KeyError::Read { path: path.to_path_buf(), source }),
        }
    }

    /// A fresh key kept only in memory: tokens it signs die with the process.
    pub fn generate() -> Result<SigningKey, KeyError> {
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| KeyError::Random)?;
        // ring parses what it generated; only its randomness can fail here.
        SigningKey::from_pkcs8(doc.as_ref()).map_err(|_| KeyError::Random)
    }

    fn from_pkcs8(der: &[u8]) -> Result<SigningKey, String> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| format!("not an unencrypted PKCS#8 ECDSA P-256 private key ({e})"))?;
        let public: [u8; 65] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| "the public key is not an uncompressed P-256 point".to_string())?;
        let mut spki = Vec::with_capacity(P256_SPKI_PREFIX.len() + public.len());
        spki.extend_from_slice(&P256_SPKI_PREFIX);
        spki.extend_from_slice(&public);
        let kid = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &spki));
        Ok(SigningKey { pair, public, kid, rng })
    }

    /// The key ID in every token's header and in the JWKS: upstream's, base64url (no
    /// padding) of SHA-256 of the public key's DER SubjectPublicKeyInfo, so relying parties
    /// that cache keys by ID see the same IDs a Kubernetes cluster would give.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK Set, served at `/openid/v1/jwks` so other parties (cloud
    /// identity federation, Vault, service meshes) can verify tokens without calling us.
    pub fn jwks(&self) -> Value {
        let (x, y) = self.public[1..].split_at(32);
        json!({"keys": [{
            "use": "sig",
            "kty": "EC",
            "kid": self.kid,
            "crv": "P-256",
            "alg": ALG,
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        }]})
    }

    /// The OIDC discovery document served at `/.well-known/openid-configuration`, with
    /// upstream's fields: enough for a relying party to find the JWKS and the algorithm.
    pub fn openid_configuration(&self, issuer: &str) -> Value {
        json!({
            "issuer": issuer,
            "jwks_uri": format!("{}/openid/v1/jwks", issuer.trim_end_matches('/')),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALG],
        })
    }

    /// Issues a bound token (TokenRequest) valid from `now` for `req.expiration_secs`, with
    /// upstream's claims: `iss`, `sub`, `aud`, `iat`, `nbf`, `exp`, a random UUID `jti`
    /// and the `kubernetes.io` private claim naming the ServiceAccount and bound object.
    pub fn issue(&self, issuer: &str, req: &BoundTokenRequest, now: i64) -> Result<String, KeyError> {
        let mut k8s = json!({
            "namespace": req.namespace,
            "serviceaccount": {"name": req.service_account.name, "uid": req.service_account.uid},
        });
        if let Some(b) = &req.bound {
            k8s[b.kind.claim_key()] = json!({"name": b.name, "uid": b.uid});
        }
        if let Some(secs) = req.warn_after_secs {
            k8s["warnafter"] = json!(now.saturating_add(secs));
        }
        let claims = json!({
            "iss": issuer,
            "sub": username(&req.namespace, &req.service_account.name),
            "aud": req.audiences,
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(req.expiration_secs),
            "jti": self.random_uuid()?,
            "kubernetes.io": k8s,
        });
        self.sign(claims.to_string().as_bytes())
    }

    /// Issues the token a legacy `kubernetes.io/service-account-token` Secret holds:
    /// upstream's legacy claims, issuer [`LEGACY_ISSUER`], no audience and no expiry.
    pub fn issue_legacy(&self, req: &LegacyTokenRequest) -> Result<String, KeyError> {
        let claims = json!({
            "iss": LEGACY_ISSUER,
            "sub": username(&req.namespace, &req.service_account.name),
            "kubernetes.io/serviceaccount/namespace": req.namespace,
            "kubernetes.io/serviceaccount/secret.name": req.secret_name,
            "kubernetes.io/serviceaccount/service-account.name": req.service_account.name,
            "kubernetes.io/serviceaccount/service-account.uid": req.service_account.uid,
        });
        self.sign(claims.to_string().as_bytes())
    }

    /// Signs `payload` as a compact JWS with header `{"alg":"ES256","kid":...}` and a raw
    /// 64-byte `r || s` signature (JWA's ES256 form).
    fn sign(&self, payload: &[u8]) -> Result<String, KeyError> {
        let header = json!({"alg": ALG, "kid": self.kid}).to_string();
        self.sign_with_header(header.as_bytes(), payload)
    }

    fn sign_with_header(&self, header: &[u8], payload: &[u8]) -> Result<String, KeyError> {
        let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
        let sig = self.pair.sign(&self.rng, signing_input.as_bytes()).map_err(|_| KeyError::Random)?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }

    /// A version 4 UUID from the kernel's randomness, as upstream's `jti`.
    fn random_uuid(&self) -> Result<String, KeyError> {
        let mut b = [0u8; 16];
        self.rng.fill(&mut b).map_err(|_| KeyError::Random)?;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        Ok(format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]))
    }

    /// Authenticates a bearer token: checks size and shape, that the header says ES256 (and
    /// our kid, if any), the signature, and only then parses the claims. A bound token must
    /// carry `issuer`, an `aud` sharing one of `audiences`, and be within `nbf`/`iat`/`exp`
    /// give or take [`LEEWAY_SECS`]; a legacy token (issuer [`LEGACY_ISSUER`]) carries no
    /// expiry and must name its namespace, Secret and ServiceAccount.
    ///
    /// As upstream: a token without `aud` counts as meant for `audiences` (the API server's
    /// own), and an empty `audiences` accepts any `aud`.
    pub fn verify(&self, token: &str, issuer: &str, audiences: &[String], now: i64) -> Result<Verified, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge { len: token.len() });
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("not three dot-separated parts"));
        };
        let header: Header = serde_json::from_slice(&decode_part(header_b64, "header")?)
            .map_err(|e| TokenError::Malformed(format!("header is not a JWS header: {e}")))?;
        if header.alg != ALG {
            return Err(TokenError::UnsupportedAlgorithm(header.alg));
        }
        if header.crit.is_some() {
            return Err(malformed("header has critical extensions"));
        }
        if let Some(kid) = header.kid
            && kid != self.kid
        {
            return Err(TokenError::UnknownKey(kid));
        }
        let sig = decode_part(sig_b64, "signature")?;
        let signed_len = header_b64.len() + 1 + payload_b64.len();
        let signing_input = token.get(..signed_len).ok_or_else(|| malformed("not three dot-separated parts"))?;
        ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(signing_input.as_bytes(), &sig)
            .map_err(|_| TokenError::BadSignature)?;

        let claims: Claims = serde_json::from_slice(&decode_part(payload_b64, "payload")?)
            .map_err(|e| TokenError::Malformed(format!("claims are not a JSON object of JWT claims: {e}")))?;
        let iss = claims.iss.clone().unwrap_or_default();
        if iss != issuer && iss != LEGACY_ISSUER {
            return Err(TokenError::WrongIssuer(iss));
        }
        if !claims.aud.is_empty() && !audiences.is_empty() && !claims.aud.iter().any(|a| audiences.contains(a)) {
            return Err(TokenError::WrongAudience { aud: claims.aud, accepted: audiences.to_vec() });
        }
        if iss == LEGACY_ISSUER { legacy(claims) } else { bound(claims, now) }
    }
}

/// The JWS header fields we look at; others (`typ`, ...) are ignored.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Extensions the token says must be understood: we understand none.
    #[serde(default)]
    crit: Option<Value>,
}

/// The claims of both token kinds, read after the signature checked out.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default, deserialize_with = "audience")]
    aud: Vec<String>,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<i64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<i64>,
    #[serde(default, deserialize_with = "numeric_date")]
    iat: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default, rename = "kubernetes.io")]
    kubernetes: Option<PrivateClaims>,
    #[serde(default, rename = "kubernetes.io/serviceaccount/namespace")]
    legacy_namespace: Option<String>,
    #[serde(default, rename = "kubernetes.io/serviceaccount/secret.name")]
    legacy_secret_name: Option<String>,
    #[serde(default, rename = "kubernetes.io/serviceaccount/service-account.name")]
    legacy_sa_name: Option<String>,
    #[serde(default, rename = "kubernetes.io/serviceaccount/service-account.uid")]
    legacy_sa_uid: Option<String>,
}

/// Upstream's `kubernetes.io` claim.
#[derive(Deserialize)]
struct PrivateClaims {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    serviceaccount: Option<RefClaim>,
    #[serde(default)]
    pod: Option<RefClaim>,
    #[serde(default)]
    secret: Option<RefClaim>,
    #[serde(default)]
    node: Option<RefClaim>,
    #[serde(default, deserialize_with = "numeric_date")]
    warnafter: Option<i64>,
}

#[derive(Deserialize)]
struct RefClaim {
    #[serde(default)]
    name: String,
    #[serde(default)]
    uid: String,
}

/// `aud` is a string or an array of strings (RFC 7519 section 4.1.3).
fn audience<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Aud>::deserialize(d)? {
        None => Vec::new(),
        Some(Aud::One(a)) => vec![a],
        Some(Aud::Many(v)) => v,
    })
}

/// A NumericDate: any JSON number of seconds, fractions truncated as go-jose does.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.map(|f| f as i64))
}

fn malformed(why: &str) -> TokenError {
    TokenError::Malformed(why.to_string())
}

fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD.decode(part).map_err(|e| TokenError::Malformed(format!("{what} is not unpadded base64url: {e}")))
}

fn non_empty(v: Option<String>, what: &str) -> Result<String, TokenError> {
    v.filter(|s| !s.is_empty()).ok_or_else(|| TokenError::Malformed(format!("{what} claim is missing")))
}

/// Checks a bound token's times and reads its `kubernetes.io` claim.
fn bound(claims: Claims, now: i64) -> Result<Verified, TokenError> {
    if let Some(nbf) = claims.nbf
        && now.saturating_add(LEEWAY_SECS) < nbf
    {
        return Err(TokenError::NotYetValid { claim: "nbf", at: nbf, now });
    }
    let exp = claims.exp.ok_or_else(|| malformed("exp claim is missing"))?;
    if now.saturating_sub(LEEWAY_SECS) > exp {
        return Err(TokenError::Expired { exp, now });
    }
    if let Some(iat) = claims.iat
        && now.saturating_add(LEEWAY_SECS) < iat
    {
        return Err(TokenError::NotYetValid { claim: "iat", at: iat, now });
    }
    let k8s = claims.kubernetes.ok_or_else(|| malformed("kubernetes.io claim is missing"))?;
    let namespace = non_empty(Some(k8s.namespace), "kubernetes.io.namespace")?;
    let sa = k8s.serviceaccount.ok_or_else(|| malformed("kubernetes.io.serviceaccount claim is missing"))?;
    let service_account = ObjectRef {
        name: non_empty(Some(sa.name), "kubernetes.io.serviceaccount.name")?,
        uid: non_empty(Some(sa.uid), "kubernetes.io.serviceaccount.uid")?,
    };
    let bound = [(BoundKind::Pod, k8s.pod), (BoundKind::Secret, k8s.secret), (BoundKind::Node, k8s.node)]
        .into_iter()
        .find_map(|(kind, r)| r.map(|r| BoundObject { kind, name: r.name, uid: r.uid }));
    if let Some(b) = &bound
        && (b.name.is_empty() || b.uid.is_empty())
    {
        return Err(TokenError::Malformed(format!("kubernetes.io.{} claim lacks a name or uid", b.kind.claim_key())));
    }
    Ok(Verified {
        username: username(&namespace, &service_account.name),
        groups: groups(&namespace),
        namespace,
        service_account,
        bound,
        legacy_secret: None,
        exp: Some(exp),
        jti: claims.jti.filter(|j| !j.is_empty()),
        warn_after: k8s.warnafter,
    })
}

/// Reads a legacy token's claims; like upstream, every one must be present and `sub` must
/// name the same ServiceAccount.
fn legacy(claims: Claims) -> Result<Verified, TokenError> {
    let sub = non_empty(claims.sub, "sub")?;
    let namespace = non_empty(claims.legacy_namespace, "kubernetes.io/serviceaccount/namespace")?;
    let secret = non_empty(claims.legacy_secret_name, "kubernetes.io/serviceaccount/secret.name")?;
    let name = non_empty(claims.legacy_sa_name, "kubernetes.io/serviceaccount/service-account.name")?;
    let uid = non_empty(claims.legacy_sa_uid, "kubernetes.io/serviceaccount/service-account.uid")?;
    let user = username(&namespace, &name);
    if sub != user {
        return Err(TokenError::Malformed(format!("sub claim {sub:?} does not name {user}")));
    }
    Ok(Verified {
        username: user,
        groups: groups(&namespace),
        namespace,
        service_account: ObjectRef { name, uid },
        bound: None,
        legacy_secret: Some(secret),
        exp: None,
        jti: None,
        warn_after: None,
    })
}

fn groups(namespace: &str) -> Vec<String> {
    vec!["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{namespace}")]
}

/// The PKCS#8 DER in a key file: the first `PRIVATE KEY` PEM block, or the file itself if
/// it is DER.
fn pkcs8_der(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.first() == Some(&0x30) {
        return Ok(bytes.to_vec());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "neither PEM text nor DER".to_string())?;
    if text.contains("-----BEGIN EC PRIVATE KEY-----") {
        return Err("it is a SEC1 `EC PRIVATE KEY`; convert it with `openssl pkcs8 -topk8 -nocrypt`".to_string());
    }
    let (_, rest) = text.split_once(PEM_BEGIN).ok_or_else(|| format!("no `{PEM_BEGIN}` block"))?;
    let (body, _) = rest.split_once(PEM_END).ok_or_else(|| format!("no `{PEM_END}` line"))?;
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(b64).map_err(|e| format!("the PEM block is not base64: {e}"))
}

fn pem_encode(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut pem = String::with_capacity(b64.len() + b64.len() / 64 + PEM_BEGIN.len() + PEM_END.len() + 4);
    pem.push_str(PEM_BEGIN);
    for (i, c) in b64.chars().enumerate() {
        if i % 64 == 0 {
            pem.push('\n');
        }
        pem.push(c);
    }
    pem.push('\n');
    pem.push_str(PEM_END);
    pem.push('\n');
    pem
}

/// Writes `bytes` to `path` with mode 0600: a temporary file in the same directory, fsynced,
/// renamed over `path`, then the directory fsynced, so readers see no key or the whole key.
fn write_private_atomic(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let write_err = |source| KeyError::Write { path: path.to_path_buf(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(file_name) = path.file_name() else {
        return Err(write_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")));
    };
    std::fs::create_dir_all(dir).map_err(write_err)?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let tmp = dir.join(tmp_name);
    let result = write_then_rename(&tmp, path, dir, bytes);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

fn write_then_rename(tmp: &Path, path: &Path, dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
    const NOW: i64 = 1_700_000_000;

    /// A key made with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`;
    /// its kid below was computed with `openssl pkey -pubout -outform DER | sha256 |
    /// base64url`, i.e. what Go's `x509.MarshalPKIXPublicKey` + SHA-256 gives.
    const OPENSSL_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgdGTQ64mBbEVuXcDM
+ubZ7jZmiRkW1tddm6OclKccAr2hRANCAAR9rSkO65ImZ+t5EO1QKbXJmBEwVUvb
2XgVDUgcvaVB6OvzKy8ZOiZIwVtJwSamBPrNVSzjAboZ1cWD+anH/kuR
-----END PRIVATE KEY-----
";
    const OPENSSL_KID: &str = "Ej_NPFKNlzsJgC4SUo__Hq-c0VAhq-rnEweYaXiJgI4";

    /// A directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "bramble-sa-token-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn key() -> SigningKey {
        SigningKey::generate().unwrap()
    }

    fn api_auds() -> Vec<String> {
        vec![ISSUER.to_string()]
    }

    fn request(bound: Option<BoundObject>) -> BoundTokenRequest {
        BoundTokenRequest {
            namespace: "apps".into(),
            service_account: ObjectRef { name: "builder".into(), uid: "sa-uid-1".into() },
            audiences: vec![ISSUER.to_string(), "vault".to_string()],
            expiration_secs: 3600,
            bound,
            warn_after_secs: None,
        }
    }

    fn pod() -> BoundObject {
        BoundObject { kind: BoundKind::Pod, name: "web-0".into(), uid: "pod-uid-1".into() }
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn unb64(part: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(part).unwrap()
    }

    fn parts(token: &str) -> Vec<String> {
        token.split('.').map(String::from).collect()
    }

    fn payload_json(token: &str) -> Value {
        serde_json::from_slice(&unb64(&parts(token)[1])).unwrap()
    }

    /// Signs arbitrary claims with `key`'s usual header, for tokens `issue` would not make.
    fn signed(key: &SigningKey, claims: &Value) -> String {
        key.sign(claims.to_string().as_bytes()).unwrap()
    }

    fn verify(key: &SigningKey, token: &str) -> Result<Verified, TokenError> {
        key.verify(token, ISSUER, &api_auds(), NOW)
    }

    #[test]
    fn pod_bound_token_round_trips_with_upstream_claims() {
        let k = key();
        let token = k.issue(ISSUER, &request(Some(pod())), NOW).unwrap();
        let header: Value = serde_json::from_slice(&unb64(&parts(&token)[0])).unwrap();
        assert_eq!(header, json!({"alg": "ES256", "kid": k.key_id()}));
        assert_eq!(unb64(&parts(&token)[2]).len(), 64, "raw r||s signature");
        let claims = payload_json(&token);
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["sub"], "system:serviceaccount:apps:builder");
        assert_eq!(claims["aud"], json!([ISSUER, "vault"]));
        assert_eq!((claims["iat"].as_i64(), claims["nbf"].as_i64()), (Some(NOW), Some(NOW)));
        assert_eq!(claims["exp"].as_i64(), Some(NOW + 3600));
        assert_eq!(
            claims["kubernetes.io"],
            json!({"namespace": "apps", "serviceaccount": {"name": "builder", "uid": "sa-uid-1"},
                "pod": {"name": "web-0", "uid": "pod-uid-1"}})
        );

        let v = verify(&k, &token).unwrap();
        assert_eq!(v.username, "system:serviceaccount:apps:builder");
        assert_eq!(v.groups, vec!["system:serviceaccounts", "system:serviceaccounts:apps"]);
        assert_eq!(v.namespace, "apps");
        assert_eq!(v.service_account, ObjectRef { name: "builder".into(), uid: "sa-uid-1".into() });
        assert_eq!(v.bound, Some(pod()));
        assert_eq!(v.legacy_secret, None);
        assert_eq!(v.exp, Some(NOW + 3600));
        assert_eq!(v.jti.as_deref(), claims["jti"].as_str());
        let extra = v.extra();
        assert!(extra.contains(&("authentication.kubernetes.io/pod-name", "web-0".into())));
        assert!(extra.contains(&("authentication.kubernetes.io/pod-uid", "pod-uid-1".into())));
    }

    #[test]
    fn secret_bound_token_round_trips() {
        let k = key();
        let secret = BoundObject { kind: BoundKind::Secret, name: "ci-token".into(), uid: "sec-uid".into() };
        let token = k.issue(ISSUER, &request(Some(secret.clone())), NOW).unwrap();
        assert_eq!(payload_json(&token)["kubernetes.io"]["secret"], json!({"name": "ci-token", "uid": "sec-uid"}));
        assert_eq!(verify(&k, &token).unwrap().bound, Some(secret));
    }

    #[test]
    fn node_bound_token_round_trips() {
        let k = key();
        let node = BoundObject { kind: BoundKind::Node, name: "board-3".into(), uid: "node-uid".into() };
        let token = k.issue(ISSUER, &request(Some(node.clone())), NOW).unwrap();
        let v = verify(&k, &token).unwrap();
        assert_eq!(v.bound, Some(node));
        assert!(v.extra().contains(&("authentication.kubernetes.io/node-name", "board-3".into())));
    }

    #[test]
    fn unbound_token_round_trips() {
        let k = key();
        let token = k.issue(ISSUER, &request(None), NOW).unwrap();
        let k8s = &payload_json(&token)["kubernetes.io"];
        assert!(k8s.get("pod").is_none() && k8s.get("secret").is_none() && k8s.get("node").is_none());
        let v = verify(&k, &token).unwrap();
        assert_eq!(v.bound, None);
        assert_eq!(v.username, "system:serviceaccount:apps:builder");
    }

    #[test]
    fn jti_is_a_fresh_v4_uuid_per_token() {
        let k = key();
        let a = verify(&k, &k.issue(ISSUER, &request(None), NOW).unwrap()).unwrap().jti.unwrap();
        let b = verify(&k, &k.issue(ISSUER, &request(None), NOW).unwrap()).unwrap().jti.unwrap();
        assert_ne!(a, b);
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, vec![8, 4, 4, 4, 12]);
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert_eq!(a.as_bytes()[14], b'4', "version 4");
        assert!(matches!(a.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "RFC 4122 variant");
    }

    #[test]
    fn warnafter_is_carried_through() {
        let k = key();
        let mut req = request(Some(pod()));
        req.warn_after_secs = Some(3607);
        let token = k.issue(ISSUER, &req, NOW).unwrap();
        assert_eq!(payload_json(&token)["kubernetes.io"]["warnafter"].as_i64(), Some(NOW + 3607));
        assert_eq!(verify(&k, &token).unwrap().warn_after, Some(NOW + 3607));
    }

    #[test]
    fn expired_only_past_the_leeway() {
        let k = key();
        let token = k.issue(ISSUER, &request(None), NOW).unwrap();
        let exp = NOW + 3600;
        assert!(k.verify(&token, ISSUER, &api_auds(), exp).is_ok());
        assert!(k.verify(&token, ISSUER, &api_auds(), exp + LEEWAY_SECS).is_ok());
        assert_eq!(
            k.verify(&token, ISSUER, &api_auds(), exp + LEEWAY_SECS + 1),
            Err(TokenError::Expired { exp, now: exp + LEEWAY_SECS + 1 })
        );
    }

    #[test]
    fn not_yet_valid_beyond_the_leeway() {
        let k = key();
        let token = k.issue(ISSUER, &request(None), NOW).unwrap();
        // Issued by a server whose clock is ahead of ours: fine within the leeway.
        assert!(k.verify(&token, ISSUER, &api_auds(), NOW - LEEWAY_SECS).is_ok());
        let early = NOW - LEEWAY_SECS - 1;
        assert_eq!(
            k.verify(&token, ISSUER, &api_auds(), early),
            Err(TokenError::NotYetValid { claim: "nbf", at: NOW, now: early })
        );
    }

    #[test]
    fn iat_in_the_future_is_refused_even_without_nbf() {
        let k = key();
        let claims = json!({"iss": ISSUER, "aud": [ISSUER], "iat": NOW + 600, "exp": NOW + 3600,
            "kubernetes.io": {"namespace": "apps", "serviceaccount": {"name": "a", "uid": "u"}}});
        assert_eq!(
            verify(&k, &signed(&k, &claims)),
            Err(TokenError::NotYetValid { claim: "iat", at: NOW + 600, now: NOW })
        );
    }

    #[test]
    fn bound_token_without_exp_is_refused() {
        let k = key();
        let claims = json!({"iss": ISSUER, "aud": [ISSUER],
            "kubernetes.io": {"namespace": "apps", "serviceaccount": {"name": "a", "uid": "u"}}});
        assert!(matches!(verify(&k, &signed(&k, &claims)), Err(TokenError::Malformed(m)) if m.contains("exp")));
    }

    #[test]
    fn wrong_audience_is_refused() {
        let k = key();
        let mut req = request(None);
        req.audiences = vec!["vault".into()];
        let token = k.issue(ISSUER, &req, NOW).unwrap();
        assert_eq!(
            verify(&k, &token),
            Err(TokenError::WrongAudience { aud: vec!["vault".into()], accepted: api_auds() })
        );
        // The same token is good where "vault" is accepted.
        assert!(k.verify(&token, ISSUER, &["other".into(), "vault".into()], NOW).is_ok());
    }

    #[test]
    fn audience_may_be_a_plain_string() {
        let k = key();
        let claims = |aud: &str| {
            json!({"iss": ISSUER, "aud": aud, "iat": NOW, "nbf": NOW, "exp": NOW + 60, "jti": "j1",
                "kubernetes.io": {"namespace": "apps", "serviceaccount": {"name": "a", "uid": "u"}}})
        };
        let v = verify(&k, &signed(&k, &claims(ISSUER))).unwrap();
        assert_eq!(v.username, "system:serviceaccount:apps:a");
        assert_eq!(v.jti.as_deref(), Some("j1"));
        assert!(matches!(verify(&k, &signed(&k, &claims("vault"))), Err(TokenError::WrongAudience { .. })));
    }

    #[test]
    fn token_without_aud_counts_as_the_api_servers() {
        let k = key();
        let claims = json!({"iss": ISSUER, "exp": NOW + 60,
            "kubernetes.io": {"namespace": "apps", "serviceaccount": {"name": "a", "uid": "u"}}});
        assert!(verify(&k, &signed(&k, &claims)).is_ok());
    }

    #[test]
    fn wrong_issuer_is_refused() {
        let k = key();
        let token = k.issue("https://elsewhere.example", &request(None), NOW).unwrap();
        assert_eq!(verify(&k, &token), Err(TokenError::WrongIssuer("https://elsewhere.example".into())));
        let no_iss = signed(&k, &json!({"aud": [ISSUER], "exp": NOW + 60}));
        assert_eq!(verify(&k, &no_iss), Err(TokenError::WrongIssuer(String::new())));
    }

    #[test]
    fn flipped_byte_in_payload_is_a_bad_signature() {
        let k = key();
        let token = k.issue(ISSUER, &request(Some(pod())), NOW).unwrap();
        let p = parts(&token);
        let mut payload = unb64(&p[1]);
        let at = payload.windows(4).position(|w| w == b"apps").unwrap();
        payload[at] ^= 0x01; // "apps" -> "`pps"
        let forged = format!("{}.{}.{}", p[0], b64(&payload), p[2]);
        assert_eq!(verify(&k, &forged), Err(TokenError::BadSignature));
    }

    #[test]
    fn flipped_byte_in_signature_is_a_bad_signature() {
        let k = key();
        let token = k.issue(ISSUER, &request(None), NOW).unwrap();
        let p = parts(&token);
        for i in [0, 31, 32, 63] {
            let mut sig = unb64(&p[2]);
            sig[i] ^= 0x80;
            let forged = format!("{}.{}.{}", p[0], p[1], b64(&sig));
            assert_eq!(verify(&k, &forged), Err(TokenError::BadSignature), "byte {i}");
        }
    }

    #[test]
    fn signature_of_the_wrong_length_is_a_bad_signature() {
        let k = key();
        let p = parts(&k.issue(ISSUER, &request(None), NOW).unwrap());
        let sig = unb64(&p[2]);
        for bad in [&sig[..63], &[][..], &[sig.as_slice(), &[0]].concat()[..]] {
            let forged = format!("{}.{}.{}", p[0], p[1], b64(bad));
            assert_eq!(verify(&k, &forged), Err(TokenError::BadSignature));
        }
    }

    #[test]
    fn token_signed_by_another_key_is_refused() {
        let ours = key();
        let theirs = key();
        assert_ne!(ours.key_id(), theirs.key_id());
        let token = theirs.issue(ISSUER, &request(None), NOW).unwrap();
        assert_eq!(verify(&ours, &token), Err(TokenError::UnknownKey(theirs.key_id().to_string())));
        // Without a kid to give it away, the signature itself fails.
        let claims = payload_json(&token);
        let no_kid = theirs.sign_with_header(br#"{"alg":"ES256"}"#, claims.to_string().as_bytes()).unwrap();
        assert_eq!(verify(&ours, &no_kid), Err(TokenError::BadSignature));
        // Ours, without a kid, is fine: the kid is optional.
        let ours_no_kid = ours.sign_with_header(br#"{"alg":"ES256","typ":"JWT"}"#, claims.to_string().as_bytes());
        assert!(verify(&ours, &ours_no_kid.unwrap()).is_ok());
    }

    #[test]
    fn alg_none_with_empty_signature_is_refused() {
        let k = key();
        let claims = payload_json(&k.issue(ISSUER, &request(None), NOW).unwrap());
        for header in [r#"{"alg":"none"}"#, r#"{"alg":"None","typ":"JWT"}"#, r#"{"alg":"none","kid":"x"}"#] {
            let token = format!("{}.{}.", b64(header.as_bytes()), b64(claims.to_string().as_bytes()));
            assert!(matches!(verify(&k, &token), Err(TokenError::UnsupportedAlgorithm(_))), "{header}");
        }
    }

    #[test]
    fn hs256_keyed_with_the_public_key_is_refused() {
        // The classic confusion: an HMAC keyed with the (public) verification key.
        let k = key();
        let claims = payload_json(&k.issue(ISSUER, &request(None), NOW).unwrap());
        let input = format!("{}.{}", b64(br#"{"alg":"HS256","typ":"JWT"}"#), b64(claims.to_string().as_bytes()));
        let mac = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k.public), input.as_bytes());
        let token = format!("{input}.{}", b64(mac.as_ref()));
        assert_eq!(verify(&k, &token), Err(TokenError::UnsupportedAlgorithm("HS256".into())));
        for alg in ["RS256", "ES384", "PS256", "EdDSA", "es256", ""] {
            let header = json!({"alg": alg}).to_string();
            let token = k.sign_with_header(header.as_bytes(), claims.to_string().as_bytes()).unwrap();
            assert_eq!(verify(&k, &token), Err(TokenError::UnsupportedAlgorithm(alg.into())));
        }
    }

    #[test]
    fn header_without_alg_or_with_crit_is_malformed() {
        let k = key();
        let payload = json!({"iss": ISSUER, "aud": [ISSUER], "exp": NOW + 60}).to_string();
        for header in [r#"{"kid":"x"}"#, r#"[]"#, r#"{"alg":"ES256","crit":["b64"],"b64":false}"#, "not json"] {
            let token = k.sign_with_header(header.as_bytes(), payload.as_bytes()).unwrap();
            assert!(matches!(verify(&k, &token), Err(TokenError::Malformed(_))), "{header}");
        }
    }

    #[test]
    fn oversized_token_is_refused_before_decoding() {
        let k = key();
        let token = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(verify(&k, &token), Err(TokenError::TooLarge { len: MAX_TOKEN_BYTES + 1 }));
        // A validly signed token that is too big is refused all the same.
        let mut req = request(None);
        req.audiences = vec![ISSUER.to_string(), "x".repeat(MAX_TOKEN_BYTES)];
        let big = k.issue(ISSUER, &req, NOW).unwrap();
        assert!(matches!(verify(&k, &big), Err(TokenError::TooLarge { .. })));
    }

    #[test]
    fn wrong_number_of_parts_is_malformed() {
        let k = key();
        let token = k.issue(ISSUER, &request(None), NOW).unwrap();
        let p = parts(&token);
        let two = format!("{}.{}", p[0], p[1]);
        let four = format!("{token}.{}", p[2]);
        for bad in [two.as_str(), four.as_str(), "", ".", "..", "...", "abc"] {
            assert!(matches!(verify(&k, bad), Err(TokenError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn non_base64url_parts_are_malformed() {
        let k = key();
        let token = k.issue(ISSUER, &request(None), NOW).unwrap();
        let p = parts(&token);
        let padded_header = format!("{}=.{}.{}", p[0], p[1], p[2]);
        let bad_header = format!("{}!.{}.{}", p[0], p[1], p[2]);
        let std_alphabet_sig = format!("{}.{}.{}", p[0], p[1], p[2].replace('-', "+").replace('_', "/") + "+");
        let bad_sig = format!("{}.{}.{}*", p[0], p[1], p[2]);
        for bad in [padded_header, bad_header, std_alphabet_sig, bad_sig] {
            assert!(matches!(verify(&k, &bad), Err(TokenError::Malformed(_))), "{bad}");
        }
        // A payload that is not base64url, under a valid signature over its text.
        let input = format!("{}.%%%not-base64%%%", b64(json!({"alg": "ES256"}).to_string().as_bytes()));
        let sig = k.pair.sign(&k.rng, input.as_bytes()).unwrap();
        let token = format!("{input}.{}", b64(sig.as_ref()));
        assert!(matches!(verify(&k, &token), Err(TokenError::Malformed(m)) if m.contains("payload")));
    }

    #[test]
    fn valid_signature_over_non_json_payload_is_malformed() {
        let k = key();
        for payload in [&b"not json at all"[..], b"[1,2,3]", b"\"a string\"", b"", b"\xff\xfe", br#"{"exp":"soon"}"#] {
            let token = k.sign(payload).unwrap();
            assert!(matches!(verify(&k, &token), Err(TokenError::Malformed(_))), "{payload:?}");
        }
    }

    #[test]
    fn bound_token_missing_its_private_claims_is_malformed() {
        let k = key();
        let base = json!({"iss": ISSUER, "aud": [ISSUER], "exp": NOW + 60});
        let mut cases = vec![base.clone()];
        for k8s in [
            json!({"serviceaccount": {"name": "a", "uid": "u"}}),
            json!({"namespace": "apps"}),
            json!({"namespace": "apps", "serviceaccount": {"name": "a"}}),
            json!({"namespace": "apps", "serviceaccount": {"name": "a", "uid": "u"}, "pod": {"name": "p"}}),
        ] {
            let mut c = base.clone();
            c["kubernetes.io"] = k8s;
            cases.push(c);
        }
        for c in cases {
            assert!(matches!(verify(&k, &signed(&k, &c)), Err(TokenError::Malformed(_))), "{c}");
        }
    }

    #[test]
    fn fractional_numeric_dates_are_accepted() {
        let k = key();
        let claims = json!({"iss": ISSUER, "aud": [ISSUER], "iat": NOW as f64 + 0.5, "exp": (NOW + 60) as f64 + 0.9,
            "kubernetes.io": {"namespace": "apps", "serviceaccount": {"name": "a", "uid": "u"}}});
        assert_eq!(verify(&k, &signed(&k, &claims)).unwrap().exp, Some(NOW + 60));
    }

    #[test]
    fn legacy_token_round_trips_without_expiry() {
        let k = key();
        let req = LegacyTokenRequest {
            namespace: "apps".into(),
            service_account: ObjectRef { name: "builder".into(), uid: "sa-uid-1".into() },
            secret_name: "builder-token-x7k2p".into(),
        };
        let token = k.issue_legacy(&req).unwrap();
        assert_eq!(
            payload_json(&token),
            json!({
                "iss": "kubernetes/serviceaccount",
                "sub": "system:serviceaccount:apps:builder",
                "kubernetes.io/serviceaccount/namespace": "apps",
                "kubernetes.io/serviceaccount/secret.name": "builder-token-x7k2p",
                "kubernetes.io/serviceaccount/service-account.name": "builder",
                "kubernetes.io/serviceaccount/service-account.uid": "sa-uid-1",
            })
        );
        // Years later, still good: legacy tokens do not expire.
        let v = k.verify(&token, ISSUER, &api_auds(), NOW + 10 * 365 * 86400).unwrap();
        assert_eq!(v.username, "system:serviceaccount:apps:builder");
        assert_eq!(v.groups, vec!["system:serviceaccounts", "system:serviceaccounts:apps"]);
        assert_eq!(v.service_account, req.service_account);
        assert_eq!(v.legacy_secret.as_deref(), Some("builder-token-x7k2p"));
        assert_eq!((v.bound, v.exp, v.jti), (None, None, None));
    }

    #[test]
    fn legacy_token_with_missing_claims_or_mismatched_sub_is_malformed() {
        let k = key();
        let full = json!({
            "iss": LEGACY_ISSUER,
            "sub": "system:serviceaccount:apps:builder",
            "kubernetes.io/serviceaccount/namespace": "apps",
            "kubernetes.io/serviceaccount/secret.name": "s",
            "kubernetes.io/serviceaccount/service-account.name": "builder",
            "kubernetes.io/serviceaccount/service-account.uid": "u",
        });
        assert!(verify(&k, &signed(&k, &full)).is_ok());
        let keys: Vec<String> = full.as_object().unwrap().keys().filter(|k| *k != "iss").cloned().collect();
        for key_name in keys {
            let mut c = full.clone();
            c.as_object_mut().unwrap().remove(&key_name);
            assert!(matches!(verify(&k, &signed(&k, &c)), Err(TokenError::Malformed(_))), "without {key_name}");
        }
        let mut c = full.clone();
        c["sub"] = json!("system:serviceaccount:kube-system:builder");
        assert!(matches!(verify(&k, &signed(&k, &c)), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn key_is_persisted_and_reloaded() {
        let dir = TempDir::new("reload");
        let path = dir.0.join("sa").join("signing.key");
        let first = SigningKey::load_or_create(&path).unwrap();
        let token = first.issue(ISSUER, &request(Some(pod())), NOW).unwrap();
        let legacy = first
            .issue_legacy(&LegacyTokenRequest {
                namespace: "apps".into(),
                service_account: ObjectRef { name: "builder".into(), uid: "u".into() },
                secret_name: "s".into(),
            })
            .unwrap();
        drop(first);
        let again = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(verify(&again, &token).unwrap().bound, Some(pod()));
        assert!(verify(&again, &legacy).is_ok());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(PEM_BEGIN) && text.trim_end().ends_with(PEM_END));
        // Only the key is left behind: the temporary file was renamed away.
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![OsString::from("signing.key")]);
        let kid = again.key_id().to_string();
        assert_eq!(SigningKey::load_or_create(&path).unwrap().key_id(), kid);
    }

    #[test]
    fn key_file_is_written_with_mode_0600() {
        let dir = TempDir::new("mode");
        let path = dir.0.join("signing.key");
        SigningKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
    }

    #[test]
    fn corrupt_key_file_is_an_error_naming_the_path() {
        let dir = TempDir::new("corrupt");
        let path = dir.0.join("signing.key");
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n";
        let bad_b64 = format!("{PEM_BEGIN}\n!!!!\n{PEM_END}\n");
        let not_ec = format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", STANDARD.encode(b"0123456789"));
        let contents: [&[u8]; 6] =
            [b"", b"garbage", b"\x30\x03\x02\x01\x00", sec1.as_bytes(), bad_b64.as_bytes(), not_ec.as_bytes()];
        for content in contents {
            std::fs::write(&path, content).unwrap();
            let err = SigningKey::load_or_create(&path).unwrap_err();
            assert!(matches!(err, KeyError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains(&path.display().to_string()), "{err}");
            // The file is left alone for the operator to look at.
            assert_eq!(std::fs::read(&path).unwrap(), content);
        }
    }

    #[test]
    fn unreadable_key_path_is_a_read_error_naming_it() {
        let dir = TempDir::new("unreadable");
        // A directory where the key should be: reading it fails with something else than
        // NotFound, and the server must not make a new key over it.
        let path = dir.0.join("signing.key");
        std::fs::create_dir(&path).unwrap();
        let err = SigningKey::load_or_create(&path).unwrap_err();
        assert!(matches!(err, KeyError::Read { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn openssl_key_loads_with_upstreams_kid() {
        let dir = TempDir::new("openssl");
        let path = dir.0.join("signing.key");
        std::fs::write(&path, OPENSSL_KEY).unwrap();
        let k = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(k.key_id(), OPENSSL_KID);
        // The same key as DER loads too.
        let der = pkcs8_der(OPENSSL_KEY.as_bytes()).unwrap();
        std::fs::write(&path, &der).unwrap();
        assert_eq!(SigningKey::load_or_create(&path).unwrap().key_id(), OPENSSL_KID);
        let token = k.issue(ISSUER, &request(None), NOW).unwrap();
        assert!(verify(&k, &token).is_ok());
    }

    /// A token for the OpenSSL key, signed by Python's `cryptography` (OpenSSL's ECDSA,
    /// DER signature converted to JWS r||s): another implementation's ES256 tokens verify.
    const FOREIGN_TOKEN: &str = concat!(
        "eyJhbGciOiJFUzI1NiIsImtpZCI6IkVqX05QRktObHpzSmdDNFNVb19fSHEtYzBWQWhxLXJuRXdlWWFYaUpnSTQifQ.eyJhd",
        "WQiOlsiaHR0cHM6Ly9rdWJlcm5ldGVzLmRlZmF1bHQuc3ZjLmNsdXN0ZXIubG9jYWwiXSwiZXhwIjoxNzAwMDAzNjAwLCJpY",
        "XQiOjE3MDAwMDAwMDAsImlzcyI6Imh0dHBzOi8va3ViZXJuZXRlcy5kZWZhdWx0LnN2Yy5jbHVzdGVyLmxvY2FsIiwianRpI",
        "joiMGI1YzFhM2UtOWYwZC00YzJlLThhNTEtM2YyYjdkOWU2YzQxIiwia3ViZXJuZXRlcy5pbyI6eyJuYW1lc3BhY2UiOiJhc",
        "HBzIiwicG9kIjp7Im5hbWUiOiJ3ZWItMCIsInVpZCI6InBvZC11aWQtMSJ9LCJzZXJ2aWNlYWNjb3VudCI6eyJuYW1lIjoiY",
        "nVpbGRlciIsInVpZCI6InNhLXVpZC0xIn19LCJuYmYiOjE3MDAwMDAwMDAsInN1YiI6InN5c3RlbTpzZXJ2aWNlYWNjb3Vud",
        "DphcHBzOmJ1aWxkZXIifQ.kTrEl3YTrmOprICL7e20_gFmhJn0BcrH7F2GlIGZo-RKtV0JenRwcTp7edhVhNdwpWXhZnJve-",
        "tYbSCpRoZenA",
    );

    #[test]
    fn verifies_a_token_signed_by_another_implementation() {
        let k = SigningKey::from_pkcs8(&pkcs8_der(OPENSSL_KEY.as_bytes()).unwrap()).unwrap();
        let v = verify(&k, FOREIGN_TOKEN).unwrap();
        assert_eq!(v.username, "system:serviceaccount:apps:builder");
        assert_eq!(v.bound, Some(pod()));
        assert_eq!(v.jti.as_deref(), Some("0b5c1a3e-9f0d-4c2e-8a51-3f2b7d9e6c41"));
        assert_eq!(v.exp, Some(NOW + 3600));
        // And it is only good for that key.
        assert!(matches!(verify(&key(), FOREIGN_TOKEN), Err(TokenError::UnknownKey(_))));
    }

    #[test]
    fn jwks_carries_the_public_point() {
        let k = key();
        let jwks = k.jwks();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        let jwk = &keys[0];
        assert_eq!(
            (&jwk["use"], &jwk["kty"], &jwk["crv"], &jwk["alg"], &jwk["kid"]),
            (&json!("sig"), &json!("EC"), &json!("P-256"), &json!("ES256"), &json!(k.key_id()))
        );
        let x = unb64(jwk["x"].as_str().unwrap());
        let y = unb64(jwk["y"].as_str().unwrap());
        assert_eq!((x.len(), y.len()), (32, 32));
        let point = [&[0x04][..], &x, &y].concat();
        assert_eq!(point, k.pair.public_key().as_ref());
        // A verifier that only has the JWK accepts our tokens.
        let token = k.issue(ISSUER, &request(None), NOW).unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
            .verify(input.as_bytes(), &unb64(sig))
            .unwrap();
    }

    #[test]
    fn jwks_of_the_openssl_key_matches_openssls_point() {
        let k = SigningKey::from_pkcs8(&pkcs8_der(OPENSSL_KEY.as_bytes()).unwrap()).unwrap();
        let x = unb64(k.jwks()["keys"][0]["x"].as_str().unwrap());
        // `openssl pkey -text` prints the point as 04:7d:ad:29:0e:eb:92:26:...
        assert_eq!(x[..8], [0x7d, 0xad, 0x29, 0x0e, 0xeb, 0x92, 0x26, 0x67]);
    }

    #[test]
    fn openid_configuration_is_upstreams() {
        let k = key();
        let expected = json!({
            "issuer": "https://10.43.0.1",
            "jwks_uri": "https://10.43.0.1/openid/v1/jwks",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        });
        assert_eq!(k.openid_configuration("https://10.43.0.1"), expected);
        assert_eq!(k.openid_configuration("https://10.43.0.1/")["jwks_uri"], expected["jwks_uri"]);
    }

    #[test]
    fn pem_round_trips() {
        let der = pkcs8_der(OPENSSL_KEY.as_bytes()).unwrap();
        let pem = pem_encode(&der);
        assert_eq!(pem, OPENSSL_KEY);
        assert_eq!(pkcs8_der(pem.as_bytes()).unwrap(), der);
    }

    #[test]
    fn debug_does_not_print_the_private_key() {
        let k = SigningKey::from_pkcs8(&pkcs8_der(OPENSSL_KEY.as_bytes()).unwrap()).unwrap();
        let shown = format!("{k:?}");
        assert!(shown.contains(OPENSSL_KID) && !shown.contains("pair"), "{shown}");
    }
}
