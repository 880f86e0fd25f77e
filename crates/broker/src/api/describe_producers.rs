//! DescribeProducers (v0, KIP-664): the producers a partition replica keeps state for — id,
//! epoch, last sequence and timestamp, coordinator epoch, the start of an open transaction.
//!
//! As in Kafka any replica answers, leader or follower, from its own producer state; a broker
//! without a replica gets NOT_LEADER_OR_FOLLOWER, a partition that does not exist
//! UNKNOWN_TOPIC_OR_PARTITION.

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};
use kafka_protocol::ResponseError;

use crate::topics::Topic;
use crate::Broker;

pub fn handle(broker: &Broker, req: DescribeProducersRequest) -> DescribeProducersResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topics.get(&t.name);
            let partitions = t
                .partition_indexes
                .iter()
                .map(|index| match &topic {
                    None => error(*index, ResponseError::UnknownTopicOrPartition),
                    Some(topic) => describe(topic, *index),
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}

fn describe(topic: &Topic, index: i32) -> PartitionResponse {
    let partition = match topic.replica(index) {
        Ok(partition) => partition,
        Err(code) => return error(index, code),
    };
    let producers = partition
        .log
        .producer_summaries()
        .into_iter()
        .map(|p| {
            ProducerState::default()
                .with_producer_id(ProducerId(p.producer_id))
                .with_producer_epoch(i32::from(p.producer_epoch))
                .with_last_sequence(p.last_sequence)
                .with_last_timestamp(p.last_timestamp_ms)
                .with_coordinator_epoch(p.coordinator_epoch)
                .with_current_txn_start_offset(p.current_txn_start_offset)
        })
        .collect();
    PartitionResponse::default()
        .with_partition_index(index)
        .with_active_producers(producers)
}

fn error(index: i32, error: ResponseError) -> PartitionResponse {
    PartitionResponse::default()
        .with_partition_index(index)
        .with_error_code(error.code())
}
