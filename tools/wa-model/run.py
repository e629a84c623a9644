#!/usr/bin/env python3
"""Sequential driver for wasim (one simulation process at a time, each with a 60 s timeout).
Usage: python3 run.py [seeds...]   (default seeds 1 2). Raw lines -> results.txt, table -> stdout."""
import subprocess, sys, re, os
os.chdir(os.path.dirname(os.path.abspath(__file__)))
SEEDS = [int(x) for x in sys.argv[1:]] or [1, 2]
raw = open("results.txt", "w")

def sim(args):
    out = subprocess.run(["./wasim"] + args, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SystemExit(f"wasim {' '.join(args)} failed: {out.stderr}")
    raw.write(out.stdout); raw.flush()
    return float(re.search(r"WA=([0-9.]+)", out.stdout).group(1))

def avg(args):
    return sum(sim(args + ["-s", str(s)]) for s in SEEDS) / len(SEEDS)

POL = [  # label, args
    ("1  greedy, 1 user + 1 reloc stream", ["-p", "greedy"]),
    ("2a cost-benefit, age=newest write", ["-p", "cb"]),
    ("2b cost-benefit, age=mean live write", ["-p", "cbmean"]),
    ("2c cost-benefit, age=segment open time*", ["-p", "cb", "-V", "cbseg"]),
    ("3a CB(newest)+age-sort, batch 8", ["-p", "cbsort"]),
    ("3b CB(mean)+age-sort, batch 8", ["-p", "cbmeansort"]),
    ("3c CB(seg-open)+age-sort, batch 8*", ["-p", "cbsort", "-V", "cbseg"]),
    ("4a oracle hot/cold, greedy", ["-p", "oracle-greedy"]),
    ("4b oracle hot/cold, CB(newest)", ["-p", "oracle-cb"]),
    ("4c oracle hot/cold, CB(seg-open)*", ["-p", "oracle-cb", "-V", "cbseg"]),
    ("5a SepBIT, greedy", ["-p", "sepbit-greedy"]),
    ("5b SepBIT, CB(newest)", ["-p", "sepbit-cb"]),
    ("5c SepBIT, CB(seg-open)*", ["-p", "sepbit-cb", "-V", "cbseg"]),
    ("6a prev-age<avg, 1 reloc, greedy", ["-p", "prevage-avg"]),
    ("6b prev-age<median, 1 reloc, greedy", ["-p", "prevage-med"]),
    ("6c prev-age<avg, reloc split, greedy", ["-p", "prevage-avg-rs"]),
    ("6d prev-age<median, reloc split, greedy", ["-p", "prevage-med-rs"]),
    ("6e prev-age<avg, 1 reloc, CB(seg-open)*", ["-p", "prevage-avg", "-V", "cbseg"]),
    ("6f prev-age<avg, reloc split, CB(seg-open)*", ["-p", "prevage-avg-rs", "-V", "cbseg"]),
]

def part_sweep(fill):
    """oracle 2-class, hot/cold in fixed partitions (sum S-R), greedy within class; best quota."""
    S, B, R = 256, 1024, 4
    L = int(fill * S * B); H = int(0.2 * L)
    lo, hi = -(-H // B) + 2, S - R - (-(-(L - H) // B)) - 2
    c = -(-H // B) + round(0.49 * (S - R - L / B))
    best = None
    for q in range(max(lo, c - 8), min(hi, c + 8) + 1, 2):
        wa = avg(["-p", "oracle-part", "-f", str(fill), "--quota", str(q)])
        if best is None or wa < best[0]: best = (wa, q)
    return best

res = {}
for lab, a in POL:
    res[lab] = (avg(a + ["-f", "0.8"]), avg(a + ["-f", "0.8", "-w", "uniform"]))
print(f"WA at fill 0.80, S=256 B=1024 R=4, warm 10L, meas 10L, seeds {SEEDS} (mean)")
print(f"{'policy':46s} {'80/20':>7s} {'uniform':>7s}")
for lab, _ in POL:
    print(f"{lab:46s} {res[lab][0]:7.3f} {res[lab][1]:7.3f}")

top = sorted(POL, key=lambda p: res[p[0]][0])[:3]
print("\nTop 3 (80/20) across fills:")
print(f"{'policy':46s} {'0.70':>7s} {'0.80':>7s} {'0.85':>7s}")
for lab, a in top:
    r = [avg(a + ["-f", str(f)]) for f in (0.7, 0.85)]
    print(f"{lab:46s} {r[0]:7.3f} {res[lab][0]:7.3f} {r[1]:7.3f}")
ps = {f: part_sweep(f) for f in (0.7, 0.8, 0.85)}
print(f"{'oracle fixed partition, greedy, best quota':46s} " +
      " ".join(f"{ps[f][0]:7.3f}" for f in (0.7, 0.8, 0.85)) +
      "   (hot quota: " + ", ".join(str(ps[f][1]) for f in (0.7, 0.8, 0.85)) + " segs)")
for f in (0.7, 0.8, 0.85):
    out = subprocess.run(["./wasim", "-p", "analytic", "-f", str(f)], capture_output=True, text=True).stdout
    raw.write(out); print(out.strip())
