#!/usr/bin/env bash
# Fuzzes every decoder of stored bytes (Sources/PMUFuzzing: checkpoint, stripe, catalog, log) and the
# failover heartbeat datagram (heartbeat) and the server's streaming request decoder (request) with
# libFuzzer for a bounded time each; fails if any target crashes (a trap, an ASan report, or a
# broken round-trip property). Crash inputs are kept in .build-fuzz/crashes/TARGET/ and reproduce
# with the normal build: `$(swift build --show-bin-path)/pmu-fuzz TARGET FILE`.
#
#   PMU_FUZZ_SECONDS=20     time per target (default 20)
#   PMU_FUZZ_TARGETS="..."  which targets (default: all six)
#   PMU_FUZZ_SANITIZE=...   -sanitize value (default fuzzer,address)
#
# The build uses its own scratch path (.build-fuzz), so the normal `swift build` never sees the
# sanitizer flags. Seeds come from Fuzz/corpus/TARGET (committed; `pmu-fuzz --write-seeds
# Fuzz/corpus` regenerates them); what the fuzzer finds on top goes to .build-fuzz/corpus, not
# into the repository.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${PMU_FUZZ_SECONDS:-20}
targets=${PMU_FUZZ_TARGETS:-checkpoint stripe catalog log heartbeat request}
sanitize=${PMU_FUZZ_SANITIZE:-fuzzer,address}

echo "fuzz: building pmu-fuzz (-sanitize=$sanitize) in .build-fuzz"
swift build --scratch-path .build-fuzz -c debug --product pmu-fuzz \
    -Xswiftc "-sanitize=$sanitize" -Xswiftc -DPMU_FUZZ 2>&1 | grep -vE "warning: Cannot export local symbol" | tail -3
binary=$(swift build --scratch-path .build-fuzz -c debug --show-bin-path)/pmu-fuzz

status=0
for target in $targets; do
    work=.build-fuzz/corpus/$target
    crashes=.build-fuzz/crashes/$target
    mkdir -p "$work" "$crashes"
    log=.build-fuzz/fuzz-$target.log
    # -timeout: one input taking longer than 10 s is a hang, reported like a crash.
    # -rss_limit_mb: an input making the decoders allocate without bound fails the run.
    # SWIFT_BACKTRACE off: a Swift trap then reaches libFuzzer's crash handler directly (the runtime's
    # backtracer would otherwise run first, under ASan, and garble the report).
    if SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=0 "$binary" "$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -max_len=8192 -artifact_prefix="$crashes/" -print_final_stats=1 "$work" "Fuzz/corpus/$target" > "$log" 2>&1; then
        echo "fuzz $target: ok, $(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?') inputs in ${seconds} s"
    else
        echo "fuzz $target: FAILED (inputs in $crashes); last lines of $log:"
        grep -E "ERROR|Fatal error|Precondition|SUMMARY|Test unit written" "$log" | head -10 || true
        tail -5 "$log"
        status=1
    fi
done
exit "$status"
