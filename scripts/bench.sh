#!/usr/bin/env bash
# PMU benchmarks with their baselines measured in the same run, on 127.0.0.1 only:
#   limits: raw TCP ping-pong and stream (Benchmarks/baselines/rawtcp.c), local write + msync
#           into a preallocated mmap'd file (Benchmarks/baselines/localmsync.c);
#   peer:   Redis from Debian (redis-server started here on a free port, without persistence and
#           with appendonly yes + appendfsync always), driven by redis-benchmark;
#   PMU:    pmu-server (release) on a temporary on-disk data directory, driven by pmu-bench;
#   pairs:  scripts/bench-pair.sh (issue 12's mirrored-write, concurrency and takeover rows).
# Prints a table with ratios, writes bench-out/results.json, bench-out/BENCHMARKS.md and
# bench-out/benchmarks.png. --quick: smaller counts (under a minute of measuring).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
quick=0
[[ ${1:-} == --quick ]] && quick=1

scripts/install-deps.sh
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
if [[ ${#need[@]} -gt 0 ]]; then
    as_root=(); [[ $(id -u) -eq 0 ]] || as_root=(sudo)
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib

for product in pmu-server pmu-bench pmuctl; do swift build -c release --product "$product" >/dev/null; done
bin=$(swift build -c release --show-bin-path)
out=bench-out
mkdir -p "$out/raw"
work=$(mktemp -d /var/tmp/pmu-bench.XXXXXX)   # on disk, not tmpfs: msync must reach a device
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
gcc -O2 -o "$work/rawtcp" Benchmarks/baselines/rawtcp.c
gcc -O2 -o "$work/localmsync" Benchmarks/baselines/localmsync.c

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# Servers.
"$bin/pmu-server" --data-dir "$work/pmu-data" --listen 127.0.0.1:0 --ready-file "$work/ready" --log-level warning 2>"$work/pmu-server.log" &
pids+=($!); pmu_pid=$!
for _ in $(seq 100); do [[ -s $work/ready ]] && break; sleep 0.1; done
pmu=$(cat "$work/ready")
# The same server with --populate (regions pre-faulted at create), for the bulk rows only.
"$bin/pmu-server" --populate --data-dir "$work/pmu-populate" --listen 127.0.0.1:0 --ready-file "$work/ready-populate" --log-level warning 2>>"$work/pmu-server.log" &
pids+=($!)
for _ in $(seq 100); do [[ -s $work/ready-populate ]] && break; sleep 0.1; done
tcp_port=$(free_port); "$work/rawtcp" server "$tcp_port" & pids+=($!)
redis_port=$(free_port); redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" --daemonize no >/dev/null &
pids+=($!)
aof_port=$(free_port); mkdir -p "$work/aof"
redis-server --port "$aof_port" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always --dir "$work/aof" --daemonize no >/dev/null &
pids+=($!)
sleep 0.5
bench() { "$bin/pmu-bench" "$@" --server "$pmu" --secret-file "$work/pmu-data/admin.secret"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$pmu_pid/status"; }
redis_set() {  # port size clients count
    redis-benchmark -p "$1" -t set -d "$2" -c "$3" -n "$4" -r 100000 --csv -q 2>/dev/null | tail -1
}

if [[ $quick -eq 1 ]]; then small=5000; bulk=$((256 << 20)); secs=2; regions=1000; redis_n=5000; else small=20000; bulk=$((1 << 30)); secs=3; regions=10000; redis_n=20000; fi

r="$out/raw"
echo "measuring (this takes $([[ $quick -eq 1 ]] && echo 'about a minute' || echo 'a few minutes'))..." >&2
for size in 64 4096; do
    "$work/rawtcp" pingpong 127.0.0.1 "$tcp_port" "$size" "$small" > "$r/tcp-pingpong-$size.json"
    bench small --size "$size" --count "$small" > "$r/pmu-small-$size.json"
    bench small --size "$size" --count $((small / 4)) --persist > "$r/pmu-durable-$size.json"
    "$work/localmsync" "$work/msync.bin" "$size" $((small / 4)) > "$r/msync-$size.json"
    redis_set "$redis_port" "$size" 1 "$redis_n" > "$r/redis-set-$size.csv"
    redis_set "$aof_port" "$size" 1 $((redis_n / 4)) > "$r/redis-aof-$size.csv"
done
"$work/rawtcp" stream 127.0.0.1 "$tcp_port" $((1 << 20)) "$bulk" > "$r/tcp-stream.json"
"$work/localmsync" "$work/msync.bin" "$bulk" $((1 << 20)) bulk > "$r/msync-bulk.json"
for chunk in $((1 << 20)) $((4 << 20)); do bench bulk --total "$bulk" --chunk "$chunk" > "$r/pmu-bulk-$chunk.json"; done
"$bin/pmu-bench" bulk --total "$bulk" --chunk $((4 << 20)) --server "$(cat "$work/ready-populate")" --secret-file "$work/pmu-populate/admin.secret" > "$r/pmu-bulk-populate.json"
redis_set "$redis_port" $((1 << 20)) 1 $((bulk >> 20)) > "$r/redis-set-1m.csv"
for clients in 1 4 16 64; do
    bench concurrency --clients "$clients" --seconds "$secs" > "$r/pmu-conc-$clients.json"
    redis_set "$aof_port" 4096 "$clients" $((redis_n / 2)) > "$r/redis-aof-conc-$clients.csv"
done
# Issue 12: mirrored 4 KiB writes against acknowledged-only, durable and raw TCP; 1/16/64 clients
# against Redis appendfsync always; takeover of a 64 MiB mirror log: scripts/bench-pair.sh's own
# servers and baselines, measured in this run (its table is printed here too).
PMU_BIN_DIR="$bin" bash scripts/bench-pair.sh $((quick == 1 ? 2000 : 5000)) "$secs" >&2
cp bench-out/pair.json "$r/pair.json"
# Issue 6: erasure code per core, and the same large checkpoint on one server vs striped over a
# local cluster of 5 (k=4 m=1) and 6 (k=4 m=2) servers, read back whole and with one server left out.
for km in "4 1" "4 2" "8 3"; do
    set -- $km
    "$bin/pmu-bench" erasure --k "$1" --m "$2" --total $((bulk / 2)) > "$r/erasure-$1-$2.json"
done
bench checkpoint --total "$bulk" > "$r/pmu-checkpoint-single.json"
for layout in "5 4 1" "6 4 2"; do
    set -- $layout
    servers=()
    for i in $(seq 0 $(($1 - 1))); do
        # --cluster-map: the servers form checkpoints for the forming bench (issue 14); read lazily.
        "$bin/pmu-server" --data-dir "$work/c$1-$i" --listen 127.0.0.1:0 --ready-file "$work/c$1-$i.ready" --log-level warning \
            --cluster-map "$work/map-$1.json" --max-forming-bytes "$bulk" 2>>"$work/cluster.log" &
        pids+=($!)
    done
    for i in $(seq 0 $(($1 - 1))); do
        for _ in $(seq 100); do [[ -s $work/c$1-$i.ready ]] && break; sleep 0.1; done
        servers+=("{\"name\": \"c$i\", \"address\": \"$(cat "$work/c$1-$i.ready")\", \"secretFile\": \"c$1-$i/admin.secret\"}")
    done
    (IFS=,; echo "{\"servers\": [${servers[*]}]}") > "$work/map-$1.json"
    "$bin/pmu-bench" striped --map "$work/map-$1.json" --k "$2" --m "$3" --total "$bulk" --exclude c1 > "$r/pmu-striped-$2-$3.json"
    # Issue 14: formed in the primary vs on server c0 (bytes the primary wrote, its CPU, time).
    "$bin/pmu-bench" forming --map "$work/map-$1.json" --k "$2" --m "$3" --total "$bulk" --forming-server c0 > "$r/pmu-forming-$2-$3.json"
done

# Issue 11: live snapshots of 64 MiB and 1 GiB arenas (256 MiB with --quick), against Redis BGSAVE's
# fork of a dataset of the same size (INFO stats latest_fork_usec, the median of 3 saves). The
# snapshot bench runs against the --populate server, like the bulk rows that name it.
fork_port=$(free_port); mkdir -p "$work/fork"
redis-server --port "$fork_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/fork" --enable-debug-command yes --daemonize no >/dev/null &
pids+=($!)
sleep 0.5
redis_fork() {  # bytes -> {"bytes": N, "fork_usec": [three saves]}
    redis-cli -p "$fork_port" flushall >/dev/null
    redis-cli -p "$fork_port" debug populate $(($1 / 4096)) key 4096 >/dev/null
    local forks=()
    for _ in 1 2 3; do
        redis-cli -p "$fork_port" bgsave >/dev/null
        sleep 0.2
        while redis-cli -p "$fork_port" info persistence | grep -q 'rdb_bgsave_in_progress:1'; do sleep 0.1; done
        forks+=("$(redis-cli -p "$fork_port" info stats | tr -d '\r' | awk -F: '/^latest_fork_usec/ {print $2}')")
    done
    (IFS=,; echo "{\"bytes\": $1, \"fork_usec\": [${forks[*]}]}")
    redis-cli -p "$fork_port" flushall >/dev/null
}
if [[ $quick -eq 1 ]]; then snapshot_mib="64 256"; else snapshot_mib="64 1024"; fi
for mib in $snapshot_mib; do
    redis_fork $((mib << 20)) > "$r/redis-fork-$mib.json"
    "$bin/pmu-bench" snapshot --arena-mib "$mib" --server "$(cat "$work/ready-populate")" --secret-file "$work/pmu-populate/admin.secret" > "$r/pmu-snapshot-$mib.json"
done

rss_before=$(rss_kib)
bench regions --count "$regions" > "$r/pmu-regions.json"
rss_after=$(rss_kib)
echo "{\"rss_before_kib\": $rss_before, \"rss_after_kib\": $rss_after, \"regions\": $regions}" > "$r/pmu-rss.json"

python3 Benchmarks/report.py "$r" "$out" --quick "$quick"
