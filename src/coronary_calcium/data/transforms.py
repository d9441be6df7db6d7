"""The one transform MONAI lacks here: downsampling by max-pooling.

MONAI's `Resized` averages ("area") or interpolates; halving a 512 x 512 slice that way spreads a 1 mm^2 calcium
deposit (2-6 pixels) over its darker neighbours until it drops below the calcium threshold, so the slice label
no longer shows in the image. Max-pooling keeps each deposit's peak HU, and for masks it means "any pixel".
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_tensor


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
