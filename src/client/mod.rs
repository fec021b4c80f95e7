//! The one way to talk to the API from inside bramble: the HTTPS client of the built-in
//! kubectl and of the node agent (reads a kubeconfig, the one `bramble server` writes or any
//! other with embedded or file-referenced certificates or a bearer token, and verifies the
//! cluster CA), and the typed [`ClientError`] every caller (also the control loops'
//! in-process connection) decides retries and back-off by.

mod error;

pub use error::{
    ClientError, is_already_exists, is_conflict, is_forbidden, is_not_found, retry_after_header, retry_hint,
};

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rustls::pki_types::ServerName;
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where kubeconfigs are looked for when neither `--kubeconfig` nor `$KUBECONFIG` says:
/// the server's own first (as k3s does with `/etc/rancher/k3s/k3s.yaml`), then the usual one.
const DEFAULT_KUBECONFIG: &str = "/etc/bramble/bramble.yaml";

#[derive(Deserialize, Default)]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context", default)]
    current_context: String,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Deserialize)]
struct Cluster {
    server: String,
    #[serde(rename = "certificate-authority-data")]
    ca_data: Option<String>,
    #[serde(rename = "certificate-authority")]
    ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    user: User,
}

#[derive(Deserialize, Default)]
struct User {
    #[serde(rename = "client-certificate-data")]
    cert_data: Option<String>,
    #[serde(rename = "client-key-data")]
    key_data: Option<String>,
    #[serde(rename = "client-certificate")]
    cert_file: Option<PathBuf>,
    #[serde(rename = "client-key")]
    key_file: Option<PathBuf>,
    token: Option<String>,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: KubeContext,
}

#[derive(Deserialize)]
struct KubeContext {
    cluster: String,
    #[serde(default)]
    user: String,
    namespace: Option<String>,
}

/// A connection recipe for one API server.
pub struct Client {
    tls: TlsConnector,
    addr: String,
    server_name: ServerName<'static>,
    authority: String,
    token: Option<String>,
    /// The context's namespace, `default` when it names none.
    pub namespace: String,
}

fn b64(field: &str, v: &str) -> anyhow::Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(v.trim()).with_context(|| format!("{field} is not base64"))
}

fn inline_or_file(field: &str, data: &Option<String>, file: &Option<PathBuf>) -> anyhow::Result<Option<Vec<u8>>> {
    match (data, file) {
        (Some(d), _) => b64(field, d).map(Some),
        (None, Some(f)) => std::fs::read(f).map(Some).with_context(|| format!("reading {field} {}", f.display())),
        (None, None) => Ok(None),
    }
}

/// The kubeconfig to use: `--kubeconfig`, then `$KUBECONFIG` (first entry), then the
/// server's own, then `~/.kube/config`.
fn kubeconfig_path(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(env) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty())
        && let Some(first) = std::env::split_paths(&env).next()
    {
        return Ok(first);
    }
    if Path::new(DEFAULT_KUBECONFIG).exists() {
        return Ok(PathBuf::from(DEFAULT_KUBECONFIG));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let user = home.join(".kube/config");
    if user.exists() {
        return Ok(user);
    }
    bail!(
        "no kubeconfig found: pass --kubeconfig, set KUBECONFIG, or run on a server node ({DEFAULT_KUBECONFIG} is written by `bramble server`)"
    )
}

/// The client certificate and key (PEM) of the kubeconfig's current context (or
/// `context`), when its user has them.
fn user_pair(path: &Path, context: Option<&str>) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let raw = std::fs::read(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let kc: Kubeconfig =
        serde_yaml::from_slice(&raw).with_context(|| format!("parsing kubeconfig {}", path.display()))?;
    let ctx_name = context.unwrap_or(&kc.current_context);
    let Some(ctx) = kc.contexts.iter().find(|c| c.name == ctx_name) else { return Ok(None) };
    let Some(user) = kc.users.iter().find(|u| u.name == ctx.context.user).map(|u| &u.user) else { return Ok(None) };
    let cert = inline_or_file("client-certificate", &user.cert_data, &user.cert_file)?;
    let key = inline_or_file("client-key", &user.key_data, &user.key_file)?;
    Ok(cert.zip(key))
}

impl Client {
    /// Builds a client from the kubeconfig's current context (or `context`).
    pub fn from_kubeconfig(flag: Option<&Path>, context: Option<&str>) -> anyhow::Result<Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let path = kubeconfig_path(flag)?;
        let raw = std::fs::read(&path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
        let kc: Kubeconfig =
            serde_yaml::from_slice(&raw).with_context(|| format!("parsing kubeconfig {}", path.display()))?;
        let ctx_name = context.unwrap_or(&kc.current_context);
        let ctx = kc
            .contexts
            .iter()
            .find(|c| c.name == ctx_name)
            .map(|c| &c.context)
            .ok_or_else(|| anyhow!("context {ctx_name:?} is not in {}", path.display()))?;
        let cluster = kc
            .clusters
            .iter()
            .find(|c| c.name == ctx.cluster)
            .map(|c| &c.cluster)
            .ok_or_else(|| anyhow!("cluster {:?} is not in {}", ctx.cluster, path.display()))?;
        let default_user = User::default();
        let user = kc.users.iter().find(|u| u.name == ctx.user).map_or(&default_user, |u| &u.user);

        let mut roots = rustls::RootCertStore::empty();
        let ca = inline_or_file("certificate-authority", &cluster.ca_data, &cluster.ca_file)?
            .ok_or_else(|| anyhow!("cluster {:?} has no certificate-authority", ctx.cluster))?;
        for cert in rustls_pemfile::certs(&mut BufReader::new(&ca[..])) {
            roots.add(cert.context("reading the cluster CA")?).context("adding the cluster CA")?;
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match user_pair(&path, context)? {
            Some(_) => {
                // Read again whenever the kubeconfig (or a file it names) changes: renewed
                // certificates are used without rebuilding the clients that hold this one.
                let mut files = vec![path.clone()];
                files.extend(user.cert_file.iter().chain(&user.key_file).cloned());
                let (file, context) = (path.clone(), context.map(str::to_string));
                let load: crate::pki::live::Loader = Box::new(move || match user_pair(&file, context.as_deref()) {
                    Ok(Some((cert, key))) => crate::pki::live::certified_key(&cert, &key),
                    Ok(None) => Err("the kubeconfig no longer has a client certificate".into()),
                    Err(e) => Err(format!("{e:#}")),
                });
                let resolver = crate::pki::live::ReloadingClientCert::new(files, load)
                    .map_err(|e| anyhow!("loading the client certificate: {e}"))?;
                builder.with_client_cert_resolver(Arc::new(resolver))
            }
            None => builder.with_no_client_auth(),
        };

        let uri: http::Uri = cluster.server.parse().with_context(|| format!("server URL {:?}", cluster.server))?;
        if uri.scheme_str() != Some("https") {
            bail!("server URL {:?} must be https", cluster.server);
        }
        let host = uri.host().ok_or_else(|| anyhow!("server URL {:?} has no host", cluster.server))?;
        let port = uri.port_u16().unwrap_or(443);
        let bare = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let server_name = ServerName::try_from(bare.clone()).context("server host name")?;
        let config = Arc::new(config);
        Ok(Client {
            tls: TlsConnector::from(config),
            addr: if bare.contains(':') { format!("[{bare}]:{port}") } else { format!("{bare}:{port}") },
            server_name,
            authority: uri.authority().map(|a| a.to_string()).unwrap_or(bare),
            token: user.token.clone(),
            namespace: ctx.namespace.clone().unwrap_or_else(|| "default".into()),
        })
    }

    /// A TLS connection to the server, with this client's certificate (if any).
    async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
        let transport = |what: String| ClientError::Transport(what);
        let tcp =
            TcpStream::connect(&self.addr).await.map_err(|e| transport(format!("connecting to {}: {e}", self.addr)))?;
        self.tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| transport(format!("TLS handshake with {}: {e}", self.addr)))
    }

    async fn open(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        accept: &str,
        body: Bytes,
    ) -> anyhow::Result<hyper::Response<Incoming>> {
        let transport = |what: String| ClientError::Transport(what);
        let tls = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| transport(format!("HTTP handshake with {}: {e}", self.addr)))?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("accept", accept)
            .header("user-agent", concat!("bramble-kubectl/", env!("CARGO_PKG_VERSION")));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Full::new(body)).context("building the request")?;
        Ok(sender.send_request(req).await.map_err(|e| transport(format!("{method} {path}: {e}")))?)
    }

    /// Sends a request and returns the JSON answer, or the server's Status as an error.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        accept: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        let resp = self.open(method, path, content_type, accept, bytes).await?;
        let status = resp.status().as_u16();
        let retry_after = error::retry_after_header(resp.headers());
        let body = resp.into_body().collect().await.context("reading the answer")?.to_bytes();
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(ClientError::from_answer(status, retry_after, &body).into());
        }
        Ok(value)
    }

    /// GET as JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call("GET", path, None, "application/json", None).await
    }

    /// Opens a streaming GET (a watch) and hands back the body to read lines from.
    pub async fn stream(&self, path: &str, accept: &str) -> anyhow::Result<Incoming> {
        let resp = self.open("GET", path, None, accept, Bytes::new()).await?;
        let status = resp.status().as_u16();
        if status != 200 {
            let retry_after = error::retry_after_header(resp.headers());
            let body = resp.into_body().collect().await.context("reading the answer")?.to_bytes();
            return Err(ClientError::from_answer(status, retry_after, &body).into());
        }
        Ok(resp.into_body())
    }

    /// Upgrades `path` to a WebSocket offering `protocols` in order (exec and port-forward,
    /// as kubectl 1.30+ and the Python client do), over the same TLS and credentials as every
    /// other call. Returns the socket and the subprotocol the server chose; a refusal is the
    /// server's Status as a [`ClientError`].
    pub async fn websocket(&self, path: &str, protocols: &[&str]) -> anyhow::Result<(WebSocket, String)> {
        use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
        let transport = |what: String| ClientError::Transport(what);
        let tls = self.connect().await?;
        let mut req = format!("wss://{}{path}", self.authority)
            .into_client_request()
            .with_context(|| format!("building the WebSocket request for {path}"))?;
        let headers = req.headers_mut();
        headers.insert("sec-websocket-protocol", protocols.join(", ").parse().context("WebSocket subprotocols")?);
        headers.insert(
            "user-agent",
            http::HeaderValue::from_static(concat!("bramble-kubectl/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(t) = &self.token {
            headers.insert("authorization", format!("Bearer {t}").parse().context("the bearer token")?);
        }
        match tokio_tungstenite::client_async(req, tls).await {
            Ok((ws, resp)) => {
                let chosen = resp
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                Ok((ws, chosen))
            }
            Err(tungstenite::Error::Http(resp)) => {
                let body = resp.body().as_deref().unwrap_or_default();
                let retry_after = error::retry_after_header(resp.headers());
                Err(ClientError::from_answer(resp.status().as_u16(), retry_after, body).into())
            }
            Err(e) => Err(transport(format!("WebSocket upgrade of {path} at {}: {e}", self.addr)).into()),
        }
    }
}

/// A WebSocket to the API server, from [`Client::websocket`].
pub type WebSocket = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Reads newline-delimited JSON values from a streaming body (a connection's, or the
/// in-process API's).
pub struct Lines<B = Incoming> {
    body: B,
    buf: Vec<u8>,
    /// Where the unread part of `buf` starts: lines are consumed by moving this, and the
    /// buffer is compacted once per frame, not once per line.
    start: usize,
}

impl<B> Lines<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    /// Wraps a watch body.
    pub fn new(body: B) -> Lines<B> {
        Lines { body, buf: Vec::new(), start: 0 }
    }

    /// The next JSON line, or `None` when the server closed the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<Value>> {
        self.next_as().await
    }

    /// The next JSON line read as a `T`, for readers that keep only part of each event.
    pub async fn next_as<T: serde::de::DeserializeOwned>(&mut self) -> anyhow::Result<Option<T>> {
        loop {
            if let Some(n) = self.buf[self.start..].iter().position(|b| *b == b'\n') {
                let line = &self.buf[self.start..self.start + n];
                self.start += n + 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(line).context("a watch event is not JSON").map(Some);
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Some(d) = frame.context("reading the watch")?.data_ref() {
                        self.buf.drain(..self.start);
                        self.start = 0;
                        self.buf.extend_from_slice(d);
                    }
                }
                None => return Ok(None),
            }
        }
    }
}
