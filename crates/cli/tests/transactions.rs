//! Transactions against real broker processes. Through the raw protocol: FindCoordinator
//! for transactional ids, InitProducerId, AddPartitionsToTxn (client and batched
//! verify-only forms), AddOffsetsToTxn, EndTxn, DescribeTransactions and ListTransactions
//! with Kafka's error codes, state kept across a restart and a coordinator failover, and
//! timed-out transactions aborted with the producer fenced; partition leaders verify a
//! transaction's first batch with its coordinator (KIP-890 part 1), so a stray or late
//! transactional batch never opens a transaction. With librdkafka: a transactional
//! producer's committed records reach read_committed consumers and aborted ones never do,
//! offsets sent to a transaction commit with it, and markers reach partition leaders on
//! other brokers.

mod common;

use std::time::{Duration, Instant};

use common::clients::{create_topic, create_topic_with, transactional_producer};
use common::cluster::Cluster;
use common::raw::{
    latest_offset, produce_each, produce_to, producer_batch, set_cluster_broker_config,
    READ_COMMITTED, READ_UNCOMMITTED,
};
use common::{Broker, RawClient};
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn txn_id(v: &str) -> TransactionalId {
    TransactionalId(s(v))
}

/// FindCoordinator for a transactional id until it is answered (the first creates
/// `__transaction_state`); returns the coordinator's node id.
fn find_txn_coordinator(client: &mut RawClient, id: &str) -> i32 {
    find_txn_coordinator_except(client, id, -1)
}

/// FindCoordinator until a coordinator other than `except` is answered.
fn find_txn_coordinator_except(client: &mut RawClient, id: &str, except: i32) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        client.send(
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default()
                .with_key(s(id))
                .with_key_type(1),
        );
        let found: FindCoordinatorResponse = client.recv(3);
        if found.error_code == 0 && found.node_id.0 != except {
            return found.node_id.0;
        }
        assert!(
            [0, E::CoordinatorNotAvailable.code()].contains(&found.error_code),
            "{found:?}"
        );
        assert!(
            Instant::now() < deadline,
            "no transaction coordinator: {found:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn init(client: &mut RawClient, id: &str, timeout_ms: i32) -> InitProducerIdResponse {
    client.send(
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(txn_id(id)))
            .with_transaction_timeout_ms(timeout_ms),
    );
    client.recv(4)
}

/// InitProducerId, retried while the coordinator loads or aborts an earlier transaction.
fn init_ok(client: &mut RawClient, id: &str, timeout_ms: i32) -> (i64, i16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = init(client, id, timeout_ms);
        if r.error_code == 0 {
            return (r.producer_id.0, r.producer_epoch);
        }
        assert!(
            [
                E::ConcurrentTransactions.code(),
                E::CoordinatorLoadInProgress.code(),
                E::NotCoordinator.code()
            ]
            .contains(&r.error_code),
            "{r:?}"
        );
        assert!(
            Instant::now() < deadline,
            "InitProducerId never succeeded: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn topics(partitions: &[(&str, &[i32])]) -> Vec<AddPartitionsToTxnTopic> {
    partitions
        .iter()
        .map(|(t, ps)| {
            AddPartitionsToTxnTopic::default()
                .with_name(TopicName(s(t)))
                .with_partitions(ps.to_vec())
        })
        .collect()
}

/// AddPartitionsToTxn v3: the error code of every partition, in order.
fn add(
    client: &mut RawClient,
    id: &str,
    (pid, epoch): (i64, i16),
    partitions: &[(&str, &[i32])],
) -> Vec<(String, i32, i16)> {
    client.send(
        ApiKey::AddPartitionsToTxn,
        3,
        &AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(txn_id(id))
            .with_v3_and_below_producer_id(ProducerId(pid))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(topics(partitions)),
    );
    let r: AddPartitionsToTxnResponse = client.recv(3);
    r.results_by_topic_v3_and_below
        .iter()
        .flat_map(|t| {
            t.results_by_partition.iter().map(move |p| {
                (
                    t.name.to_string(),
                    p.partition_index,
                    p.partition_error_code,
                )
            })
        })
        .collect()
}

fn end(
    client: &mut RawClient,
    version: i16,
    id: &str,
    (pid, epoch): (i64, i16),
    commit: bool,
) -> i16 {
    client.send(
        ApiKey::EndTxn,
        version,
        &EndTxnRequest::default()
            .with_transactional_id(txn_id(id))
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
            .with_committed(commit),
    );
    let r: EndTxnResponse = client.recv(version);
    r.error_code
}

fn describe(client: &mut RawClient, id: &str) -> describe_transactions_response::TransactionState {
    client.send(
        ApiKey::DescribeTransactions,
        0,
        &DescribeTransactionsRequest::default().with_transactional_ids(vec![txn_id(id)]),
    );
    let mut r: DescribeTransactionsResponse = client.recv(0);
    r.transaction_states.remove(0)
}

fn wait_for_state(
    client: &mut RawClient,
    id: &str,
    state: &str,
) -> describe_transactions_response::TransactionState {
    wait_for_states(client, id, &[state])
}

/// DescribeTransactions until the id is in one of `states` (retrying while its partition
/// loads).
fn wait_for_states(
    client: &mut RawClient,
    id: &str,
    states: &[&str],
) -> describe_transactions_response::TransactionState {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = describe(client, id);
        if d.error_code == 0 && states.contains(&d.transaction_state.as_str()) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never reached {states:?}: {d:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_transaction_goes_from_init_through_commit_with_kafkas_answers_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    create_topic(&broker.addr, "t", 3);
    let mut c = RawClient::connect(&broker.addr);
    assert_eq!(find_txn_coordinator(&mut c, "tx-1"), 1);
    // The group's offsets partition must exist for its marker.
    c.send(
        ApiKey::FindCoordinator,
        3,
        &FindCoordinatorRequest::default().with_key(s("g")),
    );
    let _: FindCoordinatorResponse = c.recv(3);

    let first = init_ok(&mut c, "tx-1", 60_000);
    assert_eq!(first.1, 0);
    let producer = init_ok(&mut c, "tx-1", 60_000);
    assert_eq!(producer, (first.0, 1), "a second init bumps the epoch");
    assert_eq!(
        init(&mut c, "tx-1", 900_001).error_code,
        E::InvalidTransactionTimeout.code()
    );

    // Unknown partitions fail the whole request; the others are not attempted.
    assert_eq!(
        add(&mut c, "tx-1", producer, &[("t", &[0]), ("nope", &[0])]),
        vec![
            ("nope".into(), 0, E::UnknownTopicOrPartition.code()),
            ("t".into(), 0, E::OperationNotAttempted.code())
        ]
    );
    assert_eq!(
        add(&mut c, "tx-1", (first.0, 0), &[("t", &[0])]),
        vec![("t".into(), 0, E::ProducerFenced.code())]
    );
    assert_eq!(
        add(&mut c, "tx-1", producer, &[("t", &[0, 1])]),
        vec![("t".into(), 0, 0), ("t".into(), 1, 0)]
    );
    c.send(
        ApiKey::AddOffsetsToTxn,
        3,
        &AddOffsetsToTxnRequest::default()
            .with_transactional_id(txn_id("tx-1"))
            .with_producer_id(ProducerId(producer.0))
            .with_producer_epoch(producer.1)
            .with_group_id(GroupId(s("g"))),
    );
    let added: AddOffsetsToTxnResponse = c.recv(3);
    assert_eq!(added.error_code, 0);

    // A partition leader verifying (v4, batched): in the transaction or not.
    c.send(
        ApiKey::AddPartitionsToTxn,
        4,
        &AddPartitionsToTxnRequest::default().with_transactions(vec![
            AddPartitionsToTxnTransaction::default()
                .with_transactional_id(txn_id("tx-1"))
                .with_producer_id(ProducerId(producer.0))
                .with_producer_epoch(producer.1)
                .with_verify_only(true)
                .with_topics(topics(&[("t", &[1, 2])])),
            AddPartitionsToTxnTransaction::default()
                .with_transactional_id(txn_id("unknown"))
                .with_producer_id(ProducerId(5))
                .with_producer_epoch(0)
                .with_verify_only(true)
                .with_topics(topics(&[("t", &[0])])),
        ]),
    );
    let verified: AddPartitionsToTxnResponse = c.recv(4);
    let codes: Vec<Vec<i16>> = verified
        .results_by_transaction
        .iter()
        .map(|t| {
            t.topic_results
                .iter()
                .flat_map(|r| {
                    r.results_by_partition
                        .iter()
                        .map(|p| p.partition_error_code)
                })
                .collect()
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            vec![0, E::TransactionAbortable.code()],
            vec![E::InvalidProducerIdMapping.code()]
        ]
    );

    let d = describe(&mut c, "tx-1");
    assert_eq!(d.error_code, 0);
    assert_eq!(d.transaction_state.as_str(), "Ongoing");
    assert_eq!((d.producer_id.0, d.producer_epoch), producer);
    assert_eq!(d.transaction_timeout_ms, 60_000);
    let mut described: Vec<(String, Vec<i32>)> = d
        .topics
        .iter()
        .map(|t| (t.topic.to_string(), t.partitions.clone()))
        .collect();
    described.sort();
    assert_eq!(described.len(), 2, "{described:?}");
    assert_eq!(described[1], ("t".to_string(), vec![0, 1]));
    assert_eq!(described[0].0, "__consumer_offsets");
    assert_eq!(
        describe(&mut c, "missing").error_code,
        E::TransactionalIdNotFound.code()
    );

    c.send(
        ApiKey::ListTransactions,
        1,
        &ListTransactionsRequest::default()
            .with_state_filters(vec![s("Ongoing"), s("Bogus")])
            .with_duration_filter(-1),
    );
    let listed: ListTransactionsResponse = c.recv(1);
    assert_eq!(listed.error_code, 0);
    assert_eq!(listed.unknown_state_filters, vec![s("Bogus")]);
    assert_eq!(listed.transaction_states.len(), 1);
    assert_eq!(
        listed.transaction_states[0].transactional_id.as_str(),
        "tx-1"
    );
    c.send(
        ApiKey::ListTransactions,
        1,
        &ListTransactionsRequest::default().with_duration_filter(3_600_000),
    );
    let long_running: ListTransactionsResponse = c.recv(1);
    assert!(long_running.transaction_states.is_empty());

    assert_eq!(
        end(&mut c, 3, "tx-1", (first.0, 0), true),
        E::ProducerFenced.code()
    );
    assert_eq!(
        end(&mut c, 1, "tx-1", (first.0, 0), true),
        E::InvalidProducerEpoch.code(),
        "clients before PRODUCER_FENCED get INVALID_PRODUCER_EPOCH"
    );
    assert_eq!(end(&mut c, 3, "tx-1", producer, true), 0);
    let d = wait_for_state(&mut c, "tx-1", "CompleteCommit");
    assert!(d.topics.is_empty());
    assert_eq!(
        end(&mut c, 3, "tx-1", producer, true),
        0,
        "a retried commit"
    );
    assert_eq!(
        end(&mut c, 3, "tx-1", producer, false),
        E::InvalidTxnState.code()
    );
    assert_eq!(
        end(&mut c, 3, "nobody", producer, true),
        E::InvalidProducerIdMapping.code()
    );

    // The state is in __transaction_state: a restarted broker loads it.
    drop(c);
    assert!(broker.terminate().success());
    broker.restart();
    let mut c = RawClient::connect(&broker.addr);
    find_txn_coordinator(&mut c, "tx-1");
    let d = wait_for_state(&mut c, "tx-1", "CompleteCommit");
    assert_eq!((d.producer_id.0, d.producer_epoch), producer);
    assert_eq!(init_ok(&mut c, "tx-1", 60_000), (producer.0, 2));
}

#[test]
fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        &["transaction.abort.timed.out.transaction.cleanup.interval.ms=200"],
    );
    create_topic(&broker.addr, "t", 1);
    let mut c = RawClient::connect(&broker.addr);
    find_txn_coordinator(&mut c, "slow");
    let producer = init_ok(&mut c, "slow", 1000);
    assert_eq!(
        add(&mut c, "slow", producer, &[("t", &[0])]),
        vec![("t".into(), 0, 0)]
    );
    let d = wait_for_state(&mut c, "slow", "CompleteAbort");
    assert_eq!(
        d.producer_epoch,
        producer.1 + 1,
        "the abort fenced the producer"
    );
    assert_eq!(
        end(&mut c, 3, "slow", producer, true),
        E::ProducerFenced.code()
    );
    assert_eq!(
        add(&mut c, "slow", producer, &[("t", &[0])]),
        vec![("t".into(), 0, E::ProducerFenced.code())]
    );
}

#[test]
fn an_ongoing_transaction_survives_losing_its_coordinator_and_the_new_one_fences_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::combined(dir.path(), 3);
    create_topic(&cluster.bootstrap(), "t", 1);
    let mut c = RawClient::connect(&cluster.addr(1));
    let old = find_txn_coordinator(&mut c, "ftx");
    let mut c = RawClient::connect(&cluster.addr(old));
    let producer = init_ok(&mut c, "ftx", 60_000);
    assert_eq!(
        add(&mut c, "ftx", producer, &[("t", &[0])]),
        vec![("t".into(), 0, 0)]
    );
    // Acknowledged means on every in-sync replica of __transaction_state.
    drop(c);
    cluster.kill9(old);
    let via = cluster
        .broker_ids()
        .into_iter()
        .find(|b| *b != old)
        .unwrap();
    let mut c = RawClient::connect(&cluster.addr(via));
    let new = find_txn_coordinator_except(&mut c, "ftx", old);
    let mut c = RawClient::connect(&cluster.addr(new));
    let d = wait_for_state(&mut c, "ftx", "Ongoing");
    assert_eq!((d.producer_id.0, d.producer_epoch), producer);
    assert_eq!(d.topics.len(), 1);
    assert_eq!(d.topics[0].partitions, vec![0]);
    // A new producer instance: the new coordinator aborts the open transaction with the
    // next epoch and asks it to retry; the old instance is fenced.
    assert_eq!(
        init(&mut c, "ftx", 60_000).error_code,
        E::ConcurrentTransactions.code()
    );
    let d = wait_for_states(&mut c, "ftx", &["PrepareAbort", "CompleteAbort"]);
    assert_eq!(d.producer_epoch, producer.1 + 1);
    assert_eq!(
        end(&mut c, 3, "ftx", producer, true),
        E::ProducerFenced.code()
    );
}

#[test]
fn librdkafkas_transactional_producer_initializes_commits_and_aborts_through_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create_topic(&broker.addr, "t", 2);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("transactional.id", "rdkafka-tx")
        .set("transaction.timeout.ms", "30000")
        .create()
        .expect("transactional producer");
    let timeout = Duration::from_secs(30);
    producer
        .init_transactions(timeout)
        .expect("init_transactions");
    let mut c = RawClient::connect(&broker.addr);
    let d = wait_for_state(&mut c, "rdkafka-tx", "Empty");
    let first_epoch = d.producer_epoch;
    for (round, commit) in [(0, true), (1, false)] {
        producer.begin_transaction().expect("begin_transaction");
        for i in 0..10 {
            let key = format!("{round}-{i}");
            producer
                .send(BaseRecord::to("t").key(&key).payload("value"))
                .expect("enqueue");
        }
        producer.flush(timeout).expect("flush");
        let d = wait_for_state(&mut c, "rdkafka-tx", "Ongoing");
        assert!(
            !d.topics.is_empty(),
            "librdkafka added its partitions: {d:?}"
        );
        if commit {
            producer
                .commit_transaction(timeout)
                .expect("commit_transaction");
            wait_for_state(&mut c, "rdkafka-tx", "CompleteCommit");
        } else {
            producer
                .abort_transaction(timeout)
                .expect("abort_transaction");
            wait_for_state(&mut c, "rdkafka-tx", "CompleteAbort");
        }
    }
    assert_eq!(describe(&mut c, "rdkafka-tx").producer_epoch, first_epoch);
    // A second instance with the same transactional id fences the first.
    let second: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("transactional.id", "rdkafka-tx")
        .create()
        .expect("second producer");
    second
        .init_transactions(timeout)
        .expect("second init_transactions");
    assert_eq!(
        describe(&mut c, "rdkafka-tx").producer_epoch,
        first_epoch + 1
    );
    producer.begin_transaction().expect("begin locally");
    producer
        .send(BaseRecord::to("t").key("late").payload("value"))
        .expect("enqueue");
    let _ = producer.flush(Duration::from_secs(5));
    let fenced = producer.commit_transaction(timeout);
    assert!(fenced.is_err(), "the first instance is fenced: {fenced:?}");
}

/// One transaction of `count` records keyed `<prefix>-<i>`, committed or aborted.
fn transaction(producer: &BaseProducer, topic: &str, prefix: &str, count: usize, commit: bool) {
    let timeout = Duration::from_secs(60);
    producer.begin_transaction().expect("begin_transaction");
    for i in 0..count {
        let key = format!("{prefix}-{i}");
        producer
            .send(BaseRecord::to(topic).key(&key).payload("value"))
            .expect("enqueue");
    }
    producer.flush(timeout).expect("flush");
    if commit {
        producer
            .commit_transaction(timeout)
            .expect("commit_transaction");
    } else {
        producer
            .abort_transaction(timeout)
            .expect("abort_transaction");
    }
}

/// Every key of `topic` (all `partitions`) a consumer at `isolation` reads: waits for
/// `expected` records, then a moment longer for any that should not be there.
fn read_keys(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    isolation: &str,
    expected: usize,
) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut keys = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut settle: Option<Instant> = None;
    loop {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            keys.push(String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned());
        }
        if keys.len() >= expected && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_secs(1));
        }
        if settle.is_some_and(|at| Instant::now() > at) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{isolation}: read {} of {expected}",
            keys.len()
        );
    }
    keys.sort();
    keys
}

fn keys(prefixes: &[&str], count: usize) -> Vec<String> {
    let mut keys: Vec<String> = prefixes
        .iter()
        .flat_map(|p| (0..count).map(move |i| format!("{p}-{i}")))
        .collect();
    keys.sort();
    keys
}

#[test]
fn read_committed_consumers_see_committed_transactions_only_and_offsets_commit_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create_topic(&broker.addr, "out", 3);
    create_topic(&broker.addr, "in", 1);
    let producer = transactional_producer(&broker.addr, "e2e");
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "g-tx")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = group.group_metadata().expect("group metadata");
    let timeout = Duration::from_secs(60);
    let offsets = |offset: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("in", 0, Offset::Offset(offset))
            .unwrap();
        tpl
    };
    // Commit, abort, commit; the first two also move the group's offset.
    producer.begin_transaction().unwrap();
    for i in 0..30 {
        let key = format!("c1-{i}");
        producer
            .send(BaseRecord::to("out").key(&key).payload("v"))
            .unwrap();
    }
    producer.flush(timeout).expect("flush");
    producer
        .send_offsets_to_transaction(&offsets(10), &metadata, timeout)
        .expect("send_offsets_to_transaction");
    producer.commit_transaction(timeout).expect("commit");
    producer.begin_transaction().unwrap();
    for i in 0..30 {
        let key = format!("a2-{i}");
        producer
            .send(BaseRecord::to("out").key(&key).payload("v"))
            .unwrap();
    }
    producer.flush(timeout).expect("flush");
    producer
        .send_offsets_to_transaction(&offsets(20), &metadata, timeout)
        .expect("send_offsets_to_transaction");
    producer.abort_transaction(timeout).expect("abort");
    transaction(&producer, "out", "c3", 30, true);

    assert_eq!(
        read_keys(&broker.addr, "out", 3, "read_committed", 60),
        keys(&["c1", "c3"], 30)
    );
    assert_eq!(
        read_keys(&broker.addr, "out", 3, "read_uncommitted", 90),
        keys(&["a2", "c1", "c3"], 30)
    );
    let mut asked = TopicPartitionList::new();
    asked.add_partition("in", 0);
    let committed = group
        .committed_offsets(asked, timeout)
        .expect("committed offsets");
    assert_eq!(
        committed.find_partition("in", 0).map(|e| e.offset()),
        Some(Offset::Offset(10)),
        "the aborted transaction's offsets were not committed"
    );
    let mut c = RawClient::connect(&broker.addr);
    wait_for_state(&mut c, "e2e", "CompleteCommit");
}

#[test]
fn markers_reach_partition_leaders_on_every_broker_of_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::combined(dir.path(), 3);
    create_topic_with(&cluster.bootstrap(), "spread", 6, 3, &[]);
    let producer = transactional_producer(&cluster.bootstrap(), "spread-tx");
    transaction(&producer, "spread", "c1", 120, true);
    transaction(&producer, "spread", "a2", 120, false);
    transaction(&producer, "spread", "c3", 120, true);
    assert_eq!(
        read_keys(&cluster.bootstrap(), "spread", 6, "read_committed", 240),
        keys(&["c1", "c3"], 120)
    );
    // Leaders of the six partitions are spread over the brokers: markers went to each.
    let metadata = cluster.metadata(1);
    let leaders: std::collections::BTreeSet<i32> = metadata
        .topics
        .iter()
        .filter(|t| t.name.as_ref().is_some_and(|n| n.as_str() == "spread"))
        .flat_map(|t| t.partitions.iter().map(|p| p.leader_id.0))
        .collect();
    assert!(leaders.len() > 1, "leaders {leaders:?}");
}

#[test]
fn a_transactional_batch_outside_its_transaction_is_refused_and_leaves_no_transaction_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::combined(dir.path(), 3);
    let topic = "verified";
    create_topic_with(&cluster.bootstrap(), topic, 6, 1, &[]);
    let mut c = RawClient::connect(&cluster.addr(1));
    let coordinator = find_txn_coordinator(&mut c, "v-1");
    let mut coord = RawClient::connect(&cluster.addr(coordinator));
    let producer = init_ok(&mut coord, "v-1", 60_000);
    // Six partitions over three brokers: the coordinator leads some, others lead the rest.
    let leaders: std::collections::BTreeMap<i32, i32> = cluster
        .metadata(coordinator)
        .topics
        .iter()
        .filter(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (p.partition_index, p.leader_id.0))
        })
        .collect();
    let led_by = |local: bool| {
        *leaders
            .iter()
            .find(|(_, l)| (**l == coordinator) == local)
            .unwrap_or_else(|| panic!("{leaders:?}"))
            .0
    };
    let (local, remote) = (led_by(true), led_by(false));
    let mut clients: std::collections::BTreeMap<i32, RawClient> = [local, remote]
        .into_iter()
        .map(|p| (p, RawClient::connect(&cluster.addr(leaders[&p]))))
        .collect();
    let batch = |(pid, epoch): (i64, i16), sequence, values: &[&str]| {
        producer_batch(pid, epoch, sequence, values, true)
    };

    for (partition, l) in &mut clients {
        let how = format!("partition {partition} led by {}", leaders[partition]);
        // Not in the transaction: refused, nothing written.
        let (code, message, _) = produce_to(
            l,
            Some("v-1"),
            topic,
            *partition,
            batch(producer, 0, &["stray"]),
        );
        assert_eq!(
            (code, message.as_deref()),
            (
                E::InvalidTxnState.code(),
                Some("Partition was not added to the transaction")
            ),
            "{how}"
        );
        // Without the request's transactional id there is nothing to verify against.
        let (code, ..) = produce_to(l, None, topic, *partition, batch(producer, 0, &["anon"]));
        assert_eq!(code, E::InvalidTxnState.code(), "{how}");
        assert_eq!(
            latest_offset(l, topic, *partition, READ_UNCOMMITTED),
            0,
            "{how}"
        );
    }
    // One request carries one producer's batches (Kafka: "Transactional records contained
    // more than one producer ID"); nothing of it is written.
    let neighbour = *leaders
        .iter()
        .find(|(p, l)| **l == coordinator && **p != local)
        .unwrap_or_else(|| panic!("{leaders:?}"))
        .0;
    let mixed = produce_each(
        &mut coord,
        Some("v-1"),
        topic,
        vec![
            (local, batch(producer, 0, &["mine"])),
            (neighbour, batch((producer.0 + 1, 0), 0, &["another's"])),
        ],
    );
    let codes: Vec<i16> = mixed.iter().map(|r| r.0).collect();
    assert_eq!(
        codes,
        [
            E::InvalidTxnState.code(),
            E::InvalidProducerIdMapping.code()
        ]
    );
    for partition in [local, neighbour] {
        assert_eq!(
            latest_offset(&mut coord, topic, partition, READ_UNCOMMITTED),
            0
        );
    }
    assert_eq!(
        add(&mut coord, "v-1", producer, &[(topic, &[local, remote])]),
        vec![
            (topic.into(), local.min(remote), 0),
            (topic.into(), local.max(remote), 0)
        ]
    );
    for (partition, l) in &mut clients {
        let first = produce_to(
            l,
            Some("v-1"),
            topic,
            *partition,
            batch(producer, 0, &["a", "b"]),
        );
        assert_eq!(first, (0, None, 0), "partition {partition}");
        // The transaction is open here now: its next batch is not asked about again.
        let next = produce_to(
            l,
            Some("v-1"),
            topic,
            *partition,
            batch(producer, 2, &["c"]),
        );
        assert_eq!(next, (0, None, 2), "partition {partition}");
        assert_eq!(latest_offset(l, topic, *partition, READ_COMMITTED), 0);
    }
    assert_eq!(end(&mut coord, 3, "v-1", producer, false), 0);
    wait_for_state(&mut coord, "v-1", "CompleteAbort");
    for (partition, l) in &mut clients {
        // The marker is in (offset 3). A late batch of the aborted transaction, same epoch
        // and next sequence, would open a transaction no coordinator will end and hold the
        // last stable offset back for good: it is refused.
        let (code, ..) = produce_to(
            l,
            Some("v-1"),
            topic,
            *partition,
            batch(producer, 3, &["late"]),
        );
        assert_eq!(code, E::InvalidTxnState.code(), "partition {partition}");
        assert_eq!(latest_offset(l, topic, *partition, READ_UNCOMMITTED), 4);
        assert_eq!(latest_offset(l, topic, *partition, READ_COMMITTED), 4);
    }

    // A new instance fences the old one; the old epoch's batch is refused with the error a
    // fenced producer expects from a produce.
    let newer = init_ok(&mut coord, "v-1", 60_000);
    assert_eq!(newer, (producer.0, producer.1 + 1));
    let l = clients.get_mut(&remote).unwrap();
    let (code, ..) = produce_to(
        l,
        Some("v-1"),
        topic,
        remote,
        batch(producer, 3, &["zombie"]),
    );
    assert_eq!(code, E::InvalidProducerEpoch.code());

    // Verification off, for the whole cluster at runtime: the same kind of stray batch is
    // appended and opens a transaction that its coordinator knows nothing of, which holds
    // read_committed consumers back.
    set_cluster_broker_config(&mut c, "transaction.partition.verification.enable", "false");
    cluster.wait_for("verification to be off", Duration::from_secs(30), || {
        produce_to(
            l,
            Some("v-1"),
            topic,
            remote,
            batch(newer, 0, &["unchecked"]),
        )
        .0 == 0
    });
    assert_eq!(latest_offset(l, topic, remote, READ_UNCOMMITTED), 5);
    assert_eq!(latest_offset(l, topic, remote, READ_COMMITTED), 4);
}
