//! The transaction coordinator (KIP-98), as Kafka's `TransactionCoordinator` and
//! `TransactionStateManager`: one [`TransactionMetadata`] per transactional id, kept in the
//! `__transaction_state` partition its id hashes to, for the partitions this broker leads.
//!
//! Every change is prepared under the lock as a *transit* (the metadata after the change,
//! Kafka's `TxnTransitMetadata`) while the entry records the state it is going to (its
//! pending state, so concurrent requests get CONCURRENT_TRANSACTIONS), written to the log
//! through [`TxnLog`] (which resolves once the record is on every in-sync replica), and only
//! then applied in memory. Applying a transit and [`TransactionCoordinator::replay`] of the
//! same record at load time give the same metadata: the record carries everything but the
//! previous producer id and epoch, which Kafka also forgets on failover.
//!
//! The coordinator epoch of a `__transaction_state` partition is its leader epoch when it
//! was loaded; writes carry it and the log refuses them once leadership moved on, so a
//! coordinator that lost its partition cannot write with stale state.
//!
//! After EndTxn is durable (PrepareCommit/PrepareAbort), the markers are written to every
//! partition of the transaction by the marker sender ([`crate::txn_markers`]); once all are,
//! the transaction completes (CompleteCommit/CompleteAbort). A partition loaded with
//! transactions in a Prepare state resumes their markers.
//!
//! Deliberate difference: when Kafka fences an ongoing transaction (InitProducerId, or a
//! timeout) it bumps the epoch in memory before the PrepareAbort write and remembers a failed
//! write (`hasFailedEpochFence`); here the bumped epoch is applied only once that write
//! succeeded, so a failed fence leaves the metadata as the log has it and the next fence
//! bumps to the same epoch.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use kafka_protocol::ResponseError as E;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use crate::txn_markers::PendingMarkers;
use crate::txn_records::{TxnLogValue, TxnRecord};

/// A boxed future, for the async methods of the traits below.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A topic and partition.
pub type TopicPartition = (String, i32);

/// Kafka's `RecordBatch.NO_PRODUCER_ID`.
pub const NO_PRODUCER_ID: i64 = -1;
/// Kafka's `RecordBatch.NO_PRODUCER_EPOCH`.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// Tombstones of expired transactional ids written in one append.
const TOMBSTONES_PER_APPEND_MAX: usize = 1000;
/// Rounds of InitProducerId (each may wait for a new producer id) before the client is told
/// to retry.
const INIT_ROUNDS_MAX: usize = 3;

/// The states of a transaction, with Kafka's ids (the status byte of the log value) and
/// names (what DescribeTransactions and ListTransactions show).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
    PrepareEpochFence,
}

impl TxnState {
    pub const ALL: [TxnState; 8] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
        TxnState::Dead,
        TxnState::PrepareEpochFence,
    ];

    pub fn id(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    pub fn from_id(id: i8) -> Option<TxnState> {
        TxnState::ALL.into_iter().find(|s| s.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    pub fn from_name(name: &str) -> Option<TxnState> {
        TxnState::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The states a transition into this one may start from (Kafka's `validPreviousStates`).
    fn valid_previous(self) -> &'static [TxnState] {
        use TxnState::*;
        match self {
            Empty => &[Empty, CompleteCommit, CompleteAbort],
            Ongoing => &[Ongoing, Empty, CompleteCommit, CompleteAbort],
            PrepareCommit => &[Ongoing],
            PrepareAbort => &[Ongoing, PrepareEpochFence],
            CompleteCommit => &[PrepareCommit],
            CompleteAbort => &[PrepareAbort],
            Dead => &[Empty, CompleteAbort, CompleteCommit],
            PrepareEpochFence => &[Ongoing],
        }
    }

    /// Whether an idle transactional id in this state may expire.
    fn expiration_allowed(self) -> bool {
        matches!(
            self,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        )
    }

    fn is_prepare(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// Commit or abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnResult {
    Commit,
    Abort,
}

/// One transactional id's state (Kafka's `TransactionMetadata`), also used for the target
/// of a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionMetadata {
    pub transactional_id: String,
    pub producer_id: i64,
    /// The producer id before the last change (KIP-360: a retried InitProducerId).
    pub last_producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump, or -1 (KIP-360).
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<TopicPartition>,
    /// When the first partition was added (-1 when no transaction is open).
    pub start_timestamp_ms: i64,
    pub last_update_timestamp_ms: i64,
}

impl TransactionMetadata {
    fn to_value(&self) -> TxnLogValue {
        TxnLogValue {
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            timeout_ms: self.timeout_ms,
            status: self.state.id(),
            partitions: if self.state == TxnState::Empty {
                BTreeSet::new()
            } else {
                self.partitions.clone()
            },
            last_update_timestamp_ms: self.last_update_timestamp_ms,
            start_timestamp_ms: self.start_timestamp_ms,
        }
    }

    /// The metadata a log value describes; the previous producer id and epoch are not in
    /// the log (Kafka's version 0 value), so they are unknown after a load.
    fn from_value(transactional_id: &str, value: &TxnLogValue) -> Option<TransactionMetadata> {
        let state = TxnState::from_id(value.status)?;
        Some(TransactionMetadata {
            transactional_id: transactional_id.to_string(),
            producer_id: value.producer_id,
            last_producer_id: NO_PRODUCER_ID,
            producer_epoch: value.producer_epoch,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            timeout_ms: value.timeout_ms,
            state,
            partitions: if state == TxnState::Empty {
                BTreeSet::new()
            } else {
                value.partitions.clone()
            },
            start_timestamp_ms: value.start_timestamp_ms,
            last_update_timestamp_ms: value.last_update_timestamp_ms,
        })
    }

    /// Kafka's `isEpochExhausted`: the last two epochs are kept so that a producer can
    /// always be fenced.
    fn epoch_exhausted(epoch: i16) -> bool {
        epoch >= i16::MAX - 1
    }
}

/// Settings, by Kafka's broker config names.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// `transaction.state.log.num.partitions`
    pub state_log_partitions: i32,
    /// `transaction.max.timeout.ms`
    pub max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`
    pub transactional_id_expiration_ms: i64,
    /// Pause before a marker or a completion write is retried (Kafka's `retry.backoff.ms`).
    pub retry_backoff_ms: u64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            state_log_partitions: 50,
            max_timeout_ms: 900_000,
            transactional_id_expiration_ms: 604_800_000,
            retry_backoff_ms: 100,
        }
    }
}

/// Where the coordinator writes: the partitions of `__transaction_state`.
pub trait TxnLog: Send + Sync + 'static {
    /// Appends records (key, value; `None` is a tombstone) to `partition` if this broker
    /// leads it in leader epoch `coordinator_epoch`, and resolves once they are on every
    /// in-sync replica (Kafka's acks=-1 append). Errors are the produce error codes
    /// (NOT_LEADER_OR_FOLLOWER, NOT_ENOUGH_REPLICAS, REQUEST_TIMED_OUT, …).
    fn append(
        &self,
        partition: i32,
        coordinator_epoch: i32,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> BoxFuture<'_, Result<(), i16>>;
}

/// The broker's producer id manager: unique ids across the cluster.
pub trait ProducerIdGenerator: Send + Sync + 'static {
    /// A new producer id, or Kafka's error code when none can be had now.
    fn generate(&self) -> BoxFuture<'_, Result<i64, i16>>;
}

/// Wall-clock milliseconds, from a handle so that tests control time.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A producer id and epoch a request carries (KIP-360).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdAndEpoch {
    pub producer_id: i64,
    pub epoch: i16,
}

/// An InitProducerId answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitProducerIdResult {
    pub error_code: i16,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

impl InitProducerIdResult {
    fn error(code: i16) -> InitProducerIdResult {
        InitProducerIdResult {
            error_code: code,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
        }
    }
}

/// A transaction as ListTransactions shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedTransaction {
    pub transactional_id: String,
    pub producer_id: i64,
    pub state: TxnState,
}

/// A ListTransactions answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListTransactionsResult {
    pub error_code: i16,
    pub unknown_state_filters: Vec<String>,
    pub transactions: Vec<ListedTransaction>,
}

/// A transactional id's metadata and the state a write in flight moves it to.
#[derive(Debug)]
pub(crate) struct TxnEntry {
    pub(crate) meta: TransactionMetadata,
    /// Kafka's `pendingState`: set while a transition is being written.
    pub(crate) pending: Option<TxnState>,
}

/// The transactions of one loaded `__transaction_state` partition.
#[derive(Debug)]
pub(crate) struct TxnPartition {
    pub(crate) coordinator_epoch: i32,
    pub(crate) txns: HashMap<String, TxnEntry>,
}

/// A partition being loaded: what its log replayed so far.
#[derive(Debug)]
struct Loading {
    coordinator_epoch: i32,
    txns: HashMap<String, TransactionMetadata>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    loading: HashMap<i32, Loading>,
    pub(crate) partitions: HashMap<i32, TxnPartition>,
    /// Transactions whose markers are being written, by transactional id.
    pub(crate) markers: HashMap<String, PendingMarkers>,
}

impl State {
    /// The loaded partition, or Kafka's error: COORDINATOR_LOAD_IN_PROGRESS while it loads,
    /// NOT_COORDINATOR when this broker does not coordinate it.
    fn partition(&mut self, partition: i32) -> Result<&mut TxnPartition, i16> {
        if self.loading.contains_key(&partition) {
            return Err(E::CoordinatorLoadInProgress.code());
        }
        self.partitions
            .get_mut(&partition)
            .ok_or(E::NotCoordinator.code())
    }

    /// The entry of a transactional id and its partition's coordinator epoch.
    pub(crate) fn entry(
        &mut self,
        partition: i32,
        transactional_id: &str,
    ) -> Result<Option<(i32, &mut TxnEntry)>, i16> {
        let p = self.partition(partition)?;
        let epoch = p.coordinator_epoch;
        Ok(p.txns.get_mut(transactional_id).map(|e| (epoch, e)))
    }
}

/// A programmer error in a transition: logged, and answered as Kafka's unknown server error
/// (Kafka throws IllegalStateException).
fn illegal(transactional_id: &str, what: String) -> i16 {
    error!(transactional_id, "{what}");
    debug_assert!(false, "{transactional_id}: {what}");
    E::UnknownServerError.code()
}

impl TxnEntry {
    /// Kafka's `prepareTransitionTo`: checks the transition and marks it pending.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &mut self,
        state: TxnState,
        producer_id: i64,
        epoch: i16,
        last_epoch: i16,
        timeout_ms: i32,
        partitions: BTreeSet<TopicPartition>,
        start_timestamp_ms: i64,
        update_timestamp_ms: i64,
    ) -> Result<TransactionMetadata, i16> {
        let id = &self.meta.transactional_id;
        if let Some(pending) = self.pending {
            return Err(illegal(
                id,
                format!("transition to {state:?} while {pending:?} is pending"),
            ));
        }
        if producer_id < 0 || (state != TxnState::Dead && epoch < 0) {
            return Err(illegal(
                id,
                format!("transition to producer id {producer_id} epoch {epoch}"),
            ));
        }
        if !state.valid_previous().contains(&self.meta.state) {
            return Err(illegal(
                id,
                format!("transition from {:?} to {state:?}", self.meta.state),
            ));
        }
        self.pending = Some(state);
        Ok(TransactionMetadata {
            transactional_id: id.clone(),
            producer_id,
            last_producer_id: self.meta.producer_id,
            producer_epoch: epoch,
            last_producer_epoch: last_epoch,
            timeout_ms,
            state,
            partitions,
            start_timestamp_ms,
            last_update_timestamp_ms: update_timestamp_ms,
        })
    }

    /// Kafka's `prepareFenceProducerEpoch`: an ongoing transaction is to be aborted by the
    /// coordinator with the next epoch, which fences the producer.
    fn prepare_fence_epoch(&mut self) -> Result<TransactionMetadata, i16> {
        let m = &self.meta;
        if m.producer_epoch == i16::MAX {
            return Err(illegal(
                &m.transactional_id,
                "cannot fence a producer at the largest epoch".into(),
            ));
        }
        let (pid, epoch, timeout, partitions, start, update) = (
            m.producer_id,
            m.producer_epoch + 1,
            m.timeout_ms,
            m.partitions.clone(),
            m.start_timestamp_ms,
            m.last_update_timestamp_ms,
        );
        self.prepare(
            TxnState::PrepareEpochFence,
            pid,
            epoch,
            NO_PRODUCER_EPOCH,
            timeout,
            partitions,
            start,
            update,
        )
    }

    /// Kafka's `prepareIncrementProducerEpoch` (InitProducerId of a known id).
    fn prepare_increment_epoch(
        &mut self,
        timeout_ms: i32,
        expected_epoch: Option<i16>,
        now_ms: i64,
    ) -> Result<TransactionMetadata, i16> {
        let m = &self.meta;
        if TransactionMetadata::epoch_exhausted(m.producer_epoch) {
            return Err(illegal(
                &m.transactional_id,
                "epoch bump of an exhausted producer id".into(),
            ));
        }
        let bumped = m.producer_epoch + 1;
        let (epoch, last_epoch) = match expected_epoch {
            // A new producer: bump and forget the previous epoch.
            None => (bumped, NO_PRODUCER_EPOCH),
            // The producer continues after an error, and no other producer took over.
            Some(e) if m.producer_epoch == NO_PRODUCER_EPOCH || e == m.producer_epoch => {
                (bumped, m.producer_epoch)
            }
            // A retry of a bump whose answer was lost: the current epoch again.
            Some(e) if e == m.last_producer_epoch => (m.producer_epoch, m.last_producer_epoch),
            Some(e) => {
                info!(
                    transactional_id = %m.transactional_id,
                    expected = e,
                    current = m.producer_epoch,
                    last = m.last_producer_epoch,
                    "InitProducerId with a fenced epoch"
                );
                return Err(E::ProducerFenced.code());
            }
        };
        let pid = m.producer_id;
        self.prepare(
            TxnState::Empty,
            pid,
            epoch,
            last_epoch,
            timeout_ms,
            BTreeSet::new(),
            -1,
            now_ms,
        )
    }

    /// Kafka's `prepareProducerIdRotation`: the epochs of the producer id ran out.
    fn prepare_producer_id_rotation(
        &mut self,
        producer_id: i64,
        timeout_ms: i32,
        now_ms: i64,
        record_last_epoch: bool,
    ) -> Result<TransactionMetadata, i16> {
        let last_epoch = if record_last_epoch {
            self.meta.producer_epoch
        } else {
            NO_PRODUCER_EPOCH
        };
        self.prepare(
            TxnState::Empty,
            producer_id,
            0,
            last_epoch,
            timeout_ms,
            BTreeSet::new(),
            -1,
            now_ms,
        )
    }

    /// Kafka's `prepareAddPartitions`: the transaction starts (or goes on) with more
    /// partitions.
    fn prepare_add_partitions(
        &mut self,
        added: &BTreeSet<TopicPartition>,
        now_ms: i64,
    ) -> Result<TransactionMetadata, i16> {
        let m = &self.meta;
        let start = match m.state {
            TxnState::Empty | TxnState::CompleteAbort | TxnState::CompleteCommit => now_ms,
            _ => m.start_timestamp_ms,
        };
        let partitions = m.partitions.union(added).cloned().collect();
        let (pid, epoch, last_epoch, timeout) = (
            m.producer_id,
            m.producer_epoch,
            m.last_producer_epoch,
            m.timeout_ms,
        );
        self.prepare(
            TxnState::Ongoing,
            pid,
            epoch,
            last_epoch,
            timeout,
            partitions,
            start,
            now_ms,
        )
    }

    /// Kafka's `prepareAbortOrCommit`, with the epoch to write (the current one, or the
    /// next when the coordinator fences the producer).
    fn prepare_abort_or_commit(
        &mut self,
        state: TxnState,
        epoch: i16,
        last_epoch: i16,
        now_ms: i64,
    ) -> Result<TransactionMetadata, i16> {
        let m = &self.meta;
        let (pid, timeout, partitions, start) = (
            m.producer_id,
            m.timeout_ms,
            m.partitions.clone(),
            m.start_timestamp_ms,
        );
        self.prepare(
            state, pid, epoch, last_epoch, timeout, partitions, start, now_ms,
        )
    }

    /// Kafka's `prepareComplete`: every marker is written.
    pub(crate) fn prepare_complete(&mut self, now_ms: i64) -> Result<TransactionMetadata, i16> {
        let m = &self.meta;
        let state = if m.state == TxnState::PrepareCommit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        let (pid, epoch, last_epoch, timeout, start) = (
            m.producer_id,
            m.producer_epoch,
            m.last_producer_epoch,
            m.timeout_ms,
            m.start_timestamp_ms,
        );
        self.prepare(
            state,
            pid,
            epoch,
            last_epoch,
            timeout,
            BTreeSet::new(),
            start,
            now_ms,
        )
    }

    /// Kafka's `prepareDead`: the transactional id expires.
    fn prepare_dead(&mut self) -> Result<TransactionMetadata, i16> {
        let m = &self.meta;
        let (pid, epoch, last_epoch, timeout, start, update) = (
            m.producer_id,
            m.producer_epoch,
            m.last_producer_epoch,
            m.timeout_ms,
            m.start_timestamp_ms,
            m.last_update_timestamp_ms,
        );
        self.prepare(
            TxnState::Dead,
            pid,
            epoch,
            last_epoch,
            timeout,
            BTreeSet::new(),
            start,
            update,
        )
    }

    /// Kafka's `completeTransitionTo`: after the transit was written, checks that it
    /// follows from the current metadata and takes it.
    fn complete(&mut self, transit: &TransactionMetadata) -> Result<(), String> {
        let m = &self.meta;
        let check = |ok: bool| -> Result<(), String> {
            if ok {
                Ok(())
            } else {
                Err(format!("transition from {m:?} to {transit:?}"))
            }
        };
        if self.pending != Some(transit.state) {
            return Err(format!(
                "completing {:?} while {:?} is pending",
                transit.state, self.pending
            ));
        }
        let same_epoch =
            transit.producer_epoch == m.producer_epoch && transit.producer_id == m.producer_id;
        match transit.state {
            TxnState::Empty => {
                let bump = transit.producer_epoch == m.producer_epoch.wrapping_add(1)
                    || (transit.producer_epoch == 0 && transit.producer_id != m.producer_id);
                check(
                    (transit.producer_epoch == m.producer_epoch || bump)
                        && transit.partitions.is_empty()
                        && transit.start_timestamp_ms == -1,
                )?;
            }
            TxnState::Ongoing => check(
                same_epoch
                    && m.partitions.is_subset(&transit.partitions)
                    && m.timeout_ms == transit.timeout_ms,
            )?,
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                // The abort that fences a producer carries the next epoch.
                let fence = transit.state == TxnState::PrepareAbort
                    && transit.producer_id == m.producer_id
                    && transit.producer_epoch == m.producer_epoch.wrapping_add(1);
                check(
                    (same_epoch || fence)
                        && m.partitions == transit.partitions
                        && m.timeout_ms == transit.timeout_ms
                        && m.start_timestamp_ms == transit.start_timestamp_ms,
                )?;
            }
            TxnState::CompleteCommit | TxnState::CompleteAbort => check(
                same_epoch
                    && m.timeout_ms == transit.timeout_ms
                    && transit.start_timestamp_ms != -1,
            )?,
            TxnState::PrepareEpochFence | TxnState::Dead => {
                return Err(format!("{:?} is never written", transit.state))
            }
        }
        self.meta = transit.clone();
        self.pending = None;
        Ok(())
    }
}

/// Kafka's translation of a failed append into the coordinator's answer.
fn append_error(code: i16) -> i16 {
    let is = |e: E| code == e.code();
    if is(E::UnknownTopicOrPartition)
        || is(E::NotEnoughReplicas)
        || is(E::NotEnoughReplicasAfterAppend)
        || is(E::RequestTimedOut)
    {
        E::CoordinatorNotAvailable.code()
    } else if is(E::NotLeaderOrFollower) || is(E::KafkaStorageError) {
        E::NotCoordinator.code()
    } else if is(E::MessageTooLarge) || is(E::RecordListTooLarge) {
        E::UnknownServerError.code()
    } else {
        code
    }
}

/// What one round of InitProducerId decided under the lock.
enum InitStep {
    Done(InitProducerIdResult),
    /// A new producer id is needed first (a new transactional id or exhausted epochs).
    NeedProducerId,
    Write(i32, TransactionMetadata),
    /// An ongoing transaction is aborted first, fencing its producer.
    Fence(TransactionMetadata),
}

/// The transaction coordinator of the `__transaction_state` partitions this broker leads.
pub struct TransactionCoordinator {
    pub(crate) config: TxnConfig,
    log: Arc<dyn TxnLog>,
    producer_ids: Arc<dyn ProducerIdGenerator>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) state: Mutex<State>,
    /// Wakes the marker sender when markers are added.
    pub(crate) markers_added: Notify,
}

impl TransactionCoordinator {
    pub fn new(
        config: TxnConfig,
        log: Arc<dyn TxnLog>,
        producer_ids: Arc<dyn ProducerIdGenerator>,
        clock: Arc<dyn Clock>,
    ) -> TransactionCoordinator {
        TransactionCoordinator {
            config,
            log,
            producer_ids,
            clock,
            state: Mutex::new(State::default()),
            markers_added: Notify::new(),
        }
    }

    pub fn config(&self) -> &TxnConfig {
        &self.config
    }

    /// The `__transaction_state` partition of a transactional id (Kafka's hash).
    pub fn partition_for(&self, transactional_id: &str) -> i32 {
        crate::records::partition_for(transactional_id, self.config.state_log_partitions)
    }

    /// The coordinator epoch a partition is loaded with, if it is loaded.
    pub fn loaded_epoch(&self, partition: i32) -> Option<i32> {
        self.state
            .lock()
            .partitions
            .get(&partition)
            .map(|p| p.coordinator_epoch)
    }

    // ----- loading and unloading -----

    /// Starts loading a partition this broker now leads in leader epoch `coordinator_epoch`:
    /// until [`Self::complete_load`], its transactional ids get COORDINATOR_LOAD_IN_PROGRESS.
    /// Whatever was loaded before (an older epoch) and its markers are dropped.
    pub fn begin_load(&self, partition: i32, coordinator_epoch: i32) {
        let mut state = self.state.lock();
        state.partitions.remove(&partition);
        state.markers.retain(|_, m| m.txn_partition != partition);
        state.loading.insert(
            partition,
            Loading {
                coordinator_epoch,
                txns: HashMap::new(),
            },
        );
    }

    /// Applies one record of a partition being loaded (the same metadata a live write of
    /// that record applied). Records that do not decode are skipped with a warning.
    pub fn replay(&self, partition: i32, key: &[u8], value: Option<&[u8]>) {
        let record = match TxnRecord::decode(key, value) {
            Ok(record) => record,
            Err(e) => {
                warn!(partition, error = %e, "skipping a record of __transaction_state");
                return;
            }
        };
        let mut state = self.state.lock();
        let Some(loading) = state.loading.get_mut(&partition) else {
            return;
        };
        match record.value {
            None => {
                loading.txns.remove(&record.transactional_id);
            }
            Some(value) => {
                match TransactionMetadata::from_value(&record.transactional_id, &value) {
                    Some(meta) => {
                        loading.txns.insert(record.transactional_id, meta);
                    }
                    None => warn!(
                        partition,
                        transactional_id = %record.transactional_id,
                        status = value.status,
                        "skipping a transaction record with an unknown state"
                    ),
                }
            }
        }
    }

    /// Finishes loading: the partition's transactional ids are served from now on, and
    /// transactions found in a Prepare state resume writing their markers. Returns how many
    /// transactional ids were loaded (0 if the load was superseded).
    pub fn complete_load(&self, partition: i32, coordinator_epoch: i32) -> usize {
        let now_ms = self.clock.now_ms();
        let mut state = self.state.lock();
        match state.loading.get(&partition) {
            Some(l) if l.coordinator_epoch == coordinator_epoch => {}
            _ => return 0,
        }
        let Some(loading) = state.loading.remove(&partition) else {
            return 0;
        };
        let mut txns = HashMap::with_capacity(loading.txns.len());
        let mut resumed = Vec::new();
        for (id, meta) in loading.txns {
            let mut entry = TxnEntry {
                meta,
                pending: None,
            };
            if entry.meta.state.is_prepare() {
                match entry.prepare_complete(now_ms) {
                    Ok(complete) => resumed.push(PendingMarkers::new(
                        partition,
                        coordinator_epoch,
                        &entry.meta,
                        complete,
                    )),
                    Err(_) => continue,
                }
            }
            txns.insert(id, entry);
        }
        let count = txns.len();
        state.partitions.insert(
            partition,
            TxnPartition {
                coordinator_epoch,
                txns,
            },
        );
        let resuming = resumed.len();
        for pending in resumed {
            state
                .markers
                .insert(pending.complete.transactional_id.clone(), pending);
        }
        drop(state);
        if resuming > 0 {
            info!(
                partition,
                transactions = resuming,
                "resuming the markers of prepared transactions"
            );
            self.markers_added.notify_one();
        }
        count
    }

    /// Loads a partition from its records in one go (tests and small logs).
    pub fn load<'a>(
        &self,
        partition: i32,
        coordinator_epoch: i32,
        records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> usize {
        self.begin_load(partition, coordinator_epoch);
        for (key, value) in records {
            self.replay(partition, key, value);
        }
        self.complete_load(partition, coordinator_epoch)
    }

    /// Forgets a partition whose leadership moved away (or a load in progress), with the
    /// markers of its transactions; a write in flight then answers NOT_COORDINATOR.
    pub fn unload_partition(&self, partition: i32) -> usize {
        let mut state = self.state.lock();
        state.loading.remove(&partition);
        state.markers.retain(|_, m| m.txn_partition != partition);
        state
            .partitions
            .remove(&partition)
            .map_or(0, |p| p.txns.len())
    }

    // ----- writes -----

    /// Writes a prepared transition and, once durable, applies it (Kafka's
    /// `appendTransactionToLog`). On a failure the pending state is cleared, unless the
    /// error is `keep_pending_on` (the caller retries).
    pub(crate) async fn write_transition(
        &self,
        coordinator_epoch: i32,
        transit: TransactionMetadata,
        keep_pending_on: Option<i16>,
    ) -> Result<(), i16> {
        let id = transit.transactional_id.clone();
        let partition = self.partition_for(&id);
        {
            let mut state = self.state.lock();
            match state.entry(partition, &id)? {
                Some((epoch, _)) if epoch == coordinator_epoch => {}
                _ => return Err(E::NotCoordinator.code()),
            }
        }
        let record = TxnRecord {
            transactional_id: id.clone(),
            value: Some(transit.to_value()),
        }
        .encode();
        let appended = self
            .log
            .append(partition, coordinator_epoch, vec![record])
            .await
            .map_err(append_error);
        let mut state = self.state.lock();
        let entry = match state.entry(partition, &id) {
            Err(code) => return Err(appended.err().unwrap_or(code)),
            Ok(Some((epoch, entry))) if epoch == coordinator_epoch => entry,
            Ok(_) => {
                info!(transactional_id = %id, "coordinator changed while writing; not applying the transition");
                return Err(appended.err().unwrap_or(E::NotCoordinator.code()));
            }
        };
        match appended {
            Ok(()) => entry.complete(&transit).map_err(|what| {
                entry.pending = None;
                illegal(&id, what)
            }),
            Err(code) => {
                if keep_pending_on != Some(code) {
                    entry.pending = None;
                }
                debug!(transactional_id = %id, code, to = ?transit.state, "writing a transaction transition failed");
                Err(code)
            }
        }
    }

    // ----- requests -----

    /// InitProducerId with a transactional id (KIP-98, KIP-360).
    pub async fn init_producer_id(
        &self,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<ProducerIdAndEpoch>,
    ) -> InitProducerIdResult {
        if transactional_id.is_empty() {
            return InitProducerIdResult::error(E::InvalidRequest.code());
        }
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return InitProducerIdResult::error(E::InvalidTransactionTimeout.code());
        }
        let mut new_producer_id = None;
        for _ in 0..INIT_ROUNDS_MAX {
            let step =
                self.prepare_init(transactional_id, timeout_ms, expected, &mut new_producer_id);
            match step {
                InitStep::Done(result) => return result,
                InitStep::NeedProducerId => match self.producer_ids.generate().await {
                    Ok(id) => new_producer_id = Some(id),
                    Err(code) => return InitProducerIdResult::error(code),
                },
                InitStep::Write(coordinator_epoch, transit) => {
                    let (producer_id, producer_epoch) =
                        (transit.producer_id, transit.producer_epoch);
                    return match self
                        .write_transition(coordinator_epoch, transit, None)
                        .await
                    {
                        Ok(()) => {
                            info!(
                                transactional_id,
                                producer_id, producer_epoch, "initialized transactional id"
                            );
                            InitProducerIdResult {
                                error_code: 0,
                                producer_id,
                                producer_epoch,
                            }
                        }
                        Err(code) => InitProducerIdResult::error(code),
                    };
                }
                InitStep::Fence(transit) => {
                    let code = self
                        .end_transaction(
                            transactional_id,
                            transit.producer_id,
                            transit.producer_epoch,
                            TxnResult::Abort,
                            false,
                        )
                        .await;
                    // The client retries and then gets the epoch after the fence.
                    return InitProducerIdResult::error(if code == 0 {
                        E::ConcurrentTransactions.code()
                    } else {
                        code
                    });
                }
            }
        }
        InitProducerIdResult::error(E::ConcurrentTransactions.code())
    }

    fn prepare_init(
        &self,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<ProducerIdAndEpoch>,
        new_producer_id: &mut Option<i64>,
    ) -> InitStep {
        let now_ms = self.clock.now_ms();
        let partition = self.partition_for(transactional_id);
        let mut state = self.state.lock();
        let p = match state.partition(partition) {
            Ok(p) => p,
            Err(code) => return InitStep::Done(InitProducerIdResult::error(code)),
        };
        let coordinator_epoch = p.coordinator_epoch;
        if !p.txns.contains_key(transactional_id) {
            let Some(producer_id) = new_producer_id.take() else {
                return InitStep::NeedProducerId;
            };
            p.txns.insert(
                transactional_id.to_string(),
                TxnEntry {
                    meta: TransactionMetadata {
                        transactional_id: transactional_id.to_string(),
                        producer_id,
                        last_producer_id: NO_PRODUCER_ID,
                        producer_epoch: NO_PRODUCER_EPOCH,
                        last_producer_epoch: NO_PRODUCER_EPOCH,
                        timeout_ms,
                        state: TxnState::Empty,
                        partitions: BTreeSet::new(),
                        start_timestamp_ms: -1,
                        last_update_timestamp_ms: now_ms,
                    },
                    pending: None,
                },
            );
        }
        let Some(entry) = p.txns.get_mut(transactional_id) else {
            return InitStep::Done(InitProducerIdResult::error(E::NotCoordinator.code()));
        };
        let fail = |code: E| InitStep::Done(InitProducerIdResult::error(code.code()));
        if entry.pending.is_some() {
            return fail(E::ConcurrentTransactions);
        }
        let m = &entry.meta;
        // KIP-360: a producer that names its id and epoch must still own the id, unless the
        // id is new (epoch -1) or this is a retry after the epochs ran out.
        if let Some(e) = expected {
            let valid = m.producer_epoch == NO_PRODUCER_EPOCH
                || e.producer_id == m.producer_id
                || (e.producer_id == m.last_producer_id
                    && TransactionMetadata::epoch_exhausted(e.epoch));
            if !valid {
                return fail(E::ProducerFenced);
            }
        }
        let result = match m.state {
            TxnState::PrepareAbort | TxnState::PrepareCommit => {
                return fail(E::ConcurrentTransactions)
            }
            TxnState::Empty | TxnState::CompleteAbort | TxnState::CompleteCommit => {
                let rotate = TransactionMetadata::epoch_exhausted(m.producer_epoch)
                    && expected.is_none_or(|e| e.epoch == m.producer_epoch);
                if rotate {
                    let Some(producer_id) = new_producer_id.take() else {
                        return InitStep::NeedProducerId;
                    };
                    entry.prepare_producer_id_rotation(
                        producer_id,
                        timeout_ms,
                        now_ms,
                        expected.is_some(),
                    )
                } else {
                    entry.prepare_increment_epoch(timeout_ms, expected.map(|e| e.epoch), now_ms)
                }
            }
            TxnState::Ongoing => {
                return match entry.prepare_fence_epoch() {
                    Ok(transit) => InitStep::Fence(transit),
                    Err(code) => InitStep::Done(InitProducerIdResult::error(code)),
                }
            }
            TxnState::Dead | TxnState::PrepareEpochFence => Err(illegal(
                transactional_id,
                format!("InitProducerId found state {:?}", m.state),
            )),
        };
        match result {
            Ok(transit) => InitStep::Write(coordinator_epoch, transit),
            Err(code) => InitStep::Done(InitProducerIdResult::error(code)),
        }
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn with the group's offsets partition): the
    /// transaction starts or grows; answers once that is durable.
    pub async fn add_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &BTreeSet<TopicPartition>,
    ) -> i16 {
        if transactional_id.is_empty() {
            return E::InvalidRequest.code();
        }
        let now_ms = self.clock.now_ms();
        let partition = self.partition_for(transactional_id);
        let prepared = {
            let mut state = self.state.lock();
            match state.entry(partition, transactional_id) {
                Err(code) => Err(code),
                Ok(None) => Err(E::InvalidProducerIdMapping.code()),
                Ok(Some((coordinator_epoch, entry))) => {
                    let m = &entry.meta;
                    if m.producer_id != producer_id {
                        Err(E::InvalidProducerIdMapping.code())
                    } else if m.producer_epoch != producer_epoch {
                        Err(E::ProducerFenced.code())
                    } else if entry.pending.is_some() || m.state.is_prepare() {
                        Err(E::ConcurrentTransactions.code())
                    } else if m.state == TxnState::Ongoing && partitions.is_subset(&m.partitions) {
                        // Nothing new: answer at once.
                        Err(0)
                    } else {
                        entry
                            .prepare_add_partitions(partitions, now_ms)
                            .map(|t| (coordinator_epoch, t))
                    }
                }
            }
        };
        match prepared {
            Err(code) => code,
            Ok((coordinator_epoch, transit)) => self
                .write_transition(coordinator_epoch, transit, None)
                .await
                .err()
                .unwrap_or(0),
        }
    }

    /// AddPartitionsToTxn v4+ with `verify_only` (KIP-890 part 1): whether each partition is
    /// in the ongoing transaction, asked by a partition leader before it appends a
    /// transactional batch. Nothing is written.
    pub fn verify_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &BTreeSet<TopicPartition>,
    ) -> Vec<(TopicPartition, i16)> {
        let all = |code: i16| partitions.iter().map(|tp| (tp.clone(), code)).collect();
        if transactional_id.is_empty() {
            return all(E::InvalidRequest.code());
        }
        let partition = self.partition_for(transactional_id);
        let mut state = self.state.lock();
        let entry = match state.entry(partition, transactional_id) {
            Err(code) => return all(code),
            Ok(None) => return all(E::InvalidProducerIdMapping.code()),
            Ok(Some((_, entry))) => entry,
        };
        let m = &entry.meta;
        if m.producer_id != producer_id {
            return all(E::InvalidProducerIdMapping.code());
        }
        if m.producer_epoch != producer_epoch {
            return all(E::ProducerFenced.code());
        }
        if m.state.is_prepare() {
            return all(E::ConcurrentTransactions.code());
        }
        partitions
            .iter()
            .map(|tp| {
                let code = if m.partitions.contains(tp) {
                    0
                } else {
                    E::TransactionAbortable.code()
                };
                (tp.clone(), code)
            })
            .collect()
    }

    /// EndTxn from a producer: PrepareCommit or PrepareAbort, answered once durable; the
    /// markers follow.
    pub async fn end_txn(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        result: TxnResult,
    ) -> i16 {
        self.end_transaction(transactional_id, producer_id, producer_epoch, result, true)
            .await
    }

    /// Kafka's `endTransaction`: from a client (strict epoch) or from the coordinator
    /// itself, aborting with the fencing epoch prepared by InitProducerId or a timeout.
    async fn end_transaction(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        result: TxnResult,
        from_client: bool,
    ) -> i16 {
        if transactional_id.is_empty() {
            return E::InvalidRequest.code();
        }
        let now_ms = self.clock.now_ms();
        let partition = self.partition_for(transactional_id);
        let prepared = {
            let mut state = self.state.lock();
            match state.entry(partition, transactional_id) {
                Err(code) => Err(code),
                Ok(None) => Err(E::InvalidProducerIdMapping.code()),
                Ok(Some((coordinator_epoch, entry))) => {
                    let prepared = prepare_end(
                        entry,
                        producer_id,
                        producer_epoch,
                        result,
                        from_client,
                        now_ms,
                    );
                    if prepared.is_err()
                        && !from_client
                        && entry.pending == Some(TxnState::PrepareEpochFence)
                    {
                        entry.pending = None;
                    }
                    prepared.map(|t| (coordinator_epoch, t))
                }
            }
        };
        let (coordinator_epoch, transit) = match prepared {
            Err(code) => return code,
            Ok(prepared) => prepared,
        };
        let epoch = transit.producer_epoch;
        if let Err(code) = self
            .write_transition(coordinator_epoch, transit, None)
            .await
        {
            info!(
                transactional_id,
                code,
                ?result,
                "ending the transaction failed"
            );
            return code;
        }
        // Durable: answer the client and write the markers.
        let mut state = self.state.lock();
        let entry = match state.entry(partition, transactional_id) {
            Err(code) => return code,
            Ok(Some((e, entry))) if e == coordinator_epoch => entry,
            Ok(_) => return E::NotCoordinator.code(),
        };
        let m = &entry.meta;
        let expected_state = match result {
            TxnResult::Commit => TxnState::PrepareCommit,
            TxnResult::Abort => TxnState::PrepareAbort,
        };
        if m.producer_id != producer_id {
            return E::InvalidProducerIdMapping.code();
        }
        if m.producer_epoch != epoch {
            return E::ProducerFenced.code();
        }
        if entry.pending.is_some() {
            return E::ConcurrentTransactions.code();
        }
        if m.state != expected_state {
            return E::InvalidTxnState.code();
        }
        let complete = match entry.prepare_complete(now_ms) {
            Ok(complete) => complete,
            Err(code) => return code,
        };
        let pending = PendingMarkers::new(partition, coordinator_epoch, &entry.meta, complete);
        state.markers.insert(transactional_id.to_string(), pending);
        drop(state);
        self.markers_added.notify_one();
        0
    }

    /// Aborts the ongoing transactions that ran past their timeout, fencing their producers
    /// with the next epoch (Kafka's `abortTimedOutTransactions`, every
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`). Returns how many it
    /// aborted.
    pub async fn abort_timed_out_transactions(self: &Arc<Self>) -> usize {
        let now_ms = self.clock.now_ms();
        let timed_out: Vec<(String, i64)> = {
            let state = self.state.lock();
            state
                .partitions
                .values()
                .flat_map(|p| p.txns.values())
                .filter(|e| e.pending.is_none() && timed_out(&e.meta, now_ms))
                .map(|e| (e.meta.transactional_id.clone(), e.meta.producer_id))
                .collect()
        };
        let mut aborts = tokio::task::JoinSet::new();
        for (id, producer_id) in timed_out {
            let this = Arc::clone(self);
            aborts.spawn(async move { this.abort_timed_out(&id, producer_id, now_ms).await });
        }
        let mut aborted = 0;
        while let Some(done) = aborts.join_next().await {
            if matches!(done, Ok(true)) {
                aborted += 1;
            }
        }
        aborted
    }

    async fn abort_timed_out(&self, transactional_id: &str, producer_id: i64, now_ms: i64) -> bool {
        let partition = self.partition_for(transactional_id);
        let fence = {
            let mut state = self.state.lock();
            match state.entry(partition, transactional_id) {
                Ok(Some((_, entry)))
                    if entry.meta.producer_id == producer_id
                        && entry.pending.is_none()
                        && timed_out(&entry.meta, now_ms) =>
                {
                    entry.prepare_fence_epoch().ok()
                }
                _ => None,
            }
        };
        let Some(fence) = fence else { return false };
        let code = self
            .end_transaction(
                transactional_id,
                fence.producer_id,
                fence.producer_epoch,
                TxnResult::Abort,
                false,
            )
            .await;
        if code == 0 {
            info!(
                transactional_id,
                producer_id,
                epoch = fence.producer_epoch,
                "aborting a transaction that ran past its timeout"
            );
        } else {
            warn!(
                transactional_id,
                code, "aborting a timed-out transaction failed"
            );
        }
        code == 0
    }

    /// Removes the transactional ids idle in Empty, CompleteCommit or CompleteAbort for
    /// `transactional.id.expiration.ms` (a tombstone each), as Kafka does every
    /// `transaction.remove.expired.transaction.cleanup.interval.ms`. Returns how many went.
    pub async fn remove_expired_transactional_ids(&self) -> usize {
        let now_ms = self.clock.now_ms();
        let horizon_ms = now_ms.saturating_sub(self.config.transactional_id_expiration_ms);
        let mut batches: Vec<Tombstones> = Vec::new();
        {
            let mut state = self.state.lock();
            for (partition, p) in state.partitions.iter_mut() {
                let mut expired = Vec::new();
                for entry in p.txns.values_mut() {
                    if entry.pending.is_none()
                        && entry.meta.state.expiration_allowed()
                        && entry.meta.last_update_timestamp_ms <= horizon_ms
                        && entry.prepare_dead().is_ok()
                    {
                        expired.push((
                            entry.meta.transactional_id.clone(),
                            entry.meta.producer_epoch,
                        ));
                    }
                }
                for chunk in expired.chunks(TOMBSTONES_PER_APPEND_MAX) {
                    batches.push(Tombstones {
                        partition: *partition,
                        coordinator_epoch: p.coordinator_epoch,
                        ids: chunk.to_vec(),
                    });
                }
            }
        }
        let mut removed = 0;
        for Tombstones {
            partition,
            coordinator_epoch,
            ids,
        } in batches
        {
            let tombstones = ids
                .iter()
                .map(|(id, _)| (TxnRecord::key(id), None))
                .collect();
            let appended = self
                .log
                .append(partition, coordinator_epoch, tombstones)
                .await;
            let mut state = self.state.lock();
            let Some(p) = state
                .partitions
                .get_mut(&partition)
                .filter(|p| p.coordinator_epoch == coordinator_epoch)
            else {
                continue;
            };
            for (id, epoch) in ids {
                let Some(entry) = p.txns.get_mut(&id) else {
                    continue;
                };
                if appended.is_ok()
                    && entry.pending == Some(TxnState::Dead)
                    && entry.meta.producer_epoch == epoch
                {
                    p.txns.remove(&id);
                    removed += 1;
                } else {
                    entry.pending = None;
                }
            }
            if let Err(code) = appended {
                warn!(
                    partition,
                    code, "writing tombstones of expired transactional ids failed"
                );
            }
        }
        if removed > 0 {
            info!(removed, "removed expired transactional ids");
        }
        removed
    }

    /// DescribeTransactions for one id: its metadata, or NOT_COORDINATOR,
    /// COORDINATOR_LOAD_IN_PROGRESS, INVALID_REQUEST (empty id), TRANSACTIONAL_ID_NOT_FOUND.
    pub fn describe(&self, transactional_id: &str) -> Result<TransactionMetadata, i16> {
        let partition = self.partition_for(transactional_id);
        let mut state = self.state.lock();
        let p = state.partition(partition)?;
        if transactional_id.is_empty() {
            return Err(E::InvalidRequest.code());
        }
        match p.txns.get(transactional_id) {
            Some(e) if e.meta.state != TxnState::Dead => Ok(e.meta.clone()),
            _ => Err(E::TransactionalIdNotFound.code()),
        }
    }

    /// ListTransactions: the transactions of every loaded partition, filtered by state names
    /// (unknown names are reported back), producer ids and, from v1, running longer than
    /// `duration_filter_ms` (-1: no filter).
    pub fn list(
        &self,
        state_filters: &[String],
        producer_id_filters: &[i64],
        duration_filter_ms: i64,
    ) -> ListTransactionsResult {
        let state = self.state.lock();
        if !state.loading.is_empty() {
            return ListTransactionsResult {
                error_code: E::CoordinatorLoadInProgress.code(),
                ..Default::default()
            };
        }
        let mut unknown_state_filters = Vec::new();
        let mut states = BTreeSet::new();
        for name in state_filters {
            match TxnState::from_name(name) {
                Some(s) => {
                    states.insert(s);
                }
                None => unknown_state_filters.push(name.clone()),
            }
        }
        let now_ms = self.clock.now_ms();
        let include = |m: &TransactionMetadata| {
            m.state != TxnState::Dead
                && (producer_id_filters.is_empty() || producer_id_filters.contains(&m.producer_id))
                && (state_filters.is_empty() || states.contains(&m.state))
                && (duration_filter_ms < 0 || now_ms - m.start_timestamp_ms > duration_filter_ms)
        };
        let mut transactions: Vec<ListedTransaction> = state
            .partitions
            .values()
            .flat_map(|p| p.txns.values())
            .filter(|e| include(&e.meta))
            .map(|e| ListedTransaction {
                transactional_id: e.meta.transactional_id.clone(),
                producer_id: e.meta.producer_id,
                state: e.meta.state,
            })
            .collect();
        transactions.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        ListTransactionsResult {
            error_code: 0,
            unknown_state_filters,
            transactions,
        }
    }
}

/// Expired transactional ids of one partition, written in one append.
struct Tombstones {
    partition: i32,
    coordinator_epoch: i32,
    /// (transactional id, producer epoch when it was found expired)
    ids: Vec<(String, i16)>,
}

fn timed_out(m: &TransactionMetadata, now_ms: i64) -> bool {
    m.state == TxnState::Ongoing
        && m.start_timestamp_ms.saturating_add(i64::from(m.timeout_ms)) < now_ms
}

/// The checks and transition of EndTxn before its write (Kafka's `endTransaction` up to
/// the append).
fn prepare_end(
    entry: &mut TxnEntry,
    producer_id: i64,
    producer_epoch: i16,
    result: TxnResult,
    from_client: bool,
    now_ms: i64,
) -> Result<TransactionMetadata, i16> {
    let m = &entry.meta;
    let fencing = !from_client && entry.pending == Some(TxnState::PrepareEpochFence);
    if m.producer_id != producer_id {
        return Err(E::InvalidProducerIdMapping.code());
    }
    // Clients must name the current epoch; the coordinator's own abort may bump it.
    if (from_client && producer_epoch != m.producer_epoch) || producer_epoch < m.producer_epoch {
        return Err(E::ProducerFenced.code());
    }
    if entry.pending.is_some() && !fencing {
        return Err(E::ConcurrentTransactions.code());
    }
    let invalid = || {
        debug!(transactional_id = %m.transactional_id, state = ?m.state, ?result, "EndTxn in the wrong state");
        Err(E::InvalidTxnState.code())
    };
    match (m.state, result) {
        (TxnState::Ongoing, _) => {
            let next = match result {
                TxnResult::Commit => TxnState::PrepareCommit,
                TxnResult::Abort => TxnState::PrepareAbort,
            };
            if fencing && next == TxnState::PrepareAbort {
                entry.pending = None;
                entry.prepare_abort_or_commit(next, producer_epoch, NO_PRODUCER_EPOCH, now_ms)
            } else if fencing {
                invalid()
            } else {
                let (epoch, last_epoch) = (m.producer_epoch, m.last_producer_epoch);
                entry.prepare_abort_or_commit(next, epoch, last_epoch, now_ms)
            }
        }
        (TxnState::CompleteCommit, TxnResult::Commit)
        | (TxnState::CompleteAbort, TxnResult::Abort) => Err(0),
        (TxnState::PrepareCommit, TxnResult::Commit)
        | (TxnState::PrepareAbort, TxnResult::Abort) => Err(E::ConcurrentTransactions.code()),
        (
            TxnState::Empty
            | TxnState::CompleteCommit
            | TxnState::CompleteAbort
            | TxnState::PrepareCommit
            | TxnState::PrepareAbort,
            _,
        ) => invalid(),
        (TxnState::Dead | TxnState::PrepareEpochFence, _) => Err(illegal(
            &m.transactional_id,
            format!("EndTxn found state {:?}", m.state),
        )),
    }
}

#[cfg(test)]
mod tests;
