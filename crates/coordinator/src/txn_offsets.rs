//! Transactional offset commits (KIP-98, KIP-447): TxnOffsetCommit writes a group's offsets
//! to `__consumer_offsets` as part of a producer's transaction. They stay pending — invisible
//! to OffsetFetch, which answers UNSTABLE_OFFSET_COMMIT to consumers that ask for stable
//! offsets — until the transaction's marker reaches that partition: a commit makes them the
//! group's committed offsets (unless a plain commit was written after them), an abort drops
//! them. Loading a partition replays the same way: records of transactional batches are
//! pending until the producer's control record.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use kafka_protocol::ResponseError as E;
use tracing::debug;

use crate::records::OffsetsRecord;
use crate::{wall_ms, CommittedOffset, Group, GroupCoordinator, GroupState};

/// An offset written by a transaction that has not ended yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingOffset {
    offset: CommittedOffset,
    commit_timestamp_ms: i64,
    /// Write order, compared with the committed offset's when the transaction commits.
    write_seq: u64,
}

/// A TxnOffsetCommit request, decoded.
#[derive(Debug, Clone)]
pub struct TxnOffsetCommit {
    pub group_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// v3+ (KIP-447): the member's generation, or -1 when the producer does not say.
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub offsets: Vec<(String, i32, CommittedOffset)>,
}

impl Group {
    pub(crate) fn has_pending_txn_offset(&self, key: &(String, i32)) -> bool {
        self.pending_txn_offsets
            .values()
            .any(|pending| pending.contains_key(key))
    }

    /// Ends `producer_id`'s transaction for this group: on commit its pending offsets
    /// become committed where no later plain commit exists; on abort they are dropped.
    fn complete_txn_offsets(&mut self, producer_id: i64, commit: bool) -> usize {
        let Some(pending) = self.pending_txn_offsets.remove(&producer_id) else {
            return 0;
        };
        if !commit {
            return 0;
        }
        let mut applied = 0;
        for (key, p) in pending {
            let newer = self
                .offset_write_seqs
                .get(&key)
                .is_none_or(|&committed| committed < p.write_seq);
            if newer {
                self.offset_times.insert(key.clone(), p.commit_timestamp_ms);
                self.offset_write_seqs.insert(key.clone(), p.write_seq);
                self.offsets.insert(key, p.offset);
                applied += 1;
            }
        }
        applied
    }
}

impl GroupCoordinator {
    /// The next write's place in the order of offset writes.
    pub(crate) fn next_write_seq(&self) -> u64 {
        self.write_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// TxnOffsetCommit: checks the member as Kafka's `doTxnCommitOffsets` does (a producer
    /// that gives no generation is not checked: KIP-447's older clients), writes the offsets
    /// as one transactional batch of the producer and keeps them pending. One code per
    /// offset, in order.
    pub fn txn_commit_offsets(&self, req: TxnOffsetCommit) -> Vec<i16> {
        let all = |code: E| vec![code.code(); req.offsets.len()];
        if req.group_id.is_empty() {
            return all(E::InvalidGroupId);
        }
        let mut groups = self.groups.lock();
        let group = groups
            .entry(req.group_id.clone())
            .or_insert_with(|| Group::new(&req.group_id));
        if group.state == GroupState::Dead {
            return all(E::CoordinatorNotAvailable);
        }
        if let Some(instance) = &req.group_instance_id {
            if group
                .static_members
                .get(instance)
                .is_some_and(|id| *id != req.member_id)
            {
                return all(E::FencedInstanceId);
            }
        }
        let known_member = group.members.contains_key(&req.member_id)
            || group
                .consumer
                .as_ref()
                .is_some_and(|c| c.members.contains_key(&req.member_id));
        if !req.member_id.is_empty() && !known_member {
            return all(E::UnknownMemberId);
        }
        if req.generation_id >= 0 {
            let generation = match &group.consumer {
                Some(c) if !c.members.is_empty() => c
                    .members
                    .get(&req.member_id)
                    .map_or(group.generation, |m| m.epoch),
                _ => group.generation,
            };
            if req.generation_id != generation {
                return all(E::IllegalGeneration);
            }
        }
        let now_ms = wall_ms();
        let (codes, records) = self.offset_records(&req.group_id, &req.offsets, now_ms);
        if !records.is_empty() {
            let partition = self.partition_for(&req.group_id);
            if let Err(code) = self.log.append_transactional(
                partition,
                req.producer_id,
                req.producer_epoch,
                records.iter().map(OffsetsRecord::encode).collect(),
            ) {
                debug!(group = %req.group_id, producer_id = req.producer_id, code, "transactional offset commit refused");
                return vec![code; req.offsets.len()];
            }
        }
        let pending = group
            .pending_txn_offsets
            .entry(req.producer_id)
            .or_default();
        for ((topic, partition, offset), code) in req.offsets.into_iter().zip(&codes) {
            if *code == 0 {
                let write_seq = self.next_write_seq();
                pending.insert(
                    (topic, partition),
                    PendingOffset {
                        offset,
                        commit_timestamp_ms: now_ms,
                        write_seq,
                    },
                );
            }
        }
        codes
    }

    /// A transaction marker of `producer_id` was written to `offsets_partition`: every group
    /// of that partition commits or drops the producer's pending offsets (Kafka's
    /// `onTransactionCompleted`). Returns the offsets that became committed.
    pub fn complete_transaction(
        &self,
        offsets_partition: i32,
        producer_id: i64,
        commit: bool,
    ) -> usize {
        let partitions = self.config.offsets_partitions;
        let mut groups = self.groups.lock();
        groups
            .iter_mut()
            .filter(|(id, _)| crate::records::partition_for(id, partitions) == offsets_partition)
            .map(|(_, group)| group.complete_txn_offsets(producer_id, commit))
            .sum()
    }

    /// Replays one record of a transactional batch of `producer_id` read at load time: an
    /// offset stays pending until the producer's marker ([`Self::complete_transaction`]).
    /// Other record types in transactional batches are not written by Kafka or Strom and are
    /// applied as plain records.
    pub fn replay_transactional(&self, key: &[u8], value: Option<&[u8]>, producer_id: i64) {
        let Some(OffsetsRecord::Offset {
            group,
            topic,
            partition,
            value: Some(v),
        }) = OffsetsRecord::decode(key, value)
        else {
            self.replay(key, value);
            return;
        };
        let mut groups = self.groups.lock();
        let g = groups
            .entry(group.clone())
            .or_insert_with(|| Group::new(&group));
        let write_seq = self.next_write_seq();
        g.pending_txn_offsets
            .entry(producer_id)
            .or_default()
            .insert(
                (topic, partition),
                PendingOffset {
                    offset: CommittedOffset {
                        offset: v.offset,
                        leader_epoch: v.leader_epoch,
                        metadata: v.metadata,
                    },
                    commit_timestamp_ms: v.commit_timestamp_ms,
                    write_seq,
                },
            );
    }

    /// Whether the group has offsets of an open transaction for this partition: OffsetFetch
    /// with `require_stable` answers UNSTABLE_OFFSET_COMMIT for it (KIP-447).
    pub fn has_pending_offsets(&self, group_id: &str, topic: &str, partition: i32) -> bool {
        self.groups
            .lock()
            .get(group_id)
            .is_some_and(|g| g.has_pending_txn_offset(&(topic.to_string(), partition)))
    }

    /// The producers with pending offsets in a group, for tests and descriptions.
    pub fn pending_producers(&self, group_id: &str) -> BTreeMap<i64, usize> {
        self.groups
            .lock()
            .get(group_id)
            .map(|g| {
                g.pending_txn_offsets
                    .iter()
                    .map(|(pid, offsets)| (*pid, offsets.len()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;
    use crate::{CoordinatorConfig, OffsetsLog};

    /// What was written: (partition, producer id if transactional, key, value).
    type Written = Vec<(i32, Option<i64>, Vec<u8>, Option<Vec<u8>>)>;

    #[derive(Default)]
    struct MemoryLog {
        written: Mutex<Written>,
        /// Producers whose writes the log refuses as fenced.
        fenced: Mutex<Vec<i64>>,
    }

    impl OffsetsLog for MemoryLog {
        fn append(
            &self,
            partition: i32,
            records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        ) -> Result<(), String> {
            let mut written = self.written.lock();
            written.extend(records.into_iter().map(|(k, v)| (partition, None, k, v)));
            Ok(())
        }

        fn append_transactional(
            &self,
            partition: i32,
            producer_id: i64,
            _producer_epoch: i16,
            records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        ) -> Result<(), i16> {
            if self.fenced.lock().contains(&producer_id) {
                return Err(E::InvalidProducerEpoch.code());
            }
            let mut written = self.written.lock();
            written.extend(
                records
                    .into_iter()
                    .map(|(k, v)| (partition, Some(producer_id), k, v)),
            );
            Ok(())
        }
    }

    fn offset(n: i64) -> CommittedOffset {
        CommittedOffset {
            offset: n,
            leader_epoch: -1,
            metadata: String::new(),
        }
    }

    fn txn_commit(pid: i64, n: i64) -> TxnOffsetCommit {
        TxnOffsetCommit {
            group_id: "g".into(),
            producer_id: pid,
            producer_epoch: 0,
            generation_id: -1,
            member_id: String::new(),
            group_instance_id: None,
            offsets: vec![("t".into(), 0, offset(n))],
        }
    }

    fn committed(c: &GroupCoordinator) -> Option<i64> {
        c.fetch_offsets("g", Some(&[("t".to_string(), 0)]))[0]
            .2
            .as_ref()
            .map(|o| o.offset)
    }

    fn coordinator() -> (Arc<MemoryLog>, GroupCoordinator) {
        let log = Arc::new(MemoryLog::default());
        let c = GroupCoordinator::new(CoordinatorConfig::default(), log.clone());
        (log, c)
    }

    #[test]
    fn transactional_offsets_are_pending_until_the_commit_marker() {
        let (_, c) = coordinator();
        let p = c.partition_for("g");
        assert_eq!(c.txn_commit_offsets(txn_commit(7, 10)), vec![0]);
        assert_eq!(committed(&c), None);
        assert!(c.has_pending_offsets("g", "t", 0));
        assert_eq!(c.complete_transaction(p + 1, 7, true), 0, "other partition");
        assert_eq!(c.complete_transaction(p, 8, true), 0, "other producer");
        assert_eq!(c.complete_transaction(p, 7, true), 1);
        assert_eq!(committed(&c), Some(10));
        assert!(!c.has_pending_offsets("g", "t", 0));
    }

    #[test]
    fn an_aborted_transaction_drops_its_offsets() {
        let (_, c) = coordinator();
        assert_eq!(c.txn_commit_offsets(txn_commit(7, 10)), vec![0]);
        assert_eq!(c.complete_transaction(c.partition_for("g"), 7, false), 0);
        assert_eq!(committed(&c), None);
        assert!(c.pending_producers("g").is_empty());
    }

    #[test]
    fn a_plain_commit_written_after_the_transactional_one_wins() {
        let (_, c) = coordinator();
        assert_eq!(c.txn_commit_offsets(txn_commit(7, 10)), vec![0]);
        assert_eq!(
            c.commit_offsets("g", -1, "", None, vec![("t".into(), 0, offset(5))]),
            vec![0]
        );
        c.complete_transaction(c.partition_for("g"), 7, true);
        assert_eq!(committed(&c), Some(5));
    }

    #[test]
    fn a_fenced_producer_gets_the_logs_error_and_nothing_is_pending() {
        let (log, c) = coordinator();
        log.fenced.lock().push(7);
        assert_eq!(
            c.txn_commit_offsets(txn_commit(7, 10)),
            vec![E::InvalidProducerEpoch.code()]
        );
        assert!(c.pending_producers("g").is_empty());
    }

    #[test]
    fn a_wrong_generation_or_unknown_member_is_refused() {
        let (_, c) = coordinator();
        let mut req = txn_commit(7, 10);
        req.generation_id = 3;
        assert_eq!(c.txn_commit_offsets(req), vec![E::IllegalGeneration.code()]);
        let mut req = txn_commit(7, 10);
        req.member_id = "nobody".into();
        assert_eq!(c.txn_commit_offsets(req), vec![E::UnknownMemberId.code()]);
        assert!(c.pending_producers("g").is_empty());
    }

    #[test]
    fn replay_keeps_transactional_offsets_pending_until_their_marker() {
        let (log, c) = coordinator();
        c.txn_commit_offsets(txn_commit(7, 10));
        c.txn_commit_offsets(txn_commit(8, 20));
        let (_, fresh) = coordinator();
        for (_, producer, key, value) in log.written.lock().iter() {
            match producer {
                Some(pid) => fresh.replay_transactional(key, value.as_deref(), *pid),
                None => fresh.replay(key, value.as_deref()),
            }
        }
        assert_eq!(fresh.pending_producers("g").len(), 2);
        let p = fresh.partition_for("g");
        fresh.complete_transaction(p, 8, false);
        fresh.complete_transaction(p, 7, true);
        assert_eq!(committed(&fresh), Some(10));
    }
}
