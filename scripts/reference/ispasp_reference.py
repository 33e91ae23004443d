#!/usr/bin/env python3
"""Differential-test fixtures for Espalier's i-SpaSP.

Runs the authors' i-SpaSP (wolfecameron/i-SpaSP,
`prune_resnet34_ispasp.py::prune_basic_block`) UNCHANGED on tiny fixed
inputs, on the CPU at one thread, records every decision it takes, and dumps
them. This script is Espalier's own harness; the reference code is never
copied into the repository. Usage (PyTorch installed by hand, never in CI):

    python3 scripts/reference/ispasp_reference.py /path/to/i-SpaSP \
        crates/espalier-prune/tests/fixtures/ispasp

Scenarios (see the fixtures' README):

- `block_batch`: a 16-channel BasicBlock (conv3x3-BN-ReLU-conv3x3-BN, no
  downsample) with non-trivial BN statistics, in evaluation mode as the
  authors' driver leaves it, 24 inputs of 16x6x6, ratio 0.3 (kept
  int(16 * 0.3) = 4), 20 iterations, chunks of bs = 8. The function as
  published: the pruned block it builds stays in training mode, so its bn2
  normalises the pruned output with each chunk's batch statistics.
- `block_running`: the same call with the module's `PrunedBasicBlock`
  replaced by a subclass that starts in evaluation mode with the dense
  bn2's running statistics (what the pruned block computes at inference,
  and Espalier's default); the function itself unchanged.
- `mlp`: a 20-64-5 ReLU MLP through the same function: the two linear
  layers as 1x1 convolutions with biases on 1x1 inputs, the norms identity
  modules; `PrunedBasicBlock` replaced by the matching pruned MLP (its
  output layer sharing the dense bias). 40 inputs, ratio 0.2 (kept
  int(64 * 0.2) = 12), 20 iterations, chunks of 16.

Instrumentation, none of it deciding anything: `torch.argsort` is wrapped
while the function runs, recording its inputs and outputs (the first call of
an iteration ranks the importance vector, the second the activation mass of
the merged set), and the module's `residual_objective` is wrapped to record
½‖V‖² per chunk. From those: the importance vector, the candidate set (its
top 2s), the merged set (matched back to channels by their distinct masses)
and the support of every iteration, and the residual of the support each
iteration starts from. The indices of the returned block are recovered by
matching its conv1 rows against the dense block's; they must equal the last
support.

Writes `<scenario>.json` (decisions) and `<scenario>.safetensors` (inputs and
dense weights in PyTorch layout, OIHW).
"""

import importlib
import json
import os
import struct
import subprocess
import sys
import types

import numpy as np


def stub(name):
    """An empty module for an import the pruning function never uses."""
    mod = types.ModuleType(name)
    mod.__path__ = []
    sys.modules[name] = mod
    return mod


# Top-level imports of prune_resnet34_ispasp.py (and lib/data.py) that
# prune_basic_block never calls: torchvision, fvcore.
for _n in ["torchvision", "torchvision.transforms", "torchvision.datasets", "torchvision.models", "fvcore", "fvcore.nn"]:
    stub(_n)
sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
sys.modules["torchvision"].datasets = sys.modules["torchvision.datasets"]
sys.modules["torchvision"].models = sys.modules["torchvision.models"]
sys.modules["fvcore.nn"].FlopCountAnalysis = None

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

# Decided margins: no two compared values closer than this (relative to the
# largest), so that the reference's unstable sorts and f32 rounding in
# another implementation cannot reorder them.
MARGIN = 1e-4


def save_safetensors(path, tensors):
    """safetensors by hand (no extra package): header length, JSON, data."""
    header, blobs, off = {}, [], 0
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous()
        dt = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
        b = t.numpy().tobytes()
        header[k] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def f32(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float32))


class Recorder:
    """Wraps torch.argsort and the module's residual_objective while the
    pruning function runs; passes every call through unchanged."""

    def __init__(self, mod):
        self.mod, self.sorts, self.residuals = mod, [], []

    def __enter__(self):
        self.argsort, self.objective = torch.argsort, self.mod.residual_objective

        def argsort(t, *a, **k):
            out = self.argsort(t, *a, **k)
            self.sorts.append((t.detach().clone(), out.clone()))
            return out

        def objective(mat):
            v = self.objective(mat)
            self.residuals.append(float(v.detach()))
            return v

        torch.argsort = argsort
        self.mod.residual_objective = objective
        return self

    def __exit__(self, *exc):
        torch.argsort = self.argsort
        self.mod.residual_objective = self.objective


def fail(msg):
    sys.exit(f"ispasp_reference: {msg}")


def check_gap(values, order, k, what):
    """The k-th and (k+1)-th of `values` in `order` (descending) are apart."""
    if k >= len(order):
        return
    a, b = float(values[order[k - 1]]), float(values[order[k]])
    scale = max(float(values.abs().max()), 1e-30)
    if a - b <= MARGIN * scale:
        fail(f"{what}: a near tie at the cut ({a} vs {b}); pick another seed")


def decode(rec, mass, channels, kept, num_iter, chunks):
    """Per iteration: importance, candidates, merged set, support, residual."""
    if len(rec.sorts) != 2 * num_iter:
        fail(f"expected {2 * num_iter} argsort calls, saw {len(rec.sorts)}")
    if len(rec.residuals) != num_iter * chunks:
        fail(f"expected {num_iter * chunks} residual evaluations, saw {len(rec.residuals)}")
    scale = float(mass.abs().max())

    def channel(v):
        """The channel whose mass is `v` (masses are apart by the margin)."""
        d = (mass - v).abs()
        c = int(torch.argmin(d))
        if float(d[c]) > 1e-6 * scale or int((d <= 1e-5 * scale).sum()) != 1:
            fail(f"mass {float(v)} matches no single channel")
        return c

    out = []
    for t in range(num_iter):
        (imp, order), (sizes, sorder) = rec.sorts[2 * t], rec.sorts[2 * t + 1]
        if imp.shape != (channels,):
            fail(f"iteration {t}: the first argsort ranks {tuple(imp.shape)}, not the importance vector")
        check_gap(imp, order, 2 * kept, f"iteration {t} importance")
        cand = sorted(order[: 2 * kept].tolist())
        merged = [channel(v) for v in sizes]
        if merged != sorted(merged):
            fail(f"iteration {t}: merged set {merged} not in channel order")
        check_gap(sizes, sorder, kept, f"iteration {t} mass")
        support = sorted(merged[i] for i in sorder[:kept].tolist())
        res = sum(rec.residuals[t * chunks:(t + 1) * chunks])
        out.append({"importance": imp.tolist(), "candidates": cand, "merged": merged, "support": support,
                     "residual": res})
    return out


def recover(dense_rows, pruned_rows):
    """Indices of the dense rows the pruned block kept (exact matches)."""
    idx = []
    for r in pruned_rows:
        hits = [i for i, d in enumerate(dense_rows) if torch.equal(d, r)]
        if len(hits) != 1:
            fail(f"a returned conv1 row matches {len(hits)} dense rows")
        idx.append(hits[0])
    return idx


# ---------------------------------------------------------------- scenarios

C, N, HW, BLOCK_RATIO, BLOCK_BS, ITERS = 16, 24, 6, 0.3, 8, 20
MLP_IN, MLP_H, MLP_OUT, MLP_N, MLP_RATIO, MLP_BS = 20, 64, 5, 40, 0.2, 16


def block_inputs(mod, seed):
    rng = np.random.default_rng(seed)
    block = mod.PrunedBasicBlock(C, C, C)
    with torch.no_grad():
        for conv in (block.conv1, block.conv2):
            conv.weight.copy_(f32(rng.normal(0.0, np.sqrt(2.0 / (C * 9)), size=(C, C, 3, 3))))
        for bn in (block.bn1, block.bn2):
            bn.weight.copy_(f32(rng.uniform(0.5, 1.5, C)))
            bn.bias.copy_(f32(rng.uniform(-0.3, 0.5, C)))
            bn.running_mean.copy_(f32(rng.uniform(-0.5, 0.5, C)))
            bn.running_var.copy_(f32(rng.uniform(0.5, 2.0, C)))
    # A block's input is a ReLU's output: non-negative, some zeros.
    x = f32(np.maximum(rng.normal(0.2, 1.0, size=(N, C, HW, HW)), 0.0))
    block.eval()  # prune_rn34_imagenet calls pruned_model.eval() first
    return block, x


def run_block(mod, seed, running):
    block, x = block_inputs(mod, seed)
    with torch.no_grad():
        mass = block.relu(block.bn1(block.conv1(x))).sum(dim=(0, 2, 3))
    original = mod.PrunedBasicBlock
    if running:
        dense_bn2 = block.bn2

        class EvalModePruned(original):
            """The pruned block in evaluation mode with the dense bn2's statistics."""

            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                with torch.no_grad():
                    self.bn2.running_mean.copy_(dense_bn2.running_mean)
                    self.bn2.running_var.copy_(dense_bn2.running_var)
                self.eval()

        mod.PrunedBasicBlock = EvalModePruned
    try:
        with Recorder(mod) as rec:
            pruned = mod.prune_basic_block(x, block, BLOCK_RATIO, ITERS, BLOCK_BS)
    finally:
        mod.PrunedBasicBlock = original
    kept = int(C * BLOCK_RATIO)
    iters = decode(rec, mass, C, kept, ITERS, (N + BLOCK_BS - 1) // BLOCK_BS)
    returned = recover(block.conv1.weight, pruned.conv1.weight)
    tensors = {"inputs": x}
    for name, t in block.state_dict().items():
        if t.dtype == torch.float32:
            tensors[name] = t
    meta = {"channels": C, "ratio": BLOCK_RATIO, "kept": kept, "num_iter": ITERS, "bs": BLOCK_BS,
            "pruned_bn": "running" if running else "batch", "pruned_block_training": pruned.training}
    return meta, mass, iters, returned, tensors


class IdentityNorm(nn.Module):
    """A norm slot that computes nothing (an MLP has no BatchNorm); it has the
    weight and bias the function copies into the pruned block."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return x


class DenseMlp(nn.Module):
    """20-64-5 ReLU MLP as the function sees a block: 1x1 convolutions with
    biases on (N, 20, 1, 1) inputs, identity norms."""

    def __init__(self, rng):
        super().__init__()
        self.conv1 = nn.Conv2d(MLP_IN, MLP_H, 1, bias=True)
        self.bn1 = IdentityNorm(MLP_H)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(MLP_H, MLP_OUT, 1, bias=True)
        self.bn2 = IdentityNorm(MLP_OUT)
        with torch.no_grad():
            self.conv1.weight.copy_(f32(rng.normal(0.0, np.sqrt(2.0 / MLP_IN), size=(MLP_H, MLP_IN, 1, 1))))
            self.conv1.bias.copy_(f32(rng.uniform(-0.2, 0.3, MLP_H)))
            self.conv2.weight.copy_(f32(rng.normal(0.0, np.sqrt(1.0 / MLP_H), size=(MLP_OUT, MLP_H, 1, 1))))
            self.conv2.bias.copy_(f32(rng.uniform(-0.5, 0.5, MLP_OUT)))
        # The function asserts conv1.in_channels == conv1.out_channels (a
        # basic block's shape); the attribute is read for that assert and
        # the pruned block's constructor only, never by the forward pass.
        self.conv1.in_channels = MLP_H


def run_mlp(mod, seed):
    rng = np.random.default_rng(seed)
    dense = DenseMlp(rng).eval()
    x = f32(rng.normal(0.0, 1.0, size=(MLP_N, MLP_IN, 1, 1)))
    with torch.no_grad():
        mass = dense.relu(dense.conv1(x)).sum(dim=(0, 2, 3))
    original = mod.PrunedBasicBlock

    class PrunedMlp(nn.Module):
        """The pruned MLP the function fills in: kept rows of the first
        layer, kept columns of the second, whose bias is the dense one."""

        def __init__(self, inplanes, midplanes, outplanes, norm_layer=None):
            super().__init__()
            self.conv1 = nn.Conv2d(MLP_IN, midplanes, 1, bias=True)
            self.bn1 = IdentityNorm(midplanes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(midplanes, MLP_OUT, 1, bias=False)
            self.conv2.bias = dense.conv2.bias
            self.bn2 = IdentityNorm(MLP_OUT)

    mod.PrunedBasicBlock = PrunedMlp
    try:
        with Recorder(mod) as rec:
            pruned = mod.prune_basic_block(x, dense, MLP_RATIO, ITERS, MLP_BS)
    finally:
        mod.PrunedBasicBlock = original
    kept = int(MLP_H * MLP_RATIO)
    iters = decode(rec, mass, MLP_H, kept, ITERS, (MLP_N + MLP_BS - 1) // MLP_BS)
    returned = recover(dense.conv1.weight, pruned.conv1.weight)
    tensors = {
        "inputs": x.reshape(MLP_N, MLP_IN),
        "fc1.weight": dense.conv1.weight.reshape(MLP_H, MLP_IN),
        "fc1.bias": dense.conv1.bias,
        "fc2.weight": dense.conv2.weight.reshape(MLP_OUT, MLP_H),
        "fc2.bias": dense.conv2.bias,
    }
    meta = {"channels": MLP_H, "ratio": MLP_RATIO, "kept": kept, "num_iter": ITERS, "bs": MLP_BS,
            "pruned_bn": "none"}
    return meta, mass, iters, returned, tensors


def write(out_dir, name, ref, seed, result):
    meta, mass, iters, returned, tensors = result
    if returned != iters[-1]["support"]:
        fail(f"{name}: the returned block keeps {returned}, the last support is {iters[-1]['support']}")
    by_mass = sorted(range(len(mass)), key=lambda c: -float(mass[c]))[: meta["kept"]]
    doc = {
        "reference": {"repository": "wolfecameron/i-SpaSP", "commit": ref["commit"],
                      "function": "prune_resnet34_ispasp.py::prune_basic_block", "torch": torch.__version__},
        "scenario": name,
        "seed": seed,
        **meta,
        "mass": mass.tolist(),
        "iterations": iters,
        "returned": returned,
        "activation_magnitude_support": sorted(by_mass),
    }
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    save_safetensors(os.path.join(out_dir, f"{name}.safetensors"), {k: v.float() for k, v in tensors.items()})
    changes = 1 + sum(a["support"] != b["support"] for a, b in zip(iters, iters[1:]))
    print(f"{name}: kept {meta['kept']} of {meta['channels']}, {changes} distinct supports, final {returned}, "
          f"activation magnitude {sorted(by_mass)}")


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: ispasp_reference.py REFERENCE_CHECKOUT [OUT_DIR]")
    ref_dir = os.path.abspath(sys.argv[1])
    out_dir = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else "crates/espalier-prune/tests/fixtures/ispasp")
    os.makedirs(out_dir, exist_ok=True)
    commit = os.environ.get("ISPASP_REF_COMMIT", "unknown")
    try:
        git = ["git", "-C", ref_dir, "rev-parse"]
        top = subprocess.run(git + ["--show-toplevel"], capture_output=True, text=True, check=True).stdout.strip()
        # Only the checkout's own repository, not one it happens to sit in.
        if os.path.realpath(top) == os.path.realpath(ref_dir):
            commit = subprocess.run(git + ["HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    sys.path.insert(0, ref_dir)
    mod = importlib.import_module("prune_resnet34_ispasp")
    ref = {"commit": commit}
    block_seed, mlp_seed = int(os.environ.get("BLOCK_SEED", "9")), int(os.environ.get("MLP_SEED", "14"))
    write(out_dir, "block_batch", ref, block_seed, run_block(mod, block_seed, running=False))
    write(out_dir, "block_running", ref, block_seed, run_block(mod, block_seed, running=True))
    write(out_dir, "mlp", ref, mlp_seed, run_mlp(mod, mlp_seed))


if __name__ == "__main__":
    main()
