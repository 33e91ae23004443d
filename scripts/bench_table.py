#!/usr/bin/env python3
"""The markdown table of scripts/bench-vs-pytorch.sh from its rows file.

Each line of ROWS is "framework workload median_s peak_rss_mib base_rss_mib
gflops" ("-" where there is none), as the suite writes them (and keeps them
beside its report as <report>.rows). Prints the GEMM peak of the rows and one
table row per workload: medians over rounds, the time ratio Espalier/PyTorch,
each side's GFLOP/s and its share of the peak, peak RSS.

    python3 scripts/bench_table.py results/perf/bench-vs-pytorch.rows
"""
import collections, statistics, sys
rows = collections.defaultdict(lambda: collections.defaultdict(list))
flops = {}  # FLOPs per repetition, from Espalier's GFLOP/s (the same work on both sides)
for line in open(sys.argv[1]):
    fw, w, t, m, base, g = line.split()
    rows[w][fw].append((float(t), float(m)))
    if base != "-":
        rows[w]["base"].append((0.0, float(base)))
    if g != "-":
        flops[w] = float(g) * 1e9 * float(t)
if not rows:
    sys.exit(0)
nan = float("nan")
med = {w: {fw: statistics.median(t for t, _ in v) for fw, v in d.items() if fw != "base"} for w, d in rows.items()}
gemm = [w for w in rows if w.startswith("gemm-")]
peak = max((flops[w] / med[w][fw] / 1e9 for w in gemm if w in flops for fw in med[w]), default=nan)
print(f"GEMM peak of this run: {peak:.1f} GFLOP/s (the fastest f32 GEMM row below).")
print()
print("| workload | Espalier median s | PyTorch median s | time ratio E/P | Espalier GFLOP/s (% of peak) | PyTorch GFLOP/s (% of peak) | Espalier peak RSS MiB | PyTorch peak RSS MiB | memory ratio E/P | PyTorch RSS after import MiB | per-round s (E; P) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for w, d in rows.items():
    e, p = d.get("espalier", []), d.get("pytorch", [])
    me, mp = med[w].get("espalier", nan), med[w].get("pytorch", nan)
    rate = lambda t: f"{flops[w] / t / 1e9:.1f} ({100 * flops[w] / t / 1e9 / peak:.0f}%)" if w in flops and t == t and t > 0 else "–"
    re, rp = max((m for _, m in e), default=nan), max((m for _, m in p), default=nan)
    rb = max((m for _, m in d.get("base", [])), default=nan)
    per = ", ".join(f"{t:.4g}" for t, _ in e) + "; " + ", ".join(f"{t:.4g}" for t, _ in p)
    ratio = me / mp if mp > 0 else nan
    print(f"| {w} | {me:.4g} | {mp:.4g} | {ratio:.2f} | {rate(me)} | {rate(mp)} | {re:.0f} | {rp:.0f} | {(re / rp if rp > 0 else nan):.2f} | {rb:.0f} | {per} |")
