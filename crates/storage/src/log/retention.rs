//! Deleting the start of a log: retention by time and by size, and a log start offset
//! moved forward by DeleteRecords or by the leader (Kafka's `UnifiedLog.deleteOldSegments`
//! and `maybeIncrementLogStartOffset`).
//!
//! Only a prefix of the segment list ever goes, under the writer lock: the new view is
//! published first, then the files are removed oldest first (readers holding an older view
//! keep reading through their open descriptors; a crash part way leaves a shorter prefix
//! gone, still a contiguous log). A segment is deleted only when everything in it is below
//! the high watermark, so retention never removes what replication may still truncate.

use std::sync::Arc;

use tracing::info;

use super::{producers, PartitionLog, View, Writer};
use crate::checkpoint::LEADER_EPOCH_FILE;
use crate::segment::LogSegment;
use crate::StorageError;

/// How long and how much of a log is kept (`retention.ms`, `retention.bytes`; negative:
/// no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub retention_ms: i64,
    pub retention_bytes: i64,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    pub segments: usize,
    pub bytes: u64,
    /// The log start offset afterwards.
    pub log_start_offset: i64,
}

impl PartitionLog {
    /// Bytes in all segment files.
    pub fn size_bytes(&self) -> u64 {
        self.view
            .read()
            .segments
            .iter()
            .map(|s| s.size_bytes())
            .sum()
    }

    /// Moves the log start offset forward to `offset` (DeleteRecords on a leader, the
    /// leader's log start on a follower, the checkpointed value after a restart) and deletes
    /// the segments wholly below it. Never past the high watermark: that is
    /// `OffsetOutOfRange`. Returns whether it moved.
    pub fn increment_log_start_offset(&self, offset: i64) -> Result<bool, StorageError> {
        let mut writer = self.writer.lock();
        if writer.closed {
            return Err(StorageError::Closed);
        }
        let view = self.view.read().clone();
        if offset <= view.offsets.log_start_offset {
            return Ok(false);
        }
        if offset > view.offsets.high_watermark {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset: view.offsets.log_start_offset,
                log_end_offset: view.offsets.high_watermark,
            });
        }
        let below = segments_below(&view.segments, offset);
        self.remove_prefix(&mut writer, &view, below, offset)?;
        Ok(true)
    }

    /// Deletes the oldest segments that `policy` no longer keeps, and those wholly below the
    /// log start offset, as Kafka's retention check does: by time, a segment whose largest
    /// timestamp is older than `retention.ms`; by size, the oldest segments while the log
    /// stays at or above `retention.bytes` without them. When the whole log qualifies (a
    /// quiet partition past its retention), a new empty segment is rolled first, so the log
    /// start moves to the log end.
    pub fn delete_retained_segments(
        &self,
        policy: RetentionPolicy,
        now_ms: i64,
    ) -> Result<Deleted, StorageError> {
        let mut writer = self.writer.lock();
        if writer.closed {
            return Err(StorageError::Closed);
        }
        let mut view = self.view.read().clone();
        let mut count = deletable_prefix(&view, policy, now_ms);
        if count == view.segments.len() {
            self.roll(&mut writer, now_ms)?;
            view = self.view.read().clone();
        }
        if count == 0 {
            return Ok(Deleted {
                log_start_offset: view.offsets.log_start_offset,
                ..Deleted::default()
            });
        }
        count = count.min(view.segments.len() - 1);
        let bytes = view.segments[..count].iter().map(|s| s.size_bytes()).sum();
        let new_start = view.segments[count]
            .base_offset()
            .max(view.offsets.log_start_offset);
        self.remove_prefix(&mut writer, &view, count, new_start)?;
        Ok(Deleted {
            segments: count,
            bytes,
            log_start_offset: new_start,
        })
    }

    /// Publishes the log without its first `count` segments and with `log_start_offset`,
    /// then deletes their files, oldest first. The epoch cache drops what is below the new
    /// start; so does the producer state (Kafka's `truncateHead`), and the snapshots of the
    /// deleted segments go (the newest snapshot stays).
    fn remove_prefix(
        &self,
        writer: &mut Writer,
        view: &View,
        count: usize,
        log_start_offset: i64,
    ) -> Result<(), StorageError> {
        debug_assert!(count < view.segments.len(), "the active segment stays");
        let mut leader_epochs = super::LeaderEpochCache::clone(&view.leader_epochs);
        let epochs_changed = leader_epochs.truncate_from_start(log_start_offset);
        if epochs_changed {
            leader_epochs.write(&self.dir.join(LEADER_EPOCH_FILE))?;
        }
        let removed: Vec<Arc<LogSegment>> = view.segments[..count].to_vec();
        let kept: Arc<Vec<Arc<LogSegment>>> = Arc::new(view.segments[count..].to_vec());
        writer.producers.truncate_head(log_start_offset, || {
            producers::txn_position(&kept, log_start_offset)
        });
        {
            let mut published = self.view.write();
            published.segments = Arc::clone(&kept);
            published.offsets.log_start_offset = log_start_offset;
            if epochs_changed {
                published.leader_epochs = Arc::new(leader_epochs);
            }
            producers::publish_last_stable(&writer.producers, &mut published);
        }
        debug_assert!(!removed.iter().any(|s| Arc::ptr_eq(s, &writer.active)));
        for segment in &removed {
            segment.delete_files()?;
        }
        producers::delete_snapshots_below(&self.dir, kept[0].base_offset())?;
        info!(
            topic = %self.topic,
            partition = self.partition,
            log_start_offset,
            deleted_segments = removed.len(),
            "advanced the log start offset"
        );
        Ok(())
    }
}

/// How many leading segments lie wholly below `offset` (the next one starts at or below
/// it); never the last.
fn segments_below(segments: &[Arc<LogSegment>], offset: i64) -> usize {
    segments
        .windows(2)
        .take_while(|pair| pair[1].base_offset() <= offset)
        .count()
}

/// How many leading segments retention deletes: Kafka's passes by time, by size and by log
/// start, one after the other, each over what the previous left. A segment qualifies only
/// when it is wholly below the high watermark, and never as the last, empty one.
fn deletable_prefix(view: &View, policy: RetentionPolicy, now_ms: i64) -> usize {
    let segments = &view.segments;
    let offsets = view.offsets;
    let below_high_watermark = |i: usize| {
        let end = segments
            .get(i + 1)
            .map_or(offsets.log_end_offset, |s| s.base_offset());
        let last_and_empty = i + 1 == segments.len() && segments[i].size_bytes() == 0;
        end <= offsets.high_watermark && !last_and_empty
    };
    let mut count = 0;
    if policy.retention_ms >= 0 {
        while count < segments.len()
            && below_high_watermark(count)
            && now_ms.saturating_sub(largest_timestamp(&segments[count])) > policy.retention_ms
        {
            count += 1;
        }
    }
    if policy.retention_bytes >= 0 {
        let total: u64 = segments[count..].iter().map(|s| s.size_bytes()).sum();
        let mut excess = total as i64 - policy.retention_bytes;
        while count < segments.len() && below_high_watermark(count) {
            let size = segments[count].size_bytes() as i64;
            if excess - size < 0 {
                break;
            }
            excess -= size;
            count += 1;
        }
    }
    while count + 1 < segments.len()
        && segments[count + 1].base_offset() <= offsets.log_start_offset
        && below_high_watermark(count)
    {
        count += 1;
    }
    count
}

/// A segment's largest record timestamp; without one (no records carried a timestamp), the
/// file's last modification, as Kafka's `LogSegment.largestTimestamp`.
fn largest_timestamp(segment: &LogSegment) -> i64 {
    let max_timestamp = segment.indexes.lock().max_timestamp;
    if max_timestamp >= 0 {
        return max_timestamp;
    }
    std::fs::metadata(segment.log_path())
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(segment.created_ms, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use strom_protocol::batch::{testing, validate_produce};

    use super::*;
    use crate::{LogConfig, LogOffsets};

    const NOW_MS: i64 = 1_000_000;

    fn open(dir: &std::path::Path) -> PartitionLog {
        let config = LogConfig {
            segment_bytes: 300,
            index_interval_bytes: 100,
            ..LogConfig::default()
        };
        PartitionLog::open(dir, "t", 0, config, 0, true, NOW_MS).expect("open log")
    }

    /// Appends `batches` batches of 3 records each, timestamped `ts`, `ts + 1`, ...; the
    /// high watermark follows the log end.
    fn append(log: &PartitionLog, batches: usize, ts: i64) {
        for i in 0..batches {
            let value = [b'v'; 20];
            let records = testing::batch(&[&value[..]; 3], ts + i as i64);
            let infos = validate_produce(&records, 1 << 20).expect("valid batch");
            log.append_as_leader(&records, &infos, 0, NOW_MS)
                .expect("append");
        }
        log.update_high_watermark(i64::MAX);
    }

    fn bases(log: &PartitionLog) -> Vec<i64> {
        log.view
            .read()
            .segments
            .iter()
            .map(|s| s.base_offset())
            .collect()
    }

    fn files(log: &PartitionLog) -> usize {
        std::fs::read_dir(log.dir())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".log")
            })
            .count()
    }

    const NO_LIMIT: RetentionPolicy = RetentionPolicy {
        retention_ms: -1,
        retention_bytes: -1,
    };

    #[test]
    fn time_retention_deletes_old_closed_segments_and_moves_the_log_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        append(&log, 6, 1_000);
        append(&log, 6, 900_000);
        let before = bases(&log);
        assert!(before.len() >= 4, "{before:?}");
        let deleted = log
            .delete_retained_segments(
                RetentionPolicy {
                    retention_ms: 500_000,
                    ..NO_LIMIT
                },
                NOW_MS,
            )
            .unwrap();
        let after = bases(&log);
        assert!(deleted.segments > 0);
        assert_eq!(after, before[deleted.segments..]);
        assert_eq!(deleted.log_start_offset, after[0]);
        assert_eq!(log.offsets().log_start_offset, after[0]);
        assert_eq!(files(&log), after.len());
        // Every record left is recent; everything old is gone.
        assert!(matches!(
            log.read(0, 1 << 20, true),
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert!(log.read(after[0], 1 << 20, true).unwrap().slice.is_some());
        // Nothing more to do.
        let again = log
            .delete_retained_segments(
                RetentionPolicy {
                    retention_ms: 500_000,
                    ..NO_LIMIT
                },
                NOW_MS,
            )
            .unwrap();
        assert_eq!(again.segments, 0);
    }

    #[test]
    fn size_retention_keeps_the_newest_segments_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        append(&log, 20, NOW_MS);
        let limit = 700;
        log.delete_retained_segments(
            RetentionPolicy {
                retention_bytes: limit,
                ..NO_LIMIT
            },
            NOW_MS,
        )
        .unwrap();
        let segments = log.view.read().segments.clone();
        let kept: u64 = segments.iter().map(|s| s.size_bytes()).sum();
        assert!(kept as i64 >= limit, "{kept}");
        // Without its oldest segment the log would be under the limit.
        assert!(kept - segments[0].size_bytes() < limit as u64);
        assert_eq!(log.size_bytes(), kept);
    }

    #[test]
    fn a_quiet_log_past_its_retention_rolls_and_empties_keeping_its_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        append(&log, 2, 1_000);
        let end = log.offsets().log_end_offset;
        let deleted = log
            .delete_retained_segments(
                RetentionPolicy {
                    retention_ms: 1_000,
                    ..NO_LIMIT
                },
                NOW_MS,
            )
            .unwrap();
        assert_eq!(deleted.log_start_offset, end);
        assert_eq!(
            log.offsets(),
            LogOffsets {
                log_start_offset: end,
                log_end_offset: end,
                high_watermark: end,
                last_stable_offset: end,
            }
        );
        assert_eq!(bases(&log), vec![end]);
        append(&log, 1, NOW_MS);
        assert_eq!(log.offsets().log_end_offset, end + 3);
    }

    #[test]
    fn retention_never_deletes_records_above_the_high_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        append(&log, 10, 1_000);
        log.reset_high_watermark(0);
        let deleted = log
            .delete_retained_segments(
                RetentionPolicy {
                    retention_ms: 0,
                    retention_bytes: 0,
                },
                NOW_MS,
            )
            .unwrap();
        assert_eq!(deleted.segments, 0);
        assert_eq!(log.offsets().log_start_offset, 0);
        // Once committed, the closed segments go.
        log.reset_high_watermark(12);
        let deleted = log.delete_retained_segments(
            RetentionPolicy {
                retention_ms: 0,
                ..NO_LIMIT
            },
            NOW_MS,
        );
        let start = deleted.unwrap().log_start_offset;
        assert!(start > 0 && start <= 12, "{start}");
    }

    #[test]
    fn the_log_start_moves_inside_a_segment_and_deletes_those_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        append(&log, 10, NOW_MS);
        let before = bases(&log);
        let target = before[2] + 1;
        assert!(log.increment_log_start_offset(target).unwrap());
        assert!(!log.increment_log_start_offset(target - 1).unwrap());
        assert_eq!(log.offsets().log_start_offset, target);
        assert_eq!(bases(&log), before[2..]);
        // Reads start at the log start; the batch holding it is returned whole.
        assert!(log.read(target - 1, 1 << 20, true).is_err());
        assert!(log.read(target, 1 << 20, true).unwrap().slice.is_some());
        // Not past the high watermark.
        log.reset_high_watermark(target + 3);
        assert!(matches!(
            log.increment_log_start_offset(target + 4),
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        // The epoch cache starts at the log start.
        assert_eq!(log.end_offset_for_epoch(0).1, log.offsets().log_end_offset);
        let epochs = crate::epoch::LeaderEpochCache::read(&dir.path().join(LEADER_EPOCH_FILE))
            .unwrap()
            .unwrap();
        assert_eq!(epochs.entries()[0].start_offset, target);
    }

    #[test]
    fn a_reopened_log_takes_back_its_checkpointed_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        append(&log, 10, NOW_MS);
        let target = bases(&log)[1] + 2;
        log.increment_log_start_offset(target).unwrap();
        log.close().unwrap();
        drop(log);
        let log = open(dir.path());
        // The first segment's base, until the checkpointed start is given back.
        assert!(log.offsets().log_start_offset < target);
        assert!(log.increment_log_start_offset(target).unwrap());
        assert_eq!(log.offsets().log_start_offset, target);
    }
}
