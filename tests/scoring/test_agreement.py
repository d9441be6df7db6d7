"""Agreement statistics against hand-computed and textbook values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from coronary_calcium.errors import InputError
from coronary_calcium.scoring.agatston import find_lesions
from coronary_calcium.scoring.agreement import (
    bland_altman,
    confusion_matrix,
    icc_2_1,
    icc_table,
    match_lesions,
    pearson,
    pool_lesion_matches,
    score_agreement,
    spearman,
    threshold_accuracy,
    weighted_kappa,
)

# Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges; ICC(2,1) = 0.29.
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]


def test_icc_shrout_fleiss_table():
    assert round(icc_table(SHROUT_FLEISS), 2) == 0.29


def test_icc_two_raters_by_hand():
    # a = [1, 2, 3], b = a + 1: s_a^2 = s_b^2 = s_ab = 1, mean difference 1, so
    # ICC(2,1) = 2 s_ab / (s_a^2 + s_b^2 + d^2 - (s_a^2 + s_b^2 - 2 s_ab) / n) = 2 / 3
    assert icc_2_1([1, 2, 3], [2, 3, 4]) == pytest.approx(2 / 3)


def test_icc_two_raters_closed_form():
    # For k = 2 the mean squares reduce to sample (co)variances; an independent formula:
    rng = np.random.default_rng(3)
    a = rng.gamma(2.0, 50.0, 30)
    b = 0.9 * a + rng.normal(5, 20, 30)
    n = a.size
    sa, sb = a.var(ddof=1), b.var(ddof=1)
    sab = np.cov(a, b, ddof=1)[0, 1]
    expected = 2 * sab / (sa + sb + (a.mean() - b.mean()) ** 2 - (sa + sb - 2 * sab) / n)
    assert icc_2_1(a, b) == pytest.approx(expected)


def test_icc_perfect_and_degenerate():
    assert icc_2_1([0, 10, 250, 800], [0, 10, 250, 800]) == pytest.approx(1.0)
    assert icc_2_1([0, 0, 0], [0, 0, 0]) == 1.0  # identical constant scores: perfect agreement
    assert math.isnan(icc_2_1([0, 1], [1, 0]))  # zero denominator: undefined
    assert icc_2_1([0, 10, 20], [10, 20, 30]) < 1.0  # a constant offset is not absolute agreement


def test_correlations():
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [1, 8, 27, 64]) < 1.0
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))


def test_bland_altman_by_hand():
    # d = a - b = [1, 0, 1, -2]: bias 0, sd = sqrt(6 / 3) = sqrt(2)
    ba = bland_altman([1, 2, 3, 4], [0, 2, 2, 6])
    assert ba["bias"] == pytest.approx(0.0)
    assert ba["sd"] == pytest.approx(math.sqrt(2))
    assert ba["lower"] == pytest.approx(-1.96 * math.sqrt(2))
    assert ba["upper"] == pytest.approx(1.96 * math.sqrt(2))
    assert ba["n"] == 4
    shifted = bland_altman([11, 12, 13], [1, 2, 3])
    assert shifted["bias"] == pytest.approx(10.0) and shifted["sd"] == pytest.approx(0.0)


def test_confusion_matrix():
    cm = confusion_matrix([0, 1, 2, 2], [0, 2, 2, 1], 3)
    assert cm.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]


def test_kappa_unweighted_two_classes_by_hand():
    # 20 + 15 agreements of 50: p_o = 0.7; marginals 25/25 and 30/20: p_e = 0.5; kappa = 0.4
    a = [0] * 25 + [1] * 25
    b = [0] * 20 + [1] * 5 + [0] * 10 + [1] * 15
    assert weighted_kappa(a, b, 2, weights=None) == pytest.approx(0.4)
    assert weighted_kappa(a, b, 2, weights="linear") == pytest.approx(0.4)  # same for 2 classes


def test_kappa_linear_and_quadratic_by_hand():
    # a = [0, 1, 2], b = [0, 2, 2]. Linear w = |i-j|/2: observed disagreement 1/6, expected 1/2 -> 2/3.
    # Quadratic w = ((i-j)/2)^2: observed 1/12, expected 5/12 -> 0.8.
    assert weighted_kappa([0, 1, 2], [0, 2, 2], 3) == pytest.approx(2 / 3)
    assert weighted_kappa([0, 1, 2], [0, 2, 2], 3, weights="quadratic") == pytest.approx(0.8)


def test_kappa_perfect_and_degenerate():
    assert weighted_kappa([0, 1, 2, 4], [0, 1, 2, 4], 5) == 1.0
    assert weighted_kappa([3, 3, 3], [3, 3, 3], 5) == 1.0  # chance agreement is 1 too: defined as 1
    assert weighted_kappa([0, 0, 0], [0, 0, 1], 5) == pytest.approx(0.0)


def test_kappa_errors():
    with pytest.raises(InputError):
        weighted_kappa([0, 1], [0], 2)
    with pytest.raises(InputError):
        weighted_kappa([0, 5], [0, 1], 3)
    with pytest.raises(InputError):
        weighted_kappa([], [], 3)
    with pytest.raises(InputError):
        weighted_kappa([0, 1], [0, 1], 2, weights="cubic")


def test_threshold_accuracy():
    ref = [0, 5, 100, 399, 400, 1000]
    pred = [0, 0, 99, 400, 400, 1000]
    acc = threshold_accuracy(ref, pred)
    assert set(acc) == {"0", "100", "400"}
    assert acc["0"]["rule"] == "0 vs >0" and acc["100"]["rule"] == "<100 vs >=100"
    assert acc["0"]["accuracy"] == pytest.approx(5 / 6) and acc["0"]["fn"] == 1  # 5 called 0
    assert acc["100"]["accuracy"] == pytest.approx(5 / 6) and acc["100"]["fn"] == 1  # 100 called 99
    assert acc["400"]["accuracy"] == pytest.approx(5 / 6) and acc["400"]["fp"] == 1  # 399 called 400
    assert acc["400"]["tp"] == 2 and acc["400"]["tn"] == 3


def _volume(blocks, shape=(1, 14, 14)):
    hu = np.full(shape, -50.0)
    for ys, xs in blocks:
        hu[0, ys, xs] = 400.0
    return hu


SP = (3.0, 0.5, 0.5)  # voxel volume 0.75 mm^3


def test_match_lesions_constructed():
    ref = find_lesions(
        _volume([(slice(1, 3), slice(1, 3)), (slice(1, 3), slice(6, 10)), (slice(6, 8), slice(1, 3))]), SP
    )
    # A' overlaps ref A by one voxel; B' overlaps ref B by two voxels; D' is a false positive; C is missed
    pred = find_lesions(
        _volume([(slice(2, 4), slice(2, 4)), (slice(1, 3), slice(9, 12)), (slice(10, 12), slice(10, 12))]), SP
    )
    assert [les.volume_mm3 for les in ref] == pytest.approx([3.0, 6.0, 3.0])
    assert [les.volume_mm3 for les in pred] == pytest.approx([4.5, 3.0, 3.0])  # raster order: B', A', D'
    m = match_lesions(ref, pred)
    assert (m["n_ref"], m["n_pred"], m["tp_ref"], m["tp_pred"]) == (3, 3, 2, 2)
    assert (m["false_negatives"], m["false_positives"]) == (1, 1)
    assert m["false_positive_indices"] == [2] and m["false_positive_volume_mm3"] == pytest.approx(3.0)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["ppv"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["sensitivity_volume"] == pytest.approx(9 / 12)
    assert m["ppv_volume"] == pytest.approx(7.5 / 10.5)
    assert m["f1_volume"] == pytest.approx(2 * 0.75 * (5 / 7) / (0.75 + 5 / 7))
    assert m["matches"] == [{"ref": 0, "pred": 1, "overlap_voxels": 1}, {"ref": 1, "pred": 0, "overlap_voxels": 2}]
    json.dumps(m)

    strict = match_lesions(ref, pred, min_overlap_voxels=2)
    assert strict["tp_ref"] == 1 and strict["false_positives"] == 2

    # one predicted lesion bridging two reference lesions matches both
    bridge = find_lesions(_volume([(slice(1, 3), slice(1, 10))]), SP)
    mb = match_lesions(ref, bridge)
    assert mb["tp_ref"] == 2 and mb["tp_pred"] == 1 and mb["ppv"] == 1.0

    pooled = pool_lesion_matches([m, mb])
    assert pooled["n_ref"] == 6 and pooled["tp_ref"] == 4 and pooled["sensitivity"] == pytest.approx(4 / 6)
    assert pooled["false_positives_per_scan"] == pytest.approx(0.5)
    assert pooled["ppv"] == pytest.approx(3 / 4)


def test_match_lesions_empty_and_self():
    ref = find_lesions(_volume([(slice(1, 3), slice(1, 3))]), SP)
    assert match_lesions(ref, ref)["f1"] == 1.0
    none = match_lesions([], [])
    assert none["sensitivity"] is None and none["ppv"] is None and none["f1"] is None
    miss = match_lesions(ref, [])
    assert miss["sensitivity"] == 0.0 and miss["ppv"] is None and miss["false_negatives"] == 1
    stripped = [les for les in ref]
    stripped[0].voxels = None
    with pytest.raises(InputError):
        match_lesions(stripped, ref)


def test_score_agreement_perfect_and_json():
    ref = [0.0, 5.0, 50.0, 150.0, 500.0, 1000.0]
    out = score_agreement(ref, ref)
    json.dumps(out)
    assert out["n"] == 6
    assert out["icc_2_1"] == pytest.approx(1.0) and out["pearson"] == pytest.approx(1.0)
    assert out["spearman"] == pytest.approx(1.0)
    for scheme, k in out["kappa"].items():
        assert k["kappa_linear"] == 1.0 and k["accuracy"] == 1.0
        assert np.trace(k["confusion_matrix"]) == 6
    assert out["kappa"]["5-class"]["classes"] == ["0", "1-10", "11-100", "101-400", ">400"]
    assert all(v["accuracy"] == 1.0 for v in out["threshold_accuracy"].values())


def test_score_agreement_bias_sign_and_categories():
    ref = [0.0, 5.0, 50.0, 150.0, 500.0]
    pred = [10.0, 15.0, 60.0, 160.0, 510.0]
    out = score_agreement(ref, pred, schemes=["4-class"])
    assert out["bland_altman"]["bias"] == pytest.approx(10.0)  # pred - ref: overestimation is positive
    assert set(out["kappa"]) == {"4-class"}
    # classes: ref 0,1,1,2,3 vs pred 1,1,1,2,3 -> one zero scan called calcified
    assert out["kappa"]["4-class"]["confusion_matrix"][0] == [0, 1, 0, 0]
    assert out["threshold_accuracy"]["0"]["fp"] == 1


def test_score_agreement_constant_scores_give_none():
    out = score_agreement([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    json.dumps(out)
    assert out["icc_2_1"] == 1.0 and out["pearson"] is None and out["spearman"] is None
    assert out["kappa"]["5-class"]["kappa_linear"] == 1.0


@pytest.mark.parametrize(
    "a,b",
    [([1, 2, 3], [1, 2]), ([1], [1]), ([1, float("nan")], [1, 2]), ([[1, 2]], [[1, 2]]), (["x", "y"], [1, 2])],
)
def test_bad_input(a, b):
    for fn in (icc_2_1, pearson, spearman, bland_altman, score_agreement):
        with pytest.raises(InputError):
            fn(a, b)


def test_negative_scores_rejected():
    with pytest.raises(InputError):
        score_agreement([0, -1], [0, 1])
