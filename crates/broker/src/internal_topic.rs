//! What the coordinators' internal topics (`__consumer_offsets`, `__transaction_state`)
//! share: their creation through the controller, the batches their coordinators write
//! ([`encode_batch`]), the check that this broker coordinates a key's partition, and
//! following this broker's leadership of their partitions — a
//! partition led in a new leader epoch is replayed from its log into the coordinator
//! ([`replay_partition`]), one no longer led is dropped — as Kafka's coordinators load and
//! unload on leader changes.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError as E;
use strom_controller::service::{ControllerRequest, ControllerResponse, NewTopic};
use strom_protocol::batch::{self, BatchInfo};
use tracing::warn;

use crate::topics::{Partition, TopicManager};
use crate::{Broker, BrokerError};

/// Creates internal topic `name` (one that exists already is fine) with `num_partitions`
/// partitions and `replication_factor` replicas at most — Kafka refuses to create it until
/// that many brokers are up; Strom takes what is live, so that a single node works without
/// configuration — and `configs(replication_factor)`, then waits until this broker has
/// applied it.
pub async fn create(
    broker: &Broker,
    name: &str,
    num_partitions: i32,
    replication_factor: i16,
    configs: impl FnOnce(i16) -> Vec<(String, String)>,
) {
    let live = broker.topics.image().image.live_brokers().count();
    let replication_factor = replication_factor
        .min(i16::try_from(live).unwrap_or(i16::MAX))
        .max(1);
    let request = ControllerRequest::CreateTopics {
        topics: vec![NewTopic {
            name: name.to_string(),
            num_partitions,
            replication_factor,
            assignments: Vec::new(),
            configs: configs(replication_factor),
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
        other => warn!(answer = ?other, "creating {name} failed"),
    }
}

/// One uncompressed batch of `records` (key, value) timestamped `now_ms`, as a coordinator
/// appends it, and its validation; with `producer` (id, epoch), a transactional batch of
/// that producer.
pub fn encode_batch(
    records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    producer: Option<(i64, i16)>,
    now_ms: i64,
) -> Result<(BytesMut, Vec<BatchInfo>), String> {
    let (producer_id, producer_epoch) = producer.unwrap_or((-1, -1));
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: producer.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // Kafka's coordinator writes sequence 0; the log does not check the
            // sequences of its own coordinators' batches.
            sequence: if producer.is_some() { i as i32 } else { -1 },
            timestamp: now_ms,
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
    RecordBatchEncoder::encode(&mut buf, &records, &options).map_err(|e| e.to_string())?;
    let batches = batch::validate_produce(&buf, usize::MAX).map_err(|e| e.to_string())?;
    Ok((buf, batches))
}

/// Reads a led partition of an internal topic from its log start to its log end (records
/// above the high watermark are the new leader's and will be committed), `read_bytes` at a
/// time, and hands the records of each complete batch, decoded, to `replay`.
pub fn replay_partition(
    partition: &Partition,
    read_bytes: usize,
    mut replay: impl FnMut(&[Record]),
) -> Result<(), BrokerError> {
    let mut offset = partition.log.offsets().log_start_offset;
    loop {
        let read = partition.log.read_to_log_end(offset, read_bytes, true)?;
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
        let sets = RecordBatchDecoder::decode_all(&mut buf).map_err(|e| BrokerError::LogDir {
            path: partition.log.dir().display().to_string(),
            reason: format!("undecodable batch in {}: {e}", partition.log.topic()),
        })?;
        for set in &sets {
            replay(&set.records);
        }
    }
    Ok(())
}

/// A coordinator whose state is the replay of an internal topic's partitions.
pub trait PartitionLoad {
    /// The internal topic.
    const TOPIC: &'static str;

    /// Replaces the state of `partition`, newly led in `leader_epoch`, with its log's; on an
    /// error the partition is left unloaded.
    fn load(&self, partition: &Partition, leader_epoch: i32) -> Result<(), BrokerError>;

    /// Drops the state of `partition`: this broker no longer leads it.
    fn unload(&self, partition: i32);
}

/// Keeps a coordinator in step with this broker's leadership of its internal topic. Its
/// [`sync`](Self::sync) runs inside each metadata apply (before the applied index is
/// published), so an admin request that waited for its change never races a later load.
pub struct Loader<L> {
    coordinator: L,
    /// The partitions loaded, with the leader epoch they were loaded in.
    loaded: parking_lot::Mutex<BTreeMap<i32, i32>>,
}

impl<L: PartitionLoad> Loader<L> {
    pub fn new(coordinator: L) -> Loader<L> {
        Loader {
            coordinator,
            loaded: parking_lot::Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether `partition` is loaded for its current leader epoch.
    pub fn is_loaded(&self, partition: i32, leader_epoch: i32) -> bool {
        self.loaded.lock().get(&partition) == Some(&leader_epoch)
    }

    /// Whether this broker coordinates the keys of `partition`: NOT_COORDINATOR unless it
    /// leads the partition (the client asks FindCoordinator again), and
    /// COORDINATOR_LOAD_IN_PROGRESS until the partition is loaded in its current epoch.
    pub fn check_coordinator(&self, topics: &TopicManager, partition: i32) -> Result<(), i16> {
        let topic = topics.get(L::TOPIC).ok_or(E::NotCoordinator.code())?;
        match topic.led(partition) {
            Ok(p) if self.is_loaded(partition, p.leader_epoch()) => Ok(()),
            Ok(_) => Err(E::CoordinatorLoadInProgress.code()),
            Err(_) => Err(E::NotCoordinator.code()),
        }
    }

    /// Loads partitions newly led (or led in a new epoch), unloads those no longer led.
    pub fn sync(&self, topics: &TopicManager) -> Result<(), BrokerError> {
        let mut loaded = self.loaded.lock();
        let topic = topics.get(L::TOPIC);
        let led: BTreeMap<i32, i32> = topic
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
            self.coordinator.unload(*partition);
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
            self.coordinator.load(&partition, epoch)?;
            loaded.insert(index, epoch);
        }
        Ok(())
    }
}
