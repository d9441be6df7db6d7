"""Layer x slice CAM montage and the choice of its slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from coronary_calcium.errors import InputError
from coronary_calcium.explain.montage import _depth_order, pick_montage_samples, write_layer_montage

SIZE = 32


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def _samples(n_pos: int = 3, n_neg: int = 2, seed: int = 0, n_scans: int = 3) -> list[dict]:
    """Positive i has an (i+2) x (i+2) bright blob with its mask: mask areas grow with i."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n_pos + n_neg):
        image = np.clip(rng.normal(0.2, 0.05, (1, SIZE, SIZE)), 0, 1).astype(np.float32)
        mask = np.zeros((1, SIZE, SIZE), np.uint8)
        if i < n_pos:
            mask[0, 8 : 10 + i, 12 : 14 + i] = 1
            image[mask > 0] = 0.9
        items.append(
            {
                "image": torch.as_tensor(image),
                "mask": torch.as_tensor(mask),
                "label": int(i < n_pos),
                "scan_id": f"scan{i % n_scans}",
                "slice_index": i,
                "pixel_spacing": [0.5, 0.5],
            }
        )
    return items


def _png_size(path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size  # (width, height)


def test_montage_png_grows_with_rows_and_columns(tmp_path) -> None:
    net, samples = _net(), _samples()
    net.train()
    small = write_layer_montage(net, ["3"], samples[:2], tmp_path / "small.png")
    wide = write_layer_montage(net, ["3"], samples[:4], tmp_path / "wide.png")
    big = write_layer_montage(net, ["3", "1"], samples[:4], tmp_path / "sub" / "big.png", method="layercam")
    assert small == tmp_path / "small.png" and big.exists()
    (w1, h1), (w2, h2), (w3, h3) = _png_size(small), _png_size(wide), _png_size(big)
    assert w2 > w1 and h2 == h1  # more columns: wider, same height
    assert w3 == w2 and h3 > h2  # more rows: taller
    # about panel_inches * dpi = 200 px per panel
    assert 2 * 200 <= w1 < 4 * 200 and 200 <= h1 < 2 * 200 and 2 * 200 <= h3 < 3 * 200
    # atomic write: no temporary files left; model left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.png", "sub", "wide.png"]
    assert net.training and all(p.grad is None for p in net.parameters())
    assert all(not m._forward_hooks for m in net.modules())


def test_montage_options_and_errors(tmp_path) -> None:
    net, samples = _net(), _samples()
    out = write_layer_montage(
        net, "3", samples[:2], tmp_path / "t.png", titles=["a", "b"], window=None, cmap="inferno", dpi=50
    )
    w, h = _png_size(out)
    assert w < 400 and h < 200  # half the dpi: half the pixels
    with pytest.raises(InputError):
        write_layer_montage(net, ["3"], samples[:2], tmp_path / "x.png", titles=["only one"])
    with pytest.raises(InputError):
        write_layer_montage(net, ["3"], [], tmp_path / "x.png")
    with pytest.raises(InputError):
        write_layer_montage(net, ["nope"], samples[:2], tmp_path / "x.png")
    with pytest.raises(InputError):
        write_layer_montage(net, ["3"], samples[:2], tmp_path / "x.png", method="cam++")
    odd = dict(samples[1], image=torch.zeros(1, 16, 16))
    with pytest.raises(InputError):
        write_layer_montage(net, ["3"], [samples[0], odd], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_rows_are_ordered_shallow_to_deep() -> None:
    net = _net()
    assert _depth_order(net, ["3", "1"]) == ["1", "3"]
    assert _depth_order(nn.DataParallel(net), ["module.3", "1"]) == ["1", "module.3"]


def test_pick_largest_masks_distinct_scans_then_negatives() -> None:
    data = _samples(n_pos=6, n_neg=4, n_scans=10)
    picked = pick_montage_samples(data, n_positive=3, n_negative=2, seed=0)
    assert [s["label"] for s in picked] == [1, 1, 1, 0, 0]
    # positives i have (i+2)^2 px masks: the three largest are 5, 4, 3, in that order
    assert [s["slice_index"] for s in picked[:3]] == [5, 4, 3]
    assert pick_montage_samples(data, 3, 2, seed=0) == picked  # deterministic
    # one slice per scan first: scans 0..2 repeat, so the largest of each scan comes before a second of a scan
    data = _samples(n_pos=6, n_neg=4, n_scans=3)
    picked = pick_montage_samples(data, n_positive=4, n_negative=2, seed=0)
    pos = picked[:4]
    assert [s["slice_index"] for s in pos[:3]] == [5, 4, 3]  # scans 2, 1, 0
    assert pos[3]["slice_index"] == 2  # then the largest remaining
    assert len({s["scan_id"] for s in picked[4:]}) == 2


def test_pick_random_and_without_cheap_labels() -> None:
    data = _samples(n_pos=6, n_neg=4, n_scans=10)
    a = pick_montage_samples(data, 2, 1, seed=1, by="random")
    b = pick_montage_samples(data, 2, 1, seed=2, by="random")
    assert [s["label"] for s in a] == [1, 1, 0] and [s["label"] for s in b] == [1, 1, 0]
    assert pick_montage_samples(data, 2, 1, seed=1, by="random") == a

    class Plain(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, i: int) -> dict:
            return data[i]

    picked = pick_montage_samples(Plain(), 3, 2, seed=0)
    assert [s["slice_index"] for s in picked[:3]] == [5, 4, 3] and [s["label"] for s in picked[3:]] == [0, 0]
    # fewer available than asked: all of them
    assert len(pick_montage_samples(data, 10, 10)) == 10
    with pytest.raises(InputError):
        pick_montage_samples(data, by="smallest")


def test_montage_of_picked_samples(tmp_path) -> None:
    data = _samples(n_pos=6, n_neg=4)
    picked = pick_montage_samples(data, n_positive=4, n_negative=2)
    out = write_layer_montage(_net(), ["1", "3"], picked, tmp_path / "montage.png")
    w, h = _png_size(out)
    assert w > h  # 6 columns x 2 rows
