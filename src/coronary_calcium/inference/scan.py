"""Inference on one CT volume: slice probabilities, CAMs, candidate lesions, keep / reject, Agatston scores.

Candidates are the Agatston lesions of the whole slice (2D components of voxels >= the HU threshold with area >=
the minimum, `find_lesions` without labels): coronary calcium, bone, aortic and valve calcium alike. A candidate is
kept as coronary calcium when its slice's probability >= ``t_slice`` and the checkpoint's lesion classifier gives
it a probability >= ``t_lesion`` (from its `lesion_features`: slice probability, CAM, size, density, 3D extent,
position, surrounding tissue), or, for
checkpoints calibrated without one, when its slice's probability >= ``t_slice`` and its CAM score (the maximum or
mean of the positive class's CAM inside its pixels) >= ``t_cam``; the scan is then scored with `score_scan`
restricted to the kept candidates' voxels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coronary_calcium.errors import InputError
from coronary_calcium.inference.lesion_classifier import pool_probabilities
from coronary_calcium.inference.lesion_features import (
    LESION_FEATURES,
    candidate_components,
    dense_components,
    lesion_features,
)
from coronary_calcium.inference.model import InferenceModel, SliceAnalyzer
from coronary_calcium.inference.thresholds import CAM_POOLINGS
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.labels import CORONARY_LABELS, LABEL_NAMES
from coronary_calcium.scoring.agatston import (
    DEFAULT_RISK_SCHEME,
    UNKNOWN_ARTERY,
    Lesion,
    ScanScore,
    ScoringConfig,
    find_lesions,
    score_scan,
)

__all__ = ["ScanResult", "analyse_volume", "candidate_cam_scores", "check_volume", "infer_scan"]


def check_volume(volume: CTVolume, item: object = "volume") -> None:
    """Refuse what cannot be scored: no 3D array, unusable spacing, non-finite values, not CT, not HU."""
    hu = np.asarray(volume.hu)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise InputError(item, f"expected a (Z, Y, X) volume, got shape {hu.shape}")
    try:
        spacing = [float(s) for s in volume.spacing]
    except (TypeError, ValueError):
        spacing = []
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(item, f"no usable voxel spacing {volume.spacing!r}: scoring needs the pixel spacing and "
                         "an even slice increment")
    modality = volume.meta.get("modality")
    if modality not in (None, "", "CT"):
        raise InputError(item, f"modality {modality}, not CT")
    if not np.isfinite(hu).all():
        raise InputError(item, "the image holds NaN or infinite values")
    if float(hu.min()) >= 0.0:
        raise InputError(item, f"not a CT image in Hounsfield units: no value below 0 (range {float(hu.min()):g} .. "
                         f"{float(hu.max()):g}); air is -1000 HU and fat about -100 HU")


def candidate_cam_scores(
    candidates: Sequence[Lesion], shape: Sequence[int], maps: np.ndarray, map_slices: Sequence[int],
    pooling: str = "max",
) -> list[float | None]:
    """Per candidate (2D lesion), the maximum (``pooling="max"``) or mean ("mean") of its slice's CAM map inside its
    pixels; None where no map. The mean keeps a large bone component that only touches the map's hot spot low."""
    if pooling not in CAM_POOLINGS:
        raise InputError("cam_pooling", f"must be one of {list(CAM_POOLINGS)}, got {pooling!r}")
    reduce = np.max if pooling == "max" else np.mean
    where = {int(k): i for i, k in enumerate(map_slices)}
    plane = int(shape[1]) * int(shape[2])
    scores: list[float | None] = []
    for lesion in candidates:
        i = where.get(int(lesion.slices[0]))
        if i is None or lesion.voxels is None:
            scores.append(None)
            continue
        scores.append(float(reduce(maps[i].ravel()[np.asarray(lesion.voxels) % plane])))
    return scores


def analyse_volume(
    hu: np.ndarray,
    spacing: Sequence[float],
    analyzer: SliceAnalyzer,
    config: ScoringConfig,
    *,
    cam_slices: Sequence[int] | Callable[[np.ndarray], Sequence[int]] | None = None,
    slice_thickness: float | None = None,
    features: bool = False,
) -> dict[str, Any]:
    """Slice probabilities, candidate lesions, and CAM maps / scores on ``cam_slices``.

    ``cam_slices``: slice indices, a function of the slice probabilities giving them, or None for every slice
    holding a candidate (what calibration needs). Every slice runs through the CAM once (its forward pass gives
    the probabilities); only the chosen slices' maps are resized to the original matrix and kept.
    Returns ``probabilities``, ``candidates``, ``cam_slices``, ``cam_maps`` and ``cam_scores``; with ``features``
    also ``features``, the candidates' `lesion_features` (the CAM is then mapped back on every candidate slice
    too, and ``cam_slices`` may hold more slices than asked), and ``components``, each candidate's 3D component id.
    """
    probs, small = analyzer.probabilities_and_cams(hu, pixel_spacing=spacing)
    candidates = find_lesions(hu, spacing, slice_thickness=slice_thickness, config=config)
    if callable(cam_slices):
        cam_slices = cam_slices(probs)
    candidate_slices = {int(les.slices[0]) for les in candidates}
    if cam_slices is None:
        cam_slices = candidate_slices
    cam_slices = sorted({int(k) for k in cam_slices} | (candidate_slices if features else set()))
    maps = analyzer.to_original(small[cam_slices], np.shape(hu), spacing)
    found = {"probabilities": probs, "candidates": candidates, "cam_slices": cam_slices, "cam_maps": maps}
    if features:
        components = dense_components(hu, config)
        found["components"] = candidate_components(components, candidates)
        found["features"] = lesion_features(hu, spacing, candidates, probs, maps, cam_slices, config, components)
        # the features hold each candidate's CAM mean and maximum already
        column = LESION_FEATURES.index("cam_mean" if analyzer.cam_pooling == "mean" else "cam_max")
        found["cam_scores"] = [float(v) for v in found["features"][:, column]]
    else:
        found["cam_scores"] = candidate_cam_scores(candidates, np.shape(hu), maps, cam_slices, analyzer.cam_pooling)
    return found


def _majority(values: np.ndarray, allowed: Sequence[int] | None = None) -> int:
    """Most frequent value (ties -> the lower), among ``allowed`` if given; 0 when none."""
    values = np.asarray(values, dtype=np.int64)
    if allowed is not None:
        values = values[np.isin(values, allowed)]
    if values.size == 0:
        return 0
    counts = np.bincount(values)
    return int(np.argmax(counts))


@dataclass
class ScanResult:
    """Everything inference found on one scan; `to_dict` is the JSON-ready ``result.json`` content."""

    scan_id: str
    source: str
    geometry: dict[str, Any]
    scan_meta: dict[str, Any]
    probabilities: np.ndarray
    candidates: list[Lesion]
    cam_scores: list[float | None]
    kept: np.ndarray
    score: ScanScore
    cam_slices: list[int]
    cam_maps: np.ndarray | None
    model: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    lesion_probabilities: np.ndarray | None = None  # per candidate, with a lesion classifier
    component_probabilities: np.ndarray | None = None  # per candidate, with lesion_pooling "component"
    reference: Any = None  # agreement_report.ScanReference, when the scan has one
    lesion_reference_labels: list[str] | None = None
    _lesion_candidate: list[int] = field(default_factory=list, repr=False)

    @property
    def agatston(self) -> float:
        return float(self.score.agatston)

    @property
    def lesions(self) -> list[Lesion]:
        """Kept (coronary) lesions, with their voxel indices, in `score_scan` order."""
        return self.score.lesions

    @property
    def category(self) -> str:
        return self.score.categories[DEFAULT_RISK_SCHEME]

    @property
    def positive_slices(self) -> list[int]:
        return [int(k) for k in np.flatnonzero(self.probabilities >= self.model["t_slice"])]

    def lesion_mask(self) -> np.ndarray:
        """uint16 (Z, Y, X): lesion id (1..n, the order of ``lesions``) on kept voxels, 0 elsewhere."""
        mask = np.zeros(self.geometry["shape_zyx"], dtype=np.uint16)
        flat = mask.reshape(-1)
        for i, lesion in enumerate(self.lesions, start=1):
            flat[np.asarray(lesion.voxels)] = i
        return mask

    def _position(self, zyx: Sequence[float]) -> list[float]:
        affine = np.asarray(self.geometry["affine_lps"], dtype=float)
        z, y, x = (float(c) for c in zyx)
        return [float(v) for v in (affine @ np.array([x, y, z, 1.0]))[:3]]

    def lesion_records(self) -> list[dict[str, Any]]:
        """One JSON-ready record per kept lesion."""
        records = []
        for i, (lesion, c) in enumerate(zip(self.lesions, self._lesion_candidate), start=1):
            k = int(lesion.slices[0])
            record = {
                "id": i,
                "slice": k,
                "centroid_voxel_zyx": [round(float(v), 3) for v in lesion.centroid_zyx],
                "centroid_lps_mm": [round(v, 3) for v in self._position(lesion.centroid_zyx)],
                "area_mm2": float(lesion.total_area_mm2),
                "n_voxels": int(lesion.n_voxels),
                "peak_hu": float(lesion.peak_hu),
                "mean_hu": float(lesion.mean_hu),
                "weight": int(lesion.slice_weight[0]) if lesion.slice_weight else None,
                "slice_probability": float(self.probabilities[k]),
                "cam_score": self.cam_scores[c],
                "lesion_probability": self._lesion_probability(c),
                **self._component_probability(c),
                "agatston": float(lesion.agatston),
                "volume_mm3": float(lesion.volume_mm3),
                "mass_mg": float(lesion.mass_mg),
                "artery": lesion.artery,
            }
            if self.lesion_reference_labels is not None:
                record["reference_label"] = self.lesion_reference_labels[i - 1]
            records.append(record)
        return records

    def _lesion_probability(self, c: int) -> float | None:
        return None if self.lesion_probabilities is None else round(float(self.lesion_probabilities[c]), 6)

    def _component_probability(self, c: int) -> dict[str, float]:
        if self.component_probabilities is None:
            return {}
        return {"component_probability": round(float(self.component_probabilities[c]), 6)}

    def rejected_records(self) -> list[dict[str, Any]]:
        """Candidates not counted, with the reason (a probability or CAM score below its threshold)."""
        t_slice, t_cam, t_lesion = self.model["t_slice"], self.model["t_cam"], self.model.get("t_lesion")
        out = []
        for c, (lesion, cam, kept) in enumerate(zip(self.candidates, self.cam_scores, self.kept)):
            if kept:
                continue
            k = int(lesion.slices[0])
            p = float(self.probabilities[k])
            if p < t_slice:
                reason = f"slice probability < {t_slice:g}"
            elif self.component_probabilities is not None:
                reason = f"component probability < {t_lesion:g}"
            elif self.lesion_probabilities is not None:
                reason = f"lesion probability < {t_lesion:g}"
            else:
                reason = f"CAM score < {t_cam:g}"
            out.append({
                "slice": k,
                "centroid_voxel_zyx": [round(float(v), 2) for v in lesion.centroid_zyx],
                "area_mm2": round(float(lesion.total_area_mm2), 4),
                "peak_hu": float(lesion.peak_hu),
                "slice_probability": round(p, 6),
                "cam_score": None if cam is None else round(float(cam), 6),
                "lesion_probability": self._lesion_probability(c),
                **self._component_probability(c),
                "reason": reason,
            })
        return out

    def totals(self) -> dict[str, Any]:
        return {
            "agatston": float(self.score.agatston),
            "volume_mm3": float(self.score.volume_mm3),
            "mass_mg": float(self.score.mass_mg),
            "n_lesions": len(self.score.lesions),
        }

    def to_dict(self) -> dict[str, Any]:
        """The ``result.json`` content (files are added by the writer)."""
        geometry = {k: v for k, v in self.geometry.items()}
        return {
            "scan_id": self.scan_id,
            "status": "ok",
            "source": self.source,
            "geometry": geometry,
            "scan": self.scan_meta,
            "model": self.model,
            "scoring": self.score.config,
            "totals": self.totals(),
            "category": self.category,
            "category_scheme": DEFAULT_RISK_SCHEME,
            "categories": dict(self.score.categories),
            "per_artery": {
                a: {k: (int(v) if k == "n_lesions" else float(v)) for k, v in d.items()}
                for a, d in self.score.per_artery.items()
            },
            "n_slices": int(self.probabilities.size),
            "slice_probabilities": [round(float(p), 6) for p in self.probabilities],
            "positive_slices": self.positive_slices,
            "n_candidates": len(self.candidates),
            "lesions": self.lesion_records(),
            "rejected_candidates": self.rejected_records(),
            "notes": list(self.notes),
            "seconds": round(float(self.seconds), 3),
        }

    def slim(self) -> ScanResult:
        """The same result without CAM maps and candidate voxels (what a batch keeps for its agreement report)."""
        self.cam_maps = None
        for lesion in self.candidates:
            lesion.voxels = None
        return self


def _geometry(volume: CTVolume) -> dict[str, Any]:
    return {
        "shape_zyx": [int(s) for s in volume.shape],
        "spacing_mm": [float(s) for s in volume.spacing],
        "spacing_order": "slice increment, row, column",
        "origin_lps_mm": [float(v) for v in volume.origin],
        "direction": np.asarray(volume.direction, dtype=float).round(8).tolist(),
        "slice_thickness_mm": None if volume.slice_thickness is None else float(volume.slice_thickness),
        "affine_lps": volume.affine_lps().round(8).tolist(),
    }


_SCAN_META_KEYS = ("patient_id", "series_uid", "study_uid", "modality", "kvp", "manufacturer", "convolution_kernel",
                   "series_description", "series_selection", "format", "original_axcodes")


def infer_scan(
    volume: CTVolume,
    model: InferenceModel,
    *,
    labels: np.ndarray | None = None,
    scan_id: str | None = None,
    keep_maps: bool = True,
) -> ScanResult:
    """Run the classifier, CAM and keep / reject rule on ``volume`` and score the kept lesions.

    labels: an optional reference label volume (project values) on the volume's grid; it only names the kept
    lesions' arteries (majority coronary label of their voxels) and is never used to keep or reject them.
    keep_maps: keep the CAM maps of the positive slices and of slices holding a kept lesion (for overlays).
    """
    start = time.perf_counter()
    scan_id = scan_id or str(volume.meta.get("scan_id") or volume.meta.get("source") or "scan")
    check_volume(volume, volume.meta.get("source") or scan_id)
    t = model.thresholds
    config = t.scoring_config()
    classifier = t.lesion_classifier
    found = analyse_volume(volume.hu, volume.spacing, model.analyzer, config,
                           cam_slices=lambda p: np.flatnonzero(p >= t.t_slice),
                           slice_thickness=volume.slice_thickness, features=classifier is not None)
    probs = found["probabilities"]
    candidates: list[Lesion] = found["candidates"]
    cam_scores: list[float | None] = found["cam_scores"]
    slice_of = np.array([int(les.slices[0]) for les in candidates], dtype=np.int64)
    on_positive = probs[slice_of] >= t.t_slice
    lesion_probabilities = component_probabilities = None
    if classifier is not None:
        columns = [LESION_FEATURES.index(name) for name in classifier.features]
        lesion_probabilities = classifier.predict_proba(found["features"][:, columns])
        decided_by = lesion_probabilities
        if t.lesion_pooling == "component":
            areas = np.array([les.total_area_mm2 for les in candidates], dtype=np.float64)
            component_probabilities = pool_probabilities(lesion_probabilities, found["components"], areas)
            decided_by = component_probabilities
        kept = on_positive & (decided_by >= t.t_lesion)
    else:
        kept = on_positive & np.array([cam is not None and cam >= t.t_cam for cam in cam_scores], dtype=bool)
    # Overlays show the positive slices and any slice with a kept lesion.
    shown = set(np.flatnonzero(probs >= t.t_slice).tolist()) | set(slice_of[kept].tolist())
    rows = [i for i, k in enumerate(found["cam_slices"]) if k in shown]
    cam_slices = [found["cam_slices"][i] for i in rows]
    cam_maps = found["cam_maps"][rows] if keep_maps else None

    mask = np.zeros(volume.shape, dtype=bool)
    flat = mask.reshape(-1)
    for lesion, keep in zip(candidates, kept):
        if keep:
            flat[np.asarray(lesion.voxels)] = True
    score = score_scan(volume.hu, volume.spacing, mask=mask, slice_thickness=volume.slice_thickness, config=config)
    first_voxel = {int(les.voxels[0]): i for i, les in enumerate(candidates)}
    lesion_candidate = [first_voxel[int(les.voxels[0])] for les in score.lesions]

    notes = [n for n in score.notes if not n.startswith("no artery labels")]
    found_where = f"candidate lesions (>= {config.threshold:g} HU, >= {config.min_area_mm2:g} mm^2 per slice)"
    if classifier is not None:
        pooled = (", averaged over its 3D component weighted by area," if t.lesion_pooling == "component" else "")
        notes.append(f"coronary calcium = {found_where} on slices with probability >= {t.t_slice:g} whose "
                     f"lesion-classifier probability (boosted trees on {len(classifier.features)} features: slice "
                     f"probability, {t.cam_method} at {model.analyzer.cam_key}, size, density, 3D extent, position, "
                     f"surrounding tissue{', bordering lumen' if 'lumen_mm' in classifier.features else ''})"
                     f"{pooled} is >= {t.t_lesion:g}; non-coronary calcium is excluded by the models alone")
    else:
        notes.append(
            f"coronary calcium = {found_where} on slices with probability >= {t.t_slice:g} whose CAM score "
            f"({t.cam_pooling} of the {t.cam_score} {t.cam_method} at {model.analyzer.cam_key}) is >= {t.t_cam:g}; "
            "non-coronary calcium is excluded by the model alone"
        )
    kvp = volume.meta.get("kvp")
    if kvp not in (None, "") and float(kvp) != float(config.kvp):
        notes.append(f"scan acquired at {float(kvp):g} kVp but scored with the {config.threshold:g} HU threshold the "
                     f"model was calibrated with ({float(config.kvp):g} kVp rule)")
    reference_labels = None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != volume.shape:
            raise InputError("labels", f"shape {labels.shape} differs from the volume's {volume.shape}")
        score, reference_labels = _name_arteries(score, labels)
        notes.append("arteries named from the reference labels (majority coronary label of each lesion's voxels)")
    else:
        notes.append("arteries unknown: no reference labels")

    return ScanResult(
        scan_id=scan_id,
        source=str(volume.meta.get("source", "")),
        geometry=_geometry(volume),
        scan_meta={k: volume.meta.get(k) for k in _SCAN_META_KEYS if k in volume.meta},
        probabilities=probs,
        candidates=candidates,
        cam_scores=cam_scores,
        kept=kept,
        score=score,
        cam_slices=cam_slices,
        cam_maps=cam_maps,
        lesion_probabilities=lesion_probabilities,
        component_probabilities=component_probabilities,
        model=model.provenance(),
        notes=notes,
        seconds=time.perf_counter() - start,
        lesion_reference_labels=reference_labels,
        _lesion_candidate=lesion_candidate,
    )


def _name_arteries(score: ScanScore, labels: np.ndarray) -> tuple[ScanScore, list[str]]:
    """Name each kept lesion's artery from the reference labels; recompute the per-artery totals."""
    flat = labels.reshape(-1)
    per_artery: dict[str, dict[str, float | int]] = {
        a: {"agatston": 0.0, "volume_mm3": 0.0, "mass_mg": 0.0, "n_lesions": 0}
        for a in [LABEL_NAMES[v] for v in CORONARY_LABELS] + [UNKNOWN_ARTERY]
    }
    reference_labels = []
    for lesion in score.lesions:
        values = flat[np.asarray(lesion.voxels)]
        label = _majority(values, CORONARY_LABELS)
        lesion.label = label
        lesion.artery = LABEL_NAMES[label] if label else UNKNOWN_ARTERY
        reference_labels.append(LABEL_NAMES.get(_majority(values), str(_majority(values))))
        d = per_artery[lesion.artery]
        d["agatston"] += lesion.agatston
        d["volume_mm3"] += lesion.volume_mm3
        d["mass_mg"] += lesion.mass_mg
        d["n_lesions"] += 1
    score.per_artery = per_artery
    return score, reference_labels
