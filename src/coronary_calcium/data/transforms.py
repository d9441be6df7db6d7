"""The transforms MONAI lacks here: a fixed field of view in millimetres, downsampling by max-pooling, and several
HU windows as channels.

MONAI's `ResizeWithPadOrCrop` takes a size in pixels; `FieldOfView` takes millimetres and each slice's pixel
spacing, so a 200 mm cardiac-gated reconstruction and a 400 mm chest scan both reach the network with the heart at
one scale (otherwise the heart's size tells the network which kind of scan it sees, a shortcut that does not
transfer), and `field_of_view_box` lets CAMs be mapped back onto the original matrix. The field is centred on the
image, or on a given point: the heart's centre (`coronary_calcium.anatomy`), so that a small field holds the heart
and the coronary arteries whatever the scan's field of view, and the network spends its pixels on them rather than
on the spine, ribs and arms.

MONAI's `Resized` averages ("area") or interpolates; halving a 512 x 512 slice that way spreads a 1 mm^2 calcium
deposit (2-6 pixels) over its darker neighbours until it drops below the calcium threshold, so the slice label
no longer shows in the image. Max-pooling keeps each deposit's peak HU, and for masks it means "any pixel".

MONAI's `ScaleIntensityRange` applies one window; `HUWindows` stacks several (e.g. a soft-tissue window for the
anatomy and a calcium window starting at the scoring threshold) as input channels.
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_tensor, ensure_tuple_rep

from coronary_calcium.errors import InputError


AIR_HU = -1024.0
FIELD_OF_VIEW_CENTRES = ("image", "heart")  # where a field of view is centred: the slice's centre or the heart's


def check_field_of_view(field_of_view_mm: float | None) -> float | None:
    """``field_of_view_mm`` as a float (None stays None: no crop); InputError unless it is a positive number."""
    if field_of_view_mm is None:
        return None
    try:
        fov = float(field_of_view_mm)
    except (TypeError, ValueError):
        fov = math.nan
    if not math.isfinite(fov) or fov <= 0:
        raise InputError("field_of_view_mm", f"must be a positive number of millimetres, got {field_of_view_mm!r}")
    return fov


def check_field_of_view_centre(centre: str) -> str:
    """``centre`` unless it is not one of `FIELD_OF_VIEW_CENTRES` (InputError)."""
    if centre not in FIELD_OF_VIEW_CENTRES:
        raise InputError("field_of_view_centre", f"must be one of {list(FIELD_OF_VIEW_CENTRES)}, got {centre!r}")
    return centre


def check_centred_field(field_of_view_mm: float | None, centre: str) -> tuple[float | None, str]:
    """A field of view and its centre, checked together: a heart-centred field needs a size (InputError)."""
    field_of_view_mm = check_field_of_view(field_of_view_mm)
    if check_field_of_view_centre(centre) == "heart" and field_of_view_mm is None:
        raise InputError("field_of_view_centre", "a heart-centred field of view needs field_of_view_mm (a size in mm)")
    return field_of_view_mm, centre


def _check_point(centre: Sequence[float] | None) -> tuple[float, float] | None:
    if centre is None:
        return None
    try:
        point = tuple(float(v) for v in np.asarray(centre, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError):
        point = ()
    if len(point) != 2 or not all(math.isfinite(v) for v in point):
        raise InputError("fov_centre", f"must be a finite (row, column) pixel position or None, got {centre!r}")
    return point  # type: ignore[return-value]


def field_of_view_box(
    shape: Sequence[int], spacing_mm: Sequence[float], field_of_view_mm: float,
    centre: Sequence[float] | None = None,
) -> tuple[tuple[int, int], ...]:
    """Per in-plane axis, ``(n, offset)``: the ``n``-pixel grid spanning ``field_of_view_mm`` at the slice's spacing,
    centred on the slice, or on ``centre`` ((row, column) pixel position) when given; pixel ``i`` of that grid is
    pixel ``i + offset`` of the slice (a negative offset pads)."""
    fov = check_field_of_view(field_of_view_mm)
    if fov is None:
        raise InputError("field_of_view_mm", "a field-of-view box needs a field of view, got None")
    sp = [float(v) for v in np.asarray(spacing_mm, dtype=np.float64).reshape(-1)]
    if len(sp) != 2 or not all(math.isfinite(v) and v > 0 for v in sp):
        raise InputError("pixel_spacing", f"need (row, column) spacing > 0 mm for a field of view, got {spacing_mm!r}")
    point = _check_point(centre)
    box = []
    for axis, (size, step) in enumerate(zip(shape[-2:], sp)):
        n = max(1, int(round(fov / step)))
        offset = (int(size) - n) // 2 if point is None else int(math.floor(point[axis] - (n - 1) / 2 + 0.5))
        box.append((n, offset))
    return tuple(box)


def _overlap(size: int, n: int, offset: int) -> tuple[slice, slice]:
    """Matching (slice-grid, field-grid) index ranges of one axis."""
    lo, hi = max(offset, 0), min(offset + n, size)
    return slice(lo, hi), slice(lo - offset, hi - offset)


def crop_or_pad_to_box(img: torch.Tensor, box: Sequence[tuple[int, int]], value: float) -> torch.Tensor:
    """(..., H, W) -> (..., n_rows, n_cols): the field-of-view grid, ``value`` where it lies outside the slice."""
    (nr, orr), (nc, oc) = box
    out = torch.full((*img.shape[:-2], nr, nc), value, dtype=img.dtype, device=img.device)
    (sr, dr), (sc, dc) = _overlap(img.shape[-2], nr, orr), _overlap(img.shape[-1], nc, oc)
    out[..., dr, dc] = img[..., sr, sc]
    return out


def uncrop_from_box(maps: np.ndarray, shape: Sequence[int], box: Sequence[tuple[int, int]]) -> np.ndarray:
    """Inverse of `crop_or_pad_to_box` for (..., n_rows, n_cols) maps: back on the (H, W) slice, 0 outside the field."""
    (nr, orr), (nc, oc) = box
    h, w = int(shape[-2]), int(shape[-1])
    out = np.zeros((*maps.shape[:-2], h, w), dtype=maps.dtype)
    (sr, dr), (sc, dc) = _overlap(h, nr, orr), _overlap(w, nc, oc)
    out[..., sr, sc] = maps[..., dr, dc]
    return out


class FieldOfView(Transform):
    """Crop or pad a (..., H, W) slice to a square ``field_of_view_mm`` at its own pixel spacing (mm), centred on the
    slice or on ``centre`` ((row, column) pixels); ``field_of_view_mm=None`` leaves it unchanged. Padding is
    ``value`` (air for HU, 0 for masks)."""

    def __init__(self, field_of_view_mm: float | None, value: float = AIR_HU) -> None:
        self.field_of_view_mm = check_field_of_view(field_of_view_mm)
        self.value = float(value)

    def __call__(self, img: torch.Tensor, spacing_mm: Sequence[float],
                 centre: Sequence[float] | None = None) -> torch.Tensor:
        t = convert_to_tensor(img, track_meta=False)
        if self.field_of_view_mm is None:
            return t
        if t.ndim < 2:
            raise ValueError(f"FieldOfView expects (..., H, W), got shape {tuple(t.shape)}")
        box = field_of_view_box(t.shape, spacing_mm, self.field_of_view_mm, centre)
        return crop_or_pad_to_box(t, box, self.value)


class FieldOfViewd(MapTransform):
    """Dictionary version of `FieldOfView`: the spacing comes from ``spacing_key``; ``values`` pads each key (one
    value, or one per key); the field is centred on ``centre_key``'s (row, column) pixel position where the sample
    has a finite one (`slice_records` with a heart-centred field), else on the slice (None or NaN: no heart found).
    The field's size before resizing goes to ``size_key``: the resized grid's spacing is ``field_of_view_mm / image
    size``, which localization metrics need."""

    def __init__(
        self,
        keys: KeysCollection,
        field_of_view_mm: float | None,
        values: Sequence[float] | float = AIR_HU,
        spacing_key: str = "pixel_spacing",
        size_key: str = "field_size",
        centre_key: str = "fov_centre",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.croppers = [FieldOfView(field_of_view_mm, v) for v in ensure_tuple_rep(values, len(self.keys))]
        self.spacing_key = spacing_key
        self.size_key = size_key
        self.centre_key = centre_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.croppers[0].field_of_view_mm is None:
            return d
        if self.spacing_key not in d:
            raise InputError(self.spacing_key, "missing from the sample: a field of view in mm needs the pixel spacing")
        centre = d.get(self.centre_key)
        if centre is not None and not np.isfinite(np.asarray(centre, dtype=np.float64)).all():
            centre = None
        for key, cropper in self.key_iterator(d, self.croppers):
            d[key] = cropper(d[key], d[self.spacing_key], centre)
            d[self.size_key] = list(d[key].shape[-2:])
        return d


class MaxPoolResize(Transform):
    """Resize a channel-first 2D image (C, H, W) to `spatial_size` by adaptive max-pooling. An axis shorter than the
    target is first repeated (nearest neighbour, an integer factor), so values are never blended."""

    def __init__(self, spatial_size: Sequence[int]) -> None:
        self.spatial_size = tuple(int(s) for s in spatial_size)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        t = convert_to_tensor(img, track_meta=False)
        if t.ndim != 3:
            raise ValueError(f"MaxPoolResize expects (C, H, W), got shape {tuple(t.shape)}")
        dtype = t.dtype
        t = t.float()
        for axis, target in ((1, self.spatial_size[0]), (2, self.spatial_size[1])):
            if t.shape[axis] < target:
                t = t.repeat_interleave(-(-target // t.shape[axis]), dim=axis)
        out = F.adaptive_max_pool2d(t[None], self.spatial_size)[0]
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
