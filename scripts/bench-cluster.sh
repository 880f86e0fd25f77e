#!/usr/bin/env bash
# The cluster's metadata figures for docs/benchmarks.md, on a fresh 3-node cluster on this
# machine: time to create 1,000 topics of 10 partitions, Metadata response time with those
# 10,000 partitions, and controller failover time (kill -9 the active controller, time until
# a topic can be created through a surviving broker; ROUNDS times, restarting the killed node
# in between).
set -euo pipefail

cd "$(dirname "$0")/.."
export CLUSTER_DIR=${CLUSTER_DIR:-.bench/cluster}
export BASE_PORT=${BASE_PORT:-29092}
ROUNDS=${ROUNDS:-5}
STROM=target/release/strom
cargo build --release -p strom
rm -rf "$CLUSTER_DIR"
trap 'scripts/cluster.sh stop > /dev/null' EXIT
scripts/cluster.sh start 3
bootstrap=$(cat "$CLUSTER_DIR/bootstrap")

"$STROM" bench topics --bootstrap "$bootstrap" --topics 1000 --partitions 10
"$STROM" bench metadata --bootstrap "$bootstrap" --requests 500

for round in $(seq 1 "$ROUNDS"); do
    pids=""
    for i in 1 2 3; do pids="${pids:+$pids,}$i:$(cat "$CLUSTER_DIR/node-$i/pid")"; done
    out=$("$STROM" bench failover --bootstrap "$bootstrap" --controllers "$pids")
    echo "round $round: $out"
    killed=$(echo "$out" | sed -n 's/.*killed_controller=\([0-9]*\).*/\1/p')
    # Bring the killed node back before the next round.
    dir="$CLUSTER_DIR/node-$killed"
    : > "$dir/stdout.log"
    nohup "$STROM" server --config "$dir/server.properties" > "$dir/stdout.log" 2>> "$dir/strom.log" &
    echo $! > "$dir/pid"
    for _ in $(seq 1 600); do
        grep -q "strom listening" "$dir/stdout.log" 2>/dev/null && break
        sleep 0.1
    done
    sleep 3
done
