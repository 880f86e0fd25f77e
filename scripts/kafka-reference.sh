#!/usr/bin/env bash
# Apache Kafka, the reference broker, for side-by-side benchmarks and behaviour checks.
# Installs Kafka's jars from Maven Central into .bench/kafka (nothing else is downloaded).
#
#   scripts/kafka-reference.sh install
#   scripts/kafka-reference.sh start PORT DATA_DIR     # single combined KRaft node on 127.0.0.1
#   scripts/kafka-reference.sh stop DATA_DIR
#   scripts/kafka-reference.sh start-cluster BASE_PORT DATA_DIR   # three combined KRaft nodes:
#       node i serves clients on BASE_PORT+2(i-1), its controller on the port after it
#   scripts/kafka-reference.sh start-node DATA_DIR I               # (re)start node I of it
#   scripts/kafka-reference.sh stop-cluster DATA_DIR
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version="${KAFKA_VERSION:-4.1.1}"
home="$root/.bench/kafka-$version"
lib="$home/lib"

install() {
    if [ -f "$lib/.complete" ]; then return; fi
    mkdir -p "$home"
    cat > "$home/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>strom.bench</groupId><artifactId>kafka-reference</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$version</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
POM
    (cd "$home" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$lib")
    cat > "$home/log4j2.properties" <<'LOG'
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
LOG
    touch "$lib/.complete"
}

java_cmd() {
    java -Xms1g -Xmx2g -XX:+UseG1GC -Dlog4j2.configurationFile="$home/log4j2.properties" -cp "$lib/*" "$@"
}

# properties FILE NODE_ID VOTERS CLIENT_PORT LOG_DIR: a combined KRaft node whose controller
# listens on the port after the client one.
properties() {
    local file="$1" id="$2" voters="$3" port="$4" logs="$5"
    cat > "$file" <<PROPS
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$((port + 1))
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$logs
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
PROPS
}

start() {
    local port="$1" data="$2"
    install
    mkdir -p "$data"
    data="$(cd "$data" && pwd)"
    properties "$data/server.properties" 1 "1@127.0.0.1:$((port + 1))" "$port" "$data/logs"
    if [ ! -f "$data/logs/meta.properties" ]; then
        java_cmd kafka.tools.StorageTool format -t "$(java_cmd kafka.tools.StorageTool random-uuid)" -c "$data/server.properties" >/dev/null
    fi
    # exec, so that the recorded pid is the JVM's (benchmarks read its CPU time).
    (exec java -Xms1g -Xmx2g -XX:+UseG1GC -Dlog4j2.configurationFile="$home/log4j2.properties" -cp "$lib/*" \
        kafka.Kafka "$data/server.properties" > "$data/kafka.out" 2>&1) &
    echo $! > "$data/kafka.pid"
    for _ in $(seq 1 120); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "kafka $version listening on 127.0.0.1:$port pid $(cat "$data/kafka.pid")"; return; fi
        if ! kill -0 "$(cat "$data/kafka.pid")" 2>/dev/null; then cat "$data/kafka.out" >&2; echo "kafka exited" >&2; exit 1; fi
        sleep 0.5
    done
    echo "kafka did not open port $port in 60 s" >&2
    exit 1
}

stop() {
    local data="$1" pid
    pid="$(cat "$data/kafka.pid" 2>/dev/null)" || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
}

start_node() {
    local data="$1" i="$2" port
    port=$(cat "$data/node-$i/port")
    (exec java -Xms512m -Xmx1g -XX:+UseG1GC -Dlog4j2.configurationFile="$home/log4j2.properties" -cp "$lib/*" \
        kafka.Kafka "$data/node-$i/server.properties" > "$data/node-$i/kafka.out" 2>&1) &
    echo $! > "$data/node-$i/kafka.pid"
    for _ in $(seq 1 240); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return; fi
        sleep 0.5
    done
    echo "kafka node $i did not open port $port" >&2
    exit 1
}

start_cluster() {
    local base="$1" data="$2" voters="" id i
    install
    mkdir -p "$data"
    data="$(cd "$data" && pwd)"
    for i in 1 2 3; do voters="${voters:+$voters,}$i@127.0.0.1:$((base + 2 * (i - 1) + 1))"; done
    id="$(java_cmd kafka.tools.StorageTool random-uuid)"
    for i in 1 2 3; do
        local port=$((base + 2 * (i - 1))) dir="$data/node-$i"
        mkdir -p "$dir"
        echo "$port" > "$dir/port"
        properties "$dir/server.properties" "$i" "$voters" "$port" "$dir/logs"
        java_cmd kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" >/dev/null
    done
    for i in 1 2 3; do start_node "$data" "$i" & done
    wait
    echo "kafka $version cluster: 127.0.0.1:$base,127.0.0.1:$((base + 2)),127.0.0.1:$((base + 4))"
}

stop_cluster() {
    local data="$1" i
    for i in 1 2 3; do stop "$data/node-$i"; done
}

case "${1:-}" in
    install) install ;;
    start) start "$2" "$3" ;;
    stop) stop "$2" ;;
    start-cluster) start_cluster "$2" "$3" ;;
    start-node) start_node "$2" "$3" ;;
    stop-cluster) stop_cluster "$2" ;;
    *) echo "usage: $0 install | start PORT DATA_DIR | stop DATA_DIR | start-cluster BASE_PORT DATA_DIR | start-node DATA_DIR I | stop-cluster DATA_DIR" >&2; exit 2 ;;
esac
