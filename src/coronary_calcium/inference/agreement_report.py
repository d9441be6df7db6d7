"""Agreement of inference results with the references of a manifest (label volumes, COCA XML or truth JSON).

Per scan: the reference Agatston (from the label volume or COCA XML scored with the same rules, else the truth
JSON's ``agatston``), the reference coronary lesions (`find_lesions` with the labels), lesion matching
(`match_lesions`) and the kept lesions lying on aortic / valve reference voxels (labels 5 / 6: non-coronary calcium
counted as coronary). Over the scans: `score_agreement` (ICC(2,1), Pearson, Spearman, Bland-Altman, linearly
weighted kappa and confusion matrix per risk scheme, accuracy at 0 / 100 / 400), pooled lesion figures
(`pool_lesion_matches`: sensitivity, PPV, F1 by count and volume, false positives per scan).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coronary_calcium.errors import InputError
from coronary_calcium.inference.thresholds import scoring_config_from_dict
from coronary_calcium.io.images import read_image
from coronary_calcium.io.manifest import Manifest, ScanEntry, load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.labels import AORTIC, VALVE
from coronary_calcium.scoring.agatston import (
    DEFAULT_RISK_SCHEME,
    RISK_SCHEMES,
    Lesion,
    ScoringConfig,
    find_lesions,
    risk_category,
)
from coronary_calcium.scoring.agreement import match_lesions, pool_lesion_matches, score_agreement

__all__ = ["Prediction", "ScanReference", "evaluate_agreement", "scan_reference", "sanitize_scan_id"]

NON_CORONARY_LABELS = (AORTIC, VALVE)


def sanitize_scan_id(scan_id: str) -> str:
    """A scan id usable as a folder name: characters other than letters, digits, '.', '_' and '-' become '_'."""
    out = "".join(c if c.isalnum() or c in "._-" else "_" for c in str(scan_id)).strip(".")
    return out or "scan"


@dataclass
class ScanReference:
    """A scan's reference: its Agatston and, from a label volume or COCA XML, its coronary lesions (with voxels)
    and the flat indices of its aortic / valve voxels (None when the reference cannot hold them)."""

    source: str
    agatston: float
    lesions: list[Lesion] | None = None
    non_coronary: np.ndarray | None = None


@dataclass
class Prediction:
    """What the agreement needs of one scan's inference: its id, Agatston and kept lesions (with voxels)."""

    scan_id: str
    agatston: float
    lesions: list[Lesion]
    reference: ScanReference | None = None


def _truth_agatston(path: Path) -> float:
    try:
        value = json.loads(Path(path).read_text())["agatston"]
        return float(value)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"truth JSON without a numeric 'agatston' ({exc})") from None


def scan_reference(
    volume: CTVolume | None,
    labels: np.ndarray | None,
    *,
    truth: str | Path | None = None,
    config: ScoringConfig = ScoringConfig(),
    source: str = "labels",
) -> ScanReference | None:
    """The reference of one scan from its label volume (preferred) or its truth JSON; None without either."""
    if labels is not None and volume is not None:
        lesions = find_lesions(volume.hu, volume.spacing, labels=labels, slice_thickness=volume.slice_thickness,
                               config=config)
        agatston = float(sum(les.agatston for les in lesions))
        non_coronary = None
        if source == "labels":
            non_coronary = np.flatnonzero(np.isin(labels, NON_CORONARY_LABELS).reshape(-1))
        return ScanReference(source=source, agatston=agatston, lesions=lesions, non_coronary=non_coronary)
    if truth is not None:
        return ScanReference(source="truth", agatston=_truth_agatston(Path(truth)))
    return None


def _entry_reference(entry: ScanEntry, config: ScoringConfig) -> ScanReference | None:
    if entry.labels is None and entry.coca_xml is None and entry.truth is None:
        return None
    if entry.labels is None and entry.coca_xml is None:
        return scan_reference(None, None, truth=entry.truth, config=config)
    volume, labels = read_scan(entry)
    source = "labels" if entry.labels is not None else "coca_xml"
    return scan_reference(volume, labels, truth=entry.truth, config=config, source=source)


def _predictions_from_dir(folder: Path) -> tuple[list[Prediction], ScoringConfig | None]:
    """Predictions read back from an inference output folder (result.json + lesions.nii.gz per scan)."""
    predictions, config = [], None
    for result_file in sorted(folder.glob("*/result.json")):
        payload = json.loads(result_file.read_text())
        if payload.get("status") != "ok":
            continue
        config = config or scoring_config_from_dict(payload["scoring"])
        ids = np.rint(read_image(result_file.parent / payload["files"]["lesion_mask"]).hu).astype(np.int64)
        flat = ids.reshape(-1)
        order = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[order], np.arange(len(payload["lesions"]) + 2))
        lesions = []
        for rec in payload["lesions"]:
            i = int(rec["id"])
            lesions.append(Lesion(
                label=0, artery=rec["artery"], slices=[rec["slice"]], area_mm2=[rec["area_mm2"]],
                peak_hu=rec["peak_hu"], mean_hu=rec["mean_hu"], volume_mm3=rec["volume_mm3"], mass_mg=rec["mass_mg"],
                agatston=rec["agatston"], centroid_zyx=tuple(rec["centroid_voxel_zyx"]), n_voxels=rec["n_voxels"],
                voxels=np.sort(order[bounds[i] : bounds[i + 1]]),
            ))
        predictions.append(Prediction(scan_id=payload["scan_id"], agatston=float(payload["totals"]["agatston"]),
                                      lesions=lesions))
    return predictions, config


def _as_prediction(item: Any) -> Prediction:
    if isinstance(item, Prediction):
        return item
    if all(hasattr(item, a) for a in ("scan_id", "agatston", "lesions")):
        return Prediction(scan_id=item.scan_id, agatston=float(item.agatston), lesions=list(item.lesions),
                          reference=getattr(item, "reference", None))
    raise InputError("results", f"expected ScanResult or Prediction objects, got {type(item).__name__}")


def _scan_config(item: Any) -> ScoringConfig | None:
    score = getattr(item, "score", None)
    if score is not None and isinstance(getattr(score, "config", None), dict):
        return scoring_config_from_dict(score.config)
    return None


def _match_summary(match: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in match.items() if k not in ("matches", "false_positive_indices")}


def evaluate_agreement(
    results: str | Path | Iterable[Any],
    manifest: Manifest | str | Path,
    *,
    config: ScoringConfig | None = None,
) -> dict[str, Any]:
    """Agreement of predictions with the manifest's references, JSON-ready.

    results: `ScanResult` / `Prediction` objects, or an inference output folder (read back from its result.json
    and lesions.nii.gz files). Results are paired with manifest scans by scan id. config: the scoring rules for
    the references (default: the rules the results were scored with).
    """
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    if isinstance(results, (str, Path)):
        predictions, dir_config = _predictions_from_dir(Path(results))
        config = config or dir_config
    else:
        items = list(results)
        predictions = [_as_prediction(r) for r in items]
        if config is None:
            config = next((c for c in map(_scan_config, items) if c is not None), None)
    config = config or ScoringConfig()
    entries = {sanitize_scan_id(s.scan_id): s for s in manifest.scans}

    scans: list[dict[str, Any]] = []
    refs: list[float] = []
    preds: list[float] = []
    matches: list[dict[str, Any]] = []
    nc_lesions = nc_scans = nc_available = 0
    nc_agatston = nc_volume = 0.0
    unpaired: list[str] = []
    notes: list[str] = []
    for p in predictions:
        entry = entries.get(sanitize_scan_id(p.scan_id))
        reference = p.reference
        if reference is None and entry is not None:
            try:
                reference = _entry_reference(entry, config)
            except InputError as exc:  # one unreadable reference must not sink the whole report
                notes.append(f"scan {p.scan_id}: reference not used: {exc}")
        if reference is None:
            unpaired.append(p.scan_id)
            continue
        row: dict[str, Any] = {
            "scan_id": p.scan_id,
            "reference_source": reference.source,
            "reference_agatston": reference.agatston,
            "predicted_agatston": p.agatston,
            "reference_category": risk_category(reference.agatston, DEFAULT_RISK_SCHEME),
            "predicted_category": risk_category(p.agatston, DEFAULT_RISK_SCHEME),
        }
        refs.append(reference.agatston)
        preds.append(p.agatston)
        if reference.lesions is not None:
            m = match_lesions(reference.lesions, p.lesions)
            matches.append(m)
            row["lesions"] = _match_summary(m)
        if reference.non_coronary is not None:
            nc_available += 1
            on = [les for les in p.lesions if np.isin(np.asarray(les.voxels), reference.non_coronary).any()]
            row["non_coronary_kept"] = {"lesions": len(on), "agatston": float(sum(les.agatston for les in on)),
                                        "volume_mm3": float(sum(les.volume_mm3 for les in on))}
            nc_lesions += len(on)
            nc_scans += bool(on)
            nc_agatston += row["non_coronary_kept"]["agatston"]
            nc_volume += row["non_coronary_kept"]["volume_mm3"]
        scans.append(row)

    scores = None
    if len(refs) >= 2:
        scores = score_agreement(refs, preds, schemes=tuple(RISK_SCHEMES))
    else:
        notes.append(f"score agreement needs at least 2 scans with a reference; {len(refs)} available")
    if nc_available < len(scans):
        notes.append(f"{len(scans) - nc_available} scan(s) have references without aortic / valve labels (COCA XML "
                     "or truth JSON): non-coronary calcium counted as coronary cannot be detected there")
    return {
        "n_scans": len(scans),
        "scoring": config.to_dict(),
        "scores": scores,
        "lesions": pool_lesion_matches(matches) if matches else None,
        "non_coronary_counted_as_coronary": {
            "lesions": nc_lesions,
            "scans_with_any": nc_scans,
            "agatston": nc_agatston,
            "volume_mm3": nc_volume,
            "n_scans_with_aortic_valve_labels": nc_available,
            "rule": "a kept lesion with at least one voxel on a reference aortic (5) or valve (6) voxel",
        },
        "scans": scans,
        "unpaired": unpaired,
        "notes": notes,
    }
