#!/usr/bin/env bash
# In the VM: pmu-server --transport rdma, then pmuctl create/write/read/persist over verbs.
set -euo pipefail
bin=${PMU_BIN_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.build/debug}
ip=${PMU_RDMA_IP:-10.11.12.1}
dir=$(mktemp -d /tmp/pmu-smoke.XXXXXX)
"$bin/pmu-server" --transport rdma --data-dir "$dir/data" --listen "$ip:0" --ready-file "$dir/ready" --log-level debug >"$dir/server.log" 2>&1 &
srv=$!
for _ in $(seq 300); do [[ -s $dir/ready ]] && break; kill -0 $srv 2>/dev/null || break; sleep 0.1; done
cat "$dir/server.log"
addr=$(cat "$dir/ready")
export PMU_SERVER=$addr PMU_SECRET_FILE=$dir/data/admin.secret PMU_TRANSPORT=rdma

"$bin/pmuctl" region create demo --size 8MiB
head -c 5000000 /dev/urandom > "$dir/in"
"$bin/pmuctl" write demo --offset 4000 --file "$dir/in"
"$bin/pmuctl" persist demo
"$bin/pmuctl" read demo --offset 4000 --length 5000000 --out "$dir/out"
"$bin/pmuctl" region stat demo
cmp "$dir/in" "$dir/out" && echo "SMOKE: bytes match"
kill $srv; wait $srv || true
tail -20 "$dir/server.log"
