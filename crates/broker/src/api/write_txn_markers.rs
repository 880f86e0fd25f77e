//! WriteTxnMarkers, the leader side (Kafka's `handleWriteTxnMarkersRequest`): for each
//! marker, one control batch (commit or abort, with the coordinator epoch) in each of its
//! partitions this broker leads, and the group coordinator told about `__consumer_offsets`
//! partitions; an error code per partition.
//!
//! Boundary: the transaction marker sender ([`crate::txn_markers`]) calls [`handle`]
//! directly, without the network, for the partitions this broker leads itself; requests
//! from other brokers' coordinators are served by the same function.
//!
//! Placeholder body until the leader side lands with the storage's `append_control`: it
//! checks what needs no storage (UNKNOWN_TOPIC_OR_PARTITION, NOT_LEADER_OR_FOLLOWER) and
//! answers UNSUPPORTED_FOR_MESSAGE_FORMAT for partitions it leads, which the coordinator
//! takes (as Kafka does) as a partition that needs no marker. No marker is written.

use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use kafka_protocol::ResponseError as E;

use crate::Broker;

pub async fn handle(broker: &Broker, request: WriteTxnMarkersRequest) -> WriteTxnMarkersResponse {
    let markers = request
        .markers
        .iter()
        .map(|marker| {
            let topics = marker
                .topics
                .iter()
                .map(|t| {
                    let topic = broker.topics.get(t.name.as_str());
                    let partitions = t
                        .partition_indexes
                        .iter()
                        .map(|p| {
                            let code = match topic.as_ref().map(|topic| topic.led(*p)) {
                                None => E::UnknownTopicOrPartition.code(),
                                Some(Err(code)) => code,
                                Some(Ok(_)) => E::UnsupportedForMessageFormat.code(),
                            };
                            WritableTxnMarkerPartitionResult::default()
                                .with_partition_index(*p)
                                .with_error_code(code)
                        })
                        .collect();
                    WritableTxnMarkerTopicResult::default()
                        .with_name(t.name.clone())
                        .with_partitions(partitions)
                })
                .collect();
            WritableTxnMarkerResult::default()
                .with_producer_id(marker.producer_id)
                .with_topics(topics)
        })
        .collect();
    WriteTxnMarkersResponse::default().with_markers(markers)
}
