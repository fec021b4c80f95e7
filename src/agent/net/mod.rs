//! Everything of a node that touches netlink and nftables: the pods' bridge and veths
//! (`bridge`), the overlay that carries pod traffic between nodes (`overlay`), the service
//! proxy and masquerade in our own nftables table (`proxy`, applied by `nft`), and the
//! cluster DNS server (`dns`). Each part keeps its decisions pure (desired state from the
//! node's watch caches) and applies the difference, so the rules for a given set of Nodes,
//! Services and EndpointSlices are unit-tested without root.

pub mod bridge;
pub mod dns;
pub mod nft;
pub mod overlay;
pub mod proxy;
