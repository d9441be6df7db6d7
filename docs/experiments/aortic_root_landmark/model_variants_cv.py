"""Artery assignment CV with the shipped heart-relative features: sample weights, class weights, C, degree.

Usage: python model_variants_cv.py PICKLE_DIR   (the pickles of candidates.py)
"""

import glob
import pickle
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from coronary_calcium.anatomy import ANATOMY_FEATURES

recs = [pickle.load(open(f, "rb")) for f in sorted(glob.glob(sys.argv[1] + "/*.pkl"))]
names = np.array(["LM", "LAD", "LCX", "RCA"])
G = []
Y = []
W = []
X = []
ix = [ANATOMY_FEATURES.index(n) for n in ("heart_dx", "heart_dy", "heart_dz")]
for r in recs:
    keep = (r["label"] >= 1) & (r["label"] <= 4)
    G += [r["pid"]] * keep.sum()
    Y += list(names[r["label"][keep] - 1])
    W += list(r["agatston"][keep])
    X.append(r["anat"][keep][:, ix])
g = np.array(G)
y = np.array(Y)
w = np.array(W)
X = np.vstack(X)


def run(sw, C=1.0, deg=2, cw=None):
    pred = np.empty_like(y)
    for tr, te in GroupKFold(6).split(X, y, g):
        pf = PolynomialFeatures(deg, include_bias=False)
        sc = StandardScaler()
        A = sc.fit_transform(pf.fit_transform(X[tr]))
        m = LogisticRegression(C=C, max_iter=5000, class_weight=cw).fit(
            A, y[tr], sample_weight=None if sw is None else sw[tr] / sw[tr].mean()
        )
        pred[te] = m.predict(sc.transform(pf.transform(X[te])))
    return (
        round(w[pred == y].sum() / w.sum(), 3),
        [round(w[(y == n) & (pred == n)].sum() / w[y == n].sum(), 3) for n in names],
        round((pred == y).mean(), 3),
    )


print("none", run(None))
print("agatston", run(w))
print("sqrt", run(np.sqrt(w)))
print("log1p", run(np.log1p(w)))
print("balanced", run(None, cw="balanced"))
for C in (0.1, 10, 100):
    print("C", C, run(None, C=C), run(np.sqrt(w), C=C))
print("deg3 sqrt", run(np.sqrt(w), deg=3))
