#!/usr/bin/env bash
# Runs a Strom cluster of N combined (broker + controller) nodes on this machine.
#
#   scripts/cluster.sh start [N]   format (first time) and start N nodes (default 3)
#   scripts/cluster.sh stop        stop them (SIGTERM: each shuts down cleanly)
#   scripts/cluster.sh status      show which nodes run
#
# Node i listens for clients on BASE_PORT+2(i-1) and for the controller quorum on the port
# after it: with the default BASE_PORT=9092, clients use 127.0.0.1:9092,9094,9096.
# Data, configs, logs and PIDs live in CLUSTER_DIR (default ./strom-cluster); CLUSTER_PROPERTIES
# (newline-separated key=value lines) is appended to every node's server.properties.
set -euo pipefail

cd "$(dirname "$0")/.."
CLUSTER_DIR=${CLUSTER_DIR:-strom-cluster}
BASE_PORT=${BASE_PORT:-9092}
STROM=${STROM_BIN:-target/release/strom}

client_port() { echo $((BASE_PORT + 2 * ($1 - 1))); }
controller_port() { echo $((BASE_PORT + 2 * ($1 - 1) + 1)); }

start() {
    local n=${1:-3}
    [ -x "$STROM" ] || cargo build --release -p strom
    mkdir -p "$CLUSTER_DIR"
    local voters=""
    for i in $(seq 1 "$n"); do
        voters="${voters:+$voters,}$i@127.0.0.1:$(controller_port "$i")"
    done
    if [ ! -f "$CLUSTER_DIR/cluster.id" ]; then
        "$STROM" storage random-uuid > "$CLUSTER_DIR/cluster.id"
    fi
    local cluster_id
    cluster_id=$(cat "$CLUSTER_DIR/cluster.id")
    for i in $(seq 1 "$n"); do
        local dir="$CLUSTER_DIR/node-$i"
        mkdir -p "$dir"
        cat > "$dir/server.properties" <<PROPS
node.id=$i
process.roles=broker,controller
listeners=PLAINTEXT://127.0.0.1:$(client_port "$i"),CONTROLLER://127.0.0.1:$(controller_port "$i")
controller.listener.names=CONTROLLER
controller.quorum.voters=$voters
log.dirs=$dir/data
${CLUSTER_PROPERTIES:-}
PROPS
        "$STROM" storage format --cluster-id "$cluster_id" --config "$dir/server.properties" \
            --ignore-formatted > /dev/null 2> "$dir/format.log" \
            || { cat "$dir/format.log" >&2; exit 1; }
        nohup "$STROM" server --config "$dir/server.properties" > "$dir/stdout.log" 2> "$dir/strom.log" &
        echo $! > "$dir/pid"
    done
    for i in $(seq 1 "$n"); do
        local dir="$CLUSTER_DIR/node-$i"
        for _ in $(seq 1 600); do
            grep -q "strom listening" "$dir/stdout.log" 2>/dev/null && break
            sleep 0.1
        done
        grep -q "strom listening" "$dir/stdout.log" || { echo "node $i did not start; see $dir/strom.log" >&2; exit 1; }
    done
    local bootstrap=""
    for i in $(seq 1 "$n"); do bootstrap="${bootstrap:+$bootstrap,}127.0.0.1:$(client_port "$i")"; done
    echo "$bootstrap" > "$CLUSTER_DIR/bootstrap"
    echo "cluster $cluster_id: $n nodes; bootstrap.servers=$bootstrap"
}

stop() {
    for pidfile in "$CLUSTER_DIR"/node-*/pid; do
        [ -f "$pidfile" ] || continue
        local pid
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
        rm -f "$pidfile"
    done
    echo "stopped"
}

status() {
    for dir in "$CLUSTER_DIR"/node-*; do
        [ -d "$dir" ] || continue
        if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
            echo "$(basename "$dir"): running (pid $(cat "$dir/pid"))"
        else
            echo "$(basename "$dir"): stopped"
        fi
    done
}

case "${1:-}" in
    start) start "${2:-3}" ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start [N] | stop | status" >&2; exit 2 ;;
esac
