//! Broker configuration with Kafka's property names: a `server.properties` text plus
//! `--override key=value` lines on top of the embedded defaults.
//!
//! Every key is one of three kinds: implemented (typed, validated, used), known to Kafka but
//! not implemented yet (accepted with one warning, so existing Kafka files start), or unknown
//! (an error naming the key and the closest known key).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::topic_config::{check_value, Check, ConfigType};

/// A configuration problem; the process exits with code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown config key '{key}'{}", suggestion.as_ref().map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default())]
    UnknownKey {
        key: String,
        suggestion: Option<String>,
    },
    #[error("invalid value '{value}' for config key '{key}': {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("malformed line {line}: {text:?} (expected key=value)")]
    Malformed { line: usize, text: String },
}

/// One implemented broker key.
struct KeyDef {
    name: &'static str,
    /// Default as text; empty for keys whose default derives from another key.
    default: &'static str,
    config_type: ConfigType,
    check: Check,
    doc: &'static str,
}

const fn key(
    name: &'static str,
    default: &'static str,
    config_type: ConfigType,
    check: Check,
    doc: &'static str,
) -> KeyDef {
    KeyDef {
        name,
        default,
        config_type,
        check,
        doc,
    }
}

use ConfigType::{Boolean as B, Int as I, List as L, Long as Lg, Short as S, String as Str};

/// The keys Strom implements, with Kafka's defaults except where the embedded default differs
/// (`node.id`, `process.roles`, `listeners`, `log.dir`, `log.flush.interval.ms`).
static KEYS: &[KeyDef] = &[
    key("offsets.topic.num.partitions", "50", I, Check::AtLeast(1), "Partitions of __consumer_offsets (fixed once it exists)."),
    key("group.initial.rebalance.delay.ms", "3000", I, Check::AtLeast(0), "How long a new group waits for more members before its first rebalance."),
    key("group.min.session.timeout.ms", "6000", I, Check::AtLeast(0), "Smallest session timeout a member may ask for."),
    key("group.max.session.timeout.ms", "1800000", I, Check::AtLeast(0), "Largest session timeout a member may ask for."),
    key("group.max.size", "2147483647", I, Check::AtLeast(1), "Most members a group may have."),
    key("group.consumer.session.timeout.ms", "45000", I, Check::AtLeast(1), "Session timeout of KIP-848 consumer group members."),
    key("group.consumer.heartbeat.interval.ms", "5000", I, Check::AtLeast(1), "Heartbeat interval given to KIP-848 consumer group members."),
    key("group.consumer.max.size", "2147483647", I, Check::AtLeast(1), "Most members a KIP-848 consumer group may have."),
    key("offset.metadata.max.bytes", "4096", I, Check::AtLeast(0), "Largest metadata string of a committed offset."),
    key("offsets.retention.minutes", "10080", I, Check::AtLeast(1), "How long the offsets of an empty group are kept."),
    key("offsets.retention.check.interval.ms", "600000", Lg, Check::AtLeast(1), "How often expired offsets are removed."),
    key("log.cleaner.enable", "true", B, Check::Bool, "Run the log cleaner, which compacts topics whose cleanup.policy holds compact."),
    key("log.cleaner.threads", "1", I, Check::AtLeast(0), "Background threads cleaning logs."),
    key("log.cleaner.backoff.ms", "15000", Lg, Check::AtLeast(0), "How long a cleaner thread sleeps when no log needs cleaning."),
    key("log.cleaner.dedupe.buffer.size", "134217728", Lg, Check::AtLeast(0), "Memory of the cleaners' offset maps, split between the cleaner threads."),
    key("log.cleaner.io.buffer.load.factor", "0.9", ConfigType::Double, Check::Ratio(0.0, 1.0), "How full an offset map may get."),
    key("log.cleaner.io.max.bytes.per.second", "1.7976931348623157E308", ConfigType::Double, Check::Ratio(0.0, f64::MAX), "Bytes per second the cleaners read and write, all threads together."),
    key("log.cleaner.delete.retention.ms", "86400000", Lg, Check::AtLeast(0), "Default delete.retention.ms of topics."),
    key("log.cleaner.min.cleanable.ratio", "0.5", ConfigType::Double, Check::Ratio(0.0, 1.0), "Default min.cleanable.dirty.ratio of topics."),
    key("log.cleaner.min.compaction.lag.ms", "0", Lg, Check::AtLeast(0), "Default min.compaction.lag.ms of topics."),
    key("log.cleaner.max.compaction.lag.ms", "9223372036854775807", Lg, Check::AtLeast(1), "Default max.compaction.lag.ms of topics."),
    key("transaction.state.log.num.partitions", "50", I, Check::AtLeast(1), "Partitions of __transaction_state (fixed once it exists)."),
    key("transaction.state.log.replication.factor", "3", S, Check::AtLeast(1), "Replicas of __transaction_state (at most the live brokers when it is created)."),
    key("transaction.state.log.min.isr", "2", I, Check::AtLeast(1), "min.insync.replicas of __transaction_state (at most its replication factor)."),
    key("transaction.state.log.segment.bytes", "104857600", I, Check::AtLeast(1), "segment.bytes of __transaction_state."),
    key("transaction.state.log.load.buffer.size", "5242880", I, Check::AtLeast(1), "Bytes read at a time while a __transaction_state partition loads."),
    key("transaction.max.timeout.ms", "900000", I, Check::AtLeast(1), "Longest transaction timeout a producer may ask for."),
    key("transactional.id.expiration.ms", "604800000", I, Check::AtLeast(1), "How long a transactional id without transactions is kept."),
    key("transaction.abort.timed.out.transaction.cleanup.interval.ms", "10000", I, Check::AtLeast(1), "How often transactions past their timeout are aborted."),
    key("transaction.remove.expired.transaction.cleanup.interval.ms", "3600000", I, Check::AtLeast(1), "How often expired transactional ids are removed."),
    key("transaction.partition.verification.enable", "true", B, Check::Bool, "Enable verification that checks that the partition has been added to the transaction before writing transactional records to the partition."),
    key("quota.window.num", "11", I, Check::AtLeast(1), "Windows a client quota's rate is measured over."),
    key("quota.window.size.seconds", "1", I, Check::AtLeast(1), "Length of one client quota window."),
    key("producer.id.expiration.ms", "86400000", I, Check::AtLeast(1), "The time in ms that a topic partition leader will wait before expiring producer IDs."),
    key("producer.id.expiration.check.interval.ms", "600000", I, Check::AtLeast(1), "The interval at which to remove producer IDs that have expired due to producer.id.expiration.ms passing."),
    key(
        "node.id",
        "1",
        I,
        Check::AtLeast(0),
        "The node id of this server.",
    ),
    key(
        "process.roles",
        "broker,controller",
        L,
        Check::ListOf(&["broker", "controller"]),
        "The roles this process plays.",
    ),
    key(
        "listeners",
        "PLAINTEXT://127.0.0.1:9092",
        L,
        Check::Any,
        "Listener names, hosts and ports, NAME://host:port.",
    ),
    key(
        "advertised.listeners",
        "",
        L,
        Check::Any,
        "Listeners published to clients; defaults to `listeners`.",
    ),
    key(
        "controller.listener.names",
        "CONTROLLER",
        L,
        Check::Any,
        "Listener names used by the controller.",
    ),
    key(
        "controller.quorum.voters",
        "",
        L,
        Check::Any,
        "The controller quorum, id@host:port,...",
    ),
    key(
        "inter.broker.listener.name",
        "PLAINTEXT",
        Str,
        Check::Any,
        "The listener brokers use among themselves.",
    ),
    key(
        "log.dir",
        "./strom-data",
        Str,
        Check::Any,
        "The data directory (used when log.dirs is not set).",
    ),
    key(
        "log.dirs",
        "",
        L,
        Check::Any,
        "Data directories; defaults to log.dir.",
    ),
    key(
        "num.partitions",
        "1",
        I,
        Check::AtLeast(1),
        "Default number of partitions of a new topic.",
    ),
    key(
        "default.replication.factor",
        "1",
        S,
        Check::AtLeast(1),
        "Default replication factor of a new topic.",
    ),
    key(
        "min.insync.replicas",
        "1",
        I,
        Check::AtLeast(1),
        "Minimum ISR size for acks=all writes.",
    ),
    key(
        "auto.create.topics.enable",
        "true",
        B,
        Check::Bool,
        "Create topics on metadata requests for unknown topics.",
    ),
    key(
        "delete.topic.enable",
        "true",
        B,
        Check::Bool,
        "Allow deleting topics.",
    ),
    key(
        "log.segment.bytes",
        "1073741824",
        I,
        Check::AtLeast(14),
        "Maximum size of a segment file.",
    ),
    key(
        "log.roll.hours",
        "168",
        I,
        Check::AtLeast(1),
        "Roll a segment after this many hours.",
    ),
    key(
        "log.roll.ms",
        "",
        Lg,
        Check::AtLeast(1),
        "Roll a segment after this many ms; overrides log.roll.hours.",
    ),
    key(
        "log.flush.interval.messages",
        "9223372036854775807",
        Lg,
        Check::AtLeast(1),
        "Fsync after this many messages.",
    ),
    key(
        "log.flush.interval.ms",
        "1000",
        Lg,
        Check::AtLeast(0),
        "Fsync dirty logs on this interval (Strom's default: 1000).",
    ),
    key(
        "log.index.interval.bytes",
        "4096",
        I,
        Check::AtLeast(0),
        "Bytes between offset index entries.",
    ),
    key(
        "log.index.size.max.bytes",
        "10485760",
        I,
        Check::AtLeast(4),
        "Maximum size of an offset index.",
    ),
    key(
        "log.retention.hours",
        "168",
        I,
        Check::AtLeast(-1),
        "Retention time in hours.",
    ),
    key(
        "log.retention.minutes",
        "",
        I,
        Check::AtLeast(-1),
        "Retention time in minutes; overrides hours.",
    ),
    key(
        "log.retention.ms",
        "",
        Lg,
        Check::AtLeast(-1),
        "Retention time in ms; overrides minutes and hours.",
    ),
    key(
        "log.retention.bytes",
        "-1",
        Lg,
        Check::AtLeast(-1),
        "Retention size per partition.",
    ),
    key(
        "log.retention.check.interval.ms",
        "300000",
        Lg,
        Check::AtLeast(1),
        "How often retention is checked.",
    ),
    key(
        "log.cleanup.policy",
        "delete",
        L,
        Check::ListOf(&["delete", "compact"]),
        "Default cleanup policy.",
    ),
    key(
        "message.max.bytes",
        "1048588",
        I,
        Check::AtLeast(0),
        "Largest record batch accepted.",
    ),
    key(
        "socket.request.max.bytes",
        "104857600",
        I,
        Check::AtLeast(1),
        "Largest request frame accepted.",
    ),
    key(
        "max.connections",
        "2147483647",
        I,
        Check::AtLeast(0),
        "Maximum client connections.",
    ),
    key(
        "queued.max.request.bytes",
        "-1",
        Lg,
        Check::AtLeast(-1),
        "Bytes of requests being read or served before the broker pauses reading sockets (-1: no limit).",
    ),
    key(
        "broker.heartbeat.interval.ms",
        "2000",
        I,
        Check::AtLeast(1),
        "How often a broker heartbeats to the active controller.",
    ),
    key(
        "broker.session.timeout.ms",
        "9000",
        I,
        Check::AtLeast(1),
        "A broker that has not heartbeated for this long is fenced.",
    ),
    key(
        "controller.quorum.election.timeout.ms",
        "1000",
        I,
        Check::AtLeast(1),
        "How long a controller waits without hearing from the leader before standing for election.",
    ),
    key(
        "offsets.topic.replication.factor",
        "3",
        S,
        Check::AtLeast(1),
        "Replicas of __consumer_offsets (at most the live brokers when it is created).",
    ),
    key(
        "auto.leader.rebalance.enable",
        "true",
        B,
        Check::Bool,
        "Move leadership back to preferred replicas that are in sync.",
    ),
    key(
        "leader.imbalance.check.interval.seconds",
        "300",
        Lg,
        Check::AtLeast(1),
        "How often the active controller moves leadership back to preferred replicas.",
    ),
    key(
        "replica.lag.time.max.ms",
        "30000",
        Lg,
        Check::AtLeast(1),
        "A follower that has not caught up with the leader's log end for this long leaves the ISR.",
    ),
    key(
        "replica.fetch.wait.max.ms",
        "500",
        I,
        Check::AtLeast(0),
        "Longest a follower's fetch waits at the leader for new records.",
    ),
    key(
        "replica.fetch.max.bytes",
        "1048576",
        I,
        Check::AtLeast(0),
        "Bytes a follower fetches per partition in one request.",
    ),
    key(
        "replica.fetch.response.max.bytes",
        "10485760",
        I,
        Check::AtLeast(0),
        "Bytes a follower fetches in one request.",
    ),
    key(
        "replica.fetch.backoff.ms",
        "1000",
        I,
        Check::AtLeast(0),
        "Pause after a failed follower fetch.",
    ),
    key(
        "replica.socket.timeout.ms",
        "30000",
        I,
        Check::AtLeast(1),
        "Longest a follower waits for a fetch response.",
    ),
    key(
        "broker.rack",
        "",
        Str,
        Check::Any,
        "The rack of this broker, for rack-aware replica placement.",
    ),
    key(
        "log.message.timestamp.type",
        "CreateTime",
        Str,
        Check::OneOf(&["CreateTime", "LogAppendTime"]),
        "Default timestamp type.",
    ),
    key(
        "compression.type",
        "producer",
        Str,
        Check::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
        "Default compression type.",
    ),
];

/// An implemented key's schema, for the dynamic broker configs that share it.
#[derive(Debug, Clone, Copy)]
pub struct KeySchema {
    pub config_type: ConfigType,
    pub check: Check,
    /// Empty for keys whose default derives from another key.
    pub default: &'static str,
    pub documentation: &'static str,
}

/// The schema of an implemented key.
pub fn key_schema(name: &str) -> Option<KeySchema> {
    KEYS.iter().find(|d| d.name == name).map(|d| KeySchema {
        config_type: d.config_type,
        check: d.check,
        default: d.default,
        documentation: d.doc,
    })
}

/// Whether Kafka has a broker key of this name (implemented by Strom or not).
pub fn is_kafka_key(name: &str) -> bool {
    KEYS.iter().any(|d| d.name == name) || KNOWN_UNIMPLEMENTED.contains(&name)
}

/// Kafka broker keys Strom accepts but does not implement yet: each gets one warning.
static KNOWN_UNIMPLEMENTED: &[&str] = &[
    "advertised.host.name",
    "advertised.port",
    "alter.config.policy.class.name",
    "alter.log.dirs.replication.quota.window.num",
    "authorizer.class.name",
    "auto.include.jmx.reporter",
    "background.threads",
    "broker.id",
    "client.quota.callback.class",
    "compression.gzip.level",
    "compression.lz4.level",
    "compression.zstd.level",
    "connection.failed.authentication.delay.ms",
    "connections.max.idle.ms",
    "connections.max.reauth.ms",
    "controlled.shutdown.enable",
    "controller.quorum.append.linger.ms",
    "controller.quorum.bootstrap.servers",
    "controller.quorum.election.backoff.max.ms",
    "controller.quorum.fetch.timeout.ms",
    "controller.quorum.request.timeout.ms",
    "controller.quorum.retry.backoff.ms",
    "controller.socket.timeout.ms",
    "create.topic.policy.class.name",
    "delegation.token.expiry.time.ms",
    "delegation.token.max.lifetime.ms",
    "delegation.token.secret.key",
    "delete.records.purgatory.purge.interval.requests",
    "early.start.listeners",
    "fetch.max.bytes",
    "fetch.purgatory.purge.interval.requests",
    "group.consumer.heartbeat.interval.ms",
    "group.consumer.max.size",
    "group.consumer.session.timeout.ms",
    "group.coordinator.rebalance.protocols",
    "group.coordinator.threads",
    "group.initial.rebalance.delay.ms",
    "group.max.session.timeout.ms",
    "group.max.size",
    "group.min.session.timeout.ms",
    "group.share.enable",
    "initial.broker.registration.timeout.ms",
    "inter.broker.protocol.version",
    "kafka.metrics.polling.interval.secs",
    "kafka.metrics.reporters",
    "leader.imbalance.per.broker.percentage",
    "listener.security.protocol.map",
    "log.cleaner.io.buffer.size",
    "log.dir.failure.timeout.ms",
    "log.flush.scheduler.interval.ms",
    "log.local.retention.bytes",
    "log.local.retention.ms",
    "log.message.timestamp.after.max.ms",
    "log.message.timestamp.before.max.ms",
    "log.preallocate",
    "log.roll.jitter.hours",
    "log.roll.jitter.ms",
    "log.segment.delete.delay.ms",
    "max.connection.creation.rate",
    "max.connections.per.ip",
    "max.connections.per.ip.overrides",
    "max.incremental.fetch.session.cache.slots",
    "metadata.log.dir",
    "metadata.log.max.record.bytes.between.snapshots",
    "metadata.log.max.snapshot.interval.ms",
    "metadata.log.segment.bytes",
    "metadata.log.segment.ms",
    "metadata.max.idle.interval.ms",
    "metadata.max.retention.bytes",
    "metadata.max.retention.ms",
    "metric.reporters",
    "metrics.num.samples",
    "metrics.recording.level",
    "metrics.sample.window.ms",
    "node.id.generation",
    "num.io.threads",
    "num.network.threads",
    "num.partitions.default",
    "num.recovery.threads.per.data.dir",
    "num.replica.alter.log.dirs.threads",
    "num.replica.fetchers",
    "offset.metadata.max.bytes",
    "offsets.commit.timeout.ms",
    "offsets.load.buffer.size",
    "offsets.retention.check.interval.ms",
    "offsets.retention.minutes",
    "offsets.topic.compression.codec",
    "offsets.topic.num.partitions",
    "offsets.topic.segment.bytes",
    "password.encoder.secret",
    "principal.builder.class",
    "producer.purgatory.purge.interval.requests",
    "queued.max.requests",
    "queued.max.requests.bytes",
    "remote.log.manager.task.interval.ms",
    "remote.log.storage.system.enable",
    "replica.fetch.min.bytes",
    "replica.high.watermark.checkpoint.interval.ms",
    "replica.selector.class",
    "replica.socket.receive.buffer.bytes",
    "replication.quota.window.num",
    "request.timeout.ms",
    "reserved.broker.max.id",
    "sasl.enabled.mechanisms",
    "sasl.jaas.config",
    "sasl.kerberos.service.name",
    "sasl.mechanism.controller.protocol",
    "sasl.mechanism.inter.broker.protocol",
    "security.inter.broker.protocol",
    "security.providers",
    "share.coordinator.state.topic.min.isr",
    "share.coordinator.state.topic.replication.factor",
    "socket.connection.setup.timeout.max.ms",
    "socket.connection.setup.timeout.ms",
    "socket.listen.backlog.size",
    "socket.receive.buffer.bytes",
    "socket.send.buffer.bytes",
    "ssl.cipher.suites",
    "ssl.client.auth",
    "ssl.enabled.protocols",
    "ssl.endpoint.identification.algorithm",
    "ssl.key.password",
    "ssl.keymanager.algorithm",
    "ssl.keystore.location",
    "ssl.keystore.password",
    "ssl.keystore.type",
    "ssl.protocol",
    "ssl.provider",
    "ssl.truststore.location",
    "ssl.truststore.password",
    "ssl.truststore.type",
    "super.users",
    "unclean.leader.election.enable",
    "unstable.api.versions.enable",
    "unstable.feature.versions.enable",
    "zookeeper.connect",
    "zookeeper.connection.timeout.ms",
    "zookeeper.session.timeout.ms",
];

/// Keys that are validated, stored and reported (DescribeConfigs) but whose behaviour is not
/// built yet: setting one explicitly is accepted with a warning saying so.
static NOT_ENFORCED_YET: &[&str] = &[
    "log.retention.hours",
    "log.retention.minutes",
    "log.retention.ms",
    "log.retention.bytes",
    "log.retention.check.interval.ms",
    "log.cleanup.policy",
    "compression.type",
    "log.message.timestamp.type",
    "inter.broker.listener.name",
];

/// A listener: `NAME://host:port`; an empty host binds every interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// The broker's configuration: typed values of the implemented keys.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub process_roles: Vec<String>,
    pub listeners: Vec<Listener>,
    pub advertised_listeners: Vec<Listener>,
    pub controller_listener_names: Vec<String>,
    pub log_dirs: Vec<String>,
    /// `controller.quorum.voters`: (node id, host, port) of each voter.
    pub controller_quorum_voters: Vec<(i32, String, u16)>,
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    pub min_insync_replicas: i32,
    pub auto_create_topics_enable: bool,
    pub delete_topic_enable: bool,
    pub log_segment_bytes: i32,
    pub log_roll_ms: i64,
    pub log_flush_interval_messages: i64,
    pub log_flush_interval_ms: i64,
    pub log_retention_ms: i64,
    pub log_retention_check_interval_ms: i64,
    /// The log cleaner (`log.cleaner.*`).
    pub log_cleaner_enable: bool,
    pub log_cleaner_threads: i32,
    pub log_cleaner_backoff_ms: i64,
    pub log_cleaner_dedupe_buffer_size: i64,
    pub log_cleaner_io_buffer_load_factor: f64,
    pub log_cleaner_io_max_bytes_per_second: f64,
    pub quota_window_num: i32,
    pub quota_window_size_seconds: i32,
    pub message_max_bytes: i32,
    pub socket_request_max_bytes: i32,
    pub max_connections: i32,
    /// The group coordinator's settings (`offsets.topic.num.partitions`, `group.*`).
    pub offsets_topic_num_partitions: i32,
    pub offsets_topic_replication_factor: i16,
    pub group_initial_rebalance_delay_ms: i32,
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    pub group_max_size: i32,
    pub group_consumer_session_timeout_ms: i32,
    pub group_consumer_heartbeat_interval_ms: i32,
    pub group_consumer_max_size: i32,
    pub offset_metadata_max_bytes: i32,
    pub offsets_retention_minutes: i32,
    pub offsets_retention_check_interval_ms: i64,
    /// The transaction coordinator's settings (`transaction.*`, `transactional.id.*`).
    pub transaction_state_log_num_partitions: i32,
    pub transaction_state_log_replication_factor: i16,
    pub transaction_state_log_min_isr: i32,
    pub transaction_state_log_segment_bytes: i32,
    pub transaction_state_log_load_buffer_size: i32,
    pub transaction_max_timeout_ms: i32,
    pub transactional_id_expiration_ms: i32,
    pub transaction_abort_timed_out_transaction_cleanup_interval_ms: i32,
    pub transaction_remove_expired_transaction_cleanup_interval_ms: i32,
    /// `transaction.partition.verification.enable` as `server.properties` sets it (a
    /// dynamic broker config: [`crate::txn_verification::Verifier`] follows it).
    pub transaction_partition_verification_enable: bool,
    /// `producer.id.expiration.ms` as `server.properties` sets it (a dynamic broker config:
    /// read it through [`crate::dynamic_config::BrokerDefaults`]).
    pub producer_id_expiration_ms: i32,
    pub producer_id_expiration_check_interval_ms: i32,
    /// `queued.max.request.bytes`: -1 for no limit.
    pub queued_max_request_bytes: i64,
    /// Not a Kafka key: whether unformatted log dirs are formatted at start (the embedded
    /// default, `strom server` without `--config`) or refused (a node started from a file).
    pub format_on_start: bool,
    pub broker_heartbeat_interval_ms: i32,
    pub broker_session_timeout_ms: i32,
    pub controller_quorum_election_timeout_ms: i32,
    pub broker_rack: Option<String>,
    pub auto_leader_rebalance_enable: bool,
    pub leader_imbalance_check_interval_seconds: i64,
    pub replica_lag_time_max_ms: i64,
    pub replica_fetch_wait_max_ms: i32,
    pub replica_fetch_max_bytes: i32,
    pub replica_fetch_response_max_bytes: i32,
    pub replica_fetch_backoff_ms: i32,
    pub replica_socket_timeout_ms: i32,
    /// Effective text value of every implemented key, derived ones resolved.
    values: BTreeMap<&'static str, String>,
    /// Keys set by the file or an override.
    explicit: BTreeMap<&'static str, String>,
}

impl BrokerConfig {
    /// The embedded default of `strom server` with no arguments.
    pub fn embedded_default() -> BrokerConfig {
        match BrokerConfig::build(BTreeMap::new()) {
            Ok(config) => config,
            Err(e) => unreachable!("built-in defaults are valid: {e}"),
        }
    }

    /// Parses a Java properties text and `key=value` overrides (later wins). Returns the
    /// config and one warning per known-but-unimplemented key.
    pub fn from_properties(
        text: &str,
        overrides: &[String],
    ) -> Result<(BrokerConfig, Vec<String>), ConfigError> {
        let mut pairs = parse_properties(text)?;
        for o in overrides {
            let (k, v) = o.split_once('=').ok_or_else(|| ConfigError::Malformed {
                line: 0,
                text: o.clone(),
            })?;
            pairs.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut explicit = BTreeMap::new();
        let mut warnings = Vec::new();
        for (k, v) in pairs {
            if let Some(def) = KEYS.iter().find(|d| d.name == k) {
                if NOT_ENFORCED_YET.contains(&def.name) {
                    let warning =
                        format!("config key '{k}' is accepted and reported but not enforced yet");
                    if !warnings.contains(&warning) {
                        warnings.push(warning);
                    }
                }
                explicit.insert(def.name, v);
            } else if KNOWN_UNIMPLEMENTED.contains(&k.as_str()) || k.starts_with("listener.name.") {
                let warning = format!(
                    "config key '{k}' is a Kafka setting Strom does not implement yet; ignored"
                );
                if !warnings.contains(&warning) {
                    warnings.push(warning);
                }
            } else {
                let names = KEYS
                    .iter()
                    .map(|d| d.name)
                    .chain(KNOWN_UNIMPLEMENTED.iter().copied());
                return Err(ConfigError::UnknownKey {
                    suggestion: closest(&k, names).map(str::to_string),
                    key: k,
                });
            }
        }
        Ok((BrokerConfig::build(explicit)?, warnings))
    }

    fn build(explicit: BTreeMap<&'static str, String>) -> Result<BrokerConfig, ConfigError> {
        let mut values = BTreeMap::new();
        for def in KEYS {
            let value = explicit
                .get(def.name)
                .cloned()
                .unwrap_or_else(|| def.default.to_string());
            if !value.is_empty() || explicit.contains_key(def.name) {
                check_value(def.name, def.check, def.config_type, &value).map_err(|reason| {
                    ConfigError::InvalidValue {
                        key: def.name.into(),
                        value: value.clone(),
                        reason,
                    }
                })?;
            }
            values.insert(def.name, value.trim().to_string());
        }
        derive(&mut values, "log.dirs", |v| v["log.dir"].clone());
        derive(&mut values, "log.roll.ms", |v| {
            (parse_i64(&v["log.roll.hours"]) * 3_600_000).to_string()
        });
        let retention = match (
            values["log.retention.ms"].as_str(),
            values["log.retention.minutes"].as_str(),
        ) {
            ("", "") => hours_to_ms(parse_i64(&values["log.retention.hours"])),
            ("", minutes) => minutes_to_ms(parse_i64(minutes)),
            (ms, _) => parse_i64(ms),
        };
        values.insert("log.retention.ms", retention.to_string());
        let listeners = parse_listeners("listeners", &values["listeners"])?;
        let controller_quorum_voters = parse_voters(&values["controller.quorum.voters"])?;
        derive(&mut values, "advertised.listeners", |v| {
            v["listeners"].clone()
        });
        let advertised_listeners =
            parse_listeners("advertised.listeners", &values["advertised.listeners"])?;
        let list = |s: &str| {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        };
        let log_dirs = list(&values["log.dirs"]);
        if log_dirs.is_empty() {
            return Err(ConfigError::InvalidValue {
                key: "log.dirs".into(),
                value: String::new(),
                reason: "at least one directory is needed".into(),
            });
        }
        let int = |k: &str| parse_i64(&values[k]);
        Ok(BrokerConfig {
            node_id: int("node.id") as i32,
            process_roles: list(&values["process.roles"]),
            listeners,
            advertised_listeners,
            controller_listener_names: list(&values["controller.listener.names"]),
            log_dirs,
            controller_quorum_voters,
            num_partitions: int("num.partitions") as i32,
            default_replication_factor: int("default.replication.factor") as i16,
            min_insync_replicas: int("min.insync.replicas") as i32,
            auto_create_topics_enable: values["auto.create.topics.enable"]
                .eq_ignore_ascii_case("true"),
            delete_topic_enable: values["delete.topic.enable"].eq_ignore_ascii_case("true"),
            log_segment_bytes: int("log.segment.bytes") as i32,
            log_roll_ms: int("log.roll.ms"),
            log_flush_interval_messages: int("log.flush.interval.messages"),
            log_flush_interval_ms: int("log.flush.interval.ms"),
            log_retention_ms: retention,
            log_retention_check_interval_ms: int("log.retention.check.interval.ms"),
            log_cleaner_enable: values["log.cleaner.enable"].eq_ignore_ascii_case("true"),
            log_cleaner_threads: int("log.cleaner.threads") as i32,
            log_cleaner_backoff_ms: int("log.cleaner.backoff.ms"),
            log_cleaner_dedupe_buffer_size: int("log.cleaner.dedupe.buffer.size"),
            log_cleaner_io_buffer_load_factor: float(&values["log.cleaner.io.buffer.load.factor"]),
            log_cleaner_io_max_bytes_per_second: float(
                &values["log.cleaner.io.max.bytes.per.second"],
            ),
            quota_window_num: int("quota.window.num") as i32,
            quota_window_size_seconds: int("quota.window.size.seconds") as i32,
            message_max_bytes: int("message.max.bytes") as i32,
            socket_request_max_bytes: int("socket.request.max.bytes") as i32,
            max_connections: int("max.connections") as i32,
            queued_max_request_bytes: int("queued.max.request.bytes"),
            offsets_topic_num_partitions: int("offsets.topic.num.partitions") as i32,
            offsets_topic_replication_factor: int("offsets.topic.replication.factor") as i16,
            group_initial_rebalance_delay_ms: int("group.initial.rebalance.delay.ms") as i32,
            group_min_session_timeout_ms: int("group.min.session.timeout.ms") as i32,
            group_max_session_timeout_ms: int("group.max.session.timeout.ms") as i32,
            group_max_size: int("group.max.size") as i32,
            group_consumer_session_timeout_ms: int("group.consumer.session.timeout.ms") as i32,
            group_consumer_heartbeat_interval_ms: int("group.consumer.heartbeat.interval.ms")
                as i32,
            group_consumer_max_size: int("group.consumer.max.size") as i32,
            offset_metadata_max_bytes: int("offset.metadata.max.bytes") as i32,
            offsets_retention_minutes: int("offsets.retention.minutes") as i32,
            offsets_retention_check_interval_ms: int("offsets.retention.check.interval.ms"),
            transaction_state_log_num_partitions: int("transaction.state.log.num.partitions")
                as i32,
            transaction_state_log_replication_factor: int(
                "transaction.state.log.replication.factor",
            ) as i16,
            transaction_state_log_min_isr: int("transaction.state.log.min.isr") as i32,
            transaction_state_log_segment_bytes: int("transaction.state.log.segment.bytes") as i32,
            transaction_state_log_load_buffer_size: int("transaction.state.log.load.buffer.size")
                as i32,
            transaction_max_timeout_ms: int("transaction.max.timeout.ms") as i32,
            transactional_id_expiration_ms: int("transactional.id.expiration.ms") as i32,
            transaction_abort_timed_out_transaction_cleanup_interval_ms: int(
                "transaction.abort.timed.out.transaction.cleanup.interval.ms",
            ) as i32,
            transaction_remove_expired_transaction_cleanup_interval_ms: int(
                "transaction.remove.expired.transaction.cleanup.interval.ms",
            ) as i32,
            transaction_partition_verification_enable: values
                ["transaction.partition.verification.enable"]
                .eq_ignore_ascii_case("true"),
            producer_id_expiration_ms: int("producer.id.expiration.ms") as i32,
            producer_id_expiration_check_interval_ms: int(
                "producer.id.expiration.check.interval.ms",
            ) as i32,
            format_on_start: true,
            broker_heartbeat_interval_ms: int("broker.heartbeat.interval.ms") as i32,
            broker_session_timeout_ms: int("broker.session.timeout.ms") as i32,
            controller_quorum_election_timeout_ms: int("controller.quorum.election.timeout.ms")
                as i32,
            broker_rack: Some(values["broker.rack"].clone()).filter(|r| !r.is_empty()),
            auto_leader_rebalance_enable: values["auto.leader.rebalance.enable"]
                .eq_ignore_ascii_case("true"),
            leader_imbalance_check_interval_seconds: int("leader.imbalance.check.interval.seconds"),
            replica_lag_time_max_ms: int("replica.lag.time.max.ms"),
            replica_fetch_wait_max_ms: int("replica.fetch.wait.max.ms") as i32,
            replica_fetch_max_bytes: int("replica.fetch.max.bytes") as i32,
            replica_fetch_response_max_bytes: int("replica.fetch.response.max.bytes") as i32,
            replica_fetch_backoff_ms: int("replica.fetch.backoff.ms") as i32,
            replica_socket_timeout_ms: int("replica.socket.timeout.ms") as i32,
            values,
            explicit,
        })
    }

    /// The effective value of an implemented key and whether it was set explicitly.
    pub fn get(&self, key: &str) -> Option<(String, bool)> {
        let value = self.values.get(key)?;
        Some((value.clone(), self.explicit.contains_key(key)))
    }

    /// Every implemented key, for DescribeConfigs.
    pub fn describe(&self) -> Vec<BrokerConfigEntry> {
        KEYS.iter()
            .map(|def| BrokerConfigEntry {
                name: def.name,
                value: self.values.get(def.name).cloned(),
                is_default: !self.explicit.contains_key(def.name),
                config_type: def.config_type,
                documentation: def.doc,
            })
            .collect()
    }

    /// The listener clients connect to: the first one that is not a controller listener.
    pub fn client_listener(&self) -> Option<Listener> {
        self.listeners
            .iter()
            .find(|l| !self.controller_listener_names.contains(&l.name))
            .cloned()
    }

    /// The host and port to publish for a listener: its advertised entry, with the bound
    /// address filling in an empty host or port 0.
    pub fn advertised_for(&self, listener_name: &str, bound: SocketAddr) -> (String, u16) {
        let advertised = self
            .advertised_listeners
            .iter()
            .find(|l| l.name == listener_name);
        let host = advertised
            .map(|l| l.host.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| bound.ip().to_string());
        let host = if host == "0.0.0.0" {
            "127.0.0.1".to_string()
        } else {
            host
        };
        let port = advertised
            .map(|l| l.port)
            .filter(|p| *p != 0)
            .unwrap_or(bound.port());
        (host, port)
    }
}

/// A broker config for DescribeConfigs.
#[derive(Debug, Clone)]
pub struct BrokerConfigEntry {
    pub name: &'static str,
    pub value: Option<String>,
    pub is_default: bool,
    pub config_type: ConfigType,
    pub documentation: &'static str,
}

fn derive(
    values: &mut BTreeMap<&'static str, String>,
    key: &'static str,
    from: impl Fn(&BTreeMap<&'static str, String>) -> String,
) {
    if values[key].is_empty() {
        let derived = from(values);
        values.insert(key, derived);
    }
}

/// A validated double key's value (`f64::MAX` for Kafka's "no limit" default).
fn float(s: &str) -> f64 {
    s.trim().parse().unwrap_or(f64::MAX)
}

fn parse_i64(s: &str) -> i64 {
    s.trim().parse().unwrap_or(0)
}

fn hours_to_ms(hours: i64) -> i64 {
    if hours < 0 {
        -1
    } else {
        hours.saturating_mul(3_600_000)
    }
}

fn minutes_to_ms(minutes: i64) -> i64 {
    if minutes < 0 {
        -1
    } else {
        minutes.saturating_mul(60_000)
    }
}

/// `id@host:port,...`, Kafka's static quorum format.
fn parse_voters(text: &str) -> Result<Vec<(i32, String, u16)>, ConfigError> {
    let bad = |reason: &str| ConfigError::InvalidValue {
        key: "controller.quorum.voters".into(),
        value: text.into(),
        reason: reason.into(),
    };
    let mut voters = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, address) = item
            .split_once('@')
            .ok_or_else(|| bad("expected id@host:port"))?;
        let id: i32 = id.parse().map_err(|_| bad("voter ids are integers"))?;
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| bad("expected id@host:port"))?;
        let port: u16 = port.parse().map_err(|_| bad("port must be 0-65535"))?;
        if host.is_empty() {
            return Err(bad("a voter needs a host"));
        }
        if voters.iter().any(|(v, _, _)| *v == id) {
            return Err(bad("each voter id may appear once"));
        }
        voters.push((id, host.to_string(), port));
    }
    Ok(voters)
}

impl BrokerConfig {
    /// What this single-node build can run: combined roles, and at most itself as the voter.
    /// Anything else would silently run as a lone node, so it is refused until the
    /// controller quorum exists.
    pub fn is_broker(&self) -> bool {
        self.process_roles.iter().any(|r| r == "broker")
    }

    pub fn is_controller(&self) -> bool {
        self.process_roles.iter().any(|r| r == "controller")
    }

    /// The listener the controller quorum talks on, if one is configured.
    pub fn controller_listener(&self) -> Option<Listener> {
        self.listeners
            .iter()
            .find(|l| self.controller_listener_names.contains(&l.name))
            .cloned()
    }

    /// Checks that roles, voters and listeners fit together, as Kafka does at start:
    /// a controller is one of the voters (or, with no voters, the only one), a broker-only
    /// node is not a voter and needs voters to find the quorum, a quorum of several needs a
    /// controller listener on each of its voters, a broker needs a client listener.
    pub fn check_roles(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, value: String, reason: &str| ConfigError::InvalidValue {
            key: key.into(),
            value,
            reason: reason.into(),
        };
        let voters = self
            .controller_quorum_voters
            .iter()
            .map(|(id, h, p)| format!("{id}@{h}:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let is_voter = self
            .controller_quorum_voters
            .iter()
            .any(|(id, _, _)| *id == self.node_id);
        if self.process_roles.is_empty() {
            return Err(invalid(
                "process.roles",
                String::new(),
                "needs broker, controller or both",
            ));
        }
        if self.is_controller() && !self.controller_quorum_voters.is_empty() && !is_voter {
            return Err(invalid(
                "controller.quorum.voters",
                voters,
                &format!(
                    "a controller must be one of the voters, and node.id {} is not",
                    self.node_id
                ),
            ));
        }
        if !self.is_controller() {
            if self.controller_quorum_voters.is_empty() {
                return Err(invalid(
                    "controller.quorum.voters",
                    voters,
                    "a broker-only node needs the voters to find the controller quorum",
                ));
            }
            if is_voter {
                return Err(invalid(
                    "node.id",
                    self.node_id.to_string(),
                    "a broker-only node cannot have the node id of a voter",
                ));
            }
        }
        let needs_controller_listener =
            self.is_controller() && (self.controller_quorum_voters.len() > 1 || !self.is_broker());
        if needs_controller_listener && self.controller_listener().is_none() {
            return Err(invalid(
                "listeners",
                self.listeners
                    .iter()
                    .map(|l| format!("{}://{}:{}", l.name, l.host, l.port))
                    .collect::<Vec<_>>()
                    .join(","),
                &format!(
                    "a controller of a quorum needs a listener named in controller.listener.names ({})",
                    self.controller_listener_names.join(",")
                ),
            ));
        }
        if self.is_broker() && self.client_listener().is_none() {
            return Err(invalid(
                "listeners",
                String::new(),
                "a broker needs a client listener besides controller.listener.names",
            ));
        }
        Ok(())
    }
}

fn parse_listeners(key: &str, text: &str) -> Result<Vec<Listener>, ConfigError> {
    let bad = |reason: &str| ConfigError::InvalidValue {
        key: key.into(),
        value: text.into(),
        reason: reason.into(),
    };
    let mut listeners = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, rest) = item
            .split_once("://")
            .ok_or_else(|| bad("expected NAME://host:port"))?;
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("expected NAME://host:port"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| bad("port must be 0-65535"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad("listener names are letters, digits and '_'"));
        }
        if listeners.iter().any(|l: &Listener| l.name == name) {
            return Err(bad("each listener name may appear once"));
        }
        listeners.push(Listener {
            name: name.to_string(),
            host: host.to_string(),
            port,
        });
    }
    Ok(listeners)
}

/// Java `.properties` parsing: `#`/`!` comments, `=`, `:` or whitespace separators, and
/// backslash line continuations.
fn parse_properties(text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut pairs = Vec::new();
    let mut logical = String::new();
    let mut start_line = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if logical.is_empty() {
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            start_line = i + 1;
        }
        let continued = line.ends_with('\\') && !line.ends_with("\\\\");
        logical.push_str(if continued {
            &line[..line.len() - 1]
        } else {
            line
        });
        if continued {
            continue;
        }
        let entry = std::mem::take(&mut logical);
        let split = entry
            .find(['=', ':', ' ', '\t'])
            .ok_or_else(|| ConfigError::Malformed {
                line: start_line,
                text: entry.clone(),
            })?;
        let key = entry[..split].trim().to_string();
        let rest = entry[split..].trim_start();
        let value = rest
            .strip_prefix(['=', ':'])
            .unwrap_or(rest)
            .trim()
            .to_string();
        if key.is_empty() {
            return Err(ConfigError::Malformed {
                line: start_line,
                text: entry,
            });
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// The candidate closest to `key` by edit distance, if close enough to be a typo.
pub fn closest<'a>(key: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (key.len() / 4).max(2);
    candidates
        .map(|c| (levenshtein(key, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            previous = current;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KAFKA_KRAFT_PROPERTIES: &str = r#"
# Licensed to the Apache Software Foundation (ASF)
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=localhost:9093
listeners=PLAINTEXT://:9092,CONTROLLER://:9093
inter.broker.listener.name=PLAINTEXT
advertised.listeners=PLAINTEXT://localhost:9092,CONTROLLER://localhost:9093
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
num.network.threads=3
num.io.threads=8
socket.send.buffer.bytes=102400
socket.receive.buffer.bytes=102400
socket.request.max.bytes=104857600
log.dirs=/tmp/kraft-combined-logs
num.partitions=1
num.recovery.threads.per.data.dir=1
offsets.topic.replication.factor=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
log.retention.hours=168
log.segment.bytes=1073741824
log.retention.check.interval.ms=300000
"#;

    #[test]
    fn kafkas_own_kraft_properties_file_starts_with_warnings_for_unimplemented_keys() {
        let (config, warnings) =
            BrokerConfig::from_properties(KAFKA_KRAFT_PROPERTIES, &[]).expect("accepted");
        assert_eq!(config.log_dirs, vec!["/tmp/kraft-combined-logs"]);
        assert_eq!(
            config.client_listener().unwrap(),
            Listener {
                name: "PLAINTEXT".into(),
                host: String::new(),
                port: 9092
            }
        );
        assert_eq!(config.log_retention_ms, 168 * 3_600_000);
        assert!(warnings.iter().any(|w| w.contains("'num.io.threads'")));
        assert!(warnings
            .iter()
            .any(|w| w.contains("'share.coordinator.state.topic.min.isr'")));
        assert!(!warnings
            .iter()
            .any(|w| w.contains("'transaction.state.log.min.isr'")));
        assert_eq!(config.transaction_state_log_min_isr, 1);
        assert_eq!(config.transaction_state_log_replication_factor, 1);
        assert!(!warnings.iter().any(|w| w.contains("log.dirs")));
        assert_eq!(config.get("num.partitions"), Some(("1".into(), true)));
        assert_eq!(
            config.get("message.max.bytes"),
            Some(("1048588".into(), false))
        );
    }

    #[test]
    fn the_embedded_default_is_one_local_node() {
        let config = BrokerConfig::embedded_default();
        assert_eq!(config.node_id, 1);
        assert_eq!(config.process_roles, vec!["broker", "controller"]);
        assert_eq!(config.client_listener().unwrap().port, 9092);
        assert_eq!(config.log_dirs, vec!["./strom-data"]);
        assert_eq!(config.log_roll_ms, 168 * 3_600_000);
    }

    #[test]
    fn a_typo_names_the_key_and_suggests_the_closest() {
        let err = BrokerConfig::from_properties("log.segmnet.bytes=1000\n", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown config key 'log.segmnet.bytes' (did you mean 'log.segment.bytes'?)"
        );
        let err = BrokerConfig::from_properties("", &["num.io.thread=2".into()]).unwrap_err();
        assert!(err.to_string().contains("did you mean 'num.io.threads'"));
        let err = BrokerConfig::from_properties("completely.unrelated.thing=1\n", &[]).unwrap_err();
        assert_eq!(
            err,
            ConfigError::UnknownKey {
                key: "completely.unrelated.thing".into(),
                suggestion: None
            }
        );
    }

    #[test]
    fn malformed_values_name_the_key() {
        for text in [
            "num.partitions=10x",
            "num.partitions=0",
            "auto.create.topics.enable=yes",
            "listeners=localhost:9092",
            "log.segment.bytes=99999999999",
        ] {
            let err = BrokerConfig::from_properties(text, &[]).unwrap_err();
            let key = text.split('=').next().unwrap();
            assert!(err.to_string().contains(&format!("'{key}'")), "{err}");
        }
    }

    #[test]
    fn overrides_win_and_retention_follows_kafkas_precedence() {
        let text = "num.partitions = 3\nlog.retention.hours: 1\nlog.retention.minutes 30\n";
        let (config, _) =
            BrokerConfig::from_properties(text, &["num.partitions=7".into()]).unwrap();
        assert_eq!(config.num_partitions, 7);
        assert_eq!(config.log_retention_ms, 30 * 60_000);
        let (config, _) =
            BrokerConfig::from_properties("log.retention.ms=5\nlog.retention.minutes=30\n", &[])
                .unwrap();
        assert_eq!(config.log_retention_ms, 5);
    }

    #[test]
    fn roles_voters_and_listeners_must_fit_together() {
        let (config, _) = BrokerConfig::from_properties(
            "node.id=3\ncontroller.quorum.voters=3@localhost:9093\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            config.controller_quorum_voters,
            vec![(3, "localhost".to_string(), 9093)]
        );
        assert!(config.check_roles().is_ok());
        assert!(BrokerConfig::embedded_default().check_roles().is_ok());
        for bad in [
            "controller.quorum.voters=x@h:1",
            "controller.quorum.voters=1@h",
            "controller.quorum.voters=1@h:1,1@h:2",
        ] {
            assert!(BrokerConfig::from_properties(bad, &[]).is_err(), "{bad}");
        }
        let check = |text: &str| {
            BrokerConfig::from_properties(text, &[])
                .unwrap()
                .0
                .check_roles()
                .map_err(|e| e.to_string())
        };
        let three = "controller.quorum.voters=1@a:1,2@b:1,3@c:1\n";
        assert!(check(three).unwrap_err().contains("listeners"));
        assert!(check(&format!(
            "{three}listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093\n"
        ))
        .is_ok());
        assert!(check(&format!("{three}node.id=4\n"))
            .unwrap_err()
            .contains("controller.quorum.voters"));
        assert!(check("process.roles=broker\n")
            .unwrap_err()
            .contains("controller.quorum.voters"));
        assert!(check(&format!("process.roles=broker\nnode.id=4\n{three}")).is_ok());
        assert!(check(&format!("process.roles=broker\n{three}"))
            .unwrap_err()
            .contains("node.id"));
    }

    #[test]
    fn continuation_lines_and_comments_parse() {
        let text = "! comment\nlisteners=PLAINTEXT://127.0.0.1:1,\\\n   CONTROLLER://127.0.0.1:2\n";
        let (config, _) = BrokerConfig::from_properties(text, &[]).unwrap();
        assert_eq!(config.listeners.len(), 2);
    }
}
