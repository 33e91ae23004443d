#!/usr/bin/env bash
# One BERT training step (all-MiniLM-L6-v2, sequence classification, AdamW,
# dropout on, clipping 1.0) at batch 32 x 128 tokens: Espalier and PyTorch
# side by side, alternating, on the same machine and thread count. By hand
# only (needs PyTorch: python3 -m venv /opt/torchref && /opt/torchref/bin/pip install torch transformers).
#   scripts/bench-bert-vs-pytorch.sh [ROUNDS] [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2} REPEATS=${2:-3} THREADS=${THREADS:-$(nproc)}
PY=${PY:-/opt/torchref/bin/python}
MODEL=${MODEL:-../shared/models/all-MiniLM-L6-v2}
cargo build --release -p espalier -q
echo "# $(nproc) cores, $THREADS threads, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), git $(git rev-parse --short HEAD)"
es=() pt=()
for r in $(seq "$ROUNDS"); do
  e=$(RAYON_NUM_THREADS=$THREADS ./target/release/espalier bench bert --model-dir "$MODEL" --batch-size 32 --seq-len 128 --repeats "$REPEATS" --quiet | awk '/^bert-step/ {print $3}')
  p=$("$PY" scripts/glue_pytorch.py --bench-step --model "$MODEL" --batch-size 32 --max-len 128 --repeats "$REPEATS" --threads "$THREADS" | awk '/median/ {print $3}')
  echo "round $r: espalier ${e}s  pytorch ${p}s"
  es+=("$e") pt+=("$p")
done
python3 - "${es[*]}" "${pt[*]}" <<'PY'
import statistics, sys
e = [float(x) for x in sys.argv[1].split()]; p = [float(x) for x in sys.argv[2].split()]
me, mp = statistics.median(e), statistics.median(p)
print(f"median s/step: espalier {me:.3f}  pytorch {mp:.3f}  ratio espalier/pytorch {me/mp:.2f}")
PY
