//! Metadata: the live brokers, and every requested topic's partitions with leader, leader
//! epoch, replicas, ISR and offline replicas, all from the metadata this broker applied.
//! Auto-creates missing topics (through the controller) when both the request and
//! `auto.create.topics.enable` allow it.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use strom_controller::service::{ControllerRequest, ControllerResponse, NewTopic};
use strom_metadata::MetadataImage;

use super::{CLUSTER_OPERATIONS, TOPIC_OPERATIONS};
use crate::topics::Topic;
use crate::Broker;

pub async fn handle(broker: &Broker, req: MetadataRequest, version: i16) -> MetadataResponse {
    // v0 has no null: an empty list means all topics. v4+ asks for auto-creation explicitly.
    let auto_create =
        broker.config.auto_create_topics_enable && (version < 4 || req.allow_auto_topic_creation);
    let requested = match req.topics {
        Some(topics) if !(version == 0 && topics.is_empty()) => Some(topics),
        _ => None,
    };
    let topics = match requested {
        None => {
            let image = broker.topics.image().image;
            broker
                .topics
                .all()
                .iter()
                .map(|t| {
                    describe_topic(&image, t, version, req.include_topic_authorized_operations)
                })
                .collect()
        }
        Some(topics) => {
            let mut answers = Vec::with_capacity(topics.len());
            for t in topics {
                answers.push(match t.name {
                    Some(name) => {
                        lookup_by_name(
                            broker,
                            &name,
                            auto_create,
                            version,
                            req.include_topic_authorized_operations,
                        )
                        .await
                    }
                    None => match broker.topics.get_by_id(&t.topic_id) {
                        Some(topic) => describe_topic(
                            &broker.topics.image().image,
                            &topic,
                            version,
                            req.include_topic_authorized_operations,
                        ),
                        None => error_topic(None, t.topic_id, ResponseError::UnknownTopicId.code()),
                    },
                });
            }
            answers
        }
    };
    let mut response = MetadataResponse::default()
        .with_brokers(live_brokers(&broker.topics.image().image))
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

/// The registered, unfenced brokers.
fn live_brokers(image: &MetadataImage) -> Vec<MetadataResponseBroker> {
    image
        .live_brokers()
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id))
                .with_host(StrBytes::from_string(b.host.clone()))
                .with_port(i32::from(b.port))
                .with_rack(b.rack.clone().map(StrBytes::from_string))
        })
        .collect()
}

async fn lookup_by_name(
    broker: &Broker,
    name: &TopicName,
    auto_create: bool,
    version: i16,
    include_ops: bool,
) -> MetadataResponseTopic {
    if let Some(topic) = broker.topics.get(name) {
        return describe_topic(&broker.topics.image().image, &topic, version, include_ops);
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
    match auto_create_topic(broker, name).await {
        Ok(()) => match broker.topics.get(name) {
            Some(topic) => {
                describe_topic(&broker.topics.image().image, &topic, version, include_ops)
            }
            None => error_topic(
                Some(name.clone()),
                uuid::Uuid::nil(),
                ResponseError::LeaderNotAvailable.code(),
            ),
        },
        Err((code, message)) => {
            tracing::warn!(topic = %name.as_str(), code, %message, "auto-creating topic failed");
            error_topic(Some(name.clone()), uuid::Uuid::nil(), code)
        }
    }
}

/// Creates a topic with the broker's defaults through the controller; one that exists by
/// now is fine.
async fn auto_create_topic(broker: &Broker, name: &str) -> Result<(), (i16, String)> {
    let request = ControllerRequest::CreateTopics {
        topics: vec![NewTopic {
            name: name.to_string(),
            num_partitions: broker.config.num_partitions,
            replication_factor: broker.config.default_replication_factor,
            assignments: Vec::new(),
            configs: Vec::new(),
        }],
        validate_only: false,
    };
    match broker.cluster.call(request).await {
        ControllerResponse::Topics(results) => match results.first() {
            Some(r) if r.error_code == 0 => {
                crate::cluster::wait_for_applied(broker, r.index).await;
                Ok(())
            }
            Some(r) if r.error_code == ResponseError::TopicAlreadyExists.code() => Ok(()),
            Some(r) => Err((r.error_code, r.message.clone().unwrap_or_default())),
            None => Err((ResponseError::UnknownServerError.code(), String::new())),
        },
        ControllerResponse::Error { code, message } => Err((code, message)),
        other => Err((
            ResponseError::UnknownServerError.code(),
            format!("unexpected controller answer {other:?}"),
        )),
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
    image: &MetadataImage,
    topic: &Topic,
    version: i16,
    include_ops: bool,
) -> MetadataResponseTopic {
    let fenced = |id: &i32| image.brokers.get(id).is_none_or(|b| b.fenced);
    let ids = |ids: &[i32]| ids.iter().map(|id| BrokerId(*id)).collect::<Vec<_>>();
    let partitions = topic
        .states
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let offline: Vec<i32> = p.replicas.iter().copied().filter(fenced).collect();
            let mut partition = MetadataResponsePartition::default()
                .with_partition_index(index as i32)
                .with_leader_id(BrokerId(p.leader))
                .with_replica_nodes(ids(&p.replicas))
                .with_isr_nodes(ids(&p.isr));
            if p.leader < 0 {
                partition.error_code = ResponseError::LeaderNotAvailable.code();
            }
            if version >= 5 {
                partition.offline_replicas = ids(&offline);
            }
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
        response.is_internal = topic.name == crate::consumer_offsets::TOPIC
            || topic.name == crate::transaction_state::TOPIC;
    }
    if version >= 10 {
        response.topic_id = topic.id;
    }
    if version >= 8 && include_ops {
        response.topic_authorized_operations = TOPIC_OPERATIONS;
    }
    response
}
