#!/usr/bin/env bash
# PMU over RDMA verbs vs perftest (ib_write_lat / ib_write_bw) vs PMU over TCP, all in one boot of
# the soft-RoCE VM (qemu TCG: emulated, so the ratios count, not the absolute figures).
#
# Usage: scripts/bench-rdma.sh            build release binaries (pmu-server, pmu-bench), run in the VM
#        scripts/bench-rdma.sh --in-vm    (internal)
# Data directories on an ext4 virtio disk (made here with mkfs.ext4): a durable write over verbs
# then pays the shadow's copy-out + fdatasync, over TCP msync, both to the same emulated disk.
# PMU runs: rdma with the default polling (adaptive), the same with pmu-bench's tasks on the
# default (pool) executor instead of the client's completion thread (PMUClient.taskExecutor;
# small writes only: bulk always runs on the pool),
# rdma with --rdma-poll busy (server and client, PMU_RDMA_POLL), tcp. A run is
# TRANSPORT:POLL[:pool].
# Env:   PMU_BENCH_CONFIG (release|debug, default release), PMU_BENCH_SMALL_COUNT (default 2000),
#        PMU_BENCH_BULK_MIB (default 256), PMU_RDMA_TIMEOUT (default 900),
#        PMU_BENCH_RUNS (default "rdma:adaptive rdma:adaptive:pool rdma:busy tcp:-").
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project=$(cd "$here/.." && pwd)
config=${PMU_BENCH_CONFIG:-release}
bin=$project/.build/$config

in_vm() {
    local ip=${PMU_RDMA_IP:-10.11.12.1} dev=${PMU_RDMA_DEV:-rxe0} gid=${PMU_RDMA_GID_INDEX:-1}
    local count=${PMU_BENCH_SMALL_COUNT:-2000} bulk=$(( ${PMU_BENCH_BULK_MIB:-256} << 20 ))
    ulimit -l unlimited
    echo "=== kernel $(uname -r), $(nproc) vCPUs, config $config"
    echo "=== ib_write_lat -s 64 -n $count"
    perftest ib_write_lat -d "$dev" -x "$gid" -s 64 -n "$count" -F
    echo "=== ib_write_bw -s 1048576 -n 256"
    perftest ib_write_bw -d "$dev" -x "$gid" -s 1048576 -n 256 -F
    mkdir -p /tmp/pmu-disk
    mount -t ext4 /dev/vda /tmp/pmu-disk
    echo "=== data directories on $(grep ' /tmp/pmu-disk ' /proc/mounts)"
    for run in ${PMU_BENCH_RUNS:-rdma:adaptive rdma:adaptive:pool rdma:busy tcp:-}; do
        local transport=${run%%:*} poll=${run#*:} executor=() where=client dir
        if [[ $poll == *:pool ]]; then poll=${poll%:pool}; executor=(--pool-executor); where=pool; fi
        dir=$(mktemp -d /tmp/pmu-disk/pmu-bench.XXXXXX)
        if [[ $poll != - ]]; then export PMU_RDMA_POLL=$poll; else unset PMU_RDMA_POLL; fi
        "$bin/pmu-server" --transport "$transport" --data-dir "$dir/data" --listen "$ip:0" --ready-file "$dir/ready" \
            --log-level warning >"$dir/server.log" 2>&1 &
        local srv=$!
        for _ in $(seq 300); do [[ -s $dir/ready ]] && break; sleep 0.1; done
        local args=(--server "$(cat "$dir/ready")" --secret-file "$dir/data/admin.secret" --transport "$transport")
        echo "=== pmu $transport (polling ${PMU_RDMA_POLL:-n/a}, executor $where) small: 64 B acknowledged writes, $count"
        "$bin/pmu-bench" small --size 64 --count "$count" "${args[@]}" "${executor[@]}"
        echo "=== pmu $transport small durable: 64 B write + persist, $count"
        "$bin/pmu-bench" small --size 64 --count "$count" --persist "${args[@]}" "${executor[@]}"
        echo "=== pmu $transport bulk: $((bulk >> 20)) MiB in 1 MiB writes (8 in flight), persist, read back"
        "$bin/pmu-bench" bulk --total "$bulk" --chunk 1048576 "${args[@]}"
        kill "$srv"; wait "$srv" || true
        rm -rf "$dir"
    done
}

# perftest pair on the guest's address; prints the client's result table.
perftest() {
    local srv
    timeout 120 "$@" >/tmp/perftest-server.log 2>&1 &
    srv=$!
    for _ in $(seq 100); do ss -Hltn "sport = :18515" | grep -q . && break; sleep 0.1; done
    timeout 120 "$@" "${PMU_RDMA_IP:-10.11.12.1}" >/tmp/perftest-client.log 2>&1 || true
    wait "$srv" || true
    grep -A1 '#bytes' /tmp/perftest-client.log || cat /tmp/perftest-client.log
}

if [[ ${1:-} == --in-vm ]]; then in_vm; exit; fi
cd "$project"
if [[ $config == release ]]; then swift build -c release --product pmu-server && swift build -c release --product pmu-bench; fi
image=$project/.build/rdma-bench-ext4.img
rm -f "$image"
truncate -s 2G "$image"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$image"
rc=0
"$here/rdma-vm/run-in-vm.sh" --timeout "${PMU_RDMA_TIMEOUT:-900}" --share "$project" --disk "$image" -- "$here/bench-rdma.sh" --in-vm || rc=$?
rm -f "$image"
exit "$rc"
