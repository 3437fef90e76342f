#!/usr/bin/env bash
# Local services for carflow development and tests: Kafka (KRaft), HDFS (MiniDFSCluster), InfluxDB 1.8.
# Everything is installed from package registries (Maven Central, the Go module proxy), cached, and
# listens on 127.0.0.1 only. See deploy/README.md.
#
#   deploy/services.sh up     [kafka|hdfs|influxdb ...]   install (cached), start, wait until ready
#   deploy/services.sh down   [svc ...]                   stop (SIGTERM, then SIGKILL); data is kept
#   deploy/services.sh status [svc ...]                   exit 0 only when all named services are ready
#   deploy/services.sh logs   <svc> [-f]                  last lines of a service's log (or follow it)
#   deploy/services.sh check  [svc ...]                   smoke test: loopback-only sockets, a Kafka
#                                                         round trip, an HDFS file, an InfluxDB point
#   deploy/services.sh env                                export lines for tests (eval "$(... env)")
#   deploy/services.sh reset  [svc ...]                   stop and delete the service's data
#   deploy/services.sh install [svc ...]                  only build/download into the cache
#   deploy/services.sh classpath <kafka|hdfs>             the Java classpath (for the Kafka/Hadoop tools)
#   deploy/services.sh fs <FsShell args>                  hadoop fs against hdfs://127.0.0.1:9000 (CARFLOW_HDFS_PORT)
#   deploy/services.sh dfsadmin <DFSAdmin args>           hdfs dfsadmin, e.g. -safemode enter|leave|get
#
# Environment: CARFLOW_RUN_DIR (default <repo>/.run), CARFLOW_CACHE_DIR (default ~/.cache/carflow),
# JAVA_HOME (else java on PATH; 17+), CARFLOW_UP_TIMEOUT (seconds per service, default 180),
# CARFLOW_NO_CDS=1 (no JVM class-data-sharing archives).
# A second, isolated instance (e.g. benches/faults/run.sh) gets its own run directory and ports:
# CARFLOW_KAFKA_PORT (9092), CARFLOW_KAFKA_CONTROLLER_PORT (9093), CARFLOW_HDFS_PORT (9000),
# CARFLOW_HDFS_HTTP_PORT (9870), CARFLOW_INFLUX_PORT (8086), CARFLOW_INFLUX_RPC_PORT (8088);
# every command (env, fs, check, ...) then uses those ports. Other ports need another CARFLOW_RUN_DIR,
# and with another run directory only processes started from it are ever stopped.
set -euo pipefail

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$DEPLOY_DIR/.." && pwd)
RUN_DIR=${CARFLOW_RUN_DIR:-$REPO_DIR/.run}
CACHE_DIR=${CARFLOW_CACHE_DIR:-${HOME:-/root}/.cache/carflow}
UP_TIMEOUT=${CARFLOW_UP_TIMEOUT:-180}
KAFKA_PORT=${CARFLOW_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${CARFLOW_KAFKA_CONTROLLER_PORT:-9093}
HDFS_PORT=${CARFLOW_HDFS_PORT:-9000}
HDFS_HTTP_PORT=${CARFLOW_HDFS_HTTP_PORT:-9870}
INFLUX_PORT=${CARFLOW_INFLUX_PORT:-8086}
INFLUX_RPC_PORT=${CARFLOW_INFLUX_RPC_PORT:-8088}
DEFAULT_RUN_DIR=$REPO_DIR/.run
ALL_SERVICES=(kafka hdfs influxdb)

KAFKA_TOPICS=("car-transactions-logs:6")
INFLUX_DATABASES=(carflow)
INFLUXDB_VERSION=1.8.10

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    JAVA="$JAVA_HOME/bin/java"
else
    JAVA=java
fi
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    PATH="$PATH:/usr/local/go/bin"
fi

# ---------------------------------------------------------------------------------------------------
# helpers

die() { printf 'services.sh: %s\n' "$*" >&2; exit 2; }

# Another port set must come with its own run directory: the pid files of the default instance must
# never be mistaken for the other instance's (a "down" would stop the shared services).
check_instance() {
    local p
    for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$HDFS_PORT" "$HDFS_HTTP_PORT" "$INFLUX_PORT" "$INFLUX_RPC_PORT"; do
        [[ $p =~ ^[0-9]+$ ]] && ((p > 0 && p < 65536)) || die "port '$p' is not a TCP port number (CARFLOW_*_PORT)"
    done
    if [[ "$KAFKA_PORT $KAFKA_CONTROLLER_PORT $HDFS_PORT $HDFS_HTTP_PORT $INFLUX_PORT $INFLUX_RPC_PORT" != "9092 9093 9000 9870 8086 8088" &&
        $(realpath -m "$RUN_DIR") == $(realpath -m "$DEFAULT_RUN_DIR") ]]; then
        die "non-default ports (CARFLOW_*_PORT) need their own CARFLOW_RUN_DIR, not $RUN_DIR"
    fi
}
check_instance
note() { printf '%s\n' "$*" >&2; }

# A path relative to the current directory when it is below it (shorter messages).
rel() { local p=$1; if [[ $p == "$PWD"/* ]]; then printf '%s' "${p#"$PWD"/}"; else printf '%s' "$p"; fi; }

pom_property() { # <pom> <property>
    sed -n "s:.*<$2>\(.*\)</$2>.*:\1:p" "$1" | head -n1
}

hash_files() { cat "$@" | sha256sum | cut -c1-12; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

port_open() { # <port>: something accepts TCP connections on 127.0.0.1:<port>
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pid_on_port() { # <port>: pid of the process listening on it (empty when none or unknown)
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n1
}

svc_dir() { printf '%s/%s' "$RUN_DIR" "$1"; }
pid_file() { printf '%s/%s.pid' "$(svc_dir "$1")" "$1"; }
log_file() {
    case $1 in
        kafka) printf '%s/kafka.log' "$(svc_dir kafka)" ;;
        hdfs) printf '%s/hdfs.log' "$(svc_dir hdfs)" ;;
        influxdb) printf '%s/influxdb.log' "$(svc_dir influxdb)" ;;
    esac
}
install_log() { printf '%s/install.log' "$(svc_dir "$1")"; }
# What /proc/<pid>/cmdline must contain for the pid to be ours.
marker() {
    case $1 in
        kafka) printf 'kafka.Kafka' ;;
        hdfs) printf 'carflow.MiniHdfs' ;;
        influxdb) printf 'influxd' ;;
    esac
}
main_port() {
    case $1 in kafka) echo "$KAFKA_PORT" ;; hdfs) echo "$HDFS_PORT" ;; influxdb) echo "$INFLUX_PORT" ;; esac
}
all_ports() {
    case $1 in
        kafka) echo "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" ;;
        hdfs) echo "$HDFS_PORT" "$HDFS_HTTP_PORT" ;;
        influxdb) echo "$INFLUX_PORT" "$INFLUX_RPC_PORT" ;;
    esac
}
endpoint() {
    case $1 in
        kafka) echo "127.0.0.1:$KAFKA_PORT" ;;
        hdfs) echo "hdfs://127.0.0.1:$HDFS_PORT" ;;
        influxdb) echo "http://127.0.0.1:$INFLUX_PORT" ;;
    esac
}
stop_timeout() {
    case $1 in kafka) echo 45 ;; hdfs) echo 30 ;; influxdb) echo 20 ;; esac
}

is_ours() { # <svc> <pid>
    local pid=$2 cmdline
    [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
    grep -qF -- "$(marker "$1")" <<<"$cmdline" || return 1
    # Another instance (not the default run directory): only processes started from its run directory.
    if [[ $(realpath -m "$RUN_DIR") != $(realpath -m "$DEFAULT_RUN_DIR") ]]; then
        grep -qF -- "$(realpath -m "$RUN_DIR")/" <<<"$cmdline" || return 1
    fi
}

# The pid of the running service, or nothing. Falls back to the listener of its main port, so a lost
# pid file does not leave an orphan that "up" then fights with.
running_pid() {
    local svc=$1 pid=""
    if [[ -f $(pid_file "$svc") ]]; then
        pid=$(cat "$(pid_file "$svc")" 2>/dev/null || true)
        if is_ours "$svc" "$pid"; then
            echo "$pid"
            return 0
        fi
    fi
    pid=$(pid_on_port "$(main_port "$svc")")
    if is_ours "$svc" "$pid"; then
        mkdir -p "$(svc_dir "$svc")"
        echo "$pid" >"$(pid_file "$svc")"
        echo "$pid"
        return 0
    fi
    return 1
}

# Start a command in its own session, detached from the caller's terminal and stdin, with its pid
# written to <pidfile> by the process itself (correct whether or not setsid forks).
spawn() { # <pidfile> <stdout> <stderr> <cmd...>
    local pidf=$1 out=$2 err=$3
    shift 3
    rm -f "$pidf"
    # fd 9 is the lock of with_lock: the long-running service must not inherit it.
    # shellcheck disable=SC2016 # $$ and $@ are for the inner bash
    if [[ $out == "$err" ]]; then
        setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidf" "$@" >"$out" 2>&1 </dev/null 9>&- &
    else
        setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidf" "$@" >"$out" 2>"$err" </dev/null 9>&- &
    fi
    disown 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s $pidf ]] && return 0
        sleep 0.1
    done
    return 1
}

# Lines like: "kafka     ready  127.0.0.1:9092  (log: .run/kafka/kafka.log)"
report() { # <svc> <state> <detail>
    printf '%-9s %-6s %s\n' "$1" "$2" "$3"
}

# ---------------------------------------------------------------------------------------------------
# install (cached)

kafka_version() { pom_property "$DEPLOY_DIR/kafka/pom.xml" kafka.version; }
hadoop_version() { pom_property "$DEPLOY_DIR/hdfs/pom.xml" hadoop.version; }

kafka_home() {
    printf '%s/kafka-%s-%s' "$CACHE_DIR" "$(kafka_version)" "$(hash_files "$DEPLOY_DIR/kafka/pom.xml")"
}
hdfs_home() {
    printf '%s/hdfs-%s-%s' "$CACHE_DIR" "$(hadoop_version)" \
        "$(hash_files "$DEPLOY_DIR/hdfs/pom.xml" "$DEPLOY_DIR/hdfs/src/main/java/carflow/MiniHdfs.java")"
}
influxd_bin() { printf '%s/influxdb-%s/bin/influxd' "$CACHE_DIR" "$INFLUXDB_VERSION"; }

# Remove older builds of the same service from the cache (keeps a CI cache from growing).
prune_cache() { # <current dir> <name prefix>
    local d
    for d in "$CACHE_DIR/$2"*; do
        [[ -d $d && $d != "$1" ]] || continue
        note "removing old cache $d"
        rm -rf "$d"
    done
}

install_kafka() {
    local home
    home=$(kafka_home)
    [[ -f $home/.complete ]] && return 0
    note "kafka: resolving Kafka $(kafka_version) jars from Maven Central into $home/libs"
    rm -rf "$home" && mkdir -p "$home" || return 1
    mvn -B -q -f "$DEPLOY_DIR/kafka/pom.xml" dependency:copy-dependencies \
        -Dcarflow.libs.dir="$home/libs" || return 1
    ls "$home"/libs/kafka_2.13-*.jar >/dev/null || return 1
    touch "$home/.complete"
    prune_cache "$home" kafka-
}

install_hdfs() {
    local home
    home=$(hdfs_home)
    [[ -f $home/.complete ]] && return 0
    note "hdfs: building carflow.MiniHdfs against Hadoop $(hadoop_version) into $home"
    rm -rf "$home" && mkdir -p "$home" || return 1
    mvn -B -q -f "$DEPLOY_DIR/hdfs/pom.xml" package -Dcarflow.build.dir="$home" || return 1
    [[ -f $home/carflow-minihdfs.jar ]] || return 1
    touch "$home/.complete"
    prune_cache "$home" hdfs-
}

install_influxdb() {
    local bin
    bin=$(influxd_bin)
    [[ -x $bin ]] && return 0
    command -v go >/dev/null 2>&1 || { note "influxdb: no Go toolchain on PATH"; return 1; }
    note "influxdb: building influxd $INFLUXDB_VERSION with $(go version) (takes a few minutes)"
    local tmp
    tmp="$(dirname "$bin").tmp"
    rm -rf "$tmp" && mkdir -p "$(dirname "$bin")" || return 1
    # Plain `go install pkg@version`: the module's own go.mod/go.sum pin every dependency, and Flux
    # v0.65 keeps its Rust parts behind a build tag, so no cgo and no libflux are needed.
    GOTOOLCHAIN=local GOBIN="$tmp" CGO_ENABLED=0 \
        go install -ldflags "-X main.version=$INFLUXDB_VERSION -X main.branch=v$INFLUXDB_VERSION -X main.commit=v$INFLUXDB_VERSION" \
        "github.com/influxdata/influxdb/cmd/influxd@v$INFLUXDB_VERSION" || return 1
    mv "$tmp/influxd" "$bin" || return 1
    rmdir "$tmp" 2>/dev/null || true
}

install_svc() { # <svc>: runs the install with its output in the service's install log
    local svc=$1 log
    mkdir -p "$(svc_dir "$svc")"
    log=$(install_log "$svc")
    if ! "install_$svc" >"$log" 2>&1; then
        return 1
    fi
}

classpath() {
    case $1 in
        kafka) printf '%s/libs/*' "$(kafka_home)" ;;
        hdfs) printf '%s/carflow-minihdfs.jar:%s/libs/*' "$(hdfs_home)" "$(hdfs_home)" ;;
        *) die "classpath: kafka or hdfs" ;;
    esac
}

# ---------------------------------------------------------------------------------------------------
# start

JAVA_COMMON=(-XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true)
# The daemons' JVM warnings stay on stdout (their stdout.log), without the class-data-sharing chatter.
JAVA_DAEMON_LOG=(-Xlog:disable "-Xlog:all=warning,cds*=off:stdout")

# Class data sharing: a JVM started without an archive writes one at exit (-XX:ArchiveClassesAtExit);
# later starts map it (-XX:SharedArchiveFile), which roughly halves the JVM start-up time on 2 cores
# (HDFS ~10 s -> ~6 s, a Kafka CLI tool ~1.4 s -> ~0.8 s). The archive lives next to the cached jars
# (so it goes when they do), keyed by the JDK; a stale or broken archive only means a slower start.
# CARFLOW_NO_CDS=1 turns it off.
cds_archive() { # <svc> <name>: path of the archive for this JDK
    local jdk key
    jdk=$(readlink -f "$(command -v "$JAVA")" 2>/dev/null || echo "$JAVA")
    key=$(printf '%s:%s' "$jdk" "$(stat -c %Y "$jdk" 2>/dev/null)" | sha256sum | cut -c1-12)
    case $1 in
        kafka) printf '%s/cds-%s/%s.jsa' "$(kafka_home)" "$key" "$2" ;;
        hdfs) printf '%s/cds-%s/%s.jsa' "$(hdfs_home)" "$key" "$2" ;;
    esac
}
# Prints the JVM option for a daemon: use the archive, or write "<archive>.dump" at exit, which the
# next start promotes (the daemon is down by then, so the dump is complete).
cds_daemon_opt() { # <svc> <name>
    [[ -z ${CARFLOW_NO_CDS:-} ]] || return 0
    local jsa
    jsa=$(cds_archive "$1" "$2")
    mkdir -p "$(dirname "$jsa")" 2>/dev/null || return 0
    if [[ ! -s $jsa && -s $jsa.dump ]]; then
        mv -f "$jsa.dump" "$jsa"
    fi
    if [[ -s $jsa ]]; then
        printf '%s' "-XX:SharedArchiveFile=$jsa"
    else
        rm -f "$jsa.dump"
        printf '%s' "-XX:ArchiveClassesAtExit=$jsa.dump"
    fi
}

kafka_tool() { # <main class> <args...>: a Kafka CLI tool, warnings to stderr
    local jsa="" cds=() dump=""
    if [[ -z ${CARFLOW_NO_CDS:-} ]]; then
        jsa=$(cds_archive kafka "tool-${1##*.}")
        if [[ -s $jsa ]]; then
            cds=(-XX:SharedArchiveFile="$jsa")
        elif mkdir -p "$(dirname "$jsa")" 2>/dev/null; then
            dump="$jsa.dump.$BASHPID"
            cds=(-XX:ArchiveClassesAtExit="$dump")
        fi
    fi
    local rc=0
    # JVM messages (e.g. about the archive) go to stderr, never into a tool's stdout.
    "$JAVA" "${cds[@]}" -Xlog:disable "-Xlog:all=warning,cds*=off:stderr" \
        -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC "${JAVA_COMMON[@]}" \
        -Dlog4j2.configurationFile="$DEPLOY_DIR/kafka/tools-log4j2.properties" \
        -cp "$(classpath kafka)" "$@" || rc=$?
    if [[ -n $dump ]]; then
        if [[ -s $dump && ! -s $jsa ]]; then mv -f "$dump" "$jsa"; else rm -f "$dump"; fi
    fi
    return $rc
}

start_kafka() {
    local dir
    dir=$(svc_dir kafka)
    mkdir -p "$dir" || return 1
    # The template's ports are the defaults; another instance replaces them (a no-op by default).
    sed -e "s#@KAFKA_DIR@#$dir#g" -e "s#127\.0\.0\.1:9092\b#127.0.0.1:$KAFKA_PORT#g" \
        -e "s#127\.0\.0\.1:9093\b#127.0.0.1:$KAFKA_CONTROLLER_PORT#g" \
        "$DEPLOY_DIR/kafka/server.properties" >"$dir/server.properties" || return 1
    if [[ ! -f $dir/meta/meta.properties ]]; then
        # First start: format the KRaft storage (a single voter, so --standalone).
        rm -rf "$dir/meta" "$dir/data"
        local cluster_id
        cluster_id=$(kafka_tool kafka.tools.StorageTool random-uuid 2>>"$dir/install.log") || return 1
        echo "$cluster_id" >"$dir/cluster.id"
        kafka_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" \
            --standalone >>"$dir/install.log" 2>&1 || return 1
    fi
    if [[ -f $dir/kafka.log ]]; then mv -f "$dir/kafka.log" "$dir/kafka.log.prev"; fi
    local cds
    cds=$(cds_daemon_opt kafka broker)
    spawn "$(pid_file kafka)" "$dir/stdout.log" "$dir/stdout.log" \
        "$JAVA" ${cds:+"$cds"} "${JAVA_DAEMON_LOG[@]}" -Xms512m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 "${JAVA_COMMON[@]}" \
        -Dkafka.logs.dir="$dir" -Dlog4j2.configurationFile="$DEPLOY_DIR/kafka/log4j2.properties" \
        -cp "$(classpath kafka)" kafka.Kafka "$dir/server.properties"
}

start_hdfs() {
    local dir
    dir=$(svc_dir hdfs)
    mkdir -p "$dir" || return 1
    if [[ -f $dir/hdfs.log ]]; then mv -f "$dir/hdfs.log" "$dir/hdfs.log.prev"; fi
    : >"$dir/stdout.log"
    local cds
    cds=$(cds_daemon_opt hdfs minihdfs)
    spawn "$(pid_file hdfs)" "$dir/stdout.log" "$dir/hdfs.log" \
        "$JAVA" ${cds:+"$cds"} "${JAVA_DAEMON_LOG[@]}" -Xms256m -Xmx1g "${JAVA_COMMON[@]}" \
        -Dlog4j.configuration="file:$DEPLOY_DIR/hdfs/log4j.properties" \
        -cp "$(classpath hdfs)" carflow.MiniHdfs --base-dir "$dir/data" --port "$HDFS_PORT" --http-port "$HDFS_HTTP_PORT"
}

start_influxdb() {
    local dir
    dir=$(svc_dir influxdb)
    mkdir -p "$dir" || return 1
    sed -e "s#@INFLUX_DIR@#$dir#g" -e "s#127\.0\.0\.1:8086\b#127.0.0.1:$INFLUX_PORT#g" \
        -e "s#127\.0\.0\.1:8088\b#127.0.0.1:$INFLUX_RPC_PORT#g" \
        "$DEPLOY_DIR/influxdb/influxdb.conf" >"$dir/influxdb.conf" || return 1
    if [[ -f $dir/influxdb.log ]]; then mv -f "$dir/influxdb.log" "$dir/influxdb.log.prev"; fi
    spawn "$(pid_file influxdb)" "$dir/influxdb.log" "$dir/influxdb.log" \
        "$(influxd_bin)" run -config "$dir/influxdb.conf"
}

# ---------------------------------------------------------------------------------------------------
# readiness: *_ready answers quickly whether the service serves requests; *_post does the one-off setup

kafka_ready() { port_open "$KAFKA_PORT" && port_open "$KAFKA_CONTROLLER_PORT"; }
kafka_post() {
    local t name parts
    for t in "${KAFKA_TOPICS[@]}"; do
        name=${t%%:*}
        parts=${t##*:}
        kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --create \
            --if-not-exists --topic "$name" --partitions "$parts" --replication-factor 1 >/dev/null || return 1
    done
}

hdfs_ready() {
    port_open "$HDFS_PORT" && port_open "$HDFS_HTTP_PORT" &&
        curl -sf -o /dev/null --max-time 5 "http://127.0.0.1:$HDFS_HTTP_PORT/webhdfs/v1/?op=GETFILESTATUS"
}
hdfs_started() { grep -q '^READY ' "$(svc_dir hdfs)/stdout.log" 2>/dev/null; }
hdfs_post() { :; }

influxdb_ready() { curl -sf -o /dev/null --max-time 5 "http://127.0.0.1:$INFLUX_PORT/ping"; }
influxdb_post() {
    local db
    for db in "${INFLUX_DATABASES[@]}"; do
        curl -sf -o /dev/null --max-time 10 -XPOST "http://127.0.0.1:$INFLUX_PORT/query" \
            --data-urlencode "q=CREATE DATABASE $db" || return 1
    done
}

svc_ready() { # <svc>: ready for clients (for hdfs: only once our main printed READY, if we started it)
    local svc=$1
    case $svc in
        hdfs) hdfs_ready ;;
        *) "${svc}_ready" ;;
    esac
}

# ---------------------------------------------------------------------------------------------------
# up / down / status

# Phase 1 of "up" for one service: install and start unless already running. Prints nothing on success;
# on failure prints the failure line and returns 1.
up_begin() {
    local svc=$1 pid port other
    mkdir -p "$(svc_dir "$svc")"
    if pid=$(running_pid "$svc"); then
        return 0
    fi
    for port in $(all_ports "$svc"); do
        if port_open "$port"; then
            other=$(pid_on_port "$port")
            report "$svc" FAILED "port 127.0.0.1:$port is in use by another process${other:+ (pid $other: $(tr '\0' ' ' </proc/"$other"/cmdline 2>/dev/null | cut -c1-80))}"
            return 1
        fi
    done
    if ! install_svc "$svc"; then
        report "$svc" FAILED "install failed (log: $(rel "$(install_log "$svc")"))"
        return 1
    fi
    if ! "start_$svc" 2>>"$(install_log "$svc")"; then
        report "$svc" FAILED "could not start (log: $(rel "$(install_log "$svc")"), $(rel "$(log_file "$svc")"))"
        return 1
    fi
    return 0
}

# Phase 2: wait until ready (bounded), run the one-off setup, print one line.
up_wait() {
    local svc=$1 t0=$2 deadline pid already=0
    deadline=$(($(date +%s) + UP_TIMEOUT))
    if pid=$(running_pid "$svc") && [[ ! -f $(svc_dir "$svc")/.starting ]]; then
        already=1
    fi
    while :; do
        if ! pid=$(running_pid "$svc"); then
            report "$svc" FAILED "process exited during startup (log: $(rel "$(log_file "$svc")"))"
            return 1
        fi
        if svc_ready "$svc" && { [[ $svc != hdfs ]] || ((already)) || hdfs_started; }; then
            break
        fi
        if (($(date +%s) >= deadline)); then
            report "$svc" FAILED "not ready after ${UP_TIMEOUT}s, pid $pid still running (log: $(rel "$(log_file "$svc")"))"
            return 1
        fi
        sleep 0.3
    done
    # The one-off setup doubles as the end-to-end check (Kafka: the broker answers admin requests).
    local tries=0
    until "${svc}_post" 2>>"$(svc_dir "$svc")/post.log"; do
        tries=$((tries + 1))
        if (($(date +%s) >= deadline)); then
            report "$svc" FAILED "up, but setup failed (log: $(rel "$(svc_dir "$svc")/post.log"), $(rel "$(log_file "$svc")"))"
            return 1
        fi
        sleep 1
    done
    rm -f "$(svc_dir "$svc")/.starting"
    local how
    if ((already)); then how="already running"; else how="ready after $(elapsed "$t0")s"; fi
    report "$svc" ready "$(endpoint "$svc")  pid $pid, $how  (log: $(rel "$(log_file "$svc")"))"
}

cmd_up() {
    local svcs=("$@") svc rc=0 t0
    t0=$(now)
    local -A began=()
    # Start everything first (installs are sequential, the JVMs come up meanwhile), then wait for each.
    for svc in "${svcs[@]}"; do
        if running_pid "$svc" >/dev/null; then
            began[$svc]=1
            continue
        fi
        touch "$(svc_dir "$svc")/.starting" 2>/dev/null || { mkdir -p "$(svc_dir "$svc")" && touch "$(svc_dir "$svc")/.starting"; }
        if up_begin "$svc"; then
            began[$svc]=1
        else
            rm -f "$(svc_dir "$svc")/.starting"
            rc=1
        fi
    done
    for svc in "${svcs[@]}"; do
        [[ -n ${began[$svc]:-} ]] || continue
        up_wait "$svc" "$t0" || rc=1
    done
    return $rc
}

stop_svc() {
    local svc=$1 pid deadline how=stopped
    if ! pid=$(running_pid "$svc"); then
        rm -f "$(pid_file "$svc")" "$(svc_dir "$svc")/.starting"
        report "$svc" down "(not running)"
        return 0
    fi
    local t0
    t0=$(now)
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(($(date +%s) + $(stop_timeout "$svc")))
    while kill -0 "$pid" 2>/dev/null; do
        if (($(date +%s) >= deadline)); then
            kill -KILL "$pid" 2>/dev/null || true
            how="killed (SIGKILL: still running $(stop_timeout "$svc")s after SIGTERM)"
            local i
            for ((i = 0; i < 50; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then
                report "$svc" FAILED "pid $pid survived SIGKILL (log: $(rel "$(log_file "$svc")"))"
                return 1
            fi
            break
        fi
        sleep 0.2
    done
    rm -f "$(pid_file "$svc")" "$(svc_dir "$svc")/.starting"
    if [[ $how == stopped ]]; then
        report "$svc" down "stopped pid $pid in $(elapsed "$t0")s"
    else
        report "$svc" down "pid $pid $how"
    fi
}

cmd_down() {
    local svc pids=() i=0 rc=0
    # Stop in parallel; each prints its own line.
    for svc in "$@"; do
        stop_svc "$svc" &
        pids+=($!)
    done
    for i in "${pids[@]}"; do
        wait "$i" || rc=1
    done
    return $rc
}

cmd_status() {
    local svc pid rc=0
    for svc in "$@"; do
        if pid=$(running_pid "$svc"); then
            if svc_ready "$svc"; then
                report "$svc" ready "$(endpoint "$svc")  pid $pid  (log: $(rel "$(log_file "$svc")"))"
            else
                report "$svc" "up?" "pid $pid running but not answering on $(endpoint "$svc")  (log: $(rel "$(log_file "$svc")"))"
                rc=3
            fi
        else
            report "$svc" down "(log: $(rel "$(log_file "$svc")"))"
            rc=3
        fi
    done
    return $rc
}

# End-to-end smoke test of running services; leaves no data behind.
check_sockets() { # <svc>: every listening socket of the process is on 127.0.0.1
    local svc=$1 pid bad
    pid=$(running_pid "$svc") || { echo "not running"; return 1; }
    bad=$(ss -Hltunp 2>/dev/null | grep "pid=$pid," | awk '{print $5}' | grep -v '^127\.0\.0\.1:' || true)
    if [[ -n $bad ]]; then
        echo "listening beyond loopback: $bad"
        return 1
    fi
    echo "$(ss -Hltnp | grep -c "pid=$pid,") sockets, all on 127.0.0.1"
}
check_kafka() {
    local topic msg got
    topic="carflow-smoke-$(date +%s%N)"
    msg="smoke-$RANDOM-$RANDOM"
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --create \
        --topic "$topic" --partitions 1 --replication-factor 1 >/dev/null || return 1
    echo "$msg" | kafka_tool org.apache.kafka.tools.ConsoleProducer --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
        --topic "$topic" >/dev/null || return 1
    got=$(kafka_tool org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
        --topic "$topic" --from-beginning --max-messages 1 --timeout-ms 20000 2>/dev/null) || true
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --delete \
        --topic "$topic" >/dev/null 2>&1 || true
    [[ $got == "$msg" ]] || { echo "produced '$msg', consumed '$got'"; return 1; }
    echo "produced and consumed one message on a scratch topic"
}
check_hdfs() {
    local f url got listing
    f="/tmp/carflow-smoke/$(date +%s%N).txt"
    url="http://127.0.0.1:$HDFS_HTTP_PORT/webhdfs/v1$f"
    curl -sf -L -X PUT -T - "$url?op=CREATE&overwrite=true&user.name=carflow" <<<"carflow smoke" >/dev/null || return 1
    listing=$(curl -sf "http://127.0.0.1:$HDFS_HTTP_PORT/webhdfs/v1$(dirname "$f")?op=LISTSTATUS") || return 1
    got=$(curl -sf -L "$url?op=OPEN&user.name=carflow") || return 1
    curl -sf -X DELETE "http://127.0.0.1:$HDFS_HTTP_PORT/webhdfs/v1/tmp/carflow-smoke?op=DELETE&recursive=true&user.name=carflow" >/dev/null || true
    [[ $got == "carflow smoke" && $listing == *"$(basename "$f")"* ]] || { echo "read back '$got'"; return 1; }
    echo "wrote, listed and read back $f over WebHDFS"
}
check_influxdb() {
    local ts got
    ts=$(date +%s%3N)
    curl -sf -XPOST "http://127.0.0.1:$INFLUX_PORT/api/v2/write?bucket=${INFLUX_DATABASES[0]}&precision=ms" \
        -H "Authorization: Token carflow:carflow" --data-binary "carflow_smoke,check=1 value=42i $ts" || return 1
    got=$(curl -sf -G "http://127.0.0.1:$INFLUX_PORT/query" --data-urlencode "db=${INFLUX_DATABASES[0]}" \
        --data-urlencode "q=SELECT value FROM carflow_smoke") || return 1
    curl -sf -XPOST "http://127.0.0.1:$INFLUX_PORT/query" --data-urlencode "db=${INFLUX_DATABASES[0]}" \
        --data-urlencode "q=DROP MEASUREMENT carflow_smoke" >/dev/null || true
    [[ $got == *'"value"'*42* ]] || { echo "query returned: $got"; return 1; }
    echo "wrote a point with /api/v2/write, read it back with InfluxQL"
}
cmd_check() {
    local svc rc=0 out
    for svc in "$@"; do
        if ! out=$(check_sockets "$svc"); then
            report "$svc" FAILED "$out"
            rc=1
            continue
        fi
        report "$svc" ok "$out"
        if out=$("check_$svc" 2>&1); then
            report "$svc" ok "$out"
        else
            report "$svc" FAILED "$(tail -n 3 <<<"$out")"
            rc=1
        fi
    done
    return $rc
}

cmd_env() {
    cat <<EOF
export CARFLOW_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export CARFLOW_KAFKA_TOPIC=${KAFKA_TOPICS[0]%%:*}
export CARFLOW_HDFS_URL=hdfs://127.0.0.1:$HDFS_PORT
export CARFLOW_HDFS_HTTP_URL=http://127.0.0.1:$HDFS_HTTP_PORT
export CARFLOW_INFLUX_URL=http://127.0.0.1:$INFLUX_PORT
export CARFLOW_INFLUX_DB=${INFLUX_DATABASES[0]}
export CARFLOW_RUN_DIR=$RUN_DIR
EOF
}

cmd_reset() {
    local svc
    cmd_down "$@"
    for svc in "$@"; do
        rm -rf "$(svc_dir "$svc")"
        report "$svc" reset "deleted $(rel "$(svc_dir "$svc")")"
    done
}

cmd_logs() {
    local svc=${1:-} follow=${2:-}
    [[ -n $svc ]] || die "usage: logs <kafka|hdfs|influxdb> [-f]"
    valid_svc "$svc"
    local f
    f=$(log_file "$svc")
    [[ -f $f ]] || die "no log yet: $f"
    if [[ $follow == -f ]]; then
        exec tail -n 50 -F "$f"
    fi
    echo "==> $f <=="
    tail -n 100 "$f"
    if [[ -s $(svc_dir "$svc")/stdout.log && $svc == kafka ]]; then
        echo "==> $(svc_dir "$svc")/stdout.log <=="
        tail -n 20 "$(svc_dir "$svc")/stdout.log"
    fi
}

valid_svc() {
    case $1 in kafka | hdfs | influxdb) ;; *) die "unknown service '$1' (kafka, hdfs, influxdb)" ;; esac
}

with_lock() { # serialise up/down/reset between concurrent callers
    mkdir -p "$RUN_DIR"
    exec 9>"$RUN_DIR/.services.lock"
    flock -w 600 9 || die "could not lock $RUN_DIR/.services.lock"
    "$@"
}

usage() {
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
}

main() {
    local cmd=${1:-}
    [[ -n $cmd ]] || { usage; exit 2; }
    shift
    case $cmd in
        up | down | status | reset | install | check)
            local svcs=("$@") s
            ((${#svcs[@]})) || svcs=("${ALL_SERVICES[@]}")
            for s in "${svcs[@]}"; do valid_svc "$s"; done
            case $cmd in
                up) with_lock cmd_up "${svcs[@]}" ;;
                down) with_lock cmd_down "${svcs[@]}" ;;
                reset) with_lock cmd_reset "${svcs[@]}" ;;
                status) cmd_status "${svcs[@]}" ;;
                check) cmd_check "${svcs[@]}" ;;
                install)
                    for s in "${svcs[@]}"; do
                        if install_svc "$s"; then
                            report "$s" ok "installed"
                        else
                            report "$s" FAILED "install failed (log: $(rel "$(install_log "$s")"))"
                            exit 1
                        fi
                    done
                    ;;
            esac
            ;;
        logs) cmd_logs "$@" ;;
        env) cmd_env ;;
        classpath)
            [[ ${1:-} == kafka || ${1:-} == hdfs ]] || die "usage: classpath <kafka|hdfs>"
            install_svc "$1" || die "install of $1 failed (log: $(install_log "$1"))"
            classpath "$1"
            echo
            ;;
        fs)
            install_svc hdfs || die "install of hdfs failed (log: $(install_log hdfs))"
            exec "$JAVA" -Xmx512m -XX:TieredStopAtLevel=1 "${JAVA_COMMON[@]}" \
                -Dlog4j.configuration="file:$DEPLOY_DIR/hdfs/log4j.properties" -Dhadoop.root.logger=WARN,stderr \
                -cp "$DEPLOY_DIR/hdfs/client-conf:$(classpath hdfs)" org.apache.hadoop.fs.FsShell \
                -fs "hdfs://127.0.0.1:$HDFS_PORT" "$@"
            ;;
        dfsadmin)
            install_svc hdfs || die "install of hdfs failed (log: $(install_log hdfs))"
            exec "$JAVA" -Xmx512m -XX:TieredStopAtLevel=1 "${JAVA_COMMON[@]}" \
                -Dlog4j.configuration="file:$DEPLOY_DIR/hdfs/log4j.properties" -Dhadoop.root.logger=WARN,stderr \
                -cp "$DEPLOY_DIR/hdfs/client-conf:$(classpath hdfs)" org.apache.hadoop.hdfs.tools.DFSAdmin \
                -fs "hdfs://127.0.0.1:$HDFS_PORT" "$@"
            ;;
        -h | --help | help) usage ;;
        *) usage; exit 2 ;;
    esac
}

main "$@"
