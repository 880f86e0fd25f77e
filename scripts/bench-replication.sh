#!/usr/bin/env bash
# Replicated produce for docs/benchmarks.md: a fresh 3-node cluster on this machine, a topic
# with RF=3 and min.insync.replicas=2, acks=all. First a fixed rate below saturation (latency
# percentiles), then as fast as the client can (throughput).
#
#   scripts/bench-replication.sh                 # Strom (scripts/cluster.sh start 3)
#   TARGET=kafka scripts/bench-replication.sh    # Apache Kafka, three combined KRaft nodes
#   RATE=20000 RECORDS=2000000 scripts/bench-replication.sh
set -euo pipefail

cd "$(dirname "$0")/.."
TARGET=${TARGET:-strom}
BASE_PORT=${BASE_PORT:-29192}
RATE=${RATE:-20000}
RECORDS=${RECORDS:-1000000}
RECORD_BYTES=${RECORD_BYTES:-1024}
STROM=target/release/strom
cargo build --release -q -p strom

if [ "$TARGET" = kafka ]; then
    dir=.bench/kafka-replication
    rm -rf "$dir"
    trap 'scripts/kafka-reference.sh stop-cluster "$dir"' EXIT
    scripts/kafka-reference.sh start-cluster "$BASE_PORT" "$dir"
else
    export CLUSTER_DIR=.bench/replication BASE_PORT
    rm -rf "$CLUSTER_DIR"
    trap 'scripts/cluster.sh stop > /dev/null' EXIT
    scripts/cluster.sh start 3
fi
bootstrap="127.0.0.1:$BASE_PORT,127.0.0.1:$((BASE_PORT + 2)),127.0.0.1:$((BASE_PORT + 4))"
common=(--bootstrap "$bootstrap" --replication-factor 3 --min-insync-replicas 2 --acks all
    --partitions 6 --record-bytes "$RECORD_BYTES")

echo "== $TARGET: warm-up (not reported), 10 s at $RATE records/s"
"$STROM" bench produce "${common[@]}" --topic warmup --records $((RATE * 10)) --rate "$RATE" > /dev/null
echo "== $TARGET: fixed rate $RATE records/s, $((RATE * 30)) records"
"$STROM" bench produce "${common[@]}" --topic rate --records $((RATE * 30)) --rate "$RATE"
echo "== $TARGET: as fast as the client can, $RECORDS records"
"$STROM" bench produce "${common[@]}" --topic max --records "$RECORDS"
