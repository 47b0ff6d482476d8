"""Purity of the merge candidates of a bank against a similarity floor or a top share.

membank's merge rounds link mutual nearest-neighbour pairs of bank rows, most similar first
(Bulat et al. 2021, §2.3). A pair is pure when both rows' images share a class. This reads a
bank exported with

    bank-train export --run runs/NAME --split bank --out PREFIX

(`PREFIX.embedding.npy`, `PREFIX.labels.npy`) and prints, for the most similar 5%, 10%, 25%,
50% and all mutual pairs, and for similarity floors, how many pairs there are and their purity
(chance: the share of same-class pairs among random pairs, 1/C for C balanced classes).

    python benches/peer/merge_purity.py PREFIX [PREFIX ...]
"""

import sys

import numpy as np


def mutual_pairs(rows):
    """(a, b, similarity) of every mutual nearest-neighbour pair, a < b."""
    sims = rows @ rows.T
    np.fill_diagonal(sims, -2.0)
    nearest = sims.argmax(1)
    index = np.arange(len(rows))
    mutual = (nearest[nearest] == index) & (index < nearest)
    a, b = index[mutual], nearest[mutual]
    return a, b, sims[a, b]


def report(prefix):
    rows = np.load(f"{prefix}.embedding.npy").astype(np.float64)
    labels = np.load(f"{prefix}.labels.npy")
    a, b, sim = mutual_pairs(rows)
    same = labels[a] == labels[b]
    chance = sum((labels == c).mean() ** 2 for c in np.unique(labels))
    print(f"{prefix}: {len(rows)} rows, {len(a)} mutual pairs, chance {100 * chance:.1f}%")
    order = np.argsort(-sim)
    for share in (0.05, 0.10, 0.25, 0.50, 1.0):
        top = order[: max(1, int(share * len(a)))]
        print(
            f"  most similar {100 * share:3.0f}%: {len(top):5d} pairs, "
            f"similarity >= {sim[top].min():.3f}, purity {100 * same[top].mean():.1f}%"
        )
    for floor in (0.98, 0.95, 0.9, 0.8):
        keep = sim >= floor
        purity = f"{100 * same[keep].mean():.1f}%" if keep.any() else "-"
        print(f"  similarity >= {floor:.2f}: {keep.sum():5d} pairs, purity {purity}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for prefix in sys.argv[1:]:
        report(prefix)
