#!/usr/bin/env python3
"""PyTorch counterparts of `espalier bench` workloads (issue #8), for
scripts/bench-vs-pytorch.sh. By hand only: needs PyTorch (+ transformers for
the BERT workloads), never a test or CI dependency.

    /opt/torchref/bin/python scripts/bench_pytorch.py WORKLOAD [--repeats N] [--threads T]

Workloads, with the shapes and optimizer settings of crates/espalier/src/bench.rs:
  mnist      LeNet-300-100 (784-300-100-10, ReLU), one MNIST training epoch at batch 128,
             shuffled, AdamW (lr 1e-3, wd 1e-4) and SGD (lr 0.05, momentum 0.9, wd 1e-4),
             alternating epochs in one process, one warm-up epoch each
  minilm     all-MiniLM-L6-v2 + 2-label head, batch 32 x 128, AdamW (lr 2e-5, wd 0.01),
             dropout on, clipping 1.0
  bert-base  BERT-base-shaped (hidden 768, 12 heads, FFN 3072, vocab 30522), 4 layers,
             random init, batch 8 x 128, the same optimizer as minilm
  resnet20   CIFAR ResNet-20 (option A shortcuts), batch 128 x 3x32x32, SGD (lr 0.1,
             momentum 0.9, wd 5e-4)
  resnet18   ResNet-18 with the CIFAR stem (3x3/1 conv, no max-pool), 10 classes,
             batch 32 x 3x32x32, the same SGD
  gemm       Y = X W^T for --gemm-size square f32 matrices (torch.matmul): the peak
             the suite sets every workload's GFLOP/s beside
  latency    forward latency (inference mode) of a structured MLP run's dense model
             (checkpoint.safetensors) and shrunk model (model.safetensors), rebuilt from
             their weight shapes, alternating, at --batch-sizes (as `espalier bench RUN_DIR`)

With --infer, mnist / minilm / bert-base / resnet20 / resnet18 time the model's forward
pass under torch.inference_mode() (eval mode) at each of --batch-sizes instead, printing
`RESULT <name>-infer-<b>[x<seq>] median_s=...` per batch size (as `espalier bench W --infer`).

Each step computes the loss, the gradients, the update, and reads back the loss
and the number of correct predictions (as Espalier's trainer does). Every workload
prints `RESULT <name> median_s=<s> min_s=<s> max_s=<s> peak_rss_mib=<MiB>`, where
peak RSS is the process's ru_maxrss (the interpreter and imported libraries included;
base_rss_mib is the resident memory after importing torch, before the workload).
"""

import argparse
import gzip
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024.0


BASE_RSS = rss_mib()  # the interpreter, numpy and torch, before any workload


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def report(name, times):
    print(
        f"RESULT {name} median_s={statistics.median(times):.6g} min_s={min(times):.6g} "
        f"max_s={max(times):.6g} peak_rss_mib={peak_rss_mib():.0f} base_rss_mib={BASE_RSS:.0f} repeats={len(times)} "
        f"threads={torch.get_num_threads()} torch={torch.__version__}",
        flush=True,
    )


def train_step(model, opt, inputs, y, clip=None):
    """One step as Espalier's trainer takes it; returns nothing, syncs on the loss."""
    logits = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    logits = getattr(logits, "logits", logits)
    loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    loss.item()
    (logits.detach().argmax(-1) == y).sum().item()


def time_steps(name, model, opt, make_batch, repeats, clip=None):
    model.train()
    times = []
    for rep in range(1 + repeats):
        inputs, y = make_batch()
        t = time.perf_counter()
        train_step(model, opt, inputs, y, clip)
        dt = time.perf_counter() - t
        log(f"{name} step {rep}{' (warm-up)' if rep == 0 else ''}: {dt:.3f}s")
        if rep > 0:
            times.append(dt)
    report(name, times)


# --- MNIST ---------------------------------------------------------------


def read_idx(path):
    with gzip.open(path, "rb") as f:
        b = f.read()
    ndim = b[3]
    dims = [int.from_bytes(b[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(b, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def bench_mnist(args):
    x = read_idx(f"{args.mnist}/train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    x = torch.from_numpy((x - 0.1307) / 0.3081).reshape(-1, 784)
    y = torch.from_numpy(read_idx(f"{args.mnist}/train-labels-idx1-ubyte.gz").astype(np.int64))
    b = args.batch_size or 128

    def lenet():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))

    runs = []
    for name, make_opt in [
        ("lenet300-mnist-epoch-adamw", lambda p: torch.optim.AdamW(p, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)),
        ("lenet300-mnist-epoch-sgd", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4)),
    ]:
        m = lenet()
        runs.append((name, m, make_opt(m.parameters()), []))
    g = torch.Generator().manual_seed(0)
    for rep in range(1 + args.repeats):
        for name, m, opt, times in runs:
            m.train()
            t = time.perf_counter()
            perm = torch.randperm(len(x), generator=g)
            for s in range(0, len(x), b):
                idx = perm[s : s + b]
                train_step(m, opt, x[idx], y[idx])
            dt = time.perf_counter() - t
            log(f"{name} epoch {rep}{' (warm-up)' if rep == 0 else ''}: {dt:.3f}s")
            if rep > 0:
                times.append(dt)
    for name, _, _, times in runs:
        report(name, times)


# --- BERT ----------------------------------------------------------------


def bench_bert(args, name, model, b, n):
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    vocab = model.config.vocab_size

    def make_batch():
        ids = torch.randint(1000, vocab, (b, n))
        ids[:, 0] = 101
        inputs = {
            "input_ids": ids,
            "token_type_ids": torch.zeros((b, n), dtype=torch.long),
            "attention_mask": torch.ones((b, n), dtype=torch.long),
        }
        return inputs, torch.arange(b) % 2

    time_steps(name, model, opt, make_batch, args.repeats, clip=1.0)


def bench_minilm(args):
    import transformers
    from transformers import AutoModelForSequenceClassification

    transformers.logging.set_verbosity_error()  # no load report for the fresh classifier head

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    b = args.batch_size or 32
    bench_bert(args, f"bert-step-{b}x{args.seq_len}", model, b, args.seq_len)


def bench_bert_base(args):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(num_hidden_layers=args.layers, num_labels=2)  # the rest: BERT-base
    model = BertForSequenceClassification(cfg)
    b = args.batch_size or 8
    bench_bert(args, f"bert-base-{args.layers}l-step-{b}x{args.seq_len}", model, b, args.seq_len)


# --- ResNets -------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut_kind = shortcut if (stride != 1 or cin != cout) else None
        self.pad = cout - cin
        if self.shortcut_kind == "B":
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.shortcut_kind == "A":  # subsample, zero-pad half the new channels on each side
            s = x[:, :, ::2, ::2]
            x = F.pad(s, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        elif self.shortcut_kind == "B":
            x = self.shortcut(x)
        return F.relu(out + x)


class ResNet(nn.Module):
    """3x3/1 stem (the CIFAR stem), stages of basic blocks, average pool, fc."""

    def __init__(self, blocks, widths, shortcut, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1, shortcut))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def bench_resnet(args, name, model, b):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    s = args.image_size
    x = torch.randn(b, 3, s, s)
    y = torch.arange(b) % 10
    time_steps(name, model, opt, lambda: (x, y), args.repeats)


def bench_resnet20(args):
    torch.manual_seed(0)
    b = args.batch_size or 128
    bench_resnet(args, f"resnet20-step-{b}", ResNet([3, 3, 3], [16, 32, 64], "A"), b)


def bench_resnet18(args):
    torch.manual_seed(0)
    b = args.batch_size or 32
    bench_resnet(args, f"resnet18-cifar-step-{b}", ResNet([2, 2, 2, 2], [64, 128, 256, 512], "B"), b)


# --- Inference of the training workloads' models, and the GEMM rate ---------


def lenet300():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def infer_model(args):
    """(row name, model, input maker for a batch size) of --infer."""
    torch.manual_seed(0)
    if args.workload == "mnist":
        return "lenet300", lenet300(), lambda b: torch.rand(b, 784)
    if args.workload in ("minilm", "bert-base"):
        if args.workload == "minilm":
            import transformers
            from transformers import AutoModelForSequenceClassification

            transformers.logging.set_verbosity_error()
            model, name = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2), "bert"
        else:
            from transformers import BertConfig, BertForSequenceClassification

            model = BertForSequenceClassification(BertConfig(num_hidden_layers=args.layers, num_labels=2))
            name = f"bert-base-{args.layers}l"
        vocab, n = model.config.vocab_size, args.seq_len

        def tokens(b):
            ids = torch.randint(1000, vocab, (b, n))
            ids[:, 0] = 101
            return {
                "input_ids": ids,
                "token_type_ids": torch.zeros((b, n), dtype=torch.long),
                "attention_mask": torch.ones((b, n), dtype=torch.long),
            }

        return name, model, tokens
    nets = {"resnet20": ("resnet20", ResNet([3, 3, 3], [16, 32, 64], "A")),
            "resnet18": ("resnet18-cifar", ResNet([2, 2, 2, 2], [64, 128, 256, 512], "B"))}
    name, model = nets[args.workload]
    return name, model, lambda b: torch.randn(b, 3, 32, 32)


@torch.inference_mode()
def bench_infer(args):
    name, model, make = infer_model(args)
    model.eval()
    tokens = args.workload in ("minilm", "bert-base")
    for b in args.batch_sizes:
        x = make(b)
        times, rep = [], 0
        # As `espalier bench --infer`: at least REPEATS passes and 0.25 s
        # timed in all (at most 5000 passes).
        while rep <= args.repeats or (sum(times) < 0.25 and len(times) < 5000):
            t = time.perf_counter()
            out = model(**x) if isinstance(x, dict) else model(x)
            getattr(out, "logits", out).sum().item()
            if rep > 0:
                times.append(time.perf_counter() - t)
            rep += 1
        report(f"{name}-infer-{b}x{args.seq_len}" if tokens else f"{name}-infer-{b}", times)


@torch.inference_mode()
def bench_gemm(args):
    n = args.gemm_size
    x, w = torch.randn(n, n), torch.randn(n, n)
    times = []
    for rep in range(1 + args.repeats):
        t = time.perf_counter()
        torch.matmul(x, w.t()).sum().item()
        if rep > 0:
            times.append(time.perf_counter() - t)
    report(f"gemm-{n}", times)


# --- Inference latency of a structured run (MLP) ----------------------------


def mlp_from_safetensors(path):
    """An MLP (Linear + ReLU) with the shapes of an Espalier MLP checkpoint's
    weights, chained from the 2-D `*.weight` tensors (random values: only the
    shapes matter for timing)."""
    import json
    import struct

    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    weights = [(k, s) for k, s in shapes.items() if k.endswith(".weight") and len(s) == 2 and "." not in k[: -len(".weight")]]
    left = dict(weights)
    outs = [o for o, _ in left.values()]
    first = [k for k, (_, i) in left.items() if i not in outs]  # the input layer
    widths = list(left.pop(first[0]))[::-1] if len(first) == 1 else []
    while left and widths:
        nxt = [k for k, (_, i) in left.items() if i == widths[-1]]
        if len(nxt) != 1:
            break
        widths.append(left.pop(nxt[0])[0])
    if left or len(widths) < 2:
        raise SystemExit(f"{path}: not an MLP this script can rebuild ({sorted(shapes)})")
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval(), widths


@torch.inference_mode()
def bench_latency(args):
    dense, wd = mlp_from_safetensors(f"{args.run_dir}/checkpoint.safetensors")
    small, ws = mlp_from_safetensors(f"{args.run_dir}/model.safetensors")
    log(f"dense {wd}, shrunk {ws}")
    for b in args.batch_sizes:
        x = torch.rand(b, wd[0])
        times = ([], [])
        for rep in range(1 + args.repeats):
            for i, m in enumerate((dense, small)):
                t = time.perf_counter()
                m(x).sum().item()
                if rep > 0:
                    times[i].append((time.perf_counter() - t) * 1e3)
        d, s = statistics.median(times[0]), statistics.median(times[1])
        print(f"LATENCY batch={b} dense_ms={d:.3f} shrunk_ms={s:.3f} speedup={d / s:.2f}", flush=True)


WORKLOADS = {
    "mnist": bench_mnist,
    "minilm": bench_minilm,
    "bert-base": bench_bert_base,
    "resnet20": bench_resnet20,
    "resnet18": bench_resnet18,
    "latency": bench_latency,
    "gemm": bench_gemm,
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=sorted(WORKLOADS))
    p.add_argument("--repeats", type=int, default=5, help="timed epochs/steps after one warm-up")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--batch-size", type=int, default=0, help="0: the workload's default")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--layers", type=int, default=4, help="bert-base: encoder layers")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--model", default="../shared/models/all-MiniLM-L6-v2")
    p.add_argument("--mnist", default="../shared/data/mnist")
    p.add_argument("--run-dir", help="latency: a structured MLP run (checkpoint.safetensors, model.safetensors)")
    p.add_argument("--batch-sizes", type=lambda v: [int(x) for x in v.split(",")], default=[1, 32, 256])
    p.add_argument("--infer", action="store_true", help="time the forward pass at --batch-sizes instead")
    p.add_argument("--gemm-size", type=int, default=2048)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.infer:
        if args.workload not in ("mnist", "minilm", "bert-base", "resnet20", "resnet18"):
            p.error(f"--infer times mnist, minilm, bert-base, resnet20 or resnet18, not {args.workload}")
        bench_infer(args)
    else:
        WORKLOADS[args.workload](args)


if __name__ == "__main__":
    main()
