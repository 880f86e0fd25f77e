//! [`PartitionLog`]: the segments of one partition, its offsets and its recovery.
//!
//! Concurrency: one writer at a time (the `writer` mutex) appends to the active segment;
//! readers take a snapshot of the published [`View`] (segment list, offsets, the byte position
//! of the high watermark) under a short read lock and then read files without any lock the
//! writer needs. The writer publishes a new view only after the bytes are in the file.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use strom_protocol::batch::{self, BatchInfo, BATCH_HEADER_BYTES, PATCHED_PREFIX_BYTES};
use tracing::{info, warn};

use crate::segment::{index_batch, FileSlice, LogSegment};
use crate::StorageError;

/// The settings of one log, by Kafka's topic config names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the active segment's first batch is older than this.
    pub segment_ms: i64,
    /// `flush.messages`: fsync after this many messages (`i64::MAX`: only on the interval).
    pub flush_messages: i64,
    /// `index.interval.bytes`: bytes between offset index entries.
    pub index_interval_bytes: u64,
    /// `segment.index.bytes`: roll when the offset index would exceed this.
    pub segment_index_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            flush_messages: i64::MAX,
            index_interval_bytes: 4096,
            segment_index_bytes: 10 << 20,
        }
    }
}

/// What an append assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub first_offset: i64,
    pub last_offset: i64,
    pub log_start_offset: i64,
}

/// The three offsets a client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOffsets {
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub high_watermark: i64,
}

/// The result of a read: a file range (if any bytes are readable) and the offsets at the time.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub slice: Option<FileSlice>,
    pub offsets: LogOffsets,
}

/// The answer to a timestamp lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    pub offset: i64,
    pub timestamp: i64,
    pub leader_epoch: i32,
}

/// The state readers see, published by the writer after each change.
#[derive(Debug, Clone)]
struct View {
    segments: Arc<Vec<Arc<LogSegment>>>,
    offsets: LogOffsets,
    /// Segment base offset and byte position just past the last batch below the high watermark.
    high_watermark_segment: i64,
    high_watermark_position: u64,
}

#[derive(Debug)]
struct Writer {
    active: Arc<LogSegment>,
    next_offset: i64,
    /// End offset, segment base and end position of appended batches above the high
    /// watermark, so the high watermark's byte position is known without a scan.
    above_high_watermark: VecDeque<(i64, i64, u64)>,
    unflushed_messages: i64,
    closed: bool,
}

/// One partition's log.
#[derive(Debug)]
pub struct PartitionLog {
    topic: String,
    partition: i32,
    dir: PathBuf,
    config: RwLock<LogConfig>,
    writer: Mutex<Writer>,
    view: RwLock<View>,
    recovery_point: AtomicI64,
}

impl PartitionLog {
    /// Opens (creating if needed) the log in `dir`, recovering what is past `recovery_point`
    /// unless the previous shutdown was clean.
    pub fn open(
        dir: &Path,
        topic: &str,
        partition: i32,
        config: LogConfig,
        recovery_point: i64,
        clean_shutdown: bool,
        now_ms: i64,
    ) -> Result<PartitionLog, StorageError> {
        std::fs::create_dir_all(dir)?;
        let bases = list_segments(dir)?;
        let mut segments: Vec<Arc<LogSegment>> = Vec::with_capacity(bases.len().max(1));
        let mut next_offset = None;
        for (i, &base) in bases.iter().enumerate() {
            let segment = LogSegment::open(dir, base, now_ms)?;
            let fully_flushed = bases
                .get(i + 1)
                .is_some_and(|&next_base| next_base <= recovery_point);
            let (segment_next, truncated) = if clean_shutdown || fully_flushed {
                (load_indexes(&segment, config.index_interval_bytes)?, 0)
            } else {
                segment.recover(config.index_interval_bytes)?
            };
            if truncated > 0 {
                warn!(
                    topic,
                    partition,
                    base_offset = base,
                    truncated_bytes = truncated,
                    "truncated a torn log tail during recovery"
                );
            }
            segments.push(Arc::new(segment));
            next_offset = segment_next.or(next_offset).or(Some(base));
            if truncated > 0 {
                for &later in &bases[i + 1..] {
                    warn!(
                        topic,
                        partition,
                        base_offset = later,
                        "deleting segment after a truncated tail"
                    );
                    LogSegment::open(dir, later, now_ms)?.delete_files()?;
                }
                break;
            }
        }
        if segments.is_empty() {
            segments.push(Arc::new(LogSegment::create(dir, 0, now_ms)?));
        }
        let active = Arc::clone(segments.last().expect("at least one segment"));
        let next_offset = next_offset
            .unwrap_or(active.base_offset())
            .max(active.base_offset());
        let log_start_offset = segments[0].base_offset();
        if !clean_shutdown {
            info!(
                topic,
                partition,
                log_end_offset = next_offset,
                "recovered log"
            );
        }
        // A log opened as the only replica has nothing to wait for: its high watermark is
        // its log end. Replication moves it explicitly.
        let view = View {
            offsets: LogOffsets {
                log_start_offset,
                log_end_offset: next_offset,
                high_watermark: next_offset,
            },
            high_watermark_segment: active.base_offset(),
            high_watermark_position: active.size_bytes(),
            segments: Arc::new(segments),
        };
        Ok(PartitionLog {
            topic: topic.to_string(),
            partition,
            dir: dir.to_path_buf(),
            config: RwLock::new(config),
            writer: Mutex::new(Writer {
                active,
                next_offset,
                above_high_watermark: VecDeque::new(),
                unflushed_messages: 0,
                closed: false,
            }),
            view: RwLock::new(view),
            recovery_point: AtomicI64::new(next_offset),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn offsets(&self) -> LogOffsets {
        self.view.read().offsets
    }

    /// The offset below which the log is known to be fsynced.
    pub fn recovery_point(&self) -> i64 {
        self.recovery_point.load(Ordering::Acquire)
    }

    pub fn set_config(&self, config: LogConfig) {
        *self.config.write() = config;
    }

    pub fn segment_count(&self) -> usize {
        self.view.read().segments.len()
    }

    /// Appends validated producer batches, assigning offsets from the log end and stamping
    /// `leader_epoch`. `records` is the partition's records field; `batches` its validation.
    pub fn append_as_leader(
        &self,
        records: &[u8],
        batches: &[BatchInfo],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, StorageError> {
        let config = self.config.read().clone();
        let mut writer = self.writer.lock();
        if writer.closed {
            return Err(StorageError::Closed);
        }
        let message_count: i64 = batches.iter().map(|b| i64::from(b.records_count)).sum();
        if self.should_roll(
            &writer,
            &config,
            records.len() as u64,
            message_count,
            now_ms,
        ) {
            self.roll(&mut writer, now_ms)?;
        }
        let active = Arc::clone(&writer.active);
        let first_offset = writer.next_offset;
        let mut prefixes = Vec::with_capacity(batches.len());
        let mut next = first_offset;
        for b in batches {
            prefixes.push(batch::patched_prefix(next, b.size_bytes, leader_epoch));
            next += i64::from(b.records_count);
        }
        let mut slices = Vec::with_capacity(batches.len() * 2);
        for (b, prefix) in batches.iter().zip(&prefixes) {
            slices.push(IoSlice::new(prefix));
            slices.push(IoSlice::new(
                &records[b.position + PATCHED_PREFIX_BYTES..b.position + b.size_bytes],
            ));
        }
        let start_position = active.size_bytes();
        let end_position = active.append_vectored(&mut slices, start_position)?;
        {
            let mut indexes = active.indexes.lock();
            let mut position = start_position;
            let mut base = first_offset;
            for b in batches {
                let offsets = batch::BatchOffsets {
                    base_offset: base,
                    size_bytes: b.size_bytes,
                    leader_epoch,
                    last_offset_delta: b.last_offset_delta,
                };
                index_batch(
                    &mut indexes,
                    active.base_offset(),
                    &offsets,
                    position,
                    b.max_timestamp,
                    config.index_interval_bytes,
                );
                position += b.size_bytes as u64;
                base += i64::from(b.records_count);
            }
        }
        writer.next_offset = next;
        writer
            .above_high_watermark
            .push_back((next, active.base_offset(), end_position));
        writer.unflushed_messages += message_count;
        let log_start_offset = {
            let mut view = self.view.write();
            view.offsets.log_end_offset = next;
            view.offsets.log_start_offset
        };
        if writer.unflushed_messages >= config.flush_messages {
            active.flush()?;
            writer.unflushed_messages = 0;
            self.recovery_point.fetch_max(next, Ordering::AcqRel);
        }
        Ok(AppendInfo {
            first_offset,
            last_offset: next - 1,
            log_start_offset,
        })
    }

    fn should_roll(
        &self,
        writer: &Writer,
        config: &LogConfig,
        bytes: u64,
        messages: i64,
        now_ms: i64,
    ) -> bool {
        let active = &writer.active;
        let size = active.size_bytes();
        if size == 0 {
            return false;
        }
        let index_entries = active.indexes.lock().offset_index.len() as u64;
        let index_full = (index_entries + 1) * crate::index::OFFSET_ENTRY_BYTES as u64
            > config.segment_index_bytes;
        let offsets_overflow =
            writer.next_offset + messages - active.base_offset() > i64::from(i32::MAX);
        size + bytes > config.segment_bytes
            || now_ms - active.created_ms > config.segment_ms
            || index_full
            || offsets_overflow
    }

    fn roll(&self, writer: &mut Writer, now_ms: i64) -> Result<(), StorageError> {
        seal(&writer.active);
        let segment = Arc::new(LogSegment::create(&self.dir, writer.next_offset, now_ms)?);
        info!(topic = %self.topic, partition = self.partition, base_offset = writer.next_offset, "rolled new segment");
        let mut view = self.view.write();
        let mut segments = Vec::clone(&view.segments);
        segments.push(Arc::clone(&segment));
        view.segments = Arc::new(segments);
        drop(view);
        writer.active = segment;
        Ok(())
    }

    /// Moves the high watermark forward to `high_watermark` (never back, never past the log end).
    pub fn update_high_watermark(&self, high_watermark: i64) {
        let mut writer = self.writer.lock();
        let mut target = None;
        while let Some(&(end_offset, base, position)) = writer.above_high_watermark.front() {
            if end_offset > high_watermark {
                break;
            }
            target = Some((end_offset, base, position));
            writer.above_high_watermark.pop_front();
        }
        if let Some((end_offset, base, position)) = target {
            let mut view = self.view.write();
            if end_offset > view.offsets.high_watermark {
                view.offsets.high_watermark = end_offset;
                view.high_watermark_segment = base;
                view.high_watermark_position = position;
            }
        }
    }

    /// Reads from `fetch_offset` up to the high watermark: at most `max_bytes`, or the whole
    /// first batch when `min_one_batch` and it is larger (KIP-74). A trailing partial batch is
    /// allowed, as in Kafka; clients skip it.
    pub fn read(
        &self,
        fetch_offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
    ) -> Result<ReadResult, StorageError> {
        let view = self.view.read().clone();
        let offsets = view.offsets;
        if fetch_offset < offsets.log_start_offset || fetch_offset > offsets.log_end_offset {
            return Err(StorageError::OffsetOutOfRange {
                offset: fetch_offset,
                log_start_offset: offsets.log_start_offset,
                log_end_offset: offsets.log_end_offset,
            });
        }
        if fetch_offset >= offsets.high_watermark || (max_bytes == 0 && !min_one_batch) {
            return Ok(ReadResult {
                slice: None,
                offsets,
            });
        }
        let first = view
            .segments
            .partition_point(|s| s.base_offset() <= fetch_offset)
            .saturating_sub(1);
        for segment in &view.segments[first..] {
            if segment.base_offset() > view.high_watermark_segment {
                break;
            }
            let limit = if segment.base_offset() == view.high_watermark_segment {
                view.high_watermark_position
            } else {
                segment.size_bytes()
            };
            if let Some((position, batch)) = segment.find_batch(fetch_offset, limit)? {
                let available = (limit - position) as usize;
                let mut len = available.min(max_bytes);
                if min_one_batch && len < batch.size_bytes {
                    len = batch.size_bytes;
                }
                let slice = FileSlice {
                    segment: Arc::clone(segment),
                    position,
                    len,
                };
                return Ok(ReadResult {
                    slice: Some(slice),
                    offsets,
                });
            }
        }
        Ok(ReadResult {
            slice: None,
            offsets,
        })
    }

    /// The first record with a timestamp at or after `timestamp`, below the high watermark.
    pub fn offset_for_timestamp(
        &self,
        timestamp: i64,
    ) -> Result<Option<TimestampOffset>, StorageError> {
        let view = self.view.read().clone();
        for segment in view.segments.iter() {
            if segment.base_offset() > view.high_watermark_segment {
                break;
            }
            let (max_ts, start) = {
                let indexes = segment.indexes.lock();
                let start_relative = indexes.time_index.lookup(timestamp).unwrap_or(0);
                (
                    indexes.max_timestamp,
                    indexes.offset_index.lookup(start_relative),
                )
            };
            if max_ts < timestamp {
                continue;
            }
            let limit = self.limit_of(&view, segment);
            let mut position = u64::from(start);
            while let Some(found) = read_batch_header(segment, position, limit)? {
                if found.max_timestamp >= timestamp {
                    let bytes = read_batch(segment, position, found.size_bytes)?;
                    return Ok(first_record_at_or_after(
                        &bytes,
                        timestamp,
                        found.leader_epoch,
                    ));
                }
                position += found.size_bytes as u64;
            }
        }
        Ok(None)
    }

    /// The record with the largest timestamp (KIP-734), below the high watermark.
    pub fn max_timestamp_offset(&self) -> Result<Option<TimestampOffset>, StorageError> {
        let view = self.view.read().clone();
        let mut best: Option<(i64, Arc<LogSegment>)> = None;
        for segment in view.segments.iter() {
            let max_ts = segment.indexes.lock().max_timestamp;
            if max_ts >= 0 && best.as_ref().is_none_or(|(ts, _)| max_ts > *ts) {
                best = Some((max_ts, Arc::clone(segment)));
            }
        }
        let Some((max_ts, segment)) = best else {
            return Ok(None);
        };
        let limit = self.limit_of(&view, &segment);
        let mut position = 0;
        while let Some(found) = read_batch_header(&segment, position, limit)? {
            if found.max_timestamp == max_ts {
                let bytes = read_batch(&segment, position, found.size_bytes)?;
                return Ok(first_record_at_or_after(&bytes, max_ts, found.leader_epoch));
            }
            position += found.size_bytes as u64;
        }
        Ok(None)
    }

    fn limit_of(&self, view: &View, segment: &LogSegment) -> u64 {
        if segment.base_offset() == view.high_watermark_segment {
            view.high_watermark_position
        } else if segment.base_offset() > view.high_watermark_segment {
            0
        } else {
            segment.size_bytes()
        }
    }

    /// Fsyncs every segment written since the last flush and returns the new recovery point.
    pub fn flush(&self) -> Result<i64, StorageError> {
        let (log_end_offset, segments) = {
            let view = self.view.read();
            (view.offsets.log_end_offset, Arc::clone(&view.segments))
        };
        let recovery_point = self.recovery_point();
        let first = segments
            .partition_point(|s| s.base_offset() <= recovery_point)
            .saturating_sub(1);
        for segment in &segments[first..] {
            segment.flush()?;
        }
        self.recovery_point
            .fetch_max(log_end_offset, Ordering::AcqRel);
        Ok(self.recovery_point())
    }

    /// Stops appends, seals the active segment's time index and flushes everything.
    pub fn close(&self) -> Result<i64, StorageError> {
        {
            let mut writer = self.writer.lock();
            writer.closed = true;
            seal(&writer.active);
        }
        self.flush()
    }

    /// Closes the log and removes its directory.
    pub fn delete(&self) -> Result<(), StorageError> {
        self.writer.lock().closed = true;
        std::fs::remove_dir_all(&self.dir)?;
        Ok(())
    }
}

/// Adds the final time index entry of a segment that stops being active (Kafka's
/// `onBecomeInactiveSegment`), so its largest timestamp survives a restart.
fn seal(segment: &LogSegment) {
    let mut indexes = segment.indexes.lock();
    if indexes.offset_of_max_timestamp >= 0 {
        let (ts, offset) = (indexes.max_timestamp, indexes.offset_of_max_timestamp);
        indexes
            .time_index
            .maybe_append(ts, (offset - segment.base_offset()) as u32);
    }
}

/// Loads a closed segment's indexes from their files; rebuilds them if they are invalid.
/// Returns the offset after the segment's last batch.
fn load_indexes(
    segment: &LogSegment,
    index_interval_bytes: u64,
) -> Result<Option<i64>, StorageError> {
    let (offset_index, offset_ok) =
        crate::index::OffsetIndex::load(&segment.index_path(), segment.size_bytes())?;
    let (time_index, time_ok) = crate::index::TimeIndex::load(&segment.time_index_path())?;
    if !offset_ok || !time_ok {
        warn!(path = %segment.log_path().display(), "index file invalid; rebuilding");
        return Ok(segment.recover(index_interval_bytes)?.0);
    }
    let last_position = offset_index.last().map_or(0, |e| u64::from(e.position));
    {
        let mut indexes = segment.indexes.lock();
        // The sealed last time index entry holds the segment's largest timestamp; the scan
        // below covers batches appended after the last entries.
        if let Some(last) = time_index.last() {
            indexes.max_timestamp = last.timestamp;
            indexes.offset_of_max_timestamp =
                segment.base_offset() + i64::from(last.relative_offset);
        }
        indexes.offset_index = offset_index;
        indexes.time_index = time_index;
    }
    // Scan from the last indexed batch to the end for the next offset and the tail's
    // timestamps (the sealed time index entry covers a clean segment's maximum).
    let mut position = last_position;
    let mut next = None;
    let limit = segment.size_bytes();
    while let Some(header) = read_batch_header(segment, position, limit)? {
        let mut indexes = segment.indexes.lock();
        if header.max_timestamp > indexes.max_timestamp {
            indexes.max_timestamp = header.max_timestamp;
            indexes.offset_of_max_timestamp = header.last_offset;
        }
        position += header.size_bytes as u64;
        next = Some(header.last_offset + 1);
    }
    segment.indexes.lock().bytes_since_last_index_entry = position - last_position;
    if position != limit {
        return Err(StorageError::Corrupt {
            path: segment.log_path().display().to_string(),
            reason: format!(
                "segment ends mid-batch at {position} of {limit} after a clean shutdown"
            ),
        });
    }
    Ok(next)
}

#[derive(Debug, Clone, Copy)]
struct BatchHeader {
    size_bytes: usize,
    last_offset: i64,
    max_timestamp: i64,
    leader_epoch: i32,
}

fn read_batch_header(
    segment: &LogSegment,
    position: u64,
    limit: u64,
) -> Result<Option<BatchHeader>, StorageError> {
    if position + BATCH_HEADER_BYTES as u64 > limit {
        return Ok(None);
    }
    let mut head = [0u8; BATCH_HEADER_BYTES];
    segment.read_exact_at(&mut head, position)?;
    let Some(offsets) = batch::BatchOffsets::parse(&head) else {
        return Ok(None);
    };
    if position + offsets.size_bytes as u64 > limit {
        return Ok(None);
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&head[35..43]);
    Ok(Some(BatchHeader {
        size_bytes: offsets.size_bytes,
        last_offset: offsets.last_offset(),
        max_timestamp: i64::from_be_bytes(ts),
        leader_epoch: offsets.leader_epoch,
    }))
}

fn read_batch(
    segment: &LogSegment,
    position: u64,
    size_bytes: usize,
) -> Result<Vec<u8>, StorageError> {
    let mut bytes = vec![0u8; size_bytes];
    segment.read_exact_at(&mut bytes, position)?;
    Ok(bytes)
}

/// Decodes a stored batch (decompressing it if needed) and finds its first record with a
/// timestamp at or after `timestamp`.
fn first_record_at_or_after(
    batch_bytes: &[u8],
    timestamp: i64,
    leader_epoch: i32,
) -> Option<TimestampOffset> {
    let mut buf = bytes::Bytes::copy_from_slice(batch_bytes);
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).ok()?;
    set.records
        .iter()
        .find(|r| r.timestamp >= timestamp)
        .map(|r| TimestampOffset {
            offset: r.offset,
            timestamp: r.timestamp,
            leader_epoch,
        })
}

/// Base offsets of the `.log` files in `dir`, sorted; removes leftovers of interrupted work.
fn list_segments(dir: &Path) -> Result<Vec<i64>, StorageError> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".tmp")
            || name.ends_with(".swap")
            || name.ends_with(".cleaned")
            || name.ends_with(".deleted")
        {
            std::fs::remove_file(&path)?;
            continue;
        }
        if let Some(stem) = name.strip_suffix(".log") {
            if let Ok(base) = stem.parse::<i64>() {
                bases.push(base);
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}
