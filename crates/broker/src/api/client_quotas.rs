//! DescribeClientQuotas (v0–1) and AlterClientQuotas (v0–1): client quotas by entity
//! (`user`, `client-id`, `ip`; a null name is the type's default), kept in the metadata log
//! (`ClientQuota` records) so that every broker enforces the same limits
//! ([`crate::quotas`]).
//!
//! DescribeClientQuotas is answered from this broker's metadata image, filtered as Kafka
//! filters it: per component, an exact name (match type 0), the default (1) or any named
//! entity (2); `strict` excludes entities with other types besides. AlterClientQuotas goes
//! to the active controller ([`strom_controller::quotas`]), which checks keys and values;
//! the answer waits until this broker has applied the change.

use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
use kafka_protocol::messages::{
    alter_client_quotas_response, describe_client_quotas_response, AlterClientQuotasRequest,
    AlterClientQuotasResponse, DescribeClientQuotasRequest, DescribeClientQuotasResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use strom_controller::quotas::{QuotaAlteration, QuotaResult, CLIENT_ID, IP, USER};
use strom_controller::service::{ControllerRequest, ControllerResponse};
use strom_metadata::records::QuotaEntity;

use crate::Broker;

const MATCH_EXACT: i8 = 0;
const MATCH_DEFAULT: i8 = 1;
const MATCH_SPECIFIED: i8 = 2;

/// Most entries one AlterClientQuotas may carry, and ops per entry: far more than a legal
/// request needs (an entity has at most five keys), so a hostile one is refused early.
const ALTERATIONS_MAX: usize = 10_000;
const OPS_PER_ENTRY_MAX: usize = 64;

pub fn describe(broker: &Broker, req: DescribeClientQuotasRequest) -> DescribeClientQuotasResponse {
    if let Err(message) = check_filter(&req.components) {
        return DescribeClientQuotasResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_error_message(Some(StrBytes::from_string(message)))
            .with_entries(None);
    }
    let image = broker.topics.image();
    let entries = image
        .image
        .client_quotas
        .iter()
        .filter(|(entity, _)| matches(entity, &req.components, req.strict))
        .map(|(entity, values)| {
            describe_client_quotas_response::EntryData::default()
                .with_entity(
                    entity
                        .iter()
                        .map(|(entity_type, name)| {
                            describe_client_quotas_response::EntityData::default()
                                .with_entity_type(StrBytes::from_string(entity_type.clone()))
                                .with_entity_name(name.clone().map(StrBytes::from_string))
                        })
                        .collect(),
                )
                .with_values(
                    values
                        .iter()
                        .map(|(key, value)| {
                            describe_client_quotas_response::ValueData::default()
                                .with_key(StrBytes::from_string(key.clone()))
                                .with_value(value.get())
                        })
                        .collect(),
                )
        })
        .collect();
    DescribeClientQuotasResponse::default().with_entries(Some(entries))
}

/// Kafka's checks of a filter: known entity types, each once, `ip` alone, and a match
/// string exactly when the match type wants one.
fn check_filter(components: &[ComponentData]) -> Result<(), String> {
    let mut types: Vec<&str> = Vec::with_capacity(components.len());
    for c in components {
        let entity_type = c.entity_type.as_str();
        if ![USER, CLIENT_ID, IP].contains(&entity_type) {
            return Err(format!("Custom entity type {entity_type} not supported"));
        }
        if types.contains(&entity_type) {
            return Err(format!(
                "Duplicate filter component entity type {entity_type}"
            ));
        }
        types.push(entity_type);
        match (c.match_type, c._match.is_some()) {
            (MATCH_EXACT, false) => {
                return Err("Request specified MATCH_EXACT, but set match string to null".into())
            }
            (MATCH_DEFAULT | MATCH_SPECIFIED, true) => {
                return Err(format!(
                    "Request specified match type {}, but also specified a match string",
                    c.match_type
                ))
            }
            (MATCH_EXACT | MATCH_DEFAULT | MATCH_SPECIFIED, _) => {}
            (other, _) => return Err(format!("Unknown match type {other}")),
        }
    }
    if types.contains(&IP) && types.len() > 1 {
        return Err("Invalid entity filter component combination, IP filter component should not be used with user or clientId filter component.".into());
    }
    Ok(())
}

fn matches(entity: &QuotaEntity, components: &[ComponentData], strict: bool) -> bool {
    if strict && entity.len() != components.len() {
        return false;
    }
    components.iter().all(|c| {
        let Some((_, name)) = entity.iter().find(|(t, _)| t == c.entity_type.as_str()) else {
            return false;
        };
        match c.match_type {
            MATCH_EXACT => name.as_deref() == c._match.as_deref(),
            MATCH_DEFAULT => name.is_none(),
            _ => name.is_some(),
        }
    })
}

pub async fn alter(broker: &Broker, req: AlterClientQuotasRequest) -> AlterClientQuotasResponse {
    let results = if req.entries.len() > ALTERATIONS_MAX {
        let message = format!("at most {ALTERATIONS_MAX} entries per request");
        vec![(ResponseError::InvalidRequest.code(), Some(message)); req.entries.len()]
    } else {
        let checked: Vec<Result<QuotaAlteration, String>> =
            req.entries.iter().map(alteration).collect();
        let valid: Vec<QuotaAlteration> = checked.iter().flatten().cloned().collect();
        let mut forwarded = forward(broker, valid, req.validate_only).await.into_iter();
        checked
            .into_iter()
            .map(|c| match c {
                Ok(_) => forwarded.next().unwrap_or((
                    ResponseError::UnknownServerError.code(),
                    Some("no controller answer".into()),
                )),
                Err(message) => (ResponseError::InvalidRequest.code(), Some(message)),
            })
            .collect()
    };
    let entries = req
        .entries
        .iter()
        .zip(results)
        .map(|(entry, (code, message))| {
            alter_client_quotas_response::EntryData::default()
                .with_error_code(code)
                .with_error_message(message.map(StrBytes::from_string))
                .with_entity(
                    entry
                        .entity
                        .iter()
                        .map(|e| {
                            alter_client_quotas_response::EntityData::default()
                                .with_entity_type(e.entity_type.clone())
                                .with_entity_name(e.entity_name.clone())
                        })
                        .collect(),
                )
        })
        .collect();
    AlterClientQuotasResponse::default().with_entries(entries)
}

/// What the broker checks before the controller: a bounded number of ops with finite
/// values (the controller checks keys and entity types).
fn alteration(
    entry: &kafka_protocol::messages::alter_client_quotas_request::EntryData,
) -> Result<QuotaAlteration, String> {
    if entry.ops.len() > OPS_PER_ENTRY_MAX {
        return Err(format!("at most {OPS_PER_ENTRY_MAX} ops per entity"));
    }
    let mut ops = Vec::with_capacity(entry.ops.len());
    for op in &entry.ops {
        if !op.remove && !op.value.is_finite() {
            return Err(format!(
                "Invalid value {} for {}",
                op.value,
                op.key.as_str()
            ));
        }
        ops.push((op.key.to_string(), (!op.remove).then_some(op.value)));
    }
    Ok(QuotaAlteration {
        entity: entry
            .entity
            .iter()
            .map(|e| {
                (
                    e.entity_type.to_string(),
                    e.entity_name.as_ref().map(|n| n.to_string()),
                )
            })
            .collect(),
        ops,
    })
}

/// Sends the alterations to the active controller; waits until this broker has applied
/// what it committed.
async fn forward(
    broker: &Broker,
    alterations: Vec<QuotaAlteration>,
    validate_only: bool,
) -> Vec<QuotaResult> {
    if alterations.is_empty() {
        return Vec::new();
    }
    let count = alterations.len();
    let request = ControllerRequest::AlterClientQuotas {
        alterations,
        validate_only,
    };
    crate::cluster::forward_items(broker, request, count, |response| match response {
        ControllerResponse::QuotasAltered { results, index } => Some((results, *index)),
        _ => None,
    })
    .await
}
