#!/usr/bin/env bash
# The benchmark command. Installs what is missing (scripts/setup.sh), builds the release
# binaries and medchain-bench, and runs it; every figure it writes comes from that run.
#   bench/run.sh              system run: start-up, memory per process, latency through the
#                             gateway and direct, the ONNX Runtime floor, 512 MB cgroup run
#                             → bench/results/system.json and bench/BENCHMARKS.md
#   bench/run.sh soak         soak run (100,000 tabular + 2,000 image requests; not in CI)
#                             → bench/results/soak.json and bench/BENCHMARKS.md
#   bench/run.sh containers   container run: builds every image (Docker's engine installed and
#                             started where it can, base images made here), then each
#                             container's cgroup peak per load phase for docker-compose with
#                             heart-svc×3 and the single-instance image under --memory 512m
#                             → bench/results/containers.json and bench/BENCHMARKS.md
#   bench/run.sh decode       the image decode budget: 40-MP PNGs at once to diabetes-svc, with
#                             the shipped budget and without → bench/results/decode.json
#   bench/run.sh v2           the Open Inference Protocol beside the JSON API: binary, JSON and
#                             multipart for a 224×224 image at c=1 and 16; batch 8 vs 8 × 1
#                             → bench/results/v2.json
#   bench/run.sh baseline     the same four models served by a small Python app (FastAPI on
#                             ONNX Runtime, bench/baseline/) beside medchain, same load, same run
#                             → bench/results/baseline.json
#   bench/run.sh --help       every option
# A full system run takes about 10 minutes on 2 cores; the soak run about 15. The container
# run builds the images first (a cold build took 766 s here).
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
if [ "${1:-}" = baseline ]; then
  # The Python baseline runs in the test environment (bench/baseline/requirements.txt).
  "$ROOT/scripts/setup.sh" --test
else
  "$ROOT/scripts/setup.sh"
fi
cd "$ROOT"
if [ "${1:-}" = containers ]; then
  # shellcheck source=scripts/containers-lib.sh
  source "$ROOT/scripts/containers-lib.sh"
  containers_engine
  containers_build medchainbench
  set -- "$@" --project medchainbench
fi
say "building release binaries (the first build takes several minutes)"
if [ "${1:-}" = containers ]; then
  # The services run from their images; only the load generator is built here.
  cargo build --release --quiet --bin medchain-bench
else
  cargo build --release --quiet --bins
fi
exec "${CARGO_TARGET_DIR:-$ROOT/target}/release/medchain-bench" "$@"
