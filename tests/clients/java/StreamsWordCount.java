// A Kafka Streams application (kafka-streams 4.x) with processing.guarantee=exactly_once_v2
// against a running broker: a word count over INPUT written to OUTPUT. It produces LINES
// lines, runs the topology (a repartition topic, a changelog topic, transactions with
// sendOffsetsToTransaction through the group), and checks with a read_committed consumer
// that the last count of each word in OUTPUT is exactly its count in the input.
// Usage: java StreamsWordCount BOOTSTRAP INPUT OUTPUT APPLICATION_ID LINES STATE_DIR
// (exit code 1 with a message on any mismatch; prints STREAMS-CHECK-OK on success)

import java.time.Duration;
import java.util.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.*;
import org.apache.kafka.streams.*;
import org.apache.kafka.streams.kstream.*;
import org.apache.kafka.streams.state.BuiltInDslStoreSuppliers;

public class StreamsWordCount {
    static final String[] WORDS = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"};

    static void expect(boolean cond, String what) {
        if (!cond) {
            System.err.println("FAILED: " + what);
            System.exit(1);
        }
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], input = args[1], output = args[2], appId = args[3];
        int lines = Integer.parseInt(args[4]);
        String stateDir = args[5];

        Map<String, Long> expected = new TreeMap<>();
        Properties pp = new Properties();
        pp.put("bootstrap.servers", bootstrap);
        pp.put("key.serializer", StringSerializer.class.getName());
        pp.put("value.serializer", StringSerializer.class.getName());
        try (KafkaProducer<String, String> p = new KafkaProducer<>(pp)) {
            for (int i = 0; i < lines; i++) {
                StringBuilder line = new StringBuilder();
                for (int w = 0; w <= i % 4; w++) {
                    String word = WORDS[(i * 3 + w) % WORDS.length];
                    expected.merge(word, 1L, Long::sum);
                    line.append(word).append(' ');
                }
                p.send(new ProducerRecord<>(input, "line-" + i, line.toString().trim()));
            }
            p.flush();
        }

        StreamsBuilder builder = new StreamsBuilder();
        builder.<String, String>stream(input)
            .flatMapValues(line -> Arrays.asList(line.split(" ")))
            .groupBy((key, word) -> word)
            .count()
            .toStream()
            .to(output, Produced.with(Serdes.String(), Serdes.Long()));
        Properties sp = new Properties();
        sp.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        sp.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        sp.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        sp.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.String().getClass());
        sp.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.String().getClass());
        sp.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
        sp.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        sp.put(StreamsConfig.DSL_STORE_SUPPLIERS_CLASS_CONFIG,
            BuiltInDslStoreSuppliers.InMemoryDslStoreSuppliers.class);
        sp.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        KafkaStreams streams = new KafkaStreams(builder.build(), sp);
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("stream thread failed: " + e);
            e.printStackTrace();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.start();

        Properties cp = new Properties();
        cp.put("bootstrap.servers", bootstrap);
        cp.put("group.id", "wordcount-reader");
        cp.put("isolation.level", "read_committed");
        cp.put("auto.offset.reset", "earliest");
        cp.put("key.deserializer", StringDeserializer.class.getName());
        cp.put("value.deserializer", LongDeserializer.class.getName());
        Map<String, Long> latest = new TreeMap<>();
        long records = 0;
        try (KafkaConsumer<String, Long> c = new KafkaConsumer<>(cp)) {
            c.subscribe(List.of(output));
            long deadline = System.currentTimeMillis() + 180_000;
            while (!latest.equals(expected)) {
                expect(streams.state() != KafkaStreams.State.ERROR
                        && streams.state() != KafkaStreams.State.PENDING_ERROR,
                    "the streams application runs (state " + streams.state() + ")");
                expect(System.currentTimeMillis() < deadline,
                    "the word counts reach " + expected + ", got " + latest);
                for (ConsumerRecord<String, Long> r : c.poll(Duration.ofMillis(200))) {
                    Long before = latest.put(r.key(), r.value());
                    expect(before == null || r.value() > before,
                        "counts of " + r.key() + " only grow: " + before + " then " + r.value());
                    records++;
                }
            }
        }
        streams.close(Duration.ofSeconds(30));
        for (Map.Entry<String, Long> e : expected.entrySet()) {
            System.out.println("COUNT " + e.getKey() + " " + latest.get(e.getKey()));
        }
        System.out.println("output records " + records);
        System.out.println("STREAMS-CHECK-OK");
    }
}
