//! Committed offsets: OffsetCommit, OffsetFetch (single group and batched, KIP-709) and
//! OffsetDelete. The coordinator stores them in `__consumer_offsets`.

use bytes::Bytes;
use kafka_protocol::messages::consumer_protocol_subscription::ConsumerProtocolSubscription;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError as E;
use strom_coordinator::CommittedOffset;

use super::Ctx;
use crate::replication::Replicated;
use crate::Broker;

fn partition_exists(broker: &Broker, topic: &str, partition: i32) -> bool {
    broker
        .topics
        .get(topic)
        .is_some_and(|t| usize::try_from(partition).is_ok_and(|p| p < t.partition_count()))
}

/// `offsets.commit.timeout.ms`: longest a commit waits for the offsets topic's replicas.
const COMMIT_REPLICATION_TIMEOUT_MS: u64 = 5_000;

/// Waits until what the coordinator appended to the group's offsets partition is on every
/// in-sync replica, as Kafka acknowledges commits only then; Kafka's codes when it is not
/// (NOT_COORDINATOR when leadership moved, COORDINATOR_NOT_AVAILABLE on a timeout).
async fn wait_commit_replicated(broker: &Broker, group_id: &str) -> Result<(), i16> {
    let Some(topic) = broker.topics.get(crate::consumer_offsets::TOPIC) else {
        return Err(E::NotCoordinator.code());
    };
    let partition = topic
        .led(broker.groups.partition_for(group_id))
        .map_err(|_| E::NotCoordinator.code())?;
    let (_, leader_epoch, _) = partition.leadership();
    let end_offset = partition.log.offsets().log_end_offset;
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_millis(COMMIT_REPLICATION_TIMEOUT_MS);
    let mut shutdown = broker.shutdown.clone();
    match partition
        .wait_replicated(leader_epoch, end_offset, deadline, &mut shutdown)
        .await
    {
        Replicated::Yes { .. } => Ok(()),
        Replicated::NotLeader => Err(E::NotCoordinator.code()),
        Replicated::TimedOut => Err(E::CoordinatorNotAvailable.code()),
    }
}

/// One partition of an OffsetCommit or TxnOffsetCommit request, which carry the same
/// fields: its topic, index and the offset to commit.
type RequestedOffset<'a> = (&'a TopicName, i32, CommittedOffset);

/// The offset a request's partition asks to commit; `leader_epoch` is -1 for versions
/// without it.
fn committed_offset(
    offset: i64,
    leader_epoch: i32,
    metadata: Option<&StrBytes>,
) -> CommittedOffset {
    CommittedOffset {
        offset,
        leader_epoch,
        metadata: metadata.map(|m| m.to_string()).unwrap_or_default(),
    }
}

/// Commits the requested offsets of existing partitions through `write` (plain or
/// transactional: it gets them in request order and answers a code each) unless this
/// broker does not coordinate the group, and waits for the replicas when any succeeded.
/// Returns a code per requested partition, in request order; partitions that do not exist
/// are UNKNOWN_TOPIC_OR_PARTITION.
async fn commit_offsets(
    broker: &Broker,
    group_id: &str,
    requested: Vec<RequestedOffset<'_>>,
    write: impl FnOnce(Vec<(String, i32, CommittedOffset)>) -> Vec<i16>,
) -> Vec<i16> {
    // Unknown partitions are answered by the broker; the rest go to the coordinator together.
    let keys: Vec<(&TopicName, i32)> = requested.iter().map(|(t, p, _)| (*t, *p)).collect();
    let offsets: Vec<(String, i32, CommittedOffset)> = requested
        .into_iter()
        .filter(|(topic, partition, _)| partition_exists(broker, topic, *partition))
        .map(|(topic, partition, offset)| (topic.to_string(), partition, offset))
        .collect();
    let written: Vec<(String, i32)> = offsets.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
    let mut codes = match super::groups::check_coordinator(broker, group_id) {
        Err(code) => vec![code; offsets.len()],
        Ok(()) => write(offsets),
    };
    if codes.contains(&0) {
        if let Err(code) = wait_commit_replicated(broker, group_id).await {
            for c in codes.iter_mut().filter(|c| **c == 0) {
                *c = code;
            }
        }
    }
    keys.iter()
        .map(|(topic, partition)| {
            written
                .iter()
                .position(|(t, p)| t.as_str() == topic.as_str() && p == partition)
                .map_or(E::UnknownTopicOrPartition.code(), |i| codes[i])
        })
        .collect()
}

pub async fn commit(broker: &Broker, req: OffsetCommitRequest, ctx: &Ctx) -> OffsetCommitResponse {
    let requested = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| {
                let leader_epoch = if ctx.version >= 6 {
                    p.committed_leader_epoch
                } else {
                    -1
                };
                let offset = committed_offset(
                    p.committed_offset,
                    leader_epoch,
                    p.committed_metadata.as_ref(),
                );
                (&t.name, p.partition_index, offset)
            })
        })
        .collect();
    let instance = req.group_instance_id.as_ref().map(|i| i.to_string());
    let mut codes = commit_offsets(broker, &req.group_id, requested, |offsets| {
        broker.groups.commit_offsets(
            &req.group_id,
            req.generation_id_or_member_epoch,
            &req.member_id,
            instance.as_deref(),
            offsets,
        )
    })
    .await
    .into_iter();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .zip(codes.by_ref())
                .map(|(p, code)| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// TxnOffsetCommit (v0–v4): offsets committed as part of a producer's transaction, pending
/// in the coordinator until the transaction's marker reaches the group's offsets partition
/// (see `strom_coordinator::txn_offsets`). Answered, like OffsetCommit, once the write is on
/// every in-sync replica.
pub async fn txn_commit(
    broker: &Broker,
    req: TxnOffsetCommitRequest,
    ctx: &Ctx,
) -> TxnOffsetCommitResponse {
    use kafka_protocol::messages::txn_offset_commit_response::{
        TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
    };
    let requested = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| {
                let leader_epoch = if ctx.version >= 2 {
                    p.committed_leader_epoch
                } else {
                    -1
                };
                let offset = committed_offset(
                    p.committed_offset,
                    leader_epoch,
                    p.committed_metadata.as_ref(),
                );
                (&t.name, p.partition_index, offset)
            })
        })
        .collect();
    let mut codes = commit_offsets(broker, &req.group_id, requested, |offsets| {
        broker
            .groups
            .txn_commit_offsets(strom_coordinator::TxnOffsetCommit {
                group_id: req.group_id.to_string(),
                producer_id: req.producer_id.0,
                producer_epoch: req.producer_epoch,
                generation_id: if ctx.version >= 3 {
                    req.generation_id
                } else {
                    -1
                },
                member_id: if ctx.version >= 3 {
                    req.member_id.to_string()
                } else {
                    String::new()
                },
                group_instance_id: req.group_instance_id.as_ref().map(|i| i.to_string()),
                offsets,
            })
    })
    .await
    .into_iter();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .zip(codes.by_ref())
                .map(|(p, code)| {
                    TxnOffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            TxnOffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

type Wanted = Option<Vec<(String, Vec<i32>)>>;
/// Committed offsets of one group by topic: (topic, [(partition, offset if any, error)]).
type TopicOffsets = Vec<(String, Vec<(i32, Option<CommittedOffset>, i16)>)>;

/// The group's committed offsets. With `require_stable` (v7+, KIP-447), a partition with
/// offsets of an open transaction is UNSTABLE_OFFSET_COMMIT: the consumer retries until the
/// transaction ends rather than start from an offset about to change.
fn fetch_group(
    broker: &Broker,
    group_id: &str,
    wanted: Wanted,
    require_stable: bool,
) -> TopicOffsets {
    let keys: Option<Vec<(String, i32)>> = wanted.as_ref().map(|w| {
        w.iter()
            .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
            .collect()
    });
    let found = broker.groups.fetch_offsets(group_id, keys.as_deref());
    let mut topics: TopicOffsets = Vec::new();
    for (topic, partition, offset) in found {
        let entry = if require_stable
            && broker
                .groups
                .has_pending_offsets(group_id, &topic, partition)
        {
            (partition, None, E::UnstableOffsetCommit.code())
        } else {
            (partition, offset, 0)
        };
        match topics.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, partitions)) => partitions.push(entry),
            None => topics.push((topic, vec![entry])),
        }
    }
    topics
}

pub fn fetch(broker: &Broker, req: OffsetFetchRequest, ctx: &Ctx) -> OffsetFetchResponse {
    let version = ctx.version;
    let leader_epoch = |o: &Option<CommittedOffset>| {
        if version >= 5 {
            o.as_ref().map_or(-1, |o| o.leader_epoch)
        } else {
            -1
        }
    };
    if version >= 8 {
        let groups = req
            .groups
            .into_iter()
            .map(|g| {
                if let Err(code) = super::groups::check_coordinator(broker, &g.group_id) {
                    return OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id)
                        .with_error_code(code);
                }
                let wanted = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name.to_string(), t.partition_indexes))
                        .collect()
                });
                let topics = fetch_group(broker, &g.group_id, wanted, req.require_stable)
                    .into_iter()
                    .map(|(topic, partitions)| {
                        let partitions = partitions
                            .into_iter()
                            .map(|(p, o, code)| {
                                OffsetFetchResponsePartitions::default()
                                    .with_partition_index(p)
                                    .with_error_code(code)
                                    .with_committed_offset(o.as_ref().map_or(-1, |o| o.offset))
                                    .with_committed_leader_epoch(leader_epoch(&o))
                                    .with_metadata(Some(StrBytes::from_string(
                                        o.map(|o| o.metadata).unwrap_or_default(),
                                    )))
                            })
                            .collect();
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(StrBytes::from_string(topic)))
                            .with_partitions(partitions)
                    })
                    .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    if let Err(code) = super::groups::check_coordinator(broker, &req.group_id) {
        return OffsetFetchResponse::default().with_error_code(code);
    }
    let wanted = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.to_string(), t.partition_indexes))
            .collect()
    });
    let require_stable = version >= 7 && req.require_stable;
    let topics = fetch_group(broker, &req.group_id, wanted, require_stable)
        .into_iter()
        .map(|(topic, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(p, o, code)| {
                    OffsetFetchResponsePartition::default()
                        .with_partition_index(p)
                        .with_error_code(code)
                        .with_committed_offset(o.as_ref().map_or(-1, |o| o.offset))
                        .with_committed_leader_epoch(leader_epoch(&o))
                        .with_metadata(Some(StrBytes::from_string(
                            o.map(|o| o.metadata).unwrap_or_default(),
                        )))
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic)))
                .with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// Whether any member's consumer-protocol subscription names `topic`; metadata that does not
/// parse counts as subscribed, the safe answer for OffsetDelete.
fn subscribed(metadata: &[Bytes], topic: &str) -> bool {
    metadata.iter().any(|m| {
        let mut buf = m.clone();
        if buf.len() < 2 {
            return true;
        }
        let version = i16::from_be_bytes([buf[0], buf[1]]);
        let _ = bytes::Buf::get_i16(&mut buf);
        match ConsumerProtocolSubscription::decode(&mut buf, version.clamp(0, 3)) {
            Ok(sub) => sub.topics.iter().any(|t| t.as_str() == topic),
            Err(_) => true,
        }
    })
}

pub fn delete(broker: &Broker, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    if let Err(code) = super::groups::check_coordinator(broker, &req.group_id) {
        return OffsetDeleteResponse::default().with_error_code(code);
    }
    let partitions: Vec<(String, i32)> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.to_string(), p.partition_index))
        })
        .collect();
    match broker
        .groups
        .delete_offsets(&req.group_id, &partitions, subscribed)
    {
        Err(code) => OffsetDeleteResponse::default().with_error_code(code),
        Ok(codes) => {
            let mut i = 0;
            let topics = req
                .topics
                .iter()
                .map(|t| {
                    let partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            let code = codes[i];
                            i += 1;
                            OffsetDeleteResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect();
                    OffsetDeleteResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(partitions)
                })
                .collect();
            OffsetDeleteResponse::default().with_topics(topics)
        }
    }
}
