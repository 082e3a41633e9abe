#!/usr/bin/env bash
# Makes, on this machine's Docker engine, the base images the Dockerfiles build FROM, without a
# registry (none is reachable here): a Debian bookworm root made with debootstrap, and on it
# Python (Debian's 3.11), Rust (this machine's own toolchain) and Node.js (this machine's own)
# images. Named medchain-local/*, never like the official images they stand in for; the
# container test passes them to the Dockerfiles' base-image build arguments. Idempotent: an
# image whose recipe has not changed is kept. Test-time only: users build from the official
# images. Needs root (debootstrap, docker).
#   tests/containers/base-images.sh        make what is missing, print the build arguments
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="${MEDCHAIN_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/medchain/tools}"
DOCKER="${DOCKER:-docker}"
RUST_VERSION="$(sed -n 's/^channel = "\(.*\)"/\1/p' "$ROOT/rust-toolchain.toml")"
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# What each image is made from: a change of recipe makes the image again.
recipe="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
fresh() { # image: present and of this recipe
  [ "$("$DOCKER" image inspect -f '{{ index .Config.Labels "medchain.recipe" }}' "$1" 2>/dev/null)" = "$recipe" ]
}
build() { # image context-dir (Dockerfile inside)
  DOCKER_BUILDKIT=1 "$DOCKER" build --quiet --label "medchain.recipe=$recipe" -t "$1" "$2" >/dev/null
}

# Debian: debootstrap's minbase root, with CA certificates that include this machine's own (the
# egress to the package registries is TLS-inspected here; see how pip is configured).
debian=medchain-local/debian:bookworm-slim
if ! fresh "$debian"; then
  rootfs="$TOOLS/rootfs/bookworm"
  if [ ! -x "$rootfs/bin/bash" ]; then
    command -v debootstrap >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    say "Debian bookworm root: debootstrap --variant=minbase into $rootfs"
    rm -rf "$rootfs.part" && mkdir -p "$(dirname "$rootfs")"
    debootstrap --variant=minbase bookworm "$rootfs.part" http://deb.debian.org/debian >/dev/null
    mv "$rootfs.part" "$rootfs"
  fi
  say "image $debian"
  # Slim as Debian's own -slim images: no package archives, documentation or translations.
  tar -C "$rootfs" -c --exclude='./var/cache/apt/archives/*.deb' --exclude='./var/lib/apt/lists/*' \
    --exclude='./usr/share/doc/*' --exclude='./usr/share/man/*' --exclude='./usr/share/info/*' \
    --exclude='./usr/share/locale/*' . |
    "$DOCKER" import - medchain-local/debian-rootfs:bookworm >/dev/null
  ctx="$(mktemp -d)"
  cat /usr/local/share/ca-certificates/*.crt > "$ctx/host-ca.crt" 2>/dev/null || : > "$ctx/host-ca.crt"
  cat > "$ctx/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  cat > "$ctx/Dockerfile" <<'DF'
FROM medchain-local/debian-rootfs:bookworm
COPY host-ca.crt /usr/local/share/ca-certificates/host-ca.crt
# As Debian's official images: apt keeps no package caches or archives in a layer.
COPY docker-clean /etc/apt/apt.conf.d/docker-clean
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
CMD ["bash"]
DF
  build "$debian" "$ctx" && rm -rf "$ctx"
fi

# Python: Debian's python3 (3.11) with pip, as `python` and `pip`.
python=medchain-local/python:3.11-bookworm
if ! fresh "$python"; then
  say "image $python"
  ctx="$(mktemp -d)"
  cat > "$ctx/Dockerfile" <<DF
FROM $debian
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-pip python-is-python3 \
 && ln -s /usr/bin/pip3 /usr/local/bin/pip \
 && rm -rf /var/lib/apt/lists/*
DF
  build "$python" "$ctx" && rm -rf "$ctx"
fi

# Rust: this machine's toolchain (the repository's rust-toolchain.toml), its compiler and
# standard library only, with the C toolchain crates need; laid out as the official image.
rust="medchain-local/rust:$RUST_VERSION-bookworm"
if ! fresh "$rust"; then
  say "image $rust"
  toolchain="$(rustup which rustc --toolchain "$RUST_VERSION" | xargs dirname | xargs dirname)"
  ctx="$(mktemp -d)"
  mkdir -p "$ctx/toolchain"
  cp -a "$toolchain/bin" "$toolchain/lib" "$ctx/toolchain/"
  cat > "$ctx/Dockerfile" <<DF
FROM $debian
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/rust/bin:/usr/local/cargo/bin:\$PATH
RUN mkdir -p /usr/local/cargo && cargo --version && rustc --version
DF
  build "$rust" "$ctx" && rm -rf "$ctx"
fi

# Node.js: this machine's own (npm from it), for installing anvil's npm package.
node_version="$(node --version | sed 's/^v\([0-9]*\).*/\1/')"
node="medchain-local/node:$node_version-bookworm"
if ! fresh "$node"; then
  say "image $node"
  ctx="$(mktemp -d)"
  node_bin="$(readlink -f "$(command -v node)")"
  npm_dir="$(dirname "$node_bin")/../lib/node_modules/npm"
  mkdir -p "$ctx/node/bin" "$ctx/node/lib/node_modules"
  cp -a "$node_bin" "$ctx/node/bin/node"
  cp -a "$npm_dir" "$ctx/node/lib/node_modules/npm"
  cat > "$ctx/Dockerfile" <<DF
FROM $debian
COPY node /usr/local
# Node reads the system's CA bundle (with this machine's own) whatever npm's prefix is.
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && node --version && npm --version
DF
  build "$node" "$ctx" && rm -rf "$ctx"
fi

# The build arguments that point the Dockerfiles at these images.
printf '%s\n' "DEBIAN_IMAGE=$debian" "PYTHON_IMAGE=$python" "RUST_IMAGE=$rust" "NODE_IMAGE=$node"
