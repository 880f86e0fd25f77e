#!/usr/bin/env bash
# Idempotent and transactional producers against Strom and Apache Kafka on this machine, one
# broker at a time, ROUNDS rounds alternating the brokers; a fresh topic for every run and
# `sync` before it. Prints one line per run (docs/benchmarks.md reports medians).
#   scripts/bench-producers.sh                          # both parts, both brokers, 5 rounds
#   PART=idempotence BROKERS=strom ROUNDS=1 scripts/bench-producers.sh
#   PART=transactions scripts/bench-producers.sh
#   PART=transactions PRODUCER_ARGS="--producer-config linger.ms=0" scripts/bench-producers.sh
#   PART=transactions BROKERS=strom STROM_ARGS="--override transaction.partition.verification.enable=false" scripts/bench-producers.sh
# idempotence: plain against idempotent producers (acks=all), the two back to back on the same
# broker, in an order swapped every round. transactions: an idempotent baseline, then a
# transactional producer committing every 1,000 and every 100 records.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release -q -p strom
strom="${CARGO_TARGET_DIR:-$root/target}/release/strom"
work="$root/.bench/producers"
brokers="${BROKERS:-strom kafka}"
rounds="${ROUNDS:-5}"
parts="${PART:-idempotence transactions}"
strom_port=39192
kafka_port=49192

source "$root/scripts/lib/brokers.sh"

# run NAME MODE ARGS...: one run on a fresh topic NAME-MODE-ROUND.
run() {
    local name="$1" mode="$2"; shift 2
    sync
    printf '%s %s round=%s %s: ' "$broker" "$name" "$round" "$mode"
    # shellcheck disable=SC2086 # PRODUCER_ARGS is split into arguments on purpose
    "$strom" bench produce --bootstrap "127.0.0.1:$port" --broker-pid "$pid" \
        --topic "$name-$mode-$round" --acks all "$@" ${PRODUCER_ARGS:-}
}

mode_args() {
    case "$1" in
        plain) ;;
        idem) echo --idempotence ;;
    esac
}

idempotence() {
    local modes m
    if [ $((round % 2)) = 1 ]; then modes="plain idem"; else modes="idem plain"; fi
    # shellcheck disable=SC2046
    for m in $modes; do run t1k "$m" $(mode_args "$m") --records 1048576 --record-bytes 1024; done
    # shellcheck disable=SC2046
    for m in $modes; do run t100 "$m" $(mode_args "$m") --records 3000000 --record-bytes 100; done
    # shellcheck disable=SC2046
    for m in $modes; do run rate "$m" $(mode_args "$m") --records 2000000 --record-bytes 100 --rate 200000; done
}

transactions() {
    run txn idem --idempotence --records 200000 --record-bytes 1024
    run txn 1000 --transaction-records 1000 --records 200000 --record-bytes 1024
    run txn 100 --transaction-records 100 --records 200000 --record-bytes 1024
}

mkdir -p "$work"
for part in $parts; do
for round in $(seq 1 "$rounds"); do
for broker in $brokers; do
    start_broker "$broker"
    "$part"
    stop_broker "$broker"
done
done
done
