//! Independent client implementations against a real broker: the Java client (4.x),
//! franz-go, kafkajs, kafka-python (pure Python) and confluent-kafka (a newer librdkafka).
//! `scripts/test` installs and builds them and passes their locations in `STROM_TEST_*`.

mod common;

use std::process::Command;

use common::Broker;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test, which installs the clients")
    })
}

/// Runs a client check program against a fresh broker; it must exit 0 and print `ok_line`.
/// Group settings are shortened so that rebalances take heartbeats of half a second.
fn check(mut command: Command, ok_line: &str) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        &[
            "group.consumer.heartbeat.interval.ms=500",
            "group.initial.rebalance.delay.ms=0",
        ],
    );
    let output = command
        .arg(&broker.addr)
        .output()
        .expect("run the client check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(ok_line),
        "client check failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nbroker log:\n{}",
        broker.log()
    );
}

#[test]
fn kafka_python_and_confluent_kafka_produce_consume_in_groups_and_administer() {
    let mut command = Command::new(env("STROM_TEST_PYTHON"));
    command.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/clients/python_clients.py"
    ));
    check(command, "PYTHON-CLIENTS-OK");
}

#[test]
fn the_java_client_produces_consumes_in_classic_and_kip_848_groups_and_administers() {
    let mut command = Command::new("java");
    command
        .arg("-cp")
        .arg(env("STROM_TEST_JAVA_CP"))
        .arg("JavaClientCheck");
    check(command, "JAVA-CLIENT-OK");
}

#[test]
fn franz_go_produces_consumes_and_administers() {
    check(Command::new(env("STROM_TEST_FRANZ")), "FRANZ-GO-OK");
}

#[test]
fn kafkajs_produces_consumes_in_a_group_and_administers() {
    let mut command = Command::new("node");
    command.arg(env("STROM_TEST_KAFKAJS"));
    check(command, "KAFKAJS-OK");
}
