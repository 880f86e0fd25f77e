//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3, KIP-734), earliest local (-4)
//! and by timestamp (the first record at or after it). As in Kafka, what a consumer may
//! fetch bounds the answers: the high watermark, or for `isolation_level` read_committed
//! (v2+) the last stable offset — latest is that offset, and a timestamp lookup finding a
//! record at or past it finds nothing.

use kafka_protocol::messages::list_offsets_request::ListOffsetsPartition;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use crate::topics::Topic;
use crate::Broker;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const EARLIEST_PENDING_UPLOAD: i64 = -5;

pub fn handle(broker: &Broker, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let read_committed = version >= 2 && req.isolation_level == 1;
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topics.get(&t.name);
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut response = match &topic {
                        None => error(
                            p.partition_index,
                            ResponseError::UnknownTopicOrPartition.code(),
                        ),
                        Some(topic) => list_partition(topic, p, version, read_committed),
                    };
                    if version < 4 {
                        response.leader_epoch = -1;
                    }
                    response
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

fn error(index: i32, code: i16) -> ListOffsetsPartitionResponse {
    ListOffsetsPartitionResponse::default()
        .with_partition_index(index)
        .with_error_code(code)
        .with_offset(-1)
        .with_timestamp(-1)
}

fn list_partition(
    topic: &Topic,
    p: &ListOffsetsPartition,
    version: i16,
    read_committed: bool,
) -> ListOffsetsPartitionResponse {
    let partition = match topic.led(p.partition_index) {
        Ok(partition) => partition,
        Err(code) => return error(p.partition_index, code),
    };
    if version >= 4
        && p.current_leader_epoch >= 0
        && p.current_leader_epoch != partition.leader_epoch()
    {
        let code = if p.current_leader_epoch > partition.leader_epoch() {
            ResponseError::UnknownLeaderEpoch
        } else {
            ResponseError::FencedLeaderEpoch
        };
        return error(p.partition_index, code.code());
    }
    let log = &partition.log;
    let offsets = log.offsets();
    let found = |offset: i64, timestamp: i64, leader_epoch: i32| {
        ListOffsetsPartitionResponse::default()
            .with_partition_index(p.partition_index)
            .with_offset(offset)
            .with_timestamp(timestamp)
            .with_leader_epoch(leader_epoch)
    };
    let fetchable_end = if read_committed {
        offsets.last_stable_offset
    } else {
        offsets.high_watermark
    };
    let lookup = match p.timestamp {
        LATEST => return found(fetchable_end, -1, partition.leader_epoch()),
        EARLIEST | EARLIEST_LOCAL => {
            return found(offsets.log_start_offset, -1, partition.leader_epoch())
        }
        // Without tiered storage nothing is pending upload: Kafka answers "no offset".
        EARLIEST_PENDING_UPLOAD => return found(-1, -1, -1),
        MAX_TIMESTAMP => log.max_timestamp_offset(),
        ts if ts >= 0 => log.offset_for_timestamp(ts),
        _ => return error(p.partition_index, ResponseError::InvalidRequest.code()),
    };
    match lookup {
        Ok(Some(t)) if t.offset < fetchable_end => found(t.offset, t.timestamp, t.leader_epoch),
        Ok(_) => found(-1, -1, -1),
        Err(e) => error(p.partition_index, e.error_code()),
    }
}
