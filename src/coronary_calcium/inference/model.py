"""A trained slice classifier ready for inference: preprocessing, batched slice probabilities and CAM maps.

The preprocessing is the training pipeline's deterministic part (``bundle/configs/train.json``,
``deterministic_transforms`` and ``window_transforms``, the same transform classes in the same order):
``EnsureTyped`` (float32), ``FieldOfViewd`` (crop / pad to a field of view in mm, centred on the image or on the
heart, when the model was trained with one), ``MaxPoolResized`` and ``HUWindowsd`` (the HU windows as channels). The
inference bundle (``inference.json``) builds it as ``preprocessing``; without a config `build_preprocessing` builds
it from the parameters saved in ``thresholds.json``. A whole volume goes through it at once with its slices as
channels: every transform acts per slice, so each slice comes out exactly as the training pipeline makes it (a test
checks this against train.json).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coronary_calcium.data.transforms import (
    AIR_HU,
    FieldOfViewd,
    HUWindowsd,
    MaxPoolResized,
    check_centred_field,
    check_hu_windows,
    field_of_view_box,
    uncrop_from_box,
)
from coronary_calcium.errors import InputError
from coronary_calcium.explain.cam import CAM, gated_name
from coronary_calcium.inference.thresholds import (
    CAM_POOLINGS,
    CHECKPOINT_FILE,
    Thresholds,
    load_thresholds,
    thresholds_path,
)
from coronary_calcium.networks import create_network, fuse_batch_norm, load_checkpoint_weights, network_spec
from coronary_calcium.train.precision import PRECISIONS, PrecisionInferer, default_precision, prepare_network

POSITIVE_CLASS = 1


@functools.lru_cache(maxsize=8)
def build_preprocessing(
    hu_windows: tuple[tuple[float, float], ...], image_size: tuple[int, int], field_of_view_mm: float | None = None
) -> Any:
    """train.json's deterministic and window transforms for key "image": (Z, H, W) HU slices -> (Z * n_windows,
    *image_size), each slice's windows together (as `HUWindows` stacks them; `SliceAnalyzer.preprocess` regroups them
    per slice). With a field of view the sample also needs "pixel_spacing" (row, column mm), and "fov_centre" ((row,
    column) pixels, or None for the image centre)."""
    from monai.transforms import Compose, EnsureTyped

    return Compose([
        EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
        FieldOfViewd(keys="image", field_of_view_mm=field_of_view_mm, values=AIR_HU),
        MaxPoolResized(keys="image", spatial_size=tuple(int(s) for s in image_size)),
        HUWindowsd(keys="image", windows=check_hu_windows(hu_windows)),
        EnsureTyped(keys="image", track_meta=False),
    ])


#: What an inference config builds its network and preprocessing with: each must be the checkpoint's.
BUILT_WITH = ("network_name", "in_channels", "hu_windows", "image_size", "field_of_view_mm", "field_of_view_centre")


def _cli_value(value: Any) -> str:
    value = json.loads(json.dumps(value))  # tuples -> lists
    return json.dumps(value, separators=(",", ":")) if isinstance(value, list) else str(value)


def check_built_with(thresholds: Thresholds, built_with: Mapping[str, Any], source: str | Path) -> None:
    """Raise `InputError` naming each value of ``built_with`` (keys of `BUILT_WITH`: what a config built the network
    and preprocessing with) that differs from the checkpoint's ``thresholds`` (read from ``source``)."""
    unknown = sorted(set(built_with) - set(BUILT_WITH))
    if unknown:
        raise InputError("built_with", f"unknown keys {unknown}; known: {list(BUILT_WITH)}")
    if "network_name" in built_with:
        network_spec(built_with["network_name"])  # an unknown name: the valid ones listed
    try:
        config = dataclasses.replace(thresholds, **built_with)  # normalised and checked as the file's own values are
    except InputError as exc:
        raise InputError("inference config", str(exc)) from None
    wrong = [k for k in built_with if getattr(config, k) != getattr(thresholds, k)]
    if wrong:
        found = "; ".join(f"{k} {_cli_value(getattr(config, k))} (the checkpoint's: "
                          f"{_cli_value(getattr(thresholds, k))})" for k in wrong)
        fix = " ".join(f"--{k} {_cli_value(getattr(thresholds, k))}" for k in wrong)
        raise InputError(source, f"the inference config builds the network and preprocessing with {found}: not "
                         f"what this checkpoint was trained with; set the checkpoint's values (e.g. {fix})")


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class SliceAnalyzer:
    """Classifier + CAM over the axial slices of a volume.

    ``probabilities(hu, pixel_spacing)`` gives P(coronary calcium) per slice; ``cam_maps(hu, slices,
    pixel_spacing)`` the positive class's CAM of the chosen slices at ``cam_layer``, resized (bilinear) to the field
    of view's grid and placed back on the original matrix (0 outside the field), per-slice min-max
    normalised (``cam_score="normalised"``) or raw. With ``field_of_view_centre="heart"`` the field is centred on
    the ``centre`` the caller passes (the heart's, from `find_anatomy`; None: the image centre). Batches of
    ``batch_size`` slices run under autocast at ``precision`` ("bf16" on CPUs/GPUs that support it, see
    `default_precision`), channels_last when asked. ``preprocessing``: the transform of a sample dict (e.g. an
    inference config's ``preprocessing``); None: `build_preprocessing` of ``hu_windows``, ``image_size`` and
    ``field_of_view_mm``.
    """

    network: nn.Module
    hu_windows: tuple[tuple[float, float], ...]
    image_size: tuple[int, int]
    cam_layer: str
    field_of_view_mm: float | None = None
    field_of_view_centre: str = "image"
    cam_method: str = "gradcam"
    cam_gate_layer: str | None = None
    cam_score: str = "normalised"
    cam_pooling: str = "max"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    channels_last: bool = False
    batch_size: int = 16
    preprocessing: Callable[[dict], dict] | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError("precision", f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError("batch_size", f"must be a positive integer, got {self.batch_size!r}")
        if self.cam_pooling not in CAM_POOLINGS:  # before any forward pass, not after the first volume
            raise InputError("cam_pooling", f"must be one of {list(CAM_POOLINGS)}, got {self.cam_pooling!r}")
        self.hu_windows = check_hu_windows(self.hu_windows)
        self.field_of_view_mm, self.field_of_view_centre = check_centred_field(
            self.field_of_view_mm, self.field_of_view_centre)
        self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
        self.network = prepare_network(self.network, self.device, self.channels_last).eval()
        self._inferer = PrecisionInferer(self.precision, self.channels_last)
        self._cam: CAM | None = None

    # -- building blocks ------------------------------------------------------------------------------------

    def _spacing(self, pixel_spacing: Sequence[float] | None) -> list[float] | None:
        if self.field_of_view_mm is None:
            return None
        if pixel_spacing is None:
            raise InputError("pixel_spacing", f"the model crops a {self.field_of_view_mm:g} mm field of view: give "
                             "the slices' (row, column) pixel spacing")
        return [float(v) for v in np.asarray(pixel_spacing, dtype=np.float64).reshape(-1)[-2:]]

    def preprocess(self, hu: np.ndarray, pixel_spacing: Sequence[float] | None = None,
                   centre: Sequence[float] | None = None) -> torch.Tensor:
        """(Z, H, W) HU -> (Z, n_windows, *image_size) float32 network input (a plain tensor), on the CPU.
        ``pixel_spacing`` (row, column mm; a (z, row, column) spacing works too) is needed with a field of view;
        ``centre`` ((row, column) pixels) centres it, None on the image."""
        image = np.asarray(hu, dtype=np.float32)
        sample = {"image": image, "pixel_spacing": self._spacing(pixel_spacing), "fov_centre": centre}
        transform = self.preprocessing
        if transform is None:
            transform = build_preprocessing(self.hu_windows, self.image_size, self.field_of_view_mm)
        x = transform(sample)["image"]
        if hasattr(x, "as_tensor"):  # a MetaTensor would route every network op through MONAI's meta handling
            x = x.as_tensor()
        x = torch.as_tensor(x).float()
        shape = (image.shape[0], len(self.hu_windows), *self.image_size)
        if x.numel() != np.prod(shape) or tuple(x.shape[-2:]) != self.image_size:
            raise InputError("preprocessing", f"gives {tuple(x.shape)} for {shape[0]} slices; the network takes "
                             f"{shape[1]} HU windows of {self.image_size} per slice")
        return x.reshape(shape)

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _batches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x[i : i + self.batch_size] for i in range(0, x.shape[0], self.batch_size)]

    def _cam_object(self) -> CAM:
        if self._cam is None:  # hooks registered once per model
            self._cam = CAM(self.network, [self.cam_layer], self.cam_method, gate_layer=self.cam_gate_layer)
        return self._cam

    @property
    def cam_key(self) -> str:
        """The CAM result used: the layer's map, or its gated map with a ``cam_gate_layer``."""
        return gated_name(self.cam_layer, self.cam_gate_layer)

    def close(self) -> None:
        """Remove the CAM hooks."""
        if self._cam is not None:
            self._cam.remove()
            self._cam = None

    # -- per volume ---------------------------------------------------------------------------------------

    def probabilities(self, hu: np.ndarray, x: torch.Tensor | None = None,
                      pixel_spacing: Sequence[float] | None = None,
                      centre: Sequence[float] | None = None) -> np.ndarray:
        """P(positive) per slice (float64, length Z); ``x`` = ``preprocess(hu, pixel_spacing, centre)`` when already
        made."""
        x = self.preprocess(hu, pixel_spacing, centre) if x is None else x
        out = []
        with torch.inference_mode():
            for batch in self._batches(x):
                logits = self._inferer(batch.to(self.device), self.network)
                out.append(torch.softmax(logits.float(), dim=1)[:, POSITIVE_CLASS].cpu())
        if not out:
            return np.zeros(0)
        return torch.cat(out).double().numpy()

    def probabilities_and_cams(self, hu: np.ndarray, slices: Sequence[int] | None = None,
                               x: torch.Tensor | None = None,
                               pixel_spacing: Sequence[float] | None = None,
                               centre: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """P(positive) per slice and the positive class's CAM at the network's input size, from one pass.

        The CAM's forward pass gives the logits too, so classifying and explaining ``slices`` (default: all)
        costs about one forward pass plus the backward pass down to the CAM layer. Returns the probabilities of
        ``slices`` and their maps (len(slices), *image_size), normalised or raw per ``cam_score``.
        """
        x = self.preprocess(hu, pixel_spacing, centre) if x is None else x
        if slices is not None:
            x = x[[int(k) for k in slices]]
        if x.shape[0] == 0:
            return np.zeros(0), np.zeros((0, *self.image_size), dtype=np.float32)
        cam = self._cam_object()
        probs, maps = [], []
        for batch in self._batches(x):
            batch = batch.to(self.device)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                result = cam(batch, POSITIVE_CLASS)[self.cam_key]
            probs.append(torch.softmax(result.logits.float(), dim=1)[:, POSITIVE_CLASS].cpu())
            m = result.normalised if self.cam_score == "normalised" else result.upsampled
            maps.append(m[:, 0].float().cpu())
        return torch.cat(probs).double().numpy(), torch.cat(maps).numpy().astype(np.float32, copy=False)

    def field_window(self, shape: Sequence[int], pixel_spacing: Sequence[float] | None = None,
                     centre: Sequence[float] | None = None) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """The network's field of view on an (H, W) slice as ((first row, last row + 1), (first column, last column
        + 1)), clipped to the slice: where `to_original` places the maps. None without a field of view."""
        spacing = self._spacing(pixel_spacing)
        if spacing is None:
            return None
        h, w = int(shape[-2]), int(shape[-1])
        (nr, orr), (nc, oc) = field_of_view_box((h, w), spacing, self.field_of_view_mm, centre)
        return (max(orr, 0), min(orr + nr, h)), (max(oc, 0), min(oc + nc, w))

    def to_original(self, maps: np.ndarray, shape: Sequence[int], pixel_spacing: Sequence[float] | None = None,
                    centre: Sequence[float] | None = None) -> np.ndarray:
        """Maps at the network's input size resized (bilinear) to the field of view's grid (centred as in
        `preprocess`), or to the whole (H, W) matrix without one, and placed on the original matrix (0 outside the
        field)."""
        h, w = int(shape[-2]), int(shape[-1])
        spacing = self._spacing(pixel_spacing)
        box = None if spacing is None else field_of_view_box((h, w), spacing, self.field_of_view_mm, centre)
        grid = (h, w) if box is None else (box[0][0], box[1][0])
        m = torch.as_tensor(np.asarray(maps, dtype=np.float32))
        if m.shape[0] == 0:
            return np.zeros((0, h, w), dtype=np.float32)
        if tuple(m.shape[1:]) != grid:
            m = F.interpolate(m[:, None], size=grid, mode="bilinear", align_corners=False)[:, 0]
            m = m.clamp(0.0, 1.0) if self.cam_score == "normalised" else m.clamp_min(0.0)
        out = m.numpy()
        return out if box is None else uncrop_from_box(out, (h, w), box)

    def cam_maps(self, hu: np.ndarray, slices: Sequence[int], x: torch.Tensor | None = None,
                 pixel_spacing: Sequence[float] | None = None, centre: Sequence[float] | None = None) -> np.ndarray:
        """CAM of the positive class on the given slices, (len(slices), H, W) float32 on the original matrix."""
        slices = [int(k) for k in slices]
        _, maps = self.probabilities_and_cams(hu, slices, x, pixel_spacing, centre)
        return self.to_original(maps, np.shape(hu), pixel_spacing, centre)


@dataclass
class InferenceModel:
    """A checkpoint with its thresholds: what `infer_scan` needs."""

    analyzer: SliceAnalyzer
    thresholds: Thresholds
    checkpoint: Path
    thresholds_file: Path

    @property
    def network_name(self) -> str:
        return self.thresholds.network_name

    def provenance(self) -> dict[str, Any]:
        """Model and threshold facts recorded in every result."""
        t = self.thresholds
        return {
            "network_name": t.network_name,
            "checkpoint": str(self.checkpoint),
            "checkpoint_sha256": t.checkpoint_sha256,
            "thresholds_file": str(self.thresholds_file),
            "thresholds_created": t.created,
            "t_slice": t.t_slice,
            "t_cam": t.t_cam,
            "decision": t.decision,
            "t_lesion": t.t_lesion,
            "lesion_pooling": None if t.lesion_classifier is None else t.lesion_pooling,
            "lesion_features": None if t.lesion_classifier is None else list(t.lesion_classifier.features),
            "artery_model": None if t.artery_model is None else list(t.artery_model.arteries),
            "cam_layer": t.cam_layer,
            "cam_method": t.cam_method,
            "cam_gate_layer": t.cam_gate_layer,
            "cam_score": t.cam_score,
            "cam_pooling": t.cam_pooling,
            "hu_windows": [list(w) for w in t.hu_windows],
            "image_size": list(t.image_size),
            "field_of_view_mm": t.field_of_view_mm,
            "field_of_view_centre": t.field_of_view_centre,
            "validation_f1": t.validation.get("f1"),
            "precision": self.analyzer.precision,
            "device": str(self.analyzer.device),
        }

    def close(self) -> None:
        self.analyzer.close()


def load_model(
    ckpt_dir: str | Path,
    *,
    checkpoint: str | Path = CHECKPOINT_FILE,
    network: nn.Module | None = None,
    preprocessing: Callable[[dict], dict] | None = None,
    built_with: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    precision: str | None = None,
    channels_last: bool | None = None,
    batch_size: int = 16,
    rule: str | None = None,
) -> InferenceModel:
    """Load ``<ckpt_dir>/<checkpoint>`` and its ``thresholds.json`` (checked against the checkpoint's sha256).

    ``rule``: "classifier" or "slice-cam" to choose the decision rule (`Thresholds.with_rule`); None: the file's.

    ``network`` / ``preprocessing``: an already built network of the thresholds' architecture and the preprocessing
    (an inference config's ``network`` and ``preprocessing``); the network's weights are replaced by the checkpoint's.
    ``built_with``: the values they were built with (`BUILT_WITH`), each checked against thresholds.json
    (`check_built_with`). ``precision`` defaults to `default_precision` of the device
    ("bf16" where supported), ``channels_last`` to True (oneDNN's convolutions run faster on NHWC, in bf16 and in
    fp32 alike: Inception v3's forward pass 1.4x on a 2-core AVX2 CPU). Its BatchNorm layers are folded into the
    convolutions (`fuse_batch_norm`).
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt = Path(checkpoint)
    if ckpt.parent == Path("."):  # a bare file name lives in ckpt_dir, never in the current folder
        ckpt = ckpt_dir / ckpt
    if not ckpt.is_file():
        raise InputError(ckpt, "checkpoint not found (train the model first)")
    tfile = thresholds_path(ckpt_dir if ckpt_dir.is_dir() else ckpt.parent)
    thresholds = load_thresholds(tfile, ckpt).with_rule(rule)
    if built_with:
        check_built_with(thresholds, built_with, tfile)
    spec = network_spec(thresholds.network_name)
    if network is None:
        network = create_network(spec.name, in_channels=thresholds.in_channels, num_classes=2, for_checkpoint=True)
    load_checkpoint_weights(network, ckpt, spec.name)
    fuse_batch_norm(network.eval())
    dev = _device(device)
    precision = precision or default_precision(dev)
    analyzer = SliceAnalyzer(
        network=network,
        hu_windows=thresholds.hu_windows,
        image_size=thresholds.image_size,
        field_of_view_mm=thresholds.field_of_view_mm,
        field_of_view_centre=thresholds.field_of_view_centre,
        cam_layer=thresholds.cam_layer,
        cam_method=thresholds.cam_method,
        cam_gate_layer=thresholds.cam_gate_layer,
        cam_score=thresholds.cam_score,
        cam_pooling=thresholds.cam_pooling,
        device=dev,
        precision=precision,
        channels_last=True if channels_last is None else bool(channels_last),
        batch_size=batch_size,
        preprocessing=preprocessing,
    )
    return InferenceModel(analyzer=analyzer, thresholds=thresholds, checkpoint=ckpt.resolve(),
                          thresholds_file=tfile.resolve())
