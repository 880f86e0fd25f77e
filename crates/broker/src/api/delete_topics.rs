//! DeleteTopics: by name (v0–v5) or by name or topic id (v6), forwarded to the active
//! controller; every broker deletes its logs of the topic when it applies the removal.

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use strom_controller::service::{ControllerRequest, TopicResult};
use uuid::Uuid;

use crate::Broker;

pub async fn handle(
    broker: &Broker,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
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
    let mut results: Vec<Result<DeletableTopicResult, (String, Uuid)>> = targets
        .into_iter()
        .map(|(name, topic_id)| resolve(broker, name, topic_id))
        .collect();
    let names: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|(name, _)| name.clone()))
        .collect();
    let mut answers = if names.is_empty() {
        Vec::new()
    } else {
        delete_in_controller(broker, names).await
    }
    .into_iter();
    let responses = results
        .iter_mut()
        .map(|r| {
            let mut result = match r {
                Ok(done) => done.clone(),
                Err((name, id)) => {
                    let answer = answers.next().unwrap_or_default();
                    let mut result = DeletableTopicResult::default()
                        .with_name(Some(TopicName(StrBytes::from_string(name.clone()))))
                        .with_topic_id(*id)
                        .with_error_code(answer.error_code);
                    if answer.error_code != 0 {
                        result.error_message = answer.message.map(StrBytes::from_string);
                    }
                    result
                }
            };
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

/// Asks the active controller to delete the topics, then waits until this broker has
/// removed them.
async fn delete_in_controller(broker: &Broker, names: Vec<String>) -> Vec<TopicResult> {
    let count = names.len();
    let request = ControllerRequest::DeleteTopics { names };
    crate::cluster::topic_request(broker, request, count, crate::cluster::ADMIN_TIMEOUT_MS).await
}

/// The topic to delete (`Err`, to forward), or the answer when it cannot be.
fn resolve(
    broker: &Broker,
    name: Option<TopicName>,
    topic_id: Uuid,
) -> Result<DeletableTopicResult, (String, Uuid)> {
    let fail = |name: Option<TopicName>, code: ResponseError| {
        Ok(DeletableTopicResult::default()
            .with_name(name)
            .with_topic_id(topic_id)
            .with_error_code(code.code()))
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
    Err((topic.name.clone(), topic.id))
}
