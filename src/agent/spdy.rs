//! The server side of SPDY/3.1 as Kubernetes clients speak it for exec, attach and
//! port-forward (kubectl 1.27-1.29 know nothing else, newer ones fall back to it): the
//! client opens streams with SYN_STREAM (a `streamtype` header says which), both sides send
//! DATA frames, FIN half-closes. Header blocks are zlib-compressed with SPDY's preset
//! dictionary, one compression context per direction for the whole session.
//!
//! No crate does SPDY any more, so this is our own, kept to what these clients use: no
//! server push, no priorities, no flow control (the Go client never sends WINDOW_UPDATE
//! and does not wait for one).

use std::collections::HashMap;

use anyhow::{Context, bail};
use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 1;
/// Largest frame accepted from a client (16 MiB is SPDY's own limit).
const MAX_FRAME: usize = 1 << 24;

/// The words of SPDY/3's header dictionary (each stored with a 4-byte length).
const DICT_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];
/// The dictionary's tail, stored as is.
const DICT_TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized\
403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable\
Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,\
text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

/// SPDY/3's preset zlib dictionary for header blocks.
pub fn dictionary() -> Vec<u8> {
    let mut d = Vec::with_capacity(1500);
    for w in DICT_WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(DICT_TAIL.as_bytes());
    d
}

/// A stream the client opened.
pub struct Stream {
    /// Its headers, names lower-case.
    pub headers: HashMap<String, String>,
    /// What the client sends on it; ends when the client half-closes it.
    pub incoming: mpsc::Receiver<Bytes>,
    /// Sends on it.
    pub out: StreamWriter,
}

/// The sending side of one stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    tx: mpsc::Sender<Out>,
}

enum Out {
    Reply(u32),
    Data(u32, Bytes, bool),
    Ping(u32),
}

impl StreamWriter {
    /// Sends `data`; false once the session is gone.
    pub async fn send(&self, data: Bytes) -> bool {
        // Frames stay well under the client's buffer sizes.
        for chunk in data.chunks(32 * 1024) {
            if self.tx.send(Out::Data(self.id, Bytes::copy_from_slice(chunk), false)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Half-closes the stream (FIN).
    pub async fn close(&self) {
        let _ = self.tx.send(Out::Data(self.id, Bytes::new(), true)).await;
    }
}

/// Largest decompressed header block accepted: a few hundred bytes in practice, and a
/// compressed frame could otherwise inflate a thousandfold.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// The headers of one SYN_STREAM's compressed block, with a fresh decompressor (what the
/// first frame of a session is decoded with). For the fuzz target.
pub fn header_block(compressed: &[u8]) -> anyhow::Result<HashMap<String, String>> {
    let mut z = Decompress::new(true);
    parse_headers(&inflate(&mut z, &dictionary(), compressed)?)
}

fn inflate(z: &mut Decompress, dict: &[u8], input: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity((input.len() * 4 + 256).min(MAX_HEADER_BLOCK));
    let mut consumed = 0usize;
    loop {
        if out.len() >= MAX_HEADER_BLOCK {
            bail!("a SPDY header block inflates past {MAX_HEADER_BLOCK} bytes");
        }
        out.reserve(4096);
        let (before_in, before_out) = (z.total_in(), z.total_out());
        let result = z.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
        consumed += (z.total_in() - before_in) as usize;
        match result {
            Err(e) if e.needs_dictionary().is_some() => {
                z.set_dictionary(dict).context("setting the SPDY header dictionary")?;
            }
            Err(e) => bail!("decompressing SPDY headers: {e}"),
            Ok(Status::StreamEnd) => return Ok(out),
            Ok(_) => {
                let progress = z.total_in() != before_in || z.total_out() != before_out;
                if (consumed >= input.len() && out.len() < out.capacity()) || !progress {
                    return Ok(out);
                }
            }
        }
    }
}

fn deflate(z: &mut Compress, input: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(input.len() + 64);
    let mut consumed = 0usize;
    loop {
        out.reserve(1024);
        let before = z.total_in();
        z.compress_vec(&input[consumed..], &mut out, FlushCompress::Sync).context("compressing SPDY headers")?;
        consumed += (z.total_in() - before) as usize;
        if consumed >= input.len() && out.len() < out.capacity() {
            return Ok(out);
        }
    }
}

fn parse_headers(block: &[u8]) -> anyhow::Result<HashMap<String, String>> {
    let mut pos = 0;
    let mut take = |n: usize| -> anyhow::Result<&[u8]> {
        let s = block.get(pos..pos + n).context("a truncated SPDY header block")?;
        pos += n;
        Ok(s)
    };
    let count = u32::from_be_bytes(take(4)?.try_into()?);
    let mut out = HashMap::new();
    for _ in 0..count.min(1024) {
        let n = u32::from_be_bytes(take(4)?.try_into()?) as usize;
        let name = String::from_utf8_lossy(take(n)?).to_lowercase();
        let n = u32::from_be_bytes(take(4)?.try_into()?) as usize;
        let value = String::from_utf8_lossy(take(n)?).replace('\0', ",");
        out.insert(name, value);
    }
    Ok(out)
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

/// Runs a SPDY session over `io`: new streams arrive on the returned receiver. The session
/// ends when the client goes away or every handle to it is dropped.
pub fn serve<IO>(io: IO) -> mpsc::Receiver<Stream>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (new_tx, new_rx) = mpsc::channel::<Stream>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(64);
    // Writer: the only owner of the write half and of the header compressor.
    tokio::spawn(async move {
        let mut z = Compress::new(Compression::default(), true);
        if z.set_dictionary(&dictionary()).is_err() {
            return;
        }
        while let Some(out) = out_rx.recv().await {
            let frame = match out {
                Out::Reply(id) => {
                    // An empty header block: four zero bytes for "no pairs".
                    let Ok(block) = deflate(&mut z, &0u32.to_be_bytes()) else { return };
                    let mut body = (id & 0x7fff_ffff).to_be_bytes().to_vec();
                    body.extend_from_slice(&block);
                    control(SYN_REPLY, 0, &body)
                }
                Out::Data(id, data, fin) => {
                    let mut f = Vec::with_capacity(8 + data.len());
                    f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                    f.push(if fin { FLAG_FIN } else { 0 });
                    f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                    f.extend_from_slice(&data);
                    f
                }
                Out::Ping(id) => control(PING, 0, &id.to_be_bytes()),
            };
            if wr.write_all(&frame).await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    // Reader: frames in, streams and their data out.
    tokio::spawn(async move {
        let dict = dictionary();
        let mut z = Decompress::new(true);
        let mut streams: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
        let mut head = [0u8; 8];
        loop {
            if rd.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            let flags = head[4];
            if len > MAX_FRAME {
                return;
            }
            let mut body = vec![0u8; len];
            if rd.read_exact(&mut body).await.is_err() {
                return;
            }
            if head[0] & 0x80 == 0 {
                let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
                if let Some(tx) = streams.get(&id) {
                    if !body.is_empty() && tx.send(Bytes::from(body)).await.is_err() {
                        streams.remove(&id);
                    }
                    if flags & FLAG_FIN != 0 {
                        streams.remove(&id);
                    }
                }
                continue;
            }
            let kind = u16::from_be_bytes([head[2], head[3]]);
            match kind {
                SYN_STREAM if body.len() >= 10 => {
                    let id = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) & 0x7fff_ffff;
                    let headers = match inflate(&mut z, &dict, &body[10..]).and_then(|b| parse_headers(&b)) {
                        Ok(h) => h,
                        Err(e) => {
                            tracing::debug!(error = %format!("{e:#}"), "a bad SPDY stream");
                            return;
                        }
                    };
                    let (tx, rx) = mpsc::channel::<Bytes>(64);
                    if flags & FLAG_FIN == 0 {
                        streams.insert(id, tx);
                    }
                    if out_tx.send(Out::Reply(id)).await.is_err() {
                        return;
                    }
                    let stream = Stream { headers, incoming: rx, out: StreamWriter { id, tx: out_tx.clone() } };
                    if new_tx.send(stream).await.is_err() {
                        return;
                    }
                }
                RST_STREAM if body.len() >= 4 => {
                    let id = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) & 0x7fff_ffff;
                    streams.remove(&id);
                }
                PING if body.len() >= 4 => {
                    let id = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let _ = out_tx.send(Out::Ping(id)).await;
                }
                GOAWAY => return,
                // SETTINGS, WINDOW_UPDATE, HEADERS: nothing these sessions need.
                _ => {}
            }
        }
    });
    new_rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn header_blocks_round_trip_through_the_dictionary() {
        let dict = dictionary();
        // Its Adler-32 is fixed by the protocol: clients name it in their first header block.
        assert_eq!(adler32(&dict), 0xe3c6_a7c2, "dictionary length {}", dict.len());
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(&dict).unwrap();
        let mut block = Vec::new();
        block.extend_from_slice(&2u32.to_be_bytes());
        for (k, v) in [("streamtype", "stdout"), ("port", "8080")] {
            block.extend_from_slice(&(k.len() as u32).to_be_bytes());
            block.extend_from_slice(k.as_bytes());
            block.extend_from_slice(&(v.len() as u32).to_be_bytes());
            block.extend_from_slice(v.as_bytes());
        }
        let first = deflate(&mut c, &block).unwrap();
        let second = deflate(&mut c, &block).unwrap();
        let mut d = Decompress::new(true);
        let h1 = parse_headers(&inflate(&mut d, &dict, &first).unwrap()).unwrap();
        let h2 = parse_headers(&inflate(&mut d, &dict, &second).unwrap()).unwrap();
        assert_eq!(h1["streamtype"], "stdout");
        assert_eq!(h2["port"], "8080");
        assert!(second.len() < first.len(), "the context carries across frames");
    }
}
