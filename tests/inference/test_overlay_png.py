"""The overlays' PNG encoder: what any PNG reader decodes is the image, to the 8-bit value."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from coronary_calcium.inference.outputs import _png_bytes, render_overlay


def test_png_bytes_decode_to_the_image():
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 300, size=(40, 56)).astype(np.float32)
    cam = rng.random((40, 56)).astype(np.float32)
    kept = np.zeros((40, 56), bool)
    kept[10:13, 10:13] = True
    rgb = render_overlay(hu, cam, kept, ~kept & (hu > 500), (-250.0, 950.0))
    decoded = Image.open(io.BytesIO(_png_bytes(rgb)))
    assert decoded.mode == "RGB" and decoded.size == (rgb.shape[1], rgb.shape[0])
    expected = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(decoded), expected)
    flat = np.full((3, 5, 3), 0.5, np.float32)  # one colour, and a width not a multiple of anything
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(_png_bytes(flat)))), np.full((3, 5, 3), 128, np.uint8))
