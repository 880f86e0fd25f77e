"""Drives a running broker with two independent Python clients and checks what they see.

kafka-python is a pure-Python implementation of the protocol (its own version negotiation
and codecs); confluent-kafka wraps a newer librdkafka than the Rust tests use. Each creates
a topic, produces keyed records with headers and compression, reads them back from the
start, looks offsets up by timestamp, describes configs and deletes the topic.

Usage: python_clients.py BOOTSTRAP   (exits non-zero with a message on any mismatch)
"""

import sys
import time

BOOTSTRAP = sys.argv[1]
N = 2000


def expect(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


def records(tag):
    return [(f"k{i % 17}".encode(), f"{tag}-{i}-".encode() * (1 + i % 5), [("i", str(i).encode())]) for i in range(N)]


def check_kafka_python():
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, client_id="kp-admin")
    admin.create_topics([NewTopic("kp", num_partitions=3, replication_factor=1, topic_configs={"retention.ms": "86400000"})])
    configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "kp")])
    text = repr(configs)
    expect("86400000" in text, "kafka-python describe_configs shows the override")

    sent = records("kp")
    # Idempotence (kafka-python 3's default) needs InitProducerId, which Strom does not
    # serve yet (the exactly-once issue); plain acks=all producing is what is checked here.
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, compression_type="gzip", acks="all", linger_ms=5, enable_idempotence=False)
    start_ms = int(time.time() * 1000)
    futures = [producer.send("kp", key=k, value=v, headers=h) for k, v, h in sent]
    producer.flush()
    meta = [f.get(timeout=30) for f in futures]
    by_partition = {}
    for (k, v, h), m in zip(sent, meta):
        by_partition.setdefault(m.partition, []).append((m.offset, k, v, h))

    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False, consumer_timeout_ms=20000)
    parts = [TopicPartition("kp", p) for p in range(3)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    got = {}
    for msg in consumer:
        got.setdefault(msg.partition, []).append((msg.offset, msg.key, msg.value, [(hk, hv) for hk, hv in msg.headers]))
        if sum(len(v) for v in got.values()) == N:
            break
    for p, recs in by_partition.items():
        expect(got.get(p) == recs, f"kafka-python reads partition {p} back identical")
    offsets = consumer.offsets_for_times({tp: start_ms for tp in parts})
    expect(all(o is not None and o.offset == 0 for o in offsets.values()), f"offsets_for_times {offsets}")
    end = consumer.end_offsets(parts)
    expect(sum(end.values()) == N, f"end offsets {end}")
    consumer.close()
    producer.close()
    admin.delete_topics(["kp"])
    admin.close()
    print("kafka-python ok")


def check_confluent_kafka():
    from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    for f in admin.create_topics([NewTopic("ck", num_partitions=2, replication_factor=1)]).values():
        f.result(30)
    res = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, "ck")])
    cfg = list(res.values())[0].result(30)
    expect(cfg["cleanup.policy"].value == "delete", "confluent describe_configs default cleanup.policy")

    for codec in ("lz4", "zstd", "snappy"):
        sent = records(codec)
        delivered = []
        producer = Producer({"bootstrap.servers": BOOTSTRAP, "compression.type": codec, "acks": "all", "linger.ms": 5})
        for k, v, h in sent:
            producer.produce("ck", key=k, value=v, headers=h, on_delivery=lambda err, m: delivered.append((err, m)))
            producer.poll(0)
        producer.flush(30)
        expect(all(err is None for err, _ in delivered) and len(delivered) == N, f"{codec}: all delivered")
        # Deliveries arrive in order per partition.
        # Delivery reports carry no headers: take them from what was sent (values are unique).
        headers_of = {v: h for _, v, h in sent}
        expected = {}
        for (err, m) in delivered:
            expected.setdefault(m.partition(), []).append((m.offset(), m.key(), m.value(), headers_of[m.value()]))
        consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "unused", "enable.auto.commit": False})
        first = {p: recs[0][0] for p, recs in expected.items()}
        consumer.assign([TopicPartition("ck", p, first[p]) for p in expected])
        got = {}
        deadline = time.time() + 30
        while sum(len(v) for v in got.values()) < N and time.time() < deadline:
            m = consumer.poll(0.5)
            if m is None:
                continue
            expect(m.error() is None, f"consume error {m.error()}")
            got.setdefault(m.partition(), []).append((m.offset(), m.key(), m.value(), m.headers()))
        consumer.close()
        for p, recs in expected.items():
            expect(got.get(p) == recs, f"confluent-kafka {codec} partition {p} identical")
    for f in admin.delete_topics(["ck"]).values():
        f.result(30)
    print("confluent-kafka ok")


def check_confluent_kip848():
    """librdkafka's KIP-848 consumer (group.protocol=consumer): two members split a topic."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic("ck848", num_partitions=4, replication_factor=1)])["ck848"].result(30)
    conf = {"bootstrap.servers": BOOTSTRAP, "group.id": "ck848-group", "group.protocol": "consumer", "auto.offset.reset": "earliest"}
    members = [Consumer(conf), Consumer(conf)]
    for c in members:
        c.subscribe(["ck848"])
    deadline = time.time() + 60
    sizes = [0, 0]
    while time.time() < deadline:
        for c in members:
            c.poll(0.05)
        sizes = [len(c.assignment()) for c in members]
        if sum(sizes) == 4 and min(sizes) > 0:
            break
    expect(sum(sizes) == 4 and min(sizes) > 0, f"KIP-848 assignment {sizes}")
    producer = Producer({"bootstrap.servers": BOOTSTRAP})
    for i in range(400):
        producer.produce("ck848", value=str(i).encode())
    producer.flush(30)
    seen = {}
    deadline = time.time() + 60
    while len(seen) < 400 and time.time() < deadline:
        for i, c in enumerate(members):
            m = c.poll(0.05)
            if m is not None and m.error() is None:
                expect((m.partition(), m.offset()) not in seen, "no record read twice")
                seen[(m.partition(), m.offset())] = i
    expect(len(seen) == 400, f"KIP-848 group read {len(seen)} of 400")
    owners = {}
    for (p, _), i in seen.items():
        owners.setdefault(p, set()).add(i)
    expect(all(len(o) == 1 for o in owners.values()), "each partition read by one member")
    for c in members:
        c.close()
    print("confluent-kafka KIP-848 ok")


check_kafka_python()
check_confluent_kafka()
check_confluent_kip848()
print("PYTHON-CLIENTS-OK")
