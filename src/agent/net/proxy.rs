//! The service proxy's decisions: from the Services, EndpointSlices and this node's pods,
//! the whole nftables table `ip bramble` as one `nft -f` script (kube-proxy's nftables
//! mode is the model: verdict maps keyed `daddr . proto . port`, one chain per service
//! port and per endpoint, `numgen random` to balance, dynamic sets with timeouts for
//! ClientIP affinity). Pure: [`render`] is tested against golden scripts; `nft.rs` applies.
//!
//! Paths a packet takes:
//! - to a ClusterIP (or an `externalIP`): `services` finds the service port in
//!   `service-ips`, one endpoint is picked and DNATed to; sources outside the pod ranges
//!   going to another node's endpoint are marked for masquerade (so replies come back
//!   through this node);
//! - to a NodePort on any local address (and `127.0.0.1`): `service-nodeports`, the same,
//!   except that `externalTrafficPolicy: Local` keeps the client's address and only uses
//!   this node's endpoints (none: dropped);
//! - to a service port with no usable endpoint: rejected in the filter hooks
//!   (`no-endpoint-*` maps), so clients fail fast instead of hanging;
//! - to a `hostPort` of a pod here: DNATed to the pod;
//! - from a pod to anything outside every node's pod range: masqueraded to the node.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::Value;

use super::bridge::{BRIDGE, PodCidr};

/// Our table; nothing outside it is ever touched.
pub const TABLE: &str = "bramble";

/// The packet mark bit asking postrouting to masquerade (kube-proxy's 0x4000).
const MASQ_MARK: &str = "0x00004000";

/// The Service whose cluster IP the node-local DNS server answers on.
pub const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

/// A transport protocol a Service port may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// A Kubernetes `protocol` field (absent: TCP).
    pub(super) fn parse(s: Option<&str>) -> Option<Proto> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// The protocol's name in nft rules and set elements.
    pub(super) fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// One endpoint of a service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// On this node (for the Local traffic policies).
    pub local: bool,
}

/// One port of one Service, with what the proxy needs of it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub proto: Proto,
    pub port: u16,
    pub cluster_ips: Vec<Ipv4Addr>,
    pub external_ips: Vec<Ipv4Addr>,
    /// A LoadBalancer Service's `status.loadBalancer.ingress` addresses (the nodes' own,
    /// ServiceLB's model): reached from outside like external IPs.
    pub lb_ips: Vec<Ipv4Addr>,
    /// `loadBalancerSourceRanges` (`a.b.c.d/n`): the only clients its LoadBalancer
    /// addresses answer; empty means anyone.
    pub source_ranges: Vec<String>,
    pub node_port: Option<u16>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity: Option<u32>,
    pub external_local: bool,
    pub internal_local: bool,
    /// Ready endpoints, or when none is, the serving-and-terminating ones (as upstream).
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// `ns/name/proto/port-name`: unique, readable in `nft list ruleset`.
    fn id(&self) -> String {
        let port = if self.port_name.is_empty() { self.port.to_string() } else { self.port_name.clone() };
        format!("{}/{}/{}/{}", self.namespace, self.name, self.proto.nft(), port)
    }

    /// A short stable hash of [`Self::id`], so chain names start with a letter and stay
    /// distinct whatever characters the names hold.
    fn hash(&self) -> String {
        let h = crc32fast::hash(self.id().as_bytes());
        format!("{h:08x}")
    }
}

/// A `hostPort` of a pod on this node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPort {
    pub proto: Proto,
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub pod_ip: Ipv4Addr,
    pub container_port: u16,
}

/// Everything the table is computed from.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// This node's pod range.
    pub pod_cidr: Option<PodCidr>,
    /// Every node's pod range (this one's included): traffic between them is never
    /// masqueraded.
    pub cluster_cidrs: Vec<PodCidr>,
    pub services: Vec<ServicePort>,
    pub host_ports: Vec<HostPort>,
    /// Where this node's DNS server listens: the `kube-dns` Service's ports go there.
    pub dns_listener: Option<Ipv4Addr>,
    /// Whether bridged traffic passes the IP hooks (`br_netfilter`); without it, traffic a
    /// pod sends through a Service to a pod on the same bridge must be masqueraded, or the
    /// reply would skip the reverse NAT.
    pub bridge_netfilter: bool,
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn ipv4s(v: &Value) -> Vec<Ipv4Addr> {
    v.as_array().into_iter().flatten().filter_map(|x| x.as_str()?.parse().ok()).collect()
}

/// The IPv4 CIDRs of a list (`a.b.c.d/n`, or a bare address as a /32), normalised; the rest
/// are skipped (the API validates them; nothing unchecked reaches a rule).
fn ipv4_cidrs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| {
            let text = x.as_str()?.trim();
            let (ip, bits) = text.split_once('/').unwrap_or((text, "32"));
            let ip: Ipv4Addr = ip.parse().ok()?;
            let bits: u32 = bits.parse().ok().filter(|b| *b <= 32)?;
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            Some(format!("{}/{bits}", Ipv4Addr::from(u32::from(ip) & mask)))
        })
        .collect()
}

/// A verdict map's elements. Each key is claimed once across the maps sharing `claimed`
/// (a Service's address in `service-ips` and another's in `no-endpoint-services` would
/// otherwise contradict each other, and a duplicate element fails the whole transaction):
/// two Services claiming the same address and port, say an externalIP on a node's address
/// that a LoadBalancer holds too, leave it to the first in the stable order.
#[derive(Default)]
struct Elements {
    lines: Vec<String>,
}

impl Elements {
    fn add(&mut self, claimed: &mut BTreeSet<String>, key: String, verdict: String) {
        if claimed.insert(key.clone()) {
            self.lines.push(format!("{key} : {verdict}"));
        } else {
            tracing::debug!(%key, "two services claim the same address and port; the first keeps it");
        }
    }
}

/// The service ports the proxy serves, from Service and EndpointSlice objects; `node` is
/// this node's name. Headless and ExternalName Services have none.
pub fn service_ports(services: &[Arc<Value>], slices: &[Arc<Value>], node: &str) -> Vec<ServicePort> {
    // Slices by (namespace, service name).
    let mut by_service: BTreeMap<(&str, &str), Vec<&Value>> = BTreeMap::new();
    for slice in slices {
        if s(slice, "/addressType") != "IPv4" {
            continue;
        }
        let svc = s(slice, "/metadata/labels/kubernetes.io~1service-name");
        if !svc.is_empty() {
            by_service.entry((s(slice, "/metadata/namespace"), svc)).or_default().push(slice);
        }
    }
    let mut out = Vec::new();
    for svc in services {
        let spec = &svc["spec"];
        if s(spec, "/type") == "ExternalName" {
            continue;
        }
        let mut cluster_ips = ipv4s(&spec["clusterIPs"]);
        if cluster_ips.is_empty() {
            cluster_ips = s(spec, "/clusterIP").parse().into_iter().collect();
        }
        if cluster_ips.is_empty() {
            // Headless (`None`): DNS answers with the endpoints; nothing to proxy.
            continue;
        }
        let (ns, name) = (s(svc, "/metadata/namespace"), s(svc, "/metadata/name"));
        let node_ports = matches!(s(spec, "/type"), "NodePort" | "LoadBalancer");
        let affinity = (s(spec, "/sessionAffinity") == "ClientIP").then(|| {
            spec.pointer("/sessionAffinityConfig/clientIP/timeoutSeconds")
                .and_then(Value::as_u64)
                .map_or(10800, |t| t.clamp(1, 86400) as u32)
        });
        let empty = Vec::new();
        let service_slices = by_service.get(&(ns, name)).unwrap_or(&empty);
        for p in spec["ports"].as_array().into_iter().flatten() {
            let (Some(proto), Some(port)) =
                (Proto::parse(p["protocol"].as_str()), p["port"].as_u64().and_then(|x| u16::try_from(x).ok()))
            else {
                continue;
            };
            let port_name = s(p, "/name").to_string();
            out.push(ServicePort {
                namespace: ns.to_string(),
                name: name.to_string(),
                proto,
                port,
                cluster_ips: cluster_ips.clone(),
                external_ips: ipv4s(&spec["externalIPs"]),
                lb_ips: if s(spec, "/type") == "LoadBalancer" {
                    svc.pointer("/status/loadBalancer/ingress")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i["ip"].as_str()?.parse().ok())
                        .collect()
                } else {
                    Vec::new()
                },
                source_ranges: ipv4_cidrs(&spec["loadBalancerSourceRanges"]),
                node_port: if node_ports {
                    p["nodePort"].as_u64().and_then(|x| u16::try_from(x).ok()).filter(|x| *x > 0)
                } else {
                    None
                },
                affinity,
                external_local: s(spec, "/externalTrafficPolicy") == "Local",
                internal_local: s(spec, "/internalTrafficPolicy") == "Local",
                endpoints: endpoints_of(service_slices, &port_name, proto, node),
                port_name,
            });
        }
    }
    out
}

/// The usable endpoints of one service port in its slices: ready ones; when there is none,
/// those still serving while terminating (upstream's graceful termination).
fn endpoints_of(slices: &[&Value], port_name: &str, proto: Proto, node: &str) -> Vec<Endpoint> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        let port = slice["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| s(p, "/name") == port_name && Proto::parse(p["protocol"].as_str()) == Some(proto));
        let Some(port) = port.and_then(|p| p["port"].as_u64()).and_then(|x| u16::try_from(x).ok()) else {
            continue;
        };
        for ep in slice["endpoints"].as_array().into_iter().flatten() {
            let cond = |c: &str| ep["conditions"][c].as_bool();
            let local = s(ep, "/nodeName") == node;
            for ip in ipv4s(&ep["addresses"]) {
                let e = Endpoint { ip, port, local };
                // Upstream: a missing `ready` means ready.
                if cond("ready") != Some(false) {
                    ready.insert(e);
                } else if cond("serving") == Some(true) && cond("terminating") == Some(true) {
                    terminating.insert(e);
                }
            }
        }
    }
    if ready.is_empty() { terminating.into_iter().collect() } else { ready.into_iter().collect() }
}

/// The `hostPort`s of the pods given (this node's, running, with an address).
pub fn host_ports(pods: &[Arc<Value>]) -> Vec<HostPort> {
    let mut out = BTreeSet::new();
    for pod in pods {
        if pod["spec"]["hostNetwork"].as_bool() == Some(true)
            || matches!(s(pod, "/status/phase"), "Succeeded" | "Failed")
            || pod["metadata"]["deletionTimestamp"].is_string()
        {
            continue;
        }
        let Ok(pod_ip) = s(pod, "/status/podIP").parse::<Ipv4Addr>() else { continue };
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            for p in c["ports"].as_array().into_iter().flatten() {
                let port = |k: &str| p[k].as_u64().and_then(|x| u16::try_from(x).ok()).filter(|x| *x > 0);
                let (Some(host_port), Some(container_port), Some(proto)) =
                    (port("hostPort"), port("containerPort"), Proto::parse(p["protocol"].as_str()))
                else {
                    continue;
                };
                let host_ip = s(p, "/hostIP").parse().ok().filter(|ip: &Ipv4Addr| !ip.is_unspecified());
                out.insert(HostPort { proto, host_ip, host_port, pod_ip, container_port });
            }
        }
    }
    out.into_iter().collect()
}

/// The names of the chains and sets a script defines, so the next sync can delete the
/// ones no longer wanted (they must go explicitly: the script flushes, never deletes the
/// table, or affinity sets would forget their clients on every change).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Objects {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// A rendered table.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// The statements defining every chain, map and set, and their contents.
    pub body: String,
    pub objects: Objects,
}

impl Script {
    /// The transaction that turns the table into this one. `previous` is what the last
    /// applied script defined (None: unknown, so the table is replaced whole).
    pub fn transaction(&self, previous: Option<&Objects>) -> String {
        let mut t = String::new();
        match previous {
            None => {
                // `add` first so the `delete` cannot fail on a fresh machine.
                let _ = writeln!(t, "add table ip {TABLE}\ndelete table ip {TABLE}\nadd table ip {TABLE}");
            }
            Some(_) => {
                let _ = writeln!(t, "add table ip {TABLE}\nflush table ip {TABLE}");
            }
        }
        t.push_str(&self.body);
        if let Some(prev) = previous {
            // Rules are flushed above and maps refilled, so nothing refers to these now.
            for chain in prev.chains.difference(&self.objects.chains) {
                let _ = writeln!(t, "delete chain ip {TABLE} {chain}");
            }
            for set in prev.sets.difference(&self.objects.sets) {
                let _ = writeln!(t, "delete set ip {TABLE} {set}");
            }
        }
        t
    }
}

/// Accumulates a script's statements and the objects it defines (`policy` writes into it
/// too).
pub(super) struct Writer {
    pub(super) out: String,
    pub(super) objects: Objects,
}

impl Writer {
    pub(super) fn line(&mut self, l: impl AsRef<str>) {
        self.out.push_str(l.as_ref());
        self.out.push('\n');
    }

    pub(super) fn chain(&mut self, name: &str, hook: Option<&str>) {
        match hook {
            Some(h) => self.line(format!("add chain ip {TABLE} {name} {{ {h} ; }}")),
            None => self.line(format!("add chain ip {TABLE} {name}")),
        }
        self.objects.chains.insert(name.to_string());
    }

    pub(super) fn rule(&mut self, chain: &str, rule: impl AsRef<str>) {
        self.line(format!("add rule ip {TABLE} {chain} {}", rule.as_ref()));
    }

    /// A map or set whose elements the script owns: flushed and refilled each time.
    fn map(&mut self, name: &str, kind: &str, elements: &[String]) {
        self.line(format!("add map ip {TABLE} {name} {{ {kind} ; }}"));
        self.line(format!("flush map ip {TABLE} {name}"));
        if !elements.is_empty() {
            self.line(format!("add element ip {TABLE} {name} {{ {} }}", elements.join(", ")));
        }
        self.objects.sets.insert(name.to_string());
    }
}

fn cidr(c: &PodCidr) -> String {
    format!("{}/{}", c.net, c.bits)
}

/// The whole table for `inputs`, enforcing no NetworkPolicy.
pub fn render(inputs: &Inputs) -> Script {
    render_with_policy(inputs, &super::policy::Plan::default())
}

/// The whole table for `inputs`, with the NetworkPolicy rules for this node's pods (none
/// written when no policy isolates a pod here).
pub fn render_with_policy(inputs: &Inputs, policy: &super::policy::Plan) -> Script {
    let mut w = Writer { out: String::new(), objects: Objects::default() };
    // Base chains: NAT before the filter's reject, as kube-proxy orders them.
    w.chain("prerouting", Some("type nat hook prerouting priority dstnat"));
    w.chain("output", Some("type nat hook output priority -100"));
    w.chain("postrouting", Some("type nat hook postrouting priority srcnat"));
    w.chain("filter-input", Some("type filter hook input priority -110"));
    w.chain("filter-forward", Some("type filter hook forward priority -110"));
    w.chain("filter-output", Some("type filter hook output priority -110"));
    for c in ["services", "hostports", "mark-for-masquerade", "masquerading", "endpoints-check", "reject-chain"] {
        w.chain(c, None);
    }

    let mut cidrs: Vec<String> = inputs.cluster_cidrs.iter().map(cidr).collect();
    cidrs.sort();
    cidrs.dedup();
    w.line(format!("add set ip {TABLE} pod-ranges {{ type ipv4_addr ; flags interval ; }}"));
    w.line(format!("flush set ip {TABLE} pod-ranges"));
    if !cidrs.is_empty() {
        w.line(format!("add element ip {TABLE} pod-ranges {{ {} }}", cidrs.join(", ")));
    }
    w.objects.sets.insert("pod-ranges".into());

    w.rule("prerouting", "jump services");
    w.rule("prerouting", "jump hostports");
    w.rule("output", "jump services");
    w.rule("output", "jump hostports");
    w.rule("postrouting", "jump masquerading");
    for c in ["filter-input", "filter-forward", "filter-output"] {
        w.rule(c, "ct state new jump endpoints-check");
    }
    // `127.0.0.1` NodePorts need route_localnet; refuse what it would otherwise let in from
    // the network (kube-proxy's CVE-2020-8558 guard).
    w.rule(
        "filter-input",
        "iifname != \"lo\" ip daddr 127.0.0.0/8 ct state != { established, related } ct status != dnat drop",
    );
    w.rule("mark-for-masquerade", format!("meta mark set meta mark | {MASQ_MARK}"));
    w.rule(
        "masquerading",
        format!("meta mark & {MASQ_MARK} == {MASQ_MARK} meta mark set meta mark ^ {MASQ_MARK} masquerade fully-random"),
    );
    if let Some(pc) = &inputs.pod_cidr {
        w.rule("masquerading", format!("ip saddr {} ip daddr != @pod-ranges masquerade fully-random", cidr(pc)));
        if !inputs.bridge_netfilter {
            w.rule(
                "masquerading",
                format!("ct status dnat iifname \"{BRIDGE}\" oifname \"{BRIDGE}\" masquerade fully-random"),
            );
        }
    }
    w.rule("reject-chain", "reject");
    w.rule("services", "ip daddr . meta l4proto . th dport vmap @service-ips");
    w.rule("services", "fib daddr type local meta l4proto . th dport vmap @service-nodeports");
    w.rule("endpoints-check", "ip daddr . meta l4proto . th dport vmap @no-endpoint-services");
    w.rule("endpoints-check", "fib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports");

    let mut service_ips = Elements::default();
    let mut node_ports = Elements::default();
    let mut no_endpoint_ips = Elements::default();
    let mut no_endpoint_ports = Elements::default();
    let (mut ip_claims, mut port_claims) = (BTreeSet::new(), BTreeSet::new());
    let mut services: Vec<&ServicePort> = inputs.services.iter().collect();
    services.sort_by_key(|sp| sp.id());
    for sp in services {
        let is_dns = (sp.namespace.as_str(), sp.name.as_str()) == DNS_SERVICE;
        let (id, hash, proto) = (sp.id(), sp.hash(), sp.proto.nft());
        let key = |ip: &Ipv4Addr| format!("{ip} . {proto} . {}", sp.port);
        if is_dns {
            // Answered by this node's DNS server, wherever the client is.
            let Some(listener) = inputs.dns_listener else { continue };
            let chain = format!("dns-{hash}-{id}");
            w.chain(&chain, None);
            w.rule(&chain, format!("meta l4proto {proto} dnat to {listener}:{}", sp.port));
            for ip in &sp.cluster_ips {
                service_ips.add(&mut ip_claims, key(ip), format!("goto {chain}"));
            }
            continue;
        }
        let local: Vec<&Endpoint> = sp.endpoints.iter().filter(|e| e.local).collect();
        let cluster_usable = if sp.internal_local { !local.is_empty() } else { !sp.endpoints.is_empty() };
        if sp.endpoints.is_empty() {
            for ip in sp.cluster_ips.iter().chain(&sp.external_ips).chain(&sp.lb_ips) {
                no_endpoint_ips.add(&mut ip_claims, key(ip), "goto reject-chain".into());
            }
            if let Some(np) = sp.node_port {
                no_endpoint_ports.add(&mut port_claims, format!("{proto} . {np}"), "goto reject-chain".into());
            }
            continue;
        }
        // Endpoint chains, then the balancing chains that pick among them.
        let ep_chain = |e: &Endpoint| format!("ep-{hash}-{id}__{}/{}", e.ip, e.port);
        let aff_set = |e: &Endpoint| format!("aff-{hash}-{}-{}", e.ip, e.port).replace('.', "-");
        for e in &sp.endpoints {
            let chain = ep_chain(e);
            w.chain(&chain, None);
            // Hairpin: a pod reaching itself through its Service.
            w.rule(&chain, format!("ip saddr {} jump mark-for-masquerade", e.ip));
            if !e.local {
                // The reply must come back through this node to be un-NATed: from another
                // node's pod it would otherwise go straight (or masqueraded) to the client.
                // Kept off for endpoints here, whose replies return anyway: masquerading
                // every connection from the node would limit it to the NAT's port space
                // per endpoint (about 500 new connections a second with conntrack's 120 s
                // TIME_WAIT).
                w.rule(&chain, "ip saddr != @pod-ranges jump mark-for-masquerade");
            }
            if let Some(timeout) = sp.affinity {
                let set = aff_set(e);
                // Kept across syncs (never flushed): clients stay with their endpoint.
                w.line(format!(
                    "add set ip {TABLE} {set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}"
                ));
                w.objects.sets.insert(set.clone());
                w.rule(&chain, format!("update @{set} {{ ip saddr }}"));
            }
            w.rule(&chain, format!("meta l4proto {proto} dnat to {}:{}", e.ip, e.port));
        }
        let balance = |w: &mut Writer, chain: &str, eps: &[&Endpoint]| {
            w.chain(chain, None);
            if eps.is_empty() {
                w.rule(chain, "drop");
                return;
            }
            if sp.affinity.is_some() {
                for e in eps {
                    w.rule(chain, format!("ip saddr @{} goto {}", aff_set(e), ep_chain(e)));
                }
            }
            if let [only] = eps {
                w.rule(chain, format!("goto {}", ep_chain(only)));
            } else {
                let arms: Vec<String> =
                    eps.iter().enumerate().map(|(i, e)| format!("{i} : goto {}", ep_chain(e))).collect();
                w.rule(chain, format!("numgen random mod {} vmap {{ {} }}", eps.len(), arms.join(", ")));
            }
        };
        let all: Vec<&Endpoint> = sp.endpoints.iter().collect();
        let svc_chain = format!("svc-{hash}-{id}");
        balance(&mut w, &svc_chain, &all);
        let local_chain = format!("local-{hash}-{id}");
        if sp.internal_local || sp.external_local {
            balance(&mut w, &local_chain, &local);
        }
        // From inside: the cluster IP.
        let cip_chain = format!("cip-{hash}-{id}");
        w.chain(&cip_chain, None);
        if cluster_usable {
            w.rule(&cip_chain, format!("goto {}", if sp.internal_local { &local_chain } else { &svc_chain }));
        } else {
            // internalTrafficPolicy: Local with no endpoint here: dropped, as upstream.
            w.rule(&cip_chain, "drop");
        }
        for ip in &sp.cluster_ips {
            service_ips.add(&mut ip_claims, key(ip), format!("goto {cip_chain}"));
        }
        // From outside: externalIPs, LoadBalancer addresses and the NodePort.
        if sp.external_ips.is_empty() && sp.lb_ips.is_empty() && sp.node_port.is_none() {
            continue;
        }
        let ext_chain = format!("ext-{hash}-{id}");
        w.chain(&ext_chain, None);
        if sp.external_local {
            // Pods and the node itself may use any endpoint; the rest keep their address
            // and go only to this node's endpoints.
            w.rule(&ext_chain, format!("ip saddr @pod-ranges goto {svc_chain}"));
            w.rule(&ext_chain, format!("fib saddr type local goto {svc_chain}"));
            w.rule(&ext_chain, format!("goto {local_chain}"));
        } else {
            // Clients outside the node and its pods: masqueraded, as upstream, so the
            // reply comes back through this node wherever the endpoint is.
            w.rule(&ext_chain, "ip saddr != @pod-ranges fib saddr type != local jump mark-for-masquerade");
            w.rule(&ext_chain, format!("goto {svc_chain}"));
        }
        for ip in &sp.external_ips {
            service_ips.add(&mut ip_claims, key(ip), format!("goto {ext_chain}"));
        }
        if !sp.lb_ips.is_empty() {
            // loadBalancerSourceRanges: only those clients reach the LoadBalancer
            // addresses (kube-proxy's firewall chain); the rest are dropped.
            let lb_chain = if sp.source_ranges.is_empty() {
                ext_chain.clone()
            } else {
                let fw = format!("fw-{hash}-{id}");
                w.chain(&fw, None);
                w.rule(&fw, format!("ip saddr {{ {} }} goto {ext_chain}", sp.source_ranges.join(", ")));
                w.rule(&fw, "drop");
                fw
            };
            for ip in &sp.lb_ips {
                service_ips.add(&mut ip_claims, key(ip), format!("goto {lb_chain}"));
            }
        }
        if let Some(np) = sp.node_port {
            node_ports.add(&mut port_claims, format!("{proto} . {np}"), format!("goto {ext_chain}"));
        }
    }
    w.map("service-ips", "type ipv4_addr . inet_proto . inet_service : verdict", &service_ips.lines);
    w.map("service-nodeports", "type inet_proto . inet_service : verdict", &node_ports.lines);
    w.map("no-endpoint-services", "type ipv4_addr . inet_proto . inet_service : verdict", &no_endpoint_ips.lines);
    w.map("no-endpoint-nodeports", "type inet_proto . inet_service : verdict", &no_endpoint_ports.lines);

    for hp in &inputs.host_ports {
        let proto = hp.proto.nft();
        let on = hp.host_ip.map_or("any".to_string(), |ip| ip.to_string());
        let chain = format!("hostport-{proto}-{on}-{}", hp.host_port);
        w.chain(&chain, None);
        w.rule(&chain, "ip saddr 127.0.0.0/8 jump mark-for-masquerade");
        w.rule(&chain, format!("ip saddr {} jump mark-for-masquerade", hp.pod_ip));
        w.rule(&chain, format!("meta l4proto {proto} dnat to {}:{}", hp.pod_ip, hp.container_port));
        let dst = match hp.host_ip {
            Some(ip) => format!("ip daddr {ip}"),
            None => "fib daddr type local".to_string(),
        };
        w.rule("hostports", format!("{dst} meta l4proto {proto} th dport {} goto {chain}", hp.host_port));
    }
    super::policy::render(&mut w, policy);
    // The maps are referenced by rules above: declare them first in the output.
    let (maps, rest): (Vec<&str>, Vec<&str>) =
        w.out.lines().partition(|l| l.starts_with(&format!("add map ip {TABLE} ")));
    let mut body = String::new();
    let (chains, others): (Vec<&str>, Vec<&str>) =
        rest.into_iter().partition(|l| l.starts_with(&format!("add chain ip {TABLE} ")));
    let (sets, others): (Vec<&str>, Vec<&str>) =
        others.into_iter().partition(|l| l.starts_with(&format!("add set ip {TABLE} ")));
    for l in chains.into_iter().chain(sets).chain(maps).chain(others) {
        body.push_str(l);
        body.push('\n');
    }
    Script { body, objects: w.objects }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn svc(ns: &str, name: &str, spec: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
    }

    fn slice(ns: &str, svc: &str, ports: Value, endpoints: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"namespace": ns, "name": format!("{svc}-abcde"),
            "labels": {"kubernetes.io/service-name": svc}}, "addressType": "IPv4", "ports": ports, "endpoints": endpoints}))
    }

    fn ep(ip: &str, node: &str, ready: bool) -> Value {
        json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": ready, "serving": ready, "terminating": false}})
    }

    /// A cluster with every kind of Service the proxy handles.
    fn sample() -> Inputs {
        let services = vec![
            svc(
                "default",
                "web",
                json!({"clusterIP": "10.43.0.20", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
            ),
            svc(
                "default",
                "empty",
                json!({"clusterIP": "10.43.0.21", "type": "NodePort",
                "ports": [{"port": 81, "nodePort": 30081}]}),
            ),
            svc(
                "default",
                "np",
                json!({"clusterIP": "10.43.0.22", "type": "NodePort", "externalTrafficPolicy": "Local",
                "sessionAffinity": "ClientIP", "externalIPs": ["192.0.2.10"],
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]}),
            ),
            svc(
                "default",
                "internal",
                json!({"clusterIP": "10.43.0.23", "internalTrafficPolicy": "Local",
                "ports": [{"port": 82}]}),
            ),
            svc("default", "headless", json!({"clusterIP": "None", "ports": [{"port": 83}]})),
            svc("default", "ext", json!({"type": "ExternalName", "externalName": "example.com"})),
            svc(
                "kube-system",
                "kube-dns",
                json!({"clusterIP": "10.43.0.10",
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}),
            ),
            Arc::new(json!({"metadata": {"namespace": "default", "name": "lb"},
                "spec": {"clusterIP": "10.43.0.24", "type": "LoadBalancer",
                    "loadBalancerSourceRanges": ["192.0.2.0/24", "198.51.100.7", "not-a-range"],
                    "ports": [{"name": "http", "port": 8088, "protocol": "TCP", "nodePort": 30088}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1", "ipMode": "VIP"}, {"ip": "10.0.0.2", "ipMode": "VIP"}]}}})),
            // Claims a LoadBalancer's address and port: the first in order keeps it.
            svc(
                "default",
                "zz-dup",
                json!({"clusterIP": "10.43.0.25", "externalIPs": ["10.0.0.1"], "ports": [{"port": 8088}]}),
            ),
        ];
        let slices = vec![
            slice(
                "default",
                "lb",
                json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
                json!([ep("10.42.0.5", "me", true)]),
            ),
            slice(
                "default",
                "web",
                json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
                json!([ep("10.42.0.5", "me", true), ep("10.42.1.5", "other", true), ep("10.42.0.6", "me", false)]),
            ),
            slice(
                "default",
                "np",
                json!([{"name": "dns", "port": 5353, "protocol": "UDP"}]),
                json!([ep("10.42.1.7", "other", true)]),
            ),
            slice(
                "default",
                "internal",
                json!([{"name": "", "port": 82, "protocol": "TCP"}]),
                json!([ep("10.42.1.8", "other", true)]),
            ),
        ];
        let pods = vec![Arc::new(json!({"metadata": {"name": "hp"}, "spec": {"containers": [{"ports": [
            {"containerPort": 80, "hostPort": 8081}, {"containerPort": 53, "hostPort": 5300, "protocol": "UDP", "hostIP": "10.0.0.9"},
            {"containerPort": 9000}]}]}, "status": {"phase": "Running", "podIP": "10.42.0.9"}}))];
        Inputs {
            pod_cidr: PodCidr::parse("10.42.0.0/24"),
            cluster_cidrs: vec![PodCidr::parse("10.42.1.0/24").unwrap(), PodCidr::parse("10.42.0.0/24").unwrap()],
            services: service_ports(&services, &slices, "me"),
            host_ports: host_ports(&pods),
            dns_listener: Some(Ipv4Addr::new(10, 42, 0, 1)),
            bridge_netfilter: true,
        }
    }

    #[test]
    fn service_ports_come_from_services_and_their_slices() {
        let inputs = sample();
        let ids: Vec<String> = inputs.services.iter().map(ServicePort::id).collect();
        assert_eq!(
            ids,
            [
                "default/web/tcp/http",
                "default/empty/tcp/81",
                "default/np/udp/dns",
                "default/internal/tcp/82",
                "kube-system/kube-dns/udp/dns",
                "kube-system/kube-dns/tcp/dns-tcp",
                "default/lb/tcp/http",
                "default/zz-dup/tcp/8088"
            ],
            "headless and ExternalName Services are not proxied"
        );
        let lb = &inputs.services[6];
        assert_eq!(lb.lb_ips, [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]);
        assert_eq!(lb.source_ranges, ["192.0.2.0/24", "198.51.100.7/32"], "the unparsable range is left out");
        let web = &inputs.services[0];
        assert_eq!(web.endpoints.len(), 2, "the not-ready endpoint is left out");
        assert!(web.endpoints.iter().any(|e| e.ip == Ipv4Addr::new(10, 42, 0, 5) && e.port == 8080 && e.local));
        let np = &inputs.services[2];
        assert_eq!((np.node_port, np.affinity, np.external_local), (Some(30053), Some(10800), true));
        assert_eq!(inputs.host_ports.len(), 2, "only ports with a hostPort");
    }

    #[test]
    fn terminating_endpoints_serve_only_when_nothing_is_ready() {
        let services = vec![svc("d", "s", json!({"clusterIP": "10.43.0.9", "ports": [{"port": 80}]}))];
        let term =
            json!({"addresses": ["10.42.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}});
        let only_term = vec![slice("d", "s", json!([{"port": 80, "protocol": "TCP"}]), json!([term]))];
        assert_eq!(service_ports(&services, &only_term, "me")[0].endpoints.len(), 1);
        let both =
            vec![slice("d", "s", json!([{"port": 80, "protocol": "TCP"}]), json!([term, ep("10.42.0.4", "me", true)]))];
        let eps = &service_ports(&services, &both, "me")[0].endpoints;
        assert_eq!(eps.iter().map(|e| e.ip.to_string()).collect::<Vec<_>>(), ["10.42.0.4"]);
    }

    #[test]
    fn the_table_matches_the_golden_script() {
        let got = render(&sample()).body;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/agent/net/testdata/proxy.nft");
        if std::env::var_os("BRAMBLE_UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &got).unwrap();
        }
        let want = std::fs::read_to_string(path).unwrap();
        assert_eq!(got, want, "rerun with BRAMBLE_UPDATE_GOLDEN=1 and review the diff");
    }

    #[test]
    fn transactions_flush_and_delete_what_went() {
        let first = render(&sample());
        let t = first.transaction(None);
        assert!(t.starts_with("add table ip bramble\ndelete table ip bramble\nadd table ip bramble\n"));
        let mut fewer = sample();
        fewer.services.retain(|s| s.name != "web");
        let second = render(&fewer);
        let t = second.transaction(Some(&first.objects));
        assert!(t.starts_with("add table ip bramble\nflush table ip bramble\n"));
        assert!(t.contains("delete chain ip bramble svc-"), "{t}");
        assert!(t.contains("default/web/tcp/http__10.42.0.5/8080"));
        assert!(!t.contains("delete set ip bramble aff-"), "affinity sets of kept services stay: {t}");
        assert!(!second.body.contains("flush set ip bramble aff-"), "affinity sets are never flushed");
    }

    /// The kernel accepts the scripts: checked by `nft -c` (no change made) in a network
    /// namespace of its own. Needs root and nft, as the agent does.
    #[test]
    fn the_kernel_accepts_the_scripts() {
        if !nix::unistd::geteuid().is_root() || std::process::Command::new("nft").arg("--version").output().is_err() {
            eprintln!("skipped: needs root and nft");
            return;
        }
        let first = render(&sample());
        let mut fewer = sample();
        fewer.services.retain(|s| s.name != "web");
        fewer.bridge_netfilter = false;
        let second = render(&fewer);
        // Both transactions in one throwaway namespace: the first creates, the second changes.
        let script = format!("{}{}", first.transaction(None), second.transaction(Some(&first.objects)));
        let mut child = std::process::Command::new("unshare")
            .args(["-n", "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}\n{script}", String::from_utf8_lossy(&out.stderr));
    }
}
