#!/usr/bin/env bash
# Run one command inside a throw-away qemu VM that has a soft-RoCE device (rxe0 on dummy0,
# 10.11.12.1/24, RoCE v2 GID index 1), and exit with that command's exit status.
#
# Usage: run-in-vm.sh [--timeout SECONDS] [--share HOSTDIR]... [--disk IMAGE] [--kill-when FILE]
#                     [--verbose] -- COMMAND [ARG]...
#
# In the guest the command runs as root, chrooted into the host's / (read-only, over 9p), in the
# same directory as the caller's cwd, with the caller's exported environment, `ulimit -l unlimited`,
# no stdin, and these extra variables: PMU_IN_VM=1 PMU_RDMA_DEV=rxe0 PMU_RDMA_IP=10.11.12.1
# PMU_RDMA_GID_INDEX=1. Its stdout and stderr come out on this script's stdout and stderr.
#   - Read-write: each --share HOSTDIR (default: the project directory), at its host path.
#     Everything else of the host is read-only.
#   - /tmp, /run and /dev/shm are fresh, empty, guest-local tmpfs (in guest RAM). Server data
#     directories and memory-registered region files MUST be there (e.g. mktemp -d /tmp/...),
#     not on a 9p share: 9p is slow and memory registered with ibv_reg_mr must be pinnable.
#     The host's /tmp is therefore not visible in the guest, except folders shared with --share.
#   - Background processes left by the command are killed when it exits (the VM powers off).
#   - --disk IMAGE: a raw disk image attached as the guest's /dev/vda (virtio-blk; ext4 and
#     virtio_blk are loaded), e.g. made on the host with mkfs.ext4. The command mounts it itself.
#   - --kill-when FILE: a power loss. Once FILE (on the host, e.g. inside a share the guest writes)
#     exists, qemu is killed with SIGKILL: what the guest had not written to the disk image is lost.
#     Exit 0 then (the status the command would have had is unknown and unwanted).
#
# Exit status: the command's; 124 if the VM ran out of time; 125 if the VM failed to boot or to
# set up rxe0 (the guest console log is printed then).
# Env: PMU_VM_TIMEOUT (seconds, default 300), PMU_VM_MEM (guest memory, default 2G),
#      PMU_VM_CPUS (default 2), PMU_VM_ACCEL (auto|kvm|tcg, default auto), PMU_VM_CACHE (image
#      cache, see build-image.sh), PMU_VM_VERBOSE=1 (print the guest console log afterwards),
#      PMU_VM_QUIET=1 (no progress lines on stderr).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project=$(cd "$here/../.." && pwd)

timeout_s=${PMU_VM_TIMEOUT:-300}
mem=${PMU_VM_MEM:-2G}
cpus=${PMU_VM_CPUS:-2}
accel=${PMU_VM_ACCEL:-auto}
verbose=${PMU_VM_VERBOSE:-0}
quiet=${PMU_VM_QUIET:-0}
shares=()
disk=
kill_when=

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}
say() { [[ $quiet == 1 ]] || echo "rdma-vm: $*" >&2; }
die() { echo "rdma-vm: ERROR: $*" >&2; exit 125; }

while (( $# )); do
    case $1 in
        --timeout) [[ $# -ge 2 ]] || usage; timeout_s=$2; shift 2 ;;
        --timeout=*) timeout_s=${1#*=}; shift ;;
        --share) [[ $# -ge 2 ]] || usage; shares+=("$2"); shift 2 ;;
        --share=*) shares+=("${1#*=}"); shift ;;
        --disk) [[ $# -ge 2 ]] || usage; disk=$2; shift 2 ;;
        --kill-when) [[ $# -ge 2 ]] || usage; kill_when=$2; shift 2 ;;
        --verbose|-v) verbose=1; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        *) break ;;
    esac
done
(( $# )) || usage
[[ $timeout_s =~ ^[0-9]+$ && $timeout_s -gt 0 ]] || die "--timeout wants a positive number of seconds"
(( ${#shares[@]} )) || shares=("$project")
[[ -z $disk || -f $disk ]] || die "--disk $disk is not a file"

# Normalise the shares; nested ones are mounted parent first (sorted by path).
norm=()
for s in "${shares[@]}"; do
    [[ -d $s ]] || die "share $s is not a directory"
    s=$(cd "$s" && pwd -P)
    [[ $s != / ]] || die "sharing / read-write is not supported (it is shared read-only anyway)"
    [[ $s != *$'\n'* ]] || die "share path with a newline: $s"
    [[ $s != /tmp && $s != /run && $s != /run/pmu-vm && $s != /run/pmu-vm/* ]] \
        || die "share $s: /tmp and /run are guest-local tmpfs in the VM; share a folder below or elsewhere"
    norm+=("$s")
done
mapfile -t shares < <(printf '%s\n' "${norm[@]}" | LC_ALL=C sort -u)

# The guest's /tmp and /run are fresh tmpfs: a cwd there is reachable only inside a share.
cwd=$(pwd -P)
case $cwd in
    /tmp|/tmp/*|/run|/run/*)
        reachable=0
        for s in "${shares[@]}"; do
            [[ $cwd == "$s" || $cwd == "$s"/* ]] && reachable=1
        done
        (( reachable )) || die "cwd $cwd is hidden in the VM (its /tmp and /run are fresh tmpfs); --share it or a folder above it"
        ;;
esac

# Image (fast no-op when cached).
"$here/build-image.sh"
cache=${PMU_VM_CACHE:-${HOME:-$(cd ~ && pwd)}/.cache/pmu-rdma-vm}
# shellcheck disable=SC1091
. "$cache/image.env"

# Acceleration. /dev/kvm may be a software nested-virtualization layer (module kvm_pvm, no vmx/svm
# in the CPU flags) under which a stock kernel hangs or hits "emulation failure"; use KVM only on
# real VT-x/AMD-V, else qemu's multi-threaded TCG.
if [[ $accel == auto ]]; then
    if [[ -w /dev/kvm && ! -e /sys/module/kvm_pvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
        accel=kvm
    else
        accel=tcg
    fi
fi
# shellcheck disable=SC2054  # commas belong to qemu's option syntax
case $accel in
    kvm) accel_args=(-accel kvm -cpu host) ;;
    tcg) accel_args=(-accel tcg,thread=multi -cpu max) ;;
    *) die "PMU_VM_ACCEL must be auto, kvm or tcg" ;;
esac

run=$(mktemp -d "${TMPDIR:-/tmp}/pmu-rdma-vm-run.XXXXXX")
ctl=$run/ctl
mkdir "$ctl"
relay_pids=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local p
    for p in "${relay_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$run"
}
trap cleanup EXIT

# Shares list for the guest's init: "TAG PATH" per line.
: >"$ctl/shares"
virtfs=(-virtfs "local,path=/,mount_tag=hostroot,readonly=on,security_model=none,multidevs=remap"
        -virtfs "local,path=$ctl,mount_tag=pmuctl,security_model=none")
i=0
for s in "${shares[@]}"; do
    echo "pmushare$i $s" >>"$ctl/shares"
    virtfs+=(-virtfs "local,path=$s,mount_tag=pmushare$i,security_model=none,multidevs=remap")
    i=$((i + 1))
done

# The command as a bash script: the caller's exported environment (less what is specific to
# this shell or points into the host's /tmp), the rdma settings, the cwd, the memlock limit.
{
    echo '# generated by run-in-vm.sh'
    for v in $(compgen -e); do
        case $v in PWD|OLDPWD|SHLVL|_|TMPDIR|BASH_ENV|ENV) continue ;; esac
        printf 'export %s=%q\n' "$v" "${!v}"
    done
    echo 'export PMU_IN_VM=1 PMU_RDMA_DEV=rxe0 PMU_RDMA_IP=10.11.12.1 PMU_RDMA_GID_INDEX=1'
    # rdma_rxe registers user memory by pinning it: lift the locked-memory limit.
    echo 'ulimit -l unlimited'
    printf 'cd -- %q || { echo "rdma-vm: cannot cd to %q in the VM" >&2; exit 125; }\n' "$cwd" "$cwd"
    printf '%q ' "$@"
    echo
} >"$ctl/cmd.sh"

# stdout/stderr of the command: virtio serial ports -> FIFOs -> relays to our stdout/stderr.
# (A chardev file opened on /dev/fd/1 would truncate, or write at its own offset into, a caller's
# redirected file; a FIFO keeps the caller's descriptors as they are.)
mkfifo "$run/out" "$run/err"
cat "$run/out" & relay_pids+=($!)
cat "$run/err" >&2 & relay_pids+=($!)

# -display none + -serial file: instead of -nographic: qemu then never touches the caller's
# terminal or stdin, and the guest console (kernel + init messages) goes to a log that is shown
# only when something fails (or with --verbose).
# shellcheck disable=SC2054  # commas belong to qemu's option syntax
qemu=(qemu-system-x86_64 -name pmu-rdma-vm "${accel_args[@]}" -smp "$cpus" -m "$mem"
      -nodefaults -display none -monitor none -no-reboot -nic none
      -serial "file:$run/console.log"
      -kernel "$VM_KERNEL" -initrd "$VM_INITRD"
      -append "console=ttyS0 panic=-1 loglevel=4 mitigations=off"
      "${virtfs[@]}"
      -device virtio-serial-pci,id=vser
      -chardev "file,id=pmuout,path=$run/out" -device "virtserialport,bus=vser.0,chardev=pmuout,name=pmu.stdout"
      -chardev "file,id=pmuerr,path=$run/err" -device "virtserialport,bus=vser.0,chardev=pmuerr,name=pmu.stderr"
      -pidfile "$run/qemu.pid")
# cache=writeback: the guest's flushes (fdatasync) become fdatasync of the image on the host; what
# qemu has written survives its SIGKILL in the host's page cache, what the guest had not is lost.
[[ -n $disk ]] && qemu+=(-drive "file=$disk,if=virtio,format=raw,cache=writeback")

say "booting ($accel, $cpus vCPUs, $mem, timeout ${timeout_s}s, rw: ${shares[*]}) to run: $*"
t0=$(date +%s.%N)
# In the background so that a TERM/INT sent to this script stops the VM at once (timeout passes
# the signal on to qemu); qemu must not read the caller's stdin (unused, and CI has none).
timeout --kill-after=10 "$timeout_s" "${qemu[@]}" </dev/null 2>"$run/qemu.err" &
qpid=$!
trap 'kill -TERM "$qpid" 2>/dev/null; wait "$qpid"; echo "rdma-vm: interrupted" >&2; exit 130' INT TERM
killed=0
if [[ -n $kill_when ]]; then
    # Poll for the marker while qemu runs; then SIGKILL qemu itself (not `timeout`, which would
    # pass on a catchable signal): the guest gets no chance to flush anything.
    while kill -0 "$qpid" 2>/dev/null; do
        if [[ -e $kill_when && -s $run/qemu.pid ]]; then
            kill -KILL "$(<"$run/qemu.pid")" 2>/dev/null && killed=1
            say "power loss: killed qemu (SIGKILL) once $kill_when appeared"
            break
        fi
        sleep 0.2
    done
fi
qrc=0
wait "$qpid" || qrc=$?
trap - INT TERM
t1=$(date +%s.%N)
elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')

# Let the relays drain; if qemu died before opening the FIFOs they are still blocked: end them.
for _ in $(seq 50); do
    alive=0
    for p in "${relay_pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 0.1
done
for p in "${relay_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
relay_pids=()

show_console() {
    echo "----- guest console ($run/console.log) -----" >&2
    if [[ ! -s $run/console.log ]]; then
        echo "(empty: the guest kernel had printed nothing yet)" >&2
    elif [[ $1 == all ]]; then
        cat "$run/console.log" >&2
    else
        tail -n 40 "$run/console.log" >&2
    fi
    echo "----- end of guest console -----" >&2
}
[[ $verbose == 1 ]] && show_console all

if (( killed )); then
    exit 0
fi
if [[ -f $ctl/status ]]; then
    rc=$(<"$ctl/status")
    say "command exited with $rc after ${elapsed}s in the VM"
    exit "$rc"
fi
if (( qrc == 124 || qrc == 137 )); then
    if [[ -f $ctl/stage ]]; then
        echo "rdma-vm: ERROR: timed out after ${timeout_s}s while the command was running (raise --timeout or PMU_VM_TIMEOUT)" >&2
    else
        echo "rdma-vm: ERROR: timed out after ${timeout_s}s before the VM was ready (boot or rxe setup hung)" >&2
        [[ $verbose == 1 ]] || show_console tail
    fi
    exit 124
fi
if [[ -f $ctl/setup-failed ]]; then
    echo "rdma-vm: ERROR: VM setup failed: $(<"$ctl/setup-failed")" >&2
else
    echo "rdma-vm: ERROR: the VM stopped without reporting a status (qemu exit $qrc after ${elapsed}s)" >&2
    [[ -s $run/qemu.err ]] && sed 's/^/qemu: /' "$run/qemu.err" >&2
fi
[[ $verbose == 1 ]] || show_console tail
exit 125
