//! A client of the controller quorum: finds the active controller and sends it requests,
//! following `NotController` hints and trying the other voters when one does not answer.
//!
//! A node that is itself a controller calls its own [`Controller`] directly when it is the
//! active one (and always when it is the only voter, which needs no listener).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::net::{Peer, Request, Response};
use crate::service::{code, Controller, ControllerRequest, ControllerResponse};
use crate::NodeId;

/// Pause before asking again when no controller is active.
const NO_LEADER_BACKOFF_MS: u64 = 50;

struct Inner {
    peers: BTreeMap<NodeId, Peer>,
    /// The voter to try first: the last one that answered as active.
    leader: Option<NodeId>,
}

/// Sends requests to the active controller. One request at a time per client.
pub struct ControllerClient {
    local: Option<Arc<Controller>>,
    inner: Mutex<Inner>,
}

impl ControllerClient {
    /// `voters`: every voter's controller listener address. `local`: this node's controller.
    pub fn new(
        voters: &BTreeMap<NodeId, String>,
        cluster_id: &str,
        local: Option<Arc<Controller>>,
    ) -> ControllerClient {
        ControllerClient {
            local,
            inner: Mutex::new(Inner {
                peers: voters
                    .iter()
                    .map(|(id, addr)| (*id, Peer::new(addr.clone(), cluster_id.to_string())))
                    .collect(),
                leader: None,
            }),
        }
    }

    /// Sends `request` to the active controller, for at most `timeout` in all. Without an
    /// answer in time: `Error { code: REQUEST_TIMED_OUT }`.
    pub async fn call(&self, request: ControllerRequest, timeout: Duration) -> ControllerResponse {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut inner = self.inner.lock().await;
        let voters: Vec<NodeId> = inner.peers.keys().copied().collect();
        let mut next_voter = 0usize;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return ControllerResponse::Error {
                    code: code::REQUEST_TIMED_OUT,
                    message: "no active controller answered in time".into(),
                };
            }
            let target = match inner.leader {
                Some(id) => id,
                None => {
                    if let Some(leader) = self.local.as_ref().and_then(|c| c.leader()) {
                        leader
                    } else {
                        next_voter += 1;
                        voters[next_voter % voters.len()]
                    }
                }
            };
            let answer = match &self.local {
                Some(local) if local.node_id() == target => {
                    Some(local.handle(request.clone()).await)
                }
                _ => match inner.peers.get_mut(&target) {
                    Some(peer) => match peer
                        .call(Request::Controller(request.clone()), deadline - now)
                        .await
                    {
                        Ok(Response::Controller(answer)) => Some(answer),
                        _ => None,
                    },
                    None => None,
                },
            };
            match answer {
                Some(ControllerResponse::NotController { leader }) => {
                    if leader.is_none() || leader == Some(target) {
                        tokio::time::sleep(Duration::from_millis(NO_LEADER_BACKOFF_MS)).await;
                    }
                    inner.leader = leader.filter(|l| *l != target);
                }
                Some(answer) => {
                    inner.leader = Some(target);
                    return answer;
                }
                None => {
                    inner.leader = None;
                    tokio::time::sleep(Duration::from_millis(NO_LEADER_BACKOFF_MS)).await;
                }
            }
        }
    }
}
