//! OffsetForLeaderEpoch (v2–v4): where a leader epoch ends in the leader's log, for clients
//! validating their position after a leader change (KIP-320: a consumer whose last fetched
//! epoch ends earlier here than its position was truncated and resets). Followers do not
//! need it: they follow the diverging epoch in Fetch. Only the leader answers; a stale or
//! future `current_leader_epoch` gets FENCED_LEADER_EPOCH / UNKNOWN_LEADER_EPOCH.

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;

use super::fetch::{check_epoch, end_offset_for_epoch};
use crate::Broker;

pub fn handle(broker: &Broker, req: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topics.get(&t.topic);
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let answer = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1);
                    let found = topic
                        .as_ref()
                        .ok_or(ResponseError::UnknownTopicOrPartition.code())
                        .and_then(|topic| topic.led(p.partition).cloned())
                        .and_then(|partition| {
                            check_epoch(&partition, p.current_leader_epoch).map(|()| partition)
                        });
                    match found {
                        Err(code) => answer.with_error_code(code),
                        Ok(_) if p.leader_epoch < 0 => answer,
                        Ok(partition) => {
                            let (epoch, end_offset) =
                                end_offset_for_epoch(&partition, p.leader_epoch);
                            answer.with_leader_epoch(epoch).with_end_offset(end_offset)
                        }
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
