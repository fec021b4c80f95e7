//! Keep-alive HTTP/1.1 connections to plain-HTTP backends, for one proxy thread. A
//! request takes an idle connection to its endpoint (or opens one), and the connection
//! goes back when the response body has been read to its end, nginx's `keepalive` for an
//! upstream. hyper-util's general-purpose pool did the same with a task spawned per
//! request to wait for the connection to be ready again, a second lock, and an absolute
//! URI rewritten per request; the proxy's common case does without them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::proxy::ProxyBody;

/// Most idle connections kept to one endpoint (nginx's `keepalive`, per worker, is
/// usually set to 32-64 for a whole upstream).
const MAX_IDLE_PER_ENDPOINT: usize = 64;

/// Why a request did not reach its backend.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened: the endpoint may be skipped and the request
    /// retried elsewhere, since nothing of it was sent.
    #[error("connecting to {ep}")]
    Connect {
        ep: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// No connection within the `proxy-connect-timeout`: as [`SendError::Connect`].
    #[error("connecting to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    /// The request failed on an open connection (it may have been partly sent).
    #[error("the backend connection failed")]
    Http(#[from] hyper::Error),
}

impl SendError {
    /// Whether nothing of the request reached the endpoint.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect { .. } | SendError::ConnectTimeout(_))
    }
}

/// A connection waiting in the pool, and since when.
struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

/// Idle connections by endpoint.
pub struct Http1Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    max_buf: usize,
    keep_idle: Duration,
}

impl Http1Pool {
    /// A pool whose connections read at most `max_buf` ahead and stay idle at most
    /// `keep_idle`.
    pub fn new(max_buf: usize, keep_idle: Duration) -> Arc<Http1Pool> {
        Arc::new(Http1Pool { idle: Mutex::default(), max_buf, keep_idle })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Idle>>> {
        // Nothing done under the lock can leave the map half-changed.
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An idle connection to `ep` ready for a request, the newest first (the likeliest to
    /// be still open at the backend's end).
    fn take_idle(&self, ep: SocketAddr) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle();
        let list = idle.get_mut(&ep)?;
        let now = Instant::now();
        while let Some(c) = list.pop() {
            if c.sender.is_ready() && now.duration_since(c.since) < self.keep_idle {
                return Some(c.sender);
            }
            // Closed by the backend or idle too long: dropping the sender closes it.
        }
        None
    }

    /// Keeps a connection whose response has ended. It is ready for the next request at
    /// once, unless its request body is still going out (a backend may answer a large
    /// upload early, 401 or 413, and keep reading): then it joins the pool only once that
    /// ends, so no other request waits behind it.
    fn give_back(self: &Arc<Self>, ep: SocketAddr, mut sender: SendRequest<ProxyBody>) {
        if sender.is_ready() {
            self.keep(ep, sender);
            return;
        }
        if sender.is_closed() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (pool, keep_idle) = (Arc::downgrade(self), self.keep_idle);
        runtime.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(keep_idle, sender.ready()).await
                && let Some(pool) = pool.upgrade()
            {
                pool.keep(ep, sender);
            }
        });
    }

    fn keep(&self, ep: SocketAddr, sender: SendRequest<ProxyBody>) {
        let mut idle = self.idle();
        let list = idle.entry(ep).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle { sender, since: Instant::now() });
        }
    }

    /// Drops the connections idle longer than the pool keeps them, and those the backend
    /// closed: run now and then, so an endpoint no longer used holds no buffers.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.idle();
        idle.retain(|_, list| {
            list.retain(|c| c.sender.is_ready() && now.duration_since(c.since) < self.keep_idle);
            !list.is_empty()
        });
    }

    /// How many idle connections the pool holds.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle().values().map(Vec::len).sum()
    }

    async fn connect(&self, ep: SocketAddr, timeout: Duration) -> Result<SendRequest<ProxyBody>, SendError> {
        let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(ep)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(source)) => return Err(SendError::Connect { ep, source }),
            Err(_) => return Err(SendError::ConnectTimeout(ep)),
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY on a backend connection");
        }
        let (sender, conn) = http1::Builder::new().max_buf_size(self.max_buf).handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(endpoint = %ep, error = %e, "a backend connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `req` (origin-form URI, `Host` set) to `ep` on a pooled connection, or a new
    /// one when none is idle or the idle one turned out closed before the request went
    /// out. The connection returns to the pool once the response body is read to its end.
    pub async fn send(
        self: &Arc<Self>,
        ep: SocketAddr,
        mut req: Request<ProxyBody>,
        connect_timeout: Duration,
    ) -> Result<Response<ProxyBody>, SendError> {
        if let Some(mut sender) = self.take_idle(ep) {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.returning(ep, sender, resp)),
                Err(mut e) => match e.take_message() {
                    // Closed before any of the request went out: a new connection takes it.
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        let mut sender = self.connect(ep, connect_timeout).await?;
        let resp = sender.send_request(req).await?;
        Ok(self.returning(ep, sender, resp))
    }

    /// The response with a body that brings the connection back (not for a protocol
    /// switch: the connection is the upgrade's then).
    fn returning(
        self: &Arc<Self>,
        ep: SocketAddr,
        sender: SendRequest<ProxyBody>,
        resp: Response<Incoming>,
    ) -> Response<ProxyBody> {
        let back = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS).then(|| (Arc::downgrade(self), ep, sender));
        resp.map(|inner| Returning { inner, back }.map_err(|e| Box::new(e) as super::proxy::BoxError).boxed_unsync())
    }
}

/// A backend's response body that gives its connection back to the pool when read to
/// its end (or when dropped having nothing left), and closes it otherwise.
pub struct Returning {
    inner: Incoming,
    back: Option<(Weak<Http1Pool>, SocketAddr, SendRequest<ProxyBody>)>,
}

impl Returning {
    fn give_back(&mut self) {
        if let Some((pool, ep, sender)) = self.back.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.give_back(ep, sender);
        }
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A listener on loopback that counts the connections it accepts and hands each to
    /// `serve` on a task of its own.
    async fn listen<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(tcp));
            }
        });
        (addr, accepted)
    }

    /// A backend that answers `/big` with 1 MiB and anything else with "ok", closing each
    /// connection after one response when `close` is set.
    async fn backend(close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        listen(move |tcp| async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                let body = if req.uri().path() == "/big" { vec![b'x'; 1 << 20] } else { b"ok".to_vec() };
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                if close {
                    resp.headers_mut().insert(http::header::CONNECTION, "close".parse().unwrap());
                }
                Ok::<_, std::convert::Infallible>(resp)
            });
            // A connection the pool closed mid-body ends in an error here: expected.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        })
        .await
    }

    fn get(path: &str) -> Request<ProxyBody> {
        Request::get(path)
            .header(http::header::HOST, "backend")
            .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
            .unwrap()
    }

    async fn read(resp: Response<ProxyBody>) -> usize {
        resp.into_body().collect().await.unwrap().to_bytes().len()
    }

    const CONNECT: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_was_read() {
        let (addr, accepted) = backend(false).await;
        let pool = Http1Pool::new(16 * 1024, Duration::from_secs(60));
        for _ in 0..5 {
            let resp = pool.send(addr, get("/"), CONNECT).await.unwrap();
            assert_eq!(read(resp).await, 2);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_response_left_unread_closes_its_connection() {
        let (addr, accepted) = backend(false).await;
        let pool = Http1Pool::new(16 * 1024, Duration::from_secs(60));
        let resp = pool.send(addr, get("/big"), CONNECT).await.unwrap();
        let mut body = resp.into_body();
        assert!(body.frame().await.unwrap().unwrap().is_data());
        drop(body);
        assert_eq!(pool.idle_count(), 0, "a connection with unread bytes cannot carry another request");
        assert_eq!(read(pool.send(addr, get("/"), CONNECT).await.unwrap()).await, 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_the_backend_closes_are_not_used_again() {
        let (addr, accepted) = backend(true).await;
        let pool = Http1Pool::new(16 * 1024, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(read(pool.send(addr, get("/"), CONNECT).await.unwrap()).await, 2);
            // Give the connection's task the moment it needs to see the close.
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_says_nothing_was_sent() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let pool = Http1Pool::new(16 * 1024, Duration::from_secs(60));
        let err = pool.send(free, get("/"), CONNECT).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
    }

    #[tokio::test]
    async fn the_sweep_closes_connections_idle_past_their_time() {
        let (addr, accepted) = backend(false).await;
        let pool = Http1Pool::new(16 * 1024, Duration::from_millis(50));
        assert_eq!(read(pool.send(addr, get("/"), CONNECT).await.unwrap()).await, 2);
        assert_eq!(pool.idle_count(), 1);
        tokio::time::sleep(Duration::from_millis(80)).await;
        pool.sweep();
        assert_eq!(pool.idle_count(), 0);
        // And a request after that opens a new one.
        assert_eq!(read(pool.send(addr, get("/"), CONNECT).await.unwrap()).await, 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
    /// A request body fed by hand.
    struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = super::super::proxy::BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn a_connection_still_uploading_waits_outside_the_pool() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A backend that answers as soon as it has the head (as one refusing an upload
        // with 401 or 413 may), then reads whatever comes.
        let (addr, accepted) = listen(|mut tcp| async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    return;
                }
            }
        })
        .await;
        let pool = Http1Pool::new(16 * 1024, Duration::from_secs(60));
        let (feed, fed) = tokio::sync::mpsc::channel(1);
        let upload =
            Request::post("/upload").header(http::header::HOST, "backend").body(Fed(fed).boxed_unsync()).unwrap();
        feed.send(Bytes::from_static(b"part one")).await.unwrap();
        let resp = pool.send(addr, upload, CONNECT).await.unwrap();
        assert_eq!(read(resp).await, 2);
        assert_eq!(pool.idle_count(), 0, "a connection still sending its request body is not idle");
        // Another request does not wait for the upload: it gets a connection of its own.
        let other = tokio::time::timeout(Duration::from_secs(5), pool.send(addr, get("/"), CONNECT)).await;
        assert_eq!(read(other.expect("the second request waited behind the upload").unwrap()).await, 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // Once the upload ends, its connection joins the pool too.
        drop(feed);
        for _ in 0..100 {
            if pool.idle_count() == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the uploading connection never came back: {} idle", pool.idle_count());
    }
}
