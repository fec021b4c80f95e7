//! Test harness: starts the real `bramble server` binary on a free port with its own data
//! directory, talks to it over real TLS with the admin client certificate it wrote, and
//! kills it and removes its directory when dropped (also when a test panics).
#![allow(dead_code)]

use std::io::BufReader;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub struct TestServer {
    pub dir: PathBuf,
    pub port: u16,
    pub child: Option<Child>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl TestServer {
    pub fn start(extra: &[&str]) -> TestServer {
        TestServer::start_with_env(extra, &[])
    }

    /// [`TestServer::start`] with environment variables for the server (test hooks).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> TestServer {
        let dir = std::env::temp_dir().join(format!("bramble-it-{}-{}", std::process::id(), uuid_like()));
        std::fs::create_dir_all(&dir).expect("test dir");
        let mut s = TestServer {
            dir,
            port: free_port(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        s.spawn();
        s
    }

    /// A server on a copy of `from`'s data directory (kubeconfig and certificates too), not
    /// started yet: for tests that damage files and then start on them.
    pub fn copy_of(from: &TestServer) -> TestServer {
        let dir = std::env::temp_dir().join(format!("bramble-it-{}-{}", std::process::id(), uuid_like()));
        std::fs::create_dir_all(&dir).expect("test dir");
        let status = Command::new("cp").arg("-a").arg(from.data_dir()).arg(dir.join("data")).status().expect("run cp");
        assert!(status.success(), "copying the data dir");
        TestServer { dir, port: free_port(), child: None, extra: from.extra.clone(), env: from.env.clone() }
    }

    /// Starts the server and waits until it serves; `Err` with its exit status and log when
    /// it exits instead.
    pub fn try_spawn(&mut self) -> Result<(), (std::process::ExitStatus, String)> {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_bramble"))
            .arg("server")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--https-listen-port")
            .arg(self.port.to_string())
            .arg("--bind-address")
            .arg("127.0.0.1")
            .arg("--write-kubeconfig")
            .arg(self.kubeconfig())
            .arg("--disable-agent")
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bramble");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.kubeconfig().exists() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err((status, self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server neither started nor exited in 60 s: {}", self.log());
    }

    /// SIGTERM, then waits for the exit (at most 30 s).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling the child this harness started.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("SIGTERM did not stop the server in 30 s: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig.yaml")
    }

    pub fn spawn(&mut self) {
        if let Err((status, log)) = self.try_spawn() {
            panic!("server exited with {status}: {log}");
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// SIGKILL, as a power cut would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn client(&self) -> Client {
        Client::from_kubeconfig(&self.kubeconfig(), self.port, true)
    }

    pub fn anonymous_client(&self) -> Client {
        Client::from_kubeconfig(&self.kubeconfig(), self.port, false)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn uuid_like() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{t:x}")
}

/// A minimal HTTPS client speaking HTTP/1.1, one connection per request.
pub struct Client {
    tls: TlsConnector,
    port: u16,
}

pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Client {
    fn from_kubeconfig(path: &Path, port: u16, with_cert: bool) -> Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kc: serde_yaml::Value =
            serde_yaml::from_slice(&std::fs::read(path).expect("kubeconfig")).expect("kubeconfig yaml");
        let b64 = |v: &serde_yaml::Value| {
            base64::engine::general_purpose::STANDARD.decode(v.as_str().expect("string")).expect("base64")
        };
        let ca = b64(&kc["clusters"][0]["cluster"]["certificate-authority-data"]);
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut BufReader::new(&ca[..])) {
            roots.add(c.expect("ca")).expect("add ca");
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let cfg = if with_cert {
            let cert = b64(&kc["users"][0]["user"]["client-certificate-data"]);
            let key = b64(&kc["users"][0]["user"]["client-key-data"]);
            let certs: Vec<CertificateDer<'static>> =
                rustls_pemfile::certs(&mut BufReader::new(&cert[..])).map(|c| c.expect("cert")).collect();
            let key: PrivateKeyDer<'static> =
                rustls_pemfile::private_key(&mut BufReader::new(&key[..])).expect("key").expect("a key");
            builder.with_client_auth_cert(certs, key).expect("client auth")
        } else {
            builder.with_no_client_auth()
        };
        Client { tls: TlsConnector::from(Arc::new(cfg)), port }
    }

    async fn connect(&self) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let tls = self.tls.connect(name, tcp).await.expect("tls");
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.expect("handshake");
        tokio::spawn(conn);
        sender
    }

    async fn try_connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| format!("tls: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// A request whose transport may fail (the server is being killed): `Err` then, and the
    /// outcome of a write is unknown.
    pub async fn try_request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<Reply, String> {
        let mut sender = self.try_connect().await?;
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", content_type)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| format!("send: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        Ok(Reply { status, body })
    }

    /// Streams a watch, calling `on_line` with each event until it returns false, the
    /// stream ends (`Ok`) or the transport fails (`Err`). A non-200 answer is `Ok(Some)`.
    pub async fn try_watch(&self, path: &str, mut on_line: impl FnMut(Value) -> bool) -> Result<Option<Reply>, String> {
        let mut sender = self.try_connect().await?;
        let req = hyper::Request::builder()
            .method("GET")
            .uri(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| format!("send: {e}"))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            return Ok(Some(Reply { status, body }));
        }
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("frame: {e}"))?;
            if let Some(d) = frame.data_ref() {
                buf.extend_from_slice(d);
            }
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let event = serde_json::from_slice(&line).map_err(|e| format!("event json: {e}"))?;
                if !on_line(event) {
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }

    pub async fn request(&self, method: &str, path: &str, content_type: &str, body: impl Into<Bytes>) -> Reply {
        let mut sender = self.connect().await;
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", content_type)
            .body(Full::new(body.into()))
            .expect("request");
        let resp = sender.send_request(req).await.expect("send");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Reply { status, body }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, "application/json", Bytes::new()).await
    }

    pub async fn post(&self, path: &str, v: &Value) -> Reply {
        self.request("POST", path, "application/json", serde_json::to_vec(v).expect("json")).await
    }

    pub async fn put(&self, path: &str, v: &Value) -> Reply {
        self.request("PUT", path, "application/json", serde_json::to_vec(v).expect("json")).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path, "application/json", Bytes::new()).await
    }

    pub async fn patch_merge(&self, path: &str, v: &Value) -> Reply {
        self.request("PATCH", path, "application/merge-patch+json", serde_json::to_vec(v).expect("json")).await
    }

    /// Opens a watch and returns the lines it streams until it ends (or `max` lines).
    pub async fn watch_lines(&self, path: &str, max: usize) -> Vec<Value> {
        let mut sender = self.connect().await;
        let req = hyper::Request::builder()
            .method("GET")
            .uri(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = sender.send_request(req).await.expect("send");
        assert_eq!(resp.status().as_u16(), 200);
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("frame");
            if let Some(d) = frame.data_ref() {
                buf.extend_from_slice(d);
            }
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                out.push(serde_json::from_slice(&line).expect("event json"));
                if out.len() >= max {
                    return out;
                }
            }
        }
        out
    }
}

/// A ConfigMap body.
pub fn configmap(name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> =
        data.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect();
    serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
}
