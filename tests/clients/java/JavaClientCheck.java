// Drives a running broker with the Java client (kafka-clients 4.x) and checks what it sees:
// admin (create, describe cluster/configs, list offsets, delete), a producer with lz4 and
// acks=all, and a consumer reading everything back from the start by assignment.
// Usage: java JavaClientCheck BOOTSTRAP   (exit code 1 with a message on any mismatch)

import java.time.Duration;
import java.util.*;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.*;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.*;

public class JavaClientCheck {
    static void expect(boolean cond, String what) {
        if (!cond) {
            System.err.println("FAILED: " + what);
            System.exit(1);
        }
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = "java-check";
        int n = 5000;
        Properties common = new Properties();
        common.put("bootstrap.servers", bootstrap);

        try (Admin admin = Admin.create(common)) {
            admin.createTopics(List.of(new NewTopic(topic, 3, (short) 1).configs(Map.of("retention.ms", "3600000")))).all().get();
            DescribeClusterResult cluster = admin.describeCluster();
            expect(cluster.nodes().get().size() == 1, "one node in the cluster");
            expect(cluster.clusterId().get().length() == 22, "cluster id");
            ConfigResource res = new ConfigResource(ConfigResource.Type.TOPIC, topic);
            Config config = admin.describeConfigs(List.of(res)).all().get().get(res);
            expect("3600000".equals(config.get("retention.ms").value()), "retention.ms override described");
            expect(config.get("retention.ms").source() == ConfigEntry.ConfigSource.DYNAMIC_TOPIC_CONFIG, "override source");
            TopicDescription desc = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
            expect(desc.partitions().size() == 3 && desc.topicId() != null, "describeTopics with a topic id");
            String grown = topic + "-grown";
            admin.createTopics(List.of(new NewTopic(grown, 1, (short) 1))).all().get();
            admin.createPartitions(Map.of(grown, NewPartitions.increaseTo(3))).all().get();
            expect(admin.describeTopics(List.of(grown)).allTopicNames().get().get(grown).partitions().size() == 3,
                "createPartitions grows a topic");
            QuorumInfo quorum = admin.describeMetadataQuorum().quorumInfo().get();
            expect(quorum.leaderId() == 1 && quorum.voters().size() == 1 && quorum.highWatermark() > 0,
                "describeMetadataQuorum names the active controller");
            admin.deleteTopics(List.of(grown)).all().get();
        }

        Properties pp = new Properties();
        pp.putAll(common);
        pp.put("acks", "all");
        pp.put("compression.type", "lz4");
        pp.put("linger.ms", "5");
        // The Java client turns idempotence on by default; InitProducerId is not served yet.
        pp.put("enable.idempotence", "false");
        long startMs = System.currentTimeMillis();
        Map<Integer, List<String>> expected = new TreeMap<>();
        try (Producer<String, String> producer = new KafkaProducer<>(pp, new StringSerializer(), new StringSerializer())) {
            List<java.util.concurrent.Future<RecordMetadata>> futures = new ArrayList<>();
            for (int i = 0; i < n; i++) {
                ProducerRecord<String, String> r = new ProducerRecord<>(topic, "key-" + (i % 31), "value-" + i);
                r.headers().add("seq", Integer.toString(i).getBytes());
                futures.add(producer.send(r));
            }
            for (int i = 0; i < n; i++) {
                RecordMetadata m = futures.get(i).get();
                List<String> values = expected.computeIfAbsent(m.partition(), p -> new ArrayList<>());
                expect(m.offset() == values.size(), "dense offsets in partition " + m.partition());
                values.add("value-" + i);
            }
        }

        Properties cp = new Properties();
        cp.putAll(common);
        cp.put("enable.auto.commit", "false");
        Map<Integer, List<String>> got = new TreeMap<>();
        try (Consumer<String, String> consumer = new KafkaConsumer<>(cp, new StringDeserializer(), new StringDeserializer())) {
            List<TopicPartition> parts = new ArrayList<>();
            for (int p = 0; p < 3; p++) parts.add(new TopicPartition(topic, p));
            consumer.assign(parts);
            consumer.seekToBeginning(parts);
            int count = 0;
            long deadline = System.currentTimeMillis() + 60_000;
            while (count < n && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(500))) {
                    Header h = r.headers().lastHeader("seq");
                    expect(h != null && r.value().equals("value-" + new String(h.value())), "header travels with its record");
                    got.computeIfAbsent(r.partition(), p -> new ArrayList<>()).add(r.value());
                    count++;
                }
            }
            expect(expected.equals(got), "every record read back in order per partition");
            Map<TopicPartition, Long> ends = consumer.endOffsets(parts);
            long total = 0;
            for (long e : ends.values()) total += e;
            expect(total == n, "end offsets sum to the records produced");
            Map<TopicPartition, Long> query = new HashMap<>();
            for (TopicPartition tp : parts) query.put(tp, startMs);
            for (Map.Entry<TopicPartition, OffsetAndTimestamp> e : consumer.offsetsForTimes(query).entrySet()) {
                expect(e.getValue() != null && e.getValue().offset() == 0, "offsetsForTimes finds the first record");
            }
            Map<TopicPartition, Long> begins = consumer.beginningOffsets(parts);
            for (long b : begins.values()) expect(b == 0, "beginning offsets");
        }

        // A consumer group (classic protocol): subscribe, read everything, commit; a second
        // member of the same group then sees the committed offsets and nothing left to read.
        Properties gp = new Properties();
        gp.putAll(common);
        gp.put("group.id", "java-check-group");
        gp.put("auto.offset.reset", "earliest");
        gp.put("enable.auto.commit", "false");
        gp.put("group.protocol", "classic");
        int grouped = 0;
        try (Consumer<String, String> consumer = new KafkaConsumer<>(gp, new StringDeserializer(), new StringDeserializer())) {
            consumer.subscribe(List.of(topic));
            long deadline = System.currentTimeMillis() + 60_000;
            while (grouped < n && System.currentTimeMillis() < deadline) {
                grouped += consumer.poll(Duration.ofMillis(500)).count();
            }
            expect(grouped == n, "the group consumer read every record: " + grouped);
            expect(consumer.assignment().size() == 3, "the only member owns all three partitions");
            consumer.commitSync();
        }
        try (Consumer<String, String> consumer = new KafkaConsumer<>(gp, new StringDeserializer(), new StringDeserializer())) {
            Set<TopicPartition> parts = new HashSet<>();
            for (int p = 0; p < 3; p++) parts.add(new TopicPartition(topic, p));
            long committed = 0;
            for (org.apache.kafka.clients.consumer.OffsetAndMetadata o : consumer.committed(parts).values()) committed += o.offset();
            expect(committed == n, "committed offsets cover every record: " + committed);
        }
        try (Admin admin = Admin.create(common)) {
            ConsumerGroupDescription group = admin.describeConsumerGroups(List.of("java-check-group")).all().get().get("java-check-group");
            expect(group.members().isEmpty(), "the group is empty after its members closed");
            Map<TopicPartition, org.apache.kafka.clients.consumer.OffsetAndMetadata> offsets =
                admin.listConsumerGroupOffsets("java-check-group").partitionsToOffsetAndMetadata().get();
            expect(offsets.size() == 3, "admin lists the group's offsets");
            admin.deleteConsumerGroups(List.of("java-check-group")).all().get();
        }

        checkConsumerProtocol(common);

        try (Admin admin = Admin.create(common)) {
            admin.deleteTopics(List.of(topic)).all().get();
            expect(!admin.listTopics().names().get().contains(topic), "topic deleted");
        }
        System.out.println("JAVA-CLIENT-OK");
    }

    /// KIP-848: two consumers with group.protocol=consumer split a 4-partition topic by
    /// server-side assignment, and together read every record exactly once.
    static void checkConsumerProtocol(Properties common) throws Exception {
        String topic = "java-848";
        int n = 1000;
        try (Admin admin = Admin.create(common)) {
            admin.createTopics(List.of(new NewTopic(topic, 4, (short) 1))).all().get();
        }
        Properties np = new Properties();
        np.putAll(common);
        np.put("group.id", "java-848-group");
        np.put("group.protocol", "consumer");
        np.put("auto.offset.reset", "earliest");
        np.put("enable.auto.commit", "false");
        try (Consumer<String, String> a = new KafkaConsumer<>(np, new StringDeserializer(), new StringDeserializer());
             Consumer<String, String> b = new KafkaConsumer<>(np, new StringDeserializer(), new StringDeserializer())) {
            a.subscribe(List.of(topic));
            b.subscribe(List.of(topic));
            long deadline = System.currentTimeMillis() + 60_000;
            List<ConsumerRecord<String, String>> seen = new ArrayList<>();
            while (System.currentTimeMillis() < deadline
                    && !(a.assignment().size() + b.assignment().size() == 4 && !a.assignment().isEmpty() && !b.assignment().isEmpty())) {
                a.poll(Duration.ofMillis(100)).forEach(seen::add);
                b.poll(Duration.ofMillis(100)).forEach(seen::add);
            }
            expect(a.assignment().size() + b.assignment().size() == 4, "all four partitions assigned: " + a.assignment() + " " + b.assignment());
            expect(!a.assignment().isEmpty() && !b.assignment().isEmpty(), "both members own partitions");
            Set<TopicPartition> overlap = new HashSet<>(a.assignment());
            overlap.retainAll(b.assignment());
            expect(overlap.isEmpty(), "no partition owned twice");
            Properties pp = new Properties();
            pp.putAll(common);
            pp.put("enable.idempotence", "false");
            try (Producer<String, String> producer = new KafkaProducer<>(pp, new StringSerializer(), new StringSerializer())) {
                for (int i = 0; i < n; i++) producer.send(new ProducerRecord<>(topic, "k" + i, "v" + i));
                producer.flush();
            }
            Map<Integer, Set<Integer>> owners = new HashMap<>();
            Set<String> unique = new HashSet<>();
            deadline = System.currentTimeMillis() + 60_000;
            while (unique.size() < n && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> r : a.poll(Duration.ofMillis(100))) {
                    unique.add(r.partition() + "/" + r.offset());
                    owners.computeIfAbsent(r.partition(), x -> new HashSet<>()).add(0);
                }
                for (ConsumerRecord<String, String> r : b.poll(Duration.ofMillis(100))) {
                    unique.add(r.partition() + "/" + r.offset());
                    owners.computeIfAbsent(r.partition(), x -> new HashSet<>()).add(1);
                }
            }
            expect(unique.size() == n, "every record read once by the KIP-848 group: " + unique.size());
            for (Set<Integer> o : owners.values()) expect(o.size() == 1, "each partition read by one member");
            a.commitSync();
            b.commitSync();
            try (Admin admin = Admin.create(common)) {
                ConsumerGroupDescription group = admin.describeConsumerGroups(List.of("java-848-group")).all().get().get("java-848-group");
                expect(group.type() == GroupType.CONSUMER, "described as a consumer-protocol group: " + group.type());
                expect(group.members().size() == 2, "two members described");
                long committed = 0;
                for (org.apache.kafka.clients.consumer.OffsetAndMetadata o :
                        admin.listConsumerGroupOffsets("java-848-group").partitionsToOffsetAndMetadata().get().values()) committed += o.offset();
                expect(committed == n, "both members committed with their member epochs: " + committed);
            }
        }
        try (Admin admin = Admin.create(common)) {
            admin.deleteTopics(List.of(topic)).all().get();
        }
    }
}
