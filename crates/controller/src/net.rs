//! The controller listener's wire format and the Raft network over TCP.
//!
//! A frame is a big-endian `u32` length and a JSON body. A connection carries one request at a
//! time: the caller writes an [`Envelope`] (the request and its cluster id) and reads its
//! [`Response`]. A node answers a request for another cluster with INCONSISTENT_CLUSTER_ID and
//! closes the connection, so nodes formatted for different clusters never form one. Voters use it for Raft's
//! RPCs, brokers for registration, heartbeats, metadata changes and following the log.
//!
//! A frame longer than [`FRAME_BYTES_MAX`] closes the connection before anything is allocated
//! for it; a body that does not decode closes it too.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::service::{ControllerRequest, ControllerResponse};
use crate::{NodeId, TypeConfig};

/// Longest frame accepted (a snapshot of a large cluster fits many times over).
pub const FRAME_BYTES_MAX: usize = 256 << 20;
/// Buffer reserved up front for a frame; more is added as its bytes arrive.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// How long connecting to a peer may take.
const CONNECT_TIMEOUT_MS: u64 = 1_000;

/// A request as sent: stamped with the sender's cluster id.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub cluster_id: String,
    pub request: Request,
}

/// Everything sent to a controller.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Vote(VoteRequest<NodeId>),
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    Controller(ControllerRequest),
}

/// A controller's answer to a [`Request`] of the same kind.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Controller(ControllerResponse),
}

/// Writes one frame.
pub async fn write_frame<T: Serialize>(stream: &mut TcpStream, value: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    if body.len() > FRAME_BYTES_MAX {
        return Err(std::io::Error::other("frame too long"));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await
}

/// Reads one frame; `Ok(None)` when the peer closed the connection between frames.
pub async fn read_frame<T: DeserializeOwned>(stream: &mut TcpStream) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is longer than {FRAME_BYTES_MAX}"),
        ));
    }
    // Memory grows as bytes arrive, not with the length a peer claims.
    let mut body = Vec::with_capacity(len.min(READ_CHUNK_BYTES));
    (&mut *stream)
        .take(len as u64)
        .read_to_end(&mut body)
        .await?;
    if body.len() != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "frame cut short",
        ));
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A connection to one controller, opened on first use and reopened after any failure.
#[derive(Debug)]
pub struct Peer {
    addr: String,
    cluster_id: String,
    stream: Option<TcpStream>,
}

impl Peer {
    pub fn new(addr: String, cluster_id: String) -> Peer {
        Peer {
            addr,
            cluster_id,
            stream: None,
        }
    }

    /// Sends `request` and waits up to `timeout` for the answer. Any failure drops the
    /// connection, so that a late answer can never be taken for the next request's.
    pub async fn call(&mut self, request: Request, timeout: Duration) -> std::io::Result<Response> {
        let request = Envelope {
            cluster_id: self.cluster_id.clone(),
            request,
        };
        let result = tokio::time::timeout(timeout, self.call_inner(&request)).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer in time",
            )),
        };
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn call_inner(&mut self, request: &Envelope) -> std::io::Result<Response> {
        if self.stream.is_none() {
            let connect = TcpStream::connect(&self.addr);
            let stream = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect)
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))??;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(std::io::Error::other("not connected"));
        };
        write_frame(stream, request).await?;
        read_frame(stream)
            .await?
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"))
    }

    /// Whether a connection is open (it may still turn out dead on the next call).
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }
}

/// Reaches the other voters over TCP; a node's address is its [`BasicNode::addr`].
#[derive(Debug, Clone, Default)]
pub struct TcpNetwork {
    pub cluster_id: String,
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = TcpConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> TcpConnection {
        TcpConnection {
            target,
            peer: Peer::new(node.addr.clone(), self.cluster_id.clone()),
        }
    }
}

/// One voter's connection to another.
pub struct TcpConnection {
    target: NodeId,
    peer: Peer,
}

type Rpc<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl TcpConnection {
    async fn call<E: std::error::Error>(
        &mut self,
        request: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        let was_connected = self.peer.is_connected();
        self.peer
            .call(request, option.hard_ttl())
            .await
            .map_err(|e| {
                // Never reached (refused, reset before any answer on a fresh connection):
                // openraft backs off before trying again. Otherwise a network error.
                if !was_connected && e.kind() != std::io::ErrorKind::TimedOut {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })
    }
}

fn unexpected<E: std::error::Error>(
    target: NodeId,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    let e = std::io::Error::other(format!("node {target} answered with the wrong kind"));
    RPCError::Network(NetworkError::new(&e))
}

fn remote<T, E: std::error::Error>(
    target: NodeId,
    result: Result<T, RaftError<NodeId, E>>,
) -> Rpc<T, E> {
    result.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(target, e)))
}

impl RaftNetwork<TypeConfig> for TcpConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>> {
        match self.call(Request::AppendEntries(rpc), &option).await? {
            Response::AppendEntries(r) => remote(self.target, r),
            _ => Err(unexpected(self.target)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self.call(Request::InstallSnapshot(rpc), &option).await? {
            Response::InstallSnapshot(r) => remote(self.target, r),
            _ => Err(unexpected(self.target)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<NodeId>> {
        match self.call(Request::Vote(rpc), &option).await? {
            Response::Vote(r) => remote(self.target, r),
            _ => Err(unexpected(self.target)),
        }
    }
}
