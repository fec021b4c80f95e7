//! `exec`: runs a command in a container over the WebSocket exec protocol kubectl 1.30+
//! speaks (`v5.channel.k8s.io`, `v4.channel.k8s.io` as a fallback): every binary message
//! starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 the closing `Status`, 4 terminal
//! size; v5's 255 closes a channel, which is how the command sees stdin's end). The
//! process exits with the command's own exit code, as kubectl does.

use std::io::IsTerminal;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::Ctx;
use super::get::urlencode;
use super::pods;
use super::stdio::{self, Stream};
use super::tty::{self, RawMode};

/// Subprotocols offered, best first.
const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
/// v5: the rest of the message names a channel the sender is done writing.
const CLOSE: u8 = 255;

/// `exec` flags.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// POD, pod/NAME, or TYPE/NAME of a workload (its most active pod).
    target: String,
    /// The container; default: the pod's default container, else its first.
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Pass stdin to the command.
    #[arg(short = 'i', long)]
    stdin: bool,
    /// Give the command a terminal (with -i, from a local terminal).
    #[arg(short = 't', long)]
    tty: bool,
    /// Print nothing but the command's own output.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// How an exec ended, when not with exit code 0.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The command ran and exited non-zero: kubectl exits with the same code.
    #[error("command terminated with exit code {0}")]
    ExitCode(i32),
    /// The node could not run the command (no such container, no such program).
    #[error("{0}")]
    Remote(String),
    /// The connection broke before the command's end was reported.
    #[error("the exec stream broke before the command finished: {0}")]
    Stream(String),
}

/// The query of the `pods/NAME/exec` upgrade.
fn exec_query(container: &str, command: &[String], stdin: bool, tty: bool) -> String {
    let mut parts: Vec<String> = command.iter().map(|c| format!("command={}", urlencode(c))).collect();
    parts.push(format!("container={}", urlencode(container)));
    if stdin {
        parts.push("stdin=true".into());
    }
    parts.push("stdout=true".into());
    // With a terminal the command's stderr is the terminal too: one stream.
    if !tty {
        parts.push("stderr=true".into());
    }
    if tty {
        parts.push("tty=true".into());
    }
    parts.join("&")
}

/// One message on `channel`.
fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// A terminal size message, as kubectl sends it on the resize channel.
fn resize_message(cols: u16, rows: u16) -> Message {
    frame(RESIZE, json!({"Width": cols, "Height": rows}).to_string().as_bytes())
}

/// Reads the `Status` the status channel carried: success, the command's exit code, or
/// the node's complaint. No status at all is success, as in kubectl.
fn outcome(status: &[u8]) -> Result<(), ExecError> {
    if status.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let v: Value = serde_json::from_slice(status)
        .map_err(|e| ExecError::Stream(format!("the status channel carried no Status ({e})")))?;
    match v["status"].as_str() {
        Some("Success") => Ok(()),
        Some("Failure") if v["reason"] == "NonZeroExitCode" => {
            let code = v["details"]["causes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["reason"] == "ExitCode")
                .and_then(|c| c["message"].as_str())
                .and_then(|m| m.parse().ok())
                .ok_or_else(|| ExecError::Remote(format!("a non-zero exit without its code: {v}")))?;
            Err(ExecError::ExitCode(code))
        }
        _ => Err(ExecError::Remote(v["message"].as_str().unwrap_or("unknown error").to_string())),
    }
}

/// The next delivery of a signal that may not be listened for.
async fn next_signal(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The next chunk of stdin (`Some(None)` or `None` at its end); never, without stdin.
async fn next_input(input: &mut Option<mpsc::Receiver<Option<Vec<u8>>>>) -> Option<Option<Vec<u8>>> {
    match input {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs `exec`.
pub async fn run(ctx: &Ctx, a: ExecArgs) -> anyhow::Result<()> {
    let chosen = pods::resolve(ctx, &a.target).await?;
    let phase = chosen.pod["status"]["phase"].as_str().unwrap_or("");
    if phase == "Succeeded" || phase == "Failed" {
        bail!("cannot exec into a container in a completed pod; current phase is {phase}");
    }
    let (container, notice) = pods::container(&chosen.pod, a.container.as_deref())?;
    if let Some(n) = notice.filter(|_| !a.quiet) {
        eprintln!("{n}");
    }
    // As kubectl: a terminal only with stdin, and only when stdin is one.
    let mut tty = a.tty && a.stdin;
    if tty && !std::io::stdin().is_terminal() {
        if !a.quiet {
            eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
        }
        tty = false;
    }
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}/exec?{}",
        chosen.namespace(),
        chosen.name(),
        exec_query(&container, &a.command, a.stdin, tty)
    );
    let (ws, protocol) = ctx.client.websocket(&path, PROTOCOLS).await?;
    let v5 = protocol == "v5.channel.k8s.io";
    let (mut sink, mut source) = ws.split();
    // Raw only once connected, so no early error leaves the terminal raw; restored when
    // this guard drops, on every return below.
    let _raw = if tty { Some(RawMode::enter(tty::STDIN).context("putting the terminal in raw mode")?) } else { None };
    let mut input = if a.stdin { Some(stdio::read_stdin()?) } else { None };
    let mut winch =
        if tty { Some(signal(SignalKind::window_change()).context("watching the window size")?) } else { None };
    let mut term = Some(signal(SignalKind::terminate()).context("handling SIGTERM")?);
    let mut hangup = Some(signal(SignalKind::hangup()).context("handling SIGHUP")?);
    if tty && let Some((cols, rows)) = tty::size() {
        sink.send(resize_message(cols, rows)).await.map_err(|e| ExecError::Stream(e.to_string()))?;
    }
    let mut status = Vec::new();
    loop {
        tokio::select! {
            message = source.next() => {
                let data = match message {
                    None | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(_)) => continue,
                    // The node closes abruptly at times once the status is sent.
                    Some(Err(_)) if !status.is_empty() => break,
                    Some(Err(e)) => return Err(ExecError::Stream(e.to_string()).into()),
                };
                let Some((&channel, rest)) = data.split_first() else { continue };
                match channel {
                    STDOUT => stdio::write(Stream::Stdout, rest.to_vec()).await?,
                    STDERR => stdio::write(Stream::Stderr, rest.to_vec()).await?,
                    STATUS => status.extend_from_slice(rest),
                    _ => {}
                }
            }
            chunk = next_input(&mut input) => {
                let sent = match chunk {
                    Some(Some(data)) => sink.send(frame(STDIN, &data)).await,
                    // End of stdin: v5 tells the command; v4 has no way to.
                    _ => {
                        input = None;
                        if v5 { sink.send(frame(CLOSE, &[STDIN])).await } else { Ok(()) }
                    }
                };
                // A refused write means the session is over: the loop reads why.
                if sent.is_err() {
                    input = None;
                }
            }
            _ = next_signal(&mut winch) => {
                if let Some((cols, rows)) = tty::size() {
                    // A lost resize is harmless: the next one, or the end, follows.
                    let _ = sink.send(resize_message(cols, rows)).await;
                }
            }
            _ = next_signal(&mut term) => bail!("terminated"),
            _ = next_signal(&mut hangup) => bail!("hung up"),
        }
    }
    // Answer the node's close; the outcome is already known, so a failure here changes nothing.
    let _ = sink.close().await;
    outcome(&status)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_command_container_and_streams() {
        let cmd = vec!["sh".to_string(), "-c".to_string(), "cat; exit 3".to_string()];
        assert_eq!(
            exec_query("main", &cmd, true, false),
            "command=sh&command=-c&command=cat%3B%20exit%203&container=main&stdin=true&stdout=true&stderr=true"
        );
        assert_eq!(
            exec_query("main", &["sh".to_string()], true, true),
            "command=sh&container=main&stdin=true&stdout=true&tty=true"
        );
    }

    #[test]
    fn frames_carry_their_channel_first() {
        assert_eq!(frame(STDIN, b"hi"), Message::Binary(vec![0, b'h', b'i'].into()));
        let Message::Binary(resize) = resize_message(80, 24) else { panic!("binary") };
        assert_eq!(resize[0], RESIZE);
        let size: Value = serde_json::from_slice(&resize[1..]).unwrap();
        assert_eq!(size, json!({"Width": 80, "Height": 24}));
    }

    #[test]
    fn the_status_channel_gives_the_exit_code() {
        assert!(outcome(b"").is_ok());
        assert!(outcome(br#"{"metadata":{},"status":"Success"}"#).is_ok());
        let failed = json!({"status": "Failure", "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}});
        assert!(matches!(outcome(failed.to_string().as_bytes()), Err(ExecError::ExitCode(3))));
        let internal = json!({"status": "Failure", "reason": "InternalError", "message": "no such container"});
        let e = outcome(internal.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.to_string(), "no such container");
        assert!(matches!(outcome(b"not json"), Err(ExecError::Stream(_))));
    }
}
