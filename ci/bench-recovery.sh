#!/usr/bin/env bash
# Recovery time against pool size: each binary writes a pool (2 GiB volume, 4 KiB random
# writes at qd 32 on two reactors) for SECONDS, is killed with SIGKILL, and the same binary
# reopens it (`unblend bench -t 1 ... open=1` prints "pool opened (recovered) in N ms").
# Pools of SIZES GiB each (sparse files: only what the pool writes is allocated, and format
# writes the first block of every segment), binaries alternating, medians of PAIRS runs.
#   ci/bench-recovery.sh BASELINE_BINARY [SECONDS] [PAIRS]
# Env: SIZES (default "4 128"), IMG (default target/recovery-bench.img), KILL (default 1;
# 0: the writer runs its SECONDS to the end and closes the pool cleanly, with a checkpoint,
# so the reopening replays nothing and times what recovery reads besides the log).
# The baseline is a build of an older commit (e.g. one from before the segment journal,
# whose recovery reads the first block of every segment); the other side is this tree's.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: ci/bench-recovery.sh BASELINE_BINARY [SECONDS] [PAIRS]}
T=${2:-20}
PAIRS=${3:-3}
SIZES=${SIZES:-4 128}
IMG=${IMG:-target/recovery-bench.img}
KILL=${KILL:-1}
cargo build --release --quiet
NEW=target/release/unblend
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

# BIN SIZE_GIB -> "ms segments_read segments_probed" (the last two "-" for a binary without them)
run() {
  local bin=$1 gib=$2 spec out ms
  spec="lsv:path=$IMG,size=${gib}G,volume=2G,open=1"
  rm -f "$IMG"; truncate -s "${gib}G" "$IMG"
  if [ "$KILL" = 1 ]; then
    UNBLEND_LOG=error $bin bench -t $((T + 60)) --bdev "$spec" -q 32 -o 4k -w randwrite -m 0x3 \
      >/dev/null 2>&1 &
    local pid=$!
    sleep "$T"
    kill -9 $pid; wait $pid 2>/dev/null || true
  else
    UNBLEND_LOG=error $bin bench -t "$T" --bdev "$spec" -q 32 -o 4k -w randwrite -m 0x3 >/dev/null
  fi
  sync
  out=$(UNBLEND_LOG=error $bin bench --json -t 1 --bdev "$spec" -q 32 -o 4k -w randread -m 0x1)
  ms=$(echo "$out" | sed -n 's/.*pool opened (recovered) in \([0-9.]*\) ms.*/\1/p')
  echo "$ms $(echo "$out" | tail -1 | jq -r '.lsv.pool.recovery // {} | "\(.segments_read // "-") \(.segments_probed // "-")"')"
}

echo "| pool | baseline ms to open | this tree ms to open | this tree / baseline | segments read whole (this tree) | first blocks probed (baseline: all others) |"
echo "|---|---:|---:|---:|---:|---:|"
for gib in $SIZES; do
  bs="" ns="" rs="" reads="" probes=""
  for i in $(seq "$PAIRS"); do
    if [ $((i % 2)) = 1 ]; then b=$(run "$BASE" "$gib"); n=$(run "$NEW" "$gib"); else n=$(run "$NEW" "$gib"); b=$(run "$BASE" "$gib"); fi
    bms=${b%% *}; nms=${n%% *}
    bs="$bs $bms"; ns="$ns $nms"; rs="$rs $(echo "$nms / $bms" | bc -l)"
    read -r _ r p <<<"$n"; reads="$reads $r"; probes="$probes $p"
  done
  printf '| %s GiB | %.1f | %.1f | %.2f | %s | %s |\n' "$gib" "$(echo $bs | median)" \
    "$(echo $ns | median)" "$(echo $rs | median)" "$reads" "$probes"
done
rm -f "$IMG"
