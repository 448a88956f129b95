#!/usr/bin/env bash
# Mirrored 4 KiB writes (issue 12) against their baselines, in one run on 127.0.0.1:
#   raw TCP round trip (4 KiB request, 8-byte reply: Benchmarks/baselines/rawtcp.c);
#   acknowledged-only: an unpaired pmu-server, WRITE answered once in its page cache;
#   mirrored, partner page-cache: WRITE answered once in the owner's region and the partner's log
#       (written, not synced): two round trips;
#   mirrored, partner fdatasync (the default): the partner syncs each record before its OK;
#   durable: the unpaired server, WRITE then PERSIST (msync) before the next.
# One client, one write at a time (pmu-bench small). Data directories on disk under /var/tmp.
# Usage: scripts/bench-pair.sh [COUNT]   (default 5000 writes per row; env PMU_BIN_DIR). Prints a table and
# writes bench-out/pair.json. Not in scripts/bench.sh yet (kept apart while other work edits it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
count=${1:-5000}
# PMU_BIN_DIR: use release binaries built elsewhere (e.g. --scratch-path), skipping the build.
if [[ -z ${PMU_BIN_DIR:-} ]]; then
    for product in pmu-server pmu-bench; do swift build -c release --product "$product" >/dev/null; done
fi
bin=${PMU_BIN_DIR:-$(swift build -c release --show-bin-path)}
work=$(mktemp -d /var/tmp/pmu-bench-pair.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
gcc -O2 -o "$work/rawtcp" Benchmarks/baselines/rawtcp.c
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
umask 077
printf 'admin:bench-admin-secret-0123456789\npair:bench-pair-secret-0123456789\n' > "$work/secrets"
printf 'bench-admin-secret-0123456789\n' > "$work/admin.secret"
printf 'bench-pair-secret-0123456789\n' > "$work/pair.secret"

start() {  # name, extra args...: starts pmu-server (not in a subshell: pids and the trap stay ours)
    local name=$1; shift
    "$bin/pmu-server" --data-dir "$work/$name" --listen 127.0.0.1:0 --secrets "$work/secrets" --ready-file "$work/$name.ready" --log-level warning "$@" 2>>"$work/$name.log" &
    pids+=($!)
    for _ in $(seq 200); do [[ -s $work/$name.ready ]] && return; sleep 0.05; done
    echo "pmu-server $name did not start:" >&2; cat "$work/$name.log" >&2; exit 1
}
address() { cat "$work/$1.ready"; }
start plain; plain=$(address plain)
start partner-sync --mirror-client pair --mirror-sync fdatasync
start owner-sync --partner "$(address partner-sync)" --partner-client pair --partner-secret-file "$work/pair.secret"; owner_sync=$(address owner-sync)
start partner-cache --mirror-client pair --mirror-sync page-cache
start owner-cache --partner "$(address partner-cache)" --partner-client pair --partner-secret-file "$work/pair.secret"; owner_cache=$(address owner-cache)
tcp_port=$(free_port); "$work/rawtcp" server "$tcp_port" & pids+=($!)
sleep 0.3

bench() { "$bin/pmu-bench" small --size 4096 --server "$1" --secret-file "$work/admin.secret" "${@:2}"; }
mkdir -p bench-out
tcp=$("$work/rawtcp" pingpong 127.0.0.1 "$tcp_port" 4096 "$count")
acked=$(bench "$plain" --count "$count")
mirrored_cache=$(bench "$owner_cache" --count "$count")
mirrored_sync=$(bench "$owner_sync" --count "$count")
durable=$(bench "$plain" --count $((count / 4)) --persist)
python3 - "$tcp" "$acked" "$mirrored_cache" "$mirrored_sync" "$durable" <<'PY'
import json, sys
names = ["raw TCP round trip", "acknowledged-only", "mirrored, partner page-cache", "mirrored, partner fdatasync", "durable (write + msync)"]
rows = [json.loads(a) for a in sys.argv[1:]]
tcp = rows[0]["p50_us"]
print(f"{'4 KiB write, one client':32} {'p50 us':>9} {'p99 us':>9} {'p50 / TCP':>10}")
for name, row in zip(names, rows):
    print(f"{name:32} {row['p50_us']:9.1f} {row['p99_us']:9.1f} {row['p50_us'] / tcp:10.2f}")
cache, sync, durable = rows[2]["p50_us"], rows[3]["p50_us"], rows[4]["p50_us"]
print(f"goals: mirrored p50 <= 2.2x TCP: page-cache {cache / tcp:.2f}x, fdatasync {sync / tcp:.2f}x; <= 0.6x durable: page-cache {cache / durable:.2f}x, fdatasync {sync / durable:.2f}x")
json.dump(dict(zip(names, rows)), open("bench-out/pair.json", "w"), indent=1, sort_keys=True)
PY
