"""COCA's non-gated scores.xlsx (written here with openpyxl in the published layout) and score-only manifests."""

from __future__ import annotations

import json

import numpy as np
import pytest
from openpyxl import Workbook

from coronary_calcium.errors import InputError
from coronary_calcium.io.coca import read_coca_scores
from coronary_calcium.io.images import write_nifti
from coronary_calcium.io.manifest import load_manifest, validate_manifest
from coronary_calcium.io.volume import CTVolume

HEADER = ["filename", "LCA", "LAD", "LCX", "RCA", "total"]


def write_scores(path, rows, header=HEADER, title=None):
    book = Workbook()
    sheet = book.active
    if title:
        sheet.append([title])
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    book.save(path)
    return path


def test_reads_the_published_layout(tmp_path):
    path = write_scores(tmp_path / "scores.xlsx", [["101A", 0, 12.5, 0, 3, 15.5], ["102A", 5, "40", 0, 0, 45],
                                                   [None, None, None, None, None, None]], title="COCA non-gated")
    scores = read_coca_scores(path)
    assert scores == {"101A": {"LM": 0.0, "LAD": 12.5, "LCX": 0.0, "RCA": 3.0, "total": 15.5},
                      "102A": {"LM": 5.0, "LAD": 40.0, "LCX": 0.0, "RCA": 0.0, "total": 45.0}}


@pytest.mark.parametrize("header, rows, problem", [
    (["filename", "LCA", "LAD", "LCX", "total"], [["1A", 0, 0, 0, 0]], "missing column(s) RCA"),
    (HEADER, [["1A", 0, "high", 0, 0, 0]], "row 2 (1A), column LAD: 'high' is not a number"),
    (HEADER, [["1A", 0, None, 0, 0, 0]], "row 2 (1A), column LAD: empty score cell"),
    (HEADER, [["1A", 0, 0, 0, -3, 0]], "column RCA: score -3 must be a finite number >= 0"),
    (HEADER, [["1A", 0, 0, 0, 0, 0], ["1A", 0, 0, 0, 0, 0]], "row 3: filename '1A' repeats row 2"),
    (HEADER, [["1A", 10, 20, 0, 0, 50]], "total 50 differs from the sum of LCA, LAD, LCX and RCA (30)"),
    (HEADER, [], "no rows with a filename below the header"),
    (["name", "score"], [["1A", 0]], "no sheet has a header row with 'filename'"),
])
def test_refusals_name_the_row_and_the_problem(tmp_path, header, rows, problem):
    path = write_scores(tmp_path / "scores.xlsx", rows, header=header)
    with pytest.raises(InputError) as err:
        read_coca_scores(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_not_a_workbook(tmp_path):
    path = tmp_path / "scores.xlsx"
    path.write_text("filename,LCA\n")
    with pytest.raises(InputError, match="not a readable .xlsx workbook"):
        read_coca_scores(path)
    with pytest.raises(InputError, match="COCA scores file not found"):
        read_coca_scores(tmp_path / "nope.xlsx")


def _image(path):
    hu = np.full((2, 4, 4), -1000, np.int16)
    return write_nifti(hu, CTVolume(hu=hu.astype(np.float32), spacing=(3.0, 0.7, 0.7)), path)


def _manifest(root, scans):
    path = root / "data_manifest.json"
    path.write_text(json.dumps({"version": 1, "data_root": ".", "scans": scans}))
    return path


def test_manifest_reads_scores_from_the_sheet_and_inline(tmp_path):
    write_scores(tmp_path / "scores.xlsx", [["101A", 0, 12.5, 0, 3, 15.5], ["X7", 1, 1, 1, 1, 4]])
    for pid in ("101", "102", "103"):
        _image(tmp_path / pid / "image.nii.gz")
    path = _manifest(tmp_path, [
        {"patient_id": "101", "image": "101/image.nii.gz", "split": "test",
         "reference": {"coca_scores": "scores.xlsx"}},
        {"patient_id": "102", "image": "102/image.nii.gz", "split": "test",
         "reference": {"coca_scores": "scores.xlsx", "coca_row": "X7"}},
        {"patient_id": "103", "image": "103/image.nii.gz", "split": "test", "reference": {"scores": {"total": 7}}},
    ])
    m = load_manifest(path)
    assert m.scans[0].reference_scores == {"LM": 0.0, "LAD": 12.5, "LCX": 0.0, "RCA": 3.0, "total": 15.5}
    assert m.scans[1].reference_scores["total"] == 4.0
    assert m.scans[2].reference_scores == {"total": 7.0} and m.scans[2].coca_scores is None
    json.dumps(m.scans[0].to_dict())


def test_manifest_refuses_a_patient_missing_from_the_sheet_and_bad_references(tmp_path):
    write_scores(tmp_path / "scores.xlsx", [["101A", 0, 12.5, 0, 3, 15.5]])
    _image(tmp_path / "image.nii.gz")
    path = _manifest(tmp_path, [{"patient_id": "104", "image": "image.nii.gz", "split": "test",
                                 "reference": {"coca_scores": "scores.xlsx"}}])
    _, problems = validate_manifest(path)
    assert len(problems) == 1
    assert "scans/0 (104)" in problems[0] and "no row for patient '104'" in problems[0] and "'104A'" in problems[0]
    for ref, text in [({"scores": {"total": -1}}, "minimum"), ({"scores": {"LAD": 3}}, "'total' is a required"),
                      ({"scores": {"total": 3, "LM": "x"}}, "is not of type 'number'"),
                      ({"scores": {"total": 1}, "coca_scores": "scores.xlsx"}, "should not be valid"),
                      ({"coca_row": "1A", "labels": "l.nii.gz"}, "'coca_scores' is a dependency of 'coca_row'")]:
        path = _manifest(tmp_path, [{"patient_id": "P", "image": "image.nii.gz", "split": "test", "reference": ref}])
        _, problems = validate_manifest(path)
        assert any(text in p for p in problems), (ref, problems)
    path = _manifest(tmp_path, [{"patient_id": "P", "image": "image.nii.gz", "split": "test",
                                 "reference": {"coca_scores": "../elsewhere/scores.xlsx"}}])
    _, problems = validate_manifest(path)
    assert "coca_scores '../elsewhere/scores.xlsx' is outside data_root" in problems[0]


def test_has_reference(tmp_path):
    _image(tmp_path / "image.nii.gz")
    path = _manifest(tmp_path, [{"patient_id": "A", "image": "image.nii.gz", "split": "test"},
                                {"patient_id": "B", "image": "image.nii.gz", "split": "test", "scan_id": "B",
                                 "reference": {"scores": {"total": 0}}}])
    assert [s.has_reference for s in load_manifest(path).scans] == [False, True]
