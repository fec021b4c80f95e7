//! NetworkPolicy (`networking.k8s.io/v1`) enforcement for this node's pods, as rules in the
//! proxy's nftables table (`proxy::render_with_policy` calls [`render`]). Pure: from the
//! cluster's NetworkPolicies, Pods and Namespaces, [`plan`] decides which pods here are
//! isolated and what each may send and receive; [`render`] writes that down. The semantics
//! are upstream's; Calico's default (denied traffic is dropped, not rejected) is the model
//! for what happens to the rest.
//!
//! Layout, and why:
//! - two base chains at filter priority 0, after the proxy's own filter chains:
//!   `policy-forward` (traffic between pods, and between pods and the world: the routed
//!   hook, where Service traffic is already DNATed to its endpoint, so policies see pod
//!   addresses as upstream's do) and `policy-input` (a pod talking to the node itself, for
//!   instance to the node-local DNS server). Traffic the node sends to its pods passes
//!   `output` only and is never policed, which is upstream's "a pod cannot block its node";
//! - each starts with `ct state established,related accept`: policies govern who may
//!   open a connection, and replies always pass;
//! - an anonymous verdict map from an isolated pod's address to its own chain
//!   (`ip saddr vmap` for egress, `ip daddr vmap` for ingress): one lookup per packet
//!   however many pods are isolated. Anonymous, so it goes with the flushed rule and the
//!   chains it names can be deleted in the same transaction;
//! - one chain per isolated pod and direction (`ingress-<hash>-<ns>/<pod>`,
//!   `egress-...`), holding the union of the rules of every policy selecting it inline,
//!   each `<peers> <ports> return`, and ending in `drop`. Per pod because named ports
//!   resolve against the pod's own containers; `return` (not `accept`) so a packet
//!   between two isolated pods is checked for the sender's egress and then the receiver's
//!   ingress in the same base chain;
//! - the peers of a policy rule in one named interval set (`peers-<hash>-<ns>/<policy>/
//!   <direction>/<index>`): the matching pods' addresses and the ipBlocks with their
//!   `except`s already cut out, merged (nftables refuses overlapping intervals). Shared by
//!   every pod the policy selects, flushed and refilled on each sync like the proxy's maps;
//! - egress to named ports, which resolve against each destination pod, in a named set of
//!   `address . protocol . port` (`ports-...`).
//!
//! When no policy isolates a pod here, nothing at all is written, so a cluster without
//! NetworkPolicies has exactly the proxy's table. Traffic between two pods on the same
//! bridge reaches the `forward` hook only with `br_netfilter` loaded.
//!
//! Anything in a policy that cannot be enforced as written (a bad CIDR, port or selector,
//! and the like, which upstream's validation would have refused) is skipped, never
//! guessed at, and reported in [`Plan::problems`]. Skipping a peer or a port only narrows what a
//! rule allows: a policy with garbage in it fails closed, and never makes the whole script
//! (hence the node's Services) fail.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use serde_json::Value;

use super::bridge::BRIDGE;
use super::proxy::{DNS_SERVICE, Proto, TABLE, Writer};
use crate::api::selector::{LabelSelector, labels_of};

/// The label every namespace carries with its own name (upstream sets it on each; objects
/// written before that may lack it, so it is added here).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The label the node-local DNS server wears as a peer: that of the CoreDNS pods of
/// kubeadm and k3s, so the usual "allow DNS" policies select it.
const DNS_POD_LABEL: (&str, &str) = ("k8s-app", "kube-dns");

/// The most items honoured in one list of a policy (rules, peers, ports, excepts): bounds
/// the script a single object can make. Items past it are skipped and reported.
const MAX_ITEMS: usize = 256;

/// The longest readable part of a chain or set name (nftables names hold 255 bytes; pod
/// names alone may have 253).
const MAX_READABLE: usize = 160;

/// Everything the policy rules are computed from: the agent's watch caches.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Every NetworkPolicy of the cluster.
    pub policies: Vec<Arc<Value>>,
    /// Every pod of the cluster: those elsewhere are peers, those here are enforced.
    pub pods: Vec<Arc<Value>>,
    /// Every Namespace, whose labels `namespaceSelector`s match.
    pub namespaces: Vec<Arc<Value>>,
    /// This node's name: only pods with `spec.nodeName` equal to it are enforced here.
    pub node: String,
    /// Where this node's DNS server listens (the `kube-dns` Service is DNATed there): a
    /// pod `k8s-app=kube-dns` in `kube-system` with ports `dns` (UDP 53) and `dns-tcp`
    /// (TCP 53) as far as egress rules are concerned.
    pub dns_listener: Option<Ipv4Addr>,
}

/// Which way a policy rule lets traffic through, relative to the selected pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Direction {
    /// To the selected pod: its `spec.ingress` rules, peers in `from`.
    Ingress,
    /// From the selected pod: its `spec.egress` rules, peers in `to`.
    Egress,
}

impl Direction {
    /// The field of the spec holding this direction's rules (and its name in set names).
    fn field(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// The field of a rule listing the peers.
    fn peers_field(self) -> &'static str {
        match self {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        }
    }

    /// The packet's address that is the peer's.
    fn peer_addr(self) -> &'static str {
        match self {
            Direction::Ingress => "ip saddr",
            Direction::Egress => "ip daddr",
        }
    }
}

/// The decisions for this node: what [`render`] writes, as data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The pods here isolated for at least one direction, by namespace and name.
    pub pods: Vec<Enforced>,
    /// The named sets the rules refer to, by name.
    pub sets: BTreeMap<String, Elements>,
    /// What in the policies could not be enforced as written and was skipped, one sentence
    /// each, naming the policy and the field: for the agent's log (upstream's API would
    /// have refused most of these; ours may not, and a rule nftables refuses would stop the
    /// whole proxy).
    pub problems: Vec<String>,
}

/// One isolated pod of this node and what it may do.
#[derive(Clone, Debug, PartialEq)]
pub struct Enforced {
    /// The pod's namespace and name, for the chains' names and for the reader.
    pub namespace: String,
    pub name: String,
    /// Its address: the key of the base chains' verdict maps.
    pub ip: Ipv4Addr,
    /// What may reach it; `None` when no policy isolates it for ingress (anything may).
    pub ingress: Option<Vec<Allow>>,
    /// What it may reach; `None` when no policy isolates it for egress.
    pub egress: Option<Vec<Allow>>,
}

/// One kind of traffic a policy rule lets through for one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Allow {
    /// The policy, `namespace/name`, and the index of the rule in its list: where this
    /// allowance comes from.
    pub policy: String,
    pub rule: usize,
    /// The named set of the peers' addresses; `None`: any peer.
    pub peers: Option<String>,
    pub ports: Ports,
}

/// The ports an [`Allow`] opens.
#[derive(Clone, Debug, PartialEq)]
pub enum Ports {
    /// Every port and protocol (a rule without `ports`).
    Any,
    /// Inclusive port ranges by protocol, merged; an empty list: every port of it.
    Listed(BTreeMap<Proto, Vec<(u16, u16)>>),
    /// Egress to named ports: the named set of the peers' `address . protocol . port`
    /// (the peers are in the set, so [`Allow::peers`] is `None`).
    Resolved(String),
}

/// The contents of a named set.
#[derive(Clone, Debug, PartialEq)]
pub enum Elements {
    /// Addresses as inclusive ranges, sorted and merged.
    Addresses(Vec<(Ipv4Addr, Ipv4Addr)>),
    /// `address . protocol . port` of pods' named ports.
    Endpoints(BTreeSet<(Ipv4Addr, Proto, u16)>),
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

/// A field that is present and not null.
fn opt<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

/// A value for a message, cut short: a hostile object must not flood the log.
fn short(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

/// A pod as a peer or an enforced pod: only those with an IPv4 address of their own that
/// may still send or receive (not `hostNetwork`, not finished).
#[derive(Clone, Debug)]
struct Pod {
    namespace: String,
    name: String,
    ip: Ipv4Addr,
    labels: BTreeMap<String, String>,
    local: bool,
    /// Named container ports: name, protocol, number.
    ports: Vec<(String, Proto, u16)>,
}

fn pod_of(v: &Value, node: &str) -> Option<Pod> {
    if v.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true)
        || matches!(s(v, "/status/phase"), "Succeeded" | "Failed")
    {
        return None;
    }
    let ip = s(v, "/status/podIP")
        .parse()
        .ok()
        .or_else(|| v.pointer("/status/podIPs")?.as_array()?.iter().find_map(|p| p["ip"].as_str()?.parse().ok()))?;
    let spec = &v["spec"];
    // Sidecars (restartable init containers) serve ports too.
    let sidecars = spec["initContainers"].as_array().into_iter().flatten().filter(|c| c["restartPolicy"] == "Always");
    let mut ports = Vec::new();
    for c in spec["containers"].as_array().into_iter().flatten().chain(sidecars) {
        for p in c["ports"].as_array().into_iter().flatten() {
            let (Some(name), Some(number), Some(proto)) = (
                p["name"].as_str().filter(|n| !n.is_empty()),
                port_number(&p["containerPort"]),
                Proto::parse(p["protocol"].as_str()),
            ) else {
                continue;
            };
            ports.push((name.to_string(), proto, number));
        }
    }
    Some(Pod {
        namespace: s(v, "/metadata/namespace").to_string(),
        name: s(v, "/metadata/name").to_string(),
        ip,
        labels: labels_of(v),
        local: s(v, "/spec/nodeName") == node,
        ports,
    })
}

/// The node-local DNS server as a peer of egress rules.
fn dns_pod(ip: Ipv4Addr) -> Pod {
    Pod {
        namespace: DNS_SERVICE.0.to_string(),
        name: "node-local-dns".to_string(),
        ip,
        labels: BTreeMap::from([(DNS_POD_LABEL.0.to_string(), DNS_POD_LABEL.1.to_string())]),
        local: false,
        ports: vec![("dns".to_string(), Proto::Udp, 53), ("dns-tcp".to_string(), Proto::Tcp, 53)],
    }
}

/// A NetworkPolicy as enforced: what of it could be parsed.
#[derive(Clone, Debug)]
struct Policy {
    namespace: String,
    name: String,
    selector: LabelSelector,
    /// The rules of each direction the policy isolates for (`None`: not one of its types).
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

impl Policy {
    fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn rules(&self, d: Direction) -> Option<&[Rule]> {
        match d {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// One rule: traffic from (or to) any of `peers` on any of `ports` passes.
#[derive(Clone, Debug, PartialEq)]
struct Rule {
    /// `None`: every peer (no `from`/`to`, or an empty one). `Some`: the usable ones,
    /// maybe none, and then the rule allows nothing.
    peers: Option<Vec<Peer>>,
    /// `None`: every port; `Some`: as for `peers`.
    ports: Option<Vec<PortSpec>>,
}

impl Rule {
    /// A rule that could not be read: it allows nothing.
    const NOTHING: Rule = Rule { peers: Some(Vec::new()), ports: None };
}

#[derive(Clone, Debug, PartialEq)]
enum Peer {
    /// Pods matching `pods` in the namespaces matching `namespaces` (`None`: the policy's
    /// own namespace).
    Pods { namespaces: Option<LabelSelector>, pods: LabelSelector },
    /// The IPv4 addresses of an ipBlock, its `except`s cut out, as inclusive ranges
    /// (none for an IPv6 block: this table sees IPv4 only).
    Block(Vec<(u32, u32)>),
}

#[derive(Clone, Debug, PartialEq)]
enum PortSpec {
    /// Every port of a protocol (a port entry with no `port`).
    All(Proto),
    /// `port` to `endPort`, inclusive.
    Range(Proto, u16, u16),
    /// A container port's name, resolved against the destination pod.
    Named(Proto, String),
}

fn parse_policy(v: &Value, problems: &mut Vec<String>) -> Option<Policy> {
    let (namespace, name) = (s(v, "/metadata/namespace"), s(v, "/metadata/name"));
    let at = format!("NetworkPolicy {namespace}/{name}");
    let spec = &v["spec"];
    let selector = match opt(spec, "podSelector").map(selector_of).transpose() {
        Ok(sel) => sel.unwrap_or_default(),
        Err(e) => {
            problems.push(format!("{at}: spec.podSelector: {e}; the policy is not enforced"));
            return None;
        }
    };
    // Upstream's defaulting: Ingress, and Egress when there is at least one egress rule.
    let default = (true, spec["egress"].as_array().is_some_and(|a| !a.is_empty()));
    let (ingress, egress) = match opt(spec, "policyTypes") {
        Some(Value::Array(types)) if !types.is_empty() => {
            let (mut ingress, mut egress) = (false, false);
            for t in types {
                match t.as_str() {
                    Some("Ingress") => ingress = true,
                    Some("Egress") => egress = true,
                    _ => problems.push(format!("{at}: spec.policyTypes: {} is not Ingress or Egress", short(t))),
                }
            }
            if ingress || egress {
                (ingress, egress)
            } else {
                problems.push(format!("{at}: spec.policyTypes names no known type; the default applies"));
                default
            }
        }
        None | Some(Value::Array(_)) => default,
        Some(other) => {
            problems.push(format!("{at}: spec.policyTypes is not a list ({}); the default applies", short(other)));
            default
        }
    };
    let rules = |d: Direction, problems: &mut Vec<String>| rules_of(spec, d, &at, problems);
    Some(Policy {
        namespace: namespace.to_string(),
        name: name.to_string(),
        selector,
        ingress: if ingress { Some(rules(Direction::Ingress, problems)) } else { None },
        egress: if egress { Some(rules(Direction::Egress, problems)) } else { None },
    })
}

fn rules_of(spec: &Value, d: Direction, at: &str, problems: &mut Vec<String>) -> Vec<Rule> {
    let field = d.field();
    let items = match opt(spec, field) {
        None => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            problems.push(format!("{at}: spec.{field} is not a list; no {field} traffic is allowed"));
            return Vec::new();
        }
    };
    if items.len() > MAX_ITEMS {
        problems.push(format!("{at}: spec.{field} has {} rules; only the first {MAX_ITEMS} are enforced", items.len()));
    }
    items
        .iter()
        .take(MAX_ITEMS)
        .enumerate()
        .map(|(i, r)| rule_of(r, d, &format!("{at}: spec.{field}[{i}]"), problems))
        .collect()
}

fn rule_of(r: &Value, d: Direction, at: &str, problems: &mut Vec<String>) -> Rule {
    if !r.is_object() {
        problems.push(format!("{at} is not an object; it allows nothing"));
        return Rule::NOTHING;
    }
    let rule = Rule {
        peers: list_of(r, d.peers_field(), at, problems, peer_of),
        ports: list_of(r, "ports", at, problems, port_of),
    };
    let named = rule.ports.iter().flatten().any(|p| matches!(p, PortSpec::Named(..)));
    let blocks = rule.peers.iter().flatten().any(|p| matches!(p, Peer::Block(_)));
    if d == Direction::Egress && named && blocks {
        problems.push(format!(
            "{at}: named ports cannot be resolved for ipBlock peers (an address has no port names); \
             they apply to the pod peers only"
        ));
    }
    rule
}

/// A list field of a rule: `None` when absent or empty (upstream: no restriction), else
/// the items that parse; the others are reported and skipped, which only narrows the rule.
fn list_of<T>(
    r: &Value,
    field: &str,
    at: &str,
    problems: &mut Vec<String>,
    parse: fn(&Value) -> Result<T, String>,
) -> Option<Vec<T>> {
    let items = match opt(r, field) {
        None => return None,
        Some(Value::Array(items)) if items.is_empty() => return None,
        Some(Value::Array(items)) => items,
        Some(_) => {
            problems.push(format!("{at}.{field} is not a list; the rule allows nothing"));
            return Some(Vec::new());
        }
    };
    if items.len() > MAX_ITEMS {
        problems.push(format!("{at}.{field} has {} items; only the first {MAX_ITEMS} are enforced", items.len()));
    }
    let mut out = Vec::new();
    for (j, item) in items.iter().take(MAX_ITEMS).enumerate() {
        match parse(item) {
            Ok(t) => out.push(t),
            Err(e) => problems.push(format!("{at}.{field}[{j}]: {e}; it is skipped")),
        }
    }
    if out.is_empty() {
        problems.push(format!("{at}: no usable entry in {field}; the rule allows nothing"));
    }
    Some(out)
}

/// A `metav1.LabelSelector`, checked first: [`LabelSelector::from_object`] leaves out what
/// it cannot read, and a peer selector that lost a requirement would allow more.
fn selector_of(v: &Value) -> Result<LabelSelector, String> {
    if !v.is_object() {
        return Err(format!("{} is not a label selector", short(v)));
    }
    if let Some(labels) = opt(v, "matchLabels") {
        let labels = labels.as_object().ok_or("matchLabels is not a map")?;
        if let Some((k, _)) = labels.iter().find(|(k, v)| k.is_empty() || !v.is_string()) {
            return Err(format!("matchLabels {} is not a label and its value", short(&Value::from(k.as_str()))));
        }
    }
    if let Some(exprs) = opt(v, "matchExpressions") {
        let exprs = exprs.as_array().ok_or("matchExpressions is not a list")?;
        for (i, e) in exprs.iter().enumerate() {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            let values = match opt(e, "values") {
                None => Some(0),
                Some(Value::Array(vs)) if vs.iter().all(Value::is_string) => Some(vs.len()),
                Some(_) => None,
            };
            let ok = match (e.get("operator").and_then(Value::as_str), values) {
                _ if key.is_empty() => false,
                (Some("In" | "NotIn"), Some(n)) => n > 0,
                (Some("Exists" | "DoesNotExist"), Some(n)) => n == 0,
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "matchExpressions[{i}] {} needs a key, an operator In or NotIn with values, \
                     or Exists or DoesNotExist without",
                    short(e)
                ));
            }
        }
    }
    Ok(LabelSelector::from_object(v))
}

fn peer_of(p: &Value) -> Result<Peer, String> {
    if !p.is_object() {
        return Err(format!("{} is not a peer", short(p)));
    }
    let sel = |key: &str| opt(p, key).map(selector_of).transpose().map_err(|e| format!("{key}: {e}"));
    match (opt(p, "ipBlock"), opt(p, "podSelector"), opt(p, "namespaceSelector")) {
        (Some(b), None, None) => block_of(b).map(Peer::Block).map_err(|e| format!("ipBlock: {e}")),
        (Some(_), _, _) => Err("ipBlock cannot be combined with a selector".to_string()),
        (None, None, None) => Err("a peer needs a podSelector, a namespaceSelector or an ipBlock".to_string()),
        (None, _, _) => {
            Ok(Peer::Pods { namespaces: sel("namespaceSelector")?, pods: sel("podSelector")?.unwrap_or_default() })
        }
    }
}

/// `a.b.c.d/n` as its first address and prefix length (host bits cleared).
fn cidr_of(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{} is not an IPv4 CIDR (a.b.c.d/n)", short(&Value::from(text)));
    let (ip, bits) = text.trim().split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let bits: u32 = bits.parse().ok().filter(|b| *b <= 32).ok_or_else(bad)?;
    Ok((u32::from(ip) & prefix_mask(bits), bits))
}

fn prefix_mask(bits: u32) -> u32 {
    u32::MAX.checked_shl(32 - bits).unwrap_or(0)
}

/// The inclusive range of addresses of a prefix.
fn span((net, bits): (u32, u32)) -> (u32, u32) {
    (net, net | !prefix_mask(bits))
}

fn block_of(b: &Value) -> Result<Vec<(u32, u32)>, String> {
    let cidr = b.get("cidr").and_then(Value::as_str).ok_or("it needs a cidr")?;
    if cidr.contains(':') {
        // IPv6: valid, but this table sees IPv4 only; it matches nothing here.
        let valid = cidr
            .split_once('/')
            .is_some_and(|(ip, bits)| ip.parse::<Ipv6Addr>().is_ok() && bits.parse::<u32>().is_ok_and(|b| b <= 128));
        return if valid { Ok(Vec::new()) } else { Err(format!("{} is not a CIDR", short(&Value::from(cidr)))) };
    }
    let whole = cidr_of(cidr)?;
    let excepts = match opt(b, "except") {
        None => &Vec::new(),
        Some(Value::Array(excepts)) => excepts,
        Some(_) => return Err("except is not a list".to_string()),
    };
    if excepts.len() > MAX_ITEMS {
        return Err(format!("except has {} items, more than {MAX_ITEMS}", excepts.len()));
    }
    let mut holes = Vec::new();
    for e in excepts {
        let text = e.as_str().ok_or_else(|| format!("except {} is not a string", short(e)))?;
        let hole = cidr_of(text)?;
        // Upstream: each except is a strict subset of the cidr.
        if hole.1 <= whole.1 || hole.0 & prefix_mask(whole.1) != whole.0 {
            return Err(format!("except {} is not inside {cidr}", short(e)));
        }
        holes.push(span(hole));
    }
    Ok(subtract(span(whole), &merge(holes)))
}

fn port_number(v: &Value) -> Option<u16> {
    v.as_u64().and_then(|x| u16::try_from(x).ok()).filter(|x| *x > 0)
}

/// Upstream's `IsValidPortName`: 1 to 15 of `[a-z0-9-]`, a letter among them, no `-` at
/// either end nor two in a row.
fn valid_port_name(n: &str) -> bool {
    (1..=15).contains(&n.len())
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && n.chars().any(|c| c.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

fn port_of(p: &Value) -> Result<PortSpec, String> {
    if !p.is_object() {
        return Err(format!("{} is not a port", short(p)));
    }
    let proto = match opt(p, "protocol") {
        None => Proto::Tcp,
        Some(v) => v
            .as_str()
            .and_then(|x| Proto::parse(Some(x)))
            .ok_or_else(|| format!("protocol {} is not TCP, UDP or SCTP", short(v)))?,
    };
    let end = opt(p, "endPort");
    match (opt(p, "port"), end) {
        (None, None) => Ok(PortSpec::All(proto)),
        (None, Some(_)) => Err("endPort needs a port".to_string()),
        (Some(Value::String(_)), Some(_)) => Err("endPort needs a numeric port".to_string()),
        (Some(Value::String(name)), None) if valid_port_name(name) => Ok(PortSpec::Named(proto, name.clone())),
        (Some(port), end) => {
            let first =
                port_number(port).ok_or_else(|| format!("port {} is not 1-65535 or a port name", short(port)))?;
            let last = match end {
                None => first,
                Some(e) => port_number(e)
                    .filter(|e| *e >= first)
                    .ok_or_else(|| format!("endPort {} is not between port {first} and 65535", short(e)))?,
            };
            Ok(PortSpec::Range(proto, first, last))
        }
    }
}

/// Sorts and merges inclusive ranges, overlapping or adjacent.
fn merge(mut ranges: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    ranges.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if u64::from(a) <= u64::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// `whole` without `holes` (sorted, merged, inside it).
fn subtract(whole: (u32, u32), holes: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut next = u64::from(whole.0);
    for &(a, b) in holes {
        if u64::from(a) > next {
            out.extend(u32::try_from(next).ok().map(|n| (n, a - 1)));
        }
        next = u64::from(b) + 1;
    }
    if next <= u64::from(whole.1) {
        out.extend(u32::try_from(next).ok().map(|n| (n, whole.1)));
    }
    out
}

/// Deterministic, unique names for chains and sets: `<prefix>-<crc32 of the id>-<the id,
/// cut short, with what nft would not take replaced>`. Stable between syncs as long as the
/// same ids come in the same order (a collision, vanishingly rare, gets a suffix).
#[derive(Default)]
struct Names {
    by_id: BTreeMap<(String, String), String>,
    taken: BTreeSet<String>,
}

impl Names {
    fn get(&mut self, prefix: &str, id: &str) -> String {
        let key = (prefix.to_string(), id.to_string());
        if let Some(name) = self.by_id.get(&key) {
            return name.clone();
        }
        let readable: String = id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "/_.-".contains(c) { c } else { '_' })
            .take(MAX_READABLE)
            .collect();
        let base = format!("{prefix}-{:08x}-{readable}", crc32fast::hash(id.as_bytes()));
        let mut name = base.clone();
        let mut n = 2;
        while !self.taken.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        self.by_id.insert(key, name.clone());
        name
    }
}

/// The pieces [`plan`] works with.
struct Planner<'a> {
    /// Every pod usable as a peer.
    pods: &'a [Pod],
    /// The node-local DNS server, a peer of egress rules only.
    dns: Option<&'a Pod>,
    /// The labels of every namespace named by an object, `kubernetes.io/metadata.name`
    /// included.
    namespaces: &'a BTreeMap<String, BTreeMap<String, String>>,
    sets: BTreeMap<String, Elements>,
    names: Names,
}

impl Planner<'_> {
    /// What `policies` let `pod` do in direction `d`; `None` when none of them isolates it.
    fn allows(&mut self, policies: &[Policy], pod: &Pod, d: Direction) -> Option<Vec<Allow>> {
        let mut isolated = false;
        let mut out = Vec::new();
        for policy in policies {
            if policy.namespace != pod.namespace || !policy.selector.matches(&pod.labels) {
                continue;
            }
            let Some(rules) = policy.rules(d) else { continue };
            isolated = true;
            for (i, rule) in rules.iter().enumerate() {
                self.rule_allows(policy, d, i, rule, pod, &mut out);
            }
        }
        isolated.then_some(out)
    }

    fn rule_allows(&mut self, policy: &Policy, d: Direction, i: usize, rule: &Rule, pod: &Pod, out: &mut Vec<Allow>) {
        let id = format!("{}/{}/{i}", policy.id(), d.field());
        let allow = |peers: Option<String>, ports: Ports| Allow { policy: policy.id(), rule: i, peers, ports };
        let peers = match &rule.peers {
            None => None,
            Some(list) if list.is_empty() => return,
            Some(list) => Some(self.peer_set(&id, &policy.namespace, d, list)),
        };
        let Some(specs) = &rule.ports else {
            out.push(allow(peers, Ports::Any));
            return;
        };
        let mut listed: BTreeMap<Proto, Vec<(u32, u32)>> = BTreeMap::new();
        let mut every = BTreeSet::new();
        let mut named = Vec::new();
        for spec in specs {
            match spec {
                PortSpec::All(proto) => {
                    every.insert(*proto);
                }
                PortSpec::Range(proto, a, b) => listed.entry(*proto).or_default().push((u32::from(*a), u32::from(*b))),
                // Ingress: the selected pod is the destination; its own ports say.
                PortSpec::Named(proto, name) if d == Direction::Ingress => {
                    for (_, _, port) in pod.ports.iter().filter(|(n, p, _)| n == name && p == proto) {
                        listed.entry(*proto).or_default().push((u32::from(*port), u32::from(*port)));
                    }
                }
                PortSpec::Named(proto, name) => named.push((*proto, name.as_str())),
            }
        }
        let mut ports: BTreeMap<Proto, Vec<(u16, u16)>> = listed
            .into_iter()
            .map(|(proto, ranges)| {
                let ranges = merge(ranges)
                    .into_iter()
                    .filter_map(|(a, b)| Some((u16::try_from(a).ok()?, u16::try_from(b).ok()?)))
                    .collect();
                (proto, ranges)
            })
            .collect();
        for proto in every {
            ports.insert(proto, Vec::new());
        }
        if !ports.is_empty() {
            out.push(allow(peers, Ports::Listed(ports)));
        }
        if !named.is_empty() {
            let set = self.endpoint_set(&id, &policy.namespace, d, rule.peers.as_deref(), &named);
            out.push(allow(None, Ports::Resolved(set)));
        }
    }

    /// Whether `peer` (of a policy in `namespace`) selects `pod`.
    fn selects(&self, namespace: &str, peer: &Peer, pod: &Pod) -> bool {
        match peer {
            Peer::Block(_) => false,
            Peer::Pods { namespaces, pods } => {
                let in_namespace = match namespaces {
                    None => pod.namespace == namespace,
                    Some(sel) => self.namespaces.get(&pod.namespace).is_some_and(|labels| sel.matches(labels)),
                };
                in_namespace && pods.matches(&pod.labels)
            }
        }
    }

    /// The pods `peers` select (`None`: all), those a direction may have as peers.
    fn matching(&self, namespace: &str, d: Direction, peers: Option<&[Peer]>) -> Vec<&Pod> {
        let dns = if d == Direction::Egress { self.dns } else { None };
        self.pods
            .iter()
            .chain(dns)
            .filter(|pod| peers.is_none_or(|list| list.iter().any(|p| self.selects(namespace, p, pod))))
            .collect()
    }

    /// The named set of a rule's peers' addresses, made on first use.
    fn peer_set(&mut self, id: &str, namespace: &str, d: Direction, peers: &[Peer]) -> String {
        let name = self.names.get("peers", id);
        if !self.sets.contains_key(&name) {
            let mut ranges: Vec<(u32, u32)> = self
                .matching(namespace, d, Some(peers))
                .iter()
                .map(|pod| (u32::from(pod.ip), u32::from(pod.ip)))
                .collect();
            for peer in peers {
                if let Peer::Block(block) = peer {
                    ranges.extend(block);
                }
            }
            let ranges = merge(ranges).into_iter().map(|(a, b)| (Ipv4Addr::from(a), Ipv4Addr::from(b))).collect();
            self.sets.insert(name.clone(), Elements::Addresses(ranges));
        }
        name
    }

    /// The named set of the peers' `address . protocol . port` for named ports, made on
    /// first use.
    fn endpoint_set(
        &mut self,
        id: &str,
        namespace: &str,
        d: Direction,
        peers: Option<&[Peer]>,
        named: &[(Proto, &str)],
    ) -> String {
        let name = self.names.get("ports", id);
        if !self.sets.contains_key(&name) {
            let mut elements = BTreeSet::new();
            for pod in self.matching(namespace, d, peers) {
                for (n, proto, port) in &pod.ports {
                    if named.iter().any(|(p, wanted)| p == proto && wanted == n) {
                        elements.insert((pod.ip, *proto, *port));
                    }
                }
            }
            self.sets.insert(name.clone(), Elements::Endpoints(elements));
        }
        name
    }
}

/// The decisions for this node: which of its pods are isolated, and what each may do.
pub fn plan(inputs: &Inputs) -> Plan {
    let mut problems = Vec::new();
    let mut policies: Vec<Policy> = inputs.policies.iter().filter_map(|p| parse_policy(p, &mut problems)).collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut pods: Vec<Pod> = inputs.pods.iter().filter_map(|p| pod_of(p, &inputs.node)).collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let dns = inputs.dns_listener.map(dns_pod);
    let mut namespaces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for ns in &inputs.namespaces {
        let name = s(ns, "/metadata/name");
        let mut labels = labels_of(ns);
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        namespaces.insert(name.to_string(), labels);
    }
    // A pod's namespace not (yet) in the cache still has its name label.
    for pod in pods.iter().chain(&dns) {
        namespaces
            .entry(pod.namespace.clone())
            .or_insert_with(|| BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), pod.namespace.clone())]));
    }
    let mut planner = Planner {
        pods: &pods,
        dns: dns.as_ref(),
        namespaces: &namespaces,
        sets: BTreeMap::new(),
        names: Names::default(),
    };
    let mut enforced = Vec::new();
    let mut claimed: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for pod in pods.iter().filter(|p| p.local) {
        let ingress = planner.allows(&policies, pod, Direction::Ingress);
        let egress = planner.allows(&policies, pod, Direction::Egress);
        if ingress.is_none() && egress.is_none() {
            continue;
        }
        let key = format!("{}/{}", pod.namespace, pod.name);
        if let Some(first) = claimed.get(&pod.ip) {
            problems.push(format!(
                "pods {first} and {key} both have address {}; only {first}'s policies are enforced for it",
                pod.ip
            ));
            continue;
        }
        claimed.insert(pod.ip, key);
        enforced.push(Enforced {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            ip: pod.ip,
            ingress,
            egress,
        });
    }
    // Only the sets an enforced pod's chain refers to are kept.
    let used: BTreeSet<&String> = enforced
        .iter()
        .flat_map(|p| p.ingress.iter().chain(&p.egress).flatten())
        .flat_map(|a| {
            let ports = match &a.ports {
                Ports::Resolved(set) => Some(set),
                _ => None,
            };
            a.peers.iter().chain(ports)
        })
        .collect();
    let sets =
        planner.sets.iter().filter(|(name, _)| used.contains(name)).map(|(k, v)| (k.clone(), v.clone())).collect();
    Plan { pods: enforced, sets, problems }
}

/// An address range as nft reads it: an address, a prefix when it is one, else `a-b`.
fn address_range((a, b): &(Ipv4Addr, Ipv4Addr)) -> String {
    let (lo, hi) = (u32::from(*a), u32::from(*b));
    let size = u64::from(hi - lo) + 1;
    if lo == hi {
        a.to_string()
    } else if size.is_power_of_two() && u64::from(lo) % size == 0 {
        format!("{a}/{}", 32 - size.trailing_zeros())
    } else {
        format!("{a}-{b}")
    }
}

fn port_ranges(ranges: &[(u16, u16)]) -> String {
    let items: Vec<String> =
        ranges.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
    match items.as_slice() {
        [one] => one.clone(),
        _ => format!("{{ {} }}", items.join(", ")),
    }
}

impl Allow {
    /// The rules of a pod's chain for this allowance: each ends in `return`, back to the
    /// base chain for the other direction's check.
    fn rules(&self, d: Direction) -> Vec<String> {
        let addr = d.peer_addr();
        let peers = self.peers.as_ref().map_or(String::new(), |set| format!("{addr} @{set} "));
        match &self.ports {
            Ports::Any => vec![format!("{peers}return")],
            Ports::Listed(by_proto) => by_proto
                .iter()
                .map(|(proto, ranges)| {
                    let dport =
                        if ranges.is_empty() { String::new() } else { format!(" th dport {}", port_ranges(ranges)) };
                    format!("{peers}meta l4proto {}{dport} return", proto.nft())
                })
                .collect(),
            Ports::Resolved(set) => vec![format!("{addr} . meta l4proto . th dport @{set} return")],
        }
    }
}

/// An anonymous verdict map from pods' addresses to their chains; `None` when empty.
fn vmap<'a>(arms: impl Iterator<Item = (Ipv4Addr, &'a String)>) -> Option<String> {
    let arms: Vec<String> = arms.map(|(ip, chain)| format!("{ip} : jump {chain}")).collect();
    (!arms.is_empty()).then(|| format!("vmap {{ {} }}", arms.join(", ")))
}

/// Writes the policy chains and sets of a [`plan`] into the proxy's table (the caller
/// plans once, and logs the plan's problems from the same pass).
pub(super) fn render(w: &mut Writer, plan: &Plan) {
    if plan.pods.is_empty() {
        return;
    }
    w.chain("policy-forward", Some("type filter hook forward priority 0"));
    w.chain("policy-input", Some("type filter hook input priority 0"));
    let mut names = Names::default();
    let chains: Vec<(&Enforced, Option<String>, Option<String>)> = plan
        .pods
        .iter()
        .map(|p| {
            let id = format!("{}/{}", p.namespace, p.name);
            let ingress = p.ingress.as_ref().map(|_| names.get("ingress", &id));
            let egress = p.egress.as_ref().map(|_| names.get("egress", &id));
            (p, ingress, egress)
        })
        .collect();
    for chain in chains.iter().flat_map(|(_, i, e)| i.iter().chain(e)) {
        w.chain(chain, None);
    }
    for (name, elements) in &plan.sets {
        let (kind, items): (&str, Vec<String>) = match elements {
            Elements::Addresses(ranges) => {
                ("type ipv4_addr ; flags interval", ranges.iter().map(address_range).collect())
            }
            Elements::Endpoints(eps) => (
                "type ipv4_addr . inet_proto . inet_service",
                eps.iter().map(|(ip, proto, port)| format!("{ip} . {} . {port}", proto.nft())).collect(),
            ),
        };
        w.line(format!("add set ip {TABLE} {name} {{ {kind} ; }}"));
        w.line(format!("flush set ip {TABLE} {name}"));
        if !items.is_empty() {
            w.line(format!("add element ip {TABLE} {name} {{ {} }}", items.join(", ")));
        }
        w.objects.sets.insert(name.clone());
    }
    let ingress = vmap(chains.iter().filter_map(|(p, i, _)| Some((p.ip, i.as_ref()?))));
    let egress = vmap(chains.iter().filter_map(|(p, _, e)| Some((p.ip, e.as_ref()?))));
    w.rule("policy-forward", "ct state established,related accept");
    if let Some(vmap) = &egress {
        w.rule("policy-forward", format!("ip saddr {vmap}"));
    }
    // The node may always reach its pods (upstream); its own traffic passes `output`, and
    // this catches what it routes with one of its addresses as the source.
    w.rule("policy-forward", "fib saddr type local accept");
    if let Some(vmap) = &ingress {
        w.rule("policy-forward", format!("ip daddr {vmap}"));
    }
    w.rule("policy-input", "ct state established,related accept");
    if let Some(vmap) = &egress {
        w.rule("policy-input", format!("iifname \"{BRIDGE}\" ip saddr {vmap}"));
    }
    for (pod, ingress, egress) in &chains {
        for (chain, allows, d) in
            [(ingress, &pod.ingress, Direction::Ingress), (egress, &pod.egress, Direction::Egress)]
        {
            let (Some(chain), Some(allows)) = (chain, allows) else { continue };
            for rule in allows.iter().flat_map(|a| a.rules(d)) {
                w.rule(chain, rule);
            }
            w.rule(chain, "drop");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::proxy::{self, Objects};
    use super::*;

    fn namespace(name: &str, labels: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "labels": labels}}))
    }

    fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: Value, ports: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip}}))
    }

    fn policy(ns: &str, name: &str, spec: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
    }

    fn labels(app: &str) -> Value {
        json!({"matchLabels": {"app": app}})
    }

    /// A cluster of two nodes, `me` and `other`, with the usual kinds of policy.
    fn sample() -> Inputs {
        let namespaces = vec![
            namespace("default", json!({})),
            namespace("prod", json!({"env": "prod"})),
            namespace("monitoring", json!({"purpose": "monitoring"})),
            namespace("kube-system", json!({})),
        ];
        let http = json!([{"name": "http", "containerPort": 8080}]);
        let mut host = pod("default", "host-1", "me", "192.168.1.10", json!({"app": "web"}), json!([]));
        Arc::make_mut(&mut host)["spec"]["hostNetwork"] = json!(true);
        let mut done = pod("default", "done-1", "me", "10.42.0.11", json!({"app": "web"}), json!([]));
        Arc::make_mut(&mut done)["status"]["phase"] = json!("Succeeded");
        let pods = vec![
            pod("default", "web-1", "me", "10.42.0.5", json!({"app": "web"}), http.clone()),
            pod("default", "web-2", "other", "10.42.1.5", json!({"app": "web"}), http),
            pod(
                "default",
                "db-1",
                "me",
                "10.42.0.6",
                json!({"app": "db"}),
                json!([{"name": "pg", "containerPort": 5432}]),
            ),
            pod("default", "client-1", "me", "10.42.0.7", json!({"role": "client"}), json!([])),
            pod("monitoring", "prom-1", "other", "10.42.1.8", json!({"app": "prometheus"}), json!([])),
            pod(
                "prod",
                "api-1",
                "me",
                "10.42.0.9",
                json!({"app": "api"}),
                json!([{"name": "metrics", "containerPort": 9090}]),
            ),
            pod("prod", "worker-1", "me", "10.42.0.10", json!({"app": "worker"}), json!([])),
            pod("prod", "client-2", "other", "10.42.1.9", json!({"role": "client"}), json!([])),
            host,
            done,
        ];
        let policies = vec![
            policy("default", "default-deny-ingress", json!({"podSelector": {}, "policyTypes": ["Ingress"]})),
            policy(
                "default",
                "web-from-monitoring",
                json!({"podSelector": labels("web"), "ingress": [{
                    "from": [{"namespaceSelector": {"matchLabels": {"purpose": "monitoring"}}}],
                    "ports": [{"port": "http"}]}]}),
            ),
            policy(
                "default",
                "db-from-web",
                json!({"podSelector": labels("db"), "ingress": [{
                    "from": [{"podSelector": labels("web")}], "ports": [{"port": 5432}]}]}),
            ),
            policy(
                "default",
                "db-dns",
                json!({"podSelector": labels("db"), "policyTypes": ["Egress"],
                    "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}),
            ),
            policy(
                "default",
                "client-egress",
                json!({"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"], "egress": [
                    {"to": [{"podSelector": labels("web")}], "ports": [{"port": "http"}]},
                    {"ports": [{"port": "dns", "protocol": "UDP"}, {"port": "dns-tcp"}]}]}),
            ),
            policy("default", "web-deny-egress", json!({"podSelector": labels("web"), "policyTypes": ["Egress"]})),
            policy(
                "prod",
                "api-from-clients",
                json!({"podSelector": labels("api"), "ingress": [
                    {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "default"}},
                               "podSelector": {"matchLabels": {"role": "client"}}}],
                     "ports": [{"port": 8000, "endPort": 8100}, {"protocol": "UDP", "port": 5000}]},
                    {"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}],
                     "ports": [{"port": "metrics"}]}]}),
            ),
            policy(
                "prod",
                "worker-egress",
                json!({"podSelector": labels("worker"), "policyTypes": ["Egress"], "egress": [
                    {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 443}]},
                    {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                             "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                     "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}),
            ),
            policy("monitoring", "elsewhere", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})),
        ];
        Inputs { policies, pods, namespaces, node: "me".into(), dns_listener: Some(Ipv4Addr::new(10, 42, 0, 1)) }
    }

    fn rendered(inputs: &Inputs) -> Writer {
        let mut w = Writer { out: String::new(), objects: Objects::default() };
        render(&mut w, &plan(inputs));
        w
    }

    fn enforced<'a>(plan: &'a Plan, key: &str) -> &'a Enforced {
        plan.pods.iter().find(|p| format!("{}/{}", p.namespace, p.name) == key).expect("the pod is enforced")
    }

    /// The addresses in the peer set of one allowance.
    fn peers(plan: &Plan, allow: &Allow) -> Vec<String> {
        match allow.peers.as_ref().and_then(|name| plan.sets.get(name)) {
            Some(Elements::Addresses(ranges)) => ranges.iter().map(address_range).collect(),
            other => panic!("no address set: {other:?}"),
        }
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().expect("a test address")
    }

    #[test]
    fn pods_are_isolated_by_the_policies_selecting_them() {
        let plan = plan(&sample());
        let isolation: Vec<(String, bool, bool)> = plan
            .pods
            .iter()
            .map(|p| (format!("{}/{}", p.namespace, p.name), p.ingress.is_some(), p.egress.is_some()))
            .collect();
        let want = [
            ("default/client-1", true, true),
            ("default/db-1", true, true),
            ("default/web-1", true, true),
            ("prod/api-1", true, false),
            ("prod/worker-1", false, true),
        ];
        assert_eq!(
            isolation,
            want.map(|(k, i, e)| (k.to_string(), i, e)),
            "other nodes' pods, hostNetwork and finished pods are not enforced here"
        );
        assert_eq!(enforced(&plan, "default/client-1").ingress, Some(vec![]), "default deny: nothing may reach it");
        assert_eq!(enforced(&plan, "default/web-1").egress, Some(vec![]), "default deny egress");
        assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    }

    #[test]
    fn policy_types_default_as_upstream() {
        let types = |spec: Value| {
            let p = parse_policy(&policy("d", "p", spec), &mut Vec::new()).expect("a usable policy");
            (p.ingress.is_some(), p.egress.is_some())
        };
        assert_eq!(types(json!({"podSelector": {}})), (true, false));
        assert_eq!(types(json!({"podSelector": {}, "egress": [{}]})), (true, true));
        assert_eq!(types(json!({"podSelector": {}, "egress": []})), (true, false), "no egress rule: not egress");
        assert_eq!(types(json!({"podSelector": {}, "policyTypes": [], "egress": [{}]})), (true, true));
        assert_eq!(types(json!({"podSelector": {}, "policyTypes": ["Egress"]})), (false, true));
        let p = parse_policy(&policy("d", "p", json!({"podSelector": {}, "egress": [{}]})), &mut Vec::new());
        assert_eq!(p.and_then(|p| p.egress), Some(vec![Rule { peers: None, ports: None }]), "`{{}}` allows all");
    }

    #[test]
    fn peers_match_namespaces_pods_and_both() {
        let plan = plan(&sample());
        let db = enforced(&plan, "default/db-1").ingress.clone().unwrap_or_default();
        assert_eq!(peers(&plan, &db[0]), ["10.42.0.5", "10.42.1.5"], "podSelector alone: this namespace's web pods");
        let web = enforced(&plan, "default/web-1").ingress.clone().unwrap_or_default();
        assert_eq!(peers(&plan, &web[0]), ["10.42.1.8"], "namespaceSelector alone: every pod there");
        let api = enforced(&plan, "prod/api-1").ingress.clone().unwrap_or_default();
        assert_eq!(peers(&plan, &api[0]), ["10.42.0.7"], "both: clients in default, not prod's");
        assert_eq!(
            peers(&plan, &api[1]),
            ["192.168.0.0/24", "192.168.2.0-192.168.255.255"],
            "ipBlock with its except cut out"
        );
        let worker = enforced(&plan, "prod/worker-1").egress.clone().unwrap_or_default();
        assert_eq!(peers(&plan, &worker[0]), ["203.0.113.0/24"]);
        assert_eq!(peers(&plan, &worker[1]), ["10.42.0.1"], "the DNS listener is kube-system's kube-dns pod");
        assert_eq!(
            worker[1].ports,
            Ports::Listed(BTreeMap::from([(Proto::Tcp, vec![(53, 53)]), (Proto::Udp, vec![(53, 53)])]))
        );
    }

    #[test]
    fn named_ports_resolve_against_the_destination() {
        let plan = plan(&sample());
        let web = enforced(&plan, "default/web-1").ingress.clone().unwrap_or_default();
        assert_eq!(web[0].ports, Ports::Listed(BTreeMap::from([(Proto::Tcp, vec![(8080, 8080)])])), "ingress: its own");
        let client = enforced(&plan, "default/client-1").egress.clone().unwrap_or_default();
        let endpoints = |a: &Allow| match &a.ports {
            Ports::Resolved(set) => plan.sets.get(set).cloned(),
            _ => None,
        };
        let web_http = BTreeSet::from([(ip("10.42.0.5"), Proto::Tcp, 8080), (ip("10.42.1.5"), Proto::Tcp, 8080)]);
        assert_eq!(endpoints(&client[0]), Some(Elements::Endpoints(web_http)), "egress: each peer's");
        let dns = BTreeSet::from([(ip("10.42.0.1"), Proto::Tcp, 53), (ip("10.42.0.1"), Proto::Udp, 53)]);
        assert_eq!(endpoints(&client[1]), Some(Elements::Endpoints(dns)), "no `to`: any pod's, DNS included");
        let api = enforced(&plan, "prod/api-1").ingress.clone().unwrap_or_default();
        assert_eq!(
            api[0].ports,
            Ports::Listed(BTreeMap::from([(Proto::Tcp, vec![(8000, 8100)]), (Proto::Udp, vec![(5000, 5000)])])),
            "endPort makes a range; UDP"
        );
        // A pod without the port name: the rule lets nothing through to it.
        let mut inputs = sample();
        inputs.pods.retain(|p| s(p, "/metadata/name") != "api-1");
        inputs.pods.push(pod("prod", "api-1", "me", "10.42.0.9", json!({"app": "api"}), json!([])));
        let plan = super::plan(&inputs);
        assert_eq!(enforced(&plan, "prod/api-1").ingress.as_ref().map(Vec::len), Some(1));
    }

    #[test]
    fn ports_and_peers_merge_without_overlap() {
        let mut inputs = sample();
        inputs.policies = vec![policy(
            "default",
            "overlap",
            json!({"podSelector": labels("db"), "ingress": [{"from": [
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.42.0.0/16", "10.42.0.0/24"]}},
                {"ipBlock": {"cidr": "10.42.0.0/24"}}, {"podSelector": labels("web")}],
                "ports": [{"port": 80}, {"port": 70, "endPort": 90}, {"port": 91}, {"protocol": "UDP"}]}]}),
        )];
        let plan = plan(&inputs);
        let db = enforced(&plan, "default/db-1").ingress.clone().unwrap_or_default();
        assert_eq!(peers(&plan, &db[0]), ["10.0.0.0-10.42.0.255", "10.42.1.5", "10.43.0.0-10.255.255.255"],);
        assert_eq!(
            db[0].ports,
            Ports::Listed(BTreeMap::from([(Proto::Tcp, vec![(70, 91)]), (Proto::Udp, vec![])])),
            "a protocol without a port: all its ports"
        );
    }

    #[test]
    fn nothing_is_written_when_no_pod_here_is_isolated() {
        let mut inputs = sample();
        inputs.policies.retain(|p| s(p, "/metadata/namespace") == "monitoring");
        assert!(plan(&inputs).pods.is_empty());
        let w = rendered(&inputs);
        assert_eq!((w.out.as_str(), w.objects), ("", Objects::default()));
        let proxy = proxy::Inputs { dns_listener: Some(Ipv4Addr::new(10, 42, 0, 1)), ..Default::default() };
        assert_eq!(proxy::render_with_policy(&proxy, &plan(&inputs)).body, proxy::render(&proxy).body);
    }

    #[test]
    fn names_are_valid_unique_and_stable() {
        let mut inputs = sample();
        let long = "a".repeat(253);
        inputs.pods.push(pod("default", &long, "me", "10.42.0.20", json!({"app": "db"}), json!([])));
        inputs.pods.push(pod("default", &format!("{long}b"), "me", "10.42.0.21", json!({"app": "db"}), json!([])));
        let first = rendered(&inputs);
        inputs.pods.reverse();
        inputs.policies.reverse();
        let second = rendered(&inputs);
        assert_eq!(first.out, second.out, "the order of the caches does not matter");
        for name in first.objects.chains.iter().chain(&first.objects.sets) {
            assert!(name.len() < 256 && name.starts_with(|c: char| c.is_ascii_alphabetic()), "{name}");
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "/_.-".contains(c)), "{name}");
        }
        let long_chains = first.objects.chains.iter().filter(|c| c.contains(&long[..100])).count();
        assert_eq!(
            long_chains, 4,
            "two long names cut to the same text stay apart (an ingress and an egress chain each)"
        );
    }

    /// Garbage a policy may hold, and what becomes of it.
    fn hostile() -> Vec<Arc<Value>> {
        let many: Vec<Value> =
            (0..1000).map(|i| json!({"ipBlock": {"cidr": format!("10.{}.{}.0/24", i / 256, i % 256)}})).collect();
        vec![
            policy(
                "default",
                "garbage",
                json!({"podSelector": labels("db"), "policyTypes": ["Ingress", "Egress", "Sideways"],
                "ingress": [
                    {"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}, {"ipBlock": {"cidr": "banana"}},
                              {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}},
                              {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["x"]}},
                              {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}, {},
                              {"podSelector": "app=web"},
                              {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Bogus"}]}},
                              {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}},
                              {"ipBlock": {"cidr": "2001:db8::/32"}}]},
                    {"from": many, "ports": [{"port": 0}, {"port": 70000}, {"port": 90, "endPort": 80},
                        {"port": "http", "endPort": 90}, {"protocol": "ICMP", "port": 1}, {"port": "80"},
                        {"port": "averyveryverylongportname"}, {"port": 1.5}, {"endPort": 5}, {"port": 81, "protocol": "UDP"}]},
                    "not a rule"],
                "egress": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}, {"podSelector": labels("web")}],
                            "ports": [{"port": "http"}]},
                           {"to": {"podSelector": {}}}]}),
            ),
            policy("default", "bad-selector", json!({"podSelector": {"matchLabels": {"app": 5}}})),
            policy(
                "default",
                "bad-lists",
                json!({"podSelector": labels("web"), "policyTypes": "Ingress", "ingress": "all"}),
            ),
        ]
    }

    #[test]
    fn garbage_is_skipped_reported_and_fails_closed() {
        let mut inputs = sample();
        inputs.policies = hostile();
        let plan = plan(&inputs);
        let problems = plan.problems.join("\n");
        for want in [
            "NetworkPolicy default/garbage: spec.policyTypes: \"Sideways\" is not Ingress or Egress",
            "spec.ingress[0].from[0]: ipBlock: \"10.0.0.0/33\" is not an IPv4 CIDR",
            "spec.ingress[0].from[1]: ipBlock: \"banana\" is not an IPv4 CIDR",
            "spec.ingress[0].from[2]: ipBlock: except \"11.0.0.0/16\" is not inside 10.0.0.0/8",
            "spec.ingress[0].from[3]: ipBlock: \"x\" is not an IPv4 CIDR",
            "spec.ingress[0].from[4]: ipBlock cannot be combined with a selector",
            "spec.ingress[0].from[5]: a peer needs",
            "spec.ingress[0].from[6]: podSelector: \"app=web\" is not a label selector",
            "spec.ingress[0].from[7]: podSelector: matchExpressions[0]",
            "spec.ingress[0].from[8]: podSelector: matchExpressions[0]",
            "spec.ingress[1].from has 1000 items; only the first 256 are enforced",
            "spec.ingress[1].ports[0]: port 0 is not 1-65535",
            "spec.ingress[1].ports[1]: port 70000 is not 1-65535",
            "spec.ingress[1].ports[2]: endPort 80 is not between port 90 and 65535",
            "spec.ingress[1].ports[3]: endPort needs a numeric port",
            "spec.ingress[1].ports[4]: protocol \"ICMP\" is not TCP, UDP or SCTP",
            "spec.ingress[1].ports[5]: port \"80\" is not 1-65535 or a port name",
            "spec.ingress[1].ports[6]: port \"averyveryverylongportname\"",
            "spec.ingress[1].ports[7]: port 1.5",
            "spec.ingress[1].ports[8]: endPort needs a port",
            "spec.ingress[2] is not an object; it allows nothing",
            "spec.egress[0]: named ports cannot be resolved for ipBlock peers",
            "spec.egress[1].to is not a list; the rule allows nothing",
            "NetworkPolicy default/bad-selector: spec.podSelector: matchLabels",
            "NetworkPolicy default/bad-lists: spec.policyTypes is not a list",
            "NetworkPolicy default/bad-lists: spec.ingress is not a list; no ingress traffic is allowed",
        ] {
            assert!(problems.contains(want), "missing {want:?} in:\n{problems}");
        }
        assert_eq!(problems, super::plan(&inputs).problems.join("\n"));
        let db = enforced(&plan, "default/db-1");
        let ingress = db.ingress.clone().unwrap_or_default();
        // Rule 0 keeps only the IPv6 block (nothing here); rule 1 the first 256 blocks, UDP 81.
        assert_eq!(peers(&plan, &ingress[0]), Vec::<String>::new(), "a skipped peer never widens a rule");
        assert_eq!(peers(&plan, &ingress[1]), ["10.0.0.0/16"]);
        assert_eq!(ingress[1].ports, Ports::Listed(BTreeMap::from([(Proto::Udp, vec![(81, 81)])])));
        assert_eq!(ingress.len(), 2, "the unreadable rule allows nothing");
        let egress = db.egress.clone().unwrap_or_default();
        assert_eq!(egress.len(), 1, "the named port reaches the web pods only; the bad `to` allows nothing");
        let web = enforced(&plan, "default/web-1");
        assert_eq!((web.ingress.clone(), web.egress.clone()), (Some(vec![]), None), "bad lists deny");
        assert!(!plan.pods.iter().any(|p| p.name == "client-1"), "the policy with a bad podSelector is not enforced");
    }

    #[test]
    fn the_rules_match_the_golden_script() {
        let got = rendered(&sample()).out;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/agent/net/testdata/policy.nft");
        if std::env::var_os("BRAMBLE_UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &got).expect("writing the golden script");
        }
        let want = std::fs::read_to_string(path).expect("reading the golden script");
        assert_eq!(got, want, "rerun with BRAMBLE_UPDATE_GOLDEN=1 and review the diff");
    }

    /// The kernel takes the whole table with policies, changed policies, garbage, none and
    /// back: applied in a network namespace of its own. Needs root and nft, as the agent.
    #[test]
    fn the_kernel_accepts_the_scripts() {
        if !nix::unistd::geteuid().is_root() || std::process::Command::new("nft").arg("--version").output().is_err() {
            eprintln!("skipped: needs root and nft");
            return;
        }
        let proxy = proxy::Inputs {
            pod_cidr: super::super::bridge::PodCidr::parse("10.42.0.0/24"),
            dns_listener: Some(Ipv4Addr::new(10, 42, 0, 1)),
            ..Default::default()
        };
        let mut changed = sample();
        changed.policies.extend(hostile());
        changed.pods.retain(|p| s(p, "/metadata/name") != "web-1");
        let steps = [sample(), changed, Inputs::default(), sample()];
        let mut script = String::new();
        let mut previous: Option<Objects> = None;
        for step in &steps {
            let table = proxy::render_with_policy(&proxy, &plan(step));
            script.push_str(&table.transaction(previous.as_ref()));
            previous = Some(table.objects);
        }
        let mut child = std::process::Command::new("unshare")
            .args(["-n", "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting unshare and nft");
        let mut stdin = child.stdin.take().expect("a piped stdin");
        std::io::Write::write_all(&mut stdin, script.as_bytes()).expect("writing the script");
        drop(stdin);
        let out = child.wait_with_output().expect("waiting for nft");
        assert!(out.status.success(), "{}\n{script}", String::from_utf8_lossy(&out.stderr));
        assert!(script.contains("delete chain ip bramble policy-forward"), "the last policy going removes the chains");
    }
}
