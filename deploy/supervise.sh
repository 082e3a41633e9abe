#!/usr/bin/env bash
# medchain in one container (the single-instance image, deploy/single.Dockerfile; README →
# Deploying): starts chain-svc, diabetes-svc and heart-svc on loopback ports and the gateway on
# $PORT (the only port that listens beyond loopback), one after the other, each once the one
# before listens. It stays in the foreground as the container's main process:
#   - SIGTERM / SIGINT: every service gets SIGTERM (each drains its requests; chain-svc stops
#     its embedded anvil), stragglers get SIGKILL after MEDCHAIN_STOP_GRACE_SECS; exit 0;
#   - a service that ends on its own: the others are stopped the same way and the supervisor
#     exits non-zero, so the platform restarts the whole instance (Render and Docker's
#     `restart:` do) — nothing runs half a system. Checked every 0.5 s.
#
#   PORT                         the gateway's port (default 8080)
#   MEDCHAIN_INTERNAL_PORT_BASE  diabetes-svc on it, heart-svc +1, chain-svc +2 (default 18081)
#   MEDCHAIN_BIN_DIR             where the four binaries are (default /usr/local/bin)
#   <SERVICE>__AUTH__ACCEPT__<CALLER>, <SERVICE>__AUTH__SEND__<CALLEE>
#                                the services' credentials, one per pair (docs/security.md);
#                                default: fresh random ones at every start. Set
#                                GATEWAY__AUTH__ACCEPT__MONITOR to read the gateway's /metrics.
#   HEART__MODELS__IMAGE__CARD   default heart/ecg.int8.card.json: the int8 ECG model is what
#                                makes the four fit one 512 MB instance with headroom
#   DIABETES__IMAGES__DECODE_BUDGET_MB, HEART__IMAGES__DECODE_BUDGET_MB
#                                default 64 (128 in a service of its own): two services share
#                                one instance's memory here; 8-bit RGB PNGs up to ~21 MP
#   DIABETES__IMAGES__BUFFER_MB, HEART__IMAGES__BUFFER_MB
#                                default 32 (64 in a service of its own): upload bytes held
# Every other setting is the services' own (<PREFIX>__SECTION__KEY, README → Configuration).
set -uo pipefail

bin="${MEDCHAIN_BIN_DIR:-/usr/local/bin}"
public_port="${PORT:-8080}"
base="${MEDCHAIN_INTERNAL_PORT_BASE:-18081}"
grace="${MEDCHAIN_STOP_GRACE_SECS:-15}"
# Every service honours PORT (Render sets it); here it is the gateway's alone.
unset PORT

say() { printf 'supervise: %s\n' "$*" >&2; }

diabetes=$base heart=$((base + 1)) chain=$((base + 2))
for p in "$public_port" "$diabetes" "$heart" "$chain"; do
  case "$p" in '' | *[!0-9]*) say "not a port number: '$p'"; exit 2 ;; esac
done

# A fresh credential per pair of services, but for the ones set from outside.
while IFS='=' read -r name value; do
  case "$name" in ''|'#'*) continue ;; esac
  [ -n "${!name:-}" ] || export "$name=$value"
done < <("$bin/gateway" new-credentials)
export DIABETES__SERVER__HOST=127.0.0.1 DIABETES__SERVER__PORT="$diabetes"
export HEART__SERVER__HOST=127.0.0.1 HEART__SERVER__PORT="$heart"
export CHAIN__SERVER__HOST=127.0.0.1 CHAIN__SERVER__PORT="$chain"
export GATEWAY__SERVER__HOST="${GATEWAY__SERVER__HOST:-0.0.0.0}" GATEWAY__SERVER__PORT="$public_port"
export GATEWAY__UPSTREAMS__DIABETES="http://127.0.0.1:$diabetes"
export GATEWAY__UPSTREAMS__HEART="http://127.0.0.1:$heart"
export GATEWAY__UPSTREAMS__CHAIN="http://127.0.0.1:$chain"
export DIABETES__CHAIN__URL="http://127.0.0.1:$chain" HEART__CHAIN__URL="http://127.0.0.1:$chain"
export HEART__MODELS__IMAGE__CARD="${HEART__MODELS__IMAGE__CARD:-heart/ecg.int8.card.json}"
export DIABETES__IMAGES__DECODE_BUDGET_MB="${DIABETES__IMAGES__DECODE_BUDGET_MB:-64}"
export HEART__IMAGES__DECODE_BUDGET_MB="${HEART__IMAGES__DECODE_BUDGET_MB:-64}"
export DIABETES__IMAGES__BUFFER_MB="${DIABETES__IMAGES__BUFFER_MB:-32}"
export HEART__IMAGES__BUFFER_MB="${HEART__IMAGES__BUFFER_MB:-32}"

names=() pids=() stopping=""
trap 'stopping=1' TERM INT

stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  local deadline=$((SECONDS + grace))
  while [ "$SECONDS" -lt "$deadline" ]; do
    local alive=""
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ -z "$alive" ] && break
    sleep 0.2
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  wait 2>/dev/null
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() { # name port
  "$bin/$1" &
  pids+=("$!") names+=("$1")
  say "started $1 (pid $!, port $2)"
  local i
  for i in $(seq 1 600); do
    listening "$2" && return 0
    [ -n "$stopping" ] && return 1
    kill -0 "$!" 2>/dev/null || return 1
    sleep 0.1
  done
  say "$1 did not listen on port $2 within 60 s"
  return 1
}

up=""
if start chain-svc "$chain" && start diabetes-svc "$diabetes" && start heart-svc "$heart" \
  && start gateway "$public_port"; then
  up=1
  say "medchain is up: gateway on port $public_port"
  [ -n "${GATEWAY__CLIENTS__KEYS:-}" ] ||
    say "GATEWAY__CLIENTS__KEYS is empty: every API call is refused until callers' keys are configured (gateway new-key <role> <id>)"
fi
# Polled, not `wait -n`: a service that ended before `wait -n` began would go unnoticed (bash
# has already collected it). The short sleep is waited on in the background, so a signal
# interrupts it at once.
ended=""
while [ -n "$up" ] && [ -z "$stopping" ] && [ -z "$ended" ]; do
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || ended=1; done
  [ -z "$ended" ] && { sleep 0.5 & wait "$!"; }
done
if [ -n "$stopping" ]; then
  say "stopping"
  stop_all
  exit 0
fi
status=1
for i in "${!pids[@]}"; do
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then
    wait "${pids[$i]}"
    s=$?
    say "${names[$i]} ended (status $s): stopping the others"
    [ "$s" -ne 0 ] && status=$s
  fi
done
stop_all
exit "$status"
