//! Strom's view of the Kafka wire protocol.
//!
//! Owns what every other crate needs to speak Kafka without re-implementing it:
//! - [`frame`]: size-prefixed framing with a hard limit checked before anything is allocated;
//! - [`versions`]: the API versions Strom implements and advertises in ApiVersions;
//! - [`batch`]: a zero-copy view of a record batch (magic v2) and its validation
//!   (sizes, CRC32C, record count, offset deltas);
//! - [`records`]: the records inside a stored batch (decompressed when needed), the
//!   batches log compaction rewrites, and the keyless-record check of compacted topics;
//! - [`wire`]: the primitive encoders used where a response is written by hand
//!   (the zero-copy Fetch response);
//! - [`alloc_guard`]: the global allocator binaries install so that a hostile array count
//!   in a request cannot abort the process.
//!
//! Message schemas themselves come from the `kafka-protocol` crate, re-exported as
//! [`kafka`]. This crate never touches sockets or files.

pub mod alloc_guard;
pub mod batch;
pub mod frame;
pub mod records;
pub mod versions;
pub mod wire;

pub use kafka_protocol as kafka;
pub use kafka_protocol::ResponseError;
