//! The Ingress reverse proxy: one request, from the client's connection to a backend pod
//! and back. Routes come from the current [`Config`] (swapped whole on each change, read
//! once per request, so open connections carry on across changes); backends are the
//! Services' ready endpoints, balanced round-robin, reached over pooled keep-alive
//! connections (hyper's client), with endpoints that refused a connection skipped for a
//! while and idempotent requests without a body retried on another endpoint. Bodies stream
//! both ways; `Upgrade`s (WebSocket) are spliced after the backend's 101.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;

use super::Config;
use super::pool::Http1Pool;
use super::routes::{BackendProtocol, Options};

/// Any body error, boxed: bodies from clients, backends and ourselves mix.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type both ways.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long an endpoint that refused a connection is passed over (when others remain).
const FAILED_FOR: Duration = Duration::from_secs(10);
/// Most endpoints one idempotent request is tried on.
const MAX_TRIES: usize = 3;
/// The longest connect timeout honoured (nginx's documented maximum): also bounds how many
/// backend clients (one per distinct value) can exist.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(75);
/// The most a client connection's read buffer grows to: large request bodies stream through
/// in pieces this big instead of each connection keeping hyper's default 400 KiB.
pub const MAX_BUF: usize = 64 * 1024;
/// The same for backend connections, smaller: they outlive requests in the pool, each
/// keeping its buffer at the size the largest response grew it to. 16 KiB (four times
/// nginx's default `proxy_buffer_size` of a page) still streams 1 MB bodies faster than
/// nginx in the benchmark; it also bounds a backend's response head (nginx: its 4 KiB
/// buffer, "upstream sent too big header"), answered 502.
const BACKEND_MAX_BUF: usize = 16 * 1024;
/// How long a backend connection may sit idle in the pool.
const POOL_IDLE: Duration = Duration::from_secs(60);

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_SCHEME: HeaderName = HeaderName::from_static("x-forwarded-scheme");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Headers that describe one hop, never passed on (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

/// Where a request came in.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local_port: u16,
    pub tls: bool,
}

type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;
/// A pooled client to backends.
type BackendClient = Client<HttpsConnector, ProxyBody>;

/// Backend clients by protocol and connect timeout (few distinct values in practice).
#[derive(Default)]
struct Clients {
    by_kind: Mutex<HashMap<(BackendProtocol, u64), Arc<BackendClient>>>,
}

impl Clients {
    fn get(&self, proto: BackendProtocol, connect: Duration) -> Result<Arc<BackendClient>, rustls::Error> {
        let key = (proto, connect.as_millis() as u64);
        let mut map = match self.by_kind.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let c = Arc::new(make_client(proto, connect)?);
        map.insert(key, c.clone());
        Ok(c)
    }
}

/// A pooled client for one backend protocol: HTTP/1.1 (h2 for gRPC), TLS for HTTPS and
/// GRPCS without checking the backend's certificate (ingress-nginx's `proxy-ssl-verify`
/// default: pods serve self-signed certificates).
fn make_client(proto: BackendProtocol, connect: Duration) -> Result<BackendClient, rustls::Error> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect));
    http.enforce_http(false);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::pki::AnyServerCert(provider)))
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
    let grpc = matches!(proto, BackendProtocol::Grpc | BackendProtocol::Grpcs);
    let connector =
        if grpc { builder.enable_http2().wrap_connector(http) } else { builder.enable_http1().wrap_connector(http) };
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http1_max_buf_size(BACKEND_MAX_BUF);
    if grpc {
        b.http2_only(true);
    }
    Ok(b.build(connector))
}

/// Why one try at a backend failed.
struct Failed {
    /// Nothing reached the endpoint (it may be skipped, the request tried elsewhere).
    connect: bool,
    error: BoxError,
}

/// The proxy's shared state (one per proxy thread).
pub struct Proxy {
    config: watch::Receiver<Arc<Config>>,
    /// Keep-alive connections to plain-HTTP backends.
    http1: Arc<Http1Pool>,
    /// Pooled clients for TLS and gRPC backends.
    clients: Clients,
    next: AtomicUsize,
    failed: Mutex<HashMap<SocketAddr, Instant>>,
    /// How many entries `failed` holds: read without the lock on every request.
    failures: AtomicUsize,
    /// The HTTPS port, for redirects (left out of the URL when 443).
    https_port: u16,
}

impl Proxy {
    pub fn new(config: watch::Receiver<Arc<Config>>, https_port: u16) -> Proxy {
        Proxy {
            config,
            http1: Http1Pool::new(BACKEND_MAX_BUF, POOL_IDLE),
            clients: Clients::default(),
            next: AtomicUsize::new(0),
            failed: Mutex::default(),
            failures: AtomicUsize::new(0),
            https_port,
        }
    }

    /// Closes backend connections idle past their time (run now and then).
    pub fn sweep_idle(&self) {
        self.http1.sweep();
    }

    /// Answers one request (never fails: errors are answered with their status).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<ProxyBody>, Infallible> {
        Ok(self.route(req, conn).await)
    }

    async fn route(&self, mut req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let config = self.config.borrow().clone();
        let Some((authority, host)) = host_of(&req) else {
            return text(StatusCode::BAD_REQUEST, "the request names no valid host, or more than one\n");
        };
        if is_upgrade(&req) && upgrade_protocol(&req).is_some_and(|p| p.eq_ignore_ascii_case("h2c")) {
            // An h2c tunnel would carry requests past the per-path rules.
            return text(StatusCode::BAD_REQUEST, "upgrading to h2c through the Ingress is not allowed\n");
        }
        // Routed (and allow-listed) by the normalised path, as nginx matches locations, so
        // `/a/../admin` or `//admin` cannot slip past an `/admin` rule.
        let Some(path) = normalize_path(req.uri().path()) else {
            return text(StatusCode::BAD_REQUEST, "the path climbs above /\n");
        };
        let Some(m) = config.table.route(&host, &path) else {
            return text(StatusCode::NOT_FOUND, "404 page not found: no Ingress rule matches this host and path\n");
        };
        let o = m.options.clone();
        if !o.source_allowed(conn.peer.ip()) {
            return text(
                StatusCode::FORBIDDEN,
                "403 forbidden: your address is not in this Ingress's allowed ranges\n",
            );
        }
        if let Some((to, code)) = &o.permanent_redirect {
            return redirect(*code, to);
        }
        if !conn.tls && o.redirects_to_https(config.table.is_tls_host(&host)) {
            let port = match self.https_port {
                0 | 443 => String::new(),
                p => format!(":{p}"),
            };
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            return redirect(308, &format!("https://{host}{port}{pq}"));
        }
        if let Some(root) = &o.app_root
            && path == "/"
        {
            return redirect(302, root);
        }
        let endpoints = match m.backend.endpoints() {
            Ok(eps) if !eps.is_empty() => eps,
            Ok(_) => {
                let msg = format!("503 service unavailable: {} has no ready endpoints\n", m.backend);
                return text(StatusCode::SERVICE_UNAVAILABLE, &msg);
            }
            Err(why) => return text(StatusCode::SERVICE_UNAVAILABLE, &format!("503 service unavailable: {why}\n")),
        };
        if let Some(limit) = o.proxy_body_size
            && content_length(req.headers()).is_some_and(|l| l > limit)
        {
            return text(StatusCode::PAYLOAD_TOO_LARGE, "413 request entity too large (proxy-body-size)\n");
        }

        let upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        // The client's own path goes on unchanged (ingress-nginx passes `$request_uri`),
        // unless the Ingress rewrites it.
        let rewritten = if m.options.rewrite_target.is_some() {
            config.table.rewrite_path(&m, &path)
        } else {
            req.uri().path().to_string()
        };
        let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        let client_version = req.version();
        let (parts, body) = req.into_parts();
        let has_body = content_length(&parts.headers).is_some_and(|l| l > 0)
            || parts.headers.contains_key(header::TRANSFER_ENCODING)
            || (client_version == Version::HTTP_2 && !body_is_empty(&body));
        let retryable = is_idempotent(&parts.method) && !has_body && upgrade.is_none();
        let mut body = Some(match o.proxy_body_size {
            // Most requests have no body: nothing to count or pass on.
            _ if body_is_empty(&body) => empty(),
            Some(limit) => IdleTimeout::wrap(
                Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).boxed_unsync(),
                o.send_timeout,
                "proxy-send-timeout",
            ),
            None => IdleTimeout::wrap(
                body.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
                o.send_timeout,
                "proxy-send-timeout",
            ),
        });

        let cookie = o.affinity_cookie.as_ref();
        let pinned = cookie
            .and_then(|c| cookie_value(&parts.headers, &c.name))
            .and_then(|v| endpoints.iter().copied().find(|e| endpoint_token(*e) == v));
        let order = self.order(endpoints, pinned);
        let timeout = o.connect_timeout + o.read_timeout.max(o.send_timeout);
        let grpc = matches!(o.backend_protocol, BackendProtocol::Grpc | BackendProtocol::Grpcs);
        let origin_form: Uri = match format!("{rewritten}{query}").parse() {
            Ok(u) => u,
            Err(_) => return text(StatusCode::BAD_REQUEST, "the rewritten path is not a valid URI path\n"),
        };
        let mut last_error = String::new();
        for (attempt, ep) in order.iter().take(if retryable { MAX_TRIES } else { 1 }).enumerate() {
            let mut up = Request::builder().method(parts.method.clone()).uri(origin_form.clone());
            if let Some(h) = up.headers_mut() {
                *h = forwarded_headers(&parts.headers, &authority, &host, conn, upgrade.is_some());
                if grpc && parts.headers.get(header::TE).is_some_and(|te| te == "trailers") {
                    // gRPC servers insist on it; it is the one TE value HTTP/2 allows.
                    h.insert(header::TE, HeaderValue::from_static("trailers"));
                }
            }
            up = up.version(if grpc { Version::HTTP_2 } else { Version::HTTP_11 });
            let this_body = match body.take() {
                Some(b) => b,
                None => Empty::new().map_err(|never| match never {}).boxed_unsync(),
            };
            let up = match up.body(this_body) {
                Ok(r) => r,
                Err(e) => return text(StatusCode::BAD_REQUEST, &format!("the request cannot be passed on: {e}\n")),
            };
            let sent = tokio::time::timeout(timeout, self.send(&o, *ep, up)).await;
            match sent {
                Err(_) => {
                    return text(
                        StatusCode::GATEWAY_TIMEOUT,
                        "504 gateway timeout: the backend did not answer in time\n",
                    );
                }
                Ok(Ok(mut resp)) => {
                    self.forget_failure(*ep);
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                        && let Some(client_side) = upgrade
                    {
                        let backend_side = hyper::upgrade::on(&mut resp);
                        tokio::spawn(splice(client_side, backend_side, o.read_timeout));
                        let (parts, _) = resp.into_parts();
                        return Response::from_parts(parts, empty());
                    }
                    let set_cookie = cookie.filter(|_| pinned != Some(*ep)).map(|c| c.set_cookie(&endpoint_token(*ep)));
                    return self.respond(resp, set_cookie, client_version, o.read_timeout);
                }
                Ok(Err(failed)) => {
                    let too_large =
                        std::iter::successors(Some(&*failed.error as &dyn std::error::Error), |e| e.source())
                            .any(|e| e.is::<http_body_util::LengthLimitError>());
                    if too_large {
                        return text(StatusCode::PAYLOAD_TOO_LARGE, "413 request entity too large (proxy-body-size)\n");
                    }
                    last_error = format!("{}", failed.error);
                    if let Some(source) = failed.error.source() {
                        last_error = format!("{last_error}: {source}");
                    }
                    if failed.connect {
                        self.remember_failure(*ep);
                    }
                    if !(failed.connect && retryable) {
                        break;
                    }
                    tracing::debug!(endpoint = %ep, attempt, error = %last_error, "Ingress backend refused; trying another");
                }
            }
        }
        text(StatusCode::BAD_GATEWAY, &format!("502 bad gateway: {last_error}\n"))
    }

    /// Sends one request to one endpoint: plain HTTP over this thread's own keep-alive
    /// connections (the common case), TLS and gRPC over hyper's pooled client.
    async fn send(
        &self,
        o: &Options,
        ep: SocketAddr,
        mut up: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, Failed> {
        let connect = o.connect_timeout.min(MAX_CONNECT_TIMEOUT);
        if o.backend_protocol == BackendProtocol::Http {
            return self
                .http1
                .send(ep, up, connect)
                .await
                .map_err(|e| Failed { connect: e.is_connect(), error: Box::new(e) });
        }
        let client = self
            .clients
            .get(o.backend_protocol, connect)
            .map_err(|e| Failed { connect: false, error: format!("no client for the backend: {e}").into() })?;
        let scheme = match o.backend_protocol {
            BackendProtocol::Https | BackendProtocol::Grpcs => "https",
            BackendProtocol::Http | BackendProtocol::Grpc => "http",
        };
        let path = up.uri().path_and_query().map_or("/", |p| p.as_str());
        *up.uri_mut() = format!("{scheme}://{ep}{path}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| Failed { connect: false, error: Box::new(e) })?;
        match client.request(up).await {
            Ok(resp) => Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync())),
            Err(e) => Err(Failed { connect: e.is_connect(), error: Box::new(e) }),
        }
    }

    /// The backend's response with its hop-by-hop headers removed.
    fn respond(
        &self,
        resp: Response<ProxyBody>,
        set_cookie: Option<String>,
        client: Version,
        read_timeout: Duration,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(c) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
            parts.headers.append(header::SET_COOKIE, c);
        }
        parts.version = client;
        Response::from_parts(parts, IdleTimeout::wrap(body, read_timeout, "proxy-read-timeout"))
    }

    /// Endpoints in the order to try them: the pinned one (cookie affinity) first, then
    /// round-robin from the next turn, those that failed lately last.
    fn order(&self, endpoints: &[SocketAddr], pinned: Option<SocketAddr>) -> Vec<SocketAddr> {
        let start = self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
        let mut order: Vec<SocketAddr> = endpoints[start..].iter().chain(&endpoints[..start]).copied().collect();
        if self.failures.load(Ordering::Relaxed) == 0 {
            // The common case: nothing failed lately, no lock taken.
            if let Some(p) = pinned {
                order.retain(|e| *e != p);
                order.insert(0, p);
            }
            return order;
        }
        let failed = match self.failed.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        let bad = |e: &SocketAddr| failed.get(e).is_some_and(|t| now.duration_since(*t) < FAILED_FOR);
        order.sort_by_key(|e| bad(e));
        if let Some(p) = pinned.filter(|p| !bad(p)) {
            order.retain(|e| *e != p);
            order.insert(0, p);
        }
        order
    }

    fn remember_failure(&self, ep: SocketAddr) {
        if let Ok(mut f) = self.failed.lock() {
            f.insert(ep, Instant::now());
            if f.len() > 4096 {
                let now = Instant::now();
                f.retain(|_, t| now.duration_since(*t) < FAILED_FOR);
            }
            self.failures.store(f.len(), Ordering::Relaxed);
        }
    }

    fn forget_failure(&self, ep: SocketAddr) {
        if self.failures.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Ok(mut f) = self.failed.lock() {
            f.remove(&ep);
            self.failures.store(f.len(), Ordering::Relaxed);
        }
    }
}

/// A body that fails when no frame comes for `timeout` (nginx's `proxy_read_timeout` and
/// `proxy_send_timeout`: between two reads, not for the whole body, so a long download
/// or a stream of events goes on while it moves).
struct IdleTimeout {
    inner: ProxyBody,
    timeout: Duration,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Whether the last poll found nothing (the clock runs only while we wait for the
    /// other side, not while the reader of this body is slow).
    waiting: bool,
    what: &'static str,
}

impl IdleTimeout {
    fn wrap(inner: ProxyBody, timeout: Duration, what: &'static str) -> ProxyBody {
        let sleep = Box::pin(tokio::time::sleep(timeout));
        UnsyncBoxBody::new(IdleTimeout { inner, timeout, sleep, waiting: false, what })
    }
}

impl hyper::body::Body for IdleTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    this.sleep.as_mut().reset(tokio::time::Instant::now() + this.timeout);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(format!("nothing moved for {:?} ({})", this.timeout, this.what).into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Copies bytes both ways between the client's and the backend's upgraded connections,
/// and closes both once nothing moved either way for `idle`, the `proxy-read-timeout`
/// (nginx closes a proxied WebSocket the same way; users raise it for quiet sockets).
async fn splice(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade, idle: Duration) {
    use crate::counting::Counting;
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "an upgraded Ingress connection failed to start");
            return;
        }
    };
    let moved = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut c = Counting { io: TokioIo::new(client), read: moved.clone() };
    let mut b = Counting { io: TokioIo::new(backend), read: moved.clone() };
    let copy = tokio::io::copy_bidirectional(&mut c, &mut b);
    tokio::pin!(copy);
    // Looked at four times per `idle`: closed between 1 and 1.25 times `idle` after the
    // last byte.
    let mut check = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen, mut since) = (0, tokio::time::Instant::now());
    loop {
        tokio::select! {
            r = &mut copy => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "an upgraded Ingress connection ended with an error");
                }
                return;
            }
            now = check.tick() => {
                let read = moved.load(Ordering::Relaxed);
                if read != seen {
                    (seen, since) = (read, now);
                } else if now.duration_since(since) >= idle {
                    tracing::debug!(idle = ?idle, "an upgraded Ingress connection was idle: closed");
                    return;
                }
            }
        }
    }
}

/// The host a request is for, as sent (`authority`, for the backend's `Host`) and as
/// routed (port, case and trailing dot gone): HTTP/2's `:authority` or an absolute URI's,
/// else the one `Host` header. `None` for several `Host` headers or characters no host
/// name has, so routing and the backend can never see two different hosts.
fn host_of<B>(req: &Request<B>) -> Option<(String, String)> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return None;
    }
    let raw = match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => header?.to_str().ok()?.to_string(),
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']' | '_');
    if raw.is_empty() || !raw.chars().all(ok) {
        return None;
    }
    let host = match raw.rsplit_once(':') {
        // `[::1]:80` and `name:80`; a bare IPv6 literal has no port after its `]`.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => h.to_string(),
        _ => raw.clone(),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some((raw, host))
}

/// The path with `%XX` of unreserved characters decoded, `.` and `..` segments resolved
/// and repeated slashes merged (RFC 3986 5.2.4, as nginx normalises before matching
/// locations); `None` when `..` climbs above the root.
fn normalize_path(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(c) = hex.filter(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')) {
                decoded.push(c);
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded);
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut out: Vec<&str> = Vec::new();
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "" | "." if n != last => {}
            ".." => {
                out.pop()?;
            }
            "." => out.push(""),
            s => out.push(s),
        }
    }
    let mut joined = String::with_capacity(decoded.len());
    for seg in &out {
        joined.push('/');
        joined.push_str(seg);
    }
    if joined.is_empty() {
        joined.push('/');
    }
    Some(joined)
}

fn upgrade_protocol<B>(req: &Request<B>) -> Option<&str> {
    req.headers().get(header::UPGRADE)?.to_str().ok()
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

fn body_is_empty(body: &Incoming) -> bool {
    hyper::body::Body::is_end_stream(body)
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Removes the hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none: one scan of the names (no hashing) says so.
    if !h.keys().any(|k| HOP_BY_HOP.contains(&k.as_str())) {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(str::trim).map(str::to_ascii_lowercase).collect::<Vec<_>>())
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// The headers sent to the backend: the client's, less hop-by-hop ones, plus who the
/// client is (`X-Forwarded-*`, `X-Real-IP`, RFC 7239 `Forwarded`). What the client sent
/// in these is replaced, not trusted (ingress-nginx's `use-forwarded-headers: false`).
fn forwarded_headers(incoming: &HeaderMap, authority: &str, host: &str, conn: ConnInfo, upgrade: bool) -> HeaderMap {
    let mut h = incoming.clone();
    let upgrade_to = h.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut h);
    if upgrade && let Some(u) = upgrade_to {
        h.insert(header::UPGRADE, u);
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // The host routed on, as the client wrote it: never a second, different one.
    if let Ok(v) = HeaderValue::from_str(authority) {
        h.insert(header::HOST, v);
    }
    let proto = if conn.tls { "https" } else { "http" };
    let ip = conn.peer.ip();
    let for_ = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let proto = HeaderValue::from_static(proto);
    if let Ok(client) = HeaderValue::from_str(&ip.to_string()) {
        h.insert(X_FORWARDED_FOR, client.clone());
        h.insert(X_REAL_IP, client);
    }
    h.insert(X_FORWARDED_PROTO, proto.clone());
    h.insert(X_FORWARDED_SCHEME, proto);
    if let Ok(v) = HeaderValue::from_str(host) {
        h.insert(X_FORWARDED_HOST, v);
    }
    h.insert(X_FORWARDED_PORT, HeaderValue::from(conn.local_port));
    let proto = if conn.tls { "https" } else { "http" };
    if let Ok(v) = HeaderValue::from_str(&format!("for={for_};host={host};proto={proto}")) {
        h.insert(header::FORWARDED, v);
    }
    h
}

/// The cookie value that names an endpoint: a hash, so pods' addresses are not shown.
fn endpoint_token(ep: SocketAddr) -> String {
    format!("{:08x}", crc32fast::hash(ep.to_string().as_bytes()))
}

fn cookie_value(h: &HeaderMap, name: &str) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A short plain-text answer of our own.
pub fn text(code: StatusCode, msg: &str) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(Bytes::from(msg.to_string())).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn redirect(code: u16, to: &str) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let mut r = text(status, &format!("{} {}\n", status.as_u16(), status.canonical_reason().unwrap_or("redirect")));
    match HeaderValue::from_str(to) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "the redirect target is not a valid header value\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> ConnInfo {
        ConnInfo { peer: "192.0.2.7:50000".parse().unwrap(), local_port: 443, tls: true }
    }

    #[test]
    fn hosts_lose_their_port_case_and_trailing_dot() {
        let req = |host: &str| Request::builder().uri("/x").header("host", host).body(()).unwrap();
        let routed = |r: &Request<()>| host_of(r).map(|(_, h)| h);
        assert_eq!(routed(&req("Foo.Example:8080")).as_deref(), Some("foo.example"));
        assert_eq!(host_of(&req("Foo.Example:8080")).map(|(a, _)| a).as_deref(), Some("Foo.Example:8080"));
        assert_eq!(routed(&req("foo.example.")).as_deref(), Some("foo.example"));
        assert_eq!(routed(&req("[::1]:80")).as_deref(), Some("[::1]"));
        let h2 = Request::builder().uri("https://bar.example/x").body(()).unwrap();
        assert_eq!(routed(&h2).as_deref(), Some("bar.example"));
        assert_eq!(host_of(&Request::builder().uri("/x").body(()).unwrap()), None);
        // Never two hosts: an absolute URI wins over Host, two Host headers are refused,
        // and characters no host has are refused.
        let both = Request::builder().uri("http://open.example/").header("host", "admin.example").body(()).unwrap();
        assert_eq!(routed(&both).as_deref(), Some("open.example"));
        let two = Request::builder().uri("/").header("host", "a.example").header("host", "b.example").body(()).unwrap();
        assert_eq!(host_of(&two), None);
        for bad in ["a.example/evil", "user@a.example", "a example", ""] {
            assert_eq!(host_of(&req(bad)), None, "{bad}");
        }
    }

    #[test]
    fn forwarded_headers_replace_what_the_client_claims() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("connection", HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("hop"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        h.insert("host", HeaderValue::from_static("admin.example"));
        let out = forwarded_headers(&h, "app.example", "app.example", conn(), false);
        assert_eq!(out["x-forwarded-for"], "192.0.2.7");
        assert_eq!(out["x-real-ip"], "192.0.2.7");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-host"], "app.example");
        assert_eq!(out["x-forwarded-port"], "443");
        assert_eq!(out["forwarded"], "for=192.0.2.7;host=app.example;proto=https");
        assert_eq!(out["host"], "app.example");
        assert_eq!(out["accept"], "*/*");
        for gone in ["connection", "x-secret", "te"] {
            assert!(!out.contains_key(gone), "{gone} is hop-by-hop");
        }
    }

    #[test]
    fn upgrades_keep_their_upgrade_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        let out = forwarded_headers(&h, "ws.example", "ws.example", conn(), true);
        assert_eq!(out["upgrade"], "websocket");
        assert_eq!(out["connection"], "upgrade");
    }

    #[test]
    fn paths_are_normalised_before_routing() {
        let cases = [
            ("/", "/"),
            ("/a/b/", "/a/b/"),
            ("//admin", "/admin"),
            ("/pub/../admin", "/admin"),
            ("/./admin/.", "/admin/"),
            ("/%61dmin", "/admin"),
            ("/a%2fb", "/a%2fb"),
            ("/a/..", "/"),
            ("/caf%C3%A9", "/caf%C3%A9"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_path(raw).as_deref(), Some(want), "{raw}");
        }
        assert_eq!(normalize_path("/.."), None);
        assert_eq!(normalize_path("/a/../../etc"), None);
    }

    /// A body that yields `frames` frames, each after `gap`, then ends.
    struct Slow {
        frames: usize,
        gap: Duration,
        sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    }

    impl hyper::body::Body for Slow {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
            use std::future::Future;
            if self.frames == 0 {
                return std::task::Poll::Ready(None);
            }
            std::task::ready!(self.sleep.as_mut().poll(cx));
            self.frames -= 1;
            let next = tokio::time::Instant::now() + self.gap;
            self.sleep.as_mut().reset(next);
            std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(b"x")))))
        }
    }

    fn slow(frames: usize, gap_ms: u64) -> ProxyBody {
        let gap = Duration::from_millis(gap_ms);
        UnsyncBoxBody::new(Slow { frames, gap, sleep: Box::pin(tokio::time::sleep(gap)) })
    }

    #[tokio::test]
    async fn the_idle_timeout_counts_between_frames_not_the_whole_body() {
        // Five frames 40 ms apart: 200 ms in all, never 100 ms without one.
        let moving = IdleTimeout::wrap(slow(5, 40), Duration::from_millis(100), "proxy-read-timeout");
        assert_eq!(moving.collect().await.map(|b| b.to_bytes().len()).ok(), Some(5));
        let stuck = IdleTimeout::wrap(slow(2, 300), Duration::from_millis(100), "proxy-read-timeout");
        let err = stuck.collect().await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("proxy-read-timeout"), "{err}");
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("a=1; INGRESSCOOKIE=abc; b=2"));
        assert_eq!(cookie_value(&h, "INGRESSCOOKIE").as_deref(), Some("abc"));
        assert_eq!(cookie_value(&h, "nope"), None);
    }
}
