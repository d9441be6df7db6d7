"""Agatston scores of a calcium phantom's inserts, with `score_scan` restricted to the insert region.

Made for the QRM anthropomorphic thorax phantom with its cardiac calcification insert (shared/data/README.md):
a soft-tissue cylinder (about 100 mm across) between the lungs holding calcium cylinders of 1, 3 and 5 mm at
200, 400 and 800 mg HA/cm^3, plus a larger calibration rod. The insert region is found as the largest disc of
non-lung tissue (maximum of the distance transform of HU > -500 on each slice, the median centre over slices whose
disc radius is plausible), shrunk by a margin so its rim and the neighbouring spine stay out. Scored 2D lesions
in it are grouped into inserts across slices by the distance of their centroids.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from coronary_calcium.errors import InputError
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.scoring.agatston import ScoringConfig, score_scan

__all__ = ["find_insert_region", "qrm_insert_scores", "region_mask"]

TISSUE_MIN_HU = -500.0
ROD_MIN_DIAMETER_MM = 12.0
SPECK_MAX_AREA_MM2 = 5.0


def find_insert_region(
    volume: CTVolume, *, min_radius_mm: float = 30.0, max_radius_mm: float = 80.0, margin_mm: float = 3.0
) -> dict[str, Any]:
    """The phantom's insert disc: centre (row, column), radius (minus ``margin_mm``) and the slices it spans."""
    row_mm, col_mm = float(volume.spacing[1]), float(volume.spacing[2])
    centres, radii, slices = [], [], []
    for k in range(volume.shape[0]):
        tissue = volume.hu[k] > TISSUE_MIN_HU
        if not tissue.any():
            continue
        dist = ndimage.distance_transform_edt(tissue, sampling=(row_mm, col_mm))
        r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
        radius = float(dist[r, c])
        if min_radius_mm <= radius <= max_radius_mm:
            centres.append((r, c))
            radii.append(radius)
            slices.append(k)
    if not slices:
        raise InputError(volume.meta.get("source", "volume"), f"no insert disc of radius {min_radius_mm:g}-"
                         f"{max_radius_mm:g} mm found")
    centre = np.median(np.asarray(centres, dtype=float), axis=0)
    near = [k for k, (r, c) in zip(slices, centres)
            if np.hypot((r - centre[0]) * row_mm, (c - centre[1]) * col_mm) <= 5.0]
    radius = float(np.median([rad for k, rad in zip(slices, radii) if k in near])) - margin_mm
    z0, z1 = min(near), max(near)
    affine = volume.affine_lps()
    lps = affine @ np.array([centre[1], centre[0], (z0 + z1) / 2.0, 1.0])
    return {
        "centre_row_col": [float(centre[0]), float(centre[1])],
        "centre_lps_mm": [float(v) for v in lps[:3]],
        "radius_mm": radius,
        "slices": [int(z0), int(z1)],
        "margin_mm": float(margin_mm),
    }


def region_mask(volume: CTVolume, region: dict[str, Any]) -> np.ndarray:
    """Boolean (Z, Y, X) cylinder of ``region`` (centre_row_col, radius_mm, slices [first, last])."""
    ny, nx = volume.shape[1:]
    yy, xx = np.mgrid[:ny, :nx]
    r0, c0 = region["centre_row_col"]
    disc = np.hypot((yy - r0) * volume.spacing[1], (xx - c0) * volume.spacing[2]) <= float(region["radius_mm"])
    mask = np.zeros(volume.shape, dtype=bool)
    z0, z1 = region["slices"]
    mask[int(z0) : int(z1) + 1] = disc
    return mask


def _groups(lesions: list, spacing: tuple[float, float, float], distance_mm: float) -> list[list[int]]:
    """Union of 2D lesions on neighbouring slices whose centroids lie within ``distance_mm`` (or the larger one's
    equivalent radius) of each other."""
    parent = list(range(len(lesions)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(lesions):
        for j in range(i + 1, len(lesions)):
            b = lesions[j]
            if abs(a.slices[0] - b.slices[0]) > 1:
                continue
            d = np.hypot((a.centroid_zyx[1] - b.centroid_zyx[1]) * spacing[1],
                         (a.centroid_zyx[2] - b.centroid_zyx[2]) * spacing[2])
            reach = max(distance_mm, np.sqrt(max(a.total_area_mm2, b.total_area_mm2) / np.pi))
            if d <= reach:
                parent[find(i)] = find(j)
    out: dict[int, list[int]] = {}
    for i in range(len(lesions)):
        out.setdefault(find(i), []).append(i)
    return sorted(out.values(), key=lambda g: min(g))


def qrm_insert_scores(
    volume: CTVolume,
    config: ScoringConfig = ScoringConfig(),
    *,
    region: dict[str, Any] | None = None,
    group_distance_mm: float = 3.0,
    n_largest: int = 3,
) -> dict[str, Any]:
    """Agatston, volume and mass of each calcium insert inside the phantom's insert region, JSON-ready.

    region: from `find_insert_region` (found automatically when None). Returns the region, the region's totals,
    every group ("insert", "rod" for a calibration rod >= 12 mm across, "speck" for a single-slice group under
    5 mm^2: noise or a 1 mm insert) sorted by volume, and the ``n_largest`` inserts by volume (on the QRM cardiac
    insert: the 5 mm cylinders, from the densest down by peak HU).
    """
    region = region or find_insert_region(volume)
    mask = region_mask(volume, region)
    score = score_scan(volume.hu, volume.spacing, mask=mask, slice_thickness=volume.slice_thickness, config=config)
    lesions = score.lesions
    affine = volume.affine_lps()
    groups = []
    for members in _groups(lesions, volume.spacing, group_distance_mm):
        ls = [lesions[i] for i in members]
        areas = np.array([les.total_area_mm2 for les in ls])
        zyx = np.average(np.array([les.centroid_zyx for les in ls]), axis=0, weights=areas)
        max_area = float(areas.max())
        diameter = 2.0 * float(np.sqrt(max_area / np.pi))
        slices = sorted({int(les.slices[0]) for les in ls})
        kind = "rod" if diameter >= ROD_MIN_DIAMETER_MM else (
            "speck" if len(slices) == 1 and max_area < SPECK_MAX_AREA_MM2 else "insert")
        groups.append({
            "kind": kind,
            "slices": slices,
            "centre_voxel_zyx": [round(float(v), 2) for v in zyx],
            "centre_lps_mm": [round(float(v), 2) for v in (affine @ np.array([zyx[2], zyx[1], zyx[0], 1.0]))[:3]],
            "max_area_mm2": round(max_area, 3),
            "equivalent_diameter_mm": round(diameter, 2),
            "peak_hu": float(max(les.peak_hu for les in ls)),
            "agatston": float(sum(les.agatston for les in ls)),
            "volume_mm3": float(sum(les.volume_mm3 for les in ls)),
            "mass_mg": float(sum(les.mass_mg for les in ls)),
            "slice_agatston": {str(int(les.slices[0])): round(float(les.agatston), 3) for les in ls},
        })
    groups.sort(key=lambda g: -g["volume_mm3"])
    inserts = [g for g in groups if g["kind"] == "insert"]
    largest = sorted(inserts[:n_largest], key=lambda g: -g["peak_hu"])
    return {
        "region": region,
        "scoring": config.to_dict(),
        "notes": list(score.notes),
        "total_agatston": float(score.agatston),
        "total_volume_mm3": float(score.volume_mm3),
        "n_lesions": len(lesions),
        "groups": groups,
        "largest_inserts": largest,
    }
