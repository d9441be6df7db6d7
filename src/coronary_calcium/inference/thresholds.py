"""The decision thresholds saved beside a checkpoint: what they hold, how they are written, read and checked.

A checkpoint is only used for inference together with its ``thresholds.json`` (written by
:func:`coronary_calcium.inference.calibration.calibrate`): the lesion classifier with its threshold, the
slice-probability and CAM thresholds, the CAM layer and method, the preprocessing and scoring parameters the
thresholds were chosen with, and the SHA-256 of the checkpoint they belong to. A checkpoint without that file, or
with one written for other weights, is refused: thresholds are never guessed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coronary_calcium.data.transforms import check_centred_field, check_hu_windows
from coronary_calcium.errors import InputError
from coronary_calcium.explain.cam import METHODS
from coronary_calcium.inference.arteries import ArteryModel
from coronary_calcium.inference.lesion_classifier import LesionClassifier, check_lesion_pooling
from coronary_calcium.inference.lesion_features import LESION_FEATURES
from coronary_calcium.report.files import write_json
from coronary_calcium.scoring.agatston import ScoringConfig

THRESHOLDS_FILE = "thresholds.json"
CHECKPOINT_FILE = "model.pt"
# 2: several HU windows (hu_windows) instead of one (hu_window); 3: field_of_view_mm and cam_gate_layer (absent
# before: None, no crop and no gating); 4: lesion_classifier and t_lesion (absent before: the t_slice / t_cam rule);
# 5: lesion_pooling (absent before: "candidate"); 6: field_of_view_centre (absent before: "image") and
# artery_model (absent before: arteries unknown)
THRESHOLDS_VERSION = 6
MISSING = "thresholds missing: run coronary-calcium calibrate / evaluate first"
CAM_SCORES = ("normalised", "raw")
RULES = ("classifier", "slice-cam")  # the decision rules a thresholds file can apply (`Thresholds.with_rule`)
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
    if not isinstance(values, dict):
        raise InputError("scoring", f"must be an object of scoring settings, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(ScoringConfig)}
    unknown = sorted(set(values) - names - set(_DERIVED_SCORING_KEYS))
    if unknown:
        raise InputError("scoring", f"unknown scoring settings {unknown}; known: {sorted(names)}")
    try:
        return ScoringConfig(**{k: v for k, v in values.items() if k in names})
    except InputError as exc:
        raise InputError(f"scoring.{exc.item}", exc.problem) from None
    except (TypeError, ValueError) as exc:  # a setting of the wrong type, e.g. a string where a number goes
        raise InputError("scoring", f"unusable settings ({exc})") from None


_NUMBER = (int, float)
# The JSON type of each field: a file whose field has another type is refused at load, not at the first scan.
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "network_name": ((str,), "a string"), "checkpoint": ((str,), "a string"),
    "checkpoint_sha256": ((str,), "a string"), "cam_layer": ((str,), "a string"),
    "cam_method": ((str,), "a string"), "cam_score": ((str,), "a string"), "cam_pooling": ((str,), "a string"),
    "cam_gate_layer": ((str, type(None)), "a string or null"), "hu_windows": ((list,), "a list of [low, high]"),
    "hu_window": ((list,), "[low, high]"), "image_size": ((list,), "[height, width]"),
    "in_channels": ((int, type(None)), "an integer or null"),
    "field_of_view_mm": ((*_NUMBER, type(None)), "a number or null"), "scoring": ((dict,), "an object"),
    "field_of_view_centre": ((str,), "a string"),
    "lesion_classifier": ((dict, type(None)), "an object or null"), "t_slice": (_NUMBER, "a number"),
    "artery_model": ((dict, type(None)), "an object or null"),
    "t_cam": (_NUMBER, "a number"), "t_lesion": ((*_NUMBER, type(None)), "a number or null"),
    "lesion_pooling": ((str,), "a string"), "validation": ((dict,), "an object"), "created": ((str,), "a string"),
    "version": ((int,), "an integer"),
}


def _check_field_types(values: dict[str, Any]) -> None:
    """Refuse a thresholds field of the wrong JSON type (booleans are not numbers here)."""
    for name, (kinds, what) in _FIELD_TYPES.items():
        if name not in values:
            continue
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise InputError(name, f"must be {what}, got {json.dumps(value)[:60]}")
    size = values.get("image_size")
    if size is not None and (len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in size)):
        raise InputError("image_size", f"must be two positive integers [height, width], got {json.dumps(size)[:60]}")
    version = values.get("version", THRESHOLDS_VERSION)
    if not 1 <= version <= THRESHOLDS_VERSION:
        raise InputError("version", f"{version} is not a thresholds version this software reads (1 to "
                         f"{THRESHOLDS_VERSION}); a newer coronary-calcium wrote it, or it is damaged")


@dataclass
class Thresholds:
    """Decision rule of one checkpoint for a candidate lesion (2D component >= the HU threshold, >= the minimum
    area) on a slice with probability >= ``t_slice``: with a ``lesion_classifier``, it counts as coronary calcium
    when the classifier's probability (from its `lesion_features`), pooled per ``lesion_pooling``
    (`pool_probabilities`: the candidate's own, or its 3D component's area-weighted mean) >= ``t_lesion``; without
    one, when its CAM score >= ``t_cam``. ``t_slice`` also marks a scan's positive slices (overlays, reports).

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
    field_of_view_mm: float | None = None  # slices cropped / padded to this many mm first; None: not
    field_of_view_centre: str = "image"  # that field centred on the image, or on the heart (`find_anatomy`)
    scoring: dict[str, Any] = field(default_factory=lambda: ScoringConfig().to_dict())
    lesion_classifier: LesionClassifier | None = None
    t_lesion: float | None = None
    lesion_pooling: str = "candidate"  # files before version 5 judged each candidate by its own probability
    artery_model: ArteryModel | None = None  # names each kept lesion's artery (inference.arteries); None: unknown
    validation: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    version: int = THRESHOLDS_VERSION

    def __post_init__(self) -> None:
        self.hu_windows = check_hu_windows(self.hu_windows)
        self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise InputError("image_size", f"must be two positive sizes, got {self.image_size}")
        self.field_of_view_mm, self.field_of_view_centre = check_centred_field(
            self.field_of_view_mm, self.field_of_view_centre)
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
        check_lesion_pooling(self.lesion_pooling)
        if self.artery_model is not None and not isinstance(self.artery_model, ArteryModel):
            self.artery_model = ArteryModel.from_dict(self.artery_model)
        if self.artery_model is not None and self.lesion_classifier is None:
            raise InputError("artery_model", "reads the lesion features, which only a lesion classifier computes")
        if self.lesion_classifier is not None and not isinstance(self.lesion_classifier, LesionClassifier):
            self.lesion_classifier = LesionClassifier.from_dict(self.lesion_classifier)
        if self.lesion_classifier is not None:
            unknown = sorted(set(self.lesion_classifier.features) - set(LESION_FEATURES))
            if unknown:
                raise InputError("lesion_classifier", f"fitted on features this version no longer computes "
                                 f"{unknown}: calibrate the checkpoint again (`coronary-calcium calibrate`); this "
                                 f"version computes {list(LESION_FEATURES)}")
            if self.t_lesion is None:
                raise InputError("t_lesion", "a lesion classifier needs its threshold t_lesion")
        for name in ("t_slice", "t_cam", "t_lesion"):
            value = getattr(self, name)
            if value is None and name == "t_lesion":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(name, f"must be a finite number, got {value!r}")
            if name != "t_cam" and not 0.0 <= value <= 1.0:  # probabilities; a raw CAM score has no upper bound
                raise InputError(name, f"must be a probability in [0, 1], got {value!r}")
            setattr(self, name, float(value))
        if self.scoring_config().is_3d:
            raise InputError("scoring", "candidate lesions are 2D components per axial slice: use a '2d-*' "
                             "connectivity")

    def scoring_config(self) -> ScoringConfig:
        """The scoring rules (HU threshold, minimum area, ...) the candidates are found and scored with."""
        return scoring_config_from_dict(self.scoring)

    @property
    def decision(self) -> str:
        """"lesion classifier" or "slice and CAM thresholds": the rule that keeps candidates."""
        return "lesion classifier" if self.lesion_classifier is not None else "slice and CAM thresholds"

    def with_rule(self, rule: str | None) -> Thresholds:
        """These thresholds applying ``rule``: "classifier" (the lesion classifier; an error without one),
        "slice-cam" (the slice-and-CAM rule with its own validated t_slice, e.g. for data unlike the training
        anatomy such as phantoms), or None (the file's own decision)."""
        if rule is None:
            return self
        if rule not in RULES:
            raise InputError("rule", f"must be one of {list(RULES)}, got {rule!r}")
        if rule == "classifier":
            if self.lesion_classifier is None:
                raise InputError("rule", "these thresholds were calibrated without a lesion classifier: run "
                                 "coronary-calcium calibrate again, or use rule 'slice-cam'")
            return self
        rule_found = self.validation.get("slice_and_cam") if isinstance(self.validation, dict) else None
        t_slice = rule_found.get("t_slice", self.t_slice) if isinstance(rule_found, dict) else self.t_slice
        if isinstance(t_slice, bool) or not isinstance(t_slice, (int, float)):
            raise InputError("validation.slice_and_cam.t_slice", f"must be a number, got {t_slice!r}")
        return dataclasses.replace(self, lesion_classifier=None, t_lesion=None, lesion_pooling="candidate",
                                   artery_model=None, t_slice=float(t_slice))

    def to_dict(self) -> dict[str, Any]:
        classifier = self.lesion_classifier
        # asdict would deep-copy every tree array: the classifier is written by its own to_dict
        out = dataclasses.asdict(dataclasses.replace(self, lesion_classifier=None, artery_model=None))
        out.pop("lesion_classifier")
        out["artery_model"] = None if self.artery_model is None else self.artery_model.to_dict()
        out["hu_windows"] = [list(w) for w in self.hu_windows]
        out["image_size"] = list(self.image_size)
        out["preprocessing"] = {
            "transforms": [
                "EnsureTyped(dtype=float32)",
                *([f"FieldOfViewd(field_of_view_mm={self.field_of_view_mm}, centre={self.field_of_view_centre})"]
                  if self.field_of_view_mm else []),
                f"MaxPoolResized(spatial_size={list(self.image_size)})",
                f"HUWindows(windows={[list(w) for w in self.hu_windows]})",
            ],
            "hu_windows": [list(w) for w in self.hu_windows],
            "image_size": list(self.image_size),
            "field_of_view_mm": self.field_of_view_mm,
            "field_of_view_centre": self.field_of_view_centre,
            "in_channels": self.in_channels,
        }
        if classifier is not None:
            judged = ("the area-weighted mean of the lesion classifier's probabilities over the candidates of its "
                      "3D component" if self.lesion_pooling == "component" else "the lesion classifier's probability")
            out["rule"] = (f"a candidate lesion counts when slice_probability >= t_slice and {judged} >= t_lesion "
                           "(features: lesion_classifier.features)")
        else:
            out["rule"] = ("a candidate lesion counts when slice_probability >= t_slice and cam_score >= t_cam "
                           f"(cam_score: {self.cam_pooling} of the CAM over the lesion's pixels)")
        out["decision"] = self.decision
        out["lesion_classifier"] = None if classifier is None else classifier.to_dict()  # last: the long part
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Thresholds:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in ("network_name", "checkpoint", "checkpoint_sha256", "t_slice", "t_cam",
                                     "cam_layer") if n not in values)
        if missing:
            raise InputError("thresholds", f"missing fields {missing}")
        _check_field_types(values)
        if "hu_window" in values and "hu_windows" not in values:  # version 1 files: one window, one channel
            values = {**values, "hu_windows": [values["hu_window"]]}
        try:
            return cls(**{k: v for k, v in values.items() if k in names})
        except InputError:
            raise
        except (TypeError, ValueError, KeyError) as exc:  # e.g. a damaged lesion classifier or HU window
            raise InputError("thresholds", f"unusable values ({type(exc).__name__}: {exc})") from None


def thresholds_path(path: str | Path) -> Path:
    """``path`` itself for a file, ``path/thresholds.json`` for a checkpoint folder."""
    path = Path(path)
    return path / THRESHOLDS_FILE if path.is_dir() or not path.suffix else path


def save_thresholds(thresholds: Thresholds, path: str | Path) -> Path:
    """Write ``thresholds`` as JSON (atomically) to ``path`` (a file, or a checkpoint folder); the lesion
    classifier's trees (tens of thousands of numbers) go last, on one compact line."""
    return write_json(thresholds_path(path), thresholds.to_dict(), compact=("lesion_classifier",))


def load_thresholds(path: str | Path, checkpoint: str | Path | None = None) -> Thresholds:
    """Read ``thresholds.json`` (``path``: the file or its checkpoint folder) and check it belongs to ``checkpoint``.

    ``checkpoint`` defaults to the file named in the thresholds, beside them. A missing file, a checkpoint whose
    SHA-256 differs from the recorded one, or a missing checkpoint raise `InputError` (thresholds are never guessed).
    """
    path = thresholds_path(path)
    if not path.is_file():
        raise InputError(path, MISSING)
    try:
        values = json.loads(path.read_bytes().decode("utf-8"))
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
