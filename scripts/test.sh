#!/usr/bin/env bash
# Runs PMU's test suite: unit tests of the pure core and the store, and integration tests that
# start the real pmu-server executable on 127.0.0.1 (ephemeral ports, temporary data directories),
# kill -9 it, restart it and compare every byte. Installs the build dependencies first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-deps.sh
# The integration tests run the built pmu-server and pmuctl: build every product, then the tests.
swift build
swift build --build-tests
# At most two test cases at once (Swift Testing's own default is twice the cores): the
# integration tests wait for real processes and sockets synchronously (a server's ready file,
# pmuctl's exit, raw sockets' replies), which holds a thread of the two-thread cooperative pool;
# with more cases in flight a third one's client could be starved past the server's 10 s
# authentication timeout (seen at load 10 on a 2-core machine).
export SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH=${SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH:-2}
# Both runs happen even when the first fails, so one report shows every failure.
status=0
swift test --skip-build "$@" || status=1
# The hostile-client load tests, alone (see Tests/PMUIntegrationTests/HostileClientTests.swift).
if [[ $# -eq 0 ]]; then
    PMU_HOSTILE_TESTS=1 swift test --skip-build --filter HostileClientTests || status=1
fi
exit "$status"
