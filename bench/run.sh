#!/usr/bin/env bash
# The benchmark command. Installs what is missing (scripts/setup.sh), builds the release
# binaries and medchain-bench, and runs it; every figure it writes comes from that run.
#   bench/run.sh              system run: start-up, memory per process, latency through the
#                             gateway and direct, the ONNX Runtime floor, 512 MB cgroup run
#                             → bench/results/system.json and bench/BENCHMARKS.md
#   bench/run.sh soak         soak run (100,000 tabular + 2,000 image requests; not in CI)
#                             → bench/results/soak.json and bench/BENCHMARKS.md
#   bench/run.sh --help       every option
# A full system run takes about 10 minutes on 2 cores; the soak run about 15.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
say "building release binaries (the first build takes several minutes)"
cargo build --release --quiet --bins
exec "${CARGO_TARGET_DIR:-$ROOT/target}/release/medchain-bench" "$@"
