//! DescribeLogDirs (v1–v4): per log dir of this broker, the replicas it holds with their
//! size on disk and offset lag, and (v4) the file system's total and usable bytes, as Kafka's
//! `ReplicaManager.describeLogDirs` reports them. A log dir whose file system cannot be
//! read answers KAFKA_STORAGE_ERROR.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::topics::Partition;
use crate::Broker;

pub fn handle(
    broker: &Broker,
    req: DescribeLogDirsRequest,
    version: i16,
) -> DescribeLogDirsResponse {
    // None: every replica; otherwise only the partitions asked for.
    let wanted: Option<BTreeMap<String, Vec<i32>>> = req.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.topic.to_string(), t.partitions))
            .collect()
    });
    let results = broker
        .config
        .log_dirs
        .iter()
        .map(|dir| describe_dir(broker, Path::new(dir), wanted.as_ref(), version))
        .collect();
    DescribeLogDirsResponse::default().with_results(results)
}

fn describe_dir(
    broker: &Broker,
    dir: &Path,
    wanted: Option<&BTreeMap<String, Vec<i32>>>,
    version: i16,
) -> DescribeLogDirsResult {
    let shown = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let result = DescribeLogDirsResult::default()
        .with_log_dir(StrBytes::from_string(shown.display().to_string()));
    let space = match disk_space(dir) {
        Ok(space) => space,
        Err(e) => {
            tracing::warn!(log_dir = %dir.display(), error = %e, "cannot read the log dir's file system");
            return result.with_error_code(ResponseError::KafkaStorageError.code());
        }
    };
    let mut result = result.with_topics(topics_in(broker, dir, wanted));
    if version >= 4 {
        (result.total_bytes, result.usable_bytes) = space;
    }
    result
}

/// The replicas of `dir` (those asked for), by topic.
fn topics_in(
    broker: &Broker,
    dir: &Path,
    wanted: Option<&BTreeMap<String, Vec<i32>>>,
) -> Vec<DescribeLogDirsTopic> {
    let dir = PathBuf::from(dir);
    broker
        .topics
        .all()
        .iter()
        .filter_map(|topic| {
            let asked = match wanted {
                Some(w) => Some(w.get(&topic.name)?),
                None => None,
            };
            let partitions: Vec<DescribeLogDirsPartition> = topic
                .local_partitions()
                .filter(|p| p.log.dir().parent() == Some(dir.as_path()))
                .filter(|p| asked.is_none_or(|a| a.contains(&p.index)))
                .map(|p| describe_partition(p))
                .collect();
            (!partitions.is_empty()).then(|| {
                DescribeLogDirsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.name.clone())))
                    .with_partitions(partitions)
            })
        })
        .collect()
}

/// A replica's size and Kafka's offset lag: how far its log end is behind its high
/// watermark (0 for a leader and for a follower that has what is committed).
fn describe_partition(partition: &Partition) -> DescribeLogDirsPartition {
    let offsets = partition.log.offsets();
    DescribeLogDirsPartition::default()
        .with_partition_index(partition.index)
        .with_partition_size(i64::try_from(partition.log.size_bytes()).unwrap_or(i64::MAX))
        .with_offset_lag((offsets.high_watermark - offsets.log_end_offset).max(0))
        .with_is_future_key(false)
}

/// Total and usable bytes of the file system holding `dir` (Java's `FileStore` total and
/// usable space).
// statvfs's field types are u64 on 64-bit Linux but narrower elsewhere.
#[allow(clippy::useless_conversion)]
fn disk_space(dir: &Path) -> std::io::Result<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("log dir path holds a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stat` a buffer of the right type that
    // statvfs fills in when it returns 0.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    let block = u64::from(stat.f_frsize);
    let bytes = |blocks: u64| i64::try_from(blocks.saturating_mul(block)).unwrap_or(i64::MAX);
    Ok((
        bytes(u64::from(stat.f_blocks)),
        bytes(u64::from(stat.f_bavail)),
    ))
}
