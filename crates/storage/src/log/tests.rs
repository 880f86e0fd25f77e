//! The replication side of a log against its files: follower appends, truncation, the
//! leader epoch cache, reads to the log end and high watermark resets, across reopens.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use strom_protocol::batch::{patched_prefix, testing, validate_produce, BatchOffsets};
use strom_protocol::ResponseError;

use super::test_support::{open_log, ranges, read_batches, reopen_log, replicate};
use super::ABOVE_HIGH_WATERMARK_ENTRIES_MAX;
use crate::checkpoint::LEADER_EPOCH_FILE;
use crate::{AppendInfo, LogConfig, LogOffsets, PartitionLog, ReadBound, StorageError};

const NOW_MS: i64 = 1_000;

fn open(dir: &Path, config: LogConfig, clean: bool) -> PartitionLog {
    open_log(dir, config, clean, NOW_MS)
}

fn reopen(log: PartitionLog, config: LogConfig, clean: bool) -> PartitionLog {
    reopen_log(log, config, clean, NOW_MS)
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 300,
        index_interval_bytes: 100,
        ..LogConfig::default()
    }
}

/// A leader append of one batch of `count` records stamped `leader_epoch`; the high
/// watermark stays where it is.
fn leader_append(log: &PartitionLog, count: usize, leader_epoch: i32, ts: i64) -> AppendInfo {
    let records = producer_batch(count, ts);
    let batches = validate_produce(&records, 1 << 20).expect("valid batch");
    log.append_as_leader(&records, &batches, leader_epoch, NOW_MS)
        .expect("leader append")
}

/// A producer's batch of `count` records.
fn producer_batch(count: usize, ts: i64) -> Vec<u8> {
    let value = [b'v'; 12];
    let values: Vec<&[u8]> = (0..count).map(|_| &value[..]).collect();
    testing::batch(&values, ts)
}

/// `bytes` as a leader stores them: at `base_offset`, stamped `leader_epoch`.
fn stamped(mut bytes: Vec<u8>, base_offset: i64, leader_epoch: i32) -> Vec<u8> {
    let prefix = patched_prefix(base_offset, bytes.len(), leader_epoch);
    bytes[..prefix.len()].copy_from_slice(&prefix);
    bytes
}

/// A batch as a leader stores it: `count` records at `base_offset`, stamped `leader_epoch`.
fn stored_batch(count: usize, base_offset: i64, leader_epoch: i32, ts: i64) -> Vec<u8> {
    let value = [b's'; 9];
    let values: Vec<&[u8]> = (0..count).map(|_| &value[..]).collect();
    stamped(testing::batch(&values, ts), base_offset, leader_epoch)
}

/// Every stored batch from `offset` to the log end, as bytes, via `read_to_log_end`.
fn batches_to_log_end(log: &PartitionLog, offset: i64) -> Vec<Vec<u8>> {
    read_batches(log, offset, ReadBound::LogEnd)
}

/// Every stored batch from `offset` to the high watermark, via `read`.
fn committed_batches(log: &PartitionLog, offset: i64) -> Vec<Vec<u8>> {
    read_batches(log, offset, ReadBound::HighWatermark)
}

fn log_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_follower_append_reproduces_the_leaders_bytes_offsets_and_epochs_across_reopens() {
    for clean in [true, false] {
        let (leader_dir, follower_dir) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let leader = open(leader_dir.path(), small_segments(), false);
        for (i, epoch) in [0, 0, 1, 1, 1, 4, 4, 4, 4, 7, 7, 7].iter().enumerate() {
            leader_append(&leader, 1 + i % 3, *epoch, 100 + i as i64);
        }
        let follower = open(follower_dir.path(), small_segments(), false);
        replicate(&leader, &follower, 150, NOW_MS);
        let expected = batches_to_log_end(&leader, 0);
        assert_eq!(batches_to_log_end(&follower, 0), expected);
        assert_eq!(
            follower.offsets().log_end_offset,
            leader.offsets().log_end_offset
        );
        assert!(
            follower.segment_count() > 2,
            "the follower rolls like the leader"
        );
        assert_eq!(follower.epoch_entries(), leader.epoch_entries());
        assert_eq!(
            follower.epoch_entries(),
            vec![(0, 0), (1, 3), (4, 9), (7, 18)]
        );
        assert_eq!(
            follower.offsets().high_watermark,
            0,
            "a follower append never moves the high watermark"
        );

        let follower = reopen(follower, small_segments(), clean);
        assert_eq!(batches_to_log_end(&follower, 0), expected, "clean: {clean}");
        assert_eq!(follower.epoch_entries(), leader.epoch_entries());
        // The reopened follower keeps replicating.
        leader_append(&leader, 2, 8, 500);
        replicate(&leader, &follower, 1 << 20, NOW_MS);
        assert_eq!(
            batches_to_log_end(&follower, 0),
            batches_to_log_end(&leader, 0)
        );
        assert_eq!(follower.latest_epoch(), Some(8));
    }
}

#[test]
fn a_follower_append_without_a_complete_batch_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    let batch = stored_batch(2, 0, 0, 1);
    assert_eq!(log.append_as_follower(&[], NOW_MS).unwrap(), None);
    assert_eq!(log.append_as_follower(&batch[..11], NOW_MS).unwrap(), None);
    assert_eq!(
        log.append_as_follower(&batch[..batch.len() - 1], NOW_MS)
            .unwrap(),
        None
    );
    assert_eq!(log.offsets().log_end_offset, 0);
    let mut two = batch.clone();
    two.extend_from_slice(&stored_batch(3, 2, 0, 2)[..40]);
    let info = log.append_as_follower(&two, NOW_MS).unwrap().unwrap();
    assert_eq!((info.first_offset, info.last_offset), (0, 1));
    assert_eq!(batches_to_log_end(&log, 0), vec![batch]);
}

#[test]
fn an_overlapping_follower_append_is_refused_and_leaves_the_log_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    let first = stored_batch(2, 0, 1, 1);
    log.append_as_follower(&first, NOW_MS).unwrap();
    let file = dir.path().join(crate::file_name(0, "log"));
    let before = (
        std::fs::read(&file).unwrap(),
        log.offsets(),
        log.epoch_entries(),
    );
    let overlap = stored_batch(1, 1, 2, 2);
    let mut overlap_inside = stored_batch(1, 2, 2, 2);
    overlap_inside.extend_from_slice(&stored_batch(1, 2, 2, 2));
    for (records, expected, got) in [(overlap, 2, 1), (overlap_inside, 3, 2)] {
        let error = log.append_as_follower(&records, NOW_MS).unwrap_err();
        assert!(
            matches!(error, StorageError::NonContiguous { expected: e, got: g } if e == expected && g == got),
            "{error}"
        );
        assert_eq!(error.error_code(), ResponseError::UnknownServerError.code());
        assert_eq!(
            (
                std::fs::read(&file).unwrap(),
                log.offsets(),
                log.epoch_entries()
            ),
            before
        );
    }
}

#[test]
fn a_follower_takes_the_gaps_of_a_compacted_leader() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    log.append_as_follower(&stored_batch(2, 0, 1, 1), NOW_MS)
        .unwrap();
    let mut gaps = stored_batch(1, 3, 1, 2);
    gaps.extend_from_slice(&stored_batch(2, 7, 1, 3));
    let info = log.append_as_follower(&gaps, NOW_MS).unwrap().unwrap();
    assert_eq!((info.first_offset, info.last_offset), (3, 8));
    assert_eq!(log.offsets().log_end_offset, 9);
    assert_eq!(batches_to_log_end(&log, 0).len(), 3);
}

#[test]
fn a_corrupt_follower_append_is_refused_and_leaves_the_log_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    let good = stored_batch(2, 0, 3, 1);
    let mut flipped = stored_batch(2, 2, 3, 2);
    let last = flipped.len() - 2;
    flipped[last] ^= 0xff;
    let mut short_length = stored_batch(1, 2, 3, 2);
    short_length[8..12].copy_from_slice(&10i32.to_be_bytes());
    for bad in [flipped, short_length] {
        let mut records = good.clone();
        records.extend_from_slice(&bad);
        let error = log.append_as_follower(&records, NOW_MS).unwrap_err();
        assert!(
            matches!(error, StorageError::CorruptBatch { position, .. } if position == good.len()),
            "{error}"
        );
        assert_eq!(error.error_code(), ResponseError::CorruptMessage.code());
        assert_eq!(log.offsets().log_end_offset, 0, "not even the good batch");
        assert_eq!(log.latest_epoch(), None);
        assert!(!dir.path().join(LEADER_EPOCH_FILE).exists());
    }
}

/// Appends 10 batches of 2 records (offsets 0..20) over small segments, truncates to
/// `offset`, appends 3 more batches of 1 and checks the log before and after a reopen.
fn truncate_append_reopen(offset: i64, expected_end: i64, clean: bool) {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(), false);
    for i in 0..10 {
        leader_append(&log, 2, 0, 10 + i);
    }
    let before = batches_to_log_end(&log, 0);
    let segments_before = log.segment_count();
    log.truncate_to(offset).unwrap();
    assert_eq!(
        log.offsets().log_end_offset,
        expected_end,
        "truncate to {offset}"
    );
    let kept = (expected_end / 2) as usize;
    assert_eq!(batches_to_log_end(&log, 0), before[..kept].to_vec());
    assert!(log.segment_count() <= segments_before);
    assert_eq!(log_files(dir.path()).len(), log.segment_count());
    for i in 0..3 {
        let info = leader_append(&log, 1, 0, 100 + i);
        assert_eq!(info.first_offset, expected_end + i);
    }
    let mut expected = before[..kept].to_vec();
    let appended = batches_to_log_end(&log, expected_end);
    assert_eq!(
        ranges(&appended),
        (0..3).map(|i| (expected_end + i, 1)).collect::<Vec<_>>()
    );
    expected.extend(appended);
    assert_eq!(batches_to_log_end(&log, 0), expected);
    let log = reopen(log, small_segments(), clean);
    assert_eq!(log.offsets().log_end_offset, expected_end + 3);
    assert_eq!(
        batches_to_log_end(&log, 0),
        expected,
        "after a {} reopen",
        if clean { "clean" } else { "crash" }
    );
    assert_eq!(log.offsets().log_start_offset, 0);
    // The reopened log's timestamps index only what is left.
    let latest = log
        .max_timestamp_offset()
        .unwrap()
        .expect("a largest timestamp");
    assert_eq!(latest.timestamp, 102);
}

#[test]
fn truncation_in_the_active_segment_then_appends_survive_reopen() {
    for clean in [true, false] {
        truncate_append_reopen(19, 18, clean);
        truncate_append_reopen(18, 18, clean);
    }
}

#[test]
fn truncation_inside_an_earlier_segment_deletes_the_later_ones() {
    for clean in [true, false] {
        truncate_append_reopen(3, 2, clean);
        truncate_append_reopen(8, 8, clean);
        truncate_append_reopen(0, 0, clean);
        truncate_append_reopen(-5, 0, clean);
    }
}

/// A flushed segment is cut, refilled with batches of other sizes (its index file on disk
/// now points into the middle of them) and rolled; two crashes later its index file must
/// still not be trusted before it was rewritten.
#[test]
fn crashes_after_a_truncation_never_trust_a_stale_index_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 600,
        index_interval_bytes: 1,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config.clone(), false);
    for i in 0..6 {
        leader_append(&log, 1, 0, i);
    }
    assert_eq!(log.flush().unwrap(), 6);
    log.truncate_to(2).unwrap();
    for i in 0..6 {
        leader_append(&log, 3, 0, 10 + i);
    }
    assert!(log.segment_count() > 1);
    let expected = batches_to_log_end(&log, 0);
    for _ in 0..2 {
        let recovery_point = log.recovery_point();
        drop(log);
        log = PartitionLog::open(
            dir.path(),
            "t",
            0,
            config.clone(),
            recovery_point,
            false,
            NOW_MS,
        )
        .expect("reopen after a crash");
        assert_eq!(batches_to_log_end(&log, 0), expected);
    }
}

#[test]
fn truncation_keeps_reads_and_the_high_watermark_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(), false);
    for i in 0..10 {
        leader_append(&log, 2, 0, i);
    }
    log.update_high_watermark(14);
    let old_slice = log
        .read_to_log_end(16, 1 << 20, true)
        .unwrap()
        .slice
        .unwrap();
    let flushed = log.flush().unwrap();
    assert_eq!(flushed, 20);
    log.truncate_to(25).unwrap();
    assert_eq!(
        log.offsets().log_end_offset,
        20,
        "truncating past the end is a no-op"
    );

    log.truncate_to(17).unwrap();
    assert_eq!(
        log.offsets(),
        LogOffsets {
            log_start_offset: 0,
            log_end_offset: 16,
            high_watermark: 14,
            last_stable_offset: 14,
        }
    );
    assert!(log.recovery_point() <= 16);
    assert_eq!(ranges(&committed_batches(&log, 0)).last(), Some(&(12, 2)));
    // A slice taken before the truncation still reads (what is left of) its segment.
    let _ = old_slice.read_to_vec();

    log.truncate_to(9).unwrap();
    assert_eq!(
        log.offsets(),
        LogOffsets {
            log_start_offset: 0,
            log_end_offset: 8,
            high_watermark: 8,
            last_stable_offset: 8,
        },
        "the high watermark moves back with the log end"
    );
    assert_eq!(ranges(&committed_batches(&log, 0)).len(), 4);
    assert!(log.read(8, 100, true).unwrap().slice.is_none());
    assert!(matches!(
        log.read(12, 100, true),
        Err(StorageError::OffsetOutOfRange {
            log_end_offset: 8,
            ..
        })
    ));
    assert_eq!(log.offset_for_timestamp(9).unwrap(), None);

    // The high watermark moves forward again over new appends.
    leader_append(&log, 3, 1, 50);
    leader_append(&log, 3, 1, 51);
    log.update_high_watermark(12);
    assert_eq!(
        log.offsets().high_watermark,
        11,
        "stops at the start of the batch"
    );
    log.update_high_watermark(100);
    assert_eq!(log.offsets().high_watermark, 14);
    assert_eq!(
        ranges(&committed_batches(&log, 0))[4..].to_vec(),
        vec![(8, 3), (11, 3)]
    );
}

#[test]
fn the_epoch_cache_records_each_new_epoch_and_answers_end_offsets_like_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    assert_eq!(log.latest_epoch(), None);
    assert_eq!(log.end_offset_for_epoch(0), (-1, -1));
    for epoch in [0, 0, 2, 2, 5] {
        leader_append(&log, 2, epoch, 1);
    }
    let expected = vec![(0, 0), (2, 4), (5, 8)];
    let check = |log: &PartitionLog| {
        assert_eq!(log.epoch_entries(), expected);
        assert_eq!(log.latest_epoch(), Some(5));
        assert_eq!(log.end_offset_for_epoch(-1), (-1, -1));
        assert_eq!(
            log.end_offset_for_epoch(5),
            (5, 10),
            "the latest ends at the log end"
        );
        assert_eq!(
            log.end_offset_for_epoch(6),
            (-1, -1),
            "newer than the latest"
        );
        assert_eq!(log.end_offset_for_epoch(0), (0, 4));
        assert_eq!(
            log.end_offset_for_epoch(1),
            (0, 4),
            "an unknown epoch: its floor"
        );
        assert_eq!(log.end_offset_for_epoch(2), (2, 8));
        assert_eq!(log.end_offset_for_epoch(4), (2, 8));
    };
    check(&log);
    let path = dir.path().join(LEADER_EPOCH_FILE);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "0\n3\n0 0\n2 4\n5 8\n"
    );
    let log = reopen(log, LogConfig::default(), true);
    check(&log);
    std::fs::remove_file(&path).unwrap();
    let log = reopen(log, LogConfig::default(), false);
    check(&log);
    assert!(path.exists(), "the rebuilt cache is checkpointed");

    // An epoch below the first known one ends where the first starts.
    let other = tempfile::tempdir().unwrap();
    let late = open(other.path(), LogConfig::default(), false);
    late.append_as_follower(&stored_batch(2, 0, 3, 1), NOW_MS)
        .unwrap();
    late.append_as_follower(&stored_batch(1, 2, 4, 1), NOW_MS)
        .unwrap();
    assert_eq!(late.epoch_entries(), vec![(3, 0), (4, 2)]);
    assert_eq!(late.end_offset_for_epoch(1), (1, 0));
    assert_eq!(late.end_offset_for_epoch(3), (3, 2));
}

#[test]
fn an_empty_log_writes_no_epoch_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    let log = reopen(log, LogConfig::default(), true);
    assert!(!dir.path().join(LEADER_EPOCH_FILE).exists());
    assert_eq!(log.epoch_entries(), vec![]);
}

#[test]
fn truncation_trims_the_epoch_cache_and_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(), false);
    for epoch in [0, 0, 2, 2, 5] {
        leader_append(&log, 2, epoch, 1);
    }
    log.truncate_to(9).unwrap();
    assert_eq!(log.epoch_entries(), vec![(0, 0), (2, 4)]);
    assert_eq!(log.end_offset_for_epoch(2), (2, 8));
    assert_eq!(log.end_offset_for_epoch(5), (-1, -1));
    log.truncate_to(4).unwrap();
    assert_eq!(log.epoch_entries(), vec![(0, 0)]);
    leader_append(&log, 1, 6, 1);
    assert_eq!(log.epoch_entries(), vec![(0, 0), (6, 4)]);
    let log = reopen(log, small_segments(), false);
    assert_eq!(log.epoch_entries(), vec![(0, 0), (6, 4)]);
}

#[test]
fn open_drops_epochs_past_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path(), LogConfig::default(), false);
        for epoch in [0, 0, 2, 2, 5] {
            leader_append(&log, 2, epoch, 1);
        }
    }
    // A crash left the checkpoint ahead of the log, and the last batch torn.
    std::fs::write(
        dir.path().join(LEADER_EPOCH_FILE),
        "0\n4\n0 0\n2 4\n5 8\n7 10\n",
    )
    .unwrap();
    let segment = dir.path().join(crate::file_name(0, "log"));
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    assert_eq!(log.offsets().log_end_offset, 8);
    assert_eq!(log.epoch_entries(), vec![(0, 0), (2, 4)]);
    let log = reopen(log, LogConfig::default(), true);
    assert_eq!(log.epoch_entries(), vec![(0, 0), (2, 4)]);
}

#[test]
fn truncate_fully_and_start_at_empties_the_log_at_a_new_start() {
    for start in [50, 0, 3] {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), small_segments(), false);
        for i in 0..10 {
            leader_append(&log, 2, 1, i);
        }
        log.update_high_watermark(12);
        log.truncate_fully_and_start_at(start).unwrap();
        let all = LogOffsets {
            log_start_offset: start,
            log_end_offset: start,
            high_watermark: start,
            last_stable_offset: start,
        };
        assert_eq!(log.offsets(), all);
        assert_eq!(log.recovery_point(), start);
        assert_eq!(log.segment_count(), 1);
        assert_eq!(log_files(dir.path()), vec![crate::file_name(start, "log")]);
        assert_eq!(log.epoch_entries(), vec![]);
        assert_eq!(log.end_offset_for_epoch(1), (-1, -1));
        assert!(log
            .read_to_log_end(start, 100, true)
            .unwrap()
            .slice
            .is_none());
        if start > 0 {
            assert!(log.read(start - 1, 100, true).is_err());
        }
        let info = leader_append(&log, 2, 2, 99);
        assert_eq!(info.first_offset, start);
        assert_eq!(info.log_start_offset, start);
        log.update_high_watermark(start + 2);
        assert_eq!(ranges(&committed_batches(&log, start)), vec![(start, 2)]);
        let log = reopen(log, small_segments(), false);
        assert_eq!(
            log.offsets(),
            LogOffsets {
                log_end_offset: start + 2,
                high_watermark: start + 2,
                last_stable_offset: start + 2,
                ..all
            }
        );
        assert_eq!(log.epoch_entries(), vec![(2, start)]);
    }
}

#[test]
fn read_to_log_end_returns_data_above_the_high_watermark_and_read_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(), false);
    for i in 0..6 {
        leader_append(&log, 2, 0, i);
    }
    log.update_high_watermark(4);
    assert_eq!(ranges(&committed_batches(&log, 0)), vec![(0, 2), (2, 2)]);
    assert!(log.read(4, 1 << 20, true).unwrap().slice.is_none());
    assert_eq!(
        ranges(&batches_to_log_end(&log, 4)),
        vec![(4, 2), (6, 2), (8, 2), (10, 2)]
    );
    assert!(log.read_to_log_end(12, 100, true).unwrap().slice.is_none());
    assert!(log.read_to_log_end(13, 100, true).is_err());
}

#[test]
fn reset_high_watermark_moves_it_back_and_update_moves_it_forward_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(), false);
    for i in 0..10 {
        leader_append(&log, 2, 0, i);
    }
    assert_eq!(log.offsets().high_watermark, 0);
    log.update_high_watermark(20);
    assert_eq!(log.offsets().high_watermark, 20);
    log.reset_high_watermark(7);
    assert_eq!(log.offsets().high_watermark, 6, "inside a batch: its base");
    assert_eq!(ranges(&committed_batches(&log, 0)).len(), 3);
    log.update_high_watermark(5);
    assert_eq!(log.offsets().high_watermark, 6, "never back");
    log.update_high_watermark(9);
    assert_eq!(log.offsets().high_watermark, 8);
    log.update_high_watermark(100);
    assert_eq!(log.offsets().high_watermark, 20, "never past the log end");
    assert_eq!(ranges(&committed_batches(&log, 0)).len(), 10);
    log.reset_high_watermark(-5);
    assert_eq!(log.offsets().high_watermark, 0);
    assert!(committed_batches(&log, 0).is_empty());
    log.reset_high_watermark(1_000);
    assert_eq!(log.offsets().high_watermark, 20);

    // Reopened with a checkpointed high watermark, as a broker does.
    let log = reopen(log, small_segments(), true);
    assert_eq!(log.offsets().high_watermark, 20);
    log.reset_high_watermark(10);
    assert_eq!(ranges(&committed_batches(&log, 0)).len(), 5);
    leader_append(&log, 1, 0, 30);
    log.update_high_watermark(21);
    assert_eq!(log.offsets().high_watermark, 21);
    assert_eq!(ranges(&committed_batches(&log, 0)).len(), 11);
}

#[test]
fn the_high_watermark_moves_past_more_batches_than_its_queue_holds() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(), false);
    let batches = ABOVE_HIGH_WATERMARK_ENTRIES_MAX as i64 * 2 + 10;
    for i in 0..batches {
        leader_append(&log, 1, 0, i);
    }
    log.update_high_watermark(5);
    assert_eq!(log.offsets().high_watermark, 5);
    log.update_high_watermark(batches - 3);
    assert_eq!(log.offsets().high_watermark, batches - 3);
    assert_eq!(committed_batches(&log, batches - 4).len(), 1);
    log.update_high_watermark(batches);
    assert_eq!(log.offsets().high_watermark, batches);
    assert_eq!(committed_batches(&log, 0).len(), batches as usize);
}

/// Readers keep reading (records, offsets by timestamp, epochs) while the writer appends,
/// truncates and starts the log over: a view from before a truncation reads less or
/// nothing, never fails with anything but an offset out of range.
#[test]
fn readers_stay_safe_while_the_log_is_truncated_under_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(dir.path(), small_segments(), false));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let o = log.offsets();
                    for offset in [
                        o.log_start_offset,
                        o.high_watermark - 3,
                        o.log_end_offset - 1,
                    ] {
                        for result in [
                            log.read(offset, 400, true),
                            log.read_to_log_end(offset, 400, true),
                        ] {
                            match result {
                                Ok(read) => {
                                    // A slice cut under us just ends early.
                                    let _ = read.slice.map(|slice| slice.read_to_vec());
                                }
                                Err(StorageError::OffsetOutOfRange { .. }) => {}
                                Err(error) => panic!("read at {offset}: {error}"),
                            }
                        }
                    }
                    log.offset_for_timestamp(3).expect("timestamp lookup");
                    log.max_timestamp_offset().expect("max timestamp lookup");
                    let (epoch, _) = log.end_offset_for_epoch(1);
                    assert!(epoch <= 1);
                }
            })
        })
        .collect();
    for round in 0..300i64 {
        for i in 0..5 {
            leader_append(&log, 1 + i % 3, (round / 30) as i32, i as i64);
        }
        let end = log.offsets().log_end_offset;
        log.update_high_watermark(end - 2);
        log.truncate_to(end - 4).unwrap();
        if round % 60 == 59 {
            log.truncate_fully_and_start_at(end + 10).unwrap();
        }
        if round % 7 == 0 {
            log.flush().unwrap();
        }
    }
    stop.store(true, Ordering::Release);
    for reader in readers {
        reader.join().expect("reader thread");
    }
    let o = log.offsets();
    assert_eq!(
        ranges(&batches_to_log_end(&log, o.log_start_offset))
            .last()
            .map_or(o.log_start_offset, |(base, count)| base + count),
        o.log_end_offset
    );
}

/// One step of the model test.
#[derive(Debug, Clone)]
enum Op {
    LeaderAppend {
        count: usize,
        leader_epoch: i32,
    },
    /// Leader-made batches of these record counts, then `partial` bytes of one more.
    FollowerAppend {
        counts: Vec<usize>,
        leader_epoch: i32,
        partial: usize,
    },
    /// Truncate to this fraction (per mille) of the log end, plus a little past it.
    Truncate {
        per_mille: i64,
    },
    TruncateFully {
        past_end: i64,
    },
    UpdateHighWatermark {
        per_mille: i64,
    },
    ResetHighWatermark {
        per_mille: i64,
    },
    Flush,
    Reopen {
        clean: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..5, 0i32..4).prop_map(|(count, leader_epoch)| Op::LeaderAppend { count, leader_epoch }),
        3 => (proptest::collection::vec(1usize..4, 1..4), 0i32..6, 0usize..70).prop_map(
            |(counts, leader_epoch, partial)| Op::FollowerAppend { counts, leader_epoch, partial }
        ),
        2 => (0i64..1100).prop_map(|per_mille| Op::Truncate { per_mille }),
        1 => (0i64..4).prop_map(|past_end| Op::TruncateFully { past_end }),
        2 => (0i64..1100).prop_map(|per_mille| Op::UpdateHighWatermark { per_mille }),
        1 => (0i64..1100).prop_map(|per_mille| Op::ResetHighWatermark { per_mille }),
        1 => Just(Op::Flush),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

/// The log as a list of stored batches.
#[derive(Debug, Default)]
struct Model {
    log_start_offset: i64,
    high_watermark: i64,
    /// (base offset, record count, stored bytes).
    batches: Vec<(i64, i64, Vec<u8>)>,
}

impl Model {
    fn log_end_offset(&self) -> i64 {
        self.batches
            .last()
            .map_or(self.log_start_offset, |(base, count, _)| base + count)
    }

    /// The largest batch boundary at or below `offset`.
    fn boundary(&self, offset: i64) -> i64 {
        self.batches
            .iter()
            .map(|(base, _, _)| *base)
            .chain(std::iter::once(self.log_end_offset()))
            .filter(|&b| b <= offset)
            .max()
            .unwrap_or(self.log_start_offset)
    }

    fn push(&mut self, count: usize, bytes: Vec<u8>) {
        let base = self.log_end_offset();
        self.batches.push((base, count as i64, bytes));
    }

    /// Each epoch newer than all before it starts at its first batch.
    fn epochs(&self) -> Vec<(i32, i64)> {
        let mut out: Vec<(i32, i64)> = Vec::new();
        for (base, _, bytes) in &self.batches {
            let epoch = BatchOffsets::parse(bytes).unwrap().leader_epoch;
            if out.last().is_none_or(|&(latest, _)| epoch > latest) {
                out.push((epoch, *base));
            }
        }
        out
    }

    fn offset_at(&self, per_mille: i64) -> i64 {
        let (start, end) = (self.log_start_offset, self.log_end_offset());
        start + (end - start) * per_mille / 1000
    }
}

fn apply(log: PartitionLog, model: &mut Model, op: &Op, config: &LogConfig) -> PartitionLog {
    match op {
        Op::LeaderAppend {
            count,
            leader_epoch,
        } => {
            let base = model.log_end_offset();
            let info = leader_append(&log, *count, *leader_epoch, base);
            assert_eq!(info.first_offset, base);
            let stored = stamped(producer_batch(*count, base), base, *leader_epoch);
            model.push(*count, stored);
        }
        Op::FollowerAppend {
            counts,
            leader_epoch,
            partial,
        } => {
            let mut records = Vec::new();
            let mut base = model.log_end_offset();
            for (i, &count) in counts.iter().enumerate() {
                let epoch = leader_epoch + i as i32;
                let bytes = stored_batch(count, base, epoch, base);
                records.extend_from_slice(&bytes);
                model.push(count, bytes);
                base += count as i64;
            }
            let extra = stored_batch(1, base, *leader_epoch, base);
            records.extend_from_slice(&extra[..(*partial).min(extra.len() - 1)]);
            let info = log.append_as_follower(&records, NOW_MS).unwrap().unwrap();
            assert_eq!(info.last_offset, base - 1);
        }
        Op::Truncate { per_mille } => {
            let offset = model.offset_at(*per_mille) - 1;
            log.truncate_to(offset).unwrap();
            model
                .batches
                .retain(|(base, count, _)| base + count - 1 < offset);
            model.high_watermark = model.high_watermark.min(model.log_end_offset());
        }
        Op::TruncateFully { past_end } => {
            let offset = model.log_end_offset() + past_end;
            log.truncate_fully_and_start_at(offset).unwrap();
            model.batches.clear();
            model.log_start_offset = offset;
            model.high_watermark = offset;
        }
        Op::UpdateHighWatermark { per_mille } => {
            let offset = model.offset_at(*per_mille);
            log.update_high_watermark(offset);
            let target = model.boundary(offset.min(model.log_end_offset()));
            model.high_watermark = model.high_watermark.max(target);
        }
        Op::ResetHighWatermark { per_mille } => {
            let offset = model.offset_at(*per_mille) - 1;
            log.reset_high_watermark(offset);
            let clamped = offset.clamp(model.log_start_offset, model.log_end_offset());
            model.high_watermark = model.boundary(clamped);
        }
        Op::Flush => {
            assert!(log.flush().unwrap() <= model.log_end_offset());
        }
        Op::Reopen { clean } => {
            let dir = log.dir().to_path_buf();
            let recovery_point = log.recovery_point();
            if *clean {
                log.close().unwrap();
            }
            drop(log);
            model.high_watermark = model.log_end_offset();
            return PartitionLog::open(
                &dir,
                "t",
                0,
                config.clone(),
                recovery_point,
                *clean,
                NOW_MS,
            )
            .unwrap();
        }
    }
    log
}

fn check(log: &PartitionLog, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        log.offsets(),
        LogOffsets {
            log_start_offset: model.log_start_offset,
            log_end_offset: model.log_end_offset(),
            high_watermark: model.high_watermark,
            last_stable_offset: model.high_watermark,
        }
    );
    let expected: Vec<Vec<u8>> = model.batches.iter().map(|(_, _, b)| b.clone()).collect();
    prop_assert_eq!(batches_to_log_end(log, model.log_start_offset), expected);
    let committed = model
        .batches
        .iter()
        .filter(|(base, count, _)| base + count <= model.high_watermark)
        .count();
    prop_assert_eq!(
        committed_batches(log, model.log_start_offset).len(),
        committed
    );
    prop_assert_eq!(log.epoch_entries(), model.epochs());
    prop_assert!(log.recovery_point() <= model.log_end_offset());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Random appends (as leader and as follower), truncations, high watermark moves,
    /// flushes and reopens (clean and crashed) against a list of stored batches: offsets,
    /// bytes read back, committed batches and epoch cache always agree.
    #[test]
    fn a_log_matches_a_model_through_appends_truncations_and_reopens(
        ops in proptest::collection::vec(op(), 1..40),
        segment_bytes in 150u64..1200,
        flush_messages in prop_oneof![Just(i64::MAX), 1i64..8],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes,
            index_interval_bytes: 64,
            flush_messages,
            ..LogConfig::default()
        };
        let mut log = open(dir.path(), config.clone(), false);
        let mut model = Model::default();
        for op in &ops {
            log = apply(log, &mut model, op, &config);
            check(&log, &model)?;
        }
    }
}
