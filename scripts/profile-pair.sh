#!/usr/bin/env bash
# Profile of one mirrored 4 KiB write at a time (issue 12): a partner and an owner on 127.0.0.1,
# pmu-bench small against the owner, and perf attached to both servers for the run.
# Usage: scripts/profile-pair.sh BIN_DIR page-cache|fdatasync COUNT [stat|PERF_DATA_PREFIX]
#   stat: perf stat context switches and CPU time (task-clock, ms) of each server over the run
#         (COUNT writes plus pmu-bench's 1000 warm-up writes);
#   PREFIX: perf record -g into PREFIX.owner and PREFIX.partner (then e.g.
#         perf report -i PREFIX.owner --no-children --sort comm -g none --stdio: which threads work).
# BIN_DIR holds release pmu-server and pmu-bench. Data directories under /var/tmp, removed after.
set -euo pipefail
bin=$1; sync=$2; count=$3; perfout=${4:-}
work=$(mktemp -d /var/tmp/pmu-profile-pair.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
umask 077
printf 'admin:bench-admin-secret-0123456789\npair:bench-pair-secret-0123456789\n' > "$work/secrets"
printf 'bench-admin-secret-0123456789\n' > "$work/admin.secret"
printf 'bench-pair-secret-0123456789\n' > "$work/pair.secret"
start() {
    local name=$1; shift
    "$bin/pmu-server" --data-dir "$work/$name" --listen 127.0.0.1:0 --secrets "$work/secrets" --ready-file "$work/$name.ready" --log-level warning "$@" 2>>"$work/$name.log" &
    pids+=($!)
    for _ in $(seq 200); do [[ -s $work/$name.ready ]] && return; sleep 0.05; done
    cat "$work/$name.log" >&2; exit 1
}
start partner --mirror-client pair --mirror-sync "$sync"; partner_pid=${pids[-1]}
start owner --partner "$(cat "$work/partner.ready")" --partner-client pair --partner-secret-file "$work/pair.secret"; owner_pid=${pids[-1]}
sleep 0.3
perf_pids=()
if [[ $perfout == stat ]]; then
    for side in owner partner; do
        pid_var=${side}_pid
        perf stat -e context-switches,task-clock -x, -o "$work/stat.$side" -p "${!pid_var}" & perf_pids+=($!)
    done
elif [[ -n $perfout ]]; then
    perf record -F 2000 -g -o "$perfout.owner" -p "$owner_pid" 2>/dev/null & perf_pids+=($!)
    perf record -F 2000 -g -o "$perfout.partner" -p "$partner_pid" 2>/dev/null & perf_pids+=($!)
fi
sleep 0.5
"$bin/pmu-bench" small --size 4096 --count "$count" --server "$(cat "$work/owner.ready")" --secret-file "$work/admin.secret"
if ((${#perf_pids[@]})); then kill -INT "${perf_pids[@]}"; wait "${perf_pids[@]}" 2>/dev/null || true; fi
if [[ $perfout == stat ]]; then
    for side in owner partner; do echo "$side: $(grep -v '^#' "$work/stat.$side" | grep . | cut -d, -f1,3 | tr '\n' ' ')"; done
fi
