"""The voxel grid both synthetic families draw on: voxel centres in LPS millimetres, arrays indexed [z, y, x]."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Voxel centres: x = x0 + ps * i, y = y0 + ps * j, z = z0 + dz * k (mm)."""

    nz: int
    ny: int
    nx: int
    dz: float
    ps: float
    x0: float
    y0: float
    z0: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.nz, self.ny, self.nx)

    @property
    def x(self) -> np.ndarray:
        return self.x0 + self.ps * np.arange(self.nx)

    @property
    def y(self) -> np.ndarray:
        return self.y0 + self.ps * np.arange(self.ny)

    @property
    def z(self) -> np.ndarray:
        return self.z0 + self.dz * np.arange(self.nz)

    def box(self, lo: np.ndarray, hi: np.ndarray, pad_px: int = 0) -> tuple[slice, slice, slice] | None:
        """Index box (z, y, x slices) of voxel centres inside [lo, hi] (x, y, z mm), padded in-plane by ``pad_px``
        pixels; None when empty."""
        out = []
        for lo_, hi_, o, s, n, pad in (
            (lo[2], hi[2], self.z0, self.dz, self.nz, 0),
            (lo[1], hi[1], self.y0, self.ps, self.ny, pad_px),
            (lo[0], hi[0], self.x0, self.ps, self.nx, pad_px),
        ):
            i0 = max(int(math.ceil((lo_ - o) / s - 1e-9)) - pad, 0)
            i1 = min(int(math.floor((hi_ - o) / s + 1e-9)) + 1 + pad, n)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x, y and z (mm) of the voxel centres in ``box``."""
        return self.x[box[2]], self.y[box[1]], self.z[box[0]]
