#!/usr/bin/env bash
# shellcheck disable=SC2317  # the step functions are called indirectly, through step()
# RDMA tests of PMU, run against soft-RoCE (rdma_rxe) in a throw-away qemu VM, because the host
# kernel has no RDMA. See scripts/rdma-vm/README.md.
#
# Usage: scripts/test-rdma.sh            build PMU and its tests on the host (debug; incremental),
#                                        build the VM image (cached) and run everything in one boot
#        scripts/test-rdma.sh --in-vm    (internal) the part that runs inside the VM
#
# Steps in the VM: ibv_devices lists rxe0; ibv_devinfo shows rxe0's port PORT_ACTIVE;
# ib_write_lat and ib_write_bw against 10.11.12.1 (server in the background, client in the
# foreground, same guest, RoCE v2 GID index 1); then the Swift verbs suite (PMU_RDMA_TESTS);
# then, with rxe0's link taken down, pmu-server's start-up errors (rdma refuses, auto falls back).
# The suite's scratch (server data directories) is on a virtio disk formatted ext4 (made on the
# host, /dev/vda in the guest), so region memory is shmem shadows copied out on PERSIST.
# After that boot, on the host: scripts/rdma-powerloss.sh (two more boots: PERSIST over verbs,
# SIGKILL of qemu, boot again, the bytes are on the ext4 image).
# Exit 0 only if every step passed. Ends with a line "rdma: N passed, N failed".
#
# Env: PMU_RDMA_TESTS   command run in the VM, from the project dir, as the Swift verbs suite
#                       (default scripts/rdma-vm-suite.sh: the integration tests over verbs;
#                       PMU_RDMA_FILTER narrows them); "none" skips it.
#      PMU_RDMA_SKIP_BUILD=1  use the binaries already in .build/debug.
#      PMU_RDMA_TIMEOUT seconds for the whole VM run (default 600).
#      PMU_RDMA_DATA_FS  ext4 (default: the suite's data directories on an ext4 virtio disk) or
#                        tmpfs (the guest's /tmp: file mappings registered directly, no shadows).
#      PMU_RDMA_POWERLOSS=0  skip the power-loss boots (scripts/rdma-powerloss.sh, ~1-2 min).
#      PMU_VM_*         see scripts/rdma-vm/run-in-vm.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project=$(cd "$here/.." && pwd)

# ---------------------------------------------------------------------------------------------
# The Swift verbs test suite, hooked in: scripts/rdma-vm-suite.sh runs the host-built test binary
# inside the VM, from the project directory (shared read-write at the same path), as root, with
# `ulimit -l unlimited` and PMU_RDMA_DEV=rxe0 PMU_RDMA_IP=10.11.12.1 PMU_RDMA_GID_INDEX=1 in its
# environment, and PMU_TEST_TRANSPORT=rdma: real pmu-server processes with --transport rdma,
# clients over verbs. Server data directories are on the guest's ext4 disk (PMU_RDMA_DATA_FS).
PMU_RDMA_TESTS=${PMU_RDMA_TESTS:-scripts/rdma-vm-suite.sh}
run_swift_verbs_suite() {
    if [[ $PMU_RDMA_TESTS == none ]]; then
        echo "(Swift verbs suite skipped: PMU_RDMA_TESTS=none)"
        return 0
    fi
    (cd "$project" && bash -c "$PMU_RDMA_TESTS")
}
# ---------------------------------------------------------------------------------------------

passed=0
failed=0
step() {
    local name=$1; shift
    echo "=== $name"
    local t0=$SECONDS
    if "$@"; then
        passed=$((passed + 1)); echo "=== PASS $name ($((SECONDS - t0)) s)"
    else
        failed=$((failed + 1)); echo "=== FAIL $name ($((SECONDS - t0)) s)"
    fi
}

dev=${PMU_RDMA_DEV:-rxe0}
ip=${PMU_RDMA_IP:-10.11.12.1}
gid=${PMU_RDMA_GID_INDEX:-1}
port=18515   # perftest's out-of-band TCP port, on the guest's dummy0 address only

check_devices() {
    local out
    out=$(ibv_devices) || return 1
    echo "$out"
    grep -qw "$dev" <<<"$out"
}

check_devinfo() {
    local out
    out=$(ibv_devinfo -d "$dev") || return 1
    echo "$out"
    grep -q 'PORT_ACTIVE' <<<"$out"
}

# perftest pair: server in the background, client in the foreground, both bounded in time.
# Prints the client's result table; fails if either side fails.
perftest_pair() {
    local srv_log=/tmp/perftest-server.log srv rc_c=0 rc_s=0
    timeout 60 "$@" >"$srv_log" 2>&1 &
    srv=$!
    # Wait until the server listens for the client's out-of-band connection.
    for _ in $(seq 100); do
        ss -Hltn "sport = :$port" | grep -q . && break
        kill -0 "$srv" 2>/dev/null || break
        sleep 0.1
    done
    timeout 60 "$@" "$ip" >/tmp/perftest-client.log 2>&1 || rc_c=$?
    wait "$srv" || rc_s=$?
    # The result table (header line and the figures), or everything when something failed.
    if (( rc_c == 0 && rc_s == 0 )); then
        grep -A1 '#bytes' /tmp/perftest-client.log
    else
        echo "--- client (exit $rc_c):"; cat /tmp/perftest-client.log
        echo "--- server (exit $rc_s):"; cat "$srv_log"
    fi
    (( rc_c == 0 && rc_s == 0 ))
}

# Bad input: with the device's port down, `pmu-server --transport rdma` must refuse to start and
# say which port is in which state; `auto` must fall back to TCP and say why. Runs last (it takes
# the link down and back up).
check_port_down() {
    local dir out rc=0
    dir=$(mktemp -d /tmp/pmu-portdown.XXXXXX)
    ip link set dummy0 down
    for _ in $(seq 50); do ibv_devinfo -d "$dev" | grep -q PORT_ACTIVE || break; sleep 0.1; done
    out=$(timeout 60 "$project/.build/debug/pmu-server" --transport rdma --data-dir "$dir/a" --listen "$ip:0" 2>&1) && rc=1
    echo "$out" | tail -2
    grep -q "RDMA_ERROR" <<<"$out" && grep -q "$dev port 1" <<<"$out" || rc=1
    timeout 60 "$project/.build/debug/pmu-server" --transport auto --data-dir "$dir/b" --listen 127.0.0.1:0 \
        --ready-file "$dir/ready" >"$dir/auto.log" 2>&1 &
    local srv=$!
    for _ in $(seq 300); do [[ -s $dir/ready ]] && break; sleep 0.1; done
    kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null
    grep "transport:" "$dir/auto.log"
    grep -q "transport: tcp (no RDMA device with an active port" "$dir/auto.log" || rc=1
    ip link set dummy0 up
    return "$rc"
}

# `auto` on an address verbs cannot serve (loopback) with the data directory on ext4: verbs is
# ruled out by binding before the store opens, so TCP maps the region files directly instead of
# serving them from shmem shadows (which would lose unpersisted writes at a crash).
check_auto_loopback() {
    local dir rc=0 srv
    dir=$(mktemp -d "${PMU_RDMA_SCRATCH:-/tmp}/pmu-autolo.XXXXXX")
    timeout 60 "$project/.build/debug/pmu-server" --transport auto --data-dir "$dir/d" --listen 127.0.0.1:0 \
        --ready-file "$dir/ready" >"$dir/auto.log" 2>&1 &
    srv=$!
    for _ in $(seq 300); do [[ -s $dir/ready ]] && break; sleep 0.1; done
    kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null
    grep "transport:" "$dir/auto.log"
    grep -q "transport: tcp (an RDMA device is present, but: " "$dir/auto.log" || rc=1
    if grep -q "shmem shadow" "$dir/auto.log"; then echo "auto on loopback chose shmem shadows"; rc=1; fi
    rm -rf "$dir"
    return "$rc"
}

in_vm() {
    [[ ${PMU_IN_VM:-} == 1 ]] || { echo "--in-vm is for inside the VM (use run-in-vm.sh)" >&2; exit 2; }
    # -F: do not fail on the CPU-frequency check, meaningless in an emulated CPU.
    step "ibv_devices lists $dev" check_devices
    step "ibv_devinfo: $dev port active" check_devinfo
    step "ib_write_lat -n 200" perftest_pair ib_write_lat -d "$dev" -x "$gid" -n 200 -F
    step "ib_write_bw -D 2" perftest_pair ib_write_bw -d "$dev" -x "$gid" -D 2 -F
    if [[ -b /dev/vda ]]; then
        # The suite's scratch on ext4 (rdma-vm-suite.sh puts TMPDIR there).
        mkdir -p /tmp/pmu-ext4
        mount -t ext4 /dev/vda /tmp/pmu-ext4 && chmod 1777 /tmp/pmu-ext4
        export PMU_RDMA_SCRATCH=/tmp/pmu-ext4
        step "data directory disk is ext4" grep " /tmp/pmu-ext4 ext4 " /proc/mounts
    fi
    if [[ $PMU_RDMA_TESTS != none ]]; then
        step "Swift verbs suite" run_swift_verbs_suite
    else
        run_swift_verbs_suite
    fi
    step "auto on loopback: tcp on the region files, no shadows" check_auto_loopback
    step "port down: rdma refuses to start, auto falls back" check_port_down
    echo "rdma: $passed passed, $failed failed"
    (( failed == 0 ))
}

if [[ ${1:-} == --in-vm ]]; then
    in_vm
    exit
fi

# Host side: one boot for all steps (a boot costs ~10 s of emulation). run-in-vm.sh builds the
# VM image first (cached after the first time).
cd "$project"
if [[ ${PMU_RDMA_SKIP_BUILD:-0} != 1 ]]; then
    # The VM only runs what the host built (compiling under emulation would take far too long).
    swift build && swift build --build-tests
fi
export PMU_RDMA_TESTS
disk=()
if [[ ${PMU_RDMA_DATA_FS:-ext4} == ext4 ]]; then
    # Sparse; inode tables and journal initialised here rather than by the emulated guest.
    image=$project/.build/rdma-vm-ext4.img
    rm -f "$image"
    truncate -s 2G "$image"
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$image"
    disk=(--disk "$image")
fi
set +e
"$here/rdma-vm/run-in-vm.sh" --timeout "${PMU_RDMA_TIMEOUT:-600}" --share "$project" "${disk[@]}" -- \
    "$here/test-rdma.sh" --in-vm
rc=$?
[[ ${#disk[@]} == 0 ]] || rm -f "$image"
if [[ ${PMU_RDMA_POWERLOSS:-1} != 0 ]]; then
    echo "=== power loss over verbs on ext4 (scripts/rdma-powerloss.sh)"
    t0=$SECONDS
    if "$here/rdma-powerloss.sh"; then
        echo "=== PASS power loss ($((SECONDS - t0)) s)"
    else
        echo "=== FAIL power loss ($((SECONDS - t0)) s)"
        (( rc != 0 )) || rc=1
    fi
fi
set -e
if (( rc != 0 )); then
    echo "test-rdma: FAILED (exit $rc)" >&2
fi
exit "$rc"
