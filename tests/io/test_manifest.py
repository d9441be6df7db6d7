"""The data manifest: schema, paths relative to the manifest, per-patient splits, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coronary_calcium.cli import main
from coronary_calcium.errors import InputError
from coronary_calcium.io.manifest import load_manifest, validate_manifest


def _write(tmp_path: Path, manifest: dict | str, name: str = "data_manifest.json") -> Path:
    path = tmp_path / name
    path.write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return path


@pytest.fixture
def files(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "P1" / "dicom").mkdir(parents=True)
    (root / "P2").mkdir()
    (root / "P2" / "ct.nii.gz").write_bytes(b"")
    (root / "P2" / "labels.nii.gz").write_bytes(b"")
    (root / "P3.mhd").write_text("")
    (root / "P3.xml").write_text("")
    return root


def _manifest(**overrides) -> dict:
    m = {
        "version": 1,
        "data_root": "data",
        "scans": [
            {"patient_id": "P1", "image": "P1/dicom", "split": "train"},
            {"patient_id": "P2", "image": "P2/ct.nii.gz", "split": "validation",
             "reference": {"labels": "P2/labels.nii.gz", "scheme": "orcascore"}},
            {"patient_id": "P3", "image": "P3.mhd", "split": "test", "reference": {"coca_xml": "P3.xml"}},
        ],
    }
    m.update(overrides)
    return m


def test_paths_resolve_against_the_manifest_folder(tmp_path, files, monkeypatch):
    path = _write(tmp_path, _manifest())
    monkeypatch.chdir("/")
    m = load_manifest(path)
    assert [s.image_format for s in m.scans] == ["dicom", "nifti", "metaimage"]
    assert m.scans[1].labels == files / "P2" / "labels.nii.gz" and m.scans[1].label_scheme == "orcascore"
    assert m.scans[2].coca_xml == files / "P3.xml"
    assert [s.scan_id for s in m.split("test")] == ["P3"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{not json", "not valid JSON (line 1"),
        (json.dumps({"version": 1, "data_root": "data"}), "'scans' is a required property"),
        (json.dumps(_manifest(scans=[{"patient_id": "P1", "image": "P1/dicom", "split": "training"}])),
         "scans/0/split"),
    ],
)
def test_bad_json_and_schema(tmp_path, files, text, expected):
    _, problems = validate_manifest(_write(tmp_path, text))
    assert len(problems) == 1 and expected in problems[0], problems


def test_every_problem_is_listed(tmp_path, files):
    m = _manifest()
    m["scans"] += [
        {"patient_id": "P1", "image": "P1/dicom", "split": "test"},  # repeats scan P1, patient in two splits
        {"patient_id": "P9", "image": "P9/missing.nii.gz", "split": "train"},
        {"patient_id": "P8", "image": "P3.xml", "split": "train"},
    ]
    _, problems = validate_manifest(_write(tmp_path, m))
    text = "\n".join(problems)
    assert "scans/3 (P1): repeats scan 'P1'" in text
    assert "patient 'P1' is in split 'test' here and in 'train'" in text
    assert "scans/4 (P9): image" in text and "does not exist" in text
    assert "scans/5 (P8): image" in text and "neither a DICOM folder" in text
    with pytest.raises(InputError, match="4 problem"):
        load_manifest(_write(tmp_path, m))


def test_validate_command_exit_codes(tmp_path, files, capsys):
    bad = _manifest()
    bad["scans"][0]["reference"] = {"labels": "P1/nothing.nii.gz"}
    assert main(["validate", "--quick", str(_write(tmp_path, bad))]) == 2
    err = capsys.readouterr().err
    assert "labels file" in err and "nothing.nii.gz does not exist" in err
    labels = tmp_path / "data" / "P1" / "nothing.nii.gz"
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'data_manifest.json'}: scans/0 (P1): labels file {labels} does not exist"]
    assert main(["validate", "--quick", str(_write(tmp_path, _manifest(), "ok.json"))]) == 0
    assert "OK: 3 scans of 3 patients" in capsys.readouterr().out


@pytest.mark.parametrize("image, field", [("../outside.nii.gz", "image"), ("P2/../../outside.nii.gz", "image"),
                                          ("/etc/passwd.nii.gz", "image")])
def test_paths_outside_data_root_are_refused_unless_allowed(tmp_path, files, image, field):
    (tmp_path / "outside.nii.gz").write_bytes(b"")
    m = _manifest()
    m["scans"][1]["image"] = image
    _, problems = validate_manifest(_write(tmp_path, m), check_files=False)
    assert len(problems) == 1 and f"{field} {image!r} is outside data_root" in problems[0], problems
    m["allow_outside_data_root"] = True
    _, problems = validate_manifest(_write(tmp_path, m), check_files=False)
    assert problems == []


def test_reference_paths_outside_data_root_are_refused(tmp_path, files):
    m = _manifest()
    m["scans"][1]["reference"]["labels"] = "../../labels.nii.gz"
    m["scans"][2]["truth"] = "/tmp/truth.json"
    _, problems = validate_manifest(_write(tmp_path, m), check_files=False)
    assert len(problems) == 2 and "labels '../../labels.nii.gz'" in problems[0] and "truth '/tmp" in problems[1]
    # a path that climbs out and back in stays inside
    m = _manifest()
    m["scans"][1]["image"] = "../data/P2/ct.nii.gz"
    assert validate_manifest(_write(tmp_path, m))[1] == []
