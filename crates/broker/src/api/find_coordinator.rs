//! FindCoordinator (v0–v6, batched keys from v4): a group is coordinated by the leader of
//! its `__consumer_offsets` partition, a transactional id (key type 1) by the leader of its
//! `__transaction_state` partition (Kafka's hash of the key in both). The first request of a
//! key type creates that topic through the controller, as Kafka does; until it has a leader
//! the answer is COORDINATOR_NOT_AVAILABLE, which clients retry. (librdkafka also takes the
//! presence of this API as its sign that the broker supports LZ4.)

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::consumer_offsets::{self, TOPIC};
use crate::transaction_state;
use crate::Broker;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub async fn handle(
    broker: &Broker,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    match req.key_type {
        KEY_TYPE_GROUP if broker.topics.get(TOPIC).is_none() => create_offsets_topic(broker).await,
        KEY_TYPE_TRANSACTION
            if version >= 1 && broker.topics.get(transaction_state::TOPIC).is_none() =>
        {
            transaction_state::create_topic(broker).await
        }
        _ => {}
    }
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
        coordinator_for(broker, req.key_type, key)
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

/// The leader of the key's partition of `__consumer_offsets` (groups) or
/// `__transaction_state` (transactional ids), if it is live.
fn coordinator_for(broker: &Broker, key_type: i8, key: StrBytes) -> Coordinator {
    let unavailable = |key: StrBytes| {
        Coordinator::default()
            .with_key(key)
            .with_node_id(BrokerId(-1))
            .with_port(-1)
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            .with_error_message(Some(StrBytes::from_static_str(
                "The coordinator is not available.",
            )))
    };
    let (topic, partition) = if key_type == KEY_TYPE_TRANSACTION {
        (
            broker.topics.get(transaction_state::TOPIC),
            broker.txns.partition_for(key.as_str()),
        )
    } else {
        (
            broker.topics.get(TOPIC),
            broker.groups.partition_for(key.as_str()),
        )
    };
    let Some(topic) = topic else {
        return unavailable(key);
    };
    let (leader, _) = topic.leader_of(partition);
    let image = broker.topics.image();
    match image.image.brokers.get(&leader).filter(|b| !b.fenced) {
        Some(b) => Coordinator::default()
            .with_key(key)
            .with_node_id(BrokerId(b.id))
            .with_host(StrBytes::from_string(b.host.clone()))
            .with_port(i32::from(b.port)),
        None => unavailable(key),
    }
}

/// Creates `__consumer_offsets` with `offsets.topic.num.partitions` partitions (one that
/// exists already is fine) and waits until this broker has applied it.
async fn create_offsets_topic(broker: &Broker) {
    crate::internal_topic::create(
        broker,
        TOPIC,
        broker.config.offsets_topic_num_partitions,
        broker.config.offsets_topic_replication_factor,
        |_| consumer_offsets::topic_configs(),
    )
    .await
}
