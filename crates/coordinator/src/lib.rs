//! The group coordinator: consumer groups with Kafka's classic protocol (JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup) and committed offsets; and the transaction coordinator
//! ([`transaction`]: transactional ids, their `__transaction_state` records in
//! [`txn_records`], the markers of completing transactions in [`txn_markers`]).
//!
//! Main types: [`GroupCoordinator`] (all groups this broker coordinates), [`OffsetsLog`] (the
//! trait through which it writes `__consumer_offsets`; the broker implements it), and
//! [`records`] (Kafka's key/value layouts of that topic). State changes that must survive a
//! restart (commits, generations, deletions) are written to the log before they are applied
//! in memory or acknowledged; on start the broker replays the log into the coordinator with
//! [`GroupCoordinator::replay`], the same path for live writes and for loading.
//!
//! The coordinators never open sockets or files themselves: they write through traits the
//! broker implements ([`OffsetsLog`], [`transaction::TxnLog`]) and reach other brokers
//! through [`txn_markers::MarkerTransport`]. The group coordinator never decides partition
//! assignment: the group leader's client does (client-side assignors pass through untouched).

pub mod consumer_group;
pub mod records;
pub mod transaction;
pub mod txn_markers;
mod txn_offsets;
pub mod txn_records;

pub use txn_offsets::TxnOffsetCommit;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError as E;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::info;

use records::{GroupValue, OffsetValue, OffsetsRecord};

/// Where the coordinator writes: one partition of `__consumer_offsets` per group.
pub trait OffsetsLog: Send + Sync + 'static {
    /// Appends records (key, value; `None` is a tombstone) to `partition`; returns once they
    /// are durable as any acknowledged write is.
    fn append(
        &self,
        partition: i32,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), String>;

    /// Appends records as one transactional batch of the producer (TxnOffsetCommit), checked
    /// against the partition's producer state like any transactional write; errors are the
    /// Kafka error codes the client gets (a fenced producer's INVALID_PRODUCER_EPOCH, …).
    fn append_transactional(
        &self,
        partition: i32,
        producer_id: i64,
        producer_epoch: i16,
        records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), i16>;
}

/// Coordinator settings, by Kafka's broker config names.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// `offsets.topic.num.partitions`
    pub offsets_partitions: i32,
    /// `group.initial.rebalance.delay.ms`
    pub initial_rebalance_delay_ms: u64,
    /// `group.min.session.timeout.ms`
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`
    pub max_session_timeout_ms: i32,
    /// `offset.metadata.max.bytes`
    pub offset_metadata_max_bytes: usize,
    /// `group.max.size`
    pub max_group_size: usize,
    /// `group.consumer.session.timeout.ms` (KIP-848 groups)
    pub consumer_session_timeout_ms: u64,
    /// `group.consumer.heartbeat.interval.ms`
    pub consumer_heartbeat_interval_ms: i32,
    /// `group.consumer.max.size`
    pub consumer_max_size: usize,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            offsets_partitions: 50,
            initial_rebalance_delay_ms: 3000,
            min_session_timeout_ms: 6000,
            max_session_timeout_ms: 1_800_000,
            offset_metadata_max_bytes: 4096,
            max_group_size: i32::MAX as usize,
            consumer_session_timeout_ms: 45_000,
            consumer_heartbeat_interval_ms: 5_000,
            consumer_max_size: i32::MAX as usize,
        }
    }
}

/// The classic group states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// A JoinGroup request, decoded.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: a new member must first obtain its id (KIP-394).
    pub require_known_member_id: bool,
}

/// A JoinGroup answer.
#[derive(Debug, Clone, Default)]
pub struct JoinResult {
    pub error_code: i16,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only: (member id, instance id, metadata of the chosen protocol).
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    fn error(code: i16, member_id: &str) -> JoinResult {
        JoinResult {
            error_code: code,
            generation_id: -1,
            member_id: member_id.to_string(),
            ..Default::default()
        }
    }
}

/// A SyncGroup answer: error code and this member's assignment.
#[derive(Debug, Clone, Default)]
pub struct SyncResult {
    pub error_code: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

/// A group as ListGroups shows it.
#[derive(Debug, Clone)]
pub struct ListedGroup {
    pub id: String,
    pub protocol_type: String,
    pub state: &'static str,
    pub group_type: &'static str,
}

/// A KIP-848 group's description: members with their current and target assignments.
#[derive(Debug, Clone)]
pub struct ConsumerGroupSnapshot {
    pub state: &'static str,
    pub epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: Vec<(consumer_group::ConsumerMember, consumer_group::Assignment)>,
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

#[derive(Debug)]
struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
    last_heartbeat: Instant,
    /// Order of joining: the first member is the leader when a new one must be chosen.
    joined_seq: u64,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug)]
struct Group {
    id: String,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: HashMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, valid until their deadline.
    pending_members: HashMap<String, Instant>,
    /// Static membership: group.instance.id → member id.
    static_members: HashMap<String, String>,
    rebalance_deadline: Option<Instant>,
    initial_delay_until: Option<Instant>,
    offsets: BTreeMap<(String, i32), CommittedOffset>,
    /// When each offset was committed (ms since the epoch), for retention.
    offset_times: BTreeMap<(String, i32), i64>,
    /// The order in which each committed offset was written (see
    /// [`GroupCoordinator::next_write_seq`]): a transaction's pending offset replaces a
    /// committed one only when it was written later, as Kafka compares their log offsets.
    offset_write_seqs: BTreeMap<(String, i32), u64>,
    /// TxnOffsetCommit offsets by producer id, written but not yet committed or aborted by
    /// their transaction's marker.
    pending_txn_offsets: HashMap<i64, BTreeMap<(String, i32), txn_offsets::PendingOffset>>,
    /// When the group last became empty (ms since the epoch); offsets of an empty group
    /// expire `offsets.retention.minutes` after it (KIP-211).
    empty_since_ms: Option<i64>,
    /// Membership when the group uses the KIP-848 protocol (offsets stay in this struct).
    consumer: Option<consumer_group::ConsumerGroup>,
    next_seq: u64,
}

impl Group {
    fn has_consumer_members(&self) -> bool {
        self.consumer
            .as_ref()
            .is_some_and(|c| !c.members.is_empty())
    }
}

impl Group {
    fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: HashMap::new(),
            pending_members: HashMap::new(),
            static_members: HashMap::new(),
            rebalance_deadline: None,
            initial_delay_until: None,
            offsets: BTreeMap::new(),
            offset_times: BTreeMap::new(),
            offset_write_seqs: BTreeMap::new(),
            pending_txn_offsets: HashMap::new(),
            empty_since_ms: None,
            consumer: None,
            next_seq: 0,
        }
    }

    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    fn group_value(&self, now_ms: i64) -> GroupValue {
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            state_timestamp_ms: now_ms,
        }
    }
}

/// All groups coordinated by this broker.
pub struct GroupCoordinator {
    config: CoordinatorConfig,
    log: Arc<dyn OffsetsLog>,
    groups: Mutex<HashMap<String, Group>>,
    /// Counts offset writes (live and replayed), which happen in log order per partition.
    write_seq: std::sync::atomic::AtomicU64,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl GroupCoordinator {
    pub fn new(config: CoordinatorConfig, log: Arc<dyn OffsetsLog>) -> GroupCoordinator {
        GroupCoordinator {
            config,
            log,
            groups: Mutex::new(HashMap::new()),
            write_seq: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// The offsets-topic partition holding a group.
    pub fn partition_for(&self, group_id: &str) -> i32 {
        records::partition_for(group_id, self.config.offsets_partitions)
    }

    /// Forgets the groups of one offsets-topic partition (its leadership moved away, or it is
    /// about to be replayed afresh). Returns how many groups were dropped.
    pub fn unload_partition(&self, partition: i32) -> usize {
        let mut groups = self.groups.lock();
        let before = groups.len();
        let partitions = self.config.offsets_partitions;
        groups.retain(|id, _| records::partition_for(id, partitions) != partition);
        before - groups.len()
    }

    /// Applies one record of `__consumer_offsets` read at load time.
    pub fn replay(&self, key: &[u8], value: Option<&[u8]>) {
        let Some(record) = OffsetsRecord::decode(key, value) else {
            return;
        };
        let mut groups = self.groups.lock();
        match record {
            OffsetsRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => {
                let g = groups
                    .entry(group.clone())
                    .or_insert_with(|| Group::new(&group));
                match value {
                    Some(v) => {
                        let seq = self.next_write_seq();
                        g.offset_write_seqs.insert((topic.clone(), partition), seq);
                        g.offsets.insert(
                            (topic, partition),
                            CommittedOffset {
                                offset: v.offset,
                                leader_epoch: v.leader_epoch,
                                metadata: v.metadata,
                            },
                        );
                    }
                    None => {
                        g.offset_write_seqs.remove(&(topic.clone(), partition));
                        g.offsets.remove(&(topic, partition));
                    }
                }
            }
            OffsetsRecord::Group {
                group,
                value: Some(v),
            } => {
                let g = groups
                    .entry(group.clone())
                    .or_insert_with(|| Group::new(&group));
                g.generation = v.generation;
                g.protocol_type = Some(v.protocol_type).filter(|p| !p.is_empty());
                g.protocol = v.protocol;
                // A loaded group has no members until they rejoin.
                g.empty_since_ms = Some(v.state_timestamp_ms);
            }
            OffsetsRecord::Group { group, value: None } => {
                groups.remove(&group);
            }
        }
    }

    fn persist(&self, group_id: &str, records: Vec<OffsetsRecord>) -> Result<(), i16> {
        let encoded = records.iter().map(OffsetsRecord::encode).collect();
        self.log.append(self.partition_for(group_id), encoded).map_err(|e| {
            tracing::error!(group = group_id, error = %e, "writing to __consumer_offsets failed");
            E::CoordinatorNotAvailable.code()
        })
    }

    /// JoinGroup: waits until the rebalance completes (or answers at once on errors, on
    /// MEMBER_ID_REQUIRED, and for a static member rejoining a stable group).
    pub async fn join(&self, req: JoinRequest) -> JoinResult {
        let receiver = match self.start_join(req) {
            Ok(receiver) => receiver,
            Err(result) => return *result,
        };
        receiver
            .await
            .unwrap_or_else(|_| JoinResult::error(E::UnknownMemberId.code(), ""))
    }

    fn start_join(
        &self,
        req: JoinRequest,
    ) -> Result<oneshot::Receiver<JoinResult>, Box<JoinResult>> {
        let fail = |code: E| Err(Box::new(JoinResult::error(code.code(), &req.member_id)));
        if req.group_id.is_empty() {
            return fail(E::InvalidGroupId);
        }
        if req.session_timeout_ms < self.config.min_session_timeout_ms
            || req.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return fail(E::InvalidSessionTimeout);
        }
        let now = Instant::now();
        let mut groups = self.groups.lock();
        let group = groups
            .entry(req.group_id.clone())
            .or_insert_with(|| Group::new(&req.group_id));
        if group.state == GroupState::Dead {
            return fail(E::CoordinatorNotAvailable);
        }
        if group.has_consumer_members() {
            return fail(E::InconsistentGroupProtocol);
        }
        if !group.supports(&req.protocol_type, &req.protocols) {
            return fail(E::InconsistentGroupProtocol);
        }
        let (tx, rx) = oneshot::channel();
        let known = !req.member_id.is_empty() && group.members.contains_key(&req.member_id);
        if !req.member_id.is_empty()
            && !known
            && !group.pending_members.contains_key(&req.member_id)
        {
            // A static member may come back with a new member id for the same instance id.
            let static_owner = req
                .group_instance_id
                .as_ref()
                .and_then(|i| group.static_members.get(i));
            if static_owner.is_none() {
                return fail(E::UnknownMemberId);
            }
            return fail(E::FencedInstanceId);
        }
        if known {
            let member = group.members.get_mut(&req.member_id).expect("known member");
            let unchanged = member.protocols == req.protocols;
            member.protocols = req.protocols;
            member.last_heartbeat = now;
            let is_leader = group.leader.as_deref() == Some(req.member_id.as_str());
            if matches!(
                group.state,
                GroupState::Stable | GroupState::CompletingRebalance
            ) && unchanged
                && !is_leader
            {
                // Nothing changed: answer with the current generation.
                let _ = tx.send(self.join_result_for(group, &req.member_id));
                return Ok(rx);
            }
            self.park_join(
                group,
                &req.member_id,
                tx,
                now,
                "member rejoined with new metadata or as leader",
            );
            return Ok(rx);
        }
        // A new member.
        if group.members.len() >= self.config.max_group_size {
            return fail(E::GroupMaxSizeReached);
        }
        let member_id = if req.member_id.is_empty() {
            let prefix = req
                .group_instance_id
                .clone()
                .unwrap_or_else(|| req.client_id.clone());
            format!("{prefix}-{}", uuid::Uuid::new_v4())
        } else {
            req.member_id.clone()
        };
        if let Some(instance) = &req.group_instance_id {
            if let Some(old_id) = group.static_members.get(instance).cloned() {
                // A static member restarting: it takes over the old member's place without a
                // rebalance when the group is stable and its protocols are unchanged.
                if let Some(mut old) = group.members.remove(&old_id) {
                    if let Some(w) = old.join_waiter.take() {
                        let _ = w.send(JoinResult::error(E::FencedInstanceId.code(), &old_id));
                    }
                    if let Some(w) = old.sync_waiter.take() {
                        let _ = w.send(SyncResult {
                            error_code: E::FencedInstanceId.code(),
                            ..Default::default()
                        });
                    }
                    let unchanged = old.protocols == req.protocols;
                    old.id = member_id.clone();
                    old.protocols = req.protocols.clone();
                    old.last_heartbeat = now;
                    old.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
                    old.rebalance_timeout =
                        Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64);
                    if group.leader.as_deref() == Some(old_id.as_str()) {
                        group.leader = Some(member_id.clone());
                    }
                    group.members.insert(member_id.clone(), old);
                    group
                        .static_members
                        .insert(instance.clone(), member_id.clone());
                    if group.state == GroupState::Stable && unchanged {
                        let mut result = self.join_result_for(group, &member_id);
                        result.members.clear();
                        let _ = tx.send(result);
                        return Ok(rx);
                    }
                    self.park_join(
                        group,
                        &member_id,
                        tx,
                        now,
                        "static member rejoined with new metadata",
                    );
                    return Ok(rx);
                }
            }
        } else if req.require_known_member_id && req.member_id.is_empty() {
            let deadline = now + Duration::from_millis(req.session_timeout_ms as u64);
            group.pending_members.insert(member_id.clone(), deadline);
            return Err(Box::new(JoinResult::error(
                E::MemberIdRequired.code(),
                &member_id,
            )));
        }
        group.pending_members.remove(&member_id);
        if group.members.is_empty() {
            group.protocol_type = Some(req.protocol_type.clone());
        }
        let seq = group.next_seq;
        group.next_seq += 1;
        if let Some(instance) = &req.group_instance_id {
            group
                .static_members
                .insert(instance.clone(), member_id.clone());
        }
        group.members.insert(
            member_id.clone(),
            Member {
                id: member_id.clone(),
                instance_id: req.group_instance_id.clone(),
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout: Duration::from_millis(req.session_timeout_ms as u64),
                rebalance_timeout: Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64),
                protocols: req.protocols,
                assignment: Bytes::new(),
                join_waiter: Some(tx),
                sync_waiter: None,
                last_heartbeat: now,
                joined_seq: seq,
            },
        );
        if group.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(group, now, "a new member joined");
        }
        self.maybe_complete_join(group, now);
        Ok(rx)
    }

    /// Parks a known member's JoinGroup until the rebalance completes, starting one if needed.
    fn park_join(
        &self,
        group: &mut Group,
        member_id: &str,
        tx: oneshot::Sender<JoinResult>,
        now: Instant,
        reason: &str,
    ) {
        if let Some(member) = group.members.get_mut(member_id) {
            member.join_waiter = Some(tx);
        }
        if group.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(group, now, reason);
        }
        self.maybe_complete_join(group, now);
    }

    fn join_result_for(&self, group: &Group, member_id: &str) -> JoinResult {
        let protocol = group.protocol.clone().unwrap_or_default();
        let is_leader = group.leader.as_deref() == Some(member_id);
        let members = if is_leader {
            let mut ordered: Vec<&Member> = group.members.values().collect();
            ordered.sort_by_key(|m| m.joined_seq);
            ordered
                .iter()
                .map(|m| {
                    (
                        m.id.clone(),
                        m.instance_id.clone(),
                        m.metadata_for(&protocol),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error_code: 0,
            generation_id: group.generation,
            protocol_type: group.protocol_type.clone(),
            protocol_name: group.protocol.clone(),
            leader: group.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members,
        }
    }

    fn prepare_rebalance(&self, group: &mut Group, now: Instant, reason: &str) {
        // Members waiting for their assignment learn that a new rebalance started.
        for member in group.members.values_mut() {
            if let Some(w) = member.sync_waiter.take() {
                let _ = w.send(SyncResult {
                    error_code: E::RebalanceInProgress.code(),
                    ..Default::default()
                });
            }
        }
        let rebalance_timeout = group
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        if group.state == GroupState::Empty {
            let delay = Duration::from_millis(self.config.initial_rebalance_delay_ms)
                .min(rebalance_timeout);
            group.initial_delay_until = Some(now + delay);
        }
        group.rebalance_deadline = Some(now + rebalance_timeout);
        group.state = GroupState::PreparingRebalance;
        info!(group = %group.id, generation = group.generation, reason, "preparing to rebalance group");
    }

    /// Completes the join phase when every member has rejoined (after the initial delay).
    fn maybe_complete_join(&self, group: &mut Group, now: Instant) {
        if group.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined = group.members.values().all(|m| m.join_waiter.is_some())
            && group.pending_members.is_empty();
        let delay_over = group.initial_delay_until.is_none_or(|t| now >= t);
        if all_joined && delay_over {
            self.complete_join(group);
        }
    }

    fn complete_join(&self, group: &mut Group) {
        group.members.retain(|_, m| m.join_waiter.is_some());
        group
            .static_members
            .retain(|_, id| group.members.contains_key(id));
        group.initial_delay_until = None;
        group.rebalance_deadline = None;
        group.generation += 1;
        if group.members.is_empty() {
            group.state = GroupState::Empty;
            group.empty_since_ms = Some(wall_ms());
            group.protocol = None;
            group.leader = None;
            let _ = self.persist(
                &group.id,
                vec![OffsetsRecord::Group {
                    group: group.id.clone(),
                    value: Some(group.group_value(wall_ms())),
                }],
            );
            info!(group = %group.id, generation = group.generation, "group is empty");
            return;
        }
        group.protocol = Some(select_protocol(group));
        if group
            .leader
            .as_ref()
            .is_none_or(|l| !group.members.contains_key(l))
        {
            group.leader = group
                .members
                .values()
                .min_by_key(|m| m.joined_seq)
                .map(|m| m.id.clone());
        }
        group.state = GroupState::CompletingRebalance;
        info!(group = %group.id, generation = group.generation, members = group.members.len(), "rebalance joined; awaiting assignment");
        let ids: Vec<String> = group.members.keys().cloned().collect();
        for id in ids {
            let result = self.join_result_for(group, &id);
            let member = group.members.get_mut(&id).expect("member");
            member.last_heartbeat = Instant::now();
            if let Some(w) = member.join_waiter.take() {
                let _ = w.send(result);
            }
        }
    }

    /// SyncGroup: the leader's assignment is stored and handed to every member.
    pub async fn sync(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncResult {
        let fail = |code: E| SyncResult {
            error_code: code.code(),
            ..Default::default()
        };
        let receiver = {
            let mut groups = self.groups.lock();
            let Some(group) = groups.get_mut(group_id) else {
                return fail(E::UnknownMemberId);
            };
            if !group.members.contains_key(member_id) {
                return fail(E::UnknownMemberId);
            }
            if generation_id != group.generation {
                return fail(E::IllegalGeneration);
            }
            if protocol_type.is_some_and(|p| Some(p) != group.protocol_type.as_deref())
                || protocol_name.is_some_and(|p| Some(p) != group.protocol.as_deref())
            {
                return fail(E::InconsistentGroupProtocol);
            }
            let ok = |assignment: Bytes| SyncResult {
                error_code: 0,
                protocol_type: group.protocol_type.clone(),
                protocol_name: group.protocol.clone(),
                assignment,
            };
            match group.state {
                GroupState::PreparingRebalance => return fail(E::RebalanceInProgress),
                GroupState::Stable => return ok(group.members[member_id].assignment.clone()),
                GroupState::Empty | GroupState::Dead => return fail(E::UnknownMemberId),
                GroupState::CompletingRebalance => {}
            }
            let (tx, rx) = oneshot::channel();
            group
                .members
                .get_mut(member_id)
                .expect("member")
                .sync_waiter = Some(tx);
            if group.leader.as_deref() == Some(member_id) {
                let mut by_member: HashMap<String, Bytes> = assignments.into_iter().collect();
                for member in group.members.values_mut() {
                    member.assignment = by_member.remove(&member.id).unwrap_or_default();
                }
                let record = OffsetsRecord::Group {
                    group: group.id.clone(),
                    value: Some(group.group_value(wall_ms())),
                };
                if let Err(code) = self.persist(group_id, vec![record]) {
                    // Kafka answers every member with the error and starts over.
                    for member in group.members.values_mut() {
                        if let Some(w) = member.sync_waiter.take() {
                            let _ = w.send(SyncResult {
                                error_code: code,
                                ..Default::default()
                            });
                        }
                    }
                    self.prepare_rebalance(group, Instant::now(), "storing the assignment failed");
                    return fail(E::CoordinatorNotAvailable);
                }
                group.state = GroupState::Stable;
                info!(group = %group.id, generation = group.generation, "group is stable");
                let (ptype, pname) = (group.protocol_type.clone(), group.protocol.clone());
                for member in group.members.values_mut() {
                    if let Some(w) = member.sync_waiter.take() {
                        let _ = w.send(SyncResult {
                            error_code: 0,
                            protocol_type: ptype.clone(),
                            protocol_name: pname.clone(),
                            assignment: member.assignment.clone(),
                        });
                    }
                }
            }
            rx
        };
        receiver
            .await
            .unwrap_or_else(|_| fail(E::RebalanceInProgress))
    }

    /// Heartbeat: keeps a member alive and tells it when to rejoin.
    pub fn heartbeat(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
    ) -> i16 {
        let mut groups = self.groups.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return E::UnknownMemberId.code();
        };
        if let Some(instance) = group_instance_id {
            if group
                .static_members
                .get(instance)
                .is_some_and(|id| id != member_id)
            {
                return E::FencedInstanceId.code();
            }
        }
        let state = group.state;
        let generation = group.generation;
        let Some(member) = group.members.get_mut(member_id) else {
            return E::UnknownMemberId.code();
        };
        match state {
            GroupState::Empty | GroupState::Dead => E::UnknownMemberId.code(),
            GroupState::PreparingRebalance => {
                member.last_heartbeat = Instant::now();
                E::RebalanceInProgress.code()
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                if generation_id != generation {
                    return E::IllegalGeneration.code();
                }
                member.last_heartbeat = Instant::now();
                0
            }
        }
    }

    /// LeaveGroup: removes members (by member id, or by instance id for static members);
    /// returns one error code per member given.
    pub fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<i16>, i16> {
        let mut groups = self.groups.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return Err(E::UnknownMemberId.code());
        };
        let now = Instant::now();
        let mut codes = Vec::with_capacity(members.len());
        let mut removed_any = false;
        for (member_id, instance_id) in members {
            let id = match instance_id {
                Some(instance) => match group.static_members.get(instance) {
                    Some(id) if member_id.is_empty() || id == member_id => Some(id.clone()),
                    Some(_) => {
                        codes.push(E::FencedInstanceId.code());
                        continue;
                    }
                    None => None,
                },
                None => Some(member_id.clone()),
            };
            match id.and_then(|id| self.remove_member(group, &id)) {
                Some(()) => {
                    removed_any = true;
                    codes.push(0);
                }
                None => codes.push(E::UnknownMemberId.code()),
            }
        }
        if removed_any {
            self.after_member_removed(group, now, "members left the group");
        }
        Ok(codes)
    }

    fn remove_member(&self, group: &mut Group, member_id: &str) -> Option<()> {
        let mut member = group.members.remove(member_id)?;
        if let Some(instance) = &member.instance_id {
            group.static_members.remove(instance);
        }
        if let Some(w) = member.join_waiter.take() {
            let _ = w.send(JoinResult::error(E::UnknownMemberId.code(), member_id));
        }
        if let Some(w) = member.sync_waiter.take() {
            let _ = w.send(SyncResult {
                error_code: E::UnknownMemberId.code(),
                ..Default::default()
            });
        }
        Some(())
    }

    fn after_member_removed(&self, group: &mut Group, now: Instant, reason: &str) {
        match group.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(group, now, reason);
                self.maybe_complete_join(group, now);
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(group, now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// Expires members whose session timed out and completes joins whose rebalance timeout
    /// passed. The broker calls this on a short interval.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        for group in groups.values_mut() {
            group.pending_members.retain(|_, deadline| *deadline > now);
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|m| {
                    m.join_waiter.is_none()
                        && m.sync_waiter.is_none()
                        && now.duration_since(m.last_heartbeat) > m.session_timeout
                })
                .map(|m| m.id.clone())
                .collect();
            for id in &expired {
                info!(group = %group.id, member = %id, "member session expired");
                let _ = self.remove_member(group, id);
            }
            if !expired.is_empty() {
                self.after_member_removed(group, now, "member session expired");
            }
            if group.state == GroupState::PreparingRebalance {
                if group.rebalance_deadline.is_some_and(|d| now >= d) {
                    self.complete_join(group);
                } else {
                    self.maybe_complete_join(group, now);
                }
            }
        }
    }

    /// The records committing `offsets` to `group_id` at `now_ms`, and a code per offset in
    /// order: OFFSET_METADATA_TOO_LARGE (and no record) for metadata longer than
    /// `offset.metadata.max.bytes`, else 0. Plain and transactional commits write the same.
    fn offset_records(
        &self,
        group_id: &str,
        offsets: &[(String, i32, CommittedOffset)],
        now_ms: i64,
    ) -> (Vec<i16>, Vec<OffsetsRecord>) {
        let mut codes = Vec::with_capacity(offsets.len());
        let mut records = Vec::new();
        for (topic, partition, offset) in offsets {
            if offset.metadata.len() > self.config.offset_metadata_max_bytes {
                codes.push(E::OffsetMetadataTooLarge.code());
                continue;
            }
            codes.push(0);
            records.push(OffsetsRecord::Offset {
                group: group_id.to_string(),
                topic: topic.clone(),
                partition: *partition,
                value: Some(OffsetValue {
                    offset: offset.offset,
                    leader_epoch: offset.leader_epoch,
                    metadata: offset.metadata.clone(),
                    commit_timestamp_ms: now_ms,
                }),
            });
        }
        (codes, records)
    }

    /// OffsetCommit for a group member (or a simple consumer with generation -1): returns
    /// one code per (topic, partition) given, in order.
    pub fn commit_offsets(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        offsets: Vec<(String, i32, CommittedOffset)>,
    ) -> Vec<i16> {
        let all = |code: E| vec![code.code(); offsets.len()];
        if group_id.is_empty() {
            return all(E::InvalidGroupId);
        }
        let mut groups = self.groups.lock();
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id));
        if let Some(instance) = group_instance_id {
            if group
                .static_members
                .get(instance)
                .is_some_and(|id| id != member_id)
            {
                return all(E::FencedInstanceId);
            }
        }
        let simple = generation_id < 0 && member_id.is_empty();
        if let Some(consumer) = group.consumer.as_ref().filter(|c| !c.members.is_empty()) {
            match consumer.members.get(member_id) {
                None => return all(E::UnknownMemberId),
                Some(m) if m.epoch != generation_id => return all(E::StaleMemberEpoch),
                Some(_) => {}
            }
        } else if simple {
            if group.state != GroupState::Empty {
                return all(E::UnknownMemberId);
            }
        } else {
            if matches!(
                group.state,
                GroupState::CompletingRebalance | GroupState::PreparingRebalance
            ) && group.members.contains_key(member_id)
                && generation_id == group.generation
            {
                return all(E::RebalanceInProgress);
            }
            if !group.members.contains_key(member_id) {
                return all(E::UnknownMemberId);
            }
            if generation_id != group.generation {
                return all(E::IllegalGeneration);
            }
            if group.state != GroupState::Stable {
                return all(E::RebalanceInProgress);
            }
        }
        let now_ms = wall_ms();
        let (codes, records) = self.offset_records(group_id, &offsets, now_ms);
        if !records.is_empty() {
            if let Err(code) = self.persist(group_id, records) {
                return vec![code; offsets.len()];
            }
        }
        for ((topic, partition, offset), code) in offsets.into_iter().zip(&codes) {
            if *code == 0 {
                group
                    .offset_times
                    .insert((topic.clone(), partition), now_ms);
                group
                    .offset_write_seqs
                    .insert((topic.clone(), partition), self.next_write_seq());
                group.offsets.insert((topic, partition), offset);
            }
        }
        if let Some(member) = group.members.get_mut(member_id) {
            member.last_heartbeat = Instant::now();
        }
        codes
    }

    /// Expires the offsets of empty groups: those committed (or whose group became empty)
    /// `retention_ms` or more before `now_ms`, as Kafka's `offsets.retention.minutes`.
    /// A group left with no offsets and no members is removed. Returns offsets expired.
    pub fn expire_offsets(&self, now_ms: i64, retention_ms: i64) -> usize {
        let mut groups = self.groups.lock();
        let mut expired_total = 0;
        let mut removed = Vec::new();
        for group in groups.values_mut() {
            if !group.members.is_empty()
                || group.state != GroupState::Empty
                || group.has_consumer_members()
            {
                continue;
            }
            let expired: Vec<(String, i32)> = group
                .offsets
                .keys()
                .filter(|key| !group.has_pending_txn_offset(key))
                .filter(|key| {
                    let committed = group.offset_times.get(*key).copied().unwrap_or(0);
                    let since = group
                        .empty_since_ms
                        .map_or(committed, |empty| empty.max(committed));
                    now_ms.saturating_sub(since) >= retention_ms
                })
                .cloned()
                .collect();
            let drop_group = expired.len() == group.offsets.len();
            let mut records: Vec<OffsetsRecord> = expired
                .iter()
                .map(|(t, p)| OffsetsRecord::Offset {
                    group: group.id.clone(),
                    topic: t.clone(),
                    partition: *p,
                    value: None,
                })
                .collect();
            if drop_group {
                records.push(OffsetsRecord::Group {
                    group: group.id.clone(),
                    value: None,
                });
            }
            if records.is_empty() || self.persist(&group.id, records).is_err() {
                continue;
            }
            for key in &expired {
                group.offsets.remove(key);
                group.offset_times.remove(key);
                group.offset_write_seqs.remove(key);
            }
            expired_total += expired.len();
            if drop_group {
                removed.push(group.id.clone());
            }
        }
        for id in removed {
            info!(group = %id, "removed empty group whose offsets expired");
            groups.remove(&id);
        }
        expired_total
    }

    /// Committed offsets of a group: those asked for, or all with `None`.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        wanted: Option<&[(String, i32)]>,
    ) -> Vec<(String, i32, Option<CommittedOffset>)> {
        let groups = self.groups.lock();
        let group = groups.get(group_id);
        match wanted {
            Some(wanted) => wanted
                .iter()
                .map(|(t, p)| {
                    (
                        t.clone(),
                        *p,
                        group.and_then(|g| g.offsets.get(&(t.clone(), *p)).cloned()),
                    )
                })
                .collect(),
            None => group
                .map(|g| {
                    g.offsets
                        .iter()
                        .map(|((t, p), o)| (t.clone(), *p, Some(o.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Every group: id, protocol type, state name and group type (classic or consumer).
    pub fn list_groups(&self) -> Vec<ListedGroup> {
        let groups = self.groups.lock();
        let mut list: Vec<ListedGroup> = groups
            .values()
            .filter(|g| g.state != GroupState::Dead)
            .map(
                |g| match g.consumer.as_ref().filter(|c| !c.members.is_empty()) {
                    Some(c) => ListedGroup {
                        id: g.id.clone(),
                        protocol_type: "consumer".into(),
                        state: c.state(),
                        group_type: "consumer",
                    },
                    None => ListedGroup {
                        id: g.id.clone(),
                        protocol_type: g.protocol_type.clone().unwrap_or_default(),
                        state: g.state.name(),
                        group_type: if g.consumer.is_some() {
                            "consumer"
                        } else {
                            "classic"
                        },
                    },
                },
            )
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// ConsumerGroupHeartbeat (KIP-848).
    pub fn consumer_heartbeat(
        &self,
        group_id: &str,
        hb: consumer_group::Heartbeat,
        topics: &dyn consumer_group::TopicMetadata,
    ) -> consumer_group::HeartbeatResult {
        use consumer_group::HeartbeatResult;
        if group_id.is_empty() {
            return HeartbeatResult::error(E::InvalidRequest, "GroupId can't be empty.");
        }
        let mut groups = self.groups.lock();
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id));
        if !group.members.is_empty() {
            return HeartbeatResult::error(
                E::GroupIdNotFound,
                &format!("Group {group_id} is not a consumer group."),
            );
        }
        let consumer = group
            .consumer
            .get_or_insert_with(|| consumer_group::ConsumerGroup::new(group_id));
        let was_empty = consumer.members.is_empty();
        let result = consumer.heartbeat(hb, topics, self.config.consumer_max_size);
        if consumer.members.is_empty() && !was_empty {
            group.empty_since_ms = Some(wall_ms());
        }
        result
    }

    /// Expires KIP-848 members whose session ran out.
    pub fn expire_consumer_members(&self, topics: &dyn consumer_group::TopicMetadata) {
        let timeout = Duration::from_millis(self.config.consumer_session_timeout_ms);
        let mut groups = self.groups.lock();
        for group in groups.values_mut() {
            let Some(consumer) = group.consumer.as_mut() else {
                continue;
            };
            let expired = consumer.expire(timeout, topics);
            for id in &expired {
                info!(group = %group.id, member = %id, "consumer group member session expired");
            }
            if !expired.is_empty() && consumer.members.is_empty() {
                group.empty_since_ms = Some(wall_ms());
            }
        }
    }

    /// A KIP-848 group as ConsumerGroupDescribe shows it; `None` if there is no such group.
    pub fn describe_consumer_group(&self, group_id: &str) -> Option<ConsumerGroupSnapshot> {
        let groups = self.groups.lock();
        let g = groups.get(group_id)?;
        let c = g.consumer.as_ref()?;
        Some(ConsumerGroupSnapshot {
            state: c.state(),
            epoch: c.epoch,
            assignment_epoch: c.target_epoch,
            assignor: c.assignor().to_string(),
            members: c
                .members
                .values()
                .map(|m| (m.clone(), c.target.get(&m.id).cloned().unwrap_or_default()))
                .collect(),
        })
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let groups = self.groups.lock();
        let g = groups.get(group_id)?;
        let protocol = g.protocol.clone().unwrap_or_default();
        let mut members: Vec<&Member> = g.members.values().collect();
        members.sort_by_key(|m| m.joined_seq);
        Some(GroupDescription {
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: if g.state == GroupState::Stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: members
                .iter()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata_for(&protocol),
                    assignment: if g.state == GroupState::Stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        })
    }

    /// DeleteGroups for one group: only an empty group can go; its offsets go with it.
    pub fn delete_group(&self, group_id: &str) -> i16 {
        let mut groups = self.groups.lock();
        let Some(group) = groups.get(group_id) else {
            return E::GroupIdNotFound.code();
        };
        if !group.members.is_empty()
            || group.state != GroupState::Empty
            || group.has_consumer_members()
        {
            return E::NonEmptyGroup.code();
        }
        let mut records: Vec<OffsetsRecord> = group
            .offsets
            .keys()
            .map(|(t, p)| OffsetsRecord::Offset {
                group: group_id.to_string(),
                topic: t.clone(),
                partition: *p,
                value: None,
            })
            .collect();
        records.push(OffsetsRecord::Group {
            group: group_id.to_string(),
            value: None,
        });
        if let Err(code) = self.persist(group_id, records) {
            return code;
        }
        groups.remove(group_id);
        0
    }

    /// OffsetDelete: removes committed offsets of partitions the group does not consume.
    /// `subscribed(topic)` says whether a live member subscribes to a topic.
    pub fn delete_offsets(
        &self,
        group_id: &str,
        partitions: &[(String, i32)],
        subscribed: impl Fn(&[Bytes], &str) -> bool,
    ) -> Result<Vec<i16>, i16> {
        let mut groups = self.groups.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return Err(E::GroupIdNotFound.code());
        };
        let protocol = group.protocol.clone().unwrap_or_default();
        let metadata: Vec<Bytes> = group
            .members
            .values()
            .map(|m| m.metadata_for(&protocol))
            .collect();
        let consumer_topics: BTreeSet<String> = group
            .consumer
            .iter()
            .flat_map(|c| {
                c.members
                    .values()
                    .flat_map(|m| m.subscribed.iter().cloned())
            })
            .collect();
        let mut codes = Vec::with_capacity(partitions.len());
        let mut records = Vec::new();
        for (topic, partition) in partitions {
            if (!metadata.is_empty() && subscribed(&metadata, topic))
                || consumer_topics.contains(topic)
            {
                codes.push(E::GroupSubscribedToTopic.code());
                continue;
            }
            codes.push(0);
            records.push(OffsetsRecord::Offset {
                group: group_id.to_string(),
                topic: topic.clone(),
                partition: *partition,
                value: None,
            });
        }
        if !records.is_empty() {
            self.persist(group_id, records)?;
        }
        for ((topic, partition), code) in partitions.iter().zip(&codes) {
            if *code == 0 {
                group.offsets.remove(&(topic.clone(), *partition));
                group.offset_times.remove(&(topic.clone(), *partition));
                group.offset_write_seqs.remove(&(topic.clone(), *partition));
            }
        }
        Ok(codes)
    }
}

/// Kafka's choice: among protocols every member supports, the one most members list first
/// (each member votes for its most preferred candidate).
fn select_protocol(group: &Group) -> String {
    let candidates: Vec<&String> = group
        .members
        .values()
        .flat_map(|m| m.protocols.iter().map(|(n, _)| n))
        .filter(|name| {
            group
                .members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
        })
        .collect();
    let mut votes: BTreeMap<&String, usize> = BTreeMap::new();
    for member in group.members.values() {
        if let Some((name, _)) = member
            .protocols
            .iter()
            .find(|(n, _)| candidates.contains(&n))
        {
            *votes.entry(name).or_default() += 1;
        }
    }
    votes
        .into_iter()
        .max_by_key(|(_, v)| *v)
        .map(|(n, _)| n.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Written = Vec<(i32, Vec<u8>, Option<Vec<u8>>)>;

    /// Keeps what the coordinator writes, for replay.
    #[derive(Default)]
    struct MemoryLog(Mutex<Written>);

    impl OffsetsLog for MemoryLog {
        fn append(
            &self,
            partition: i32,
            records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        ) -> Result<(), String> {
            self.0
                .lock()
                .extend(records.into_iter().map(|(k, v)| (partition, k, v)));
            Ok(())
        }

        fn append_transactional(
            &self,
            partition: i32,
            _producer_id: i64,
            _producer_epoch: i16,
            records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        ) -> Result<(), i16> {
            self.append(partition, records).map_err(|_| -1)
        }
    }

    fn offset(n: i64) -> CommittedOffset {
        CommittedOffset {
            offset: n,
            leader_epoch: -1,
            metadata: String::new(),
        }
    }

    #[test]
    fn offsets_of_an_empty_group_expire_after_the_retention_and_the_group_goes() {
        let log = Arc::new(MemoryLog::default());
        let coordinator = GroupCoordinator::new(CoordinatorConfig::default(), log.clone());
        let codes = coordinator.commit_offsets(
            "simple",
            -1,
            "",
            None,
            vec![("t".into(), 0, offset(5)), ("t".into(), 1, offset(7))],
        );
        assert_eq!(codes, vec![0, 0]);
        let now = wall_ms();
        assert_eq!(coordinator.expire_offsets(now, 60_000), 0, "not yet");
        assert_eq!(coordinator.expire_offsets(now + 60_000, 60_000), 2);
        assert!(coordinator.fetch_offsets("simple", None).is_empty());
        assert!(
            coordinator.list_groups().is_empty(),
            "the group went with its last offset"
        );
        // The tombstones replay to the same state.
        let replayed =
            GroupCoordinator::new(CoordinatorConfig::default(), Arc::new(MemoryLog::default()));
        for (_, k, v) in log.0.lock().iter() {
            replayed.replay(k, v.as_deref());
        }
        assert!(replayed.fetch_offsets("simple", None).is_empty());
        assert!(replayed.list_groups().is_empty());
    }

    #[test]
    fn replay_rebuilds_committed_offsets_and_groups() {
        let log = Arc::new(MemoryLog::default());
        let coordinator = GroupCoordinator::new(CoordinatorConfig::default(), log.clone());
        coordinator.commit_offsets("g", -1, "", None, vec![("t".into(), 0, offset(1))]);
        coordinator.commit_offsets(
            "g",
            -1,
            "",
            None,
            vec![("t".into(), 0, offset(9)), ("u".into(), 3, offset(4))],
        );
        let replayed =
            GroupCoordinator::new(CoordinatorConfig::default(), Arc::new(MemoryLog::default()));
        for (partition, k, v) in log.0.lock().iter() {
            assert_eq!(*partition, records::partition_for("g", 50));
            replayed.replay(k, v.as_deref());
        }
        let mut got = replayed.fetch_offsets("g", None);
        got.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        assert_eq!(
            got,
            vec![
                ("t".into(), 0, Some(offset(9))),
                ("u".into(), 3, Some(offset(4)))
            ]
        );
    }
}
