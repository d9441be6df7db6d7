"""Cross-generator transfer report: a tiny model trained on the tiny set scores a tiny shifted set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coronary_calcium.errors import InputError
from coronary_calcium.synth.shifted import ShiftedConfig, generate_shifted_dataset
from coronary_calcium.transfer import TARGETS, transfer_report, write_transfer_markdown


@pytest.fixture(scope="module")
def ckpt(tiny_manifest, tmp_path_factory, tiny_bundle) -> Path:
    """A tiny_cnn trained 2 epochs on the tiny set and calibrated (as tests/inference/conftest.py does)."""
    from coronary_calcium.inference import calibrate
    from coronary_calcium.train.bundle import run_bundle

    out = tmp_path_factory.mktemp("transfer_run") / "tiny"
    run_bundle(["train"], {"manifest": str(tiny_manifest), "output_dir": str(out),
                           "slice_cache_dir": str(out.parent / "cache"), "max_epochs": 2, **tiny_bundle})
    calibrate(tiny_manifest, out, "tiny_cnn", image_size=tiny_bundle["image_size"], progress=False)
    return out / "models"


@pytest.fixture(scope="module")
def shifted_manifest(tmp_path_factory) -> Path:
    # Patients 0, 2, 3 of seed 0: a calcium-free one, a heavy one and one in between (see the category deck).
    config = ShiftedConfig(matrix=96, max_slices=10, category_deck=(0, 2, 4))
    return generate_shifted_dataset(tmp_path_factory.mktemp("shifted") / "set", n_patients=3, seed=0, config=config)


def test_transfer_report_figures_table_and_files(ckpt, shifted_manifest, tmp_path):
    out = tmp_path / "report"
    result = transfer_report(ckpt, shifted_manifest, out)
    fig = result["figures"]
    assert fig["n_scans"] == 3 and len(result["scans"]) == 3 and not result["failed_scans"]
    agreement = json.loads(Path(result["files"]["agreement"]).read_text())
    assert fig["icc_2_1"] == agreement["scores"]["icc_2_1"]
    assert fig["kappa_5class"] == agreement["scores"]["kappa"]["5-class"]["kappa_linear"]
    assert fig["lesion_f1"] == (agreement["lesions"] or {}).get("f1")
    rows = {r["scan_id"]: r for r in agreement["scans"]}
    zero = [r for r in rows.values() if r["reference_agatston"] == 0]
    assert fig["n_zero"] == len(zero) >= 1
    assert fig["zero_scored_zero"] == sum(r["predicted_agatston"] == 0 for r in zero) / len(zero)
    heavy = [r for r in rows.values() if r["reference_agatston"] > 400]
    assert fig["n_heavy"] == len(heavy)
    assert fig["heavy_below_half"] == sum(r["predicted_agatston"] < 0.5 * r["reference_agatston"] for r in heavy)
    assert set(result["pass"]) == set(TARGETS)
    for r in result["scans"]:
        assert r["reference_agatston"] == rows[r["scan_id"]]["reference_agatston"]
        assert r["gated"] in (True, False) and r["kernel"] in ("soft", "standard", "sharp")
    md = (out / "transfer.md").read_text()
    assert "ICC(2,1)" in md and "5-class linear kappa" in md and "lesion F1" in md
    assert "zero-calcium patients scored 0" in md and "below half their truth" in md
    assert all(f"| {sid} |" in md for sid in rows)
    assert json.loads((out / "transfer.json").read_text())["figures"]["n_scans"] == 3
    # Results are never overwritten silently; with overwrite they are, and one split can be chosen.
    with pytest.raises(InputError, match="already exist"):
        transfer_report(ckpt, shifted_manifest, out)
    again = transfer_report(ckpt, shifted_manifest, out, overwrite=True)
    assert again["figures"]["n_scans"] == 3


def test_transfer_needs_a_calibrated_checkpoint(tmp_path, shifted_manifest):
    with pytest.raises(InputError, match="thresholds.json"):
        transfer_report(tmp_path, shifted_manifest, tmp_path / "out")


def test_markdown_handles_missing_figures(tmp_path):
    result = {"family": "x", "split": "test", "ckpt_dir": "c", "manifest": "m", "failed_scans": [], "notes": [],
              "figures": {"n_scans": 1, "icc_2_1": None, "kappa_5class": None, "lesion_f1": None,
                          "zero_scored_zero": None, "n_zero": 0, "heavy_below_half": 0, "n_heavy": 0,
                          "category_accuracy_5class": None, "lesion_sensitivity": None, "lesion_ppv": None,
                          "false_positives_per_scan": None, "non_coronary_counted_as_coronary": None},
              "pass": {k: None for k in TARGETS},
              "scans": [{"scan_id": "A", "reference_agatston": 0.0, "predicted_agatston": 0.0,
                         "reference_category": "0", "predicted_category": "0", "tp": 0, "fn": 0, "fp": 0,
                         "non_coronary_kept": 0}]}
    text = write_transfer_markdown(result, tmp_path / "r.md").read_text()
    assert "n/a" in text and "| A |" in text


def test_cli_makes_the_shifted_family_and_reports_on_it(ckpt, tmp_path, capsys):
    """`coronary-calcium transfer` generates the shifted family when missing and writes the report; `synth --family
    shifted` writes the same family."""
    from coronary_calcium.cli import main

    config = tmp_path / "shifted.json"
    config.write_text(json.dumps({"matrix": 96, "max_slices": 10, "category_deck": [0, 2, 4]}))
    assert main(["synth", "--family", "shifted", "--out", str(tmp_path / "set"), "--patients", "3",
                 "--config", str(config), "--workers", "1"]) == 0
    manifest = tmp_path / "set" / "data_manifest.json"
    assert json.loads(manifest.read_text())["name"] == "synthetic-shifted"
    assert main(["transfer", "--manifest", str(manifest), "--ckpt-dir", str(ckpt), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "ICC(2,1)" in out and (tmp_path / "r" / "transfer.md").is_file()
    # refused as one error line: a checkpoint folder without thresholds.json
    assert main(["transfer", "--manifest", str(manifest), "--ckpt-dir", str(tmp_path), "--out",
                 str(tmp_path / "r2")]) == 2
    assert capsys.readouterr().err.count("error:") == 1
