//! The active controller's client quota decisions (Kafka's `ClientQuotaControlManager`):
//! which `ClientQuota` records an AlterClientQuotas request writes.
//!
//! Each alteration names an entity — `user`, `client-id` or both, or `ip` alone; a `None`
//! name is the type's default — and sets or removes keys. Keys and values are checked
//! against the entity's kind (byte rates must be whole numbers); a value equal to the
//! committed one writes nothing, and so does removing a key that is not set.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strom_metadata::records::{QuotaEntity, QuotaValue, FIELD_LEN_MAX};
use strom_metadata::{MetadataImage, MetadataRecord};

use crate::service::code;

pub const USER: &str = "user";
pub const CLIENT_ID: &str = "client-id";
pub const IP: &str = "ip";

/// Quota keys of `user` and `client-id` entities, and whether each takes whole numbers
/// (Kafka's LONG) or any double.
pub const CLIENT_KEYS: &[(&str, bool)] = &[
    ("producer_byte_rate", true),
    ("consumer_byte_rate", true),
    ("request_percentage", false),
    ("controller_mutation_rate", false),
];

/// Quota keys of `ip` entities.
pub const IP_KEYS: &[(&str, bool)] = &[("connection_creation_rate", true)];

/// One entity's alteration: (key, new value or `None` to remove) per op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaAlteration {
    /// (entity type, name) as the request gave them.
    pub entity: Vec<(String, Option<String>)>,
    pub ops: Vec<(String, Option<f64>)>,
}

/// An alteration's outcome: an error code (0 for none) and message.
pub type QuotaResult = (i16, Option<String>);

/// The records `alterations` write on `image`, and one result per alteration. An
/// alteration with any error writes nothing.
pub fn plan(
    image: &MetadataImage,
    alterations: &[QuotaAlteration],
) -> (Vec<MetadataRecord>, Vec<QuotaResult>) {
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(alterations.len());
    let mut seen: Vec<QuotaEntity> = Vec::new();
    for alteration in alterations {
        let planned = entity(&alteration.entity).and_then(|entity| {
            if seen.contains(&entity) {
                return Err(format!("Ignoring duplicate entity {:?}", alteration.entity));
            }
            seen.push(entity.clone());
            plan_one(image, &entity, &alteration.ops)
        });
        match planned {
            Ok(mut planned) => {
                records.append(&mut planned);
                results.push((code::NONE, None));
            }
            Err(message) => results.push((code::INVALID_REQUEST, Some(message))),
        }
    }
    (records, results)
}

/// Checks an entity's types and names; returns it sorted by type.
pub fn entity(pairs: &[(String, Option<String>)]) -> Result<QuotaEntity, String> {
    if pairs.is_empty() {
        return Err("Invalid empty client quota entity".into());
    }
    let mut entity: QuotaEntity = Vec::with_capacity(pairs.len());
    for (entity_type, name) in pairs {
        if ![USER, CLIENT_ID, IP].contains(&entity_type.as_str()) {
            return Err(format!("Unhandled client quota entity type: {entity_type}"));
        }
        if entity.iter().any(|(t, _)| t == entity_type) {
            return Err(format!(
                "Invalid empty client quota entity, duplicate entity entry {entity_type}"
            ));
        }
        if name.as_deref().is_some_and(str::is_empty) {
            return Err(format!("Empty {entity_type} not supported"));
        }
        if name.as_ref().is_some_and(|n| n.len() > FIELD_LEN_MAX) {
            return Err(format!("{entity_type} name too long"));
        }
        entity.push((entity_type.clone(), name.clone()));
    }
    entity.sort();
    Ok(entity)
}

/// The keys an entity of this kind takes: `user` and/or `client-id`, or `ip` alone.
pub fn keys_of(entity: &QuotaEntity) -> Result<&'static [(&'static str, bool)], String> {
    let has = |t: &str| entity.iter().any(|(et, _)| et == t);
    match (has(USER), has(CLIENT_ID), has(IP)) {
        (true, _, false) | (false, true, false) => Ok(CLIENT_KEYS),
        (false, false, true) => Ok(IP_KEYS),
        _ => Err("Invalid empty client quota entity".into()),
    }
}

fn plan_one(
    image: &MetadataImage,
    entity: &QuotaEntity,
    ops: &[(String, Option<f64>)],
) -> Result<Vec<MetadataRecord>, String> {
    let keys = keys_of(entity)?;
    let mut changes: BTreeMap<&str, Option<f64>> = BTreeMap::new();
    for (key, value) in ops {
        if changes.insert(key.as_str(), *value).is_some() {
            return Err(format!(
                "Duplicate quota key {key} not updating quota for this entity"
            ));
        }
    }
    let current = image.client_quotas.get(entity);
    let mut records = Vec::new();
    for (key, value) in changes {
        let existing = current.and_then(|values| values.get(key)).copied();
        let value = match value {
            None if existing.is_none() => continue,
            None => None,
            Some(v) => {
                check_value(keys, key, v)?;
                if existing == Some(QuotaValue::new(v)) {
                    continue;
                }
                Some(QuotaValue::new(v))
            }
        };
        records.push(MetadataRecord::ClientQuota {
            entity: entity.clone(),
            key: key.to_string(),
            value,
        });
    }
    Ok(records)
}

/// Kafka's `validateQuotaKeyValue`: a known key, and a whole number where the key is a LONG.
fn check_value(keys: &[(&str, bool)], key: &str, value: f64) -> Result<(), String> {
    let Some(&(_, whole)) = keys.iter().find(|(k, _)| *k == key) else {
        return Err(format!("Invalid configuration key {key}"));
    };
    const EPSILON: f64 = 1e-6;
    if whole && (!value.is_finite() || ((value + EPSILON).trunc() - value).abs() > EPSILON) {
        return Err(format!("Configuration {key} must be a Long value"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alteration(entity: &[(&str, Option<&str>)], ops: &[(&str, Option<f64>)]) -> QuotaAlteration {
        QuotaAlteration {
            entity: entity
                .iter()
                .map(|(t, n)| (t.to_string(), n.map(String::from)))
                .collect(),
            ops: ops.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn alterations_write_only_what_changes_and_check_keys_like_kafka() {
        let image = MetadataImage::default();
        let set = alteration(
            &[("client-id", Some("app")), ("user", None)],
            &[
                ("producer_byte_rate", Some(1024.0)),
                ("request_percentage", Some(12.5)),
            ],
        );
        let (records, results) = plan(&image, std::slice::from_ref(&set));
        assert_eq!(results, vec![(0, None)]);
        assert_eq!(records.len(), 2);
        // Sorted by type, whichever order the request used.
        let MetadataRecord::ClientQuota { entity, .. } = &records[0] else {
            panic!("{records:?}");
        };
        assert_eq!(entity[0].0, "client-id");
        let image = image.apply(&records).unwrap();
        // The same values again, and removing an unset key, write nothing.
        let again = alteration(
            &[("user", None), ("client-id", Some("app"))],
            &[
                ("producer_byte_rate", Some(1024.0)),
                ("consumer_byte_rate", None),
            ],
        );
        let (records, results) = plan(&image, &[again]);
        assert!(records.is_empty());
        assert_eq!(results, vec![(0, None)]);
        let remove = alteration(
            &[("user", None), ("client-id", Some("app"))],
            &[("producer_byte_rate", None)],
        );
        let image = image.apply(&plan(&image, &[remove]).0).unwrap();
        assert_eq!(image.client_quotas.values().next().unwrap().len(), 1);

        let bad = [
            alteration(&[], &[("producer_byte_rate", Some(1.0))]),
            alteration(
                &[("group", Some("g"))],
                &[("producer_byte_rate", Some(1.0))],
            ),
            alteration(&[("user", Some(""))], &[("producer_byte_rate", Some(1.0))]),
            alteration(&[("user", Some("u")), ("ip", None)], &[]),
            alteration(
                &[("client-id", Some("c"))],
                &[("producer_byte_rate", Some(1.5))],
            ),
            alteration(&[("client-id", Some("c"))], &[("retention.ms", Some(1.0))]),
            alteration(&[("ip", None)], &[("producer_byte_rate", Some(1.0))]),
            alteration(
                &[("client-id", Some("d"))],
                &[
                    ("producer_byte_rate", Some(1.0)),
                    ("producer_byte_rate", None),
                ],
            ),
        ];
        let (records, results) = plan(&image, &bad);
        assert!(records.is_empty());
        assert!(results
            .iter()
            .all(|(c, m)| *c == code::INVALID_REQUEST && m.is_some()));
        // The same entity twice in one request: the second is refused.
        let twice = alteration(
            &[("client-id", Some("x"))],
            &[("consumer_byte_rate", Some(5.0))],
        );
        let (records, results) = plan(&image, &[twice.clone(), twice]);
        assert_eq!(records.len(), 1);
        assert_eq!(results[1].0, code::INVALID_REQUEST);
    }
}
