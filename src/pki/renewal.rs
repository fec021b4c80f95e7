//! Certificates that never expire on a running cluster: the server renews its serving and
//! admin certificates, and each agent its node certificate (through the API, with the
//! identity it still has: `agent::certs`), once less than `renew_before` is left. The check
//! runs at start, then daily while running (k3s checks only at start, so a server that is
//! never restarted lets them lapse), and at once on SIGHUP or `bramble certificate rotate`.
//! Nothing is restarted: the API server's resolver and the clients' reloading resolvers take
//! the new pair at their next handshake ([`super::live`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use super::live::LiveServerCert;
use super::{Pki, PkiError};

/// The file `bramble certificate rotate` leaves in a certificate directory: renew now,
/// whatever is left.
pub const ROTATE_MARKER: &str = "rotate-requested";

/// How long certificates last and when they are renewed.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// How long a new certificate lasts.
    pub lifetime: Duration,
    /// How much must be left: less, and it is renewed.
    pub renew_before: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes { lifetime: super::LEAF_LIFETIME, renew_before: Duration::from_secs(90 * 86_400) }
    }
}

impl Lifetimes {
    /// How often to look: daily, or more often when renewal is due sooner than in a week
    /// (tests use lifetimes of seconds).
    pub fn check_every(&self) -> Duration {
        (self.renew_before / 8).clamp(Duration::from_secs(1), Duration::from_secs(86_400))
    }

    /// Whether `cert_pem` has less than `renew_before` left (or cannot be read at all).
    pub fn due(&self, cert_pem: &str, now_unix: i64) -> bool {
        let before = i64::try_from(self.renew_before.as_secs()).unwrap_or(i64::MAX / 2);
        super::not_after(cert_pem).is_none_or(|end| end - now_unix <= before)
    }
}

/// Now, in Unix seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Whether someone asked for renewal now (the marker stays until it is done).
pub fn asked(dir: &Path) -> bool {
    dir.join(ROTATE_MARKER).exists()
}

/// Says the asked-for renewal is done.
pub fn done(dir: &Path) {
    if let Err(e) = std::fs::remove_file(dir.join(ROTATE_MARKER))
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "removing the certificate rotation marker");
    }
}

/// The server's own certificates: the serving one (swapped live in the API server) and
/// the admin's (rewritten into the admin kubeconfig, which the embedded agent reloads).
pub struct ServerCerts {
    pub pki: Arc<Pki>,
    pub serving: Arc<LiveServerCert>,
    /// The admin kubeconfig, the comment it starts with, and the API URL written in it.
    pub kubeconfig: PathBuf,
    pub kubeconfig_header: String,
    pub api_url: String,
    pub lifetimes: Lifetimes,
}

impl ServerCerts {
    /// Renews what is due (everything when `force`); returns what was renewed.
    pub fn check(&self, force: bool) -> Result<Vec<&'static str>, PkiError> {
        let now = now_unix();
        let dir = self.pki.dir();
        let mut renewed = Vec::new();
        let serving = std::fs::read_to_string(dir.join("serving.crt")).unwrap_or_default();
        if force || self.lifetimes.due(&serving, now) {
            let pair = self.pki.renew_serving(self.lifetimes.lifetime)?;
            self.serving
                .set(&pair.cert_pem, &pair.key_pem)
                .map_err(|e| PkiError::Io("serving the renewed certificate".into(), std::io::Error::other(e)))?;
            renewed.push("serving");
        }
        let admin = std::fs::read_to_string(dir.join("client-admin.crt")).unwrap_or_default();
        if force || self.lifetimes.due(&admin, now) {
            let pair = self.pki.renew_admin(self.lifetimes.lifetime)?;
            let text = super::kubeconfig(&self.api_url, &self.pki.ca.cert_pem, &pair);
            super::write_private(&self.kubeconfig, format!("{}{text}", self.kubeconfig_header).as_bytes(), 0o600)?;
            renewed.push("admin");
        }
        Ok(renewed)
    }

    /// Checks at start, then every [`Lifetimes::check_every`] and on SIGHUP, until `stop`.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut hangup = hangups();
        let mut tick = tokio::time::interval(self.lifetimes.check_every());
        loop {
            let force = asked(self.pki.dir());
            match self.check(force) {
                Ok(r) => {
                    if !r.is_empty() {
                        tracing::info!(renewed = ?r, "renewed the server's certificates");
                    }
                    if force {
                        done(self.pki.dir());
                    }
                }
                Err(e) => tracing::error!(error = %e, "renewing the server's certificates (tried again later)"),
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = next_hangup(&mut hangup) => tracing::info!("SIGHUP: checking certificates now"),
                _ = stop.changed() => return,
            }
        }
    }
}

/// SIGHUP, the signal to check certificates now (None, said in the log, when it cannot be had).
pub fn hangups() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: certificates are checked on their schedule only");
            None
        }
    }
}

/// The next SIGHUP (never, without a handler).
pub async fn next_hangup(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The parts of a kubeconfig written by [`super::kubeconfig`]: server URL, CA and client
/// certificate, all PEM.
pub fn kubeconfig_parts(text: &str) -> Option<(String, String, String)> {
    let doc: Value = serde_yaml::from_str(text).ok()?;
    let pem = |v: &Value| -> Option<String> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(v.as_str()?.trim()).ok()?;
        String::from_utf8(bytes).ok()
    };
    let cluster = &doc["clusters"][0]["cluster"];
    let user = &doc["users"][0]["user"];
    Some((
        cluster["server"].as_str()?.to_string(),
        pem(&cluster["certificate-authority-data"])?,
        pem(&user["client-certificate-data"])?,
    ))
}

/// Whether the node certificate in `kubeconfig` has lapsed (then only the join token can
/// bring the node back).
pub fn lapsed(kubeconfig: &Path) -> bool {
    let text = std::fs::read_to_string(kubeconfig).unwrap_or_default();
    kubeconfig_parts(&text).and_then(|(_, _, cert)| super::not_after(&cert)).is_none_or(|end| end <= now_unix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_due_inside_the_renewal_window() {
        let dir = std::env::temp_dir().join(format!("bramble-renewal-{}", std::process::id()));
        let l = Lifetimes { lifetime: Duration::from_secs(100), renew_before: Duration::from_secs(40) };
        let pki = Pki::load_or_create(&dir, &["127.0.0.1".into()], l.lifetime).unwrap();
        let now = now_unix();
        assert!(!l.due(&pki.serving.cert_pem, now));
        assert!(l.due(&pki.serving.cert_pem, now + 61));
        assert!(l.due("not a certificate", now), "unreadable means renew");
        assert_eq!(l.check_every(), Duration::from_secs(5));
        assert_eq!(Lifetimes::default().check_every(), Duration::from_secs(86_400));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_server_renews_what_is_due_and_serves_it() {
        let dir = std::env::temp_dir().join(format!("bramble-renewal-server-{}", std::process::id()));
        let short = Lifetimes { lifetime: Duration::from_secs(30), renew_before: Duration::from_secs(60) };
        let pki = Arc::new(Pki::load_or_create(&dir, &["127.0.0.1".into()], short.lifetime).unwrap());
        pki.admin(short.lifetime).unwrap();
        let serving = Arc::new(LiveServerCert::new(&pki.serving.cert_pem, &pki.serving.key_pem).unwrap());
        let certs = ServerCerts {
            pki: pki.clone(),
            serving,
            kubeconfig: dir.join("admin.yaml"),
            kubeconfig_header: "# admin\n".into(),
            api_url: "https://127.0.0.1:6443".into(),
            lifetimes: short,
        };
        assert_eq!(certs.check(false).unwrap(), ["serving", "admin"], "30 s left of a 60 s window");
        let (_, _, cert) = kubeconfig_parts(&std::fs::read_to_string(dir.join("admin.yaml")).unwrap()).unwrap();
        assert_eq!(cert, std::fs::read_to_string(dir.join("client-admin.crt")).unwrap());
        let long = ServerCerts { lifetimes: Lifetimes::default(), ..certs };
        assert_eq!(long.check(true).unwrap(), ["serving", "admin"], "forced");
        assert!(long.check(false).unwrap().is_empty(), "a year left: nothing to do");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn node_requests_are_signed_for_the_authenticated_node_only() {
        let dir = std::env::temp_dir().join(format!("bramble-renewal-csr-{}", std::process::id()));
        let pki = Pki::load_or_create(&dir, &["127.0.0.1".into()], Duration::from_secs(3600)).unwrap();
        // The request asks for another identity and for admin rights: both are ignored.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "system:node:other");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:masters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let signed = pki.sign_node_request("n1", &csr, Duration::from_secs(3600)).unwrap();
        let subject = super::super::subject(&signed).unwrap();
        assert!(subject.contains("CN=system:node:n1") && subject.contains("O=system:nodes"), "{subject}");
        assert!(!subject.contains("masters"), "{subject}");
        let (_, pem) = x509_parser::pem::parse_x509_pem(signed.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert!(!cert.is_ca());
        assert!(cert.subject_alternative_name().unwrap().is_none(), "no names from the request");
        assert_eq!(&*cert.public_key().subject_public_key.data, key.public_key_raw(), "the key the request proved");
        assert!(pki.sign_node_request("n1", "garbage", Duration::from_secs(60)).is_err());
        // A request whose signature does not match its key is refused.
        let b64 = base64::engine::general_purpose::STANDARD;
        let body: String = csr.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut der = b64.decode(body).unwrap();
        let last = der.len() - 1;
        der[last] ^= 0xff;
        let tampered =
            format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", b64.encode(der));
        assert!(pki.sign_node_request("n1", &tampered, Duration::from_secs(60)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
