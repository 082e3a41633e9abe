#!/usr/bin/env bash
# Runs the whole test suite: lints, the model pipeline's tests, and the Rust unit, integration
# and end-to-end tests. Installs what the tests need first (scripts/setup.sh --test). Ends with
# one line counting every test run: "N passed, N failed".
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
"$ROOT/scripts/setup.sh" --test
cd "$ROOT"
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

say "cargo build --bins (the pipeline's end-to-end test serves converted models with diabetes-svc)"
cargo build --workspace --bins --quiet

say "model pipeline and deployment-file tests (pytest)"
set +e
"$PYENV/bin/python" -m pytest -q models/tests tests/deploy tests/layout chain-svc/verifier bench/baseline 2>&1 | tee "$logs/pytest.log"
py_status=${PIPESTATUS[0]}

say "Rust tests (cargo test)"
cargo test --workspace --no-fail-fast 2>&1 | tee "$logs/cargo.log"
rs_status=${PIPESTATUS[0]}

say "browser test (headless Chromium against the running system)"
tests/browser/run.sh 2>&1 | tee "$logs/browser.log"
br_status=${PIPESTATUS[0]}

say "benchmark command smoke run (debug binaries, few requests; figures not kept)"
bench/smoke.sh 2>&1 | tee "$logs/bench.log"
bench_status=${PIPESTATUS[0]}

say "container test (real images, docker-compose with heart-svc scaled; scripts/test-containers.sh)"
if [ "$(id -u)" = 0 ] || docker info >/dev/null 2>&1; then
  scripts/test-containers.sh 2>&1 | tee "$logs/containers.log"
  ct_status=${PIPESTATUS[0]}
else
  # Installing and starting an engine needs root; without one the test cannot run here.
  echo "containers: not run (no Docker engine, and not root to install one)" | tee "$logs/containers.log"
  ct_status=0
fi
set -e

python3 - "$logs/pytest.log" "$logs/cargo.log" "$logs/browser.log" "$logs/bench.log" "$logs/containers.log" <<'PY'
import re, sys
passed = failed = 0
py = open(sys.argv[1]).read()
for n, kind in re.findall(r"(\d+) (passed|failed|error)", py.splitlines()[-1] if py.strip() else ""):
    if kind == "passed":
        passed += int(n)
    else:
        failed += int(n)
for p, f in re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed", open(sys.argv[2]).read()):
    passed += int(p)
    failed += int(f)
for log, name in ((sys.argv[3], "browser"), (sys.argv[4], "bench"), (sys.argv[5], "containers")):
    for p, f in re.findall(name + r": (\d+) passed, (\d+) failed", open(log).read()):
        passed += int(p)
        failed += int(f)
print(f"{passed} passed, {failed} failed")
PY
[ "$py_status" = 0 ] && [ "$rs_status" = 0 ] && [ "$br_status" = 0 ] && [ "$bench_status" = 0 ] &&
  [ "$ct_status" = 0 ]
