//! The producer state of one partition (Kafka's `ProducerStateManager`, `ProducerStateEntry`
//! and `ProducerAppendInfo`): per producer id its epoch, the metadata of its last
//! [`BATCHES_RETAINED`] batches (so a retried batch is answered with its original offsets),
//! its coordinator epoch, last timestamp and the first offset of its ongoing transaction;
//! per partition the ongoing transactions and the completed ones whose markers are not yet
//! below the high watermark, which give the first unstable offset (the last stable offset
//! is the smaller of it and the high watermark).
//!
//! A leader's append is checked batch by batch into a `PendingUpdate` and committed only
//! once every batch passed and the bytes are written (Kafka's `AppendOrigin.CLIENT`);
//! followers and recovery apply the same state and refuse nothing (`REPLICATION`).
//!
//! Snapshots (Kafka's `<offset>.snapshot` files, `ProducerStateManager::write_snapshot`)
//! hold the state as of an offset: `version i16 (1) | crc u32 (CRC32C of the rest) |
//! count i32 | entries`, each entry `producer_id i64 | epoch i16 | last_sequence i32 |
//! last_offset i64 | offset_delta i32 | timestamp i64 | coordinator_epoch i32 |
//! current_txn_first_offset i64`. Only the last batch of each producer is kept, as in Kafka.
//!
//! Control batches (transaction markers, Kafka's `EndTransactionMarker`) are built and read
//! here too: one record whose key is `version i16 (0) | type i16 (0 abort, 1 commit)` and
//! whose value is `version i16 (0) | coordinator_epoch i32`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use strom_protocol::batch::BATCH_HEADER_BYTES;
use strom_protocol::records::{BatchBuilder, BatchHeader, Record, RecordReader, RecordsError};
use tracing::{info, warn};

use crate::index::TxnEntry;
use crate::log::FilePosition;
use crate::{file_name, StorageError};

pub const NO_PRODUCER_ID: i64 = -1;
pub const NO_PRODUCER_EPOCH: i16 = -1;
pub const NO_SEQUENCE: i32 = -1;
/// Batches whose metadata each producer keeps: a retry of one of them is a duplicate
/// (Kafka's `NUM_BATCHES_TO_RETAIN`, the most in-flight requests an idempotent producer
/// may have).
pub const BATCHES_RETAINED: usize = 5;
/// The extension of producer state snapshot files.
pub const SNAPSHOT_EXTENSION: &str = "snapshot";

const SNAPSHOT_VERSION: i16 = 1;
/// Version, CRC and entry count.
const SNAPSHOT_HEADER_BYTES: usize = 2 + 4 + 4;
/// Where the CRC'd part of a snapshot starts.
const SNAPSHOT_CRC_START: usize = 6;
const SNAPSHOT_ENTRY_BYTES: usize = 8 + 2 + 4 + 8 + 4 + 8 + 4 + 8;

/// Attributes of a control batch: transactional and control.
const CONTROL_BATCH_ATTRIBUTES: i16 = 0x10 | 0x20;
const CONTROL_RECORD_VERSION: i16 = 0;
const END_TXN_MARKER_VERSION: i16 = 0;
/// Largest control record body read back (a marker's record is 17 bytes).
const CONTROL_BATCH_DECOMPRESSED_BYTES_MAX: usize = 1 << 16;

/// The outcome a transaction marker writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlType {
    Abort,
    Commit,
}

impl ControlType {
    /// The control record type in a marker's key (Kafka's `ControlRecordType`).
    pub fn code(self) -> i16 {
        match self {
            ControlType::Abort => 0,
            ControlType::Commit => 1,
        }
    }

    pub fn from_code(code: i16) -> Option<ControlType> {
        match code {
            0 => Some(ControlType::Abort),
            1 => Some(ControlType::Commit),
            _ => None,
        }
    }
}

/// One producer's state as DescribeProducers reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSummary {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub last_sequence: i32,
    pub last_timestamp_ms: i64,
    pub coordinator_epoch: i32,
    /// -1: no ongoing transaction.
    pub current_txn_start_offset: i64,
}

/// An aborted transaction a read_committed fetch must skip: its producer and first offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
}

/// Kafka's `incrementSequence`: sequences wrap from `i32::MAX` to 0.
pub(crate) fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    let next = i64::from(sequence) + i64::from(increment);
    if next > i64::from(i32::MAX) {
        (next - i64::from(i32::MAX) - 1) as i32
    } else {
        next as i32
    }
}

/// Kafka's `decrementSequence`, the inverse of [`increment_sequence`].
pub(crate) fn decrement_sequence(sequence: i32, decrement: i32) -> i32 {
    let previous = i64::from(sequence) - i64::from(decrement);
    if previous < 0 {
        (previous + i64::from(i32::MAX) + 1) as i32
    } else {
        previous as i32
    }
}

/// Whether `next` follows `last` (Kafka's `inSequence`).
fn in_sequence(last: i32, next: i32) -> bool {
    i64::from(next) == i64::from(last) + 1 || (next == 0 && last == i32::MAX)
}

/// What a producer's entry keeps of one of its batches (Kafka's `BatchMetadata`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BatchMetadata {
    pub last_sequence: i32,
    pub last_offset: i64,
    pub offset_delta: i32,
    pub timestamp_ms: i64,
}

impl BatchMetadata {
    pub(crate) fn first_sequence(&self) -> i32 {
        decrement_sequence(self.last_sequence, self.offset_delta)
    }

    pub(crate) fn first_offset(&self) -> i64 {
        self.last_offset - i64::from(self.offset_delta)
    }
}

/// One producer's state (Kafka's `ProducerStateEntry`); `Copy`, so checking an append
/// against it allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerEntry {
    pub producer_epoch: i16,
    pub coordinator_epoch: i32,
    pub last_timestamp_ms: i64,
    /// -1: no ongoing transaction.
    pub current_txn_first_offset: i64,
    /// Oldest first; `batch_count` of them are set.
    batches: [BatchMetadata; BATCHES_RETAINED],
    batch_count: u8,
}

impl ProducerEntry {
    /// A producer the log knows nothing of.
    pub(crate) fn empty() -> ProducerEntry {
        ProducerEntry {
            producer_epoch: NO_PRODUCER_EPOCH,
            coordinator_epoch: -1,
            last_timestamp_ms: -1,
            current_txn_first_offset: -1,
            batches: [BatchMetadata::default(); BATCHES_RETAINED],
            batch_count: 0,
        }
    }

    fn batches(&self) -> &[BatchMetadata] {
        &self.batches[..usize::from(self.batch_count)]
    }

    fn last_batch(&self) -> Option<&BatchMetadata> {
        self.batches().last()
    }

    pub(crate) fn last_sequence(&self) -> i32 {
        self.last_batch().map_or(NO_SEQUENCE, |b| b.last_sequence)
    }

    /// The last offset of the producer's last batch; `None` when it has none (its state
    /// comes from a marker, or its epoch changed since).
    pub(crate) fn last_data_offset(&self) -> Option<i64> {
        self.last_batch().map(|b| b.last_offset)
    }

    fn has_transaction(&self) -> bool {
        self.current_txn_first_offset >= 0
    }

    /// A new epoch forgets the batches of the old one.
    fn maybe_update_epoch(&mut self, producer_epoch: i16) {
        if self.producer_epoch != producer_epoch {
            self.batch_count = 0;
            self.producer_epoch = producer_epoch;
        }
    }

    fn add_batch(&mut self, producer_epoch: i16, batch: BatchMetadata) {
        self.maybe_update_epoch(producer_epoch);
        if usize::from(self.batch_count) == BATCHES_RETAINED {
            self.batches.rotate_left(1);
            self.batches[BATCHES_RETAINED - 1] = batch;
        } else {
            self.batches[usize::from(self.batch_count)] = batch;
            self.batch_count += 1;
        }
        self.last_timestamp_ms = batch.timestamp_ms;
    }

    /// The retained batch with exactly this epoch and sequence range.
    fn duplicate_of(
        &self,
        producer_epoch: i16,
        first_sequence: i32,
        last_sequence: i32,
    ) -> Option<BatchMetadata> {
        if producer_epoch != self.producer_epoch {
            return None;
        }
        self.batches()
            .iter()
            .find(|b| b.first_sequence() == first_sequence && b.last_sequence == last_sequence)
            .copied()
    }

    /// A marker ends the transaction (Kafka's `update(epoch, coordinatorEpoch, timestamp)`).
    fn end_transaction(&mut self, producer_epoch: i16, coordinator_epoch: i32, timestamp_ms: i64) {
        self.maybe_update_epoch(producer_epoch);
        self.coordinator_epoch = coordinator_epoch;
        self.current_txn_first_offset = -1;
        self.last_timestamp_ms = timestamp_ms;
    }
}

/// Who appends, which decides how strictly (Kafka's `AppendOrigin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A producer's batches on the leader: every check.
    Client,
    /// A transaction marker on the leader: epoch checks only.
    Coordinator,
    /// A follower's copy of the leader's batches, or recovery: nothing refused.
    Replication,
}

/// A verification a partition leader started for a producer's first transactional batch
/// (KIP-890 part 1, Kafka's `VerificationGuard`): the leader asks the transaction
/// coordinator whether the partition is in the producer's ongoing transaction, then appends
/// with the guard it was handed. The log keeps one guard per producer until the producer's
/// next transactional batch or marker is written, so an answer that arrives after the
/// transaction ended (its marker written, or another verification started) no longer
/// matches and the batch is refused: a late or stray batch can never open a transaction
/// the coordinator does not know of (a "hanging" transaction that holds the last stable
/// offset back for good).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerificationGuard(u64);

/// How a leader append treats a transactional batch that would start a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnVerification {
    /// Appended as it is (`transaction.partition.verification.enable=false`).
    Off,
    /// Appended only with the guard the log handed out for the producer; `None` (Kafka's
    /// `SENTINEL`: no verification was done) never matches.
    Guard(Option<VerificationGuard>),
}

/// Guards are unique across the process, so a stale one can never match a newer one.
static NEXT_VERIFICATION_GUARD: AtomicU64 = AtomicU64::new(1);

/// A producer's verification in progress (Kafka's `VerificationStateEntry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VerificationEntry {
    guard: VerificationGuard,
    started_ms: i64,
}

/// The header fields of a data batch that producer state reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerBatch {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub base_offset: i64,
    pub last_offset_delta: i32,
    pub max_timestamp: i64,
    pub is_transactional: bool,
}

impl ProducerBatch {
    pub(crate) fn from_header(header: &BatchHeader) -> ProducerBatch {
        ProducerBatch {
            producer_id: header.producer_id,
            producer_epoch: header.producer_epoch,
            base_sequence: header.base_sequence,
            base_offset: header.base_offset,
            last_offset_delta: header.last_offset_delta,
            max_timestamp: header.max_timestamp,
            is_transactional: header.is_transactional(),
        }
    }

    fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Kafka's `lastSequence`.
    fn last_sequence(&self) -> i32 {
        if self.base_sequence == NO_SEQUENCE {
            NO_SEQUENCE
        } else {
            increment_sequence(self.base_sequence, self.last_offset_delta)
        }
    }
}

/// What a transaction marker says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EndTxnMarker {
    pub control: ControlType,
    pub coordinator_epoch: i32,
}

/// A control batch holding a transaction marker, as producer state reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MarkerBatch {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub marker: EndTxnMarker,
    /// The marker's offset.
    pub offset: i64,
    pub timestamp_ms: i64,
}

/// A transaction whose marker is written: `[first_offset, last_offset]`, the last being the
/// marker's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompletedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub is_aborted: bool,
}

/// A transaction that makes the log unstable from its first offset on: ongoing, or
/// completed with its marker above the high watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UnstableTxn {
    producer_id: i64,
    /// Where the transaction's first batch starts (moved to the log start's batch when the
    /// log start passes it).
    position: FilePosition,
    /// The marker's offset; -1 while ongoing.
    last_offset: i64,
}

/// The changes an append makes, gathered while its batches are checked and applied only
/// once all passed (Kafka's `ProducerAppendInfo` per producer). Kept by the log's writer,
/// so its memory is reused.
#[derive(Debug, Default)]
pub(crate) struct PendingUpdate {
    entries: Vec<(i64, ProducerEntry)>,
    /// Transactions started: first offset, producer, position of the first batch.
    started: Vec<(i64, i64, FilePosition)>,
    /// Producers that wrote a transactional batch or a marker: their verification is over.
    verified: Vec<i64>,
}

impl PendingUpdate {
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.started.clear();
        self.verified.clear();
    }

    fn entry_mut(&mut self, producer_id: i64) -> Option<&mut ProducerEntry> {
        self.entries
            .iter_mut()
            .find(|(id, _)| *id == producer_id)
            .map(|(_, e)| e)
    }

    fn put(&mut self, producer_id: i64, entry: ProducerEntry) {
        match self.entry_mut(producer_id) {
            Some(e) => *e = entry,
            None => self.entries.push((producer_id, entry)),
        }
    }
}

/// Why a snapshot file cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error("cannot read producer snapshot: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt producer snapshot: {0}")]
    Corrupt(String),
}

/// One partition's producers and unstable transactions.
#[derive(Debug, Default)]
pub(crate) struct ProducerStateManager {
    producers: HashMap<i64, ProducerEntry>,
    /// Ongoing transactions by first offset.
    ongoing: BTreeMap<i64, UnstableTxn>,
    /// Completed transactions whose markers are not below the high watermark yet, by first
    /// offset.
    unreplicated: BTreeMap<i64, UnstableTxn>,
    /// Verifications in progress, by producer id (leaders only; never in snapshots).
    verifications: HashMap<i64, VerificationEntry>,
}

impl ProducerStateManager {
    pub(crate) fn is_empty(&self) -> bool {
        self.producers.is_empty() && self.unreplicated.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.producers.clear();
        self.ongoing.clear();
        self.unreplicated.clear();
        self.verifications.clear();
    }

    /// Starts (or continues) the verification of a transactional batch of `producer_id` in
    /// `producer_epoch` (Kafka's `maybeStartTransactionVerification`): `None` when the
    /// producer already has a transaction ongoing in that epoch here (nothing to verify),
    /// else the producer's guard, created unless one is pending already.
    pub(crate) fn start_verification(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        now_ms: i64,
    ) -> Option<VerificationGuard> {
        let ongoing = self
            .producers
            .get(&producer_id)
            .is_some_and(|e| e.has_transaction() && e.producer_epoch == producer_epoch);
        if ongoing {
            return None;
        }
        let entry = self
            .verifications
            .entry(producer_id)
            .or_insert_with(|| VerificationEntry {
                guard: VerificationGuard(NEXT_VERIFICATION_GUARD.fetch_add(1, Ordering::Relaxed)),
                started_ms: now_ms,
            });
        Some(entry.guard)
    }

    /// The committed state of `producer_id`.
    #[cfg(test)]
    pub(crate) fn entry(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// A producer's batch that repeats one of its last retained batches (same epoch and
    /// sequence range): the original's metadata (Kafka's `findDuplicateBatch`).
    pub(crate) fn duplicate_of(&self, batch: &ProducerBatch) -> Option<BatchMetadata> {
        self.producers.get(&batch.producer_id)?.duplicate_of(
            batch.producer_epoch,
            batch.base_sequence,
            batch.last_sequence(),
        )
    }

    /// The state `pending` already gives `producer_id`, else the committed one.
    fn updated_entry(&self, pending: &PendingUpdate, producer_id: i64) -> ProducerEntry {
        pending
            .entries
            .iter()
            .find(|(id, _)| *id == producer_id)
            .map(|(_, e)| *e)
            .or_else(|| self.producers.get(&producer_id).copied())
            .unwrap_or_else(ProducerEntry::empty)
    }

    /// Checks a data batch against the producer's state as `pending` leaves it and adds
    /// its effect to `pending` (Kafka's `appendDataBatch`). `position` is where the batch
    /// starts in the log.
    pub(crate) fn prepare_batch(
        &self,
        pending: &mut PendingUpdate,
        batch: &ProducerBatch,
        position: FilePosition,
        origin: Origin,
        verification: TxnVerification,
    ) -> Result<(), StorageError> {
        let producer_id = batch.producer_id;
        let mut updated = self.updated_entry(pending, producer_id);
        check_producer_epoch(
            &updated,
            producer_id,
            batch.producer_epoch,
            batch.base_offset,
            origin,
        )?;
        if batch.is_transactional {
            let ongoing =
                updated.has_transaction() && updated.producer_epoch == batch.producer_epoch;
            if let (false, Origin::Client, TxnVerification::Guard(guard)) =
                (ongoing, origin, verification)
            {
                let pending_guard = self.verifications.get(&producer_id).map(|v| v.guard);
                if guard.is_none() || guard != pending_guard {
                    return Err(StorageError::InvalidTxnState(format!(
                        "Record was not part of an ongoing transaction (producer {producer_id}, \
                         epoch {})",
                        batch.producer_epoch
                    )));
                }
            }
            pending.verified.push(producer_id);
        }
        if origin == Origin::Client {
            let committed_epoch = self
                .producers
                .get(&producer_id)
                .map_or(NO_PRODUCER_EPOCH, |e| e.producer_epoch);
            check_sequence(committed_epoch, &updated, batch)?;
        }
        updated.add_batch(
            batch.producer_epoch,
            BatchMetadata {
                last_sequence: batch.last_sequence(),
                last_offset: batch.last_offset(),
                offset_delta: batch.last_offset_delta,
                timestamp_ms: batch.max_timestamp,
            },
        );
        if updated.has_transaction() && !batch.is_transactional {
            let message = format!(
                "Expected transactional write from producer {producer_id} at offset {}",
                batch.base_offset
            );
            if origin != Origin::Replication {
                return Err(StorageError::InvalidTxnState(message));
            }
            warn!(
                producer_id,
                offset = batch.base_offset,
                "{message}; replicated as is"
            );
        } else if !updated.has_transaction() && batch.is_transactional {
            updated.current_txn_first_offset = batch.base_offset;
            pending
                .started
                .push((batch.base_offset, producer_id, position));
        }
        pending.put(producer_id, updated);
        Ok(())
    }

    /// Checks a transaction marker at `offset` and adds its effect to `pending` (Kafka's
    /// `appendEndTxnMarker`). Returns the transaction it completes; `None` when the
    /// producer had none ongoing (the marker is written all the same).
    pub(crate) fn prepare_marker(
        &self,
        pending: &mut PendingUpdate,
        batch: &MarkerBatch,
        origin: Origin,
    ) -> Result<Option<CompletedTxn>, StorageError> {
        let MarkerBatch {
            producer_id,
            producer_epoch,
            marker,
            offset,
            timestamp_ms,
        } = *batch;
        let mut updated = self.updated_entry(pending, producer_id);
        check_producer_epoch(&updated, producer_id, producer_epoch, offset, origin)?;
        if updated.coordinator_epoch > marker.coordinator_epoch {
            let message = format!(
                "Invalid coordinator epoch for producerId {producer_id} at offset {offset}: {} \
                 (zombie), {} (current)",
                marker.coordinator_epoch, updated.coordinator_epoch
            );
            if origin != Origin::Replication {
                return Err(StorageError::TransactionCoordinatorFenced(message));
            }
            info!(producer_id, offset, "{message}; replicated as is");
        }
        let completed = updated.has_transaction().then_some(CompletedTxn {
            producer_id,
            first_offset: updated.current_txn_first_offset,
            last_offset: offset,
            is_aborted: marker.control == ControlType::Abort,
        });
        updated.end_transaction(producer_epoch, marker.coordinator_epoch, timestamp_ms);
        pending.put(producer_id, updated);
        pending.verified.push(producer_id);
        Ok(completed)
    }

    /// Applies `pending` (emptied) to the state: the producers' entries and the
    /// transactions started.
    pub(crate) fn commit(&mut self, pending: &mut PendingUpdate) {
        for (producer_id, entry) in pending.entries.drain(..) {
            self.producers.insert(producer_id, entry);
        }
        for producer_id in pending.verified.drain(..) {
            self.verifications.remove(&producer_id);
        }
        for (first_offset, producer_id, position) in pending.started.drain(..) {
            self.ongoing.insert(
                first_offset,
                UnstableTxn {
                    producer_id,
                    position,
                    last_offset: -1,
                },
            );
        }
    }

    /// Marks `completed` done: it stays unstable until the high watermark passes its
    /// marker. For an aborted transaction, returns its transaction index entry, whose last
    /// stable offset is the first offset of the earliest transaction of another producer
    /// still ongoing, else the offset after the marker (Kafka's `lastStableOffset(txn)`).
    pub(crate) fn complete_txn(&mut self, completed: &CompletedTxn) -> Option<TxnEntry> {
        let entry = completed.is_aborted.then(|| TxnEntry {
            producer_id: completed.producer_id,
            first_offset: completed.first_offset,
            last_offset: completed.last_offset,
            last_stable_offset: self
                .ongoing
                .iter()
                .find(|(_, t)| t.producer_id != completed.producer_id)
                .map_or(completed.last_offset + 1, |(first, _)| *first),
        });
        match self.ongoing.remove(&completed.first_offset) {
            Some(mut txn) => {
                txn.last_offset = completed.last_offset;
                self.unreplicated.insert(completed.first_offset, txn);
            }
            None => warn!(
                producer_id = completed.producer_id,
                first_offset = completed.first_offset,
                "completed a transaction that was not tracked as ongoing"
            ),
        }
        entry
    }

    /// The high watermark passed the markers below `high_watermark`: those transactions
    /// are stable.
    pub(crate) fn on_high_watermark(&mut self, high_watermark: i64) {
        self.unreplicated
            .retain(|_, t| t.last_offset >= high_watermark);
    }

    /// The first offset (and position) of the earliest ongoing or not yet replicated
    /// transaction.
    pub(crate) fn first_unstable(&self) -> Option<(i64, FilePosition)> {
        let ongoing = self.ongoing.first_key_value();
        let unreplicated = self.unreplicated.first_key_value();
        let first = match (ongoing, unreplicated) {
            (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        first.map(|(offset, txn)| (*offset, txn.position))
    }

    /// The log start moved to `log_start_offset` (Kafka's `truncateHead`): producers whose
    /// last batch is below it go with their ongoing transactions (a producer known only by
    /// a marker stays: it carries the epoch that fences its zombies), and so do the
    /// unreplicated transactions whose markers are below it. Unstable transactions that
    /// begin below it now begin at `log_start_position`, the batch holding it.
    pub(crate) fn truncate_head(
        &mut self,
        log_start_offset: i64,
        log_start_position: impl FnOnce() -> FilePosition,
    ) {
        let evicted: Vec<i64> = self
            .producers
            .iter()
            .filter(|(_, e)| e.last_data_offset().is_some_and(|o| o < log_start_offset))
            .map(|(id, _)| *id)
            .collect();
        for producer_id in &evicted {
            self.producers.remove(producer_id);
        }
        if !evicted.is_empty() {
            self.ongoing
                .retain(|_, t| !evicted.contains(&t.producer_id));
        }
        self.unreplicated
            .retain(|_, t| t.last_offset >= log_start_offset);
        let below = |map: &BTreeMap<i64, UnstableTxn>| {
            map.first_key_value()
                .is_some_and(|(first, _)| *first < log_start_offset)
        };
        if below(&self.ongoing) || below(&self.unreplicated) {
            let position = log_start_position();
            for map in [&mut self.ongoing, &mut self.unreplicated] {
                for (_, txn) in map.range_mut(..log_start_offset) {
                    txn.position = position;
                }
            }
        }
    }

    /// Removes the producers without an ongoing transaction whose last timestamp is
    /// `producer_id_expiration_ms` or more before `now_ms` (Kafka's
    /// `removeExpiredProducers`). Returns how many went.
    pub(crate) fn remove_expired(&mut self, now_ms: i64, producer_id_expiration_ms: i64) -> usize {
        self.verifications
            .retain(|_, v| now_ms.saturating_sub(v.started_ms) < producer_id_expiration_ms);
        let before = self.producers.len();
        self.producers.retain(|_, e| {
            e.has_transaction()
                || now_ms.saturating_sub(e.last_timestamp_ms) < producer_id_expiration_ms
        });
        before - self.producers.len()
    }

    /// Every producer, by producer id.
    pub(crate) fn summaries(&self) -> Vec<ProducerSummary> {
        let mut summaries: Vec<ProducerSummary> = self
            .producers
            .iter()
            .map(|(id, e)| ProducerSummary {
                producer_id: *id,
                producer_epoch: e.producer_epoch,
                last_sequence: e.last_sequence(),
                last_timestamp_ms: e.last_timestamp_ms,
                coordinator_epoch: e.coordinator_epoch,
                current_txn_start_offset: e.current_txn_first_offset,
            })
            .collect();
        summaries.sort_unstable_by_key(|s| s.producer_id);
        summaries
    }

    /// The epoch of each producer whose state came from a marker, with no data batch
    /// since: the cleaner keeps that marker, which carries the epoch that fences zombies.
    pub(crate) fn last_marker_epochs(&self) -> HashMap<i64, i16> {
        self.producers
            .iter()
            .filter(|(_, e)| e.last_data_offset().is_none())
            .map(|(id, e)| (*id, e.producer_epoch))
            .collect()
    }

    /// The last offset of each producer's last batch: the cleaner keeps those batches so
    /// that deduplication survives compaction.
    pub(crate) fn last_data_offsets(&self) -> HashMap<i64, i64> {
        self.producers
            .iter()
            .filter_map(|(id, e)| Some((*id, e.last_data_offset()?)))
            .collect()
    }

    /// Applies a stored batch (a follower's copy, or the log replayed on open) without
    /// refusing anything. `batch` holds exactly the batch; `position` is where it starts.
    /// Returns the transaction a marker completed (the caller indexes it, then calls
    /// [`complete_txn`](Self::complete_txn)).
    pub(crate) fn replay(
        &mut self,
        scratch: &mut PendingUpdate,
        header: &BatchHeader,
        batch: &[u8],
        position: FilePosition,
    ) -> Option<CompletedTxn> {
        if header.producer_id <= NO_PRODUCER_ID {
            return None;
        }
        scratch.clear();
        let applied = if header.is_control() {
            match read_end_txn_marker(batch) {
                Ok(Some((marker, timestamp_ms))) => self.prepare_marker(
                    scratch,
                    &MarkerBatch {
                        producer_id: header.producer_id,
                        producer_epoch: header.producer_epoch,
                        marker,
                        offset: header.base_offset,
                        timestamp_ms,
                    },
                    Origin::Replication,
                ),
                // An empty control batch (its transaction cleaned away) or another control
                // record type: nothing to apply.
                Ok(None) => Ok(None),
                Err(error) => {
                    warn!(offset = header.base_offset, %error, "unreadable control batch; producer state skips it");
                    Ok(None)
                }
            }
        } else {
            self.prepare_batch(
                scratch,
                &ProducerBatch::from_header(header),
                position,
                Origin::Replication,
                TxnVerification::Off,
            )
            .map(|()| None)
        };
        match applied {
            Ok(completed) => {
                self.commit(scratch);
                completed
            }
            Err(error) => {
                // Replication refuses nothing; this is unreachable.
                warn!(offset = header.base_offset, %error, "producer state skipped a replicated batch");
                scratch.clear();
                None
            }
        }
    }

    /// Writes the state as a snapshot at `offset` in `dir` (`sync`: the file and the
    /// directory fsynced).
    pub(crate) fn write_snapshot(
        &self,
        dir: &Path,
        offset: i64,
        sync: bool,
    ) -> std::io::Result<()> {
        let mut ids: Vec<i64> = self.producers.keys().copied().collect();
        ids.sort_unstable();
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + ids.len() * SNAPSHOT_ENTRY_BYTES);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(ids.len() as i32).to_be_bytes());
        for id in ids {
            let e = &self.producers[&id];
            let last = e.last_batch();
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&e.producer_epoch.to_be_bytes());
            out.extend_from_slice(&last.map_or(NO_SEQUENCE, |b| b.last_sequence).to_be_bytes());
            out.extend_from_slice(&last.map_or(-1, |b| b.last_offset).to_be_bytes());
            out.extend_from_slice(&last.map_or(0, |b| b.offset_delta).to_be_bytes());
            out.extend_from_slice(&e.last_timestamp_ms.to_be_bytes());
            out.extend_from_slice(&e.coordinator_epoch.to_be_bytes());
            out.extend_from_slice(&e.current_txn_first_offset.to_be_bytes());
        }
        let crc = crc32c::crc32c(&out[SNAPSHOT_CRC_START..]);
        out[2..6].copy_from_slice(&crc.to_be_bytes());
        let mut file = std::fs::File::create(snapshot_path(dir, offset))?;
        file.write_all(&out)?;
        if sync {
            file.sync_all()?;
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Replaces the state with a snapshot's `entries`; `position_of` finds where an
    /// ongoing transaction's first batch starts.
    pub(crate) fn load(
        &mut self,
        entries: Vec<(i64, ProducerEntry)>,
        mut position_of: impl FnMut(i64) -> FilePosition,
    ) {
        self.clear();
        for (producer_id, entry) in entries {
            if entry.has_transaction() {
                let first_offset = entry.current_txn_first_offset;
                self.ongoing.insert(
                    first_offset,
                    UnstableTxn {
                        producer_id,
                        position: position_of(first_offset),
                        last_offset: -1,
                    },
                );
            }
            self.producers.insert(producer_id, entry);
        }
    }
}

fn check_producer_epoch(
    entry: &ProducerEntry,
    producer_id: i64,
    producer_epoch: i16,
    offset: i64,
    origin: Origin,
) -> Result<(), StorageError> {
    if producer_epoch >= entry.producer_epoch {
        return Ok(());
    }
    let message = format!(
        "Epoch of producer {producer_id} at offset {offset} is {producer_epoch}, which is \
         smaller than the last seen epoch {}",
        entry.producer_epoch
    );
    if origin == Origin::Replication {
        warn!(producer_id, offset, "{message}");
        return Ok(());
    }
    Err(StorageError::InvalidProducerEpoch(message))
}

/// Kafka's `checkSequence`: a new epoch starts at sequence 0 (unless the producer's epoch
/// is unknown); within an epoch each batch continues the last one; a producer the log
/// holds no state of (KIP-360: its records were deleted; `committed_epoch` is
/// `NO_PRODUCER_EPOCH`) may start anywhere.
fn check_sequence(
    committed_epoch: i16,
    updated: &ProducerEntry,
    batch: &ProducerBatch,
) -> Result<(), StorageError> {
    let (producer_id, first_sequence) = (batch.producer_id, batch.base_sequence);
    if batch.producer_epoch != updated.producer_epoch {
        if first_sequence != 0 && updated.producer_epoch != NO_PRODUCER_EPOCH {
            return Err(StorageError::OutOfOrderSequence(format!(
                "Invalid sequence number for new epoch of producer {producer_id} at offset {}: \
                 {} (request epoch), {first_sequence} (seq. number), {} (current producer epoch)",
                batch.base_offset, batch.producer_epoch, updated.producer_epoch
            )));
        }
        return Ok(());
    }
    let last_sequence = updated.last_sequence();
    if committed_epoch == NO_PRODUCER_EPOCH || in_sequence(last_sequence, first_sequence) {
        return Ok(());
    }
    Err(StorageError::OutOfOrderSequence(format!(
        "Out of order sequence number for producer {producer_id} at offset {}: \
         {first_sequence} (incoming seq. number), {last_sequence} (current end sequence number)",
        batch.base_offset
    )))
}

/// The path of the snapshot at `offset`.
pub(crate) fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(file_name(offset, SNAPSHOT_EXTENSION))
}

/// The offsets of the snapshots in `dir`, oldest first.
pub(crate) fn list_snapshots(dir: &Path) -> std::io::Result<Vec<i64>> {
    let mut offsets = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|n| n.strip_suffix(&format!(".{SNAPSHOT_EXTENSION}")))
        else {
            continue;
        };
        if let Ok(offset) = stem.parse::<i64>() {
            offsets.push(offset);
        }
    }
    offsets.sort_unstable();
    Ok(offsets)
}

/// Deletes the snapshot at `offset` (a missing one is fine).
pub(crate) fn delete_snapshot(dir: &Path, offset: i64) -> std::io::Result<()> {
    match std::fs::remove_file(snapshot_path(dir, offset)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Reads the snapshot at `path`, checking its version, CRC and length.
pub(crate) fn read_snapshot(path: &Path) -> Result<Vec<(i64, ProducerEntry)>, SnapshotError> {
    let bytes = std::fs::read(path)?;
    let corrupt = |reason: &str| SnapshotError::Corrupt(format!("{}: {reason}", path.display()));
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(corrupt("shorter than its header"));
    }
    let version = i16::from_be_bytes([bytes[0], bytes[1]]);
    if version != SNAPSHOT_VERSION {
        return Err(corrupt(&format!("unknown version {version}")));
    }
    let stored = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    if stored != crc32c::crc32c(&bytes[SNAPSHOT_CRC_START..]) {
        return Err(corrupt("CRC mismatch"));
    }
    let count = i32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
    let entries_bytes = bytes.len() - SNAPSHOT_HEADER_BYTES;
    if count < 0 || count as usize * SNAPSHOT_ENTRY_BYTES != entries_bytes {
        return Err(corrupt(&format!(
            "{count} entries in {entries_bytes} bytes"
        )));
    }
    let mut entries = Vec::with_capacity(count as usize);
    for chunk in bytes[SNAPSHOT_HEADER_BYTES..].chunks_exact(SNAPSHOT_ENTRY_BYTES) {
        let mut reader = FieldReader(chunk);
        let producer_id = reader.i64();
        let producer_epoch = reader.i16();
        let last_sequence = reader.i32();
        let last_offset = reader.i64();
        let offset_delta = reader.i32();
        let timestamp_ms = reader.i64();
        let coordinator_epoch = reader.i32();
        let current_txn_first_offset = reader.i64();
        let mut entry = ProducerEntry {
            producer_epoch,
            coordinator_epoch,
            last_timestamp_ms: timestamp_ms,
            current_txn_first_offset: current_txn_first_offset.max(-1),
            ..ProducerEntry::empty()
        };
        if last_offset >= 0 {
            entry.batches[0] = BatchMetadata {
                last_sequence,
                last_offset,
                offset_delta,
                timestamp_ms,
            };
            entry.batch_count = 1;
        }
        entries.push((producer_id, entry));
    }
    Ok(entries)
}

/// Reads big-endian fields off the front of a slice its caller sized.
struct FieldReader<'a>(&'a [u8]);

impl FieldReader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut raw = [0u8; N];
        raw.copy_from_slice(&self.0[..N]);
        self.0 = &self.0[N..];
        raw
    }

    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take())
    }

    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take())
    }

    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take())
    }
}

/// A control batch holding one transaction marker (Kafka's
/// `MemoryRecords.withEndTransactionMarker`), at base offset 0 and leader epoch -1 (the
/// append patches both): transactional and control attributes, base sequence -1, the
/// record timestamped `timestamp_ms`.
pub(crate) fn end_txn_marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: EndTxnMarker,
    timestamp_ms: i64,
) -> Vec<u8> {
    let mut key = [0u8; 4];
    key[..2].copy_from_slice(&CONTROL_RECORD_VERSION.to_be_bytes());
    key[2..].copy_from_slice(&marker.control.code().to_be_bytes());
    let mut value = [0u8; 6];
    value[..2].copy_from_slice(&END_TXN_MARKER_VERSION.to_be_bytes());
    value[2..].copy_from_slice(&marker.coordinator_epoch.to_be_bytes());
    let header = BatchHeader {
        base_offset: 0,
        partition_leader_epoch: -1,
        attributes: CONTROL_BATCH_ATTRIBUTES,
        last_offset_delta: 0,
        base_timestamp: timestamp_ms,
        max_timestamp: timestamp_ms,
        producer_id,
        producer_epoch,
        base_sequence: NO_SEQUENCE,
        records_count: 1,
    };
    let record = Record {
        offset: 0,
        timestamp: timestamp_ms,
        attributes: 0,
        key: Some(&key),
        value: Some(&value),
        headers: &[0], // no headers
    };
    let mut builder = BatchBuilder::default();
    builder.start(&header, None);
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + 32);
    // One record at the header's base offset, uncompressed: neither step can fail.
    builder
        .append(&record)
        .and_then(|()| builder.finish(&mut out))
        .expect("a one-record uncompressed batch builds");
    out
}

/// The marker of a control batch (exactly one stored batch) and its record's timestamp;
/// `None` for an empty control batch or a control record that is not a transaction marker.
pub(crate) fn read_end_txn_marker(
    batch: &[u8],
) -> Result<Option<(EndTxnMarker, i64)>, RecordsError> {
    let mut records = RecordReader::new(batch, CONTROL_BATCH_DECOMPRESSED_BYTES_MAX)?;
    let Some(record) = records.next_record()? else {
        return Ok(None);
    };
    let key = record
        .key
        .filter(|k| k.len() >= 4)
        .ok_or(RecordsError::Corrupt(
            "control record key shorter than 4 bytes",
        ))?;
    let Some(control) = ControlType::from_code(i16::from_be_bytes([key[2], key[3]])) else {
        return Ok(None);
    };
    let value = record
        .value
        .filter(|v| v.len() >= 6)
        .ok_or(RecordsError::Corrupt(
            "transaction marker value shorter than 6 bytes",
        ))?;
    let coordinator_epoch = i32::from_be_bytes([value[2], value[3], value[4], value[5]]);
    Ok(Some((
        EndTxnMarker {
            control,
            coordinator_epoch,
        },
        record.timestamp,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POSITION: FilePosition = FilePosition {
        segment_base: 0,
        bytes: 0,
    };

    fn batch(
        producer_id: i64,
        epoch: i16,
        sequence: i32,
        offset: i64,
        count: i32,
    ) -> ProducerBatch {
        ProducerBatch {
            producer_id,
            producer_epoch: epoch,
            base_sequence: sequence,
            base_offset: offset,
            last_offset_delta: count - 1,
            max_timestamp: 1_000 + offset,
            is_transactional: false,
        }
    }

    fn apply(state: &mut ProducerStateManager, b: &ProducerBatch) -> Result<(), StorageError> {
        let mut pending = PendingUpdate::default();
        state.prepare_batch(
            &mut pending,
            b,
            POSITION,
            Origin::Client,
            TxnVerification::Off,
        )?;
        state.commit(&mut pending);
        Ok(())
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
        assert_eq!(decrement_sequence(1, 3), i32::MAX - 1);
        assert!(in_sequence(i32::MAX, 0));
        assert!(in_sequence(NO_SEQUENCE, 0));
        assert!(!in_sequence(5, 7));
        let b = batch(1, 0, i32::MAX - 1, 0, 3);
        assert_eq!(b.last_sequence(), 0);
        // A wrapped batch is continued from its last sequence.
        let mut state = ProducerStateManager::default();
        apply(&mut state, &batch(1, 0, 0, 0, 1)).unwrap();
        let mut entry = *state.entry(1).unwrap();
        entry.add_batch(
            0,
            BatchMetadata {
                last_sequence: i32::MAX,
                last_offset: 5,
                offset_delta: 0,
                timestamp_ms: 0,
            },
        );
        state.producers.insert(1, entry);
        apply(&mut state, &batch(1, 0, 0, 6, 2)).unwrap();
        assert_eq!(state.entry(1).unwrap().last_sequence(), 1);
    }

    #[test]
    fn sequence_checks_follow_kafka() {
        let mut state = ProducerStateManager::default();
        // Unknown producer: any sequence (KIP-360).
        apply(&mut state, &batch(7, 3, 42, 0, 2)).unwrap();
        // Continues: 44.
        assert!(matches!(
            apply(&mut state, &batch(7, 3, 45, 2, 1)),
            Err(StorageError::OutOfOrderSequence(_))
        ));
        apply(&mut state, &batch(7, 3, 44, 2, 1)).unwrap();
        // A new epoch starts at 0.
        assert!(matches!(
            apply(&mut state, &batch(7, 4, 45, 3, 1)),
            Err(StorageError::OutOfOrderSequence(_))
        ));
        apply(&mut state, &batch(7, 4, 0, 3, 1)).unwrap();
        // An older epoch is fenced.
        assert!(matches!(
            apply(&mut state, &batch(7, 3, 45, 4, 1)),
            Err(StorageError::InvalidProducerEpoch(_))
        ));
        let entry = state.entry(7).unwrap();
        assert_eq!((entry.producer_epoch, entry.last_sequence()), (4, 0));
        // Replication accepts whatever comes.
        let mut pending = PendingUpdate::default();
        state
            .prepare_batch(
                &mut pending,
                &batch(7, 2, 99, 4, 1),
                POSITION,
                Origin::Replication,
                TxnVerification::Off,
            )
            .unwrap();
    }

    #[test]
    fn only_the_last_five_batches_are_duplicates() {
        let mut state = ProducerStateManager::default();
        for i in 0..7 {
            apply(&mut state, &batch(1, 0, i * 2, i64::from(i) * 2, 2)).unwrap();
        }
        for i in 0..7 {
            let found = state.duplicate_of(&batch(1, 0, i * 2, 100, 2));
            if i < 2 {
                assert_eq!(found, None, "batch {i} fell out");
            } else {
                let found = found.unwrap();
                assert_eq!(
                    (found.first_offset(), found.last_offset),
                    (i64::from(i) * 2, i64::from(i) * 2 + 1)
                );
            }
        }
        // Same first sequence, other range, or other epoch: not a duplicate.
        assert_eq!(state.duplicate_of(&batch(1, 0, 12, 100, 1)), None);
        assert_eq!(state.duplicate_of(&batch(1, 1, 12, 100, 2)), None);
    }

    #[test]
    fn a_non_transactional_batch_inside_a_transaction_is_invalid_txn_state() {
        let mut state = ProducerStateManager::default();
        let mut b = batch(1, 0, 0, 10, 1);
        b.is_transactional = true;
        apply(&mut state, &b).unwrap();
        assert_eq!(state.first_unstable().map(|f| f.0), Some(10));
        assert!(matches!(
            apply(&mut state, &batch(1, 0, 1, 11, 1)),
            Err(StorageError::InvalidTxnState(_))
        ));
    }

    #[test]
    fn markers_complete_transactions_and_check_coordinator_epochs() {
        let mut state = ProducerStateManager::default();
        for (pid, offset) in [(1, 10), (2, 12)] {
            let mut b = batch(pid, 0, 0, offset, 2);
            b.is_transactional = true;
            apply(&mut state, &b).unwrap();
        }
        let marker = |control, coordinator_epoch| EndTxnMarker {
            control,
            coordinator_epoch,
        };
        let mut pending = PendingUpdate::default();
        let completed = state
            .prepare_marker(
                &mut pending,
                &MarkerBatch {
                    producer_id: 1,
                    producer_epoch: 0,
                    marker: marker(ControlType::Abort, 5),
                    offset: 14,
                    timestamp_ms: 0,
                },
                Origin::Coordinator,
            )
            .unwrap()
            .unwrap();
        state.commit(&mut pending);
        let entry = state.complete_txn(&completed).unwrap();
        // Producer 2's transaction is still open from 12.
        assert_eq!(entry.last_stable_offset, 12);
        assert_eq!((entry.first_offset, entry.last_offset), (10, 14));
        // Unstable until the high watermark passes the marker.
        assert_eq!(state.first_unstable().map(|f| f.0), Some(10));
        state.on_high_watermark(15);
        assert_eq!(state.first_unstable().map(|f| f.0), Some(12));
        // An older coordinator is fenced, an older producer epoch too.
        assert!(matches!(
            state.prepare_marker(
                &mut pending,
                &MarkerBatch {
                    producer_id: 1,
                    producer_epoch: 0,
                    marker: marker(ControlType::Commit, 4),
                    offset: 15,
                    timestamp_ms: 0
                },
                Origin::Coordinator
            ),
            Err(StorageError::TransactionCoordinatorFenced(_))
        ));
        pending.clear();
        state.producers.get_mut(&2).unwrap().producer_epoch = 3;
        assert!(matches!(
            state.prepare_marker(
                &mut pending,
                &MarkerBatch {
                    producer_id: 2,
                    producer_epoch: 2,
                    marker: marker(ControlType::Commit, 5),
                    offset: 15,
                    timestamp_ms: 0
                },
                Origin::Coordinator
            ),
            Err(StorageError::InvalidProducerEpoch(_))
        ));
        // A marker without a transaction completes nothing.
        pending.clear();
        assert_eq!(
            state
                .prepare_marker(
                    &mut pending,
                    &MarkerBatch {
                        producer_id: 9,
                        producer_epoch: 0,
                        marker: marker(ControlType::Commit, 0),
                        offset: 16,
                        timestamp_ms: 0
                    },
                    Origin::Coordinator
                )
                .unwrap(),
            None
        );
    }

    #[test]
    fn expiry_spares_producers_with_an_ongoing_transaction() {
        let mut state = ProducerStateManager::default();
        apply(&mut state, &batch(1, 0, 0, 0, 1)).unwrap();
        let mut b = batch(2, 0, 0, 1, 1);
        b.is_transactional = true;
        apply(&mut state, &b).unwrap();
        apply(&mut state, &batch(3, 0, 0, 100, 1)).unwrap();
        // Producers 1 and 2 last wrote at 1000/1001, producer 3 at 1100.
        assert_eq!(state.remove_expired(1_100, 99), 1);
        assert!(state.entry(1).is_none() && state.entry(2).is_some() && state.entry(3).is_some());
    }

    #[test]
    fn snapshots_round_trip_and_detect_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = ProducerStateManager::default();
        apply(&mut state, &batch(1, 2, 0, 0, 3)).unwrap();
        let mut b = batch(2, 0, 5, 3, 1);
        b.is_transactional = true;
        apply(&mut state, &b).unwrap();
        state.write_snapshot(dir.path(), 4, true).unwrap();
        assert_eq!(list_snapshots(dir.path()).unwrap(), vec![4]);
        let path = snapshot_path(dir.path(), 4);
        let entries = read_snapshot(&path).unwrap();
        let mut loaded = ProducerStateManager::default();
        loaded.load(entries, |_| POSITION);
        assert_eq!(loaded.summaries(), state.summaries());
        assert_eq!(loaded.first_unstable().map(|f| f.0), Some(3));
        assert!(loaded.duplicate_of(&batch(1, 2, 0, 9, 3)).is_some());
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read_snapshot(&path),
            Err(SnapshotError::Corrupt(_))
        ));
        std::fs::write(&path, &bytes[..20]).unwrap();
        assert!(matches!(
            read_snapshot(&path),
            Err(SnapshotError::Corrupt(_))
        ));
    }

    #[test]
    fn a_marker_batch_reads_back() {
        let marker = EndTxnMarker {
            control: ControlType::Commit,
            coordinator_epoch: 17,
        };
        let bytes = end_txn_marker_batch(5, 2, marker, 1_234);
        let offsets = strom_protocol::batch::check_stored(&bytes).expect("valid batch");
        assert_eq!(offsets.last_offset_delta, 0);
        let header = BatchHeader::parse(&bytes).unwrap();
        assert!(header.is_control() && header.is_transactional());
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (5, 2, -1)
        );
        assert_eq!(read_end_txn_marker(&bytes).unwrap(), Some((marker, 1_234)));
        // kafka-protocol decodes it as a control batch with the same key and value.
        let mut buf = bytes::Bytes::from(bytes);
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).unwrap();
        let record = &set.records[0];
        assert!(record.control && record.transactional);
        assert_eq!(record.key.as_deref(), Some(&[0u8, 0, 0, 1][..]));
        assert_eq!(record.value.as_deref(), Some(&[0u8, 0, 0, 0, 0, 17][..]));
    }

    proptest! {
        /// A producer appending in order is never refused and each of its last five
        /// batches is found as a duplicate with its offsets.
        #[test]
        fn in_order_batches_pass_and_retries_are_duplicates(
            start in 0i32..i32::MAX,
            counts in proptest::collection::vec(1i32..20, 1..12),
        ) {
            let mut state = ProducerStateManager::default();
            let (mut sequence, mut offset) = (start, 0i64);
            let mut appended = Vec::new();
            for count in counts {
                let b = batch(1, 0, sequence, offset, count);
                prop_assert!(apply(&mut state, &b).is_ok());
                appended.push(b);
                sequence = increment_sequence(sequence, count);
                offset += i64::from(count);
            }
            for (i, b) in appended.iter().rev().enumerate() {
                let retry = ProducerBatch { base_offset: 10_000, ..*b };
                let found = state.duplicate_of(&retry);
                if i < BATCHES_RETAINED {
                    let found = found.expect("retained batch is a duplicate");
                    prop_assert_eq!(found.first_offset(), b.base_offset);
                    prop_assert_eq!(found.last_offset, b.last_offset());
                } else {
                    prop_assert!(found.is_none());
                }
            }
        }
    }
}
