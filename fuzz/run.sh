#!/usr/bin/env bash
# The fuzzers (not part of the test command: their instrumented build alone takes about 12
# minutes on 2 cores; the test command replays the committed corpus instead).
#   fuzz/run.sh [seconds per target]     default 600; both targets run side by side
# Installs cargo-fuzz if missing. Runs on the stable toolchain without a sanitizer (`-s none`):
# Rust's own bounds and overflow checks (debug assertions are on) turn bugs into panics, which
# libFuzzer reports. New inputs are merged into fuzz/corpus/<target> (minimised afterwards);
# a crash is saved under fuzz/artifacts/<target>/ and the script fails.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$ROOT"
secs="${1:-600}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
export CARGO_TARGET_DIR="${MEDCHAIN_FUZZ_TARGET_DIR:-$ROOT/fuzz/target}"
say "building the fuzz targets (instrumented, release)"
cargo fuzz build -s none
say "fuzzing json_request and image_upload for $secs s each"
cargo fuzz run -s none json_request -- -max_total_time="$secs" -timeout=10 -max_len=4096 \
  -print_final_stats=1 2>&1 | grep -E "^(Done|stat::|==|SUMMARY|thread)" | sed 's/^/json_request: /' &
json=$!
cargo fuzz run -s none image_upload -- -max_total_time="$secs" -timeout=10 -max_len=65536 \
  -print_final_stats=1 2>&1 | grep -E "^(Done|stat::|==|SUMMARY|thread)" | sed 's/^/image_upload: /' &
img=$!
status=0
wait "$json" || status=1
wait "$img" || status=1
if compgen -G "fuzz/artifacts/*/*" >/dev/null; then
  say "crashes found:"; ls fuzz/artifacts/*/*; exit 1
fi
say "minimising the corpora"
cargo fuzz cmin -s none json_request >/dev/null 2>&1
cargo fuzz cmin -s none image_upload >/dev/null 2>&1
exit "$status"
