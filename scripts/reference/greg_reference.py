#!/usr/bin/env python3
"""Differential-test fixtures for Espalier's GReg `reference` mode.

Runs the authors' GReg pruner (MingSun-Tse/Regularization-Pruning,
`pruner/reg_pruner.py` + `pruner/meta_pruner.py`, with the repository's own
`option.py` argument parser) UNCHANGED on a tiny fixed network and a list of
fixed batches, on the CPU, and dumps what it decides.

This script is Espalier's own harness; the reference code is never copied
into the repository. Usage (PyTorch installed by hand, never in CI):

    python3 scripts/reference/greg_reference.py /path/to/Regularization-Pruning \
        crates/espalier-prune/tests/fixtures/greg

The net is conv1(3→4, 3×3) → BN → ReLU → conv2(4→6, 3×3) → BN → ReLU →
global average pool → fc(6→5), initial weights drawn from a fixed NumPy seed
(no ties among per-filter scores), four fixed batches of 8 inputs 3×6×6.

Per scenario it writes `<name>.json` (the arguments, the pruned indices per
layer, the (step, λ, ratio) trace per layer, the stop step, the step at which
`prune()` returned) and `<name>.safetensors` (the initial parameters and
buffers in PyTorch layout (OIHW), the inputs and targets, the conv weights
before every step up to the stop step, and every parameter after 50 steps).
"""

import json
import math
import os
import struct
import sys
import types

import numpy as np


def stub(name):
    """An empty module for an import the pruner never uses."""
    mod = types.ModuleType(name)
    mod.__path__ = []
    mod.__getattr__ = lambda attr: None if not attr.startswith("__") else (_ for _ in ()).throw(AttributeError(attr))
    sys.modules[name] = mod
    return mod


# Top-level imports of option.py / utils.py / main.py that the pruner never
# calls: torchvision (option.py lists its model names), matplotlib, PIL,
# pathos (oracle_pruner.py, imported by pruner/__init__.py).
for _n in ["torchvision", "torchvision.models", "torchvision.transforms", "torchvision.datasets",
           "matplotlib", "matplotlib.pyplot", "mpl_toolkits", "mpl_toolkits.axes_grid1", "PIL", "PIL.Image", "pathos", "pathos.multiprocessing"]:
    stub(_n)
sys.modules["torchvision"].models = sys.modules["torchvision.models"]
sys.modules["mpl_toolkits.axes_grid1"].make_axes_locatable = None
sys.modules["PIL"].Image = sys.modules["PIL.Image"]
sys.modules["matplotlib"].pyplot = sys.modules["matplotlib.pyplot"]

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
# No CUDA: `.cuda()` is the identity.
torch.Tensor.cuda = lambda self, *a, **k: self
nn.Module.cuda = lambda self, *a, **k: self

STEPS_AFTER = 50


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def fixed_net(seed):
    rng = np.random.default_rng(seed)
    net = Net()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("weight") and p.dim() > 1:
                fan_in = p[0].numel()
                v = rng.normal(0.0, math.sqrt(2.0 / fan_in), size=tuple(p.shape))
                # Spread the filters' magnitudes so that no two per-filter
                # scores are close (the reference sorts unstably).
                scale = np.linspace(0.5, 1.5, p.shape[0])[rng.permutation(p.shape[0])]
                v = v * scale.reshape((-1,) + (1,) * (p.dim() - 1))
            elif name.startswith("bn") and name.endswith("weight"):
                v = rng.uniform(0.8, 1.2, size=tuple(p.shape))
            else:
                v = rng.uniform(-0.1, 0.1, size=tuple(p.shape))
            p.copy_(torch.from_numpy(v.astype(np.float32)))
    return net


def fixed_batches(seed, n=4, bs=8):
    rng = np.random.default_rng(seed + 1)
    out = []
    for _ in range(n):
        x = torch.from_numpy(rng.normal(size=(bs, 3, 6, 6)).astype(np.float32))
        y = torch.from_numpy(rng.integers(0, 5, size=(bs,)).astype(np.int64))
        out.append((x, y))
    return out


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


def run(ref, out_dir, name, seed, argv):
    sys.argv = ["main.py"] + argv
    for m in ["option", "utils", "model", "pruner", "pruner.reg_pruner", "pruner.meta_pruner"]:
        sys.modules.pop(m, None)
    from option import args  # the repository's own argument parser
    from model import is_single_branch
    from pruner import reg_pruner

    torch.manual_seed(0)
    net = fixed_net(seed)
    batches = fixed_batches(seed)
    init = {f"init.{k}": v.clone() for k, v in net.state_dict().items() if v.dtype == torch.float32}

    logs = []
    logger = types.SimpleNamespace(
        log_printer=types.SimpleNamespace(logprint=logs.append, accprint=logs.append),
        netprint=logs.append, log_path="/nonexistent", logplt_path="/nonexistent", ExpID="fixture")
    logger.log_printer.netprint = logs.append
    passer = types.SimpleNamespace(
        test=lambda *a, **k: (0.0, 0.0, 0.0), test_loader=None, criterion=nn.CrossEntropyLoss(),
        args=args, save=lambda *a, **k: None, is_single_branch=is_single_branch, train_loader=batches)

    pruner = reg_pruner.Pruner(net, args, logger, passer)
    layers = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    modules = dict(net.named_modules())
    trace = {n: [] for n in layers}
    weights = {}
    after = {}

    # Pre-step weights at every iteration (recorded at the forward pass,
    # which precedes the reg update and the step).
    orig_forward = Net.forward

    def forward(self, x):
        t = pruner.total_iter
        if pruner.prune_state == "update_reg" or t <= pruner.iter_stabilize_reg:
            for n in convs:
                weights[f"w.{t}.{n}.weight"] = modules[n].weight.detach().clone()
        if t == STEPS_AFTER:
            for k, v in self.state_dict().items():
                if v.dtype == torch.float32:
                    after[f"after{STEPS_AFTER}.{k}"] = v.clone()
        return orig_forward(self, x)

    net.forward = types.MethodType(forward, net)

    orig_update = pruner._update_reg

    def update_reg():
        before = set(pruner.iter_update_reg_finished)
        orig_update()
        for n in layers:
            if n in before or pruner.pr[n] == 0:
                continue
            reg = pruner.reg[n]
            hist = pruner.hist_mag_ratio.get(n)
            trace[n].append({
                "step": pruner.total_iter,
                "lambda_max": float(reg.max()),
                "lambda_min": float(reg.min()),
                "ratio": None if hist is None else float(hist),
                "finished": n in pruner.iter_update_reg_finished,
            })

    pruner._update_reg = update_reg
    # GReg-2 draws a matplotlib figure at every iteration divisible by
    # --plot_interval (t = 0 included): output only, stubbed.
    pruner._plot_mag_ratio = lambda *a, **k: None
    new_model = pruner.prune()
    assert pruner.total_iter >= STEPS_AFTER, "the run must last past step %d" % STEPS_AFTER

    def idx(v):
        return sorted(int(i) for i in (v.tolist() if torch.is_tensor(v) else v))

    dump = {
        "reference": "MingSun-Tse/Regularization-Pruning pruner/reg_pruner.py",
        "argv": argv,
        "seed": seed,
        "method": args.method,
        "args": {k: getattr(args, k) for k in [
            "update_reg_interval", "stabilize_reg_interval", "reg_granularity_prune", "reg_upper_limit",
            "mag_ratio_limit", "reg_granularity_pick", "reg_upper_limit_pick", "reg_granularity_recover",
            "lr_prune", "momentum", "weight_decay"]},
        "stop_step": pruner.iter_stabilize_reg,
        "return_step": pruner.total_iter,
        "layers": {
            n: {
                "pr": float(pruner.pr[n]),
                "n": modules[n].weight.shape[0],
                "pruned": idx(pruner.pruned_wg.get(n, [])),
                "kept": idx(pruner.kept_wg.get(n, [])),
                "finish_step": pruner.iter_update_reg_finished.get(n),
                "pick_step": pruner.iter_finish_pick.get(n),
                "trace": trace[n],
            }
            for n in layers
        },
        "shrunk_widths": [m.weight.shape[0] for m in new_model.modules() if isinstance(m, nn.Conv2d)],
    }
    tensors = dict(init)
    for i, (x, y) in enumerate(batches):
        tensors[f"inputs.{i}"] = x
        tensors[f"targets.{i}"] = y
    tensors.update(weights)
    tensors.update(after)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(dump, f, indent=1)
        f.write("\n")
    save_safetensors(os.path.join(out_dir, f"{name}.safetensors"), tensors)
    print(f"{name}: stop {dump['stop_step']}, returned at {dump['return_step']}, pruned "
          + ", ".join(f"{n} {dump['layers'][n]['pruned']}" for n in convs))


COMMON = ["--arch", "vgg11", "--dataset", "cifar10", "--wg", "filter", "--stage_pr", "[0:0.5,1:0.3]",
          "--momentum", "0.9", "--wd", "5e-4", "--print_interval", "100000000", "--test_interval", "100000000",
          "--save_interval", "100000000"]

SCENARIOS = {
    # λ reaches its ceiling: 20 f32 increments of 0.05 give 1.00000012 > 1.
    "greg1_ceiling": COMMON + ["--method", "GReg-1", "--lr_prune", "0.01", "--update_reg_interval", "1",
                               "--reg_granularity_prune", "0.05", "--reg_upper_limit", "1.0",
                               "--stabilize_reg_interval", "35"],
    # Every layer's EMA magnitude ratio passes the limit first.
    "greg1_ratio": COMMON + ["--method", "GReg-1", "--lr_prune", "0.1", "--update_reg_interval", "2",
                             "--reg_granularity_prune", "0.2", "--reg_upper_limit", "100", "--mag_ratio_limit",
                             "3", "--stabilize_reg_interval", "45"],
    # GReg-2: uniform growth to its pick ceiling, then push from there.
    "greg2": COMMON + ["--method", "GReg-2", "--lr_prune", "0.05", "--update_reg_interval", "1",
                       "--reg_granularity_pick", "0.01", "--reg_upper_limit_pick", "0.05",
                       "--reg_granularity_prune", "0.05", "--reg_upper_limit", "1.0",
                       "--reg_granularity_recover=-1e-4", "--stabilize_reg_interval", "30"],
}


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: greg_reference.py REFERENCE_CHECKOUT [OUT_DIR]")
    ref = os.path.abspath(sys.argv[1])
    out_dir = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else "crates/espalier-prune/tests/fixtures/greg")
    sys.path.insert(0, ref)
    os.chdir(ref)
    for name, argv in SCENARIOS.items():
        run(ref, out_dir, name, 7, argv)


if __name__ == "__main__":
    main()
