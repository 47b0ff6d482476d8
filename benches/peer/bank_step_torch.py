#!/usr/bin/env python3
"""PyTorch peer of membank's step against the bank (`benches/examples/bank_step.rs`).

    python bank_step_torch.py make --out DIR [--rows 50000] [--dim 128] [--samples 256]
                                   [--views 2] [--merged-pairs 0] [--seed 0]
        bank.npy ([N, D] float32 unit rows), features.npy ([B·K, D] float32 unit rows, the K views
        of a sample in consecutive rows), indices.npy ([B] int64, distinct bank rows) and
        groups.npy ([N] int64 merge-group ids: each of the first P samples' rows merged with
        one other row outside the batch, every other row alone), seeded;
    python bank_step_torch.py step DIR [--views 2] [--tau 0.1] [--momentum 0.5] [--threads 2]
                                   [--consistency 0] [--merged] [--steps 10] [--warmup 2]
                                   [--check MEMBANK_OUT] [--device cuda]
        the step as a PyTorch user writes it: logits = f @ bankᵀ / τ, cross_entropy against each
        row's bank index (with --merged: −log of the softmax summed over the target's group,
        a masked logsumexp; with --consistency λ: plus λ times npid.py's consistency KL between
        each sample's views), backward to f (a leaf), then the bank update once per sample
        (bank[i] = normalise(m·bank[i] + (1−m)·mean of its K views), index_copy_); and a bare
        f @ bankᵀ. The step runs warmup + steps times on the bank it keeps updating, as training
        does; prints the median milliseconds of each (on a GPU, each timing starts and ends
        with torch.cuda.synchronize()). With --check, the first step's loss, ∂L/∂f and updated
        rows (from the initial bank) are compared with those membank wrote (`bank_step --out`):
        the largest differences, relative to the largest value of each.

Prints one JSON line.
"""
import argparse
import json
import os
import statistics
import time

import numpy as np


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--rows", type=int, default=50000)
    m.add_argument("--dim", type=int, default=128)
    m.add_argument("--samples", type=int, default=256)
    m.add_argument("--views", type=int, default=2)
    m.add_argument("--merged-pairs", type=int, default=0)
    m.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("step")
    s.add_argument("inputs")
    s.add_argument("--views", type=int, default=2)
    s.add_argument("--tau", type=float, default=0.1)
    s.add_argument("--momentum", type=float, default=0.5)
    s.add_argument("--consistency", type=float, default=0.0)
    s.add_argument("--merged", action="store_true")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--check", default=None)
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    return p.parse_args()


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make(a):
    if not 0 < a.samples <= a.rows:
        raise SystemExit(f"--samples {a.samples} must be in 1..{a.rows}")
    if not 0 <= a.merged_pairs <= min(a.samples, a.rows - a.samples):
        raise SystemExit(f"--merged-pairs {a.merged_pairs} must be in 0..{min(a.samples, a.rows - a.samples)}")
    rng = np.random.default_rng(a.seed)
    bank = unit(rng.standard_normal((a.rows, a.dim), dtype=np.float32))
    indices = rng.choice(a.rows, size=a.samples, replace=False).astype(np.int64)
    # Each view: its sample's bank row plus noise, as features near their row are after training.
    views = np.repeat(bank[indices], a.views, axis=0)
    noise = rng.standard_normal(views.shape, dtype=np.float32) * 0.05
    os.makedirs(a.out, exist_ok=True)
    np.save(os.path.join(a.out, "bank.npy"), bank)
    np.save(os.path.join(a.out, "features.npy"), unit(views + noise).astype(np.float32))
    np.save(os.path.join(a.out, "indices.npy"), indices)
    groups = np.arange(a.rows, dtype=np.int64)
    outside = np.setdiff1d(np.arange(a.rows), indices)
    partners = rng.choice(outside, size=a.merged_pairs, replace=False)
    groups[partners] = indices[: a.merged_pairs]
    np.save(os.path.join(a.out, "groups.npy"), groups)


def load(a):
    bank = np.load(os.path.join(a.inputs, "bank.npy"))
    feats = np.load(os.path.join(a.inputs, "features.npy"))
    idx = np.load(os.path.join(a.inputs, "indices.npy"))
    if bank.ndim != 2 or feats.ndim != 2 or idx.ndim != 1 or feats.shape != (idx.size * a.views, bank.shape[1]):
        raise SystemExit(f"{a.inputs}: bank {bank.shape}, features {feats.shape}, indices {idx.shape} "
                         f"are not [N, D], [B·K, D], [B] with K = {a.views}")
    return bank, feats, idx


def run(a):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    bank_np, feats_np, idx_np = load(a)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {a.device}: this torch sees no CUDA device")
    bank = torch.from_numpy(bank_np).clone().to(a.device)
    feats = torch.from_numpy(feats_np).to(a.device)
    idx = torch.from_numpy(idx_np).to(a.device)
    targets = idx.repeat_interleave(a.views)
    b, d = idx.numel(), bank.shape[1]
    groups = torch.from_numpy(np.load(os.path.join(a.inputs, "groups.npy"))).to(a.device) if a.merged else None

    def objective(logits):
        if groups is None and a.consistency == 0:
            return F.cross_entropy(logits, targets)
        logp = F.log_softmax(logits, dim=1)
        if groups is None:
            loss = F.nll_loss(logp, targets)
        else:
            outside = groups[targets][:, None] != groups[None, :]
            loss = -torch.logsumexp(logp.masked_fill(outside, float("-inf")), dim=1).mean()
        if a.consistency > 0 and a.views > 1:
            lp = logp.view(b, a.views, -1)
            kl = (lp.exp() * (lp - lp.mean(dim=1, keepdim=True))).sum() * a.views
            loss = loss + a.consistency * kl / (b * a.views * (a.views - 1))
        return loss

    def step():
        f = feats.clone().requires_grad_(True)
        logits = f @ bank.t() / a.tau
        loss = objective(logits)
        loss.backward()
        with torch.no_grad():
            mean = f.detach().view(b, a.views, d).mean(1)
            bank.index_copy_(0, idx, F.normalize(a.momentum * bank[idx] + (1 - a.momentum) * mean, dim=1))
        return loss.item(), f.grad

    loss, grad = step()
    first_rows = bank[idx].clone()

    def sync():
        if bank.is_cuda:
            torch.cuda.synchronize(bank.device)

    def timed(fn):
        ms = []
        for i in range(a.warmup + a.steps):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if i >= a.warmup:
                ms.append((time.perf_counter() - start) * 1e3)
        return statistics.median(ms)

    step_ms = timed(step)
    matmul_ms = timed(lambda: feats @ bank.t())
    rec = {"tool": "pytorch", "torch": torch.__version__, "device": a.device, "threads": a.threads, "rows": bank.shape[0], "dim": d,
           "batch_rows": feats.shape[0], "views": a.views, "consistency": a.consistency, "merged": a.merged, "loss": loss, "step_ms": step_ms, "matmul_ms": matmul_ms}
    if a.check:
        theirs_grad = np.load(os.path.join(a.check, "grad.npy"))
        theirs_rows = np.load(os.path.join(a.check, "rows.npy"))
        with open(os.path.join(a.check, "loss.json")) as fh:
            theirs_loss = json.load(fh)["loss"]
        for name, ours, theirs in (("grad", grad.cpu().numpy(), theirs_grad), ("rows", first_rows.cpu().numpy(), theirs_rows)):
            if theirs.shape != ours.shape:
                raise SystemExit(f"{a.check}: {name}.npy has shape {theirs.shape}, expected {ours.shape}")
            rec[f"{name}_rel_diff"] = float(np.abs(ours - theirs).max() / np.abs(ours).max())
        rec["loss_diff"] = abs(loss - theirs_loss)
    print(json.dumps(rec))


if __name__ == "__main__":
    args = parse()
    make(args) if args.cmd == "make" else run(args)
