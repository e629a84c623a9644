#!/bin/bash
# ci/bench-rpc-create.sh BIN [N]: the round trip of N (default 200) bdev_malloc_create calls of a
# blank 1 MiB bdev (each deleted after), on one connection; `BIN serve -m 0x1` runs on CPU 0 and
# the client on CPU 1. Prints the median and 90th percentile, in µs.
set -u
BIN=$1; N=${2:-200}
D=${D:-/var/tmp/unblend-bench-rpc-create}; rm -rf "$D"; mkdir -p "$D"
UNBLEND_LOG=error taskset -c 0 "$BIN" serve -m 0x1 -r "$D/s.sock" -d "$D/data" > "$D/out.txt" 2>&1 &
PID=$!
for _ in $(seq 50); do [ -S "$D/s.sock" ] && break; sleep 0.1; done
taskset -c 1 python3 - "$D/s.sock" "$N" <<'PY'
import json, socket, statistics, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rb")
n = int(sys.argv[2])
def call(method, params, i):
    s.sendall(json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}).encode())
    answer = json.loads(f.readline())
    assert "result" in answer, answer
times_us = []
for i in range(n):
    t = time.perf_counter()
    call("bdev_malloc_create", {"name": f"M{i}", "num_blocks": 256, "block_size": 4096}, i)
    times_us.append((time.perf_counter() - t) * 1e6)
    call("bdev_malloc_delete", {"name": f"M{i}"}, n + i)
times_us.sort()
print(f"bdev_malloc_create round trip: median {statistics.median(times_us):.0f} us, "
      f"p90 {times_us[n * 9 // 10]:.0f} us")
PY
kill $PID; wait $PID 2>/dev/null; rm -rf "$D"
