"""The Model Zoo's checks of inference.json, run from the command line as its CI runs them (ci/verify_bundle.py:
`verify_net_in_out`, `ckpt_export` and the workflow's `check_properties`, with the zoo's arguments only), on a copy
of the bundle without runs/: a fresh clone, no trained model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coronary_calcium.train.bundle import BUNDLE_ROOT

PROPERTIES = """
import sys
from monai.bundle import create_workflow
root = sys.argv[1]
workflow = create_workflow(workflow_type="inference", bundle_root=root, config_file=f"{root}/configs/inference.json",
                           logging_file=f"{root}/configs/logging.conf", meta_file=f"{root}/configs/metadata.json")
print("missing properties:", workflow.check_properties())
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo") / "bundle"
    shutil.copytree(BUNDLE_ROOT, root, ignore=shutil.ignore_patterns("runs", "__pycache__"))
    return root


def _run(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r.stdout + r.stderr


def _files(bundle: Path) -> list[str]:
    return ["--meta_file", str(bundle / "configs" / "metadata.json"),
            "--config_file", str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle)]


def test_verify_net_in_out(bundle, tmp_path):
    out = _run(["-m", "monai.bundle", "verify_net_in_out", "network_def", *_files(bundle)], tmp_path)
    assert "data shape of network is verified with no error" in out


def test_ckpt_export_of_fake_weights(bundle, tmp_path):
    """The zoo's TorchScript check on weights it makes up from network_def (a fresh clone has none): the export
    loads them and gives the eager network's logits."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()
    models = bundle / "models"
    models.mkdir(exist_ok=True)
    torch.save(net.state_dict(), models / "model.pt")
    ts = models / "verify_model.ts"
    args = ["-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
            "--ckpt_file", str(models / "model.pt"), *_files(bundle)]
    _run(args, tmp_path)
    extra = {"metadata.json": "", "inference.json": ""}
    loaded = torch.jit.load(str(ts), map_location="cpu", _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
    assert meta["version"] == json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    assert json.loads(extra["inference.json"])["network_def"]["_target_"].endswith("create_network")
    x = torch.rand(1, meta["network_data_format"]["inputs"]["image"]["num_channels"],
                   *meta["network_data_format"]["inputs"]["image"]["spatial_shape"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))


def test_check_properties(bundle, tmp_path):
    out = _run(["-c", PROPERTIES, str(bundle)], tmp_path)
    assert "missing properties: []" in out
