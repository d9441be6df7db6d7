"""Artery assignment CV with probabilities pooled over each lesion's 3D component (approximated: candidates on
adjacent slices within 4 mm in-plane).

Usage: python component_pooling_cv.py PICKLE_DIR
"""

import glob
import pickle
import sys

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import GroupKFold

from coronary_calcium.anatomy import ANATOMY_FEATURES
from coronary_calcium.inference.arteries import fit_artery_model

recs = [pickle.load(open(f, "rb")) for f in sorted(glob.glob(sys.argv[1] + "/*.pkl"))]
names = np.array(["LM", "LAD", "LCX", "RCA"])
G = []
Y = []
W = []
X = []
COMP = []
base = 0
ix = [ANATOMY_FEATURES.index(n) for n in ("heart_dx", "heart_dy", "heart_dz")]
for r in recs:
    keep = np.flatnonzero((r["label"] >= 1) & (r["label"] <= 4))
    if not keep.size:
        continue
    c = r["centroid"][keep]
    sp = r["spacing"]
    n = len(keep)
    a = []
    b = []
    for i in range(n):
        for j in range(n):
            if abs(c[i, 0] - c[j, 0]) == 1 and np.hypot(*(c[i, 1:] - c[j, 1:]) * sp[1]) < 4.0:
                a.append(i)
                b.append(j)
    _, comp = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    COMP += list(comp + base)
    base += n
    G += [r["pid"]] * n
    Y += list(names[r["label"][keep] - 1])
    W += list(r["agatston"][keep])
    X.append(r["anat"][keep][:, ix])
g = np.array(G)
y = np.array(Y)
w = np.array(W)
X = np.vstack(X)
comp = np.array(COMP)
print("components", len(set(comp)), "of", len(y), "pure", np.mean([len(set(y[comp == k])) == 1 for k in set(comp)]))
for mode in ("none", "mean_p", "logp"):
    pred = np.empty_like(y)
    for tr, te in GroupKFold(6).split(X, y, g):
        m = fit_artery_model(X[tr], y[tr])
        P = m.predict_proba(X[te])
        arts = np.array(m.arteries)
        if mode != "none":
            cc = comp[te]
            Q = P.copy()
            for k in set(cc):
                s = cc == k
                ww = w[te][s][:, None] + 1e-6
                Q[s] = (np.log(P[s] + 1e-9) * ww).sum(0) if mode == "logp" else (P[s] * ww).sum(0)
            P = Q
        pred[te] = arts[P.argmax(1)]
    print(
        mode,
        round(w[pred == y].sum() / w.sum(), 3),
        [round(w[(y == n) & (pred == n)].sum() / w[y == n].sum(), 3) for n in names],
    )
