//! Names outside the cluster zone: the node's upstream resolvers (read from resolv.conf as
//! the kubelet does), the exchange with them (UDP with a fresh random id and source port
//! per query, TCP when the answer is truncated), and a bounded cache of their answers so a
//! pod that resolves the same external name in a loop costs no upstream round trip.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;
use tracing::debug;

use super::{EDNS_PAYLOAD_BYTES, server_failure};

/// How long one upstream gets to answer before the next one is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Upper bound of the cache, in entries and in bytes of stored answers.
const CACHE_MAX_ENTRIES: usize = 10_000;
const CACHE_MAX_BYTES: usize = 16 << 20;
/// Larger answers are relayed but not kept (they would crowd out many small ones).
const CACHE_MAX_ENTRY_BYTES: usize = 4096;
/// Longest time an answer is reused, positive and negative (RFC 2308 caps, as CoreDNS).
const CACHE_MAX_TTL: Duration = Duration::from_secs(3600);
const CACHE_MAX_NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// The servers to forward to from a `resolv.conf` (the host's, see
/// `podconf::host_resolv_conf`): its usable `nameserver` addresses on port 53, in order,
/// without duplicates. Loopback addresses are left out because a local stub would send our
/// own forwarded queries back to us; an empty list makes forwarding answer SERVFAIL.
pub fn upstreams(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // A link-local address with `%scope` needs an interface index we do not have.
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        if ip.is_loopback() || ip.is_unspecified() {
            continue;
        }
        let addr = SocketAddr::new(ip, 53);
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// What answers are cached under: the question, plus the DNSSEC OK bit since it changes
/// what the upstream sends. `Name` compares and hashes case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    name: Name,
    rtype: RecordType,
    class: DNSClass,
    dnssec_ok: bool,
}

struct CacheEntry {
    /// The upstream's answer as received.
    wire: Vec<u8>,
    stored: Instant,
    expires: Instant,
    /// Which insertion this is, to tell a live entry from a stale slot in `order`.
    seq: u64,
}

/// Upstream answers by question, bounded in entries and bytes, oldest evicted first.
#[derive(Default)]
struct Cache {
    entries: HashMap<CacheKey, CacheEntry>,
    order: VecDeque<(CacheKey, u64)>,
    bytes: usize,
    next_seq: u64,
}

impl Cache {
    /// A live answer and its age in whole seconds.
    fn get(&mut self, key: &CacheKey, now: Instant) -> Option<(Vec<u8>, u32)> {
        let entry = self.entries.get(key)?;
        if entry.expires <= now {
            self.remove(key);
            return None;
        }
        let age = u32::try_from(now.duration_since(entry.stored).as_secs()).unwrap_or(u32::MAX);
        Some((entry.wire.clone(), age))
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(old) = self.entries.remove(key) {
            self.bytes -= old.wire.len();
        }
    }

    fn insert(&mut self, key: CacheKey, wire: Vec<u8>, ttl: Duration, now: Instant) {
        if wire.len() > CACHE_MAX_ENTRY_BYTES {
            return;
        }
        self.remove(&key);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += wire.len();
        self.order.push_back((key.clone(), seq));
        self.entries.insert(key, CacheEntry { wire, stored: now, expires: now + ttl, seq });
        while self.entries.len() > CACHE_MAX_ENTRIES || self.bytes > CACHE_MAX_BYTES {
            let Some((oldest, oldest_seq)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&oldest).is_some_and(|e| e.seq == oldest_seq) {
                self.remove(&oldest);
            }
        }
        // Re-inserted and expired keys leave stale slots behind; drop them now and then so
        // `order` stays proportional to `entries`.
        if self.order.len() > 2 * CACHE_MAX_ENTRIES {
            let entries = &self.entries;
            self.order.retain(|(k, seq)| entries.get(k).is_some_and(|e| e.seq == *seq));
        }
    }
}

/// How long an upstream answer may be reused, or `None` when it must not be: the minimum
/// TTL of its records for a positive answer, the SOA's negative TTL (RFC 2308) for
/// NXDOMAIN / NODATA, nothing for failures and truncated answers.
fn cache_ttl(resp: &Message) -> Option<Duration> {
    if resp.truncation {
        return None;
    }
    let negative = match resp.response_code {
        ResponseCode::NXDomain => true,
        ResponseCode::NoError => resp.answers.is_empty(),
        _ => return None,
    };
    let ttl = if negative {
        let soa = resp.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })?;
        Duration::from_secs(soa.into()).min(CACHE_MAX_NEGATIVE_TTL)
    } else {
        let min = resp.all_sections().map(|r| r.ttl).min()?;
        Duration::from_secs(min.into()).min(CACHE_MAX_TTL)
    };
    (!ttl.is_zero()).then_some(ttl)
}

/// The OPT record we send: our payload size (the DNS flag day's 1232, no fragmentation).
pub(super) fn our_edns(dnssec_ok: bool) -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD_BYTES);
    edns.flags_mut().dnssec_ok = dnssec_ok;
    edns
}

/// Asks the upstreams and remembers their answers.
pub(super) struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<Cache>,
    rng: SystemRandom,
}

impl Forwarder {
    pub(super) fn new(upstreams: Vec<SocketAddr>) -> Forwarder {
        Forwarder { upstreams, cache: Mutex::new(Cache::default()), rng: SystemRandom::new() }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock leaves at worst a stale entry; keep serving.
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The answer to `query` (one question, already checked by the caller) for the client
    /// that sent it: from the cache, else from the first upstream that answers; SERVFAIL
    /// when none does.
    pub(super) async fn resolve(&self, query: &Message) -> Message {
        let Some(question) = query.queries.first() else {
            return server_failure(query);
        };
        let dnssec_ok = query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let key = CacheKey {
            name: question.name.clone(),
            rtype: question.query_type,
            class: question.query_class,
            dnssec_ok,
        };

        let cached = self.cache().get(&key, Instant::now());
        if let Some((wire, age)) = cached {
            match Message::from_vec(&wire) {
                Ok(resp) => return for_client(resp, query, age),
                Err(e) => {
                    debug!(error = %e, "unreadable cache entry; asking upstream");
                    self.cache().remove(&key);
                }
            }
        }

        let mut failure = None;
        for upstream in &self.upstreams {
            match self.exchange(*upstream, question, dnssec_ok).await {
                Ok((resp, wire)) => {
                    if matches!(resp.response_code, ResponseCode::ServFail | ResponseCode::Refused) {
                        debug!(%upstream, name = %question.name, rcode = %resp.response_code, "upstream failed; trying the next");
                        failure = Some(resp);
                        continue;
                    }
                    if let Some(ttl) = cache_ttl(&resp) {
                        self.cache().insert(key, wire, ttl, Instant::now());
                    }
                    return for_client(resp, query, 0);
                }
                Err(e) => {
                    debug!(%upstream, name = %question.name, error = format!("{e:#}"), "upstream did not answer");
                }
            }
        }
        match failure {
            Some(resp) => for_client(resp, query, 0),
            None => server_failure(query),
        }
    }

    fn random_id(&self) -> anyhow::Result<u16> {
        let mut bytes = [0u8; 2];
        self.rng.fill(&mut bytes).map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
        Ok(u16::from_be_bytes(bytes))
    }

    /// One question to one upstream: UDP, then TCP if the answer was truncated. Returns
    /// the parsed answer and its wire bytes.
    async fn exchange(
        &self,
        upstream: SocketAddr,
        question: &Query,
        dnssec_ok: bool,
    ) -> anyhow::Result<(Message, Vec<u8>)> {
        let id = self.random_id()?;
        let request = upstream_request(id, question, dnssec_ok)?;
        let (resp, wire) = timeout(UPSTREAM_TIMEOUT, exchange_udp(upstream, &request, id, question))
            .await
            .context("timed out over UDP")??;
        if !resp.truncation {
            return Ok((resp, wire));
        }
        debug!(%upstream, name = %question.name, "truncated answer; asking again over TCP");
        let id = self.random_id()?;
        let request = upstream_request(id, question, dnssec_ok)?;
        timeout(UPSTREAM_TIMEOUT, exchange_tcp(upstream, &request, id, question)).await.context("timed out over TCP")?
    }
}

/// Our query for the upstream: only the question (nothing else the client sent rides
/// along), recursion desired, our EDNS.
fn upstream_request(id: u16, question: &Query, dnssec_ok: bool) -> anyhow::Result<Vec<u8>> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(question.clone());
    msg.set_edns(our_edns(dnssec_ok));
    msg.to_vec().context("encoding the upstream query")
}

/// Whether `resp` answers our query `id` for `question` (anything else arriving on the
/// socket is ignored: a late answer to an earlier query, or a spoofing attempt).
fn matches_query(resp: &Message, id: u16, question: &Query) -> bool {
    resp.id == id
        && resp.message_type == MessageType::Response
        && resp.queries.len() == 1
        && resp.queries[0].name == question.name
        && resp.queries[0].query_type == question.query_type
        && resp.queries[0].query_class == question.query_class
}

async fn exchange_udp(
    upstream: SocketAddr,
    request: &[u8],
    id: u16,
    question: &Query,
) -> anyhow::Result<(Message, Vec<u8>)> {
    // A fresh socket per query: the kernel picks a random source port, and `connect`
    // makes it drop datagrams from anyone but the upstream.
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.context("binding a UDP socket")?;
    socket.connect(upstream).await.context("connecting the UDP socket")?;
    socket.send(request).await.context("sending over UDP")?;
    let mut buf = vec![0u8; 4096];
    loop {
        let len = socket.recv(&mut buf).await.context("receiving over UDP")?;
        let wire = &buf[..len];
        match Message::from_vec(wire) {
            Ok(resp) if matches_query(&resp, id, question) => return Ok((resp, wire.to_vec())),
            Ok(_) => debug!(%upstream, "ignoring an answer to another query"),
            Err(e) => debug!(%upstream, error = %e, "ignoring an unreadable answer"),
        }
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    request: &[u8],
    id: u16,
    question: &Query,
) -> anyhow::Result<(Message, Vec<u8>)> {
    let mut stream = TcpStream::connect(upstream).await.context("connecting over TCP")?;
    let len = u16::try_from(request.len()).context("query too long for TCP")?;
    let mut framed = Vec::with_capacity(request.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(request);
    stream.write_all(&framed).await.context("sending over TCP")?;
    let len = stream.read_u16().await.context("reading the answer's length")?;
    let mut wire = vec![0u8; usize::from(len)];
    stream.read_exact(&mut wire).await.context("reading the answer")?;
    let resp = Message::from_vec(&wire).context("unreadable answer over TCP")?;
    if !matches_query(&resp, id, question) {
        bail!("the TCP answer does not match the query");
    }
    Ok((resp, wire))
}

/// An upstream (or cached) answer rewritten for the client: its id and question, EDNS
/// only if it sent EDNS, TTLs lowered by the time the answer spent in the cache.
fn for_client(mut resp: Message, query: &Message, age_secs: u32) -> Message {
    resp.metadata.id = query.id;
    resp.metadata.recursion_desired = query.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = false;
    resp.queries = query.queries.clone();
    resp.edns = query.edns.as_ref().map(|e| our_edns(e.flags().dnssec_ok));
    resp.signature = None;
    for record in resp.answers.iter_mut().chain(resp.authorities.iter_mut()).chain(resp.additionals.iter_mut()) {
        record.decrement_ttl(age_secs);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, SOA};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn key(n: &str) -> CacheKey {
        CacheKey { name: name(n), rtype: RecordType::A, class: DNSClass::IN, dnssec_ok: false }
    }

    #[test]
    fn resolv_conf_keeps_real_nameservers_only() {
        let text = "# comment\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch example.com\n\
                    nameserver ::1\nnameserver 2001:db8::53\nnameserver fe80::1%eth0\n\
                    nameserver 10.0.0.2\nnameserver 0.0.0.0\nnameserver garbage\noptions edns0\n";
        assert_eq!(
            upstreams(text),
            vec!["10.0.0.2:53".parse::<SocketAddr>().unwrap(), "[2001:db8::53]:53".parse().unwrap()]
        );
        assert!(upstreams("nameserver 127.0.0.1\n").is_empty());
    }

    #[test]
    fn cache_is_case_insensitive_and_expires() {
        let mut cache = Cache::default();
        let now = Instant::now();
        cache.insert(key("Example.COM."), vec![1, 2, 3], Duration::from_secs(10), now);
        let (wire, age) = cache.get(&key("example.com."), now + Duration::from_secs(3)).unwrap();
        assert_eq!((wire, age), (vec![1, 2, 3], 3));
        assert!(cache.get(&key("example.com."), now + Duration::from_secs(10)).is_none());
        assert!(cache.entries.is_empty());
        assert_eq!(cache.bytes, 0);
    }

    #[test]
    fn cache_evicts_the_oldest_beyond_its_bound() {
        let mut cache = Cache::default();
        let now = Instant::now();
        for i in 0..CACHE_MAX_ENTRIES + 5 {
            cache.insert(key(&format!("n{i}.example.")), vec![0; 10], Duration::from_secs(60), now);
        }
        assert_eq!(cache.entries.len(), CACHE_MAX_ENTRIES);
        assert!(cache.get(&key("n0.example."), now).is_none(), "oldest evicted");
        assert!(cache.get(&key("n4.example."), now).is_none());
        assert!(cache.get(&key("n5.example."), now).is_some());
        // Re-inserting one key many times neither grows the map nor the order queue unboundedly.
        for _ in 0..3 * CACHE_MAX_ENTRIES {
            cache.insert(key("hot.example."), vec![0; 10], Duration::from_secs(60), now);
        }
        assert!(cache.order.len() <= 2 * CACHE_MAX_ENTRIES + 1);
        assert_eq!(cache.bytes, cache.entries.values().map(|e| e.wire.len()).sum::<usize>());
        cache.insert(key("big.example."), vec![0; CACHE_MAX_ENTRY_BYTES + 1], Duration::from_secs(60), now);
        assert!(cache.get(&key("big.example."), now).is_none(), "oversized answers are not kept");
    }

    #[test]
    fn cache_ttl_follows_the_answer() {
        let mut resp = Message::new(1, MessageType::Response, OpCode::Query);
        resp.add_answer(Record::from_rdata(name("a.example."), 300, RData::A(A::new(1, 2, 3, 4))));
        resp.add_answer(Record::from_rdata(name("a.example."), 60, RData::A(A::new(1, 2, 3, 5))));
        assert_eq!(cache_ttl(&resp), Some(Duration::from_secs(60)));

        let soa = SOA::new(name("ns.example."), name("h.example."), 1, 1, 1, 1, 900);
        let mut nx = Message::new(1, MessageType::Response, OpCode::Query);
        nx.metadata.response_code = ResponseCode::NXDomain;
        nx.add_authority(Record::from_rdata(name("example."), 3600, RData::SOA(soa)));
        assert_eq!(cache_ttl(&nx), Some(CACHE_MAX_NEGATIVE_TTL), "negative answers capped");

        let mut nodata_without_soa = Message::new(1, MessageType::Response, OpCode::Query);
        nodata_without_soa.metadata.response_code = ResponseCode::NoError;
        assert_eq!(cache_ttl(&nodata_without_soa), None);

        let mut fail = Message::new(1, MessageType::Response, OpCode::Query);
        fail.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(cache_ttl(&fail), None);

        resp.metadata.truncation = true;
        assert_eq!(cache_ttl(&resp), None);
    }

    #[tokio::test]
    async fn no_upstreams_means_servfail() {
        let forwarder = Forwarder::new(Vec::new());
        let mut query = Message::new(7, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(name("example.com."), RecordType::A));
        let resp = forwarder.resolve(&query).await;
        assert_eq!(resp.id, 7);
        assert_eq!(resp.response_code, ResponseCode::ServFail);
        assert_eq!(resp.queries, query.queries);
    }
}
