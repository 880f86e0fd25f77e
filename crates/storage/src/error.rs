//! Storage errors, each mapped to the Kafka error code a client is answered with.

/// Everything that can go wrong in the log.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("offset {offset} is out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt log {path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("the log is closed")]
    Closed,
    /// A batch a follower was asked to append failed its checks (framing, magic, CRC).
    #[error("corrupt record batch at byte {position} of a follower append: {source}")]
    CorruptBatch {
        position: usize,
        source: strom_protocol::batch::BatchError,
    },
    /// Follower batches must continue the log exactly; a gap or overlap means the caller
    /// lost track of the log end and must resynchronise.
    #[error("follower append expected a batch at offset {expected}, got {got}")]
    NonContiguous { expected: i64, got: i64 },
    /// An idempotent producer's batch does not continue its sequence.
    #[error("{0}")]
    OutOfOrderSequence(String),
    /// A batch or marker carries an older epoch than the producer's (a zombie producer).
    #[error("{0}")]
    InvalidProducerEpoch(String),
    /// A non-transactional batch from a producer with an ongoing transaction.
    #[error("{0}")]
    InvalidTxnState(String),
    /// A marker from a transaction coordinator older than the last one seen.
    #[error("{0}")]
    TransactionCoordinatorFenced(String),
}

impl StorageError {
    /// The Kafka error code for this failure.
    pub fn error_code(&self) -> i16 {
        use strom_protocol::ResponseError as E;
        match self {
            StorageError::OffsetOutOfRange { .. } => E::OffsetOutOfRange.code(),
            StorageError::Io(_) | StorageError::Corrupt { .. } => E::KafkaStorageError.code(),
            StorageError::Closed => E::NotLeaderOrFollower.code(),
            StorageError::CorruptBatch { .. } => E::CorruptMessage.code(),
            StorageError::NonContiguous { .. } => E::UnknownServerError.code(),
            StorageError::OutOfOrderSequence(_) => E::OutOfOrderSequenceNumber.code(),
            StorageError::InvalidProducerEpoch(_) => E::InvalidProducerEpoch.code(),
            StorageError::InvalidTxnState(_) => E::InvalidTxnState.code(),
            StorageError::TransactionCoordinatorFenced(_) => E::TransactionCoordinatorFenced.code(),
        }
    }
}
