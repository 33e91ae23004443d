#!/usr/bin/env bash
# Two builds of Espalier side by side: alternates `A bench W` and `B bench W`
# processes for ROUNDS rounds per workload (the order flips every round) and
# prints the median over rounds of each side's per-process median, and the
# ratio B/A. For changes that cannot be switched at run time (a cargo
# feature, an allocator): build the baseline into its own target directory,
#   git worktree add /tmp/base HEAD~1 && (cd /tmp/base && cargo build --release -p espalier --target-dir /tmp/tgt-base)
#   scripts/bench-ab.sh /tmp/tgt-base/release/espalier target/release/espalier 3 "resnet20 resnet18 bert-base"
# Usage: scripts/bench-ab.sh A B [ROUNDS] [WORKLOADS] [REPEATS]
# (WORKLOADS: `espalier bench` workloads, default "resnet20 resnet18";
# `mnist` needs DATA, the data root, default ../shared/data.)
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1 B=$2 ROUNDS=${3:-3} WORKLOADS=${4:-resnet20 resnet18} REPEATS=${5:-3}
DATA=${DATA:-../shared/data}
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
echo "# $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(date -u), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# A = $A"
echo "# B = $B"
for w in $WORKLOADS; do
  for r in $(seq 1 "$ROUNDS"); do
    order="A B"; [ $((r % 2)) -eq 0 ] && order="B A"
    for side in $order; do
      bin=$A; [ "$side" = B ] && bin=$B
      "$bin" --data-dir "$DATA" bench "$w" --no-reference --repeats "$REPEATS" --quiet |
        awk -v s="$side" '$1 != "workload" && NF >= 7 {print s, $1, $3}' | tee -a "$rows"
    done
  done
done
echo
echo "| workload | A median s | B median s | B/A |"
echo "|---|---:|---:|---:|"
python3 - "$rows" <<'PY'
import sys, statistics, collections
t = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    side, w, s = line.split()
    t[w][side].append(float(s))
for w, d in t.items():
    a, b = statistics.median(d["A"]), statistics.median(d["B"])
    print(f"| {w} | {a:.3f} | {b:.3f} | {b / a:.2f} |")
PY
