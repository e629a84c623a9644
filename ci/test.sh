#!/usr/bin/env bash
# Every test: unit tests, integration tests (the real binary on malloc, null and uring bdevs,
# uring on real files with O_DIRECT), and the hot-path benchmarks compiled (not run).
# Installs what a fresh machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "ci/test.sh: needs a Rust toolchain (cargo); install it with rustup" >&2
  exit 2
fi
export CARGO_TERM_COLOR=never
cargo test --locked
cargo bench --locked --no-run --quiet
