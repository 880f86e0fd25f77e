//! Real-client helpers shared by the integration tests (librdkafka through `rdkafka`).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// One record as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// An admin client and a runtime to drive its futures.
pub fn admin(addr: &str) -> (AdminClient<DefaultClientContext>, tokio::runtime::Runtime) {
    let admin = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (admin, rt)
}

pub fn create_topic(addr: &str, topic: &str, partitions: i32) {
    let (admin, rt) = admin(addr);
    let results = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
}

/// Creates `topic` with `partitions`, `replicas` replicas and topic `configs`.
pub fn create_topic_with(
    addr: &str,
    topic: &str,
    partitions: i32,
    replicas: i32,
    configs: &[(&str, &str)],
) {
    let (admin, rt) = admin(addr);
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replicas));
    for (k, v) in configs {
        new = new.set(k, v);
    }
    for r in rt
        .block_on(admin.create_topics(&[new], &AdminOptions::new()))
        .expect("create topics")
    {
        r.expect("topic created");
    }
}

pub fn delete_topic(addr: &str, topic: &str) {
    let (admin, rt) = admin(addr);
    let results = rt
        .block_on(admin.delete_topics(&[topic], &AdminOptions::new()))
        .expect("delete topics");
    for r in results {
        r.expect("topic deleted");
    }
}

/// Grows `topic` to `total` partitions.
pub fn add_partitions(addr: &str, topic: &str, total: usize) {
    let (admin, rt) = admin(addr);
    let results = rt
        .block_on(admin.create_partitions(
            &[rdkafka::admin::NewPartitions::new(topic, total)],
            &AdminOptions::new(),
        ))
        .expect("create partitions");
    for r in results {
        r.expect("partitions created");
    }
}

/// Produces `records` with the given codec; returns what each partition should hold, in order.
pub fn produce_all(
    addr: &str,
    topic: &str,
    compression: &str,
    records: &[Rec],
    acks: &str,
) -> BTreeMap<i32, Vec<Rec>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("compression.type", compression)
        .set("acks", acks)
        .set("linger.ms", "5")
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .expect("producer");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut expected: BTreeMap<i32, Vec<(i64, Rec)>> = BTreeMap::new();
    rt.block_on(async {
        let mut pending = Vec::new();
        for rec in records {
            let mut headers = OwnedHeaders::new();
            for (k, v) in &rec.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            let future = producer
                .send_result(
                    FutureRecord::to(topic)
                        .key(&rec.key)
                        .payload(&rec.value)
                        .headers(headers),
                )
                .expect("enqueue");
            pending.push((rec.clone(), future));
        }
        for (rec, future) in pending {
            let delivered = future.await.expect("delivery").expect("acknowledged");
            expected
                .entry(delivered.partition)
                .or_default()
                .push((delivered.offset, rec));
        }
    });
    producer.flush(Duration::from_secs(30)).expect("flush");
    expected
        .into_iter()
        .map(|(p, mut recs)| {
            recs.sort_by_key(|(offset, _)| *offset);
            (p, recs.into_iter().map(|(_, r)| r).collect())
        })
        .collect()
}

/// Reads every partition from the start until `expected` counts are reached.
pub fn consume_all(
    addr: &str,
    topic: &str,
    expected: &BTreeMap<i32, usize>,
) -> BTreeMap<i32, Vec<(i64, Rec)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in expected.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let total: usize = expected.values().sum();
    let mut got: BTreeMap<i32, Vec<(i64, Rec)>> = BTreeMap::new();
    let mut count = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while count < total {
        assert!(
            std::time::Instant::now() < deadline,
            "consumed {count} of {total}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                let rec = Rec {
                    key: m.key().unwrap_or_default().to_vec(),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                };
                got.entry(m.partition())
                    .or_default()
                    .push((m.offset(), rec));
                count += 1;
            }
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    got
}

/// Runs one step of a Java check program (`tests/clients/java/<class>.java`, compiled by
/// `scripts/test`, which sets `STROM_TEST_JAVA_CP`) against `bootstrap`; asserts it succeeded
/// and printed `<marker>`, and returns its output.
pub fn java_step(class: &str, marker: &str, bootstrap: &str, args: &[&str]) -> String {
    let classpath = std::env::var("STROM_TEST_JAVA_CP").unwrap_or_else(|_| {
        panic!("STROM_TEST_JAVA_CP is not set: run the tests with scripts/test, which builds the Java checks")
    });
    let output = std::process::Command::new("java")
        .arg("-cp")
        .arg(classpath)
        .arg(class)
        .arg(bootstrap)
        .args(args)
        .output()
        .expect("run java");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && stdout.contains(marker),
        "Java {class} step {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A librdkafka transactional producer with `transactional.id` `id`, initialised.
pub fn transactional_producer(bootstrap: &str, id: &str) -> BaseProducer {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", id)
        .set("linger.ms", "5")
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(Duration::from_secs(60))
        .expect("init_transactions");
    producer
}
