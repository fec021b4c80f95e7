//! The HTTPS listener: rustls (ring) with ALPN `h2` and `http/1.1`, optional client
//! certificates verified against the cluster CA, and hyper serving each connection with
//! upgrades (exec and port-forward need them).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::Api;
use super::auth::user_from_cert;
use super::join::PeerAddr;

/// The API server's TLS configuration: its certificate from `cert` (swapped live when
/// renewed), client certificates checked against the CA `ca_pem` when presented.
pub fn tls_config(
    cert: Arc<dyn rustls::server::ResolvesServerCert>,
    ca_pem: &str,
) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(ca.map_err(|e| format!("CA certificate: {e}"))?).map_err(|e| format!("CA certificate: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Limits on what a connection may hold: nothing unauthenticated may cost the server more
/// than a bounded slot for a bounded time.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at once; more are closed as they arrive.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, or to start the next request
    /// on an idle keep-alive connection (upstream closes unfinished headers at 32 s).
    pub header_timeout: Duration,
    /// Streams one HTTP/2 connection may have open.
    pub max_streams: u32,
}

impl Limits {
    /// Connections one address may hold: a quarter of all, so no single address (a board
    /// gone wrong, an anonymous flood) can take every slot from the rest.
    pub fn max_connections_per_address(&self) -> usize {
        (self.max_connections / 4).max(8)
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_connections: 1024, header_timeout: Duration::from_secs(30), max_streams: 250 }
    }
}

/// The HTTP/2 connection preface every client sends first.
const H2_PREFACE_LEN: u64 = 24;

/// Accepts connections until `shutdown` fires.
pub async fn serve(
    api: Arc<Api>,
    listener: TcpListener,
    tls: rustls::ServerConfig,
    limits: Limits,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_address = super::slots::Slots::default();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = limits.max_connections, "too many connections: closing a new one");
            continue;
        };
        let Some(per_peer) = per_address.take(&peer.ip(), limits.max_connections_per_address()) else {
            tracing::warn!(%peer, "too many connections from one address: closing a new one");
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "setting TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let _slots = (slot, per_peer);
            let tls =
                match tokio::time::timeout(limits.header_timeout.min(Duration::from_secs(10)), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let cert_user = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| user_from_cert(c));
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let api = api.clone();
                let user = cert_user.clone();
                req.extensions_mut().insert(PeerAddr(peer.ip()));
                async move { Ok::<_, std::convert::Infallible>(api.handle(user, req.map(BodyExt::boxed)).await) }
            });
            let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let io = TokioIo::new(crate::counting::Counting { io: tls, read: read.clone() });
            let result = if h2 {
                let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                b.timer(TokioTimer::new())
                    .max_concurrent_streams(limits.max_streams)
                    .max_header_list_size(64 * 1024)
                    .keep_alive_interval(Some(Duration::from_secs(30)))
                    .keep_alive_timeout(Duration::from_secs(20));
                let conn = b.serve_connection(io, service);
                tokio::pin!(conn);
                // hyper waits for the preface without a deadline: give it the header timeout.
                tokio::select! {
                    r = &mut conn => r,
                    _ = tokio::time::sleep(limits.header_timeout) => {
                        if read.load(std::sync::atomic::Ordering::Relaxed) < H2_PREFACE_LEN {
                            tracing::debug!(%peer, "no HTTP/2 preface in time: closing");
                            return;
                        }
                        conn.await
                    }
                }
            } else {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).max_buf_size(256 * 1024);
                b.serve_connection(io, service).with_upgrades().await
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}
