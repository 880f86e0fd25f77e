//! Restarts: a clean SIGTERM restart keeps everything; a kill -9 in the middle of a stream of
//! acks=1 writes loses no acknowledged record, recovers the log and appends continue at the
//! right offset.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Broker;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use common::clients::{consume_all, create_topic, delete_topic, produce_all, Rec};

fn records(n: usize, tag: &str) -> Vec<Rec> {
    (0..n)
        .map(|i| Rec {
            key: format!("k{i}").into_bytes(),
            value: format!("{tag}-{i}").into_bytes(),
            headers: vec![],
        })
        .collect()
}

#[test]
fn sigterm_exits_zero_and_a_restart_reads_everything_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    create_topic(&broker.addr, "durable", 3);
    let expected = produce_all(&broker.addr, "durable", "lz4", &records(5000, "a"), "all");
    let status = broker.terminate();
    assert!(status.success(), "SIGTERM exit status {status:?}");
    assert!(broker.log().contains("shutdown complete"));
    broker.restart();
    assert!(
        !broker.log().contains("recovered log"),
        "a clean shutdown needs no recovery"
    );
    let counts: BTreeMap<i32, usize> = expected.iter().map(|(p, r)| (*p, r.len())).collect();
    let got = consume_all(&broker.addr, "durable", &counts);
    for (p, recs) in &expected {
        let read: Vec<&Rec> = got[p].iter().map(|(_, r)| r).collect();
        assert!(
            read.iter().copied().eq(recs.iter()),
            "partition {p} after restart"
        );
    }
    // Appends continue after the old log end.
    let more = produce_all(&broker.addr, "durable", "none", &records(30, "b"), "1");
    let counts: BTreeMap<i32, usize> = counts
        .iter()
        .map(|(p, c)| (*p, c + more.get(p).map_or(0, Vec::len)))
        .collect();
    let got = consume_all(&broker.addr, "durable", &counts);
    for (p, c) in &counts {
        assert_eq!(got[p].len(), *c);
        assert_eq!(
            got[p].last().unwrap().0,
            *c as i64 - 1,
            "offsets stay dense across the restart"
        );
    }
}

/// Records every acknowledged (partition, offset, value).
type Acked = Arc<Mutex<Vec<(i32, i64, Vec<u8>)>>>;

struct AckLog(Acked);

impl ClientContext for AckLog {}

impl ProducerContext for AckLog {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(m) = result {
            self.0.lock().unwrap().push((
                m.partition(),
                m.offset(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
}

#[test]
fn kill_9_during_acks_1_writes_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    // A flush interval longer than the test: nothing is fsynced, recovery must scan.
    let mut broker = Broker::start(dir.path(), &["log.flush.interval.ms=600000"]);
    create_topic(&broker.addr, "crash", 2);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let producer: ThreadedProducer<AckLog> = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("acks", "1")
        .set("linger.ms", "1")
        .set("enable.idempotence", "false")
        .set("message.timeout.ms", "5000")
        .set("reconnect.backoff.max.ms", "100")
        .create_with_context(AckLog(Arc::clone(&acked)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let value = format!("v-{i}");
                let _ = producer.send(
                    BaseRecord::<(), _, ()>::to("crash")
                        .payload(&value)
                        .partition((i % 2) as i32),
                );
                i += 1;
                if i.is_multiple_of(100) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let _ = producer.flush(Duration::from_secs(10));
        })
    };
    // Let a good stream of acknowledged writes build up, then crash mid-stream.
    while acked.lock().unwrap().len() < 20_000 {
        std::thread::sleep(Duration::from_millis(20));
    }
    broker.kill9();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    broker.restart();
    assert!(
        broker.log().contains("recovered log"),
        "an unclean shutdown runs recovery"
    );

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut on_disk: BTreeMap<(i32, i64), Vec<u8>> = BTreeMap::new();
    let mut ends = BTreeMap::new();
    for p in 0..2 {
        let (_, high) = consumer
            .fetch_watermarks("crash", p, Duration::from_secs(10))
            .unwrap();
        ends.insert(p, high);
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset("crash", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let total: i64 = ends.values().sum();
    while (on_disk.len() as i64) < total {
        if let Some(m) = consumer.poll(Duration::from_secs(5)) {
            let m = m.unwrap();
            on_disk.insert(
                (m.partition(), m.offset()),
                m.payload().unwrap_or_default().to_vec(),
            );
        }
    }
    for (p, offset, value) in &acked {
        assert_eq!(
            on_disk.get(&(*p, *offset)),
            Some(value),
            "acknowledged record {p}/{offset} survives kill -9"
        );
    }
    // Offsets are dense from 0 to the recovered end, and appends continue right after it.
    for (p, end) in &ends {
        assert!(
            on_disk
                .range((*p, 0)..(*p, *end))
                .map(|((_, o), _)| *o)
                .eq(0..*end),
            "partition {p} dense"
        );
    }
    let after = produce_all(&broker.addr, "crash", "none", &records(10, "after"), "1");
    let counts: BTreeMap<i32, usize> = ends
        .iter()
        .map(|(p, e)| (*p, *e as usize + after.get(p).map_or(0, Vec::len)))
        .collect();
    let got = consume_all(&broker.addr, "crash", &counts);
    for (p, recs) in &after {
        let tail: Vec<&Rec> = got[p]
            .iter()
            .skip(ends[p] as usize)
            .map(|(_, r)| r)
            .collect();
        assert!(
            tail.iter().copied().eq(recs.iter()),
            "new appends on partition {p} follow the recovered end"
        );
        assert_eq!(
            got[p][ends[p] as usize].0, ends[p],
            "first new offset is the recovered log end"
        );
    }
}

#[test]
fn a_topic_flush_ms_fsyncs_on_its_own_interval_and_records_the_recovery_point() {
    let dir = tempfile::tempdir().unwrap();
    // The broker-wide interval is far beyond the test; only the topic's flush.ms can flush.
    let broker = Broker::start(dir.path(), &["log.flush.interval.ms=600000"]);
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &broker.addr)
            .create()
            .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fast =
        rdkafka::admin::NewTopic::new("fast-flush", 1, rdkafka::admin::TopicReplication::Fixed(1))
            .set("flush.ms", "50");
    let slow =
        rdkafka::admin::NewTopic::new("slow-flush", 1, rdkafka::admin::TopicReplication::Fixed(1));
    for r in rt
        .block_on(admin.create_topics(&[fast, slow], &rdkafka::admin::AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }
    produce_all(&broker.addr, "fast-flush", "none", &records(100, "f"), "1");
    produce_all(&broker.addr, "slow-flush", "none", &records(100, "s"), "1");
    let checkpoint = broker
        .data_dir
        .join("logs/recovery-point-offset-checkpoint");
    let mut text = String::new();
    for _ in 0..300 {
        text = std::fs::read_to_string(&checkpoint).unwrap_or_default();
        if text.contains("fast-flush 0 100") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        text.contains("fast-flush 0 100"),
        "flush.ms=50 topic fsynced:\n{text}"
    );
    assert!(
        text.contains("slow-flush 0 0"),
        "the default topic waits for the broker interval:\n{text}"
    );
}

#[test]
fn partition_directories_no_topic_owns_are_removed_and_a_recreated_topic_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    create_topic(&broker.addr, "ghost", 2);
    produce_all(&broker.addr, "ghost", "none", &records(50, "old"), "1");
    broker.kill9();
    // A directory of a topic the metadata does not have (deleted while this broker was
    // down, or interrupted mid-deletion).
    let orphan = broker.data_dir.join("logs/orphan-0");
    std::fs::create_dir_all(&orphan).unwrap();
    for entry in std::fs::read_dir(broker.data_dir.join("logs/ghost-0")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), orphan.join(entry.file_name())).unwrap();
    }
    broker.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while orphan.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the orphan is removed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(broker.log().contains("no topic owns"));
    assert!(
        broker.data_dir.join("logs/ghost-0").exists(),
        "owned logs stay"
    );
    delete_topic(&broker.addr, "ghost");
    create_topic(&broker.addr, "ghost", 2);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "unused")
        .create()
        .unwrap();
    for p in 0..2 {
        assert_eq!(
            consumer
                .fetch_watermarks("ghost", p, Duration::from_secs(10))
                .unwrap(),
            (0, 0),
            "recreated topic starts empty"
        );
    }
}

#[test]
fn data_of_a_version_that_kept_topics_in_files_is_imported_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    create_topic(&broker.addr, "legacy", 2);
    let expected = produce_all(&broker.addr, "legacy", "none", &records(200, "old"), "1");
    broker.terminate();
    // Turn the directory into what the single-node version before the quorum left: no
    // metadata log, no partition.metadata, the topic in .strom-topics/.
    let logs = broker.data_dir.join("logs");
    std::fs::remove_dir_all(logs.join("__cluster_metadata-0")).unwrap();
    for p in 0..2 {
        std::fs::remove_file(logs.join(format!("legacy-{p}/partition.metadata"))).unwrap();
    }
    std::fs::create_dir_all(logs.join(".strom-topics")).unwrap();
    std::fs::write(
        logs.join(".strom-topics/legacy.properties"),
        format!(
            "name=legacy\ntopic.id={}\npartitions=2\nreplication.factor=1\nconfig.retention.ms=86400000\n",
            uuid::Uuid::new_v4()
        ),
    )
    .unwrap();
    broker.restart();
    assert!(logs.join(".strom-topics.imported").is_dir());
    let counts: BTreeMap<i32, usize> = expected.iter().map(|(p, r)| (*p, r.len())).collect();
    let got = consume_all(&broker.addr, "legacy", &counts);
    for (p, recs) in &expected {
        let read: Vec<&Rec> = got[p].iter().map(|(_, r)| r).collect();
        assert!(read.iter().copied().eq(recs.iter()), "partition {p} kept");
    }
    assert!(!broker.log().contains("no topic owns"));
}
