//! Idempotent producers against real `strom` processes: librdkafka producers with
//! `enable.idempotence=true` get producer ids through InitProducerId, on one node and on a
//! three-node cluster, and the batches they write carry them. Ids come from blocks the
//! active controller hands to each broker, so producers served by different brokers never
//! share an id, and a restarted broker never hands out an id again.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::clients::create_topic_with;
use common::cluster::Cluster;
use common::{Broker, RawClient};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

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
