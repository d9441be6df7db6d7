"""The shifted synthetic family: determinism, HU and labels, ground truth, files and manifest, categories, geometry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from coronary_calcium.errors import InputError
from coronary_calcium.io.dicom import read_dicom_series
from coronary_calcium.io.images import read_image, read_labels
from coronary_calcium.io.manifest import validate_manifest
from coronary_calcium.io.scans import check_scan_readable
from coronary_calcium.labels import AORTIC, CORONARY_LABELS, VALVE
from coronary_calcium.scoring.agatston import score_scan
from coronary_calcium.synth.shifted import (
    CATEGORY_LABELS,
    ShiftedConfig,
    generate_shifted_case,
    generate_shifted_dataset,
    generate_shifted_patient,
    target_category,
)

SMALL = ShiftedConfig(matrix=128, max_slices=14)
S2D = np.zeros((3, 3, 3), dtype=bool)
S2D[1] = True


@pytest.fixture(scope="module")
def cases():
    return [generate_shifted_case(SMALL, i) for i in range(6)]


def test_config_round_trip_and_validation():
    c = ShiftedConfig(matrix=256, noise_sd_hu=(10.0, 20.0))
    assert ShiftedConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(InputError, match="unknown keys"):
        ShiftedConfig.from_dict({"bogus": 1})
    for bad in ({"matrix": 10}, {"gated_fraction": 2.0}, {"kernels": ("ultra",)}, {"category_deck": (7,)},
                {"split_fractions": (0.5, 0.5, 0.5)}, {"kvp": 100.0}, {"max_slices": 0}):
        with pytest.raises(InputError):
            ShiftedConfig(**bad)


def test_deterministic_for_a_seed():
    a = generate_shifted_patient(SMALL, 3, seed=5)
    b = generate_shifted_patient(SMALL, 3, seed=5)
    c = generate_shifted_patient(SMALL, 3, seed=6)
    assert np.array_equal(a[0].hu, b[0].hu) and np.array_equal(a[1], b[1])
    assert json.dumps(a[2], sort_keys=True) == json.dumps(b[2], sort_keys=True)
    assert a[0].hu.shape != c[0].hu.shape or not np.array_equal(a[0].hu, c[0].hu)
    assert a[2]["generation"]["seed"] == 5


def test_hu_range_and_labels(cases):
    for case in cases:
        hu, lab = case.volume.hu, case.labels
        assert hu.dtype == np.float32 and np.array_equal(hu, np.rint(hu))
        assert hu.min() >= -1024 and hu.max() <= 3071
        assert lab.dtype == np.uint8 and set(np.unique(lab).tolist()) <= {0, 1, 2, 3, 4, 5, 6}
        assert np.all(hu[lab > 0] >= 130)
        # Plausible tissue: air outside, lung and fat present, bone bright.
        assert np.median(hu[case.tissue == 6]) < -700  # lung
        assert np.percentile(hu[case.bone], 90) > 300  # bright bone (thin shells blur at 128 x 128)


def test_every_scorable_component_in_heart_region_is_labelled_or_bone(cases):
    for case in cases:
        v = case.volume
        comp, n = ndi.label(v.hu >= 130, structure=S2D)
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        area = ndi.sum(np.ones_like(v.hu), comp, idx) * v.pixel_area_mm2
        in_region = ndi.maximum(case.heart_region, comp, idx) > 0
        has_bone = ndi.maximum(case.bone, comp, idx) > 0
        unlabelled = ndi.sum(case.labels == 0, comp, idx)
        bad = (area >= 1.0) & in_region & ~has_bone & (unlabelled > 0)
        assert not bad.any(), f"{case.truth['patient_id']}: unlabelled scorable components {idx[bad][:5]}"


def test_truth_is_the_projects_score_of_the_labels(cases):
    for case in cases:
        v, t = case.volume, case.truth
        s = score_scan(v.hu, v.spacing, labels=case.labels)
        assert t["agatston"] == pytest.approx(s.agatston)
        assert t["risk_category"] == s.categories["5-class"]
        assert t["n_lesions"] == len(s.lesions)
        assert t["positive_slices"] == sorted({z for les in s.lesions for z in les.slices})
        for name, lab in (("aortic", AORTIC), ("valve", VALVE)):
            assert t["non_coronary"][name]["voxels"] == int((case.labels == lab).sum())
        assert t["generation"]["despeckled_voxels"] >= 0 and t["generation"]["label_grown_voxels"] >= 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shifted") / "set"
    return generate_shifted_dataset(out, n_patients=3, seed=1, config=SMALL)


def test_dataset_files_read_back_and_manifest_validates(dataset):
    manifest, problems = validate_manifest(dataset, check_images=check_scan_readable)
    assert problems == [] and len(manifest.scans) == 3
    raw = json.loads(dataset.read_text())
    assert set(raw) == {"version", "name", "description", "data_root", "scans"}
    assert {s.split for s in manifest.scans} <= {"train", "validation", "test"}
    assert len({s.patient_id for s in manifest.scans}) == 3
    for s in manifest.scans:
        dicom = read_dicom_series(s.image)
        nifti = read_image(s.image.parent / "image.nii.gz")
        assert np.array_equal(dicom.hu, nifti.hu)
        assert np.allclose(dicom.spacing, nifti.spacing) and np.allclose(dicom.origin, nifti.origin, atol=1e-3)
        labels = read_labels(s.labels, like=dicom)
        truth = json.loads(s.truth.read_text())
        assert truth["patient_id"] == s.patient_id
        assert truth["agatston"] == pytest.approx(score_scan(dicom.hu, dicom.spacing, labels=labels).agatston)
    with pytest.raises(InputError, match="not empty"):
        generate_shifted_dataset(dataset.parent, n_patients=3, seed=1, config=SMALL)


def test_every_risk_category_over_twelve_patients():
    config = ShiftedConfig(matrix=128)
    truths = [generate_shifted_patient(config, i)[2] for i in range(12)]
    cats = [t["risk_category"] for t in truths]
    assert set(cats) == set(CATEGORY_LABELS), cats
    assert cats.count("0") >= 3  # >= 25 % calcium-free
    assert {t["generation"]["gated"] for t in truths} == {True, False}
    assert any(t["generation"]["ostial_lm"] for t in truths)  # ostial LM calcium touching aortic calcium
    assert any(t["non_coronary"]["aortic"]["voxels"] for t in truths)
    assert any(t["non_coronary"]["valve"]["voxels"] for t in truths)


def test_lesion_morphology_is_heavy_tailed():
    config = ShiftedConfig(matrix=320)
    heavy = next(i for i in range(12) if target_category(config, i) == 4)
    case = generate_shifted_case(config, heavy)
    t, v = case.truth, case.volume
    assert t["generation"]["target_category"] == ">400" and t["agatston"] > 400
    # A large plaque: a 3D coronary component of >= 100 mm^3 over several slices, peaking above 1,000 HU.
    comp, n = ndi.label(np.isin(case.labels, CORONARY_LABELS), structure=np.ones((3, 3, 3), bool))
    big = []
    for i, box in enumerate(ndi.find_objects(comp), start=1):
        m = comp[box] == i
        if m.sum() * v.voxel_volume_mm3 >= 100 and v.hu[box][m].max() > 1000 and box[0].stop - box[0].start >= 2:
            big.append(i)
    assert big
    # ... and small faint specks of 1-5 mm^2.
    assert any(1.0 <= les["total_area_mm2"] <= 5.0 for les in t["lesions"])


def test_gated_and_non_gated_geometry():
    config = ShiftedConfig(matrix=128, max_slices=6)
    seen = set()
    for i in range(10):
        v, _, t = generate_shifted_patient(config, i)
        g = t["generation"]
        fov = v.spacing[1] * 128
        assert v.spacing[1] == v.spacing[2] and g["fov_mm"] == pytest.approx(fov, abs=0.01)
        if g["gated"]:
            assert 180.0 <= fov <= 250.0 and v.spacing[0] in (2.5, 3.0)
            assert 0.35 <= fov / 512 <= 0.49
        else:
            assert 330.0 <= fov <= 450.0 and v.spacing[0] == 5.0
            assert 0.64 <= fov / 512 <= 0.92
        assert v.slice_thickness == v.spacing[0]
        seen.add(g["gated"])
    assert seen == {True, False}
    assert math.isclose(ShiftedConfig().full_increment_mm, 5.0)
    assert not any(lab in CORONARY_LABELS for lab in (AORTIC, VALVE))
