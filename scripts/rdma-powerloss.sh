#!/usr/bin/env bash
# Power loss over RDMA verbs with the data directory on ext4: PERSIST's bytes are on the disk image.
#
# Boot 1 (soft-RoCE VM, data directory on a virtio disk formatted ext4 on the host): pmu-server
# --transport rdma (region memory: shmem shadows), pmuctl creates a region, writes 1 MiB of random
# bytes over verbs (one-sided WRITEs), persists them; once PERSIST has returned, the host kills
# qemu with SIGKILL (scripts/rdma-vm/run-in-vm.sh --kill-when): no unmount, no sync, no shutdown.
# Boot 2 (same disk image): the kernel mounts it (journal replay), pmu-server recovers the data
# directory, pmuctl reads the range back over verbs: it must equal the bytes written.
#
# Usage: scripts/rdma-powerloss.sh          (host; binaries from .build/debug, built by test-rdma.sh)
#        scripts/rdma-powerloss.sh --in-vm write|verify   (internal)
# Env:   PMU_RDMA_TIMEOUT seconds per boot (default 300). Exit 0 only if the bytes survived.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project=$(cd "$here/.." && pwd)
bin=${PMU_BIN_DIR:-$project/.build/debug}
work=$project/.build/rdma-powerloss   # on the project share: the guest writes the marker here

in_vm() {
    local phase=$1 mnt=/tmp/pmu-disk ip=${PMU_RDMA_IP:-10.11.12.1}
    mkdir -p "$mnt"
    mount -t ext4 /dev/vda "$mnt"
    grep " $mnt " /proc/mounts
    [[ $phase == write ]] && mkdir "$mnt/data"
    "$bin/pmu-server" --transport rdma --data-dir "$mnt/data" --listen "$ip:0" --ready-file /tmp/ready \
        >"$work/server-$phase.log" 2>&1 &
    for _ in $(seq 600); do [[ -s /tmp/ready ]] && break; sleep 0.1; done
    [[ -s /tmp/ready ]] || { echo "pmu-server did not start:"; cat "$work/server-$phase.log"; return 1; }
    grep -q "region memory: shmem shadows" "$work/server-$phase.log" \
        || { echo "pmu-server does not use shadows on ext4:"; cat "$work/server-$phase.log"; return 1; }
    local ctl=("$bin/pmuctl" --transport rdma --server "$(cat /tmp/ready)" --secret-file "$mnt/data/admin.secret")
    if [[ $phase == write ]]; then
        "${ctl[@]}" region create powerloss --size 4MiB
        "${ctl[@]}" write powerloss --offset 4097 --file "$work/expected.bin"
        "${ctl[@]}" persist powerloss --offset 4097 --length 1MiB
        # PERSIST has returned: now the power goes (the host kills qemu when it sees this file).
        touch "$work/persisted"
        sleep 600
        echo "still running: the host did not kill the VM"
        return 1
    fi
    "${ctl[@]}" read powerloss --offset 4097 --length 1MiB --out /tmp/got.bin
    cmp /tmp/got.bin "$work/expected.bin"
    echo "power loss: the 1 MiB persisted over verbs is on the ext4 disk image after the kill"
}

if [[ ${1:-} == --in-vm ]]; then in_vm "$2"; exit; fi

rm -rf "$work"
mkdir -p "$work"
head -c $((1 << 20)) /dev/urandom >"$work/expected.bin"
# A fresh ext4 image, sparse; inode tables and journal initialised here, not by the emulated guest.
truncate -s 256M "$work/disk.img"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$work/disk.img"
vm=("$here/rdma-vm/run-in-vm.sh" --timeout "${PMU_RDMA_TIMEOUT:-300}" --share "$project" --disk "$work/disk.img")
"${vm[@]}" --kill-when "$work/persisted" -- "$here/rdma-powerloss.sh" --in-vm write
[[ -e $work/persisted ]] || { echo "rdma-powerloss: boot 1 ended before PERSIST returned" >&2; cat "$work/server-write.log" >&2; exit 1; }
rc=0
"${vm[@]}" -- "$here/rdma-powerloss.sh" --in-vm verify || rc=$?
(( rc == 0 )) || { echo "rdma-powerloss: FAILED (exit $rc)"; cat "$work/server-verify.log" 2>/dev/null; }
rm -f "$work/disk.img"
exit "$rc"
