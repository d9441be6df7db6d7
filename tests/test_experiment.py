"""The paper's experiment in one call (`run_experiment`, profile "test"): trained rows with metrics and figures, a
fine-tuned configuration without ImageNet weights reported as not run, a failing configuration reported in its row
while the others still run, and one report in Markdown and self-contained HTML."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch

from coronary_calcium.errors import InputError
from coronary_calcium.experiment import (
    PAPER_RESULTS,
    PROFILES,
    parse_networks,
    parse_weights,
    run_experiment,
)
from coronary_calcium.networks import TinyCNN, paper_network_names, write_stand_in_imagenet_weights

PNG = b"\x89PNG\r\n\x1a\n"
# the failing configuration first: the configurations after it must still run
NETWORKS = ["xception_last4", "inception_v3_last", "inception_v3_scratch", "xception_last"]


@pytest.fixture(scope="module")
def experiment(tiny_manifest, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("experiment")
    # A STAND-IN for the ImageNet file (random weights with the real file's keys and shapes): the real one cannot be
    # downloaded here. It exercises the fine-tuning path (1-channel conv adaptation, frozen backbone), not ImageNet.
    stand_in = write_stand_in_imagenet_weights("xception_last", tmp / "legacy_xception_stand_in.safetensors")
    wrong = tmp / "tiny_cnn_weights.pt"  # an existing weights file of another architecture: does not fit Xception
    torch.save(TinyCNN().state_dict(), wrong)
    return run_experiment(
        tiny_manifest,
        tmp / "out",
        profile="test",
        networks=NETWORKS,
        pretrained_weights={"xception_last": str(stand_in), "xception_last4": str(wrong)},
        overrides={"slice_cache_dir": str(tmp / "cache")},
        progress=False,
    )


def _rows(md: str, network: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith(f"| {network} |")]


def test_report_holds_the_table_and_paper_numbers(experiment):
    out = experiment.parent
    md = experiment.read_text()
    summary = json.loads((out / "experiment.json").read_text())
    assert [r["network"] for r in summary["runs"]] == NETWORKS
    status = {r["network"]: r["status"] for r in summary["runs"]}
    assert status == {"xception_last4": "failed", "inception_v3_last": "not run", "inception_v3_scratch": "ok",
                      "xception_last": "ok"}
    for name in ("inception_v3_scratch", "xception_last"):
        metrics = json.loads((out / name / "eval" / "test_metrics.json").read_text())
        (row,) = _rows(md, name)
        assert f"{metrics['accuracy']:.3f}" in row and f"{metrics['f1']:.3f}" in row and "this run" in row
        assert str(metrics["n"]) in row
    # the paper's numbers beside ours, labelled, and only those it states
    paper_rows = [line for line in md.splitlines() if "paper (its own data)" in line]
    assert len(paper_rows) == len(NETWORKS)
    scratch_paper = md.splitlines()[md.splitlines().index(_rows(md, "inception_v3_scratch")[0]) + 1]
    assert "paper" in scratch_paper and "0.97" in scratch_paper and "0.96" in scratch_paper
    assert scratch_paper.count("n/a") == 3  # recall, F1, ROC AUC are not stated by the paper
    assert PAPER_RESULTS == {"inception_v3_scratch": {"accuracy": 0.97, "precision": 0.96}}
    for line in paper_rows:
        if line is not scratch_paper:
            assert "0.9" not in line
    # machine, date, profile and the commands to reproduce
    for text in ("## Machine", "Torch threads", "Date: started", "Profile: test", "coronary-calcium experiment",
                 "--profile test", "python -m monai.bundle run", "coronary-calcium train --network xception_last"):
        assert text in md, text


def test_not_run_and_failed_rows_say_why(experiment):
    md = experiment.read_text()
    (row,) = _rows(md, "inception_v3_last")
    assert "not run: ImageNet weights not available offline (give --weights inception_v3_last=FILE; see" in row
    assert "inception_v3.tv_in1k" in row  # the weights hint
    assert not (experiment.parent / "inception_v3_last" / "models").exists()  # nothing trained under its name
    (row,) = _rows(md, "xception_last4")
    assert "failed during training" in row and "does not fit" in row
    assert (experiment.parent / "xception_last4" / "error.log").read_text().strip()


def test_report_shows_figures_and_localization(experiment):
    out = experiment.parent
    md = experiment.read_text()
    page = (out / "report.html").read_text()
    for name in ("inception_v3_scratch", "xception_last"):
        for png in ("training_curves.png", "test_confusion_matrix.png", "cam_montage.png"):
            rel = f"{name}/eval/{png}"
            assert f"]({rel})" in md, rel
            data = (out / rel).read_bytes()
            assert data[:8] == PNG
            assert base64.b64encode(data).decode() in page  # embedded: the HTML stands alone
        layers = json.loads((out / name / "eval" / "localization.json").read_text())["layers"]
        for layer in layers:
            assert any(line.startswith(f"| {layer}") for line in md.splitlines()), layer
    assert md.count("### CAM localization per layer") == 2
    assert "(chance " in md and "(lift " in md and "(baseline " in md
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and 'src="data:image/png;base64,' in page
    assert "not run: ImageNet weights not available offline" in page


def test_bad_arguments_fail_before_training(tiny_manifest, tmp_path):
    with pytest.raises(InputError, match="unknown profile"):
        run_experiment(tiny_manifest, tmp_path, profile="laptop", progress=False)
    with pytest.raises(InputError, match="resnet"):
        run_experiment(tiny_manifest, tmp_path, profile="test", networks=["resnet"], progress=False)
    with pytest.raises(InputError, match="from scratch"):
        run_experiment(tiny_manifest, tmp_path, profile="test", networks=["vgg16_scratch"],
                       pretrained_weights={"vgg16_scratch": str(tiny_manifest)}, progress=False)
    with pytest.raises(InputError, match="no such weights file"):
        run_experiment(tiny_manifest, tmp_path, profile="test", networks=["xception_last"],
                       pretrained_weights={"xception_last": str(tmp_path / "nope.pth")}, progress=False)
    assert not list(tmp_path.iterdir())


def test_profiles_and_cli_parsing():
    assert set(PROFILES) == {"cpu", "gpu", "test"}
    gpu = PROFILES["gpu"]
    for name in paper_network_names():
        assert gpu.overrides(name) | {} == {"image_size": [256, 256], "batch_size": 32, "max_epochs": 15}
        assert PROFILES["test"].overrides(name)["image_size"][0] >= 75  # Inception v3's minimum
    assert PROFILES["cpu"].overrides("vgg16_scratch")["max_epochs"] < PROFILES["cpu"].overrides("inception_v3_last")[
        "max_epochs"]
    assert parse_networks(None) == list(paper_network_names())
    assert parse_networks("xception_last, vgg16_scratch") == ["xception_last", "vgg16_scratch"]
    with pytest.raises(InputError):
        parse_networks("xception_last,xception_last")
    assert parse_weights(["xception_last=/w/x.safetensors"]) == {"xception_last": "/w/x.safetensors"}
    with pytest.raises(InputError, match="NAME=FILE"):
        parse_weights(["xception_last"])
