"""Batch inference: manifest, folders of scans, one scan; outputs, overwrite protection, bad scans, the bundle CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from coronary_calcium.errors import InputError
from coronary_calcium.inference import discover_inputs, run_inference
from coronary_calcium.inference.outputs import MIN_PANEL_PX
from coronary_calcium.io.dicom import write_dicom_series
from coronary_calcium.io.images import read_image, write_nifti
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.train.bundle import BUNDLE_ROOT

REPO = BUNDLE_ROOT.parent


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def manifest_run(tiny_manifest, ckpt_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("infer_manifest")
    return run_inference(tiny_manifest, out, ckpt_dir=ckpt_dir, progress=False)


def _check_outputs(out: Path, scan_ids: list[str], images: dict[str, Path]) -> None:
    rows = _rows(out / "summary.csv")
    assert [r["scan_id"] for r in rows] == scan_ids
    arteries = ["agatston_LM", "agatston_LAD", "agatston_LCX", "agatston_RCA", "agatston_unknown"]  # COCA's order
    assert list(rows[0]) == ["scan_id", "status", "reason", *arteries, "agatston", "volume_mm3", "mass_mg",
                             "category", "n_lesions", "seconds", "source"]
    for row in rows:
        assert row["status"] == "ok", row
        result = json.loads((out / row["scan_id"] / "result.json").read_text())
        assert result["scan_id"] == row["scan_id"] and result["status"] == "ok"
        assert float(row["agatston"]) == pytest.approx(result["totals"]["agatston"], abs=1e-3)
        assert sum(float(row[c]) for c in arteries) == pytest.approx(float(row["agatston"]), abs=1e-2)
        assert float(row["agatston_LAD"]) == pytest.approx(result["per_artery"]["LAD"]["agatston"], abs=1e-3)
        assert int(row["n_lesions"]) == len(result["lesions"]) == result["totals"]["n_lesions"]
        assert row["category"] == result["category"]
        for key in ("agatston", "volume_mm3", "mass_mg"):
            assert sum(les[key] for les in result["lesions"]) == pytest.approx(result["totals"][key])
        volume = read_image(images[row["scan_id"]])
        mask = read_image(out / row["scan_id"] / "lesions.nii.gz")
        assert mask.shape == volume.shape
        assert np.allclose(mask.spacing, volume.spacing) and np.allclose(mask.origin, volume.origin, atol=1e-3)
        assert np.allclose(mask.direction, volume.direction, atol=1e-6)
        ids = np.rint(mask.hu).astype(int)
        assert sorted(set(np.unique(ids)) - {0}) == [les["id"] for les in result["lesions"]]
        for les in result["lesions"]:
            assert int((ids == les["id"]).sum()) == les["n_voxels"]
            assert volume.hu[ids == les["id"]].max() == les["peak_hu"]
            assert np.all(volume.hu[ids == les["id"]] >= 130)
        assert len(result["slice_probabilities"]) == volume.shape[0]
        positive = result["positive_slices"]
        assert result["files"]["overlays"] == [f"slices/slice_{k:03d}.png" for k in positive]
        (r0, r1), (c0, c1) = result["files"]["overlay_window"]
        scale = max(1, -(-MIN_PANEL_PX // max(r1 - r0, c1 - c0)))  # small slices are upscaled
        for png in result["files"]["overlays"]:
            assert (out / row["scan_id"] / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert Image.open(out / row["scan_id"] / png).size == (2 * (c1 - c0) * scale + 4, (r1 - r0) * scale)
        assert result["model"]["network_name"] == "tiny_cnn" and "t_cam" in result["model"]
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and all(sid in html for sid in scan_ids)


def test_manifest_run_outputs_are_complete_and_consistent(manifest_run, tiny_manifest):
    manifest = load_manifest(tiny_manifest)
    assert manifest_run.n_ok == len(manifest.scans) and manifest_run.n_error == 0
    _check_outputs(manifest_run.output_dir, [s.scan_id for s in manifest.scans],
                   {s.scan_id: s.image for s in manifest.scans})
    agreement = json.loads((manifest_run.output_dir / "agreement.json").read_text())
    assert agreement["n_scans"] == len(manifest.scans)
    assert set(agreement["scores"]) >= {"icc_2_1", "pearson", "spearman", "bland_altman", "kappa",
                                        "threshold_accuracy"}
    assert set(agreement["scores"]["kappa"]) == {"5-class", "4-class", "clinical"}
    assert agreement["lesions"]["n_scans"] == len(manifest.scans)
    assert "non_coronary_counted_as_coronary" in agreement
    html = (manifest_run.output_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and "Agreement with the reference" in html


def test_existing_results_are_not_overwritten(manifest_run, tiny_manifest, tmp_path):
    out = manifest_run.output_dir
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    # decided before any work: the (missing) checkpoint is not even looked at
    with pytest.raises(InputError) as e:
        run_inference(tiny_manifest, out, ckpt_dir=tmp_path / "no_such_models", progress=False)
    assert "already exist" in str(e.value) and "T00" in str(e.value) and "overwrite" in str(e.value)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_overwrite_replaces_results(tiny_manifest, ckpt_dir, tmp_path):
    manifest = load_manifest(tiny_manifest)
    one = manifest.scans[0].image
    first = run_inference(one, tmp_path, ckpt_dir=ckpt_dir, progress=False, overlays=False)
    assert first.n_ok == 1 and _rows(tmp_path / "summary.csv")[0]["scan_id"] == "image"
    stale = tmp_path / "image" / "slices" / "slice_999.png"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"old")
    again = run_inference(one, tmp_path, ckpt_dir=ckpt_dir, progress=False, overwrite=True)
    assert again.n_ok == 1 and not stale.exists()
    assert again.rows[0]["agatston"] == first.rows[0]["agatston"]
    result = json.loads((tmp_path / "image" / "result.json").read_text())
    assert result["files"]["overlays"] and all((tmp_path / "image" / p).is_file() for p in result["files"]["overlays"])


def test_thresholds_missing_or_mismatched_refuse_the_run(tiny_manifest, ckpt_copy, tmp_path):
    (ckpt_copy / "thresholds.json").unlink()
    with pytest.raises(InputError, match="thresholds missing: run coronary-calcium calibrate / evaluate first"):
        run_inference(tiny_manifest, tmp_path / "a", ckpt_dir=ckpt_copy, progress=False)
    assert not (tmp_path / "a" / "summary.csv").exists()


def _non_ct_series(folder: Path, like) -> None:
    paths = write_dicom_series(like, folder, patient_id="MR1")
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.Modality = "MR"
        ds.save_as(p)


def test_bad_scans_in_a_folder_are_reported_and_the_others_processed(tiny_manifest, ckpt_dir, tmp_path, capsys):
    manifest = load_manifest(tiny_manifest)
    good = read_image(manifest.scans[0].image)
    batch = tmp_path / "batch"
    write_dicom_series(good, batch / "good_dicom", patient_id="G1", instance_order="descending")
    write_nifti(good.hu.astype(np.int16), good, batch / "good.nii.gz")
    _non_ct_series(batch / "mr_series", good)
    (batch / "corrupt.nii.gz").write_bytes(b"this is not a NIfTI file")
    for p in write_dicom_series(good, batch / "no_spacing", patient_id="S1"):
        ds = pydicom.dcmread(p)
        del ds.PixelSpacing
        ds.save_as(p)
    uneven = write_dicom_series(good, batch / "uneven", patient_id="U1")
    ds = pydicom.dcmread(uneven[-1])
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 1.5
    ds.save_as(uneven[-1])
    (batch / "notes.txt").write_text("not a scan")
    scans, manifest_found = discover_inputs(batch)
    assert manifest_found is None
    assert sorted(s.scan_id for s in scans) == ["corrupt", "good", "good_dicom", "mr_series", "no_spacing", "uneven"]
    out = tmp_path / "out"
    run = run_inference(batch, out, ckpt_dir=ckpt_dir, progress=False)
    rows = {r["scan_id"]: r for r in _rows(out / "summary.csv")}
    assert run.n_ok == 2 and run.n_error == 4
    assert rows["good"]["status"] == rows["good_dicom"]["status"] == "ok"
    assert rows["mr_series"]["status"] == "error" and "modality MR" in rows["mr_series"]["reason"]
    assert rows["corrupt"]["status"] == "error" and "cannot read nifti" in rows["corrupt"]["reason"]
    assert rows["no_spacing"]["status"] == "error" and "missing PixelSpacing" in rows["no_spacing"]["reason"]
    assert rows["uneven"]["status"] == "error" and "uneven slice spacing" in rows["uneven"]["reason"]
    # the DICOM copy and the NIfTI copy of one scan score the same
    assert float(rows["good"]["agatston"]) == pytest.approx(float(rows["good_dicom"]["agatston"]))
    err = capsys.readouterr().err
    assert "error: scan mr_series:" in err and "error: scan corrupt:" in err
    assert json.loads((out / "corrupt" / "result.json").read_text())["status"] == "error"
    assert not (out / "agreement.json").exists()  # no manifest, no references


def test_a_run_where_every_scan_fails_raises(tmp_path, ckpt_dir):
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "a.nii.gz").write_bytes(b"garbage")
    (batch / "b.mha").write_bytes(b"garbage")
    with pytest.raises(InputError, match="all 2 scan"):
        run_inference(batch, tmp_path / "out", ckpt_dir=ckpt_dir, progress=False)
    assert [r["status"] for r in _rows(tmp_path / "out" / "summary.csv")] == ["error", "error"]


def test_discovery_of_inputs(tmp_path, tiny_manifest):
    manifest = load_manifest(tiny_manifest)
    vol = read_image(manifest.scans[0].image)
    write_dicom_series(vol, tmp_path / "coca" / "patient" / "101" / "series 1", patient_id="101")
    scans, _ = discover_inputs(tmp_path / "coca")
    assert [s.scan_id for s in scans] == ["patient_101_series_1"]
    (tmp_path / "coca" / "patient" / "selfloop").symlink_to(".", target_is_directory=True)  # a link loop
    (tmp_path / "coca" / "series link").symlink_to(tmp_path / "coca" / "patient" / "101" / "series 1")
    scans, _ = discover_inputs(tmp_path / "coca")
    assert [s.scan_id for s in scans] == ["patient_101_series_1"]  # each folder once, links not walked
    single, _ = discover_inputs(tmp_path / "coca" / "patient" / "101" / "series 1")
    assert [s.scan_id for s in single] == ["series_1"]
    from_manifest, m = discover_inputs(tiny_manifest, split="test")
    assert m is not None and [s.scan_id for s in from_manifest] == [s.scan_id for s in manifest.split("test")]
    with pytest.raises(InputError, match="not found"):
        discover_inputs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no scans found"):
        discover_inputs(tmp_path / "empty")


def test_monai_bundle_cli_runs_inference(tiny_manifest, ckpt_dir, manifest_run, tmp_path):
    """inference.json's own network and preprocessing, set to the tiny checkpoint's, give the slice probabilities
    of the Python path (`load_model` building both from thresholds.json)."""
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundle/configs/inference.json",
           "--bundle_root", "bundle", "--input", str(tiny_manifest), "--output_dir", str(out),
           "--ckpt_dir", str(ckpt_dir), "--split", "test", "--progress", "False", "--rule", "slice-cam",
           "--network_name", "tiny_cnn", "--image_size", "[32,32]"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = load_manifest(tiny_manifest)
    test_scans = manifest.split("test")
    _check_outputs(out, [s.scan_id for s in test_scans], {s.scan_id: s.image for s in test_scans})
    assert (out / "agreement.json").is_file()
    for scan in test_scans:
        result = json.loads((out / scan.scan_id / "result.json").read_text())
        assert result["model"]["decision"] == "slice and CAM thresholds"  # --rule reached the model
        python_path = json.loads((manifest_run.output_dir / scan.scan_id / "result.json").read_text())
        assert result["slice_probabilities"] == python_path["slice_probabilities"]


def test_inference_config_built_for_another_checkpoint_is_refused(ckpt_dir):
    """inference.json's defaults (Inception v3 at 160 x 160) against the tiny checkpoint: each mismatch is named,
    with the settings that fix it."""
    from monai.bundle import ConfigParser

    from coronary_calcium.inference import load_model

    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "inference.json"))
    built_with = parser.get_parsed_content("evaluator#built_with")
    expected = (r"network_name inception_v3_scratch \(the checkpoint's: tiny_cnn\); image_size \[160,160\] \(the "
                r"checkpoint's: \[32,32\]\).*--network_name tiny_cnn --image_size \[32,32\]")
    with pytest.raises(InputError, match=expected):
        load_model(ckpt_dir, built_with=built_with, device="cpu")
    with pytest.raises(InputError, match="unknown keys"):
        load_model(ckpt_dir, built_with={"cam_layer": "layer2"}, device="cpu")
    load_model(ckpt_dir, built_with={**built_with, "network_name": "tiny_cnn", "image_size": [32, 32]},
               device="cpu").close()


def test_agreement_read_back_from_the_output_folder(manifest_run, tiny_manifest):
    from coronary_calcium.inference import evaluate_agreement

    again = evaluate_agreement(manifest_run.output_dir, tiny_manifest)
    assert again["scores"] == manifest_run.agreement["scores"]
    assert again["lesions"] == manifest_run.agreement["lesions"]
    assert again["non_coronary_counted_as_coronary"] == manifest_run.agreement["non_coronary_counted_as_coronary"]
