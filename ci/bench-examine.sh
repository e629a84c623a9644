#!/bin/bash
set -u
# ci/bench-examine.sh BIN IMG: starts `BIN serve`, creates a uring bdev on IMG (a pool file: the
# create examines it and loads the pool) and, 100 ms into it, times spdk_get_version from a
# second client; prints both times. IMG is opened in place (copy it first to keep it as is).
BIN=$1; IMG=$2
D=${D:-/var/tmp/unblend-bench-examine}; rm -rf $D; mkdir -p $D
UNBLEND_LOG=error $BIN serve -m 0x1 -r $D/s.sock -d $D/data > $D/out.txt 2>&1 &
PID=$!
for i in $(seq 50); do [ -S $D/s.sock ] && break; sleep 0.1; done
R="$BIN rpc -s $D/s.sock"
t0=$(date +%s.%N)
( $R bdev_uring_create name=U filename=$IMG block_size=4096 >/dev/null; echo "bdev_uring_create (examine) $(echo "($(date +%s.%N)-$t0)*1000" | bc -l | cut -d. -f1) ms" ) &
F=$!
sleep 0.1
t1=$(date +%s.%N)
$R spdk_get_version >/dev/null
echo "spdk_get_version 100 ms in: $(echo "($(date +%s.%N)-$t1)*1000" | bc -l | cut -d. -f1) ms"
wait $F
$R bdev_lvol_get_lvstores | grep -c '"name"' | sed 's/^/lvstores loaded: /'
kill $PID; wait $PID 2>/dev/null; rm -rf $D
