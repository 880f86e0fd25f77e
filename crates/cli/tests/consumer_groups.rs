//! Consumer groups with real clients: partitions split between members, every record read
//! once, committed offsets that survive restarts, independent groups, a vanished member's
//! partitions moving on, static membership, and Kafka's error codes for bad group requests.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::clients::{create_topic, produce_all, Rec};
use common::{Broker, RawClient};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;

const FAST_GROUPS: &[&str] = &["group.initial.rebalance.delay.ms=0"];

fn records(n: usize) -> Vec<Rec> {
    (0..n)
        .map(|i| Rec {
            key: format!("k{i}").into_bytes(),
            value: format!("v{i}").into_bytes(),
            headers: vec![],
        })
        .collect()
}

fn consumer(addr: &str, group: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("consumer")
}

/// Polls all consumers round robin until `until` holds or the deadline passes.
fn poll_until(
    consumers: &[&BaseConsumer],
    seen: &mut Vec<(usize, i32, i64, Vec<u8>)>,
    until: impl Fn(&[(usize, i32, i64, Vec<u8>)]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !until(seen) {
        assert!(
            Instant::now() < deadline,
            "condition not reached; {} records seen",
            seen.len()
        );
        for (i, c) in consumers.iter().enumerate() {
            if let Some(m) = c.poll(Duration::from_millis(20)) {
                let m = m.expect("consume");
                seen.push((
                    i,
                    m.partition(),
                    m.offset(),
                    m.payload().unwrap_or_default().to_vec(),
                ));
            }
        }
    }
}

fn assigned(c: &BaseConsumer) -> usize {
    c.assignment().map(|a| a.count()).unwrap_or(0)
}

#[test]
fn three_consumers_split_six_partitions_and_read_every_record_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create_topic(&broker.addr, "split", 6);
    let consumers: Vec<BaseConsumer> = (0..3).map(|_| consumer(&broker.addr, "g", &[])).collect();
    for c in &consumers {
        c.subscribe(&["split"]).unwrap();
    }
    let refs: Vec<&BaseConsumer> = consumers.iter().collect();
    let mut seen = Vec::new();
    // The group's first rebalance waits group.initial.rebalance.delay.ms (3 s) for members.
    poll_until(&refs, &mut seen, |_| {
        consumers.iter().all(|c| assigned(c) == 2)
    });
    let expected = produce_all(&broker.addr, "split", "none", &records(3000), "all");
    poll_until(&refs, &mut seen, |s| s.len() >= 3000);
    let unique: BTreeSet<(i32, i64)> = seen.iter().map(|(_, p, o, _)| (*p, *o)).collect();
    assert_eq!(unique.len(), seen.len(), "no record read twice");
    assert_eq!(unique.len(), 3000, "every record read");
    let owners: BTreeMap<i32, BTreeSet<usize>> =
        seen.iter().fold(BTreeMap::new(), |mut m, (c, p, _, _)| {
            m.entry(*p).or_default().insert(*c);
            m
        });
    assert!(
        owners.values().all(|o| o.len() == 1),
        "each partition read by one member: {owners:?}"
    );
    assert_eq!(expected.values().map(Vec::len).sum::<usize>(), 3000);
}

#[test]
fn committed_offsets_survive_a_broker_crash_and_the_group_resumes_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), FAST_GROUPS);
    create_topic(&broker.addr, "resume", 2);
    produce_all(&broker.addr, "resume", "none", &records(1000), "1");
    let committed: BTreeMap<i32, i64> = {
        let c = consumer(&broker.addr, "resumers", &[]);
        c.subscribe(&["resume"]).unwrap();
        let mut seen = Vec::new();
        poll_until(&[&c], &mut seen, |s| s.len() >= 400);
        c.commit_consumer_state(CommitMode::Sync).expect("commit");
        let committed = c.committed(Duration::from_secs(10)).unwrap();
        committed
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(0).max(0)))
            .collect()
    };
    let committed_total: i64 = committed.values().sum();
    assert!(committed_total >= 400, "committed {committed:?}");
    broker.kill9();
    broker.restart();
    assert!(broker.log().contains("loaded consumer groups"));
    let c = consumer(&broker.addr, "resumers", &[]);
    c.subscribe(&["resume"]).unwrap();
    let mut seen = Vec::new();
    poll_until(&[&c], &mut seen, |s| {
        s.len() as i64 >= 1000 - committed_total
    });
    assert_eq!(
        seen.len() as i64,
        1000 - committed_total,
        "exactly the uncommitted records are read"
    );
    for (partition, offset) in &committed {
        let first = seen
            .iter()
            .filter(|(_, p, ..)| p == partition)
            .map(|(_, _, o, _)| *o)
            .min();
        if let Some(first) = first {
            assert_eq!(
                first, *offset,
                "partition {partition} resumes at its committed offset"
            );
        }
    }
}

#[test]
fn two_groups_read_the_same_records_independently() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), FAST_GROUPS);
    create_topic(&broker.addr, "shared", 3);
    produce_all(&broker.addr, "shared", "none", &records(900), "1");
    let a = consumer(&broker.addr, "group-a", &[]);
    let b = consumer(&broker.addr, "group-b", &[]);
    a.subscribe(&["shared"]).unwrap();
    b.subscribe(&["shared"]).unwrap();
    let mut seen = Vec::new();
    poll_until(&[&a, &b], &mut seen, |s| s.len() >= 1800);
    for group in 0..2 {
        let got: BTreeSet<(i32, i64)> = seen
            .iter()
            .filter(|(c, ..)| *c == group)
            .map(|(_, p, o, _)| (*p, *o))
            .collect();
        assert_eq!(got.len(), 900, "group {group} read all 900");
    }
    a.commit_consumer_state(CommitMode::Sync).unwrap();
    let mut raw = RawClient::connect(&broker.addr);
    raw.send(ApiKey::ListGroups, 4, &ListGroupsRequest::default());
    let list: ListGroupsResponse = raw.recv(4);
    let names: BTreeSet<String> = list.groups.iter().map(|g| g.group_id.to_string()).collect();
    assert!(names.contains("group-a") && names.contains("group-b"));
    assert!(list
        .groups
        .iter()
        .all(|g| g.group_state.as_str() == "Stable"));
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Asks FindCoordinator first, as every client does (the first ask creates
/// `__consumer_offsets`); this single broker must coordinate the group.
fn find_coordinator(client: &mut RawClient, group: &str) {
    client.send(
        ApiKey::FindCoordinator,
        3,
        &FindCoordinatorRequest::default().with_key(s(group)),
    );
    let found: FindCoordinatorResponse = client.recv(3);
    assert_eq!(found.error_code, 0, "{found:?}");
}

fn join(
    client: &mut RawClient,
    version: i16,
    group: &str,
    member: &str,
    instance: Option<&str>,
    protocol_type: &str,
) -> JoinGroupResponse {
    let req = JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(s(member))
        .with_group_instance_id(instance.map(s))
        .with_protocol_type(s(protocol_type))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(s("range"))
            .with_metadata(bytes::Bytes::from_static(b"meta"))]);
    client.send(ApiKey::JoinGroup, version, &req);
    client.recv(version)
}

fn sync(client: &mut RawClient, group: &str, generation: i32, member: &str) -> SyncGroupResponse {
    let assignments = vec![
        kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment::default()
            .with_member_id(s(member))
            .with_assignment(bytes::Bytes::from_static(b"assignment")),
    ];
    let req = SyncGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id(generation)
        .with_member_id(s(member))
        .with_assignments(assignments);
    client.send(ApiKey::SyncGroup, 5, &req);
    client.recv(5)
}

fn heartbeat(client: &mut RawClient, group: &str, generation: i32, member: &str) -> i16 {
    let req = HeartbeatRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id(generation)
        .with_member_id(s(member));
    client.send(ApiKey::Heartbeat, 4, &req);
    client.recv::<HeartbeatResponse>(4).error_code
}

#[test]
fn group_requests_get_kafkas_error_codes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), FAST_GROUPS);
    let mut c = RawClient::connect(&broker.addr);
    find_coordinator(&mut c, "g");
    create_topic(&broker.addr, "t", 1);
    assert_eq!(
        join(&mut c, 9, "", "", None, "consumer").error_code,
        E::InvalidGroupId.code()
    );
    let bad_timeout = JoinGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_session_timeout_ms(1)
        .with_protocol_type(s("consumer"));
    c.send(ApiKey::JoinGroup, 9, &bad_timeout);
    assert_eq!(
        c.recv::<JoinGroupResponse>(9).error_code,
        E::InvalidSessionTimeout.code()
    );
    // KIP-394: a new member first gets its id.
    let first = join(&mut c, 9, "g", "", None, "consumer");
    assert_eq!(first.error_code, E::MemberIdRequired.code());
    let member = first.member_id.to_string();
    let joined = join(&mut c, 9, "g", &member, None, "consumer");
    assert_eq!(joined.error_code, 0);
    assert_eq!(joined.leader.as_str(), member);
    assert_eq!(joined.members.len(), 1, "the leader sees the members");
    let generation = joined.generation_id;
    assert_eq!(
        join(&mut c, 9, "g", "", None, "connect").error_code,
        E::InconsistentGroupProtocol.code()
    );
    assert_eq!(
        sync(&mut c, "g", generation + 1, &member).error_code,
        E::IllegalGeneration.code()
    );
    let synced = sync(&mut c, "g", generation, &member);
    assert_eq!(
        (synced.error_code, &synced.assignment[..]),
        (0, &b"assignment"[..])
    );
    assert_eq!(heartbeat(&mut c, "g", generation, &member), 0);
    assert_eq!(
        heartbeat(&mut c, "g", generation, "stranger"),
        E::UnknownMemberId.code()
    );
    assert_eq!(
        heartbeat(&mut c, "g", generation - 1, &member),
        E::IllegalGeneration.code()
    );
    // Offsets: too-large metadata, unknown partitions, wrong generation.
    let commit = |generation: i32, metadata: &str, partition: i32| {
        OffsetCommitRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(s(&member))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(partition)
                    .with_committed_offset(5)
                    .with_committed_metadata(Some(s(metadata)))])])
    };
    let code = |c: &mut RawClient, req: OffsetCommitRequest| {
        c.send(ApiKey::OffsetCommit, 8, &req);
        c.recv::<OffsetCommitResponse>(8).topics[0].partitions[0].error_code
    };
    assert_eq!(
        code(&mut c, commit(generation, &"m".repeat(5000), 0)),
        E::OffsetMetadataTooLarge.code()
    );
    assert_eq!(
        code(&mut c, commit(generation, "ok", 3)),
        E::UnknownTopicOrPartition.code()
    );
    assert_eq!(
        code(&mut c, commit(generation + 5, "ok", 0)),
        E::IllegalGeneration.code()
    );
    assert_eq!(code(&mut c, commit(generation, "ok", 0)), 0);
    // A group with members cannot be deleted; an unknown one is not found.
    c.send(
        ApiKey::DeleteGroups,
        2,
        &DeleteGroupsRequest::default()
            .with_groups_names(vec![GroupId(s("g")), GroupId(s("ghost"))]),
    );
    let deleted: DeleteGroupsResponse = c.recv(2);
    assert_eq!(deleted.results[0].error_code, E::NonEmptyGroup.code());
    assert_eq!(deleted.results[1].error_code, E::GroupIdNotFound.code());
    c.send(
        ApiKey::DescribeGroups,
        5,
        &DescribeGroupsRequest::default().with_groups(vec![GroupId(s("g"))]),
    );
    let described: DescribeGroupsResponse = c.recv(5);
    assert_eq!(described.groups[0].group_state.as_str(), "Stable");
    assert_eq!(described.groups[0].protocol_data.as_str(), "range");
    assert_eq!(
        &described.groups[0].members[0].member_assignment[..],
        b"assignment"
    );
    // Leaving empties the group; then it can be deleted, offsets and all.
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_members(vec![
            kafka_protocol::messages::leave_group_request::MemberIdentity::default()
                .with_member_id(s(&member)),
            kafka_protocol::messages::leave_group_request::MemberIdentity::default()
                .with_member_id(s("stranger")),
        ]);
    c.send(ApiKey::LeaveGroup, 5, &leave);
    let left: LeaveGroupResponse = c.recv(5);
    assert_eq!(
        left.members
            .iter()
            .map(|m| m.error_code)
            .collect::<Vec<_>>(),
        vec![0, E::UnknownMemberId.code()]
    );
    c.send(
        ApiKey::DeleteGroups,
        2,
        &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("g"))]),
    );
    assert_eq!(c.recv::<DeleteGroupsResponse>(2).results[0].error_code, 0);
}

#[test]
fn a_static_member_rejoins_without_a_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), FAST_GROUPS);
    let mut c = RawClient::connect(&broker.addr);
    find_coordinator(&mut c, "static");
    let first = join(&mut c, 9, "static", "", Some("instance-1"), "consumer");
    assert_eq!(
        first.error_code, 0,
        "static members need no member-id round trip"
    );
    let generation = first.generation_id;
    assert_eq!(
        sync(&mut c, "static", generation, &first.member_id).error_code,
        0
    );
    // The same instance comes back (a restarted process) with no member id.
    let again = join(&mut c, 9, "static", "", Some("instance-1"), "consumer");
    assert_eq!(again.error_code, 0);
    assert_eq!(
        again.generation_id, generation,
        "no new generation: no rebalance"
    );
    assert_ne!(again.member_id, first.member_id);
    // The old member id is fenced.
    let old = HeartbeatRequest::default()
        .with_group_id(GroupId(s("static")))
        .with_generation_id(generation)
        .with_member_id(first.member_id.clone())
        .with_group_instance_id(Some(s("instance-1")));
    c.send(ApiKey::Heartbeat, 4, &old);
    assert_eq!(
        c.recv::<HeartbeatResponse>(4).error_code,
        E::FencedInstanceId.code()
    );
    assert_eq!(
        sync(&mut c, "static", generation, &again.member_id)
            .assignment
            .as_ref(),
        b"assignment"
    );
}

#[test]
fn a_member_that_vanishes_loses_its_partitions_after_the_session_timeout() {
    let python =
        std::env::var("STROM_TEST_PYTHON").expect("STROM_TEST_PYTHON: run through scripts/test");
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), FAST_GROUPS);
    create_topic(&broker.addr, "vanish", 4);
    // A consumer in another process joins, then is killed without leaving the group.
    let script = r#"
import sys, time
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "v", "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
c.subscribe(["vanish"])
while not c.assignment():
    c.poll(0.1)
print("ASSIGNED", len(c.assignment()), flush=True)
while True:
    c.poll(0.1)
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", script, &broker.addr])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python consumer");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("ASSIGNED 4"), "{line}");
    let survivor = consumer(&broker.addr, "v", &[]);
    survivor.subscribe(&["vanish"]).unwrap();
    let mut seen = Vec::new();
    poll_until(&[&survivor], &mut seen, |_| assigned(&survivor) == 2);
    child.kill().unwrap();
    child.wait().unwrap();
    // The killed member stops heartbeating; after its 6 s session it is expired and the
    // survivor gets every partition.
    poll_until(&[&survivor], &mut seen, |_| assigned(&survivor) == 4);
    assert!(broker.log().contains("member session expired"));
}

#[test]
fn kip_848_heartbeats_assign_partitions_and_get_kafkas_error_codes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), FAST_GROUPS);
    create_topic(&broker.addr, "t848", 3);
    let mut c = RawClient::connect(&broker.addr);
    find_coordinator(&mut c, "g848");
    let hb = |group: &str, member: &str, epoch: i32| {
        ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_member_id(s(member))
            .with_member_epoch(epoch)
            .with_rebalance_timeout_ms(30_000)
            .with_subscribed_topic_names(Some(vec![TopicName(s("t848"))]))
            .with_topic_partitions(Some(vec![]))
    };
    let send = |c: &mut RawClient, req: ConsumerGroupHeartbeatRequest| {
        c.send(ApiKey::ConsumerGroupHeartbeat, 1, &req);
        c.recv::<ConsumerGroupHeartbeatResponse>(1)
    };
    assert_eq!(
        send(&mut c, hb("", "m1", 0)).error_code,
        E::InvalidRequest.code()
    );
    assert_eq!(
        send(
            &mut c,
            hb("g848", "m1", 0).with_server_assignor(Some(s("sticky-ish")))
        )
        .error_code,
        E::UnsupportedAssignor.code()
    );
    assert_eq!(
        send(
            &mut c,
            hb("g848", "m1", 0).with_subscribed_topic_regex(Some(s("t.*")))
        )
        .error_code,
        E::InvalidRequest.code()
    );
    let joined = send(&mut c, hb("g848", "m1", 0));
    assert_eq!(joined.error_code, 0);
    let epoch = joined.member_epoch;
    let partitions: usize = joined
        .assignment
        .as_ref()
        .unwrap()
        .topic_partitions
        .iter()
        .map(|t| t.partitions.len())
        .sum();
    assert_eq!(partitions, 3, "a lone member gets every partition");
    assert_eq!(
        send(&mut c, hb("g848", "m1", epoch + 3)).error_code,
        E::FencedMemberEpoch.code()
    );
    assert_eq!(
        send(&mut c, hb("g848", "ghost", 5)).error_code,
        E::UnknownMemberId.code()
    );
    // A classic member cannot join a group run by the new protocol.
    assert_eq!(
        join(&mut c, 9, "g848", "", None, "consumer").error_code,
        E::InconsistentGroupProtocol.code()
    );
    // Commits must carry the member's current epoch.
    let commit = |epoch: i32| {
        OffsetCommitRequest::default()
            .with_group_id(GroupId(s("g848")))
            .with_generation_id_or_member_epoch(epoch)
            .with_member_id(s("m1"))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(s("t848")))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(1)])])
    };
    c.send(ApiKey::OffsetCommit, 9, &commit(epoch - 1));
    assert_eq!(
        c.recv::<OffsetCommitResponse>(9).topics[0].partitions[0].error_code,
        E::StaleMemberEpoch.code()
    );
    c.send(ApiKey::OffsetCommit, 9, &commit(epoch));
    assert_eq!(
        c.recv::<OffsetCommitResponse>(9).topics[0].partitions[0].error_code,
        0
    );
    c.send(
        ApiKey::ConsumerGroupDescribe,
        1,
        &ConsumerGroupDescribeRequest::default()
            .with_group_ids(vec![GroupId(s("g848")), GroupId(s("none"))]),
    );
    let described: ConsumerGroupDescribeResponse = c.recv(1);
    assert_eq!(
        (
            described.groups[0].group_state.as_str(),
            described.groups[0].members.len()
        ),
        ("Stable", 1)
    );
    assert_eq!(described.groups[1].error_code, E::GroupIdNotFound.code());
    // Leaving (epoch -1) empties the group.
    let left = send(&mut c, hb("g848", "m1", -1));
    assert_eq!((left.error_code, left.member_epoch), (0, -1));
}

#[test]
fn a_fourth_member_joins_and_a_killed_member_is_replaced_without_skipping_records() {
    let python =
        std::env::var("STROM_TEST_PYTHON").expect("STROM_TEST_PYTHON: run through scripts/test");
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), FAST_GROUPS);
    create_topic(&broker.addr, "churn", 6);
    produce_all(&broker.addr, "churn", "none", &records(1000), "1");
    // Members commit what they read; the cooperative-sticky assignor rebalances incrementally.
    let extra: &[(&str, &str)] = &[
        ("partition.assignment.strategy", "cooperative-sticky"),
        ("enable.auto.commit", "true"),
        ("auto.commit.interval.ms", "200"),
    ];
    let a = consumer(&broker.addr, "churners", extra);
    let b = consumer(&broker.addr, "churners", extra);
    a.subscribe(&["churn"]).unwrap();
    b.subscribe(&["churn"]).unwrap();
    // A third member in another process, which never commits and is killed without leaving.
    let script = r#"
import sys
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "churners", "session.timeout.ms": 6000,
              "heartbeat.interval.ms": 500, "enable.auto.commit": False, "auto.offset.reset": "earliest",
              "partition.assignment.strategy": "cooperative-sticky"})
c.subscribe(["churn"])
while True:
    c.poll(0.1)
    if len(c.assignment()) > 0:
        print("OWNS", len(c.assignment()), flush=True)
"#;
    let mut killed = std::process::Command::new(python)
        .args(["-c", script, &broker.addr])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python consumer");
    // Keep polling the in-process members while waiting for the other process: a member
    // that does not poll does not rejoin, and the rebalance would wait out its timeout.
    let (owns_tx, owns_rx) = std::sync::mpsc::channel();
    let stdout = killed.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if line.starts_with("OWNS") && owns_tx.send(()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let owns = std::cell::Cell::new(false);
    poll_until(&[&a, &b], &mut seen, |_| {
        owns.set(owns.get() || owns_rx.try_recv().is_ok());
        owns.get() && assigned(&a) == 2 && assigned(&b) == 2
    });
    // A fourth member joins; the six partitions are spread over four.
    let d = consumer(&broker.addr, "churners", extra);
    d.subscribe(&["churn"]).unwrap();
    poll_until(&[&a, &b, &d], &mut seen, |_| {
        [assigned(&a), assigned(&b), assigned(&d)]
            .iter()
            .all(|n| (1..=2).contains(n))
    });
    killed.kill().unwrap();
    killed.wait().unwrap();
    produce_all(&broker.addr, "churn", "none", &records(1000), "1");
    // After the killed member's session expires its partitions move to the survivors, who
    // start them from the committed offsets (none: the start), so nothing is skipped.
    poll_until(&[&a, &b, &d], &mut seen, |_| {
        assigned(&a) + assigned(&b) + assigned(&d) == 6
    });
    poll_until(&[&a, &b, &d], &mut seen, |s| {
        s.iter()
            .map(|(_, p, o, _)| (*p, *o))
            .collect::<BTreeSet<_>>()
            .len()
            == 2000
    });
    let offsets: BTreeSet<(i32, i64)> = seen.iter().map(|(_, p, o, _)| (*p, *o)).collect();
    let mut ends = BTreeMap::new();
    for (p, o) in &offsets {
        let end = ends.entry(*p).or_insert(0i64);
        *end = (*end).max(*o + 1);
    }
    assert_eq!(
        ends.values().sum::<i64>(),
        2000,
        "the survivors read every offset of every partition"
    );
    assert!(broker.log().contains("member session expired"));
}
