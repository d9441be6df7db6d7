"""A tiny classifier trained on the tiny data set (2 epochs) and calibrated: the model every inference test uses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from coronary_calcium.inference import calibrate, load_model
from coronary_calcium.train.bundle import run_bundle


@pytest.fixture(scope="session")
def trained_run(tiny_manifest, tmp_path_factory, tiny_bundle) -> Path:
    """Output folder of a tiny_cnn training run whose models/ holds model.pt and thresholds.json."""
    out = tmp_path_factory.mktemp("inference_run") / "tiny"
    run_bundle(["train"], {"manifest": str(tiny_manifest), "output_dir": str(out),
                           "slice_cache_dir": str(out.parent / "cache"), "max_epochs": 2, **tiny_bundle})
    calibrate(tiny_manifest, out, "tiny_cnn", image_size=tiny_bundle["image_size"], progress=False)
    return out


@pytest.fixture(scope="session")
def ckpt_dir(trained_run) -> Path:
    return trained_run / "models"


@pytest.fixture
def ckpt_copy(ckpt_dir, tmp_path) -> Path:
    """A private copy of the checkpoint folder (model.pt + thresholds.json) that a test may damage."""
    dst = tmp_path / "models"
    dst.mkdir()
    for name in ("model.pt", "thresholds.json"):
        shutil.copy2(ckpt_dir / name, dst / name)
    return dst


@pytest.fixture(scope="session")
def tiny_model(ckpt_dir):
    model = load_model(ckpt_dir, device="cpu")
    yield model
    model.close()
