"""The overlays' PNG encoder: what any PNG reader decodes is the image, to the 8-bit value."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
from PIL import Image

from coronary_calcium.inference.outputs import OVERLAY_MARGIN_PX, _png_bytes, overlay_window, render_overlay


def test_png_bytes_decode_to_the_image():
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 300, size=(40, 56)).astype(np.float32)
    cam = rng.random((40, 56)).astype(np.float32)
    kept = np.zeros((40, 56), bool)
    kept[10:13, 10:13] = True
    rgb = render_overlay(hu, cam, kept, ~kept & (hu > 500), (-250.0, 950.0))
    decoded = Image.open(io.BytesIO(_png_bytes(rgb)))
    assert decoded.mode == "RGB" and decoded.size == (rgb.shape[1], rgb.shape[0])
    assert rgb.dtype == np.uint8 and np.array_equal(np.asarray(decoded), rgb)
    flat = np.full((3, 5, 3), 0.5, np.float32)  # one colour, and a width not a multiple of anything
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(_png_bytes(flat)))), np.full((3, 5, 3), 128, np.uint8))


def test_overlay_panels_blend_and_outline():
    """Left: the windowed CT; right: CT blended with the heat map by alpha * heat; outlines around the masks only."""
    hu = np.full((30, 30), 350.0, np.float32)  # mid-window: gray 127.5
    cam = np.zeros((30, 30), np.float32)
    cam[:, 15:] = 1.0
    kept = np.zeros((30, 30), bool)
    kept[5:8, 5:8] = True
    rgb = render_overlay(hu, cam, kept, None, (-250.0, 950.0), alpha=0.5)
    scale = rgb.shape[0] // 30  # small slices are upscaled to a readable panel
    w = 30 * scale
    left, gap, right = rgb[:, :w], rgb[:, w:w + 4], rgb[:, w + 4:]
    assert (gap == 255).all()
    assert left[0, 0].tolist() == [128, 128, 128] and right[0, 0].tolist() == [128, 128, 128]  # no heat: CT only
    hot = right[0, -1].astype(int)  # heat 1: half CT gray, half the colormap's top (dark red)
    assert np.abs(hot - (np.array([127.5] * 3) + 0.5 * (np.array([128, 0, 0]) - 127.5))).max() <= 1
    ring = (left == [0, 255, 0]).all(axis=2)
    assert ring.any() and not ring[6 * scale, 6 * scale] and ring[5 * scale - 1, 6 * scale]


def test_overlay_window_is_the_field_of_view_grown_to_hold_every_kept_lesion():
    mask = np.zeros((4, 100, 120), bool)
    result = SimpleNamespace(candidates=SimpleNamespace(field_window=((20, 70), (30, 90))))
    assert overlay_window(result, mask) == (slice(20, 70), slice(30, 90))
    mask[2, 80:83, 10:12] = True  # a kept lesion below and left of the field
    m = OVERLAY_MARGIN_PX
    assert overlay_window(result, mask) == (slice(20, 83 + m), slice(10 - m, 90))
    mask[1, 0:2, 118:120] = True  # at the slice's corner: the window stops at the slice
    assert overlay_window(result, mask) == (slice(0, 83 + m), slice(10 - m, 120))
    whole = SimpleNamespace(candidates=SimpleNamespace(field_window=None))  # a network without a field of view
    assert overlay_window(whole, mask) == (slice(0, 100), slice(0, 120))
