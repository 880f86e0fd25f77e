//! The classic consumer group APIs: JoinGroup, SyncGroup, Heartbeat, LeaveGroup (the
//! membership protocol) and ListGroups, DescribeGroups, DeleteGroups (administration). The
//! state machine lives in `strom_coordinator`; this module converts requests and responses.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;
use strom_coordinator::{GroupState, JoinRequest};

use super::{Ctx, TOPIC_OPERATIONS};
use crate::Broker;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// NOT_COORDINATOR unless this broker leads the group's `__consumer_offsets` partition, so
/// that the client asks FindCoordinator again.
pub fn check_coordinator(broker: &Broker, group_id: &str) -> Result<(), i16> {
    broker
        .offsets_loader
        .check_coordinator(&broker.topics, broker.groups.partition_for(group_id))
}

pub async fn join(broker: &Broker, req: JoinGroupRequest, ctx: &Ctx) -> JoinGroupResponse {
    let version = ctx.version;
    if let Err(code) = check_coordinator(broker, &req.group_id) {
        let mut response = JoinGroupResponse::default()
            .with_error_code(code)
            .with_generation_id(-1);
        if version < 7 {
            response.protocol_name = Some(s(""));
        }
        return response;
    }
    let join = JoinRequest {
        group_id: req.group_id.to_string(),
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.as_ref().map(|i| i.to_string()),
        client_id: ctx.client_id.clone(),
        client_host: ctx.client_host.clone(),
        session_timeout_ms: req.session_timeout_ms,
        // v0 has no rebalance timeout: it is the session timeout.
        rebalance_timeout_ms: if version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let r = broker.groups.join(join).await;
    let members = r
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let mut m = JoinGroupResponseMember::default()
                .with_member_id(s(&id))
                .with_metadata(metadata);
            if version >= 5 {
                m.group_instance_id = instance.map(|i| s(&i));
            }
            m
        })
        .collect();
    let mut response = JoinGroupResponse::default()
        .with_error_code(r.error_code)
        .with_generation_id(r.generation_id)
        .with_leader(s(&r.leader))
        .with_member_id(s(&r.member_id))
        .with_members(members);
    if version >= 7 {
        response.protocol_type = r.protocol_type.map(|p| s(&p));
        response.protocol_name = r.protocol_name.map(|p| s(&p));
    } else {
        response.protocol_name = Some(s(&r.protocol_name.unwrap_or_default()));
    }
    response
}

pub async fn sync(broker: &Broker, req: SyncGroupRequest, ctx: &Ctx) -> SyncGroupResponse {
    if let Err(code) = check_coordinator(broker, &req.group_id) {
        return SyncGroupResponse::default().with_error_code(code);
    }
    let assignments = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let protocol_type = req.protocol_type.as_ref().map(|p| p.to_string());
    let protocol_name = req.protocol_name.as_ref().map(|p| p.to_string());
    let r = broker
        .groups
        .sync(
            &req.group_id,
            req.generation_id,
            &req.member_id,
            protocol_type.as_deref(),
            protocol_name.as_deref(),
            assignments,
        )
        .await;
    let mut response = SyncGroupResponse::default()
        .with_error_code(r.error_code)
        .with_assignment(r.assignment);
    if ctx.version >= 5 {
        response.protocol_type = r.protocol_type.map(|p| s(&p));
        response.protocol_name = r.protocol_name.map(|p| s(&p));
    }
    response
}

pub fn heartbeat(broker: &Broker, req: HeartbeatRequest) -> HeartbeatResponse {
    if let Err(code) = check_coordinator(broker, &req.group_id) {
        return HeartbeatResponse::default().with_error_code(code);
    }
    let instance = req.group_instance_id.as_ref().map(|i| i.to_string());
    let code = broker.groups.heartbeat(
        &req.group_id,
        req.generation_id,
        &req.member_id,
        instance.as_deref(),
    );
    HeartbeatResponse::default().with_error_code(code)
}

pub fn leave(broker: &Broker, req: LeaveGroupRequest, ctx: &Ctx) -> LeaveGroupResponse {
    if let Err(code) = check_coordinator(broker, &req.group_id) {
        return LeaveGroupResponse::default().with_error_code(code);
    }
    let members: Vec<(String, Option<String>)> = if ctx.version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    match broker.groups.leave(&req.group_id, &members) {
        Err(code) => LeaveGroupResponse::default().with_error_code(code),
        Ok(codes) if ctx.version < 3 => LeaveGroupResponse::default().with_error_code(codes[0]),
        Ok(codes) => {
            let results = members
                .iter()
                .zip(codes)
                .map(|((id, instance), code)| {
                    MemberResponse::default()
                        .with_member_id(s(id))
                        .with_group_instance_id(instance.as_ref().map(|i| s(i)))
                        .with_error_code(code)
                })
                .collect();
            LeaveGroupResponse::default().with_members(results)
        }
    }
}

pub fn list(broker: &Broker, req: ListGroupsRequest, ctx: &Ctx) -> ListGroupsResponse {
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let types: Vec<String> = req.types_filter.iter().map(|s| s.to_lowercase()).collect();
    let groups = broker
        .groups
        .list_groups()
        .into_iter()
        .filter(|g| states.is_empty() || states.contains(&g.state.to_lowercase()))
        .filter(|g| types.is_empty() || types.iter().any(|t| t == g.group_type))
        .map(|g| {
            let mut listed = ListedGroup::default()
                .with_group_id(GroupId(s(&g.id)))
                .with_protocol_type(s(&g.protocol_type));
            if ctx.version >= 4 {
                listed.group_state = s(g.state);
            }
            if ctx.version >= 5 {
                listed.group_type = s(g.group_type);
            }
            listed
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub fn describe(broker: &Broker, req: DescribeGroupsRequest, ctx: &Ctx) -> DescribeGroupsResponse {
    let groups = req
        .groups
        .into_iter()
        .map(|group_id| {
            if let Err(code) = check_coordinator(broker, &group_id) {
                return DescribedGroup::default()
                    .with_group_id(group_id)
                    .with_error_code(code);
            }
            let Some(d) = broker.groups.describe(&group_id) else {
                // Kafka describes an unknown group as Dead; v6 says so with an error.
                let mut g = DescribedGroup::default()
                    .with_group_id(group_id.clone())
                    .with_group_state(s(GroupState::Dead.name()));
                if ctx.version >= 6 {
                    g.error_code = E::GroupIdNotFound.code();
                    g.error_message = Some(s(&format!("Group {} not found.", group_id.as_str())));
                }
                return g;
            };
            let members = d
                .members
                .into_iter()
                .map(|m| {
                    let mut member = DescribedGroupMember::default()
                        .with_member_id(s(&m.member_id))
                        .with_client_id(s(&m.client_id))
                        .with_client_host(s(&m.client_host))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment);
                    if ctx.version >= 4 {
                        member.group_instance_id = m.group_instance_id.map(|i| s(&i));
                    }
                    member
                })
                .collect();
            let mut g = DescribedGroup::default()
                .with_group_id(group_id)
                .with_group_state(s(d.state.name()))
                .with_protocol_type(s(&d.protocol_type))
                .with_protocol_data(s(&d.protocol))
                .with_members(members);
            if ctx.version >= 3 && req.include_authorized_operations {
                g.authorized_operations = TOPIC_OPERATIONS;
            }
            g
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub fn delete(broker: &Broker, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let results = req
        .groups_names
        .into_iter()
        .map(|group_id| {
            let code = match check_coordinator(broker, &group_id) {
                Ok(()) => broker.groups.delete_group(&group_id),
                Err(code) => code,
            };
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code)
        })
        .collect();
    DeleteGroupsResponse::default().with_results(results)
}
