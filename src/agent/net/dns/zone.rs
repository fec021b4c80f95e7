//! The records of the cluster zone, computed once per change of the node's watch caches
//! (Kubernetes DNS-based service discovery 1.0.1, answered the way CoreDNS's `kubernetes`
//! plugin answers). [`Zone::build`] turns Services and EndpointSlices into HashMaps keyed
//! by lowercase name, so [`Zone::lookup`] costs a few hash probes per query whatever the
//! cluster's size. Pure: no I/O, tested by the table in `dns/mod.rs`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use serde_json::Value;
use tracing::debug;

/// TTL of every record of the cluster zone (CoreDNS's default): short, because Services
/// and endpoints change under the clients' feet.
pub(super) const TTL_SECS: u32 = 5;

/// The TXT answer of `dns-version.<zone>` (the spec's schema version).
const SCHEMA_VERSION: &str = "1.1.0";

/// How many CNAMEs inside the zone an answer follows before giving up (loops).
const MAX_CNAME_CHAIN: usize = 8;

/// The records one owner name has. A default `Node` is an empty non-terminal: the name
/// exists (NODATA, not NXDOMAIN) because names below it do.
#[derive(Default, Debug)]
struct Node {
    a: Vec<Ipv4Addr>,
    aaaa: Vec<Ipv6Addr>,
    cname: Option<Name>,
    /// (port, target) of SRV records; weights are computed per answer.
    srv: Vec<(u16, Name)>,
    txt: Vec<String>,
}

impl Node {
    fn finish(&mut self) {
        self.a.sort_unstable();
        self.a.dedup();
        self.aaaa.sort_unstable();
        self.aaaa.dedup();
        self.srv.sort();
        self.srv.dedup();
    }
}

/// The records of the cluster zone, built from the node's watch caches.
///
/// Immutable once built: the server swaps in a new `Arc<Zone>` when the caches change,
/// so lookups never lock.
#[derive(Debug)]
pub struct Zone {
    /// The zone's lowercase labels, e.g. `["cluster", "local"]`.
    origin_labels: Vec<String>,
    /// Owner names (lowercase, no trailing dot) of the zone, including empty non-terminals.
    nodes: HashMap<String, Node>,
    /// `d.c.b.a.in-addr.arpa` (and `ip6.arpa`) names of our addresses -> PTR targets.
    reverse: HashMap<String, Vec<Name>>,
    /// The SOA at the zone apex, sent in the authority section of negative answers.
    soa: Record,
    /// The same SOA data owned by `in-addr.arpa.` / `ip6.arpa.` for negative reverse answers.
    soa_v4_reverse: Record,
    soa_v6_reverse: Record,
}

/// What the zone says about one question.
#[derive(Debug)]
pub(super) enum Lookup {
    /// Records found (NOERROR, authoritative).
    Answer { answers: Vec<Record>, additionals: Vec<Record> },
    /// The name exists but has no record of the type: NOERROR with the SOA.
    NoData { soa: Record },
    /// The name does not exist in the zone: NXDOMAIN with the SOA.
    NxDomain { soa: Record },
    /// In the zone, but a question we do not answer (a class other than IN, a transfer).
    Refuse(ResponseCode),
    /// Not ours: ask the upstream resolvers.
    Forward,
}

/// Reads a string at a JSON pointer.
fn s<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// `10.1.2.3` -> `10-1-2-3`, `fd00::1` -> `fd00--1`: the name an endpoint without a
/// hostname gets (as CoreDNS names it).
fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The reverse-lookup name (no trailing dot) of an address.
fn reverse_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut key = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                key.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
            key.push_str("ip6.arpa");
            key
        }
    }
}

/// A record of the zone, with the zone's TTL.
fn record(name: Name, data: RData) -> Record {
    Record::from_rdata(name, TTL_SECS, data)
}

/// An endpoint address as the zone needs it.
struct EndpointAddr {
    ip: IpAddr,
    /// Its name below the service: `hostname`, else the dashed address.
    label: String,
}

/// Builds the zone's names; every name it is given is lowercased and without trailing dot.
struct Builder {
    origin: String,
    nodes: HashMap<String, Node>,
    reverse: HashMap<String, Vec<Name>>,
}

impl Builder {
    fn node(&mut self, key: &str) -> &mut Node {
        self.nodes.entry(key.to_owned()).or_default()
    }

    fn add_ip(&mut self, key: &str, ip: IpAddr) {
        let node = self.node(key);
        match ip {
            IpAddr::V4(v4) => node.a.push(v4),
            IpAddr::V6(v6) => node.aaaa.push(v6),
        }
    }

    fn add_ptr(&mut self, ip: IpAddr, key: &str) {
        if let Some(target) = fqdn(key) {
            self.reverse.entry(reverse_key(ip)).or_default().push(target);
        }
    }

    /// One Service with the slices labelled with its name.
    fn add_service(&mut self, svc: &Value, slices: &[&Value]) {
        let (Some(name), Some(ns)) = (s(svc, "/metadata/name"), s(svc, "/metadata/namespace")) else {
            return;
        };
        let svc_key = format!("{}.{}.svc.{}", name.to_ascii_lowercase(), ns.to_ascii_lowercase(), self.origin);
        let Some(svc_name) = fqdn(&svc_key) else {
            return;
        };

        if s(svc, "/spec/type") == Some("ExternalName") {
            let target = s(svc, "/spec/externalName")
                .map(|t| t.trim_end_matches('.').to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .and_then(|t| fqdn(&t));
            match target {
                Some(target) => self.node(&svc_key).cname = Some(target),
                None => debug!(service = %svc_key, "ExternalName service without a valid externalName"),
            }
            return;
        }

        let publish_not_ready = svc.pointer("/spec/publishNotReadyAddresses").and_then(Value::as_bool).unwrap_or(false);
        let endpoints = endpoint_addrs(slices, publish_not_ready);
        let headless = s(svc, "/spec/clusterIP") == Some("None");

        if headless {
            // A headless Service is its endpoints; with none ready it does not resolve.
            for ep in &endpoints {
                self.add_ip(&svc_key, ep.ip);
            }
            for slice in slices {
                let slice_eps = endpoint_addrs(std::slice::from_ref(slice), publish_not_ready);
                for (port_key, port) in named_ports(slice.pointer("/ports"), &svc_key) {
                    for ep in &slice_eps {
                        if let Some(target) = fqdn(&format!("{}.{svc_key}", ep.label)) {
                            self.node(&port_key).srv.push((port, target));
                        }
                    }
                }
            }
        } else {
            let ips = cluster_ips(svc);
            self.node(&svc_key);
            for ip in &ips {
                self.add_ip(&svc_key, *ip);
                self.reverse.entry(reverse_key(*ip)).or_default().push(svc_name.clone());
            }
            for (port_key, port) in named_ports(svc.pointer("/spec/ports"), &svc_key) {
                self.node(&port_key).srv.push((port, svc_name.clone()));
            }
        }

        // Every endpoint also answers under the service by its hostname or dashed address
        // (CoreDNS does this for ClusterIP services too), and its address points back there.
        for ep in &endpoints {
            let ep_key = format!("{}.{svc_key}", ep.label);
            self.add_ip(&ep_key, ep.ip);
            self.add_ptr(ep.ip, &ep_key);
        }
    }

    /// Inserts the empty non-terminals between every name and the zone apex.
    fn add_empty_non_terminals(&mut self) {
        let suffix_len = self.origin.len();
        let mut parents = Vec::new();
        for key in self.nodes.keys() {
            let mut rest = key.as_str();
            while rest.len() > suffix_len {
                match rest.split_once('.') {
                    Some((_, parent)) => {
                        if !self.nodes.contains_key(parent) {
                            parents.push(parent.to_owned());
                        }
                        rest = parent;
                    }
                    None => break,
                }
            }
        }
        for parent in parents {
            self.nodes.entry(parent).or_default();
        }
    }
}

/// The service's cluster IPs (`clusterIPs`, else `clusterIP`), parsed.
fn cluster_ips(svc: &Value) -> Vec<IpAddr> {
    let listed: Vec<&str> = match svc.pointer("/spec/clusterIPs").and_then(Value::as_array) {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(Value::as_str).collect(),
        _ => s(svc, "/spec/clusterIP").into_iter().collect(),
    };
    listed.iter().filter_map(|ip| ip.parse().ok()).collect()
}

/// `(_<port>._<proto>.<svc key>, port number)` of every named port in a list of
/// ServicePorts or EndpointPorts.
fn named_ports(ports: Option<&Value>, svc_key: &str) -> Vec<(String, u16)> {
    let Some(ports) = ports.and_then(Value::as_array) else {
        return Vec::new();
    };
    ports
        .iter()
        .filter_map(|p| {
            let name = s(p, "/name").filter(|n| !n.is_empty())?;
            let port = u16::try_from(p.pointer("/port")?.as_u64()?).ok()?;
            let proto = s(p, "/protocol").unwrap_or("TCP").to_ascii_lowercase();
            Some((format!("_{}._{proto}.{svc_key}", name.to_ascii_lowercase()), port))
        })
        .collect()
}

/// The usable addresses of some EndpointSlices: ready ones (a missing `ready` means
/// ready), or all with `publishNotReadyAddresses`. Deduplicated: an endpoint can sit in
/// two slices while the controller moves it.
fn endpoint_addrs(slices: &[&Value], publish_not_ready: bool) -> Vec<EndpointAddr> {
    let mut out: Vec<EndpointAddr> = Vec::new();
    for slice in slices {
        if !matches!(s(slice, "/addressType"), Some("IPv4") | Some("IPv6")) {
            continue;
        }
        let Some(endpoints) = slice.pointer("/endpoints").and_then(Value::as_array) else {
            continue;
        };
        for ep in endpoints {
            let ready = ep.pointer("/conditions/ready").and_then(Value::as_bool) != Some(false);
            if !ready && !publish_not_ready {
                continue;
            }
            let hostname =
                s(ep, "/hostname").filter(|h| !h.is_empty() && !h.contains('.')).map(str::to_ascii_lowercase);
            let Some(addresses) = ep.pointer("/addresses").and_then(Value::as_array) else {
                continue;
            };
            for ip in addresses.iter().filter_map(Value::as_str) {
                let Ok(ip) = ip.parse::<IpAddr>() else {
                    continue;
                };
                let label = hostname.clone().unwrap_or_else(|| dashed(ip));
                if !out.iter().any(|e| e.ip == ip && e.label == label) {
                    out.push(EndpointAddr { ip, label });
                }
            }
        }
    }
    out.sort_by(|x, y| (x.ip, &x.label).cmp(&(y.ip, &y.label)));
    out
}

/// A fully qualified name from a lowercase key, or `None` (logged) when it is not one.
fn fqdn(key: &str) -> Option<Name> {
    match Name::from_ascii(format!("{key}.")) {
        Ok(name) => Some(name),
        Err(e) => {
            debug!(name = key, error = %e, "not a valid DNS name; no record");
            None
        }
    }
}

/// The lowercase labels of a name, or `None` if a label holds a byte that no name of ours
/// can (a dot inside a label, non-UTF-8), which would otherwise alias another key.
fn lower_labels(name: &Name) -> Option<Vec<String>> {
    name.iter()
        .map(|label| {
            let label = std::str::from_utf8(label).ok()?;
            if label.contains('.') {
                return None;
            }
            Some(label.to_ascii_lowercase())
        })
        .collect()
}

impl Zone {
    /// Computes every record of the cluster zone `domain` (e.g. `cluster.local`) from the
    /// Services and EndpointSlices of all namespaces (JSON objects from the watch caches).
    /// Objects missing the fields a record needs are skipped, never an error: one bad
    /// object must not take DNS down for the cluster.
    pub fn build(domain: &str, services: &[Arc<Value>], slices: &[Arc<Value>]) -> Zone {
        let origin = domain.trim_end_matches('.').to_ascii_lowercase();
        let origin_labels: Vec<String> = origin.split('.').filter(|l| !l.is_empty()).map(str::to_owned).collect();
        let origin = origin_labels.join(".");

        let mut by_service: HashMap<(&str, &str), Vec<&Value>> = HashMap::new();
        for slice in slices {
            let ns = s(slice, "/metadata/namespace");
            let svc = s(slice, "/metadata/labels/kubernetes.io~1service-name");
            if let (Some(ns), Some(svc)) = (ns, svc) {
                by_service.entry((ns, svc)).or_default().push(slice);
            }
        }

        let mut builder = Builder {
            origin: origin.clone(),
            nodes: HashMap::with_capacity(services.len() * 4),
            reverse: HashMap::with_capacity(services.len() * 2),
        };
        for svc in services {
            let key = (s(svc, "/metadata/namespace").unwrap_or_default(), s(svc, "/metadata/name").unwrap_or_default());
            let svc_slices = by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
            builder.add_service(svc, svc_slices);
        }
        builder.node(&format!("dns-version.{origin}")).txt.push(SCHEMA_VERSION.to_owned());
        builder.node(&origin);
        builder.node(&format!("svc.{origin}"));
        builder.node(&format!("pod.{origin}"));
        builder.add_empty_non_terminals();
        for node in builder.nodes.values_mut() {
            node.finish();
        }
        for targets in builder.reverse.values_mut() {
            targets.sort();
            targets.dedup();
        }

        let soa_data = soa_rdata(&origin);
        let soa_record = |owner: &str| {
            let owner = Name::from_ascii(owner).unwrap_or_else(|_| Name::root());
            record(owner, RData::SOA(soa_data.clone()))
        };
        Zone {
            soa: soa_record(&format!("{origin}.")),
            soa_v4_reverse: soa_record("in-addr.arpa."),
            soa_v6_reverse: soa_record("ip6.arpa."),
            origin_labels,
            nodes: builder.nodes,
            reverse: builder.reverse,
        }
    }

    /// Answers one question from the zone, or says it is not ours.
    pub(super) fn lookup(&self, qname: &Name, qtype: RecordType, qclass: DNSClass) -> Lookup {
        let Some(labels) = lower_labels(qname) else {
            return if self.in_zone_raw(qname) { Lookup::NxDomain { soa: self.soa.clone() } } else { Lookup::Forward };
        };
        let zone_len = self.origin_labels.len();
        let in_zone = labels.len() >= zone_len && labels[labels.len() - zone_len..] == self.origin_labels[..];
        if !in_zone {
            return self.lookup_reverse(&labels, qname, qtype, qclass);
        }
        if !matches!(qclass, DNSClass::IN | DNSClass::ANY) {
            return Lookup::Refuse(ResponseCode::Refused);
        }

        let relative = &labels[..labels.len() - zone_len];
        if relative.is_empty() && matches!(qtype, RecordType::SOA | RecordType::ANY) {
            let mut soa = self.soa.clone();
            soa.name = qname.clone();
            return Lookup::Answer { answers: vec![soa], additionals: Vec::new() };
        }
        // Pods (CoreDNS `pods insecure`): any well-formed `a-b-c-d.<ns>.pod.<zone>`.
        if let [ip_label, _ns, pod] = relative
            && pod == "pod"
        {
            return match pod_ip(ip_label) {
                Some(ip) => self.address_answer(qname, &[ip], qtype),
                None => Lookup::NxDomain { soa: self.soa.clone() },
            };
        }
        if let [_ns, pod] = relative
            && pod == "pod"
        {
            return Lookup::NoData { soa: self.soa.clone() };
        }

        let key = labels.join(".");
        let Some(node) = self.nodes.get(&key) else {
            return Lookup::NxDomain { soa: self.soa.clone() };
        };
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        self.node_records(node, qname, qtype, &mut answers, &mut additionals);

        // Follow CNAMEs that stay inside the zone; the client resolves the others.
        let chase = !matches!(qtype, RecordType::CNAME | RecordType::ANY);
        if let Some(target) = node.cname.as_ref().filter(|_| chase) {
            let mut target = target.clone();
            for _ in 0..MAX_CNAME_CHAIN {
                let Some(next) = lower_labels(&target)
                    .filter(|l| l.len() >= zone_len && l[l.len() - zone_len..] == self.origin_labels[..])
                    .and_then(|l| self.nodes.get(&l.join(".")))
                else {
                    break;
                };
                self.node_records(next, &target, qtype, &mut answers, &mut additionals);
                match &next.cname {
                    Some(further) => target = further.clone(),
                    None => break,
                }
            }
        }

        if answers.is_empty() {
            Lookup::NoData { soa: self.soa.clone() }
        } else {
            Lookup::Answer { answers, additionals }
        }
    }

    /// The zone check for names whose labels `lower_labels` refuses.
    fn in_zone_raw(&self, qname: &Name) -> bool {
        let labels: Vec<&[u8]> = qname.iter().collect();
        let zone_len = self.origin_labels.len();
        labels.len() >= zone_len
            && labels[labels.len() - zone_len..]
                .iter()
                .zip(&self.origin_labels)
                .all(|(l, o)| l.eq_ignore_ascii_case(o.as_bytes()))
    }

    /// PTR questions for our addresses are answered here; every other name outside the
    /// zone goes upstream.
    fn lookup_reverse(&self, labels: &[String], qname: &Name, qtype: RecordType, qclass: DNSClass) -> Lookup {
        let Some(targets) = self.reverse.get(&labels.join(".")) else {
            return Lookup::Forward;
        };
        let soa =
            if labels.last().is_some_and(|l| l == "arpa") && labels.iter().rev().nth(1).is_some_and(|l| l == "ip6") {
                &self.soa_v6_reverse
            } else {
                &self.soa_v4_reverse
            };
        if !matches!(qclass, DNSClass::IN | DNSClass::ANY) {
            return Lookup::Refuse(ResponseCode::Refused);
        }
        if !matches!(qtype, RecordType::PTR | RecordType::ANY) {
            return Lookup::NoData { soa: soa.clone() };
        }
        Lookup::Answer {
            answers: targets.iter().map(|t| record(qname.clone(), RData::PTR(PTR(t.clone())))).collect(),
            additionals: Vec::new(),
        }
    }

    /// The A/AAAA answer for a name that has exactly these addresses.
    fn address_answer(&self, qname: &Name, ips: &[IpAddr], qtype: RecordType) -> Lookup {
        let answers: Vec<Record> = ips
            .iter()
            .filter_map(|ip| match (ip, qtype) {
                (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => Some(RData::A(A(*v4))),
                (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => Some(RData::AAAA(AAAA(*v6))),
                _ => None,
            })
            .map(|data| record(qname.clone(), data))
            .collect();
        if answers.is_empty() {
            Lookup::NoData { soa: self.soa.clone() }
        } else {
            Lookup::Answer { answers, additionals: Vec::new() }
        }
    }

    /// Appends the records of `node` (owned by `owner`) that answer `qtype`.
    fn node_records(
        &self,
        node: &Node,
        owner: &Name,
        qtype: RecordType,
        answers: &mut Vec<Record>,
        additionals: &mut Vec<Record>,
    ) {
        let any = qtype == RecordType::ANY;
        // A name with a CNAME has no other data: whatever the type, the alias answers.
        if let Some(target) = &node.cname {
            answers.push(record(owner.clone(), RData::CNAME(CNAME(target.clone()))));
            return;
        }
        if any || qtype == RecordType::A {
            answers.extend(node.a.iter().map(|ip| record(owner.clone(), RData::A(A(*ip)))));
        }
        if any || qtype == RecordType::AAAA {
            answers.extend(node.aaaa.iter().map(|ip| record(owner.clone(), RData::AAAA(AAAA(*ip)))));
        }
        if any || qtype == RecordType::TXT {
            answers.extend(node.txt.iter().map(|t| record(owner.clone(), RData::TXT(TXT::new(vec![t.clone()])))));
        }
        if (any || qtype == RecordType::SRV) && !node.srv.is_empty() {
            // CoreDNS spreads the weight evenly: 100 / number of records.
            let weight = u16::try_from(100 / node.srv.len()).unwrap_or(0);
            let mut glued: Vec<&Name> = Vec::new();
            for (port, target) in &node.srv {
                answers.push(record(owner.clone(), RData::SRV(SRV::new(0, weight, *port, target.clone()))));
                if glued.contains(&target) {
                    continue;
                }
                glued.push(target);
                let glue = lower_labels(target).and_then(|l| self.nodes.get(&l.join(".")));
                if let Some(glue) = glue {
                    additionals.extend(glue.a.iter().map(|ip| record(target.clone(), RData::A(A(*ip)))));
                    additionals.extend(glue.aaaa.iter().map(|ip| record(target.clone(), RData::AAAA(AAAA(*ip)))));
                }
            }
        }
    }
}

/// The SOA CoreDNS serves for the cluster zone.
fn soa_rdata(origin: &str) -> SOA {
    let name = |s: String| Name::from_ascii(s).unwrap_or_else(|_| Name::root());
    // The serial only has to change when the zone does; the build time does that.
    let serial = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(1);
    SOA::new(
        name(format!("ns.dns.{origin}.")),
        name(format!("hostmaster.{origin}.")),
        serial,
        7200,
        1800,
        86400,
        TTL_SECS,
    )
}

/// The address in a pod name's first label: `10-1-2-3` or `fd00--1`.
fn pod_ip(label: &str) -> Option<IpAddr> {
    let parts: Vec<&str> = label.split('-').collect();
    if parts.len() == 4 && parts.iter().all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit())) {
        let mut octets = [0u8; 4];
        for (octet, part) in octets.iter_mut().zip(&parts) {
            *octet = part.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    if label.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return label.replace('-', ":").parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    None
}
