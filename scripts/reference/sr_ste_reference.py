#!/usr/bin/env python3
"""Golden fixtures for Espalier's SR-STE (crates/espalier-prune/src/sr_ste.rs).

Runs the authors' `Sparse` autograd function (aojunzz/NM-sparsity,
`devkit/sparse_ops/sparse_ops.py`) UNCHANGED: the file is loaded from a
checkout of that repository given on the command line (it is never copied
into Espalier). Its `from torch._six import container_abcs` predates
PyTorch 2, so this harness registers a stand-in `torch._six` module before
loading it (the op does not use it).

Scenario, in float64 on the CPU: a bias-free linear layer y = x (W ⊙ M)^T with
W 4×8 (2:4 along the input dimension, the layout of `SparseLinear`), loss
1/2 mean_b ||y_b - t_b||^2, `Sparse.apply(W, 2, 4, decay)` in the forward
pass, called as `SparseLinear` calls it (`Sparse.apply(W, N, M)`: its
backward returns three gradients, so the decay cannot be passed and is the
default 2e-4; at lr 0.1 its term moves a weight by ~2e-5 per step, far above
the test's 1e-9), torch.optim.SGD (lr 0.1, momentum 0.9: SR-STE's regime),
five steps. The mask of each step is read from the op's output (W has no
zeros). Written: the initial W, x, t, the initial mask, and after every step
W and the mask the next forward pass uses.

    python3 scripts/reference/sr_ste_reference.py /path/to/NM-sparsity \
        crates/espalier-prune/tests/fixtures/sr_ste
"""

import importlib.util
import json
import os
import sys
import types

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)


def load_sparse(repo):
    six = types.ModuleType("torch._six")
    six.container_abcs = __import__("collections.abc").abc
    sys.modules.setdefault("torch._six", six)
    path = os.path.join(repo, "devkit", "sparse_ops", "sparse_ops.py")
    spec = importlib.util.spec_from_file_location("nm_sparse_ops", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Sparse


def scenario(Sparse, decay=2e-4, steps=5, lr=0.1, momentum=0.9, seed=11):
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=(4, 8))
    x = rng.normal(size=(6, 8))
    t = rng.normal(size=(6, 4))
    w = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.SGD([w], lr=lr, momentum=momentum)
    xt, tt = torch.tensor(x), torch.tensor(t)

    def mask():
        with torch.no_grad():
            return (Sparse.apply(w, 2, 4) != 0).double().numpy()

    out = {"decay": decay, "lr": lr, "momentum": momentum, "w0": w0.tolist(), "x": x.tolist(), "t": t.tolist(),
           "mask0": mask().tolist(), "steps": []}
    for _ in range(steps):
        opt.zero_grad()
        ws = Sparse.apply(w, 2, 4)
        y = xt @ ws.t()
        loss = 0.5 * ((y - tt) ** 2).sum(dim=1).mean()
        loss.backward()
        opt.step()
        out["steps"].append({"loss": float(loss.detach()), "w": w.detach().numpy().tolist(), "mask": mask().tolist()})
    return out


def main():
    repo, dest = sys.argv[1], sys.argv[2]
    Sparse = load_sparse(repo)
    os.makedirs(dest, exist_ok=True)
    for name in ["sgd_momentum"]:
        data = scenario(Sparse)
        with open(os.path.join(dest, name + ".json"), "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        changes = [int(np.sum(np.array(s["mask"]) != np.array(data["mask0"]))) for s in data["steps"]]
        print(name, "losses", [round(s["loss"], 6) for s in data["steps"]], "mask entries changed", changes)


if __name__ == "__main__":
    main()
