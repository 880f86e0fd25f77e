//! DeleteTopics: by name (v0–v5) or by name or topic id (v6).

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use crate::Broker;

pub fn handle(broker: &Broker, req: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    let targets: Vec<(Option<TopicName>, Uuid)> = if version >= 6 {
        req.topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        req.topic_names
            .into_iter()
            .map(|n| (Some(n), Uuid::nil()))
            .collect()
    };
    let responses = targets
        .into_iter()
        .map(|(name, topic_id)| {
            let mut result = delete_one(broker, name, topic_id);
            if version < 6 {
                result.topic_id = Uuid::nil();
            }
            if version < 5 {
                result.error_message = None;
            }
            result
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

fn delete_one(broker: &Broker, name: Option<TopicName>, topic_id: Uuid) -> DeletableTopicResult {
    let fail = |name: Option<TopicName>, code: ResponseError| {
        DeletableTopicResult::default()
            .with_name(name)
            .with_topic_id(topic_id)
            .with_error_code(code.code())
    };
    let topic = match (&name, topic_id.is_nil()) {
        (Some(name), true) => broker.topics.get(name),
        (None, false) => broker.topics.get_by_id(&topic_id),
        _ => return fail(name, ResponseError::InvalidRequest),
    };
    let Some(topic) = topic else {
        let code = if topic_id.is_nil() {
            ResponseError::UnknownTopicOrPartition
        } else {
            ResponseError::UnknownTopicId
        };
        return fail(name, code);
    };
    let resolved_name = Some(TopicName(StrBytes::from_string(topic.name.clone())));
    if !broker.config.delete_topic_enable {
        return fail(resolved_name, ResponseError::TopicDeletionDisabled);
    }
    match broker.topics.delete(&topic.name) {
        Ok(_) => DeletableTopicResult::default()
            .with_name(resolved_name)
            .with_topic_id(topic.id),
        Err(e) => {
            tracing::error!(topic = %topic.name, error = %e, "deleting topic failed");
            fail(resolved_name, ResponseError::KafkaStorageError)
                .with_error_message(Some(StrBytes::from_string(e.to_string())))
        }
    }
}
