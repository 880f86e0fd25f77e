//! Replication under failure, with real `strom` processes and librdkafka: a stream of
//! acks=all records (RF=3, min.insync.replicas=2) while leaders are killed with SIGKILL or
//! frozen with SIGSTOP past their session; afterwards a consumer checks that every
//! acknowledged record is present exactly once, at the offset it was acknowledged with, in
//! order, and the replicas' logs are byte-identical. With two of three replicas gone,
//! acks=all is refused with NOT_ENOUGH_REPLICAS and nothing is acknowledged.
//!
//! The producer is not idempotent (that needs InitProducerId), so a batch whose first
//! attempt was answered NOT_LEADER_OR_FOLLOWER after being replicated can be present twice,
//! as with Kafka; [`check_nothing_lost`] allows exactly that and nothing else.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::clients::admin;
use common::cluster::Cluster;
use common::RawClient;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use strom_protocol::batch::testing::batch;

const WAIT: Duration = Duration::from_secs(60);
const PARTITIONS: i32 = 3;

fn create_replicated(addr: &str, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    common::clients::create_topic_with(addr, topic, partitions, 3, configs);
}

/// Creates `topic` (RF=3, with `configs`) through the first broker and waits until every
/// partition has a leader and three in-sync replicas.
fn create_in_sync(cluster: &Cluster, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let first = cluster.broker_ids()[0];
    create_replicated(&cluster.addr(first), topic, partitions, configs);
    cluster.wait_for("a new topic's full ISR", WAIT, || {
        let state = partitions_of(cluster, first, topic);
        state.len() == partitions as usize
            && state
                .values()
                .all(|(leader, isr)| *leader >= 0 && isr.len() == 3)
    });
}

const STRICT: &[(&str, &str)] = &[("min.insync.replicas", "2")];

/// `topic` in broker `via`'s Metadata answer.
fn topic_metadata(cluster: &Cluster, via: i32, topic: &str) -> Option<MetadataResponseTopic> {
    cluster
        .metadata(via)
        .topics
        .into_iter()
        .find(|t| t.name.as_deref().map(|n| n.as_str()) == Some(topic))
}

/// Partition → (leader, ISR) of `topic` as broker `via` reports it.
fn partitions_of(cluster: &Cluster, via: i32, topic: &str) -> BTreeMap<i32, (i32, BTreeSet<i32>)> {
    topic_metadata(cluster, via, topic)
        .map(|t| {
            t.partitions
                .iter()
                .map(|p| {
                    let isr = p.isr_nodes.iter().map(|b| b.0).collect();
                    (p.partition_index, (p.leader_id.0, isr))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until every partition is led by a live broker and all three replicas are in sync.
fn wait_fully_replicated(cluster: &Cluster, via: i32, topic: &str) {
    wait_in_sync(cluster, via, topic, PARTITIONS);
}

/// Waits until `topic` has `partitions` partitions, each led and with three in-sync replicas.
fn wait_in_sync(cluster: &Cluster, via: i32, topic: &str, partitions: i32) {
    cluster.wait_for("every partition with a full ISR", WAIT, || {
        let state = partitions_of(cluster, via, topic);
        state.len() == partitions as usize
            && state
                .values()
                .all(|(leader, isr)| *leader >= 0 && isr.len() == 3)
    });
}

/// An acknowledged record: where the broker said it is.
#[derive(Debug, Clone)]
struct Acked {
    partition: i32,
    offset: i64,
    value: String,
}

/// A background acks=all producer sending unique values round-robin over the partitions.
struct Stream {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Stream {
    fn start(bootstrap: &str, topic: &str) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
        let thread = {
            let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
            std::thread::spawn(move || produce_until(&bootstrap, &topic, &stop, &acked))
        };
        Stream {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `more` further records are acknowledged.
    fn wait_for_acks(&self, cluster: &Cluster, more: usize) {
        let target = self.acked_count() + more;
        cluster.wait_for("acknowledged records", WAIT, || {
            self.acked_count() >= target
        });
    }

    /// Stops sending; returns the acknowledged records and how many were sent.
    fn finish(mut self) -> (Vec<Acked>, usize) {
        self.stop.store(true, Ordering::Release);
        let sent = self.thread.take().unwrap().join().expect("producer thread");
        let acked = self.acked.lock().unwrap().clone();
        (acked, sent)
    }
}

fn produce_until(
    bootstrap: &str,
    topic: &str,
    stop: &AtomicBool,
    acked: &Mutex<Vec<Acked>>,
) -> usize {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("retries", "0")
        .set("linger.ms", "2")
        .set("request.timeout.ms", "5000")
        .set("message.timeout.ms", "10000")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .expect("producer");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let mut sent = 0usize;
        while !stop.load(Ordering::Acquire) {
            for _ in 0..10 {
                let value = format!("v{sent}");
                let partition = (sent % PARTITIONS as usize) as i32;
                let record = FutureRecord::<(), _>::to(topic)
                    .partition(partition)
                    .payload(&value);
                match producer.send_result(record) {
                    Ok(delivery) => {
                        tasks.spawn(async move {
                            let delivered = delivery.await.ok().and_then(Result::ok);
                            (value, delivered.map(|d| (d.partition, d.offset)))
                        });
                        sent += 1;
                    }
                    Err(_) => break,
                }
            }
            while let Some(done) = tasks.try_join_next() {
                record_delivery(done.expect("delivery task"), acked);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while let Some(done) = tasks.join_next().await {
            record_delivery(done.expect("delivery task"), acked);
        }
        sent
    })
}

fn record_delivery((value, delivered): (String, Option<(i32, i64)>), acked: &Mutex<Vec<Acked>>) {
    if let Some((partition, offset)) = delivered {
        acked.lock().unwrap().push(Acked {
            partition,
            offset,
            value,
        });
    }
}

/// Every record of every partition, read from the start to the high watermark.
fn read_everything(bootstrap: &str, topic: &str) -> BTreeMap<i32, Vec<(i64, String)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "checker")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut ends = BTreeMap::new();
    for p in 0..PARTITIONS {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        ends.insert(p, high);
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut got: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    let done = |got: &BTreeMap<i32, Vec<(i64, String)>>| {
        ends.iter().all(|(p, end)| {
            *end == 0
                || got
                    .get(p)
                    .and_then(|r| r.last())
                    .is_some_and(|(o, _)| *o + 1 >= *end)
        })
    };
    while !done(&got) {
        assert!(Instant::now() < deadline, "read {got:?} of {ends:?}");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => got.entry(m.partition()).or_default().push((
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            )),
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    got
}

/// Every acknowledged record is where it was acknowledged, offsets are contiguous, and
/// every replica holds the same bytes. A value may appear more than once only as an earlier
/// attempt the client retried (librdkafka resends a batch answered NOT_LEADER_OR_FOLLOWER
/// even with `retries=0`, and the first attempt may have been replicated, as with Kafka
/// without idempotence): never after the copy that was acknowledged, and a value that was
/// never acknowledged appears at most once. Returns the number of such retried copies.
fn check_nothing_lost(cluster: &Cluster, topic: &str, acked: &[Acked], sent: usize) -> usize {
    wait_fully_replicated(cluster, cluster.broker_ids()[0], topic);
    let log = read_everything(&cluster.bootstrap(), topic);
    let acked_at: BTreeMap<&str, (i32, i64)> = acked
        .iter()
        .map(|a| (a.value.as_str(), (a.partition, a.offset)))
        .collect();
    let mut seen: BTreeMap<String, Vec<(i32, i64)>> = BTreeMap::new();
    for (partition, records) in &log {
        for (i, (offset, value)) in records.iter().enumerate() {
            assert_eq!(
                *offset, i as i64,
                "partition {partition} has a gap or reorder"
            );
            seen.entry(value.clone())
                .or_default()
                .push((*partition, *offset));
        }
    }
    let mut retried_copies = 0;
    for (value, copies) in &seen {
        if copies.len() == 1 {
            continue;
        }
        let Some(at) = acked_at.get(value.as_str()) else {
            panic!("{value}, never acknowledged, is present {copies:?}");
        };
        assert!(
            copies.iter().all(|c| c.0 == at.0 && c.1 <= at.1),
            "{value} acknowledged at {at:?} is also present at {copies:?}"
        );
        retried_copies += copies.len() - 1;
    }
    for a in acked {
        let present = log
            .get(&a.partition)
            .and_then(|r| r.get(a.offset as usize))
            .map(|(_, v)| v.as_str());
        assert_eq!(
            present,
            Some(a.value.as_str()),
            "acknowledged {a:?} is missing"
        );
    }
    let brokers = cluster.broker_ids();
    for partition in 0..PARTITIONS {
        cluster.wait_for("replicas holding the same bytes", WAIT, || {
            let first = cluster.log_bytes(brokers[0], topic, partition);
            brokers[1..]
                .iter()
                .all(|b| cluster.log_bytes(*b, topic, partition) == first)
        });
    }
    eprintln!(
        "{sent} sent, {} acknowledged, {} distinct present, {retried_copies} retried copies, 0 lost",
        acked.len(),
        seen.len()
    );
    retried_copies
}

#[test]
fn killing_leaders_during_an_acks_all_stream_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::combined(dir.path(), 3);
    let topic = "replicated-kill";
    create_in_sync(&cluster, topic, PARTITIONS, STRICT);
    let stream = Stream::start(&cluster.bootstrap(), topic);
    stream.wait_for_acks(&cluster, 500);
    // More rounds for the figures in docs/reliability.md: STROM_FAULT_ROUNDS=30.
    let rounds: i32 = std::env::var("STROM_FAULT_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(4);
    let mut failovers = Vec::new();
    for round in 0..rounds {
        let partition = round % PARTITIONS;
        let leader = partitions_of(&cluster, 1 + (round % 3), topic)[&partition].0;
        let killed_at = Instant::now();
        cluster.kill9(leader);
        let via = cluster
            .broker_ids()
            .into_iter()
            .find(|b| *b != leader)
            .unwrap();
        cluster.wait_for("a new leader from the ISR", WAIT, || {
            let state = partitions_of(&cluster, via, topic);
            state.values().all(|(l, _)| *l >= 0 && *l != leader)
        });
        failovers.push(killed_at.elapsed());
        stream.wait_for_acks(&cluster, 300);
        cluster.restart(leader);
        wait_fully_replicated(&cluster, via, topic);
        stream.wait_for_acks(&cluster, 300);
    }
    let (acked, sent) = stream.finish();
    check_nothing_lost(&cluster, topic, &acked, sent);
    failovers.sort();
    let at = |q: f64| failovers[((failovers.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "{rounds} leader kills; failover (kill to new leaders in metadata) p50 {:?} p99 {:?} max {:?}",
        at(0.5),
        at(0.99),
        failovers[failovers.len() - 1]
    );
}

#[test]
fn a_leader_frozen_past_its_session_steps_down_and_truncates_instead_of_splitting_the_brain() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::combined_with(dir.path(), 3, &["replica.lag.time.max.ms=3000"]);
    let topic = "replicated-stop";
    create_in_sync(&cluster, topic, PARTITIONS, STRICT);
    let stream = Stream::start(&cluster.bootstrap(), topic);
    stream.wait_for_acks(&cluster, 500);
    let frozen = partitions_of(&cluster, 1, topic)[&0].0;
    let via = cluster
        .broker_ids()
        .into_iter()
        .find(|b| *b != frozen)
        .unwrap();
    cluster.signal(frozen, libc::SIGSTOP);
    cluster.wait_for("leadership to move off the frozen broker", WAIT, || {
        partitions_of(&cluster, via, topic)
            .values()
            .all(|(l, isr)| *l >= 0 && *l != frozen && !isr.contains(&frozen))
    });
    stream.wait_for_acks(&cluster, 500);
    cluster.signal(frozen, libc::SIGCONT);
    wait_fully_replicated(&cluster, via, topic);
    stream.wait_for_acks(&cluster, 300);
    let (acked, sent) = stream.finish();
    check_nothing_lost(&cluster, topic, &acked, sent);
}

fn produce_raw(client: &mut RawClient, topic: &str, partition: i32, acks: i16) -> i16 {
    let records = Bytes::from(batch(&[b"must-not-be-acknowledged"], 0));
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])]);
    client.send(ApiKey::Produce, 9, &request);
    let response: ProduceResponse = client.recv(9);
    response.responses[0].partition_responses[0].error_code
}

#[test]
fn with_two_of_three_replicas_down_acks_all_is_refused_with_not_enough_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::split(dir.path(), 3, 3);
    let topic = "replicated-min-isr";
    let brokers = cluster.broker_ids();
    create_in_sync(&cluster, topic, PARTITIONS, STRICT);
    let leader = partitions_of(&cluster, brokers[0], topic)[&0].0;
    let mut to_leader = RawClient::connect(&cluster.addr(leader));
    assert_eq!(produce_raw(&mut to_leader, topic, 0, -1), 0);
    // Leave only brokers[0]; it leads everything once the others are fenced.
    cluster.kill9(brokers[1]);
    cluster.kill9(brokers[2]);
    cluster.wait_for("the survivor alone in every ISR", WAIT, || {
        partitions_of(&cluster, brokers[0], topic)
            .values()
            .all(|(l, isr)| *l == brokers[0] && isr.len() == 1)
    });
    let end_before = read_everything(&cluster.addr(brokers[0]), topic);
    let mut client = RawClient::connect(&cluster.addr(brokers[0]));
    for partition in 0..PARTITIONS {
        assert_eq!(
            produce_raw(&mut client, topic, partition, -1),
            ResponseError::NotEnoughReplicas.code(),
            "acks=all with an ISR of one, partition {partition}"
        );
    }
    // Nothing of the refused writes became visible; acks=1 still works.
    assert_eq!(
        read_everything(&cluster.addr(brokers[0]), topic),
        end_before
    );
    assert_eq!(produce_raw(&mut client, topic, 0, 1), 0);
}

/// Partition → (leader, preferred replica) of `topic` as broker `via` reports it.
fn leaders_and_preferred(cluster: &Cluster, via: i32, topic: &str) -> BTreeMap<i32, (i32, i32)> {
    topic_metadata(cluster, via, topic)
        .map(|t| {
            t.partitions
                .iter()
                .map(|p| (p.partition_index, (p.leader_id.0, p.replica_nodes[0].0)))
                .collect()
        })
        .unwrap_or_default()
}

/// Kills the preferred leader of partition 0, waits until leadership moved, restarts it
/// and waits until it is back in every ISR. Returns the restarted broker.
fn bounce_a_preferred_leader(cluster: &mut Cluster, topic: &str) -> i32 {
    let (_, preferred) = leaders_and_preferred(cluster, 1, topic)[&0];
    cluster.kill9(preferred);
    let via = cluster
        .broker_ids()
        .into_iter()
        .find(|b| *b != preferred)
        .unwrap();
    cluster.wait_for("leadership to move off the killed broker", WAIT, || {
        partitions_of(cluster, via, topic)
            .values()
            .all(|(l, _)| *l >= 0 && *l != preferred)
    });
    cluster.restart(preferred);
    wait_fully_replicated(cluster, via, topic);
    preferred
}

#[test]
fn leadership_moves_back_to_the_preferred_replica_once_it_is_in_sync_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::combined_with(
        dir.path(),
        3,
        &["leader.imbalance.check.interval.seconds=1"],
    );
    let topic = "preferred-auto";
    create_in_sync(&cluster, topic, PARTITIONS, &[]);
    let restarted = bounce_a_preferred_leader(&mut cluster, topic);
    cluster.wait_for("every partition led by its preferred replica", WAIT, || {
        leaders_and_preferred(&cluster, restarted, topic)
            .values()
            .all(|(leader, preferred)| leader == preferred)
    });
}

fn elect_raw(
    client: &mut RawClient,
    partitions: Option<Vec<(&str, Vec<i32>)>>,
) -> kafka_protocol::messages::ElectLeadersResponse {
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    use kafka_protocol::messages::ElectLeadersRequest;
    let request = ElectLeadersRequest::default()
        .with_election_type(0)
        .with_timeout_ms(10_000)
        .with_topic_partitions(partitions.map(|list| {
            list.into_iter()
                .map(|(topic, partitions)| {
                    TopicPartitions::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.into())))
                        .with_partitions(partitions)
                })
                .collect()
        }));
    client.send(ApiKey::ElectLeaders, 2, &request);
    client.recv(2)
}

#[test]
fn elect_leaders_moves_leadership_to_in_sync_preferred_replicas_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        Cluster::combined_with(dir.path(), 3, &["auto.leader.rebalance.enable=false"]);
    let topic = "preferred-manual";
    create_in_sync(&cluster, topic, PARTITIONS, &[]);
    let restarted = bounce_a_preferred_leader(&mut cluster, topic);
    let before = leaders_and_preferred(&cluster, restarted, topic);
    let displaced: BTreeSet<i32> = before
        .iter()
        .filter(|(_, (l, p))| l != p)
        .map(|(i, _)| *i)
        .collect();
    assert!(!displaced.is_empty(), "{before:?}");
    let mut client = RawClient::connect(&cluster.addr(restarted));
    let response = elect_raw(&mut client, None);
    assert_eq!(response.error_code, 0);
    let elected: BTreeSet<i32> = response
        .replica_election_results
        .iter()
        .flat_map(|t| t.partition_result.iter())
        .map(|p| {
            assert_eq!(p.error_code, 0, "{response:?}");
            p.partition_id
        })
        .collect();
    assert_eq!(elected, displaced);
    let after = leaders_and_preferred(&cluster, restarted, topic);
    assert!(after.values().all(|(l, p)| l == p), "{after:?}");
    // Named partitions that need nothing, and ones that do not exist.
    let response = elect_raw(&mut client, Some(vec![(topic, vec![0, 99])]));
    let codes: BTreeMap<i32, i16> = response.replica_election_results[0]
        .partition_result
        .iter()
        .map(|p| (p.partition_id, p.error_code))
        .collect();
    assert_eq!(
        codes,
        BTreeMap::from([
            (0, ResponseError::ElectionNotNeeded.code()),
            (99, ResponseError::UnknownTopicOrPartition.code())
        ])
    );
}

/// The coordinator of `group` as broker `via` answers FindCoordinator (-1 if none).
fn coordinator(cluster: &Cluster, via: i32, group: &str) -> i32 {
    use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};
    let mut client = RawClient::connect(&cluster.addr(via));
    let request = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_string(group.into()))
        .with_key_type(0);
    client.send(ApiKey::FindCoordinator, 3, &request);
    let response: FindCoordinatorResponse = client.recv(3);
    if response.error_code == 0 {
        response.node_id.0
    } else {
        -1
    }
}

fn group_consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

#[test]
fn committed_offsets_survive_losing_the_group_coordinator() {
    use rdkafka::consumer::CommitMode;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::combined(dir.path(), 3);
    let topic = "offsets-failover";
    create_in_sync(&cluster, topic, PARTITIONS, &[]);
    let group = "failover-group";
    let mut committed = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        committed
            .add_partition_offset(topic, p, Offset::Offset(100 + i64::from(p)))
            .unwrap();
    }
    let first = group_consumer(&cluster.bootstrap(), group);
    first
        .commit(&committed, CommitMode::Sync)
        .expect("commit acknowledged");
    drop(first);
    let old = coordinator(&cluster, 1, group);
    assert!(old > 0);
    cluster.kill9(old);
    let via = cluster
        .broker_ids()
        .into_iter()
        .find(|b| *b != old)
        .unwrap();
    cluster.wait_for("a new coordinator", WAIT, || {
        let c = coordinator(&cluster, via, group);
        c > 0 && c != old
    });
    let second = group_consumer(&cluster.bootstrap(), group);
    let mut asked = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        asked.add_partition(topic, p);
    }
    let got = second
        .committed_offsets(asked, Duration::from_secs(30))
        .expect("committed offsets");
    for p in 0..PARTITIONS {
        assert_eq!(
            got.find_partition(topic, p).map(|e| e.offset()),
            Some(Offset::Offset(100 + i64::from(p))),
            "partition {p}: {got:?}"
        );
    }
}

#[test]
fn restarting_every_broker_in_turn_during_an_acks_all_stream_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::combined(dir.path(), 3);
    let topic = "replicated-rolling";
    create_in_sync(&cluster, topic, PARTITIONS, STRICT);
    let stream = Stream::start(&cluster.bootstrap(), topic);
    stream.wait_for_acks(&cluster, 300);
    for round in 0..2 {
        for id in cluster.broker_ids() {
            let via = cluster.broker_ids().into_iter().find(|b| *b != id).unwrap();
            cluster.stop(id);
            stream.wait_for_acks(&cluster, 200);
            cluster.restart(id);
            wait_fully_replicated(&cluster, via, topic);
            stream.wait_for_acks(&cluster, 200);
            eprintln!("round {round}: restarted broker {id}");
        }
    }
    let (acked, sent) = stream.finish();
    check_nothing_lost(&cluster, topic, &acked, sent);
}

fn reassign_raw(
    client: &mut RawClient,
    topic: &str,
    partition: i32,
    target: Option<Vec<i32>>,
) -> i16 {
    use kafka_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };
    use kafka_protocol::messages::{
        AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    };
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(10_000)
        .with_allow_replication_factor_change(true)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(partition)
                .with_replicas(
                    target.map(|t| t.into_iter().map(BrokerId).collect()),
                )])]);
    client.send(ApiKey::AlterPartitionReassignments, 1, &request);
    let response: AlterPartitionReassignmentsResponse = client.recv(1);
    assert_eq!(response.error_code, 0, "{response:?}");
    response.responses[0].partitions[0].error_code
}

/// Partitions of `topic` with a reassignment in progress.
fn ongoing_reassignments(client: &mut RawClient) -> usize {
    use kafka_protocol::messages::{
        ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
    };
    client.send(
        ApiKey::ListPartitionReassignments,
        0,
        &ListPartitionReassignmentsRequest::default().with_timeout_ms(10_000),
    );
    let response: ListPartitionReassignmentsResponse = client.recv(0);
    response.topics.iter().map(|t| t.partitions.len()).sum()
}

#[test]
fn a_reassignment_moves_a_partition_with_its_records_to_other_brokers() {
    use common::clients::{consume_all, produce_all, Rec};
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::split(dir.path(), 1, 4);
    let brokers = cluster.broker_ids();
    let topic = "moving";
    let (admin, rt) = admin(&cluster.addr(brokers[0]));
    for r in rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(2))],
            &AdminOptions::new(),
        ))
        .unwrap()
    {
        r.unwrap();
    }
    let records: Vec<Rec> = (0..500)
        .map(|i| Rec {
            key: format!("k{i}").into_bytes(),
            value: format!("v{i}").into_bytes(),
            headers: vec![],
        })
        .collect();
    let bootstrap = cluster.bootstrap();
    produce_all(&bootstrap, topic, "none", &records[..250], "all");
    let replicas_now = |c: &Cluster| -> Vec<i32> {
        topic_metadata(c, brokers[0], topic)
            .map(|t| t.partitions[0].replica_nodes.iter().map(|b| b.0).collect())
            .unwrap_or_default()
    };
    let before = replicas_now(&cluster);
    let target: Vec<i32> = brokers
        .iter()
        .copied()
        .filter(|b| !before.contains(b))
        .collect();
    assert_eq!(target.len(), 2);
    let mut client = RawClient::connect(&cluster.addr(brokers[0]));
    assert_eq!(reassign_raw(&mut client, topic, 0, Some(target.clone())), 0);
    cluster.wait_for("the reassignment to complete", WAIT, || {
        ongoing_reassignments(&mut client) == 0 && replicas_now(&cluster) == target
    });
    for old in &before {
        let dir = cluster
            .dir
            .join(format!("node-{old}"))
            .join("logs")
            .join(format!("{topic}-0"));
        cluster.wait_for("the old replica's log to go", WAIT, || !dir.exists());
    }
    produce_all(&bootstrap, topic, "none", &records[250..], "all");
    let got = consume_all(&bootstrap, topic, &BTreeMap::from([(0, records.len())]));
    let values: Vec<Vec<u8>> = got[&0].iter().map(|(_, r)| r.value.clone()).collect();
    let expected: Vec<Vec<u8>> = records.iter().map(|r| r.value.clone()).collect();
    assert_eq!(values, expected);
    // Nothing to cancel any more; an unknown partition is refused.
    assert_eq!(
        reassign_raw(&mut client, topic, 0, None),
        ResponseError::NoReassignmentInProgress.code()
    );
    assert_eq!(
        reassign_raw(&mut client, topic, 7, Some(target)),
        ResponseError::UnknownTopicOrPartition.code()
    );
}

fn offset_for_epoch_raw(
    client: &mut RawClient,
    topic: &str,
    current_leader_epoch: i32,
    leader_epoch: i32,
) -> (i16, i32, i64) {
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
    let request = OffsetForLeaderEpochRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![OffsetForLeaderPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(current_leader_epoch)
                .with_leader_epoch(leader_epoch)])]);
    client.send(ApiKey::OffsetForLeaderEpoch, 4, &request);
    let response: OffsetForLeaderEpochResponse = client.recv(4);
    let p = &response.topics[0].partitions[0];
    (p.error_code, p.leader_epoch, p.end_offset)
}

#[test]
fn offset_for_leader_epoch_tells_where_each_leader_epoch_ended() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::combined(dir.path(), 3);
    let topic = "epochs";
    create_in_sync(&cluster, topic, 1, STRICT);
    let leader_and_epoch = |c: &Cluster, via: i32| {
        topic_metadata(c, via, topic)
            .map(|t| (t.partitions[0].leader_id.0, t.partitions[0].leader_epoch))
            .unwrap()
    };
    let (first, epoch0) = leader_and_epoch(&cluster, 1);
    let mut client = RawClient::connect(&cluster.addr(first));
    for _ in 0..3 {
        assert_eq!(produce_raw(&mut client, topic, 0, -1), 0);
    }
    cluster.kill9(first);
    let via = cluster
        .broker_ids()
        .into_iter()
        .find(|b| *b != first)
        .unwrap();
    cluster.wait_for("a new leader", WAIT, || {
        let (l, _) = leader_and_epoch(&cluster, via);
        l >= 0 && l != first
    });
    let (second, epoch1) = leader_and_epoch(&cluster, via);
    let mut client = RawClient::connect(&cluster.addr(second));
    for _ in 0..2 {
        assert_eq!(produce_raw(&mut client, topic, 0, -1), 0);
    }
    // The first epoch's three records end where the second epoch's begin.
    assert_eq!(
        offset_for_epoch_raw(&mut client, topic, epoch1, epoch0),
        (0, epoch0, 3)
    );
    assert_eq!(
        offset_for_epoch_raw(&mut client, topic, epoch1, epoch1),
        (0, epoch1, 5)
    );
    assert_eq!(
        offset_for_epoch_raw(&mut client, topic, epoch0, epoch0).0,
        ResponseError::FencedLeaderEpoch.code()
    );
    assert_eq!(
        offset_for_epoch_raw(&mut client, topic, epoch1 + 1, epoch0).0,
        ResponseError::UnknownLeaderEpoch.code()
    );
}

#[test]
fn a_leader_cut_off_from_its_followers_shrinks_its_isr_refuses_acks_all_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::combined_proxied(dir.path(), 3, &["replica.lag.time.max.ms=2000"]);
    let topic = "partitioned";
    create_in_sync(&cluster, topic, PARTITIONS, STRICT);
    let stream = Stream::start(&cluster.bootstrap(), topic);
    stream.wait_for_acks(&cluster, 300);
    let leader = partitions_of(&cluster, 1, topic)[&0].0;
    let followers: Vec<i32> = cluster
        .broker_ids()
        .into_iter()
        .filter(|b| *b != leader)
        .collect();
    // The network between the leader and its followers goes; the leader still reaches the
    // controllers, so it is not fenced: it must shrink its ISRs itself.
    for follower in &followers {
        cluster.proxies[&leader].cut(*follower);
    }
    let led = |c: &Cluster| -> Vec<i32> {
        partitions_of(c, leader, topic)
            .iter()
            .filter(|(_, (l, _))| *l == leader)
            .map(|(p, _)| *p)
            .collect()
    };
    cluster.wait_for("the cut-off leader alone in its ISRs", WAIT, || {
        let state = partitions_of(&cluster, leader, topic);
        state
            .values()
            .filter(|(l, _)| *l == leader)
            .all(|(_, isr)| isr.len() == 1)
    });
    let mut client = RawClient::connect(&cluster.addr(leader));
    for partition in led(&cluster) {
        assert_eq!(
            produce_raw(&mut client, topic, partition, -1),
            ResponseError::NotEnoughReplicas.code(),
            "acks=all to partition {partition} of a leader without followers"
        );
    }
    // Partitions led by the other brokers go on.
    stream.wait_for_acks(&cluster, 200);
    for follower in &followers {
        cluster.proxies[&leader].heal(*follower);
    }
    wait_fully_replicated(&cluster, leader, topic);
    stream.wait_for_acks(&cluster, 300);
    let (acked, sent) = stream.finish();
    check_nothing_lost(&cluster, topic, &acked, sent);
}
