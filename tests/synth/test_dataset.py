"""Writing a synthetic data set: files read back through the project's readers, manifest, safety, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coronary_calcium.errors import InputError
from coronary_calcium.io.coca import read_coca_xml
from coronary_calcium.io.dicom import read_dicom_series
from coronary_calcium.io.images import read_image, read_labels
from coronary_calcium.synth import dataset as ds
from coronary_calcium.synth.config import CATEGORY_LABELS, SynthConfig
from coronary_calcium.synth.dataset import assign_splits, generate_dataset
from coronary_calcium.synth.montage import write_montage
from coronary_calcium.synth.phantom import generate_patient

SMALL = SynthConfig(matrix=256, n_slices=(16, 16), n_patients=3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _no_temp_siblings(out: Path) -> bool:
    return not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sets") / "small"
    manifest = generate_dataset(out, SMALL, workers=2, progress=False)
    assert manifest == out.absolute() / "data_manifest.json"
    return out


def test_manifest_format(small_set):
    m = json.loads((small_set / "data_manifest.json").read_text())
    assert set(m) == {"version", "name", "description", "data_root", "generator", "scans"}
    assert m["version"] == 1 and m["data_root"] == "." and m["name"] == SMALL.name
    assert m["generator"] == {"name": "coronary_calcium.synth", "config": SMALL.to_dict()}
    assert SynthConfig.from_dict(m["generator"]["config"]) == SMALL
    assert [s["patient_id"] for s in m["scans"]] == ["SYN0000", "SYN0001", "SYN0002"]
    for s in m["scans"]:
        pid = s["patient_id"]
        assert s == {
            "patient_id": pid, "scan_id": pid, "image": f"{pid}/dicom",
            "reference": {"labels": f"{pid}/labels.nii.gz", "scheme": "project", "coca_xml": f"{pid}/calcium.xml"},
            "truth": f"{pid}/truth.json", "split": s["split"],
        }
        assert s["split"] in ("train", "validation", "test")
        for rel in (s["image"], s["reference"]["labels"], s["reference"]["coca_xml"], s["truth"], f"{pid}/image.nii.gz"):
            assert (small_set / rel).exists(), rel
    assert "positive" in m["description"]


def test_files_read_back(small_set):
    m = json.loads((small_set / "data_manifest.json").read_text())
    for i, s in enumerate(m["scans"]):
        p = generate_patient(SMALL, i)
        dicom = read_dicom_series(small_set / s["image"])
        assert np.array_equal(dicom.hu, p.volume.hu)
        assert np.allclose(dicom.spacing, p.volume.spacing) and np.allclose(dicom.origin, p.volume.origin)
        assert dicom.meta.get("patient_id") in (None, s["patient_id"])
        nifti = read_image(small_set / s["patient_id"] / "image.nii.gz")
        assert np.array_equal(nifti.hu, p.volume.hu)
        labels = read_labels(small_set / s["reference"]["labels"], dicom, scheme="project")
        assert np.array_equal(labels, p.labels)
        xml = read_coca_xml(small_set / s["reference"]["coca_xml"], dicom)
        assert np.array_equal(xml, np.where(p.labels <= 4, p.labels, 0))  # coronary labels only
        truth = json.loads((small_set / s["truth"]).read_text())
        assert truth == json.loads(json.dumps(p.truth))
        assert truth["generation"]["kvp"] == 120.0 and truth["patient_id"] == s["patient_id"]


def test_deterministic_bytes(small_set, tmp_path):
    again = generate_dataset(tmp_path / "again", SMALL, workers=1, progress=False).parent
    assert _files(again) == _files(small_set)
    other = generate_dataset(tmp_path / "other", SMALL.replace(seed=5, n_patients=1), workers=1, progress=False).parent
    assert (other / "SYN0000/image.nii.gz").read_bytes() != (small_set / "SYN0000/image.nii.gz").read_bytes()


def test_existing_folder_kept_unless_overwrite(tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cfg = SMALL.replace(n_patients=1, matrix=64)
    with pytest.raises(InputError, match="not empty"):
        generate_dataset(out, cfg, progress=False)
    assert (out / "keep.txt").read_text() == "mine" and _no_temp_siblings(out)
    generate_dataset(out, cfg, overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "data_manifest.json").is_file()
    assert _no_temp_siblings(out)
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_dataset(empty, cfg, workers=1, progress=False)  # an empty folder may be filled
    assert (empty / "SYN0000" / "truth.json").is_file()


def test_failure_leaves_no_partial_output(tmp_path, monkeypatch):
    real = ds.write_patient

    def flaky(patient, folder, config):
        if patient.patient_id == "SYN0001":
            raise RuntimeError("disk full")
        return real(patient, folder, config)

    monkeypatch.setattr(ds, "write_patient", flaky)
    cfg = SMALL.replace(n_patients=2, matrix=64)
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        generate_dataset(out, cfg, workers=1, progress=False)
    assert not out.exists() and _no_temp_siblings(out)
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        generate_dataset(old, cfg, overwrite=True, workers=1, progress=False)
    assert _files(old) == {"keep.txt": b"mine"} and _no_temp_siblings(old)


@pytest.mark.parametrize(
    "changes, item",
    [
        ({"n_patients": -1}, "n_patients"),
        ({"n_patients": 0}, "n_patients"),
        ({"max_plaques": -3}, "max_plaques"),
        ({"n_slices": (0, 10)}, "n_slices"),
        ({"n_slices": (10, 1001)}, "n_slices"),
        ({"n_slices": (50, 40)}, "n_slices"),
        ({"gated_fov_mm": (0.0, 250.0)}, "gated_fov_mm"),
        ({"full_fov_mm": (400.0, 300.0)}, "full_fov_mm"),
        ({"slice_increments_mm": (0.0,)}, "slice_increments_mm"),
        ({"slice_increments_mm": ()}, "slice_increments_mm"),
        ({"noise_sd_hu": (30.0, 10.0)}, "noise_sd_hu"),
        ({"psf_fwhm_mm": (0.0, 1.0)}, "psf_fwhm_mm"),
        ({"matrix": 0}, "matrix"),
        ({"category_weights": (1.0, 1.0, 1.0, 1.0)}, "category_weights"),
        ({"category_weights": (0.0, 0.0, 0.0, 0.0, 0.0)}, "category_weights"),
        ({"split_fractions": (0.5, 0.5, 0.5)}, "split_fractions"),
        ({"gated_fraction": 1.5}, "gated_fraction"),
        # Burdens that cannot be met.
        ({"max_plaques": 0}, "max_plaques"),
        ({"max_plaques": 1, "plaque_diameter_mm": (1.0, 2.0)}, "max_plaques"),
        ({"max_score": 450.0}, "max_score"),
        ({"plaque_diameter_mm": (0.5, 1.0)}, "plaque_diameter_mm"),
        ({"plaque_density_hu": (50.0, 150.0)}, "plaque_density_hu"),
    ],
)
def test_bad_parameters(changes, item, tmp_path):
    with pytest.raises(InputError) as err:
        SynthConfig(**changes)
    assert err.value.item == item
    # Through the data set entry point (a dict), nothing is written.
    out = tmp_path / "never"
    with pytest.raises(InputError):
        generate_dataset(out, {**SMALL.to_dict(), **{k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()}},
                         progress=False)
    assert not out.exists() and _no_temp_siblings(out)


def test_config_dict_round_trip():
    c = SynthConfig()
    d = json.loads(json.dumps(c.to_dict()))
    assert SynthConfig.from_dict(d) == c
    with pytest.raises(InputError, match="unknown keys"):
        SynthConfig.from_dict({**d, "noise": 3})
    # Zero weight on the burden categories makes max_plaques = 0 valid.
    assert SynthConfig(category_weights=(1.0, 0.0, 0.0, 0.0, 0.0), max_plaques=0).max_plaques == 0
    with pytest.raises(InputError):
        generate_dataset("/nonexistent-never", SMALL, workers=0, progress=False)


def test_splits_stratified():
    cats = [CATEGORY_LABELS[i % 5] for i in range(60)]
    splits = assign_splits(cats, (0.65, 0.15, 0.2), seed=0)
    assert splits == assign_splits(cats, (0.65, 0.15, 0.2), seed=0)
    assert [splits.count(s) for s in ("train", "validation", "test")] == [39, 9, 12]
    for c in CATEGORY_LABELS:
        sub = [s for s, x in zip(splits, cats) if x == c]
        assert set(sub) == {"train", "validation", "test"}
        assert 7 <= sub.count("train") <= 9


def test_montage_writes_png(small_set, tmp_path):
    out = write_montage(small_set, tmp_path / "m.png", n_slices=4, seed=1)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    again = write_montage(small_set / "data_manifest.json", tmp_path / "m2.png", n_slices=4, seed=1)
    assert again.is_file()
    with pytest.raises(InputError):
        write_montage(tmp_path, tmp_path / "x.png")
