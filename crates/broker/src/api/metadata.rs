//! Metadata: brokers, controller, and every requested topic's partitions with leader,
//! replicas and ISR. Auto-creates missing topics when both the request and
//! `auto.create.topics.enable` allow it.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{CLUSTER_OPERATIONS, TOPIC_OPERATIONS};
use crate::topics::Topic;
use crate::Broker;

pub fn handle(broker: &Broker, req: MetadataRequest, version: i16) -> MetadataResponse {
    // v0 has no null: an empty list means all topics. v4+ asks for auto-creation explicitly.
    let auto_create =
        broker.config.auto_create_topics_enable && (version < 4 || req.allow_auto_topic_creation);
    let requested = match req.topics {
        Some(topics) if !(version == 0 && topics.is_empty()) => Some(topics),
        _ => None,
    };
    let topics = match requested {
        None => broker
            .topics
            .all()
            .iter()
            .map(|t| describe_topic(broker, t, version, req.include_topic_authorized_operations))
            .collect(),
        Some(topics) => topics
            .into_iter()
            .map(|t| match t.name {
                Some(name) => lookup_by_name(
                    broker,
                    &name,
                    auto_create,
                    version,
                    req.include_topic_authorized_operations,
                ),
                None => match broker.topics.get_by_id(&t.topic_id) {
                    Some(topic) => describe_topic(
                        broker,
                        &topic,
                        version,
                        req.include_topic_authorized_operations,
                    ),
                    None => error_topic(None, t.topic_id, ResponseError::UnknownTopicId.code()),
                },
            })
            .collect(),
    };
    let mut response = MetadataResponse::default()
        .with_brokers(vec![broker_entry(broker, version)])
        .with_topics(topics);
    if version >= 1 {
        response.controller_id = BrokerId(broker.node_id);
    }
    if version >= 2 {
        response.cluster_id = Some(StrBytes::from_string(broker.cluster_id.clone()));
    }
    if (8..=10).contains(&version) && req.include_cluster_authorized_operations {
        response.cluster_authorized_operations = CLUSTER_OPERATIONS;
    }
    response
}

pub fn broker_entry(broker: &Broker, _version: i16) -> MetadataResponseBroker {
    MetadataResponseBroker::default()
        .with_node_id(BrokerId(broker.node_id))
        .with_host(StrBytes::from_string(broker.advertised_host.clone()))
        .with_port(broker.advertised_port)
}

fn lookup_by_name(
    broker: &Broker,
    name: &TopicName,
    auto_create: bool,
    version: i16,
    include_ops: bool,
) -> MetadataResponseTopic {
    if let Some(topic) = broker.topics.get(name) {
        return describe_topic(broker, &topic, version, include_ops);
    }
    if let Err(_message) = crate::topics::validate_topic_name(name) {
        return error_topic(
            Some(name.clone()),
            uuid::Uuid::nil(),
            ResponseError::InvalidTopicException.code(),
        );
    }
    if !auto_create {
        return error_topic(
            Some(name.clone()),
            uuid::Uuid::nil(),
            ResponseError::UnknownTopicOrPartition.code(),
        );
    }
    match broker.topics.auto_create(name) {
        Ok(topic) => describe_topic(broker, &topic, version, include_ops),
        Err((code, message)) => {
            tracing::warn!(topic = %name.as_str(), code, %message, "auto-creating topic failed");
            error_topic(Some(name.clone()), uuid::Uuid::nil(), code)
        }
    }
}

fn error_topic(
    name: Option<TopicName>,
    topic_id: uuid::Uuid,
    error_code: i16,
) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(name)
        .with_topic_id(topic_id)
        .with_error_code(error_code)
}

fn describe_topic(
    broker: &Broker,
    topic: &Topic,
    version: i16,
    include_ops: bool,
) -> MetadataResponseTopic {
    let node = BrokerId(broker.node_id);
    let partitions = topic
        .partitions
        .iter()
        .map(|p| {
            let mut partition = MetadataResponsePartition::default()
                .with_partition_index(p.index)
                .with_leader_id(node)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node]);
            if version >= 7 {
                partition.leader_epoch = p.leader_epoch;
            }
            partition
        })
        .collect();
    let mut response = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_partitions(partitions);
    if version >= 1 {
        response.is_internal = topic.name == crate::consumer_offsets::TOPIC;
    }
    if version >= 10 {
        response.topic_id = topic.id;
    }
    if version >= 8 && include_ops {
        response.topic_authorized_operations = TOPIC_OPERATIONS;
    }
    response
}
