//! DescribeQuorum (v0–v2): the controller quorum's leader, epoch, high watermark and each
//! voter's log end offset, as the active controller reports them, for the metadata topic
//! `__cluster_metadata` partition 0 (Kafka's only quorum). The broker forwards the question
//! to the active controller.

use kafka_protocol::messages::describe_quorum_response::{
    Listener, Node, PartitionData, ReplicaState, TopicData,
};
use kafka_protocol::messages::{
    BrokerId, DescribeQuorumRequest, DescribeQuorumResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use strom_controller::service::{ControllerRequest, ControllerResponse};

use crate::Broker;

const METADATA_TOPIC: &str = "__cluster_metadata";

pub async fn handle(
    broker: &Broker,
    req: DescribeQuorumRequest,
    version: i16,
) -> DescribeQuorumResponse {
    let asks_metadata = req.topics.len() == 1
        && req.topics[0].topic_name.as_str() == METADATA_TOPIC
        && req.topics[0].partitions.len() == 1
        && req.topics[0].partitions[0].partition_index == 0;
    if !asks_metadata {
        return DescribeQuorumResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code());
    }
    let info = match broker.cluster.call(ControllerRequest::DescribeQuorum).await {
        ControllerResponse::Quorum(info) => info,
        other => {
            let code = match other {
                ControllerResponse::Error { code, .. } => code,
                _ => ResponseError::NotController.code(),
            };
            let partition = PartitionData::default()
                .with_partition_index(0)
                .with_error_code(code);
            return DescribeQuorumResponse::default().with_topics(vec![TopicData::default()
                .with_topic_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
                .with_partitions(vec![partition])]);
        }
    };
    let voters = info
        .voters
        .iter()
        .map(|v| {
            let mut state = ReplicaState::default()
                .with_replica_id(BrokerId(v.id as i32))
                .with_log_end_offset(v.log_end_offset);
            if version >= 1 {
                state.last_fetch_timestamp = -1;
                state.last_caught_up_timestamp = -1;
            }
            state
        })
        .collect();
    let partition = PartitionData::default()
        .with_partition_index(0)
        .with_leader_id(BrokerId(info.leader_id as i32))
        .with_leader_epoch(info.leader_epoch as i32)
        .with_high_watermark(info.high_watermark)
        .with_current_voters(voters);
    let mut response = DescribeQuorumResponse::default().with_topics(vec![TopicData::default()
        .with_topic_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
        .with_partitions(vec![partition])]);
    if version >= 2 {
        let listener = broker
            .config
            .controller_listener_names
            .first()
            .cloned()
            .unwrap_or_else(|| "CONTROLLER".into());
        response.nodes = broker
            .config
            .controller_quorum_voters
            .iter()
            .map(|(id, host, port)| {
                Node::default()
                    .with_node_id(BrokerId(*id))
                    .with_listeners(vec![Listener::default()
                        .with_name(StrBytes::from_string(listener.clone()))
                        .with_host(StrBytes::from_string(host.clone()))
                        .with_port(*port)])
            })
            .collect();
    }
    response
}
