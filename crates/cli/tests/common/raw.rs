//! Requests built by hand for the raw protocol client: record batches of the kinds real
//! producers would never send (bad sequences and epochs, stray transactional batches),
//! ListOffsets at an isolation level, and dynamic broker configs.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, ListOffsetsRequest,
    ListOffsetsResponse, ProduceRequest, ProduceResponse, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::RawClient;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// One record batch of an idempotent (or, with `transactional`, a transactional) producer:
/// `values` from `base_sequence` on.
pub fn producer_batch(
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    values: &[&str],
    transactional: bool,
) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional,
            control: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: base_sequence + i as i32,
            timestamp: now_ms(),
            key: None,
            value: Some(Bytes::from(v.to_string())),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode batch");
    buf.freeze()
}

/// Produces one batch to partition 0 (v11, acks=-1); the partition's error code, message
/// and base offset.
pub fn produce_batch(
    client: &mut RawClient,
    topic: &str,
    batch: Bytes,
) -> (i16, Option<String>, i64) {
    produce_to(client, None, topic, 0, batch)
}

/// Produces one batch (v11, acks=-1) to `partition`, for `transactional_id` if given; the
/// partition's error code, message and base offset.
pub fn produce_to(
    client: &mut RawClient,
    transactional_id: Option<&str>,
    topic: &str,
    partition: i32,
    batch: Bytes,
) -> (i16, Option<String>, i64) {
    produce_each(client, transactional_id, topic, vec![(partition, batch)]).remove(0)
}

/// Produces one request (v11, acks=-1) with a batch for each partition, for
/// `transactional_id` if given; each partition's error code, message and base offset, in
/// order.
pub fn produce_each(
    client: &mut RawClient,
    transactional_id: Option<&str>,
    topic: &str,
    batches: Vec<(i32, Bytes)>,
) -> Vec<(i16, Option<String>, i64)> {
    let request = ProduceRequest::default()
        .with_transactional_id(
            transactional_id.map(|id| TransactionalId(StrBytes::from_string(id.to_string()))),
        )
        .with_acks(-1)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(
                batches
                    .into_iter()
                    .map(|(partition, batch)| {
                        PartitionProduceData::default()
                            .with_index(partition)
                            .with_records(Some(batch))
                    })
                    .collect(),
            )]);
    client.send(ApiKey::Produce, 11, &request);
    let response: ProduceResponse = client.recv(11);
    response.responses[0]
        .partition_responses
        .iter()
        .map(|p| {
            (
                p.error_code,
                p.error_message.as_ref().map(|m| m.to_string()),
                p.base_offset,
            )
        })
        .collect()
}

pub const READ_UNCOMMITTED: i8 = 0;
pub const READ_COMMITTED: i8 = 1;

/// ListOffsets v5 latest of `topic`-`partition` at `isolation_level`: the high watermark
/// (read_uncommitted) or the last stable offset (read_committed).
pub fn latest_offset(
    client: &mut RawClient,
    topic: &str,
    partition: i32,
    isolation_level: i8,
) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_isolation_level(isolation_level)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(-1)])]);
    client.send(ApiKey::ListOffsets, 5, &request);
    let response: ListOffsetsResponse = client.recv(5);
    let p = &response.topics[0].partitions[0];
    assert_eq!(p.error_code, 0, "{p:?}");
    p.offset
}

/// Sets the dynamic broker config `name` for the whole cluster (IncrementalAlterConfigs,
/// the empty broker name).
pub fn set_cluster_broker_config(client: &mut RawClient, name: &str, value: &str) {
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(4)
            .with_resource_name(StrBytes::from_static_str(""))
            .with_configs(vec![AlterableConfig::default()
                .with_name(StrBytes::from_string(name.to_string()))
                .with_config_operation(0)
                .with_value(Some(StrBytes::from_string(value.to_string())))]),
    ]);
    client.send(ApiKey::IncrementalAlterConfigs, 1, &request);
    let response: IncrementalAlterConfigsResponse = client.recv(1);
    assert_eq!(response.responses[0].error_code, 0, "{response:?}");
}
