#!/usr/bin/env python3
"""Deterministic step parity: replays membank's training steps in PyTorch and compares every tensor.

membank's `benches/examples/step_parity.rs` (run by `cargo xtask parity --step`) writes its initial
weights, bank, batches (the augmented, normalised views and their bank rows), learning rates,
and after every step the loss, every parameter, every BatchNorm running statistic and the bank;
at the end the embeddings of clean test images in inference and training mode. This script loads
them into npid.py's model and replays every step with torch.optim.SGD (momentum, dampening 0,
coupled weight decay on every parameter) and npid.py's loss and bank update, in float64 (the
reference) and in float32, each step from membank's state before it, and compares per step and
tensor what the step changed, d = x_s - x_{s-1}:
  typical  median |d - d_ref| / median |d_ref|   (a difference in method moves every element:
           missing weight decay, a momentum or running-statistics convention, the lr, the bank m)
  worst    max |d - d_ref| / max |d_ref|
  value    max |x - x_ref| / max |x_ref|
and the loss, the learning rate (against npid.py's cosine formula), the test embeddings, and the
initial weights against PyTorch's default initialisation of each layer.

Tolerance, float32 noise measured rather than assumed: the same errors of PyTorch float32 from
the same state, and of NOISE_RUNS more float32 runs whose state and images are moved by one ulp at
random (other roundings of the same computation); the checked side passes when its typical error
is within RATIO x the largest of those (typical or worst) + FLOOR_TYPICAL, its worst and value
errors within WORST, and its loss and embedding errors within RATIO x theirs + FLOOR. A few
elements always sit within float32 rounding of a ReLU or max-pool decision and route one gradient
differently in any float32 implementation: a large worst error in one channel with a typical one
at noise level, marked 'event'. `--plant` replaces membank by float32 PyTorch with one known
difference: the check's self-test. Exit status 0 when everything is within, 3 when not.

    python step_parity.py DIR [--threads 2] [--plant no-bn-wd|lr-1.001|...]
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in the source tree from importing npid.py
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from npid import SmallCnn, bank_loss, bank_update  # noqa: E402

RATIO, FLOOR, FLOOR_TYPICAL, WORST, NOISE_RUNS = 10.0, 1e-6, 1e-5, 5e-2, 2


def typical(x, ref):
    """median |x - ref| / median |ref|: the error of a typical element."""
    scale = ref.abs().median().item()
    return (x - ref).abs().median().item() / max(scale, 1e-30)


def load(d, name):
    return torch.from_numpy(np.load(os.path.join(d, name + ".npy")))


def mapping(model):
    """membank's tensor name -> (torch tensor, converter from membank's layout)."""
    m, same, t = {}, (lambda x: x), (lambda x: x.t().contiguous())
    for i, (c, b) in enumerate(zip(model.convs, model.bns)):
        p = f"backbone.block{i + 1}"
        m[f"{p}.conv.weight"] = (c.weight, same)
        m[f"{p}.bn.gamma"] = (b.weight, same)
        m[f"{p}.bn.beta"] = (b.bias, same)
        m[f"{p}.bn.running_mean"] = (b.running_mean, same)
        m[f"{p}.bn.running_var"] = (b.running_var, same)
    m["head.weight"] = (model.head.weight, t)  # burn [in, out], torch [out, in]
    m["head.bias"] = (model.head.bias, same)
    return m


def rel(a, b):
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / max(scale, 1e-30), scale


def cosine_lr(meta, s):
    """npid.py's schedule: cosine per step over the run from the base lr (no warm-up)."""
    progress = (s - 1) / meta["batches_per_epoch"]
    return 0.5 * meta["lr"] * (1 + math.cos(math.pi * progress / meta["epochs"]))


def init_stats(d, meta):
    """membank's initial weights against PyTorch's default initialisation: nn.Conv2d and
    nn.Linear draw U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight (kaiming_uniform_(a=sqrt(5)))
    and the bias; BatchNorm starts at gamma 1, beta 0, running mean 0, running variance 1.
    The std of n uniform draws has a relative standard error of about 0.45/sqrt(n): flagged
    beyond 6 of them, or when a value exceeds the bound."""
    rows, bad = [], False
    for name in meta["names"]:
        w = load(d, "init/" + name).double()
        if name.endswith(".weight"):
            fan_in = w.shape[0] if name == "head.weight" else w[0].numel()
        elif name == "head.bias":
            fan_in = load(d, "init/head.weight").shape[0]
        else:
            want = {"gamma": 1.0, "beta": 0.0, "running_mean": 0.0, "running_var": 1.0}[name.rsplit(".", 1)[1]]
            ok = bool((w == want).all())
            bad |= not ok
            rows.append((name, f"all {want}", f"{w.min().item():.4g}..{w.max().item():.4g}", "ok" if ok else "DIFF"))
            continue
        bound = 1 / math.sqrt(fan_in)
        want_std, n = bound / math.sqrt(3), w.numel()
        got_std = w.std().item()
        se = 0.45 / math.sqrt(n)
        ok = abs(got_std / want_std - 1) < 6 * se and w.abs().max().item() <= bound * (1 + 1e-6)
        bad |= not ok
        rows.append((name, f"U(+-{bound:.4f}) std {want_std:.4f}",
                     f"std {got_std:.4f} max {w.abs().max().item():.4f} (ratio {got_std / want_std:.3f})",
                     "ok" if ok else "DIFF"))
    print("\n## initial weights vs PyTorch's default initialisation\n")
    print(f"| {'tensor':<34} | {'PyTorch default':<28} | {'membank':<44} | |")
    print(f"|{'-' * 36}|{'-' * 30}|{'-' * 46}|---|")
    for r in rows:
        print(f"| {r[0]:<34} | {r[1]:<28} | {r[2]:<44} | {r[3]} |")
    return bad


PLANTS = ("none", "no-bn-wd", "lr-1.001", "bn-momentum-0.11", "bank-m-0.51", "biased-running-var")


def replay(d, meta, dtype, plant="none", force=None, perturb=None):
    """The same steps in PyTorch at `dtype`: per step the loss and every tensor (membank's
    names and layouts, as float64), then the test embeddings in inference and training mode.
    `plant` puts one known difference into the replay (the check's self-test). With `force`
    (the checked side's states, one per step), every step starts from the checked side's state
    before it (parameters, running statistics, bank; the momentum buffers stay the replay's own),
    so that each step is compared alone: a float32 boundary event (module docstring) in one step does not
    spread into the next ones. With `perturb` (a seed), the forced state and the images are moved
    by one float32 ulp, up or down at random, element by element, before every step: another
    float32 rounding of the same computation, to measure float32 noise including such events."""
    gen = torch.Generator().manual_seed(perturb) if perturb is not None else None

    def ulp(t):
        if gen is None:
            return t
        t = t.float()
        up = torch.rand(t.shape, generator=gen) < 0.5
        return torch.nextafter(t, torch.where(up, torch.tensor(math.inf), torch.tensor(-math.inf))).double()

    model = SmallCnn(load(d, "init/head.weight").shape[1], conv_bias=False,
                     bn_momentum=0.11 if plant == "bn-momentum-0.11" else 0.1, channels=meta["channels"])
    names = mapping(model)
    if set(names) != set(meta["names"]):
        sys.exit(f"tensor names differ: membank {sorted(meta['names'])}, peer {sorted(names)}")
    with torch.no_grad():
        for name, (tensor, conv) in names.items():
            tensor.copy_(conv(load(d, "init/" + name)))
    model = model.to(dtype)
    names = mapping(model)
    bank = load(d, "init/bank").to(dtype)
    bn = [p for b in model.bns for p in (b.weight, b.bias)]
    rest = [p for p in model.parameters() if all(p is not q for q in bn)]
    wd = meta["weight_decay"]
    opt = torch.optim.SGD([{"params": rest}, {"params": bn, "weight_decay": 0.0 if plant == "no-bn-wd" else wd}],
                          lr=meta["lr"], momentum=meta["momentum"], dampening=meta["dampening"],
                          nesterov=meta["nesterov"], weight_decay=wd)
    model.train()
    snap = lambda: {n: conv(t.detach()).double().clone() for n, (t, conv) in names.items()} | {"bank": bank.double().clone()}
    states, losses = [snap()], []
    m = meta["bank_momentum"] + (0.01 if plant == "bank-m-0.51" else 0.0)
    for s in range(1, meta["steps"] + 1):
        if force is not None:
            with torch.no_grad():
                for name, (tensor, conv) in names.items():
                    tensor.copy_(conv(ulp(force[s - 1][name])))
                bank.copy_(force[s - 1]["bank"])
        x, idx = ulp(load(d, f"batch{s}/images")).to(dtype), load(d, f"batch{s}/indices")
        samples = idx.view(-1, meta["views"])[:, 0]
        if not (idx.view(-1, meta["views"]) == samples[:, None]).all():
            sys.exit(f"batch{s}: indices are not sample-major with {meta['views']} views")
        for g in opt.param_groups:
            g["lr"] = meta["lrs"][s - 1] * (1.001 if plant == "lr-1.001" else 1.0)
        f = model(x)
        loss = bank_loss(f, bank, samples, meta["views"], meta["tau"], meta["consistency"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bank_update(bank, samples, f, meta["views"], m)
        if plant == "biased-running-var":
            with torch.no_grad():  # running var from the biased batch variance: remove 0.1 var/n
                h = x
                for i, (c, b) in enumerate(zip(model.convs, model.bns)):
                    h = c(h)
                    n = h.numel() / h.shape[1]
                    b.running_var -= b.momentum * h.var(dim=(0, 2, 3)) / n
                    h = F.relu(F.batch_norm(h, None, None, b.weight, b.bias, True))  # batch statistics
                    if i < 2:
                        h = F.max_pool2d(h, 2)
        losses.append(loss.item())
        states.append(snap())
    images = load(d, "test/images").to(dtype)
    with torch.no_grad():
        model.eval()
        e_eval = model(images).double()
        model.train()
        e_train = model(images).double()
    return states, losses, e_eval, e_train


def embed_from(d, meta, state, dtype):
    """Embeddings of the clean test images by the network in `state` (membank's names and
    layouts) at `dtype`: inference mode (running statistics), then training mode (the images as
    one batch)."""
    model = SmallCnn(state["head.weight"].shape[1], conv_bias=False, bn_momentum=0.1, channels=meta["channels"])
    with torch.no_grad():
        for name, (tensor, conv) in mapping(model).items():
            tensor.copy_(conv(state[name]))
        model = model.to(dtype)
        images = load(d, "test/images").to(dtype)
        e_eval = model.eval()(images).double()
        e_train = model.train()(images).double()
    return e_eval, e_train


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--plant", choices=PLANTS, default="none",
                   help="put one known difference into the float32 PyTorch side instead of comparing membank")
    p.add_argument("--ratio", type=float, default=RATIO)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    d = a.dir
    meta = json.load(open(os.path.join(d, "meta.json")))
    if meta["views"] < 1 or meta["consistency"] < 0:
        sys.exit(f"bad meta.json: {meta}")
    subject = "membank" if a.plant == "none" else f"torch f32 with planted {a.plant}"
    print(f"# step parity: {subject} ({meta['backend']}) vs PyTorch {torch.__version__}, {meta['steps']} steps, "
          f"{meta['config']} {' '.join(meta['overrides'])}")
    bad = init_stats(d, meta)
    names = meta["names"] + ["bank"]
    if a.plant == "none":
        ours = [{n: load(d, "init/" + n).double() for n in names}]
        ours += [{n: load(d, f"step{s}/{n}").double() for n in names} for s in range(1, meta["steps"] + 1)]
        ours_loss = meta["losses"]
        ours_eval, ours_train = load(d, "test/eval_embedding").double(), load(d, "test/train_embedding").double()
    else:
        ours, ours_loss, _, _ = replay(d, meta, torch.float32, a.plant)
        ours_eval, ours_train = embed_from(d, meta, ours[-1], torch.float32)
    ref, ref_loss, _, _ = replay(d, meta, torch.float64, force=ours)
    # float32 noise: PyTorch float32 from the same state, and NOISE_RUNS more with the state and
    # the images moved by one ulp; the errors below take the largest of these runs
    noise = [replay(d, meta, torch.float32, force=ours, perturb=k if k else None) for k in range(NOISE_RUNS + 1)]
    t32, t32_loss = noise[0][0], noise[0][1]
    free_loss = replay(d, meta, torch.float64)[1]
    ref_eval, ref_train = embed_from(d, meta, ours[-1], torch.float64)
    t32_eval, t32_train = embed_from(d, meta, ours[-1], torch.float32)

    def verdict(err, noise):
        return err <= a.ratio * noise + FLOOR

    print("\n## learning rate and loss per step (reference: PyTorch float64)\n")
    print("Each step from the checked side's state before it; 'free f64': PyTorch float64 running all steps")
    print("from the initial state alone (information: how far the two trajectories have drifted).\n")
    print("| step | lr | lr cosine (npid.py) | loss f64 | loss err, checked | loss err, torch f32 | free f64 | |")
    print("|---|---|---|---|---|---|---|---|")
    for s in range(1, meta["steps"] + 1):
        lr = meta["lrs"][s - 1]
        want_lr = cosine_lr(meta, s) if meta["schedule"] == "Cosine" and meta["warmup_epochs"] == 0 else lr
        e, n = abs(ours_loss[s - 1] - ref_loss[s - 1]) / abs(ref_loss[s - 1]), max(abs(run[1][s - 1] - ref_loss[s - 1]) for run in noise) / abs(ref_loss[s - 1])
        ok = verdict(e, n) and abs(lr - want_lr) <= 1e-9 * max(lr, 1e-12)
        bad |= not ok
        print(f"| {s} | {lr:.8f} | {want_lr:.8f} | {ref_loss[s - 1]:.6f} | {e:.2e} | {n:.2e} | {free_loss[s - 1]:.6f} | {'ok' if ok else 'DIFF'} |")

    print("\n## every tensor after every step: errors against PyTorch float64 (each step from the checked state)\n")
    print("d = what the step changed (x_s - x_{s-1}, x_{s-1} the checked side's); typical: median|d - d_ref| / median|d_ref|;")
    print("worst: max|d - d_ref| / max|d_ref|; value: max|x - x_ref| / max|x_ref|. ok when the checked")
    print(f"side's typical error <= {a.ratio:g} x torch float32's (its typical or worst error, the larger)")
    print(f"+ {FLOOR_TYPICAL:g}, and its worst and value errors")
    print(f"<= {WORST:g}; 'event' marks a worst error beyond {a.ratio:g} x torch float32's with a typical one")
    print("within: a few elements crossed a float32 decision boundary (ReLU at 0, a max-pool near-tie).\n")
    print(f"| step | {'tensor':<34} | typical | torch f32 | worst | torch f32 | value | max abs d | |")
    print(f"|---|{'-' * 36}|---|---|---|---|---|---|---|")
    worst_typ = (0.0, "")
    for s in range(1, meta["steps"] + 1):
        for n in meta["names"] + ["bank"]:
            r, r0 = ref[s][n], ours[s - 1][n]
            dr = r - r0
            dm, dt = ours[s][n] - r0, t32[s][n] - r0
            if n == "bank":  # only the batch's rows move: compare those
                rows = load(d, f"batch{s}/indices").unique()
                dr, dm, dt = dr[rows], dm[rows], dt[rows]
            tm, (wm, ds) = typical(dm, dr), rel(dm, dr)
            tt = wt = 0.0
            for states in (run[0] for run in noise):
                dt = states[s][n] - r0
                if n == "bank":
                    dt = dt[rows]
                tt, wt = max(tt, typical(dt, dr)), max(wt, rel(dt, dr)[0])
            ve = rel(ours[s][n], r)[0]
            ok = tm <= a.ratio * max(tt, wt) + FLOOR_TYPICAL and wm <= WORST and ve <= WORST
            bad |= not ok
            tag = "ok" if ok else "DIFF"
            if ok and wm > a.ratio * wt + 1e-6:
                tag = "event"
            worst_typ = max(worst_typ, (tm, f"step {s} {n}"))
            print(f"| {s} | {n:<34} | {tm:.2e} | {tt:.2e} | {wm:.2e} | {wt:.2e} | {ve:.2e} | {ds:.3e} | {tag} |")
    print(f"\nlargest typical error: {worst_typ[0]:.2e} ({worst_typ[1]})")

    print("\n## clean test images, the network after the last step (max abs error against float64)\n")
    print("| embedding | checked | torch f32 | mean cosine checked.f64 | |")
    print("|---|---|---|---|---|")
    for label, o, t, r in [("inference mode (running statistics)", ours_eval, t32_eval, ref_eval),
                           ("training mode (batch statistics)", ours_train, t32_train, ref_train)]:
        e, n = (o - r).abs().max().item(), (t - r).abs().max().item()
        ok = verdict(e, n)
        bad |= not ok
        print(f"| {label} | {e:.2e} | {n:.2e} | {(o * r).sum(1).mean().item():.6f} | {'ok' if ok else 'DIFF'} |")
    cos_modes = (ref_eval * ref_train).sum(1).mean().item()
    print(f"\n(mean cosine between inference- and training-mode embeddings, float64: {cos_modes:.4f})")
    print("\nRESULT:", "DIFFERENCES beyond float32 noise" if bad else "parity within float32 noise")
    sys.exit(3 if bad else 0)


if __name__ == "__main__":
    main()
