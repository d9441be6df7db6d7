"""Candidate lesions of one scan: made once, then taken by the decision, the scoring, calibration and the writers.

A candidate is an Agatston lesion of the whole slice (a 2D component of voxels >= the HU threshold with area >= the
minimum, `find_lesions` without labels): coronary calcium, bone, aortic and valve calcium alike. `find_candidates`
finds the scan's anatomy once (`find_anatomy`: where a heart-centred network looks, and where each candidate lies),
runs every slice through the network once (`SliceAnalyzer`: probabilities and CAMs in one pass), finds the
candidates, and attaches to each its CAM score and, for a lesion classifier, its `lesion_features` and 3D
component.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from coronary_calcium.errors import InputError
from coronary_calcium.anatomy import ANATOMY_FEATURES, Anatomy, anatomy_features, find_anatomy
from coronary_calcium.inference.lesion_features import (
    LESION_FEATURES,
    candidate_components,
    feature_columns,
    dense_components,
    lesion_features,
)
from coronary_calcium.inference.model import SliceAnalyzer
from coronary_calcium.inference.thresholds import CAM_POOLINGS
from coronary_calcium.scoring.agatston import Lesion, ScoringConfig, find_lesions

__all__ = ["Candidates", "PRELIMINARY_FEATURES", "candidate_cam_scores", "find_candidates"]

#: The `LESION_FEATURES` columns `find_candidates` fills for every candidate, before a ``feature_subset`` chooses
#: whose other features to compute: cheap, and all the anatomy rule reads.
PRELIMINARY_FEATURES: tuple[str, ...] = ("slice_probability", *ANATOMY_FEATURES)


@dataclass
class Candidates:
    """One scan's candidate lesions and what the network said about them.

    probabilities: per slice, P(coronary calcium). cam_slices / cam_maps: the slices whose CAM map was mapped back
    onto the original matrix, and those maps (len(cam_slices), Y, X). cam_scores: per candidate, the CAM's maximum
    or mean over its pixels (None where its slice has no map). features / components: per candidate, its
    `lesion_features` row and 3D component id (None unless asked for). notes: what the anatomy finder could not
    find, and what the features fell back to. heart_found: whether `find_anatomy` found a heart (None: not run).
    computed: per candidate, whether its whole features row was computed (None: every row, or no features); a row
    not computed holds only the `PRELIMINARY_FEATURES`, NaN elsewhere. field_window: the network's field of view on
    the slices ((first row, stop), (first column, stop); `SliceAnalyzer.field_window`), None for the whole slice.
    """

    lesions: list[Lesion]
    probabilities: np.ndarray
    cam_slices: list[int]
    cam_maps: np.ndarray
    cam_scores: list[float | None]
    features: np.ndarray | None = None
    components: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    heart_found: bool | None = None
    computed: np.ndarray | None = None
    field_window: tuple[tuple[int, int], tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self.lesions)

    def __iter__(self) -> Iterator[Lesion]:
        return iter(self.lesions)

    def __getitem__(self, i: int) -> Lesion:
        return self.lesions[i]

    @property
    def slice_of(self) -> np.ndarray:
        """Each candidate's slice index."""
        return np.array([int(les.slices[0]) for les in self.lesions], dtype=np.int64)

    @property
    def slice_probabilities(self) -> np.ndarray:
        """Each candidate's slice probability."""
        return self.probabilities[self.slice_of]

    @property
    def areas(self) -> np.ndarray:
        """Each candidate's area in mm^2."""
        return np.array([les.total_area_mm2 for les in self.lesions], dtype=np.float64)

    def feature_columns(self, names: Sequence[str]) -> np.ndarray:
        """The features named, in that order (a lesion classifier's columns)."""
        if self.features is None:
            raise InputError("candidates", "lesion features were not computed (find_candidates(features=True))")
        return feature_columns(self.features, names)

    def drop_voxels(self, keep: np.ndarray | None = None) -> None:
        """Forget the CAM maps and the voxel indices of the candidates not in ``keep`` (a boolean mask), to keep a
        batch's memory small; kept lesions hold on to theirs (agreement needs them)."""
        self.cam_maps = self.cam_maps[:0]
        for i, lesion in enumerate(self.lesions):
            if keep is None or not keep[i]:
                lesion.voxels = None


def candidate_cam_scores(
    candidates: Sequence[Lesion], shape: Sequence[int], maps: np.ndarray, map_slices: Sequence[int],
    pooling: str = "max",
) -> list[float | None]:
    """Per candidate (2D lesion), the maximum (``pooling="max"``) or mean ("mean") of its slice's CAM map inside its
    pixels; None where no map. The mean keeps a large bone component that only touches the map's hot spot low."""
    if pooling not in CAM_POOLINGS:
        raise InputError("cam_pooling", f"must be one of {list(CAM_POOLINGS)}, got {pooling!r}")
    reduce = np.max if pooling == "max" else np.mean
    where = {int(k): i for i, k in enumerate(map_slices)}
    plane = int(shape[1]) * int(shape[2])
    scores: list[float | None] = []
    for lesion in candidates:
        i = where.get(int(lesion.slices[0]))
        if i is None or lesion.voxels is None:
            scores.append(None)
            continue
        scores.append(float(reduce(maps[i].ravel()[np.asarray(lesion.voxels) % plane])))
    return scores


def find_candidates(
    hu: np.ndarray,
    spacing: Sequence[float],
    analyzer: SliceAnalyzer,
    config: ScoringConfig,
    *,
    cam_slices: Sequence[int] | Callable[[np.ndarray], Sequence[int]] | None = None,
    slice_thickness: float | None = None,
    features: bool = False,
    feature_subset: Callable[[Candidates], np.ndarray] | None = None,
    network: bool = True,
) -> Candidates:
    """Slice probabilities, candidate lesions, and CAM maps / scores on ``cam_slices``.

    ``cam_slices``: slice indices, a function of the slice probabilities giving them, or None for every slice
    holding a candidate (what calibration needs). Every slice runs through the CAM once (its forward pass gives
    the probabilities); only the chosen slices' maps are resized to the original matrix and kept. With
    ``features`` the candidates' `lesion_features` and 3D components are computed too (the CAM is then mapped
    back on every candidate slice, so ``cam_slices`` may hold more slices than asked).

    ``feature_subset`` (inference only; needs ``features``): given the candidates with their components and only
    the `PRELIMINARY_FEATURES` columns filled, the boolean mask of those whose full features are needed (e.g. the
    ones the anatomy rule allows). The others keep NaN in the other columns (``Candidates.computed`` is False for
    them), and only the slices holding a computed candidate get their maps for the features. The computed rows are
    the rows computing every candidate gives, to the last bit.

    ``network=False``: the network does not run; slice probabilities and the CAM columns are NaN, no maps are kept.
    For what reads neither (calibration's fit of a lesion classifier on the training patients).
    """
    if feature_subset is not None and not features:
        raise InputError("feature_subset", "choosing whose lesion features to compute needs features=True")
    anatomy = find_anatomy(hu, spacing) if features or analyzer.field_of_view_centre == "heart" else None
    centre, notes = _network_centre(analyzer, anatomy)
    if network:
        probs, small = analyzer.probabilities_and_cams(hu, pixel_spacing=spacing, centre=centre)
    else:
        probs, small = np.full(np.shape(hu)[0], np.nan), None
    lesions = find_lesions(hu, spacing, slice_thickness=slice_thickness, config=config)
    if callable(cam_slices):
        cam_slices = cam_slices(probs)
    candidate_slices = {int(les.slices[0]) for les in lesions}
    if small is None:  # no network, no maps
        cam_slices = ()
    elif cam_slices is None:
        cam_slices = candidate_slices
    heart_found = None if anatomy is None else bool(anatomy.found.get("heart"))
    window = analyzer.field_window(np.shape(hu), spacing, centre)
    if not features:
        cam_slices = sorted({int(k) for k in cam_slices})
        maps = _original_maps(analyzer, small, cam_slices, np.shape(hu), spacing, centre)
        scores = candidate_cam_scores(lesions, np.shape(hu), maps, cam_slices, analyzer.cam_pooling)
        return Candidates(lesions, probs, cam_slices, maps, scores, notes=notes, heart_found=heart_found,
                          field_window=window)
    components = dense_components(hu, config)
    found = Candidates(lesions, probs, [], np.zeros((0, *np.shape(hu)[1:]), dtype=np.float32), [None] * len(lesions),
                       None, candidate_components(components, lesions), notes, heart_found, field_window=window)
    computed = np.ones(len(lesions), dtype=bool)
    if feature_subset is not None:
        found.features = _preliminary_features(lesions, probs, spacing, anatomy)
        computed = np.asarray(feature_subset(found), dtype=bool).reshape(-1)
        if computed.shape != (len(lesions),):
            raise InputError("feature_subset", f"must give one boolean per candidate ({len(lesions)}), "
                             f"got {computed.shape}")
        found.computed = computed
    chosen = [les for les, c in zip(lesions, computed) if c]
    if small is not None:
        found.cam_slices = sorted({int(k) for k in cam_slices} | {int(les.slices[0]) for les in chosen})
        found.cam_maps = analyzer.to_original(small[found.cam_slices], np.shape(hu), spacing, centre)
    first = LESION_FEATURES.index(ANATOMY_FEATURES[0])  # the subset's anatomy features are made already
    rows = None if found.features is None else found.features[computed, first : first + len(ANATOMY_FEATURES)]
    table = lesion_features(hu, spacing, chosen, probs, None if small is None else found.cam_maps, found.cam_slices,
                            config, components, anatomy, rows)
    # the features hold each computed candidate's CAM mean and maximum already; the others get theirs from the maps
    column = LESION_FEATURES.index("cam_mean" if analyzer.cam_pooling == "mean" else "cam_max")
    scores = [float(v) if small is not None else None for v in table[:, column]]
    if found.features is None:
        found.features, found.cam_scores = table, scores
        return found
    found.features[computed] = table
    found.cam_scores = candidate_cam_scores(lesions, np.shape(hu), found.cam_maps, found.cam_slices,
                                            analyzer.cam_pooling)
    for i, score in zip(np.flatnonzero(computed), scores):
        found.cam_scores[i] = score
    return found


def _original_maps(analyzer: SliceAnalyzer, small: np.ndarray | None, slices: Sequence[int], shape: Sequence[int],
                   spacing: Sequence[float], centre: tuple[float, float] | None) -> np.ndarray:
    """The ``slices``' CAM maps on the original matrix; none (an empty stack) where the network did not run."""
    if small is None:
        return np.zeros((0, *shape[1:]), dtype=np.float32)
    return analyzer.to_original(small[list(slices)], shape, spacing, centre)


def _preliminary_features(lesions: Sequence[Lesion], probabilities: np.ndarray, spacing: Sequence[float],
                          anatomy: Anatomy) -> np.ndarray:
    """(n, len(LESION_FEATURES)) features with only the `PRELIMINARY_FEATURES` columns filled (NaN elsewhere):
    what is cheap to know of every candidate before choosing whose full features to compute."""
    table = np.full((len(lesions), len(LESION_FEATURES)), np.nan)
    if not lesions:
        return table
    k = np.array([int(les.slices[0]) for les in lesions])
    table[:, LESION_FEATURES.index("slice_probability")] = np.asarray(probabilities, dtype=np.float64)[k]
    first = LESION_FEATURES.index(ANATOMY_FEATURES[0])
    table[:, first : first + len(ANATOMY_FEATURES)] = anatomy_features(anatomy, lesions, spacing)
    return table


def _network_centre(analyzer: SliceAnalyzer, anatomy: Anatomy | None) -> tuple[tuple[float, float] | None, list[str]]:
    """Where the network's field of view is centred ((row, column) pixels; None: the image centre), and the notes on
    the anatomy found: what is missing, and for a heart-centred network without a heart, the fallback."""
    notes = [] if anatomy is None else [f"anatomy: {n}" for n in anatomy.notes]
    if analyzer.field_of_view_centre != "heart":
        return None, notes
    centre = anatomy.heart_centre_px
    if centre is None:
        notes.append(f"network: no heart found, its {analyzer.field_of_view_mm:g} mm field of view is centred on the "
                     "image instead of the heart")
    return centre, notes
