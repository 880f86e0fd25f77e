//! A zero-copy view of Kafka record batches (magic v2) and their validation.
//!
//! Layout of the 61-byte batch header (all big-endian):
//! `base_offset i64 | batch_length i32 | partition_leader_epoch i32 | magic i8 | crc u32 |
//!  attributes i16 | last_offset_delta i32 | base_timestamp i64 | max_timestamp i64 |
//!  producer_id i64 | producer_epoch i16 | base_sequence i32 | records_count i32`.
//! The CRC32C covers everything from `attributes` to the end of the batch, so the broker can
//! patch `base_offset` and `partition_leader_epoch` in place without recomputing it.

/// Bytes of the header before the records.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes up to and including `batch_length`: the part that frames a batch in a log.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// Bytes of the prefix the broker rewrites: base offset, batch length, leader epoch.
pub const PATCHED_PREFIX_BYTES: usize = 16;
/// Bytes needed to learn a batch's offset range: through `last_offset_delta`.
pub const OFFSET_RANGE_BYTES: usize = 27;

const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
const BASE_TIMESTAMP_OFFSET: usize = 27;
const MAX_TIMESTAMP_OFFSET: usize = 35;
const PRODUCER_ID_OFFSET: usize = 43;
const PRODUCER_EPOCH_OFFSET: usize = 51;
const BASE_SEQUENCE_OFFSET: usize = 53;
const RECORDS_COUNT_OFFSET: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
/// Attributes bit 3: the batch's timestamps are the log append time.
const LOG_APPEND_TIME_FLAG: i16 = 0x08;
const TRANSACTIONAL_FLAG: i16 = 0x10;
const CONTROL_FLAG: i16 = 0x20;

/// Why a batch was refused; each maps to the Kafka error code a client expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch is truncated or its length field is invalid: {0}")]
    Corrupt(&'static str),
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unsupported record batch magic {0}; only magic v2 is accepted")]
    UnsupportedMagic(i8),
    #[error("invalid record batch: {0}")]
    Invalid(String),
    #[error("record batch of {size_bytes} bytes exceeds max.message.bytes {max_bytes}")]
    TooLarge { size_bytes: usize, max_bytes: usize },
    #[error("Timestamp {timestamp} of message is out of range. The timestamp should be within [{min}, {max}]")]
    TimestampOutOfRange { timestamp: i64, min: i64, max: i64 },
}

impl BatchError {
    /// The Kafka error code a produce of this batch is answered with.
    pub fn error_code(&self) -> i16 {
        use kafka_protocol::ResponseError as E;
        match self {
            BatchError::Corrupt(_) | BatchError::CrcMismatch { .. } => E::CorruptMessage.code(),
            BatchError::UnsupportedMagic(_) => E::UnsupportedForMessageFormat.code(),
            BatchError::Invalid(_) => E::InvalidRecord.code(),
            BatchError::TooLarge { .. } => E::MessageTooLarge.code(),
            BatchError::TimestampOutOfRange { .. } => E::InvalidTimestamp.code(),
        }
    }
}

/// The compression codec of a batch (attributes bits 0–2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// A validated batch inside a larger buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Position of the batch in the buffer it was found in.
    pub position: usize,
    /// Total bytes of the batch, header included.
    pub size_bytes: usize,
    pub records_count: i32,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    /// -1 for a producer without idempotence.
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The sequence number of the first record (-1 without idempotence).
    pub base_sequence: i32,
    pub compression: Compression,
    pub is_transactional: bool,
    pub is_control: bool,
}

/// The header fields a log reader needs, read from the first [`OFFSET_RANGE_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOffsets {
    pub base_offset: i64,
    /// Total bytes of the batch, header included.
    pub size_bytes: usize,
    pub leader_epoch: i32,
    pub last_offset_delta: i32,
}

impl BatchOffsets {
    /// Parses the start of a stored batch; `None` if the bytes cannot be a batch.
    pub fn parse(bytes: &[u8]) -> Option<BatchOffsets> {
        if bytes.len() < OFFSET_RANGE_BYTES {
            return None;
        }
        let batch_length = be_i32(bytes, 8);
        if batch_length < (BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32 {
            return None;
        }
        Some(BatchOffsets {
            base_offset: be_i64(bytes, 0),
            size_bytes: batch_length as usize + LOG_OVERHEAD_BYTES,
            leader_epoch: be_i32(bytes, 12),
            last_offset_delta: be_i32(bytes, LAST_OFFSET_DELTA_OFFSET),
        })
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
}

/// Whether the stored batch at the start of `bytes` (at least [`BATCH_HEADER_BYTES`]
/// long) belongs to an idempotent or transactional producer: a producer id is set.
pub fn has_producer_id(bytes: &[u8]) -> bool {
    bytes.len() >= BATCH_HEADER_BYTES && be_i64(bytes, PRODUCER_ID_OFFSET) >= 0
}

/// The rewritten first [`PATCHED_PREFIX_BYTES`] of a batch: base offset, length, leader epoch.
pub fn patched_prefix(base_offset: i64, size_bytes: usize, leader_epoch: i32) -> [u8; 16] {
    let mut prefix = [0u8; PATCHED_PREFIX_BYTES];
    prefix[0..8].copy_from_slice(&base_offset.to_be_bytes());
    prefix[8..12].copy_from_slice(&((size_bytes - LOG_OVERHEAD_BYTES) as i32).to_be_bytes());
    prefix[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    prefix
}

/// Stamps a validated producer batch with the log append time, as Kafka's
/// `setMaxTimestamp(LOG_APPEND_TIME, now)`: sets the timestamp type bit of its attributes and
/// its max timestamp to `now_ms`, then recomputes its CRC (which covers both).
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    debug_assert!(batch.len() >= BATCH_HEADER_BYTES);
    let attributes = be_i16(batch, ATTRIBUTES_OFFSET) | LOG_APPEND_TIME_FLAG;
    batch[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Checks a create-time batch against `message.timestamp.before.max.ms` and
/// `message.timestamp.after.max.ms` (KIP-937): its first and largest timestamps must lie
/// within `[now_ms - before_max_ms, now_ms + after_max_ms]`. Records without a timestamp
/// (-1) pass. Kafka checks every record; the header's two timestamps bound what producers
/// write (records are timestamped in append order), without decompressing the batch.
pub fn check_timestamps(
    batch: &BatchInfo,
    now_ms: i64,
    before_max_ms: i64,
    after_max_ms: i64,
) -> Result<(), BatchError> {
    let min = now_ms.saturating_sub(before_max_ms);
    let max = now_ms.saturating_add(after_max_ms);
    for timestamp in [batch.base_timestamp, batch.max_timestamp] {
        if timestamp >= 0 && !(min..=max).contains(&timestamp) {
            return Err(BatchError::TimestampOutOfRange {
                timestamp,
                min,
                max,
            });
        }
    }
    Ok(())
}

/// Validates every batch a producer sent in one partition's `records` field.
///
/// Checks what Kafka's `LogValidator` checks for magic v2 client batches: framing, magic,
/// CRC32C, `max_batch_bytes`, a non-empty batch whose `last_offset_delta` matches its record
/// count, no control batches from clients, and for uncompressed batches that the records
/// themselves have the declared count, sequential offset deltas and exact lengths.
/// Compressed batches are not decompressed (their CRC protects their contents).
pub fn validate_produce(
    records: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<BatchInfo>, BatchError> {
    let mut batches = Vec::new();
    let mut position = 0;
    if records.is_empty() {
        return Err(BatchError::Invalid(
            "produce request has no record batch".into(),
        ));
    }
    while position < records.len() {
        let info = validate_batch(&records[position..], position, max_batch_bytes)?;
        position += info.size_bytes;
        batches.push(info);
    }
    Ok(batches)
}

fn validate_batch(
    bytes: &[u8],
    position: usize,
    max_batch_bytes: usize,
) -> Result<BatchInfo, BatchError> {
    let size_bytes = framed_size(bytes)?;
    if size_bytes > max_batch_bytes {
        return Err(BatchError::TooLarge {
            size_bytes,
            max_bytes: max_batch_bytes,
        });
    }
    let batch = &bytes[..size_bytes];
    let magic = batch[MAGIC_OFFSET] as i8;
    if magic != 2 {
        return Err(BatchError::UnsupportedMagic(magic));
    }
    check_crc(batch)?;
    let attributes = be_i16(batch, ATTRIBUTES_OFFSET);
    let records_count = be_i32(batch, RECORDS_COUNT_OFFSET);
    let last_offset_delta = be_i32(batch, LAST_OFFSET_DELTA_OFFSET);
    if records_count <= 0 {
        return Err(BatchError::Invalid(format!(
            "batch declares {records_count} records"
        )));
    }
    if i64::from(last_offset_delta) != i64::from(records_count) - 1 {
        return Err(BatchError::Invalid(format!(
            "last offset delta {last_offset_delta} does not match record count {records_count}"
        )));
    }
    if attributes & CONTROL_FLAG != 0 {
        return Err(BatchError::Invalid(
            "clients may not produce control batches".into(),
        ));
    }
    let compression = match attributes & COMPRESSION_MASK {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        other => {
            return Err(BatchError::Invalid(format!(
                "unknown compression codec {other}"
            )))
        }
    };
    if compression == Compression::None {
        check_uncompressed_records(&batch[BATCH_HEADER_BYTES..], records_count)?;
    }
    Ok(BatchInfo {
        position,
        size_bytes,
        records_count,
        last_offset_delta,
        base_timestamp: be_i64(batch, BASE_TIMESTAMP_OFFSET),
        max_timestamp: be_i64(batch, MAX_TIMESTAMP_OFFSET),
        producer_id: be_i64(batch, PRODUCER_ID_OFFSET),
        producer_epoch: be_i16(batch, PRODUCER_EPOCH_OFFSET),
        base_sequence: be_i32(batch, BASE_SEQUENCE_OFFSET),
        compression,
        is_transactional: attributes & TRANSACTIONAL_FLAG != 0,
        is_control: false,
    })
}

/// Size of the batch at the start of `bytes` from its length field, checked against the
/// bytes actually present.
fn framed_size(bytes: &[u8]) -> Result<usize, BatchError> {
    if bytes.len() < BATCH_HEADER_BYTES {
        return Err(BatchError::Corrupt("fewer bytes than a batch header"));
    }
    let batch_length = be_i32(bytes, 8);
    if batch_length < (BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32 {
        return Err(BatchError::Corrupt("batch length below the header size"));
    }
    let size_bytes = batch_length as usize + LOG_OVERHEAD_BYTES;
    if size_bytes > bytes.len() {
        return Err(BatchError::Corrupt(
            "batch length runs past the end of the records",
        ));
    }
    Ok(size_bytes)
}

fn check_crc(batch: &[u8]) -> Result<(), BatchError> {
    let stored = u32::from_be_bytes([
        batch[CRC_OFFSET],
        batch[CRC_OFFSET + 1],
        batch[CRC_OFFSET + 2],
        batch[CRC_OFFSET + 3],
    ]);
    let computed = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    if stored != computed {
        return Err(BatchError::CrcMismatch { stored, computed });
    }
    Ok(())
}

/// Checks a stored batch found while recovering a log: framing, magic and CRC.
/// Returns the batch's offsets when it is intact.
pub fn check_stored(bytes: &[u8]) -> Result<BatchOffsets, BatchError> {
    let size_bytes = framed_size(bytes)?;
    let batch = &bytes[..size_bytes];
    let magic = batch[MAGIC_OFFSET] as i8;
    if magic != 2 {
        return Err(BatchError::UnsupportedMagic(magic));
    }
    check_crc(batch)?;
    BatchOffsets::parse(batch).ok_or(BatchError::Corrupt("unreadable batch header"))
}

/// Walks uncompressed records: `length varint | attributes i8 | timestamp_delta varlong |
/// offset_delta varint | key | value | headers`, checking count, lengths and offset deltas.
fn check_uncompressed_records(mut records: &[u8], records_count: i32) -> Result<(), BatchError> {
    for expected_delta in 0..records_count {
        let (length, used) =
            read_varint(records).ok_or(BatchError::Corrupt("record length is not a varint"))?;
        records = &records[used..];
        if length < 0 || length as usize > records.len() {
            return Err(BatchError::Corrupt("record length runs past the batch"));
        }
        let (record, rest) = records.split_at(length as usize);
        records = rest;
        let body = record.get(1..).ok_or(BatchError::Corrupt("empty record"))?;
        let (_, ts_used) = read_varlong(body).ok_or(BatchError::Corrupt("bad timestamp delta"))?;
        let (offset_delta, _) =
            read_varint(&body[ts_used..]).ok_or(BatchError::Corrupt("bad offset delta"))?;
        if offset_delta != expected_delta {
            return Err(BatchError::Invalid(format!(
                "record offset delta {offset_delta} where {expected_delta} was expected"
            )));
        }
    }
    if !records.is_empty() {
        return Err(BatchError::Invalid(format!(
            "batch holds more bytes than its {records_count} declared records"
        )));
    }
    Ok(())
}

/// Reads a zig-zag varint (i32); returns the value and the bytes used.
pub fn read_varint(bytes: &[u8]) -> Option<(i32, usize)> {
    let (raw, used) = read_unsigned_varint(bytes, 5)?;
    let raw = u32::try_from(raw).ok()?;
    Some((((raw >> 1) as i32) ^ -((raw & 1) as i32), used))
}

/// Reads a zig-zag varlong (i64); returns the value and the bytes used.
pub fn read_varlong(bytes: &[u8]) -> Option<(i64, usize)> {
    let (raw, used) = read_unsigned_varint(bytes, 10)?;
    Some((((raw >> 1) as i64) ^ -((raw & 1) as i64), used))
}

fn read_unsigned_varint(bytes: &[u8], max_bytes: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(max_bytes).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

pub(crate) fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(raw)
}

/// Builds valid uncompressed batches for tests (of this crate and of others).
pub mod testing {
    use super::*;

    fn put_varint(out: &mut Vec<u8>, value: i64) {
        let mut raw = ((value << 1) ^ (value >> 63)) as u64;
        while raw >= 0x80 {
            out.push((raw as u8 & 0x7f) | 0x80);
            raw >>= 7;
        }
        out.push(raw as u8);
    }

    /// An uncompressed batch at base offset 0 with one record per value, timestamps
    /// `base_timestamp + i`.
    pub fn batch(values: &[&[u8]], base_timestamp: i64) -> Vec<u8> {
        let mut records = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let mut record = vec![0u8];
            put_varint(&mut record, i as i64);
            put_varint(&mut record, i as i64);
            put_varint(&mut record, -1);
            put_varint(&mut record, value.len() as i64);
            record.extend_from_slice(value);
            put_varint(&mut record, 0);
            put_varint(&mut records, record.len() as i64);
            records.extend_from_slice(&record);
        }
        let count = values.len() as i32;
        let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + records.len());
        out.extend_from_slice(&0i64.to_be_bytes());
        out.extend_from_slice(
            &((BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES + records.len()) as i32).to_be_bytes(),
        );
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out.push(2);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&(count - 1).to_be_bytes());
        out.extend_from_slice(&base_timestamp.to_be_bytes());
        out.extend_from_slice(&(base_timestamp + i64::from(count) - 1).to_be_bytes());
        out.extend_from_slice(&(-1i64).to_be_bytes());
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&records);
        let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
        out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Makes `batch` (from [`batch`]) an idempotent producer's batch: sets its producer id,
    /// epoch and base sequence and, when `transactional`, the transactional attribute; the
    /// CRC is recomputed.
    pub fn set_producer(
        batch: &mut [u8],
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
        transactional: bool,
    ) {
        batch[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8]
            .copy_from_slice(&producer_id.to_be_bytes());
        batch[PRODUCER_EPOCH_OFFSET..PRODUCER_EPOCH_OFFSET + 2]
            .copy_from_slice(&producer_epoch.to_be_bytes());
        batch[BASE_SEQUENCE_OFFSET..BASE_SEQUENCE_OFFSET + 4]
            .copy_from_slice(&base_sequence.to_be_bytes());
        let mut attributes = be_i16(batch, ATTRIBUTES_OFFSET) & !TRANSACTIONAL_FLAG;
        if transactional {
            attributes |= TRANSACTIONAL_FLAG;
        }
        batch[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
        let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
        batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::testing::batch;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn log_append_time_stamps_the_batch_and_keeps_it_valid() {
        let mut b = batch(&[b"a", b"bb"], 1_000);
        set_log_append_time(&mut b, 5_000);
        let info = validate_produce(&b, 1 << 20).expect("still valid: CRC recomputed")[0];
        assert_eq!(info.max_timestamp, 5_000);
        assert_eq!(info.base_timestamp, 1_000);
        assert_ne!(be_i16(&b, ATTRIBUTES_OFFSET) & LOG_APPEND_TIME_FLAG, 0);
        // A client decodes it as a log-append-time batch (whose records then take the
        // batch's max timestamp).
        let mut buf = bytes::Bytes::from(b);
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).unwrap();
        assert!(set
            .records
            .iter()
            .all(|r| r.timestamp_type == kafka_protocol::records::TimestampType::LogAppend));
    }

    #[test]
    fn timestamps_outside_the_allowed_window_are_invalid() {
        let info = |base, max| BatchInfo {
            base_timestamp: base,
            max_timestamp: max,
            ..validate_produce(&batch(&[b"a"], 0), 1 << 20).unwrap()[0]
        };
        let now = 1_000_000;
        assert!(check_timestamps(&info(now - 10, now + 10), now, 100, 100).is_ok());
        assert!(check_timestamps(&info(-1, -1), now, 0, 0).is_ok());
        let past = check_timestamps(&info(now - 101, now), now, 100, 100).unwrap_err();
        assert_eq!(
            past.error_code(),
            kafka_protocol::ResponseError::InvalidTimestamp.code()
        );
        assert!(check_timestamps(&info(now, now + 101), now, 100, 100).is_err());
        assert!(check_timestamps(&info(0, i64::MAX), now, i64::MAX, i64::MAX).is_ok());
    }

    #[test]
    fn a_valid_batch_is_accepted_with_its_fields() {
        let b = batch(&[b"a", b"bb", b"ccc"], 1000);
        let infos = validate_produce(&b, 1 << 20).expect("valid");
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].records_count, 3);
        assert_eq!(infos[0].last_offset_delta, 2);
        assert_eq!(infos[0].max_timestamp, 1002);
        assert_eq!(infos[0].size_bytes, b.len());
    }

    #[test]
    fn producer_fields_are_read_from_the_header() {
        let mut b = batch(&[b"a", b"b"], 1000);
        let plain = validate_produce(&b, 1 << 20).unwrap()[0];
        assert_eq!(
            (plain.producer_id, plain.producer_epoch, plain.base_sequence),
            (-1, -1, -1)
        );
        assert!(!plain.is_transactional && !has_producer_id(&b));
        testing::set_producer(&mut b, 42, 3, 17, true);
        let info = validate_produce(&b, 1 << 20).expect("CRC recomputed")[0];
        assert_eq!(
            (info.producer_id, info.producer_epoch, info.base_sequence),
            (42, 3, 17)
        );
        assert!(info.is_transactional && has_producer_id(&b));
    }

    #[test]
    fn two_batches_in_one_records_field_are_both_validated() {
        let mut b = batch(&[b"a"], 1);
        b.extend(batch(&[b"b", b"c"], 2));
        let infos = validate_produce(&b, 1 << 20).expect("valid");
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[1].records_count, 2);
    }

    #[test]
    fn a_flipped_payload_bit_fails_the_crc() {
        let mut b = batch(&[b"hello"], 1);
        let last = b.len() - 2;
        b[last] ^= 1;
        let err = validate_produce(&b, 1 << 20).unwrap_err();
        assert!(matches!(err, BatchError::CrcMismatch { .. }));
        assert_eq!(
            err.error_code(),
            kafka_protocol::ResponseError::CorruptMessage.code()
        );
    }

    #[test]
    fn a_wrong_record_count_is_invalid_record() {
        let mut b = batch(&[b"a", b"b"], 1);
        b[RECORDS_COUNT_OFFSET..RECORDS_COUNT_OFFSET + 4].copy_from_slice(&3i32.to_be_bytes());
        b[LAST_OFFSET_DELTA_OFFSET..LAST_OFFSET_DELTA_OFFSET + 4]
            .copy_from_slice(&2i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        let err = validate_produce(&b, 1 << 20).unwrap_err();
        assert_eq!(
            err.error_code(),
            kafka_protocol::ResponseError::CorruptMessage.code()
        );
        b[LAST_OFFSET_DELTA_OFFSET..LAST_OFFSET_DELTA_OFFSET + 4]
            .copy_from_slice(&1i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        let err = validate_produce(&b, 1 << 20).unwrap_err();
        assert_eq!(
            err.error_code(),
            kafka_protocol::ResponseError::InvalidRecord.code()
        );
    }

    #[test]
    fn an_oversized_batch_is_message_too_large() {
        let b = batch(&[&[7u8; 500]], 1);
        let err = validate_produce(&b, 100).unwrap_err();
        assert_eq!(
            err.error_code(),
            kafka_protocol::ResponseError::MessageTooLarge.code()
        );
    }

    #[test]
    fn magic_v1_is_refused() {
        let mut b = batch(&[b"a"], 1);
        b[MAGIC_OFFSET] = 1;
        assert_eq!(
            validate_produce(&b, 1 << 20),
            Err(BatchError::UnsupportedMagic(1))
        );
    }

    #[test]
    fn the_patched_prefix_keeps_the_crc_valid() {
        let b = batch(&[b"x", b"y"], 5);
        let mut stored = b.clone();
        stored[..PATCHED_PREFIX_BYTES].copy_from_slice(&patched_prefix(42, b.len(), 7));
        let offsets = check_stored(&stored).expect("intact");
        assert_eq!(offsets.base_offset, 42);
        assert_eq!(offsets.leader_epoch, 7);
        assert_eq!(offsets.last_offset(), 43);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = validate_produce(&bytes, 1 << 20);
            let _ = check_stored(&bytes);
            let _ = BatchOffsets::parse(&bytes);
        }

        #[test]
        fn every_truncation_of_a_valid_batch_is_refused(cut in 0usize..80) {
            let b = batch(&[b"abc", b"defgh"], 9);
            let cut = cut.min(b.len() - 1);
            prop_assert!(validate_produce(&b[..cut], 1 << 20).is_err());
            prop_assert!(check_stored(&b[..cut]).is_err());
        }

        #[test]
        fn any_single_bit_flip_after_the_prefix_is_detected(bit in 0usize..(8 * 40)) {
            let b = batch(&[b"abc", b"defgh"], 9);
            let mut flipped = b.clone();
            let byte = ATTRIBUTES_OFFSET + bit / 8;
            prop_assume!(byte < flipped.len());
            flipped[byte] ^= 1 << (bit % 8);
            prop_assert!(validate_produce(&flipped, 1 << 20).is_err());
        }

        #[test]
        fn varints_round_trip(v in any::<i32>()) {
            let mut out = Vec::new();
            let mut raw = ((v << 1) ^ (v >> 31)) as u32;
            while raw >= 0x80 { out.push((raw as u8 & 0x7f) | 0x80); raw >>= 7; }
            out.push(raw as u8);
            prop_assert_eq!(read_varint(&out), Some((v, out.len())));
        }
    }
}
