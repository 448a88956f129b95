#!/usr/bin/env bash
# Replica copy throughput (issue 13, the shared-nothing replica) against its baselines, in one run
# on 127.0.0.1, no root:
#   raw TCP stream: SIZE bytes in 4 MiB writes over one loopback connection (Benchmarks/baselines/rawtcp.c);
#   local copy + msync: SIZE bytes memcpy'd into a preallocated mapping on the same disk, then one
#       msync (Benchmarks/baselines/localmsync.c bulk) - what the copy's own write costs;
#   replica full copy: a failover pair (primary + monitor with --replica-from, real etcd) holding one
#       region of SIZE random bytes; the monitor is killed (kill -9) and restarted on its directory, and
#       its first pass copies the region (REPLICA_CATALOG, REPLICA_READ in 4 MiB reads, 4 in flight,
#       write into the replica's mapping, msync): the pass's bytes over its wall time, from the
#       monitor's pair status (replica.lastFullCopy).
# Data directories on disk under /var/tmp.
# Usage: scripts/bench-replica.sh [SIZE_MIB [ROUNDS]]   (default 512 MiB, 3 rounds; env PMU_BIN_DIR:
# binaries to use, else a release build). Prints a table and writes bench-out/replica.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
size_mib=${1:-512}
rounds=${2:-3}
size=$((size_mib << 20))
[[ -x /usr/bin/etcd ]] || { echo "needs etcd (Debian etcd-server): bash scripts/install-deps.sh" >&2; exit 1; }
if [[ -z ${PMU_BIN_DIR:-} ]]; then
    for product in pmu-server pmuctl; do swift build -c release --product "$product" >/dev/null; done
fi
bin=${PMU_BIN_DIR:-$(swift build -c release --show-bin-path)}
work=$(mktemp -d /var/tmp/pmu-bench-replica.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
gcc -O2 -o "$work/rawtcp" Benchmarks/baselines/rawtcp.c
gcc -O2 -o "$work/localmsync" Benchmarks/baselines/localmsync.c
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
umask 077
printf 'admin:bench-admin-secret-0123456789\npair:bench-pair-secret-0123456789\n' > "$work/secrets"
printf 'bench-admin-secret-0123456789\n' > "$work/admin.secret"
printf 'bench-pair-secret-0123456789\n' > "$work/pair.secret"

etcd_port=$(free_port); etcd_peer=$(free_port)
/usr/bin/etcd --name bench --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" --initial-cluster "bench=http://127.0.0.1:$etcd_peer" \
    --heartbeat-interval 50 --election-timeout 500 --log-level error >"$work/etcd.log" 2>&1 &
pids+=($!)
service=$(free_port); monitor_port=$(free_port); primary_hb=$(free_port); monitor_hb=$(free_port)
common=(--secrets "$work/secrets" --heartbeat-interval 100 --heartbeat-misses 3 --heartbeat-secret-file "$work/pair.secret"
        --etcd "http://127.0.0.1:$etcd_port" --etcd-prefix /bench --lease-ttl 2 --lease-margin 500 --log-level notice)
for _ in $(seq 100); do curl -s -X POST -d '{}' "http://127.0.0.1:$etcd_port/v3/maintenance/status" >/dev/null && break; sleep 0.1; done

monitor_pid=
start_monitor() {  # the fence never succeeds: this bench does not fail over
    rm -f "$work/monitor.ready"
    "$bin/pmu-server" --role monitor --member-id mon --data-dir "$work/monitor" --listen "127.0.0.1:$monitor_port" --ready-file "$work/monitor.ready" \
        --heartbeat-listen "127.0.0.1:$monitor_hb" --peer-heartbeat "127.0.0.1:$primary_hb" --mirror-client pair \
        --replica-from "127.0.0.1:$service" --partner-portion "$work/replica" --fence-command 'exit 1' --takeover-listen "127.0.0.1:$service" \
        "${common[@]}" 2>>"$work/monitor.log" &
    monitor_pid=$!
    pids+=($monitor_pid)
    for _ in $(seq 600); do [[ -s $work/monitor.ready ]] && return; sleep 0.05; done
    echo "monitor did not start:" >&2; cat "$work/monitor.log" >&2; exit 1
}
start_monitor
"$bin/pmu-server" --role primary --member-id pri --data-dir "$work/primary" --listen "127.0.0.1:$service" --ready-file "$work/primary.ready" \
    --heartbeat-listen "127.0.0.1:$primary_hb" --peer-heartbeat "127.0.0.1:$monitor_hb" \
    --partner "127.0.0.1:$monitor_port" --partner-client pair --partner-secret-file "$work/pair.secret" "${common[@]}" 2>>"$work/primary.log" &
pids+=($!)
for _ in $(seq 600); do [[ -s $work/primary.ready ]] && break; sleep 0.05; done
[[ -s $work/primary.ready ]] || { echo "primary did not start:" >&2; cat "$work/primary.log" >&2; exit 1; }

ctl() { "$bin/pmuctl" --server "$1" --secret-file "$work/admin.secret" "${@:2}"; }
# Writes are refused until the primary mirrors to the monitor: retry the first one (bounded).
head -c "$size" /dev/urandom > "$work/payload"
for attempt in $(seq 50); do ctl "127.0.0.1:$service" region create bulk --size "${size_mib}MiB" >/dev/null 2>&1 && break; sleep 0.2; done
for attempt in $(seq 50); do ctl "127.0.0.1:$service" write bulk --file "$work/payload" >/dev/null 2>&1 && break; sleep 0.2; done
ctl "127.0.0.1:$service" persist bulk >/dev/null

full_copy() {  # prints the monitor's last full copy once it covers the region (bounded: 120 s)
    for _ in $(seq 1200); do
        if copy=$(ctl "127.0.0.1:$monitor_port" pair status --json 2>/dev/null | python3 -c '
import json, sys
status = json.load(sys.stdin)
copy = (status.get("replica") or {}).get("lastFullCopy")
if not copy or copy["bytesCopied"] < int(sys.argv[1]) or copy["atMilliseconds"] <= int(sys.argv[2]): sys.exit(1)
print(json.dumps(copy))' "$size" "$1"); then echo "$copy"; return; fi
        sleep 0.1
    done
    echo "no full copy within 120 s" >&2; tail -20 "$work/monitor.log" >&2; exit 1
}
copies=()
last=0
for round in $(seq "$rounds"); do
    kill -9 "$monitor_pid"; wait "$monitor_pid" 2>/dev/null || true
    start_monitor
    copy=$(full_copy "$last")
    last=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["atMilliseconds"])' "$copy")
    copies+=("$copy")
done
tcp_port=$(free_port); "$work/rawtcp" server "$tcp_port" & pids+=($!)
sleep 0.3
raw=$("$work/rawtcp" stream 127.0.0.1 "$tcp_port" $((4 << 20)) "$size")
local_copy=$("$work/localmsync" "$work/localmsync.file" "$size" $((4 << 20)) bulk)
rm -f "$work/localmsync.file"

mkdir -p bench-out
python3 - "$size" "$raw" "$local_copy" "${copies[@]}" <<'EOF'
import json, statistics, sys
size, raw, local = int(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
copies = [json.loads(c) for c in sys.argv[4:]]
rates = [c["bytesCopied"] / (c["milliseconds"] / 1000) / 1e9 for c in copies]
median = statistics.median(rates)
print(f"replica copy of {size >> 20} MiB, {len(copies)} full copies after a kill -9 of the monitor")
print(f"  raw TCP stream (4 MiB writes)      {raw['gbps']:.3f} GB/s")
print(f"  local copy + msync (same disk)     {local['durable_gbps']:.3f} GB/s (memcpy alone {local['write_gbps']:.3f} GB/s)")
print(f"  replica full copy, median          {median:.3f} GB/s ({', '.join(f'{r:.3f}' for r in rates)}; "
      f"{', '.join(str(c['milliseconds']) + ' ms' for c in copies)})")
print(f"  replica / raw TCP                  {median / raw['gbps']:.2f}")
json.dump({"bytes": size, "raw_tcp_gbps": raw["gbps"], "local_copy_durable_gbps": local["durable_gbps"],
           "local_memcpy_gbps": local["write_gbps"], "replica_gbps": rates, "replica_median_gbps": median, "copies": copies},
          open("bench-out/replica.json", "w"), indent=1)
EOF
