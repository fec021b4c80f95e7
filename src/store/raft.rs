//! openraft wiring: the type configuration, the start-up of the local Raft node, and the
//! network between servers.
//!
//! A single server is a one-voter cluster that commits on its own fsync. The network below
//! is the one used until servers can join each other (its own issue): there are no peers, so
//! every RPC to one is reported unreachable, which is exactly what openraft expects of a
//! peer that cannot be reached.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};

use super::StoreError;
use super::log::LogStore;
use super::state::{StateMachine, TxnBatch, TxnResult};

/// Raft node ids; the first server is 1.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The store's Raft types: entries carry a [`TxnBatch`], applying one yields a
    /// [`TxnResult`] per transaction.
    pub TypeConfig:
        D = TxnBatch,
        R = Vec<TxnResult>,
        NodeId = NodeId,
        Node = BasicNode,
);

/// The peer network of a server that has no peers yet.
#[derive(Clone, Default)]
pub struct NoPeers;

#[derive(Debug, thiserror::Error)]
#[error("server {0} is not a member this server can reach")]
struct NoRoute(NodeId);

/// A connection to a peer that does not exist.
pub struct NoPeerConnection(NodeId);

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeerConnection;
    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        NoPeerConnection(target)
    }
}

impl RaftNetwork<TypeConfig> for NoPeerConnection {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoRoute(self.0))))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        Err(RPCError::Unreachable(Unreachable::new(&NoRoute(self.0))))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoRoute(self.0))))
    }
}

/// Starts the local Raft node; on a new data dir it initialises a one-voter cluster of itself
/// and waits until it leads.
pub async fn start(
    id: NodeId,
    addr: &str,
    snapshot_entries: u64,
    log: LogStore,
    sm: StateMachine,
) -> Result<Raft<TypeConfig>, StoreError> {
    let config = Config {
        cluster_name: "bramble".into(),
        heartbeat_interval: 250,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        // A snapshot makes sled durable and lets the log be purged behind it: this bounds
        // the log on disk (and what a restart replays).
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_entries.max(1)),
        max_in_snapshot_log_to_keep: (snapshot_entries / 10).min(1_000),
        max_payload_entries: 512,
        ..Default::default()
    };
    let config = Arc::new(config.validate().map_err(|e| StoreError::Raft(e.to_string()))?);
    let raft = Raft::new(id, config, NoPeers, log, sm).await.map_err(|e| StoreError::Raft(e.to_string()))?;
    if !raft.is_initialized().await.map_err(|e| StoreError::Raft(e.to_string()))? {
        let mut members = BTreeMap::new();
        members.insert(id, BasicNode { addr: addr.to_string() });
        raft.initialize(members).await.map_err(|e| StoreError::Raft(e.to_string()))?;
    }
    raft.wait(Some(std::time::Duration::from_secs(30)))
        .current_leader(id, "local server leads its one-voter cluster")
        .await
        .map_err(|e| StoreError::Raft(format!("no leader: {e}")))?;
    Ok(raft)
}
