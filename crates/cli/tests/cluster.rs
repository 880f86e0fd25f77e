//! Multi-process clusters on 127.0.0.1 driven by librdkafka: every broker reports the whole
//! cluster, partitions are spread evenly, produce and consume work through any bootstrap
//! address, a request for a partition led elsewhere is redirected (KIP-951), the quorum
//! survives losing its active controller, and a killed broker is fenced and rejoins with its
//! data. ListConfigResources is also checked with the Java client (`STROM_TEST_JAVA_CP`, set
//! by `scripts/test`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::clients::{add_partitions, consume_all, create_topic, delete_topic, produce_all, Rec};
use common::cluster::Cluster;
use common::RawClient;
use kafka_protocol::messages::metadata_response::MetadataResponsePartition;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, MetadataResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use strom_protocol::batch::testing::batch;

const WAIT: Duration = Duration::from_secs(30);

fn records(n: usize, tag: &str) -> Vec<Rec> {
    (0..n)
        .map(|i| Rec {
            key: format!("key-{i}").into_bytes(),
            value: format!("{tag}-{i}").into_bytes(),
            headers: vec![],
        })
        .collect()
}

fn broker_ids(metadata: &MetadataResponse) -> BTreeSet<i32> {
    metadata.brokers.iter().map(|b| b.node_id.0).collect()
}

/// The partitions of `topic` in `metadata` (none if it is not there).
fn partitions<'a>(
    metadata: &'a MetadataResponse,
    topic: &'a str,
) -> impl Iterator<Item = &'a MetadataResponsePartition> {
    metadata
        .topics
        .iter()
        .filter(move |t| t.name.as_deref().map(|n| n.as_str()) == Some(topic))
        .flat_map(|t| &t.partitions)
}

/// Partition → leader of `topic` in `metadata`.
fn leaders(metadata: &MetadataResponse, topic: &str) -> BTreeMap<i32, i32> {
    partitions(metadata, topic)
        .map(|p| (p.partition_index, p.leader_id.0))
        .collect()
}

fn leader_counts(leaders: &BTreeMap<i32, i32>) -> BTreeMap<i32, usize> {
    let mut counts = BTreeMap::new();
    for leader in leaders.values() {
        *counts.entry(*leader).or_default() += 1;
    }
    counts
}

/// Produces through `via`, consumes through `from`, and checks every partition holds what
/// was acknowledged, in order.
fn round_trip(cluster: &Cluster, topic: &str, via: i32, from: i32, tag: &str) {
    let expected = produce_all(&cluster.addr(via), topic, "lz4", &records(300, tag), "all");
    let counts: BTreeMap<i32, usize> = expected.iter().map(|(p, r)| (*p, r.len())).collect();
    let got = consume_all(&cluster.addr(from), topic, &counts);
    for (p, recs) in &expected {
        let read: Vec<&Rec> = got[p].iter().map(|(_, r)| r).collect();
        assert!(
            read.iter().copied().eq(recs.iter()),
            "partition {p} through {via} then {from}"
        );
    }
}

fn create_partitions_raw(client: &mut RawClient, topic: &str, count: i32) -> i16 {
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
    use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
    let req = CreatePartitionsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![CreatePartitionsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_count(count)]);
    client.send(ApiKey::CreatePartitions, 3, &req);
    let response: CreatePartitionsResponse = client.recv(3);
    response.results[0].error_code
}

fn fetch_raw(
    client: &mut RawClient,
    metadata: &MetadataResponse,
    topic: &str,
    partition: i32,
) -> kafka_protocol::messages::FetchResponse {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::FetchRequest;
    let topic_id = metadata
        .topics
        .iter()
        .find(|t| t.name.as_deref().map(|n| n.as_str()) == Some(topic))
        .expect("topic")
        .topic_id;
    let req = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic_id(topic_id)
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_partition_max_bytes(1 << 20)])]);
    client.send(ApiKey::Fetch, 16, &req);
    client.recv(16)
}

fn produce_raw(client: &mut RawClient, topic: &str, partition: i32) -> ProduceResponse {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(Bytes::from(batch(&[b"v"], 0))))])]);
    client.send(ApiKey::Produce, 11, &req);
    client.recv(11)
}

/// The partition directories of `topic` on every broker.
fn partition_dirs(cluster: &Cluster, topic: &str) -> Vec<std::path::PathBuf> {
    cluster
        .brokers()
        .flat_map(|n| {
            std::fs::read_dir(cluster.dir.join(format!("node-{}/logs", n.id)))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.rsplit_once('-'))
                        .is_some_and(|(t, _)| t == topic)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn every_broker_reports_the_whole_cluster_and_spreads_partitions(cluster: &Cluster) {
    let ids: BTreeSet<i32> = cluster.broker_ids().into_iter().collect();
    // A broker serves once it sees itself unfenced; the others learn of it when they apply
    // that record, a Raft heartbeat or a metadata fetch later.
    for id in &ids {
        cluster.wait_for(&format!("broker {id} to list every broker"), WAIT, || {
            broker_ids(&cluster.metadata(*id)) == ids
        });
    }
    let first = *ids.iter().next().expect("a broker");
    create_topic(&cluster.addr(first), "spread", 6);
    for id in &ids {
        cluster.wait_for(&format!("broker {id} to know the topic"), WAIT, || {
            leaders(&cluster.metadata(*id), "spread").len() == 6
        });
        let leaders = leaders(&cluster.metadata(*id), "spread");
        assert_eq!(leaders.len(), 6, "broker {id} knows all six partitions");
        let counts = leader_counts(&leaders);
        assert_eq!(
            counts,
            ids.iter().map(|b| (*b, 2)).collect(),
            "two leaders per broker, as broker {id} reports them"
        );
    }
    // More partitions: placed over the brokers too, and known to every broker.
    add_partitions(&cluster.addr(first), "spread", 9);
    for id in &ids {
        let leaders = leaders(&cluster.metadata(*id), "spread");
        assert_eq!(leaders.len(), 9, "broker {id} knows the new partitions");
        assert_eq!(
            leader_counts(&leaders),
            ids.iter().map(|b| (*b, 3)).collect(),
            "three leaders per broker after adding partitions"
        );
    }
    let mut client = RawClient::connect(&cluster.addr(first));
    assert_eq!(
        create_partitions_raw(&mut client, "spread", 5),
        ResponseError::InvalidPartitions.code(),
        "fewer partitions than the topic has"
    );
    assert_eq!(
        create_partitions_raw(&mut client, "no-such-topic", 5),
        ResponseError::UnknownTopicOrPartition.code()
    );
    let ordered: Vec<i32> = ids.iter().copied().collect();
    for (i, via) in ordered.iter().enumerate() {
        let from = ordered[(i + 1) % ordered.len()];
        let topic = format!("through-{via}");
        create_topic(&cluster.addr(*via), &topic, 6);
        round_trip(cluster, &topic, *via, from, &topic);
    }

    // A partition led elsewhere: NOT_LEADER_OR_FOLLOWER, with the leader and its endpoint.
    let spread = leaders(&cluster.metadata(first), "spread");
    let (partition, leader) = spread
        .iter()
        .find(|(_, leader)| **leader != first)
        .map(|(p, l)| (*p, *l))
        .expect("a partition led by another broker");
    let mut client = RawClient::connect(&cluster.addr(first));
    let response = produce_raw(&mut client, "spread", partition);
    let p = &response.responses[0].partition_responses[0];
    assert_eq!(p.error_code, ResponseError::NotLeaderOrFollower.code());
    assert_eq!(p.current_leader.leader_id.0, leader, "KIP-951 leader hint");
    assert!(
        response.node_endpoints.iter().any(|e| e.node_id.0 == leader
            && e.port == i32::from(cluster.nodes[&leader].client_port.unwrap())),
        "KIP-951 endpoint of the leader: {response:?}"
    );

    // The same for Fetch (v16: CurrentLeader and NodeEndpoints).
    let response = fetch_raw(&mut client, &cluster.metadata(first), "spread", partition);
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.error_code, ResponseError::NotLeaderOrFollower.code());
    assert_eq!(
        p.current_leader.leader_id.0, leader,
        "KIP-951 leader hint in Fetch"
    );
    assert!(
        response.node_endpoints.iter().any(|e| e.node_id.0 == leader
            && e.port == i32::from(cluster.nodes[&leader].client_port.unwrap())),
        "KIP-951 endpoint of the leader in Fetch: {response:?}"
    );

    // Deleting a topic through one broker removes its data from every broker.
    assert_eq!(partition_dirs(cluster, "spread").len(), 9);
    delete_topic(&cluster.addr(first), "spread");
    cluster.wait_for("every broker to delete the topic's logs", WAIT, || {
        partition_dirs(cluster, "spread").is_empty()
    });
    for id in &ids {
        assert!(leaders(&cluster.metadata(*id), "spread").is_empty());
    }
}

/// Two consumers of one group, bootstrapped through different brokers, share a topic whose
/// partitions are spread over the cluster: every record is read once, offsets are committed
/// to the group's coordinator, and a new member resumes after them.
fn a_consumer_group_spans_the_cluster(cluster: &Cluster) {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::message::Message;
    let ids = cluster.broker_ids();
    create_topic(&cluster.addr(ids[0]), "grouped", 6);
    let sent = produce_all(
        &cluster.addr(ids[1]),
        "grouped",
        "none",
        &records(600, "g"),
        "1",
    );
    let consumer = |via: i32| -> BaseConsumer {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.addr(via))
            .set("group.id", "spanning")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        c.subscribe(&["grouped"]).expect("subscribe");
        c
    };
    let members = [consumer(ids[0]), consumer(ids[2])];
    let mut seen: BTreeMap<(i32, i64), Vec<u8>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 600 {
        assert!(Instant::now() < deadline, "read {} of 600", seen.len());
        for m in &members {
            if let Some(Ok(msg)) = m.poll(Duration::from_millis(50)) {
                let first = seen.insert(
                    (msg.partition(), msg.offset()),
                    msg.payload().unwrap_or_default().to_vec(),
                );
                assert!(first.is_none(), "a record was read twice");
            }
        }
    }
    let mut read: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    for ((p, _), value) in seen {
        read.entry(p).or_default().push(value);
    }
    for (p, recs) in &sent {
        let values: Vec<Vec<u8>> = recs.iter().map(|r| r.value.clone()).collect();
        assert_eq!(read[p], values, "partition {p} in order, once");
    }
    for m in &members {
        m.commit_consumer_state(CommitMode::Sync).expect("commit");
    }
    drop(members);
    // A new member starts where the group committed: nothing left to read.
    let late = consumer(ids[1]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while late.assignment().map(|a| a.count()).unwrap_or(0) < 6 {
        assert!(
            Instant::now() < deadline,
            "the new member gets every partition"
        );
        if let Some(Ok(msg)) = late.poll(Duration::from_millis(100)) {
            panic!("a committed record came back: {:?}", msg.offset());
        }
    }
    for _ in 0..10 {
        if let Some(Ok(msg)) = late.poll(Duration::from_millis(100)) {
            panic!("a committed record came back: {:?}", msg.offset());
        }
    }
}

#[test]
fn three_combined_nodes_are_one_cluster_from_every_bootstrap_address() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::combined(dir.path(), 3);
    every_broker_reports_the_whole_cluster_and_spreads_partitions(&cluster);
    a_consumer_group_spans_the_cluster(&cluster);
}

#[test]
fn three_controllers_and_three_brokers_are_one_cluster_and_survive_losing_the_active_controller() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::split(dir.path(), 3, 3);
    every_broker_reports_the_whole_cluster_and_spreads_partitions(&cluster);

    let active = cluster.active_controller(4);
    assert!((1..=3).contains(&active), "a controller leads: {active}");
    cluster.kill9(active);
    let started = Instant::now();
    create_topic(&cluster.addr(5), "after-failover", 3);
    let failover = started.elapsed();
    let next = cluster.active_controller(6);
    assert_ne!(next, active, "another controller took over");
    eprintln!("topic creation worked again {failover:?} after killing the active controller");
    round_trip(&cluster, "after-failover", 6, 4, "after");

    // The old controller restarts and catches up with what was committed without it.
    cluster.restart(active);
    cluster.wait_for("the restarted controller to catch up", WAIT, || {
        let quorum = cluster.quorum(4);
        quorum
            .current_voters
            .iter()
            .all(|v| v.log_end_offset >= quorum.high_watermark)
    });
    create_topic(&cluster.addr(4), "with-all-three", 3);
}

#[test]
fn a_killed_broker_is_fenced_and_rejoins_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::split(dir.path(), 1, 3);
    create_topic(&cluster.addr(2), "kept", 6);
    let expected = produce_all(
        &cluster.addr(2),
        "kept",
        "none",
        &records(600, "kept"),
        "all",
    );
    let before = leaders(&cluster.metadata(2), "kept");

    cluster.kill9(4);
    cluster.wait_for("broker 4 to be fenced", WAIT, || {
        !broker_ids(&cluster.metadata(2)).contains(&4)
    });
    let metadata = cluster.metadata(3);
    let topic = metadata
        .topics
        .iter()
        .find(|t| t.name.as_deref().map(|n| n.as_str()) == Some("kept"))
        .expect("topic");
    for p in &topic.partitions {
        if before[&p.partition_index] == 4 {
            assert_eq!(
                p.leader_id.0, -1,
                "no leader while the only replica is down"
            );
            assert_eq!(p.error_code, ResponseError::LeaderNotAvailable.code());
            assert_eq!(
                p.offline_replicas.iter().map(|b| b.0).collect::<Vec<_>>(),
                vec![4]
            );
        } else {
            assert_eq!(p.leader_id.0, before[&p.partition_index]);
        }
    }

    cluster.restart(4);
    cluster.wait_for("broker 4 to lead its partitions again", WAIT, || {
        leaders(&cluster.metadata(2), "kept") == before
    });
    let counts: BTreeMap<i32, usize> = expected.iter().map(|(p, r)| (*p, r.len())).collect();
    let got = consume_all(&cluster.addr(3), "kept", &counts);
    for (p, recs) in &expected {
        let read: Vec<&Rec> = got[p].iter().map(|(_, r)| r).collect();
        assert!(
            read.iter().copied().eq(recs.iter()),
            "partition {p} after the restart"
        );
    }
}

fn create_raw(client: &mut RawClient, topic: &str, timeout_ms: i32) -> i16 {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(timeout_ms)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_num_partitions(3)
            .with_replication_factor(1)]);
    client.send(ApiKey::CreateTopics, 7, &req);
    let response: CreateTopicsResponse = client.recv(7);
    response.topics[0].error_code
}

#[test]
fn without_a_controller_majority_brokers_keep_serving_and_metadata_changes_are_refused_retriably() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::split(dir.path(), 3, 3);
    create_topic(&cluster.addr(4), "steady", 6);
    let before = produce_all(
        &cluster.addr(4),
        "steady",
        "none",
        &records(300, "before"),
        "all",
    );

    // Two of the three controllers die: no quorum, so no active controller.
    let active = cluster.active_controller(4);
    let other = (1..=3).find(|c| *c != active).expect("another controller");
    cluster.kill9(active);
    cluster.kill9(other);

    // Existing partitions keep taking writes and reads on every broker.
    let expected = produce_all(
        &cluster.addr(6),
        "steady",
        "none",
        &records(300, "during"),
        "all",
    );
    let counts: BTreeMap<i32, usize> = (0..6)
        .map(|p| {
            let n = |m: &BTreeMap<i32, Vec<Rec>>| m.get(&p).map_or(0, Vec::len);
            (p, n(&before) + n(&expected))
        })
        .collect();
    let got = consume_all(&cluster.addr(5), "steady", &counts);
    for (p, recs) in &expected {
        let skip = before.get(p).map_or(0, Vec::len);
        let tail: Vec<&Rec> = got[p].iter().skip(skip).map(|(_, r)| r).collect();
        assert!(
            tail.iter().copied().eq(recs.iter()),
            "partition {p} without a quorum"
        );
    }
    assert_eq!(
        broker_ids(&cluster.metadata(4)),
        BTreeSet::from([4, 5, 6]),
        "no broker is fenced without a controller"
    );

    // A metadata change is refused with a retriable error instead of hanging.
    let mut client = RawClient::connect(&cluster.addr(4));
    let code = create_raw(&mut client, "needs-quorum", 3_000);
    assert!(
        code == ResponseError::RequestTimedOut.code()
            || code == ResponseError::NotController.code(),
        "a retriable error, got {code}"
    );

    // The quorum returns: metadata changes work again.
    cluster.restart(active);
    cluster.restart(other);
    create_topic(&cluster.addr(4), "needs-quorum", 3);
    round_trip(&cluster, "needs-quorum", 5, 6, "after");
}

/// Replicas of each partition of `topic` in `metadata`.
fn replicas(metadata: &MetadataResponse, topic: &str) -> BTreeMap<i32, Vec<i32>> {
    partitions(metadata, topic)
        .map(|p| {
            let replicas = p.replica_nodes.iter().map(|r| r.0).collect();
            (p.partition_index, replicas)
        })
        .collect()
}

#[test]
fn create_partitions_places_replicas_where_the_assignments_say() {
    use rdkafka::admin::{AdminOptions, NewPartitions, NewTopic, TopicReplication};
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::combined(dir.path(), 3);
    let (admin, rt) = common::clients::admin(&cluster.addr(1));
    let created = rt
        .block_on(admin.create_topics(
            &[NewTopic::new("placed", 1, TopicReplication::Fixed(2))],
            &AdminOptions::new(),
        ))
        .expect("create");
    created[0].as_ref().expect("created");
    let grow = |assignment: &[&[i32]], total: usize| {
        let assignment: Vec<&[i32]> = assignment.to_vec();
        let results = rt
            .block_on(admin.create_partitions(
                &[NewPartitions::new("placed", total).assign(&assignment)],
                &AdminOptions::new(),
            ))
            .expect("create partitions");
        results[0].clone().map(|_| ()).map_err(|(_, code)| code)
    };
    // Kafka's checks: one assignment per new partition, each of the topic's replication
    // factor, distinct live brokers.
    use rdkafka::types::RDKafkaErrorCode as C;
    assert_eq!(grow(&[&[3, 1, 2]], 2), Err(C::InvalidReplicaAssignment));
    assert_eq!(grow(&[&[3, 3]], 2), Err(C::InvalidReplicaAssignment));
    assert_eq!(grow(&[&[3, 9]], 2), Err(C::InvalidReplicaAssignment));
    assert_eq!(grow(&[&[3, 1]], 3), Err(C::InvalidReplicaAssignment));
    assert_eq!(grow(&[&[3, 1], &[2, 3]], 3), Ok(()));
    for id in cluster.broker_ids() {
        // Metadata reaches each broker on its own schedule.
        cluster.wait_for("the new partitions", WAIT, || {
            replicas(&cluster.metadata(id), "placed").len() == 3
        });
        let placed = replicas(&cluster.metadata(id), "placed");
        assert_eq!(placed.get(&1), Some(&vec![3, 1]), "broker {id}");
        assert_eq!(placed.get(&2), Some(&vec![2, 3]), "broker {id}");
        // The first assigned replica leads.
        let leaders = leaders(&cluster.metadata(id), "placed");
        assert_eq!((leaders[&1], leaders[&2]), (3, 2), "broker {id}");
    }
    round_trip(&cluster, "placed", 2, 3, "placed");
}

#[test]
fn list_config_resources_names_every_topic_and_broker_of_the_cluster() {
    use kafka_protocol::messages::{ListConfigResourcesRequest, ListConfigResourcesResponse};
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::combined(dir.path(), 3);
    create_topic(&cluster.addr(1), "listed", 1);
    cluster.wait_for("the topic on broker 2", WAIT, || {
        !leaders(&cluster.metadata(2), "listed").is_empty()
    });
    let list = |version: i16, types: Vec<i8>| -> ListConfigResourcesResponse {
        let mut client = RawClient::connect(&cluster.addr(2));
        let request = ListConfigResourcesRequest::default().with_resource_types(types);
        client.send(ApiKey::ListConfigResources, version, &request);
        client.recv(version)
    };
    let named = |response: &ListConfigResourcesResponse| -> Vec<(i8, String)> {
        response
            .config_resources
            .iter()
            .map(|r| (r.resource_type, r.resource_name.to_string()))
            .collect()
    };
    let brokers = list(1, vec![4]);
    assert_eq!(brokers.error_code, 0);
    assert_eq!(
        named(&brokers),
        vec![(4, "1".into()), (4, "2".into()), (4, "3".into())]
    );
    // No types named: every type; topics come first.
    let all = named(&list(1, vec![]));
    assert_eq!(all.first(), Some(&(2, "listed".to_string())), "{all:?}");
    assert_eq!(
        all.iter().filter(|(t, _)| *t == 8).count(),
        3,
        "broker loggers"
    );
    // v0 knows client metrics only (Strom has no subscriptions), and a type outside the
    // version's set fails the request.
    // The Java client's listConfigResources sees the same.
    let java = common::clients::java_step(
        "ConfigsCheck",
        "CONFIGS-CHECK-OK",
        &cluster.addr(3),
        &["list-resources"],
    );
    for line in [
        "RESOURCE TOPIC listed",
        "RESOURCE BROKER 1",
        "RESOURCE BROKER 3",
    ] {
        assert!(java.contains(line), "{line} in\n{java}");
    }
    let v0 = list(0, vec![]);
    assert_eq!((v0.error_code, v0.config_resources.len()), (0, 0));
    assert_eq!(
        list(1, vec![2, 64]).error_code,
        ResponseError::UnsupportedVersion.code()
    );
}
