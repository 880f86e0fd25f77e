//! DescribeCluster (v0–v1): cluster id, controller and the live brokers.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::CLUSTER_OPERATIONS;
use crate::Broker;

const ENDPOINT_TYPE_BROKER: i8 = 1;

pub fn handle(
    broker: &Broker,
    req: &DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    if version >= 1 && req.endpoint_type != ENDPOINT_TYPE_BROKER {
        return DescribeClusterResponse::default()
            .with_endpoint_type(req.endpoint_type)
            .with_error_code(ResponseError::MismatchedEndpointType.code())
            .with_error_message(Some(StrBytes::from_static_str("The request was sent to an endpoint of type BROKER, but we wanted an endpoint of type CONTROLLER")));
    }
    let brokers = broker
        .topics
        .image()
        .image
        .live_brokers()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.id))
                .with_host(StrBytes::from_string(b.host.clone()))
                .with_port(i32::from(b.port))
                .with_rack(b.rack.clone().map(StrBytes::from_string))
        })
        .collect();
    // As Kafka's brokers do, name a live broker as the controller: admin requests sent to
    // it are forwarded to the active controller.
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(broker.cluster_id.clone()))
        .with_controller_id(BrokerId(broker.node_id))
        .with_brokers(brokers);
    if req.include_cluster_authorized_operations {
        response.cluster_authorized_operations = CLUSTER_OPERATIONS;
    }
    if version >= 1 {
        response.endpoint_type = ENDPOINT_TYPE_BROKER;
    }
    response
}
