"""Max-pooling downsampling, HU windows as channels, and training augmentation that keeps the 130 HU label rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from coronary_calcium.data.transforms import (
    FieldOfViewd,
    HUWindows,
    HUWindowsd,
    MaxPoolResize,
    MaxPoolResized,
    apply_hu_windows,
    check_centred_field,
    check_field_of_view_centre,
    crop_or_pad_to_box,
    field_of_view_box,
    uncrop_from_box,
)
from coronary_calcium.errors import InputError
from coronary_calcium.train.bundle import BUNDLE_ROOT


def test_max_pooling_keeps_a_one_pixel_deposit_and_any_mask_pixel():
    img = torch.full((1, 8, 8), 40.0)
    img[0, 5, 2] = 400.0
    out = MaxPoolResize((4, 4))(img)
    assert out.shape == (1, 4, 4) and out[0, 2, 1] == 400.0 and (out == 40.0).sum() == 15
    mask = torch.zeros((1, 8, 8), dtype=torch.uint8)
    mask[0, 7, 7] = 1
    d = MaxPoolResized(keys=("image", "mask"), spatial_size=(4, 4))({"image": img, "mask": mask})
    assert d["mask"].dtype == torch.uint8 and d["mask"].sum() == 1 and d["mask"][0, 3, 3] == 1
    up = MaxPoolResize((16, 12))(img)  # upsampling repeats pixels: no blending, the peak keeps its HU
    assert up.shape == (1, 16, 12) and up.max() == 400.0 and set(up.unique().tolist()) == {40.0, 400.0}


def test_field_of_view_gives_every_scan_the_same_millimetres_per_pixel():
    """A 0.4 mm gated slice is padded and a 0.8 mm chest slice cropped to 250 mm: after resizing, one deposit covers
    the same size and the spacing of the network's grid is 250 mm / 256 for both."""
    d = {}
    for spacing, n in ((0.4, 625), (0.8, 312)):
        img = torch.full((1, 512, 512), 40.0)
        img[0, 250:253, 250:253] = 400.0  # a 3 x 3 pixel deposit near the centre
        mask = (img >= 130).to(torch.uint8)
        d[spacing] = FieldOfViewd(("image", "mask"), 250.0, values=(-1024.0, 0.0))(
            {"image": img, "mask": mask, "pixel_spacing": [spacing, spacing]}
        )
        assert d[spacing]["image"].shape == (1, n, n) and d[spacing]["field_size"] == [n, n]
        assert d[spacing]["mask"].sum() == 9  # the centred deposit is kept, cropped or padded
    padded = d[0.4]["image"]
    assert padded[0, 0, 0] == -1024.0 and padded[0, 56, 56] == -1024.0 and padded[0, 57, 57] == 40.0
    assert d[0.8]["image"][0, 0, 0] == 40.0  # cropped: no padding
    box = field_of_view_box((512, 512), (0.8, 0.8), 250.0)
    assert box == ((312, 100), (312, 100))
    x = np.arange(512 * 512, dtype=np.float32).reshape(512, 512)
    back = uncrop_from_box(crop_or_pad_to_box(torch.as_tensor(x), box, -1.0).numpy(), (512, 512), box)
    assert np.array_equal(back[100:412, 100:412], x[100:412, 100:412]) and back[:100].sum() == 0
    box = field_of_view_box((512, 512), (0.4, 0.4), 250.0)
    padded = crop_or_pad_to_box(torch.as_tensor(x), box, -1.0).numpy()
    assert np.array_equal(uncrop_from_box(padded, (512, 512), box), x)
    assert FieldOfViewd("image", None)({"image": img})["image"] is img  # None: unchanged, no spacing needed


def test_field_of_view_centred_on_a_point():
    """A heart-centred field: the box is centred on the given (row, column) pixel, parts beyond the slice are padded,
    the inverse puts maps back at the same place, and a sample whose centre is NaN (no heart found) or None gets the
    image-centred field, as inference falls back."""
    box = field_of_view_box((512, 512), (0.5, 0.5), 100.0, centre=(100.0, 400.5))
    assert box == ((200, 1), (200, 301))  # rows 1..200 around row 100 (halves round up); columns 301..500
    assert field_of_view_box((512, 512), (0.5, 0.5), 100.0, centre=(20.0, 256.0)) == ((200, -79), (200, 157))
    x = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
    box = field_of_view_box((64, 48), (1.0, 1.0), 20.0, centre=(5.0, 40.0))
    assert box == ((20, -4), (20, 31))  # 4 rows of padding above, 3 columns beyond the right edge
    field = crop_or_pad_to_box(torch.as_tensor(x), box, -1.0).numpy()
    assert np.array_equal(field[4:, :17], x[:16, 31:48]) and (field[:4] == -1).all() and (field[:, 17:] == -1).all()
    back = uncrop_from_box(field, (64, 48), box)
    assert np.array_equal(back[:16, 31:], x[:16, 31:]) and back[16:].sum() == 0 and back[:, :31].sum() == 0
    img = torch.as_tensor(x)[None]
    crop = FieldOfViewd("image", 20.0, values=-1.0)
    at = crop({"image": img, "pixel_spacing": [1.0, 1.0], "fov_centre": [5.0, 40.0]})["image"]
    assert np.array_equal(at[0].numpy(), field)
    centred = crop({"image": img, "pixel_spacing": [1.0, 1.0]})["image"]
    for missing in ([float("nan"), float("nan")], None):
        same = crop({"image": img, "pixel_spacing": [1.0, 1.0], "fov_centre": missing})["image"]
        assert torch.equal(same, centred)
    with pytest.raises(InputError, match="fov_centre"):
        field_of_view_box((64, 48), (1.0, 1.0), 20.0, centre=(5.0,))
    with pytest.raises(InputError, match="field_of_view_centre"):
        check_field_of_view_centre("aorta")
    with pytest.raises(InputError, match="needs field_of_view_mm"):
        check_centred_field(None, "heart")
    assert check_centred_field(None, "image") == (None, "image")


@pytest.mark.parametrize("fov, spacing, item", [(0.0, [0.5, 0.5], "field_of_view_mm"),
                                                ("wide", [0.5, 0.5], "field_of_view_mm"),
                                                (250.0, [0.5], "pixel_spacing"),
                                                (250.0, [0.5, -1.0], "pixel_spacing"), (250.0, None, "pixel_spacing")])
def test_bad_field_of_view_or_spacing_is_refused(fov, spacing, item):
    sample = {"image": torch.zeros((1, 8, 8))}
    if spacing is not None:
        sample["pixel_spacing"] = spacing
    with pytest.raises(InputError, match=item):
        FieldOfViewd("image", fov)(sample)


def test_hu_windows_stack_one_scaled_channel_per_window():
    hu = torch.tensor([[[-1000.0, 0.0, 130.0, 380.0, 2000.0]]])  # (1, 1, 5)
    out = HUWindows([[-250, 950], [130, 630]])(hu)
    assert out.shape == (2, 1, 5)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 250 / 1200, 380 / 1200, 630 / 1200, 1.0]))
    torch.testing.assert_close(out[1, 0], torch.tensor([0.0, 0.0, 0.0, 0.5, 1.0]))
    two = HUWindowsd(keys="image", windows=[[0, 100], [100, 200]])({"image": torch.stack([hu[0], hu[0] + 50])})
    assert two["image"].shape == (4, 1, 5)  # input channel 0's windows, then input channel 1's
    torch.testing.assert_close(two["image"][2], apply_hu_windows(hu[0] + 50, [[0, 100]]))


@pytest.mark.parametrize("windows", [[], [[950, -250]], [[0, 0]], [[1, 2, 3]], "wide"])
def test_bad_hu_windows_are_refused(windows):
    with pytest.raises(InputError, match="hu_windows"):
        HUWindows(windows)


def test_training_augmentation_keeps_calcium_above_the_threshold():
    """Rotation by nearest neighbour and HU-sized brightness/contrast changes keep a one-pixel deposit's peak
    (a bilinear rotation or a gamma change would push it below 130 HU while the label still says positive)."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "train.json"))
    parser["image_size"] = [64, 64]
    pipeline = parser.get_parsed_content("train#preprocessing")
    lo, hi = parser.get_parsed_content("hu_windows")[1]
    brightness, contrast = parser.get_parsed_content("brightness_hu"), parser.get_parsed_content("contrast_factor")
    step = parser.get_parsed_content("field_of_view_mm") / 64  # the field of view is the whole 64 x 64 image
    image = np.full((1, 64, 64), 40, dtype=np.int16)
    image[0, 30, 33] = 300
    mask = (image >= 130).astype(np.uint8)
    floor = ((300 - brightness) * (1 - contrast) - lo) / (hi - lo)
    peaks = []
    for seed in range(30):
        pipeline.set_random_state(seed)
        out = pipeline({"image": image.copy(), "mask": mask.copy(), "pixel_spacing": [step, step]})
        assert out["image"].shape == (2, 64, 64)
        if out["mask"].sum() == 1:  # nearest rotation may drop the pixel, then it drops from the mask too
            peaks.append(float(out["image"][1][out["mask"][0] > 0].max()))
    assert len(peaks) >= 25 and min(peaks) >= floor - 1e-6
