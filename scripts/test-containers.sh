#!/usr/bin/env bash
# The container test: builds every image here from the real Dockerfiles (the base images made
# locally, as no registry is reachable: tests/containers/base-images.sh), runs docker-compose
# with heart-svc scaled to three, and checks the system through the gateway's port, published
# on 127.0.0.1 only (tests/containers/test_compose.py); then runs the single-instance image
# alone under --memory 512m through the benchmark's load phases (tests/containers/test_single.py). Installs and starts a Docker engine
# where it can (Debian's docker.io, as root). Ends with "containers: N passed, N failed".
#   scripts/test-containers.sh            everything
#   MEDCHAIN_CONTAINERS_KEEP=1 ...        leave the compose project running afterwards
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
# A failure before the tests (engine, base images, a build) counts as one failed test.
reported=0
trap '[ "$reported" = 1 ] || echo "containers: 0 passed, 1 failed (stopped before the tests)"' EXIT

# The engine: Debian's packages (dockerd, containerd, runc; docker-compose 1.29).
if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null; then
  say "Docker engine: installing Debian's docker.io and docker-compose"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose >/dev/null
fi
# Debian's client builds with the engine's own BuildKit; a newer client elsewhere on PATH may
# want a buildx plugin this machine does not have.
shim="$TOOLS/docker-shim"
mkdir -p "$shim"
[ -x /usr/bin/docker ] && ln -sf /usr/bin/docker "$shim/docker"
export PATH="$shim:$PATH"
if ! docker info >/dev/null 2>&1; then
  say "Docker engine: starting dockerd (log: $TOOLS/dockerd.log)"
  (dockerd >"$TOOLS/dockerd.log" 2>&1 &)
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see $TOOLS/dockerd.log" >&2; exit 1; }
fi
export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1

say "base images (made here, not pulled)"
while IFS='=' read -r name value; do export "$name=$value"; done < <(DOCKER=docker MEDCHAIN_TOOLS="$TOOLS" tests/containers/base-images.sh)

say "building the images (docker-compose build, and the single-instance image with each ECG model)"
export MEDCHAIN_COMPOSE_PROJECT="${MEDCHAIN_COMPOSE_PROJECT:-medchaintest}"
started=$(date +%s)
docker-compose -p "$MEDCHAIN_COMPOSE_PROJECT" build --quiet
for ecg in int8 fp32; do
  tag="$MEDCHAIN_COMPOSE_PROJECT/single"
  [ "$ecg" = int8 ] || tag="$tag-$ecg"
  docker build --quiet -f deploy/single.Dockerfile --build-arg "ECG_MODEL=$ecg" \
    --build-arg RUST_IMAGE --build-arg PYTHON_IMAGE --build-arg NODE_IMAGE --build-arg DEBIAN_IMAGE \
    -t "$tag" . >/dev/null
done
say "images built in $(( $(date +%s) - started )) s"

say "compose tests (pytest)"
set +e
"$PYENV/bin/python" -m pytest -q tests/containers 2>&1 | tee "$TOOLS/containers.log"
status=${PIPESTATUS[0]}
set -e
reported=1
python3 - "$TOOLS/containers.log" <<'PY'
import re, sys
last = open(sys.argv[1]).read().strip().splitlines()[-1:] or [""]
counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|failed|error)", last[0]))
print(f"containers: {counts.get('passed', 0)} passed, {counts.get('failed', 0) + counts.get('error', 0)} failed")
PY
exit "$status"
