//! Produce: validate each partition's batches, append them to the leader's log, answer with
//! the assigned base offset. acks=0 and acks=1 answer after the leader's append. acks=all
//! first needs an ISR of at least `min.insync.replicas` (else NOT_ENOUGH_REPLICAS, nothing
//! appended), then waits as Kafka's delayed produce until the high watermark covers the
//! appended batches (the followers have them): NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR
//! shrank below the minimum meanwhile, NOT_LEADER_OR_FOLLOWER if leadership moved (the
//! records may be truncated), REQUEST_TIMED_OUT after the request's `timeout_ms`. A partition
//! led by another broker gets
//! NOT_LEADER_OR_FOLLOWER with, from v10 on, the current leader and its endpoint (KIP-951)
//! so the client can go there without a metadata round trip.
//!
//! Idempotent producers' batches are checked by the log against the producer's state: a
//! retry of a batch already in the log is answered with the original base offset and no
//! error (and acks=all still waits until it is replicated), an older producer epoch gets
//! INVALID_PRODUCER_EPOCH, a sequence that does not follow OUT_OF_ORDER_SEQUENCE_NUMBER, a
//! non-transactional batch amid the producer's transaction INVALID_TXN_STATE, each with the
//! log's message.
//!
//! With `transaction.partition.verification.enable` (the default, KIP-890 part 1), a
//! transactional batch that would start a transaction on a partition is appended only once
//! the producer's transaction coordinator confirmed the partition is in the transaction
//! ([`crate::txn_verification`]); one it does not know of gets INVALID_TXN_STATE, and the
//! coordinator's other errors the ones Kafka turns them into for producers.

use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse,
    TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use strom_coordinator::transaction::TopicPartition;
use strom_protocol::batch;
use strom_protocol::records::BatchHeader;
use strom_storage::{StorageError, TxnVerification, VerificationGuard};
use tracing::debug;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::{Ctx, Outcome};
use crate::replication::{LeaderAppendError, Replicated};
use crate::topics::{now_ms, Partition, Topic};
use crate::Broker;

/// Longest a produce waits for replication, whatever `timeout_ms` the client asks for.
const PRODUCE_TIMEOUT_MS_MAX: i32 = 5 * 60 * 1000;

/// An acks=all append waiting for the high watermark to reach `end_offset`.
struct Waiting {
    partition: Arc<Partition>,
    leader_epoch: i32,
    end_offset: i64,
    min_insync_replicas: i32,
}

pub async fn handle(broker: &Broker, req: ProduceRequest, ctx: &Ctx) -> Outcome {
    let acks = req.acks;
    let throttle_ms = record_produce_quota(broker, &req, ctx);
    let mut verified = verify_transaction(broker, &req).await;
    let mut any_error = false;
    let mut redirected_to = std::collections::BTreeSet::new();
    let mut waiting: Vec<(usize, usize, Waiting)> = Vec::new();
    let mut responses: Vec<TopicProduceResponse> = req
        .topic_data
        .into_iter()
        .enumerate()
        .map(|(t, topic_data)| {
            let topic = broker.topics.get(&topic_data.name);
            let partition_responses = topic_data
                .partition_data
                .into_iter()
                .enumerate()
                .map(|(p, data)| {
                    let response = match (&topic, acks) {
                        (_, a) if !matches!(a, -1..=1) => {
                            error(data.index, ResponseError::InvalidRequiredAcks.code(), None)
                        }
                        (None, _) => error(
                            data.index,
                            ResponseError::UnknownTopicOrPartition.code(),
                            None,
                        ),
                        (Some(topic), _) => match verified.take(t, p) {
                            Err((code, message)) => {
                                let partition = data.index;
                                debug!(topic = %topic.name, partition, code, "unverified");
                                error(partition, code, message)
                            }
                            Ok(verification) => {
                                let index = data.index;
                                let (mut response, wait) =
                                    produce_partition(topic, data, acks, verification);
                                if let Some(wait) = wait {
                                    waiting.push((t, p, wait));
                                }
                                if response.error_code == ResponseError::NotLeaderOrFollower.code()
                                    && ctx.version >= 10
                                {
                                    let (leader, leader_epoch) = topic.leader_of(index);
                                    if leader >= 0 {
                                        redirected_to.insert(leader);
                                        response.current_leader = LeaderIdAndEpoch::default()
                                            .with_leader_id(BrokerId(leader))
                                            .with_leader_epoch(leader_epoch);
                                    }
                                }
                                response
                            }
                        },
                    };
                    any_error |= response.error_code != 0;
                    response
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(topic_data.name)
                .with_partition_responses(partition_responses)
        })
        .collect();
    if acks == 0 {
        // The client reads no response; Kafka closes the connection so it notices the error.
        return if any_error {
            Outcome::Close("acks=0 produce failed".into())
        } else {
            Outcome::NoResponse
        };
    }
    if !waiting.is_empty() {
        let timeout_ms = req.timeout_ms.clamp(0, PRODUCE_TIMEOUT_MS_MAX);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms as u64);
        let mut shutdown = broker.shutdown.clone();
        for (t, p, wait) in waiting {
            let code = wait_for_replication(&wait, deadline, &mut shutdown).await;
            if code != 0 {
                let response = &mut responses[t].partition_responses[p];
                response.error_code = code;
                response.base_offset = -1;
            }
        }
    }
    let mut response = ProduceResponse::default()
        .with_responses(responses)
        .with_throttle_time_ms(throttle_ms);
    if !redirected_to.is_empty() {
        let image = broker.topics.image();
        response.node_endpoints = redirected_to
            .iter()
            .filter_map(|id| image.image.brokers.get(id))
            .map(|b| {
                NodeEndpoint::default()
                    .with_node_id(BrokerId(b.id))
                    .with_host(StrBytes::from_string(b.host.clone()))
                    .with_port(i32::from(b.port))
                    .with_rack(b.rack.clone().map(StrBytes::from_string))
            })
            .collect();
    }
    ctx.respond(&response)
}

/// Records the request's record bytes against the client's `producer_byte_rate` quota and
/// returns its throttle time, which the connection then waits out (Kafka records the whole
/// request's size; the records are nearly all of it).
fn record_produce_quota(broker: &Broker, req: &ProduceRequest, ctx: &Ctx) -> i32 {
    let image = broker.topics.image();
    if image.image.client_quotas.is_empty() {
        return 0;
    }
    let bytes: usize = req
        .topic_data
        .iter()
        .flat_map(|t| &t.partition_data)
        .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
        .sum();
    let throttle_ms = broker.quotas.record(
        &image.image.client_quotas,
        crate::quotas::QuotaKind::Produce,
        &ctx.client_id,
        bytes as f64,
        now_ms(),
    );
    ctx.throttle(throttle_ms);
    throttle_ms
}

fn error(index: i32, code: i16, message: Option<String>) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code)
        .with_base_offset(-1)
        .with_error_message(message.map(StrBytes::from_string))
}

/// Applies the topic's `message.timestamp.type`: with `LogAppendTime`, a copy of `records`
/// whose batches carry `now_ms` as their timestamp (and the batches' infos updated to it);
/// with `CreateTime`, the check of the producer's timestamps against
/// `message.timestamp.before.max.ms` / `after.max.ms` (INVALID_TIMESTAMP).
fn timestamped(
    settings: &crate::topic_config::LogConfig,
    records: &[u8],
    mut batches: Vec<batch::BatchInfo>,
    now_ms: i64,
) -> Result<(Vec<batch::BatchInfo>, Option<Vec<u8>>), batch::BatchError> {
    if !settings.message_timestamp_type_log_append {
        for b in &batches {
            batch::check_timestamps(
                b,
                now_ms,
                settings.message_timestamp_before_max_ms,
                settings.message_timestamp_after_max_ms,
            )?;
        }
        return Ok((batches, None));
    }
    let mut stamped = records.to_vec();
    for b in &mut batches {
        batch::set_log_append_time(&mut stamped[b.position..b.position + b.size_bytes], now_ms);
        b.max_timestamp = now_ms;
    }
    Ok((batches, Some(stamped)))
}

/// Waits until the high watermark reaches the append's end: the error code it ends with.
async fn wait_for_replication(
    wait: &Waiting,
    deadline: tokio::time::Instant,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> i16 {
    let outcome = wait
        .partition
        .wait_replicated(wait.leader_epoch, wait.end_offset, deadline, shutdown)
        .await;
    match outcome {
        Replicated::Yes { isr_len } if (isr_len as i32) < wait.min_insync_replicas => {
            ResponseError::NotEnoughReplicasAfterAppend.code()
        }
        Replicated::Yes { .. } => 0,
        Replicated::NotLeader => ResponseError::NotLeaderOrFollower.code(),
        Replicated::TimedOut => ResponseError::RequestTimedOut.code(),
    }
}

/// How each partition of a produce request is verified (KIP-890 part 1).
enum Verified {
    /// `transaction.partition.verification.enable=false`.
    Off,
    On {
        /// The guards of the partitions the coordinator confirmed, by (topic, partition)
        /// position in the request.
        guards: HashMap<(usize, usize), VerificationGuard>,
        /// The partitions refused, with the produce error and message.
        refused: HashMap<(usize, usize), (i16, Option<String>)>,
    },
}

impl Verified {
    /// What the append of the `p`th partition of the `t`th topic goes with, or its error.
    fn take(&mut self, t: usize, p: usize) -> Result<TxnVerification, (i16, Option<String>)> {
        match self {
            Verified::Off => Ok(TxnVerification::Off),
            // Most requests verify nothing: no lookups then.
            Verified::On { guards, refused } if guards.is_empty() && refused.is_empty() => {
                Ok(TxnVerification::Guard(None))
            }
            Verified::On { guards, refused } => match refused.remove(&(t, p)) {
                Some(refusal) => Err(refusal),
                None => Ok(TxnVerification::Guard(guards.remove(&(t, p)))),
            },
        }
    }
}

/// Starts the verification of every partition this broker leads whose first batch is
/// transactional and whose producer has no transaction ongoing there, and asks the
/// coordinator of the request's transactional id about them all at once (Kafka's
/// `maybeSendPartitionsToTransactionCoordinator`). A request without a transactional id
/// asks nothing, so its transactional batches cannot start a transaction. One request
/// carries one producer's batches: a partition of another producer is refused with
/// INVALID_PRODUCER_ID_MAPPING.
async fn verify_transaction(broker: &Broker, req: &ProduceRequest) -> Verified {
    if !broker.txn_verifier.enabled() || !matches!(req.acks, -1..=1) {
        return Verified::Off;
    }
    let mut guards = HashMap::new();
    let mut refused = HashMap::new();
    let Some(transactional_id) = req.transactional_id.as_ref().filter(|id| !id.is_empty()) else {
        return Verified::On { guards, refused };
    };
    let now = now_ms();
    let mut producer: Option<(i64, i16)> = None;
    let mut asked: BTreeMap<TopicPartition, (usize, usize)> = BTreeMap::new();
    for (t, topic_data) in req.topic_data.iter().enumerate() {
        let Some(topic) = broker.topics.get(&topic_data.name) else {
            continue;
        };
        for (p, data) in topic_data.partition_data.iter().enumerate() {
            let Ok(partition) = topic.led(data.index) else {
                continue;
            };
            let Some(header) = data.records.as_deref().and_then(first_batch_header) else {
                continue;
            };
            if !header.is_transactional() || header.producer_id < 0 {
                continue;
            }
            let this = (header.producer_id, header.producer_epoch);
            if *producer.get_or_insert(this) != this {
                let message = "Transactional records contained more than one producer ID";
                refused.insert(
                    (t, p),
                    (
                        ResponseError::InvalidProducerIdMapping.code(),
                        Some(message.to_string()),
                    ),
                );
                continue;
            }
            if let Some(guard) = partition
                .log
                .start_transaction_verification(this.0, this.1, now)
            {
                guards.insert((t, p), guard);
                asked.insert((topic_data.name.to_string(), data.index), (t, p));
            }
        }
    }
    let Some((producer_id, producer_epoch)) = producer.filter(|_| !asked.is_empty()) else {
        return Verified::On { guards, refused };
    };
    let answers = broker
        .txn_verifier
        .verify(
            broker,
            transactional_id,
            producer_id,
            producer_epoch,
            asked.keys().cloned().collect(),
        )
        .await;
    for (tp, code) in answers {
        if code == 0 {
            continue;
        }
        if let Some(at) = asked.get(&tp) {
            guards.remove(at);
            refused.insert(*at, crate::txn_verification::produce_error(code));
        }
    }
    Verified::On { guards, refused }
}

/// The header of the first batch of a partition's records, if they start with one.
fn first_batch_header(records: &[u8]) -> Option<BatchHeader> {
    let size = batch::BatchOffsets::parse(records)?.size_bytes;
    BatchHeader::parse(records.get(..size)?).ok()
}

fn produce_partition(
    topic: &Topic,
    data: PartitionProduceData,
    acks: i16,
    verification: TxnVerification,
) -> (PartitionProduceResponse, Option<Waiting>) {
    let partition = match topic.led(data.index) {
        Ok(partition) => partition,
        Err(code) => return (error(data.index, code, None), None),
    };
    let Some(records) = data.records else {
        return (
            error(
                data.index,
                ResponseError::InvalidRecord.code(),
                Some("records are null".into()),
            ),
            None,
        );
    };
    let max_batch_bytes = usize::try_from(topic.settings.max_message_bytes).unwrap_or(0);
    let now = now_ms();
    let validated = batch::validate_produce(&records, max_batch_bytes)
        .and_then(|batches| timestamped(&topic.settings, &records, batches, now));
    let (batches, stamped) = match validated {
        Ok(validated) => validated,
        Err(e) => {
            debug!(topic = %topic.name, partition = data.index, error = %e, "rejected produce");
            return (error(data.index, e.error_code(), Some(e.to_string())), None);
        }
    };
    if topic.settings.cleanup_policy_compact {
        if let Some(refused) = refuse_keyless(topic, data.index, &records, &batches) {
            return (refused, None);
        }
    }
    let bytes = stamped.as_deref().unwrap_or(&records);
    let log_append_time_ms = if stamped.is_some() { now } else { -1 };
    let min_insync_replicas = topic.settings.min_insync_replicas;
    let min = (acks == -1).then_some(min_insync_replicas);
    match partition.append_as_leader(bytes, &batches, min, now, verification) {
        Ok((info, leader_epoch)) => {
            if info.duplicate {
                debug!(topic = %topic.name, partition = data.index, base_offset = info.first_offset, "a producer's retry of a batch already in the log");
            }
            let response = PartitionProduceResponse::default()
                .with_index(data.index)
                .with_base_offset(info.first_offset)
                .with_log_append_time_ms(log_append_time_ms)
                .with_log_start_offset(info.log_start_offset);
            let wait = (acks == -1).then(|| Waiting {
                partition: Arc::clone(partition),
                leader_epoch,
                end_offset: info.last_offset + 1,
                min_insync_replicas,
            });
            (response, wait)
        }
        Err(LeaderAppendError::NotLeader) => (
            error(data.index, ResponseError::NotLeaderOrFollower.code(), None),
            None,
        ),
        Err(LeaderAppendError::NotEnoughReplicas { isr, min }) => {
            let message = format!(
                "The size of the current ISR {isr} is insufficient to satisfy the min.isr requirement of {min} for partition {}-{}",
                topic.name, data.index
            );
            (
                error(
                    data.index,
                    ResponseError::NotEnoughReplicas.code(),
                    Some(message),
                ),
                None,
            )
        }
        Err(LeaderAppendError::Storage(e)) => {
            if is_producer_error(&e) {
                // The producer's mistake (or a zombie's): the client is told, the log is fine.
                debug!(topic = %topic.name, partition = data.index, error = %e, "refused a producer's batch");
            } else {
                tracing::error!(topic = %topic.name, partition = data.index, error = %e, "append failed");
            }
            (error(data.index, e.error_code(), Some(e.to_string())), None)
        }
    }
}

/// Whether a failed append was refused for what the producer sent (its epoch, sequence or
/// transaction state) rather than a failure of the log.
fn is_producer_error(e: &StorageError) -> bool {
    matches!(
        e,
        StorageError::OutOfOrderSequence(_)
            | StorageError::InvalidProducerEpoch(_)
            | StorageError::InvalidTxnState(_)
            | StorageError::TransactionCoordinatorFenced(_)
    )
}

/// A compacted topic takes only keyed records (Kafka's `LogValidator.validateKey`): a
/// produce with any keyless record is refused whole with INVALID_RECORD, one record error
/// per keyless record and Kafka's summary message. `None`: every record has a key.
fn refuse_keyless(
    topic: &Topic,
    index: i32,
    records: &[u8],
    batches: &[batch::BatchInfo],
) -> Option<PartitionProduceResponse> {
    let keyless = match strom_protocol::records::keyless_records(records, batches) {
        Ok(keyless) if keyless.is_empty() => return None,
        Ok(keyless) => keyless,
        Err(e) => return Some(error(index, e.error_code(), Some(e.to_string()))),
    };
    let message = format!(
        "Compacted topic cannot accept message without key in topic partition {}-{index}",
        topic.name
    );
    let shown: Vec<String> = keyless
        .iter()
        .take(3)
        .map(|r| {
            format!(
                "RecordError(batchIndex={}, message='{message}')",
                r.batch_index
            )
        })
        .collect();
    let summary = format!(
        "One or more records have been rejected due to {} record errors in total, and only showing the first three errors at most: [{}]",
        keyless.len(),
        shown.join(", ")
    );
    debug!(topic = %topic.name, partition = index, keyless = keyless.len(), "refused keyless records of a compacted topic");
    let record_errors = keyless
        .iter()
        .map(|r| {
            BatchIndexAndErrorMessage::default()
                .with_batch_index(r.batch_index)
                .with_batch_index_error_message(Some(StrBytes::from_string(message.clone())))
        })
        .collect();
    Some(
        error(index, ResponseError::InvalidRecord.code(), Some(summary))
            .with_record_errors(record_errors),
    )
}
