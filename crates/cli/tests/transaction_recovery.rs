//! Issue 7's crash guarantee with real processes and real clients: "a crash at any step
//! leaves every transaction either committed or aborted after recovery". A 3-node cluster
//! (RF=3 topic, `min.insync.replicas=2`) runs librdkafka transactional producers, each
//! writing to several partitions per transaction, in some also committing an offset for its
//! consumer group (`send_offsets_to_transaction`), and committing or aborting by a seeded
//! choice, while the test kill -9s and restarts brokers in turn — transaction coordinators
//! (FindCoordinator key type 1), some caught with a transaction prepared and its markers in
//! flight, partition leaders, some while such markers are due to them, and any broker, at
//! seeded moments, sometimes before the restarted one is back in sync. The producers then
//! stop, each abandoning an open transaction, and the coordinators' timeout
//! (`transaction.timeout.ms` 5000 on the producers) aborts what is left. After recovery:
//!
//! - ListTransactions and DescribeTransactions on every broker: every transactional id is
//!   coordinated by exactly one broker and none is Ongoing or Prepare*; those whose last
//!   transaction was abandoned with its records delivered are CompleteAbort;
//! - every partition: ListOffsets read_committed (last stable offset) equals
//!   read_uncommitted (high watermark);
//! - a read_committed consumer sees each transaction whole or not at all, every commit the
//!   client saw succeed whole, and nothing of a transaction never asked to commit;
//! - each group's committed offset is the one sent by the last visible transaction that
//!   sent offsets: offsets commit and abort with the records;
//! - every replica of every partition holds the same bytes.
//!
//! The seed drives the kill schedule and the producers' choices; it is printed, and
//! `STROM_TXN_RECOVERY_SEED=<seed>` replays it (the choices exactly, the timing as the
//! machine allows). `STROM_TXN_RECOVERY_ROUNDS=<n>` runs more kill rounds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::RawClient;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "txn-recovery";
const PARTITIONS: i32 = 6;
const PRODUCERS: usize = 4;
const ROUNDS_DEFAULT: usize = 10;
/// The producers' `transaction.timeout.ms`: what an abandoned transaction waits before the
/// coordinator aborts it.
const TXN_TIMEOUT_MS: u64 = 5_000;
/// How long one librdkafka transactional call may take before it reports a timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `send_offsets_to_transaction`, asked to give up after [`CALL_TIMEOUT`], may take
/// before the test stops waiting for it (see [`send_offsets`]).
const SEND_OFFSETS_DEADLINE: Duration = Duration::from_secs(30);
/// Failure deadline for anything the cluster must reach (leaders, ISRs, recovery).
const WAIT: Duration = Duration::from_secs(60);
const TRANSACTION_STATE: &str = "__transaction_state";
const TRANSACTION_STATE_PARTITIONS: i32 = 5;
const CONSUMER_OFFSETS: &str = "__consumer_offsets";
const CONSUMER_OFFSETS_PARTITIONS: i32 = 5;
/// States in which a transaction is not finished.
const UNFINISHED: [&str; 4] = [
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "PrepareEpochFence",
];
const FINISHED: [&str; 3] = ["Empty", "CompleteCommit", "CompleteAbort"];

type TxnProducer = ThreadedProducer<DefaultProducerContext>;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn transactional_id(producer: usize) -> String {
    format!("recovery-{producer}")
}

/// The consumer group whose offsets producer `producer`'s transactions commit.
fn group_id(producer: usize) -> String {
    format!("recovery-group-{producer}")
}

fn seed() -> u64 {
    std::env::var("STROM_TXN_RECOVERY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// What the client knows about how a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// `commit_transaction` returned success: every record must be visible.
    Committed,
    /// `commit_transaction` was called but did not succeed: all or nothing.
    CommitUnknown,
    /// Never asked to commit (aborted, failed before the commit, or abandoned before its
    /// records were all delivered): nothing may be visible.
    NeverCommitted,
    /// Left open with every record delivered (so in the coordinator's Ongoing transaction)
    /// when the producer stopped: nothing may be visible, and the coordinator's timeout
    /// must have aborted it.
    Abandoned,
}

/// One transaction as its producer thread ran it.
#[derive(Debug, Clone)]
struct Txn {
    producer: usize,
    number: u64,
    count: usize,
    /// Whether it also committed the offset `number + 1` for its producer's group.
    offsets: bool,
    outcome: Outcome,
}

/// The value a record carries: `<producer>|<transaction number>|<index>|<count>`.
fn tag(producer: usize, number: u64, index: usize, count: usize) -> String {
    format!("{producer}|{number}|{index}|{count}")
}

fn parse_tag(value: &str) -> (usize, u64, usize, usize) {
    let parts: Vec<&str> = value.split('|').collect();
    assert_eq!(parts.len(), 4, "not a test record: {value:?}");
    (
        parts[0].parse().unwrap(),
        parts[1].parse().unwrap(),
        parts[2].parse().unwrap(),
        parts[3].parse().unwrap(),
    )
}

fn new_producer(bootstrap: &str, id: &str) -> Result<TxnProducer, KafkaError> {
    let producer: TxnProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", id)
        .set("transaction.timeout.ms", TXN_TIMEOUT_MS.to_string())
        .set("linger.ms", "5")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()?;
    producer.init_transactions(CALL_TIMEOUT)?;
    Ok(producer)
}

/// A transaction the producer thread is about to run, drawn from its seeded generator.
struct Plan {
    count: usize,
    partitions: Vec<i32>,
    offsets: bool,
    commit: bool,
}

fn plan(rng: &mut StdRng) -> Plan {
    let mut all: Vec<i32> = (0..PARTITIONS).collect();
    all.shuffle(rng);
    let spread = rng.gen_range(2..=4);
    Plan {
        count: rng.gen_range(spread..=12),
        partitions: all[..spread].to_vec(),
        offsets: rng.gen_bool(0.5),
        commit: rng.gen_bool(0.6),
    }
}

/// Shared between the test and the producer threads.
struct Progress {
    stop: AtomicBool,
    /// Transactions whose commit the client saw succeed.
    committed: AtomicUsize,
}

/// Runs transactions until told to stop, then abandons one open transaction (its producer
/// is dropped without ending it). A producer that fails in a way the client cannot recover
/// from is replaced by a new instance, whose `init_transactions` fences the old one.
fn produce(bootstrap: &str, producer: usize, seed: u64, progress: &Progress) -> Vec<Txn> {
    let mut rng =
        StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(producer as u64 + 1));
    let id = transactional_id(producer);
    // A consumer that never joins: only its group's metadata, for the offsets transactions
    // commit.
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group_id(producer))
        .create()
        .expect("group consumer");
    let group = Arc::new(group.group_metadata().expect("group metadata"));
    let mut txns = Vec::new();
    let mut client: Option<Arc<TxnProducer>> = None;
    let mut number = 0;
    loop {
        let stopping = progress.stop.load(Ordering::Acquire);
        let p = match client.take() {
            Some(p) => p,
            None => match new_producer(bootstrap, &id) {
                Ok(p) => Arc::new(p),
                Err(e) if stopping => {
                    eprintln!("{id}: no producer to abandon a transaction with: {e}");
                    return txns;
                }
                Err(e) => {
                    eprintln!("{id}: init_transactions: {e}; a new instance");
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            },
        };
        let plan = plan(&mut rng);
        let txn_number = number;
        number += 1;
        let (outcome, healthy) = run_transaction(&p, &group, producer, txn_number, &plan, stopping);
        if outcome == Outcome::Committed {
            progress.committed.fetch_add(1, Ordering::AcqRel);
        }
        txns.push(Txn {
            producer,
            number: txn_number,
            count: plan.count,
            offsets: plan.offsets,
            outcome,
        });
        if stopping {
            return txns;
        }
        if healthy {
            client = Some(p);
        } else {
            eprintln!("{id}: transaction {txn_number} left the producer unusable; a new instance");
        }
    }
}

/// One transaction: begin, send (and, as planned, the offset `number + 1` of partition 0 for
/// the producer's group), then commit, abort or (`abandon`) leave it open. Returns what the
/// client knows of its outcome and whether the producer can go on.
fn run_transaction(
    p: &Arc<TxnProducer>,
    group: &Arc<ConsumerGroupMetadata>,
    producer: usize,
    number: u64,
    plan: &Plan,
    abandon: bool,
) -> (Outcome, bool) {
    if let Err(e) = p.begin_transaction() {
        eprintln!("producer {producer}: begin_transaction {number}: {e}");
        return (Outcome::NeverCommitted, false);
    }
    for i in 0..plan.count {
        let value = tag(producer, number, i, plan.count);
        let partition = plan.partitions[i % plan.partitions.len()];
        let record = BaseRecord::<(), _>::to(TOPIC)
            .partition(partition)
            .payload(&value);
        if let Err((e, _)) = p.send(record) {
            eprintln!("producer {producer}: send in {number}: {e}");
            return (Outcome::NeverCommitted, abort(p, producer, number));
        }
    }
    if plan.offsets {
        match send_offsets(p, group, number) {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                eprintln!("producer {producer}: send_offsets_to_transaction in {number}: {e}");
                return (Outcome::NeverCommitted, abort(p, producer, number));
            }
            None => {
                eprintln!(
                    "producer {producer}: send_offsets_to_transaction in {number} never \
                     returned (librdkafka#5456); giving this instance up"
                );
                return (Outcome::NeverCommitted, false);
            }
        }
    }
    if abandon {
        return match p.flush(CALL_TIMEOUT) {
            Ok(()) => (Outcome::Abandoned, false),
            Err(_) => (Outcome::NeverCommitted, false),
        };
    }
    if plan.commit {
        commit(p, producer, number)
    } else {
        // Let the records reach the logs first, so that the abort has something to hide.
        let _ = p.flush(CALL_TIMEOUT);
        (Outcome::NeverCommitted, abort(p, producer, number))
    }
}

/// `send_offsets_to_transaction` of the offset `number + 1` of partition 0, on a helper
/// thread: librdkafka's request to the group coordinator has no timeout (its
/// `creq_ts_timeout` is never checked, confluentinc/librdkafka#5456, and a coordinator it
/// dropped from its metadata is waited for until some broker changes state, #5511), so
/// after a kill the call can block for good. `None`: no answer within
/// `SEND_OFFSETS_DEADLINE`; the helper thread keeps the instance, which the caller gives up
/// (a new instance fences it). The transaction then never asked to commit, which the checks
/// hold it to.
fn send_offsets(
    p: &Arc<TxnProducer>,
    group: &Arc<ConsumerGroupMetadata>,
    number: u64,
) -> Option<Result<(), KafkaError>> {
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(TOPIC, 0, Offset::Offset(number as i64 + 1))
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (p, group) = (Arc::clone(p), Arc::clone(group));
    std::thread::spawn(move || {
        let _ = tx.send(p.send_offsets_to_transaction(&offsets, &group, CALL_TIMEOUT));
    });
    rx.recv_timeout(SEND_OFFSETS_DEADLINE).ok()
}

/// `commit_transaction`, retried while librdkafka says the call may be retried; an abortable
/// failure is aborted. The outcome is known only when the commit succeeded.
fn commit(p: &TxnProducer, producer: usize, number: u64) -> (Outcome, bool) {
    for _ in 0..3 {
        match p.commit_transaction(CALL_TIMEOUT) {
            Ok(()) => return (Outcome::Committed, true),
            Err(KafkaError::Transaction(e)) if e.is_retriable() => {
                eprintln!("producer {producer}: commit {number}: {e}; retrying");
            }
            Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                eprintln!("producer {producer}: commit {number}: {e}; aborting");
                return (Outcome::CommitUnknown, abort(p, producer, number));
            }
            Err(e) => {
                eprintln!("producer {producer}: commit {number}: {e}");
                return (Outcome::CommitUnknown, false);
            }
        }
    }
    (Outcome::CommitUnknown, false)
}

/// `abort_transaction`, retried while it may be; whether the producer can go on.
fn abort(p: &TxnProducer, producer: usize, number: u64) -> bool {
    for _ in 0..3 {
        match p.abort_transaction(CALL_TIMEOUT) {
            Ok(()) => return true,
            Err(KafkaError::Transaction(e)) if e.is_retriable() => {
                eprintln!("producer {producer}: abort {number}: {e}; retrying");
            }
            Err(e) => {
                eprintln!("producer {producer}: abort {number}: {e}");
                return false;
            }
        }
    }
    false
}

/// Partition → (leader, ISR size) of `topic` as broker `via` reports it.
fn partitions_of(cluster: &Cluster, via: i32, topic: &str) -> BTreeMap<i32, (i32, usize)> {
    cluster
        .metadata(via)
        .topics
        .into_iter()
        .filter(|t| t.name.as_deref().map(|n| n.as_str()) == Some(topic))
        .flat_map(|t| t.partitions)
        .map(|p| (p.partition_index, (p.leader_id.0, p.isr_nodes.len())))
        .collect()
}

/// Whether every partition of `topic` (`count` of them) has a leader and three in-sync
/// replicas, as broker `via` says.
fn fully_replicated(cluster: &Cluster, via: i32, topic: &str, count: i32) -> bool {
    let state = partitions_of(cluster, via, topic);
    state.len() == count as usize
        && state
            .values()
            .all(|(leader, isr)| *leader >= 0 && *isr == 3)
}

fn wait_fully_replicated(cluster: &Cluster, seed: u64) {
    let via = cluster.broker_ids()[0];
    cluster.wait_for(&format!("full ISRs everywhere (seed {seed})"), WAIT, || {
        fully_replicated(cluster, via, TOPIC, PARTITIONS)
            && fully_replicated(
                cluster,
                via,
                TRANSACTION_STATE,
                TRANSACTION_STATE_PARTITIONS,
            )
            && fully_replicated(cluster, via, CONSUMER_OFFSETS, CONSUMER_OFFSETS_PARTITIONS)
    });
}

/// The coordinator of `id` (FindCoordinator key type 1) as broker `via` answers.
fn transaction_coordinator(cluster: &Cluster, via: i32, id: &str) -> i32 {
    let mut client = RawClient::connect(&cluster.addr(via));
    let deadline = Instant::now() + WAIT;
    loop {
        client.send(
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default()
                .with_key(s(id))
                .with_key_type(1),
        );
        let found: FindCoordinatorResponse = client.recv(3);
        if found.error_code == 0 {
            return found.node_id.0;
        }
        assert!(
            Instant::now() < deadline,
            "no coordinator for {id}: {found:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The coordinator of group `id` as broker `via` answers.
fn group_coordinator(cluster: &Cluster, via: i32, id: &str) -> i32 {
    let mut client = RawClient::connect(&cluster.addr(via));
    let deadline = Instant::now() + WAIT;
    loop {
        client.send(
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default().with_key(s(id)),
        );
        let found: FindCoordinatorResponse = client.recv(3);
        if found.error_code == 0 {
            return found.node_id.0;
        }
        assert!(
            Instant::now() < deadline,
            "no coordinator for {id}: {found:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Who the next kill round takes down, and why. Rounds cycle through a transaction
/// coordinator, a partition leader, a coordinator caught while one of its transactions is
/// prepared (its markers in flight), the leader of a partition such a transaction is
/// writing markers to, and any broker.
fn choose_victim(cluster: &Cluster, round: usize, rng: &mut StdRng) -> (i32, String) {
    let brokers = cluster.broker_ids();
    let via = *brokers.choose(rng).unwrap();
    let budget = Duration::from_millis(rng.gen_range(500..3000));
    let coordinator = |rng: &mut StdRng| {
        let id = transactional_id(rng.gen_range(0..PRODUCERS));
        let coordinator = transaction_coordinator(cluster, via, &id);
        (coordinator, format!("the coordinator of {id}"))
    };
    let leader = |rng: &mut StdRng| {
        let partition = rng.gen_range(0..PARTITIONS);
        (
            leader_of(cluster, via, partition),
            format!("the leader of {TOPIC}-{partition}"),
        )
    };
    match round % 5 {
        0 => coordinator(rng),
        1 => leader(rng),
        2 => match catch_prepared(cluster, budget) {
            Some(prepared) => (
                prepared.coordinator,
                format!(
                    "the coordinator of {}, caught in {}",
                    prepared.id, prepared.state
                ),
            ),
            None => coordinator(rng),
        },
        3 => match catch_prepared(cluster, budget) {
            Some(prepared) if !prepared.partitions.is_empty() => {
                let partition = *prepared.partitions.choose(rng).unwrap();
                (
                    leader_of(cluster, via, partition),
                    format!(
                        "the leader of {TOPIC}-{partition}, with {} in {}",
                        prepared.id, prepared.state
                    ),
                )
            }
            _ => leader(rng),
        },
        _ => (*brokers.choose(rng).unwrap(), "a broker".to_string()),
    }
}

/// The leader of `partition` of the test topic as broker `via` says (`via` if there is none).
fn leader_of(cluster: &Cluster, via: i32, partition: i32) -> i32 {
    partitions_of(cluster, via, TOPIC)
        .get(&partition)
        .map(|(leader, _)| *leader)
        .filter(|l| *l >= 0)
        .unwrap_or(via)
}

/// A transaction seen in PrepareCommit or PrepareAbort.
struct Prepared {
    coordinator: i32,
    id: String,
    state: String,
    /// Its partitions of the test topic, as its coordinator described them right after.
    partitions: Vec<i32>,
}

/// Polls every broker's ListTransactions for a prepared transaction (markers being written)
/// for up to `budget`.
fn catch_prepared(cluster: &Cluster, budget: Duration) -> Option<Prepared> {
    let mut clients: Vec<(i32, RawClient)> = cluster
        .broker_ids()
        .into_iter()
        .map(|b| (b, RawClient::connect(&cluster.addr(b))))
        .collect();
    let request = ListTransactionsRequest::default()
        .with_state_filters(vec![s("PrepareCommit"), s("PrepareAbort")])
        .with_duration_filter(-1);
    let deadline = Instant::now() + budget;
    while Instant::now() < deadline {
        for (broker, client) in &mut clients {
            client.send(ApiKey::ListTransactions, 1, &request);
            let listed: ListTransactionsResponse = client.recv(1);
            let Some(found) = listed.transaction_states.first() else {
                continue;
            };
            let id = found.transactional_id.to_string();
            client.send(
                ApiKey::DescribeTransactions,
                0,
                &DescribeTransactionsRequest::default()
                    .with_transactional_ids(vec![TransactionalId(s(&id))]),
            );
            let described: DescribeTransactionsResponse = client.recv(0);
            let partitions = described
                .transaction_states
                .iter()
                .flat_map(|t| &t.topics)
                .filter(|t| t.topic.as_str() == TOPIC)
                .flat_map(|t| t.partitions.iter().copied())
                .collect();
            return Some(Prepared {
                coordinator: *broker,
                id,
                state: found.transaction_state.to_string(),
                partitions,
            });
        }
    }
    None
}

/// ListTransactions on broker `id`: (transactional id, state) of each it coordinates.
fn list_transactions(cluster: &Cluster, id: i32) -> Vec<(String, String)> {
    let mut client = RawClient::connect(&cluster.addr(id));
    client.send(
        ApiKey::ListTransactions,
        1,
        &ListTransactionsRequest::default().with_duration_filter(-1),
    );
    let listed: ListTransactionsResponse = client.recv(1);
    assert_eq!(listed.error_code, 0, "ListTransactions on {id}: {listed:?}");
    listed
        .transaction_states
        .iter()
        .map(|t| {
            (
                t.transactional_id.to_string(),
                t.transaction_state.to_string(),
            )
        })
        .collect()
}

/// DescribeTransactions for every test id on broker `id`: (transactional id, error, state).
fn describe_transactions(cluster: &Cluster, id: i32) -> Vec<(String, i16, String)> {
    let mut client = RawClient::connect(&cluster.addr(id));
    let ids = (0..PRODUCERS)
        .map(|p| TransactionalId(s(&transactional_id(p))))
        .collect();
    client.send(
        ApiKey::DescribeTransactions,
        0,
        &DescribeTransactionsRequest::default().with_transactional_ids(ids),
    );
    let described: DescribeTransactionsResponse = client.recv(0);
    described
        .transaction_states
        .iter()
        .map(|t| {
            (
                t.transactional_id.to_string(),
                t.error_code,
                t.transaction_state.to_string(),
            )
        })
        .collect()
}

/// Every broker's transactions: none unfinished, each test id on exactly one coordinator
/// (which describes it as finished), the others answering NOT_COORDINATOR. `Err` says why
/// not yet.
fn transactions_finished(cluster: &Cluster) -> Result<(), String> {
    let mut coordinators: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for broker in cluster.broker_ids() {
        for (id, state) in list_transactions(cluster, broker) {
            if UNFINISHED.contains(&state.as_str()) {
                return Err(format!("{id} is {state} on broker {broker}"));
            }
            coordinators.entry(id).or_default().push(broker);
        }
    }
    for producer in 0..PRODUCERS {
        let id = transactional_id(producer);
        match coordinators.get(&id).map(Vec::as_slice) {
            Some([_]) => {}
            other => return Err(format!("{id} listed by brokers {other:?}")),
        }
    }
    for broker in cluster.broker_ids() {
        for (id, error, state) in describe_transactions(cluster, broker) {
            let coordinator = coordinators[&id][0];
            let expected = if broker == coordinator {
                0
            } else {
                kafka_protocol::ResponseError::NotCoordinator.code()
            };
            if error != expected {
                return Err(format!(
                    "DescribeTransactions {id} on {broker}: error {error}, coordinator {coordinator}"
                ));
            }
            if error == 0 && !FINISHED.contains(&state.as_str()) {
                return Err(format!("{id} described as {state} by {broker}"));
            }
        }
    }
    Ok(())
}

/// The producers' last transactions, left open with their records delivered, were aborted
/// by the coordinators' timeout: their ids end in CompleteAbort (no later transaction ran).
fn check_abandoned_aborted(cluster: &Cluster, txns: &[Txn], seed: u64) -> usize {
    let abandoned: BTreeSet<String> = txns
        .iter()
        .filter(|t| t.outcome == Outcome::Abandoned)
        .map(|t| transactional_id(t.producer))
        .collect();
    for broker in cluster.broker_ids() {
        for (id, error, state) in describe_transactions(cluster, broker) {
            if error == 0 && abandoned.contains(&id) {
                assert_eq!(
                    state, "CompleteAbort",
                    "seed {seed}: {id} abandoned an open transaction"
                );
            }
        }
    }
    abandoned.len()
}

/// ListOffsets latest on `leader` for `partition` at `isolation_level`.
fn latest_offset(cluster: &Cluster, leader: i32, partition: i32, isolation_level: i8) -> i64 {
    let mut client = RawClient::connect(&cluster.addr(leader));
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(isolation_level)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(s(TOPIC)))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_current_leader_epoch(-1)
                .with_timestamp(-1)])]);
    client.send(ApiKey::ListOffsets, 7, &request);
    let response: ListOffsetsResponse = client.recv(7);
    let p = &response.topics[0].partitions[0];
    assert_eq!(
        p.error_code, 0,
        "ListOffsets {partition} on {leader}: {p:?}"
    );
    p.offset
}

/// Partition → (last stable offset, high watermark), each from its leader.
fn stable_and_high(cluster: &Cluster) -> BTreeMap<i32, (i64, i64)> {
    let leaders = partitions_of(cluster, cluster.broker_ids()[0], TOPIC);
    leaders
        .iter()
        .map(|(partition, (leader, _))| {
            let stable = latest_offset(cluster, *leader, *partition, 1);
            let high = latest_offset(cluster, *leader, *partition, 0);
            (*partition, (stable, high))
        })
        .collect()
}

/// Every value a read_committed consumer reads, from the start of every partition until its
/// position reaches the high watermark (with no transaction open, the last stable offset).
fn read_committed(bootstrap: &str, ends: &BTreeMap<i32, i64>, seed: u64) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "recovery-checker")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition_offset(TOPIC, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut values = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let positions = consumer.position().expect("position");
        let done = ends.iter().all(|(p, end)| {
            *end == 0
                || matches!(
                    positions.find_partition(TOPIC, *p).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o >= *end
                )
        });
        if done {
            return values;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: read_committed never reached {ends:?}: {positions:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => values
                .push(String::from_utf8(m.payload().unwrap_or_default().to_vec()).expect("utf-8")),
            Some(Err(e)) => eprintln!("read_committed consumer: {e}"),
            None => {}
        }
    }
}

/// Each transaction is all or nothing to read_committed consumers; committed ones are all
/// there, never-committed ones not at all. Returns (visible, invisible) transaction counts.
fn check_all_or_nothing(txns: &[Txn], values: &[String], seed: u64) -> (usize, usize) {
    let mut seen: BTreeMap<(usize, u64), Vec<usize>> = BTreeMap::new();
    for value in values {
        let (producer, number, index, count) = parse_tag(value);
        let txn = txns
            .iter()
            .find(|t| t.producer == producer && t.number == number)
            .unwrap_or_else(|| panic!("seed {seed}: {value} from no transaction the test ran"));
        assert_eq!(count, txn.count, "seed {seed}: {value}");
        seen.entry((producer, number)).or_default().push(index);
    }
    let (mut visible, mut invisible) = (0, 0);
    for txn in txns {
        let mut indexes = seen.remove(&(txn.producer, txn.number)).unwrap_or_default();
        indexes.sort_unstable();
        let whole: Vec<usize> = (0..txn.count).collect();
        let what = format!(
            "seed {seed}: transaction {} of producer {} ({:?}, {} records) shows {indexes:?}",
            txn.number, txn.producer, txn.outcome, txn.count
        );
        match txn.outcome {
            Outcome::Committed => assert_eq!(indexes, whole, "{what}"),
            Outcome::NeverCommitted | Outcome::Abandoned => {
                assert!(indexes.is_empty(), "{what}")
            }
            Outcome::CommitUnknown => {
                assert!(indexes.is_empty() || indexes == whole, "{what}")
            }
        }
        if indexes.is_empty() {
            invisible += 1;
        } else {
            visible += 1;
        }
    }
    (visible, invisible)
}

/// Each group's committed offset is the one sent by the last of its producer's transactions
/// that sent offsets and is visible: the offsets commit went with the records, whole.
fn check_group_offsets(bootstrap: &str, txns: &[Txn], values: &[String], seed: u64) {
    let visible: BTreeSet<(usize, u64)> = values
        .iter()
        .map(|v| {
            let (producer, number, _, _) = parse_tag(v);
            (producer, number)
        })
        .collect();
    for producer in 0..PRODUCERS {
        let expected = txns
            .iter()
            .filter(|t| {
                t.producer == producer && t.offsets && visible.contains(&(producer, t.number))
            })
            .map(|t| t.number)
            .max()
            .map_or(Offset::Invalid, |n| Offset::Offset(n as i64 + 1));
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group_id(producer))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut asked = TopicPartitionList::new();
        asked.add_partition(TOPIC, 0);
        let committed = consumer
            .committed_offsets(asked, WAIT)
            .expect("committed offsets");
        let got = committed.find_partition(TOPIC, 0).map(|e| e.offset());
        assert_eq!(
            got,
            Some(expected),
            "seed {seed}: the committed offset of {} against the transactions seen",
            group_id(producer)
        );
    }
}

/// Waits until the producers have seen `n` commits succeed in all.
fn wait_committed(cluster: &Cluster, progress: &Progress, n: usize, seed: u64) {
    cluster.wait_for(
        &format!("{n} committed transactions (seed {seed})"),
        WAIT,
        || progress.committed.load(Ordering::Acquire) >= n,
    );
}

#[test]
fn transactions_are_committed_or_aborted_whole_through_kill_9s_of_coordinators_and_leaders() {
    let seed = seed();
    eprintln!("seed {seed}; replay with STROM_TXN_RECOVERY_SEED={seed}");
    let rounds: usize = std::env::var("STROM_TXN_RECOVERY_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS_DEFAULT);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let partitions_setting =
        format!("transaction.state.log.num.partitions={TRANSACTION_STATE_PARTITIONS}");
    let offsets_partitions_setting =
        format!("offsets.topic.num.partitions={CONSUMER_OFFSETS_PARTITIONS}");
    let mut cluster = Cluster::combined_with(
        dir.path(),
        3,
        &[
            "transaction.abort.timed.out.transaction.cleanup.interval.ms=500",
            &partitions_setting,
            &offsets_partitions_setting,
        ],
    );
    let bootstrap = cluster.bootstrap();
    common::clients::create_topic_with(
        &bootstrap,
        TOPIC,
        PARTITIONS,
        3,
        &[("min.insync.replicas", "2")],
    );
    // The first FindCoordinator creates __transaction_state while all three brokers live.
    // Likewise __consumer_offsets with the first FindCoordinator for a group.
    for producer in 0..PRODUCERS {
        transaction_coordinator(&cluster, 1, &transactional_id(producer));
        group_coordinator(&cluster, 1, &group_id(producer));
    }
    wait_fully_replicated(&cluster, seed);

    let progress = Arc::new(Progress {
        stop: AtomicBool::new(false),
        committed: AtomicUsize::new(0),
    });
    let threads: Vec<_> = (0..PRODUCERS)
        .map(|producer| {
            let (bootstrap, progress) = (bootstrap.clone(), Arc::clone(&progress));
            std::thread::spawn(move || produce(&bootstrap, producer, seed, &progress))
        })
        .collect();
    wait_committed(&cluster, &progress, PRODUCERS, seed);

    for round in 0..rounds {
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..1000)));
        let (victim, why) = choose_victim(&cluster, round, &mut rng);
        let down_ms = rng.gen_range(200..3000);
        let settle = rng.gen_bool(0.7);
        eprintln!(
            "round {round}: kill -9 node {victim} ({why}), down {down_ms} ms, {}",
            if settle {
                "then full ISRs"
            } else {
                "then straight on"
            }
        );
        cluster.kill9(victim);
        std::thread::sleep(Duration::from_millis(down_ms));
        cluster.restart(victim);
        if settle {
            wait_fully_replicated(&cluster, seed);
        }
    }
    wait_fully_replicated(&cluster, seed);
    // The cluster works again: more commits before the producers stop.
    let more = progress.committed.load(Ordering::Acquire) + PRODUCERS;
    wait_committed(&cluster, &progress, more, seed);
    progress.stop.store(true, Ordering::Release);
    let txns: Vec<Txn> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("producer thread"))
        .collect();

    // Recovery: the abandoned transactions time out and are aborted.
    let deadline = Instant::now() + WAIT;
    loop {
        match transactions_finished(&cluster) {
            Ok(()) => break,
            Err(why) => assert!(
                Instant::now() < deadline,
                "seed {seed}: transactions never finished: {why}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let abandoned = check_abandoned_aborted(&cluster, &txns, seed);
    let mut offsets = stable_and_high(&cluster);
    let deadline = Instant::now() + WAIT;
    while offsets.values().any(|(stable, high)| stable != high) {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: a last stable offset stuck below its high watermark \
             (partition → (LSO, HW)): {offsets:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        offsets = stable_and_high(&cluster);
    }
    let ends: BTreeMap<i32, i64> = offsets.iter().map(|(p, (_, high))| (*p, *high)).collect();
    let values = read_committed(&bootstrap, &ends, seed);
    let (visible, invisible) = check_all_or_nothing(&txns, &values, seed);
    check_group_offsets(&bootstrap, &txns, &values, seed);

    let brokers = cluster.broker_ids();
    for partition in 0..PARTITIONS {
        cluster.wait_for(
            &format!("replicas of {TOPIC}-{partition} holding the same bytes (seed {seed})"),
            WAIT,
            || {
                let first = cluster.log_bytes(brokers[0], TOPIC, partition);
                brokers[1..]
                    .iter()
                    .all(|b| cluster.log_bytes(*b, TOPIC, partition) == first)
            },
        );
    }
    let count = |o: Outcome| txns.iter().filter(|t| t.outcome == o).count();
    eprintln!(
        "seed {seed}: {} transactions ({} committed, {} commit unknown, {} never committed, \
         {abandoned} abandoned and aborted by the timeout), \
         {visible} visible and {invisible} invisible after recovery, {} records read committed, \
         offsets {offsets:?}",
        txns.len(),
        count(Outcome::Committed),
        count(Outcome::CommitUnknown),
        count(Outcome::NeverCommitted),
        values.len()
    );
    let touched: BTreeSet<usize> = txns.iter().map(|t| t.producer).collect();
    assert_eq!(touched.len(), PRODUCERS, "seed {seed}: every producer ran");
}
