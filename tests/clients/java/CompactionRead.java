// Reads partition 0 of a topic from its start to its end offset with the Java client and
// prints every record as `offset key value` (hex; NULL for a tombstone's value), then
// `COMPACTION-READ-OK <end offset>`. The compaction tests compare what it prints with what
// was produced: the reference client must read a compacted log (offset gaps, rebuilt and
// empty batches, KIP-534 delete horizons, every codec) as Strom serves it.
// Usage: java CompactionRead BOOTSTRAP TOPIC (built by scripts/test with the other checks)

import java.time.Duration;
import java.util.List;
import java.util.Properties;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public class CompactionRead {
    private static final long TIMEOUT_MS = 60_000;

    public static void main(String[] args) {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        props.put("key.deserializer", ByteArrayDeserializer.class.getName());
        props.put("value.deserializer", ByteArrayDeserializer.class.getName());
        props.put("enable.auto.commit", "false");
        props.put("check.crcs", "true");
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
            TopicPartition partition = new TopicPartition(args[1], 0);
            consumer.assign(List.of(partition));
            consumer.seekToBeginning(List.of(partition));
            long end = consumer.endOffsets(List.of(partition)).get(partition);
            long deadline = System.currentTimeMillis() + TIMEOUT_MS;
            while (consumer.position(partition) < end) {
                if (System.currentTimeMillis() > deadline) {
                    System.err.println("timed out at " + consumer.position(partition) + " of " + end);
                    System.exit(1);
                }
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(200))) {
                    String value = r.value() == null ? "NULL" : hex(r.value());
                    System.out.println(r.offset() + " " + hex(r.key()) + " " + value);
                }
            }
            System.out.println("COMPACTION-READ-OK " + end);
        }
    }

    private static String hex(byte[] bytes) {
        StringBuilder out = new StringBuilder();
        for (byte b : bytes) {
            out.append(String.format("%02x", b));
        }
        return out.toString();
    }
}
