//! Produce: validate each partition's batches, append them to the leader's log, answer with
//! the assigned base offset. With one replica the ISR is this broker alone, so the high
//! watermark moves with the append and acks=1 and acks=all complete at once (after the
//! `min.insync.replicas` check). A partition led by another broker gets
//! NOT_LEADER_OR_FOLLOWER with, from v10 on, the current leader and its endpoint (KIP-951)
//! so the client can go there without a metadata round trip.

use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use strom_protocol::batch;
use tracing::debug;

use super::{Ctx, Outcome};
use crate::topics::{now_ms, Topic};
use crate::Broker;

pub fn handle(broker: &Broker, req: ProduceRequest, ctx: &Ctx) -> Outcome {
    let acks = req.acks;
    let mut any_error = false;
    let mut redirected_to = std::collections::BTreeSet::new();
    let responses: Vec<TopicProduceResponse> = req
        .topic_data
        .into_iter()
        .map(|topic_data| {
            let topic = broker.topics.get(&topic_data.name);
            let partition_responses = topic_data
                .partition_data
                .into_iter()
                .map(|data| {
                    let response = match (&topic, acks) {
                        (_, a) if !matches!(a, -1..=1) => {
                            error(data.index, ResponseError::InvalidRequiredAcks.code(), None)
                        }
                        (None, _) => error(
                            data.index,
                            ResponseError::UnknownTopicOrPartition.code(),
                            None,
                        ),
                        (Some(topic), _) => {
                            let index = data.index;
                            let mut response = produce_partition(topic, data, acks);
                            if response.error_code == ResponseError::NotLeaderOrFollower.code()
                                && ctx.version >= 10
                            {
                                let (leader, leader_epoch) = topic.leader_of(index);
                                if leader >= 0 {
                                    redirected_to.insert(leader);
                                    response.current_leader = LeaderIdAndEpoch::default()
                                        .with_leader_id(BrokerId(leader))
                                        .with_leader_epoch(leader_epoch);
                                }
                            }
                            response
                        }
                    };
                    any_error |= response.error_code != 0;
                    response
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(topic_data.name)
                .with_partition_responses(partition_responses)
        })
        .collect();
    if acks == 0 {
        // The client reads no response; Kafka closes the connection so it notices the error.
        return if any_error {
            Outcome::Close("acks=0 produce failed".into())
        } else {
            Outcome::NoResponse
        };
    }
    let mut response = ProduceResponse::default().with_responses(responses);
    if !redirected_to.is_empty() {
        let image = broker.topics.image();
        response.node_endpoints = redirected_to
            .iter()
            .filter_map(|id| image.image.brokers.get(id))
            .map(|b| {
                NodeEndpoint::default()
                    .with_node_id(BrokerId(b.id))
                    .with_host(StrBytes::from_string(b.host.clone()))
                    .with_port(i32::from(b.port))
                    .with_rack(b.rack.clone().map(StrBytes::from_string))
            })
            .collect();
    }
    ctx.respond(&response)
}

fn error(index: i32, code: i16, message: Option<String>) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code)
        .with_base_offset(-1)
        .with_error_message(message.map(StrBytes::from_string))
}

fn produce_partition(
    topic: &Topic,
    data: PartitionProduceData,
    acks: i16,
) -> PartitionProduceResponse {
    let partition = match topic.led(data.index) {
        Ok(partition) => partition,
        Err(code) => return error(data.index, code, None),
    };
    let Some(records) = data.records else {
        return error(
            data.index,
            ResponseError::InvalidRecord.code(),
            Some("records are null".into()),
        );
    };
    let max_batch_bytes = usize::try_from(topic.settings.max_message_bytes).unwrap_or(0);
    let batches = match batch::validate_produce(&records, max_batch_bytes) {
        Ok(batches) => batches,
        Err(e) => {
            debug!(topic = %topic.name, partition = data.index, error = %e, "rejected produce");
            return error(data.index, e.error_code(), Some(e.to_string()));
        }
    };
    // The ISR is this broker alone: acks=all needs min.insync.replicas <= 1.
    let isr_size = 1;
    if acks == -1 && topic.settings.min_insync_replicas > isr_size {
        return error(data.index, ResponseError::NotEnoughReplicas.code(), None);
    }
    let log = &partition.log;
    match log.append_as_leader(&records, &batches, partition.leader_epoch(), now_ms()) {
        Ok(info) => {
            log.update_high_watermark(info.last_offset + 1);
            partition.appended.notify_waiters();
            PartitionProduceResponse::default()
                .with_index(data.index)
                .with_base_offset(info.first_offset)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(info.log_start_offset)
        }
        Err(e) => {
            tracing::error!(topic = %topic.name, partition = data.index, error = %e, "append failed");
            error(data.index, e.error_code(), Some(e.to_string()))
        }
    }
}
