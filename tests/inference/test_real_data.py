"""Real data: the QRM phantom series through the pipeline and its inserts' Agatston; COCA-layout parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from coronary_calcium.inference import qrm_insert_scores, run_inference
from coronary_calcium.io.coca import coca_xml_agatston, read_coca_xml, write_coca_xml
from coronary_calcium.io.dicom import read_dicom_series, write_dicom_series
from coronary_calcium.io.images import read_image
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.labels import LAD, LCX, LM, RCA
from coronary_calcium.scoring.agatston import score_scan


@pytest.fixture(scope="module")
def qrm_volume(qrm_series_dir):
    return read_dicom_series(qrm_series_dir)


def test_qrm_series_through_the_pipeline(qrm_series_dir, qrm_volume, ckpt_dir, tmp_path):
    run = run_inference(qrm_series_dir, tmp_path, ckpt_dir=ckpt_dir, progress=False)
    assert run.n_ok == 1
    sid = run.rows[0]["scan_id"]
    result = json.loads((tmp_path / sid / "result.json").read_text())
    assert result["geometry"]["shape_zyx"] == [47, 512, 512]
    assert result["geometry"]["spacing_mm"] == pytest.approx([3.0, 0.488, 0.488])
    assert result["scan"]["kvp"] == 120.0 and result["scan"]["modality"] == "CT"
    mask = read_image(tmp_path / sid / "lesions.nii.gz")
    assert mask.shape == qrm_volume.shape
    assert np.allclose(mask.spacing, qrm_volume.spacing, rtol=1e-5)
    assert np.allclose(mask.origin, qrm_volume.origin, atol=1e-3)
    assert np.allclose(mask.direction, qrm_volume.direction, atol=1e-6)
    ids = np.rint(mask.hu).astype(int)
    index = [les["id"] for les in result["lesions"]]
    assert sorted(set(np.unique(ids)) - {0}) == index
    z = np.broadcast_to(np.arange(ids.shape[0])[:, None, None], ids.shape)
    assert np.bincount(ids.ravel())[index].tolist() == [les["n_voxels"] for les in result["lesions"]]
    assert ndimage.maximum(qrm_volume.hu, ids, index).tolist() == [les["peak_hu"] for les in result["lesions"]]
    assert ndimage.minimum(z, ids, index).tolist() == ndimage.maximum(z, ids, index).tolist() == \
        [les["slice"] for les in result["lesions"]]
    assert sum(les["agatston"] for les in result["lesions"]) == pytest.approx(result["totals"]["agatston"])
    assert result["n_candidates"] > 1000  # bone of the thorax phantom: the model must decide
    assert (tmp_path / "report.html").is_file()


def test_qrm_insert_scores(qrm_volume):
    found = qrm_insert_scores(qrm_volume)
    region = found["region"]
    assert region["centre_row_col"] == pytest.approx([216, 258], abs=3)
    assert 45 <= region["radius_mm"] <= 55
    five = found["largest_inserts"]  # the 5 mm cylinders, densest first
    assert [g["slices"] for g in five] == [[21, 22, 23]] * 3
    assert [g["peak_hu"] for g in five] == sorted((g["peak_hu"] for g in five), reverse=True)
    # measured on this scan (800 / 400 / 200 mg HA/cm^3 at 120 kVp, 3 mm slices): about 403 / 238 / 139
    assert [g["agatston"] for g in five] == pytest.approx([402.9, 238.4, 138.6], rel=0.01)
    assert all(60 <= g["volume_mm3"] <= 320 for g in five)  # nominal 98 mm^3, blurred and partial-volumed
    rods = [g for g in found["groups"] if g["kind"] == "rod"]
    assert len(rods) == 1 and rods[0]["equivalent_diameter_mm"] > 12
    assert found["total_agatston"] == pytest.approx(sum(g["agatston"] for g in found["groups"]))


def _coca_case() -> tuple[CTVolume, np.ndarray]:
    rng = np.random.default_rng(5)
    shape = (12, 64, 64)
    hu = rng.normal(30, 10, size=shape).astype(np.float32)
    hu[:, :, :4] = -1000
    labels = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[:64, :64]
    lesions = [(2, 20, 20, 3.5, 180.0, LM), (3, 40, 30, 5.0, 260.0, LAD), (4, 40, 31, 4.2, 350.0, LAD),
               (6, 15, 45, 2.5, 520.0, LCX), (9, 50, 50, 6.0, 900.0, RCA), (9, 20, 50, 3.0, 140.0, RCA)]
    for k, r, c, radius, value, label in lesions:
        disc = (yy - r) ** 2 + (xx - c) ** 2 <= radius**2
        hu[k][disc] = value
        labels[k][disc] = label
    return CTVolume(hu=np.rint(hu), spacing=(3.0, 0.47, 0.47), origin=(-15.0, -15.0, 100.0)), labels


def test_coca_layout_parity(tmp_path):
    volume, labels = _coca_case()
    series = tmp_path / "patient" / "1" / "Pro_Gated_CS_3.0_I30f_3_70%"
    write_dicom_series(volume, series, patient_id="1", instance_order="descending")
    write_coca_xml(labels, volume, tmp_path / "calcium_xml" / "1.xml")
    read = read_dicom_series(series)
    assert np.array_equal(read.hu, volume.hu)
    raster = read_coca_xml(tmp_path / "calcium_xml" / "1.xml", like=read)
    assert np.array_equal(raster, labels)
    from_mask = score_scan(read.hu, read.spacing, labels=raster)
    from_xml = coca_xml_agatston(tmp_path / "calcium_xml" / "1.xml", slice_increment_mm=read.spacing[0])
    assert from_mask.agatston > 0
    assert from_xml["total"] == pytest.approx(from_mask.agatston, rel=0.01)
    for artery in ("LM", "LAD", "LCX", "RCA"):
        assert from_xml[artery] == pytest.approx(from_mask.per_artery[artery]["agatston"], rel=0.01)


def test_coca_layout_through_run_inference(tmp_path, ckpt_dir):
    volume, labels = _coca_case()
    series = tmp_path / "patient" / "1" / "series"
    write_dicom_series(volume, series, patient_id="1", instance_order="descending")
    write_coca_xml(labels, volume, tmp_path / "calcium_xml" / "1.xml")
    write_dicom_series(volume, tmp_path / "patient" / "2" / "series", patient_id="2", instance_order="descending")
    write_coca_xml(labels, volume, tmp_path / "calcium_xml" / "2.xml")
    manifest = tmp_path / "coca.json"
    manifest.write_text(json.dumps({"version": 1, "data_root": ".", "scans": [
        {"patient_id": p, "image": f"patient/{p}/series", "split": "test",
         "reference": {"coca_xml": f"calcium_xml/{p}.xml"}} for p in ("1", "2")]}))
    run = run_inference(manifest, tmp_path / "out", ckpt_dir=ckpt_dir, progress=False, overlays=False)
    assert run.n_ok == 2
    agreement = json.loads((tmp_path / "out" / "agreement.json").read_text())
    expected = coca_xml_agatston(tmp_path / "calcium_xml" / "1.xml")["total"]
    assert [s["reference_source"] for s in agreement["scans"]] == ["coca_xml", "coca_xml"]
    assert agreement["scans"][0]["reference_agatston"] == pytest.approx(expected, rel=0.01)
    assert agreement["lesions"]["n_ref"] == 2 * 6
    assert agreement["non_coronary_counted_as_coronary"]["n_scans_with_aortic_valve_labels"] == 0
    result = json.loads((tmp_path / "out" / "1" / "result.json").read_text())
    assert {les["artery"] for les in result["lesions"]} <= {"LM", "LAD", "LCX", "RCA", "unknown"}
