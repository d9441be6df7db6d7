"""Choosing the decision rule on the validation split, and writing ``thresholds.json``.

Per scan: the classifier's probability per slice, the candidate lesions (2D 8-connected components >= the HU
threshold with area >= the minimum, `find_lesions` without labels), each candidate's CAM score (maximum or mean of
the positive class's CAM inside its pixels, on the original matrix) and its `lesion_features`. Reference lesions
are the coronary Agatston lesions of the label volume (`find_lesions` with labels); a candidate is coronary when
it shares a voxel with one (`match_lesions`).

1. The lesion classifier (`fit_lesion_classifier`) is fitted on the candidates of the training and the validation
   patients that it can be asked about at inference (`classifier_judges`: the anatomy rule allows them, or they
   share a 3D component with one that it allows). Why not every candidate: what the rule rejects (ribs, spine,
   the body edge) never reaches the trees, and fitted on, it teaches them that large and dense means bone, which
   rejects large coronary plaques. Its features read nothing of the slice network, so the training patients' scans
   do not go through it, and worker processes share them. Its threshold is chosen on out-of-fold probabilities:
   the validation patients are dealt into folds, and each fold's candidates are scored by trees fitted without
   that fold.
2. On the validation patients, for every pair of a grid, the candidates passing both thresholds are kept and the
   lesion-level F1 pooled over the split is computed: (t_slice, t_lesion) for the classifier's rule, and
   (t_slice, t_cam) for the older slice-and-CAM rule (recorded for comparison, used when no classifier is fitted).
   Among the pairs whose F1 is within one reference lesion's worth of the best (``f1_slack_lesions / n_ref``),
   the pair keeping the fewest aortic or valve calcium candidates wins, then the highest F1, ties going to the
   lower t_slice, then the higher second threshold. Why: counting aortic or valve calcium as coronary is the
   error a calcium score must not make, and the pooled F1 is flat near its top (differences of one lesion in a
   hundred are noise on nine patients), so it alone would trade one for a single more small coronary lesion. Why
   the lower t_slice: a slice gate that buys nothing on validation only adds a dependence on the slice network,
   the part learnt from the generator's images and the least likely to hold on another scanner.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import json
import multiprocessing
import numbers
import os
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from coronary_calcium.data.transforms import check_hu_windows
from coronary_calcium.errors import InputError
from coronary_calcium.inference.arteries import ARTERY_FEATURES, ArteryModel, fit_artery_model
from coronary_calcium.inference.candidates import find_candidates
from coronary_calcium.inference.decision import (
    ANATOMY_RULE_FEATURES,
    TISSUE_RULE_FEATURES,
    anatomy_allows,
    classifier_judges,
    tissue_rule,
)
from coronary_calcium.inference.lesion_classifier import (
    LesionClassifier,
    check_lesion_pooling,
    fit_lesion_classifier,
    pool_probabilities,
)
from coronary_calcium.inference.lesion_features import LESION_FEATURES, feature_columns
from coronary_calcium.inference.model import SliceAnalyzer, _device
from coronary_calcium.inference.thresholds import (
    CAM_SCORES,
    CHECKPOINT_FILE,
    THRESHOLDS_FILE,
    Thresholds,
    file_sha256,
    save_thresholds,
)
from coronary_calcium.io.manifest import Manifest, load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.labels import AORTIC, CORONARY_LABELS, LABEL_NAMES, LAD, VALVE, majority_label
from coronary_calcium.networks import create_network, load_checkpoint_weights, network_spec, validate_cam_layers
from coronary_calcium.scoring.agatston import ScoringConfig, find_lesions
from coronary_calcium.scoring.agreement import match_lesions
from coronary_calcium.train.precision import default_precision

__all__ = ["CLASSIFIER_FEATURES", "CalibrationConfig", "calibrate", "choose_thresholds", "cross_fit_lesion_classifier",
           "training_defaults", "DEFAULT_SLICE_GRID", "DEFAULT_CAM_GRID"]

DEFAULT_SLICE_GRID = tuple(round(v, 4) for v in np.linspace(0.0, 1.0, 21))
DEFAULT_CAM_GRID = tuple(round(v, 4) for v in np.linspace(0.0, 1.0, 21))
NON_CORONARY_LABELS = (AORTIC, VALVE)
DEFAULT_LESION_GRID = tuple(round(v, 4) for v in np.linspace(0.02, 0.98, 49))
_FALLBACK_DEFAULTS = {"network_name": "inception_v3_scratch", "hu_windows": [[-250.0, 950.0], [130.0, 630.0]],
                      "image_size": [256, 256], "field_of_view_mm": None, "field_of_view_centre": "image",
                      "calcium_threshold_hu": 130.0,
                      "min_lesion_area_mm2": 1.0}
# Weight of aortic / valve candidates in the lesion classifier's fit. 1: weights of 5 and 20 gave validation F1s
# within half a lesion of it (0.982-0.986 against 0.982, Inception v3 15 epochs, fitted on training patients only;
# 0.977 either way cross-fitted with the 4-epoch default), and any weight makes scikit-learn bin the features by
# weighted percentiles, 8x slower.
HARD_NEGATIVE_WEIGHT = 1.0
# Folds of the validation patients when they join the lesion classifier's fit (cross-fitting; 0: they do not).
VALIDATION_FOLDS = 3
# Candidates judged by their 3D component's area-weighted mean probability: out-of-fold validation F1 of the CPU
# default (4 epochs) 0.982 judged one by one, 0.996 pooled (2 more reference lesions found, and the one aortic
# candidate kept one by one rejected).
LESION_POOLING = "component"
FIT_CANDIDATES = ("judged", "all")  # the lesion classifier's fit: what it can be asked about, or every candidate
FROM_TRAINING = "train.json"  # field of view defaults: train.json's values (None itself means "no crop")
# What the lesion classifier reads: what is measured on the scan itself (size, density, 3D extent, place in the
# anatomy, surrounding tissue), not the slice network's outputs (slice probabilities, CAM): those are learnt from the
# synthetic slices and only restate, less reliably on other scanners, what the measured features say (the
# validation record of docs/results_0.10.0 compares both). Nor the depth inside the heart region: that region is
# the soft tissue between the lungs, so where its edge runs depends on the lung shapes and the field of view rather
# than on the heart; the position relative to the heart centre, in heart radii, stays. Nor what the tissue rule of
# `decide` reads (as a tree feature the distance to fat only moved t_lesion: docs/experiments/fat_distance/).
SLICE_NETWORK_FEATURES = ("slice_probability", "neighbour_probability", "cam_mean", "cam_max")
CLASSIFIER_FEATURES = tuple(f for f in LESION_FEATURES
                            if f not in (*SLICE_NETWORK_FEATURES, "heart_depth_mm", *TISSUE_RULE_FEATURES))


def training_defaults(train_config: str | Path | None = None) -> dict[str, Any]:
    """network_name, hu_windows, image_size, field_of_view_mm, field_of_view_centre, in_channels (one per window),
    calcium_threshold_hu,
    min_lesion_area_mm2 of the bundle's ``configs/train.json`` (the values the classifier is trained with unless
    overridden)."""
    if train_config is None:
        from coronary_calcium.train.bundle import BUNDLE_ROOT

        train_config = BUNDLE_ROOT / "configs" / "train.json"
    path = Path(train_config)
    raw = json.loads(path.read_text()) if path.is_file() else {}
    out = {k: raw.get(k, v) for k, v in _FALLBACK_DEFAULTS.items()}
    out["in_channels"] = len(out["hu_windows"])
    return out


# --------------------------------------------------------------------------------------------------------------
# Validation cases: (scan id, CTVolume-like arrays, reference labels)


def _cases_from_records(records: Sequence[Mapping[str, Any]]) -> Iterable[tuple[str, np.ndarray, tuple, np.ndarray]]:
    """Slice records (`coronary_calcium.data.slices.slice_records`) regrouped into volumes per scan.

    The records' ``mask`` (coronary calcium >= the threshold) becomes the reference labels; the slice increment is
    not known and set to 1 mm (no part of the slice-and-CAM rule: lesions are 2D), and aortic / valve calcium is
    not told apart, so records serve the slice-and-CAM rule only (the lesion classifier's features need both), and
    the preference for rules keeping no aortic / valve candidate (``f1_slack_lesions``) has nothing to count.
    """
    by_scan: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        by_scan[str(r["scan_id"])].append(r)
    for scan_id, rows in by_scan.items():
        rows = sorted(rows, key=lambda r: int(r["slice_index"]))
        hu = np.stack([np.asarray(r["image"], dtype=np.float32).reshape(np.shape(r["image"])[-2:]) for r in rows])
        if "mask" not in rows[0]:
            raise InputError(scan_id, "slice records need a 'mask' (reference coronary calcium) to choose thresholds")
        mask = np.stack([np.asarray(r["mask"]).reshape(hu.shape[1:]) > 0 for r in rows])
        row, col = (float(v) for v in rows[0].get("pixel_spacing", (1.0, 1.0)))
        patient = str(rows[0].get("patient_id", scan_id))
        yield patient, hu, (1.0, row, col), np.where(mask, LAD, 0).astype(np.uint8)


def _cases_from_manifest(manifest: Manifest, split: str) -> Iterable[tuple[str, np.ndarray, tuple, np.ndarray]]:
    scans = manifest.split(split)
    if not scans:
        raise InputError(manifest.path, f"split {split!r} has no scans: thresholds are chosen on it")
    for scan in scans:
        volume, labels = read_scan(scan)
        if labels is None:
            raise InputError(scan.image, f"scan {scan.scan_id} has no reference (labels or COCA XML): choosing "
                             "thresholds needs reference lesions")
        yield scan.patient_id, volume.hu, volume.spacing, labels


def _are_records(data: Any) -> bool:
    """Slice records (dicts), as opposed to a manifest or (CTVolume, labels) pairs."""
    if isinstance(data, (str, Path, Manifest)) or data is None:
        return False
    return bool(len(data)) and isinstance(data[0], Mapping)


def _cases(data: Any, split: str) -> tuple[Iterable[tuple[str, np.ndarray, tuple, np.ndarray]], list[str], str]:
    """(cases, their patient ids, description): cases are (patient id, hu, spacing, labels), read lazily from a
    manifest; the patient ids are known before any image is read."""
    if isinstance(data, (str, Path)):
        data = load_manifest(data)
    if isinstance(data, Manifest):
        return _cases_from_manifest(data, split), [s.patient_id for s in data.split(split)], f"{data.path} ({split})"
    items = list(data)
    if not items:
        raise InputError("validation data", "is empty")
    if isinstance(items[0], Mapping):
        cases = list(_cases_from_records(items))
        return cases, [c[0] for c in cases], "slice records"
    if isinstance(items[0], tuple) and len(items[0]) == 2 and isinstance(items[0][0], CTVolume):
        cases = [(str(v.meta.get("patient_id", v.meta.get("scan_id", i))), v.hu, v.spacing, lab)
                 for i, (v, lab) in enumerate(items)]
        return cases, [c[0] for c in cases], "volumes"
    raise InputError("validation data", "expected a manifest, slice records or (CTVolume, labels) pairs")


# --------------------------------------------------------------------------------------------------------------
# Grid search


def _f1(tp_ref: int, n_ref: int, tp_pred: int, n_pred: int) -> tuple[float, float, float | None]:
    sens = tp_ref / n_ref
    ppv = tp_pred / n_pred if n_pred else None
    if ppv is None or sens + ppv == 0:
        return 0.0, sens, ppv
    return 2 * sens * ppv / (sens + ppv), sens, ppv


def grid_search(
    probability: np.ndarray,
    cam: np.ndarray,
    pairs: np.ndarray,
    n_ref: int,
    slice_grid: Sequence[float],
    cam_grid: Sequence[float],
    non_coronary: np.ndarray | None = None,
    f1_slack: float | None = None,
) -> dict[str, Any]:
    """Best (t_slice, t_cam) by pooled lesion-level F1; ties -> lower t_slice, then higher t_cam.

    probability / cam: per candidate; pairs: (k, 2) array of (candidate, reference lesion) overlaps; n_ref: the
    number of reference lesions. Returns the chosen pair, its F1 / sensitivity / PPV / counts and the F1 table.
    non_coronary / f1_slack: with both, among the pairs whose F1 is within ``f1_slack`` of the best, the one keeping
    the fewest ``non_coronary`` candidates (aortic / valve calcium) wins, then the F1 and the thresholds decide.
    """
    probability = np.asarray(probability, dtype=np.float64)
    cam = np.asarray(cam, dtype=np.float64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    matched = np.zeros(probability.size, dtype=bool)
    matched[pairs[:, 0]] = True
    preferring = non_coronary is not None and f1_slack is not None
    if preferring and not 0 <= f1_slack < np.inf:
        raise InputError("f1_slack", f"must be a finite F1 difference >= 0, got {f1_slack!r}")
    non_coronary = np.asarray(non_coronary if preferring else np.zeros(probability.size), dtype=bool)
    table = np.zeros((len(slice_grid), len(cam_grid)))
    cells = []
    for i, ts in enumerate(slice_grid):
        by_slice = probability >= ts
        for j, tc in enumerate(cam_grid):
            keep = by_slice & (cam >= tc)
            n_pred = int(keep.sum())
            tp_pred = int((keep & matched).sum())
            tp_ref = int(np.unique(pairs[keep[pairs[:, 0]], 1]).size) if pairs.size else 0
            f1, sens, ppv = _f1(tp_ref, n_ref, tp_pred, n_pred)
            table[i, j] = f1
            cells.append({"t_slice": float(ts), "t_cam": float(tc), "f1": f1, "sensitivity": sens, "ppv": ppv,
                          "n_kept": n_pred, "tp_pred": tp_pred, "tp_ref": tp_ref,
                          "n_aortic_or_valve_kept": int((keep & non_coronary).sum())})
    floor = table.max() - f1_slack if preferring else -np.inf
    best = dict(max((c for c in cells if c["f1"] >= floor),
                    key=lambda c: (-c["n_aortic_or_valve_kept"], round(c["f1"], 12), -c["t_slice"], c["t_cam"])))
    best["grid"] = {"t_slice": [float(v) for v in slice_grid], "t_cam": [float(v) for v in cam_grid],
                    "f1": table.round(6).tolist()}
    if preferring:
        kept = np.reshape([c["n_aortic_or_valve_kept"] for c in cells], table.shape)
        best["grid"]["n_aortic_or_valve_kept"] = kept.tolist()
    else:
        del best["n_aortic_or_valve_kept"]
    return best


def _collect(cases: Iterable[tuple[str, np.ndarray, tuple, np.ndarray]], n_cases: int, analyzer: SliceAnalyzer,
             config: ScoringConfig, desc: str, progress: bool, network: bool = True,
             lesion_pooling: str | None = None, workers: int = 1) -> dict[str, Any]:
    """Per candidate of every case: slice probability, CAM score, lesion features, matched reference lesions, and
    whether it is aortic or valve calcium (touches those labels and no coronary lesion), its patient, its 3D
    component (ids unique across scans), its area, its reference artery (majority coronary label of its voxels; ""
    for none), and whether its whole features row was computed.

    ``lesion_pooling``: compute whole rows only for the candidates a lesion classifier with that pooling can be
    asked about (`classifier_judges` on any slice; the others hold the anatomy features, NaN elsewhere); None: for
    every candidate. ``network=False``: the network does not run (probabilities and CAM scores NaN); then
    ``workers`` > 1 processes share the scans (what remains is single-threaded numpy / scipy), with the same result.
    """
    parts = []
    n_components = 0
    scans = _scan_parts(cases, analyzer, config, network, lesion_pooling, workers)
    for part in tqdm(scans, total=n_cases, desc=desc, unit="scan", disable=not progress):
        part["component"] = part["component"] + n_components  # component ids made unique across scans
        n_components += int(part["component"].max()) + 1 if part["component"].size else 0
        parts.append(part)
    n_before = np.cumsum([0] + [p["area"].size for p in parts])  # candidates, then reference lesions, before each
    refs_before = np.cumsum([0] + [p["n_ref"] for p in parts])
    pairs = np.concatenate([np.zeros((0, 2), dtype=np.int64)]
                           + [p["pairs"] + [n, r] for p, n, r in zip(parts, n_before, refs_before)])
    joined = {key: np.concatenate([p[key] for p in parts]) if parts else np.zeros(0)
              for key in ("probability", "cam", "non_coronary", "component", "area", "artery", "patient",
                          "computed")}
    coronary = np.zeros(joined["area"].size, dtype=bool)
    coronary[pairs[:, 0]] = True
    return {
        **joined, "pairs": pairs, "coronary": coronary, "non_coronary": joined["non_coronary"].astype(bool) & ~coronary,
        "features": np.concatenate([p["features"] for p in parts]) if parts else np.zeros((0, len(LESION_FEATURES))),
        "n_ref": int(refs_before[-1]), "n_scans": len(parts), "n_slices": sum(p["n_slices"] for p in parts),
        "n_positive_slices": sum(p["n_positive_slices"] for p in parts),
    }


def _scan_part(case: tuple[str, np.ndarray, tuple, np.ndarray], analyzer: SliceAnalyzer, config: ScoringConfig,
               network: bool, lesion_pooling: str | None) -> dict[str, Any]:
    """One case's part of `_collect`: its candidates' values, component ids and (candidate, reference) pairs
    counted within the scan."""
    patient_id, hu, spacing, labels = case
    judged = None if lesion_pooling is None else (lambda found: classifier_judges(found, None, lesion_pooling))
    found = find_candidates(hu, spacing, analyzer, config, features=True, feature_subset=judged, network=network)
    reference = find_lesions(hu, spacing, labels=labels, config=config)
    flat_labels = np.asarray(labels).reshape(-1)
    voxel_labels = [flat_labels[np.asarray(c.voxels)] for c in found]
    pairs = [(m["pred"], m["ref"]) for m in match_lesions(reference, found.lesions)["matches"]]
    return {
        "probability": found.slice_probabilities.astype(np.float64),
        "cam": np.array([float(s) if s is not None else (-np.inf if network else np.nan) for s in found.cam_scores],
                        dtype=np.float64),
        "features": found.features,
        "non_coronary": np.array([bool(np.isin(v, NON_CORONARY_LABELS).any()) for v in voxel_labels], dtype=bool),
        "component": np.asarray(found.components, dtype=np.int64),
        "area": found.areas,
        "artery": np.array([_artery_name(majority_label(v, CORONARY_LABELS)) for v in voxel_labels], dtype=str),
        "patient": np.array([patient_id] * len(found), dtype=str),
        "computed": np.ones(len(found), dtype=bool) if found.computed is None else np.asarray(found.computed),
        "pairs": np.asarray(pairs, dtype=np.int64).reshape(-1, 2),
        "n_ref": len(reference), "n_slices": len(found.probabilities),
        "n_positive_slices": len({int(r.slices[0]) for r in reference}),
    }


_WORKER_STATE: tuple[Any, ...] = ()  # a worker process's (analyzer, config, network, lesion_pooling)


def _init_worker(*state: Any) -> None:
    global _WORKER_STATE
    _WORKER_STATE = state


def _worker_scan_part(case: tuple[str, np.ndarray, tuple, np.ndarray]) -> dict[str, Any]:
    return _scan_part(case, *_WORKER_STATE)


def _scan_parts(cases: Iterable[tuple[str, np.ndarray, tuple, np.ndarray]], analyzer: SliceAnalyzer,
                config: ScoringConfig, network: bool, lesion_pooling: str | None, workers: int
                ) -> Iterator[dict[str, Any]]:
    """`_scan_part` of each case, in order; with ``workers`` > 1 in that many forked processes, each given the
    analyzer without its network (they never run it), at most two cases each in flight (scans are large). Where
    processes cannot be forked (Windows), or the network runs (it has both cores already), in this process."""
    if workers <= 1 or network or "fork" not in multiprocessing.get_all_start_methods():
        yield from (_scan_part(case, analyzer, config, network, lesion_pooling) for case in cases)
        return
    light = copy.copy(analyzer)
    light.network = None  # nothing of the network travels or runs
    context = multiprocessing.get_context("fork")  # no re-import per worker; the workers use numpy / scipy only
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(light, config, network, lesion_pooling)) as pool:
        pending: deque = deque()
        for case in cases:
            pending.append(pool.submit(_worker_scan_part, case))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _artery_name(label: int) -> str:
    return LABEL_NAMES[label] if label else ""


def _fit_arteries(sets: Sequence[dict[str, Any]], data: Sequence[str]) -> ArteryModel | None:
    """The artery model fitted on the coronary candidates (matched to a reference lesion) of the collected sets."""
    rows = [(feature_columns(c["features"], ARTERY_FEATURES), c["artery"], c["coronary"])
            for c in sets]
    x = np.concatenate([f[m & (a != "")] for f, a, m in rows])
    y = np.concatenate([a[m & (a != "")] for _, a, m in rows])
    return fit_artery_model(x, y, {"data": list(data)})


def _check_folds(folds: Any) -> int:
    if isinstance(folds, bool) or not isinstance(folds, numbers.Integral) or folds == 1 or folds < 0:
        raise InputError("validation_folds", f"must be 0 (no cross-fitting) or an integer >= 2, got {folds!r}")
    return int(folds)


def _check_patients(patients: Sequence[str], folds: int, described: str) -> None:
    if folds and len(set(patients)) < 2:
        raise InputError(described, f"cross-fitting the lesion classifier needs at least 2 validation patients, got "
                         f"{len(set(patients))}: use validation_folds=0 (evaluate.json: inference_validation_folds)")


def _check_classifier_features(names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(str(n) for n in names)
    unknown = sorted(set(names) - set(LESION_FEATURES))
    repeated = sorted({n for n in names if names.count(n) > 1})
    if not names or unknown or repeated:
        raise InputError("classifier_features", f"must be distinct names of LESION_FEATURES, at least one; got "
                         f"{len(names)}, unknown {unknown}, repeated {repeated}")
    return names


def _fit_classifier(parts: Sequence[tuple[dict[str, Any], np.ndarray]], tree_params: Mapping[str, Any] | None,
                    hard_negative_weight: float, data: Sequence[str] | None = None,
                    features: Sequence[str] = CLASSIFIER_FEATURES) -> LesionClassifier:
    """The lesion classifier on ``features`` fitted on the candidates selected (boolean mask) from each collected
    set; with ``data`` (a description per set), its ``fitted_on`` says what it was fitted on."""
    x = np.concatenate([feature_columns(c["features"][m], features) for c, m in parts])
    y = np.concatenate([c["coronary"][m] for c, m in parts])
    if y.size and (y.all() or not y.any()):
        raise InputError("lesion classifier", f"needs coronary and other candidates to learn from, got {int(y.sum())} "
                         f"of {y.size} coronary among those it is fitted on (fit_candidates 'judged': those the "
                         "anatomy rule leaves to it; 'all': every candidate); give more training patients")
    weight = None
    if hard_negative_weight != 1.0:
        weight = np.concatenate([np.where(c["non_coronary"][m], float(hard_negative_weight), 1.0) for c, m in parts])
    fitted_on = None
    if data is not None:  # the final fit: every candidate of each set a classifier can be asked about
        fitted_on = {"data": list(data) if len(data) > 1 else data[0],
                     "n_scans": sum(c["n_scans"] for c, _ in parts),
                     "n_reference_lesions": sum(c["n_ref"] for c, _ in parts),
                     "n_aortic_or_valve": sum(int(c["non_coronary"][m].sum()) for c, m in parts),
                     "aortic_or_valve_weight": float(hard_negative_weight)}
    return fit_lesion_classifier(x, y, features, tree_params, fitted_on=fitted_on, sample_weight=weight)


def cross_fit_lesion_classifier(
    fit: dict[str, Any],
    val: dict[str, Any],
    folds: int = VALIDATION_FOLDS,
    tree_params: Mapping[str, Any] | None = None,
    hard_negative_weight: float = HARD_NEGATIVE_WEIGHT,
    data: Sequence[str] = ("fit data", "validation data"),
    features: Sequence[str] = CLASSIFIER_FEATURES,
) -> tuple[LesionClassifier, np.ndarray, int]:
    """The lesion classifier fitted on the ``fit`` and ``val`` candidates (as collected by `_collect`), and
    out-of-fold probabilities for the ``val`` candidates: validation patients are dealt into ``folds`` folds in
    order of appearance (one per patient when there are fewer), and each fold is scored by trees fitted on ``fit``
    and the other folds, so no patient's scans are on both sides. ``folds=0``: fitted on ``fit`` only, the ``val``
    probabilities come from that classifier. Only the candidates whose rows were computed (``computed``, when a set
    has it) are fitted on and scored; the others get NaN. ``data``: descriptions of the two sets, for ``fitted_on``;
    ``features``: the `LESION_FEATURES` the trees read. Returns (classifier, validation probabilities, folds used)."""
    folds = _check_folds(folds)
    features = _check_classifier_features(features)
    val_x = feature_columns(val["features"], features)
    rows = [c.get("computed", np.ones(c["patient"].size, dtype=bool)) for c in (fit, val)]
    p_val = np.full(rows[1].size, np.nan)  # NaN for the candidates no classifier is asked about
    if folds == 0:
        classifier = _fit_classifier([(fit, rows[0])], tree_params, hard_negative_weight, data[:1], features)
        p_val[rows[1]] = classifier.predict_proba(val_x[rows[1]])
        return classifier, p_val, 0
    _, first, group = np.unique(val["patient"], return_index=True, return_inverse=True)
    _check_patients(val["patient"], folds, "validation data")
    folds = min(folds, first.size)
    fold = np.argsort(np.argsort(first))[group] % folds  # patients in order of appearance, dealt in turn
    for k in range(folds):
        held = fold == k
        trees = _fit_classifier([(fit, rows[0]), (val, rows[1] & ~held)], tree_params, hard_negative_weight,
                                features=features)
        p_val[held & rows[1]] = trees.predict_proba(val_x[held & rows[1]])
    classifier = _fit_classifier([(fit, rows[0]), (val, rows[1])], tree_params, hard_negative_weight, data, features)
    return classifier, p_val, folds


@dataclass
class CalibrationConfig:
    """The options of `choose_thresholds`, grouped (each keyword of `choose_thresholds` / `calibrate` sets one).

    Data: ``split`` (the validation split), ``fit_data`` / ``fit_split`` (the lesion classifier's other patients;
    default: the manifest's training split), ``checkpoint`` (recorded with its sha256).
    Preprocessing (defaults: train.json's): ``hu_windows``, ``image_size``, ``in_channels``, ``field_of_view_mm``
    and ``field_of_view_centre`` (the slices' crop / pad in mm before resizing, and where it is centred: "image" or
    "heart"; None for no crop).
    CAM: ``cam_layer`` (default: the network spec's intermediate layer, stride <= 16), ``cam_method``,
    ``cam_gate_layer`` (gate by this shallow layer's LayerCAM; None: not), ``cam_score``, ``cam_pooling`` (a
    candidate's CAM score: the "max" or "mean" of the map over its pixels).
    Lesion classifier: ``lesion_classifier`` (fit one; False: the slice-and-CAM rule decides), ``tree_params``,
    ``classifier_features`` (the `LESION_FEATURES` the trees read; default `CLASSIFIER_FEATURES`),
    ``hard_negative_weight`` (weight of aortic / valve candidates, see HARD_NEGATIVE_WEIGHT), ``fit_candidates``
    ("judged": those it can be asked about, `classifier_judges`; "all": every candidate), ``validation_folds``
    (cross-fitting folds of the validation patients; 0 fits on ``fit_data`` only), ``lesion_pooling``
    ("component": a candidate is judged by its 3D component's area-weighted mean probability; "candidate": alone).
    Rule choice: ``f1_slack_lesions`` (rules within this many reference lesions' worth of the best F1 count as
    equal, and the one keeping the fewest aortic / valve candidates wins; None: F1 alone), ``slice_grid``,
    ``cam_grid``, ``lesion_grid``, ``scoring`` (candidate / scoring rules; default: train.json's HU threshold and
    minimum area).
    Running: ``device``, ``precision``, ``channels_last``, ``batch_size``, ``workers`` (processes sharing the fit
    data's scans, which do not run the network; None: the CPUs this process may use, at most
    `MAX_DEFAULT_WORKERS`), ``progress``.
    """

    split: str = "validation"
    checkpoint: str | Path | None = None
    hu_windows: Sequence[Sequence[float]] | None = None
    image_size: Sequence[int] | None = None
    in_channels: int | None = None
    field_of_view_mm: float | str | None = FROM_TRAINING
    field_of_view_centre: str = FROM_TRAINING
    cam_layer: str | None = None
    cam_method: str = "gradcam"
    cam_gate_layer: str | None = None
    cam_score: str = "normalised"
    cam_pooling: str = "max"
    lesion_classifier: bool = True
    fit_data: Manifest | str | Path | Sequence[Any] | None = None
    fit_split: str = "train"
    tree_params: Mapping[str, Any] | None = None
    classifier_features: Sequence[str] = CLASSIFIER_FEATURES
    hard_negative_weight: float = HARD_NEGATIVE_WEIGHT
    fit_candidates: str = "judged"
    validation_folds: int = VALIDATION_FOLDS
    f1_slack_lesions: float | None = 1.0
    lesion_pooling: str = LESION_POOLING
    scoring: ScoringConfig | None = None
    slice_grid: Sequence[float] | None = None
    cam_grid: Sequence[float] | None = None
    lesion_grid: Sequence[float] | None = None
    device: str | torch.device | None = None
    precision: str | None = None
    channels_last: bool | None = None
    batch_size: int = 16
    workers: int | None = None
    progress: bool = True


def _calibration_config(config: CalibrationConfig | None, options: Mapping[str, Any]) -> CalibrationConfig:
    names = {f.name for f in dataclasses.fields(CalibrationConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise InputError("calibrate", f"unknown options {unknown}; known: {sorted(names)}")
    return dataclasses.replace(config or CalibrationConfig(), **options)


def _with_training_defaults(c: CalibrationConfig, network_name: str) -> CalibrationConfig:
    """``c`` with train.json's preprocessing, the spec's CAM layer and the training's scoring rules filled in."""
    spec = network_spec(network_name)
    defaults = training_defaults()
    hu_windows = check_hu_windows(c.hu_windows if c.hu_windows is not None else defaults["hu_windows"])
    scoring = c.scoring or ScoringConfig(threshold_hu=float(defaults["calcium_threshold_hu"]),
                                         min_area_mm2=float(defaults["min_lesion_area_mm2"]))
    return dataclasses.replace(
        c, hu_windows=hu_windows,
        image_size=tuple(int(v) for v in (c.image_size if c.image_size is not None else defaults["image_size"])),
        in_channels=int(c.in_channels if c.in_channels is not None else len(hu_windows)),
        field_of_view_mm=defaults["field_of_view_mm"] if c.field_of_view_mm == FROM_TRAINING else c.field_of_view_mm,
        field_of_view_centre=(defaults["field_of_view_centre"] if c.field_of_view_centre == FROM_TRAINING
                              else c.field_of_view_centre),
        cam_layer=c.cam_layer or spec.cam_layers[0], scoring=scoring,
        precision=c.precision or default_precision(_device(c.device)))


def _probe(network: nn.Module, network_name: str, c: CalibrationConfig) -> Thresholds:
    """Thresholds holding the choices, which checks them (layer names, methods, windows, field of view, pooling,
    folds, slack) before any image is read."""
    if c.cam_score not in CAM_SCORES:
        raise InputError("cam_score", f"must be one of {list(CAM_SCORES)}, got {c.cam_score!r}")
    if c.scoring.is_3d:
        raise InputError("scoring", "candidate lesions are 2D components per axial slice: use a '2d-*' connectivity")
    probe = Thresholds(network_name=network_name, checkpoint="", checkpoint_sha256="", t_slice=0.5, t_cam=0.5,
                       cam_layer=c.cam_layer, cam_method=c.cam_method, cam_gate_layer=c.cam_gate_layer,
                       cam_score=c.cam_score, cam_pooling=c.cam_pooling, hu_windows=c.hu_windows,
                       image_size=c.image_size, in_channels=c.in_channels, field_of_view_mm=c.field_of_view_mm,
                       field_of_view_centre=c.field_of_view_centre, scoring=c.scoring.to_dict())
    validate_cam_layers(network, [c.cam_layer] + ([c.cam_gate_layer] if c.cam_gate_layer else []))
    check_lesion_pooling(c.lesion_pooling)
    _workers(c.workers)
    if c.lesion_classifier:
        if c.fit_candidates not in FIT_CANDIDATES:
            raise InputError("fit_candidates", f"must be one of {list(FIT_CANDIDATES)}, got {c.fit_candidates!r}")
        _check_folds(c.validation_folds)
        _check_classifier_features(c.classifier_features)
    slack = c.f1_slack_lesions
    if slack is not None and (isinstance(slack, bool) or not isinstance(slack, numbers.Real)
                              or not 0 <= slack < float("inf")):
        raise InputError("f1_slack_lesions", f"must be a number of lesions >= 0 or None, got {slack!r}")
    return probe


def _data_sets(data: Manifest | str | Path | Sequence[Any], c: CalibrationConfig) -> tuple[Any, Any]:
    """The validation data and the lesion classifier's fit data, checked for what the classifier needs."""
    if isinstance(data, (str, Path)):
        data = load_manifest(data)
    fit_data = c.fit_data
    if c.lesion_classifier and fit_data is None:
        if not isinstance(data, Manifest):
            raise InputError("fit_data", "the lesion classifier is fitted on training patients besides the validation "
                             "data: give fit_data (or a manifest), or lesion_classifier=False")
        fit_data = data
    if c.lesion_classifier and any(_are_records(d) for d in (data, fit_data)):
        raise InputError("data", "slice records carry neither the slice increment nor aortic / valve labels, which "
                         "the lesion classifier's features and fit need: give a manifest or (CTVolume, labels) "
                         "pairs, or lesion_classifier=False")
    return data, fit_data


def _collect_sets(network: nn.Module, probe: Thresholds, c: CalibrationConfig, data: Any, fit_data: Any
                  ) -> tuple[dict[str, Any] | None, dict[str, Any], str, str | None]:
    """The candidates of the fit data (with a lesion classifier) and of the validation data, each scan through the
    network once; returns (fit, validation, their descriptions)."""
    analyzer = SliceAnalyzer(network=network, hu_windows=probe.hu_windows, image_size=probe.image_size,
                             field_of_view_mm=probe.field_of_view_mm, field_of_view_centre=probe.field_of_view_centre,
                             cam_layer=c.cam_layer, cam_method=c.cam_method, cam_gate_layer=c.cam_gate_layer,
                             cam_score=c.cam_score, cam_pooling=c.cam_pooling, device=_device(c.device),
                             precision=c.precision, channels_last=True if c.channels_last is None
                             else bool(c.channels_last), batch_size=c.batch_size)
    config = c.scoring
    judged_by = c.lesion_pooling if c.lesion_classifier and c.fit_candidates == "judged" else None
    try:
        cases, patients, described = _cases(data, c.split)
        fit = fit_described = None
        if c.lesion_classifier:
            _check_patients(patients, c.validation_folds, described)  # before reading any image
            fit_cases, fit_patients, fit_described = _cases(fit_data, c.fit_split)
            # the trees read no network output (CLASSIFIER_FEATURES), and only what they can be asked about
            fit = _collect(fit_cases, len(fit_patients), analyzer, config, "fitting the lesion classifier", c.progress,
                           network=_reads_network(c.classifier_features), lesion_pooling=judged_by,
                           workers=_workers(c.workers))
        val = _collect(cases, len(patients), analyzer, config, "choosing thresholds", c.progress,
                       lesion_pooling=judged_by)
    finally:
        analyzer.close()
    if val["n_ref"] == 0:
        raise InputError(described, "no reference coronary lesions: thresholds cannot be chosen on this data")
    return fit, val, described, fit_described


MAX_DEFAULT_WORKERS = 8  # each worker holds about half a GB of one scan's working arrays


def _workers(workers: Any) -> int:
    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return min(cpus, MAX_DEFAULT_WORKERS)
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise InputError("workers", f"must be a positive integer or None, got {workers!r}")
    return int(workers)


def _reads_network(features: Sequence[str]) -> bool:
    """Whether lesion features of these names need the slice network's outputs (probabilities or CAM)."""
    return bool(set(features) & set(SLICE_NETWORK_FEATURES))


def _cam_grid(c: CalibrationConfig, cams: np.ndarray) -> Sequence[float]:
    if c.cam_grid is not None:
        return c.cam_grid
    if c.cam_score == "normalised":
        return DEFAULT_CAM_GRID
    finite = cams[np.isfinite(cams)]
    qs = np.quantile(finite, np.linspace(0, 1, 21)) if finite.size else np.zeros(1)
    return sorted({0.0, *(float(f"{q:.6g}") for q in qs)})


def _lesion_rule(val: dict[str, Any], p_lesion: np.ndarray, used_folds: int, c: CalibrationConfig,
                 slice_grid: Sequence[float], slack: float | None) -> dict[str, Any]:
    """(t_slice, t_lesion) chosen jointly on the pooled out-of-fold lesion probabilities, by the same grid search."""
    p_lesion = pool_probabilities(p_lesion, val["component"], val["area"], c.lesion_pooling)
    # the anatomy rule of `decide` holds here too: what it rejects is never kept, whatever its probability (and
    # what no classifier was asked about, NaN, is what it rejects)
    allowed = anatomy_allows(feature_columns(val["features"], ANATOMY_RULE_FEATURES))
    allowed &= tissue_rule(feature_columns(val["features"], TISSUE_RULE_FEATURES)) < 0
    p_lesion = np.where(allowed & ~np.isnan(p_lesion), p_lesion, -np.inf)
    found = grid_search(val["probability"], p_lesion, val["pairs"], val["n_ref"], slice_grid,
                        c.lesion_grid if c.lesion_grid is not None else DEFAULT_LESION_GRID, val["non_coronary"],
                        slack)
    t_lesion = found.pop("t_cam")
    grid = found["grid"]
    found["grid"] = {"t_slice": grid.pop("t_slice"), "t_lesion": grid.pop("t_cam"), **grid}
    return {"t_slice": found.pop("t_slice"), "t_lesion": t_lesion, "lesion_pooling": c.lesion_pooling,
            "lesion_probabilities": f"out of fold, {used_folds} folds by patient" if used_folds
            else "classifier fitted without the validation data", **found}


def _validation_record(val: dict[str, Any], c: CalibrationConfig, described: str, decision: str,
                       slack: float | None, chosen: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "data": described, "split": c.split, "n_scans": val["n_scans"], "n_slices": val["n_slices"],
        "n_reference_lesions": val["n_ref"], "n_reference_positive_slices": val["n_positive_slices"],
        "n_candidates": int(val["probability"].size), "precision": c.precision, "decision": decision,
        "tie_rule": ("highest F1; ties -> lower t_slice, then higher second threshold" if slack is None else
                     f"among F1 within {c.f1_slack_lesions:g} reference lesion(s) of the best ({slack:.4f}), the "
                     "fewest aortic / valve candidates kept, then the highest F1; ties -> lower t_slice, then higher "
                     "second threshold"),
        **chosen, **extra,
    }


def choose_thresholds(
    network: nn.Module,
    network_name: str,
    data: Manifest | str | Path | Sequence[Any],
    config: CalibrationConfig | None = None,
    **options: Any,
) -> Thresholds:
    """Choose the decision rule on the validation data by lesion-level F1 (see `grid_search`); return the
    `Thresholds`.

    Always: (t_slice, t_cam) by grid search. With ``lesion_classifier`` (the default): boosted trees fitted on the
    candidates of the fit data (default: the manifest's training patients) and of the validation data, their
    threshold ``t_lesion`` chosen on out-of-fold probabilities of the validation candidates
    (`cross_fit_lesion_classifier`), and the artery model fitted on the same coronary candidates; that classifier
    then decides, t_slice only marks positive slices.

    data: a manifest (its split's scans, which need reference labels or COCA XML), slice records as made by
    `slice_records` (their masks are the reference), or (CTVolume, labels) pairs. ``config`` / ``options``: a
    `CalibrationConfig`, and keyword overrides of its fields.
    """
    c = _with_training_defaults(_calibration_config(config, options), network_name)
    spec = network_spec(network_name)
    probe = _probe(network, spec.name, c)
    data, fit_data = _data_sets(data, c)
    fit, val, described, fit_described = _collect_sets(network, probe, c, data, fit_data)
    slack = None if c.f1_slack_lesions is None else float(c.f1_slack_lesions) / val["n_ref"]
    slice_grid = c.slice_grid if c.slice_grid is not None else DEFAULT_SLICE_GRID
    rule = grid_search(val["probability"], val["cam"], val["pairs"], val["n_ref"], slice_grid,
                       _cam_grid(c, val["cam"]), val["non_coronary"], slack)
    chosen, extra, classifier, artery_model = rule, {}, None, None
    if fit is not None:
        classifier, p_lesion, used_folds = cross_fit_lesion_classifier(
            fit, val, c.validation_folds, c.tree_params, c.hard_negative_weight, data=(fit_described, described),
            features=c.classifier_features)
        artery_model = _fit_arteries((fit, val), (fit_described, described))
        chosen = _lesion_rule(val, p_lesion, used_folds, c, slice_grid, slack)
        # the slice-and-CAM rule, for comparison and for `Thresholds.with_rule("slice-cam")`
        extra = {"slice_and_cam": {k: v for k, v in rule.items() if k != "grid"}, "slice_and_cam_grid": rule["grid"]}
    name = sha = ""
    if c.checkpoint is not None:
        name, sha = Path(c.checkpoint).name, file_sha256(c.checkpoint)
    decision = "lesion classifier" if classifier is not None else "slice and CAM thresholds"
    return dataclasses.replace(
        probe, checkpoint=name, checkpoint_sha256=sha, t_slice=chosen["t_slice"], t_cam=rule["t_cam"],
        lesion_classifier=classifier, artery_model=artery_model, t_lesion=chosen.get("t_lesion"),
        lesion_pooling=c.lesion_pooling if classifier is not None else "candidate",
        validation=_validation_record(val, c, described, decision, slack, chosen, extra),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def calibrate(
    manifest: Manifest | str | Path,
    output_dir: str | Path | None = None,
    network_name: str | None = None,
    config: CalibrationConfig | None = None,
    *,
    ckpt_dir: str | Path | None = None,
    checkpoint: str = CHECKPOINT_FILE,
    split: str | None = None,
    **kwargs: Any,
) -> Thresholds:
    """Load ``<ckpt_dir>/model.pt``, fit its lesion classifier on the manifest's training and validation splits and
    choose its thresholds on the validation split (cross-fitted; both need reference labels or COCA XML), write
    ``<ckpt_dir>/thresholds.json``; return the thresholds.

    ckpt_dir: defaults to ``<output_dir>/models`` (the training bundle's layout); give one of the two.
    network_name: defaults to train.json's ``network_name``. ``config`` (a `CalibrationConfig`, as evaluate.json's
    ``calibration_config`` builds it) and the keyword arguments, which override its fields (``split``: the validation
    split; hu_windows, image_size, in_channels, field_of_view_mm, field_of_view_centre, cam_layer, cam_method,
    cam_gate_layer, cam_score, cam_pooling, scoring, device, precision, ...), go to `choose_thresholds`: pass the
    values the model was trained with when they differ from train.json's.
    """
    if ckpt_dir is None:
        if output_dir is None:
            raise InputError("calibrate", "give output_dir (the training run's folder) or ckpt_dir")
        ckpt_dir = Path(output_dir) / "models"
    ckpt_dir = Path(ckpt_dir)
    ckpt = ckpt_dir / checkpoint
    if not ckpt.is_file():
        raise InputError(ckpt, "checkpoint not found (train the model first)")
    network_name = network_name or training_defaults()["network_name"]
    spec = network_spec(network_name)
    c = _calibration_config(config, {**kwargs, "checkpoint": ckpt, **({"split": split} if split else {})})
    windows = c.hu_windows
    in_channels = int(c.in_channels or (len(windows) if windows else training_defaults()["in_channels"]))
    network = create_network(spec.name, in_channels=in_channels, num_classes=2, for_checkpoint=True)
    load_checkpoint_weights(network, ckpt, spec.name)
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    thresholds = choose_thresholds(network, spec.name, manifest, c)
    save_thresholds(thresholds, ckpt_dir / THRESHOLDS_FILE)
    return thresholds
