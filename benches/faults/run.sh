#!/usr/bin/env bash
# The fault-injection run (issue 13): 1M transactions (1% malformed, a few very late) into a 6-partition
# topic while two `carflow run` engines in one group consume it, with kill -9s, a SIGSTOP zombie, Kafka,
# HDFS and InfluxDB restarts, HDFS safe mode and live query edits at seeded random times; then checks
# with DuckDB over the lake read back from HDFS and InfluxQL that nothing was lost, duplicated or wrong.
#
#   benches/faults/run.sh [--short] [--seed S] [--records N] [--rate R] [--carflow PATH] [--keep] [...]
#   benches/faults/run.sh --help          every option (faults.py)
#
# It starts its OWN Kafka, HDFS and InfluxDB (deploy/services.sh with another run directory and ports:
# 127.0.0.1:19092/19093, 19000/19870, 18086/18088; CARFLOW_FAULTS_PORT_OFFSET=N moves them to the
# defaults + N) and stops and deletes them at the end: the shared services on the default ports are
# never touched. Writes benches/results/<date>/faults-<N>-<HHMMSS>.{txt,json}; exit 0 when every
# check passed, 1 when something was lost, duplicated or wrong, 2 when the run could not be carried out.
#
# Needs: python3 (3.10+), java 17+ and the deploy/services.sh caches (it fills them on first use), and
# a carflow binary (--carflow, else $CARFLOW_BIN, else target/release/carflow, else target/debug/carflow
# under ${CARGO_TARGET_DIR:-target}). The Python packages (benches/faults/requirements.txt) go into a venv
# under ${CARFLOW_CACHE_DIR:-~/.cache/carflow}/faults-venv, made once.
set -euo pipefail

FAULTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$FAULTS_DIR/../.." && pwd)
CACHE_DIR=${CARFLOW_CACHE_DIR:-${HOME:-/root}/.cache/carflow}
VENV=$CACHE_DIR/faults-venv
PYTHON=${PYTHON:-python3}

note() { printf 'run.sh: %s\n' "$*" >&2; }
die() { note "$*"; exit 2; }

carflow=${CARFLOW_BIN:-}
keep=0
args=()
while (($#)); do
    case $1 in
        --carflow) carflow=${2:?--carflow PATH}; shift 2 ;;
        --carflow=*) carflow=${1#*=}; shift ;;
        --keep) keep=1; shift ;;
        -h | --help)
            awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
            help=1; args+=("$1"); shift ;;
        *) args+=("$1"); shift ;;
    esac
done

command -v "$PYTHON" >/dev/null || die "$PYTHON not found (Python 3.10+ needed)"

# 1. The venv, keyed by the requirements file: reinstalled only when it changed.
req=$FAULTS_DIR/requirements.txt
stamp="$VENV/.carflow-faults-$(cat "$req" <("$PYTHON" -V) | sha256sum | cut -c1-12)"
if [[ ! -f $stamp ]]; then
    note "installing $(grep -v '^#' "$req" | xargs) into $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$req" || die "pip install failed"
    touch "$stamp"
fi

if [[ -n ${help:-} ]]; then
    exec "$VENV/bin/python" "$FAULTS_DIR/faults.py" --repo . --run-dir . --carflow . --kafka-port 0 \
        --hdfs-port 0 --hdfs-http-port 0 --influx-port 0 --help
fi

# 2. The binary.
if [[ -z $carflow ]]; then
    target=${CARGO_TARGET_DIR:-$REPO_DIR/target}
    for c in "$target/release/carflow" "$target/debug/carflow"; do
        if [[ -x $c ]]; then carflow=$c; break; fi
    done
fi
[[ -n $carflow && -x $carflow ]] ||
    die "no carflow binary: build one (cargo build --release --bin carflow) and pass --carflow PATH"
carflow=$(realpath "$carflow")

# 3. An isolated instance of the services: other ports, another run directory.
offset=${CARFLOW_FAULTS_PORT_OFFSET:-10000}
[[ $offset =~ ^[0-9]+$ ]] && ((offset > 0 && offset < 55000)) || die "CARFLOW_FAULTS_PORT_OFFSET must be 1..54999"
export CARFLOW_KAFKA_PORT=$((9092 + offset)) CARFLOW_KAFKA_CONTROLLER_PORT=$((9093 + offset))
export CARFLOW_HDFS_PORT=$((9000 + offset)) CARFLOW_HDFS_HTTP_PORT=$((9870 + offset))
export CARFLOW_INFLUX_PORT=$((8086 + offset)) CARFLOW_INFLUX_RPC_PORT=$((8088 + offset))
for p in "$CARFLOW_KAFKA_PORT" "$CARFLOW_KAFKA_CONTROLLER_PORT" "$CARFLOW_HDFS_PORT" "$CARFLOW_HDFS_HTTP_PORT" \
    "$CARFLOW_INFLUX_PORT" "$CARFLOW_INFLUX_RPC_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        die "127.0.0.1:$p is in use (another fault run?); set CARFLOW_FAULTS_PORT_OFFSET to use other ports"
    fi
done
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/carflow-faults.XXXXXX")
export CARFLOW_RUN_DIR=$RUN_DIR
# The run's JVMs neither read nor write the shared class-data-sharing archives of the default instance.
export CARFLOW_NO_CDS=1
services=("$REPO_DIR/deploy/services.sh")

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # Whatever faults.py started and left behind (it normally stops everything itself).
    local f pid
    for f in "$RUN_DIR"/pids/*.pid; do
        [[ -f $f ]] || continue
        pid=$(cat "$f" 2>/dev/null || true)
        if [[ -n $pid && -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$carflow"; then
            kill -CONT "$pid" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    "${services[@]}" down >&2 || true
    if ((keep)); then
        note "kept $RUN_DIR (services stopped; logs in $RUN_DIR/faults/logs)"
    else
        if ((rc != 0)) && [[ -d $RUN_DIR/faults/logs ]]; then
            local logs="${TMPDIR:-/tmp}/carflow-faults-logs-$(date -u +%Y%m%d-%H%M%S)"
            mv "$RUN_DIR/faults/logs" "$logs" && note "engine and generator logs kept in $logs"
        fi
        rm -rf "$RUN_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

note "services for this run: Kafka 127.0.0.1:$CARFLOW_KAFKA_PORT, HDFS 127.0.0.1:$CARFLOW_HDFS_PORT, InfluxDB 127.0.0.1:$CARFLOW_INFLUX_PORT, run dir $RUN_DIR"
"${services[@]}" up >&2 || die "the services did not start (logs under $RUN_DIR)"

rc=0
"$VENV/bin/python" -u "$FAULTS_DIR/faults.py" --repo "$REPO_DIR" --run-dir "$RUN_DIR" --carflow "$carflow" \
    --kafka-port "$CARFLOW_KAFKA_PORT" --hdfs-port "$CARFLOW_HDFS_PORT" --hdfs-http-port "$CARFLOW_HDFS_HTTP_PORT" \
    --influx-port "$CARFLOW_INFLUX_PORT" "${args[@]}" || rc=$?
exit "$rc"
