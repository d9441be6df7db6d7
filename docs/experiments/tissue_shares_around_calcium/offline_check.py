"""Offline check of tissue shares taken among the non-dense pixels (issue 14): refit the lesion classifier's trees on
the default family's training + validation candidates with the shipped features, and with lung / fat / soft shares
divided by the square's non-dense share; score shifted development seeds at fixed thresholds.

    python offline_check.py DIR 6 9 10      # DIR: syn.pkl and shfS.pkl from ../candidate_patch_cnn/extract.py

Per seed: ROC AUC coronary vs the rest and coronary vs aortic / valve, candidate F1, ICC(2,1) of the per-patient
Agatston summed over these candidates (no 3D matching, no component pooling) and the aortic / valve candidates kept.
"""

import pickle
import sys

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import f1_score, roc_auc_score

from coronary_calcium.inference.calibration import CLASSIFIER_FEATURES
from coronary_calcium.inference.lesion_classifier import DEFAULT_SEEDS, DEFAULT_TREE_PARAMS
from coronary_calcium.inference.lesion_features import LESION_FEATURES
from coronary_calcium.scoring.agreement import icc_2_1

RADII = (3, 8, 15)
AROUND = tuple(f"{t}_around_{r}mm" for r in RADII for t in ("lung", "fat", "soft"))
NAMES = LESION_FEATURES + AROUND
SETS = {
    "shipped": CLASSIFIER_FEATURES,
    "shares around": tuple(f for f in CLASSIFIER_FEATURES if f.split("_")[0] not in ("lung", "fat", "soft")
                           or f == "lung_distance_mm") + AROUND,
}


def load(path):
    rows = pickle.load(open(path, "rb"))
    x = np.array([r["feat"] for r in rows], dtype=np.float64)
    col = LESION_FEATURES.index
    around = [x[:, col(f"{t}_{r}mm")] / np.maximum(1.0 - x[:, col(f"dense_{r}mm")], 0.05)
              for r in RADII for t in ("lung", "fat", "soft")]
    truth = np.array([r["truth"] for r in rows])
    return (np.column_stack([x, *around]), (truth >= 1) & (truth <= 4), np.isin(truth, (5, 6)),
            np.array([r["pid"] for r in rows]), np.array([r["agatston"] for r in rows]))


def main(folder, seeds):
    x, y, _, _, _ = load(f"{folder}/syn.pkl")
    shifted = {s: load(f"{folder}/shf{s}.pkl") for s in seeds}
    for name, features in SETS.items():
        idx = [NAMES.index(f) for f in features]
        models = [HistGradientBoostingClassifier(**DEFAULT_TREE_PARAMS, random_state=s).fit(x[:, idx], y)
                  for s in DEFAULT_SEEDS]
        probs = {s: np.mean([m.predict_proba(v[0][:, idx])[:, 1] for m in models], axis=0) for s, v in shifted.items()}
        for t in (0.5, 0.6, 0.7):
            line = [f"{name:14s} t {t:.1f} |"]
            for s, (_, ys, aos, pids, ags) in shifted.items():
                p, kept, both = probs[s], probs[s] >= t, ys | aos
                pts = np.unique(pids)
                est = [ags[(pids == q) & kept].sum() for q in pts]
                ref = [ags[(pids == q) & ys].sum() for q in pts]
                line.append(f" seed {s}: AUC {roc_auc_score(ys, p):.3f}, cor/aortic {roc_auc_score(ys[both], p[both]):.3f},"
                            f" F1 {f1_score(ys, kept):.3f}, ICC {icc_2_1(est, ref):.3f},"
                            f" aortic kept {int((aos & kept).sum())} |")
            print("".join(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [int(s) for s in sys.argv[2:]])
