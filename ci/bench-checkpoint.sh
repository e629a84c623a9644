#!/usr/bin/env bash
# Checkpoints on a pool with a large map: 4 KiB random writes at qd 32 on one reactor (core 0,
# which also runs the cleaner) to a 12 GiB volume written full first (`prefill=1`: 3.1 million
# mapped blocks, a 75 MB checkpoint body in checkpoint format version 1) in a 16 GiB file
# pool, for SECONDS. Prints each run's IOPS, latency (max, p99.9, p99 in µs), checkpoint
# stats and checkpoint bytes per user byte written (the prefill's included), binaries
# alternating, then the medians per binary. A run needs ~19 GB of free disk, deleted after.
#   ci/bench-checkpoint.sh BASELINE_BINARY [SECONDS] [PAIRS]
# Env: IMG (default target/checkpoint-bench.img).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: ci/bench-checkpoint.sh BASELINE_BINARY [SECONDS] [PAIRS]}
T=${2:-60}
PAIRS=${3:-2}
IMG=${IMG:-target/checkpoint-bench.img}
cargo build --release --quiet
NEW=target/release/unblend
. ci/bench-common.sh
declare -A iops max p999 p99 cpb
for _ in $(seq "$PAIRS"); do
  for side in base new; do
    bin=$BASE; [ $side = new ] && bin=$NEW
    rm -f "$IMG"
    j=$(UNBLEND_LOG=error "$bin" bench --json -t "$T" \
      --bdev "lsv:path=$IMG,size=16G,volume=12G,prefill=1" -q 32 -o 4k -w randwrite -m 0x1 | tail -1)
    rm -f "$IMG"
    ratio=$(jq '.lsv.pool.checkpoint_bytes_written / .lsv.pool.user_bytes_written' <<<"$j")
    echo "$side: iops $(jq .total.iops <<<"$j") lat_us $(jq -c .total.lat_us <<<"$j") checkpoint $(jq -c .lsv.pool.checkpoint <<<"$j") checkpoint_bytes $(jq .lsv.pool.checkpoint_bytes_written <<<"$j") user_bytes $(jq .lsv.pool.user_bytes_written <<<"$j")"
    cpb[$side]+=" $ratio"
    iops[$side]+=" $(jq .total.iops <<<"$j")"
    keep_latency $side "$j"
  done
done
for side in base new; do
  echo "median $side: iops $(median <<<"${iops[$side]}") $(latency_medians $side) checkpoint_bytes_per_user_byte $(median <<<"${cpb[$side]}")"
done
