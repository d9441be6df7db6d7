"""The decision thresholds saved beside a checkpoint: what they hold, how they are written, read and checked.

A checkpoint is only used for inference together with its ``thresholds.json`` (written by
:func:`coronary_calcium.inference.calibration.calibrate`): the slice-probability and CAM thresholds, the CAM layer
and method, the preprocessing and scoring parameters the thresholds were chosen with, and the SHA-256 of the
checkpoint they belong to. A checkpoint without that file, or with one written for other weights, is refused:
thresholds are never guessed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coronary_calcium.data.transforms import check_field_of_view, check_hu_windows
from coronary_calcium.errors import InputError
from coronary_calcium.explain.cam import METHODS
from coronary_calcium.report.files import write_json
from coronary_calcium.scoring.agatston import ScoringConfig

THRESHOLDS_FILE = "thresholds.json"
CHECKPOINT_FILE = "model.pt"
# 2: several HU windows (hu_windows) instead of one (hu_window); 3: field_of_view_mm and cam_gate_layer (absent
# before: None, no crop and no gating)
THRESHOLDS_VERSION = 3
MISSING = "thresholds missing: run coronary-calcium calibrate / evaluate first"
CAM_SCORES = ("normalised", "raw")
CAM_POOLINGS = ("max", "mean")  # a candidate's CAM score: the maximum or the mean of the map over its pixels
# ScoringConfig.to_dict() adds these derived values; they are not constructor arguments.
_DERIVED_SCORING_KEYS = ("threshold_hu_used", "weight_cutpoints_hu")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scoring_config_from_dict(values: dict[str, Any]) -> ScoringConfig:
    """The `ScoringConfig` of a ``ScoringConfig.to_dict()`` result (derived keys ignored, unknown keys refused)."""
    names = {f.name for f in dataclasses.fields(ScoringConfig)}
    unknown = sorted(set(values) - names - set(_DERIVED_SCORING_KEYS))
    if unknown:
        raise InputError("scoring", f"unknown scoring settings {unknown}; known: {sorted(names)}")
    return ScoringConfig(**{k: v for k, v in values.items() if k in names})


@dataclass
class Thresholds:
    """Decision rule of one checkpoint: a candidate lesion (2D component >= the HU threshold, >= the minimum area)
    counts as coronary calcium when its slice's probability >= ``t_slice`` and its CAM score >= ``t_cam``.

    cam_score: "normalised" (per-slice min-max Grad-CAM in [0, 1]) or "raw" (un-normalised map strength),
    the maximum over the lesion's pixels on the original matrix.
    """

    network_name: str
    checkpoint: str
    checkpoint_sha256: str
    t_slice: float
    t_cam: float
    cam_layer: str
    cam_method: str = "gradcam"
    cam_score: str = "normalised"
    cam_pooling: str = "max"
    cam_gate_layer: str | None = None  # the CAM is gated by this shallow layer's LayerCAM (explain.cam); None: not
    hu_windows: tuple[tuple[float, float], ...] = ((-250.0, 950.0), (130.0, 630.0))
    image_size: tuple[int, int] = (256, 256)
    in_channels: int | None = None  # one channel per HU window; None: len(hu_windows)
    field_of_view_mm: float | None = None  # slices centre-cropped / padded to this many mm first; None: not
    scoring: dict[str, Any] = field(default_factory=lambda: ScoringConfig().to_dict())
    validation: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    version: int = THRESHOLDS_VERSION

    def __post_init__(self) -> None:
        self.hu_windows = check_hu_windows(self.hu_windows)
        self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise InputError("image_size", f"must be two positive sizes, got {self.image_size}")
        self.field_of_view_mm = check_field_of_view(self.field_of_view_mm)
        if self.in_channels is None:
            self.in_channels = len(self.hu_windows)
        if self.in_channels != len(self.hu_windows):
            raise InputError("in_channels", f"must equal the number of HU windows ({len(self.hu_windows)}: one "
                             f"channel per window), got {self.in_channels}")
        if self.cam_method not in METHODS:
            raise InputError("cam_method", f"must be one of {list(METHODS)}, got {self.cam_method!r}")
        if self.cam_score not in CAM_SCORES:
            raise InputError("cam_score", f"must be one of {list(CAM_SCORES)}, got {self.cam_score!r}")
        if self.cam_pooling not in CAM_POOLINGS:
            raise InputError("cam_pooling", f"must be one of {list(CAM_POOLINGS)}, got {self.cam_pooling!r}")
        for name in ("t_slice", "t_cam"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(name, f"must be a number, got {value!r}")
            setattr(self, name, float(value))
        if self.scoring_config().is_3d:
            raise InputError("scoring", "candidate lesions are 2D components per axial slice: use a '2d-*' "
                             "connectivity")

    def scoring_config(self) -> ScoringConfig:
        """The scoring rules (HU threshold, minimum area, ...) the candidates are found and scored with."""
        return scoring_config_from_dict(self.scoring)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hu_windows"] = [list(w) for w in self.hu_windows]
        out["image_size"] = list(self.image_size)
        out["preprocessing"] = {
            "transforms": [
                "EnsureTyped(dtype=float32)",
                *([f"FieldOfViewd(field_of_view_mm={self.field_of_view_mm})"] if self.field_of_view_mm else []),
                f"MaxPoolResized(spatial_size={list(self.image_size)})",
                f"HUWindows(windows={[list(w) for w in self.hu_windows]})",
            ],
            "hu_windows": [list(w) for w in self.hu_windows],
            "image_size": list(self.image_size),
            "field_of_view_mm": self.field_of_view_mm,
            "in_channels": self.in_channels,
        }
        out["rule"] = ("a candidate lesion counts when slice_probability >= t_slice and cam_score >= t_cam "
                       f"(cam_score: {self.cam_pooling} of the CAM over the lesion's pixels)")
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Thresholds:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in ("network_name", "checkpoint", "checkpoint_sha256", "t_slice", "t_cam",
                                     "cam_layer") if n not in values)
        if missing:
            raise InputError("thresholds", f"missing fields {missing}")
        if "hu_window" in values and "hu_windows" not in values:  # version 1 files: one window, one channel
            values = {**values, "hu_windows": [values["hu_window"]]}
        return cls(**{k: v for k, v in values.items() if k in names})


def thresholds_path(path: str | Path) -> Path:
    """``path`` itself for a file, ``path/thresholds.json`` for a checkpoint folder."""
    path = Path(path)
    return path / THRESHOLDS_FILE if path.is_dir() or not path.suffix else path


def save_thresholds(thresholds: Thresholds, path: str | Path) -> Path:
    """Write ``thresholds`` as JSON (atomically) to ``path`` (a file, or a checkpoint folder)."""
    return write_json(thresholds_path(path), thresholds.to_dict())


def load_thresholds(path: str | Path, checkpoint: str | Path | None = None) -> Thresholds:
    """Read ``thresholds.json`` (``path``: the file or its checkpoint folder) and check it belongs to ``checkpoint``.

    ``checkpoint`` defaults to the file named in the thresholds, beside them. A missing file, a checkpoint whose
    SHA-256 differs from the recorded one, or a missing checkpoint raise `InputError` (thresholds are never guessed).
    """
    path = thresholds_path(path)
    if not path.is_file():
        raise InputError(path, MISSING)
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"{MISSING} (the file is not valid JSON: {exc})") from None
    if not isinstance(values, dict):
        raise InputError(path, f"{MISSING} (the file does not hold a JSON object)")
    try:
        thresholds = Thresholds.from_dict(values)
    except InputError as exc:
        raise InputError(path, f"{MISSING} (unusable thresholds: {exc})") from None
    checkpoint = Path(checkpoint) if checkpoint is not None else path.parent / thresholds.checkpoint
    if not checkpoint.is_file():
        raise InputError(checkpoint, "checkpoint not found")
    digest = file_sha256(checkpoint)
    if digest != thresholds.checkpoint_sha256:
        raise InputError(
            path,
            f"{MISSING}: they were chosen for checkpoint {thresholds.checkpoint} with sha256 "
            f"{thresholds.checkpoint_sha256[:12]}..., but {checkpoint} has sha256 {digest[:12]}...",
        )
    return thresholds
