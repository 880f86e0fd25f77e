//! Exactly-once with real `strom` processes and real clients (librdkafka through the
//! `rdkafka` crate, the Java client, Kafka Streams): transactions committed and aborted in
//! turn are seen by read_committed consumers only when committed, in order, and by
//! read_uncommitted consumers always; a consume-transform-produce loop with transactional
//! offset commits produces each output exactly once through a kill -9 of its transaction
//! coordinator; the Java client commits, aborts, is fenced and commits offsets in
//! transactions; a Kafka Streams word count with `processing.guarantee=exactly_once_v2`
//! gives exact counts. (`transactions.rs` checks the coordinator's protocol answers.)
//!
//! The Java steps need `STROM_TEST_JAVA_CP`, which `scripts/test` sets.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::raw::{latest_offset, READ_COMMITTED, READ_UNCOMMITTED};
use common::{Broker, RawClient};
use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(120);
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

type TxnProducer = ThreadedProducer<DefaultProducerContext>;

fn transactional_producer(bootstrap: &str, transactional_id: &str) -> TxnProducer {
    let producer: TxnProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", "10000")
        .set("linger.ms", "5")
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(TXN_TIMEOUT)
        .expect("init_transactions");
    producer
}

/// Every (key, value) of `topic`'s partitions read from the start with `isolation`, until
/// the consumer's position reaches each partition's high watermark (with no transaction
/// open, the last stable offset is the high watermark).
fn read_all(bootstrap: &str, topic: &str, isolation: &str) -> BTreeMap<i32, Vec<String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reader")
        .set("isolation.level", isolation)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let ends: BTreeMap<i32, i64> = partitions
        .iter()
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, *p, Duration::from_secs(10))
                .expect("watermarks");
            (*p, high)
        })
        .collect();
    let mut got: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let positions = consumer.position().expect("position");
        let done = ends.iter().all(|(p, end)| {
            *end == 0
                || matches!(
                    positions.find_partition(topic, *p).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o >= *end
                )
        });
        if done {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "reading {topic} ({isolation}) reaches {ends:?}; got {got:?}"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("consume");
            got.entry(m.partition())
                .or_default()
                .push(String::from_utf8(m.payload().unwrap_or_default().to_vec()).expect("utf-8"));
        }
    }
}

/// Sends `count` records `<prefix>-<i>` in the producer's open transaction; returns them by
/// partition, once delivered (a commit flushes too, but an abort purges what is queued).
fn send_values(producer: &TxnProducer, topic: &str, prefix: &str, count: usize) -> Vec<String> {
    let values: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    for (i, value) in values.iter().enumerate() {
        let key = format!("k{}", i % 7);
        producer
            .send(BaseRecord::to(topic).key(&key).payload(value))
            .map_err(|(e, _)| e)
            .expect("enqueue");
    }
    producer.flush(TXN_TIMEOUT).expect("flush");
    values
}

#[test]
fn read_committed_consumers_see_committed_transactions_only_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    common::clients::create_topic(&broker.addr, "txn-alternate", 3);
    let producer = transactional_producer(&broker.addr, "alternate");
    let mut committed: Vec<String> = Vec::new();
    let mut all = 0;
    for t in 0..20 {
        producer.begin_transaction().expect("begin");
        let values = send_values(&producer, "txn-alternate", &format!("t{t}"), 50);
        all += values.len();
        if t % 2 == 0 {
            producer.commit_transaction(TXN_TIMEOUT).expect("commit");
            committed.extend(values);
        } else {
            producer.abort_transaction(TXN_TIMEOUT).expect("abort");
        }
    }
    let read_committed = read_all(&broker.addr, "txn-alternate", "read_committed");
    let mut seen: Vec<String> = read_committed.values().flatten().cloned().collect();
    seen.sort();
    let mut expected = committed.clone();
    expected.sort();
    assert_eq!(
        seen, expected,
        "read_committed sees exactly the committed records"
    );
    for values in read_committed.values() {
        let order: Vec<(usize, usize)> = values
            .iter()
            .map(|v| {
                let (t, i) = v[1..].split_once('-').unwrap();
                (t.parse().unwrap(), i.parse().unwrap())
            })
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "each partition's committed records are in order: {values:?}"
        );
    }
    let read_uncommitted = read_all(&broker.addr, "txn-alternate", "read_uncommitted");
    assert_eq!(
        read_uncommitted.values().map(Vec::len).sum::<usize>(),
        all,
        "read_uncommitted sees every record, aborted ones included"
    );
}

/// The broker coordinating `transactional_id` (FindCoordinator with key type 1).
fn transaction_coordinator(cluster: &Cluster, transactional_id: &str) -> i32 {
    let node = *cluster.broker_ids().first().expect("a broker");
    let mut client = RawClient::connect(&cluster.addr(node));
    let deadline = Instant::now() + WAIT;
    loop {
        client.send(
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default()
                .with_key(StrBytes::from_string(transactional_id.to_string()))
                .with_key_type(1),
        );
        let response: FindCoordinatorResponse = client.recv(3);
        if response.error_code == 0 {
            return response.node_id.0;
        }
        assert!(Instant::now() < deadline, "no coordinator: {response:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One generation of a consume-transform-produce application: a read_committed consumer of
/// the group and a transactional producer (whose `init_transactions` fences the previous
/// generation's producer and aborts its open transaction).
struct Pipeline {
    consumer: BaseConsumer,
    producer: TxnProducer,
}

impl Pipeline {
    fn start(bootstrap: &str) -> Pipeline {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "transform")
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()
            .expect("consumer");
        consumer.subscribe(&["ctp-in"]).expect("subscribe");
        Pipeline {
            consumer,
            producer: transactional_producer(bootstrap, "transform-1"),
        }
    }

    /// Polls a batch of input, and in one transaction writes `out-<value>` for each and
    /// commits the consumer's positions; returns how many inputs it transformed.
    fn step(&self) -> Result<usize, KafkaError> {
        let mut inputs = Vec::new();
        for _ in 0..10 {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => inputs.push(m.payload().unwrap_or_default().to_vec()),
                // librdkafka reports lost connections here too; they are not fatal.
                Some(Err(e)) => eprintln!("consumer: {e}"),
                None if inputs.is_empty() => continue,
                None => break,
            }
            if inputs.len() >= 200 {
                break;
            }
        }
        if inputs.is_empty() {
            return Ok(0);
        }
        self.producer.begin_transaction()?;
        for value in &inputs {
            let out = format!("out-{}", String::from_utf8_lossy(value));
            self.producer
                .send(BaseRecord::<(), _>::to("ctp-out").payload(&out))
                .map_err(|(e, _)| e)?;
        }
        let positions = self.consumer.position()?;
        let metadata = self.consumer.group_metadata().ok_or(KafkaError::Canceled)?;
        self.producer
            .send_offsets_to_transaction(&positions, &metadata, TXN_TIMEOUT)?;
        self.producer.commit_transaction(TXN_TIMEOUT)?;
        Ok(inputs.len())
    }

    /// Whether the group's committed offsets reached `ends` on every input partition. (The
    /// consumer's own position is no guide: librdkafka leaves it unset for a partition it
    /// consumed nothing from, such as one a previous generation finished.)
    fn caught_up(&self, ends: &BTreeMap<i32, i64>) -> bool {
        let Ok(committed) = self.consumer.committed(Duration::from_secs(10)) else {
            return false;
        };
        ends.iter().all(|(p, end)| {
            matches!(
                committed.find_partition("ctp-in", *p).map(|e| e.offset()),
                Some(Offset::Offset(o)) if o >= *end
            )
        })
    }
}

#[test]
fn consume_transform_produce_writes_each_output_exactly_once_through_a_broker_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::combined(dir.path(), 3);
    let bootstrap = cluster.bootstrap();
    common::clients::create_topic_with(&bootstrap, "ctp-in", 3, 3, &[]);
    common::clients::create_topic_with(&bootstrap, "ctp-out", 3, 3, &[]);
    let inputs = 3000;
    let records: Vec<common::clients::Rec> = (0..inputs)
        .map(|i| common::clients::Rec {
            key: format!("k{i}").into_bytes(),
            value: i.to_string().into_bytes(),
            headers: Vec::new(),
        })
        .collect();
    let expected = common::clients::produce_all(&bootstrap, "ctp-in", "none", &records, "all");
    let ends: BTreeMap<i32, i64> = expected
        .iter()
        .map(|(p, recs)| (*p, recs.len() as i64))
        .collect();

    let coordinator = transaction_coordinator(&cluster, "transform-1");
    let mut pipeline = Pipeline::start(&bootstrap);
    let mut transformed = 0;
    let mut killed = false;
    let mut restarted = false;
    let mut generations = 1;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < deadline, "the pipeline finishes");
        match pipeline.step() {
            Ok(0) if pipeline.caught_up(&ends) => break,
            Ok(n) => transformed += n,
            Err(e) => {
                eprintln!("pipeline generation {generations} failed: {e}; starting over");
                drop(pipeline);
                pipeline = Pipeline::start(&bootstrap);
                generations += 1;
            }
        }
        if !killed && transformed >= inputs / 3 {
            eprintln!("killing the transaction coordinator, node {coordinator}");
            cluster.kill9(coordinator);
            killed = true;
            // As an application that lost its broker would: a new consumer and a new
            // producer, whose initialisation fences the old one and ends its transaction.
            drop(pipeline);
            pipeline = Pipeline::start(&bootstrap);
            generations += 1;
        } else if killed && !restarted && transformed >= 2 * inputs / 3 {
            cluster.restart(coordinator);
            restarted = true;
        }
    }
    assert!(killed, "the coordinator was killed mid-run");
    assert!(generations >= 2, "a new generation took over");
    drop(pipeline);

    let outputs = read_all(&bootstrap, "ctp-out", "read_committed");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for value in outputs.values().flatten() {
        *counts.entry(value.clone()).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "outputs written twice: {duplicated:?}"
    );
    let missing: Vec<usize> = (0..inputs)
        .filter(|i| !counts.contains_key(&format!("out-{i}")))
        .collect();
    assert!(missing.is_empty(), "inputs never transformed: {missing:?}");
    assert_eq!(counts.len(), inputs);
}

#[test]
fn java_client_transactions_commit_abort_fence_and_commit_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    for (topic, partitions) in [
        ("java-commit-abort", 3),
        ("java-fence", 1),
        ("java-offsets", 1),
    ] {
        common::clients::create_topic(&broker.addr, topic, partitions);
    }
    let check = |step: &str, topic: &str| {
        common::clients::java_step("TxnCheck", "TXN-CHECK-OK", &broker.addr, &[step, topic])
    };
    let out = check("commit-abort", "java-commit-abort");
    assert!(out.contains("committed 100 of 200"), "{out}");
    check("fence", "java-fence");
    check("offsets", "java-offsets");
}

#[test]
fn kafka_streams_exactly_once_v2_word_count_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["offsets.topic.replication.factor=1"]);
    common::clients::create_topic(&broker.addr, "wc-in", 2);
    common::clients::create_topic(&broker.addr, "wc-out", 2);
    let state = dir.path().join("streams-state");
    let out = common::clients::java_step(
        "StreamsWordCount",
        "STREAMS-CHECK-OK",
        &broker.addr,
        &[
            "wc-in",
            "wc-out",
            "wordcount",
            "2000",
            state.to_str().unwrap(),
        ],
    );
    assert!(out.contains("COUNT alpha"), "{out}");
}

/// Fetch v11 from offset 0 of `topic`-0 with `isolation_level`: (high watermark, last stable
/// offset, aborted transactions as (producer id, first offset), offsets of the records read).
fn raw_fetch(
    addr: &str,
    topic: &str,
    isolation_level: i8,
) -> (i64, i64, Vec<(i64, i64)>, Vec<i64>) {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
    use kafka_protocol::records::RecordBatchDecoder;
    let mut client = RawClient::connect(addr);
    let request = FetchRequest::default()
        .with_max_bytes(1 << 20)
        .with_isolation_level(isolation_level)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    client.send(ApiKey::Fetch, 11, &request);
    let response: FetchResponse = client.recv(11);
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.error_code, 0, "{p:?}");
    let aborted = p
        .aborted_transactions
        .iter()
        .flatten()
        .map(|t| (t.producer_id.0, t.first_offset))
        .collect();
    let mut offsets = Vec::new();
    if let Some(mut records) = p.records.clone() {
        for set in RecordBatchDecoder::decode_all(&mut records).expect("batches") {
            offsets.extend(set.records.iter().filter(|r| !r.control).map(|r| r.offset));
        }
    }
    (p.high_watermark, p.last_stable_offset, aborted, offsets)
}

/// ListOffsets latest of `topic`-0 with `isolation_level`.
fn raw_latest(addr: &str, topic: &str, isolation_level: i8) -> i64 {
    latest_offset(&mut RawClient::connect(addr), topic, 0, isolation_level)
}

#[test]
fn an_open_transaction_holds_back_the_last_stable_offset_and_an_aborted_one_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let topic = "txn-lso";
    common::clients::create_topic(&broker.addr, topic, 1);
    let plain: Vec<common::clients::Rec> = (0..5)
        .map(|i| common::clients::Rec {
            key: b"k".to_vec(),
            value: format!("plain-{i}").into_bytes(),
            headers: Vec::new(),
        })
        .collect();
    common::clients::produce_all(&broker.addr, topic, "none", &plain, "all");

    // Offsets 5..8 in an open transaction: read_committed readers stop at 5.
    let producer = transactional_producer(&broker.addr, "lso");
    producer.begin_transaction().expect("begin");
    send_values(&producer, topic, "open", 3);
    assert_eq!(raw_latest(&broker.addr, topic, READ_UNCOMMITTED), 8);
    assert_eq!(raw_latest(&broker.addr, topic, READ_COMMITTED), 5);
    let (high_watermark, last_stable, aborted, offsets) =
        raw_fetch(&broker.addr, topic, READ_COMMITTED);
    assert_eq!((high_watermark, last_stable), (8, 5));
    assert!(aborted.is_empty(), "{aborted:?}");
    assert_eq!(
        offsets,
        (0..5).collect::<Vec<_>>(),
        "only below the last stable offset"
    );
    let (_, _, _, offsets) = raw_fetch(&broker.addr, topic, READ_UNCOMMITTED);
    assert_eq!(offsets, (0..8).collect::<Vec<_>>());

    // Aborted (marker at 8), then one committed (9, 10; marker at 11).
    producer.abort_transaction(TXN_TIMEOUT).expect("abort");
    producer.begin_transaction().expect("begin");
    send_values(&producer, topic, "committed", 2);
    producer.commit_transaction(TXN_TIMEOUT).expect("commit");
    let deadline = Instant::now() + WAIT;
    while raw_latest(&broker.addr, topic, READ_COMMITTED) != 12 {
        assert!(
            Instant::now() < deadline,
            "the last stable offset reaches 12"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(raw_latest(&broker.addr, topic, READ_UNCOMMITTED), 12);
    let (high_watermark, last_stable, aborted, offsets) =
        raw_fetch(&broker.addr, topic, READ_COMMITTED);
    assert_eq!((high_watermark, last_stable), (12, 12));
    assert_eq!(
        aborted.len(),
        1,
        "the aborted transaction is listed: {aborted:?}"
    );
    assert_eq!(aborted[0].1, 5, "from its first offset");
    assert_eq!(
        offsets,
        vec![0, 1, 2, 3, 4, 5, 6, 7, 9, 10],
        "records; the client drops 5..8"
    );
    let committed = read_all(&broker.addr, topic, "read_committed");
    let values: Vec<&String> = committed.values().flatten().collect();
    assert_eq!(values.len(), 7, "5 plain and 2 committed: {values:?}");
    assert!(values.iter().all(|v| !v.starts_with("open-")), "{values:?}");
}
