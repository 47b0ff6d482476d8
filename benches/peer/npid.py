#!/usr/bin/env python3
"""PyTorch peer of membank: NPID with a memory bank (+ Bulat et al.'s K views, consistency and merging).

Same method and recipe as membank's CPU config (configs/cifar10_small_cpu.toml and the defaults of
crates/bank-train/src/config.rs): small CNN conv3x3(32)-BN-ReLU-maxpool2, conv3x3(64)-BN-ReLU-
maxpool2, conv3x3(128)-BN-ReLU, global average pool, linear to 128, L2 norm; full softmax over the
bank, tau 0.1, bank momentum 0.5 (weight of the old row), batch 128 x K views, SGD momentum 0.9
dampening 0, lr 0.03 cosine per step, weight decay 5e-4, 8 epochs; kNN (k 200, sigma = tau) of the
test images against the bank after each epoch and against recomputed train features at the end.

Augmentation as membank's (crates/bank-data/src/augment.rs): RandomResizedCrop(side, 0.2-1),
flip 0.5, ColorJitter(0.4, 0.4, 0.4, hue 0) always, RandomGrayscale 0.2, CIFAR-10 normalisation.

Switches for every difference suspected between membank and a plain PyTorch implementation:
  --init pytorch|kaiming_fan_out|kaiming_fan_in   conv weight init (membank: kaiming_fan_out)
  --conv-bias                                     conv layers with a bias (PyTorch default True)
  --bn-wd / --no-bn-wd                            weight decay on BN gamma/beta (membank: yes)
  --bias-wd / --no-bias-wd                        weight decay on the linear bias (membank: yes)
  --bn-momentum 0.1                               running-statistics momentum (PyTorch convention)
  --norm cifar|dataset|none                       input normalisation (membank: cifar)
  --drop-last                                     drop the last partial batch (membank: keeps it)

Merging (--merge-start E; off by default), as membank's `groups = "recompute"` schedule with no
similarity floor and no group cap (crates/bank-mining/src/merge.rs), which is the ablation issue's
PyTorch reference: after epoch E (0-based, membank's merge.schedule.start_epoch) and every
--merge-every epochs after it, the mutual nearest-neighbour pairs of bank rows are ranked by
similarity (ties by the lower indices) and the first ceil(f * count) of them linked, f =
min(fraction_start + r * fraction_step, fraction_cap) in round r (from 0), down to
--merge-min-similarity; the pairs linked are the groups until the next round (recomputed groups
are pairs, so membank's max_group_size never binds). A sample linked to j is trained on -log(p(i|x) + p(j|x)).

Data: an image folder DIR/train/<class>/*.png and DIR/test/<class>/*.png (torchvision ImageFolder,
loaded as RGB). Writes one JSON line per epoch and a summary to --out (or stdout).

    python npid.py --data /tmp/darkset --init pytorch --out runs/dark_pt.json
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision import transforms as T

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--views", type=int, default=1)
    p.add_argument("--consistency", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--tau", type=float, default=0.1)
    p.add_argument("--bank-m", type=float, default=0.5)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--init", choices=["pytorch", "kaiming_fan_out", "kaiming_fan_in"], default="pytorch")
    p.add_argument("--init-scale", type=float, default=1.0, help="multiplies every conv weight after init")
    p.add_argument("--conv-bias", action="store_true")
    p.add_argument("--bn-wd", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--bias-wd", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--bn-momentum", type=float, default=0.1)
    p.add_argument("--norm", choices=["cifar", "dataset", "none"], default="cifar")
    p.add_argument("--drop-last", action="store_true")
    p.add_argument("--test-limit", type=int, default=0)
    p.add_argument("--merge-start", type=int, default=-1, help="first merge round after this epoch (0-based); -1: off")
    p.add_argument("--merge-every", type=int, default=1)
    p.add_argument("--merge-fraction-start", type=float, default=0.05)
    p.add_argument("--merge-fraction-step", type=float, default=0.05)
    p.add_argument("--merge-fraction-cap", type=float, default=0.75)
    p.add_argument("--merge-min-similarity", type=float, default=-1.0, help="no pair below it is linked")
    p.add_argument("--no-probe", action="store_true", help="skip the BatchNorm probe (knn_bank_teststats)")
    p.add_argument("--out", default=None, help="JSON-lines file (epochs, then the summary)")
    p.add_argument("--tag", default="")
    return p.parse_args()


class SmallCnn(nn.Module):
    def __init__(self, dim, conv_bias, bn_momentum, channels=3):
        super().__init__()
        chans = [(channels, 32), (32, 64), (64, 128)]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1, bias=conv_bias) for i, o in chans)
        self.bns = nn.ModuleList(nn.BatchNorm2d(o, momentum=bn_momentum) for _, o in chans)
        self.head = nn.Linear(128, dim)

    def features(self, x):
        for i, (c, b) in enumerate(zip(self.convs, self.bns)):
            x = F.relu(b(c(x)))
            if i < 2:
                x = F.max_pool2d(x, 2)
        return x.mean(dim=(2, 3))

    def forward(self, x):
        return F.normalize(self.head(self.features(x)), dim=1)


def init_model(model, how, scale):
    for c in model.convs:
        if how == "kaiming_fan_out":  # membank / torchvision ResNet: normal, fan_out, ReLU gain
            nn.init.kaiming_normal_(c.weight, mode="fan_out", nonlinearity="relu")
        elif how == "kaiming_fan_in":
            nn.init.kaiming_normal_(c.weight, mode="fan_in", nonlinearity="relu")
        # "pytorch": keep nn.Conv2d's default kaiming_uniform_(a=sqrt(5)), std 1/sqrt(3 fan_in)
        with torch.no_grad():
            c.weight.mul_(scale)


def bank_loss(f, bank, idx, views, tau, consistency, mate=None):
    """The method's loss: the full softmax over the bank (f [B*K, D] sample-major, idx [B] the
    samples' bank rows), mean over the B*K rows, plus consistency * the mean over samples and
    ordered pairs of views of KL(p_k || p_j) when K > 1. With merging, mate [N] is each row's
    partner (-1: none) and a merged sample's positive is its row and its partner's."""
    logp = F.log_softmax(f @ bank.t() / tau, dim=1)
    target = idx.repeat_interleave(views)
    if mate is None:
        loss = F.nll_loss(logp, target)
    else:
        own = logp.gather(1, target[:, None])[:, 0]
        m = mate[target]
        other = logp.gather(1, m.clamp(min=0)[:, None])[:, 0]
        loss = -torch.where(m >= 0, torch.logaddexp(own, other), own).mean()
    if consistency > 0 and views > 1:
        lp = logp.view(len(idx), views, -1)
        p = lp.exp()
        kl = (p * (lp - lp.mean(dim=1, keepdim=True))).sum() * views
        loss = loss + consistency * kl / (len(idx) * views * (views - 1))
    return loss


@torch.no_grad()
def bank_update(bank, idx, f, views, m):
    """In place: each sample's row <- normalise(m * row + (1 - m) * mean of its K views)."""
    mean_f = f.detach().view(len(idx), views, -1).mean(dim=1)
    bank[idx] = F.normalize(m * bank[idx] + (1 - m) * mean_f, dim=1)


@torch.no_grad()
def merge_round(bank, fraction, labels, floor=-1.0, chunk=4096):
    """One merge round: each row's partner [N] (-1: none) and a record of the round. The mutual
    nearest-neighbour pairs (i < j) of the bank rows, most similar first (ties by i, then j), the
    first ceil(fraction * count) of them linked, those at or above `floor`."""
    n = bank.shape[0]
    sim, nn = torch.empty(n), torch.empty(n, dtype=torch.long)
    for s in range(0, n, chunk):
        block = bank[s:s + chunk] @ bank.t()
        block[torch.arange(block.shape[0]), torch.arange(s, s + block.shape[0])] = -float("inf")
        sim[s:s + chunk], nn[s:s + chunk] = block.max(dim=1)
    i = torch.arange(n)
    mutual = (i < nn) & (nn[nn] == i)
    cand = sorted(zip((-sim[mutual]).tolist(), i[mutual].tolist(), nn[mutual].tolist()))
    take = [c for c in cand[: math.ceil(fraction * len(cand))] if -c[0] >= floor]
    mate = torch.full((n,), -1, dtype=torch.long)
    same = 0
    for _, a, b in take:
        mate[a], mate[b] = b, a
        same += int(labels[a] == labels[b])
    return mate, {"candidates": len(cand), "pairs_merged": len(take),
                  "purity": same / len(take) if take else None}


class Folder:
    """An ImageFolder split held in memory as PIL images."""

    def __init__(self, root):
        ds = torchvision.datasets.ImageFolder(root)
        self.images = [ds.loader(p) for p, _ in ds.samples]  # RGB
        self.labels = torch.tensor([y for _, y in ds.samples])
        self.classes = ds.classes

    def __len__(self):
        return len(self.images)


def channel_stats(folder):
    x = torch.stack([T.functional.to_tensor(im) for im in folder.images])
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())


def batches(n, size, gen, drop_last, shuffle=True):
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for s in range(0, n, size):
        idx = order[s:s + size]
        if drop_last and len(idx) < size:
            break
        yield idx


@torch.no_grad()
def embed(model, folder, tf, bs=256):
    """Inference-mode features (running statistics) of every image of `folder`."""
    was = model.training
    model.eval()
    out = [model(torch.stack([tf(im) for im in folder.images[s:s + bs]])) for s in range(0, len(folder), bs)]
    model.train(was)
    return torch.cat(out)


@torch.no_grad()
def embed_own_stats(model, folder, tf, bs=256):
    """The issue's probe: BatchNorm running statistics re-estimated on `folder` itself (a training-
    mode pass over its shuffled images, cumulative average), then inference-mode features; the
    model's own running statistics are restored afterwards."""
    saved = [(b.running_mean.clone(), b.running_var.clone(), b.num_batches_tracked.clone(), b.momentum)
             for b in model.bns]
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(1))
    model.train()
    for b in model.bns:
        b.reset_running_stats()
        b.momentum = None
    for s in range(0, len(folder), bs):
        model(torch.stack([tf(folder.images[j]) for j in order[s:s + bs]]))
    f = embed(model, folder, tf, bs)
    for b, (m, v, n, mom) in zip(model.bns, saved):
        b.running_mean.copy_(m), b.running_var.copy_(v), b.num_batches_tracked.copy_(n)
        b.momentum = mom
    return f


def knn(train_f, train_y, test_f, test_y, k, sigma, classes):
    sims = test_f @ train_f.t()
    top, idx = sims.topk(k, dim=1)
    w = (top / sigma).exp()
    votes = torch.zeros(test_f.shape[0], classes).scatter_add_(1, train_y[idx], w)
    return 100.0 * (votes.argmax(1) == test_y).float().mean().item()


def main():
    a = parse()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    train, test = Folder(f"{a.data}/train"), Folder(f"{a.data}/test")
    if a.test_limit:
        test.images, test.labels = test.images[: a.test_limit], test.labels[: a.test_limit]
    side = train.images[0].size[0]
    if a.norm == "cifar":
        mean, std = CIFAR_MEAN, CIFAR_STD
    elif a.norm == "dataset":
        mean, std = channel_stats(train)
        std = tuple(max(s, 1e-3) for s in std)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    norm = [T.ToTensor(), T.Normalize(mean, std)]
    augment = T.Compose([
        T.RandomResizedCrop(side, scale=(0.2, 1.0)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.4, 0.4, 0.4, 0.0),
        T.RandomGrayscale(0.2),
        *norm,
    ])
    clean = T.Compose(norm)

    model = SmallCnn(a.dim, a.conv_bias, a.bn_momentum)
    init_model(model, a.init, a.init_scale)
    init_convs = [c.weight.detach().clone() for c in model.convs]
    bn_params = [p for b in model.bns for p in b.parameters()]
    bias_params = [model.head.bias] + [c.bias for c in model.convs if c.bias is not None]
    special = {id(p) for p in bn_params + bias_params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in special], "weight_decay": a.wd},
              {"params": bn_params, "weight_decay": a.wd if a.bn_wd else 0.0},
              {"params": bias_params, "weight_decay": a.wd if a.bias_wd else 0.0}]
    opt = torch.optim.SGD(groups, lr=a.lr, momentum=a.momentum, dampening=0.0)

    n = len(train)
    bank = F.normalize(torch.randn(n, a.dim, generator=gen), dim=1)
    steps_per_epoch = (n // a.batch) if a.drop_last else math.ceil(n / a.batch)
    out = open(a.out, "w") if a.out else sys.stdout

    def weight_stats():
        # std and norm of each conv weight; angle (degrees) it has turned from its initial value:
        # under BatchNorm only the direction matters, so the angle is how much the layer has learned
        return {f"conv{i + 1}": {"std": round(c.weight.std().item(), 4), "norm": round(c.weight.norm().item(), 3),
                                 "angle": round(math.degrees(math.acos(min(1.0, F.cosine_similarity(
                                     c.weight.detach().flatten(), w0.flatten(), dim=0).item()))), 2)}
                for i, (c, w0) in enumerate(zip(model.convs, init_convs))}

    def emit(rec):
        rec["tag"] = a.tag
        print(json.dumps(rec), file=out, flush=True)
        if out is not sys.stdout:
            print(json.dumps(rec), flush=True)

    emit({"event": "config", **vars(a), "side": side, "train": n, "test": len(test), "init_weights": weight_stats()})
    step, history, mate, rounds = 0, [], None, 0
    for epoch in range(a.epochs):
        model.train()
        t0, loss_sum = time.time(), 0.0
        for i, idx in enumerate(batches(n, a.batch, gen, a.drop_last)):
            lr = 0.5 * a.lr * (1 + math.cos(math.pi * (epoch + i / steps_per_epoch) / a.epochs))
            for g in opt.param_groups:
                g["lr"] = lr
            x = torch.stack([augment(train.images[j]) for j in idx for _ in range(a.views)])
            f = model(x)  # [B*K, D], sample-major
            loss = bank_loss(f, bank, idx, a.views, a.tau, a.consistency, mate)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bank_update(bank, idx, f, a.views, a.bank_m)
            loss_sum += loss.item()
            step += 1
        train_s = time.time() - t0
        # evaluation: test features in inference mode (running statistics) against the bank
        test_eval = embed(model, test, clean)
        test_batch = test_eval if a.no_probe else embed_own_stats(model, test, clean)
        merge = None
        if 0 <= a.merge_start <= epoch and (epoch - a.merge_start) % a.merge_every == 0:
            fraction = min(a.merge_fraction_start + rounds * a.merge_fraction_step, a.merge_fraction_cap)
            mate, merge = merge_round(bank, fraction, train.labels, a.merge_min_similarity)
            merge["round"] = rounds
            rounds += 1
        rec = {
            "event": "epoch", "epoch": epoch + 1, "loss": round(loss_sum / steps_per_epoch, 4), "lr": lr,
            "train_s": round(train_s, 1),
            "knn_bank": knn(bank, train.labels, test_eval, test.labels, a.k, a.tau, len(train.classes)),
            # probe of the issue: the same, with BN statistics re-estimated on the clean test images
            "knn_bank_teststats": knn(bank, train.labels, test_batch, test.labels, a.k, a.tau, len(train.classes)),
            # how far apart the features of the same clean images are under the two sets of statistics
            "cos_eval_vs_teststats": round((test_eval * test_batch).sum(1).mean().item(), 4),
            "merge": merge,
        }
        history.append(rec)
        emit(rec)
    train_eval = embed(model, train, clean)
    test_eval = embed(model, test, clean)
    train_batch = embed_own_stats(model, train, clean)
    # augmented views of the train images in inference mode vs the bank rows
    aug_eval = embed(model, train, augment)
    summary = {
        "event": "summary",
        "final_loss": history[-1]["loss"],
        "knn_bank": [r["knn_bank"] for r in history],
        "knn_bank_teststats": [r["knn_bank_teststats"] for r in history],
        "knn_recomputed": knn(train_eval, train.labels, test_eval, test.labels, a.k, a.tau, len(train.classes)),
        "cos_bank_vs_clean_eval": round((bank * train_eval).sum(1).mean().item(), 4),
        "cos_bank_vs_clean_ownstats": round((bank * train_batch).sum(1).mean().item(), 4),
        "cos_bank_vs_aug_eval": round((bank * aug_eval).sum(1).mean().item(), 4),
        "final_weights": weight_stats(),
        "bn1_running_mean_ch0": round(model.bns[0].running_mean[0].item(), 4),
        "gamma_mean": [round(b.weight.mean().item(), 4) for b in model.bns],
    }
    emit(summary)


if __name__ == "__main__":
    main()
