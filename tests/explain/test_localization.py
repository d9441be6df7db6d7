"""Localization metrics on constructed maps and masks with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from coronary_calcium.errors import InputError
from coronary_calcium.explain.localization import (
    _spearman,
    energy_pointing_game,
    energy_pointing_game_chance,
    lift,
    localization_summary,
    otsu_iou_dice,
    otsu_threshold,
    peak_auc,
    pixel_auprc,
    pointing_game,
    pointing_game_chance,
    randomisation_sanity,
)


def _mask(shape=(32, 32), box=(10, 14, 20, 26)) -> np.ndarray:
    g = np.zeros(shape, bool)
    r0, r1, c0, c1 = box
    g[r0:r1, c0:c1] = True
    return g


def test_delta_at_mask_pixel() -> None:
    g = _mask()
    s = np.zeros(g.shape)
    s[12, 22] = 5.0
    assert pointing_game(s, g) is True
    assert energy_pointing_game(s, g) == pytest.approx(1.0)
    iou, dice = otsu_iou_dice(s, g)
    assert iou == pytest.approx(1 / g.sum()) and dice == pytest.approx(2 / (1 + g.sum()))
    # precision 1 up to recall 1/|G|, then all remaining pixels tie at 0 with precision = base rate
    n = g.sum()
    assert pixel_auprc(s, g) == pytest.approx(1 / n + (1 - 1 / n) * g.mean())


def test_uniform_map() -> None:
    g = _mask()
    s = np.ones(g.shape)
    assert energy_pointing_game(s, g) == pytest.approx(g.mean())
    assert energy_pointing_game_chance(g) == pytest.approx(g.mean())
    assert pixel_auprc(s, g) == pytest.approx(g.mean())  # all tied: precision = base rate
    assert otsu_iou_dice(s, g) == (0.0, 0.0)
    assert energy_pointing_game(np.zeros(g.shape), g) == 0.0
    assert pointing_game(np.zeros(g.shape), g) is False  # a map that points nowhere misses
    assert lift(0.5, 0.25) == 2.0 and np.isnan(lift(0.5, 0.0))


def test_perfect_map_auprc_and_otsu() -> None:
    g = _mask()
    s = g.astype(float) * 3 + 0.1
    assert pixel_auprc(s, g) == pytest.approx(1.0)
    assert otsu_iou_dice(s, g) == pytest.approx((1.0, 1.0))


def test_otsu_bimodal() -> None:
    rng = np.random.default_rng(0)
    v = np.r_[rng.normal(1, 0.1, 500), rng.normal(5, 0.1, 500)]
    assert 1.3 < otsu_threshold(v) < 4.7


def test_auprc_matches_bruteforce() -> None:
    rng = np.random.default_rng(1)
    g = rng.random((16, 16)) < 0.2
    s = np.round(rng.random((16, 16)) * 8) / 8  # many ties
    # sklearn's definition: AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds, descending
    ap, prev_r = 0.0, 0.0
    for t in np.unique(s)[::-1]:
        pred = s >= t
        p = (pred & g).sum() / pred.sum()
        r = (pred & g).sum() / g.sum()
        ap += (r - prev_r) * p
        prev_r = r
    assert pixel_auprc(s, g) == pytest.approx(ap)


def _numpy_ap(s: np.ndarray, g: np.ndarray) -> float:
    """The hand-written average precision pixel_auprc used before scikit-learn's (kept here as the reference)."""
    order = np.argsort(-s.ravel(), kind="mergesort")
    scores, y = s.ravel()[order], g.ravel()[order].astype(np.float64)
    last = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    tps = np.cumsum(y)[last]
    return float(np.sum(np.diff(np.r_[0.0, tps / tps[-1]]) * tps / (last + 1)))


def _rank_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """The hand-written Spearman correlation randomisation_sanity used before scipy's spearmanr."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def test_library_metrics_equal_the_former_numpy_ones() -> None:
    """pixel_auprc (scikit-learn) and _spearman (scipy) give what the hand-written versions gave, ties included;
    an empty mask is still refused and a constant map still has Spearman 0.0."""
    rng = np.random.default_rng(7)
    g = _mask()
    maps = [rng.random(g.shape), np.round(rng.random(g.shape) * 4) / 4, np.ones(g.shape), g * 3.0 + 0.1,
            np.zeros(g.shape)]
    maps[4][12, 22] = 5.0
    for s in maps:
        assert pixel_auprc(s, g) == pytest.approx(_numpy_ap(s, g), abs=1e-12)
    with pytest.raises(InputError, match="empty"):
        pixel_auprc(maps[0], np.zeros(g.shape))
    a, b = rng.random(200), rng.random(200)
    pairs = [(a, b), (a, a + 0.1 * b), (np.round(a * 5), np.round(b * 3)), (a, -a), (a, np.ones(200)),
             (np.zeros(200), b)]
    for x, y in pairs:
        assert _spearman(x, y) == pytest.approx(_rank_spearman(x, y), abs=1e-12)
    assert _spearman(a, np.ones(200)) == 0.0 and _spearman(a, -a) == pytest.approx(-1.0)


def test_tolerance_mm_anisotropic() -> None:
    g = np.zeros((40, 40), bool)
    g[20, 20] = True
    s = np.zeros(g.shape)
    s[20, 24] = 1.0  # 4 columns away
    # column spacing 0.5 mm -> 2 mm away
    assert pointing_game(s, g, spacing_mm=(2.0, 0.5), tolerance_mm=0.0) is False
    assert pointing_game(s, g, spacing_mm=(2.0, 0.5), tolerance_mm=2.0) is True
    assert pointing_game(s, g, spacing_mm=(2.0, 0.5), tolerance_mm=1.9) is False
    s2 = np.zeros(g.shape)
    s2[22, 20] = 1.0  # 2 rows away = 4 mm
    assert pointing_game(s2, g, spacing_mm=(2.0, 0.5), tolerance_mm=3.0) is False
    assert pointing_game(s2, g, spacing_mm=(2.0, 0.5), tolerance_mm=4.0) is True
    # chance: ellipse |dr|*2 <= 3, |dc|*0.5 <= 3 -> rows -1..1, cols within sqrt(9-(2dr)^2)/0.5
    expected = sum(1 for dr in range(-1, 2) for dc in range(-6, 7) if (2 * dr) ** 2 + (0.5 * dc) ** 2 <= 9)
    assert pointing_game_chance(g, (2.0, 0.5), 3.0) == pytest.approx(expected / g.size)
    assert pointing_game_chance(g, (2.0, 0.5), 0.0) == pytest.approx(1 / g.size)


def test_bad_inputs() -> None:
    g = _mask()
    with pytest.raises(InputError):
        pointing_game(np.zeros((8, 8)), g)
    with pytest.raises(InputError):
        energy_pointing_game(-np.ones(g.shape), g)
    with pytest.raises(InputError):
        pointing_game(np.ones(g.shape), np.zeros(g.shape))
    with pytest.raises(InputError):
        pointing_game(np.ones(g.shape), g, spacing_mm=(0, 1), tolerance_mm=1)
    # (1,H,W) masks and torch tensors are accepted
    assert pointing_game(torch.ones(1, 32, 32), torch.as_tensor(g)[None]) is False


def test_peak_auc() -> None:
    assert peak_auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert peak_auc([0, 1], [2, 3]) == 0.0
    assert peak_auc([1, 1], [1, 1]) == 0.5
    assert peak_auc([2, 0], [1]) == 0.5


def test_localization_summary() -> None:
    g = _mask()
    hit = np.zeros(g.shape)
    hit[12, 22] = 1.0
    miss = np.zeros(g.shape)
    miss[0, 0] = 1.0
    near = np.zeros(g.shape)
    near[9, 22] = 1.0  # one row above the mask: hit only with tolerance
    out = localization_summary(
        [hit, miss, near, np.ones(g.shape)],
        [g, g, g, np.zeros(g.shape)],
        spacings=(1.0, 1.0),
        tolerances_mm=(0.0, 3.0),
        pos_peaks=[3.0, 2.0],
        neg_peaks=[0.0, 1.0, 2.5],
    )
    json.dumps(out, allow_nan=False)
    assert out["n_positive_slices"] == 3 and out["n_empty_masks_skipped"] == 1
    assert out["pointing_game"]["0mm"]["hit_rate"] == pytest.approx(1 / 3)
    assert out["pointing_game"]["3mm"]["hit_rate"] == pytest.approx(2 / 3)
    assert out["pointing_game"]["0mm"]["chance"] == pytest.approx(g.mean())
    assert out["pointing_game"]["3mm"]["chance"] > g.mean()
    assert out["energy_pointing_game"]["mean"] == pytest.approx(1 / 3)
    assert out["energy_pointing_game"]["lift"] == pytest.approx((1 / 3) / g.mean())
    assert out["auprc"]["baseline"] == pytest.approx(g.mean())
    assert out["peak"]["auc"] == pytest.approx(5 / 6)
    assert out["peak"]["n_neg"] == 3 and out["peak"]["neg_quantiles"]["q50"] == pytest.approx(1.0)
    # per-slice spacings
    out2 = localization_summary([near], [g], spacings=[(4.0, 1.0)], tolerances_mm=(3.0,))
    assert out2["pointing_game"]["3mm"]["hit_rate"] == 0.0
    with pytest.raises(InputError):
        localization_summary([hit], [g], spacings=[(1, 1), (1, 1)])


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(a.mean((2, 3)))


def test_randomisation_sanity() -> None:
    torch.manual_seed(0)
    model = _Net()
    x = torch.randn(2, 1, 24, 24)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.random.get_rng_state()
    full = randomisation_sanity(model, ["conv2"], x, mode="full", seed=1)
    assert set(full) == {"conv2"} and set(full["conv2"]) == {"all"}
    assert full["conv2"]["all"] < 0.9
    cascade = randomisation_sanity(model, ["conv2"], x, mode="cascade", seed=1)
    assert list(cascade["conv2"]) == ["fc", "conv2", "conv1"]
    assert all(-1.0 <= v <= 1.0 for v in cascade["conv2"].values())
    # the original model and the caller's RNG are untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    with pytest.raises(InputError):
        randomisation_sanity(model, ["conv2"], x, mode="partial")


def test_pointing_game_among_calcium_candidates() -> None:
    """Restricted to the pixels >= 130 HU, the maximum must beat bone, not soft tissue; chance = candidate share."""
    mask = np.zeros((10, 10), bool)
    mask[2:4, 2:4] = True  # the coronary deposit: 4 candidate pixels
    bone = np.zeros((10, 10), bool)
    bone[6:9, 5:9] = True  # brighter bone: 12 candidate pixels
    candidates = mask | bone
    sal = np.zeros((10, 10))
    sal[0, 9] = 1.0  # the map's maximum on soft tissue (no candidate)
    sal[2, 3] = 0.6  # the deposit
    sal[7, 7] = 0.4  # the bone
    assert not pointing_game(sal, mask)
    assert pointing_game(sal, mask, within=candidates)
    sal[7, 7] = 0.8  # now the bone outranks the deposit
    assert not pointing_game(sal, mask, within=candidates)
    assert pointing_game_chance(mask, within=candidates) == pytest.approx(4 / 16)
    assert pointing_game_chance(mask, (1.0, 1.0), 3.0, within=candidates) == pytest.approx(4 / 16)  # bone > 3 mm away
    assert not pointing_game(np.zeros((10, 10)), mask, within=candidates)  # a flat map points nowhere
    with pytest.raises(InputError, match="within"):
        pointing_game(sal, mask, within=np.ones((5, 5)))
