"""Artery assignment, 6-fold patient-grouped CV on the candidates of candidates.py, with the heart-relative position
alone and with the generator's true heart frame / aortic root added (an upper bound for a landmark detector).

Usage: python oracle_cv.py DATA_MANIFEST PICKLE_DIR
"""

import glob
import json
import pickle
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from coronary_calcium.anatomy import ANATOMY_FEATURES
from coronary_calcium.synth import phantom as P
from coronary_calcium.synth.config import SynthConfig

cfg = SynthConfig.from_dict(json.load(open(sys.argv[1]))["generator"]["config"])
recs = [pickle.load(open(f, "rb")) for f in sorted(glob.glob(sys.argv[2] + "/*.pkl"))]
names = np.array(["LM", "LAD", "LCX", "RCA"])
G = []
Y = []
W = []
A = []
O = []
R = []
for r in recs:
    keep = (r["label"] >= 1) & (r["label"] <= 4)
    if not keep.any():
        continue
    idx = int(r["pid"][3:])
    rng = np.random.default_rng([cfg.seed, idx])
    an = P._draw_anatomy(rng, cfg)
    grid, gated, tz = P._draw_grid(rng, cfg, an)
    c = r["centroid"][keep]
    mm = np.c_[grid.x0 + c[:, 2] * grid.ps, grid.y0 + c[:, 1] * grid.ps, grid.z0 + c[:, 0] * grid.dz]
    v = an.ventricles
    O.append(((mm - v.centre) @ v.rot) / v.semi)  # heart frame
    R.append((mm - an.root) / v.semi.mean())
    G += [r["pid"]] * keep.sum()
    Y += list(names[r["label"][keep] - 1])
    W += list(r["agatston"][keep])
    A.append(r["anat"][keep])
g = np.array(G)
y = np.array(Y)
w = np.array(W)
A = np.vstack(A)
O = np.vstack(O)
R = np.vstack(R)
xyz = A[:, [ANATOMY_FEATURES.index(k) for k in ("heart_dx", "heart_dy", "heart_dz")]]
mk = lambda: make_pipeline(PolynomialFeatures(2), StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
for sn, X in {
    "xyz": xyz,
    "oracle frame": O,
    "oracle root": R,
    "xyz+root": np.c_[xyz, R],
    "frame+root": np.c_[O, R],
    "xyz+root_xy": np.c_[xyz, R[:, :2]],
    "xyz+root_z": np.c_[xyz, R[:, 2:]],
}.items():
    pred = np.empty_like(y)
    for tr, te in GroupKFold(6).split(X, y, g):
        pred[te] = mk().fit(X[tr], y[tr]).predict(X[te])
    print(
        sn,
        round(w[pred == y].sum() / w.sum(), 3),
        [round(w[(y == n) & (pred == n)].sum() / w[y == n].sum(), 3) for n in names],
    )
