"""The two transforms MONAI lacks here: downsampling by max-pooling, and several HU windows as channels.

MONAI's `Resized` averages ("area") or interpolates; halving a 512 x 512 slice that way spreads a 1 mm^2 calcium
deposit (2-6 pixels) over its darker neighbours until it drops below the calcium threshold, so the slice label
no longer shows in the image. Max-pooling keeps each deposit's peak HU, and for masks it means "any pixel".

MONAI's `ScaleIntensityRange` applies one window; `HUWindows` stacks several (e.g. a soft-tissue window for the
anatomy and a calcium window starting at the scoring threshold) as input channels.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_tensor

from coronary_calcium.errors import InputError


class MaxPoolResize(Transform):
    """Resize a channel-first 2D image (C, H, W) to `spatial_size` by adaptive max-pooling (downsampling only)."""

    def __init__(self, spatial_size: Sequence[int]) -> None:
        self.spatial_size = tuple(int(s) for s in spatial_size)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        t = convert_to_tensor(img, track_meta=False)
        if t.ndim != 3:
            raise ValueError(f"MaxPoolResize expects (C, H, W), got shape {tuple(t.shape)}")
        if t.shape[1] < self.spatial_size[0] or t.shape[2] < self.spatial_size[1]:
            raise ValueError(f"MaxPoolResize only downsamples: {tuple(t.shape[1:])} -> {self.spatial_size}")
        dtype = t.dtype
        out = F.adaptive_max_pool2d(t[None].float(), self.spatial_size)[0]
        return out.to(dtype)


class MaxPoolResized(MapTransform):
    """Dictionary version of `MaxPoolResize`."""

    def __init__(self, keys: KeysCollection, spatial_size: Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resizer = MaxPoolResize(spatial_size)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizer(d[key])
        return d


def check_hu_windows(windows: Sequence[Sequence[float]]) -> tuple[tuple[float, float], ...]:
    """``windows`` as a tuple of (low, high) float pairs; InputError unless each has low < high."""
    try:
        out = tuple((float(lo), float(hi)) for lo, hi in windows)
    except (TypeError, ValueError):
        raise InputError("hu_windows", f"must be a list of [low, high] HU pairs, got {windows!r}") from None
    if not out or any(not lo < hi for lo, hi in out):
        raise InputError("hu_windows", f"need at least one [low, high] HU pair with low < high, got {windows!r}")
    return out


def apply_hu_windows(hu: torch.Tensor, windows: Sequence[Sequence[float]], dim: int = 0) -> torch.Tensor:
    """Clip ``hu`` to each window, scale it to [0, 1] and concatenate the results along ``dim`` (a channel axis of
    size 1 becomes ``len(windows)`` channels)."""
    t = convert_to_tensor(hu, track_meta=False).float()
    return torch.cat([((t - lo) / (hi - lo)).clamp_(0.0, 1.0) for lo, hi in check_hu_windows(windows)], dim=dim)


class HUWindows(Transform):
    """(C, H, W) HU -> (C * n, H, W): one [0, 1] channel per HU window, windows in order for each input channel."""

    def __init__(self, windows: Sequence[Sequence[float]]) -> None:
        self.windows = check_hu_windows(windows)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        t = convert_to_tensor(img, track_meta=False)
        if t.ndim < 2:
            raise ValueError(f"HUWindows expects a channel-first image, got shape {tuple(t.shape)}")
        return apply_hu_windows(t.unsqueeze(1), self.windows, dim=1).flatten(0, 1)


class HUWindowsd(MapTransform):
    """Dictionary version of `HUWindows`."""

    def __init__(
        self, keys: KeysCollection, windows: Sequence[Sequence[float]], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.windower = HUWindows(windows)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.windower(d[key])
        return d
