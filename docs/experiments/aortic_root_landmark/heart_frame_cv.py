"""Artery assignment, 6-fold patient-grouped CV, with heart frames estimated from the scan (principal axes of the heart
region, or of its soft tissue) against the shipped heart-relative position and the generator's true frame.

Usage: python heart_frame_cv.py OUT_DIR [LOW_HU HIGH_HU]   (the soft-tissue range, default -30 to 150)
"""
import glob, pickle, sys
import numpy as np
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler
from coronary_calcium.anatomy import ANATOMY_FEATURES

names = np.array(["LM", "LAD", "LCX", "RCA"])
lo, hi = float(sys.argv[2]) if len(sys.argv) > 2 else -30.0, float(sys.argv[3]) if len(sys.argv) > 3 else 150.0

def pca(pts):
    c = pts.mean(0)
    w, v = np.linalg.eigh(np.cov((pts - c).T))
    order = np.argsort(w)[::-1]
    w, v = w[order], v[:, order]
    if v[0, 0] < 0: v[:, 0] *= -1
    if v[1, 1] < 0: v[:, 1] *= -1
    v[:, 2] = np.cross(v[:, 0], v[:, 1])
    return c, v, np.sqrt(w)

def block_mm(mask, r):
    k, i, j = np.nonzero(mask)
    f, (dz, ps) = r["factor"], (r["spacing"][0], r["spacing"][1])
    return np.c_[(j * f + (f - 1) / 2) * ps, (i * f + (f - 1) / 2) * ps, k * dz]

rows = {k: [] for k in ("xyz", "region_centre", "region_frame", "tissue_centre", "tissue_frame", "oracle",
                        "region_long", "tissue_long")}
G, Y, W = [], [], []
for fn in sorted(glob.glob(sys.argv[1] + "/*.pkl")):
    r = pickle.load(open(fn, "rb"))
    keep = (r["label"] >= 1) & (r["label"] <= 4)
    if not keep.any() or not r["heart"].any():
        continue
    c = r["centroid"][keep]
    dz, ps = r["spacing"][0], r["spacing"][1]
    mm = np.c_[c[:, 2] * ps, c[:, 1] * ps, c[:, 0] * dz]
    A = r["anat"][keep]
    rows["xyz"].append(A[:, [ANATOMY_FEATURES.index(k) for k in ("heart_dx", "heart_dy", "heart_dz")]])
    heart = r["heart"]
    tissue = heart & (r["coarse_hu"] >= lo) & (r["coarse_hu"] <= hi)
    tissue = ndimage.binary_opening(tissue, iterations=1)
    lab, n = ndimage.label(tissue)
    if n:
        tissue = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    for key, mask in (("region", heart), ("tissue", tissue)):
        cc, v, s = pca(block_mm(mask, r))
        rows[key + "_centre"].append((mm - cc) / s.mean())
        rows[key + "_frame"].append(((mm - cc) @ v) / s)
        rows[key + "_long"].append(np.c_[(mm - cc) / s.mean(), ((mm - cc) @ v[:, 0]) / s[0]])
    x0, y0, z0, gps, gdz = r["grid"]
    gm = np.c_[x0 + c[:, 2] * gps, y0 + c[:, 1] * gps, z0 + c[:, 0] * gdz]
    rows["oracle"].append(((gm - r["v_centre"]) @ r["v_rot"]) / r["v_semi"])
    G += [r["pid"]] * int(keep.sum()); Y += list(names[r["label"][keep] - 1]); W += list(r["agatston"][keep])
g, y, w = np.array(G), np.array(Y), np.array(W)
mk = lambda: make_pipeline(PolynomialFeatures(2), StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
print(len(y), "coronary candidates,", len(set(g)), "patients; tissue HU", lo, hi)
X = {k: np.vstack(v) for k, v in rows.items()}
X["xyz+tissue_frame"] = np.c_[X["xyz"], X["tissue_frame"]]
X["xyz+region_frame"] = np.c_[X["xyz"], X["region_frame"]]
for sn, x in X.items():
    pred = np.empty_like(y)
    for tr, te in GroupKFold(6).split(x, y, g):
        pred[te] = mk().fit(x[tr], y[tr]).predict(x[te])
    print(f"{sn:22s}", float(round(w[pred == y].sum() / w.sum(), 3)),
          [float(round(w[(y == n) & (pred == n)].sum() / w[y == n].sum(), 3)) for n in names])
