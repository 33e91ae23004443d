#!/usr/bin/env bash
# LeNet-300-100 on full MNIST with IMP down to 10% of the weights
# (configs/mnist/lenet300-imp.toml), published to results/lenet300-imp/.
# Needs full MNIST under $DATA/mnist (default ../shared/data). About 5 min on
# 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
cmd="cargo run --release -p espalier -- run configs/mnist/lenet300-imp.toml --data-dir $DATA --out runs/lenet300-imp"
cargo build --release -p espalier
$cmd
scripts/publish-run.sh runs/lenet300-imp lenet300-imp "$cmd"
