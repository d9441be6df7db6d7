"""Localization of a classifier's CAMs over a whole dataset: metrics per layer, a JSON report, TensorBoard scalars.

:func:`evaluate_localization` explains the positive class (1, calcium) on every slice, so raw CAM peaks are
comparable between slices. Per layer it reports, on positive slices with a non-empty mask, the metrics of
:func:`coronary_calcium.explain.localization.localization_summary` (pointing game at each tolerance with its chance
rate, energy-based pointing game with its lift, Otsu IoU/Dice, pixel AUPRC with its baseline); the AUC of the raw
peak separating positive from negative slices with the negative-peak quantiles; and a weight-randomisation sanity
check on a few positive slices. Metrics are accumulated slice by slice, so memory does not grow with the dataset.

Spacing. Samples carry ``pixel_spacing`` (row, column mm) of the ORIGINAL slice, while image and mask have been
resized to (H, W). The spacing of the resized grid is ``pixel_spacing * original_size / (H, W)``, with the original
(rows, columns) taken from the sample's ``field_size`` key (the grid `FieldOfViewd` cropped or padded the slice to)
or ``original_size`` key when present, else from the ``original_size`` argument (default 512 x 512). Pass
``original_size=None`` when ``pixel_spacing`` already refers to the image grid.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from coronary_calcium.errors import InputError
from coronary_calcium.explain.cam import CAM, GATE_METHOD, METHODS, gated_name, unwrap_model
from coronary_calcium.explain.localization import (
    energy_pointing_game,
    energy_pointing_game_chance,
    lift,
    otsu_iou_dice,
    peak_auc,
    pixel_auprc,
    pointing_game,
    pointing_game_chance,
    randomisation_sanity,
)
from coronary_calcium.report.files import write_json

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["evaluate_localization", "write_localization_report", "resized_spacing", "PRECISIONS"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
POSITIVE_CLASS = 1
_PEAK_QUANTILES = (0.5, 0.9, 0.95, 0.99)


# --------------------------------------------------------------------------------------------------
# Helpers


def _json_float(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _mean(values: list) -> float | None:
    return _json_float(np.mean(values)) if values else None


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _label_of(value: Any) -> int:
    return int(_to_numpy(value).reshape(-1)[0])


def resized_spacing(
    pixel_spacing: Sequence[float],
    image_hw: Sequence[int],
    original_size: Sequence[int] | None = (512, 512),
) -> tuple[float, float]:
    """(row, column) mm spacing of an (H, W) image resized from an ``original_size`` slice of ``pixel_spacing``.

    ``original_size=None``: ``pixel_spacing`` already refers to the (H, W) grid and is returned unchanged.
    """
    sp = np.asarray(_to_numpy(pixel_spacing), dtype=np.float64).reshape(-1)
    if sp.size != 2 or not np.isfinite(sp).all() or (sp <= 0).any():
        raise InputError("pixel_spacing", f"expected two positive (row, column) spacings in mm, got {pixel_spacing}")
    if original_size is None:
        return float(sp[0]), float(sp[1])
    orig = np.asarray(_to_numpy(original_size), dtype=np.float64).reshape(-1)
    if orig.size != 2 or (orig <= 0).any():
        raise InputError("original_size", f"expected (rows, columns) > 0, got {original_size}")
    h, w = (float(v) for v in image_hw)
    return float(sp[0] * orig[0] / h), float(sp[1] * orig[1] / w)


def _cheap_labels(dataset: Sequence) -> list[int] | None:
    """Labels without running the dataset's transforms: a list of dicts, or a MONAI Dataset's ``.data`` records."""
    try:
        if isinstance(dataset, (list, tuple)):
            records = dataset
        else:
            records = getattr(dataset, "data", None)
            if not isinstance(records, Sequence) or len(records) != len(dataset):
                return None
        if not all(isinstance(r, Mapping) and "label" in r for r in records):
            return None
        return [_label_of(r["label"]) for r in records]
    except Exception:  # anything unexpected: fall back to reading the samples
        return None


def _select_indices(n: int, labels: list[int] | None, max_negative: int | None) -> list[int]:
    """All indices, keeping at most ``max_negative`` negatives spread evenly over the dataset order when labels are
    known cheaply (slices of many scans rather than the first scans only)."""
    if max_negative is None or labels is None:
        return list(range(n))
    neg = [i for i, lab in enumerate(labels) if lab != POSITIVE_CLASS]
    if len(neg) > max_negative:
        keep = set(np.asarray(neg)[np.linspace(0, len(neg) - 1, max_negative).round().astype(int)].tolist())
        return [i for i in range(n) if labels[i] == POSITIVE_CLASS or i in keep]
    return list(range(n))


def _collate(items: list[dict]) -> list[dict]:
    return items


def _autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _LayerAccumulator:
    """Per-slice localization metrics of one layer, summarised like ``localization_summary``."""

    def __init__(self, tolerances_mm: Sequence[float]):
        self.tolerances = [float(t) for t in tolerances_mm]
        self.hits: dict[float, list[bool]] = {t: [] for t in self.tolerances}
        self.chances: dict[float, list[float]] = {t: [] for t in self.tolerances}
        self.calcium_hits: dict[float, list[bool]] = {t: [] for t in self.tolerances}
        self.calcium_chances: dict[float, list[float]] = {t: [] for t in self.tolerances}
        self.ebpg: list[float] = []
        self.ebpg_chance: list[float] = []
        self.iou: list[float] = []
        self.dice: list[float] = []
        self.ap: list[float] = []
        self.pos_peaks: list[float] = []
        self.neg_peaks: list[float] = []

    def add_positive(
        self, saliency: np.ndarray, mask: np.ndarray, spacing: tuple[float, float], candidates: np.ndarray | None
    ) -> None:
        for t in self.tolerances:
            self.hits[t].append(pointing_game(saliency, mask, spacing, t))
            self.chances[t].append(pointing_game_chance(mask, spacing, t))
            if candidates is not None:
                self.calcium_hits[t].append(pointing_game(saliency, mask, spacing, t, within=candidates))
                self.calcium_chances[t].append(pointing_game_chance(mask, spacing, t, within=candidates))
        self.ebpg.append(energy_pointing_game(saliency, mask))
        self.ebpg_chance.append(energy_pointing_game_chance(mask))
        iou, dice = otsu_iou_dice(saliency, mask)
        self.iou.append(iou)
        self.dice.append(dice)
        self.ap.append(pixel_auprc(saliency, mask))

    def summary(self) -> dict:
        def lift_of(score: list, chance: list) -> float | None:
            return _json_float(lift(float(np.mean(score)), float(np.mean(chance)))) if score else None

        def game(hits: dict[float, list[bool]], chances: dict[float, list[float]]) -> dict:
            return {
                f"{t:g}mm": {
                    "tolerance_mm": t,
                    "hit_rate": _mean(hits[t]),
                    "chance": _mean(chances[t]),
                    "lift": lift_of(hits[t], chances[t]),
                    "hits": int(np.sum(hits[t])),
                }
                for t in self.tolerances
            }

        pos = np.asarray(self.pos_peaks, dtype=np.float64)
        neg = np.asarray(self.neg_peaks, dtype=np.float64)
        calcium = any(self.calcium_hits[t] for t in self.tolerances)
        return {
            "n_positive_slices": len(self.ebpg),
            "pointing_game": game(self.hits, self.chances),
            "pointing_game_calcium": game(self.calcium_hits, self.calcium_chances) if calcium else None,
            "energy_pointing_game": {
                "mean": _mean(self.ebpg),
                "chance": _mean(self.ebpg_chance),
                "lift": lift_of(self.ebpg, self.ebpg_chance),
            },
            "otsu": {"iou": _mean(self.iou), "dice": _mean(self.dice)},
            "auprc": {
                "mean": _mean(self.ap),
                "baseline": _mean(self.ebpg_chance),
                "lift": lift_of(self.ap, self.ebpg_chance),
            },
            "peak": {
                "auc": _json_float(peak_auc(pos, neg)),
                "n_pos": int(pos.size),
                "n_neg": int(neg.size),
                "pos_median": _json_float(np.median(pos)) if pos.size else None,
                "neg_quantiles": (
                    {f"q{round(q * 100)}": _json_float(np.quantile(neg, q)) for q in _PEAK_QUANTILES}
                    if neg.size
                    else {}
                ),
                "neg_max": _json_float(neg.max()) if neg.size else None,
            },
        }


def _tolerance_key(tolerances: Sequence[float]) -> str:
    """The pointing-game key that ranks layers: 3 mm when evaluated, else the largest tolerance."""
    t = 3.0 if 3.0 in tolerances else max(tolerances)
    return f"{t:g}mm"


def _best_layer(layers: dict[str, dict], key: str) -> str | None:
    best, best_score = None, None
    for name, metrics in layers.items():
        hit = metrics["pointing_game"][key]["hit_rate"]
        if hit is None:
            continue
        ebpg = metrics["energy_pointing_game"]["mean"] or 0.0
        score = (hit, ebpg)  # ties on the hit rate go to the higher energy-based pointing game, then the first layer
        if best_score is None or score > best_score:
            best, best_score = name, score
    return best


# --------------------------------------------------------------------------------------------------
# Public API


def evaluate_localization(
    network: nn.Module,
    layers: str | Sequence[str],
    dataset: Sequence[Mapping[str, Any]],
    *,
    method: str = "gradcam",
    gate_layer: str | None = None,
    batch_size: int = 16,
    tolerances_mm: Sequence[float] = (0.0, 3.0),
    max_negative: int | None = None,
    sanity_check: bool = True,
    sanity_samples: int = 8,
    sanity_mode: str = "cascade",
    precision: str = "fp32",
    progress: bool = True,
    original_size: Sequence[int] | None = (512, 512),
    num_workers: int = 0,
    seed: int = 0,
    image_key: str = "image",
    mask_key: str = "mask",
    label_key: str = "label",
    spacing_key: str = "pixel_spacing",
    candidates_key: str = "candidates",
) -> dict:
    """CAM localization metrics of ``layers`` of ``network`` over ``dataset``; a JSON-ready dict.

    dataset: a Sequence (list of dicts, MONAI/torch Dataset) of samples after the deterministic transforms, each
    with ``image`` (C,H,W) float, ``mask`` (1,H,W) 0/1, ``label`` 0/1, ``pixel_spacing`` (row, col mm of the
    original slice; see the module docstring and ``original_size``), optional ``scan_id``/``slice_index`` and
    ``candidates`` (1,H,W) 0/1, the pixels at or above the calcium threshold (coronary or not: bone, aortic and valve
    calcium too). With candidates, each layer also gets "pointing_game_calcium": the pointing game with the map's
    maximum looked for among the candidate pixels only, and its chance rate (a random candidate pixel); it measures
    whether the map puts the coronary deposit above the brighter bone and the aortic calcium.
    gate_layer: also report each layer's map gated by this shallow layer's LayerCAM (see
    `coronary_calcium.explain.cam`), under the key ``"<layer>*<gate_layer>"`` (no sanity check for those).
    Every slice is explained for class 1 (calcium) with one CAM object (hooks registered once), ``batch_size``
    slices per call, on the network's device; ``precision="bf16"`` runs the CAM under bf16 autocast.

    max_negative: evaluate at most this many negative slices (None = all). When labels can be read without the
    transforms (a list of dicts, or a MONAI Dataset's ``.data`` records) the kept negatives are spread evenly over
    the dataset order; otherwise the first ones met are kept (the others are still loaded, but not explained).
    sanity_check: run :func:`randomisation_sanity` (``sanity_mode`` "cascade" or "full", seeded by ``seed``) on the
    first ``sanity_samples`` positive slices with a mask.

    Returns ``{"method", "precision", "class_idx", "tolerances_mm", "layers": {layer: metrics}, "n_slices",
    "n_positive", "n_positive_with_mask", "n_negative", "best_layer", "best_layer_by", "seconds", "spacing"}``.
    Per layer: "n_positive_slices" and the metric entries of ``localization_summary``, same keys and definitions
    ("pointing_game" {"0mm", "3mm": {tolerance_mm, hit_rate, chance, lift, hits}}, "pointing_game_calcium" (same
    form, or None without candidates), "energy_pointing_game" {mean,
    chance, lift}, "otsu" {iou, dice}, "auprc" {mean, baseline, lift}, "peak" {auc, n_pos, n_neg, pos_median,
    neg_quantiles {q50, q90, q95, q99}, neg_max}), plus "raw_map_size" [h, w] and "sanity" ({"mode", "n_samples",
    "rho": {step: rho}, "rho_final"}, or None when skipped or no positive slice has a mask).
    Metrics are computed on ``CAMResult.upsampled`` (raw strength at the input size).
    Positive = label 1 (all of them count for the peak AUC); localization metrics use those with a non-empty mask.
    ``best_layer``: highest 3 mm pointing-game hit rate (ties: energy-based pointing game), None without positives.
    Non-finite values are written as None. (Over 80 lines only by this reference and the keyword-only options that
    evaluate.json sets one by one; the body is its named steps.)
    """
    layers, tolerances = _checked_arguments(layers, method, precision, sanity_mode, batch_size, tolerances_mm,
                                            max_negative, dataset)
    start = time.perf_counter()
    device = _device_of(network)
    loader = _loader(dataset, max_negative, batch_size, num_workers)
    keys = layers + ([gated_name(layer, gate_layer) for layer in layers] if gate_layer is not None else [])
    acc = {key: _LayerAccumulator(tolerances) for key in keys}
    raw_sizes: dict[str, list[int]] = {}
    reader = _SampleReader(image_key, label_key, mask_key, spacing_key, candidates_key, original_size, max_negative,
                           sanity_samples if sanity_check else 0)
    with CAM(network, layers, method, gate_layer=gate_layer) as cam:
        for batch in tqdm(loader, desc=f"CAM localization ({method})", unit="batch", disable=not progress):
            slices = [s for s in (reader.read(item, k) for k, item in enumerate(batch)) if s is not None]
            if not slices:
                continue
            x = torch.stack([s.image for s in slices]).to(device)
            with _autocast(precision, device):
                results = cam(x, POSITIVE_CLASS)
            _accumulate(results, slices, acc, raw_sizes)
    out_layers = _layer_results(acc, raw_sizes)
    if sanity_check and reader.sanity_x:
        _add_sanity(out_layers, network, layers, torch.stack(reader.sanity_x).to(device), method, sanity_mode, seed)
    result = _result(method, gate_layer, precision, tolerances, out_layers, reader, original_size, start)
    log.info("CAM localization: %d positive (%d with mask), %d negative slices in %.1f s; best layer %s",
             reader.n_pos, reader.n_pos_mask, reader.n_neg, result["seconds"], result["best_layer"])
    return result


def _loader(dataset: Sequence, max_negative: int | None, batch_size: int,
            num_workers: int) -> torch.utils.data.DataLoader:
    """Batches of the samples to explain, in dataset order (negatives thinned to ``max_negative`` where cheap)."""
    indices = _select_indices(len(dataset), _cheap_labels(dataset), max_negative)
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
    )


def _layer_results(acc: dict[str, _LayerAccumulator], raw_sizes: dict[str, list[int]]) -> dict[str, dict]:
    """Each layer's metrics with its raw map size; "sanity" None until `_add_sanity` sets it."""
    out_layers: dict[str, dict] = {}
    for layer, layer_acc in acc.items():
        metrics = layer_acc.summary()
        metrics["raw_map_size"] = raw_sizes.get(layer)
        metrics["sanity"] = None
        out_layers[layer] = metrics
    return out_layers


def _result(method: str, gate_layer: str | None, precision: str, tolerances: list[float], out_layers: dict[str, dict],
            reader: _SampleReader, original_size: Sequence[int] | None, start: float) -> dict:
    """The JSON-ready result of `evaluate_localization` (see its docstring); ``start``: its perf_counter start."""
    key = _tolerance_key(tolerances)
    return {
        "method": method,
        "gate_layer": gate_layer,
        "gate_method": GATE_METHOD if gate_layer is not None else None,
        "precision": precision,
        "class_idx": POSITIVE_CLASS,
        "tolerances_mm": tolerances,
        "layers": out_layers,
        "n_slices": reader.n_pos + reader.n_neg,
        "n_positive": reader.n_pos,
        "n_positive_with_mask": reader.n_pos_mask,
        "n_negative": reader.n_neg,
        "best_layer": _best_layer(out_layers, key),
        "best_layer_by": f"pointing_game/{key}/hit_rate",
        "spacing": "pixel_spacing * original_size / image size"
        if original_size is not None
        else "pixel_spacing as given (image grid)",
        "seconds": round(time.perf_counter() - start, 3),
    }


def _checked_arguments(layers: str | Sequence[str], method: str, precision: str, sanity_mode: str, batch_size: int,
                       tolerances_mm: Sequence[float], max_negative: int | None,
                       dataset: Sequence) -> tuple[list[str], list[float]]:
    """The layer names as a list and the tolerances as floats; InputError for the first bad argument."""
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise InputError("layers", "give at least one layer name")
    if len(set(layers)) != len(layers):
        raise InputError("layers", f"duplicate layer names in {layers}")
    if method not in METHODS:
        raise InputError(method, f"unknown CAM method; choose one of {', '.join(METHODS)}")
    if precision not in PRECISIONS:
        raise InputError(precision, f"unknown precision; choose one of {', '.join(PRECISIONS)}")
    if sanity_mode not in ("cascade", "full"):
        raise InputError(sanity_mode, "unknown sanity_mode; choose 'cascade' or 'full'")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError("batch_size", f"must be a positive integer, got {batch_size!r}")
    tolerances = [float(t) for t in tolerances_mm]
    if not tolerances or any(not math.isfinite(t) or t < 0 for t in tolerances):
        raise InputError("tolerances_mm", f"expected one or more tolerances >= 0 mm, got {tolerances_mm}")
    if len(set(tolerances)) != len(tolerances):
        raise InputError("tolerances_mm", f"duplicate tolerances in {tolerances_mm}")
    if max_negative is not None and (not isinstance(max_negative, int) or max_negative < 0):
        raise InputError("max_negative", f"must be None or an integer >= 0, got {max_negative!r}")
    if len(dataset) == 0:
        raise InputError("dataset", "is empty")
    return layers, tolerances


def _device_of(network: nn.Module) -> torch.device:
    """The device of the network's first parameter (CPU for a network without parameters)."""
    param = next(unwrap_model(network).parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@dataclass
class _Slice:
    """One slice to explain: image (C,H,W), label, and for a positive slice with a non-empty mask the mask, the
    pixel spacing of the image grid and the candidate pixels (None otherwise)."""

    image: torch.Tensor
    label: int
    mask: np.ndarray | None
    spacing: tuple[float, float] | None
    candidates: np.ndarray | None


@dataclass
class _SampleReader:
    """Reads samples into `_Slice` objects, counting positive (with mask) and negative slices and keeping the first
    ``sanity_samples`` positive images with a mask for the sanity check."""

    image_key: str
    label_key: str
    mask_key: str
    spacing_key: str
    candidates_key: str
    original_size: Sequence[int] | None
    max_negative: int | None
    sanity_samples: int
    n_pos: int = 0
    n_pos_mask: int = 0
    n_neg: int = 0
    sanity_x: list[torch.Tensor] = field(default_factory=list)

    def read(self, item: Mapping[str, Any], k: int) -> _Slice | None:
        """Sample ``item`` (``k``-th of its batch) as a `_Slice`; None for a negative beyond ``max_negative``."""
        for key in (self.image_key, self.label_key):
            if key not in item:
                raise InputError(self._where(item, k), f"missing {key!r}")
        label = _label_of(item[self.label_key])
        if label != POSITIVE_CLASS:
            if self.max_negative is not None and self.n_neg >= self.max_negative:
                return None
            self.n_neg += 1
        else:
            self.n_pos += 1
        img = torch.as_tensor(_to_numpy(item[self.image_key]), dtype=torch.float32)
        if img.ndim != 3:
            raise InputError("image", f"expected (C,H,W), got shape {tuple(img.shape)}")
        mask = candidate = spacing = None
        if label == POSITIVE_CLASS and item.get(self.mask_key) is not None:
            m = _to_numpy(item[self.mask_key]).reshape(-1, *img.shape[1:])[0] > 0
            if m.any():
                mask = m
                if item.get(self.candidates_key) is not None:
                    candidate = _to_numpy(item[self.candidates_key]).reshape(-1, *img.shape[1:])[0] > 0
                self.n_pos_mask += 1
                if self.spacing_key not in item:
                    raise InputError(self._where(item, k),
                                     f"missing {self.spacing_key!r} (row, column mm) needed for the mm tolerances")
                size = item.get("field_size", item.get("original_size", self.original_size))
                spacing = resized_spacing(item[self.spacing_key], img.shape[1:], size)
                if len(self.sanity_x) < self.sanity_samples:
                    self.sanity_x.append(img)
        return _Slice(img, label, mask, spacing, candidate)

    @staticmethod
    def _where(item: Mapping[str, Any], k: int) -> str:
        """How an error names the sample: scan id / slice index."""
        return f"sample {item.get('scan_id', '?')}/{item.get('slice_index', k)}"


def _accumulate(results: Mapping[str, Any], slices: list[_Slice], acc: dict[str, _LayerAccumulator],
                raw_sizes: dict[str, list[int]]) -> None:
    """Add one batch's CAM results: every slice's peak, and the localization metrics of slices with a mask."""
    for layer, res in results.items():
        raw_sizes.setdefault(layer, list(res.raw.shape[2:]))
        peaks = res.peak.cpu().numpy().astype(np.float64)
        a = acc[layer]
        up = None
        for i, s in enumerate(slices):
            (a.pos_peaks if s.label == POSITIVE_CLASS else a.neg_peaks).append(float(peaks[i]))
            if s.mask is not None:
                if up is None:
                    up = res.upsampled[:, 0].cpu().numpy()
                a.add_positive(up[i], s.mask, s.spacing, s.candidates)


def _add_sanity(out_layers: dict[str, dict], network: nn.Module, layers: list[str], xs: torch.Tensor, method: str,
                sanity_mode: str, seed: int) -> None:
    """Set each layer's "sanity" entry: rank correlations with the maps after weight randomisation."""
    rhos = randomisation_sanity(network, layers, xs, POSITIVE_CLASS, method=method, mode=sanity_mode, seed=seed)
    for layer in layers:
        steps = {name: _json_float(v) for name, v in rhos[layer].items()}
        out_layers[layer]["sanity"] = {
            "mode": sanity_mode,
            "n_samples": int(xs.shape[0]),
            "rho": steps,
            # after the last step every parameter (cascade: every block) is randomised
            "rho_final": next(reversed(steps.values())) if steps else None,
        }


def _scalars(result: dict) -> dict[str, float]:
    """Flat ``localization/{layer}/{name}`` scalars of a result (missing/None values left out)."""
    out: dict[str, float] = {}
    for layer, m in result.get("layers", {}).items():
        values: dict[str, Any] = {}
        for key, pg in m.get("pointing_game", {}).items():
            values[f"pointing_{key}"] = pg.get("hit_rate")
            values[f"pointing_{key}_chance"] = pg.get("chance")
            values[f"pointing_{key}_lift"] = pg.get("lift")
        for key, pg in (m.get("pointing_game_calcium") or {}).items():
            values[f"pointing_calcium_{key}"] = pg.get("hit_rate")
            values[f"pointing_calcium_{key}_chance"] = pg.get("chance")
        ebpg = m.get("energy_pointing_game", {})
        values["ebpg"] = ebpg.get("mean")
        values["ebpg_lift"] = ebpg.get("lift")
        values["otsu_iou"] = m.get("otsu", {}).get("iou")
        values["otsu_dice"] = m.get("otsu", {}).get("dice")
        values["auprc"] = m.get("auprc", {}).get("mean")
        values["auprc_lift"] = m.get("auprc", {}).get("lift")
        values["peak_auc"] = (m.get("peak") or {}).get("auc")
        sanity = m.get("sanity") or {}
        values["sanity_rho"] = sanity.get("rho_final")
        for name, v in values.items():
            if v is not None and math.isfinite(float(v)):
                out[f"localization/{layer}/{name}"] = float(v)
    return out


def write_localization_report(
    result: dict, out_dir: str | Path, summary_writer: SummaryWriter | None = None, step: int = 0
) -> Path:
    """Write ``out_dir/localization.json`` atomically; return its path.

    With a TensorBoard ``summary_writer`` also writes, at ``step``, the scalars ``localization/{layer}/{name}``
    for name in pointing_{t}mm (hit rate; e.g. pointing_3mm), pointing_{t}mm_chance, pointing_{t}mm_lift, ebpg,
    ebpg_lift, otsu_iou, otsu_dice, auprc, auprc_lift, peak_auc, sanity_rho (final randomisation correlation),
    leaving out metrics that are None. The writer is flushed, not closed.
    """
    path = write_json(Path(out_dir) / "localization.json", _sanitise(result))
    if summary_writer is not None:
        for tag, value in _scalars(result).items():
            summary_writer.add_scalar(tag, value, step)
        summary_writer.flush()
    return path


def _sanitise(value: Any) -> Any:
    """Replace non-finite floats by None so the file is strict JSON."""
    if isinstance(value, dict):
        return {k: _sanitise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitise(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return _json_float(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value
