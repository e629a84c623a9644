#!/usr/bin/env bash
# Foundation benchmarks: unblend against its peers, both sides in one invocation, same core.
#   ci/bench-foundation.sh [SECONDS]        (default 10 s per run)
# Env: CORE (default 0) is the core both sides are pinned to; IMG (default target/bench.img)
# is the 2 GiB file for the uring runs; it must be on a disk filesystem (not tmpfs).
# Prints a markdown table of IOPS / MiB/s and the ratio unblend / peer.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-10}
CORE=${CORE:-0}
IMG=${IMG:-target/bench.img}
command -v fio >/dev/null || { echo "needs fio (apt-get install fio)" >&2; exit 2; }
command -v jq >/dev/null || { echo "needs jq (apt-get install jq)" >&2; exit 2; }
cargo build --release --quiet
UB=target/release/unblend
mask=$(printf '0x%x' $((1 << CORE)))

fio_iops() { # fio args... -> IOPS (read+write)
  taskset -c "$CORE" fio --output-format=json "$@" | jq '[.jobs[0].read.iops, .jobs[0].write.iops] | add'
}
fio_mibps() {
  taskset -c "$CORE" fio --output-format=json "$@" | jq '([.jobs[0].read.bw, .jobs[0].write.bw] | add) / 1024'
}
ub() { # unblend bench args... -> JSON
  UNBLEND_LOG=warn $UB bench --json -t "$T" "$@"
}
row() { printf '| %s | %s | %.0f | %.0f | %.2f |\n' "$1" "$2" "$3" "$4" "$(echo "$3 / $4" | bc -l)"; }

echo "| test | unit | unblend | peer | ratio |"
echo "|---|---|---:|---:|---:|"

# 1. Null bdev, 4 KiB randread, qd 128, one core, busy mode, against fio's null engine.
f=$(fio_iops --name=null --ioengine=null --rw=randread --bs=4k --iodepth=128 --size=100G --time_based --runtime="$T")
u=$(ub --bdev null:size=1G -q 128 -o 4096 -w randread -m "$mask" --idle busy | jq .total.iops)
u0=$(ub --bdev null:size=1G,zero=0 -q 128 -o 4096 -w randread -m "$mask" --idle busy | jq .total.iops)
row "null 4k randread qd128, 1 core (reads zeroed) vs fio null" IOPS "$u" "$f"
row "null 4k randread qd128, 1 core (zero=0, as SPDK null) vs fio null" IOPS "$u0" "$f"

# 2. Scaling: two reactors against one on null.
if [ "$(nproc)" -ge 2 ]; then
  u2=$(ub --bdev null:size=1G,zero=0 -q 128 -o 4096 -w randread -m 0x3 --idle busy | jq .total.iops)
  row "null 4k randread qd128, 2 reactors vs 1" IOPS "$u2" "$u0"
fi

# 3. uring on a 2 GiB file filled with data first, against fio's io_uring engine.
if [ ! -f "$IMG" ] || [ "$(stat -c %s "$IMG")" != $((2 << 30)) ]; then
  rm -f "$IMG"
  fio --name=fill --filename="$IMG" --rw=write --bs=1M --direct=1 --size=2G --ioengine=io_uring >/dev/null
fi
FIO_URING=(--filename="$IMG" --ioengine=io_uring --direct=1 --fixedbufs --registerfiles --size=2G --time_based --runtime="$T" --numjobs=1)
for w in randread randwrite; do
  f=$(fio_iops --name=$w --rw=$w --bs=4k --iodepth=32 "${FIO_URING[@]}")
  u=$(ub --bdev "uring:path=$IMG" -q 32 -o 4096 -w $w -m "$mask" --idle busy | jq .total.iops)
  row "uring 4k $w qd32, core $CORE vs fio io_uring" IOPS "$u" "$f"
done
f=$(fio_mibps --name=seqwrite --rw=write --bs=128k --iodepth=32 "${FIO_URING[@]}")
u=$(ub --bdev "uring:path=$IMG" -q 32 -o 128k -w write -m "$mask" --idle busy | jq .total.mibps)
row "uring 128k seq write qd32, core $CORE vs fio io_uring" MiB/s "$u" "$f"

# 4. Idle: unblend serve in adaptive mode, CPU used over 10 s, from /proc/PID/stat.
UNBLEND_LOG=warn $UB serve --idle adaptive >/dev/null &
pid=$!
sleep 2
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
t0=$(ticks $pid); sleep 10; t1=$(ticks $pid)
kill -TERM $pid; wait $pid
hz=$(getconf CLK_TCK)
pct=$(echo "($t1 - $t0) * 100 / ($hz * 10)" | bc -l)
printf '| serve idle (adaptive), CPU over 10 s | %% of one core | %.2f | 2 (limit) | %.2f |\n' "$pct" "$(echo "$pct / 2" | bc -l)"
