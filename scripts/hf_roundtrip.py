#!/usr/bin/env python3
"""Hugging Face round trip of Espalier's BERT exports, run by hand (never in CI).

Two commands:

  fixture OUT_DIR
      With transformers 4.x (which still has `prune_heads`): a tiny random
      BertForSequenceClassification, heads pruned in two layers, saved with
      `save_pretrained` (safetensors), and the logits transformers computes
      on fixed inputs (`expected.json`). Espalier's loader test
      (crates/espalier-models/tests/hf_export.rs) reads this directory.

          PYTHONPATH=/path/to/transformers4 python scripts/hf_roundtrip.py fixture \\
              crates/espalier-models/tests/fixtures/pruned_heads

  compare PREDICTIONS EXPORT_DIR [EXPORT_DIR ...]
      PREDICTIONS is `espalier predict RUN_DIR --out FILE` (JSON lines with the
      token ids each example was given and Espalier's logits). Each export
      directory (`espalier export RUN_DIR --format hf|hf-compact`) is loaded
      with stock `AutoModelForSequenceClassification.from_pretrained`
      (`trust_remote_code=True` for the compact layout), fed the same ids, and
      its logits compared with Espalier's (max |diff|); then forward latency
      at batch 1 and 32 (sequences padded to 128), alternating between the
      exports, median of repeats, under `torch.inference_mode()`. Prints a
      markdown table.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def fixture(out: Path) -> None:
    import transformers
    from transformers import BertConfig, BertForSequenceClassification

    major = int(transformers.__version__.split(".")[0])
    if major >= 5:
        sys.exit(f"transformers {transformers.__version__} has no prune_heads: run with transformers 4.x")
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=24,
        max_position_embeddings=16,
        num_labels=3,
        hidden_act="gelu",
    )
    model = BertForSequenceClassification(cfg).eval()
    # Give biases and LayerNorms non-trivial values (fresh ones are 0 and 1).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    pruned = {0: [0, 2], 2: [1, 2, 3]}
    model.prune_heads(pruned)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    ids = torch.tensor([[2, 17, 33, 5, 3, 0, 0], [2, 9, 41, 58, 12, 7, 3]])
    types = torch.tensor([[0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        logits = model(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
    heads = [cfg.num_attention_heads - len(pruned.get(layer, [])) for layer in range(cfg.num_hidden_layers)]
    expected = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "heads_per_layer": heads,
        "input_ids": ids.tolist(),
        "token_type_ids": types.tolist(),
        "attention_mask": mask.tolist(),
        "logits": logits.tolist(),
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {out} (transformers {transformers.__version__}, heads per layer {heads})")


def load(export: Path):
    from transformers import AutoModelForSequenceClassification

    cfg = json.loads((export / "config.json").read_text())
    remote = "auto_map" in cfg
    model = AutoModelForSequenceClassification.from_pretrained(export, trust_remote_code=remote).eval()
    return model, ("compact" if remote else "padded")


def padded(rows, length):
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        types[i, :n] = torch.tensor(r["token_type_ids"])
        mask[i, :n] = 1
    return ids, types, mask


def compare(predictions: Path, exports, repeats: int) -> None:
    import transformers

    rows = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    print(f"{len(rows)} examples from {predictions}; transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    models = []
    for e in exports:
        model, layout = load(e)
        params = sum(p.numel() for p in model.parameters())
        worst = 0.0
        with torch.inference_mode():
            for start in range(0, len(rows), 32):
                chunk = rows[start:start + 32]
                length = max(len(r["input_ids"]) for r in chunk)
                ids, types, mask = padded(chunk, length)
                got = model(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
                want = torch.tensor([r["logits"] for r in chunk], dtype=got.dtype).reshape(got.shape)
                worst = max(worst, (got - want).abs().max().item())
        models.append((e, layout, model, params, worst))
    # Latency: batch 1 and 32 at length 128, exports alternating.
    times = {(i, b): [] for i in range(len(models)) for b in (1, 32)}
    batches = {}
    for b in (1, 32):
        chunk = [rows[i % len(rows)] for i in range(b)]
        batches[b] = padded(chunk, 128)
        for r in range(repeats + 1):
            for i, (_, _, model, _, _) in enumerate(models):
                ids, types, mask = batches[b]
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    model(input_ids=ids, token_type_ids=types, attention_mask=mask)
                    dt = time.perf_counter() - t0
                if r > 0:
                    times[(i, b)].append(dt * 1e3)
    print("| export | layout | parameters | max abs logit diff vs Espalier | batch 1 ms | batch 32 ms |")
    print("|---|---|---:|---:|---:|---:|")
    for i, (e, layout, _, params, worst) in enumerate(models):
        m1 = statistics.median(times[(i, 1)])
        m32 = statistics.median(times[(i, 32)])
        print(f"| {e} | {layout} | {params:,} | {worst:.2e} | {m1:.1f} | {m32:.1f} |")
    bad = [str(e) for e, _, _, _, w in models if not w < 1e-4]
    if bad:
        sys.exit(f"logits differ by 1e-4 or more: {', '.join(bad)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixture")
    f.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("predictions", type=Path)
    c.add_argument("exports", type=Path, nargs="+")
    c.add_argument("--repeats", type=int, default=10)
    c.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(getattr(a, "threads", 1) if a.cmd == "compare" else 1)
    if a.cmd == "fixture":
        fixture(a.out)
    else:
        compare(a.predictions, a.exports, a.repeats)


if __name__ == "__main__":
    main()
