#!/usr/bin/env bash
# Issue 15's durable small-write rows, each measured in the same run and interleaved:
#   - durable 4 KiB writes (WRITE + PERSIST) at 1, 16 and 64 clients: pmu-server with the write
#     journal (default), the same binary with --journal-max-persist 0 (every PERSIST an msync, the
#     path before the journal), and Redis with appendfsync always (redis-benchmark SET 4 KiB);
#   - one client's durable 4 KiB p50 against the raw TCP round trip plus a local write + msync.
# Data directories on disk (/var/tmp), 127.0.0.1 only. Prints one JSON line per measurement and a
# summary; raw output in bench-out/journal/. Usage: scripts/bench-journal.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-2}
secs=${2:-3}
source scripts/bench-setup.sh
bench_setup journal
gcc -O2 -o "$work/localmsync" Benchmarks/baselines/localmsync.c

start_pmu() {  # name extra-args...
    local name=$1; shift
    "$bin/pmu-server" --data-dir "$work/$name" --listen 127.0.0.1:0 --ready-file "$work/$name.ready" --log-level warning "$@" 2>>"$work/pmu-server.log" &
    pids+=($!)
    for _ in $(seq 100); do [[ -s $work/$name.ready ]] && break; sleep 0.1; done
}
start_pmu journal
start_pmu msync --journal-max-persist 0
tcp_port=$(free_port); "$work/rawtcp" server "$tcp_port" & pids+=($!)
aof_port=$(free_port); mkdir -p "$work/aof"
redis-server --port "$aof_port" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always --dir "$work/aof" --daemonize no >/dev/null &
pids+=($!)
sleep 0.5
bench() { local name=$1; shift; "$bin/pmu-bench" "$@" --server "$(cat "$work/$name.ready")" --secret-file "$work/$name/admin.secret"; }
redis_set() { redis-benchmark -p "$aof_port" -t set -d 4096 -c "$1" -n "$2" -r 100000 --csv -q 2>/dev/null | tail -1; }

for round in $(seq "$rounds"); do
    "$work/rawtcp" pingpong 127.0.0.1 "$tcp_port" 4096 5000 > "$out/tcp-pingpong-$round.json"
    "$work/localmsync" "$work/msync.bin" 4096 2000 > "$out/msync-$round.json"
    for server in journal msync; do
        bench "$server" small --size 4096 --count 3000 --persist > "$out/small-$server-$round.json"
    done
    for clients in 1 16 64; do
        for server in journal msync; do
            bench "$server" concurrency --clients "$clients" --seconds "$secs" > "$out/conc-$server-$clients-$round.json"
        done
        redis_set "$clients" $((clients == 1 ? 4000 : 30000)) > "$out/redis-aof-$clients-$round.csv"
    done
done

python3 - "$out" "$rounds" <<'EOF'
import json, sys, csv
out, rounds = sys.argv[1], int(sys.argv[2])
def js(name): return json.load(open(f"{out}/{name}"))
def redis(name):
    row = next(csv.reader(open(f"{out}/{name}")))
    return float(row[1])
for r in range(1, rounds + 1):
    tcp, ms = js(f"tcp-pingpong-{r}.json")["p50_us"], js(f"msync-{r}.json")["p50_us"]
    limit = tcp + ms
    for server in ("journal", "msync"):
        p50 = js(f"small-{server}-{r}.json")["p50_us"]
        print(f"round {r}: single durable 4 KiB p50, {server}: {p50:.0f} us; round trip {tcp:.0f} + msync {ms:.0f} = {limit:.0f} us -> {p50 / limit:.2f}x")
    for clients in (1, 16, 64):
        rd = redis(f"redis-aof-{clients}-{r}.csv")
        for server in ("journal", "msync"):
            c = js(f"conc-{server}-{clients}-{r}.json")
            print(f"round {r}: {clients:2d} clients, {server}: {c['ops_per_sec']:8.0f} ops/s (p99 {c['p99_us']:.0f} us); Redis AOF always {rd:8.0f} -> {c['ops_per_sec'] / rd:.2f}x")
EOF
