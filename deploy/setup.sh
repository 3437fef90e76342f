#!/usr/bin/env bash
# Idempotent install of the system packages carflow needs, from Debian's packages.
#
#   deploy/setup.sh            packages for the Rust build (a C toolchain and make, for librdkafka and
#                              other C code built by cargo; pkg-config) and for deploy/services.sh
#                              (curl, iproute2 for ss, util-linux for flock, a JDK and Maven when missing)
#
# The Rust build needs no cmake and no libcurl headers (deploy/check-build-deps.sh checks that), so
# `cargo run -- demo` works without this script on a machine with Rust, gcc and make.
#
# Packages that are already installed are skipped, and apt-get is not touched at all when nothing is
# missing. Runs as root; otherwise uses sudo when it is available. Go (needed to build influxd) is not
# installed here: Debian's Go is too old, so it must come with the machine (checked, warned about).
set -euo pipefail

BUILD_PACKAGES=(build-essential pkg-config)
SERVICE_PACKAGES=(curl iproute2 util-linux ca-certificates)

log() { printf 'setup: %s\n' "$*" >&2; }

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()
    log "not root and no sudo: apt-get may fail"
fi

installed() {
    # dpkg-query prints "install ok installed" for a package that is fully installed.
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

wanted=("${BUILD_PACKAGES[@]}" "${SERVICE_PACKAGES[@]}")
# A JDK (17+) and Maven for Kafka and HDFS; only when the machine has none.
if ! command -v javac >/dev/null 2>&1; then
    wanted+=(openjdk-17-jdk-headless)
fi
if ! command -v mvn >/dev/null 2>&1; then
    wanted+=(maven)
fi

missing=()
for p in "${wanted[@]}"; do
    if ! installed "$p"; then
        missing+=("$p")
    fi
done

if ((${#missing[@]} == 0)); then
    log "all packages present: ${wanted[*]}"
else
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Go builds influxd (deploy/services.sh); it is not taken from apt (Debian's is too old).
if ! command -v go >/dev/null 2>&1 && [[ ! -x /usr/local/go/bin/go ]]; then
    log "warning: no Go toolchain found (needed to build influxd for deploy/services.sh)"
fi
if ! command -v java >/dev/null 2>&1; then
    log "warning: no java on PATH (needed for Kafka and HDFS)"
fi
log "done"
