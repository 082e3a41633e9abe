#!/usr/bin/env bash
# The browser test: starts the real system with scripts/run.sh (on the debug binaries the test
# build made, on free ports, in a temporary data dir), drives the web page in headless Chromium
# (tests/browser/e2e.cjs), saves a screenshot, and stops everything.
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
cd "$ROOT"
bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
for b in gateway diabetes-svc heart-svc chain-svc; do
  [ -x "$bin/$b" ] || cargo build --quiet --bin "$b"
done
base="$(python3 - <<'PY'
import random, socket
# Four consecutive free ports (gateway, diabetes-svc, heart-svc, chain-svc); a base whose ports
# are taken is skipped.
for _ in range(200):
    base = random.randrange(20000, 60000)
    socks = []
    try:
        for p in range(base, base + 4):
            s = socket.socket(); socks.append(s); s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        for s in socks: s.close()
    print(base); break
else:
    raise SystemExit("no four consecutive free ports found")
PY
)"
data="$(mktemp -d)"
export MEDCHAIN_ARTIFACTS="${MEDCHAIN_ARTIFACTS:-$ROOT/.data/artifacts}"
mkdir -p "$MEDCHAIN_ARTIFACTS"
MEDCHAIN_BIN_DIR="$bin" MEDCHAIN_PORT_BASE="$base" MEDCHAIN_DATA_DIR="$data" \
  "$ROOT/scripts/run.sh" > "$data/run.log" 2>&1 &
system=$!
cleanup() {
  kill -TERM "$system" 2>/dev/null || true
  wait "$system" 2>/dev/null || true
  cp "$data/run.log" "$MEDCHAIN_ARTIFACTS/browser-system.log" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
for _ in $(seq 1 600); do
  grep -q "medchain is up" "$data/run.log" && break
  kill -0 "$system" 2>/dev/null || { cat "$data/run.log" >&2; echo "browser: 0 passed, 1 failed"; exit 1; }
  sleep 0.2
done
grep -q "medchain is up" "$data/run.log" || { cat "$data/run.log" >&2; echo "browser: 0 passed, 1 failed"; exit 1; }
MEDCHAIN_DEV_KEY="$(cat "$data/dev-api-key")" node "$ROOT/tests/browser/e2e.cjs" "http://127.0.0.1:$base/"
