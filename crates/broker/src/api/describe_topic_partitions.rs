//! DescribeTopicPartitions (v0, KIP-966): topic metadata in pages. Topics come sorted by
//! name (all of them when the request names none), from the cursor's topic and partition
//! on, at most `response_partition_limit` partitions per answer (capped by Kafka's
//! `max.request.partition.size.limit`, 2000); `next_cursor` points at the first partition
//! left out. Strom keeps no eligible leader replicas, so those lists are empty.

use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use strom_metadata::image::{PartitionImage, TopicImage};
use strom_metadata::MetadataImage;

use super::TOPIC_OPERATIONS;
use crate::topics::validate_topic_name;
use crate::Broker;

/// Kafka's `max.request.partition.size.limit` default.
const PARTITIONS_PER_RESPONSE_MAX: i32 = 2000;

pub fn handle(
    broker: &Broker,
    req: DescribeTopicPartitionsRequest,
) -> DescribeTopicPartitionsResponse {
    let image = broker.topics.image().image;
    let cursor_topic = req
        .cursor
        .as_ref()
        .map_or(String::new(), |c| c.topic_name.to_string());
    let fetch_all = req.topics.is_empty();
    let mut names: Vec<String> = if fetch_all {
        image.topic_ids.keys().cloned().collect()
    } else {
        req.topics.iter().map(|t| t.name.to_string()).collect()
    };
    names.retain(|n| *n >= cursor_topic);
    names.sort();
    names.dedup();
    if req.cursor.is_some() && !fetch_all && !names.contains(&cursor_topic) {
        // The cursor's topic must be one of those asked for: the whole request fails.
        let topics = req
            .topics
            .iter()
            .map(|t| failed_topic(t.name.to_string(), ResponseError::InvalidRequest.code()))
            .collect();
        return DescribeTopicPartitionsResponse::default().with_topics(topics);
    }
    let first_partition = req.cursor.as_ref().map_or(0, |c| c.partition_index);
    let page = Page {
        image: &image,
        cursor_topic: &cursor_topic,
        first_partition,
        limit: req
            .response_partition_limit
            .min(PARTITIONS_PER_RESPONSE_MAX),
        fetch_all,
    };
    page.describe(&names)
}

/// One answer's worth of topics.
struct Page<'a> {
    image: &'a MetadataImage,
    cursor_topic: &'a str,
    first_partition: i32,
    limit: i32,
    /// Unknown topics are reported only when they were named.
    fetch_all: bool,
}

impl Page<'_> {
    fn describe(&self, names: &[String]) -> DescribeTopicPartitionsResponse {
        let mut response = DescribeTopicPartitionsResponse::default();
        let mut remaining = self.limit;
        for name in names {
            if remaining == 0 {
                // Every earlier topic is complete: the next answer starts at this one.
                response.next_cursor = Some(cursor(name, 0));
                break;
            }
            if remaining < 0 {
                break;
            }
            let Some(topic) = self.image.topic_by_name(name) else {
                if !self.fetch_all {
                    let code = match validate_topic_name(name) {
                        Ok(()) => ResponseError::UnknownTopicOrPartition.code(),
                        Err(_) => ResponseError::InvalidTopicException.code(),
                    };
                    response.topics.push(failed_topic(name.clone(), code));
                }
                continue;
            };
            let start = if name == self.cursor_topic {
                self.first_partition.max(0)
            } else {
                0
            };
            let count = topic.partitions.len() as i32;
            let end = count.min(start.saturating_add(remaining));
            response.topics.push(self.topic(topic, start, end));
            if end < count {
                response.next_cursor = Some(cursor(name, end));
                break;
            }
            remaining -= end.saturating_sub(start).max(0);
        }
        response
    }

    fn topic(
        &self,
        topic: &TopicImage,
        start: i32,
        end: i32,
    ) -> DescribeTopicPartitionsResponseTopic {
        let partitions = (start..end)
            .filter_map(|i| topic.partitions.get(&i).map(|p| self.partition(i, p)))
            .collect();
        DescribeTopicPartitionsResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
            .with_topic_id(topic.id)
            .with_is_internal(is_internal(&topic.name))
            .with_partitions(partitions)
            .with_topic_authorized_operations(TOPIC_OPERATIONS)
    }

    fn partition(
        &self,
        index: i32,
        p: &PartitionImage,
    ) -> DescribeTopicPartitionsResponsePartition {
        let ids = |ids: &[i32]| ids.iter().map(|id| BrokerId(*id)).collect::<Vec<_>>();
        let registered = |id: &i32| self.image.brokers.contains_key(id);
        let offline: Vec<i32> = p
            .replicas
            .iter()
            .copied()
            .filter(|id| self.image.brokers.get(id).is_none_or(|b| b.fenced))
            .collect();
        let leader = if registered(&p.leader) { p.leader } else { -1 };
        DescribeTopicPartitionsResponsePartition::default()
            .with_partition_index(index)
            .with_leader_id(BrokerId(leader))
            .with_leader_epoch(p.leader_epoch)
            .with_replica_nodes(ids(&p.replicas))
            .with_isr_nodes(ids(&p.isr))
            .with_eligible_leader_replicas(Some(Vec::new()))
            .with_last_known_elr(Some(Vec::new()))
            .with_offline_replicas(ids(&offline))
    }
}

fn cursor(topic: &str, partition_index: i32) -> Cursor {
    Cursor::default()
        .with_topic_name(TopicName(StrBytes::from_string(topic.to_string())))
        .with_partition_index(partition_index)
}

fn failed_topic(name: String, error_code: i16) -> DescribeTopicPartitionsResponseTopic {
    DescribeTopicPartitionsResponseTopic::default()
        .with_error_code(error_code)
        .with_is_internal(is_internal(&name))
        .with_name(Some(TopicName(StrBytes::from_string(name))))
}

/// Kafka's internal topics.
fn is_internal(name: &str) -> bool {
    name == crate::consumer_offsets::TOPIC || name == "__transaction_state"
}
