#!/usr/bin/env bash
# Installs what medchain needs on a machine that has only Rust, Python 3 + pip and Node + npm,
# into git-ignored folders. Idempotent: a second run installs nothing.
#   scripts/setup.sh            everything the system needs to run
#   scripts/setup.sh --test     also what the tests use: the Python pipeline environment,
#                               playwright-core (npm) and Chromium (Debian's package)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mkdir -p "$TOOLS"

with_tests=0
for arg in "$@"; do
  case "$arg" in
    --test) with_tests=1 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done

# ONNX Runtime shared library, taken from the official PyPI wheel (no other host is reachable).
if [ -f "$ORT_LIB" ]; then
  say "ONNX Runtime $ORT_VERSION: present ($ORT_LIB)"
else
  say "ONNX Runtime $ORT_VERSION: extracting libonnxruntime from the PyPI wheel"
  dl="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$dl" "onnxruntime==$ORT_VERSION"
  python3 - "$dl" "$ORT_LIB" <<'PY'
import glob, os, shutil, sys, zipfile
dl, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(dl, "onnxruntime-*.whl"))[0]
name = "onnxruntime/capi/" + os.path.basename(dest)
os.makedirs(os.path.dirname(dest), exist_ok=True)
with zipfile.ZipFile(wheel) as z, z.open(name) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
os.replace(dest + ".part", dest)
PY
  rm -rf "$dl"
fi

# anvil (local chain) and solc (solcjs, offline) from the npm registry, pinned.
node_ok() {
  [ -x "$MEDCHAIN_ANVIL" ] && [ -f "$MEDCHAIN_NODE_MODULES/solc/package.json" ] &&
    grep -q "\"version\": \"$SOLC_VERSION\"" "$MEDCHAIN_NODE_MODULES/solc/package.json" &&
    "$MEDCHAIN_ANVIL" --version 2>/dev/null | grep -q "$ANVIL_VERSION"
}
if node_ok; then
  say "anvil $ANVIL_VERSION and solc $SOLC_VERSION: present ($NODE_PREFIX)"
else
  say "anvil $ANVIL_VERSION and solc $SOLC_VERSION: installing from npm into $NODE_PREFIX"
  mkdir -p "$NODE_PREFIX"
  [ -f "$NODE_PREFIX/package.json" ] || echo '{"private": true}' > "$NODE_PREFIX/package.json"
  npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --silent \
    "solc@$SOLC_VERSION" "@foundry-rs/anvil-linux-amd64@$ANVIL_VERSION"
  node_ok || { echo "anvil/solc install did not produce working binaries" >&2; exit 1; }
fi

if [ "$with_tests" = 1 ]; then
  # Every Python requirement of the tests, in one environment.
  reqs=(models/requirements.txt tests/deploy/requirements.txt chain-svc/verifier/requirements.txt
    tests/clients/requirements.txt bench/baseline/requirements.txt)
  stamp="$PYENV/.requirements.sha256"
  want="$(cd "$ROOT" && cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "Python test environment: present ($PYENV)"
  else
    say "Python test environment: installing ${reqs[*]} into $PYENV"
    python3 -m venv "$PYENV"
    "$PYENV/bin/pip" install --quiet --upgrade pip
    (cd "$ROOT" && "$PYENV/bin/pip" install --quiet "${reqs[@]/#/-r}")
    echo "$want" > "$stamp"
  fi
fi
# Debian packages, through sudo when not root.
apt_install() {
  local sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "$@"
}
if [ "$with_tests" = 1 ]; then
  pw="$MEDCHAIN_NODE_MODULES/playwright-core/package.json"
  if [ -f "$pw" ] && grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$pw"; then
    say "playwright-core $PLAYWRIGHT_VERSION: present"
  else
    say "playwright-core $PLAYWRIGHT_VERSION: installing from npm into $NODE_PREFIX"
    npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --silent \
      "playwright-core@$PLAYWRIGHT_VERSION"
  fi
  if [ -x "$MEDCHAIN_CHROMIUM" ]; then
    say "Chromium: present ($MEDCHAIN_CHROMIUM)"
  else
    say "Chromium: installing Debian's chromium package (apt-get)"
    apt_install chromium
    [ -x "$MEDCHAIN_CHROMIUM" ] || { echo "chromium did not install at $MEDCHAIN_CHROMIUM" >&2; exit 1; }
  fi
fi
if [ "$with_tests" = 1 ]; then
  # kubectl with its built-in kustomize renders deploy/k8s for the deployment tests. The
  # machines this runs on have it; elsewhere apt's `kubectl` package (Kubernetes' or Google's
  # apt repository) where one is configured. Debian's own kubernetes-client (1.20) is too old:
  # its kustomize predates `labels:` and inline `patches:`.
  if kubectl kustomize --help >/dev/null 2>&1; then
    say "kubectl: present ($(command -v kubectl))"
  else
    say "kubectl: installing apt's kubectl package"
    apt_install kubectl ||
      echo "kubectl is not installable here: the Kubernetes package tests will fail and say so" >&2
  fi
fi
say "set-up complete"
