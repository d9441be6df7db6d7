"""The lesion classifier: P(coronary calcium) for each candidate lesion from its `lesion_features`.

Gradient-boosted trees (scikit-learn's ``HistGradientBoostingClassifier``) fitted on the candidates of the
training and validation patients (`calibration`), several times with different seeds (each fit holds out another
tenth for early stopping) and averaged: one fit's decisions on a few hundred coronary lesions change with its seed;
the mean of five changes less. The trees are stored as plain JSON arrays in ``thresholds.json`` beside the
checkpoint they were fitted with: no pickle to load, the file stays tied to the checkpoint by its SHA-256, and
inference evaluates the trees in numpy (``predict_proba``), so scikit-learn is needed only to fit. A test checks
the JSON trees give scikit-learn's own probabilities.

A calcified plaque is a 3D object cut into 2D candidates by the slices; with ``lesion_pooling="component"``
(`pool_probabilities`) each candidate is judged by the area-weighted mean probability of the candidates of its 3D
component, so one plaque is kept or rejected whole instead of slice by slice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coronary_calcium.errors import InputError

__all__ = ["DEFAULT_SEEDS", "DEFAULT_TREE_PARAMS", "LESION_POOLINGS", "LesionClassifier", "check_lesion_pooling",
           "fit_lesion_classifier", "pool_probabilities"]

# scikit-learn's defaults but half its learning rate (the higher validation F1 of the two on the default data);
# early stopping on a held-out tenth picks the number of trees.
DEFAULT_TREE_PARAMS: dict[str, Any] = {
    "max_iter": 300,
    "learning_rate": 0.05,
    "early_stopping": True,
    "validation_fraction": 0.1,
}
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
# what a candidate is judged by: its own probability, or its 3D component's area-weighted mean
LESION_POOLINGS = ("candidate", "component")

_TREE_KEYS = ("feature", "threshold", "left", "right", "value", "leaf")


def _tree_arrays(tree: Any, name: str, n_features: int) -> dict[str, np.ndarray]:
    """One tree's arrays, checked: integer indices, finite numbers, and children after their parent (as
    scikit-learn numbers them), so every sample reaches a leaf."""
    if not isinstance(tree, Mapping) or any(k not in tree for k in _TREE_KEYS):
        raise InputError("lesion_classifier", f"{name} must hold {list(_TREE_KEYS)}")
    try:
        a = {k: np.asarray(tree[k], dtype=np.float64) for k in _TREE_KEYS}
    except (TypeError, ValueError):
        raise InputError("lesion_classifier", f"{name}: its arrays must hold numbers") from None
    n = a["feature"].size
    if n == 0 or any(v.ndim != 1 or v.size != n for v in a.values()):
        raise InputError("lesion_classifier", f"{name}: its arrays must be 1D and of one length")
    if not all(np.isfinite(v).all() for v in a.values()):
        raise InputError("lesion_classifier", f"{name}: holds NaN or infinite values")
    for k in ("feature", "left", "right", "leaf"):
        if not np.array_equal(a[k], np.round(a[k])):
            raise InputError("lesion_classifier", f"{name}: '{k}' must hold integers")
        a[k] = a[k].astype(np.int64)
    inner = np.flatnonzero(a["leaf"] == 0)
    if inner.size and (a["feature"][inner].min() < 0 or a["feature"][inner].max() >= n_features
                       or (a["left"][inner] <= inner).any() or (a["right"][inner] <= inner).any()
                       or a["left"][inner].max() >= n or a["right"][inner].max() >= n):
        raise InputError("lesion_classifier", f"{name}: a node points outside the tree or the features, or back up "
                         "the tree")
    return a


@dataclass
class LesionClassifier:
    """Averaged boosted-tree models over named features. Per member: raw score = its ``baseline`` + the leaf values
    reached in each of its trees, P = sigmoid(raw score); the classifier's P(coronary) is the members' mean.
    A node sends a sample left when feature <= threshold.

    members: dicts ``{"baseline": float, "trees": [tree, ...]}``; a tree holds equal-length lists ``feature``
    (index into ``features``), ``threshold``, ``left``, ``right`` (child node indices), ``value`` (leaf value) and
    ``leaf`` (1 for leaves). They are checked and kept as numpy arrays (lists or arrays are accepted).
    """

    features: tuple[str, ...]
    members: list[dict[str, Any]]
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.features, (list, tuple)) or not all(isinstance(f, str) for f in self.features):
            raise InputError("lesion_classifier", "'features' must be a list of names")
        self.features = tuple(self.features)
        if not self.features:
            raise InputError("lesion_classifier", "names no features")
        if not isinstance(self.members, (list, tuple)) or not self.members:
            raise InputError("lesion_classifier", "'members' must be a non-empty list of models")
        if not isinstance(self.fitted_on, Mapping):
            raise InputError("lesion_classifier", "'fitted_on' must be an object")
        checked = []
        for m, member in enumerate(self.members):
            if not isinstance(member, Mapping) or "baseline" not in member or "trees" not in member:
                raise InputError("lesion_classifier", f"member {m} must hold 'baseline' and 'trees'")
            baseline = member["baseline"]
            if isinstance(baseline, bool) or not isinstance(baseline, (int, float)) or not np.isfinite(baseline):
                raise InputError("lesion_classifier", f"member {m}: 'baseline' must be a finite number")
            if not isinstance(member["trees"], (list, tuple)):
                raise InputError("lesion_classifier", f"member {m}: 'trees' must be a list")
            trees = [_tree_arrays(t, f"member {m} tree {i}", len(self.features)) for i, t in enumerate(member["trees"])]
            checked.append({"baseline": float(baseline), "trees": trees})
        self.members = checked

    @staticmethod
    def _raw(baseline: float, trees: list[dict[str, np.ndarray]], x: np.ndarray) -> np.ndarray:
        score = np.full(x.shape[0], baseline)
        rows = np.arange(x.shape[0])
        for a in trees:
            node = np.zeros(x.shape[0], dtype=np.int64)
            active = a["leaf"][node] == 0
            while active.any():
                idx = node[active]
                go_left = x[rows[active], a["feature"][idx]] <= a["threshold"][idx]
                node[active] = np.where(go_left, a["left"][idx], a["right"][idx])
                active = a["leaf"][node] == 0
            score += a["value"][node]
        return score

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(n,) P(coronary calcium) per row of the (n, len(features)) matrix ``x``."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise InputError("lesion features", f"expected (n, {len(self.features)}) values, got {x.shape}")
        probs = [1.0 / (1.0 + np.exp(-self._raw(m["baseline"], m["trees"], x))) for m in self.members]
        return np.mean(probs, axis=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "mean of gradient-boosted tree models (scikit-learn HistGradientBoostingClassifier, exported)",
            "features": list(self.features),
            "fitted_on": self.fitted_on,
            "members": [{"baseline": m["baseline"],
                         "trees": [{k: tree[k].tolist() for k in _TREE_KEYS} for tree in m["trees"]]}
                        for m in self.members],
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LesionClassifier:
        if not isinstance(values, Mapping):
            raise InputError("lesion_classifier", "must be an object")
        missing = [k for k in ("features", "members") if k not in values]
        if missing:
            raise InputError("lesion_classifier", f"missing fields {missing}")
        return cls(features=values["features"], members=values["members"], fitted_on=values.get("fitted_on", {}))


def fit_lesion_classifier(
    x: np.ndarray,
    y: np.ndarray,
    features: Sequence[str],
    params: Mapping[str, Any] | None = None,
    fitted_on: Mapping[str, Any] | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    sample_weight: np.ndarray | None = None,
) -> LesionClassifier:
    """Fit boosted trees on (n, len(features)) ``x`` and boolean ``y`` (candidate is coronary calcium), once per
    seed in ``seeds``, with optional per-candidate ``sample_weight``; the classifier averages their probabilities."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=bool)
    if x.ndim != 2 or x.shape[0] != y.size or x.shape[1] != len(features):
        raise InputError("lesion features", f"expected (n, {len(features)}) values and n labels, got {x.shape} and "
                         f"{y.shape}")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise InputError("lesion classifier", f"needs coronary and other candidates, got {n_pos} of {y.size} coronary")
    if not np.isfinite(x).all():
        raise InputError("lesion features", "hold NaN or infinite values")
    if not seeds:
        raise InputError("seeds", "give at least one seed")
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=np.float64)
        if sample_weight.shape != y.shape or not np.isfinite(sample_weight).all() or (sample_weight < 0).any():
            raise InputError("sample_weight", f"must be {y.size} finite non-negative weights")
    settings = {**DEFAULT_TREE_PARAMS, **(params or {})}
    if y.size < 200 or min(n_pos, y.size - n_pos) < 10:  # too few for a stratified held-out tenth
        settings["early_stopping"] = False
    members = []
    for seed in seeds:
        model = HistGradientBoostingClassifier(**{**settings, "random_state": int(seed)})
        model.fit(x, y, sample_weight=sample_weight)
        trees = []
        for (predictor,) in model._predictors:  # one predictor per iteration for a binary problem
            nodes = predictor.nodes
            leaf = nodes["is_leaf"].astype(bool)
            # zeros where a field is unused (split fields of leaves, values of inner nodes): shorter JSON
            trees.append({
                "feature": np.where(leaf, 0, nodes["feature_idx"]).astype(np.int64),
                "threshold": np.where(leaf, 0.0, nodes["num_threshold"]).astype(np.float64),
                "left": np.where(leaf, 0, nodes["left"]).astype(np.int64),
                "right": np.where(leaf, 0, nodes["right"]).astype(np.int64),
                "value": np.where(leaf, nodes["value"], 0.0).astype(np.float64),
                "leaf": leaf.astype(np.int64),
            })
        members.append({"baseline": float(np.ravel(model._baseline_prediction)[0]), "trees": trees})
    return LesionClassifier(
        features=tuple(features),
        members=members,
        fitted_on={**(dict(fitted_on) if fitted_on else {}), "n_candidates": int(y.size), "n_coronary": n_pos,
                   "seeds": [int(s) for s in seeds], "n_trees": [len(m["trees"]) for m in members],
                   "params": settings},
    )


def check_lesion_pooling(pooling: Any) -> str:
    """``pooling`` if it is one of LESION_POOLINGS, else an InputError naming the choices."""
    if pooling not in LESION_POOLINGS:
        raise InputError("lesion_pooling", f"must be one of {list(LESION_POOLINGS)}, got {pooling!r}")
    return pooling


def pool_probabilities(
    probabilities: np.ndarray, components: np.ndarray, areas: np.ndarray, pooling: str = "component"
) -> np.ndarray:
    """Per candidate, the probability its keep / reject decision uses: ``pooling="candidate"``, its own;
    "component", the mean over the candidates sharing its 3D component id (``components``), weighted by their
    ``areas``, so a plaque's small end slices follow its main body."""
    check_lesion_pooling(pooling)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if pooling == "candidate" or probabilities.size == 0:
        return probabilities
    components = np.asarray(components)
    areas = np.asarray(areas, dtype=np.float64)
    for name, values in (("components", components), ("areas", areas)):
        if values.shape != probabilities.shape:
            raise InputError(name, f"need one per candidate: shape {values.shape} for {probabilities.shape} "
                             "probabilities")
    if not (areas > 0).all():
        raise InputError("areas", f"must be > 0; candidates {np.flatnonzero(~(areas > 0))[:5].tolist()} are not")
    _, group = np.unique(components, return_inverse=True)
    pooled = np.bincount(group, weights=probabilities * areas) / np.bincount(group, weights=areas)
    return pooled[group]
