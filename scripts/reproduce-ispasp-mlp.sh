#!/usr/bin/env bash
# i-SpaSP vs the baselines on the 784-1000-10 MNIST MLP, without fine-tuning
# (issue: structured pruning). Trains the dense MLP once, then prunes its
# hidden layer to s in {500, 250, 100, 50} units with each criterion, shrinks
# the model physically and evaluates it on the full MNIST test set. Writes
# results/ispasp-mlp/{README.md,results.csv,command.txt}.
#   scripts/reproduce-ispasp-mlp.sh            (needs ../shared/data/mnist, or DATA=...)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
METHODS=${METHODS:-ispasp random activation l1 l2 taylor mi}
SIZES=${SIZES:-500 250 100 50}
cargo build --release -p espalier -q
bin=./target/release/espalier
$bin run configs/structured/mlp1000-dense.toml --data-dir "$DATA" --out runs/mlp1000-dense -q
for m in $METHODS; do
  for s in $SIZES; do
    $bin run "configs/structured/mlp1000-$m.toml" --data-dir "$DATA" --set "structured.keep=$s" \
      --out "runs/ispasp-mlp/$m-$s" -q
  done
done
python3 - "$METHODS" "$SIZES" <<'PY'
import json, sys, os, datetime
methods, sizes = sys.argv[1].split(), [int(s) for s in sys.argv[2].split()]
dense = json.load(open("runs/mlp1000-dense/summary.json"))
dense_acc = dense["rounds"][-1]["metrics"]["accuracy"]
rows, csv = {}, ["model,data,method,sparsity,metric,value,seed"]
for m in methods:
    for s in sizes:
        j = json.load(open(f"runs/ispasp-mlp/{m}-{s}/summary.json"))
        r, st = j["rounds"][-1], j["structured"]
        rows[(m, s)] = (r["metrics"]["accuracy"], st["residual"].get("fc1"), st["select_seconds"])
        for metric, v in [("accuracy", r["metrics"]["accuracy"]), ("output_residual", st["residual"].get("fc1")),
                          ("select_seconds", st["select_seconds"])]:
            csv.append(f"mlp-784-1000-10,mnist,structured-{m}-keep{s},{r['sparsity']:.6f},{metric},{v:.4f},{j['seed']}")
csv.append(f"mlp-784-1000-10,mnist,dense,0.000000,accuracy,{dense_acc:.4f},{dense['seed']}")
os.makedirs("results/ispasp-mlp", exist_ok=True)
open("results/ispasp-mlp/results.csv", "w").write("\n".join(csv) + "\n")
md = ["# i-SpaSP vs baselines: 784-1000-10 MLP on MNIST, no fine-tuning", "",
      f"Dense MLP (configs/structured/mlp1000-dense.toml: full MNIST 60k/10k, 10 epochs AdamW): test accuracy {dense_acc:.2f}%.",
      "Each cell keeps s of the 1000 hidden units by the criterion, shrinks the model to 784-s-10 (no weight refit,",
      "no fine-tuning) and evaluates it on the full 10k test set; 1000 calibration examples; seed 0.", "",
      "Test accuracy (%):", "",
      "| s (units kept) | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
for s in sizes:
    md.append(f"| {s} | " + " | ".join(f"{rows[(m, s)][0]:.2f}" for m in methods) + " |")
md += ["", "Output residual ‖Y − A_S H_S‖/‖Y‖ of the hidden layer's contribution to the logits (calibration data):", "",
       "| s | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
for s in sizes:
    md.append(f"| {s} | " + " | ".join(f"{rows[(m, s)][1]:.4f}" for m in methods) + " |")
md += ["", "Wall-clock seconds to choose the units (2 cores, calibration forward passes included):", "",
       "| s | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
for s in sizes:
    md.append(f"| {s} | " + " | ".join(f"{rows[(m, s)][2]:.2f}" for m in methods) + " |")
open("results/ispasp-mlp/README.md", "w").write("\n".join(md) + "\n")
open("results/ispasp-mlp/command.txt", "w").write(
    f"# Produced on {datetime.date.today()} on {os.cpu_count()} cores\nscripts/reproduce-ispasp-mlp.sh\n")
print("\n".join(md))
PY
