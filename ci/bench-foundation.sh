#!/usr/bin/env bash
# Foundation benchmarks: unblend against its peers, both sides in one invocation, same core.
#   ci/bench-foundation.sh [SECONDS] [PAIRS]   (default 10 s per run, 3 alternating pairs)
# Env: SECTIONS (default "null scaling uring idle") picks what to run.
# CORE (default 0) is the core both sides are pinned to; IMG (default target/bench.img)
# is the 2 GiB file for the uring runs; it must be on a disk filesystem (not tmpfs).
# Prints a markdown table of IOPS / MiB/s and the ratio unblend / peer.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-10}
PAIRS=${2:-3}
CORE=${CORE:-0}
IMG=${IMG:-target/bench.img}
command -v fio >/dev/null || { echo "needs fio (apt-get install fio)" >&2; exit 2; }
command -v jq >/dev/null || { echo "needs jq (apt-get install jq)" >&2; exit 2; }
command -v bc >/dev/null || { echo "needs bc (apt-get install bc)" >&2; exit 2; }
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
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
# pair LABEL UNIT "peer command" "unblend command": PAIRS alternating runs of each side;
# prints the medians and the median of the per-pair ratios (the machine drifts between runs).
pair() {
  local ps="" us="" rs="" p u
  for i in $(seq "$PAIRS"); do
    # Alternate who runs first: this VM's disk speeds up and slows down over tens of seconds
    # (burst credits, host caching), which would otherwise favour one side.
    if [ $((i % 2)) = 1 ]; then p=$(eval "$3"); u=$(eval "$4"); else u=$(eval "$4"); p=$(eval "$3"); fi
    ps="$ps $p"; us="$us $u"; rs="$rs $(echo "$u / $p" | bc -l)"
  done
  printf '| %s | %s | %.0f | %.0f | %.2f |\n' "$1" "$2" "$(echo $us | median)" "$(echo $ps | median)" "$(echo $rs | median)"
}

echo "| test | unit | unblend | peer | ratio |"
echo "|---|---|---:|---:|---:|"

# 1. Null bdev, 4 KiB randread, qd 128, one core, busy mode, against fio's null engine.
SECTIONS=${SECTIONS:-null scaling uring idle}
on() { case " $SECTIONS " in *" $1 "*) return 0;; esac; return 1; }

if on null; then
FIO_NULL="fio_iops --name=null --ioengine=null --rw=randread --bs=4k --iodepth=128 --size=100G --time_based --runtime=$T"
pair "null 4k randread qd128, 1 core, reads zeroed, vs fio null" IOPS "$FIO_NULL" \
  "ub --bdev null:size=1G -q 128 -o 4096 -w randread -m $mask --idle busy | jq .total.iops"
pair "null 4k randread qd128, 1 core, zero=0 (as SPDK's null), vs fio null" IOPS "$FIO_NULL" \
  "ub --bdev null:size=1G,zero=0 -q 128 -o 4096 -w randread -m $mask --idle busy | jq .total.iops"

fi

# 2. Scaling: two reactors against one on null.
if on scaling && [ "$(nproc)" -ge 2 ]; then
  pair "null 4k randread qd128 zero=0, 2 reactors vs 1" IOPS \
    "ub --bdev null:size=1G,zero=0 -q 128 -o 4096 -w randread -m 0x1 --idle busy | jq .total.iops" \
    "ub --bdev null:size=1G,zero=0 -q 128 -o 4096 -w randread -m 0x3 --idle busy | jq .total.iops"
fi

# 3. uring on a 2 GiB file filled with data first, against fio's io_uring engine.
if on uring; then
if [ ! -f "$IMG" ] || [ "$(stat -c %s "$IMG")" != $((2 << 30)) ]; then
  rm -f "$IMG"
  fio --name=fill --filename="$IMG" --rw=write --bs=1M --direct=1 --size=2G --ioengine=io_uring >/dev/null
fi
FIO_URING=(--filename="$IMG" --ioengine=io_uring --direct=1 --fixedbufs --registerfiles --size=2G --time_based --runtime="$T" --numjobs=1)
for w in randread randwrite; do
  pair "uring 4k $w qd32, core $CORE vs fio io_uring (median of $PAIRS pairs)" IOPS \
    "fio_iops --name=$w --rw=$w --bs=4k --iodepth=32 \"\${FIO_URING[@]}\"" \
    "ub --bdev uring:path=$IMG -q 32 -o 4096 -w $w -m $mask --idle busy | jq .total.iops"
done
pair "uring 128k seq write qd32, core $CORE vs fio io_uring (median of $PAIRS pairs)" MiB/s \
  "fio_mibps --name=seqwrite --rw=write --bs=128k --iodepth=32 \"\${FIO_URING[@]}\"" \
  "ub --bdev uring:path=$IMG -q 32 -o 128k -w write -m $mask --idle busy | jq .total.mibps"

fi

# 4. Idle: unblend serve in adaptive mode, CPU used over 10 s, from /proc/PID/stat.
if on idle; then
UNBLEND_LOG=warn $UB serve --idle adaptive >/dev/null &
pid=$!
sleep 2
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
t0=$(ticks $pid); sleep 10; t1=$(ticks $pid)
kill -TERM $pid; wait $pid
hz=$(getconf CLK_TCK)
pct=$(echo "($t1 - $t0) * 100 / ($hz * 10)" | bc -l)
printf '| serve idle (adaptive), CPU over 10 s | %% of one core | %.2f | 2 (limit) | %.2f |\n' "$pct" "$(echo "$pct / 2" | bc -l)"
fi
