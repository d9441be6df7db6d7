"""Agreement between reference and predicted calcium scores: ICC, correlation, Bland-Altman, kappa, lesions.

Kappa and the confusion matrices are scikit-learn's; ICC(2,1) has its F-based 95 % interval (McGraw & Wong 1996,
scipy's F distribution); kappa, accuracies and lesion F1 get percentile intervals from a seeded bootstrap over
patients (:func:`bootstrap_weights`). CAC-DRS (Hecht et al. 2018) is reported beside the 5-class scheme.
All results are JSON-ready (plain floats; undefined statistics are None in :func:`score_agreement`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics

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


def _mean_squares(ratings: Any) -> tuple[np.ndarray, float, float, float]:
    """The checked (n, k) table and its two-way ANOVA mean squares: rows (subjects), columns (raters), error."""
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
    mse = max(ss_err, 0.0) / ((n - 1) * (k - 1))  # clip tiny negative round-off
    return x, float(ss_rows / (n - 1)), float(ss_cols / (k - 1)), float(mse)


def icc_table(ratings: Any) -> float:
    """ICC(2,1) of an (n subjects, k raters) table (Shrout & Fleiss 1979; McGraw & Wong ICC(A,1)).

    Two-way random effects, absolute agreement, single rater:
    (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n).
    A table whose values are all identical is perfect agreement: 1.0. If the denominator is otherwise
    zero (possible only for 2 x 2 tables such as [[0, 1], [1, 0]]) the ICC is undefined: NaN.
    """
    x, msr, msc, mse = _mean_squares(ratings)
    n, k = x.shape
    denom = msr + (k - 1) * mse + k * (msc - mse) / n
    if np.ptp(x) == 0:
        return 1.0
    if denom == 0:
        return math.nan
    return float((msr - mse) / denom)


def icc_table_ci(ratings: Any, level: float = 0.95) -> dict[str, Any]:
    """ICC(2,1) with its F-based confidence interval (McGraw & Wong 1996, case 2A; Shrout & Fleiss 1979).

    With a = k p / (n (1 - p)), b = 1 + k p (n - 1) / (n (1 - p)) (p the ICC), Satterthwaite's degrees of freedom
    v = (a MSC + b MSE)^2 / ((a MSC)^2 / (k - 1) + (b MSE)^2 / ((n - 1)(k - 1))) and the upper F quantiles
    F_L = F(1 - alpha/2; n - 1, v), F_U = F(1 - alpha/2; v, n - 1):
    lower = n (MSR - F_L MSE) / (F_L (k MSC + (k n - k - n) MSE) + n MSR),
    upper = n (F_U MSR - MSE) / (k MSC + (k n - k - n) MSE + n F_U MSR).
    Perfect agreement (p = 1) gives [1, 1]; an undefined ICC gives None bounds. Returns value, lower, upper,
    level and method.
    """
    if not 0 < level < 1:
        raise InputError("level", f"must lie strictly between 0 and 1, got {level!r}")
    x, msr, msc, mse = _mean_squares(ratings)
    n, k = x.shape
    p = icc_table(x)
    out: dict[str, Any] = {"value": _json_float(p), "lower": None, "upper": None, "level": level,
                           "method": "F-based (McGraw & Wong 1996, ICC(A,1))"}
    if not math.isfinite(p):
        return out
    if p >= 1.0:
        out.update(lower=1.0, upper=1.0)
        return out
    a = k * p / (n * (1 - p))
    b = 1 + k * p * (n - 1) / (n * (1 - p))
    num = (a * msc + b * mse) ** 2
    den = (a * msc) ** 2 / (k - 1) + (b * mse) ** 2 / ((n - 1) * (k - 1))
    if den <= 0 or num <= 0:
        return out
    v = num / den
    q = 1 - (1 - level) / 2
    f_l, f_u = stats.f.ppf(q, n - 1, v), stats.f.ppf(q, v, n - 1)
    mid = k * msc + (k * n - k - n) * mse
    out["lower"] = _json_float(n * (msr - f_l * mse) / (f_l * mid + n * msr))
    out["upper"] = _json_float(n * (f_u * msr - mse) / (mid + n * f_u * msr))
    return out


def icc_2_1(a: Sequence[float], b: Sequence[float]) -> float:
    """ICC(2,1) (two-way random, absolute agreement, single rater) of two raters' paired scores.

    Needs at least 2 pairs; identical constant inputs give 1.0 (see :func:`icc_table`).
    """
    a, b = _pair(a, b, min_n=2)
    return icc_table(np.stack([a, b], axis=1))


def icc_2_1_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """ICC(2,1) of two raters' paired scores with its F-based interval (see :func:`icc_table_ci`)."""
    a, b = _pair(a, b, min_n=2)
    return icc_table_ci(np.stack([a, b], axis=1), level)


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
    if a.size == 0:  # scikit-learn refuses empty input
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    with warnings.catch_warnings():  # it warns about a single label even when labels=[0] is that one class
        warnings.filterwarnings("ignore", message="A single label was found")
        return metrics.confusion_matrix(a, b, labels=np.arange(n_classes)).astype(np.int64)


def weighted_kappa(
    a_cats: Sequence[int], b_cats: Sequence[int], n_classes: int, weights: str | None = "linear"
) -> float:
    """Cohen's kappa (scikit-learn's cohen_kappa_score) with "linear", "quadratic" or None (unweighted) weights.

    kappa = 1 - sum(w * observed) / sum(w * expected), expected from the product of the marginals.
    Degenerate case: when the expected disagreement is 0 (both raters put every item in one and the
    same class) the observed disagreement is 0 too and kappa is defined as 1.0 (perfect agreement),
    never NaN (scikit-learn returns NaN there). Needs at least one pair.
    """
    if weights not in ("linear", "quadratic", None, "none"):
        raise InputError("weights", f'must be "linear", "quadratic" or None, got {weights!r}')
    cm = confusion_matrix(a_cats, b_cats, n_classes)
    if cm.sum() == 0:
        raise InputError("a_cats, b_cats", "need at least one pair")
    a, b = _categories(a_cats, n_classes, "a_cats"), _categories(b_cats, n_classes, "b_cats")
    if np.unique(np.concatenate([a, b])).size == 1:
        return 1.0
    return float(metrics.cohen_kappa_score(a, b, labels=np.arange(n_classes),
                                           weights=None if weights == "none" else weights))


def _kappa_linear_batch(cms: np.ndarray) -> np.ndarray:
    """Linearly weighted kappa of a batch of (B, C, C) confusion matrices (1.0 where the expected disagreement is 0).

    The same formula as :func:`weighted_kappa` (tests check them equal); scikit-learn takes one table per call,
    and 2,000 calls (a milliseconds each) per statistic made a bootstrap take seconds.
    """
    c = cms.shape[-1]
    i, j = np.indices((c, c))
    w = np.abs(i - j) / max(c - 1, 1)
    total = cms.sum(axis=(1, 2), keepdims=True).astype(np.float64)
    obs = cms / total
    exp = obs.sum(axis=2)[:, :, None] * obs.sum(axis=1)[:, None, :]
    d_obs, d_exp = (w * obs).sum(axis=(1, 2)), (w * exp).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d_exp > 0, 1.0 - d_obs / np.where(d_exp > 0, d_exp, 1.0), 1.0)


# CAC-DRS (Hecht et al., J Cardiovasc Comput Tomogr 2018): Agatston 0 / 1-99 / 100-299 / >= 300, and the number of
# vessels (LM, LAD, LCX, RCA) with calcium.
CAC_DRS_CLASSES = (("A0", "0"), ("A1", "1-99"), ("A2", "100-299"), ("A3", ">=300"))
CAC_DRS_CUTS = (100.0, 300.0)
CAC_DRS_VESSELS = ("LM", "LAD", "LCX", "RCA")


def cac_drs_index(score: float) -> int:
    """CAC-DRS Agatston class index: 0 for exactly 0, 1 below 100, 2 below 300, 3 from 300 on ([lower, upper))."""
    s = float(score)
    if not math.isfinite(s) or s < 0:
        raise InputError("score", f"must be a finite number >= 0, got {score!r}")
    if s == 0:
        return 0
    return 1 + int(np.searchsorted(CAC_DRS_CUTS, s, side="right"))


def cac_drs(score: float, arteries: Mapping[str, float] | None = None) -> dict[str, Any]:
    """CAC-DRS of one scan: its A class, and with per-artery scores the vessel count (arteries with a score > 0
    among LM, LAD, LCX, RCA), written "A2/N3" (none for A0); ``vessels`` is None where arteries are unknown."""
    index = cac_drs_index(score)
    code, label = CAC_DRS_CLASSES[index]
    vessels = None
    if arteries is not None:
        missing = [a for a in CAC_DRS_VESSELS if a not in arteries]
        if missing:
            raise InputError("arteries", f"CAC-DRS vessel count needs scores of {', '.join(missing)}")
        vessels = sum(float(arteries[a]) > 0 for a in CAC_DRS_VESSELS)
    text = code if vessels is None or index == 0 else f"{code}/N{vessels}"
    return {"category": code, "agatston_range": label, "vessels": vessels, "cac_drs": text}


def bootstrap_weights(groups: Sequence[Any] | int, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """(n_resamples, n items) multiplicities of a bootstrap over the groups (patients): each resample draws as many
    groups as there are, with replacement, and an item counts as often as its group was drawn.

    ``groups`` is one label per item (the patient of each scan) or a number of items (each its own group). Weights
    rather than index lists keep resamples of patients with several scans rectangular (scipy's bootstrap resamples
    items, not clusters of them).
    """
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise InputError("n_resamples", f"must be a positive integer, got {n_resamples!r}")
    labels = list(range(groups)) if isinstance(groups, (int, np.integer)) else list(groups)
    if not labels:
        raise InputError("groups", "need at least one item to resample")
    _, unit = np.unique(np.asarray([str(g) for g in labels]), return_inverse=True)
    n_units = int(unit.max()) + 1
    counts = np.random.default_rng(seed).multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_resamples)
    return counts[:, unit]


def percentile_ci(samples: Any, level: float = 0.95) -> dict[str, float | None]:
    """Percentile interval of bootstrap replicates (NaN replicates, where a statistic is undefined, left out)."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return {"lower": None, "upper": None}
    lo, hi = np.quantile(x, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"lower": float(lo), "upper": float(hi)}


def _weighted_confusion(weights: np.ndarray, a: np.ndarray, b: np.ndarray, n_classes: int) -> np.ndarray:
    """(B, C, C) confusion matrices of each bootstrap resample, from its multiplicities."""
    onehot = np.zeros((a.size, n_classes * n_classes))
    onehot[np.arange(a.size), a * n_classes + b] = 1.0
    return (weights @ onehot).reshape(-1, n_classes, n_classes)


def _categorical_figures(rc: Any, pc: Any, n_classes: int, weights: np.ndarray | None, level: float) -> dict:
    """Linear kappa, accuracy and confusion matrix of paired classes, with bootstrap intervals when ``weights``."""
    rc, pc = np.asarray(rc, dtype=np.int64), np.asarray(pc, dtype=np.int64)
    out: dict[str, Any] = {
        "kappa_linear": weighted_kappa(rc, pc, n_classes, "linear"),
        "confusion_matrix": confusion_matrix(rc, pc, n_classes).tolist(),
        "accuracy": float(metrics.accuracy_score(rc, pc)),
    }
    if weights is not None:
        cms = _weighted_confusion(weights, rc, pc, n_classes)
        out["kappa_linear_ci"] = percentile_ci(_kappa_linear_batch(cms), level)
        out["accuracy_ci"] = percentile_ci(np.trace(cms, axis1=1, axis2=2) / cms.sum(axis=(1, 2)), level)
    return out


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


def lesion_f1_ci(per_scan: Sequence[dict[str, Any]], weights: np.ndarray, level: float = 0.95) -> dict[str, Any]:
    """Bootstrap intervals of the pooled lesion F1 by count and by volume (see :func:`pool_lesion_matches`), the
    scans weighted by ``weights`` (from :func:`bootstrap_weights`, one column per scan)."""
    keys = ("n_ref", "n_pred", "tp_ref", "tp_pred", "ref_volume_mm3", "pred_volume_mm3", "tp_ref_volume_mm3",
            "tp_pred_volume_mm3")
    try:
        cols = {k: np.array([float(m[k]) for m in per_scan]) for k in keys}
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError("per_scan", f"each entry must be a match_lesions result ({exc})") from exc
    if weights.ndim != 2 or weights.shape[1] != len(per_scan):
        raise InputError("weights", f"need one column per scan ({len(per_scan)}), got shape {weights.shape}")
    tot = {k: weights @ v for k, v in cols.items()}

    def f1(tp_r: str, n_r: str, tp_p: str, n_p: str) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            sens, ppv = tot[tp_r] / tot[n_r], tot[tp_p] / tot[n_p]  # NaN where undefined: left out of the interval
            return np.where(sens + ppv > 0, 2 * sens * ppv / (sens + ppv), 0.0)

    return {"f1_ci": percentile_ci(f1("tp_ref", "n_ref", "tp_pred", "n_pred"), level),
            "f1_volume_ci": percentile_ci(f1("tp_ref_volume_mm3", "ref_volume_mm3", "tp_pred_volume_mm3",
                                             "pred_volume_mm3"), level)}


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _vessel_counts(arteries: Sequence[Mapping[str, float] | None] | None, n: int, name: str) -> list[int | None]:
    if arteries is None:
        return [None] * n
    if len(arteries) != n:
        raise InputError(name, f"need one entry per scan ({n}), got {len(arteries)}")
    return [None if a is None else cac_drs(1.0, a)["vessels"] for a in arteries]


def cac_drs_agreement(
    ref: np.ndarray,
    pred: np.ndarray,
    weights: np.ndarray | None,
    level: float = 0.95,
    ref_arteries: Sequence[Mapping[str, float] | None] | None = None,
    pred_arteries: Sequence[Mapping[str, float] | None] | None = None,
) -> dict[str, Any]:
    """CAC-DRS agreement: linear kappa, accuracy and confusion matrix of the A classes (with bootstrap intervals
    when ``weights``), and, over the scans whose reference and prediction both have per-artery scores, how often
    the vessel count (N) agrees (None when no scan has both)."""
    rc = [cac_drs_index(x) for x in ref]
    pc = [cac_drs_index(x) for x in pred]
    out = {"classes": [c[0] for c in CAC_DRS_CLASSES], "agatston_ranges": [c[1] for c in CAC_DRS_CLASSES],
           **_categorical_figures(rc, pc, len(CAC_DRS_CLASSES), weights, level)}
    rv = _vessel_counts(ref_arteries, len(rc), "ref_arteries")
    pv = _vessel_counts(pred_arteries, len(pc), "pred_arteries")
    both = [(r, p) for r, p in zip(rv, pv) if r is not None and p is not None]
    out["vessels"] = {
        "n": len(both),
        "accuracy": float(np.mean([r == p for r, p in both])) if both else None,
        "confusion_matrix": confusion_matrix([r for r, _ in both], [p for _, p in both], 5).tolist() if both else None,
        "rule": "number of vessels (LM, LAD, LCX, RCA) with an Agatston score > 0; rows reference, columns prediction",
    }
    return out


def artery_agreement(
    ref_arteries: Sequence[Mapping[str, float] | None],
    pred_arteries: Sequence[Mapping[str, float] | None],
    groups: Sequence[Any] | None = None,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any] | None:
    """Agreement per artery (LM, LAD, LCX, RCA) over the scans whose reference and prediction both have per-artery
    scores (one mapping or None per scan); None when fewer than 2 scans have both.

    Per artery: n_scans, n_patients, ICC(2,1) with its F-based interval and Bland-Altman of pred - ref (as in
    :func:`score_agreement`), and calcium presence (Agatston > 0): Cohen's kappa (``kappa_linear``: linear weights
    change nothing with 2 classes), accuracy and confusion matrix, with bootstrap intervals over ``groups``.
    """
    if len(ref_arteries) != len(pred_arteries):
        raise InputError("arteries", f"lengths differ ({len(ref_arteries)} vs {len(pred_arteries)})")
    labels = list(range(len(ref_arteries))) if groups is None else list(groups)
    both = [i for i, (r, p) in enumerate(zip(ref_arteries, pred_arteries)) if r is not None and p is not None]
    if len(both) < 2:
        return None
    units = [labels[i] for i in both]
    # One set of resamples for the four arteries: their intervals come from the same patients.
    weights = bootstrap_weights(units, n_resamples, seed) if n_resamples else None
    out: dict[str, Any] = {}
    for artery in CAC_DRS_VESSELS:
        ref = np.array([float(ref_arteries[i][artery]) for i in both])  # type: ignore[index]
        pred = np.array([float(pred_arteries[i][artery]) for i in both])  # type: ignore[index]
        icc = icc_2_1_ci(ref, pred, level)
        presence = _categorical_figures((ref > 0).astype(int), (pred > 0).astype(int), 2, weights, level)
        out[artery] = {
            "n_scans": len(both), "n_patients": len({str(u) for u in units}),
            "reference_mean": float(ref.mean()), "predicted_mean": float(pred.mean()),
            "icc_2_1": icc.pop("value"), "icc_2_1_ci": icc, "bland_altman": bland_altman(pred, ref),
            "presence": {"classes": ["0", ">0"], **presence},
        }
    return out


def score_agreement(
    ref_scores: Sequence[float],
    pred_scores: Sequence[float],
    schemes: Iterable[str] = tuple(RISK_SCHEMES),
    thresholds: Iterable[float] = (0, 100, 400),
    *,
    groups: Sequence[Any] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    ref_arteries: Sequence[Mapping[str, float] | None] | None = None,
    pred_arteries: Sequence[Mapping[str, float] | None] | None = None,
) -> dict[str, Any]:
    """All score-level agreement figures of paired per-scan scores, JSON-ready.

    Keys: n, icc_2_1 with icc_2_1_ci (F-based), pearson, spearman (None where undefined, e.g. constant scores),
    bland_altman of pred - ref (positive bias = overestimation), per-scheme linearly weighted kappa with its class
    labels, confusion matrix (rows reference, columns prediction) and accuracy, threshold accuracies, cac_drs
    (see :func:`cac_drs_agreement`; vessel counts from ``ref_arteries`` / ``pred_arteries``, one mapping or None
    per scan), and the bootstrap's settings. Kappas and accuracies have ``*_ci`` percentile intervals from
    ``n_resamples`` (0: none) resamples of ``groups`` (the patient of each scan; default: each scan its own
    patient), seeded by ``seed``. Needs >= 2 pairs.
    """
    ref, pred = _pair(ref_scores, pred_scores, min_n=2)
    if np.any(ref < 0) or np.any(pred < 0):
        raise InputError("scores", "calcium scores must be >= 0")
    if groups is not None and len(groups) != ref.size:
        raise InputError("groups", f"need one patient per scan ({ref.size}), got {len(groups)}")
    weights = bootstrap_weights(ref.size if groups is None else groups, n_resamples, seed) if n_resamples else None
    kappas: dict[str, Any] = {}
    for scheme in schemes:
        if scheme not in RISK_SCHEMES:
            raise InputError("schemes", f"unknown risk scheme {scheme!r} (known: {sorted(RISK_SCHEMES)})")
        n_classes = len(RISK_SCHEMES[scheme])
        rc = [category_index(s, scheme) for s in ref]
        pc = [category_index(s, scheme) for s in pred]
        kappas[scheme] = {"classes": [c[0] for c in RISK_SCHEMES[scheme]],
                          **_categorical_figures(rc, pc, n_classes, weights, level)}
    thresholds_out = threshold_accuracy(ref, pred, thresholds)
    if weights is not None:
        for key, entry in thresholds_out.items():
            t = float(key)
            r, p = (ref > 0, pred > 0) if t == 0 else (ref >= t, pred >= t)
            entry["accuracy_ci"] = percentile_ci(weights @ (r == p) / weights.sum(axis=1), level)
    units = ref.size if groups is None else len({str(g) for g in groups})
    return {
        "n": int(ref.size),
        "icc_2_1": _json_float(icc_2_1(ref, pred)),
        "icc_2_1_ci": {k: v for k, v in icc_2_1_ci(ref, pred, level).items() if k != "value"},
        "pearson": _json_float(pearson(ref, pred)),
        "spearman": _json_float(spearman(ref, pred)),
        "bland_altman": bland_altman(pred, ref),
        "kappa": kappas,
        "threshold_accuracy": thresholds_out,
        "cac_drs": cac_drs_agreement(ref, pred, weights, level, ref_arteries, pred_arteries),
        "bootstrap": {"n_resamples": int(n_resamples or 0), "seed": seed, "level": level, "method": "percentile",
                      "unit": "patient" if groups is not None else "scan", "n_units": units},
    }
