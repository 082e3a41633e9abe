#!/usr/bin/env bash
# Runs the whole system locally on its embedded defaults (bundled models, local chain):
# builds release binaries, starts chain-svc, diabetes-svc, heart-svc and the gateway on
# loopback, each with its own credentials, waits until each answers /healthz, prints the URL,
# and stops everything on Ctrl-C.
#   MEDCHAIN_BIN_DIR=<dir>     use the binaries there instead of building release ones
#                              (the browser test runs the debug binaries of the test build)
#   MEDCHAIN_PORT_BASE=<port>  gateway on it, diabetes-svc +1, heart-svc +2, chain-svc +3
#                              (default 8080)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"

if [ -n "${MEDCHAIN_BIN_DIR:-}" ]; then
  bin="$MEDCHAIN_BIN_DIR"
else
  say "building release binaries (the first build takes several minutes)"
  cargo build --release --quiet --bins
  bin="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi
base="${MEDCHAIN_PORT_BASE:-8080}"
export GATEWAY__SERVER__PORT="$base" DIABETES__SERVER__PORT="$((base + 1))"
export HEART__SERVER__PORT="$((base + 2))" CHAIN__SERVER__PORT="$((base + 3))"
export GATEWAY__UPSTREAMS__DIABETES="http://127.0.0.1:$((base + 1))"
export GATEWAY__UPSTREAMS__HEART="http://127.0.0.1:$((base + 2))"
export GATEWAY__UPSTREAMS__CHAIN="http://127.0.0.1:$((base + 3))"
export DIABETES__CHAIN__URL="http://127.0.0.1:$((base + 3))" HEART__CHAIN__URL="http://127.0.0.1:$((base + 3))"

export MEDCHAIN_DATA_DIR="${MEDCHAIN_DATA_DIR:-$ROOT/.data}"
mkdir -p "$MEDCHAIN_DATA_DIR"
# One credential per pair of services (docs/security.md), made once into the data dir (mode
# 0600) by `gateway new-credentials`; each service reads the variables of its own prefix.
# Your own values win: any *__AUTH__* variable already set is kept.
cred_file="$MEDCHAIN_DATA_DIR/credentials.env"
[ -s "$cred_file" ] || (umask 077 && "$bin/gateway" new-credentials > "$cred_file")
while IFS='=' read -r name value; do
  case "$name" in ''|'#'*) continue ;; esac
  [ -n "${!name:-}" ] || export "$name=$value"
done < "$cred_file"
# Who may call the API and use the page: your keys if GATEWAY__CLIENTS__KEYS is set, else a
# development key (role clinician) made once into the data dir (mode 0600); only its hash is
# given to the gateway.
dev_key_file="$MEDCHAIN_DATA_DIR/dev-api-key"
if [ -z "${GATEWAY__CLIENTS__KEYS:-}" ]; then
  [ -s "$dev_key_file" ] || (umask 077 && python3 -c 'import secrets; print("mk_" + secrets.token_hex(32), end="")' > "$dev_key_file")
  GATEWAY__CLIENTS__KEYS="dev:clinician:$(python3 - "$dev_key_file" <<'PY'
import hashlib, sys
print(hashlib.sha256(open(sys.argv[1], "rb").read().strip()).hexdigest(), end="")
PY
)"
  export GATEWAY__CLIENTS__KEYS
fi

pids=()
stop() {
  trap - INT TERM EXIT
  say "stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

start() { # name port
  "$bin/$1" &
  pids+=("$!")
  for _ in $(seq 1 300); do
    if python3 - "$2" <<'PY' 2>/dev/null; then return 0; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=1)
PY
    kill -0 "${pids[-1]}" 2>/dev/null || { echo "$1 exited during start-up" >&2; exit 1; }
    sleep 0.1
  done
  echo "$1 did not answer /healthz on port $2" >&2
  exit 1
}

start chain-svc "$((base + 3))"
start diabetes-svc "$((base + 1))"
start heart-svc "$((base + 2))"
start gateway "$base"
say "medchain is up: open http://127.0.0.1:$base/  (Ctrl-C stops everything)"
if [ -s "$dev_key_file" ] && [[ "$GATEWAY__CLIENTS__KEYS" == dev:clinician:* ]]; then
  say "development sign-in (a clinician key, $dev_key_file): http://127.0.0.1:$base/#key=$(cat "$dev_key_file")"
fi
say "service credentials: $cred_file  (metrics: curl -H \"x-internal-token: \$GATEWAY__AUTH__ACCEPT__MONITOR\" http://127.0.0.1:$base/metrics after sourcing it)"
wait -n "${pids[@]}" || true
