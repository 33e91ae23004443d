#!/usr/bin/env bash
# 2:4 pattern pruning of all-MiniLM-L6-v2 fine-tuned on MRPC (Wang, "ADMM Based
# Semi-Structured Pattern Pruning Framework for Transformer", 2024, arXiv
# 2407.08334): one-shot magnitude + masked retraining, one-shot + SR-STE, ADMM +
# masked retraining, ADMM + SR-STE, beside the dense model; same epochs for all.
# Writes results/admm-minilm-mrpc/{README.md,results.csv,command.txt}.
#   scripts/reproduce-admm-minilm-mrpc.sh    (needs ../shared; runs/glue-mrpc-minilm from configs/glue/mrpc.toml)
# Scale knobs: LIMIT_TRAIN (default 2000 of the 3,668 training pairs), LR (default 1e-4).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
LIMIT_TRAIN=${LIMIT_TRAIN:-2000} LR=${LR:-1e-4}
METHODS=${METHODS:-oneshot oneshot-srste admm admm-srste}
cargo build --release -p espalier -q
bin=./target/release/espalier
[ -f runs/glue-mrpc-minilm/summary.json ] ||
  $bin run configs/glue/mrpc.toml --data-dir "$DATA" --out runs/glue-mrpc-minilm -q
for m in $METHODS; do
  $bin run "configs/admm/minilm-mrpc-$m.toml" --data-dir "$DATA" --set "data.limit_train=$LIMIT_TRAIN" \
    --set "train.optimizer.lr=$LR" --out "runs/admm-minilm-mrpc/$m" -q
done
python3 - "$METHODS" "$LIMIT_TRAIN" "$LR" <<'PY'
import json, sys, os, datetime
methods, limit, lr = sys.argv[1].split(), sys.argv[2], sys.argv[3]
names = {"oneshot": "one-shot 2:4 + masked retraining", "oneshot-srste": "one-shot 2:4 + SR-STE",
         "admm": "ADMM 2:4 + masked retraining", "admm-srste": "ADMM 2:4 + SR-STE"}
d = json.load(open("runs/glue-mrpc-minilm/summary.json"))
dense = d["rounds"][-1]["metrics"]
csv = ["model,data,method,sparsity,metric,value,seed"] + [
    f"all-MiniLM-L6-v2,glue-mrpc,dense,0.000000,{k},{v:.4f},{d['seed']}" for k, v in sorted(dense.items())]
md = ["# 2:4 pattern pruning of all-MiniLM-L6-v2 on MRPC: ADMM and SR-STE", "",
      "Start: all-MiniLM-L6-v2 fine-tuned on MRPC (configs/glue/mrpc.toml: full training set, 3 epochs).",
      f"Scale: each method then trains on the first {limit} of the 3,668 MRPC training pairs for 2 epochs",
      f"(AdamW lr {lr}, linear warmup/decay per phase, batch 32, clipping 1.0) and is evaluated on the",
      "Microsoft MRPC test file (1,725 pairs). Every encoder and pooler weight matrix is pruned to 2:4 along",
      "its input dimension (50%); embeddings and the classifier are not pruned.",
      "- one-shot: magnitude 2:4 projection of the fine-tuned model, then 2 epochs of retraining;",
      "- ADMM: 1 epoch of ADMM towards the 2:4 set (Z/U every 8 steps, ρ from 1e-2 ×1.3), hard projection,",
      "  then 1 epoch of retraining;",
      "- masked retraining keeps the mask fixed; SR-STE recomputes it from the dense weights after every",
      "  step, with gradients straight through the mask and decay 2e-4 on the pruned weights.",
      "Seed 42, one run per cell.", "",
      "| method | F1 | accuracy | final ADMM primal gap |", "|---|---:|---:|---:|",
      f"| dense (fine-tuned) | {dense['f1']:.2f} | {dense['accuracy']:.2f} | – |"]
f1 = {}
for m in methods:
    j = json.load(open(f"runs/admm-minilm-mrpc/{m}/summary.json"))
    last = j["rounds"][-1]
    f1[m] = last["metrics"]["f1"]
    gap = j.get("admm_trace") or []
    md.append(f"| {names[m]} | {last['metrics']['f1']:.2f} | {last['metrics']['accuracy']:.2f} | "
              + (f"{gap[-1]['primal_gap']:.4f} |" if gap else "– |"))
    for k, v in sorted(last["metrics"].items()):
        csv.append(f"all-MiniLM-L6-v2,glue-mrpc,{m},{last['sparsity']:.6f},{k},{v:.4f},{j['seed']}")
tr = json.load(open("runs/admm-minilm-mrpc/admm/summary.json")).get("admm_trace") if "admm" in methods else None
if tr:
    md += ["", f"ADMM's relative primal gap ‖W − Z‖/‖W‖ went from {tr[0]['primal_gap']:.3f} to {tr[-1]['primal_gap']:.3f} over "
           f"{len(tr)} updates: at this scale ADMM has not converged (AdamW at lr {lr} moves a weight by at most",
           "~lr per step, far less than the weights it must bring to zero in one short epoch; the paper runs many",
           "epochs of W-steps), so the hard projection still removes most of what one-shot pruning removes."]
md += ["", "Claims checked against the cells above:", ""]
if "admm" in f1 and "oneshot" in f1:
    md.append(f"- ADMM beats one-shot magnitude pattern pruning (masked retraining): "
              f"**{'holds' if f1['admm'] > f1['oneshot'] else 'does not hold'}** ({f1['admm']:.2f} vs {f1['oneshot']:.2f} F1).")
if "oneshot-srste" in f1 and "oneshot" in f1:
    md.append(f"- SR-STE retraining beats masked retraining after one-shot pruning: "
              f"**{'holds' if f1['oneshot-srste'] > f1['oneshot'] else 'does not hold'}** "
              f"({f1['oneshot-srste']:.2f} vs {f1['oneshot']:.2f}).")
best = max(f1.values())
md.append(f"- The best 2:4 model is within 2 F1 points of dense: **{'holds' if dense['f1'] - best <= 2 else 'does not hold'}** "
          f"({best:.2f} vs {dense['f1']:.2f}).")
os.makedirs("results/admm-minilm-mrpc", exist_ok=True)
open("results/admm-minilm-mrpc/results.csv", "w").write("\n".join(csv) + "\n")
open("results/admm-minilm-mrpc/README.md", "w").write("\n".join(md) + "\n")
open("results/admm-minilm-mrpc/command.txt", "w").write(
    f"# Produced on {datetime.date.today()} on {os.cpu_count()} cores\nscripts/reproduce-admm-minilm-mrpc.sh\n")
print("\n".join(md))
PY
