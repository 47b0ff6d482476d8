#!/usr/bin/env python3
"""Parity of membank and its PyTorch peer: the same recipe on the same image folder, side by side.

Reads the resolved `config.toml` of a finished membank run (the recipe: epochs, batch, K, lambda,
lr, momentum, weight decay, tau, bank momentum, dim, k, seed, mean/std), runs npid.py with the
same values on the same folder (skipped when its output already exists), then writes a table of
the training loss and the kNN top-1 against the bank per epoch, and kNN against recomputed
features at the end, with the difference and whether it is within --tolerance points at every
epoch. `cargo xtask parity` calls this after training membank.

With several --run folders (the same recipe with different seeds: `cargo xtask parity --seeds N`),
the peer runs once per seed (each with that run's seed), each seed gets its table, and the verdict
is on the mean over seeds per epoch: one seed's kNN at 2,000 test images swings by about 2 points,
which is the tolerance itself.

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
    p.add_argument("--run", required=True, action="append",
                   help="membank run folder (config.toml, metrics.jsonl, summary.json); repeat it for seeds")
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
    merge = cfg["merge"]["schedule"] if cfg["merge"]["enabled"] else None
    if merge and merge["groups"] != "recompute":
        unsupported.append("merge.schedule.groups = \"accumulate\" (the peer forms the groups afresh each round)")
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
    ] + ([] if merge is None else [
        "--merge-start", str(merge["start_epoch"]), "--merge-every", str(merge["every_epochs"]),
        "--merge-fraction-start", str(merge["fraction_start"]), "--merge-fraction-step", str(merge["fraction_step"]),
        "--merge-fraction-cap", str(merge["fraction_cap"]), "--merge-min-similarity", str(merge["min_similarity"]),
    ])


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def compare(run, data, peer_out, threads):
    """Trains the peer for one membank run (unless done) and returns both sides per epoch:
    [(epoch, loss ours, loss peer, knn ours, knn peer)], (recomputed ours, recomputed peer), seed."""
    with open(os.path.join(run, "config.toml"), "rb") as f:
        cfg = tomllib.load(f)
    if not os.path.exists(peer_out):
        cmd = [sys.executable, os.path.join(HERE, "npid.py"), "--data", data, "--threads", str(threads),
               "--out", peer_out + ".part"] + peer_args(cfg)
        print("parity: " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        os.replace(peer_out + ".part", peer_out)
    peer = read_jsonl(peer_out)
    peer_epochs = [r for r in peer if r.get("event") == "epoch"]
    peer_summary = next(r for r in peer if r.get("event") == "summary")
    ours = read_jsonl(os.path.join(run, "metrics.jsonl"))
    if len(ours) != len(peer_epochs):
        sys.exit(f"parity: {run} has {len(ours)} epochs, the peer {len(peer_epochs)}")
    with open(os.path.join(run, "summary.json")) as f:
        rec = json.load(f).get("knn_recomputed") or {}
    epochs = [(m["epoch"], m["loss"], p["loss"],
               100.0 * m["knn_bank"]["top1"] if m.get("knn_bank") else float("nan"), p["knn_bank"])
              for m, p in zip(ours, peer_epochs)]
    recomputed = (100.0 * rec["top1"] if "top1" in rec else float("nan"), peer_summary["knn_recomputed"])
    return epochs, recomputed, cfg["seed"]


def table(epochs, recomputed):
    """Markdown lines of one comparison (or of a mean) and its largest kNN difference."""
    lines = ["| epoch | loss membank | loss peer | kNN bank membank (%) | kNN bank peer (%) | difference |",
             "|---|---|---|---|---|---|"]
    worst = 0.0
    for epoch, lo, lp, ko, kp in epochs:
        worst = max(worst, abs(ko - kp))
        lines.append(f"| {epoch} | {lo:.3f} | {lp:.3f} | {ko:.2f} | {kp:.2f} | {ko - kp:+.2f} |")
    ro, rp = recomputed
    lines += ["", f"kNN against recomputed train features at the end: membank {ro:.2f}%, "
                  f"peer {rp:.2f}% ({ro - rp:+.2f})."]
    return lines, worst


def mean_of(results):
    """Per-epoch means over seeds of every column, and of the recomputed kNN."""
    n = len(results)
    epochs = [tuple([rows[0][0]] + [sum(r[i] for r in rows) / n for i in range(1, 5)])
              for rows in zip(*(e for e, _, _ in results))]
    recomputed = tuple(sum(r[1][i] for r in results) / n for i in range(2))
    return epochs, recomputed


def main():
    a = parse()
    several = len(a.run) > 1
    results = []
    for run in a.run:
        with open(os.path.join(run, "config.toml"), "rb") as f:
            seed = tomllib.load(f)["seed"]
        peer_out = a.out + (f"-seed{seed}" if several else "") + "-peer.jsonl"
        results.append(compare(run, a.data, peer_out, a.threads))
    lines = [f"# Parity: membank vs the PyTorch peer on `{a.data}`", "",
             f"membank runs {', '.join(f'`{r}`' for r in a.run)}; the peer with the same recipe (each run's config.toml).", ""]
    for run, (epochs, recomputed, seed) in zip(a.run, results):
        t, worst = table(epochs, recomputed)
        if several:
            lines += [f"## Seed {seed}", ""] + t + ["", f"Largest per-epoch kNN (bank) difference: {worst:.2f} points.", ""]
        else:
            lines += t + [""]
    if several:
        epochs, recomputed = mean_of(results)
        t, worst = table(epochs, recomputed)
        lines += [f"## Mean over the {len(results)} seeds", ""] + t + [""]
    ok = worst <= a.tolerance
    lines.append(f"Largest per-epoch kNN (bank) difference{' of the means' if several else ''}: {worst:.2f} points; "
                 f"tolerance {a.tolerance}: " + ("**within**." if ok else "**not within**."))
    text = "\n".join(lines) + "\n"
    with open(a.out + "-parity.md", "w") as f:
        f.write(text)
    print(text)
    sys.exit(0 if ok else 3)


if __name__ == "__main__":
    main()
