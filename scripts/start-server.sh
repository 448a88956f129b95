#!/usr/bin/env bash
# Sets up and starts pmu-server on its embedded default: ./pmu-data on 127.0.0.1:7690.
# On first start the server creates pmu-data/secrets with a random secret for client 'admin' and
# pmu-data/admin.secret holding it, which pmuctl uses by default from this directory.
# Extra arguments go to pmu-server (e.g. --listen 127.0.0.1:7700).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-deps.sh
swift build -c release --product pmu-server
swift build -c release --product pmuctl
echo "pmuctl is at $(swift build -c release --show-bin-path)/pmuctl" >&2
exec "$(swift build -c release --show-bin-path)/pmu-server" "$@"
