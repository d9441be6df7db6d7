"""Which coronary artery a kept lesion lies on: LM, LAD, LCX or RCA, from where it sits relative to the heart.

The arteries run in fixed places on every heart: the left main leaves the aortic root at the top of the heart, the
LAD runs down the anterior interventricular groove (front, left), the circumflex in the left atrioventricular groove
(left, back) and the RCA in the right one (right, front). `find_anatomy` gives each candidate its position relative
to the heart region's centre in heart radii (``heart_dx`` patient left, ``heart_dy`` posterior, ``heart_dz`` along the
slices), so gated and full-chest scans, small and large hearts, are on one scale. A multinomial logistic regression
on those three numbers and their products (degree 2: the grooves are curved) is fitted by `calibrate` on the
training and validation patients' coronary candidates with their reference arteries, and stored in
``thresholds.json`` as plain numbers (no pickle). Why not trees: 30 numbers that can be read and checked, smooth
between the arteries, and nothing to overfit to the generator's exact vessel paths.

A scan where no heart was found gets "unknown" for every lesion (the features are then fallback zeros), with a note.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coronary_calcium.errors import InputError
from coronary_calcium.labels import ARTERY_NAMES

__all__ = ["ARTERY_FEATURES", "ArteryModel", "artery_assignment", "fit_artery_model"]

ARTERY_FEATURES: tuple[str, ...] = ("heart_dx", "heart_dy", "heart_dz")
MIN_PER_ARTERY = 3  # fewer reference candidates of an artery than this: the model is not fitted


def _expand(x: np.ndarray) -> np.ndarray:
    """(n, 3) positions -> (n, 9): the positions, their squares and their pairwise products."""
    x = np.asarray(x, dtype=np.float64)
    i, j = np.triu_indices(x.shape[1])
    return np.concatenate([x, x[:, i] * x[:, j]], axis=1)


@dataclass
class ArteryModel:
    """P(artery | position) = softmax(standardised degree-2 terms @ coef.T + intercept).

    features: the lesion features it reads (`ARTERY_FEATURES`); arteries: the class names, in coef's row order;
    mean / scale: of the expanded terms on the fitted candidates; fitted_on: what it was fitted on (counts).
    """

    features: tuple[str, ...]
    arteries: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    fitted_on: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.features = tuple(str(f) for f in self.features)
        self.arteries = tuple(str(a) for a in self.arteries)
        if self.features != ARTERY_FEATURES:
            raise InputError("artery_model", f"features must be {list(ARTERY_FEATURES)}, got {list(self.features)}")
        if len(set(self.arteries)) != len(self.arteries) or not set(self.arteries) <= set(ARTERY_NAMES) \
                or len(self.arteries) < 2:
            raise InputError("artery_model", f"arteries must be two or more distinct names of {list(ARTERY_NAMES)}, "
                             f"got {list(self.arteries)}")
        n_terms = _expand(np.zeros((1, len(self.features)))).shape[1]
        shapes = {"mean": (n_terms,), "scale": (n_terms,), "coef": (len(self.arteries), n_terms),
                  "intercept": (len(self.arteries),)}
        for name, shape in shapes.items():
            try:
                value = np.asarray(getattr(self, name), dtype=np.float64)
            except (TypeError, ValueError):
                raise InputError(f"artery_model.{name}", "must hold numbers") from None
            if value.shape != shape or not np.isfinite(value).all():
                raise InputError(f"artery_model.{name}", f"must be finite numbers of shape {list(shape)}, got shape "
                                 f"{list(value.shape)}")
            setattr(self, name, value)
        if (self.scale <= 0).any():
            raise InputError("artery_model.scale", "must be positive")

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(n, len(arteries)) probabilities for (n, len(features)) feature rows."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, len(self.features))
        logits = (_expand(x) - self.mean) / self.scale @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def assign(self, x: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Each row's most probable artery and its probability."""
        p = self.predict_proba(x)
        best = p.argmax(axis=1) if p.size else np.zeros(0, dtype=np.int64)
        return [self.arteries[k] for k in best], p[np.arange(best.size), best]

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "arteries": list(self.arteries),
                "mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept.tolist(), "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ArteryModel:
        if not isinstance(values, Mapping):
            raise InputError("artery_model", f"must be an object or null, got {type(values).__name__}")
        missing = sorted({"features", "arteries", "mean", "scale", "coef", "intercept"} - set(values))
        if missing:
            raise InputError("artery_model", f"missing fields {missing}")
        fitted_on = values.get("fitted_on")
        if fitted_on is not None and not isinstance(fitted_on, Mapping):
            raise InputError("artery_model.fitted_on", "must be an object or null")
        return cls(values["features"], values["arteries"], values["mean"], values["scale"], values["coef"],
                   values["intercept"], None if fitted_on is None else dict(fitted_on))


def fit_artery_model(x: np.ndarray, arteries: Sequence[str], fitted_on: dict[str, Any] | None = None
                     ) -> ArteryModel | None:
    """A multinomial logistic regression (scikit-learn) of ``arteries`` (one name of `ARTERY_NAMES` per row) on the
    (n, 3) `ARTERY_FEATURES` rows; None when fewer than two arteries have `MIN_PER_ARTERY` rows each (those rows
    are then too few to place an artery)."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, dtype=np.float64).reshape(-1, len(ARTERY_FEATURES))
    y = np.asarray(arteries, dtype=str)
    if y.size != x.shape[0]:
        raise InputError("arteries", f"need one per row: {y.size} for {x.shape[0]} rows")
    counts = dict(zip(*np.unique(y, return_counts=True)))
    unknown = sorted(set(counts) - set(ARTERY_NAMES))
    if unknown:
        raise InputError("arteries", f"unknown artery names {unknown}; known: {list(ARTERY_NAMES)}")
    enough = [a for a in ARTERY_NAMES if counts.get(a, 0) >= MIN_PER_ARTERY]
    if len(enough) < 2:
        return None
    rows = np.isin(y, enough)
    terms = _expand(x[rows])
    mean, scale = terms.mean(axis=0), terms.std(axis=0)
    scale[scale <= 1e-12] = 1.0
    fit = LogisticRegression(max_iter=2000, C=1.0).fit((terms - mean) / scale, y[rows])
    coef, intercept = fit.coef_, fit.intercept_
    if len(fit.classes_) == 2:  # one row, sigmoid(w x + b): the same as a softmax over rows (0, w), (0, b)
        coef, intercept = np.vstack([np.zeros_like(coef[0]), coef[0]]), np.array([0.0, intercept[0]])
    order = [list(fit.classes_).index(a) for a in enough]
    counts_used = {a: int((y[rows] == a).sum()) for a in enough}
    info = {**(fitted_on or {}), "n_candidates": counts_used}
    return ArteryModel(ARTERY_FEATURES, tuple(enough), mean, scale, coef[order], intercept[order], info)


def artery_assignment(lesions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How well kept lesions were assigned, from their ``result.json`` records (``artery``, ``reference_label``,
    ``agatston``): over the lesions whose reference label is a coronary artery, the share of Agatston (and of
    lesions) assigned to that artery, per reference artery and in all, and the Agatston confusion table
    (reference -> assigned). Lesions on aortic / valve calcium or background are left out: they are not coronary."""
    table = {ref: {name: 0.0 for name in (*ARTERY_NAMES, "unknown")} for ref in ARTERY_NAMES}
    counts = {ref: [0, 0] for ref in ARTERY_NAMES}  # lesions, lesions right
    for les in lesions:
        ref = les.get("reference_label")
        if ref not in table:
            continue
        assigned = les.get("artery") if les.get("artery") in table[ref] else "unknown"
        table[ref][assigned] += float(les.get("agatston", 0.0))
        counts[ref][0] += 1
        counts[ref][1] += int(assigned == ref)
    per_artery = {}
    for ref in ARTERY_NAMES:
        total = sum(table[ref].values())
        per_artery[ref] = {"n_lesions": counts[ref][0], "agatston": round(total, 4),
                           "agatston_share_right": round(table[ref][ref] / total, 6) if total > 0 else None,
                           "lesion_share_right": round(counts[ref][1] / counts[ref][0], 6) if counts[ref][0] else None}
    total = sum(sum(row.values()) for row in table.values())
    right = sum(table[ref][ref] for ref in ARTERY_NAMES)
    n = sum(c[0] for c in counts.values())
    return {"agatston_share_right": round(right / total, 6) if total > 0 else None,
            "lesion_share_right": round(sum(c[1] for c in counts.values()) / n, 6) if n else None,
            "n_lesions": n, "per_artery": per_artery,
            "confusion_agatston": {ref: {k: round(v, 4) for k, v in row.items()} for ref, row in table.items()}}
