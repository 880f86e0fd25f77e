//! DeleteRecords (v0–2): moves a partition's log start offset forward on its leader (Kafka's
//! `Partition.deleteRecordsOnLeader`), then waits, as Kafka's `DelayedDeleteRecords`, until
//! the low watermark (the smallest log start offset of the leader and its in-sync followers)
//! reaches it or `timeout_ms` passes. Followers take the leader's log start offset from
//! their next fetch and report theirs in the one after.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::delete_records_request::DeleteRecordsPartition;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;

use crate::topics::Partition;
use crate::Broker;

/// The offset that stands for the high watermark in a request.
const HIGH_WATERMARK: i64 = -1;

/// Kafka's internal topics, whose records only their coordinators remove.
const INTERNAL_TOPICS: [&str; 2] = ["__consumer_offsets", "__transaction_state"];

/// The low watermark of a partition whose deletion failed or timed out.
const INVALID_LOW_WATERMARK: i64 = -1;

pub async fn handle(broker: &Broker, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(req.timeout_ms.max(0) as u64);
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let started = start(broker, t.name.as_str(), p).await;
            partitions.push(match started {
                Ok((partition, offset)) => wait(broker, &partition, p, offset, deadline).await,
                Err(code) => result(p.partition_index, INVALID_LOW_WATERMARK, code),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

fn result(partition_index: i32, low_watermark: i64, code: i16) -> DeleteRecordsPartitionResult {
    DeleteRecordsPartitionResult::default()
        .with_partition_index(partition_index)
        .with_low_watermark(low_watermark)
        .with_error_code(code)
}

/// Moves the log start on the leader (deleting the segments below it, on the blocking pool).
/// Returns the partition and the offset to wait for.
async fn start(
    broker: &Broker,
    topic_name: &str,
    p: &DeleteRecordsPartition,
) -> Result<(Arc<Partition>, i64), i16> {
    use ResponseError as E;
    if INTERNAL_TOPICS.contains(&topic_name) {
        // Kafka: "Cannot delete records of internal topic".
        return Err(E::InvalidTopicException.code());
    }
    let topic = broker
        .topics
        .get(topic_name)
        .ok_or(E::UnknownTopicOrPartition.code())?;
    let partition = Arc::clone(topic.led(p.partition_index)?);
    if !topic.settings.cleanup_policy_delete {
        return Err(E::PolicyViolation.code());
    }
    let offsets = partition.log.offsets();
    let offset = match p.offset {
        HIGH_WATERMARK => offsets.high_watermark,
        offset if offset < 0 => return Err(E::OffsetOutOfRange.code()),
        offset => offset,
    };
    let moving = Arc::clone(&partition);
    tokio::task::spawn_blocking(move || moving.log.increment_log_start_offset(offset))
        .await
        .map_err(|_| E::UnknownServerError.code())?
        .map_err(|e| e.error_code())?;
    Ok((partition, offset))
}

/// Waits until the partition's low watermark reaches `offset`, leadership moves, or the
/// deadline passes.
async fn wait(
    broker: &Broker,
    partition: &Partition,
    p: &DeleteRecordsPartition,
    offset: i64,
    deadline: tokio::time::Instant,
) -> DeleteRecordsPartitionResult {
    let mut shutdown = broker.shutdown.clone();
    loop {
        // Register before checking, so a change between the check and the wait wakes us.
        let mut changed = std::pin::pin!(partition.appended.notified());
        changed.as_mut().enable();
        let Some(low_watermark) = partition.low_watermark() else {
            return result(
                p.partition_index,
                INVALID_LOW_WATERMARK,
                ResponseError::NotLeaderOrFollower.code(),
            );
        };
        if low_watermark >= offset {
            return result(p.partition_index, low_watermark, 0);
        }
        if *shutdown.borrow() {
            return result(
                p.partition_index,
                INVALID_LOW_WATERMARK,
                ResponseError::NotLeaderOrFollower.code(),
            );
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => {
                return result(
                    p.partition_index,
                    INVALID_LOW_WATERMARK,
                    ResponseError::RequestTimedOut.code(),
                );
            }
            _ = shutdown.changed() => {}
        }
    }
}
