//! Configs through the standard admin APIs, against real processes: AlterConfigs
//! (librdkafka), IncrementalAlterConfigs and DescribeConfigs (the Java client, run step by
//! step by `tests/clients/java/ConfigsCheck.java`), and what producers see in between —
//! topic and dynamic broker configs take effect at once, on every broker, without a
//! restart, and survive one. Also DescribeLogDirs and DescribeTopicPartitions.
//!
//! The Java steps need `STROM_TEST_JAVA_CP`, which `scripts/test` sets.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::clients::admin;
use common::cluster::Cluster;
use common::{Broker, RawClient};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResourceResult;
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::describe_topic_partitions_request::{Cursor, TopicRequest};
use kafka_protocol::messages::{
    ApiKey, DescribeConfigsRequest, DescribeConfigsResponse, DescribeLogDirsRequest,
    DescribeLogDirsResponse, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

const WAIT: Duration = Duration::from_secs(60);

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// Creates `topic` with `replicas` replicas and `configs` through librdkafka.
fn create(addr: &str, topic: &str, partitions: i32, replicas: i32, configs: &[(&str, &str)]) {
    common::clients::create_topic_with(addr, topic, partitions, replicas, configs);
}

/// Produces one record of `bytes` bytes with acks=all; the broker's error code if refused.
fn produce(addr: &str, topic: &str, bytes: usize) -> Result<(), RDKafkaErrorCode> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let payload = vec![b'x'; bytes];
    let sent = rt.block_on(producer.send(
        FutureRecord::<(), _>::to(topic).payload(&payload),
        Duration::from_secs(30),
    ));
    match sent {
        Ok(_) => Ok(()),
        Err((KafkaError::MessageProduction(code), _)) => Err(code),
        Err((other, _)) => panic!("produce failed: {other}"),
    }
}

/// The legacy AlterConfigs through librdkafka. The rdkafka crate drops the per-resource
/// errors librdkafka reports, so callers check the outcome with DescribeConfigs.
fn alter_configs(addr: &str, configs: &[AlterConfig], options: &AdminOptions) {
    let (admin, rt) = admin(addr);
    rt.block_on(admin.alter_configs(configs, options))
        .expect("alter configs request");
}

/// A resource of a raw AlterConfigs: type, name, and the configs it sets.
type RawResource<'a> = (i8, &'a str, &'a [(&'a str, &'a str)]);

/// The legacy AlterConfigs v2, raw: (error code, message) per resource.
fn alter_raw(
    addr: &str,
    resources: &[RawResource],
    validate_only: bool,
) -> Vec<(i16, Option<String>)> {
    use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
    use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};
    let resources = resources
        .iter()
        .map(|(resource_type, resource_name, configs)| {
            AlterConfigsResource::default()
                .with_resource_type(*resource_type)
                .with_resource_name(StrBytes::from_string(resource_name.to_string()))
                .with_configs(
                    configs
                        .iter()
                        .map(|(k, v)| {
                            AlterableConfig::default()
                                .with_name(StrBytes::from_string(k.to_string()))
                                .with_value(Some(StrBytes::from_string(v.to_string())))
                        })
                        .collect(),
                )
        })
        .collect();
    let request = AlterConfigsRequest::default()
        .with_resources(resources)
        .with_validate_only(validate_only);
    let mut client = RawClient::connect(addr);
    client.send(ApiKey::AlterConfigs, 2, &request);
    let response: AlterConfigsResponse = client.recv(2);
    response
        .responses
        .into_iter()
        .map(|r| (r.error_code, r.error_message.map(|m| m.to_string())))
        .collect()
}

/// Runs one step of the Java ConfigsCheck against `bootstrap`; returns its output.
fn java_step(bootstrap: &str, args: &[&str]) -> String {
    common::clients::java_step("ConfigsCheck", "CONFIGS-CHECK-OK", bootstrap, args)
}

/// A topic's configs as broker `addr` describes them (DescribeConfigs v4).
fn describe_topic(addr: &str, topic: &str) -> Vec<DescribeConfigsResourceResult> {
    let mut client = RawClient::connect(addr);
    let request = DescribeConfigsRequest::default()
        .with_include_synonyms(true)
        .with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.to_string()))
            .with_configuration_keys(None)]);
    client.send(ApiKey::DescribeConfigs, 4, &request);
    let response: DescribeConfigsResponse = client.recv(4);
    let result = response.results.into_iter().next().expect("one result");
    assert_eq!(result.error_code, 0, "{:?}", result.error_message);
    result.configs
}

/// (value, source) of `key` in a description.
fn value_of(configs: &[DescribeConfigsResourceResult], key: &str) -> (String, i8) {
    let entry = configs
        .iter()
        .find(|e| e.name.as_str() == key)
        .unwrap_or_else(|| panic!("{key} described"));
    (
        entry.value.as_deref().unwrap_or_default().to_string(),
        entry.config_source,
    )
}

/// The sizes of a partition's segment files in `logs`.
fn segment_sizes(logs: &Path, topic: &str, partition: i32) -> Vec<u64> {
    let dir = logs.join(format!("{topic}-{partition}"));
    let mut sizes: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    sizes.sort();
    sizes.into_iter().map(|(_, len)| len).collect()
}

fn node_logs(cluster: &Cluster, id: i32) -> PathBuf {
    cluster.dir.join(format!("node-{id}")).join("logs")
}

#[test]
fn topic_configs_altered_at_runtime_reach_every_broker_and_their_open_logs() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::combined(dir.path(), 3);
    let first = cluster.addr(1);
    create(&first, "rt", 1, 3, &[("retention.ms", "3600000")]);
    for _ in 0..3 {
        produce(&first, "rt", 100_000).expect("100 KB under the default limit");
    }
    let change = AlterConfig::new(ResourceSpecifier::Topic("rt"))
        .set("max.message.bytes", "50000")
        .set("segment.bytes", "1048576");
    // The rdkafka crate reports every resource as altered; what changed is checked below.
    alter_configs(&first, &[change], &AdminOptions::new());
    for id in cluster.broker_ids() {
        cluster.wait_for("every broker to describe the new configs", WAIT, || {
            let configs = describe_topic(&cluster.addr(id), "rt");
            value_of(&configs, "max.message.bytes") == ("50000".into(), 1)
                && value_of(&configs, "segment.bytes") == ("1048576".into(), 1)
        });
        let configs = describe_topic(&cluster.addr(id), "rt");
        assert_eq!(
            value_of(&configs, "retention.ms"),
            ("604800000".into(), 5),
            "AlterConfigs replaces the whole set of overrides: broker {id}"
        );
    }
    assert_eq!(
        produce(&cluster.addr(2), "rt", 100_000),
        Err(RDKafkaErrorCode::MessageSizeTooLarge),
        "the lowered max.message.bytes applies at once"
    );
    for _ in 0..80 {
        produce(&cluster.addr(3), "rt", 40_000).expect("40 KB fits");
    }
    for id in cluster.broker_ids() {
        let logs = node_logs(&cluster, id);
        cluster.wait_for("every replica to roll 1 MiB segments", WAIT, || {
            segment_sizes(&logs, "rt", 0).len() >= 3
        });
        let sizes = segment_sizes(&logs, "rt", 0);
        assert!(
            sizes.iter().all(|s| *s <= 1_048_576),
            "broker {id} keeps segments within the new segment.bytes: {sizes:?}"
        );
    }
}

#[test]
fn a_dynamic_broker_default_changes_topics_without_their_own_override_until_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    create(&broker.addr, "plain", 1, 1, &[]);
    create(
        &broker.addr,
        "own",
        1,
        1,
        &[("max.message.bytes", "200000")],
    );
    produce(&broker.addr, "plain", 100_000).expect("under the default");

    java_step(&broker.addr, &["cluster-default", "plain", "own"]);
    assert_eq!(
        produce(&broker.addr, "plain", 100_000),
        Err(RDKafkaErrorCode::MessageSizeTooLarge),
        "the cluster default message.max.bytes=50000 applies to a topic without an override"
    );
    produce(&broker.addr, "own", 100_000).expect("a topic's own override wins");

    java_step(&broker.addr, &["per-broker", "plain", "1"]);
    produce(&broker.addr, "plain", 100_000).expect("the per-broker 150000 beats the default");

    broker.terminate();
    broker.restart();
    produce(&broker.addr, "plain", 100_000).expect("dynamic configs survive a restart");
    assert_eq!(
        produce(&broker.addr, "plain", 200_000),
        Err(RDKafkaErrorCode::MessageSizeTooLarge)
    );

    java_step(&broker.addr, &["reset", "plain", "1"]);
    produce(&broker.addr, "plain", 500_000).expect("back to the 1 MB default");
}

#[test]
fn incremental_alter_configs_sets_appends_subtracts_and_deletes_topic_configs() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create(&broker.addr, "inc", 1, 1, &[]);
    java_step(&broker.addr, &["incremental", "inc"]);
    let configs = describe_topic(&broker.addr, "inc");
    assert_eq!(value_of(&configs, "cleanup.policy"), ("compact".into(), 1));
}

#[test]
fn bad_config_changes_get_kafkas_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create(&broker.addr, "bad", 1, 1, &[("retention.ms", "3600000")]);
    java_step(&broker.addr, &["bad-input", "bad", "1"]);

    // The legacy AlterConfigs, raw (the rdkafka crate drops per-resource errors).
    let answers = alter_raw(
        &broker.addr,
        &[
            (2, "bad", &[("retention.mss", "1")]),
            (2, "ghost", &[("retention.ms", "1")]),
            (4, "1", &[("log.dirs", "/elsewhere")]),
            (4, "2", &[("log.retention.ms", "1")]),
            (3, "x", &[("a", "b")]),
        ],
        false,
    );
    let codes: Vec<i16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(codes, vec![40, 3, 42, 42, 42], "{answers:?}");
    assert!(answers[0]
        .1
        .as_deref()
        .unwrap_or_default()
        .contains("retention.mss"));
    assert_eq!(
        answers[2].1.as_deref(),
        Some("Cannot update these configs dynamically: Set(log.dirs)")
    );
    let twice = alter_raw(
        &broker.addr,
        &[
            (2, "bad", &[("retention.ms", "1")]),
            (2, "bad", &[("flush.ms", "1")]),
        ],
        false,
    );
    assert!(
        twice.iter().all(|a| a.0 == 42),
        "a resource named twice: {twice:?}"
    );
    assert_eq!(
        alter_raw(&broker.addr, &[(2, "bad", &[("retention.ms", "1")])], true),
        vec![(0, None)]
    );
    // librdkafka's validate_only leaves everything as it was too.
    let validate_only = AlterConfig::new(ResourceSpecifier::Topic("bad")).set("retention.ms", "1");
    alter_configs(
        &broker.addr,
        &[validate_only],
        &AdminOptions::new().validate_only(true),
    );
    let configs = describe_topic(&broker.addr, "bad");
    assert_eq!(
        value_of(&configs, "retention.ms"),
        ("3600000".into(), 1),
        "neither the failed changes nor validate_only changed anything"
    );
}

/// (broker, partition) → (size, offset lag) of `topic`'s replicas as the Java client's
/// describeLogDirs reports them.
fn replica_sizes(bootstrap: &str, topic: &str) -> Vec<(i32, i32, i64, i64)> {
    java_step(bootstrap, &["log-dirs", topic])
        .lines()
        .filter_map(|line| line.strip_prefix("SIZE "))
        .map(|rest| {
            let v: Vec<i64> = rest
                .split_whitespace()
                .map(|x| x.parse().expect("number"))
                .collect();
            (v[0] as i32, v[1] as i32, v[2], v[3])
        })
        .collect()
}

#[test]
fn describe_log_dirs_reports_replica_sizes_that_grow_with_produced_records() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::combined(dir.path(), 3);
    create(&cluster.addr(1), "sized", 1, 3, &[]);
    produce(&cluster.addr(1), "sized", 10_000).expect("produce");
    let bootstrap = cluster.bootstrap();
    let mut before = Vec::new();
    cluster.wait_for("three replicas holding the first record", WAIT, || {
        before = replica_sizes(&bootstrap, "sized");
        before.len() == 3 && before.iter().all(|r| r.2 >= 10_000)
    });
    for _ in 0..5 {
        produce(&cluster.addr(2), "sized", 100_000).expect("produce");
    }
    cluster.wait_for("every replica to grow by what was produced", WAIT, || {
        let after = replica_sizes(&bootstrap, "sized");
        after.len() == 3
            && after
                .iter()
                .all(|(_, _, size, lag)| *size >= 510_000 && *lag == 0)
    });

    // The raw answer of one broker: v4 carries the file system's sizes, v1 does not.
    let mut client = RawClient::connect(&cluster.addr(1));
    let request =
        DescribeLogDirsRequest::default()
            .with_topics(Some(vec![DescribableLogDirTopic::default()
                .with_topic(name("sized"))
                .with_partitions(vec![0, 7])]));
    client.send(ApiKey::DescribeLogDirs, 4, &request);
    let v4: DescribeLogDirsResponse = client.recv(4);
    let logs = &v4.results[0];
    assert_eq!(logs.error_code, 0);
    assert!(logs.total_bytes >= logs.usable_bytes && logs.usable_bytes > 0);
    assert_eq!(
        std::path::Path::new(logs.log_dir.as_str()),
        std::fs::canonicalize(node_logs(&cluster, 1)).unwrap()
    );
    let partitions = &logs.topics[0].partitions;
    assert_eq!(
        partitions.len(),
        1,
        "only partition 0 exists of those asked for"
    );
    assert!(partitions[0].partition_size >= 510_000);
    client.send(ApiKey::DescribeLogDirs, 1, &request);
    let v1: DescribeLogDirsResponse = client.recv(1);
    assert_eq!(v1.results[0].total_bytes, -1);
}

fn describe_partitions(
    client: &mut RawClient,
    topics: &[&str],
    limit: i32,
    cursor: Option<(&str, i32)>,
) -> DescribeTopicPartitionsResponse {
    let request = DescribeTopicPartitionsRequest::default()
        .with_topics(
            topics
                .iter()
                .map(|t| TopicRequest::default().with_name(name(t)))
                .collect(),
        )
        .with_response_partition_limit(limit)
        .with_cursor(cursor.map(|(t, p)| {
            Cursor::default()
                .with_topic_name(name(t))
                .with_partition_index(p)
        }));
    client.send(ApiKey::DescribeTopicPartitions, 0, &request);
    client.recv(0)
}

/// (topic, partitions) per topic of an answer, and its next cursor (topic, partition).
type Page = (Vec<(String, Vec<i32>)>, Option<(String, i32)>);

fn page(response: &DescribeTopicPartitionsResponse) -> Page {
    let topics = response
        .topics
        .iter()
        .map(|t| {
            let name = t.name.as_deref().map(|n| n.to_string()).unwrap_or_default();
            (
                name,
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    let cursor = response
        .next_cursor
        .as_ref()
        .map(|c| (c.topic_name.to_string(), c.partition_index));
    (topics, cursor)
}

#[test]
fn describe_topic_partitions_pages_through_topics_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create(&broker.addr, "pa", 3, 1, &[]);
    create(&broker.addr, "pb", 2, 1, &[]);
    java_step(&broker.addr, &["describe-topics", "pa", "3"]);

    let mut client = RawClient::connect(&broker.addr);
    let first = describe_partitions(&mut client, &["pb", "pa"], 2, None);
    assert_eq!(
        page(&first),
        (vec![("pa".into(), vec![0, 1])], Some(("pa".into(), 2)))
    );
    let second = describe_partitions(&mut client, &["pb", "pa"], 2, Some(("pa", 2)));
    assert_eq!(
        page(&second),
        (
            vec![("pa".into(), vec![2]), ("pb".into(), vec![0])],
            Some(("pb".into(), 1))
        )
    );
    let last = describe_partitions(&mut client, &["pb", "pa"], 2, Some(("pb", 1)));
    assert_eq!(page(&last), (vec![("pb".into(), vec![1])], None));
    let partition = &last.topics[0].partitions[0];
    assert_eq!(partition.leader_id.0, 1);
    assert_eq!(partition.eligible_leader_replicas, Some(Vec::new()));

    let unknown = describe_partitions(&mut client, &["nope"], 10, None);
    assert_eq!(
        unknown.topics[0].error_code, 3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );
    let stray_cursor = describe_partitions(&mut client, &["pa"], 10, Some(("pb", 0)));
    assert_eq!(
        stray_cursor.topics[0].error_code, 42,
        "INVALID_REQUEST: the cursor's topic is not among those asked for"
    );
}
