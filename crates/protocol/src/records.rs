//! The records inside a stored record batch (magic v2): reading them one at a time,
//! decompressing the batch if it is compressed, and writing retained records into a new
//! batch (what log compaction needs), plus the produce-side check that every record of a
//! compacted topic has a key.
//!
//! Record layout (all varints zig-zag): `length varint | attributes i8 | timestamp_delta
//! varlong | offset_delta varint | key_length varint | key | value_length varint | value |
//! header_count varint | headers`, a length of -1 meaning null. A record with a null value
//! is a tombstone.
//!
//! Codecs, as Kafka writes them: gzip (possibly several members), snappy (Java's xerial
//! framing: a 16-byte header then `u32` length-prefixed raw blocks; librdkafka's plain raw
//! snappy is read as well), LZ4 (the LZ4 frame format) and zstd. Every decoder returns an
//! error for any input, and a batch never decompresses to more than the limit its reader is
//! given: a record's body is read into memory only once its declared length fits.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Write};

use crate::batch::{
    be_i16, be_i32, be_i64, BatchInfo, Compression, BATCH_HEADER_BYTES, LOG_OVERHEAD_BYTES,
};

/// Default limit on the decompressed bytes read from one batch.
pub const DECOMPRESSED_BATCH_BYTES_MAX: usize = 256 << 20;
/// Buffer between a decompressor and the record parser.
const DECOMPRESS_BUFFER_BYTES: usize = 32 << 10;
/// Largest zstd window a frame may ask for (2^27 = 128 MiB, zstd's own default limit):
/// bounds the decoder's memory whatever the frame header says.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// zstd level the cleaner recompresses with (Kafka's default `compression.zstd.level`).
const ZSTD_LEVEL: i32 = 3;
/// The xerial snappy stream header: magic, then version and compatible version (both 1).
const XERIAL_HEADER: [u8; 16] = *b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// Bytes of the xerial magic, the part that identifies the framing.
const XERIAL_MAGIC_BYTES: usize = 8;
/// Uncompressed bytes per xerial block when writing (snappy-java's default block size).
const XERIAL_BLOCK_BYTES: usize = 32 << 10;

const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const COMPRESSION_MASK: i16 = 0x07;
const LOG_APPEND_TIME_FLAG: i16 = 0x08;
const TRANSACTIONAL_FLAG: i16 = 0x10;
const CONTROL_FLAG: i16 = 0x20;
/// KIP-534: the batch's base timestamp holds the time after which its tombstones (and
/// transaction markers) may be removed.
const DELETE_HORIZON_FLAG: i16 = 0x40;

/// Why the records of a batch could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    #[error("corrupt record batch: {0}")]
    Corrupt(&'static str),
    #[error("unknown compression codec {0}")]
    UnknownCompression(i16),
    #[error("cannot decompress {codec:?} records: {reason}")]
    Decompression { codec: Compression, reason: String },
    #[error("cannot compress records with {codec:?}: {reason}")]
    Compression { codec: Compression, reason: String },
    #[error("the records of a batch decompress to more than {max_bytes} bytes")]
    TooLarge { max_bytes: usize },
}

impl RecordsError {
    /// The Kafka error code a produce of such a batch is answered with.
    pub fn error_code(&self) -> i16 {
        kafka_protocol::ResponseError::CorruptMessage.code()
    }
}

/// The header of a v2 batch, every field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Parses the header of the batch that `batch` holds exactly (its length field must
    /// match the slice).
    pub fn parse(batch: &[u8]) -> Result<BatchHeader, RecordsError> {
        if batch.len() < BATCH_HEADER_BYTES {
            return Err(RecordsError::Corrupt("fewer bytes than a batch header"));
        }
        let batch_length = be_i32(batch, 8);
        if i64::from(batch_length) + LOG_OVERHEAD_BYTES as i64 != batch.len() as i64 {
            return Err(RecordsError::Corrupt(
                "batch length does not match the batch",
            ));
        }
        if batch[16] != 2 {
            return Err(RecordsError::Corrupt("not a magic v2 batch"));
        }
        Ok(BatchHeader {
            base_offset: be_i64(batch, 0),
            partition_leader_epoch: be_i32(batch, 12),
            attributes: be_i16(batch, ATTRIBUTES_OFFSET),
            last_offset_delta: be_i32(batch, 23),
            base_timestamp: be_i64(batch, 27),
            max_timestamp: be_i64(batch, 35),
            producer_id: be_i64(batch, 43),
            producer_epoch: be_i16(batch, 51),
            base_sequence: be_i32(batch, 53),
            records_count: be_i32(batch, 57),
        })
    }

    pub fn compression(&self) -> Result<Compression, RecordsError> {
        match self.attributes & COMPRESSION_MASK {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(RecordsError::UnknownCompression(other)),
        }
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_FLAG != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_FLAG != 0
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & LOG_APPEND_TIME_FLAG != 0
    }

    /// KIP-534's delete horizon, when a cleaner has set it.
    pub fn delete_horizon_ms(&self) -> Option<i64> {
        (self.attributes & DELETE_HORIZON_FLAG != 0).then_some(self.base_timestamp)
    }
}

/// One record of a batch, borrowed from its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: i64,
    /// The batch's base timestamp plus the record's delta.
    pub timestamp: i64,
    pub attributes: i8,
    pub key: Option<&'a [u8]>,
    /// `None`: a tombstone.
    pub value: Option<&'a [u8]>,
    /// The headers as stored: their count, then each header.
    pub headers: &'a [u8],
}

/// Where the (uncompressed) records of a batch come from.
enum Source<'a> {
    /// In memory: an uncompressed batch's own bytes, or a whole-buffer codec's output.
    Memory {
        bytes: Cow<'a, [u8]>,
        position: usize,
    },
    /// A streaming decompressor.
    Stream(Box<dyn BufRead + 'a>),
}

/// Reads the records of one batch in order; [`RecordReader::next_record`] lends each.
pub struct RecordReader<'a> {
    header: BatchHeader,
    source: Source<'a>,
    /// Records still to read.
    remaining: i32,
    /// The previous record's offset delta (deltas must increase).
    last_delta: i64,
    /// Decompressed bytes that may still be read.
    budget_bytes: usize,
    max_bytes: usize,
    body: Vec<u8>,
}

impl<'a> RecordReader<'a> {
    /// A reader over `batch` (exactly one stored batch, CRC already checked by the caller)
    /// that refuses to decompress more than `max_decompressed_bytes`.
    pub fn new(
        batch: &'a [u8],
        max_decompressed_bytes: usize,
    ) -> Result<RecordReader<'a>, RecordsError> {
        let header = BatchHeader::parse(batch)?;
        if header.records_count < 0 {
            return Err(RecordsError::Corrupt("negative record count"));
        }
        let compressed = &batch[BATCH_HEADER_BYTES..];
        let source = open_source(header.compression()?, compressed, max_decompressed_bytes)?;
        Ok(RecordReader {
            header,
            source,
            remaining: header.records_count,
            last_delta: -1,
            budget_bytes: max_decompressed_bytes,
            max_bytes: max_decompressed_bytes,
            body: Vec::new(),
        })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The next record; `None` after the batch's declared count, once the records are
    /// checked to end there.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, RecordsError> {
        if self.remaining == 0 {
            self.check_end()?;
            return Ok(None);
        }
        self.remaining -= 1;
        let body = match &mut self.source {
            Source::Memory { bytes, position } => {
                let (length, used) = read_length(&bytes[*position..])?;
                let start = *position + used;
                *position = start + length;
                &bytes[start..start + length]
            }
            Source::Stream(stream) => {
                let codec = self.header.compression()?;
                let length = stream_length(stream.as_mut())
                    .map_err(|e| stream_error(codec, e, self.max_bytes))?;
                let length = usize::try_from(length)
                    .map_err(|_| RecordsError::Corrupt("negative record length"))?;
                if length > self.budget_bytes {
                    return Err(RecordsError::TooLarge {
                        max_bytes: self.max_bytes,
                    });
                }
                self.budget_bytes -= length;
                read_body(stream.as_mut(), length, &mut self.body)
                    .map_err(|e| stream_error(codec, e, self.max_bytes))?;
                &self.body[..]
            }
        };
        let record = parse_record(body, &self.header)?;
        let delta = record.offset.wrapping_sub(self.header.base_offset);
        if delta <= self.last_delta || delta > i64::from(self.header.last_offset_delta) {
            return Err(RecordsError::Corrupt(
                "record offset deltas are not increasing within the batch",
            ));
        }
        self.last_delta = delta;
        Ok(Some(record))
    }

    /// After the declared records: nothing may follow them.
    fn check_end(&mut self) -> Result<(), RecordsError> {
        let codec = self.header.compression()?;
        let trailing = match &mut self.source {
            Source::Memory { bytes, position } => *position != bytes.len(),
            Source::Stream(stream) => !stream
                .fill_buf()
                .map_err(|e| stream_error(codec, e, self.max_bytes))?
                .is_empty(),
        };
        if trailing {
            return Err(RecordsError::Corrupt(
                "bytes follow the declared records of the batch",
            ));
        }
        Ok(())
    }
}

/// The uncompressed records of a batch body compressed with `codec`.
fn open_source<'a>(
    codec: Compression,
    compressed: &'a [u8],
    max_bytes: usize,
) -> Result<Source<'a>, RecordsError> {
    let memory = |bytes| Source::Memory { bytes, position: 0 };
    let stream = |reader: Box<dyn Read + 'a>| {
        Source::Stream(Box::new(BufReader::with_capacity(
            DECOMPRESS_BUFFER_BYTES,
            reader,
        )))
    };
    let failed = |e: std::io::Error| RecordsError::Decompression {
        codec,
        reason: e.to_string(),
    };
    Ok(match codec {
        Compression::None => memory(Cow::Borrowed(compressed)),
        Compression::Gzip => stream(Box::new(flate2::read::MultiGzDecoder::new(compressed))),
        Compression::Lz4 => stream(Box::new(lz4_flex::frame::FrameDecoder::new(compressed))),
        Compression::Zstd => {
            let mut decoder =
                zstd::stream::read::Decoder::with_buffer(compressed).map_err(failed)?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(failed)?;
            stream(Box::new(decoder))
        }
        Compression::Snappy if compressed.starts_with(&XERIAL_HEADER[..XERIAL_MAGIC_BYTES]) => {
            stream(Box::new(XerialReader::new(compressed, max_bytes)?))
        }
        Compression::Snappy => memory(Cow::Owned(raw_snappy(compressed, max_bytes)?)),
    })
}

/// Decompresses a raw snappy block once its declared length fits `max_bytes`.
fn raw_snappy(compressed: &[u8], max_bytes: usize) -> Result<Vec<u8>, RecordsError> {
    let failed = |e: snap::Error| RecordsError::Decompression {
        codec: Compression::Snappy,
        reason: e.to_string(),
    };
    let length = snap::raw::decompress_len(compressed).map_err(failed)?;
    if length > max_bytes {
        return Err(RecordsError::TooLarge { max_bytes });
    }
    let mut out = vec![0u8; length];
    let written = snap::raw::Decoder::new()
        .decompress(compressed, &mut out)
        .map_err(failed)?;
    out.truncate(written);
    Ok(out)
}

/// Java's snappy framing (snappy-java's `SnappyOutputStream`): after the header,
/// `u32 length | raw snappy block` repeated.
struct XerialReader<'a> {
    rest: &'a [u8],
    block: Vec<u8>,
    position: usize,
    /// Decompressed bytes still allowed.
    budget_bytes: usize,
}

impl<'a> XerialReader<'a> {
    fn new(compressed: &'a [u8], max_bytes: usize) -> Result<XerialReader<'a>, RecordsError> {
        let rest = compressed
            .get(XERIAL_HEADER.len()..)
            .ok_or(RecordsError::Decompression {
                codec: Compression::Snappy,
                reason: "truncated xerial snappy header".into(),
            })?;
        Ok(XerialReader {
            rest,
            block: Vec::new(),
            position: 0,
            budget_bytes: max_bytes,
        })
    }

    /// Decompresses the next block; `false` at the end of the stream.
    fn next_block(&mut self) -> std::io::Result<bool> {
        if self.rest.is_empty() {
            return Ok(false);
        }
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        if self.rest.len() < 4 {
            return Err(invalid("truncated xerial block length"));
        }
        let length =
            u32::from_be_bytes([self.rest[0], self.rest[1], self.rest[2], self.rest[3]]) as usize;
        let block = self
            .rest
            .get(4..4 + length)
            .ok_or_else(|| invalid("xerial block runs past the batch"))?;
        self.rest = &self.rest[4 + length..];
        let out_length = snap::raw::decompress_len(block)
            .map_err(|e| invalid(&format!("bad snappy block: {e}")))?;
        if out_length > self.budget_bytes {
            return Err(std::io::Error::other(LimitReached));
        }
        self.budget_bytes -= out_length;
        self.block.resize(out_length, 0);
        let written = snap::raw::Decoder::new()
            .decompress(block, &mut self.block)
            .map_err(|e| invalid(&format!("bad snappy block: {e}")))?;
        self.block.truncate(written);
        self.position = 0;
        Ok(true)
    }
}

impl Read for XerialReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.position == self.block.len() {
            if !self.next_block()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len() - self.position);
        buf[..n].copy_from_slice(&self.block[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// Marks the I/O error a streaming decoder returns when its output would pass the limit.
#[derive(Debug)]
struct LimitReached;

impl std::fmt::Display for LimitReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("decompression limit reached")
    }
}

impl std::error::Error for LimitReached {}

/// What an error of a streaming decoder means for the batch.
fn stream_error(codec: Compression, e: std::io::Error, max_bytes: usize) -> RecordsError {
    if e.get_ref().is_some_and(|inner| inner.is::<LimitReached>()) {
        return RecordsError::TooLarge { max_bytes };
    }
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return RecordsError::Corrupt("the records end before their declared count");
    }
    RecordsError::Decompression {
        codec,
        reason: e.to_string(),
    }
}

/// A record's length prefix in memory: the length and the bytes it used; the body must
/// follow in full.
fn read_length(bytes: &[u8]) -> Result<(usize, usize), RecordsError> {
    let (length, used) = crate::batch::read_varint(bytes)
        .ok_or(RecordsError::Corrupt("record length is not a varint"))?;
    let length =
        usize::try_from(length).map_err(|_| RecordsError::Corrupt("negative record length"))?;
    if length > bytes.len() - used {
        return Err(RecordsError::Corrupt("record runs past the batch"));
    }
    Ok((length, used))
}

/// A record's length prefix read from a stream.
fn stream_length(stream: &mut dyn BufRead) -> std::io::Result<i32> {
    let mut raw = 0u32;
    for i in 0..5 {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte)?;
        raw |= u32::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "record length is not a varint",
    ))
}

/// Reads a record body of `length` bytes into `body`, growing it only as bytes arrive.
fn read_body(stream: &mut dyn BufRead, length: usize, body: &mut Vec<u8>) -> std::io::Result<()> {
    body.clear();
    let read = stream.take(length as u64).read_to_end(body)?;
    if read != length {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// A cursor over a record body.
struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    fn varint(&mut self) -> Result<i32, RecordsError> {
        let (value, used) = crate::batch::read_varint(&self.bytes[self.position..])
            .ok_or(RecordsError::Corrupt("bad varint in a record"))?;
        self.position += used;
        Ok(value)
    }

    fn varlong(&mut self) -> Result<i64, RecordsError> {
        let (value, used) = crate::batch::read_varlong(&self.bytes[self.position..])
            .ok_or(RecordsError::Corrupt("bad varlong in a record"))?;
        self.position += used;
        Ok(value)
    }

    /// A length-prefixed field; `None` for length -1.
    fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>, RecordsError> {
        let length = self.varint()?;
        if length == -1 {
            return Ok(None);
        }
        let length =
            usize::try_from(length).map_err(|_| RecordsError::Corrupt("negative field length"))?;
        let field = self
            .bytes
            .get(self.position..self.position + length)
            .ok_or(RecordsError::Corrupt("record field runs past the record"))?;
        self.position += length;
        Ok(Some(field))
    }
}

/// Parses one record body (the bytes after its length prefix).
fn parse_record<'b>(body: &'b [u8], header: &BatchHeader) -> Result<Record<'b>, RecordsError> {
    let (&attributes, _) = body
        .split_first()
        .ok_or(RecordsError::Corrupt("empty record"))?;
    let mut cursor = Cursor {
        bytes: body,
        position: 1,
    };
    let timestamp_delta = cursor.varlong()?;
    let offset_delta = cursor.varint()?;
    let key = cursor.nullable_bytes()?;
    let value = cursor.nullable_bytes()?;
    let headers_start = cursor.position;
    let count = cursor.varint()?;
    if count < 0 {
        return Err(RecordsError::Corrupt("negative header count"));
    }
    for _ in 0..count {
        if cursor.nullable_bytes()?.is_none() {
            return Err(RecordsError::Corrupt("null header key"));
        }
        cursor.nullable_bytes()?;
    }
    if cursor.position != body.len() {
        return Err(RecordsError::Corrupt(
            "record length does not match its fields",
        ));
    }
    Ok(Record {
        offset: header
            .base_offset
            .checked_add(i64::from(offset_delta))
            .ok_or(RecordsError::Corrupt("record offset overflows"))?,
        timestamp: header.base_timestamp.wrapping_add(timestamp_delta),
        attributes: attributes as i8,
        key,
        value,
        headers: &body[headers_start..],
    })
}

/// Writes retained records into a new batch that keeps the original's base offset,
/// producer fields, leader epoch and codec (Kafka's `buildRetainedRecordsInto`).
#[derive(Debug, Default)]
pub struct BatchBuilder {
    template: Option<BatchHeader>,
    delete_horizon_ms: Option<i64>,
    base_timestamp: i64,
    records: Vec<u8>,
    count: i32,
    last_offset: i64,
    max_timestamp: i64,
    compressed: Vec<u8>,
}

impl BatchBuilder {
    /// Starts a batch like `template`; with `delete_horizon_ms`, the batch carries KIP-534's
    /// delete horizon in its base timestamp.
    pub fn start(&mut self, template: &BatchHeader, delete_horizon_ms: Option<i64>) {
        self.template = Some(*template);
        self.delete_horizon_ms = delete_horizon_ms;
        self.records.clear();
        self.count = 0;
        self.last_offset = template.base_offset - 1;
        self.max_timestamp = i64::MIN;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends a record; offsets must increase and stay within the template's range.
    pub fn append(&mut self, record: &Record<'_>) -> Result<(), RecordsError> {
        let template = self.template.ok_or(RecordsError::Corrupt(
            "append to a batch that was not started",
        ))?;
        let offset_delta = record.offset.wrapping_sub(template.base_offset);
        if record.offset <= self.last_offset || offset_delta > i64::from(template.last_offset_delta)
        {
            return Err(RecordsError::Corrupt(
                "retained record offsets out of order",
            ));
        }
        if self.count == 0 {
            self.base_timestamp = self.delete_horizon_ms.unwrap_or(record.timestamp);
        }
        let mut body = [0u8; 1 + 10 + 5];
        body[0] = record.attributes as u8;
        let mut used = 1;
        used += put_varlong(
            &mut body[used..],
            record.timestamp.wrapping_sub(self.base_timestamp),
        );
        used += put_varlong(&mut body[used..], offset_delta);
        let key_bytes = record.key.map_or(0, <[u8]>::len);
        let value_bytes = record.value.map_or(0, <[u8]>::len);
        let length = used
            + varint_bytes(record.key.map_or(-1, |k| k.len() as i64))
            + key_bytes
            + varint_bytes(record.value.map_or(-1, |v| v.len() as i64))
            + value_bytes
            + record.headers.len();
        let mut prefix = [0u8; 10];
        let prefix_used = put_varlong(&mut prefix, length as i64);
        self.records.extend_from_slice(&prefix[..prefix_used]);
        self.records.extend_from_slice(&body[..used]);
        put_nullable(&mut self.records, record.key);
        put_nullable(&mut self.records, record.value);
        self.records.extend_from_slice(record.headers);
        self.count += 1;
        self.last_offset = record.offset;
        self.max_timestamp = self.max_timestamp.max(record.timestamp);
        Ok(())
    }

    /// Writes the batch to `out`: the retained records, or with none an empty batch that
    /// keeps the template's offset range (Kafka's `writeEmptyHeader`). Returns its size.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<usize, RecordsError> {
        let template = self.template.take().ok_or(RecordsError::Corrupt(
            "finish of a batch that was not started",
        ))?;
        let start = out.len();
        let header = self.finished_header(&template);
        let codec = if self.count == 0 {
            Compression::None
        } else {
            template.compression()?
        };
        self.compressed.clear();
        compress(codec, &self.records, &mut self.compressed)?;
        write_header(out, &header, BATCH_HEADER_BYTES + self.compressed.len());
        out.extend_from_slice(&self.compressed);
        let crc = crc32c::crc32c(&out[start + ATTRIBUTES_OFFSET..]);
        out[start + CRC_OFFSET..start + CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(out.len() - start)
    }

    fn finished_header(&self, template: &BatchHeader) -> BatchHeader {
        let mut header = *template;
        if self.count == 0 {
            header.attributes &= !(COMPRESSION_MASK | DELETE_HORIZON_FLAG);
            header.base_timestamp = template.max_timestamp;
            header.records_count = 0;
            return header;
        }
        header.attributes &= !DELETE_HORIZON_FLAG;
        if self.delete_horizon_ms.is_some() {
            header.attributes |= DELETE_HORIZON_FLAG;
        }
        header.last_offset_delta = (self.last_offset - template.base_offset) as i32;
        header.base_timestamp = self.base_timestamp;
        if !template.is_log_append_time() {
            header.max_timestamp = self.max_timestamp;
        }
        header.records_count = self.count;
        header
    }
}

fn write_header(out: &mut Vec<u8>, header: &BatchHeader, size_bytes: usize) {
    out.extend_from_slice(&header.base_offset.to_be_bytes());
    out.extend_from_slice(&((size_bytes - LOG_OVERHEAD_BYTES) as i32).to_be_bytes());
    out.extend_from_slice(&header.partition_leader_epoch.to_be_bytes());
    out.push(2);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&header.attributes.to_be_bytes());
    out.extend_from_slice(&header.last_offset_delta.to_be_bytes());
    out.extend_from_slice(&header.base_timestamp.to_be_bytes());
    out.extend_from_slice(&header.max_timestamp.to_be_bytes());
    out.extend_from_slice(&header.producer_id.to_be_bytes());
    out.extend_from_slice(&header.producer_epoch.to_be_bytes());
    out.extend_from_slice(&header.base_sequence.to_be_bytes());
    out.extend_from_slice(&header.records_count.to_be_bytes());
}

/// Compresses `records` with `codec` into `out`, framed as Kafka's brokers write it.
fn compress(codec: Compression, records: &[u8], out: &mut Vec<u8>) -> Result<(), RecordsError> {
    let failed = |e: std::io::Error| RecordsError::Compression {
        codec,
        reason: e.to_string(),
    };
    match codec {
        Compression::None => out.extend_from_slice(records),
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            encoder.write_all(records).map_err(failed)?;
            encoder.finish().map_err(failed)?;
        }
        Compression::Snappy => xerial_snappy(records, out)?,
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(info, out);
            encoder.write_all(records).map_err(failed)?;
            encoder.finish().map_err(|e| RecordsError::Compression {
                codec,
                reason: e.to_string(),
            })?;
        }
        Compression::Zstd => {
            let compressed = zstd::bulk::compress(records, ZSTD_LEVEL).map_err(failed)?;
            out.extend_from_slice(&compressed);
        }
    }
    Ok(())
}

/// Java's snappy framing: the xerial header, then length-prefixed raw blocks.
fn xerial_snappy(records: &[u8], out: &mut Vec<u8>) -> Result<(), RecordsError> {
    out.extend_from_slice(&XERIAL_HEADER);
    let mut encoder = snap::raw::Encoder::new();
    for block in records.chunks(XERIAL_BLOCK_BYTES) {
        let compressed = encoder
            .compress_vec(block)
            .map_err(|e| RecordsError::Compression {
                codec: Compression::Snappy,
                reason: e.to_string(),
            })?;
        out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
        out.extend_from_slice(&compressed);
    }
    Ok(())
}

fn put_nullable(out: &mut Vec<u8>, field: Option<&[u8]>) {
    let mut prefix = [0u8; 10];
    match field {
        None => {
            let used = put_varlong(&mut prefix, -1);
            out.extend_from_slice(&prefix[..used]);
        }
        Some(bytes) => {
            let used = put_varlong(&mut prefix, bytes.len() as i64);
            out.extend_from_slice(&prefix[..used]);
            out.extend_from_slice(bytes);
        }
    }
}

/// Writes a zig-zag varint of `value` into `out` (at least 10 bytes); returns the bytes used.
fn put_varlong(out: &mut [u8], value: i64) -> usize {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    let mut used = 0;
    while raw >= 0x80 {
        out[used] = (raw as u8 & 0x7f) | 0x80;
        raw >>= 7;
        used += 1;
    }
    out[used] = raw as u8;
    used + 1
}

/// Bytes of the zig-zag varint of `value`.
fn varint_bytes(value: i64) -> usize {
    let raw = ((value << 1) ^ (value >> 63)) as u64;
    (64 - raw.leading_zeros() as usize).max(1).div_ceil(7)
}

/// A record without a key in a produce request: its batch (by index in the request) and
/// its index within that batch, as Kafka's `RecordError.batch_index` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeylessRecord {
    pub batch: usize,
    pub batch_index: i32,
}

/// The records without a key among validated produce `batches` of `records` (what a
/// compacted topic refuses). Compressed batches are decompressed, at most
/// [`DECOMPRESSED_BATCH_BYTES_MAX`] each.
pub fn keyless_records(
    records: &[u8],
    batches: &[BatchInfo],
) -> Result<Vec<KeylessRecord>, RecordsError> {
    let mut keyless = Vec::new();
    for (i, info) in batches.iter().enumerate() {
        let bytes = records
            .get(info.position..info.position + info.size_bytes)
            .ok_or(RecordsError::Corrupt("batch runs past the records"))?;
        let mut reader = RecordReader::new(bytes, DECOMPRESSED_BATCH_BYTES_MAX)?;
        let mut batch_index = 0;
        while let Some(record) = reader.next_record()? {
            if record.key.is_none() {
                keyless.push(KeylessRecord {
                    batch: i,
                    batch_index,
                });
            }
            batch_index += 1;
        }
    }
    Ok(keyless)
}

/// Builds batches of keyed records for tests (of this crate and of others).
pub mod testing {
    use super::*;

    /// A record for [`batch`]: key, value (`None`: tombstone), timestamp.
    pub type TestRecord<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, i64);

    /// A batch at `base_offset` with one record per entry (offsets consecutive), compressed
    /// with `codec`.
    pub fn batch(base_offset: i64, records: &[TestRecord<'_>], codec: Compression) -> Vec<u8> {
        let count = records.len() as i32;
        let template = BatchHeader {
            base_offset,
            partition_leader_epoch: 0,
            attributes: codec_bits(codec),
            last_offset_delta: (count - 1).max(0),
            base_timestamp: records.first().map_or(0, |r| r.2),
            max_timestamp: records.iter().map(|r| r.2).max().unwrap_or(0),
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count: count,
        };
        let mut builder = BatchBuilder::default();
        builder.start(&template, None);
        for (i, (key, value, timestamp)) in records.iter().enumerate() {
            let record = Record {
                offset: base_offset + i as i64,
                timestamp: *timestamp,
                attributes: 0,
                key: *key,
                value: *value,
                headers: &[0],
            };
            builder.append(&record).expect("offsets increase");
        }
        let mut out = Vec::new();
        builder.finish(&mut out).expect("compresses");
        out
    }

    /// The attribute bits of a codec.
    pub fn codec_bits(codec: Compression) -> i16 {
        match codec {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::batch;
    use super::*;

    const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// Offset, key, value.
    type Owned = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

    fn read_all(bytes: &[u8]) -> Vec<Owned> {
        let mut reader = RecordReader::new(bytes, DECOMPRESSED_BATCH_BYTES_MAX).unwrap();
        let mut out = Vec::new();
        while let Some(r) = reader.next_record().unwrap() {
            out.push((
                r.offset,
                r.key.map(<[u8]>::to_vec),
                r.value.map(<[u8]>::to_vec),
            ));
        }
        out
    }

    #[test]
    fn every_codec_round_trips_keys_values_and_tombstones() {
        for codec in CODECS {
            let b = batch(
                100,
                &[
                    (Some(b"a"), Some(b"1"), 10),
                    (Some(b"b"), None, 11),
                    (None, Some(b"3"), 12),
                ],
                codec,
            );
            assert!(crate::batch::check_stored(&b).is_ok(), "{codec:?}: CRC");
            let records = read_all(&b);
            assert_eq!(
                records,
                vec![
                    (100, Some(b"a".to_vec()), Some(b"1".to_vec())),
                    (101, Some(b"b".to_vec()), None),
                    (102, None, Some(b"3".to_vec())),
                ],
                "{codec:?}"
            );
        }
    }

    #[test]
    fn kafka_protocol_decodes_what_the_builder_writes() {
        for codec in CODECS {
            let b = batch(
                7,
                &[(Some(b"k"), Some(b"v"), 5), (Some(b"k2"), None, 6)],
                codec,
            );
            let mut buf = bytes::Bytes::from(b);
            let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf)
                .unwrap_or_else(|e| panic!("{codec:?}: {e}"));
            assert_eq!(set.records.len(), 2);
            assert_eq!(set.records[1].offset, 8);
            assert!(set.records[1].value.is_none());
            assert_eq!(set.records[0].timestamp, 5);
        }
    }

    #[test]
    fn raw_snappy_as_librdkafka_writes_it_is_read() {
        let xerial = batch(0, &[(Some(b"k"), Some(b"value"), 1)], Compression::Snappy);
        let header = BatchHeader::parse(&xerial).unwrap();
        let mut builder = BatchBuilder::default();
        builder.start(&header, None);
        let mut reader = RecordReader::new(&xerial, 1 << 20).unwrap();
        let record = reader.next_record().unwrap().unwrap();
        builder.append(&record).unwrap();
        let mut plain = Vec::new();
        builder.records.clone_into(&mut plain);
        let raw = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        let mut out = xerial[..BATCH_HEADER_BYTES].to_vec();
        out.extend_from_slice(&raw);
        let length = (out.len() - LOG_OVERHEAD_BYTES) as i32;
        out[8..12].copy_from_slice(&length.to_be_bytes());
        assert_eq!(
            read_all(&out),
            vec![(0, Some(b"k".to_vec()), Some(b"value".to_vec()))]
        );
    }

    #[test]
    fn a_batch_decompressing_past_the_limit_is_refused() {
        let big = vec![b'x'; 100_000];
        for codec in CODECS {
            let b = batch(0, &[(Some(b"k"), Some(&big), 1)], codec);
            let mut reader = RecordReader::new(&b, 1000).unwrap_or_else(|e| panic!("{e}"));
            let result = reader.next_record();
            if codec == Compression::None {
                assert!(result.is_ok(), "uncompressed bytes are not decompressed");
            } else {
                assert!(
                    matches!(result, Err(RecordsError::TooLarge { .. })),
                    "{codec:?}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn an_empty_retained_batch_keeps_its_offset_range() {
        let b = batch(
            10,
            &[(Some(b"a"), Some(b"1"), 1), (Some(b"b"), Some(b"2"), 9)],
            Compression::Lz4,
        );
        let header = BatchHeader::parse(&b).unwrap();
        let mut builder = BatchBuilder::default();
        builder.start(&header, None);
        let mut out = Vec::new();
        builder.finish(&mut out).unwrap();
        let empty = BatchHeader::parse(&out).unwrap();
        assert_eq!((empty.base_offset, empty.last_offset()), (10, 11));
        assert_eq!(empty.records_count, 0);
        assert_eq!(empty.compression(), Ok(Compression::None));
        assert!(crate::batch::check_stored(&out).is_ok());
        assert!(read_all(&out).is_empty());
    }

    #[test]
    fn a_delete_horizon_moves_the_base_timestamp_but_not_record_timestamps() {
        let b = batch(0, &[(Some(b"a"), None, 1000)], Compression::None);
        let header = BatchHeader::parse(&b).unwrap();
        let mut reader = RecordReader::new(&b, 1 << 20).unwrap();
        let record = reader.next_record().unwrap().unwrap();
        let mut builder = BatchBuilder::default();
        builder.start(&header, Some(50_000));
        builder.append(&record).unwrap();
        let mut out = Vec::new();
        builder.finish(&mut out).unwrap();
        let rewritten = BatchHeader::parse(&out).unwrap();
        assert_eq!(rewritten.delete_horizon_ms(), Some(50_000));
        assert_eq!(rewritten.max_timestamp, 1000);
        let mut reader = RecordReader::new(&out, 1 << 20).unwrap();
        assert_eq!(reader.next_record().unwrap().unwrap().timestamp, 1000);
    }

    #[test]
    fn keyless_records_are_found_by_batch_and_index() {
        let mut records = batch(0, &[(Some(b"a"), Some(b"1"), 1)], Compression::None);
        records.extend(batch(
            0,
            &[(Some(b"b"), Some(b"1"), 1), (None, Some(b"2"), 2)],
            Compression::Zstd,
        ));
        let batches = crate::batch::validate_produce(&records, 1 << 20).unwrap();
        assert_eq!(
            keyless_records(&records, &batches).unwrap(),
            vec![KeylessRecord {
                batch: 1,
                batch_index: 1
            }]
        );
    }

    #[test]
    fn varint_sizes_match_the_encoding() {
        for v in [
            0i64,
            -1,
            1,
            63,
            64,
            -64,
            -65,
            8191,
            1 << 20,
            i32::MAX as i64,
            i64::MIN,
        ] {
            let mut out = [0u8; 10];
            assert_eq!(put_varlong(&mut out, v), varint_bytes(v), "{v}");
        }
    }
}
