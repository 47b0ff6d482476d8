"""torchvision's ImageFolder + DataLoader on a folder of JPEGs: training views per second.

    python loader_torchvision.py ROOT --size 224 --batch-size 64 --workers 2 --batches 30

The NPID augmentation (RandomResizedCrop(size, scale=(0.2, 1)), horizontal flip, ColorJitter
0.4/0.4/0.4, RandomGrayscale 0.2, ToTensor, Normalize), decoding included, as membank's streaming
loader does. One warm-up batch (worker start) is excluded. Prints one JSON line.
"""
import argparse
import json
import time

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=30)
    a = p.parse_args()
    torch.set_num_threads(1)
    tf = transforms.Compose([
        transforms.RandomResizedCrop(a.size, scale=(0.2, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(0.4, 0.4, 0.4),
        transforms.RandomGrayscale(p=0.2),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    ds = datasets.ImageFolder(a.root, transform=tf)
    loader = DataLoader(ds, batch_size=a.batch_size, shuffle=True, num_workers=a.workers,
                        drop_last=True, persistent_workers=a.workers > 0)
    it = iter(loader)
    next(it)  # warm-up: worker start
    views, start = 0, time.perf_counter()
    for _ in range(a.batches):
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            x, _ = next(it)
        views += x.shape[0]
    seconds = time.perf_counter() - start
    print(json.dumps({"tool": "torchvision", "workers": a.workers, "views": views,
                      "seconds": seconds, "views_per_s": views / seconds}))


if __name__ == "__main__":
    main()
