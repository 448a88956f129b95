#!/usr/bin/env bash
# Failover in network namespaces (issue 13): a primary (ns pmufo-a, 10.77.0.1) and a monitor
# (pmufo-b, 10.77.0.2) behind a bridge (pmufo-sw, which also runs etcd at 10.77.0.254), a client
# (pmufo-c, 10.77.0.3) writing to the service address 10.77.0.100 through the reconnecting
# client. The service address moves for real (ip addr add + arping in the monitor's namespace).
#
#   sudo bash scripts/test-failover-netns.sh [kill|partition|rounds N]   (default: kill partition)
#
# kill:      kill -9 of the primary while the client writes; the monitor serves at the service
#            address; every acknowledged write is present (pmu-bench failover-check).
# partition: nft drop inside the primary's namespace (inet + arp tables, lo accepted) while a
#            client on each side writes; the primary cannot mirror, so it acknowledges nothing;
#            the monitor claims at etcd, fences (kills) the old primary, serves; after healing
#            the restarted primary comes back as monitor; every acknowledged write is present.
# rounds N:  N rounds of kill -9, each on a fresh pair, failover time per round (the client's
#            longest gap between two acknowledged writes) and p50/max; scripts/bench-failover.sh.
# random N:  N rounds on ONE pair that shares no storage (the replica, --replica-from): each round a
#            seeded random choice of kill -9 or partition (healed after 1.5 s) of whichever server
#            is primary then; the other takes over from its own copy; the killed or fenced one is
#            restarted with its command line, comes back as monitor and resynchronises, and the
#            next round cuts the new primary. After every round every write acknowledged in any
#            round so far is read back (Jepsen style).
# Root only (namespaces, nft); prints SKIPPED otherwise. Everything it makes is removed by name.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "SKIPPED: test-failover-netns.sh needs root (network namespaces, nft)"
    exit 0
fi
for tool in etcd nft arping ip; do
    command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/install-deps.sh" >&2; exit 1; }
done
BIN=${PMU_BIN_DIR:-$(swift build --show-bin-path)}
for exe in pmu-server pmu-bench; do [[ -x $BIN/$exe ]] || { echo "build first: $BIN/$exe missing" >&2; exit 1; }; done

NS_SW=pmufo-sw NS_A=pmufo-a NS_B=pmufo-b NS_C=pmufo-c
SERVICE=10.77.0.100
PORT=7690
SCRATCH=$(mktemp -d /tmp/pmu-failover.XXXXXX)
PIDS=()

cleanup() {
    set +e
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    for ns in $NS_A $NS_B $NS_C $NS_SW; do ip netns del "$ns" 2>/dev/null; done
    [[ -n ${KEEP_SCRATCH:-} ]] || rm -rf "$SCRATCH"
}
trap cleanup EXIT

host() { # NS ADDRESS PORTNAME
    ip netns add "$1"
    ip -n $NS_SW link add "$3" type veth peer name eth0 netns "$1"
    ip -n $NS_SW link set "$3" master br0
    ip -n $NS_SW link set "$3" up
    ip -n "$1" addr add "$2/24" dev eth0
    ip -n "$1" link set eth0 up
    ip -n "$1" link set lo up
}

setup_network() {
    for ns in $NS_A $NS_B $NS_C $NS_SW; do ip netns del "$ns" 2>/dev/null || true; done
    ip netns add $NS_SW
    ip -n $NS_SW link add br0 type bridge
    ip -n $NS_SW link set br0 up
    ip -n $NS_SW addr add 10.77.0.254/24 dev br0
    ip -n $NS_SW link set lo up
    host $NS_A 10.77.0.1 va
    host $NS_B 10.77.0.2 vb
    host $NS_C 10.77.0.3 vc
}

start_etcd() {
    ip netns exec $NS_SW etcd --name fo --data-dir "$SCRATCH/etcd" \
        --listen-client-urls http://10.77.0.254:2379 --advertise-client-urls http://10.77.0.254:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster fo=http://127.0.0.1:2380 --heartbeat-interval 50 --election-timeout 500 \
        --log-level error >"$SCRATCH/etcd.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        ip netns exec $NS_C curl -sf -m 1 -X POST http://10.77.0.254:2379/v3/kv/range -d '{"key":"eA=="}' >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "etcd did not start; see $SCRATCH/etcd.log" >&2
    exit 1
}

write_secrets() {
    printf 'admin:admin-secret-0123456789\npair:pair-secret-0123456789abcdef\n' >"$SCRATCH/secrets"
    printf 'pair-secret-0123456789abcdef\n' >"$SCRATCH/pair.secret"
    printf 'admin-secret-0123456789\n' >"$SCRATCH/admin.secret"
    chmod 600 "$SCRATCH/secrets" "$SCRATCH/pair.secret" "$SCRATCH/admin.secret"
}

# server NS NAME ROLE OWN_IP PEER_IP PEER_NAME: data in $SCRATCH/NAME, log $SCRATCH/NAME.log.
# The fence (STONITH on one machine): the old primary's host loses the service address (as a
# powered-off machine would) and its process is killed by the pid in its LOCK; it succeeds only
# once that process is gone.
FENCE_KILL='pid=$(cat "$PMU_PORTION_DIR/LOCK" 2>/dev/null); [ -z "$pid" ] || kill -9 "$pid" 2>/dev/null; for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.02; done; exit 1'

# The primary mirrors to the monitor (--partner); the monitor keeps the log and takes over.
server() {
    local ns=$1 name=$2 role=$3 own=$4 peer=$5 peername=$6 mirror=()
    local peerns=$([[ $name == a ]] && echo $NS_B || echo $NS_A)
    [[ $role == primary ]] && mirror=(--partner "$peer:$PORT")
    launch "$ns" "$name" "$role" "$own" "$peer" \
        --listen "$([[ $role == primary ]] && echo $SERVICE || echo "$own"):$PORT" "${mirror[@]}" \
        --partner-portion "$SCRATCH/$peername" --fence-command "ip -n $peerns addr del $SERVICE/24 dev eth0 2>/dev/null; $FENCE_KILL"
}

# launch NS NAME ROLE OWN_IP PEER_IP ARGS...: pmu-server in NS with the pair's common options.
launch() {
    local ns=$1 name=$2 role=$3 own=$4 peer=$5
    shift 5
    rm -f "$SCRATCH/$name.ready"
    ip netns exec "$ns" "$BIN/pmu-server" --role "$role" --member-id "$name" --data-dir "$SCRATCH/$name" \
        --secrets "$SCRATCH/secrets" --ready-file "$SCRATCH/$name.ready" "$@" \
        --partner-client pair --partner-secret-file "$SCRATCH/pair.secret" --mirror-client pair --takeover-listen "$SERVICE:$PORT" \
        --heartbeat-listen "$own:7701" --peer-heartbeat "$peer:7701" --heartbeat-interval "${INTERVAL_MS:-100}" --heartbeat-misses "${MISSES:-3}" \
        --heartbeat-secret-file "$SCRATCH/pair.secret" --service-address "$SERVICE/24" --service-interface eth0 \
        --etcd http://10.77.0.254:2379 --etcd-prefix /pmu/fo --lease-ttl 2 --lease-margin 500 \
        >>"$SCRATCH/$name.log" 2>&1 &
    PIDS+=($!)
    eval "PID_$name=$!"
    echo $! >"$SCRATCH/$name.pid"
}

wait_ready() {
    for _ in $(seq 150); do [[ -s "$SCRATCH/$1.ready" ]] && return; sleep 0.1; done
    echo "$1 did not start:" >&2
    tail -20 "$SCRATCH/$1.log" >&2
    exit 1
}

writer() { # NS REGION ACKLOG [extra]
    ip netns exec "$1" "$BIN/pmu-bench" failover-writer --server "$SERVICE:$PORT" --client admin --secret-file "$SCRATCH/admin.secret" \
        --region "$2" --ack-log "$3" --count "${COUNT:-20000}" --seconds "${SECONDS_LIMIT:-15}" --stop-file "$SCRATCH/stop" "${@:4}"
}

wait_acks() { # FILE N: until the writer has N acknowledged writes (bounded, 15 s), so a cut lands mid-stream
    for _ in $(seq 150); do
        [[ -f $1 && $(wc -l <"$1") -ge $2 ]] && return
        sleep 0.1
    done
    echo "FAIL: the writer never got $2 writes acknowledged before the cut" >&2
    exit 1
}

check() {
    ip netns exec $NS_C "$BIN/pmu-bench" failover-check --server "$SERVICE:$PORT" --client admin --secret-file "$SCRATCH/admin.secret" --ack-log "$1"
}

holder() { # which namespaces hold the service address, e.g. "pmufo-b"
    local held=()
    local shown
    for ns in $NS_A $NS_B; do
        # Captured first: `ip ... | grep -q` under pipefail fails when grep's early exit gives ip SIGPIPE.
        shown=$(ip -n "$ns" addr show dev eth0 2>/dev/null || true)
        [[ $shown == *"inet $SERVICE/"* ]] && held+=("$ns")
    done
    echo "${held[*]:-none}"
}

# A partition of the primary's host: inside its namespace, drop everything but lo (inet and arp).
cut_primary() {
    ip netns exec "${1:-$NS_A}" nft -f - <<'NFT'
table inet pmufo {
    chain in { type filter hook input priority 0; policy drop; iif lo accept; }
    chain out { type filter hook output priority 0; policy drop; oif lo accept; }
}
table arp pmufo {
    chain in { type filter hook input priority 0; policy drop; }
    chain out { type filter hook output priority 0; policy drop; }
}
NFT
}

heal_primary() {
    ip netns exec "${1:-$NS_A}" nft delete table inet pmufo 2>/dev/null || true
    ip netns exec "${1:-$NS_A}" nft delete table arp pmufo 2>/dev/null || true
}

start_pair() {
    setup_network
    start_etcd
    write_secrets
    mkdir -p "$SCRATCH/a" "$SCRATCH/b"
    server $NS_B b monitor 10.77.0.2 10.77.0.1 a
    wait_ready b
    server $NS_A a primary 10.77.0.1 10.77.0.2 b
    wait_ready a
}

scenario_kill() {
    echo "== kill -9 of the primary while a client writes"
    start_pair
    rm -f "$SCRATCH/stop"
    writer $NS_C kill "$SCRATCH/kill.acks" >"$SCRATCH/kill.writer.json" &
    local wpid=$!
    PIDS+=($wpid) # killed by cleanup if a check fails first
    wait_acks "$SCRATCH/kill.acks" 50
    sleep 0.5
    kill -9 "$PID_a"
    sleep 3
    touch "$SCRATCH/stop"
    wait $wpid
    cat "$SCRATCH/kill.writer.json"
    [[ -x $BIN/pmuctl ]] && ip netns exec $NS_C "$BIN/pmuctl" pair status --server 10.77.0.2:$PORT --client admin --secret-file "$SCRATCH/admin.secret" | grep -A4 failover || true
    echo "service address held by: $(holder)"
    [[ $(holder) == "$NS_B" ]] || { echo "FAIL: the monitor does not hold the service address" >&2; exit 1; }
    check "$SCRATCH/kill.acks" | tee "$SCRATCH/kill.check.json"
    echo "PASS kill"
}

scenario_partition() {
    echo "== partition of the primary (nft drop in its namespace) while clients on both sides write"
    start_pair
    rm -f "$SCRATCH/stop"
    writer $NS_C part-c "$SCRATCH/part-c.acks" >"$SCRATCH/part-c.writer.json" &
    local wc=$!
    PIDS+=($wc) # killed by cleanup if a check fails first
    # A client beside the primary, inside its namespace: it keeps reaching the stale primary.
    writer $NS_A part-a "$SCRATCH/part-a.acks" >"$SCRATCH/part-a.writer.json" 2>"$SCRATCH/part-a.writer.err" &
    local wa=$!
    PIDS+=($wa) # killed by cleanup if a check fails first
    wait_acks "$SCRATCH/part-c.acks" 50
    wait_acks "$SCRATCH/part-a.acks" 50
    sleep 0.3
    cut_primary
    local cut_ms; cut_ms=$(date +%s%3N)
    sleep 3
    local heal_ms; heal_ms=$(date +%s%3N)
    # Heal, and play the supervisor: the fenced (killed) primary restarts with its command line.
    heal_primary
    if kill -0 "$PID_a" 2>/dev/null; then echo "FAIL: the stale primary was not fenced" >&2; exit 1; fi
    server $NS_A a primary 10.77.0.1 10.77.0.2 b
    wait_ready a
    grep -q "restarted as the monitor" "$SCRATCH/a.log" || { echo "FAIL: the restarted primary did not come back as monitor" >&2; tail "$SCRATCH/a.log" >&2; exit 1; }
    sleep 1
    touch "$SCRATCH/stop"
    wait $wc || true
    wait $wa || true
    cat "$SCRATCH/part-c.writer.json" "$SCRATCH/part-a.writer.json" 2>/dev/null || true
    echo "service address held by: $(holder)"
    [[ $(holder) == "$NS_B" ]] || { echo "FAIL: service address held by: $(holder)" >&2; exit 1; }
    # At most one server acknowledges: the client beside the stale primary can reach only it
    # while the partition lasts, and it cannot mirror, so none of its writes may be acknowledged
    # from the cut (+50 ms for a reply already on its way) to the heal.
    local stale; stale=$(awk -v a=$((cut_ms + 50)) -v b="$heal_ms" '$4 > a && $4 < b' "$SCRATCH/part-a.acks" | wc -l)
    echo "acknowledged by the stale primary's side during the partition: $stale"
    [[ $stale == 0 ]] || { echo "FAIL: $stale writes acknowledged beside the partitioned primary" >&2; exit 1; }
    cat "$SCRATCH/part-c.acks" "$SCRATCH/part-a.acks" >"$SCRATCH/part.acks" 2>/dev/null || true
    check "$SCRATCH/part.acks" | tee "$SCRATCH/part.check.json"
    echo "PASS partition"
}

scenario_rounds() {
    local rounds=$1 mode=${2:-kill} gaps=() kind
    local seed=${PMU_FAILOVER_SEED:-$$}
    RANDOM=$seed
    echo "== $rounds rounds of $mode under a writing client (seed $seed: PMU_FAILOVER_SEED=$seed replays the choices); failover time = the client's longest gap between two acknowledged writes"
    # Each round is a fresh pair on shared storage (the bench's setup, so rounds compare); `random`
    # reuses one shared-nothing pair instead (scenario_same_pair).
    for round in $(seq "$rounds"); do
        start_pair
        if [[ $round == 1 && -n ${PMU_FAILOVER_IDLE_CPU:-} ]]; then
            # Heartbeat overhead: CPU ticks (utime + stime) of both idle servers over 10 s.
            local hz; hz=$(getconf CLK_TCK)
            ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
            local a0 b0; a0=$(ticks "$PID_a"); b0=$(ticks "$PID_b")
            sleep 10
            echo "{\"heartbeat_interval_ms\": ${INTERVAL_MS:-100}, \"idle_cpu_s_per_10s_primary\": $(( ($(ticks "$PID_a") - a0) ))/$hz, \"idle_cpu_s_per_10s_monitor\": $(( ($(ticks "$PID_b") - b0) ))/$hz, \"heartbeat_wire_bytes_per_s\": $(( 2 * 64 * 1000 / ${INTERVAL_MS:-100} ))}"
        fi
        rm -f "$SCRATCH/stop" "$SCRATCH/round.acks"
        writer $NS_C "round$round" "$SCRATCH/round.acks" >"$SCRATCH/round.json" &
        local wpid=$!
        PIDS+=($wpid) # killed by cleanup if a check fails first
        wait_acks "$SCRATCH/round.acks" 50
        sleep 0.3
        kind=kill
        [[ $mode == random && $((RANDOM % 2)) == 1 ]] && kind=partition
        if [[ $kind == kill ]]; then kill -9 "$PID_a"; else cut_primary; fi
        sleep 1.5
        heal_primary
        touch "$SCRATCH/stop"
        wait $wpid
        kill -0 "$PID_a" 2>/dev/null && { echo "FAIL: round $round ($kind): the old primary was not fenced" >&2; exit 1; }
        check "$SCRATCH/round.acks" >"$SCRATCH/round.check.json" || { cat "$SCRATCH/round.check.json"; echo "FAIL: round $round lost writes" >&2; exit 1; }
        gaps+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["max_gap_ms"])' "$SCRATCH/round.json")")
        echo "round $round ($kind): gap ${gaps[-1]} ms, $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["checked"], "acknowledged writes checked,", d["lost"], "lost")' "$SCRATCH/round.check.json")"
        for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
        for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
        PIDS=()
        rm -rf "$SCRATCH/a" "$SCRATCH/b" "$SCRATCH/etcd" "$SCRATCH"/*.ready
    done
    printf '%s\n' "${gaps[@]}" | python3 -c 'import sys, json; g=sorted(float(x) for x in sys.stdin); print(json.dumps({"rounds": len(g), "failover_p50_ms": g[len(g)//2], "failover_max_ms": g[-1]}))'
}

# The shared-nothing pair (ARCHITECTURE "Failover", the replica): a starts as primary (its data
# directory is its copy), b as monitor (its copy in b-replica). Each copies from the service
# address when it is the monitor; a taken-over copy mirrors to the other's mirror listener (b's
# --listen, a's --monitor-listen). The fence kills the other server by the pid this script
# recorded (no shared LOCK to read) after taking the service address off its host.
replica_server() { # NAME
    local name=$1 ns own peer peerns peername role args=()
    if [[ $name == a ]]; then
        ns=$NS_A own=10.77.0.1 peer=10.77.0.2 peerns=$NS_B peername=b role=primary
        args=(--listen "$SERVICE:$PORT" --monitor-listen "$own:$PORT" --partner "$peer:$PORT")
    else
        ns=$NS_B own=10.77.0.2 peer=10.77.0.1 peerns=$NS_A peername=a role=monitor
        args=(--listen "$own:$PORT" --partner-portion "$SCRATCH/b-replica")
    fi
    local fence="ip -n $peerns addr del $SERVICE/24 dev eth0 2>/dev/null; pid=\$(cat '$SCRATCH/$peername.pid' 2>/dev/null); [ -z \"\$pid\" ] || kill -9 \"\$pid\" 2>/dev/null; for i in \$(seq 50); do kill -0 \"\$pid\" 2>/dev/null || exit 0; sleep 0.02; done; exit 1"
    launch "$ns" "$name" "$role" "$own" "$peer" "${args[@]}" \
        --replica-from "$SERVICE:$PORT" --takeover-partner "$peer:$PORT" --fence-command "$fence"
}

wait_replica_ready() { # NAME ADDRESS: until the monitor's copy is complete (bounded, 30 s)
    for _ in $(seq 300); do
        if ip netns exec $NS_C "$BIN/pmuctl" pair status --json --server "$2:$PORT" --client admin --secret-file "$SCRATCH/admin.secret" 2>/dev/null \
            | python3 -c 'import json,sys; sys.exit(0 if (json.load(sys.stdin).get("replica") or {}).get("ready") else 1)' 2>/dev/null; then return; fi
        sleep 0.1
    done
    echo "FAIL: $1's replica never became ready" >&2
    tail -20 "$SCRATCH/$1.log" >&2
    exit 1
}

scenario_same_pair() {
    local rounds=$1 gaps=() kind primary=a monitor=b
    local seed=${PMU_FAILOVER_SEED:-$$}
    RANDOM=$seed
    [[ -x $BIN/pmuctl ]] || { echo "build first: $BIN/pmuctl missing" >&2; exit 1; }
    echo "== $rounds rounds of random kill -9 / partition on one shared-nothing pair (seed $seed: PMU_FAILOVER_SEED=$seed replays the choices)"
    setup_network
    start_etcd
    write_secrets
    mkdir -p "$SCRATCH/a" "$SCRATCH/b" "$SCRATCH/b-replica"
    : >"$SCRATCH/all.acks"
    replica_server b
    wait_ready b
    replica_server a
    wait_ready a
    for round in $(seq "$rounds"); do
        local monitor_ip; monitor_ip=$([[ $monitor == a ]] && echo 10.77.0.1 || echo 10.77.0.2)
        local primary_ns; primary_ns=$([[ $primary == a ]] && echo $NS_A || echo $NS_B)
        wait_replica_ready "$monitor" "$monitor_ip"
        rm -f "$SCRATCH/stop" "$SCRATCH/round.acks"
        COUNT=${COUNT:-2000} writer $NS_C "round$round" "$SCRATCH/round.acks" >"$SCRATCH/round.json" &
        local wpid=$!
        PIDS+=($wpid) # killed by cleanup if a check fails first
        wait_acks "$SCRATCH/round.acks" 50
        sleep 0.3
        kind=kill
        [[ $((RANDOM % 2)) == 1 ]] && kind=partition
        local old_pid; old_pid=$(cat "$SCRATCH/$primary.pid")
        if [[ $kind == kill ]]; then kill -9 "$old_pid"; else cut_primary "$primary_ns"; fi
        sleep 1.5
        heal_primary "$primary_ns"
        touch "$SCRATCH/stop"
        wait $wpid
        kill -0 "$old_pid" 2>/dev/null && { echo "FAIL: round $round ($kind): the old primary $primary was not fenced" >&2; exit 1; }
        cat "$SCRATCH/round.acks" >>"$SCRATCH/all.acks"
        check "$SCRATCH/all.acks" >"$SCRATCH/round.check.json" || { cat "$SCRATCH/round.check.json"; echo "FAIL: round $round lost writes" >&2; exit 1; }
        gaps+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["max_gap_ms"])' "$SCRATCH/round.json")")
        echo "round $round ($kind of $primary, $monitor took over): gap ${gaps[-1]} ms, $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["checked"], "acknowledged writes of all rounds checked,", d["lost"], "lost")' "$SCRATCH/round.check.json")"
        # The supervisor restarts the old primary with its command line: it comes back as monitor.
        replica_server "$primary"
        wait_ready "$primary"
        local swap=$primary; primary=$monitor; monitor=$swap
    done
    printf '%s\n' "${gaps[@]}" | python3 -c 'import sys, json; g=sorted(float(x) for x in sys.stdin); print(json.dumps({"rounds": len(g), "failover_p50_ms": g[len(g)//2], "failover_max_ms": g[-1]}))'
    echo "PASS random (one pair, $rounds rounds)"
}

case "${1:-all}" in
    kill) scenario_kill ;;
    partition) scenario_partition ;;
    rounds) scenario_rounds "${2:-20}" kill ;;
    random) scenario_same_pair "${2:-20}" ;;
    all) scenario_kill; cleanup; PIDS=(); SCRATCH=$(mktemp -d /tmp/pmu-failover.XXXXXX); scenario_partition ;;
    *) echo "usage: $0 [kill|partition|rounds N|random N|all]" >&2; exit 2 ;;
esac
