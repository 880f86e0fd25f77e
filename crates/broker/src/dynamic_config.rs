//! Dynamic broker configs (Kafka's `DynamicBrokerConfig`): broker settings changed at runtime
//! with AlterConfigs / IncrementalAlterConfigs on a BROKER resource, kept in the metadata
//! log as `Config` records of resource type 4 — name "" for the cluster-wide default, a
//! broker id for that broker alone — so every broker agrees on them.
//!
//! A broker config's effective value follows Kafka's order: the dynamic per-broker value,
//! the dynamic cluster default, `server.properties` (static), the built-in default. Topics
//! resolve each of their configs with no override of their own through the same order
//! ([`BrokerDefaults`]), so changing `log.retention.ms` for the cluster changes every topic
//! that does not set `retention.ms`.
//!
//! Which configs may change at runtime is Kafka's list: the broker synonyms of topic
//! configs (`log.segment.bytes`, `log.retention.ms`, `message.max.bytes`, …), the log
//! cleaner's, thread pools', connection limits' and replication throttles'. Those that are
//! topic synonyms take effect through the topics; the others are validated, stored and
//! described but not enforced yet (Strom has no such thread pools or throttles).

use std::collections::BTreeMap;

use strom_metadata::MetadataImage;

use crate::config::{self, BrokerConfig};
use crate::topic_config::{self, check_value, Check, ConfigSource, ConfigType};

/// Kafka's `ConfigResource.Type.BROKER`.
pub const BROKER_RESOURCE: i8 = 4;

/// One broker config that may be altered at runtime.
#[derive(Debug, Clone, Copy)]
pub struct DynamicDef {
    pub name: &'static str,
    pub config_type: ConfigType,
    pub check: Check,
    /// Kafka's default, as text.
    pub default: &'static str,
    pub documentation: &'static str,
}

const fn def(
    name: &'static str,
    config_type: ConfigType,
    check: Check,
    default: &'static str,
    documentation: &'static str,
) -> DynamicDef {
    DynamicDef {
        name,
        config_type,
        check,
        default,
        documentation,
    }
}

use ConfigType::{Boolean as B, Double as D, Int as I, Long as L, String as S};

/// Kafka's dynamic broker configs that are not broker synonyms of topic configs (those come
/// from [`topic_config::TOPIC_CONFIGS`]). Security and listener configs are left out:
/// Strom has neither TLS nor SASL, so they are not dynamic here.
static OTHER_DYNAMIC: &[DynamicDef] = &[
    def("log.cleaner.threads", I, Check::AtLeast(0), "1", "The number of background threads to use for log cleaning."),
    def("log.cleaner.dedupe.buffer.size", L, Check::AtLeast(0), "134217728", "The total memory used for log deduplication across all cleaner threads."),
    def("log.cleaner.io.buffer.load.factor", D, Check::Ratio(0.0, 1.0), "0.9", "Log cleaner dedupe buffer load factor."),
    def("log.cleaner.io.buffer.size", I, Check::AtLeast(0), "524288", "The total memory used for log cleaner I/O buffers across all cleaner threads."),
    def("log.cleaner.io.max.bytes.per.second", D, Check::Ratio(0.0, f64::MAX), "1.7976931348623157E308", "The log cleaner will be throttled so that the sum of its read and write i/o will be less than this value on average."),
    def("log.cleaner.backoff.ms", L, Check::AtLeast(0), "15000", "The amount of time to sleep when there are no logs to clean."),
    def("num.io.threads", I, Check::AtLeast(1), "8", "The number of threads that the server uses for processing requests."),
    def("num.network.threads", I, Check::AtLeast(1), "3", "The number of threads that the server uses for receiving requests from the network and sending responses."),
    def("num.replica.fetchers", I, Check::AtLeast(1), "1", "Number of fetcher threads used to replicate records from each source broker."),
    def("num.recovery.threads.per.data.dir", I, Check::AtLeast(1), "2", "The number of threads per data directory to be used for log recovery at startup and flushing at shutdown."),
    def("background.threads", I, Check::AtLeast(1), "10", "The number of threads to use for various background processing tasks."),
    def("max.connections", I, Check::AtLeast(0), "2147483647", "The maximum number of connections allowed in the broker at any time."),
    def("max.connections.per.ip", I, Check::AtLeast(0), "2147483647", "The maximum number of connections allowed from each ip address."),
    def("max.connections.per.ip.overrides", S, Check::Any, "", "A comma-separated list of per-ip or hostname overrides to the default maximum number of connections."),
    def("max.connection.creation.rate", I, Check::AtLeast(0), "2147483647", "The maximum connection creation rate allowed in the broker at any time."),
    def("producer.id.expiration.ms", I, Check::AtLeast(1), "86400000", "The time in ms that a topic partition leader will wait before expiring producer IDs."),
    def("transaction.partition.verification.enable", B, Check::Bool, "true", "Enable verification that checks that the partition has been added to the transaction before writing transactional records to the partition."),
    def("leader.replication.throttled.rate", L, Check::AtLeast(0), "9223372036854775807", "A long representing the upper bound (bytes/sec) on replication traffic for leaders enumerated in the leader.replication.throttled.replicas property."),
    def("follower.replication.throttled.rate", L, Check::AtLeast(0), "9223372036854775807", "A long representing the upper bound (bytes/sec) on replication traffic for followers enumerated in the follower.replication.throttled.replicas property."),
    def("replica.alter.log.dirs.io.max.bytes.per.second", L, Check::AtLeast(0), "9223372036854775807", "A long representing the upper bound (bytes/sec) on disk IO used for moving replica between log directories on the same broker."),
];

/// The dynamic broker config named `name`, if Kafka lets it change at runtime.
pub fn find(name: &str) -> Option<DynamicDef> {
    all().find(|d| d.name == name)
}

/// Every dynamic broker config.
pub fn all() -> impl Iterator<Item = DynamicDef> {
    topic_config::TOPIC_CONFIGS
        .iter()
        .filter_map(|d| d.broker_synonym.map(|s| synonym_def(s, d)))
        .chain(OTHER_DYNAMIC.iter().copied())
}

/// A topic config's broker synonym: the broker key's own schema where Strom implements the
/// key, else the topic config's.
fn synonym_def(name: &'static str, topic_def: &topic_config::TopicConfigDef) -> DynamicDef {
    match config::key_schema(name) {
        Some(key) => DynamicDef {
            name,
            config_type: key.config_type,
            check: key.check,
            default: if key.default.is_empty() {
                topic_def.default
            } else {
                key.default
            },
            documentation: key.documentation,
        },
        None => DynamicDef {
            name,
            config_type: topic_def.config_type,
            check: topic_def.check,
            default: topic_def.default,
            documentation: topic_def.documentation,
        },
    }
}

/// Dynamic broker configs that are not topic synonyms and that Strom follows at runtime.
const ENFORCED_OTHER: &[&str] = &[
    "producer.id.expiration.ms",
    "transaction.partition.verification.enable",
];

/// Whether a dynamic broker config changes behaviour today (through the topic config it is
/// the default of, or read where it applies); the others are stored and described only.
pub fn is_enforced(name: &str) -> bool {
    ENFORCED_OTHER.contains(&name)
        || topic_config::TOPIC_CONFIGS
            .iter()
            .any(|d| d.broker_synonym == Some(name) && topic_config::ENFORCED.contains(&d.name))
}

/// Why a broker config cannot be set at runtime: Kafka's INVALID_REQUEST message (Kafka
/// turns its config validation failures into INVALID_REQUEST, KAFKA-13609). Kafka also
/// accepts names it does not know (custom configs for plugins); Strom has no plugins to
/// read them, so an unknown name is refused, with the closest dynamic name as a hint.
pub fn check_settable(name: &str) -> Result<DynamicDef, String> {
    if let Some(def) = find(name) {
        return Ok(def);
    }
    if config::is_kafka_key(name) {
        return Err(format!(
            "Cannot update these configs dynamically: Set({name})"
        ));
    }
    let hint = config::closest(name, all().map(|d| d.name))
        .map(|s| format!(" (did you mean '{s}'?)"))
        .unwrap_or_default();
    Err(format!("Unknown broker config name: {name}{hint}"))
}

/// Checks a value for a dynamic broker config (the message names key and value).
pub fn check_broker_value(def: &DynamicDef, value: &str) -> Result<(), String> {
    check_value(def.name, def.check, def.config_type, value)
}

/// Kafka's broker config synonyms (`DynamicBrokerConfig.brokerConfigSynonyms`), in order of
/// precedence: a config set in ms wins over the same config in minutes or hours.
pub fn broker_synonyms(name: &str) -> Vec<&str> {
    match name {
        "log.roll.ms" | "log.roll.hours" => vec!["log.roll.ms", "log.roll.hours"],
        "log.roll.jitter.ms" | "log.roll.jitter.hours" => {
            vec!["log.roll.jitter.ms", "log.roll.jitter.hours"]
        }
        "log.flush.interval.ms" => vec!["log.flush.interval.ms", "log.flush.scheduler.interval.ms"],
        "log.retention.ms" | "log.retention.minutes" | "log.retention.hours" => {
            vec![
                "log.retention.ms",
                "log.retention.minutes",
                "log.retention.hours",
            ]
        }
        other => vec![other],
    }
}

/// The dynamic broker configs this broker follows, from the metadata image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynamicBrokerConfigs {
    /// Resource "": every broker's default.
    pub cluster_default: BTreeMap<String, String>,
    /// Resource "<node id>": this broker's own values.
    pub per_broker: BTreeMap<String, String>,
}

impl DynamicBrokerConfigs {
    /// The dynamic configs in the metadata this broker has applied.
    pub fn applied(broker: &crate::Broker) -> DynamicBrokerConfigs {
        DynamicBrokerConfigs::from_image(&broker.topics.image().image, broker.node_id)
    }

    pub fn from_image(image: &MetadataImage, node_id: i32) -> DynamicBrokerConfigs {
        let get = |name: String| {
            image
                .configs
                .get(&(BROKER_RESOURCE, name))
                .cloned()
                .unwrap_or_default()
        };
        DynamicBrokerConfigs {
            cluster_default: get(String::new()),
            per_broker: get(node_id.to_string()),
        }
    }
}

/// One level at which a broker config has a value (DescribeConfigs' synonyms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synonym {
    pub name: String,
    pub value: String,
    pub source: ConfigSource,
}

/// The broker-level values a broker config resolves through: dynamic per-broker, dynamic
/// cluster default, static, default.
#[derive(Debug, Clone, Copy)]
pub struct BrokerDefaults<'a> {
    pub config: &'a BrokerConfig,
    pub dynamic: &'a DynamicBrokerConfigs,
}

/// No dynamic configs: the static view, for code that has no metadata at hand.
static NO_DYNAMIC: DynamicBrokerConfigs = DynamicBrokerConfigs {
    cluster_default: BTreeMap::new(),
    per_broker: BTreeMap::new(),
};

impl<'a> BrokerDefaults<'a> {
    pub fn new(config: &'a BrokerConfig, dynamic: &'a DynamicBrokerConfigs) -> BrokerDefaults<'a> {
        BrokerDefaults { config, dynamic }
    }

    /// The static configuration alone (no dynamic configs).
    pub fn static_only(config: &'a BrokerConfig) -> BrokerDefaults<'a> {
        BrokerDefaults {
            config,
            dynamic: &NO_DYNAMIC,
        }
    }

    /// Every level where `name` or one of its synonyms has a value, in Kafka's order: each
    /// level (dynamic per-broker, dynamic cluster default, static, default) over the
    /// synonyms in order of precedence.
    pub fn synonyms(&self, name: &str) -> Vec<Synonym> {
        let names = broker_synonyms(name);
        let mut found = Vec::new();
        let mut add = |name: &str, value: Option<String>, source: ConfigSource| {
            if let Some(value) = value {
                found.push(Synonym {
                    name: name.to_string(),
                    value,
                    source,
                });
            }
        };
        for n in &names {
            add(
                n,
                self.dynamic.per_broker.get(*n).cloned(),
                ConfigSource::DynamicBroker,
            );
        }
        for n in &names {
            let value = self.dynamic.cluster_default.get(*n).cloned();
            add(n, value, ConfigSource::DynamicDefaultBroker);
        }
        for n in &names {
            let value = self.config.get(n).filter(|(_, explicit)| *explicit);
            add(n, value.map(|(v, _)| v), ConfigSource::StaticBroker);
        }
        for n in &names {
            add(n, literal_default(n), ConfigSource::Default);
        }
        found
    }

    /// The effective value of a broker config and where it came from; `None` for a name
    /// that is neither a Strom broker key nor a dynamic config.
    pub fn lookup(&self, name: &str) -> Option<(String, ConfigSource)> {
        let first = self.synonyms(name).into_iter().next();
        match first {
            Some(s) if s.source.is_dynamic() => Some((s.value, s.source)),
            // Static and default values come from the static configuration, which has
            // already turned hours and minutes into the ms key.
            Some(s) => match self.config.get(name) {
                Some((value, _)) => Some((value, s.source)),
                None => Some((s.value, s.source)),
            },
            None => self
                .config
                .get(name)
                .map(|(value, _)| (value, ConfigSource::Default)),
        }
    }
}

/// A broker config's built-in default as written (derived keys such as `log.roll.ms` have
/// none of their own).
fn literal_default(name: &str) -> Option<String> {
    match config::key_schema(name) {
        Some(key) => Some(key.default.to_string()).filter(|d| !d.is_empty()),
        None => find(name).map(|d| d.default.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic(cluster: &[(&str, &str)], broker: &[(&str, &str)]) -> DynamicBrokerConfigs {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        DynamicBrokerConfigs {
            cluster_default: map(cluster),
            per_broker: map(broker),
        }
    }

    #[test]
    fn per_broker_beats_cluster_default_beats_static_beats_default() {
        let (config, _) = BrokerConfig::from_properties("log.retention.ms=3000\n", &[]).unwrap();
        let none = dynamic(&[], &[]);
        let defaults = BrokerDefaults::new(&config, &none);
        assert_eq!(
            defaults.lookup("log.retention.ms"),
            Some(("3000".into(), ConfigSource::StaticBroker))
        );
        assert_eq!(
            defaults.lookup("log.segment.bytes"),
            Some(("1073741824".into(), ConfigSource::Default))
        );
        let cluster = dynamic(&[("log.retention.ms", "2000")], &[]);
        assert_eq!(
            BrokerDefaults::new(&config, &cluster).lookup("log.retention.ms"),
            Some(("2000".into(), ConfigSource::DynamicDefaultBroker))
        );
        let both = dynamic(
            &[("log.retention.ms", "2000")],
            &[("log.retention.ms", "1000")],
        );
        let defaults = BrokerDefaults::new(&config, &both);
        assert_eq!(
            defaults.lookup("log.retention.ms"),
            Some(("1000".into(), ConfigSource::DynamicBroker))
        );
        let sources: Vec<(String, ConfigSource)> = defaults
            .synonyms("log.retention.ms")
            .into_iter()
            .map(|s| (s.name, s.source))
            .collect();
        assert_eq!(
            sources,
            vec![
                ("log.retention.ms".into(), ConfigSource::DynamicBroker),
                (
                    "log.retention.ms".into(),
                    ConfigSource::DynamicDefaultBroker
                ),
                ("log.retention.ms".into(), ConfigSource::StaticBroker),
                ("log.retention.hours".into(), ConfigSource::Default),
            ],
            "Kafka's order: level by level, each over the synonyms"
        );
    }

    #[test]
    fn hours_set_statically_still_resolve_to_ms() {
        let (config, _) = BrokerConfig::from_properties("log.roll.hours=2\n", &[]).unwrap();
        let none = dynamic(&[], &[]);
        assert_eq!(
            BrokerDefaults::new(&config, &none).lookup("log.roll.ms"),
            Some(("7200000".into(), ConfigSource::StaticBroker))
        );
    }

    #[test]
    fn only_kafkas_dynamic_configs_may_change_at_runtime() {
        assert!(check_settable("log.retention.ms").is_ok());
        assert!(check_settable("message.max.bytes").is_ok());
        assert!(check_settable("log.cleaner.min.cleanable.ratio").is_ok());
        assert!(check_settable("num.io.threads").is_ok());
        assert_eq!(
            check_settable("log.retention.hours").unwrap_err(),
            "Cannot update these configs dynamically: Set(log.retention.hours)"
        );
        assert!(check_settable("node.id")
            .unwrap_err()
            .starts_with("Cannot update these configs dynamically"));
        assert!(check_settable("log.retention.msx")
            .unwrap_err()
            .contains("did you mean 'log.retention.ms'"));
        assert!(
            check_settable("leader.replication.throttled.replicas").is_err(),
            "a topic config without a broker synonym is no broker config"
        );
        let segment = find("log.segment.bytes").unwrap();
        assert_eq!(segment.config_type, ConfigType::Int);
        assert!(check_broker_value(&segment, "ten")
            .unwrap_err()
            .contains("log.segment.bytes"));
        assert!(is_enforced("log.segment.bytes"));
        assert!(!is_enforced("num.io.threads"));
        assert!(is_enforced("producer.id.expiration.ms"));
    }
}
