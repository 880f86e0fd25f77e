//! Broker errors. Per-partition failures travel as Kafka error codes inside responses;
//! these are the failures of the broker itself and of a connection.

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(#[from] strom_storage::StorageError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding a response failed: {0}")]
    Encode(String),
    #[error("log directory {path}: {reason}")]
    LogDir { path: String, reason: String },
}
