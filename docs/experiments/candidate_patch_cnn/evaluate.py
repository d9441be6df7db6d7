"""Score the patch CNN on the validation split and on development shifted sets (see README.md).

    python evaluate.py DIR SEED [SEED ...]       (DIR: syn.pkl, shf{SEED}.pkl, patch_cnn.pt)

Rules compared, thresholds chosen on the default family's validation split only (best candidate F1):
shipped: the shipped decision; veto: shipped and P(patch) >= t; geo: sqrt(P(patch) * component probability) >= t.
Patient figures sum the judged candidates' Agatston (truth: the coronary ones), as docs/results_0.13.0/dev_check.py.
"""
import collections
import pickle
import sys

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from coronary_calcium.scoring.agatston import category_index
from coronary_calcium.scoring.agreement import icc_2_1
from train import net, predict, tensors


def figures(rows, keep) -> dict:
    t, p = collections.defaultdict(float), collections.defaultdict(float)
    tp = fn = fp = 0
    for r, k in zip(rows, keep):
        c = 1 <= r["truth"] <= 4
        t[r["pid"]] += r["agatston"] * c
        p[r["pid"]] += r["agatston"] * k
        tp, fn, fp = tp + (c and k), fn + (c and not k), fp + (k and not c)
    scans = sorted(t)
    t, p = np.array([t[s] for s in scans]), np.array([p[s] for s in scans])
    heavy = t > 400
    return {"icc": round(float(icc_2_1(t, p)), 3),
            "right_class": round(float(np.mean([category_index(a) == category_index(b) for a, b in zip(t, p)])), 3),
            "f1": round(2 * tp / max(2 * tp + fn + fp, 1), 3), "fp": int(fp), "fn": int(fn),
            "heavy_below_half": f"{int((p[heavy] < t[heavy] / 2).sum())}/{int(heavy.sum())}"}


def rules(rows, model) -> dict:
    p = predict(model, tensors(rows)[0])
    comp, kept = np.array([r["comp"] for r in rows]), np.array([r["kept"] for r in rows])
    every = np.ones_like(kept)
    return {"shipped": (kept, every), "veto": (p, kept), "geo": (np.sqrt(p * comp), every)}, p, comp


def main(folder: str, *seeds: str) -> None:
    model = net()
    model.load_state_dict(torch.load(f"{folder}/patch_cnn.pt"))
    val = [r for r in pickle.load(open(f"{folder}/syn.pkl", "rb")) if r["split"] == "validation"]
    scores, _, _ = rules(val, model)
    chosen = {}
    for name, (s, gate) in scores.items():
        if name == "shipped":
            continue
        best = max((figures(val, (s >= t) & gate)["f1"], t)
                   for t in np.linspace(0.05, 0.95, 19))
        chosen[name] = best[1]
        print(f"validation {name}: threshold {best[1]:.2f}, candidate F1 {best[0]}")
    for seed in seeds:
        rows = pickle.load(open(f"{folder}/shf{seed}.pkl", "rb"))
        scores, p, comp = rules(rows, model)
        y = np.array([1 <= r["truth"] <= 4 for r in rows])
        hard = y | np.array([r["truth"] in (5, 6) for r in rows])
        print(f"seed {seed}: AUC coronary vs aortic / valve: patch {roc_auc_score(y[hard], p[hard]):.3f}, "
              f"trees {roc_auc_score(y[hard], comp[hard]):.3f}")
        for name, (s, gate) in scores.items():
            keep = s if name == "shipped" else (s >= chosen[name]) & gate
            print(f"  {name:8s}", figures(rows, keep))


if __name__ == "__main__":
    main(*sys.argv[1:])
