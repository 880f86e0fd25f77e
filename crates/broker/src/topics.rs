//! Topics and their partitions on this broker, kept in step with the metadata image: each
//! applied image opens the logs of partitions with a replica here (recovering them after an
//! unclean shutdown), deletes the logs of removed topics, and records every partition's
//! leader and epoch; plus periodic flushing and clean closing.
//!
//! Topic metadata itself (ids, partitions, configs) lives in the controller quorum's log;
//! a broker never creates or deletes a topic on its own.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use strom_controller::Published;
use strom_metadata::image::{PartitionImage, TopicImage};
use strom_storage::checkpoint::{self, write_atomically};
use strom_storage::{LogConfig, PartitionLog};
use tokio::sync::Notify;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::dynamic_config::{BrokerDefaults, DynamicBrokerConfigs};
use crate::topic_config;
use crate::BrokerError;

/// Longest legal topic name (Kafka's `Topic.MAX_NAME_LENGTH`).
pub const TOPIC_NAME_MAX_CHARS: usize = 249;
const CLEAN_SHUTDOWN_FILE: &str = ".strom-clean-shutdown";
/// The controller quorum's log directory (Kafka's name), never a partition of a topic.
pub const METADATA_LOG_DIR: &str = "__cluster_metadata-0";
/// Kafka's file naming the topic id a partition directory belongs to.
const PARTITION_METADATA_FILE: &str = "partition.metadata";
/// Kafka's `replica.high.watermark.checkpoint.interval.ms` default: high watermarks move
/// with every acknowledged write, so they are checkpointed at most this often (and at
/// shutdown); a replica restarting from an older one only re-learns it from its leader.
const HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS: i64 = 5_000;
/// Topic configs' resource type in the metadata (Kafka's `ConfigResource.Type.TOPIC`).
pub const TOPIC_RESOURCE: i8 = 2;

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

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One partition with a replica on this broker.
#[derive(Debug)]
pub struct Partition {
    pub index: i32,
    pub log: Arc<PartitionLog>,
    /// This broker.
    pub(crate) node_id: i32,
    leader_epoch: AtomicI32,
    /// Leader, ISR and followers' progress (see [`crate::replication`]).
    pub(crate) replica: Mutex<crate::replication::ReplicaState>,
    /// When the periodic flusher last fsynced this partition (ms since the epoch).
    pub last_flush_ms: AtomicI64,
    /// Woken on every append, high watermark move and change of leadership, for waiting
    /// fetches and produces.
    pub appended: Notify,
}

impl Partition {
    pub(crate) fn new(index: i32, log: PartitionLog, node_id: i32) -> Partition {
        Partition {
            index,
            log: Arc::new(log),
            node_id,
            leader_epoch: AtomicI32::new(-1),
            replica: Mutex::new(crate::replication::ReplicaState {
                leader: -1,
                leader_epoch: -1,
                partition_epoch: -1,
                ..Default::default()
            }),
            last_flush_ms: AtomicI64::new(now_ms()),
            appended: Notify::new(),
        }
    }

    /// The partition's leader epoch as of the last applied metadata.
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.load(Ordering::Acquire)
    }

    pub(crate) fn set_leader_epoch(&self, leader_epoch: i32) {
        self.leader_epoch.store(leader_epoch, Ordering::Release);
    }
}

/// A topic as the metadata image has it, with the partitions hosted here.
#[derive(Debug)]
pub struct Topic {
    pub name: String,
    pub id: Uuid,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
    pub settings: topic_config::LogConfig,
    /// Every partition, indexed by partition number.
    pub states: Vec<PartitionImage>,
    /// The partitions with a replica on this broker, indexed by partition number.
    pub local: Vec<Option<Arc<Partition>>>,
    node_id: i32,
    /// The metadata this topic was built from.
    image: Arc<TopicImage>,
}

impl Topic {
    pub fn partition_count(&self) -> usize {
        self.states.len()
    }

    /// The partition if this broker leads it: UNKNOWN_TOPIC_OR_PARTITION for a partition
    /// the topic does not have, NOT_LEADER_OR_FOLLOWER when it is led elsewhere (or not at
    /// all), so that the client refreshes its metadata.
    pub fn led(&self, index: i32) -> Result<&Arc<Partition>, i16> {
        use kafka_protocol::ResponseError as E;
        let i = usize::try_from(index).map_err(|_| E::UnknownTopicOrPartition.code())?;
        let state = self
            .states
            .get(i)
            .ok_or(E::UnknownTopicOrPartition.code())?;
        match self.local.get(i).and_then(Option::as_ref) {
            Some(partition) if state.leader == self.node_id => Ok(partition),
            _ => Err(E::NotLeaderOrFollower.code()),
        }
    }

    /// The partition's replica on this broker, leader or follower: UNKNOWN_TOPIC_OR_PARTITION
    /// for a partition the topic does not have, NOT_LEADER_OR_FOLLOWER when this broker holds
    /// no replica of it.
    pub fn replica(&self, index: i32) -> Result<&Arc<Partition>, kafka_protocol::ResponseError> {
        use kafka_protocol::ResponseError as E;
        let i = usize::try_from(index).map_err(|_| E::UnknownTopicOrPartition)?;
        if i >= self.states.len() {
            return Err(E::UnknownTopicOrPartition);
        }
        self.local
            .get(i)
            .and_then(Option::as_ref)
            .ok_or(E::NotLeaderOrFollower)
    }

    /// The leader of a partition and its epoch (-1 when unknown), for KIP-951 hints.
    pub fn leader_of(&self, index: i32) -> (i32, i32) {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.states.get(i))
            .map_or((-1, -1), |s| (s.leader, s.leader_epoch))
    }

    pub fn local_partitions(&self) -> impl Iterator<Item = &Arc<Partition>> {
        self.local.iter().flatten()
    }
}

/// What a topic creation asks for, already defaulted.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub num_partitions: i32,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
}

/// Checks what a broker can check of a creation without the metadata: name, counts and
/// config values. Returns Kafka's error code and message.
pub fn validate_new(topic: &NewTopic) -> Result<(), (i16, String)> {
    use kafka_protocol::ResponseError as E;
    validate_topic_name(&topic.name).map_err(|m| (E::InvalidTopicException.code(), m))?;
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
    for (key, value) in &topic.configs {
        topic_config::validate(key, value).map_err(|m| (E::InvalidConfig.code(), m))?;
    }
    Ok(())
}

/// All topics of the cluster as this broker last applied them.
pub struct TopicManager {
    config: Arc<BrokerConfig>,
    node_id: i32,
    log_dirs: Vec<PathBuf>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    by_id: RwLock<HashMap<Uuid, String>>,
    /// The metadata the topics reflect.
    image: RwLock<Published>,
    /// Log dirs whose last shutdown was clean (their logs skip recovery when first opened).
    clean: Vec<bool>,
    recovery_points: Mutex<BTreeMap<(String, i32), i64>>,
    /// Held while the recovery point checkpoints are written.
    writing_recovery_points: Mutex<()>,
    /// High watermarks as last checkpointed (Kafka's `replication-offset-checkpoint`): read
    /// at start so that a restarted replica does not take its whole log as committed, and
    /// compared at each flush so that an unchanged set is not rewritten.
    high_watermarks: Mutex<BTreeMap<(String, i32), i64>>,
    /// When the high watermarks were last checkpointed (ms since the epoch).
    high_watermarks_written_ms: AtomicI64,
    /// Log start offsets as last checkpointed (Kafka's `log-start-offset-checkpoint`): a
    /// start moved inside a segment (DeleteRecords) survives a restart.
    log_start_offsets: Mutex<BTreeMap<(String, i32), i64>>,
    /// Serializes applying images (the read path never takes it).
    applying: Mutex<()>,
    /// Whether an image in which this broker is live has been applied. Replicas take their
    /// partition's leader, epochs and ISR only from then on: before, a restarting broker may
    /// apply images older than its own log (from a lagging state machine or controller), and
    /// leading by one with a smaller ISR than its log was written under would move its high
    /// watermark over records the other replicas lack (Kafka's brokers likewise publish no
    /// metadata before they have caught up).
    live: AtomicBool,
    /// The log index of the last applied metadata, for requests waiting on their change.
    applied: tokio::sync::watch::Sender<u64>,
    /// Runs after the topics reflect an image and before its index is published.
    on_applied: RwLock<Option<AppliedHook>>,
}

/// Work that must follow every applied image before anyone sees it as applied.
pub type AppliedHook = Arc<dyn Fn(&TopicManager) + Send + Sync>;

impl TopicManager {
    /// Prepares the log dirs; topics appear as metadata is applied ([`TopicManager::apply`]).
    pub fn open(config: Arc<BrokerConfig>) -> Result<TopicManager, BrokerError> {
        let log_dirs: Vec<PathBuf> = config.log_dirs.iter().map(PathBuf::from).collect();
        let mut recovery_points = BTreeMap::new();
        let mut high_watermarks = BTreeMap::new();
        let mut log_start_offsets = BTreeMap::new();
        for dir in &log_dirs {
            std::fs::create_dir_all(dir)?;
            recovery_points.extend(checkpoint::read(
                &dir.join(checkpoint::RECOVERY_POINT_FILE),
            )?);
            high_watermarks.extend(checkpoint::read(
                &dir.join(checkpoint::REPLICATION_OFFSET_FILE),
            )?);
            log_start_offsets.extend(checkpoint::read(
                &dir.join(checkpoint::LOG_START_OFFSET_FILE),
            )?);
        }
        let clean = log_dirs
            .iter()
            .map(|d| d.join(CLEAN_SHUTDOWN_FILE).exists())
            .collect();
        // From here on, a crash is an unclean shutdown.
        for dir in &log_dirs {
            remove_if_exists(&dir.join(CLEAN_SHUTDOWN_FILE))?;
        }
        Ok(TopicManager {
            node_id: config.node_id,
            config,
            log_dirs,
            topics: RwLock::new(BTreeMap::new()),
            by_id: RwLock::new(HashMap::new()),
            image: RwLock::new(Published::default()),
            clean,
            recovery_points: Mutex::new(recovery_points),
            writing_recovery_points: Mutex::new(()),
            high_watermarks: Mutex::new(high_watermarks),
            high_watermarks_written_ms: AtomicI64::new(0),
            log_start_offsets: Mutex::new(log_start_offsets),
            applying: Mutex::new(()),
            live: AtomicBool::new(false),
            applied: tokio::sync::watch::channel(0).0,
            on_applied: RwLock::new(None),
        })
    }

    /// The metadata the topics currently reflect.
    pub fn image(&self) -> Published {
        self.image.read().clone()
    }

    /// The host and port of broker `id` if it is registered and not fenced.
    pub fn live_endpoint(&self, id: i32) -> Option<(String, u16)> {
        self.image
            .read()
            .image
            .brokers
            .get(&id)
            .filter(|b| !b.fenced)
            .map(|b| (b.host.clone(), b.port))
    }

    /// Brings the topics in step with `published`: opens logs of new local partitions,
    /// deletes those of removed topics, refreshes leaders, epochs and configs. With
    /// `remove_strays` (once caught up with the log: the first image in which this broker is
    /// live), also deletes partition directories no topic owns, left by deletions this broker
    /// missed, and hands every replica its partition's state, which it takes from then on.
    pub fn apply(&self, published: &Published, remove_strays: bool) -> Result<(), BrokerError> {
        let _applying = self.applying.lock();
        let live = remove_strays || self.live.load(Ordering::Acquire);
        let image = &published.image;
        let removed: Vec<Arc<Topic>> = self
            .topics
            .read()
            .values()
            .filter(|t| image.topics.get(&t.id).is_none_or(|i| i.name != t.name))
            .cloned()
            .collect();
        for topic in removed {
            self.remove(&topic)?;
        }
        let no_configs = BTreeMap::new();
        let dynamic = DynamicBrokerConfigs::from_image(image, self.node_id);
        // A changed dynamic broker config can change any topic's settings.
        let defaults_changed =
            dynamic != DynamicBrokerConfigs::from_image(&self.image.read().image, self.node_id);
        let defaults = BrokerDefaults::new(&self.config, &dynamic);
        for topic_image in image.topics.values() {
            let configs = image
                .configs
                .get(&(TOPIC_RESOURCE, topic_image.name.clone()))
                .unwrap_or(&no_configs);
            let current = self.get(&topic_image.name);
            if let Some(current) = &current {
                // Images share unchanged topics: most of a large cluster is skipped here.
                if Arc::ptr_eq(&current.image, topic_image)
                    && current.configs == *configs
                    && !remove_strays
                    && !defaults_changed
                {
                    continue;
                }
            }
            let topic = self.build(
                topic_image,
                configs.clone(),
                &defaults,
                current.as_deref(),
                live,
            )?;
            self.by_id.write().insert(topic.id, topic.name.clone());
            self.topics
                .write()
                .insert(topic.name.clone(), Arc::new(topic));
        }
        if remove_strays {
            self.remove_stray_partitions()?;
        }
        self.live.store(live, Ordering::Release);
        *self.image.write() = published.clone();
        let hook = self.on_applied.read().clone();
        if let Some(hook) = hook {
            hook(self);
        }
        self.applied.send_replace(published.index);
        Ok(())
    }

    /// Sets the work run after each applied image (see [`AppliedHook`]).
    pub fn set_on_applied(&self, hook: AppliedHook) {
        *self.on_applied.write() = Some(hook);
    }

    /// Follows the index of the applied metadata.
    pub fn subscribe_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// A topic from its image, reusing the partitions already open (and handing them new
    /// settings when its configs or the broker defaults changed); with `live`, each replica
    /// takes its partition's state.
    fn build(
        &self,
        image: &Arc<TopicImage>,
        configs: BTreeMap<String, String>,
        defaults: &BrokerDefaults,
        current: Option<&Topic>,
        live: bool,
    ) -> Result<Topic, BrokerError> {
        let settings = topic_config::resolve(&configs, defaults);
        let settings_changed = current.is_some_and(|t| t.settings != settings);
        if settings_changed {
            info!(topic = %image.name, ?settings, "topic settings changed");
        }
        let states: Vec<PartitionImage> = image.partitions.values().cloned().collect();
        let mut local = Vec::with_capacity(states.len());
        for (i, state) in states.iter().enumerate() {
            let index = i as i32;
            if !state.replicas.contains(&self.node_id) {
                // A reassignment moved this replica away: its copy goes.
                if let Some(gone) = current.and_then(|t| t.local.get(i).cloned().flatten()) {
                    info!(topic = %image.name, partition = index, "replica moved away; deleting its log");
                    gone.apply_state(state, now_ms());
                    gone.log.delete()?;
                    gone.appended.notify_waiters();
                }
                local.push(None);
                continue;
            }
            let existing = current.and_then(|t| t.local.get(i).cloned().flatten());
            let partition = match existing {
                Some(p) => {
                    if settings_changed {
                        p.log.set_config(log_config(&settings));
                    }
                    p
                }
                None => Arc::new(self.open_partition(image, index, &settings)?),
            };
            if live {
                partition.apply_state(state, now_ms());
            }
            local.push(Some(partition));
        }
        if current.is_none() {
            info!(topic = %image.name, partitions = states.len(), topic_id = %image.id, "opened topic");
        }
        Ok(Topic {
            name: image.name.clone(),
            id: image.id,
            replication_factor: states.first().map_or(0, |s| s.replicas.len() as i16),
            configs,
            settings,
            states,
            local,
            node_id: self.node_id,
            image: Arc::clone(image),
        })
    }

    /// Opens (creating or recovering) the log of one partition. A directory left by an
    /// earlier topic of the same name (another topic id) is deleted first.
    fn open_partition(
        &self,
        topic: &TopicImage,
        index: i32,
        settings: &topic_config::LogConfig,
    ) -> Result<Partition, BrokerError> {
        let (dir_index, dir) = self.partition_dir(&topic.name, index);
        let marker = dir.join(PARTITION_METADATA_FILE);
        let expected = partition_metadata(topic.id);
        let mut recovery_point = self
            .recovery_points
            .lock()
            .get(&(topic.name.clone(), index))
            .copied()
            .unwrap_or(0);
        let mut existed = dir.is_dir();
        if existed {
            match std::fs::read_to_string(&marker) {
                Ok(text) if text == expected => {}
                // Written by a version that kept no marker: the directory is this topic's.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                _ => {
                    warn!(dir = %dir.display(), "removing the log of an earlier topic of the same name");
                    std::fs::remove_dir_all(&dir)?;
                    recovery_point = 0;
                    existed = false;
                }
            }
        }
        let log = PartitionLog::open(
            &dir,
            &topic.name,
            index,
            log_config(settings),
            recovery_point,
            // A new log has nothing to recover.
            self.clean[dir_index] || !existed,
            now_ms(),
        )?;
        if !marker.exists() {
            // Not fsynced (two fsyncs per partition would dominate topic creation): a marker
            // lost in a crash reads as missing, and a missing marker adopts the directory.
            let tmp = marker.with_extension("tmp");
            std::fs::write(&tmp, &expected)?;
            std::fs::rename(&tmp, &marker)?;
        }
        let key = (topic.name.clone(), index);
        let checkpointed_start = existed
            .then(|| self.log_start_offsets.lock().get(&key).copied())
            .flatten();
        if let Some(start) = checkpointed_start {
            if let Err(error) = log.increment_log_start_offset(start) {
                warn!(topic = %topic.name, partition = index, %error, "cannot restore the checkpointed log start offset");
            }
        }
        let checkpointed = self.high_watermarks.lock().get(&key).copied();
        restore_high_watermark(&log, checkpointed);
        Ok(Partition::new(index, log, self.node_id))
    }

    /// Forgets a topic and deletes its local logs.
    fn remove(&self, topic: &Topic) -> Result<(), BrokerError> {
        self.topics.write().remove(&topic.name);
        self.by_id.write().remove(&topic.id);
        for partition in topic.local_partitions() {
            partition.log.delete()?;
            partition.appended.notify_waiters();
        }
        info!(topic = %topic.name, "deleted topic");
        Ok(())
    }

    /// Deletes partition directories no topic owns (left by deletions while this broker
    /// was down, or by a crash in the middle of one).
    fn remove_stray_partitions(&self) -> Result<(), BrokerError> {
        let topics = self.topics.read();
        for dir in &self.log_dirs {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if name == METADATA_LOG_DIR {
                    continue;
                }
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
                    .is_some_and(|t| t.local.get(partition).is_some_and(Option::is_some));
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

    /// Fsyncs every log whose `flush.ms` has passed since its last flush (all of them when
    /// `force`) and records the recovery points. Writing the checkpoint costs an fsync, so it
    /// is skipped when no recovery point moved (an idle cluster of many partitions writes
    /// nothing).
    pub fn flush_due(&self, force: bool) -> Result<(), BrokerError> {
        let now = now_ms();
        let mut flushed_any = false;
        let mut high_watermarks: Vec<BTreeMap<(String, i32), i64>> =
            vec![BTreeMap::new(); self.log_dirs.len()];
        let mut log_start_offsets = high_watermarks.clone();
        for topic in self.all() {
            for partition in topic.local_partitions() {
                let dir_index = self.dir_index_of(partition.log.dir());
                let offsets = partition.log.offsets();
                let key = (topic.name.clone(), partition.index);
                high_watermarks[dir_index].insert(key.clone(), offsets.high_watermark);
                log_start_offsets[dir_index].insert(key, offsets.log_start_offset);
                let since = now.saturating_sub(partition.last_flush_ms.load(Ordering::Relaxed));
                let before = partition.log.recovery_point();
                let point = if force || since >= topic.settings.flush_ms {
                    partition.last_flush_ms.store(now, Ordering::Relaxed);
                    partition.log.flush()?
                } else {
                    before
                };
                flushed_any |= force || point != before;
            }
        }
        if flushed_any {
            self.checkpoint_recovery_points()?;
        }
        self.checkpoint_log_start_offsets(&log_start_offsets, force)?;
        let all: BTreeMap<(String, i32), i64> = high_watermarks
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mut written = self.high_watermarks.lock();
        let due = now.saturating_sub(self.high_watermarks_written_ms.load(Ordering::Relaxed))
            >= HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS;
        if force || (due && *written != all) {
            self.high_watermarks_written_ms
                .store(now, Ordering::Relaxed);
            for (dir, entries) in self.log_dirs.iter().zip(&high_watermarks) {
                checkpoint::write(&dir.join(checkpoint::REPLICATION_OFFSET_FILE), entries)?;
            }
            *written = all;
        }
        Ok(())
    }

    /// Writes the log start offsets (one map per log dir) when any moved since the last
    /// checkpoint, or when `force`d. They move rarely (retention, DeleteRecords). Not before
    /// the broker is live: until then some partitions may not be open yet, and their entries
    /// would be lost.
    fn checkpoint_log_start_offsets(
        &self,
        per_dir: &[BTreeMap<(String, i32), i64>],
        force: bool,
    ) -> Result<(), BrokerError> {
        if !self.live.load(Ordering::Acquire) {
            return Ok(());
        }
        let all: BTreeMap<(String, i32), i64> = per_dir
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mut written = self.log_start_offsets.lock();
        if force || *written != all {
            for (dir, entries) in self.log_dirs.iter().zip(per_dir) {
                checkpoint::write(&dir.join(checkpoint::LOG_START_OFFSET_FILE), entries)?;
            }
            *written = all;
        }
        Ok(())
    }

    /// Writes every open partition's recovery point to its log dir's checkpoint: after
    /// flushes, and right after a follower's truncation moved a recovery point back, before
    /// anything is appended past the cut (Kafka checkpoints after every truncation): a crash
    /// with the older, higher point on disk would trust segments rewritten since, stale index
    /// files included. Writers take turns, each writing the points as they are then, so none
    /// puts back a point a truncation has lowered.
    pub fn checkpoint_recovery_points(&self) -> Result<(), BrokerError> {
        let _writing = self.writing_recovery_points.lock();
        let mut points: Vec<BTreeMap<(String, i32), i64>> =
            vec![BTreeMap::new(); self.log_dirs.len()];
        for topic in self.all() {
            for partition in topic.local_partitions() {
                points[self.dir_index_of(partition.log.dir())].insert(
                    (topic.name.clone(), partition.index),
                    partition.log.recovery_point(),
                );
            }
        }
        for (dir, entries) in self.log_dirs.iter().zip(&points) {
            checkpoint::write(&dir.join(checkpoint::RECOVERY_POINT_FILE), entries)?;
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
            for partition in topic.local_partitions() {
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

/// Sets a reopened log's high watermark to its checkpoint or, without one (a crash before the
/// first checkpoint, a partition created since), to the log start as Kafka does: the log end
/// may hold records no other replica has, and a restarted leader would take them as committed.
/// A leader moves it on once its in-sync followers have fetched (at once when it is alone).
pub(crate) fn restore_high_watermark(log: &PartitionLog, checkpointed: Option<i64>) {
    log.reset_high_watermark(checkpointed.unwrap_or(log.offsets().log_start_offset));
}

/// Kafka's `partition.metadata` content for a topic id (base64 of the id, URL-safe, no
/// padding, as Kafka prints topic ids).
fn partition_metadata(topic_id: Uuid) -> String {
    format!("version: 0\ntopic_id: {}\n", topic_id_string(topic_id))
}

/// A topic id as Kafka prints it.
pub fn topic_id_string(id: Uuid) -> String {
    crate::storage_format::base64_url(id.as_bytes())
}

/// The storage settings of a topic's logs.
pub fn log_config(settings: &topic_config::LogConfig) -> LogConfig {
    LogConfig {
        segment_bytes: settings.segment_bytes,
        // KIP-354: a compacted log rolls within max.compaction.lag.ms, so its records
        // leave the active segment (which is never cleaned) in time.
        segment_ms: if settings.cleanup_policy_compact {
            settings.segment_ms.min(settings.max_compaction_lag_ms)
        } else {
            settings.segment_ms
        },
        flush_messages: settings.flush_messages,
        index_interval_bytes: u64::from(settings.index_interval_bytes),
        segment_index_bytes: u64::from(settings.segment_index_bytes),
    }
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl strom_coordinator::consumer_group::TopicMetadata for TopicManager {
    fn topic(&self, name: &str) -> Option<(Uuid, i32)> {
        self.get(name).map(|t| (t.id, t.partition_count() as i32))
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
}
