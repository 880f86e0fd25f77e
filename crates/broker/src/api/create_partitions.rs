//! CreatePartitions (v0–v3): more partitions for existing topics, placed by the active
//! controller (or as assigned), every broker opening its new replicas when it applies them.
//! Duplicate topics in one request get INVALID_REQUEST, as in Kafka.

use std::collections::HashSet;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use strom_controller::service::{ControllerRequest, NewPartitions};

use crate::Broker;

pub async fn handle(broker: &Broker, req: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let mut seen = HashSet::new();
    let duplicates: HashSet<String> = req
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.to_string()))
        .map(|t| t.name.to_string())
        .collect();
    let forwarded: Vec<NewPartitions> = req
        .topics
        .iter()
        .filter(|t| !duplicates.contains(t.name.as_str()))
        .map(|t| NewPartitions {
            name: t.name.to_string(),
            count: t.count,
            assignments: t.assignments.as_ref().map(|a| {
                a.iter()
                    .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                    .collect()
            }),
        })
        .collect();
    let count = forwarded.len();
    let answers = if forwarded.is_empty() {
        Vec::new()
    } else {
        let request = ControllerRequest::CreatePartitions {
            topics: forwarded,
            validate_only: req.validate_only,
        };
        let timeout_ms = crate::cluster::ADMIN_TIMEOUT_MS;
        crate::cluster::topic_request(broker, request, count, timeout_ms)
            .await
            .into_iter()
            .map(|r| (r.error_code, r.message))
            .collect()
    };
    let mut answers = answers.into_iter();
    let results = req
        .topics
        .iter()
        .map(|t| {
            let (code, message) = if duplicates.contains(t.name.as_str()) {
                (
                    ResponseError::InvalidRequest.code(),
                    Some("Duplicate topic in request.".to_string()),
                )
            } else {
                answers.next().unwrap_or_default()
            };
            CreatePartitionsTopicResult::default()
                .with_name(t.name.clone())
                .with_error_code(code)
                .with_error_message(message.filter(|_| code != 0).map(StrBytes::from_string))
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}
