"""Fixtures of the hostile-input suite: a tiny trained and calibrated model, and a folder made read-only."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from coronary_calcium.inference import calibrate
from coronary_calcium.train.bundle import run_bundle


@pytest.fixture(scope="session")
def hostile_run(tiny_manifest, tmp_path_factory, tiny_bundle) -> Path:
    """A tiny_cnn training run (1 epoch) whose models/ holds model.pt and thresholds.json (slice-and-CAM rule)."""
    out = tmp_path_factory.mktemp("hostile_run") / "tiny"
    run_bundle(["train"], {"manifest": str(tiny_manifest), "output_dir": str(out),
                           "slice_cache_dir": str(out.parent / "cache"), "max_epochs": 1, **tiny_bundle})
    calibrate(tiny_manifest, out, "tiny_cnn", image_size=tiny_bundle["image_size"], lesion_classifier=False,
              progress=False)
    return out


@pytest.fixture(scope="session")
def hostile_ckpt(hostile_run) -> Path:
    return hostile_run / "models"


def _immutable(path: Path, on: bool) -> bool:
    chattr = shutil.which("chattr")
    if chattr is None:
        return False
    return subprocess.run([chattr, "+i" if on else "-i", str(path)], capture_output=True).returncode == 0


@pytest.fixture
def make_read_only():
    """make_read_only(folder): no file can be created in ``folder`` (chmod for a user, chattr +i for root), undone
    at teardown. Skips where the system offers neither (root without CAP_LINUX_IMMUTABLE)."""
    done: list[tuple[Path, str]] = []

    def make(folder: Path) -> Path:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            done.append((folder, "chmod"))
        elif _immutable(folder, True):
            done.append((folder, "chattr"))
        else:
            pytest.skip("cannot make a folder read-only for root here (chattr +i refused)")
        return folder

    yield make
    for folder, how in done:
        if how == "chmod":
            folder.chmod(0o755)
        else:
            _immutable(folder, False)
