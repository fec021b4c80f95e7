//! `pods/log` through the pod's node: the API server finds the node's address and endpoint
//! port in its Node object and asks it over HTTPS with a client certificate from the cluster
//! CA, streaming the answer back (so `kubectl logs -f` follows as long as the container
//! runs).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;

use super::http::Body;
use super::status::ApiError;
use crate::pki::{AnyServerCert, Pki};

/// How long the API server's client certificate for nodes is used before a new one is
/// issued (it lasts [`crate::pki::LEAF_LIFETIME`], and lives only in memory).
const REISSUE_AFTER: Duration = Duration::from_secs(30 * 86_400);

/// The TLS configuration for calls to nodes, made on first use and again every
/// [`REISSUE_AFTER`], so a server that runs for years never presents a lapsed certificate.
fn client_config(pki: &Pki) -> Result<Arc<rustls::ClientConfig>, ApiError> {
    static CONFIG: Mutex<Option<(Instant, Arc<rustls::ClientConfig>)>> = Mutex::new(None);
    let mut cached = CONFIG.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((made, c)) = cached.as_ref()
        && made.elapsed() < REISSUE_AFTER
    {
        return Ok(c.clone());
    }
    let pair = pki
        .issue("kube-apiserver-kubelet-client", &["system:masters"], &[], false, crate::pki::LEAF_LIFETIME)
        .map_err(|e| ApiError::internal(format!("issuing the node client certificate: {e}")))?;
    let certs = rustls_pemfile::certs(&mut pair.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::internal(format!("node client certificate: {e}")))?;
    let key = rustls_pemfile::private_key(&mut pair.key_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| ApiError::internal("node client key".to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::internal(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_client_auth_cert(certs, key)
        .map_err(|e| ApiError::internal(format!("node client certificate: {e}")))?;
    let config = Arc::new(config);
    *cached = Some((Instant::now(), config.clone()));
    Ok(config)
}

/// Picks the container a `log` request means, with upstream's messages when it cannot.
pub fn log_container(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let names = |key: &str| -> Vec<String> {
        pod["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let (containers, inits) = (names("containers"), names("initContainers"));
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if containers.iter().chain(&inits).any(|n| n == c) => Ok(c.to_string()),
        Some(c) => {
            let mut msg = format!("container {c} is not valid for pod {name}");
            if !containers.is_empty() {
                msg = format!("{msg}, choose one of: [{}]", containers.join(" "));
            }
            if !inits.is_empty() {
                msg = format!("{msg} or one of the init containers: [{}]", inits.join(" "));
            }
            Err(ApiError::bad_request(msg))
        }
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

/// Where a node's endpoint listens, from its Node object.
pub fn node_endpoint(node: &Value) -> Option<(String, u16)> {
    let addrs = node["status"]["addresses"].as_array()?;
    let ip = addrs
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .or_else(|| addrs.first())
        .and_then(|a| a["address"].as_str())?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64().unwrap_or(10250);
    Some((ip.to_string(), port as u16))
}

/// An HTTP/1.1 connection to a node's endpoint; the connection task keeps upgrades alive.
struct NodeConn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    name: String,
    host: String,
}

async fn connect(pki: &Pki, node: &Value) -> Result<NodeConn, ApiError> {
    let name = node["metadata"]["name"].as_str().unwrap_or("").to_string();
    let (ip, port) = node_endpoint(node)
        .ok_or_else(|| ApiError::internal(format!("node {name} reports no address to reach it at")))?;
    let unreachable = |e: String| ApiError::internal(format!("cannot reach node {name} at {ip}:{port}: {e}"));
    let connector = tokio_rustls::TlsConnector::from(client_config(pki)?);
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect((ip.as_str(), port)))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    // The node's certificate is self-signed and not verified (as upstream by default).
    let server_name = ServerName::try_from("localhost").map_err(|e| unreachable(e.to_string()))?;
    let tls = connector.connect(server_name, tcp).await.map_err(|e| unreachable(e.to_string()))?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(conn.with_upgrades());
    Ok(NodeConn { sender, host: format!("{ip}:{port}"), name })
}

/// The node's non-success answer as an API error.
async fn node_error(name: &str, resp: Response<hyper::body::Incoming>) -> ApiError {
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let msg = String::from_utf8_lossy(&body).trim().to_string();
    match status {
        400 => ApiError::bad_request(msg),
        404 => ApiError::not_found_path(&msg),
        _ => ApiError::internal(format!("node {name} answered {status}: {msg}")),
    }
}

/// GETs `path_and_query` from the node and streams the answer back.
pub async fn get(pki: &Pki, node: &Value, path_and_query: &str) -> Result<Response<Body>, ApiError> {
    let NodeConn { mut sender, name, host } = connect(pki, node).await?;
    let req = http::Request::get(path_and_query)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| ApiError::internal(format!("asking node {name}: {e}")))?;
    if resp.status().as_u16() != 200 {
        return Err(node_error(&name, resp).await);
    }
    let content_type = resp.headers().get("content-type").cloned();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let mut body = resp.into_body();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data()
                && tx.send(data).await.is_err()
            {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut out = Response::builder().status(200);
    if let Some(ct) = content_type {
        out = out.header("content-type", ct);
    }
    out.body(StreamBody::new(stream).boxed()).map_err(|e| ApiError::internal(e.to_string()))
}

/// Headers of an upgrade that pass through in both directions.
const UPGRADE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "x-stream-protocol-version",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "sec-websocket-extensions",
];

/// Forwards an upgrade request (exec, attach, port-forward; SPDY or WebSocket) to the
/// node and, once the node agrees to switch protocols, splices the two connections: the
/// API server never looks inside the streams, as upstream's proxy does not.
pub async fn upgrade(
    pki: &Pki,
    node: &Value,
    path_and_query: &str,
    mut req: http::Request<super::http::RequestBody>,
) -> Result<Response<Body>, ApiError> {
    let NodeConn { mut sender, name, host } = connect(pki, node).await?;
    let mut forward = http::Request::builder().method(req.method().clone()).uri(path_and_query);
    forward = forward.header("host", host);
    for (name, value) in req.headers() {
        if UPGRADE_HEADERS.contains(&name.as_str()) {
            forward = forward.header(name, value);
        }
    }
    let forward = forward.body(Empty::<Bytes>::new()).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut resp =
        sender.send_request(forward).await.map_err(|e| ApiError::internal(format!("asking node {name}: {e}")))?;
    if resp.status().as_u16() != 101 {
        return Err(node_error(&name, resp).await);
    }
    let mut answer = Response::builder().status(101);
    for (name, value) in resp.headers() {
        if UPGRADE_HEADERS.contains(&name.as_str()) {
            answer = answer.header(name, value);
        }
    }
    let node_side = hyper::upgrade::on(&mut resp);
    let client_side = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let (Ok(node_io), Ok(client_io)) = (node_side.await, client_side.await) else { return };
        let (mut a, mut b) = (TokioIo::new(node_io), TokioIo::new(client_io));
        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
    });
    answer.body(super::http::full(Bytes::new())).map_err(|e| ApiError::internal(e.to_string()))
}
