#!/usr/bin/env bash
# Reproduces the paper tables specified under configs/tables/ (issue #7):
# runs the cells that are missing (each an ordinary run directory under
# runs/tables/<table>/<scale>/, so an interrupted table resumes) and writes
# results/<table>/ (README.md, results.csv, plot.png, plot.svg, command.txt).
#   scripts/reproduce.sh TABLE|all [espalier table options]
#   scripts/reproduce.sh imp-lenet300
#   scripts/reproduce.sh all --scale paper --jobs 2     (the paper's scale; hours)
#   scripts/reproduce.sh ispasp-mlp-table --report-only       (re-render from the runs)
# Data: $DATA (default ../shared/data). On a shared machine run one table at a
# time with CANDLE_NUM_THREADS=1 (candle's thread pools spin and slow each other).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
tables() { for f in configs/tables/*.toml; do basename "$f" .toml; done | tr '\n' ' '; }
if [ $# -lt 1 ]; then
  echo "usage: $0 TABLE|all [espalier table options]; tables: $(tables)" >&2
  exit 2
fi
which=$1
shift
if [ "$which" = all ]; then
  specs=(configs/tables/*.toml)
else
  specs=("configs/tables/$which.toml")
  [ -f "${specs[0]}" ] || { echo "error: no table spec ${specs[0]}; tables: $(tables)" >&2; exit 2; }
fi
cargo build --release -p espalier -q
for spec in "${specs[@]}"; do
  ./target/release/espalier table "$spec" --data-dir "$DATA" "$@"
done
