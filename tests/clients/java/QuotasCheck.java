// Drives a running broker's client quota admin APIs with the Java client (kafka-clients 4.x),
// one step per run, and checks what the client sees. crates/cli/tests/quotas.rs runs the
// steps and checks the throttling of real clients in between.
// Usage: java QuotasCheck BOOTSTRAP STEP ARGS...   (exit code 1 with a message on any mismatch;
// prints QUOTAS-CHECK-OK on success)
//
//   set CLIENT KEY VALUE     sets KEY=VALUE on client-id CLIENT (alterClientQuotas)
//   set-default KEY VALUE    sets KEY=VALUE on the default client-id
//   remove CLIENT KEY        removes KEY from client-id CLIENT
//   describe CLIENT          prints "QUOTA <key> <value>" per quota of client-id CLIENT
//                            (describeClientQuotas, exact match, strict)
//   describe-all             prints "ENTITY <entity> <key> <value>" for every quota
//   bad-input                Kafka's errors for unknown keys, fractional byte rates, empty
//                            and mixed entities, validate-only

import java.util.*;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.common.errors.InvalidRequestException;
import org.apache.kafka.common.quota.*;

public class QuotasCheck {
    static void expect(boolean cond, String what) {
        if (!cond) {
            System.err.println("FAILED: " + what);
            System.exit(1);
        }
    }

    static ClientQuotaEntity client(String id) {
        Map<String, String> entity = new HashMap<>();
        entity.put(ClientQuotaEntity.CLIENT_ID, id);
        return new ClientQuotaEntity(entity);
    }

    static void alter(Admin admin, ClientQuotaEntity entity, String key, Double value, boolean validateOnly)
            throws Exception {
        ClientQuotaAlteration alteration =
            new ClientQuotaAlteration(entity, List.of(new ClientQuotaAlteration.Op(key, value)));
        admin.alterClientQuotas(List.of(alteration), new AlterClientQuotasOptions().validateOnly(validateOnly))
            .all().get();
    }

    static Map<ClientQuotaEntity, Map<String, Double>> describe(Admin admin, ClientQuotaFilter filter)
            throws Exception {
        return admin.describeClientQuotas(filter).entities().get();
    }

    static void expectInvalid(Admin admin, ClientQuotaEntity entity, String key, Double value, String what)
            throws Exception {
        try {
            alter(admin, entity, key, value, false);
            expect(false, what + " is refused");
        } catch (ExecutionException e) {
            expect(e.getCause() instanceof InvalidRequestException,
                what + " fails with INVALID_REQUEST, got " + e.getCause());
        }
    }

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");
        try (Admin admin = Admin.create(props)) {
            switch (args[1]) {
                case "set" -> alter(admin, client(args[2]), args[3], Double.valueOf(args[4]), false);
                case "set-default" -> alter(admin, client(null), args[2], Double.valueOf(args[3]), false);
                case "remove" -> alter(admin, client(args[2]), args[3], null, false);
                case "describe" -> {
                    ClientQuotaFilter filter = ClientQuotaFilter.containsOnly(
                        List.of(ClientQuotaFilterComponent.ofEntity(ClientQuotaEntity.CLIENT_ID, args[2])));
                    describe(admin, filter).forEach((entity, values) ->
                        values.forEach((k, v) -> System.out.println("QUOTA " + k + " " + v)));
                }
                case "describe-all" -> describe(admin, ClientQuotaFilter.all()).forEach((entity, values) ->
                    values.forEach((k, v) -> System.out.println("ENTITY " + entity.entries() + " " + k + " " + v)));
                case "bad-input" -> {
                    expectInvalid(admin, client("c"), "retention.ms", 1.0, "an unknown key");
                    expectInvalid(admin, client("c"), "producer_byte_rate", 10.5, "a fractional byte rate");
                    expectInvalid(admin, new ClientQuotaEntity(Map.of()), "producer_byte_rate", 10.0,
                        "an empty entity");
                    expectInvalid(admin, new ClientQuotaEntity(Map.of("user", "u", "ip", "127.0.0.1")),
                        "producer_byte_rate", 10.0, "a user and an ip together");
                    expectInvalid(admin, new ClientQuotaEntity(Map.of("group", "g")), "producer_byte_rate",
                        10.0, "an unknown entity type");
                    alter(admin, client("checked"), "producer_byte_rate", 10.0, true);
                    expect(describe(admin, ClientQuotaFilter.all()).keySet().stream()
                        .noneMatch(e -> "checked".equals(e.entries().get(ClientQuotaEntity.CLIENT_ID))),
                        "validate-only changes nothing");
                }
                default -> {
                    System.err.println("unknown step " + args[1]);
                    System.exit(2);
                }
            }
        }
        System.out.println("QUOTAS-CHECK-OK");
    }
}
