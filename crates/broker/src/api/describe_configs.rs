//! DescribeConfigs (v1–v4) as Kafka's `ConfigHelper` answers it: for a topic every topic
//! config with its effective value and source; for this broker (resource "<node id>") every
//! broker config, dynamic values included, `read_only` false for those AlterConfigs may
//! change; for the cluster default (resource "") the dynamic defaults that are set.
//! Synonyms come in Kafka's order: topic override, dynamic per-broker, dynamic cluster
//! default, static, default.

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::dynamic_config::{self, BrokerDefaults, DynamicBrokerConfigs, Synonym};
use crate::topic_config::{self, ConfigSource, ConfigType};
use crate::topics::validate_topic_name;
use crate::Broker;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Options shared by all resources of one request.
#[derive(Clone, Copy)]
struct Include {
    synonyms: bool,
    documentation: bool,
    version: i16,
}

pub fn handle(
    broker: &Broker,
    req: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let include = Include {
        synonyms: req.include_synonyms,
        documentation: req.include_documentation,
        version,
    };
    let dynamic = DynamicBrokerConfigs::applied(broker);
    let defaults = BrokerDefaults::new(&broker.config, &dynamic);
    let results = req
        .resources
        .into_iter()
        .map(|r| describe(broker, &defaults, r, include))
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn describe(
    broker: &Broker,
    defaults: &BrokerDefaults,
    r: DescribeConfigsResource,
    include: Include,
) -> DescribeConfigsResult {
    let result = DescribeConfigsResult::default()
        .with_resource_type(r.resource_type)
        .with_resource_name(r.resource_name.clone());
    let wanted = |name: &str| {
        r.configuration_keys
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
    };
    let entries = match r.resource_type {
        RESOURCE_TOPIC => topic_entries(broker, defaults, r.resource_name.as_str(), include),
        RESOURCE_BROKER => broker_entries(broker, defaults, r.resource_name.as_str(), include),
        other => Err((
            ResponseError::InvalidRequest,
            format!("Unsupported resource type: {other}"),
        )),
    };
    match entries {
        Ok(entries) => {
            result.with_configs(entries.into_iter().filter(|e| wanted(&e.name)).collect())
        }
        Err((code, message)) => result
            .with_error_code(code.code())
            .with_error_message(Some(StrBytes::from_string(message))),
    }
}

type Entries = Result<Vec<DescribeConfigsResourceResult>, (ResponseError, String)>;

fn topic_entries(
    broker: &Broker,
    defaults: &BrokerDefaults,
    name: &str,
    include: Include,
) -> Entries {
    validate_topic_name(name).map_err(|m| (ResponseError::InvalidTopicException, m))?;
    let Some(topic) = broker.topics.get(name) else {
        return Err((
            ResponseError::UnknownTopicOrPartition,
            format!("Topic {name} does not exist"),
        ));
    };
    Ok(topic_config::TOPIC_CONFIGS
        .iter()
        .map(|def| topic_entry(defaults, &topic.configs, def, include))
        .collect())
}

/// This broker's configs (resource "<node id>") or the dynamic cluster defaults
/// (resource "").
fn broker_entries(
    broker: &Broker,
    defaults: &BrokerDefaults,
    name: &str,
    include: Include,
) -> Entries {
    if name.is_empty() {
        return Ok(cluster_default_entries(defaults, include));
    }
    let id: i32 = name.parse().map_err(|_| {
        (
            ResponseError::InvalidRequest,
            format!("Broker id must be an integer, but it is: {name}"),
        )
    })?;
    if id != broker.node_id {
        return Err((
            ResponseError::InvalidRequest,
            format!(
                "Unexpected broker id, expected {} or empty string, but received {name}",
                broker.node_id
            ),
        ));
    }
    Ok(broker_config_names(broker)
        .into_iter()
        .map(|name| broker_entry(defaults, name, include))
        .collect())
}

/// Every broker config: Strom's keys, then the dynamic configs it does not implement.
fn broker_config_names(broker: &Broker) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = broker.config.describe().iter().map(|e| e.name).collect();
    for def in dynamic_config::all() {
        if !names.contains(&def.name) {
            names.push(def.name);
        }
    }
    names
}

/// Kafka describes only the defaults that are set for resource "", each with its
/// DYNAMIC_DEFAULT_BROKER_CONFIG synonym.
fn cluster_default_entries(
    defaults: &BrokerDefaults,
    include: Include,
) -> Vec<DescribeConfigsResourceResult> {
    defaults
        .dynamic
        .cluster_default
        .iter()
        .map(|(name, value)| {
            let schema = broker_schema(name);
            let source = ConfigSource::DynamicDefaultBroker;
            let mut entry = entry(
                StrBytes::from_string(name.clone()),
                Some(StrBytes::from_string(value.clone())),
                source,
                schema,
                include,
            );
            if include.synonyms {
                entry.synonyms = vec![synonym(name, Some(value.clone()), source)];
            }
            entry
        })
        .collect()
}

/// One broker config as this broker runs it.
fn broker_entry(
    defaults: &BrokerDefaults,
    name: &'static str,
    include: Include,
) -> DescribeConfigsResourceResult {
    // Kafka lists the synonyms from the described name on (a minutes key does not show the
    // ms key that overrides it).
    let synonyms: Vec<Synonym> = defaults
        .synonyms(name)
        .into_iter()
        .skip_while(|s| s.name != name)
        .collect();
    let source = synonyms.first().map_or(ConfigSource::Default, |s| s.source);
    let value = match synonyms.first() {
        Some(s) if s.source.is_dynamic() => Some(s.value.clone()),
        _ => defaults
            .config
            .get(name)
            .map(|(v, _)| v)
            .or_else(|| dynamic_config::find(name).map(|d| d.default.to_string())),
    }
    .filter(|v| !v.is_empty());
    let mut entry = entry(
        StrBytes::from_static_str(name),
        value.map(StrBytes::from_string),
        source,
        broker_schema(name),
        include,
    );
    entry.read_only = dynamic_config::find(name).is_none();
    if include.synonyms {
        entry.synonyms = synonyms
            .into_iter()
            .map(|s| synonym(&s.name, Some(s.value), s.source))
            .collect();
    }
    entry
}

/// A broker config's type and documentation.
fn broker_schema(name: &str) -> (ConfigType, &'static str) {
    match crate::config::key_schema(name) {
        Some(key) => (key.config_type, key.documentation),
        None => dynamic_config::find(name).map_or((ConfigType::String, ""), |d| {
            (d.config_type, d.documentation)
        }),
    }
}

fn topic_entry(
    defaults: &BrokerDefaults,
    overrides: &BTreeMap<String, String>,
    def: &topic_config::TopicConfigDef,
    include: Include,
) -> DescribeConfigsResourceResult {
    let (value, source) = topic_config::effective_value(def, overrides, defaults);
    let mut entry = entry(
        StrBytes::from_static_str(def.name),
        Some(StrBytes::from_string(value)),
        source,
        (def.config_type, def.documentation),
        include,
    );
    if include.synonyms {
        let mut synonyms = Vec::new();
        if let Some(v) = overrides.get(def.name) {
            synonyms.push(synonym(
                def.name,
                Some(v.clone()),
                ConfigSource::DynamicTopic,
            ));
        }
        if let Some(broker_key) = def.broker_synonym {
            synonyms.extend(
                defaults
                    .synonyms(broker_key)
                    .into_iter()
                    .map(|s| synonym(&s.name, Some(s.value), s.source)),
            );
        }
        entry.synonyms = synonyms;
    }
    entry
}

fn entry(
    name: StrBytes,
    value: Option<StrBytes>,
    source: ConfigSource,
    (config_type, documentation): (ConfigType, &'static str),
    include: Include,
) -> DescribeConfigsResourceResult {
    let mut entry = DescribeConfigsResourceResult::default()
        .with_name(name)
        .with_value(value)
        .with_config_source(source.code())
        .with_read_only(false);
    if include.version >= 3 {
        entry.config_type = config_type.describe_configs_code();
        entry.documentation = include
            .documentation
            .then(|| StrBytes::from_static_str(documentation));
    }
    entry
}

fn synonym(name: &str, value: Option<String>, source: ConfigSource) -> DescribeConfigsSynonym {
    DescribeConfigsSynonym::default()
        .with_name(StrBytes::from_string(name.to_string()))
        .with_value(value.map(StrBytes::from_string))
        .with_source(source.code())
}
