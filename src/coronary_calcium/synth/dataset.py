"""Write a synthetic data set: per-patient DICOM / NIfTI / labels / COCA XML / truth JSON plus data_manifest.json.

Layout under ``out_dir``::

    data_manifest.json
    SYN0000/dicom/IM-0001-0001.dcm ...   the scan (int16 HU, RescaleIntercept -1024)
    SYN0000/image.nii.gz                 the same volume as NIfTI (int16 HU)
    SYN0000/labels.nii.gz                calcium labels (uint8, project scheme: 1-4 coronary, 5 aortic, 6 valve)
    SYN0000/calcium.xml                  coronary labels as a COCA / OsiriX XML
    SYN0000/truth.json                   scores, lesions, positive slices, generation parameters

The folder is built next to ``out_dir`` and renamed into place at the end, so a failure leaves no partial output
and an existing data set is only replaced (with ``overwrite=True``) by a complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from coronary_calcium.errors import InputError
from coronary_calcium.report.files import atomic_folder
from coronary_calcium.synth.config import CATEGORY_LABELS, SynthConfig
from coronary_calcium.synth.phantom import SyntheticPatient, generate_patient

MANIFEST_NAME = "data_manifest.json"
SPLITS = ("train", "validation", "test")
# Config fields that do not change any patient: left out of the UIDs so that a patient's files do not depend
# on the size or name of the set it belongs to.
_SET_LEVEL_FIELDS = ("n_patients", "name", "split_fractions")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=_json_default) + "\n"


def _uid(config: SynthConfig, patient_id: str, what: str) -> str:
    """A deterministic DICOM UID (2.25 + 128-bit integer) for this generator config, patient and purpose."""
    params = {k: v for k, v in config.to_dict().items() if k not in _SET_LEVEL_FIELDS}
    text = json.dumps(["coronary_calcium.synth", params, patient_id, what], sort_keys=True)
    return "2.25." + str(int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big"))


def write_patient(patient: SyntheticPatient, folder: str | Path, config: SynthConfig) -> dict[str, Path]:
    """Write one patient's DICOM series, NIfTI image and labels, COCA XML and truth JSON into ``folder``."""
    from coronary_calcium.io.coca import write_coca_xml
    from coronary_calcium.io.dicom import write_dicom_series
    from coronary_calcium.io.images import write_nifti

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vol = patient.volume
    pid = patient.patient_id
    gated = bool(patient.truth["generation"]["gated"])
    write_dicom_series(
        vol,
        folder / "dicom",
        patient_id=pid,
        study_uid=_uid(config, pid, "study"),
        series_uid=_uid(config, pid, "series"),
        series_description=str(vol.meta.get("series_description", "")),
        kvp=float(config.kvp),
        rescale_intercept=-1024.0,
        slice_thickness=vol.slice_thickness,
        # Gated COCA scans number their instances against z; exercise both orders.
        instance_order="descending" if gated else "ascending",
    )
    paths = {
        "dicom": folder / "dicom",
        "image": write_nifti(vol.hu.astype(np.int16), vol, folder / "image.nii.gz"),
        "labels": write_nifti(patient.labels, vol, folder / "labels.nii.gz"),
        "coca_xml": write_coca_xml(patient.labels, vol, folder / "calcium.xml"),
    }
    truth_path = folder / "truth.json"
    truth_path.write_text(_dumps(patient.truth))
    paths["truth"] = truth_path
    return paths


def _make_patient(config_dict: dict[str, Any], index: int, root: str) -> dict[str, Any]:
    """Generate and write patient ``index`` (runs in a worker process); return its summary."""
    config = SynthConfig.from_dict(config_dict)
    p = generate_patient(config, index)
    write_patient(p, Path(root) / p.patient_id, config)
    t = p.truth
    return {
        "patient_id": p.patient_id,
        "index": index,
        "risk_category": t["risk_category"],
        "target_category": t["generation"]["target_category"],
        "agatston": t["agatston"],
        "n_slices": t["n_slices"],
        "n_positive_slices": t["n_positive_slices"],
        "gated": t["generation"]["gated"],
    }


def assign_splits(categories: list[str], fractions: tuple[float, float, float], seed: int) -> list[str]:
    """Patient-level train / validation / test splits stratified by risk category (deterministic in seed).

    Patients are ordered by category, shuffled within it, and dealt to whichever split is furthest below
    its share so far: every category, and the whole set, is split in the requested proportions up to rounding.
    """
    rng = np.random.default_rng([seed, 2**32 - 2])
    order_in_cat = rng.permutation(len(categories))
    rank = {c: i for i, c in enumerate(CATEGORY_LABELS)}
    order = sorted(range(len(categories)), key=lambda i: (rank.get(categories[i], len(rank)), order_in_cat[i]))
    counts = np.zeros(3)
    out = [""] * len(categories)
    f = np.asarray(fractions, dtype=float)
    for n, i in enumerate(order, start=1):
        s = int(np.argmax(f * n - counts))
        counts[s] += 1
        out[i] = SPLITS[s]
    return out


def build_manifest(config: SynthConfig, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The data_manifest.json content for generated patients (paths relative to the manifest's folder)."""
    summaries = sorted(summaries, key=lambda s: s["index"])
    splits = assign_splits([s["risk_category"] for s in summaries], config.split_fractions, config.seed)
    n_slices = sum(s["n_slices"] for s in summaries)
    n_pos = sum(s["n_positive_slices"] for s in summaries)
    per_split = {
        sp: {c: sum(1 for s, x in zip(summaries, splits) if x == sp and s["risk_category"] == c) for c in CATEGORY_LABELS}
        for sp in SPLITS
    }
    split_text = "; ".join(
        f"{sp} {sum(per_split[sp].values())} ({', '.join(f'{c}: {n}' for c, n in per_split[sp].items())})"
        for sp in SPLITS
    )
    description = (
        f"Synthetic non-contrast calcium-score CT (coronary_calcium.synth, seed {config.seed}): "
        f"{len(summaries)} patients, {n_slices} axial slices, {n_pos} positive "
        f"({100.0 * n_pos / max(n_slices, 1):.1f} %; a slice is positive with a coronary calcium component "
        f">= 130 HU of >= 1 mm^2). Labels: 1 LM, 2 LAD, 3 LCX, 4 RCA, 5 aortic, 6 valve (calcium voxels only). "
        f"Patient-level splits stratified by 5-class risk category: {split_text}."
    )
    scans = []
    for s, split in zip(summaries, splits):
        pid = s["patient_id"]
        scans.append({
            "patient_id": pid,
            "scan_id": pid,
            "image": f"{pid}/dicom",
            "reference": {"labels": f"{pid}/labels.nii.gz", "scheme": "project", "coca_xml": f"{pid}/calcium.xml"},
            "truth": f"{pid}/truth.json",
            "split": split,
        })
    return {
        "version": 1,
        "name": config.name,
        "description": description,
        "data_root": ".",
        "generator": {"name": "coronary_calcium.synth", "config": config.to_dict()},
        "scans": scans,
    }


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise InputError(out_dir, "exists and is not empty; pass overwrite=True to replace it")


def generate_dataset(
    out_dir: str | Path,
    config: SynthConfig | dict[str, Any] = SynthConfig(),
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Generate ``config.n_patients`` patients into ``out_dir`` and write its data_manifest.json; return that path.

    Parameters are checked before anything is written. An existing non-empty ``out_dir`` is replaced only with
    ``overwrite=True``, and then atomically (built in a temporary sibling folder, renamed into place).
    ``workers`` processes generate patients in parallel (default min(2, CPU count)); output does not depend on it.
    """
    if isinstance(config, dict):
        config = SynthConfig.from_dict(config)
    if not isinstance(config, SynthConfig):
        raise InputError("config", f"must be a SynthConfig or a dict, got {type(config).__name__}")
    if not isinstance(overwrite, bool):
        raise InputError("overwrite", f"must be True or False, got {overwrite!r}")
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError("workers", f"must be a positive integer, got {workers!r}")
    out_dir = Path(out_dir).absolute()
    _check_out_dir(out_dir, overwrite)
    with atomic_folder(out_dir, replace=True) as tmp:
        summaries = _run(config, tmp, workers, progress)
        (tmp / MANIFEST_NAME).write_text(_dumps(build_manifest(config, summaries)))
        _check_out_dir(out_dir, overwrite)  # the folder may have appeared meanwhile
    return out_dir / MANIFEST_NAME


def _run(config: SynthConfig, root: Path, workers: int, progress: bool) -> list[dict[str, Any]]:
    n = config.n_patients
    cfg = config.to_dict()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="synthetic patients", unit="patient")
    out = []
    try:
        if workers == 1 or n == 1:
            for i in range(n):
                out.append(_make_patient(cfg, i, str(root)))
                if bar is not None:
                    bar.update()
        else:
            with ProcessPoolExecutor(max_workers=min(workers, n)) as pool:
                futures = [pool.submit(_make_patient, cfg, i, str(root)) for i in range(n)]
                try:
                    for fut in as_completed(futures):
                        out.append(fut.result())
                        if bar is not None:
                            bar.update()
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    finally:
        if bar is not None:
            bar.close()
    return out
