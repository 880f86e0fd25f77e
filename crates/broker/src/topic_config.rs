//! Topic-level configs by Kafka's names: definitions, validation, and resolution against the
//! broker's defaults (a topic override wins over the broker's synonym, which wins over the
//! built-in default).

use std::collections::BTreeMap;

use crate::dynamic_config::BrokerDefaults;

/// Kafka's config value types, as DescribeConfigs v3+ reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean,
    String,
    Int,
    Short,
    Long,
    Double,
    List,
    Class,
    Password,
}

impl ConfigType {
    pub fn describe_configs_code(self) -> i8 {
        match self {
            ConfigType::Boolean => 1,
            ConfigType::String => 2,
            ConfigType::Int => 3,
            ConfigType::Short => 4,
            ConfigType::Long => 5,
            ConfigType::Double => 6,
            ConfigType::List => 7,
            ConfigType::Class => 8,
            ConfigType::Password => 9,
        }
    }
}

/// Where an effective value came from (DescribeConfigs `config_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    DynamicTopic,
    /// A dynamic config of this broker (AlterConfigs on resource "<node id>").
    DynamicBroker,
    /// A dynamic cluster-wide default (AlterConfigs on resource "").
    DynamicDefaultBroker,
    StaticBroker,
    Default,
}

impl ConfigSource {
    pub fn code(self) -> i8 {
        match self {
            ConfigSource::DynamicTopic => 1,
            ConfigSource::DynamicBroker => 2,
            ConfigSource::DynamicDefaultBroker => 3,
            ConfigSource::StaticBroker => 4,
            ConfigSource::Default => 5,
        }
    }

    /// Set through AlterConfigs (kept in the metadata log).
    pub fn is_dynamic(self) -> bool {
        matches!(
            self,
            ConfigSource::DynamicTopic
                | ConfigSource::DynamicBroker
                | ConfigSource::DynamicDefaultBroker
        )
    }
}

/// What values a config accepts.
#[derive(Debug, Clone, Copy)]
pub enum Check {
    /// An integer of the type's width, at least `min`.
    AtLeast(i64),
    /// A double in `[min, max]`.
    Ratio(f64, f64),
    Bool,
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// A comma list whose items are each one of these.
    ListOf(&'static [&'static str]),
    /// Anything (lists of replicas, free text).
    Any,
}

/// One topic config.
#[derive(Debug)]
pub struct TopicConfigDef {
    pub name: &'static str,
    pub broker_synonym: Option<&'static str>,
    pub default: &'static str,
    pub config_type: ConfigType,
    pub check: Check,
    pub documentation: &'static str,
}

const COMPRESSION: &[&str] = &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"];

macro_rules! def {
    ($name:literal, $syn:expr, $default:literal, $ty:ident, $check:expr, $doc:literal) => {
        TopicConfigDef {
            name: $name,
            broker_synonym: $syn,
            default: $default,
            config_type: ConfigType::$ty,
            check: $check,
            documentation: $doc,
        }
    };
}

/// Every topic config of Kafka 4.x, alphabetically.
pub static TOPIC_CONFIGS: &[TopicConfigDef] = &[
    def!(
        "cleanup.policy",
        Some("log.cleanup.policy"),
        "delete",
        List,
        Check::ListOf(&["delete", "compact"]),
        "The retention policy to use on log segments: delete and/or compact."
    ),
    def!(
        "compression.gzip.level",
        Some("compression.gzip.level"),
        "-1",
        Int,
        Check::AtLeast(-1),
        "The compression level to use if compression.type is set to gzip."
    ),
    def!(
        "compression.lz4.level",
        Some("compression.lz4.level"),
        "9",
        Int,
        Check::AtLeast(1),
        "The compression level to use if compression.type is set to lz4."
    ),
    def!(
        "compression.type",
        Some("compression.type"),
        "producer",
        String,
        Check::OneOf(COMPRESSION),
        "The final compression type for a given topic; 'producer' retains the producer's codec."
    ),
    def!(
        "compression.zstd.level",
        Some("compression.zstd.level"),
        "3",
        Int,
        Check::AtLeast(-131072),
        "The compression level to use if compression.type is set to zstd."
    ),
    def!(
        "delete.retention.ms",
        Some("log.cleaner.delete.retention.ms"),
        "86400000",
        Long,
        Check::AtLeast(0),
        "How long delete tombstones are retained for compacted topics."
    ),
    def!(
        "file.delete.delay.ms",
        Some("log.segment.delete.delay.ms"),
        "60000",
        Long,
        Check::AtLeast(0),
        "The time to wait before deleting a file from the filesystem."
    ),
    def!(
        "flush.messages",
        Some("log.flush.interval.messages"),
        "9223372036854775807",
        Long,
        Check::AtLeast(1),
        "Force an fsync of the log after this many messages."
    ),
    def!(
        "flush.ms",
        Some("log.flush.interval.ms"),
        "9223372036854775807",
        Long,
        Check::AtLeast(0),
        "Force an fsync of the log after this much time."
    ),
    def!(
        "follower.replication.throttled.replicas",
        None,
        "",
        List,
        Check::Any,
        "Replicas whose log replication is throttled on the follower side."
    ),
    def!(
        "index.interval.bytes",
        Some("log.index.interval.bytes"),
        "4096",
        Int,
        Check::AtLeast(0),
        "How frequently an entry is added to the offset index."
    ),
    def!(
        "leader.replication.throttled.replicas",
        None,
        "",
        List,
        Check::Any,
        "Replicas whose log replication is throttled on the leader side."
    ),
    def!(
        "local.retention.bytes",
        Some("log.local.retention.bytes"),
        "-2",
        Long,
        Check::AtLeast(-2),
        "The maximum size local log segments can grow to before deletion (tiered storage)."
    ),
    def!(
        "local.retention.ms",
        Some("log.local.retention.ms"),
        "-2",
        Long,
        Check::AtLeast(-2),
        "How long local log segments are retained before deletion (tiered storage)."
    ),
    def!(
        "max.compaction.lag.ms",
        Some("log.cleaner.max.compaction.lag.ms"),
        "9223372036854775807",
        Long,
        Check::AtLeast(1),
        "The maximum time a message remains ineligible for compaction."
    ),
    def!(
        "max.message.bytes",
        Some("message.max.bytes"),
        "1048588",
        Int,
        Check::AtLeast(0),
        "The largest record batch size allowed."
    ),
    def!(
        "message.timestamp.after.max.ms",
        Some("log.message.timestamp.after.max.ms"),
        "3600000",
        Long,
        Check::AtLeast(0),
        "How far in the future a message timestamp may be from the broker's time."
    ),
    def!(
        "message.timestamp.before.max.ms",
        Some("log.message.timestamp.before.max.ms"),
        "9223372036854775807",
        Long,
        Check::AtLeast(0),
        "How far in the past a message timestamp may be from the broker's time."
    ),
    def!(
        "message.timestamp.type",
        Some("log.message.timestamp.type"),
        "CreateTime",
        String,
        Check::OneOf(&["CreateTime", "LogAppendTime"]),
        "Whether record timestamps are the producer's create time or the log append time."
    ),
    def!(
        "min.cleanable.dirty.ratio",
        Some("log.cleaner.min.cleanable.ratio"),
        "0.5",
        Double,
        Check::Ratio(0.0, 1.0),
        "The minimum ratio of dirty log to total log for a log to be eligible for cleaning."
    ),
    def!(
        "min.compaction.lag.ms",
        Some("log.cleaner.min.compaction.lag.ms"),
        "0",
        Long,
        Check::AtLeast(0),
        "The minimum time a message remains uncompacted in the log."
    ),
    def!(
        "min.insync.replicas",
        Some("min.insync.replicas"),
        "1",
        Int,
        Check::AtLeast(1),
        "The minimum number of in-sync replicas that must acknowledge a write with acks=all."
    ),
    def!(
        "preallocate",
        Some("log.preallocate"),
        "false",
        Boolean,
        Check::Bool,
        "Whether to preallocate the file on disk when creating a new log segment."
    ),
    def!(
        "remote.log.copy.disable",
        None,
        "false",
        Boolean,
        Check::Bool,
        "Disables copying segments to tiered storage."
    ),
    def!(
        "remote.log.delete.on.disable",
        None,
        "false",
        Boolean,
        Check::Bool,
        "Deletes tiered data when tiered storage is disabled for the topic."
    ),
    def!(
        "remote.storage.enable",
        None,
        "false",
        Boolean,
        Check::Bool,
        "Enables tiered storage for the topic."
    ),
    def!(
        "retention.bytes",
        Some("log.retention.bytes"),
        "-1",
        Long,
        Check::AtLeast(-1),
        "The maximum size a partition can grow to before old segments are discarded."
    ),
    def!(
        "retention.ms",
        Some("log.retention.ms"),
        "604800000",
        Long,
        Check::AtLeast(-1),
        "How long a log is retained before old segments are discarded."
    ),
    def!(
        "segment.bytes",
        Some("log.segment.bytes"),
        "1073741824",
        Int,
        Check::AtLeast(1_048_576),
        "The segment file size for the log."
    ),
    def!(
        "segment.index.bytes",
        Some("log.index.size.max.bytes"),
        "10485760",
        Int,
        Check::AtLeast(4),
        "The size of the index that maps offsets to file positions."
    ),
    def!(
        "segment.jitter.ms",
        Some("log.roll.jitter.ms"),
        "0",
        Long,
        Check::AtLeast(0),
        "The maximum random jitter subtracted from the scheduled segment roll time."
    ),
    def!(
        "segment.ms",
        Some("log.roll.ms"),
        "604800000",
        Long,
        Check::AtLeast(1),
        "The period after which the log rolls a new segment even if it is not full."
    ),
    def!(
        "unclean.leader.election.enable",
        Some("unclean.leader.election.enable"),
        "false",
        Boolean,
        Check::Bool,
        "Whether replicas outside the ISR may be elected leader as a last resort."
    ),
];

pub fn find(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks a value against a definition's rule; the message names the key and value.
pub fn check_value(
    name: &str,
    check: Check,
    config_type: ConfigType,
    value: &str,
) -> Result<(), String> {
    let invalid = |why: String| {
        Err(format!(
            "Invalid value {value} for configuration {name}: {why}"
        ))
    };
    let trimmed = value.trim();
    match check {
        Check::AtLeast(min) => {
            let parsed = match config_type {
                ConfigType::Int => trimmed.parse::<i32>().map(i64::from).ok(),
                ConfigType::Short => trimmed.parse::<i16>().map(i64::from).ok(),
                _ => trimmed.parse::<i64>().ok(),
            };
            match parsed {
                None => invalid(format!("Not a number of type {config_type:?}")),
                Some(v) if v < min => invalid(format!("Value must be at least {min}")),
                Some(_) => Ok(()),
            }
        }
        Check::Ratio(min, max) => match trimmed.parse::<f64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(()),
            Ok(_) => invalid(format!("Value must be in [{min},...,{max}]")),
            Err(_) => invalid("Not a number of type DOUBLE".into()),
        },
        Check::Bool => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "false" => Ok(()),
            _ => invalid("Expected value to be either true or false".into()),
        },
        Check::OneOf(allowed) => {
            if allowed.contains(&trimmed) {
                Ok(())
            } else {
                invalid(format!("String must be one of: {}", allowed.join(", ")))
            }
        }
        Check::ListOf(allowed) => {
            for item in trimmed.split(',').map(str::trim) {
                if !allowed.contains(&item) {
                    return invalid(format!("Each item must be one of: {}", allowed.join(", ")));
                }
            }
            Ok(())
        }
        Check::Any => Ok(()),
    }
}

/// Topic configs whose behaviour is built: the rest are validated, stored and described, and
/// setting them logs that they are not enforced yet.
pub const ENFORCED: &[&str] = &[
    "cleanup.policy",
    "delete.retention.ms",
    "flush.messages",
    "flush.ms",
    "index.interval.bytes",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "segment.bytes",
    "segment.index.bytes",
    "segment.ms",
];

/// Validates one topic config: its name must be a topic config, its value legal.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let Some(def) = find(name) else {
        let names = TOPIC_CONFIGS.iter().map(|d| d.name);
        let hint = crate::config::closest(name, names)
            .map(|s| format!(" (did you mean '{s}'?)"))
            .unwrap_or_default();
        return Err(format!("Unknown topic config name: {name}{hint}"));
    };
    check_value(name, def.check, def.config_type, value)
}

/// The effective value of a topic config and where it came from: the topic's override,
/// else its broker synonym (dynamic per-broker, dynamic cluster default, static, default),
/// else the topic config's default.
pub fn effective_value(
    def: &TopicConfigDef,
    overrides: &BTreeMap<String, String>,
    broker: &BrokerDefaults,
) -> (String, ConfigSource) {
    if let Some(v) = overrides.get(def.name) {
        return (v.clone(), ConfigSource::DynamicTopic);
    }
    if let Some(found) = def.broker_synonym.and_then(|s| broker.lookup(s)) {
        return found;
    }
    (def.default.to_string(), ConfigSource::Default)
}

/// The typed settings a topic's logs and requests need.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub flush_messages: i64,
    pub flush_ms: i64,
    pub index_interval_bytes: u32,
    pub segment_index_bytes: u32,
    pub max_message_bytes: i32,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub min_insync_replicas: i32,
    pub cleanup_policy_compact: bool,
    /// `cleanup.policy` holds `delete`: retention applies.
    pub cleanup_policy_delete: bool,
    pub message_timestamp_type_log_append: bool,
    pub message_timestamp_before_max_ms: i64,
    pub message_timestamp_after_max_ms: i64,
    /// Log compaction (`cleanup.policy` holds `compact`): see [`compaction`].
    pub min_cleanable_dirty_ratio: f64,
    pub min_compaction_lag_ms: i64,
    pub max_compaction_lag_ms: i64,
    pub delete_retention_ms: i64,
}

/// The compaction settings of a topic's logs.
pub fn compaction(settings: &LogConfig) -> strom_storage::CompactionConfig {
    strom_storage::CompactionConfig {
        min_cleanable_dirty_ratio: settings.min_cleanable_dirty_ratio,
        min_compaction_lag_ms: settings.min_compaction_lag_ms,
        max_compaction_lag_ms: settings.max_compaction_lag_ms,
        delete_retention_ms: settings.delete_retention_ms,
    }
}

/// Resolves a topic's typed settings from its overrides and the broker-level values.
pub fn resolve(overrides: &BTreeMap<String, String>, broker: &BrokerDefaults) -> LogConfig {
    let value = |name: &str| {
        find(name)
            .map(|def| effective_value(def, overrides, broker).0)
            .unwrap_or_default()
    };
    let int = |name: &str, fallback: i64| value(name).trim().parse::<i64>().unwrap_or(fallback);
    LogConfig {
        segment_bytes: int("segment.bytes", 1 << 30).max(1) as u64,
        segment_ms: int("segment.ms", 604_800_000),
        flush_messages: int("flush.messages", i64::MAX),
        flush_ms: int("flush.ms", i64::MAX),
        index_interval_bytes: int("index.interval.bytes", 4096).clamp(0, i64::from(u32::MAX))
            as u32,
        segment_index_bytes: int("segment.index.bytes", 10 << 20).clamp(4, i64::from(u32::MAX))
            as u32,
        max_message_bytes: int("max.message.bytes", 1_048_588).clamp(0, i64::from(i32::MAX)) as i32,
        retention_ms: int("retention.ms", 604_800_000),
        retention_bytes: int("retention.bytes", -1),
        min_insync_replicas: int("min.insync.replicas", 1).clamp(1, i64::from(i32::MAX)) as i32,
        cleanup_policy_compact: value("cleanup.policy")
            .split(',')
            .any(|p| p.trim() == "compact"),
        cleanup_policy_delete: value("cleanup.policy")
            .split(',')
            .any(|p| p.trim() == "delete"),
        message_timestamp_type_log_append: value("message.timestamp.type") == "LogAppendTime",
        message_timestamp_before_max_ms: int("message.timestamp.before.max.ms", i64::MAX).max(0),
        message_timestamp_after_max_ms: int("message.timestamp.after.max.ms", 3_600_000).max(0),
        min_cleanable_dirty_ratio: value("min.cleanable.dirty.ratio")
            .trim()
            .parse::<f64>()
            .unwrap_or(0.5),
        min_compaction_lag_ms: int("min.compaction.lag.ms", 0).max(0),
        max_compaction_lag_ms: int("max.compaction.lag.ms", i64::MAX).max(1),
        delete_retention_ms: int("delete.retention.ms", 86_400_000).max(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key_and_suggests_a_fix() {
        assert!(validate("retention.ms", "1000").is_ok());
        assert!(validate("retention.ms", "-1").is_ok());
        assert!(validate("retention.ms", "-2")
            .unwrap_err()
            .contains("retention.ms"));
        assert!(validate("retention.ms", "ten")
            .unwrap_err()
            .contains("Not a number"));
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
        assert!(validate("cleanup.policy", "shred").is_err());
        assert!(validate("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(
            validate("max.message.bytes", "3000000000").is_err(),
            "overflows an int"
        );
        assert!(validate("retention.mss", "1")
            .unwrap_err()
            .contains("did you mean 'retention.ms'"));
    }

    #[test]
    fn overrides_beat_dynamic_broker_values_which_beat_static_ones_which_beat_defaults() {
        use crate::config::BrokerConfig;
        use crate::dynamic_config::DynamicBrokerConfigs;
        let (config, _) =
            BrokerConfig::from_properties("log.segment.bytes=2097152\n", &[]).unwrap();
        let broker = BrokerDefaults::static_only(&config);
        let mut overrides = BTreeMap::new();
        let segment = find("segment.bytes").unwrap();
        assert_eq!(
            effective_value(segment, &overrides, &broker),
            ("2097152".into(), ConfigSource::StaticBroker)
        );
        let retention = find("retention.ms").unwrap();
        assert_eq!(
            effective_value(retention, &overrides, &broker),
            ("604800000".into(), ConfigSource::Default)
        );
        let mut dynamic = DynamicBrokerConfigs::default();
        dynamic
            .cluster_default
            .insert("log.segment.bytes".into(), "3145728".into());
        dynamic
            .cluster_default
            .insert("log.retention.ms".into(), "1000".into());
        dynamic
            .per_broker
            .insert("log.retention.ms".into(), "2000".into());
        let broker = BrokerDefaults::new(&config, &dynamic);
        assert_eq!(
            effective_value(segment, &overrides, &broker),
            ("3145728".into(), ConfigSource::DynamicDefaultBroker)
        );
        assert_eq!(
            effective_value(retention, &overrides, &broker),
            ("2000".into(), ConfigSource::DynamicBroker)
        );
        assert_eq!(resolve(&overrides, &broker).retention_ms, 2000);
        overrides.insert("segment.bytes".to_string(), "1048576".to_string());
        assert_eq!(
            effective_value(segment, &overrides, &broker),
            ("1048576".into(), ConfigSource::DynamicTopic)
        );
        assert_eq!(resolve(&overrides, &broker).segment_bytes, 1_048_576);
    }
}
