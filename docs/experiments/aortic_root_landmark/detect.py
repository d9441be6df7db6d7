"""Prototype (not shipped): the ascending aorta as a chain of in-plane discs in the mediastinum, top down.

Per slice of anatomy's coarse grid: soft tissue (> -30 HU) between the lungs, in front of the spine, not bone;
its in-plane distance transform's local maxima of radius >= 9 mm are discs; discs on consecutive slices within
6 mm (or 0.4 r) and a radius ratio of 1.33 are chained. A chain's lowest disc approximates where the aorta joins
the heart."""

import numpy as np
from scipy import ndimage

from coronary_calcium.anatomy import _PLANE, _between_lungs, _block_mean, _cut_behind_spine, _midline

SOFT_HU = -30.0
R_MIN, R_MAX = 9.0, 24.0


def mediastinum(an):
    mid = _midline(an.lungs)
    M = _between_lungs(an.lungs, an.body, mid) & ~ndimage.binary_dilation(an.bone, structure=_PLANE)
    _cut_behind_spine(M, an.bone, an.lungs, mid, an.spacing[2])
    return M, mid


def discs(soft, sp):
    out = []
    for k in range(soft.shape[0]):
        d = ndimage.distance_transform_edt(soft[k], sampling=sp[1:]) if soft[k].any() else np.zeros(soft.shape[1:])
        pk = np.argwhere((d == ndimage.maximum_filter(d, size=3)) & (d >= R_MIN))
        order = np.argsort(-d[pk[:, 0], pk[:, 1]])
        kept = []
        for y, x in pk[order]:
            r = d[y, x]
            if all(np.hypot((y - y2) * sp[1], (x - x2) * sp[2]) > max(r, r2) for y2, x2, r2 in kept):
                kept.append((int(y), int(x), float(r)))
        out.append((d, kept))
    return out


def chains(ds, sp, max_shift=6.0, ratio=1.33, gap=0, shift_per_radius=0.4):
    nz = len(ds)
    active = []  # list of chains: list of (k, y, x, r)
    done = []
    for k in range(nz - 1, -1, -1):
        new = []
        used = set()
        for ch in active:
            kk, y, x, r = ch[-1]
            best = None
            for j, (y2, x2, r2) in enumerate(ds[k][1]):
                s = np.hypot((y2 - y) * sp[1], (x2 - x) * sp[2])
                if s <= max(max_shift, shift_per_radius * r) and 1 / ratio <= r2 / r <= ratio and j not in used:
                    if best is None or s < best[0]:
                        best = (s, j)
            if best is None:
                if kk - k <= gap:
                    new.append(ch)
                else:
                    done.append(ch)
            else:
                used.add(best[1])
                y2, x2, r2 = ds[k][1][best[1]]
                new.append(ch + [(k, y2, x2, r2)])
        for j, (y2, x2, r2) in enumerate(ds[k][1]):
            if j not in used and r2 <= R_MAX:
                new.append([(k, y2, x2, r2)])
        active = new
    return done + active


def find_root(an, hu):
    f = an.factor
    sp = an.spacing
    c = _block_mean(hu, f)
    M, mid = mediastinum(an)
    soft = (c > SOFT_HU) & M
    ds = discs(soft, sp)
    chs = chains(ds, sp)
    info = []
    for ch in chs:
        L = len(ch) * sp[0]
        r = np.median([q[3] for q in ch])
        if L < 10.0 or not (10.0 <= r <= 20.0):
            continue
        kb, yb, xb, rb = ch[-1]
        merges = kb > 0 and ds[kb - 1][0][yb, xb] >= 1.3 * r
        info.append(
            dict(ch=ch, L=L, r=r, bottom=(kb, yb, xb), top=ch[0][0], merges=bool(merges), dx_mid=(xb - mid) * sp[2])
        )
    return info, mid
