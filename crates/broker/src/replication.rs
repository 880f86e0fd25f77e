//! Partition replication on the leader's side, as Kafka does it: the leader tracks each
//! follower's log end offset from the offsets it fetches at, keeps the high watermark at the
//! smallest log end offset of the in-sync replicas, and asks the controller (AlterPartition,
//! with the partition epoch it last saw, so a stale leader changes nothing) to add followers
//! that caught up and to remove those that lag more than `replica.lag.time.max.ms`.
//!
//! While an ISR change is in flight the high watermark counts the larger of the two sets
//! (Kafka's "maximal ISR"): a follower being added already holds it back, and one being
//! removed still does until the controller has committed its removal. So every record below
//! the high watermark is on every replica the controller may elect.
//!
//! Followers copy the leader with the Fetch API; that side lives in [`crate::fetcher`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strom_controller::service::{ControllerRequest, ControllerResponse};
use strom_metadata::image::PartitionImage;
use strom_storage::{AppendInfo, PartitionLog, StorageError, TxnVerification};
use tokio::sync::mpsc;
use tracing::{info, warn};
use uuid::Uuid;

use crate::cluster::Cluster;
use crate::topics::{now_ms, Partition, TopicManager};

/// ISR changes waiting to be sent to the controller; when full, a change is dropped and
/// asked again at the next follower fetch or lag check.
pub const ISR_CHANGES_MAX: usize = 1024;

/// The replication state of one partition replica, from the metadata and, on the leader,
/// from its followers' fetches.
#[derive(Debug, Default)]
pub struct ReplicaState {
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<i32>,
    /// The ISR as the controller committed it.
    pub isr: Vec<i32>,
    /// An ISR sent to the controller and not yet seen in the metadata.
    pub pending_isr: Option<Vec<i32>>,
    /// Leader only: what each follower fetched.
    pub followers: BTreeMap<i32, FollowerProgress>,
    /// Leader only: the log end when this broker took the leadership (Kafka's
    /// `leaderEpochStartOffset`). Its high watermark may lag behind records committed before
    /// (it is the one it had as a follower, or its checkpoint), so a follower joins the ISR
    /// only once it has reached this offset too (KAFKA-7128).
    pub leader_epoch_start_offset: i64,
}

impl ReplicaState {
    /// The committed ISR together with one being added to it (Kafka's maximal ISR).
    fn maximal_isr(&self) -> impl Iterator<Item = i32> + '_ {
        let pending = self.pending_isr.iter().flatten();
        self.isr
            .iter()
            .chain(pending.filter(|b| !self.isr.contains(b)))
            .copied()
    }
}

/// A follower as its leader sees it.
#[derive(Debug, Clone, Copy)]
pub struct FollowerProgress {
    /// The offset it last fetched at: everything below is on its log. -1 until it fetches
    /// from this leader in this epoch.
    pub log_end_offset: i64,
    /// When it last had everything the leader had (Kafka's `lastCaughtUpTimeMs`).
    pub last_caught_up_ms: i64,
    /// Its log start offset as its last fetch reported it; -1 until then.
    pub log_start_offset: i64,
    last_fetch_leader_log_end_offset: i64,
    last_fetch_ms: i64,
}

impl FollowerProgress {
    fn new(last_caught_up_ms: i64) -> FollowerProgress {
        FollowerProgress {
            log_end_offset: -1,
            last_caught_up_ms,
            log_start_offset: -1,
            last_fetch_leader_log_end_offset: -1,
            last_fetch_ms: 0,
        }
    }
}

/// Why a leader append did not happen.
#[derive(Debug)]
pub enum LeaderAppendError {
    NotLeader,
    NotEnoughReplicas { isr: usize, min: i32 },
    Storage(strom_storage::StorageError),
}

impl LeaderAppendError {
    /// The Kafka error code a client is answered with.
    pub fn error_code(&self) -> i16 {
        use kafka_protocol::ResponseError as E;
        match self {
            LeaderAppendError::NotLeader => E::NotLeaderOrFollower.code(),
            LeaderAppendError::NotEnoughReplicas { .. } => E::NotEnoughReplicas.code(),
            LeaderAppendError::Storage(e) => e.error_code(),
        }
    }
}

/// How a wait for replication ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicated {
    /// The high watermark covers the records; the committed ISR's size then.
    Yes {
        isr_len: usize,
    },
    /// Leadership moved (or the broker is stopping): the records may be truncated.
    NotLeader,
    TimedOut,
}

/// An ISR the leader asks the controller for.
#[derive(Debug)]
pub struct IsrChange {
    pub partition: Arc<Partition>,
    pub topic_id: Uuid,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<i32>,
}

impl Partition {
    /// Takes the partition's metadata: its leader, epochs, replicas and ISR. A new leader
    /// epoch on this broker as leader starts every follower afresh (unknown log end, in-sync
    /// ones caught up now, as Kafka's `makeLeader`). Wakes everything waiting on the
    /// partition, so that delayed produces and fetches see the change.
    pub(crate) fn apply_state(&self, state: &PartitionImage, now_ms: i64) {
        let mut r = self.replica.lock();
        let new_epoch = r.leader_epoch != state.leader_epoch || r.leader != state.leader;
        if r.partition_epoch != state.partition_epoch {
            r.pending_isr = None;
        }
        r.leader = state.leader;
        r.leader_epoch = state.leader_epoch;
        r.partition_epoch = state.partition_epoch;
        r.replicas.clone_from(&state.replicas);
        r.isr.clone_from(&state.isr);
        if state.leader != self.node_id {
            r.followers.clear();
        } else {
            if new_epoch {
                r.followers.clear();
                r.leader_epoch_start_offset = self.log.offsets().log_end_offset;
            }
            let isr = state.isr.clone();
            r.followers.retain(|id, _| state.replicas.contains(id));
            for id in state.replicas.iter().filter(|id| **id != self.node_id) {
                r.followers.entry(*id).or_insert_with(|| {
                    FollowerProgress::new(if isr.contains(id) { now_ms } else { 0 })
                });
            }
        }
        self.set_leader_epoch(state.leader_epoch);
        if state.leader == self.node_id {
            self.advance_high_watermark(&r);
        }
        drop(r);
        self.appended.notify_waiters();
    }

    /// Appends producer batches if this broker leads the partition, stamping its leader
    /// epoch, and moves the high watermark. Holds the replica state meanwhile, so that a
    /// change of leadership never interleaves with a leader's append (Kafka's
    /// `leaderIsrUpdateLock`). With `min_insync_replicas` (acks=all), refuses when the ISR
    /// is smaller. Returns what was appended and the leader epoch it was stamped with.
    /// `verification` decides whether a transactional batch may start a transaction
    /// (KIP-890 part 1, [`PartitionLog::append_as_leader_verified`]).
    pub fn append_as_leader(
        &self,
        records: &[u8],
        batches: &[strom_protocol::batch::BatchInfo],
        min_insync_replicas: Option<i32>,
        now_ms: i64,
        verification: TxnVerification,
    ) -> Result<(AppendInfo, i32), LeaderAppendError> {
        self.append_led(None, min_insync_replicas, |log, leader_epoch| {
            log.append_as_leader_verified(records, batches, leader_epoch, now_ms, verification)
        })
    }

    /// Appends batches a coordinator of this broker built (`__consumer_offsets`,
    /// transactional offset commits), as Kafka's `AppendOrigin.COORDINATOR`: like a leader
    /// append, but the log does not check sequences nor take a batch for a retry.
    pub fn append_as_coordinator(
        &self,
        records: &[u8],
        batches: &[strom_protocol::batch::BatchInfo],
        now_ms: i64,
    ) -> Result<(AppendInfo, i32), LeaderAppendError> {
        self.append_led(None, None, |log, leader_epoch| {
            log.append_as_coordinator(records, batches, leader_epoch, now_ms)
        })
    }

    /// [`Self::append_as_coordinator`] only while this broker leads in `leader_epoch` (a
    /// coordinator's epoch: it must not write after leadership moved away and back, its
    /// state would be stale); with `min_insync_replicas` (acks=all), refuses when the ISR is
    /// smaller.
    pub fn append_as_coordinator_in_epoch(
        &self,
        leader_epoch: i32,
        records: &[u8],
        batches: &[strom_protocol::batch::BatchInfo],
        min_insync_replicas: Option<i32>,
        now_ms: i64,
    ) -> Result<(AppendInfo, i32), LeaderAppendError> {
        self.append_led(Some(leader_epoch), min_insync_replicas, |log, epoch| {
            log.append_as_coordinator(records, batches, epoch, now_ms)
        })
    }

    /// Appends a transaction marker (WriteTxnMarkers) as the leader; with
    /// `min_insync_replicas`, refuses when the ISR is smaller (markers are written with
    /// acks=all).
    pub fn append_control(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        control: strom_storage::producer_state::ControlType,
        coordinator_epoch: i32,
        min_insync_replicas: i32,
        now_ms: i64,
    ) -> Result<(AppendInfo, i32), LeaderAppendError> {
        self.append_led(None, Some(min_insync_replicas), |log, leader_epoch| {
            log.append_control(
                producer_id,
                producer_epoch,
                control,
                coordinator_epoch,
                leader_epoch,
                now_ms,
            )
        })
    }

    /// Runs `append` on the log if this broker leads the partition (in `leader_epoch` when
    /// given, and with an ISR of at least `min_insync_replicas`), holding the replica state
    /// meanwhile; then moves the high watermark and wakes waiting fetches. Returns what was
    /// appended and the leader epoch it was stamped with.
    fn append_led(
        &self,
        leader_epoch: Option<i32>,
        min_insync_replicas: Option<i32>,
        append: impl FnOnce(&PartitionLog, i32) -> Result<AppendInfo, StorageError>,
    ) -> Result<(AppendInfo, i32), LeaderAppendError> {
        let r = self.replica.lock();
        if r.leader != self.node_id || leader_epoch.is_some_and(|e| e != r.leader_epoch) {
            return Err(LeaderAppendError::NotLeader);
        }
        if let Some(min) = min_insync_replicas {
            if (r.isr.len() as i32) < min {
                return Err(LeaderAppendError::NotEnoughReplicas {
                    isr: r.isr.len(),
                    min,
                });
            }
        }
        let info = append(&self.log, r.leader_epoch).map_err(LeaderAppendError::Storage)?;
        self.advance_high_watermark(&r);
        let epoch = r.leader_epoch;
        drop(r);
        self.appended.notify_waiters();
        Ok((info, epoch))
    }

    /// Waits (Kafka's delayed produce) until the high watermark reaches `end_offset` while
    /// this broker still leads in `leader_epoch`.
    pub async fn wait_replicated(
        &self,
        leader_epoch: i32,
        end_offset: i64,
        deadline: tokio::time::Instant,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Replicated {
        loop {
            // Register before checking, so a change between the check and the wait wakes us.
            let mut changed = std::pin::pin!(self.appended.notified());
            changed.as_mut().enable();
            let (leader, epoch, isr_len) = self.leadership();
            if !leader || epoch != leader_epoch || *shutdown.borrow() {
                return Replicated::NotLeader;
            }
            if self.log.offsets().high_watermark >= end_offset {
                return Replicated::Yes { isr_len };
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => return Replicated::TimedOut,
                _ = shutdown.changed() => {}
            }
        }
    }

    /// The leader's view of the partition: (is leader, leader epoch, committed ISR size).
    pub fn leadership(&self) -> (bool, i32, usize) {
        let r = self.replica.lock();
        (r.leader == self.node_id, r.leader_epoch, r.isr.len())
    }

    /// Whether `replica` is one of this leader's followers (a replica other than itself).
    pub fn has_follower(&self, replica: i32) -> bool {
        self.replica.lock().followers.contains_key(&replica)
    }

    /// Leader: moves the high watermark to the smallest log end offset of the maximal ISR.
    /// Called after appends and follower fetches.
    pub fn maybe_advance_high_watermark(&self) {
        let r = self.replica.lock();
        if r.leader == self.node_id {
            self.advance_high_watermark(&r);
        }
    }

    fn advance_high_watermark(&self, r: &ReplicaState) {
        let offsets = self.log.offsets();
        let mut high_watermark = offsets.log_end_offset;
        for id in r.maximal_isr().filter(|id| *id != self.node_id) {
            match r.followers.get(&id) {
                Some(f) if f.log_end_offset >= 0 => {
                    high_watermark = high_watermark.min(f.log_end_offset)
                }
                // An in-sync follower that has not fetched in this epoch holds it where it is.
                _ => return,
            }
        }
        if high_watermark > offsets.high_watermark {
            self.log.update_high_watermark(high_watermark);
            self.appended.notify_waiters();
        }
    }

    /// Leader: follower `follower` fetched at `fetch_offset`, so its log holds everything
    /// below it. Updates its progress as Kafka's `Replica.updateFetchState`, advances the
    /// high watermark, and returns the ISR to ask for when the follower has caught up with
    /// the high watermark and the start of this leader's epoch but is not in sync yet.
    pub fn follower_fetched(
        self: &Arc<Self>,
        topic_id: Uuid,
        follower: i32,
        fetch_offset: i64,
        log_start_offset: i64,
        now_ms: i64,
    ) -> Option<IsrChange> {
        let offsets = self.log.offsets();
        let mut r = self.replica.lock();
        if r.leader != self.node_id {
            return None;
        }
        let f = r.followers.get_mut(&follower)?;
        let leader_end = offsets.log_end_offset;
        if fetch_offset >= leader_end {
            f.last_caught_up_ms = f.last_caught_up_ms.max(now_ms);
        } else if fetch_offset >= f.last_fetch_leader_log_end_offset {
            f.last_caught_up_ms = f.last_caught_up_ms.max(f.last_fetch_ms);
        }
        f.last_fetch_leader_log_end_offset = leader_end;
        f.last_fetch_ms = now_ms;
        f.log_end_offset = fetch_offset.min(leader_end);
        let log_start_moved = log_start_offset > f.log_start_offset;
        f.log_start_offset = f.log_start_offset.max(log_start_offset);
        let expand = r.pending_isr.is_none()
            && !r.isr.contains(&follower)
            && fetch_offset >= offsets.high_watermark
            && fetch_offset >= r.leader_epoch_start_offset;
        let change = expand.then(|| {
            let mut isr = r.isr.clone();
            isr.push(follower);
            r.pending_isr = Some(isr.clone());
            IsrChange {
                partition: Arc::clone(self),
                topic_id,
                leader_epoch: r.leader_epoch,
                partition_epoch: r.partition_epoch,
                isr,
            }
        });
        self.advance_high_watermark(&r);
        if log_start_moved {
            // A DeleteRecords may be waiting for the low watermark.
            self.appended.notify_waiters();
        }
        change
    }

    /// Leader: the smallest log start offset of this replica and its in-sync followers
    /// (Kafka's `lowWatermarkIfLeader`, over the ISR: a replica out of it starts over at the
    /// leader's log start when it falls behind it). `None` when not the leader.
    pub fn low_watermark(&self) -> Option<i64> {
        let r = self.replica.lock();
        if r.leader != self.node_id {
            return None;
        }
        let mut low = self.log.offsets().log_start_offset;
        for id in r.isr.iter().filter(|id| **id != self.node_id) {
            let reported = r.followers.get(id).map_or(-1, |f| f.log_start_offset);
            low = low.min(reported);
        }
        Some(low)
    }

    /// Leader: the ISR without the followers that have not caught up within `lag_ms`, if
    /// any lag and no other change is in flight.
    pub fn shrink_isr(
        self: &Arc<Self>,
        topic_id: Uuid,
        now_ms: i64,
        lag_ms: i64,
    ) -> Option<IsrChange> {
        let mut r = self.replica.lock();
        if r.leader != self.node_id || r.pending_isr.is_some() {
            return None;
        }
        let lagging = |id: &i32| {
            *id != self.node_id
                && r.followers
                    .get(id)
                    .is_none_or(|f| now_ms - f.last_caught_up_ms > lag_ms)
        };
        if !r.isr.iter().any(lagging) {
            return None;
        }
        let isr: Vec<i32> = r.isr.iter().copied().filter(|id| !lagging(id)).collect();
        r.pending_isr = Some(isr.clone());
        Some(IsrChange {
            partition: Arc::clone(self),
            topic_id,
            leader_epoch: r.leader_epoch,
            partition_epoch: r.partition_epoch,
            isr,
        })
    }

    /// Forgets an ISR change the controller refused, so it can be asked again.
    pub(crate) fn isr_change_failed(&self, partition_epoch: i32) {
        let mut r = self.replica.lock();
        if r.partition_epoch == partition_epoch {
            r.pending_isr = None;
        }
    }
}

/// Sends ISR changes to the active controller, one at a time; the new ISR reaches the
/// partition through the metadata log.
pub async fn send_isr_changes(cluster: Arc<Cluster>, mut changes: mpsc::Receiver<IsrChange>) {
    while let Some(change) = changes.recv().await {
        let request = ControllerRequest::AlterPartition {
            broker_id: cluster.node_id,
            broker_epoch: cluster.broker_epoch(),
            topic_id: change.topic_id.as_u128(),
            partition: change.partition.index,
            leader_epoch: change.leader_epoch,
            partition_epoch: change.partition_epoch,
            isr: change.isr.clone(),
        };
        match cluster.call(request).await {
            ControllerResponse::PartitionAltered { isr, .. } => {
                info!(topic = %change.partition.log.topic(), partition = change.partition.index, ?isr, "ISR changed");
            }
            other => {
                warn!(topic = %change.partition.log.topic(), partition = change.partition.index, isr = ?change.isr, answer = ?other, "ISR change refused");
                change.partition.isr_change_failed(change.partition_epoch);
            }
        }
    }
}

/// Queues an ISR change; when the queue is full the change is forgotten and asked again
/// later.
pub fn request_isr_change(queue: &mpsc::Sender<IsrChange>, change: IsrChange) {
    if let Err(e) = queue.try_send(change) {
        let change = match e {
            mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
        };
        change.partition.isr_change_failed(change.partition_epoch);
    }
}

/// Every half `replica.lag.time.max.ms` (as Kafka's ISR expiration task), asks to remove
/// lagging followers from the ISR of the partitions this broker leads.
pub async fn expire_lagging_followers(
    topics: Arc<TopicManager>,
    queue: mpsc::Sender<IsrChange>,
    lag_ms: i64,
) {
    let period = Duration::from_millis((lag_ms / 2).max(1) as u64);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = now_ms();
        for topic in topics.all() {
            for partition in topic.local_partitions() {
                if let Some(change) = partition.shrink_isr(topic.id, now, lag_ms) {
                    warn!(topic = %topic.name, partition = partition.index, isr = ?change.isr, "followers fell behind; shrinking the ISR");
                    request_isr_change(&queue, change);
                }
            }
        }
    }
}
