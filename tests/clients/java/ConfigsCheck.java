// Drives a running broker's config and log-dir admin APIs with the Java client (kafka-clients
// 4.x), one step per run, and checks what the client sees. crates/cli/tests/configs.rs runs
// the steps and checks their effect on producers in between.
// Usage: java ConfigsCheck BOOTSTRAP STEP ARGS...   (exit code 1 with a message on any mismatch;
// prints CONFIGS-CHECK-OK on success)
//
//   cluster-default PLAIN OWN   message.max.bytes=50000 for the whole cluster (resource ""):
//                               PLAIN (no override) takes it, OWN keeps its own override
//   per-broker PLAIN ID         message.max.bytes=150000 for broker ID only
//   reset PLAIN ID              deletes both; PLAIN is back at the default
//   incremental TOPIC           SET, APPEND, SUBTRACT, DELETE and validate-only on TOPIC
//   bad-input TOPIC ID          Kafka's errors for bad names, values, topics, read-only keys
//   log-dirs TOPIC              prints "SIZE <broker> <partition> <bytes> <offset lag>" per replica
//   describe-topics TOPIC N     describeTopics pages through TOPIC's N partitions two at a time
//   list-resources              prints "RESOURCE <type> <name>" per config resource
//                               (listConfigResources, every type)

import java.util.*;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.admin.AlterConfigOp.OpType;
import org.apache.kafka.clients.admin.ConfigEntry.ConfigSource;
import org.apache.kafka.common.KafkaFuture;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.errors.*;

public class ConfigsCheck {
    static void expect(boolean cond, String what) {
        if (!cond) {
            System.err.println("FAILED: " + what);
            System.exit(1);
        }
    }

    static ConfigResource topic(String name) {
        return new ConfigResource(ConfigResource.Type.TOPIC, name);
    }

    static ConfigResource broker(String id) {
        return new ConfigResource(ConfigResource.Type.BROKER, id);
    }

    static AlterConfigOp op(String key, String value, OpType type) {
        return new AlterConfigOp(new ConfigEntry(key, value), type);
    }

    static void alter(Admin admin, ConfigResource resource, AlterConfigOp... ops) throws Exception {
        admin.incrementalAlterConfigs(Map.of(resource, List.of(ops))).all().get();
    }

    static Config describe(Admin admin, ConfigResource resource) throws Exception {
        DescribeConfigsOptions options = new DescribeConfigsOptions().includeSynonyms(true).includeDocumentation(true);
        return admin.describeConfigs(List.of(resource), options).all().get().get(resource);
    }

    static void expectEntry(Config config, String key, String value, ConfigSource source) {
        ConfigEntry entry = config.get(key);
        expect(entry != null, key + " is described");
        expect(value.equals(entry.value()), key + " = " + value + ", got " + entry.value());
        expect(entry.source() == source, key + " from " + source + ", got " + entry.source());
    }

    static List<ConfigSource> synonymSources(ConfigEntry entry) {
        List<ConfigSource> sources = new ArrayList<>();
        for (ConfigEntry.ConfigSynonym s : entry.synonyms()) sources.add(s.source());
        return sources;
    }

    /** The failure's cause, or null when the call succeeded. */
    static <T> Throwable failure(KafkaFuture<T> future) throws InterruptedException {
        try {
            future.get();
            return null;
        } catch (ExecutionException e) {
            return e.getCause();
        }
    }

    static void expectError(Admin admin, ConfigResource resource, AlterConfigOp op, Class<?> error, String inMessage)
        throws Exception {
        Throwable cause = failure(admin.incrementalAlterConfigs(Map.of(resource, List.of(op))).all());
        expect(error.isInstance(cause), resource + " " + op + ": expected " + error.getSimpleName() + ", got " + cause);
        expect(cause.getMessage() != null && cause.getMessage().contains(inMessage),
            "message of " + cause + " names " + inMessage);
    }

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        String step = args[1];
        try (Admin admin = Admin.create(props)) {
            switch (step) {
                case "cluster-default" -> clusterDefault(admin, args[2], args[3]);
                case "per-broker" -> perBroker(admin, args[2], args[3]);
                case "reset" -> reset(admin, args[2], args[3]);
                case "incremental" -> incremental(admin, args[2]);
                case "bad-input" -> badInput(admin, args[2], args[3]);
                case "log-dirs" -> logDirs(admin, args[2]);
                case "describe-topics" -> describeTopics(admin, args[2], Integer.parseInt(args[3]));
                case "list-resources" -> admin.listConfigResources().all().get().forEach(r ->
                    System.out.println("RESOURCE " + r.type() + " " + r.name()));
                default -> expect(false, "unknown step " + step);
            }
        }
        System.out.println("CONFIGS-CHECK-OK " + step);
    }

    static void clusterDefault(Admin admin, String plain, String own) throws Exception {
        alter(admin, broker(""), op("message.max.bytes", "50000", OpType.SET));
        Config cluster = describe(admin, broker(""));
        expectEntry(cluster, "message.max.bytes", "50000", ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG);
        expect(cluster.entries().size() == 1, "resource \"\" lists only the dynamic defaults set: " + cluster.entries());
        Config plainConfig = describe(admin, topic(plain));
        expectEntry(plainConfig, "max.message.bytes", "50000", ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG);
        expect(synonymSources(plainConfig.get("max.message.bytes")).equals(
                List.of(ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG, ConfigSource.DEFAULT_CONFIG)),
            "synonyms of max.message.bytes: " + plainConfig.get("max.message.bytes").synonyms());
        expectEntry(describe(admin, topic(own)), "max.message.bytes", "200000", ConfigSource.DYNAMIC_TOPIC_CONFIG);
    }

    static void perBroker(Admin admin, String plain, String id) throws Exception {
        alter(admin, broker(id), op("message.max.bytes", "150000", OpType.SET));
        expectEntry(describe(admin, topic(plain)), "max.message.bytes", "150000", ConfigSource.DYNAMIC_BROKER_CONFIG);
        Config brokerConfig = describe(admin, broker(id));
        ConfigEntry entry = brokerConfig.get("message.max.bytes");
        expectEntry(brokerConfig, "message.max.bytes", "150000", ConfigSource.DYNAMIC_BROKER_CONFIG);
        expect(!entry.isReadOnly(), "message.max.bytes may change at runtime");
        expect(entry.type() == ConfigEntry.ConfigType.INT && entry.documentation() != null, "type and documentation");
        expect(synonymSources(entry).equals(List.of(ConfigSource.DYNAMIC_BROKER_CONFIG,
                ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG, ConfigSource.DEFAULT_CONFIG)),
            "Kafka's synonym order: " + entry.synonyms());
        expect(brokerConfig.get("node.id").isReadOnly(), "node.id is read-only");
    }

    static void reset(Admin admin, String plain, String id) throws Exception {
        alter(admin, broker(id), op("message.max.bytes", null, OpType.DELETE));
        alter(admin, broker(""), op("message.max.bytes", null, OpType.DELETE));
        expectEntry(describe(admin, topic(plain)), "max.message.bytes", "1048588", ConfigSource.DEFAULT_CONFIG);
        expect(describe(admin, broker("")).entries().isEmpty(), "no dynamic defaults left");
    }

    static void incremental(Admin admin, String name) throws Exception {
        ConfigResource t = topic(name);
        alter(admin, t, op("retention.ms", "5000", OpType.SET), op("cleanup.policy", "compact", OpType.APPEND));
        Config config = describe(admin, t);
        expectEntry(config, "retention.ms", "5000", ConfigSource.DYNAMIC_TOPIC_CONFIG);
        expectEntry(config, "cleanup.policy", "delete,compact", ConfigSource.DYNAMIC_TOPIC_CONFIG);
        alter(admin, t, op("cleanup.policy", "delete", OpType.SUBTRACT));
        expectEntry(describe(admin, t), "cleanup.policy", "compact", ConfigSource.DYNAMIC_TOPIC_CONFIG);
        alter(admin, t, op("retention.ms", null, OpType.DELETE));
        expectEntry(describe(admin, t), "retention.ms", "604800000", ConfigSource.DEFAULT_CONFIG);
        admin.incrementalAlterConfigs(Map.of(t, List.of(op("retention.ms", "1", OpType.SET))),
            new AlterConfigsOptions().validateOnly(true)).all().get();
        expectEntry(describe(admin, t), "retention.ms", "604800000", ConfigSource.DEFAULT_CONFIG);
    }

    static void badInput(Admin admin, String name, String id) throws Exception {
        expectError(admin, topic(name), op("retention.mss", "1", OpType.SET), InvalidConfigurationException.class, "retention.mss");
        expectError(admin, topic(name), op("segment.bytes", "ten", OpType.SET), InvalidConfigurationException.class, "segment.bytes");
        expectError(admin, topic(name), op("retention.ms", "1", OpType.APPEND), InvalidConfigurationException.class, "retention.ms");
        expectError(admin, topic("no-such-topic"), op("retention.ms", "1", OpType.SET), UnknownTopicOrPartitionException.class, "no-such-topic");
        expectError(admin, broker(id), op("node.id", "7", OpType.SET), InvalidRequestException.class, "Cannot update these configs dynamically");
        expectError(admin, broker(""), op("log.retention.ms", "x", OpType.SET), InvalidRequestException.class, "log.retention.ms");
        expectEntry(describe(admin, topic(name)), "segment.bytes", "1073741824", ConfigSource.DEFAULT_CONFIG);
    }

    static void logDirs(Admin admin, String name) throws Exception {
        List<Integer> brokers = new ArrayList<>();
        for (var node : admin.describeCluster().nodes().get()) brokers.add(node.id());
        var all = admin.describeLogDirs(brokers).allDescriptions().get();
        for (var perBroker : all.entrySet()) {
            for (LogDirDescription dir : perBroker.getValue().values()) {
                expect(dir.error() == null, "log dir error " + dir.error());
                expect(dir.totalBytes().isPresent() && dir.usableBytes().isPresent()
                    && dir.totalBytes().getAsLong() >= dir.usableBytes().getAsLong()
                    && dir.usableBytes().getAsLong() > 0, "total and usable bytes");
                for (var replica : dir.replicaInfos().entrySet()) {
                    TopicPartition tp = replica.getKey();
                    if (!tp.topic().equals(name)) continue;
                    System.out.println("SIZE " + perBroker.getKey() + " " + tp.partition() + " "
                        + replica.getValue().size() + " " + replica.getValue().offsetLag());
                }
            }
        }
    }

    static void describeTopics(Admin admin, String name, int partitions) throws Exception {
        DescribeTopicsOptions options = new DescribeTopicsOptions().partitionSizeLimitPerResponse(2);
        TopicDescription description = admin.describeTopics(List.of(name), options).allTopicNames().get().get(name);
        List<TopicPartitionInfo> infos = description.partitions();
        expect(infos.size() == partitions, "all " + partitions + " partitions paged in, got " + infos.size());
        for (int i = 0; i < infos.size(); i++) {
            expect(infos.get(i).partition() == i && infos.get(i).leader() != null, "partition " + i + " with a leader");
        }
        Throwable missing = failure(admin.describeTopics(List.of("no-such-topic"), options).allTopicNames());
        expect(missing instanceof UnknownTopicOrPartitionException, "unknown topic: " + missing);
    }
}
