//! Idempotent producers against real `strom` processes: librdkafka producers with
//! `enable.idempotence=true` get producer ids through InitProducerId, on one node and on a
//! three-node cluster, and the batches they write carry them. Ids come from blocks the
//! active controller hands to each broker, so producers served by different brokers never
//! share an id, and a restarted broker never hands out an id again.
//!
//! Exactly once: 100,000 records from an idempotent producer whose connections a test proxy
//! cuts again and again (and, on a cluster, whose partition leader is killed) are each
//! stored once, in order; so are the Java client's at its defaults. Hand-made batches get
//! Kafka's errors for sequence gaps and old epochs; DescribeProducers shows each replica's
//! producers until `producer.id.expiration.ms`, changed at runtime, expires them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::clients::{consume_all, create_topic_with, java_step};
use common::cluster::{free_port, Cluster};
use common::proxy::Proxy;
use common::raw::{
    latest_offset, produce_batch, producer_batch, set_cluster_broker_config, READ_UNCOMMITTED,
};
use common::{Broker, RawClient};
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::{
    ApiKey, DescribeProducersRequest, DescribeProducersResponse, InitProducerIdRequest,
    InitProducerIdResponse, ProducerId, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

const WAIT: Duration = Duration::from_secs(60);

/// The producer fields of a stored record batch (magic v2 header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StoredBatch {
    base_offset: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    records: i32,
}

/// Every batch of a log's bytes, in order.
fn stored_batches(log: &[u8]) -> Vec<StoredBatch> {
    let i64_at = |at: usize| i64::from_be_bytes(log[at..at + 8].try_into().unwrap());
    let i32_at = |at: usize| i32::from_be_bytes(log[at..at + 4].try_into().unwrap());
    let mut batches = Vec::new();
    let mut at = 0;
    while at + 61 <= log.len() {
        batches.push(StoredBatch {
            base_offset: i64_at(at),
            producer_id: i64_at(at + 43),
            producer_epoch: i16::from_be_bytes([log[at + 51], log[at + 52]]),
            base_sequence: i32_at(at + 53),
            records: i32_at(at + 57),
        });
        at += 12 + i32_at(at + 8) as usize;
    }
    batches
}

/// A partition's log on a single node: its segments in offset order.
fn node_log(data_dir: &Path, topic: &str, partition: i32) -> Vec<u8> {
    let dir = data_dir.join("logs").join(format!("{topic}-{partition}"));
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .expect("partition dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    segments
        .iter()
        .flat_map(|p| std::fs::read(p).expect("segment"))
        .collect()
}

/// Produces `count` records to one partition with an idempotent librdkafka producer that
/// knows only `bootstrap`; every record is acknowledged.
fn produce_idempotent(bootstrap: &str, topic: &str, partition: i32, count: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("batch.num.messages", "50")
        .create()
        .expect("producer");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut pending = Vec::new();
        for i in 0..count {
            let value = format!("{topic}-{partition}-{i}");
            let future = producer
                .send_result(
                    FutureRecord::<(), _>::to(topic)
                        .partition(partition)
                        .payload(&value),
                )
                .expect("enqueue");
            pending.push(future);
        }
        for future in pending {
            future.await.expect("delivery").expect("acknowledged");
        }
    });
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// The one producer id a partition's batches carry; asserts epoch 0 and sequences that
/// start at 0 and follow each other, as an idempotent producer numbers its batches.
fn producer_of(batches: &[StoredBatch], what: &str) -> i64 {
    assert!(!batches.is_empty(), "{what}: no batches");
    let producer_id = batches[0].producer_id;
    assert!(producer_id >= 0, "{what}: not idempotent: {batches:?}");
    let mut next_sequence = 0;
    for b in batches {
        assert_eq!(
            (b.producer_id, b.producer_epoch, b.base_sequence),
            (producer_id, 0, next_sequence),
            "{what}: {b:?}"
        );
        next_sequence += b.records;
    }
    producer_id
}

/// InitProducerId without a transactional id at `version`, retrying while the broker
/// waits for a block; returns the id and epoch.
fn init_producer_id(client: &mut RawClient, version: i16, current: (i64, i16)) -> (i64, i16) {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(current.0))
        .with_producer_epoch(current.1);
    for _ in 0..200 {
        client.send(ApiKey::InitProducerId, version, &request);
        let response: InitProducerIdResponse = client.recv(version);
        if response.error_code == E::CoordinatorLoadInProgress.code() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        assert_eq!(response.error_code, 0, "v{version}: {response:?}");
        return (response.producer_id.0, response.producer_epoch);
    }
    panic!("no producer id block within 10 s");
}

#[test]
fn idempotent_producers_on_one_node_get_distinct_ids_that_a_restart_never_hands_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let topic = "idempotent";
    create_topic_with(&broker.addr, topic, 4, 1, &[]);
    for partition in 0..4 {
        produce_idempotent(&broker.addr, topic, partition, 500);
    }
    let mut ids = BTreeSet::new();
    for partition in 0..4 {
        let batches = stored_batches(&node_log(&broker.data_dir, topic, partition));
        assert_eq!(
            batches.iter().map(|b| b.records).sum::<i32>(),
            500,
            "partition {partition}"
        );
        ids.insert(producer_of(&batches, &format!("partition {partition}")));
    }
    assert_eq!(ids.len(), 4, "one id per producer: {ids:?}");

    // Every served version answers; a v3+ request naming its current id and epoch still
    // gets a new id at epoch 0 (no transactional id), and one naming only half is refused.
    let mut client = RawClient::connect(&broker.addr);
    for version in 0..=5 {
        let (id, epoch) = init_producer_id(&mut client, version, (-1, -1));
        assert_eq!(epoch, 0);
        assert!(ids.insert(id), "v{version}: {id} handed out twice");
    }
    let last = *ids.last().unwrap();
    let (renewed, epoch) = init_producer_id(&mut client, 5, (last, 0));
    assert!(
        renewed > last && epoch == 0,
        "{renewed}/{epoch} after {last}"
    );
    ids.insert(renewed);
    for (version, current) in [(3, (-1, 0)), (4, (renewed, -1))] {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_producer_id(ProducerId(current.0))
            .with_producer_epoch(current.1);
        client.send(ApiKey::InitProducerId, version, &request);
        let response: InitProducerIdResponse = client.recv(version);
        assert_eq!(
            (
                response.error_code,
                response.producer_id.0,
                response.producer_epoch
            ),
            (E::InvalidRequest.code(), -1, -1)
        );
    }
    let request = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str(""))));
    client.send(ApiKey::InitProducerId, 4, &request);
    let response: InitProducerIdResponse = client.recv(4);
    assert_eq!(response.error_code, E::InvalidRequest.code());
    drop(client);

    // A restarted broker fetches a new block: ids handed out before never come back.
    assert!(broker.terminate().success());
    broker.restart();
    let mut client = RawClient::connect(&broker.addr);
    let (after_restart, _) = init_producer_id(&mut client, 4, (-1, -1));
    assert!(
        after_restart > *ids.last().unwrap(),
        "{after_restart} after {ids:?}"
    );
    produce_idempotent(&broker.addr, topic, 0, 10);
    let batches = stored_batches(&node_log(&broker.data_dir, topic, 0));
    let new_producer = batches.last().unwrap().producer_id;
    assert!(
        !ids.contains(&new_producer) && new_producer != after_restart,
        "{new_producer}"
    );
}

#[test]
fn producers_served_by_different_brokers_of_a_cluster_never_share_a_producer_id() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::combined(dir.path(), 3);
    let topic = "idempotent-cluster";
    create_topic_with(&cluster.bootstrap(), topic, 6, 3, &[]);

    // Raw InitProducerId on every broker, past the first block of each (so that every
    // broker also prefetches and moves to a second block).
    let mut by_broker: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for id in cluster.broker_ids() {
        let mut client = RawClient::connect(&cluster.addr(id));
        let ids = by_broker.entry(id).or_default();
        for _ in 0..1_100 {
            let (producer_id, epoch) = init_producer_id(&mut client, 4, (-1, -1));
            assert_eq!(epoch, 0);
            ids.push(producer_id);
        }
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "broker {id} hands out increasing ids"
        );
    }
    // librdkafka producers, two bootstrapped on each broker, one partition each.
    for (partition, id) in (0..6).zip(cluster.broker_ids().into_iter().cycle()) {
        produce_idempotent(&cluster.addr(id), topic, partition, 300);
    }
    let mut producers = BTreeSet::new();
    for partition in 0..6 {
        // Acknowledged with acks=all: every in-sync replica, node 1 included, has the batches.
        let batches = stored_batches(&cluster.log_bytes(1, topic, partition));
        producers.insert(producer_of(&batches, &format!("partition {partition}")));
    }
    assert_eq!(producers.len(), 6, "one id per producer: {producers:?}");

    let mut owner: BTreeMap<i64, i32> = BTreeMap::new();
    for (broker, ids) in &by_broker {
        for id in ids {
            if let Some(other) = owner.insert(*id, *broker) {
                panic!("producer id {id} handed out by brokers {other} and {broker}");
            }
        }
    }
    for id in &producers {
        assert!(
            !owner.contains_key(id),
            "a librdkafka producer got id {id}, already handed out by broker {}",
            owner[id]
        );
    }
    // Each broker's ids come from whole blocks of 1000 that no other broker touched.
    let blocks: BTreeMap<i64, BTreeSet<i32>> =
        owner
            .iter()
            .fold(BTreeMap::new(), |mut blocks, (id, broker)| {
                blocks.entry(id / 1000).or_default().insert(*broker);
                blocks
            });
    assert!(
        blocks.values().all(|brokers| brokers.len() == 1),
        "{blocks:?}"
    );
}

/// Sends the values `0..count` to partition 0 of `topic` with an idempotent librdkafka
/// producer (acks=all) on a thread of its own; `delivered` counts the acknowledgements. The
/// thread returns the offset acknowledged for each value.
fn produce_in_background(
    bootstrap: &str,
    topic: &str,
    count: usize,
    delivered: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<i64>> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    std::thread::spawn(move || {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", "200")
            // Reconnect at once after each cut (the default backoff grows to 10 s).
            .set("reconnect.backoff.ms", "10")
            .set("reconnect.backoff.max.ms", "100")
            .set("queue.buffering.max.messages", (count + 1).to_string())
            .set("message.timeout.ms", "240000")
            .create()
            .expect("producer");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let offsets = rt.block_on(async {
            let mut pending = Vec::with_capacity(count);
            for i in 0..count {
                let value = i.to_string();
                let future = producer
                    .send_result(
                        FutureRecord::<(), _>::to(&topic)
                            .partition(0)
                            .payload(&value),
                    )
                    .expect("enqueue");
                pending.push(future);
            }
            let mut offsets = Vec::with_capacity(count);
            for (i, future) in pending.into_iter().enumerate() {
                let delivery = future.await.expect("delivery report");
                let delivery =
                    delivery.unwrap_or_else(|(e, _)| panic!("value {i} not delivered: {e}"));
                assert_eq!(delivery.partition, 0);
                offsets.push(delivery.offset);
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            offsets
        });
        producer.flush(Duration::from_secs(30)).expect("flush");
        offsets
    })
}

/// Every value was acknowledged at the offset equal to it, and partition 0 holds exactly
/// the values `0..count` in order: nothing lost, nothing twice.
fn assert_exactly_once_in_order(bootstrap: &str, topic: &str, acked_offsets: &[i64], count: usize) {
    assert_eq!(acked_offsets.len(), count);
    if let Some(i) = (0..count).find(|i| acked_offsets[*i] != *i as i64) {
        panic!(
            "value {i} acknowledged at offset {}: each value must be at its own offset",
            acked_offsets[i]
        );
    }
    let got = consume_all(bootstrap, topic, &BTreeMap::from([(0, count)]));
    let read = &got[&0];
    for (i, (offset, record)) in read.iter().enumerate() {
        assert_eq!(
            (*offset, String::from_utf8_lossy(&record.value).as_ref()),
            (i as i64, i.to_string().as_str()),
            "record {i}"
        );
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    let (_, high_watermark) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    assert_eq!(high_watermark, count as i64, "nothing after the last value");
}

const STREAM_RECORDS: usize = 100_000;

/// Until `done`, cuts every client connection through `proxy` each time `progress` has moved
/// since the last cut, at most once per `interval`: each cut lands on a stream that is
/// running (a client still setting up its connection is not cut again and again). Returns
/// how many cuts closed a connection.
fn cut_as_it_goes(
    proxy: &Proxy,
    interval: Duration,
    mut progress: impl FnMut() -> i64,
    done: impl Fn() -> bool,
) -> usize {
    let (mut cuts, mut at_last_cut) = (0, -1);
    while !done() {
        std::thread::sleep(interval);
        let now = progress();
        if now > at_last_cut {
            at_last_cut = now;
            cuts += usize::from(proxy.cut_clients() > 0);
        }
    }
    cuts
}

/// The log end offset of partition 0 of `topic` (ListOffsets, latest).
fn log_end(client: &mut RawClient, topic: &str) -> i64 {
    latest_offset(client, topic, 0, READ_UNCOMMITTED)
}

#[test]
fn an_idempotent_stream_whose_connections_are_cut_again_and_again_is_stored_exactly_once_in_order()
{
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let proxy = Proxy::start(port);
    let broker = Broker::start(
        dir.path(),
        &[
            &format!("listeners=PLAINTEXT://127.0.0.1:{port}"),
            &format!("advertised.listeners=PLAINTEXT://127.0.0.1:{}", proxy.port),
        ],
    );
    let bootstrap = format!("127.0.0.1:{}", proxy.port);
    let topic = "cut-stream";
    create_topic_with(&broker.addr, topic, 1, 1, &[]);
    let delivered = Arc::new(AtomicUsize::new(0));
    let producer = produce_in_background(&bootstrap, topic, STREAM_RECORDS, Arc::clone(&delivered));
    let cuts = cut_as_it_goes(
        &proxy,
        Duration::from_millis(30),
        || delivered.load(Ordering::Relaxed) as i64,
        || producer.is_finished(),
    );
    let acked_offsets = producer.join().expect("producer thread");
    assert!(cuts >= 20, "connections were cut only {cuts} times");
    assert_exactly_once_in_order(&bootstrap, topic, &acked_offsets, STREAM_RECORDS);
    eprintln!("{STREAM_RECORDS} records through {cuts} cuts");
}

#[test]
fn an_idempotent_stream_through_cut_connections_and_a_killed_leader_is_stored_exactly_once_in_order(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::combined_proxied(dir.path(), 3, &[]);
    let bootstrap = cluster
        .proxies
        .values()
        .map(|p| format!("127.0.0.1:{}", p.port))
        .collect::<Vec<_>>()
        .join(",");
    let topic = "cut-and-killed";
    create_topic_with(&bootstrap, topic, 1, 3, &[("min.insync.replicas", "2")]);
    cluster.wait_for("a full ISR", WAIT, || {
        leader_and_isr(&cluster, 1, topic).is_some_and(|(l, isr)| l >= 0 && isr == 3)
    });
    let delivered = Arc::new(AtomicUsize::new(0));
    let producer = produce_in_background(&bootstrap, topic, STREAM_RECORDS, Arc::clone(&delivered));
    let (mut killed, mut restarted, mut cuts, mut at_last_cut) = (None, false, 0, 0);
    while !producer.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        let done = delivered.load(Ordering::Relaxed);
        if done > at_last_cut {
            // As in `cut_as_it_goes`: only a stream that moved since the last cut.
            at_last_cut = done;
            for proxy in cluster.proxies.values() {
                cuts += usize::from(proxy.cut_clients() > 0);
            }
        }
        if killed.is_none() && done >= STREAM_RECORDS * 2 / 5 {
            let (leader, _) = leader_and_isr(&cluster, 1, topic).expect("partition");
            cluster.kill9(leader);
            killed = Some(leader);
        } else if let Some(leader) =
            killed.filter(|_| !restarted && done >= STREAM_RECORDS * 7 / 10)
        {
            cluster.restart(leader);
            restarted = true;
        }
    }
    let acked_offsets = producer.join().expect("producer thread");
    assert!(
        killed.is_some() && restarted,
        "the leader was killed and came back"
    );
    assert!(cuts >= 20, "connections were cut only {cuts} times");
    assert_exactly_once_in_order(&bootstrap, topic, &acked_offsets, STREAM_RECORDS);
    eprintln!("{STREAM_RECORDS} records through {cuts} cuts and leader {killed:?} killed");
}

/// The leader and the ISR size of partition 0 as broker `via` reports them.
fn leader_and_isr(cluster: &Cluster, via: i32, topic: &str) -> Option<(i32, usize)> {
    let metadata = cluster.metadata(via);
    let t = metadata
        .topics
        .iter()
        .find(|t| t.name.as_deref().map(|n| n.as_str()) == Some(topic))?;
    let p = t.partitions.iter().find(|p| p.partition_index == 0)?;
    Some((p.leader_id.0, p.isr_nodes.len()))
}

#[test]
fn the_java_client_is_idempotent_by_default_and_its_cut_stream_is_stored_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let proxy = Proxy::start(port);
    let broker = Broker::start(
        dir.path(),
        &[
            &format!("listeners=PLAINTEXT://127.0.0.1:{port}"),
            &format!("advertised.listeners=PLAINTEXT://127.0.0.1:{}", proxy.port),
        ],
    );
    let bootstrap = format!("127.0.0.1:{}", proxy.port);
    let topic = "java-default";
    create_topic_with(&broker.addr, topic, 1, 1, &[]);
    const COUNT: &str = "100000";
    let producing = {
        let bootstrap = bootstrap.clone();
        std::thread::spawn(move || {
            java_step(
                "IdempotenceCheck",
                "IDEMPOTENCE-CHECK-OK",
                &bootstrap,
                &["produce", topic, COUNT],
            )
        })
    };
    let mut direct = RawClient::connect(&broker.addr);
    let cuts = cut_as_it_goes(
        &proxy,
        Duration::from_millis(100),
        || log_end(&mut direct, topic),
        || producing.is_finished(),
    );
    producing.join().expect("Java producer");
    assert!(cuts >= 5, "connections were cut only {cuts} times");
    java_step(
        "IdempotenceCheck",
        "IDEMPOTENCE-CHECK-OK",
        &bootstrap,
        &["consume", topic, COUNT],
    );
    // The batches carry producer ids the broker handed out: the client was idempotent.
    let batches = stored_batches(&node_log(&broker.data_dir, topic, 0));
    assert_eq!(
        batches.iter().map(|b| i64::from(b.records)).sum::<i64>(),
        COUNT.parse::<i64>().unwrap()
    );
    assert!(
        batches.iter().all(|b| b.producer_id >= 0),
        "every batch from an idempotent producer"
    );
    eprintln!("{COUNT} records from the Java client through {cuts} cuts");
}

#[test]
fn retries_are_answered_with_the_original_offset_and_bad_sequences_or_epochs_get_kafkas_errors() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let topic = "hand-made";
    create_topic_with(&broker.addr, topic, 1, 1, &[]);
    let mut client = RawClient::connect(&broker.addr);
    let (pid, _) = init_producer_id(&mut client, 4, (-1, -1));

    assert_eq!(
        produce_batch(
            &mut client,
            topic,
            producer_batch(pid, 0, 0, &["a", "b"], false)
        ),
        (0, None, 0)
    );
    assert_eq!(
        produce_batch(&mut client, topic, producer_batch(pid, 0, 2, &["c"], false)),
        (0, None, 2)
    );
    // A retry of an appended batch: no error, its original offset, nothing written.
    assert_eq!(
        produce_batch(
            &mut client,
            topic,
            producer_batch(pid, 0, 0, &["a", "b"], false)
        ),
        (0, None, 0)
    );
    // A gap in the sequence.
    let (code, message, _) =
        produce_batch(&mut client, topic, producer_batch(pid, 0, 7, &["x"], false));
    assert_eq!(code, E::OutOfOrderSequenceNumber.code(), "{message:?}");
    assert!(message.is_some_and(|m| !m.is_empty()), "a message says why");
    // A new epoch starts at sequence 0; the old epoch is fenced from then on.
    assert_eq!(
        produce_batch(&mut client, topic, producer_batch(pid, 1, 0, &["d"], false)),
        (0, None, 3)
    );
    let (code, message, _) =
        produce_batch(&mut client, topic, producer_batch(pid, 0, 3, &["y"], false));
    assert_eq!(code, E::InvalidProducerEpoch.code(), "{message:?}");
    assert!(message.is_some_and(|m| !m.is_empty()), "a message says why");

    let stored = stored_batches(&node_log(&broker.data_dir, topic, 0));
    let offsets: Vec<(i64, i32)> = stored.iter().map(|b| (b.base_offset, b.records)).collect();
    assert_eq!(
        offsets,
        vec![(0, 2), (2, 1), (3, 1)],
        "only the good batches, once"
    );
}

/// A producer as DescribeProducers shows it: id, epoch, last sequence, coordinator epoch,
/// the start of its open transaction.
type Described = (i64, i32, i32, i32, i64);

/// DescribeProducers v0 for partitions of `topic` on broker `addr`: per partition, the error
/// code and the producers.
fn describe_producers(addr: &str, topic: &str, partitions: &[i32]) -> Vec<(i16, Vec<Described>)> {
    let mut client = RawClient::connect(addr);
    let request = DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
        .with_name(TopicName(StrBytes::from_string(topic.to_string())))
        .with_partition_indexes(partitions.to_vec())]);
    client.send(ApiKey::DescribeProducers, 0, &request);
    let response: DescribeProducersResponse = client.recv(0);
    response.topics[0]
        .partitions
        .iter()
        .map(|p| {
            let producers = p
                .active_producers
                .iter()
                .map(|s| {
                    (
                        s.producer_id.0,
                        s.producer_epoch,
                        s.last_sequence,
                        s.coordinator_epoch,
                        s.current_txn_start_offset,
                    )
                })
                .collect();
            (p.error_code, producers)
        })
        .collect()
}

#[test]
fn describe_producers_shows_every_replicas_producers_until_the_dynamic_expiration_forgets_them() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::combined_with(
        dir.path(),
        3,
        &["producer.id.expiration.check.interval.ms=200"],
    );
    let topic = "described";
    create_topic_with(&cluster.bootstrap(), topic, 1, 2, &[]);
    let (leader, replicas) = {
        let metadata = cluster.metadata(1);
        let t = metadata
            .topics
            .iter()
            .find(|t| t.name.as_deref().map(|n| n.as_str()) == Some(topic))
            .expect("topic");
        let p = &t.partitions[0];
        (
            p.leader_id.0,
            p.replica_nodes.iter().map(|b| b.0).collect::<Vec<_>>(),
        )
    };
    let follower = *replicas.iter().find(|b| **b != leader).expect("a follower");
    let outsider = *cluster
        .broker_ids()
        .iter()
        .find(|b| !replicas.contains(b))
        .expect("a broker without a replica");

    let mut client = RawClient::connect(&cluster.addr(leader));
    let (pid, _) = init_producer_id(&mut client, 4, (-1, -1));
    assert_eq!(
        produce_batch(
            &mut client,
            topic,
            producer_batch(pid, 0, 0, &["a", "b", "c"], false)
        ),
        (0, None, 0)
    );
    let described = (0, vec![(pid, 0, 2, -1, -1)]);
    assert_eq!(
        describe_producers(&cluster.addr(leader), topic, &[0]),
        vec![described.clone()]
    );
    // The follower keeps the same state from the batches it copied (acks=all: it has them).
    assert_eq!(
        describe_producers(&cluster.addr(follower), topic, &[0]),
        vec![described]
    );
    assert_eq!(
        describe_producers(&cluster.addr(outsider), topic, &[0, 1]),
        vec![
            (E::NotLeaderOrFollower.code(), vec![]),
            (E::UnknownTopicOrPartition.code(), vec![])
        ]
    );
    assert_eq!(
        describe_producers(&cluster.addr(leader), "no-such-topic", &[0]),
        vec![(E::UnknownTopicOrPartition.code(), vec![])]
    );

    // producer.id.expiration.ms, set for the whole cluster at runtime: both replicas forget
    // the producer once it has been quiet that long.
    set_cluster_broker_config(&mut client, "producer.id.expiration.ms", "1000");
    for replica in [leader, follower] {
        cluster.wait_for("the producer to expire", WAIT, || {
            describe_producers(&cluster.addr(replica), topic, &[0]) == vec![(0, vec![])]
        });
    }
}
