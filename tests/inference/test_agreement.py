"""Agreement statistics on known inputs: perfect prediction, a missed and a non-coronary lesion."""

from __future__ import annotations

import numpy as np
import pytest

from coronary_calcium.inference import Prediction, evaluate_agreement
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.labels import AORTIC
from coronary_calcium.scoring.agatston import find_lesions


@pytest.fixture(scope="module")
def references(tiny_manifest):
    manifest = load_manifest(tiny_manifest)
    out = {}
    for scan in manifest.scans:
        volume, labels = read_scan(scan)
        out[scan.scan_id] = (volume, labels, find_lesions(volume.hu, volume.spacing, labels=labels))
    return manifest, out


def _prediction(scan_id, lesions):
    return Prediction(scan_id=scan_id, agatston=float(sum(les.agatston for les in lesions)), lesions=lesions)


def test_perfect_prediction_agrees_perfectly(references):
    manifest, refs = references
    preds = [_prediction(sid, lesions) for sid, (_, _, lesions) in refs.items()]
    a = evaluate_agreement(preds, manifest)
    assert a["n_scans"] == len(refs) and a["unpaired"] == []
    assert a["scores"]["icc_2_1"] == pytest.approx(1.0)
    assert a["scores"]["pearson"] == pytest.approx(1.0) and a["scores"]["spearman"] == pytest.approx(1.0)
    assert a["scores"]["bland_altman"]["bias"] == pytest.approx(0.0)
    for scheme in ("5-class", "4-class", "clinical"):
        k = a["scores"]["kappa"][scheme]
        assert k["kappa_linear"] == pytest.approx(1.0) and k["accuracy"] == 1.0
        assert np.trace(np.array(k["confusion_matrix"])) == len(refs)
    assert all(t["accuracy"] == 1.0 for t in a["scores"]["threshold_accuracy"].values())
    lesions = a["lesions"]
    assert lesions["f1"] == 1.0 and lesions["sensitivity"] == 1.0 and lesions["ppv"] == 1.0
    assert lesions["f1_volume"] == 1.0 and lesions["false_positives_per_scan"] == 0.0
    assert lesions["f1_ci"] == {"lower": 1.0, "upper": 1.0} and a["lesions_available"]["n_scans_score_only"] == 0
    # Label references know each lesion's artery: CAC-DRS vessel counts agree where the prediction's arteries do.
    assert a["scores"]["cac_drs"]["vessels"]["n"] == len(refs) and a["scores"]["cac_drs"]["vessels"]["accuracy"] == 1.0
    # ... and per artery (mask references: arteries from the labels): perfect ICC on all four, over every scan.
    for artery, figures in a["per_artery"].items():
        assert figures["icc_2_1"] == 1.0 and figures["n_scans"] == len(refs), artery
        assert figures["bland_altman"]["bias"] == 0.0 and figures["presence"]["accuracy"] == 1.0
    assert a["non_coronary_counted_as_coronary"]["lesions"] == 0
    assert a["non_coronary_counted_as_coronary"]["n_scans_with_aortic_valve_labels"] == len(refs)


def test_artery_assignment_of_matched_lesions(references):
    """The reference lesions carry their arteries (the tiny set has LAD only); predictions that call every other one
    RCA put the rest of the Agatston in the right artery, weighted by Agatston."""
    import dataclasses

    manifest, refs = references
    preds, right, total = [], 0.0, 0.0
    for sid, (_, _, lesions) in refs.items():
        renamed = [dataclasses.replace(les, artery="RCA" if i % 2 else les.artery) for i, les in enumerate(lesions)]
        right += sum(les.agatston for les in renamed if les.artery == "LAD")
        total += sum(les.agatston for les in renamed)
        preds.append(_prediction(sid, renamed))
    a = evaluate_agreement(preds, manifest, n_resamples=0)["artery_assignment"]
    assert a["agatston_share_right"] == pytest.approx(right / total, abs=1e-5)
    assert a["per_artery"]["LAD"]["n_lesions"] == a["n_lesions"] == sum(len(r[2]) for r in refs.values())
    assert a["confusion_agatston"]["LAD"]["RCA"] == pytest.approx(total - right, abs=1e-3)


def test_missed_and_non_coronary_lesions_are_counted(references):
    manifest, refs = references
    preds = []
    n_aortic = n_missed = 0
    for i, (sid, (volume, labels, lesions)) in enumerate(refs.items()):
        if i == 0:  # miss every lesion of the first scan
            n_missed = len(lesions)
            preds.append(_prediction(sid, []))
            continue
        aortic = find_lesions(volume.hu, volume.spacing, mask=labels == AORTIC)
        if aortic and not n_aortic:  # count the aortic calcium of one scan as coronary
            n_aortic = len(aortic)
            lesions = lesions + aortic
        preds.append(_prediction(sid, lesions))
    assert n_missed > 0 and n_aortic > 0
    a = evaluate_agreement(preds, manifest)
    pooled = a["lesions"]
    assert pooled["false_negatives"] == n_missed and pooled["false_positives"] == n_aortic
    assert pooled["sensitivity"] == pytest.approx(1 - n_missed / pooled["n_ref"])
    assert pooled["ppv"] == pytest.approx(1 - n_aortic / pooled["n_pred"])
    assert pooled["false_positives_per_scan"] == pytest.approx(n_aortic / len(refs))
    assert pooled["f1_ci"]["lower"] <= pooled["f1"] <= pooled["f1_ci"]["upper"] <= 1.0
    assert pooled["f1_ci"]["lower"] < pooled["f1_ci"]["upper"]
    nc = a["non_coronary_counted_as_coronary"]
    assert nc["lesions"] == n_aortic and nc["scans_with_any"] == 1 and nc["agatston"] > 0
    assert a["scores"]["icc_2_1"] < 1.0
    first = a["scans"][0]
    assert first["predicted_agatston"] == 0.0 and first["predicted_category"] == "0"


def test_a_single_scan_has_no_score_statistics(references):
    manifest, refs = references
    sid, (_, _, lesions) = next(iter(refs.items()))
    a = evaluate_agreement([_prediction(sid, lesions), _prediction("not_in_manifest", [])], manifest)
    assert a["n_scans"] == 1 and a["scores"] is None and a["unpaired"] == ["not_in_manifest"]
    assert a["lesions"]["f1"] == 1.0 and "at least 2 scans" in a["notes"][0]
