"""evaluate_localization / write_localization_report on a constructed blob task with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from coronary_calcium.errors import InputError
from coronary_calcium.explain.cam import CAM
from coronary_calcium.explain.evaluation import evaluate_localization, resized_spacing, write_localization_report
from coronary_calcium.explain.localization import localization_summary
from coronary_calcium.networks import create_network, network_spec

SIZE = 32
BLOB = 4
# original 64 x 64 slice at (0.5, 1.0) mm resized to 32 x 32: the image grid has (1.0, 2.0) mm pixels
PIXEL_SPACING = [0.5, 1.0]
ORIGINAL = (64, 64)
GRID_SPACING = (1.0, 2.0)


def _slice(rng: np.random.Generator, positive: bool, size: int = SIZE, blob: int = BLOB, margin: int = 5) -> tuple:
    image = np.clip(rng.normal(0.2, 0.05, (1, size, size)), 0, 1).astype(np.float32)
    mask = np.zeros((1, size, size), np.float32)
    if positive:
        r, c = rng.integers(margin, size - margin - blob + 1, 2)
        mask[0, r : r + blob, c : c + blob] = 1
        image[mask > 0] = 0.9
    return image, mask


def _dataset(n_pos: int = 6, n_neg: int = 6, seed: int = 1, size: int = SIZE) -> list[dict]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n_pos + n_neg):
        image, mask = _slice(rng, i < n_pos, size)
        items.append(
            {
                "image": torch.as_tensor(image),
                "mask": torch.as_tensor(mask),
                "label": int(i < n_pos),
                "scan_id": f"scan{i % 3}",
                "slice_index": i,
                "pixel_spacing": list(PIXEL_SPACING),
            }
        )
    return items


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.act3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act3(self.conv3(self.act2(self.conv2(self.act1(self.conv1(x))))))
        return self.fc(torch.flatten(self.pool(x), 1))


LAYERS = ["act1", "act3"]


def _net(seed: int = 0) -> _Net:
    torch.manual_seed(seed)
    return _Net()


@pytest.fixture(scope="module")
def trained() -> _Net:
    """The blob detector after 40 Adam steps on batches of 16 fresh random slices (well under a second)."""
    net = _net(0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    rng = np.random.default_rng(123)
    for _ in range(40):
        labels = rng.integers(0, 2, 16)
        x = torch.as_tensor(np.stack([_slice(rng, bool(lab))[0] for lab in labels]))
        loss = nn.functional.cross_entropy(net(x), torch.as_tensor(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net


def _brute_force_chance(box: tuple[int, int, int, int], spacing: tuple[float, float], tol: float) -> float:
    """Fraction of pixels whose centre lies within ``tol`` mm of the box (r0, r1, c0, c1), by explicit distances."""
    r0, r1, c0, c1 = box
    hits = 0
    for r in range(SIZE):
        for c in range(SIZE):
            dr = max(r0 - r, 0, r - (r1 - 1)) * spacing[0]
            dc = max(c0 - c, 0, c - (c1 - 1)) * spacing[1]
            hits += math.hypot(dr, dc) <= tol + 1e-9
    return hits / SIZE**2


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _values_in_range(layer: dict) -> None:
    for key, pg in layer["pointing_game"].items():
        assert 0.0 <= pg["hit_rate"] <= 1.0 and 0.0 < pg["chance"] < 1.0, key
        assert pg["lift"] == pytest.approx(pg["hit_rate"] / pg["chance"])
    e = layer["energy_pointing_game"]
    assert 0.0 <= e["mean"] <= 1.0 and e["lift"] == pytest.approx(e["mean"] / e["chance"])
    assert 0.0 <= layer["otsu"]["iou"] <= layer["otsu"]["dice"] <= 1.0
    assert 0.0 <= layer["auprc"]["mean"] <= 1.0
    assert layer["auprc"]["baseline"] == pytest.approx(e["chance"])
    peak = layer["peak"]
    assert 0.0 <= peak["auc"] <= 1.0 and peak["n_pos"] == 6 and peak["n_neg"] == 6
    assert set(peak["neg_quantiles"]) == {"q50", "q90", "q95", "q99"}
    q = list(peak["neg_quantiles"].values())
    assert q == sorted(q) and q[-1] <= peak["neg_max"]


def test_result_structure_ranges_and_chance_rates() -> None:
    data = _dataset()
    result = evaluate_localization(
        _net(), LAYERS, data, batch_size=5, original_size=ORIGINAL, sanity_samples=3, progress=False
    )
    json.dumps(result, allow_nan=False)  # strict JSON, no NaN
    assert result["method"] == "gradcam" and result["class_idx"] == 1
    assert (result["n_positive"], result["n_positive_with_mask"], result["n_negative"]) == (6, 6, 6)
    assert result["best_layer"] in LAYERS and result["best_layer_by"] == "pointing_game/3mm/hit_rate"
    assert set(result["layers"]) == set(LAYERS)
    # known area fractions: a 4 x 4 box, and the same box dilated by 3 mm on the (1.0, 2.0) mm image grid
    box_chance = BLOB * BLOB / SIZE**2
    dilated = _brute_force_chance((10, 10 + BLOB, 10, 10 + BLOB), GRID_SPACING, 3.0)
    assert dilated > box_chance
    for layer, m in result["layers"].items():
        _values_in_range(m)
        assert set(m["pointing_game"]) == {"0mm", "3mm"}
        assert m["pointing_game"]["0mm"]["chance"] == pytest.approx(box_chance)
        assert m["pointing_game"]["3mm"]["chance"] == pytest.approx(dilated)
        assert m["energy_pointing_game"]["chance"] == pytest.approx(box_chance)
        assert m["n_positive_slices"] == 6
        sanity = m["sanity"]
        assert sanity["mode"] == "cascade" and sanity["n_samples"] == 3
        assert list(sanity["rho"]) == ["fc", "conv3", "conv2", "conv1"]  # top-down cascade
        assert all(-1.0 <= v <= 1.0 for v in sanity["rho"].values())
        assert sanity["rho_final"] == sanity["rho"]["conv1"]
    assert result["layers"]["act1"]["raw_map_size"] == [32, 32]
    assert result["layers"]["act3"]["raw_map_size"] == [16, 16]


def test_spacing_conversion_changes_the_tolerance() -> None:
    data = _dataset()
    # pixel_spacing taken as the image grid's (0.5, 1.0) mm: 3 mm reaches 6 rows and 3 columns
    as_given = evaluate_localization(_net(), ["act3"], data, original_size=None, sanity_check=False, progress=False)
    expected = _brute_force_chance((10, 10 + BLOB, 10, 10 + BLOB), (0.5, 1.0), 3.0)
    assert as_given["layers"]["act3"]["pointing_game"]["3mm"]["chance"] == pytest.approx(expected)
    # a per-sample "original_size" overrides the argument
    for item in data:
        item["original_size"] = [SIZE, SIZE]
    per_sample = evaluate_localization(_net(), ["act3"], data, sanity_check=False, progress=False)
    assert per_sample["layers"]["act3"]["pointing_game"]["3mm"]["chance"] == pytest.approx(expected)
    assert resized_spacing([0.5, 0.7], (256, 256), (512, 512)) == pytest.approx((1.0, 1.4))
    assert resized_spacing([0.5, 0.7], (256, 256), None) == (0.5, 0.7)
    with pytest.raises(InputError):
        resized_spacing([0.5, -1], (256, 256))


def test_matches_localization_summary_and_batching() -> None:
    net, data = _net(), _dataset()
    result = evaluate_localization(
        net, LAYERS, data, batch_size=4, original_size=ORIGINAL, sanity_check=False, progress=False
    )
    one = evaluate_localization(
        net, LAYERS, data, batch_size=1, original_size=ORIGINAL, sanity_check=False, progress=False
    )
    x = torch.stack([d["image"] for d in data])
    labels = np.array([d["label"] for d in data])
    with CAM(net, LAYERS) as cam:
        maps = cam(x, 1)
    for layer in LAYERS:
        up = maps[layer].upsampled[:, 0].numpy()
        peaks = maps[layer].peak.numpy()
        ref = localization_summary(
            up[labels == 1],
            [d["mask"] for d in data if d["label"] == 1],
            spacings=GRID_SPACING,
            pos_peaks=peaks[labels == 1],
            neg_peaks=peaks[labels == 0],
        )
        got = result["layers"][layer]
        for key in ("pointing_game", "energy_pointing_game", "otsu", "auprc", "peak"):
            assert _flat(got[key]) == pytest.approx(_flat(ref[key]), rel=1e-5, abs=1e-7), key
            assert _flat(one["layers"][layer][key]) == pytest.approx(_flat(got[key]), rel=1e-4, abs=1e-6), key


def test_trained_network_localizes_the_blob(trained: _Net) -> None:
    data = _dataset(seed=7)
    result = evaluate_localization(
        trained, LAYERS, data, original_size=ORIGINAL, sanity_mode="full", sanity_samples=4, progress=False
    )
    last = result["layers"]["act3"]
    pg = last["pointing_game"]["3mm"]
    assert pg["hit_rate"] >= 0.8 and pg["chance"] < 0.15 and pg["lift"] > 5
    assert last["pointing_game"]["0mm"]["hit_rate"] >= 0.5
    assert last["energy_pointing_game"]["lift"] > 2
    assert last["auprc"]["lift"] > 2
    assert last["peak"]["auc"] >= 0.9  # raw peaks separate positive from negative slices
    # the learned maps depend on the weights: randomising all of them decorrelates the map
    assert list(last["sanity"]["rho"]) == ["all"] and last["sanity"]["rho_final"] < 0.5
    # best layer: highest 3 mm hit rate, ties broken by the energy-based pointing game
    ranked = max(LAYERS, key=lambda n: (result["layers"][n]["pointing_game"]["3mm"]["hit_rate"],
                                        result["layers"][n]["energy_pointing_game"]["mean"]))
    assert result["best_layer"] == ranked
    # the same network before training does not localize: training is what moves the maps onto the blob
    untrained = evaluate_localization(
        _net(0), ["act3"], data, original_size=ORIGINAL, sanity_check=False, progress=False
    )
    assert untrained["layers"]["act3"]["pointing_game"]["3mm"]["hit_rate"] <= pg["hit_rate"] - 0.5


def test_bf16_precision(trained: _Net) -> None:
    data = _dataset(seed=7)
    fp32 = evaluate_localization(trained, ["act3"], data, original_size=ORIGINAL, sanity_check=False, progress=False)
    bf16 = evaluate_localization(
        trained, ["act3"], data, original_size=ORIGINAL, sanity_check=False, precision="bf16", progress=False
    )
    assert bf16["precision"] == "bf16"
    a, b = fp32["layers"]["act3"], bf16["layers"]["act3"]
    assert b["pointing_game"]["3mm"]["hit_rate"] >= 0.8
    assert b["energy_pointing_game"]["mean"] == pytest.approx(a["energy_pointing_game"]["mean"], abs=0.05)


class _NoCheapLabels(torch.utils.data.Dataset):
    """A Dataset whose labels are only known by loading its samples."""

    def __init__(self, items: list[dict]):
        self.items = items
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        self.loaded.append(i)
        return self.items[i]


def test_max_negative() -> None:
    data = _dataset(n_pos=3, n_neg=9)
    res = evaluate_localization(_net(), ["act3"], data, max_negative=3, sanity_check=False, progress=False)
    assert (res["n_positive"], res["n_negative"]) == (3, 3)
    assert res["layers"]["act3"]["peak"]["n_neg"] == 3
    # without cheap labels: the first negatives met are kept, all samples are read
    ds = _NoCheapLabels(data)
    res = evaluate_localization(_net(), ["act3"], ds, max_negative=2, sanity_check=False, progress=False)
    assert (res["n_positive"], res["n_negative"]) == (3, 2) and sorted(ds.loaded) == list(range(12))
    none = evaluate_localization(_net(), ["act3"], data, max_negative=0, sanity_check=False, progress=False)
    assert none["n_negative"] == 0 and none["layers"]["act3"]["peak"]["auc"] is None


def test_no_positive_masks_and_model_untouched() -> None:
    net = _net()
    net.train()
    data = _dataset(n_pos=2, n_neg=2)
    for item in data[:2]:
        item["mask"] = torch.zeros_like(item["mask"])  # positive label, empty mask: peaks only
    res = evaluate_localization(net, LAYERS, data, progress=False)
    assert res["n_positive"] == 2 and res["n_positive_with_mask"] == 0 and res["best_layer"] is None
    m = res["layers"]["act3"]
    assert m["pointing_game"]["3mm"]["hit_rate"] is None and m["sanity"] is None
    assert m["peak"]["n_pos"] == 2 and m["peak"]["auc"] is not None
    json.dumps(res, allow_nan=False)
    assert net.training and all(p.grad is None for p in net.parameters())
    assert all(not mod._forward_hooks for mod in net.modules())


def test_registry_test_network() -> None:
    net = create_network("tiny_cnn")
    layers = list(network_spec("tiny_cnn").cam_layers)
    res = evaluate_localization(net, layers, _dataset(size=64), sanity_samples=2, progress=False)
    assert set(res["layers"]) == set(layers) and res["n_positive_with_mask"] == 6
    assert res["layers"][layers[-1]]["raw_map_size"] == [4, 4]


def test_bad_input() -> None:
    net, data = _net(), _dataset(n_pos=1, n_neg=1)
    for kwargs in ({"method": "cam++"}, {"precision": "fp16"}, {"batch_size": 0}, {"tolerances_mm": (-1.0,)},
                   {"max_negative": -1}, {"sanity_mode": "half"}):
        with pytest.raises(InputError):
            evaluate_localization(net, ["act3"], data, progress=False, **kwargs)
    with pytest.raises(InputError):
        evaluate_localization(net, ["act3"], [], progress=False)
    with pytest.raises(InputError):
        evaluate_localization(net, ["nope"], data, progress=False)
    del data[0]["pixel_spacing"]
    with pytest.raises(InputError, match="pixel_spacing"):
        evaluate_localization(net, ["act3"], data, progress=False)


def test_write_report_json_and_tensorboard(tmp_path) -> None:
    result = evaluate_localization(_net(), LAYERS, _dataset(), original_size=ORIGINAL, sanity_samples=2, progress=False)
    result["layers"]["act1"]["energy_pointing_game"]["lift"] = float("nan")  # written as null, not NaN
    path = write_localization_report(result, tmp_path / "out")
    assert path == tmp_path / "out" / "localization.json"
    loaded = json.loads(path.read_text())
    assert loaded["layers"]["act1"]["energy_pointing_game"]["lift"] is None
    assert loaded["layers"]["act3"]["pointing_game"] == result["layers"]["act3"]["pointing_game"]
    assert [p.name for p in path.parent.iterdir()] == ["localization.json"]  # no temporary file left

    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    write_localization_report(result, tmp_path / "out", summary_writer=writer, step=7)
    writer.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for layer in LAYERS:
        for name in ("pointing_0mm", "pointing_3mm", "pointing_3mm_chance", "ebpg", "otsu_iou", "otsu_dice",
                     "auprc", "auprc_lift", "peak_auc", "sanity_rho"):
            assert f"localization/{layer}/{name}" in tags, name
    assert "localization/act1/ebpg_lift" not in tags  # the NaN is left out
    event = acc.Scalars("localization/act3/pointing_3mm")[0]
    assert event.step == 7
    assert event.value == pytest.approx(result["layers"]["act3"]["pointing_game"]["3mm"]["hit_rate"])


def test_calcium_pointing_game_with_candidate_pixels(trained: _Net) -> None:
    data = _dataset(seed=7)
    plain = evaluate_localization(trained, ["act3"], data, original_size=ORIGINAL, sanity_check=False, progress=False)
    assert plain["layers"]["act3"]["pointing_game_calcium"] is None  # no candidates given
    for item in data:  # candidates: the deposit plus a bright 2 x 12 "rib" along the top edge, far from it
        cand = item["mask"].clone()
        cand[0, 0:2, 10:22] = 1
        item["candidates"] = cand
    result = evaluate_localization(trained, ["act3"], data, original_size=ORIGINAL, sanity_check=False,
                                   progress=False)
    game = result["layers"]["act3"]["pointing_game_calcium"]
    assert set(game) == {"0mm", "3mm"}
    assert game["0mm"]["chance"] == pytest.approx(BLOB * BLOB / (BLOB * BLOB + 24))
    assert game["3mm"]["hit_rate"] >= result["layers"]["act3"]["pointing_game"]["3mm"]["hit_rate"]
    assert game["3mm"]["hit_rate"] >= 0.8  # the trained blob detector ranks the blob above the rib


def test_gated_maps_are_reported_beside_the_layers(trained: _Net) -> None:
    """gate_layer adds "<layer>*<gate>" entries with the same metrics; their pointing game is that of the product
    map, checked against localization_summary on maps made by hand."""
    data = _dataset(seed=7)
    result = evaluate_localization(trained, ["act3"], data, gate_layer="act1", original_size=ORIGINAL,
                                   sanity_check=False, progress=False)
    assert set(result["layers"]) == {"act3", "act3*act1"} and result["gate_layer"] == "act1"
    gated = result["layers"]["act3*act1"]
    assert gated["raw_map_size"] == [SIZE, SIZE] and gated["sanity"] is None
    positives = [d for d in data if d["label"] == 1]
    x = torch.stack([d["image"] for d in positives])
    with CAM(trained, ["act3"], "gradcam") as deep, CAM(trained, ["act1"], "layercam") as fine:
        maps = (deep(x, 1)["act3"].upsampled * fine(x, 1)["act1"].normalised)[:, 0].numpy()
    ref = localization_summary(maps, [d["mask"][0].numpy() for d in positives], [GRID_SPACING] * len(positives))
    assert gated["pointing_game"]["3mm"]["hit_rate"] == pytest.approx(ref["pointing_game"]["3mm"]["hit_rate"])
    assert gated["pointing_game"]["3mm"]["hit_rate"] >= 0.8
