//! The active controller's decisions: broker registration, heartbeats and fencing, topic
//! creation with replica placement, topic deletion, new partitions, config changes
//! ([`crate::configs`]), client quotas ([`crate::quotas`]), producer id blocks
//! ([`crate::producer_ids`]), and serving the log to brokers that follow it.
//!
//! Every change is decided on the leader from its image and written through Raft as one
//! command, under one lock, so decisions never interleave (Kafka's controller is a single
//! event queue for the same reason). A non-leader answers [`ControllerResponse::NotController`]
//! with the leader it knows, so the caller can go there.
//!
//! Heartbeats live in memory on the active controller only: a new active controller gives
//! every broker a fresh session before it fences anyone.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, ServerState};
use serde::{Deserialize, Serialize};
use strom_metadata::image::{PartitionImage, TopicImage};
use strom_metadata::placement::{self, Candidate};
use strom_metadata::{MetadataImage, MetadataRecord};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tracing::{info, warn};
use uuid::Uuid;

use crate::configs::{self, ConfigChange, ConfigResult};
use crate::net::{self, Request, Response, TcpNetwork};
use crate::producer_ids::ProducerIdsBlock;
use crate::state_machine::Changes;
use crate::{Command, FileLogStore, NodeId, Raft, StateMachine};

/// Kafka error codes the controller answers with.
pub mod code {
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const NONE: i16 = 0;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const NOT_CONTROLLER: i16 = 41;
    pub const INVALID_REQUEST: i16 = 42;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const STALE_BROKER_EPOCH: i16 = 77;
    pub const PREFERRED_LEADER_NOT_AVAILABLE: i16 = 80;
    pub const ELIGIBLE_LEADERS_NOT_AVAILABLE: i16 = 83;
    pub const ELECTION_NOT_NEEDED: i16 = 84;
    pub const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;
    pub const INELIGIBLE_REPLICA: i16 = 107;
    pub const INVALID_UPDATE_VERSION: i16 = 108;
    pub const DUPLICATE_BROKER_REGISTRATION: i16 = 101;
    pub const BROKER_ID_NOT_REGISTERED: i16 = 102;
    pub const INCONSISTENT_CLUSTER_ID: i16 = 104;
}

/// Longest a change may wait for the quorum to commit it.
const COMMIT_TIMEOUT_MS: u64 = 5_000;
/// How often the active controller looks for brokers whose session expired.
const FENCE_CHECK_INTERVAL_MS: u64 = 200;
/// Longest a follower of the log is kept waiting for a change.
const FETCH_WAIT_MAX_MS: u64 = 5_000;
/// Connections the controller listener serves at once (voters and brokers).
const CONNECTIONS_MAX: usize = 4096;
/// Largest number of partitions one topic may have.
const PARTITIONS_MAX: i32 = 1 << 20;

/// A topic to create, validated by the broker for name and config values already.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewTopic {
    pub name: String,
    pub num_partitions: i32,
    pub replication_factor: i16,
    /// Manual assignment: partition → replicas. When given, count and factor are -1.
    pub assignments: Vec<(i32, Vec<i32>)>,
    pub configs: Vec<(String, String)>,
}

/// New partitions for a topic (CreatePartitions).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewPartitions {
    pub name: String,
    pub count: i32,
    pub assignments: Option<Vec<Vec<i32>>>,
}

/// The outcome for one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicResult {
    pub name: String,
    pub error_code: i16,
    pub message: Option<String>,
    pub topic_id: u128,
    pub num_partitions: i32,
    pub replication_factor: i16,
    /// The log index the change committed at (0 when nothing was committed).
    pub index: u64,
}

impl TopicResult {
    fn named(name: &str) -> TopicResult {
        TopicResult {
            name: name.to_string(),
            ..TopicResult::default()
        }
    }

    fn fail(&mut self, (code, message): (i16, String)) {
        self.error_code = code;
        self.message = Some(message);
    }
}

/// A voter's progress as the active controller sees it (DescribeQuorum).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VoterState {
    pub id: NodeId,
    pub log_end_offset: i64,
}

/// The quorum as the active controller sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QuorumInfo {
    pub leader_id: NodeId,
    pub leader_epoch: u64,
    pub high_watermark: i64,
    pub voters: Vec<VoterState>,
}

/// Requests from brokers (and tools) to the controllers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControllerRequest {
    RegisterBroker {
        broker_id: i32,
        incarnation_id: u128,
        host: String,
        port: u16,
        rack: Option<String>,
    },
    BrokerHeartbeat {
        broker_id: i32,
        broker_epoch: i64,
        /// The last log index the broker applied.
        metadata_index: u64,
        want_shutdown: bool,
    },
    CreateTopics {
        topics: Vec<NewTopic>,
        validate_only: bool,
    },
    DeleteTopics {
        names: Vec<String>,
    },
    CreatePartitions {
        topics: Vec<NewPartitions>,
        validate_only: bool,
    },
    /// AlterConfigs and IncrementalAlterConfigs, checked by the broker for names and values
    /// (see [`crate::configs`]).
    AlterConfigs {
        changes: Vec<ConfigChange>,
        validate_only: bool,
    },
    /// Kafka's AlterClientQuotas (see [`crate::quotas`]).
    AlterClientQuotas {
        alterations: Vec<crate::quotas::QuotaAlteration>,
        validate_only: bool,
    },
    /// The log after `after_index`; waits up to `max_wait_ms` for something new.
    FetchMetadata {
        after_index: u64,
        max_wait_ms: u64,
    },
    DescribeQuorum,
    /// Kafka's ElectLeaders: `election_type` 0 moves leadership to the preferred (first)
    /// replica where it is in sync, 1 elects any live replica for leaderless partitions.
    /// `partitions` None means every partition.
    ElectLeaders {
        election_type: i8,
        partitions: Option<Vec<(String, Vec<i32>)>>,
    },
    /// Kafka's AlterPartitionReassignments: per partition the target replicas, or None to
    /// cancel a reassignment in progress.
    AlterReassignments {
        partitions: Vec<(String, i32, Option<Vec<i32>>)>,
    },
    /// A partition leader's new ISR (Kafka's AlterPartition), valid only for the leader
    /// epoch and partition epoch the leader last saw, so that a stale leader changes nothing.
    AlterPartition {
        broker_id: i32,
        broker_epoch: i64,
        topic_id: u128,
        partition: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
    },
    /// Kafka's AllocateProducerIds: the next block of producer ids for a broker (see
    /// [`crate::producer_ids`]).
    AllocateProducerIds {
        broker_id: i32,
        broker_epoch: i64,
    },
}

/// Answers to [`ControllerRequest`]s.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControllerResponse {
    NotController {
        leader: Option<NodeId>,
    },
    Error {
        code: i16,
        message: String,
    },
    Registered {
        broker_epoch: i64,
    },
    Heartbeat {
        fenced: bool,
    },
    Topics(Vec<TopicResult>),
    /// Encoded records per log index. `image` means the first entry is the whole image
    /// (replace, do not apply).
    Metadata {
        index: u64,
        image: bool,
        entries: Vec<(u64, Vec<Vec<u8>>)>,
    },
    Quorum(QuorumInfo),
    /// Per partition (topic, partition, error code, message), and the index committed at.
    Elected {
        results: Vec<ElectionResult>,
        index: u64,
    },
    /// One result per config change, and the log index they committed at (0: nothing
    /// written).
    ConfigsAltered {
        results: Vec<ConfigResult>,
        index: u64,
    },
    /// One result per quota alteration, and the log index they committed at (0: nothing
    /// written).
    QuotasAltered {
        results: Vec<crate::quotas::QuotaResult>,
        index: u64,
    },
    /// The partition after an AlterPartition, and the log index it committed at.
    PartitionAltered {
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
        index: u64,
    },
    /// A block of producer ids, committed to the broker that asked.
    ProducerIds(ProducerIdsBlock),
}

/// How a controller node runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub node_id: NodeId,
    /// The cluster this node was formatted for; requests for another are refused.
    pub cluster_id: String,
    /// Every voter and the address of its controller listener.
    pub voters: BTreeMap<NodeId, String>,
    /// Where the Raft log and snapshots live (`__cluster_metadata-0`).
    pub dir: PathBuf,
    /// `controller.quorum.election.timeout.ms`: a follower waits between this and twice it.
    pub election_timeout_ms: u64,
    /// `broker.session.timeout.ms`: a broker silent this long is fenced.
    pub broker_session_timeout_ms: u64,
    /// `leader.imbalance.check.interval.seconds` in ms when `auto.leader.rebalance.enable`:
    /// how often leadership moves back to preferred replicas.
    pub leader_rebalance_interval_ms: Option<u64>,
}

#[derive(Debug, Default)]
struct Sessions {
    /// The Raft term in which the deadlines below were set.
    term: u64,
    last_heartbeat: HashMap<i32, Instant>,
}

/// One controller of the quorum.
pub struct Controller {
    node_id: NodeId,
    raft: Raft,
    state: StateMachine,
    config: ControllerConfig,
    /// Held while a decision is made and committed.
    decide: Mutex<()>,
    sessions: parking_lot::Mutex<Sessions>,
    server: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Controller {
    /// Opens the log in `config.dir`, joins the quorum, serves the controller listener (when
    /// given) and starts fencing expired brokers while active.
    pub async fn start(
        config: ControllerConfig,
        listener: Option<TcpListener>,
    ) -> std::io::Result<Arc<Controller>> {
        let store = FileLogStore::open(&config.dir)?;
        let state = StateMachine::open(config.dir.join("snapshot"))?;
        // openraft waits for the leader's lease (its maximum election timeout) and then a
        // random election timeout before standing for election. Drawing that timeout from
        // half to all of `controller.quorum.election.timeout.ms` makes a follower stand
        // 1.5 to 2 timeouts after it last heard from the leader.
        let timeout_ms = config.election_timeout_ms.max(20);
        let raft_config = Config {
            cluster_name: "strom".into(),
            heartbeat_interval: (timeout_ms / 10).max(10),
            election_timeout_min: timeout_ms / 2,
            election_timeout_max: timeout_ms,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(std::io::Error::other)?);
        let raft = Raft::new(
            config.node_id,
            raft_config,
            TcpNetwork {
                cluster_id: config.cluster_id.clone(),
            },
            store,
            state.clone(),
        )
        .await
        .map_err(std::io::Error::other)?;
        let members: BTreeMap<NodeId, BasicNode> = config
            .voters
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        if !raft.is_initialized().await.map_err(std::io::Error::other)? {
            // Every voter initializes with the same voters, which openraft allows; the first
            // election decides.
            if let Err(e) = raft.initialize(members).await {
                info!(error = %e, "quorum already initialized");
            }
        }
        let controller = Arc::new(Controller {
            node_id: config.node_id,
            raft,
            state,
            config,
            decide: Mutex::new(()),
            sessions: parking_lot::Mutex::new(Sessions::default()),
            server: parking_lot::Mutex::new(None),
        });
        if let Some(listener) = listener {
            let server = tokio::spawn(serve(listener, Arc::clone(&controller)));
            *controller.server.lock() = Some(server);
        }
        tokio::spawn(fence_loop(Arc::downgrade(&controller)));
        if let Some(interval_ms) = controller.config.leader_rebalance_interval_ms {
            tokio::spawn(rebalance_loop(Arc::downgrade(&controller), interval_ms));
        }
        Ok(controller)
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn state_machine(&self) -> &StateMachine {
        &self.state
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Stops taking part in the quorum and closes the controller listener.
    pub async fn shutdown(&self) {
        if let Some(server) = self.server.lock().take() {
            server.abort();
        }
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "controller shutdown");
        }
    }

    /// Serves one request.
    pub async fn handle(&self, request: ControllerRequest) -> ControllerResponse {
        if let ControllerRequest::FetchMetadata {
            after_index,
            max_wait_ms,
        } = request
        {
            return self.fetch_metadata(after_index, max_wait_ms).await;
        }
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return ControllerResponse::NotController {
                leader: metrics.current_leader,
            };
        }
        let _deciding = self.decide.lock().await;
        let image = self.state.subscribe().borrow().image.clone();
        match request {
            ControllerRequest::RegisterBroker {
                broker_id,
                incarnation_id,
                host,
                port,
                rack,
            } => {
                // Another process with this id whose session is still alive keeps it.
                if let Some(existing) = image.brokers.get(&broker_id) {
                    if existing.incarnation_id.as_u128() != incarnation_id
                        && !existing.fenced
                        && self.session_alive(broker_id, metrics.current_term)
                    {
                        return ControllerResponse::Error {
                            code: code::DUPLICATE_BROKER_REGISTRATION,
                            message: format!(
                                "Another broker is registered with id {broker_id} and its session is alive"
                            ),
                        };
                    }
                }
                // The broker epoch is the index the registration will have: only the
                // leader writes, under `decide`, so nothing else takes that index.
                let broker_epoch = metrics.last_log_index.unwrap_or(0) as i64 + 1;
                let records = registration(
                    &image,
                    MetadataRecord::RegisterBroker {
                        broker_id,
                        incarnation_id: Uuid::from_u128(incarnation_id),
                        epoch: broker_epoch,
                        host,
                        port,
                        rack,
                    },
                );
                self.touch(broker_id, metrics.current_term);
                match self.commit(&records).await {
                    Ok(_) => {
                        info!(broker_id, broker_epoch, "registered broker");
                        ControllerResponse::Registered { broker_epoch }
                    }
                    Err(e) => e,
                }
            }
            ControllerRequest::BrokerHeartbeat {
                broker_id,
                broker_epoch,
                metadata_index,
                want_shutdown,
            } => {
                let Some(broker) = image
                    .brokers
                    .get(&broker_id)
                    .filter(|b| b.epoch == broker_epoch)
                else {
                    return ControllerResponse::Error {
                        code: code::STALE_BROKER_EPOCH,
                        message: format!("broker {broker_id} epoch {broker_epoch} is not current"),
                    };
                };
                self.touch(broker_id, metrics.current_term);
                let records = if want_shutdown && !broker.fenced {
                    fence(&image, broker_id, broker_epoch)
                } else if !want_shutdown
                    && broker.fenced
                    && metadata_index >= broker_epoch.max(0) as u64
                {
                    unfence(&image, broker_id, broker_epoch)
                } else {
                    Vec::new()
                };
                if records.is_empty() {
                    return ControllerResponse::Heartbeat {
                        fenced: broker.fenced,
                    };
                }
                match self.commit(&records).await {
                    Ok(_) => {
                        info!(broker_id, fenced = want_shutdown, "broker fence changed");
                        ControllerResponse::Heartbeat {
                            fenced: want_shutdown,
                        }
                    }
                    Err(e) => e,
                }
            }
            ControllerRequest::CreateTopics {
                topics,
                validate_only,
            } => self.create_topics(&image, topics, validate_only).await,
            ControllerRequest::DeleteTopics { names } => self.delete_topics(&image, names).await,
            ControllerRequest::CreatePartitions {
                topics,
                validate_only,
            } => self.create_partitions(&image, topics, validate_only).await,
            ControllerRequest::AlterConfigs {
                changes,
                validate_only,
            } => self.alter_configs(&image, &changes, validate_only).await,
            ControllerRequest::AlterClientQuotas {
                alterations,
                validate_only,
            } => {
                self.alter_client_quotas(&image, &alterations, validate_only)
                    .await
            }
            ControllerRequest::DescribeQuorum => {
                let progress = metrics.replication.clone().unwrap_or_default();
                let voters = self
                    .config
                    .voters
                    .keys()
                    .map(|id| VoterState {
                        id: *id,
                        log_end_offset: progress
                            .get(id)
                            .copied()
                            .flatten()
                            .map_or(-1, |l| l.index as i64 + 1),
                    })
                    .collect();
                ControllerResponse::Quorum(QuorumInfo {
                    leader_id: self.node_id,
                    leader_epoch: metrics.current_term,
                    high_watermark: metrics.last_applied.map_or(0, |l| l.index as i64 + 1),
                    voters,
                })
            }
            ControllerRequest::ElectLeaders {
                election_type,
                partitions,
            } => {
                let (records, results) = elect(&image, election_type, partitions.as_deref());
                if records.is_empty() {
                    return ControllerResponse::Elected { results, index: 0 };
                }
                match self.commit(&records).await {
                    Ok(index) => ControllerResponse::Elected { results, index },
                    Err(e) => e,
                }
            }
            ControllerRequest::AlterReassignments { partitions } => {
                let (records, results) = reassign(&image, &partitions);
                if records.is_empty() {
                    return ControllerResponse::Elected { results, index: 0 };
                }
                match self.commit(&records).await {
                    Ok(index) => {
                        info!(
                            partitions = partitions.len(),
                            "partition reassignment changed"
                        );
                        ControllerResponse::Elected { results, index }
                    }
                    Err(e) => e,
                }
            }
            ControllerRequest::AlterPartition {
                broker_id,
                broker_epoch,
                topic_id,
                partition,
                leader_epoch,
                partition_epoch,
                isr,
            } => {
                let change = AlterPartition {
                    broker_id,
                    broker_epoch,
                    topic_id: Uuid::from_u128(topic_id),
                    partition,
                    leader_epoch,
                    partition_epoch,
                    isr,
                };
                self.alter_partition(&image, change).await
            }
            ControllerRequest::AllocateProducerIds {
                broker_id,
                broker_epoch,
            } => self.allocate_producer_ids(broker_id, broker_epoch).await,
            ControllerRequest::FetchMetadata { .. } => ControllerResponse::Error {
                code: code::INVALID_REQUEST,
                message: "unreachable".into(),
            },
        }
    }

    /// Whether a broker heartbeated within the session timeout (in this term).
    fn session_alive(&self, broker_id: i32, term: u64) -> bool {
        let sessions = self.sessions.lock();
        let timeout = Duration::from_millis(self.config.broker_session_timeout_ms);
        sessions.term == term
            && sessions
                .last_heartbeat
                .get(&broker_id)
                .is_some_and(|last| last.elapsed() <= timeout)
    }

    /// Commits records decided outside the controller (the import of metadata kept by an
    /// older version of a single node). Only the active controller commits.
    pub async fn commit_records(
        &self,
        records: &[MetadataRecord],
    ) -> Result<u64, ControllerResponse> {
        let _deciding = self.decide.lock().await;
        if self.leader() != Some(self.node_id) {
            return Err(ControllerResponse::NotController {
                leader: self.leader(),
            });
        }
        self.commit(records).await
    }

    /// Starts (or continues) a broker's session; a new term restarts every session.
    fn touch(&self, broker_id: i32, term: u64) {
        let mut sessions = self.sessions.lock();
        if sessions.term != term {
            sessions.term = term;
            sessions.last_heartbeat.clear();
        }
        sessions.last_heartbeat.insert(broker_id, Instant::now());
    }

    /// Commits the records of a topic request and marks each successful result with the
    /// commit's index (the broker answers once it has applied that far), or with the failure.
    async fn commit_topics(&self, records: &[MetadataRecord], results: &mut [TopicResult]) {
        let outcome = self.commit(records).await;
        for r in results.iter_mut().filter(|r| r.error_code == code::NONE) {
            match &outcome {
                Ok(index) => r.index = *index,
                Err(e) => r.fail(failure(e)),
            }
        }
    }

    /// Commits records as one command; the log index it committed at.
    async fn commit(&self, records: &[MetadataRecord]) -> Result<u64, ControllerResponse> {
        let write = self.raft.client_write(Command::new(records));
        match tokio::time::timeout(Duration::from_millis(COMMIT_TIMEOUT_MS), write).await {
            Err(_) => Err(ControllerResponse::Error {
                code: code::REQUEST_TIMED_OUT,
                message: "the controller quorum did not commit the change in time".into(),
            }),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ControllerResponse::NotController {
                    leader: f.leader_id,
                })
            }
            Ok(Err(e)) => Err(ControllerResponse::Error {
                code: code::NOT_CONTROLLER,
                message: e.to_string(),
            }),
            Ok(Ok(written)) => match written.data.error {
                None => Ok(written.log_id.index),
                Some(reason) => Err(ControllerResponse::Error {
                    code: code::INVALID_REQUEST,
                    message: reason,
                }),
            },
        }
    }

    async fn create_topics(
        &self,
        image: &MetadataImage,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> ControllerResponse {
        let mut results = Vec::with_capacity(topics.len());
        let mut records = Vec::new();
        let mut names_in_batch: Vec<String> = Vec::new();
        for topic in topics {
            let mut result = TopicResult::named(&topic.name);
            match plan_topic(image, &topic, &names_in_batch) {
                Ok((id, assignment, mut topic_records)) => {
                    result.topic_id = id.as_u128();
                    result.num_partitions = assignment.len() as i32;
                    result.replication_factor = assignment.first().map_or(0, |r| r.len() as i16);
                    names_in_batch.push(topic.name.clone());
                    records.append(&mut topic_records);
                }
                Err(failure) => result.fail(failure),
            }
            results.push(result);
        }
        if !validate_only && !records.is_empty() {
            self.commit_topics(&records, &mut results).await;
            for r in results.iter().filter(|r| r.error_code == code::NONE) {
                info!(topic = %r.name, partitions = r.num_partitions, "created topic");
            }
        }
        ControllerResponse::Topics(results)
    }

    async fn delete_topics(&self, image: &MetadataImage, names: Vec<String>) -> ControllerResponse {
        let mut results = Vec::with_capacity(names.len());
        let mut records = Vec::new();
        for name in names {
            let mut result = TopicResult::named(&name);
            match image.topic_by_name(&name) {
                Some(topic) => {
                    result.topic_id = topic.id.as_u128();
                    if !records.iter().any(|r| {
                        matches!(r, MetadataRecord::RemoveTopic { topic_id } if *topic_id == topic.id)
                    }) {
                        records.push(MetadataRecord::RemoveTopic { topic_id: topic.id });
                    }
                }
                None => result.fail((
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    "This server does not host this topic-partition.".into(),
                )),
            }
            results.push(result);
        }
        if !records.is_empty() {
            self.commit_topics(&records, &mut results).await;
        }
        ControllerResponse::Topics(results)
    }

    async fn create_partitions(
        &self,
        image: &MetadataImage,
        topics: Vec<NewPartitions>,
        validate_only: bool,
    ) -> ControllerResponse {
        let mut results = Vec::with_capacity(topics.len());
        let mut records = Vec::new();
        for request in topics {
            let mut result = TopicResult::named(&request.name);
            match plan_partitions(image, &request) {
                Ok(mut new_records) => records.append(&mut new_records),
                Err(failure) => result.fail(failure),
            }
            results.push(result);
        }
        if !validate_only && !records.is_empty() {
            self.commit_topics(&records, &mut results).await;
        }
        ControllerResponse::Topics(results)
    }

    async fn alter_configs(
        &self,
        image: &MetadataImage,
        changes: &[ConfigChange],
        validate_only: bool,
    ) -> ControllerResponse {
        let (records, results) = configs::plan(image, changes);
        let (results, index) = self
            .commit_planned(&records, results, validate_only, "configs altered")
            .await;
        ControllerResponse::ConfigsAltered { results, index }
    }

    /// Commits the records planned for a request of several items, each with its result
    /// (none when `validate_only` or nothing changes). Returns the results — those that had
    /// succeeded take the commit's error if it failed — and the log index committed at (0:
    /// nothing written).
    async fn commit_planned(
        &self,
        records: &[MetadataRecord],
        mut results: Vec<(i16, Option<String>)>,
        validate_only: bool,
        what: &str,
    ) -> (Vec<(i16, Option<String>)>, u64) {
        if validate_only || records.is_empty() {
            return (results, 0);
        }
        match self.commit(records).await {
            Ok(index) => {
                info!(records = records.len(), "{what}");
                (results, index)
            }
            Err(e) => {
                let (code, message) = failure(&e);
                for result in results.iter_mut().filter(|r| r.0 == code::NONE) {
                    *result = (code, Some(message.clone()));
                }
                (results, 0)
            }
        }
    }

    async fn alter_client_quotas(
        &self,
        image: &MetadataImage,
        alterations: &[crate::quotas::QuotaAlteration],
        validate_only: bool,
    ) -> ControllerResponse {
        let (records, results) = crate::quotas::plan(image, alterations);
        let (results, index) = self
            .commit_planned(&records, results, validate_only, "client quotas altered")
            .await;
        ControllerResponse::QuotasAltered { results, index }
    }

    /// Hands the next producer id block to a broker once its record is committed. The
    /// decision is taken on an image that holds every committed entry (a new active
    /// controller may not have applied its predecessor's last entries yet); were it not,
    /// the image would still refuse a block that does not follow the last one.
    async fn allocate_producer_ids(&self, broker_id: i32, broker_epoch: i64) -> ControllerResponse {
        let read = self.raft.ensure_linearizable();
        match tokio::time::timeout(Duration::from_millis(COMMIT_TIMEOUT_MS), read).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return ControllerResponse::NotController {
                    leader: e.forward_to_leader::<BasicNode>().and_then(|f| f.leader_id),
                }
            }
            Err(_) => {
                return ControllerResponse::Error {
                    code: code::REQUEST_TIMED_OUT,
                    message: "the controller quorum did not confirm this leader in time".into(),
                }
            }
        }
        let image = self.state.subscribe().borrow().image.clone();
        let (block, record) = match crate::producer_ids::allocate(&image, broker_id, broker_epoch) {
            Ok(allocated) => allocated,
            Err((code, message)) => return ControllerResponse::Error { code, message },
        };
        match self.commit(&[record]).await {
            Ok(_) => {
                info!(
                    broker_id,
                    first_producer_id = block.first_producer_id,
                    count = block.count,
                    "handed out a producer id block"
                );
                ControllerResponse::ProducerIds(block)
            }
            Err(e) => e,
        }
    }

    async fn fetch_metadata(&self, after_index: u64, max_wait_ms: u64) -> ControllerResponse {
        let mut published = self.state.subscribe();
        let wait = Duration::from_millis(max_wait_ms.min(FETCH_WAIT_MAX_MS));
        let _ = tokio::time::timeout(wait, published.wait_for(|p| p.index > after_index)).await;
        let encode = |records: &[MetadataRecord]| -> Vec<Vec<u8>> {
            records.iter().map(MetadataRecord::encode).collect()
        };
        match self.state.changes_since(after_index).await {
            Changes::None => ControllerResponse::Metadata {
                index: after_index,
                image: false,
                entries: Vec::new(),
            },
            Changes::Deltas(deltas) => ControllerResponse::Metadata {
                index: deltas.last().map_or(after_index, |(i, _)| *i),
                image: false,
                entries: deltas.iter().map(|(i, r)| (*i, encode(r))).collect(),
            },
            Changes::Image { index, records } => ControllerResponse::Metadata {
                index,
                image: true,
                entries: vec![(index, encode(&records))],
            },
        }
    }

    async fn alter_partition(
        &self,
        image: &MetadataImage,
        change: AlterPartition,
    ) -> ControllerResponse {
        let record = match check_alter_partition(image, &change) {
            Ok(record) => record,
            Err((code, message)) => return ControllerResponse::Error { code, message },
        };
        let Some(record) = record else {
            // Already the partition's state (a retry of a committed change).
            let p = &image.topics[&change.topic_id].partitions[&change.partition];
            return ControllerResponse::PartitionAltered {
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                isr: p.isr.clone(),
                index: 0,
            };
        };
        match self.commit(&[record]).await {
            Ok(index) => {
                let published = self.state.subscribe().borrow().image.clone();
                let p = published
                    .topics
                    .get(&change.topic_id)
                    .and_then(|t| t.partitions.get(&change.partition));
                match p {
                    Some(p) => {
                        info!(topic_id = %change.topic_id, partition = change.partition, isr = ?p.isr, "ISR changed");
                        ControllerResponse::PartitionAltered {
                            leader_epoch: p.leader_epoch,
                            partition_epoch: p.partition_epoch,
                            isr: p.isr.clone(),
                            index,
                        }
                    }
                    None => ControllerResponse::Error {
                        code: code::UNKNOWN_TOPIC_OR_PARTITION,
                        message: "the partition was deleted".into(),
                    },
                }
            }
            Err(e) => e,
        }
    }

    /// Finishes reassignments whose target replicas are all in sync.
    async fn complete_reassignments(&self) {
        if self.leader() != Some(self.node_id) {
            return;
        }
        let _deciding = self.decide.lock().await;
        let image = self.state.subscribe().borrow().image.clone();
        let records = completed_reassignments(&image);
        if records.is_empty() {
            return;
        }
        match self.commit(&records).await {
            Ok(_) => info!(records = records.len(), "completed partition reassignments"),
            Err(e) => warn!(error = ?e, "completing partition reassignments failed"),
        }
    }

    /// Fences the brokers whose session expired, moving their partitions' leadership.
    async fn fence_expired(&self) {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return;
        }
        let _deciding = self.decide.lock().await;
        let image = self.state.subscribe().borrow().image.clone();
        let timeout = Duration::from_millis(self.config.broker_session_timeout_ms);
        let expired: Vec<(i32, i64)> = {
            let mut sessions = self.sessions.lock();
            if sessions.term != metrics.current_term {
                sessions.term = metrics.current_term;
                sessions.last_heartbeat.clear();
            }
            let now = Instant::now();
            image
                .live_brokers()
                .filter(|b| {
                    let last = *sessions.last_heartbeat.entry(b.id).or_insert(now);
                    now.duration_since(last) > timeout
                })
                .map(|b| (b.id, b.epoch))
                .collect()
        };
        for (broker_id, epoch) in expired {
            let image = self.state.subscribe().borrow().image.clone();
            let records = fence(&image, broker_id, epoch);
            match self.commit(&records).await {
                Ok(_) => warn!(broker_id, "fenced a broker whose session expired"),
                Err(e) => warn!(broker_id, error = ?e, "fencing a broker failed"),
            }
        }
    }
}

fn failure(response: &ControllerResponse) -> (i16, String) {
    match response {
        ControllerResponse::Error { code, message } => (*code, message.clone()),
        ControllerResponse::NotController { .. } => (
            code::NOT_CONTROLLER,
            "this controller is no longer active".into(),
        ),
        other => (code::INVALID_REQUEST, format!("{other:?}")),
    }
}

/// Kafka's collision rule: `a.b` and `a_b` cannot both exist (metric names would clash).
fn unified(name: &str) -> String {
    name.replace('.', "_")
}

type Plan = (Uuid, Vec<Vec<i32>>, Vec<MetadataRecord>);

/// The records creating a topic, or Kafka's error for it.
fn plan_topic(
    image: &MetadataImage,
    topic: &NewTopic,
    names_in_batch: &[String],
) -> Result<Plan, (i16, String)> {
    if image.topic_by_name(&topic.name).is_some() || names_in_batch.contains(&topic.name) {
        return Err((
            code::TOPIC_ALREADY_EXISTS,
            format!("Topic '{}' already exists.", topic.name),
        ));
    }
    let key = unified(&topic.name);
    if let Some(other) = image
        .topic_ids
        .keys()
        .chain(names_in_batch)
        .find(|k| unified(k) == key)
    {
        return Err((
            code::INVALID_TOPIC_EXCEPTION,
            format!(
                "Topic '{}' collides with existing topic: {other}",
                topic.name
            ),
        ));
    }
    let assignment = if topic.assignments.is_empty() {
        place_new(image, topic.num_partitions, topic.replication_factor, 0)?
    } else {
        manual_assignment(image, &topic.assignments)?
    };
    let topic_id = Uuid::new_v4();
    let mut records = vec![MetadataRecord::Topic {
        name: topic.name.clone(),
        topic_id,
    }];
    records.extend(partition_records(image, topic_id, 0, &assignment));
    for (key, value) in &topic.configs {
        records.push(MetadataRecord::Config {
            resource_type: 2,
            resource_name: topic.name.clone(),
            key: key.clone(),
            value: Some(value.clone()),
        });
    }
    Ok((topic_id, assignment, records))
}

/// Replicas for `count` new partitions numbered from `first`, over the unfenced brokers.
fn place_new(
    image: &MetadataImage,
    count: i32,
    replication_factor: i16,
    first: i32,
) -> Result<Vec<Vec<i32>>, (i16, String)> {
    if count <= 0 || count > PARTITIONS_MAX {
        return Err((
            code::INVALID_PARTITIONS,
            "Number of partitions must be larger than 0.".into(),
        ));
    }
    if replication_factor <= 0 {
        return Err((
            code::INVALID_REPLICATION_FACTOR,
            "Replication factor must be larger than 0.".into(),
        ));
    }
    let brokers: Vec<Candidate> = image
        .live_brokers()
        .map(|b| Candidate {
            id: b.id,
            rack: b.rack.clone(),
        })
        .collect();
    if usize::from(replication_factor as u16) > brokers.len() {
        return Err((
            code::INVALID_REPLICATION_FACTOR,
            format!(
                "Unable to replicate the partition {replication_factor} time(s): The target replication factor of {replication_factor} cannot be reached because only {} broker(s) are registered.",
                brokers.len()
            ),
        ));
    }
    let start_index = rand::random::<u32>() as usize % brokers.len().max(1);
    let shift = rand::random::<u32>() as usize % brokers.len().max(1);
    placement::place(
        &brokers,
        count,
        replication_factor,
        first,
        start_index,
        shift,
    )
    .map_err(|e| {
        let code = match e {
            placement::PlacementError::InvalidPartitions => code::INVALID_PARTITIONS,
            placement::PlacementError::PartialRackInformation => code::INVALID_REPLICATION_FACTOR,
            _ => code::INVALID_REPLICATION_FACTOR,
        };
        (code, e.to_string())
    })
}

/// Checks a manual assignment (partitions numbered from 0, equal replica counts, registered
/// brokers, no duplicates) and returns it in partition order.
fn manual_assignment(
    image: &MetadataImage,
    assignments: &[(i32, Vec<i32>)],
) -> Result<Vec<Vec<i32>>, (i16, String)> {
    let mut by_partition = BTreeMap::new();
    for (partition, replicas) in assignments {
        if by_partition.insert(*partition, replicas.clone()).is_some() {
            return Err((
                code::INVALID_REPLICA_ASSIGNMENT,
                format!("Partition {partition} is assigned twice."),
            ));
        }
    }
    let rf = assignments[0].1.len();
    for (i, (partition, replicas)) in by_partition.iter().enumerate() {
        if *partition != i as i32 {
            return Err((
                code::INVALID_REPLICA_ASSIGNMENT,
                "Partitions should be consecutive and start from 0.".into(),
            ));
        }
        check_replicas(image, replicas, rf)?;
    }
    Ok(by_partition.into_values().collect())
}

fn check_replicas(
    image: &MetadataImage,
    replicas: &[i32],
    replication_factor: usize,
) -> Result<(), (i16, String)> {
    if replicas.is_empty() || replicas.len() != replication_factor {
        return Err((
            code::INVALID_REPLICA_ASSIGNMENT,
            "All partitions should have the same number of replicas.".into(),
        ));
    }
    let mut seen = replicas.to_vec();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != replicas.len() {
        return Err((
            code::INVALID_REPLICA_ASSIGNMENT,
            format!("Duplicate brokers not allowed in replica assignment: {replicas:?}"),
        ));
    }
    if let Some(unknown) = replicas.iter().find(|b| !image.brokers.contains_key(b)) {
        return Err((
            code::INVALID_REPLICA_ASSIGNMENT,
            format!("Unknown broker {unknown} in replica assignment."),
        ));
    }
    Ok(())
}

/// Partition records: the leader is the first unfenced replica (none: -1), the ISR all
/// replicas.
fn partition_records(
    image: &MetadataImage,
    topic_id: Uuid,
    first: i32,
    assignment: &[Vec<i32>],
) -> Vec<MetadataRecord> {
    assignment
        .iter()
        .enumerate()
        .map(|(i, replicas)| {
            let leader = replicas
                .iter()
                .copied()
                .find(|b| image.brokers.get(b).is_some_and(|b| !b.fenced))
                .unwrap_or(-1);
            MetadataRecord::Partition {
                topic_id,
                partition: first + i as i32,
                replicas: replicas.clone(),
                isr: replicas.clone(),
                leader,
                leader_epoch: 0,
                partition_epoch: 0,
            }
        })
        .collect()
}

fn plan_partitions(
    image: &MetadataImage,
    request: &NewPartitions,
) -> Result<Vec<MetadataRecord>, (i16, String)> {
    let topic = image.topic_by_name(&request.name).ok_or((
        code::UNKNOWN_TOPIC_OR_PARTITION,
        format!("The topic '{}' does not exist.", request.name),
    ))?;
    let current = topic.partitions.len() as i32;
    if request.count <= current {
        return Err((
            code::INVALID_PARTITIONS,
            format!(
                "Topic currently has {current} partitions, which is higher than the requested {}.",
                request.count
            ),
        ))
        .map_err(|(c, m)| {
            if request.count == current {
                (c, format!("Topic already has {current} partitions."))
            } else {
                (c, m)
            }
        });
    }
    let rf = topic
        .partitions
        .values()
        .next()
        .map_or(1, |p| p.replicas.len());
    let added = request.count - current;
    let assignment = match &request.assignments {
        Some(assignments) => {
            if assignments.len() as i32 != added {
                return Err((
                    code::INVALID_REPLICA_ASSIGNMENT,
                    format!(
                        "Increasing the number of partitions by {added} but {} assignments provided.",
                        assignments.len()
                    ),
                ));
            }
            for replicas in assignments {
                check_replicas(image, replicas, rf)?;
            }
            assignments.clone()
        }
        None => place_new(image, added, rf as i16, current)?,
    };
    Ok(partition_records(image, topic.id, current, &assignment))
}

/// The records of a broker registration. A new incarnation of a broker still registered
/// unfenced (it crashed and came back before the controller fenced it) first loses that
/// registration's leadership and ISR places, as Kafka handles an unclean shutdown: it must
/// catch up before it leads again.
fn registration(image: &MetadataImage, register: MetadataRecord) -> Vec<MetadataRecord> {
    let MetadataRecord::RegisterBroker {
        broker_id,
        incarnation_id,
        ..
    } = &register
    else {
        return vec![register];
    };
    let mut records = match image.brokers.get(broker_id) {
        Some(old) if !old.fenced && old.incarnation_id != *incarnation_id => {
            fence(image, *broker_id, old.epoch)
        }
        _ => Vec::new(),
    };
    records.push(register);
    records
}

/// One partition's election outcome: topic, partition, error code, message.
pub type ElectionResult = (String, i32, i16, Option<String>);

/// A partition by topic name, or the UNKNOWN_TOPIC_OR_PARTITION result naming it.
fn find_partition<'a>(
    image: &'a MetadataImage,
    topic: &str,
    index: i32,
) -> Result<(&'a TopicImage, &'a PartitionImage), ElectionResult> {
    image
        .topic_by_name(topic)
        .and_then(|t| t.partitions.get(&index).map(|p| (t, p)))
        .ok_or_else(|| {
            (
                topic.to_string(),
                index,
                code::UNKNOWN_TOPIC_OR_PARTITION,
                Some("The partition does not exist.".into()),
            )
        })
}

/// Leader elections (Kafka's ElectLeaders): the records to commit and one result per
/// partition asked for (or, when none are named, per partition that needed one).
pub fn elect(
    image: &MetadataImage,
    election_type: i8,
    partitions: Option<&[(String, Vec<i32>)]>,
) -> (Vec<MetadataRecord>, Vec<ElectionResult>) {
    let live = |b: &i32| image.brokers.get(b).is_some_and(|b| !b.fenced);
    let named = partitions.is_some();
    let wanted: Vec<(String, i32)> = match partitions {
        Some(list) => list
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
            .collect(),
        None => image
            .topics
            .values()
            .flat_map(|t| t.partitions.keys().map(move |p| (t.name.clone(), *p)))
            .collect(),
    };
    let mut records = Vec::new();
    let mut results = Vec::new();
    for (topic_name, index) in wanted {
        let (topic, p) = match find_partition(image, &topic_name, index) {
            Ok(found) => found,
            Err(unknown) => {
                results.push(unknown);
                continue;
            }
        };
        let outcome = if election_type == 0 {
            let preferred = p.replicas[0];
            if p.leader == preferred {
                Err((
                    code::ELECTION_NOT_NEEDED,
                    "Leader election not needed".into(),
                ))
            } else if !p.isr.contains(&preferred) || !live(&preferred) {
                Err((
                    code::PREFERRED_LEADER_NOT_AVAILABLE,
                    format!("Failed to elect leader for partition {topic_name}-{index} under strategy PreferredReplicaPartitionLeaderElectionStrategy"),
                ))
            } else {
                Ok((preferred, None))
            }
        } else if p.leader >= 0 && live(&p.leader) {
            Err((
                code::ELECTION_NOT_NEEDED,
                "Leader election not needed".into(),
            ))
        } else if let Some(next) = p.isr.iter().find(|b| live(b)) {
            Ok((*next, None))
        } else if let Some(next) = p.replicas.iter().find(|b| live(b)) {
            Ok((*next, Some(vec![*next])))
        } else {
            Err((
                code::ELIGIBLE_LEADERS_NOT_AVAILABLE,
                format!("Failed to elect leader for partition {topic_name}-{index} under strategy UncleanLeaderElectionStrategy"),
            ))
        };
        match outcome {
            Ok((leader, isr)) => {
                records.push(MetadataRecord::PartitionChange {
                    topic_id: topic.id,
                    partition: index,
                    isr,
                    leader: Some(leader),
                    replicas: None,
                });
                results.push((topic_name, index, code::NONE, None));
            }
            // Asked for every partition: those that need nothing are not listed.
            Err((c, _)) if !named && c == code::ELECTION_NOT_NEEDED => {}
            Err((c, message)) => results.push((topic_name, index, c, Some(message))),
        }
    }
    (records, results)
}

/// Starts, changes or cancels reassignments (KIP-455): the partition's replicas become the
/// target followed by the replicas leaving, which stay until every target replica is in
/// sync ([`completed_reassignments`]). Cancelling goes back to the replicas before it.
fn reassign(
    image: &MetadataImage,
    partitions: &[(String, i32, Option<Vec<i32>>)],
) -> (Vec<MetadataRecord>, Vec<ElectionResult>) {
    let mut records = Vec::new();
    let mut results = Vec::new();
    for (topic_name, index, target) in partitions {
        let (topic, p) = match find_partition(image, topic_name, *index) {
            Ok(found) => found,
            Err(unknown) => {
                results.push(unknown);
                continue;
            }
        };
        let original: Vec<i32> = p
            .replicas
            .iter()
            .copied()
            .filter(|r| !p.adding.contains(r))
            .collect();
        let target = match target {
            None if !p.reassigning() => {
                results.push((
                    topic_name.clone(),
                    *index,
                    code::NO_REASSIGNMENT_IN_PROGRESS,
                    Some(format!("No ongoing reassignment for {topic_name}-{index}.")),
                ));
                continue;
            }
            None => original.clone(),
            Some(target) => {
                if let Err((c, m)) = check_replicas(image, target, target.len()) {
                    results.push((topic_name.clone(), *index, c, Some(m)));
                    continue;
                }
                target.clone()
            }
        };
        let adding: Vec<i32> = target
            .iter()
            .copied()
            .filter(|r| !original.contains(r))
            .collect();
        let removing: Vec<i32> = original
            .iter()
            .copied()
            .filter(|r| !target.contains(r))
            .collect();
        let replicas: Vec<i32> = target.iter().chain(&removing).copied().collect();
        if replicas != p.replicas || adding != p.adding || removing != p.removing {
            records.push(MetadataRecord::PartitionChange {
                topic_id: topic.id,
                partition: *index,
                isr: None,
                leader: None,
                replicas: Some(replicas),
            });
            records.push(MetadataRecord::PartitionReassignment {
                topic_id: topic.id,
                partition: *index,
                adding,
                removing,
            });
        }
        results.push((topic_name.clone(), *index, code::NONE, None));
    }
    (records, results)
}

/// Reassignments whose target replicas are all in the ISR end: the replicas become the
/// target, the ISR loses the leaving ones, and a leaving leader hands over to the first
/// in-sync target replica.
fn completed_reassignments(image: &MetadataImage) -> Vec<MetadataRecord> {
    let live = |b: &i32| image.brokers.get(b).is_some_and(|b| !b.fenced);
    let mut records = Vec::new();
    for topic in image.topics.values() {
        for (index, p) in &topic.partitions {
            if !p.reassigning() {
                continue;
            }
            let target = p.target_replicas();
            if !target.iter().all(|r| p.isr.contains(r)) {
                continue;
            }
            let isr: Vec<i32> = p
                .isr
                .iter()
                .copied()
                .filter(|r| target.contains(r))
                .collect();
            let leader = if target.contains(&p.leader) {
                None
            } else {
                Some(target.iter().copied().find(|r| live(r)).unwrap_or(-1))
            };
            records.push(MetadataRecord::PartitionChange {
                topic_id: topic.id,
                partition: *index,
                isr: Some(isr),
                leader,
                replicas: Some(target),
            });
            records.push(MetadataRecord::PartitionReassignment {
                topic_id: topic.id,
                partition: *index,
                adding: Vec::new(),
                removing: Vec::new(),
            });
        }
    }
    records
}

/// Every `interval_ms` while active, moves leadership back to preferred replicas that are
/// in sync (Kafka's `auto.leader.rebalance.enable`), e.g. after a restarted broker caught up.
async fn rebalance_loop(controller: std::sync::Weak<Controller>, interval_ms: u64) {
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(controller) = controller.upgrade() else {
            return;
        };
        if controller.leader() != Some(controller.node_id) {
            continue;
        }
        let _deciding = controller.decide.lock().await;
        let image = controller.state.subscribe().borrow().image.clone();
        let (records, results) = elect(&image, 0, None);
        let moved: Vec<_> = results.iter().filter(|r| r.2 == code::NONE).collect();
        if records.is_empty() {
            continue;
        }
        match controller.commit(&records).await {
            Ok(_) => info!(
                partitions = moved.len(),
                "moved leadership back to preferred replicas"
            ),
            Err(e) => warn!(error = ?e, "preferred leader election failed"),
        }
    }
}

/// An AlterPartition request, decoded. Public, as the decisions below, for the broker's
/// replication simulation, which takes its controller decisions from these functions.
pub struct AlterPartition {
    pub broker_id: i32,
    pub broker_epoch: i64,
    pub topic_id: Uuid,
    pub partition: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<i32>,
}

/// Kafka's checks of an AlterPartition: the sender is the current registration of the
/// partition's leader, at the partition's current leader and partition epochs; the new ISR
/// holds the leader, only replicas, and only unfenced brokers among those it adds. `None`
/// when the ISR already is the requested one.
pub fn check_alter_partition(
    image: &MetadataImage,
    change: &AlterPartition,
) -> Result<Option<MetadataRecord>, (i16, String)> {
    let broker = image.brokers.get(&change.broker_id);
    if broker.is_none_or(|b| b.epoch != change.broker_epoch) {
        return Err((
            code::STALE_BROKER_EPOCH,
            format!(
                "broker {} epoch {} is not current",
                change.broker_id, change.broker_epoch
            ),
        ));
    }
    let p = image
        .topics
        .get(&change.topic_id)
        .and_then(|t| t.partitions.get(&change.partition))
        .ok_or((
            code::UNKNOWN_TOPIC_OR_PARTITION,
            "This server does not host this topic-partition.".into(),
        ))?;
    if p.leader != change.broker_id {
        return Err((
            code::NOT_LEADER_OR_FOLLOWER,
            format!("broker {} does not lead the partition", change.broker_id),
        ));
    }
    if change.leader_epoch < p.leader_epoch {
        return Err((
            code::FENCED_LEADER_EPOCH,
            format!(
                "leader epoch {} is older than {}",
                change.leader_epoch, p.leader_epoch
            ),
        ));
    }
    if change.partition_epoch != p.partition_epoch || change.leader_epoch != p.leader_epoch {
        return Err((
            code::INVALID_UPDATE_VERSION,
            format!(
                "partition epoch {} is not the current {}",
                change.partition_epoch, p.partition_epoch
            ),
        ));
    }
    let mut isr = change.isr.clone();
    isr.sort_unstable();
    isr.dedup();
    if isr.len() != change.isr.len()
        || !isr.contains(&change.broker_id)
        || isr.iter().any(|b| !p.replicas.contains(b))
    {
        return Err((
            code::INVALID_REQUEST,
            format!(
                "ISR {:?} must hold the leader and only replicas {:?}",
                change.isr, p.replicas
            ),
        ));
    }
    let ineligible = change
        .isr
        .iter()
        .find(|b| !p.isr.contains(b) && image.brokers.get(b).is_none_or(|b| b.fenced));
    if let Some(b) = ineligible {
        return Err((
            code::INELIGIBLE_REPLICA,
            format!("broker {b} is fenced and cannot join the ISR"),
        ));
    }
    if change.isr == p.isr {
        return Ok(None);
    }
    Ok(Some(MetadataRecord::PartitionChange {
        topic_id: change.topic_id,
        partition: change.partition,
        isr: Some(change.isr.clone()),
        leader: None,
        replicas: None,
    }))
}

/// Whether a topic allows electing an out-of-sync replica (`unclean.leader.election.enable`).
fn unclean_allowed(image: &MetadataImage, topic: &str) -> bool {
    image
        .configs
        .get(&(2, topic.to_string()))
        .and_then(|c| c.get("unclean.leader.election.enable"))
        .is_some_and(|v| v == "true")
}

/// Fences a broker: the partitions it leads move to another unfenced in-sync replica (or,
/// only where `unclean.leader.election.enable` allows it, to any unfenced replica; else to
/// none, -1), and it leaves every ISR it was in (a partition's last in-sync replica stays,
/// so that it can lead again when it returns, as Kafka keeps it).
pub fn fence(image: &MetadataImage, broker_id: i32, epoch: i64) -> Vec<MetadataRecord> {
    let mut records = vec![MetadataRecord::FenceBroker { broker_id, epoch }];
    let live = |b: &i32| *b != broker_id && image.brokers.get(b).is_some_and(|b| !b.fenced);
    for topic in image.topics.values() {
        for (partition, p) in &topic.partitions {
            if !p.isr.contains(&broker_id) && p.leader != broker_id {
                continue;
            }
            let isr: Vec<i32> = p.isr.iter().copied().filter(|b| *b != broker_id).collect();
            let isr = (!isr.is_empty()).then_some(isr);
            let leader = if p.leader != broker_id {
                None
            } else if let Some(next) = p.isr.iter().copied().find(|b| live(b)) {
                Some(next)
            } else if let Some(next) = unclean_allowed(image, &topic.name)
                .then(|| p.replicas.iter().copied().find(|b| live(b)))
                .flatten()
            {
                warn!(topic = %topic.name, partition, leader = next, "unclean leader election");
                records.push(MetadataRecord::PartitionChange {
                    topic_id: topic.id,
                    partition: *partition,
                    isr: Some(vec![next]),
                    leader: Some(next),
                    replicas: None,
                });
                continue;
            } else {
                Some(-1)
            };
            records.push(MetadataRecord::PartitionChange {
                topic_id: topic.id,
                partition: *partition,
                isr,
                leader,
                replicas: None,
            });
        }
    }
    records
}

/// Unfences a broker and gives it leadership of the leaderless partitions it is in sync for
/// (or, where `unclean.leader.election.enable` allows it, of any leaderless partition it
/// holds a replica of).
pub fn unfence(image: &MetadataImage, broker_id: i32, epoch: i64) -> Vec<MetadataRecord> {
    let mut records = vec![MetadataRecord::UnfenceBroker { broker_id, epoch }];
    for topic in image.topics.values() {
        for (partition, p) in &topic.partitions {
            if p.leader != -1 || !p.replicas.contains(&broker_id) {
                continue;
            }
            let in_sync = p.isr.contains(&broker_id);
            if !in_sync && !unclean_allowed(image, &topic.name) {
                continue;
            }
            records.push(MetadataRecord::PartitionChange {
                topic_id: topic.id,
                partition: *partition,
                isr: (!in_sync).then(|| vec![broker_id]),
                leader: Some(broker_id),
                replicas: None,
            });
        }
    }
    records
}

async fn fence_loop(controller: std::sync::Weak<Controller>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(FENCE_CHECK_INTERVAL_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(controller) = controller.upgrade() else {
            return;
        };
        controller.fence_expired().await;
        controller.complete_reassignments().await;
    }
}

/// Serves the controller listener: Raft RPCs from the other voters and requests from brokers.
async fn serve(listener: TcpListener, controller: Arc<Controller>) {
    // Dropping the set (when this task is aborted at shutdown) closes every connection.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        if connections.len() >= CONNECTIONS_MAX {
            // Full: accept again only when a connection ends.
            let _ = connections.join_next().await;
            continue;
        }
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "controller accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let controller = Arc::clone(&controller);
        connections.spawn(async move {
            if let Err(e) = serve_connection(stream, &controller).await {
                warn!(%peer, error = %e, "closing controller connection");
            }
        });
    }
}

async fn serve_connection(
    mut stream: tokio::net::TcpStream,
    controller: &Controller,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    while let Some(envelope) = net::read_frame::<net::Envelope>(&mut stream).await? {
        if envelope.cluster_id != controller.config.cluster_id {
            let refusal = Response::Controller(ControllerResponse::Error {
                code: code::INCONSISTENT_CLUSTER_ID,
                message: format!(
                    "this controller belongs to cluster {}, not {}",
                    controller.config.cluster_id, envelope.cluster_id
                ),
            });
            net::write_frame(&mut stream, &refusal).await?;
            return Err(std::io::Error::other(format!(
                "a request for cluster {}",
                envelope.cluster_id
            )));
        }
        let response = match envelope.request {
            Request::Vote(rpc) => Response::Vote(controller.raft.vote(rpc).await),
            Request::AppendEntries(rpc) => {
                Response::AppendEntries(controller.raft.append_entries(rpc).await)
            }
            Request::InstallSnapshot(rpc) => {
                Response::InstallSnapshot(controller.raft.install_snapshot(rpc).await)
            }
            Request::Controller(request) => Response::Controller(controller.handle(request).await),
        };
        net::write_frame(&mut stream, &response).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: Uuid = Uuid::from_u128(7);

    /// Three registered, unfenced brokers (epochs 10, 20, 30) and one partition led by 1.
    fn image(isr: Vec<i32>, leader: i32) -> MetadataImage {
        let mut records = Vec::new();
        for id in 1..=3 {
            records.push(MetadataRecord::RegisterBroker {
                broker_id: id,
                incarnation_id: Uuid::from_u128(id as u128),
                epoch: i64::from(id) * 10,
                host: "127.0.0.1".into(),
                port: 9000 + id as u16,
                rack: None,
            });
            records.push(MetadataRecord::UnfenceBroker {
                broker_id: id,
                epoch: i64::from(id) * 10,
            });
        }
        records.push(MetadataRecord::Topic {
            name: "t".into(),
            topic_id: TOPIC,
        });
        records.push(MetadataRecord::Partition {
            topic_id: TOPIC,
            partition: 0,
            replicas: vec![1, 2, 3],
            isr,
            leader,
            leader_epoch: 0,
            partition_epoch: 0,
        });
        MetadataImage::default().apply(&records).unwrap()
    }

    fn partition(image: &MetadataImage) -> strom_metadata::image::PartitionImage {
        image.topics[&TOPIC].partitions[&0].clone()
    }

    #[test]
    fn fencing_a_leader_elects_an_in_sync_replica_and_fencing_a_follower_drops_it_from_the_isr() {
        let before = image(vec![1, 2, 3], 1);
        let after = before.apply(&fence(&before, 1, 10)).unwrap();
        let p = partition(&after);
        assert_eq!(
            (p.leader, p.isr.clone(), p.leader_epoch),
            (2, vec![2, 3], 1)
        );
        let after = after.apply(&fence(&after, 3, 30)).unwrap();
        let p = partition(&after);
        assert_eq!((p.leader, p.isr.clone(), p.leader_epoch), (2, vec![2], 1));
    }

    #[test]
    fn a_leader_without_an_in_sync_successor_leaves_the_partition_offline_unless_unclean_election_is_allowed(
    ) {
        let before = image(vec![1], 1);
        let after = before.apply(&fence(&before, 1, 10)).unwrap();
        let p = partition(&after);
        assert_eq!((p.leader, p.isr.clone()), (-1, vec![1]));
        // The last in-sync replica leads again when it returns.
        let back = after.apply(&unfence(&after, 1, 10)).unwrap();
        assert_eq!(partition(&back).leader, 1);

        let mut unclean = image(vec![1], 1);
        unclean = unclean
            .apply(&[MetadataRecord::Config {
                resource_type: 2,
                resource_name: "t".into(),
                key: "unclean.leader.election.enable".into(),
                value: Some("true".into()),
            }])
            .unwrap();
        let after = unclean.apply(&fence(&unclean, 1, 10)).unwrap();
        let p = partition(&after);
        assert_eq!((p.leader, p.isr.clone()), (2, vec![2]));
    }

    #[test]
    fn a_reassignment_adds_the_new_replicas_first_and_drops_the_old_ones_once_all_are_in_sync() {
        // Partition on [1, 2, 3] led by 1, moving to [2, 3, 4] with a fourth broker.
        let mut image = image(vec![1, 2, 3], 1);
        image = image
            .apply(&[
                MetadataRecord::RegisterBroker {
                    broker_id: 4,
                    incarnation_id: Uuid::from_u128(4),
                    epoch: 40,
                    host: "127.0.0.1".into(),
                    port: 9004,
                    rack: None,
                },
                MetadataRecord::UnfenceBroker {
                    broker_id: 4,
                    epoch: 40,
                },
            ])
            .unwrap();
        let request = vec![("t".to_string(), 0, Some(vec![2, 3, 4]))];
        let (records, results) = reassign(&image, &request);
        assert_eq!(results[0].2, code::NONE);
        let moving = image.apply(&records).unwrap();
        let p = partition(&moving);
        assert_eq!(
            (p.replicas.clone(), p.adding.clone(), p.removing.clone()),
            (vec![2, 3, 4, 1], vec![4], vec![1])
        );
        assert!(
            completed_reassignments(&moving).is_empty(),
            "4 is not in sync yet"
        );
        let in_sync = moving
            .apply(&[MetadataRecord::PartitionChange {
                topic_id: TOPIC,
                partition: 0,
                isr: Some(vec![1, 2, 3, 4]),
                leader: None,
                replicas: None,
            }])
            .unwrap();
        let done = in_sync.apply(&completed_reassignments(&in_sync)).unwrap();
        let p = partition(&done);
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader, p.reassigning()),
            (vec![2, 3, 4], vec![2, 3, 4], 2, false)
        );
        // Cancelling needs a reassignment in progress; cancelling one drops the joining
        // replicas (keeping the order the reassignment gave the others, as Kafka's revert).
        let (_, results) = reassign(&done, &[("t".to_string(), 0, None)]);
        assert_eq!(results[0].2, code::NO_REASSIGNMENT_IN_PROGRESS);
        let (records, _) = reassign(&moving, &[("t".to_string(), 0, None)]);
        let cancelled = moving.apply(&records).unwrap();
        let p = partition(&cancelled);
        assert_eq!(
            (p.replicas.clone(), p.reassigning()),
            (vec![2, 3, 1], false)
        );
        let (_, results) = reassign(&image, &[("t".to_string(), 0, Some(vec![1, 1, 2]))]);
        assert_eq!(results[0].2, code::INVALID_REPLICA_ASSIGNMENT);
    }

    #[test]
    fn a_new_incarnation_of_an_unfenced_leader_gives_up_its_leadership_and_isr_places() {
        let before = image(vec![1, 2, 3], 1);
        let register = |incarnation: u128| MetadataRecord::RegisterBroker {
            broker_id: 1,
            incarnation_id: Uuid::from_u128(incarnation),
            epoch: 50,
            host: "127.0.0.1".into(),
            port: 9001,
            rack: None,
        };
        let after = before.apply(&registration(&before, register(99))).unwrap();
        let p = partition(&after);
        assert_eq!(
            (p.leader, p.isr.clone(), p.leader_epoch),
            (2, vec![2, 3], 1)
        );
        assert!(after.brokers[&1].fenced && after.brokers[&1].epoch == 50);
        // The same incarnation registering again (the controller forgot it) moves nothing.
        let again = before.apply(&registration(&before, register(1))).unwrap();
        assert_eq!(partition(&again).leader, 1);
    }

    fn alter(isr: Vec<i32>, leader_epoch: i32, partition_epoch: i32) -> AlterPartition {
        AlterPartition {
            broker_id: 1,
            broker_epoch: 10,
            topic_id: TOPIC,
            partition: 0,
            leader_epoch,
            partition_epoch,
            isr,
        }
    }

    #[test]
    fn alter_partition_takes_only_the_current_leaders_change_at_the_current_epochs() {
        let image = image(vec![1, 2, 3], 1);
        let code = |change: &AlterPartition| check_alter_partition(&image, change).map_err(|e| e.0);
        assert!(matches!(
            code(&alter(vec![1, 2], 0, 0)),
            Ok(Some(MetadataRecord::PartitionChange {
                isr: Some(_),
                leader: None,
                ..
            }))
        ));
        assert!(matches!(code(&alter(vec![1, 2, 3], 0, 0)), Ok(None)));
        assert_eq!(
            code(&alter(vec![1, 2], 0, 5)).unwrap_err(),
            code::INVALID_UPDATE_VERSION
        );
        let stale_epoch = AlterPartition {
            broker_epoch: 9,
            ..alter(vec![1, 2], 0, 0)
        };
        assert_eq!(code(&stale_epoch).unwrap_err(), code::STALE_BROKER_EPOCH);
        let not_leader = AlterPartition {
            broker_id: 2,
            broker_epoch: 20,
            ..alter(vec![2, 3], 0, 0)
        };
        assert_eq!(code(&not_leader).unwrap_err(), code::NOT_LEADER_OR_FOLLOWER);
        assert_eq!(
            code(&alter(vec![2, 3], 0, 0)).unwrap_err(),
            code::INVALID_REQUEST,
            "the ISR must hold the leader"
        );
        assert_eq!(
            code(&alter(vec![1, 4], 0, 0)).unwrap_err(),
            code::INVALID_REQUEST,
            "only replicas"
        );
        let shrunk = image
            .apply(&[
                MetadataRecord::PartitionChange {
                    topic_id: TOPIC,
                    partition: 0,
                    isr: Some(vec![1]),
                    leader: None,
                    replicas: None,
                },
                MetadataRecord::FenceBroker {
                    broker_id: 3,
                    epoch: 30,
                },
            ])
            .unwrap();
        assert_eq!(
            check_alter_partition(&shrunk, &alter(vec![1, 3], 0, 1))
                .map_err(|e| e.0)
                .unwrap_err(),
            code::INELIGIBLE_REPLICA,
            "a fenced broker cannot join"
        );
    }
}
