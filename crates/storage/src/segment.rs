//! One segment: a `.log` file of record batches plus its two sparse indexes.

use std::fs::File;
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use strom_protocol::batch::{self, BatchOffsets, BATCH_HEADER_BYTES, OFFSET_RANGE_BYTES};

use crate::index::{OffsetIndex, TimeIndex, TxnIndex};
use crate::{file_name, StorageError};

/// Largest batch recovery will read back; anything claiming more is a torn or corrupt tail.
pub const RECOVERY_BATCH_BYTES_MAX: usize = 256 << 20;

/// Index state of a segment, guarded together.
#[derive(Debug, Default)]
pub(crate) struct SegmentIndexes {
    pub offset_index: OffsetIndex,
    pub time_index: TimeIndex,
    pub bytes_since_last_index_entry: u64,
    /// Largest record timestamp in the segment and the last offset of its batch.
    pub max_timestamp: i64,
    pub offset_of_max_timestamp: i64,
    /// The aborted transactions whose markers are in the segment.
    pub txn_index: TxnIndex,
}

/// A `.log` file and its indexes. Readers use `pread`/`sendfile` on the shared file
/// descriptor; only the log's writer appends.
#[derive(Debug)]
pub struct LogSegment {
    base_offset: i64,
    dir: PathBuf,
    file: File,
    size_bytes: AtomicU64,
    dirty: AtomicBool,
    /// Set (under the index lock) when the files are removed, so a flush that raced the
    /// removal does not write the index files back.
    deleted: AtomicBool,
    pub(crate) indexes: Mutex<SegmentIndexes>,
    /// When this process created or opened the segment: the clock for `segment.ms`.
    pub(crate) created_ms: i64,
}

impl LogSegment {
    /// Creates a new, empty segment file.
    pub(crate) fn create(
        dir: &Path,
        base_offset: i64,
        now_ms: i64,
    ) -> Result<LogSegment, StorageError> {
        let path = dir.join(file_name(base_offset, "log"));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Self::with_file(dir, base_offset, file, 0, now_ms))
    }

    /// Creates the log cleaner's output `<base>.log<suffix>` (`.cleaned`); the swap renames
    /// it (and the index files [`LogSegment::flush_with_suffix`] wrote) into place while the
    /// descriptor stays open.
    pub(crate) fn create_with_suffix(
        dir: &Path,
        base_offset: i64,
        suffix: &str,
        now_ms: i64,
    ) -> Result<LogSegment, StorageError> {
        let path = dir.join(format!("{}{suffix}", file_name(base_offset, "log")));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Self::with_file(dir, base_offset, file, 0, now_ms))
    }

    /// Opens an existing segment file (indexes are loaded or rebuilt by the caller).
    pub(crate) fn open(
        dir: &Path,
        base_offset: i64,
        now_ms: i64,
    ) -> Result<LogSegment, StorageError> {
        let path = dir.join(file_name(base_offset, "log"));
        let file = File::options().read(true).write(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self::with_file(dir, base_offset, file, size, now_ms))
    }

    fn with_file(dir: &Path, base_offset: i64, file: File, size: u64, now_ms: i64) -> LogSegment {
        LogSegment {
            base_offset,
            dir: dir.to_path_buf(),
            file,
            size_bytes: AtomicU64::new(size),
            dirty: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            indexes: Mutex::new(SegmentIndexes {
                max_timestamp: -1,
                offset_of_max_timestamp: -1,
                ..Default::default()
            }),
            created_ms: now_ms,
        }
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::Acquire)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(file_name(self.base_offset, "log"))
    }

    pub fn index_path(&self) -> PathBuf {
        self.dir.join(file_name(self.base_offset, "index"))
    }

    pub fn time_index_path(&self) -> PathBuf {
        self.dir.join(file_name(self.base_offset, "timeindex"))
    }

    pub fn txn_index_path(&self) -> PathBuf {
        self.dir.join(file_name(self.base_offset, "txnindex"))
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Writes all of `bufs` at `position` (the current end) and publishes the new size.
    pub(crate) fn append_vectored(
        &self,
        mut bufs: &mut [IoSlice<'_>],
        position: u64,
    ) -> std::io::Result<u64> {
        let mut at = position;
        while !bufs.is_empty() {
            let written = match pwritev(&self.file, bufs, at) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => other?,
            };
            if written == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "segment write returned 0",
                ));
            }
            at += written as u64;
            IoSlice::advance_slices(&mut bufs, written);
        }
        self.size_bytes.store(at, Ordering::Release);
        self.dirty.store(true, Ordering::Release);
        Ok(at)
    }

    /// Reads exactly `buf.len()` bytes at `position`.
    pub fn read_exact_at(&self, buf: &mut [u8], position: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, position)
    }

    /// The offsets of the batch starting at `position`, if one is readable below `limit`.
    /// A file shorter than `limit` (cut by a truncation after the caller took its view of
    /// the log) ends the batches there.
    pub(crate) fn batch_at(
        &self,
        position: u64,
        limit: u64,
    ) -> Result<Option<BatchOffsets>, StorageError> {
        if position + OFFSET_RANGE_BYTES as u64 > limit {
            return Ok(None);
        }
        let mut head = [0u8; OFFSET_RANGE_BYTES];
        if !self.read_exact_or_eof(&mut head, position)? {
            return Ok(None);
        }
        let offsets = BatchOffsets::parse(&head)
            .ok_or_else(|| self.corrupt(position, "unreadable batch header"))?;
        if position + offsets.size_bytes as u64 > limit {
            return Ok(None);
        }
        Ok(Some(offsets))
    }

    /// The header fields of the batch starting at `position`, if one is readable below
    /// `limit`; `None` also for bytes that cannot be a batch header, or past a cut file.
    pub(crate) fn batch_header_at(
        &self,
        position: u64,
        limit: u64,
    ) -> Result<Option<BatchHeader>, StorageError> {
        if position + BATCH_HEADER_BYTES as u64 > limit {
            return Ok(None);
        }
        let mut head = [0u8; BATCH_HEADER_BYTES];
        if !self.read_exact_or_eof(&mut head, position)? {
            return Ok(None);
        }
        let Some(offsets) = BatchOffsets::parse(&head) else {
            return Ok(None);
        };
        if position + offsets.size_bytes as u64 > limit {
            return Ok(None);
        }
        Ok(Some(BatchHeader {
            offsets,
            max_timestamp: max_timestamp_of(&head),
        }))
    }

    /// Reads exactly `buf.len()` bytes at `position`; `false` if the file ends first.
    fn read_exact_or_eof(&self, buf: &mut [u8], position: u64) -> std::io::Result<bool> {
        match self.read_exact_at(buf, position) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Finds the first batch whose last offset is at least `target_offset`, scanning from
    /// the index position; only batches that end at or before `limit` are considered.
    pub(crate) fn find_batch(
        &self,
        target_offset: i64,
        limit: u64,
    ) -> Result<Option<(u64, BatchOffsets)>, StorageError> {
        let relative = (target_offset - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        let mut position = u64::from(self.indexes.lock().offset_index.lookup(relative));
        while let Some(offsets) = self.batch_at(position, limit)? {
            if offsets.last_offset() >= target_offset {
                return Ok(Some((position, offsets)));
            }
            position += offsets.size_bytes as u64;
        }
        Ok(None)
    }

    /// Re-validates every batch from the start, rebuilding both indexes; truncates the file
    /// at the first batch that is torn or fails its CRC. Returns the next offset after the
    /// last valid batch (`None` if the segment holds no valid batch) and bytes truncated.
    pub(crate) fn recover(
        &self,
        index_interval_bytes: u64,
    ) -> Result<(Option<i64>, u64), StorageError> {
        let file_bytes = self.file.metadata()?.len();
        let mut indexes = self.indexes.lock();
        indexes.offset_index.clear();
        indexes.time_index.clear();
        indexes.bytes_since_last_index_entry = 0;
        indexes.max_timestamp = -1;
        indexes.offset_of_max_timestamp = -1;
        let mut position = 0u64;
        let mut next_offset = None;
        let mut buf = Vec::new();
        let mut head = [0u8; BATCH_HEADER_BYTES];
        while position + BATCH_HEADER_BYTES as u64 <= file_bytes {
            self.read_exact_at(&mut head, position)?;
            let Some(offsets) = BatchOffsets::parse(&head) else {
                break;
            };
            if offsets.size_bytes > RECOVERY_BATCH_BYTES_MAX
                || position + offsets.size_bytes as u64 > file_bytes
            {
                break;
            }
            buf.resize(offsets.size_bytes, 0);
            self.read_exact_at(&mut buf, position)?;
            if batch::check_stored(&buf).is_err() {
                break;
            }
            let max_timestamp = max_timestamp_of(&buf);
            index_batch(
                &mut indexes,
                self.base_offset,
                &offsets,
                position,
                max_timestamp,
                index_interval_bytes,
            );
            position += offsets.size_bytes as u64;
            next_offset = Some(offsets.last_offset() + 1);
        }
        let truncated = file_bytes - position;
        if truncated > 0 {
            self.file.set_len(position)?;
            self.file.sync_data()?;
        }
        self.size_bytes.store(position, Ordering::Release);
        Ok((next_offset, truncated))
    }

    /// Cuts the file at `position`, the start of the batch holding `end_offset` (or the end
    /// of the segment's batches), and drops the index entries past it (Kafka's
    /// `LogSegment.truncateTo`). The cut is fsynced at once: removed records must not come
    /// back after a crash, since the log may already hold different ones at those offsets.
    pub(crate) fn truncate_to(&self, position: u64, end_offset: i64) -> Result<(), StorageError> {
        debug_assert!(position <= self.size_bytes());
        self.file.set_len(position)?;
        self.file.sync_data()?;
        self.size_bytes.store(position, Ordering::Release);
        let mut indexes = self.indexes.lock();
        indexes.offset_index.truncate_to_position(position);
        indexes.txn_index.truncate_to(end_offset);
        let relative = (end_offset - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        indexes.time_index.truncate_to_offset(relative);
        // Every remaining time index entry holds the largest timestamp of a prefix of the
        // remaining batches (its offset is that of a batch below the cut); the batches from
        // the last offset index entry on are scanned, a bounded tail of
        // `index.interval.bytes` plus a batch.
        let (mut max_timestamp, mut offset_of_max_timestamp) =
            indexes.time_index.last().map_or((-1, -1), |e| {
                (e.timestamp, self.base_offset + i64::from(e.relative_offset))
            });
        let last_indexed = indexes
            .offset_index
            .last()
            .map_or(0, |e| u64::from(e.position));
        let mut at = last_indexed;
        while let Some(header) = self.batch_header_at(at, position)? {
            if header.max_timestamp > max_timestamp {
                max_timestamp = header.max_timestamp;
                offset_of_max_timestamp = header.offsets.last_offset();
            }
            at += header.offsets.size_bytes as u64;
        }
        if at != position {
            return Err(self.corrupt(at, "unreadable batch before a truncation point"));
        }
        indexes.max_timestamp = max_timestamp;
        indexes.offset_of_max_timestamp = offset_of_max_timestamp;
        indexes.bytes_since_last_index_entry = position - last_indexed;
        Ok(())
    }

    /// Fsyncs the data if anything was appended since the last flush, then the indexes.
    pub(crate) fn flush(&self) -> Result<(), StorageError> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            self.file.sync_data()?;
        }
        let mut indexes = self.indexes.lock();
        if self.deleted.load(Ordering::Acquire) {
            return Ok(());
        }
        let (index_path, time_path) = (self.index_path(), self.time_index_path());
        indexes.offset_index.persist(&index_path)?;
        indexes.time_index.persist(&time_path)?;
        indexes.txn_index.persist(&self.txn_index_path())?;
        Ok(())
    }

    /// Fsyncs the data and writes the indexes to `<base>.index<suffix>`,
    /// `<base>.timeindex<suffix>` (and `<base>.txnindex<suffix>` when it has entries): the
    /// cleaner's output before its swap. Once written, a
    /// later [`flush`](Self::flush) finds the indexes unchanged and writes nothing.
    pub(crate) fn flush_with_suffix(&self, suffix: &str) -> Result<(), StorageError> {
        self.dirty.store(false, Ordering::Release);
        self.file.sync_data()?;
        let mut indexes = self.indexes.lock();
        let with_suffix = |path: PathBuf| PathBuf::from(format!("{}{suffix}", path.display()));
        indexes
            .offset_index
            .persist(&with_suffix(self.index_path()))?;
        indexes
            .time_index
            .persist(&with_suffix(self.time_index_path()))?;
        indexes
            .txn_index
            .persist(&with_suffix(self.txn_index_path()))?;
        Ok(())
    }

    /// Removes the segment's files (the open descriptor stays valid for in-flight reads).
    pub(crate) fn delete_files(&self) -> Result<(), StorageError> {
        let _indexes = self.indexes.lock();
        self.deleted.store(true, Ordering::Release);
        for path in [
            self.log_path(),
            self.index_path(),
            self.time_index_path(),
            self.txn_index_path(),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn corrupt(&self, position: u64, reason: &str) -> StorageError {
        StorageError::Corrupt {
            path: self.log_path().display().to_string(),
            reason: format!("{reason} at position {position}"),
        }
    }
}

/// The header fields of a stored batch that readers of the log need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchHeader {
    pub offsets: BatchOffsets,
    pub max_timestamp: i64,
}

/// The `max_timestamp` field of a batch header (at least [`BATCH_HEADER_BYTES`] long).
pub(crate) fn max_timestamp_of(header: &[u8]) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&header[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8]);
    i64::from_be_bytes(raw)
}

/// Where `max_timestamp` sits in a batch header.
const MAX_TIMESTAMP_OFFSET: usize = 35;

/// Adds index entries for one appended batch, as Kafka's `LogSegment.append` does.
pub(crate) fn index_batch(
    indexes: &mut SegmentIndexes,
    base_offset: i64,
    offsets: &BatchOffsets,
    position: u64,
    max_timestamp: i64,
    index_interval_bytes: u64,
) {
    let last_offset = offsets.last_offset();
    if max_timestamp > indexes.max_timestamp {
        indexes.max_timestamp = max_timestamp;
        indexes.offset_of_max_timestamp = last_offset;
    }
    if indexes.bytes_since_last_index_entry > index_interval_bytes {
        let relative = (last_offset - base_offset) as u32;
        indexes.offset_index.append(relative, position as u32);
        let (ts, ts_offset) = (indexes.max_timestamp, indexes.offset_of_max_timestamp);
        indexes
            .time_index
            .maybe_append(ts, (ts_offset - base_offset) as u32);
        indexes.bytes_since_last_index_entry = 0;
    }
    indexes.bytes_since_last_index_entry += offsets.size_bytes as u64;
}

fn pwritev(file: &File, bufs: &[IoSlice<'_>], position: u64) -> std::io::Result<usize> {
    let count = bufs.len().min(1024) as libc::c_int;
    // SAFETY: IoSlice is ABI-compatible with iovec; the fd is open for the call's duration.
    let written = unsafe {
        libc::pwritev(
            file.as_raw_fd(),
            bufs.as_ptr() as *const libc::iovec,
            count,
            position as libc::off_t,
        )
    };
    if written < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(written as usize)
}

/// A byte range of a segment file, sent to a socket with `sendfile` by the broker.
/// Holding it keeps the segment's descriptor open even if retention deletes the file.
#[derive(Debug, Clone)]
pub struct FileSlice {
    pub segment: Arc<LogSegment>,
    pub position: u64,
    pub len: usize,
}

impl FileSlice {
    /// Copies the bytes into memory (tests and the non-zero-copy fallback).
    pub fn read_to_vec(&self) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.len];
        self.segment.read_exact_at(&mut buf, self.position)?;
        Ok(buf)
    }
}
