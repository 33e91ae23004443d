#!/usr/bin/env bash
# Runs a fixed set of small experiments with one espalier binary into OUT, so
# that two builds (before and after an engine change) can be compared with
# scripts/compare-metrics.py: every field of every metrics.jsonl line but the
# timings must be identical.
#
#   scripts/engine-equivalence.sh BIN OUT [DATA_DIR]
#
# BIN: the espalier binary; OUT: a fresh directory; DATA_DIR: full MNIST
# (default ../shared/data). About 3 minutes on 2 cores.
#
# One thread: the convolution's weight gradient sums over images in an
# order that depends on how the thread pool splits the batch, so two
# multi-threaded LeNet-5 runs of the same binary differ in the last bits.
set -euo pipefail
export RAYON_NUM_THREADS=1
BIN=$1
OUT=$2
DATA=${3:-../shared/data}
mkdir -p "$OUT"
small=(--data-dir "$DATA" --set data.limit_train=6000 --set data.limit_test=2000)
run() { local out=$1; shift; "$BIN" run "$@" --out "$OUT/$out" >"$OUT/$out.log" 2>&1 || { cat "$OUT/$out.log"; exit 1; }; }

# 1. The quickstart (IMP, 3 rounds, embedded data).
run quickstart configs/quickstart.toml
# 2. IMP with rewinding to initialization and a gradual movement run.
run imp-rewind configs/quickstart.toml --set prune.schedule.rewind=init --set train.epochs=2 --set prune.schedule.epochs_per_round=1
run gradual-movement configs/quickstart.toml --set prune.importance=movement \
  --set 'prune.schedule={ kind = "gradual", final_sparsity = 0.8, start_epoch = 0, end_epoch = 2, every_steps = 20 }'
# 3. Structured pruning of an MLP: a dense run, then i-SpaSP, L1 and GReg-1 from it.
run mlp1000-dense configs/structured/mlp1000-dense.toml "${small[@]}" --set train.epochs=2
run mlp1000-ispasp configs/structured/mlp1000-ispasp.toml "${small[@]}" --set init_from="$OUT/mlp1000-dense" --set structured.finetune_epochs=1
run mlp1000-l1-ft configs/structured/mlp1000-l1-ft.toml "${small[@]}" --set init_from="$OUT/mlp1000-dense" --set structured.finetune_epochs=2
run mlp1000-greg1 configs/structured/mlp1000-greg1.toml "${small[@]}" --set init_from="$OUT/mlp1000-dense" \
  --set structured.greg.max_epochs=2 --set structured.finetune_epochs=1
# 4. ADMM on LeNet-5 at a small scale, then SR-STE retraining.
run lenet5-dense configs/admm/lenet5-dense.toml "${small[@]}" --set train.epochs=1
run lenet5-admm configs/admm/lenet5-admm.toml "${small[@]}" --set init_from="$OUT/lenet5-dense" \
  --set train.epochs=2 --set prune.admm.every_steps=10 --set prune.schedule.finetune_epochs=1
run lenet5-admm-srste configs/admm/lenet5-admm.toml "${small[@]}" --set init_from="$OUT/lenet5-dense" \
  --set train.epochs=1 --set prune.admm.every_steps=10 --set prune.schedule.finetune_epochs=1 --set prune.sr_ste.decay=2e-4 \
  --set 'prune.params={ exclude = ["conv1.weight", "fc1.weight"] }' --set 'prune.granularity={ kind = "n_of_m", n = 2, m = 4 }' \
  --set prune.schedule.sparsity=0.5
# 5. SPUR (IMP with the row/column group lasso) on LeNet-300-100.
run lenet300-dense configs/spur/lenet300-dense.toml "${small[@]}" --set train.epochs=1
run lenet300-spur configs/spur/lenet300-spur.toml "${small[@]}" --set init_from="$OUT/lenet300-dense" \
  --set prune.schedule.target_sparsity=0.5 --set prune.schedule.epochs_per_round=1
echo "done: $OUT"
