//! The transaction coordinator against a fake log, producer id source, clock and marker
//! transport: every transition and error of Kafka's coordinator, writes before state
//! changes, replay after a failover, and the marker sender's retries.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError as E;
use parking_lot::Mutex;

use super::*;
use crate::txn_markers::{MarkerDestination, MarkerResults, MarkerTransport, TxnMarker};

const PARTITIONS: i32 = 50;
const TIMEOUT_MS: i32 = 60_000;

/// (partition, key, value) of every record appended.
type Written = Vec<(i32, Vec<u8>, Option<Vec<u8>>)>;

/// A `__transaction_state` in memory: each partition's records and leader epoch.
#[derive(Default)]
struct MemoryLog {
    records: Mutex<Written>,
    /// The leader epoch of each partition; appends naming another epoch are refused.
    epochs: Mutex<HashMap<i32, i32>>,
    /// The next append fails with this code (nothing written).
    fail_next: Mutex<Option<i16>>,
    /// Held by a test to keep appends waiting.
    gate: tokio::sync::Mutex<()>,
}

impl MemoryLog {
    fn lead(&self, partition: i32, epoch: i32) {
        self.epochs.lock().insert(partition, epoch);
    }

    fn records_of(&self, partition: i32) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.records
            .lock()
            .iter()
            .filter(|(p, _, _)| *p == partition)
            .map(|(_, k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn last_value(&self, id: &str) -> Option<Option<TxnLogValue>> {
        let key = TxnRecord::key(id);
        self.records
            .lock()
            .iter()
            .rev()
            .find(|(_, k, _)| *k == key)
            .map(|(_, k, v)| TxnRecord::decode(k, v.as_deref()).unwrap().value)
    }

    fn count(&self) -> usize {
        self.records.lock().len()
    }
}

impl TxnLog for MemoryLog {
    fn append(
        &self,
        partition: i32,
        coordinator_epoch: i32,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> BoxFuture<'_, Result<(), i16>> {
        Box::pin(async move {
            let _gate = self.gate.lock().await;
            if let Some(code) = self.fail_next.lock().take() {
                return Err(code);
            }
            if self.epochs.lock().get(&partition) != Some(&coordinator_epoch) {
                return Err(E::NotLeaderOrFollower.code());
            }
            self.records
                .lock()
                .extend(records.into_iter().map(|(k, v)| (partition, k, v)));
            Ok(())
        })
    }
}

struct Counter(AtomicI64);

impl ProducerIdGenerator for Counter {
    fn generate(&self) -> BoxFuture<'_, Result<i64, i16>> {
        Box::pin(async move { Ok(self.0.fetch_add(1, Ordering::Relaxed)) })
    }
}

struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl ManualClock {
    fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
}

type Answer = Box<dyn Fn(i32, &TxnMarker, &TopicPartition) -> i16 + Send + Sync>;

/// Partition leaders and brokers that answer as a test says.
struct FakeTransport {
    leaders: Mutex<HashMap<TopicPartition, MarkerDestination>>,
    answer: Mutex<Answer>,
    /// Requests that get no answer (a lost connection) while positive.
    drop_requests: AtomicI64,
    sent: Mutex<Vec<(i32, TxnMarker)>>,
}

impl FakeTransport {
    fn new() -> Arc<FakeTransport> {
        Arc::new(FakeTransport {
            leaders: Mutex::new(HashMap::new()),
            answer: Mutex::new(Box::new(|_, _, _| 0)),
            drop_requests: AtomicI64::new(0),
            sent: Mutex::new(Vec::new()),
        })
    }

    fn lead(&self, topic: &str, partition: i32, destination: MarkerDestination) {
        self.leaders
            .lock()
            .insert((topic.to_string(), partition), destination);
    }

    fn answer(
        &self,
        answer: impl Fn(i32, &TxnMarker, &TopicPartition) -> i16 + Send + Sync + 'static,
    ) {
        *self.answer.lock() = Box::new(answer);
    }

    /// (broker, partition, commit) of every marker sent.
    fn sent_partitions(&self) -> Vec<(i32, TopicPartition, bool)> {
        self.sent
            .lock()
            .iter()
            .flat_map(|(b, m)| {
                m.partitions
                    .iter()
                    .map(move |tp| (*b, tp.clone(), m.commit))
            })
            .collect()
    }
}

impl MarkerTransport for FakeTransport {
    fn destination(&self, topic: &str, partition: i32) -> MarkerDestination {
        self.leaders
            .lock()
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(MarkerDestination::Gone)
    }

    fn send(
        &self,
        broker: i32,
        markers: Vec<TxnMarker>,
    ) -> BoxFuture<'_, Result<MarkerResults, String>> {
        Box::pin(async move {
            for m in &markers {
                self.sent.lock().push((broker, m.clone()));
            }
            if self.drop_requests.load(Ordering::Relaxed) > 0 {
                self.drop_requests.fetch_sub(1, Ordering::Relaxed);
                return Err("connection reset".into());
            }
            let answer = self.answer.lock();
            Ok(markers
                .iter()
                .map(|m| {
                    (
                        m.producer_id,
                        m.partitions
                            .iter()
                            .map(|tp| (tp.clone(), answer(broker, m, tp)))
                            .collect(),
                    )
                })
                .collect())
        })
    }
}

struct Fixture {
    log: Arc<MemoryLog>,
    clock: Arc<ManualClock>,
    coordinator: Arc<TransactionCoordinator>,
    transport: Arc<FakeTransport>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

fn coordinator_on(
    log: &Arc<MemoryLog>,
    clock: &Arc<ManualClock>,
    first_producer_id: i64,
) -> Arc<TransactionCoordinator> {
    Arc::new(TransactionCoordinator::new(
        TxnConfig {
            state_log_partitions: PARTITIONS,
            max_timeout_ms: 900_000,
            transactional_id_expiration_ms: 604_800_000,
            retry_backoff_ms: 100,
        },
        log.clone(),
        Arc::new(Counter(AtomicI64::new(first_producer_id))),
        clock.clone(),
    ))
}

impl Fixture {
    /// A coordinator that leads every partition of `__transaction_state` in epoch 1, with
    /// its marker sender running; topic `t` partitions 0..3 are led by broker 1, topic `u`
    /// partition 0 by broker 2.
    fn new() -> Fixture {
        let log = Arc::new(MemoryLog::default());
        let clock = Arc::new(ManualClock(AtomicI64::new(1_000_000)));
        let coordinator = coordinator_on(&log, &clock, 1000);
        for p in 0..PARTITIONS {
            log.lead(p, 1);
            coordinator.load(p, 1, []);
        }
        let transport = FakeTransport::new();
        for p in 0..3 {
            transport.lead("t", p, MarkerDestination::Broker(1));
        }
        transport.lead("u", 0, MarkerDestination::Broker(2));
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(Arc::clone(&coordinator).run_marker_sender(transport.clone(), rx));
        Fixture {
            log,
            clock,
            coordinator,
            transport,
            shutdown,
        }
    }

    async fn init(&self, id: &str) -> InitProducerIdResult {
        self.coordinator
            .init_producer_id(id, TIMEOUT_MS, None)
            .await
    }

    async fn add(&self, id: &str, r: &InitProducerIdResult, partitions: &[(&str, i32)]) -> i16 {
        self.coordinator
            .add_partitions(id, r.producer_id, r.producer_epoch, &tps(partitions))
            .await
    }

    fn meta(&self, id: &str) -> TransactionMetadata {
        self.coordinator.describe(id).expect("described")
    }

    /// Waits (in paused time) until the transaction reaches `state` with nothing pending.
    async fn settle(&self, id: &str, state: TxnState) {
        for _ in 0..10_000 {
            let settled = {
                let s = self.coordinator.state.lock();
                let p = self.coordinator.partition_for(id);
                s.partitions
                    .get(&p)
                    .and_then(|p| p.txns.get(id))
                    .is_some_and(|e| e.meta.state == state && e.pending.is_none())
            };
            if settled {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{id} never reached {state:?}: {:?}",
            self.coordinator.describe(id)
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn tps(partitions: &[(&str, i32)]) -> BTreeSet<TopicPartition> {
    partitions
        .iter()
        .map(|(t, p)| (t.to_string(), *p))
        .collect()
}

fn ok(producer_id: i64, producer_epoch: i16) -> InitProducerIdResult {
    InitProducerIdResult {
        error_code: 0,
        producer_id,
        producer_epoch,
    }
}

fn err(code: E) -> InitProducerIdResult {
    InitProducerIdResult::error(code.code())
}

// ----- InitProducerId -----

#[tokio::test(start_paused = true)]
async fn a_new_transactional_id_gets_a_new_producer_id_at_epoch_0_written_before_the_answer() {
    let f = Fixture::new();
    assert_eq!(f.init("tx").await, ok(1000, 0));
    let value = f.log.last_value("tx").unwrap().unwrap();
    assert_eq!(
        (value.producer_id, value.producer_epoch, value.status),
        (1000, 0, 0)
    );
    assert_eq!(value.timeout_ms, TIMEOUT_MS);
    let m = f.meta("tx");
    assert_eq!(
        (m.state, m.producer_id, m.producer_epoch),
        (TxnState::Empty, 1000, 0)
    );
    // The record went to the id's partition.
    let p = f.coordinator.partition_for("tx");
    assert_eq!(f.log.records_of(p).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn init_again_bumps_the_epoch_and_fences_the_older_producer() {
    let f = Fixture::new();
    let first = f.init("tx").await;
    let second = f.init("tx").await;
    assert_eq!(second, ok(1000, 1));
    assert_eq!(
        f.add("tx", &first, &[("t", 0)]).await,
        E::ProducerFenced.code()
    );
    assert_eq!(
        f.coordinator
            .end_txn("tx", 1000, 0, TxnResult::Commit)
            .await,
        E::ProducerFenced.code()
    );
}

#[tokio::test(start_paused = true)]
async fn init_refuses_bad_ids_and_timeouts() {
    let f = Fixture::new();
    assert_eq!(
        f.coordinator.init_producer_id("", TIMEOUT_MS, None).await,
        err(E::InvalidRequest)
    );
    assert_eq!(
        f.coordinator.init_producer_id("tx", 900_001, None).await,
        err(E::InvalidTransactionTimeout)
    );
    assert_eq!(
        f.coordinator.init_producer_id("tx", 0, None).await,
        err(E::InvalidTransactionTimeout)
    );
    assert_eq!(f.log.count(), 0);
}

#[tokio::test(start_paused = true)]
async fn ids_of_partitions_not_loaded_or_loading_get_not_coordinator_or_load_in_progress() {
    let f = Fixture::new();
    let p = f.coordinator.partition_for("tx");
    f.coordinator.unload_partition(p);
    assert_eq!(f.init("tx").await, err(E::NotCoordinator));
    f.coordinator.begin_load(p, 2);
    assert_eq!(f.init("tx").await, err(E::CoordinatorLoadInProgress));
    assert_eq!(
        f.coordinator.describe("tx"),
        Err(E::CoordinatorLoadInProgress.code())
    );
    assert_eq!(
        f.coordinator.list(&[], &[], -1).error_code,
        E::CoordinatorLoadInProgress.code()
    );
    f.coordinator.complete_load(p, 2);
    f.log.lead(p, 2);
    assert_eq!(f.init("tx").await, ok(1000, 0));
}

#[tokio::test(start_paused = true)]
async fn kip_360_a_producer_resuming_with_its_epoch_bumps_and_a_lost_answer_is_retried() {
    let f = Fixture::new();
    let first = f.init("tx").await;
    let expected = ProducerIdAndEpoch {
        producer_id: first.producer_id,
        epoch: first.producer_epoch,
    };
    let bumped = f
        .coordinator
        .init_producer_id("tx", TIMEOUT_MS, Some(expected))
        .await;
    assert_eq!(bumped, ok(1000, 1));
    assert_eq!(f.meta("tx").last_producer_epoch, 0);
    // The answer was lost: the retry names epoch 0 again and gets epoch 1 without a bump.
    let retried = f
        .coordinator
        .init_producer_id("tx", TIMEOUT_MS, Some(expected))
        .await;
    assert_eq!(retried, ok(1000, 1));
    // Another producer took over (no expected epoch): the old one is fenced.
    assert_eq!(f.init("tx").await, ok(1000, 2));
    let stale = f
        .coordinator
        .init_producer_id("tx", TIMEOUT_MS, Some(expected))
        .await;
    assert_eq!(stale, err(E::ProducerFenced));
    // A producer id the transactional id never had is fenced.
    let foreign = ProducerIdAndEpoch {
        producer_id: 77,
        epoch: 0,
    };
    assert_eq!(
        f.coordinator
            .init_producer_id("tx", TIMEOUT_MS, Some(foreign))
            .await,
        err(E::ProducerFenced)
    );
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_epoch_rotates_to_a_new_producer_id() {
    let f = Fixture::new();
    f.init("tx").await;
    {
        let p = f.coordinator.partition_for("tx");
        let mut s = f.coordinator.state.lock();
        let e = s
            .partitions
            .get_mut(&p)
            .unwrap()
            .txns
            .get_mut("tx")
            .unwrap();
        e.meta.producer_epoch = i16::MAX - 1;
    }
    assert_eq!(f.init("tx").await, ok(1001, 0));
    let m = f.meta("tx");
    assert_eq!(
        (m.last_producer_id, m.last_producer_epoch),
        (1000, NO_PRODUCER_EPOCH)
    );
    // With KIP-360 the rotation remembers the old epoch, and a retry naming the old
    // producer id with its exhausted epoch is accepted.
    {
        let p = f.coordinator.partition_for("tx");
        let mut s = f.coordinator.state.lock();
        let e = s
            .partitions
            .get_mut(&p)
            .unwrap()
            .txns
            .get_mut("tx")
            .unwrap();
        e.meta.producer_epoch = i16::MAX - 1;
    }
    let expected = ProducerIdAndEpoch {
        producer_id: 1001,
        epoch: i16::MAX - 1,
    };
    let rotated = f
        .coordinator
        .init_producer_id("tx", TIMEOUT_MS, Some(expected))
        .await;
    assert_eq!(rotated, ok(1002, 0));
    assert_eq!(f.meta("tx").last_producer_epoch, i16::MAX - 1);
    assert_eq!(f.meta("tx").last_producer_id, 1001);
    let retried = f
        .coordinator
        .init_producer_id("tx", TIMEOUT_MS, Some(expected))
        .await;
    assert_eq!(
        retried,
        ok(1002, 0),
        "a retry of the rotation (the old id with its exhausted epoch) gets the same answer"
    );
}

#[tokio::test(start_paused = true)]
async fn init_during_an_ongoing_transaction_aborts_it_with_a_fencing_epoch_and_asks_to_retry() {
    let f = Fixture::new();
    let first = f.init("tx").await;
    assert_eq!(f.add("tx", &first, &[("t", 0), ("u", 0)]).await, 0);
    assert_eq!(f.init("tx").await, err(E::ConcurrentTransactions));
    let aborting = f.log.last_value("tx").unwrap().unwrap();
    assert_eq!(aborting.status, TxnState::PrepareAbort.id());
    assert_eq!(
        aborting.producer_epoch, 1,
        "the abort carries the fencing epoch"
    );
    f.settle("tx", TxnState::CompleteAbort).await;
    let mut sent = f.transport.sent_partitions();
    sent.sort();
    assert_eq!(
        sent,
        vec![(1, ("t".into(), 0), false), (2, ("u".into(), 0), false)]
    );
    assert!(f
        .transport
        .sent
        .lock()
        .iter()
        .all(|(_, m)| m.producer_epoch == 1));
    // The old producer is fenced; the retried init gets the next epoch.
    assert_eq!(
        f.coordinator
            .end_txn("tx", 1000, 0, TxnResult::Commit)
            .await,
        E::ProducerFenced.code()
    );
    assert_eq!(f.init("tx").await, ok(1000, 2));
}

#[tokio::test(start_paused = true)]
async fn init_while_markers_are_written_is_concurrent_transactions() {
    let f = Fixture::new();
    let r = f.init("tx").await;
    f.add("tx", &r, &[("t", 0)]).await;
    f.transport.lead("t", 0, MarkerDestination::Unavailable);
    assert_eq!(
        f.coordinator
            .end_txn("tx", 1000, 0, TxnResult::Commit)
            .await,
        0
    );
    assert_eq!(f.meta("tx").state, TxnState::PrepareCommit);
    assert_eq!(f.init("tx").await, err(E::ConcurrentTransactions));
    f.transport.lead("t", 0, MarkerDestination::Broker(1));
    f.settle("tx", TxnState::CompleteCommit).await;
    assert_eq!(f.init("tx").await, ok(1000, 1));
}

// ----- AddPartitionsToTxn / AddOffsetsToTxn -----

#[tokio::test(start_paused = true)]
async fn add_partitions_starts_the_transaction_once_durable_and_keeps_its_start_time() {
    let f = Fixture::new();
    let r = f.init("tx").await;
    let started = f.clock.now_ms();
    assert_eq!(f.add("tx", &r, &[("t", 0)]).await, 0);
    let m = f.meta("tx");
    assert_eq!(m.state, TxnState::Ongoing);
    assert_eq!(m.start_timestamp_ms, started);
    assert_eq!(m.partitions, tps(&[("t", 0)]));
    f.clock.advance(5);
    assert_eq!(
        f.add("tx", &r, &[("t", 1), ("__consumer_offsets", 7)])
            .await,
        0
    );
    let m = f.meta("tx");
    assert_eq!(
        m.partitions,
        tps(&[("t", 0), ("t", 1), ("__consumer_offsets", 7)])
    );
    assert_eq!(m.start_timestamp_ms, started);
    assert_eq!(m.last_update_timestamp_ms, started + 5);
    let value = f.log.last_value("tx").unwrap().unwrap();
    assert_eq!(value.partitions, m.partitions);
    // Partitions already in the transaction: answered without a write.
    let writes = f.log.count();
    assert_eq!(f.add("tx", &r, &[("t", 1)]).await, 0);
    assert_eq!(f.log.count(), writes);
}

#[tokio::test(start_paused = true)]
async fn add_partitions_errors_follow_kafka() {
    let f = Fixture::new();
    let unknown = ok(5, 0);
    assert_eq!(
        f.add("nobody", &unknown, &[("t", 0)]).await,
        E::InvalidProducerIdMapping.code()
    );
    let r = f.init("tx").await;
    assert_eq!(
        f.add("tx", &ok(999, 0), &[("t", 0)]).await,
        E::InvalidProducerIdMapping.code()
    );
    assert_eq!(
        f.add("tx", &ok(1000, 3), &[("t", 0)]).await,
        E::ProducerFenced.code()
    );
    assert_eq!(f.add("", &r, &[("t", 0)]).await, E::InvalidRequest.code());
    f.add("tx", &r, &[("t", 0)]).await;
    f.transport.lead("t", 0, MarkerDestination::Unavailable);
    f.coordinator.end_txn("tx", 1000, 0, TxnResult::Abort).await;
    assert_eq!(
        f.add("tx", &r, &[("t", 1)]).await,
        E::ConcurrentTransactions.code()
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_while_a_write_is_in_flight_gets_concurrent_transactions() {
    let f = Fixture::new();
    let r = f.init("tx").await;
    let gate = f.log.gate.lock().await;
    let coordinator = Arc::clone(&f.coordinator);
    let adding = tokio::spawn(async move {
        coordinator
            .add_partitions("tx", 1000, 0, &tps(&[("t", 0)]))
            .await
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        f.meta("tx").state,
        TxnState::Empty,
        "not applied before the write"
    );
    assert_eq!(
        f.add("tx", &r, &[("t", 1)]).await,
        E::ConcurrentTransactions.code()
    );
    assert_eq!(
        f.coordinator
            .end_txn("tx", 1000, 0, TxnResult::Commit)
            .await,
        E::ConcurrentTransactions.code()
    );
    assert_eq!(f.init("tx").await, err(E::ConcurrentTransactions));
    drop(gate);
    assert_eq!(adding.await.unwrap(), 0);
    assert_eq!(f.meta("tx").state, TxnState::Ongoing);
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_changes_nothing_and_maps_to_the_coordinator_errors() {
    let f = Fixture::new();
    let r = f.init("tx").await;
    for (append, answer) in [
        (E::NotEnoughReplicas, E::CoordinatorNotAvailable),
        (E::RequestTimedOut, E::CoordinatorNotAvailable),
        (E::NotLeaderOrFollower, E::NotCoordinator),
        (E::MessageTooLarge, E::UnknownServerError),
    ] {
        *f.log.fail_next.lock() = Some(append.code());
        assert_eq!(f.add("tx", &r, &[("t", 0)]).await, answer.code());
        let m = f.meta("tx");
        assert_eq!(m.state, TxnState::Empty);
        assert!(m.partitions.is_empty());
    }
    assert_eq!(
        f.add("tx", &r, &[("t", 0)]).await,
        0,
        "nothing was left pending"
    );
}

#[tokio::test(start_paused = true)]
async fn a_write_that_lands_after_leadership_moved_is_not_applied() {
    let f = Fixture::new();
    let r = f.init("tx").await;
    let p = f.coordinator.partition_for("tx");
    let gate = f.log.gate.lock().await;
    let coordinator = Arc::clone(&f.coordinator);
    let adding = tokio::spawn(async move {
        coordinator
            .add_partitions("tx", 1000, 0, &tps(&[("t", 0)]))
            .await
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    // Leadership moves away and back: the partition is reloaded in epoch 2.
    f.coordinator.unload_partition(p);
    f.log.lead(p, 2);
    let records = f.log.records_of(p);
    f.coordinator.load(
        p,
        2,
        records.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
    );
    drop(gate);
    assert_eq!(adding.await.unwrap(), E::NotCoordinator.code());
    assert_eq!(f.meta("tx").state, TxnState::Empty);
    assert_eq!(
        f.log.records_of(p).len(),
        records.len(),
        "the log refused the stale epoch"
    );
    let _ = r;
}

// ----- verify (KIP-890 part 1) -----

#[tokio::test(start_paused = true)]
async fn verify_only_answers_which_partitions_are_in_the_transaction_without_writing() {
    let f = Fixture::new();
    let r = f.init("tx").await;
    f.add("tx", &r, &[("t", 0)]).await;
    let writes = f.log.count();
    let asked = tps(&[("t", 0), ("t", 1)]);
    assert_eq!(
        f.coordinator.verify_partitions("tx", 1000, 0, &asked),
        vec![
            (("t".into(), 0), 0),
            (("t".into(), 1), E::TransactionAbortable.code())
        ]
    );
    let all = |code: E| {
        asked
            .iter()
            .map(|tp| (tp.clone(), code.code()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        f.coordinator.verify_partitions("tx", 1, 0, &asked),
        all(E::InvalidProducerIdMapping)
    );
    assert_eq!(
        f.coordinator.verify_partitions("tx", 1000, 1, &asked),
        all(E::ProducerFenced)
    );
    assert_eq!(
        f.coordinator.verify_partitions("no", 1000, 0, &asked),
        all(E::InvalidProducerIdMapping)
    );
    assert_eq!(
        f.coordinator.verify_partitions("", 1000, 0, &asked),
        all(E::InvalidRequest)
    );
    f.transport.lead("t", 0, MarkerDestination::Unavailable);
    f.coordinator
        .end_txn("tx", 1000, 0, TxnResult::Commit)
        .await;
    assert_eq!(
        f.coordinator.verify_partitions("tx", 1000, 0, &asked),
        all(E::ConcurrentTransactions)
    );
    assert_eq!(f.log.count(), writes + 1, "only EndTxn wrote");
}

// ----- EndTxn and markers -----

#[tokio::test(start_paused = true)]
async fn commit_writes_prepare_then_markers_to_every_leader_then_complete() {
    let f = Fixture::new();
    let r = f.init("tx").await;
    f.add("tx", &r, &[("t", 0), ("t", 1), ("u", 0)]).await;
    assert_eq!(
        f.coordinator
            .end_txn("tx", 1000, 0, TxnResult::Commit)
            .await,
        0
    );
    let prepared = f.log.last_value("tx").unwrap().unwrap();
    assert_eq!(prepared.status, TxnState::PrepareCommit.id());
    assert_eq!(prepared.partitions, tps(&[("t", 0), ("t", 1), ("u", 0)]));
    f.settle("tx", TxnState::CompleteCommit).await;
    let completed = f.log.last_value("tx").unwrap().unwrap();
    assert_eq!(completed.status, TxnState::CompleteCommit.id());
    assert!(completed.partitions.is_empty());
    assert!(f.meta("tx").partitions.is_empty());
    // One request per broker, each marker with the coordinator epoch.
    let sent = f.transport.sent.lock().clone();
    assert_eq!(sent.len(), 2);
    let to_1 = sent.iter().find(|(b, _)| *b == 1).unwrap();
    assert_eq!(
        to_1.1.partitions,
        vec![("t".to_string(), 0), ("t".to_string(), 1)]
    );
    assert!(sent
        .iter()
        .all(|(_, m)| m.commit && m.coordinator_epoch == 1 && m.producer_id == 1000));
    assert_eq!(f.coordinator.pending_marker_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn end_txn_errors_and_retries_follow_kafka() {
    let f = Fixture::new();
    let r = f.init("tx").await;
    let end = |result| f.coordinator.end_txn("tx", 1000, 0, result);
    assert_eq!(
        end(TxnResult::Commit).await,
        E::InvalidTxnState.code(),
        "Empty"
    );
    assert_eq!(
        f.coordinator
            .end_txn("nobody", 1000, 0, TxnResult::Commit)
            .await,
        E::InvalidProducerIdMapping.code()
    );
    assert_eq!(
        f.coordinator.end_txn("tx", 7, 0, TxnResult::Commit).await,
        E::InvalidProducerIdMapping.code()
    );
    f.add("tx", &r, &[("t", 0)]).await;
    assert_eq!(
        f.coordinator
            .end_txn("tx", 1000, 1, TxnResult::Commit)
            .await,
        E::ProducerFenced.code(),
        "a client must name the current epoch"
    );
    f.transport.lead("t", 0, MarkerDestination::Unavailable);
    assert_eq!(end(TxnResult::Commit).await, 0);
    assert_eq!(
        end(TxnResult::Commit).await,
        E::ConcurrentTransactions.code(),
        "PrepareCommit"
    );
    // The markers are pending (Kafka's pending state): any other end is told to retry.
    assert_eq!(
        end(TxnResult::Abort).await,
        E::ConcurrentTransactions.code(),
        "PrepareCommit"
    );
    f.transport.lead("t", 0, MarkerDestination::Broker(1));
    f.settle("tx", TxnState::CompleteCommit).await;
    let writes = f.log.count();
    assert_eq!(end(TxnResult::Commit).await, 0, "a retried commit succeeds");
    assert_eq!(end(TxnResult::Abort).await, E::InvalidTxnState.code());
    assert_eq!(f.log.count(), writes, "retries write nothing");
}

#[tokio::test(start_paused = true)]
async fn an_abort_completes_as_complete_abort_and_the_next_transaction_starts_fresh() {
    let f = Fixture::new();
    let r = f.init("tx").await;
    f.add("tx", &r, &[("t", 2)]).await;
    assert_eq!(
        f.coordinator.end_txn("tx", 1000, 0, TxnResult::Abort).await,
        0
    );
    f.settle("tx", TxnState::CompleteAbort).await;
    assert_eq!(
        f.transport.sent_partitions(),
        vec![(1, ("t".into(), 2), false)]
    );
    assert_eq!(
        f.coordinator.end_txn("tx", 1000, 0, TxnResult::Abort).await,
        0
    );
    assert_eq!(
        f.coordinator
            .end_txn("tx", 1000, 0, TxnResult::Commit)
            .await,
        E::InvalidTxnState.code()
    );
    f.clock.advance(10);
    assert_eq!(f.add("tx", &r, &[("t", 1)]).await, 0);
    let m = f.meta("tx");
    assert_eq!(m.partitions, tps(&[("t", 1)]));
    assert_eq!(m.start_timestamp_ms, f.clock.now_ms());
}

#[tokio::test(start_paused = true)]
async fn markers_follow_a_moved_leader_and_retry_a_lost_connection() {
    let f = Fixture::new();
    let r = f.init("tx").await;
    f.add("tx", &r, &[("t", 0)]).await;
    f.transport.drop_requests.store(1, Ordering::Relaxed);
    // Broker 1 answers NOT_LEADER_OR_FOLLOWER: the partition moved to broker 3.
    f.transport.answer(|broker, _, _| {
        if broker == 1 {
            E::NotLeaderOrFollower.code()
        } else {
            0
        }
    });
    assert_eq!(
        f.coordinator
            .end_txn("tx", 1000, 0, TxnResult::Commit)
            .await,
        0
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        f.meta("tx").state,
        TxnState::PrepareCommit,
        "still retrying broker 1"
    );
    f.transport.lead("t", 0, MarkerDestination::Broker(3));
    f.settle("tx", TxnState::CompleteCommit).await;
    let brokers: Vec<i32> = f
        .transport
        .sent_partitions()
        .iter()
        .map(|(b, _, _)| *b)
        .collect();
    assert_eq!(brokers.first(), Some(&1));
    assert_eq!(brokers.last(), Some(&3));
    assert!(
        brokers.len() >= 3,
        "the lost request and the refusals were retried: {brokers:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn markers_skip_deleted_topics() {
    let f = Fixture::new();
    let r = f.init("tx").await;
    f.add("tx", &r, &[("t", 0), ("gone", 0)]).await;
    f.coordinator
        .end_txn("tx", 1000, 0, TxnResult::Commit)
        .await;
    f.settle("tx", TxnState::CompleteCommit).await;
    assert_eq!(
        f.transport.sent_partitions(),
        vec![(1, ("t".into(), 0), true)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_fenced_coordinator_stops_sending_the_markers() {
    let f = Fixture::new();
    let r = f.init("tx").await;
    f.add("tx", &r, &[("t", 0)]).await;
    f.transport
        .answer(|_, _, _| E::TransactionCoordinatorFenced.code());
    f.coordinator
        .end_txn("tx", 1000, 0, TxnResult::Commit)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(f.transport.sent.lock().len(), 1, "not retried");
    assert_eq!(f.coordinator.pending_marker_count(), 0);
    assert_eq!(f.meta("tx").state, TxnState::PrepareCommit);
}

#[tokio::test(start_paused = true)]
async fn the_completion_is_retried_while_the_log_is_unavailable() {
    let f = Fixture::new();
    let r = f.init("tx").await;
    f.add("tx", &r, &[("t", 0)]).await;
    f.coordinator
        .end_txn("tx", 1000, 0, TxnResult::Commit)
        .await;
    *f.log.fail_next.lock() = Some(E::NotEnoughReplicas.code());
    f.settle("tx", TxnState::CompleteCommit).await;
}

// ----- timeouts and expiration -----

#[tokio::test(start_paused = true)]
async fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let f = Fixture::new();
    let r = f.init("tx").await;
    f.add("tx", &r, &[("t", 0)]).await;
    let other = f.init("quiet").await;
    f.clock.advance(i64::from(TIMEOUT_MS));
    assert_eq!(
        f.coordinator.abort_timed_out_transactions().await,
        0,
        "not past it yet"
    );
    f.clock.advance(1);
    assert_eq!(f.coordinator.abort_timed_out_transactions().await, 1);
    f.settle("tx", TxnState::CompleteAbort).await;
    let m = f.meta("tx");
    assert_eq!(m.producer_epoch, 1);
    assert_eq!(
        f.transport.sent_partitions(),
        vec![(1, ("t".into(), 0), false)]
    );
    assert_eq!(
        f.coordinator
            .end_txn("tx", 1000, 0, TxnResult::Commit)
            .await,
        E::ProducerFenced.code()
    );
    assert_eq!(f.add("tx", &r, &[("t", 0)]).await, E::ProducerFenced.code());
    assert_eq!(
        f.meta("quiet").producer_epoch,
        other.producer_epoch,
        "idle ids are untouched"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_transactional_ids_expire_with_a_tombstone() {
    let f = Fixture::new();
    let r = f.init("done").await;
    f.add("done", &r, &[("t", 0)]).await;
    f.coordinator
        .end_txn("done", 1000, 0, TxnResult::Commit)
        .await;
    f.settle("done", TxnState::CompleteCommit).await;
    f.init("empty").await;
    let busy = f.init("busy").await;
    f.add("busy", &busy, &[("t", 1)]).await;
    f.clock.advance(604_800_000 - 1);
    assert_eq!(f.coordinator.remove_expired_transactional_ids().await, 0);
    f.clock.advance(1);
    assert_eq!(f.coordinator.remove_expired_transactional_ids().await, 2);
    assert_eq!(
        f.coordinator.describe("done"),
        Err(E::TransactionalIdNotFound.code())
    );
    assert_eq!(
        f.coordinator.describe("empty"),
        Err(E::TransactionalIdNotFound.code())
    );
    assert_eq!(
        f.meta("busy").state,
        TxnState::Ongoing,
        "an ongoing transaction does not expire"
    );
    assert_eq!(f.log.last_value("done"), Some(None), "a tombstone");
    // A new producer starts over with a new producer id.
    assert_eq!(f.init("done").await.producer_epoch, 0);
}

// ----- Describe / List -----

#[tokio::test(start_paused = true)]
async fn describe_and_list_show_states_with_kafkas_filters() {
    let f = Fixture::new();
    let a = f.init("a").await;
    f.add("a", &a, &[("t", 0), ("u", 0)]).await;
    f.init("b").await;
    f.clock.advance(1000);
    let m = f.coordinator.describe("a").unwrap();
    assert_eq!(m.state.name(), "Ongoing");
    assert_eq!(m.timeout_ms, TIMEOUT_MS);
    assert_eq!(
        f.coordinator.describe("zzz"),
        Err(E::TransactionalIdNotFound.code())
    );
    assert_eq!(f.coordinator.describe(""), Err(E::InvalidRequest.code()));
    let names = |r: ListTransactionsResult| {
        r.transactions
            .into_iter()
            .map(|t| (t.transactional_id, t.state))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(f.coordinator.list(&[], &[], -1)),
        vec![
            ("a".into(), TxnState::Ongoing),
            ("b".into(), TxnState::Empty)
        ]
    );
    assert_eq!(
        names(f.coordinator.list(&["Ongoing".into()], &[], -1)),
        vec![("a".into(), TxnState::Ongoing)]
    );
    let unknown = f.coordinator.list(&["Bogus".into()], &[], -1);
    assert_eq!(unknown.unknown_state_filters, vec!["Bogus".to_string()]);
    assert!(unknown.transactions.is_empty());
    assert_eq!(
        names(f.coordinator.list(&[], &[a.producer_id], -1)),
        vec![("a".into(), TxnState::Ongoing)]
    );
    // v1: only transactions running longer than the duration.
    assert_eq!(
        names(f.coordinator.list(&["Ongoing".into()], &[], 999)),
        vec![("a".into(), TxnState::Ongoing)]
    );
    assert!(names(f.coordinator.list(&["Ongoing".into()], &[], 1000)).is_empty());
}

// ----- failover -----

/// A second coordinator loading the same log, as a new leader of every partition would.
fn failover(f: &Fixture, epoch: i32) -> Arc<TransactionCoordinator> {
    let coordinator = coordinator_on(&f.log, &f.clock, 5000);
    for p in 0..PARTITIONS {
        f.log.lead(p, epoch);
        let records = f.log.records_of(p);
        coordinator.load(
            p,
            epoch,
            records.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
        );
    }
    coordinator
}

#[tokio::test(start_paused = true)]
async fn replay_after_a_failover_gives_the_same_state() {
    let f = Fixture::new();
    let a = f.init("a").await;
    f.add("a", &a, &[("t", 0)]).await;
    f.add("a", &a, &[("u", 0)]).await;
    let b = f.init("b").await;
    f.add("b", &b, &[("t", 1)]).await;
    f.coordinator
        .end_txn("b", b.producer_id, 0, TxnResult::Commit)
        .await;
    f.settle("b", TxnState::CompleteCommit).await;
    f.init("c").await;
    f.init("c").await;
    let replayed = failover(&f, 2);
    for id in ["a", "b", "c"] {
        let mut live = f.meta(id);
        let loaded = replayed.describe(id).unwrap();
        // Kafka's log does not keep the previous producer id and epoch.
        live.last_producer_id = NO_PRODUCER_ID;
        live.last_producer_epoch = NO_PRODUCER_EPOCH;
        assert_eq!(loaded, live, "{id}");
    }
    assert_eq!(replayed.loaded_epoch(0), Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_new_coordinator_resumes_the_markers_of_prepared_transactions() {
    let f = Fixture::new();
    let r = f.init("tx").await;
    f.add("tx", &r, &[("t", 0), ("u", 0)]).await;
    // The old coordinator wrote PrepareCommit but its markers never arrived.
    f.transport.lead("t", 0, MarkerDestination::Unavailable);
    f.transport.lead("u", 0, MarkerDestination::Unavailable);
    f.coordinator
        .end_txn("tx", 1000, 0, TxnResult::Commit)
        .await;
    let _ = f.shutdown.send(true);
    for p in 0..PARTITIONS {
        f.coordinator.unload_partition(p);
    }
    let replayed = failover(&f, 2);
    assert_eq!(
        replayed.describe("tx").unwrap().state,
        TxnState::PrepareCommit
    );
    assert_eq!(replayed.pending_marker_count(), 1);
    let transport = FakeTransport::new();
    transport.lead("t", 0, MarkerDestination::Broker(1));
    transport.lead("u", 0, MarkerDestination::Broker(2));
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(Arc::clone(&replayed).run_marker_sender(transport.clone(), rx));
    for _ in 0..1000 {
        if replayed.describe("tx").unwrap().state == TxnState::CompleteCommit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        replayed.describe("tx").unwrap().state,
        TxnState::CompleteCommit
    );
    let mut sent = transport.sent_partitions();
    sent.sort();
    assert_eq!(
        sent,
        vec![(1, ("t".into(), 0), true), (2, ("u".into(), 0), true)]
    );
    assert!(transport
        .sent
        .lock()
        .iter()
        .all(|(_, m)| m.coordinator_epoch == 2));
    // The completion is in the log for the next failover.
    assert_eq!(
        f.log.last_value("tx").unwrap().unwrap().status,
        TxnState::CompleteCommit.id()
    );
}

#[tokio::test(start_paused = true)]
async fn unloading_stops_the_markers_and_answers_not_coordinator() {
    let f = Fixture::new();
    let r = f.init("tx").await;
    f.add("tx", &r, &[("t", 0)]).await;
    f.transport.lead("t", 0, MarkerDestination::Unavailable);
    f.coordinator
        .end_txn("tx", 1000, 0, TxnResult::Commit)
        .await;
    let p = f.coordinator.partition_for("tx");
    assert_eq!(f.coordinator.unload_partition(p), 1);
    assert_eq!(f.coordinator.pending_marker_count(), 0);
    assert_eq!(f.coordinator.describe("tx"), Err(E::NotCoordinator.code()));
    assert_eq!(
        f.coordinator
            .end_txn("tx", 1000, 0, TxnResult::Commit)
            .await,
        E::NotCoordinator.code()
    );
}
