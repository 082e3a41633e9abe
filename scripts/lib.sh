# shellcheck shell=bash
# Shared by the scripts: where tools live and how to say what is happening.
# MEDCHAIN_TOOLS (default: <repo>/.tools) holds everything set-up installs; it is git-ignored.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${MEDCHAIN_TOOLS:-$ROOT/.tools}"
ORT_VERSION="1.31.1"
ORT_LIB="$TOOLS/onnxruntime-$ORT_VERSION/libonnxruntime.so.$ORT_VERSION"
# shellcheck disable=SC2034  # used by the scripts that source this file
{
  PYENV="$TOOLS/pyenv"
  NODE_PREFIX="$TOOLS/node"
  ANVIL_VERSION="1.7.1"
  SOLC_VERSION="0.8.30"
  PLAYWRIGHT_VERSION="1.65.1"
}
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ORT_LIB}"
export MEDCHAIN_NODE_MODULES="${MEDCHAIN_NODE_MODULES:-$NODE_PREFIX/node_modules}"
export MEDCHAIN_ANVIL="${MEDCHAIN_ANVIL:-$MEDCHAIN_NODE_MODULES/@foundry-rs/anvil-linux-amd64/bin/anvil}"

# The browser tests' Chromium: Debian's package unless MEDCHAIN_CHROMIUM names another.
export MEDCHAIN_CHROMIUM="${MEDCHAIN_CHROMIUM:-/usr/bin/chromium}"
# The test environment's Python (with the real protocol clients, tests/clients), for the Rust
# tests that drive the system with them.
export MEDCHAIN_PYTHON="${MEDCHAIN_PYTHON:-$PYENV/bin/python}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
