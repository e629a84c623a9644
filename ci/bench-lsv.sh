#!/usr/bin/env bash
# Log-structured store benchmarks (issue 4's acceptance), each against fio on the same file in
# the same invocation, both sides pinned to core CORE (the lsv bench's first reactor).
#   ci/bench-lsv.sh [SECONDS] [PAIRS]    (default 10 s per run, 3 alternating pairs)
# Env: SECTIONS (default "randwrite1 randwrite2 reads blender memory wa recovery"; also
# randwrite1big),
# CORE (default 0), IMG (default target/lsv-bench.img, 4 GiB, on a disk filesystem),
# WA_SECONDS (default 90: each write-amplification run), RECOVERY_SECONDS (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-10}
PAIRS=${2:-3}
CORE=${CORE:-0}
IMG=${IMG:-target/lsv-bench.img}
WA_SECONDS=${WA_SECONDS:-90}
RECOVERY_SECONDS=${RECOVERY_SECONDS:-60}
for t in fio jq bc; do command -v $t >/dev/null || { echo "needs $t (apt-get install $t)" >&2; exit 2; }; done
cargo build --release --quiet
UB=target/release/unblend
mask=$(printf '0x%x' $((1 << CORE)))
two=0x3

fio_run() { # fio args... -> JSON
  taskset -c "$CORE" fio --output-format=json --filename="$IMG" --ioengine=io_uring --direct=1 \
    --size=4G --time_based --runtime="$T" "$@"
}
fio_iops() { fio_run "$@" | jq '[.jobs[0].read.iops, .jobs[0].write.iops] | add'; }
fio_mibps() { fio_run "$@" | jq '([.jobs[0].read.bw, .jobs[0].write.bw] | add) / 1024'; }
ub() { # unblend bench args... -> the JSON report (the last line)
  UNBLEND_LOG=error $UB bench --json -t "$T" "$@" | tail -1
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
pair() { # LABEL UNIT "peer command" "unblend command": alternating runs, medians, median ratio
  local ps="" us="" rs="" p u
  for i in $(seq "$PAIRS"); do
    if [ $((i % 2)) = 1 ]; then p=$(eval "$3"); u=$(eval "$4"); else u=$(eval "$4"); p=$(eval "$3"); fi
    ps="$ps $p"; us="$us $u"; rs="$rs $(echo "$u / $p" | bc -l)"
  done
  printf '| %s | %s | %.0f | %.0f | %.2f |\n' "$1" "$2" "$(echo $us | median)" "$(echo $ps | median)" "$(echo $rs | median)"
}
SECTIONS=${SECTIONS:-randwrite1 randwrite2 reads blender memory wa recovery}
# fio must meet written blocks, as lsv does: a fallocated file's unwritten extents are never
# read from the disk (fio read a fresh file at 354 k IOPS, and the reads line read 0.27), and
# a write to one converts it first (fio's raw randwrite: 79 k IOPS on a fresh file against
# 137 k on a written one, the same day).
write_whole() {
  taskset -c "$CORE" fio --output-format=json --filename="$IMG" --ioengine=io_uring --direct=1 \
    --size=4G --name=fill --rw=write --bs=1M --iodepth=8 >/dev/null
}
on() { case " $SECTIONS " in *" $1 "*) return 0;; esac; return 1; }

# A fresh 4 GiB pool file each lsv run (the bench formats it); fio writes the same file raw.
mkdir -p "$(dirname "$IMG")"
[ -f "$IMG" ] && [ "$(stat -c %s "$IMG")" = $((4 << 30)) ] || { rm -f "$IMG"; fallocate -l 4G "$IMG"; }
LSV="lsv:path=$IMG,size=4G"

echo "| test | unit | unblend | fio | ratio |"
echo "|---|---|---:|---:|---:|"

if on randwrite1; then
  write_whole
  pair "lsv 4k randwrite qd32, 1 reactor (1 GiB volume) vs fio raw 4k randwrite qd32" IOPS \
    "fio_iops --name=rw --rw=randwrite --bs=4k --iodepth=32" \
    "ub --bdev $LSV,volume=1G -q 32 -o 4k -w randwrite -m $mask | jq .total.iops"
  # 32 x 4 KiB = 128 KiB in flight: what this disk does with that much in flight, and what that
  # allows against fio's 4 KiB random writes (the line above's ratio cannot pass the second).
  pair "same vs fio 128k seq write qd1 (the same 128 KiB in flight)" MiB/s \
    "fio_mibps --name=sw --rw=write --bs=128k --iodepth=1" \
    "ub --bdev $LSV,volume=1G -q 32 -o 4k -w randwrite -m $mask | jq .total.mibps"
  pair "ceiling: fio 128k seq write qd1 vs fio raw 4k randwrite qd32" MiB/s \
    "fio_mibps --name=rw --rw=randwrite --bs=4k --iodepth=32" \
    "fio_mibps --name=sw --rw=write --bs=128k --iodepth=1"
  # fio on a freshly fallocated file pays for converting unwritten extents on first write.
  pair "same vs fio raw 4k randwrite qd32 on a freshly fallocated file" IOPS \
    "{ rm -f $IMG; fallocate -l 4G $IMG; fio_iops --name=rw --rw=randwrite --bs=4k --iodepth=32; }" \
    "ub --bdev $LSV,volume=1G -q 32 -o 4k -w randwrite -m $mask | jq .total.iops"
fi
if on randwrite1big; then
  # The same on a pool that does not clean during the run: 16 GiB (BIG_IMG), written whole
  # first. Not in the default SECTIONS (16 GiB of disk, deleted after).
  BIG=${BIG_IMG:-target/lsv-bench-16g.img}
  rm -f "$BIG"; fallocate -l 16G "$BIG"
  taskset -c "$CORE" fio --output-format=json --filename="$BIG" --ioengine=io_uring --direct=1 \
    --size=16G --name=fill --rw=write --bs=1M --iodepth=8 >/dev/null
  # (fails if the cleaner ran after all)
  pair "lsv 4k randwrite qd32, 1 reactor, 16 GiB pool written whole (no cleaning in the run) vs fio raw 4k randwrite qd32" IOPS \
    "taskset -c $CORE fio --output-format=json --filename=$BIG --ioengine=io_uring --direct=1 --size=16G --time_based --runtime=$T --name=rw --rw=randwrite --bs=4k --iodepth=32 | jq .jobs[0].write.iops" \
    "ub --bdev lsv:path=$BIG,size=16G,volume=1G -q 32 -o 4k -w randwrite -m $mask | jq 'if .lsv.pool.cleaner.segments_cleaned > 0 then error(\"the cleaner ran\") else .total.iops end'"
  rm -f "$BIG"
fi
if on randwrite2; then
  write_whole
  pair "lsv 4k randwrite qd32 per reactor, 2 reactors vs fio 128k seq write qd32" MiB/s \
    "fio_mibps --name=sw --rw=write --bs=128k --iodepth=32" \
    "ub --bdev $LSV,volume=1G -q 32 -o 4k -w randwrite -m $two | jq .total.mibps"
  # 2 x 32 x 4 KiB = 256 KiB in flight: what this disk does with that much in flight.
  pair "same vs fio 128k seq write qd2 (the same 256 KiB in flight)" MiB/s \
    "fio_mibps --name=sw --rw=write --bs=128k --iodepth=2" \
    "ub --bdev $LSV,volume=1G -q 32 -o 4k -w randwrite -m $two | jq .total.mibps"
  pair "ceiling: fio 128k seq write qd2 vs fio 128k seq write qd32" MiB/s \
    "fio_mibps --name=sw --rw=write --bs=128k --iodepth=32" \
    "fio_mibps --name=sw --rw=write --bs=128k --iodepth=2"
  pair "same, qd128 per reactor vs fio 128k seq write qd32" MiB/s \
    "fio_mibps --name=sw --rw=write --bs=128k --iodepth=32" \
    "ub --bdev $LSV,volume=1G -q 128 -o 4k -w randwrite -m $two | jq .total.mibps"
fi
if on reads; then
  write_whole
  pair "lsv 4k randread qd32 of written data (1 GiB volume, prefilled), 1 reactor vs fio raw randread" IOPS \
    "fio_iops --name=rr --rw=randread --bs=4k --iodepth=32" \
    "ub --bdev $LSV,volume=1G,prefill=1 -q 32 -o 4k -w randread -m $mask | jq .total.iops"
fi
if on blender; then
  pair "blender: 8 volumes, each written sequentially (4k, qd32 per reactor shared), 2 reactors vs fio 128k seq write" MiB/s \
    "fio_mibps --name=sw --rw=write --bs=128k --iodepth=32" \
    "ub --bdev $LSV,volume=256M,volumes=8 -q 32 -o 4k -w write -m $two | jq .total.mibps"
  pair "blender (4k) vs fio 128k seq write qd2 (the same 256 KiB in flight)" MiB/s \
    "fio_mibps --name=sw --rw=write --bs=128k --iodepth=2" \
    "ub --bdev $LSV,volume=256M,volumes=8 -q 32 -o 4k -w write -m $two | jq .total.mibps"
  # -q is per reactor, shared by its jobs: 128 gives each of the 8 jobs qd 32 (1 MiB in flight).
  pair "blender, qd32 per job (-q 128 per reactor)" MiB/s \
    "fio_mibps --name=sw --rw=write --bs=128k --iodepth=32" \
    "ub --bdev $LSV,volume=256M,volumes=8 -q 128 -o 4k -w write -m $two | jq .total.mibps"
  pair "blender, 64k writes" MiB/s \
    "fio_mibps --name=sw --rw=write --bs=128k --iodepth=32" \
    "ub --bdev $LSV,volume=256M,volumes=8 -q 32 -o 64k -w write -m $two | jq .total.mibps"
fi
if on memory; then
  j=$(UNBLEND_LOG=error $UB bench --json -t 1 --bdev "$LSV,volume=2G,prefill=1" -q 32 -o 64k -w randread -m $mask | tail -1)
  echo "| memory: extent table after writing a 2 GiB volume | bytes per mapped block | $(echo "$j" | jq .lsv.pool.extent_table_bytes_per_mapped_block) | 8 (limit) | |"
fi
if on wa; then
  # A 1 GiB pool of 4 MiB segments, its volume 80% of the segments' space, written once
  # sequentially, then overwritten at random; the write amplification of the last minute.
  for hot in "--hot 20:80" ""; do
    for policy in greedy cost-benefit lifespan; do
      rm -f "$IMG.wa"
      j=$(UNBLEND_LOG=error $UB bench --json -t "$WA_SECONDS" \
        --bdev "lsv:path=$IMG.wa,size=1G,segment=4M,volume=800M,prefill=1,policy=$policy" \
        -q 32 -o 4k -w randwrite -m $mask $hot | tail -1)
      printf '| WA, 80%% full, %s, %s | WA last minute (whole run) | %.3f (%.3f) | | |\n' \
        "${hot:-uniform}" "$policy" "$(echo "$j" | jq .lsv.pool.write_amplification_last_minute)" \
        "$(echo "$j" | jq .lsv.run.write_amplification)"
    done
  done
  rm -f "$IMG.wa"
fi
if on recovery; then
  # Write a 4 GiB pool for RECOVERY_SECONDS, SIGKILL it, and time the reopening.
  rm -f "$IMG"
  UNBLEND_LOG=error $UB bench -t $((RECOVERY_SECONDS + 60)) --bdev "$LSV,volume=2G,open=1" \
    -q 32 -o 4k -w randwrite -m $two >/dev/null 2>&1 &
  pid=$!
  sleep "$RECOVERY_SECONDS"
  kill -9 $pid; wait $pid 2>/dev/null || true
  start=$(date +%s%N)
  out=$(UNBLEND_LOG=error $UB bench -t 1 --bdev "$LSV,volume=2G,open=1" -q 32 -o 4k -w randread -m $mask)
  end=$(date +%s%N)
  ms=$(echo "$out" | sed -n 's/.*pool opened (recovered) in \([0-9.]*\) ms.*/\1/p')
  printf '| recovery: 4 GiB pool written %s s then SIGKILL | ms to open (whole 1 s read run) | %s (%d) | 2000 (limit) | |\n' \
    "$RECOVERY_SECONDS" "$ms" $(( (end - start) / 1000000 ))
fi
