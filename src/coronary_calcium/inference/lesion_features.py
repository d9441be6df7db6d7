"""What the lesion classifier sees of each candidate lesion: one row of numbers per 2D candidate.

A candidate (a 2D component >= the HU threshold, >= the minimum area; see `find_lesions`) is coronary calcium,
aortic wall or valve calcium, bone, or a noise speck. The slice classifier's probability and one CAM number tell
these apart only partly (a 300 mm^2 rib on a positive slice, valve calcium under the coronary hot spot), so the
classifier also sees what the CNN does not summarise: the candidate's size and density, the 3D component it
belongs to (bone runs through many slices), the soft-tissue region it borders (a coronary vessel of 1.5-2.5 mm
radius, the aorta, a heart chamber), where it lies in the anatomy every chest CT shows (inside the heart region
between the lungs, away from bone and the body wall; `anatomy`), and the tissue around it (coronary calcium sits in
epicardial fat, aortic and valve calcium against blood, bone against marrow and bone).

Everything is computed from the HU volume, the slice probabilities and the CAM maps on the original matrix, in
vectorised passes (integral images for the neighbourhood shares; `benchmarks/inference_speed.py` times them). The
per-slice passes run only on the slices holding the candidates asked for, so inference, which asks only for those its
classifier judges (`find_candidates`' feature_subset), pays for a few slices. A candidate's row does not depend on
which others are computed with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from coronary_calcium.errors import InputError
from coronary_calcium.anatomy import ANATOMY_FEATURES, Anatomy, anatomy_features, find_anatomy
from coronary_calcium.scoring.agatston import Lesion, ScoringConfig

__all__ = ["FAT_CAP_MM", "LESION_FEATURES", "NEIGHBOURHOOD_MM", "TISSUES", "candidate_components", "dense_components",
           "feature_columns", "lesion_features", "pixel_noise_hu"]

# HU ranges of the tissues whose share around a candidate is a feature: [low, high)
TISSUES = {"lung": (-np.inf, -500.0), "fat": (-200.0, -30.0), "soft": (-30.0, 130.0), "dense": (130.0, np.inf)}
NEIGHBOURHOOD_MM = (3.0, 8.0, 15.0)  # half-sides of the square neighbourhoods
LUMEN_HU = (-30.0, 130.0)  # blood, vessel wall and myocardium in a non-contrast scan (TISSUES["soft"])
LUMEN_REACH_PX = 2  # a soft-tissue region borders a candidate when it comes within 2 pixels (rows and columns)
FAT_CLIP_HU = 60.0  # calcium counts as blood here, so that the 3 x 3 mean keeps the fat beside it below -30 HU
FAT_CAP_MM = 20.0
ARC_MIN_LENGTH_MM = 5.0  # a candidate is an arc when at least this long and twice as long as wide
ARC_CAP_MM = 100.0  # radii above this are straight; centre depths are capped at ARC_DEPTH_CAP_MM
ARC_DEPTH_CAP_MM = 30.0

LESION_FEATURES: tuple[str, ...] = (
    "slice_probability",  # the classifier's P(coronary calcium) for the candidate's slice
    "neighbour_probability",  # the larger of the two adjacent slices' probabilities
    "cam_mean",  # the CAM over the candidate's pixels: mean and maximum (normalised or raw, per cam_score)
    "cam_max",
    "log_area_mm2",
    "log_peak_hu",
    "log_mean_hu",
    "noise_hu",  # the scan's pixel noise: SD of soft tissue between neighbouring pixels (`pixel_noise_hu`)
    "peak_over_noise",  # (peak HU - the calcium threshold) / that noise, capped at 50
    "log_component_mm3",  # the 3D component (26-connected voxels >= the threshold) holding the candidate
    "component_z_mm",  # that component's extent along z, rows and columns
    "component_y_mm",
    "component_x_mm",
    "lumen_mm",  # the largest radius and area among the soft-tissue regions the candidate borders on its slice:
    "log_lumen_mm2",  # a coronary vessel (radius 1.5-2.5 mm), the aorta (10-17 mm) or the heart
    "fat_distance_mm",  # in-plane distance to the nearest fat or lung (`_fat_distance`), capped at FAT_CAP_MM
    "arc_radius_mm",  # an elongated candidate's radius of curvature (`_arc_features`; 0: not elongated), capped
    "arc_centre_depth_mm",  # how deep its centre of curvature lies in soft tissue (0: in fat or lung, or no arc)
    "arc_lumen_ratio",  # the area of the soft-tissue region holding that centre / (pi radius^2) (0: none)
    *ANATOMY_FEATURES,  # where it lies relative to lungs, bone, the heart region and the body wall (anatomy.py)
    *(f"{tissue}_{int(r)}mm" for r in NEIGHBOURHOOD_MM for tissue in TISSUES),
    *(f"mean_hu_{int(r)}mm" for r in NEIGHBOURHOOD_MM),  # mean HU (clipped to [-1000, 1500]) in the squares
)
HU_CLIP = (-1000.0, 1500.0)  # a metal or a -3024 HU padding value must not swamp a neighbourhood's mean
NOISE_TISSUE_HU = (-250.0, 150.0)  # fat, muscle, blood and room for their noise: differences there are noise
MAX_PEAK_OVER_NOISE = 50.0
NOISE_ROW_STEP = 4  # every 4th row is plenty for a median over a volume


def feature_columns(table: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """The ``names`` columns, in that order, of a (n, len(LESION_FEATURES)) `lesion_features` table."""
    return table[:, [LESION_FEATURES.index(name) for name in names]]


def _box_mean(integral: np.ndarray, z: np.ndarray, y: np.ndarray, x: np.ndarray, half: int) -> np.ndarray:
    """Mean of a (Z, H, W) image over the (2 half + 1)^2 square around each (z, y, x), clipped at the borders,
    from its integral image (Z, H + 1, W + 1)."""
    h, w = integral.shape[1] - 1, integral.shape[2] - 1
    y0, y1 = np.clip(y - half, 0, h), np.clip(y + half + 1, 0, h)
    x0, x1 = np.clip(x - half, 0, w), np.clip(x + half + 1, 0, w)
    total = integral[z, y1, x1] - integral[z, y0, x1] - integral[z, y1, x0] + integral[z, y0, x0]
    return total.astype(np.float64) / ((y1 - y0) * (x1 - x0))


def dense_components(hu: np.ndarray, config: ScoringConfig) -> np.ndarray:
    """int32 (Z, Y, X) labels of the 26-connected 3D components of the voxels at or above ``config``'s HU
    threshold (0 elsewhere): each 2D candidate lies in exactly one."""
    return ndimage.label(config.passes_threshold(hu), structure=np.ones((3, 3, 3), dtype=bool))[0]


def candidate_components(components: np.ndarray, candidates: Sequence[Lesion]) -> np.ndarray:
    """The `dense_components` label of each 2D candidate."""
    first = np.array([int(c.voxels[0]) for c in candidates], dtype=np.int64)
    return components.ravel()[first].astype(np.int64)


def lesion_features(
    hu: np.ndarray,
    spacing: Sequence[float],
    candidates: Sequence[Lesion],
    probabilities: np.ndarray,
    cam_maps: np.ndarray | None,
    cam_slices: Sequence[int],
    config: ScoringConfig,
    components: np.ndarray | None = None,
    anatomy: Anatomy | None = None,
    anatomy_rows: np.ndarray | None = None,
) -> np.ndarray:
    """(n_candidates, len(LESION_FEATURES)) float64 features of 2D ``candidates`` of the (Z, Y, X) ``hu`` volume.

    probabilities: per slice; cam_maps: (len(cam_slices), Y, X) CAM maps on the original matrix, one per slice in
    ``cam_slices``, which must hold every candidate's slice; None where the network did not run (the CAM columns
    are then NaN, and ``probabilities`` may be NaN too: what calibration fits the trees on). ``config``: the rules
    the candidates were found with (its HU threshold defines the 3D components). components: the volume's
    `dense_components`, when already made; anatomy: its `find_anatomy`, likewise; anatomy_rows: the candidates'
    `anatomy_features`, likewise.
    """
    hu = np.asarray(hu)
    n = len(candidates)
    out = np.zeros((n, len(LESION_FEATURES)), dtype=np.float64)
    if n == 0:
        return out
    _, ny, nx = hu.shape
    sz, sy, sx = (float(s) for s in spacing)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    where = {int(k): i for i, k in enumerate(cam_slices)}
    missing = sorted({int(c.slices[0]) for c in candidates} - set(where))
    if missing and cam_maps is not None:
        raise InputError("cam_slices", f"no CAM map for the candidates' slices {missing[:5]}")
    px = _Pixels.of(candidates, ny, nx)
    col = {name: i for i, name in enumerate(LESION_FEATURES)}
    k = np.array([int(c.slices[0]) for c in candidates])
    out[:, col["slice_probability"]] = probabilities[k]
    padded = np.concatenate(([0.0], probabilities, [0.0]))
    out[:, col["neighbour_probability"]] = np.maximum(padded[k], padded[k + 2])
    if cam_maps is None:
        out[:, [col["cam_mean"], col["cam_max"]]] = np.nan
    else:
        _cam_features(out, col, px, cam_maps, where)
    out[:, col["log_area_mm2"]] = np.log([max(c.total_area_mm2, 1e-6) for c in candidates])
    out[:, col["log_peak_hu"]] = np.log([max(float(c.peak_hu), 1.0) for c in candidates])
    out[:, col["log_mean_hu"]] = np.log([max(float(c.mean_hu), 1.0) for c in candidates])
    noise = pixel_noise_hu(hu)
    out[:, col["noise_hu"]] = noise
    above = np.array([float(c.peak_hu) for c in candidates]) - config.threshold
    out[:, col["peak_over_noise"]] = np.minimum(above / max(noise, 1e-6), MAX_PEAK_OVER_NOISE)

    if components is None:
        components = dense_components(hu, config)
    elif np.shape(components) != hu.shape:
        raise InputError("components", f"shape {np.shape(components)} differs from the volume's {hu.shape}")
    _component_features(out, col, components, candidates, (sz, sy, sx))
    if anatomy_rows is None:
        anatomy_rows = anatomy_features(find_anatomy(hu, spacing) if anatomy is None else anatomy, candidates, spacing)
    elif np.shape(anatomy_rows) != (n, len(ANATOMY_FEATURES)):
        raise InputError("anatomy_rows", f"must be ({n}, {len(ANATOMY_FEATURES)}), got {np.shape(anatomy_rows)}")
    first = col[ANATOMY_FEATURES[0]]
    out[:, first : first + len(ANATOMY_FEATURES)] = anatomy_rows

    slices = np.unique(k)
    stack = hu[slices].astype(np.float32, copy=False)
    zi = np.searchsorted(slices, px.z)  # each candidate pixel's index in ``stack``
    _lumen_features(out, col, px, stack, zi, (sy, sx), config)
    # fat or lung: a 3 x 3 mean below -30 HU with calcium counted as blood (read by the fat distance and the arcs)
    fat_or_lung = ndimage.uniform_filter(np.clip(stack, None, FAT_CLIP_HU), size=(1, 3, 3)) < LUMEN_HU[0]
    _fat_distance(out, col, px, fat_or_lung, zi, (sy, sx))
    _arc_features(out, col, px, fat_or_lung, zi, (sy, sx))
    _neighbourhood_features(out, col, px, stack, zi, (sy, sx))
    return out


def pixel_noise_hu(hu: np.ndarray) -> float:
    """The scan's pixel noise in HU: a robust SD (1.4826 x the median absolute deviation) of the differences between
    horizontally neighbouring soft-tissue pixels (both within `NOISE_TISSUE_HU`), divided by sqrt(2); 0 without
    such pixels.

    Why: a sharp reconstruction kernel or a low dose lifts 1 mm^2 specks of plain tissue above 130 HU; a faint
    candidate means calcium in a quiet scan and noise in a noisy one, which no per-candidate HU feature can tell.
    Neighbour differences measure the fine-grained noise that makes such specks, and anatomy barely enters them.
    """
    rows = np.asarray(hu)[:, ::NOISE_ROW_STEP, :].astype(np.float32, copy=False)
    left, right = rows[:, :, :-1], rows[:, :, 1:]
    lo, hi = NOISE_TISSUE_HU
    both = (left >= lo) & (left <= hi) & (right >= lo) & (right <= hi)
    d = (right - left)[both]
    if d.size == 0:
        return 0.0
    mad = float(np.median(np.abs(d - np.median(d))))
    return 1.4826 * mad / float(np.sqrt(2.0))


class _Pixels:
    """All candidate pixels at once: owner candidate, slice, row, column, and each candidate's pixel count."""

    def __init__(self, owner: np.ndarray, sizes: np.ndarray, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> None:
        self.owner, self.sizes, self.z, self.y, self.x = owner, sizes, z, y, x
        self.n = sizes.size

    @classmethod
    def of(cls, candidates: Sequence[Lesion], ny: int, nx: int) -> _Pixels:
        """The pixels of ``candidates`` in a volume of ``ny`` rows and ``nx`` columns."""
        sizes = np.array([len(c.voxels) for c in candidates])
        owner = np.repeat(np.arange(len(candidates)), sizes)
        flat = np.concatenate([np.asarray(c.voxels, dtype=np.int64) for c in candidates])
        z, rest = np.divmod(flat, ny * nx)
        y, x = np.divmod(rest, nx)
        return cls(owner, sizes, z, y, x)

    def mean(self, values: np.ndarray) -> np.ndarray:
        """Per candidate, the mean of per-pixel ``values``."""
        return np.bincount(self.owner, weights=values, minlength=self.n) / self.sizes

    def max(self, values: np.ndarray, initial: float) -> np.ndarray:
        """Per candidate, the maximum of per-pixel ``values`` and ``initial``."""
        largest = np.full(self.n, initial)
        np.maximum.at(largest, self.owner, values)
        return largest


def _cam_features(out: np.ndarray, col: dict[str, int], px: _Pixels, cam_maps: np.ndarray,
                  where: dict[int, int]) -> None:
    """Mean and maximum CAM over each candidate's pixels."""
    maps = np.asarray(cam_maps, dtype=np.float32)
    cam = maps[np.array([where[int(s)] for s in px.z]), px.y, px.x].astype(np.float64)
    out[:, col["cam_mean"]] = px.mean(cam)
    out[:, col["cam_max"]] = px.max(cam, -np.inf)


def _component_features(out: np.ndarray, col: dict[str, int], components: np.ndarray,
                        candidates: Sequence[Lesion], spacing: tuple[float, float, float]) -> None:
    """Volume and z / y / x extent of the 3D component holding each candidate."""
    sz, sy, sx = spacing
    comp = candidate_components(components, candidates)
    boxes = ndimage.find_objects(components)
    # each needed component counted inside its own box: cheaper than a bincount over the whole volume
    counts = {c: np.count_nonzero(components[boxes[c - 1]] == c) for c in np.unique(comp).tolist()}
    voxels = np.array([counts[c] for c in comp.tolist()], dtype=np.float64)
    out[:, col["log_component_mm3"]] = np.log(voxels * sz * sy * sx)
    for name, axis, step in (("component_z_mm", 0, sz), ("component_y_mm", 1, sy), ("component_x_mm", 2, sx)):
        out[:, col[name]] = [(boxes[c - 1][axis].stop - boxes[c - 1][axis].start) * step for c in comp]


def _lumen_features(out: np.ndarray, col: dict[str, int], px: _Pixels, stack: np.ndarray, zi: np.ndarray,
                    pixel: tuple[float, float], config: ScoringConfig) -> None:
    """Largest radius and area among the soft-tissue regions each candidate borders on its slice.

    Coronary calcium sits beside a vessel of 1.5-2.5 mm radius surrounded by epicardial fat (on a non-contrast scan,
    lumen and wall are one soft region); aortic wall and valve calcium border the aorta (10-17 mm radius) or a heart
    chamber. A region's radius is its deepest point's taxicab distance to its edge (exact at a disc's centre; 4x
    faster than the Euclidean transform), in whole pixels, and a region cut by the image edge is measured from its
    visible edges only. It is taken on a 3 x 3 mean so that noise does not break a lumen into pieces; the pixels
    next to calcium or bone are left out, since the mean turns fat beside them into "soft tissue".
    """
    sy, sx = pixel
    ny, nx = stack.shape[1:]
    smooth = ndimage.uniform_filter(stack, size=(1, 3, 3))
    top = min(LUMEN_HU[1], config.threshold)
    soft = (smooth >= LUMEN_HU[0]) & (smooth < top)
    soft &= ~ndimage.maximum_filter(stack >= top, size=(1, 3, 3))
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    regions, n_regions = ndimage.label(soft, structure=in_plane)
    depth = np.stack([ndimage.distance_transform_cdt(plane, metric="taxicab") for plane in soft])
    offsets = [(dy, dx) for dy in range(-LUMEN_REACH_PX, LUMEN_REACH_PX + 1)
               for dx in range(-LUMEN_REACH_PX, LUMEN_REACH_PX + 1)]

    def regions_near(dy: int, dx: int) -> np.ndarray:  # per candidate pixel, the region at that offset (0: none)
        return regions[zi, np.clip(px.y + dy, 0, ny - 1), np.clip(px.x + dx, 0, nx - 1)]

    # Radius and area of the bordering regions only: a reduction over every label of the volume
    # (ndimage.maximum with an index, or np.maximum.at) takes seconds.
    radius = np.zeros(n_regions + 1)
    area = np.zeros(n_regions + 1)
    region_boxes = ndimage.find_objects(regions)
    bordering = np.unique(np.concatenate([np.unique(regions_near(dy, dx)) for dy, dx in offsets]))
    for label in bordering[bordering > 0]:
        inside = regions[region_boxes[label - 1]] == label
        radius[label] = depth[region_boxes[label - 1]][inside].max() * min(sy, sx)
        area[label] = inside.sum() * sy * sx
    largest_radius, largest_area = np.zeros(px.y.size), np.zeros(px.y.size)  # per candidate pixel, over the offsets
    for dy, dx in offsets:
        near = regions_near(dy, dx)
        np.maximum(largest_radius, radius[near], out=largest_radius)
        np.maximum(largest_area, area[near], out=largest_area)
    out[:, col["lumen_mm"]] = px.max(largest_radius, 0.0)
    out[:, col["log_lumen_mm2"]] = np.log1p(px.max(largest_area, 0.0))


def _fat_distance(out: np.ndarray, col: dict[str, int], px: _Pixels, fat_or_lung: np.ndarray, zi: np.ndarray,
                  pixel: tuple[float, float]) -> None:
    """In-plane distance from each candidate's nearest pixel to fat or lung (a 3 x 3 mean below -30 HU, calcium
    counted as blood), capped at `FAT_CAP_MM`.

    Coronary arteries run in the epicardial fat (or, in a lean patient, on the myocardium under the lung), so fat or
    lung lies within a vessel wall of their calcium; aortic valve and mitral annulus calcium lie in blood and muscle,
    centimetres from either. Both hold on every non-contrast scan; the mean keeps noise from making fat inside blood.
    The distance transform runs on each slice's box around its candidates grown by the cap: exact below the cap.
    """
    reach = int(np.ceil(FAT_CAP_MM / min(pixel))) + 1
    distance = np.full(px.y.size, FAT_CAP_MM)
    for i in np.unique(zi):
        on = np.flatnonzero(zi == i)
        y0, x0 = max(int(px.y[on].min()) - reach, 0), max(int(px.x[on].min()) - reach, 0)
        box = fat_or_lung[i, y0 : int(px.y[on].max()) + reach + 1, x0 : int(px.x[on].max()) + reach + 1]
        if box.any():
            to_fat = ndimage.distance_transform_edt(~box, sampling=pixel)
            distance[on] = np.minimum(to_fat[px.y[on] - y0, px.x[on] - x0], FAT_CAP_MM)
    out[:, col["fat_distance_mm"]] = -px.max(-distance, -FAT_CAP_MM)


def _arc_features(out: np.ndarray, col: dict[str, int], px: _Pixels, fat_or_lung: np.ndarray, zi: np.ndarray,
                  pixel: tuple[float, float]) -> None:
    """Radius of curvature of each elongated candidate (>= `ARC_MIN_LENGTH_MM` long, twice as long as wide: a
    parabola fitted across its principal axis); at its centre of curvature, the soft-tissue depth and the area of the
    soft-tissue region there over the circle's area.

    Aortic wall calcium lies on the wall of a round lumen of 10-17 mm radius, ringed by fat: an arc whose centre lies
    deep in a soft-tissue region about the size of that circle. Coronary calcium that long runs along its vessel: in
    fat, or round a heart chamber (the circumflex and right coronary arteries in the atrioventricular grooves), whose
    region is far larger than the arc's circle. Soft tissue here: what is not fat or lung (``fat_or_lung``).
    """
    sy, sx = pixel
    starts = np.concatenate(([0], np.cumsum(px.sizes)[:-1]))
    arcs = []  # (candidate, slice index in stack, centre row, centre column, radius)
    for i, (start, size) in enumerate(zip(starts, px.sizes)):
        if size < 6:
            continue
        points = np.c_[px.y[start : start + size] * sy, px.x[start : start + size] * sx]
        centroid = points.mean(axis=0)
        _, axes = np.linalg.eigh(np.cov((points - centroid).T))
        along, across = (points - centroid) @ axes[:, 1], (points - centroid) @ axes[:, 0]
        length, width = np.ptp(along), np.ptp(across) + min(sy, sx)
        if length < ARC_MIN_LENGTH_MM or length < 2 * width:
            continue
        a, _, offset = np.polyfit(along, across, 2)
        radius = min(1.0 / max(abs(2 * a), 1e-9), ARC_CAP_MM)
        out[i, col["arc_radius_mm"]] = radius
        if radius < ARC_CAP_MM:
            centre = centroid + axes[:, 0] * (offset + np.sign(a) * radius)
            arcs.append((i, int(zi[start]), centre[0] / sy, centre[1] / sx, radius))
    if not arcs:
        return
    for k in sorted({a[1] for a in arcs}):  # the slices holding an arc, whole (few)
        soft = ~fat_or_lung[k]
        depth = ndimage.distance_transform_edt(soft, sampling=pixel)
        regions, _ = ndimage.label(soft)
        areas = np.bincount(regions.ravel()) * sy * sx
        for i, _, row, column, radius in (a for a in arcs if a[1] == k):
            r, c = int(round(row)), int(round(column))
            if 0 <= r < soft.shape[0] and 0 <= c < soft.shape[1] and soft[r, c]:
                out[i, col["arc_centre_depth_mm"]] = min(depth[r, c], ARC_DEPTH_CAP_MM)
                out[i, col["arc_lumen_ratio"]] = areas[regions[r, c]] / (np.pi * radius**2)


def _neighbourhood_features(out: np.ndarray, col: dict[str, int], px: _Pixels, stack: np.ndarray, zi: np.ndarray,
                            pixel: tuple[float, float]) -> None:
    """Tissue shares and mean HU in squares around every candidate pixel, averaged over the candidate's pixels."""
    sy, sx = pixel
    ny, nx = stack.shape[1:]
    images = {f"{tissue}_": (stack >= low) & (stack < high) for tissue, (low, high) in TISSUES.items()}
    images["mean_hu_"] = np.clip(stack, *HU_CLIP)
    for prefix, image in images.items():
        # counts in int32 (exact, and twice as fast to sum as float64), HU sums in float64
        dtype = np.int32 if image.dtype == bool else np.float64
        integral = np.zeros((stack.shape[0], ny + 1, nx + 1), dtype=dtype)
        np.cumsum(image, axis=1, dtype=dtype, out=integral[:, 1:, 1:])
        np.cumsum(integral[:, 1:, 1:], axis=2, out=integral[:, 1:, 1:])
        for r in NEIGHBOURHOOD_MM:
            half = max(1, int(round(r / min(sy, sx))))
            out[:, col[f"{prefix}{int(r)}mm"]] = px.mean(_box_mean(integral, zi, px.y, px.x, half))
