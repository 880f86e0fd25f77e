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

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError as E;
use strom_controller::service::{ControllerRequest, ControllerResponse, NewTopic};
use strom_coordinator::transaction::{
    BoxFuture, ProducerIdGenerator, TransactionCoordinator, TxnLog,
};
use strom_protocol::batch;
use tracing::{info, warn};

use crate::config::BrokerConfig;
use crate::replication::{LeaderAppendError, Replicated};
use crate::topics::{now_ms, TopicManager};
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
    // Kafka refuses to create it until that many brokers are up; Strom takes what is live,
    // so that a single node works without configuration.
    let live = broker.topics.image().image.live_brokers().count();
    let replication_factor = broker
        .config
        .transaction_state_log_replication_factor
        .min(i16::try_from(live).unwrap_or(i16::MAX))
        .max(1);
    let request = ControllerRequest::CreateTopics {
        topics: vec![NewTopic {
            name: TOPIC.to_string(),
            num_partitions: broker.config.transaction_state_log_num_partitions,
            replication_factor,
            assignments: Vec::new(),
            configs: topic_configs(&broker.config, replication_factor),
        }],
        validate_only: false,
    };
    match broker.cluster.call(request).await {
        ControllerResponse::Topics(results) => {
            if let Some(r) = results.first() {
                if r.error_code == 0 {
                    crate::cluster::wait_for_applied(broker, r.index).await;
                }
            }
        }
        other => warn!(answer = ?other, "creating {TOPIC} failed"),
    }
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

fn encode_batch(records: Vec<(Vec<u8>, Option<Vec<u8>>)>, now: i64) -> Result<BytesMut, i16> {
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: now,
            key: Some(Bytes::from(key)),
            value: value.map(Bytes::from),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options)
        .map_err(|_| E::UnknownServerError.code())?;
    Ok(buf)
}

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
        let buf = encode_batch(records, now)?;
        let batches =
            batch::validate_produce(&buf, usize::MAX).map_err(|_| E::UnknownServerError.code())?;
        let min_isr = topic.settings.min_insync_replicas;
        let (info, leader_epoch) = target
            .append_as_coordinator_in_epoch(coordinator_epoch, &buf, &batches, Some(min_isr), now)
            .map_err(|e| match e {
                LeaderAppendError::NotLeader => E::NotLeaderOrFollower.code(),
                LeaderAppendError::NotEnoughReplicas { .. } => E::NotEnoughReplicas.code(),
                LeaderAppendError::Storage(e) => e.error_code(),
            })?;
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

/// The `__transaction_state` partitions loaded, with the leader epoch (coordinator epoch)
/// they were loaded in.
pub type Loaded = BTreeMap<i32, i32>;

/// Keeps the coordinator in step with this broker's leadership of `__transaction_state`.
/// Runs inside each metadata apply, as the offsets loader does.
pub struct Loader {
    txns: Arc<TransactionCoordinator>,
    loaded: parking_lot::Mutex<Loaded>,
    /// `transaction.state.log.load.buffer.size`: bytes read per step.
    read_bytes: usize,
}

impl Loader {
    pub fn new(txns: Arc<TransactionCoordinator>, read_bytes: usize) -> Loader {
        Loader {
            txns,
            loaded: parking_lot::Mutex::new(Loaded::new()),
            read_bytes: read_bytes.max(1),
        }
    }

    /// Whether `partition` is loaded for its current leader epoch; until then requests for
    /// its transactional ids get COORDINATOR_LOAD_IN_PROGRESS.
    pub fn is_loaded(&self, partition: i32, leader_epoch: i32) -> bool {
        self.loaded.lock().get(&partition) == Some(&leader_epoch)
    }

    /// Loads partitions newly led (or led in a new epoch), unloads those no longer led.
    pub fn sync(&self, topics: &TopicManager) -> Result<(), BrokerError> {
        let mut loaded = self.loaded.lock();
        let topic = topics.get(TOPIC);
        let led: Loaded = topic
            .as_ref()
            .map(|topic| {
                topic
                    .local_partitions()
                    .filter(|p| topic.led(p.index).is_ok())
                    .map(|p| (p.index, p.leader_epoch()))
                    .collect()
            })
            .unwrap_or_default();
        for (partition, _) in loaded.iter().filter(|(p, _)| !led.contains_key(p)) {
            let dropped = self.txns.unload_partition(*partition);
            info!(
                partition,
                transactional_ids = dropped,
                "unloaded {TOPIC} partition: leadership moved"
            );
        }
        loaded.retain(|p, _| led.contains_key(p));
        let Some(topic) = topic else {
            return Ok(());
        };
        for (index, epoch) in led {
            if loaded.get(&index) == Some(&epoch) {
                continue;
            }
            let Some(partition) = topic.local.get(index as usize).cloned().flatten() else {
                continue;
            };
            self.txns.begin_load(index, epoch);
            match self.replay_partition(&partition) {
                Ok(records) => {
                    let ids = self.txns.complete_load(index, epoch);
                    info!(
                        partition = index,
                        coordinator_epoch = epoch,
                        records,
                        transactional_ids = ids,
                        "loaded transactions from {TOPIC}"
                    );
                    loaded.insert(index, epoch);
                }
                Err(e) => {
                    self.txns.unload_partition(index);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Replays one partition into the coordinator, to its log end (records above the high
    /// watermark are the new leader's and will be committed). Returns the records read.
    fn replay_partition(&self, partition: &crate::topics::Partition) -> Result<usize, BrokerError> {
        let mut replayed = 0usize;
        let mut offset = partition.log.offsets().log_start_offset;
        loop {
            let read = partition
                .log
                .read_to_log_end(offset, self.read_bytes, true)?;
            let Some(slice) = read.slice else { break };
            let bytes = slice.read_to_vec()?;
            let mut complete = 0;
            while let Some(b) = batch::BatchOffsets::parse(&bytes[complete..]) {
                if complete + b.size_bytes > bytes.len() {
                    break;
                }
                complete += b.size_bytes;
                offset = b.last_offset() + 1;
            }
            if complete == 0 {
                break;
            }
            let mut buf = Bytes::from(bytes).slice(..complete);
            let sets =
                RecordBatchDecoder::decode_all(&mut buf).map_err(|e| BrokerError::LogDir {
                    path: partition.log.dir().display().to_string(),
                    reason: format!("undecodable batch in {TOPIC}: {e}"),
                })?;
            for set in &sets {
                for record in set.records.iter().filter(|r| !r.control) {
                    if let Some(key) = &record.key {
                        self.txns
                            .replay(partition.index, key, record.value.as_deref());
                        replayed += 1;
                    }
                }
            }
        }
        Ok(replayed)
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
