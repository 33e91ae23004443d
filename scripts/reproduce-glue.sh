#!/usr/bin/env bash
# Fine-tunes all-MiniLM-L6-v2 on GLUE tasks with configs/glue/<task>.toml and
# publishes each run to results/glue-<task>-minilm/.
#   scripts/reproduce-glue.sh [TASK...]     (default: rte mrpc stsb cola sst2)
# Needs ../shared/data/glue and ../shared/models/all-MiniLM-L6-v2 (or DATA=...).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
tasks=("$@"); [ ${#tasks[@]} -gt 0 ] || tasks=(rte mrpc stsb cola sst2)
cargo build --release -p espalier -q
for t in "${tasks[@]}"; do
  cmd="cargo run --release -p espalier -- run configs/glue/$t.toml --data-dir $DATA --out runs/glue-$t-minilm"
  echo "== $cmd"
  ./target/release/espalier run "configs/glue/$t.toml" --data-dir "$DATA" --out "runs/glue-$t-minilm"
  scripts/publish-run.sh "runs/glue-$t-minilm" "glue-$t-minilm" "$cmd"
done
