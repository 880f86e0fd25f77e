//! `__consumer_offsets`: the internal topic the group coordinator writes through
//! [`OffsetsTopic`] (its [`OffsetsLog`]). The coordinator serves the groups of the
//! partitions this broker leads: its [`Loader`] replays a partition's log into it when this
//! broker becomes its leader (in a new leader epoch) and drops its groups when leadership
//! moves away, as Kafka's coordinator loads and unloads on leader changes.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use strom_coordinator::{GroupCoordinator, OffsetsLog};
use tracing::info;

use crate::internal_topic::{self, PartitionLoad};
use crate::topics::{now_ms, Partition, TopicManager};
use crate::BrokerError;

/// The internal topic's name.
pub const TOPIC: &str = "__consumer_offsets";
/// Bytes read per step while loading a partition.
const LOAD_READ_BYTES: usize = 1 << 20;

/// The coordinator's writer: appends record batches to the partitions of the topic this
/// broker leads. The topic itself is created through the controller by FindCoordinator.
pub struct OffsetsTopic {
    pub topics: Arc<TopicManager>,
}

/// The configs `__consumer_offsets` is created with.
pub fn topic_configs() -> Vec<(String, String)> {
    vec![
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), "104857600".to_string()),
    ]
}

impl OffsetsTopic {
    /// Appends `records` as one batch to `partition` of the topic, which this broker must
    /// lead; with `producer`, as a transactional batch of that producer (id, epoch).
    fn append_batch(
        &self,
        partition: i32,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        producer: Option<(i64, i16)>,
    ) -> Result<(), (i16, String)> {
        let unknown = ResponseError::UnknownServerError.code();
        let topic = self.topics.get(TOPIC).ok_or_else(|| {
            (
                ResponseError::NotCoordinator.code(),
                format!("{TOPIC} does not exist"),
            )
        })?;
        let target = topic.led(partition).map_err(|code| {
            (
                ResponseError::NotCoordinator.code(),
                format!("partition {partition} of {TOPIC} is not led here ({code})"),
            )
        })?;
        let now = now_ms();
        let (buf, batches) = internal_topic::encode_batch(records, producer, now)
            .map_err(|message| (unknown, message))?;
        target
            .append_as_coordinator(&buf, &batches, now)
            .map_err(|e| match e {
                crate::replication::LeaderAppendError::NotLeader => (
                    ResponseError::NotCoordinator.code(),
                    format!("partition {partition} of {TOPIC} is not led here"),
                ),
                other => (other.error_code(), format!("{other:?}")),
            })?;
        Ok(())
    }
}

impl OffsetsLog for OffsetsTopic {
    fn append(
        &self,
        partition: i32,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), String> {
        self.append_batch(partition, records, None)
            .map_err(|(_, message)| message)
    }

    fn append_transactional(
        &self,
        partition: i32,
        producer_id: i64,
        producer_epoch: i16,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), i16> {
        self.append_batch(partition, records, Some((producer_id, producer_epoch)))
            .map_err(|(code, message)| {
                tracing::debug!(partition, producer_id, code, %message, "transactional offsets write refused");
                code
            })
    }
}

/// Keeps the group coordinator in step with this broker's leadership of the offsets topic.
pub type Loader = internal_topic::Loader<GroupsLoad>;

/// The group coordinator as [`Loader`] loads and unloads it.
pub struct GroupsLoad(pub Arc<GroupCoordinator>);

impl PartitionLoad for GroupsLoad {
    const TOPIC: &'static str = TOPIC;

    /// Replays one partition of the offsets topic into the coordinator, to its log end.
    fn load(&self, partition: &Partition, _leader_epoch: i32) -> Result<(), BrokerError> {
        let groups = &self.0;
        groups.unload_partition(partition.index);
        let started = std::time::Instant::now();
        let mut loaded = 0usize;
        internal_topic::replay_partition(partition, LOAD_READ_BYTES, |records| {
            for record in records {
                let Some(key) = &record.key else { continue };
                if record.control {
                    if let Some(commit) = control_is_commit(key) {
                        groups.complete_transaction(partition.index, record.producer_id, commit);
                    }
                } else if record.transactional {
                    groups.replay_transactional(key, record.value.as_deref(), record.producer_id);
                } else {
                    groups.replay(key, record.value.as_deref());
                }
                loaded += 1;
            }
        })?;
        info!(
            partition = partition.index,
            records = loaded,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "loaded consumer groups from {TOPIC}"
        );
        Ok(())
    }

    fn unload(&self, partition: i32) {
        let dropped = self.0.unload_partition(partition);
        info!(
            partition,
            groups = dropped,
            "unloaded {TOPIC} partition: leadership moved"
        );
    }
}

/// A control record's key (version i16, type i16): `Some(true)` for a commit marker,
/// `Some(false)` for an abort, `None` for other control types.
pub fn control_is_commit(key: &[u8]) -> Option<bool> {
    match key {
        [_, _, 0, 0] => Some(false),
        [_, _, 0, 1] => Some(true),
        _ => None,
    }
}
