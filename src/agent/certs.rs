//! The agent's side of certificate renewal: its node certificate, renewed through the API
//! with the identity it still has, a new key made here and sent as a certificate request
//! (the server signs it for the caller's own identity; see `api::join`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::pki::{self, CertPair, renewal, renewal::Lifetimes};

/// An agent's node certificate, renewed through the API with the identity it still has:
/// a new key made here, sent as a certificate request, signed by the server.
pub struct NodeCert {
    pub kubeconfig: PathBuf,
    /// Where `bramble certificate rotate` leaves its marker.
    pub dir: PathBuf,
    pub lifetimes: Lifetimes,
}

impl NodeCert {
    /// Renews the certificate when due (or `force`); whether it did.
    pub async fn check(&self, force: bool) -> anyhow::Result<bool> {
        let text = std::fs::read_to_string(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let (server, ca, cert) =
            renewal::kubeconfig_parts(&text).context("the node's kubeconfig has no client certificate")?;
        if !force && !self.lifetimes.due(&cert, renewal::now_unix()) {
            return Ok(false);
        }
        let key = rcgen::KeyPair::generate().context("making a key")?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).context("a certificate request")?;
        let subject = pki::subject(&cert).unwrap_or_default();
        params.distinguished_name.push(rcgen::DnType::CommonName, subject);
        let request = params.serialize_request(&key).context("a certificate request")?.pem().context("PEM")?;
        let client = crate::client::Client::from_kubeconfig(Some(&self.kubeconfig), None)?;
        let answer = client
            .call(
                "POST",
                "/v1-bramble/node-certificate",
                Some("application/json"),
                "application/json",
                Some(&json!({ "certificateRequest": request })),
            )
            .await
            .context("asking the server to renew the node certificate")?;
        let cert_pem = answer["certificate"].as_str().context("the server sent no certificate")?.to_string();
        let pair = CertPair { cert_pem, key_pem: key.serialize_pem() };
        let text = pki::kubeconfig(&server, &ca, &pair);
        pki::write_private(&self.kubeconfig, text.as_bytes(), 0o600)?;
        Ok(true)
    }

    /// Checks at start, then every [`Lifetimes::check_every`] and on SIGHUP, until `stop`;
    /// a failed renewal is tried again after a minute at most.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut hangup = renewal::hangups();
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = renewal::next_hangup(&mut hangup) => tracing::info!("SIGHUP: checking the node certificate now"),
                _ = stop.changed() => return,
            }
            let force = renewal::asked(&self.dir);
            wait = match self.check(force).await {
                Ok(renewed) => {
                    if renewed {
                        tracing::info!(kubeconfig = %self.kubeconfig.display(), "renewed the node certificate");
                    }
                    if force {
                        renewal::done(&self.dir);
                    }
                    self.lifetimes.check_every()
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "renewing the node certificate (tried again soon)");
                    self.lifetimes.check_every().min(Duration::from_secs(60))
                }
            };
        }
    }
}
