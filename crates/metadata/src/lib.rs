//! Cluster metadata, KRaft-style: the records of the metadata log and the immutable image
//! brokers answer from.
//!
//! - [`records`]: [`MetadataRecord`] — broker registrations and fences, topics, partitions
//!   (replicas, ISR, leader, leader and partition epochs), configs, topic removal, client
//!   quotas, producer id blocks handed to brokers — with a compact binary codec for the
//!   replicated log.
//! - [`image`]: [`MetadataImage`], an immutable snapshot built by applying records in log
//!   order; applying the same records always gives the same image.
//! - [`placement`]: Kafka's replica placement (rack-aware, leaders spread evenly).
//!
//! This crate decides nothing about who is controller and never does I/O: the controller
//! quorum (openraft, next) replicates the records; brokers apply them.

pub mod image;
pub mod placement;
pub mod records;

pub use image::MetadataImage;
pub use records::MetadataRecord;
