#!/usr/bin/env bash
# Runs the whole test suite: lints, Rust unit + integration + end-to-end tests, and the model
# pipeline's tests. Installs what the tests need first (scripts/setup.sh --test).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
"$ROOT/scripts/setup.sh" --test
cd "$ROOT"

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

say "model pipeline tests (pytest)"
"$PYENV/bin/python" -m pytest -q models/tests

say "Rust tests (cargo test)"
cargo test --workspace
