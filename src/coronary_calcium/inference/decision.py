"""Which candidates are coronary calcium: the thresholds' rule applied to one scan's `Candidates`.

A candidate is kept when its slice's probability >= ``t_slice`` and either the checkpoint's lesion classifier
gives it a probability >= ``t_lesion`` (its own, or its 3D component's area-weighted mean with lesion_pooling
"component") and anatomy allows it (`anatomy_rule`, then `tissue_rule`), or, for checkpoints calibrated without
a classifier, its CAM score >= ``t_cam``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coronary_calcium.errors import InputError
from coronary_calcium.inference.candidates import Candidates
from coronary_calcium.inference.lesion_classifier import pool_probabilities
from coronary_calcium.inference.thresholds import Thresholds

__all__ = ["ANATOMY_REASONS", "ANATOMY_RULE_FEATURES", "AORTIC_ARC_MAX_LUMEN", "AORTIC_ARC_MIN_DEPTH",
           "AORTIC_ARC_RADIUS_MM", "ARC_RULE_CODE", "Decision", "FAT_RULE_CODE", "MAX_BEHIND_LUNG",
           "MAX_FAT_DISTANCE_MM", "MAX_HEART_RADII_IN_PLANE", "MAX_HEART_RADII_ALONG_Z", "MIN_BODY_DEPTH_MM",
           "TISSUE_RULE_FEATURES", "anatomy_allows", "anatomy_rule", "classifier_judges", "decide", "describe_rule",
           "tissue_rule"]

# The anatomy rule: what no classifier fitted on other anatomy may overrule (features from anatomy.py).
# Coronary arteries lie inside the chest, behind a chest wall (skin, fat, muscle, ribs or sternum) thicker than this
# everywhere: a candidate closer to the body outline (skin, the table, a sharp kernel's edge overshoot) or inside bone
# is not coronary calcium.
MIN_BODY_DEPTH_MM = 10.0
# Nor is a candidate mostly behind lung as seen from the heart centre (chest wall, ribs, costal cartilage).
MAX_BEHIND_LUNG = 0.5
# The coronary arteries run on the heart's surface: within about 1.4 heart radii of the heart region's centre
# in-plane and 1.0 along z in both synthetic families; these bounds leave a wide margin. Without a heart region
# the features are 0 and the bounds hold.
MAX_HEART_RADII_IN_PLANE = 2.0
MAX_HEART_RADII_ALONG_Z = 1.5
ANATOMY_RULE_FEATURES = ("body_depth_mm", "in_bone", "behind_lung", "heart_dx", "heart_dy", "heart_dz")
# Coronary arteries run in the epicardial fat (or on the myocardium under the lung): their calcium lies within a
# vessel's width (<= ~5 mm) of fat or lung. Aortic valve and mitral annulus calcium lie in blood and muscle,
# centimetres from either. Read from the lesion features (`fat_distance_mm`), so it applies to the candidates the
# classifier judges, after the rule above.
MAX_FAT_DISTANCE_MM = 8.0
# Aortic wall calcium lies on the wall of a round lumen ringed by fat (the aorta, 10-17 mm radius): an arc whose centre
# of curvature lies deep in a soft-tissue region about the size of its circle. Coronary calcium that long runs along
# its vessel in fat, or round a heart chamber, a region far larger than the circle. Read from `arc_radius_mm`,
# `arc_centre_depth_mm` and `arc_lumen_ratio`, like the fat rule.
AORTIC_ARC_RADIUS_MM = (8.0, 20.0)  # the ascending aorta: 10-17 mm, up to 20 when dilated
AORTIC_ARC_MIN_DEPTH = 0.5  # the centre lies at least this share of the radius inside soft tissue
AORTIC_ARC_MAX_LUMEN = 2.0  # and in a region of at most this many times the circle's area
ANATOMY_REASONS = (
    f"in bone or within {MIN_BODY_DEPTH_MM:g} mm of the body outline",
    f"behind lung (chest wall or rib: >= {MAX_BEHIND_LUNG:g} of its voxels)",
    f"farther from the heart centre than {MAX_HEART_RADII_IN_PLANE:g} heart radii in-plane or "
    f"{MAX_HEART_RADII_ALONG_Z:g} along z",
    f"farther than {MAX_FAT_DISTANCE_MM:g} mm from fat and lung (in blood or muscle: valve or annulus calcium)",
    f"an arc of {AORTIC_ARC_RADIUS_MM[0]:g}-{AORTIC_ARC_RADIUS_MM[1]:g} mm radius round a soft-tissue lumen "
    "(aortic wall calcium)",
)
FAT_RULE_CODE, ARC_RULE_CODE = 3, 4  # their indices in ANATOMY_REASONS
TISSUE_RULE_FEATURES = ("fat_distance_mm", "arc_radius_mm", "arc_centre_depth_mm", "arc_lumen_ratio")


@dataclass
class Decision:
    """Per candidate: kept or not, and the probabilities that decided (None where the rule has none), with the
    thresholds they were held against."""

    kept: np.ndarray
    slice_probabilities: np.ndarray
    t_slice: float
    t_cam: float
    t_lesion: float | None = None
    lesion_probabilities: np.ndarray | None = None
    component_probabilities: np.ndarray | None = None
    anatomy_broken: np.ndarray | None = None  # per candidate, the ANATOMY_REASONS index it broke, -1: none;
    # None: no anatomy features (the slice-and-CAM rule)

    @property
    def anatomy_ok(self) -> np.ndarray | None:
        """Per candidate, whether anatomy allows it (None under the slice-and-CAM rule)."""
        return None if self.anatomy_broken is None else self.anatomy_broken < 0

    def reason(self, i: int) -> str:
        """Why candidate ``i`` was not kept: the first rule it failed."""
        if self.slice_probabilities[i] < self.t_slice:
            return f"slice probability < {self.t_slice:g}"
        if self.anatomy_broken is not None and self.anatomy_broken[i] >= 0:
            return ANATOMY_REASONS[int(self.anatomy_broken[i])]
        if self.component_probabilities is not None:
            return f"component probability < {self.t_lesion:g}"
        if self.lesion_probabilities is not None:
            return f"lesion probability < {self.t_lesion:g}"
        return f"CAM score < {self.t_cam:g}"


def decide(candidates: Candidates, thresholds: Thresholds) -> Decision:
    """Apply ``thresholds``' rule to ``candidates`` (which need their features when there is a lesion classifier:
    of every candidate, or of those on positive slices that anatomy allows and, with component pooling, of the rest
    of their 3D components; the others get NaN probabilities)."""
    t = thresholds
    slice_p = candidates.slice_probabilities
    on_positive = slice_p >= t.t_slice
    classifier = t.lesion_classifier
    if classifier is None:
        cam_ok = np.array([cam is not None and cam >= t.t_cam for cam in candidates.cam_scores], dtype=bool)
        return Decision(on_positive & cam_ok, slice_p, t.t_slice, t.t_cam)
    broken = anatomy_rule(candidates.feature_columns(ANATOMY_RULE_FEATURES))
    # Candidates whose features were not computed (`find_candidates`' feature_subset) get no probability (NaN);
    # the subset must hold every candidate the slice and anatomy rules leave to the classifier.
    rows = np.ones(len(candidates), dtype=bool) if candidates.computed is None else candidates.computed
    if (on_positive & (broken < 0) & ~rows).any():
        raise InputError("candidates", "lesion features missing for candidates on positive slices that anatomy "
                         "allows: the classifier must judge them")
    if t.lesion_pooling == "component" and np.isin(candidates.components[~rows], candidates.components[rows]).any():
        raise InputError("candidates", "lesion features missing for part of a 3D component: component pooling "
                         "needs all of it")
    tissue = tissue_rule(candidates.feature_columns(TISSUE_RULE_FEATURES))
    broken[broken < 0] = tissue[broken < 0]
    lesion = np.full(len(candidates), np.nan)
    lesion[rows] = classifier.predict_proba(candidates.feature_columns(classifier.features)[rows])
    pooled = None
    if t.lesion_pooling == "component":
        pooled = np.full(len(candidates), np.nan)
        pooled[rows] = pool_probabilities(lesion[rows], candidates.components[rows], candidates.areas[rows])
    decided_by = lesion if pooled is None else pooled
    kept = on_positive & (broken < 0) & rows
    kept[kept] = decided_by[kept] >= t.t_lesion
    return Decision(kept, slice_p, t.t_slice, t.t_cam, t.t_lesion, lesion, pooled, broken)


def anatomy_rule(columns: np.ndarray) -> np.ndarray:
    """Per candidate, from its `ANATOMY_RULE_FEATURES` columns: the index into `ANATOMY_REASONS` of the first part
    of the anatomy rule it breaks, -1 when anatomy allows it to be coronary calcium."""
    depth, bone, behind, dx, dy, dz = np.asarray(columns, dtype=np.float64).reshape(-1, len(ANATOMY_RULE_FEATURES)).T
    parts = ((depth < MIN_BODY_DEPTH_MM) | (bone >= 0.5), behind >= MAX_BEHIND_LUNG,
             (np.hypot(dx, dy) > MAX_HEART_RADII_IN_PLANE) | (np.abs(dz) > MAX_HEART_RADII_ALONG_Z))
    broken = np.full(depth.shape, -1, dtype=np.int64)
    for code, breaks in enumerate(parts):  # in ANATOMY_REASONS' order: the first part broken is named
        broken[(broken < 0) & breaks] = code
    return broken


def tissue_rule(columns: np.ndarray) -> np.ndarray:
    """Per candidate, from its `TISSUE_RULE_FEATURES` columns (lesion features): `FAT_RULE_CODE` when it lies
    farther than `MAX_FAT_DISTANCE_MM` from fat and lung, else `ARC_RULE_CODE` when it is an arc round a lumen of
    aortic size (`AORTIC_ARC_RADIUS_MM`, `AORTIC_ARC_MIN_DEPTH`, `AORTIC_ARC_MAX_LUMEN`), else -1. A candidate
    whose features were not computed (NaN) breaks neither."""
    fat, radius, depth, lumen = np.nan_to_num(np.asarray(columns, dtype=np.float64).reshape(-1, 4), nan=0.0).T
    low, high = AORTIC_ARC_RADIUS_MM
    arc = (radius >= low) & (radius <= high) & (depth >= AORTIC_ARC_MIN_DEPTH * radius) & (lumen > 0) \
        & (lumen <= AORTIC_ARC_MAX_LUMEN)
    return np.where(fat > MAX_FAT_DISTANCE_MM, FAT_RULE_CODE, np.where(arc, ARC_RULE_CODE, -1))


def anatomy_allows(columns: np.ndarray) -> np.ndarray:
    """Per candidate, from its `ANATOMY_RULE_FEATURES` columns: whether anatomy allows it to be coronary calcium."""
    return anatomy_rule(columns) < 0


def classifier_judges(candidates: Candidates, on_positive: np.ndarray | None, lesion_pooling: str) -> np.ndarray:
    """Per candidate, whether a lesion classifier is asked about it: on a positive slice (``on_positive``, a boolean
    per candidate; None: any slice) and allowed by the anatomy rule, or, with ``lesion_pooling`` "component", in the
    3D component of such a candidate. Reads only `ANATOMY_RULE_FEATURES` (and the components)."""
    judged = anatomy_allows(candidates.feature_columns(ANATOMY_RULE_FEATURES))
    if on_positive is not None:
        judged &= np.asarray(on_positive, dtype=bool)
    if lesion_pooling == "component":
        judged = np.isin(candidates.components, candidates.components[judged])
    return judged


def describe_rule(t: Thresholds, cam_key: str) -> str:
    """One sentence for a result's notes: how its coronary calcium was told from the other candidates."""
    config = t.scoring_config()
    found = f"candidate lesions (>= {config.threshold:g} HU, >= {config.min_area_mm2:g} mm^2 per slice)"
    classifier = t.lesion_classifier
    if classifier is None:
        return (f"coronary calcium = {found} on slices with probability >= {t.t_slice:g} whose CAM score "
                f"({t.cam_pooling} of the {t.cam_score} {t.cam_method} at {cam_key}) is >= {t.t_cam:g}; "
                "non-coronary calcium is excluded by the model alone")
    pooled = ", averaged over its 3D component weighted by area," if t.lesion_pooling == "component" else ""
    reads = (["slice probability"] * ("slice_probability" in classifier.features)
             + [f"{t.cam_method} at {cam_key}"] * bool({"cam_mean", "cam_max"} & set(classifier.features))
             + ["size, density, 3D extent, place in the anatomy, surrounding tissue"])
    lumen = ", bordering lumen" if "lumen_mm" in classifier.features else ""
    return (f"coronary calcium = {found} on slices with probability >= {t.t_slice:g} whose lesion-classifier "
            f"probability (boosted trees on {len(classifier.features)} features: {', '.join(reads)}{lumen})"
            f"{pooled} is >= {t.t_lesion:g}, and which anatomy allows: outside bone, deeper than "
            f"{MIN_BODY_DEPTH_MM:g} mm inside the body outline, not behind lung, within {MAX_HEART_RADII_IN_PLANE:g} "
            f"heart radii of the heart centre in-plane and {MAX_HEART_RADII_ALONG_Z:g} along z, within "
            f"{MAX_FAT_DISTANCE_MM:g} mm of fat or lung, not an arc round a lumen of aortic size; non-coronary "
            "calcium is excluded by the models and that rule alone")
