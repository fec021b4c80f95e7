//! The agent's side of joining: pin the server's CA with the hash in the token, trade the
//! token for a client certificate, and keep the result as a kubeconfig in the data
//! directory so restarts need no token round trip.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};

use crate::api::join::{ca_hash, parse_token};
use crate::pki::{self, CertPair};

/// One HTTPS request with `config`; returns the status and body.
async fn request(
    config: rustls::ClientConfig,
    server: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<(u16, Bytes)> {
    let uri: http::Uri = server.parse().with_context(|| format!("--server {server:?} is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        bail!("--server {server:?} must be an https:// URL");
    }
    let host = uri.host().ok_or_else(|| anyhow!("--server {server:?} has no host"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(6443);
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .with_context(|| format!("connecting to {bare}:{port}"))?;
    let name = ServerName::try_from(bare.clone()).context("server host name")?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .context("TLS handshake with the server (is this the server the token came from?)")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path).header("host", &bare);
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(&v)?)
        }
        None => Bytes::new(),
    };
    let resp = sender.send_request(req.body(Full::new(body))?).await.with_context(|| format!("{method} {path}"))?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// Fetches the server's CA and checks it against the token's hash.
async fn pinned_ca(server: &str, token: &str) -> anyhow::Result<String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let trusting = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::pki::AnyServerCert(provider)))
        .with_no_client_auth();
    let (status, body) = request(trusting, server, "GET", "/cacerts", None, None).await?;
    if status != 200 {
        bail!("the server answered {status} for its CA certificate: is {server} a bramble server?");
    }
    let ca = String::from_utf8(body.to_vec()).context("the CA certificate is not text")?;
    match parse_token(token).0 {
        Some(hash) if hash != ca_hash(&ca) => bail!(
            "the server's CA does not match the token: either the token is from another cluster or something is \
             impersonating the server"
        ),
        Some(_) => {}
        None => tracing::warn!("the token carries no CA hash: trusting the server's CA on first use"),
    }
    Ok(ca)
}

/// This board's node password: made once (32 random bytes, hex) and kept in
/// `<data-dir>/agent/node-password` (0600). The server remembers the first password a node
/// name joins with, so another board holding the join token cannot take this node's name.
pub fn node_password(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("agent").join("node-password");
    match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => return Ok(p.trim().to_string()),
        Ok(_) => bail!("{} is empty: remove it and delete this Node to join anew", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow!("the kernel gave no randomness for the node password"))?;
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    pki::write_private(&path, format!("{password}\n").as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(password)
}

/// The kubeconfig this agent uses, joining first when there is none yet.
pub async fn credentials(data_dir: &Path, server: &str, token: &str, node_name: &str) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("agent").join("kubeconfig.yaml");
    if path.exists() && !pki::renewal::lapsed(&path) {
        return Ok(path);
    }
    if path.exists() {
        // Off for longer than its certificate lasted: the node password, kept since the
        // first join, proves it is the same board.
        tracing::warn!(kubeconfig = %path.display(), "the node certificate has lapsed: joining again with the token");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = pinned_ca(server, token).await?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::io::BufReader::new(ca.as_bytes())) {
        roots.add(cert.context("reading the CA certificate")?).context("trusting the CA certificate")?;
    }
    let pinned = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let password = node_password(data_dir)?;
    let (status, body) = request(
        pinned,
        server,
        "POST",
        "/v1-bramble/node-credentials",
        Some(token),
        Some(json!({"nodeName": node_name, "nodePassword": password})),
    )
    .await?;
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match status {
        200 => {}
        401 => bail!("the server refused the token: use the one in <server data-dir>/server/node-token"),
        403 | 429 => bail!("the server refused to join this node: {}", answer["message"].as_str().unwrap_or("")),
        _ => bail!("joining failed ({status}): {}", answer["message"].as_str().unwrap_or("no reason given")),
    }
    let pair = CertPair {
        cert_pem: answer["certificate"].as_str().context("the server sent no certificate")?.to_string(),
        key_pem: answer["key"].as_str().context("the server sent no key")?.to_string(),
    };
    let kubeconfig = pki::kubeconfig(server, &ca, &pair);
    pki::write_private(&path, kubeconfig.as_bytes(), 0o600).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
