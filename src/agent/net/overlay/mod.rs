//! The overlay that carries pod traffic between nodes, in flannel's layout (as k3s ships
//! it), so a fleet can mix bramble with what operators already know:
//!
//! - `vxlan` (the default): one device, [`VXLAN_DEVICE`] (VNI 1, UDP port 8472, no
//!   learning), holding the `.0` address of the node's pod range. Per other node: a route
//!   to its pod range via its `.0` on-link over the device, a permanent neighbour entry
//!   for that `.0` with the node's VTEP MAC, and an FDB entry sending that MAC to the
//!   node's IP. Works across routed networks.
//! - `host-gw`: no device; per other node a route to its pod range via its node IP. Needs
//!   the nodes on one L2 segment; for kernels without the vxlan module.
//! - `none`: nothing (another CNI-style tool routes pods).
//!
//! Each node publishes its IP, VTEP MAC and backend in its Node's annotations; [`peers`]
//! reads them back, [`desired`] turns them into routes, neighbours and FDB entries as plain
//! data, and [`reconcile`] applies the difference through a [`Platform`] (netlink in
//! [`Netlink`], an in-memory fake in the tests). Only entries we made are ever listed or
//! removed: routes carry our own protocol number, [`ROUTE_PROTOCOL`], and neighbours and
//! FDB entries live on our device. Called by `agent::net` (setup at start, reconcile on
//! every change of the Nodes, teardown from `bramble killall`).

mod netlink;

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;

use serde_json::Value;

use super::bridge::PodCidr;

pub use netlink::{Netlink, Setup, node_ip, setup, teardown};

/// The vxlan device (flannel's is `flannel.1`; ours has its own name so both can be told
/// apart on a machine that ran k3s before).
pub const VXLAN_DEVICE: &str = "bramble.vxlan";
/// The VXLAN network identifier (flannel's default).
pub const VNI: u32 = 1;
/// The UDP port the tunnel uses (flannel's and the Linux default, not IANA's 4789), so
/// firewall rules written for k3s keep working.
pub const VXLAN_PORT: u16 = 8472;
/// What the encapsulation takes of the underlying MTU (outer Ethernet, IPv4, UDP, VXLAN
/// headers), as flannel reckons it.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The routing protocol number on every route we add (`proto 66` in `ip route`; 0x42,
/// unassigned in `/etc/iproute2/rt_protos`): how our routes are told from everyone
/// else's, which are never touched.
pub const ROUTE_PROTOCOL: u8 = 66;

/// Node annotation: the address other nodes send overlay traffic to.
pub const ANNOTATION_NODE_IP: &str = "bramble.io/node-ip";
/// Node annotation: the MAC of the node's vxlan device, `aa:bb:cc:dd:ee:ff`.
pub const ANNOTATION_VTEP_MAC: &str = "bramble.io/vtep-mac";
/// Node annotation: the backend the node runs (for operators; all nodes must agree).
pub const ANNOTATION_BACKEND: &str = "bramble.io/backend";

/// How pod traffic crosses between nodes (`--flannel-backend`, k3s's values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Encapsulated in VXLAN: works whatever lies between the nodes.
    #[default]
    Vxlan,
    /// Plain routes via the other nodes' addresses: nodes on one L2 segment.
    HostGw,
    /// No overlay.
    None,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::None => "none",
        })
    }
}

/// A `--flannel-backend` value this build does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown flannel backend {0:?}: use vxlan, host-gw or none")]
pub struct UnknownBackend(String);

impl FromStr for Backend {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Backend, UnknownBackend> {
        match s {
            "vxlan" => Ok(Backend::Vxlan),
            "host-gw" => Ok(Backend::HostGw),
            "none" => Ok(Backend::None),
            other => Err(UnknownBackend(other.to_string())),
        }
    }
}

/// Another node, as far as the overlay needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// Its pod range (`spec.podCIDR`): network address and prefix length.
    pub pod_cidr: (Ipv4Addr, u8),
    /// Where it receives overlay traffic ([`ANNOTATION_NODE_IP`]).
    pub node_ip: Ipv4Addr,
    /// Its vxlan device's MAC ([`ANNOTATION_VTEP_MAC`]); `None` on host-gw nodes.
    pub vtep_mac: Option<[u8; 6]>,
}

/// The other nodes that can be routed to: those with a pod range and a published address.
/// Nodes still starting (no annotation yet) are left out until they publish one.
pub fn peers(nodes: &[Arc<Value>], me: &str) -> Vec<Peer> {
    nodes
        .iter()
        .filter_map(|node| {
            let name = node["metadata"]["name"].as_str()?;
            if name == me {
                return None;
            }
            let spec = &node["spec"];
            let cidr = spec["podCIDR"]
                .as_str()
                .and_then(PodCidr::parse)
                .or_else(|| spec["podCIDRs"].as_array()?.iter().filter_map(Value::as_str).find_map(PodCidr::parse))?;
            let annotations = &node["metadata"]["annotations"];
            let node_ip = annotations[ANNOTATION_NODE_IP].as_str()?.parse().ok()?;
            let vtep_mac = annotations[ANNOTATION_VTEP_MAC].as_str().and_then(parse_mac);
            Some(Peer { name: name.to_string(), pod_cidr: (cidr.net, cidr.bits), node_ip, vtep_mac })
        })
        .collect()
}

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2)?;
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A route we own: `dst/bits via via`, either over [`VXLAN_DEVICE`] with the gateway
/// on-link (`vxlan`), or through whichever interface reaches `via` (host-gw).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub bits: u8,
    pub via: Ipv4Addr,
    pub vxlan: bool,
}

/// A permanent neighbour entry on [`VXLAN_DEVICE`]: a peer's `.0` has its VTEP MAC, so
/// no ARP crosses the tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// A permanent forwarding entry of [`VXLAN_DEVICE`]: frames for `mac` are sent to the
/// node at `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

/// Everything the overlay should hold for a set of peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: BTreeSet<Route>,
    pub neighbours: BTreeSet<Neighbour>,
    pub fdb: BTreeSet<FdbEntry>,
}

/// What the overlay should hold for `peers` under `backend`. vxlan peers without a VTEP MAC
/// (not started yet, or running host-gw) are left out: without it nothing would reach them.
pub fn desired(backend: Backend, peers: &[Peer]) -> Desired {
    let mut want = Desired::default();
    for peer in peers {
        let (net, bits) = peer.pod_cidr;
        match backend {
            Backend::Vxlan => {
                let Some(mac) = peer.vtep_mac else { continue };
                want.routes.insert(Route { dst: net, bits, via: net, vxlan: true });
                want.neighbours.insert(Neighbour { ip: net, mac });
                want.fdb.insert(FdbEntry { mac, dst: peer.node_ip });
            }
            Backend::HostGw => {
                want.routes.insert(Route { dst: net, bits, via: peer.node_ip, vxlan: false });
            }
            Backend::None => {}
        }
    }
    want
}

/// The kernel state the overlay owns, behind a trait so [`reconcile`] is tested without
/// root. Listings return only what is ours (routes with [`ROUTE_PROTOCOL`], permanent
/// neighbour and FDB entries on [`VXLAN_DEVICE`]); deleting what is already gone is no
/// error.
pub trait Platform {
    fn routes(&self) -> impl Future<Output = anyhow::Result<Vec<Route>>> + Send;
    fn add_route(&self, route: Route) -> impl Future<Output = anyhow::Result<()>> + Send;
    fn del_route(&self, route: Route) -> impl Future<Output = anyhow::Result<()>> + Send;
    fn neighbours(&self) -> impl Future<Output = anyhow::Result<Vec<Neighbour>>> + Send;
    fn add_neighbour(&self, neighbour: Neighbour) -> impl Future<Output = anyhow::Result<()>> + Send;
    fn del_neighbour(&self, neighbour: Neighbour) -> impl Future<Output = anyhow::Result<()>> + Send;
    fn fdb(&self) -> impl Future<Output = anyhow::Result<Vec<FdbEntry>>> + Send;
    fn add_fdb(&self, entry: FdbEntry) -> impl Future<Output = anyhow::Result<()>> + Send;
    fn del_fdb(&self, entry: FdbEntry) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// What one [`reconcile`] changed (for the journal).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub routes_added: usize,
    pub routes_deleted: usize,
    pub neighbours_added: usize,
    pub neighbours_deleted: usize,
    pub fdb_added: usize,
    pub fdb_deleted: usize,
}

impl Changes {
    /// Whether anything changed.
    pub fn any(&self) -> bool {
        *self != Changes::default()
    }
}

/// Counts a change that worked, keeps one that failed.
fn tally(result: anyhow::Result<()>, count: &mut usize, failures: &mut Vec<anyhow::Error>) {
    match result {
        Ok(()) => *count += 1,
        Err(e) => failures.push(e),
    }
}

/// Brings what the platform holds to `want`: deletes what is ours and unwanted (a deleted
/// Node's route, neighbour and FDB entry; an entry whose peer moved), then adds what is
/// missing. Deletions go first so a changed entry is replaced, and routes last on the way
/// in (first on the way out) so a route never points into a tunnel without its L2 entries.
/// A failed change does not stop the others; all failures are returned together.
/// Idempotent: a second run with the same `want` changes nothing.
pub async fn reconcile(platform: &impl Platform, want: &Desired) -> anyhow::Result<Changes> {
    let routes: BTreeSet<Route> = platform.routes().await?.into_iter().collect();
    let neighbours: BTreeSet<Neighbour> = platform.neighbours().await?.into_iter().collect();
    let fdb: BTreeSet<FdbEntry> = platform.fdb().await?.into_iter().collect();
    let mut changes = Changes::default();
    let mut failures = Vec::new();

    for &r in routes.difference(&want.routes) {
        tally(platform.del_route(r).await, &mut changes.routes_deleted, &mut failures);
    }
    for &n in neighbours.difference(&want.neighbours) {
        tally(platform.del_neighbour(n).await, &mut changes.neighbours_deleted, &mut failures);
    }
    for &e in fdb.difference(&want.fdb) {
        tally(platform.del_fdb(e).await, &mut changes.fdb_deleted, &mut failures);
    }
    for &e in want.fdb.difference(&fdb) {
        tally(platform.add_fdb(e).await, &mut changes.fdb_added, &mut failures);
    }
    for &n in want.neighbours.difference(&neighbours) {
        tally(platform.add_neighbour(n).await, &mut changes.neighbours_added, &mut failures);
    }
    for &r in want.routes.difference(&routes) {
        tally(platform.add_route(r).await, &mut changes.routes_added, &mut failures);
    }

    if failures.is_empty() {
        return Ok(changes);
    }
    let all: Vec<String> = failures.iter().map(|e| format!("{e:#}")).collect();
    anyhow::bail!("{} overlay change(s) failed ({changes:?} made): {}", failures.len(), all.join("; "))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;

    const MAC_B: [u8; 6] = [0x0e, 0xb7, 10, 0, 0, 2];
    const MAC_C: [u8; 6] = [0x0e, 0xb7, 10, 0, 0, 3];

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>, mac: Option<&str>) -> Arc<Value> {
        let mut annotations = serde_json::Map::new();
        if let Some(ip) = ip {
            annotations.insert(ANNOTATION_NODE_IP.into(), json!(ip));
        }
        if let Some(mac) = mac {
            annotations.insert(ANNOTATION_VTEP_MAC.into(), json!(mac));
        }
        Arc::new(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": cidr.map(|c| json!({"podCIDR": c})).unwrap_or(json!({})),
        }))
    }

    fn cluster() -> Vec<Arc<Value>> {
        vec![
            node("a", Some("10.42.1.0/24"), Some("10.0.0.1"), Some("0e:b7:0a:00:00:01")),
            node("b", Some("10.42.2.0/24"), Some("10.0.0.2"), Some("0e:b7:0a:00:00:02")),
            node("c", Some("10.42.3.0/24"), Some("10.0.0.3"), Some("0E:B7:0A:00:00:03")),
            // host-gw node: no MAC.
            node("d", Some("10.42.4.0/24"), Some("10.0.0.4"), None),
            // Not yet given a pod range, not yet started, garbage address.
            node("e", None, Some("10.0.0.5"), Some("0e:b7:0a:00:00:05")),
            node("f", Some("10.42.6.0/24"), None, None),
            node("g", Some("10.42.7.0/24"), Some("ten.zero"), None),
        ]
    }

    #[test]
    fn peers_are_the_other_nodes_with_a_range_and_an_address() {
        let found = peers(&cluster(), "a");
        let names: Vec<&str> = found.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b", "c", "d"]);
        assert_eq!(
            found[0],
            Peer {
                name: "b".into(),
                pod_cidr: (Ipv4Addr::new(10, 42, 2, 0), 24),
                node_ip: Ipv4Addr::new(10, 0, 0, 2),
                vtep_mac: Some(MAC_B),
            }
        );
        assert_eq!(found[1].vtep_mac, Some(MAC_C), "upper-case MACs are read too");
        assert_eq!(found[2].vtep_mac, None);

        let plural = Arc::new(json!({
            "metadata": {"name": "h", "annotations": {ANNOTATION_NODE_IP: "10.0.0.8"}},
            "spec": {"podCIDRs": ["fd00::/64", "10.42.8.0/24"]},
        }));
        assert_eq!(peers(&[plural], "a")[0].pod_cidr, (Ipv4Addr::new(10, 42, 8, 0), 24), "podCIDRs' IPv4 range");
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("0e:b7:0a:00:00:02"), Some(MAC_B));
        for bad in
            ["", "0e:b7:0a:00:00", "0e:b7:0a:00:00:02:03", "0e:b7:0a:00:00:2", "0e:b7:0a:00:00:zz", "0eb70a000002"]
        {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn backends_parse_as_k3s_spells_them() {
        for b in [Backend::Vxlan, Backend::HostGw, Backend::None] {
            assert_eq!(b.to_string().parse::<Backend>().unwrap(), b);
        }
        let err = "wireguard-native".parse::<Backend>().unwrap_err().to_string();
        assert!(err.contains("vxlan, host-gw or none"), "{err}");
    }

    #[test]
    fn vxlan_wants_a_route_neighbour_and_fdb_entry_per_peer_with_a_mac() {
        let want = desired(Backend::Vxlan, &peers(&cluster(), "a"));
        let ip = Ipv4Addr::new;
        assert_eq!(
            want.routes,
            BTreeSet::from([
                Route { dst: ip(10, 42, 2, 0), bits: 24, via: ip(10, 42, 2, 0), vxlan: true },
                Route { dst: ip(10, 42, 3, 0), bits: 24, via: ip(10, 42, 3, 0), vxlan: true },
            ])
        );
        assert_eq!(
            want.neighbours,
            BTreeSet::from([
                Neighbour { ip: ip(10, 42, 2, 0), mac: MAC_B },
                Neighbour { ip: ip(10, 42, 3, 0), mac: MAC_C }
            ])
        );
        assert_eq!(
            want.fdb,
            BTreeSet::from([
                FdbEntry { mac: MAC_B, dst: ip(10, 0, 0, 2) },
                FdbEntry { mac: MAC_C, dst: ip(10, 0, 0, 3) }
            ])
        );
    }

    #[test]
    fn host_gw_wants_a_route_via_each_node() {
        let want = desired(Backend::HostGw, &peers(&cluster(), "a"));
        let ip = Ipv4Addr::new;
        assert_eq!(
            want.routes,
            BTreeSet::from([
                Route { dst: ip(10, 42, 2, 0), bits: 24, via: ip(10, 0, 0, 2), vxlan: false },
                Route { dst: ip(10, 42, 3, 0), bits: 24, via: ip(10, 0, 0, 3), vxlan: false },
                Route { dst: ip(10, 42, 4, 0), bits: 24, via: ip(10, 0, 0, 4), vxlan: false },
            ])
        );
        assert!(want.neighbours.is_empty() && want.fdb.is_empty());
        assert_eq!(desired(Backend::None, &peers(&cluster(), "a")), Desired::default());
    }

    /// The kernel as far as the overlay sees it: one route per destination (as in the main
    /// table at one metric), one neighbour per address, one FDB destination per MAC;
    /// adding over an existing key fails as `EEXIST` does for routes, and replaces for
    /// neighbours and FDB entries (the real platform asks the kernel to replace).
    #[derive(Default)]
    struct Kernel {
        /// `(dst, bits)` -> route and its protocol number.
        routes: BTreeMap<(Ipv4Addr, u8), (Route, u8)>,
        neighbours: BTreeMap<Ipv4Addr, [u8; 6]>,
        fdb: BTreeMap<[u8; 6], Ipv4Addr>,
    }

    #[derive(Default)]
    struct Fake(Mutex<Kernel>);

    impl Fake {
        fn kernel(&self) -> std::sync::MutexGuard<'_, Kernel> {
            self.0.lock().unwrap()
        }
    }

    impl Platform for Fake {
        async fn routes(&self) -> anyhow::Result<Vec<Route>> {
            Ok(self.kernel().routes.values().filter(|(_, proto)| *proto == ROUTE_PROTOCOL).map(|(r, _)| *r).collect())
        }
        async fn add_route(&self, route: Route) -> anyhow::Result<()> {
            let mut k = self.kernel();
            anyhow::ensure!(!k.routes.contains_key(&(route.dst, route.bits)), "adding {route:?}: File exists");
            k.routes.insert((route.dst, route.bits), (route, ROUTE_PROTOCOL));
            Ok(())
        }
        async fn del_route(&self, route: Route) -> anyhow::Result<()> {
            let mut k = self.kernel();
            if k.routes.get(&(route.dst, route.bits)) == Some(&(route, ROUTE_PROTOCOL)) {
                k.routes.remove(&(route.dst, route.bits));
            }
            Ok(())
        }
        async fn neighbours(&self) -> anyhow::Result<Vec<Neighbour>> {
            Ok(self.kernel().neighbours.iter().map(|(&ip, &mac)| Neighbour { ip, mac }).collect())
        }
        async fn add_neighbour(&self, n: Neighbour) -> anyhow::Result<()> {
            self.kernel().neighbours.insert(n.ip, n.mac);
            Ok(())
        }
        async fn del_neighbour(&self, n: Neighbour) -> anyhow::Result<()> {
            self.kernel().neighbours.remove(&n.ip);
            Ok(())
        }
        async fn fdb(&self) -> anyhow::Result<Vec<FdbEntry>> {
            Ok(self.kernel().fdb.iter().map(|(&mac, &dst)| FdbEntry { mac, dst }).collect())
        }
        async fn add_fdb(&self, e: FdbEntry) -> anyhow::Result<()> {
            self.kernel().fdb.insert(e.mac, e.dst);
            Ok(())
        }
        async fn del_fdb(&self, e: FdbEntry) -> anyhow::Result<()> {
            let mut k = self.kernel();
            if k.fdb.get(&e.mac) == Some(&e.dst) {
                k.fdb.remove(&e.mac);
            }
            Ok(())
        }
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    /// A route someone else made (a static route of the operator's, DHCP's default).
    fn foreign(k: &mut Kernel, dst: Ipv4Addr, bits: u8, via: Ipv4Addr) {
        k.routes.insert((dst, bits), (Route { dst, bits, via, vxlan: false }, 4));
    }

    #[test]
    fn reconcile_adds_then_holds_still() {
        let fake = Fake::default();
        foreign(&mut fake.kernel(), Ipv4Addr::UNSPECIFIED, 0, Ipv4Addr::new(10, 0, 0, 254));
        let want = desired(Backend::Vxlan, &peers(&cluster(), "a"));
        let changes = run(reconcile(&fake, &want)).unwrap();
        assert_eq!(changes, Changes { routes_added: 2, neighbours_added: 2, fdb_added: 2, ..Changes::default() });
        let k = fake.kernel();
        assert_eq!(k.neighbours.get(&Ipv4Addr::new(10, 42, 2, 0)), Some(&MAC_B));
        assert_eq!(k.fdb.get(&MAC_C), Some(&Ipv4Addr::new(10, 0, 0, 3)));
        assert_eq!(k.routes.len(), 3, "the default route is still there");
        drop(k);
        let again = run(reconcile(&fake, &want)).unwrap();
        assert!(!again.any(), "a second run changes nothing: {again:?}");
    }

    #[test]
    fn a_deleted_node_takes_its_entries_along() {
        let fake = Fake::default();
        run(reconcile(&fake, &desired(Backend::Vxlan, &peers(&cluster(), "a")))).unwrap();
        let without_c: Vec<_> = cluster().into_iter().filter(|n| n["metadata"]["name"] != "c").collect();
        let changes = run(reconcile(&fake, &desired(Backend::Vxlan, &peers(&without_c, "a")))).unwrap();
        assert_eq!(changes, Changes { routes_deleted: 1, neighbours_deleted: 1, fdb_deleted: 1, ..Changes::default() });
        let k = fake.kernel();
        assert!(!k.routes.contains_key(&(Ipv4Addr::new(10, 42, 3, 0), 24)));
        assert!(!k.neighbours.contains_key(&Ipv4Addr::new(10, 42, 3, 0)));
        assert!(!k.fdb.contains_key(&MAC_C));
        assert_eq!(k.fdb.get(&MAC_B), Some(&Ipv4Addr::new(10, 0, 0, 2)), "the others stay");
    }

    #[test]
    fn a_node_that_moved_is_followed() {
        let fake = Fake::default();
        run(reconcile(&fake, &desired(Backend::Vxlan, &peers(&cluster(), "a")))).unwrap();
        let mut moved = cluster();
        moved[1] = node("b", Some("10.42.2.0/24"), Some("192.168.7.2"), Some("0e:b7:0a:00:00:02"));
        let changes = run(reconcile(&fake, &desired(Backend::Vxlan, &peers(&moved, "a")))).unwrap();
        assert_eq!(changes, Changes { fdb_deleted: 1, fdb_added: 1, ..Changes::default() });
        assert_eq!(fake.kernel().fdb.get(&MAC_B), Some(&Ipv4Addr::new(192, 168, 7, 2)));

        // host-gw: the route's gateway follows.
        let fake = Fake::default();
        run(reconcile(&fake, &desired(Backend::HostGw, &peers(&cluster(), "a")))).unwrap();
        let changes = run(reconcile(&fake, &desired(Backend::HostGw, &peers(&moved, "a")))).unwrap();
        assert_eq!(changes, Changes { routes_deleted: 1, routes_added: 1, ..Changes::default() });
        let (route, _) = fake.kernel().routes[&(Ipv4Addr::new(10, 42, 2, 0), 24)];
        assert_eq!(route.via, Ipv4Addr::new(192, 168, 7, 2));
    }

    #[test]
    fn foreign_routes_are_never_touched() {
        let fake = Fake::default();
        // Someone else's route to b's range, and an unrelated one.
        foreign(&mut fake.kernel(), Ipv4Addr::new(10, 42, 2, 0), 24, Ipv4Addr::new(10, 0, 0, 99));
        foreign(&mut fake.kernel(), Ipv4Addr::new(172, 16, 0, 0), 12, Ipv4Addr::new(10, 0, 0, 254));
        let err = run(reconcile(&fake, &desired(Backend::HostGw, &peers(&cluster(), "a")))).unwrap_err();
        assert!(format!("{err:#}").contains("1 overlay change(s) failed"), "{err:#}");
        let k = fake.kernel();
        assert_eq!(k.routes[&(Ipv4Addr::new(10, 42, 2, 0), 24)].1, 4, "the conflicting route is left alone");
        assert!(k.routes.contains_key(&(Ipv4Addr::new(10, 42, 3, 0), 24)), "the others were still added");
        drop(k);
        // Switching the overlay off removes ours only.
        let changes = run(reconcile(&fake, &Desired::default())).unwrap();
        assert_eq!(changes, Changes { routes_deleted: 2, ..Changes::default() });
        let left: Vec<_> = fake.kernel().routes.values().map(|(_, proto)| *proto).collect();
        assert_eq!(left, [4, 4]);
    }

    #[test]
    fn switching_backend_replaces_the_entries() {
        let fake = Fake::default();
        let nodes = cluster();
        run(reconcile(&fake, &desired(Backend::Vxlan, &peers(&nodes, "a")))).unwrap();
        let changes = run(reconcile(&fake, &desired(Backend::HostGw, &peers(&nodes, "a")))).unwrap();
        assert_eq!(
            changes,
            Changes { routes_deleted: 2, routes_added: 3, neighbours_deleted: 2, fdb_deleted: 2, ..Changes::default() }
        );
    }
}
