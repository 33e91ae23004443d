#!/usr/bin/env bash
# LeNet-5 pruned by ADMM exactly as Zhang et al. run it (Zhang, Ye, Zhang, Tang,
# Wen, Fardad & Wang, "A Systematic DNN Weight Pruning Framework using ADMM",
# ECCV 2018, arXiv 1804.03294; their code: KaiqiZhang/admm-pruning), beside
# one-shot magnitude pruning to the same per-layer targets with the same
# retraining: configs/admm/zhang/lenet5-{dense,oneshot,admm}.toml on full MNIST.
# About 95 minutes on 2 quiet cores (the ADMM run is 150,000 + 20,400 steps);
# every run resumes where it stopped.
# Writes results/admm-lenet5-zhang/{README.md,results.csv,command.txt}.
#   scripts/reproduce-admm-lenet5-zhang.sh      (needs ../shared/data/mnist, or DATA=...)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
BIN=${BIN:-./target/release/espalier}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p espalier -q
for c in dense oneshot admm; do
  [ -f "runs/zhang/lenet5-$c/summary.json" ] && continue
  "$BIN" run "configs/admm/zhang/lenet5-$c.toml" --data-dir "$DATA" --out "runs/zhang/lenet5-$c" -q
done
mkdir -p results/admm-lenet5-zhang
python3 scripts/report_admm_zhang.py runs/zhang results/admm-lenet5-zhang
cat > results/admm-lenet5-zhang/command.txt <<CMD
# $(date -u +%Y-%m-%d) on $(nproc) cores, git $(git rev-parse --short HEAD)
scripts/reproduce-admm-lenet5-zhang.sh
CMD
