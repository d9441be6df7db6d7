"""Hostile but ordinary input to every command, as a user types it: each case must end in exit status 2, exactly one
`error:` line on stderr naming the problem, no traceback, and nothing written to the output path.

A case builds its files under a fresh folder (`Ctx`) and returns the command line; `OUT` in it is the output path
that must stay as it was.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom
import pytest
import torch

from coronary_calcium.cli import main
from coronary_calcium.errors import InputError
from coronary_calcium.inference.thresholds import file_sha256
from coronary_calcium.io.dicom import write_dicom_series
from coronary_calcium.io.images import read_image, write_nifti
from coronary_calcium.io.volume import CTVolume

MARKER = "pwned.marker"


@dataclass
class Ctx:
    """The folder a case works in, with the tiny data set and model to start from."""

    tmp: Path
    manifest: Path
    ckpt: Path
    run: Path
    tiny_bundle: dict[str, Any]
    edit_dicom: Callable[..., None]
    out: Path = field(init=False)

    def __post_init__(self) -> None:
        self.out = self.tmp / "out"

    # -- inputs ------------------------------------------------------------------------------------------------
    def image(self) -> Path:
        return self.manifest.parent / "T00" / "image.nii.gz"

    def volume(self) -> CTVolume:
        return read_image(self.image())

    def file(self, name: str, content: bytes | str = b"") -> str:
        """Write ``content`` to ``data/name``; return ``name`` (as a manifest names it)."""
        path = self.tmp / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return name

    def nifti(self, name: str, hu: np.ndarray, spacing=(3.0, 1.0, 1.0)) -> str:
        write_nifti(hu, CTVolume(hu=hu, spacing=spacing), self.tmp / "data" / name)
        return name

    def manifest_file(self, raw: Any, name: str = "manifest.json") -> Path:
        path = self.tmp / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
        return path

    def one_scan(self, image: str, **scan: Any) -> Path:
        """A manifest of one test scan ``image`` (relative to the data folder)."""
        return self.manifest_file({"version": 1, "data_root": ".", "scans": [
            {"patient_id": "P1", "image": image, "split": "test", **scan}]})

    def tiny_scans(self, **top: Any) -> dict:
        raw = json.loads(self.manifest.read_text())
        return {**raw, "data_root": str(self.manifest.parent), **top}

    def dicom(self, name: str, edit: Callable[[pydicom.Dataset, int], None]) -> str:
        """A DICOM series of the tiny volume, each slice ``i`` changed by ``edit(ds, i)``."""
        self.edit_dicom(write_dicom_series(self.volume(), self.tmp / "data" / name, patient_id="D1"), edit)
        return name

    def raw_nifti(self, name: str, array: np.ndarray, zero_spacing: bool = False) -> str:
        """An uncompressed NIfTI written with nibabel (the project's writer refuses what this makes);
        ``zero_spacing``: pixdim 0 and no qform / sform (nibabel would read that back as 1 mm)."""
        import nibabel as nib

        path = self.tmp / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = nib.Nifti1Image(array, np.diag([-1.0, -1.0, 3.0, 1.0]))
        if zero_spacing:
            image.header.set_qform(None, code=0)
            image.header.set_sform(None, code=0)
        nib.save(image, str(path))
        if zero_spacing:  # nibabel refuses to write pixdim 0: patch the header bytes (pixdim[1:4] at 80)
            with open(path, "r+b") as f:
                f.seek(80)
                f.write(np.zeros(3, "<f4").tobytes())
        return name

    def huge_nifti(self, name: str) -> str:
        """A NIfTI header claiming 30000^3 voxels over a few bytes of data (dim[1:4] at 42)."""
        name = self.raw_nifti(name, _hu().T.astype(np.int16))
        with open(self.tmp / "data" / name, "r+b") as f:
            f.seek(42)
            f.write(np.full(3, 30000, "<i2").tobytes())
        return name

    # -- models ------------------------------------------------------------------------------------------------
    def ckpt_copy(self, model: bytes | None = None, text: str | bytes | None = None, drop: str = "",
                  other_weights: bool = False, **changes: Any) -> Path:
        """A copy of the tiny checkpoint folder: ``model`` replaces model.pt (its sha256 recorded, unless
        ``other_weights``), ``changes`` go into thresholds.json, ``drop`` leaves a field out, ``text`` replaces the
        file ("" deletes it)."""
        dst = self.tmp / "models"
        dst.mkdir()
        shutil.copy2(self.ckpt / "model.pt", dst / "model.pt")
        values = json.loads((self.ckpt / "thresholds.json").read_text())
        if model is not None:
            (dst / "model.pt").write_bytes(model)
            if not other_weights:
                values["checkpoint_sha256"] = file_sha256(dst / "model.pt")
        values = {k: v for k, v in {**values, **changes}.items() if k != drop}
        if isinstance(text, bytes):
            (dst / "thresholds.json").write_bytes(text)
        elif text != "":
            (dst / "thresholds.json").write_text(json.dumps(values) if text is None else text)
        return dst

    def infer(self, *extra: str, input_path: Path | None = None, ckpt: Path | None = None) -> list[str]:
        return ["infer", str(input_path or self.image()), "--out", str(self.out), "--ckpt-dir",
                str(ckpt or self.ckpt), *extra]

    def thresholds(self, **changes: Any) -> list[str]:
        return self.infer(ckpt=self.ckpt_copy(**changes))

    def data(self) -> Path:
        return self.tmp / "data"

    # -- training ----------------------------------------------------------------------------------------------
    def bundle_sets(self, output_dir: Path) -> list[str]:
        sets = {"output_dir": str(output_dir), "slice_cache_dir": str(self.run.parent / "cache"), **self.tiny_bundle}
        return [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]

    def train_with_last(self, content: bytes) -> list[str]:
        """A run folder whose models/last.pt holds ``content``; `train` would resume from it."""
        self.out = self.tmp / "run"
        (self.out / "models").mkdir(parents=True)
        (self.out / "models" / "last.pt").write_bytes(content)
        return ["train", "--manifest", str(self.manifest), "--epochs", "1", *self.bundle_sets(self.out)]


class _Payload:
    """A pickle that runs a shell command when loaded with `weights_only=False`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious(ctx: Ctx) -> bytes:
    path = ctx.tmp / "payload.pt"
    torch.save({"network": {}, "trainer": _Payload(ctx.tmp / MARKER)}, path)
    return path.read_bytes()


def _raw_pickle(ctx: Ctx) -> bytes:
    return pickle.dumps({"network": _Payload(ctx.tmp / MARKER)}, protocol=2)


def _set_out(ctx: Ctx, path: Path, folder: bool = False) -> Path:
    ctx.out = path
    if folder:
        path.mkdir()
    return path


def _file_at_out(ctx: Ctx) -> Ctx:
    ctx.out.write_text("a file, not a folder")
    return ctx


def _under_a_file(ctx: Ctx) -> Ctx:
    (ctx.tmp / "a_file").write_text("x")
    ctx.out = ctx.tmp / "a_file" / "out"
    return ctx


def _read_only_out(ctx: Ctx, request) -> Ctx:
    ctx.out.mkdir()
    request.getfixturevalue("make_read_only")(ctx.out)
    return ctx


def _read_only_parent(ctx: Ctx, request) -> Ctx:
    parent = ctx.tmp / "locked"
    parent.mkdir()
    ctx.out = parent / "out"
    request.getfixturevalue("make_read_only")(parent)
    return ctx


def _not_empty(ctx: Ctx) -> Ctx:
    ctx.out.mkdir()
    (ctx.out / "keep.txt").write_text("someone's file")
    return ctx


def _synth_set(ctx: Ctx, truth: Any = None, reference: bool = True, manifest: str | None = None,
               no_truth: bool = False) -> Path:
    """A small "synthetic" set: the tiny scans T00 and T01 with truth files. T00's truth is ``truth`` (a value or
    text) or absent (``no_truth``); ``manifest`` replaces the manifest's text."""
    root = ctx.tmp / "set"
    scans = []
    for pid in ("T00", "T01"):
        (root / pid).mkdir(parents=True)
        for f in ("image.nii.gz", "labels.nii.gz"):
            shutil.copy2(ctx.manifest.parent / pid / f, root / pid / f)
        body = {"n_slices": 10, "positive_slices": [1, 2], "non_coronary": {"aortic": {"slices_1mm2": [3]}}}
        if pid == "T00" and truth is not None:
            body = truth
        if not (pid == "T00" and no_truth):
            (root / pid / "truth.json").write_text(body if isinstance(body, str) else json.dumps(body))
        scan = {"patient_id": pid, "image": f"{pid}/image.nii.gz", "split": "test", "truth": f"{pid}/truth.json"}
        if reference:
            scan["reference"] = {"labels": f"{pid}/labels.nii.gz"}
        scans.append(scan)
    text = json.dumps({"version": 1, "data_root": ".", "scans": scans}) if manifest is None else manifest
    (root / "data_manifest.json").write_text(text)
    return root


def _montage(ctx: Ctx, dataset: Path, *extra: str, out: Path | None = None, existing: bool = False) -> list[str]:
    """`montage` of ``dataset`` to ``out`` (default: montage.png, made to exist first with ``existing``)."""
    ctx.out = out or ctx.tmp / "montage.png"
    if existing:
        ctx.out.write_bytes(b"an earlier montage")
    return ["montage", str(dataset), "--out", str(ctx.out), *extra]


def _synth(ctx: Ctx, *extra: str) -> list[str]:
    return ["synth", "--out", str(ctx.out), "--patients", "1", "--workers", "1", *extra]


def _config(ctx: Ctx, content: bytes | str | None) -> list[str]:
    path = ctx.tmp / "config.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return _synth(ctx, "--config", str(path))


def _mhd(ctx: Ctx) -> str:
    """A MetaImage header whose pixel file is missing."""
    return ctx.file("scan.mhd", "ObjectType = Image\nNDims = 3\nDimSize = 8 8 4\nElementType = MET_SHORT\n"
                    "ElementSpacing = 1 1 3\nElementDataFile = scan.raw\n")


def _hu(fill: float = 40.0, shape=(4, 16, 16)) -> np.ndarray:
    hu = np.full(shape, fill, np.float32)
    hu[:, :2] = -1000
    return hu


def _full_disk(ctx: Ctx, monkeypatch) -> list[str]:
    import coronary_calcium.inference.batch as batch

    def no_space(path, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(batch, "write_summary", no_space)
    return ctx.infer()


def _synth_full_disk(ctx: Ctx, monkeypatch) -> list[str]:
    import coronary_calcium.synth.dataset as dataset

    def no_space(config, index, root):
        (Path(root) / "SYN0000").mkdir()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(root) / "SYN0000" / "image.nii.gz"))

    monkeypatch.setattr(dataset, "_make_patient", no_space)
    return _synth(ctx)


def _existing_results(ctx: Ctx) -> list[str]:
    argv = ctx.infer()
    assert main(argv) == 0
    return argv


def _calibrate(ctx: Ctx, run: Path, *extra: str) -> list[str]:
    ctx.out = run
    return ["calibrate", "--manifest", str(ctx.manifest), *ctx.bundle_sets(run), *extra]


def _run_folder(ctx: Ctx, model: bytes | None | str = "copy") -> Path:
    """A training run folder whose models/model.pt is the tiny one ("copy"), ``model`` bytes, or absent (None)."""
    run = ctx.tmp / "run"
    (run / "models").mkdir(parents=True)
    if model == "copy":
        shutil.copy2(ctx.ckpt / "model.pt", run / "models" / "model.pt")
    elif isinstance(model, bytes):
        (run / "models" / "model.pt").write_bytes(model)
    return run


def _truncated(ctx: Ctx, n: int) -> bytes:
    return (ctx.ckpt / "model.pt").read_bytes()[:n]


def _train(ctx: Ctx, *extra: str, command: str = "train", manifest: Path | None = None) -> list[str]:
    """`train` (or ``command``) of the tiny bundle into a new run folder (``--network`` in ``extra`` wins)."""
    sets = ctx.bundle_sets(_set_out(ctx, ctx.tmp / "run"))
    return [command, "--manifest", str(manifest or ctx.manifest), *sets, *extra]


def _drop(raw: dict, *keys: str) -> dict:
    return {k: v for k, v in raw.items() if k not in keys}


def _mr(ds: pydicom.Dataset, i: int) -> None:
    ds.Modality = "MR"


def _no_spacing(ds: pydicom.Dataset, i: int) -> None:
    del ds.PixelSpacing


def _sagittal(ds: pydicom.Dataset, i: int) -> None:
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.ImagePositionPatient = [3.0 * i, 0, 0]


def _slope(value: float) -> Callable[[pydicom.Dataset, int], None]:
    def edit(ds: pydicom.Dataset, i: int) -> None:
        ds.RescaleSlope = value

    return edit


def _no_intercept_on_slice_0(ds: pydicom.Dataset, i: int) -> None:
    if i == 0:
        del ds.RescaleIntercept


def _no_intercept(ds: pydicom.Dataset, i: int) -> None:
    del ds.RescaleIntercept


def _huge_spacing(ds: pydicom.Dataset, i: int) -> None:
    ds.PixelSpacing = [1000, 1000]


def _negative_spacing(ds: pydicom.Dataset, i: int) -> None:
    ds.PixelSpacing = [-0.5, -0.5]


def _no_series_uid(ds: pydicom.Dataset, i: int) -> None:
    del ds.SeriesInstanceUID


def _mhd_escape(ctx: Ctx) -> str:
    """A MetaImage header whose pixel file climbs out of the data folder to a system file."""
    return ctx.file("escape.mhd", "ObjectType = Image\nNDims = 3\nDimSize = 8 8 4\nElementType = MET_SHORT\n"
                    "ElementSpacing = 1 1 3\nElementDataFile = ../../../../../../../../etc/passwd\n")


_V = "validate"


def _validate_one(image: Callable[[Ctx], str], **scan: Any) -> Callable[..., list[str]]:
    """A case: `validate` of a one-scan manifest whose image ``image(ctx)`` makes (a name in the data folder)."""
    return lambda c, r, m: [_V, str(c.one_scan(image(c), **scan))]


def _validate_raw(raw: Callable[[Ctx], Any]) -> Callable[..., list[str]]:
    """A case: `validate` of a manifest whose content (text or JSON value) ``raw(ctx)`` makes."""
    return lambda c, r, m: [_V, str(c.manifest_file(raw(c)))]


def _nan_volume() -> np.ndarray:
    hu = _hu()
    hu[0, 8, 8] = np.nan
    return hu


def _huge_volume() -> np.ndarray:
    hu = _hu()
    hu[0, 8, 8] = 1e30
    return hu


# (case id, make(ctx, request, monkeypatch) -> argv, text the one error line holds)
CASES: list[tuple[str, Callable[..., list[str]], str]] = [
    # -- validate: the manifest -------------------------------------------------------------------------------
    ("validate-missing", lambda c, r, m: [_V, str(c.tmp / "nope.json")], "manifest file not found"),
    ("validate-folder", lambda c, r, m: [_V, str(c.tmp)], "is a folder, not a manifest file"),
    ("validate-binary", lambda c, r, m: [_V, str(c.data() / c.file("bin.json", b"\x89PNG\xff\xfe\x00"))],
     "not a UTF-8 text file"),
    ("validate-truncated", _validate_raw(lambda c: '{"version": 1, "data_root": ".", "sc'), "not valid JSON"),
    ("validate-json-list", _validate_raw(lambda c: "[1, 2]"), "is not of type 'object'"),
    ("validate-scans-string", _validate_raw(lambda c: {**c.tiny_scans(), "scans": "T00"}),
     "scans: 'T00' is not of type 'array'"),
    ("validate-no-scans", _validate_raw(lambda c: {**c.tiny_scans(), "scans": []}), "should be non-empty"),
    ("validate-version-2", _validate_raw(lambda c: c.tiny_scans(version=2)), "version"),
    ("validate-no-data-root", _validate_raw(lambda c: _drop(c.tiny_scans(), "data_root")),
     "'data_root' is a required property"),
    ("validate-unknown-key", _validate_raw(lambda c: c.tiny_scans(extra=1)), "Additional properties"),
    ("validate-duplicate-scan", _validate_raw(lambda c: {**c.tiny_scans(), "scans": c.tiny_scans()["scans"][:1] * 2}),
     "repeats scan"),
    ("validate-unknown-split", _validate_one(lambda c: "x.nii.gz", split="training"), "split"),
    ("validate-climbs-out", _validate_one(lambda c: "../../../etc/passwd"), "is outside data_root"),
    ("validate-absolute", _validate_one(lambda c: str(c.image())), "is outside data_root"),
    ("validate-truth-outside", _validate_one(lambda c: "x.nii.gz", truth="/etc/hostname"),
     "truth '/etc/hostname' is outside data_root"),
    ("validate-image-missing", _validate_one(lambda c: "nothing.nii.gz"), "does not exist"),
    ("validate-labels-missing", _validate_one(lambda c: c.nifti("a.nii.gz", _hu()), reference={"labels": "n.nii"}),
     "does not exist"),
    ("validate-wrong-suffix", _validate_one(lambda c: c.file("notes.txt", "x")), "neither a DICOM folder nor"),
    # -- validate: the images (the checks infer runs) -----------------------------------------------------------
    ("validate-zero-byte-nifti", _validate_one(lambda c: c.file("z.nii.gz")), "nifti"),
    ("validate-text-nifti", _validate_one(lambda c: c.file("t.nii.gz", "not an image")), "nifti"),
    ("validate-nan-voxels", _validate_one(lambda c: c.nifti("nan.nii.gz", _nan_volume())), "NaN or infinite"),
    ("validate-not-hu", _validate_one(lambda c: c.nifti("pos.nii.gz", np.full((4, 16, 16), 500, np.float32))),
     "no value below 0"),
    ("validate-1e30-hu", _validate_one(lambda c: c.nifti("big.nii.gz", _huge_volume())),
     "outside the physical range"),
    ("validate-mhd-raw-missing", _validate_one(_mhd), "scan"),
    ("validate-mr-series", _validate_one(lambda c: c.dicom("mr", _mr)), "modality MR"),
    ("validate-no-pixel-spacing", _validate_one(lambda c: c.dicom("nosp", _no_spacing)), "PixelSpacing"),
    ("validate-sagittal-series", _validate_one(lambda c: c.dicom("sag", _sagittal)), "is not axial"),
    ("validate-slope-0", _validate_one(lambda c: c.dicom("slope0", _slope(0))), "RescaleSlope 0"),
    ("validate-slope-nan", _validate_one(lambda c: c.dicom("slopenan", _slope(float("nan")))), "RescaleSlope"),
    ("validate-intercept-missing-on-one-slice", _validate_one(lambda c: c.dicom("icpt1", _no_intercept_on_slice_0)),
     "RescaleIntercept"),
    ("validate-intercept-missing-everywhere", _validate_one(lambda c: c.dicom("icpt", _no_intercept)),
     "RescaleIntercept missing on every slice"),
    ("validate-pixel-spacing-1000", _validate_one(lambda c: c.dicom("sp1000", _huge_spacing)),
     "implausible pixel spacing"),
    ("validate-pixel-spacing-negative", _validate_one(lambda c: c.dicom("spneg", _negative_spacing)), "spacing"),
    ("validate-nifti-zero-spacing", _validate_one(lambda c: c.raw_nifti(
        "zero.nii", _hu().T.astype(np.int16), zero_spacing=True)), "spacing"),
    ("validate-nifti-complex", _validate_one(lambda c: c.raw_nifti("cplx.nii.gz", _hu().T.astype(np.complex64))),
     "complex-valued"),
    ("validate-nifti-30000-cubed", _validate_one(lambda c: c.huge_nifti("huge.nii")), "30000"),
    ("validate-mhd-escape", _validate_one(_mhd_escape), "points outside the header's folder"),
    # -- infer: the output folder -------------------------------------------------------------------------------
    ("infer-out-empty", lambda c, r, m: ["infer", str(c.image()), "--out", "", "--ckpt-dir", str(c.ckpt)],
     "--out: empty path"),
    ("infer-out-is-a-file", lambda c, r, m: _file_at_out(c).infer(), "exists and is not a folder"),
    ("infer-out-under-a-file", lambda c, r, m: _under_a_file(c).infer(), "is a file, not a folder"),
    ("infer-out-read-only", lambda c, r, m: _read_only_out(c, r).infer(), "cannot write in this folder"),
    ("infer-out-parent-read-only", lambda c, r, m: _read_only_parent(c, r).infer(), "cannot write in this folder"),
    ("infer-full-disk", lambda c, r, m: _full_disk(c, m), "no space left on device"),
    ("infer-existing-results", lambda c, r, m: _existing_results(c), "results already exist"),
    # -- infer: the input ---------------------------------------------------------------------------------------
    ("infer-input-missing", lambda c, r, m: c.infer(input_path=c.tmp / "nothing.nii.gz"), "input not found"),
    ("infer-input-text-file", lambda c, r, m: c.infer(input_path=c.data() / c.file("notes.txt", "x")),
     "not a NIfTI"),
    ("infer-input-empty-folder", lambda c, r, m: c.infer(input_path=(c.data() / c.file("e/a.txt", "x")).parent),
     "no scans found"),
    ("infer-split-without-manifest", lambda c, r, m: c.infer("--split", "test"), "only a manifest has splits"),
    ("infer-unknown-split", lambda c, r, m: c.infer("--split", "dev", input_path=c.manifest), "unknown split"),
    ("infer-manifest-outside-root", lambda c, r, m: c.infer(input_path=c.one_scan("../../x.nii.gz")),
     "outside data_root"),
    ("infer-manifest-truncated", lambda c, r, m: c.infer(input_path=c.manifest_file('{"version": 1')),
     "not valid JSON"),
    ("infer-unknown-rule", lambda c, r, m: c.infer("--rule", "vote"), "rule: must be one of"),
    ("infer-dicom-out-nifti-only", lambda c, r, m: c.infer("--dicom-out"), "--dicom-out: needs DICOM series input"),
    # -- infer: the model ---------------------------------------------------------------------------------------
    ("infer-ckpt-dir-a-file", lambda c, r, m: c.infer(ckpt=c.data() / c.file("m.pt", "x")), "not found"),
    ("infer-unknown-network", lambda c, r, m: ["infer", str(c.image()), "--out", str(c.out), "--network", "nope"],
     "checkpoint not found"),
    ("infer-ckpt-missing", lambda c, r, m: c.infer(ckpt=c.tmp / "no_models"), "checkpoint not found"),
    ("infer-no-thresholds", lambda c, r, m: c.infer(ckpt=c.ckpt_copy(text="")), "thresholds missing"),
    ("infer-thresholds-not-json", lambda c, r, m: c.infer(ckpt=c.ckpt_copy(text="{oops")), "not valid JSON"),
    ("infer-thresholds-a-list", lambda c, r, m: c.infer(ckpt=c.ckpt_copy(text="[]")), "does not hold a JSON object"),
    ("infer-thresholds-binary", lambda c, r, m: c.infer(ckpt=c.ckpt_copy(text=b"\xff\xfe\x00binary")), "thresholds"),
    ("infer-t-slice-nan", lambda c, r, m: c.thresholds(t_slice=float("nan")), "t_slice: must be a finite number"),
    ("infer-t-cam-infinite", lambda c, r, m: c.thresholds(t_cam=float("inf")), "t_cam: must be a finite number"),
    ("infer-t-slice-above-1", lambda c, r, m: c.thresholds(t_slice=7), "t_slice: must be a probability"),
    ("infer-version-99", lambda c, r, m: c.thresholds(version=99), "version: 99 is not a thresholds version"),
    ("infer-image-size-string", lambda c, r, m: c.thresholds(image_size="32"), "image_size: must be [height"),
    ("infer-image-size-null", lambda c, r, m: c.thresholds(image_size=None), "image_size: must be [height"),
    ("infer-scoring-number", lambda c, r, m: c.thresholds(scoring=130), "scoring: must be an object"),
    ("infer-scoring-bad-value", lambda c, r, m: c.thresholds(scoring={"kvp": "high"}), "scoring"),
    ("infer-cam-gate-layer-number", lambda c, r, m: c.thresholds(cam_gate_layer=5),
     "cam_gate_layer: must be a string or null"),
    ("infer-validation-a-string", lambda c, r, m: c.thresholds(validation="good"), "validation: must be an object"),
    ("infer-missing-field", lambda c, r, m: c.infer(ckpt=c.ckpt_copy(drop="t_cam")), "missing fields ['t_cam']"),
    ("infer-other-weights", lambda c, r, m: c.infer(ckpt=c.ckpt_copy(model=b"other", other_weights=True)), "sha256"),
    ("infer-truncated-model", lambda c, r, m: c.infer(ckpt=c.ckpt_copy(model=_truncated(c, 5000))), "model.pt"),
    ("infer-pickled-model", lambda c, r, m: c.infer(ckpt=c.ckpt_copy(model=_raw_pickle(c))), "model.pt"),
    # -- synth --------------------------------------------------------------------------------------------------
    ("synth-config-folder", lambda c, r, m: _config(c, None), "is a folder, not a JSON file"),
    ("synth-config-binary", lambda c, r, m: _config(c, b"\x89PNG\r\n\x1a\n\x00\xff\xfe"), "not a text file"),
    ("synth-config-not-json", lambda c, r, m: _config(c, "n_patients: 3"), "not valid JSON"),
    ("synth-config-list", lambda c, r, m: _config(c, "[1, 2]"), "must hold a JSON object"),
    ("synth-config-missing", lambda c, r, m: _synth(c, "--config", str(c.tmp / "none.json")), "file not found"),
    ("synth-config-unknown-field", lambda c, r, m: _config(c, '{"n_patient": 3}'), "n_patient"),
    ("synth-zero-patients", lambda c, r, m: ["synth", "--out", str(c.out), "--patients", "0"], "n_patients"),
    ("synth-zero-workers", lambda c, r, m: _synth(c, "--workers", "0"), "workers"),
    ("synth-out-empty", lambda c, r, m: ["synth", "--out", "", "--patients", "1"], "--out: empty path"),
    ("synth-no-out", lambda c, r, m: ["synth", "--patients", "1"], "give --out DIR"),
    ("synth-out-is-a-file", lambda c, r, m: _synth(_file_at_out(c)), "exists and is not a folder"),
    ("synth-out-under-a-file", lambda c, r, m: _synth(_under_a_file(c)), "is a file, not a folder"),
    ("synth-out-parent-read-only", lambda c, r, m: _synth(_read_only_parent(c, r)), "cannot write in this folder"),
    ("synth-full-disk", lambda c, r, m: _synth_full_disk(c, m), "out/SYN0000/image.nii.gz: no space left"),
    ("synth-out-not-empty", lambda c, r, m: _synth(_not_empty(c)), "exists and is not empty"),
    ("synth-manifest-and-out", lambda c, r, m: ["synth", "--manifest", str(c.manifest), "--out", str(c.out)],
     "drop --out"),
    # -- montage ------------------------------------------------------------------------------------------------
    ("montage-out-is-a-folder", lambda c, r, m: _montage(c, _synth_set(c), out=_set_out(c, c.tmp / "pngs", True)),
     "is a folder: give the PNG file"),
    ("montage-out-exists", lambda c, r, m: _montage(c, _synth_set(c), existing=True), "exists; pass --overwrite"),
    ("montage-out-empty", lambda c, r, m: ["montage", str(_synth_set(c)), "--out", ""], "--out: empty path"),
    ("montage-out-under-a-file", lambda c, r, m: _montage(_under_a_file(c), _synth_set(c), out=c.out),
     "is a file, not a folder"),
    ("montage-no-manifest", lambda c, r, m: _montage(c, c.tmp), "no data_manifest.json here"),
    ("montage-truth-missing", lambda c, r, m: _montage(c, _synth_set(c, no_truth=True)), "truth file"),
    ("montage-truth-broken", lambda c, r, m: _montage(c, _synth_set(c, truth="{broken")), "not a truth JSON"),
    ("montage-truth-no-slices", lambda c, r, m: _montage(c, _synth_set(c, truth={"n_slices": "ten"})),
     "no positive integer 'n_slices'"),
    ("montage-truth-slice-out-of-range", lambda c, r, m: _montage(c, _synth_set(
        c, truth={"n_slices": 10, "positive_slices": [99]})), "slice indices 0 .. 9"),
    ("montage-truth-more-slices-than-image", lambda c, r, m: _montage(c, _synth_set(
        c, truth={"n_slices": 50, "positive_slices": [40, 41, 42, 43, 44, 45]})), "has 10 slices"),
    ("montage-manifest-truncated", lambda c, r, m: _montage(c, _synth_set(c, manifest='{"version": 1, "scans": [')),
     "not valid JSON"),
    ("montage-scans-a-string", lambda c, r, m: _montage(c, _synth_set(
        c, manifest='{"version": 1, "data_root": ".", "scans": "T00"}')), "is not of type 'array'"),
    ("montage-no-reference", lambda c, r, m: _montage(c, _synth_set(c, reference=False)), "no reference labels"),
    ("montage-zero-slices", lambda c, r, m: _montage(c, _synth_set(c), "--slices", "0"), "n_slices"),
    # -- train: the resume checkpoint and the arguments ---------------------------------------------------------
    ("train-malicious-last-pt", lambda c, r, m: c.train_with_last(_malicious(c)), "loads safely"),
    ("train-raw-pickle-last-pt", lambda c, r, m: c.train_with_last(_raw_pickle(c)), "loads safely"),
    ("train-truncated-last-pt", lambda c, r, m: c.train_with_last((c.run / "models" / "last.pt").read_bytes()[:999]),
     "loads safely"),
    ("train-text-last-pt", lambda c, r, m: c.train_with_last(b"not a checkpoint"), "loads safely"),
    ("train-last-pt-a-list", lambda c, r, m: c.train_with_last(_torch_bytes(c, [1, 2])), "holds a list, not a dict"),
    ("train-unknown-network", lambda c, r, m: _train(c, "--network", "resnet_nope"), "resnet_nope"),
    ("train-manifest-missing", lambda c, r, m: _train(c, manifest=c.tmp / "none.json"), "manifest file not found"),
    ("train-manifest-folder", lambda c, r, m: _train(c, manifest=c.tmp), "is a folder"),
    ("train-bad-override", lambda c, r, m: ["train", "--manifest", str(c.manifest), "--set", "max_epochs"],
     "an override must look like key=value"),
    ("train-output-dir-under-a-file", lambda c, r, m: ["train", "--manifest", str(c.manifest), *c.bundle_sets(
        _under_a_file(c).out)], "a_file"),
    # -- calibrate ----------------------------------------------------------------------------------------------
    ("calibrate-no-model", lambda c, r, m: _calibrate(c, _run_folder(c, None)), "model.pt"),
    ("calibrate-truncated-model", lambda c, r, m: _calibrate(c, _run_folder(c, _truncated(c, 4000))), "model.pt"),
    ("calibrate-one-fold", lambda c, r, m: _calibrate(c, _run_folder(c), "--set", "inference_validation_folds=1"),
     "validation_folds: must be 0"),
    ("calibrate-manifest-missing", lambda c, r, m: _train(c, command="calibrate", manifest=c.tmp / "none.json"),
     "manifest file not found"),
]


def _torch_bytes(ctx: Ctx, value: Any) -> bytes:
    path = ctx.tmp / "value.pt"
    torch.save(value, path)
    return path.read_bytes()


def _snapshot(path: Path) -> dict[str, tuple[int, int]] | None:
    """What ``path`` holds: None when absent, else every file's (size, mtime) by relative path."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": (path.stat().st_size, path.stat().st_mtime_ns)}
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


@pytest.fixture
def ctx(tmp_path, tiny_manifest, hostile_ckpt, hostile_run, tiny_bundle, edit_dicom, monkeypatch) -> Ctx:
    work = tmp_path / "case"
    work.mkdir()
    monkeypatch.chdir(work)
    return Ctx(work, tiny_manifest, hostile_ckpt, hostile_run, tiny_bundle, edit_dicom)


@pytest.mark.parametrize("make, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_gets_one_error_line_and_writes_nothing(ctx, make, message, request, monkeypatch, capsys):
    argv = make(ctx, request, monkeypatch)
    assert argv, "the case builds its command line"
    before = _snapshot(ctx.out)
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert message.lower() in errors[0].lower(), errors[0]
    assert _snapshot(ctx.out) == before, f"{ctx.out} changed"
    leftovers = [p.name for p in ctx.out.parent.glob(f".{ctx.out.name}.*")] if ctx.out.parent.is_dir() else []
    assert leftovers == [], leftovers
    assert not (ctx.tmp / MARKER).exists(), "the pickle payload ran"


def test_the_table_has_at_least_60_distinct_cases():
    ids = [c[0] for c in CASES]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)


def test_a_stray_model_pt_in_the_current_folder_does_not_shadow_the_ckpt_dir(ctx, capsys):
    (ctx.tmp / "model.pt").write_bytes(b"someone else's weights")  # ctx.tmp is the current folder
    assert main(ctx.infer()) == 0, capsys.readouterr().err
    assert (ctx.out / "summary.csv").is_file()


def test_a_failed_scan_in_a_batch_gets_one_line_and_the_others_are_scored(ctx, capsys):
    batch = ctx.tmp / "batch"
    batch.mkdir()
    shutil.copy2(ctx.image(), batch / "good.nii.gz")
    (batch / "broken.nii.gz").write_bytes(b"not an image")
    assert main(ctx.infer(input_path=batch)) == 0
    err = capsys.readouterr().err
    about = [line for line in err.splitlines() if "broken" in line]
    assert len(about) == 1 and about[0].startswith("error: scan broken: ") and "Traceback" not in err, err
    assert "broken,error," in (ctx.out / "summary.csv").read_text()


def test_debug_shows_the_traceback_and_a_bug_gets_one_line(ctx, monkeypatch, capsys):
    with pytest.raises(InputError, match="manifest file not found"):
        main(["--debug", "validate", str(ctx.tmp / "nope.json")])
    import coronary_calcium.io.manifest as manifest

    def bug(*args, **kwargs):
        raise TypeError("a bug, not bad input")

    monkeypatch.setattr(manifest, "validate_manifest", bug)
    assert main(["validate", str(ctx.manifest)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["error: validate: internal error (TypeError: a bug, not bad input); rerun with "
                                "--debug for the traceback"]


def test_montage_replaces_a_png_with_overwrite(ctx, capsys):
    argv = _montage(ctx, _synth_set(ctx), "--slices", "2", existing=True)
    assert main(argv + ["--overwrite"]) == 0, capsys.readouterr().err
    assert ctx.out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(ctx.tmp.glob(".montage.png.*"))
