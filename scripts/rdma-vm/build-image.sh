#!/usr/bin/env bash
# Build the kernel + initramfs of the throw-away soft-RoCE VM (see README.md beside this file).
#
# Why a VM at all: the host kernel of the project's machines has no RDMA (CONFIG_INFINIBAND unset),
# so rdma_rxe can only run in a guest with a stock Debian kernel.
#
# Usage: build-image.sh [--force]
#   Env: PMU_VM_CACHE       cache dir (default $HOME/.cache/pmu-rdma-vm)
#        PMU_VM_KERNEL_PKG  kernel package to use (default: what linux-image-amd64 depends on,
#                           which must be a linux-image-6.1.*-amd64 on Debian 12)
# Result: $PMU_VM_CACHE/image.env (VM_KVER, VM_KERNEL, VM_INITRD), the kernel and the initramfs.
# Idempotent: does nothing when an image for the same kernel package version and the same recipe
# (this file's hash) is already there. Nothing is downloaded except through apt.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${PMU_VM_CACHE:-${HOME:-$(cd ~ && pwd)}/.cache/pmu-rdma-vm}
force=0
[[ ${1:-} == --force ]] && force=1

log() { echo "rdma-vm/build: $*" >&2; }
die() { echo "rdma-vm/build: ERROR: $*" >&2; exit 1; }

# Host packages: qemu to run the guest; busybox-static, dash, cpio, kmod to make the initramfs;
# iproute2 for `rdma link add` (run from the host root inside the guest); rdma-core and the
# verbs/perftest/rdmacm tools and the rxe userspace provider for the smoke test and the suite.
# e2fsprogs: mkfs.ext4 for the data-directory disk images (run-in-vm.sh --disk).
packages=(qemu-system-x86 busybox-static dash cpio kmod iproute2 rdma-core ibverbs-providers
          ibverbs-utils perftest rdmacm-utils e2fsprogs)

apt_updated=0
apt_update_once() {
    if (( ! apt_updated )); then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        apt_updated=1
    fi
}

ensure_packages() {
    local missing=() p
    for p in "${packages[@]}"; do
        # one dpkg-query per package: it reports nothing at all for a package it never heard of
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] \
            || missing+=("$p")
    done
    (( ${#missing[@]} == 0 )) && return 0
    [[ $(id -u) == 0 ]] || die "missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
    log "installing ${missing[*]}"
    local inst=(apt-get install -y -qq --no-install-recommends "${missing[@]}")
    # Try with the current package lists first (no network round trip when they are fresh);
    # refresh them once if that fails (no lists yet, or stale versions).
    if ! DEBIAN_FRONTEND=noninteractive "${inst[@]}" >&2; then
        apt_update_once
        DEBIAN_FRONTEND=noninteractive "${inst[@]}" >&2
    fi
}

# Which kernel: the 6.1 one Debian 12's linux-image-amd64 points at (has rdma_rxe.ko uncompressed,
# known to work). Prints "PACKAGE VERSION", or nothing if apt does not know it.
resolve_kernel() {
    local pkg=${PMU_VM_KERNEL_PKG:-} ver
    if [[ -z $pkg ]]; then
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
              | awk '/Depends: linux-image-6\.1\.[^ ]*-amd64$/ {print $2; exit}')
    fi
    [[ -n $pkg ]] || return 0
    ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
    [[ -n $ver && $ver != "(none)" ]] || return 0
    echo "$pkg $ver"
}

ensure_packages

mkdir -p "$cache"
# One builder at a time (a test and a developer may start at once).
exec 9>"$cache/.lock"
flock 9

recipe=$(sha256sum "$here/build-image.sh" | cut -c1-16)
# Fast path (apt-cache takes seconds): same recipe, same requested kernel package, and apt's
# package lists not refreshed since the image was built, so the kernel cannot have changed.
if [[ $force == 0 && -f $cache/stamp && -f $cache/image.env && $cache/stamp -nt /var/lib/apt/lists ]]; then
    old=$(<"$cache/stamp")
    if [[ $old == *" recipe=$recipe" && ( -z ${PMU_VM_KERNEL_PKG:-} || $old == "$PMU_VM_KERNEL_PKG "* ) ]]; then
        # shellcheck disable=SC1091
        . "$cache/image.env"
        if [[ -f $VM_KERNEL && -f $VM_INITRD ]]; then
            log "image up to date ($old)"
            exit 0
        fi
    fi
fi
kernel=$(resolve_kernel)
if [[ -z $kernel ]]; then
    # No apt lists (fresh machine) or the package vanished: an existing image is good enough,
    # otherwise refresh the lists once and ask again.
    if [[ -f $cache/image.env && $force == 0 && -z ${PMU_VM_KERNEL_PKG:-} ]]; then
        log "apt does not resolve a kernel package; using the cached image"
        exit 0
    fi
    [[ $(id -u) == 0 ]] || die "cannot resolve the kernel package (apt-get update needed, as root)"
    apt_update_once
    kernel=$(resolve_kernel)
    [[ -n $kernel ]] || die "no linux-image-6.1.*-amd64 package known to apt (set PMU_VM_KERNEL_PKG)"
fi
stamp="$kernel recipe=$recipe"

if [[ $force == 0 && -f $cache/image.env && -f $cache/stamp && $(<"$cache/stamp") == "$stamp" ]]; then
    # shellcheck disable=SC1091
    . "$cache/image.env"
    if [[ -f $VM_KERNEL && -f $VM_INITRD ]]; then
        log "image up to date ($stamp)"
        exit 0
    fi
fi

read -r kpkg kver_pkg <<<"$kernel"
log "building image for $kpkg $kver_pkg"
start=$SECONDS

work=$(mktemp -d "${TMPDIR:-/tmp}/pmu-rdma-vm-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
# apt downloads as the unprivileged _apt user when it can; give it the directory to avoid a warning.
mkdir "$work/dl"
chmod 755 "$work"
if id _apt >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then chown _apt "$work/dl"; fi
(cd "$work/dl" && apt-get download -qq "$kpkg=$kver_pkg" >&2) \
    || { apt_update_once; (cd "$work/dl" && apt-get download -qq "$kpkg=$kver_pkg" >&2); }
deb=$(echo "$work"/dl/*.deb)
[[ -f $deb ]] || die "apt-get download of $kpkg produced no .deb"

dpkg -x "$deb" "$work/k"
kver=$(ls "$work/k/lib/modules")
[[ -n $kver && -f $work/k/boot/vmlinuz-$kver ]] || die "unexpected layout in $deb"
depmod -b "$work/k" "$kver"

# Modules the guest loads, in this order (init loads them by name; modprobe pulls dependencies):
# crc32_generic first: rxe needs the crc32 crypto, without it `rdma link add` fails with ENOENT.
# virtio_console carries the command's stdout/stderr to the host as raw bytes (no tty CR/LF
# mangling, no kernel messages mixed in).
# virtio_blk and ext4: run-in-vm.sh --disk (a data directory on a real disk filesystem).
modules="crc32_generic rdma_rxe ib_uverbs rdma_ucm ib_umad dummy virtio_pci virtio_console 9pnet_virtio 9p virtio_blk ext4"

root=$work/initramfs
mkdir -p "$root"/{bin,sbin,lib,lib64,dev,proc,sys,host,etc}
mdir=$root/lib/modules/$kver
mkdir -p "$mdir"
for m in $modules; do
    modprobe -d "$work/k" -S "$kver" --show-depends "$m"
done | awk '$1 == "insmod" {print $2}' | sort -u | while read -r ko; do
    rel=${ko#"$work/k/lib/modules/$kver/"}
    mkdir -p "$mdir/$(dirname "$rel")"
    cp "$ko" "$mdir/$rel"
done
cp "$work/k/lib/modules/$kver"/modules.{builtin,builtin.modinfo,order} "$mdir/"
depmod -b "$root" "$kver"

# busybox for the tools; applets as symlinks (but not sh: busybox's sh prefers its own applets,
# e.g. its `ip`, over iproute2's, so /bin/sh is dash).
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
    case $applet in sh|busybox) continue ;; esac
    ln -s busybox "$root/bin/$applet"
done
# The kernel's automatic module loading runs /sbin/modprobe from the initramfs root.
ln -s ../bin/busybox "$root/sbin/modprobe"
cp /bin/dash "$root/bin/dash"
ln -s dash "$root/bin/sh"
# dash is dynamic: copy the libraries it needs at the same paths.
ldd /bin/dash | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

# The guest's PID 1. Everything per run (shares, command) comes from the control share that
# run-in-vm.sh prepares, so the image does not change between runs.
cat >"$root/init" <<'INIT'
#!/bin/sh
# PID 1 of the PMU soft-RoCE VM. Messages go to the serial console (a log file on the host).
export PATH=/bin:/sbin
ctl=/host/run/pmu-vm   # control share, as seen from inside the chroot at /run/pmu-vm
msize=262144           # bigger 9p messages: fewer round trips through the emulated virtio

log() { echo "pmu-vm: [$(cut -d' ' -f1 /proc/uptime)s] $*"; }
fail() {
    log "SETUP FAILED: $*"
    [ -d "$ctl" ] && echo "$*" > "$ctl/setup-failed" 2>/dev/null
    sync
    poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
hostname pmu-rdma-vm
log "init started"

for m in MODULES; do
    # A module built into the kernel is listed in modules.builtin (busybox modprobe may refuse it).
    modprobe "$m" || grep -q "/$m.ko" /lib/modules/*/modules.builtin || fail "modprobe $m"
done

log "modules loaded"
# The host's / read-only; page cache on (cache=loose) because it does not change during a run
# and every binary and shared library is read through it.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=$msize hostroot /host \
    || fail "mount host root over 9p"
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
# Guest-local scratch: fresh and in RAM. Server data directories belong here (not on 9p).
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
mount -t tmpfs -o mode=0755 tmpfs /host/run
mkdir -p "$ctl"
# Control share: read-write, no cache so that what the guest writes is on the host at once.
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=$msize pmuctl "$ctl" \
    || fail "mount control share"
[ -f "$ctl/shares" ] || fail "no $ctl/shares"

# Read-write host folders, mounted at their host paths over the read-only root. One under /tmp
# or /run (a CI clone may be there) gets its mount point made in the guest's tmpfs.
while read -r tag path; do
    [ -n "$tag" ] || continue
    case $path in /tmp/*|/run/*) mkdir -p "/host$path" ;; esac
    [ -d "/host$path" ] || fail "share $path does not exist"
    mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=$msize "$tag" "/host$path" \
        || fail "mount share $path"
done < "$ctl/shares"

# Network: only a dummy interface inside the guest (qemu runs with -nic none).
ip link set lo up
# Loading `dummy` already made dummy0 (numdummies=1); create it only if it is not there.
ip link show dummy0 >/dev/null 2>&1 || ip link add dummy0 type dummy || fail "create dummy0"
ip addr add 10.11.12.1/24 dev dummy0
ip link set dummy0 up
# rdma is iproute2's, from the host root.
chroot /host rdma link add rxe0 type rxe netdev dummy0 || fail "rdma link add rxe0"
i=0
until grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state 2>/dev/null; do
    i=$((i + 1))
    [ $i -le 100 ] || fail "rxe0 port did not become ACTIVE"
    sleep 0.1
done
log "rxe0 ACTIVE on dummy0 10.11.12.1"

# The command's stdout/stderr: virtio serial ports named by the host; the console if missing.
out=/dev/console
err=/dev/console
i=0
while [ $i -le 20 ]; do
    for p in /sys/class/virtio-ports/*; do
        [ -f "$p/name" ] || continue
        case $(cat "$p/name") in
            pmu.stdout) out=/dev/${p##*/} ;;
            pmu.stderr) err=/dev/${p##*/} ;;
        esac
    done
    [ "$out" != /dev/console ] && [ "$err" != /dev/console ] && break
    i=$((i + 1))
    sleep 0.1
done

echo ready > "$ctl/stage"
log "running command"
chroot /host /bin/bash /run/pmu-vm/cmd.sh < /dev/null > "$out" 2> "$err"
rc=$?
echo "$rc" > "$ctl/status"
log "command exited with $rc"
sync
poweroff -f
INIT
sed -i "s/MODULES/$modules/" "$root/init"
chmod 755 "$root/init"

initrd_name=initramfs-$kver.cpio.gz
kernel_name=vmlinuz-$kver
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -1 >"$work/$initrd_name"
cp "$work/k/boot/vmlinuz-$kver" "$work/$kernel_name"

# Replace the old image only now that the new one is complete.
mv -f "$work/$initrd_name" "$cache/$initrd_name"
mv -f "$work/$kernel_name" "$cache/$kernel_name"
for f in "$cache"/vmlinuz-* "$cache"/initramfs-*; do
    case ${f##*/} in "$kernel_name"|"$initrd_name") ;; *) rm -f "$f" ;; esac
done
cat >"$cache/image.env" <<EOF
VM_KVER=$kver
VM_KERNEL=$cache/$kernel_name
VM_INITRD=$cache/$initrd_name
EOF
echo "$stamp" >"$cache/stamp"
log "built $kver in $((SECONDS - start)) s: $(du -ch "$cache/$kernel_name" "$cache/$initrd_name" | awk 'END {print $1}') in $cache"
