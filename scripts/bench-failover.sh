#!/usr/bin/env bash
# Failover bench (issue 13), root only, in network namespaces (scripts/test-failover-netns.sh):
#   failover time: from kill -9 of the primary to the first write acknowledged at the service
#   address, as the client sees it (its longest gap between two acknowledged writes, which
#   includes one write's own time), p50 and max over ROUNDS rounds at 100 ms x 3;
#   heartbeat overhead: CPU seconds of an idle pair over 10 s with heartbeats every 100 ms.
#   sudo bash scripts/bench-failover.sh [ROUNDS]   (default 20; about 5 s a round)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-20}
if [[ $(id -u) -ne 0 ]]; then echo "SKIPPED: bench-failover.sh needs root"; exit 0; fi
PMU_FAILOVER_IDLE_CPU=1 bash scripts/test-failover-netns.sh rounds "$rounds"
