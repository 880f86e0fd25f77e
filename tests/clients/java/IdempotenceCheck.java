// Produces and reads back with the Java client (kafka-clients 4.x) at its defaults, where the
// producer is idempotent (enable.idempotence=true, acks=all since Kafka 3.0), one step per run.
// crates/cli/tests/idempotence.rs runs the steps, cutting the producer's connections in
// between, and checks the stored batches.
// Usage: java IdempotenceCheck BOOTSTRAP STEP TOPIC COUNT   (exit code 1 with a message on any
// mismatch; prints IDEMPOTENCE-CHECK-OK on success)
//
//   produce TOPIC COUNT   sends the values 0..COUNT-1 to partition 0; every send must succeed
//   consume TOPIC COUNT   reads partition 0 from the start: the values 0..COUNT-1, each once,
//                         in order, and nothing after them

import java.time.Duration;
import java.util.*;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class IdempotenceCheck {
    static void expect(boolean cond, String what) {
        if (!cond) {
            System.err.println("FAILED: " + what);
            System.exit(1);
        }
    }

    static void produce(String bootstrap, String topic, int count) throws Exception {
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        props.put(ProducerConfig.BATCH_SIZE_CONFIG, "2048");
        // Nothing about idempotence or acks is set: the defaults are what is checked.
        ProducerConfig config = new ProducerConfig(props);
        expect(config.getBoolean(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG),
            "the Java client's default is an idempotent producer");
        AtomicReference<Exception> failure = new AtomicReference<>();
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            for (int i = 0; i < count; i++) {
                producer.send(new ProducerRecord<>(topic, 0, null, Integer.toString(i)), (metadata, e) -> {
                    if (e != null) {
                        failure.compareAndSet(null, e);
                    }
                });
            }
            producer.flush();
        }
        expect(failure.get() == null, "every send succeeds, got " + failure.get());
    }

    static void consume(String bootstrap, String topic, int count) {
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        TopicPartition partition = new TopicPartition(topic, 0);
        int next = 0;
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(props)) {
            consumer.assign(List.of(partition));
            consumer.seekToBeginning(List.of(partition));
            long deadline = System.currentTimeMillis() + 120_000;
            long quietUntil = Long.MAX_VALUE;
            while (System.currentTimeMillis() < Math.min(deadline, quietUntil)) {
                for (ConsumerRecord<String, String> record : consumer.poll(Duration.ofMillis(200))) {
                    expect(next < count, "no record after the last one, got " + record.value()
                        + " at offset " + record.offset());
                    expect(record.value().equals(Integer.toString(next)),
                        "value " + next + " next, got " + record.value() + " at offset " + record.offset());
                    next++;
                }
                if (next == count && quietUntil == Long.MAX_VALUE) {
                    // Read on a little: a duplicate after the last value would show up now.
                    quietUntil = System.currentTimeMillis() + 1_000;
                }
            }
        }
        expect(next == count, "read " + next + " of " + count + " values");
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[2];
        int count = Integer.parseInt(args[3]);
        switch (args[1]) {
            case "produce" -> produce(bootstrap, topic, count);
            case "consume" -> consume(bootstrap, topic, count);
            default -> expect(false, "unknown step " + args[1]);
        }
        System.out.println("IDEMPOTENCE-CHECK-OK");
    }
}
