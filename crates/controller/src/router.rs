//! An in-process network between quorum nodes: RPCs are direct calls to the target's
//! [`Raft`]; a node can be taken down (its RPCs in and out fail) and brought back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use tokio::sync::Mutex;

use crate::{NodeId, Raft, TypeConfig};

type Rpc<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

/// All nodes of an in-process quorum.
#[derive(Clone, Default)]
pub struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft>>>,
    down: Arc<Mutex<BTreeSet<NodeId>>>,
}

impl Router {
    pub async fn add(&self, id: NodeId, raft: Raft) {
        self.nodes.lock().await.insert(id, raft);
    }

    /// Cuts a node off: its RPCs in and out fail until [`Router::up`].
    pub async fn down(&self, id: NodeId) {
        self.down.lock().await.insert(id);
    }

    pub async fn up(&self, id: NodeId) {
        self.down.lock().await.remove(&id);
    }

    /// The network factory a node uses to reach the others.
    pub fn network_for(&self, source: NodeId) -> NodeNetwork {
        NodeNetwork {
            router: self.clone(),
            source,
        }
    }

    async fn target<E: std::error::Error>(
        &self,
        source: NodeId,
        target: NodeId,
    ) -> Result<Raft, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        let down = self.down.lock().await;
        if down.contains(&source) || down.contains(&target) {
            let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "node is down");
            return Err(RPCError::Unreachable(Unreachable::new(&io)));
        }
        drop(down);
        self.nodes
            .lock()
            .await
            .get(&target)
            .cloned()
            .ok_or_else(|| {
                let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such node");
                RPCError::Unreachable(Unreachable::new(&io))
            })
    }
}

/// One node's view of the network.
#[derive(Clone)]
pub struct NodeNetwork {
    router: Router,
    source: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for NodeNetwork {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Connection {
        Connection {
            router: self.router.clone(),
            source: self.source,
            target,
        }
    }
}

/// A connection from one node to another.
pub struct Connection {
    router: Router,
    source: NodeId,
    target: NodeId,
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>> {
        let raft = self.router.target(self.source, self.target).await?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let raft = self.router.target(self.source, self.target).await?;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Rpc<VoteResponse<NodeId>> {
        let raft = self.router.target(self.source, self.target).await?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}
