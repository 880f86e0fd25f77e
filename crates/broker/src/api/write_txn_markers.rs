//! WriteTxnMarkers (v1): a transaction coordinator asks the leaders of a transaction's
//! partitions to write its COMMIT or ABORT marker. Each marker is a control batch appended
//! as Kafka's `AppendOrigin.COORDINATOR` with acks=all: the answer waits until the marker
//! is on every in-sync replica (NOT_ENOUGH_REPLICAS below `min.insync.replicas`), because
//! the coordinator completes the transaction only once every marker is durable. A marker
//! for a `__consumer_offsets` partition also ends the producer's pending transactional
//! offsets in the group coordinator (Kafka's `onTransactionCompleted`).
//!
//! The coordinator of this same broker calls [`write_marker`] directly instead of sending
//! itself a request.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use kafka_protocol::ResponseError as E;
use strom_coordinator::txn_markers::TxnMarker;
use strom_storage::producer_state::ControlType;
use tracing::debug;

use crate::replication::Replicated;
use crate::topics::now_ms;
use crate::Broker;

/// Longest a marker waits for the in-sync replicas (Kafka uses `request.timeout.ms`).
const MARKER_REPLICATION_TIMEOUT_MS: u64 = 30_000;

pub async fn handle(broker: &Broker, req: WriteTxnMarkersRequest) -> WriteTxnMarkersResponse {
    let mut results = Vec::with_capacity(req.markers.len());
    for m in req.markers {
        let marker = TxnMarker {
            producer_id: m.producer_id.0,
            producer_epoch: m.producer_epoch,
            commit: m.transaction_result,
            coordinator_epoch: m.coordinator_epoch,
            partitions: m
                .topics
                .iter()
                .flat_map(|t| {
                    t.partition_indexes
                        .iter()
                        .map(move |p| (t.name.to_string(), *p))
                })
                .collect(),
        };
        let codes = write_marker(broker, &marker).await;
        let topics = m
            .topics
            .into_iter()
            .map(|t| {
                let partitions = t
                    .partition_indexes
                    .iter()
                    .map(|&p| {
                        let code = marker
                            .partitions
                            .iter()
                            .position(|(name, index)| {
                                name.as_str() == t.name.as_str() && *index == p
                            })
                            .map_or(E::UnknownServerError.code(), |i| codes[i]);
                        WritableTxnMarkerPartitionResult::default()
                            .with_partition_index(p)
                            .with_error_code(code)
                    })
                    .collect();
                WritableTxnMarkerTopicResult::default()
                    .with_name(t.name)
                    .with_partitions(partitions)
            })
            .collect();
        results.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(m.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(results)
}

/// Writes `marker` to each of its partitions that this broker leads and waits for the
/// in-sync replicas: one Kafka error code per partition, in order.
pub async fn write_marker(broker: &Broker, marker: &TxnMarker) -> Vec<i16> {
    let control = if marker.commit {
        ControlType::Commit
    } else {
        ControlType::Abort
    };
    let mut codes = Vec::with_capacity(marker.partitions.len());
    let mut waiting = Vec::new();
    for (i, (topic_name, index)) in marker.partitions.iter().enumerate() {
        let Some(topic) = broker.topics.get(topic_name) else {
            codes.push(E::UnknownTopicOrPartition.code());
            continue;
        };
        let partition = match topic.led(*index) {
            Ok(partition) => Arc::clone(partition),
            Err(code) => {
                codes.push(code);
                continue;
            }
        };
        let appended = partition.append_control(
            marker.producer_id,
            marker.producer_epoch,
            control,
            marker.coordinator_epoch,
            topic.settings.min_insync_replicas,
            now_ms(),
        );
        match appended {
            Ok((info, leader_epoch)) => {
                codes.push(0);
                waiting.push((i, partition, leader_epoch, info.last_offset + 1));
            }
            Err(e) => {
                debug!(topic = %topic_name, partition = index, producer_id = marker.producer_id, error = ?e, "transaction marker refused");
                codes.push(e.error_code());
            }
        }
    }
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(MARKER_REPLICATION_TIMEOUT_MS);
    let mut shutdown = broker.shutdown.clone();
    for (i, partition, leader_epoch, end_offset) in waiting {
        codes[i] = match partition
            .wait_replicated(leader_epoch, end_offset, deadline, &mut shutdown)
            .await
        {
            Replicated::Yes { .. } => {
                let (topic, index) = &marker.partitions[i];
                if topic == crate::consumer_offsets::TOPIC {
                    broker
                        .groups
                        .complete_transaction(*index, marker.producer_id, marker.commit);
                }
                0
            }
            Replicated::NotLeader => E::NotLeaderOrFollower.code(),
            Replicated::TimedOut => E::RequestTimedOut.code(),
        };
    }
    codes
}
