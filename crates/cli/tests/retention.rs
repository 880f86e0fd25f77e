//! The log's lifecycle with real `strom` processes and librdkafka: retention by time and by
//! size deletes old segments and moves the earliest offset, a quiet partition past its
//! retention empties and keeps its offsets, DeleteRecords moves the low watermark on every
//! replica and across restarts, and record timestamps follow `message.timestamp.type` and
//! its bounds.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::clients::admin;
use common::cluster::Cluster;
use common::Broker;
use rdkafka::admin::AdminOptions;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(60);

/// Small segments and a quick retention check.
const FAST_RETENTION: &[&str] = &[
    "log.segment.bytes=4096",
    "log.retention.check.interval.ms=100",
];

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn create(addr: &str, topic: &str, replication: i32, configs: &[(&str, &str)]) {
    common::clients::create_topic_with(addr, topic, 1, replication, configs);
}

fn producer(addr: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .expect("producer")
}

/// Produces `count` records of `value_bytes` each, one at a time, timestamped `timestamp`
/// (the producer's clock when `None`). Returns each one's outcome: its offset or the error.
fn produce(
    addr: &str,
    topic: &str,
    count: usize,
    value_bytes: usize,
    timestamp: Option<i64>,
) -> Vec<Result<i64, KafkaError>> {
    let producer = producer(addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let value = vec![b'r'; value_bytes];
    rt.block_on(async {
        let mut outcomes = Vec::with_capacity(count);
        for i in 0..count {
            let key = format!("k{i}");
            let mut record = FutureRecord::to(topic)
                .partition(0)
                .key(&key)
                .payload(&value);
            if let Some(ts) = timestamp {
                record = record.timestamp(ts);
            }
            let delivered = producer.send(record, Duration::from_secs(30)).await;
            outcomes.push(delivered.map(|d| d.offset).map_err(|(e, _)| e));
        }
        outcomes
    })
}

fn produce_ok(addr: &str, topic: &str, count: usize, value_bytes: usize, timestamp: Option<i64>) {
    for outcome in produce(addr, topic, count, value_bytes, timestamp) {
        outcome.expect("acknowledged");
    }
}

/// (earliest, latest) offsets of partition 0, as a client's ListOffsets sees them.
fn watermarks(addr: &str, topic: &str) -> (i64, i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .expect("consumer");
    consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks")
}

/// Every record of partition 0 from the beginning up to `end`: (offset, timestamp).
fn consume_from_beginning(addr: &str, topic: &str, end: i64) -> Vec<(i64, Timestamp)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.last().is_none_or(|(offset, _)| offset + 1 < end) {
        assert!(Instant::now() < deadline, "consumed up to {:?}", got.last());
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => got.push((m.offset(), m.timestamp())),
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    got
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `.log` files of `topic`'s partition 0 under `data_dir`: (base offset, size).
fn segments(data_dir: &Path, topic: &str) -> Vec<(i64, u64)> {
    let dir = find_dir(data_dir, &format!("{topic}-0")).expect("partition directory");
    let mut found: Vec<(i64, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().to_string();
            let base = name.strip_suffix(".log")?.parse().ok()?;
            Some((base, e.metadata().ok()?.len()))
        })
        .collect();
    found.sort_unstable();
    found
}

fn find_dir(root: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(root).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == name) {
                return Some(path);
            }
            if let Some(found) = find_dir(&path, name) {
                return Some(found);
            }
        }
    }
    None
}

#[test]
fn time_retention_deletes_old_segments_and_the_earliest_offset_moves() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), FAST_RETENTION);
    create(&broker.addr, "aged", 1, &[("retention.ms", "3600000")]);
    // 60 records two hours old, then 60 fresh ones; ~1 KiB each, so a few per segment.
    produce_ok(&broker.addr, "aged", 60, 1000, Some(now_ms() - 7_200_000));
    produce_ok(&broker.addr, "aged", 60, 1000, None);
    wait_for("old segments to go", || {
        watermarks(&broker.addr, "aged").0 > 0
    });
    // Only segments wholly older than the retention went: every fresh record is kept, and
    // the earliest offset is a segment's base.
    let (earliest, latest) = watermarks(&broker.addr, "aged");
    assert_eq!(latest, 120);
    assert!(earliest <= 60, "{earliest}");
    wait_for("every old segment to go", || {
        segments(dir.path(), "aged")[0].0 >= 57
    });
    let (earliest, _) = watermarks(&broker.addr, "aged");
    let files = segments(dir.path(), "aged");
    assert_eq!(files[0].0, earliest, "{files:?}");
    let consumed = consume_from_beginning(&broker.addr, "aged", 120);
    let offsets: Vec<i64> = consumed.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (earliest..120).collect::<Vec<_>>());
}

#[test]
fn size_retention_keeps_the_partition_within_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), FAST_RETENTION);
    let limit: u64 = 20_000;
    create(
        &broker.addr,
        "sized",
        1,
        &[("retention.bytes", &limit.to_string())],
    );
    produce_ok(&broker.addr, "sized", 200, 500, None);
    // Kafka's rule: the oldest segments go while what stays is at least the limit.
    wait_for("the partition to shrink to its limit", || {
        let files = segments(dir.path(), "sized");
        let total: u64 = files.iter().map(|(_, size)| size).sum();
        total - files[0].1 < limit
    });
    let files = segments(dir.path(), "sized");
    assert!(files.iter().map(|(_, s)| s).sum::<u64>() >= limit);
    let (earliest, latest) = watermarks(&broker.addr, "sized");
    assert_eq!((earliest, latest), (files[0].0, 200));
}

#[test]
fn a_quiet_partition_past_its_retention_empties_and_keeps_its_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), FAST_RETENTION);
    create(&broker.addr, "quiet", 1, &[("retention.ms", "1000")]);
    produce_ok(&broker.addr, "quiet", 10, 100, Some(now_ms() - 5_000));
    wait_for("the whole log to expire", || {
        watermarks(&broker.addr, "quiet") == (10, 10)
    });
    // The active segment rolled: the log continues at the same offsets.
    let offsets = produce(&broker.addr, "quiet", 3, 100, None);
    let offsets: Vec<i64> = offsets.into_iter().map(|o| o.unwrap()).collect();
    assert_eq!(offsets, vec![10, 11, 12]);
    let consumed = consume_from_beginning(&broker.addr, "quiet", 13);
    assert_eq!(
        consumed.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        vec![10, 11, 12]
    );
}

/// Deletes the records of partition 0 below `offset`; the partition's outcome.
fn delete_records(addr: &str, topic: &str, offset: i64) -> Result<i64, KafkaError> {
    let (admin, rt) = admin(addr);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    let result = rt
        .block_on(admin.delete_records(&tpl, &AdminOptions::new()))
        .expect("delete records request");
    let elements = result.elements_for_topic(topic);
    elements[0].error()?;
    match elements[0].offset() {
        Offset::Offset(low_watermark) => Ok(low_watermark),
        other => panic!("low watermark {other:?}"),
    }
}

#[test]
fn delete_records_moves_the_low_watermark_and_it_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &["log.segment.bytes=4096"]);
    create(&broker.addr, "trim", 1, &[]);
    produce_ok(&broker.addr, "trim", 100, 200, None);
    assert_eq!(delete_records(&broker.addr, "trim", 42), Ok(42));
    assert_eq!(watermarks(&broker.addr, "trim"), (42, 100));
    // Not past the high watermark.
    assert_eq!(
        delete_records(&broker.addr, "trim", 101),
        Err(KafkaError::OffsetFetch(RDKafkaErrorCode::OffsetOutOfRange))
    );
    // Segments wholly below went at once; a consumer starts at the low watermark, inside a
    // segment.
    assert!(segments(dir.path(), "trim")[0].0 <= 42);
    assert!(segments(dir.path(), "trim")[0].0 > 0);
    let consumed = consume_from_beginning(&broker.addr, "trim", 100);
    assert_eq!(consumed.first().map(|(o, _)| *o), Some(42));

    assert!(broker.terminate().success());
    broker.restart();
    assert_eq!(watermarks(&broker.addr, "trim"), (42, 100));

    // After a crash the checkpointed start is restored too.
    assert_eq!(delete_records(&broker.addr, "trim", 77), Ok(77));
    let checkpoint = dir.path().join("logs").join("log-start-offset-checkpoint");
    wait_for("the log start checkpoint", || {
        std::fs::read_to_string(&checkpoint).is_ok_and(|t| t.contains("trim 0 77"))
    });
    broker.kill9();
    broker.restart();
    assert_eq!(watermarks(&broker.addr, "trim"), (77, 100));
}

#[test]
fn delete_records_reaches_every_replica_and_outlives_its_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::combined(dir.path(), 3);
    let addr = cluster.bootstrap();
    create(&addr, "shared", 3, &[("min.insync.replicas", "2")]);
    produce_ok(&addr, "shared", 100, 200, None);
    // The answer comes once every in-sync follower has moved its log start too.
    assert_eq!(delete_records(&addr, "shared", 60), Ok(60));
    let leader = cluster.metadata(1).topics[0].partitions[0].leader_id.0;
    cluster.kill9(leader);
    let survivor = *cluster
        .broker_ids()
        .iter()
        .find(|id| **id != leader)
        .unwrap();
    let survivor_addr = cluster.addr(survivor);
    cluster.wait_for("a new leader", WAIT, || {
        let l = cluster.metadata(survivor).topics[0].partitions[0]
            .leader_id
            .0;
        l >= 0 && l != leader
    });
    assert_eq!(watermarks(&survivor_addr, "shared"), (60, 100));
}

#[test]
fn log_append_time_topics_stamp_records_with_the_brokers_clock() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create(
        &broker.addr,
        "stamped",
        1,
        &[("message.timestamp.type", "LogAppendTime")],
    );
    let before = now_ms();
    produce_ok(&broker.addr, "stamped", 5, 10, Some(1_000));
    let after = now_ms();
    for (_, timestamp) in consume_from_beginning(&broker.addr, "stamped", 5) {
        match timestamp {
            Timestamp::LogAppendTime(t) => assert!((before..=after).contains(&t), "{t}"),
            other => panic!("expected a log append time, got {other:?}"),
        }
    }
}

#[test]
fn create_times_outside_the_allowed_window_are_invalid_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create(
        &broker.addr,
        "clocked",
        1,
        &[("message.timestamp.before.max.ms", "60000")],
    );
    let invalid = Err(KafkaError::MessageProduction(
        RDKafkaErrorCode::InvalidTimestamp,
    ));
    // `message.timestamp.after.max.ms` defaults to an hour, as in Kafka 4.
    let future = produce(&broker.addr, "clocked", 1, 10, Some(now_ms() + 7_200_000));
    assert_eq!(future[0], invalid);
    let past = produce(&broker.addr, "clocked", 1, 10, Some(now_ms() - 600_000));
    assert_eq!(past[0], invalid);
    // The producer's own clock is fine, and nothing refused was written.
    let ok = produce(&broker.addr, "clocked", 1, 10, None);
    assert_eq!(ok[0], Ok(0));
    let consumed = consume_from_beginning(&broker.addr, "clocked", 1);
    assert!(matches!(consumed[..], [(0, Timestamp::CreateTime(_))]));
}
