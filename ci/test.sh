#!/usr/bin/env bash
# Every test: unit and integration tests (the real binary on malloc, null and uring bdevs, real
# files with O_DIRECT, the JSON-RPC server with hostile clients), the criterion benches compiled,
# SPDK's own `spdk-rpc` client end to end, the Python bindings' pytest suite against a live
# appliance, and a real QEMU guest (TCG) on the vhost-user-blk export. Installs what a fresh
# machine lacks (jq from Debian; spdk and pytest from PyPI into target/venv; QEMU, busybox and a
# Debian kernel through ci/guest/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "ci/test.sh: needs a Rust toolchain (cargo); install it with rustup" >&2
  exit 2
fi
if ! command -v jq >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq jq >/dev/null
fi
export CARGO_TERM_COLOR=never
# The disk this runs on: a full one fails the build with ENOSPC, and this line says why.
df -h . | tail -1 | awk '{print "ci/test.sh: " $4 " free on " $6}'
cargo test --locked
# The log-structured store's crash simulation over 1,000 seeds (cargo test runs 200).
UNBLEND_SIM_SEEDS=1000 cargo test --locked --lib crash_simulation
cargo bench --locked --no-run --quiet

VENV=target/venv
if [ ! -x "$VENV/bin/pytest" ] || [ ! -x "$VENV/bin/spdk-rpc" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q spdk pytest
fi
export UNBLEND_BIN="$PWD/target/debug/unblend"   # built by cargo test above
VENV="$VENV" ci/spdk-client-e2e.sh
(cd bindings/python && "../../$VENV/bin/python" -m pytest -q tests)
# A QEMU guest on the vhost-user-blk export: fio verify, ext4, and an appliance killed under I/O.
ci/vhost-guest.sh "$UNBLEND_BIN"
