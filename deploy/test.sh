#!/usr/bin/env bash
# The whole test suite on a fresh machine: system packages, real Kafka + HDFS + InfluxDB,
# formatting and lints, every test, then the services are stopped again.
#
#   deploy/test.sh                       everything (what .ci/run runs)
#   CARFLOW_KEEP_SERVICES=1 deploy/test.sh   leave the services running afterwards
#   deploy/test.sh -- <cargo test args>  pass arguments to cargo test (e.g. a test name)
#
# Caches: ~/.cargo, ./target, ~/.m2, ~/go, ~/.cache/carflow (see deploy/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }
started=$(date +%s)

step "system packages (deploy/setup.sh)"
deploy/setup.sh

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (rustup) 1.94 or newer" >&2
    exit 1
fi
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

step "start Kafka, HDFS and InfluxDB (deploy/services.sh up)"
deploy/services.sh up
if [[ "${CARFLOW_KEEP_SERVICES:-0}" != 1 ]]; then
    trap 'step "stop services"; deploy/services.sh down || true' EXIT
fi
eval "$(deploy/services.sh env)"
# Tests choose their own topics, groups and databases; clear what services.sh exports for the
# default deployment so it cannot leak into a test's configuration.
unset CARFLOW_KAFKA_TOPIC CARFLOW_INFLUX_DB

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

args=()
if [[ "${1:-}" == "--" ]]; then shift; args=("$@"); fi
step "cargo test --workspace ${args[*]:-}"
cargo test --workspace "${args[@]}"

if [[ ${#args[@]} -eq 0 ]]; then
    # Tests that stop and restart a shared service run alone, after everything else.
    step "cargo test (tests that restart a service, one at a time)"
    cargo test -p carflow-api --test intake -- --ignored --test-threads 1
fi

step "done in $(( $(date +%s) - started ))s"
