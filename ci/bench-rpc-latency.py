#!/usr/bin/env python3
"""RPC latency under load: bdev_get_bdevs round trips with 100 bdevs, first with the
appliance idle, then while both reactors run a benchmark job on its own bdevs (started by
RPC, as SPDK's bdevperf.py perform_tests does). Prints p50/p99/max and the loaded/idle ratio.

    python3 ci/bench-rpc-latency.py [--calls N] [--cpumask 0x3] [--seconds S]
"""
import argparse
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bindings" / "python"))
from unblend_rpc import Client  # noqa: E402


def percentile(sorted_us, q):
    return sorted_us[min(len(sorted_us) - 1, int(q * len(sorted_us)))]


def measure(client, calls):
    lat = []
    for _ in range(calls):
        t = time.perf_counter_ns()
        bdevs = client.bdev_get_bdevs()
        lat.append((time.perf_counter_ns() - t) / 1000)
        assert len(bdevs) >= 100
    lat.sort()
    return {"p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99), "max": lat[-1]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--cpumask", default="0x3")
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "unblend"))
    ap.add_argument("--client-fifo", action="store_true",
                    help="run this client (not the appliance) at SCHED_FIFO priority 10, so that "
                         "on a machine with no core to spare it preempts the busy-polling reactors "
                         "as soon as an answer arrives (needs root)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    sock = os.path.join(tmp, "unblend.sock")
    env = dict(os.environ, UNBLEND_LOG="warn")
    proc = subprocess.Popen([args.bin, "serve", "-r", sock, "-m", args.cpumask],
                            stdout=subprocess.DEVNULL, env=env)
    if args.client_fifo:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.1)
        with Client(sock) as c:
            for i in range(99):
                c.bdev_null_create(f"Null{i}", num_blocks=262144, block_size=4096)
            idle = measure(c, args.calls)
            c.unblend_bench_start("Malloc0", queue_depth=64, io_size=4096,
                                  workload="randrw", seconds=args.seconds)
            time.sleep(1)
            busy_before = [r["busy"] for r in c.framework_get_reactors()["reactors"]]
            loaded = measure(c, args.calls)
            busy_after = [r["busy"] for r in c.framework_get_reactors()["reactors"]]
            progress = c.unblend_bench_results()
            assert progress["running"], f"the I/O job ended before the measurement did: {progress}"
            ios = progress["ios_so_far"]
        print(f"bdev_get_bdevs with 100 bdevs, {args.calls} calls each, reactors {args.cpumask}, "
              f"client {'SCHED_FIFO 10' if args.client_fifo else 'default priority'}")
        print(f"  idle:   p50 {idle['p50']:.0f} us  p99 {idle['p99']:.0f} us  max {idle['max']:.0f} us")
        print(f"  loaded: p50 {loaded['p50']:.0f} us  p99 {loaded['p99']:.0f} us  max {loaded['max']:.0f} us"
              f"  ({ios} I/Os done by the job so far; reactor busy ns grew by "
              f"{[a - b for a, b in zip(busy_after, busy_before)]})")
        print(f"  loaded/idle p99 ratio {loaded['p99'] / idle['p99']:.2f}; "
              f"p99 under load {'<' if loaded['p99'] < 1000 else '>='} 1 ms")
        return 0 if loaded["p99"] < 1000 else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
