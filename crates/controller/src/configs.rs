//! The active controller's config decisions (Kafka's `ConfigurationControlManager`): what
//! AlterConfigs and IncrementalAlterConfigs change, as `Config` records.
//!
//! The broker that received the request has already checked what needs no metadata (names,
//! values, which broker configs may change at runtime) and resolved each operation against
//! the config's schema (its list default); the controller checks that the resource exists
//! and computes the new values from the committed image, so concurrent changes to one
//! resource never lose each other's keys.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strom_metadata::records::FIELD_LEN_MAX;
use strom_metadata::{MetadataImage, MetadataRecord};

use crate::service::code;

/// Kafka's INVALID_CONFIG error code.
const INVALID_CONFIG: i16 = 40;

/// Kafka's `ConfigResource.Type.TOPIC`.
pub const TOPIC_RESOURCE: i8 = 2;
/// Kafka's `ConfigResource.Type.BROKER`: name "" is the cluster-wide default, a broker id
/// that broker's own setting.
pub const BROKER_RESOURCE: i8 = 4;

/// One operation on one key (Kafka's `AlterConfigOp.OpType`), with the schema facts the
/// controller needs already resolved by the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigOp {
    Set(String),
    Delete,
    /// Adds each item the list does not hold yet; a key without a value starts from
    /// `default` (the config's default, as Kafka does).
    Append {
        items: Vec<String>,
        default: String,
    },
    /// Removes each item from the list; a key without a value starts from `default`.
    Subtract {
        items: Vec<String>,
        default: String,
    },
}

/// The changes asked for one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChange {
    pub resource_type: i8,
    pub resource_name: String,
    /// Key and operation, each key at most once.
    pub ops: Vec<(String, ConfigOp)>,
    /// The legacy AlterConfigs: the named keys become the resource's whole set of
    /// overrides, every other key is deleted.
    pub replace: bool,
}

/// One resource's outcome: Kafka's error code (0 for success) and message.
pub type ConfigResult = (i16, Option<String>);

/// The records of every change that can apply and one result per change, in order.
/// Nothing is written for a change whose values are already the resource's.
pub fn plan(
    image: &MetadataImage,
    changes: &[ConfigChange],
) -> (Vec<MetadataRecord>, Vec<ConfigResult>) {
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(changes.len());
    for change in changes {
        match check_exists(image, change).and_then(|()| change_records(image, change)) {
            Ok(mut new_records) => {
                records.append(&mut new_records);
                results.push((code::NONE, None));
            }
            Err((error, message)) => results.push((error, Some(message))),
        }
    }
    (records, results)
}

/// Kafka's existence checks: a topic must exist, a broker id must be registered, the
/// cluster default always exists.
fn check_exists(image: &MetadataImage, change: &ConfigChange) -> Result<(), (i16, String)> {
    let name = &change.resource_name;
    match change.resource_type {
        TOPIC_RESOURCE if image.topic_by_name(name).is_some() => Ok(()),
        TOPIC_RESOURCE => Err((
            code::UNKNOWN_TOPIC_OR_PARTITION,
            format!("The topic '{name}' does not exist."),
        )),
        BROKER_RESOURCE if name.is_empty() => Ok(()),
        BROKER_RESOURCE => {
            let id: i32 = name
                .parse()
                .map_err(|_| (code::INVALID_REQUEST, format!("Invalid broker name {name}")))?;
            if image.brokers.contains_key(&id) {
                Ok(())
            } else {
                Err((
                    code::BROKER_ID_NOT_REGISTERED,
                    format!("No node with id {id} found."),
                ))
            }
        }
        other => Err((
            code::INVALID_REQUEST,
            format!("Unknown resource type {other}"),
        )),
    }
}

/// The records that bring the resource's stored configs to what the change asks for; an
/// APPEND that would grow a value past what a record holds is INVALID_CONFIG.
fn change_records(
    image: &MetadataImage,
    change: &ConfigChange,
) -> Result<Vec<MetadataRecord>, (i16, String)> {
    let empty = BTreeMap::new();
    let current = image
        .configs
        .get(&(change.resource_type, change.resource_name.clone()))
        .unwrap_or(&empty);
    let mut wanted: BTreeMap<&str, Option<String>> = BTreeMap::new();
    if change.replace {
        for key in current.keys() {
            wanted.insert(key, None);
        }
    }
    for (key, op) in &change.ops {
        let value = apply_op(current.get(key), op);
        if value.as_ref().is_some_and(|v| v.len() > FIELD_LEN_MAX) {
            return Err((
                INVALID_CONFIG,
                format!("The value of {key} would be longer than {FIELD_LEN_MAX} bytes"),
            ));
        }
        wanted.insert(key, value);
    }
    Ok(wanted
        .into_iter()
        .filter(|(key, value)| current.get(*key) != value.as_ref())
        .map(|(key, value)| MetadataRecord::Config {
            resource_type: change.resource_type,
            resource_name: change.resource_name.clone(),
            key: key.to_string(),
            value,
        })
        .collect())
}

/// A key's value after one operation (`None`: deleted).
pub fn apply_op(current: Option<&String>, op: &ConfigOp) -> Option<String> {
    match op {
        ConfigOp::Set(value) => Some(value.clone()),
        ConfigOp::Delete => None,
        ConfigOp::Append { items, default } => {
            let mut list = list_items(current.unwrap_or(default));
            for item in items {
                if !list.contains(item) {
                    list.push(item.clone());
                }
            }
            Some(list.join(","))
        }
        ConfigOp::Subtract { items, default } => {
            let mut list = list_items(current.unwrap_or(default));
            list.retain(|item| !items.contains(item));
            Some(list.join(","))
        }
    }
}

/// A comma list's non-empty items, in order.
fn list_items(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn image_with_topic(configs: &[(&str, &str)]) -> MetadataImage {
        let topic_id = Uuid::new_v4();
        let mut records = vec![
            MetadataRecord::RegisterBroker {
                broker_id: 1,
                incarnation_id: Uuid::nil(),
                epoch: 1,
                host: "h".into(),
                port: 1,
                rack: None,
            },
            MetadataRecord::Topic {
                name: "t".into(),
                topic_id,
            },
        ];
        for (key, value) in configs {
            records.push(MetadataRecord::Config {
                resource_type: TOPIC_RESOURCE,
                resource_name: "t".into(),
                key: key.to_string(),
                value: Some(value.to_string()),
            });
        }
        MetadataImage::default().apply(&records).unwrap()
    }

    fn change(resource_type: i8, name: &str, ops: &[(&str, ConfigOp)]) -> ConfigChange {
        ConfigChange {
            resource_type,
            resource_name: name.into(),
            ops: ops
                .iter()
                .map(|(k, op)| (k.to_string(), op.clone()))
                .collect(),
            replace: false,
        }
    }

    fn topic_configs(image: &MetadataImage) -> BTreeMap<String, String> {
        image.configs[&(TOPIC_RESOURCE, "t".to_string())].clone()
    }

    #[test]
    fn incremental_changes_touch_only_the_named_keys_and_write_nothing_unchanged() {
        let image = image_with_topic(&[("retention.ms", "1000"), ("segment.bytes", "2097152")]);
        let ops = [
            ("retention.ms", ConfigOp::Set("2000".into())),
            ("segment.bytes", ConfigOp::Set("2097152".into())),
            ("flush.ms", ConfigOp::Delete),
        ];
        let (records, results) = plan(&image, &[change(TOPIC_RESOURCE, "t", &ops)]);
        assert_eq!(results, vec![(code::NONE, None)]);
        assert_eq!(records.len(), 1, "only retention.ms changes: {records:?}");
        let after = image.apply(&records).unwrap();
        assert_eq!(
            topic_configs(&after),
            BTreeMap::from([
                ("retention.ms".to_string(), "2000".to_string()),
                ("segment.bytes".to_string(), "2097152".to_string()),
            ])
        );
    }

    #[test]
    fn the_legacy_alter_configs_replaces_the_whole_set_of_overrides() {
        let image = image_with_topic(&[("retention.ms", "1000"), ("segment.bytes", "2097152")]);
        let mut replace = change(
            TOPIC_RESOURCE,
            "t",
            &[("max.message.bytes", ConfigOp::Set("1000".into()))],
        );
        replace.replace = true;
        let (records, results) = plan(&image, &[replace]);
        assert_eq!(results, vec![(code::NONE, None)]);
        let after = image.apply(&records).unwrap();
        assert_eq!(
            topic_configs(&after),
            BTreeMap::from([("max.message.bytes".to_string(), "1000".to_string())])
        );
    }

    #[test]
    fn append_and_subtract_edit_lists_starting_from_the_default() {
        let append = ConfigOp::Append {
            items: vec!["compact".into(), "delete".into()],
            default: "delete".into(),
        };
        assert_eq!(apply_op(None, &append).as_deref(), Some("delete,compact"));
        let subtract = ConfigOp::Subtract {
            items: vec!["delete".into()],
            default: "delete".into(),
        };
        assert_eq!(
            apply_op(Some(&"compact,delete".to_string()), &subtract).as_deref(),
            Some("compact")
        );
        assert_eq!(apply_op(None, &subtract).as_deref(), Some(""));
        let throttled = ConfigOp::Append {
            items: vec!["0:1".into()],
            default: String::new(),
        };
        assert_eq!(
            apply_op(Some(&"0:1,1:2".to_string()), &throttled).as_deref(),
            Some("0:1,1:2"),
            "an item already present is not added twice"
        );
    }

    #[test]
    fn missing_resources_get_kafkas_errors_and_do_not_stop_the_others() {
        let image = image_with_topic(&[]);
        let set = [("retention.ms", ConfigOp::Set("1".into()))];
        let (records, results) = plan(
            &image,
            &[
                change(TOPIC_RESOURCE, "ghost", &set),
                change(BROKER_RESOURCE, "7", &set),
                change(BROKER_RESOURCE, "x", &set),
                change(3, "g", &set),
                change(
                    BROKER_RESOURCE,
                    "",
                    &[("log.retention.ms", ConfigOp::Set("5".into()))],
                ),
                change(
                    BROKER_RESOURCE,
                    "1",
                    &[("log.retention.ms", ConfigOp::Set("6".into()))],
                ),
            ],
        );
        let codes: Vec<i16> = results.iter().map(|r| r.0).collect();
        assert_eq!(
            codes,
            vec![
                code::UNKNOWN_TOPIC_OR_PARTITION,
                code::BROKER_ID_NOT_REGISTERED,
                code::INVALID_REQUEST,
                code::INVALID_REQUEST,
                code::NONE,
                code::NONE,
            ]
        );
        assert_eq!(
            results[0].1.as_deref(),
            Some("The topic 'ghost' does not exist.")
        );
        let after = image.apply(&records).unwrap();
        assert_eq!(
            after.configs[&(BROKER_RESOURCE, String::new())]["log.retention.ms"],
            "5"
        );
        assert_eq!(
            after.configs[&(BROKER_RESOURCE, "1".into())]["log.retention.ms"],
            "6"
        );
    }
}
