// Transactions with the Java client (kafka-clients 4.x) against a running broker, one step
// per run; crates/cli/tests/transactions.rs runs the steps.
// Usage: java TxnCheck BOOTSTRAP STEP TOPIC   (exit code 1 with a message on any mismatch;
// prints TXN-CHECK-OK on success)
//
//   commit-abort TOPIC   10 transactions of 20 records, committed and aborted in turn: a
//                        read_committed consumer sees exactly the committed records, in
//                        order; a read_uncommitted consumer sees all 200
//   fence TOPIC          a second producer with the same transactional.id fences the first:
//                        its commit fails with ProducerFencedException (or
//                        InvalidProducerEpochException), and only the second's records are
//                        committed
//   offsets TOPIC        sendOffsetsToTransaction: a group's offsets are committed with a
//                        committed transaction and not with an aborted one

import java.time.Duration;
import java.util.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.InvalidProducerEpochException;
import org.apache.kafka.common.errors.ProducerFencedException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class TxnCheck {
    static void expect(boolean cond, String what) {
        if (!cond) {
            System.err.println("FAILED: " + what);
            System.exit(1);
        }
    }

    static KafkaProducer<String, String> producer(String bootstrap, String txnId) {
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("transactional.id", txnId);
        p.put("transaction.timeout.ms", "30000");
        p.put("key.serializer", StringSerializer.class.getName());
        p.put("value.serializer", StringSerializer.class.getName());
        return new KafkaProducer<>(p);
    }

    static KafkaConsumer<String, String> consumer(String bootstrap, String isolation, String group) {
        Properties c = new Properties();
        c.put("bootstrap.servers", bootstrap);
        c.put("group.id", group);
        c.put("isolation.level", isolation);
        c.put("enable.auto.commit", "false");
        c.put("auto.offset.reset", "earliest");
        c.put("key.deserializer", StringDeserializer.class.getName());
        c.put("value.deserializer", StringDeserializer.class.getName());
        return new KafkaConsumer<>(c);
    }

    /// Every value of the topic in partition order, read from the start until the consumer's
    /// position reaches the end offset of each partition (the last stable offset for
    /// read_committed).
    static Map<Integer, List<String>> readAll(String bootstrap, String topic, String isolation) {
        try (KafkaConsumer<String, String> c = consumer(bootstrap, isolation, "reader-" + UUID.randomUUID())) {
            List<TopicPartition> tps = new ArrayList<>();
            for (PartitionInfo info : c.partitionsFor(topic)) tps.add(new TopicPartition(topic, info.partition()));
            c.assign(tps);
            c.seekToBeginning(tps);
            Map<TopicPartition, Long> end = c.endOffsets(tps);
            Map<Integer, List<String>> got = new TreeMap<>();
            long deadline = System.currentTimeMillis() + 60_000;
            while (true) {
                boolean done = true;
                for (TopicPartition tp : tps) if (c.position(tp) < end.get(tp)) done = false;
                if (done) break;
                expect(System.currentTimeMillis() < deadline, "reading " + topic + " reaches its end offsets " + end);
                for (ConsumerRecord<String, String> r : c.poll(Duration.ofMillis(200))) {
                    got.computeIfAbsent(r.partition(), k -> new ArrayList<>()).add(r.value());
                }
            }
            return got;
        }
    }

    static int count(Map<Integer, List<String>> byPartition) {
        return byPartition.values().stream().mapToInt(List::size).sum();
    }

    static void commitAbort(String bootstrap, String topic) {
        Map<Integer, List<String>> committed = new TreeMap<>();
        try (KafkaProducer<String, String> p = producer(bootstrap, "java-commit-abort")) {
            p.initTransactions();
            for (int t = 0; t < 10; t++) {
                p.beginTransaction();
                List<RecordMetadata> sent = new ArrayList<>();
                for (int i = 0; i < 20; i++) {
                    String value = "txn-" + t + "-" + i;
                    try {
                        sent.add(p.send(new ProducerRecord<>(topic, "k" + i, value)).get());
                    } catch (Exception e) {
                        throw new RuntimeException(e);
                    }
                    if (t % 2 == 0) {
                        committed.computeIfAbsent(sent.get(i).partition(), k -> new ArrayList<>()).add(value);
                    }
                }
                if (t % 2 == 0) p.commitTransaction(); else p.abortTransaction();
            }
        }
        Map<Integer, List<String>> readCommitted = readAll(bootstrap, topic, "read_committed");
        expect(readCommitted.equals(committed),
            "read_committed sees exactly the committed records in order: expected " + committed + " got " + readCommitted);
        Map<Integer, List<String>> readUncommitted = readAll(bootstrap, topic, "read_uncommitted");
        expect(count(readUncommitted) == 200, "read_uncommitted sees all 200 records, got " + count(readUncommitted));
        System.out.println("committed " + count(committed) + " of " + count(readUncommitted));
    }

    static void fence(String bootstrap, String topic) throws Exception {
        KafkaProducer<String, String> first = producer(bootstrap, "java-fence");
        first.initTransactions();
        first.beginTransaction();
        first.send(new ProducerRecord<>(topic, "k", "first")).get();
        try (KafkaProducer<String, String> second = producer(bootstrap, "java-fence")) {
            second.initTransactions();
            try {
                first.commitTransaction();
                expect(false, "the fenced producer's commit fails");
            } catch (ProducerFencedException | InvalidProducerEpochException e) {
                System.out.println("first producer fenced: " + e.getClass().getSimpleName());
            } catch (KafkaException e) {
                Throwable cause = e.getCause();
                expect(cause instanceof ProducerFencedException || cause instanceof InvalidProducerEpochException,
                    "the fenced producer's commit fails as fenced, got " + e);
            }
            first.close(Duration.ZERO);
            second.beginTransaction();
            second.send(new ProducerRecord<>(topic, "k", "second")).get();
            second.commitTransaction();
        }
        Map<Integer, List<String>> seen = readAll(bootstrap, topic, "read_committed");
        List<String> all = new ArrayList<>();
        seen.values().forEach(all::addAll);
        expect(all.equals(List.of("second")), "only the second producer's record is committed, got " + all);
    }

    static void offsets(String bootstrap, String topic) throws Exception {
        String group = "java-txn-offsets";
        TopicPartition tp = new TopicPartition(topic, 0);
        try (KafkaProducer<String, String> p = producer(bootstrap, "java-offsets");
             KafkaConsumer<String, String> c = consumer(bootstrap, "read_committed", group)) {
            p.initTransactions();
            c.subscribe(List.of(topic));
            while (c.assignment().isEmpty()) c.poll(Duration.ofMillis(100));
            ConsumerGroupMetadata meta = c.groupMetadata();
            p.beginTransaction();
            p.sendOffsetsToTransaction(Map.of(tp, new OffsetAndMetadata(7)), meta);
            p.commitTransaction();
            p.beginTransaction();
            p.sendOffsetsToTransaction(Map.of(tp, new OffsetAndMetadata(9)), meta);
            p.abortTransaction();
            Map<TopicPartition, OffsetAndMetadata> committed = c.committed(Set.of(tp));
            expect(committed.get(tp) != null && committed.get(tp).offset() == 7,
                "the committed transaction's offset 7 is the group's, not the aborted 9: " + committed);
        }
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String step = args[1];
        String topic = args[2];
        switch (step) {
            case "commit-abort" -> commitAbort(bootstrap, topic);
            case "fence" -> fence(bootstrap, topic);
            case "offsets" -> offsets(bootstrap, topic);
            default -> expect(false, "unknown step " + step);
        }
        System.out.println("TXN-CHECK-OK");
    }
}
