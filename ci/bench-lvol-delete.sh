#!/bin/bash
set -u
# ci/bench-lvol-delete.sh BIN IMG: loads IMG (a pool with volume bench_pool/vol), deletes the volume, and 20 ms
# into it times spdk_get_version from a second client.
BIN=$1; IMG=$2
D=${D:-/var/tmp/unblend-bench-lvol-delete}; rm -rf $D; mkdir -p $D; cp --sparse=always $IMG $D/p.img
UNBLEND_LOG=error $BIN serve -m 0x1 -r $D/s.sock -d $D/data > $D/out.txt 2>&1 &
PID=$!
for i in $(seq 50); do [ -S $D/s.sock ] && break; sleep 0.1; done
R="$BIN rpc -s $D/s.sock"
$R bdev_uring_create name=U filename=$D/p.img block_size=4096 >/dev/null
t0=$(date +%s.%N)
( $R bdev_lvol_delete name=bench_pool/vol >/dev/null; echo "bdev_lvol_delete $(echo "($(date +%s.%N)-$t0)*1000" | bc -l | cut -d. -f1) ms" ) &
F=$!
sleep 0.02
t1=$(date +%s.%N)
$R spdk_get_version >/dev/null
echo "spdk_get_version 20 ms in: $(echo "($(date +%s.%N)-$t1)*1000" | bc -l | cut -d. -f1) ms"
wait $F
kill $PID; wait $PID 2>/dev/null; rm -rf $D
