//! FindCoordinator (v0–v6, batched keys from v4): on a single node every group and
//! transactional id is coordinated by this broker. (librdkafka also takes the presence of
//! this API as its sign that the broker supports LZ4.)

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::Broker;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub fn handle(
    broker: &Broker,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let host = StrBytes::from_string(broker.advertised_host.clone());
    let answer = |key: StrBytes| {
        let valid_type = req.key_type == KEY_TYPE_GROUP
            || (version >= 1 && req.key_type == KEY_TYPE_TRANSACTION);
        if !valid_type || key.is_empty() {
            return Coordinator::default()
                .with_key(key)
                .with_node_id(BrokerId(-1))
                .with_port(-1)
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(StrBytes::from_string(format!(
                    "Invalid coordinator key type {} or empty key",
                    req.key_type
                ))));
        }
        Coordinator::default()
            .with_key(key)
            .with_node_id(BrokerId(broker.node_id))
            .with_host(host.clone())
            .with_port(broker.advertised_port)
    };
    if version >= 4 {
        let coordinators = req.coordinator_keys.iter().cloned().map(answer).collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let c = answer(req.key.clone());
    let mut response = FindCoordinatorResponse::default()
        .with_error_code(c.error_code)
        .with_node_id(c.node_id)
        .with_host(c.host)
        .with_port(c.port);
    if version >= 1 {
        response.error_message = c.error_message;
    }
    response
}
