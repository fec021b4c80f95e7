//! Helpers both benchmarks use: HTTPS connections with the kubeconfig's credentials,
//! process figures from /proc, percentiles.
#![allow(dead_code)]

use std::io::BufReader;
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub fn pid_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn pid_write_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A kept-alive connection speaking HTTP/1.1, over TLS or not.
pub type Conn = SendRequest<Full<Bytes>>;

pub struct Target {
    pub tls: Option<TlsConnector>,
    pub port: u16,
}

impl Target {
    pub async fn connect(&self) -> Conn {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        match &self.tls {
            Some(tls) => {
                let s = tls.connect(ServerName::try_from("localhost").expect("name"), tcp).await.expect("tls");
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await.expect("handshake");
                tokio::spawn(conn);
                sender
            }
            None => {
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.expect("handshake");
                tokio::spawn(conn);
                sender
            }
        }
    }
}

pub async fn send(conn: &mut Conn, method: &str, path: &str, body: Vec<u8>) -> (u16, Bytes) {
    conn.ready().await.expect("ready");
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = conn.send_request(req).await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.expect("body").to_bytes())
}

pub fn tls_from_kubeconfig(path: &std::path::Path) -> TlsConnector {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc: serde_yaml::Value = serde_yaml::from_slice(&std::fs::read(path).expect("kubeconfig")).expect("yaml");
    let b64 = |v: &serde_yaml::Value| {
        base64::engine::general_purpose::STANDARD.decode(v.as_str().expect("str")).expect("b64")
    };
    let ca = b64(&kc["clusters"][0]["cluster"]["certificate-authority-data"]);
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut BufReader::new(&ca[..])) {
        roots.add(c.expect("ca")).expect("ca");
    }
    let cert = b64(&kc["users"][0]["user"]["client-certificate-data"]);
    let key = b64(&kc["users"][0]["user"]["client-key-data"]);
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut BufReader::new(&cert[..])).map(|c| c.expect("cert")).collect();
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut BufReader::new(&key[..])).expect("key").expect("key");
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client cert");
    TlsConnector::from(Arc::new(cfg))
}

/// (busy, total) jiffies of the whole machine, from /proc/stat.
pub fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = cpu.iter().sum();
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU time (user + system) a process has used, in clock ticks.
pub fn pid_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, r)| r);
    // Fields after the command, from `state` (0): utime and stime are the 12th and 13th.
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

pub struct Killed(pub Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// One layer: the static busybox with a few applets, as a tar.
pub fn busybox_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, "bin/", std::io::empty()).expect("tar");
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", &busybox[..]).expect("tar");
    for a in ["sh", "sleep", "echo", "cat", "true"] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{a}"), "busybox").expect("tar");
    }
    b.into_inner().expect("tar")
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The image `tag` as a `docker save` archive.
pub fn docker_archive(layer: &[u8], tag: &str) -> Vec<u8> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    };
    let config = json!({"architecture": arch, "os": "linux", "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
                        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(layer))]}})
    .to_string();
    let config_name = format!("{}.json", sha256_hex(config.as_bytes()));
    let manifest = json!([{"Config": config_name, "RepoTags": [tag], "Layers": ["l0/layer.tar"]}]).to_string();
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in
        [(config_name.as_str(), config.as_bytes()), ("l0/layer.tar", layer), ("manifest.json", manifest.as_bytes())]
    {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, name, data).expect("tar");
    }
    b.into_inner().expect("tar")
}
