#!/usr/bin/env bash
# The end-to-end benchmark: carflow vs Spark Structured Streaming vs Kafka's own consumer, same topic,
# same data, same outputs, on this machine. See benches/README.md.
#
#   benches/harness/run.sh [--records N] [--carflow PATH] [...]     (bench.py --help for all options)
#
# Installs what it needs, idempotently: a venv in benches/.venv with pyspark, psutil, matplotlib
# (benches/harness/requirements.txt), and the Spark Kafka connector jars from Maven Central
# (benches/spark/pom.xml) into ${CARFLOW_CACHE_DIR:-~/.cache/carflow}/bench/. The services must be up:
# deploy/services.sh up.
set -euo pipefail

HARNESS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCHES_DIR=$(cd "$HARNESS_DIR/.." && pwd)
REPO_DIR=$(cd "$BENCHES_DIR/.." && pwd)
VENV=${CARFLOW_BENCH_VENV:-$BENCHES_DIR/.venv}
CACHE_DIR=${CARFLOW_CACHE_DIR:-${HOME:-/root}/.cache/carflow}
PYTHON=${PYTHON:-python3}

note() { printf 'run.sh: %s\n' "$*" >&2; }
die() { note "$*"; exit 2; }

command -v "$PYTHON" >/dev/null || die "$PYTHON not found (Python 3.10+ needed)"
command -v java >/dev/null || [[ -x "${JAVA_HOME:-}/bin/java" ]] || die "java not found (17+ needed for Spark 4 and Kafka's tools)"
command -v mvn >/dev/null || die "mvn not found (apt-get install maven): it fetches the Spark Kafka connector jars"

# 1. The venv, keyed by the requirements file: reinstall only when it changed.
req="$HARNESS_DIR/requirements.txt"
stamp="$VENV/.carflow-bench-$(sha256sum "$req" | cut -c1-12)"
if [[ ! -f $stamp ]]; then
    note "installing $(grep -v '^#' "$req" | xargs) into $VENV (first run: a few minutes, pyspark is ~450 MB)"
    [[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
    printf '*\n' >"$VENV/.gitignore"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
    rm -f "$VENV"/.carflow-bench-*
    touch "$stamp"
fi

# 2. The Kafka connector jars at exactly the pyspark version.
pom="$REPO_DIR/benches/spark/pom.xml"
spark_version=$(sed -n 's:.*<spark.version>\(.*\)</spark.version>.*:\1:p' "$pom" | head -n1)
pyspark_version=$(sed -n 's/^pyspark==//p' "$req")
[[ $spark_version == "$pyspark_version" ]] ||
    die "benches/spark/pom.xml spark.version $spark_version != pyspark $pyspark_version in $req"
jars="$CACHE_DIR/bench/spark-kafka-$spark_version-$(sha256sum "$pom" | cut -c1-12)"
if [[ ! -f $jars/.complete ]]; then
    note "fetching spark-sql-kafka-0-10_2.13 $spark_version and its jars from Maven Central into $jars"
    mkdir -p "$jars"
    mvn -B -q -f "$pom" dependency:copy-dependencies -Dbench.libs.dir="$jars" >&2 ||
        die "mvn dependency:copy-dependencies failed for $pom"
    touch "$jars/.complete"
fi

export CARFLOW_BENCH_SPARK_JARS=$jars
exec "$VENV/bin/python" "$HARNESS_DIR/bench.py" "$@"
