//! Followers: for every partition this broker replicates but does not lead, fetch from the
//! leader with Kafka's own Fetch API (v13, replica id set) and append what comes back
//! verbatim, offsets and leader epochs as the leader assigned them.
//!
//! One fetcher task per leader broker (Kafka's `num.replica.fetchers=1`), each with one
//! connection and one long-polling request for all its partitions at a time. The set of
//! partitions follows the metadata: after every applied change, [`run`] recomputes which
//! partitions each leader serves this broker.
//!
//! Truncation follows the leader's `DivergingEpoch` answer (KIP-595), as Kafka's
//! `AbstractFetcherThread.truncateOnFetchResponse`: the follower sends the epoch of its last
//! batch; when the leader's log ends that epoch earlier, the follower truncates to the
//! smaller of the two end offsets and fetches again, until the logs agree. So a former
//! leader never keeps records the new leader does not have.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse};
use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::topics::{now_ms, Partition, TopicManager};

/// The Fetch version followers send: topic ids (v13) and diverging epochs (v12+).
const FETCH_VERSION: i16 = 13;
/// Followers' client id, followed by the follower's node id.
pub const FETCHER_CLIENT_ID_PREFIX: &str = "strom-replica-fetcher-";
/// Pause before asking a leader again whose metadata is behind this broker's.
const LEADER_CATCH_UP_RETRY_MS: u64 = 20;

/// Errors a leader answers while it has not applied the metadata this follower has.
fn leader_catching_up(code: i16) -> bool {
    [
        ResponseError::UnknownTopicId.code(),
        ResponseError::UnknownTopicOrPartition.code(),
        ResponseError::NotLeaderOrFollower.code(),
        ResponseError::UnknownLeaderEpoch.code(),
    ]
    .contains(&code)
}

/// Largest fetch response a follower accepts (the leader honours the request's max_bytes;
/// this bounds a broken peer).
const RESPONSE_BYTES_MAX: usize = 256 << 20;

/// A partition to fetch from its leader.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) topic_id: Uuid,
    pub(crate) topic: String,
    pub(crate) partition: Arc<Partition>,
    pub(crate) leader_epoch: i32,
}

/// What one fetcher task is told by [`run`].
#[derive(Default)]
struct Assignment {
    endpoint: Option<(String, u16)>,
    targets: Vec<Target>,
}

struct Fetcher {
    assignment: Mutex<Assignment>,
    changed: Notify,
}

/// Keeps one fetcher per leader this broker follows, in step with the applied metadata.
pub async fn run(config: Arc<BrokerConfig>, topics: Arc<TopicManager>) {
    let mut applied = topics.subscribe_applied();
    let mut fetchers: HashMap<i32, Arc<Fetcher>> = HashMap::new();
    loop {
        let mut wanted: BTreeMap<i32, Vec<Target>> = BTreeMap::new();
        for topic in topics.all() {
            for (state, partition) in topic.states.iter().zip(&topic.local) {
                let Some(partition) = partition else { continue };
                if state.leader >= 0 && state.leader != config.node_id {
                    wanted.entry(state.leader).or_default().push(Target {
                        topic_id: topic.id,
                        topic: topic.name.clone(),
                        partition: Arc::clone(partition),
                        leader_epoch: state.leader_epoch,
                    });
                }
            }
        }
        let image = topics.image();
        for (leader, fetcher) in &fetchers {
            if !wanted.contains_key(leader) {
                fetcher.assignment.lock().targets.clear();
                fetcher.changed.notify_one();
            }
        }
        for (leader, targets) in wanted {
            let endpoint = image
                .image
                .brokers
                .get(&leader)
                .map(|b| (b.host.clone(), b.port));
            let fetcher = fetchers.entry(leader).or_insert_with(|| {
                let fetcher = Arc::new(Fetcher {
                    assignment: Mutex::new(Assignment::default()),
                    changed: Notify::new(),
                });
                tokio::spawn(fetch_loop(
                    leader,
                    Arc::clone(&fetcher),
                    Arc::clone(&config),
                    Arc::clone(&topics),
                ));
                fetcher
            });
            let mut assignment = fetcher.assignment.lock();
            // Only a different set of partitions or epochs (or endpoint) interrupts the
            // fetcher: most metadata changes (ISR, other topics) do not concern it.
            let same = assignment.endpoint == endpoint
                && assignment.targets.len() == targets.len()
                && assignment.targets.iter().zip(&targets).all(|(a, b)| {
                    a.topic_id == b.topic_id
                        && a.partition.index == b.partition.index
                        && a.leader_epoch == b.leader_epoch
                        && Arc::ptr_eq(&a.partition, &b.partition)
                });
            if !same {
                *assignment = Assignment { endpoint, targets };
                fetcher.changed.notify_one();
            }
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}

/// Fetches from one leader for as long as the process runs.
async fn fetch_loop(
    leader: i32,
    fetcher: Arc<Fetcher>,
    config: Arc<BrokerConfig>,
    topics: Arc<TopicManager>,
) {
    let backoff = Duration::from_millis(config.replica_fetch_backoff_ms.max(1) as u64);
    let timeout = Duration::from_millis(config.replica_socket_timeout_ms.max(1) as u64);
    // Names the follower, as Kafka's `broker-<id>-fetcher-<n>` client ids do.
    let client_id = format!("{FETCHER_CLIENT_ID_PREFIX}{}", config.node_id);
    let mut connection: Option<(String, u16, TcpStream)> = None;
    let mut correlation_id = 0i32;
    // Partitions answered with an error wait until this instant (or a metadata change).
    let mut paused: HashMap<(Uuid, i32), (i32, Instant)> = HashMap::new();
    let mut failing = false;
    loop {
        let changed = fetcher.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let (endpoint, targets) = {
            let a = fetcher.assignment.lock();
            (a.endpoint.clone(), a.targets.clone())
        };
        let now = Instant::now();
        paused.retain(|_, (_, until)| *until > now);
        let active: Vec<Target> = targets
            .into_iter()
            .filter(|t| {
                paused
                    .get(&(t.topic_id, t.partition.index))
                    .is_none_or(|(epoch, _)| *epoch != t.leader_epoch)
            })
            .collect();
        let Some((host, port)) = endpoint.filter(|_| !active.is_empty()) else {
            let wake = paused.values().map(|(_, until)| *until).min();
            match wake {
                Some(until) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
                None => changed.await,
            }
            continue;
        };
        if connection
            .as_ref()
            .is_some_and(|(h, p, _)| *h != host || *p != port)
        {
            connection = None;
        }
        if connection.is_none() {
            match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    connection = Some((host.clone(), port, stream));
                }
                other => {
                    if !failing {
                        warn!(leader, %host, port, error = ?other.err(), "cannot reach the leader to fetch from");
                        failing = true;
                    }
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    continue;
                }
            }
        }
        let Some((_, _, stream)) = connection.as_mut() else {
            continue;
        };
        correlation_id = correlation_id.wrapping_add(1);
        let mut request = fetch_request(&config, &active);
        // A partition paused for a moment must not wait for a whole long poll of the others.
        if let Some(until) = paused.values().map(|(_, until)| *until).min() {
            let soon = until.saturating_duration_since(Instant::now()).as_millis();
            request.max_wait_ms = request.max_wait_ms.min(soon as i32);
        }
        let wait = Duration::from_millis(request.max_wait_ms.max(0) as u64);
        let exchange = exchange(stream, &client_id, correlation_id, &request);
        // A new assignment (a partition to start following, a new epoch) must not wait for
        // the long poll in flight to end: drop it with its connection and fetch again now.
        let answer = tokio::select! {
            answer = tokio::time::timeout(timeout + wait, exchange) => answer,
            _ = &mut changed => {
                connection = None;
                continue;
            }
        };
        let response = match answer {
            Ok(Ok(response)) => response,
            other => {
                if !failing {
                    let error = match other {
                        Ok(Err(e)) => format!("{e:#}"),
                        _ => "no answer in time".to_string(),
                    };
                    warn!(leader, %host, port, %error, "fetching from the leader failed; reconnecting");
                    failing = true;
                }
                connection = None;
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        if failing {
            info!(leader, %host, port, "fetching from the leader again");
            failing = false;
        }
        for (target, data) in match_partitions(&active, &response) {
            let recovery_point = target.partition.log.recovery_point();
            let applied = apply(target, data);
            if target.partition.log.recovery_point() < recovery_point {
                // A truncation moved the recovery point back: on disk before any append.
                if let Err(e) = topics.checkpoint_recovery_points() {
                    warn!(error = %e, "cannot checkpoint recovery points after a truncation");
                }
            }
            if let Err(code) = applied {
                // The leader not knowing the partition or its epoch yet means its metadata
                // is a moment behind ours: ask again soon rather than after a full backoff.
                let pause = if leader_catching_up(code) {
                    Duration::from_millis(LEADER_CATCH_UP_RETRY_MS).min(backoff)
                } else {
                    backoff
                };
                paused.insert(
                    (target.topic_id, target.partition.index),
                    (target.leader_epoch, Instant::now() + pause),
                );
                if code != ResponseError::NotLeaderOrFollower.code()
                    && code != ResponseError::FencedLeaderEpoch.code()
                    && code != ResponseError::UnknownLeaderEpoch.code()
                {
                    warn!(leader, topic = %target.topic, partition = target.partition.index, code, "fetch from the leader failed for a partition");
                }
            }
        }
    }
}

pub(crate) fn fetch_request(config: &BrokerConfig, targets: &[Target]) -> FetchRequest {
    let mut by_topic: BTreeMap<Uuid, Vec<FetchPartition>> = BTreeMap::new();
    for t in targets {
        let log = &t.partition.log;
        by_topic.entry(t.topic_id).or_default().push(
            FetchPartition::default()
                .with_partition(t.partition.index)
                .with_current_leader_epoch(t.leader_epoch)
                .with_fetch_offset(log.offsets().log_end_offset)
                .with_last_fetched_epoch(log.latest_epoch().unwrap_or(-1))
                .with_log_start_offset(log.offsets().log_start_offset)
                .with_partition_max_bytes(config.replica_fetch_max_bytes),
        );
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(config.node_id))
        .with_max_wait_ms(config.replica_fetch_wait_max_ms)
        .with_min_bytes(1)
        .with_max_bytes(config.replica_fetch_response_max_bytes)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(
            by_topic
                .into_iter()
                .map(|(id, partitions)| {
                    FetchTopic::default()
                        .with_topic_id(id)
                        .with_partitions(partitions)
                })
                .collect(),
        )
}

/// Sends one fetch and reads its response.
async fn exchange(
    stream: &mut TcpStream,
    client_id: &str,
    correlation_id: i32,
    request: &FetchRequest,
) -> anyhow::Result<FetchResponse> {
    let response: FetchResponse = crate::peer::exchange(
        stream,
        ApiKey::Fetch,
        FETCH_VERSION,
        client_id,
        correlation_id,
        request,
        RESPONSE_BYTES_MAX,
    )
    .await?;
    anyhow::ensure!(
        response.error_code == 0,
        "fetch failed with error {}",
        response.error_code
    );
    Ok(response)
}

/// Pairs each answered partition with the target it was asked for.
fn match_partitions<'a>(
    targets: &'a [Target],
    response: &'a FetchResponse,
) -> Vec<(&'a Target, &'a PartitionData)> {
    let mut pairs = Vec::new();
    for topic in &response.responses {
        for data in &topic.partitions {
            if let Some(target) = targets
                .iter()
                .find(|t| t.topic_id == topic.topic_id && t.partition.index == data.partition_index)
            {
                pairs.push((target, data));
            }
        }
    }
    pairs
}

/// Applies one partition's answer: truncate on a diverging epoch, append records, follow
/// the leader's high watermark. An error code pauses the partition.
pub(crate) fn apply(target: &Target, data: &PartitionData) -> Result<(), i16> {
    let partition = &target.partition;
    // Held while applying, so that leadership cannot change under a follower's append or
    // truncation (the leader's append holds it too).
    let replica = partition.replica.lock();
    if replica.leader_epoch != target.leader_epoch || replica.leader == partition.node_id {
        // The metadata moved on while the request was out: the answer is stale.
        return Ok(());
    }
    let result = match data.error_code {
        0 if data.diverging_epoch.epoch >= 0 || data.diverging_epoch.end_offset >= 0 => {
            truncate_diverging(
                target,
                data.diverging_epoch.epoch,
                data.diverging_epoch.end_offset,
            )
        }
        0 => append(target, data),
        code if code == ResponseError::OffsetOutOfRange.code() => out_of_range(target, data),
        code => return Err(code),
    };
    if let Err(e) = result {
        warn!(topic = %target.topic, partition = partition.index, error = %e, "follower could not apply the leader's answer");
        return Err(e.error_code());
    }
    drop(replica);
    partition.appended.notify_waiters();
    Ok(())
}

fn append(target: &Target, data: &PartitionData) -> Result<(), strom_storage::StorageError> {
    let partition = &target.partition;
    let log = &partition.log;
    if let Some(records) = data.records.as_ref().filter(|r| !r.is_empty()) {
        log.append_as_follower(records, now_ms())?;
    }
    let end = log.offsets().log_end_offset;
    log.update_high_watermark(data.high_watermark.min(end));
    follow_log_start_offset(log, data.log_start_offset)
}

/// Moves this replica's log start offset up to the leader's (retention or DeleteRecords on
/// the leader), as far as this replica's high watermark: Kafka's follower
/// `maybeIncrementLogStartOffset(leaderLogStartOffset)`.
fn follow_log_start_offset(
    log: &strom_storage::PartitionLog,
    leader_log_start_offset: i64,
) -> Result<(), strom_storage::StorageError> {
    let offsets = log.offsets();
    let target = leader_log_start_offset.min(offsets.high_watermark);
    if target > offsets.log_start_offset {
        log.increment_log_start_offset(target)?;
    }
    Ok(())
}

/// Kafka's truncation on a diverging epoch: to the end of the leader's epoch if this log
/// has that epoch too, else to where this log's largest earlier epoch ends (and fetch
/// again, which may diverge further back).
fn truncate_diverging(
    target: &Target,
    leader_epoch: i32,
    leader_end_offset: i64,
) -> Result<(), strom_storage::StorageError> {
    let log = &target.partition.log;
    let log_end = log.offsets().log_end_offset;
    let to = if leader_end_offset < 0 {
        log.offsets().high_watermark
    } else {
        match log.end_offset_for_epoch(leader_epoch) {
            (-1, _) => leader_end_offset.min(log_end),
            (epoch, end) if epoch != leader_epoch => end.min(log_end),
            (_, end) => end.min(leader_end_offset).min(log_end),
        }
    };
    if to < log_end {
        info!(topic = %target.topic, partition = target.partition.index, from = log_end, to, leader_epoch, "truncating a diverging log");
        log.truncate_to(to)?;
    }
    Ok(())
}

/// The fetch offset is outside the leader's log: behind its start (retention moved on)
/// means starting over there; past its end means this log holds records the leader does
/// not, and truncating to the leader's high watermark.
fn out_of_range(target: &Target, data: &PartitionData) -> Result<(), strom_storage::StorageError> {
    let log = &target.partition.log;
    let log_end = log.offsets().log_end_offset;
    if data.log_start_offset >= 0 && log_end < data.log_start_offset {
        info!(topic = %target.topic, partition = target.partition.index, start = data.log_start_offset, "follower is behind the leader's log start; starting over there");
        log.truncate_fully_and_start_at(data.log_start_offset)
    } else if data.high_watermark >= 0 && log_end > data.high_watermark {
        log.truncate_to(data.high_watermark)
    } else {
        Ok(())
    }
}
