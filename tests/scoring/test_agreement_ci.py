"""Intervals (F-based ICC, patient bootstrap), CAC-DRS, and the scikit-learn metrics against known values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from coronary_calcium.errors import InputError
from coronary_calcium.report.classification import classification_metrics, roc_auc
from coronary_calcium.scoring.agreement import (
    _kappa_linear_batch,
    _weighted_confusion,
    artery_agreement,
    bootstrap_weights,
    cac_drs,
    cac_drs_index,
    bland_altman,
    icc_2_1_ci,
    icc_table_ci,
    lesion_f1_ci,
    percentile_ci,
    score_agreement,
    weighted_kappa,
)

# Shrout & Fleiss (1979), Table 2. R's psych::ICC prints for ICC2 (= ICC(2,1)): 0.29, 95 % bounds 0.019 and 0.76.
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]


def test_icc_f_interval_matches_published_values():
    out = icc_table_ci(SHROUT_FLEISS)
    assert out["value"] == pytest.approx(0.29, abs=0.005)
    assert out["lower"] == pytest.approx(0.019, abs=0.0005) and out["upper"] == pytest.approx(0.76, abs=0.005)
    assert "McGraw & Wong" in out["method"]
    wider = icc_table_ci(SHROUT_FLEISS, level=0.99)
    assert wider["lower"] < out["lower"] and wider["upper"] > out["upper"]


def test_icc_interval_edge_cases():
    assert icc_2_1_ci([0, 5, 50, 500], [0, 5, 50, 500]) == pytest.approx(
        {"value": 1.0, "lower": 1.0, "upper": 1.0, "level": 0.95, "method": icc_2_1_ci([1, 2], [1, 2])["method"]})
    undefined = icc_2_1_ci([0, 1], [1, 0])
    assert undefined["value"] is None and undefined["lower"] is None and undefined["upper"] is None
    close = icc_2_1_ci([0, 10, 100, 400, 900, 50], [1, 12, 95, 410, 880, 55])
    assert close["lower"] < close["value"] < close["upper"] <= 1.0 and close["lower"] > 0.9
    with pytest.raises(InputError, match="level"):
        icc_2_1_ci([1, 2], [1, 2], level=1.5)


def test_bootstrap_weights_resample_patients_and_are_seeded():
    groups = ["P1", "P1", "P2", "P3", "P3", "P3"]
    w = bootstrap_weights(groups, 500, seed=3)
    assert w.shape == (500, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all() and (w[:, 4] == w[:, 5]).all()
    assert (w[:, [0, 2, 3]].sum(axis=1) == 3).all()  # as many patients drawn as there are
    np.testing.assert_array_equal(w, bootstrap_weights(groups, 500, seed=3))
    assert not np.array_equal(w, bootstrap_weights(groups, 500, seed=4))
    assert bootstrap_weights(4, 10).shape == (10, 4)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(InputError, match="n_resamples"):
            bootstrap_weights(groups, bad)
    with pytest.raises(InputError, match="at least one item"):
        bootstrap_weights([], 10)


def test_batched_kappa_equals_scikit_learn_on_every_resample():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 15)
    b = np.where(rng.random(15) < 0.7, a, rng.integers(0, 5, 15))
    w = bootstrap_weights(15, 200, seed=1)
    batch = _kappa_linear_batch(_weighted_confusion(w, a, b, 5))
    for weights, k in zip(w, batch):
        idx = np.repeat(np.arange(15), weights)
        ref = 1.0 if np.unique(np.r_[a[idx], b[idx]]).size == 1 else cohen_kappa_score(
            a[idx], b[idx], labels=np.arange(5), weights="linear")
        assert k == pytest.approx(ref, abs=1e-12)
        assert weighted_kappa(a[idx], b[idx], 5) == pytest.approx(ref, abs=1e-12)


def test_percentile_ci():
    assert percentile_ci(np.arange(101.0)) == pytest.approx({"lower": 2.5, "upper": 97.5})
    assert percentile_ci([np.nan, 1.0, np.nan]) == {"lower": 1.0, "upper": 1.0}
    assert percentile_ci([np.nan]) == {"lower": None, "upper": None}


@pytest.mark.parametrize("score, index", [(0, 0), (0.1, 1), (99.9, 1), (100, 2), (299.99, 2), (300, 3), (5000, 3)])
def test_cac_drs_classes(score, index):
    assert cac_drs_index(score) == index


def test_cac_drs_vessels():
    assert cac_drs(150.0) == {"category": "A2", "agatston_range": "100-299", "vessels": None, "cac_drs": "A2"}
    out = cac_drs(150.0, {"LM": 0.0, "LAD": 100.0, "LCX": 0.0, "RCA": 50.0})
    assert out["vessels"] == 2 and out["cac_drs"] == "A2/N2"
    assert cac_drs(0.0, {"LM": 0, "LAD": 0, "LCX": 0, "RCA": 0})["cac_drs"] == "A0"
    with pytest.raises(InputError, match="needs scores of RCA"):
        cac_drs(10.0, {"LM": 0, "LAD": 10, "LCX": 0})
    for bad in (-1, float("nan")):
        with pytest.raises(InputError, match="finite number >= 0"):
            cac_drs_index(bad)


def _scores(n=24, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.gamma(0.6, 250, n)
    ref[: n // 4] = 0
    pred = ref * rng.normal(1.0, 0.25, n)
    pred[1] = 15.0
    return ref, np.clip(pred, 0, None)


def test_score_agreement_intervals_hold_the_estimates():
    ref, pred = _scores()
    out = score_agreement(ref, pred, groups=[f"P{i // 2}" for i in range(24)], n_resamples=1000, seed=7)
    json.dumps(out)
    assert out["bootstrap"] == {"n_resamples": 1000, "seed": 7, "level": 0.95, "method": "percentile",
                                "unit": "patient", "n_units": 12}
    ci = out["icc_2_1_ci"]
    assert ci["lower"] <= out["icc_2_1"] <= ci["upper"]
    for block in [*out["kappa"].values(), out["cac_drs"]]:
        assert block["kappa_linear_ci"]["lower"] <= block["kappa_linear"] <= block["kappa_linear_ci"]["upper"]
        assert block["accuracy_ci"]["lower"] <= block["accuracy"] <= block["accuracy_ci"]["upper"] <= 1.0
    for t in out["threshold_accuracy"].values():
        assert t["accuracy_ci"]["lower"] <= t["accuracy"] <= t["accuracy_ci"]["upper"]
    assert out == score_agreement(ref, pred, groups=[f"P{i // 2}" for i in range(24)], n_resamples=1000, seed=7)
    # CAC-DRS classes are their own: 150 is A2 while 5-class puts it in 101-400.
    assert out["cac_drs"]["classes"] == ["A0", "A1", "A2", "A3"]
    assert out["cac_drs"]["vessels"]["n"] == 0 and out["cac_drs"]["vessels"]["accuracy"] is None


def test_score_agreement_without_bootstrap_and_bad_groups():
    ref, pred = _scores()
    out = score_agreement(ref, pred, n_resamples=0)
    assert "kappa_linear_ci" not in out["kappa"]["5-class"] and out["bootstrap"]["n_resamples"] == 0
    assert "lower" in out["icc_2_1_ci"]  # the F-based interval needs no resampling
    with pytest.raises(InputError, match="one patient per scan"):
        score_agreement(ref, pred, groups=["P1"])


def test_score_agreement_vessel_counts():
    arteries = [{"LM": 0, "LAD": s, "LCX": 0, "RCA": 0} for s in (0, 10, 200, 500)]
    pred = [dict(a) for a in arteries]
    pred[3]["RCA"] = 5.0  # one more vessel
    out = score_agreement([0, 10, 200, 500], [0, 10, 200, 505], ref_arteries=arteries, pred_arteries=pred,
                          n_resamples=50)
    assert out["cac_drs"]["vessels"]["n"] == 4 and out["cac_drs"]["vessels"]["accuracy"] == 0.75
    assert out["cac_drs"]["vessels"]["confusion_matrix"][1] == [0, 2, 1, 0, 0]
    with pytest.raises(InputError, match="one entry per scan"):
        score_agreement([0, 10], [0, 10], ref_arteries=arteries)


def test_lesion_f1_interval():
    per_scan = [{"n_ref": 2, "n_pred": 2, "tp_ref": 2, "tp_pred": 2, "ref_volume_mm3": 10.0, "pred_volume_mm3": 9.0,
                 "tp_ref_volume_mm3": 10.0, "tp_pred_volume_mm3": 9.0},
                {"n_ref": 1, "n_pred": 3, "tp_ref": 0, "tp_pred": 0, "ref_volume_mm3": 5.0, "pred_volume_mm3": 6.0,
                 "tp_ref_volume_mm3": 0.0, "tp_pred_volume_mm3": 0.0}]
    out = lesion_f1_ci(per_scan, bootstrap_weights(2, 400, seed=0))
    assert out["f1_ci"]["lower"] == 0.0 and out["f1_ci"]["upper"] == 1.0  # one scan alone: 0 or 1
    with pytest.raises(InputError, match="one column per scan"):
        lesion_f1_ci(per_scan, bootstrap_weights(3, 10))
    with pytest.raises(InputError, match="match_lesions result"):
        lesion_f1_ci([{"n_ref": 1}], bootstrap_weights(1, 10))


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    probs = np.array([0.1, 0.4, 0.6, 0.2, 0.7, 0.4, 0.9])
    m = classification_metrics(labels, probs)
    assert m["confusion_matrix"]["rows_truth_cols_prediction"] == [[3, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(5 / 7) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(3 / 4)
    assert m["classification_report"]["negative"] == pytest.approx(
        {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4})
    # ROC AUC by pair counting: 12 (positive, negative) pairs, the 0.4 / 0.4 tie counts 1/2: (10 + 0.5) / 12.
    assert m["roc_auc"] == pytest.approx(10.5 / 12)
    assert roc_auc(np.zeros(3), [0.1, 0.2, 0.3]) is None
    empty = classification_metrics(np.zeros(3, int), np.zeros(3))
    assert empty["precision"] == 0.0 and empty["roc_auc"] is None


def test_artery_agreement_per_artery_icc_and_presence():
    """Per artery: the ICC(2,1) and F interval of `icc_2_1_ci`, Bland-Altman of pred - ref and presence kappa, over
    the scans where both sides have arteries; None with fewer than 2 such scans."""
    table = np.array(SHROUT_FLEISS, float)
    ref = [{"LM": 0.0, "LAD": r[0], "LCX": r[2], "RCA": 0.0} for r in table]
    pred = [{"LM": 0.0, "LAD": r[1], "LCX": r[3], "RCA": 1.0 if i == 0 else 0.0} for i, r in enumerate(table)]
    out = artery_agreement(ref + [None], pred + [{"LM": 9.0, "LAD": 9.0, "LCX": 9.0, "RCA": 9.0}],
                           groups=["a", "a", "b", "c", "d", "e", "f"], n_resamples=200)
    json.dumps(out, allow_nan=False)
    assert list(out) == ["LM", "LAD", "LCX", "RCA"]
    for artery, (i, j) in (("LAD", (0, 1)), ("LCX", (2, 3))):
        ci = icc_2_1_ci(table[:, i], table[:, j])
        assert out[artery]["icc_2_1"] == ci.pop("value") and out[artery]["icc_2_1_ci"] == ci
        assert out[artery]["bland_altman"] == bland_altman(table[:, j], table[:, i])
    assert out["LAD"]["n_scans"] == 6 and out["LAD"]["n_patients"] == 5  # the seventh scan has no reference arteries
    assert out["LM"]["icc_2_1"] == 1.0 and out["LM"]["icc_2_1_ci"]["lower"] == 1.0
    rca = out["RCA"]["presence"]
    assert rca["accuracy"] == pytest.approx(5 / 6) and rca["confusion_matrix"] == [[5, 1], [0, 0]]
    assert rca["kappa_linear"] == pytest.approx(cohen_kappa_score([0] * 6, [1] + [0] * 5))
    assert rca["accuracy_ci"]["lower"] <= 5 / 6 <= rca["accuracy_ci"]["upper"]
    assert artery_agreement([ref[0], None], [pred[0], pred[1]]) is None
    with pytest.raises(InputError):
        artery_agreement(ref, pred[:-1])
