#!/usr/bin/env python3
"""Golden fixtures for Espalier's ADMM (crates/espalier-prune/src/admm.rs).

Espalier's own reference, in float64 NumPy, of scaled-form ADMM towards a 2:4
pattern (Zhang et al., "A Systematic DNN Weight Pruning Framework using ADMM",
ECCV 2018, arXiv 1804.03294, eqs. 6-9) on f(W) = 1/2 ||W - A||^2, with plain
SGD, in the order of Espalier's training step:

    step k:  (first step only) Z = P(W), U = 0          -> trace point at step 0
             g = (W - A) + rho (W - Z + U)              (penalty = "gradient")
             W <- W - lr g
             W <- (W + lr rho (Z - U)) / (1 + lr rho)   (penalty = "proximal",
                                                         and then g = W - A only)
             if (k + 1) % every == 0:
                 Z_new = P(W + U); U <- U + W - Z_new   -> trace point at step k + 1
                 rho <- min(rho * growth, rho_max)

P keeps the 2 largest |.| of every 4 consecutive entries of a row (ties: the
lower index). W, Z and U are kept after updates 1, 2, 5, 10, ... The trace point records rho before it grows, the primal gap
||W - Z|| / ||W||, the dual residual rho ||Z_k - Z_{k-1}|| and the fraction of
supp Z_k not in supp Z_{k-1}, and whether Espalier's warning fires there (the
gap has not fallen for 3 consecutive updates and is above 0.05).

Also the frozen-W pathology: W = [4, -1, 3, 0.5] never moves, Z/U updated
repeatedly; the gap goes 0.2182, 0.2182, 0.2182, 0.7105, ...

Run by hand (NumPy only), never in CI:

    python3 scripts/reference/admm_reference.py crates/espalier-prune/tests/fixtures/admm
"""

import json
import os
import sys

import numpy as np


def project(v, n=2, m=4):
    out = np.zeros_like(v)
    rows, cols = v.shape
    for r in range(rows):
        for b in range(0, cols, m):
            block = v[r, b:b + m]
            keep = np.argsort(-np.abs(block), kind="stable")[:n]
            out[r, b + keep] = block[keep]
    return out


def point(step, rho, w, z, z_old):
    gap = float(np.sqrt(np.sum((w - z) ** 2) / np.sum(w ** 2)))
    if z_old is None:
        return {"step": step, "rho": rho, "primal_gap": gap, "dual_residual": None, "support_change": None}
    dual = float(rho * np.sqrt(np.sum((z - z_old) ** 2)))
    now, before = z != 0, z_old != 0
    change = float(np.sum(now & ~before) / max(np.sum(now), 1))
    return {"step": step, "rho": rho, "primal_gap": gap, "dual_residual": dual, "support_change": change}


def quadratic(name, penalty, seed=7, steps=300, lr=0.1, rho=0.05, growth=1.3, rho_max=2.0, every=10):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(4, 8))
    w = rng.normal(size=(4, 8))
    w0 = w.copy()
    z = u = None
    trace, snapshots = [], []
    for k in range(steps):
        if z is None:
            z, u = project(w), np.zeros_like(w)
            trace.append(point(0, rho, w, z, None))
        g = w - a
        if penalty == "gradient":
            g = g + rho * (w - z + u)
        w = w - lr * g
        if penalty == "proximal":
            t = lr * rho
            w = (w + t * (z - u)) / (1.0 + t)
        if (k + 1) % every == 0:
            z_new = project(w + u)
            u = u + w - z_new
            trace.append(point(k + 1, rho, w, z_new, z))
            z = z_new
            rho = min(rho * growth, rho_max)
            n = len(trace) - 1
            if n <= 2 or n % 5 == 0:
                snapshots.append({"step": k + 1, "w": w.tolist(), "z": z.tolist(), "u": u.tolist()})
    return {
        "name": name,
        "penalty": penalty,
        "lr": lr,
        "rho": trace[0]["rho"],
        "rho_growth": growth,
        "rho_max": rho_max,
        "every_steps": every,
        "steps": steps,
        "a": a.tolist(),
        "w0": w0.tolist(),
        "trace": trace,
        "snapshots": snapshots,
    }


def frozen(updates=8):
    w = np.array([[4.0, -1.0, 3.0, 0.5]])
    z, u = project(w), np.zeros_like(w)
    trace = [point(0, 1.0, w, z, None)]
    for i in range(updates):
        z_new = project(w + u)
        u = u + w - z_new
        trace.append(point(i + 1, 1.0, w, z_new, z))
        z = z_new
    return {"name": "frozen", "w": w.tolist(), "trace": trace}


def mark_stalls(trace, patience=3, converged=0.05):
    """Espalier's warning rule: the gap has not fallen for `patience`
    consecutive updates and is above `converged`."""
    streak = 0
    for i, p in enumerate(trace):
        if i > 0:
            streak = streak + 1 if p["primal_gap"] >= trace[i - 1]["primal_gap"] else 0
        p["stalled"] = streak >= patience and p["primal_gap"] > converged
    return trace


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for data in [quadratic("quadratic_sgd", "gradient"), quadratic("quadratic_proximal", "proximal"), frozen()]:
        mark_stalls(data["trace"])
        with open(os.path.join(out, data["name"] + ".json"), "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        print(data["name"], [round(p["primal_gap"], 4) for p in data["trace"]],
              "stalled at", [i for i, p in enumerate(data["trace"]) if p["stalled"]])


if __name__ == "__main__":
    main()
