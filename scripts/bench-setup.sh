# Sourced by the issue benchmarks (bench-journal.sh, bench-bulk.sh) after `cd` to the repository:
# `bench_setup NAME` sets `bin` (PMU_BENCH_BIN=DIR uses the pmu-server and pmu-bench already built
# there, e.g. .build/debug; else a release build), `out` (bench-out/NAME), `work` (a temporary
# directory on disk, /var/tmp, so syncs reach a device), `pids` (killed with `work` removed at exit),
# builds the raw TCP baseline into "$work/rawtcp", and defines `free_port`.
bench_setup() {
    if [[ -n ${PMU_BENCH_BIN:-} ]]; then
        bin=$PMU_BENCH_BIN
    else
        for product in pmu-server pmu-bench; do swift build -c release --product "$product" >/dev/null; done
        bin=$(swift build -c release --show-bin-path)
    fi
    out=bench-out/$1
    mkdir -p "$out"
    work=$(mktemp -d "/var/tmp/pmu-bench-$1.XXXXXX")
    pids=()
    trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"' EXIT
    gcc -O2 -o "$work/rawtcp" Benchmarks/baselines/rawtcp.c
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
