#!/usr/bin/env bash
# End to end while producing: `carflow run` consumes a fresh topic while `carflow generate` fills it
# as fast as it can; the figure is transactions per second from the first produce to the moment
# carflow_records_in_total (which moves only after the lake commit, the Influx write and the Kafka
# offset commit of a batch) reaches N. Then Kafka's ConsumerPerformance on the same topic.
#
#   benches/e2e/live.sh [N]        default 1000000; needs deploy/services.sh up and a release build
#                                  (CARFLOW_BIN, default $CARGO_TARGET_DIR/release/carflow)
# Uses its own topic (6 partitions), group, HDFS directory and InfluxDB database; deletes the topic.
set -euo pipefail
N=${1:-1000000}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${CARFLOW_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/carflow}
[[ -x $BIN ]] || { echo "no carflow binary at $BIN (cargo build --release -p carflow)" >&2; exit 2; }
"$REPO/deploy/services.sh" check >/dev/null || { echo "services down: deploy/services.sh up" >&2; exit 2; }
ID=live-$(date +%s)
TOPIC=$ID PORT=${CARFLOW_BENCH_PORT:-18099}
CP=$("$REPO/deploy/services.sh" classpath kafka)
topics() { java -cp "$CP" org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 "$@"; }
WORK=$(mktemp -d)
RUN_PID=
cleanup() {
    [[ -n $RUN_PID ]] && { kill -TERM "$RUN_PID" 2>/dev/null || true; wait "$RUN_PID" 2>/dev/null || true; }
    topics --delete --topic "$TOPIC" >/dev/null 2>&1 || true
    influxql "DROP DATABASE \"$DB\"" || true
    [[ ${KEEP:-0} == 1 ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
DB=${ID//-/_}
influxql() { curl -sf -o /dev/null -XPOST http://127.0.0.1:8086/query --data-urlencode "q=$1"; }
topics --create --topic "$TOPIC" --partitions 6 --replication-factor 1 >/dev/null
influxql "CREATE DATABASE \"$DB\""

export CARFLOW_KAFKA_TOPIC=$TOPIC CARFLOW_KAFKA_GROUP_ID=$ID CARFLOW_HTTP_LISTEN=127.0.0.1:$PORT \
    CARFLOW_LAKE_ROOT=hdfs://127.0.0.1:9000/bench/$ID CARFLOW_INFLUX_BUCKET=$DB
"$BIN" run --config "$REPO/deploy/carflow.toml" >"$WORK/run.log" 2>&1 &
RUN_PID=$!
until curl -sf -o /dev/null "http://127.0.0.1:$PORT/health"; do
    kill -0 "$RUN_PID" 2>/dev/null || { cat "$WORK/run.log" >&2; exit 1; }
    sleep 0.2
done
records_in() { curl -sf "http://127.0.0.1:$PORT/metrics" | awk '$1 == "carflow_records_in_total" { print $2 }'; }

start=$(date +%s.%N)
"$BIN" generate --config "$REPO/deploy/carflow.toml" --count "$N" --seed 42 >"$WORK/generate.log" 2>&1
produced=$(date +%s.%N)
deadline=$(( $(date +%s) + ${LIVE_TIMEOUT:-600} ))
while :; do
    got=$(records_in); got=${got%.*}
    [[ ${got:-0} -ge $N ]] && break
    (( $(date +%s) < deadline )) || { echo "carflow did not reach $N records in ${LIVE_TIMEOUT:-600} s (at ${got:-0}); its log:" >&2; tail -n 20 "$WORK/run.log" >&2; exit 1; }
    sleep 0.2
done
done_at=$(date +%s.%N)
cpu=$(awk '{ print ($14 + $15) / 100 }' "/proc/$RUN_PID/stat")
rss=$(awk '/VmHWM/ { print $2 / 1024 }' "/proc/$RUN_PID/status")
awk -v n="$N" -v s="$start" -v p="$produced" -v d="$done_at" -v cpu="$cpu" -v rss="$rss" 'BEGIN {
    printf "produce:      %d transactions in %.1f s = %.0f/s (carflow generate, acks=all)\n", n, p - s, n / (p - s)
    printf "end to end:   first produce -> last offset committed %.1f s = %.0f transactions/s\n", d - s, n / (d - s)
    printf "carflow run:  %.1f CPU s, peak RSS %.0f MB\n", cpu, rss
}'
echo "Kafka ConsumerPerformance on the same topic:"
java -Xmx512M -cp "$CP" org.apache.kafka.tools.ConsumerPerformance --bootstrap-server 127.0.0.1:9092 \
    --topic "$TOPIC" --num-records "$N" --group "$ID-perf" 2>/dev/null | tail -n 2
