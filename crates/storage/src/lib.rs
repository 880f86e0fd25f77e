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
//! For replication a log also takes the leader's batches verbatim
//! ([`PartitionLog::append_as_follower`]), serves followers up to its log end
//! ([`PartitionLog::read_to_log_end`]), truncates to where a follower diverges from its
//! leader ([`PartitionLog::truncate_to`], [`PartitionLog::truncate_fully_and_start_at`])
//! and keeps Kafka's leader epoch cache (`leader-epoch-checkpoint`: the first offset of each
//! leader epoch, answering [`PartitionLog::end_offset_for_epoch`]).
//!
//! Log compaction ([`cleaner`], [`PartitionLog::clean`]) rewrites closed segments below
//! the last stable offset, keeping the latest record of each key, and swaps them in
//! crash-safely.
//!
//! Idempotent and transactional producers ([`producer_state`]): the log keeps each
//! producer's epoch, last batches and open transaction, checks leader appends against them
//! (duplicates answered with their original offsets, out-of-order sequences and fenced
//! epochs refused before anything is written), snapshots the state (`<offset>.snapshot`)
//! and replays only what follows the latest snapshot on open. Transaction markers
//! ([`PartitionLog::append_control`]) complete transactions; the last stable offset bounds
//! read_committed reads and each segment's `.txnindex` lists its aborted transactions.
//!
//! This crate knows no sockets and no wire protocol beyond the batch format; it never
//! decides replication: the caller moves the high watermark, chooses truncation points and
//! keeps the per-directory checkpoints ([`checkpoint`]).

pub mod checkpoint;
pub mod cleaner;
mod epoch;
mod error;
pub mod index;
mod log;
pub mod producer_state;
mod segment;

pub use cleaner::{
    CleanOutcome, Cleanable, CleanerProgress, CleanerStats, CompactionConfig, OffsetMap,
};
pub use error::StorageError;
pub use log::{
    AppendInfo, Deleted, LogConfig, LogOffsets, PartitionLog, ReadBound, ReadResult,
    RetentionPolicy, TimestampOffset,
};
pub use producer_state::{
    AbortedTxn, ControlType, ProducerSummary, TxnVerification, VerificationGuard,
};
pub use segment::{FileSlice, LogSegment};

/// The file name of a segment or index: the base offset, zero-padded to 20 digits.
pub fn file_name(base_offset: i64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}
