"""Shared fixtures: the real CT files in ../shared/data, unpacked once per session."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
