"""A PNG montage of a generated data set: slices with coronary calcium, with distractors and without calcium.

Each row is one slice shown in a calcium window (W 800 / L 100) and a bone window (W 2000 / L 500), each twice:
plain, and with the labelled calcium outlined (coronary arteries in warm colours, aortic and valve calcium in
cold ones), so one can check by eye that the labels sit on the bright specks and that bones and non-coronary
calcium are left out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from coronary_calcium.errors import InputError
from coronary_calcium.io.images import read_image, read_labels
from coronary_calcium.io.manifest import ScanEntry, load_manifest
from coronary_calcium.labels import AORTIC, LABEL_NAMES, LAD, LCX, LM, RCA, VALVE
from coronary_calcium.report.files import atomic_path, check_output_folder

WINDOWS = (("W 800 / L 100", 800.0, 100.0), ("bone W 2000 / L 500", 2000.0, 500.0))
LABEL_COLOURS = {LM: "#ff2020", LAD: "#ff9900", LCX: "#ffee00", RCA: "#ff33cc", AORTIC: "#00e5ff", VALVE: "#3f7fff"}


def _manifest_path(path: Path) -> Path:
    if path.is_dir():
        path = path / "data_manifest.json"
    if not path.is_file():
        raise InputError(path, "no data_manifest.json here")
    return path


def _read_truth(scan: ScanEntry) -> dict[str, Any]:
    """A scan's truth JSON, checked for what the montage uses (``n_slices``, ``positive_slices``, ...)."""
    assert scan.truth is not None
    try:
        truth = json.loads(scan.truth.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(scan.truth, f"not a truth JSON file ({e})") from None
    n = truth.get("n_slices") if isinstance(truth, dict) else None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(scan.truth, "not a truth file of a synthetic set: no positive integer 'n_slices'")
    slices = [truth.get("positive_slices", [])]
    others = truth.get("non_coronary", {})
    if not isinstance(others, dict) or not all(isinstance(v, dict) for v in others.values()):
        raise InputError(scan.truth, "'non_coronary' must be an object of objects")
    slices += [v.get("slices_1mm2", []) for v in others.values()]
    for values in slices:
        if not isinstance(values, list) or not all(isinstance(k, int) and 0 <= k < n for k in values):
            raise InputError(scan.truth, f"slice lists must hold slice indices 0 .. {n - 1}")
    return truth


def _pick(scans: list[ScanEntry], n: int, rng: np.random.Generator) -> list[tuple]:
    """(scan, slice, kind) picks: about half coronary, a third distractor-only, the rest without calcium."""
    pools: dict[str, list[tuple[int, int]]] = {"coronary": [], "distractor": [], "negative": []}
    for i, scan in enumerate(scans):
        if scan.truth is None:
            continue
        if scan.labels is None:
            raise InputError(scan.image, f"scan {scan.scan_id} has no reference labels to outline")
        truth = _read_truth(scan)
        pos = set(truth.get("positive_slices", []))
        dis = set()
        for kind in truth.get("non_coronary", {}).values():
            dis |= set(kind.get("slices_1mm2", []))
        dis -= pos
        pools["coronary"] += [(i, k) for k in sorted(pos)]
        pools["distractor"] += [(i, k) for k in sorted(dis)]
        pools["negative"] += [(i, k) for k in range(truth["n_slices"]) if k not in pos and k not in dis]
    want = {"coronary": math.ceil(n / 2), "distractor": n // 3}
    want["negative"] = n - want["coronary"] - want["distractor"]
    picks: list[tuple] = []
    for kind in ("coronary", "distractor", "negative"):
        pool = pools[kind]
        take = min(want[kind], len(pool))
        for j in rng.choice(len(pool), size=take, replace=False) if take else []:
            picks.append((*pool[int(j)], kind))
    # Fill up from any pool when one ran short.
    rest = [(i, k, kind) for kind, pool in pools.items() for i, k in pool if (i, k, kind) not in picks]
    while len(picks) < n and rest:
        picks.append(rest.pop(int(rng.integers(len(rest)))))
    return picks


def _check_out_png(out_png: Path, overwrite: bool) -> None:
    if out_png.is_dir():
        raise InputError(out_png, "is a folder: give the PNG file to write, e.g. montage.png")
    if out_png.exists() and not overwrite:
        raise InputError(out_png, "exists; pass --overwrite to replace it")
    parent = out_png.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise InputError(parent, f"is a file, not a folder: {out_png} cannot be created under it")
    check_output_folder(parent)


def _slices(scan: ScanEntry, k: int, cache: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Slice ``k`` of the scan's image and labels; the last scan read is kept (picks are sorted by scan)."""
    if cache.get("scan") is not scan:
        nifti = scan.image.parent / "image.nii.gz"  # synthetic sets: the DICOM series' volume, faster to read
        volume = read_image(nifti if scan.image_format == "dicom" and nifti.is_file() else scan.image)
        assert scan.labels is not None
        cache.update(scan=scan, volume=volume, labels=read_labels(scan.labels, volume, scan.label_scheme))
    volume, labels = cache["volume"], cache["labels"]
    if k >= volume.shape[0]:
        raise InputError(scan.truth, f"names slice {k}, but {scan.image} has {volume.shape[0]} slices")
    return volume.hu[k], labels[k]


def write_montage(dataset_dir_or_manifest: str | Path, out_png: str | Path, n_slices: int = 6, seed: int = 0,
                  overwrite: bool = False) -> Path:
    """Write a PNG grid of ``n_slices`` generated slices (calcium and bone windows, plain and outlined); return it.
    An existing PNG is replaced only with ``overwrite``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if isinstance(n_slices, bool) or not isinstance(n_slices, int) or n_slices < 1:
        raise InputError("n_slices", f"must be a positive integer, got {n_slices!r}")
    out_png = Path(out_png)
    _check_out_png(out_png, overwrite)
    scans = load_manifest(_manifest_path(Path(dataset_dir_or_manifest))).scans
    picks = _pick(scans, n_slices, np.random.default_rng(seed))
    if not picks:
        raise InputError(dataset_dir_or_manifest, "has no scans with truth files to show")
    picks.sort(key=lambda p: (p[0], p[1]))

    cache: dict[str, Any] = {}
    rows = [(scans[i], k, kind, *_slices(scans[i], k, cache)) for i, k, kind in picks]
    ncols = 2 * len(WINDOWS)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(3.2 * ncols, 3.4 * len(rows)), squeeze=False)
    for row, (scan, k, kind, img, lab) in enumerate(rows):
        present = [v for v in LABEL_COLOURS if (lab == v).any()]
        for c in range(ncols):
            name, width, level = WINDOWS[c // 2]
            ax = axes[row, c]
            ax.imshow(img, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, interpolation="nearest")
            if c % 2 == 1:
                for v in present:
                    ax.contour(lab == v, levels=[0.5], colors=[LABEL_COLOURS[v]], linewidths=0.9)
            ax.set_xticks([])
            ax.set_yticks([])
            title = f"{scan.patient_id} slice {k} ({kind})" if c == 0 else name + (" + labels" if c % 2 else "")
            ax.set_title(title, fontsize=8)
    handles = [Line2D([0], [0], color=col, lw=2, label=LABEL_NAMES[v]) for v, col in LABEL_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return out_png
