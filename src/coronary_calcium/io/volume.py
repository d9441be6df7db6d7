"""`CTVolume`: the one in-memory form of a CT scan that every reader returns and every consumer takes.

Convention (DICOM's patient coordinates, LPS): the array is indexed ``hu[z, y, x]``; axial slice ``k`` is
``hu[k]`` as a radiologist sees it (rows run anterior -> posterior, columns patient right -> left); ``z`` ascends
along the slice normal, feet -> head, so slice 0 is the most inferior one (as COCA's ``ImageIndex`` counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
