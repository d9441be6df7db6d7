"""`coronary-calcium synth --manifest`: a manifest's generator block remakes its missing synthetic set, exactly."""

from __future__ import annotations

import json
import shutil

from coronary_calcium.cli import main
from coronary_calcium.synth.config import SynthConfig
from coronary_calcium.synth.dataset import generate_dataset

SMALL = SynthConfig(matrix=128, n_slices=(12, 12), n_patients=2)


def test_manifest_regenerates_its_missing_set(tmp_path, capsys):
    made = json.loads(generate_dataset(tmp_path / "made", SMALL, progress=False).read_text())
    root = tmp_path / "data_manifest.json"
    root.write_text(json.dumps({**made, "data_root": "gen"}))
    shutil.rmtree(tmp_path / "made")

    assert main(["synth", "--manifest", str(root)]) == 0
    assert "generated its data set" in capsys.readouterr().out
    assert main(["validate", str(root)]) == 0  # every image and reference readable
    assert main(["synth", "--manifest", str(root)]) == 0
    assert "already there" in capsys.readouterr().out

    # a manifest that no longer matches its generator is refused, naming the first difference
    edited = json.loads(root.read_text())
    edited["scans"][0]["split"] = "test" if edited["scans"][0]["split"] != "test" else "train"
    root.write_text(json.dumps(edited))
    assert main(["synth", "--manifest", str(root), "--overwrite"]) == 2
    assert "differ from what the generator makes" in capsys.readouterr().err


def test_manifest_and_explicit_parameters_do_not_mix(tmp_path, capsys):
    assert main(["synth", "--manifest", str(tmp_path / "m.json"), "--patients", "3"]) == 2
    assert "drop --out/--patients/--seed/--config" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "x"), "--patients", "-1"]) == 2
    assert not (tmp_path / "x").exists()
