//! What partition replication needs from a log: follower appends of the leader's batches,
//! truncation to where the follower's log diverges from the leader's, and the leader epoch
//! cache that finds that point (Kafka's `UnifiedLog.appendAsFollower`, `truncateTo`,
//! `truncateFullyAndStartAt` and `LeaderEpochFileCache`).

use std::io::IoSlice;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use strom_protocol::batch::{self, BatchError, BATCH_HEADER_BYTES, LOG_OVERHEAD_BYTES};
use tracing::info;

use super::{boundary_at_or_below, producers, FilePosition, PartitionLog, Writer};
use crate::checkpoint::LEADER_EPOCH_FILE;
use crate::epoch::LeaderEpochCache;
use crate::segment::{max_timestamp_of, BatchHeader, LogSegment};
use crate::{AppendInfo, StorageError};

impl PartitionLog {
    /// Appends batches fetched from the partition leader, byte for byte: their offsets and
    /// partition leader epochs were assigned by the leader. `records` is the records field
    /// of a Fetch response: complete batches, possibly followed by a partial one, which is
    /// ignored. Every complete batch must be intact and the first must start at or after the
    /// log end, each next one after the previous (a compacted leader's log has gaps between
    /// batches); otherwise nothing is written. Newer leader
    /// epochs enter the epoch cache. The high watermark does not move. `None` when
    /// `records` holds no complete batch. The producer state takes the batches and markers
    /// as they come, refusing nothing (the leader checked them).
    pub fn append_as_follower(
        &self,
        records: &[u8],
        now_ms: i64,
    ) -> Result<Option<AppendInfo>, StorageError> {
        let (batches, complete_bytes) = complete_batches(records)?;
        let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
            return Ok(None);
        };
        let (first_offset, next) = (first.offsets.base_offset, last.offsets.last_offset() + 1);
        let config = self.config.read().clone();
        let mut writer = self.writer.lock();
        if writer.closed {
            return Err(StorageError::Closed);
        }
        writer.clock_ms = writer.clock_ms.max(now_ms);
        let mut expected = writer.next_offset;
        for b in &batches {
            if b.offsets.base_offset < expected {
                return Err(StorageError::NonContiguous {
                    expected,
                    got: b.offsets.base_offset,
                });
            }
            expected = b.offsets.last_offset() + 1;
        }
        let message_count = next - first_offset;
        if self.should_roll(
            &writer,
            &config,
            complete_bytes as u64,
            message_count,
            now_ms,
        ) {
            self.roll(&mut writer, now_ms)?;
        }
        let active = Arc::clone(&writer.active);
        let leader_epochs = self.with_new_epochs(
            batches
                .iter()
                .map(|b| (b.offsets.leader_epoch, b.offsets.base_offset)),
        )?;
        let start_position = active.size_bytes();
        let mut slices = [IoSlice::new(&records[..complete_bytes])];
        let end_position = active.append_vectored(&mut slices, start_position)?;
        let mut position = 0;
        for b in &batches {
            let at = FilePosition {
                segment_base: active.base_offset(),
                bytes: start_position + position as u64,
            };
            let bytes = &records[position..position + b.offsets.size_bytes];
            if batch::has_producer_id(bytes) {
                producers::replay_batch(&mut writer, &active, bytes, at);
            }
            position += b.offsets.size_bytes;
        }
        let written = batches.iter().map(|b| (b.offsets, b.max_timestamp));
        let log_start_offset = self.complete_append(
            &mut writer,
            &active,
            &config,
            (start_position, end_position),
            written,
            leader_epochs,
        )?;
        Ok(Some(AppendInfo {
            first_offset,
            last_offset: next - 1,
            log_start_offset,
            duplicate: false,
        }))
    }

    /// Removes every record at `offset` and after. Batches go whole: an `offset` inside a
    /// batch removes that batch. A no-op at or past the log end; below the log start it
    /// empties the log, keeping the log start offset. The high watermark and the recovery
    /// point move back to the new log end if they were past it; epoch cache entries from it
    /// on are dropped, and so are the snapshots past it and the aborted transactions whose
    /// markers go; the producer state is rebuilt from the latest snapshot left. An I/O
    /// error part way closes the log (its files no longer match it).
    pub fn truncate_to(&self, offset: i64) -> Result<(), StorageError> {
        let mut writer = self.writer.lock();
        if writer.closed {
            return Err(StorageError::Closed);
        }
        let view = self.view.read().clone();
        if offset >= view.offsets.log_end_offset {
            return Ok(());
        }
        let _truncating = Truncating::start(&self.truncation_seq);
        let target = offset.max(view.offsets.log_start_offset);
        let (new_end, cut) = boundary_at_or_below(&view.segments, target)?;
        let kept = self
            .cut_segments(&mut writer, &view.segments, new_end, cut)
            .inspect_err(|_| writer.closed = true)?;
        // After the log: a crash before this leaves entries past the log end, which `open`
        // drops.
        let leader_epochs = self
            .trim_leader_epochs(&view.leader_epochs, new_end)
            .inspect_err(|_| writer.closed = true)?;
        self.reload_producer_state(&mut writer, &kept, new_end)
            .inspect_err(|_| writer.closed = true)?;
        writer.next_offset = new_end;
        let high_watermark_moves = view.offsets.high_watermark > new_end;
        if high_watermark_moves {
            writer.above_high_watermark.clear();
            writer.above_high_watermark_complete = true;
        } else {
            writer
                .above_high_watermark
                .retain(|&(end_offset, _)| end_offset <= new_end);
        }
        {
            let mut next = self.view.write();
            next.segments = Arc::new(kept);
            next.offsets.log_end_offset = new_end;
            next.log_end_position = cut;
            if high_watermark_moves {
                next.offsets.high_watermark = new_end;
                next.high_watermark_position = cut;
            }
            writer
                .producers
                .on_high_watermark(next.offsets.high_watermark);
            producers::publish_last_stable(&writer.producers, &mut next);
            if let Some(leader_epochs) = leader_epochs {
                next.leader_epochs = leader_epochs;
            }
            next.truncations += 1;
            self.recovery_point.fetch_min(new_end, Ordering::AcqRel);
            self.cleaning.truncated_to(new_end);
        }
        info!(
            topic = %self.topic,
            partition = self.partition,
            offset,
            log_end_offset = new_end,
            "truncated log"
        );
        Ok(())
    }

    /// Deletes the segments past `cut` (the newest first, so a crash part way leaves a
    /// prefix of the log), cuts the segment holding it and makes that one active. Returns
    /// the kept segments.
    fn cut_segments(
        &self,
        writer: &mut Writer,
        segments: &[Arc<LogSegment>],
        new_end: i64,
        cut: FilePosition,
    ) -> Result<Vec<Arc<LogSegment>>, StorageError> {
        let keep = segments.partition_point(|s| s.base_offset() <= cut.segment_base);
        for segment in segments[keep..].iter().rev() {
            segment.delete_files()?;
        }
        let active = Arc::clone(&segments[keep - 1]);
        active.truncate_to(cut.bytes, new_end)?;
        if keep < segments.len() {
            sync_dir(&self.dir)?;
        }
        writer.active = active;
        Ok(segments[..keep].to_vec())
    }

    /// The epoch cache without the entries from `new_end` on, checkpointed; `None` if no
    /// entry goes.
    fn trim_leader_epochs(
        &self,
        leader_epochs: &LeaderEpochCache,
        new_end: i64,
    ) -> Result<Option<Arc<LeaderEpochCache>>, StorageError> {
        let mut trimmed = leader_epochs.clone();
        if !trimmed.truncate_from_end(new_end) {
            return Ok(None);
        }
        trimmed.write(&self.dir.join(LEADER_EPOCH_FILE))?;
        Ok(Some(Arc::new(trimmed)))
    }

    /// Deletes every segment and starts an empty log at `offset`: log start, log end, high
    /// watermark, last stable offset and recovery point all become `offset`, and the epoch
    /// cache, the producer state and its snapshots are cleared.
    /// For a follower whose log end is below the leader's log start. An I/O error part way
    /// closes the log.
    pub fn truncate_fully_and_start_at(&self, offset: i64) -> Result<(), StorageError> {
        let mut writer = self.writer.lock();
        if writer.closed {
            return Err(StorageError::Closed);
        }
        let _truncating = Truncating::start(&self.truncation_seq);
        let active = self
            .replace_segments(&mut writer, offset)
            .inspect_err(|_| writer.closed = true)?;
        writer.next_offset = offset;
        writer.above_high_watermark.clear();
        writer.above_high_watermark_complete = true;
        writer.unflushed_messages = 0;
        writer.producers.clear();
        let position = FilePosition {
            segment_base: offset,
            bytes: 0,
        };
        {
            let mut view = self.view.write();
            view.segments = Arc::new(vec![active]);
            view.offsets.log_start_offset = offset;
            view.offsets.log_end_offset = offset;
            view.offsets.high_watermark = offset;
            view.offsets.last_stable_offset = offset;
            view.high_watermark_position = position;
            view.log_end_position = position;
            view.last_stable_position = position;
            view.leader_epochs = Arc::new(LeaderEpochCache::default());
            view.truncations += 1;
            self.recovery_point.store(offset, Ordering::Release);
            self.cleaning.truncated_to(offset);
        }
        info!(
            topic = %self.topic,
            partition = self.partition,
            log_start_offset = offset,
            "truncated log fully"
        );
        Ok(())
    }

    /// Deletes all segments (the newest first: a crash part way leaves a prefix of the log,
    /// or an empty one), creates the empty one at `offset`, then clears the epoch cache
    /// file. Returns the new segment, already active.
    fn replace_segments(
        &self,
        writer: &mut Writer,
        offset: i64,
    ) -> Result<Arc<LogSegment>, StorageError> {
        let segments = Arc::clone(&self.view.read().segments);
        for segment in segments.iter().rev() {
            segment.delete_files()?;
        }
        producers::delete_all_snapshots(&self.dir)?;
        let active = Arc::new(LogSegment::create(&self.dir, offset, writer.clock_ms)?);
        sync_dir(&self.dir)?;
        writer.active = Arc::clone(&active);
        LeaderEpochCache::default().write(&self.dir.join(LEADER_EPOCH_FILE))?;
        Ok(active)
    }

    /// The newest leader epoch in the log's epoch cache.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.view.read().leader_epochs.latest_epoch()
    }

    /// Where `requested_epoch` ends in this log, as Kafka's OffsetsForLeaderEpoch answers:
    /// `(epoch, end_offset)` with the largest known epoch at or below the requested one and
    /// the start offset of the next epoch (the log end for the latest epoch); `(-1, -1)`
    /// when undefined (no epochs, `-1` requested, or an epoch newer than the latest).
    pub fn end_offset_for_epoch(&self, requested_epoch: i32) -> (i32, i64) {
        let view = self.view.read();
        view.leader_epochs
            .end_offset_for(requested_epoch, view.offsets.log_end_offset)
    }

    /// The epoch cache: `(leader_epoch, start_offset)` pairs, oldest first.
    pub fn epoch_entries(&self) -> Vec<(i32, i64)> {
        self.view
            .read()
            .leader_epochs
            .entries()
            .iter()
            .map(|e| (e.leader_epoch, e.start_offset))
            .collect()
    }
}

/// Checks the complete batches at the start of `records` (a trailing partial batch is
/// skipped, as a fetch response may end with one). Returns their headers and their bytes.
fn complete_batches(records: &[u8]) -> Result<(Vec<BatchHeader>, usize), StorageError> {
    let mut headers = Vec::new();
    let mut position = 0;
    while records.len() - position >= LOG_OVERHEAD_BYTES {
        let rest = &records[position..];
        let corrupt = |source| StorageError::CorruptBatch { position, source };
        let batch_length = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if batch_length < (BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32 {
            return Err(corrupt(BatchError::Corrupt(
                "batch length below the header size",
            )));
        }
        let size_bytes = batch_length as usize + LOG_OVERHEAD_BYTES;
        if size_bytes > rest.len() {
            break;
        }
        let bytes = &rest[..size_bytes];
        let offsets = batch::check_stored(bytes).map_err(corrupt)?;
        if offsets.last_offset_delta < 0 {
            return Err(corrupt(BatchError::Corrupt("negative last offset delta")));
        }
        headers.push(BatchHeader {
            offsets,
            max_timestamp: max_timestamp_of(bytes),
        });
        position += size_bytes;
    }
    Ok((headers, position))
}

/// Fsyncs a directory, so file creations and removals in it survive a crash.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Marks a truncation in progress in the log's sequence lock (odd) until dropped, also on
/// an error part way, so readers overlapping it read again.
struct Truncating<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Truncating<'a> {
    fn start(seq: &'a std::sync::atomic::AtomicU64) -> Truncating<'a> {
        seq.fetch_add(1, Ordering::AcqRel);
        Truncating(seq)
    }
}

impl Drop for Truncating<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}
