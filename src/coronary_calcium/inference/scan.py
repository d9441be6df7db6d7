"""Inference on one CT volume, one way: candidates -> decision -> score -> result.

`infer_scan` checks the volume, makes its `Candidates` once (`find_candidates`: slice probabilities, CAMs,
candidate lesions, their CAM scores, and the lesion features of the candidates the classifier judges: on
positive slices, where the anatomy rule allows them), applies the thresholds' rule (`decide`), names arteries
from reference labels when given, and scores the kept candidates as they were found (`score_lesions`: nothing is
found twice). The `ScanResult` holds all of it; the writers (`outputs`) and the agreement report take it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coronary_calcium.errors import InputError
from coronary_calcium.inference.arteries import ArteryModel
from coronary_calcium.inference.candidates import PRELIMINARY_FEATURES, Candidates, find_candidates
from coronary_calcium.inference.decision import (
    ANATOMY_RULE_FEATURES,
    Decision,
    classifier_judges,
    decide,
    describe_rule,
)
from coronary_calcium.inference.model import InferenceModel
from coronary_calcium.inference.thresholds import Thresholds
from coronary_calcium.io.volume import CTVolume, check_ct_volume
from coronary_calcium.labels import CORONARY_LABELS, LABEL_NAMES, majority_label
from coronary_calcium.scoring.agatston import DEFAULT_RISK_SCHEME, UNKNOWN_ARTERY, Lesion, ScanScore, score_lesions

__all__ = ["ScanResult", "infer_scan"]


@dataclass
class ScanResult:
    """Everything inference found on one scan; `to_dict` is the JSON-ready ``result.json`` content.

    ``score.lesions`` are the kept candidates themselves (in candidate order); ``cam_slices`` / ``cam_maps`` are
    the maps shown in the overlays (positive slices and slices with a kept lesion).
    """

    scan_id: str
    source: str
    geometry: dict[str, Any]
    scan_meta: dict[str, Any]
    candidates: Candidates
    decision: Decision
    score: ScanScore
    cam_slices: list[int]
    cam_maps: np.ndarray | None
    model: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    reference: Any = None  # agreement_report.ScanReference, when the scan has one
    lesion_reference_labels: list[str] | None = None
    artery_probabilities: np.ndarray | None = None  # per kept lesion, the artery model's probability of its artery

    @property
    def probabilities(self) -> np.ndarray:
        return self.candidates.probabilities

    @property
    def cam_scores(self) -> list[float | None]:
        return self.candidates.cam_scores

    @property
    def kept(self) -> np.ndarray:
        return self.decision.kept

    @property
    def lesion_probabilities(self) -> np.ndarray | None:
        return self.decision.lesion_probabilities

    @property
    def component_probabilities(self) -> np.ndarray | None:
        return self.decision.component_probabilities

    @property
    def agatston(self) -> float:
        return float(self.score.agatston)

    @property
    def lesions(self) -> list[Lesion]:
        """Kept (coronary) lesions, with their voxel indices, in candidate order."""
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

    def _probabilities(self, c: int) -> dict[str, Any]:
        """A candidate's slice probability, CAM score and classifier probabilities, rounded for JSON."""
        d = self.decision
        cam = self.cam_scores[c]
        lesion = d.lesion_probabilities
        out: dict[str, Any] = {
            "slice_probability": round(float(self.probabilities[int(self.candidates[c].slices[0])]), 6),
            "cam_score": None if cam is None else round(float(cam), 6),
            "lesion_probability": None if lesion is None else _rounded(lesion[c]),
        }
        if d.component_probabilities is not None:
            out["component_probability"] = _rounded(d.component_probabilities[c])
        return out

    def lesion_records(self) -> list[dict[str, Any]]:
        """One JSON-ready record per kept lesion."""
        records = []
        for i, (lesion, c) in enumerate(zip(self.lesions, np.flatnonzero(self.kept)), start=1):
            record = {
                "id": i,
                "slice": int(lesion.slices[0]),
                "centroid_voxel_zyx": [round(float(v), 3) for v in lesion.centroid_zyx],
                "centroid_lps_mm": [round(v, 3) for v in self._position(lesion.centroid_zyx)],
                "area_mm2": float(lesion.total_area_mm2),
                "n_voxels": int(lesion.n_voxels),
                "peak_hu": float(lesion.peak_hu),
                "mean_hu": float(lesion.mean_hu),
                "weight": int(lesion.slice_weight[0]) if lesion.slice_weight else None,
                **self._probabilities(int(c)),
                "agatston": float(lesion.agatston),
                "volume_mm3": float(lesion.volume_mm3),
                "mass_mg": float(lesion.mass_mg),
                "artery": lesion.artery,
            }
            if self.artery_probabilities is not None:
                record["artery_probability"] = round(float(self.artery_probabilities[i - 1]), 6)
            if self.lesion_reference_labels is not None:
                record["reference_label"] = self.lesion_reference_labels[i - 1]
            records.append(record)
        return records

    def rejected_records(self) -> list[dict[str, Any]]:
        """Candidates not counted, with the reason (a probability or CAM score below its threshold, or the part of
        the anatomy rule broken); lesion_probability None where the classifier did not judge the candidate."""
        out = []
        for c in np.flatnonzero(~self.kept):
            lesion = self.candidates[int(c)]
            out.append({
                "slice": int(lesion.slices[0]),
                "centroid_voxel_zyx": [round(float(v), 2) for v in lesion.centroid_zyx],
                "area_mm2": round(float(lesion.total_area_mm2), 4),
                "peak_hu": float(lesion.peak_hu),
                **self._probabilities(int(c)),
                "reason": self.decision.reason(int(c)),
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
        score = self.score.to_dict()
        return {
            "scan_id": self.scan_id,
            "status": "ok",
            "source": self.source,
            "geometry": dict(self.geometry),
            "scan": self.scan_meta,
            "model": self.model,
            "scoring": self.score.config,
            "totals": self.totals(),
            "category": self.category,
            "category_scheme": DEFAULT_RISK_SCHEME,
            "categories": score["categories"],
            "per_artery": score["per_artery"],
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
        """The same result without CAM maps and the voxels of rejected candidates (what a batch keeps for its
        agreement report: the kept lesions keep theirs)."""
        self.cam_maps = None
        self.candidates.drop_voxels(keep=self.kept)
        return self


def _rounded(value: float) -> float | None:
    """A probability for JSON: None where it was not computed (NaN)."""
    return None if np.isnan(value) else round(float(value), 6)


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
    """Candidates, decision and score of ``volume`` (see the module docstring).

    labels: an optional reference label volume (project values) on the volume's grid; it only names the kept
    lesions' arteries (majority coronary label of their voxels) and is never used to keep or reject them.
    keep_maps: keep the CAM maps of the positive slices and of slices holding a kept lesion (for overlays).
    """
    start = time.perf_counter()
    scan_id = scan_id or str(volume.meta.get("scan_id") or volume.meta.get("source") or "scan")
    check_ct_volume(volume, volume.meta.get("source") or scan_id)
    if labels is not None and np.shape(labels) != volume.shape:
        raise InputError("labels", f"shape {np.shape(labels)} differs from the volume's {volume.shape}")
    t = model.thresholds
    config = t.scoring_config()
    with_classifier = t.lesion_classifier is not None
    candidates = find_candidates(volume.hu, volume.spacing, model.analyzer, config,
                                 cam_slices=lambda p: np.flatnonzero(p >= t.t_slice),
                                 slice_thickness=volume.slice_thickness, features=with_classifier,
                                 feature_subset=_judged_by_classifier(t) if with_classifier else None)
    decision = decide(candidates, t)
    kept = [les for les, keep in zip(candidates, decision.kept) if keep]
    reference_labels = None if labels is None else _reference_labels(kept, np.asarray(labels))
    artery_note, artery_probabilities = _name_arteries(kept, candidates, decision, t.artery_model, labels)
    score = score_lesions(kept, float(volume.spacing[0]), slice_thickness=volume.slice_thickness, config=config)

    # Overlays show the positive slices and any slice with a kept lesion.
    shown = set(np.flatnonzero(candidates.probabilities >= t.t_slice).tolist())
    shown |= set(candidates.slice_of[decision.kept].tolist())
    rows = [i for i, k in enumerate(candidates.cam_slices) if k in shown]
    notes = score.notes + [describe_rule(t, model.analyzer.cam_key)] + candidates.notes
    kvp = volume.meta.get("kvp")
    if kvp not in (None, "") and float(kvp) != float(config.kvp):
        notes.append(f"scan acquired at {float(kvp):g} kVp but scored with the {config.threshold:g} HU threshold the "
                     f"model was calibrated with ({float(config.kvp):g} kVp rule)")
    notes.append(artery_note)
    return ScanResult(
        scan_id=scan_id,
        source=str(volume.meta.get("source", "")),
        geometry=_geometry(volume),
        scan_meta={k: volume.meta.get(k) for k in _SCAN_META_KEYS if k in volume.meta},
        candidates=candidates,
        decision=decision,
        score=score,
        cam_slices=[candidates.cam_slices[i] for i in rows],
        cam_maps=candidates.cam_maps[rows] if keep_maps else None,
        model=model.provenance(),
        notes=notes,
        seconds=time.perf_counter() - start,
        lesion_reference_labels=reference_labels,
        artery_probabilities=artery_probabilities,
    )


def _judged_by_classifier(t: Thresholds) -> Callable[[Candidates], np.ndarray]:
    """Which candidates need their lesion features: those on positive slices that the anatomy rule allows (the
    others are rejected whatever the classifier says) and, with component pooling, the rest of their 3D components.
    Every candidate when the rule reads a feature that is not known before (`PRELIMINARY_FEATURES`)."""

    def judged(found: Candidates) -> np.ndarray:
        if not set(ANATOMY_RULE_FEATURES) <= set(PRELIMINARY_FEATURES):
            return np.ones(len(found), dtype=bool)
        return classifier_judges(found, found.slice_probabilities >= t.t_slice, t.lesion_pooling)

    return judged


def _reference_labels(lesions: list[Lesion], labels: np.ndarray) -> list[str]:
    """Each lesion's majority reference label of any kind (an artery, aortic, valve, background), for the records;
    its majority coronary label goes to ``lesion.label``."""
    flat = labels.reshape(-1)
    out = []
    for lesion in lesions:
        values = flat[np.asarray(lesion.voxels)]
        lesion.label = majority_label(values, CORONARY_LABELS)
        any_label = majority_label(values)
        out.append(LABEL_NAMES.get(any_label, str(any_label)))
    return out


def _name_arteries(lesions: list[Lesion], candidates: Candidates, decision: Decision,
                   model: ArteryModel | None, labels: np.ndarray | None) -> tuple[str, np.ndarray | None]:
    """Name each kept lesion's artery: by the thresholds' artery model from its place relative to the heart, else
    from the reference labels (majority coronary label, `_reference_labels`), else "unknown". Returns the note and,
    with the model, each lesion's artery probability."""
    if model is not None and candidates.heart_found and candidates.features is not None:
        names, probability = model.assign(candidates.feature_columns(model.features)[decision.kept])
        for lesion, name in zip(lesions, names):
            lesion.artery = name
        beside = "; the reference labels are recorded beside" if labels is not None else ""
        return ("arteries assigned by the artery model from each lesion's position relative to the heart centre "
                f"(artery_probability per lesion){beside}"), probability
    for lesion in lesions:
        lesion.artery = LABEL_NAMES[lesion.label] if labels is not None and lesion.label else UNKNOWN_ARTERY
    if labels is not None:
        return "arteries named from the reference labels (majority coronary label of each lesion's voxels)", None
    if model is not None:
        return "arteries unknown: no heart found, so the artery model has no position to read", None
    return "arteries unknown: no artery model in the thresholds and no reference labels", None
