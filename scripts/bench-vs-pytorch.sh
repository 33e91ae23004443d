#!/usr/bin/env bash
# Issues #8 and #25's benchmark suite: every `espalier bench` training workload
# next to its PyTorch counterpart (scripts/bench_pytorch.py: same shapes,
# optimizer settings and thread count), then the forward pass of the same
# models at batch 1 and 32 (`--infer`; PyTorch under torch.inference_mode()),
# then the f32 GEMM rate of both (`gemm`), alternating Espalier and PyTorch
# processes for ROUNDS rounds (the order flips every round), each process
# timing REPEATS epochs/steps/passes after a warm-up. Prints a table of medians
# (over rounds of the per-process medians), the time ratio Espalier/PyTorch,
# each side's achieved GFLOP/s (the model's FLOP count: a training step counts
# three forward passes) and its share of the measured GEMM peak (the fastest
# GEMM row of the run), and the peak RSS of each process (Espalier: VmHWM;
# PyTorch: ru_maxrss, the interpreter and torch included), and writes it to
# results/perf/bench-vs-pytorch.md with the machine description, date and git
# revision.
#
# By hand only (needs PyTorch + transformers, never in CI):
#   python3 -m venv /opt/torchref && /opt/torchref/bin/pip install torch transformers
#   scripts/bench-vs-pytorch.sh [ROUNDS] [REPEATS]
# Environment: THREADS (default: nproc), PY, MODEL (all-MiniLM-L6-v2), DATA
# (the data root holding mnist/), WORKLOADS (default: all; a subset of
# "mnist minilm bert-base resnet20 resnet18"), INFER (the same names, for the
# forward passes; default all; empty for none), INFER_BATCHES (default 1,32),
# GEMM_SIZE (default 2048; 0 for no GEMM rows), RUN_DIR (optional: a structured
# MLP run whose dense vs shrunk inference latency `espalier bench RUN_DIR` and
# `bench_pytorch.py latency --run-dir RUN_DIR` add, alternating per round), OUT (default results/perf/bench-vs-pytorch.md), NOTE (a line
# about the machine's state, e.g. "shared with other jobs").
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2} REPEATS=${2:-3} THREADS=${THREADS:-$(nproc)}
PY=${PY:-/opt/torchref/bin/python}
MODEL=${MODEL:-../shared/models/all-MiniLM-L6-v2}
DATA=${DATA:-../shared/data}
WORKLOADS=${WORKLOADS-mnist minilm bert-base resnet20 resnet18}
INFER=${INFER-mnist minilm bert-base resnet20 resnet18}
INFER_BATCHES=${INFER_BATCHES:-1,32}
GEMM_SIZE=${GEMM_SIZE:-2048}
OUT=${OUT:-results/perf/bench-vs-pytorch.md}
NOTE=${NOTE:-}
cargo build --release -p espalier -q
ES=./target/release/espalier
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
touch "$TMP/rows"

# The Espalier command of a workload (rows named like PyTorch's): training
# workloads, `infer:<w>` forward passes, `gemm`.
es_cmd() {
  case $1 in
    gemm) echo "$ES bench gemm --gemm-size $GEMM_SIZE" ;;
    infer:minilm) echo "$ES bench bert --infer --model-dir $MODEL --seq-len 128 --batch-sizes $INFER_BATCHES" ;;
    infer:bert-base) echo "$ES bench bert-base --infer --layers 4 --seq-len 128 --batch-sizes $INFER_BATCHES" ;;
    infer:*) echo "$ES bench ${1#infer:} --infer --batch-sizes $INFER_BATCHES" ;;
    mnist) echo "$ES --data-dir $DATA bench mnist --no-reference" ;;
    minilm) echo "$ES bench bert --model-dir $MODEL --batch-size 32 --seq-len 128 --no-reference" ;;
    bert-base) echo "$ES bench bert-base --layers 4 --batch-size 8 --seq-len 128 --no-reference" ;;
    resnet20) echo "$ES bench resnet20 --batch-size 128 --no-reference" ;;
    resnet18) echo "$ES bench resnet18 --batch-size 32 --no-reference" ;;
    *) echo "unknown workload $1" >&2; exit 2 ;;
  esac
}
pt_cmd() {
  case $1 in
    gemm) echo "$PY scripts/bench_pytorch.py gemm --gemm-size $GEMM_SIZE" ;;
    infer:*) echo "$PY scripts/bench_pytorch.py ${1#infer:} --infer --model $MODEL --layers 4 --seq-len 128 --batch-sizes $INFER_BATCHES" ;;
    mnist) echo "$PY scripts/bench_pytorch.py mnist --mnist $DATA/mnist" ;;
    minilm) echo "$PY scripts/bench_pytorch.py minilm --model $MODEL --batch-size 32 --seq-len 128" ;;
    bert-base) echo "$PY scripts/bench_pytorch.py bert-base --layers 4 --batch-size 8 --seq-len 128" ;;
    resnet20) echo "$PY scripts/bench_pytorch.py resnet20 --batch-size 128" ;;
    resnet18) echo "$PY scripts/bench_pytorch.py resnet18 --batch-size 32" ;;
  esac
}

# Rows "framework workload median_s peak_rss_mib base_rss_mib gflops" ("-"
# where there is none) go to $TMP/rows.
run_es() {
  RAYON_NUM_THREADS=$THREADS $(es_cmd "$1") --repeats "$REPEATS" --quiet |
    awk '$1 != "workload" && NF >= 8 {g = ($8 == "–") ? "-" : $8; print "espalier", $1, $3, $7, "-", g}' | tee -a "$TMP/rows"
}
run_pt() {
  $(pt_cmd "$1") --repeats "$REPEATS" --threads "$THREADS" 2>/dev/null |
    awk '$1 == "RESULT" {split($3, m, "="); split($6, r, "="); split($7, b, "="); print "pytorch", $2, m[2], r[2], b[2], "-"}' | tee -a "$TMP/rows"
}

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
MEM=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
TORCH=$("$PY" -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")')
REV=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates scripts || echo "+dirty")
START=$(date -u) LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
echo "# $(nproc) cores ($CPU), $MEM, $THREADS threads, git $REV, $TORCH, load $LOAD0"
JOBS="$WORKLOADS"
for w in $INFER; do JOBS+=" infer:$w"; done
[ "$GEMM_SIZE" -gt 0 ] && JOBS+=" gemm"
for w in $JOBS; do
  for r in $(seq "$ROUNDS"); do
    echo "## $w round $r" >&2
    if [ $((r % 2)) -eq 1 ]; then run_es "$w"; run_pt "$w"; else run_pt "$w"; run_es "$w"; fi
  done
done
LAT=""
if [ -n "${RUN_DIR:-}" ]; then
  for r in $(seq "$ROUNDS"); do
    echo "## latency round $r" >&2
    LAT+="round $r, espalier bench $RUN_DIR:"$'\n'
    LAT+=$(RAYON_NUM_THREADS=$THREADS $ES bench "$RUN_DIR" --repeats "$REPEATS" --quiet)$'\n'
    LAT+="round $r, bench_pytorch.py latency --run-dir $RUN_DIR:"$'\n'
    LAT+=$("$PY" scripts/bench_pytorch.py latency --run-dir "$RUN_DIR" --repeats "$REPEATS" --threads "$THREADS" 2>/dev/null)$'\n'
  done
fi
END=$(date -u) LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

# The raw rows beside the report, before anything can fail.
mkdir -p "$(dirname "$OUT")"
cp "$TMP/rows" "${OUT%.md}.rows"
TABLE=$(python3 scripts/bench_table.py "$TMP/rows")
echo "$TABLE"
[ -n "$LAT" ] && echo "$LAT"

{
  echo "# Espalier vs PyTorch: the benchmark suite of issues #8 and #25"
  echo
  echo "Output of \`scripts/bench-vs-pytorch.sh $ROUNDS $REPEATS\` (THREADS=$THREADS)."
  echo
  echo "- Machine: $(nproc) cores ($CPU), $MEM; $THREADS threads on both sides (RAYON_NUM_THREADS / torch.set_num_threads)."
  echo "- Started $START (load average $LOAD0), finished $END (load average $LOAD1)."
  echo "- Espalier git $REV (release build); PyTorch: $TORCH."
  [ -n "$NOTE" ] && echo "- $NOTE"
  echo "- $ROUNDS rounds per workload, Espalier and PyTorch processes alternating (order flipped every round);"
  echo "  each process times $REPEATS epochs/steps after one warm-up and reports their median; the table gives the"
  echo "  median over rounds. Peak RSS: the largest over rounds of each process's peak (Espalier: VmHWM;"
  echo "  PyTorch: ru_maxrss, which includes the interpreter and the torch/transformers libraries; the column"
  echo "  \"after import\" is PyTorch's resident memory after \`import torch\`, before the workload)."
  echo
  echo "$TABLE"
  if [ -n "$LAT" ]; then
    echo
    echo "Dense vs shrunk inference latency (forward pass, evaluation mode, synthetic inputs; ms, median of $REPEATS after a warm-up)"
    echo "of the structured run \`$RUN_DIR\`, Espalier and PyTorch (the same layer shapes rebuilt from the run's safetensors):"
    echo
    echo '```'
    echo "$LAT"
    echo '```'
  fi
} >"$OUT"
echo "wrote $OUT" >&2
