//! ElectLeaders (v0–v2): forwarded to the active controller, which moves leadership to the
//! preferred replica where it is in sync (election type 0; v0 always asks for this) or, for
//! leaderless partitions, to any live replica (type 1, unclean). Answered once this broker
//! has applied the outcome. Results per partition carry Kafka's codes: ELECTION_NOT_NEEDED,
//! PREFERRED_LEADER_NOT_AVAILABLE, ELIGIBLE_LEADERS_NOT_AVAILABLE, UNKNOWN_TOPIC_OR_PARTITION.

use std::collections::BTreeMap;

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use strom_controller::service::{ControllerRequest, ControllerResponse};

use crate::Broker;

pub async fn handle(
    broker: &Broker,
    req: ElectLeadersRequest,
    version: i16,
) -> ElectLeadersResponse {
    let election_type = if version == 0 { 0 } else { req.election_type };
    if !matches!(election_type, 0 | 1) {
        return ElectLeadersResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code());
    }
    let partitions = req.topic_partitions.as_ref().map(|topics| {
        topics
            .iter()
            .map(|t| (t.topic.to_string(), t.partitions.clone()))
            .collect()
    });
    let request = ControllerRequest::ElectLeaders {
        election_type,
        partitions,
    };
    let timeout_ms = u64::try_from(req.timeout_ms).unwrap_or(0);
    let results = match broker.cluster.call_within(request, timeout_ms).await {
        ControllerResponse::Elected { results, index } => {
            crate::cluster::wait_for_applied(broker, index).await;
            results
        }
        ControllerResponse::Error { code, .. } => {
            return ElectLeadersResponse::default().with_error_code(code);
        }
        _ => {
            return ElectLeadersResponse::default()
                .with_error_code(ResponseError::NotController.code());
        }
    };
    let mut by_topic: BTreeMap<String, Vec<PartitionResult>> = BTreeMap::new();
    for (topic, partition, code, message) in results {
        by_topic.entry(topic).or_default().push(
            PartitionResult::default()
                .with_partition_id(partition)
                .with_error_code(code)
                .with_error_message(message.map(StrBytes::from_string)),
        );
    }
    ElectLeadersResponse::default().with_replica_election_results(
        by_topic
            .into_iter()
            .map(|(topic, partition_result)| {
                ReplicaElectionResult::default()
                    .with_topic(TopicName(StrBytes::from_string(topic)))
                    .with_partition_result(partition_result)
            })
            .collect(),
    )
}
