//! The cluster's certificates: a CA made on first start (10 years), the API serving
//! certificate and the client certificates of the admin and of nodes (a year each, renewed
//! while running: [`renewal`]), all with rcgen; plus the kubeconfigs that carry them.
//!
//! Files live in `<data-dir>/server/tls/`; keys are written 0600. The serving certificate is
//! re-issued when the wanted subject alternative names change (new `--tls-san`, new address).

pub mod live;
pub mod renewal;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// What can go wrong making or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn io(ctx: impl Into<String>) -> impl FnOnce(std::io::Error) -> PkiError {
    let ctx = ctx.into();
    move |e| PkiError::Io(ctx, e)
}

/// Writes `bytes` to `path` atomically with `mode`.
pub fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(format!("creating {}", tmp.display())))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming to {}", path.display())))
}

/// A PEM certificate and its PEM private key.
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster CA and the serving certificate, loaded or made.
pub struct Pki {
    dir: PathBuf,
    pub ca: CertPair,
    pub serving: CertPair,
}

fn read_pair(cert: &Path, key: &Path) -> Result<Option<CertPair>, PkiError> {
    match (std::fs::read_to_string(cert), std::fs::read_to_string(key)) {
        (Ok(cert_pem), Ok(key_pem)) => Ok(Some(CertPair { cert_pem, key_pem })),
        (Err(e), _) | (_, Err(e)) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(PkiError::Io(format!("reading {}", cert.display()), e))
        }
        _ => Ok(None),
    }
}

fn name(cn: &str, orgs: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

/// How long the CA lasts.
const CA_DAYS: i64 = 3650;

/// How long the serving, admin and node certificates last unless told otherwise
/// (`--certificate-lifetime`): a stolen board's identity expires within a year, and the
/// running server and agents renew theirs before then.
pub const LEAF_LIFETIME: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

fn validity(params: &mut CertificateParams, lifetime: std::time::Duration) {
    let now = time::OffsetDateTime::now_utc();
    // Clocks of boards without a battery-backed clock lag a little after boot.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::seconds(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2));
}

/// When a PEM certificate stops being valid, in Unix seconds (None when it does not parse).
pub fn not_after(cert_pem: &str) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The subject of a PEM certificate as text (for `bramble certificate check`).
pub fn subject(cert_pem: &str) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.subject().to_string())
}

impl Pki {
    /// Loads the CA and serving certificate from `dir`, making whatever is missing; the
    /// serving certificate covers `sans` (DNS names or IP addresses).
    pub fn load_or_create(dir: &Path, sans: &[String], lifetime: std::time::Duration) -> Result<Pki, PkiError> {
        let ca = match read_pair(&dir.join("ca.crt"), &dir.join("ca.key"))? {
            Some(p) => p,
            None => {
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::new(Vec::<String>::new())?;
                params.distinguished_name = name("bramble-ca", &["bramble"]);
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages =
                    vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
                validity(&mut params, std::time::Duration::from_secs(CA_DAYS as u64 * 86_400));
                let cert = params.self_signed(&key)?;
                let pair = CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
                write_private(&dir.join("ca.key"), pair.key_pem.as_bytes(), 0o600)?;
                write_private(&dir.join("ca.crt"), pair.cert_pem.as_bytes(), 0o644)?;
                pair
            }
        };
        let mut want: Vec<String> = sans.to_vec();
        want.sort();
        want.dedup();
        let sans_file = dir.join("serving.sans");
        let have = std::fs::read_to_string(&sans_file).unwrap_or_default();
        let existing = read_pair(&dir.join("serving.crt"), &dir.join("serving.key"))?;
        let serving = match existing {
            Some(p) if have == want.join("\n") => p,
            _ => {
                let mut pki = Pki {
                    dir: dir.to_path_buf(),
                    ca,
                    serving: CertPair { cert_pem: String::new(), key_pem: String::new() },
                };
                write_private(&sans_file, want.join("\n").as_bytes(), 0o644)?;
                pki.serving = pki.renew_serving(lifetime)?;
                return Ok(pki);
            }
        };
        Ok(Pki { dir: dir.to_path_buf(), ca, serving })
    }

    /// The CA in `dir` as a server made it, for issuing certificates from the command line
    /// (`bramble kubeconfig create`): nothing is made or rewritten.
    pub fn open_ca(dir: &Path) -> Result<Pki, PkiError> {
        let ca = read_pair(&dir.join("ca.crt"), &dir.join("ca.key"))?.ok_or_else(|| {
            PkiError::Io(
                format!("reading the cluster CA in {} (run this on a server, as root)", dir.display()),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })?;
        Ok(Pki { dir: dir.to_path_buf(), ca, serving: CertPair { cert_pem: String::new(), key_pem: String::new() } })
    }

    /// A person's client certificate: CN the user name, O the groups, valid for `days`.
    pub fn issue_user(&self, user: &str, groups: &[&str], days: i64) -> Result<CertPair, PkiError> {
        let lifetime = std::time::Duration::from_secs(u64::try_from(days).unwrap_or(1) * 86_400);
        self.issue(user, groups, &[], false, lifetime)
    }

    /// A node's client certificate (`system:node:<name>` in `system:nodes`).
    pub fn issue_node(&self, node: &str, lifetime: std::time::Duration) -> Result<CertPair, PkiError> {
        self.issue(&format!("system:node:{node}"), &["system:nodes"], &[], false, lifetime)
    }

    /// Signs a node's certificate request with the identity the node authenticated as: only
    /// the request's public key (proven by its signature) is taken from it, never its
    /// subject or extensions, so a node can renew itself and nobody else.
    pub fn sign_node_request(
        &self,
        node: &str,
        request_pem: &str,
        lifetime: std::time::Duration,
    ) -> Result<String, PkiError> {
        let mut request = rcgen::CertificateSigningRequestParams::from_pem(request_pem)?;
        request.params = client_params(&format!("system:node:{node}"), &["system:nodes"], lifetime)?;
        Ok(request.signed_by(&self.issuer()?)?.pem())
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let ca_key = KeyPair::from_pem(&self.ca.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.ca.cert_pem, ca_key)?)
    }

    /// Issues a certificate signed by the CA: a server certificate for `sans`, or a client
    /// certificate whose CN is the user and whose O entries are the groups.
    pub fn issue(
        &self,
        cn: &str,
        orgs: &[&str],
        sans: &[String],
        server: bool,
        lifetime: std::time::Duration,
    ) -> Result<CertPair, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = client_params(cn, orgs, lifetime)?;
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(s.as_str().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        if server {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// The admin client certificate (O=system:masters), made once and kept until renewed.
    pub fn admin(&self, lifetime: std::time::Duration) -> Result<CertPair, PkiError> {
        match read_pair(&self.dir.join("client-admin.crt"), &self.dir.join("client-admin.key"))? {
            Some(p) => Ok(p),
            None => self.renew_admin(lifetime),
        }
    }

    /// The admin certificate as the server last wrote it (never made here).
    pub fn admin_pair(&self) -> Result<CertPair, PkiError> {
        let crt = self.dir.join("client-admin.crt");
        read_pair(&crt, &self.dir.join("client-admin.key"))?.ok_or_else(|| {
            PkiError::Io(format!("reading {}", crt.display()), std::io::Error::from(std::io::ErrorKind::NotFound))
        })
    }

    /// A new admin certificate, written over the old one.
    pub fn renew_admin(&self, lifetime: std::time::Duration) -> Result<CertPair, PkiError> {
        let pair = self.issue("system:admin", &["system:masters"], &[], false, lifetime)?;
        write_private(&self.dir.join("client-admin.key"), pair.key_pem.as_bytes(), 0o600)?;
        write_private(&self.dir.join("client-admin.crt"), pair.cert_pem.as_bytes(), 0o644)?;
        Ok(pair)
    }

    /// A new serving certificate for the names in `serving.sans`, written over the old one.
    pub fn renew_serving(&self, lifetime: std::time::Duration) -> Result<CertPair, PkiError> {
        let sans_file = self.dir.join("serving.sans");
        let sans = std::fs::read_to_string(&sans_file).map_err(io(format!("reading {}", sans_file.display())))?;
        let sans: Vec<String> = sans.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
        let pair = self.issue("bramble-apiserver", &[], &sans, true, lifetime)?;
        write_private(&self.dir.join("serving.key"), pair.key_pem.as_bytes(), 0o600)?;
        write_private(&self.dir.join("serving.crt"), pair.cert_pem.as_bytes(), 0o644)?;
        Ok(pair)
    }

    /// The directory the files live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A client certificate's parameters: CN the user, O the groups.
fn client_params(cn: &str, orgs: &[&str], lifetime: std::time::Duration) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(cn, orgs);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, lifetime);
    Ok(params)
}

/// A kubeconfig for `server` authenticating with a client certificate.
pub fn kubeconfig(server: &str, ca_pem: &str, client: &CertPair) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server}
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
preferences: {{}}
users:
- name: default
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
",
        ca = b64(ca_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
    )
}

/// Accepts any server certificate. Used where something else establishes trust: the
/// agent's `GET /cacerts`, whose answer is checked against the token's CA hash, and the API
/// server's calls to nodes' self-signed endpoints (as upstream does by default).
#[derive(Debug)]
pub struct AnyServerCert(pub std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
