# shellcheck shell=bash
# Sourced by scripts/test-containers.sh and bench/run.sh (after scripts/lib.sh): a Docker
# engine, the base images made here, and every image built from the real Dockerfiles.

# The engine: Debian's packages (dockerd, containerd, runc; docker-compose 1.29), installed
# when missing (as root) and started when not running. Puts Debian's client first on PATH:
# it builds with the engine's own BuildKit, where a newer client elsewhere on PATH may want a
# buildx plugin this machine does not have.
containers_engine() {
  if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null; then
    say "Docker engine: installing Debian's docker.io and docker-compose"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose >/dev/null
  fi
  local shim="$TOOLS/docker-shim"
  mkdir -p "$shim"
  [ -x /usr/bin/docker ] && ln -sf /usr/bin/docker "$shim/docker"
  export PATH="$shim:$PATH"
  if ! docker info >/dev/null 2>&1; then
    say "Docker engine: starting dockerd (log: $TOOLS/dockerd.log)"
    (dockerd >"$TOOLS/dockerd.log" 2>&1 &)
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start; see $TOOLS/dockerd.log" >&2; return 1; }
  fi
  export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
}

# Every image, for compose project $1: docker-compose build, and the single-instance image
# with each ECG model ($1/single, $1/single-fp32). The base images are made locally first
# (tests/containers/base-images.sh; no registry is reachable here) and passed as build
# arguments; Docker's layer cache makes a second build quick.
containers_build() {
  local project="$1" name value
  say "base images (made here, not pulled)"
  while IFS='=' read -r name value; do export "$name=$value"; done \
    < <(DOCKER=docker MEDCHAIN_TOOLS="$TOOLS" "$ROOT/tests/containers/base-images.sh")
  say "building the images (docker-compose build, and the single-instance image with each ECG model)"
  local started tag ecg
  started=$(date +%s)
  (cd "$ROOT" && docker-compose -p "$project" build --quiet)
  for ecg in int8 fp32; do
    tag="$project/single"
    [ "$ecg" = int8 ] || tag="$tag-$ecg"
    (cd "$ROOT" && docker build --quiet -f deploy/single.Dockerfile --build-arg "ECG_MODEL=$ecg" \
      --build-arg RUST_IMAGE --build-arg PYTHON_IMAGE --build-arg NODE_IMAGE --build-arg DEBIAN_IMAGE \
      -t "$tag" . >/dev/null)
  done
  say "images built in $(( $(date +%s) - started )) s"
}
