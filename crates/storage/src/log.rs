//! [`PartitionLog`]: the segments of one partition, its offsets and its recovery.
//!
//! Concurrency: one writer at a time (the `writer` mutex) appends to the active segment,
//! truncates or moves the high watermark; readers take a snapshot of the published [`View`]
//! (segment list, offsets, the byte positions of the high watermark and the log end, the
//! leader epoch cache) under a short read lock and then read files without any lock the
//! writer needs. The writer publishes a new view only after the bytes are in the file. A
//! read that a truncation overlapped runs again on a fresh view (the cut segment may hold
//! other batches by then); a slice handed out earlier keeps its segment open, and a cut file
//! just ends early.
//!
//! The replication side (follower appends, truncation, the leader epoch cache) is in
//! [`replication`].

use std::collections::VecDeque;
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use strom_protocol::batch::{self, BatchInfo, PATCHED_PREFIX_BYTES};
use tracing::{info, warn};

use crate::checkpoint::LEADER_EPOCH_FILE;
use crate::epoch::LeaderEpochCache;
use crate::producer_state::{Origin, PendingUpdate, ProducerStateManager, TxnVerification};
use crate::segment::{index_batch, FileSlice, LogSegment};
use crate::StorageError;

mod cleaning;
mod producers;
mod replication;
mod retention;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod transaction_tests;

pub use retention::{Deleted, RetentionPolicy};

/// Most batch ends queued above the high watermark. Past it (and after a truncation or a
/// reset of the high watermark) the queue is refilled from the segment files when the high
/// watermark reaches its end.
const ABOVE_HIGH_WATERMARK_ENTRIES_MAX: usize = 1024;

/// Reads that a truncation overlapped, retried before the reader waits for the writer.
const OPTIMISTIC_READ_ATTEMPTS: usize = 3;

/// The settings of one log, by Kafka's topic config names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the active segment's first batch is older than this.
    pub segment_ms: i64,
    /// `flush.messages`: fsync after this many messages (`i64::MAX`: only on the interval).
    pub flush_messages: i64,
    /// `index.interval.bytes`: bytes between offset index entries.
    pub index_interval_bytes: u64,
    /// `segment.index.bytes`: roll when the offset index would exceed this.
    pub segment_index_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            flush_messages: i64::MAX,
            index_interval_bytes: 4096,
            segment_index_bytes: 10 << 20,
        }
    }
}

/// What an append assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub first_offset: i64,
    pub last_offset: i64,
    pub log_start_offset: i64,
    /// The batch retried one already in the log (an idempotent producer's retry): nothing
    /// was written, and the offsets are the original batch's.
    pub duplicate: bool,
}

/// The offsets a client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOffsets {
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub high_watermark: i64,
    /// The first offset of the earliest transaction still open or whose marker is not
    /// yet below the high watermark, else the high watermark: read_committed consumers
    /// read below it.
    pub last_stable_offset: i64,
}

/// The result of a read: a file range (if any bytes are readable) and the offsets at the time.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub slice: Option<FileSlice>,
    pub offsets: LogOffsets,
}

/// The answer to a timestamp lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    pub offset: i64,
    pub timestamp: i64,
    pub leader_epoch: i32,
}

/// A byte position in the log: a segment (by base offset) and a position in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FilePosition {
    pub(crate) segment_base: i64,
    pub(crate) bytes: u64,
}

impl FilePosition {
    /// How far `segment` may be read when the readable part of the log ends here.
    fn limit_in(self, segment: &LogSegment) -> u64 {
        match segment.base_offset().cmp(&self.segment_base) {
            std::cmp::Ordering::Less => segment.size_bytes(),
            std::cmp::Ordering::Equal => self.bytes,
            std::cmp::Ordering::Greater => 0,
        }
    }
}

/// The state readers see, published by the writer after each change.
#[derive(Debug, Clone)]
struct View {
    segments: Arc<Vec<Arc<LogSegment>>>,
    offsets: LogOffsets,
    /// Just past the last batch below the high watermark.
    high_watermark_position: FilePosition,
    /// Just past the last batch of the log.
    log_end_position: FilePosition,
    /// Where the last stable offset stands: the start of the first unstable transaction's
    /// first batch, or the high watermark's position.
    last_stable_position: FilePosition,
    leader_epochs: Arc<LeaderEpochCache>,
    /// Counts truncations, so a flush that overlapped one does not move the recovery point
    /// past what it really fsynced.
    truncations: u64,
}

/// Which offset bounds a read: what the reader may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBound {
    /// Consumers read committed records only.
    HighWatermark,
    /// read_committed consumers read only decided transactions.
    LastStable,
    /// Followers replicate everything the leader has.
    LogEnd,
}

#[derive(Debug)]
struct Writer {
    active: Arc<LogSegment>,
    next_offset: i64,
    /// End offset and file position of appended batches above the high watermark, oldest
    /// first, so the high watermark's byte position is known without a scan.
    above_high_watermark: VecDeque<(i64, FilePosition)>,
    /// Whether the queue holds every batch between the high watermark and the log end;
    /// when not, it is refilled from the files once drained.
    above_high_watermark_complete: bool,
    unflushed_messages: i64,
    /// The latest time the log was given, for segments created by a truncation.
    clock_ms: i64,
    closed: bool,
    /// Idempotent and transactional producers, and the unstable transactions.
    producers: ProducerStateManager,
    /// Scratch for an append's producer state changes (its memory is reused).
    pending: PendingUpdate,
}

impl Writer {
    /// Queues the end of a batch just appended above the high watermark.
    fn push_batch_end(&mut self, end_offset: i64, position: FilePosition) {
        if !self.above_high_watermark_complete {
            return;
        }
        if self.above_high_watermark.len() >= ABOVE_HIGH_WATERMARK_ENTRIES_MAX {
            self.above_high_watermark_complete = false;
            return;
        }
        self.above_high_watermark.push_back((end_offset, position));
    }
}

/// One partition's log.
#[derive(Debug)]
pub struct PartitionLog {
    topic: String,
    partition: i32,
    dir: PathBuf,
    config: RwLock<LogConfig>,
    writer: Mutex<Writer>,
    view: RwLock<View>,
    recovery_point: AtomicI64,
    /// A sequence lock against truncations: odd while one is cutting files, bumped again
    /// once it published its view. A reader whose read overlapped a change retries.
    truncation_seq: std::sync::atomic::AtomicU64,
    /// Log compaction's clean point (see [`cleaning`]).
    cleaning: cleaning::CleaningState,
}

impl PartitionLog {
    /// Opens (creating if needed) the log in `dir`, recovering what is past `recovery_point`
    /// unless the previous shutdown was clean.
    pub fn open(
        dir: &Path,
        topic: &str,
        partition: i32,
        config: LogConfig,
        recovery_point: i64,
        clean_shutdown: bool,
        now_ms: i64,
    ) -> Result<PartitionLog, StorageError> {
        std::fs::create_dir_all(dir)?;
        crate::cleaner::recover_leftovers(dir, config.index_interval_bytes, now_ms)?;
        let bases = list_segments(dir)?;
        let mut segments: Vec<Arc<LogSegment>> = Vec::with_capacity(bases.len().max(1));
        let mut next_offset = None;
        // The first segment re-read by recovery: the transaction indexes from it on are
        // rebuilt with the producer state.
        let mut first_recovered = None;
        for (i, &base) in bases.iter().enumerate() {
            let segment = LogSegment::open(dir, base, now_ms)?;
            let fully_flushed = bases
                .get(i + 1)
                .is_some_and(|&next_base| next_base <= recovery_point);
            let (segment_next, truncated) = if clean_shutdown || fully_flushed {
                producers::load_txn_index(&segment)?;
                (load_indexes(&segment, config.index_interval_bytes)?, 0)
            } else {
                first_recovered.get_or_insert(base);
                segment.indexes.lock().txn_index.reset();
                segment.recover(config.index_interval_bytes)?
            };
            if truncated > 0 {
                warn!(
                    topic,
                    partition,
                    base_offset = base,
                    truncated_bytes = truncated,
                    "truncated a torn log tail during recovery"
                );
            }
            segments.push(Arc::new(segment));
            next_offset = segment_next.or(next_offset).or(Some(base));
            if truncated > 0 {
                for &later in &bases[i + 1..] {
                    warn!(
                        topic,
                        partition,
                        base_offset = later,
                        "deleting segment after a truncated tail"
                    );
                    LogSegment::open(dir, later, now_ms)?.delete_files()?;
                }
                break;
            }
        }
        if segments.is_empty() {
            segments.push(Arc::new(LogSegment::create(dir, 0, now_ms)?));
        }
        let active = Arc::clone(segments.last().expect("at least one segment"));
        let next_offset = next_offset
            .unwrap_or(active.base_offset())
            .max(active.base_offset());
        let log_start_offset = segments[0].base_offset();
        if !clean_shutdown {
            info!(
                topic,
                partition,
                log_end_offset = next_offset,
                "recovered log"
            );
        }
        let leader_epochs = load_leader_epochs(dir, &segments, next_offset, topic, partition)?;
        let producers = producers::load_producer_state(
            dir,
            &segments,
            next_offset,
            first_recovered,
            clean_shutdown,
        )?;
        // A log opened as the only replica has nothing to wait for: its high watermark is
        // its log end. Replication moves it explicitly (`reset_high_watermark`).
        let log_end_position = FilePosition {
            segment_base: active.base_offset(),
            bytes: active.size_bytes(),
        };
        let mut view = View {
            offsets: LogOffsets {
                log_start_offset,
                log_end_offset: next_offset,
                high_watermark: next_offset,
                last_stable_offset: next_offset,
            },
            high_watermark_position: log_end_position,
            log_end_position,
            last_stable_position: log_end_position,
            segments: Arc::new(segments),
            leader_epochs: Arc::new(leader_epochs),
            truncations: 0,
        };
        producers::publish_last_stable(&producers, &mut view);
        Ok(PartitionLog {
            topic: topic.to_string(),
            partition,
            dir: dir.to_path_buf(),
            config: RwLock::new(config),
            writer: Mutex::new(Writer {
                active,
                next_offset,
                above_high_watermark: VecDeque::new(),
                above_high_watermark_complete: true,
                unflushed_messages: 0,
                clock_ms: now_ms,
                closed: false,
                producers,
                pending: PendingUpdate::default(),
            }),
            view: RwLock::new(view),
            // After a crash the recovered segments (their rebuilt indexes above all) are
            // not on disk yet: they stay past the recovery point until the next flush, as
            // in Kafka. Else a truncation's stale index file could be trusted later.
            recovery_point: AtomicI64::new(if clean_shutdown {
                next_offset
            } else {
                recovery_point.min(next_offset)
            }),
            truncation_seq: std::sync::atomic::AtomicU64::new(0),
            cleaning: cleaning::CleaningState::default(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn offsets(&self) -> LogOffsets {
        self.view.read().offsets
    }

    /// The offset below which the log is known to be fsynced.
    pub fn recovery_point(&self) -> i64 {
        self.recovery_point.load(Ordering::Acquire)
    }

    pub fn set_config(&self, config: LogConfig) {
        *self.config.write() = config;
    }

    pub fn segment_count(&self) -> usize {
        self.view.read().segments.len()
    }

    /// Appends validated producer batches, assigning offsets from the log end and stamping
    /// `leader_epoch`. `records` is the partition's records field; `batches` its validation.
    /// The first append of a newer `leader_epoch` records it in the leader epoch cache.
    ///
    /// Batches of idempotent producers are checked against the producer state first, as
    /// Kafka's `analyzeAndValidateProducerState` does, and nothing is written when one
    /// fails: an older epoch is `InvalidProducerEpoch`, a sequence that does not continue
    /// the producer's is `OutOfOrderSequence`, a non-transactional batch inside a
    /// transaction is `InvalidTxnState`. A retry of one of the producer's last five batches
    /// writes nothing and answers the original offsets with `duplicate` set.
    ///
    /// Transactional batches are appended without verification; see
    /// [`append_as_leader_verified`](Self::append_as_leader_verified).
    pub fn append_as_leader(
        &self,
        records: &[u8],
        batches: &[BatchInfo],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, StorageError> {
        self.append_as_leader_verified(records, batches, leader_epoch, now_ms, TxnVerification::Off)
    }

    /// As [`append_as_leader`](Self::append_as_leader), with `verification` deciding
    /// whether a transactional batch may start a transaction (KIP-890 part 1): with a
    /// guard, only the one [`start_transaction_verification`](Self::start_transaction_verification)
    /// handed out for the producer and not yet used up lets it; otherwise the append is
    /// `InvalidTxnState` and nothing is written.
    pub fn append_as_leader_verified(
        &self,
        records: &[u8],
        batches: &[BatchInfo],
        leader_epoch: i32,
        now_ms: i64,
        verification: TxnVerification,
    ) -> Result<AppendInfo, StorageError> {
        self.append_checked(
            records,
            batches,
            leader_epoch,
            now_ms,
            Origin::Client,
            verification,
        )
    }

    /// As [`append_as_leader`](Self::append_as_leader), for batches a coordinator writes on
    /// a producer's behalf (Kafka's origin COORDINATOR: the group coordinator's
    /// transactional offset commits, whose batches carry no sequence numbers): only the
    /// producer epoch and the transactional flag are checked, never sequences or
    /// duplicates.
    pub fn append_as_coordinator(
        &self,
        records: &[u8],
        batches: &[BatchInfo],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, StorageError> {
        self.append_checked(
            records,
            batches,
            leader_epoch,
            now_ms,
            Origin::Coordinator,
            TxnVerification::Off,
        )
    }

    fn append_checked(
        &self,
        records: &[u8],
        batches: &[BatchInfo],
        leader_epoch: i32,
        now_ms: i64,
        origin: Origin,
        verification: TxnVerification,
    ) -> Result<AppendInfo, StorageError> {
        let config = self.config.read().clone();
        let mut writer = self.writer.lock();
        if writer.closed {
            return Err(StorageError::Closed);
        }
        writer.clock_ms = writer.clock_ms.max(now_ms);
        let message_count: i64 = batches.iter().map(|b| i64::from(b.records_count)).sum();
        if self.should_roll(
            &writer,
            &config,
            records.len() as u64,
            message_count,
            now_ms,
        ) {
            self.roll(&mut writer, now_ms)?;
        }
        let active = Arc::clone(&writer.active);
        let first_offset = writer.next_offset;
        let start_position = active.size_bytes();
        let at = FilePosition {
            segment_base: active.base_offset(),
            bytes: start_position,
        };
        if let Some(original) = producers::check_leader_batches(
            &mut writer,
            batches,
            first_offset,
            at,
            origin,
            verification,
        )? {
            return Ok(AppendInfo {
                first_offset: original.first_offset(),
                last_offset: original.last_offset,
                log_start_offset: self.view.read().offsets.log_start_offset,
                duplicate: true,
            });
        }
        let leader_epochs = self.with_new_epochs(std::iter::once((leader_epoch, first_offset)))?;
        let mut prefixes = Vec::with_capacity(batches.len());
        let mut next = first_offset;
        for b in batches {
            prefixes.push(batch::patched_prefix(next, b.size_bytes, leader_epoch));
            next += i64::from(b.records_count);
        }
        let mut slices = Vec::with_capacity(batches.len() * 2);
        for (b, prefix) in batches.iter().zip(&prefixes) {
            slices.push(IoSlice::new(prefix));
            slices.push(IoSlice::new(
                &records[b.position + PATCHED_PREFIX_BYTES..b.position + b.size_bytes],
            ));
        }
        let end_position = active.append_vectored(&mut slices, start_position)?;
        {
            let Writer {
                producers, pending, ..
            } = &mut *writer;
            producers.commit(pending);
        }
        let mut base = first_offset;
        let written = batches.iter().map(|b| {
            let offsets = batch::BatchOffsets {
                base_offset: base,
                size_bytes: b.size_bytes,
                leader_epoch,
                last_offset_delta: b.last_offset_delta,
            };
            base += i64::from(b.records_count);
            (offsets, b.max_timestamp)
        });
        let log_start_offset = self.complete_append(
            &mut writer,
            &active,
            &config,
            (start_position, end_position),
            written,
            leader_epochs,
        )?;
        Ok(AppendInfo {
            first_offset,
            last_offset: next - 1,
            log_start_offset,
            duplicate: false,
        })
    }

    /// The leader epoch cache with the `(leader_epoch, start_offset)` pairs that start newer
    /// epochs added, already checkpointed; `None` when none is newer (the usual case). The
    /// file is written before the batches: a crash then leaves an entry past the log end,
    /// which `open` drops, never a batch whose epoch the file lacks.
    fn with_new_epochs(
        &self,
        starts: impl IntoIterator<Item = (i32, i64)>,
    ) -> Result<Option<Arc<LeaderEpochCache>>, StorageError> {
        let mut changed: Option<LeaderEpochCache> = None;
        {
            let view = self.view.read();
            for (leader_epoch, start_offset) in starts {
                let cache = changed.as_ref().unwrap_or(&view.leader_epochs);
                if cache.is_new_epoch(leader_epoch) {
                    changed
                        .get_or_insert_with(|| LeaderEpochCache::clone(&view.leader_epochs))
                        .assign(leader_epoch, start_offset);
                }
            }
        }
        let Some(cache) = changed else {
            return Ok(None);
        };
        cache.write(&self.dir.join(LEADER_EPOCH_FILE))?;
        Ok(Some(Arc::new(cache)))
    }

    /// After `batches` (each with its offsets and largest timestamp) were written to
    /// `active` between the two byte `positions`: indexes them, records their ends for the
    /// high watermark, publishes the new log end (and epoch cache) and fsyncs if
    /// `flush.messages` is reached. The leader's and the follower's appends end alike.
    /// Returns the log start offset.
    fn complete_append(
        &self,
        writer: &mut Writer,
        active: &LogSegment,
        config: &LogConfig,
        (start_position, end_position): (u64, u64),
        batches: impl Iterator<Item = (batch::BatchOffsets, i64)>,
        leader_epochs: Option<Arc<LeaderEpochCache>>,
    ) -> Result<i64, StorageError> {
        let mut position = start_position;
        let mut next_offset = writer.next_offset;
        {
            let mut indexes = active.indexes.lock();
            for (offsets, max_timestamp) in batches {
                index_batch(
                    &mut indexes,
                    active.base_offset(),
                    &offsets,
                    position,
                    max_timestamp,
                    config.index_interval_bytes,
                );
                position += offsets.size_bytes as u64;
                next_offset = offsets.last_offset() + 1;
                writer.push_batch_end(
                    next_offset,
                    FilePosition {
                        segment_base: active.base_offset(),
                        bytes: position,
                    },
                );
            }
        }
        debug_assert_eq!(position, end_position);
        writer.unflushed_messages += next_offset - writer.next_offset;
        writer.next_offset = next_offset;
        let log_start_offset = {
            let mut view = self.view.write();
            view.offsets.log_end_offset = next_offset;
            view.log_end_position = FilePosition {
                segment_base: active.base_offset(),
                bytes: end_position,
            };
            if let Some(leader_epochs) = leader_epochs {
                view.leader_epochs = leader_epochs;
            }
            producers::publish_last_stable(&writer.producers, &mut view);
            view.offsets.log_start_offset
        };
        self.maybe_flush(writer, config)?;
        Ok(log_start_offset)
    }

    /// Fsyncs every segment past the recovery point (not only the active one: a roll or a
    /// truncation may have left another unflushed) once `flush.messages` messages are
    /// unflushed.
    fn maybe_flush(&self, writer: &mut Writer, config: &LogConfig) -> Result<(), StorageError> {
        if writer.unflushed_messages >= config.flush_messages {
            self.flush()?;
            writer.unflushed_messages = 0;
        }
        Ok(())
    }

    fn should_roll(
        &self,
        writer: &Writer,
        config: &LogConfig,
        bytes: u64,
        messages: i64,
        now_ms: i64,
    ) -> bool {
        let active = &writer.active;
        let size = active.size_bytes();
        if size == 0 {
            return false;
        }
        let index_entries = active.indexes.lock().offset_index.len() as u64;
        let index_full = (index_entries + 1) * crate::index::OFFSET_ENTRY_BYTES as u64
            > config.segment_index_bytes;
        let offsets_overflow =
            writer.next_offset + messages - active.base_offset() > i64::from(i32::MAX);
        size + bytes > config.segment_bytes
            || now_ms - active.created_ms > config.segment_ms
            || index_full
            || offsets_overflow
    }

    /// Starts a new active segment at the log end, after a snapshot of the producer state
    /// there (not fsynced: a torn snapshot fails its CRC and an older one is used).
    fn roll(&self, writer: &mut Writer, now_ms: i64) -> Result<(), StorageError> {
        writer
            .producers
            .write_snapshot(&self.dir, writer.next_offset, false)?;
        seal(&writer.active);
        let segment = Arc::new(LogSegment::create(&self.dir, writer.next_offset, now_ms)?);
        info!(topic = %self.topic, partition = self.partition, base_offset = writer.next_offset, "rolled new segment");
        let mut view = self.view.write();
        let mut segments = Vec::clone(&view.segments);
        segments.push(Arc::clone(&segment));
        view.segments = Arc::new(segments);
        drop(view);
        writer.active = segment;
        Ok(())
    }

    /// Moves the high watermark forward to `high_watermark` (never back, never past the log
    /// end). A value inside a batch stops at the start of that batch: batches are visible
    /// whole.
    pub fn update_high_watermark(&self, high_watermark: i64) {
        let mut writer = self.writer.lock();
        // `reached`: the (offset, position) the high watermark can move to, a batch end.
        let (current, target, mut reached) = {
            let view = self.view.read();
            (
                view.offsets.high_watermark,
                high_watermark.min(view.offsets.log_end_offset),
                (view.offsets.high_watermark, view.high_watermark_position),
            )
        };
        if target <= current {
            return;
        }
        loop {
            while let Some(&(end_offset, position)) = writer.above_high_watermark.front() {
                if end_offset > target {
                    break;
                }
                reached = (end_offset, position);
                writer.above_high_watermark.pop_front();
            }
            if reached.0 >= target
                || !writer.above_high_watermark.is_empty()
                || writer.above_high_watermark_complete
            {
                break;
            }
            let segments = Arc::clone(&self.view.read().segments);
            if let Err(error) = refill_above_high_watermark(&mut writer, &segments, reached.1) {
                warn!(topic = %self.topic, partition = self.partition, %error, "cannot scan the log to move the high watermark");
                break;
            }
        }
        if reached.0 > current {
            writer.producers.on_high_watermark(reached.0);
            let mut view = self.view.write();
            view.offsets.high_watermark = reached.0;
            view.high_watermark_position = reached.1;
            producers::publish_last_stable(&writer.producers, &mut view);
        }
    }

    /// Sets the high watermark to `high_watermark`, moving it back if need be (a log opened
    /// with a checkpointed high watermark, a replica changing role). Clamped to the log's
    /// offsets; a value inside a batch moves to the start of that batch.
    pub fn reset_high_watermark(&self, high_watermark: i64) {
        let mut writer = self.writer.lock();
        let (offsets, segments, log_end_position) = {
            let view = self.view.read();
            (
                view.offsets,
                Arc::clone(&view.segments),
                view.log_end_position,
            )
        };
        let target = high_watermark.clamp(offsets.log_start_offset, offsets.log_end_offset);
        let (offset, position) = if target == offsets.log_end_offset {
            (target, log_end_position)
        } else {
            boundary_at_or_below(&segments, target).unwrap_or_else(|error| {
                warn!(topic = %self.topic, partition = self.partition, %error, "cannot scan the log for the high watermark; resetting it to the log start");
                (
                    offsets.log_start_offset,
                    FilePosition {
                        segment_base: segments[0].base_offset(),
                        bytes: 0,
                    },
                )
            })
        };
        writer.above_high_watermark.clear();
        writer.above_high_watermark_complete = offset == offsets.log_end_offset;
        writer.producers.on_high_watermark(offset);
        let mut view = self.view.write();
        view.offsets.high_watermark = offset;
        view.high_watermark_position = position;
        producers::publish_last_stable(&writer.producers, &mut view);
    }

    /// Reads from `fetch_offset` up to the high watermark: at most `max_bytes`, or the whole
    /// first batch when `min_one_batch` and it is larger (KIP-74). A trailing partial batch is
    /// allowed, as in Kafka; clients skip it.
    pub fn read(
        &self,
        fetch_offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
    ) -> Result<ReadResult, StorageError> {
        self.read_up_to(
            fetch_offset,
            max_bytes,
            min_one_batch,
            ReadBound::HighWatermark,
        )
    }

    /// As [`read`](Self::read), but up to the log end: what a follower replicates.
    pub fn read_to_log_end(
        &self,
        fetch_offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
    ) -> Result<ReadResult, StorageError> {
        self.read_up_to(fetch_offset, max_bytes, min_one_batch, ReadBound::LogEnd)
    }

    /// Reads like [`read`](Self::read), up to `bound`: the high watermark, the last stable
    /// offset (what a read_committed consumer may see; it skips the aborted transactions
    /// below it, from [`aborted_transactions`](Self::aborted_transactions)) or the log end.
    pub fn read_up_to(
        &self,
        fetch_offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
        bound: ReadBound,
    ) -> Result<ReadResult, StorageError> {
        self.with_stable_view(|view| read_in(view, fetch_offset, max_bytes, min_one_batch, bound))
    }

    /// The first record with a timestamp at or after `timestamp`, below the high watermark.
    pub fn offset_for_timestamp(
        &self,
        timestamp: i64,
    ) -> Result<Option<TimestampOffset>, StorageError> {
        self.with_stable_view(|view| offset_for_timestamp_in(view, timestamp))
    }

    /// The record with the largest timestamp (KIP-734), below the high watermark.
    pub fn max_timestamp_offset(&self) -> Result<Option<TimestampOffset>, StorageError> {
        self.with_stable_view(max_timestamp_offset_in)
    }

    /// Runs `read` on a snapshot of the view, again if a truncation overlapped it: a
    /// segment cut and appended to again may hold other batches at the positions an older
    /// view (or an index entry looked up before the cut) points to. Past a few attempts the
    /// reader holds the writer off (truncations are rare; this is for a pathological race).
    fn with_stable_view<T>(
        &self,
        read: impl Fn(&View) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        for _ in 0..OPTIMISTIC_READ_ATTEMPTS {
            let before = self.truncation_seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                // A truncation is cutting files right now.
                break;
            }
            let view = self.view.read().clone();
            let result = read(&view);
            if self.truncation_seq.load(Ordering::Acquire) == before {
                return result;
            }
        }
        let _writer = self.writer.lock();
        let view = self.view.read().clone();
        read(&view)
    }

    /// Fsyncs every segment written since the last flush and returns the new recovery point.
    pub fn flush(&self) -> Result<i64, StorageError> {
        let (log_end_offset, segments, truncations) = {
            let view = self.view.read();
            (
                view.offsets.log_end_offset,
                Arc::clone(&view.segments),
                view.truncations,
            )
        };
        let recovery_point = self.recovery_point();
        let first = segments
            .partition_point(|s| s.base_offset() <= recovery_point)
            .saturating_sub(1);
        for segment in &segments[first..] {
            segment.flush()?;
        }
        // Under the view lock, which truncations take to lower the recovery point: a
        // truncation since the snapshot may have replaced what was just fsynced.
        let view = self.view.read();
        if view.truncations == truncations {
            self.recovery_point
                .fetch_max(log_end_offset, Ordering::AcqRel);
        }
        drop(view);
        Ok(self.recovery_point())
    }

    /// Stops appends, seals the active segment's time index, snapshots the producer state
    /// at the log end (fsynced, so the next open replays nothing) and flushes everything.
    pub fn close(&self) -> Result<i64, StorageError> {
        {
            let mut writer = self.writer.lock();
            if !writer.closed {
                writer.closed = true;
                seal(&writer.active);
                writer
                    .producers
                    .write_snapshot(&self.dir, writer.next_offset, true)?;
            }
        }
        self.flush()
    }

    /// Closes the log and removes its directory.
    pub fn delete(&self) -> Result<(), StorageError> {
        self.writer.lock().closed = true;
        std::fs::remove_dir_all(&self.dir)?;
        Ok(())
    }
}

/// A read of `view`: see [`PartitionLog::read`].
fn read_in(
    view: &View,
    fetch_offset: i64,
    max_bytes: usize,
    min_one_batch: bool,
    bound: ReadBound,
) -> Result<ReadResult, StorageError> {
    let offsets = view.offsets;
    if fetch_offset < offsets.log_start_offset || fetch_offset > offsets.log_end_offset {
        return Err(StorageError::OffsetOutOfRange {
            offset: fetch_offset,
            log_start_offset: offsets.log_start_offset,
            log_end_offset: offsets.log_end_offset,
        });
    }
    let (end_offset, end_position) = match bound {
        ReadBound::HighWatermark => (offsets.high_watermark, view.high_watermark_position),
        ReadBound::LastStable => (offsets.last_stable_offset, view.last_stable_position),
        ReadBound::LogEnd => (offsets.log_end_offset, view.log_end_position),
    };
    if fetch_offset >= end_offset || (max_bytes == 0 && !min_one_batch) {
        return Ok(ReadResult {
            slice: None,
            offsets,
        });
    }
    let first = view
        .segments
        .partition_point(|s| s.base_offset() <= fetch_offset)
        .saturating_sub(1);
    for segment in &view.segments[first..] {
        if segment.base_offset() > end_position.segment_base {
            break;
        }
        let limit = end_position.limit_in(segment);
        if let Some((position, batch)) = segment.find_batch(fetch_offset, limit)? {
            let available = (limit - position) as usize;
            let mut len = available.min(max_bytes);
            if min_one_batch && len < batch.size_bytes {
                len = batch.size_bytes;
            }
            let slice = FileSlice {
                segment: Arc::clone(segment),
                position,
                len,
            };
            return Ok(ReadResult {
                slice: Some(slice),
                offsets,
            });
        }
    }
    Ok(ReadResult {
        slice: None,
        offsets,
    })
}

fn offset_for_timestamp_in(
    view: &View,
    timestamp: i64,
) -> Result<Option<TimestampOffset>, StorageError> {
    for segment in view.segments.iter() {
        if segment.base_offset() > view.high_watermark_position.segment_base {
            break;
        }
        let (max_ts, start) = {
            let indexes = segment.indexes.lock();
            let start_relative = indexes.time_index.lookup(timestamp).unwrap_or(0);
            (
                indexes.max_timestamp,
                indexes.offset_index.lookup(start_relative),
            )
        };
        if max_ts < timestamp {
            continue;
        }
        let limit = view.high_watermark_position.limit_in(segment);
        let mut position = u64::from(start);
        while let Some(found) = segment.batch_header_at(position, limit)? {
            let below_log_start = found.offsets.last_offset() < view.offsets.log_start_offset;
            if found.max_timestamp >= timestamp && !below_log_start {
                let Some(bytes) = read_batch(segment, position, found.offsets.size_bytes)? else {
                    return Ok(None);
                };
                let first = first_record_at_or_after(
                    &bytes,
                    timestamp,
                    view.offsets.log_start_offset,
                    found.offsets.leader_epoch,
                );
                if first.is_some() {
                    return Ok(first);
                }
            }
            position += found.offsets.size_bytes as u64;
        }
    }
    Ok(None)
}

fn max_timestamp_offset_in(view: &View) -> Result<Option<TimestampOffset>, StorageError> {
    let mut best: Option<(i64, Arc<LogSegment>)> = None;
    for segment in view.segments.iter() {
        let max_ts = segment.indexes.lock().max_timestamp;
        if max_ts >= 0 && best.as_ref().is_none_or(|(ts, _)| max_ts > *ts) {
            best = Some((max_ts, Arc::clone(segment)));
        }
    }
    let Some((max_ts, segment)) = best else {
        return Ok(None);
    };
    let limit = view.high_watermark_position.limit_in(&segment);
    let mut position = 0;
    while let Some(found) = segment.batch_header_at(position, limit)? {
        if found.max_timestamp == max_ts {
            let Some(bytes) = read_batch(&segment, position, found.offsets.size_bytes)? else {
                return Ok(None);
            };
            return Ok(first_record_at_or_after(
                &bytes,
                max_ts,
                view.offsets.log_start_offset,
                found.offsets.leader_epoch,
            ));
        }
        position += found.offsets.size_bytes as u64;
    }
    Ok(None)
}

/// Adds the final time index entry of a segment that stops being active (Kafka's
/// `onBecomeInactiveSegment`), so its largest timestamp survives a restart.
fn seal(segment: &LogSegment) {
    let mut indexes = segment.indexes.lock();
    if indexes.offset_of_max_timestamp >= 0 {
        let (ts, offset) = (indexes.max_timestamp, indexes.offset_of_max_timestamp);
        indexes
            .time_index
            .maybe_append(ts, (offset - segment.base_offset()) as u32);
    }
}

/// Loads a closed segment's indexes from their files; rebuilds them if they are invalid.
/// Returns the offset after the segment's last batch.
fn load_indexes(
    segment: &LogSegment,
    index_interval_bytes: u64,
) -> Result<Option<i64>, StorageError> {
    let (offset_index, offset_ok) =
        crate::index::OffsetIndex::load(&segment.index_path(), segment.size_bytes())?;
    let (time_index, time_ok) = crate::index::TimeIndex::load(&segment.time_index_path())?;
    if !offset_ok || !time_ok {
        warn!(path = %segment.log_path().display(), "index file invalid; rebuilding");
        return Ok(segment.recover(index_interval_bytes)?.0);
    }
    let last_position = offset_index.last().map_or(0, |e| u64::from(e.position));
    {
        let mut indexes = segment.indexes.lock();
        // The sealed last time index entry holds the segment's largest timestamp; the scan
        // below covers batches appended after the last entries.
        if let Some(last) = time_index.last() {
            indexes.max_timestamp = last.timestamp;
            indexes.offset_of_max_timestamp =
                segment.base_offset() + i64::from(last.relative_offset);
        }
        indexes.offset_index = offset_index;
        indexes.time_index = time_index;
    }
    // Scan from the last indexed batch to the end for the next offset and the tail's
    // timestamps (the sealed time index entry covers a clean segment's maximum).
    let mut position = last_position;
    let mut next = None;
    let limit = segment.size_bytes();
    while let Some(header) = segment.batch_header_at(position, limit)? {
        let mut indexes = segment.indexes.lock();
        if header.max_timestamp > indexes.max_timestamp {
            indexes.max_timestamp = header.max_timestamp;
            indexes.offset_of_max_timestamp = header.offsets.last_offset();
        }
        position += header.offsets.size_bytes as u64;
        next = Some(header.offsets.last_offset() + 1);
    }
    segment.indexes.lock().bytes_since_last_index_entry = position - last_position;
    if position != limit {
        return Err(StorageError::Corrupt {
            path: segment.log_path().display().to_string(),
            reason: format!(
                "segment ends mid-batch at {position} of {limit} after a clean shutdown"
            ),
        });
    }
    Ok(next)
}

/// Reads the leader epoch cache of a log ending at `log_end_offset`; rebuilds it from the
/// batch headers when the file is missing (logs written before the cache existed) or
/// unreadable. Entries at or past the log end (a torn tail was cut) are dropped.
fn load_leader_epochs(
    dir: &Path,
    segments: &[Arc<LogSegment>],
    log_end_offset: i64,
    topic: &str,
    partition: i32,
) -> Result<LeaderEpochCache, StorageError> {
    let path = dir.join(LEADER_EPOCH_FILE);
    let (mut cache, mut changed) = match LeaderEpochCache::read(&path) {
        Ok(Some(cache)) => (cache, false),
        Ok(None) => (rebuild_leader_epochs(segments)?, true),
        Err(error) => {
            warn!(topic, partition, %error, "leader epoch checkpoint unreadable; rebuilding it");
            (rebuild_leader_epochs(segments)?, true)
        }
    };
    changed |= cache.truncate_from_end(log_end_offset);
    // An empty log needs no file: a missing file reads as the empty cache it rebuilds to.
    if changed && (!cache.entries().is_empty() || path.exists()) {
        cache.write(&path)?;
    }
    Ok(cache)
}

/// The leader epoch cache of the batches in `segments`: each epoch newer than all before
/// it starts at its first batch.
fn rebuild_leader_epochs(segments: &[Arc<LogSegment>]) -> Result<LeaderEpochCache, StorageError> {
    let mut cache = LeaderEpochCache::default();
    for segment in segments {
        let limit = segment.size_bytes();
        let mut position = 0;
        while let Some(offsets) = segment.batch_at(position, limit)? {
            cache.assign(offsets.leader_epoch, offsets.base_offset);
            position += offsets.size_bytes as u64;
        }
    }
    Ok(cache)
}

/// The largest batch boundary at or below `offset` (inside a batch, that batch's base
/// offset) and its position: where a high watermark or a truncation at `offset` stands.
fn boundary_at_or_below(
    segments: &[Arc<LogSegment>],
    offset: i64,
) -> Result<(i64, FilePosition), StorageError> {
    let index = segments
        .partition_point(|s| s.base_offset() <= offset)
        .saturating_sub(1);
    let segment = &segments[index];
    let segment_base = segment.base_offset();
    Ok(match segment.find_batch(offset, segment.size_bytes())? {
        Some((bytes, found)) => (
            found.base_offset.min(offset),
            FilePosition {
                segment_base,
                bytes,
            },
        ),
        None => (
            offset,
            FilePosition {
                segment_base,
                bytes: segment.size_bytes(),
            },
        ),
    })
}

/// Refills the drained queue of batch ends above the high watermark, scanning from `from`
/// (the high watermark's position), up to its limit; marks it complete at the log end.
fn refill_above_high_watermark(
    writer: &mut Writer,
    segments: &[Arc<LogSegment>],
    from: FilePosition,
) -> Result<(), StorageError> {
    debug_assert!(writer.above_high_watermark.is_empty());
    let first = segments.partition_point(|s| s.base_offset() < from.segment_base);
    for segment in &segments[first..] {
        let segment_base = segment.base_offset();
        let mut bytes = if segment_base == from.segment_base {
            from.bytes
        } else {
            0
        };
        let limit = segment.size_bytes();
        while let Some(offsets) = segment.batch_at(bytes, limit)? {
            if writer.above_high_watermark.len() >= ABOVE_HIGH_WATERMARK_ENTRIES_MAX {
                return Ok(());
            }
            bytes += offsets.size_bytes as u64;
            writer.above_high_watermark.push_back((
                offsets.last_offset() + 1,
                FilePosition {
                    segment_base,
                    bytes,
                },
            ));
        }
    }
    writer.above_high_watermark_complete = true;
    Ok(())
}

/// The bytes of a batch; `None` if the file was cut under the reader by a truncation.
fn read_batch(
    segment: &LogSegment,
    position: u64,
    size_bytes: usize,
) -> Result<Option<Vec<u8>>, StorageError> {
    let mut bytes = vec![0u8; size_bytes];
    match segment.read_exact_at(&mut bytes, position) {
        Ok(()) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Decodes a stored batch (decompressing it if needed) and finds its first record at or
/// after `log_start_offset` with a timestamp at or after `timestamp`.
fn first_record_at_or_after(
    batch_bytes: &[u8],
    timestamp: i64,
    log_start_offset: i64,
    leader_epoch: i32,
) -> Option<TimestampOffset> {
    let mut buf = bytes::Bytes::copy_from_slice(batch_bytes);
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).ok()?;
    set.records
        .iter()
        .find(|r| r.timestamp >= timestamp && r.offset >= log_start_offset)
        .map(|r| TimestampOffset {
            offset: r.offset,
            timestamp: r.timestamp,
            leader_epoch,
        })
}

/// Base offsets of the `.log` files in `dir`, sorted; removes leftovers of interrupted work.
fn list_segments(dir: &Path) -> Result<Vec<i64>, StorageError> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".tmp")
            || name.ends_with(".swap")
            || name.ends_with(".cleaned")
            || name.ends_with(".deleted")
        {
            std::fs::remove_file(&path)?;
            continue;
        }
        if let Some(stem) = name.strip_suffix(".log") {
            if let Ok(base) = stem.parse::<i64>() {
                bases.push(base);
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}
