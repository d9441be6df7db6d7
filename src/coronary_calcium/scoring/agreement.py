"""Agreement between reference and predicted calcium scores: ICC, correlation, Bland-Altman, kappa, lesions.

All results are JSON-ready (plain floats; undefined statistics are None in :func:`score_agreement`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats

from coronary_calcium.errors import InputError
from coronary_calcium.scoring.agatston import RISK_SCHEMES, Lesion, category_index


def _pair(a: Any, b: Any, min_n: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Two finite 1D float arrays of equal length >= min_n."""
    out = []
    for name, x in (("a", a), ("b", b)):
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(name, f"must be a sequence of numbers ({exc})") from exc
        if arr.ndim != 1:
            raise InputError(name, f"must be one-dimensional, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise InputError(name, "contains NaN or infinite values")
        out.append(arr)
    if out[0].size != out[1].size:
        raise InputError("a, b", f"lengths differ ({out[0].size} vs {out[1].size})")
    if out[0].size < min_n:
        raise InputError("a, b", f"need at least {min_n} pairs, got {out[0].size}")
    return out[0], out[1]


def icc_table(ratings: Any) -> float:
    """ICC(2,1) of an (n subjects, k raters) table (Shrout & Fleiss 1979; McGraw & Wong ICC(A,1)).

    Two-way random effects, absolute agreement, single rater:
    (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n).
    A table whose values are all identical is perfect agreement: 1.0. If the denominator is otherwise
    zero (possible only for 2 x 2 tables such as [[0, 1], [1, 0]]) the ICC is undefined: NaN.
    """
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2:
        raise InputError("ratings", f"must be an (n subjects, k raters) table, got shape {x.shape}")
    n, k = x.shape
    if n < 2 or k < 2:
        raise InputError("ratings", f"need at least 2 subjects and 2 raters, got {n} x {k}")
    if not np.all(np.isfinite(x)):
        raise InputError("ratings", "contains NaN or infinite values")
    grand = x.mean()
    ss_rows = k * np.sum((x.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((x.mean(axis=0) - grand) ** 2)
    ss_err = np.sum((x - grand) ** 2) - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = max(ss_err, 0.0) / ((n - 1) * (k - 1))  # clip tiny negative round-off
    denom = msr + (k - 1) * mse + k * (msc - mse) / n
    if np.ptp(x) == 0:
        return 1.0
    if denom == 0:
        return math.nan
    return float((msr - mse) / denom)


def icc_2_1(a: Sequence[float], b: Sequence[float]) -> float:
    """ICC(2,1) (two-way random, absolute agreement, single rater) of two raters' paired scores.

    Needs at least 2 pairs; identical constant inputs give 1.0 (see :func:`icc_table`).
    """
    a, b = _pair(a, b, min_n=2)
    return icc_table(np.stack([a, b], axis=1))


def _correlation(fn: Any, a: Any, b: Any) -> float:
    a, b = _pair(a, b, min_n=2)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan  # correlation is undefined for a constant input; avoid scipy's warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(a, b)[0])


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation; NaN when either input is constant (undefined). Needs at least 2 pairs."""
    return _correlation(stats.pearsonr, a, b)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation; NaN when either input is constant (undefined). Needs at least 2 pairs."""
    return _correlation(stats.spearmanr, a, b)


def bland_altman(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Bland-Altman statistics of the differences d = a - b.

    Returns bias (mean d), sd (sample SD of d, ddof=1), lower/upper limits of agreement
    (bias -/+ 1.96 sd) and n. Needs at least 2 pairs.
    """
    a, b = _pair(a, b, min_n=2)
    d = a - b
    bias = float(d.mean())
    sd = float(d.std(ddof=1))
    return {"bias": bias, "sd": sd, "lower": bias - 1.96 * sd, "upper": bias + 1.96 * sd, "n": int(d.size)}


def _categories(x: Any, n_classes: int, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise InputError(name, f"must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InputError(name, "must hold integer category indices")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise InputError(name, f"category indices must lie in 0..{n_classes - 1}")
    return arr


def confusion_matrix(a_cats: Sequence[int], b_cats: Sequence[int], n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: rows are ``a_cats``, columns ``b_cats``."""
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise InputError("n_classes", f"must be a positive integer, got {n_classes!r}")
    a = _categories(a_cats, n_classes, "a_cats")
    b = _categories(b_cats, n_classes, "b_cats")
    if a.size != b.size:
        raise InputError("a_cats, b_cats", f"lengths differ ({a.size} vs {b.size})")
    return np.bincount(a * n_classes + b, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def weighted_kappa(
    a_cats: Sequence[int], b_cats: Sequence[int], n_classes: int, weights: str | None = "linear"
) -> float:
    """Cohen's kappa with "linear" (|i-j|/(n-1)), "quadratic" or None (unweighted) disagreement weights.

    kappa = 1 - sum(w * observed) / sum(w * expected), expected from the product of the marginals.
    Degenerate case: when the expected disagreement is 0 (both raters put every item in one and the
    same class) the observed disagreement is 0 too and kappa is defined as 1.0 (perfect agreement),
    never NaN. Needs at least one pair.
    """
    if weights not in ("linear", "quadratic", None, "none"):
        raise InputError("weights", f'must be "linear", "quadratic" or None, got {weights!r}')
    cm = confusion_matrix(a_cats, b_cats, n_classes).astype(np.float64)
    total = cm.sum()
    if total == 0:
        raise InputError("a_cats, b_cats", "need at least one pair")
    i, j = np.indices(cm.shape)
    if weights in (None, "none") or n_classes == 1:
        w = (i != j).astype(np.float64)
    elif weights == "linear":
        w = np.abs(i - j) / (n_classes - 1)
    else:
        w = ((i - j) / (n_classes - 1)) ** 2
    observed = cm / total
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    d_obs = float(np.sum(w * observed))
    d_exp = float(np.sum(w * expected))
    if d_exp == 0:
        return 1.0
    return 1.0 - d_obs / d_exp


def threshold_accuracy(
    ref_scores: Sequence[float], pred_scores: Sequence[float], thresholds: Iterable[float] = (0, 100, 400)
) -> dict[str, dict[str, Any]]:
    """Accuracy of binary decisions at each threshold, keyed by str(threshold).

    Threshold 0 means 0 vs > 0; any other t means < t vs >= t. Each entry has rule, accuracy,
    n and the counts tp/tn/fp/fn (positive = reference or prediction at or above the cut).
    """
    ref, pred = _pair(ref_scores, pred_scores, min_n=1)
    out: dict[str, dict[str, Any]] = {}
    for t in thresholds:
        t = float(t)
        if not math.isfinite(t) or t < 0:
            raise InputError("thresholds", f"must be finite and >= 0, got {t!r}")
        r, p = (ref > 0, pred > 0) if t == 0 else (ref >= t, pred >= t)
        key = f"{t:g}"
        tp, tn = int(np.sum(r & p)), int(np.sum(~r & ~p))
        fp, fn = int(np.sum(~r & p)), int(np.sum(r & ~p))
        out[key] = {
            "rule": "0 vs >0" if t == 0 else f"<{key} vs >={key}",
            "accuracy": (tp + tn) / ref.size,
            "n": int(ref.size),
            "tp": tp,
            "tn": tn,
            "fp": fp,
            "fn": fn,
        }
    return out


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def _f1(sens: float | None, ppv: float | None) -> float | None:
    if sens is None or ppv is None:
        return None
    return 2 * sens * ppv / (sens + ppv) if sens + ppv > 0 else 0.0


def match_lesions(ref: list[Lesion], pred: list[Lesion], *, min_overlap_voxels: int = 1) -> dict[str, Any]:
    """Lesion-level detection agreement of one scan: a predicted and a reference lesion match when they
    share at least ``min_overlap_voxels`` voxels (by default one).

    Both lists must come from :func:`find_lesions` on volumes of the same shape (their ``voxels`` are
    flat indices). Returns counts (n_ref, n_pred, true positives on each side, false negatives, false
    positives), sensitivity / PPV / F1 by count and by volume (volume: the matched lesions' share of
    each side's total volume), the false-positive lesions' volume and indices, and the matched pairs
    with their overlap. A ratio with a zero denominator (e.g. no reference lesions) is None; pool the
    counts across scans for data-set figures.
    """
    if isinstance(min_overlap_voxels, bool) or not isinstance(min_overlap_voxels, (int, np.integer)):
        raise InputError("min_overlap_voxels", f"must be a positive integer, got {min_overlap_voxels!r}")
    if min_overlap_voxels < 1:
        raise InputError("min_overlap_voxels", f"must be >= 1, got {min_overlap_voxels}")
    for side, lesions in (("ref", ref), ("pred", pred)):
        for i, les in enumerate(lesions):
            if not isinstance(les, Lesion) or les.voxels is None:
                raise InputError(f"{side}[{i}]", "needs a Lesion with its voxel indices (from find_lesions)")

    def owners(lesions: list[Lesion]) -> tuple[np.ndarray, np.ndarray]:
        if not lesions:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        vox = np.concatenate([np.asarray(les.voxels, dtype=np.int64) for les in lesions])
        own = np.repeat(np.arange(len(lesions)), [np.asarray(les.voxels).size for les in lesions])
        return vox, own

    rvox, rown = owners(ref)
    pvox, pown = owners(pred)
    # For every predicted voxel, the range of equal reference voxels (several if reference lesions overlap).
    order = np.argsort(rvox, kind="stable")
    rvox, rown = rvox[order], rown[order]
    lo = np.searchsorted(rvox, pvox, side="left")
    hits = np.searchsorted(rvox, pvox, side="right") - lo
    offsets = np.arange(hits.sum()) - np.repeat(np.cumsum(hits) - hits, hits)
    n_pred = max(len(pred), 1)
    keys = rown[np.repeat(lo, hits) + offsets] * n_pred + np.repeat(pown, hits)
    uniq, overlap = np.unique(keys, return_counts=True)
    good = overlap >= min_overlap_voxels
    pair_r, pair_p, overlap = uniq[good] // n_pred, uniq[good] % n_pred, overlap[good]

    ref_hit = np.zeros(len(ref), bool)
    pred_hit = np.zeros(len(pred), bool)
    ref_hit[pair_r] = True
    pred_hit[pair_p] = True
    ref_vol = np.array([les.volume_mm3 for les in ref], dtype=np.float64)
    pred_vol = np.array([les.volume_mm3 for les in pred], dtype=np.float64)

    sens = _ratio(ref_hit.sum(), len(ref))
    ppv = _ratio(pred_hit.sum(), len(pred))
    sens_v = _ratio(ref_vol[ref_hit].sum(), ref_vol.sum())
    ppv_v = _ratio(pred_vol[pred_hit].sum(), pred_vol.sum())
    fp_idx = np.flatnonzero(~pred_hit)
    return {
        "n_ref": len(ref),
        "n_pred": len(pred),
        "tp_ref": int(ref_hit.sum()),
        "tp_pred": int(pred_hit.sum()),
        "false_negatives": int((~ref_hit).sum()),
        "false_positives": int(fp_idx.size),
        "ref_volume_mm3": float(ref_vol.sum()),
        "pred_volume_mm3": float(pred_vol.sum()),
        "tp_ref_volume_mm3": float(ref_vol[ref_hit].sum()),
        "tp_pred_volume_mm3": float(pred_vol[pred_hit].sum()),
        "false_positive_volume_mm3": float(pred_vol[fp_idx].sum()),
        "false_positive_indices": [int(i) for i in fp_idx],
        "sensitivity": sens,
        "ppv": ppv,
        "f1": _f1(sens, ppv),
        "sensitivity_volume": sens_v,
        "ppv_volume": ppv_v,
        "f1_volume": _f1(sens_v, ppv_v),
        "matches": [
            {"ref": int(r), "pred": int(p), "overlap_voxels": int(o)} for r, p, o in zip(pair_r, pair_p, overlap)
        ],
    }


def pool_lesion_matches(per_scan: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Data-set lesion figures from :func:`match_lesions` results of several scans.

    Sums the counts and volumes, then sensitivity / PPV / F1 by count and by volume (None where a
    denominator is zero), plus false-positive lesions per scan.
    """
    if not per_scan:
        raise InputError("per_scan", "need at least one scan's match_lesions result")
    keys = ("n_ref", "n_pred", "tp_ref", "tp_pred", "false_negatives", "false_positives")
    vkeys = (
        "ref_volume_mm3",
        "pred_volume_mm3",
        "tp_ref_volume_mm3",
        "tp_pred_volume_mm3",
        "false_positive_volume_mm3",
    )
    try:
        tot: dict[str, Any] = {k: int(sum(m[k] for m in per_scan)) for k in keys}
        tot.update({k: float(sum(m[k] for m in per_scan)) for k in vkeys})
    except (KeyError, TypeError) as exc:
        raise InputError("per_scan", f"each entry must be a match_lesions result ({exc})") from exc
    sens, ppv = _ratio(tot["tp_ref"], tot["n_ref"]), _ratio(tot["tp_pred"], tot["n_pred"])
    sens_v = _ratio(tot["tp_ref_volume_mm3"], tot["ref_volume_mm3"])
    ppv_v = _ratio(tot["tp_pred_volume_mm3"], tot["pred_volume_mm3"])
    tot.update(
        n_scans=len(per_scan),
        sensitivity=sens,
        ppv=ppv,
        f1=_f1(sens, ppv),
        sensitivity_volume=sens_v,
        ppv_volume=ppv_v,
        f1_volume=_f1(sens_v, ppv_v),
        false_positives_per_scan=tot["false_positives"] / len(per_scan),
    )
    return tot


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def score_agreement(
    ref_scores: Sequence[float],
    pred_scores: Sequence[float],
    schemes: Iterable[str] = tuple(RISK_SCHEMES),
    thresholds: Iterable[float] = (0, 100, 400),
) -> dict[str, Any]:
    """All score-level agreement figures of paired per-scan scores, JSON-ready.

    Keys: n, icc_2_1, pearson, spearman (None where undefined, e.g. constant scores), bland_altman of
    pred - ref (positive bias = overestimation), per-scheme linearly weighted kappa with its class labels
    and confusion matrix (rows reference, columns prediction), and threshold accuracies. Needs >= 2 pairs.
    """
    ref, pred = _pair(ref_scores, pred_scores, min_n=2)
    if np.any(ref < 0) or np.any(pred < 0):
        raise InputError("scores", "calcium scores must be >= 0")
    kappas: dict[str, Any] = {}
    for scheme in schemes:
        if scheme not in RISK_SCHEMES:
            raise InputError("schemes", f"unknown risk scheme {scheme!r} (known: {sorted(RISK_SCHEMES)})")
        n_classes = len(RISK_SCHEMES[scheme])
        rc = [category_index(s, scheme) for s in ref]
        pc = [category_index(s, scheme) for s in pred]
        kappas[scheme] = {
            "kappa_linear": weighted_kappa(rc, pc, n_classes, "linear"),
            "classes": [c[0] for c in RISK_SCHEMES[scheme]],
            "confusion_matrix": confusion_matrix(rc, pc, n_classes).tolist(),
            "accuracy": float(np.mean(np.asarray(rc) == np.asarray(pc))),
        }
    return {
        "n": int(ref.size),
        "icc_2_1": _json_float(icc_2_1(ref, pred)),
        "pearson": _json_float(pearson(ref, pred)),
        "spearman": _json_float(spearman(ref, pred)),
        "bland_altman": bland_altman(pred, ref),
        "kappa": kappas,
        "threshold_accuracy": threshold_accuracy(ref, pred, thresholds),
    }
