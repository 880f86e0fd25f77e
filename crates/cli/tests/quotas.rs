//! Client quotas with real `strom` processes: the Java AdminClient sets and describes them
//! (AlterClientQuotas, DescribeClientQuotas), every broker of a cluster sees the same
//! limits, and librdkafka producers and consumers over their byte rate are throttled — the
//! broker's `throttle_time_ms` reaches the client, which reports it in its statistics —
//! while clients without a quota are not. Bad input gets Kafka's errors.
//!
//! The Java steps need `STROM_TEST_JAVA_CP`, which `scripts/test` sets.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{Broker, RawClient};
use kafka_protocol::messages::alter_client_quotas_request::{EntityData, EntryData, OpData};
use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
use kafka_protocol::messages::{
    AlterClientQuotasRequest, AlterClientQuotasResponse, ApiKey, DescribeClientQuotasRequest,
    DescribeClientQuotasResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(120);

/// Runs one step of the Java QuotasCheck against `bootstrap`; returns its output.
fn java_step(bootstrap: &str, args: &[&str]) -> String {
    common::clients::java_step("QuotasCheck", "QUOTAS-CHECK-OK", bootstrap, args)
}

/// The largest throttle time any broker reported to the client, from its statistics.
#[derive(Clone, Default)]
struct ThrottleSeen(Arc<Mutex<i64>>);

impl ClientContext for ThrottleSeen {
    fn stats(&self, statistics: Statistics) {
        let max = statistics
            .brokers
            .values()
            .filter_map(|b| b.throttle.as_ref().map(|w| w.max))
            .max()
            .unwrap_or(0);
        let mut seen = self.0.lock().unwrap();
        *seen = (*seen).max(max);
    }
}

impl ConsumerContext for ThrottleSeen {}

impl ThrottleSeen {
    fn max_ms(&self) -> i64 {
        *self.0.lock().unwrap()
    }
}

/// Produces `count` records of `value_bytes` with `client_id` as fast as the client goes;
/// returns the largest throttle time it saw.
fn produce_flat_out(
    addr: &str,
    topic: &str,
    client_id: &str,
    count: usize,
    value_bytes: usize,
) -> i64 {
    let seen = ThrottleSeen::default();
    let producer: ThreadedProducer<StatsProducer> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("client.id", client_id)
        .set("linger.ms", "5")
        .set("statistics.interval.ms", "100")
        .create_with_context(StatsProducer(seen.clone()))
        .expect("producer");
    let value = vec![b'q'; value_bytes];
    for i in 0..count {
        let key = i.to_string();
        let mut record = BaseRecord::to(topic).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(WAIT).expect("flush");
    // One more statistics interval, so the last throttle is counted.
    std::thread::sleep(Duration::from_millis(300));
    seen.max_ms()
}

#[derive(Clone)]
struct StatsProducer(ThrottleSeen);

impl ClientContext for StatsProducer {
    fn stats(&self, statistics: Statistics) {
        self.0.stats(statistics)
    }
}

impl rdkafka::producer::ProducerContext for StatsProducer {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        result.as_ref().expect("delivered");
    }
}

/// Reads `count` records of `topic` partition 0 with `client_id`; returns the largest
/// throttle time it saw.
fn consume_all(addr: &str, topic: &str, client_id: &str, count: usize) -> i64 {
    let seen = ThrottleSeen::default();
    let consumer: BaseConsumer<ThrottleSeen> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("client.id", client_id)
        .set("group.id", client_id)
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", "100")
        .create_with_context(seen.clone())
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + WAIT;
    let mut got = 0;
    while got < count {
        assert!(Instant::now() < deadline, "consumed {got} of {count}");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => got += 1,
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        consumer.poll(Duration::from_millis(50));
    }
    seen.max_ms()
}

fn create_topic(addr: &str, topic: &str) {
    common::clients::create_topic(addr, topic, 1);
}

#[test]
fn byte_rate_quotas_throttle_fast_clients_and_spare_the_others() {
    let dir = tempfile::tempdir().unwrap();
    // Short windows keep the test quick: a 2 s measuring span.
    let broker = Broker::start(
        dir.path(),
        &["quota.window.num=3", "quota.window.size.seconds=1"],
    );
    create_topic(&broker.addr, "metered");
    java_step(
        &broker.addr,
        &["set", "slow", "producer_byte_rate", "200000"],
    );
    java_step(
        &broker.addr,
        &["set", "slow", "consumer_byte_rate", "400000"],
    );
    let described = java_step(&broker.addr, &["describe", "slow"]);
    assert!(
        described.contains("QUOTA producer_byte_rate 200000.0"),
        "{described}"
    );
    assert!(
        described.contains("QUOTA consumer_byte_rate 400000.0"),
        "{described}"
    );

    // 1 MB at 200 KB/s: the broker must throttle; an unlimited client id is not throttled.
    let slow = produce_flat_out(&broker.addr, "metered", "slow", 1000, 1000);
    assert!(slow > 0, "the throttle time reached the producer");
    let fast = produce_flat_out(&broker.addr, "metered", "fast", 1000, 1000);
    assert_eq!(fast, 0, "no quota, no throttle");

    let slow = consume_all(&broker.addr, "metered", "slow", 2000);
    assert!(slow > 0, "the throttle time reached the consumer");
    let fast = consume_all(&broker.addr, "metered", "fast", 2000);
    assert_eq!(fast, 0);

    // Removed, the limit no longer applies.
    java_step(&broker.addr, &["remove", "slow", "producer_byte_rate"]);
    let described = java_step(&broker.addr, &["describe", "slow"]);
    assert!(!described.contains("producer_byte_rate"), "{described}");
    assert_eq!(
        produce_flat_out(&broker.addr, "metered", "slow", 200, 1000),
        0
    );
}

#[test]
fn a_default_client_quota_applies_to_each_client_apart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        &["quota.window.num=3", "quota.window.size.seconds=1"],
    );
    create_topic(&broker.addr, "shared");
    java_step(
        &broker.addr,
        &["set-default", "producer_byte_rate", "100000"],
    );
    java_step(
        &broker.addr,
        &["set", "exempt", "producer_byte_rate", "1000000000"],
    );
    assert!(produce_flat_out(&broker.addr, "shared", "anyone", 1000, 1000) > 0);
    // A more specific quota beats the default.
    assert_eq!(
        produce_flat_out(&broker.addr, "shared", "exempt", 1000, 1000),
        0
    );
    let all = java_step(&broker.addr, &["describe-all"]);
    assert!(
        all.contains("ENTITY {client-id=null} producer_byte_rate 100000.0"),
        "{all}"
    );
}

fn describe_raw(
    addr: &str,
    components: Vec<ComponentData>,
    strict: bool,
) -> DescribeClientQuotasResponse {
    let mut client = RawClient::connect(addr);
    let request = DescribeClientQuotasRequest::default()
        .with_components(components)
        .with_strict(strict);
    client.send(ApiKey::DescribeClientQuotas, 1, &request);
    client.recv(1)
}

fn component(entity_type: &str, match_type: i8, name: Option<&str>) -> ComponentData {
    ComponentData::default()
        .with_entity_type(StrBytes::from_string(entity_type.into()))
        .with_match_type(match_type)
        .with_match(name.map(|n| StrBytes::from_string(n.into())))
}

#[test]
fn quotas_are_the_same_on_every_broker_of_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::combined(dir.path(), 3);
    java_step(
        &cluster.addr(1),
        &["set", "everywhere", "request_percentage", "25.5"],
    );
    for id in cluster.broker_ids() {
        let response = describe_raw(
            &cluster.addr(id),
            vec![component("client-id", 0, Some("everywhere"))],
            true,
        );
        assert_eq!(response.error_code, 0);
        let entries = response.entries.unwrap();
        assert_eq!(entries.len(), 1, "broker {id}");
        assert_eq!(entries[0].values[0].key.as_str(), "request_percentage");
        assert_eq!(entries[0].values[0].value, 25.5);
    }
}

#[test]
fn bad_quota_requests_get_kafkas_errors() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    java_step(&broker.addr, &["bad-input"]);

    // Filters: an exact match needs a name, a default match must not have one, types once.
    for (components, what) in [
        (
            vec![component("client-id", 0, None)],
            "exact without a name",
        ),
        (
            vec![component("client-id", 1, Some("x"))],
            "default with a name",
        ),
        (vec![component("client-id", 7, None)], "unknown match type"),
        (
            vec![component("user", 2, None), component("user", 1, None)],
            "a type twice",
        ),
        (
            vec![component("ip", 2, None), component("user", 2, None)],
            "ip with user",
        ),
        (vec![component("group", 2, None)], "unknown entity type"),
    ] {
        let response = describe_raw(&broker.addr, components, false);
        assert_eq!(
            response.error_code,
            ResponseError::InvalidRequest.code(),
            "{what}"
        );
        assert!(response.entries.is_none(), "{what}");
    }

    // A value the controller cannot hold (NaN) is refused by the broker, which keeps serving.
    let mut client = RawClient::connect(&broker.addr);
    let request = AlterClientQuotasRequest::default().with_entries(vec![EntryData::default()
        .with_entity(vec![EntityData::default()
            .with_entity_type(StrBytes::from_static_str("client-id"))
            .with_entity_name(Some(StrBytes::from_static_str("nan")))])
        .with_ops(vec![OpData::default()
            .with_key(StrBytes::from_static_str("producer_byte_rate"))
            .with_value(f64::NAN)])]);
    client.send(ApiKey::AlterClientQuotas, 1, &request);
    let response: AlterClientQuotasResponse = client.recv(1);
    assert_eq!(
        response.entries[0].error_code,
        ResponseError::InvalidRequest.code()
    );
    let response = describe_raw(&broker.addr, vec![], false);
    assert_eq!(response.entries.unwrap().len(), 0);
}
