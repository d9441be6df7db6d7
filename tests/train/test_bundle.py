"""The training bundle end to end on a tiny data set: train, TensorBoard scalars, resume, evaluate, bad input,
the `python -m monai.bundle` CLI and 2-process gloo training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from coronary_calcium.cli import main
from coronary_calcium.errors import InputError
from coronary_calcium.report.tensorboard import read_scalars
from coronary_calcium.train.bundle import BUNDLE_ROOT, run_bundle

REPO = BUNDLE_ROOT.parent


@pytest.fixture(scope="module")
def overrides(tiny_bundle):
    """overrides(manifest, out, **extra): the tiny bundle's ids for a run writing to ``out``."""

    def make(manifest: Path, out: Path, **extra) -> dict:
        return {"manifest": str(manifest), "output_dir": str(out), "slice_cache_dir": str(out.parent / "cache"),
                **tiny_bundle, **extra}

    return make


@pytest.fixture(scope="module")
def trained(tiny_manifest, tmp_path_factory, overrides) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny"
    run_bundle(["train"], overrides(tiny_manifest, out, max_epochs=2))
    return out


def test_train_writes_checkpoints_and_tensorboard_scalars(trained):
    assert (trained / "models" / "model.pt").is_file() and (trained / "models" / "last.pt").is_file()
    scalars = read_scalars(trained / "tensorboard")
    for tag in ("train_loss", "train_accuracy", "learning_rate", "val_accuracy", "val_precision", "val_recall",
                "val_f1", "val_roc_auc", "val_loss"):
        assert [step for step, _ in scalars[tag]] == [1, 2], tag
    assert all(0.0 <= v <= 1.0 for _, v in scalars["val_accuracy"])
    last = torch.load(trained / "models" / "last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"]
    # the Grad-CAM panel handler on the validation evaluator: an overlay per CAM layer and the raw peak
    acc = EventAccumulator(str(trained / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    assert set(acc.Tags()["images"]) >= {"cam/layer2", "cam/layer3"}
    assert [e.step for e in acc.Images("cam/layer3")] == [1, 2]
    assert {"cam/layer2/peak_pos", "cam/layer3/peak_neg"} <= set(scalars)


def test_wrong_cam_layer_fails_at_config_load(tiny_manifest, tmp_path, overrides):
    with pytest.raises(InputError, match="layer9") as e:
        run_bundle(["train"], overrides(tiny_manifest, tmp_path / "x", cam_layers=["layer9"], max_epochs=1))
    assert "layer3" in str(e.value)  # the valid names are listed
    assert not (tmp_path / "x" / "models").exists()


def test_resume_continues_the_epoch_count(trained, tiny_manifest, overrides):
    before = torch.load(trained / "models" / "last.pt", map_location="cpu", weights_only=True)
    run_bundle(["train"], overrides(tiny_manifest, trained, max_epochs=3))
    after = torch.load(trained / "models" / "last.pt", map_location="cpu", weights_only=True)
    assert after["trainer"]["iteration"] == before["trainer"]["iteration"] + before["trainer"]["epoch_length"]
    steps = [s for s, _ in read_scalars(trained / "tensorboard")["val_accuracy"]]
    assert steps == [1, 2, 3]  # epoch 3 only was trained in the second run


def test_evaluate_writes_metrics_tables_and_figures(trained, tiny_manifest, overrides):
    run_bundle(["train", "evaluate"], overrides(tiny_manifest, trained))
    ev = trained / "eval"
    metrics = json.loads((ev / "test_metrics.json").read_text())
    assert metrics["n"] == 20  # 2 test patients x 10 slices
    cm = metrics["confusion_matrix"]["rows_truth_cols_prediction"]
    assert sum(map(sum, cm)) == 20
    assert abs(metrics["accuracy"] - (cm[0][0] + cm[1][1]) / 20) < 1e-9
    for name in ("test_predictions.csv", "test_confusion_matrix.csv", "test_confusion_matrix.png",
                 "training_curves.png"):
        assert (ev / name).stat().st_size > 0, name
    assert (ev / "test_confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loc = json.loads((ev / "localization.json").read_text())
    # each CAM layer, and each gated by the network's gate layer (tiny_cnn: "stem")
    assert set(loc["layers"]) == {"layer2", "layer3", "layer2*stem", "layer3*stem"} and loc["n_positive"] > 0
    assert loc["gate_layer"] == "stem"
    assert (ev / "cam_montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_of_another_architecture_is_refused(trained, tiny_manifest, tmp_path, overrides):
    bad = tmp_path / "other.pt"
    torch.save({"network": {"conv.weight": torch.zeros(3, 3)}}, bad)
    with pytest.raises(InputError) as e:
        run_bundle(["train", "evaluate"], overrides(tiny_manifest, trained, ckpt_file=str(bad)))
    assert "does not fit" in str(e.value)
    # resuming from a last checkpoint saved by another architecture
    out = tmp_path / "resume"
    (out / "models").mkdir(parents=True)
    torch.save({"network": {"conv.weight": torch.zeros(3, 3)}, "optimizer": {}, "lr_scheduler": {}, "trainer": {}},
               out / "models" / "last.pt")
    with pytest.raises(InputError) as e:
        run_bundle(["train"], overrides(tiny_manifest, out, max_epochs=1))
    assert "checkpoint does not fit this network" in str(e.value)


def test_cli_reports_bad_input_in_one_line(tiny_manifest, tmp_path, capsys):
    assert main(["train", "--manifest", str(tiny_manifest), "--network", "resnet_nope", "--set",
                 f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "reading" not in err  # refused before any data is read
    assert err.startswith("error: ") and "resnet_nope" in err and "inception_v3_scratch" in err
    one_split = json.loads(tiny_manifest.read_text())
    for s in one_split["scans"]:
        s["split"] = "train" if s["split"] != "test" else "test"
    path = tmp_path / "no_validation.json"
    path.write_text(json.dumps({**one_split, "data_root": str(tiny_manifest.parent)}))
    assert main(["train", "--manifest", str(path), "--network", "tiny_cnn", "--set", f"output_dir={tmp_path}"]) == 2
    assert "split 'validation' has no scans" in capsys.readouterr().err


def test_one_class_training_set_is_refused(tiny_manifest, tmp_path):
    from coronary_calcium.data.slices import check_trainable

    with pytest.raises(InputError, match="train: split has no positive slices"):
        check_trainable([{"label": 0}] * 5, "train")
    with pytest.raises(InputError, match="split has no slices"):
        check_trainable([], "validation")


def _env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def test_monai_bundle_cli_evaluates(trained, tiny_manifest, tiny_bundle_args):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           "['bundle/configs/train.json','bundle/configs/evaluate.json']", "--bundle_root", "bundle",
           "--manifest", str(tiny_manifest), "--output_dir", str(trained), "--validate#split", "validation",
           "--slice_cache_dir", str(trained.parent / "cache")]
    cmd += tiny_bundle_args
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((trained / "eval" / "validation_metrics.json").read_text())["n"] == 20


def test_two_process_gloo_training(tiny_manifest, tmp_path, tiny_bundle_args):
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", "-m", "monai.bundle", "run",
           "--config_file", "['bundle/configs/train.json','bundle/configs/multi_gpu_train.json']",
           "--bundle_root", "bundle", "--manifest", str(tiny_manifest), "--output_dir", str(tmp_path / "ddp"),
           "--max_epochs", "2", "--slice_cache_dir", str(tmp_path / "cache")]
    cmd += tiny_bundle_args
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "ddp" / "models" / "model.pt").is_file()
    assert [s for s, _ in read_scalars(tmp_path / "ddp" / "tensorboard")["val_accuracy"]] == [1, 2]
    assert len(list((tmp_path / "ddp" / "tensorboard").iterdir())) == 1  # one writer, rank 0 only


def test_cam_montage_command_writes_a_png(trained, tiny_manifest, tmp_path, capsys, overrides):
    out = tmp_path / "montage.png"
    sets = [f"{k}={json.dumps(v)}" for k, v in overrides(tiny_manifest, trained).items() if k != "manifest"]
    argv = ["cam-montage", "--manifest", str(tiny_manifest), "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out}" in capsys.readouterr().out


def test_calibrate_then_infer_from_the_command_line(trained, tiny_manifest, tmp_path, capsys, overrides):
    sets = [f"{k}={json.dumps(v)}" for k, v in overrides(tiny_manifest, trained).items() if k != "manifest"]
    argv = ["calibrate", "--manifest", str(tiny_manifest)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv + ["--set", "inference_validation_folds=1"]) == 2
    assert "validation_folds: must be 0 (no cross-fitting) or an integer >= 2, got 1" in capsys.readouterr().err
    assert main(argv + ["--set", "inference_lesion_classifier=false"]) == 0
    saved = json.loads((trained / "models" / "thresholds.json").read_text())
    assert saved["decision"] == "slice and CAM thresholds" and saved["lesion_classifier"] is None
    assert main(argv) == 0
    saved = json.loads((trained / "models" / "thresholds.json").read_text())
    assert saved["decision"] == "lesion classifier" and saved["lesion_classifier"]["features"]
    out = tmp_path / "inference"
    assert main(["infer", str(tiny_manifest), "--split", "test", "--out", str(out), "--ckpt-dir",
                 str(trained / "models")]) == 0
    printed = capsys.readouterr().out
    assert "2 scan(s) scored, 0 failed" in printed and "lesions: F1" in printed
    assert (out / "summary.csv").is_file() and (out / "report.html").is_file()
    # an existing result is not overwritten unless asked
    assert main(["infer", str(tiny_manifest), "--split", "test", "--out", str(out), "--ckpt-dir",
                 str(trained / "models")]) == 2
    assert "exist" in capsys.readouterr().err
