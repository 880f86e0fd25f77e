//! Log compaction (Kafka's `cleanup.policy=compact`): the parts one cleaning of a log is
//! made of. [`PartitionLog::clean`](crate::PartitionLog::clean) drives them (see
//! `log/cleaning.rs`); the broker's cleaner thread picks the log and keeps the offset map.
//!
//! - [`OffsetMap`]: Kafka's `SkimpyOffsetMap`, key hash → latest offset over the dirty
//!   section, within a fixed memory limit (`log.cleaner.dedupe.buffer.size`). Keys are
//!   hashed to 128 bits with two SipHash keys drawn at random per map, so a producer cannot
//!   craft keys that collide (a collision would drop another key's latest record).
//! - The record filter (Kafka's `Cleaner.shouldRetainRecord` and `MemoryRecords.filterTo`):
//!   a record stays if it is the latest of its key (or past the mapped range); a tombstone
//!   stays until its batch's delete horizon (KIP-534: set to the cleaning time plus
//!   `delete.retention.ms` by the first cleaning that keeps it) has passed. A batch whose
//!   records all stay is copied byte for byte; otherwise it is rebuilt with its base offset,
//!   producer fields and codec, and a batch that keeps nothing disappears, unless it is the
//!   last batch of a producer the log keeps state of: it stays as an empty batch, so its
//!   sequence numbers survive for deduplication (Kafka's `RETAIN_EMPTY`).
//! - Transactions ([`CleanedTxns`], Kafka's `CleanedTransactionMetadata`): the records of
//!   aborted transactions go (their batch stays empty if it is its producer's last). Control
//!   batches (transaction markers) never enter the offset map (two COMMIT markers have the
//!   same key) and are not removed by key: a marker stays while a batch of its transaction
//!   is in the log; once none is, its first cleaning sets its delete horizon
//!   (`delete.retention.ms`, as for tombstones) and a cleaning past the horizon removes it,
//!   with the transaction's aborted-index entry. The marker a producer's state came from
//!   (its epoch, which fences zombies) stays whole. A cleaned
//!   segment whose old last batch went ends with an empty batch of that batch's offsets, so
//!   that it ends where the replaced segments did (a swap's crash recovery relies on it);
//!   segments that keep nothing at all are cleaned together with the next group rather
//!   than each leaving a segment of one empty batch (which consumers would fetch alone).
//! - Grouping of small segments into one (Kafka's `groupSegmentsBySize`).
//! - Crash recovery of interrupted swaps (Kafka's `LogLoader` handling of `.cleaned`,
//!   `.swap` and `.deleted` files), run before a log's segments are listed.
//!
//! A cleaning writes `<base>.log.cleaned` with its indexes, fsyncs them, renames the index
//! files and then the log to `.swap` (the commit point), publishes the new segment list,
//! deletes the replaced segments and renames the `.swap` files into place.

use std::hash::{BuildHasher, RandomState};
use std::io::IoSlice;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use strom_protocol::batch::{BatchOffsets, OFFSET_RANGE_BYTES};
use strom_protocol::records::{
    BatchBuilder, BatchHeader, Record, RecordReader, DECOMPRESSED_BATCH_BYTES_MAX,
};
use tracing::{info, warn};

use crate::index::{TxnEntry, OFFSET_ENTRY_BYTES, TIME_ENTRY_BYTES};
use crate::segment::{index_batch, max_timestamp_of, LogSegment, RECOVERY_BATCH_BYTES_MAX};
use crate::{file_name, StorageError};

/// The files of a segment: its log and its indexes.
const SEGMENT_EXTENSIONS: [&str; 4] = ["log", "index", "timeindex", "txnindex"];

/// Kafka's per-log-dir file of each compacted log's first dirty offset.
pub const CLEANER_OFFSET_FILE: &str = "cleaner-offset-checkpoint";
/// Suffix of a cleaning's output before it commits.
pub const CLEANED_SUFFIX: &str = ".cleaned";
/// Suffix of a committed cleaning's output before it is renamed into place.
pub const SWAP_SUFFIX: &str = ".swap";
/// Suffix of segment files on their way out (Kafka's; Strom deletes at once, but a log
/// directory written by Kafka may hold some).
pub const DELETED_SUFFIX: &str = ".deleted";
/// Bytes one offset map entry takes: a 128-bit key hash and an offset.
pub const OFFSET_MAP_SLOT_BYTES: usize = 24;
/// Kafka's `log.cleaner.io.buffer.load.factor`: how full the offset map may get.
pub const OFFSET_MAP_LOAD_FACTOR: f64 = 0.9;
/// Slots a new offset map starts with (it doubles up to its memory limit as keys come).
const OFFSET_MAP_INITIAL_SLOTS: usize = 1 << 14;
/// Bytes read from a segment at a time (Kafka's `log.cleaner.io.buffer.size`); a larger
/// batch is read whole.
const READ_BUFFER_BYTES: usize = 512 << 10;
/// Bytes of cleaned batches buffered before they are written out.
const WRITE_BUFFER_BYTES: usize = 512 << 10;

/// A log's compaction settings, by Kafka's topic config names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionConfig {
    /// `min.cleanable.dirty.ratio`: clean once dirty bytes / all bytes exceed this.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: segments with a record newer than this stay dirty.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a dirty record older than this forces a cleaning.
    pub max_compaction_lag_ms: i64,
    /// `delete.retention.ms`: how long a tombstone outlives its first cleaning.
    pub delete_retention_ms: i64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            delete_retention_ms: 86_400_000,
        }
    }
}

/// What the cleaner learns of a log before cleaning it (Kafka's `LogToClean`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cleanable {
    /// Where the dirty section starts.
    pub first_dirty_offset: i64,
    /// The base offset of the first segment that cannot be cleaned now (the active one,
    /// the one holding the upper bound, or one within `min.compaction.lag.ms`).
    pub first_uncleanable_offset: i64,
    /// Bytes of the segments below the dirty section.
    pub clean_bytes: u64,
    /// Bytes of the cleanable dirty segments.
    pub cleanable_bytes: u64,
    /// `cleanable_bytes / (clean_bytes + cleanable_bytes)`.
    pub dirty_ratio: f64,
    /// How long ago `max.compaction.lag.ms` passed for the oldest dirty record (0: not).
    pub max_compaction_delay_ms: i64,
    /// Whether the log should be cleaned now: its dirty ratio passed
    /// `min.cleanable.dirty.ratio`, or a dirty record passed `max.compaction.lag.ms`.
    pub must_clean: bool,
}

/// What one cleaning did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanerStats {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_read: u64,
    pub records_retained: u64,
    /// Segments replaced by cleaned ones.
    pub segments_replaced: usize,
    /// Cleaned segments swapped in.
    pub segments_written: usize,
}

/// The end of a cleaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanOutcome {
    /// Cleaned up to `first_dirty_offset`, the log's new clean point.
    Cleaned {
        first_dirty_offset: i64,
        stats: CleanerStats,
    },
    /// Stopped part way (the caller asked, the log closed or was truncated meanwhile);
    /// what was swapped in is valid, the clean point did not move.
    Aborted { stats: CleanerStats },
}

/// The caller's say during a cleaning: throttling and stopping.
pub trait CleanerProgress {
    /// Called after each chunk of `bytes` read or written; `false` stops the cleaning.
    fn advance(&mut self, bytes: u64) -> bool;

    /// Tests only: whether to simulate a crash right after `step` of a swap (the files
    /// stay as they are; the test reopens the log from them).
    #[cfg(test)]
    fn crash_after(&mut self, _step: SwapStep) -> bool {
        false
    }
}

/// Cleaning without throttling or stopping.
impl CleanerProgress for () {
    fn advance(&mut self, _bytes: u64) -> bool {
        true
    }
}

/// The file steps of a swap, in order (crash tests stop after each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapStep {
    /// `.cleaned` files written and fsynced.
    Written,
    /// Index files renamed to `.swap`.
    IndexesSwapped,
    /// The log renamed to `.swap`: committed.
    LogSwapped,
    /// One replaced segment's files deleted.
    OldDeleted,
    /// The log renamed into place.
    LogRenamed,
    /// The index files renamed into place.
    IndexesRenamed,
}

/// Kafka's offset map: a 128-bit hash of each key of the dirty section → its latest offset,
/// in open addressing with linear probing, never past `memory_bytes_max`.
pub struct OffsetMap {
    slots: Vec<Slot>,
    entries: usize,
    slots_max: usize,
    load_factor: f64,
    latest_offset: i64,
    hashers: (RandomState, RandomState),
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    hash: (u64, u64),
    /// -1: empty.
    offset: i64,
}

const EMPTY: Slot = Slot {
    hash: (0, 0),
    offset: -1,
};

impl OffsetMap {
    /// A map using at most `memory_bytes_max` (at least one slot), filled to at most
    /// `load_factor` of its slots.
    pub fn new(memory_bytes_max: usize, load_factor: f64) -> OffsetMap {
        let slots_max = (memory_bytes_max / OFFSET_MAP_SLOT_BYTES).max(2);
        OffsetMap {
            slots: vec![EMPTY; OFFSET_MAP_INITIAL_SLOTS.min(slots_max)],
            entries: 0,
            slots_max,
            load_factor: load_factor.clamp(0.01, 1.0),
            latest_offset: -1,
            hashers: (RandomState::new(), RandomState::new()),
        }
    }

    /// Forgets every key (the memory stays allocated for the next cleaning).
    pub fn clear(&mut self) {
        self.slots.fill(EMPTY);
        self.entries = 0;
        self.latest_offset = -1;
    }

    /// Keys the map may hold at its memory limit.
    pub fn entries_max(&self) -> usize {
        ((self.slots_max as f64 * self.load_factor) as usize).max(1)
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The last offset mapped: records past it are not covered by this map.
    pub fn latest_offset(&self) -> i64 {
        self.latest_offset
    }

    /// Share of the memory limit in use.
    pub fn utilization(&self) -> f64 {
        self.entries as f64 / self.slots_max as f64
    }

    /// Records `offset` as the latest of `key`. `false` when a new key does not fit: the
    /// map is full.
    pub fn put(&mut self, key: &[u8], offset: i64) -> bool {
        let hash = self.hash(key);
        if let Some(i) = self.find(hash) {
            self.slots[i].offset = offset;
            self.latest_offset = offset;
            return true;
        }
        if self.entries + 1 > self.entries_allowed() && !self.grow() {
            return false;
        }
        let i = self.free_slot(hash);
        self.slots[i] = Slot { hash, offset };
        self.entries += 1;
        self.latest_offset = offset;
        true
    }

    /// The latest offset of `key` in the map.
    pub fn get(&self, key: &[u8]) -> Option<i64> {
        self.find(self.hash(key)).map(|i| self.slots[i].offset)
    }

    pub(crate) fn update_latest_offset(&mut self, offset: i64) {
        self.latest_offset = self.latest_offset.max(offset);
    }

    fn hash(&self, key: &[u8]) -> (u64, u64) {
        (self.hashers.0.hash_one(key), self.hashers.1.hash_one(key))
    }

    /// Entries the current slots take before growing.
    fn entries_allowed(&self) -> usize {
        ((self.slots.len() as f64 * self.load_factor) as usize)
            .min(self.slots.len() - 1)
            .max(1)
    }

    fn home(&self, hash: (u64, u64)) -> usize {
        ((u128::from(hash.0) * self.slots.len() as u128) >> 64) as usize
    }

    fn find(&self, hash: (u64, u64)) -> Option<usize> {
        let mut i = self.home(hash);
        loop {
            let slot = &self.slots[i];
            if slot.offset < 0 {
                return None;
            }
            if slot.hash == hash {
                return Some(i);
            }
            i = (i + 1) % self.slots.len();
        }
    }

    fn free_slot(&self, hash: (u64, u64)) -> usize {
        let mut i = self.home(hash);
        while self.slots[i].offset >= 0 {
            i = (i + 1) % self.slots.len();
        }
        i
    }

    /// Doubles the slots, up to the memory limit; `false` at the limit.
    fn grow(&mut self) -> bool {
        let wanted = (self.slots.len() * 2).min(self.slots_max);
        if wanted <= self.slots.len() {
            return false;
        }
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; wanted]);
        for slot in old.into_iter().filter(|s| s.offset >= 0) {
            let i = self.free_slot(slot.hash);
            self.slots[i] = slot;
        }
        true
    }
}

/// Reads the batches of a closed segment in order, a buffer at a time.
pub(crate) struct SegmentReader<'a> {
    segment: &'a LogSegment,
    limit: u64,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    buf_start: u64,
    /// File position of the next batch.
    next: u64,
}

impl<'a> SegmentReader<'a> {
    pub(crate) fn new(segment: &'a LogSegment, from: u64) -> SegmentReader<'a> {
        SegmentReader {
            segment,
            limit: segment.size_bytes(),
            buf: Vec::new(),
            buf_start: from,
            next: from,
        }
    }

    /// The next batch and its position; `None` at the end of the segment.
    pub(crate) fn next_batch(&mut self) -> Result<Option<(u64, &[u8])>, StorageError> {
        if self.next + OFFSET_RANGE_BYTES as u64 > self.limit {
            return Ok(None);
        }
        self.ensure(OFFSET_RANGE_BYTES)?;
        let at = (self.next - self.buf_start) as usize;
        let offsets = BatchOffsets::parse(&self.buf[at..])
            .ok_or_else(|| self.corrupt("unreadable batch header"))?;
        if offsets.size_bytes > RECOVERY_BATCH_BYTES_MAX
            || self.next + offsets.size_bytes as u64 > self.limit
        {
            return Err(self.corrupt("batch runs past the segment"));
        }
        self.ensure(offsets.size_bytes)?;
        let at = (self.next - self.buf_start) as usize;
        let position = self.next;
        self.next += offsets.size_bytes as u64;
        Ok(Some((position, &self.buf[at..at + offsets.size_bytes])))
    }

    /// Makes `bytes` from the next batch's position readable in the buffer.
    fn ensure(&mut self, bytes: usize) -> Result<(), StorageError> {
        let at = (self.next - self.buf_start) as usize;
        if at + bytes <= self.buf.len() {
            return Ok(());
        }
        let wanted = (self.limit - self.next).min(bytes.max(READ_BUFFER_BYTES) as u64) as usize;
        self.buf.resize(wanted, 0);
        self.segment
            .read_exact_at(&mut self.buf, self.next)
            .map_err(|e| self.corrupt(&format!("segment shorter than its size: {e}")))?;
        self.buf_start = self.next;
        Ok(())
    }

    fn corrupt(&self, reason: &str) -> StorageError {
        StorageError::Corrupt {
            path: self.segment.log_path().display().to_string(),
            reason: format!("{reason} at position {}", self.next),
        }
    }
}

/// What one pass of a cleaning knows of transactions as it reads the log's batches in
/// offset order (Kafka's `CleanedTransactionMetadata`): which data batches belong to aborted
/// transactions (their records never enter the offset map, so that an aborted write never
/// supersedes a committed one, and the rewrite drops them), and which markers end a
/// transaction none of whose batches is left (the marker may go once past its delete
/// horizon).
#[derive(Debug, Default)]
pub(crate) struct CleanedTxns {
    /// Aborted transactions not reached yet, by first offset, earliest last.
    upcoming: Vec<TxnEntry>,
    /// Producers inside an aborted transaction, with whether a batch of it was read.
    aborted: std::collections::HashMap<i64, (TxnEntry, bool)>,
    /// Producers inside a committed transaction a batch of which was read.
    committed: std::collections::HashSet<i64>,
    /// Aborted transactions with no batch left, by (producer, first offset): their index
    /// entries go.
    emptied: std::collections::HashSet<(i64, i64)>,
}

impl CleanedTxns {
    /// `entries`: the aborted transactions of the log being cleaned.
    pub(crate) fn new(mut entries: Vec<TxnEntry>) -> CleanedTxns {
        entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.first_offset));
        CleanedTxns {
            upcoming: entries,
            ..CleanedTxns::default()
        }
    }

    fn reach(&mut self, offset: i64) {
        while self
            .upcoming
            .last()
            .is_some_and(|e| e.first_offset <= offset)
        {
            if let Some(e) = self.upcoming.pop() {
                self.aborted.insert(e.producer_id, (e, false));
            }
        }
    }

    /// A data batch: whether it belongs to an aborted transaction.
    pub(crate) fn on_data_batch(&mut self, header: &BatchHeader) -> bool {
        self.reach(header.last_offset());
        if !header.is_transactional() {
            return false;
        }
        match self.aborted.get_mut(&header.producer_id) {
            Some((_, read)) => {
                *read = true;
                true
            }
            None => {
                self.committed.insert(header.producer_id);
                false
            }
        }
    }

    /// A control batch: whether no batch of the transaction it ends was read, so that it
    /// may go (an empty one, or one of an unknown type, is kept).
    pub(crate) fn on_control_batch(&mut self, header: &BatchHeader, batch: &[u8]) -> bool {
        self.reach(header.last_offset());
        let producer_id = header.producer_id;
        match crate::producer_state::read_end_txn_marker(batch) {
            Ok(Some((marker, _))) if marker.control == crate::ControlType::Abort => {
                match self.aborted.remove(&producer_id) {
                    Some((_, true)) => false,
                    Some((entry, false)) => {
                        self.emptied.insert((producer_id, entry.first_offset));
                        true
                    }
                    None => true,
                }
            }
            Ok(Some(_)) => !self.committed.remove(&producer_id),
            _ => false,
        }
    }

    /// Whether an aborted-index entry still covers a batch in the log.
    pub(crate) fn keeps_entry(&self, entry: &TxnEntry) -> bool {
        !self
            .emptied
            .contains(&(entry.producer_id, entry.first_offset))
    }
}

/// Adds the keys of the records at or after `start` in `segment` to `map`, from the batch
/// holding `start`; control batches and aborted transactions are not mapped. Returns
/// `false` when the map filled up part way (its latest offset is then the last record
/// mapped).
pub(crate) fn map_segment(
    segment: &LogSegment,
    start: i64,
    map: &mut OffsetMap,
    txns: &mut CleanedTxns,
    progress: &mut dyn CleanerProgress,
    stats: &mut CleanerStats,
) -> Result<Option<bool>, StorageError> {
    let from = segment
        .find_batch(start, segment.size_bytes())?
        .map_or(segment.size_bytes(), |(position, _)| position);
    let mut reader = SegmentReader::new(segment, from);
    while let Some((_, batch)) = reader.next_batch()? {
        let header = BatchHeader::parse(batch).map_err(|e| corrupt_records(segment, e))?;
        stats.bytes_read += batch.len() as u64;
        let mapped = if header.is_control() {
            txns.on_control_batch(&header, batch);
            false
        } else {
            !txns.on_data_batch(&header)
        };
        if mapped {
            let mut records = RecordReader::new(batch, DECOMPRESSED_BATCH_BYTES_MAX)
                .map_err(|e| corrupt_records(segment, e))?;
            while let Some(record) = records
                .next_record()
                .map_err(|e| corrupt_records(segment, e))?
            {
                stats.records_read += 1;
                let Some(key) = record.key else { continue };
                if record.offset >= start && !map.put(key, record.offset) {
                    return Ok(Some(false));
                }
            }
        }
        if header.last_offset() >= start {
            map.update_latest_offset(header.last_offset());
        }
        if !progress.advance(batch.len() as u64) {
            return Ok(None);
        }
    }
    Ok(Some(true))
}

fn corrupt_records(segment: &LogSegment, e: strom_protocol::records::RecordsError) -> StorageError {
    StorageError::Corrupt {
        path: segment.log_path().display().to_string(),
        reason: e.to_string(),
    }
}

/// The rules a cleaning applies to each record.
pub(crate) struct Retention<'m> {
    pub map: &'m OffsetMap,
    pub now_ms: i64,
    pub delete_retention_ms: i64,
    /// The last offset of each producer's last batch (Kafka's
    /// `lastRecordsOfActiveProducers`): such a batch stays, empty if need be.
    pub last_batches: &'m std::collections::HashMap<i64, i64>,
    /// The epoch of each producer whose state came from a marker (no data batch since):
    /// that marker stays whole.
    pub last_markers: &'m std::collections::HashMap<i64, i16>,
}

impl Retention<'_> {
    /// Kafka's `shouldRetainRecord`: past the mapped range, or the latest of its key and
    /// either a value or a tombstone whose batch's delete horizon has not passed. Keyless
    /// records (a topic that was not always compacted) go.
    fn keeps(&self, record: &Record<'_>, delete_horizon_ms: Option<i64>) -> bool {
        if record.offset > self.map.latest_offset() {
            return true;
        }
        let Some(key) = record.key else {
            return false;
        };
        let latest = record.offset >= self.map.get(key).unwrap_or(-1);
        let keeps_deletes = delete_horizon_ms.is_none_or(|horizon| self.now_ms < horizon);
        latest && (record.value.is_some() || keeps_deletes)
    }
}

/// What filtering did to a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filtered {
    /// Copied byte for byte.
    Unchanged,
    /// Rebuilt with fewer records or a new delete horizon.
    Rewritten,
    /// Gone.
    Dropped,
}

/// Reusable buffers of the record filter.
#[derive(Default)]
pub(crate) struct Filter {
    kept: Vec<bool>,
    builder: BatchBuilder,
}

impl Filter {
    /// Appends what `rules` keep of `batch` to `out`; `txns` follows the transactions of
    /// the batches read so far.
    pub(crate) fn filter_batch(
        &mut self,
        batch: &[u8],
        rules: &Retention<'_>,
        txns: &mut CleanedTxns,
        out: &mut Vec<u8>,
        stats: &mut CleanerStats,
    ) -> Result<Filtered, strom_protocol::records::RecordsError> {
        let header = BatchHeader::parse(batch)?;
        if header.is_control() {
            return self.filter_marker(batch, &header, rules, txns, out);
        }
        let aborted = txns.on_data_batch(&header);
        let horizon = header.delete_horizon_ms();
        self.kept.clear();
        let mut tombstone_kept = false;
        let mut records = RecordReader::new(batch, DECOMPRESSED_BATCH_BYTES_MAX)?;
        while let Some(record) = records.next_record()? {
            let keep = !aborted && rules.keeps(&record, horizon);
            tombstone_kept |= keep && record.value.is_none();
            self.kept.push(keep);
        }
        let retained = self.kept.iter().filter(|k| **k).count();
        stats.records_read += self.kept.len() as u64;
        stats.records_retained += retained as u64;
        if retained == 0 {
            let producers_last = header.producer_id >= 0
                && rules.last_batches.get(&header.producer_id) == Some(&header.last_offset());
            if producers_last {
                self.empty_batch(&header, out)?;
                return Ok(Filtered::Rewritten);
            }
            return Ok(Filtered::Dropped);
        }
        let needs_horizon = horizon.is_none() && tombstone_kept;
        if retained == self.kept.len() && !needs_horizon {
            out.extend_from_slice(batch);
            return Ok(Filtered::Unchanged);
        }
        let horizon = if needs_horizon {
            Some(rules.now_ms.saturating_add(rules.delete_retention_ms))
        } else {
            horizon
        };
        self.builder.start(&header, horizon);
        let mut records = RecordReader::new(batch, DECOMPRESSED_BATCH_BYTES_MAX)?;
        let mut kept = self.kept.iter();
        while let Some(record) = records.next_record()? {
            if kept.next().copied().unwrap_or(false) {
                self.builder.append(&record)?;
            }
        }
        self.builder.finish(out)?;
        Ok(Filtered::Rewritten)
    }

    /// A transaction marker: kept whole while a batch of its transaction is in the log or
    /// its producer's state came from it; otherwise its delete horizon is set, and once past
    /// it the marker goes.
    fn filter_marker(
        &mut self,
        batch: &[u8],
        header: &BatchHeader,
        rules: &Retention<'_>,
        txns: &mut CleanedTxns,
        out: &mut Vec<u8>,
    ) -> Result<Filtered, strom_protocol::records::RecordsError> {
        let removable = txns.on_control_batch(header, batch)
            && rules.last_markers.get(&header.producer_id) != Some(&header.producer_epoch);
        if header.records_count == 0 {
            // What a cleaning left of a marker at the end of a segment: it goes (Kafka's
            // DELETE_EMPTY); the segment's end is kept by an empty batch written anew.
            return Ok(Filtered::Dropped);
        }
        match header.delete_horizon_ms() {
            _ if !removable => {}
            Some(horizon) if rules.now_ms >= horizon => return Ok(Filtered::Dropped),
            Some(_) => {}
            None => {
                let horizon = rules.now_ms.saturating_add(rules.delete_retention_ms);
                self.builder.start(header, Some(horizon));
                let mut records = RecordReader::new(batch, DECOMPRESSED_BATCH_BYTES_MAX)?;
                while let Some(record) = records.next_record()? {
                    self.builder.append(&record)?;
                }
                self.builder.finish(out)?;
                return Ok(Filtered::Rewritten);
            }
        }
        out.extend_from_slice(batch);
        Ok(Filtered::Unchanged)
    }

    /// Appends an empty batch with `last`'s offset range to `out` (Kafka's
    /// `writeEmptyHeader`): a cleaned segment whose old last batch went still ends at the
    /// same offset, which a swap's crash recovery relies on.
    pub(crate) fn empty_batch(
        &mut self,
        last: &BatchHeader,
        out: &mut Vec<u8>,
    ) -> Result<(), strom_protocol::records::RecordsError> {
        self.builder.start(last, None);
        self.builder.finish(out)?;
        Ok(())
    }
}

/// Kafka's `groupSegmentsBySize`: consecutive segments cleaned into one while their log
/// bytes stay within `segment_bytes`, their index bytes within `index_bytes_max`, and their
/// offsets within the `i32` range of the group's base offset (the index stores offsets
/// relative to it). `upper_bound` is the offset the last segment ends before.
pub(crate) fn group_by_size(
    segments: &[Arc<LogSegment>],
    segment_bytes: u64,
    index_bytes_max: u64,
    upper_bound: i64,
) -> Vec<Range<usize>> {
    let sizes: Vec<(u64, u64, u64)> = segments
        .iter()
        .map(|s| {
            let indexes = s.indexes.lock();
            (
                s.size_bytes(),
                (indexes.offset_index.len() * OFFSET_ENTRY_BYTES) as u64,
                (indexes.time_index.len() * TIME_ENTRY_BYTES) as u64,
            )
        })
        .collect();
    let last_offset = |i: usize| {
        segments
            .get(i + 1)
            .map_or(upper_bound - 1, |next| next.base_offset() - 1)
    };
    let mut groups = Vec::new();
    let mut start = 0;
    while start < segments.len() {
        let (mut log, mut index, mut time) = sizes[start];
        let mut end = start + 1;
        while end < segments.len() {
            let (l, i, t) = sizes[end];
            let fits = log + l <= segment_bytes
                && index + i <= index_bytes_max
                && time + t <= index_bytes_max
                && (l == 0
                    || last_offset(end) - segments[start].base_offset() <= i64::from(i32::MAX));
            if !fits {
                break;
            }
            (log, index, time) = (log + l, index + i, time + t);
            end += 1;
        }
        groups.push(start..end);
        start = end;
    }
    groups
}

/// Writes filtered batches into a cleaned segment, indexing them.
pub(crate) struct CleanedWriter {
    pub segment: LogSegment,
    pending: Vec<u8>,
    index_interval_bytes: u64,
    /// The last offset of the last batch written, -1 before any.
    last_offset: i64,
}

impl CleanedWriter {
    pub(crate) fn create(
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u64,
        now_ms: i64,
    ) -> Result<CleanedWriter, StorageError> {
        remove_cleaned(dir, base_offset)?;
        Ok(CleanedWriter {
            segment: LogSegment::create_with_suffix(dir, base_offset, CLEANED_SUFFIX, now_ms)?,
            pending: Vec::with_capacity(WRITE_BUFFER_BYTES),
            index_interval_bytes,
            last_offset: -1,
        })
    }

    /// The buffer filtered batches are appended to.
    pub(crate) fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.pending
    }

    /// Whether no batch was written yet (buffered ones count).
    pub(crate) fn is_empty(&self) -> bool {
        self.segment.size_bytes() == 0 && self.pending.is_empty()
    }

    /// The last offset of the last batch written (buffered ones count), -1 before any.
    pub(crate) fn last_offset(&self) -> i64 {
        let mut last = self.last_offset;
        let mut at = 0;
        while let Some(offsets) = BatchOffsets::parse(&self.pending[at..]) {
            last = offsets.last_offset();
            at += offsets.size_bytes;
        }
        last
    }

    /// Writes out the buffer once it is large enough (`force`: whatever it holds).
    /// Returns the bytes written.
    pub(crate) fn maybe_write(&mut self, force: bool) -> Result<u64, StorageError> {
        if self.pending.is_empty() || (!force && self.pending.len() < WRITE_BUFFER_BYTES) {
            return Ok(0);
        }
        let start = self.segment.size_bytes();
        self.segment
            .append_vectored(&mut [IoSlice::new(&self.pending)], start)?;
        let mut indexes = self.segment.indexes.lock();
        let mut at = 0;
        while let Some(offsets) = BatchOffsets::parse(&self.pending[at..]) {
            index_batch(
                &mut indexes,
                self.segment.base_offset(),
                &offsets,
                start + at as u64,
                max_timestamp_of(&self.pending[at..]),
                self.index_interval_bytes,
            );
            self.last_offset = offsets.last_offset();
            at += offsets.size_bytes;
        }
        drop(indexes);
        let written = self.pending.len() as u64;
        self.pending.clear();
        Ok(written)
    }
}

/// Removes the `.cleaned` files of `base_offset` (a cleaning that stopped or changed
/// nothing).
pub(crate) fn remove_cleaned(dir: &Path, base_offset: i64) -> Result<(), StorageError> {
    for extension in SEGMENT_EXTENSIONS {
        let name = format!("{}{CLEANED_SUFFIX}", file_name(base_offset, extension));
        remove_if_exists(&dir.join(name))?;
    }
    Ok(())
}

/// Renames the files of `base_offset` with suffix `from` to suffix `to` (empty: the final
/// name). A missing file is skipped.
pub(crate) fn rename_suffix(
    dir: &Path,
    base_offset: i64,
    extension: &str,
    from: &str,
    to: &str,
) -> Result<(), StorageError> {
    let name = file_name(base_offset, extension);
    match std::fs::rename(
        dir.join(format!("{name}{from}")),
        dir.join(format!("{name}{to}")),
    ) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => Ok(other?),
    }
}

fn remove_if_exists(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Fsyncs a directory, so renames and removals in it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Finishes or undoes the cleanings a crash interrupted in `dir`, before its segments are
/// listed: `.cleaned` and `.deleted` files go (a cleaning that had not committed); a
/// `<base>.log.swap` (committed) replaces every segment whose base offset lies in
/// `[base, its next offset)`, and its offset and time indexes are rebuilt; other index
/// `.swap` files without their log are dropped. A `<base>.txnindex.swap` (which recovery
/// could not rebuild from the segment alone) takes its final name when its cleaning
/// committed — no `<base>.log.cleaned` is left — and goes otherwise.
pub(crate) fn recover_leftovers(
    dir: &Path,
    index_interval_bytes: u64,
    now_ms: i64,
) -> Result<(), StorageError> {
    let mut swaps = Vec::new();
    let mut txn_index_swaps = Vec::new();
    let mut uncommitted = Vec::new();
    let mut segment_bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(CLEANED_SUFFIX) || name.ends_with(DELETED_SUFFIX) {
            if let Some(stem) = name.strip_suffix(&format!(".log{CLEANED_SUFFIX}")) {
                uncommitted.extend(stem.parse::<i64>().ok());
            }
            std::fs::remove_file(&path)?;
        } else if let Some(stem) = name.strip_suffix(&format!(".log{SWAP_SUFFIX}")) {
            swaps.extend(stem.parse::<i64>().ok());
        } else if let Some(stem) = name.strip_suffix(&format!(".txnindex{SWAP_SUFFIX}")) {
            txn_index_swaps.extend(stem.parse::<i64>().ok());
        } else if name.ends_with(SWAP_SUFFIX) {
            // An index of a swap: rebuilt below when its log committed, else stale.
            std::fs::remove_file(&path)?;
        } else if let Some(stem) = name.strip_suffix(".log") {
            segment_bases.extend(stem.parse::<i64>().ok());
        }
    }
    if swaps.is_empty() && txn_index_swaps.is_empty() {
        return Ok(());
    }
    swaps.sort_unstable();
    for base in swaps {
        complete_swap(dir, base, &segment_bases, index_interval_bytes, now_ms)?;
    }
    for base in txn_index_swaps {
        if uncommitted.contains(&base) {
            remove_if_exists(&dir.join(format!("{}{SWAP_SUFFIX}", file_name(base, "txnindex"))))?;
        } else {
            rename_suffix(dir, base, "txnindex", SWAP_SUFFIX, "")?;
        }
    }
    sync_dir(dir)?;
    Ok(())
}

/// Replaces the segments a committed `<base>.log.swap` covers with it.
fn complete_swap(
    dir: &Path,
    base: i64,
    segment_bases: &[i64],
    index_interval_bytes: u64,
    now_ms: i64,
) -> Result<(), StorageError> {
    let swap_path = dir.join(format!("{}{SWAP_SUFFIX}", file_name(base, "log")));
    let end = next_offset_of(&swap_path)?.unwrap_or(base);
    for &old in segment_bases
        .iter()
        .filter(|&&b| b >= base && b < end.max(base + 1))
    {
        for extension in SEGMENT_EXTENSIONS {
            remove_if_exists(&dir.join(file_name(old, extension)))?;
        }
    }
    std::fs::rename(&swap_path, dir.join(file_name(base, "log")))?;
    let segment = LogSegment::open(dir, base, now_ms)?;
    segment.recover(index_interval_bytes)?;
    segment.flush()?;
    warn!(dir = %dir.display(), base_offset = base, next_offset = end, "completed a log cleaner swap interrupted by a crash");
    Ok(())
}

/// The offset after the last complete batch of the segment file at `path`.
fn next_offset_of(path: &Path) -> Result<Option<i64>, StorageError> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut position = 0u64;
    let mut next = None;
    let mut head = [0u8; OFFSET_RANGE_BYTES];
    while position + OFFSET_RANGE_BYTES as u64 <= size {
        file.read_exact_at(&mut head, position)?;
        let Some(offsets) = BatchOffsets::parse(&head) else {
            break;
        };
        if position + offsets.size_bytes as u64 > size {
            break;
        }
        position += offsets.size_bytes as u64;
        next = Some(offsets.last_offset() + 1);
    }
    Ok(next)
}

/// Logs what a cleaning did.
pub(crate) fn log_stats(
    topic: &str,
    partition: i32,
    first_dirty_offset: i64,
    stats: &CleanerStats,
) {
    info!(
        topic,
        partition,
        first_dirty_offset,
        bytes_read = stats.bytes_read,
        bytes_written = stats.bytes_written,
        records_read = stats.records_read,
        records_retained = stats.records_retained,
        segments_replaced = stats.segments_replaced,
        segments_written = stats.segments_written,
        "cleaned log"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_map_keeps_the_latest_offset_and_grows_to_its_limit() {
        let mut map = OffsetMap::new(1 << 20, OFFSET_MAP_LOAD_FACTOR);
        for i in 0..20_000i64 {
            assert!(map.put(format!("k{}", i % 5000).as_bytes(), i));
        }
        assert_eq!(map.len(), 5000);
        assert_eq!(map.get(b"k0"), Some(15_000));
        assert_eq!(map.get(b"k4999"), Some(19_999));
        assert_eq!(map.get(b"absent"), None);
        assert_eq!(map.latest_offset(), 19_999);
        map.clear();
        assert!(map.is_empty());
        assert_eq!(map.get(b"k0"), None);
    }

    #[test]
    fn a_full_offset_map_refuses_new_keys_but_updates_known_ones() {
        let mut map = OffsetMap::new(100 * OFFSET_MAP_SLOT_BYTES, 0.5);
        let mut stored = 0;
        while map.put(format!("key-{stored}").as_bytes(), stored) {
            stored += 1;
        }
        assert_eq!(stored as usize, map.entries_max());
        assert!(map.put(b"key-0", 1000), "a known key still updates");
        assert_eq!(map.get(b"key-0"), Some(1000));
    }
}
