#!/usr/bin/env python3
"""membank's training views against npid.py's torchvision augmentation, as distributions.

Reads a step-parity folder (`cargo xtask parity --step`, `benches/examples/step_parity.rs`):
the views membank's loader rendered for its first batches (`batch<s>/images.npy`, normalised,
with `mean`/`std` in meta.json) and their samples (`batch<s>/indices.npy`). Draws the same
number of views of the same training images (an image folder DATA/train/<class>/*, in
torchvision ImageFolder's order, which is membank's: classes sorted, files sorted) with npid.py's
augmentation (RandomResizedCrop(side, 0.2-1), flip, ColorJitter(0.4, 0.4, 0.4), RandomGrayscale
0.2) and compares per-view statistics in pixel units [0, 1] (grey: the luma): mean, std, the
fraction of near-black (< 0.02) and near-white (> 0.98) pixels, the max; quantiles of each and the
two-sample Kolmogorov-Smirnov statistic with its 1% critical value. Information only (exit 0).

    python augment_parity.py DIR --data /tmp/darkset [--draws 4]
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torchvision
from torchvision import transforms as T

LUMA = torch.tensor([0.299, 0.587, 0.114])


def stats(views):
    """views [N, H, W] in [0, 1] -> {name: [N]}"""
    flat = views.flatten(1)
    return {
        "mean": flat.mean(1), "std": flat.std(1),
        "black<0.02": (flat < 0.02).float().mean(1), "white>0.98": (flat > 0.98).float().mean(1),
        "max": flat.max(1).values,
    }


def ks(a, b):
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir")
    p.add_argument("--data", required=True, help="the image folder membank trained on")
    p.add_argument("--draws", type=int, default=4, help="torchvision views per membank view")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    meta = json.load(open(os.path.join(a.dir, "meta.json")))
    mean, std = torch.tensor(meta["mean"]), torch.tensor(meta["std"])
    views, samples = [], []
    for s in range(1, meta["steps"] + 1):
        x = torch.from_numpy(np.load(os.path.join(a.dir, f"batch{s}/images.npy")))
        c = x.shape[1]
        x = x * std[:c, None, None] + mean[:c, None, None]
        views.append((x * LUMA[:, None, None]).sum(1) if c == 3 else x[:, 0])
        samples.append(torch.from_numpy(np.load(os.path.join(a.dir, f"batch{s}/indices.npy"))))
    ours = torch.cat(views)
    samples = torch.cat(samples)
    folder = torchvision.datasets.ImageFolder(os.path.join(a.data, "train"))
    if len(folder) < int(samples.max()) + 1:
        sys.exit(f"{a.data}/train has {len(folder)} images; membank's batches index {int(samples.max())}")
    side = meta["image_size"]
    augment = T.Compose([T.RandomResizedCrop(side, scale=(0.2, 1.0)), T.RandomHorizontalFlip(),
                         T.ColorJitter(0.4, 0.4, 0.4, 0.0), T.RandomGrayscale(0.2), T.ToTensor()])
    torch.manual_seed(a.seed)
    theirs = []
    for i in samples.tolist():
        img = folder.loader(folder.samples[i][0])  # RGB, as npid.py
        for _ in range(a.draws):
            theirs.append((augment(img) * LUMA[:, None, None]).sum(0))
    theirs = torch.stack(theirs)
    clean = torch.stack([(T.ToTensor()(folder.loader(folder.samples[i][0])) * LUMA[:, None, None]).sum(0)
                         for i in samples.unique().tolist()])
    so, st, sc = stats(ours), stats(theirs), stats(clean)
    n, m = len(ours), len(theirs)
    crit = 1.63 * math.sqrt((n + m) / (n * m))
    print(f"# augmented views: membank {n} ({meta['backend']}), torchvision {m}; clean images {len(clean)}; "
          f"{side}x{side}, membank channels {meta['channels']}\n")
    print("| statistic | clean mean | membank mean | torchvision mean | membank q10/q50/q90 | torchvision q10/q50/q90 | KS | KS 1% |")
    print("|---|---|---|---|---|---|---|---|")
    for k in so:
        q = lambda v: "/".join(f"{x:.3f}" for x in np.quantile(v.numpy(), [0.1, 0.5, 0.9]))
        d = ks(so[k].numpy(), st[k].numpy())
        print(f"| {k} | {sc[k].mean():.4f} | {so[k].mean():.4f} | {st[k].mean():.4f} | {q(so[k])} | {q(st[k])} | "
              f"{d:.3f}{' *' if d > crit else ''} | {crit:.3f} |")


if __name__ == "__main__":
    main()
