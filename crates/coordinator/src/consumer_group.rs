//! Consumer groups with the KIP-848 protocol: members heartbeat their subscription and owned
//! partitions; the coordinator computes the target assignment (server-side assignors) and
//! hands each member its partitions, revoking before it reassigns, so that no partition is
//! owned by two members at once.
//!
//! Epochs as in KIP-848: the group epoch moves when membership, subscriptions or the
//! subscribed topics' metadata change; the target assignment is recomputed at the group
//! epoch; a member reaches the target epoch once it has revoked what it must give up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use kafka_protocol::ResponseError as E;
use tokio::time::Instant;
use uuid::Uuid;

/// A member's partitions: topic id → partitions.
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// What the coordinator needs to know about topics.
pub trait TopicMetadata {
    /// The id and partition count of a topic, if it exists.
    fn topic(&self, name: &str) -> Option<(Uuid, i32)>;
}

/// Server-side assignors by name (`group.consumer.assignors`).
pub const ASSIGNORS: &[&str] = &["uniform", "range"];

/// A ConsumerGroupHeartbeat, decoded.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Option<Vec<String>>,
    pub server_assignor: Option<String>,
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

/// The answer: member id and epoch, and the assignment when it changed.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatResult {
    pub error_code: i16,
    pub error_message: Option<String>,
    pub member_id: String,
    pub member_epoch: i32,
    pub assignment: Option<Assignment>,
}

impl HeartbeatResult {
    pub fn error(code: E, message: &str) -> HeartbeatResult {
        HeartbeatResult {
            error_code: code.code(),
            error_message: Some(message.to_string()),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub epoch: i32,
    pub subscribed: Vec<String>,
    pub assignor: Option<String>,
    pub rebalance_timeout: Duration,
    /// Partitions the member may own now.
    pub assigned: Assignment,
    /// Partitions it must give up before it reaches the target epoch.
    pub revoking: Assignment,
    /// The assignment last sent, so unchanged assignments are not resent.
    last_sent: Option<Assignment>,
    last_heartbeat: Instant,
}

/// One KIP-848 group.
#[derive(Debug, Default)]
pub struct ConsumerGroup {
    pub id: String,
    pub epoch: i32,
    pub target_epoch: i32,
    pub target: HashMap<String, Assignment>,
    pub members: BTreeMap<String, ConsumerMember>,
    /// Partition counts of the subscribed topics when the target was computed.
    subscribed_metadata: BTreeMap<String, (Uuid, i32)>,
}

impl ConsumerGroup {
    pub fn new(id: &str) -> ConsumerGroup {
        ConsumerGroup {
            id: id.to_string(),
            ..Default::default()
        }
    }

    /// KIP-848's group states, as ConsumerGroupDescribe and ListGroups show them.
    pub fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.target_epoch < self.epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.epoch < self.target_epoch || !m.revoking.is_empty())
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    pub fn assignor(&self) -> &str {
        self.members
            .values()
            .find_map(|m| m.assignor.as_deref())
            .unwrap_or("uniform")
    }

    /// Handles one heartbeat; `session_timeout` is for the caller's expiry check.
    pub fn heartbeat(
        &mut self,
        hb: Heartbeat,
        topics: &dyn TopicMetadata,
        max_size: usize,
    ) -> HeartbeatResult {
        let now = Instant::now();
        if let Some(assignor) = &hb.server_assignor {
            if !ASSIGNORS.contains(&assignor.as_str()) {
                return HeartbeatResult::error(
                    E::UnsupportedAssignor,
                    &format!("Assignor {assignor} is not supported"),
                );
            }
        }
        match hb.member_epoch {
            -1 | -2 => {
                let Some(_) = self.members.remove(&hb.member_id) else {
                    return HeartbeatResult::error(E::UnknownMemberId, "unknown member");
                };
                self.epoch += 1;
                self.recompute(topics);
                return HeartbeatResult {
                    member_id: hb.member_id,
                    member_epoch: hb.member_epoch,
                    ..Default::default()
                };
            }
            0 => {
                if hb.subscribed_topic_names.is_none() {
                    return HeartbeatResult::error(
                        E::InvalidRequest,
                        "SubscribedTopicNames must be set in first request",
                    );
                }
                // A static member coming back replaces its previous incarnation.
                if let Some(instance) = &hb.instance_id {
                    if let Some(old) = self
                        .members
                        .values()
                        .find(|m| m.instance_id.as_ref() == Some(instance))
                        .map(|m| m.id.clone())
                    {
                        self.members.remove(&old);
                    }
                }
                if !self.members.contains_key(&hb.member_id) {
                    if self.members.len() >= max_size {
                        return HeartbeatResult::error(E::GroupMaxSizeReached, "the group is full");
                    }
                    let id = if hb.member_id.is_empty() {
                        Uuid::new_v4().to_string()
                    } else {
                        hb.member_id.clone()
                    };
                    self.members.insert(
                        id.clone(),
                        ConsumerMember {
                            id: id.clone(),
                            instance_id: hb.instance_id.clone(),
                            rack_id: hb.rack_id.clone(),
                            client_id: hb.client_id.clone(),
                            client_host: hb.client_host.clone(),
                            epoch: 0,
                            subscribed: Vec::new(),
                            assignor: None,
                            rebalance_timeout: Duration::from_millis(
                                hb.rebalance_timeout_ms.max(0) as u64,
                            ),
                            assigned: Assignment::new(),
                            revoking: Assignment::new(),
                            last_sent: None,
                            last_heartbeat: now,
                        },
                    );
                    self.epoch += 1;
                    return self
                        .heartbeat(
                            Heartbeat {
                                member_id: id,
                                member_epoch: 0,
                                ..hb
                            },
                            topics,
                            max_size,
                        )
                        .rejoined();
                }
            }
            _ => {}
        }
        let group_epoch = self.epoch;
        let Some(member) = self.members.get_mut(&hb.member_id) else {
            return HeartbeatResult::error(E::UnknownMemberId, "unknown member");
        };
        if hb.member_epoch != 0 && hb.member_epoch != member.epoch {
            return HeartbeatResult::error(
                E::FencedMemberEpoch,
                "the member epoch is not the current one",
            );
        }
        member.last_heartbeat = now;
        let mut group_changed = false;
        if let Some(subscribed) = hb.subscribed_topic_names {
            let mut subscribed = subscribed;
            subscribed.sort();
            subscribed.dedup();
            if subscribed != member.subscribed {
                member.subscribed = subscribed;
                group_changed = true;
            }
        }
        if hb.server_assignor.is_some() && hb.server_assignor != member.assignor {
            member.assignor = hb.server_assignor.clone();
            group_changed = true;
        }
        if let Some(owned) = hb.owned {
            // Revocations are acknowledged by no longer reporting the partitions.
            for (topic, partitions) in &mut member.revoking {
                let still = owned.get(topic).cloned().unwrap_or_default();
                partitions.retain(|p| still.contains(p));
            }
            member.revoking.retain(|_, ps| !ps.is_empty());
        }
        if group_changed {
            self.epoch = group_epoch + 1;
        }
        if self.metadata_changed(topics) {
            self.epoch += 1;
        }
        if self.target_epoch < self.epoch {
            self.recompute(topics);
        }
        self.reconcile(&hb.member_id)
    }

    fn metadata_changed(&self, topics: &dyn TopicMetadata) -> bool {
        self.current_metadata(topics) != self.subscribed_metadata
    }

    fn current_metadata(&self, topics: &dyn TopicMetadata) -> BTreeMap<String, (Uuid, i32)> {
        let names: BTreeSet<&String> = self
            .members
            .values()
            .flat_map(|m| m.subscribed.iter())
            .collect();
        names
            .into_iter()
            .filter_map(|n| topics.topic(n).map(|t| (n.clone(), t)))
            .collect()
    }

    /// Recomputes the target assignment at the current group epoch.
    fn recompute(&mut self, topics: &dyn TopicMetadata) {
        self.subscribed_metadata = self.current_metadata(topics);
        let members: Vec<(&String, &Vec<String>)> = self
            .members
            .iter()
            .map(|(id, m)| (id, &m.subscribed))
            .collect();
        self.target = match self.assignor() {
            "range" => range_assign(&members, &self.subscribed_metadata),
            _ => {
                let current: HashMap<String, Assignment> = self
                    .members
                    .iter()
                    .map(|(id, m)| (id.clone(), m.assigned.clone()))
                    .collect();
                uniform_assign(&members, &self.subscribed_metadata, &current)
            }
        };
        self.target_epoch = self.epoch;
    }

    /// Moves one member towards its target: revoke first, then take partitions as they
    /// become free.
    fn reconcile(&mut self, member_id: &str) -> HeartbeatResult {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let target_epoch = self.target_epoch;
        let taken: BTreeSet<(Uuid, i32)> = self
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != member_id)
            .flat_map(|(_, m)| {
                m.assigned
                    .iter()
                    .chain(m.revoking.iter())
                    .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
            })
            .collect();
        let member = self
            .members
            .get_mut(member_id)
            .expect("reconciled member exists");
        let to_revoke = subtract(&member.assigned, &target);
        if !to_revoke.is_empty() {
            member.assigned = intersect(&member.assigned, &target);
            for (t, ps) in to_revoke {
                member.revoking.entry(t).or_default().extend(ps);
            }
        }
        if member.revoking.is_empty() {
            member.epoch = target_epoch;
            for (t, ps) in &target {
                for p in ps {
                    if !taken.contains(&(*t, *p)) {
                        member.assigned.entry(*t).or_default().insert(*p);
                    }
                }
            }
        }
        let assignment =
            (member.last_sent.as_ref() != Some(&member.assigned)).then(|| member.assigned.clone());
        if assignment.is_some() {
            member.last_sent = Some(member.assigned.clone());
        }
        HeartbeatResult {
            member_id: member.id.clone(),
            member_epoch: member.epoch,
            assignment,
            ..Default::default()
        }
    }

    /// Members whose session ran out: removed, and the target recomputed.
    pub fn expire(&mut self, session_timeout: Duration, topics: &dyn TopicMetadata) -> Vec<String> {
        let now = Instant::now();
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| now.duration_since(m.last_heartbeat) > session_timeout)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            self.members.remove(id);
        }
        if !expired.is_empty() {
            self.epoch += 1;
            self.recompute(topics);
        }
        expired
    }
}

impl HeartbeatResult {
    /// A first heartbeat always carries the (possibly empty) assignment.
    fn rejoined(mut self) -> HeartbeatResult {
        if self.error_code == 0 && self.assignment.is_none() {
            self.assignment = Some(Assignment::new());
        }
        self
    }
}

/// The partitions of `a` that are (`in_b`) or are not (`!in_b`) also in `b`.
fn filter_by(a: &Assignment, b: &Assignment, in_b: bool) -> Assignment {
    let mut out = Assignment::new();
    for (t, ps) in a {
        let keep: BTreeSet<i32> = ps
            .iter()
            .filter(|p| b.get(t).is_some_and(|bs| bs.contains(p)) == in_b)
            .copied()
            .collect();
        if !keep.is_empty() {
            out.insert(*t, keep);
        }
    }
    out
}

fn subtract(a: &Assignment, b: &Assignment) -> Assignment {
    filter_by(a, b, false)
}

fn intersect(a: &Assignment, b: &Assignment) -> Assignment {
    filter_by(a, b, true)
}

/// An empty assignment for every member.
fn empty_assignments(members: &[(&String, &Vec<String>)]) -> HashMap<String, Assignment> {
    members
        .iter()
        .map(|(id, _)| ((*id).clone(), Assignment::new()))
        .collect()
}

/// The members subscribed to `topic`, in member-id order.
fn subscribers<'a>(members: &[(&'a String, &Vec<String>)], topic: &str) -> Vec<&'a String> {
    let mut ids: Vec<&String> = members
        .iter()
        .filter(|(_, subs)| subs.iter().any(|s| s == topic))
        .map(|(id, _)| *id)
        .collect();
    ids.sort();
    ids
}

/// The uniform assignor: partitions spread evenly over the members subscribed to their
/// topic, keeping partitions where they are when that stays balanced (sticky).
pub fn uniform_assign(
    members: &[(&String, &Vec<String>)],
    topics: &BTreeMap<String, (Uuid, i32)>,
    current: &HashMap<String, Assignment>,
) -> HashMap<String, Assignment> {
    let mut result = empty_assignments(members);
    let mut counts: HashMap<&String, usize> = members.iter().map(|(id, _)| (*id, 0)).collect();
    for (name, (topic_id, partitions)) in topics {
        let eligible = subscribers(members, name);
        if eligible.is_empty() {
            continue;
        }
        let quota = (*partitions as usize).div_ceil(eligible.len());
        let mut topic_counts: HashMap<&String, usize> = HashMap::new();
        let mut unassigned = Vec::new();
        for p in 0..*partitions {
            let owner = eligible.iter().find(|id| {
                current
                    .get(**id)
                    .is_some_and(|a| a.get(topic_id).is_some_and(|ps| ps.contains(&p)))
            });
            match owner {
                Some(id) if topic_counts.get(id).copied().unwrap_or(0) < quota => {
                    *topic_counts.entry(id).or_default() += 1;
                    *counts.entry(id).or_default() += 1;
                    result
                        .entry((*id).clone())
                        .or_default()
                        .entry(*topic_id)
                        .or_default()
                        .insert(p);
                }
                _ => unassigned.push(p),
            }
        }
        for p in unassigned {
            let id = eligible
                .iter()
                .min_by_key(|id| {
                    (
                        topic_counts.get(**id).copied().unwrap_or(0),
                        counts.get(**id).copied().unwrap_or(0),
                        (**id).clone(),
                    )
                })
                .copied()
                .expect("eligible members");
            *topic_counts.entry(id).or_default() += 1;
            *counts.entry(id).or_default() += 1;
            result
                .entry(id.clone())
                .or_default()
                .entry(*topic_id)
                .or_default()
                .insert(p);
        }
    }
    result
}

/// The range assignor: per topic, contiguous ranges to the subscribed members in member-id
/// order, the first ones taking one more when the division is not even.
pub fn range_assign(
    members: &[(&String, &Vec<String>)],
    topics: &BTreeMap<String, (Uuid, i32)>,
) -> HashMap<String, Assignment> {
    let mut result = empty_assignments(members);
    for (name, (topic_id, partitions)) in topics {
        let eligible = subscribers(members, name);
        if eligible.is_empty() {
            continue;
        }
        let n = eligible.len() as i32;
        let (per, extra) = (partitions / n, partitions % n);
        let mut next = 0;
        for (i, id) in eligible.iter().enumerate() {
            let count = per + i32::from((i as i32) < extra);
            let set: BTreeSet<i32> = (next..next + count).collect();
            next += count;
            if !set.is_empty() {
                result
                    .entry((*id).clone())
                    .or_default()
                    .insert(*topic_id, set);
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Topics(BTreeMap<String, (Uuid, i32)>);

    impl TopicMetadata for Topics {
        fn topic(&self, name: &str) -> Option<(Uuid, i32)> {
            self.0.get(name).copied()
        }
    }

    fn join(group: &mut ConsumerGroup, topics: &Topics, id: &str) -> HeartbeatResult {
        group.heartbeat(
            Heartbeat {
                member_id: id.into(),
                member_epoch: 0,
                instance_id: None,
                rack_id: None,
                rebalance_timeout_ms: 30_000,
                subscribed_topic_names: Some(vec!["t".into()]),
                server_assignor: None,
                owned: Some(Assignment::new()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
            },
            topics,
            100,
        )
    }

    fn beat(
        group: &mut ConsumerGroup,
        topics: &Topics,
        id: &str,
        epoch: i32,
        owned: Assignment,
    ) -> HeartbeatResult {
        group.heartbeat(
            Heartbeat {
                member_id: id.into(),
                member_epoch: epoch,
                instance_id: None,
                rack_id: None,
                rebalance_timeout_ms: 30_000,
                subscribed_topic_names: None,
                server_assignor: None,
                owned: Some(owned),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
            },
            topics,
            100,
        )
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(BTreeSet::len).sum()
    }

    #[test]
    fn a_second_member_gets_partitions_only_after_the_first_revokes_them() {
        let t = Uuid::new_v4();
        let topics = Topics([("t".to_string(), (t, 6))].into());
        let mut group = ConsumerGroup::new("g");
        let a = join(&mut group, &topics, "a");
        let a_owned = a.assignment.clone().unwrap();
        assert_eq!(count(&a_owned), 6);
        let b = join(&mut group, &topics, "b");
        assert_eq!(
            count(b.assignment.as_ref().unwrap()),
            0,
            "nothing is free yet"
        );
        // a is told to give up three partitions; it keeps its epoch until it does.
        let a2 = beat(&mut group, &topics, "a", a.member_epoch, a_owned.clone());
        let a_kept = a2.assignment.clone().unwrap();
        assert_eq!(count(&a_kept), 3);
        assert_eq!(a2.member_epoch, a.member_epoch);
        let b2 = beat(&mut group, &topics, "b", b.member_epoch, Assignment::new());
        assert!(
            b2.assignment.is_none() || count(b2.assignment.as_ref().unwrap()) == 0,
            "still owned by a"
        );
        // a acknowledges the revocation; b then receives the freed partitions.
        let a3 = beat(&mut group, &topics, "a", a2.member_epoch, a_kept.clone());
        assert_eq!(a3.member_epoch, group.target_epoch);
        let b3 = beat(&mut group, &topics, "b", b2.member_epoch, Assignment::new());
        let b_got = b3.assignment.unwrap();
        assert_eq!(count(&b_got), 3);
        assert!(
            subtract(&b_got, &a_kept) == b_got,
            "no partition is owned twice"
        );
        assert_eq!(group.state(), "Stable");
    }

    #[test]
    fn stale_epochs_are_fenced_and_leaving_frees_partitions() {
        let t = Uuid::new_v4();
        let topics = Topics([("t".to_string(), (t, 4))].into());
        let mut group = ConsumerGroup::new("g");
        let a = join(&mut group, &topics, "a");
        assert_eq!(
            beat(
                &mut group,
                &topics,
                "a",
                a.member_epoch + 7,
                Assignment::new()
            )
            .error_code,
            E::FencedMemberEpoch.code()
        );
        assert_eq!(
            beat(&mut group, &topics, "zz", 3, Assignment::new()).error_code,
            E::UnknownMemberId.code()
        );
        let b = join(&mut group, &topics, "b");
        let left = beat(&mut group, &topics, "a", -1, Assignment::new());
        assert_eq!((left.error_code, left.member_epoch), (0, -1));
        let b2 = beat(&mut group, &topics, "b", b.member_epoch, Assignment::new());
        assert_eq!(count(b2.assignment.as_ref().unwrap()), 4);
    }

    #[test]
    fn range_and_uniform_assignors_balance_partitions() {
        let t = Uuid::new_v4();
        let topics: BTreeMap<String, (Uuid, i32)> = [("t".to_string(), (t, 7))].into();
        let subs = vec!["t".to_string()];
        let ids: Vec<String> = (0..3).map(|i| format!("m{i}")).collect();
        let members: Vec<(&String, &Vec<String>)> = ids.iter().map(|id| (id, &subs)).collect();
        let range = range_assign(&members, &topics);
        assert_eq!(range["m0"][&t], [0, 1, 2].into());
        assert_eq!(range["m2"][&t], [5, 6].into());
        let uniform = uniform_assign(&members, &topics, &HashMap::new());
        let sizes: Vec<usize> = ids.iter().map(|id| count(&uniform[id])).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 7);
        assert!(sizes.iter().all(|s| (2..=3).contains(s)));
    }
}
