//! An in-process network between quorum nodes: RPCs are direct calls to the target's
//! [`Raft`]; a node can be taken down (its RPCs in and out fail) and brought back, single
//! links can be cut, and a seeded router delays each RPC by a random few milliseconds and
//! loses a share of them, for simulations that a seed replays.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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

/// How a seeded router disturbs RPCs.
#[derive(Debug, Clone, Copy)]
pub struct Weather {
    /// Each RPC waits between 0 and this many milliseconds before it is delivered.
    pub delay_ms_max: u64,
    /// Percent of RPCs lost (they fail as unreachable).
    pub loss_percent: u32,
}

/// All nodes of an in-process quorum.
#[derive(Clone, Default)]
pub struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft>>>,
    down: Arc<Mutex<BTreeSet<NodeId>>>,
    /// Cut links, stored with the lower id first.
    cut: Arc<Mutex<BTreeSet<(NodeId, NodeId)>>>,
    weather: Option<(Weather, Arc<parking_lot::Mutex<StdRng>>)>,
}

impl Router {
    /// A router whose delays and losses are drawn from `seed`.
    pub fn seeded(seed: u64, weather: Weather) -> Router {
        Router {
            weather: Some((
                weather,
                Arc::new(parking_lot::Mutex::new(StdRng::seed_from_u64(seed))),
            )),
            ..Router::default()
        }
    }

    /// Cuts the link between two nodes (both directions).
    pub async fn cut(&self, a: NodeId, b: NodeId) {
        self.cut.lock().await.insert((a.min(b), a.max(b)));
    }

    /// Restores every cut link.
    pub async fn heal(&self) {
        self.cut.lock().await.clear();
    }

    /// Forgets a node (it crashed); [`Router::add`] brings a restarted one.
    pub async fn remove(&self, id: NodeId) {
        self.nodes.lock().await.remove(&id);
    }

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
        if let Some((weather, rng)) = &self.weather {
            let (delay_ms, lost) = {
                let mut rng = rng.lock();
                (
                    rng.gen_range(0..=weather.delay_ms_max),
                    rng.gen_range(0..100) < weather.loss_percent,
                )
            };
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            if lost {
                let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "lost");
                return Err(RPCError::Unreachable(Unreachable::new(&io)));
            }
        }
        let down = self.down.lock().await;
        let cut = self
            .cut
            .lock()
            .await
            .contains(&(source.min(target), source.max(target)));
        if cut || down.contains(&source) || down.contains(&target) {
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
