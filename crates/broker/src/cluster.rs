//! This node's part in the cluster: the controller it runs (if it is a voter), the metadata
//! it follows, and, as a broker, its registration and heartbeats.
//!
//! A broker applies every committed metadata change to its [`TopicManager`] in log order: a
//! node that is also a controller reads its own state machine, a broker-only node follows the
//! active controller's log by deltas ([`follow_log`]). A broker registers, heartbeats every
//! `broker.heartbeat.interval.ms`, and is unfenced by the controller once it has applied the
//! log up to its registration; it serves clients only from then on.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strom_controller::client::ControllerClient;
use strom_controller::service::{
    code, Controller, ControllerConfig, ControllerRequest, ControllerResponse, TopicResult,
};
use strom_controller::{NodeId, Published};
use strom_metadata::{MetadataImage, MetadataRecord};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::BrokerConfig;
use crate::topics::{TopicManager, METADATA_LOG_DIR};
use crate::BrokerError;

/// Longest an admin request (CreateTopics, DeleteTopics, …) waits for the controller.
pub const ADMIN_TIMEOUT_MS: u64 = 10_000;
/// How long a follower of the log waits for news per request.
const FOLLOW_WAIT_MS: u64 = 1_000;
/// Pause between heartbeats while waiting to be unfenced.
const CATCH_UP_HEARTBEAT_MS: u64 = 50;

/// The voters and the address of each one's controller listener.
pub fn voters(config: &BrokerConfig) -> BTreeMap<NodeId, String> {
    if config.controller_quorum_voters.is_empty() {
        // The embedded default: this node is the whole quorum and needs no listener.
        return BTreeMap::from([(config.node_id as NodeId, String::new())]);
    }
    config
        .controller_quorum_voters
        .iter()
        .map(|(id, host, port)| (*id as NodeId, format!("{host}:{port}")))
        .collect()
}

/// Starts this node's controller: binds the controller listener (when configured) and
/// joins the quorum with its log in `<first log dir>/__cluster_metadata-0`.
pub async fn start_controller(
    config: &BrokerConfig,
    cluster_id: &str,
) -> Result<(Arc<Controller>, Option<std::net::SocketAddr>), BrokerError> {
    let listener = match config.controller_listener() {
        Some(l) => {
            let host = if l.host.is_empty() {
                "0.0.0.0"
            } else {
                &l.host
            };
            Some(TcpListener::bind((host, l.port)).await?)
        }
        None => None,
    };
    let bound = listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let controller_config = ControllerConfig {
        node_id: config.node_id as NodeId,
        cluster_id: cluster_id.to_string(),
        voters: voters(config),
        dir: Path::new(&config.log_dirs[0]).join(METADATA_LOG_DIR),
        election_timeout_ms: config.controller_quorum_election_timeout_ms.max(1) as u64,
        broker_session_timeout_ms: config.broker_session_timeout_ms.max(1) as u64,
        leader_rebalance_interval_ms: config
            .auto_leader_rebalance_enable
            .then_some(config.leader_imbalance_check_interval_seconds.max(1) as u64 * 1000),
    };
    let controller = Controller::start(controller_config, listener).await?;
    info!(node_id = config.node_id, controller_addr = ?bound, "controller started");
    Ok((controller, bound))
}

/// The cluster as a broker sees it.
pub struct Cluster {
    pub node_id: i32,
    /// This node's controller, when it is a voter.
    pub controller: Option<Arc<Controller>>,
    /// For admin requests forwarded to the active controller.
    admin: ControllerClient,
    heartbeats: ControllerClient,
    /// For producer id blocks ([`crate::producer_ids`]), so that fetching one never waits
    /// behind a slow admin request.
    producer_ids: ControllerClient,
    /// The committed metadata, as this node knows it.
    pub metadata: watch::Receiver<Published>,
    broker_epoch: AtomicI64,
    heartbeats_failing: std::sync::atomic::AtomicBool,
}

impl Cluster {
    /// Follows the metadata: from the local controller when there is one, else from the
    /// active controller over the network.
    pub fn new(
        config: &BrokerConfig,
        cluster_id: &str,
        controller: Option<Arc<Controller>>,
    ) -> Arc<Cluster> {
        let voters = voters(config);
        let metadata = match &controller {
            Some(c) => c.state_machine().subscribe(),
            None => {
                let (tx, rx) = watch::channel(Published::default());
                let client = ControllerClient::new(&voters, cluster_id, None);
                tokio::spawn(follow_log(client, tx));
                rx
            }
        };
        Arc::new(Cluster {
            node_id: config.node_id,
            admin: ControllerClient::new(&voters, cluster_id, controller.clone()),
            heartbeats: ControllerClient::new(&voters, cluster_id, controller.clone()),
            producer_ids: ControllerClient::new(&voters, cluster_id, controller.clone()),
            controller,
            metadata,
            broker_epoch: AtomicI64::new(-1),
            heartbeats_failing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Sends an admin request to the active controller.
    pub async fn call(&self, request: ControllerRequest) -> ControllerResponse {
        self.call_within(request, ADMIN_TIMEOUT_MS).await
    }

    /// Sends an admin request, waiting at most `timeout_ms` (capped at [`ADMIN_TIMEOUT_MS`])
    /// for the active controller to answer.
    pub async fn call_within(
        &self,
        request: ControllerRequest,
        timeout_ms: u64,
    ) -> ControllerResponse {
        let timeout_ms = timeout_ms.clamp(1, ADMIN_TIMEOUT_MS);
        self.admin
            .call(request, Duration::from_millis(timeout_ms))
            .await
    }

    /// Sends a producer id request to the active controller, waiting at most `timeout_ms`.
    pub async fn call_producer_ids(
        &self,
        request: ControllerRequest,
        timeout_ms: u64,
    ) -> ControllerResponse {
        self.producer_ids
            .call(request, Duration::from_millis(timeout_ms.max(1)))
            .await
    }

    /// Registers this broker until the controller accepts it; returns the broker epoch.
    async fn register(&self, config: &BrokerConfig, host: &str, port: u16) -> i64 {
        let incarnation_id = uuid::Uuid::new_v4().as_u128();
        loop {
            let request = ControllerRequest::RegisterBroker {
                broker_id: self.node_id,
                incarnation_id,
                host: host.to_string(),
                port,
                rack: config.broker_rack.clone(),
            };
            let timeout = Duration::from_millis(config.broker_session_timeout_ms.max(1) as u64);
            match self.heartbeats.call(request, timeout).await {
                ControllerResponse::Registered { broker_epoch } => {
                    self.broker_epoch.store(broker_epoch, Ordering::Release);
                    info!(broker_epoch, "registered with the controller");
                    return broker_epoch;
                }
                other => {
                    warn!(answer = ?other, "broker registration failed; retrying");
                    tokio::time::sleep(Duration::from_millis(CATCH_UP_HEARTBEAT_MS)).await;
                }
            }
        }
    }

    /// Sends one heartbeat: `Some(fenced)`, or `None` if the controller no longer knows this
    /// registration.
    async fn heartbeat(
        &self,
        config: &BrokerConfig,
        metadata_index: u64,
        want_shutdown: bool,
    ) -> Option<bool> {
        let request = ControllerRequest::BrokerHeartbeat {
            broker_id: self.node_id,
            broker_epoch: self.broker_epoch.load(Ordering::Acquire),
            metadata_index,
            want_shutdown,
        };
        let timeout = Duration::from_millis(config.broker_heartbeat_interval_ms.max(1) as u64);
        let answer = self.heartbeats.call(request, timeout).await;
        let failed = !matches!(answer, ControllerResponse::Heartbeat { .. });
        // One warning when heartbeats start failing and one line when they work again, not
        // one per attempt while the quorum is away.
        let was_failing = self.heartbeats_failing.swap(failed, Ordering::AcqRel);
        if was_failing && !failed {
            info!("heartbeats reach the active controller again");
        }
        match answer {
            ControllerResponse::Heartbeat { fenced } => Some(fenced),
            ControllerResponse::Error {
                code: code::STALE_BROKER_EPOCH,
                ..
            } => None,
            other => {
                if !was_failing {
                    warn!(answer = ?other, "heartbeat failed; retrying until a controller answers");
                }
                Some(true)
            }
        }
    }

    /// Registers, then heartbeats until shut down; re-registers when the controller forgot
    /// this broker's registration.
    pub async fn run_heartbeats(
        self: Arc<Self>,
        config: Arc<BrokerConfig>,
        topics: Arc<TopicManager>,
        host: String,
        port: u16,
    ) {
        let interval = Duration::from_millis(config.broker_heartbeat_interval_ms.max(1) as u64);
        loop {
            self.register(&config, &host, port).await;
            loop {
                let index = topics.image().index;
                let Some(fenced) = self.heartbeat(&config, index, false).await else {
                    warn!("the controller no longer knows this broker's registration; registering again");
                    break;
                };
                let pause = if fenced {
                    Duration::from_millis(CATCH_UP_HEARTBEAT_MS)
                } else {
                    interval
                };
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Asks to be fenced before stopping, so that clients stop sending here at once.
    pub async fn controlled_shutdown(&self, config: &BrokerConfig, metadata_index: u64) {
        if self.broker_epoch.load(Ordering::Acquire) < 0 {
            return;
        }
        if self.heartbeat(config, metadata_index, true).await.is_none() {
            warn!("controlled shutdown: the controller no longer knows this broker");
        }
    }

    /// This broker's registration epoch (-1 before it registered).
    pub fn broker_epoch(&self) -> i64 {
        self.broker_epoch.load(Ordering::Acquire)
    }

    /// Whether `published` shows this broker registered with its current epoch and unfenced.
    pub fn is_live_in(&self, image: &MetadataImage) -> bool {
        let epoch = self.broker_epoch.load(Ordering::Acquire);
        image
            .brokers
            .get(&self.node_id)
            .is_some_and(|b| b.epoch == epoch && !b.fenced)
    }
}

/// Applies each new metadata to the topics, in order. Stray partition directories are
/// removed once, after this broker is first seen live (it has caught up with the log).
pub async fn apply_metadata(cluster: Arc<Cluster>, topics: Arc<TopicManager>) {
    let mut metadata = cluster.metadata.clone();
    let mut strays_removed = false;
    loop {
        let published = metadata.borrow_and_update().clone();
        let remove_strays = !strays_removed && cluster.is_live_in(&published.image);
        let applied = {
            let topics = Arc::clone(&topics);
            let published = published.clone();
            tokio::task::spawn_blocking(move || topics.apply(&published, remove_strays)).await
        };
        match applied {
            Ok(Ok(())) => strays_removed |= remove_strays,
            Ok(Err(e)) => error!(error = %e, index = published.index, "applying metadata failed"),
            Err(e) => error!(error = %e, "metadata task failed"),
        }
        if metadata.changed().await.is_err() {
            return;
        }
    }
}

/// Follows the active controller's log by deltas into `published` (a broker-only node).
async fn follow_log(client: ControllerClient, published: watch::Sender<Published>) {
    loop {
        let current = published.borrow().clone();
        let request = ControllerRequest::FetchMetadata {
            after_index: current.index,
            max_wait_ms: FOLLOW_WAIT_MS,
        };
        let answer = client
            .call(request, Duration::from_millis(FOLLOW_WAIT_MS * 3))
            .await;
        match answer {
            ControllerResponse::Metadata {
                index,
                image,
                entries,
            } => match apply_entries(&current, image, &entries) {
                Ok(next) if index > current.index => {
                    published.send_replace(Published {
                        index,
                        image: Arc::new(next),
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    error!(error = %e, "metadata from the controller does not apply; refetching all");
                    published.send_replace(Published::default());
                }
            },
            other => {
                warn!(answer = ?other, "following the metadata log failed");
                tokio::time::sleep(Duration::from_millis(CATCH_UP_HEARTBEAT_MS)).await;
            }
        }
        if published.is_closed() {
            return;
        }
    }
}

fn apply_entries(
    current: &Published,
    whole: bool,
    entries: &[(u64, Vec<Vec<u8>>)],
) -> Result<MetadataImage, String> {
    let mut image = if whole {
        MetadataImage::default()
    } else {
        (*current.image).clone()
    };
    for (_, records) in entries {
        let records: Vec<MetadataRecord> = records
            .iter()
            .map(|r| MetadataRecord::decode(r))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        image = image.apply(&records).map_err(|e| e.to_string())?;
    }
    Ok(image)
}

/// How long an admin request waits for this broker to apply its own change.
const APPLY_WAIT_MS: u64 = 5_000;

/// Sends a topic request (create, delete, new partitions) of `count` topics to the active
/// controller and waits until this broker has applied its outcome; a failure of the whole
/// request becomes every topic's result.
pub async fn topic_request(
    broker: &crate::Broker,
    request: ControllerRequest,
    count: usize,
    timeout_ms: u64,
) -> Vec<TopicResult> {
    let whole = |error_code: i16, message: String| {
        vec![
            TopicResult {
                error_code,
                message: Some(message),
                ..TopicResult::default()
            };
            count
        ]
    };
    let results = match broker.cluster.call_within(request, timeout_ms).await {
        ControllerResponse::Topics(results) if results.len() == count => results,
        ControllerResponse::Error { code, message } => whole(code, message),
        other => whole(
            kafka_protocol::ResponseError::UnknownServerError.code(),
            format!("unexpected controller answer {other:?}"),
        ),
    };
    let index = results.iter().map(|r| r.index).max().unwrap_or(0);
    wait_for_applied(broker, index).await;
    results
}

/// Sends an admin request of `count` items to the active controller and, once it answers
/// with one result per item (`results` picks them and the log index out of its answer),
/// waits until this broker has applied that index. A failed call fails every item with its
/// error.
pub async fn forward_items(
    broker: &crate::Broker,
    request: ControllerRequest,
    count: usize,
    results: impl FnOnce(&ControllerResponse) -> Option<(&[(i16, Option<String>)], u64)>,
) -> Vec<(i16, Option<String>)> {
    let whole = |code: i16, message: String| vec![(code, Some(message)); count];
    let response = broker.cluster.call(request).await;
    if let Some((items, index)) = results(&response).filter(|(items, _)| items.len() == count) {
        let items = items.to_vec();
        wait_for_applied(broker, index).await;
        return items;
    }
    match response {
        ControllerResponse::Error { code, message } => whole(code, message),
        other => whole(
            kafka_protocol::ResponseError::UnknownServerError.code(),
            format!("unexpected controller answer {other:?}"),
        ),
    }
}

/// Waits (bounded) until this broker has applied the metadata log up to `index`: an admin
/// request answers only then, so that the client's next request here sees its change (logs
/// created or deleted included).
pub async fn wait_for_applied(broker: &crate::Broker, index: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(APPLY_WAIT_MS);
    let mut applied = broker.topics.subscribe_applied();
    let reached = tokio::time::timeout_at(deadline, applied.wait_for(|i| *i >= index)).await;
    if !matches!(reached, Ok(Ok(_))) {
        warn!(index, "this broker has not applied an admin change yet");
    }
}
