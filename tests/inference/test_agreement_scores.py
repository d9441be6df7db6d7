"""Agreement against a score-only reference: a COCA scores.xlsx written with openpyxl, evaluated with intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from openpyxl import Workbook

from coronary_calcium.inference import Prediction, evaluate_agreement
from coronary_calcium.inference.agreement_report import _lesion_arteries, agreement_table, artery_table, format_ci
from coronary_calcium.inference.outputs import write_report
from coronary_calcium.io.images import write_nifti
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.scoring.agatston import Lesion, score_lesions
from coronary_calcium.scoring.agreement import bland_altman, icc_2_1_ci
from coronary_calcium.transfer import TARGETS, _figures, _passes, write_transfer_markdown

ARTERIES = ("LM", "LAD", "LCX", "RCA")
# Reference per artery (LCA = left main) for 12 patients; the predictions below differ on a few.
REFERENCE = [(0, 0, 0, 0), (0, 4, 0, 0), (0, 0, 0, 9), (2, 30, 0, 0), (0, 60, 20, 5), (0, 0, 0, 0),
             (10, 150, 40, 0), (0, 200, 0, 120), (30, 250, 90, 60), (0, 500, 200, 300), (0, 0, 0, 0), (0, 8, 0, 0)]


def _lesion(artery: str, agatston: float) -> Lesion:
    return Lesion(label=0, artery=artery, slices=[0], area_mm2=[1.0], peak_hu=300.0, mean_hu=250.0, volume_mm3=1.0,
                  mass_mg=0.2, agatston=agatston, centroid_zyx=(0.0, 0.0, 0.0), n_voxels=1,
                  voxels=np.array([0], np.int64))


@pytest.fixture
def coca_set(tmp_path):
    book = Workbook()
    sheet = book.active
    sheet.append(["filename", "LCA", "LAD", "LCX", "RCA", "total"])
    scans = []
    for i, arteries in enumerate(REFERENCE):
        pid = f"{100 + i}"
        sheet.append([f"{pid}A", *arteries, sum(arteries)])
        hu = np.full((2, 4, 4), -1000, np.int16)
        write_nifti(hu, CTVolume(hu=hu.astype(np.float32), spacing=(5.0, 0.7, 0.7)), tmp_path / pid / "img.nii.gz")
        scans.append({"patient_id": pid, "image": f"{pid}/img.nii.gz", "split": "test",
                      "reference": {"coca_scores": "deidentified_nongated/scores.xlsx"}})
    (tmp_path / "deidentified_nongated").mkdir()
    book.save(tmp_path / "deidentified_nongated" / "scores.xlsx")
    manifest = tmp_path / "data_manifest.json"
    manifest.write_text(json.dumps({"version": 1, "data_root": ".", "scans": scans}))
    return manifest


def _predicted_arteries():
    out = []
    for i, arteries in enumerate(REFERENCE):
        arteries = list(arteries)
        if i == 1:
            arteries[1] = 0.0  # a small lesion missed: 1-10 -> 0
        if i == 4:
            arteries[3] = 0.0  # one vessel fewer (N3 -> N2)
        if i == 9:
            arteries[2] *= 0.5  # 1000 -> 900, still >400
        out.append(arteries)
    return out


def _predictions():
    preds = []
    for i, arteries in enumerate(_predicted_arteries()):
        lesions = [_lesion(a, s) for a, s in zip(ARTERIES, arteries) if s > 0]
        preds.append(Prediction(scan_id=f"{100 + i}", agatston=float(sum(arteries)), lesions=lesions))
    return preds


def test_score_only_manifest_evaluates_with_intervals(coca_set):
    a = evaluate_agreement(_predictions(), coca_set, n_resamples=2000, seed=0)
    json.dumps(a)
    assert a["n_scans"] == 12 and a["unpaired"] == []
    assert {row["reference_source"] for row in a["scans"]} == {"coca_scores"}
    s = a["scores"]
    assert s["bootstrap"] == {"n_resamples": 2000, "seed": 0, "level": 0.95, "method": "percentile",
                              "unit": "patient", "n_units": 12}
    assert s["icc_2_1_ci"]["lower"] < s["icc_2_1"] < s["icc_2_1_ci"]["upper"] <= 1.0
    k5 = s["kappa"]["5-class"]
    assert k5["accuracy"] == pytest.approx(11 / 12)
    assert k5["kappa_linear_ci"]["lower"] <= k5["kappa_linear"] <= k5["kappa_linear_ci"]["upper"]
    assert k5["accuracy_ci"]["lower"] < 11 / 12 <= k5["accuracy_ci"]["upper"] == 1.0
    # CAC-DRS: scan 9 (1000 vs 900) stays A3, scan 1 (4 -> 0) is A1 vs A0: 11 of 12 agree. Vessels: scans 1 and 4.
    drs = s["cac_drs"]
    assert drs["accuracy"] == pytest.approx(11 / 12)
    assert drs["vessels"]["n"] == 12 and drs["vessels"]["accuracy"] == pytest.approx(10 / 12)
    row4 = a["scans"][4]
    assert row4["reference_cac_drs"] == "A1/N3" and row4["predicted_cac_drs"] == "A1/N2"
    assert row4["reference_arteries"] == {"LM": 0.0, "LAD": 60.0, "LCX": 20.0, "RCA": 5.0}
    # No masks: lesion figures are not available, never a number.
    assert a["lesions"] is None and all(row["lesions"] is None for row in a["scans"])
    assert a["lesions_available"] == {"n_scans_with_lesion_reference": 0, "n_scans_score_only": 12}
    assert any("score-only references" in n and "not available" in n for n in a["notes"])
    # Same seed, same intervals.
    assert evaluate_agreement(_predictions(), coca_set, n_resamples=2000, seed=0)["scores"] == s


def test_agreement_table_prints_intervals(coca_set):
    a = evaluate_agreement(_predictions(), coca_set, n_resamples=500)
    md = agreement_table(a)
    icc = a["scores"]["icc_2_1"]
    ci = a["scores"]["icc_2_1_ci"]
    assert f"| ICC(2,1) of Agatston | {icc:.3f} ({ci['lower']:.2f}-{ci['upper']:.2f}) |" in md
    assert "| 5-class linearly weighted kappa |" in md and "CAC-DRS" in md
    assert "| lesion F1 | not available (score-only references) |" in md
    assert "percentile bootstrap over 12 patients (500 resamples, seed 0)" in md
    page = agreement_table(a, fmt="html")
    assert page.startswith("<table>") and "<td>lesion F1</td>" in page and "&gt;=300" in page


def test_format_ci():
    assert format_ci(0.9581, {"lower": 0.912, "upper": 0.984}) == "0.958 (0.91-0.98)"
    assert format_ci(0.29, {"lower": -0.13, "upper": 0.72}) == "0.290 (-0.13 to 0.72)"
    assert format_ci(None) == "n/a" and format_ci(1.0, {"lower": None, "upper": None}) == "1.000"


def test_per_artery_agreement_of_score_only_references(coca_set):
    """scores.xlsx's artery columns against the predictions' per-artery sums: one ICC(2,1) with its F interval,
    Bland-Altman and calcium-presence kappa per artery."""
    a = evaluate_agreement(_predictions(), coca_set, n_resamples=300, seed=0)
    json.dumps(a, allow_nan=False)
    pa = a["per_artery"]
    assert list(pa) == list(ARTERIES)
    ref, pred = np.array(REFERENCE, float), np.array(_predicted_arteries(), float)
    for j, artery in enumerate(ARTERIES):
        ci = icc_2_1_ci(ref[:, j], pred[:, j])
        assert pa[artery]["icc_2_1"] == ci.pop("value") and pa[artery]["icc_2_1_ci"] == ci
        assert pa[artery]["bland_altman"] == bland_altman(pred[:, j], ref[:, j])
        assert pa[artery]["n_scans"] == 12 and pa[artery]["n_patients"] == 12
    assert pa["LM"]["icc_2_1"] == 1.0 and pa["LM"]["presence"]["kappa_linear"] == 1.0  # LM predicted exactly
    assert 0.5 < pa["LCX"]["icc_2_1"] < 1.0 and pa["LCX"]["presence"]["accuracy"] == 1.0  # 200 -> 100: still > 0
    assert pa["RCA"]["presence"]["accuracy"] == pytest.approx(11 / 12)  # scan 4's RCA missed
    assert pa["RCA"]["bland_altman"]["bias"] == pytest.approx(-5 / 12)


def test_per_artery_leaves_out_predictions_of_unknown_artery(coca_set):
    preds = _predictions()
    preds[3].lesions[0].artery = "unknown"
    a = evaluate_agreement(preds, coca_set, n_resamples=0)
    assert a["per_artery"]["LAD"]["n_scans"] == 11
    assert any("per-artery agreement over 11 of 12 scans" in n for n in a["notes"])
    for p in preds[1:]:  # scans without lesions have known zeros per artery: give each one of unknown artery
        p.lesions.append(_lesion("unknown", 1.0))
    a = evaluate_agreement(preds, coca_set, n_resamples=0)
    assert a["per_artery"] is None and any("per-artery agreement needs at least 2 scans" in n for n in a["notes"])
    assert artery_table(a) == ""


def test_predicted_arteries_are_result_json_per_artery():
    """The agreement's predicted per-artery scores are the per_artery totals result.json writes (score_lesions)."""
    lesions = [_lesion("LAD", 3.5), _lesion("RCA", 2.0), _lesion("LAD", 1.25)]
    totals = score_lesions(lesions, 3.0).per_artery
    assert _lesion_arteries(lesions) == {a: totals[a]["agatston"] for a in ARTERIES}
    assert _lesion_arteries(lesions + [_lesion("unknown", 1.0)]) is None  # result.json: "unknown" holds it


def _with_lesions(a):
    """The score-only agreement with made-up pooled lesion figures, to see lesion F1 and its interval printed."""
    a["lesions"] = {"sensitivity": 0.8, "ppv": 0.9, "f1": 0.847, "f1_ci": {"lower": 0.71, "upper": 0.93},
                    "f1_volume": 0.9, "f1_volume_ci": {"lower": 0.8, "upper": 0.95}, "false_positives_per_scan": 0.25}
    return a


def test_reports_print_intervals_and_the_artery_table(coca_set, tmp_path):
    """The batch report.html and transfer.md show ICC, kappa and lesion F1 with 95 % intervals, and the per-artery
    table."""
    a = _with_lesions(evaluate_agreement(_predictions(), coca_set, n_resamples=300, seed=0))
    s, lad = a["scores"], a["per_artery"]["LAD"]
    icc = format_ci(s["icc_2_1"], s["icc_2_1_ci"])
    kappa = format_ci(s["kappa"]["5-class"]["kappa_linear"], s["kappa"]["5-class"]["kappa_linear_ci"])
    lad_icc = format_ci(lad["icc_2_1"], lad["icc_2_1_ci"])
    assert "(" in icc and "(" in kappa and "(" in lad_icc  # each with its interval
    page = write_report(tmp_path / "report.html", [], {}, agreement=a).read_text()
    for text in (icc, kappa, "0.847 (0.71-0.93)", "Per artery", lad_icc, "<td>LAD</td><td>12</td>"):
        assert text in page
    md = artery_table(a)
    assert md.startswith("| Artery | Scans | ICC(2,1) (95 % CI) |") and f"| LAD | 12 | {lad_icc} |" in md
    fig = _figures(a)
    result = {"family": "x", "split": "test", "ckpt_dir": "c", "manifest": "m", "failed_scans": [], "notes": [],
              "figures": fig, "pass": _passes(fig), "per_artery": a["per_artery"], "scans": []}
    assert set(result["pass"]) == set(TARGETS)
    text = write_transfer_markdown(result, tmp_path / "transfer.md").read_text()
    assert f"| ICC(2,1) of Agatston | {icc} |" in text and f"| 5-class linear kappa | {kappa} |" in text
    assert "| lesion F1 (count) | 0.847 (0.71-0.93) |" in text and f"| LAD | 12 | {lad_icc} |" in text
