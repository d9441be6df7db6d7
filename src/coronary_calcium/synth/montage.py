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
from coronary_calcium.labels import AORTIC, LABEL_NAMES, LAD, LCX, LM, RCA, VALVE

WINDOWS = (("W 800 / L 100", 800.0, 100.0), ("bone W 2000 / L 500", 2000.0, 500.0))
LABEL_COLOURS = {LM: "#ff2020", LAD: "#ff9900", LCX: "#ffee00", RCA: "#ff33cc", AORTIC: "#00e5ff", VALVE: "#3f7fff"}


def _manifest_path(path: Path) -> Path:
    if path.is_dir():
        path = path / "data_manifest.json"
    if not path.is_file():
        raise InputError(path, "no data_manifest.json here")
    return path


def _pick(manifest_dir: Path, scans: list[dict[str, Any]], n: int, rng: np.random.Generator) -> list[tuple]:
    """(scan, slice, kind) picks: about half coronary, a third distractor-only, the rest without calcium."""
    pools: dict[str, list[tuple[int, int]]] = {"coronary": [], "distractor": [], "negative": []}
    for i, scan in enumerate(scans):
        truth_rel = scan.get("truth")
        if not truth_rel:
            continue
        truth = json.loads((manifest_dir / truth_rel).read_text())
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


def write_montage(dataset_dir_or_manifest: str | Path, out_png: str | Path, n_slices: int = 6, seed: int = 0) -> Path:
    """Write a PNG grid of ``n_slices`` generated slices (calcium and bone windows, plain and outlined); return it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from coronary_calcium.io.images import read_image, read_labels

    if isinstance(n_slices, bool) or not isinstance(n_slices, int) or n_slices < 1:
        raise InputError("n_slices", f"must be a positive integer, got {n_slices!r}")
    manifest_path = _manifest_path(Path(dataset_dir_or_manifest))
    manifest = json.loads(manifest_path.read_text())
    root = manifest_path.parent / manifest.get("data_root", ".")
    scans = manifest.get("scans", [])
    picks = _pick(root, scans, n_slices, np.random.default_rng(seed))
    if not picks:
        raise InputError(manifest_path, "has no scans with truth files to show")
    picks.sort(key=lambda p: (p[0], p[1]))

    cache: dict[int, tuple[Any, np.ndarray]] = {}
    ncols = 2 * len(WINDOWS)
    fig, axes = plt.subplots(len(picks), ncols, figsize=(3.2 * ncols, 3.4 * len(picks)), squeeze=False)
    for row, (i, k, kind) in enumerate(picks):
        if i not in cache:
            scan = scans[i]
            pid = scan["patient_id"]
            nifti = root / pid / "image.nii.gz"  # same volume as the DICOM series, faster to read
            volume = read_image(nifti if nifti.is_file() else root / scan["image"])
            ref = scan["reference"]
            cache = {i: (volume, read_labels(root / ref["labels"], volume, ref.get("scheme", "project")))}
        volume, labels = cache[i]
        img, lab = volume.hu[k], labels[k]
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
            title = f"{scans[i]['patient_id']} slice {k} ({kind})" if c == 0 else name + (" + labels" if c % 2 else "")
            ax.set_title(title, fontsize=8)
    handles = [Line2D([0], [0], color=col, lw=2, label=LABEL_NAMES[v]) for v, col in LABEL_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
