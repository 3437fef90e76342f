#!/usr/bin/env bash
# Keep a cargo target directory from growing without bound, and say whether the disk it is on has
# room for a build.
#
#   deploy/prune-target.sh [TARGET_DIR]     default: $CARGO_TARGET_DIR or ./target
#
# Every link of a test or binary of this workspace writes a new 50-350 MB executable into
# <target>/<profile>/deps (DataFusion is linked into each), and a target directory kept as a cache
# between runs keeps every one it ever linked: 65 superseded executables, 12.7 GB, were found in one
# developer's target after three days. This removes, per profile, every executable that a newer one
# of the same name superseded (cargo relinks one if it is wanted again; nothing is rebuilt from
# source), and incremental-compilation sessions untouched for two days.
#
# Then it checks the free space: a build from nothing here takes about 12 GB (8 GB in deps, the
# rest incremental state and build scripts). When the disk filled during a CI run, the linker died
# with "ld terminated with signal 7 [Bus error]", which names neither the disk nor the fix; this
# says it before the build starts. Below CARFLOW_MIN_FREE_GB (default 6) it exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${1:-${CARGO_TARGET_DIR:-target}}"
min_free_gb="${CARFLOW_MIN_FREE_GB:-6}"
want_free_gb=15

freed=0
if [[ -d $target ]]; then
    for deps in "$target"/*/deps; do
        [[ -d $deps ]] || continue
        # Executables cargo links have no extension; newest first, keep the first of each name.
        while read -r size file; do
            rm -f -- "$deps/$file"
            freed=$((freed + size))
        done < <(find "$deps" -maxdepth 1 -type f -perm -u+x ! -name '*.*' -printf '%T@ %s %f\n' |
            sort -rn |
            awk '{ name = $3; sub(/-[0-9a-f]+$/, "", name); if (seen[name]++) print $2, $3 }')
    done
    for inc in "$target"/*/incremental; do
        [[ -d $inc ]] || continue
        while read -r dir; do
            size=$(du -sb -- "$dir" | cut -f1)
            rm -rf -- "$dir"
            freed=$((freed + size))
        done < <(find "$inc" -mindepth 1 -maxdepth 1 -type d -mtime +2)
    done
fi
echo "pruned $((freed / 1000000)) MB of superseded executables and stale incremental state from $target"

probe="$target"
[[ -d $probe ]] || probe=.
free_gb=$(df -P -k -- "$probe" | awk 'NR == 2 { printf "%d", $4 / 1048576 }')
if ((free_gb < min_free_gb)); then
    echo "only ${free_gb} GB free on the disk of $target; a build needs about 12 GB (linking fails with" \
        "'signal 7 [Bus error]' when the disk fills). Free space there, or point CARGO_TARGET_DIR at a" \
        "disk with room (CARFLOW_MIN_FREE_GB=$min_free_gb sets this limit)." >&2
    exit 1
elif ((free_gb < want_free_gb)); then
    echo "warning: ${free_gb} GB free on the disk of $target; a build from nothing takes about 12 GB" >&2
else
    echo "${free_gb} GB free on the disk of $target"
fi
