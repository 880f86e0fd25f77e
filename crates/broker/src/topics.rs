//! Topics and their partitions on this broker: creation, deletion, persistence of topic
//! metadata, opening and recovering the partition logs at start, and periodic flushing.
//!
//! Topic metadata (id, partition count, configs) is kept in `<first log dir>/.strom-topics/`,
//! one properties file per topic, until the controller quorum holds it (issue: cluster).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use strom_storage::checkpoint::{self, write_atomically};
use strom_storage::{LogConfig, PartitionLog};
use tokio::sync::Notify;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::topic_config;
use crate::BrokerError;

/// Longest legal topic name (Kafka's `Topic.MAX_NAME_LENGTH`).
pub const TOPIC_NAME_MAX_CHARS: usize = 249;
const TOPICS_DIR: &str = ".strom-topics";
const CLEAN_SHUTDOWN_FILE: &str = ".strom-clean-shutdown";

/// Checks a topic name against Kafka's rules; the error text is Kafka's.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Topic name is illegal, it can't be empty".into());
    }
    if name == "." || name == ".." {
        return Err("Topic name cannot be \".\" or \"..\"".into());
    }
    if name.len() > TOPIC_NAME_MAX_CHARS {
        return Err(format!(
            "Topic name is illegal, it can't be longer than {TOPIC_NAME_MAX_CHARS} characters, topic name: {name}"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(format!(
            "Topic name {name} is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Kafka's collision rule: `a.b` and `a_b` cannot both exist (metric names would clash).
fn unify_collision_chars(name: &str) -> String {
    name.replace('.', "_")
}

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One partition hosted here, with what its requests need besides the log.
#[derive(Debug)]
pub struct Partition {
    pub index: i32,
    pub log: Arc<PartitionLog>,
    pub leader_epoch: i32,
    /// When the periodic flusher last fsynced this partition (ms since the epoch).
    pub last_flush_ms: std::sync::atomic::AtomicI64,
    /// Woken on every append, for waiting fetches.
    pub appended: Notify,
}

impl Partition {
    fn new(index: i32, log: PartitionLog) -> Partition {
        Partition {
            index,
            log: Arc::new(log),
            leader_epoch: 0,
            last_flush_ms: std::sync::atomic::AtomicI64::new(now_ms()),
            appended: Notify::new(),
        }
    }
}

/// A topic and its settings.
#[derive(Debug)]
pub struct Topic {
    pub name: String,
    pub id: Uuid,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<Arc<Partition>>,
    pub settings: topic_config::LogConfig,
}

/// What a topic creation asks for, already defaulted.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub num_partitions: i32,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
}

/// All topics of this broker.
pub struct TopicManager {
    config: Arc<BrokerConfig>,
    log_dirs: Vec<PathBuf>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    by_id: RwLock<HashMap<Uuid, String>>,
    /// Serializes creations and deletions (rare; the read path never takes it).
    admin: Mutex<()>,
}

impl TopicManager {
    /// Opens every topic found on disk, recovering logs unless the last shutdown was clean.
    pub fn open(config: Arc<BrokerConfig>) -> Result<TopicManager, BrokerError> {
        let log_dirs: Vec<PathBuf> = config.log_dirs.iter().map(PathBuf::from).collect();
        for dir in &log_dirs {
            std::fs::create_dir_all(dir.join(TOPICS_DIR))?;
        }
        let manager = TopicManager {
            config,
            log_dirs,
            topics: RwLock::new(BTreeMap::new()),
            by_id: RwLock::new(HashMap::new()),
            admin: Mutex::new(()),
        };
        manager.load()?;
        Ok(manager)
    }

    fn metadata_dir(&self) -> PathBuf {
        self.log_dirs[0].join(TOPICS_DIR)
    }

    fn load(&self) -> Result<(), BrokerError> {
        let clean: Vec<bool> = self
            .log_dirs
            .iter()
            .map(|d| d.join(CLEAN_SHUTDOWN_FILE).exists())
            .collect();
        let mut recovery_points = BTreeMap::new();
        for dir in &self.log_dirs {
            recovery_points.extend(checkpoint::read(
                &dir.join(checkpoint::RECOVERY_POINT_FILE),
            )?);
        }
        let mut entries: Vec<_> =
            std::fs::read_dir(self.metadata_dir())?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("properties") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let (name, id, num_partitions, replication_factor, configs) =
                parse_topic_file(&text).map_err(|reason| BrokerError::LogDir {
                    path: path.display().to_string(),
                    reason,
                })?;
            let settings = topic_config::resolve(&configs, &self.config);
            let mut partitions = Vec::with_capacity(num_partitions as usize);
            for index in 0..num_partitions {
                let (dir_index, dir) = self.partition_dir(&name, index);
                let recovery_point = recovery_points
                    .get(&(name.clone(), index))
                    .copied()
                    .unwrap_or(0);
                let log = PartitionLog::open(
                    &dir,
                    &name,
                    index,
                    log_config(&settings),
                    recovery_point,
                    clean[dir_index],
                    now_ms(),
                )?;
                partitions.push(Arc::new(Partition::new(index, log)));
            }
            info!(topic = %name, partitions = num_partitions, "loaded topic");
            self.by_id.write().insert(id, name.clone());
            self.topics.write().insert(
                name.clone(),
                Arc::new(Topic {
                    name,
                    id,
                    replication_factor,
                    configs,
                    partitions,
                    settings,
                }),
            );
        }
        self.remove_stray_partitions()?;
        // From here on, a crash is an unclean shutdown.
        for dir in &self.log_dirs {
            remove_if_exists(&dir.join(CLEAN_SHUTDOWN_FILE))?;
        }
        Ok(())
    }

    /// Deletes partition directories no topic owns (left by a crash in the middle of a topic
    /// deletion), so that a topic created later under the same name starts empty.
    fn remove_stray_partitions(&self) -> Result<(), BrokerError> {
        let topics = self.topics.read();
        for dir in &self.log_dirs {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                let Some((topic, partition)) = name.rsplit_once('-') else {
                    continue;
                };
                let Ok(partition) = partition.parse::<usize>() else {
                    continue;
                };
                if !path.is_dir() || validate_topic_name(topic).is_err() {
                    continue;
                }
                let owned = topics
                    .get(topic)
                    .is_some_and(|t| partition < t.partitions.len());
                if !owned {
                    warn!(dir = %path.display(), "removing a partition directory that no topic owns");
                    std::fs::remove_dir_all(&path)?;
                }
            }
        }
        Ok(())
    }

    /// The directory of a partition: where it already is, else the log dir with the fewest
    /// partitions of this topic (round robin by partition index).
    fn partition_dir(&self, topic: &str, partition: i32) -> (usize, PathBuf) {
        let name = format!("{topic}-{partition}");
        for (i, dir) in self.log_dirs.iter().enumerate() {
            if dir.join(&name).is_dir() {
                return (i, dir.join(&name));
            }
        }
        let i = partition as usize % self.log_dirs.len();
        (i, self.log_dirs[i].join(name))
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    pub fn get_by_id(&self, id: &Uuid) -> Option<Arc<Topic>> {
        let name = self.by_id.read().get(id).cloned()?;
        self.get(&name)
    }

    pub fn all(&self) -> Vec<Arc<Topic>> {
        self.topics.read().values().cloned().collect()
    }

    /// Checks a creation without performing it; returns Kafka's error code and message.
    pub fn check_new(&self, topic: &NewTopic) -> Result<(), (i16, String)> {
        use kafka_protocol::ResponseError as E;
        validate_topic_name(&topic.name).map_err(|m| (E::InvalidTopicException.code(), m))?;
        if self.topics.read().contains_key(&topic.name) {
            return Err((
                E::TopicAlreadyExists.code(),
                format!("Topic '{}' already exists.", topic.name),
            ));
        }
        let unified = unify_collision_chars(&topic.name);
        if let Some(other) = self
            .topics
            .read()
            .keys()
            .find(|k| unify_collision_chars(k) == unified)
        {
            return Err((
                E::InvalidTopicException.code(),
                format!(
                    "Topic '{}' collides with existing topic: {other}",
                    topic.name
                ),
            ));
        }
        if topic.num_partitions <= 0 {
            return Err((
                E::InvalidPartitions.code(),
                "Number of partitions must be larger than 0.".into(),
            ));
        }
        if topic.replication_factor <= 0 {
            return Err((
                E::InvalidReplicationFactor.code(),
                "Replication factor must be larger than 0.".into(),
            ));
        }
        if topic.replication_factor > 1 {
            return Err((
                E::InvalidReplicationFactor.code(),
                format!(
                    "Unable to replicate the partition {} time(s): The target replication factor of {} cannot be reached because only 1 broker(s) are registered.",
                    topic.replication_factor, topic.replication_factor
                ),
            ));
        }
        for (key, value) in &topic.configs {
            topic_config::validate(key, value).map_err(|m| (E::InvalidConfig.code(), m))?;
        }
        Ok(())
    }

    /// Creates a topic: writes its metadata file, then creates its partition logs.
    pub fn create(&self, topic: NewTopic) -> Result<Arc<Topic>, (i16, String)> {
        let _admin = self.admin.lock();
        self.check_new(&topic)?;
        for key in topic
            .configs
            .keys()
            .filter(|k| !topic_config::ENFORCED.contains(&k.as_str()))
        {
            warn!(topic = %topic.name, config = %key, "topic config accepted and reported but not enforced yet");
        }
        if !topic.name.starts_with("__") && (topic.name.contains('.') || topic.name.contains('_')) {
            warn!(topic = %topic.name, "topic names with '.' or '_' can collide in metric names");
        }
        let storage_error = |e: &dyn std::fmt::Display| {
            (
                kafka_protocol::ResponseError::KafkaStorageError.code(),
                e.to_string(),
            )
        };
        let id = Uuid::new_v4();
        let settings = topic_config::resolve(&topic.configs, &self.config);
        // Metadata first: a crash before the logs exist leaves a topic whose empty logs are
        // created at the next start, never log directories without a topic.
        let metadata_path = self
            .metadata_dir()
            .join(format!("{}.properties", topic.name));
        let text = topic_file(
            &topic.name,
            id,
            topic.num_partitions,
            topic.replication_factor,
            &topic.configs,
        );
        write_atomically(&metadata_path, &text).map_err(|e| storage_error(&e))?;
        let mut partitions = Vec::with_capacity(topic.num_partitions as usize);
        for index in 0..topic.num_partitions {
            let (_, dir) = self.partition_dir(&topic.name, index);
            match PartitionLog::open(
                &dir,
                &topic.name,
                index,
                log_config(&settings),
                0,
                true,
                now_ms(),
            ) {
                Ok(log) => partitions.push(Arc::new(Partition::new(index, log))),
                Err(e) => {
                    warn!(topic = %topic.name, partition = index, error = %e, "creating a partition failed; undoing the topic");
                    for partition in &partitions {
                        let _ = partition.log.delete();
                    }
                    let _ = remove_if_exists(&metadata_path);
                    return Err(storage_error(&e));
                }
            }
        }
        info!(topic = %topic.name, partitions = topic.num_partitions, topic_id = %id, "created topic");
        let created = Arc::new(Topic {
            name: topic.name.clone(),
            id,
            replication_factor: topic.replication_factor,
            configs: topic.configs,
            partitions,
            settings,
        });
        self.by_id.write().insert(id, topic.name.clone());
        self.topics.write().insert(topic.name, Arc::clone(&created));
        Ok(created)
    }

    /// Creates a topic with the broker's defaults if auto-creation is enabled.
    pub fn auto_create(&self, name: &str) -> Result<Arc<Topic>, (i16, String)> {
        if let Some(existing) = self.get(name) {
            return Ok(existing);
        }
        let topic = NewTopic {
            name: name.to_string(),
            num_partitions: self.config.num_partitions,
            replication_factor: self.config.default_replication_factor,
            configs: BTreeMap::new(),
        };
        match self.create(topic) {
            Err((code, _)) if code == kafka_protocol::ResponseError::TopicAlreadyExists.code() => {
                self.get(name).ok_or((code, "topic vanished".into()))
            }
            other => other,
        }
    }

    /// Deletes a topic: forgets it, removes its metadata file and its partition directories.
    pub fn delete(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        let _admin = self.admin.lock();
        let Some(topic) = self.topics.write().remove(name) else {
            return Err(BrokerError::Config(format!("unknown topic {name}")));
        };
        self.by_id.write().remove(&topic.id);
        remove_if_exists(&self.metadata_dir().join(format!("{name}.properties")))?;
        for partition in &topic.partitions {
            partition.log.delete()?;
            partition.appended.notify_waiters();
        }
        info!(topic = %name, "deleted topic");
        Ok(topic)
    }

    /// Fsyncs every log whose `flush.ms` has passed since its last flush (all of them when
    /// `force`) and records the recovery points. Writing the checkpoint costs an fsync, so it
    /// is skipped when no log was flushed.
    pub fn flush_due(&self, force: bool) -> Result<(), BrokerError> {
        use std::sync::atomic::Ordering;
        let now = now_ms();
        let mut flushed_any = false;
        let mut points: Vec<BTreeMap<(String, i32), i64>> =
            vec![BTreeMap::new(); self.log_dirs.len()];
        for topic in self.all() {
            for partition in &topic.partitions {
                let since = now.saturating_sub(partition.last_flush_ms.load(Ordering::Relaxed));
                let point = if force || since >= topic.settings.flush_ms {
                    partition.last_flush_ms.store(now, Ordering::Relaxed);
                    flushed_any = true;
                    partition.log.flush()?
                } else {
                    partition.log.recovery_point()
                };
                let dir_index = self.dir_index_of(partition.log.dir());
                points[dir_index].insert((topic.name.clone(), partition.index), point);
            }
        }
        if flushed_any {
            for (dir, entries) in self.log_dirs.iter().zip(&points) {
                checkpoint::write(&dir.join(checkpoint::RECOVERY_POINT_FILE), entries)?;
            }
        }
        Ok(())
    }

    fn dir_index_of(&self, partition_dir: &Path) -> usize {
        self.log_dirs
            .iter()
            .position(|d| partition_dir.parent() == Some(d.as_path()))
            .unwrap_or(0)
    }

    /// Closes every log (flushing it), writes recovery points and marks the shutdown clean.
    pub fn close_all(&self) -> Result<(), BrokerError> {
        for topic in self.all() {
            for partition in &topic.partitions {
                partition.log.close()?;
            }
        }
        self.flush_due(true)?;
        for dir in &self.log_dirs {
            write_atomically(&dir.join(CLEAN_SHUTDOWN_FILE), "")?;
        }
        Ok(())
    }
}

/// The storage settings of a topic's logs.
pub fn log_config(settings: &topic_config::LogConfig) -> LogConfig {
    LogConfig {
        segment_bytes: settings.segment_bytes,
        segment_ms: settings.segment_ms,
        flush_messages: settings.flush_messages,
        index_interval_bytes: u64::from(settings.index_interval_bytes),
        segment_index_bytes: u64::from(settings.segment_index_bytes),
    }
}

fn topic_file(
    name: &str,
    id: Uuid,
    partitions: i32,
    replication_factor: i16,
    configs: &BTreeMap<String, String>,
) -> String {
    let mut text = format!("name={name}\ntopic.id={id}\npartitions={partitions}\nreplication.factor={replication_factor}\n");
    for (key, value) in configs {
        text.push_str(&format!("config.{key}={value}\n"));
    }
    text
}

type TopicFile = (String, Uuid, i32, i16, BTreeMap<String, String>);

fn parse_topic_file(text: &str) -> Result<TopicFile, String> {
    let mut fields = HashMap::new();
    let mut configs = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("malformed line {line:?}"))?;
        match key.strip_prefix("config.") {
            Some(config) => {
                configs.insert(config.to_string(), value.to_string());
            }
            None => {
                fields.insert(key.to_string(), value.to_string());
            }
        }
    }
    let get = |k: &str| fields.get(k).ok_or_else(|| format!("missing {k}"));
    let name = get("name")?.clone();
    let id = Uuid::parse_str(get("topic.id")?).map_err(|e| format!("bad topic.id: {e}"))?;
    let partitions = get("partitions")?
        .parse()
        .map_err(|_| "bad partitions".to_string())?;
    let replication_factor = get("replication.factor")?
        .parse()
        .map_err(|_| "bad replication.factor".to_string())?;
    Ok((name, id, partitions, replication_factor, configs))
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl strom_coordinator::consumer_group::TopicMetadata for TopicManager {
    fn topic(&self, name: &str) -> Option<(Uuid, i32)> {
        self.get(name).map(|t| (t.id, t.partitions.len() as i32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafkas_rules() {
        assert!(validate_topic_name("orders.v1_x-y").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name(".").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a b").is_err());
        assert!(validate_topic_name("é").is_err());
        assert!(validate_topic_name(&"a".repeat(249)).is_ok());
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
    }

    #[test]
    fn topic_files_round_trip() {
        let id = Uuid::new_v4();
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_string(), "1000".to_string());
        let text = topic_file("t.x", id, 3, 1, &configs);
        let (name, parsed_id, partitions, rf, parsed_configs) = parse_topic_file(&text).unwrap();
        assert_eq!(
            (name.as_str(), parsed_id, partitions, rf),
            ("t.x", id, 3, 1)
        );
        assert_eq!(parsed_configs, configs);
        assert!(parse_topic_file("name=x\n").is_err());
    }
}
