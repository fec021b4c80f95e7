//! The pod network of one node: a bridge, `bramble0`, holding the node's gateway address
//! (`.1` of the node's `podCIDR`), and per pod a veth pair whose inner end is the pod's
//! `eth0` with an address from a host-local allocator (one file per address, created
//! exclusively, as the CNI host-local plugin keeps them). Pods reach each other through the
//! bridge and the node through the gateway. Routing between nodes, Services and DNS build
//! on this later.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures_util::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// The node's bridge.
pub const BRIDGE: &str = "bramble0";

/// A node's pod range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PodCidr {
    pub net: Ipv4Addr,
    pub bits: u8,
}

impl PodCidr {
    /// Parses `10.42.3.0/24`.
    pub fn parse(s: &str) -> Option<PodCidr> {
        let (ip, bits) = s.split_once('/')?;
        let bits: u8 = bits.parse().ok().filter(|b| (8..=30).contains(b))?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let mask = u32::MAX << (32 - bits);
        Some(PodCidr { net: Ipv4Addr::from(u32::from(ip) & mask), bits })
    }

    /// The bridge's address, the pods' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) + 1)
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.bits)
    }
}

async fn connect() -> anyhow::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn link_index(handle: &Handle, name: &str) -> anyhow::Result<Option<u32>> {
    match handle.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up {name}")),
    }
}

fn exists_ok(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        other => other,
    }
}

/// Creates (or finds) the bridge with the gateway address, up, and turns on forwarding.
pub async fn ensure_bridge(cidr: PodCidr) -> anyhow::Result<()> {
    let handle = connect().await?;
    let index = match link_index(&handle, BRIDGE).await? {
        Some(i) => i,
        None => {
            exists_ok(handle.link().add(LinkBridge::new(BRIDGE).build()).execute().await)
                .with_context(|| format!("creating the bridge {BRIDGE}"))?;
            link_index(&handle, BRIDGE).await?.with_context(|| format!("the bridge {BRIDGE} vanished"))?
        }
    };
    exists_ok(handle.address().add(index, cidr.gateway().into(), cidr.bits).execute().await)
        .with_context(|| format!("giving {BRIDGE} the address {}/{}", cidr.gateway(), cidr.bits))?;
    // A fixed address: left alone, a bridge takes the lowest of its ports' addresses and
    // changes it whenever a pod's veth comes or goes, and every pod's cached gateway
    // address then leads nowhere until its neighbour entry is probed again (seconds of
    // lost replies on a node where pods come and go).
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).address(bridge_mac(cidr).to_vec()).up().build())
        .execute()
        .await
        .with_context(|| format!("giving {BRIDGE} its address and bringing it up"))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/net/ipv4/ip_forward")
        .and_then(|mut f| f.write_all(b"1"))
        .context("turning on IPv4 forwarding")?;
    Ok(())
}

/// The bridge's MAC address, made from its gateway address: locally administered, unicast,
/// and the same across restarts, so pods keep a valid gateway entry through an agent restart.
pub fn bridge_mac(cidr: PodCidr) -> [u8; 6] {
    let [a, b, c, d] = cidr.gateway().octets();
    [0x0e, 0xb8, a, b, c, d]
}

/// Deletes the bridge (when the node is wiped: `bramble killall`).
pub async fn remove_bridge() -> anyhow::Result<()> {
    let handle = connect().await?;
    if let Some(index) = link_index(&handle, BRIDGE).await? {
        handle.link().del(index).execute().await.with_context(|| format!("deleting {BRIDGE}"))?;
    }
    Ok(())
}

/// The file naming the address handed out last (the CNI host-local plugin's
/// `last_reserved_ip`); not an address, so `lookup` never mistakes it for a holder.
const LAST_RESERVED: &str = "last_reserved_ip";

/// The host-local address allocator of one node.
pub struct Ipam {
    dir: PathBuf,
    cidr: PodCidr,
}

impl Ipam {
    /// The allocator keeping its records in `dir` for `cidr`.
    pub fn new(dir: &Path, cidr: PodCidr) -> Ipam {
        Ipam { dir: dir.to_path_buf(), cidr }
    }

    /// The address of pod `uid`: the one it already holds, or the next free one after the
    /// last one handed out (round robin, as the CNI host-local plugin): an address just
    /// freed is not given again at once, so neighbour caches, conntrack entries and clients
    /// still holding it meet no new pod.
    pub fn allocate(&self, uid: &str) -> anyhow::Result<Ipv4Addr> {
        if let Some(ip) = self.lookup(uid) {
            return Ok(ip);
        }
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let base = u32::from(self.cidr.net);
        let (first, last) = (2, self.cidr.size() - 2);
        let after =
            self.last_reserved().map(|ip| u32::from(ip).wrapping_sub(base)).filter(|h| (first..=last).contains(h));
        let start = after.map_or(first, |h| if h == last { first } else { h + 1 });
        for host in (start..=last).chain(first..start) {
            let ip = Ipv4Addr::from(base + host);
            match std::fs::OpenOptions::new().write(true).create_new(true).open(self.dir.join(ip.to_string())) {
                Ok(mut f) => {
                    f.write_all(uid.as_bytes()).context("recording an address")?;
                    self.remember(ip)?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).context("recording an address"),
            }
        }
        bail!("no free address left in the node's pod range {}/{}", self.cidr.net, self.cidr.bits)
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        std::fs::read_to_string(self.dir.join(LAST_RESERVED)).ok()?.trim().parse().ok()
    }

    fn remember(&self, ip: Ipv4Addr) -> anyhow::Result<()> {
        // Written whole then renamed: a torn file would only restart the scan at the
        // bottom, but a rename costs nothing here.
        let tmp = self.dir.join(format!("{LAST_RESERVED}.tmp"));
        std::fs::write(&tmp, ip.to_string()).context("recording the last address handed out")?;
        std::fs::rename(&tmp, self.dir.join(LAST_RESERVED)).context("recording the last address handed out")
    }

    /// The address pod `uid` holds, if any.
    pub fn lookup(&self, uid: &str) -> Option<Ipv4Addr> {
        std::fs::read_dir(&self.dir).ok()?.flatten().find_map(|e| {
            let holder = std::fs::read_to_string(e.path()).ok()?;
            (holder == uid).then(|| e.file_name().to_str()?.parse().ok()).flatten()
        })
    }

    /// Frees what pod `uid` holds.
    pub fn release(&self, uid: &str) {
        if let Some(ip) = self.lookup(uid)
            && let Err(e) = std::fs::remove_file(self.dir.join(ip.to_string()))
        {
            // The address stays taken until the node is wiped; the pod is gone anyway.
            tracing::warn!(%ip, error = %e, "could not free a pod's address");
        }
    }
}

/// The host end's name for pod `uid` (at most 15 bytes, as interface names must be).
pub fn host_veth(uid: &str) -> String {
    let hex: String = uid.chars().filter(char::is_ascii_hexdigit).take(10).collect();
    format!("veth{hex}")
}

/// Inside the pod's namespace: creates the veth pair, configures `eth0`, and sends the
/// other end to the host namespace `host_ns`.
async fn inside(ip: Ipv4Addr, cidr: PodCidr, mtu: u32, host_if: &str, host_ns: i32) -> anyhow::Result<()> {
    let handle = connect().await?;
    if link_index(&handle, "eth0").await?.is_some() {
        return Ok(());
    }
    handle.link().add(LinkVeth::new("eth0", host_if).build()).execute().await.context("creating the veth pair")?;
    let eth0 = link_index(&handle, "eth0").await?.context("eth0 vanished")?;
    handle.address().add(eth0, ip.into(), cidr.bits).execute().await.context("addressing eth0")?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(eth0).mtu(mtu).up().build())
        .execute()
        .await
        .context("bringing eth0 up")?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(cidr.gateway()).build();
    handle.route().add(route).execute().await.context("adding the default route")?;
    let peer = link_index(&handle, host_if).await?.context("the host end vanished")?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(peer).mtu(mtu).setns_by_fd(host_ns).build())
        .execute()
        .await
        .context("moving the host end out of the pod")?;
    Ok(())
}

/// Gives the pod whose network namespace is bound at `ns_file` its `eth0` with `ip`, and
/// plugs the host end into the bridge; both ends get `mtu`.
pub async fn attach(ns_file: &Path, uid: &str, ip: Ipv4Addr, cidr: PodCidr, mtu: u32) -> anyhow::Result<()> {
    let host_if = host_veth(uid);
    let ns_file = ns_file.to_path_buf();
    let name = host_if.clone();
    // setns affects only the calling thread: a thread of its own, with its own small
    // runtime, does the work inside the pod.
    let joined = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let host = std::fs::File::open("/proc/thread-self/ns/net").context("opening the host network namespace")?;
        let pod = std::fs::File::open(&ns_file).with_context(|| format!("opening {}", ns_file.display()))?;
        std::thread::scope(|s| {
            s.spawn(|| -> anyhow::Result<()> {
                // SAFETY: a valid namespace descriptor; affects only this thread.
                if unsafe { libc::setns(pod.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("entering the pod's network namespace");
                }
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(inside(ip, cidr, mtu, &name, host.as_raw_fd()))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the network thread panicked"))?
        })
    })
    .await
    .context("the network thread")?;
    joined?;
    let handle = connect().await?;
    let bridge = link_index(&handle, BRIDGE).await?.with_context(|| format!("{BRIDGE} is missing"))?;
    let Some(port) = link_index(&handle, &host_if).await? else {
        // Already plugged earlier (an adopted pod): nothing to do.
        return Ok(());
    };
    handle
        .link()
        .set(LinkUnspec::new_with_index(port).controller(bridge).up().build())
        .execute()
        .await
        .with_context(|| format!("plugging {host_if} into {BRIDGE}"))?;
    // Hairpin: a pod reaching itself through its Service is DNATed back to the port the
    // frame came in on (with br_netfilter the bridge does that itself), which a bridge
    // refuses unless the port allows it (the CNI bridge plugin's `hairpinMode`).
    handle
        .link()
        .set_port(LinkBridgePort::new(port).hairpin(true).build())
        .execute()
        .await
        .with_context(|| format!("turning on hairpin mode on {host_if}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_allocated_once_per_pod_and_released() {
        let dir = std::env::temp_dir().join(format!("bramble-ipam-{}", std::process::id()));
        let ipam = Ipam::new(&dir, PodCidr::parse("10.42.7.0/24").unwrap());
        let a = ipam.allocate("pod-a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 42, 7, 2));
        assert_eq!(ipam.allocate("pod-a").unwrap(), a, "the same pod keeps its address");
        assert_eq!(ipam.allocate("pod-b").unwrap(), Ipv4Addr::new(10, 42, 7, 3));
        ipam.release("pod-a");
        assert_eq!(
            ipam.allocate("pod-c").unwrap(),
            Ipv4Addr::new(10, 42, 7, 4),
            "a just-released address waits its turn"
        );
        assert_eq!(ipam.lookup("pod-c"), Some(Ipv4Addr::new(10, 42, 7, 4)));
        assert_eq!(host_veth("5ec60aa8-891d-4419"), "veth5ec60aa889");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_bridge_mac_is_local_unicast_and_follows_the_gateway() {
        let mac = bridge_mac(PodCidr::parse("10.42.3.0/24").unwrap());
        assert_eq!(mac, [0x0e, 0xb8, 10, 42, 3, 1]);
        assert_eq!(mac[0] & 0b11, 0b10, "locally administered, not multicast");
    }

    #[test]
    fn allocation_wraps_around_to_the_freed_addresses() {
        let dir = std::env::temp_dir().join(format!("bramble-ipam-wrap-{}", std::process::id()));
        // A /29: hosts .2 to .6 are pods' (.0 the network, .1 the gateway, .7 broadcast).
        let ipam = Ipam::new(&dir, PodCidr::parse("10.42.9.0/29").unwrap());
        let got: Vec<_> = (0..5).map(|i| ipam.allocate(&format!("p{i}")).unwrap().octets()[3]).collect();
        assert_eq!(got, [2, 3, 4, 5, 6]);
        assert!(ipam.allocate("p5").is_err(), "the range is full");
        ipam.release("p1");
        ipam.release("p3");
        assert_eq!(ipam.allocate("p6").unwrap(), Ipv4Addr::new(10, 42, 9, 3), "wrapped to the first free");
        assert_eq!(ipam.allocate("p7").unwrap(), Ipv4Addr::new(10, 42, 9, 5));
        std::fs::write(dir.join(LAST_RESERVED), "garbage").unwrap();
        ipam.release("p0");
        assert_eq!(
            ipam.allocate("p8").unwrap(),
            Ipv4Addr::new(10, 42, 9, 2),
            "an unreadable record restarts at the bottom"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
