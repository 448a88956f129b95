#!/usr/bin/env bash
# A small local cluster of pmu-servers on 127.0.0.1 for trying striped checkpoints (docs/CLUSTER.md).
#
#   scripts/local-cluster.sh start [N]     build, start N servers (default 5) on ports 7701.., write map.json
#   scripts/local-cluster.sh kill NAME     kill -9 one server (e.g. s2)
#   scripts/local-cluster.sh restart NAME  start it again on its data directory
#   scripts/local-cluster.sh wipe NAME     kill it, delete its data directory, start it empty
#   scripts/local-cluster.sh stop          stop every server
#
# State lives in $PMU_CLUSTER_DIR (default /tmp/pmu-cluster): NAME/ data dirs, NAME.pid, NAME.log,
# map.json. Every server uses its embedded default secrets (DATA_DIR/admin.secret), which the map
# references.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR=${PMU_CLUSTER_DIR:-/tmp/pmu-cluster}
BASE_PORT=${PMU_CLUSTER_BASE_PORT:-7701}

bin() { swift build -c release --show-bin-path; }

port_of() { echo $((BASE_PORT + ${1#s})); }

start_one() {
    local name=$1 port
    port=$(port_of "$name")
    mkdir -p "$DIR"
    rm -f "$DIR/$name.ready"
    "$(bin)/pmu-server" --data-dir "$DIR/$name" --listen "127.0.0.1:$port" --ready-file "$DIR/$name.ready" \
        >>"$DIR/$name.log" 2>&1 &
    echo $! >"$DIR/$name.pid"
    for _ in $(seq 1 300); do
        [[ -s "$DIR/$name.ready" ]] && return 0
        kill -0 "$(cat "$DIR/$name.pid")" 2>/dev/null || { echo "$name failed to start; see $DIR/$name.log" >&2; tail -5 "$DIR/$name.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "$name did not become ready; see $DIR/$name.log" >&2
    exit 1
}

kill_one() {
    local name=$1
    if [[ -f "$DIR/$name.pid" ]]; then
        kill -9 "$(cat "$DIR/$name.pid")" 2>/dev/null || true
        while kill -0 "$(cat "$DIR/$name.pid")" 2>/dev/null; do sleep 0.05; done
        rm -f "$DIR/$name.pid"
    fi
}

case "${1:-}" in
start)
    count=${2:-5}
    [[ $count -ge 2 && $count -le 64 ]] || { echo "start: 2 to 64 servers" >&2; exit 2; }
    scripts/install-deps.sh
    swift build -c release --product pmu-server
    swift build -c release --product pmuctl
    mkdir -p "$DIR"
    servers=()
    for i in $(seq 0 $((count - 1))); do
        kill_one "s$i"
        start_one "s$i"
        servers+=("{\"name\": \"s$i\", \"address\": \"127.0.0.1:$(port_of "s$i")\", \"transport\": \"tcp\", \"client\": \"admin\", \"secretFile\": \"s$i/admin.secret\"}")
    done
    k=$((count > 4 ? 4 : count - 1))
    m=$((count - k > 2 ? 2 : count - k))
    (IFS=,; printf '{\n  "servers": [%s],\n  "defaults": {"k": %d, "m": %d}\n}\n' "${servers[*]}" "$k" "$m") >"$DIR/map.json"
    echo "started $count servers; cluster map: $DIR/map.json" >&2
    echo "pmuctl: $(bin)/pmuctl   (export PMU_CLUSTER=$DIR/map.json)" >&2
    ;;
kill) kill_one "$2" ;;
restart) start_one "$2" ;;
wipe)
    kill_one "$2"
    rm -rf "${DIR:?}/$2"
    start_one "$2"
    ;;
stop)
    for pid in "$DIR"/*.pid; do [[ -e $pid ]] && kill_one "$(basename "$pid" .pid)"; done
    ;;
*)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
