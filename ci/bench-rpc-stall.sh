#!/bin/bash
# ci/bench-rpc-stall.sh MODE BIN ARG: how long one slow RPC takes, and how long reactor 0 keeps
# another client waiting meanwhile. Starts `BIN serve -m 0x1`, sends the slow RPC, and DELAY_MS
# into it (default 100) times spdk_get_version from a second client (`unblend rpc`: its round
# trip alone is 4 to 5 ms here). MODE and ARG:
#   format SIZE       bdev_lvol_create_lvstore on a fresh sparse SIZE uring file (8 MiB segments)
#   examine IMG       bdev_uring_create on IMG, a pool file (the create loads the pool; IMG is
#                     changed: the load writes a checkpoint)
#   lvol-delete IMG   bdev_lvol_delete of bench_pool/vol on a sparse copy of IMG (a pool made by
#                     `unblend bench --bdev lsv:path=IMG,...`)
#   slow-examine US   bdev_delay_create over a blank 64 MiB malloc bdev, every read taking US µs
#                     (examine's first read, of the superblock, waits that long)
set -u
MODE=$1; BIN=$2; ARG=$3; DELAY_MS=${DELAY_MS:-100}
D=${D:-/var/tmp/unblend-bench-rpc-stall}; rm -rf "$D"; mkdir -p "$D"
UNBLEND_LOG=error "$BIN" serve -m 0x1 -r "$D/s.sock" -d "$D/data" > "$D/out.txt" 2>&1 &
PID=$!
for _ in $(seq 50); do [ -S "$D/s.sock" ] && break; sleep 0.1; done
R="$BIN rpc -s $D/s.sock"
ms_since() { echo "($(date +%s.%N) - $1) * 1000" | bc -l | cut -d. -f1; }
case $MODE in
  format)
    truncate -s "$ARG" "$D/pool.img"
    $R bdev_uring_create name=U filename="$D/pool.img" block_size=4096 >/dev/null
    slow=(bdev_lvol_create_lvstore bdev_name=U lvs_name=big cluster_sz=8388608) ;;
  examine)
    slow=(bdev_uring_create name=U filename="$ARG" block_size=4096) ;;
  lvol-delete)
    cp --sparse=always "$ARG" "$D/pool.img"
    $R bdev_uring_create name=U filename="$D/pool.img" block_size=4096 >/dev/null
    slow=(bdev_lvol_delete name=bench_pool/vol) ;;
  slow-examine)
    $R bdev_malloc_create name=M0 num_blocks=16384 block_size=4096 >/dev/null
    slow=(bdev_delay_create base_bdev_name=M0 name=Slow0 avg_read_latency="$ARG" \
      p99_read_latency="$ARG" avg_write_latency=1000 p99_write_latency=1000) ;;
  *) echo "mode: format, examine, lvol-delete or slow-examine" >&2; kill $PID; exit 2 ;;
esac
t0=$(date +%s.%N)
( $R "${slow[@]}" >/dev/null; echo "${slow[0]} $(ms_since "$t0") ms" ) &
F=$!
sleep "$(echo "$DELAY_MS / 1000" | bc -l)"
t1=$(date +%s.%N)
$R spdk_get_version >/dev/null
echo "spdk_get_version $DELAY_MS ms in: $(ms_since "$t1") ms"
wait $F
kill $PID; wait $PID 2>/dev/null; rm -rf "$D"
