//! Idempotent and transactional producers against the files of a real log: duplicates,
//! sequence and epoch checks, producer state across closes, crashes, truncations and
//! expiry, transaction markers, the last stable offset, the aborted transaction index,
//! read_committed reads and compaction.

use std::path::Path;

use strom_protocol::batch::{testing, validate_produce, BatchOffsets};
use strom_protocol::ResponseError;

use super::test_support::{open_log, ranges, read_batches, reopen_log, replicate, CrashAfter};
use crate::producer_state::{list_snapshots, snapshot_path};
use crate::{
    AbortedTxn, AppendInfo, ControlType, LogConfig, PartitionLog, ProducerSummary, ReadBound,
    StorageError, TxnVerification, VerificationGuard,
};

const NOW_MS: i64 = 1_000_000;

fn open(dir: &Path, config: LogConfig, clean: bool) -> PartitionLog {
    open_log(dir, config, clean, NOW_MS)
}

fn reopen(log: PartitionLog, config: LogConfig, clean: bool) -> PartitionLog {
    reopen_log(log, config, clean, NOW_MS)
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 400,
        index_interval_bytes: 100,
        ..LogConfig::default()
    }
}

/// A producer's batch of `count` records: `producer_id` -1 is a plain producer.
fn producer_batch(producer_id: i64, epoch: i16, sequence: i32, count: usize, txn: bool) -> Vec<u8> {
    let value = [b'p'; 16];
    let values: Vec<&[u8]> = (0..count).map(|_| &value[..]).collect();
    let mut bytes = testing::batch(&values, NOW_MS);
    if producer_id >= 0 {
        testing::set_producer(&mut bytes, producer_id, epoch, sequence, txn);
    }
    bytes
}

fn append_bytes(log: &PartitionLog, bytes: &[u8]) -> Result<AppendInfo, StorageError> {
    let batches = validate_produce(bytes, 1 << 20).expect("valid batch");
    log.append_as_leader(bytes, &batches, 0, NOW_MS)
}

fn append(
    log: &PartitionLog,
    producer_id: i64,
    epoch: i16,
    sequence: i32,
    count: usize,
) -> Result<AppendInfo, StorageError> {
    append_bytes(
        log,
        &producer_batch(producer_id, epoch, sequence, count, false),
    )
}

fn append_txn(
    log: &PartitionLog,
    producer_id: i64,
    epoch: i16,
    sequence: i32,
    count: usize,
) -> AppendInfo {
    append_bytes(
        log,
        &producer_batch(producer_id, epoch, sequence, count, true),
    )
    .expect("transactional append")
}

fn marker(log: &PartitionLog, producer_id: i64, epoch: i16, control: ControlType) -> i64 {
    log.append_control(producer_id, epoch, control, 0, 0, NOW_MS)
        .expect("marker")
        .first_offset
}

/// (base offset, record count) of every batch from the log start to the log end.
fn stored_ranges(log: &PartitionLog) -> Vec<(i64, i64)> {
    let log_start_offset = log.offsets().log_start_offset;
    ranges(&read_batches(log, log_start_offset, ReadBound::LogEnd))
}

fn summary(log: &PartitionLog, producer_id: i64) -> ProducerSummary {
    log.producer_summaries()
        .into_iter()
        .find(|s| s.producer_id == producer_id)
        .expect("producer known")
}

fn code(result: Result<AppendInfo, StorageError>) -> i16 {
    result.expect_err("refused").error_code()
}

#[test]
fn a_retried_batch_is_answered_with_its_original_offsets_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    let first = append(&log, 7, 0, 0, 3).unwrap();
    append(&log, -1, -1, -1, 2).unwrap();
    let second = append(&log, 7, 0, 3, 2).unwrap();
    assert_eq!(
        (first.first_offset, first.last_offset, first.duplicate),
        (0, 2, false)
    );
    assert_eq!((second.first_offset, second.last_offset), (5, 6));
    let before = (log.offsets(), log.size_bytes(), stored_ranges(&log));

    for (retry, original) in [
        (append(&log, 7, 0, 0, 3), first),
        (append(&log, 7, 0, 3, 2), second),
    ] {
        let retry = retry.unwrap();
        assert!(retry.duplicate);
        assert_eq!(
            (retry.first_offset, retry.last_offset),
            (original.first_offset, original.last_offset)
        );
    }
    assert_eq!(
        (log.offsets(), log.size_bytes(), stored_ranges(&log)),
        before
    );
    // Plain producers are never deduplicated.
    assert!(!append(&log, -1, -1, -1, 2).unwrap().duplicate);

    // Only the last five batches are remembered: the first one's retry is now out of order.
    for i in 0..5 {
        append(&log, 7, 0, 5 + i, 1).unwrap();
    }
    assert_eq!(
        code(append(&log, 7, 0, 0, 3)),
        ResponseError::OutOfOrderSequenceNumber.code()
    );
    let last = append(&log, 7, 0, 9, 1).unwrap();
    assert!(last.duplicate);
    assert_eq!(summary(&log, 7).last_sequence, 9);
}

#[test]
fn out_of_order_and_fenced_batches_are_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    // A producer the log does not know may start at any sequence (KIP-360).
    append(&log, 3, 2, 10, 2).unwrap();
    let before = (log.offsets(), log.size_bytes());
    let refused = [
        // A gap in the sequence.
        (
            append(&log, 3, 2, 13, 1),
            ResponseError::OutOfOrderSequenceNumber,
        ),
        // A new epoch that does not start at 0.
        (
            append(&log, 3, 3, 12, 1),
            ResponseError::OutOfOrderSequenceNumber,
        ),
        // An older epoch: a zombie.
        (
            append(&log, 3, 1, 0, 1),
            ResponseError::InvalidProducerEpoch,
        ),
    ];
    for (result, expected) in refused {
        assert_eq!(code(result), expected.code());
        assert_eq!((log.offsets(), log.size_bytes()), before);
    }
    // A request whose second batch fails writes neither, and the first is still new.
    let mut two = producer_batch(3, 2, 12, 1, false);
    two.extend(producer_batch(3, 2, 14, 1, false));
    assert_eq!(
        code(append_bytes(&log, &two)),
        ResponseError::OutOfOrderSequenceNumber.code()
    );
    assert_eq!((log.offsets(), log.size_bytes()), before);
    let next = append(&log, 3, 2, 12, 1).unwrap();
    assert!(!next.duplicate);
    // Two batches of one producer in one request continue each other.
    let mut two = producer_batch(3, 2, 13, 2, false);
    two.extend(producer_batch(3, 2, 15, 1, false));
    append_bytes(&log, &two).unwrap();
    // A new epoch starting at 0 fences the old one.
    append(&log, 3, 3, 0, 1).unwrap();
    assert_eq!(
        code(append(&log, 3, 2, 16, 1)),
        ResponseError::InvalidProducerEpoch.code()
    );
    // Inside a transaction, a non-transactional batch is an invalid state.
    append_txn(&log, 3, 3, 1, 1);
    let before = (log.offsets(), log.size_bytes());
    assert_eq!(
        code(append(&log, 3, 3, 2, 1)),
        ResponseError::InvalidTxnState.code()
    );
    assert_eq!((log.offsets(), log.size_bytes()), before);
    let s = summary(&log, 3);
    assert_eq!(
        (
            s.producer_epoch,
            s.last_sequence,
            s.current_txn_start_offset
        ),
        (3, 1, before.0.log_end_offset - 1)
    );
}

/// Several producers over small segments: rolls write snapshots along the way.
fn write_producers(log: &PartitionLog) {
    for round in 0..6 {
        for producer_id in [11, 12, 13] {
            append(log, producer_id, 0, round * 2, 2).unwrap();
        }
        append(log, -1, -1, -1, 1).unwrap();
    }
}

#[test]
fn producer_state_survives_a_clean_close_and_a_crash() {
    for clean in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), small_segments(), false);
        write_producers(&log);
        assert!(log.segment_count() > 3, "small segments roll");
        let snapshots = list_snapshots(dir.path()).unwrap();
        assert!(snapshots.len() >= 3, "a snapshot per roll: {snapshots:?}");
        let summaries = log.producer_summaries();
        assert_eq!(summaries.len(), 3);
        let end = log.offsets().log_end_offset;

        let log = reopen(log, small_segments(), clean);
        assert_eq!(log.producer_summaries(), summaries, "clean: {clean}");
        if clean {
            assert!(list_snapshots(dir.path()).unwrap().contains(&end));
        }
        // The last batch of each producer is still a duplicate (a snapshot keeps one).
        let retry = append(&log, 12, 0, 10, 2).unwrap();
        assert!(retry.duplicate, "clean: {clean}");
        assert_eq!(
            code(append(&log, 13, 0, 13, 1)),
            ResponseError::OutOfOrderSequenceNumber.code()
        );
        append(&log, 13, 0, 12, 1).unwrap();
    }
}

#[test]
fn crash_recovery_starts_from_the_snapshot_below_the_recovered_segments() {
    use crate::producer_state::{
        read_snapshot, Origin, PendingUpdate, ProducerBatch, ProducerStateManager, TxnVerification,
    };
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(), false);
    write_producers(&log);
    let recovery_point = log.flush().unwrap();
    for i in 0..4 {
        append(&log, 14, 0, i, 1).unwrap();
    }
    let summaries = log.producer_summaries();
    let bases: Vec<i64> = log
        .view
        .read()
        .segments
        .iter()
        .map(|s| s.base_offset())
        .collect();
    drop(log);
    // Recovery re-reads the segments from the one holding the recovery point: the
    // snapshot at or below it is loaded and only what follows is replayed. A producer
    // planted in that snapshot shows it was read.
    let first_recovered = *bases.iter().rfind(|&&b| b <= recovery_point).unwrap();
    let snapshot = *list_snapshots(dir.path())
        .unwrap()
        .iter()
        .rfind(|&&o| o <= first_recovered)
        .unwrap();
    assert!(snapshot > 0, "the recovery point is past the first roll");
    let path = snapshot_path(dir.path(), snapshot);
    let mut planted = ProducerStateManager::default();
    planted.load(read_snapshot(&path).unwrap(), |_| {
        unreachable!("no transaction")
    });
    let mut pending = PendingUpdate::default();
    let batch = ProducerBatch {
        producer_id: 777,
        producer_epoch: 4,
        base_sequence: 0,
        base_offset: 0,
        last_offset_delta: 0,
        max_timestamp: NOW_MS,
        is_transactional: false,
    };
    let at = super::FilePosition {
        segment_base: 0,
        bytes: 0,
    };
    planted
        .prepare_batch(
            &mut pending,
            &batch,
            at,
            Origin::Replication,
            TxnVerification::Off,
        )
        .unwrap();
    planted.commit(&mut pending);
    planted.write_snapshot(dir.path(), snapshot, true).unwrap();

    let log = PartitionLog::open(
        dir.path(),
        "t",
        0,
        small_segments(),
        recovery_point,
        false,
        NOW_MS,
    )
    .unwrap();
    let mut reloaded = log.producer_summaries();
    let planted = reloaded
        .iter()
        .position(|s| s.producer_id == 777)
        .expect("read from the snapshot");
    reloaded.remove(planted);
    assert_eq!(reloaded, summaries);
}

#[test]
fn a_corrupt_snapshot_is_deleted_and_an_older_one_or_the_log_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(), false);
    write_producers(&log);
    let summaries = log.producer_summaries();
    let recovery_point = log.flush().unwrap();
    drop(log);
    let open_at = || {
        PartitionLog::open(
            dir.path(),
            "t",
            0,
            small_segments(),
            recovery_point,
            false,
            NOW_MS,
        )
        .unwrap()
    };
    let snapshots = list_snapshots(dir.path()).unwrap();
    let newest = *snapshots.last().unwrap();
    let path = snapshot_path(dir.path(), newest);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let log = open_at();
    assert_eq!(log.producer_summaries(), summaries);
    assert!(!path.exists(), "the corrupt snapshot is gone");
    drop(log);
    // Every snapshot unreadable: the whole log is replayed.
    for offset in list_snapshots(dir.path()).unwrap() {
        std::fs::write(snapshot_path(dir.path(), offset), b"junk").unwrap();
    }
    let log = open_at();
    assert_eq!(log.producer_summaries(), summaries);
    assert!(list_snapshots(dir.path()).unwrap().is_empty());
}

#[test]
fn truncation_reloads_the_producer_state_of_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(), false);
    let mut ends = Vec::new();
    for i in 0..12 {
        append(&log, 21, 0, i * 3, 3).unwrap();
        ends.push(log.offsets().log_end_offset);
    }
    // Cut after the 5th batch (sequences 0..=14 stay).
    log.truncate_to(ends[4]).unwrap();
    assert_eq!(log.offsets().log_end_offset, ends[4]);
    assert_eq!(summary(&log, 21).last_sequence, 14);
    assert!(list_snapshots(dir.path())
        .unwrap()
        .iter()
        .all(|&o| o <= ends[4]));
    // The producer continues from what is left, and a batch cut away is no duplicate.
    assert_eq!(
        code(append(&log, 21, 0, 18, 3)),
        ResponseError::OutOfOrderSequenceNumber.code()
    );
    assert!(!append(&log, 21, 0, 15, 3).unwrap().duplicate);
    // A crash now replays the same.
    let log = reopen(log, small_segments(), false);
    assert_eq!(summary(&log, 21).last_sequence, 17);
    // Starting over forgets every producer and snapshot.
    log.truncate_fully_and_start_at(500).unwrap();
    assert!(log.producer_summaries().is_empty());
    assert!(list_snapshots(dir.path()).unwrap().is_empty());
    let log = reopen(log, small_segments(), true);
    assert!(log.producer_summaries().is_empty());
}

#[test]
fn retention_drops_the_producers_and_snapshots_of_deleted_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(), false);
    for i in 0..6 {
        append(&log, 31, 0, i, 1).unwrap();
    }
    for i in 0..20 {
        append(&log, 32, 0, i, 1).unwrap();
    }
    log.update_high_watermark(i64::MAX);
    let segments_before = log.segment_count();
    let target = log.offsets().log_end_offset - 2;
    log.increment_log_start_offset(target).unwrap();
    assert!(log.segment_count() < segments_before);
    // Producer 31's last batch is below the log start: it goes (Kafka's truncateHead).
    let ids: Vec<i64> = log
        .producer_summaries()
        .iter()
        .map(|s| s.producer_id)
        .collect();
    assert_eq!(ids, vec![32]);
    let snapshots = list_snapshots(dir.path()).unwrap();
    let first_base = crate::file_name(0, "log");
    assert!(!dir.path().join(first_base).exists());
    let start_segment = log.view.read().segments[0].base_offset();
    assert!(
        snapshots[..snapshots.len() - 1]
            .iter()
            .all(|&o| o >= start_segment),
        "{snapshots:?} below {start_segment}"
    );
}

#[test]
fn expired_producers_go_unless_their_transaction_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    append(&log, 1, 0, 0, 1).unwrap();
    append_txn(&log, 2, 0, 0, 1);
    // Batches are timestamped NOW_MS.
    assert_eq!(log.remove_expired_producers(NOW_MS + 999, 1_000), 0);
    assert_eq!(log.remove_expired_producers(NOW_MS + 1_000, 1_000), 1);
    let ids: Vec<i64> = log
        .producer_summaries()
        .iter()
        .map(|s| s.producer_id)
        .collect();
    assert_eq!(ids, vec![2]);
    // Once its transaction ends it expires too (the marker is timestamped NOW_MS).
    marker(&log, 2, 0, ControlType::Commit);
    assert_eq!(log.remove_expired_producers(NOW_MS + 1_000, 1_000), 1);
    assert!(log.producer_summaries().is_empty());
    // An expired producer may start over at any sequence.
    append(&log, 1, 0, 57, 1).unwrap();
}

#[test]
fn a_follower_replicates_producer_state_without_refusing_anything() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = open(leader_dir.path(), small_segments(), false);
    write_producers(&leader);
    append_txn(&leader, 41, 0, 0, 2);
    let follower = open(follower_dir.path(), small_segments(), false);
    // A follower's state may be behind the leader's in odd ways: a batch the leader
    // accepted is never refused.
    replicate(&leader, &follower, 300, NOW_MS);
    assert_eq!(follower.producer_summaries(), leader.producer_summaries());
    let follower = reopen(follower, small_segments(), false);
    assert_eq!(follower.producer_summaries(), leader.producer_summaries());
}

/// The ranges of the batches a read_committed reader gets from `offset` on.
fn committed_ranges(log: &PartitionLog, offset: i64) -> Vec<(i64, i64)> {
    ranges(&read_batches(log, offset, ReadBound::LastStable))
}

/// The last stable offset, checked against what read_committed returns: everything below
/// it and nothing at or past it.
fn last_stable(log: &PartitionLog) -> i64 {
    let offsets = log.offsets();
    let lso = offsets.last_stable_offset;
    assert!(lso <= offsets.high_watermark, "{offsets:?}");
    assert!(lso >= offsets.log_start_offset, "{offsets:?}");
    let read = committed_ranges(log, offsets.log_start_offset);
    let end = read
        .last()
        .map_or(offsets.log_start_offset, |&(base, count)| base + count);
    assert_eq!(end, lso, "read_committed stops at the last stable offset");
    assert_eq!(
        log.read_up_to(lso, 1 << 20, true, ReadBound::LastStable)
            .unwrap()
            .offsets,
        offsets
    );
    lso
}

#[test]
fn the_last_stable_offset_follows_transactions_markers_and_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    append(&log, -1, -1, -1, 2).unwrap(); // 0..=1
    append_txn(&log, 1, 0, 0, 2); // 2..=3: transaction A of producer 1
    append(&log, -1, -1, -1, 1).unwrap(); // 4
    append_txn(&log, 2, 0, 0, 2); // 5..=6: transaction B of producer 2
                                  // Nothing committed yet.
    assert_eq!(last_stable(&log), 0);
    log.update_high_watermark(4);
    assert_eq!(last_stable(&log), 2, "stops at A's first offset");
    log.update_high_watermark(i64::MAX);
    assert_eq!(last_stable(&log), 2);
    let commit_a = marker(&log, 1, 0, ControlType::Commit);
    assert_eq!(commit_a, 7);
    assert_eq!(last_stable(&log), 2, "A's marker is not replicated yet");
    log.update_high_watermark(8);
    assert_eq!(last_stable(&log), 5, "A is stable; B is open");
    append_txn(&log, 1, 0, 2, 1); // 8: transaction C of producer 1
    let abort_b = marker(&log, 2, 0, ControlType::Abort); // 9
    log.update_high_watermark(i64::MAX);
    assert_eq!(last_stable(&log), 8, "B is decided; C is open");
    assert_eq!(
        log.aborted_transactions(0, 10),
        vec![AbortedTxn {
            producer_id: 2,
            first_offset: 5
        }]
    );

    // Reopened, the open transaction still bounds reads (after a crash once the
    // checkpointed high watermark is given back, as the broker does).
    for clean in [true, false] {
        let dir = log.dir().to_path_buf();
        if clean {
            log.close().unwrap();
        }
        let reopened = open(&dir, LogConfig::default(), clean);
        reopened.reset_high_watermark(10);
        assert_eq!(last_stable(&reopened), 8, "clean: {clean}");
        assert_eq!(reopened.aborted_transactions(0, 10).len(), 1);
        if !clean {
            marker(&reopened, 1, 0, ControlType::Commit); // 10
            assert_eq!(last_stable(&reopened), 8);
            reopened.update_high_watermark(11);
            assert_eq!(last_stable(&reopened), 11);
            // The high watermark moving back takes the last stable offset with it.
            reopened.reset_high_watermark(6);
            assert_eq!(last_stable(&reopened), 5);
        }
    }
    let _ = abort_b;
}

#[test]
fn markers_from_fenced_coordinators_or_older_producer_epochs_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    append_txn(&log, 5, 2, 0, 1);
    log.append_control(5, 2, ControlType::Commit, 7, 0, NOW_MS)
        .unwrap();
    append_txn(&log, 5, 2, 1, 1);
    let before = (log.offsets(), log.size_bytes());
    let refused = [
        (
            log.append_control(5, 2, ControlType::Abort, 6, 0, NOW_MS),
            ResponseError::TransactionCoordinatorFenced,
        ),
        (
            log.append_control(5, 1, ControlType::Abort, 7, 0, NOW_MS),
            ResponseError::InvalidProducerEpoch,
        ),
    ];
    for (result, expected) in refused {
        assert_eq!(code(result), expected.code());
        assert_eq!((log.offsets(), log.size_bytes()), before);
    }
    assert_eq!(summary(&log, 5).current_txn_start_offset, 2);
    // A marker with a bumped epoch (the coordinator fencing the producer) ends the
    // transaction and fences the old epoch's batches.
    let abort = log
        .append_control(5, 3, ControlType::Abort, 7, 0, NOW_MS)
        .unwrap();
    assert_eq!(abort.first_offset, 3);
    let s = summary(&log, 5);
    assert_eq!(
        (
            s.producer_epoch,
            s.coordinator_epoch,
            s.current_txn_start_offset
        ),
        (3, 7, -1)
    );
    assert_eq!(
        code(append(&log, 5, 2, 2, 1)),
        ResponseError::InvalidProducerEpoch.code()
    );
    // A marker for a producer without a transaction is written and completes nothing.
    let lone = log
        .append_control(9, 0, ControlType::Abort, 0, 0, NOW_MS)
        .unwrap();
    assert_eq!(lone.first_offset, 4);
    log.update_high_watermark(i64::MAX);
    assert_eq!(last_stable(&log), 5);
    assert_eq!(
        log.aborted_transactions(0, 5),
        vec![AbortedTxn {
            producer_id: 5,
            first_offset: 2
        }]
    );
}

/// Three producers' transactions over small segments: producer 1 aborts, producer 2
/// commits, producer 3 aborts, interleaved with plain batches. Returns the marker offsets
/// (abort 1, commit 2, abort 3).
fn interleaved_transactions(log: &PartitionLog) -> (i64, i64, i64) {
    append_txn(log, 1, 0, 0, 2);
    append(log, -1, -1, -1, 3).unwrap();
    append_txn(log, 2, 0, 0, 2);
    append_txn(log, 1, 0, 2, 2);
    append(log, -1, -1, -1, 3).unwrap();
    let abort_1 = marker(log, 1, 0, ControlType::Abort);
    for _ in 0..4 {
        append(log, -1, -1, -1, 3).unwrap();
    }
    append_txn(log, 2, 0, 2, 1);
    let commit_2 = marker(log, 2, 0, ControlType::Commit);
    append_txn(log, 3, 0, 0, 2);
    for _ in 0..4 {
        append(log, -1, -1, -1, 3).unwrap();
    }
    let abort_3 = marker(log, 3, 0, ControlType::Abort);
    append(log, -1, -1, -1, 3).unwrap();
    log.update_high_watermark(i64::MAX);
    (abort_1, commit_2, abort_3)
}

#[test]
fn aborted_transactions_are_indexed_with_their_markers_and_found_like_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(), false);
    let (abort_1, commit_2, abort_3) = interleaved_transactions(&log);
    assert!(log.segment_count() > 3);
    let end = log.offsets().log_end_offset;
    let first_3 = summary(&log, 3);
    assert_eq!(first_3.current_txn_start_offset, -1);
    let txn = |producer_id, first_offset| AbortedTxn {
        producer_id,
        first_offset,
    };
    let p3_first = commit_2 + 1;
    let expected = [
        ((0, end), vec![txn(1, 0), txn(3, p3_first)]),
        // Only what overlaps [fetch, upper) is returned.
        ((abort_1 + 1, end), vec![txn(3, p3_first)]),
        ((0, abort_1), vec![txn(1, 0)]),
        ((0, 1), vec![txn(1, 0)]),
        ((abort_1, p3_first), vec![txn(1, 0)]),
        ((abort_1 + 1, p3_first + 1), vec![txn(3, p3_first)]),
        ((abort_3 + 1, end), vec![]),
    ];
    let check = |log: &PartitionLog, when: &str| {
        for ((fetch, upper), aborted) in &expected {
            assert_eq!(
                &log.aborted_transactions(*fetch, *upper),
                aborted,
                "[{fetch}, {upper}) {when}"
            );
        }
    };
    check(&log, "after the appends");
    // The index is in the segment of each ABORT marker.
    log.flush().unwrap();
    let txn_files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".txnindex"))
        .collect();
    assert_eq!(txn_files.len(), 2, "{txn_files:?}");
    let segments = log.view.read().segments.clone();
    for marker_offset in [abort_1, abort_3] {
        let holding = segments
            .iter()
            .rfind(|s| s.base_offset() <= marker_offset)
            .unwrap();
        assert!(holding.txn_index_path().exists());
    }
    let log = reopen(log, small_segments(), true);
    check(&log, "after a clean close");
    // A crash re-reads every segment (recovery point 0) and rebuilds the indexes, even
    // ones whose file is gone.
    for name in &txn_files {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let log = reopen(log, small_segments(), false);
    check(&log, "after a crash");
    log.flush().unwrap();
    assert!(txn_files.iter().all(|n| dir.path().join(n).exists()));
}

#[test]
fn truncation_removes_the_aborted_transactions_whose_markers_go() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(), false);
    let (abort_1, _, abort_3) = interleaved_transactions(&log);
    let end = log.offsets().log_end_offset;
    log.truncate_to(abort_3).unwrap();
    assert_eq!(
        log.aborted_transactions(0, end),
        vec![AbortedTxn {
            producer_id: 1,
            first_offset: 0
        }]
    );
    // Producer 3's transaction is open again: the marker went with the tail.
    assert!(summary(&log, 3).current_txn_start_offset >= 0);
    log.update_high_watermark(i64::MAX);
    assert_eq!(last_stable(&log), summary(&log, 3).current_txn_start_offset);
    log.truncate_to(abort_1).unwrap();
    assert!(log.aborted_transactions(0, end).is_empty());
    assert_eq!(summary(&log, 1).current_txn_start_offset, 0);
    log.update_high_watermark(i64::MAX);
    assert_eq!(last_stable(&log), 0);
    let log = reopen(log, small_segments(), false);
    log.reset_high_watermark(i64::MAX);
    assert!(log.aborted_transactions(0, end).is_empty());
    assert_eq!(last_stable(&log), 0);
}

#[test]
fn a_follower_gets_the_leaders_markers_aborted_transactions_and_last_stable_offset() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = open(leader_dir.path(), small_segments(), false);
    interleaved_transactions(&leader);
    append_txn(&leader, 4, 0, 0, 1);
    let follower = open(follower_dir.path(), small_segments(), false);
    replicate(&leader, &follower, 250, NOW_MS);
    let end = leader.offsets().log_end_offset;
    follower.update_high_watermark(leader.offsets().high_watermark);
    leader.update_high_watermark(end);
    follower.update_high_watermark(end);
    assert_eq!(follower.producer_summaries(), leader.producer_summaries());
    assert_eq!(
        follower.aborted_transactions(0, end),
        leader.aborted_transactions(0, end)
    );
    assert_eq!(follower.offsets(), leader.offsets());
    assert_eq!(
        last_stable(&follower),
        summary(&leader, 4).current_txn_start_offset
    );
}

#[test]
fn retention_deletes_the_transaction_index_with_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(), false);
    let (abort_1, _, abort_3) = interleaved_transactions(&log);
    log.flush().unwrap();
    let holding = |offset: i64| {
        log.view
            .read()
            .segments
            .iter()
            .rfind(|s| s.base_offset() <= offset)
            .unwrap()
            .clone()
    };
    let (first, third) = (holding(abort_1), holding(abort_3));
    assert!(first.txn_index_path().exists());
    log.increment_log_start_offset(abort_1 + 1).unwrap();
    assert!(!first.txn_index_path().exists());
    assert!(third.txn_index_path().exists());
    let end = log.offsets().log_end_offset;
    assert_eq!(log.aborted_transactions(abort_1 + 1, end).len(), 1);
}

/// A keyed batch of one record (`producer_id` -1: a plain producer).
fn keyed(key: &str, value: &str, producer: Option<(i64, i32, bool)>) -> Vec<u8> {
    use strom_protocol::batch::Compression;
    use strom_protocol::records::testing::batch;
    let mut bytes = batch(
        0,
        &[(Some(key.as_bytes()), Some(value.as_bytes()), NOW_MS)],
        Compression::None,
    );
    if let Some((producer_id, sequence, txn)) = producer {
        testing::set_producer(&mut bytes, producer_id, 0, sequence, txn);
    }
    bytes
}

/// Every batch from the log start to the log end: (base offset, header, the records'
/// (key, value)).
type StoredBatch = (
    i64,
    strom_protocol::records::BatchHeader,
    Vec<(String, String)>,
);

fn stored_batches(log: &PartitionLog) -> Vec<StoredBatch> {
    use strom_protocol::records::{BatchHeader, RecordReader};
    let mut out = Vec::new();
    let mut offset = log.offsets().log_start_offset;
    while let Some(slice) = log.read_to_log_end(offset, 1 << 20, true).unwrap().slice {
        let bytes = slice.read_to_vec().unwrap();
        let mut at = 0;
        while let Some(b) = BatchOffsets::parse(&bytes[at..]) {
            if at + b.size_bytes > bytes.len() {
                break;
            }
            let batch = &bytes[at..at + b.size_bytes];
            let header = BatchHeader::parse(batch).unwrap();
            let mut records = Vec::new();
            let mut reader = RecordReader::new(batch, 1 << 20).unwrap();
            while let Some(r) = reader.next_record().unwrap() {
                let text =
                    |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or(b"")).into_owned();
                records.push((text(r.key), text(r.value)));
            }
            out.push((b.base_offset, header, records));
            offset = b.last_offset() + 1;
            at += b.size_bytes;
        }
    }
    out
}

#[test]
fn compaction_keeps_markers_producers_last_batches_and_drops_aborted_records() {
    use crate::cleaner::{CompactionConfig, OffsetMap, OFFSET_MAP_LOAD_FACTOR};
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(), false);
    let put = |bytes: Vec<u8>| append_bytes(&log, &bytes).unwrap().first_offset;
    let idempotent = put(keyed("k0", "idempotent", Some((1, 0, false))));
    put(keyed("k1", "txn-2", Some((2, 0, true))));
    let commit_2 = marker(&log, 2, 0, ControlType::Commit);
    put(keyed("k2", "txn-3", Some((3, 0, true))));
    let commit_3 = marker(&log, 3, 0, ControlType::Commit);
    put(keyed("k3", "plain", None));
    let aborted = put(keyed("k3", "aborted", Some((4, 0, true))));
    let abort_4 = marker(&log, 4, 0, ControlType::Abort);
    let open_txn = put(keyed("k5", "open", Some((5, 0, true))));
    for round in 0..8 {
        for key in ["k0", "k1", "k2", "k4"] {
            put(keyed(key, &format!("plain-{round}"), None));
        }
    }
    log.update_high_watermark(i64::MAX);
    let config = CompactionConfig {
        min_cleanable_dirty_ratio: 0.0,
        ..CompactionConfig::default()
    };
    let mut map = OffsetMap::new(1 << 20, OFFSET_MAP_LOAD_FACTOR);
    let hw = log.offsets().high_watermark;
    // Producer 5's open transaction bounds what may be cleaned.
    let cleanable = log.cleanable(&config, hw, NOW_MS).unwrap();
    assert!(
        cleanable.first_uncleanable_offset <= open_txn,
        "{cleanable:?}"
    );
    marker(&log, 5, 0, ControlType::Commit);
    for key in ["k0", "k1", "k2", "k4"] {
        put(keyed(key, "last", None));
    }
    log.update_high_watermark(i64::MAX);
    let end = log.offsets().log_end_offset;
    let aborted_before = log.aborted_transactions(0, end);
    assert_eq!(aborted_before.len(), 1);

    let cleanable = log.cleanable(&config, end, NOW_MS).unwrap();
    assert!(
        cleanable.first_uncleanable_offset > abort_4,
        "{cleanable:?}"
    );
    log.clean(&mut map, &config, &cleanable, NOW_MS, &mut ())
        .unwrap();

    let check = |log: &PartitionLog, when: &str| {
        let batches = stored_batches(log);
        let at = |offset: i64| {
            batches
                .iter()
                .find(|(base, _, _)| *base == offset)
                .unwrap_or_else(|| panic!("no batch at {offset} {when}"))
        };
        // Every marker stays whole, the two COMMITs with the same key included.
        for offset in [commit_2, commit_3, abort_4] {
            let (_, header, records) = at(offset);
            assert!(header.is_control(), "{when}");
            assert_eq!(records.len(), 1, "{when}");
        }
        // Superseded records go, but each producer's last batch stays, empty.
        let (_, header, records) = at(idempotent);
        assert_eq!((header.producer_id, header.base_sequence), (1, 0), "{when}");
        assert!(records.is_empty(), "{when}");
        // The aborted write supersedes nothing: the plain k3 stays. The aborted record
        // goes; its batch stays empty as its producer's last, and with it the marker and
        // the aborted-index entry.
        let k3: Vec<&str> = batches
            .iter()
            .flat_map(|(_, _, r)| r.iter())
            .filter(|(k, _)| k == "k3")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(k3, ["plain"], "{when}");
        let (_, header, records) = at(aborted);
        assert!(header.is_transactional() && records.is_empty(), "{when}");
        assert_eq!(log.aborted_transactions(0, end), aborted_before, "{when}");
        assert!(
            log.aborted_transactions(aborted, aborted + 1).len() == 1,
            "{when}"
        );
        // Deduplication survives cleaning.
        let retry = append_bytes(log, &keyed("k0", "idempotent", Some((1, 0, false)))).unwrap();
        assert!(retry.duplicate, "{when}");
        assert_eq!(retry.first_offset, idempotent, "{when}");
    };
    assert!(log.segment_count() < 20);
    check(&log, "after cleaning");
    let log = reopen(log, small_segments(), true);
    check(&log, "after a clean close");
    let log = reopen(log, small_segments(), false);
    check(&log, "after a crash");
}

#[test]
fn a_crash_at_any_step_of_a_swap_keeps_the_transaction_index_of_trusted_segments() {
    use crate::cleaner::{CompactionConfig, OffsetMap, SwapStep};
    let steps = [
        SwapStep::Written,
        SwapStep::IndexesSwapped,
        SwapStep::LogSwapped,
        SwapStep::OldDeleted,
        SwapStep::LogRenamed,
        SwapStep::IndexesRenamed,
    ];
    let config = CompactionConfig {
        min_cleanable_dirty_ratio: 0.0,
        ..CompactionConfig::default()
    };
    for step in steps {
        for countdown in 0..2 {
            let dir = tempfile::tempdir().unwrap();
            let log = open(dir.path(), small_segments(), false);
            interleaved_transactions(&log);
            let end = log.offsets().log_end_offset;
            let aborted = log.aborted_transactions(0, end);
            assert_eq!(aborted.len(), 2);
            // Everything but the active segment is flushed, so a reopen trusts the
            // transaction index files rather than rebuilding them.
            let recovery_point = log.flush().unwrap();
            let cleanable = log.cleanable(&config, end, NOW_MS).unwrap();
            let mut crash = CrashAfter { step, countdown };
            let mut map = OffsetMap::new(1 << 20, 0.9);
            let result = log.clean(&mut map, &config, &cleanable, NOW_MS, &mut crash);
            if let Err(e) = &result {
                assert!(e.to_string().contains("simulated crash"), "{e}");
            }
            drop(log);
            let log = PartitionLog::open(
                dir.path(),
                "t",
                0,
                small_segments(),
                recovery_point,
                false,
                NOW_MS,
            )
            .unwrap();
            assert_eq!(
                log.aborted_transactions(0, end),
                aborted,
                "{step:?} {countdown}"
            );
            let leftovers: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap"))
                .collect();
            assert!(leftovers.is_empty(), "{step:?}: {leftovers:?}");
        }
    }
}

#[test]
fn coordinator_writes_check_only_the_producer_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    // Transactional offset commits carry the producer's id and epoch but no sequence.
    let commit = |epoch| {
        let bytes = producer_batch(8, epoch, -1, 1, true);
        let batches = validate_produce(&bytes, 1 << 20).unwrap();
        log.append_as_coordinator(&bytes, &batches, 0, NOW_MS)
    };
    let first = commit(1).unwrap();
    let second = commit(1).unwrap();
    assert!(!second.duplicate);
    assert_eq!(second.first_offset, first.first_offset + 1);
    assert_eq!(code(commit(0)), ResponseError::InvalidProducerEpoch.code());
    assert_eq!(
        summary(&log, 8).current_txn_start_offset,
        first.first_offset
    );
    marker(&log, 8, 1, ControlType::Commit);
    assert_eq!(summary(&log, 8).current_txn_start_offset, -1);
}

#[test]
fn compaction_removes_aborted_records_then_markers_past_their_delete_horizon() {
    use crate::cleaner::{CompactionConfig, OffsetMap, OFFSET_MAP_LOAD_FACTOR};
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(), false);
    let put = |log: &PartitionLog, bytes: Vec<u8>| append_bytes(log, &bytes).unwrap().first_offset;
    let config = CompactionConfig {
        min_cleanable_dirty_ratio: 0.0,
        ..CompactionConfig::default()
    };
    let mut map = OffsetMap::new(1 << 20, OFFSET_MAP_LOAD_FACTOR);
    // New records to clean (a cleaning needs some), then a cleaning at `now_ms`.
    let mut fill = 0;
    let mut clean = |log: &PartitionLog, now_ms: i64| {
        for _ in 0..8 {
            put(
                log,
                keyed(&format!("f{}", fill % 4), &format!("{fill}"), None),
            );
            fill += 1;
        }
        log.update_high_watermark(i64::MAX);
        let end = log.offsets().log_end_offset;
        let cleanable = log.cleanable(&config, end, now_ms).unwrap();
        log.clean(&mut map, &config, &cleanable, now_ms, &mut ())
            .unwrap();
    };
    // Producer 6: x committed, then overwritten by an aborted transaction, then committed
    // again. Producer 7: y committed, then fenced by its coordinator (an abort marker of
    // the next epoch, with no transaction behind it).
    let first = put(&log, keyed("x", "v1", Some((6, 0, true))));
    let commit_1 = marker(&log, 6, 0, ControlType::Commit);
    let aborted = put(&log, keyed("x", "v2-aborted", Some((6, 1, true))));
    let abort_2 = marker(&log, 6, 0, ControlType::Abort);
    let last = put(&log, keyed("x", "v3", Some((6, 2, true))));
    let commit_3 = marker(&log, 6, 0, ControlType::Commit);
    put(&log, keyed("y", "w", Some((7, 0, true))));
    let commit_y = marker(&log, 7, 0, ControlType::Commit);
    let fence_7 = marker(&log, 7, 1, ControlType::Abort);
    put(&log, keyed("y", "plain", None));

    let markers = |log: &PartitionLog| -> Vec<(i64, Option<i64>)> {
        stored_batches(log)
            .into_iter()
            .filter(|(_, h, _)| h.is_control())
            .map(|(base, h, _)| (base, h.delete_horizon_ms()))
            .collect()
    };
    let values = |log: &PartitionLog, key: &str| -> Vec<String> {
        stored_batches(log)
            .into_iter()
            .flat_map(|(_, _, r)| r)
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect()
    };

    // First cleaning: the superseded and the aborted records go. Each marker stays, for a
    // batch of its transaction was still there to read.
    clean(&log, NOW_MS);
    assert_eq!(values(&log, "x"), ["v3"]);
    assert_eq!(values(&log, "y"), ["plain"]);
    let offsets: Vec<i64> = stored_batches(&log).iter().map(|(b, _, _)| *b).collect();
    assert!(
        !offsets.contains(&first) && !offsets.contains(&aborted),
        "{offsets:?}"
    );
    assert!(offsets.contains(&last));
    assert_eq!(
        markers(&log),
        [
            (commit_1, None),
            (abort_2, None),
            (commit_3, None),
            (commit_y, None),
            (fence_7, None)
        ]
    );
    let end = log.offsets().log_end_offset;
    assert_eq!(log.aborted_transactions(0, end).len(), 1);

    // Second: markers with nothing left of their transaction get a delete horizon, and the
    // emptied aborted transaction leaves the index. The marker producer 7's state comes
    // from (its epoch) stays as it is, as does the one of x's last transaction.
    clean(&log, NOW_MS + 1);
    let horizon = Some(NOW_MS + 1 + config.delete_retention_ms);
    assert_eq!(
        markers(&log),
        [
            (commit_1, horizon),
            (abort_2, horizon),
            (commit_3, None),
            (commit_y, horizon),
            (fence_7, None)
        ]
    );
    let end = log.offsets().log_end_offset;
    assert!(log.aborted_transactions(0, end).is_empty());

    // Past the horizon they go.
    clean(&log, NOW_MS + 2 + config.delete_retention_ms);
    assert_eq!(markers(&log), [(commit_3, None), (fence_7, None)]);

    let check = |log: &PartitionLog, when: &str| {
        assert_eq!(values(log, "x"), ["v3"], "{when}");
        assert_eq!(last_stable(log), log.offsets().high_watermark, "{when}");
        assert_eq!(summary(log, 6).current_txn_start_offset, -1, "{when}");
        assert_eq!(summary(log, 7).producer_epoch, 1, "{when}");
        // Producer 6's last batch still answers its retry.
        let retry = append_bytes(log, &keyed("x", "v3", Some((6, 2, true)))).unwrap();
        assert_eq!(
            (retry.duplicate, retry.first_offset),
            (true, last),
            "{when}"
        );
    };
    check(&log, "after cleaning");
    let log = reopen(log, small_segments(), false);
    log.reset_high_watermark(log.offsets().log_end_offset);
    check(&log, "after a crash");
}

/// A leader append with transaction verification on (KIP-890 part 1).
fn append_verified(
    log: &PartitionLog,
    bytes: &[u8],
    guard: Option<VerificationGuard>,
) -> Result<AppendInfo, StorageError> {
    let batches = validate_produce(bytes, 1 << 20).expect("valid batch");
    log.append_as_leader_verified(bytes, &batches, 0, NOW_MS, TxnVerification::Guard(guard))
}

#[test]
fn a_transaction_starts_only_with_the_guard_of_its_verification() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    let txn = |sequence| producer_batch(7, 0, sequence, 2, true);

    // Unverified: refused, nothing written, no transaction opened.
    assert_eq!(
        code(append_verified(&log, &txn(0), None)),
        ResponseError::InvalidTxnState.code()
    );
    assert_eq!(log.offsets().log_end_offset, 0);
    assert!(log.producer_summaries().is_empty());

    // A guard the log never handed out does not pass either.
    let guard = log
        .start_transaction_verification(7, 0, NOW_MS)
        .expect("guard");
    assert_eq!(
        log.start_transaction_verification(7, 0, NOW_MS),
        Some(guard),
        "a pending verification keeps its guard"
    );
    let other = log
        .start_transaction_verification(8, 0, NOW_MS)
        .expect("guard");
    assert_ne!(other, guard);
    assert_eq!(
        code(append_verified(&log, &txn(0), Some(other))),
        ResponseError::InvalidTxnState.code()
    );

    // Verified: the transaction starts; later batches of it need no guard.
    assert_eq!(
        append_verified(&log, &txn(0), Some(guard))
            .unwrap()
            .first_offset,
        0
    );
    assert_eq!(log.start_transaction_verification(7, 0, NOW_MS), None);
    assert_eq!(
        append_verified(&log, &txn(2), None).unwrap().first_offset,
        2
    );
    assert_eq!(summary(&log, 7).current_txn_start_offset, 0);

    // After the marker, the used guard no longer opens a transaction: a late batch of the
    // ended transaction is refused and cannot leave one hanging.
    marker(&log, 7, 0, ControlType::Abort);
    log.update_high_watermark(i64::MAX);
    let end = log.offsets().log_end_offset;
    assert_eq!(
        code(append_verified(&log, &txn(4), Some(guard))),
        ResponseError::InvalidTxnState.code()
    );
    assert_eq!(log.offsets().log_end_offset, end);
    assert_eq!(last_stable(&log), end);

    // Verification off: a transactional batch opens a transaction as it is.
    let off = producer_batch(9, 0, 0, 1, true);
    append_bytes(&log, &off).unwrap();
    assert_eq!(summary(&log, 9).current_txn_start_offset, end);
}

#[test]
fn a_marker_or_expiry_ends_a_pending_verification() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    let txn = producer_batch(7, 0, 0, 1, true);

    // The coordinator answered "in the transaction", but the transaction ended (its
    // marker written) before the batch was appended: the answer is stale.
    let stale = log
        .start_transaction_verification(7, 0, NOW_MS)
        .expect("guard");
    marker(&log, 7, 0, ControlType::Abort);
    assert_eq!(
        code(append_verified(&log, &txn, Some(stale))),
        ResponseError::InvalidTxnState.code()
    );
    let fresh = log
        .start_transaction_verification(7, 0, NOW_MS)
        .expect("guard");
    assert_ne!(fresh, stale);

    // A verification left pending goes with the producer ids that expire.
    let expiration_ms = 1_000;
    log.remove_expired_producers(NOW_MS + expiration_ms, expiration_ms);
    assert_eq!(
        code(append_verified(&log, &txn, Some(fresh))),
        ResponseError::InvalidTxnState.code()
    );
    let again = log
        .start_transaction_verification(7, 0, NOW_MS + expiration_ms)
        .expect("guard");
    assert_ne!(again, fresh);
    append_verified(&log, &txn, Some(again)).unwrap();

    // Fenced (the coordinator's marker carries the bumped epoch), the old epoch's batch is
    // refused for its epoch, which its producer can tell apart, before any verification.
    marker(&log, 7, 1, ControlType::Abort);
    assert_eq!(
        code(append_verified(
            &log,
            &producer_batch(7, 0, 1, 1, true),
            None
        )),
        ResponseError::InvalidProducerEpoch.code()
    );
}

mod model {
    //! A state-machine test: random producers' batches, retries, markers, high watermark
    //! moves, truncations and reopens against a model of the log that derives what the
    //! producer state must be.

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    pub(super) enum Op {
        /// A batch of producer `pid` (3: a plain producer) of `count` records.
        Data {
            pid: i64,
            txn: bool,
            count: usize,
        },
        /// The producer's last batch again.
        Retry {
            pid: i64,
        },
        /// A marker, then the high watermark to the log end.
        Marker {
            pid: i64,
            abort: bool,
        },
        HighWatermark,
        /// Truncate somewhere between the high watermark and the log end.
        Truncate {
            per_mille: i64,
        },
        /// Close and reopen; or crash, after a flush (`flushed`: recovery re-reads only the
        /// active segment) or not (all of it).
        Reopen {
            clean: bool,
            flushed: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0i64..4, any::<bool>(), 1usize..4)
                .prop_map(|(pid, txn, count)| Op::Data { pid, txn, count }),
            2 => (0i64..3).prop_map(|pid| Op::Retry { pid }),
            3 => (0i64..3, any::<bool>()).prop_map(|(pid, abort)| Op::Marker { pid, abort }),
            2 => Just(Op::HighWatermark),
            1 => (0i64..1000).prop_map(|per_mille| Op::Truncate { per_mille }),
            1 => (any::<bool>(), any::<bool>())
                .prop_map(|(clean, flushed)| Op::Reopen { clean, flushed }),
        ]
    }

    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Data { pid: i64, txn: bool, first_seq: i32 },
        Marker { pid: i64, abort: bool },
    }

    #[derive(Debug, Clone, Copy)]
    struct Entry {
        base: i64,
        count: i64,
        kind: Kind,
    }

    #[derive(Debug, Default)]
    struct Model {
        entries: Vec<Entry>,
        high_watermark: i64,
    }

    /// What the model says of a producer: last batch (first offset, last offset, first
    /// sequence, count) and open transaction.
    #[derive(Debug, Default, Clone, Copy)]
    struct Producer {
        last: Option<(i64, i64, i32, i64)>,
        open_txn: Option<i64>,
    }

    impl Model {
        fn end(&self) -> i64 {
            self.entries.last().map_or(0, |e| e.base + e.count)
        }

        fn producer(&self, pid: i64) -> Producer {
            let mut p = Producer::default();
            for e in &self.entries {
                match e.kind {
                    Kind::Data {
                        pid: id,
                        txn,
                        first_seq,
                    } if id == pid => {
                        p.last = Some((e.base, e.base + e.count - 1, first_seq, e.count));
                        if txn && p.open_txn.is_none() {
                            p.open_txn = Some(e.base);
                        }
                    }
                    Kind::Marker { pid: id, .. } if id == pid => p.open_txn = None,
                    _ => {}
                }
            }
            p
        }

        fn next_sequence(&self, pid: i64) -> i32 {
            self.producer(pid)
                .last
                .map_or(0, |(_, _, first, count)| first + count as i32)
        }

        /// Aborted transactions in marker order.
        fn aborted(&self) -> Vec<AbortedTxn> {
            let mut open = std::collections::HashMap::new();
            let mut out = Vec::new();
            for e in &self.entries {
                match e.kind {
                    Kind::Data { pid, txn: true, .. } => {
                        open.entry(pid).or_insert(e.base);
                    }
                    Kind::Marker { pid, abort } => {
                        if let Some(first_offset) = open.remove(&pid) {
                            if abort {
                                out.push(AbortedTxn {
                                    producer_id: pid,
                                    first_offset,
                                });
                            }
                        }
                    }
                    _ => {}
                }
            }
            out
        }

        fn last_stable_offset(&self) -> i64 {
            (0..3)
                .filter_map(|pid| self.producer(pid).open_txn)
                .filter(|&first| first < self.high_watermark)
                .min()
                .unwrap_or(self.high_watermark)
        }
    }

    fn apply(log: PartitionLog, model: &mut Model, op: &Op) -> PartitionLog {
        match *op {
            Op::Data { pid, txn, count } => {
                if pid == 3 {
                    let info = append(&log, -1, -1, -1, count).unwrap();
                    assert_eq!(info.first_offset, model.end());
                    model.entries.push(Entry {
                        base: info.first_offset,
                        count: count as i64,
                        kind: Kind::Data {
                            pid: -1,
                            txn: false,
                            first_seq: -1,
                        },
                    });
                    return log;
                }
                let sequence = model.next_sequence(pid);
                let result = append_bytes(&log, &producer_batch(pid, 0, sequence, count, txn));
                if model.producer(pid).open_txn.is_some() && !txn {
                    assert_eq!(code(result), ResponseError::InvalidTxnState.code());
                    return log;
                }
                let info = result.unwrap();
                assert!(!info.duplicate);
                assert_eq!(info.first_offset, model.end());
                model.entries.push(Entry {
                    base: info.first_offset,
                    count: count as i64,
                    kind: Kind::Data {
                        pid,
                        txn,
                        first_seq: sequence,
                    },
                });
            }
            Op::Retry { pid } => {
                let producer = model.producer(pid);
                let Some((first, last, sequence, count)) = producer.last else {
                    return log;
                };
                let txn = matches!(
                    model
                        .entries
                        .iter()
                        .rfind(|e| e.base == first)
                        .unwrap()
                        .kind,
                    Kind::Data { txn: true, .. }
                );
                let info =
                    append_bytes(&log, &producer_batch(pid, 0, sequence, count as usize, txn))
                        .unwrap();
                assert!(info.duplicate, "{op:?}");
                assert_eq!((info.first_offset, info.last_offset), (first, last));
            }
            Op::Marker { pid, abort } => {
                let control = if abort {
                    ControlType::Abort
                } else {
                    ControlType::Commit
                };
                let offset = marker(&log, pid, 0, control);
                assert_eq!(offset, model.end());
                model.entries.push(Entry {
                    base: offset,
                    count: 1,
                    kind: Kind::Marker { pid, abort },
                });
                log.update_high_watermark(i64::MAX);
                model.high_watermark = model.end();
            }
            Op::HighWatermark => {
                log.update_high_watermark(i64::MAX);
                model.high_watermark = model.end();
            }
            Op::Truncate { per_mille } => {
                let (hw, end) = (model.high_watermark, model.end());
                let cut = hw + (end - hw) * per_mille / 1000;
                log.truncate_to(cut).unwrap();
                model.entries.retain(|e| e.base + e.count - 1 < cut);
            }
            Op::Reopen { clean, flushed } => {
                let log = if clean || !flushed {
                    reopen(log, small_segments(), clean)
                } else {
                    let recovery_point = log.flush().unwrap();
                    let dir = log.dir().to_path_buf();
                    drop(log);
                    PartitionLog::open(
                        &dir,
                        "t",
                        0,
                        small_segments(),
                        recovery_point,
                        false,
                        NOW_MS,
                    )
                    .unwrap()
                };
                log.reset_high_watermark(model.high_watermark);
                return log;
            }
        }
        log
    }

    fn check(log: &PartitionLog, model: &Model) -> Result<(), TestCaseError> {
        let offsets = log.offsets();
        prop_assert_eq!(offsets.log_end_offset, model.end());
        prop_assert_eq!(offsets.high_watermark, model.high_watermark);
        prop_assert_eq!(last_stable(log), model.last_stable_offset());
        prop_assert_eq!(log.aborted_transactions(0, model.end()), model.aborted());
        for pid in 0..3 {
            let producer = model.producer(pid);
            let summary = log
                .producer_summaries()
                .into_iter()
                .find(|s| s.producer_id == pid);
            match (producer.last, summary) {
                (Some((_, _, first, count)), Some(s)) => {
                    prop_assert_eq!(s.last_sequence, first + count as i32 - 1);
                    prop_assert_eq!(s.current_txn_start_offset, producer.open_txn.unwrap_or(-1));
                }
                (None, Some(s)) => {
                    // Known by a marker only.
                    prop_assert_eq!(s.last_sequence, -1);
                    prop_assert_eq!(s.current_txn_start_offset, -1);
                }
                (None, None) => {}
                (Some(_), None) => prop_assert!(false, "producer {} lost", pid),
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn producer_state_matches_a_model_through_appends_markers_truncations_and_reopens(
            ops in proptest::collection::vec(op(), 1..60),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut log = open(dir.path(), small_segments(), false);
            let mut model = Model::default();
            for op in &ops {
                log = apply(log, &mut model, op);
                check(&log, &model)?;
            }
        }
    }
}
