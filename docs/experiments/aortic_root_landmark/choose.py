"""Pick the ascending aorta among the chains and compare its lowest disc with the true root.

Usage: python choose.py syn.pkl [shf.pkl ...]
"""

import pickle
import sys

import numpy as np


def feats(r, d):
    sp = r["sp"]
    ch = d["ch"]
    kb, yb, xb = d["bottom"]
    kt, yt, xt = ch[0][:3]
    tilt = np.hypot((yt - yb) * sp[1], (xt - xb) * sp[2]) / max((kt - kb) * sp[0], 1e-6)
    return dict(
        r=d["r"],
        L=d["L"],
        tilt=tilt,
        dx=(xb - r["mid"]) * sp[2],
        dy=(yb - r["hc"][1]) * sp[1],
        from_top=(r["nz"] - 1 - kt) * sp[0],
        zb=(kb - r["hc"][0]) * sp[0],
    )


def err(r, d):
    sp = r["sp"]
    t = r["true"]
    kb, yb, xb = d["bottom"]
    return np.array([(kb - t[0]) * sp[0], (yb - t[1]) * sp[1], (xb - t[2]) * sp[2]])


def pick(r, rule):
    best = None
    for d in r["chains"]:
        f = feats(r, d)
        s = rule(f)
        if s is not None and (best is None or s > best[0]):
            best = (s, d, f)
    return best


rules = {
    # the rightmost tube of aortic size in front of the heart centre's back half, nearly vertical
    "right11": lambda f: (
        -f["dx"]
        if (-45 <= f["dx"] <= 10 and f["dy"] <= 35 and 11 <= f["r"] <= 20 and f["tilt"] <= 0.7 and f["L"] >= 10)
        else None
    ),
}
for fn in sys.argv[1:]:
    rows = pickle.load(open(fn, "rb"))
    for name, rule in rules.items():
        good = 0
        errs = []
        for r in rows:
            b = pick(r, rule)
            if b is None:
                continue
            e = err(r, b[1])
            if np.hypot(e[1], e[2]) < 9:
                good += 1
                errs.append(e)
        errs = np.array(errs)
        print(
            fn,
            name,
            "in-plane error < 9 mm:",
            good,
            "/",
            len(rows),
            "z of the lowest disc above the root (mm): median %.0f, quartiles %.0f..%.0f"
            % tuple(np.percentile(errs[:, 0], [50, 25, 75])),
        )
