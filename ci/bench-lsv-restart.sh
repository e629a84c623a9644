#!/bin/bash
# ci/bench-lsv-restart.sh SECONDS BIN...: for each BIN, writes a fresh 4 GiB pool (1 GiB
# volume, 4 KiB random writes, qd 32, one reactor on CPU 0) for SECONDS, then opens it again
# (recovery) and writes SECONDS more; prints that second run's IOPS and what its cleaner read.
# The cleaner's victims there were mostly sealed before the restart.
set -u
T=$1; shift
D=${D:-/var/tmp/unblend-bench-restart}; mkdir -p "$D"
for BIN in "$@"; do
  img="$D/pool.img"; rm -f "$img"
  spec="lsv:path=$img,size=4G,volume=1G"
  "$BIN" bench --json -t "$T" --bdev "$spec" -q 32 -o 4k -w randwrite -m 0x1 >/dev/null 2>&1
  "$BIN" bench --json -t "$T" --bdev "$spec,open=1" -q 32 -o 4k -w randwrite -m 0x1 2>/dev/null |
    tail -1 | jq -r --arg bin "$BIN" '.lsv.pool as $p | $p.cleaner as $c |
      "\($bin) after a restart: \(.total.iops | floor) IOPS; cleaned \($c.segments_cleaned) victims, \($c.segments_read_from_summary) through their summary, reading \($c.bytes_read / 1e6 | floor) MB (\($c.bytes_read / ([$c.segments_cleaned, 1] | max) / 1e6 * 100 | floor / 100) MB a victim); segment summaries in memory \($p.segment_summary_bytes / 1e6 * 10 | floor / 10) MB"'
  rm -f "$img"
done
