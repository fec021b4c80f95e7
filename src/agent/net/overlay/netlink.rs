//! The overlay on a real kernel, over rtnetlink: finding the node's address, making the
//! vxlan device, the [`Platform`] that lists and changes our routes, neighbours and FDB
//! entries, and removing it all again. One `ioctl` (ethtool) turns off the device's tx
//! checksum offload.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use anyhow::{Context, bail};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use tokio::sync::OnceCell;

use super::{
    Backend, FdbEntry, Neighbour, Platform, ROUTE_PROTOCOL, Route, VNI, VXLAN_DEVICE, VXLAN_OVERHEAD, VXLAN_PORT,
};

async fn connect() -> anyhow::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The errno of a netlink error, if the kernel sent one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// Deleting what is already gone (`ESRCH` for routes, `ENOENT` for neighbours) is done.
fn gone_ok(result: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match result {
        Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::ESRCH | libc::ENODEV)) => Ok(()),
        other => other,
    }
}

async fn link_by_name(handle: &Handle, name: &str) -> anyhow::Result<Option<LinkMessage>> {
    match handle.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(found) => Ok(found),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up the interface {name}")),
    }
}

async fn link_name(handle: &Handle, index: u32) -> anyhow::Result<String> {
    let link = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .with_context(|| format!("looking up interface {index}"))?
        .with_context(|| format!("interface {index} vanished"))?;
    link.attributes
        .into_iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name),
            _ => None,
        })
        .with_context(|| format!("interface {index} has no name"))
}

fn mac_of(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => bytes.as_slice().try_into().ok(),
        _ => None,
    })
}

/// One IPv4 address of this machine.
#[derive(Debug)]
struct HostAddr {
    index: u32,
    ip: Ipv4Addr,
    secondary: bool,
}

fn address_of(m: &AddressMessage) -> Option<Ipv4Addr> {
    let find = |local: bool| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) if local => Some(*ip),
            AddressAttribute::Address(IpAddr::V4(ip)) if !local => Some(*ip),
            _ => None,
        })
    };
    find(true).or_else(|| find(false))
}

async fn ipv4_addresses(handle: &Handle) -> anyhow::Result<Vec<HostAddr>> {
    let mut found = Vec::new();
    let mut dump = handle.address().get().execute();
    while let Some(m) = dump.try_next().await.context("listing the machine's addresses")? {
        if m.header.family != AddressFamily::Inet {
            continue;
        }
        if let Some(ip) = address_of(&m) {
            let secondary = m.header.flags.contains(AddressHeaderFlags::Secondary);
            found.push(HostAddr { index: m.header.index, ip, secondary });
        }
    }
    Ok(found)
}

/// An interface's primary IPv4 address: the first not marked secondary, in the kernel's
/// order.
fn first_address(addrs: &[HostAddr], index: u32) -> Option<Ipv4Addr> {
    addrs.iter().filter(|a| a.index == index).min_by_key(|a| a.secondary).map(|a| a.ip)
}

fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn dump_routes(handle: &Handle) -> impl futures_util::Stream<Item = Result<RouteMessage, rtnetlink::Error>> + use<> {
    handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute()
}

/// The interface of the IPv4 default route in the main table (the lowest metric's).
async fn default_route_interface(handle: &Handle) -> anyhow::Result<Option<u32>> {
    let mut best: Option<(u32, u32)> = None;
    let mut dump = dump_routes(handle);
    while let Some(m) = dump.try_next().await.context("listing routes")? {
        if m.header.address_family != AddressFamily::Inet
            || m.header.destination_prefix_length != 0
            || route_table(&m) != u32::from(RouteHeader::RT_TABLE_MAIN)
        {
            continue;
        }
        let (mut oif, mut metric) = (None, 0);
        for a in &m.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Priority(p) => metric = *p,
                _ => {}
            }
        }
        if let Some(oif) = oif
            && best.is_none_or(|(m, _)| metric < m)
        {
            best = Some((metric, oif));
        }
    }
    Ok(best.map(|(_, oif)| oif))
}

/// The address other nodes reach this one at, and its interface: `--node-ip` (its
/// interface found, or `--flannel-iface` if also given), else the primary IPv4 address of
/// `--flannel-iface`, else that of the default route's interface (k3s's order).
pub async fn node_ip(flag_node_ip: Option<Ipv4Addr>, flag_iface: Option<&str>) -> anyhow::Result<(Ipv4Addr, String)> {
    let handle = connect().await?;
    let addrs = ipv4_addresses(&handle).await?;
    if let Some(ip) = flag_node_ip {
        let Some(found) = addrs.iter().find(|a| a.ip == ip) else {
            let have: Vec<String> = addrs.iter().map(|a| a.ip.to_string()).collect();
            bail!("--node-ip {ip} is not an address of this machine: pass one of {}", have.join(", "));
        };
        let iface = match flag_iface {
            Some(name) => name.to_string(),
            None => link_name(&handle, found.index).await?,
        };
        return Ok((ip, iface));
    }
    let (index, iface) = match flag_iface {
        Some(name) => {
            let link = link_by_name(&handle, name)
                .await?
                .with_context(|| format!("--flannel-iface {name}: there is no such interface"))?;
            (link.header.index, name.to_string())
        }
        None => {
            let index = default_route_interface(&handle).await?.context(
                "this machine has no IPv4 default route to take the node's address from: \
                 pass --node-ip or --flannel-iface",
            )?;
            (index, link_name(&handle, index).await?)
        }
    };
    let ip = first_address(&addrs, index)
        .with_context(|| format!("{iface} has no IPv4 address: pass --node-ip or another --flannel-iface"))?;
    Ok((ip, iface))
}

/// The VTEP MAC of the node at `ip`: derived from the address, so it stays the same across
/// restarts and recreations of the device (peers' neighbour entries stay right), and is
/// unique within a cluster. `0e` is a locally administered unicast first octet.
fn vtep_mac(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x0e, 0xb7, a, b, c, d]
}

/// What a vxlan device is made with; a device that differs is recreated.
#[derive(Debug, PartialEq)]
struct VxlanConfig {
    vni: u32,
    port: u16,
    local: Ipv4Addr,
    /// The underlying interface's index.
    link: u32,
    learning: bool,
    mac: [u8; 6],
}

impl VxlanConfig {
    /// The configuration of `link`, if it is a vxlan device.
    fn of(link: &LinkMessage) -> Option<VxlanConfig> {
        let info = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(info) => Some(info),
            _ => None,
        })?;
        if !info.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan))) {
            return None;
        }
        let data = info.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
            _ => None,
        })?;
        let mut config =
            VxlanConfig { vni: 0, port: 0, local: Ipv4Addr::UNSPECIFIED, link: 0, learning: true, mac: mac_of(link)? };
        for d in data {
            match d {
                InfoVxlan::Id(vni) => config.vni = *vni,
                InfoVxlan::Port(port) => config.port = *port,
                InfoVxlan::Local(ip) => config.local = *ip,
                InfoVxlan::Link(index) => config.link = *index,
                InfoVxlan::Learning(on) => config.learning = *on,
                _ => {}
            }
        }
        Some(config)
    }
}

/// Creates the vxlan device, returning its index. A kernel without vxlan is told apart:
/// the operator must choose host-gw (we do not switch behind their back).
async fn create_vxlan(handle: &Handle, want: &VxlanConfig, mtu: u32) -> anyhow::Result<u32> {
    let msg = LinkVxlan::new(VXLAN_DEVICE, want.vni)
        .dev(want.link)
        .port(want.port)
        .local(want.local)
        .learning(want.learning)
        .mtu(mtu)
        .address(want.mac.to_vec())
        .build();
    match handle.link().add(msg).execute().await {
        Ok(()) => {}
        // ENOTSUP is EOPNOTSUPP on Linux; EAFNOSUPPORT/EPROTONOSUPPORT come from kernels
        // built without UDP tunnel support.
        Err(e) if matches!(errno(&e), Some(libc::EOPNOTSUPP | libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT)) => {
            return Err(e).context(
                "this kernel cannot make vxlan devices (no vxlan module): start bramble with \
                 --flannel-backend=host-gw (the nodes must then share one L2 segment), or install \
                 the kernel's vxlan module",
            );
        }
        Err(e) if errno(&e) == Some(libc::EEXIST) => {
            return Err(e).context(format!(
                "another vxlan device already uses VNI {VNI} on UDP port {VXLAN_PORT} (flannel.1 of an \
                 earlier k3s?): delete it (ip link del flannel.1), or start with --flannel-backend=host-gw"
            ));
        }
        Err(e) => return Err(e).with_context(|| format!("creating {VXLAN_DEVICE}")),
    }
    let link = link_by_name(handle, VXLAN_DEVICE).await?.with_context(|| format!("{VXLAN_DEVICE} vanished"))?;
    Ok(link.header.index)
}

/// Gives the device exactly `ip/32` (flannel gives `flannel.1` the range's `.0`): the
/// source address of packets the node itself sends into the overlay.
async fn set_address(handle: &Handle, index: u32, ip: Ipv4Addr) -> anyhow::Result<()> {
    let mut have = false;
    let mut stale = Vec::new();
    let mut dump = handle.address().get().set_link_index_filter(index).execute();
    while let Some(m) = dump.try_next().await.with_context(|| format!("listing the addresses of {VXLAN_DEVICE}"))? {
        if m.header.family != AddressFamily::Inet || m.header.index != index {
            continue;
        }
        if address_of(&m) == Some(ip) && m.header.prefix_len == 32 {
            have = true;
        } else {
            stale.push(m);
        }
    }
    for m in stale {
        let old = address_of(&m);
        tracing::info!(device = VXLAN_DEVICE, ?old, "removing an old address");
        handle.address().del(m).execute().await.with_context(|| format!("removing {old:?} from {VXLAN_DEVICE}"))?;
    }
    if !have {
        handle
            .address()
            .add(index, ip.into(), 32)
            .execute()
            .await
            .with_context(|| format!("giving {VXLAN_DEVICE} the address {ip}/32"))?;
    }
    Ok(())
}

/// What [`setup`] made: the VTEP MAC to publish in the Node (vxlan only), and the MTU pods
/// must use so that what they send still fits a packet on the wire once encapsulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    pub mac: Option<[u8; 6]>,
    pub pod_mtu: u32,
}

/// Makes the node's overlay device for `backend` and says what it made ([`Setup`]): for vxlan, [`VXLAN_DEVICE`] over `iface` from `node_ip`, created or kept
/// (recreated when its parameters differ, e.g. the node's address changed), with the `.0`
/// of `pod_cidr`. For host-gw and none there is no device (one left by an earlier vxlan
/// run is removed) and no MAC.
pub async fn setup(
    backend: Backend,
    node_ip: Ipv4Addr,
    iface: &str,
    pod_cidr: (Ipv4Addr, u8),
) -> anyhow::Result<Setup> {
    let handle = connect().await?;
    let existing = link_by_name(&handle, VXLAN_DEVICE).await?;
    let under = link_by_name(&handle, iface).await?.with_context(|| format!("there is no interface {iface}"))?;
    let under_mtu = under
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
        .with_context(|| format!("{iface} reports no MTU"))?;
    if backend != Backend::Vxlan {
        if let Some(dev) = existing {
            tracing::info!(device = VXLAN_DEVICE, %backend, "removing the vxlan device of an earlier backend");
            handle.link().del(dev.header.index).execute().await.with_context(|| format!("deleting {VXLAN_DEVICE}"))?;
        }
        return Ok(Setup { mac: None, pod_mtu: under_mtu });
    }

    let mtu = under_mtu.checked_sub(VXLAN_OVERHEAD).filter(|m| *m >= 68).with_context(|| {
        format!("{iface}'s MTU {under_mtu} leaves no room for vxlan: use --flannel-backend=host-gw")
    })?;
    let want = VxlanConfig {
        vni: VNI,
        port: VXLAN_PORT,
        local: node_ip,
        link: under.header.index,
        learning: false,
        mac: vtep_mac(node_ip),
    };
    let index = match existing {
        Some(dev) if VxlanConfig::of(&dev).as_ref() == Some(&want) => dev.header.index,
        Some(dev) => {
            tracing::info!(device = VXLAN_DEVICE, had = ?VxlanConfig::of(&dev), ?want, "recreating the vxlan device");
            handle
                .link()
                .del(dev.header.index)
                .execute()
                .await
                .with_context(|| format!("deleting the old {VXLAN_DEVICE}"))?;
            create_vxlan(&handle, &want, mtu).await?
        }
        None => create_vxlan(&handle, &want, mtu).await?,
    };
    set_address(&handle, index, pod_cidr.0).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
        .execute()
        .await
        .with_context(|| format!("bringing {VXLAN_DEVICE} up with MTU {mtu}"))?;
    if let Err(e) = set_tx_checksum(VXLAN_DEVICE, false) {
        tracing::warn!(
            error = %e,
            device = VXLAN_DEVICE,
            "cannot turn off tx checksum offload: some Raspberry Pi kernels then corrupt vxlan traffic (flannel #1279)"
        );
    }
    let dev = link_by_name(&handle, VXLAN_DEVICE).await?.with_context(|| format!("{VXLAN_DEVICE} vanished"))?;
    let mac = mac_of(&dev).with_context(|| format!("{VXLAN_DEVICE} has no MAC address"))?;
    Ok(Setup { mac: Some(mac), pod_mtu: mtu })
}

/// Removes the overlay (for `bramble killall`): our routes, then the vxlan device with its
/// neighbour and FDB entries.
pub async fn teardown() -> anyhow::Result<()> {
    let platform = Netlink::default();
    for route in platform.routes().await? {
        platform.del_route(route).await?;
    }
    let handle = platform.handle().await?;
    if let Some(dev) = link_by_name(handle, VXLAN_DEVICE).await? {
        handle.link().del(dev.header.index).execute().await.with_context(|| format!("deleting {VXLAN_DEVICE}"))?;
    }
    Ok(())
}

/// `struct ethtool_value` of `<linux/ethtool.h>`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `ETHTOOL_STXCSUM`: turn tx checksum offload on or off.
const ETHTOOL_STXCSUM: u32 = 0x17;

/// One ethtool command with a single value on device `dev` of the calling thread's network
/// namespace; returns the value the kernel left.
fn ethtool_value(dev: &str, cmd: u32, data: u32) -> std::io::Result<u32> {
    if dev.len() >= libc::IFNAMSIZ || dev.as_bytes().contains(&0) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad interface name {dev:?}")));
    }
    // Any AF_INET socket carries the ioctl; std makes and closes one safely.
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers and
    // pointers), for which all zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in req.ifr_name.iter_mut().zip(dev.as_bytes()) {
        *to = *from as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: `req` holds a NUL-terminated name (checked shorter than IFNAMSIZ, zeroed
    // after) and points at `value`, a live `ethtool_value`, which is all SIOCETHTOOL with
    // a single-value command reads or writes; both outlive the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL as _, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value.data)
}

/// Turns tx checksum offload of `dev` on or off (`ethtool -K dev tx off`).
fn set_tx_checksum(dev: &str, on: bool) -> std::io::Result<()> {
    ethtool_value(dev, ETHTOOL_STXCSUM, u32::from(on)).map(drop)
}

/// Our routes, neighbours and FDB entries in the kernel, through one netlink connection
/// opened on first use (in the network namespace of the thread that first uses it).
#[derive(Default)]
pub struct Netlink {
    handle: OnceCell<Handle>,
}

impl Netlink {
    async fn handle(&self) -> anyhow::Result<&Handle> {
        self.handle.get_or_try_init(connect).await
    }

    /// The vxlan device's index, if it exists (looked up each time: it may be recreated).
    async fn device(&self) -> anyhow::Result<Option<u32>> {
        Ok(link_by_name(self.handle().await?, VXLAN_DEVICE).await?.map(|l| l.header.index))
    }

    async fn require_device(&self) -> anyhow::Result<u32> {
        self.device().await?.with_context(|| format!("{VXLAN_DEVICE} does not exist (the vxlan backend is not set up)"))
    }
}

/// The route in `m` if it is ours: IPv4, main table, [`ROUTE_PROTOCOL`].
fn owned_route(m: &RouteMessage, vxlan: Option<u32>) -> Option<Route> {
    if m.header.address_family != AddressFamily::Inet
        || u8::from(m.header.protocol) != ROUTE_PROTOCOL
        || route_table(m) != u32::from(RouteHeader::RT_TABLE_MAIN)
    {
        return None;
    }
    let (mut dst, mut via, mut oif) = (Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => via = *ip,
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    Some(Route { dst, bits: m.header.destination_prefix_length, via, vxlan: vxlan.is_some() && oif == vxlan })
}

/// The kernel's message for `route`; `vxlan` is the device's index for routes over it.
fn route_message(route: Route, vxlan: Option<u32>) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.dst, route.bits)
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL));
    if !route.via.is_unspecified() {
        builder = builder.gateway(route.via);
    }
    if let Some(index) = vxlan {
        builder = builder.output_interface(index).onlink();
    }
    builder.build()
}

fn neighbour_message(family: AddressFamily, index: u32) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m
}

fn lladdr(m: &NeighbourMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => bytes.as_slice().try_into().ok(),
        _ => None,
    })
}

/// The IPv4 destination of a neighbour or FDB entry (FDB dumps carry it unparsed).
fn neighbour_ip(m: &NeighbourMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
            <[u8; 4]>::try_from(bytes.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

impl Platform for Netlink {
    async fn routes(&self) -> anyhow::Result<Vec<Route>> {
        let vxlan = self.device().await?;
        let mut ours = Vec::new();
        let mut dump = dump_routes(self.handle().await?);
        while let Some(m) = dump.try_next().await.context("listing routes")? {
            ours.extend(owned_route(&m, vxlan));
        }
        Ok(ours)
    }

    async fn add_route(&self, route: Route) -> anyhow::Result<()> {
        let vxlan = if route.vxlan { Some(self.require_device().await?) } else { None };
        let hint = if route.vxlan { "" } else { " (host-gw needs every node on one L2 segment)" };
        self.handle()
            .await?
            .route()
            .add(route_message(route, vxlan))
            .execute()
            .await
            .with_context(|| format!("adding the route {}/{} via {}{hint}", route.dst, route.bits, route.via))
    }

    async fn del_route(&self, route: Route) -> anyhow::Result<()> {
        let vxlan = match (route.vxlan, self.device().await?) {
            (true, Some(index)) => Some(index),
            // Routes over the device went with it.
            (true, None) => return Ok(()),
            (false, _) => None,
        };
        gone_ok(self.handle().await?.route().del(route_message(route, vxlan)).execute().await)
            .with_context(|| format!("deleting the route {}/{} via {}", route.dst, route.bits, route.via))
    }

    async fn neighbours(&self) -> anyhow::Result<Vec<Neighbour>> {
        let Some(index) = self.device().await? else { return Ok(Vec::new()) };
        let mut ours = Vec::new();
        let mut dump = self.handle().await?.neighbours().get().set_address_family(AddressFamily::Inet).execute();
        while let Some(m) = dump.try_next().await.context("listing neighbours")? {
            if m.header.ifindex != index || m.header.state != NeighbourState::Permanent {
                continue;
            }
            if let (Some(ip), Some(mac)) = (neighbour_ip(&m), lladdr(&m)) {
                ours.push(Neighbour { ip, mac });
            }
        }
        Ok(ours)
    }

    async fn add_neighbour(&self, n: Neighbour) -> anyhow::Result<()> {
        let index = self.require_device().await?;
        // Replace: an entry the kernel made while resolving (incomplete, failed) may be there.
        self.handle()
            .await?
            .neighbours()
            .add(index, n.ip.into())
            .link_layer_address(&n.mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding the neighbour {} on {VXLAN_DEVICE}", n.ip))
    }

    async fn del_neighbour(&self, n: Neighbour) -> anyhow::Result<()> {
        let Some(index) = self.device().await? else { return Ok(()) };
        let mut m = neighbour_message(AddressFamily::Inet, index);
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(n.ip)));
        gone_ok(self.handle().await?.neighbours().del(m).execute().await)
            .with_context(|| format!("deleting the neighbour {} on {VXLAN_DEVICE}", n.ip))
    }

    async fn fdb(&self) -> anyhow::Result<Vec<FdbEntry>> {
        let Some(index) = self.device().await? else { return Ok(Vec::new()) };
        let mut ours = Vec::new();
        let mut dump = self.handle().await?.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
        while let Some(m) = dump.try_next().await.context("listing forwarding entries")? {
            if m.header.ifindex != index || m.header.state != NeighbourState::Permanent {
                continue;
            }
            // Entries without a destination are the device's own addresses.
            if let (Some(mac), Some(dst)) = (lladdr(&m), neighbour_ip(&m)) {
                ours.push(FdbEntry { mac, dst });
            }
        }
        Ok(ours)
    }

    async fn add_fdb(&self, e: FdbEntry) -> anyhow::Result<()> {
        let index = self.require_device().await?;
        // `self`: the entry belongs to the vxlan device, which is no bridge port. Replace:
        // the MAC's node moved.
        self.handle()
            .await?
            .neighbours()
            .add_bridge(index, &e.mac)
            .destination(e.dst.into())
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding the forwarding entry {} -> {}", format_mac(e.mac), e.dst))
    }

    async fn del_fdb(&self, e: FdbEntry) -> anyhow::Result<()> {
        let Some(index) = self.device().await? else { return Ok(()) };
        let mut m = neighbour_message(AddressFamily::Bridge, index);
        m.header.flags = NeighbourFlags::Own;
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(e.dst)));
        gone_ok(self.handle().await?.neighbours().del(m).execute().await)
            .with_context(|| format!("deleting the forwarding entry {} -> {}", format_mac(e.mac), e.dst))
    }
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::Value;

    use super::super::{ANNOTATION_NODE_IP, ANNOTATION_VTEP_MAC, Changes, desired, peers, reconcile};
    use super::*;

    /// `ETHTOOL_GTXCSUM`: read whether tx checksums are offloaded.
    const ETHTOOL_GTXCSUM: u32 = 0x16;

    #[test]
    fn only_our_main_table_routes_are_ours() {
        let vx = Some(7);
        let ours = route_message(
            Route { dst: Ipv4Addr::new(10, 42, 2, 0), bits: 24, via: Ipv4Addr::new(10, 42, 2, 0), vxlan: true },
            vx,
        );
        assert_eq!(
            owned_route(&ours, vx),
            Some(Route { dst: Ipv4Addr::new(10, 42, 2, 0), bits: 24, via: Ipv4Addr::new(10, 42, 2, 0), vxlan: true })
        );
        let host_gw = route_message(
            Route { dst: Ipv4Addr::new(10, 42, 3, 0), bits: 24, via: Ipv4Addr::new(10, 0, 0, 3), vxlan: false },
            None,
        );
        assert_eq!(owned_route(&host_gw, vx).map(|r| r.vxlan), Some(false));

        let mut static_route = ours.clone();
        static_route.header.protocol = RouteProtocol::Static;
        assert_eq!(owned_route(&static_route, vx), None, "someone else's protocol");
        let mut local_table = ours.clone();
        local_table.header.table = 255; // RT_TABLE_LOCAL
        assert_eq!(owned_route(&local_table, vx), None, "another table");
        assert_eq!(u8::from(ours.header.protocol), 66);
    }

    #[test]
    fn vtep_macs_are_stable_local_unicast() {
        let mac = vtep_mac(Ipv4Addr::new(192, 168, 1, 20));
        assert_eq!(mac, vtep_mac(Ipv4Addr::new(192, 168, 1, 20)));
        assert_ne!(mac, vtep_mac(Ipv4Addr::new(192, 168, 1, 21)));
        assert_eq!(mac[0] & 0b11, 0b10, "locally administered, unicast");
        assert_eq!(format_mac(mac), "0e:b7:c0:a8:01:14");
    }

    #[test]
    fn the_primary_address_is_chosen() {
        let addrs = [
            HostAddr { index: 2, ip: Ipv4Addr::new(10, 0, 0, 9), secondary: true },
            HostAddr { index: 2, ip: Ipv4Addr::new(10, 0, 0, 5), secondary: false },
            HostAddr { index: 2, ip: Ipv4Addr::new(10, 0, 0, 6), secondary: false },
            HostAddr { index: 3, ip: Ipv4Addr::new(192, 168, 0, 5), secondary: false },
        ];
        assert_eq!(first_address(&addrs, 2), Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(first_address(&addrs, 4), None);
    }

    /// Two "nodes" in network namespaces of their own, joined by a veth pair
    /// (10.250.77.1/24 and .2/24), each with a `bramble0` holding `.1` of its pod range. The
    /// real [`setup`] and [`reconcile`](super::super::reconcile) run in each (on a thread
    /// that entered the namespace), from Node objects annotated as the agent annotates
    /// them; then a TCP connection from one pod range to the other proves the tunnel
    /// carries traffic both ways. Then the same for host-gw, and the teardown. Namespaces go
    /// in the guard's `Drop`, also when an assertion fails. Needs root, `ip`.
    #[test]
    fn two_namespaces_reach_each_other_over_the_overlay() {
        assert!(nix::unistd::geteuid().is_root(), "this test makes network namespaces, so it must run as root");
        let pid = std::process::id();
        let guard = Namespaces(vec![format!("bro-a-{pid}"), format!("bro-b-{pid}")]);
        let (a, b) = (guard.0[0].as_str(), guard.0[1].as_str());
        let nodes = [
            TestNode { ns: a, name: "a", ip: Ipv4Addr::new(10, 250, 77, 1), pods: Ipv4Addr::new(10, 42, 1, 0) },
            TestNode { ns: b, name: "b", ip: Ipv4Addr::new(10, 250, 77, 2), pods: Ipv4Addr::new(10, 42, 2, 0) },
        ];
        for n in &nodes {
            ip(&["netns", "add", n.ns]);
        }
        ip(&["-n", a, "link", "add", "ov0", "type", "veth", "peer", "name", "ov0", "netns", b]);
        for n in &nodes {
            let gateway = format!("{}/24", Ipv4Addr::from(u32::from(n.pods) + 1));
            ip(&["-n", n.ns, "addr", "add", &format!("{}/24", n.ip), "dev", "ov0"]);
            ip(&["-n", n.ns, "link", "set", "ov0", "up"]);
            ip(&["-n", n.ns, "link", "set", "lo", "up"]);
            ip(&["-n", n.ns, "link", "add", "bramble0", "type", "bridge"]);
            ip(&["-n", n.ns, "addr", "add", &gateway, "dev", "bramble0"]);
            ip(&["-n", n.ns, "link", "set", "bramble0", "up"]);
            // Someone else's route, which nothing of ours may touch.
            ip(&["-n", n.ns, "route", "add", "10.99.0.0/16", "via", &n.ip.to_string()]);
        }

        // The node's address without flags: the default route's interface's; none, an error.
        ip(&["-n", a, "route", "add", "default", "via", "10.250.77.2"]);
        let found = in_netns(a, || async { node_ip(None, None).await }).unwrap();
        assert_eq!(found, (nodes[0].ip, "ov0".to_string()));
        ip(&["-n", a, "route", "del", "default"]);
        let err = in_netns(a, || async { node_ip(None, None).await }).unwrap_err();
        assert!(format!("{err:#}").contains("pass --node-ip or --flannel-iface"), "{err:#}");
        let err = in_netns(a, || async { node_ip(Some(Ipv4Addr::new(10, 9, 9, 9)), None).await }).unwrap_err();
        assert!(format!("{err:#}").contains("not an address of this machine"), "{err:#}");

        // vxlan: set up both, publish, reconcile each from the Node list.
        let mut annotated = Vec::new();
        for n in &nodes {
            let (me, pods) = (n.ip, n.pods);
            let (found, iface, mac, again, tx_csum) = in_netns(n.ns, move || async move {
                let (found, iface) = node_ip(Some(me), None).await?;
                let (by_iface, _) = node_ip(None, Some("ov0")).await?;
                anyhow::ensure!(by_iface == me, "--flannel-iface ov0 gave {by_iface}");
                let first = setup(Backend::Vxlan, me, &iface, (pods, 24)).await?;
                let again = setup(Backend::Vxlan, me, &iface, (pods, 24)).await?;
                anyhow::ensure!(first.pod_mtu == 1450, "pods get the uplink's MTU less vxlan's 50: {first:?}");
                let (mac, again) = (first.mac, again.mac);
                let tx_csum = ethtool_value(VXLAN_DEVICE, ETHTOOL_GTXCSUM, 0)?;
                Ok((found, iface, mac, again, tx_csum))
            })
            .unwrap();
            assert_eq!((found, iface.as_str()), (n.ip, "ov0"));
            let mac = mac.expect("vxlan has a MAC");
            assert_eq!(mac, vtep_mac(n.ip));
            assert_eq!(again, Some(mac), "a second setup keeps the device");
            assert_eq!(tx_csum, 0, "tx checksum offload is off");
            annotated.push(n.node(Some(mac)));
        }
        for n in &nodes {
            let (name, nodes) = (n.name, annotated.clone());
            let (first, second) = in_netns(n.ns, move || async move {
                let want = desired(Backend::Vxlan, &peers(&nodes, name));
                let first = reconcile(&Netlink::default(), &want).await?;
                let second = reconcile(&Netlink::default(), &want).await?;
                Ok((first, second))
            })
            .unwrap();
            assert_eq!(first, Changes { routes_added: 1, neighbours_added: 1, fdb_added: 1, ..Default::default() });
            assert!(!second.any(), "the kernel's listing reads back as what was added: {second:?}");
        }
        // In a, b moves to another address, then its Node goes, then it comes back.
        let b_moved = TestNode { ip: Ipv4Addr::new(10, 250, 77, 9), ..nodes[1] }.node(Some(vtep_mac(nodes[1].ip)));
        let b_back = annotated[1].clone();
        let (moved, fdb, gone, left, back) = in_netns(a, move || async move {
            let platform = Netlink::default();
            let vxlan = |nodes: &[Arc<Value>]| desired(Backend::Vxlan, &peers(nodes, "a"));
            let moved = reconcile(&platform, &vxlan(&[b_moved])).await?;
            let fdb = platform.fdb().await?;
            let gone = reconcile(&platform, &vxlan(&[])).await?;
            let left = (platform.routes().await?, platform.neighbours().await?, platform.fdb().await?);
            let back = reconcile(&platform, &vxlan(&[b_back])).await?;
            Ok((moved, fdb, gone, left, back))
        })
        .unwrap();
        assert_eq!(moved, Changes { fdb_deleted: 1, fdb_added: 1, ..Default::default() });
        assert_eq!(fdb, [FdbEntry { mac: vtep_mac(nodes[1].ip), dst: Ipv4Addr::new(10, 250, 77, 9) }]);
        assert_eq!(gone, Changes { routes_deleted: 1, neighbours_deleted: 1, fdb_deleted: 1, ..Default::default() });
        assert_eq!(left, (vec![], vec![], vec![]));
        assert_eq!(back, Changes { routes_added: 1, neighbours_added: 1, fdb_added: 1, ..Default::default() });

        assert_eq!(exchange(&nodes[1], &nodes[0]).unwrap(), nodes[1].gateway(), "b -> a over vxlan");
        assert_eq!(exchange(&nodes[0], &nodes[1]).unwrap(), nodes[0].gateway(), "a -> b over vxlan");

        // a's address changes (a new DHCP lease): its device is made again from the new one.
        ip(&["-n", a, "addr", "add", "10.250.77.11/24", "dev", "ov0"]);
        let (new_ip, pods_a) = (Ipv4Addr::new(10, 250, 77, 11), nodes[0].pods);
        let (mac, config) = in_netns(a, move || async move {
            let mac = setup(Backend::Vxlan, new_ip, "ov0", (pods_a, 24)).await?.mac;
            let dev = link_by_name(&connect().await?, VXLAN_DEVICE).await?.context("the device is gone")?;
            Ok((mac, VxlanConfig::of(&dev)))
        })
        .unwrap();
        assert_eq!(mac, Some(vtep_mac(new_ip)));
        let config = config.expect("still a vxlan device");
        assert_eq!((config.local, config.vni, config.port, config.learning), (new_ip, VNI, VXLAN_PORT, false));

        // host-gw: the device goes, routes via the other node's address instead.
        let annotated: Vec<_> = nodes.iter().map(|n| n.node(None)).collect();
        for n in &nodes {
            let (me, name, pods, nodes) = (n.ip, n.name, n.pods, annotated.clone());
            let (mac, changes) = in_netns(n.ns, move || async move {
                let made = setup(Backend::HostGw, me, "ov0", (pods, 24)).await?;
                anyhow::ensure!(made.pod_mtu == 1500, "host-gw pods get the uplink's MTU: {made:?}");
                let mac = made.mac;
                let want = desired(Backend::HostGw, &peers(&nodes, name));
                Ok((mac, reconcile(&Netlink::default(), &want).await?))
            })
            .unwrap();
            assert_eq!(mac, None);
            // The vxlan route went with its device; the host-gw one is new.
            assert_eq!(changes, Changes { routes_added: 1, ..Default::default() });
        }
        assert_eq!(exchange(&nodes[1], &nodes[0]).unwrap(), nodes[1].gateway(), "b -> a over host-gw");

        // Teardown removes ours, leaves the rest.
        let left = in_netns(a, || async {
            teardown().await?;
            let platform = Netlink::default();
            Ok((platform.routes().await?, link_by_name(platform.handle().await?, VXLAN_DEVICE).await?.is_some()))
        })
        .unwrap();
        assert_eq!(left, (vec![], false));
        let routes = ip(&["-n", a, "route", "show"]);
        assert!(routes.contains("10.99.0.0/16 via 10.250.77.1"), "{routes}");
        assert!(!routes.contains("10.42.2.0"), "{routes}");
    }

    struct TestNode<'a> {
        ns: &'a str,
        name: &'static str,
        ip: Ipv4Addr,
        pods: Ipv4Addr,
    }

    impl TestNode<'_> {
        fn gateway(&self) -> Ipv4Addr {
            Ipv4Addr::from(u32::from(self.pods) + 1)
        }

        /// The node as the API holds it once its agent annotated it.
        fn node(&self, mac: Option<[u8; 6]>) -> Arc<Value> {
            std::sync::Arc::new(serde_json::json!({
                "metadata": {"name": self.name, "annotations": {
                    ANNOTATION_NODE_IP: self.ip.to_string(),
                    ANNOTATION_VTEP_MAC: mac.map(format_mac),
                }},
                "spec": {"podCIDR": format!("{}/24", self.pods)},
            }))
        }
    }

    /// Deletes the test's namespaces, whatever happened.
    struct Namespaces(Vec<String>);

    impl Drop for Namespaces {
        fn drop(&mut self) {
            for ns in &self.0 {
                // Best effort: a namespace not made yet has nothing to delete.
                let _ = std::process::Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
    }

    /// Runs `ip args`, failing the test with its error output.
    fn ip(args: &[&str]) -> String {
        let out = std::process::Command::new("ip").args(args).output().expect("ip runs");
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `work` on a thread inside network namespace `ns`, on a runtime of its own.
    fn in_netns<T: Send, F: Future<Output = anyhow::Result<T>>>(
        ns: &str,
        work: impl FnOnce() -> F + Send,
    ) -> anyhow::Result<T> {
        let file = std::fs::File::open(format!("/run/netns/{ns}")).context("opening the namespace")?;
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: a valid namespace descriptor; affects only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("entering the namespace");
                }
                tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(work())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
        })
    }

    /// Connects from `from`'s pod gateway address to `to`'s, sends a line and reads it back;
    /// returns the source address `to` saw.
    fn exchange(from: &TestNode, to: &TestNode) -> anyhow::Result<Ipv4Addr> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Sockets stay in the namespace they were made in; they are used from here.
        let (target, source) = (to.gateway(), from.gateway());
        let listener = in_netns(to.ns, move || async move { Ok(std::net::TcpListener::bind((target, 0))?) })?;
        let port = listener.local_addr()?.port();
        let socket = in_netns(from.ns, move || async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind((source, 0).into())?;
            Ok(socket)
        })?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let serve = async {
                let (mut conn, peer) = listener.accept().await?;
                let mut line = [0u8; 5];
                conn.read_exact(&mut line).await?;
                conn.write_all(&line).await?;
                anyhow::Ok(peer)
            };
            let client = async {
                let mut conn = socket.connect((target, port).into()).await?;
                conn.write_all(b"ping\n").await?;
                let mut back = [0u8; 5];
                conn.read_exact(&mut back).await?;
                anyhow::ensure!(&back == b"ping\n", "echoed {back:?}");
                anyhow::Ok(())
            };
            let both = async { tokio::try_join!(serve, client) };
            let (peer, ()) = tokio::time::timeout(std::time::Duration::from_secs(5), both)
                .await
                .context("no answer within 5 s")??;
            match peer.ip() {
                IpAddr::V4(ip) => Ok(ip),
                other => anyhow::bail!("connection from {other}"),
            }
        })
    }
}
