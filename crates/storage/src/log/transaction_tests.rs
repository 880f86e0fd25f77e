//! Idempotent and transactional producers against the files of a real log: duplicates,
//! sequence and epoch checks, producer state across closes, crashes, truncations and
//! expiry, transaction markers, the last stable offset, the aborted transaction index,
//! read_committed reads and compaction.

use std::path::Path;

use strom_protocol::batch::{testing, validate_produce, BatchOffsets};
use strom_protocol::ResponseError;

use crate::producer_state::{list_snapshots, snapshot_path};
use crate::{AppendInfo, ControlType, LogConfig, PartitionLog, ProducerSummary, StorageError};

const NOW_MS: i64 = 1_000_000;

fn open(dir: &Path, config: LogConfig, clean: bool) -> PartitionLog {
    PartitionLog::open(dir, "t", 0, config, 0, clean, NOW_MS).expect("open log")
}

/// Closes the log (clean) or just drops it (a crash that kept the page cache), then opens
/// it again.
fn reopen(log: PartitionLog, config: LogConfig, clean: bool) -> PartitionLog {
    let dir = log.dir().to_path_buf();
    if clean {
        log.close().expect("close");
    }
    drop(log);
    open(&dir, config, clean)
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
    let mut out = Vec::new();
    let mut offset = log.offsets().log_start_offset;
    while let Some(slice) = log.read_to_log_end(offset, 1 << 20, true).unwrap().slice {
        let bytes = slice.read_to_vec().unwrap();
        let mut at = 0;
        while let Some(b) = BatchOffsets::parse(&bytes[at..]) {
            if at + b.size_bytes > bytes.len() {
                break;
            }
            out.push((b.base_offset, i64::from(b.last_offset_delta) + 1));
            offset = b.last_offset() + 1;
            at += b.size_bytes;
        }
    }
    out
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
        read_snapshot, Origin, PendingUpdate, ProducerBatch, ProducerStateManager,
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
        .prepare_batch(&mut pending, &batch, at, Origin::Replication)
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
    let mut offset = 0;
    while let Some(slice) = leader.read_to_log_end(offset, 300, true).unwrap().slice {
        let bytes = slice.read_to_vec().unwrap();
        let info = follower
            .append_as_follower(&bytes, NOW_MS)
            .unwrap()
            .unwrap();
        offset = info.last_offset + 1;
    }
    assert_eq!(follower.producer_summaries(), leader.producer_summaries());
    let follower = reopen(follower, small_segments(), false);
    assert_eq!(follower.producer_summaries(), leader.producer_summaries());
}
