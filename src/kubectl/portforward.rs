//! `port-forward`: listens on local ports and carries each accepted connection to a port
//! on the pod's own loopback, over one WebSocket per connection in the port-forward
//! protocol the server speaks (`v4.channel.k8s.io` with `?ports=N`: channel 0 data, 1
//! errors, each opened by the port number in two little-endian bytes), as the Python
//! client does. kubectl itself tunnels SPDY through the WebSocket; bramble's server does
//! not offer that tunnel, and plain WebSocket needs no second protocol on this side.
//!
//! The protocol has no half-close: once the local side stops sending, the pod's answer
//! is still read until the pod closes the connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, anyhow, bail};
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use super::Ctx;
use super::pods;

/// `port-forward` flags.
#[derive(clap::Args, Debug)]
pub struct PortForwardArgs {
    /// POD, pod/NAME, svc/NAME, or TYPE/NAME of a workload (its most active pod).
    target: String,
    /// LOCAL:REMOTE, PORT (the same on both sides) or :REMOTE (any free local port).
    #[arg(required = true)]
    ports: Vec<String>,
    /// Addresses to listen on, comma-separated (localhost: 127.0.0.1 and ::1).
    #[arg(long, default_value = "localhost", value_delimiter = ',')]
    address: Vec<String>,
}

/// One `LOCAL:REMOTE` as typed: the local port (`None`: the remote's number; `Some(0)`:
/// any free one) and the remote port, a number or a port name.
#[derive(Debug, PartialEq)]
struct PortSpec {
    local: Option<u16>,
    remote: String,
}

fn parse_spec(text: &str) -> anyhow::Result<PortSpec> {
    let bad = || anyhow!("invalid port {text:?}: use LOCAL:REMOTE, PORT or :REMOTE");
    let (local, remote) = match text.split_once(':') {
        Some(("", remote)) => (Some(0), remote),
        Some((local, remote)) => (Some(local.parse::<u16>().map_err(|_| bad())?), remote),
        None => (None, text),
    };
    if remote.is_empty() || remote.contains(':') {
        return Err(bad());
    }
    Ok(PortSpec { local, remote: remote.to_string() })
}

/// The container port named `name` in `pod`.
fn named_container_port(pod: &Value, name: &str) -> Option<u16> {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
}

/// The pod port a typed remote port means: a number as is, a name through the pod's
/// container ports, or (for `svc/NAME`) a Service port through its `targetPort`.
fn pod_port(pod: &Value, service: Option<&Value>, remote: &str) -> anyhow::Result<u16> {
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or("");
    let Some(svc) = service else {
        return match remote.parse::<u16>() {
            Ok(n) => Ok(n),
            Err(_) => named_container_port(pod, remote)
                .ok_or_else(|| anyhow!("Pod '{pod_name}' does not have a named port '{remote}'")),
        };
    };
    let svc_name = svc["metadata"]["name"].as_str().unwrap_or("");
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let port = match remote.parse::<u16>() {
        Ok(n) => ports.iter().find(|p| p["port"].as_u64() == Some(u64::from(n))),
        Err(_) => ports.iter().find(|p| p["name"] == remote),
    }
    .ok_or_else(|| anyhow!("Service {svc_name} does not have a service port {remote}"))?;
    match &port["targetPort"] {
        Value::Number(n) if n.as_u64().is_some_and(|n| n > 0) => {
            n.as_u64().and_then(|n| u16::try_from(n).ok()).context("targetPort out of range")
        }
        Value::String(name) => match name.parse::<u16>() {
            Ok(n) => Ok(n),
            Err(_) => named_container_port(pod, name)
                .ok_or_else(|| anyhow!("Pod '{pod_name}' does not have a named port '{name}'")),
        },
        _ => port["port"].as_u64().and_then(|n| u16::try_from(n).ok()).context("the service port has no number"),
    }
}

/// Strips the two-byte port number the server opens each channel with.
#[derive(Default)]
struct PortPrefix {
    left: [usize; 2],
    started: [bool; 2],
}

impl PortPrefix {
    /// The payload of a message on `channel` (0 data, 1 error) once the prefix is gone.
    fn strip<'a>(&mut self, channel: usize, data: &'a [u8]) -> &'a [u8] {
        let Some(left) = self.left.get_mut(channel) else { return data };
        if !self.started[channel] {
            self.started[channel] = true;
            *left = 2;
        }
        let skip = (*left).min(data.len());
        *left -= skip;
        &data[skip..]
    }
}

/// Carries one local connection to the pod and back.
async fn forward_one(ctx: &Ctx, path: &str, tcp: TcpStream) -> anyhow::Result<()> {
    let (ws, _) = ctx.client.websocket(path, &["v4.channel.k8s.io"]).await?;
    let (mut sink, mut source) = ws.split();
    let (mut rd, mut wr) = tcp.into_split();
    let mut prefix = PortPrefix::default();
    let mut error = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut local_open = true;
    loop {
        tokio::select! {
            read = rd.read(&mut buf), if local_open => match read {
                Ok(0) | Err(_) => local_open = false,
                Ok(n) => {
                    let mut message = Vec::with_capacity(n + 1);
                    message.push(0);
                    message.extend_from_slice(&buf[..n]);
                    sink.send(Message::Binary(message.into())).await.context("sending to the pod")?;
                }
            },
            message = source.next() => {
                let data = match message {
                    None | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) if error.is_empty() => return Err(anyhow!("the connection to the pod broke: {e}")),
                    Some(Err(_)) => break,
                };
                let Some((&channel, rest)) = data.split_first() else { continue };
                let payload = prefix.strip(usize::from(channel), rest);
                match channel {
                    0 if wr.write_all(payload).await.is_err() => break,
                    1 => error.extend_from_slice(payload),
                    _ => {}
                }
            }
        }
    }
    // The local client may be gone already; nothing is left to tell it.
    let _ = wr.shutdown().await;
    // Tell the server we are done; it may have closed first.
    let _ = sink.close().await;
    if error.is_empty() { Ok(()) } else { Err(anyhow!("{}", String::from_utf8_lossy(&error).trim())) }
}

/// The addresses `--address` names.
fn listen_addresses(given: &[String]) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for a in given {
        match a.as_str() {
            "localhost" => out.extend([IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]),
            other => out.push(other.parse().with_context(|| format!("--address {other:?} is not an IP address"))?),
        }
    }
    Ok(out)
}

/// A local listener and the pod port its connections go to.
struct Forward {
    listener: TcpListener,
    local: u16,
    remote: u16,
}

/// Runs `port-forward` until interrupted.
pub async fn run(ctx: &Ctx, a: PortForwardArgs) -> anyhow::Result<()> {
    let chosen = pods::resolve(ctx, &a.target).await?;
    let phase = chosen.pod["status"]["phase"].as_str().unwrap_or("Unknown");
    if phase != "Running" {
        bail!("unable to forward port because pod is not running. Current status={phase}");
    }
    let addresses = listen_addresses(&a.address)?;
    let mut forwards = Vec::new();
    for text in &a.ports {
        let spec = parse_spec(text)?;
        let remote = pod_port(&chosen.pod, chosen.service.as_ref(), &spec.remote)?;
        let mut local = match spec.local {
            Some(p) => p,
            None => spec.remote.parse::<u16>().unwrap_or(remote),
        };
        let mut failures = Vec::new();
        let before = forwards.len();
        for ip in &addresses {
            match TcpListener::bind(SocketAddr::new(*ip, local)).await {
                Ok(listener) => {
                    let bound = listener.local_addr().context("reading the listener's address")?;
                    // Port 0 picked a free port: every further address listens on the same.
                    local = bound.port();
                    println!("Forwarding from {bound} -> {remote}");
                    forwards.push(Forward { listener, local, remote });
                }
                Err(e) => failures.push(format!("unable to create listener: Error listen tcp {ip}:{local}: {e}")),
            }
        }
        if forwards.len() == before {
            bail!(
                "unable to listen on port {local}: Listeners failed to create with the following errors: [{}]",
                failures.join(" ")
            );
        }
    }
    let base = format!("/api/v1/namespaces/{}/pods/{}/portforward", chosen.namespace(), chosen.name());
    let mut active = FuturesUnordered::new();
    loop {
        let accepts = forwards.iter().map(|f| Box::pin(async move { (f.listener.accept().await, f.local, f.remote) }));
        tokio::select! {
            ((accepted, local, remote), _, _) = futures_util::future::select_all(accepts) => {
                let (tcp, _) = accepted.with_context(|| format!("accepting on port {local}"))?;
                println!("Handling connection for {local}");
                let path = format!("{base}?ports={remote}");
                active.push(async move { (forward_one(ctx, &path, tcp).await, local, remote) });
            }
            Some((result, local, remote)) = active.next(), if !active.is_empty() => {
                if let Err(e) = result {
                    eprintln!("error: an error occurred forwarding {local} -> {remote}: {e:#}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn port_specs() {
        assert_eq!(parse_spec("8080:80").unwrap(), PortSpec { local: Some(8080), remote: "80".into() });
        assert_eq!(parse_spec("80").unwrap(), PortSpec { local: None, remote: "80".into() });
        assert_eq!(parse_spec(":80").unwrap(), PortSpec { local: Some(0), remote: "80".into() });
        assert_eq!(parse_spec("9000:http").unwrap(), PortSpec { local: Some(9000), remote: "http".into() });
        for bad in ["x:80", "8080:", "1:2:3", "70000:80"] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn remote_ports_through_names_and_services() {
        let pod = json!({"metadata": {"name": "web-1"}, "spec": {"containers": [
            {"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}]}});
        assert_eq!(pod_port(&pod, None, "9090").unwrap(), 9090);
        assert_eq!(pod_port(&pod, None, "http").unwrap(), 8080);
        assert!(pod_port(&pod, None, "grpc").unwrap_err().to_string().contains("does not have a named port 'grpc'"));
        let svc = json!({"metadata": {"name": "web"}, "spec": {"ports": [
            {"name": "web", "port": 80, "targetPort": "http"},
            {"name": "metrics", "port": 9100, "targetPort": 9101},
            {"name": "plain", "port": 7000}]}});
        assert_eq!(pod_port(&pod, Some(&svc), "80").unwrap(), 8080);
        assert_eq!(pod_port(&pod, Some(&svc), "web").unwrap(), 8080);
        assert_eq!(pod_port(&pod, Some(&svc), "9100").unwrap(), 9101);
        assert_eq!(pod_port(&pod, Some(&svc), "7000").unwrap(), 7000);
        assert_eq!(
            pod_port(&pod, Some(&svc), "81").unwrap_err().to_string(),
            "Service web does not have a service port 81"
        );
    }

    #[test]
    fn each_channel_loses_its_port_prefix_once() {
        let mut p = PortPrefix::default();
        assert_eq!(p.strip(0, &[0x50, 0x00]), b"");
        assert_eq!(p.strip(0, b"HTTP/1.0"), b"HTTP/1.0");
        assert_eq!(p.strip(1, &[0x50]), b"");
        assert_eq!(p.strip(1, &[0x00, b'e']), b"e");
        assert_eq!(p.strip(1, b"rr"), b"rr");
    }

    #[test]
    fn localhost_is_both_loopbacks() {
        let addrs = listen_addresses(&["localhost".to_string()]).unwrap();
        assert_eq!(addrs, vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        assert!(listen_addresses(&["nowhere".to_string()]).is_err());
    }
}
