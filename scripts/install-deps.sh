#!/usr/bin/env bash
# Installs the Debian packages PMU builds against (rdma-core and ISA-L headers, pkg-config) and
# what the verbs transport needs at run time: the rdma-core userspace providers (rxe, mlx5, ...;
# without them ibv_get_device_list finds no device even where the kernel has one).
# Failover (issue 13): etcd-server (the authority; tests start their own etcd on 127.0.0.1, never
# the system one), arping (gratuitous ARP after the service address moves), nftables (partition
# tests inside network namespaces).
# Tests also need Prometheus and promtool (the metrics test starts its own Prometheus on
# 127.0.0.1; Debian's package may also enable a system one where systemd runs, which the tests
# neither use nor touch) and curl (scrapes and Prometheus's HTTP API).
# Idempotent: does nothing when they are present. Uses sudo when not root.
set -euo pipefail

packages=(libibverbs-dev librdmacm-dev libisal-dev pkg-config ibverbs-providers rdma-core etcd-server arping nftables prometheus curl)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

as_root=()
[[ $(id -u) -eq 0 ]] || as_root=(sudo)
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's etcd-server package may start a system etcd on 2379 where an init system runs; PMU
# never uses it (tests and .ci/run start their own on ephemeral ports).
