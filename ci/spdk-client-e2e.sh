#!/usr/bin/env bash
# SPDK's own client (`spdk-rpc`, PyPI package `spdk`) drives a live unblend end to end:
# create malloc/null/uring bdevs and an lvstore with an lvol, list them, iostat, methods,
# reactors, a vhost-user-blk controller on the lvol, save_config, restart from the saved file (the
# pool is examined, not reformatted, and the controller comes back) and compare, load_config into
# a --wait-for-rpc appliance, delete.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-target/venv}
[ -x "$VENV/bin/spdk-rpc" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q spdk; }
RPC="$VENV/bin/spdk-rpc"
UB=${UNBLEND_BIN:-target/release/unblend}
[ -x "$UB" ] || cargo build --release --quiet
W=$(mktemp -d -p "$PWD/target" e2e.XXXXXX)   # under target/: O_DIRECT needs a disk filesystem
SOCK="$W/unblend.sock"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

start() { # start ARGS...: boots unblend and waits for its socket
  UNBLEND_LOG=warn "$UB" serve -r "$SOCK" -d "$W/data" "$@" >>"$W/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do "$RPC" -s "$SOCK" spdk_get_version >/dev/null 2>&1 && return; sleep 0.1; done
  cat "$W/serve.log"; fail "unblend did not start"
}
stop() { # stop via SPDK's kill method; the appliance must exit 0
  "$RPC" -s "$SOCK" spdk_kill_instance SIGTERM >/dev/null
  wait "$pid" || fail "unblend exited non-zero after spdk_kill_instance"
  pid=""
}

start
"$RPC" -s "$SOCK" bdev_malloc_create -b M0 64 512 >/dev/null
"$RPC" -s "$SOCK" bdev_null_create N0 128 4096 >/dev/null
fallocate -l 64M "$W/u0.img"
"$RPC" -s "$SOCK" bdev_uring_create "$W/u0.img" U0 4096 >/dev/null

# An lvstore (pool) and an lvol (volume) on a second file.
fallocate -l 128M "$W/pool.img"
"$RPC" -s "$SOCK" bdev_uring_create "$W/pool.img" P0 4096 >/dev/null
# (The embedded default already has lvstore lvs0 with lvs0/vol0 on Data0.)
"$RPC" -s "$SOCK" bdev_lvol_create_lvstore P0 lvsE -c 1048576 >/dev/null
"$RPC" -s "$SOCK" bdev_lvol_create -l lvsE -t vol0 16 >/dev/null
"$RPC" -s "$SOCK" bdev_lvol_get_lvstores | jq -e 'map(select(.name == "lvsE"))[0].cluster_size == 1048576' >/dev/null \
  || fail "bdev_lvol_get_lvstores"
"$RPC" -s "$SOCK" bdev_lvol_get_lvols | jq -e 'map(.alias) | index("lvsE/vol0") != null' >/dev/null || fail "bdev_lvol_get_lvols"

# The lvstore claims its base: spdk-rpc sees it claimed, and cannot delete it or export it.
"$RPC" -s "$SOCK" bdev_get_bdevs -b P0 | jq -e '.[0].claimed == true and .[0].claim_type == "exclusive_write"' >/dev/null \
  || fail "P0 not shown claimed by lvsE"
if "$RPC" -s "$SOCK" bdev_uring_delete P0 >/dev/null 2>&1; then fail "an lvstore's base bdev was deleted"; fi
if "$RPC" -s "$SOCK" vhost_create_blk_controller vhP P0 >/dev/null 2>&1; then fail "an lvstore's base bdev was exported"; fi

sizes=$("$RPC" -s "$SOCK" bdev_get_bdevs | jq -c '[.[] | [.name, .block_size, .num_blocks]] | sort')
want='[["Data0",4096,262144],["M0",512,131072],["Malloc0",4096,16384],["N0",4096,32768],["P0",4096,32768],["U0",4096,16384],["lvs0/vol0",4096,131072],["lvsE/vol0",4096,4096]]'
[ "$sizes" = "$want" ] || fail "bdev_get_bdevs sizes: $sizes, want $want"

"$RPC" -s "$SOCK" bdev_get_iostat | jq -e '.bdevs | length == 8' >/dev/null || fail "bdev_get_iostat"

# A vhost-user-blk controller on the lvol, with interrupt coalescing (the embedded default
# already exports lvs0/vol0 as vhost.0).
"$RPC" -s "$SOCK" vhost_create_blk_controller --cpumask 0x1 vhE lvsE/vol0 >/dev/null
"$RPC" -s "$SOCK" vhost_controller_set_coalescing vhE 20 60000 >/dev/null
[ -S "$W/data/vhE" ] && [ "$(stat -c %a "$W/data/vhE")" = 600 ] || fail "controller socket missing or not mode 0600"
vhost_view() { "$RPC" -s "$SOCK" vhost_get_controllers | jq -c '[.[] | [.ctrlr, .backend_specific.block.bdev, .delay_base_us, .iops_threshold]] | sort'; }
want_vhost='[["vhE","lvsE/vol0",20,60000],["vhost.0","lvs0/vol0",0,0]]'
[ "$(vhost_view)" = "$want_vhost" ] || fail "vhost_get_controllers: $(vhost_view), want $want_vhost"
if "$RPC" -s "$SOCK" vhost_create_blk_controller vhE lvsE/vol0 >/dev/null 2>&1; then fail "a second controller named vhE was made"; fi
"$RPC" -s "$SOCK" rpc_get_methods | jq -e 'index("bdev_uring_create") != null' >/dev/null || fail "rpc_get_methods"
"$RPC" -s "$SOCK" framework_get_reactors | jq -e '.reactors | length >= 1' >/dev/null || fail "framework_get_reactors"

before=$("$RPC" -s "$SOCK" bdev_get_bdevs | jq -S 'sort_by(.name)')
"$RPC" -s "$SOCK" save_config > "$W/saved.json"
stop

start --config "$W/saved.json"
after=$("$RPC" -s "$SOCK" bdev_get_bdevs | jq -S 'sort_by(.name)')
[ "$before" = "$after" ] || { diff <(echo "$before") <(echo "$after") >&2; fail "restart from save_config changed bdev_get_bdevs"; }
[ "$(vhost_view)" = "$want_vhost" ] || fail "restart from save_config: controllers $(vhost_view), want $want_vhost"

"$RPC" -s "$SOCK" bdev_malloc_delete M0
"$RPC" -s "$SOCK" bdev_get_bdevs | jq -e 'map(.name) | index("M0") == null' >/dev/null || fail "M0 still listed after delete"
stop

# load_config into an appliance started with --wait-for-rpc (SPDK's startup/runtime states).
start --wait-for-rpc
if "$RPC" -s "$SOCK" bdev_get_bdevs >/dev/null 2>&1; then fail "runtime method accepted before framework_start_init"; fi
"$RPC" -s "$SOCK" load_config -j "$W/saved.json"
loaded=$("$RPC" -s "$SOCK" bdev_get_bdevs | jq -S 'sort_by(.name)')
[ "$before" = "$loaded" ] || fail "load_config did not recreate the same bdevs"
[ "$(vhost_view)" = "$want_vhost" ] || fail "load_config: controllers $(vhost_view), want $want_vhost"
"$RPC" -s "$SOCK" vhost_delete_controller vhE
[ ! -e "$W/data/vhE" ] || fail "socket left after vhost_delete_controller"
"$RPC" -s "$SOCK" bdev_lvol_delete lvsE/vol0
"$RPC" -s "$SOCK" bdev_lvol_get_lvols | jq -e 'map(.alias) | index("lvsE/vol0") == null' >/dev/null || fail "lvol still listed after delete"
stop
echo "spdk-client-e2e: OK (spdk $("$VENV/bin/pip" show spdk | awk '/^Version/ {print $2}'))"
