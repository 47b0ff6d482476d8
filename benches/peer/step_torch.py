#!/usr/bin/env python3
"""PyTorch peer of membank's training step (`benches/examples/step_views.rs`): views per second.

The same step as membank's `bank_train::step::train_step` with its default method settings:
  - model: the small CNN of npid.py (conv3x3 32/64/128, BN, ReLU, two max-pools, global average
    pool; PyTorch's default conv init, as membank's) or torchvision's ResNet-18 with membank's CIFAR
    stem (conv 3x3 stride 1 padding 1 without bias, BN, ReLU, no max-pool); linear to 128, L2 norm;
  - logits = f . bank^T / tau, tau 0.1; full-softmax cross-entropy of every one of the B*K views to
    its sample's bank row, mean over the B*K rows (membank's multi-view loss; consistency 0);
  - SGD lr 0.03, momentum 0.9, dampening 0, weight decay 5e-4 on every parameter;
  - bank update m = 0.5 (weight of the old row) from the mean of each sample's K detached views,
    renormalised, once per sample;
  - one host read per step: the loss (`loss.item()`), as membank reads its loss.

Input: pre-generated synthetic batches (4, cycled): images N(0, 1) [B*K, 3, 32, 32] in membank's
view layout (row s*K + k is view k of sample s), B distinct random bank indices each, already on
the device. No augmentation on the step thread. Warm-up steps are excluded from the timing.
`--device cuda` runs on the GPU with PyTorch's defaults (cuDNN's convolutions, which may use TF32;
no `cudnn.benchmark`); `loss.item()` waits for the device, as membank's loss read does. Prints one
JSON line.

    python step_torch.py --arch resnet18 --views 2 --batch 128 --bank 5000 --steps 20 [--device cuda]
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from npid import SmallCnn  # noqa: E402  (the same small CNN as membank's)


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["small_cnn", "resnet18"], default="small_cnn")
    p.add_argument("--views", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--bank", type=int, default=5000)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    a = p.parse_args()
    for name in ("views", "batch", "bank", "steps", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1, not {getattr(a, name)}")
    if a.batch > a.bank:
        p.error(f"--batch {a.batch} exceeds --bank {a.bank}: a batch holds distinct samples")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {a.device}: this torch sees no CUDA device")
    return a


class Embedding(nn.Module):
    """A backbone, a linear projection to `dim`, L2 normalisation."""

    def __init__(self, backbone, features, dim):
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(features, dim)

    def forward(self, x):
        return F.normalize(self.head(self.backbone(x)), dim=1)


def resnet18_cifar(dim):
    """torchvision's ResNet-18 with membank's CIFAR stem (crates/bank-train/src/model/resnet.rs)."""
    import torchvision

    net = torchvision.models.resnet18()
    net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return Embedding(net, 512, dim)


def model_of(arch, dim):
    if arch == "resnet18":
        return resnet18_cifar(dim)
    return SmallCnn(dim, conv_bias=False, bn_momentum=0.1)


def batches(a, gen, count=4):
    """`count` synthetic batches on `a.device`: (images [B*K, 3, 32, 32], indices [B])."""
    out = []
    for _ in range(count):
        idx = torch.randperm(a.bank, generator=gen)[: a.batch]
        x = torch.randn(a.batch * a.views, 3, 32, 32, generator=gen)
        out.append((x.to(a.device), idx.to(a.device)))
    return out


def step(model, opt, bank, x, idx, a, tau=0.1, m=0.5):
    f = model(x)  # [B*K, D], sample-major
    loss = F.cross_entropy(f @ bank.t() / tau, idx.repeat_interleave(a.views))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        mean_f = f.detach().view(len(idx), a.views, -1).mean(dim=1)
        bank[idx] = F.normalize(m * bank[idx] + (1 - m) * mean_f, dim=1)
    return loss.item()


def main():
    a = parse()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    model = model_of(a.arch, 128).to(a.device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, dampening=0.0, weight_decay=5e-4)
    bank = F.normalize(torch.randn(a.bank, 128, generator=gen), dim=1).to(a.device)
    data = batches(a, gen)
    first_loss = None
    for i in range(a.warmup):
        loss = step(model, opt, bank, *data[i % len(data)], a)
        first_loss = loss if first_loss is None else first_loss
    start = time.perf_counter()
    for i in range(a.steps):
        loss = step(model, opt, bank, *data[(a.warmup + i) % len(data)], a)
        first_loss = loss if first_loss is None else first_loss
    seconds = time.perf_counter() - start
    views = a.steps * a.batch * a.views
    print(json.dumps({
        "tool": "pytorch", "torch": torch.__version__, "device": a.device, "threads": a.threads,
        "arch": a.arch,
        "views": a.views, "batch": a.batch, "bank": a.bank, "steps": a.steps, "warmup": a.warmup,
        "ln_bank": math.log(a.bank), "first_loss": first_loss, "last_loss": loss,
        "seconds": seconds, "views_per_s": views / seconds,
    }))


if __name__ == "__main__":
    main()
