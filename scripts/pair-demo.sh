#!/usr/bin/env bash
# A pair of pmu-servers on one machine losing its owner and carrying on (README, "A pair").
# A (127.0.0.1:7791) mirrors every write to B (127.0.0.1:7792); A runs in the machine-loss test
# mode, so kill -9 loses everything A had not persisted; B takes A's portion over and serves it on
# A's address. Runs in a temporary directory it removes; stops the two servers it started.
# Usage: scripts/pair-demo.sh [BIN_DIR]   (default: swift build's debug bin path)
set -euo pipefail
BIN=$(cd "${1:-$(cd "$(dirname "$0")/.." && swift build --show-bin-path)}" && pwd)
work=$(mktemp -d /tmp/pmu-pair-demo.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
umask 077
printf 'admin:admin-secret-0123456789abcdef\npair:pair-secret-0123456789abcdef\n' > secrets
printf 'pair-secret-0123456789abcdef\n' > pair.secret
printf 'admin-secret-0123456789abcdef\n' > admin.secret
export PMU_CLIENT=admin PMU_SECRET_FILE=$work/admin.secret
wait_ready() { for _ in $(seq 100); do [[ -s $1 ]] && return; sleep 0.1; done; echo "server not ready: $1" >&2; cat ./*.log >&2; exit 1; }

# B: the partner. Keeps A's mirror log; takes A's portion over on A's address; its fence command
# succeeds only once A's process (the pid in A's LOCK file) is gone.
"$BIN/pmu-server" --data-dir b --listen 127.0.0.1:7792 --secrets secrets --mirror-client pair \
    --partner-portion a --takeover-listen 127.0.0.1:7791 --ready-file b.ready \
    --fence-command '! kill -0 "$(cat "$PMU_PORTION_DIR/LOCK")" 2>/dev/null' 2> b.log &
pids+=($!)
wait_ready b.ready
# A: the owner. Every WRITE is acknowledged once in A's region and in B's mirror log.
PMU_ALLOW_TEST_MODES=1 "$BIN/pmu-server" --data-dir a --listen 127.0.0.1:7791 --secrets secrets \
    --partner 127.0.0.1:7792 --partner-client pair --partner-secret-file pair.secret \
    --test-volatile-until-persist --ready-file a.ready 2> a.log &
owner=$!
pids+=($owner)
wait_ready a.ready

set -x
"$BIN/pmuctl" region create demo --size 1MiB --server 127.0.0.1:7791
echo "acknowledged once in A and in B's mirror log" | "$BIN/pmuctl" write demo --offset 0 --server 127.0.0.1:7791
"$BIN/pmuctl" pair status --server 127.0.0.1:7791
kill -9 "$owner"    # A's machine is lost: its unpersisted write is gone with it
"$BIN/pmuctl" pair takeover --server 127.0.0.1:7792
"$BIN/pmuctl" read demo --offset 0 --length 45 --server 127.0.0.1:7791
"$BIN/pmuctl" pair status --server 127.0.0.1:7792
# A is repaired: B gives its portion back, A starts on it again and mirrors to B again.
"$BIN/pmuctl" pair giveback --server 127.0.0.1:7792
set +x
PMU_ALLOW_TEST_MODES=1 "$BIN/pmu-server" --data-dir a --listen 127.0.0.1:7791 --secrets secrets \
    --partner 127.0.0.1:7792 --partner-client pair --partner-secret-file pair.secret \
    --test-volatile-until-persist --ready-file a2.ready 2>> a.log &
pids+=($!)
wait_ready a2.ready
for _ in $(seq 50); do "$BIN/pmuctl" pair status --json --server 127.0.0.1:7791 | grep -q '"connected":true' && break; sleep 0.1; done
set -x
"$BIN/pmuctl" pair status --server 127.0.0.1:7791
"$BIN/pmuctl" read demo --offset 0 --length 45 --server 127.0.0.1:7791
set +x
