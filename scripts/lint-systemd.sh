#!/usr/bin/env bash
# Lints systemd/*.service with `systemd-analyze verify` (no running systemd needed): every unit
# must verify with no message at all, since verify reports unknown keys and bad values as
# warnings yet exits 0. ExecStart's /usr/local/bin/pmu-server is pointed at the built binary
# (verify checks the executable exists); the template is verified as instance `a`.
# Usage: scripts/lint-systemd.sh [PMU_SERVER_BINARY]   (default: swift build's debug bin path)
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-$(swift build --show-bin-path)/pmu-server}
[[ -x $binary ]] || { echo "lint-systemd: no pmu-server at $binary; run swift build first" >&2; exit 1; }
command -v systemd-analyze >/dev/null || { echo "lint-systemd: systemd-analyze not found (Debian package systemd)" >&2; exit 1; }

work=$(mktemp -d /tmp/pmu-lint-systemd.XXXXXX)
trap 'rm -rf "$work"' EXIT
status=0
for unit in systemd/*.service; do
    name=$(basename "$unit")
    [[ $name == *@.service ]] && name=${name%@.service}@a.service
    sed "s#/usr/local/bin/pmu-server#$binary#g" "$unit" > "$work/$name"
    if ! output=$(cd "$work" && systemd-analyze verify "$work/$name" 2>&1) || [[ -n $output ]]; then
        echo "lint-systemd: $unit:" >&2
        echo "$output" >&2
        status=1
    else
        echo "lint-systemd: $unit verified"
    fi
done
exit $status
