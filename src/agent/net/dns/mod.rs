//! The node's embedded cluster DNS server: what CoreDNS with the `kubernetes` and
//! `forward` plugins does for a cluster, in-process, so a node needs no DNS pod.
//!
//! - `zone`: the records of the cluster zone (Services, their endpoints, pods, PTRs),
//!   built from the node's watch caches by the caller and handed in as `Arc<Zone>`
//!   snapshots through a `watch` channel;
//! - `forward`: names outside the zone go to the node's upstream resolvers, with a cache;
//! - this file: the wire side (parse the query, decide, encode, truncate for UDP) and the
//!   UDP and TCP listeners.
//!
//! Calls only `hickory-proto` (wire format) and tokio; called by the agent, which builds
//! the [`Zone`] from its Service and EndpointSlice caches and runs [`serve`].
//! Hostile input: malformed UDP datagrams are dropped and malformed TCP messages close
//! the connection; concurrent forwards and TCP connections are bounded.

mod forward;
mod zone;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, info, warn};

pub use forward::upstreams;
use forward::{Forwarder, our_edns};
use zone::Lookup;
pub use zone::Zone;

/// The EDNS payload size we advertise and the most we send over UDP (the DNS flag day
/// 2020 value: fits any path's MTU without fragmentation).
const EDNS_PAYLOAD_BYTES: u16 = 1232;
/// A DNS message without EDNS is at most this long over UDP (RFC 1035).
const CLASSIC_UDP_BYTES: usize = 512;
/// Largest UDP query we read; longer datagrams are cut and then fail to parse.
const UDP_RECV_BYTES: usize = 4096;
/// Forwarded UDP queries waiting for an upstream at once; beyond, clients get SERVFAIL.
const MAX_UDP_FORWARDS: usize = 1024;
/// Encoded UDP answers kept per zone snapshot; past this the cache starts over (a client
/// asking ever-new names cannot make it grow).
const MAX_CACHED_ANSWERS: usize = 2048;
/// TCP clients served at once; beyond, new connections are closed.
const MAX_TCP_CONNECTIONS: usize = 256;
/// A TCP connection with no complete query for this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers one query message (wire bytes) from the zone, or says it must be forwarded.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The response to send back (not truncated for UDP: see [`answer`]).
    Local(Vec<u8>),
    /// The name is outside the zone (and not a PTR of ours): ask the upstreams.
    Forward,
    /// Not a query we can answer at all (unparseable, or a response): send nothing, as
    /// answering garbage would let anyone bounce packets off us.
    Drop,
}

/// The transport a query came over, which bounds the response's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// What to do with one received message.
enum Decision {
    /// Send these bytes.
    Local(Vec<u8>),
    /// Resolve upstream, then encode within `limit` bytes.
    Forward {
        query: Message,
        limit: usize,
    },
    Drop,
}

/// Answers one query from `zone` as it would be answered over TCP (no truncation below
/// 64 KiB); the UDP server also truncates to the client's EDNS size.
pub fn answer(zone: &Zone, query: &[u8]) -> Answer {
    match respond(zone, query, Transport::Tcp) {
        Decision::Local(wire) => Answer::Local(wire),
        Decision::Forward { .. } => Answer::Forward,
        Decision::Drop => Answer::Drop,
    }
}

/// A response carrying only a header: for queries we refuse before parsing them whole.
fn header_only(query: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let mut wire = vec![0u8; 12];
    wire[..2].copy_from_slice(&query[..2]);
    // QR, the query's opcode and RD; RA; the rcode's low bits.
    wire[2] = 0x80 | (query[2] & 0x79);
    wire[3] = 0x80 | (u16::from(rcode) & 0x0f) as u8;
    wire
}

/// The UDP size limit the client asked for (512 without EDNS), within what we send.
fn udp_limit(query: &Message) -> usize {
    query.edns.as_ref().map_or(CLASSIC_UDP_BYTES, |edns| usize::from(edns.max_payload().clamp(512, EDNS_PAYLOAD_BYTES)))
}

/// A response to `query` with its id, opcode, question and (if it used EDNS) our OPT.
fn response_to(query: &Message, rcode: ResponseCode) -> Message {
    let mut resp = Message::response(query.id, query.op_code);
    resp.metadata.recursion_desired = query.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.response_code = rcode;
    resp.queries = query.queries.clone();
    resp.edns = query.edns.as_ref().map(|_| our_edns(false));
    resp
}

/// SERVFAIL for `query`: the upstreams could not be asked or did not answer.
fn server_failure(query: &Message) -> Message {
    response_to(query, ResponseCode::ServFail)
}

/// Encodes `resp` in at most `limit` bytes: if it is longer, the question alone with TC
/// set, so the client asks again over TCP.
fn encode(resp: &Message, limit: usize) -> Vec<u8> {
    let wire = match resp.to_vec() {
        Ok(wire) if wire.len() <= limit => return wire,
        Ok(_) => resp.truncate().to_vec(),
        Err(e) => {
            warn!(error = %e, "cannot encode a DNS response; answering SERVFAIL");
            server_failure(resp).to_vec()
        }
    };
    match wire {
        Ok(wire) if wire.len() <= limit => wire,
        other => {
            if let Err(e) = other {
                warn!(error = %e, "cannot encode a truncated DNS response");
            }
            // Header only: cannot fail and always fits.
            let mut head = [0u8; 12];
            head[..2].copy_from_slice(&resp.id.to_be_bytes());
            header_only(&head, ResponseCode::ServFail)
        }
    }
}

/// The whole decision for one received message.
fn respond(zone: &Zone, bytes: &[u8], transport: Transport) -> Decision {
    // Look at the header before parsing: responses are never answered (no loops between
    // servers), and refusals need no question.
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        return Decision::Drop;
    }
    let opcode = (bytes[2] >> 3) & 0x0f;
    if opcode != u8::from(OpCode::Query) {
        return Decision::Local(header_only(bytes, ResponseCode::NotImp));
    }
    let qdcount = u16::from_be_bytes([bytes[4], bytes[5]]);
    if qdcount != 1 {
        return Decision::Local(header_only(bytes, ResponseCode::FormErr));
    }
    let query = match Message::from_vec(bytes) {
        Ok(query) if query.message_type == MessageType::Query && query.queries.len() == 1 => query,
        Ok(_) => return Decision::Drop,
        Err(e) => {
            debug!(error = %e, "dropping a malformed DNS query");
            return Decision::Drop;
        }
    };
    let limit = match transport {
        Transport::Udp => udp_limit(&query),
        Transport::Tcp => usize::from(u16::MAX),
    };
    if query.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return Decision::Local(encode(&response_to(&query, ResponseCode::BADVERS), limit));
    }

    let question = &query.queries[0];
    if matches!(question.query_type, RecordType::AXFR | RecordType::IXFR) {
        // No zone transfers: ours is computed, and relaying an upstream's is no job of a
        // node's resolver.
        return Decision::Local(encode(&response_to(&query, ResponseCode::Refused), limit));
    }
    let lookup = zone.lookup(&question.name, question.query_type, question.query_class);
    let resp = match lookup {
        Lookup::Forward => return Decision::Forward { query, limit },
        Lookup::Refuse(rcode) => response_to(&query, rcode),
        Lookup::Answer { answers, additionals } => {
            let mut resp = response_to(&query, ResponseCode::NoError);
            resp.metadata.authoritative = true;
            resp.answers = answers;
            resp.additionals = additionals;
            resp
        }
        Lookup::NoData { soa } => {
            let mut resp = response_to(&query, ResponseCode::NoError);
            resp.metadata.authoritative = true;
            resp.authorities = vec![soa];
            resp
        }
        Lookup::NxDomain { soa } => {
            let mut resp = response_to(&query, ResponseCode::NXDomain);
            resp.metadata.authoritative = true;
            resp.authorities = vec![soa];
            resp
        }
    };
    Decision::Local(encode(&resp, limit))
}

/// The UDP answers already encoded from one zone snapshot. An answer depends only on the
/// zone and the query's bytes after its ID (the question's case, EDNS and its size
/// included), so a repeated query is answered by copying bytes and patching the ID:
/// parsing and encoding cost several times what the lookup does, and pods ask the same
/// few names over and over (a resolver's search list makes it five per lookup).
#[derive(Default)]
struct AnswerCache {
    zone: Weak<Zone>,
    answers: HashMap<Box<[u8]>, Box<[u8]>>,
}

impl AnswerCache {
    /// What to do with `bytes` received over UDP, answered from `zone`.
    fn respond(&mut self, zone: &Arc<Zone>, bytes: &[u8]) -> Decision {
        // The weak handle keeps the old snapshot's allocation, so its address cannot be
        // reused by a newer one while we compare.
        if !std::ptr::eq(self.zone.as_ptr(), Arc::as_ptr(zone)) {
            self.zone = Arc::downgrade(zone);
            self.answers.clear();
        }
        if bytes.len() < 12 {
            return Decision::Drop;
        }
        if let Some(cached) = self.answers.get(&bytes[2..]) {
            let mut wire = cached.to_vec();
            wire[..2].copy_from_slice(&bytes[..2]);
            return Decision::Local(wire);
        }
        let decision = respond(zone, bytes, Transport::Udp);
        if let Decision::Local(wire) = &decision
            && wire.len() >= 12
        {
            if self.answers.len() >= MAX_CACHED_ANSWERS {
                self.answers.clear();
            }
            self.answers.insert(bytes[2..].into(), wire.as_slice().into());
        }
        decision
    }
}

/// The sockets DNS is served on, bound before serving so that a port already in use is
/// reported to the caller at once.
#[derive(Debug)]
pub struct Listeners {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl Listeners {
    /// The address both sockets listen on (useful after binding port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.udp.local_addr().context("reading the DNS socket's address")
    }
}

/// Binds UDP and TCP on `addr`. With port 0 both get the same port the kernel picks
/// for UDP (retried a few times if TCP has that port taken).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<Listeners> {
    let attempts = if addr.port() == 0 { 16 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(addr).await.with_context(|| format!("binding DNS on UDP {addr}"))?;
        let bound = udp.local_addr().context("reading the DNS UDP socket's address")?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok(Listeners { udp, tcp }),
            Err(e) => last_error = Some(e),
        }
    }
    let error = last_error.map_or_else(|| anyhow::anyhow!("no attempt made"), anyhow::Error::from);
    Err(error.context(format!("binding DNS on TCP {addr}")))
}

/// Serves DNS on `listeners` (UDP and TCP) until the task is dropped, answering from the
/// latest zone in `zone` and forwarding the rest to `upstreams`. Dropping the future
/// stops every connection and forward it started.
pub async fn serve(listeners: Listeners, zone: watch::Receiver<Arc<Zone>>, upstreams: Vec<SocketAddr>) {
    let addr = listeners.udp.local_addr().ok();
    info!(?addr, ?upstreams, "serving cluster DNS");
    if upstreams.is_empty() {
        warn!("no upstream resolvers; names outside the cluster will get SERVFAIL");
    }
    let udp = Arc::new(listeners.udp);
    let tcp = listeners.tcp;
    let forwarder = Arc::new(Forwarder::new(upstreams));
    let udp_forwards = Arc::new(Semaphore::new(MAX_UDP_FORWARDS));
    let tcp_connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; UDP_RECV_BYTES];
    let mut cache = AnswerCache::default();

    loop {
        tokio::select! {
            received = udp.recv_from(&mut buf) => {
                let (len, peer) = match received {
                    Ok(received) => received,
                    Err(e) => {
                        // ICMP errors of earlier sends land here; the socket still works.
                        debug!(error = %e, "receiving a DNS datagram");
                        continue;
                    }
                };
                let current = zone.borrow().clone();
                match cache.respond(&current, &buf[..len]) {
                    Decision::Local(wire) => {
                        if let Err(e) = udp.send_to(&wire, peer).await {
                            debug!(%peer, error = %e, "sending a DNS answer");
                        }
                    }
                    Decision::Forward { query, limit } => {
                        let Ok(permit) = udp_forwards.clone().try_acquire_owned() else {
                            debug!(%peer, "too many forwarded queries in flight; SERVFAIL");
                            let wire = encode(&server_failure(&query), limit);
                            if let Err(e) = udp.send_to(&wire, peer).await {
                                debug!(%peer, error = %e, "sending a DNS answer");
                            }
                            continue;
                        };
                        let (udp, forwarder) = (udp.clone(), forwarder.clone());
                        tasks.spawn(async move {
                            let resp = forwarder.resolve(&query).await;
                            if let Err(e) = udp.send_to(&encode(&resp, limit), peer).await {
                                debug!(%peer, error = %e, "sending a forwarded DNS answer");
                            }
                            drop(permit);
                        });
                    }
                    Decision::Drop => {}
                }
            }
            accepted = tcp.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, typically: wait instead of spinning.
                        warn!(error = %e, "accepting a DNS TCP connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = tcp_connections.clone().try_acquire_owned() else {
                    debug!(%peer, "too many DNS TCP connections; closing the new one");
                    continue;
                };
                let (zone, forwarder) = (zone.clone(), forwarder.clone());
                tasks.spawn(async move {
                    if let Err(e) = serve_tcp(stream, zone, &forwarder).await {
                        debug!(%peer, error = format!("{e:#}"), "DNS TCP connection closed");
                    }
                    drop(permit);
                });
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    warn!(error = %e, "a DNS task panicked");
                }
            }
        }
    }
}

/// One TCP client: length-prefixed queries answered in order until it closes, sends
/// something malformed or stays idle.
async fn serve_tcp(
    mut stream: TcpStream,
    zone: watch::Receiver<Arc<Zone>>,
    forwarder: &Forwarder,
) -> anyhow::Result<()> {
    loop {
        let len = match timeout(TCP_IDLE_TIMEOUT, stream.read_u16()).await {
            Err(_) => anyhow::bail!("idle"),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(read) => read.context("reading a query's length")?,
        };
        let mut query = vec![0u8; usize::from(len)];
        timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut query))
            .await
            .context("timed out reading a query")?
            .context("reading a query")?;
        let current = zone.borrow().clone();
        let wire = match respond(&current, &query, Transport::Tcp) {
            Decision::Local(wire) => wire,
            Decision::Forward { query, limit } => encode(&forwarder.resolve(&query).await, limit),
            Decision::Drop => anyhow::bail!("malformed query"),
        };
        let len = u16::try_from(wire.len()).context("answer too long for TCP")?;
        let mut framed = Vec::with_capacity(wire.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&wire);
        timeout(TCP_IDLE_TIMEOUT, stream.write_all(&framed))
            .await
            .context("timed out writing an answer")?
            .context("writing an answer")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hickory_proto::op::{Edns, Query};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{DNSClass, Name, RData, Record};
    use serde_json::{Value, json};

    const ZONE: &str = "cluster.local";

    fn service(ns: &str, name: &str, spec: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
    }

    fn slice(ns: &str, svc: &str, name: &str, ports: Value, endpoints: Value) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
        }))
    }

    fn fixture() -> Zone {
        let services = vec![
            service(
                "default",
                "web",
                json!({"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"},
                          {"port": 8080, "protocol": "TCP"}]}),
            ),
            service("default", "db", json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]})),
            service("default", "empty", json!({"clusterIP": "None", "ports": [{"name": "x", "port": 1}]})),
            service("default", "pending", json!({"clusterIP": "None", "publishNotReadyAddresses": true})),
            service("default", "ext", json!({"type": "ExternalName", "externalName": "Example.com."})),
            service("other", "alias", json!({"type": "ExternalName", "externalName": "web.default.svc.cluster.local"})),
            service("default", "dual", json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00::20"]})),
        ];
        let slices = vec![
            slice(
                "default",
                "web",
                "web-abc",
                json!([{"name": "http", "port": 8000, "protocol": "TCP"}]),
                json!([
                    {"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                    {"addresses": ["10.244.1.6"], "conditions": {"ready": false}},
                ]),
            ),
            slice(
                "default",
                "db",
                "db-abc",
                json!([{"name": "pg", "port": 5432, "protocol": "TCP"}]),
                json!([
                    {"addresses": ["10.244.2.1"], "hostname": "db-0", "conditions": {"ready": true}},
                    {"addresses": ["10.244.2.2"], "hostname": "db-1", "conditions": {"ready": true}},
                    {"addresses": ["10.244.2.3"], "hostname": "db-2", "conditions": {"ready": false}},
                    {"addresses": ["10.244.2.4"]},
                ]),
            ),
            slice(
                "default",
                "empty",
                "empty-abc",
                json!([{"name": "x", "port": 1}]),
                json!([
                    {"addresses": ["10.244.4.1"], "conditions": {"ready": false}},
                ]),
            ),
            slice(
                "default",
                "pending",
                "pending-abc",
                json!([]),
                json!([
                    {"addresses": ["10.244.3.1"], "conditions": {"ready": false}},
                ]),
            ),
            // A slice of a service that does not exist makes no records.
            slice("default", "ghost", "ghost-abc", json!([]), json!([{"addresses": ["10.244.9.9"]}])),
        ];
        Zone::build(ZONE, &services, &slices)
    }

    fn query_with(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut msg = Message::new(0x4242, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            msg.set_edns(e);
        }
        msg.to_vec().unwrap()
    }

    fn query(name: &str, rtype: RecordType) -> Vec<u8> {
        query_with(name, rtype, None)
    }

    fn ask(zone: &Zone, name: &str, rtype: RecordType) -> Message {
        match answer(zone, &query(name, rtype)) {
            Answer::Local(wire) => Message::from_vec(&wire).unwrap(),
            other => panic!("{name} {rtype}: expected a local answer, got {other:?}"),
        }
    }

    fn show(records: &[Record]) -> Vec<String> {
        let mut out: Vec<String> =
            records.iter().map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data)).collect();
        out.sort();
        out
    }

    #[test]
    fn answers_the_zone_as_coredns_does() {
        use RecordType::*;
        use ResponseCode::{NXDomain, NoError};
        let zone = fixture();
        #[rustfmt::skip]
        let table: Vec<(&str, RecordType, ResponseCode, Vec<&str>)> = vec![
            // ClusterIP service.
            ("web.default.svc.cluster.local.", A, NoError, vec!["web.default.svc.cluster.local. 5 A 10.96.0.10"]),
            ("web.default.svc.cluster.local.", AAAA, NoError, vec![]),
            ("nope.default.svc.cluster.local.", A, NXDomain, vec![]),
            ("_http._tcp.web.default.svc.cluster.local.", SRV, NoError,
                vec!["_http._tcp.web.default.svc.cluster.local. 5 SRV 0 100 80 web.default.svc.cluster.local."]),
            ("_dns._udp.web.default.svc.cluster.local.", SRV, NoError,
                vec!["_dns._udp.web.default.svc.cluster.local. 5 SRV 0 100 53 web.default.svc.cluster.local."]),
            ("_http._udp.web.default.svc.cluster.local.", SRV, NXDomain, vec![]),
            ("_tcp.web.default.svc.cluster.local.", SRV, NoError, vec![]),
            // The ready endpoint of a ClusterIP service answers under it; the unready one does not.
            ("10-244-1-5.web.default.svc.cluster.local.", A, NoError, vec!["10-244-1-5.web.default.svc.cluster.local. 5 A 10.244.1.5"]),
            ("10-244-1-6.web.default.svc.cluster.local.", A, NXDomain, vec![]),
            // Headless: one A per ready endpoint.
            ("db.default.svc.cluster.local.", A, NoError, vec![
                "db.default.svc.cluster.local. 5 A 10.244.2.1", "db.default.svc.cluster.local. 5 A 10.244.2.2",
                "db.default.svc.cluster.local. 5 A 10.244.2.4"]),
            ("db-0.db.default.svc.cluster.local.", A, NoError, vec!["db-0.db.default.svc.cluster.local. 5 A 10.244.2.1"]),
            ("db-2.db.default.svc.cluster.local.", A, NXDomain, vec![]),
            ("10-244-2-4.db.default.svc.cluster.local.", A, NoError, vec!["10-244-2-4.db.default.svc.cluster.local. 5 A 10.244.2.4"]),
            ("_pg._tcp.db.default.svc.cluster.local.", SRV, NoError, vec![
                "_pg._tcp.db.default.svc.cluster.local. 5 SRV 0 33 5432 10-244-2-4.db.default.svc.cluster.local.",
                "_pg._tcp.db.default.svc.cluster.local. 5 SRV 0 33 5432 db-0.db.default.svc.cluster.local.",
                "_pg._tcp.db.default.svc.cluster.local. 5 SRV 0 33 5432 db-1.db.default.svc.cluster.local."]),
            // Headless without a ready endpoint does not exist; publishNotReadyAddresses publishes all.
            ("empty.default.svc.cluster.local.", A, NXDomain, vec![]),
            ("_x._tcp.empty.default.svc.cluster.local.", SRV, NXDomain, vec![]),
            ("pending.default.svc.cluster.local.", A, NoError, vec!["pending.default.svc.cluster.local. 5 A 10.244.3.1"]),
            // ExternalName: the alias, chased only inside the zone.
            ("ext.default.svc.cluster.local.", A, NoError, vec!["ext.default.svc.cluster.local. 5 CNAME example.com."]),
            ("ext.default.svc.cluster.local.", CNAME, NoError, vec!["ext.default.svc.cluster.local. 5 CNAME example.com."]),
            ("alias.other.svc.cluster.local.", A, NoError, vec![
                "alias.other.svc.cluster.local. 5 CNAME web.default.svc.cluster.local.",
                "web.default.svc.cluster.local. 5 A 10.96.0.10"]),
            // Dual-stack service.
            ("dual.default.svc.cluster.local.", A, NoError, vec!["dual.default.svc.cluster.local. 5 A 10.96.0.20"]),
            ("dual.default.svc.cluster.local.", AAAA, NoError, vec!["dual.default.svc.cluster.local. 5 AAAA fd00::20"]),
            // PTR of cluster IPs and endpoints.
            ("10.0.96.10.in-addr.arpa.", PTR, NoError, vec!["10.0.96.10.in-addr.arpa. 5 PTR web.default.svc.cluster.local."]),
            ("1.2.244.10.in-addr.arpa.", PTR, NoError, vec!["1.2.244.10.in-addr.arpa. 5 PTR db-0.db.default.svc.cluster.local."]),
            ("4.2.244.10.in-addr.arpa.", PTR, NoError, vec!["4.2.244.10.in-addr.arpa. 5 PTR 10-244-2-4.db.default.svc.cluster.local."]),
            ("5.1.244.10.in-addr.arpa.", PTR, NoError, vec!["5.1.244.10.in-addr.arpa. 5 PTR 10-244-1-5.web.default.svc.cluster.local."]),
            ("10.0.96.10.in-addr.arpa.", A, NoError, vec![]),
            ("0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", PTR, NoError,
                vec!["0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa. 5 PTR dual.default.svc.cluster.local."]),
            // Pods (`pods insecure`).
            ("10-244-1-7.default.pod.cluster.local.", A, NoError, vec!["10-244-1-7.default.pod.cluster.local. 5 A 10.244.1.7"]),
            ("10-244-1-7.any.pod.cluster.local.", AAAA, NoError, vec![]),
            ("fd00--7.default.pod.cluster.local.", AAAA, NoError, vec!["fd00--7.default.pod.cluster.local. 5 AAAA fd00::7"]),
            ("10-244-1-999.default.pod.cluster.local.", A, NXDomain, vec![]),
            ("not-an-ip.default.pod.cluster.local.", A, NXDomain, vec![]),
            ("a.10-244-1-7.default.pod.cluster.local.", A, NXDomain, vec![]),
            // Schema version, apex, empty non-terminals, search-path misses.
            ("dns-version.cluster.local.", TXT, NoError, vec!["dns-version.cluster.local. 5 TXT 1.1.0"]),
            ("dns-version.cluster.local.", A, NoError, vec![]),
            ("cluster.local.", A, NoError, vec![]),
            ("svc.cluster.local.", A, NoError, vec![]),
            ("default.svc.cluster.local.", A, NoError, vec![]),
            ("nons.svc.cluster.local.", A, NXDomain, vec![]),
            ("example.com.default.svc.cluster.local.", A, NXDomain, vec![]),
            ("web.default.cluster.local.", A, NXDomain, vec![]),
        ];
        for (name, rtype, rcode, expected) in table {
            let resp = ask(&zone, name, rtype);
            assert_eq!(resp.response_code, rcode, "{name} {rtype}");
            assert_eq!(show(&resp.answers), expected, "{name} {rtype}");
            assert!(resp.authoritative, "{name} {rtype}: authoritative");
            assert_eq!(resp.id, 0x4242);
            assert_eq!(resp.queries.len(), 1);
            if expected.is_empty() {
                // Negative answers carry the zone's SOA (RFC 2308), as CoreDNS's.
                assert_eq!(resp.authorities.len(), 1, "{name} {rtype}: SOA in authority");
                let RData::SOA(soa) = &resp.authorities[0].data else {
                    panic!("{name} {rtype}: not an SOA: {:?}", resp.authorities[0]);
                };
                if name.ends_with(".cluster.local.") || name == "cluster.local." {
                    assert_eq!(resp.authorities[0].name.to_ascii(), "cluster.local.");
                }
                assert_eq!(soa.mname.to_ascii(), "ns.dns.cluster.local.");
                assert_eq!(soa.rname.to_ascii(), "hostmaster.cluster.local.");
                assert_eq!(resp.authorities[0].ttl, 5);
            }
        }
    }

    #[test]
    fn apex_soa_is_answered() {
        let resp = ask(&fixture(), "cluster.local.", RecordType::SOA);
        assert_eq!(resp.response_code, ResponseCode::NoError);
        assert_eq!(resp.answers.len(), 1);
        assert_eq!(resp.answers[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn matching_ignores_case_and_echoes_the_question() {
        let zone = fixture();
        let name = "WEB.Default.SVC.cluster.LOCAL.";
        let resp = ask(&zone, name, RecordType::A);
        assert_eq!(resp.response_code, ResponseCode::NoError);
        assert_eq!(resp.queries[0].name.to_ascii(), name, "question echoed as asked");
        assert_eq!(resp.answers[0].name.to_ascii(), name, "answer owned by the name as asked");
        let resp = ask(&zone, "_HTTP._Tcp.web.DEFAULT.svc.cluster.local.", RecordType::SRV);
        assert_eq!(resp.answers.len(), 1);
        let resp = ask(&zone, "10-244-1-7.Default.POD.cluster.local.", RecordType::A);
        assert_eq!(resp.answers.len(), 1);
    }

    #[test]
    fn srv_answers_carry_the_targets_addresses() {
        let zone = fixture();
        let resp = ask(&zone, "_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV);
        assert_eq!(
            show(&resp.additionals),
            vec![
                "10-244-2-4.db.default.svc.cluster.local. 5 A 10.244.2.4",
                "db-0.db.default.svc.cluster.local. 5 A 10.244.2.1",
                "db-1.db.default.svc.cluster.local. 5 A 10.244.2.2",
            ]
        );
        let resp = ask(&zone, "_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
        assert_eq!(show(&resp.additionals), vec!["web.default.svc.cluster.local. 5 A 10.96.0.10"]);
    }

    #[test]
    fn outside_names_are_forwarded() {
        let zone = fixture();
        for (name, rtype) in [
            ("example.com.", RecordType::A),
            ("local.", RecordType::A),
            ("cluster.local.example.", RecordType::A),
            ("8.8.8.8.in-addr.arpa.", RecordType::PTR),
            ("0.96.10.in-addr.arpa.", RecordType::PTR),
        ] {
            assert_eq!(answer(&zone, &query(name, rtype)), Answer::Forward, "{name}");
        }
    }

    #[test]
    fn other_classes_and_transfers_are_refused_in_the_zone() {
        let zone = fixture();
        let mut msg = Message::new(1, MessageType::Query, OpCode::Query);
        let mut q = Query::query(Name::from_ascii("web.default.svc.cluster.local.").unwrap(), RecordType::A);
        q.set_query_class(DNSClass::CH);
        msg.add_query(q);
        let Answer::Local(wire) = answer(&zone, &msg.to_vec().unwrap()) else {
            panic!("refusal expected");
        };
        assert_eq!(Message::from_vec(&wire).unwrap().response_code, ResponseCode::Refused);
        for name in ["cluster.local.", "example.com."] {
            let resp = ask(&zone, name, RecordType::AXFR);
            assert_eq!(resp.response_code, ResponseCode::Refused, "{name}");
        }
    }

    #[test]
    fn edns_is_echoed_and_udp_answers_are_truncated() {
        // A headless service with 100 endpoints: ~1.6 KB of A records.
        let endpoints: Vec<Value> = (1..=100).map(|i| json!({"addresses": [format!("10.1.0.{i}")]})).collect();
        let zone = Zone::build(
            ZONE,
            &[service("default", "big", json!({"clusterIP": "None"}))],
            &[slice("default", "big", "big-1", json!([]), Value::Array(endpoints))],
        );
        let name = "big.default.svc.cluster.local.";

        let Decision::Local(wire) = respond(&zone, &query(name, RecordType::A), Transport::Udp) else {
            panic!("local answer expected");
        };
        assert!(wire.len() <= 512);
        let resp = Message::from_vec(&wire).unwrap();
        assert!(resp.truncation, "TC set without EDNS");
        assert!(resp.answers.is_empty());
        assert_eq!(resp.queries.len(), 1);

        let Decision::Local(wire) = respond(&zone, &query_with(name, RecordType::A, Some(4096)), Transport::Udp) else {
            panic!("local answer expected");
        };
        assert!(wire.len() <= usize::from(EDNS_PAYLOAD_BYTES));
        let resp = Message::from_vec(&wire).unwrap();
        assert!(resp.truncation, "1.6 KB does not fit in 1232 either");
        assert!(resp.edns.is_some(), "OPT echoed");

        let Decision::Local(wire) = respond(&zone, &query(name, RecordType::A), Transport::Tcp) else {
            panic!("local answer expected");
        };
        let resp = Message::from_vec(&wire).unwrap();
        assert!(!resp.truncation);
        assert_eq!(resp.answers.len(), 100);
        assert!(resp.edns.is_none(), "no OPT for a client without EDNS");

        let Decision::Local(wire) = respond(
            &fixture(),
            &query_with("web.default.svc.cluster.local.", RecordType::A, Some(1232)),
            Transport::Udp,
        ) else {
            panic!("local answer expected");
        };
        let resp = Message::from_vec(&wire).unwrap();
        assert!(!resp.truncation);
        assert_eq!(resp.edns.map(|e| e.max_payload()), Some(EDNS_PAYLOAD_BYTES));
    }

    /// Hand-made packets a hostile client might send.
    #[test]
    fn hostile_input_never_panics() {
        let zone = fixture();
        let good = query("web.default.svc.cluster.local.", RecordType::A);

        // Every truncation of a valid query: dropped or answered, never a panic.
        for len in 0..good.len() {
            let _ = answer(&zone, &good[..len]); // only checking it returns
        }
        assert_eq!(answer(&zone, &good[..11]), Answer::Drop);
        assert_eq!(answer(&zone, &good[..good.len() - 1]), Answer::Drop);

        // A response is never answered.
        let mut response = good.clone();
        response[2] |= 0x80;
        assert_eq!(answer(&zone, &response), Answer::Drop);

        // QDCOUNT 0 and 2: FORMERR.
        for qdcount in [0u8, 2] {
            let mut bad = good.clone();
            bad[5] = qdcount;
            let Answer::Local(wire) = answer(&zone, &bad) else {
                panic!("FORMERR expected for QDCOUNT {qdcount}");
            };
            let resp = Message::from_vec(&wire).unwrap();
            assert_eq!(resp.response_code, ResponseCode::FormErr);
            assert_eq!(resp.id, 0x4242);
        }
        // Two real questions: FORMERR too.
        let mut two = Message::new(9, MessageType::Query, OpCode::Query);
        two.add_query(Query::query(Name::from_ascii("a.cluster.local.").unwrap(), RecordType::A));
        two.add_query(Query::query(Name::from_ascii("b.cluster.local.").unwrap(), RecordType::A));
        let Answer::Local(wire) = answer(&zone, &two.to_vec().unwrap()) else {
            panic!("FORMERR expected");
        };
        assert_eq!(Message::from_vec(&wire).unwrap().response_code, ResponseCode::FormErr);

        // Another opcode: NOTIMP.
        let mut notify = good.clone();
        notify[2] = (notify[2] & 0x87) | (4 << 3);
        let Answer::Local(wire) = answer(&zone, &notify) else {
            panic!("NOTIMP expected");
        };
        let resp = Message::from_vec(&wire).unwrap();
        assert_eq!(resp.response_code, ResponseCode::NotImp);
        assert_eq!(resp.op_code, OpCode::Notify);

        // Huge label counts: 200 one-byte labels exceed 255 bytes.
        let mut huge = good[..12].to_vec();
        for _ in 0..200 {
            huge.extend_from_slice(&[1, b'a']);
        }
        huge.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(answer(&zone, &huge), Answer::Drop);

        // A 63-byte-label name of 4 labels (> 255 bytes) and a 64-byte label.
        let mut long = good[..12].to_vec();
        for _ in 0..4 {
            long.push(63);
            long.extend_from_slice(&[b'x'; 63]);
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(answer(&zone, &long), Answer::Drop);
        let mut wide = good[..12].to_vec();
        wide.push(64);
        wide.extend_from_slice(&[b'x'; 64]);
        wide.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(answer(&zone, &wide), Answer::Drop);

        // Compression pointer loops: to itself, and two pointing at each other.
        let mut self_loop = good[..12].to_vec();
        self_loop.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(answer(&zone, &self_loop), Answer::Drop);
        let mut pair = good[..12].to_vec();
        pair.extend_from_slice(&[1, b'a', 0xc0, 16, 1, b'b', 0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(answer(&zone, &pair), Answer::Drop);
        // A pointer forward / out of the packet.
        let mut forward_ptr = good[..12].to_vec();
        forward_ptr.extend_from_slice(&[0xff, 0xff, 0, 1, 0, 1]);
        assert_eq!(answer(&zone, &forward_ptr), Answer::Drop);

        // Claimed record counts far beyond the packet.
        let mut counts = good.clone();
        counts[6..12].copy_from_slice(&[0xff; 6]);
        assert_eq!(answer(&zone, &counts), Answer::Drop);

        // Odd labels: a dot inside a label and binary bytes do not alias zone names.
        let mut dotted = good[..12].to_vec();
        for label in [&b"web.default"[..], b"svc", b"cluster", b"local"] {
            dotted.push(label.len() as u8);
            dotted.extend_from_slice(label);
        }
        dotted.extend_from_slice(&[0, 0, 1, 0, 1]);
        let Answer::Local(wire) = answer(&zone, &dotted) else {
            panic!("NXDOMAIN expected");
        };
        assert_eq!(Message::from_vec(&wire).unwrap().response_code, ResponseCode::NXDomain);
        let mut binary = good[..12].to_vec();
        binary.extend_from_slice(&[3, 0xff, 0x00, 0x80, 7]);
        binary.extend_from_slice(b"cluster");
        binary.extend_from_slice(&[5]);
        binary.extend_from_slice(b"local");
        binary.extend_from_slice(&[0, 0, 1, 0, 1]);
        let Answer::Local(wire) = answer(&zone, &binary) else {
            panic!("NXDOMAIN expected");
        };
        assert_eq!(Message::from_vec(&wire).unwrap().response_code, ResponseCode::NXDomain);

        // EDNS version 1: BADVERS.
        let mut msg =
            Message::from_vec(&query_with("web.default.svc.cluster.local.", RecordType::A, Some(1232))).unwrap();
        if let Some(edns) = msg.edns.as_mut() {
            edns.set_version(1);
        }
        let Answer::Local(wire) = answer(&zone, &msg.to_vec().unwrap()) else {
            panic!("BADVERS expected");
        };
        // BADVERS shares code 16 with BADSIG, which is what the parser calls it.
        assert_eq!(u16::from(Message::from_vec(&wire).unwrap().response_code), 16);

        // Random garbage of many lengths.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..600 {
            let packet: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = answer(&zone, &packet); // only checking it returns
        }
    }

    #[test]
    fn a_thousand_services_build_into_one_zone() {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for i in 0..1000 {
            let ns = format!("ns{}", i % 20);
            let name = format!("svc{i}");
            let headless = i % 4 == 0;
            let ip = if headless { "None".to_owned() } else { format!("10.96.{}.{}", i / 250, i % 250) };
            services.push(service(&ns, &name, json!({"clusterIP": ip, "ports": [{"name": "http", "port": 80}]})));
            let eps: Vec<Value> = (0..3)
                .map(|j| json!({"addresses": [format!("10.{}.{}.{}", 100 + j, i / 250, i % 250)], "hostname": format!("{name}-{j}")}))
                .collect();
            slices.push(slice(
                &ns,
                &name,
                &format!("{name}-x"),
                json!([{"name": "http", "port": 8080}]),
                Value::Array(eps),
            ));
        }
        // How long this takes is measured by the network benchmark, not asserted here.
        let zone = Zone::build(ZONE, &services, &slices);
        let resp = ask(&zone, "svc999.ns19.svc.cluster.local.", RecordType::A);
        assert_eq!(show(&resp.answers), vec!["svc999.ns19.svc.cluster.local. 5 A 10.96.3.249"]);
        let resp = ask(&zone, "svc4-2.svc4.ns4.svc.cluster.local.", RecordType::A);
        assert_eq!(show(&resp.answers), vec!["svc4-2.svc4.ns4.svc.cluster.local. 5 A 10.102.0.4"]);
    }

    /// A fake upstream resolver on 127.0.0.1: answers every A question with 192.0.2.1
    /// (TTL 300) and counts the queries it gets. With `truncate_udp`, UDP answers are
    /// empty with TC set and a TCP listener on the same port gives the real answer.
    struct FakeUpstream {
        addr: SocketAddr,
        queries: Arc<AtomicUsize>,
        tasks: JoinSet<()>,
    }

    fn fake_answer(query: &Message, truncated: bool) -> Vec<u8> {
        let mut resp = Message::response(query.id, query.op_code);
        resp.metadata.recursion_desired = query.recursion_desired;
        resp.metadata.recursion_available = true;
        resp.queries = query.queries.clone();
        if truncated {
            resp.metadata.truncation = true;
        } else if query.queries[0].name.to_ascii().starts_with("missing.") {
            resp.metadata.response_code = ResponseCode::NXDomain;
        } else if query.queries[0].name.to_ascii().starts_with("gone.") {
            resp.metadata.response_code = ResponseCode::NXDomain;
            let soa = SOA::new(
                Name::from_ascii("ns.example.").unwrap(),
                Name::from_ascii("hostmaster.example.").unwrap(),
                1,
                7200,
                900,
                86400,
                60,
            );
            resp.add_authority(Record::from_rdata(Name::from_ascii("example.").unwrap(), 60, RData::SOA(soa)));
        } else {
            resp.add_answer(Record::from_rdata(query.queries[0].name.clone(), 300, RData::A(A::new(192, 0, 2, 1))));
        }
        resp.to_vec().unwrap()
    }

    async fn fake_upstream(truncate_udp: bool) -> FakeUpstream {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            match TcpListener::bind(udp.local_addr().unwrap()).await {
                Ok(tcp) => break (udp, tcp),
                Err(_) => continue,
            }
        };
        let addr = udp.local_addr().unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        let counter = queries.clone();
        tasks.spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (len, peer) = udp.recv_from(&mut buf).await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let query = Message::from_vec(&buf[..len]).unwrap();
                udp.send_to(&fake_answer(&query, truncate_udp), peer).await.unwrap();
            }
        });
        let counter = queries.clone();
        tasks.spawn(async move {
            loop {
                let (mut stream, _) = tcp.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let len = stream.read_u16().await.unwrap();
                let mut buf = vec![0u8; usize::from(len)];
                stream.read_exact(&mut buf).await.unwrap();
                let wire = fake_answer(&Message::from_vec(&buf).unwrap(), false);
                stream.write_all(&(wire.len() as u16).to_be_bytes()).await.unwrap();
                stream.write_all(&wire).await.unwrap();
            }
        });
        FakeUpstream { addr, queries, tasks }
    }

    /// Starts `serve` for the fixture zone on 127.0.0.1 and returns its address.
    async fn start_server(upstreams: Vec<SocketAddr>, tasks: &mut JoinSet<()>) -> SocketAddr {
        let (tx, rx) = watch::channel(Arc::new(fixture()));
        let addr = start_server_with(rx, upstreams, tasks).await;
        tasks.spawn(async move {
            // Keeps the zone's sender alive as long as the server runs.
            std::future::pending::<()>().await;
            drop(tx);
        });
        addr
    }

    async fn start_server_with(
        zone: watch::Receiver<Arc<Zone>>,
        upstreams: Vec<SocketAddr>,
        tasks: &mut JoinSet<()>,
    ) -> SocketAddr {
        let listeners = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listeners.local_addr().unwrap();
        tasks.spawn(serve(listeners, zone, upstreams));
        addr
    }

    #[test]
    fn cached_udp_answers_equal_fresh_ones_but_for_the_id() {
        let zone = Arc::new(fixture());
        let mut cache = AnswerCache::default();
        let fresh = |bytes: &[u8]| match respond(&zone, bytes, Transport::Udp) {
            Decision::Local(wire) => wire,
            _ => panic!("a local answer expected"),
        };
        for name in
            ["web.default.svc.cluster.local.", "WeB.DeFault.svc.cluster.local.", "nope.default.svc.cluster.local."]
        {
            let mut q = query(name, RecordType::A);
            for id in [1u16, 0xbeef, 7] {
                q[..2].copy_from_slice(&id.to_be_bytes());
                let Decision::Local(wire) = cache.respond(&zone, &q) else { panic!("a local answer expected") };
                assert_eq!(wire, fresh(&q), "{name} with id {id}");
            }
        }
        assert_eq!(cache.answers.len(), 3, "one entry per distinct question");
        assert!(matches!(cache.respond(&zone, &[0u8; 11]), Decision::Drop));
        // A new snapshot starts the cache over.
        let other = Arc::new(Zone::build(ZONE, &[], &[]));
        let q = query("web.default.svc.cluster.local.", RecordType::A);
        let Decision::Local(wire) = cache.respond(&other, &q) else { panic!("a local answer expected") };
        assert_eq!(Message::from_vec(&wire).unwrap().response_code, ResponseCode::NXDomain);
        assert_eq!(cache.answers.len(), 1);
    }

    #[tokio::test]
    async fn follows_zone_updates() {
        let mut tasks = JoinSet::new();
        let (tx, rx) = watch::channel(Arc::new(Zone::build(ZONE, &[], &[])));
        let server = start_server_with(rx, Vec::new(), &mut tasks).await;
        let name = "web.default.svc.cluster.local.";
        let before = udp_ask(server, &query(name, RecordType::A)).await;
        assert_eq!(before.response_code, ResponseCode::NXDomain);
        tx.send(Arc::new(fixture())).unwrap();
        let after = udp_ask(server, &query(name, RecordType::A)).await;
        assert_eq!(show(&after.answers), vec!["web.default.svc.cluster.local. 5 A 10.96.0.10"]);
    }

    #[tokio::test]
    async fn bind_reports_a_taken_port() {
        let taken = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let err = bind(taken.local_addr().unwrap()).await.unwrap_err();
        assert!(format!("{err:#}").contains("binding DNS on UDP"), "{err:#}");
    }

    async fn udp_ask(server: SocketAddr, wire: &[u8]) -> Message {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(wire, server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (len, _) =
            timeout(Duration::from_secs(5), client.recv_from(&mut buf)).await.expect("no answer within 5 s").unwrap();
        Message::from_vec(&buf[..len]).unwrap()
    }

    fn external_query(id: u16, name: &str) -> Vec<u8> {
        let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        msg.to_vec().unwrap()
    }

    #[tokio::test]
    async fn forwards_over_udp_and_caches() {
        let upstream = fake_upstream(false).await;
        let mut tasks = JoinSet::new();
        let server = start_server(vec![upstream.addr], &mut tasks).await;

        let first = udp_ask(server, &external_query(0x1234, "www.example.com.")).await;
        assert_eq!(first.id, 0x1234, "the client's id restored");
        assert_eq!(first.response_code, ResponseCode::NoError);
        assert_eq!(show(&first.answers), vec!["www.example.com. 300 A 192.0.2.1"]);
        assert!(first.edns.is_none(), "no OPT for a client without EDNS");
        assert_eq!(upstream.queries.load(Ordering::SeqCst), 1);

        let second = udp_ask(server, &external_query(0x5678, "WWW.Example.com.")).await;
        assert_eq!(second.id, 0x5678);
        assert_eq!(second.queries[0].name.to_ascii(), "WWW.Example.com.", "the client's question");
        assert_eq!(second.answers.len(), 1);
        assert!(second.answers[0].ttl <= 300);
        assert_eq!(upstream.queries.load(Ordering::SeqCst), 1, "served from the cache");

        // Negative answers without an SOA are relayed but not cached.
        let missing = udp_ask(server, &external_query(1, "missing.example.com.")).await;
        assert_eq!(missing.response_code, ResponseCode::NXDomain);
        let _again = udp_ask(server, &external_query(2, "missing.example.com.")).await;
        assert_eq!(upstream.queries.load(Ordering::SeqCst), 3);
        // With an SOA they are cached (for min(SOA TTL, minimum), at most 30 s).
        for id in [3, 4] {
            let gone = udp_ask(server, &external_query(id, "gone.example.com.")).await;
            assert_eq!(gone.response_code, ResponseCode::NXDomain);
            assert_eq!(gone.id, id);
            assert_eq!(gone.authorities.len(), 1);
        }
        assert_eq!(upstream.queries.load(Ordering::SeqCst), 4, "second NXDOMAIN from the cache");

        // The cluster zone is answered locally, over the same socket.
        let local = udp_ask(server, &query("web.default.svc.cluster.local.", RecordType::A)).await;
        assert_eq!(show(&local.answers), vec!["web.default.svc.cluster.local. 5 A 10.96.0.10"]);
        assert_eq!(upstream.queries.load(Ordering::SeqCst), 4);
        drop(upstream.tasks);
    }

    #[tokio::test]
    async fn retries_truncated_answers_over_tcp() {
        let upstream = fake_upstream(true).await;
        let mut tasks = JoinSet::new();
        let server = start_server(vec![upstream.addr], &mut tasks).await;
        let resp = udp_ask(server, &external_query(77, "big.example.org.")).await;
        assert_eq!(resp.id, 77);
        assert!(!resp.truncation);
        assert_eq!(show(&resp.answers), vec!["big.example.org. 300 A 192.0.2.1"]);
        assert_eq!(upstream.queries.load(Ordering::SeqCst), 2, "one UDP, one TCP");
    }

    #[tokio::test]
    async fn dead_upstream_then_next_and_none_gives_servfail() {
        // A UDP socket that never answers, then a working upstream.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream = fake_upstream(false).await;
        let mut tasks = JoinSet::new();
        let server = start_server(vec![silent.local_addr().unwrap(), upstream.addr], &mut tasks).await;
        let resp = udp_ask(server, &external_query(5, "slow.example.net.")).await;
        assert_eq!(resp.answers.len(), 1, "answered by the second upstream");

        let server = start_server(Vec::new(), &mut tasks).await;
        let resp = udp_ask(server, &external_query(6, "example.net.")).await;
        assert_eq!(resp.response_code, ResponseCode::ServFail);
        assert_eq!(resp.id, 6);
    }

    #[tokio::test]
    async fn serves_several_queries_per_tcp_connection() {
        let upstream = fake_upstream(false).await;
        let mut tasks = JoinSet::new();
        let server = start_server(vec![upstream.addr], &mut tasks).await;
        let mut stream = TcpStream::connect(server).await.unwrap();
        for wire in [query("db.default.svc.cluster.local.", RecordType::A), external_query(99, "tcp.example.com.")] {
            stream.write_all(&(wire.len() as u16).to_be_bytes()).await.unwrap();
            stream.write_all(&wire).await.unwrap();
        }
        let mut answers = Vec::new();
        for _ in 0..2 {
            let len = timeout(Duration::from_secs(5), stream.read_u16()).await.unwrap().unwrap();
            let mut buf = vec![0u8; usize::from(len)];
            stream.read_exact(&mut buf).await.unwrap();
            answers.push(Message::from_vec(&buf).unwrap());
        }
        assert_eq!(answers[0].answers.len(), 3, "headless service's ready endpoints");
        assert!(!answers[0].truncation);
        assert_eq!(answers[1].id, 99);
        assert_eq!(show(&answers[1].answers), vec!["tcp.example.com. 300 A 192.0.2.1"]);

        // Garbage closes the connection.
        stream.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
        let mut rest = Vec::new();
        let read = timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await.unwrap();
        assert!(read.is_err() || rest.is_empty(), "closed without an answer");
    }
}
