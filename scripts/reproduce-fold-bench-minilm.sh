#!/usr/bin/env bash
# results/fold-bench-minilm: all-MiniLM-L6-v2 on MRPC pruned to 90% of its encoder
# weights by IMP and by SPUR (the proximal group lasso, λ = 60), at the scale of
# results/spur-minilm-table (20% of the remaining weights per round, each round 1
# epoch on the first 500 training pairs), then timed dense / sparse / folded
# (`espalier bench RUN_DIR`) and exported compactly, with and without folding.
#   scripts/reproduce-fold-bench-minilm.sh [DATA_DIR]
# About 35 minutes on a 2-core machine; run it with nothing else on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-../shared/data}
OUT=results/fold-bench-minilm
R=runs/fold-bench-minilm
cargo build --release -p espalier -q
E=./target/release/espalier
mkdir -p "$OUT" "$R"

$E run configs/glue/mrpc.toml --data-dir "$D" --out "$R/dense" -q
small=(--set data.limit_train=500 --set prune.schedule.rate=0.2)
$E run configs/spur/minilm-mrpc-imp.toml --data-dir "$D" -q "${small[@]}" \
  --set "init_from=\"$R/dense\"" --out "$R/imp90"
$E run configs/spur/minilm-mrpc-spur.toml --data-dir "$D" -q "${small[@]}" \
  --set "init_from=\"$R/dense\"" \
  --set 'train.regularizers=[{kind="group_lasso", lambda=60.0, lines="both", mode="proximal"}]' \
  --out "$R/spur90"

for r in imp90 spur90; do
  $E bench "$R/$r" --batch-sizes 1,32 --seq-len 128 --repeats 11 --json "$OUT/$r-bench.json" > "$OUT/$r-bench.txt"
  $E export "$R/$r" --format sparse --force
  $E export "$R/$r" --format sparse --fold --force --out "$R/$r/export/sparse-folded"
  $E eval "$R/$r/export/sparse-folded" --data-dir "$D" > "$OUT/$r-folded-eval.txt"
  cp "$R/$r/summary.json" "$OUT/$r-summary.json"
  ls -l "$R/$r/model.safetensors" "$R/$r/export/sparse/"*.safetensors "$R/$r/export/sparse-folded/"*.safetensors \
    > "$OUT/$r-sizes.txt"
done
