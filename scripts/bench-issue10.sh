#!/usr/bin/env bash
# Issue 10's lock-scope and LIST figures (docs/BENCHMARKS.md, "Fenced writes" and "LIST at 50,000
# regions"), on 127.0.0.1 only:
#   fenced-writes: 16 and 64 clients, each writing 1 MiB WRITEs (acknowledged) into its own
#                  checkpoint region, on an on-disk data directory;
#   list:          50,000 regions (created over the wire on a tmpfs data directory, where creates
#                  cost no fsync), one client that sees none of them LISTs, then two loop LIST
#                  while an admin's STATs are timed.
# Usage: scripts/bench-issue10.sh [BIN_DIR]   BIN_DIR holds pmu-server and pmu-bench (default: this
#        tree's release build, built first). Pass another build's directory to compare.
# Env: PMU_BENCH_SECONDS (5), PMU_BENCH_LIST_REGIONS (50000; 0 skips the LIST part),
#      PMU_BENCH_WRITE_SIZE (1048576 bytes per WRITE).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ $# -ge 1 ]]; then
    bin=$1
else
    for product in pmu-server pmu-bench; do swift build -c release --product "$product" >/dev/null; done
    bin=$(swift build -c release --show-bin-path)
fi
seconds=${PMU_BENCH_SECONDS:-5}
regions=${PMU_BENCH_LIST_REGIONS:-50000}
work=$(mktemp -d /var/tmp/pmu-bench10.XXXXXX)   # on disk
shm=$(mktemp -d /dev/shm/pmu-bench10.XXXXXX)    # tmpfs, for the 50,000 creates
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work" "$shm"; }
trap cleanup EXIT

start_server() {  # data-dir ready-file [args...]
    local data=$1 ready=$2; shift 2
    "$bin/pmu-server" --data-dir "$data" --listen 127.0.0.1:0 --ready-file "$ready" --log-level warning "$@" 2>>"$work/server.log" &
    pids+=($!)
    for _ in $(seq 200); do [[ -s $ready ]] && break; sleep 0.1; done
    [[ -s $ready ]] || { echo "pmu-server did not start:"; cat "$work/server.log"; exit 1; }
}

start_server "$work/data" "$work/ready"
endpoint=$(cat "$work/ready")
for clients in 16 64; do
    echo "fenced-writes clients=$clients: $("$bin/pmu-bench" fenced-writes --clients "$clients" --seconds "$seconds" --size "${PMU_BENCH_WRITE_SIZE:-1048576}" --span $((8 << 20)) \
        --server "$endpoint" --secret-file "$work/data/admin.secret")"
done

[[ $regions -gt 0 ]] || exit 0
printf '# bench secrets\nadmin:bench-admin-secret-0123\nviewer:bench-viewer-secret-012\n' > "$shm/secrets"
chmod 600 "$shm/secrets"
printf 'bench-admin-secret-0123' > "$shm/admin.secret"; printf 'bench-viewer-secret-012' > "$shm/viewer.secret"
chmod 600 "$shm/admin.secret" "$shm/viewer.secret"
start_server "$shm/data" "$shm/ready" --secrets "$shm/secrets" --max-regions "$regions"
echo "list regions=$regions: $("$bin/pmu-bench" list --count "$regions" --stats 300 --server "$(cat "$shm/ready")" \
    --secret-file "$shm/admin.secret" --viewer viewer --viewer-secret-file "$shm/viewer.secret")"
