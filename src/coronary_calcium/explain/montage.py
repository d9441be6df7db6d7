"""Layer x slice montage of CAM overlays (the seed paper's figure): rows = layers shallow to deep, columns = slices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coronary_calcium.errors import InputError
from coronary_calcium.explain.cam import CAM, METHODS, gated_name, unwrap_model
from coronary_calcium.explain.evaluation import POSITIVE_CLASS, _cheap_labels, _label_of, _to_numpy
from coronary_calcium.explain.handlers import overlay
from coronary_calcium.report.files import atomic_path

__all__ = ["pick_montage_samples", "write_layer_montage"]


def _depth_order(network: nn.Module, layers: Sequence[str]) -> list[str]:
    """``layers`` sorted by position in ``named_modules()`` (shallow to deep); unknown names keep their place last."""
    names = [n for n, _ in unwrap_model(network).named_modules()]
    pos = {n: i for i, n in enumerate(names)}

    def key(layer: str) -> int:
        name = layer
        while name.startswith("module."):
            name = name[len("module.") :]
        return pos.get(layer, pos.get(name, len(names)))

    return sorted(layers, key=key)  # stable: unknown names stay in the given order (CAM then rejects them)


def _default_title(sample: Mapping[str, Any], i: int) -> str:
    scan = sample.get("scan_id", sample.get("name", f"#{i}"))
    if "slice_index" not in sample:
        return f"{scan}\nlabel {_label_of(sample['label'])}"
    where = f"{scan} / slice {int(_to_numpy(sample['slice_index']).reshape(-1)[0])}"
    return f"{where}\nlabel {_label_of(sample['label'])}"


def write_layer_montage(
    network: nn.Module,
    layers: str | Sequence[str],
    samples: Sequence[Mapping[str, Any]],
    out_png: str | Path,
    *,
    method: str = "gradcam",
    gate_layer: str | None = None,
    titles: Sequence[str] | None = None,
    class_idx: int = POSITIVE_CLASS,
    window: tuple[float, float] | None = (0.0, 1.0),
    alpha: float = 0.5,
    cmap: str = "jet",
    panel_inches: float = 2.0,
    dpi: int = 100,
    image_key: str = "image",
    mask_key: str = "mask",
) -> Path:
    """Write a PNG montage of CAM overlays: one row per layer (ordered shallow to deep by ``named_modules()``),
    one column per sample; return ``out_png``.

    Each panel is the slice (channel 0, gray ``window``; None = per-slice min-max) with the layer's upsampled CAM
    for ``class_idx`` (default 1, calcium) blended by :func:`coronary_calcium.explain.handlers.overlay` and the
    ground-truth mask contour in green. Heat maps share one scale per row (the row's maximum raw value, shown on
    the row's colour bar), so a weak map looks weak next to a strong one. Each panel is annotated with the
    predicted probability of ``class_idx`` and the raw CAM peak. Row labels: layer name and raw map size; column
    titles: ``titles`` or "scan_id / slice k" and the label. With ``gate_layer``, the gated maps
    (`coronary_calcium.explain.cam`, "<layer>*<gate_layer>") follow as extra rows. Samples need ``image`` (C,H,W) of
    one shape and ``label``; ``mask``, ``scan_id``, ``slice_index`` are optional. Rendered with matplotlib's Agg
    canvas (no pyplot state), written atomically; the figure is ``panel_inches`` per panel at ``dpi``.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise InputError("layers", "give at least one layer name")
    if method not in METHODS:
        raise InputError(method, f"unknown CAM method; choose one of {', '.join(METHODS)}")
    samples = list(samples)
    if not samples:
        raise InputError("samples", "give at least one sample")
    if titles is not None and len(titles) != len(samples):
        raise InputError("titles", f"expected {len(samples)} titles (one per sample), got {len(titles)}")
    if cmap not in colormaps:
        raise InputError(cmap, "unknown matplotlib colour map")
    images, masks = _montage_inputs(samples, image_key, mask_key)

    rows = _depth_order(network, layers)
    param = next(unwrap_model(network).parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.stack(images)
    with CAM(network, rows, method, gate_layer=gate_layer) as cam:
        results = cam(x.to(device), class_idx)
        if gate_layer is not None:
            rows = rows + [gated_name(layer, gate_layer) for layer in rows]
    gray = x[:, 0].numpy()
    first = next(iter(results.values()))
    probs = torch.softmax(first.logits, 1)[:, class_idx].cpu().numpy()
    col_titles = list(titles) if titles is not None else [_default_title(s, c) for c, s in enumerate(samples)]

    nrow, ncol = len(rows), len(samples)
    cbar_w = 0.08
    figsize = (panel_inches * (ncol + cbar_w) + 0.9, panel_inches * nrow + 0.6)
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    grid = fig.add_gridspec(nrow, ncol + 1, width_ratios=[1.0] * ncol + [cbar_w])
    panel = _Panel(gray, masks, probs, window, alpha, cmap)
    for r, layer in enumerate(rows):
        _draw_row(fig, grid, r, layer, results[layer], panel, col_titles if r == 0 else None)
    fig.suptitle(f"{method} of class {class_idx}; one colour scale per row", fontsize=9)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return out_png


def _montage_inputs(samples: list[Mapping[str, Any]], image_key: str,
                    mask_key: str) -> tuple[list[torch.Tensor], list[np.ndarray | None]]:
    """Each sample's image (C,H,W float) and mask (bool H,W or None); InputError for a missing key or bad shape."""
    images, masks = [], []
    for i, s in enumerate(samples):
        for key in (image_key, "label"):
            if key not in s:
                raise InputError(f"sample {i}", f"missing key {key!r}")
        img = torch.as_tensor(_to_numpy(s[image_key]), dtype=torch.float32)
        if img.ndim != 3:
            raise InputError(f"sample {i}", f"image must be (C,H,W), got shape {tuple(img.shape)}")
        images.append(img)
        m = s.get(mask_key)
        masks.append(None if m is None else _to_numpy(m).reshape(-1, *img.shape[1:])[0] > 0)
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) != 1:
        raise InputError("samples", f"images differ in shape: {sorted(shapes)}")
    return images, masks


@dataclass
class _Panel:
    """What every panel of the montage shows besides the map: gray slices, masks, probabilities, display settings."""

    gray: np.ndarray
    masks: list[np.ndarray | None]
    probs: np.ndarray
    window: tuple[float, float] | None
    alpha: float
    cmap: str


def _draw_row(fig: Any, grid: Any, r: int, layer: str, res: Any, panel: _Panel, titles: list[str] | None) -> None:
    """Row ``r``: the layer's maps over every sample on the row's own colour scale, with its colour bar; column
    ``titles`` on the first row."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    up = res.upsampled[:, 0].cpu().numpy()
    peaks = res.peak.cpu().numpy()
    top = float(up.max())
    heat = up / top if top > 0 else np.zeros_like(up)
    ncol = len(panel.masks)
    for c in range(ncol):
        ax = fig.add_subplot(grid[r, c])
        ax.imshow(overlay(panel.gray[c], heat[c], panel.masks[c], panel.window, panel.alpha, panel.cmap),
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(
            0.02, 0.02, f"p={panel.probs[c]:.2f} peak={peaks[c]:.3g}", transform=ax.transAxes, fontsize=7,
            color="white", va="bottom", ha="left", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "lw": 0},
        )
        if titles is not None:
            ax.set_title(titles[c], fontsize=8)
        if c == 0:
            size = "x".join(str(v) for v in res.raw.shape[2:])
            ax.set_ylabel(f"{layer}\n({size})", fontsize=9)
    cax = fig.add_subplot(grid[r, ncol])
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, top if top > 0 else 1.0), cmap=panel.cmap), cax=cax)
    bar.ax.tick_params(labelsize=7)


def _greedy_distinct_scans(candidates: list[tuple[int, Mapping[str, Any]]], n: int) -> list[Mapping[str, Any]]:
    """The first ``n`` candidates preferring one per scan (then filling with the rest, in order)."""
    chosen, seen, rest = [], set(), []
    for idx, s in candidates:
        scan = s.get("scan_id", idx)
        if scan in seen:
            rest.append(s)
            continue
        seen.add(scan)
        chosen.append(s)
        if len(chosen) == n:
            return chosen
    return (chosen + rest)[:n]


def pick_montage_samples(
    dataset: Sequence[Mapping[str, Any]],
    n_positive: int = 4,
    n_negative: int = 2,
    seed: int = 0,
    *,
    by: str = "largest",
    max_candidates: int = 64,
    label_key: str = "label",
    mask_key: str = "mask",
) -> list[Mapping[str, Any]]:
    """Samples for :func:`write_layer_montage`: ``n_positive`` positive slices with a mask, then ``n_negative``
    negative slices (fewer if the dataset has fewer).

    Samples are visited in a random order (seeded by ``seed``; the result is deterministic), loading at most
    ``max_candidates`` per class. ``by="largest"`` takes the positives with the largest masks among the candidates,
    ``by="random"`` the first ones visited. Both prefer slices of distinct scans (``scan_id``). When labels can be
    read without the transforms (a list of dicts or a MONAI Dataset's ``.data``), only the needed class is loaded.
    """
    if by not in ("largest", "random"):
        raise InputError(by, "unknown choice; use 'largest' or 'random'")
    if n_positive < 0 or n_negative < 0 or max_candidates < 1:
        raise InputError("n_positive", "counts must be >= 0 and max_candidates >= 1")
    order = np.random.default_rng(seed).permutation(len(dataset)).tolist()
    labels = _cheap_labels(dataset)
    pos_cands: list[tuple[int, Mapping[str, Any], int]] = []
    neg_cands: list[tuple[int, Mapping[str, Any]]] = []
    # "largest" compares up to max_candidates masks; "random" keeps a few spares so slices can come from distinct scans
    need_pos = (max_candidates if by == "largest" else min(max_candidates, 4 * n_positive)) if n_positive else 0
    need_neg = min(max_candidates, 4 * n_negative)  # a few spares so negatives can come from distinct scans
    for i in order:
        if len(pos_cands) >= need_pos and len(neg_cands) >= need_neg:
            break
        if labels is not None:
            want_pos = labels[i] == POSITIVE_CLASS
            if (want_pos and len(pos_cands) >= need_pos) or (not want_pos and len(neg_cands) >= need_neg):
                continue
        s = dataset[i]
        if label_key not in s:
            raise InputError(f"sample {i}", f"missing key {label_key!r}")
        if _label_of(s[label_key]) == POSITIVE_CLASS:
            if len(pos_cands) >= need_pos or s.get(mask_key) is None:
                continue
            area = int((_to_numpy(s[mask_key]) > 0).sum())
            if area > 0:
                pos_cands.append((i, s, area))
        elif len(neg_cands) < need_neg:
            neg_cands.append((i, s))
    if by == "largest":
        pos_cands.sort(key=lambda t: -t[2])  # stable: equal areas keep the seeded order
    pos = _greedy_distinct_scans([(i, s) for i, s, _ in pos_cands], n_positive)
    neg = _greedy_distinct_scans(neg_cands, n_negative)
    return [*pos, *neg]
