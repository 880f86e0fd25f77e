# Starting and stopping the broker a benchmark script measures, one at a time: Strom (the
# release binary in $strom, on $strom_port) or Apache Kafka (scripts/kafka-reference.sh, on
# $kafka_port), with their data under $work. Sets $port and $pid of the broker started.
# STROM_ARGS adds arguments to Strom's command line (`--override key=value ...`).
# Sourced by the benchmark scripts, which define those variables.

start_broker() {
    case "$1" in
        strom)
            rm -rf "$work/strom"; mkdir -p "$work/strom"
            # shellcheck disable=SC2086 # STROM_ARGS is split into arguments on purpose
            "$strom" server --override "listeners=PLAINTEXT://127.0.0.1:$strom_port" --override "log.dirs=$work/strom/logs" \
                ${STROM_ARGS:-} > "$work/strom/out" 2> "$work/strom/err" &
            echo $! > "$work/strom/pid"
            until grep -q "strom listening" "$work/strom/out" 2>/dev/null; do sleep 0.1; done
            port=$strom_port; pid=$(cat "$work/strom/pid") ;;
        kafka)
            rm -rf "$work/kafka"
            scripts/kafka-reference.sh start "$kafka_port" "$work/kafka" >/dev/null
            port=$kafka_port; pid=$(cat "$work/kafka/kafka.pid") ;;
    esac
}

stop_broker() {
    case "$1" in
        strom) kill "$(cat "$work/strom/pid")"; wait "$(cat "$work/strom/pid")" 2>/dev/null || true ;;
        kafka) scripts/kafka-reference.sh stop "$work/kafka" ;;
    esac
}
