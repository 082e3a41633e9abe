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

# shellcheck source=scripts/containers-lib.sh
source "$ROOT/scripts/containers-lib.sh"
containers_engine
export MEDCHAIN_COMPOSE_PROJECT="${MEDCHAIN_COMPOSE_PROJECT:-medchaintest}"
containers_build "$MEDCHAIN_COMPOSE_PROJECT"

say "compose tests (pytest)"
set +e
"$PYENV/bin/python" -m pytest -q tests/containers 2>&1 | tee "$TOOLS/containers.log"
status=${PIPESTATUS[0]}

# The benchmark command's container mode on the same images, quick (the test build's
# medchain-bench, few requests; its figures are thrown away): every phase ran, no request
# failed, every container's peak was read, none was OOM-killed or restarted.
say "benchmark container mode, quick (figures not kept)"
bench_out="$(mktemp -d)"
"${CARGO_TARGET_DIR:-$ROOT/target}/debug/medchain-bench" containers --quick \
  --project "$MEDCHAIN_COMPOSE_PROJECT" --out "$bench_out" >"$bench_out/run.log" 2>&1
bench_status=$?
if [ "$bench_status" = 0 ]; then
  "$PYENV/bin/python" tests/containers/check_bench.py "$bench_out/results/containers-quick.json"
  bench_status=$?
else
  tail -n 30 "$bench_out/run.log" >&2
fi
rm -rf "$bench_out"
set -e
reported=1
python3 - "$TOOLS/containers.log" "$bench_status" <<'PY'
import re, sys
last = open(sys.argv[1]).read().strip().splitlines()[-1:] or [""]
counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|failed|error)", last[0]))
passed, failed = counts.get("passed", 0), counts.get("failed", 0) + counts.get("error", 0)
if sys.argv[2] == "0":
    passed += 1
else:
    failed += 1
print(f"containers: {passed} passed, {failed} failed")
PY
[ "$status" = 0 ] && [ "$bench_status" = 0 ]
