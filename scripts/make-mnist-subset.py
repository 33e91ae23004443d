#!/usr/bin/env python3
"""Builds the embedded MNIST subset under data/mnist-subset/ from full MNIST.

Stratified: the first N/10 examples of each digit, in file order, so the
subset is balanced and reproducible. Usage:
    python3 scripts/make-mnist-subset.py ../shared/data/mnist data/mnist-subset 10000 2000
"""
import gzip, struct, sys, os

def read_idx(path):
    with gzip.open(path, "rb") as f:
        b = f.read()
    nd = b[3]
    dims = struct.unpack(">" + "I" * nd, b[4:4 + 4 * nd])
    return dims, b[4 + 4 * nd:]

def write_idx(path, dims, data):
    head = bytes([0, 0, 8, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims)
    with open(path, "wb") as raw:
        # mtime=0 keeps the bytes reproducible
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
            f.write(head + data)

def subset(src, dst, prefix, n):
    (count, rows, cols), px = read_idx(os.path.join(src, f"{prefix}-images-idx3-ubyte.gz"))
    (_,), lb = read_idx(os.path.join(src, f"{prefix}-labels-idx1-ubyte.gz"))
    per = n // 10
    taken = [0] * 10
    keep = []
    for i in range(count):
        if taken[lb[i]] < per:
            taken[lb[i]] += 1
            keep.append(i)
    sz = rows * cols
    write_idx(os.path.join(dst, f"{prefix}-images-idx3-ubyte.gz"), (len(keep), rows, cols),
              b"".join(px[i * sz:(i + 1) * sz] for i in keep))
    write_idx(os.path.join(dst, f"{prefix}-labels-idx1-ubyte.gz"), (len(keep),), bytes(lb[i] for i in keep))
    print(f"{prefix}: {len(keep)} examples, {per} per class")

if __name__ == "__main__":
    src, dst, ntrain, ntest = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    os.makedirs(dst, exist_ok=True)
    subset(src, dst, "train", ntrain)
    subset(src, dst, "t10k", ntest)
