//! The terminal's streams for the streaming verbs (`logs`, `exec`): output written off the
//! runtime (tokio's own stdio is not built in, and a write to a slow pipe blocks), and
//! stdin read on a thread of its own, since a blocking read cannot be cancelled and the
//! runtime must not wait for it when the command ends.

use std::io::{Read, Write};

use anyhow::Context;
use tokio::sync::mpsc;

/// Which of the process's output streams.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Writes `data` to `stream` and flushes it, on the blocking pool.
pub async fn write(stream: Stream, data: Vec<u8>) -> anyhow::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        match stream {
            Stream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&data)?;
                out.flush()
            }
            Stream::Stderr => {
                let mut out = std::io::stderr().lock();
                out.write_all(&data)?;
                out.flush()
            }
        }
    })
    .await
    .context("the output writer stopped")?;
    written.with_context(|| format!("writing to {stream:?}"))
}

/// Starts reading stdin on its own thread: chunks as they come, then `None` at its end.
pub fn read_stdin() -> anyhow::Result<mpsc::Receiver<Option<Vec<u8>>>> {
    let (tx, rx) = mpsc::channel(8);
    std::thread::Builder::new()
        .name("kubectl-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let chunk = match stdin.read(&mut buf) {
                    Ok(0) => None,
                    Ok(n) => Some(buf[..n].to_vec()),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        eprintln!("error: reading stdin: {e}");
                        None
                    }
                };
                let end = chunk.is_none();
                // A closed receiver means the session is over: nobody wants the rest.
                if tx.blocking_send(chunk).is_err() || end {
                    return;
                }
            }
        })
        .context("starting the stdin reader")?;
    Ok(rx)
}
