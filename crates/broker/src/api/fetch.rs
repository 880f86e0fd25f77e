//! Fetch: long-poll reads whose record bytes go from segment files to the socket.
//!
//! The response is written by hand around [`FileSlice`]s: everything but the records is
//! encoded into buffers, each partition's records become a `Part::File` that the connection
//! sends with `sendfile`. A fetch with fewer than `min_bytes` available waits up to
//! `max_wait_ms`, woken by appends to any partition it asked for (never by polling).
//!
//! A follower (replica id set) reads up to the log end instead of the high watermark; its
//! fetch offset tells the leader what its log holds ([`crate::replication`]). When the
//! epoch of the follower's last batch ends earlier on the leader than where the follower
//! fetches, the answer carries the diverging epoch and its end offset instead of records,
//! and the follower truncates (KIP-595's `DivergingEpoch`, Fetch v12+).
//!
//! A partition led elsewhere gets NOT_LEADER_OR_FOLLOWER with, from v12, the current leader
//! (the `CurrentLeader` tagged field) and, from v16, the leaders' endpoints (`NodeEndpoints`),
//! as KIP-951 has it, so the client can move without a metadata round trip.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::future::select_all;
use kafka_protocol::messages::fetch_request::FetchPartition;
use kafka_protocol::messages::FetchRequest;
use kafka_protocol::ResponseError;
use strom_metadata::image::BrokerImage;
use strom_protocol::wire;
use strom_storage::{AbortedTxn, FileSlice, ReadBound};
use tokio::time::Instant;
use uuid::Uuid;

use super::{Ctx, Outcome};
use crate::response::{put_header, Part, Response};
use crate::topics::Partition;
use crate::Broker;

/// Upper bound on `max_wait_ms` honoured, whatever the client asks (Kafka caps it through
/// the request timeout on the client side; a bound here keeps a bad client from parking
/// a connection forever).
const FETCH_MAX_WAIT_MS_MAX: i32 = 5 * 60 * 1000;
const READ_COMMITTED: i8 = 1;

/// Who reads, which decides how far: a follower replicates to the log end, a consumer
/// reads below the high watermark, a read_committed consumer below the last stable offset
/// (and gets the aborted transactions of what it reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reader {
    Follower,
    Consumer,
    CommittedConsumer,
}

impl Reader {
    /// How far the log is read for this reader.
    fn bound(self) -> ReadBound {
        match self {
            Reader::Follower => ReadBound::LogEnd,
            Reader::Consumer => ReadBound::HighWatermark,
            Reader::CommittedConsumer => ReadBound::LastStable,
        }
    }
}

/// A requested topic, resolved.
struct TopicRequest {
    name: String,
    topic_id: Uuid,
    partitions: Vec<PartitionRequest>,
}

struct PartitionRequest {
    index: i32,
    fetch: FetchPartition,
    target: Result<Arc<Partition>, i16>,
    /// The partition's leader and leader epoch as this broker knows them (-1 when unknown).
    leader: (i32, i32),
    reader: Reader,
    /// The follower's log diverges from ours: (epoch, end offset) to truncate to.
    diverging: Option<(i32, i64)>,
}

/// What one partition contributes to the response.
pub(crate) struct PartitionRead {
    index: i32,
    pub(crate) error_code: i16,
    /// Sent as CurrentLeader (v12+) when the client must go elsewhere.
    current_leader: Option<(i32, i32)>,
    /// Sent as DivergingEpoch (v12+) to a follower that must truncate.
    pub(crate) diverging: Option<(i32, i64)>,
    pub(crate) high_watermark: i64,
    pub(crate) last_stable_offset: i64,
    pub(crate) log_start_offset: i64,
    /// For read_committed consumers: the aborted transactions in what they read.
    aborted: Vec<AbortedTxn>,
    pub(crate) slice: Option<FileSlice>,
}

pub async fn handle(broker: &Broker, req: FetchRequest, ctx: &Ctx) -> Outcome {
    let version = ctx.version;
    if version >= 7 && req.session_id != 0 {
        // Strom creates no fetch sessions (session id 0 in every answer), so any session id
        // a client sends is unknown; it falls back to full fetches.
        return encode(
            ctx,
            ResponseError::FetchSessionIdNotFound.code(),
            &[],
            &[],
            &[],
            req.isolation_level,
            0,
        );
    }
    let replica_id = if version >= 15 {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    };
    let topics = resolve(broker, &req, version, replica_id);
    let mut max_bytes = if version >= 3 {
        req.max_bytes.max(0) as usize
    } else {
        usize::MAX
    };
    // A consumer's fetches count against its quota (when any quota is set); brokers' own
    // fetches never do.
    let quotas = (replica_id < 0)
        .then(|| broker.topics.image())
        .filter(|published| !published.image.client_quotas.is_empty());
    let limits = quotas
        .as_ref()
        .map(|published| &published.image.client_quotas);
    if let Some(limits) = limits {
        // A fetch larger than the consumer's quota allows in its window would always be
        // throttled and answered empty: cap it, as Kafka does.
        let kind = crate::quotas::QuotaKind::Fetch;
        if let Some(window_max) = broker
            .quotas
            .max_value_in_window(limits, kind, &ctx.client_id)
        {
            max_bytes = max_bytes.min(window_max as usize);
        }
    }
    let min_bytes = (req.min_bytes.max(0) as usize).min(max_bytes);
    let wait = Duration::from_millis(req.max_wait_ms.clamp(0, FETCH_MAX_WAIT_MS_MAX) as u64);
    let deadline = Instant::now() + wait;
    let mut shutdown = broker.shutdown.clone();
    let waitable: Vec<Arc<Partition>> = topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .filter_map(|p| p.target.as_ref().ok().cloned())
        })
        .collect();
    loop {
        // Register for wake-ups before reading, so an append between the read and the wait
        // is not missed.
        let mut notified: Vec<_> = waitable
            .iter()
            .map(|p| Box::pin(p.appended.notified()))
            .collect();
        for n in &mut notified {
            Pin::as_mut(n).enable();
        }
        let reads = read_all(&topics, max_bytes);
        let bytes: usize = reads
            .iter()
            .flatten()
            .map(|r| r.slice.as_ref().map_or(0, |s| s.len))
            .sum();
        let has_error = reads.iter().flatten().any(|r| r.error_code != 0);
        let now = Instant::now();
        if bytes >= min_bytes
            || has_error
            || now >= deadline
            || notified.is_empty()
            || *shutdown.borrow()
        {
            if let Some(limits) = limits {
                let throttle_ms = record_fetch_quota(broker, ctx, limits, bytes);
                if throttle_ms > 0 {
                    // Kafka answers a throttled fetch with no data (and takes its bytes
                    // back off the client's usage), then mutes the connection.
                    return encode(ctx, 0, &[], &[], &[], req.isolation_level, throttle_ms);
                }
            }
            let endpoints = leader_endpoints(broker, &reads);
            return encode(ctx, 0, &topics, &reads, &endpoints, req.isolation_level, 0);
        }
        tokio::select! {
            _ = select_all(notified) => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.changed() => {}
        }
    }
}

fn resolve(
    broker: &Broker,
    req: &FetchRequest,
    version: i16,
    replica_id: i32,
) -> Vec<TopicRequest> {
    let now = crate::topics::now_ms();
    req.topics
        .iter()
        .map(|t| {
            let topic = if version >= 13 {
                broker.topics.get_by_id(&t.topic_id)
            } else {
                broker.topics.get(&t.topic)
            };
            let unknown = if version >= 13 {
                ResponseError::UnknownTopicId.code()
            } else {
                ResponseError::UnknownTopicOrPartition.code()
            };
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let target = match &topic {
                        None => Err(unknown),
                        Some(topic) => topic
                            .led(p.partition)
                            .cloned()
                            .and_then(|partition| {
                                check_epoch(&partition, p.current_leader_epoch).map(|()| partition)
                            })
                            .and_then(|partition| {
                                // Only a follower of this partition reads past the high
                                // watermark, as Kafka refuses other replica ids.
                                if replica_id >= 0 && !partition.has_follower(replica_id) {
                                    Err(ResponseError::NotLeaderOrFollower.code())
                                } else {
                                    Ok(partition)
                                }
                            }),
                    };
                    let diverging = match (&target, &topic) {
                        (Ok(partition), Some(topic)) if replica_id >= 0 => follower_fetch(
                            &broker.isr_changes,
                            topic.id,
                            partition,
                            replica_id,
                            p,
                            version,
                            now,
                        ),
                        _ => None,
                    };
                    PartitionRequest {
                        index: p.partition,
                        fetch: p.clone(),
                        target,
                        leader: topic
                            .as_ref()
                            .map_or((-1, -1), |t| t.leader_of(p.partition)),
                        reader: match (replica_id >= 0, req.isolation_level) {
                            (true, _) => Reader::Follower,
                            (false, READ_COMMITTED) => Reader::CommittedConsumer,
                            (false, _) => Reader::Consumer,
                        },
                        diverging,
                    }
                })
                .collect();
            TopicRequest {
                name: t.topic.to_string(),
                topic_id: t.topic_id,
                partitions,
            }
        })
        .collect()
}

/// A follower's fetch: whether its log diverges from ours (the epoch and end offset it must
/// truncate to, Kafka's `validateFetchOffsetAndMaybeGetDivergingEpoch`); if not, its fetch
/// offset is its log end, which may move the high watermark or let it join the ISR.
pub(crate) fn follower_fetch(
    isr_changes: &tokio::sync::mpsc::Sender<crate::replication::IsrChange>,
    topic_id: Uuid,
    partition: &Arc<Partition>,
    replica_id: i32,
    p: &FetchPartition,
    version: i16,
    now_ms: i64,
) -> Option<(i32, i64)> {
    if version >= 12 && p.last_fetched_epoch >= 0 {
        let (epoch, end_offset) = end_offset_for_epoch(partition, p.last_fetched_epoch);
        if epoch < p.last_fetched_epoch || end_offset < p.fetch_offset {
            return Some((epoch, end_offset));
        }
    }
    if p.fetch_offset <= partition.log.offsets().log_end_offset {
        if let Some(change) = partition.follower_fetched(
            topic_id,
            replica_id,
            p.fetch_offset,
            p.log_start_offset,
            now_ms,
        ) {
            crate::replication::request_isr_change(isr_changes, change);
        }
    }
    None
}

/// Where `requested_epoch` ends in the leader's log. Kafka's leader writes its own epoch at
/// its log end when elected, so an epoch newer than every epoch in the log (the leader has
/// not appended in its epoch yet) ends at the log end, in the latest earlier epoch; the log's
/// own answer would be undefined, which the follower reads as "no divergence", keeping
/// records this log lacks and never getting in sync. Under the replica lock, so that no
/// leader append moves the log between the two reads.
pub(crate) fn end_offset_for_epoch(partition: &Partition, requested_epoch: i32) -> (i32, i64) {
    let _replica = partition.replica.lock();
    let log = &partition.log;
    match log.end_offset_for_epoch(requested_epoch) {
        (-1, _) => (
            log.latest_epoch().unwrap_or(requested_epoch),
            log.offsets().log_end_offset,
        ),
        known => known,
    }
}

/// KIP-320: a client that knows a newer epoch than ours sees UNKNOWN_LEADER_EPOCH, one that
/// knows an older epoch is FENCED_LEADER_EPOCH.
pub(crate) fn check_epoch(partition: &Partition, current_leader_epoch: i32) -> Result<(), i16> {
    match current_leader_epoch {
        -1 => Ok(()),
        e if e > partition.leader_epoch() => Err(ResponseError::UnknownLeaderEpoch.code()),
        e if e < partition.leader_epoch() => Err(ResponseError::FencedLeaderEpoch.code()),
        _ => Ok(()),
    }
}

/// Reads every partition, within the response's `max_bytes`; the first partition with data
/// may exceed the limits by one batch (KIP-74).
fn read_all(topics: &[TopicRequest], max_bytes: usize) -> Vec<Vec<PartitionRead>> {
    let mut remaining = max_bytes;
    let mut min_one_batch = true;
    topics
        .iter()
        .map(|t| {
            t.partitions
                .iter()
                .map(|p| {
                    let partition = match &p.target {
                        Ok(partition) => partition,
                        Err(code) => {
                            let mut read = empty(p.index, *code);
                            let redirect = *code == ResponseError::NotLeaderOrFollower.code()
                                || *code == ResponseError::FencedLeaderEpoch.code();
                            if redirect && p.leader.0 >= 0 {
                                read.current_leader = Some(p.leader);
                            }
                            return read;
                        }
                    };
                    let limit = (p.fetch.partition_max_bytes.max(0) as usize).min(remaining);
                    let read = read_partition(
                        partition,
                        p.index,
                        &p.fetch,
                        p.reader,
                        p.diverging,
                        limit,
                        min_one_batch,
                    );
                    if let Some(slice) = &read.slice {
                        remaining = remaining.saturating_sub(slice.len);
                        min_one_batch = false;
                    }
                    read
                })
                .collect()
        })
        .collect()
}

/// One led partition's part of the answer: for a follower whose log diverges, the epoch
/// and end offset to truncate to; else the records from the fetch offset (up to the log end
/// for a follower, the high watermark for a consumer, the last stable offset for a
/// read_committed one), at most `max_bytes` (or one batch when `min_one_batch`), or the
/// read's error.
pub(crate) fn read_partition(
    partition: &Partition,
    index: i32,
    fetch: &FetchPartition,
    reader: Reader,
    diverging: Option<(i32, i64)>,
    max_bytes: usize,
    min_one_batch: bool,
) -> PartitionRead {
    if let Some(diverging) = diverging {
        let offsets = partition.log.offsets();
        return PartitionRead {
            diverging: Some(diverging),
            high_watermark: offsets.high_watermark,
            last_stable_offset: offsets.last_stable_offset,
            log_start_offset: offsets.log_start_offset,
            ..empty(index, 0)
        };
    }
    let log = &partition.log;
    let (offset, bytes, one) = (fetch.fetch_offset, max_bytes, min_one_batch);
    let read = log.read_up_to(offset, bytes, one, reader.bound());
    match read {
        Ok(read) => {
            let aborted = if reader == Reader::CommittedConsumer && read.slice.is_some() {
                log.aborted_transactions(offset, read.offsets.last_stable_offset)
            } else {
                Vec::new()
            };
            PartitionRead {
                index,
                error_code: 0,
                current_leader: None,
                diverging: None,
                high_watermark: read.offsets.high_watermark,
                last_stable_offset: read.offsets.last_stable_offset,
                log_start_offset: read.offsets.log_start_offset,
                aborted,
                slice: read.slice,
            }
        }
        Err(e) => {
            let offsets = log.offsets();
            PartitionRead {
                high_watermark: offsets.high_watermark,
                last_stable_offset: offsets.last_stable_offset,
                log_start_offset: offsets.log_start_offset,
                ..empty(index, e.error_code())
            }
        }
    }
}

/// The endpoints of the leaders the response points clients to.
fn leader_endpoints(broker: &Broker, reads: &[Vec<PartitionRead>]) -> Vec<BrokerImage> {
    let leaders: std::collections::BTreeSet<i32> = reads
        .iter()
        .flatten()
        .filter_map(|r| r.current_leader.map(|(id, _)| id))
        .collect();
    if leaders.is_empty() {
        return Vec::new();
    }
    let image = broker.topics.image();
    leaders
        .iter()
        .filter_map(|id| image.image.brokers.get(id).cloned())
        .collect()
}

fn empty(index: i32, error_code: i16) -> PartitionRead {
    PartitionRead {
        index,
        error_code,
        current_leader: None,
        diverging: None,
        high_watermark: -1,
        last_stable_offset: -1,
        log_start_offset: -1,
        aborted: Vec::new(),
        slice: None,
    }
}

/// A partition's tagged fields: DivergingEpoch (tag 0: epoch, end offset) and CurrentLeader
/// (tag 1: leader id, leader epoch), each a struct with no tagged fields of its own.
fn put_partition_tags(buf: &mut BytesMut, read: &PartitionRead) {
    let count = u32::from(read.diverging.is_some()) + u32::from(read.current_leader.is_some());
    wire::put_unsigned_varint(buf, count);
    if let Some((epoch, end_offset)) = read.diverging {
        wire::put_unsigned_varint(buf, 0);
        wire::put_unsigned_varint(buf, 13);
        buf.put_i32(epoch);
        buf.put_i64(end_offset);
        wire::put_unsigned_varint(buf, 0);
    }
    if let Some((leader_id, leader_epoch)) = read.current_leader {
        wire::put_unsigned_varint(buf, 1);
        wire::put_unsigned_varint(buf, 9);
        buf.put_i32(leader_id);
        buf.put_i32(leader_epoch);
        wire::put_unsigned_varint(buf, 0);
    }
}

/// Records a consumer fetch's record bytes against its `consumer_byte_rate` quota; over the
/// limit, takes them back and returns the throttle time the connection then waits out.
fn record_fetch_quota(
    broker: &Broker,
    ctx: &Ctx,
    limits: &crate::quotas::QuotaLimits,
    bytes: usize,
) -> i32 {
    let throttle_ms = broker.quotas.record_unless_throttled(
        limits,
        crate::quotas::QuotaKind::Fetch,
        &ctx.client_id,
        bytes as f64,
        crate::topics::now_ms(),
    );
    ctx.throttle(throttle_ms);
    throttle_ms
}

/// Encodes the response (Fetch v4–v17) around the file slices.
fn encode(
    ctx: &Ctx,
    error_code: i16,
    topics: &[TopicRequest],
    reads: &[Vec<PartitionRead>],
    endpoints: &[BrokerImage],
    isolation_level: i8,
    throttle_ms: i32,
) -> Outcome {
    let version = ctx.version;
    let flexible = version >= 12;
    let mut parts: Vec<Part> = Vec::new();
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0); // size, patched below
    put_header(&mut buf, ctx.api_key, version, ctx.correlation_id);
    buf.put_i32(throttle_ms);
    if version >= 7 {
        buf.put_i16(error_code);
        buf.put_i32(0); // session_id: no session
    }
    wire::put_array_len(&mut buf, topics.len(), flexible);
    for (topic, partitions) in topics.iter().zip(reads) {
        if version >= 13 {
            buf.put_slice(topic.topic_id.as_bytes());
        } else {
            wire::put_string(&mut buf, &topic.name, flexible);
        }
        wire::put_array_len(&mut buf, partitions.len(), flexible);
        for read in partitions {
            buf.put_i32(read.index);
            buf.put_i16(read.error_code);
            buf.put_i64(read.high_watermark);
            buf.put_i64(read.last_stable_offset);
            if version >= 5 {
                buf.put_i64(read.log_start_offset);
            }
            let aborted = (isolation_level == READ_COMMITTED).then_some(read.aborted.len());
            wire::put_nullable_array_len(&mut buf, aborted, flexible);
            for aborted in &read.aborted {
                buf.put_i64(aborted.producer_id);
                buf.put_i64(aborted.first_offset);
                wire::put_empty_tagged_fields(&mut buf, flexible);
            }
            if version >= 11 {
                buf.put_i32(-1); // preferred_read_replica
            }
            let records_len = read.slice.as_ref().map_or(0, |s| s.len);
            wire::put_bytes_len(&mut buf, records_len, flexible);
            if let Some(slice) = &read.slice {
                parts.push(Part::Bytes(buf.split().freeze()));
                parts.push(Part::File(slice.clone()));
            }
            if flexible {
                put_partition_tags(&mut buf, read);
            }
        }
        wire::put_empty_tagged_fields(&mut buf, flexible);
    }
    if version >= 16 && !endpoints.is_empty() {
        // Tag 0, NodeEndpoints.
        let mut nodes = BytesMut::new();
        wire::put_array_len(&mut nodes, endpoints.len(), true);
        for e in endpoints {
            nodes.put_i32(e.id);
            wire::put_string(&mut nodes, &e.host, true);
            nodes.put_i32(i32::from(e.port));
            match &e.rack {
                Some(rack) => wire::put_string(&mut nodes, rack, true),
                None => wire::put_unsigned_varint(&mut nodes, 0),
            }
            wire::put_unsigned_varint(&mut nodes, 0);
        }
        wire::put_unsigned_varint(&mut buf, 1);
        wire::put_unsigned_varint(&mut buf, 0);
        wire::put_unsigned_varint(&mut buf, nodes.len() as u32);
        buf.put_slice(&nodes);
    } else {
        wire::put_empty_tagged_fields(&mut buf, flexible);
    }
    parts.push(Part::Bytes(buf.freeze()));
    let mut response = Response { parts };
    let size = response.len() - 4;
    let Ok(size) = i32::try_from(size) else {
        return Outcome::Close(format!("fetch response of {size} bytes is too large"));
    };
    if let Some(Part::Bytes(first)) = response.parts.first_mut() {
        let mut patched = BytesMut::from(&first[..]);
        patched[..4].copy_from_slice(&size.to_be_bytes());
        *first = patched.freeze();
    }
    Outcome::Respond(response)
}
