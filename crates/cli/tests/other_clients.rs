//! Independent client implementations against a real broker: kafka-python (pure Python,
//! its own protocol code) and confluent-kafka (a newer librdkafka). Run through
//! `scripts/test`, which installs them and sets `STROM_TEST_PYTHON`.

mod common;

use std::process::Command;

use common::Broker;

fn python() -> String {
    std::env::var("STROM_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("STROM_TEST_PYTHON is not set: run the tests with scripts/test, which installs the Python Kafka clients")
    })
}

#[test]
fn kafka_python_and_confluent_kafka_produce_consume_and_administer() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/clients/python_clients.py"
    );
    let output = Command::new(python())
        .arg(script)
        .arg(&broker.addr)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("PYTHON-CLIENTS-OK"),
        "python clients failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nbroker log:\n{}",
        broker.log()
    );
}
