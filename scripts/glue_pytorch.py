#!/usr/bin/env python3
"""PyTorch + Hugging Face transformers reference for Espalier's GLUE fine-tuning.

A by-hand reference, NOT a test: it is never run in CI and nothing in the
repository depends on it. It fine-tunes the same local BERT-architecture
checkpoint on the same GLUE files with the same recipe as Espalier's
`configs/glue/*.toml`, so that Espalier's numbers can be put side by side
with PyTorch's.

Recipe (as in configs/glue/*.toml):
  - model: `AutoModelForSequenceClassification.from_pretrained(path,
    num_labels=N)` (a fresh classifier head; STS-B: num_labels=1,
    problem_type "regression", MSE loss); dropout as in the checkpoint config.
  - tokenizer from the same directory, with the padding/truncation built into
    its tokenizer.json switched off: each example truncated longest-first to
    --max-len (128) tokens, batches padded to their longest example.
  - AdamW lr 2e-5, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on every
    parameter except biases and LayerNorm weights.
  - linear warmup over round(0.1 * total steps), then linear decay to 0
    (transformers' get_linear_schedule_with_warmup). One known difference:
    its warmup factor at step s is s/w (the first step runs at lr 0), while
    Espalier's is (s+1)/w; the decay is the same, (total-s)/(total-w).
  - batch 32 (last batch of an epoch kept, smaller), shuffled every epoch
    with a generator seeded by --seed; 3 epochs; gradient-norm clipping 1.0.
  - evaluation (batch 64) on the eval split after every epoch; the metrics of
    the LAST epoch and of the BEST epoch (by the primary metric) are reported.
  - metrics, in percent: CoLA mcc; SST-2, RTE accuracy; MRPC f1 (primary) and
    accuracy; STS-B pearson (primary) and spearman (average ranks for ties).

Data (read like Espalier's reader: plain tab-split lines, no quote handling,
leading UTF-8 BOM and trailing \\r dropped, labels trimmed):
  SST-2  SST-2/{train,dev}.tsv, header `sentence  label`
  CoLA   CoLA/{train,dev}.tsv, no header: `source  label  star  sentence`
  RTE    RTE/{train,dev}.tsv, header `index sentence1 sentence2 label`,
         entailment=0, not_entailment=1
  STS-B  STS-B/{train,dev}.tsv, columns `sentence1`, `sentence2`, `score`
  MRPC   MRPC/msr_paraphrase_train.txt (train) and msr_paraphrase_test.txt
         (eval; GLUE's dev ids are not available here), label = Quality

Run (from the repository root; PyTorch lives in a venv outside the repo,
`python3 -m venv /opt/torchref && /opt/torchref/bin/pip install torch transformers`):

  /opt/torchref/bin/python scripts/glue_pytorch.py --task rte
  /opt/torchref/bin/python scripts/glue_pytorch.py --task stsb --threads 8
  # smoke test: a few seconds
  /opt/torchref/bin/python scripts/glue_pytorch.py --task rte --limit-train 64 \\
      --limit-eval 32 --epochs 1 --threads 1 --out /tmp/x.csv
  # training-step timing, the baseline for
  # `espalier bench bert --batch-size 32 --seq-len 128`:
  /opt/torchref/bin/python scripts/glue_pytorch.py --bench-step --batch-size 32 --max-len 128

Results go to --out (default results/glue-pytorch/<task>.csv) as rows
`model,data,method,sparsity,metric,value,seed` (method `dense-pytorch`,
sparsity 0, metric `<m>` for the last epoch and `<m>@best-epoch`).
"""

import argparse
import math
import os
import statistics
import sys
import time

import torch
import transformers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    get_linear_schedule_with_warmup,
)

# task key -> (directory, train file, eval file, number of labels, metrics (primary first))
TASKS = {
    "sst2": ("SST-2", "train.tsv", "dev.tsv", 2, ["accuracy"]),
    "cola": ("CoLA", "train.tsv", "dev.tsv", 2, ["mcc"]),
    "rte": ("RTE", "train.tsv", "dev.tsv", 2, ["accuracy"]),
    "stsb": ("STS-B", "train.tsv", "dev.tsv", 1, ["pearson", "spearman"]),
    "mrpc": ("MRPC", "msr_paraphrase_train.txt", "msr_paraphrase_test.txt", 2, ["f1", "accuracy"]),
}
# task key -> (text_a column, text_b column or None, label column) by header name
LAYOUT = {
    "sst2": ("sentence", None, "label"),
    "rte": ("sentence1", "sentence2", "label"),
    "stsb": ("sentence1", "sentence2", "score"),
    "mrpc": ("#1 String", "#2 String", "Quality"),
}
NLI_LABELS = ["entailment", "not_entailment"]


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------- data


def tsv_lines(path):
    """Yields (1-based line number, fields): split on tab only, no quote
    handling, a leading UTF-8 BOM and the trailing \\n / \\r dropped."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            yield n, raw.decode("utf-8").split("\t")


def parse_label(task, s, path, line):
    s = s.strip()
    try:
        if task == "stsb":
            v = float(s)
            if not (math.isfinite(v) and 0.0 <= v <= 5.0):
                raise ValueError
            return v
        if task == "rte":
            return NLI_LABELS.index(s)
        if s not in ("0", "1"):
            raise ValueError
        return int(s)
    except ValueError:
        sys.exit(f"{path}: line {line}: bad {task} label {s!r}")


def read_glue(task, path):
    """[(text_a, text_b or None, label)] of one GLUE file."""
    out = []
    cols = None  # (ncols, a, b, label)
    for line, fields in tsv_lines(path):
        if cols is None:
            if task == "cola":
                cols = (4, 3, None, 1)  # no header: source, label, star, sentence
            else:
                ta, tb, tl = LAYOUT[task]
                hdr = [h.strip() for h in fields]

                def col(name):
                    if name not in hdr:
                        sys.exit(f"{path}: line 1: no `{name}` column (found: {', '.join(hdr)})")
                    return hdr.index(name)

                cols = (len(fields), col(ta), col(tb) if tb else None, col(tl))
                continue
        ncols, a, b, l = cols
        if len(fields) != ncols:
            sys.exit(f"{path}: line {line}: expected {ncols} tab-separated fields, found {len(fields)}")
        out.append((fields[a], fields[b] if b is not None else None, parse_label(task, fields[l], path, line)))
    return out


def tokenize(tok, examples, max_len):
    """Token ids / type ids per example, truncated longest-first, unpadded."""
    a = [e[0] for e in examples]
    b = [e[1] for e in examples] if examples and examples[0][1] is not None else None
    enc = tok(a, b, truncation="longest_first", max_length=max_len, padding=False)
    return list(zip(enc["input_ids"], enc["token_type_ids"]))


def collate(items, pad_id):
    """Pads a batch to its longest example."""
    n = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    tt = torch.zeros((len(items), n), dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, (x, t) in enumerate(items):
        ids[i, : len(x)] = torch.tensor(x)
        tt[i, : len(t)] = torch.tensor(t)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "token_type_ids": tt, "attention_mask": mask}


# ---------------------------------------------------------------- metrics


def accuracy(p, g):
    return sum(int(a == b) for a, b in zip(p, g)) / len(g)


def confusion(p, g):
    tp = sum(1 for a, b in zip(p, g) if a == 1 and b == 1)
    tn = sum(1 for a, b in zip(p, g) if a == 0 and b == 0)
    fp = sum(1 for a, b in zip(p, g) if a == 1 and b == 0)
    fn = sum(1 for a, b in zip(p, g) if a == 0 and b == 1)
    return tp, tn, fp, fn


def f1_binary(p, g):
    """F1 of class 1; 0 when undefined."""
    tp, _, fp, fn = confusion(p, g)
    d = 2 * tp + fp + fn
    return 2 * tp / d if d else 0.0


def matthews(p, g):
    """Matthews correlation; 0 when a marginal is empty."""
    tp, tn, fp, fn = confusion(p, g)
    d = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / d if d else 0.0


def pearson(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    d = math.sqrt(sxx * syy)
    return sxy / d if d else 0.0


def ranks(x):
    """1-based ranks, ties given their average rank."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            r[order[k]] = avg
        i = j + 1
    return r


def spearman(x, y):
    return pearson(ranks(x), ranks(y))


METRIC_FNS = {"accuracy": accuracy, "f1": f1_binary, "mcc": matthews, "pearson": pearson, "spearman": spearman}


# ---------------------------------------------------------------- model


def make_optimizer(model, lr, weight_decay):
    """AdamW, weight decay on all but biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    assert all(p.dim() >= 2 for p in decay), "a 1-D parameter would be decayed"
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def load_model(path, num_labels):
    kw = {"num_labels": num_labels}
    if num_labels == 1:
        kw["problem_type"] = "regression"
    return AutoModelForSequenceClassification.from_pretrained(path, **kw)


@torch.no_grad()
def evaluate(model, data, labels, task, batch_size, pad_id):
    model.eval()
    preds = []
    for s in range(0, len(data), batch_size):
        logits = model(**collate(data[s : s + batch_size], pad_id)).logits
        if task == "stsb":
            preds.extend(logits[:, 0].tolist())
        else:
            preds.extend(logits.argmax(-1).tolist())
    model.train()
    return {m: 100.0 * METRIC_FNS[m](preds, labels) for m in TASKS[task][4]}


# ---------------------------------------------------------------- modes


def fine_tune(args):
    dirname, train_file, eval_file, num_labels, metrics = TASKS[args.task]
    primary = metrics[0]
    root = os.path.join(args.data_dir, dirname)
    t0 = time.time()
    train = read_glue(args.task, os.path.join(root, train_file))
    evals = read_glue(args.task, os.path.join(root, eval_file))
    if args.limit_train:
        train = train[: args.limit_train]
    if args.limit_eval:
        evals = evals[: args.limit_eval]

    tok = AutoTokenizer.from_pretrained(args.model)
    # tokenizer.json pads to a fixed 128 and truncates: switch both off, the
    # per-call settings below decide.
    tok.backend_tokenizer.no_padding()
    tok.backend_tokenizer.no_truncation()
    train_x = tokenize(tok, train, args.max_len)
    eval_x = tokenize(tok, evals, args.max_len)
    label_dtype = torch.float32 if args.task == "stsb" else torch.long
    train_y = [e[2] for e in train]
    eval_y = [e[2] for e in evals]
    pad_id = tok.pad_token_id
    log(
        f"{args.task}: {len(train)} train ({os.path.join(root, train_file)}), "
        f"{len(evals)} eval ({os.path.join(root, eval_file)}); "
        f"mean train length {sum(len(x) for x, _ in train_x) / max(len(train_x), 1):.1f} tokens"
    )

    torch.manual_seed(args.seed)  # classifier head init and dropout
    model = load_model(args.model, num_labels)
    model.train()
    opt = make_optimizer(model, args.lr, args.weight_decay)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = math.floor(args.warmup * total + 0.5)  # round half up, like Espalier's f64::round
    sched = get_linear_schedule_with_warmup(opt, warmup, total)
    gen = torch.Generator().manual_seed(args.seed)
    log(
        f"model {args.model}: {sum(p.numel() for p in model.parameters())} parameters; "
        f"{args.epochs} epochs x {steps_per_epoch} steps, warmup {warmup}, lr {args.lr}, "
        f"batch {args.batch_size}, max length {args.max_len}, seed {args.seed}, threads {torch.get_num_threads()}"
    )

    history = []
    for epoch in range(1, args.epochs + 1):
        te = time.time()
        perm = torch.randperm(len(train), generator=gen).tolist()
        loss_sum = 0.0
        for s in range(0, len(perm), args.batch_size):
            idx = perm[s : s + args.batch_size]
            batch = collate([train_x[i] for i in idx], pad_id)
            batch["labels"] = torch.tensor([train_y[i] for i in idx], dtype=label_dtype)
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            sched.step()
            loss_sum += loss.item()
        train_s = time.time() - te
        m = evaluate(model, eval_x, eval_y, args.task, args.eval_batch_size, pad_id)
        history.append(m)
        log(
            f"epoch {epoch}/{args.epochs}: train loss {loss_sum / steps_per_epoch:.4f}, "
            + ", ".join(f"{k} {v:.2f}" for k, v in m.items())
            + f" (train {train_s:.1f}s, eval {time.time() - te - train_s:.1f}s, elapsed {time.time() - t0:.1f}s)"
        )

    last = history[-1]
    best_i = max(range(len(history)), key=lambda i: history[i][primary])  # first best on ties
    best = history[best_i]
    log(
        f"last epoch: " + ", ".join(f"{k} {v:.2f}" for k, v in last.items())
        + f"; best epoch ({best_i + 1}, by {primary}): " + ", ".join(f"{k} {v:.2f}" for k, v in best.items())
    )
    out = args.out or os.path.join("results", "glue-pytorch", f"{args.task}.csv")
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    model_name = os.path.basename(os.path.normpath(args.model))
    with open(out, "w") as f:
        f.write("model,data,method,sparsity,metric,value,seed\n")
        rows = [(k, v) for k, v in last.items()] + [(f"{k}@best-epoch", v) for k, v in best.items()]
        for k, v in rows:
            f.write(f"{model_name},glue-{args.task},dense-pytorch,{0.0:.6f},{k},{v:.4f},{args.seed}\n")
    log(f"wrote {out} ({time.time() - t0:.1f}s)")


def bench_step(args):
    """Median seconds per training step on random ids (all positions real)."""
    torch.manual_seed(args.seed)
    model = load_model(args.model, 2)
    model.train()  # dropout on
    opt = make_optimizer(model, args.lr, args.weight_decay)
    vocab = model.config.vocab_size
    b, n = args.batch_size, args.max_len
    times = []
    for step in range(1 + args.repeats):
        batch = {
            "input_ids": torch.randint(0, vocab, (b, n)),
            "token_type_ids": torch.zeros((b, n), dtype=torch.long),
            "attention_mask": torch.ones((b, n), dtype=torch.long),
            "labels": torch.randint(0, 2, (b,)),
        }
        t = time.perf_counter()
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        dt = time.perf_counter() - t
        log(f"step {step}{' (warm-up)' if step == 0 else ''}: {dt:.3f}s, loss {loss.item():.4f}")
        if step > 0:
            times.append(dt)
    med = statistics.median(times)
    log(
        f"bert-step-{b}x{n}: median {med:.4f} s/step (min {min(times):.4f}, max {max(times):.4f}, "
        f"{args.repeats} repeats, {b / med:.1f} examples/s, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads)"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), help="GLUE task (required unless --bench-step)")
    p.add_argument("--model", default="../shared/models/all-MiniLM-L6-v2")
    p.add_argument("--data-dir", default="../shared/data/glue")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of all steps")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--limit-train", type=int, default=0, help="first N training examples (smoke tests)")
    p.add_argument("--limit-eval", type=int, default=0, help="first N eval examples (smoke tests)")
    p.add_argument("--out", default=None, help="CSV (default results/glue-pytorch/<task>.csv)")
    p.add_argument("--bench-step", action="store_true", help="time training steps on random ids instead")
    p.add_argument("--repeats", type=int, default=5, help="--bench-step: timed steps after 1 warm-up")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # no load report for the fresh classifier head
    transformers.logging.disable_progress_bar()
    if args.bench_step:
        bench_step(args)
    elif args.task is None:
        p.error("--task is required (or --bench-step)")
    else:
        fine_tune(args)


if __name__ == "__main__":
    main()
