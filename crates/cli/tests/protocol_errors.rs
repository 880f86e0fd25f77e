//! Raw protocol: malformed and hostile input, and every error code a client can cause.
//! Each bad connection is closed (or answered with Kafka's error code) while the broker
//! keeps serving others and the data already written stays intact.

mod common;

use std::io::Write;
use std::net::TcpStream;

use bytes::Bytes;
use common::{Broker, RawClient};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::records::{RecordBatchDecoder, RecordSet};
use kafka_protocol::ResponseError as E;
use strom_protocol::batch::testing::batch;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn create(
    client: &mut RawClient,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> CreateTopicsResponse {
    let configs = configs
        .iter()
        .map(|(k, v)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(k.to_string()))
                .with_value(Some(StrBytes::from_string(v.to_string())))
        })
        .collect();
    let req = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(1)
        .with_configs(configs)]);
    client.send(ApiKey::CreateTopics, 7, &req);
    client.recv(7)
}

fn produce(
    client: &mut RawClient,
    topic: &str,
    partition: i32,
    records: Vec<u8>,
    acks: i16,
) -> (i16, i64) {
    let req = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(Bytes::from(records)))])]);
    client.send(ApiKey::Produce, 9, &req);
    let resp: ProduceResponse = client.recv(9);
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn fetch(
    client: &mut RawClient,
    version: i16,
    topic: &str,
    topic_id: uuid::Uuid,
    offset: i64,
    max_wait_ms: i32,
) -> FetchResponse {
    let req = FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(if version < 13 {
                name(topic)
            } else {
                TopicName::default()
            })
            .with_topic_id(if version >= 13 {
                topic_id
            } else {
                uuid::Uuid::nil()
            })
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    client.send(ApiKey::Fetch, version, &req);
    client.recv(version)
}

/// Values of the complete batches in a records field (a trailing partial batch is dropped,
/// as clients do).
fn values(records: &Bytes) -> Vec<Vec<u8>> {
    let mut complete = 0;
    while let Some(b) = strom_protocol::batch::BatchOffsets::parse(&records[complete..]) {
        if complete + b.size_bytes > records.len() {
            break;
        }
        complete += b.size_bytes;
    }
    let mut buf = records.slice(..complete);
    let sets: Vec<RecordSet> =
        RecordBatchDecoder::decode_all(&mut buf).expect("valid record batches");
    sets.iter()
        .flat_map(|s| {
            s.records
                .iter()
                .map(|r| r.value.clone().unwrap_or_default().to_vec())
        })
        .collect()
}

/// A connection that sends `bytes` must be closed by the broker.
fn assert_closed_after(addr: &str, bytes: &[u8]) {
    let mut client = RawClient::connect(addr);
    client.stream.write_all(bytes).unwrap();
    assert!(
        client.is_closed_by_broker(),
        "broker must close a connection that sent {:?}",
        &bytes[..bytes.len().min(16)]
    );
}

fn frame_with_header(api_key: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    let len = 8 + 2 + body.len();
    frame.extend_from_slice(&(len as i32).to_be_bytes());
    frame.extend_from_slice(&api_key.to_be_bytes());
    frame.extend_from_slice(&version.to_be_bytes());
    frame.extend_from_slice(&7i32.to_be_bytes());
    frame.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    frame.extend_from_slice(body);
    frame
}

#[test]
fn hostile_frames_close_only_their_connection_and_the_log_is_unharmed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["socket.request.max.bytes=1048576"]);
    let mut good = RawClient::connect(&broker.addr);
    create(&mut good, "safe", 1, &[]);
    assert_eq!(
        produce(&mut good, "safe", 0, batch(&[b"before"], 1), 1),
        (0, 0)
    );

    // Garbage (an HTTP request: its first four bytes are a ~1.2 GB length).
    assert_closed_after(&broker.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    // Negative length.
    assert_closed_after(&broker.addr, &(-5i32).to_be_bytes());
    // Over socket.request.max.bytes: refused from the prefix alone.
    assert_closed_after(&broker.addr, &(2_000_000i32).to_be_bytes());
    // Shorter than a request header.
    assert_closed_after(&broker.addr, &[0, 0, 0, 2, 0, 0]);
    // Unknown API key.
    assert_closed_after(&broker.addr, &frame_with_header(9999, 0, &[]));
    // Unsupported version of a non-ApiVersions API (Produce v2 is advertised, never served).
    assert_closed_after(&broker.addr, &frame_with_header(0, 2, &[]));
    assert_closed_after(&broker.addr, &frame_with_header(3, 99, &[]));
    // A body that does not decode: Metadata v4 cut off in the middle of its topics array.
    assert_closed_after(&broker.addr, &frame_with_header(3, 4, &[0, 0, 0, 1, 0]));
    // A hostile array count: 2^31-1 topics in a 4-byte array, which a naive decoder would
    // try to reserve hundreds of GiB for.
    assert_closed_after(
        &broker.addr,
        &frame_with_header(3, 4, &[0x7f, 0xff, 0xff, 0xff, 1]),
    );
    // A truncated frame, then hang up.
    {
        let mut s = TcpStream::connect(&broker.addr).unwrap();
        s.write_all(&100i32.to_be_bytes()).unwrap();
        s.write_all(&[0, 3, 0, 4, 0]).unwrap();
    }
    // A batch with a bad CRC is answered CORRUPT_MESSAGE; the connection stays usable.
    let mut bad_crc = batch(&[b"payload"], 1);
    let last = bad_crc.len() - 2;
    bad_crc[last] ^= 0x55;
    assert_eq!(
        produce(&mut good, "safe", 0, bad_crc, 1).0,
        E::CorruptMessage.code()
    );
    // A record count that disagrees with the offset delta is INVALID_RECORD.
    let mut wrong_count = batch(&[b"a", b"b"], 1);
    wrong_count[23..27].copy_from_slice(&5i32.to_be_bytes());
    let crc = crc32c(&wrong_count[21..]);
    wrong_count[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(
        produce(&mut good, "safe", 0, wrong_count, 1).0,
        E::InvalidRecord.code()
    );
    // Fewer records than declared: CORRUPT_MESSAGE.
    let mut short = batch(&[b"a", b"b"], 1);
    short[57..61].copy_from_slice(&3i32.to_be_bytes());
    short[23..27].copy_from_slice(&2i32.to_be_bytes());
    let crc = crc32c(&short[21..]);
    short[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(
        produce(&mut good, "safe", 0, short, 1).0,
        E::CorruptMessage.code()
    );
    // A magic v1 message set: Kafka 4 refuses old message formats.
    let mut v1 = batch(&[b"a"], 1);
    v1[16] = 1;
    assert_eq!(
        produce(&mut good, "safe", 0, v1, 1).0,
        E::UnsupportedForMessageFormat.code()
    );

    // The well-behaved connection was served throughout; the log holds exactly what was
    // accepted, and appends continue at the right offset.
    assert_eq!(
        produce(&mut good, "safe", 0, batch(&[b"after"], 2), 1),
        (0, 1)
    );
    let meta = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(name("safe")))
    ]));
    good.send(ApiKey::Metadata, 12, &meta);
    let meta: MetadataResponse = good.recv(12);
    let topic_id = meta.topics[0].topic_id;
    let resp = fetch(&mut good, 16, "safe", topic_id, 0, 0);
    let records = resp.responses[0].partitions[0].records.clone().unwrap();
    assert_eq!(
        values(&records),
        vec![b"before".to_vec(), b"after".to_vec()]
    );
    let log = broker.log();
    assert!(
        log.matches("closing connection").count() >= 10,
        "each bad connection gets a log line:\n{log}"
    );
    assert!(!log.contains("panicked"));
}

fn crc32c(bytes: &[u8]) -> u32 {
    // Castagnoli CRC, bitwise (test-only; the broker uses the hardware instruction).
    let mut crc = !0u32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn api_versions_at_an_unknown_version_answers_unsupported_version_with_the_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut client = RawClient::connect(&broker.addr);
    // ApiVersions v99: the broker answers in v0 layout (KIP-511).
    client
        .stream
        .write_all(&frame_with_header(18, 99, &[]))
        .unwrap();
    let mut frame = client.recv_frame().expect("an answer");
    let header = ResponseHeader::decode(&mut frame, 0).unwrap();
    assert_eq!(header.correlation_id, 7);
    let resp = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(resp.error_code, E::UnsupportedVersion.code());
    let produce = resp
        .api_keys
        .iter()
        .find(|k| k.api_key == 0)
        .expect("Produce listed");
    assert_eq!((produce.min_version, produce.max_version), (0, 11));
    // The connection stays open: a v3 retry works.
    client.send(
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default().with_client_software_name(StrBytes::from_static_str("t")),
    );
    let resp: ApiVersionsResponse = client.recv(3);
    assert_eq!(resp.error_code, 0);
    assert!(resp
        .api_keys
        .iter()
        .any(|k| k.api_key == 1 && k.min_version == 4 && k.max_version == 17));
}

#[test]
fn a_thousand_idle_connections_do_not_stop_real_clients() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(&broker.addr).expect("connect"))
        .collect();
    let mut client = RawClient::connect(&broker.addr);
    assert_eq!(create(&mut client, "busy", 1, &[]).topics[0].error_code, 0);
    assert_eq!(
        produce(&mut client, "busy", 0, batch(&[b"x"], 1), -1),
        (0, 0)
    );
    // Half of the idle connections send a partial frame and leave.
    for (i, mut s) in idle.into_iter().enumerate() {
        if i % 2 == 0 {
            let _ = s.write_all(&[0, 0, 0, 50, 0]);
        }
    }
    assert_eq!(
        produce(&mut client, "busy", 0, batch(&[b"y"], 1), 1),
        (0, 1)
    );
}

#[test]
fn produce_errors_use_kafkas_codes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["auto.create.topics.enable=false"]);
    let mut c = RawClient::connect(&broker.addr);
    create(
        &mut c,
        "small",
        1,
        &[("max.message.bytes", "1000"), ("min.insync.replicas", "2")],
    );
    assert_eq!(
        produce(&mut c, "nope", 0, batch(&[b"a"], 1), 1).0,
        E::UnknownTopicOrPartition.code()
    );
    assert_eq!(
        produce(&mut c, "small", 7, batch(&[b"a"], 1), 1).0,
        E::UnknownTopicOrPartition.code()
    );
    assert_eq!(
        produce(&mut c, "small", 0, batch(&[&[1u8; 2000]], 1), 1).0,
        E::MessageTooLarge.code()
    );
    assert_eq!(
        produce(&mut c, "small", 0, batch(&[b"a"], 1), 2).0,
        E::InvalidRequiredAcks.code()
    );
    // min.insync.replicas=2 with one replica: acks=all is refused, acks=1 is not.
    assert_eq!(
        produce(&mut c, "small", 0, batch(&[b"a"], 1), -1).0,
        E::NotEnoughReplicas.code()
    );
    assert_eq!(produce(&mut c, "small", 0, batch(&[b"a"], 1), 1), (0, 0));
    // acks=0 with an error: no answer, the connection is closed (as Kafka does).
    let req =
        ProduceRequest::default()
            .with_acks(0)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(name("nope"))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(Bytes::from(batch(&[b"a"], 1))))])]);
    c.send(ApiKey::Produce, 9, &req);
    assert!(c.is_closed_by_broker());
}

#[test]
fn fetch_answers_every_version_with_the_records_and_errors_clients_expect() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = RawClient::connect(&broker.addr);
    let created = create(&mut c, "f", 1, &[]);
    let topic_id = created.topics[0].topic_id;
    produce(&mut c, "f", 0, batch(&[b"one", b"two"], 10), 1);
    produce(&mut c, "f", 0, batch(&[b"three"], 20), 1);
    for version in 4..=17 {
        let resp = fetch(&mut c, version, "f", topic_id, 1, 0);
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "v{version}");
        assert_eq!(p.high_watermark, 3, "v{version}");
        // The batch holding offset 1 starts at offset 0: clients skip what they did not ask for.
        assert_eq!(
            values(p.records.as_ref().unwrap()),
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()],
            "v{version}"
        );
    }
    let resp = fetch(&mut c, 12, "f", topic_id, 99, 0);
    assert_eq!(
        resp.responses[0].partitions[0].error_code,
        E::OffsetOutOfRange.code()
    );
    let resp = fetch(&mut c, 12, "missing", topic_id, 0, 0);
    assert_eq!(
        resp.responses[0].partitions[0].error_code,
        E::UnknownTopicOrPartition.code()
    );
    let resp = fetch(&mut c, 13, "", uuid::Uuid::new_v4(), 0, 0);
    assert_eq!(
        resp.responses[0].partitions[0].error_code,
        E::UnknownTopicId.code()
    );
    // A replica id that is not a follower of the partition may not read past the high
    // watermark: NOT_LEADER_OR_FOLLOWER, as Kafka answers.
    let req = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(7))
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic_id(topic_id)
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_partition_max_bytes(1 << 20)])]);
    c.send(ApiKey::Fetch, 13, &req);
    let resp: FetchResponse = c.recv(13);
    assert_eq!(
        resp.responses[0].partitions[0].error_code,
        E::NotLeaderOrFollower.code()
    );
    // An incremental fetch session the broker never created.
    let req = FetchRequest::default()
        .with_session_id(1234)
        .with_session_epoch(1);
    c.send(ApiKey::Fetch, 12, &req);
    let resp: FetchResponse = c.recv(12);
    assert_eq!(resp.error_code, E::FetchSessionIdNotFound.code());
}

#[test]
fn a_waiting_fetch_is_woken_by_an_append() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = RawClient::connect(&broker.addr);
    let topic_id = create(&mut c, "w", 1, &[]).topics[0].topic_id;
    // max_wait of five minutes, far beyond the client's 30 s read timeout: only the append
    // can complete this fetch in time.
    let req = FetchRequest::default()
        .with_max_wait_ms(300_000)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic_id(topic_id)
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    c.send(ApiKey::Fetch, 16, &req);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut producer = RawClient::connect(&broker.addr);
    produce(&mut producer, "w", 0, batch(&[b"wake"], 1), 1);
    let resp: FetchResponse = c.recv(16);
    assert_eq!(
        values(resp.responses[0].partitions[0].records.as_ref().unwrap()),
        vec![b"wake".to_vec()]
    );
}

#[test]
fn list_offsets_by_timestamp_earliest_latest_and_max() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = RawClient::connect(&broker.addr);
    create(&mut c, "ts", 1, &[]);
    produce(&mut c, "ts", 0, batch(&[b"a", b"b", b"c"], 1000), 1); // offsets 0-2, ts 1000-1002
    produce(&mut c, "ts", 0, batch(&[b"d", b"e"], 5000), 1); // offsets 3-4, ts 5000-5001
    let list = |c: &mut RawClient, ts: i64| {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(name("ts"))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(ts)])]);
        c.send(ApiKey::ListOffsets, 9, &req);
        let resp: ListOffsetsResponse = c.recv(9);
        let p = &resp.topics[0].partitions[0];
        (p.error_code, p.offset, p.timestamp)
    };
    assert_eq!(list(&mut c, -2), (0, 0, -1));
    assert_eq!(list(&mut c, -1), (0, 5, -1));
    assert_eq!(list(&mut c, -3), (0, 4, 5001));
    assert_eq!(list(&mut c, 0), (0, 0, 1000));
    assert_eq!(list(&mut c, 1001), (0, 1, 1001));
    assert_eq!(list(&mut c, 1003), (0, 3, 5000));
    assert_eq!(list(&mut c, 5001), (0, 4, 5001));
    assert_eq!(list(&mut c, 9999), (0, -1, -1));
}

#[test]
fn create_and_delete_topics_validate_like_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = RawClient::connect(&broker.addr);
    let code =
        |r: CreateTopicsResponse| (r.topics[0].error_code, r.topics[0].error_message.clone());
    assert_eq!(
        code(create(&mut c, "ok.topic", 3, &[("retention.ms", "1000")])).0,
        0
    );
    assert_eq!(
        code(create(&mut c, "ok.topic", 3, &[])).0,
        E::TopicAlreadyExists.code()
    );
    assert_eq!(
        code(create(&mut c, "ok_topic", 3, &[])).0,
        E::InvalidTopicException.code(),
        "collides with ok.topic"
    );
    assert_eq!(
        code(create(&mut c, "bad name", 1, &[])).0,
        E::InvalidTopicException.code()
    );
    assert_eq!(
        code(create(&mut c, &"x".repeat(250), 1, &[])).0,
        E::InvalidTopicException.code()
    );
    assert_eq!(
        code(create(&mut c, "zero", 0, &[])).0,
        E::InvalidPartitions.code()
    );
    let (err, message) = code(create(&mut c, "cfg", 1, &[("retention.mss", "1")]));
    assert_eq!(err, E::InvalidConfig.code());
    assert!(message.unwrap().contains("retention.mss"));
    assert_eq!(
        code(create(&mut c, "cfg", 1, &[("cleanup.policy", "shred")])).0,
        E::InvalidConfig.code()
    );
    let rf3 = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(name("rf3"))
        .with_num_partitions(1)
        .with_replication_factor(3)]);
    c.send(ApiKey::CreateTopics, 7, &rf3);
    assert_eq!(
        c.recv::<CreateTopicsResponse>(7).topics[0].error_code,
        E::InvalidReplicationFactor.code()
    );
    // validate_only checks without creating.
    let validate = CreateTopicsRequest::default()
        .with_validate_only(true)
        .with_topics(vec![CreatableTopic::default()
            .with_name(name("dry"))
            .with_num_partitions(2)
            .with_replication_factor(1)]);
    c.send(ApiKey::CreateTopics, 7, &validate);
    let resp: CreateTopicsResponse = c.recv(7);
    assert_eq!(
        (resp.topics[0].error_code, resp.topics[0].num_partitions),
        (0, 2)
    );
    let all = MetadataRequest::default().with_topics(None);
    c.send(ApiKey::Metadata, 12, &all);
    let meta: MetadataResponse = c.recv(12);
    let names: Vec<String> = meta
        .topics
        .iter()
        .map(|t| t.name.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["ok.topic"]);
    assert_eq!(meta.topics[0].partitions.len(), 3);
    // Delete by name (v5) and by id (v6); unknown ones get Kafka's codes.
    let by_name =
        DeleteTopicsRequest::default().with_topic_names(vec![name("ok.topic"), name("ghost")]);
    c.send(ApiKey::DeleteTopics, 5, &by_name);
    let resp: DeleteTopicsResponse = c.recv(5);
    assert_eq!(resp.responses[0].error_code, 0);
    assert_eq!(
        resp.responses[1].error_code,
        E::UnknownTopicOrPartition.code()
    );
    assert!(
        !broker.data_dir.join("logs/ok.topic-0").exists(),
        "partition directories removed"
    );
    let id = create(&mut c, "by-id", 1, &[]).topics[0].topic_id;
    let by_id = DeleteTopicsRequest::default().with_topics(vec![
        kafka_protocol::messages::delete_topics_request::DeleteTopicState::default()
            .with_topic_id(id),
        kafka_protocol::messages::delete_topics_request::DeleteTopicState::default()
            .with_topic_id(uuid::Uuid::new_v4()),
    ]);
    c.send(ApiKey::DeleteTopics, 6, &by_id);
    let resp: DeleteTopicsResponse = c.recv(6);
    assert_eq!(
        (
            resp.responses[0].error_code,
            resp.responses[0].name.as_ref().map(|n| n.to_string())
        ),
        (0, Some("by-id".into()))
    );
    assert_eq!(resp.responses[1].error_code, E::UnknownTopicId.code());
}

#[test]
fn describe_configs_and_cluster_report_values_sources_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["log.segment.bytes=2097152"]);
    let mut c = RawClient::connect(&broker.addr);
    create(&mut c, "conf", 1, &[("retention.ms", "12345")]);
    let resource = |t: i8, n: &str| {
        kafka_protocol::messages::describe_configs_request::DescribeConfigsResource::default()
            .with_resource_type(t)
            .with_resource_name(StrBytes::from_string(n.to_string()))
            .with_configuration_keys(None)
    };
    let req = DescribeConfigsRequest::default()
        .with_include_synonyms(true)
        .with_include_documentation(true)
        .with_resources(vec![
            resource(2, "conf"),
            resource(4, "1"),
            resource(2, "ghost"),
        ]);
    c.send(ApiKey::DescribeConfigs, 4, &req);
    let resp: DescribeConfigsResponse = c.recv(4);
    let topic = &resp.results[0];
    let get = |name: &str| {
        topic
            .configs
            .iter()
            .find(|e| e.name.as_str() == name)
            .unwrap_or_else(|| panic!("{name} listed"))
    };
    let retention = get("retention.ms");
    assert_eq!(
        (retention.value.as_deref(), retention.config_source),
        (Some("12345"), 1)
    );
    let segment = get("segment.bytes");
    assert_eq!(
        (segment.value.as_deref(), segment.config_source),
        (Some("2097152"), 4)
    );
    assert_eq!(segment.synonyms[0].name.as_str(), "log.segment.bytes");
    let cleanup = get("cleanup.policy");
    assert_eq!(
        (
            cleanup.value.as_deref(),
            cleanup.config_source,
            cleanup.config_type
        ),
        (Some("delete"), 5, 7)
    );
    assert!(
        topic.configs.len() >= 30,
        "every Kafka topic config is described"
    );
    let broker_configs = &resp.results[1];
    assert_eq!(broker_configs.error_code, 0);
    assert!(broker_configs
        .configs
        .iter()
        .any(|e| e.name.as_str() == "log.segment.bytes"
            && e.value.as_deref() == Some("2097152")
            && e.config_source == 4));
    assert_eq!(
        resp.results[2].error_code,
        E::UnknownTopicOrPartition.code()
    );

    c.send(
        ApiKey::DescribeCluster,
        1,
        &DescribeClusterRequest::default().with_endpoint_type(1),
    );
    let cluster: DescribeClusterResponse = c.recv(1);
    assert_eq!(cluster.error_code, 0);
    assert_eq!(cluster.brokers.len(), 1);
    assert_eq!(
        format!(
            "{}:{}",
            cluster.brokers[0].host.as_str(),
            cluster.brokers[0].port
        ),
        broker.addr
    );
    assert_eq!(cluster.cluster_id.len(), 22);
    let meta_props = std::fs::read_to_string(broker.data_dir.join("logs/meta.properties")).unwrap();
    assert!(meta_props.contains(&format!("cluster.id={}", cluster.cluster_id.as_str())));
}

#[test]
fn metadata_auto_creates_topics_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["num.partitions=4"]);
    let mut c = RawClient::connect(&broker.addr);
    let ask = |c: &mut RawClient, topic: &str, allow: bool| {
        let req = MetadataRequest::default()
            .with_allow_auto_topic_creation(allow)
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(name(topic)))
            ]));
        c.send(ApiKey::Metadata, 12, &req);
        let resp: MetadataResponse = c.recv(12);
        (resp.topics[0].error_code, resp.topics[0].partitions.len())
    };
    assert_eq!(
        ask(&mut c, "auto", false),
        (E::UnknownTopicOrPartition.code(), 0)
    );
    assert_eq!(ask(&mut c, "auto", true), (0, 4));
    assert_eq!(
        ask(&mut c, "bad/name", true).0,
        E::InvalidTopicException.code()
    );
    // Every version from 0 to 12 decodes and lists the topic.
    for version in 0..=12 {
        let req =
            MetadataRequest::default().with_topics(if version == 0 { Some(vec![]) } else { None });
        c.send(ApiKey::Metadata, version, &req);
        let resp: MetadataResponse = c.recv(version);
        assert_eq!(resp.topics.len(), 1, "v{version}");
        assert_eq!(resp.brokers.len(), 1, "v{version}");
    }
}

#[test]
fn requests_are_served_within_the_request_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    // A budget smaller than one request: such a request takes the whole budget and is served.
    let broker = Broker::start(dir.path(), &["queued.max.request.bytes=1000"]);
    let mut clients: Vec<RawClient> = (0..4).map(|_| RawClient::connect(&broker.addr)).collect();
    create(&mut clients[0], "budget", 1, &[]);
    for round in 0..5 {
        for c in clients.iter_mut() {
            let (code, _) = produce(c, "budget", 0, batch(&[&[round as u8; 3000]], 1), 1);
            assert_eq!(code, 0);
        }
    }
    let meta = MetadataRequest::default().with_topics(None);
    clients[3].send(ApiKey::Metadata, 12, &meta);
    let topic_id = clients[3].recv::<MetadataResponse>(12).topics[0].topic_id;
    let resp = fetch(&mut clients[1], 16, "budget", topic_id, 19, 0);
    assert_eq!(resp.responses[0].partitions[0].high_watermark, 20);
}

#[test]
fn fetch_respects_response_and_partition_max_bytes_but_returns_one_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = RawClient::connect(&broker.addr);
    let topic_id = create(&mut c, "mb", 2, &[]).topics[0].topic_id;
    for partition in 0..2 {
        for i in 0..3u8 {
            produce(&mut c, "mb", partition, batch(&[&[i; 1000]], 1), 1);
        }
    }
    let partition = |p: i32| {
        FetchPartition::default()
            .with_partition(p)
            .with_fetch_offset(0)
            .with_partition_max_bytes(1 << 20)
    };
    let request = |max_bytes: i32, partition_max_bytes: i32| {
        FetchRequest::default()
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic_id(topic_id)
                .with_partitions(vec![
                    partition(0).with_partition_max_bytes(partition_max_bytes),
                    partition(1).with_partition_max_bytes(partition_max_bytes),
                ])])
    };
    let sizes = |resp: &FetchResponse| -> Vec<usize> {
        resp.responses[0]
            .partitions
            .iter()
            .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
            .collect()
    };
    // Everything fits.
    c.send(ApiKey::Fetch, 16, &request(1 << 20, 1 << 20));
    let all: FetchResponse = c.recv(16);
    let batch_bytes = sizes(&all)[0] / 3;
    assert_eq!(sizes(&all), vec![3 * batch_bytes, 3 * batch_bytes]);
    // A response limit of 10 bytes still returns the first whole batch (KIP-74), nothing more.
    c.send(ApiKey::Fetch, 16, &request(10, 1 << 20));
    let first_only: FetchResponse = c.recv(16);
    assert_eq!(sizes(&first_only), vec![batch_bytes, 0]);
    assert_eq!(
        values(
            first_only.responses[0].partitions[0]
                .records
                .as_ref()
                .unwrap()
        )
        .len(),
        1
    );
    // A partition limit of 1.5 batches: each partition gets at most that many bytes (the
    // second batch partially; clients drop a trailing partial batch).
    let limit = batch_bytes * 3 / 2;
    c.send(ApiKey::Fetch, 16, &request(1 << 20, limit as i32));
    let limited: FetchResponse = c.recv(16);
    assert_eq!(sizes(&limited), vec![limit, limit]);
    assert_eq!(
        values(limited.responses[0].partitions[1].records.as_ref().unwrap()).len(),
        1
    );
}

#[test]
fn replication_admin_requests_get_kafkas_error_codes() {
    use kafka_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = RawClient::connect(&broker.addr);
    create(&mut c, "r", 1, &[]);

    let elect = |c: &mut RawClient, election_type: i8, topic: &str| -> ElectLeadersResponse {
        let req = ElectLeadersRequest::default()
            .with_election_type(election_type)
            .with_timeout_ms(5_000)
            .with_topic_partitions(Some(vec![TopicPartitions::default()
                .with_topic(name(topic))
                .with_partitions(vec![0])]));
        c.send(ApiKey::ElectLeaders, 2, &req);
        c.recv(2)
    };
    assert_eq!(elect(&mut c, 2, "r").error_code, E::InvalidRequest.code());
    let unknown = elect(&mut c, 0, "nope");
    assert_eq!(
        unknown.replica_election_results[0].partition_result[0].error_code,
        E::UnknownTopicOrPartition.code()
    );
    let not_needed = elect(&mut c, 0, "r");
    assert_eq!(
        not_needed.replica_election_results[0].partition_result[0].error_code,
        E::ElectionNotNeeded.code()
    );

    let reassign = |c: &mut RawClient, replicas: Vec<i32>, allow_rf_change: bool| -> i16 {
        let req = AlterPartitionReassignmentsRequest::default()
            .with_timeout_ms(5_000)
            .with_allow_replication_factor_change(allow_rf_change)
            .with_topics(vec![ReassignableTopic::default()
                .with_name(name("r"))
                .with_partitions(vec![ReassignablePartition::default()
                    .with_partition_index(0)
                    .with_replicas(Some(
                        replicas.into_iter().map(BrokerId).collect(),
                    ))])]);
        c.send(ApiKey::AlterPartitionReassignments, 1, &req);
        let resp: AlterPartitionReassignmentsResponse = c.recv(1);
        resp.responses[0].partitions[0].error_code
    };
    assert_eq!(
        reassign(&mut c, vec![1, 1], true),
        E::InvalidReplicaAssignment.code()
    );
    assert_eq!(
        reassign(&mut c, vec![9], true),
        E::InvalidReplicaAssignment.code()
    );
    assert_eq!(
        reassign(&mut c, vec![], true),
        E::InvalidReplicaAssignment.code()
    );
    assert_eq!(
        reassign(&mut c, vec![1, 9], false),
        E::InvalidReplicationFactor.code(),
        "the replication factor may not change without allow_replication_factor_change"
    );

    let req = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(name("nope"))
            .with_partitions(vec![OffsetForLeaderPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(-1)
                .with_leader_epoch(0)])]);
    c.send(ApiKey::OffsetForLeaderEpoch, 4, &req);
    let resp: OffsetForLeaderEpochResponse = c.recv(4);
    assert_eq!(
        resp.topics[0].partitions[0].error_code,
        E::UnknownTopicOrPartition.code()
    );
}

#[test]
fn delete_records_errors_use_kafkas_codes() {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = RawClient::connect(&broker.addr);
    create(&mut c, "d", 1, &[]);
    create(&mut c, "compacted", 1, &[("cleanup.policy", "compact")]);
    for _ in 0..3 {
        assert_eq!(produce(&mut c, "d", 0, batch(&[b"a", b"b"], 0), -1).0, 0);
    }
    let delete = |c: &mut RawClient, topic: &str, partition: i32, offset: i64| -> (i16, i64) {
        let req = DeleteRecordsRequest::default()
            .with_timeout_ms(5_000)
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![DeleteRecordsPartition::default()
                    .with_partition_index(partition)
                    .with_offset(offset)])]);
        c.send(ApiKey::DeleteRecords, 2, &req);
        let resp: DeleteRecordsResponse = c.recv(2);
        let p = &resp.topics[0].partitions[0];
        (p.error_code, p.low_watermark)
    };
    assert_eq!(
        delete(&mut c, "d", 0, 7),
        (E::OffsetOutOfRange.code(), -1),
        "past the high watermark"
    );
    assert_eq!(delete(&mut c, "d", 0, -5).0, E::OffsetOutOfRange.code());
    assert_eq!(
        delete(&mut c, "nope", 0, 1).0,
        E::UnknownTopicOrPartition.code()
    );
    assert_eq!(
        delete(&mut c, "d", 9, 1).0,
        E::UnknownTopicOrPartition.code()
    );
    assert_eq!(
        delete(&mut c, "compacted", 0, 0).0,
        E::PolicyViolation.code()
    );
    assert_eq!(
        delete(&mut c, "__consumer_offsets", 0, 0).0,
        E::InvalidTopicException.code()
    );
    // -1 stands for the high watermark; moving back is a no-op answered with the start.
    assert_eq!(delete(&mut c, "d", 0, 3), (0, 3));
    assert_eq!(delete(&mut c, "d", 0, 1), (0, 3));
    assert_eq!(delete(&mut c, "d", 0, -1), (0, 6));
    // The partition still takes records, after the deleted ones.
    assert_eq!(produce(&mut c, "d", 0, batch(&[b"c"], 0), -1), (0, 6));
}

#[test]
fn incremental_alter_configs_refuses_malformed_operations_with_kafkas_codes() {
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = RawClient::connect(&broker.addr);
    create(&mut c, "ops", 1, &[]);
    let config = |key: &str, op: i8, value: Option<&str>| {
        AlterableConfig::default()
            .with_name(StrBytes::from_string(key.to_string()))
            .with_config_operation(op)
            .with_value(value.map(|v| StrBytes::from_string(v.to_string())))
    };
    let resource = |resource_type: i8, name: &str, configs: Vec<AlterableConfig>| {
        AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(StrBytes::from_string(name.to_string()))
            .with_configs(configs)
    };
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        resource(
            2,
            "ops",
            vec![
                config("retention.ms", 0, Some("1")),
                config("retention.ms", 1, None),
            ],
        ),
        resource(4, "", vec![config("log.retention.ms", 0, None)]),
        resource(2, "ops-", vec![config("retention.ms", 7, Some("1"))]),
        resource(8, "1", vec![config("kafka.server", 0, Some("DEBUG"))]),
        resource(4, "1", vec![config("log.retention.ms", 2, Some("5"))]),
        resource(2, "", vec![config("retention.ms", 0, Some("1"))]),
    ]);
    c.send(ApiKey::IncrementalAlterConfigs, 1, &req);
    let resp: IncrementalAlterConfigsResponse = c.recv(1);
    let codes: Vec<i16> = resp.responses.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        vec![
            E::InvalidRequest.code(),
            E::InvalidRequest.code(),
            E::InvalidRequest.code(),
            E::InvalidRequest.code(),
            E::InvalidConfig.code(),
            E::InvalidRequest.code(),
        ],
        "{resp:?}"
    );
    let message = |i: usize| {
        resp.responses[i]
            .error_message
            .as_deref()
            .unwrap_or_default()
    };
    assert_eq!(message(0), "Error due to duplicate config keys");
    assert_eq!(
        message(1),
        "Null value not supported for : log.retention.ms"
    );
    assert_eq!(message(2), "Unknown operations type 7");
    assert_eq!(
        message(4),
        "Config value append is not allowed for config key: log.retention.ms"
    );
    assert_eq!(message(5), "Default topic resources are not allowed.");
}
