//! Log compaction of a [`PartitionLog`]: its clean point (the first dirty offset), what may
//! be cleaned now (Kafka's `LogCleanerManager.cleanableOffsets` and `LogToClean`), and a
//! cleaning (Kafka's `Cleaner.doClean`) whose cleaned segments replace the old ones in the
//! published view under the writer lock (`UnifiedLog.replaceSegments`).
//!
//! Only whole closed segments wholly below the upper bound the caller gives (the high
//! watermark) are cleaned, so the high watermark's byte position and the batch ends queued
//! above it never point into a replaced segment. Replaced segments are immutable: a reader
//! holding an older view (or a file slice of one) keeps reading them through their open
//! descriptors after their files are unlinked, so no sequence lock is needed.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::producers::aborted_in;
use super::{seal, FilePosition, PartitionLog};
use crate::cleaner::{
    self, group_by_size, map_segment, rename_suffix, sync_dir, CleanOutcome, Cleanable,
    CleanedTxns, CleanedWriter, CleanerProgress, CleanerStats, CompactionConfig, Filter, Filtered,
    OffsetMap, Retention, SwapStep, CLEANED_SUFFIX, SWAP_SUFFIX,
};
use crate::index::{TxnEntry, TxnIndex};
use crate::segment::LogSegment;
use crate::{LogConfig, StorageError};
use strom_protocol::records::BatchHeader;

/// A log's compaction state.
#[derive(Debug)]
pub(crate) struct CleaningState {
    /// The clean point; -1 until set (the log start is then taken).
    first_dirty_offset: AtomicI64,
    /// Held by a cleaning, so two never overlap on one log.
    running: Mutex<()>,
}

impl Default for CleaningState {
    fn default() -> Self {
        CleaningState {
            first_dirty_offset: AtomicI64::new(-1),
            running: Mutex::new(()),
        }
    }
}

impl CleaningState {
    /// After a truncation to `log_end_offset`: the clean point cannot be past the log end.
    pub(crate) fn truncated_to(&self, log_end_offset: i64) {
        self.first_dirty_offset
            .fetch_min(log_end_offset, Ordering::AcqRel);
    }
}

/// How a group of segments fared.
enum GroupOutcome {
    /// Swapped in, unchanged, or gone meanwhile (retention deleted it): go on.
    Done,
    /// Nothing of it is kept: clean it with the next group.
    Carry(Carried),
    /// Stop the cleaning.
    Aborted,
}

/// What every group of one cleaning shares.
struct Round<'r> {
    rules: &'r Retention<'r>,
    log_config: &'r LogConfig,
    /// The log's truncation count when the cleaning started.
    truncations: u64,
    now_ms: i64,
}

/// The mutable state a cleaning threads through its groups.
struct Work<'w> {
    filter: &'w mut Filter,
    txns: &'w mut CleanedTxns,
    progress: &'w mut dyn CleanerProgress,
    stats: &'w mut CleanerStats,
}

/// Segments that keep no record, waiting to be cleaned with the next group, and the
/// header of their last batch.
#[derive(Default)]
struct Carried {
    segments: Vec<Arc<LogSegment>>,
    last_batch: Option<BatchHeader>,
}

impl PartitionLog {
    /// The clean point (Kafka's first dirty offset): records below it were cleaned against
    /// every key mapped when they were cleaned. `None` until set.
    pub fn first_dirty_offset(&self) -> Option<i64> {
        let offset = self.cleaning.first_dirty_offset.load(Ordering::Acquire);
        (offset >= 0).then_some(offset)
    }

    /// Sets the clean point (from the `cleaner-offset-checkpoint` file after a restart).
    pub fn set_first_dirty_offset(&self, offset: i64) {
        self.cleaning
            .first_dirty_offset
            .store(offset.max(0), Ordering::Release);
    }

    /// What the cleaner may clean now, and whether it should: the dirty section runs from
    /// the clean point (reset to the log start when outside the log) to the first segment
    /// that is active, holds `upper_bound_offset` (the high watermark: never clean what is
    /// not committed) or has a record within `min.compaction.lag.ms` of `now_ms`.
    pub fn cleanable(
        &self,
        config: &CompactionConfig,
        upper_bound_offset: i64,
        now_ms: i64,
    ) -> Result<Cleanable, StorageError> {
        let view = self.view.read().clone();
        let offsets = view.offsets;
        let segments = &view.segments[..];
        let checkpoint = self
            .first_dirty_offset()
            .unwrap_or(offsets.log_start_offset);
        let first_dirty_offset =
            if checkpoint < offsets.log_start_offset || checkpoint > offsets.log_end_offset {
                offsets.log_start_offset
            } else {
                checkpoint
            };
        let active_base = segments.last().map_or(0, |s| s.base_offset());
        // Open or unreplicated transactions stay dirty (Kafka cleans below the last stable
        // offset): their markers decide what of them stays.
        let mut uncleanable = upper_bound_offset
            .min(offsets.last_stable_offset)
            .min(active_base);
        if config.min_compaction_lag_ms > 0 {
            let lag_bound = now_ms.saturating_sub(config.min_compaction_lag_ms);
            if let Some(base) = first_within_lag(segments, first_dirty_offset, lag_bound) {
                uncleanable = uncleanable.min(base);
            }
        }
        let uncleanable = uncleanable.max(first_dirty_offset);
        let first_uncleanable_offset = segments[segment_index(segments, uncleanable)].base_offset();
        let clean_bytes = bytes_of(segments, i64::MIN, first_dirty_offset);
        let cleanable_bytes = bytes_of(
            segments,
            first_dirty_offset.min(first_uncleanable_offset),
            first_uncleanable_offset,
        );
        let total = clean_bytes + cleanable_bytes;
        let dirty_ratio = if total == 0 {
            0.0
        } else {
            cleanable_bytes as f64 / total as f64
        };
        let max_compaction_delay_ms =
            max_compaction_delay(segments, first_dirty_offset, config, now_ms)?;
        let must_clean = total > 0
            && ((max_compaction_delay_ms > 0 && cleanable_bytes > 0)
                || dirty_ratio > config.min_cleanable_dirty_ratio);
        Ok(Cleanable {
            first_dirty_offset,
            first_uncleanable_offset,
            clean_bytes,
            cleanable_bytes,
            dirty_ratio,
            max_compaction_delay_ms,
            must_clean,
        })
    }

    /// Cleans the log as `cleanable` (from [`cleanable`](Self::cleanable)) describes:
    /// builds `map` over the dirty section (as far as it fits), then rewrites every segment
    /// below the mapped end, grouped by size, keeping the latest record of each key, and
    /// swaps the cleaned segments in. On success the clean point moves to the mapped end.
    pub fn clean(
        &self,
        map: &mut OffsetMap,
        config: &CompactionConfig,
        cleanable: &Cleanable,
        now_ms: i64,
        progress: &mut dyn CleanerProgress,
    ) -> Result<CleanOutcome, StorageError> {
        let _running = self.cleaning.running.lock();
        let log_config = self.config.read().clone();
        let view = self.view.read().clone();
        let mut stats = CleanerStats::default();
        let (start, upper_bound) = (
            cleanable.first_dirty_offset,
            cleanable.first_uncleanable_offset,
        );
        map.clear();
        let Some(end_offset) = build_offset_map(
            &view.segments,
            start,
            upper_bound,
            map,
            progress,
            &mut stats,
        )?
        else {
            return Ok(CleanOutcome::Aborted { stats });
        };
        if end_offset <= start {
            return Ok(CleanOutcome::Cleaned {
                first_dirty_offset: start,
                stats,
            });
        }
        let below = view
            .segments
            .partition_point(|s| s.base_offset() < end_offset);
        let segments = &view.segments[..below];
        let groups = group_by_size(
            segments,
            log_config.segment_bytes,
            log_config.segment_index_bytes,
            upper_bound,
        );
        let (last_batches, last_markers) = {
            let writer = self.writer.lock();
            (
                writer.producers.last_data_offsets(),
                writer.producers.last_marker_epochs(),
            )
        };
        let rules = Retention {
            map,
            now_ms,
            delete_retention_ms: config.delete_retention_ms,
            last_batches: &last_batches,
            last_markers: &last_markers,
        };
        // Every aborted transaction starting below the end: the cleaned segments start at
        // the log start, and each transaction below the last stable offset has its marker.
        let mut txns = CleanedTxns::new(aborted_in(&view.segments, 0, end_offset));
        let round = Round {
            rules: &rules,
            log_config: &log_config,
            truncations: view.truncations,
            now_ms,
        };
        let mut filter = Filter::default();
        let mut carried = Carried::default();
        for (i, group) in groups.iter().enumerate() {
            let base = carried
                .segments
                .first()
                .map_or(segments[group.start].base_offset(), |s| s.base_offset());
            let may_carry = groups.get(i + 1).is_some_and(|next| {
                let next_end = segments
                    .get(next.end)
                    .map_or(upper_bound, |s| s.base_offset());
                next_end - 1 - base <= i64::from(i32::MAX)
            });
            let outcome = self.clean_group(
                &round,
                &mut Work {
                    filter: &mut filter,
                    txns: &mut txns,
                    progress,
                    stats: &mut stats,
                },
                std::mem::take(&mut carried),
                &segments[group.clone()],
                may_carry,
            )?;
            match outcome {
                GroupOutcome::Done => {}
                GroupOutcome::Carry(next) => carried = next,
                GroupOutcome::Aborted => return Ok(CleanOutcome::Aborted { stats }),
            }
        }
        self.set_first_dirty_offset(end_offset);
        cleaner::log_stats(&self.topic, self.partition, end_offset, &stats);
        Ok(CleanOutcome::Cleaned {
            first_dirty_offset: end_offset,
            stats,
        })
    }

    /// Cleans `group` into one segment, with the `carried` segments before it (which keep
    /// no record), and swaps it in for all of them, unless nothing changes. When nothing of
    /// them is kept and `may_carry`, they are carried to the next group instead, so that
    /// superseded segments merge rather than each leaving a segment of one empty batch.
    fn clean_group(
        &self,
        round: &Round<'_>,
        work: &mut Work<'_>,
        carried: Carried,
        group: &[Arc<LogSegment>],
        may_carry: bool,
    ) -> Result<GroupOutcome, StorageError> {
        let Work {
            filter,
            txns,
            progress,
            stats,
        } = work;
        let (rules, log_config, now_ms) = (round.rules, round.log_config, round.now_ms);
        let mut old = carried.segments;
        old.extend_from_slice(group);
        let base_offset = old[0].base_offset();
        let mut writer = CleanedWriter::create(
            &self.dir,
            base_offset,
            log_config.index_interval_bytes,
            now_ms,
        )?;
        let mut changed = old.len() > 1;
        let mut last = carried.last_batch;
        for segment in group {
            let mut reader = cleaner::SegmentReader::new(segment, 0);
            while let Some((_, batch)) = reader.next_batch()? {
                let corrupt = |e: strom_protocol::records::RecordsError| StorageError::Corrupt {
                    path: segment.log_path().display().to_string(),
                    reason: e.to_string(),
                };
                last = Some(BatchHeader::parse(batch).map_err(corrupt)?);
                let filtered = filter
                    .filter_batch(batch, rules, txns, writer.buffer(), stats)
                    .map_err(corrupt)?;
                changed |= filtered != Filtered::Unchanged;
                stats.bytes_read += batch.len() as u64;
                let written = writer.maybe_write(false)?;
                stats.bytes_written += written;
                if !progress.advance(batch.len() as u64 + written) {
                    cleaner::remove_cleaned(&self.dir, base_offset)?;
                    return Ok(GroupOutcome::Aborted);
                }
            }
        }
        let Some(last) = last else {
            // No batch at all (empty segments): nothing to clean.
            drop(writer);
            cleaner::remove_cleaned(&self.dir, base_offset)?;
            return Ok(GroupOutcome::Done);
        };
        if writer.is_empty() && may_carry {
            drop(writer);
            cleaner::remove_cleaned(&self.dir, base_offset)?;
            return Ok(GroupOutcome::Carry(Carried {
                segments: old,
                last_batch: Some(last),
            }));
        }
        if writer.last_offset() < last.last_offset() {
            // The cleaned segment ends where the old ones did (crash recovery relies on it).
            filter
                .empty_batch(&last, writer.buffer())
                .map_err(|e| StorageError::Corrupt {
                    path: self.dir.display().to_string(),
                    reason: e.to_string(),
                })?;
            changed = true;
        }
        stats.bytes_written += writer.maybe_write(true)?;
        if !changed {
            drop(writer);
            cleaner::remove_cleaned(&self.dir, base_offset)?;
            return Ok(GroupOutcome::Done);
        }
        // The aborted transactions of the old segments are those of the cleaned one, but
        // for those none of whose batches is left.
        let aborted: Vec<TxnEntry> = old
            .iter()
            .flat_map(|s| s.indexes.lock().txn_index.entries().to_vec())
            .filter(|e| txns.keeps_entry(e))
            .collect();
        if !aborted.is_empty() {
            writer.segment.indexes.lock().txn_index = TxnIndex::with_entries(aborted);
        }
        seal(&writer.segment);
        writer.segment.flush_with_suffix(CLEANED_SUFFIX)?;
        crash_point(*progress, SwapStep::Written)?;
        let cleaned = Arc::new(writer.segment);
        let replaced = self.swap_in_cleaned(&cleaned, &old, round.truncations, *progress)?;
        match replaced {
            Replaced::Yes => {
                stats.segments_replaced += old.len();
                stats.segments_written += 1;
                Ok(GroupOutcome::Done)
            }
            Replaced::Gone => {
                cleaner::remove_cleaned(&self.dir, base_offset)?;
                Ok(GroupOutcome::Done)
            }
            Replaced::Stop => {
                cleaner::remove_cleaned(&self.dir, base_offset)?;
                Ok(GroupOutcome::Aborted)
            }
        }
    }

    /// Swaps `cleaned` in for `old` under the writer lock: commits it (renames to `.swap`),
    /// publishes the new segment list, deletes the old files and renames the new ones into
    /// place. Nothing happens when the log closed or was truncated since the cleaning
    /// started (`Stop`), or when `old` left the log meanwhile (`Gone`, retention). An I/O
    /// error after the commit closes the log: its files no longer match its view (a
    /// restart completes the swap).
    fn swap_in_cleaned(
        &self,
        cleaned: &Arc<LogSegment>,
        old: &[Arc<LogSegment>],
        truncations: u64,
        progress: &mut dyn CleanerProgress,
    ) -> Result<Replaced, StorageError> {
        let mut writer = self.writer.lock();
        let view = self.view.read().clone();
        if writer.closed || view.truncations != truncations {
            return Ok(Replaced::Stop);
        }
        let Some(at) = position_of(&view.segments, old) else {
            return Ok(Replaced::Gone);
        };
        let base_offset = cleaned.base_offset();
        for extension in ["index", "timeindex", "txnindex"] {
            rename_suffix(
                &self.dir,
                base_offset,
                extension,
                CLEANED_SUFFIX,
                SWAP_SUFFIX,
            )?;
        }
        crash_point(progress, SwapStep::IndexesSwapped)?;
        rename_suffix(&self.dir, base_offset, "log", CLEANED_SUFFIX, SWAP_SUFFIX)?;
        sync_dir(&self.dir)?;
        crash_point(progress, SwapStep::LogSwapped)?;
        self.publish_replaced(cleaned, old, at);
        self.finish_swap(old, base_offset, progress)
            .inspect_err(|_| writer.closed = true)?;
        Ok(Replaced::Yes)
    }

    /// Publishes the view with `cleaned` in place of `old` (at index `at`); byte positions
    /// that pointed at the end of a replaced segment now point at the cleaned one's end.
    fn publish_replaced(&self, cleaned: &Arc<LogSegment>, old: &[Arc<LogSegment>], at: usize) {
        let mut view = self.view.write();
        let mut segments = Vec::with_capacity(view.segments.len() + 1 - old.len());
        segments.extend_from_slice(&view.segments[..at]);
        segments.push(Arc::clone(cleaned));
        segments.extend_from_slice(&view.segments[at + old.len()..]);
        let end = FilePosition {
            segment_base: cleaned.base_offset(),
            bytes: cleaned.size_bytes(),
        };
        let replaced = |p: &FilePosition| old.iter().any(|s| s.base_offset() == p.segment_base);
        if replaced(&view.high_watermark_position) {
            view.high_watermark_position = end;
        }
        if replaced(&view.log_end_position) {
            view.log_end_position = end;
        }
        // Cleaned segments lie below the last stable offset, so a position in one is its end.
        if replaced(&view.last_stable_position) {
            view.last_stable_position = end;
        }
        view.segments = Arc::new(segments);
    }

    /// After the commit: deletes the replaced segments' files, then renames the cleaned
    /// segment's `.swap` files into place.
    fn finish_swap(
        &self,
        old: &[Arc<LogSegment>],
        base_offset: i64,
        progress: &mut dyn CleanerProgress,
    ) -> Result<(), StorageError> {
        for segment in old {
            segment.delete_files()?;
            crash_point(progress, SwapStep::OldDeleted)?;
        }
        rename_suffix(&self.dir, base_offset, "log", SWAP_SUFFIX, "")?;
        crash_point(progress, SwapStep::LogRenamed)?;
        for extension in ["index", "timeindex", "txnindex"] {
            rename_suffix(&self.dir, base_offset, extension, SWAP_SUFFIX, "")?;
        }
        sync_dir(&self.dir)?;
        crash_point(progress, SwapStep::IndexesRenamed)?;
        Ok(())
    }
}

/// What a swap found.
enum Replaced {
    Yes,
    Gone,
    Stop,
}

/// Tests only: fails with a simulated crash when the test asks for one after `step`.
#[cfg(test)]
fn crash_point(progress: &mut dyn CleanerProgress, step: SwapStep) -> Result<(), StorageError> {
    if progress.crash_after(step) {
        return Err(StorageError::Io(std::io::Error::other(format!(
            "simulated crash after {step:?}"
        ))));
    }
    Ok(())
}

#[cfg(not(test))]
fn crash_point(_: &mut dyn CleanerProgress, _: SwapStep) -> Result<(), StorageError> {
    Ok(())
}

/// Maps the keys of the dirty segments (from the one holding `start` to those below
/// `upper_bound`) until the map is full, leaving out aborted transactions. Returns the end
/// of what was mapped (`None`: the caller stopped the cleaning).
fn build_offset_map(
    segments: &[Arc<LogSegment>],
    start: i64,
    upper_bound: i64,
    map: &mut OffsetMap,
    progress: &mut dyn CleanerProgress,
    stats: &mut CleanerStats,
) -> Result<Option<i64>, StorageError> {
    let first = segment_index(segments, start);
    let mut txns = CleanedTxns::new(aborted_in(&segments[first..], start, upper_bound));
    let dirty: Vec<&Arc<LogSegment>> = segments[first..]
        .iter()
        .take_while(|s| s.base_offset() < upper_bound)
        .collect();
    for (i, segment) in dirty.iter().enumerate() {
        let next_start = dirty.get(i + 1).map_or(upper_bound, |s| s.base_offset());
        match map_segment(segment, start, map, &mut txns, progress, stats)? {
            None => return Ok(None),
            Some(false) => break,
            // Offsets missing at the end of a segment are covered too.
            Some(true) => map.update_latest_offset(next_start - 1),
        }
    }
    Ok(Some(map.latest_offset() + 1))
}

/// The index of the segment holding `offset` (the first one when below all).
fn segment_index(segments: &[Arc<LogSegment>], offset: i64) -> usize {
    segments
        .partition_point(|s| s.base_offset() <= offset)
        .saturating_sub(1)
}

/// Bytes of the segments overlapping `[from, to)` (Kafka's `logSegments(from, to)`: from
/// the one holding `from`, those starting below `to`).
fn bytes_of(segments: &[Arc<LogSegment>], from: i64, to: i64) -> u64 {
    segments[segment_index(segments, from)..]
        .iter()
        .take_while(|s| s.base_offset() < to)
        .map(|s| s.size_bytes())
        .sum()
}

/// The base offset of the first closed dirty segment holding a record newer than
/// `lag_bound` (Kafka's `findFirstUncleanableSegment`).
fn first_within_lag(segments: &[Arc<LogSegment>], first_dirty: i64, lag_bound: i64) -> Option<i64> {
    let closed = &segments[..segments.len().saturating_sub(1)];
    closed[segment_index(closed, first_dirty).min(closed.len())..]
        .iter()
        .find(|s| largest_timestamp(s) > lag_bound)
        .map(|s| s.base_offset())
}

/// How long ago `max.compaction.lag.ms` passed for the oldest first batch of a closed dirty
/// segment (Kafka's `maxCompactionDelay`); 0 when it has not.
fn max_compaction_delay(
    segments: &[Arc<LogSegment>],
    first_dirty: i64,
    config: &CompactionConfig,
    now_ms: i64,
) -> Result<i64, StorageError> {
    let closed = &segments[..segments.len().saturating_sub(1)];
    let mut earliest = i64::MAX;
    for segment in &closed[segment_index(closed, first_dirty).min(closed.len())..] {
        if let Some(header) = segment.batch_header_at(0, segment.size_bytes())? {
            if header.max_timestamp > 0 {
                earliest = earliest.min(header.max_timestamp);
            }
        }
    }
    let clean_until = now_ms.saturating_sub(config.max_compaction_lag_ms.max(0));
    Ok(if earliest < clean_until {
        clean_until - earliest
    } else {
        0
    })
}

/// A segment's largest record timestamp, or when it was opened without one (Kafka takes
/// the file's modification time).
fn largest_timestamp(segment: &LogSegment) -> i64 {
    let max_timestamp = segment.indexes.lock().max_timestamp;
    if max_timestamp >= 0 {
        max_timestamp
    } else {
        segment.created_ms
    }
}

/// Where `old` sits, consecutive and unchanged, in `segments`.
fn position_of(segments: &[Arc<LogSegment>], old: &[Arc<LogSegment>]) -> Option<usize> {
    let at = segments.iter().position(|s| Arc::ptr_eq(s, &old[0]))?;
    let found = segments.get(at..at + old.len())?;
    found
        .iter()
        .zip(old)
        .all(|(a, b)| Arc::ptr_eq(a, b))
        .then_some(at)
}

#[cfg(test)]
mod tests;
