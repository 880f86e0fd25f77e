//! Partition log behaviour against its files: appends, reads, rolls, reopen and recovery.

use std::path::Path;

use proptest::prelude::*;
use strom_protocol::batch::{testing, validate_produce, BatchOffsets};
use strom_storage::{LogConfig, PartitionLog};

fn open(dir: &Path, config: LogConfig, clean: bool) -> PartitionLog {
    PartitionLog::open(dir, "t", 0, config, 0, clean, 1_000).expect("open log")
}

fn append(log: &PartitionLog, values: &[&[u8]], ts: i64) -> i64 {
    let records = testing::batch(values, ts);
    let batches = validate_produce(&records, 1 << 20).expect("valid batch");
    let info = log
        .append_as_leader(&records, &batches, 3, 1_000)
        .expect("append");
    log.update_high_watermark(info.last_offset + 1);
    info.first_offset
}

/// Reads every batch from `offset` to the high watermark: (base offset, record count).
fn read_all(log: &PartitionLog, mut offset: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    loop {
        let result = log.read(offset, 1 << 20, true).expect("read");
        let Some(slice) = result.slice else { break };
        let bytes = slice.read_to_vec().expect("slice bytes");
        let mut at = 0;
        while let Some(b) = BatchOffsets::parse(&bytes[at..]) {
            if at + b.size_bytes > bytes.len() {
                break;
            }
            strom_protocol::batch::check_stored(&bytes[at..at + b.size_bytes])
                .expect("stored batch intact");
            assert_eq!(b.leader_epoch, 3);
            if b.last_offset() >= offset {
                out.push((b.base_offset, b.last_offset() - b.base_offset + 1));
            }
            offset = b.last_offset() + 1;
            at += b.size_bytes;
        }
    }
    out
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 300,
        index_interval_bytes: 100,
        ..LogConfig::default()
    }
}

#[test]
fn appends_get_consecutive_offsets_and_read_back_across_rolled_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_segments(), false);
    for i in 0..20 {
        assert_eq!(append(&log, &[b"aaaaaaaaaa", b"bbbbbbbbbbbb"], i), i * 2);
    }
    assert!(log.segment_count() > 3, "small segment.bytes must roll");
    let batches = read_all(&log, 0);
    assert_eq!(batches.len(), 20);
    assert_eq!(batches[7], (14, 2));
    // A read from the middle of a batch starts at that batch.
    assert_eq!(read_all(&log, 15)[0], (14, 2));
    assert_eq!(log.offsets().log_end_offset, 40);
}

#[test]
fn a_clean_reopen_keeps_offsets_indexes_and_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path(), small_segments(), false);
        for i in 0..30 {
            append(&log, &[b"0123456789"], 100 + i * 10);
        }
        log.close().unwrap();
    }
    let log = open(dir.path(), small_segments(), true);
    assert_eq!(log.offsets().log_end_offset, 30);
    assert_eq!(read_all(&log, 0).len(), 30);
    let found = log
        .offset_for_timestamp(255)
        .unwrap()
        .expect("a record at or after 255");
    assert_eq!((found.offset, found.timestamp), (16, 260));
    assert_eq!(
        log.max_timestamp_offset().unwrap().map(|t| t.offset),
        Some(29)
    );
    assert_eq!(append(&log, &[b"x"], 1), 30);
}

#[test]
fn out_of_range_and_at_end_reads() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    append(&log, &[b"a"], 1);
    assert!(log.read(2, 100, true).is_err());
    assert!(log.read(-1, 100, true).is_err());
    assert!(log.read(1, 100, true).unwrap().slice.is_none());
}

#[test]
fn reads_stop_at_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    append(&log, &[b"a", b"b"], 1);
    let records = testing::batch(&[b"c"], 2);
    let batches = validate_produce(&records, 1 << 20).unwrap();
    log.append_as_leader(&records, &batches, 3, 1_000).unwrap();
    assert_eq!(
        read_all(&log, 0),
        vec![(0, 2)],
        "the unreplicated batch is invisible"
    );
    log.update_high_watermark(3);
    assert_eq!(read_all(&log, 0), vec![(0, 2), (2, 1)]);
}

#[test]
fn a_read_larger_than_max_bytes_returns_the_whole_first_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default(), false);
    append(&log, &[&[1u8; 500]], 1);
    let slice = log.read(0, 10, true).unwrap().slice.expect("first batch");
    assert!(slice.len > 500);
    assert!(log.read(0, 0, false).unwrap().slice.is_none());
}

/// Writes five batches, then cuts the file at `cut` bytes into the last batch and reopens
/// as after a crash: the log must end after batch four and take appends at offset 8.
fn recover_after_cut(cut: usize) {
    let dir = tempfile::tempdir().unwrap();
    let last_start;
    {
        let log = open(
            dir.path(),
            LogConfig {
                index_interval_bytes: 1,
                ..LogConfig::default()
            },
            false,
        );
        for i in 0..4 {
            append(&log, &[b"first", b"second"], i);
        }
        last_start = std::fs::metadata(dir.path().join("00000000000000000000.log"))
            .unwrap()
            .len();
        append(&log, &[b"torn-a", b"torn-b"], 9);
        log.flush().unwrap();
    }
    let path = dir.path().join("00000000000000000000.log");
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(last_start + cut as u64).unwrap();
    let log =
        PartitionLog::open(dir.path(), "t", 0, LogConfig::default(), 0, false, 1_000).unwrap();
    assert_eq!(log.offsets().log_end_offset, 8, "cut at {cut}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), last_start);
    assert_eq!(append(&log, &[b"after"], 20), 8);
    assert_eq!(read_all(&log, 0).len(), 5);
}

#[test]
fn recovery_truncates_at_every_byte_of_the_last_batch() {
    let batch_len = testing::batch(&[b"torn-a", b"torn-b"], 9).len();
    for cut in 0..batch_len {
        recover_after_cut(cut);
    }
}

#[test]
fn recovery_drops_a_batch_whose_crc_fails_and_everything_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 200,
        ..LogConfig::default()
    };
    {
        let log = open(dir.path(), config.clone(), false);
        for i in 0..10 {
            append(&log, &[b"payload-payload"], i);
        }
    }
    // Flip a byte in the payload of the second batch of the first segment.
    let path = dir.path().join("00000000000000000000.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let first = BatchOffsets::parse(&bytes).unwrap().size_bytes;
    bytes[first + 70] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let log = PartitionLog::open(dir.path(), "t", 0, config, 0, false, 1_000).unwrap();
    assert_eq!(log.offsets().log_end_offset, 1);
    assert_eq!(
        log.segment_count(),
        1,
        "segments after the corruption are deleted"
    );
}

#[test]
fn segments_below_the_recovery_point_are_not_rescanned() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 200,
        ..LogConfig::default()
    };
    let recovery_point;
    {
        let log = open(dir.path(), config.clone(), false);
        for i in 0..10 {
            append(&log, &[b"payload-payload"], i);
        }
        recovery_point = log.flush().unwrap();
    }
    // Damage the first (flushed) segment: recovery trusts it and keeps every batch.
    let path = dir.path().join("00000000000000000000.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let log = PartitionLog::open(dir.path(), "t", 0, config, recovery_point, false, 1_000).unwrap();
    assert_eq!(log.offsets().log_end_offset, 10);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Model: a list of (base offset, count). Any read offset returns the batch holding it.
    #[test]
    fn reads_match_a_model_of_appended_batches(
        counts in proptest::collection::vec(1usize..6, 1..40),
        segment_bytes in 150u64..2000,
        probe in 0usize..200,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { segment_bytes, index_interval_bytes: 64, ..LogConfig::default() };
        let log = open(dir.path(), config, false);
        let mut model = Vec::new();
        let value = [7u8; 20];
        for (i, count) in counts.iter().enumerate() {
            let values: Vec<&[u8]> = (0..*count).map(|_| &value[..]).collect();
            let base = append(&log, &values, i as i64);
            model.push((base, *count as i64));
        }
        let end = model.last().map(|(b, c)| b + c).unwrap();
        let target = (probe as i64) % end;
        let got = read_all(&log, target);
        let expected: Vec<_> = model.iter().copied().filter(|(b, c)| b + c > target).collect();
        prop_assert_eq!(got, expected);
    }
}
