"""Shared fixtures: the real CT files in ../shared/data (unpacked once per session) and a tiny labelled data set
(NIfTI volumes with calcium specks and brighter bone) for fast end-to-end tests."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from coronary_calcium.io.images import write_nifti
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.labels import AORTIC, LAD

REPO = Path(__file__).resolve().parents[1]
TINY_BUNDLE = {"network_name": "tiny_cnn", "image_size": [32, 32], "batch_size": 8, "precision": "fp32",
               "channels_last": False}


@pytest.fixture(scope="session")
def tiny_bundle() -> dict:
    """Bundle overrides for runs of seconds: the tiny CNN on 32 x 32 slices, fp32 (the same on every CPU)."""
    return dict(TINY_BUNDLE)


@pytest.fixture(scope="session")
def tiny_bundle_args(tiny_bundle) -> list[str]:
    """The same overrides as ``python -m monai.bundle run`` arguments."""
    args: list[str] = []
    for k, v in tiny_bundle.items():
        args += [f"--{k}", json.dumps(v) if isinstance(v, list) else str(v)]
    return args


def _shared_data() -> Path:
    root = Path(os.environ.get("CORONARY_CALCIUM_SHARED", REPO.parent / "shared")) / "data"
    if not root.is_dir():
        pytest.fail(f"{root}: the real test data is missing (set CORONARY_CALCIUM_SHARED to the shared/ folder)")
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder holding the real CT test files (see shared/data/README.md)."""
    return _shared_data()


@pytest.fixture(scope="session")
def qrm_series_dir(tmp_path_factory) -> Path:
    """The real QRM phantom calcium-score series (47 DICOM files), unpacked into a temporary folder."""
    out = tmp_path_factory.mktemp("qrm")
    with tarfile.open(_shared_data() / "qrm_cci_canon" / "qrm_cci_canon_large_rep1.tar.xz") as tar:
        tar.extractall(out, filter="data")
    dirs = {p.parent for p in out.rglob("*") if p.is_file()}
    assert len(dirs) == 1, f"expected one folder of DICOM files in the QRM archive, found {sorted(dirs)}"
    return dirs.pop()


def _edit_dicom(paths, edit=None, **tags) -> None:
    """Rewrite DICOM files in place: ``edit(ds, i)`` on the ``i``-th of ``paths`` (one path or several), then each
    of ``tags`` set (None deletes the tag)."""
    for i, path in enumerate([paths] if isinstance(paths, (str, os.PathLike)) else paths):
        ds = pydicom.dcmread(path)
        if edit is not None:
            edit(ds, i)
        for name, value in tags.items():
            if value is None:
                delattr(ds, name)
            else:
                setattr(ds, name, value)
        ds.save_as(path)


@pytest.fixture(scope="session")
def edit_dicom():
    """edit_dicom(paths, edit=None, **tags): rewrite tiny DICOM series written by a test with some tags changed."""
    return _edit_dicom


SPLITS = {"train": 4, "validation": 2, "test": 2}


def _tiny_patient(rng: np.random.Generator, n_slices: int = 10, size: int = 48):
    hu = rng.normal(40, 12, size=(n_slices, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    body = (yy - size / 2) ** 2 / (0.45 * size) ** 2 + (xx - size / 2) ** 2 / (0.48 * size) ** 2 <= 1
    hu[:, ~body] = -1000
    hu[:, size - 8 : size - 4, size // 2 - 3 : size // 2 + 3] = 900  # "spine": bright, never labelled
    labels = np.zeros(hu.shape, np.uint8)
    for k in range(n_slices):
        if rng.random() < 0.4:  # a coronary speck of 2 x 2 .. 3 x 3 px (1 mm pixels)
            r = int(rng.integers(10, size - 14))
            c = int(rng.integers(10, size - 14))
            s = int(rng.integers(2, 4))
            hu[k, r - 2 : r + s + 2, c - 2 : c + s + 2] = -100.0  # in epicardial fat, as coronary calcium lies
            hu[k, r : r + s, c : c + s] = rng.uniform(250, 700)
            labels[k, r : r + s, c : c + s] = LAD
        if rng.random() < 0.2:  # aortic calcium: labelled but not coronary, so the slice stays negative; deep enough
            hu[k, 17:20, 17:20] = 500  # in the body for the anatomy rule to leave it to the lesion classifier
            labels[k, 17:20, 17:20] = AORTIC
    return CTVolume(hu=np.rint(hu), spacing=(3.0, 1.0, 1.0)), labels


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory) -> Path:
    """A manifest of 8 tiny patients (4 train, 2 validation, 2 test) as NIfTI image + label volumes."""
    root = tmp_path_factory.mktemp("tiny_set")
    rng = np.random.default_rng(0)
    scans = []
    i = 0
    for split, n in SPLITS.items():
        for _ in range(n):
            pid = f"T{i:02d}"
            volume, labels = _tiny_patient(rng)
            write_nifti(volume.hu.astype(np.int16), volume, root / pid / "image.nii.gz")
            write_nifti(labels, volume, root / pid / "labels.nii.gz")
            scans.append({"patient_id": pid, "image": f"{pid}/image.nii.gz", "split": split,
                          "reference": {"labels": f"{pid}/labels.nii.gz"}})
            i += 1
    path = root / "data_manifest.json"
    path.write_text(json.dumps({"version": 1, "name": "tiny", "data_root": ".", "scans": scans}, indent=1))
    return path
