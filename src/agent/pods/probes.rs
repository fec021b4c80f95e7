//! Liveness, readiness and startup probes as the kubelet runs them: `httpGet` (2xx/3xx is
//! success), `tcpSocket` (a connection is success) and `exec` (exit code 0), with every
//! timing field (`initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`,
//! `successThreshold`, `failureThreshold`). One task per probe and container run; each
//! reports to the pod's worker only when the probe's verdict changes.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::exec::{Target, capture};
use super::worker::Msg;

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl Kind {
    /// The container spec field.
    pub fn field(self) -> &'static str {
        match self {
            Kind::Liveness => "livenessProbe",
            Kind::Readiness => "readinessProbe",
            Kind::Startup => "startupProbe",
        }
    }
    /// How events name it.
    pub fn word(self) -> &'static str {
        match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        }
    }
}

/// A probe's verdict after its thresholds.
#[derive(Debug)]
pub struct Verdict {
    pub run_id: String,
    pub kind: Kind,
    pub ok: bool,
}

fn secs(probe: &Value, field: &str, default: u64) -> u64 {
    probe[field].as_u64().unwrap_or(default)
}

/// Resolves a probe port: a number, or the name of one of the container's ports.
fn port(container: &Value, p: &Value) -> Option<u16> {
    if let Some(n) = p.as_u64() {
        return u16::try_from(n).ok();
    }
    let name = p.as_str()?;
    if let Ok(n) = name.parse::<u16>() {
        return Some(n);
    }
    container["ports"]
        .as_array()?
        .iter()
        .find(|cp| cp["name"] == name)
        .and_then(|cp| cp["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
}

async fn http_get(container: &Value, h: &Value, pod_ip: &str, timeout: Duration) -> Result<(), String> {
    let port = port(container, &h["port"]).ok_or("the probe's port is neither a number nor a named container port")?;
    let host = h["host"].as_str().filter(|s| !s.is_empty()).unwrap_or(pod_ip).to_string();
    let path = h["path"].as_str().filter(|s| !s.is_empty()).unwrap_or("/");
    if h["scheme"] == "HTTPS" {
        return https_get(&host, port, path, h, timeout).await;
    }
    let attempt = async {
        let mut tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
        let req = request_text(&host, port, path, h);
        tcp.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        read_status(&mut tcp).await
    };
    let code = tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("Get \"http://{host}:{port}{path}\": context deadline exceeded"))??;
    if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP probe failed with statuscode: {code}")) }
}

fn request_text(host: &str, port: u16, path: &str, h: &Value) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for header in h["httpHeaders"].as_array().into_iter().flatten() {
        req.push_str(&format!(
            "{}: {}\r\n",
            header["name"].as_str().unwrap_or(""),
            header["value"].as_str().unwrap_or("")
        ));
    }
    req.push_str("\r\n");
    req
}

async fn read_status(stream: &mut (impl AsyncReadExt + Unpin)) -> Result<u16, String> {
    let mut buf = vec![0u8; 256];
    let mut got = 0;
    while got < 12 {
        let n = stream.read(&mut buf[got..]).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let line = String::from_utf8_lossy(&buf[..got]).into_owned();
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| "not an HTTP answer".to_string())
}

async fn https_get(host: &str, port: u16, path: &str, h: &Value, timeout: Duration) -> Result<(), String> {
    // Probes do not verify certificates, as upstream.
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(crate::pki::AnyServerCert(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let attempt = async {
        let tcp = TcpStream::connect((host, port)).await.map_err(|e| e.to_string())?;
        let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
        tls.write_all(request_text(host, port, path, h).as_bytes()).await.map_err(|e| e.to_string())?;
        read_status(&mut tls).await
    };
    let code = tokio::time::timeout(timeout, attempt).await.map_err(|_| "context deadline exceeded".to_string())??;
    if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP probe failed with statuscode: {code}")) }
}

async fn attempt(probe: &Value, container: &Value, pod_ip: &str, target: &Target) -> Result<(), String> {
    let timeout = Duration::from_secs(secs(probe, "timeoutSeconds", 1).max(1));
    if probe["httpGet"].is_object() {
        http_get(container, &probe["httpGet"], pod_ip, timeout).await
    } else if probe["tcpSocket"].is_object() {
        let t = &probe["tcpSocket"];
        let port = port(container, &t["port"]).ok_or("the probe's port is neither a number nor a named port")?;
        let host = t["host"].as_str().filter(|s| !s.is_empty()).unwrap_or(pod_ip).to_string();
        match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        }
    } else if probe["exec"].is_object() {
        let argv: Vec<String> = probe["exec"]["command"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        match capture(target, &argv, timeout).await {
            Ok((0, _)) => Ok(()),
            Ok((code, out)) => Err(format!("command {argv:?} exited with {code}: {}", out.trim())),
            Err(e) => Err(format!("{e:#}")),
        }
    } else {
        Err("the probe has no handler this node supports (httpGet, tcpSocket or exec)".into())
    }
}

/// Runs a lifecycle hook (`preStop`) of a container once, as the kubelet does: `exec`,
/// `httpGet` or `sleep`, bounded by `timeout` (what is left of the grace period). A preStop
/// hook is how a server keeps answering while the Service stops sending it traffic.
pub async fn hook(
    handler: &Value,
    container: &Value,
    pod_ip: &str,
    target: &Target,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(seconds) = handler["sleep"]["seconds"].as_u64() {
        tokio::time::sleep(Duration::from_secs(seconds).min(timeout)).await;
        return Ok(());
    }
    let mut as_probe = handler.clone();
    as_probe["timeoutSeconds"] = serde_json::json!(timeout.as_secs().max(1));
    match tokio::time::timeout(timeout, attempt(&as_probe, container, pod_ip, target)).await {
        Ok(result) => result,
        Err(_) => Err(format!("the hook did not finish within {}s", timeout.as_secs())),
    }
}

/// Runs one probe of one container run until the worker goes away, reporting verdicts.
pub async fn run(
    kind: Kind,
    probe: Value,
    container: Value,
    pod_ip: String,
    target: Target,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let period = Duration::from_secs(secs(&probe, "periodSeconds", 10).max(1));
    let success_needed = secs(&probe, "successThreshold", 1).max(1);
    let failure_needed = secs(&probe, "failureThreshold", 3).max(1);
    tokio::time::sleep(Duration::from_secs(secs(&probe, "initialDelaySeconds", 0))).await;
    let (mut successes, mut failures) = (0u64, 0u64);
    let mut verdict: Option<bool> = None;
    loop {
        if tx.is_closed() {
            return;
        }
        let result = attempt(&probe, &container, &pod_ip, &target).await;
        if result.is_ok() {
            successes += 1;
            failures = 0;
        } else {
            failures += 1;
            successes = 0;
            // Every failed attempt is an event, as upstream.
            let name = container["name"].as_str().unwrap_or("").to_string();
            let message = result.as_ref().err().cloned().unwrap_or_default();
            let _ = tx.send(Msg::ProbeFailed { kind, container: name, message });
        }
        let now = if successes >= success_needed {
            Some(true)
        } else if failures >= failure_needed {
            Some(false)
        } else {
            verdict
        };
        if now.is_some() && now != verdict {
            verdict = now;
            let v = Verdict { run_id: target.id.clone(), kind, ok: now == Some(true) };
            if tx.send(Msg::Probe(v)).is_err() {
                return;
            }
            // A failed startup or liveness probe ends this run: the worker restarts it.
            if now == Some(false) && kind != Kind::Readiness {
                return;
            }
            if now == Some(true) && kind == Kind::Startup {
                return;
            }
        }
        tokio::time::sleep(period).await;
    }
}
