//! The log cleaner: background threads compacting the logs of topics whose `cleanup.policy`
//! holds `compact` (Kafka's `LogCleaner` and `LogCleanerManager`). Each pass picks the
//! dirtiest log that must be cleaned among every local replica, leader or follower (each
//! replica is compacted on its own, as in Kafka), cleans it up to its high watermark and
//! records its new clean point in its log dir's `cleaner-offset-checkpoint`. With nothing
//! to clean a thread sleeps `log.cleaner.backoff.ms`.
//!
//! Threads: `log.cleaner.threads`, each with an offset map of its share of
//! `log.cleaner.dedupe.buffer.size`; together they read and write at most
//! `log.cleaner.io.max.bytes.per.second`. Shutdown stops a cleaning between two batches
//! (what was swapped in stays valid) and joins the threads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use strom_storage::checkpoint;
use strom_storage::cleaner::{CLEANER_OFFSET_FILE, OFFSET_MAP_SLOT_BYTES};
use strom_storage::{
    CleanOutcome, Cleanable, CleanerProgress, CompactionConfig, OffsetMap, PartitionLog,
};
use tracing::{error, info, warn};

use crate::config::BrokerConfig;
use crate::topic_config;
use crate::topics::{now_ms, TopicManager};
use crate::BrokerError;

/// The throttle measures the cleaners' rate over windows this long.
const THROTTLE_WINDOW_MS: u64 = 300;
/// Most clean points a checkpoint file may list when read back.
const CHECKPOINT_ENTRIES_MAX: usize = 1 << 20;

/// A topic partition, by name.
type PartitionId = (String, i32);

/// The running cleaner threads.
pub struct LogCleaner {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// What the threads share.
struct Shared {
    topics: Arc<TopicManager>,
    backoff: Duration,
    stopping: AtomicBool,
    /// Wakes sleeping threads at shutdown.
    wake: (Mutex<()>, Condvar),
    /// Logs being cleaned, so two threads never take the same one.
    in_progress: Mutex<HashSet<PartitionId>>,
    /// Logs whose cleaning failed: skipped until a restart (Kafka's uncleanable partitions).
    uncleanable: Mutex<HashSet<PartitionId>>,
    /// Clean points read from the checkpoints at start, handed to each log when first seen.
    restored: Mutex<HashMap<PartitionId, i64>>,
    throttle: Mutex<Throttle>,
    /// Held while a checkpoint file is written.
    checkpointing: Mutex<()>,
}

/// A log chosen for cleaning.
struct Target {
    id: PartitionId,
    log: Arc<PartitionLog>,
    config: CompactionConfig,
    cleanable: Cleanable,
}

impl LogCleaner {
    /// Starts `log.cleaner.threads` cleaner threads (none when `log.cleaner.enable` is
    /// false), restoring the clean points of the log dirs' checkpoints.
    pub fn start(
        config: &BrokerConfig,
        topics: Arc<TopicManager>,
    ) -> Result<Option<LogCleaner>, BrokerError> {
        let threads = usize::try_from(config.log_cleaner_threads).unwrap_or(0);
        if !config.log_cleaner_enable || threads == 0 {
            return Ok(None);
        }
        let log_dirs: Vec<PathBuf> = config.log_dirs.iter().map(PathBuf::from).collect();
        let shared = Arc::new(Shared {
            topics,
            restored: Mutex::new(read_checkpoints(&log_dirs)?),
            backoff: Duration::from_millis(config.log_cleaner_backoff_ms.max(0) as u64),
            stopping: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
            in_progress: Mutex::new(HashSet::new()),
            uncleanable: Mutex::new(HashSet::new()),
            throttle: Mutex::new(Throttle::new(config.log_cleaner_io_max_bytes_per_second)),
            checkpointing: Mutex::new(()),
        });
        let map_bytes =
            usize::try_from(config.log_cleaner_dedupe_buffer_size).unwrap_or(usize::MAX) / threads;
        let load_factor = config.log_cleaner_io_buffer_load_factor;
        if map_bytes < OFFSET_MAP_SLOT_BYTES * 2 {
            return Err(BrokerError::Config(format!(
                "log.cleaner.dedupe.buffer.size leaves {map_bytes} bytes per cleaner thread, too few for an offset map"
            )));
        }
        let handles = (0..threads)
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("strom-log-cleaner-{i}"))
                    .spawn(move || shared.run(OffsetMap::new(map_bytes, load_factor)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        info!(
            threads,
            dedupe_buffer_bytes = config.log_cleaner_dedupe_buffer_size,
            "log cleaner started"
        );
        Ok(Some(LogCleaner {
            shared,
            threads: handles,
        }))
    }

    /// Stops the threads (a cleaning in progress stops between two batches) and waits for
    /// them.
    pub fn shutdown(self) {
        self.shared.stopping.store(true, Ordering::Release);
        {
            let _guard = self.shared.wake.0.lock();
            self.shared.wake.1.notify_all();
        }
        for thread in self.threads {
            if thread.join().is_err() {
                error!("a log cleaner thread panicked");
            }
        }
        info!("log cleaner stopped");
    }
}

impl Shared {
    /// One thread's loop: clean the dirtiest log, or sleep when none needs it.
    fn run(&self, mut map: OffsetMap) {
        while !self.stopping.load(Ordering::Acquire) {
            let progressed = match self.grab_filthiest(now_ms()) {
                Some(target) => {
                    let progressed = self.clean(&target, &mut map);
                    self.in_progress.lock().remove(&target.id);
                    progressed
                }
                None => false,
            };
            if !progressed {
                self.sleep(self.backoff);
            }
        }
    }

    /// Sleeps up to `duration`, waking early at shutdown.
    fn sleep(&self, duration: Duration) {
        let mut guard = self.wake.0.lock();
        if !self.stopping.load(Ordering::Acquire) {
            self.wake.1.wait_for(&mut guard, duration);
        }
    }

    /// The compacted log with the highest dirty ratio among those that must be cleaned now
    /// (Kafka's `grabFilthiestCompactedLog`), marked in progress.
    fn grab_filthiest(&self, now_ms: i64) -> Option<Target> {
        let mut best: Option<Target> = None;
        for topic in self.topics.all() {
            if !topic.settings.cleanup_policy_compact {
                continue;
            }
            let config = topic_config::compaction(&topic.settings);
            for partition in topic.local_partitions() {
                let id = (topic.name.clone(), partition.index);
                if self.in_progress.lock().contains(&id) || self.uncleanable.lock().contains(&id) {
                    continue;
                }
                self.restore_clean_point(&id, &partition.log);
                let upper_bound = partition.log.offsets().high_watermark;
                let cleanable = match partition.log.cleanable(&config, upper_bound, now_ms) {
                    Ok(cleanable) => cleanable,
                    Err(e) => {
                        self.mark_uncleanable(&id, &e.to_string());
                        continue;
                    }
                };
                let dirtier = best
                    .as_ref()
                    .is_none_or(|b| cleanable.dirty_ratio > b.cleanable.dirty_ratio);
                if cleanable.must_clean && dirtier {
                    best = Some(Target {
                        id,
                        log: Arc::clone(&partition.log),
                        config,
                        cleanable,
                    });
                }
            }
        }
        let target = best?;
        self.in_progress.lock().insert(target.id.clone());
        Some(target)
    }

    /// A log seen for the first time takes its checkpointed clean point.
    fn restore_clean_point(&self, id: &PartitionId, log: &PartitionLog) {
        if log.first_dirty_offset().is_some() {
            return;
        }
        if let Some(offset) = self.restored.lock().remove(id) {
            log.set_first_dirty_offset(offset);
        }
    }

    fn mark_uncleanable(&self, id: &PartitionId, reason: &str) {
        error!(topic = %id.0, partition = id.1, error = reason, "log cleaning failed; the partition is skipped until a restart");
        self.uncleanable.lock().insert(id.clone());
    }

    /// Cleans `target` and checkpoints its clean point. Returns whether the clean point
    /// moved (else the thread backs off).
    fn clean(&self, target: &Target, map: &mut OffsetMap) -> bool {
        let started = Instant::now();
        let mut progress = Progress { shared: self };
        let outcome = target.log.clean(
            map,
            &target.config,
            &target.cleanable,
            now_ms(),
            &mut progress,
        );
        match outcome {
            Ok(CleanOutcome::Cleaned {
                first_dirty_offset,
                stats,
            }) => {
                info!(
                    topic = %target.id.0,
                    partition = target.id.1,
                    first_dirty_offset,
                    dirty_ratio = target.cleanable.dirty_ratio,
                    bytes_read = stats.bytes_read,
                    bytes_written = stats.bytes_written,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "log cleaner pass done"
                );
                if let Some(dir) = target.log.dir().parent() {
                    self.checkpoint(dir);
                }
                first_dirty_offset > target.cleanable.first_dirty_offset
            }
            Ok(CleanOutcome::Aborted { .. }) => false,
            // The log was deleted under the cleaning (topic deleted, replica moved away).
            Err(_) if !target.log.dir().exists() => false,
            Err(e) => {
                self.mark_uncleanable(&target.id, &e.to_string());
                false
            }
        }
    }

    /// Writes the clean points of every compacted log in `log_dir` to its checkpoint
    /// (logs no longer here drop out).
    fn checkpoint(&self, log_dir: &Path) {
        let _writing = self.checkpointing.lock();
        let mut entries = BTreeMap::new();
        for topic in self.topics.all() {
            if !topic.settings.cleanup_policy_compact {
                continue;
            }
            for partition in topic.local_partitions() {
                if partition.log.dir().parent() != Some(log_dir) {
                    continue;
                }
                let id = (topic.name.clone(), partition.index);
                // A log not looked at yet keeps the clean point it was restored with.
                let offset = partition
                    .log
                    .first_dirty_offset()
                    .or_else(|| self.restored.lock().get(&id).copied());
                if let Some(offset) = offset {
                    entries.insert(id, offset);
                }
            }
        }
        if let Err(e) = checkpoint::write(&log_dir.join(CLEANER_OFFSET_FILE), &entries) {
            warn!(dir = %log_dir.display(), error = %e, "cannot write the cleaner offset checkpoint");
        }
    }

    /// How long to pause after `bytes` of cleaner I/O.
    fn pace(&self, bytes: u64) {
        let pause = self.throttle.lock().record(bytes, Instant::now());
        if !pause.is_zero() {
            self.sleep(pause);
        }
    }
}

/// A cleaning's link to the cleaner: throttles it and stops it at shutdown.
struct Progress<'a> {
    shared: &'a Shared,
}

impl CleanerProgress for Progress<'_> {
    fn advance(&mut self, bytes: u64) -> bool {
        self.shared.pace(bytes);
        !self.shared.stopping.load(Ordering::Acquire)
    }
}

/// Kafka's `Throttler`: keeps the cleaners' I/O under a rate, measured over short windows.
struct Throttle {
    bytes_per_second: f64,
    window_start: Option<Instant>,
    window_bytes: f64,
}

impl Throttle {
    fn new(bytes_per_second: f64) -> Throttle {
        Throttle {
            bytes_per_second,
            window_start: None,
            window_bytes: 0.0,
        }
    }

    /// Records `bytes` at `now`; returns how long to pause to stay under the rate.
    fn record(&mut self, bytes: u64, now: Instant) -> Duration {
        if !self.bytes_per_second.is_finite() || self.bytes_per_second >= f64::MAX {
            return Duration::ZERO;
        }
        let start = *self.window_start.get_or_insert(now);
        self.window_bytes += bytes as f64;
        let elapsed = now.duration_since(start);
        if elapsed < Duration::from_millis(THROTTLE_WINDOW_MS) {
            return Duration::ZERO;
        }
        let allowed = Duration::from_secs_f64(self.window_bytes / self.bytes_per_second.max(1.0));
        self.window_start = Some(now);
        self.window_bytes = 0.0;
        allowed.saturating_sub(elapsed)
    }
}

/// The clean points of every log dir's `cleaner-offset-checkpoint`; an unreadable file
/// counts as empty (its logs are cleaned from their start again).
fn read_checkpoints(log_dirs: &[PathBuf]) -> Result<HashMap<PartitionId, i64>, BrokerError> {
    let mut restored = HashMap::new();
    for dir in log_dirs {
        let path = dir.join(CLEANER_OFFSET_FILE);
        let entries = checkpoint::read_entries(&path, 3, CHECKPOINT_ENTRIES_MAX, |fields, bad| {
            let partition = fields[1].parse().map_err(|_| bad("bad partition"))?;
            let offset = fields[2].parse().map_err(|_| bad("bad offset"))?;
            Ok(((fields[0].to_string(), partition), offset))
        });
        match entries {
            Ok(entries) => restored.extend(entries.unwrap_or_default()),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "unreadable cleaner offset checkpoint; cleaning from the log starts")
            }
        }
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_pauses_for_bytes_over_its_rate() {
        let mut throttle = Throttle::new(1000.0);
        let start = Instant::now();
        assert_eq!(throttle.record(500, start), Duration::ZERO);
        let later = start + Duration::from_millis(THROTTLE_WINDOW_MS);
        // 1500 bytes at 1000 B/s take 1.5 s; 0.3 s have passed.
        let pause = throttle.record(1000, later);
        assert_eq!(pause, Duration::from_millis(1200));
        let mut unlimited = Throttle::new(f64::MAX);
        assert_eq!(unlimited.record(u64::MAX, later), Duration::ZERO);
    }
}
