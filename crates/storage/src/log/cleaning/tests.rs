//! Log compaction against the files of a real log: what a cleaning keeps, the clean point,
//! the cleanable decision, crash safety at every step of a swap, and a model-based proptest.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use strom_protocol::batch::{validate_produce, BatchOffsets, Compression};
use strom_protocol::records::testing::batch;
use strom_protocol::records::{RecordReader, DECOMPRESSED_BATCH_BYTES_MAX};

use crate::cleaner::{CleanOutcome, CleanerProgress, CompactionConfig, OffsetMap, SwapStep};
use crate::log::test_support::CrashAfter;
use crate::{LogConfig, PartitionLog};

const NOW_MS: i64 = 1_700_000_000_000;
const DAY_MS: i64 = 86_400_000;

/// One record as the model and a reader of the log see it: key, value (None: tombstone).
type Entry = (Vec<u8>, Option<Vec<u8>>);

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 600,
        index_interval_bytes: 100,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, clean: bool) -> PartitionLog {
    PartitionLog::open(dir, "compacted", 0, config(), 0, clean, NOW_MS).expect("open log")
}

fn compaction() -> CompactionConfig {
    CompactionConfig {
        min_cleanable_dirty_ratio: 0.0,
        ..CompactionConfig::default()
    }
}

/// Appends one batch of `records` (key, value) with `codec`; the high watermark follows.
fn append(log: &PartitionLog, records: &[(&[u8], Option<&[u8]>)], codec: Compression, ts: i64) {
    let keyed: Vec<_> = records.iter().map(|(k, v)| (Some(*k), *v, ts)).collect();
    let bytes = batch(0, &keyed, codec);
    let infos = validate_produce(&bytes, 1 << 20).expect("valid batch");
    log.append_as_leader(&bytes, &infos, 0, NOW_MS)
        .expect("append");
    log.update_high_watermark(i64::MAX);
}

/// Every record below the high watermark, from the start: offset → (key, value).
fn read_all(log: &PartitionLog) -> BTreeMap<i64, Entry> {
    let mut out = BTreeMap::new();
    let mut offset = log.offsets().log_start_offset;
    loop {
        let read = log.read(offset, 1 << 20, true).expect("read");
        let Some(slice) = read.slice else { break };
        let bytes = slice.read_to_vec().expect("slice bytes");
        let mut at = 0;
        while let Some(b) = BatchOffsets::parse(&bytes[at..]) {
            if at + b.size_bytes > bytes.len() {
                break;
            }
            let mut reader =
                RecordReader::new(&bytes[at..at + b.size_bytes], DECOMPRESSED_BATCH_BYTES_MAX)
                    .expect("readable batch");
            while let Some(r) = reader.next_record().expect("readable record") {
                let key = r.key.expect("keyed").to_vec();
                assert!(
                    out.insert(r.offset, (key, r.value.map(<[u8]>::to_vec)))
                        .is_none(),
                    "offset {} seen twice",
                    r.offset
                );
            }
            offset = b.last_offset() + 1;
            at += b.size_bytes;
        }
    }
    out
}

fn clean_now(log: &PartitionLog, map: &mut OffsetMap, now_ms: i64) -> CleanOutcome {
    clean_with(log, map, now_ms, &mut ())
}

fn clean_with(
    log: &PartitionLog,
    map: &mut OffsetMap,
    now_ms: i64,
    progress: &mut dyn CleanerProgress,
) -> CleanOutcome {
    let config = compaction();
    let cleanable = log
        .cleanable(&config, log.offsets().high_watermark, now_ms)
        .expect("cleanable");
    log.clean(map, &config, &cleanable, now_ms, progress)
        .expect("clean")
}

/// The latest entry of every key in `records`.
fn latest(records: &BTreeMap<i64, Entry>) -> BTreeMap<Vec<u8>, (i64, Option<Vec<u8>>)> {
    records
        .iter()
        .map(|(o, (k, v))| (k.clone(), (*o, v.clone())))
        .collect()
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i}").into_bytes()
}

/// Writes `rounds` updates of `keys` keys, one record per batch, rolling small segments.
fn updates(log: &PartitionLog, keys: usize, rounds: usize, codec: Compression) {
    for round in 0..rounds {
        for k in 0..keys {
            let value = format!("value-{k}-{round}");
            append(log, &[(&key(k), Some(value.as_bytes()))], codec, NOW_MS);
        }
    }
}

#[test]
fn cleaning_keeps_the_latest_value_of_each_key_at_its_offset() {
    for codec in CODECS {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), true);
        updates(&log, 5, 20, codec);
        let before = read_all(&log);
        let segments_before = log.segment_count();
        let mut map = OffsetMap::new(1 << 20, 0.9);
        let CleanOutcome::Cleaned {
            first_dirty_offset,
            stats,
        } = clean_now(&log, &mut map, NOW_MS)
        else {
            panic!("not cleaned");
        };
        let after = read_all(&log);
        assert_eq!(latest(&after), latest(&before), "{codec:?}");
        assert!(
            after.len() < before.len() / 2,
            "{codec:?}: {} left",
            after.len()
        );
        for (offset, entry) in &after {
            assert_eq!(
                before.get(offset),
                Some(entry),
                "{codec:?}: offsets are kept"
            );
        }
        // Below the clean point, one record per key (the active segment is not cleaned).
        let below: Vec<_> = after.range(..first_dirty_offset).collect();
        let keys: std::collections::BTreeSet<_> = below.iter().map(|(_, (k, _))| k).collect();
        assert_eq!(below.len(), keys.len(), "{codec:?}: one record per key");
        assert!(stats.segments_written > 0);
        assert_eq!(log.first_dirty_offset(), Some(first_dirty_offset));
        // Segments whose records were all superseded merged into the next cleaned one.
        assert!(
            log.segment_count() < segments_before,
            "{codec:?}: superseded segments merged"
        );
        updates(&log, 5, 2, codec);
        let CleanOutcome::Cleaned { stats, .. } = clean_now(&log, &mut map, NOW_MS) else {
            panic!("not cleaned");
        };
        assert!(
            stats.segments_replaced > stats.segments_written,
            "{codec:?}: {stats:?}"
        );
        assert_eq!(latest(&read_all(&log)).len(), 5);
    }
}

#[test]
fn a_cleaned_log_reopens_the_same_after_a_clean_or_unclean_shutdown() {
    for clean in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), true);
        updates(&log, 7, 12, Compression::None);
        clean_now(&log, &mut OffsetMap::new(1 << 20, 0.9), NOW_MS);
        let after = read_all(&log);
        let end = log.offsets().log_end_offset;
        if clean {
            log.close().unwrap();
        }
        drop(log);
        let log = open(dir.path(), clean);
        log.update_high_watermark(i64::MAX);
        assert_eq!(read_all(&log), after);
        assert_eq!(log.offsets().log_end_offset, end);
        append(&log, &[(b"new", Some(b"x"))], Compression::None, NOW_MS);
        assert_eq!(read_all(&log).last_key_value().unwrap().0, &end);
    }
}

#[test]
fn tombstones_stay_until_their_delete_horizon_then_go() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), true);
    updates(&log, 4, 5, Compression::None);
    append(&log, &[(&key(3), None)], Compression::None, NOW_MS);
    updates(&log, 3, 5, Compression::None);
    let mut map = OffsetMap::new(1 << 20, 0.9);
    clean_now(&log, &mut map, NOW_MS);
    let first = read_all(&log);
    assert_eq!(
        latest(&first)[&key(3)].1,
        None,
        "a tombstone stays at first"
    );
    let of_key =
        |records: &BTreeMap<i64, Entry>| records.values().filter(|(k, _)| k == &key(3)).count();
    assert_eq!(of_key(&first), 1, "older values of its key go at once");
    // The first cleaning set the tombstone's delete horizon to now + delete.retention.ms:
    // later cleanings keep it until then, and drop it after.
    updates(&log, 3, 5, Compression::None);
    clean_now(&log, &mut map, NOW_MS + DAY_MS / 2);
    assert_eq!(of_key(&read_all(&log)), 1, "within the horizon");
    updates(&log, 3, 5, Compression::None);
    clean_now(&log, &mut map, NOW_MS + DAY_MS + 1);
    let last = read_all(&log);
    assert_eq!(of_key(&last), 0, "past the horizon: {last:?}");
    assert_eq!(latest(&last).len(), 3);
}

#[test]
fn the_active_segment_and_records_above_the_high_watermark_are_never_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), true);
    updates(&log, 3, 10, Compression::None);
    let high_watermark = log.offsets().high_watermark;
    // Duplicates above the high watermark stay whatever the map says.
    for round in 0..10 {
        let value = format!("uncommitted-{round}");
        let record = (Some(&key(0)[..]), Some(value.as_bytes()), NOW_MS);
        let bytes = batch(0, &[record], Compression::None);
        let infos = validate_produce(&bytes, 1 << 20).unwrap();
        log.append_as_leader(&bytes, &infos, 0, NOW_MS).unwrap();
    }
    let config = compaction();
    let cleanable = log.cleanable(&config, high_watermark, NOW_MS).unwrap();
    assert!(cleanable.first_uncleanable_offset <= high_watermark);
    let mut map = OffsetMap::new(1 << 20, 0.9);
    log.clean(&mut map, &config, &cleanable, NOW_MS, &mut ())
        .unwrap();
    log.update_high_watermark(i64::MAX);
    let all = read_all(&log);
    assert_eq!(
        all.range(high_watermark..).count(),
        10,
        "above the high watermark: untouched"
    );
    let below_bound = all
        .range(..cleanable.first_uncleanable_offset)
        .filter(|(_, (k, _))| k == &key(0))
        .count();
    assert_eq!(
        below_bound, 1,
        "one record of key 0 below the cleaned bound"
    );
}

#[test]
fn the_cleanable_decision_follows_the_dirty_ratio_and_the_compaction_lags() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), true);
    updates(&log, 3, 10, Compression::None);
    let hw = log.offsets().high_watermark;
    let half = CompactionConfig {
        min_cleanable_dirty_ratio: 0.5,
        ..CompactionConfig::default()
    };
    let fresh = log.cleanable(&half, hw, NOW_MS).unwrap();
    assert_eq!(fresh.first_dirty_offset, 0);
    assert_eq!(fresh.dirty_ratio, 1.0);
    assert!(fresh.must_clean);
    // Everything is newer than min.compaction.lag.ms: nothing is cleanable.
    let lagging = CompactionConfig {
        min_compaction_lag_ms: 60_000,
        ..half
    };
    let waiting = log.cleanable(&lagging, hw, NOW_MS).unwrap();
    assert_eq!(waiting.cleanable_bytes, 0);
    assert!(!waiting.must_clean);
    assert!(
        log.cleanable(&lagging, hw, NOW_MS + 60_001)
            .unwrap()
            .must_clean
    );
    // After a cleaning the ratio is low; max.compaction.lag.ms forces one anyway.
    let mut map = OffsetMap::new(1 << 20, 0.9);
    clean_now(&log, &mut map, NOW_MS);
    updates(&log, 3, 1, Compression::None);
    let hw = log.offsets().high_watermark;
    let strict = CompactionConfig {
        min_cleanable_dirty_ratio: 0.99,
        ..half
    };
    let after = log.cleanable(&strict, hw, NOW_MS).unwrap();
    assert!(after.dirty_ratio < 0.99);
    assert!(!after.must_clean);
    let forced = CompactionConfig {
        max_compaction_lag_ms: 1000,
        ..strict
    };
    let overdue = log.cleanable(&forced, hw, NOW_MS + 5000).unwrap();
    assert!(overdue.max_compaction_delay_ms > 0);
    assert_eq!(overdue.must_clean, overdue.cleanable_bytes > 0);
}

#[test]
fn a_full_offset_map_cleans_in_several_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), true);
    updates(&log, 50, 6, Compression::None);
    let before = read_all(&log);
    // Room for 10 keys at a time.
    let mut map = OffsetMap::new(12 * crate::cleaner::OFFSET_MAP_SLOT_BYTES, 0.9);
    let mut points = Vec::new();
    for _ in 0..200 {
        let CleanOutcome::Cleaned {
            first_dirty_offset, ..
        } = clean_now(&log, &mut map, NOW_MS)
        else {
            panic!("aborted");
        };
        points.push(first_dirty_offset);
        if log
            .cleanable(&compaction(), i64::MAX, NOW_MS)
            .unwrap()
            .cleanable_bytes
            == 0
        {
            break;
        }
    }
    assert!(
        points.windows(2).all(|w| w[0] < w[1]),
        "the clean point moves: {points:?}"
    );
    assert!(points.len() > 2, "several rounds: {points:?}");
    assert_eq!(latest(&read_all(&log)), latest(&before));
}

#[test]
fn a_reader_of_replaced_segments_keeps_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), true);
    updates(&log, 3, 20, Compression::None);
    let old = log.read(0, 1 << 20, true).unwrap().slice.expect("bytes");
    let old_bytes = old.read_to_vec().unwrap();
    clean_now(&log, &mut OffsetMap::new(1 << 20, 0.9), NOW_MS);
    assert_eq!(
        old.read_to_vec().unwrap(),
        old_bytes,
        "the unlinked file still reads"
    );
    let new = log.read(0, 1 << 20, true).unwrap().slice.expect("bytes");
    assert_ne!(new.read_to_vec().unwrap(), old_bytes);
}

const STEPS: [SwapStep; 6] = [
    SwapStep::Written,
    SwapStep::IndexesSwapped,
    SwapStep::LogSwapped,
    SwapStep::OldDeleted,
    SwapStep::LogRenamed,
    SwapStep::IndexesRenamed,
];

/// Cleans `log` and crashes after `step` (if the cleaning gets there); reopens it from its
/// files after a crash (no clean shutdown).
fn clean_and_crash(log: PartitionLog, step: SwapStep, countdown: usize) -> PartitionLog {
    let dir = log.dir().to_path_buf();
    let config = compaction();
    let cleanable = log
        .cleanable(&config, log.offsets().high_watermark, NOW_MS)
        .unwrap();
    let mut crash = CrashAfter { step, countdown };
    let mut map = OffsetMap::new(1 << 20, 0.9);
    let result = log.clean(&mut map, &config, &cleanable, NOW_MS, &mut crash);
    drop(log);
    if let Err(e) = &result {
        assert!(e.to_string().contains("simulated crash"), "{e}");
    }
    let log = open(&dir, false);
    log.update_high_watermark(i64::MAX);
    log
}

fn leftover_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap") || n.ends_with(".deleted"))
        .collect()
}

#[test]
fn a_crash_at_any_step_of_a_swap_reopens_a_valid_log_with_every_latest_value() {
    for step in STEPS {
        for countdown in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let log = open(dir.path(), true);
            updates(&log, 6, 15, Compression::Lz4);
            let before = read_all(&log);
            let end = log.offsets().log_end_offset;
            let log = clean_and_crash(log, step, countdown);
            let after = read_all(&log);
            assert_eq!(latest(&after), latest(&before), "{step:?} {countdown}");
            for (offset, entry) in &after {
                assert_eq!(before.get(offset), Some(entry), "{step:?}: offset {offset}");
            }
            assert_eq!(log.offsets().log_end_offset, end, "{step:?}");
            assert!(
                leftover_files(dir.path()).is_empty(),
                "{step:?}: {:?}",
                leftover_files(dir.path())
            );
            // The log cleans again and takes appends.
            clean_now(&log, &mut OffsetMap::new(1 << 20, 0.9), NOW_MS);
            append(
                &log,
                &[(b"after", Some(b"crash"))],
                Compression::None,
                NOW_MS,
            );
            assert_eq!(latest(&read_all(&log))[&key(0)], latest(&before)[&key(0)]);
        }
    }
}

/// One step of the model-based test.
#[derive(Debug, Clone)]
enum Op {
    /// A batch of (key index, value or tombstone) with a codec.
    Append(Vec<(u8, Option<u8>)>, u8),
    Clean,
    /// Clean, crashing after a swap step; reopen.
    CleanAndCrash(usize, usize),
    /// Close or drop, then reopen.
    Reopen(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (proptest::collection::vec((0u8..12, proptest::option::weighted(0.85, any::<u8>())), 1..6), 0u8..5)
            .prop_map(|(records, codec)| Op::Append(records, codec)),
        2 => Just(Op::Clean),
        1 => (0usize..STEPS.len(), 0usize..2).prop_map(|(s, c)| Op::CleanAndCrash(s, c)),
        1 => any::<bool>().prop_map(Op::Reopen),
    ]
}

const CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

/// Checks the log against every record ever appended (offset → entry): offsets increase,
/// nothing is invented, every key's latest record is there, and nothing at or past the
/// clean point's uncleaned tail... records the cleaner has not reached are all there.
fn check(
    log: &PartitionLog,
    model: &BTreeMap<i64, Entry>,
    untouched_from: i64,
) -> Result<(), TestCaseError> {
    let seen = read_all(log);
    for (offset, entry) in &seen {
        prop_assert_eq!(
            model.get(offset),
            Some(entry),
            "record at {} invented or changed",
            offset
        );
    }
    prop_assert_eq!(latest(&seen), latest(model));
    for (offset, entry) in model.range(untouched_from..) {
        prop_assert_eq!(
            seen.get(offset),
            Some(entry),
            "dirty record {} lost",
            offset
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn cleaning_against_a_model_never_loses_a_latest_value(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), true);
        let mut model: BTreeMap<i64, Entry> = BTreeMap::new();
        let mut map = OffsetMap::new(1 << 20, 0.9);
        // Records the cleaner may have touched lie below this; the rest must all be there.
        let mut cleaned_below = 0;
        for op in ops {
            match op {
                Op::Append(records, codec) => {
                    let keys: Vec<Vec<u8>> = records.iter().map(|(k, _)| key(*k as usize)).collect();
                    let values: Vec<Option<Vec<u8>>> = records.iter().map(|(_, v)| v.map(|v| vec![v; 8])).collect();
                    let pairs: Vec<(&[u8], Option<&[u8]>)> = keys.iter().zip(&values).map(|(k, v)| (&k[..], v.as_deref())).collect();
                    let first = log.offsets().log_end_offset;
                    append(&log, &pairs, CODECS[codec as usize], NOW_MS);
                    for (i, (k, v)) in keys.into_iter().zip(values).enumerate() {
                        model.insert(first + i as i64, (k, v));
                    }
                }
                Op::Clean => {
                    if let CleanOutcome::Cleaned { first_dirty_offset, .. } = clean_now(&log, &mut map, NOW_MS) {
                        cleaned_below = cleaned_below.max(first_dirty_offset);
                    }
                }
                Op::CleanAndCrash(step, countdown) => {
                    cleaned_below = log.offsets().high_watermark;
                    log = clean_and_crash(log, STEPS[step], countdown);
                    prop_assert!(leftover_files(dir.path()).is_empty());
                }
                Op::Reopen(clean) => {
                    if clean {
                        log.close().unwrap();
                    }
                    drop(log);
                    log = open(dir.path(), clean);
                    log.update_high_watermark(i64::MAX);
                }
            }
            check(&log, &model, cleaned_below)?;
        }
    }
}
