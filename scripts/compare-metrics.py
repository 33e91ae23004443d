#!/usr/bin/env python3
"""Compares the metrics.jsonl of two sets of runs (scripts/engine-equivalence.sh):
every line and every field must be identical except the timings (`seconds`).

One difference is expected and reported as such: since the engine redesign
(one session, one epoch loop), a run whose dense phase trains no epoch (it
starts from `init_from`) writes a round-0 record with the starting model's
evaluation first, as structured runs always did; every other line must
still be identical.

    scripts/compare-metrics.py BEFORE_DIR AFTER_DIR
"""
import json
import sys
from pathlib import Path

IGNORED = {"seconds"}


def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in IGNORED}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v


def lines(path):
    return [strip(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def main():
    before, after = Path(sys.argv[1]), Path(sys.argv[2])
    runs = sorted(p.parent.name for p in before.glob("*/metrics.jsonl"))
    failed = 0
    for run in runs:
        a, b = lines(before / run / "metrics.jsonl"), lines(after / run / "metrics.jsonl")
        same = a == b
        new_round0 = (
            not same
            and len(b) == len(a) + 1
            and b[0].get("type") == "round"
            and b[0].get("round") == 0
            and not any(r.get("round") == 0 for r in a)
            and b[1:] == a
        )
        if new_round0:
            print(f"{run:24} {len(a):3} lines  identical, after the new round-0 record of the starting model")
            continue
        print(f"{run:24} {len(a):3} lines  {'identical' if same else 'DIFFERENT'}")
        if not same:
            failed += 1
            for i, (x, y) in enumerate(zip(a, b)):
                if x != y:
                    print(f"  first difference at line {i + 1}:\n    before {x}\n    after  {y}")
                    break
            if len(a) != len(b):
                print(f"  {len(a)} lines before, {len(b)} after")
    print(f"{len(runs) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
