#!/usr/bin/env bash
# The cluster's metadata figures for docs/benchmarks.md, on a fresh 3-node cluster on this
# machine: time to create 1,000 topics of 10 partitions, Metadata response time with those
# 10,000 partitions, and controller failover time (kill -9 the active controller, time until
# a topic can be created through a surviving broker; ROUNDS times, restarting the killed node
# in between).
#
#   scripts/bench-cluster.sh            # Strom (scripts/cluster.sh start 3)
#   TARGET=kafka scripts/bench-cluster.sh   # Apache Kafka, three combined KRaft nodes
set -euo pipefail

cd "$(dirname "$0")/.."
TARGET=${TARGET:-strom}
ROUNDS=${ROUNDS:-5}
BASE_PORT=${BASE_PORT:-29092}
STROM=target/release/strom
cargo build --release -p strom

# ext4 scans past inodes deleted in the last minute (five when their blocks are dirty) when it
# allocates new ones: removing the last run's 10,000 partition directories would slow this
# run's topic creation several times over. Remove, write back, and let them age first.
fresh() {
    if [ -d "$1" ]; then
        rm -rf "$1"
        sync
        sleep "${SETTLE_S:-70}"
    fi
}

if [ "$TARGET" = kafka ]; then
    dir=.bench/kafka-cluster
    fresh "$dir"
    trap 'scripts/kafka-reference.sh stop-cluster "$dir"' EXIT
    scripts/kafka-reference.sh start-cluster "$BASE_PORT" "$dir"
    pidfile() { echo "$dir/node-$1/kafka.pid"; }
    restart() { scripts/kafka-reference.sh start-node "$dir" "$1"; }
else
    export CLUSTER_DIR=.bench/cluster BASE_PORT
    dir=$CLUSTER_DIR
    fresh "$dir"
    trap 'scripts/cluster.sh stop > /dev/null' EXIT
    scripts/cluster.sh start 3
    pidfile() { echo "$dir/node-$1/pid"; }
    restart() {
        local node="$dir/node-$1"
        : > "$node/stdout.log"
        nohup "$STROM" server --config "$node/server.properties" > "$node/stdout.log" 2>> "$node/strom.log" &
        echo $! > "$node/pid"
        for _ in $(seq 1 600); do
            grep -q "strom listening" "$node/stdout.log" 2>/dev/null && return
            sleep 0.1
        done
    }
fi
bootstrap="127.0.0.1:$BASE_PORT,127.0.0.1:$((BASE_PORT + 2)),127.0.0.1:$((BASE_PORT + 4))"

"$STROM" bench topics --bootstrap "$bootstrap" --topics 1000 --partitions 10
"$STROM" bench metadata --bootstrap "$bootstrap" --requests 500

for round in $(seq 1 "$ROUNDS"); do
    pids=""
    for i in 1 2 3; do pids="${pids:+$pids,}$i:$(cat "$(pidfile "$i")")"; done
    out=$("$STROM" bench failover --bootstrap "$bootstrap" --controllers "$pids")
    echo "round $round: $out"
    killed=$(echo "$out" | sed -n 's/.*killed_controller=\([0-9]*\).*/\1/p')
    restart "$killed"
    sleep 5
done
