//! What idempotent and transactional producers need from a log: their state checked and
//! updated with every append, transaction markers (Kafka's `appendAsLeader` with origin
//! COORDINATOR), the last stable offset, the aborted transaction index and read_committed
//! reads (Kafka's `UnifiedLog.analyzeAndValidateProducerState`, `collectAbortedTxns`,
//! `lastStableOffset`, `rebuildProducerState`).
//!
//! The producer state lives with the writer and changes only under the writer lock, so a
//! check and the state it checked against cannot be separated by another append. The last
//! stable offset and its byte position are published in the view like the high watermark.

use std::io::IoSlice;
use std::path::Path;
use std::sync::Arc;

use strom_protocol::batch::{self, BatchInfo, PATCHED_PREFIX_BYTES};
use strom_protocol::records::BatchHeader;
use tracing::{info, warn};

use super::{boundary_at_or_below, FilePosition, PartitionLog, View, Writer};
use crate::cleaner::SegmentReader;
use crate::index::{TxnEntry, TxnIndex};
use crate::producer_state::{
    self, end_txn_marker_batch, BatchMetadata, CompletedTxn, ControlType, EndTxnMarker,
    MarkerBatch, Origin, PendingUpdate, ProducerBatch, ProducerStateManager, ProducerSummary,
    TxnVerification, VerificationGuard, NO_PRODUCER_ID,
};
use crate::segment::LogSegment;
use crate::{AbortedTxn, AppendInfo, StorageError};

impl PartitionLog {
    /// Appends a transaction marker for `producer_id` (Kafka's `EndTransactionMarker`, one
    /// control batch) and completes its ongoing transaction, which stays unstable until the
    /// high watermark passes the marker; an ABORT enters the segment's transaction index.
    /// A producer epoch older than the producer's is `InvalidProducerEpoch`, a coordinator
    /// epoch older than the last marker's is `TransactionCoordinatorFenced`, and nothing is
    /// written then. A marker for a producer without an ongoing transaction is written all
    /// the same (and completes nothing).
    pub fn append_control(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        control: ControlType,
        coordinator_epoch: i32,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, StorageError> {
        if producer_id <= NO_PRODUCER_ID {
            return Err(StorageError::InvalidTxnState(format!(
                "transaction marker without a producer id ({producer_id})"
            )));
        }
        let marker = EndTxnMarker {
            control,
            coordinator_epoch,
        };
        let bytes = end_txn_marker_batch(producer_id, producer_epoch, marker, now_ms);
        let config = self.config.read().clone();
        let mut writer = self.writer.lock();
        if writer.closed {
            return Err(StorageError::Closed);
        }
        writer.clock_ms = writer.clock_ms.max(now_ms);
        if self.should_roll(&writer, &config, bytes.len() as u64, 1, now_ms) {
            self.roll(&mut writer, now_ms)?;
        }
        let active = Arc::clone(&writer.active);
        let offset = writer.next_offset;
        let completed = {
            let Writer {
                producers, pending, ..
            } = &mut *writer;
            pending.clear();
            producers.prepare_marker(
                pending,
                &MarkerBatch {
                    producer_id,
                    producer_epoch,
                    marker,
                    offset,
                    timestamp_ms: now_ms,
                },
                Origin::Coordinator,
            )?
        };
        let leader_epochs = self.with_new_epochs(std::iter::once((leader_epoch, offset)))?;
        let prefix = batch::patched_prefix(offset, bytes.len(), leader_epoch);
        let start_position = active.size_bytes();
        let mut slices = [
            IoSlice::new(&prefix),
            IoSlice::new(&bytes[PATCHED_PREFIX_BYTES..]),
        ];
        let end_position = active.append_vectored(&mut slices, start_position)?;
        {
            let Writer {
                producers, pending, ..
            } = &mut *writer;
            producers.commit(pending);
            if let Some(completed) = completed {
                finish_txn(producers, &active, &completed);
            }
        }
        let offsets = batch::BatchOffsets {
            base_offset: offset,
            size_bytes: bytes.len(),
            leader_epoch,
            last_offset_delta: 0,
        };
        let log_start_offset = self.complete_append(
            &mut writer,
            &active,
            &config,
            (start_position, end_position),
            std::iter::once((offsets, now_ms)),
            leader_epochs,
        )?;
        Ok(AppendInfo {
            first_offset: offset,
            last_offset: offset,
            log_start_offset,
            duplicate: false,
        })
    }

    /// The aborted transactions that overlap `[fetch_offset, upper_bound_offset)`, from the
    /// transaction indexes of the segment holding `fetch_offset` and those after it until
    /// one entry's last stable offset reaches the upper bound (Kafka's
    /// `collectAbortedTransactions`). The upper bound is where the fetched data ends.
    pub fn aborted_transactions(
        &self,
        fetch_offset: i64,
        upper_bound_offset: i64,
    ) -> Vec<AbortedTxn> {
        let segments = Arc::clone(&self.view.read().segments);
        let first = segments
            .partition_point(|s| s.base_offset() <= fetch_offset)
            .saturating_sub(1);
        aborted_in(&segments[first..], fetch_offset, upper_bound_offset)
            .into_iter()
            .map(|e| AbortedTxn {
                producer_id: e.producer_id,
                first_offset: e.first_offset,
            })
            .collect()
    }

    /// Starts the verification of a transactional batch of `producer_id` in
    /// `producer_epoch` before it is appended (Kafka's `maybeStartTransactionVerification`,
    /// KIP-890 part 1): `None` when the producer has a transaction ongoing here in that
    /// epoch, so its batch needs no verification; else the guard to append with once the
    /// transaction coordinator confirmed the partition is in the producer's transaction.
    /// The guard is used up by the producer's next transactional batch or marker, and
    /// forgotten after `producer.id.expiration.ms`.
    pub fn start_transaction_verification(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        now_ms: i64,
    ) -> Option<VerificationGuard> {
        self.writer
            .lock()
            .producers
            .start_verification(producer_id, producer_epoch, now_ms)
    }

    /// Every producer the log keeps state of, by producer id (DescribeProducers).
    pub fn producer_summaries(&self) -> Vec<ProducerSummary> {
        self.writer.lock().producers.summaries()
    }

    /// Removes the producers without an ongoing transaction whose last timestamp is
    /// `producer_id_expiration_ms` or more before `now_ms` (Kafka's
    /// `removeExpiredProducers`, run every `producer.id.expiration.check.interval.ms`).
    /// Returns how many went.
    pub fn remove_expired_producers(&self, now_ms: i64, producer_id_expiration_ms: i64) -> usize {
        let removed = self
            .writer
            .lock()
            .producers
            .remove_expired(now_ms, producer_id_expiration_ms);
        if removed > 0 {
            info!(topic = %self.topic, partition = self.partition, removed, "expired producer ids");
        }
        removed
    }

    /// After a truncation to `log_end_offset`: the snapshots past it go and the state is
    /// rebuilt from the latest one at or below it (Kafka's `truncateAndReload`). A log
    /// without producers stays without (Kafka skips the reload then too).
    pub(super) fn reload_producer_state(
        &self,
        writer: &mut Writer,
        segments: &[Arc<LogSegment>],
        log_end_offset: i64,
    ) -> Result<(), StorageError> {
        if writer.producers.is_empty() {
            delete_snapshots_above(&self.dir, log_end_offset)?;
            return Ok(());
        }
        writer.producers = load_producer_state(&self.dir, segments, log_end_offset, None, false)?;
        Ok(())
    }
}

/// Checks the producer batches of a leader append (Kafka's
/// `analyzeAndValidateProducerState`) into the writer's pending update, which the caller
/// commits once the batches are written. `first_offset` and `at` are where the first batch
/// goes. Returns the original of a retried batch (origin CLIENT only; nothing may be
/// written then). Batches without a producer id cost a comparison each.
pub(super) fn check_leader_batches(
    writer: &mut Writer,
    batches: &[BatchInfo],
    first_offset: i64,
    at: FilePosition,
    origin: Origin,
    verification: TxnVerification,
) -> Result<Option<BatchMetadata>, StorageError> {
    let Writer {
        producers, pending, ..
    } = writer;
    pending.clear();
    let (mut offset, mut position) = (first_offset, at.bytes);
    for b in batches {
        if b.producer_id > NO_PRODUCER_ID {
            let batch = ProducerBatch {
                producer_id: b.producer_id,
                producer_epoch: b.producer_epoch,
                base_sequence: b.base_sequence,
                base_offset: offset,
                last_offset_delta: b.last_offset_delta,
                max_timestamp: b.max_timestamp,
                is_transactional: b.is_transactional,
            };
            if origin == Origin::Client {
                if let Some(original) = producers.duplicate_of(&batch) {
                    pending.clear();
                    return Ok(Some(original));
                }
            }
            let start = FilePosition {
                segment_base: at.segment_base,
                bytes: position,
            };
            producers
                .prepare_batch(pending, &batch, start, origin, verification)
                .inspect_err(|_| pending.clear())?;
        }
        offset += i64::from(b.records_count);
        position += b.size_bytes as u64;
    }
    Ok(None)
}

/// The aborted transactions overlapping `[from, upper_bound)` in the transaction indexes of
/// `segments`, the first of which holds `from`: until an entry's last stable offset reaches
/// the upper bound, no later segment is needed (Kafka's `collectAbortedTransactions`).
pub(super) fn aborted_in(
    segments: &[Arc<LogSegment>],
    from: i64,
    upper_bound: i64,
) -> Vec<TxnEntry> {
    let mut found = Vec::new();
    for segment in segments {
        let complete =
            segment
                .indexes
                .lock()
                .txn_index
                .collect_aborted(from, upper_bound, &mut found);
        if complete {
            break;
        }
    }
    found
}

/// Applies a batch a follower appended (or recovery re-read) to the producer state; a
/// marker completes its transaction, indexed in `segment` when aborted.
pub(super) fn replay_batch(
    writer: &mut Writer,
    segment: &LogSegment,
    batch: &[u8],
    position: FilePosition,
) {
    let Ok(header) = BatchHeader::parse(batch) else {
        return;
    };
    let Writer {
        producers, pending, ..
    } = writer;
    if let Some(completed) = producers.replay(pending, &header, batch, position) {
        finish_txn(producers, segment, &completed);
    }
}

/// Completes a transaction whose marker is in `segment`; an aborted one enters the
/// segment's transaction index first.
fn finish_txn(
    producers: &mut ProducerStateManager,
    segment: &LogSegment,
    completed: &CompletedTxn,
) {
    if let Some(entry) = producers.complete_txn(completed) {
        segment.indexes.lock().txn_index.append(entry);
    }
}

/// Sets the view's last stable offset: the first unstable offset when below the high
/// watermark (never below the log start), else the high watermark (Kafka's
/// `lastStableOffset`).
pub(super) fn publish_last_stable(producers: &ProducerStateManager, view: &mut View) {
    let offsets = view.offsets;
    let (offset, position) = match producers.first_unstable() {
        Some((first, position)) if first < offsets.high_watermark => {
            (first.max(offsets.log_start_offset), position)
        }
        _ => (offsets.high_watermark, view.high_watermark_position),
    };
    view.offsets.last_stable_offset = offset;
    view.last_stable_position = position;
}

/// Loads a trusted segment's transaction index from its file.
pub(super) fn load_txn_index(segment: &LogSegment) -> Result<(), StorageError> {
    let path = segment.txn_index_path();
    let (index, valid) = TxnIndex::load(&path)?;
    if !valid {
        warn!(path = %path.display(), kept = index.len(), "transaction index invalid; keeping its valid prefix");
    }
    segment.indexes.lock().txn_index = index;
    Ok(())
}

/// Builds the producer state of a log ending at `log_end_offset` (Kafka's
/// `rebuildProducerState`): snapshots past the log end are deleted, the latest readable
/// one at or below the log end is loaded (corrupt ones are deleted and an older one
/// tried; none: from the log start) and the batches after it are replayed. When segments
/// from `rebuild_txn_index_from` on were recovered, the snapshot must not be past that
/// segment and their transaction indexes are rebuilt by the replay. A cleanly shut down
/// log without any snapshot was written before producer state existed: it has none.
pub(super) fn load_producer_state(
    dir: &Path,
    segments: &[Arc<LogSegment>],
    log_end_offset: i64,
    rebuild_txn_index_from: Option<i64>,
    clean_shutdown: bool,
) -> Result<ProducerStateManager, StorageError> {
    let mut producers = ProducerStateManager::default();
    let snapshots = delete_snapshots_above(dir, log_end_offset)?;
    if snapshots.is_empty() && clean_shutdown {
        return Ok(producers);
    }
    let log_start_offset = segments[0].base_offset();
    let bound = rebuild_txn_index_from.map_or(log_end_offset, |base| base.min(log_end_offset));
    let mut replay_from = log_start_offset;
    for &offset in snapshots.iter().rev().filter(|&&o| o <= bound) {
        match producer_state::read_snapshot(&producer_state::snapshot_path(dir, offset)) {
            Ok(entries) => {
                producers.load(entries, |first| txn_position(segments, first));
                replay_from = offset.max(log_start_offset);
                break;
            }
            Err(error) => {
                warn!(dir = %dir.display(), offset, %error, "deleting an unusable producer snapshot");
                producer_state::delete_snapshot(dir, offset)?;
            }
        }
    }
    replay_producer_state(
        &mut producers,
        segments,
        replay_from,
        log_end_offset,
        rebuild_txn_index_from,
    )?;
    Ok(producers)
}

/// Deletes the snapshots past `log_end_offset` (their records are gone); returns the
/// offsets of the others, oldest first.
fn delete_snapshots_above(dir: &Path, log_end_offset: i64) -> Result<Vec<i64>, StorageError> {
    let mut snapshots = producer_state::list_snapshots(dir)?;
    let keep = snapshots.partition_point(|&o| o <= log_end_offset);
    for &offset in &snapshots[keep..] {
        producer_state::delete_snapshot(dir, offset)?;
    }
    if keep < snapshots.len() {
        crate::cleaner::sync_dir(dir)?;
    }
    snapshots.truncate(keep);
    Ok(snapshots)
}

/// Deletes the snapshots below `offset` (the new first segment's base), except the
/// newest snapshot of all, which a reload may still need.
pub(super) fn delete_snapshots_below(dir: &Path, offset: i64) -> Result<(), StorageError> {
    let snapshots = producer_state::list_snapshots(dir)?;
    let newest = snapshots.last().copied();
    for &snapshot in snapshots
        .iter()
        .filter(|&&o| o < offset && Some(o) != newest)
    {
        producer_state::delete_snapshot(dir, snapshot)?;
    }
    Ok(())
}

/// Deletes every snapshot (the log starts over).
pub(super) fn delete_all_snapshots(dir: &Path) -> Result<(), StorageError> {
    for offset in producer_state::list_snapshots(dir)? {
        producer_state::delete_snapshot(dir, offset)?;
    }
    Ok(())
}

/// Where the batch starting a transaction at `first_offset` is; the log's first byte when
/// it is below the log (a reader bound there reads nothing of it).
pub(super) fn txn_position(segments: &[Arc<LogSegment>], first_offset: i64) -> FilePosition {
    let start = FilePosition {
        segment_base: segments[0].base_offset(),
        bytes: 0,
    };
    if first_offset <= start.segment_base {
        return start;
    }
    match boundary_at_or_below(segments, first_offset) {
        Ok((_, position)) => position,
        Err(error) => {
            warn!(first_offset, %error, "cannot find a transaction's first batch; bounding reads at the log start");
            start
        }
    }
}

/// Replays the batches of `[from, to)` into `producers`; segments whose base is at or past
/// `rebuild_txn_index_from` get their aborted transactions indexed.
fn replay_producer_state(
    producers: &mut ProducerStateManager,
    segments: &[Arc<LogSegment>],
    from: i64,
    to: i64,
    rebuild_txn_index_from: Option<i64>,
) -> Result<(), StorageError> {
    if from >= to {
        return Ok(());
    }
    let mut scratch = PendingUpdate::default();
    let first = segments
        .partition_point(|s| s.base_offset() <= from)
        .saturating_sub(1);
    for segment in &segments[first..] {
        if segment.base_offset() >= to {
            break;
        }
        let start = if segment.base_offset() < from {
            segment
                .find_batch(from, segment.size_bytes())?
                .map_or(segment.size_bytes(), |(position, _)| position)
        } else {
            0
        };
        let rebuild = rebuild_txn_index_from.is_some_and(|base| segment.base_offset() >= base);
        let mut reader = SegmentReader::new(segment, start);
        while let Some((position, batch)) = reader.next_batch()? {
            let header = BatchHeader::parse(batch).map_err(|e| StorageError::Corrupt {
                path: segment.log_path().display().to_string(),
                reason: format!("{e} at position {position}"),
            })?;
            if header.base_offset >= to {
                break;
            }
            if header.last_offset() < from {
                continue;
            }
            let at = FilePosition {
                segment_base: segment.base_offset(),
                bytes: position,
            };
            if let Some(completed) = producers.replay(&mut scratch, &header, batch, at) {
                let entry = producers.complete_txn(&completed);
                if let (true, Some(entry)) = (rebuild, entry) {
                    segment.indexes.lock().txn_index.append(entry);
                }
            }
        }
    }
    Ok(())
}
