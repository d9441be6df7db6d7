"""`CTVolume`: the one in-memory form of a CT scan that every reader returns and every consumer takes.

Convention (DICOM's patient coordinates, LPS): the array is indexed ``hu[z, y, x]``; axial slice ``k`` is
``hu[k]`` as a radiologist sees it (rows run anterior -> posterior, columns patient right -> left); ``z`` ascends
along the slice normal, feet -> head, so slice 0 is the most inferior one (as COCA's ``ImageIndex`` counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coronary_calcium.errors import InputError

# Physical ranges a CT volume must lie in to be scored. Pixels: 0.05 mm (micro-CT-like ultra-high resolution) to
# 5 mm (a coarse scout); slice increments: 0.1 to 20 mm. HU: -3100 (below air -1000 and the -3024 / -2048
# padding scanners write) to 31000 (extended-HU scales for metal); anything outside is not HU or a corrupt rescale.
PIXEL_SPACING_RANGE_MM = (0.05, 5.0)
SLICE_INCREMENT_RANGE_MM = (0.1, 20.0)
HU_RANGE = (-3100.0, 31000.0)


@dataclass
class CTVolume:
    """A CT volume in Hounsfield units with its geometry.

    Attributes:
        hu: float32 array (Z, Y, X) in HU.
        spacing: (slice increment, row spacing, column spacing) in mm; the increment is measured between slice
            positions, never taken from SliceThickness.
        origin: LPS position (mm) of the centre of voxel [0, 0, 0].
        direction: 3x3 matrix whose columns are the LPS unit vectors of the x (column), y (row) and z (slice) axes.
        slice_thickness: reconstructed slice thickness in mm where known (differs from the increment for
            overlapping reconstructions).
        meta: scan facts (patient_id, series_uid, kvp, modality, source path, ...).
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    slice_thickness: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def pixel_area_mm2(self) -> float:
        return float(self.spacing[1] * self.spacing[2])

    @property
    def voxel_volume_mm3(self) -> float:
        return float(self.spacing[0] * self.spacing[1] * self.spacing[2])

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping (x, y, z) voxel indices to LPS millimetres."""
        a = np.eye(4)
        zooms = np.array([self.spacing[2], self.spacing[1], self.spacing[0]])
        a[:3, :3] = np.asarray(self.direction, dtype=float) * zooms[None, :]
        a[:3, 3] = self.origin
        return a

    def affine_ras(self) -> np.ndarray:
        """4x4 matrix mapping (x, y, z) voxel indices to RAS millimetres (NIfTI's convention)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps()

    def slice_z_mm(self) -> np.ndarray:
        """LPS z (mm) of each slice centre, in array order."""
        a = self.affine_lps()
        k = np.arange(self.hu.shape[0])
        return a[2, 2] * k + a[2, 3]


def _check_spacing(spacing: Any, item: object) -> None:
    try:
        values = [float(s) for s in spacing]
    except (TypeError, ValueError):
        values = []
    if len(values) != 3 or not all(math.isfinite(s) for s in values):
        raise InputError(item, f"no usable voxel spacing {spacing!r}: scoring needs the pixel spacing and an even "
                         "slice increment")
    if min(values) <= 0:
        raise InputError(item, f"non-positive voxel spacing {tuple(values)} mm (slice increment, row, column)")
    lo, hi = SLICE_INCREMENT_RANGE_MM
    if not lo <= values[0] <= hi:
        raise InputError(item, f"implausible slice increment {values[0]:g} mm: CT slices are {lo:g} .. {hi:g} mm "
                         "apart")
    lo, hi = PIXEL_SPACING_RANGE_MM
    if not all(lo <= s <= hi for s in values[1:]):
        raise InputError(item, f"implausible pixel spacing {values[1]:g} x {values[2]:g} mm: CT pixels are "
                         f"{lo:g} .. {hi:g} mm")


def check_ct_volume(volume: CTVolume, item: object = "volume") -> None:
    """Refuse what cannot be scored, with an `InputError` naming ``item`` and the rule broken.

    A (Z, Y, X) array of real numbers, a finite positive spacing within `PIXEL_SPACING_RANGE_MM` and
    `SLICE_INCREMENT_RANGE_MM`, modality CT (or unknown), finite values within `HU_RANGE`, and some below 0 (air and
    fat are negative in HU: an image without any is stored values, not HU).
    """
    hu = np.asarray(volume.hu)
    if np.iscomplexobj(hu):
        raise InputError(item, f"complex-valued voxels ({hu.dtype}): a CT image holds real HU values")
    if hu.dtype.kind not in "iuf":
        raise InputError(item, f"voxel type {hu.dtype} is not a number type: a CT image holds HU values")
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise InputError(item, f"expected a (Z, Y, X) volume, got shape {hu.shape}")
    _check_spacing(volume.spacing, item)
    modality = volume.meta.get("modality")
    if modality not in (None, "", "CT"):
        raise InputError(item, f"modality {modality}, not CT")
    finite = np.isfinite(hu)
    if not finite.all():
        raise InputError(item, f"the image holds NaN or infinite values ({int(finite.size - finite.sum())} voxels)")
    lo, hi = float(hu.min()), float(hu.max())
    if lo < HU_RANGE[0] or hi > HU_RANGE[1]:
        raise InputError(item, f"values {lo:g} .. {hi:g} outside the physical range of Hounsfield units "
                         f"({HU_RANGE[0]:g} .. {HU_RANGE[1]:g} HU): not HU, or a wrong RescaleSlope / Intercept")
    if lo >= 0.0:
        raise InputError(item, f"not a CT image in Hounsfield units: no value below 0 (range {lo:g} .. {hi:g}); air "
                         "is -1000 HU and fat about -100 HU")
