//! `__transaction_state`: the internal topic the transaction coordinator writes through
//! [`TxnStateLog`] (its [`TxnLog`]). It is created through the controller on the first
//! FindCoordinator for a transactional id or the first transactional InitProducerId, with
//! compaction, no compression, `transaction.state.log.replication.factor` replicas (at most
//! the live brokers, as `__consumer_offsets`) and `transaction.state.log.min.isr`.
//!
//! The coordinator serves the transactional ids of the partitions this broker leads:
//! [`Loader::sync`] loads a partition when this broker becomes its leader in a new leader
//! epoch (that epoch is the coordinator epoch) and unloads it when leadership moves away.
//! Writes are acknowledged once on every in-sync replica, as Kafka's acks=-1 appends are.

use std::sync::Arc;

use kafka_protocol::ResponseError as E;
use strom_coordinator::transaction::{
    BoxFuture, ProducerIdGenerator, TransactionCoordinator, TxnLog,
};
use tracing::info;

use crate::config::BrokerConfig;
use crate::internal_topic::{self, PartitionLoad};
use crate::replication::Replicated;
use crate::topics::{now_ms, Partition, TopicManager};
use crate::{Broker, BrokerError};

/// The internal topic's name.
pub const TOPIC: &str = "__transaction_state";

/// The configs `__transaction_state` is created with (Kafka's `transactionTopicConfigs`).
pub fn topic_configs(config: &BrokerConfig, replication_factor: i16) -> Vec<(String, String)> {
    let min_isr = config
        .transaction_state_log_min_isr
        .min(i32::from(replication_factor))
        .max(1);
    vec![
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("compression.type".to_string(), "uncompressed".to_string()),
        (
            "unclean.leader.election.enable".to_string(),
            "false".to_string(),
        ),
        ("min.insync.replicas".to_string(), min_isr.to_string()),
        (
            "segment.bytes".to_string(),
            config.transaction_state_log_segment_bytes.to_string(),
        ),
    ]
}

/// Creates `__transaction_state` with `transaction.state.log.num.partitions` partitions
/// (one that exists already is fine) and waits until this broker has applied it.
pub async fn create_topic(broker: &Broker) {
    internal_topic::create(
        broker,
        TOPIC,
        broker.config.transaction_state_log_num_partitions,
        broker.config.transaction_state_log_replication_factor,
        |replication_factor| topic_configs(&broker.config, replication_factor),
    )
    .await
}

/// The coordinator's writer: appends to the partitions of the topic this broker leads, in
/// the coordinator epoch, and waits for the in-sync replicas.
pub struct TxnStateLog {
    pub topics: Arc<TopicManager>,
    /// Longest wait for the in-sync replicas (Kafka's `request.timeout.ms` for these
    /// appends).
    pub replication_timeout_ms: u64,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Kafka's `request.timeout.ms` default, the coordinator's replication wait.
pub const REPLICATION_TIMEOUT_MS: u64 = 30_000;

impl TxnStateLog {
    async fn append_records(
        &self,
        partition: i32,
        coordinator_epoch: i32,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), i16> {
        let topic = self
            .topics
            .get(TOPIC)
            .ok_or(E::UnknownTopicOrPartition.code())?;
        let target = Arc::clone(topic.led(partition)?);
        let now = now_ms();
        let (buf, batches) = internal_topic::encode_batch(records, None, now)
            .map_err(|_| E::UnknownServerError.code())?;
        let min_isr = topic.settings.min_insync_replicas;
        let (info, leader_epoch) = target
            .append_as_coordinator_in_epoch(coordinator_epoch, &buf, &batches, Some(min_isr), now)
            .map_err(|e| e.error_code())?;
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_millis(self.replication_timeout_ms);
        let mut shutdown = self.shutdown.clone();
        match target
            .wait_replicated(leader_epoch, info.last_offset + 1, deadline, &mut shutdown)
            .await
        {
            Replicated::Yes { .. } => Ok(()),
            Replicated::NotLeader => Err(E::NotLeaderOrFollower.code()),
            Replicated::TimedOut => Err(E::RequestTimedOut.code()),
        }
    }
}

impl TxnLog for TxnStateLog {
    fn append(
        &self,
        partition: i32,
        coordinator_epoch: i32,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> BoxFuture<'_, Result<(), i16>> {
        Box::pin(self.append_records(partition, coordinator_epoch, records))
    }
}

/// Keeps the transaction coordinator in step with this broker's leadership of
/// `__transaction_state`.
pub type Loader = internal_topic::Loader<TxnsLoad>;

/// The transaction coordinator as [`Loader`] loads and unloads it.
pub struct TxnsLoad {
    pub txns: Arc<TransactionCoordinator>,
    /// `transaction.state.log.load.buffer.size`: bytes read per step.
    pub read_bytes: usize,
}

impl PartitionLoad for TxnsLoad {
    const TOPIC: &'static str = TOPIC;

    /// Replays one partition into the coordinator, to its log end; its transactional ids
    /// get COORDINATOR_LOAD_IN_PROGRESS meanwhile.
    fn load(&self, partition: &Partition, leader_epoch: i32) -> Result<(), BrokerError> {
        let index = partition.index;
        self.txns.begin_load(index, leader_epoch);
        let mut records = 0usize;
        let replayed =
            internal_topic::replay_partition(partition, self.read_bytes.max(1), |batch| {
                for record in batch.iter().filter(|r| !r.control) {
                    if let Some(key) = &record.key {
                        self.txns.replay(index, key, record.value.as_deref());
                        records += 1;
                    }
                }
            });
        if let Err(e) = replayed {
            self.txns.unload_partition(index);
            return Err(e);
        }
        let ids = self.txns.complete_load(index, leader_epoch);
        info!(
            partition = index,
            coordinator_epoch = leader_epoch,
            records,
            transactional_ids = ids,
            "loaded transactions from {TOPIC}"
        );
        Ok(())
    }

    fn unload(&self, partition: i32) {
        let dropped = self.txns.unload_partition(partition);
        info!(
            partition,
            transactional_ids = dropped,
            "unloaded {TOPIC} partition: leadership moved"
        );
    }
}

/// The transaction coordinator takes its producer ids from the broker's manager (blocks
/// the controller allocates).
impl ProducerIdGenerator for crate::producer_ids::ProducerIdManager {
    fn generate(&self) -> BoxFuture<'_, Result<i64, i16>> {
        Box::pin(crate::producer_ids::ProducerIdManager::generate(self))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_topic_is_compacted_uncompressed_and_its_min_isr_capped_at_its_replicas() {
        let config = BrokerConfig::embedded_default();
        let configs: BTreeMap<String, String> = topic_configs(&config, 1).into_iter().collect();
        assert_eq!(configs["cleanup.policy"], "compact");
        assert_eq!(configs["compression.type"], "uncompressed");
        assert_eq!(configs["unclean.leader.election.enable"], "false");
        assert_eq!(configs["min.insync.replicas"], "1");
        assert_eq!(configs["segment.bytes"], "104857600");
        let configs: BTreeMap<String, String> = topic_configs(&config, 3).into_iter().collect();
        assert_eq!(configs["min.insync.replicas"], "2");
        for (key, value) in &configs {
            crate::topic_config::validate(key, value).expect("a valid topic config");
        }
    }
}
