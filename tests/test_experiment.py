"""The paper's experiment in one call (`run_experiment`, profile "test"): trained rows with metrics and figures, a
fine-tuned configuration without ImageNet weights reported as not run, a failing configuration reported in its row
while the others still run, and one report in Markdown and self-contained HTML."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
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
from coronary_calcium.io.images import write_nifti
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.labels import AORTIC, LAD
from coronary_calcium.networks import TinyCNN, paper_network_names, write_stand_in_imagenet_weights

PNG = b"\x89PNG\r\n\x1a\n"
# the failing configuration first: the configurations after it must still run
NETWORKS = ["xception_last4", "inception_v3_last", "inception_v3_scratch", "xception_last"]


# Fewer slices and CAM samples than the bundle's defaults keep Inception v3 / Xception at 80 px within seconds.
# One validation patient: no cross-fitting of the lesion classifier (it needs two), which this also exercises.
FAST = {"localization_max_negative": 4, "cam_panel_positives": 2, "cam_panel_negatives": 1,
        "inference_validation_folds": 0}


def _patient(rng: np.random.Generator, n_slices: int = 8, size: int = 96) -> tuple[CTVolume, np.ndarray]:
    """A small CT volume (1 mm pixels, 3 mm slices): body, a bright never-labelled "spine", and a 2-3 px coronary
    calcium speck on every other slice. 96 px: the bundle max-pools slices down to the profile's 80 px."""
    hu = rng.normal(40, 12, size=(n_slices, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    body = (yy - size / 2) ** 2 / (0.45 * size) ** 2 + (xx - size / 2) ** 2 / (0.48 * size) ** 2 <= 1
    hu[:, ~body] = -1000
    hu[:, size - 14 : size - 8, size // 2 - 4 : size // 2 + 4] = 900
    labels = np.zeros(hu.shape, np.uint8)
    for k in range(0, n_slices, 2):
        r, c, s = int(rng.integers(20, size - 30)), int(rng.integers(20, size - 24)), int(rng.integers(2, 4))
        hu[k, r - 2 : r + s + 2, c - 2 : c + s + 2] = -100.0  # in epicardial fat, as coronary calcium lies
        hu[k, r : r + s, c : c + s] = rng.uniform(250, 700)
        labels[k, r : r + s, c : c + s] = LAD
    # aortic calcium inside the body on two odd slices: what the lesion classifier must learn to reject
    hu[1::4, 46:49, 46:49] = 500
    labels[1::4, 46:49, 46:49] = AORTIC
    return CTVolume(hu=np.rint(hu), spacing=(3.0, 1.0, 1.0)), labels


def _small_manifest(root: Path) -> Path:
    """2 train, 1 validation and 1 test patient of 8 slices, 96 x 96 px, as NIfTI image + label volumes."""
    rng = np.random.default_rng(1)
    scans = []
    for i, split in enumerate(("train", "train", "validation", "test")):
        pid = f"S{i:02d}"
        volume, labels = _patient(rng)
        write_nifti(volume.hu.astype(np.int16), volume, root / pid / "image.nii.gz")
        write_nifti(labels, volume, root / pid / "labels.nii.gz")
        scans.append(
            {
                "patient_id": pid,
                "image": f"{pid}/image.nii.gz",
                "split": split,
                "reference": {"labels": f"{pid}/labels.nii.gz"},
            }
        )
    path = root / "data_manifest.json"
    path.write_text(json.dumps({"version": 1, "name": "small", "data_root": ".", "scans": scans}, indent=1))
    return path


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("experiment")
    # One thread: Inception v3's many small ops at 80 px slow down tens of times when two threads compete with another
    # process for this machine's two cores (seconds either way when the machine is idle).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _run(tmp)
    finally:
        torch.set_num_threads(threads)


def _run(tmp: Path) -> Path:
    manifest = _small_manifest(tmp / "data")
    # A STAND-IN for the ImageNet file (random weights with the real file's keys and shapes): the real one cannot be
    # downloaded here. It exercises the fine-tuning path (1-channel conv adaptation, frozen backbone), not ImageNet.
    stand_in = write_stand_in_imagenet_weights("xception_last", tmp / "legacy_xception_stand_in.safetensors")
    wrong = tmp / "tiny_cnn_weights.pt"  # an existing weights file of another architecture: does not fit Xception
    torch.save(TinyCNN().state_dict(), wrong)
    return run_experiment(
        manifest,
        tmp / "out",
        profile="test",
        networks=NETWORKS,
        pretrained_weights={"xception_last": str(stand_in), "xception_last4": str(wrong)},
        overrides={"slice_cache_dir": str(tmp / "cache"), **FAST},
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
    thresholds = json.loads((out / "inception_v3_scratch" / "models" / "thresholds.json").read_text())
    assert thresholds["validation"]["lesion_probabilities"] == "classifier fitted without the validation data"
    assert status == {
        "xception_last4": "failed",
        "inception_v3_last": "not run",
        "inception_v3_scratch": "ok",
        "xception_last": "ok",
    }
    for name in ("inception_v3_scratch", "xception_last"):
        metrics = json.loads((out / name / "eval" / "test_metrics.json").read_text())
        (row,) = _rows(md, name)
        assert f"{metrics['accuracy']:.3f}" in row and f"{metrics['f1']:.3f}" in row and "this run" in row
        assert str(metrics["n"]) in row
    # the paper's numbers beside ours, labelled, and only those it states
    lines = md.splitlines()
    paper_rows = [i for i, line in enumerate(lines) if "paper (its own data)" in line]
    assert len(paper_rows) == len(NETWORKS)
    scratch = lines.index(_rows(md, "inception_v3_scratch")[0]) + 1
    assert scratch in paper_rows
    assert "| 0.97 | 0.96 | n/a | n/a | n/a |" in lines[scratch]  # recall, F1, ROC AUC: not stated by the paper
    assert PAPER_RESULTS == {"inception_v3_scratch": {"accuracy": 0.97, "precision": 0.96}}
    for i in paper_rows:
        if i != scratch:
            assert lines[i].count("n/a") == 5, lines[i]
    # machine, date, profile and the commands to reproduce
    for text in (
        "## Machine",
        "Torch threads",
        "Date: started",
        "Profile: test",
        "coronary-calcium experiment",
        "--profile test",
        "python -m monai.bundle run",
        "coronary-calcium train --network xception_last",
    ):
        assert text in md, text


def test_report_commands_reproduce_the_run(experiment):
    """The report's commands parse back (shell quoting, JSON values) to the settings the experiment used."""
    import argparse
    import shlex

    from coronary_calcium.cli import build_parser
    from coronary_calcium.experiment import add_experiment_arguments
    from coronary_calcium.train.bundle import parse_overrides

    summary = json.loads((experiment.parent / "experiment.json").read_text())
    p = argparse.ArgumentParser()
    add_experiment_arguments(p)
    argv = shlex.split(summary["command"])
    assert argv[:2] == ["coronary-calcium", "experiment"]
    args = p.parse_args(argv[2:])
    assert args.profile == "test" and parse_networks(args.networks) == NETWORKS
    assert set(parse_weights(args.weights)) == {"xception_last", "xception_last4"}
    assert parse_overrides(args.set) == summary["profile"]["overrides"]
    run = next(r for r in summary["runs"] if r["network"] == "xception_last")
    args = build_parser().parse_args(shlex.split(run["commands"]["train"])[1:])
    assert "['bundle/configs/train.json','bundle/configs/networks/xception_last.json']" in run["commands"]["monai_train"]
    assert "bundle/configs/networks/xception_last.json','bundle/configs/evaluate.json']" in run["commands"][
        "monai_evaluate"
    ]
    assert args.network == "xception_last" and parse_overrides(args.set) == {
        k: v for k, v in run["settings"].items() if k != "network_name"
    } | {"output_dir": run["output_dir"]}


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
        for layer, metrics in layers.items():
            row = next(line for line in md.splitlines() if line.startswith(f"| {layer}"))
            calcium = metrics["pointing_game_calcium"]["3mm"]  # the test split's samples carry candidates
            assert f"| {calcium['hit_rate']:.3f} (chance {calcium['chance']:.3f}) |" in row, row
    assert md.count("### CAM localization per layer") == 2
    assert "| Pointing game 3 mm among calcium |" in md
    assert "(chance " in md and "(lift " in md and "(baseline " in md
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and 'src="data:image/png;base64,' in page
    assert "not run: ImageNet weights not available offline" in page


def test_bad_arguments_fail_before_training(tiny_manifest, tmp_path):
    with pytest.raises(InputError, match="unknown profile"):
        run_experiment(tiny_manifest, tmp_path, profile="laptop", progress=False)
    with pytest.raises(InputError, match="resnet"):
        run_experiment(tiny_manifest, tmp_path, profile="test", networks=["resnet"], progress=False)
    with pytest.raises(InputError, match="from scratch"):
        run_experiment(
            tiny_manifest,
            tmp_path,
            profile="test",
            networks=["vgg16_scratch"],
            pretrained_weights={"vgg16_scratch": str(tiny_manifest)},
            progress=False,
        )
    with pytest.raises(InputError, match="no such weights file"):
        run_experiment(
            tiny_manifest,
            tmp_path,
            profile="test",
            networks=["xception_last"],
            pretrained_weights={"xception_last": str(tmp_path / "nope.pth")},
            progress=False,
        )
    assert not list(tmp_path.iterdir())


def test_profiles_and_cli_parsing():
    assert set(PROFILES) == {"cpu", "gpu", "test"}
    gpu = PROFILES["gpu"]
    for name in paper_network_names():
        assert gpu.overrides(name) | {} == {"image_size": [256, 256], "batch_size": 32, "max_epochs": 15}
        assert PROFILES["test"].overrides(name)["image_size"][0] >= 75  # Inception v3's minimum
    assert (
        PROFILES["cpu"].overrides("vgg16_scratch")["max_epochs"]
        < PROFILES["cpu"].overrides("inception_v3_scratch")["max_epochs"]
    )
    assert "image_size" not in PROFILES["cpu"].overrides("inception_v3_scratch")  # the main job's (train.json)
    assert parse_networks(None) == list(paper_network_names())
    import argparse

    from coronary_calcium.experiment import add_experiment_arguments

    p = argparse.ArgumentParser()
    add_experiment_arguments(p)
    assert all(name in p.format_help().replace("\n", " ") for name in paper_network_names())
    assert parse_networks("xception_last, vgg16_scratch") == ["xception_last", "vgg16_scratch"]
    with pytest.raises(InputError):
        parse_networks("xception_last,xception_last")
    assert parse_weights(["xception_last=/w/x.safetensors"]) == {"xception_last": "/w/x.safetensors"}
    with pytest.raises(InputError, match="NAME=FILE"):
        parse_weights(["xception_last"])


def test_weights_by_architecture_and_rerun_guard(tiny_manifest, tmp_path):
    from coronary_calcium.experiment import _check_weights

    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")  # only its existence is checked here
    got = _check_weights({"legacy_xception": str(w)}, list(paper_network_names()))
    assert got == {"xception_last": w.resolve(), "xception_last4": w.resolve()}
    assert _check_weights({"inception_v3": str(w)}, ["inception_v3_scratch"]) == {}  # scratch takes none
    # a folder holding a run with other settings is refused before anything trains (its checkpoint would resume)
    run_dir = tmp_path / "out" / "inception_v3_scratch"
    run_dir.mkdir(parents=True)
    (run_dir / "experiment_settings.json").write_text(json.dumps({"max_epochs": 99}))
    with pytest.raises(InputError, match="holds a run with other settings"):
        run_experiment(
            tiny_manifest, tmp_path / "out", profile="test", networks=["inception_v3_scratch"], progress=False
        )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["inception_v3_scratch"]


def test_report_of_a_running_experiment(tmp_path):
    """While it runs (after each configuration) the report lists what is still pending."""
    from coronary_calcium.report.experiment_report import write_experiment_report

    summary = {
        "title": "t",
        "started": "now",
        "finished": None,
        "runs": [],
        "pending": ["vgg16_scratch"],
        "paper": {"citation": "p", "results": PAPER_RESULTS},
    }
    md, page = write_experiment_report(summary, tmp_path)
    assert "| vgg16_scratch | this run | n/a | n/a | n/a | n/a | n/a | pending (running) |" in md.read_text()
    assert "in progress" in md.read_text() and "<table>" in page.read_text()
    write_experiment_report({**summary, "finished": "later"}, tmp_path)
    assert "not run: the experiment stopped before it" in md.read_text()
