//! The Strom broker: listener, connections, one module per Kafka API, and the wiring of
//! storage under them.
//!
//! Main types: [`Broker`] (the shared state every request sees), [`server::run`] (the
//! process lifecycle), [`topics::TopicManager`] (topics and their partition logs),
//! [`config::BrokerConfig`] (Kafka's property names), [`cluster::Cluster`] (the controller
//! quorum as this broker sees it). A request flows
//! `connection` → `api::handle` → `api::<name>` → `strom_storage`.
//!
//! The broker never panics on peer input: a malformed frame closes that one connection with
//! one log line; everything a client can get wrong is answered with Kafka's error code.

pub mod api;
pub mod cluster;
pub mod config;
mod connection;
mod consumer_offsets;
pub mod dynamic_config;
mod error;
mod fetcher;
mod internal_topic;
mod legacy;
pub mod log_cleaner;
mod peer;
pub mod producer_expiration;
pub mod producer_ids;
pub mod quotas;
pub mod replication;
pub mod response;
pub mod retention;
pub mod server;
#[cfg(test)]
mod sim;
pub mod storage_format;
pub mod topic_config;
pub mod topics;
pub mod transaction_state;
pub mod txn_markers;
pub mod txn_verification;

use std::sync::Arc;

pub use error::BrokerError;

/// State shared by all connections.
pub struct Broker {
    pub config: Arc<config::BrokerConfig>,
    pub node_id: i32,
    pub cluster_id: String,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub topics: Arc<topics::TopicManager>,
    /// The group coordinator for the groups whose `__consumer_offsets` partition this
    /// broker leads.
    pub groups: Arc<strom_coordinator::GroupCoordinator>,
    /// The controller quorum and the metadata this broker follows.
    pub cluster: Arc<cluster::Cluster>,
    /// `queued.max.request.bytes`: bytes of requests being read or served; reading pauses
    /// while it is exhausted. `None` when unlimited (Kafka's default).
    pub request_memory: Option<Arc<tokio::sync::Semaphore>>,
    /// Which `__consumer_offsets` partitions the group coordinator has loaded.
    pub offsets_loader: Arc<consumer_offsets::Loader>,
    /// The transaction coordinator for the transactional ids whose `__transaction_state`
    /// partition this broker leads.
    pub txns: Arc<strom_coordinator::transaction::TransactionCoordinator>,
    /// Which `__transaction_state` partitions the transaction coordinator has loaded.
    pub txn_loader: Arc<transaction_state::Loader>,
    /// Client quota usage ([`quotas`]).
    pub quotas: quotas::QuotaManager,
    /// ISR changes for the controller, from follower fetches ([`replication`]).
    pub isr_changes: tokio::sync::mpsc::Sender<replication::IsrChange>,
    /// Producer ids for InitProducerId, from blocks the controller gave this broker.
    pub producer_ids: Arc<producer_ids::ProducerIdManager>,
    /// Asks transaction coordinators before a transactional batch starts a transaction
    /// on a partition this broker leads (KIP-890 part 1).
    pub txn_verifier: Arc<txn_verification::Verifier>,
    /// Flips to `true` when the broker shuts down; long waits watch it.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}
