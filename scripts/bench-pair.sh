#!/usr/bin/env bash
# Mirrored 4 KiB writes (issue 12) against their baselines, in one run on 127.0.0.1:
#   raw TCP round trip (4 KiB request, 8-byte reply: Benchmarks/baselines/rawtcp.c);
#   acknowledged-only: an unpaired pmu-server, WRITE answered once in its page cache;
#   mirrored, partner page-cache: WRITE answered once in the owner's region and the partner's log
#       (written, not synced): two round trips;
#   mirrored, partner fdatasync (the default): the partner syncs each record before its OK;
#   durable: the unpaired server, WRITE then PERSIST (msync) before the next.
# One client, one write at a time (pmu-bench small). Then, in the same run:
#   1, 16 and 64 clients doing mirrored 4 KiB writes (partner fdatasync, group commit), each
#       client into its own region (pmu-bench concurrency --acknowledged), against Redis with
#       appendonly yes + appendfsync always (redis-benchmark SET of 4 KiB values, same client counts);
#   takeover time: 64 MiB of mirrored, unpersisted writes in the partner's log, the owner killed
#       (kill -9, test mode --test-volatile-until-persist: its unpersisted bytes die with it, as on a
#       machine loss), then `pmuctl pair takeover` on the partner and a 4 KiB `pmuctl write` to the
#       taken-over portion: from the kill to that write's return (includes two pmuctl start-ups).
# Data directories on disk under /var/tmp.
# Usage: scripts/bench-pair.sh [COUNT [SECONDS]]   (default 5000 writes per one-client row, 3 s per
# concurrency row; env PMU_BIN_DIR). Prints a table and writes bench-out/pair.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
count=${1:-5000}
seconds=${2:-3}
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || { echo "needs redis-server and redis-benchmark: bash scripts/install-deps.sh" >&2; exit 1; }
# PMU_BIN_DIR: use release binaries built elsewhere (e.g. --scratch-path), skipping the build.
if [[ -z ${PMU_BIN_DIR:-} ]]; then
    for product in pmu-server pmu-bench pmuctl; do swift build -c release --product "$product" >/dev/null; done
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
start partner-sync --mirror-client pair --mirror-sync fdatasync --mirror-log-max 2GiB
start owner-sync --partner "$(address partner-sync)" --partner-client pair --partner-secret-file "$work/pair.secret" --partner-max-unpersisted 1536MiB; owner_sync=$(address owner-sync)
start partner-cache --mirror-client pair --mirror-sync page-cache
start owner-cache --partner "$(address partner-cache)" --partner-client pair --partner-secret-file "$work/pair.secret"; owner_cache=$(address owner-cache)
tcp_port=$(free_port); "$work/rawtcp" server "$tcp_port" & pids+=($!)
aof_port=$(free_port); mkdir -p "$work/aof"
redis-server --port "$aof_port" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always --dir "$work/aof" --daemonize no >/dev/null &
pids+=($!)
sleep 0.5

bench() { "$bin/pmu-bench" small --size 4096 --server "$1" --secret-file "$work/admin.secret" "${@:2}"; }
mkdir -p bench-out
tcp=$("$work/rawtcp" pingpong 127.0.0.1 "$tcp_port" 4096 "$count")
acked=$(bench "$plain" --count "$count")
mirrored_cache=$(bench "$owner_cache" --count "$count")
mirrored_sync=$(bench "$owner_sync" --count "$count")
durable=$(bench "$plain" --count $((count / 4)) --persist)
conc=()
for clients in 1 16 64; do
    conc+=("$("$bin/pmu-bench" concurrency --acknowledged --clients "$clients" --seconds "$seconds" --span $((4 << 20)) --server "$owner_sync" --secret-file "$work/admin.secret")")
    conc+=("$(redis-benchmark -p "$aof_port" -t set -d 4096 -c "$clients" -n $((clients == 1 ? 3000 : 20000)) -r 100000 --csv -q 2>/dev/null | tail -1)")
done

# Takeover: a partner ready to take over, an owner in the machine-loss test mode.
start partner-takeover --mirror-client pair --partner-portion "$work/owner-takeover" --takeover-listen "127.0.0.1:$(free_port)" --fence-command true
PMU_ALLOW_TEST_MODES=1 start owner-takeover --partner "$(address partner-takeover)" --partner-client pair --partner-secret-file "$work/pair.secret" --test-volatile-until-persist
owner_pid=${pids[-1]}
ctl() { PMU_CLIENT=admin PMU_SECRET_FILE=$work/admin.secret "$bin/pmuctl" "$@"; }
ctl region create takeover-bench --size 80MiB --server "$(address owner-takeover)" >/dev/null
head -c $((64 << 20)) /dev/urandom > "$work/64m"
ctl write takeover-bench --offset 0 --file "$work/64m" --server "$(address owner-takeover)" >/dev/null
log_bytes=$(ctl pair status --json --server "$(address partner-takeover)" | python3 -c 'import json,sys; print(sum(l["usedBytes"] for l in json.load(sys.stdin)["mirrorLogs"]))')
head -c 4096 /dev/urandom > "$work/4k"
t0=$(date +%s%N)
kill -9 "$owner_pid"
report=$(ctl pair takeover --json --server "$(address partner-takeover)")
t1=$(date +%s%N)
ctl write takeover-bench --offset 0 --file "$work/4k" --server "$(echo "$report" | python3 -c 'import json,sys; print(json.load(sys.stdin)["serving"])')" >/dev/null
t2=$(date +%s%N)
takeover=$(printf '{"log_bytes": %s, "takeover_ms": %s, "first_write_ms": %s, "report": %s}' "$log_bytes" $(((t1 - t0) / 1000000)) $(((t2 - t0) / 1000000)) "$report")

python3 - "$tcp" "$acked" "$mirrored_cache" "$mirrored_sync" "$durable" "$takeover" "${conc[@]}" <<'PY'
import json, sys
names = ["raw TCP round trip", "acknowledged-only", "mirrored, partner page-cache", "mirrored, partner fdatasync", "durable (write + msync)"]
rows = [json.loads(a) for a in sys.argv[1:6]]
takeover = json.loads(sys.argv[6])
conc = sys.argv[7:]
tcp = rows[0]["p50_us"]
print(f"{'4 KiB write, one client':32} {'p50 us':>9} {'p99 us':>9} {'p50 / TCP':>10}")
for name, row in zip(names, rows):
    print(f"{name:32} {row['p50_us']:9.1f} {row['p99_us']:9.1f} {row['p50_us'] / tcp:10.2f}")
cache, sync, durable = rows[2]["p50_us"], rows[3]["p50_us"], rows[4]["p50_us"]
print(f"goals: mirrored p50 <= 2.2x TCP: page-cache {cache / tcp:.2f}x, fdatasync {sync / tcp:.2f}x; <= 0.6x durable: page-cache {cache / durable:.2f}x, fdatasync {sync / durable:.2f}x")
out = dict(zip(names, rows))
print()
print(f"{'4 KiB writes, N clients':32} {'pmu ops/s':>10} {'p50 us':>8} {'p99 us':>8} {'redis aof ops/s':>16} {'redis p50 us':>13} {'ratio':>6}")
for i, clients in enumerate([1, 16, 64]):
    pmu = json.loads(conc[2 * i])
    # redis-benchmark --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...
    fields = [f.strip('"') for f in conc[2 * i + 1].split(",")]
    redis_rps, redis_p50 = float(fields[1]), float(fields[4]) * 1000
    print(f"{'mirrored (fdatasync), ' + str(clients) + ' clients':32} {pmu['ops_per_sec']:10.0f} {pmu['p50_us']:8.1f} {pmu['p99_us']:8.1f} {redis_rps:16.0f} {redis_p50:13.1f} {pmu['ops_per_sec'] / redis_rps:6.2f}")
    out[f"mirrored {clients} clients"] = pmu
    out[f"redis appendfsync always {clients} clients"] = {"ops_per_sec": redis_rps, "p50_us": redis_p50}
print("goal: 16 clients >= 1.5x Redis appendfsync always")
print()
print(f"takeover of a {takeover['log_bytes'] / 2**20:.1f} MiB mirror log ({takeover['report']['replayedRecords']} records): kill -9 to takeover reply {takeover['takeover_ms']} ms (replay + msync {takeover['report']['milliseconds']} ms), to the first write served {takeover['first_write_ms']} ms")
out["takeover"] = takeover
json.dump(out, open("bench-out/pair.json", "w"), indent=1, sort_keys=True)
PY
