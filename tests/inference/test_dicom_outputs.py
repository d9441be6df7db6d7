"""``infer --dicom-out``: the DICOM SEG and Comprehensive 3D SR read back with pydicom / highdicom, against the source
series and result.json (the real QRM phantom series and tiny synthetic series)."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from coronary_calcium import __version__
from coronary_calcium.cli import main
from coronary_calcium.errors import InputError
from coronary_calcium.inference import run_inference
from coronary_calcium.inference.dicom_outputs import (
    ALGORITHM_NAME,
    SEG_FILE,
    SR_FILE,
    segment_label,
    tracking_identifier,
    write_dicom_outputs,
)
from coronary_calcium.io.dicom import read_dicom_series, write_dicom_series
from coronary_calcium.io.images import read_image, write_nifti
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.labels import ARTERY_NAMES
from coronary_calcium.scoring.agatston import UNKNOWN_ARTERY

MEASURES = {"Coronary artery calcium score": "agatston", "Calcium Volume": "volume_mm3", "Calcium Mass": "mass_mg"}


def _source_uids(series_dir: Path) -> dict[str, str]:
    """SOP Instance UID -> file name of the source series as the reader ordered it (index = slice)."""
    volume = read_dicom_series(series_dir)
    uids = {}
    for name in volume.meta["files"]:
        uids[str(pydicom.dcmread(series_dir / name, stop_before_pixels=True).SOPInstanceUID)] = name
    return uids


def _expected_segments(result: dict) -> list[str]:
    present = {les["artery"] for les in result["lesions"]}
    return [a for a in ARTERY_NAMES if a in present] + ([UNKNOWN_ARTERY] if UNKNOWN_ARTERY in present else [])


def check_seg(scan_dir: Path, series_dir: Path, result: dict, lesion_ids: np.ndarray) -> hd.seg.Segmentation | None:
    """The SEG references the source instances, labels one segment per artery present, holds one frame per (slice,
    segment) with voxels, and its pixels are the kept lesions' voxels."""
    arteries = _expected_segments(result)
    if not arteries:
        assert not (scan_dir / SEG_FILE).exists()
        assert result["files"]["dicom"]["seg"] is None
        return None
    seg = hd.seg.segread(scan_dir / SEG_FILE)
    source = read_dicom_series(series_dir)
    uid_of_slice = [str(pydicom.dcmread(series_dir / n, stop_before_pixels=True).SOPInstanceUID)
                    for n in source.meta["files"]]
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source.meta["study_uid"]
    assert [str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence] == [source.meta["series_uid"]]
    referenced = {str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(uid_of_slice)
    assert seg.FrameOfReferenceUID == pydicom.dcmread(series_dir / source.meta["files"][0]).FrameOfReferenceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [segment_label(a) for a in arteries]
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == list(range(1, len(arteries) + 1))
    assert result["files"]["dicom"]["seg"]["segments"] == {segment_label(a): i for i, a in enumerate(arteries, 1)}
    assert seg.SOPInstanceUID == result["files"]["dicom"]["seg"]["sop_instance_uid"]
    by_artery = {a: [les["id"] for les in result["lesions"] if les["artery"] == a] for a in arteries}
    masks = {a: np.isin(lesion_ids, ids) for a, ids in by_artery.items()}
    slices = {a: sorted(set(np.flatnonzero(m.any(axis=(1, 2))).tolist())) for a, m in masks.items()}
    assert seg.NumberOfFrames == sum(len(s) for s in slices.values())
    if len(arteries) == 1:  # one segment: one frame per slice with kept lesions
        assert seg.NumberOfFrames == len(set(np.flatnonzero((lesion_ids > 0).any(axis=(1, 2))).tolist()))
    frame_sources = [str(uid) for _, _, uid in seg.get_source_image_uids()]
    assert set(frame_sources) <= set(uid_of_slice)
    pixels = seg.get_pixels_by_source_instance(uid_of_slice, segment_numbers=list(range(1, len(arteries) + 1)))
    for i, artery in enumerate(arteries):
        assert np.array_equal(pixels[..., i] > 0, masks[artery]), artery
    return seg


def _groups_by_identifier(report: hd.sr.MeasurementReport) -> dict[str, object]:
    groups = list(report.get_volumetric_roi_measurement_groups()) + list(report.get_image_measurement_groups())
    return {g.tracking_identifier: g for g in groups}


def check_sr(scan_dir: Path, series_dir: Path, result: dict, seg: hd.seg.Segmentation | None) -> None:
    """The SR's numbers are result.json's; it references the source series' instances and the SEG."""
    sr = hd.sr.srread(scan_dir / SR_FILE)
    ds = pydicom.dcmread(scan_dir / SR_FILE)
    assert ds.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert ds.SOPInstanceUID == result["files"]["dicom"]["sr"]["sop_instance_uid"]
    source_uids = set(_source_uids(series_dir))
    evidence = {str(s.SeriesInstanceUID): {str(i.ReferencedSOPInstanceUID) for i in s.ReferencedSOPSequence}
                for e in ds.CurrentRequestedProcedureEvidenceSequence for s in e.ReferencedSeriesSequence}
    series_uid = result["files"]["dicom"]["source_series_instance_uid"]
    assert evidence[series_uid] == source_uids
    if seg is not None:
        assert evidence[str(seg.SeriesInstanceUID)] == {str(seg.SOPInstanceUID)}
    else:
        assert set(evidence) == {series_uid}
    groups = _groups_by_identifier(sr.content)
    expected = {tracking_identifier(a): v for a, v in result["per_artery"].items()}
    expected[tracking_identifier(None)] = result["totals"]
    assert set(groups) == set(expected)
    segments = {s.SegmentLabel: int(s.SegmentNumber) for s in seg.SegmentSequence} if seg is not None else {}
    for name, group in groups.items():
        values = {MEASURES[m.name.meaning]: m.value for m in group.get_measurements()}
        assert values == pytest.approx({k: expected[name][k] for k in MEASURES.values()}, rel=1e-12, abs=1e-12), name
        if name in segments:  # an artery with lesions: a volumetric ROI group pointing at its segment
            ref = group.referenced_segment
            assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
            assert ref.referenced_segment_numbers == [segments[name]]
        else:
            assert not hasattr(group, "referenced_segment") or group.referenced_segment is None
    total = groups[tracking_identifier(None)]
    assert [(q.name.meaning, q.value.value) for q in total.get_qualitative_evaluations()] == \
        [("Coronary calcium risk category", result["category"])]
    text = str(ds)  # the algorithm and its version are named (observer device and algorithm identification)
    assert ALGORITHM_NAME in text and __version__ in text


def _check_scan(out: Path, scan_id: str, series_dir: Path) -> dict:
    result = json.loads((out / scan_id / "result.json").read_text())
    assert result["status"] == "ok", result
    ids = np.rint(read_image(out / scan_id / "lesions.nii.gz").hu).astype(int)
    seg = check_seg(out / scan_id, series_dir, result, ids)
    check_sr(out / scan_id, series_dir, result, seg)
    return result


@pytest.fixture(scope="module")
def synthetic_series(tiny_manifest, tmp_path_factory) -> Path:
    """The tiny data set's scans as DICOM series, one folder each."""
    root = tmp_path_factory.mktemp("dicom_series")
    for scan in load_manifest(tiny_manifest).scans:
        write_dicom_series(read_image(scan.image), root / scan.scan_id, patient_id=scan.patient_id)
    return root


@pytest.fixture(scope="module")
def synthetic_run(synthetic_series, ckpt_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dicom_out")
    return run_inference(synthetic_series, out, ckpt_dir=ckpt_dir, progress=False, dicom_out=True)


def test_synthetic_series_get_seg_and_sr_matching_result_json(synthetic_run, synthetic_series):
    assert synthetic_run.n_error == 0
    with_lesions = 0
    for row in synthetic_run.rows:
        result = _check_scan(synthetic_run.output_dir, row["scan_id"], synthetic_series / row["scan_id"])
        with_lesions += bool(result["lesions"])
        assert result["files"]["dicom"]["sr"]["file"] == SR_FILE
    assert with_lesions >= 1, "no scan kept a lesion: the SEG is not tested"
    assert SR_FILE in (synthetic_run.output_dir / "report.html").read_text()


def test_qrm_phantom_series_gets_seg_and_sr(qrm_series_dir, ckpt_dir, tmp_path):
    run = run_inference(qrm_series_dir, tmp_path, ckpt_dir=ckpt_dir, progress=False, dicom_out=True)
    result = _check_scan(tmp_path, run.rows[0]["scan_id"], qrm_series_dir)
    assert result["files"]["dicom"]["seg"] is not None, "the tiny model kept no lesion on the phantom"


def _reassigned(result: dict, arteries: list[str]) -> dict:
    """``result`` with its lesions' arteries set in turn from ``arteries`` and per_artery recomputed."""
    out = json.loads(json.dumps(result))
    per = {a: {"agatston": 0.0, "volume_mm3": 0.0, "mass_mg": 0.0, "n_lesions": 0} for a in [*ARTERY_NAMES, "unknown"]}
    for i, les in enumerate(out["lesions"]):
        les["artery"] = arteries[i % len(arteries)]
        for k in ("agatston", "volume_mm3", "mass_mg"):
            per[les["artery"]][k] += les[k]
        per[les["artery"]]["n_lesions"] += 1
    out["per_artery"] = per
    return out


def test_one_segment_per_artery_present(synthetic_run, synthetic_series, tmp_path):
    """Lesions named LM..RCA (artery assignment) and unknown ones: one segment each, in LM, LAD, LCX, RCA, unknown
    order; the SR's per-artery groups reference them."""
    out = synthetic_run.output_dir
    row = max(synthetic_run.rows, key=lambda r: int(r["n_lesions"] or 0))
    result = json.loads((out / row["scan_id"] / "result.json").read_text())
    ids = np.rint(read_image(out / row["scan_id"] / "lesions.nii.gz").hu).astype(int)
    series = synthetic_series / row["scan_id"]
    volume = read_dicom_series(series)
    assert len(result["lesions"]) >= 4, "too few kept lesions to name four arteries"
    names = ["RCA", "unknown", "LAD", "LM"]
    payload = _reassigned(result, names)
    payload["files"] = {"dicom": write_dicom_outputs(payload, ids.astype(np.uint16), volume, tmp_path)}
    seg = check_seg(tmp_path, series, payload, ids)
    check_sr(tmp_path, series, payload, seg)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [
        "coronary calcium, LM", "coronary calcium, LAD", "coronary calcium, RCA", "coronary calcium, artery unknown"]


def test_no_kept_lesion_gives_an_sr_without_seg(synthetic_series, tmp_path):
    series = synthetic_series / sorted(p.name for p in synthetic_series.iterdir())[0]
    volume = read_dicom_series(series)
    zeros = {"agatston": 0.0, "volume_mm3": 0.0, "mass_mg": 0.0, "n_lesions": 0}
    payload = {"lesions": [], "per_artery": {a: dict(zeros) for a in [*ARTERY_NAMES, "unknown"]},
               "totals": dict(zeros), "category": "0", "category_scheme": "5-class", "model": {}}
    payload["files"] = {"dicom": write_dicom_outputs(payload, np.zeros(volume.shape, np.uint16), volume, tmp_path)}
    assert sorted(p.name for p in tmp_path.iterdir()) == [SR_FILE]
    check_sr(tmp_path, series, payload, None)


def test_a_nifti_volume_is_refused(tiny_manifest, tmp_path):
    volume = read_image(load_manifest(tiny_manifest).scans[0].image)
    with pytest.raises(InputError, match="not a DICOM series"):
        write_dicom_outputs({"lesions": []}, np.zeros(volume.shape, np.uint16), volume, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_nifti_only_input_is_refused_before_anything_is_written(tiny_manifest, ckpt_dir, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="--dicom-out: needs DICOM series input"):
        run_inference(tiny_manifest, out, ckpt_dir=ckpt_dir, progress=False, dicom_out=True)
    assert not out.exists()
    image = load_manifest(tiny_manifest).scans[0].image
    assert main(["infer", str(image), "--out", str(out), "--ckpt-dir", str(ckpt_dir), "--dicom-out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --dicom-out: needs DICOM series input") and len(err.splitlines()) == 1
    assert not out.exists()


def test_mixed_input_notes_the_nifti_scan(tiny_manifest, ckpt_dir, tmp_path, capsys):
    scan = load_manifest(tiny_manifest).scans[0]
    volume = read_image(scan.image)
    batch = tmp_path / "batch"
    write_dicom_series(volume, batch / "dicom", patient_id="M1")
    write_nifti(volume.hu.astype(np.int16), volume, batch / "nifti.nii.gz")
    out = tmp_path / "out"
    assert main(["infer", str(batch), "--out", str(out), "--ckpt-dir", str(ckpt_dir), "--dicom-out"]) == 0
    nifti = json.loads((out / "nifti" / "result.json").read_text())
    assert "dicom" not in nifti["files"] and not (out / "nifti" / SR_FILE).exists()
    assert nifti["notes"][-1] == "DICOM outputs (--dicom-out) not written: the input is not a DICOM series"
    _check_scan(out, "dicom", batch / "dicom")
