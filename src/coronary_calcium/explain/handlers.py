"""Ignite handler that logs CAM overlays of a fixed panel of slices to TensorBoard after each evaluation epoch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from coronary_calcium.errors import InputError
from coronary_calcium.explain.cam import CAM, METHODS
from coronary_calcium.explain.localization import energy_pointing_game, pointing_game

if TYPE_CHECKING:
    from ignite.engine import Engine
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["CAMPanelHandler", "overlay"]

_CONTOUR_RGB = (0.0, 1.0, 0.0)  # green: distinct from jet/inferno heat colours at high values


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def overlay(
    image: np.ndarray,
    heat: np.ndarray,
    mask: np.ndarray | None = None,
    window: tuple[float, float] | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> np.ndarray:
    """RGB (H,W,3) float image in [0,1]: windowed gray ``image`` (H,W), ``heat`` (H,W in [0,1]) blended, mask contour.

    The blend weight is ``alpha * heat`` per pixel, so a weak map leaves the slice visible and a strong one covers it.
    """
    import matplotlib

    img = image.astype(np.float64)
    lo, hi = window if window is not None else (float(img.min()), float(img.max()))
    gray = np.clip((img - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(img)
    h = np.clip(heat.astype(np.float64), 0, 1)
    colour = matplotlib.colormaps[cmap](h)[..., :3]
    w = (alpha * h)[..., None]
    rgb = (1 - w) * gray[..., None] + w * colour
    if mask is not None:
        m = mask > 0
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = _CONTOUR_RGB
    return rgb


def _grid(tiles: list[np.ndarray], ncol: int, pad: int = 2) -> np.ndarray:
    h, w, _ = tiles[0].shape
    nrow = -(-len(tiles) // ncol)
    out = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y : y + h, x : x + w] = tile
    return out


class CAMPanelHandler:
    """Log CAM overlays and peak strengths of a fixed slice panel to TensorBoard at each ``EPOCH_COMPLETED``.

    Attach to an evaluator. The panel is a sequence of dicts with "image" (C,H,W), "label" (int), "mask"
    (1,H,W), optional "name" and "spacing" (row, col mm); or ``dataset`` + ``indices`` yielding such dicts.
    Per layer it writes the image grid ``{tag_prefix}/{layer}`` (tiles in panel order) and the scalars
    ``{tag_prefix}/{layer}/peak_pos`` and ``/peak_neg`` (mean raw CAM peak on positive / negative slices),
    plus ``/hit_rate`` (pointing game within ``tolerance_mm``) and ``/ebpg`` on positive slices with masks.
    The CAM explains ``class_idx`` (default 1, calcium) on every slice so peaks compare across slices; heat maps
    share one scale per layer over the panel (``scale="panel"``) so weak maps look weak, or ``scale="slice"``.
    Only rank 0 works; hooks are registered once; the model's mode and gradients are left as they were.
    """

    def __init__(
        self,
        network: nn.Module,
        layers: Sequence[str],
        panel: Sequence[dict] | None = None,
        dataset: Sequence[dict] | None = None,
        indices: Sequence[int] | None = None,
        summary_writer: SummaryWriter | None = None,
        log_dir: str = "./runs",
        method: str = "gradcam",
        tag_prefix: str = "cam",
        window: Sequence[float] | None = None,
        global_step_transform: Callable[[int], int] = lambda x: x,
        class_idx: int | None = 1,
        tolerance_mm: float = 3.0,
        alpha: float = 0.5,
        cmap: str = "jet",
        scale: str = "panel",
        ncol: int = 8,
        interval: int = 1,
        image_key: str = "image",
        label_key: str = "label",
        mask_key: str = "mask",
    ):
        if (panel is None) == (dataset is None):
            raise InputError("panel", "give either panel or dataset (+ indices)")
        if method not in METHODS:
            raise InputError(method, f"unknown CAM method; choose one of {', '.join(METHODS)}")
        if scale not in ("panel", "slice"):
            raise InputError(scale, "scale must be 'panel' or 'slice'")
        if window is not None and (len(window) != 2 or window[1] <= window[0]):
            raise InputError("window", f"expected (low, high) with low < high, got {window}")
        self.network = network
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        self._panel_src = panel
        self._dataset = dataset
        self._indices = list(indices) if indices is not None else None
        self.summary_writer = summary_writer
        self.log_dir = log_dir
        self.method = method
        self.tag_prefix = tag_prefix
        self.window = tuple(float(v) for v in window) if window is not None else None
        self.global_step_transform = global_step_transform
        self.class_idx = class_idx
        self.tolerance_mm = float(tolerance_mm)
        self.alpha = float(alpha)
        self.cmap = cmap
        self.scale = scale
        self.ncol = int(ncol)
        self.interval = int(interval)
        self.keys = (image_key, label_key, mask_key)
        self._cam: CAM | None = None
        self._panel: dict[str, Any] | None = None
        self._own_writer = False
        self._legend_written = False

    def attach(self, engine: Engine) -> None:
        """Run at every ``interval``-th ``EPOCH_COMPLETED`` of ``engine``."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def _load_panel(self) -> dict[str, Any]:
        image_key, label_key, mask_key = self.keys
        if self._panel_src is not None:
            items = list(self._panel_src)
        else:
            idx = self._indices if self._indices is not None else range(len(self._dataset))
            items = [self._dataset[i] for i in idx]
        if not items:
            raise InputError("panel", "is empty")
        images, labels, masks, names, spacings = [], [], [], [], []
        for i, item in enumerate(items):
            for key in (image_key, label_key):
                if key not in item:
                    raise InputError(f"panel item {i}", f"missing key {key!r}")
            img = torch.as_tensor(_to_numpy(item[image_key]), dtype=torch.float32)
            if img.ndim != 3:
                raise InputError(f"panel item {i}", f"image must be (C,H,W), got shape {tuple(img.shape)}")
            mask = item.get(mask_key)
            m = np.zeros(img.shape[1:], bool) if mask is None else _to_numpy(mask).reshape(img.shape[1:]) > 0
            images.append(img)
            labels.append(int(_to_numpy(item[label_key]).reshape(-1)[0]))
            masks.append(m)
            names.append(str(item.get("name", i)))
            spacings.append(tuple(float(v) for v in _to_numpy(item.get("spacing", (1.0, 1.0))).reshape(-1)[:2]))
        shapes = {tuple(t.shape) for t in images}
        if len(shapes) != 1:
            raise InputError("panel", f"images differ in shape: {sorted(shapes)}")
        return {
            "x": torch.stack(images),
            "labels": np.asarray(labels),
            "masks": masks,
            "names": names,
            "spacings": spacings,
        }

    def _writer(self) -> SummaryWriter:
        if self.summary_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.summary_writer = SummaryWriter(log_dir=self.log_dir)
            self._own_writer = True
        return self.summary_writer

    def close(self) -> None:
        """Close the writer if this handler created it, and remove the CAM hooks."""
        if self._own_writer and self.summary_writer is not None:
            self.summary_writer.close()
            self.summary_writer = None
            self._own_writer = False
        if self._cam is not None:
            self._cam.remove()
            self._cam = None

    def __call__(self, engine: Engine) -> None:
        import ignite.distributed as idist

        if idist.get_rank() != 0:
            return
        if self._panel is None:
            self._panel = self._load_panel()
        if self._cam is None:  # hooks registered once, on the rank that uses them
            self._cam = CAM(self.network, self.layers, self.method)
        step = self.global_step_transform(engine.state.epoch)
        panel = self._panel
        param = next(self.network.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        results = self._cam(panel["x"].to(device), self.class_idx)
        writer = self._writer()
        if not self._legend_written:  # which tile is which: panel order, row-major
            rows = [f"{i}: {n} (label {int(lab)})" for i, (n, lab) in enumerate(zip(panel["names"], panel["labels"]))]
            writer.add_text(f"{self.tag_prefix}/panel", "  \n".join(rows), step)
            self._legend_written = True
        labels = panel["labels"]
        pos, neg = labels == 1, labels == 0
        image0 = panel["x"][:, 0].numpy()
        for layer, res in results.items():
            peaks = res.peak.cpu().numpy()
            up = res.upsampled[:, 0].cpu().numpy()
            if self.scale == "panel":
                top = float(up.max())
                heat = up / top if top > 0 else np.zeros_like(up)
            else:
                heat = res.normalised[:, 0].cpu().numpy()
            tiles = [
                overlay(image0[i], heat[i], panel["masks"][i], self.window, self.alpha, self.cmap)
                for i in range(len(up))
            ]
            grid = _grid(tiles, min(self.ncol, len(tiles)))
            writer.add_image(f"{self.tag_prefix}/{layer}", grid.astype(np.float32), step, dataformats="HWC")
            if pos.any():
                writer.add_scalar(f"{self.tag_prefix}/{layer}/peak_pos", float(peaks[pos].mean()), step)
            if neg.any():
                writer.add_scalar(f"{self.tag_prefix}/{layer}/peak_neg", float(peaks[neg].mean()), step)
            located = [i for i in np.nonzero(pos)[0] if panel["masks"][i].any()]
            if located:
                hits = [
                    pointing_game(up[i], panel["masks"][i], panel["spacings"][i], self.tolerance_mm) for i in located
                ]
                ebpg = [energy_pointing_game(up[i], panel["masks"][i]) for i in located]
                writer.add_scalar(f"{self.tag_prefix}/{layer}/hit_rate", float(np.mean(hits)), step)
                writer.add_scalar(f"{self.tag_prefix}/{layer}/ebpg", float(np.mean(ebpg)), step)
        writer.flush()
