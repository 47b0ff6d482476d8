#!/usr/bin/env python3
"""Parity of membank and its PyTorch peer: the same recipe on the same image folder, side by side.

Reads the resolved `config.toml` of a finished membank run (the recipe: epochs, batch, K, lambda,
lr, momentum, weight decay, tau, bank momentum, dim, k, seed, mean/std), runs npid.py with the
same values on the same folder (skipped when its output already exists), then writes a table of
the training loss and the kNN top-1 against the bank per epoch, and kNN against recomputed
features at the end, with the difference and whether it is within --tolerance points at every
epoch. `cargo xtask parity` calls this after training membank.

    python parity.py --run runs/parity/cifarsub-membank --data /tmp/cifarsub --out runs/parity/cifarsub
"""
import argparse
import json
import os
import subprocess
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="membank run folder (config.toml, metrics.jsonl, summary.json)")
    p.add_argument("--data", required=True, help="image folder with train/ and test/ (the peer reads it)")
    p.add_argument("--out", required=True, help="prefix: writes OUT-peer.jsonl and OUT-parity.md")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tolerance", type=float, default=2.0, help="points of kNN top-1 allowed per epoch")
    return p.parse_args()


def peer_args(cfg):
    """npid.py's arguments for membank's resolved config; refuses what the peer does not do."""
    data, optim, train, method = cfg["data"], cfg["optim"], cfg["train"], cfg["method"]
    unsupported = []
    if cfg["model"]["arch"] != "small_cnn":
        unsupported.append(f"model.arch = {cfg['model']['arch']!r} (the peer has the small CNN only)")
    if method["loss"] != "softmax":
        unsupported.append(f"method.loss = {method['loss']!r} (the peer has the full softmax only)")
    if cfg["merge"]["enabled"]:
        unsupported.append("merge.enabled = true (the peer does not merge)")
    if optim["schedule"] != "cosine" or optim.get("warmup_epochs", 0) != 0 or optim["nesterov"]:
        unsupported.append("optim: the peer runs cosine lr per step, no warm-up, no Nesterov")
    if data.get("channels", 3) != 3:
        unsupported.append("data.channels = 1 (the peer loads images as RGB)")
    if unsupported:
        sys.exit("parity: the membank run's recipe has what the peer cannot match:\n  " + "\n  ".join(unsupported))
    cifar_mean, cifar_std = [0.4914, 0.4822, 0.4465], [0.247, 0.2435, 0.2616]
    if [round(x, 4) for x in data["mean"]] != cifar_mean or [round(x, 4) for x in data["std"]] != cifar_std:
        sys.exit(f"parity: data.mean/std are {data['mean']}/{data['std']}; the peer normalises with CIFAR-10's "
                 f"{cifar_mean}/{cifar_std}: set those in membank's run")
    return [
        "--epochs", str(train["epochs"]), "--batch", str(train["batch_size"]), "--views", str(train["views"]),
        "--consistency", str(method["consistency"]), "--lr", str(optim["lr"]),
        "--momentum", str(optim["momentum"]), "--wd", str(optim["weight_decay"]),
        "--tau", str(method["temperature"]), "--bank-m", str(method["bank_momentum"]),
        "--dim", str(cfg["model"]["dim"]), "--k", str(cfg["eval"]["k"]), "--seed", str(cfg["seed"]),
        "--test-limit", str(data.get("test_limit", 0)),
    ]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    a = parse()
    with open(os.path.join(a.run, "config.toml"), "rb") as f:
        cfg = tomllib.load(f)
    peer_out = a.out + "-peer.jsonl"
    if not os.path.exists(peer_out):
        cmd = [sys.executable, os.path.join(HERE, "npid.py"), "--data", a.data, "--threads", str(a.threads),
               "--out", peer_out + ".part"] + peer_args(cfg)
        print("parity: " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        os.replace(peer_out + ".part", peer_out)
    peer = read_jsonl(peer_out)
    peer_epochs = [r for r in peer if r.get("event") == "epoch"]
    peer_summary = next(r for r in peer if r.get("event") == "summary")
    ours = read_jsonl(os.path.join(a.run, "metrics.jsonl"))
    with open(os.path.join(a.run, "summary.json")) as f:
        summary = json.load(f)

    rows, worst = [], 0.0
    for m, p in zip(ours, peer_epochs):
        knn = 100.0 * m["knn_bank"]["top1"] if m.get("knn_bank") else float("nan")
        diff = knn - p["knn_bank"]
        worst = max(worst, abs(diff))
        rows.append(f"| {m['epoch']} | {m['loss']:.3f} | {p['loss']:.3f} | {knn:.2f} | {p['knn_bank']:.2f} | {diff:+.2f} |")
    rec = summary.get("knn_recomputed") or {}
    ours_rec = 100.0 * rec["top1"] if "top1" in rec else float("nan")
    ok = worst <= a.tolerance and len(rows) == len(peer_epochs) == len(ours)
    lines = [
        f"# Parity: membank vs the PyTorch peer on `{a.data}`",
        "",
        f"membank run `{a.run}`; peer output `{peer_out}`; same recipe (the run's config.toml).",
        "",
        "| epoch | loss membank | loss peer | kNN bank membank (%) | kNN bank peer (%) | difference |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"kNN against recomputed train features at the end: membank {ours_rec:.2f}%, "
        f"peer {peer_summary['knn_recomputed']:.2f}% ({ours_rec - peer_summary['knn_recomputed']:+.2f}).",
        "",
        f"Largest per-epoch kNN (bank) difference: {worst:.2f} points; tolerance {a.tolerance}: "
        + ("**within**." if ok else "**not within**."),
    ]
    text = "\n".join(lines) + "\n"
    with open(a.out + "-parity.md", "w") as f:
        f.write(text)
    print(text)
    sys.exit(0 if ok else 3)


if __name__ == "__main__":
    main()
