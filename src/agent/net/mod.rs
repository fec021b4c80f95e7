//! Everything of a node that touches netlink and nftables: the pods' bridge and veths
//! (`bridge`), the overlay that carries pod traffic between nodes (`overlay`), the service
//! proxy and masquerade in our own nftables table (`proxy`, applied by `nft`), the
//! NetworkPolicies enforced in that table (`policy`), the cluster DNS server (`dns`) and
//! what pods are told about them (`podconf`: `resolv.conf`, Service environment
//! variables), and the Ingress reverse proxy on ports 80 and 443 (`ingress`). Each part keeps its decisions pure (desired state from the node's watch
//! caches) and applies the difference, so the rules for a given set of Nodes, Services,
//! EndpointSlices and NetworkPolicies are unit-tested without root.

pub mod bridge;
pub mod dns;
pub mod ingress;
pub mod nft;
pub mod overlay;
pub mod podconf;
pub mod policy;
pub mod proxy;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::client::Client;
use crate::control::informer::Informer;
use bridge::PodCidr;

/// How the node's network is set up (k3s's flag names).
#[derive(Clone, Debug)]
pub struct NetOptions {
    /// `--flannel-backend`: `vxlan`, `host-gw` or `none`.
    pub backend: overlay::Backend,
    /// `--node-ip`: the address other nodes reach this one at.
    pub node_ip: Option<Ipv4Addr>,
    /// `--flannel-iface`: the interface whose address is the node's.
    pub iface: Option<String>,
    /// `--cluster-domain`.
    pub cluster_domain: String,
    /// `--resolv-conf`: the host's resolvers, when not the usual files.
    pub resolv_conf: Option<std::path::PathBuf>,
}

/// What a pod worker reads of the network: the Services (for `resolv.conf` and the
/// environment variables), and where the cluster DNS answers.
pub struct NodeNet {
    pub services: Arc<Informer>,
    /// Every EndpointSlice (the Ingress proxy's backends).
    pub slices: Arc<Informer>,
    pub cluster_domain: String,
    /// `--resolv-conf`.
    pub resolv_conf: Option<std::path::PathBuf>,
    /// Pods' `eth0` MTU: what fits the overlay (flannel gives pods the vxlan device's MTU,
    /// so nothing depends on path-MTU discovery across nodes).
    pub pod_mtu: u32,
}

impl NodeNet {
    /// The cluster DNS address: the `kube-dns` Service's cluster IP.
    pub fn dns_ip(&self) -> Option<Ipv4Addr> {
        let (ns, name) = proxy::DNS_SERVICE;
        self.services.get(&format!("{ns}/{name}"))?["spec"]["clusterIP"].as_str()?.parse().ok()
    }
}

/// How often the node's address is looked at again (a DHCP lease that changed).
const ADDRESS_EVERY: Duration = Duration::from_secs(10);
/// How long changes are gathered before one sync (kube-proxy's minSyncPeriod is 1 s; ours
/// is kept short so a Ready pod takes traffic within 100 ms).
const COALESCE: Duration = Duration::from_millis(20);
/// A full sync this often even without a change: repairs rules someone else removed.
const RESYNC_EVERY: Duration = Duration::from_secs(60);

/// Sets a sysctl under `/proc/sys`.
fn sysctl(path: &str, value: &str) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/sys/{path}"), value).with_context(|| format!("setting {path} = {value}"))
}

/// Starts the node's network: checks `nft`, sets up the overlay, publishes the node's
/// address and VTEP in its Node, and keeps the proxy, overlay and DNS in step with the
/// watch caches until `stop`. Returns what pod workers need.
pub async fn start(
    client: Arc<Client>,
    node: &str,
    cidr: PodCidr,
    opts: NetOptions,
    fallback_ip: Option<Ipv4Addr>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Arc<NodeNet>> {
    nft::check().await?;
    // `127.0.0.1` NodePorts and hostPorts (guarded in the table), and bridged traffic
    // through the IP hooks so a Service between two pods of one bridge is reverse-NATed.
    sysctl("net/ipv4/conf/all/route_localnet", "1")?;
    let mut bridge_netfilter = sysctl("net/bridge/bridge-nf-call-iptables", "1").is_ok();
    if !bridge_netfilter {
        // Loaded on demand, as k3s does: NetworkPolicies between pods of one node need it.
        match tokio::process::Command::new("modprobe").arg("br_netfilter").status().await {
            Ok(s) if s.success() => bridge_netfilter = sysctl("net/bridge/bridge-nf-call-iptables", "1").is_ok(),
            Ok(s) => tracing::debug!(status = %s, "modprobe br_netfilter"),
            Err(e) => tracing::debug!(error = %e, "modprobe br_netfilter"),
        }
    }
    if !bridge_netfilter {
        tracing::info!(
            "br_netfilter is not loaded: traffic between pods of this node through a Service is masqueraded, and NetworkPolicies do not apply to it"
        );
    }
    let (node_ip, iface) = find_node_ip(&opts, fallback_ip).await?;
    let made = overlay::setup(opts.backend, node_ip, &iface, (cidr.net, cidr.bits))
        .await
        .with_context(|| format!("setting up the {:?} overlay on {iface} ({node_ip})", opts.backend))?;
    annotate(&client, node, opts.backend, node_ip, made.mac).await?;
    tracing::info!(%node_ip, %iface, backend = ?opts.backend, "node network ready");

    let changed = Arc::new(Notify::new());
    let informer = |path: String| {
        let inf = Informer::new(&path);
        let n = changed.clone();
        inf.on_change(Box::new(move |_, _| n.notify_one()));
        tokio::spawn(inf.clone().run(client.clone()));
        inf
    };
    let nodes = informer("/api/v1/nodes".into());
    let services = informer("/api/v1/services".into());
    let slices = informer("/apis/discovery.k8s.io/v1/endpointslices".into());
    let pods = informer(format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"));
    let policies = informer("/apis/networking.k8s.io/v1/networkpolicies".into());
    for inf in [&nodes, &services, &slices, &pods, &policies] {
        inf.synced().await;
    }

    let (zone_tx, zone_rx) = watch::channel(Arc::new(dns::Zone::build(&opts.cluster_domain, &[], &[])));
    let listen = SocketAddr::new(cidr.gateway().into(), 53);
    let dns_listener = match dns::bind(listen).await {
        Ok(l) => {
            let upstreams = dns::upstreams(&podconf::host_resolv_conf(opts.resolv_conf.as_deref()));
            if upstreams.is_empty() {
                tracing::warn!("no upstream name server: names outside the cluster will not resolve");
            }
            tokio::spawn(dns::serve(l, zone_rx, upstreams));
            Some(cidr.gateway())
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), %listen, "cluster DNS cannot listen: pods get no name service");
            None
        }
    };

    let sync = Sync {
        client: client.clone(),
        node: node.to_string(),
        cidr,
        opts: opts.clone(),
        node_ip,
        iface,
        fallback_ip,
        nodes,
        services: services.clone(),
        slices: slices.clone(),
        pods,
        policies,
        peers: None,
        changed: changed.clone(),
        policy_problems: Vec::new(),
        dns_listener,
        bridge_netfilter,
        zone: zone_tx,
        applier: nft::Applier::default(),
        overlay_applied: None,
    };
    tokio::spawn(sync.run(changed, stop));
    Ok(Arc::new(NodeNet {
        services,
        slices,
        cluster_domain: opts.cluster_domain,
        resolv_conf: opts.resolv_conf,
        pod_mtu: made.pod_mtu,
    }))
}

/// The node's overlay address: as the flags say, else the default route's interface's, else
/// (a board with no default route, on an isolated LAN) `fallback`, the address the Node
/// reports.
async fn find_node_ip(opts: &NetOptions, fallback: Option<Ipv4Addr>) -> anyhow::Result<(Ipv4Addr, String)> {
    match overlay::node_ip(opts.node_ip, opts.iface.as_deref()).await {
        Ok(found) => Ok(found),
        Err(e) if opts.node_ip.is_none() && opts.iface.is_none() => match fallback {
            Some(ip) => overlay::node_ip(Some(ip), None).await,
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Publishes where other nodes reach this one, for their overlay.
async fn annotate(
    client: &Client,
    node: &str,
    backend: overlay::Backend,
    ip: Ipv4Addr,
    mac: Option<[u8; 6]>,
) -> anyhow::Result<()> {
    let mac = mac.map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"));
    let patch = json!({"metadata": {"annotations": {
        overlay::ANNOTATION_NODE_IP: ip.to_string(),
        overlay::ANNOTATION_VTEP_MAC: mac,
        overlay::ANNOTATION_BACKEND: backend.to_string(),
    }}});
    client
        .call(
            "PATCH",
            &format!("/api/v1/nodes/{node}"),
            Some("application/merge-patch+json"),
            "application/json",
            Some(&patch),
        )
        .await
        .context("publishing the node's overlay address")?;
    Ok(())
}

/// The loop that keeps the node's rules, routes and DNS zone current.
struct Sync {
    client: Arc<Client>,
    node: String,
    cidr: PodCidr,
    opts: NetOptions,
    node_ip: Ipv4Addr,
    iface: String,
    fallback_ip: Option<Ipv4Addr>,
    nodes: Arc<Informer>,
    services: Arc<Informer>,
    slices: Arc<Informer>,
    pods: Arc<Informer>,
    /// Every pod and namespace: NetworkPolicies select peers anywhere in the cluster by
    /// their labels. Followed only once a policy exists, so a cluster without any keeps
    /// no copy of every pod on every board.
    peers: Option<(Arc<Informer>, Arc<Informer>)>,
    /// Wakes this loop (the peer caches report to it too).
    changed: Arc<Notify>,
    policies: Arc<Informer>,
    /// What of the NetworkPolicies could not be enforced, as last logged.
    policy_problems: Vec<String>,
    dns_listener: Option<Ipv4Addr>,
    bridge_netfilter: bool,
    zone: watch::Sender<Arc<dns::Zone>>,
    applier: nft::Applier,
    /// The overlay state last reconciled: a pod or Service change leaves it as it is, and
    /// then costs no netlink dumps.
    overlay_applied: Option<overlay::Desired>,
}

impl Sync {
    async fn run(mut self, changed: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        let mut address_check = tokio::time::interval(ADDRESS_EVERY);
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        loop {
            self.once().await;
            tokio::select! {
                _ = changed.notified() => tokio::time::sleep(COALESCE).await,
                _ = address_check.tick() => self.follow_address().await,
                _ = resync.tick() => {
                    self.applier = nft::Applier::default();
                    self.overlay_applied = None;
                }
                _ = stop.changed() => return,
            }
        }
    }

    /// One pass: DNS zone, proxy table, overlay routes.
    async fn once(&mut self) {
        let services = self.services.list();
        let slices = self.slices.list();
        self.zone.send_replace(Arc::new(dns::Zone::build(&self.opts.cluster_domain, &services, &slices)));
        let nodes = self.nodes.list();
        let inputs = proxy::Inputs {
            pod_cidr: Some(self.cidr),
            cluster_cidrs: node_cidrs(&nodes).into_iter().chain([self.cidr]).collect(),
            services: proxy::service_ports(&services, &slices, &self.node),
            host_ports: proxy::host_ports(&self.pods.list()),
            dns_listener: self.dns_listener,
            bridge_netfilter: self.bridge_netfilter,
        };
        let started = std::time::Instant::now();
        let policies = self.policies.list();
        if !policies.is_empty() && self.peers.is_none() {
            // Until they have listed, no pod here counts as selected: the policy takes
            // effect a moment later, as any policy change does.
            self.peers = Some((self.follow("/api/v1/pods"), self.follow("/api/v1/namespaces")));
        }
        let peers = self.peers.clone();
        let policy = policy::Inputs {
            policies,
            pods: peers.as_ref().map(|(p, _)| p.list()).unwrap_or_default(),
            namespaces: peers.as_ref().map(|(_, n)| n.list()).unwrap_or_default(),
            node: self.node.clone(),
            dns_listener: self.dns_listener,
        };
        let plan = policy::plan(&policy);
        if plan.problems != self.policy_problems {
            for p in &plan.problems {
                tracing::warn!(problem = %p, "part of a NetworkPolicy is not enforced");
            }
            self.policy_problems = plan.problems.clone();
        }
        match self.applier.apply(&proxy::render_with_policy(&inputs, &plan)).await {
            Ok(true) => tracing::debug!(micros = started.elapsed().as_micros() as u64, "service rules applied"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %format!("{e:#}"), "applying the service rules"),
        }
        let peers = overlay::peers(&nodes, &self.node);
        let desired = overlay::desired(self.opts.backend, &peers);
        if self.overlay_applied.as_ref() == Some(&desired) {
            return;
        }
        match overlay::reconcile(&overlay::Netlink::default(), &desired).await {
            Ok(changes) => {
                if changes.any() {
                    tracing::info!(?changes, "overlay routes updated");
                }
                self.overlay_applied = Some(desired);
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "updating the overlay routes"),
        }
    }

    /// A watch cache that wakes this loop on every change.
    fn follow(&self, path: &str) -> Arc<Informer> {
        let inf = Informer::new(path);
        let n = self.changed.clone();
        inf.on_change(Box::new(move |_, _| n.notify_one()));
        tokio::spawn(inf.clone().run(self.client.clone()));
        inf
    }

    /// Follows a change of the node's address (a new DHCP lease): the overlay device and the
    /// Node's annotations move with it, without a restart.
    async fn follow_address(&mut self) {
        let (ip, iface) = match find_node_ip(&self.opts, self.fallback_ip).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "looking up the node's address");
                return;
            }
        };
        if ip == self.node_ip && iface == self.iface {
            return;
        }
        tracing::info!(old = %self.node_ip, new = %ip, %iface, "the node's address changed");
        let result = async {
            let made = overlay::setup(self.opts.backend, ip, &iface, (self.cidr.net, self.cidr.bits)).await?;
            annotate(&self.client, &self.node, self.opts.backend, ip, made.mac).await
        }
        .await;
        match result {
            Ok(()) => {
                (self.node_ip, self.iface) = (ip, iface);
                // A device made again holds none of the peers' entries.
                self.overlay_applied = None;
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "moving the overlay to the new address"),
        }
    }
}

/// Removes what the node network made (for `bramble killall`): our nftables table and the
/// overlay device and routes. The bridge goes with the pods.
pub async fn teardown() -> anyhow::Result<()> {
    let table = nft::remove_table().await;
    overlay::teardown().await?;
    table
}

/// The pod ranges of `nodes`: traffic between them is pod to pod, never masqueraded.
fn node_cidrs(nodes: &[Arc<Value>]) -> Vec<PodCidr> {
    nodes.iter().filter_map(|n| n["spec"]["podCIDR"].as_str().and_then(PodCidr::parse)).collect()
}
