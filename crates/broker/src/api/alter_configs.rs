//! AlterConfigs (v0–v2) and IncrementalAlterConfigs (v0–v1, KIP-339: SET, DELETE, APPEND,
//! SUBTRACT) for TOPIC resources and BROKER resources (the cluster default "" and this
//! broker's id), with `validate_only`.
//!
//! As in Kafka (`ConfigAdminManager`), the broker checks what needs no metadata — duplicate
//! resources and keys, null values, config names and values, which broker configs may change
//! at runtime — and resolves each operation against the config's schema; the active
//! controller checks that the resource exists, computes the new values and commits them as
//! `Config` records ([`strom_controller::configs`]). The answer waits until this broker has
//! applied the change, so a DescribeConfigs sent here next sees it. The legacy AlterConfigs
//! replaces the resource's whole set of overrides.

use std::collections::HashSet;

use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use strom_controller::configs::{ConfigChange, ConfigOp, ConfigResult};
use strom_controller::service::{ControllerRequest, ControllerResponse};
use strom_metadata::records::FIELD_LEN_MAX;
use tracing::warn;

use crate::dynamic_config::{self, BROKER_RESOURCE};
use crate::topic_config::{self, check_value, ConfigType};
use crate::topics::{validate_topic_name, TOPIC_RESOURCE};
use crate::Broker;

/// Most configs one resource of a request may name: more than every config there is, so a
/// legal request never reaches it, and a hostile one is refused before the controller.
const CONFIGS_PER_RESOURCE_MAX: usize = 1024;

/// Kafka's `AlterConfigOp.OpType` ids.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// One resource of either request: type, name, and (key, operation, value) per config.
struct Resource {
    resource_type: i8,
    name: String,
    configs: Vec<(String, i8, Option<String>)>,
}

type Failure = (ResponseError, String);

pub async fn alter(broker: &Broker, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let resources: Vec<Resource> = req
        .resources
        .iter()
        .map(|r| Resource {
            resource_type: r.resource_type,
            name: r.resource_name.to_string(),
            configs: r
                .configs
                .iter()
                .map(|c| {
                    (
                        c.name.to_string(),
                        OP_SET,
                        c.value.as_ref().map(|v| v.to_string()),
                    )
                })
                .collect(),
        })
        .collect();
    let results = apply(broker, &resources, true, req.validate_only).await;
    let responses = req
        .resources
        .iter()
        .zip(results)
        .map(|(r, (code, message))| {
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message.map(StrBytes::from_string))
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn incremental(
    broker: &Broker,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let resources: Vec<Resource> = req
        .resources
        .iter()
        .map(|r| Resource {
            resource_type: r.resource_type,
            name: r.resource_name.to_string(),
            configs: r
                .configs
                .iter()
                .map(|c| {
                    let value = c.value.as_ref().map(|v| v.to_string());
                    (c.name.to_string(), c.config_operation, value)
                })
                .collect(),
        })
        .collect();
    let results = apply(broker, &resources, false, req.validate_only).await;
    let responses = req
        .resources
        .iter()
        .zip(results)
        .map(|(r, (code, message))| {
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message.map(StrBytes::from_string))
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// Checks every resource, sends the valid ones to the active controller in one request and
/// returns one result per resource, in order.
async fn apply(
    broker: &Broker,
    resources: &[Resource],
    replace: bool,
    validate_only: bool,
) -> Vec<ConfigResult> {
    let duplicates = duplicate_resources(resources);
    let checked: Vec<Result<ConfigChange, Failure>> = resources
        .iter()
        .map(|r| {
            if duplicates.contains(&(r.resource_type, r.name.as_str())) {
                return Err((
                    ResponseError::InvalidRequest,
                    "Each resource must appear at most once.".into(),
                ));
            }
            preprocess(broker, r, replace)
        })
        .collect();
    let changes: Vec<ConfigChange> = checked.iter().filter_map(|c| c.clone().ok()).collect();
    let mut answers = forward(broker, changes, validate_only).await.into_iter();
    checked
        .into_iter()
        .map(|c| match c {
            Ok(change) => {
                let answer = answers.next().unwrap_or_else(|| {
                    (
                        ResponseError::UnknownServerError.code(),
                        Some("the controller returned fewer results than asked".into()),
                    )
                });
                if answer.0 == 0 && !validate_only {
                    warn_unenforced(&change);
                }
                answer
            }
            Err((code, message)) => (code.code(), Some(message)),
        })
        .collect()
}

/// (type, name) of the resources named more than once.
fn duplicate_resources(resources: &[Resource]) -> HashSet<(i8, &str)> {
    let mut seen = HashSet::new();
    resources
        .iter()
        .map(|r| (r.resource_type, r.name.as_str()))
        .filter(|key| !seen.insert(*key))
        .collect()
}

/// Sends the valid changes to the active controller and waits until this broker has
/// applied what it committed.
async fn forward(
    broker: &Broker,
    changes: Vec<ConfigChange>,
    validate_only: bool,
) -> Vec<ConfigResult> {
    if changes.is_empty() {
        return Vec::new();
    }
    let count = changes.len();
    let request = ControllerRequest::AlterConfigs {
        changes,
        validate_only,
    };
    crate::cluster::forward_items(broker, request, count, |response| match response {
        ControllerResponse::ConfigsAltered { results, index } => Some((results, *index)),
        _ => None,
    })
    .await
}

/// Kafka's checks of one resource that need no metadata; the change to forward.
fn preprocess(broker: &Broker, r: &Resource, replace: bool) -> Result<ConfigChange, Failure> {
    check_keys(r)?;
    let ops = match r.resource_type {
        TOPIC_RESOURCE => {
            check_topic_name(&r.name)?;
            r.configs
                .iter()
                .map(|(key, op, value)| topic_op(key, *op, value.as_deref()))
                .collect::<Result<Vec<_>, _>>()?
        }
        BROKER_RESOURCE => {
            check_broker_name(broker, &r.name)?;
            r.configs
                .iter()
                .map(|(key, op, value)| broker_op(key, *op, value.as_deref()))
                .collect::<Result<Vec<_>, _>>()?
        }
        other => {
            return Err((
                ResponseError::InvalidRequest,
                format!("Unknown resource type {other}"),
            ))
        }
    };
    Ok(ConfigChange {
        resource_type: r.resource_type,
        resource_name: r.name.clone(),
        ops,
        replace,
    })
}

/// No key twice, no null value except for DELETE, not more keys than there are configs.
fn check_keys(r: &Resource) -> Result<(), Failure> {
    if r.configs.len() > CONFIGS_PER_RESOURCE_MAX {
        return Err((
            ResponseError::InvalidRequest,
            format!("At most {CONFIGS_PER_RESOURCE_MAX} configs may be altered per resource"),
        ));
    }
    let mut seen = HashSet::new();
    if !r.configs.iter().all(|(key, _, _)| seen.insert(key)) {
        return Err((
            ResponseError::InvalidRequest,
            "Error due to duplicate config keys".into(),
        ));
    }
    let nulls: Vec<&str> = r
        .configs
        .iter()
        .filter(|(_, op, value)| *op != OP_DELETE && value.is_none())
        .map(|(key, _, _)| key.as_str())
        .collect();
    if !nulls.is_empty() {
        return Err((
            ResponseError::InvalidRequest,
            format!("Null value not supported for : {}", nulls.join(", ")),
        ));
    }
    Ok(())
}

fn check_topic_name(name: &str) -> Result<(), Failure> {
    if name.is_empty() {
        return Err((
            ResponseError::InvalidRequest,
            "Default topic resources are not allowed.".into(),
        ));
    }
    validate_topic_name(name).map_err(|m| (ResponseError::InvalidTopicException, m))
}

/// A BROKER resource names the cluster default ("") or the broker the request came to.
fn check_broker_name(broker: &Broker, name: &str) -> Result<(), Failure> {
    if name.is_empty() {
        return Ok(());
    }
    let id: i32 = name.parse().map_err(|_| {
        (
            ResponseError::InvalidRequest,
            format!("Node id must be an integer, but it is: {name}"),
        )
    })?;
    if id != broker.node_id {
        return Err((
            ResponseError::InvalidRequest,
            format!(
                "Unexpected broker id, expected {}, but received {name}",
                broker.node_id
            ),
        ));
    }
    Ok(())
}

/// A topic config operation, checked as Kafka's `LogConfig.validate` would check the
/// result: INVALID_CONFIG naming the key.
fn topic_op(key: &str, op: i8, value: Option<&str>) -> Result<(String, ConfigOp), Failure> {
    let invalid = |m: String| (ResponseError::InvalidConfig, m);
    let value = value.unwrap_or_default();
    check_length(key, value).map_err(invalid)?;
    let op = match op {
        OP_SET => {
            topic_config::validate(key, value).map_err(invalid)?;
            ConfigOp::Set(value.to_string())
        }
        OP_DELETE => ConfigOp::Delete,
        OP_APPEND | OP_SUBTRACT => {
            let def = topic_config::find(key)
                .filter(|d| d.config_type == ConfigType::List)
                .ok_or_else(|| {
                    invalid(format!(
                        "Can't {} to key {key} because its type is not LIST.",
                        op_name(op)
                    ))
                })?;
            let items = list_items(value);
            if op == OP_APPEND {
                for item in &items {
                    check_value(key, def.check, def.config_type, item).map_err(invalid)?;
                }
            }
            list_op(op, items, def.default)
        }
        other => return Err(unknown_op(other)),
    };
    Ok((key.to_string(), op))
}

/// A broker config operation: only Kafka's dynamic configs may be set; a failed check is
/// INVALID_REQUEST as in Kafka (KAFKA-13609), APPEND/SUBTRACT on a non-list INVALID_CONFIG.
fn broker_op(key: &str, op: i8, value: Option<&str>) -> Result<(String, ConfigOp), Failure> {
    let bad = |m: String| (ResponseError::InvalidRequest, m);
    let value = value.unwrap_or_default();
    check_length(key, value).map_err(|m| (ResponseError::InvalidConfig, m))?;
    let op = match op {
        OP_DELETE => ConfigOp::Delete,
        OP_SET => {
            let def = dynamic_config::check_settable(key).map_err(bad)?;
            dynamic_config::check_broker_value(&def, value).map_err(bad)?;
            ConfigOp::Set(value.to_string())
        }
        OP_APPEND | OP_SUBTRACT => {
            let def = dynamic_config::check_settable(key).map_err(bad)?;
            if def.config_type != ConfigType::List {
                return Err((
                    ResponseError::InvalidConfig,
                    format!(
                        "Config value {} is not allowed for config key: {key}",
                        op_name(op).to_ascii_lowercase()
                    ),
                ));
            }
            let items = list_items(value);
            if op == OP_APPEND {
                for item in &items {
                    dynamic_config::check_broker_value(&def, item).map_err(bad)?;
                }
            }
            list_op(op, items, def.default)
        }
        other => return Err(unknown_op(other)),
    };
    Ok((key.to_string(), op))
}

/// Keys and values must fit a metadata record's field.
fn check_length(key: &str, value: &str) -> Result<(), String> {
    if key.len() > FIELD_LEN_MAX || value.len() > FIELD_LEN_MAX {
        return Err(format!(
            "Config {} or its value is longer than {FIELD_LEN_MAX} bytes",
            key.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

fn list_items(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn list_op(op: i8, items: Vec<String>, default: &str) -> ConfigOp {
    let default = default.to_string();
    if op == OP_APPEND {
        ConfigOp::Append { items, default }
    } else {
        ConfigOp::Subtract { items, default }
    }
}

fn op_name(op: i8) -> &'static str {
    match op {
        OP_APPEND => "APPEND",
        OP_SUBTRACT => "SUBTRACT",
        OP_DELETE => "DELETE",
        _ => "SET",
    }
}

fn unknown_op(op: i8) -> Failure {
    (
        ResponseError::InvalidRequest,
        format!("Unknown operations type {op}"),
    )
}

/// Configs accepted and stored but whose behaviour is not built yet get one warning each.
fn warn_unenforced(change: &ConfigChange) {
    for (key, op) in &change.ops {
        if matches!(op, ConfigOp::Delete) {
            continue;
        }
        let enforced = if change.resource_type == TOPIC_RESOURCE {
            topic_config::ENFORCED.contains(&key.as_str())
        } else {
            dynamic_config::is_enforced(key)
        };
        if !enforced {
            warn!(resource = %change.resource_name, config = %key, "config accepted and reported but not enforced yet");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: Result<(String, ConfigOp), Failure>) -> Option<ResponseError> {
        result.err().map(|(code, _)| code)
    }

    #[test]
    fn topic_operations_are_checked_like_kafkas_log_config() {
        assert_eq!(
            topic_op("retention.ms", OP_SET, Some("1000")).unwrap(),
            ("retention.ms".into(), ConfigOp::Set("1000".into()))
        );
        let (kind, message) = topic_op("retention.mss", OP_SET, Some("1")).unwrap_err();
        assert_eq!(kind, ResponseError::InvalidConfig);
        assert!(message.contains("retention.mss"), "{message}");
        let (kind, message) = topic_op("segment.bytes", OP_SET, Some("ten")).unwrap_err();
        assert_eq!(kind, ResponseError::InvalidConfig);
        assert!(message.contains("segment.bytes"), "{message}");
        assert_eq!(
            topic_op("anything", OP_DELETE, None).unwrap().1,
            ConfigOp::Delete
        );
        assert_eq!(
            topic_op("retention.ms", OP_APPEND, Some("1"))
                .unwrap_err()
                .1,
            "Can't APPEND to key retention.ms because its type is not LIST."
        );
        assert_eq!(
            code(topic_op("cleanup.policy", OP_APPEND, Some("shred"))),
            Some(ResponseError::InvalidConfig)
        );
        assert_eq!(
            topic_op("cleanup.policy", OP_APPEND, Some("compact"))
                .unwrap()
                .1,
            ConfigOp::Append {
                items: vec!["compact".into()],
                default: "delete".into()
            }
        );
        assert_eq!(
            code(topic_op("retention.ms", 9, Some("1"))),
            Some(ResponseError::InvalidRequest)
        );
        let huge = "1".repeat(FIELD_LEN_MAX + 1);
        assert_eq!(
            code(topic_op("retention.ms", OP_SET, Some(&huge))),
            Some(ResponseError::InvalidConfig)
        );
    }

    #[test]
    fn broker_operations_follow_kafkas_dynamic_broker_config_rules() {
        assert!(broker_op("log.retention.ms", OP_SET, Some("1000")).is_ok());
        let (kind, message) = broker_op("node.id", OP_SET, Some("3")).unwrap_err();
        assert_eq!(kind, ResponseError::InvalidRequest);
        assert_eq!(
            message,
            "Cannot update these configs dynamically: Set(node.id)"
        );
        let (kind, message) = broker_op("log.retention.ms", OP_SET, Some("x")).unwrap_err();
        assert_eq!(kind, ResponseError::InvalidRequest);
        assert!(message.contains("log.retention.ms"), "{message}");
        assert!(
            broker_op("node.id", OP_DELETE, None).is_ok(),
            "Kafka lets any key be deleted"
        );
        assert_eq!(
            broker_op("log.retention.ms", OP_APPEND, Some("1")).unwrap_err(),
            (
                ResponseError::InvalidConfig,
                "Config value append is not allowed for config key: log.retention.ms".into()
            )
        );
        assert!(matches!(
            broker_op("log.cleanup.policy", OP_SUBTRACT, Some("delete"))
                .unwrap()
                .1,
            ConfigOp::Subtract { .. }
        ));
    }

    #[test]
    fn duplicate_keys_and_null_values_are_invalid_requests() {
        let resource = |configs: Vec<(&str, i8, Option<&str>)>| Resource {
            resource_type: TOPIC_RESOURCE,
            name: "t".into(),
            configs: configs
                .into_iter()
                .map(|(k, op, v)| (k.to_string(), op, v.map(str::to_string)))
                .collect(),
        };
        let twice = resource(vec![
            ("retention.ms", OP_SET, Some("1")),
            ("retention.ms", OP_DELETE, None),
        ]);
        assert_eq!(
            check_keys(&twice).unwrap_err().1,
            "Error due to duplicate config keys"
        );
        let null = resource(vec![
            ("retention.ms", OP_SET, None),
            ("flush.ms", OP_DELETE, None),
        ]);
        assert_eq!(
            check_keys(&null).unwrap_err().1,
            "Null value not supported for : retention.ms"
        );
        assert!(check_topic_name("").is_err());
        assert_eq!(
            check_topic_name("a b").unwrap_err().0,
            ResponseError::InvalidTopicException
        );
    }
}
