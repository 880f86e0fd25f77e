//! The KIP-848 consumer group APIs: ConsumerGroupHeartbeat (membership, subscription and
//! server-side assignment in one request) and ConsumerGroupDescribe.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment as DescribedAssignment, DescribedGroup, Member,
    TopicPartitions as DescribedTopicPartitions,
};
use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;
use strom_coordinator::consumer_group::{Assignment as Partitions, Heartbeat};
use uuid::Uuid;

use super::{Ctx, TOPIC_OPERATIONS};
use crate::Broker;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

pub fn consumer_heartbeat(
    broker: &Broker,
    req: ConsumerGroupHeartbeatRequest,
    ctx: &Ctx,
) -> ConsumerGroupHeartbeatResponse {
    let fail = |code: E, message: &str| {
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(code.code())
            .with_error_message(Some(s(message)))
            .with_member_epoch(-1)
    };
    if super::groups::check_coordinator(broker, &req.group_id).is_err() {
        return fail(E::NotCoordinator, "This is not the correct coordinator.");
    }
    if req
        .subscribed_topic_regex
        .as_ref()
        .is_some_and(|r| !r.is_empty())
    {
        return fail(
            E::InvalidRequest,
            "SubscribedTopicRegex is not supported yet; subscribe by topic names",
        );
    }
    if req.member_epoch == 0 && req.rebalance_timeout_ms < 0 {
        return fail(
            E::InvalidRequest,
            "RebalanceTimeoutMs must be provided in first request.",
        );
    }
    let owned = req.topic_partitions.map(|tps| {
        tps.into_iter()
            .map(|tp| {
                (
                    tp.topic_id,
                    tp.partitions.into_iter().collect::<BTreeSet<i32>>(),
                )
            })
            .collect::<Partitions>()
    });
    let hb = Heartbeat {
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.map(|i| i.to_string()),
        rack_id: req.rack_id.map(|r| r.to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        subscribed_topic_names: req
            .subscribed_topic_names
            .map(|names| names.into_iter().map(|n| n.to_string()).collect()),
        server_assignor: req.server_assignor.map(|a| a.to_string()),
        owned,
        client_id: ctx.client_id.clone(),
        client_host: ctx.client_host.clone(),
    };
    let r = broker
        .groups
        .consumer_heartbeat(&req.group_id, hb, &*broker.topics);
    if r.error_code != 0 {
        return ConsumerGroupHeartbeatResponse::default()
            .with_error_code(r.error_code)
            .with_error_message(r.error_message.as_deref().map(s))
            .with_member_epoch(-1);
    }
    let assignment = r.assignment.map(|a| {
        Assignment::default().with_topic_partitions(
            a.into_iter()
                .map(|(topic_id, ps)| {
                    TopicPartitions::default()
                        .with_topic_id(topic_id)
                        .with_partitions(ps.into_iter().collect())
                })
                .collect(),
        )
    });
    ConsumerGroupHeartbeatResponse::default()
        .with_member_id(Some(s(&r.member_id)))
        .with_member_epoch(r.member_epoch)
        .with_heartbeat_interval_ms(broker.groups.config().consumer_heartbeat_interval_ms)
        .with_assignment(assignment)
}

fn described(broker: &Broker, a: &Partitions) -> DescribedAssignment {
    let names: BTreeMap<Uuid, String> = broker
        .topics
        .all()
        .iter()
        .map(|t| (t.id, t.name.clone()))
        .collect();
    DescribedAssignment::default().with_topic_partitions(
        a.iter()
            .map(|(id, ps)| {
                DescribedTopicPartitions::default()
                    .with_topic_id(*id)
                    .with_topic_name(TopicName(s(names
                        .get(id)
                        .map(String::as_str)
                        .unwrap_or(""))))
                    .with_partitions(ps.iter().copied().collect())
            })
            .collect(),
    )
}

pub fn consumer_describe(
    broker: &Broker,
    req: ConsumerGroupDescribeRequest,
    ctx: &Ctx,
) -> ConsumerGroupDescribeResponse {
    let groups = req
        .group_ids
        .into_iter()
        .map(|group_id| {
            let Some(snapshot) = broker.groups.describe_consumer_group(&group_id) else {
                return DescribedGroup::default()
                    .with_group_id(group_id.clone())
                    .with_error_code(E::GroupIdNotFound.code())
                    .with_error_message(Some(s(&format!(
                        "Group {} not found.",
                        group_id.as_str()
                    ))));
            };
            let members = snapshot
                .members
                .iter()
                .map(|(m, target)| {
                    let mut member = Member::default()
                        .with_member_id(s(&m.id))
                        .with_instance_id(m.instance_id.as_deref().map(s))
                        .with_rack_id(m.rack_id.as_deref().map(s))
                        .with_member_epoch(m.epoch)
                        .with_client_id(s(&m.client_id))
                        .with_client_host(s(&m.client_host))
                        .with_subscribed_topic_names(
                            m.subscribed.iter().map(|t| TopicName(s(t))).collect(),
                        )
                        .with_assignment(described(broker, &m.assigned))
                        .with_target_assignment(described(broker, target));
                    if ctx.version >= 1 {
                        member.member_type = 1; // consumer protocol
                    }
                    member
                })
                .collect();
            let mut g = DescribedGroup::default()
                .with_group_id(group_id)
                .with_group_state(s(snapshot.state))
                .with_group_epoch(snapshot.epoch)
                .with_assignment_epoch(snapshot.assignment_epoch)
                .with_assignor_name(s(&snapshot.assignor))
                .with_members(members);
            if req.include_authorized_operations {
                g.authorized_operations = TOPIC_OPERATIONS;
            }
            g
        })
        .collect();
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}
