//! DescribeConfigs for topics (every topic config Kafka has, with its effective value and
//! source) and for this broker (its static configuration).

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::topic_config::{self, ConfigSource};
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
    let results = req
        .resources
        .into_iter()
        .map(|r| describe(broker, r, include))
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn describe(
    broker: &Broker,
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
    let fail = |code: ResponseError, message: String| {
        result
            .clone()
            .with_error_code(code.code())
            .with_error_message(Some(StrBytes::from_string(message)))
    };
    match r.resource_type {
        RESOURCE_TOPIC => {
            let Some(topic) = broker.topics.get(r.resource_name.as_str()) else {
                return fail(
                    ResponseError::UnknownTopicOrPartition,
                    format!("Topic {} does not exist", r.resource_name.as_str()),
                );
            };
            let configs = topic_config::TOPIC_CONFIGS
                .iter()
                .filter(|def| wanted(def.name))
                .map(|def| topic_entry(broker, &topic.configs, def, include))
                .collect();
            result.with_configs(configs)
        }
        RESOURCE_BROKER => {
            let name = r.resource_name.as_str();
            if !name.is_empty() && name != broker.node_id.to_string() {
                return fail(
                    ResponseError::InvalidRequest,
                    format!(
                        "Unexpected broker id, expected {} or empty string, but received {name}",
                        broker.node_id
                    ),
                );
            }
            let configs = broker
                .config
                .describe()
                .into_iter()
                .filter(|e| wanted(e.name))
                .map(|e| {
                    let source = if e.is_default {
                        ConfigSource::Default
                    } else {
                        ConfigSource::StaticBroker
                    };
                    let value = e.value.map(StrBytes::from_string);
                    let mut entry = entry(
                        e.name,
                        value.clone(),
                        source,
                        e.config_type.describe_configs_code(),
                        e.documentation,
                        include,
                    );
                    entry.read_only = true;
                    if include.synonyms {
                        entry.synonyms = vec![synonym(e.name, value, source)];
                    }
                    entry
                })
                .collect();
            result.with_configs(configs)
        }
        other => fail(
            ResponseError::InvalidRequest,
            format!("Unsupported resource type {other}"),
        ),
    }
}

fn topic_entry(
    broker: &Broker,
    overrides: &std::collections::BTreeMap<String, String>,
    def: &topic_config::TopicConfigDef,
    include: Include,
) -> DescribeConfigsResourceResult {
    let (value, source) = topic_config::effective_value(def, overrides, &broker.config);
    let mut entry = entry(
        def.name,
        Some(StrBytes::from_string(value)),
        source,
        def.config_type.describe_configs_code(),
        def.documentation,
        include,
    );
    if include.synonyms {
        let mut synonyms = Vec::new();
        if let Some(v) = overrides.get(def.name) {
            synonyms.push(synonym(
                def.name,
                Some(StrBytes::from_string(v.clone())),
                ConfigSource::DynamicTopic,
            ));
        }
        if let Some(broker_key) = def.broker_synonym {
            if let Some((v, explicit)) = broker.config.get(broker_key) {
                let source = if explicit {
                    ConfigSource::StaticBroker
                } else {
                    ConfigSource::Default
                };
                synonyms.push(synonym(broker_key, Some(StrBytes::from_string(v)), source));
            }
        }
        entry.synonyms = synonyms;
    }
    entry
}

fn entry(
    name: &'static str,
    value: Option<StrBytes>,
    source: ConfigSource,
    config_type: i8,
    documentation: &'static str,
    include: Include,
) -> DescribeConfigsResourceResult {
    let mut entry = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_static_str(name))
        .with_value(value)
        .with_config_source(source.code());
    if include.version >= 3 {
        entry.config_type = config_type;
        entry.documentation = include
            .documentation
            .then(|| StrBytes::from_static_str(documentation));
    }
    entry
}

fn synonym(
    name: &'static str,
    value: Option<StrBytes>,
    source: ConfigSource,
) -> DescribeConfigsSynonym {
    DescribeConfigsSynonym::default()
        .with_name(StrBytes::from_static_str(name))
        .with_value(value)
        .with_source(source.code())
}
