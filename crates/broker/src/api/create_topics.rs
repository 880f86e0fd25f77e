//! CreateTopics: Kafka's validation (name, duplicates, partitions, replication factor,
//! assignments, configs), `validate_only`, and the v5+ answer with the topic's configs.
//! The broker checks what it can alone; the active controller checks the rest (existing
//! names, brokers for the replicas), places the replicas and commits the topic.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use strom_controller::service::{self as controller, ControllerRequest, TopicResult};

use crate::dynamic_config::{BrokerDefaults, DynamicBrokerConfigs};
use crate::Broker;
use crate::{topic_config, topics};

pub async fn handle(
    broker: &Broker,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut seen = std::collections::HashSet::new();
    let duplicates: std::collections::HashSet<String> = req
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.to_string()))
        .map(|t| t.name.to_string())
        .collect();
    // What the broker can check alone is answered here; the rest goes to the controller in
    // one request.
    let mut results: Vec<Result<CreatableTopicResult, NewTopic>> = req
        .topics
        .into_iter()
        .map(|t| {
            if duplicates.contains(t.name.as_str()) {
                return Ok(failed(
                    ResponseError::InvalidRequest.code(),
                    format!(
                        "Create topics request from client contains multiple entries for topic {}",
                        t.name.as_str()
                    ),
                ));
            }
            check_one(broker, t).map_err(|e| *e)
        })
        .collect();
    let forwarded: Vec<controller::NewTopic> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|t| controller::NewTopic {
            name: t.topic.name.clone(),
            num_partitions: t.topic.num_partitions,
            replication_factor: t.topic.replication_factor,
            assignments: t.assignments.clone(),
            configs: t.topic.configs.clone().into_iter().collect(),
        })
        .collect();
    let answers = if forwarded.is_empty() {
        Vec::new()
    } else {
        // A request without a positive timeout waits as long as the broker allows.
        let timeout_ms = u64::try_from(req.timeout_ms)
            .ok()
            .filter(|t| *t > 0)
            .unwrap_or(crate::cluster::ADMIN_TIMEOUT_MS);
        create_in_controller(broker, forwarded, req.validate_only, timeout_ms).await
    };
    let mut answers = answers.into_iter();
    let topics = results
        .iter_mut()
        .map(|r| {
            let (name, mut result) = match r {
                Ok(done) => (done.name.clone(), done.clone()),
                Err(new) => {
                    let answer = answers.next().unwrap_or_default();
                    let name = TopicName(StrBytes::from_string(new.topic.name.clone()));
                    (name, answer_to_result(broker, new, answer, version))
                }
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

/// Forwards creations to the active controller and, for topics it created, waits until this
/// broker has applied them, so that the client's next Metadata here sees them.
async fn create_in_controller(
    broker: &Broker,
    topics: Vec<controller::NewTopic>,
    validate_only: bool,
    timeout_ms: u64,
) -> Vec<TopicResult> {
    let count = topics.len();
    let request = ControllerRequest::CreateTopics {
        topics,
        validate_only,
    };
    crate::cluster::topic_request(broker, request, count, timeout_ms).await
}

/// A creation the broker found valid, on its way to the controller.
struct NewTopic {
    topic: topics::NewTopic,
    assignments: Vec<(i32, Vec<i32>)>,
}

fn answer_to_result(
    broker: &Broker,
    new: &NewTopic,
    answer: TopicResult,
    version: i16,
) -> CreatableTopicResult {
    if answer.error_code != 0 {
        return failed(answer.error_code, answer.message.unwrap_or_default());
    }
    let mut result = CreatableTopicResult::default()
        .with_num_partitions(answer.num_partitions)
        .with_replication_factor(answer.replication_factor)
        .with_topic_id(uuid::Uuid::from_u128(answer.topic_id));
    if version >= 5 {
        result.configs = Some(topic_configs(broker, &new.topic.configs));
    }
    result
}

fn failed(code: i16, message: String) -> CreatableTopicResult {
    CreatableTopicResult::default()
        .with_error_code(code)
        .with_error_message(Some(StrBytes::from_string(message)))
        .with_num_partitions(-1)
        .with_replication_factor(-1)
        .with_configs(None)
}

/// Kafka's checks that need no metadata; `Err` carries the creation to forward.
fn check_one(broker: &Broker, t: CreatableTopic) -> Result<CreatableTopicResult, Box<NewTopic>> {
    let has_assignments = !t.assignments.is_empty();
    if has_assignments && (t.num_partitions != -1 || t.replication_factor != -1) {
        return Ok(failed(
            ResponseError::InvalidRequest.code(),
            "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.".into(),
        ));
    }
    let mut assignments = Vec::new();
    let (num_partitions, replication_factor) = if has_assignments {
        let mut sorted: Vec<_> = t.assignments.iter().collect();
        sorted.sort_by_key(|a| a.partition_index);
        for (expected, a) in sorted.iter().enumerate() {
            if a.partition_index != expected as i32 {
                return Ok(failed(
                    ResponseError::InvalidReplicaAssignment.code(),
                    "Partitions should be a consecutive 0-based integer sequence".into(),
                ));
            }
            assignments.push((
                a.partition_index,
                a.broker_ids.iter().map(|b| b.0).collect(),
            ));
        }
        (
            sorted.len() as i32,
            sorted[0].broker_ids.len().max(1) as i16,
        )
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
            return Ok(failed(
                ResponseError::InvalidConfig.code(),
                format!(
                    "Null value not supported for topic configs: {}",
                    c.name.as_str()
                ),
            ));
        };
        configs.insert(c.name.to_string(), value.to_string());
    }
    let topic = topics::NewTopic {
        name: t.name.to_string(),
        num_partitions,
        replication_factor,
        configs,
    };
    if let Err((code, message)) = topics::validate_new(&topic) {
        return Ok(failed(code, message));
    }
    warn_unenforced(&topic);
    Err(Box::new(NewTopic { topic, assignments }))
}

fn warn_unenforced(topic: &topics::NewTopic) {
    for key in topic
        .configs
        .keys()
        .filter(|k| !topic_config::ENFORCED.contains(&k.as_str()))
    {
        tracing::warn!(topic = %topic.name, config = %key, "topic config accepted and reported but not enforced yet");
    }
    if !topic.name.starts_with("__") && (topic.name.contains('.') || topic.name.contains('_')) {
        tracing::warn!(topic = %topic.name, "topic names with '.' or '_' can collide in metric names");
    }
}

fn topic_configs(
    broker: &Broker,
    overrides: &BTreeMap<String, String>,
) -> Vec<CreatableTopicConfigs> {
    let dynamic = DynamicBrokerConfigs::applied(broker);
    let defaults = BrokerDefaults::new(&broker.config, &dynamic);
    topic_config::TOPIC_CONFIGS
        .iter()
        .map(|def| {
            let (value, source) = topic_config::effective_value(def, overrides, &defaults);
            CreatableTopicConfigs::default()
                .with_name(StrBytes::from_static_str(def.name))
                .with_value(Some(StrBytes::from_string(value)))
                .with_config_source(source.code())
                .with_read_only(false)
                .with_is_sensitive(false)
        })
        .collect()
}
