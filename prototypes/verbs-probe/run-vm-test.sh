#!/usr/bin/env bash
# Build verbs-probe on the host, then run its server (background) and client (foreground) in one
# boot of PMU's soft-RoCE VM (scripts/rdma-vm/run-in-vm.sh in the project), and exit with the
# client's status.
#
# Usage: ./run-vm-test.sh [--extras]
#   --extras  also, in the same boot and before the probe: perftest ib_write_lat / ib_write_bw
#             for comparison, and `verbs-probe register` checks of which files can be registered
#             (tmpfs, /dev/shm, the 9p share, an ext4 loop device, a low RLIMIT_MEMLOCK without
#             CAP_IPC_LOCK). They are reported only; the exit status stays the client's.
#             The ext4 check needs the VM kernel's loop/ext4 modules: they are unpacked once
#             (apt-get download of the VM's linux-image package) into .vm-kmods/.
# Env: RDMA_VM (default the project's scripts/rdma-vm/run-in-vm.sh), PMU_VM_* (see its README),
#      PROBE_SIZE_MIB (region size, default 64), PROBE_TIMEOUT (VM timeout s, default 600),
#      PROBE_CONFIG (release or debug, default release: the figures are measured with it).
# Newer guest kernel (Debian 12's 6.12, which refuses to pin ext4 pages; image kept apart from
# PMU's cache):
#   PMU_VM_CACHE=$PWD/.vm-cache-612 PMU_VM_KERNEL_PKG=linux-image-6.12.100+deb12-amd64 \
#       ./run-vm-test.sh --extras
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
config=${PROBE_CONFIG:-release}
probe=$here/.build/$config/verbs-probe
port=7471

# ---------------------------------------------------------------------------------------------
# Inside the VM.
in_vm() {
    local extras=$1 ip=${PMU_RDMA_IP:-10.11.12.1} dev=${PMU_RDMA_DEV:-rxe0} gid=${PMU_RDMA_GID_INDEX:-1}
    local dir
    dir=$(mktemp -d /tmp/verbs-proto.XXXXXX)   # guest tmpfs: registered files must be here
    echo "=== kernel $(uname -r); $(ibv_devices | awk 'NR>2 {print $1}' | tr '\n' ' ')"
    if [[ $extras == 1 ]]; then
        extras_in_vm "$dir" "$dev" "$gid" "$ip"
    fi

    echo "=== verbs-probe server + client (region ${PROBE_SIZE_MIB:-64} MiB on $(stat -f -c %T "$dir"))"
    local t0=$SECONDS srv rc_c=0 rc_s=0
    timeout 300 "$probe" server --file "$dir/region" --size-mib "${PROBE_SIZE_MIB:-64}" --ip "$ip" \
        --port "$port" --ready-file "$dir/ready" >"$dir/server.log" 2>&1 &
    srv=$!
    for _ in $(seq 600); do   # up to 60 s for the server to map, register and listen
        [[ -e $dir/ready ]] && break
        kill -0 "$srv" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -e $dir/ready ]]; then
        timeout 300 "$probe" client --ip "$ip" --port "$port" || rc_c=$?
    else
        echo "server did not come up"
        rc_c=125
    fi
    wait "$srv" || rc_s=$?
    cat "$dir/server.log"
    echo "=== client exit $rc_c, server exit $rc_s ($((SECONDS - t0)) s)"
    return "$rc_c"
}

extras_in_vm() {
    local dir=$1 dev=$2 gid=$3 ip=$4
    echo "=== perftest for comparison"
    perftest_pair ib_write_lat -d "$dev" -x "$gid" -s 8 -n 1000 -F
    perftest_pair ib_write_bw -d "$dev" -x "$gid" -s 65536 -D 2 -F

    echo "=== which files ibv_reg_mr accepts (4 MiB, MAP_SHARED, LOCAL_WRITE|REMOTE_WRITE|REMOTE_READ)"
    register_check "tmpfs /tmp" "$probe" register --file "$dir/reg-tmpfs"
    register_check "tmpfs /dev/shm" "$probe" register --file /dev/shm/verbs-proto-reg
    register_check "9p share" "$probe" register --file "$here/.vm-9p-reg"
    rm -f "$here/.vm-9p-reg" /dev/shm/verbs-proto-reg
    # Root has CAP_IPC_LOCK, which bypasses RLIMIT_MEMLOCK: drop it to see the limit bite.
    register_check "RLIMIT_MEMLOCK 64 KiB, no CAP_IPC_LOCK" \
        setpriv --inh-caps=-ipc_lock --bounding-set=-ipc_lock -- \
        bash -c "ulimit -l 64 && exec $probe register --file $dir/reg-memlock"
    register_check "RLIMIT_MEMLOCK 64 KiB, as root (CAP_IPC_LOCK)" \
        bash -c "ulimit -l 64 && exec $probe register --file $dir/reg-memlock2"
    ext4_check "$dir"
}

register_check() {
    local name=$1 rc=0; shift
    echo "--- $name"
    "$@" 2>&1 || rc=$?
    (( rc == 0 )) || echo "(exit $rc)"
}

ext4_check() {
    local dir=$1 kdir=$here/.vm-kmods/linux-image-$(uname -r) m
    local kmods=$kdir/lib/modules/$(uname -r)
    echo "--- ext4 on a loop device"
    if [[ ! -f $kdir/ext4-loop.order ]]; then
        echo "(skipped: no modules for $(uname -r) under .vm-kmods; run with --extras on the host to fetch them)"
        return 0
    fi
    for m in $(cat "$kdir/ext4-loop.order"); do
        insmod "$kmods/$m" 2>/dev/null || true
    done
    truncate -s 64M "$dir/ext4.img"
    mkfs.ext4 -q -F "$dir/ext4.img"
    mkdir -p "$dir/ext4"
    if ! mount -o loop "$dir/ext4.img" "$dir/ext4"; then
        echo "(skipped: cannot mount an ext4 loop device; lsmod: $(cut -d' ' -f1 /proc/modules | tr '\n' ' '))"
        return 0
    fi
    register_check "ext4 (loop) $(findmnt -n -o FSTYPE,SOURCE "$dir/ext4")" \
        "$probe" register --file "$dir/ext4/reg"
    umount "$dir/ext4"
}

perftest_pair() {
    local log_s=/tmp/perftest-server.log log_c=/tmp/perftest-client.log srv rc_c=0 rc_s=0
    timeout 60 "$@" >"$log_s" 2>&1 &
    srv=$!
    for _ in $(seq 100); do
        ss -Hltn "sport = :18515" | grep -q . && break
        kill -0 "$srv" 2>/dev/null || break
        sleep 0.1
    done
    timeout 60 "$@" "$PMU_RDMA_IP" >"$log_c" 2>&1 || rc_c=$?
    wait "$srv" || rc_s=$?
    echo "--- $* (client exit $rc_c, server exit $rc_s)"
    if (( rc_c == 0 && rc_s == 0 )); then grep -A1 '#bytes' "$log_c"; else cat "$log_c" "$log_s"; fi
}

if [[ ${1:-} == --in-vm ]]; then
    in_vm "${2:-0}"
    exit
fi

# ---------------------------------------------------------------------------------------------
# On the host.

# The VM kernel's loop and ext4 modules (Debian builds them as modules; PMU's VM image does not
# carry them): unpacked once from the same linux-image package, with their load order.
fetch_kmods() {
    local cache=${PMU_VM_CACHE:-$HOME/.cache/pmu-rdma-vm} kpkg kver dl dir mver m ko
    [[ -f $cache/stamp ]] || "$(dirname "$rdma_vm")/build-image.sh"
    read -r kpkg kver _ <"$cache/stamp"
    dir=$here/.vm-kmods/$kpkg
    [[ -f $dir/ext4-loop.order && $(cat "$dir/version" 2>/dev/null) == "$kver" ]] && return 0
    echo "run-vm-test: fetching $kpkg=$kver for its loop/ext4 modules" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    dl=$(mktemp -d)
    chmod 777 "$dl"
    (cd "$dl" && apt-get download -qq "$kpkg=$kver") >&2
    dpkg -x "$dl"/*.deb "$dir"
    rm -rf "$dl"
    mver=$(ls "$dir/lib/modules")
    depmod -b "$dir" "$mver"
    # insmod order (dependencies first), paths relative to the module directory.
    for m in loop ext4 crc32c_generic; do
        modprobe -d "$dir" -S "$mver" --show-depends "$m" 2>/dev/null
    done | awk '$1 == "insmod" {print $2}' | awk '!seen[$0]++' \
        | sed "s|^$dir/lib/modules/$mver/||" >"$dir/ext4-loop.order"
    # Keep only what the check loads (the package is ~400 MB unpacked).
    find "$dir/lib/modules/$mver/kernel" -name '*.ko*' | while read -r ko; do
        grep -qxF "${ko#"$dir/lib/modules/$mver/"}" "$dir/ext4-loop.order" || rm -f "$ko"
    done
    rm -rf "$dir/boot" "$dir/usr"
    echo "$kver" >"$dir/version"
    cat "$dir/ext4-loop.order" >&2
}
extras=0
case ${1:-} in
    --extras) extras=1 ;;
    "") ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac

cd "$here"
echo "run-vm-test: swift build -c $config" >&2
swift build -c "$config" --product verbs-probe 2>&1 | grep -E 'error|warning: |Compiling|Build' >&2 || true
[[ -x $probe ]] || { echo "run-vm-test: build failed" >&2; exit 1; }

rdma_vm=${RDMA_VM:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/scripts/rdma-vm/run-in-vm.sh}
if (( extras )); then
    fetch_kmods || echo "run-vm-test: could not fetch the VM kernel's modules; the ext4 check will be skipped" >&2
fi
t0=$(date +%s)
rc=0
"$rdma_vm" --timeout "${PROBE_TIMEOUT:-600}" --share "$here" -- "$here/run-vm-test.sh" --in-vm "$extras" || rc=$?
echo "run-vm-test: exit $rc after $(( $(date +%s) - t0 )) s (boot + run)" >&2
exit "$rc"
