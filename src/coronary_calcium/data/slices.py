"""Manifest scans -> labelled axial slices for the 2D classifiers.

A slice is positive when it holds coronary calcium (labels 1-4) >= the threshold forming a 2D component of at least
the minimum area (the Agatston lesion rule); aortic or valve calcium alone leaves it negative. Each record keeps the
slice's coronary-calcium mask for measuring localization.

With a heart-centred field of view each record also holds the heart's in-plane centre (`coronary_calcium.anatomy`,
found on the volume as inference finds it), where `FieldOfViewd` centres the crop.

Volumes are decoded once per scan and the slices kept in a per-scan cache file (MONAI's Persistent/CacheDataset
cache per item, and an item here is a slice: caching per volume avoids decoding a series once per slice).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from coronary_calcium.anatomy import find_anatomy
from coronary_calcium.data.transforms import check_field_of_view_centre
from coronary_calcium.errors import InputError
from coronary_calcium.io.manifest import Manifest, ScanEntry, load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.labels import CORONARY_LABELS
from coronary_calcium.scoring.agatston import ScoringConfig, find_lesions

CACHE_VERSION = 2  # 2: the heart's centre (fov_centre)


def _scan_slices(scan: ScanEntry, threshold_hu: float, min_area_mm2: float, centre: str) -> dict[str, np.ndarray]:
    volume, labels = read_scan(scan)
    if labels is None:
        raise InputError(scan.image, f"scan {scan.scan_id} has no reference (labels or COCA XML): slices need labels")
    config = ScoringConfig(threshold_hu=threshold_hu, min_area_mm2=min_area_mm2)
    lesions = find_lesions(volume.hu, volume.spacing, labels=labels, config=config)
    positive = np.zeros(volume.shape[0], dtype=np.uint8)
    for lesion in lesions:
        positive[list(lesion.slices)] = 1
    mask = (volume.hu >= threshold_hu) & np.isin(labels, CORONARY_LABELS)
    heart = find_anatomy(volume.hu, volume.spacing).heart_centre_px if centre == "heart" else None
    return {
        "fov_centre": np.asarray(heart if heart is not None else (np.nan, np.nan), dtype=np.float64),
        "image": np.clip(np.rint(volume.hu), -32768, 32767).astype(np.int16),
        "mask": mask.astype(np.uint8),
        "label": positive,
        "pixel_spacing": np.asarray(volume.spacing[1:], dtype=np.float64),
    }


def _cache_key(scan: ScanEntry, threshold_hu: float, min_area_mm2: float, centre: str) -> str:
    parts: list[Any] = [CACHE_VERSION, scan.scan_id, threshold_hu, min_area_mm2, scan.label_scheme, centre]
    for p in (scan.image, scan.labels, scan.coca_xml):
        if p is None:
            parts.append(None)
            continue
        files = sorted(p.iterdir()) if p.is_dir() else [p]
        parts.append([(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:20]


def _cached_scan_slices(
    scan: ScanEntry, threshold_hu: float, min_area_mm2: float, centre: str, cache_dir: Path | None
) -> dict[str, np.ndarray]:
    if cache_dir is None:
        return _scan_slices(scan, threshold_hu, min_area_mm2, centre)
    path = cache_dir / f"{scan.scan_id}-{_cache_key(scan, threshold_hu, min_area_mm2, centre)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    arrays = _scan_slices(scan, threshold_hu, min_area_mm2, centre)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return arrays


def slice_records(
    manifest: Manifest | str | Path,
    split: str,
    *,
    threshold_hu: float = 130.0,
    min_area_mm2: float = 1.0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    field_of_view_centre: str = "image",
) -> list[dict[str, Any]]:
    """One record per axial slice of the split's scans.

    Each record: ``image`` (1, H, W) int16 HU, ``mask`` (1, H, W) uint8 coronary calcium, ``label`` 0/1,
    ``patient_id``, ``scan_id``, ``slice_index``, ``pixel_spacing`` (row, column mm) and ``original_size`` (rows,
    columns) of the original slice, from which localization metrics convert distances after resizing, and
    ``fov_centre``: with ``field_of_view_centre="heart"`` the scan's heart centre as (row, column) pixels, else (NaN,
    NaN): the field is then centred on the image, as inference does where no heart is found (NaN rather than None,
    which a DataLoader cannot collate).
    """
    check_field_of_view_centre(field_of_view_centre)
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    scans = manifest.split(split)
    if not scans:
        raise InputError(manifest.path, f"split {split!r} has no scans")
    cache = Path(cache_dir) if cache_dir is not None else None
    records: list[dict[str, Any]] = []
    for scan in tqdm(scans, desc=f"reading {split} scans", unit="scan", disable=not progress):
        arrays = _cached_scan_slices(scan, threshold_hu, min_area_mm2, field_of_view_centre, cache)
        centre = [float(v) for v in arrays["fov_centre"]]
        for k in range(arrays["image"].shape[0]):
            records.append(
                {
                    "image": arrays["image"][k][None],
                    "mask": arrays["mask"][k][None],
                    "label": int(arrays["label"][k]),
                    "patient_id": scan.patient_id,
                    "scan_id": scan.scan_id,
                    "slice_index": k,
                    "pixel_spacing": arrays["pixel_spacing"].tolist(),
                    "original_size": list(arrays["image"].shape[1:]),
                    "fov_centre": centre,
                }
            )
    return records


def class_counts(records: Sequence[dict[str, Any]]) -> dict[int, int]:
    """Number of negative (0) and positive (1) slices."""
    labels = np.fromiter((r["label"] for r in records), dtype=np.int64, count=len(records))
    return {0: int((labels == 0).sum()), 1: int((labels == 1).sum())}


def check_trainable(records: Sequence[dict[str, Any]], split: str, *, need_both_classes: bool = True) -> None:
    """Refuse a split with no slices, or (for training) with one class only, before any training starts."""
    if not records:
        raise InputError(split, "split has no slices")
    counts = class_counts(records)
    if need_both_classes and min(counts.values()) == 0:
        missing = "positive" if counts[1] == 0 else "negative"
        raise InputError(split, f"split has no {missing} slices ({counts[0]} negative, {counts[1]} positive)")
