//! Log compaction with a real client (librdkafka): a compacted topic keeps the latest value
//! of every key at its original offset, tombstones go after `delete.retention.ms`, a kill -9
//! in the middle of cleaning loses nothing, aborted transactions and then their markers are
//! cleaned away, keyless records are refused, and
//! `__consumer_offsets` is compacted while committed offsets survive restarts.
//!
//! Every wait is a bounded poll for a condition; no assertion depends on timing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::clients::{admin, java_step};
use common::cluster::Cluster;
use common::{Broker, RawClient};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use strom_protocol::batch::Compression;
use strom_protocol::records::testing::batch;
use strom_protocol::records::RecordReader;

/// Key and value (None: a tombstone).
type Entry = (Vec<u8>, Option<Vec<u8>>);

/// How long a test polls for a condition before it fails.
const WAIT_MAX: Duration = Duration::from_secs(120);
/// Records produced per client call, below librdkafka's queue limit.
const PRODUCE_CHUNK_RECORDS: usize = 20_000;

/// Broker settings that make cleaning quick to observe: small segments, a cleaner that
/// looks again after 100 ms.
const FAST_CLEANER: [&str; 2] = ["log.segment.bytes=16384", "log.cleaner.backoff.ms=100"];

fn create(addr: &str, topic: &str, configs: &[(&str, &str)]) {
    common::clients::create_topic_with(addr, topic, 1, 1, configs);
}

fn compacted(addr: &str, topic: &str, extra: &[(&str, &str)]) {
    let mut configs = vec![
        ("cleanup.policy", "compact"),
        ("min.cleanable.dirty.ratio", "0.01"),
    ];
    configs.extend_from_slice(extra);
    create(addr, topic, &configs);
}

/// Produces `records` to partition 0 in order with `compression`; returns their offsets.
fn produce_with(addr: &str, topic: &str, records: &[Entry], compression: &str) -> Vec<i64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", compression)
        // Small batches, so that segments roll often and the active one (never cleaned)
        // holds few records.
        .set("batch.size", "4096")
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .expect("producer");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut offsets = Vec::with_capacity(records.len());
    for chunk in records.chunks(PRODUCE_CHUNK_RECORDS) {
        rt.block_on(async {
            let mut pending = Vec::with_capacity(chunk.len());
            for (key, value) in chunk {
                let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(topic)
                    .key(key)
                    .partition(0);
                if let Some(value) = value {
                    record = record.payload(value);
                }
                pending.push(producer.send_result(record).expect("enqueue"));
            }
            for future in pending {
                let delivered = future.await.expect("delivery").expect("acknowledged");
                offsets.push(delivered.offset);
            }
        });
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    offsets
}

/// Produces `records` to partition 0 in order (LZ4 batches); returns their offsets.
fn produce(addr: &str, topic: &str, records: &[Entry]) -> Vec<i64> {
    produce_with(addr, topic, records, "lz4")
}

/// Produces `records` and adds them to `model` (offset → entry).
fn produce_into(addr: &str, topic: &str, records: Vec<Entry>, model: &mut BTreeMap<i64, Entry>) {
    let offsets = produce(addr, topic, &records);
    model.extend(offsets.into_iter().zip(records));
}

/// Everything a consumer reads from the start of partition 0 up to the high watermark.
fn read_all(addr: &str, topic: &str) -> BTreeMap<i64, Entry> {
    read_all_at(addr, topic, "read_committed")
}

/// [`read_all`] at `isolation` (`isolation.level`); the log must end with a record.
fn read_all_at(addr: &str, topic: &str, isolation: &str) -> BTreeMap<i64, Entry> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", "compaction-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(30))
        .expect("watermarks");
    let mut seen = BTreeMap::new();
    if high == 0 {
        return seen;
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + WAIT_MAX;
    let mut last = -1;
    while last < high - 1 {
        assert!(Instant::now() < deadline, "read up to {last} of {high}");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let key = m
                    .key()
                    .expect("a compacted topic's records have keys")
                    .to_vec();
                assert!(
                    m.offset() > last,
                    "offsets increase: {} after {last}",
                    m.offset()
                );
                last = m.offset();
                seen.insert(last, (key, m.payload().map(<[u8]>::to_vec)));
            }
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    seen
}

/// The latest entry (offset, value) of every key.
fn latest(records: &BTreeMap<i64, Entry>) -> BTreeMap<Vec<u8>, (i64, Option<Vec<u8>>)> {
    records
        .iter()
        .map(|(o, (k, v))| (k.clone(), (*o, v.clone())))
        .collect()
}

/// What a consumer of a compacted log must see: every record at the offset it was written
/// at (nothing invented or moved), and for every key its latest record (a tombstone may be
/// gone, with the whole key).
fn check_view(seen: &BTreeMap<i64, Entry>, model: &BTreeMap<i64, Entry>) {
    for (offset, entry) in seen {
        assert_eq!(model.get(offset), Some(entry), "record at offset {offset}");
    }
    let seen_latest = latest(seen);
    for (key, (offset, value)) in latest(model) {
        match (&value, seen_latest.get(&key)) {
            (None, None) => {}
            (_, Some(found)) => assert_eq!(found, &(offset, value), "latest of {key:?}"),
            (Some(_), None) => panic!("the latest value of {key:?} (offset {offset}) is gone"),
        }
    }
}

fn updates(keys: usize, rounds: usize, tag: &str) -> Vec<Entry> {
    (0..rounds)
        .flat_map(|round| {
            (0..keys).map(move |k| {
                let value = format!("{tag}-{k}-{round}-{}", "v".repeat(60));
                (format!("key-{k}").into_bytes(), Some(value.into_bytes()))
            })
        })
        .collect()
}

/// Polls `condition` until it holds; fails after [`WAIT_MAX`].
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn partition_dir(broker: &Broker, topic: &str) -> PathBuf {
    broker.data_dir.join("logs").join(format!("{topic}-0"))
}

fn files_ending(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_compacted_topic_keeps_the_latest_value_of_each_key_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &FAST_CLEANER);
    compacted(&broker.addr, "latest", &[]);
    let mut model = BTreeMap::new();
    // Uncompressed, so the active segment (never cleaned) holds few of the records.
    let records = updates(50, 100, "a");
    let offsets = produce_with(&broker.addr, "latest", &records, "none");
    model.extend(offsets.into_iter().zip(records));
    let mut seen = BTreeMap::new();
    wait_for("the cleaner to remove most overwritten values", || {
        seen = read_all(&broker.addr, "latest");
        seen.len() < model.len() / 4
    });
    check_view(&seen, &model);
    // A read that began before a cleaning may still return older records; one that begins
    // after it cannot.
    let seen = read_all(&broker.addr, "latest");
    check_view(&seen, &model);
    assert!(
        !seen.contains_key(&0),
        "the first update of key 0 was overwritten and is gone"
    );
    let per_key: BTreeMap<&Vec<u8>, Vec<&Option<Vec<u8>>>> =
        seen.values().fold(BTreeMap::new(), |mut m, (k, v)| {
            m.entry(k).or_default().push(v);
            m
        });
    assert_eq!(per_key.len(), 50, "every key is still there");
    // Writes go on after cleaning, at the next offset.
    let end = *model.keys().last().unwrap();
    let offsets = produce(&broker.addr, "latest", &updates(1, 1, "b"));
    assert_eq!(offsets, vec![end + 1]);
    assert!(broker.log().contains("cleaned log"));
    // The clean point is checkpointed in the log dir, in Kafka's format.
    let checkpoint = std::fs::read_to_string(
        broker
            .data_dir
            .join("logs")
            .join("cleaner-offset-checkpoint"),
    )
    .expect("cleaner-offset-checkpoint");
    let clean_point: i64 = checkpoint
        .lines()
        .find_map(|l| l.strip_prefix("latest 0 "))
        .expect("an entry for the partition")
        .parse()
        .expect("an offset");
    assert!(clean_point > 0 && clean_point <= end + 1, "{checkpoint}");
}

#[test]
fn tombstones_vanish_after_delete_retention_ms() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &FAST_CLEANER);
    compacted(&broker.addr, "deletes", &[("delete.retention.ms", "100")]);
    let mut model = BTreeMap::new();
    produce_into(&broker.addr, "deletes", updates(20, 10, "a"), &mut model);
    let deleted: Vec<Vec<u8>> = (0..10).map(|k| format!("key-{k}").into_bytes()).collect();
    let tombstones = deleted.iter().map(|k| (k.clone(), None)).collect();
    produce_into(&broker.addr, "deletes", tombstones, &mut model);
    let seen = read_all(&broker.addr, "deletes");
    assert!(
        deleted
            .iter()
            .all(|k| seen.values().any(|(key, v)| key == k && v.is_none())),
        "the tombstones are there at first"
    );
    // Updates of the other keys keep the log dirty, so the cleaner passes again after the
    // tombstones' delete horizon.
    let mut round = 0;
    let mut seen = BTreeMap::new();
    wait_for("the tombstones to vanish", || {
        round += 1;
        let others: Vec<Entry> = (0..10)
            .flat_map(|_| 10..20)
            .map(|k| {
                let value = format!("filler-{k}-{round}-{}", "f".repeat(100));
                (format!("key-{k}").into_bytes(), Some(value.into_bytes()))
            })
            .collect();
        produce_into(&broker.addr, "deletes", others, &mut model);
        seen = read_all(&broker.addr, "deletes");
        !seen.values().any(|(k, _)| deleted.contains(k))
    });
    check_view(&seen, &model);
    assert_eq!(
        latest(&seen).len(),
        10,
        "the other keys keep their latest values"
    );
}

/// The control batches (transaction markers) in the segment files of `dir`.
fn control_batches(dir: &Path) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if !entry.file_name().to_string_lossy().ends_with(".log") {
            continue;
        }
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        let mut at = 0;
        while let Some(b) = strom_protocol::batch::BatchOffsets::parse(&bytes[at..]) {
            let Some(batch) = bytes.get(at..at + b.size_bytes) else {
                break;
            };
            if strom_protocol::records::BatchHeader::parse(batch).is_ok_and(|h| h.is_control()) {
                count += 1;
            }
            at += b.size_bytes;
        }
    }
    count
}

#[test]
fn aborted_transactions_and_then_their_markers_are_cleaned_away() {
    use rdkafka::producer::BaseRecord;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &FAST_CLEANER);
    let topic = "transactional";
    compacted(&broker.addr, topic, &[("delete.retention.ms", "100")]);
    // Six transactions over the same ten keys: even ones committed, odd ones aborted.
    let producer = common::clients::transactional_producer(&broker.addr, "compacted-writer");
    let value = |round: usize, k: usize| {
        let outcome = if round.is_multiple_of(2) {
            "committed"
        } else {
            "aborted"
        };
        format!("{outcome}-{round}-{k}-{}", "t".repeat(60))
    };
    for round in 0..6 {
        producer.begin_transaction().expect("begin");
        for k in 0..10 {
            let (key, payload) = (format!("key-{k}"), value(round, k));
            producer
                .send(
                    BaseRecord::to(topic)
                        .key(&key)
                        .payload(&payload)
                        .partition(0),
                )
                .map_err(|(e, _)| e)
                .expect("send");
        }
        // librdkafka ends a transaction only once its records' delivery reports are served.
        producer.flush(Duration::from_secs(30)).expect("flush");
        if round.is_multiple_of(2) {
            producer
                .commit_transaction(Duration::from_secs(30))
                .expect("commit");
        } else {
            producer
                .abort_transaction(Duration::from_secs(30))
                .expect("abort");
        }
    }
    // The coordinator writes the markers once it has answered EndTxn. All six stay while
    // the records are in the active segment, which is never cleaned.
    let partition = partition_dir(&broker, topic);
    wait_for("the six markers", || control_batches(&partition) == 6);
    let aborted = |seen: &BTreeMap<i64, Entry>| {
        seen.values()
            .filter(|(_, v)| v.as_deref().is_some_and(|v| v.starts_with(b"aborted")))
            .count()
    };

    // Plain updates of other keys keep the log dirty, so the cleaner passes again past
    // the markers' delete horizon. What must go: every aborted record, the markers of the
    // aborted transactions but the last (its empty batch is the producer's last, kept for
    // deduplication) and those of the committed transactions overwritten since.
    let mut model = BTreeMap::new();
    let mut round = 0;
    wait_for(
        "aborted records and spent markers to be cleaned away",
        || {
            round += 1;
            let filler: Vec<Entry> = (0..10)
                .flat_map(|_| 10..20)
                .map(|k| {
                    let value = format!("filler-{k}-{round}-{}", "f".repeat(100));
                    (format!("key-{k}").into_bytes(), Some(value.into_bytes()))
                })
                .collect();
            produce_into(&broker.addr, topic, filler, &mut model);
            aborted(&read_all_at(&broker.addr, topic, "read_uncommitted")) == 0
                && control_batches(&partition) == 2
        },
    );
    // Both isolation levels now read the last committed transaction's values.
    for isolation in ["read_committed", "read_uncommitted"] {
        let seen = read_all_at(&broker.addr, topic, isolation);
        let transactional: BTreeMap<Vec<u8>, Vec<u8>> = latest(&seen)
            .into_iter()
            .filter(|(k, _)| (0..10).any(|i| k == format!("key-{i}").as_bytes()))
            .map(|(k, (_, v))| (k, v.unwrap_or_default()))
            .collect();
        let expected: BTreeMap<Vec<u8>, Vec<u8>> = (0..10)
            .map(|k| (format!("key-{k}").into_bytes(), value(4, k).into_bytes()))
            .collect();
        assert_eq!(transactional, expected, "{isolation}");
        assert_eq!(aborted(&seen), 0, "{isolation}");
    }
}

#[test]
fn kill_9_while_the_cleaner_works_keeps_the_latest_value_of_every_key() {
    let dir = tempfile::tempdir().unwrap();
    // Throttled so that a cleaning of the log takes a while and a kill lands inside one.
    let overrides = [
        "log.segment.bytes=262144",
        "log.cleaner.backoff.ms=100",
        "log.cleaner.io.max.bytes.per.second=4000000",
        "log.flush.interval.ms=600000",
    ];
    let mut broker = Broker::start(dir.path(), &overrides);
    compacted(&broker.addr, "crashing", &[]);
    let mut model = BTreeMap::new();
    let partition = partition_dir(&broker, "crashing");
    for attempt in 0..3 {
        let cleanings_before = broker.log().matches("cleaned log").count();
        let tag = format!("attempt-{attempt}");
        produce_into(
            &broker.addr,
            "crashing",
            updates(1000, 60, &tag),
            &mut model,
        );
        match attempt {
            // In the middle of writing a cleaned segment.
            0 => wait_for("a cleaning in progress", || {
                files_ending(&partition, ".cleaned") > 0
            }),
            // Right after a swap.
            1 => wait_for("a cleaning to finish", || {
                broker.log().matches("cleaned log").count() > cleanings_before
            }),
            // Whichever comes first.
            _ => wait_for("a cleaning", || {
                files_ending(&partition, ".cleaned") + files_ending(&partition, ".swap") > 0
                    || broker.log().matches("cleaned log").count() > cleanings_before
            }),
        }
        broker.kill9();
        broker.restart();
        check_view(&read_all(&broker.addr, "crashing"), &model);
    }
    let mut seen = BTreeMap::new();
    wait_for("the log to be compacted after the last restart", || {
        seen = read_all(&broker.addr, "crashing");
        seen.len() < model.len() / 2
    });
    check_view(&seen, &model);
    check_view(&read_all(&broker.addr, "crashing"), &model);
}

fn produce_raw(client: &mut RawClient, topic: &str, records: Vec<u8>) -> ProduceResponse {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(records)))])]);
    client.send(ApiKey::Produce, 9, &req);
    client.recv(9)
}

#[test]
fn keyless_records_to_a_compacted_topic_are_invalid_and_the_broker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    compacted(&broker.addr, "keyed-only", &[]);
    create(&broker.addr, "anything-goes", &[]);
    let mut client = RawClient::connect(&broker.addr);
    for codec in [Compression::None, Compression::Zstd] {
        let records = [
            (Some(&b"k"[..]), Some(&b"v"[..]), 1),
            (None, Some(&b"no key"[..]), 2),
        ];
        let response = produce_raw(&mut client, "keyed-only", batch(0, &records, codec));
        let p = &response.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 87, "{codec:?}: INVALID_RECORD");
        assert_eq!(p.record_errors.len(), 1);
        assert_eq!(p.record_errors[0].batch_index, 1);
        let message =
            "Compacted topic cannot accept message without key in topic partition keyed-only-0";
        assert_eq!(
            p.record_errors[0].batch_index_error_message.as_deref(),
            Some(message)
        );
        assert!(p
            .error_message
            .as_deref()
            .unwrap_or_default()
            .contains(message));
        // The same records go to a topic that is not compacted.
        let response = produce_raw(&mut client, "anything-goes", batch(0, &records, codec));
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    }
    // librdkafka sees the error; keyed records still go through on the same broker.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("message.send.max.retries", "0")
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keyless = rt.block_on(producer.send(
        FutureRecord::<(), _>::to("keyed-only").payload("x"),
        Duration::from_secs(10),
    ));
    let (error, _) = keyless.expect_err("refused");
    assert_eq!(
        error.rdkafka_error_code(),
        Some(rdkafka::types::RDKafkaErrorCode::InvalidRecord)
    );
    let offsets = produce(&broker.addr, "keyed-only", &updates(1, 1, "fine"));
    assert_eq!(
        offsets,
        vec![0],
        "nothing of the refused produces was written"
    );
}

fn group_consumer(addr: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", "compacting-group")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

fn committed(addr: &str) -> i64 {
    let consumer = group_consumer(addr);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("source", 0);
    let offsets = consumer
        .committed_offsets(tpl, Duration::from_secs(30))
        .expect("committed offsets");
    match offsets.elements()[0].offset() {
        Offset::Offset(o) => o,
        other => panic!("no committed offset: {other:?}"),
    }
}

#[test]
fn consumer_offsets_is_compacted_and_committed_offsets_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = [
        "offsets.topic.num.partitions=1",
        "log.roll.ms=200",
        "log.cleaner.backoff.ms=100",
        "log.cleaner.min.cleanable.ratio=0.01",
    ];
    let mut broker = Broker::start(dir.path(), &overrides);
    create(&broker.addr, "source", &[]);
    let consumer = group_consumer(&broker.addr);
    let commit = |offset: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("source", 0, Offset::Offset(offset))
            .unwrap();
        consumer.commit(&tpl, CommitMode::Sync).expect("commit");
    };
    let commits = 300;
    for offset in 1..=commits {
        commit(offset);
    }
    let mut last = commits;
    wait_for("__consumer_offsets to be compacted", || {
        // Later commits roll segments, so the earlier ones become cleanable.
        last += 1;
        commit(last);
        read_all(&broker.addr, "__consumer_offsets").len() < (commits / 4) as usize
    });
    drop(consumer);
    assert_eq!(committed(&broker.addr), last);
    assert!(broker.terminate().success());
    broker.restart();
    assert_eq!(committed(&broker.addr), last, "after a clean restart");
    broker.kill9();
    broker.restart();
    assert_eq!(committed(&broker.addr), last, "after a kill -9");
}

/// Leader and ISR size of partition 0 of `topic`, as broker `via` reports them.
fn leader_and_isr(cluster: &Cluster, via: i32, topic: &str) -> Option<(i32, usize)> {
    cluster
        .metadata(via)
        .topics
        .into_iter()
        .find(|t| t.name.as_deref().map(|n| n.as_str()) == Some(topic))?
        .partitions
        .iter()
        .find(|p| p.partition_index == 0)
        .map(|p| (p.leader_id.0, p.isr_nodes.len()))
}

/// The records of a log's stored bytes (its segments concatenated), by offset.
fn records_of(log: &[u8]) -> BTreeMap<i64, Entry> {
    let mut records = BTreeMap::new();
    let mut at = 0;
    while let Some(b) = strom_protocol::batch::BatchOffsets::parse(&log[at..]) {
        let mut reader = RecordReader::new(&log[at..at + b.size_bytes], 1 << 30).expect("batch");
        while let Some(r) = reader.next_record().expect("record") {
            let key = r.key.expect("keyed").to_vec();
            records.insert(r.offset, (key, r.value.map(<[u8]>::to_vec)));
        }
        at += b.size_bytes;
    }
    records
}

#[test]
fn a_follower_catching_up_from_a_compacted_leader_takes_its_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::combined_with(dir.path(), 3, &FAST_CLEANER);
    let first = cluster.broker_ids()[0];
    let (admin, rt) = admin(&cluster.addr(first));
    let topic = NewTopic::new("replicated", 1, TopicReplication::Fixed(3))
        .set("cleanup.policy", "compact")
        .set("min.cleanable.dirty.ratio", "0.01");
    for r in rt
        .block_on(admin.create_topics(&[topic], &AdminOptions::new()))
        .expect("create topics")
    {
        r.expect("topic created");
    }
    let mut leader = -1;
    wait_for("a leader with three in-sync replicas", || {
        let state = leader_and_isr(&cluster, first, "replicated");
        leader = state.map_or(-1, |(l, _)| l);
        state.is_some_and(|(l, isr)| l >= 0 && isr == 3)
    });
    let follower = *cluster
        .broker_ids()
        .iter()
        .find(|&&id| id != leader)
        .expect("a follower");
    cluster.stop(follower);
    let mut model = BTreeMap::new();
    let records = updates(50, 100, "while-away");
    let offsets = produce_with(&cluster.addr(leader), "replicated", &records, "none");
    model.extend(offsets.into_iter().zip(records));
    wait_for("the leader to compact", || {
        read_all(&cluster.addr(leader), "replicated").len() < model.len() / 4
    });
    cluster.restart(follower);
    wait_for("the follower back in sync", || {
        leader_and_isr(&cluster, leader, "replicated").is_some_and(|(_, isr)| isr == 3)
    });
    let copied = records_of(&cluster.log_bytes(follower, "replicated", 0));
    check_view(&copied, &model);
    assert!(
        copied.len() < model.len() / 2,
        "the follower holds the compacted log: {} records",
        copied.len()
    );
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// What the Java client reads from the start of partition 0 of `topic`
/// (`tests/clients/java/CompactionRead.java`, built by scripts/test).
fn java_read_all(addr: &str, topic: &str) -> BTreeMap<i64, Entry> {
    let stdout = java_step("CompactionRead", "COMPACTION-READ-OK", addr, &[topic]);
    stdout
        .lines()
        .filter(|l| !l.starts_with("COMPACTION-READ-OK"))
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let value = (fields[2] != "NULL").then(|| unhex(fields[2]));
            (
                fields[0].parse().expect("offset"),
                (unhex(fields[1]), value),
            )
        })
        .collect()
}

#[test]
fn the_java_client_reads_a_log_compacted_across_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &FAST_CLEANER);
    compacted(&broker.addr, "mixed", &[]);
    let mut model = BTreeMap::new();
    for codec in ["gzip", "snappy", "lz4", "zstd", "none"] {
        let records = updates(40, 15, codec);
        let offsets = produce_with(&broker.addr, "mixed", &records, codec);
        model.extend(offsets.into_iter().zip(records));
    }
    // Tombstones stay for delete.retention.ms (a day), with a delete horizon once cleaned.
    let tombstones = (0..5)
        .map(|k| (format!("key-{k}").into_bytes(), None))
        .collect();
    produce_into(&broker.addr, "mixed", tombstones, &mut model);
    // Later updates of the other keys only.
    let deleted: Vec<Vec<u8>> = (0..5).map(|k| format!("key-{k}").into_bytes()).collect();
    let records: Vec<Entry> = updates(40, 15, "after")
        .into_iter()
        .filter(|(k, _)| !deleted.contains(k))
        .collect();
    let offsets = produce_with(&broker.addr, "mixed", &records, "none");
    model.extend(offsets.into_iter().zip(records));
    wait_for("the cleaner to compact the log", || {
        read_all(&broker.addr, "mixed").len() < model.len() / 4
    });
    let seen = java_read_all(&broker.addr, "mixed");
    check_view(&seen, &model);
    assert!(
        seen.len() < model.len() / 2,
        "the Java client read the compacted log"
    );
    assert!(
        seen.values().any(|(_, v)| v.is_none()),
        "tombstones within delete.retention.ms are read"
    );
}
