#!/usr/bin/env bash
# Sustained intake rate of `carflow api` into Kafka (transactions acknowledged by Kafka per second),
# for NDJSON batches and for single-record requests, measured with wrk on loopback.
#
#   benches/api/run.sh [duration] [batch lines] [ndjson connections] [single connections]
#   defaults:           30s        1000          8                    64
#
# Needs: a release build of carflow (CARFLOW_BIN, default $CARGO_TARGET_DIR/release/carflow or
# target/release/carflow), wrk (apt-get install -y wrk), curl, Kafka up (deploy/services.sh up kafka).
# Creates a scratch topic with 6 partitions and deletes it at the end. The rate is the increase of
# carflow_api_records_accepted_total (records Kafka acknowledged) over wrk's run time.
set -euo pipefail

DURATION=${1:-30s}
BATCH=${2:-1000}
NDJSON_CONNS=${3:-8}
SINGLE_CONNS=${4:-64}
THREADS=${WRK_THREADS:-2}
PORT=${CARFLOW_BENCH_PORT:-18080}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${CARFLOW_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/carflow}
BROKERS=${CARFLOW_KAFKA_BROKERS:-127.0.0.1:9092}
TOPIC=carflow-api-bench-$(date +%s)
URL=http://127.0.0.1:$PORT
WORK=$(mktemp -d)

[[ -x $BIN ]] || { echo "no carflow binary at $BIN; cargo build --release -p carflow (or set CARFLOW_BIN)" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 2; }
"$REPO/deploy/services.sh" status kafka >/dev/null || { echo "Kafka is down: start it with: deploy/services.sh up kafka" >&2; exit 2; }

topics() { java -cp "$("$REPO/deploy/services.sh" classpath kafka)" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" "$@"; }

API_PID=
cleanup() {
    if [[ -n $API_PID ]]; then kill -TERM "$API_PID" 2>/dev/null || true; wait "$API_PID" 2>/dev/null || true; fi
    topics --delete --topic "$TOPIC" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

topics --create --topic "$TOPIC" --partitions 6 --replication-factor 1 >/dev/null
CARFLOW_KAFKA_BROKERS=$BROKERS CARFLOW_KAFKA_TOPIC=$TOPIC CARFLOW_API_LISTEN=127.0.0.1:$PORT \
    CARFLOW_LOG=warn "$BIN" api >"$WORK/api.log" 2>&1 &
API_PID=$!
for _ in $(seq 1 100); do
    curl -sf -o /dev/null "$URL/health" && break
    kill -0 "$API_PID" 2>/dev/null || { cat "$WORK/api.log" >&2; exit 1; }
    sleep 0.2
done
curl -sf -o /dev/null "$URL/health" || { echo "the API did not become healthy" >&2; cat "$WORK/api.log" >&2; exit 1; }

# Bodies: generated transactions from the API's own stream (seeded, so every run posts the same).
curl -sf "$URL/api/stream_car_transactions?seed=1&count=$BATCH&rate=10000" >"$WORK/batch.ndjson"
head -n 1 "$WORK/batch.ndjson" | tr -d '\n' >"$WORK/single.json"
echo "body: $BATCH lines, $(wc -c <"$WORK/batch.ndjson") bytes (NDJSON); $(wc -c <"$WORK/single.json") bytes (single)"

accepted() { curl -sf "$URL/metrics" | awk '$1 == "carflow_api_records_accepted_total" { print $2 }'; }
statuses() { curl -sf "$URL/metrics" | grep '^carflow_api_requests_total{route="/api/logs"' | sed 's/^carflow_api_requests_total//' | tr '\n' ' '; }

measure() { # <name> <body file> <content type> <connections>
    local name=$1 body=$2 ctype=$3 conns=$4 before after start end secs
    before=$(accepted)
    start=$(date +%s.%N)
    wrk -t"$THREADS" -c"$conns" -d"$DURATION" --timeout 30s -s "$REPO/benches/api/post.lua" \
        "$URL/api/logs" -- "$body" "$ctype" >"$WORK/$name.wrk"
    end=$(date +%s.%N)
    after=$(accepted)
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')
    echo "== $name: wrk -t$THREADS -c$conns -d$DURATION"
    grep -E 'Requests/sec|Latency|Non-2xx|Socket errors' "$WORK/$name.wrk" | sed 's/^/   /'
    awk -v n="$((after - before))" -v s="$secs" -v name="$name" \
        'BEGIN { printf "   %s: %d transactions acknowledged by Kafka in %.1fs = %.0f transactions/s\n", name, n, s, n / s }'
}

measure ndjson "$WORK/batch.ndjson" application/x-ndjson "$NDJSON_CONNS"
measure single "$WORK/single.json" application/json "$SINGLE_CONNS"
echo "status codes of /api/logs: $(statuses)"
echo "in Kafka ($TOPIC): $(curl -sf "$URL/metrics" | awk '$1 == "carflow_api_records_accepted_total" { print $2 }') acknowledged in total"
