#!/bin/bash
set -u
# ci/bench-format.sh BIN SIZE: formats a SIZE sparse uring-file pool and, 100 ms into it, times
# spdk_get_version from a second client; prints both times.
BIN=$1; SIZE=$2
D=${D:-/var/tmp/unblend-bench-format}; rm -rf $D; mkdir -p $D; truncate -s $SIZE $D/big.img
UNBLEND_LOG=error $BIN serve -m 0x1 -r $D/s.sock -d $D/data > $D/out.txt 2>&1 &
PID=$!
for i in $(seq 50); do [ -S $D/s.sock ] && break; sleep 0.1; done
R="$BIN rpc -s $D/s.sock"
$R bdev_uring_create name=U filename=$D/big.img block_size=4096 >/dev/null
t0=$(date +%s.%N)
( $R bdev_lvol_create_lvstore bdev_name=U lvs_name=big cluster_sz=8388608 >/dev/null; echo "create_lvstore $(echo "($(date +%s.%N)-$t0)*1000" | bc -l | cut -d. -f1) ms" ) &
F=$!
sleep 0.1
t1=$(date +%s.%N)
$R spdk_get_version >/dev/null
echo "spdk_get_version 100 ms in: $(echo "($(date +%s.%N)-$t1)*1000" | bc -l | cut -d. -f1) ms"
wait $F
kill $PID; wait $PID 2>/dev/null; rm -rf $D
