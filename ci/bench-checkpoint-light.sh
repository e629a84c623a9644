#!/usr/bin/env bash
# Checkpoints under a light writer: a 16 GiB file pool whose 12 GiB volume is written full and
# then at random for 30 s at qd 32 (3.1 million mapped blocks, about a 13 MB checkpoint), made
# once; then, on that same pool opened again, 4 KiB random writes capped at RATE IOPS (qd 4,
# core 0) for SECONDS, binaries alternating (the new one first in odd pairs). Prints each run's checkpoint bytes per user byte
# written and per log byte (user and cleaner records; all counted from the open), the run's
# write amplification, checkpoints begun, and latency (max, p99.9, p99 in µs), then the
# medians per binary. Log bytes include the cleaner's: the pool is 75% full, and the cleaner
# moves a few times what a light writer writes. Needs ~17 GB of free disk, deleted after.
#   ci/bench-checkpoint-light.sh BASELINE_BINARY [SECONDS] [PAIRS]
# Env: IMG (default target/checkpoint-light.img), RATE (default 500).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: ci/bench-checkpoint-light.sh BASELINE_BINARY [SECONDS] [PAIRS]}
T=${2:-120}
PAIRS=${3:-2}
IMG=${IMG:-target/checkpoint-light.img}
RATE=${RATE:-500}
cargo build --release --quiet
NEW=target/release/unblend
. ci/bench-common.sh
trap 'rm -f "$IMG"' EXIT
rm -f "$IMG"
UNBLEND_LOG=error "$NEW" bench --json -t 30 --bdev "lsv:path=$IMG,size=16G,volume=12G,prefill=1" \
  -q 32 -o 4k -w randwrite -m 0x1 | tail -1 | jq -c '{prefill_iops: .total.iops, checkpoint: .lsv.pool.checkpoint}'
declare -A cpb cpl wa max p999 p99
for pair in $(seq "$PAIRS"); do
  order="new base"; [ $((pair % 2)) = 0 ] && order="base new"
  for side in $order; do
    bin=$BASE; [ $side = new ] && bin=$NEW
    j=$(UNBLEND_LOG=error "$bin" bench --json -t "$T" --bdev "lsv:path=$IMG,size=16G,volume=12G,open=1" \
      -q 4 -o 4k -w randwrite --rate-iops "$RATE" -m 0x1 | tail -1)
    ratio=$(jq '.lsv.pool.checkpoint_bytes_written / .lsv.pool.user_bytes_written' <<<"$j")
    per_log=$(jq '.lsv.pool.checkpoint_bytes_written / (.lsv.pool.log_bytes_written + .lsv.pool.cleaner_bytes_written)' <<<"$j")
    echo "$side: iops $(jq .total.iops <<<"$j") lat_us $(jq -c .total.lat_us <<<"$j") checkpoint $(jq -c .lsv.pool.checkpoint <<<"$j") checkpoint_bytes $(jq .lsv.pool.checkpoint_bytes_written <<<"$j") user_bytes $(jq .lsv.pool.user_bytes_written <<<"$j") log_bytes $(jq .lsv.pool.log_bytes_written <<<"$j") cleaner_bytes $(jq .lsv.pool.cleaner_bytes_written <<<"$j") write_amplification $(jq .lsv.run.write_amplification <<<"$j") checkpoint_bytes_per_user_byte $ratio checkpoint_bytes_per_log_byte $per_log"
    cpb[$side]+=" $ratio"
    cpl[$side]+=" $per_log"
    wa[$side]+=" $(jq .lsv.run.write_amplification <<<"$j")"
    keep_latency $side "$j"
  done
done
for side in base new; do
  echo "median $side: checkpoint_bytes_per_user_byte $(median <<<"${cpb[$side]}") checkpoint_bytes_per_log_byte $(median <<<"${cpl[$side]}") write_amplification $(median <<<"${wa[$side]}") $(latency_medians $side)"
done
