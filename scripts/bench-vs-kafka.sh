#!/usr/bin/env bash
# Runs the same librdkafka workloads against Strom and Apache Kafka on this machine, one
# broker at a time, REPEATS rounds alternating the brokers, and prints one line per run
# (docs/benchmarks.md reports the median of the rounds).
#   scripts/bench-vs-kafka.sh                       # both brokers, 3 rounds
#   BROKERS=strom REPEATS=1 scripts/bench-vs-kafka.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release -q -p strom
strom="$root/target/release/strom"
work="$root/.bench/run"
brokers="${BROKERS:-strom kafka}"
repeats="${REPEATS:-3}"
strom_port=39092
kafka_port=49092

source "$root/scripts/lib/brokers.sh"

# Each run starts with the previous run's dirty pages written back, so that writeback of one
# run's gigabyte does not land in the next one's measurement.
bench() {
    sync
    "$strom" bench "$@"
}

for round in $(seq 1 "$repeats"); do
for broker in $brokers; do
    start_broker "$broker"
    common=(--bootstrap "127.0.0.1:$port" --broker-pid "$pid")
    echo "== $broker round $round"
    bench produce "${common[@]}" --topic t1k --records 1048576 --record-bytes 1024 --acks 1
    bench produce "${common[@]}" --topic t100 --records 5000000 --record-bytes 100 --acks 1 --producers 2
    bench produce "${common[@]}" --topic tlat --records 200000 --record-bytes 1024 --acks 1 --rate 20000
    bench consume "${common[@]}" --topic t1k
    bench consume "${common[@]}" --topic t1k --consumers 2
    stop_broker "$broker"
done
done
