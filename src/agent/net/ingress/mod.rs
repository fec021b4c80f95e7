//! The built-in Ingress controller's data path, on every node: a reverse proxy on ports 80
//! and 443 (`--ingress-http-port`, `--ingress-https-port`) serving the Ingresses of our
//! classes. `routes` turns Ingresses, Services and EndpointSlices into a route table,
//! `certs` picks TLS certificates by SNI, `proxy` passes requests on. The listeners open
//! only while an IngressClass of ours exists (the server removes it with
//! `--disable ingress`), so another controller can have the ports.

pub mod certs;
mod pool;
pub mod proxy;
pub mod routes;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::client::Client;
use crate::control::informer::Informer;
use crate::control::ingress::{CONTROLLER, is_ours, our_classes};

/// Which ports the proxy listens on (0: not that one).
#[derive(Clone, Copy, Debug)]
pub struct IngressOptions {
    pub http_port: u16,
    pub https_port: u16,
}

/// What requests are served from: swapped whole on each change.
pub struct Config {
    pub table: Arc<routes::Table>,
    pub certs: HashMap<(String, String), certs::Loaded>,
    pub default_cert: Arc<CertifiedKey>,
}

/// How long changes are gathered before the table is built again.
const COALESCE: Duration = Duration::from_millis(20);
/// How long a client has to finish its request head (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most client connections open at once on one node (each holds a descriptor and a task).
const MAX_CONNECTIONS: usize = 4096;
/// HTTP/2 connections are pinged this often, and closed when a ping goes unanswered.
const H2_PING_EVERY: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// How often each proxy thread closes the backend connections idle past their time.
const POOL_SWEEP_EVERY: Duration = Duration::from_secs(15);

/// Starts the Ingress proxy of this node: follows Ingresses and classes (Services and
/// EndpointSlices come from the node network's caches) until `stop`.
pub async fn start(
    client: Arc<Client>,
    node: &str,
    services: Arc<Informer>,
    slices: Arc<Informer>,
    opts: IngressOptions,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let changed = Arc::new(Notify::new());
    let watch_for_changes = |inf: &Arc<Informer>| {
        let n = changed.clone();
        inf.on_change(Box::new(move |_, _| n.notify_one()));
    };
    let ingresses = Informer::new("/apis/networking.k8s.io/v1/ingresses");
    let classes = Informer::new("/apis/networking.k8s.io/v1/ingressclasses");
    for inf in [&ingresses, &classes, &services, &slices] {
        watch_for_changes(inf);
    }
    tokio::spawn(ingresses.clone().run(client.clone()));
    tokio::spawn(classes.clone().run(client.clone()));
    let default_cert = certs::default_key(node)?;
    let empty = Config { table: Arc::new(routes::build(&[], &[], &[])), certs: HashMap::new(), default_cert };
    let (tx, rx) = watch::channel(Arc::new(empty));
    // Certificates are read on a task of their own: a slow API delays a new certificate,
    // never a route change.
    let (wanted_tx, wanted_rx) = watch::channel(BTreeSet::new());
    let (certs_tx, certs_rx) = watch::channel(HashMap::new());
    tokio::spawn(read_certs(client, wanted_rx, certs_tx, changed.clone(), stop.clone()));
    let follower = Follower {
        wanted: wanted_tx,
        certs: certs_rx,
        ingresses,
        classes,
        services,
        slices,
        opts,
        config: tx,
        rx,
        listening: None,
    };
    tokio::spawn(follower.run(changed, stop));
    Ok(())
}

/// Keeps the configuration and the listeners current.
struct Follower {
    /// The TLS Secrets the routes name, for [`read_certs`].
    wanted: watch::Sender<BTreeSet<(String, String)>>,
    /// What [`read_certs`] last read.
    certs: watch::Receiver<HashMap<(String, String), certs::Loaded>>,
    ingresses: Arc<Informer>,
    classes: Arc<Informer>,
    services: Arc<Informer>,
    slices: Arc<Informer>,
    opts: IngressOptions,
    config: watch::Sender<Arc<Config>>,
    rx: watch::Receiver<Arc<Config>>,
    listening: Option<Listening>,
}

impl Follower {
    async fn run(mut self, changed: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        for inf in [&self.ingresses, &self.classes, &self.services, &self.slices] {
            inf.synced().await;
        }
        loop {
            self.once();
            tokio::select! {
                _ = changed.notified() => tokio::time::sleep(COALESCE).await,
                _ = stop.changed() => break,
            }
        }
        self.listening = None;
    }

    fn once(&mut self) {
        let classes = self.classes.list();
        let ours = our_classes(&classes);
        let mine: Vec<_> = self.ingresses.list().into_iter().filter(|i| is_ours(i, &ours)).collect();
        let table = Arc::new(routes::build(&mine, &self.services.list(), &self.slices.list()));
        let wanted = table.secrets();
        self.wanted.send_if_modified(|w| {
            let new = *w != wanted;
            if new {
                *w = wanted;
            }
            new
        });
        let current = self.config.borrow().clone();
        let certs = self.certs.borrow().clone();
        self.config.send_replace(Arc::new(Config { table, certs, default_cert: current.default_cert.clone() }));

        let serving =
            classes.iter().any(|c| c.pointer("/spec/controller").and_then(|v| v.as_str()) == Some(CONTROLLER));
        if serving && self.listening.is_none() {
            match self.listen() {
                Ok(l) => self.listening = Some(l),
                Err(e) => tracing::error!(error = %format!("{e:#}"), "the Ingress proxy cannot listen"),
            }
        } else if !serving && self.listening.is_some() {
            tracing::info!("no IngressClass of ours: the Ingress proxy stops listening");
            self.listening = None;
        }
    }

    /// Opens the listeners (both or neither: a half-served Ingress is worse) and the
    /// proxy's threads: one per core, each a single-threaded runtime with its own sockets
    /// on the ports (`SO_REUSEPORT`: the kernel spreads connections) and its own backend
    /// pools, so a request and its backend connection never cross threads (nginx's worker
    /// model; handing each request between threads cost as much as proxying it).
    fn listen(&self) -> anyhow::Result<Listening> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(certs::SniResolver { config: self.rx.clone() }));
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let mut sockets = Vec::new();
        for _ in 0..threads {
            let http = (self.opts.http_port > 0).then(|| bind_shared(self.opts.http_port)).transpose()?;
            let https = (self.opts.https_port > 0).then(|| bind_shared(self.opts.https_port)).transpose()?;
            sockets.push((http, https));
        }
        let (stop, stopped) = watch::channel(false);
        for (n, (http, https)) in sockets.into_iter().enumerate() {
            let (config, acceptor, mut stopped) = (self.rx.clone(), acceptor.clone(), stopped.clone());
            let https_port = self.opts.https_port;
            let serve = move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "starting an Ingress proxy thread");
                        return;
                    }
                };
                rt.block_on(async move {
                    let proxy = Arc::new(proxy::Proxy::new(config, https_port));
                    // Idle backend connections past their time go even with no traffic.
                    let sweeping = Arc::downgrade(&proxy);
                    tokio::spawn(async move {
                        let mut tick = tokio::time::interval(POOL_SWEEP_EVERY);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            tick.tick().await;
                            match sweeping.upgrade() {
                                Some(p) => p.sweep_idle(),
                                None => return,
                            }
                        }
                    });
                    let limit = (MAX_CONNECTIONS / threads).max(1);
                    // This thread's connections, both ports together.
                    let slots = Arc::new(tokio::sync::Semaphore::new(limit));
                    for (socket, tls) in [(http, None), (https, Some(acceptor))] {
                        match socket.map(TcpListener::from_std).transpose() {
                            Ok(Some(l)) => {
                                tokio::spawn(accept(l, tls, proxy.clone(), slots.clone()));
                            }
                            Ok(None) => {}
                            Err(e) => tracing::error!(error = %e, "an Ingress listener"),
                        }
                    }
                    // Until told to stop (or the follower is gone); dropping the runtime
                    // then closes the sockets and the connections.
                    if stopped.wait_for(|s| *s).await.is_err() {
                        tracing::debug!("the Ingress follower is gone: its proxy thread stops");
                    }
                });
            };
            std::thread::Builder::new()
                .name(format!("ingress-{n}"))
                .spawn(serve)
                .context("starting an Ingress proxy thread")?;
        }
        tracing::info!(
            http = self.opts.http_port,
            https = self.opts.https_port,
            threads,
            "the Ingress proxy is listening"
        );
        Ok(Listening { stop })
    }
}

/// Follows each TLS Secret the routes name with a watch of its own (a list and watch by
/// `metadata.name`, the one way a node may follow a Secret, as kubelets do), and wakes the
/// follower when a certificate came, changed or went: a renewed certificate is served
/// within moments.
async fn read_certs(
    client: Arc<Client>,
    mut wanted: watch::Receiver<BTreeSet<(String, String)>>,
    certs: watch::Sender<HashMap<(String, String), certs::Loaded>>,
    changed: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let updated = Arc::new(Notify::new());
    let mut followed: HashMap<(String, String), FollowedSecret> = HashMap::new();
    let mut unusable = HashMap::new();
    loop {
        let want = wanted.borrow_and_update().clone();
        followed.retain(|k, _| want.contains(k));
        for key in &want {
            if !followed.contains_key(key) {
                followed.insert(key.clone(), FollowedSecret::start(&client, key, &updated));
            }
        }
        let have = certs.borrow().clone();
        let found = followed.iter().filter_map(|(k, f)| Some((k.clone(), f.informer.list().pop()?)));
        let fresh = certs::load(found, &have, &mut unusable);
        let same =
            fresh.len() == have.len() && fresh.iter().all(|(k, v)| have.get(k).is_some_and(|h| h.version == v.version));
        if !same {
            certs.send_replace(fresh);
            changed.notify_one();
        }
        tokio::select! {
            r = wanted.changed() => if r.is_err() { return },
            _ = updated.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// The watch of one TLS Secret: stopped when dropped.
struct FollowedSecret {
    informer: Arc<Informer>,
    task: tokio::task::JoinHandle<()>,
}

impl FollowedSecret {
    fn start(client: &Arc<Client>, (ns, name): &(String, String), updated: &Arc<Notify>) -> FollowedSecret {
        // Names and namespaces are DNS labels and subdomains: nothing to escape but `=`.
        let informer = Informer::new(&format!("/api/v1/namespaces/{ns}/secrets?fieldSelector=metadata.name%3D{name}"));
        let n = updated.clone();
        informer.on_change(Box::new(move |_, _| n.notify_one()));
        let task = tokio::spawn(informer.clone().run(client.clone()));
        FollowedSecret { informer, task }
    }
}

impl Drop for FollowedSecret {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The proxy's threads while they listen: dropping this stops them.
struct Listening {
    stop: watch::Sender<bool>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// A listening socket on `port` that other threads' sockets share (`SO_REUSEPORT`), handed
/// over unregistered so the thread that serves it registers it with its own runtime. It
/// takes IPv6 and IPv4 both (`[::]`, not v6-only) where the board has IPv6, else IPv4.
fn bind_shared(port: u16) -> anyhow::Result<std::net::TcpListener> {
    let bind = |v6: bool| -> std::io::Result<std::net::TcpListener> {
        let socket = if v6 { tokio::net::TcpSocket::new_v6()? } else { tokio::net::TcpSocket::new_v4()? };
        if v6 {
            socket2::SockRef::from(&socket).set_only_v6(false)?;
        }
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.set_nodelay(true)?;
        let any: std::net::IpAddr =
            if v6 { std::net::Ipv6Addr::UNSPECIFIED.into() } else { std::net::Ipv4Addr::UNSPECIFIED.into() };
        socket.bind(std::net::SocketAddr::new(any, port))?;
        socket.listen(1024)?.into_std()
    };
    let bound = bind(true).or_else(|e| match e.raw_os_error() {
        // No IPv6 on this board (disabled in the kernel or on the command line).
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL) => bind(false),
        _ => Err(e),
    });
    bound.with_context(|| format!("listening on port {port} for Ingress"))
}

/// Accepts connections until aborted; each is served on its own task (which outlives an
/// abort of the listener: open connections are never cut by a change).
async fn accept(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    proxy: Arc<proxy::Proxy>,
    slots: Arc<tokio::sync::Semaphore>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "accepting an Ingress connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many Ingress connections: one refused");
            continue;
        };
        let local_port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY on an Ingress connection");
        }
        let (tls, proxy) = (tls.clone(), proxy.clone());
        tokio::spawn(async move {
            let _slot = slot;
            // An IPv4 client of the dual-stack socket is `::ffff:a.b.c.d`: seen as the IPv4
            // address it is (allow-lists, X-Forwarded-For).
            let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
            let conn = proxy::ConnInfo { peer, local_port, tls: tls.is_some() };
            let service = service_fn(move |req| proxy.clone().handle(req, conn));
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).max_buf_size(proxy::MAX_BUF);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_PING_EVERY)
                .keep_alive_timeout(H2_PING_TIMEOUT);
            let served = match tls {
                Some(acceptor) => {
                    let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else {
                        return;
                    };
                    // ALPN has said which protocol: no sniffing (which waits without a timer).
                    let builder = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        builder.http2_only()
                    } else {
                        builder.http1_only()
                    };
                    builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await
                }
                None => {
                    // The protocol sniffing waits for bytes without a timer: a client that
                    // sends nothing is closed after the header timeout.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(HEADER_TIMEOUT, tcp.peek(&mut first)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    }
                    builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "an Ingress connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_listener_takes_ipv4_and_ipv6_clients() {
        let std = bind_shared(0).unwrap();
        let port = std.local_addr().unwrap().port();
        let listener = TcpListener::from_std(std).unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0").is_ok();
        for (addr, is_v6) in [("127.0.0.1", false), ("::1", true)] {
            if is_v6 && !v6 {
                continue; // no IPv6 on this machine: the IPv4 fallback was bound
            }
            let ip: std::net::IpAddr = addr.parse().unwrap();
            let _client = tokio::net::TcpStream::connect((ip, port)).await.unwrap();
            let (_, peer) = listener.accept().await.unwrap();
            // What the proxy sees of an IPv4 client: its IPv4 address, not `::ffff:`.
            assert_eq!(peer.ip().to_canonical(), ip);
        }
    }
}
