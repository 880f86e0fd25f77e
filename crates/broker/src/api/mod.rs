//! One module per Kafka API: decode the request, apply it, encode the response.
//!
//! [`handle`] is called by the connection for each request in arrival order and finishes
//! before the next one starts (Kafka's per-connection ordering), so produce requests of one
//! connection are appended in the order they were sent.

mod alter_configs;
mod api_versions;
mod client_quotas;
mod consumer_groups;
mod create_partitions;
mod create_topics;
mod delete_records;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod describe_log_dirs;
mod describe_producers;
mod describe_quorum;
mod describe_topic_partitions;
mod elect_leaders;
pub(crate) mod fetch;
mod find_coordinator;
mod groups;
mod init_producer_id;
mod list_config_resources;
mod list_offsets;
mod metadata;
mod offset_for_leader_epoch;
mod offsets;
mod produce;
mod reassignments;
pub(crate) mod txn;
pub mod write_txn_markers;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

use std::sync::atomic::{AtomicI32, Ordering};

use crate::response::{self, Response};
use crate::Broker;

pub use api_versions::unsupported_version_response;

/// What the connection does after a request.
#[derive(Debug)]
pub enum Outcome {
    Respond(Response),
    /// acks=0 produce: nothing is sent back.
    NoResponse,
    /// Close the connection, logging the reason once.
    Close(String),
}

/// A served request: what the connection does next, and how long it then waits because a
/// byte-rate quota was exceeded ([`crate::quotas`]; 0 when none was).
#[derive(Debug)]
pub struct Handled {
    pub outcome: Outcome,
    pub throttle_ms: i32,
}

/// Decodes and serves one request whose header was already checked as served.
pub async fn handle(
    broker: &Broker,
    api_key: ApiKey,
    header: RequestHeader,
    mut body: Bytes,
    peer: std::net::SocketAddr,
) -> Handled {
    let version = header.request_api_version;
    let request = match RequestKind::decode(api_key, &mut body, version) {
        Ok(request) => request,
        Err(e) => {
            return Handled {
                outcome: Outcome::Close(format!(
                    "{api_key:?} v{version} body does not decode: {e}"
                )),
                throttle_ms: 0,
            }
        }
    };
    let ctx = Ctx {
        api_key,
        version,
        correlation_id: header.correlation_id,
        client_id: header.client_id.as_deref().unwrap_or_default().to_string(),
        client_host: format!("/{}", peer.ip()),
        throttle_ms: AtomicI32::new(0),
    };
    let outcome = match request {
        RequestKind::ApiVersions(req) => ctx.respond(&api_versions::handle(broker, &req, version)),
        RequestKind::Metadata(req) => ctx.respond(&metadata::handle(broker, req, version).await),
        RequestKind::Produce(req) => produce::handle(broker, req, &ctx).await,
        RequestKind::Fetch(req) => fetch::handle(broker, req, &ctx).await,
        RequestKind::ListOffsets(req) => ctx.respond(&list_offsets::handle(broker, req, version)),
        RequestKind::CreateTopics(req) => {
            ctx.respond(&create_topics::handle(broker, req, version).await)
        }
        RequestKind::DeleteRecords(req) => ctx.respond(&delete_records::handle(broker, req).await),
        RequestKind::ListConfigResources(req) => {
            ctx.respond(&list_config_resources::handle(broker, req, version))
        }
        RequestKind::DescribeClientQuotas(req) => {
            ctx.respond(&client_quotas::describe(broker, req))
        }
        RequestKind::AlterClientQuotas(req) => {
            ctx.respond(&client_quotas::alter(broker, req).await)
        }
        RequestKind::DeleteTopics(req) => {
            ctx.respond(&delete_topics::handle(broker, req, version).await)
        }
        RequestKind::CreatePartitions(req) => {
            ctx.respond(&create_partitions::handle(broker, req).await)
        }
        RequestKind::DescribeQuorum(req) => {
            ctx.respond(&describe_quorum::handle(broker, req, version).await)
        }
        RequestKind::AlterPartitionReassignments(req) => {
            ctx.respond(&reassignments::alter(broker, req, version).await)
        }
        RequestKind::ListPartitionReassignments(req) => {
            ctx.respond(&reassignments::list(broker, req))
        }
        RequestKind::OffsetForLeaderEpoch(req) => {
            ctx.respond(&offset_for_leader_epoch::handle(broker, req))
        }
        RequestKind::ElectLeaders(req) => {
            ctx.respond(&elect_leaders::handle(broker, req, version).await)
        }
        RequestKind::DescribeCluster(req) => {
            ctx.respond(&describe_cluster::handle(broker, &req, version))
        }
        RequestKind::JoinGroup(req) => ctx.respond(&groups::join(broker, req, &ctx).await),
        RequestKind::SyncGroup(req) => ctx.respond(&groups::sync(broker, req, &ctx).await),
        RequestKind::Heartbeat(req) => ctx.respond(&groups::heartbeat(broker, req)),
        RequestKind::LeaveGroup(req) => ctx.respond(&groups::leave(broker, req, &ctx)),
        RequestKind::ListGroups(req) => ctx.respond(&groups::list(broker, req, &ctx)),
        RequestKind::DescribeGroups(req) => ctx.respond(&groups::describe(broker, req, &ctx)),
        RequestKind::DeleteGroups(req) => ctx.respond(&groups::delete(broker, req)),
        RequestKind::OffsetCommit(req) => ctx.respond(&offsets::commit(broker, req, &ctx).await),
        RequestKind::OffsetFetch(req) => ctx.respond(&offsets::fetch(broker, req, &ctx)),
        RequestKind::OffsetDelete(req) => ctx.respond(&offsets::delete(broker, req)),
        RequestKind::WriteTxnMarkers(req) => {
            ctx.respond(&write_txn_markers::handle(broker, req).await)
        }
        RequestKind::TxnOffsetCommit(req) => {
            ctx.respond(&offsets::txn_commit(broker, req, &ctx).await)
        }
        RequestKind::ConsumerGroupHeartbeat(req) => {
            ctx.respond(&consumer_groups::consumer_heartbeat(broker, req, &ctx))
        }
        RequestKind::ConsumerGroupDescribe(req) => {
            ctx.respond(&consumer_groups::consumer_describe(broker, req, &ctx))
        }
        RequestKind::FindCoordinator(req) => {
            ctx.respond(&find_coordinator::handle(broker, req, version).await)
        }
        RequestKind::AddPartitionsToTxn(req) => {
            ctx.respond(&txn::add_partitions_to_txn(broker, req, &ctx).await)
        }
        RequestKind::AddOffsetsToTxn(req) => {
            ctx.respond(&txn::add_offsets_to_txn(broker, req, &ctx).await)
        }
        RequestKind::EndTxn(req) => ctx.respond(&txn::end_txn(broker, req, &ctx).await),
        RequestKind::DescribeTransactions(req) => {
            ctx.respond(&txn::describe_transactions(broker, req))
        }
        RequestKind::ListTransactions(req) => {
            ctx.respond(&txn::list_transactions(broker, req, &ctx))
        }
        RequestKind::DescribeConfigs(req) => {
            ctx.respond(&describe_configs::handle(broker, req, version))
        }
        RequestKind::DescribeLogDirs(req) => {
            ctx.respond(&describe_log_dirs::handle(broker, req, version))
        }
        RequestKind::DescribeTopicPartitions(req) => {
            ctx.respond(&describe_topic_partitions::handle(broker, req))
        }
        RequestKind::DescribeProducers(req) => {
            ctx.respond(&describe_producers::handle(broker, req))
        }
        RequestKind::InitProducerId(req) => {
            ctx.respond(&init_producer_id::handle(broker, req, &ctx).await)
        }
        RequestKind::AlterConfigs(req) => ctx.respond(&alter_configs::alter(broker, req).await),
        RequestKind::IncrementalAlterConfigs(req) => {
            ctx.respond(&alter_configs::incremental(broker, req).await)
        }
        other => Outcome::Close(format!(
            "{:?} is not served",
            std::mem::discriminant(&other)
        )),
    };
    Handled {
        outcome,
        throttle_ms: ctx.throttle_ms.load(Ordering::Relaxed),
    }
}

/// Request identity needed to answer it.
#[derive(Debug)]
pub struct Ctx {
    pub api_key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: String,
    /// The peer as Kafka shows it in DescribeGroups: `/ip`.
    pub client_host: String,
    /// How long the connection must wait before its next request because a byte-rate
    /// quota was exceeded ([`crate::quotas`]); the handler sets it, the connection mutes.
    throttle_ms: AtomicI32,
}

impl Ctx {
    /// Records a quota's throttle time; the longest of a request's throttles applies.
    pub fn throttle(&self, throttle_ms: i32) {
        self.throttle_ms.fetch_max(throttle_ms, Ordering::Relaxed);
    }

    fn respond<R: Encodable + HeaderVersion>(&self, body: &R) -> Outcome {
        match response::encode(self.api_key, self.version, self.correlation_id, body) {
            Ok(response) => Outcome::Respond(response),
            Err(e) => Outcome::Close(e.to_string()),
        }
    }
}

/// Decodes a request header of the given header version.
pub fn decode_header(
    body: &mut Bytes,
    api_key: ApiKey,
    api_version: i16,
) -> anyhow::Result<RequestHeader> {
    RequestHeader::decode(body, api_key.request_header_version(api_version))
}

/// Authorized-operations bitfields (Kafka's AclOperation codes) for a broker without an
/// authorizer, where everything is allowed. Topic: READ, WRITE, CREATE, DELETE, ALTER,
/// DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS.
pub const TOPIC_OPERATIONS: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// Cluster: CREATE, ALTER, DESCRIBE, CLUSTER_ACTION, DESCRIBE_CONFIGS, ALTER_CONFIGS,
/// IDEMPOTENT_WRITE.
pub const CLUSTER_OPERATIONS: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);
