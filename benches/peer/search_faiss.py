#!/usr/bin/env python3
"""FAISS peer of membank's all-rows exact top-k search (`benches/examples/search_topk.rs`).

    python search_faiss.py make --rows 50000 --out rows.npy [--seed 0]
        random unit rows (D = 128, float32, standard normal directions normalised), seeded;
    python search_faiss.py search rows.npy [--k 10] [--threads 2] [--check membank_topk.npy]
        every row queries the whole bank (faiss.IndexFlatIP, exact inner product); the row itself
        is excluded, as bank-mining's `nearest_neighbours` excludes it: FAISS is asked for k + 1
        and the row's own index dropped. Times the search only (not the index build). With
        --check, also the recall of the other top-k (an [N, k] .npy of indices) against FAISS's:
        the mean over rows of |theirs ∩ FAISS's| / k.

Prints one JSON line.
"""
import argparse
import json
import time

import numpy as np


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--rows", type=int, required=True)
    m.add_argument("--dim", type=int, default=128)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", required=True)
    s = sub.add_parser("search")
    s.add_argument("rows")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--check", default=None)
    return p.parse_args()


def make(a):
    rng = np.random.default_rng(a.seed)
    x = rng.standard_normal((a.rows, a.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(a.out, x)


def drop_self(found, k):
    """[N, k + 1] neighbour lists -> [N, k] without each row's own index (the last one dropped
    when the row is not among them)."""
    n = found.shape[0]
    own = found == np.arange(n)[:, None]
    keep = ~own
    keep[~own.any(axis=1), k] = False
    return found[keep].reshape(n, k)


def search(a):
    import faiss

    faiss.omp_set_num_threads(a.threads)
    x = np.load(a.rows)
    if x.ndim != 2 or x.dtype != np.float32:
        raise SystemExit(f"{a.rows}: expected a 2-d float32 array, got {x.dtype} {x.shape}")
    n, d = x.shape
    if not 0 < a.k < n:
        raise SystemExit(f"--k {a.k} must be in 1..{n} (the row itself is excluded)")
    index = faiss.IndexFlatIP(d)
    index.add(x)
    start = time.perf_counter()
    _, found = index.search(x, a.k + 1)
    seconds = time.perf_counter() - start
    topk = drop_self(found, a.k)
    rec = {"tool": "faiss", "faiss": faiss.__version__, "threads": a.threads, "rows": n, "dim": d, "k": a.k,
           "self": "excluded", "seconds": seconds, "queries_per_s": n / seconds}
    if a.check:
        theirs = np.load(a.check).astype(np.int64)
        if theirs.shape != topk.shape:
            raise SystemExit(f"{a.check}: shape {theirs.shape}, expected {topk.shape}")
        hits = (theirs[:, :, None] == topk[:, None, :]).any(axis=2).sum()
        rec["recall"] = float(hits) / topk.size
        rec["self_listed"] = int((theirs == np.arange(n)[:, None]).any(axis=1).sum())
    print(json.dumps(rec))


def main():
    a = parse()
    make(a) if a.cmd == "make" else search(a)


if __name__ == "__main__":
    main()
