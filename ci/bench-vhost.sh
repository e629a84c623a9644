#!/usr/bin/env bash
# vhost-user-blk benchmarks (issue 5's acceptance): unblend against qemu-storage-daemon (and host
# fio for the file case) under the same libblkio client (examples/vhost_bench.rs), in one
# invocation. The back end runs on core 1 (unblend: one busy-polling reactor; qsd: taskset), the
# client on core 0.
#   ci/bench-vhost.sh [SECONDS] [PAIRS]    (default 5 s per run, 3 alternating pairs)
# Env: SECTIONS (default "null file lsv"), IMG (default target/vhost-bench.img, 1 GiB, on disk),
# QDS (default "1 32 128", the null case's queue depths).
# Prints a markdown table: medians of each side and the median of the per-pair ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-5}
PAIRS=${2:-3}
IMG=${IMG:-target/vhost-bench.img}
QDS=${QDS:-1 32 128}
SECTIONS=${SECTIONS:-null file lsv}
for t in fio jq bc qemu-storage-daemon; do
  command -v $t >/dev/null || { echo "needs $t (apt-get install fio jq bc qemu-utils)" >&2; exit 2; }
done
cargo build --release --quiet --bin unblend --example vhost_bench
UB=$PWD/target/release/unblend
CLIENT=$PWD/target/release/examples/vhost_bench
WORK=$(mktemp -d /var/tmp/unblend-bench-vhost.XXXXXX)
BACKEND_PID=
stop_backend() {
  if [ -n "$BACKEND_PID" ]; then kill "$BACKEND_PID" 2>/dev/null || true; wait "$BACKEND_PID" 2>/dev/null || true; fi
  BACKEND_PID=
}
trap 'stop_backend; rm -rf "$WORK"' EXIT

wait_socket() {
  for _ in $(seq 1 100); do [ -S "$1" ] && return 0; sleep 0.1; done
  echo "bench-vhost: no socket $1" >&2; exit 1
}
# start_unblend CONFIG [rpc calls as "method json"...]: unblend on core 1, socket $WORK/ub.
start_unblend() {
  local cfg=$1; shift
  rm -f "$WORK/ub" "$WORK/rpc.sock"
  UNBLEND_LOG=error "$UB" serve -m 0x2 --idle busy -c "$cfg" -r "$WORK/rpc.sock" -d "$WORK/data" -S "$WORK" >"$WORK/serve.log" 2>&1 &
  BACKEND_PID=$!
  wait_socket "$WORK/rpc.sock"
  local call
  for call in "$@"; do
    # shellcheck disable=SC2086
    "$UB" rpc -s "$WORK/rpc.sock" ${call%% *} -j "${call#* }" >/dev/null
  done
  wait_socket "$WORK/ub"
}
# start_qsd BLOCKDEV-OPTIONS: qemu-storage-daemon on core 1, socket $WORK/qsd.
start_qsd() {
  rm -f "$WORK/qsd"
  taskset -c 1 qemu-storage-daemon --blockdev "$1" \
    --export "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=$WORK/qsd,writable=on" \
    >"$WORK/qsd.log" 2>&1 &
  BACKEND_PID=$!
  wait_socket "$WORK/qsd"
}
client() { # SOCKET RW QD [RANGE] -> JSON line
  "$CLIENT" --socket "$1" --rw "$2" --qd "$3" --secs "$T" --cpu 0 ${4:+--range $4}
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

# pair LABEL START_UB CMD_UB START_PEER CMD_PEER: alternating runs (each side restarted per run),
# prints "| label | unblend IOPS | unblend p99 | peer IOPS | peer p99 | ratio |".
pair() {
  local us="" ps="" u99="" p99="" rs="" i u p
  for i in $(seq "$PAIRS"); do
    for side in $([ $((i % 2)) = 1 ] && echo "ub peer" || echo "peer ub"); do
      if [ "$side" = ub ]; then eval "$2"; u=$(eval "$3"); stop_backend
      else eval "$4"; p=$(eval "$5"); stop_backend; fi
    done
    us="$us $(echo "$u" | jq .iops)"; u99="$u99 $(echo "$u" | jq .p99_us)"
    ps="$ps $(echo "$p" | jq .iops)"; p99="$p99 $(echo "$p" | jq .p99_us)"
    rs="$rs $(echo "$(echo "$u" | jq .iops) / $(echo "$p" | jq .iops)" | bc -l)"
  done
  printf '| %s | %.0f | %.1f | %.0f | %.1f | %.2f |\n' "$1" "$(echo $us | median)" "$(echo $u99 | median)" \
    "$(echo $ps | median)" "$(echo $p99 | median)" "$(echo $rs | median)"
}

echo "| case | unblend IOPS | unblend p99 µs | peer IOPS | peer p99 µs | ratio |"
echo "|---|---|---|---|---|---|"

for section in $SECTIONS; do
  case $section in
  null)
    cat >"$WORK/null.json" <<EOF
{"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_null_create", "params": {"name": "Null0", "num_blocks": 262144, "block_size": 4096, "read_zeroes": false}}]},
 {"subsystem": "vhost_blk", "config": [{"method": "vhost_create_blk_controller", "params": {"ctrlr": "ub", "dev_name": "Null0"}}]}]}
EOF
    for qd in $QDS; do
      for rw in randread randwrite; do
        pair "null $rw qd $qd vs qemu-storage-daemon null-co" \
          'start_unblend "$WORK/null.json"' "client \$WORK/ub $rw $qd" \
          'start_qsd driver=null-co,node-name=d0,size=1073741824' "client \$WORK/qsd $rw $qd"
      done
    done
    ;;
  file)
    # A written (not sparse) file, so reads reach the device. Peer: host fio on core 1.
    if [ ! -s "$IMG" ]; then
      fio --name=fill --filename="$IMG" --rw=write --bs=1M --size=1G --direct=1 --ioengine=io_uring >/dev/null
    fi
    cat >"$WORK/file.json" <<EOF
{"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_uring_create", "params": {"name": "File0", "filename": "$PWD/$IMG", "block_size": 4096}}]},
 {"subsystem": "vhost_blk", "config": [{"method": "vhost_create_blk_controller", "params": {"ctrlr": "ub", "dev_name": "File0"}}]}]}
EOF
    for rw in randread randwrite; do
      fio_json() {
        taskset -c 1 fio --output-format=json --name=f --filename="$IMG" --rw=$rw --bs=4k --iodepth=32 \
          --ioengine=io_uring --direct=1 --fixedbufs --registerfiles --size=1G --time_based --runtime="$T" \
          | jq -c '{iops: ([.jobs[0].read.iops, .jobs[0].write.iops] | add), p99_us: ([.jobs[0].read.clat_ns.percentile["99.000000"], .jobs[0].write.clat_ns.percentile["99.000000"]] | max / 1000)}'
      }
      pair "uring file $rw qd 32 vs host fio (core 1)" \
        'start_unblend "$WORK/file.json"' "client \$WORK/ub $rw 32" \
        ':' "fio_json"
    done
    ;;
  lsv)
    # unblend: an lsv volume on a pool on the file. Peer: qsd serving the raw file, O_DIRECT.
    rm -f "$WORK/pool.img"
    truncate -s 1G "$WORK/pool.img"
    cat >"$WORK/pool.json" <<EOF
{"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_uring_create", "params": {"name": "Pool0", "filename": "$WORK/pool.img", "block_size": 4096}}]}]}
EOF
    fresh_pool() {
      rm -f "$WORK/pool.img"; fallocate -l 1G "$WORK/pool.img"
      start_unblend "$WORK/pool.json" \
        'bdev_lvol_create_lvstore {"bdev_name": "Pool0", "lvs_name": "lvs"}' \
        'bdev_lvol_create {"lvs_name": "lvs", "lvol_name": "v", "size_in_mib": 512}' \
        'vhost_create_blk_controller {"ctrlr": "ub", "dev_name": "lvs/v"}'
    }
    pair "lsv volume randwrite qd 32 vs qemu-storage-daemon raw file (io_uring, O_DIRECT)" \
      'fresh_pool' "client \$WORK/ub randwrite 32 $((512 << 20))" \
      "start_qsd driver=file,node-name=d0,filename=\$PWD/$IMG,cache.direct=on,aio=io_uring" "client \$WORK/qsd randwrite 32 $((512 << 20))"
    ;;
  *) echo "bench-vhost: unknown section $section" >&2; exit 2 ;;
  esac
done
