"""Fixtures for the reader / writer tests: small CT volumes with known geometry."""

from __future__ import annotations

import numpy as np
import pytest

from coronary_calcium.io.volume import CTVolume


def _volume(shape=(6, 16, 20), spacing=(2.5, 0.7, 0.6), origin=(-50.0, -30.5, 100.25), direction=None,
            slice_thickness=None, seed=7) -> CTVolume:
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1024, 1500, size=shape).astype(np.float32)
    return CTVolume(hu=hu, spacing=spacing, origin=origin,
                    direction=np.eye(3) if direction is None else np.asarray(direction, dtype=float),
                    slice_thickness=slice_thickness)


@pytest.fixture
def make_volume():
    """Factory for a small integer-HU CT volume: make_volume(shape=..., spacing=..., origin=..., direction=...)."""
    return _volume


@pytest.fixture
def small_volume() -> CTVolume:
    """A 6 x 16 x 20 volume, 2.5 mm increment, 0.7 x 0.6 mm pixels, identity direction."""
    return _volume()
