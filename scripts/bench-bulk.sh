#!/usr/bin/env bash
# Issue 15 item 2's row: a 1 GiB checkpoint (pmu-bench bulk, 1 MiB WRITEs, 8 in flight, into a
# fresh region, acknowledged) against the raw TCP stream of the same bytes (Benchmarks/baselines/
# rawtcp.c), interleaved in one run, on 127.0.0.1, data directories on disk (/var/tmp):
#   streamed  the default server: WRITE payloads copied into the region as each socket read arrives;
#   gathered  the same binary with --streamed-write-min 0: every WRITE gathered whole (the path before);
#   populated the default server with --populate (regions pre-faulted at create, outside the timed
#             part): what is left once the region's pages are not touched for the first time.
# PMU_BULK_PERF=1 also records `perf record -g` of the server during one streamed and one gathered
# run (root), and prints the top symbols. Prints one JSON line per measurement and the ratios.
# Usage: scripts/bench-bulk.sh [ROUNDS] [TOTAL_BYTES] [CHUNK_BYTES]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-3}
total=${2:-$((1 << 30))}
chunk=${3:-$((1 << 20))}
source scripts/bench-setup.sh
bench_setup bulk

declare -A server_pid
start_pmu() {  # name extra-args...
    local name=$1; shift
    "$bin/pmu-server" --data-dir "$work/$name" --listen 127.0.0.1:0 --ready-file "$work/$name.ready" --log-level warning "$@" 2>>"$work/pmu-server.log" &
    pids+=($!); server_pid[$name]=$!
    for _ in $(seq 100); do [[ -s $work/$name.ready ]] && break; sleep 0.1; done
}
start_pmu streamed
start_pmu gathered --streamed-write-min 0
start_pmu populated --populate
tcp_port=$(free_port); "$work/rawtcp" server "$tcp_port" & pids+=($!)
sleep 0.3
bulk() {  # name
    "$bin/pmu-bench" bulk --total "$total" --chunk "$chunk" --server "$(cat "$work/$1.ready")" --secret-file "$work/$1/admin.secret"
}
for round in $(seq "$rounds"); do
    tcp=$("$work/rawtcp" stream 127.0.0.1 "$tcp_port" $((1 << 20)) "$total")
    echo "{\"round\":$round,\"what\":\"tcp-stream\",\"result\":$tcp}" | tee -a "$out/results.jsonl"
    order="streamed gathered populated"; (( round % 2 == 0 )) && order="populated gathered streamed"  # alternate who runs first
    for name in $order; do
        result=$(bulk "$name")
        echo "{\"round\":$round,\"what\":\"$name\",\"result\":$result}" | tee -a "$out/results.jsonl"
        python3 - "$tcp" "$result" "$name" <<'PY'
import json, sys
tcp, pmu = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"  {sys.argv[3]}: acknowledged {pmu['ack_gbps']:.3f} GB/s / raw TCP {tcp['gbps']:.3f} GB/s = {pmu['ack_gbps'] / tcp['gbps']:.2f}x")
PY
    done
done
if [[ ${PMU_BULK_PERF:-0} == 1 ]]; then
    for name in streamed gathered; do
        perf record -g -o "$out/perf-$name.data" -p "${server_pid[$name]}" 2>/dev/null &
        perf_pid=$!
        sleep 0.5
        bulk "$name" > "$out/perf-$name.json"
        kill -INT "$perf_pid"; wait "$perf_pid" || true
        echo "== $name (perf attached): $(cat "$out/perf-$name.json")"
        perf report -i "$out/perf-$name.data" --no-children --sort symbol --stdio -g none 2>/dev/null | grep -E "^ +[0-9]" | head -15 || true
    done
fi
