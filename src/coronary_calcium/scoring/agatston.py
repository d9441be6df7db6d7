"""Agatston, volume and mass scores of coronary calcium from a HU volume (numpy + scipy only).

Every rule that public scoring code disagrees on is a :class:`ScoringConfig` setting; the defaults follow
``shared/reference/agatston.md``: HU >= 130 at 120 kVp, 2D lesions per axial slice with 8-connectivity,
area >= 1 mm^2 per slice, density weight from the slice peak, normalisation by the slice increment / 3.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from coronary_calcium.errors import InputError
from coronary_calcium.labels import CORONARY_LABELS, LABEL_NAMES

# Grani et al., EHJ-CVI 2018: kVp-specific thresholds that match 130 HU at 120 kVp.
KVP_THRESHOLDS: dict[float, float] = {70.0: 207.0, 80.0: 177.0, 100.0: 145.0, 120.0: 130.0, 135.0: 119.0}
# Density-weight cut-points at 120 kVp (weight 1, 2, 3, 4 from each value up).
BASE_CUTPOINTS: tuple[float, float, float, float] = (130.0, 200.0, 300.0, 400.0)
CONNECTIVITIES = ("2d-8", "2d-4", "3d-26", "3d-6")
WEIGHT_FROM = ("slice_peak", "lesion_peak")
NORMALISATIONS = ("increment", "thickness", "none")
MASS_CALIBRATION_SOURCES = ("assumed", "phantom")
UNKNOWN_ARTERY = "unknown"
# Areas are pixel counts times a float pixel area: 100 px x 0.1 mm x 0.1 mm must still pass a 1 mm^2 limit.
_AREA_TOLERANCE = 1e-9


def _finite_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(name, f"must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise InputError(name, f"must be finite, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ScoringConfig:
    """Scoring rules; each field is a rule that public implementations disagree on.

    kvp: tube voltage; selects the HU threshold when ``threshold_hu`` is None (70/80/100/120/135 kV).
    threshold_hu: explicit calcium threshold in HU (overrides the kVp table).
    inclusive: a voxel counts when HU >= threshold (True) or HU > threshold (False).
    connectivity: "2d-8"/"2d-4" lesions per axial slice, "3d-26"/"3d-6" lesions spanning slices.
    min_area_mm2: a 2D component (or, in 3D, a lesion's part on one slice) smaller than this is dropped.
    min_volume_mm3: a lesion (after the area rule) smaller than this is dropped (the 3D size rule).
    weight_from: density weight from each slice's peak ("slice_peak", Agatston) or the 3D lesion's peak
        ("lesion_peak", a known deviation; same as slice_peak for 2D lesions).
    scale_weights: scale the 200/300/400 HU weight cut-points by threshold/130 like the threshold (Grani).
    normalisation: per-slice factor spacing/3 from the slice increment, the nominal slice thickness, or none.
    mass_calibration: c in mg/(mm^3 HU); mass = c x volume x mean HU.
    mass_calibration_source: "assumed" (fixed c, reported as an assumption) or "phantom" (measured c).
    """

    kvp: float = 120.0
    threshold_hu: float | None = None
    inclusive: bool = True
    connectivity: str = "2d-8"
    min_area_mm2: float = 1.0
    min_volume_mm3: float = 0.0
    weight_from: str = "slice_peak"
    scale_weights: bool = True
    normalisation: str = "increment"
    mass_calibration: float = 0.00075
    mass_calibration_source: str = "assumed"

    def __post_init__(self) -> None:
        kvp = _finite_number(self.kvp, "kvp")
        if kvp <= 0:
            raise InputError("kvp", f"must be positive, got {self.kvp!r}")
        if self.threshold_hu is None:
            if kvp not in KVP_THRESHOLDS:
                raise InputError(
                    "kvp",
                    f"no HU threshold known for {self.kvp!r} kVp (known: {sorted(KVP_THRESHOLDS)}); "
                    "set threshold_hu explicitly",
                )
        elif _finite_number(self.threshold_hu, "threshold_hu") <= 0:
            raise InputError("threshold_hu", f"must be positive, got {self.threshold_hu!r}")
        for name in ("inclusive", "scale_weights"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(name, f"must be True or False, got {getattr(self, name)!r}")
        for name, allowed in (
            ("connectivity", CONNECTIVITIES),
            ("weight_from", WEIGHT_FROM),
            ("normalisation", NORMALISATIONS),
            ("mass_calibration_source", MASS_CALIBRATION_SOURCES),
        ):
            if getattr(self, name) not in allowed:
                raise InputError(name, f"must be one of {list(allowed)}, got {getattr(self, name)!r}")
        for name in ("min_area_mm2", "min_volume_mm3"):
            if _finite_number(getattr(self, name), name) < 0:
                raise InputError(name, f"must be >= 0, got {getattr(self, name)!r}")
        if _finite_number(self.mass_calibration, "mass_calibration") <= 0:
            raise InputError("mass_calibration", f"must be positive, got {self.mass_calibration!r}")

    @property
    def threshold(self) -> float:
        """The HU threshold in use: ``threshold_hu`` or the kVp table entry."""
        return float(self.threshold_hu) if self.threshold_hu is not None else KVP_THRESHOLDS[float(self.kvp)]

    def passes_threshold(self, hu: np.ndarray) -> np.ndarray:
        """Boolean mask of the ``hu`` values that count as calcium: >= the threshold, or > it if not inclusive."""
        return hu >= self.threshold if self.inclusive else hu > self.threshold

    @property
    def weight_cutpoints(self) -> tuple[float, float, float, float]:
        """HU values from which the weight is 1, 2, 3, 4 (the first is the threshold itself)."""
        scale = self.threshold / BASE_CUTPOINTS[0] if self.scale_weights else 1.0
        return (self.threshold,) + tuple(c * scale for c in BASE_CUTPOINTS[1:])  # type: ignore[return-value]

    @property
    def is_3d(self) -> bool:
        return self.connectivity.startswith("3d")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings plus the derived threshold and weight cut-points."""
        out = dataclasses.asdict(self)
        out["threshold_hu_used"] = self.threshold
        out["weight_cutpoints_hu"] = [float(c) for c in self.weight_cutpoints]
        return out


def calibration_factor(hu_insert: float, hu_water: float, density_mg_cm3: float = 200.0) -> float:
    """Mass calibration factor c = rho / (HU_insert - HU_water) in mg/(mm^3 HU), rho in mg/mm^3.

    ``hu_insert`` is the mean HU of a hydroxyapatite insert of ``density_mg_cm3`` mgHA/cm^3, ``hu_water``
    the mean HU of water (or water-equivalent material) on the same scan.
    """
    hu_insert = _finite_number(hu_insert, "hu_insert")
    hu_water = _finite_number(hu_water, "hu_water")
    density = _finite_number(density_mg_cm3, "density_mg_cm3")
    if density <= 0:
        raise InputError("density_mg_cm3", f"must be positive, got {density_mg_cm3!r}")
    if hu_insert <= hu_water:
        raise InputError("hu_insert", f"must exceed hu_water ({hu_water}), got {hu_insert}")
    return (density / 1000.0) / (hu_insert - hu_water)


def _weights(peaks: np.ndarray, config: ScoringConfig) -> np.ndarray:
    """Vectorised density weight: 0 below the threshold, else 1-4 by the (scaled) cut-points."""
    _, c2, c3, c4 = config.weight_cutpoints
    above = config.passes_threshold(peaks)
    return np.where(above, 1 + (peaks >= c2).astype(np.int64) + (peaks >= c3) + (peaks >= c4), 0).astype(np.int64)


def density_weight(peak_hu: float, config: ScoringConfig = ScoringConfig()) -> int:
    """Agatston density weight of a peak HU: 0 below threshold, then 1 / 2 / 3 / 4.

    At 120 kVp: 130-199 -> 1, 200-299 -> 2, 300-399 -> 3, >= 400 -> 4; the cut-points scale with the
    threshold (threshold/130) when ``config.scale_weights``. The threshold itself obeys ``config.inclusive``.
    """
    return int(_weights(np.asarray([_finite_number(peak_hu, "peak_hu")]), config)[0])


@dataclass
class Lesion:
    """One calcified lesion: a 2D component on one slice, or a 3D component spanning slices.

    ``slices``, ``area_mm2``, ``slice_peak_hu``, ``slice_weight`` and ``slice_agatston`` are per-slice lists
    in the same order (ascending slice index). ``voxels`` holds the lesion's flat voxel indices into the
    scored volume (C order); it is used for lesion matching and left out of :meth:`to_dict`.
    """

    label: int
    artery: str
    slices: list[int]
    area_mm2: list[float]
    peak_hu: float
    mean_hu: float
    volume_mm3: float
    mass_mg: float
    agatston: float
    centroid_zyx: tuple[float, float, float]
    n_voxels: int
    slice_peak_hu: list[float] = field(default_factory=list)
    slice_weight: list[int] = field(default_factory=list)
    slice_agatston: list[float] = field(default_factory=list)
    voxels: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def total_area_mm2(self) -> float:
        return float(sum(self.area_mm2))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (plain ints and floats; no voxel indices)."""
        return {
            "label": int(self.label),
            "artery": str(self.artery),
            "slices": [int(s) for s in self.slices],
            "area_mm2": [float(a) for a in self.area_mm2],
            "total_area_mm2": self.total_area_mm2,
            "peak_hu": float(self.peak_hu),
            "mean_hu": float(self.mean_hu),
            "volume_mm3": float(self.volume_mm3),
            "mass_mg": float(self.mass_mg),
            "agatston": float(self.agatston),
            "centroid_zyx": [float(c) for c in self.centroid_zyx],
            "n_voxels": int(self.n_voxels),
            "slice_peak_hu": [float(p) for p in self.slice_peak_hu],
            "slice_weight": [int(w) for w in self.slice_weight],
            "slice_agatston": [float(a) for a in self.slice_agatston],
        }


@dataclass
class ScanScore:
    """Scan totals, per-artery totals, risk categories for every scheme, the settings and caveats."""

    lesions: list[Lesion]
    agatston: float
    volume_mm3: float
    mass_mg: float
    per_artery: dict[str, dict[str, float | int]]
    categories: dict[str, str]
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, lesions included."""
        return {
            "agatston": float(self.agatston),
            "volume_mm3": float(self.volume_mm3),
            "mass_mg": float(self.mass_mg),
            "n_lesions": len(self.lesions),
            "per_artery": {
                a: {k: (int(v) if k == "n_lesions" else float(v)) for k, v in d.items()}
                for a, d in self.per_artery.items()
            },
            "categories": dict(self.categories),
            "config": dict(self.config),
            "notes": list(self.notes),
            "lesions": [les.to_dict() for les in self.lesions],
        }


def _structure(connectivity: str) -> np.ndarray:
    if connectivity == "3d-26":
        return ndimage.generate_binary_structure(3, 3)
    if connectivity == "3d-6":
        return ndimage.generate_binary_structure(3, 1)
    # 2D: a 3D structure with no neighbours across slices labels every slice separately in one call.
    s = np.zeros((3, 3, 3), dtype=bool)
    s[1] = ndimage.generate_binary_structure(2, 2 if connectivity == "2d-8" else 1)
    return s


def _check_inputs(
    hu: Any, spacing: Any, mask: Any, labels: Any, slice_thickness: Any, config: ScoringConfig
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray | None, np.ndarray | None, float | None]:
    if not isinstance(config, ScoringConfig):
        raise InputError("config", f"must be a ScoringConfig, got {type(config).__name__}")
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise InputError("hu", f"must be a 3D (Z, Y, X) array, got shape {hu.shape}")
    if not (np.issubdtype(hu.dtype, np.number) and not np.issubdtype(hu.dtype, np.complexfloating)):
        raise InputError("hu", f"must hold real numbers, got dtype {hu.dtype}")
    try:
        sp = tuple(float(s) for s in spacing)
    except TypeError as exc:
        raise InputError("spacing", f"must be (slice increment, row, col) in mm, got {spacing!r}") from exc
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise InputError("spacing", f"must be three positive (slice increment, row, col) mm, got {spacing!r}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != hu.shape:
            raise InputError("mask", f"shape {mask.shape} differs from the volume's {hu.shape}")
        mask = mask.astype(bool, copy=False)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != hu.shape:
            raise InputError("labels", f"shape {labels.shape} differs from the volume's {hu.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            if not np.issubdtype(labels.dtype, np.floating) or not np.array_equal(labels, np.round(labels)):
                raise InputError("labels", f"must hold integer label values, got dtype {labels.dtype}")
    thickness = None
    if slice_thickness is not None:
        thickness = _finite_number(slice_thickness, "slice_thickness")
        if thickness <= 0:
            raise InputError("slice_thickness", f"must be positive, got {slice_thickness!r}")
    if config.normalisation == "thickness" and thickness is None:
        raise InputError("slice_thickness", 'normalisation "thickness" needs the nominal slice thickness')
    return hu, sp, mask, labels, thickness  # type: ignore[return-value]


def find_lesions(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    mask: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    slice_thickness: float | None = None,
    config: ScoringConfig = ScoringConfig(),
) -> list[Lesion]:
    """Calcified lesions of a (Z, Y, X) HU volume, scored per ``config``.

    spacing: (slice increment, row, col) in mm; the increment is the distance between slice positions,
    not the SliceThickness tag. Candidates are voxels at or above the threshold (``config.inclusive``),
    inside ``mask`` if given, and with a coronary label (1-4) if ``labels`` is given (0, aortic 5 and
    valve 6 never count then). Components follow ``config.connectivity``. A lesion's artery is the most
    frequent coronary label of its voxels (ties -> the lower label), or 0/"unknown" without labels.

    Per slice, a lesion's part scores area_mm2 x weight x factor; the weight comes from that slice's
    peak (or the 3D lesion's peak with weight_from="lesion_peak"), the factor is increment/3,
    slice_thickness/3 or 1. Parts below ``min_area_mm2`` are dropped (for 2D lesions: the whole
    component), then lesions below ``min_volume_mm3``. Volume counts voxels x voxel volume (increment x
    row x col), mass = c x volume x mean HU. Lesions come in the C order of their components' first voxels.
    """
    hu, sp, mask, labels, thickness = _check_inputs(hu, spacing, mask, labels, slice_thickness, config)
    cand = config.passes_threshold(hu)
    if mask is not None:
        cand &= mask
    if labels is not None:
        cand &= np.isin(labels, CORONARY_LABELS)
    lab, n = ndimage.label(cand, structure=_structure(config.connectivity))
    if n == 0:
        return []
    voxels = _voxels_of_large_parts(lab, hu, sp[1] * sp[2], config)
    if voxels is None:
        return []
    parts = _part_table(voxels, hu.shape[0], sp[1] * sp[2])
    les = _lesion_table(voxels, parts, hu.shape, sp, labels, config)
    _score_parts(parts, les, sp, thickness, config)
    les_score = np.bincount(parts.lesion, weights=parts.score, minlength=les.count.size)
    return [_make_lesion(i, parts, les, float(les_score[i]), config) for i in range(les.count.size) if les.keep[i]]


@dataclass
class _Voxels:
    """Candidate voxels of the parts the area rule keeps, in C order: flat index, HU, slice and part index."""

    flat: np.ndarray
    vals: np.ndarray
    z: np.ndarray
    part: np.ndarray
    part_key: np.ndarray  # per kept part: component * nz + slice, ascending


@dataclass
class _Parts:
    """Per part (a lesion's voxels on one slice), lesion-major then by slice; weight and score set later."""

    z: np.ndarray
    lesion: np.ndarray
    peak: np.ndarray
    area: np.ndarray
    weight: np.ndarray | None = None
    score: np.ndarray | None = None


@dataclass
class _Lesions:
    """Per lesion: voxel count, peak and mean HU, volume, centroid, artery label, whether it is kept, and the
    bounds of its parts and (sorted) voxels."""

    count: np.ndarray
    peak: np.ndarray
    mean: np.ndarray
    volume: np.ndarray
    centroid: np.ndarray
    label: np.ndarray
    keep: np.ndarray
    part_bounds: np.ndarray
    voxels: np.ndarray
    voxel_bounds: np.ndarray


def _voxels_of_large_parts(
    lab: np.ndarray, hu: np.ndarray, pixel_area: float, config: ScoringConfig
) -> _Voxels | None:
    """The labelled voxels whose (component, slice) part passes ``min_area_mm2``, parts renumbered; None if none."""
    nz, ny, nx = hu.shape
    flat = np.flatnonzero(lab)  # candidate voxels, C order
    comp = lab.ravel()[flat].astype(np.int64) - 1
    vals = hu.ravel()[flat].astype(np.float64)
    if not np.all(np.isfinite(vals)):
        raise InputError("hu", "infinite values above the threshold")
    z = flat // (ny * nx)
    # Parts = (component, slice) pairs; for 2D components a part is the whole component.
    part_key, part_of_voxel = np.unique(comp * nz + z, return_inverse=True)
    part_area = np.bincount(part_of_voxel) * pixel_area
    keep_part = part_area >= config.min_area_mm2 - _AREA_TOLERANCE
    keep_vox = keep_part[part_of_voxel]
    if not keep_vox.any():
        return None
    # Renumber surviving parts contiguously (they stay sorted: lesion-major, then slice).
    kept_parts = np.flatnonzero(keep_part)
    part_remap = np.full(part_key.size, -1, dtype=np.int64)
    part_remap[kept_parts] = np.arange(kept_parts.size)
    return _Voxels(flat[keep_vox], vals[keep_vox], z[keep_vox], part_remap[part_of_voxel[keep_vox]],
                   part_key[kept_parts])


def _part_table(v: _Voxels, nz: int, pixel_area: float) -> _Parts:
    """Slice, lesion index (contiguous), peak HU and area of each part."""
    _, part_les = np.unique(v.part_key // nz, return_inverse=True)
    order = np.argsort(v.part, kind="stable")
    part_count = np.bincount(v.part, minlength=v.part_key.size)
    starts = np.concatenate(([0], np.cumsum(part_count)[:-1]))
    return _Parts(z=v.part_key % nz, lesion=part_les, peak=np.maximum.reduceat(v.vals[order], starts),
                  area=part_count * pixel_area)


def _lesion_table(v: _Voxels, parts: _Parts, shape: tuple[int, ...], sp: tuple[float, float, float],
                  labels: np.ndarray | None, config: ScoringConfig) -> _Lesions:
    """Per-lesion voxel statistics, centroid, artery label and the volume rule."""
    ny, nx = shape[1], shape[2]
    les_of_voxel = parts.lesion[v.part]
    n_les = int(parts.lesion.max()) + 1
    count = np.bincount(les_of_voxel, minlength=n_les)
    total = np.bincount(les_of_voxel, weights=v.vals, minlength=n_les)
    part_bounds = np.searchsorted(parts.lesion, np.arange(n_les + 1))  # parts are grouped per lesion
    volume = count * (sp[0] * (sp[1] * sp[2]))
    yx = v.flat % (ny * nx)
    centroid = np.stack(
        [
            np.bincount(les_of_voxel, weights=c.astype(np.float64), minlength=n_les) / count
            for c in (v.z, yx // nx, yx % nx)
        ],
        axis=1,
    )
    if labels is not None:
        vox_label = labels.ravel()[v.flat].astype(np.int64)
        n_lab = int(max(CORONARY_LABELS)) + 1
        counts = np.bincount(les_of_voxel * n_lab + vox_label, minlength=n_les * n_lab).reshape(n_les, n_lab)
        label = np.argmax(counts, axis=1)  # only coronary labels reach here; argmax breaks ties low
    else:
        label = np.zeros(n_les, dtype=np.int64)
    vox_order = np.argsort(les_of_voxel, kind="stable")  # voxels grouped per lesion, ascending flat index
    return _Lesions(
        count=count, peak=np.maximum.reduceat(parts.peak, part_bounds[:-1]), mean=total / count, volume=volume,
        centroid=centroid, label=label, keep=volume >= config.min_volume_mm3 - _AREA_TOLERANCE,
        part_bounds=part_bounds, voxels=v.flat[vox_order], voxel_bounds=np.concatenate(([0], np.cumsum(count))),
    )


def _score_parts(parts: _Parts, les: _Lesions, sp: tuple[float, float, float], thickness: float | None,
                 config: ScoringConfig) -> None:
    """Set each part's density weight and score: area x weight x the normalisation factor."""
    peaks_for_weight = parts.peak if config.weight_from == "slice_peak" else les.peak[parts.lesion]
    parts.weight = _weights(peaks_for_weight, config)
    factor = {"increment": sp[0] / 3.0, "thickness": (thickness or 0.0) / 3.0, "none": 1.0}[config.normalisation]
    parts.score = parts.area * parts.weight * factor


def _make_lesion(i: int, parts: _Parts, les: _Lesions, agatston: float, config: ScoringConfig) -> Lesion:
    """Lesion ``i`` of the tables as a `Lesion`."""
    p0, p1 = les.part_bounds[i], les.part_bounds[i + 1]
    label = int(les.label[i])
    return Lesion(
        label=label,
        artery=LABEL_NAMES[label] if label else UNKNOWN_ARTERY,
        slices=parts.z[p0:p1].tolist(),
        area_mm2=parts.area[p0:p1].astype(float).tolist(),
        peak_hu=float(les.peak[i]),
        mean_hu=float(les.mean[i]),
        volume_mm3=float(les.volume[i]),
        mass_mg=float(config.mass_calibration * les.volume[i] * les.mean[i]),
        agatston=agatston,
        centroid_zyx=(float(les.centroid[i, 0]), float(les.centroid[i, 1]), float(les.centroid[i, 2])),
        n_voxels=int(les.count[i]),
        slice_peak_hu=parts.peak[p0:p1].astype(float).tolist(),
        slice_weight=parts.weight[p0:p1].astype(int).tolist(),
        slice_agatston=parts.score[p0:p1].astype(float).tolist(),
        voxels=les.voxels[les.voxel_bounds[i] : les.voxel_bounds[i + 1]].copy(),
    )


# Risk categories: (label, lower, upper). Scores are continuous, so each scheme's cut-points need a side:
# the integer labels "1-10", "11-100", "101-400", ">400" put a cut-point in the LOWER class
# (lower < score <= upper), while "1-99", "100-399", ">=400" put it in the UPPER class
# (lower <= score < upper). The first class is exactly 0 in every scheme; any positive score is "some calcium".
RISK_SCHEMES: dict[str, list[tuple[str, float, float]]] = {
    "5-class": [
        ("0", 0.0, 0.0),
        ("1-10", 0.0, 10.0),
        ("11-100", 10.0, 100.0),
        ("101-400", 100.0, 400.0),
        (">400", 400.0, math.inf),
    ],
    "4-class": [("0", 0.0, 0.0), ("1-100", 0.0, 100.0), ("101-400", 100.0, 400.0), (">400", 400.0, math.inf)],
    "clinical": [("0", 0.0, 0.0), ("1-99", 0.0, 100.0), ("100-399", 100.0, 400.0), (">=400", 400.0, math.inf)],
}
# Which end of (lower, upper) a scheme's intervals include: "upper" -> (lower, upper], "lower" -> [lower, upper).
RISK_SCHEME_CLOSED_SIDE: dict[str, str] = {"5-class": "upper", "4-class": "upper", "clinical": "lower"}
DEFAULT_RISK_SCHEME = "5-class"


def category_index(score: float, scheme: str = DEFAULT_RISK_SCHEME) -> int:
    """Index of ``score``'s class in ``RISK_SCHEMES[scheme]`` (0 = no calcium), e.g. for weighted kappa.

    Exactly 0 -> class 0. Otherwise half-open intervals on the continuous score, closed on the side the
    scheme's integer labels imply: 5-class and 4-class use (lower, upper] (10.0 -> "1-10", 10.4 ->
    "11-100", 400.0 -> "101-400", 400.01 -> ">400"); "clinical" uses [lower, upper) (99.9 -> "1-99",
    100.0 -> "100-399", 400.0 -> ">=400"). Negative or non-finite scores raise InputError.
    """
    if scheme not in RISK_SCHEMES:
        raise InputError("scheme", f"unknown risk scheme {scheme!r} (known: {sorted(RISK_SCHEMES)})")
    s = _finite_number(score, "score")
    if s < 0:
        raise InputError("score", f"must be >= 0, got {score!r}")
    if s == 0:
        return 0
    upper_closed = RISK_SCHEME_CLOSED_SIDE[scheme] == "upper"
    classes = RISK_SCHEMES[scheme]
    for i, (_, lo, hi) in enumerate(classes[1:-1], start=1):
        if (lo < s <= hi) if upper_closed else (lo <= s < hi):
            return i
    return len(classes) - 1  # above the last finite cut-point


def risk_category(score: float, scheme: str = DEFAULT_RISK_SCHEME) -> str:
    """Label of ``score``'s risk class in ``scheme`` ("5-class" default, "4-class", "clinical").

    See :func:`category_index` for how continuous scores between integer labels are assigned.
    """
    index = category_index(score, scheme)  # validates the scheme first
    return RISK_SCHEMES[scheme][index][0]


def artery_totals(lesions: list[Lesion], arteries: list[str]) -> dict[str, dict[str, float | int]]:
    """Agatston, volume, mass and lesion count per artery (every name in ``arteries``, zeros when absent).

    A lesion whose artery is not among ``arteries`` is an error: the totals must sum to the scan's.
    """
    totals: dict[str, dict[str, float | int]] = {
        a: {"agatston": 0.0, "volume_mm3": 0.0, "mass_mg": 0.0, "n_lesions": 0} for a in arteries
    }
    for les in lesions:
        if les.artery not in totals:
            raise InputError("lesions", f"artery {les.artery!r} is not one of {arteries}")
        d = totals[les.artery]
        d["agatston"] += les.agatston
        d["volume_mm3"] += les.volume_mm3
        d["mass_mg"] += les.mass_mg
        d["n_lesions"] += 1
    return totals


def _score_notes(config: ScoringConfig, increment_mm: float, slice_thickness: float | None) -> list[str]:
    notes = []
    if config.mass_calibration_source == "assumed":
        notes.append(
            f"mass uses an assumed calibration factor c = {config.mass_calibration:g} mg/(mm^3 HU), "
            "not a phantom measurement"
        )
    thick_differs = slice_thickness is not None and abs(float(slice_thickness) - float(increment_mm)) > 1e-6
    if config.normalisation == "thickness" and thick_differs:
        notes.append(
            f"Agatston normalised by slice thickness {float(slice_thickness):g} mm while slices are "
            f"{float(increment_mm):g} mm apart; the increment rule would differ"
        )
    if config.normalisation == "none":
        notes.append("Agatston not normalised to 3 mm slices")
    if config.weight_from == "lesion_peak" and config.is_3d:
        notes.append("density weight from each 3D lesion's peak HU (deviation from per-slice Agatston)")
    if config.threshold != 130.0 or float(config.kvp) != 120.0:
        notes.append(f"threshold {config.threshold:g} HU at {float(config.kvp):g} kVp")
    return notes


def score_lesions(
    lesions: list[Lesion],
    increment_mm: float,
    *,
    slice_thickness: float | None = None,
    unknown_artery: bool = True,
    config: ScoringConfig = ScoringConfig(),
) -> ScanScore:
    """Score lesions already found (by :func:`find_lesions` with the same ``config``): totals, per-artery totals,
    every risk category, caveats. Nothing is found again, so a subset of candidates is scored as it was found.

    ``per_artery`` always has LM, LAD, LCX and RCA, plus "unknown" with ``unknown_artery`` (without it every lesion
    must name one of the four); its entries sum to the scan totals.
    """
    arteries = [LABEL_NAMES[v] for v in CORONARY_LABELS] + ([UNKNOWN_ARTERY] if unknown_artery else [])
    total = float(sum(les.agatston for les in lesions))
    return ScanScore(
        lesions=list(lesions),
        agatston=total,
        volume_mm3=float(sum(les.volume_mm3 for les in lesions)),
        mass_mg=float(sum(les.mass_mg for les in lesions)),
        per_artery=artery_totals(lesions, arteries),
        categories={scheme: risk_category(total, scheme) for scheme in RISK_SCHEMES},
        config=config.to_dict(),
        notes=_score_notes(config, increment_mm, slice_thickness),
    )


def score_scan(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    mask: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    slice_thickness: float | None = None,
    config: ScoringConfig = ScoringConfig(),
) -> ScanScore:
    """Score a scan: lesions (see :func:`find_lesions`), then :func:`score_lesions`.

    ``per_artery`` always has LM, LAD, LCX and RCA (zeros when absent), plus "unknown" when ``labels``
    is None; its entries sum to the scan totals.
    """
    lesions = find_lesions(hu, spacing, mask=mask, labels=labels, slice_thickness=slice_thickness, config=config)
    score = score_lesions(lesions, float(spacing[0]), slice_thickness=slice_thickness,
                          unknown_artery=labels is None, config=config)
    if labels is None:
        score.notes.append("no artery labels: lesions are not assigned to arteries and only the mask (if any) "
                           "keeps non-coronary calcium out")
    return score
