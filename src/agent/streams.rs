//! `kubectl exec` and `kubectl port-forward` on the node: the streaming protocols of
//! `../shared/CLIENT_CONTRACT.md`, behind the API server's splice.
//!
//! - exec over SPDY/3.1 (`v4.channel.k8s.io`): the client opens `error`, `stdin`, `stdout`,
//!   `stderr` and (with a terminal) `resize` streams; the command runs through
//!   `bramble exec-in`, and its end is reported as a `Status` on `error`.
//! - exec over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`): one binary message per
//!   chunk, its first byte the channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; 255
//!   closes a channel in v5).
//! - port-forward over SPDY (`portforward.k8s.io`): per connection a `data` and an `error`
//!   stream sharing a `requestid`; the node connects to the port on the pod's own loopback,
//!   from inside its network namespace, as the kubelet does.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use super::pods::Ctx;
use super::pods::exec::{Target, command, find};
use super::spdy;
use crate::api::http::{Body, full};

/// What the streams are for.
pub enum Purpose {
    Exec { ns: String, pod: String, container: String },
    PortForward { ns: String, pod: String },
}

fn answer(code: u16, msg: &str) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "text/plain")
        .body(full(format!("{msg}\n")))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

/// Every value of `key` in a query string (`command` repeats).
fn all(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| crate::api::http::decode(v))
        .collect()
}

fn flag(query: &str, key: &str) -> bool {
    all(query, key).iter().any(|v| v == "true" || v == "1")
}

fn offered(req: &Request<Incoming>, header: &str) -> Vec<String> {
    req.headers()
        .get_all(header)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect()
}

/// Options of one exec.
#[derive(Clone)]
struct ExecOptions {
    argv: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// Switches protocols for an exec or port-forward request and serves the streams.
pub async fn upgrade(ctx: Arc<Ctx>, req: Request<Incoming>, purpose: Purpose) -> Response<Body> {
    let query = req.uri().query().unwrap_or("").to_string();
    let upgrade_to = req.headers().get("upgrade").and_then(|v| v.to_str().ok()).unwrap_or("").to_lowercase();
    let (target, opts) = match &purpose {
        Purpose::Exec { ns, pod, container } => {
            let Some(target) = find(&ctx, ns, pod, container) else {
                return answer(400, &format!("container {container} is not running in pod {pod}"));
            };
            let argv = all(&query, "command");
            if argv.is_empty() {
                return answer(400, "you must specify at least one command for the container");
            }
            let tty = flag(&query, "tty");
            let opts = ExecOptions {
                argv,
                stdin: flag(&query, "stdin"),
                stdout: flag(&query, "stdout"),
                stderr: flag(&query, "stderr") && !tty,
                tty,
            };
            (Some(target), Some(opts))
        }
        Purpose::PortForward { .. } => (None, None),
    };
    if upgrade_to == "websocket" {
        let wanted = offered(&req, "sec-websocket-protocol");
        let Some(protocol) =
            ["v5.channel.k8s.io", "v4.channel.k8s.io"].into_iter().find(|p| wanted.iter().any(|w| w == p))
        else {
            return answer(400, "no supported WebSocket subprotocol: offer v5.channel.k8s.io or v4.channel.k8s.io");
        };
        let Some(key) = req.headers().get("sec-websocket-key").map(|k| k.as_bytes().to_vec()) else {
            return answer(400, "a WebSocket upgrade needs Sec-WebSocket-Key");
        };
        // Port-forward over plain WebSocket is the Python client's; kubectl tunnels SPDY
        // through WebSocket instead, and falls back to SPDY when refused here.
        let ports: Vec<u16> = all(&query, "ports")
            .iter()
            .flat_map(|p| p.split(',').map(str::to_string).collect::<Vec<_>>())
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        if matches!(purpose, Purpose::PortForward { .. }) && ports.is_empty() {
            return answer(400, "port-forward over WebSocket needs ports=<port>[,<port>...]");
        }
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
        let v5 = protocol.starts_with("v5");
        let upgraded = hyper::upgrade::on(req);
        tokio::spawn(async move {
            let Ok(io) = upgraded.await else { return };
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(io),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            let result = match (purpose, target, opts) {
                (Purpose::Exec { .. }, Some(target), Some(opts)) => exec_websocket(ws, target, opts, v5).await,
                (Purpose::PortForward { ns, pod }, _, _) => port_forward_websocket(ctx, ws, &ns, &pod, ports).await,
                _ => Ok(()),
            };
            if let Err(e) = result {
                tracing::debug!(error = %format!("{e:#}"), "streams over WebSocket");
            }
        });
        return Response::builder()
            .status(101)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .header("sec-websocket-protocol", protocol)
            .body(full(Bytes::new()))
            .unwrap_or_else(|_| answer(500, "building the answer"));
    }
    if upgrade_to != "spdy/3.1" {
        return answer(400, &format!("cannot upgrade to {upgrade_to:?}: use SPDY/3.1 or websocket"));
    }
    let wanted = offered(&req, "x-stream-protocol-version");
    let protocol = match &purpose {
        Purpose::Exec { .. } => "v4.channel.k8s.io",
        Purpose::PortForward { .. } => "portforward.k8s.io",
    };
    if !wanted.iter().any(|w| w == protocol) {
        return answer(400, &format!("no supported stream protocol in {wanted:?}: this node speaks {protocol}"));
    }
    let upgraded = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(io) = upgraded.await else { return };
        let streams = spdy::serve(TokioIo::new(io));
        let result = match (purpose, target, opts) {
            (Purpose::Exec { .. }, Some(target), Some(opts)) => exec_spdy(streams, target, opts).await,
            (Purpose::PortForward { ns, pod }, _, _) => port_forward_spdy(ctx, streams, &ns, &pod).await,
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::debug!(error = %format!("{e:#}"), "stream session");
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .header("x-stream-protocol-version", protocol)
        .body(full(Bytes::new()))
        .unwrap_or_else(|_| answer(500, "building the answer"))
}

/// The `Status` an exec ends with.
fn exit_status(argv: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {}, "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {argv:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

fn failure_status(message: &str) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
}

/// A running `exec-in` with its pipes.
struct Running {
    child: tokio::process::Child,
    /// Window sizes, `rows cols\n`, when there is a terminal.
    resize: Option<tokio::fs::File>,
}

fn spawn(target: &Target, opts: &ExecOptions) -> anyhow::Result<Running> {
    let mut cmd = command(target, opts.tty, opts.tty.then_some(3), &opts.argv)?;
    cmd.stdin(if opts.stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(if opts.stderr || opts.tty { Stdio::piped() } else { Stdio::null() });
    let mut resize = None;
    if opts.tty {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error()).context("creating the resize pipe");
        }
        // SAFETY: fresh descriptors owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let raw = r.as_raw_fd();
        // SAFETY: dup2 in the child between fork and exec is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting exec-in")?;
        drop(r);
        resize = Some(tokio::fs::File::from_std(std::fs::File::from(w)));
        return Ok(Running { child, resize });
    }
    Ok(Running { child: cmd.spawn().context("starting exec-in")?, resize })
}

async fn pump_out(mut from: impl tokio::io::AsyncRead + Unpin, to: spdy::StreamWriter) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || !to.send(Bytes::copy_from_slice(&buf[..n])).await {
            break;
        }
    }
}

/// Applies `{"Width": w, "Height": h}` messages to the terminal.
async fn apply_resize(resize: &mut tokio::fs::File, message: &[u8]) {
    let mut de = serde_json::Deserializer::from_slice(message).into_iter::<Value>();
    while let Some(Ok(v)) = de.next() {
        let (w, h) = (v["Width"].as_u64().unwrap_or(0), v["Height"].as_u64().unwrap_or(0));
        if w > 0 && h > 0 {
            let _ = resize.write_all(format!("{h} {w}\n").as_bytes()).await;
        }
    }
}

async fn exec_spdy(
    mut streams: tokio::sync::mpsc::Receiver<spdy::Stream>,
    target: Target,
    opts: ExecOptions,
) -> anyhow::Result<()> {
    let mut by_type: HashMap<String, spdy::Stream> = HashMap::new();
    let mut expected = vec!["error"];
    if opts.stdin {
        expected.push("stdin");
    }
    if opts.stdout {
        expected.push("stdout");
    }
    if opts.stderr {
        expected.push("stderr");
    }
    if opts.tty {
        expected.push("resize");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !expected.iter().all(|t| by_type.contains_key(*t)) {
        match tokio::time::timeout_at(deadline, streams.recv()).await {
            Ok(Some(s)) => {
                let kind = s.headers.get("streamtype").cloned().unwrap_or_default();
                by_type.insert(kind, s);
            }
            _ => anyhow::bail!("the client did not open its streams"),
        }
    }
    let error = by_type.remove("error").context("no error stream")?;
    let mut running = match spawn(&target, &opts) {
        Ok(r) => r,
        Err(e) => {
            let status = failure_status(&format!("{e:#}"));
            error.out.send(Bytes::from(status.to_string())).await;
            error.out.close().await;
            return Ok(());
        }
    };
    let mut tasks = Vec::new();
    if let (Some(mut s), Some(mut stdin)) = (by_type.remove("stdin"), running.child.stdin.take()) {
        tasks.push(tokio::spawn(async move {
            while let Some(chunk) = s.incoming.recv().await {
                if stdin.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        }));
    }
    let mut outs = Vec::new();
    if let (Some(s), Some(out)) = (by_type.remove("stdout"), running.child.stdout.take()) {
        let w = s.out.clone();
        outs.push((tokio::spawn(pump_out(out, w)), s.out));
    }
    let stderr_pipe = running.child.stderr.take();
    match (by_type.remove("stderr"), stderr_pipe) {
        (Some(s), Some(err)) => {
            let w = s.out.clone();
            outs.push((tokio::spawn(pump_out(err, w)), s.out));
        }
        // With a terminal, exec-in's own complaints are all stderr carries: drain them.
        (None, Some(mut err)) => {
            tasks.push(tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = err.read_to_end(&mut sink).await;
            }));
        }
        _ => {}
    }
    if let (Some(mut s), Some(mut resize)) = (by_type.remove("resize"), running.resize.take()) {
        tasks.push(tokio::spawn(async move {
            while let Some(chunk) = s.incoming.recv().await {
                apply_resize(&mut resize, &chunk).await;
            }
        }));
    }
    let code = running.child.wait().await.map(|s| s.code().unwrap_or(255)).unwrap_or(255);
    for (task, writer) in outs {
        let _ = task.await;
        writer.close().await;
    }
    for t in tasks {
        t.abort();
    }
    error.out.send(Bytes::from(exit_status(&opts.argv, code).to_string())).await;
    error.out.close().await;
    Ok(())
}

async fn exec_websocket<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    target: Target,
    opts: ExecOptions,
    v5: bool,
) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(32);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let frame = |channel: u8, data: &[u8]| {
        let mut v = Vec::with_capacity(data.len() + 1);
        v.push(channel);
        v.extend_from_slice(data);
        Message::Binary(v.into())
    };
    let mut running = match spawn(&target, &opts) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(frame(3, failure_status(&format!("{e:#}")).to_string().as_bytes())).await;
            drop(tx);
            let _ = writer.await;
            return Ok(());
        }
    };
    let mut stdin = running.child.stdin.take();
    let mut resize = running.resize.take();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = source.next().await {
            let data = match m {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, rest)) = data.split_first() else { continue };
            match channel {
                0 => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(rest).await.is_err()
                    {
                        stdin = None;
                    }
                }
                4 => {
                    if let Some(r) = resize.as_mut() {
                        apply_resize(r, rest).await;
                    }
                }
                // v5: "close channel N" (stdin's end of file).
                255 if v5 && rest.first() == Some(&0) => stdin = None,
                _ => {}
            }
        }
    });
    let mut pumps = Vec::new();
    for (channel, pipe) in [
        (1u8, running.child.stdout.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
        (2u8, running.child.stderr.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
    ] {
        let Some(mut pipe) = pipe else { continue };
        let tx = tx.clone();
        let forward = channel == 1 || opts.stderr;
        pumps.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if forward {
                    let mut v = Vec::with_capacity(n + 1);
                    v.push(channel);
                    v.extend_from_slice(&buf[..n]);
                    if tx.send(Message::Binary(v.into())).await.is_err() {
                        break;
                    }
                }
            }
        }));
    }
    let code = running.child.wait().await.map(|s| s.code().unwrap_or(255)).unwrap_or(255);
    for p in pumps {
        let _ = p.await;
    }
    reader.abort();
    let _ = tx.send(frame(3, exit_status(&opts.argv, code).to_string().as_bytes())).await;
    // A normal closure: clients read it as the end of every channel.
    let close = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    };
    let _ = tx.send(Message::Close(Some(close))).await;
    drop(tx);
    let _ = writer.await;
    Ok(())
}

/// Connects to `port` on the loopback of the pod whose network namespace is bound at
/// `ns_file`: the socket is made inside the namespace and keeps it.
async fn connect_in_pod(ns_file: std::path::PathBuf, port: u16) -> anyhow::Result<tokio::net::TcpStream> {
    let std_stream = tokio::task::spawn_blocking(move || -> anyhow::Result<std::net::TcpStream> {
        let ns = std::fs::File::open(&ns_file).with_context(|| format!("opening {}", ns_file.display()))?;
        std::thread::scope(|s| {
            s.spawn(|| -> anyhow::Result<std::net::TcpStream> {
                // SAFETY: a valid namespace descriptor; affects only this thread.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("entering the pod's network namespace");
                }
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                    .with_context(|| format!("connecting to port {port} in the pod"))?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the connecting thread panicked"))?
        })
    })
    .await
    .context("the connecting thread")??;
    Ok(tokio::net::TcpStream::from_std(std_stream)?)
}

async fn port_forward_spdy(
    ctx: Arc<Ctx>,
    mut streams: tokio::sync::mpsc::Receiver<spdy::Stream>,
    ns: &str,
    pod: &str,
) -> anyhow::Result<()> {
    let uid =
        super::pods::exec::pod_uid(&ctx, ns, pod).with_context(|| format!("pod {ns}/{pod} is not on this node"))?;
    let ns_file = ctx.layout.pod_ns_dir(&uid).join("net");
    // Streams pair up by request ID: one error and one data stream per connection.
    let mut pending: HashMap<String, (Option<spdy::Stream>, Option<spdy::Stream>)> = HashMap::new();
    while let Some(s) = streams.recv().await {
        let id = s.headers.get("requestid").cloned().unwrap_or_default();
        let kind = s.headers.get("streamtype").cloned().unwrap_or_default();
        let slot = pending.entry(id.clone()).or_default();
        match kind.as_str() {
            "error" => slot.0 = Some(s),
            "data" => slot.1 = Some(s),
            _ => continue,
        }
        if let (Some(_), Some(_)) = (&slot.0, &slot.1)
            && let Some((Some(error), Some(data))) = pending.remove(&id)
        {
            let ns_file = ns_file.clone();
            tokio::spawn(async move { forward_one(ns_file, error, data).await });
        }
    }
    Ok(())
}

/// Port-forward over WebSocket: per requested port `i`, channel `2i` carries data and
/// `2i+1` errors; each channel's first message from the node is the port, little-endian.
async fn port_forward_websocket<S>(
    ctx: Arc<Ctx>,
    ws: tokio_tungstenite::WebSocketStream<S>,
    ns: &str,
    pod: &str,
    ports: Vec<u16>,
) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let uid =
        super::pods::exec::pod_uid(&ctx, ns, pod).with_context(|| format!("pod {ns}/{pod} is not on this node"))?;
    let ns_file = ctx.layout.pod_ns_dir(&uid).join("net");
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(32);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                return;
            }
        }
    });
    let frame = |channel: u8, data: &[u8]| {
        let mut v = Vec::with_capacity(data.len() + 1);
        v.push(channel);
        v.extend_from_slice(data);
        Message::Binary(v.into())
    };
    let mut writers = Vec::new();
    let mut pumps = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let _ = tx.send(frame(data_ch, &port.to_le_bytes())).await;
        let _ = tx.send(frame(err_ch, &port.to_le_bytes())).await;
        match connect_in_pod(ns_file.clone(), *port).await {
            Ok(tcp) => {
                let (mut rd, wr) = tcp.into_split();
                writers.push(Some(wr));
                let tx = tx.clone();
                pumps.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = rd.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let mut v = Vec::with_capacity(n + 1);
                        v.push(data_ch);
                        v.extend_from_slice(&buf[..n]);
                        if tx.send(Message::Binary(v.into())).await.is_err() {
                            break;
                        }
                    }
                }));
            }
            Err(e) => {
                writers.push(None);
                let _ = tx.send(frame(err_ch, format!("error forwarding port {port} to pod: {e:#}").as_bytes())).await;
            }
        }
    }
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = source.next().await {
            let data = match m {
                Message::Binary(b) => b.to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, rest)) = data.split_first() else { continue };
            let index = channel as usize / 2;
            if channel % 2 == 0
                && let Some(Some(w)) = writers.get_mut(index)
                && w.write_all(rest).await.is_err()
            {
                writers[index] = None;
            }
        }
    });
    for p in pumps {
        let _ = p.await;
    }
    reader.abort();
    let _ = tx.send(Message::Close(None)).await;
    drop(tx);
    let _ = writer.await;
    Ok(())
}

async fn forward_one(ns_file: std::path::PathBuf, error: spdy::Stream, mut data: spdy::Stream) {
    let port: u16 = data.headers.get("port").and_then(|p| p.parse().ok()).unwrap_or(0);
    let tcp = match connect_in_pod(ns_file, port).await {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod: {e:#}");
            error.out.send(Bytes::from(msg)).await;
            error.out.close().await;
            data.out.close().await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let up = tokio::spawn(async move {
        while let Some(chunk) = data.incoming.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    pump_out(&mut rd, data.out.clone()).await;
    data.out.close().await;
    let _ = up.await;
    error.out.close().await;
}
