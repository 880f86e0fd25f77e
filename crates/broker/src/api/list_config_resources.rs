//! ListConfigResources (v0–1, KIP-1142; v0 was KIP-714's ListClientMetricsResources): the
//! resources an admin client can name in DescribeConfigs and AlterConfigs, from this
//! broker's metadata image. v0 lists client-metrics subscriptions only; v1 lists the
//! requested types (every supported type when none is named): topics, brokers and broker
//! loggers (one per registered broker), client metrics and groups. Strom keeps no client
//! metrics subscriptions and no group configs, so those two lists are empty. A type outside
//! the version's set fails the whole request with UNSUPPORTED_VERSION, as in Kafka.

use kafka_protocol::messages::list_config_resources_response::ConfigResource;
use kafka_protocol::messages::{ListConfigResourcesRequest, ListConfigResourcesResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::Broker;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
const BROKER_LOGGER: i8 = 8;
const CLIENT_METRICS: i8 = 16;
const GROUP: i8 = 32;

/// The types each version lists, in the order Kafka answers with them.
const V0_TYPES: &[i8] = &[CLIENT_METRICS];
const V1_TYPES: &[i8] = &[TOPIC, BROKER, BROKER_LOGGER, CLIENT_METRICS, GROUP];

pub fn handle(
    broker: &Broker,
    req: ListConfigResourcesRequest,
    version: i16,
) -> ListConfigResourcesResponse {
    let supported = if version == 0 { V0_TYPES } else { V1_TYPES };
    let wanted: Vec<i8> = if version == 0 || req.resource_types.is_empty() {
        supported.to_vec()
    } else {
        req.resource_types.clone()
    };
    if wanted.iter().any(|t| !supported.contains(t)) {
        return ListConfigResourcesResponse::default()
            .with_error_code(ResponseError::UnsupportedVersion.code());
    }
    let image = broker.topics.image();
    let mut resources = Vec::new();
    for resource_type in supported.iter().filter(|t| wanted.contains(t)) {
        let names: Vec<String> = match *resource_type {
            TOPIC => image.image.topic_ids.keys().cloned().collect(),
            BROKER | BROKER_LOGGER => image
                .image
                .brokers
                .keys()
                .map(|id| id.to_string())
                .collect(),
            _ => Vec::new(),
        };
        resources.extend(names.into_iter().map(|name| {
            ConfigResource::default()
                .with_resource_name(StrBytes::from_string(name))
                .with_resource_type(*resource_type)
        }));
    }
    ListConfigResourcesResponse::default().with_config_resources(resources)
}
