//! The partition log: Kafka's on-disk format, appended sequentially and read by file range.
//!
//! A [`PartitionLog`] is a directory `<topic>-<partition>/` of [`LogSegment`]s named by base
//! offset (`00000000000000000000.log`) with a sparse offset index (`.index`) and time index
//! (`.timeindex`) beside each. Record batches are stored verbatim as produced, with only the
//! base offset and partition leader epoch patched in place. Reads return [`FileSlice`]s, byte
//! ranges of a segment file that the broker sends with `sendfile`.
//!
//! Recovery on open trusts everything below the recovery point (fsynced) and re-validates
//! only the segments after it: CRC-checks each batch, truncates a torn tail and rebuilds
//! the indexes of those segments.
//!
//! This crate knows no sockets and no wire protocol beyond the batch format; it never
//! decides replication (the caller moves the high watermark).

pub mod checkpoint;
mod error;
pub mod index;
mod log;
mod segment;

pub use error::StorageError;
pub use log::{AppendInfo, LogConfig, LogOffsets, PartitionLog, ReadResult, TimestampOffset};
pub use segment::{FileSlice, LogSegment};

/// The file name of a segment or index: the base offset, zero-padded to 20 digits.
pub fn file_name(base_offset: i64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}
