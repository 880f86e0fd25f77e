//! AlterPartitionReassignments (v0–v1) and ListPartitionReassignments (v0), KIP-455.
//!
//! A reassignment is the active controller's: the partition's replicas become the target
//! followed by the replicas leaving; the joining ones start as followers with empty logs
//! and catch up through ordinary replication; once every target replica is in sync the
//! controller drops the leaving ones (moving leadership if the leader leaves), and each
//! leaving broker deletes its copy. Listing reads the applied metadata.

use std::collections::BTreeMap;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use strom_controller::service::{ControllerRequest, ControllerResponse};

use crate::Broker;

pub async fn alter(
    broker: &Broker,
    req: AlterPartitionReassignmentsRequest,
    version: i16,
) -> AlterPartitionReassignmentsResponse {
    let image = broker.topics.image();
    let allow_rf_change = version < 1 || req.allow_replication_factor_change;
    let mut refused: Vec<(String, i32, i16, Option<String>)> = Vec::new();
    let mut asked = Vec::new();
    for topic in &req.topics {
        for p in &topic.partitions {
            let target: Option<Vec<i32>> =
                p.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect());
            let current_rf = image
                .image
                .topic_by_name(&topic.name)
                .and_then(|t| t.partitions.get(&p.partition_index))
                .map(|p| p.target_replicas().len());
            let changes_rf = matches!((&target, current_rf), (Some(t), Some(rf)) if t.len() != rf);
            if changes_rf && !allow_rf_change {
                refused.push((
                    topic.name.to_string(),
                    p.partition_index,
                    ResponseError::InvalidReplicationFactor.code(),
                    Some("The replication factor cannot change in this request.".into()),
                ));
            } else {
                asked.push((topic.name.to_string(), p.partition_index, target));
            }
        }
    }
    let mut results = refused;
    if !asked.is_empty() {
        let request = ControllerRequest::AlterReassignments { partitions: asked };
        let timeout_ms = u64::try_from(req.timeout_ms).unwrap_or(0);
        match broker.cluster.call_within(request, timeout_ms).await {
            ControllerResponse::Elected { results: r, index } => {
                crate::cluster::wait_for_applied(broker, index).await;
                results.extend(r);
            }
            ControllerResponse::Error { code, message } => {
                return AlterPartitionReassignmentsResponse::default()
                    .with_error_code(code)
                    .with_error_message(Some(StrBytes::from_string(message)));
            }
            _ => {
                return AlterPartitionReassignmentsResponse::default()
                    .with_error_code(ResponseError::NotController.code());
            }
        }
    }
    let mut by_topic: BTreeMap<String, Vec<ReassignablePartitionResponse>> = BTreeMap::new();
    for (topic, partition, code, message) in results {
        by_topic.entry(topic).or_default().push(
            ReassignablePartitionResponse::default()
                .with_partition_index(partition)
                .with_error_code(code)
                .with_error_message(message.map(StrBytes::from_string)),
        );
    }
    AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(allow_rf_change)
        .with_responses(
            by_topic
                .into_iter()
                .map(|(name, partitions)| {
                    ReassignableTopicResponse::default()
                        .with_name(TopicName(StrBytes::from_string(name)))
                        .with_partitions(partitions)
                })
                .collect(),
        )
}

pub fn list(
    broker: &Broker,
    req: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let published = broker.topics.image();
    let image = &published.image;
    let ids = |v: &[i32]| v.iter().map(|b| BrokerId(*b)).collect::<Vec<_>>();
    let wanted: Option<BTreeMap<String, Vec<i32>>> = req.topics.as_ref().map(|topics| {
        topics
            .iter()
            .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    let mut topics = Vec::new();
    for topic in image.topics.values() {
        let asked = match &wanted {
            Some(w) => match w.get(&topic.name) {
                Some(partitions) => Some(partitions),
                None => continue,
            },
            None => None,
        };
        let partitions: Vec<OngoingPartitionReassignment> = topic
            .partitions
            .iter()
            .filter(|(i, p)| p.reassigning() && asked.is_none_or(|a| a.contains(i)))
            .map(|(i, p)| {
                OngoingPartitionReassignment::default()
                    .with_partition_index(*i)
                    .with_replicas(ids(&p.replicas))
                    .with_adding_replicas(ids(&p.adding))
                    .with_removing_replicas(ids(&p.removing))
            })
            .collect();
        if !partitions.is_empty() {
            topics.push(
                OngoingTopicReassignment::default()
                    .with_name(TopicName(StrBytes::from_string(topic.name.clone())))
                    .with_partitions(partitions),
            );
        }
    }
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}
