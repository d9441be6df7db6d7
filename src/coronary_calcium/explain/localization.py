"""Localization metrics of saliency maps against ground-truth calcium masks, one (H, W) slice at a time.

Saliency ``S`` is a non-negative map, ``G`` a binary mask of the same shape; spacing is (row, column) in mm.
Metrics: pointing game (with a tolerance in mm), energy-based pointing game, Otsu IoU/Dice, pixel AUPRC, with
their chance levels; plus a weight-randomisation sanity check (Adebayo et al. 2018).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage, stats
from sklearn import metrics
from torch import nn

from coronary_calcium.errors import InputError
from coronary_calcium.report.classification import roc_auc
from coronary_calcium.explain.cam import CAM, unwrap_model

__all__ = [
    "energy_pointing_game",
    "energy_pointing_game_chance",
    "lift",
    "localization_summary",
    "otsu_iou_dice",
    "otsu_threshold",
    "peak_auc",
    "pixel_auprc",
    "pointing_game",
    "pointing_game_chance",
    "randomisation_sanity",
]


def _as_2d(arr: object, name: str) -> np.ndarray:
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().float().numpy()
    out = np.asarray(arr)
    while out.ndim > 2 and out.shape[0] == 1:  # accept (1,H,W) / (1,1,H,W)
        out = out[0]
    if out.ndim != 2:
        raise InputError(name, f"expected an (H, W) array, got shape {np.shape(arr)}")
    return out


def _check(saliency: object, mask: object) -> tuple[np.ndarray, np.ndarray]:
    s = _as_2d(saliency, "saliency").astype(np.float64)
    g = _as_2d(mask, "mask") > 0
    if s.shape != g.shape:
        raise InputError("saliency", f"shape {s.shape} differs from the mask's {g.shape}")
    if not np.isfinite(s).all():
        raise InputError("saliency", "contains NaN or infinite values")
    if (s < 0).any():
        raise InputError("saliency", "has negative values; CAM maps must be ReLU'd (S >= 0)")
    return s, g


def _spacing(spacing_mm: Sequence[float]) -> tuple[float, float]:
    sp = tuple(float(v) for v in np.asarray(spacing_mm, dtype=float).ravel())
    if len(sp) != 2 or min(sp) <= 0:
        raise InputError("spacing_mm", f"expected two positive (row, column) spacings in mm, got {spacing_mm}")
    return sp  # type: ignore[return-value]


def _dilate_mm(mask: np.ndarray, spacing_mm: Sequence[float], tolerance_mm: float) -> np.ndarray:
    if tolerance_mm < 0:
        raise InputError("tolerance_mm", "must be >= 0")
    if tolerance_mm == 0 or not mask.any():
        return mask
    # Euclidean distance (mm) from each pixel centre to the nearest mask pixel: exact for anisotropic spacing.
    dist = ndimage.distance_transform_edt(~mask, sampling=_spacing(spacing_mm))
    return dist <= tolerance_mm + 1e-9


def _within(within: object | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if within is None:
        return None
    w = _as_2d(within, "within") > 0
    if w.shape != shape:
        raise InputError("within", f"shape {w.shape} differs from the map's {shape}")
    return w


def pointing_game(
    saliency: object,
    mask: object,
    spacing_mm: Sequence[float] = (1.0, 1.0),
    tolerance_mm: float = 0.0,
    within: object | None = None,
) -> bool:
    """True if the saliency maximum lies in the mask dilated by ``tolerance_mm`` (Euclidean, in mm).

    ``within``: look for the maximum only among these pixels, e.g. every pixel >= 130 HU (coronary calcium, but
    also bone, aortic and valve calcium): the hit rate then says whether the map ranks the coronary deposit above
    the other bright structures, the seed paper's claim. Ties go to the first maximum in row-major order; an
    all-zero map (over ``within``) points nowhere and counts as a miss.
    """
    s, g = _check(saliency, mask)
    if not g.any():
        raise InputError("mask", "is empty: the pointing game needs a positive slice")
    w = _within(within, s.shape)
    if w is not None:
        if not w.any():
            return False
        s = np.where(w, s, -np.inf)
    if not s.max() > 0:
        return False
    r, c = np.unravel_index(int(np.argmax(s)), s.shape)
    return bool(_dilate_mm(g, spacing_mm, tolerance_mm)[r, c])


def pointing_game_chance(
    mask: object, spacing_mm: Sequence[float] = (1.0, 1.0), tolerance_mm: float = 0.0, within: object | None = None
) -> float:
    """Hit rate of a uniformly random point (of ``within`` when given): the fraction of those pixels inside the
    mask dilated by ``tolerance_mm``."""
    g = _as_2d(mask, "mask") > 0
    hit = _dilate_mm(g, spacing_mm, tolerance_mm)
    w = _within(within, g.shape)
    if w is None:
        return float(hit.mean())
    return float(hit[w].mean()) if w.any() else 0.0


def energy_pointing_game(saliency: object, mask: object) -> float:
    """Fraction of saliency energy inside the mask: sum(S in G) / sum(S); 0 when S sums to 0."""
    s, g = _check(saliency, mask)
    total = s.sum()
    return float(s[g].sum() / total) if total > 0 else 0.0


def energy_pointing_game_chance(mask: object) -> float:
    """EBPG of a uniform map: |G| / |image|."""
    return float((_as_2d(mask, "mask") > 0).mean())


def lift(score: float, chance: float) -> float:
    """score / chance (NaN when chance is 0)."""
    return float(score / chance) if chance > 0 else float("nan")


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu threshold of ``values`` (pixels > threshold are foreground).

    Written with numpy because scikit-image is not a dependency of this project (skimage's threshold_otsu
    uses the same 256-bin histogram and between-class variance).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = m0 / w0
        mu1 = (m0[-1] - m0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between = np.nan_to_num(between[:-1], nan=-1.0)  # the last split leaves class 1 empty
    return float(centres[int(np.argmax(between))])


def otsu_iou_dice(saliency: object, mask: object) -> tuple[float, float]:
    """IoU and Dice of ``S > otsu(S)`` against the mask (a constant map selects nothing)."""
    s, g = _check(saliency, mask)
    pred = s > otsu_threshold(s)
    inter = float(np.logical_and(pred, g).sum())
    union = float(np.logical_or(pred, g).sum())
    denom = float(pred.sum() + g.sum())
    iou = inter / union if union > 0 else 1.0
    dice = 2 * inter / denom if denom > 0 else 1.0
    return iou, dice


def pixel_auprc(saliency: object, mask: object) -> float:
    """Average precision of S as a per-pixel score for G (scikit-learn's average_precision_score: step-wise, tied
    pixels enter together). Baseline (random map) = |G| / |image|; an empty mask is refused."""
    s, g = _check(saliency, mask)
    if not g.any():
        raise InputError("mask", "is empty: AUPRC needs a positive slice")
    return float(metrics.average_precision_score(g.ravel(), s.ravel()))


def peak_auc(pos_peaks: Iterable[float], neg_peaks: Iterable[float]) -> float:
    """AUC of a score separating positive from negative slices (Mann-Whitney U / (n_pos n_neg), ties = 1/2)."""
    pos = np.asarray(list(pos_peaks), dtype=np.float64)
    neg = np.asarray(list(neg_peaks), dtype=np.float64)
    auc = roc_auc(np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)], np.r_[pos, neg])
    return float("nan") if auc is None else auc


def _json_float(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _spacings_for(spacings: object, n: int) -> list[tuple[float, float]]:
    if spacings is None:
        return [(1.0, 1.0)] * n
    arr = np.asarray(spacings, dtype=float)
    if arr.ndim == 1 and arr.size == 2:  # one spacing for all slices
        return [_spacing(arr)] * n
    if arr.ndim != 2 or arr.shape != (n, 2):
        raise InputError("spacings", f"expected one (row, column) pair or {n} pairs, got shape {arr.shape}")
    return [_spacing(row) for row in arr]


def localization_summary(
    saliencies: Iterable[object],
    masks: Iterable[object],
    spacings: object = None,
    tolerances_mm: Sequence[float] = (0.0, 3.0),
    neg_peaks: Iterable[float] | None = None,
    pos_peaks: Iterable[float] | None = None,
) -> dict:
    """JSON-ready means of all localization metrics over positive slices, with chance levels and lifts.

    Slices whose mask is empty are skipped (counted in ``n_empty_masks_skipped``). With ``pos_peaks`` and
    ``neg_peaks`` (raw CAM peaks of positive and negative slices) adds ``peak_auc`` and negative-peak quantiles.
    """
    s_list = list(saliencies)
    g_list = list(masks)
    if len(s_list) != len(g_list):
        raise InputError("saliencies", f"{len(s_list)} maps but {len(g_list)} masks")
    sp_list = _spacings_for(spacings, len(s_list))
    hits: dict[float, list[bool]] = {t: [] for t in tolerances_mm}
    chances: dict[float, list[float]] = {t: [] for t in tolerances_mm}
    ebpg, ebpg_chance, ious, dices, aps, ap_base = [], [], [], [], [], []
    skipped = 0
    for s, g, sp in zip(s_list, g_list, sp_list):
        s2, g2 = _check(s, g)
        if not g2.any():
            skipped += 1
            continue
        for t in tolerances_mm:
            hits[t].append(pointing_game(s2, g2, sp, t))
            chances[t].append(pointing_game_chance(g2, sp, t))
        ebpg.append(energy_pointing_game(s2, g2))
        ebpg_chance.append(energy_pointing_game_chance(g2))
        iou, dice = otsu_iou_dice(s2, g2)
        ious.append(iou)
        dices.append(dice)
        aps.append(pixel_auprc(s2, g2))
        ap_base.append(ebpg_chance[-1])

    def mean(values: list) -> float | None:
        return _json_float(np.mean(values)) if values else None

    def lift_of(score: list, chance: list) -> float | None:
        return _json_float(lift(float(np.mean(score)), float(np.mean(chance)))) if score else None

    n = len(ebpg)
    out: dict = {
        "n_slices": len(s_list),
        "n_positive_slices": n,
        "n_empty_masks_skipped": skipped,
        "pointing_game": {
            f"{float(t):g}mm": {
                "tolerance_mm": float(t),
                "hit_rate": mean(hits[t]),
                "chance": mean(chances[t]),
                "lift": lift_of(hits[t], chances[t]),
                "hits": int(np.sum(hits[t])),
            }
            for t in tolerances_mm
        },
        "energy_pointing_game": {"mean": mean(ebpg), "chance": mean(ebpg_chance), "lift": lift_of(ebpg, ebpg_chance)},
        "otsu": {"iou": mean(ious), "dice": mean(dices)},
        "auprc": {"mean": mean(aps), "baseline": mean(ap_base), "lift": lift_of(aps, ap_base)},
    }
    if pos_peaks is not None and neg_peaks is not None:
        pos = np.asarray(list(pos_peaks), dtype=np.float64)
        neg = np.asarray(list(neg_peaks), dtype=np.float64)
        qs = (0.5, 0.9, 0.95, 0.99)
        out["peak"] = {
            "auc": _json_float(peak_auc(pos, neg)),
            "n_pos": int(pos.size),
            "n_neg": int(neg.size),
            "pos_median": _json_float(np.median(pos)) if pos.size else None,
            "neg_quantiles": {f"q{round(q * 100)}": _json_float(np.quantile(neg, q)) for q in qs} if neg.size else {},
            "neg_max": _json_float(neg.max()) if neg.size else None,
        }
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """scipy's Spearman correlation, 0.0 (not NaN) when either map is constant."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0  # a constant map carries no ranking: nothing of the original survives
    return float(stats.spearmanr(a, b).statistic)


def _randomise(module: nn.Module) -> None:
    with torch.no_grad():
        for sub in module.modules():
            own = list(sub.parameters(recurse=False))
            if not own:
                continue
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()  # the layer's own initialiser, from the RNG seeded by the caller
            else:
                for p in own:
                    std = float(p.std()) if p.numel() > 1 else 0.0
                    p.normal_(0.0, std or 0.02)


def randomisation_sanity(
    model: nn.Module,
    layers: Sequence[str],
    x: torch.Tensor,
    class_idx: int | torch.Tensor | None = None,
    method: str = "gradcam",
    mode: str = "cascade",
    blocks: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Model-randomisation test (Adebayo et al. 2018): Spearman correlation of CAMs before/after randomising.

    Works on a deep copy; ``model`` is untouched. ``mode="full"`` re-initialises every parameter at once and
    returns ``{layer: {"all": rho}}``; ``mode="cascade"`` re-initialises ``blocks`` (default: the top-level
    children holding parameters) one after another from the output down, returning ``{layer: {block: rho}}``
    after each cumulative step. rho is the mean over the batch of the per-sample Spearman correlation of the
    upsampled maps; the explained class is the original model's (``class_idx``, default predicted). Low rho =
    the maps depend on the learned weights, as they should.
    """
    if mode not in ("cascade", "full"):
        raise InputError(mode, "unknown randomisation mode; choose 'cascade' or 'full'")
    with CAM(model, layers, method) as cam:
        ref = cam(x, class_idx)
    idx = next(iter(ref.values())).class_idx
    clone = copy.deepcopy(unwrap_model(model))
    named = dict(clone.named_children())
    if mode == "full":
        steps = [("all", clone)]
    else:
        has_params = [n for n, m in named.items() if any(True for _ in m.parameters())]
        names = list(blocks) if blocks is not None else has_params
        mods = dict(clone.named_modules())
        for n in names:
            if n not in mods:
                raise InputError(n, f"not a module of {type(clone).__name__}; top-level children: {', '.join(named)}")
        steps = [(n, mods[n]) for n in reversed(names)]  # top (logits) first, as in the paper's cascade
    ref_maps = {layer: r.upsampled.flatten(1).cpu().numpy() for layer, r in ref.items()}
    out: dict[str, dict[str, float]] = {layer: {} for layer in layers}
    cuda = sorted({p.device.index or 0 for p in clone.parameters() if p.is_cuda})
    # fork_rng: seeding here must not perturb the caller's random streams.
    with torch.random.fork_rng(devices=cuda), CAM(clone, layers, method) as rcam:
        torch.manual_seed(seed)
        for name, module in steps:
            _randomise(module)
            res = rcam(x, idx)
            for layer in layers:
                new = res[layer].upsampled.flatten(1).cpu().numpy()
                rhos = [_spearman(a, b) for a, b in zip(ref_maps[layer], new)]
                out[layer][name] = float(np.mean(rhos))
    return out
