//! CreateTopics: Kafka's validation (name, duplicates, partitions, replication factor,
//! assignments, configs), `validate_only`, and the v5+ answer with the topic's configs.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::topic_config;
use crate::topics::NewTopic;
use crate::Broker;

pub fn handle(broker: &Broker, req: CreateTopicsRequest, version: i16) -> CreateTopicsResponse {
    let mut seen = std::collections::HashSet::new();
    let duplicates: std::collections::HashSet<String> = req
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.to_string()))
        .map(|t| t.name.to_string())
        .collect();
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.clone();
            let mut result = if duplicates.contains(name.as_str()) {
                failed(
                    ResponseError::InvalidRequest.code(),
                    format!(
                        "Create topics request from client contains multiple entries for topic {}",
                        name.as_str()
                    ),
                )
            } else {
                create_one(broker, t, req.validate_only, version)
            };
            result.name = name;
            if version < 7 {
                result.topic_id = uuid::Uuid::nil();
            }
            if version < 5 {
                result.num_partitions = -1;
                result.replication_factor = -1;
                result.configs = None;
                result.topic_config_error_code = 0;
            }
            if version < 1 {
                result.error_message = None;
            }
            result
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

fn failed(code: i16, message: String) -> CreatableTopicResult {
    CreatableTopicResult::default()
        .with_error_code(code)
        .with_error_message(Some(StrBytes::from_string(message)))
        .with_num_partitions(-1)
        .with_replication_factor(-1)
        .with_configs(None)
}

fn create_one(
    broker: &Broker,
    t: CreatableTopic,
    validate_only: bool,
    version: i16,
) -> CreatableTopicResult {
    let has_assignments = !t.assignments.is_empty();
    if has_assignments && (t.num_partitions != -1 || t.replication_factor != -1) {
        return failed(
            ResponseError::InvalidRequest.code(),
            "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.".into(),
        );
    }
    let (num_partitions, replication_factor) = if has_assignments {
        let mut sorted: Vec<_> = t.assignments.iter().collect();
        sorted.sort_by_key(|a| a.partition_index);
        for (expected, a) in sorted.iter().enumerate() {
            if a.partition_index != expected as i32 {
                return failed(
                    ResponseError::InvalidReplicaAssignment.code(),
                    "Partitions should be a consecutive 0-based integer sequence".into(),
                );
            }
            if a.broker_ids.is_empty() || a.broker_ids.iter().any(|b| b.0 != broker.node_id) {
                return failed(
                    ResponseError::InvalidReplicaAssignment.code(),
                    format!(
                        "Replica assignment for partition {} names brokers that are not registered",
                        a.partition_index
                    ),
                );
            }
        }
        (sorted.len() as i32, sorted[0].broker_ids.len() as i16)
    } else {
        let partitions = if t.num_partitions == -1 {
            broker.config.num_partitions
        } else {
            t.num_partitions
        };
        let rf = if t.replication_factor == -1 {
            broker.config.default_replication_factor
        } else {
            t.replication_factor
        };
        (partitions, rf)
    };
    let mut configs = BTreeMap::new();
    for c in &t.configs {
        let Some(value) = &c.value else {
            return failed(
                ResponseError::InvalidConfig.code(),
                format!(
                    "Null value not supported for topic configs: {}",
                    c.name.as_str()
                ),
            );
        };
        configs.insert(c.name.to_string(), value.to_string());
    }
    let new_topic = NewTopic {
        name: t.name.to_string(),
        num_partitions,
        replication_factor,
        configs,
    };
    let outcome = if validate_only {
        broker
            .topics
            .check_new(&new_topic)
            .map(|()| uuid::Uuid::nil())
    } else {
        broker
            .topics
            .create(new_topic.clone())
            .map(|topic| topic.id)
    };
    match outcome {
        Err((code, message)) => failed(code, message),
        Ok(topic_id) => {
            let mut result = CreatableTopicResult::default()
                .with_num_partitions(num_partitions)
                .with_replication_factor(replication_factor)
                .with_topic_id(topic_id);
            if version >= 5 {
                result.configs = Some(topic_configs(broker, &new_topic.configs));
            }
            result
        }
    }
}

fn topic_configs(
    broker: &Broker,
    overrides: &BTreeMap<String, String>,
) -> Vec<CreatableTopicConfigs> {
    topic_config::TOPIC_CONFIGS
        .iter()
        .map(|def| {
            let (value, source) = topic_config::effective_value(def, overrides, &broker.config);
            CreatableTopicConfigs::default()
                .with_name(StrBytes::from_static_str(def.name))
                .with_value(Some(StrBytes::from_string(value)))
                .with_config_source(source.code())
                .with_read_only(false)
                .with_is_sensitive(false)
        })
        .collect()
}
