//! The transaction APIs a producer and the admin client send to the transaction
//! coordinator: InitProducerId with a transactional id, AddPartitionsToTxn (v0–v3 from
//! clients, v4–v5 batched from brokers with `verify_only`, KIP-890 part 1), AddOffsetsToTxn,
//! EndTxn, DescribeTransactions and ListTransactions. The state machine lives in
//! `strom_coordinator::transaction`; this module checks what needs the metadata (unknown
//! partitions, whether this broker coordinates the id) and converts requests and responses,
//! with Kafka's answers for older versions (PRODUCER_FENCED is INVALID_PRODUCER_EPOCH to
//! clients that predate it).

use std::collections::BTreeSet;

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedState;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;
use strom_coordinator::transaction::{ProducerIdAndEpoch, TopicPartition, TxnResult};
use strom_coordinator::txn_records::group_by_topic;

use super::Ctx;
use crate::transaction_state::{self, TOPIC};
use crate::Broker;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Kafka's answer to clients older than PRODUCER_FENCED (InitProducerId v4, the others
/// v2): INVALID_PRODUCER_EPOCH, which they handle the same way.
fn for_version(code: i16, version: i16, fenced_since: i16) -> i16 {
    if version < fenced_since && code == E::ProducerFenced.code() {
        E::InvalidProducerEpoch.code()
    } else {
        code
    }
}

/// NOT_COORDINATOR unless this broker leads the id's `__transaction_state` partition, and
/// COORDINATOR_LOAD_IN_PROGRESS until that partition is loaded in its current epoch.
pub fn check_coordinator(broker: &Broker, transactional_id: &str) -> Result<(), i16> {
    broker
        .txn_loader
        .check_coordinator(&broker.topics, broker.txns.partition_for(transactional_id))
}

/// InitProducerId for a transactional id (requests without one are the idempotent
/// producer's, served elsewhere). The first one creates `__transaction_state`.
pub async fn init_producer_id(
    broker: &Broker,
    req: InitProducerIdRequest,
    ctx: &Ctx,
) -> InitProducerIdResponse {
    let error = |code: i16| {
        InitProducerIdResponse::default()
            .with_error_code(for_version(code, ctx.version, 4))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    let Some(transactional_id) = req.transactional_id.as_ref() else {
        return error(E::InvalidRequest.code());
    };
    let expected = match (req.producer_id.0, req.producer_epoch) {
        (-1, -1) => None,
        (-1, _) | (_, -1) => return error(E::InvalidRequest.code()),
        (producer_id, epoch) => Some(ProducerIdAndEpoch { producer_id, epoch }),
    };
    if broker.topics.get(TOPIC).is_none() {
        transaction_state::create_topic(broker).await;
    }
    if !transactional_id.is_empty() {
        if let Err(code) = check_coordinator(broker, transactional_id) {
            return error(code);
        }
    }
    let r = broker
        .txns
        .init_producer_id(transactional_id, req.transaction_timeout_ms, expected)
        .await;
    if r.error_code != 0 {
        return error(r.error_code);
    }
    InitProducerIdResponse::default()
        .with_producer_id(ProducerId(r.producer_id))
        .with_producer_epoch(r.producer_epoch)
}

fn partitions_of(topics: &[AddPartitionsToTxnTopic]) -> BTreeSet<TopicPartition> {
    topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.name.to_string(), *p)))
        .collect()
}

fn partition_exists(broker: &Broker, topic: &str, partition: i32) -> bool {
    broker
        .topics
        .get(topic)
        .is_some_and(|t| usize::try_from(partition).is_ok_and(|p| p < t.partition_count()))
}

/// The per-topic results of one transaction.
fn topic_results(codes: &[(TopicPartition, i16)]) -> Vec<AddPartitionsToTxnTopicResult> {
    let mut results: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
    for ((topic, partition), code) in codes {
        let result = AddPartitionsToTxnPartitionResult::default()
            .with_partition_index(*partition)
            .with_partition_error_code(*code);
        match results.last_mut() {
            Some(r) if r.name.as_str() == topic => r.results_by_partition.push(result),
            _ => results.push(
                AddPartitionsToTxnTopicResult::default()
                    .with_name(TopicName(s(topic)))
                    .with_results_by_partition(vec![result]),
            ),
        }
    }
    results
}

/// One transaction of AddPartitionsToTxn: unknown partitions fail it (the others answer
/// OPERATION_NOT_ATTEMPTED), a verification only asks, otherwise the partitions are added.
async fn add_partitions(
    broker: &Broker,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    partitions: BTreeSet<TopicPartition>,
    verify_only: bool,
    version: i16,
) -> Vec<(TopicPartition, i16)> {
    let unknown: BTreeSet<&TopicPartition> = partitions
        .iter()
        .filter(|(t, p)| !partition_exists(broker, t, *p))
        .collect();
    let all = |code: i16| partitions.iter().map(|tp| (tp.clone(), code)).collect();
    if !unknown.is_empty() {
        return partitions
            .iter()
            .map(|tp| {
                let code = if unknown.contains(tp) {
                    E::UnknownTopicOrPartition
                } else {
                    E::OperationNotAttempted
                };
                (tp.clone(), code.code())
            })
            .collect();
    }
    if verify_only {
        return verify_local(
            broker,
            transactional_id,
            producer_id,
            producer_epoch,
            &partitions,
        );
    }
    if !transactional_id.is_empty() {
        if let Err(code) = check_coordinator(broker, transactional_id) {
            return all(code);
        }
    }
    let code = broker
        .txns
        .add_partitions(transactional_id, producer_id, producer_epoch, &partitions)
        .await;
    all(for_version(code, version, 2))
}

/// Whether `partitions` are in the ongoing transaction of `producer_id` in
/// `producer_epoch`, asked of this broker's coordinator (AddPartitionsToTxn `verify_only`,
/// from a partition leader elsewhere or on this broker: [`crate::txn_verification`]).
pub fn verify_local(
    broker: &Broker,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    partitions: &BTreeSet<TopicPartition>,
) -> Vec<(TopicPartition, i16)> {
    if !transactional_id.is_empty() {
        if let Err(code) = check_coordinator(broker, transactional_id) {
            return partitions.iter().map(|tp| (tp.clone(), code)).collect();
        }
    }
    broker
        .txns
        .verify_partitions(transactional_id, producer_id, producer_epoch, partitions)
}

pub async fn add_partitions_to_txn(
    broker: &Broker,
    req: AddPartitionsToTxnRequest,
    ctx: &Ctx,
) -> AddPartitionsToTxnResponse {
    let version = ctx.version;
    if version < 4 {
        let codes = add_partitions(
            broker,
            &req.v3_and_below_transactional_id,
            req.v3_and_below_producer_id.0,
            req.v3_and_below_producer_epoch,
            partitions_of(&req.v3_and_below_topics),
            false,
            version,
        )
        .await;
        return AddPartitionsToTxnResponse::default()
            .with_results_by_topic_v3_and_below(topic_results(&codes));
    }
    // v4+: batches from partition leaders, one result per transaction.
    let mut results = Vec::with_capacity(req.transactions.len());
    for t in &req.transactions {
        let codes = add_partitions(
            broker,
            &t.transactional_id,
            t.producer_id.0,
            t.producer_epoch,
            partitions_of(&t.topics),
            t.verify_only,
            version,
        )
        .await;
        results.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(t.transactional_id.clone())
                .with_topic_results(topic_results(&codes)),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(results)
}

/// AddOffsetsToTxn: the group's `__consumer_offsets` partition joins the transaction, so
/// that its TxnOffsetCommit is committed or aborted with it.
pub async fn add_offsets_to_txn(
    broker: &Broker,
    req: AddOffsetsToTxnRequest,
    ctx: &Ctx,
) -> AddOffsetsToTxnResponse {
    let code = match check_coordinator(broker, &req.transactional_id) {
        Err(code) if !req.transactional_id.is_empty() => code,
        _ => {
            let partition = (
                crate::consumer_offsets::TOPIC.to_string(),
                broker.groups.partition_for(&req.group_id),
            );
            broker
                .txns
                .add_partitions(
                    &req.transactional_id,
                    req.producer_id.0,
                    req.producer_epoch,
                    &BTreeSet::from([partition]),
                )
                .await
        }
    };
    AddOffsetsToTxnResponse::default().with_error_code(for_version(code, ctx.version, 2))
}

pub async fn end_txn(broker: &Broker, req: EndTxnRequest, ctx: &Ctx) -> EndTxnResponse {
    let code = match check_coordinator(broker, &req.transactional_id) {
        Err(code) if !req.transactional_id.is_empty() => code,
        _ => {
            let result = if req.committed {
                TxnResult::Commit
            } else {
                TxnResult::Abort
            };
            broker
                .txns
                .end_txn(
                    &req.transactional_id,
                    req.producer_id.0,
                    req.producer_epoch,
                    result,
                )
                .await
        }
    };
    EndTxnResponse::default()
        .with_error_code(for_version(code, ctx.version, 2))
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

pub fn describe_transactions(
    broker: &Broker,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let states = req
        .transactional_ids
        .into_iter()
        .map(|id| {
            let described = match check_coordinator(broker, &id) {
                Err(code) if !id.is_empty() => Err(code),
                _ => broker.txns.describe(&id),
            };
            let state = TransactionState::default().with_transactional_id(id);
            match described {
                Err(code) => state.with_error_code(code),
                Ok(m) => state
                    .with_producer_id(ProducerId(m.producer_id))
                    .with_producer_epoch(m.producer_epoch)
                    .with_transaction_state(StrBytes::from_static_str(m.state.name()))
                    .with_transaction_timeout_ms(m.timeout_ms)
                    .with_transaction_start_time_ms(m.start_timestamp_ms)
                    .with_topics(
                        group_by_topic(&m.partitions)
                            .into_iter()
                            .map(|(topic, partitions)| {
                                TopicData::default()
                                    .with_topic(TopicName(s(topic)))
                                    .with_partitions(partitions)
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

/// ListTransactions (v0; v1 adds the duration filter): the transactions this broker
/// coordinates.
pub fn list_transactions(
    broker: &Broker,
    req: ListTransactionsRequest,
    ctx: &Ctx,
) -> ListTransactionsResponse {
    let states: Vec<String> = req.state_filters.iter().map(|s| s.to_string()).collect();
    let producer_ids: Vec<i64> = req.producer_id_filters.iter().map(|p| p.0).collect();
    let duration_ms = if ctx.version >= 1 {
        req.duration_filter
    } else {
        -1
    };
    let r = broker.txns.list(&states, &producer_ids, duration_ms);
    ListTransactionsResponse::default()
        .with_error_code(r.error_code)
        .with_unknown_state_filters(r.unknown_state_filters.iter().map(|f| s(f)).collect())
        .with_transaction_states(
            r.transactions
                .into_iter()
                .map(|t| {
                    ListedState::default()
                        .with_transactional_id(TransactionalId(s(&t.transactional_id)))
                        .with_producer_id(ProducerId(t.producer_id))
                        .with_transaction_state(StrBytes::from_static_str(t.state.name()))
                })
                .collect(),
        )
}
