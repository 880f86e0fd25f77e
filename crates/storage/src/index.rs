//! Sparse indexes of a segment, in Kafka's file layouts.
//!
//! - Offset index entry (8 bytes): `relative_offset u32 | position u32`: the batch whose last
//!   offset is `base_offset + relative_offset` starts at `position` in the `.log` file.
//! - Time index entry (12 bytes): `timestamp i64 | relative_offset u32`: records up to that
//!   offset have timestamps of at most `timestamp`.
//! - Transaction index entry (34 bytes, Kafka's `.txnindex`): `version i16 (0) | producer_id
//!   i64 | first_offset i64 | last_offset i64 | last_stable_offset i64`: one aborted
//!   transaction, in the segment holding its ABORT marker (`last_offset`).
//!
//! Entries live in memory and are written to the file on flush; the file is never trusted
//! past the recovery point (recovery rebuilds the indexes of unflushed segments).

use std::fs::File;
use std::io::Write;
use std::path::Path;

pub const OFFSET_ENTRY_BYTES: usize = 8;
pub const TIME_ENTRY_BYTES: usize = 12;
pub const TXN_ENTRY_BYTES: usize = 34;
/// The version field of every transaction index entry.
const TXN_ENTRY_VERSION: i16 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

/// The sparse offset index of one segment.
#[derive(Debug, Default)]
pub struct OffsetIndex {
    entries: Vec<OffsetEntry>,
    persisted: usize,
    /// The file is known to hold exactly `entries[..persisted]`: flushing an unchanged
    /// index costs no system call.
    clean: bool,
}

impl OffsetIndex {
    /// Loads entries from an index file, keeping the valid prefix: strictly increasing
    /// offsets and positions below `segment_bytes`. Returns the index and whether the file
    /// was entirely valid.
    pub fn load(path: &Path, segment_bytes: u64) -> std::io::Result<(OffsetIndex, bool)> {
        let bytes = read_or_empty(path)?;
        let mut entries = Vec::with_capacity(bytes.len() / OFFSET_ENTRY_BYTES);
        let mut valid = bytes.len() % OFFSET_ENTRY_BYTES == 0;
        for chunk in bytes.chunks_exact(OFFSET_ENTRY_BYTES) {
            let entry = OffsetEntry {
                relative_offset: u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                position: u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
            };
            let increasing = entries.last().is_none_or(|last: &OffsetEntry| {
                entry.relative_offset > last.relative_offset && entry.position > last.position
            });
            if !increasing || u64::from(entry.position) >= segment_bytes {
                valid = false;
                break;
            }
            entries.push(entry);
        }
        let persisted = entries.len();
        Ok((
            OffsetIndex {
                entries,
                persisted,
                clean: false,
            },
            valid,
        ))
    }

    pub fn append(&mut self, relative_offset: u32, position: u32) {
        debug_assert!(self
            .entries
            .last()
            .is_none_or(|l| l.relative_offset < relative_offset));
        self.entries.push(OffsetEntry {
            relative_offset,
            position,
        });
    }

    /// The position to start scanning from for `relative_offset`: that of the last entry
    /// whose offset is below it (the batch after it can still hold the target), else 0.
    pub fn lookup(&self, relative_offset: u32) -> u32 {
        let idx = self
            .entries
            .partition_point(|e| e.relative_offset < relative_offset);
        if idx == 0 {
            0
        } else {
            // Entry idx-1 is a batch ending before the target; the next batch starts after it,
            // but positions of "next batch" are not indexed, so scan from this batch.
            self.entries[idx - 1].position
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn last(&self) -> Option<OffsetEntry> {
        self.entries.last().copied()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.persisted = 0;
        self.clean = false;
    }

    /// Keeps only entries at positions below `position_bytes`.
    pub fn truncate_to_position(&mut self, position_bytes: u64) {
        let keep = self
            .entries
            .partition_point(|e| u64::from(e.position) < position_bytes);
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(keep);
        self.clean = false;
    }

    /// Writes entries not yet in the file; rewrites the file when it was truncated.
    pub fn persist(&mut self, path: &Path) -> std::io::Result<()> {
        persist_entries(
            path,
            &self.entries,
            &mut self.persisted,
            &mut self.clean,
            OFFSET_ENTRY_BYTES,
            |e, out| {
                out.extend_from_slice(&e.relative_offset.to_be_bytes());
                out.extend_from_slice(&e.position.to_be_bytes());
            },
        )
    }
}

/// The sparse time index of one segment.
#[derive(Debug, Default)]
pub struct TimeIndex {
    entries: Vec<TimeEntry>,
    persisted: usize,
    /// The file is known to hold exactly `entries[..persisted]`: flushing an unchanged
    /// index costs no system call.
    clean: bool,
}

impl TimeIndex {
    /// Loads the valid prefix (non-decreasing timestamps, increasing offsets).
    pub fn load(path: &Path) -> std::io::Result<(TimeIndex, bool)> {
        let bytes = read_or_empty(path)?;
        let mut entries = Vec::with_capacity(bytes.len() / TIME_ENTRY_BYTES);
        let mut valid = bytes.len() % TIME_ENTRY_BYTES == 0;
        for chunk in bytes.chunks_exact(TIME_ENTRY_BYTES) {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&chunk[..8]);
            let entry = TimeEntry {
                timestamp: i64::from_be_bytes(ts),
                relative_offset: u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]),
            };
            let ordered = entries.last().is_none_or(|last: &TimeEntry| {
                entry.timestamp > last.timestamp && entry.relative_offset > last.relative_offset
            });
            if !ordered {
                valid = false;
                break;
            }
            entries.push(entry);
        }
        let persisted = entries.len();
        Ok((
            TimeIndex {
                entries,
                persisted,
                clean: false,
            },
            valid,
        ))
    }

    /// Appends when `timestamp` is newer than the last entry (Kafka's `maybeAppend`).
    pub fn maybe_append(&mut self, timestamp: i64, relative_offset: u32) {
        if self
            .entries
            .last()
            .is_none_or(|l| timestamp > l.timestamp && relative_offset > l.relative_offset)
        {
            self.entries.push(TimeEntry {
                timestamp,
                relative_offset,
            });
        }
    }

    /// The relative offset to start a timestamp search from: that of the last entry with a
    /// timestamp below `timestamp`, else `None` (search from the segment start).
    pub fn lookup(&self, timestamp: i64) -> Option<u32> {
        let idx = self.entries.partition_point(|e| e.timestamp < timestamp);
        (idx > 0).then(|| self.entries[idx - 1].relative_offset)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.persisted = 0;
        self.clean = false;
    }

    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    /// Keeps only entries for offsets below `relative_offset`.
    pub fn truncate_to_offset(&mut self, relative_offset: u32) {
        let keep = self
            .entries
            .partition_point(|e| e.relative_offset < relative_offset);
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(keep);
        self.clean = false;
    }

    pub fn persist(&mut self, path: &Path) -> std::io::Result<()> {
        persist_entries(
            path,
            &self.entries,
            &mut self.persisted,
            &mut self.clean,
            TIME_ENTRY_BYTES,
            |e, out| {
                out.extend_from_slice(&e.timestamp.to_be_bytes());
                out.extend_from_slice(&e.relative_offset.to_be_bytes());
            },
        )
    }
}

/// One aborted transaction (Kafka's `AbortedTxn`): its producer, its first offset and the
/// offset of its ABORT marker, and the last stable offset when the marker was written (no
/// transaction of another producer was open below it), which bounds a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnEntry {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub last_stable_offset: i64,
}

/// The aborted transactions whose markers a segment holds, in marker order (Kafka's
/// `TransactionIndex`). The file exists only once an entry does.
#[derive(Debug, Default)]
pub struct TxnIndex {
    entries: Vec<TxnEntry>,
    persisted: usize,
    /// Entries changed since the file was last written (a fresh index never writes, so it
    /// leaves a file it did not load alone).
    dirty: bool,
}

impl TxnIndex {
    /// Loads the valid prefix of a `.txnindex` file (version 0 entries with `first_offset <=
    /// last_offset`, markers in increasing order); a missing file is an empty index. Returns
    /// the index and whether the file was entirely valid.
    pub fn load(path: &Path) -> std::io::Result<(TxnIndex, bool)> {
        let bytes = read_or_empty(path)?;
        let mut entries = Vec::with_capacity(bytes.len() / TXN_ENTRY_BYTES);
        let mut valid = bytes.len() % TXN_ENTRY_BYTES == 0;
        for chunk in bytes.chunks_exact(TXN_ENTRY_BYTES) {
            let i64_at = |at: usize| {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(&chunk[at..at + 8]);
                i64::from_be_bytes(raw)
            };
            let version = i16::from_be_bytes([chunk[0], chunk[1]]);
            let entry = TxnEntry {
                producer_id: i64_at(2),
                first_offset: i64_at(10),
                last_offset: i64_at(18),
                last_stable_offset: i64_at(26),
            };
            let ordered = entries
                .last()
                .is_none_or(|last: &TxnEntry| entry.last_offset > last.last_offset);
            if version != TXN_ENTRY_VERSION || entry.first_offset > entry.last_offset || !ordered {
                valid = false;
                break;
            }
            entries.push(entry);
        }
        let persisted = entries.len();
        Ok((
            TxnIndex {
                entries,
                persisted,
                dirty: !valid,
            },
            valid,
        ))
    }

    /// An index holding `entries` (a cleaned segment takes those of the segments it
    /// replaces), to be written on the next persist.
    pub fn with_entries(entries: Vec<TxnEntry>) -> TxnIndex {
        TxnIndex {
            entries,
            persisted: 0,
            dirty: true,
        }
    }

    pub fn append(&mut self, entry: TxnEntry) {
        debug_assert!(self
            .entries
            .last()
            .is_none_or(|l| l.last_offset < entry.last_offset));
        self.entries.push(entry);
        self.dirty = true;
    }

    pub fn entries(&self) -> &[TxnEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every entry; the file is emptied on the next persist (a recovered segment's
    /// entries are rebuilt from the log).
    pub fn reset(&mut self) {
        self.entries.clear();
        self.persisted = 0;
        self.dirty = true;
    }

    /// Keeps only the transactions whose markers are below `offset` (Kafka's
    /// `TransactionIndex.truncateTo`).
    pub fn truncate_to(&mut self, offset: i64) {
        let keep = self.entries.partition_point(|e| e.last_offset < offset);
        if keep < self.entries.len() {
            self.entries.truncate(keep);
            self.persisted = self.persisted.min(keep);
            self.dirty = true;
        }
    }

    /// The aborted transactions overlapping `[fetch_offset, upper_bound_offset)`, and
    /// whether the search is complete: an entry's last stable offset reached the upper
    /// bound, so no later segment can hold one (Kafka's `collectAbortedTxns`).
    pub fn collect_aborted(
        &self,
        fetch_offset: i64,
        upper_bound_offset: i64,
        out: &mut Vec<TxnEntry>,
    ) -> bool {
        for entry in &self.entries {
            if entry.last_offset >= fetch_offset && entry.first_offset < upper_bound_offset {
                out.push(*entry);
            }
            if entry.last_stable_offset >= upper_bound_offset {
                return true;
            }
        }
        false
    }

    /// Writes what changed to `path`; an empty index removes the file.
    pub fn persist(&mut self, path: &Path) -> std::io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        if self.entries.is_empty() {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            self.persisted = 0;
        } else {
            let mut clean = false;
            persist_entries(
                path,
                &self.entries,
                &mut self.persisted,
                &mut clean,
                TXN_ENTRY_BYTES,
                |e, out| {
                    out.extend_from_slice(&TXN_ENTRY_VERSION.to_be_bytes());
                    out.extend_from_slice(&e.producer_id.to_be_bytes());
                    out.extend_from_slice(&e.first_offset.to_be_bytes());
                    out.extend_from_slice(&e.last_offset.to_be_bytes());
                    out.extend_from_slice(&e.last_stable_offset.to_be_bytes());
                },
            )?;
        }
        self.dirty = false;
        Ok(())
    }
}

fn read_or_empty(path: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn persist_entries<T>(
    path: &Path,
    entries: &[T],
    persisted: &mut usize,
    clean: &mut bool,
    entry_bytes: usize,
    encode: impl Fn(&T, &mut Vec<u8>),
) -> std::io::Result<()> {
    if *clean && *persisted == entries.len() {
        return Ok(());
    }
    let on_disk = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let expected = (*persisted * entry_bytes) as u64;
    let mut file = File::options()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    if on_disk != expected {
        file.set_len(expected)?;
    }
    if *persisted == entries.len() && on_disk == expected {
        *clean = true;
        return Ok(());
    }
    let mut out = Vec::with_capacity((entries.len() - *persisted) * entry_bytes);
    for entry in &entries[*persisted..] {
        encode(entry, &mut out);
    }
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(expected))?;
    file.write_all(&out)?;
    file.sync_data()?;
    *persisted = entries.len();
    *clean = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn offset_index_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut index = OffsetIndex::default();
        index.append(3, 4100);
        index.append(9, 8300);
        index.persist(&path).unwrap();
        index.append(15, 12000);
        index.persist(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 24);
        let (loaded, valid) = OffsetIndex::load(&path, 20000).unwrap();
        assert!(valid);
        assert_eq!(loaded.len(), 3);
        assert_eq!(loaded.lookup(0), 0);
        assert_eq!(loaded.lookup(3), 0);
        assert_eq!(loaded.lookup(4), 4100);
        assert_eq!(loaded.lookup(100), 12000);
        // An entry pointing past the segment end is dropped as invalid.
        let (short, valid) = OffsetIndex::load(&path, 10000).unwrap();
        assert!(!valid);
        assert_eq!(short.len(), 2);
    }

    #[test]
    fn truncated_index_is_rewritten_on_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut index = OffsetIndex::default();
        for i in 1..=4 {
            index.append(i * 10, i * 1000);
        }
        index.persist(&path).unwrap();
        index.truncate_to_position(2500);
        index.append(25, 2600);
        index.persist(&path).unwrap();
        let (loaded, valid) = OffsetIndex::load(&path, 1 << 20).unwrap();
        assert!(valid);
        assert_eq!(loaded.len(), 3);
        assert_eq!(
            loaded.last(),
            Some(OffsetEntry {
                relative_offset: 25,
                position: 2600
            })
        );
    }

    #[test]
    fn time_index_only_takes_newer_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.timeindex");
        let mut index = TimeIndex::default();
        index.maybe_append(100, 1);
        index.maybe_append(90, 2);
        index.maybe_append(200, 5);
        assert_eq!(index.len(), 2);
        assert_eq!(index.lookup(50), None);
        assert_eq!(index.lookup(150), Some(1));
        assert_eq!(index.lookup(1000), Some(5));
        index.persist(&path).unwrap();
        let (loaded, valid) = TimeIndex::load(&path).unwrap();
        assert!(valid);
        assert_eq!(loaded.len(), 2);
    }

    #[test]
    fn txn_index_round_trips_truncates_and_collects_like_kafka() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.txnindex");
        let entry = |pid, first, last, lso| TxnEntry {
            producer_id: pid,
            first_offset: first,
            last_offset: last,
            last_stable_offset: lso,
        };
        let mut index = TxnIndex::default();
        index.persist(&path).unwrap();
        assert!(!path.exists(), "no file for an empty index");
        index.append(entry(1, 0, 10, 11));
        index.append(entry(2, 5, 20, 5));
        index.append(entry(3, 15, 30, 31));
        index.persist(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * 34);
        let (loaded, valid) = TxnIndex::load(&path).unwrap();
        assert!(valid);
        assert_eq!(loaded.entries(), index.entries());
        // [12, 25): entries 2 and 3 overlap it; entry 3's last stable offset ends the search.
        let mut out = Vec::new();
        assert!(loaded.collect_aborted(12, 25, &mut out));
        assert_eq!(
            out.iter().map(|e| e.producer_id).collect::<Vec<_>>(),
            [2, 3]
        );
        // Past every entry's last stable offset: incomplete, later segments may hold more.
        out.clear();
        assert!(!loaded.collect_aborted(31, 40, &mut out));
        assert!(out.is_empty());
        index.truncate_to(20);
        index.persist(&path).unwrap();
        let (loaded, valid) = TxnIndex::load(&path).unwrap();
        assert!(valid);
        assert_eq!(loaded.entries(), &[entry(1, 0, 10, 11)]);
        index.reset();
        index.persist(&path).unwrap();
        assert!(!path.exists());
    }

    proptest! {
        /// Model check: lookup returns the position of the last entry below the target.
        #[test]
        fn offset_lookup_matches_a_linear_model(gaps in proptest::collection::vec(1u32..50, 0..40), target in 0u32..2000) {
            let mut index = OffsetIndex::default();
            let mut model = Vec::new();
            let mut offset = 0;
            for (i, gap) in gaps.iter().enumerate() {
                offset += gap;
                index.append(offset, (i as u32 + 1) * 100);
                model.push((offset, (i as u32 + 1) * 100));
            }
            let expected = model.iter().rev().find(|(o, _)| *o < target).map(|(_, p)| *p).unwrap_or(0);
            prop_assert_eq!(index.lookup(target), expected);
        }
    }
}
