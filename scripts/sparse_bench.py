#!/usr/bin/env python3
"""results/sparse-bench: is a pruned MiniLM faster and smaller? (run by hand, never in CI)

For each cell (50 / 70 / 80 / 90 / 95% of the encoder's linear weights pruned,
and 2:4), in one run of this script:

1. `espalier run configs/sparse-bench/minilm-mrpc-magnitude.toml` from the dense
   MRPC run (one-shot per-layer magnitude, no retraining; skipped when done);
2. `espalier export --format sparse` and `--format hf`: file sizes beside the
   run's own model file and the dense f32 model;
3. `espalier bench RUN_DIR --batch-sizes 1,32 --seq-len 128`: Espalier's masked
   model through the dense kernels vs the sparse ones, alternating, medians;
   and the forward pass with the linear layers emptied (the time no sparse
   kernel can remove: the Amdahl bound);
4. PyTorch on the same weights (the `hf` export loaded by `transformers`),
   `torch.inference_mode()`, the same thread count: dense `nn.Linear`, and each
   encoder linear layer as a `torch.sparse_csr` matrix (`torch.sparse.mm`),
   alternating, medians.

Writes README.md (the table), results.csv and command.txt into --out.

    RAYON_NUM_THREADS=2 python scripts/sparse_bench.py --dense-run runs/hf-roundtrip/mrpc-dense \\
        --data-dir ../shared/data --out results/sparse-bench
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

CELLS = [("50%", 0.5, None), ("70%", 0.7, None), ("80%", 0.8, None), ("90%", 0.9, None), ("95%", 0.95, None),
         ("2:4", 0.5, (2, 4))]
CONFIG = "configs/sparse-bench/minilm-mrpc-magnitude.toml"


def sh(args, **kw):
    print("+", " ".join(str(a) for a in args), flush=True)
    return subprocess.run([str(a) for a in args], check=True, **kw)


class CsrLinear(nn.Module):
    """`nn.Linear` with its weight as a CSR matrix: y = (W xᵀ)ᵀ + b."""

    def __init__(self, lin):
        super().__init__()
        self.weight = lin.weight.detach().to_sparse_csr()
        self.bias = lin.bias.detach()

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        y = torch.sparse.mm(self.weight, flat.t()).t() + self.bias
        return y.reshape(*x.shape[:-1], -1)


def to_csr(model):
    for layer in model.bert.encoder.layer:
        for parent, name in [(layer.attention.self, "query"), (layer.attention.self, "key"),
                             (layer.attention.self, "value"), (layer.attention.output, "dense"),
                             (layer.intermediate, "dense"), (layer.output, "dense")]:
            setattr(parent, name, CsrLinear(getattr(parent, name)))
    return model


def torch_latency(hf_dir, repeats):
    from transformers import AutoModelForSequenceClassification

    dense = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    csr = to_csr(AutoModelForSequenceClassification.from_pretrained(hf_dir).eval())
    out = {}
    g = torch.Generator().manual_seed(0)
    for b in (1, 32):
        ids = torch.randint(1000, dense.config.vocab_size, (b, 128), generator=g)
        mask = torch.ones_like(ids)
        times = {"dense": [], "csr": []}
        with torch.inference_mode():
            ref = dense(input_ids=ids, attention_mask=mask).logits
            diff = (csr(input_ids=ids, attention_mask=mask).logits - ref).abs().max().item()
            for r in range(repeats + 1):
                for name, m in (("dense", dense), ("csr", csr)):
                    t0 = time.perf_counter()
                    m(input_ids=ids, attention_mask=mask)
                    if r > 0:
                        times[name].append((time.perf_counter() - t0) * 1e3)
        out[b] = {k: statistics.median(v) for k, v in times.items()}
        out[b]["csr_max_diff"] = diff
    return out


def gflops(v):
    return "within noise" if v is None else f"{v:.1f}"


def size(p):
    return p.stat().st_size


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--espalier", default="target/release/espalier")
    ap.add_argument("--dense-run", required=True, type=Path)
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--runs", default=Path("runs/sparse-bench"), type=Path)
    ap.add_argument("--out", default=Path("results/sparse-bench"), type=Path)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    rows, csv = [], ["model,data,method,sparsity,metric,value,seed"]
    for label, sparsity, nm in CELLS:
        run = a.runs / label.replace(":", "of").replace("%", "")
        if not (run / "summary.json").is_file():
            cmd = [a.espalier, "run", CONFIG, "--out", run, "--data-dir", a.data_dir, "--quiet",
                   "--set", f'init_from="{a.dense_run}"', "--set", f"prune.schedule.sparsity={sparsity}"]
            if nm:
                cmd += ["--set", f'prune.granularity={{kind="n_of_m",n={nm[0]},m={nm[1]}}}']
            sh(cmd, env=env)
        summary = json.loads((run / "summary.json").read_text())
        f1 = summary["rounds"][-1]["metrics"].get("f1") if summary.get("rounds") else None
        sh([a.espalier, "export", run, "--format", "sparse", "--force", "--quiet"], env=env, stdout=subprocess.DEVNULL)
        sh([a.espalier, "export", run, "--format", "hf", "--force", "--quiet"], env=env, stdout=subprocess.DEVNULL)
        bench_json = run / "bench.json"
        sh([a.espalier, "bench", run, "--batch-sizes", "1,32", "--seq-len", "128", "--repeats", a.repeats,
            "--json", bench_json, "--quiet"], env=env, stdout=subprocess.DEVNULL)
        esp = {r["batch_size"]: r for r in json.loads(bench_json.read_text())["latency"]}
        pt = torch_latency(run / "export" / "hf", a.repeats)
        sizes = {
            "run_model_mib": size(run / "model.safetensors") / 2**20,
            "sparse_export_mib": size(run / "export" / "sparse" / "model.safetensors") / 2**20,
            "dense_f32_mib": size(run / "export" / "hf" / "model.safetensors") / 2**20,
        }
        # Kept weights of the packable (encoder) linear layers: the sparse
        # kernels' useful FLOPs are 2 per kept weight per token.
        kept = sum(l["kept"] for l in summary["sparsity"]["layers"] if l["name"].startswith("encoder."))
        for b in (1, 32):
            e = esp[b]
            # Not measurable when the linear layers' share is within the
            # timing noise (a few percent of the forward).
            linear_ms = e["sparse_ms"] - e["outside_linear_ms"]
            measurable = linear_ms > 0.05 * e["sparse_ms"]
            e["sparse_gflops"] = 2 * kept * b * 128 / (linear_ms / 1e3) / 1e9 if measurable else None
        row = {"cell": label, "f1": f1, "esp": esp, "pt": pt, **sizes}
        rows.append(row)
        method = "magnitude-2:4" if nm else "magnitude"
        metrics = {"f1": f1, **sizes}
        for b in (1, 32):
            e, p = esp[b], pt[b]
            metrics.update({
                f"espalier_dense_ms_b{b}": e["dense_ms"], f"espalier_sparse_ms_b{b}": e["sparse_ms"],
                f"espalier_speedup_b{b}": e["speedup"], f"outside_linear_ms_b{b}": e["outside_linear_ms"],
                f"amdahl_bound_b{b}": e["amdahl_bound"], f"torch_dense_ms_b{b}": p["dense"],
                f"torch_csr_ms_b{b}": p["csr"], f"sparse_kernel_gflops_b{b}": e["sparse_gflops"],
            })
        for k, v in metrics.items():
            if v is not None:
                csv.append(f"all-MiniLM-L6-v2,mrpc,{method},{sparsity},{k},{v:.6g},42")
        print(json.dumps(row, default=str), flush=True)

    lines = [
        "# Sparse inference: all-MiniLM-L6-v2 pruned by magnitude, Espalier vs PyTorch",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {a.threads} threads per side "
        f"(`RAYON_NUM_THREADS`, `torch.set_num_threads`); torch {torch.__version__}. "
        f"Forward pass (inference) of the whole classifier at length 128, medians of {a.repeats} "
        "repeats after a warm-up, each pair alternating. Models: the MRPC fine-tune in "
        f"`{a.dense_run}`, encoder linear weights and the pooler pruned one-shot per layer by "
        "magnitude, no retraining (F1 on the MRPC test file shown for scale only).",
        "",
        "Espalier dense: the masked model through the dense kernels; sparse: its linear layers "
        "packed by the per-layer choice (`espalier bench RUN_DIR`); bound: Amdahl's bound on the "
        "speedup, dense time over the time with every packable linear layer emptied. PyTorch: "
        "the `hf` export in `transformers`, dense `nn.Linear` and `torch.sparse_csr` weights. "
        "Sparse kernels GFLOP/s: 2 FLOPs per kept encoder weight per token over (sparse − emptied) "
        "time, the rate the sparse layers achieve on their non-zeros.",
        "",
        "| cell | F1 | batch | Espalier dense ms | Espalier sparse ms | speedup | Amdahl bound | "
        "sparse kernels GFLOP/s | PyTorch dense ms | PyTorch CSR ms | Espalier sparse / PyTorch dense |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for b in (1, 32):
            e, p = r["esp"][b], r["pt"][b]
            f1 = f"{r['f1']:.2f}" if r["f1"] is not None else "–"
            lines.append(
                f"| {r['cell']} | {f1} | {b} | {e['dense_ms']:.2f} | {e['sparse_ms']:.2f} | {e['speedup']:.2f}× | "
                f"{e['amdahl_bound']:.2f}× | {gflops(e['sparse_gflops'])} | {p['dense']:.2f} | {p['csr']:.2f} | {e['sparse_ms'] / p['dense']:.2f} |")
    lines += ["", "| cell | run's model.safetensors (f32 weights + f32 masks) MiB | dense f32 (hf export) MiB | "
              "`export --format sparse` MiB | vs dense |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['run_model_mib']:.1f} | {r['dense_f32_mib']:.1f} | "
                     f"{r['sparse_export_mib']:.1f} | {r['sparse_export_mib'] / r['dense_f32_mib']:.2f} |")
    lines += ["", "The embeddings (30522 × 384 word vectors, 44.7 MiB) are not pruned and dominate the file "
              "at high sparsity.", ""]
    a.out.mkdir(parents=True, exist_ok=True)
    # The discussion of the targets is written by hand from a run's numbers
    # (analysis.md beside the results) and kept under the generated tables.
    analysis = a.out / "analysis.md"
    if analysis.is_file():
        lines += ["", analysis.read_text()]
    (a.out / "README.md").write_text("\n".join(lines))
    (a.out / "results.csv").write_text("\n".join(csv) + "\n")
    (a.out / "command.txt").write_text(
        f"RAYON_NUM_THREADS={a.threads} python scripts/sparse_bench.py --espalier {a.espalier} "
        f"--dense-run {a.dense_run} --data-dir {a.data_dir} --runs {a.runs} --out {a.out} "
        f"--repeats {a.repeats} --threads {a.threads}\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    sys.exit(main())
