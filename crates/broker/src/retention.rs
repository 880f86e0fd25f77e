//! Log retention on this broker (Kafka's `LogManager.cleanupLogs`): every
//! `log.retention.check.interval.ms`, each local replica, leader or follower, deletes the
//! segments its topic's `retention.ms` and `retention.bytes` no longer keep (topics whose
//! `cleanup.policy` holds `delete`) and those wholly below its log start offset (every
//! topic). Storage does the deleting and never goes past the high watermark; the moved log
//! start offsets reach `log-start-offset-checkpoint` with the next flush.

use std::sync::Arc;

use strom_storage::RetentionPolicy;
use tracing::{debug, warn};

use crate::topics::{now_ms, TopicManager};
use crate::Broker;

/// The policy a topic's settings give its logs.
fn policy(settings: &crate::topic_config::LogConfig) -> RetentionPolicy {
    if settings.cleanup_policy_delete {
        RetentionPolicy {
            retention_ms: settings.retention_ms,
            retention_bytes: settings.retention_bytes,
        }
    } else {
        // Compacted only: the log start offset still deletes what is wholly below it.
        RetentionPolicy {
            retention_ms: -1,
            retention_bytes: -1,
        }
    }
}

/// One retention pass over every local replica. Returns the number of segments deleted.
pub fn delete_retained_segments(topics: &TopicManager, now_ms: i64) -> usize {
    let mut deleted = 0;
    for topic in topics.all() {
        let policy = policy(&topic.settings);
        for partition in topic.local_partitions() {
            match partition.log.delete_retained_segments(policy, now_ms) {
                Ok(d) => {
                    if d.segments > 0 {
                        debug!(topic = %topic.name, partition = partition.index, segments = d.segments, bytes = d.bytes, log_start_offset = d.log_start_offset, "retention deleted segments");
                    }
                    deleted += d.segments;
                }
                Err(strom_storage::StorageError::Closed) => {}
                Err(e) => {
                    warn!(topic = %topic.name, partition = partition.index, error = %e, "retention failed")
                }
            }
        }
    }
    deleted
}

/// Runs [`delete_retained_segments`] every `log.retention.check.interval.ms`, off the
/// async workers (deleting files blocks).
pub async fn retention_loop(broker: Arc<Broker>) {
    let interval_ms = broker.config.log_retention_check_interval_ms.max(1) as u64;
    crate::server::every_blocking(broker, interval_ms, |broker| {
        delete_retained_segments(&broker.topics, now_ms());
    })
    .await
}
