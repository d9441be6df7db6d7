"""MONAI Model Zoo readiness, offline on the CPU: the zoo's checks (metadata schema, bundle properties, the training
network's input/output, JSON format, file sizes, Python style) and a packed bundle that trains after unpacking
elsewhere. The zoo's checks of inference.json, run as its CI runs them, are in tests/test_zoo_cli.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from coronary_calcium.report.tensorboard import read_scalars
from coronary_calcium.train.bundle import BUNDLE_ROOT
from coronary_calcium.zoo import REQUIRED_FILES, bundle_files, check_bundle, missing_properties, pack_bundle

REPO = BUNDLE_ROOT.parent
CONFIGS = BUNDLE_ROOT / "configs"
META = CONFIGS / "metadata.json"
SHARED = Path(os.environ.get("CORONARY_CALCIUM_SHARED", REPO.parent / "shared"))
SCHEMA_SOURCE = SHARED / "reference" / "monai_meta_schema.json"  # the zoo's meta_schema_20240725.json


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> Path:
    """The zoo's metadata schema (20240725), copied where verify_metadata finds it, so nothing is downloaded."""
    if not SCHEMA_SOURCE.is_file():
        pytest.fail(f"{SCHEMA_SOURCE}: the zoo's metadata schema is missing (set CORONARY_CALCIUM_SHARED)")
    path = tmp_path_factory.mktemp("schema") / "meta_schema_20240725.json"
    shutil.copyfile(SCHEMA_SOURCE, path)
    return path


def _env(**extra: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def test_verify_metadata_cli(schema, tmp_path):
    cmd = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(META), "--filepath", str(schema)]
    r = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "metadata is verified with no error" in r.stdout + r.stderr


def test_bundle_properties(tiny_manifest, tmp_path, tiny_bundle):
    """MONAI's property check resolves every required id (trainer, evaluator, ...): on tiny data, tiny network."""
    from monai.bundle import ConfigWorkflow

    def props(workflow_type: str, config: str, **override) -> list | None:
        wf = ConfigWorkflow(
            workflow_type=workflow_type,
            config_file=str(CONFIGS / config),
            meta_file=str(META),
            logging_file=str(CONFIGS / "logging.conf"),
            bundle_root=str(BUNDLE_ROOT),
            **override,
        )
        missing = missing_properties([CONFIGS / config], workflow_type)
        assert missing == [], f"{config} lacks required {workflow_type} properties: {missing}"
        wf.initialize()
        try:
            return wf.check_properties()
        finally:
            wf.finalize()

    train = {
        "manifest": str(tiny_manifest),
        "output_dir": str(tmp_path / "train"),
        "slice_cache_dir": str(tmp_path / "cache"),
        **tiny_bundle,
    }
    assert props("train", "train.json", **train) == []
    assert missing_properties([CONFIGS / "inference.json"], "infer") == []  # resolved by tests/test_zoo_cli.py


def test_verify_net_in_out_of_the_training_config():
    """The metadata's 2 x 160 x 160 input gives 2 outputs with train.json's default network (Inception v3); the zoo
    checks inference.json's the same way (tests/test_zoo_cli.py)."""
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(META), config_file=str(CONFIGS / "train.json"),
                      device="cpu", bundle_root=str(BUNDLE_ROOT))


def test_check_bundle_passes_on_the_bundle(schema):
    assert check_bundle(BUNDLE_ROOT, schema) == []


def test_check_bundle_finds_each_problem(schema, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE_ROOT, root, ignore=shutil.ignore_patterns("runs"))
    (root / "docs" / "README.md").unlink(missing_ok=True)
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    del meta["required_packages_version"]
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4))
    (root / "configs" / "evaluate.json").write_text(json.dumps({"a": [1, 2]}, indent=2))
    train = json.loads((root / "configs" / "train.json").read_text())
    del train["device"]
    (root / "configs" / "train.json").write_text(json.dumps(train, indent=4))
    with open(root / "configs" / "big.bin", "wb") as f:
        f.truncate(26 * 1000 * 1000)  # sparse: no disk used
    (root / "scripts").mkdir()
    (root / "scripts" / "bad.py").write_text("import sys,os\nx=1\n")
    (root / "models").mkdir()
    with open(root / "models" / "model.pt", "wb") as f:  # listed in large_files.yml: downloaded, not shipped
        f.truncate(30 * 1000 * 1000)
    (root / "runs" / "x").mkdir(parents=True)  # outputs: never part of the bundle
    with open(root / "runs" / "x" / "last.pt", "wb") as f:
        f.truncate(30 * 1000 * 1000)
    problems = check_bundle(root, schema)
    text = "\n".join(problems)
    assert "docs/README.md: required file missing" in text
    assert "required_packages_version" in text
    assert "configs/evaluate.json: not formatted as json.dumps(indent=4)" in text
    assert "configs/big.bin: 26.0 MB, over the 25 MB limit" in text
    assert "train.json: lacks required train properties: device (id 'device')" in text
    assert "model.pt" not in text and "runs/" not in text
    for tool in ("black", "isort", "flake8"):
        assert any(p.startswith(f"{tool}:") for p in problems), tool
    assert Path("models/model.pt") not in bundle_files(root)


def test_packed_bundle_trains_after_unpacking_elsewhere(tiny_manifest, tmp_path, tiny_bundle_args):
    zip_path = pack_bundle(BUNDLE_ROOT, tmp_path / "bundle.zip")
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "unpacked")
    top = {n.split("/")[0] for n in names}
    assert len(top) == 1
    bundle = tmp_path / "unpacked" / top.pop()
    for rel in REQUIRED_FILES:
        if (BUNDLE_ROOT / rel).is_file():
            assert (bundle / rel).is_file(), rel
    assert (bundle / "scripts" / "coronary_calcium" / "networks.py").is_file()
    assert not any("/runs/" in n or "__pycache__" in n or n.endswith(".pyc") for n in names)
    scripts = bundle / "scripts"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _env(PYTHONPATH=str(scripts))
    # the packed copy is the one imported (not the repository's), with PYTHONPATH ...
    probe = [sys.executable, "-c", "import coronary_calcium; print(coronary_calcium.__file__)"]
    r = subprocess.run(probe, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert Path(r.stdout.strip()).resolve().is_relative_to(scripts.resolve()), r.stdout + r.stderr
    # ... and, run from the bundle folder, through scripts/__init__.py ("$import scripts" first in a config's imports)
    probe = [sys.executable, "-c", "import scripts, coronary_calcium; print(coronary_calcium.__file__)"]
    r = subprocess.run(probe, cwd=bundle, env=_env(), capture_output=True, text=True, timeout=60)
    assert Path(r.stdout.strip()).resolve().is_relative_to(scripts.resolve()), r.stdout + r.stderr

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(bundle / "configs" / "train.json"),
        "--bundle_root",
        str(bundle),
        "--manifest",
        str(tiny_manifest),
        "--output_dir",
        str(out),
        "--slice_cache_dir",
        str(tmp_path / "cache"),
        "--max_epochs",
        "1",
    ]
    cmd += tiny_bundle_args
    r = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "models" / "model.pt").is_file()
    assert [s for s, _ in read_scalars(out / "tensorboard")["val_accuracy"]] == [1]
